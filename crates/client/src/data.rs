//! Fetching through a broker's sendfile data port (`docs/data-protocol.md`): a pool of plain
//! TCP connections per broker, one request in flight per connection, so the partitions of one
//! broker fetch side by side as they do over gRPC.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use tideline_proto::data_frame;
use tideline_proto::v1 as pb;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Idle connections kept per broker.
const IDLE_PER_BROKER: usize = 64;

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
    /// each partition's batches. `on_header` sees the header as soon as it has arrived, before
    /// the batches (the consumer starts its next fetch from the `next_offset` it carries). A
    /// connection that fails is dropped, not reused.
    pub(crate) async fn fetch(
        &self,
        address: &str,
        request: &pb::DataFetchRequest,
        on_header: impl FnOnce(&pb::DataFetchResponse),
    ) -> std::io::Result<(pb::DataFetchResponse, Vec<Bytes>)> {
        let mut stream = match self.take(address) {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(address).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        data_frame::write_request(&mut stream, request).await?;
        let header = data_frame::read_header(&mut stream).await?;
        on_header(&header);
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
