//! [`BrokerApi`]: the `BrokerService` gRPC API. Produce appends to a partition's log (raw Kafka
//! v2 batches, or plain records the broker encodes), Fetch reads whole batches below the high
//! watermark with a long poll, ListOffsets looks offsets up. Only the partition's leader
//! answers, and only while the broker holds its lease; every refusal carries a precise error
//! code.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tideline_common::{ErrorCode, status, with_leader, with_offset_range};
use tideline_log::{BatchError, Compression, LogError, RecordBatchBuilder, RecordHeader, batch};
use tideline_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::membership::Shared;
use crate::replicas::Replica;

/// Largest `max_bytes` a fetch may ask for; larger values are capped to it.
const MAX_FETCH_BYTES: usize = 32 << 20;

/// The `BrokerService` implementation.
#[derive(Debug, Clone)]
pub struct BrokerApi {
    shared: Arc<Shared>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The status for a log error: bad input gets the code naming what is wrong; a log that failed
/// gets `STORAGE_ERROR`.
fn log_status(topic: &str, partition: i32, e: &LogError) -> Status {
    let code = match e {
        LogError::InvalidBatch { source, .. } => match source {
            BatchError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            BatchError::UnsupportedCompression { .. } => ErrorCode::UnsupportedCompression,
            BatchError::Unsupported { .. } => ErrorCode::InvalidRequest,
            _ => ErrorCode::CorruptMessage,
        },
        LogError::OffsetOutOfRange { log_start, log_end, .. } => {
            return with_offset_range(
                status(ErrorCode::OffsetOutOfRange, format!("{topic}-{partition}: {e}")),
                *log_start,
                *log_end,
            );
        }
        // The replica was closed under the request (topic deleted or replica moved): the
        // client refreshes its metadata and retries.
        LogError::Closed(_) => ErrorCode::LeaderNotAvailable,
        _ => ErrorCode::StorageError,
    };
    status(code, format!("{topic}-{partition}: {e}"))
}

fn join_status(e: tokio::task::JoinError) -> Status {
    status(ErrorCode::StorageError, format!("log task failed: {e}"))
}

impl BrokerApi {
    /// The API over the broker's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        BrokerApi { shared }
    }

    /// The replica of `topic`/`partition` if this broker may serve it as leader now; otherwise
    /// the status saying why not (fenced, unknown, no leader, another leader, not open yet).
    fn leader_replica(&self, topic: &str, partition: i32) -> Result<Replica, Status> {
        let me = self.shared.config.broker_id;
        if !self.shared.lease().is_live() {
            return Err(status(
                ErrorCode::BrokerFenced,
                format!(
                    "broker {me} holds no lease from the controller and serves nothing until it registers again"
                ),
            ));
        }
        let (leader, leader_epoch, hint) = {
            let m = self.shared.metadata.read().unwrap_or_else(|e| e.into_inner());
            if !m.loaded {
                return Err(status(
                    ErrorCode::LeaderNotAvailable,
                    format!("broker {me} has not received cluster metadata yet"),
                ));
            }
            let t = m.topics.get(topic).ok_or_else(|| {
                status(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {topic:?}"))
            })?;
            let p = t.partitions.iter().find(|p| p.partition == partition).ok_or_else(|| {
                status(
                    ErrorCode::UnknownTopicOrPartition,
                    format!(
                        "topic {topic:?} has {} partitions; there is no partition {partition}",
                        t.partitions.len()
                    ),
                )
            })?;
            (p.leader, p.leader_epoch, m.broker_address(p.leader))
        };
        if leader < 0 {
            return Err(status(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}-{partition} has no leader (epoch {leader_epoch})"),
            ));
        }
        if leader != me {
            let s = status(
                ErrorCode::NotLeader,
                format!("broker {me} is not the leader of {topic}-{partition}; broker {leader} is"),
            );
            return Err(match hint {
                Some(addr) => with_leader(s, i64::from(leader), &addr),
                None => s,
            });
        }
        let replicas = self.shared.replicas.read().unwrap_or_else(|e| e.into_inner());
        match replicas.get(topic, partition) {
            Some(r) if r.leader == me && r.leader_epoch == leader_epoch => Ok(r.clone()),
            _ => Err(status(
                ErrorCode::LeaderNotAvailable,
                format!("broker {me} is becoming the leader of {topic}-{partition}; retry"),
            )),
        }
    }

