//! gRPC messages with one large `bytes` field, framed by hand so the field's bytes are never
//! copied: tonic encodes a message by copying every field into one buffer, which for a
//! produce request or a fetch answer is a whole extra pass over a megabyte of batches. A
//! message goes out as chunks of an HTTP/2 body instead: the 5-byte gRPC prefix with the
//! fields before the large one and its key and length, the bytes themselves (handed to the
//! socket writer as they are), and the fields after it. The bytes on the wire are exactly
//! those tonic would send (fields in number order), so any gRPC peer reads them as usual.
//! Used by the broker for `Fetch` answers and by the Rust producer for `Produce` requests;
//! [`Rope`] reads a received message from its chunks without joining them (the Rust
//! consumer's `Fetch` answers).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use tonic::Status;
use tonic::codegen::http;

/// The chunks of one uncompressed gRPC frame holding a message whose field `field` (a
/// length-delimited `bytes` field, left out of `before` and `after`) is `large`: `before`
/// encodes the fields numbered below it, `after` those above. An empty `large` is left out,
/// as protobuf leaves out an empty `bytes` field.
///
/// # Panics
/// If the message is 4 GiB or more (gRPC's length prefix cannot say it).
pub fn chunks(before: Vec<u8>, field: u32, large: Bytes, after: Vec<u8>) -> Vec<Bytes> {
    let mut field_head = BytesMut::new();
    if !large.is_empty() {
        prost::encoding::encode_key(
            field,
            prost::encoding::WireType::LengthDelimited,
            &mut field_head,
        );
        prost::encoding::encode_varint(large.len() as u64, &mut field_head);
    }
    let message_len = before.len() + field_head.len() + large.len() + after.len();
    let mut head = BytesMut::with_capacity(5 + before.len() + field_head.len());
    head.put_u8(0);
    head.put_u32(u32::try_from(message_len).expect("a gRPC message below 4 GiB"));
    head.put_slice(&before);
    head.put_slice(&field_head);
    let mut chunks = vec![head.freeze()];
    if !large.is_empty() {
        chunks.push(large);
    }
    if !after.is_empty() {
        chunks.push(Bytes::from(after));
    }
    chunks
}

/// The chunks of the gRPC frame of a small message, with no field sent apart.
pub fn message(message: &impl prost::Message) -> Vec<Bytes> {
    chunks(message.encode_to_vec(), 0, Bytes::new(), Vec::new())
}

