//! [`LeaderLink`]: a follower's connections to the leader of a partition it replicates.
//!
//! Replica fetches go to the leader's sendfile data port (`docs/data-protocol.md`), with
//! `replica_id` set, over one persistent TCP connection; gRPC carries `OffsetForLeaderEpoch`,
//! and `Fetch` when the leader advertises no data port. Either way the fetcher gets a
//! `FetchResponse`, or a `Status` with the error code (and offset range) gRPC Fetch would have
//! refused with, so it handles both paths in one place.

use std::time::Duration;

use bytes::Bytes;
use tideline_common::{ErrorCode, status, with_offset_range};
use tideline_proto::data_frame;
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::config::MAX_MESSAGE_BYTES;

/// Longest wait for a connection to the leader, on either port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a data-port answer may take beyond the fetch's own `max_wait_ms` before the
/// connection is given up (a leader cut off without a reset would hold the fetcher forever).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// A follower's connections to one leader: a gRPC client and, once used, a data-port
/// connection. Each is replaced when the leader's address changes; a data connection that
/// failed is dropped, and the next fetch connects again.
#[derive(Debug, Default)]
pub(crate) struct LeaderLink {
    grpc: Option<(String, BrokerServiceClient<Channel>)>,
    /// Held only between complete exchanges: a connection left mid-answer (an error, a timeout,
    /// a fetch cancelled) is out of step and never reused.
    data: Option<(String, TcpStream)>,
    /// Until when replica fetches go over gRPC after the data port failed (a leader at its
    /// connection limit closes a new connection before any answer).
    data_avoided_until: Option<tokio::time::Instant>,
}

/// How long a follower fetches over gRPC after the leader's data port failed.
const DATA_PORT_PAUSE: Duration = Duration::from_secs(10);

impl LeaderLink {
    /// The gRPC client of the leader at `address` (built once per address, connecting lazily),
    /// or `None` when `address` makes no valid URI.
    pub(crate) fn grpc(&mut self, address: &str) -> Option<&mut BrokerServiceClient<Channel>> {
        if self.grpc.as_ref().is_none_or(|(a, _)| a != address) {
            self.grpc = broker_client(address).map(|c| (address.to_string(), c));
        }
        self.grpc.as_mut().map(|(_, c)| c)
    }

    /// One replica fetch (`request.replica_id` set, one partition): through the data port at
    /// `data_address` when the leader advertises one, else gRPC `Fetch` at `grpc_address`.
    ///
    /// # Errors
    /// The leader's refusal with its error code, message and offset range, as gRPC `Fetch`
    /// gives it; a status without an error code when the leader could not be reached or broke
    /// the framing (then the fetcher backs off and tries again, on a new connection).
    pub(crate) async fn fetch(
        &mut self,
        grpc_address: &str,
        data_address: Option<&str>,
        request: pb::FetchRequest,
    ) -> Result<pb::FetchResponse, Status> {
        let avoided = self.data_avoided_until.is_some_and(|t| tokio::time::Instant::now() < t);
        if let Some(address) = data_address.filter(|_| !avoided) {
            match self.fetch_data_port(address, request.clone()).await {
                // Reached the leader but not through its data port (refused at its
                // connection limit, or cut): this fetch and those of the next seconds go
                // over gRPC, which the leader always serves.
                Err(status) if tideline_common::error_code_of(&status).is_none() => {
                    tracing::debug!(%address, error = %status.message(), "data port failed; fetching over gRPC");
                    self.data_avoided_until = Some(tokio::time::Instant::now() + DATA_PORT_PAUSE);
                }
                answer => return answer,
            }
        }
        let Some(client) = self.grpc(grpc_address) else {
            return Err(Status::unavailable(format!(
                "the leader's address {grpc_address:?} makes no URI"
            )));
        };
        client.fetch(request).await.map(tonic::Response::into_inner)
    }

