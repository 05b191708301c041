//! [`BrokerApi`]: the `BrokerService` gRPC API. Produce appends to a partition's log (raw Kafka
//! v2 batches, or plain records the broker encodes), Fetch reads whole batches below the high
//! watermark with a long poll, ListOffsets looks offsets up. Only the partition's leader
//! answers, and only while the broker holds its lease; every refusal carries a precise error
//! code.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tideline_common::{ErrorCode, status, with_leader, with_offset_range};
use tideline_log::{BatchError, Compression, LogError, RecordBatchBuilder, RecordHeader, batch};
use tideline_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::membership::Shared;
use crate::replicas::Replica;

/// Largest `max_bytes` a fetch may ask for; larger values are capped to it.
pub(crate) const MAX_FETCH_BYTES: usize = 32 << 20;

/// A partition this broker leads, as a request found it.
#[derive(Debug)]
struct Leading {
    replica: Replica,
    /// Size of the in-sync replica set.
    isr: usize,
    /// The topic's `min.insync.replicas`.
    min_insync: usize,
}

/// The `BrokerService` implementation.
#[derive(Debug, Clone)]
pub struct BrokerApi {
    shared: Arc<Shared>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The status for a log error: bad input gets the code naming what is wrong; a log that failed
/// gets `STORAGE_ERROR`.
pub(crate) fn log_status(topic: &str, partition: i32, e: &LogError) -> Status {
    let code = match e {
        LogError::InvalidBatch { source, .. } => match source {
            BatchError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            BatchError::UnsupportedCompression { .. } => ErrorCode::UnsupportedCompression,
            // A keyless record on a compacted topic, or a transactional batch.
            BatchError::Unsupported { .. } | BatchError::MissingKey { .. } => {
                ErrorCode::InvalidRequest
            }
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
        LogError::EpochRegression { .. } => ErrorCode::FencedLeaderEpoch,
        _ => ErrorCode::StorageError,
    };
    status(code, format!("{topic}-{partition}: {e}"))
}

/// Checks the leader epoch a request carries against the partition's.
pub(crate) fn check_epoch(
    carried: Option<i32>,
    leader_epoch: i32,
    topic: &str,
    partition: i32,
) -> Result<(), Status> {
    match carried {
        Some(e) if e < leader_epoch => Err(status(
            ErrorCode::FencedLeaderEpoch,
            format!(
                "{topic}-{partition}: request for leader epoch {e}, the current one is {leader_epoch}"
            ),
        )),
        Some(e) if e > leader_epoch => Err(status(
            ErrorCode::LeaderNotAvailable,
            format!(
                "{topic}-{partition}: request for leader epoch {e}, this broker knows {leader_epoch}; retry"
            ),
        )),
        _ => Ok(()),
    }
}

/// The status of a failed read of `replica`: an offset out of range names the range a reader
/// may read, up to the high watermark for consumers (the log end for a `follower`). The bound
/// is read again here, after the read: the one the read was bounded by may be older than the
/// log start the read saw (records produced and deleted by retention in between), and a range
/// must never end before it starts.
pub(crate) fn read_status(
    topic: &str,
    partition: i32,
    e: LogError,
    replica: &Replica,
    follower: bool,
) -> Status {
    match e {
        LogError::OffsetOutOfRange { requested, log_start, .. } => {
            let bound =
                if follower { replica.log.log_end_offset() } else { replica.high_watermark() };
            log_status(
                topic,
                partition,
                &LogError::OffsetOutOfRange { requested, log_start, log_end: bound.max(log_start) },
            )
        }
        e => log_status(topic, partition, &e),
    }
}

pub(crate) fn join_status(e: tokio::task::JoinError) -> Status {
    status(ErrorCode::StorageError, format!("log task failed: {e}"))
}

impl BrokerApi {
    /// The API over the broker's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        BrokerApi { shared }
    }

    /// The broker's shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The replica of `topic`/`partition` if this broker may serve it as leader now;
    /// otherwise the status saying why not (fenced, stale metadata, unknown, no leader, another
    /// leader, not open yet).
    /// The replica this broker leads for `topic`-`partition`, as a consumer may read it: the
    /// broker serves, leads the partition, and `current_leader_epoch` (if given) is current.
    pub(crate) fn readable_replica(
        &self,
        topic: &str,
        partition: i32,
        current_leader_epoch: Option<i32>,
    ) -> Result<Replica, Status> {
        let replica = self.leader_replica(topic, partition)?.replica;
        check_epoch(current_leader_epoch, replica.leader_epoch, topic, partition)?;
        Ok(replica)
    }

    /// Checks and records a replica fetch by broker `follower` at `offset` of a partition this
    /// broker leads, for gRPC `Fetch` and the data port alike: a broker that holds no follower
    /// replica of it is refused with `INVALID_REQUEST`; on the fetch's `first` round (a long
    /// poll reads again, it does not fetch again) `offset` is recorded as how far the follower
    /// has replicated, which moves the high watermark and may bring it back into the ISR.
    pub(crate) fn follower_fetch(
        &self,
        replica: &Replica,
        topic: &str,
        partition: i32,
        follower: i32,
        offset: i64,
        first: bool,
    ) -> Result<(), Status> {
        let me = self.shared.config.broker_id;
        if follower == me || !replica.replicas.contains(&follower) {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("broker {follower} holds no follower replica of {topic}-{partition}"),
            ));
        }
        if first && offset <= replica.log.log_end_offset() {
            // A follower fetches from its log end: that is how far it has replicated. (An
            // offset past this log's end is a diverged follower, answered OFFSET_OUT_OF_RANGE
            // by the read; it must not count as caught up.)
            crate::replication::record_follower_fetch(
                replica,
                me,
                follower,
                offset,
                &self.shared.isr_check,
            );
        }
        Ok(())
    }

    fn leader_replica(&self, topic: &str, partition: i32) -> Result<Leading, Status> {
        let me = self.shared.config.broker_id;
        if let Some(reason) = self.shared.not_serving_reason() {
            return Err(status(
                ErrorCode::BrokerFenced,
                format!(
                    "broker {me} {reason}; it serves nothing until it is registered and up to date"
                ),
            ));
        }
        // Only what the checks need is taken from the metadata: this runs for every request.
        let (topic_id, leader, leader_epoch, isr, min_insync, hint) = {
            let m = self.shared.metadata.read().unwrap_or_else(|e| e.into_inner());
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
            let min_insync = t
                .configs
                .get("min.insync.replicas")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(1);
            // The redirect address is only formatted when there is somewhere to redirect to.
            let hint = (p.leader >= 0 && p.leader != me).then(|| m.broker_address(p.leader));
            (t.topic_id.clone(), p.leader, p.leader_epoch, p.isr.len(), min_insync, hint.flatten())
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
        match self.shared.replicas.get(topic, partition) {
            // The replica must be this topic's (not an older topic of the same name that is
            // about to be deleted) and know of the current leadership.
            Some(r)
                if r.leader == me
                    && r.leader_epoch == leader_epoch
                    && r.topic_id[..] == topic_id[..] =>
            {
                Ok(Leading { replica: r, isr, min_insync })
            }
            _ => Err(status(
                ErrorCode::LeaderNotAvailable,
                format!("broker {me} is becoming the leader of {topic}-{partition}; retry"),
            )),
        }
    }

    /// Waits until the high watermark reaches `offset` with this broker still leading at
    /// `epoch` (a high watermark reached after it turned follower says nothing about this
    /// append), and the ISR still at least `min_insync`. Fails with `NOT_LEADER` when the lead
    /// moved (the records may or may not survive: an idempotent producer retries safely),
    /// `NOT_ENOUGH_REPLICAS` when the ISR shrank below the minimum after the append, and
    /// `REQUEST_TIMED_OUT` after `timeout`.
    async fn wait_committed(
        &self,
        topic: &str,
        partition: i32,
        replica: &Replica,
        (epoch, offset): (i32, i64),
        min_insync: usize,
        timeout: Duration,
    ) -> Result<(), Status> {
        let me = self.shared.config.broker_id;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut hw = replica.high_watermark.subscribe();
        let mut metadata = self.shared.metadata_applied.subscribe();
        let mut stop = self.shared.stop.clone();
        loop {
            let (leading, isr) = {
                let st = replica.state.read().unwrap_or_else(|e| e.into_inner());
                (st.leader == me && st.leader_epoch == epoch, st.isr.len())
            };
            if !leading {
                return Err(status(
                    ErrorCode::NotLeader,
                    format!(
                        "{topic}-{partition}: leadership moved before the records were committed"
                    ),
                ));
            }
            if *hw.borrow_and_update() >= offset {
                if isr < min_insync {
                    return Err(status(
                        ErrorCode::NotEnoughReplicas,
                        format!(
                            "{topic}-{partition}: appended, but the ISR shrank to {isr}, below min.insync.replicas {min_insync}"
                        ),
                    ));
                }
                return Ok(());
            }
            tokio::select! {
                _ = hw.changed() => {}
                _ = metadata.changed() => {
                    // The partition may be gone (topic deleted, replica moved): its state
                    // would never change again.
                    let current = self.shared.replicas.get(topic, partition);
                    if !current.is_some_and(|c| Arc::ptr_eq(&c.state, &replica.state)) {
                        return Err(status(
                            ErrorCode::NotLeader,
                            format!("{topic}-{partition}: the replica was removed before the records were committed"),
                        ));
                    }
                    // The ISR may have shrunk: the high watermark may move.
                    crate::replication::update_leader_high_watermark(replica, me);
                }
                _ = stop.wait_for(|s| *s) => {
                    return Err(status(ErrorCode::NotLeader, format!("{topic}-{partition}: the broker is stopping")));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(status(
                        ErrorCode::RequestTimedOut,
                        format!("{topic}-{partition}: the in-sync replicas did not acknowledge offset {} within {} ms", offset - 1, timeout.as_millis()),
                    ));
                }
            }
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
        Ok(builder.finish())
    }
}

/// Decodes the records at or after `from` in `batches`, stopping after the first batch that
/// takes the decoded keys and values past `max_bytes` (at least one batch is decoded). Returns
/// the records and the offset after the last one.
fn decode(batches: &[u8], from: i64, max_bytes: usize) -> Result<(Vec<pb::Record>, i64), Status> {
    let mut out = Vec::new();
    let mut next = from;
    let mut size = 0usize;
    let stored = |e: BatchError| status(ErrorCode::StorageError, format!("stored batch: {e}"));
    for b in batch::batches(batches) {
        if size > max_bytes {
            break;
        }
        let b = b.map_err(stored)?;
        if b.last_offset() < from {
            continue;
        }
        for r in b.records().map_err(stored)?.iter() {
            let r = r.map_err(stored)?;
            if r.offset < from {
                continue;
            }
            size += r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
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
        next = b.next_offset();
    }
    Ok((out, next))
}

#[tonic::async_trait]
impl pb::broker_service_server::BrokerService for BrokerApi {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let req = request.into_inner();
        let acks = pb::Acks::try_from(req.acks)
            .map_err(|_| status(ErrorCode::InvalidRequest, format!("unknown acks {}", req.acks)))?;
        if req.timeout_ms < 0 {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("timeout_ms {} is negative", req.timeout_ms),
            ));
        }
        let payload = match req.payload {
            Some(pb::produce_request::Payload::RecordBatches(b)) if !b.is_empty() => {
                pb::produce_request::Payload::RecordBatches(b)
            }
            Some(pb::produce_request::Payload::Records(l)) if !l.records.is_empty() => {
                pb::produce_request::Payload::Records(l)
            }
            _ => return Err(status(ErrorCode::InvalidRequest, "produce without records")),
        };
        let Leading { replica, isr, min_insync } =
            self.leader_replica(&req.topic, req.partition)?;
        if matches!(acks, pb::Acks::All | pb::Acks::Unspecified) && isr < min_insync {
            return Err(status(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "{}-{}: {isr} in-sync replicas, min.insync.replicas is {min_insync}; nothing appended",
                    req.topic, req.partition
                ),
            ));
        }
        let epoch = replica.leader_epoch;
        let me = self.shared.config.broker_id;
        let (topic, partition) = (req.topic.clone(), req.partition);
        let bytes = match payload {
            pb::produce_request::Payload::RecordBatches(b) => b,
            // Encoding (and compressing) plain records is CPU work: off the async threads.
            pb::produce_request::Payload::Records(list) => {
                tokio::task::spawn_blocking(move || Self::encode(&list))
                    .await
                    .map_err(join_status)??
            }
        };
        // Validation and the write run on the partition's writer thread, grouped with the
        // produces that arrive meanwhile.
        let appended = bytes.len();
        let info = crate::appender::append(&replica, me, &topic, partition, bytes, epoch).await?;
        crate::metrics::produced(&topic, appended, info.last_offset - info.first_offset + 1);
        // A traced produce: followers that replicate these records join its trace.
        if let Some(traceparent) = tideline_common::trace_context::current_traceparent() {
            replica.record_trace(epoch, info.first_offset, info.last_offset, traceparent);
        }
        replica.raise_log_end(info.last_offset + 1);
        crate::replication::update_leader_high_watermark(&replica, me);
        if matches!(acks, pb::Acks::All | pb::Acks::Unspecified) {
            // Committed once every in-sync replica has it: the high watermark passes it.
            let timeout = if req.timeout_ms > 0 {
                Duration::from_millis(req.timeout_ms as u64)
            } else {
                self.shared.config.produce_timeout
            };
            self.wait_committed(
                &req.topic,
                req.partition,
                &replica,
                (epoch, info.last_offset + 1),
                min_insync,
                timeout,
            )
            .await?;
        }
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
        if req.replica_id.is_some() {
            self.shared.counters.grpc_replica_fetches.fetch_add(1, Ordering::Relaxed);
        }
        let max_bytes = (req.max_bytes as usize).min(MAX_FETCH_BYTES);
        let wait =
            Duration::from_millis(req.max_wait_ms as u64).min(self.shared.config.max_fetch_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut metadata_changed = self.shared.metadata_applied.subscribe();
        let mut stop = self.shared.stop.clone();
        let mut first = true;
        loop {
            // Leadership, the lease or the topic may change while a fetch waits: check each
            // round.
            let replica = self.leader_replica(&req.topic, req.partition)?.replica;
            check_epoch(req.current_leader_epoch, replica.leader_epoch, &req.topic, req.partition)?;
            if let Some(f) = req.replica_id {
                self.follower_fetch(&replica, &req.topic, req.partition, f, req.offset, first)?;
            }
            first = false;
            let follower = req.replica_id.is_some();
            // Followers replicate up to the log end; consumers read up to the high watermark.
            let mut changed = if follower {
                replica.log_end.subscribe()
            } else {
                replica.high_watermark.subscribe()
            };
            changed.borrow_and_update();
            let hw = replica.high_watermark();
            let bound = if follower { replica.log.log_end_offset() } else { hw };
            let log = Arc::clone(&replica.log);
            let offset = req.offset;
            let read = tokio::task::spawn_blocking(move || {
                let read = log.read(offset, max_bytes, Some(bound))?;
                let bytes = read.region.read_to_bytes()?;
                Ok((read, bytes))
            })
            .await
            .map_err(join_status)?
            .map_err(|e| read_status(&req.topic, req.partition, e, &replica, follower))?;
            let (read, bytes) = read;
            // Between the high watermark and the log end (written, not yet committed) there is
            // nothing for a consumer to read yet: the fetch waits as at the end of the log.
            let more_available = !bytes.is_empty() && read.region.next_offset() < bound;
            let now = tokio::time::Instant::now();
            let stopping = *stop.borrow();
            if bytes.len() >= (req.min_bytes as usize).max(1)
                || more_available
                || now >= deadline
                || stopping
            {
                let mut response = pb::FetchResponse {
                    record_batches: Bytes::new(),
                    records: Vec::new(),
                    high_watermark: replica.high_watermark(),
                    log_start_offset: read.log_start_offset,
                    next_offset: if bytes.is_empty() {
                        req.offset
                    } else {
                        read.region.next_offset()
                    },
                    traceparents: Vec::new(),
                };
                if follower && !bytes.is_empty() {
                    response.traceparents =
                        replica.traces_between(req.offset, response.next_offset);
                }
                if req.decode_records && !bytes.is_empty() {
                    // The batches read to answer (the gRPC framing counts the batches it
                    // sends, and sends none here).
                    crate::metrics::fetched(&req.topic, "grpc", bytes.len() as u64);
                    let from = req.offset;
                    let (records, next) =
                        tokio::task::spawn_blocking(move || decode(&bytes, from, max_bytes))
                            .await
                            .map_err(join_status)??;
                    response.records = records;
                    response.next_offset = next;
                } else {
                    response.record_batches = bytes;
                }
                return Ok(Response::new(response));
            }
            // Long poll: wait for the high watermark to move, the metadata to change, the
            // broker to stop, or the deadline.
            tokio::select! {
                _ = changed.changed() => {}
                _ = metadata_changed.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let spec = pb::OffsetSpec::try_from(req.spec).unwrap_or(pb::OffsetSpec::Unspecified);
        let replica = self.leader_replica(&req.topic, req.partition)?.replica;
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

    async fn offset_for_leader_epoch(
        &self,
        request: Request<pb::OffsetForLeaderEpochRequest>,
    ) -> Result<Response<pb::OffsetForLeaderEpochResponse>, Status> {
        let req = request.into_inner();
        let replica = self.leader_replica(&req.topic, req.partition)?.replica;
        check_epoch(req.current_leader_epoch, replica.leader_epoch, &req.topic, req.partition)?;
        let end = replica.log.log_end_offset();
        let (leader_epoch, end_offset) = if req.leader_epoch >= replica.leader_epoch {
            // The current epoch (nothing newer exists) ends at the log end.
            (replica.leader_epoch, end)
        } else {
            match replica.log.end_offset_for_epoch(req.leader_epoch) {
                Some(found) => found,
                // The asked epoch is newer than any this log appended under, but older than the
                // current one: the largest epoch at or below it here is the latest appended, and
                // it runs to the log end (the current epoch starts there).
                None => match replica.log.latest_epoch() {
                    Some(latest) if latest <= req.leader_epoch => (latest, end),
                    _ => (-1, replica.log.log_start_offset()),
                },
            }
        };
        Ok(Response::new(pb::OffsetForLeaderEpochResponse { leader_epoch, end_offset }))
    }
}
