//! Fetching through a broker's sendfile data port (`docs/data-protocol.md`): a pool of plain
//! TCP connections per broker, one request in flight per connection, so the partitions of one
//! broker fetch side by side as they do over gRPC.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use prost::Message;
use tideline_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept per broker.
const IDLE_PER_BROKER: usize = 64;

/// Largest answer header accepted (it lists partitions; their batches follow it).
const MAX_HEADER_BYTES: u32 = 1 << 20;

/// Idle data connections by `host:data_port`. Never held across `.await`.
#[derive(Debug, Default)]
pub(crate) struct DataConnections {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl DataConnections {
    fn take(&self, address: &str) -> Option<TcpStream> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).get_mut(address)?.pop()
    }

    fn give_back(&self, address: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let pool = idle.entry(address.to_string()).or_default();
        if pool.len() < IDLE_PER_BROKER {
            pool.push(stream);
        }
    }

    /// Sends `request` to the data port at `address` and reads the answer: the header and
    /// each partition's batches. A connection that fails is dropped, not reused.
    pub(crate) async fn fetch(
        &self,
        address: &str,
        request: &pb::DataFetchRequest,
    ) -> std::io::Result<(pb::DataFetchResponse, Vec<Bytes>)> {
        let mut stream = match self.take(address) {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(address).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        let body = request.encode_to_vec();
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        stream.write_all(&frame).await?;
        let len = stream.read_u32().await?;
        if len > MAX_HEADER_BYTES {
            return Err(invalid(format!("answer header of {len} bytes")));
        }
        let mut header = vec![0; len as usize];
        stream.read_exact(&mut header).await?;
        let header = pb::DataFetchResponse::decode(header.as_slice())
            .map_err(|e| invalid(format!("undecodable answer header: {e}")))?;
        let mut payloads = Vec::with_capacity(header.partitions.len());
        for p in &header.partitions {
            let mut bytes = Vec::with_capacity(p.payload_length as usize);
            (&mut stream).take(u64::from(p.payload_length)).read_to_end(&mut bytes).await?;
            if bytes.len() != p.payload_length as usize {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            payloads.push(Bytes::from(bytes));
        }
        self.give_back(address, stream);
        Ok((header, payloads))
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}