    async fn fetch_data_port(
        &mut self,
        address: &str,
        request: pb::FetchRequest,
    ) -> Result<pb::FetchResponse, Status> {
        let limit =
            Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)) + ANSWER_GRACE;
        let asked = (request.topic.clone(), request.partition);
        let data_request = pb::DataFetchRequest {
            partitions: vec![pb::DataFetchPartition {
                topic: request.topic,
                partition: request.partition,
                offset: request.offset,
                max_bytes: request.max_bytes,
                current_leader_epoch: request.current_leader_epoch,
            }],
            max_wait_ms: request.max_wait_ms,
            min_bytes: request.min_bytes,
            replica_id: request.replica_id,
        };
        let reused = self.data.take().filter(|(a, _)| a == address).map(|(_, s)| s);
        let exchanged = tokio::time::timeout(limit, async {
            let mut stream = match reused {
                Some(s) => s,
                None => connect(address).await?,
            };
            let answer = exchange(&mut stream, &data_request, &asked).await?;
            Ok::<_, std::io::Error>((stream, answer))
        })
        .await;
        let (stream, (result, payload)) = match exchanged {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!("data port {address}: {e}")));
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "data port {address}: no answer within {} ms",
                    limit.as_millis()
                )));
            }
        };
        self.data = Some((address.to_string(), stream));
        if result.error_code != ErrorCode::Unspecified as i32 {
            return Err(refusal_status(&result));
        }
        Ok(pb::FetchResponse {
            record_batches: Bytes::from(payload),
            records: Vec::new(),
            high_watermark: result.high_watermark,
            log_start_offset: result.log_start_offset,
            next_offset: result.next_offset,
            traceparents: result.traceparents,
        })
    }
}

fn broker_client(address: &str) -> Option<BrokerServiceClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .ok()?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(32 << 20);
    Some(
        BrokerServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

async fn connect(address: &str) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} ms", CONNECT_TIMEOUT.as_millis()),
            )
        })??;
    stream.set_nodelay(true)?;
    tracing::debug!(%address, "connected to the leader's data port for replica fetches");
    Ok(stream)
}

/// Writes one request frame for the partition `asked` and reads its answer: the partition's
/// header entry and its payload. An answer that does not fit the request (another partition,
/// a header or payload past the limits) is an error: the connection is out of step.
async fn exchange(
    stream: &mut TcpStream,
    request: &pb::DataFetchRequest,
    asked: &(String, i32),
) -> std::io::Result<(pb::DataFetchPartitionResult, Vec<u8>)> {
    data_frame::write_request(stream, request).await?;
    let header = data_frame::read_header(stream).await?;
    let [result] = <[_; 1]>::try_from(header.partitions).map_err(|p| {
        invalid(format!("an answer with {} partitions to a request for one", p.len()))
    })?;
    if (result.topic.as_str(), result.partition) != (asked.0.as_str(), asked.1) {
        return Err(invalid(format!(
            "an answer for {}-{} to a request for {}-{}",
            result.topic, result.partition, asked.0, asked.1
        )));
    }
    let payload_length = result.payload_length as usize;
    if payload_length > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "{payload_length} bytes of batches, at most {MAX_MESSAGE_BYTES} (as over gRPC)"
        )));
    }
    let mut payload = vec![0; payload_length];
    stream.read_exact(&mut payload).await?;
    Ok((result, payload))
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// The status gRPC `Fetch` refuses with, for a refused partition of a data-port answer: its
/// code and message and, for `OFFSET_OUT_OF_RANGE`, the offset range (whose end a replica
/// fetch does not get: -1). A code this broker does not know counts as `STORAGE_ERROR`.
fn refusal_status(result: &pb::DataFetchPartitionResult) -> Status {
    let code = ErrorCode::try_from(result.error_code).unwrap_or(ErrorCode::StorageError);
    let s = status(code, result.error_message.clone());
    if code == ErrorCode::OffsetOutOfRange && result.log_start_offset >= 0 {
        with_offset_range(s, result.log_start_offset, result.high_watermark)
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use tideline_common::{error_code_of, offset_range_of};

    use super::*;

    fn refused(code: ErrorCode, log_start_offset: i64) -> pb::DataFetchPartitionResult {
        pb::DataFetchPartitionResult {
            topic: "t".into(),
            partition: 0,
            error_code: code as i32,
            error_message: "t-0: why".into(),
            high_watermark: -1,
            log_start_offset,
            next_offset: 7,
            payload_length: 0,
            traceparents: Vec::new(),
        }
    }

    #[test]
    fn a_refusal_becomes_the_status_grpc_fetch_gives() {
        let s = refusal_status(&refused(ErrorCode::FencedLeaderEpoch, -1));
        assert_eq!(error_code_of(&s), Some(ErrorCode::FencedLeaderEpoch));
        assert_eq!(s.message(), "t-0: why");
        assert_eq!(offset_range_of(&s), None);
        // The fetcher starts over at the leader's log start when its own log ends before it.
        let s = refusal_status(&refused(ErrorCode::OffsetOutOfRange, 40));
        assert_eq!(error_code_of(&s), Some(ErrorCode::OffsetOutOfRange));
        assert_eq!(offset_range_of(&s), Some((40, -1)));
    }

    #[test]
    fn an_unknown_code_is_a_storage_error() {
        let mut r = refused(ErrorCode::NotLeader, -1);
        r.error_code = 9999;
        assert_eq!(error_code_of(&refusal_status(&r)), Some(ErrorCode::StorageError));
    }
}