    /// Encodes plain records into one batch.
    fn encode(list: &pb::RecordList) -> Result<Bytes, Status> {
        if list.records.is_empty() {
            return Err(status(ErrorCode::InvalidRequest, "produce with an empty record list"));
        }
        let compression = match list.compression.as_str() {
            "" => Compression::None,
            name => Compression::from_name(name).ok_or_else(|| {
                status(
                    ErrorCode::UnsupportedCompression,
                    format!("compression {name:?} is not none, gzip, lz4 or zstd"),
                )
            })?,
        };
        let now = now_ms();
        let mut builder = RecordBatchBuilder::new(compression);
        for r in &list.records {
            if r.timestamp_ms < 0 {
                return Err(status(
                    ErrorCode::InvalidRequest,
                    format!("record timestamp {} is negative", r.timestamp_ms),
                ));
            }
            let headers: Vec<RecordHeader> = r
                .headers
                .iter()
                .map(|h| RecordHeader { key: h.key.clone(), value: h.value.clone() })
                .collect();
            let ts = if r.timestamp_ms == 0 { now } else { r.timestamp_ms };
            builder.append(ts, r.key.as_deref(), r.value.as_deref(), &headers);
        }
        Ok(builder.build())
    }
}

/// Decodes the records at or after `from` in `batches`.
fn decode(batches: &[u8], from: i64) -> Result<Vec<pb::Record>, Status> {
    let mut out = Vec::new();
    for b in batch::batches(batches) {
        let b = b.map_err(|e| status(ErrorCode::StorageError, format!("stored batch: {e}")))?;
        if b.last_offset() < from {
            continue;
        }
        let records = b
            .records()
            .map_err(|e| status(ErrorCode::StorageError, format!("stored batch: {e}")))?;
        for r in records.iter() {
            let r =
                r.map_err(|e| status(ErrorCode::StorageError, format!("stored record: {e}")))?;
            if r.offset < from {
                continue;
            }
            out.push(pb::Record {
                key: r.key.map(Bytes::copy_from_slice),
                value: r.value.map(Bytes::copy_from_slice),
                headers: r
                    .headers
                    .iter()
                    .map(|h| pb::RecordHeader {
                        key: h.key.to_string(),
                        value: h.value.map(Bytes::copy_from_slice),
                    })
                    .collect(),
                timestamp_ms: r.timestamp,
                offset: r.offset,
            });
        }
    }
    Ok(out)
}

