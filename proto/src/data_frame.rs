//! The client side of the data port's framing (`docs/data-protocol.md`), shared by its two
//! readers, the Rust consumer and replica followers: a request goes out as a big-endian `u32`
//! length and the encoded `DataFetchRequest`, in one write; an answer starts with a `u32`
//! length and a `DataFetchResponse` header, then each partition's batches.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::v1::{DataFetchRequest, DataFetchResponse};

/// Largest answer header a reader accepts (it lists partitions; their batches follow it).
pub const MAX_HEADER_BYTES: u32 = 1 << 20;

/// Writes `request` as one frame, in one write (a length and a body written apart would wait
/// on Nagle and delayed ACKs).
///
/// # Errors
/// The stream's write error.
pub async fn write_request<W: AsyncWrite + Unpin>(
    stream: &mut W,
    request: &DataFetchRequest,
) -> std::io::Result<()> {
    let body = request.encode_to_vec();
    let mut frame = Vec::with_capacity(4 + body.len());
    // A request names partitions and carries no data: its length fits.
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

/// Reads an answer's header; the partitions' batches follow it on the stream.
///
/// # Errors
/// The stream's read error; `InvalidData` for a header over [`MAX_HEADER_BYTES`] or one that
/// does not decode (the connection is then out of step).
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> std::io::Result<DataFetchResponse> {
    let len = stream.read_u32().await?;
    if len > MAX_HEADER_BYTES {
        return Err(invalid(format!("answer header of {len} bytes, at most {MAX_HEADER_BYTES}")));
    }
    let mut header = vec![0; len as usize];
    stream.read_exact(&mut header).await?;
    DataFetchResponse::decode(header.as_slice())
        .map_err(|e| invalid(format!("undecodable answer header: {e}")))
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}