/// Reads a received gRPC body: its data chunks (at most `limit` bytes of message, else
/// `OUT_OF_RANGE` naming `what`), unframed, and its trailers if it has any.
///
/// # Errors
/// The body's own error, `OUT_OF_RANGE` past `limit`, or a malformed frame (as
/// [`Rope::unframe`]).
pub async fn read_body<B>(
    body: B,
    limit: usize,
    what: &str,
) -> Result<(Rope, Option<http::HeaderMap>), Status>
where
    B: http_body::Body<Data = Bytes, Error = Status>,
{
    let mut body = std::pin::pin!(body);
    let mut message = Rope::default();
    let mut trailers = None;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        match frame?.into_data() {
            Ok(data) => {
                if message.remaining() + data.len() > limit + 5 {
                    return Err(Status::out_of_range(format!("{what} larger than {limit} bytes")));
                }
                message.push(data);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((message.unframe()?, trailers))
}

/// The data chunks of a received body, read as one buffer without joining them: prost
/// decodes a message from it, and a `bytes` field that lies within one chunk comes out as a
/// slice of that chunk (`copy_to_bytes`), not a copy. One that spans chunks is copied.
#[derive(Debug, Default)]
pub struct Rope {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Rope {
    /// Appends a received chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.remaining += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// The message of the uncompressed gRPC frame these chunks hold.
    ///
    /// # Errors
    /// `UNIMPLEMENTED` for a compressed frame, `INTERNAL` for a malformed one.
    pub fn unframe(mut self) -> Result<Rope, Status> {
        if self.remaining < 5 {
            return Err(Status::internal("malformed gRPC frame: shorter than the 5-byte prefix"));
        }
        if self.get_u8() != 0 {
            return Err(Status::unimplemented("compressed gRPC messages are not supported here"));
        }
        let length = self.get_u32() as usize;
        if length != self.remaining {
            return Err(Status::internal(format!(
                "malformed gRPC frame: the prefix announces {length} bytes, {} follow",
                self.remaining
            )));
        }
        Ok(self)
    }
}

impl Buf for Rope {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn advance(&mut self, mut count: usize) {
        assert!(count <= self.remaining, "advance past the end of the rope");
        self.remaining -= count;
        while count > 0 {
            let Some(front) = self.chunks.front_mut() else { break };
            if count < front.len() {
                front.advance(count);
                break;
            }
            count -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.remaining, "copy_to_bytes past the end of the rope");
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= len
        {
            let bytes = front.split_to(len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.remaining -= len;
            return bytes;
        }
        let mut out = BytesMut::with_capacity(len);
        let mut need = len;
        while need > 0 {
            let chunk = self.chunk();
            let n = chunk.len().min(need);
            out.extend_from_slice(&chunk[..n]);
            self.advance(n);
            need -= n;
        }
        out.freeze()
    }
}

/// An HTTP body of data chunks, then, for a response, the `grpc-status: 0` trailers.
#[derive(Debug)]
pub struct Chunks {
    data: VecDeque<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Chunks {
    /// A request body: the chunks and nothing after them.
    pub fn request(data: Vec<Bytes>) -> Self {
        Chunks { data: data.into(), trailers: None }
    }

    /// A successful response body: the chunks, then `grpc-status: 0`.
    pub fn ok_response(data: Vec<Bytes>) -> Self {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Chunks { data: data.into(), trailers: Some(trailers) }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(chunk) = self.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1 as pb;
    use prost::Message;

    /// Put together, the chunks are the bytes tonic would send: the prefix, then exactly
    /// `encode_to_vec()` of the whole message; the large field is not copied.
    #[test]
    fn chunks_are_the_bytes_tonic_would_send() {
        for batches in [Bytes::new(), Bytes::from(vec![7u8; 300]), Bytes::from(vec![1u8; 70_000])] {
            // The large field first (FetchResponse.record_batches = 1).
            let (response, parts) = fetch_response(&batches);
            check(&parts, &response.encode_to_vec(), &batches);

            // The large field in the middle (ProduceRequest.record_batches = 5, epoch = 7).
            let request = pb::ProduceRequest {
                topic: "orders".into(),
                partition: 3,
                acks: 1,
                timeout_ms: 30_000,
                current_leader_epoch: Some(9),
                payload: Some(pb::produce_request::Payload::RecordBatches(batches.clone())),
            };
            let before =
                pb::ProduceRequest { payload: None, current_leader_epoch: None, ..request.clone() };
            let after = pb::ProduceRequest { current_leader_epoch: Some(9), ..Default::default() };
            let parts = chunks(before.encode_to_vec(), 5, batches.clone(), after.encode_to_vec());
            if batches.is_empty() {
                // protobuf keeps a set oneof field even when empty; a producer never sends one.
                continue;
            }
            check(&parts, &request.encode_to_vec(), &batches);
        }
    }

    fn check(parts: &[Bytes], expected: &[u8], large: &Bytes) {
        let wire: Vec<u8> = parts.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(wire[0], 0, "uncompressed");
        assert_eq!(u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize, expected.len());
        assert_eq!(&wire[5..], expected, "{} bytes in the large field", large.len());
        if !large.is_empty() {
            assert_eq!(parts[1].as_ptr(), large.as_ptr(), "the large field is not copied");
        }
        assert_eq!(
            rope(&[Bytes::from(wire)]).unframe().unwrap().copy_to_bytes(expected.len()),
            expected
        );
    }

    /// A fetch answer carrying `batches`, and its chunks.
    fn fetch_response(batches: &Bytes) -> (pb::FetchResponse, Vec<Bytes>) {
        let response = pb::FetchResponse {
            record_batches: batches.clone(),
            records: Vec::new(),
            high_watermark: 42,
            log_start_offset: 3,
            next_offset: 40,
            traceparents: vec!["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()],
        };
        let rest = pb::FetchResponse { record_batches: Bytes::new(), ..response.clone() };
        (response, chunks(Vec::new(), 1, batches.clone(), rest.encode_to_vec()))
    }

    fn rope(parts: &[Bytes]) -> Rope {
        let mut rope = Rope::default();
        for part in parts {
            rope.push(part.clone());
        }
        rope
    }

    /// A message decoded from a rope of chunks: its large field is a slice of the chunk that
    /// holds it; a field that spans chunks is copied, and both decode to the same message.
    #[test]
    fn ropes_decode_large_fields_without_a_copy() {
        let batches = Bytes::from(vec![5u8; 10_000]);
        let (response, parts) = fetch_response(&batches);
        let decoded = pb::FetchResponse::decode(rope(&parts).unframe().unwrap()).unwrap();
        assert_eq!(decoded, response);
        assert_eq!(decoded.record_batches.as_ptr(), batches.as_ptr(), "a slice, not a copy");

        // The same bytes cut every 7 bytes: the field spans chunks and is copied.
        let wire: Vec<u8> = parts.iter().flat_map(|c| c.iter().copied()).collect();
        let pieces: Vec<Bytes> = wire.chunks(7).map(Bytes::copy_from_slice).collect();
        assert_eq!(pb::FetchResponse::decode(rope(&pieces).unframe().unwrap()).unwrap(), response);

        let mut short = Rope::default();
        short.push(Bytes::from_static(b"\0\0\0\0\x09abc"));
        assert_eq!(short.unframe().unwrap_err().code(), tonic::Code::Internal);
        let mut compressed = Rope::default();
        compressed.push(Bytes::from_static(b"\x01\0\0\0\x01x"));
        assert_eq!(compressed.unframe().unwrap_err().code(), tonic::Code::Unimplemented);
        assert_eq!(Rope::default().unframe().unwrap_err().code(), tonic::Code::Internal);
    }

    /// Bad frames are refused with a status, never a panic.
    #[test]
    fn malformed_frames_are_refused() {
        use tonic::Code;
        let unframe = |frame: &'static [u8]| rope(&[Bytes::from_static(frame)]).unframe();
        assert_eq!(unframe(b"\0\0\0").unwrap_err().code(), Code::Internal);
        assert_eq!(unframe(b"\x01\0\0\0\x01x").unwrap_err().code(), Code::Unimplemented);
        assert_eq!(unframe(b"\0\0\0\0\x09abc").unwrap_err().code(), Code::Internal);
        assert_eq!(unframe(b"\0\0\0\0\x01abc").unwrap_err().code(), Code::Internal);
        assert_eq!(&unframe(b"\0\0\0\0\x03abc").unwrap().copy_to_bytes(3)[..], b"abc");
    }
}