#[tonic::async_trait]
impl pb::broker_service_server::BrokerService for BrokerApi {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let req = request.into_inner();
        let payload = match &req.payload {
            Some(pb::produce_request::Payload::RecordBatches(b)) if !b.is_empty() => b.clone(),
            Some(pb::produce_request::Payload::RecordBatches(_)) | None => {
                return Err(status(ErrorCode::InvalidRequest, "produce without records"));
            }
            Some(pb::produce_request::Payload::Records(list)) => Self::encode(list)?,
        };
        if pb::Acks::try_from(req.acks).is_err() {
            return Err(status(ErrorCode::InvalidRequest, format!("unknown acks {}", req.acks)));
        }
        if req.timeout_ms < 0 {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("timeout_ms {} is negative", req.timeout_ms),
            ));
        }
        let replica = self.leader_replica(&req.topic, req.partition)?;
        let epoch = replica.leader_epoch;
        let log = Arc::clone(&replica.log);
        let info = tokio::task::spawn_blocking(move || log.append(&payload, epoch))
            .await
            .map_err(join_status)?
            .map_err(|e| log_status(&req.topic, req.partition, &e))?;
        // No followers replicate yet: a record is committed once the leader has it, for every
        // acks level (replication makes acks=all wait for the in-sync replicas).
        replica.advance_high_watermark(info.last_offset + 1);
        Ok(Response::new(pb::ProduceResponse {
            base_offset: info.first_offset,
            last_offset: info.last_offset,
            log_append_time_ms: info.log_append_time_ms,
            log_start_offset: replica.log.log_start_offset(),
        }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let req = request.into_inner();
        if req.max_bytes < 0 || req.max_wait_ms < 0 || req.min_bytes < 0 || req.offset < 0 {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!(
                    "fetch with a negative field: offset {} max_bytes {} max_wait_ms {} min_bytes {}",
                    req.offset, req.max_bytes, req.max_wait_ms, req.min_bytes
                ),
            ));
        }
        let max_bytes = (req.max_bytes as usize).min(MAX_FETCH_BYTES);
        let wait =
            Duration::from_millis(req.max_wait_ms as u64).min(self.shared.config.max_fetch_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut replica = self.leader_replica(&req.topic, req.partition)?;
        loop {
            let mut changed = replica.high_watermark.subscribe();
            let hw = *changed.borrow_and_update();
            let log = Arc::clone(&replica.log);
            let offset = req.offset;
            let read = tokio::task::spawn_blocking(move || {
                let read = log.read(offset, max_bytes, Some(hw))?;
                if offset > hw {
                    // Written but not committed is as unreadable as not written.
                    return Err(LogError::OffsetOutOfRange {
                        requested: offset,
                        log_start: read.log_start_offset,
                        log_end: hw,
                    });
                }
                let bytes = read.region.read_to_bytes()?;
                Ok((read, bytes))
            })
            .await
            .map_err(join_status)?
            .map_err(|e| match e {
                LogError::OffsetOutOfRange { requested, log_start, .. } => log_status(
                    &req.topic,
                    req.partition,
                    &LogError::OffsetOutOfRange { requested, log_start, log_end: hw },
                ),
                e => log_status(&req.topic, req.partition, &e),
            })?;
            let (read, bytes) = read;
            let more_available = !bytes.is_empty() && read.region.next_offset() < hw;
            let now = tokio::time::Instant::now();
            if bytes.len() >= (req.min_bytes as usize).max(1) || more_available || now >= deadline {
                let records =
                    if req.decode_records { decode(&bytes, req.offset)? } else { Vec::new() };
                let next_offset =
                    if bytes.is_empty() { req.offset } else { read.region.next_offset() };
                return Ok(Response::new(pb::FetchResponse {
                    record_batches: bytes,
                    records,
                    high_watermark: hw,
                    log_start_offset: read.log_start_offset,
                    next_offset,
                }));
            }
            // Long poll: wait for the high watermark to move, or the deadline.
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            // Leadership or the lease may have changed while waiting.
            replica = self.leader_replica(&req.topic, req.partition)?;
        }
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let spec = pb::OffsetSpec::try_from(req.spec).unwrap_or(pb::OffsetSpec::Unspecified);
        let replica = self.leader_replica(&req.topic, req.partition)?;
        let hw = replica.high_watermark();
        let (offset, timestamp_ms) = match spec {
            pb::OffsetSpec::Unspecified => {
                return Err(status(
                    ErrorCode::InvalidRequest,
                    format!(
                        "list offsets needs a spec (earliest, latest or timestamp), got {}",
                        req.spec
                    ),
                ));
            }
            pb::OffsetSpec::Earliest => (replica.log.log_start_offset(), -1),
            pb::OffsetSpec::Latest => (hw, -1),
            pb::OffsetSpec::Timestamp => {
                if req.timestamp_ms < 0 {
                    return Err(status(
                        ErrorCode::InvalidRequest,
                        format!("timestamp {} is negative", req.timestamp_ms),
                    ));
                }
                let log = Arc::clone(&replica.log);
                let ts = req.timestamp_ms;
                let found = tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts))
                    .await
                    .map_err(join_status)?
                    .map_err(|e| log_status(&req.topic, req.partition, &e))?;
                match found {
                    Some(f) if f.offset < hw => (f.offset, f.timestamp),
                    _ => (hw, -1),
                }
            }
        };
        Ok(Response::new(pb::ListOffsetsResponse { offset, timestamp_ms }))
    }
}
