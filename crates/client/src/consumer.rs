//! [`Consumer`]: reads manually assigned partitions from their leaders, fetching ahead of
//! `poll` in background tasks the way Kafka's `Fetcher` does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tideline_common::error::{LOG_END_OFFSET_KEY, LOG_START_OFFSET_KEY};
use tideline_common::{ErrorCode, error_code_of};
use tideline_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::consumer_config::{AutoOffsetReset, ConsumerConfig};
use crate::error::ClientError;
use crate::fetch::{Decoded, decode};
use crate::record::ConsumerRecord;

/// A gRPC fetch answer may exceed `max_bytes` by this much (the answer's own fields, and a
/// first batch larger than `max_bytes`, which comes whole, up to the broker's message limit).
const MAX_FETCH_ANSWER_OVERHEAD: usize = 64 << 20;

/// Fetch responses larger than this are decoded on the blocking pool.
const BLOCKING_DECODE_BYTES: usize = 64 << 10;

/// Reads records from manually assigned partitions (Kafka's `assign`, no consumer group).
///
/// Fetches run in background tasks, as in Kafka's `Fetcher`: each assigned partition with a
/// position has one fetch task at a time, and a fetch that comes back with records keeps
/// them in the partition's buffer until `poll` returns them. Beneath it, the partition's
/// read-ahead fetches raw responses from where the last one ended (up to
/// `read_ahead_fetches` of them, overlapping on the data port), so the broker sends while
/// the client decodes and the caller works. Memory stays within `read_ahead_fetches` + 1
/// responses of `max_partition_fetch_bytes` per partition, besides those the caller holds.
///
/// Dropping the consumer aborts its fetches.
#[derive(Debug)]
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    assignment: Vec<Assigned>,
    /// The fetch tasks, and aborted ones not yet reaped. Dropping the set aborts them all.
    fetches: JoinSet<FetchOutcome>,
    /// The id of the next fetch, unique for the life of the consumer (the partitions'
    /// generation counter): a response counts only for the partition waiting for its id, so
    /// one from before a seek or a reassignment is dropped.
    next_fetch_id: u64,
}

#[derive(Debug)]
struct Assigned {
    topic: String,
    partition: i32,
    /// The next offset `poll` returns: past the last record it returned, or where a seek or
    /// an offset reset put it; records fetched ahead do not move it. `None` until set by
    /// `seek` or `auto_offset_reset`.
    position: Option<i64>,
    fetch: Fetch,
    /// The partition's raw fetches running ahead of its decoding, from where the last
    /// response ended: the next fetch when the position gets there (read-ahead).
    ahead: Option<ReadAhead>,
}

/// A partition's read-ahead: a task ([`read_ahead`]) that fetches the partition raw, each
/// fetch from where the one before ended, and queues the responses in order, with up to
/// `read_ahead_fetches` fetched or in flight beyond those decoded. Through the data port a
/// fetch starts as soon as the answer before it has sent its header (which says where it
/// ends), so two fetches overlap and the broker is not idle for a round trip between them.
/// Dropping it aborts the task and its fetches.
#[derive(Debug)]
struct ReadAhead {
    /// Where the next queued response was fetched from.
    next: i64,
    responses: mpsc::UnboundedReceiver<AheadResponse>,
    task: AbortOnDrop<()>,
}

/// One raw fetch of a read-ahead, and its share of the read-ahead's memory bound, given back
/// when a fetch task takes the response.
#[derive(Debug)]
struct AheadResponse {
    from: i64,
    raw: Result<Raw, ClientError>,
    _permit: OwnedSemaphorePermit,
}

impl ReadAhead {
    fn start(
        cluster: Cluster,
        topic: String,
        partition: i32,
        from: i64,
        params: FetchParams,
    ) -> Self {
        let (sender, responses) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(params.read_ahead));
        let task =
            tokio::spawn(read_ahead(cluster, topic, partition, from, params, permits, sender));
        ReadAhead { next: from, responses, task: AbortOnDrop(task) }
    }
}

/// Where the fetch after one from `from` that answered `raw` starts: past the batches it
/// brought, or from `from` again when it brought none (a long poll that timed out).
fn fetch_after(from: i64, raw: &Raw) -> i64 {
    if !raw.data.is_empty() && raw.next_offset > from { raw.next_offset } else { from }
}

/// Aborts a spawned task (a read-ahead, or one of its fetches) when dropped.
#[derive(Debug)]
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A read-ahead's fetch in flight: where it fetches from, the fetch, and its permit.
type InFlightFetch = (i64, AbortOnDrop<Result<Raw, ClientError>>, OwnedSemaphorePermit);

/// The task of a [`ReadAhead`]: fetches `topic`-`partition` from `from` on, each fetch from
/// where the one before ended, while a permit is free, and sends the responses in order. A
/// fetch starts when the one before has said where it ends: at its data-port header, or
/// when it completes (gRPC, an empty answer). Ends after sending an error, or when the
/// receiver is gone.
async fn read_ahead(
    cluster: Cluster,
    topic: String,
    partition: i32,
    from: i64,
    params: FetchParams,
    permits: Arc<Semaphore>,
    responses: mpsc::UnboundedSender<AheadResponse>,
) {
    let mut in_flight: VecDeque<InFlightFetch> = VecDeque::new();
    // Where the next fetch starts, once known.
    let mut next = Some(from);
    // The latest fetch's header hint, while its end is not yet known.
    let mut hint: Option<oneshot::Receiver<i64>> = None;
    loop {
        tokio::select! {
            permit = permits.clone().acquire_owned(), if next.is_some() => {
                let Ok(permit) = permit else { return };
                let Some(offset) = next.take() else { continue };
                let (hint_sender, hint_receiver) = oneshot::channel();
                let (cluster, topic) = (cluster.clone(), topic.clone());
                let fetch = tokio::spawn(async move {
                    fetch_or_back_off(&cluster, &topic, partition, offset, params, Some(hint_sender))
                        .await
                });
                in_flight.push_back((offset, AbortOnDrop(fetch), permit));
                hint = Some(hint_receiver);
            }
            said = async { hint.as_mut().expect("guarded").await }, if hint.is_some() => {
                hint = None;
                // No hint (an empty answer, or gRPC): the end comes with the response.
                if let Ok(offset) = said {
                    next = Some(offset);
                }
            }
            done = async { (&mut in_flight.front_mut().expect("guarded").1.0).await },
                if !in_flight.is_empty() =>
            {
                let Some((offset, _, permit)) = in_flight.pop_front() else { continue };
                let raw = match done {
                    Ok(raw) => raw,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => return,
                };
                let failed = raw.is_err();
                // The latest fetch ended without saying where before: it says now.
                if in_flight.is_empty() && next.is_none() {
                    hint = None;
                    if let Ok(raw) = &raw {
                        next = Some(fetch_after(offset, raw));
                    }
                }
                let response = AheadResponse { from: offset, raw, _permit: permit };
                if responses.send(response).is_err() || failed {
                    return;
                }
            }
        }
    }
}

/// A fetch response not yet decoded: the batches, and where the next fetch starts.
#[derive(Debug)]
struct Raw {
    data: bytes::Bytes,
    /// The broker's `next_offset`: past the last batch it sent.
    next_offset: i64,
}

/// Where a partition's fetching stands. A fetch starts only when nothing is buffered and
/// buffers are handed out whole, so every fetch reads from the partition's position.
#[derive(Debug, Default)]
enum Fetch {
    /// Nothing in flight, buffered or failed: a fetch starts at the next chance.
    #[default]
    Idle,
    /// A fetch from the position is in flight (or done, not yet reaped by `poll`).
    InFlight(InFlight),
    /// A fetch came back with records that `poll` has not returned yet.
    Buffered(Decoded),
    /// A fetch failed with an error that `poll` has not reported yet; no fetch starts until
    /// it has.
    Failed(ClientError),
}

/// A fetch in flight. Dropping it (the partition was sought or unassigned, or its response
/// was taken) aborts the task.
#[derive(Debug)]
struct InFlight {
    id: u64,
    task: AbortHandle,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Assigned {
    fn new(topic: String, partition: i32) -> Self {
        Assigned { topic, partition, position: None, fetch: Fetch::Idle, ahead: None }
    }

    /// Moves the position to `offset`, dropping records fetched ahead and abandoning the
    /// fetch in flight.
    fn seek(&mut self, offset: i64) {
        self.position = Some(offset);
        self.fetch = Fetch::Idle;
        self.ahead = None;
    }

    fn waits_for(&self, id: u64) -> bool {
        matches!(&self.fetch, Fetch::InFlight(f) if f.id == id)
    }
}

/// What one fetch task gave.
#[derive(Debug)]
struct FetchOutcome {
    /// The fetch's id (see [`Consumer::next_fetch_id`]).
    id: u64,
    result: Result<Decoded, ClientError>,
    /// The partition's read-ahead, now at where this response ended.
    ahead: Option<ReadAhead>,
}

impl Consumer {
    /// A consumer on `cluster` with nothing assigned.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a bad config.
    pub fn new(cluster: &Cluster, config: ConsumerConfig) -> Result<Self, ClientError> {
        config.validate()?;
        Ok(Consumer {
            cluster: cluster.clone(),
            config,
            assignment: Vec::new(),
            fetches: JoinSet::new(),
            next_fetch_id: 0,
        })
    }

    /// Replaces the assignment with `partitions` (duplicates ignored). Partitions that stay
    /// assigned keep their positions, and the records fetched ahead for them; new ones start
    /// per `auto_offset_reset` unless sought. The fetches of partitions no longer assigned are
    /// abandoned and their buffered records dropped.
    pub fn assign(&mut self, partitions: Vec<(String, i32)>) {
        let mut old = std::mem::take(&mut self.assignment);
        let mut assignment: Vec<Assigned> = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            if assignment.iter().any(|a| a.topic == topic && a.partition == partition) {
                continue;
            }
            let kept = old.iter().position(|a| a.topic == topic && a.partition == partition);
            assignment.push(match kept {
                Some(i) => old.swap_remove(i),
                None => Assigned::new(topic, partition),
            });
        }
        self.assignment = assignment;
    }

    /// The assigned partitions, in assignment order.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.assignment.iter().map(|a| (a.topic.clone(), a.partition)).collect()
    }

    /// The next offset `poll` returns from the partition: past the last record `poll`
    /// returned (records fetched ahead but not yet returned do not count), or where a seek or
    /// an offset reset put it. `None` when not assigned or not yet known (no `seek`, and no
    /// `poll` yet to apply `auto_offset_reset`).
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.find(topic, partition).and_then(|i| self.assignment[i].position)
    }

    /// Makes the next `poll` read the partition from `offset`: records fetched ahead from the
    /// old position are dropped and its fetch in flight is abandoned. An offset outside the
    /// log is handled by `auto_offset_reset` at the next fetch.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; [`ClientError::InvalidArgument`] for a negative offset.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), ClientError> {
        if offset < 0 {
            return Err(ClientError::InvalidArgument {
                reason: format!("cannot seek {topic}-{partition} to negative offset {offset}"),
            });
        }
        let index = self.assigned(topic, partition)?;
        self.assignment[index].seek(offset);
        Ok(())
    }

    /// Seeks the partition to the first offset of its log, asked of its leader, and returns it.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; the `ListOffsets` error after retries.
    pub async fn seek_to_beginning(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<i64, ClientError> {
        self.seek_to_spec(topic, partition, pb::OffsetSpec::Earliest, 0).await
    }

    /// Seeks the partition to the end of its log (the high watermark: the offset the next
    /// record will get), asked of its leader, and returns it.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; the `ListOffsets` error after retries.
    pub async fn seek_to_end(&mut self, topic: &str, partition: i32) -> Result<i64, ClientError> {
        self.seek_to_spec(topic, partition, pb::OffsetSpec::Latest, 0).await
    }

    /// Seeks the partition to its first record with a timestamp at or after `timestamp_ms`
    /// (the end of the log when there is none), and returns that offset.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; the `ListOffsets` error after retries.
    pub async fn seek_to_timestamp(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> Result<i64, ClientError> {
        self.seek_to_spec(topic, partition, pb::OffsetSpec::Timestamp, timestamp_ms).await
    }

    async fn seek_to_spec(
        &mut self,
        topic: &str,
        partition: i32,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<i64, ClientError> {
        let index = self.assigned(topic, partition)?;
        let offset = self.list_offset(topic, partition, spec, timestamp_ms).await?;
        self.assignment[index].seek(offset);
        Ok(offset)
    }

    /// Returns the records fetched since the last `poll`, waiting up to `timeout` for some
    /// when there are none yet. Returns as soon as fetches brought records, with those of
    /// every partition that has some (assignment order, each partition's in offset order); an
    /// empty result means none came in time. Before returning it starts the next fetch of the
    /// partitions it returned records of, so those run while the caller works.
    ///
    /// Partitions without a position start per `auto_offset_reset`, and so do partitions whose
    /// position fell out of the log. Retriable errors (leader moved, broker unreachable) are
    /// retried after refreshing metadata and pausing `retry_backoff`.
    ///
    /// Cancelling a `poll` (dropping its future) loses no records: they stay buffered for the
    /// next one.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] with no assignment; [`ClientError::NoPosition`] or
    /// [`ClientError::OffsetOutOfRange`] under `AutoOffsetReset::None`;
    /// [`ClientError::Corrupt`] for a batch that fails its CRC; errors that are not
    /// retriable. When records are ready along with an error, the records are returned first
    /// and the error comes at the next `poll`; the failed partition is fetched again after
    /// that.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.assignment.is_empty() {
            return Err(ClientError::InvalidArgument {
                reason: "poll without an assignment: assign partitions first".into(),
            });
        }
        let deadline = Instant::now() + timeout;
        if let Some(error) = self.take_error() {
            return Err(error);
        }
        self.reset_missing_positions().await?;
        loop {
            while let Some(joined) = self.fetches.try_join_next() {
                self.complete(joined).await;
            }
            let records = self.take_buffered();
            self.start_fetches();
            if !records.is_empty() {
                return Ok(records);
            }
            if let Some(error) = self.take_error() {
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Ok(records);
            }
            match tokio::time::timeout_at(deadline, self.fetches.join_next()).await {
                Ok(Some(joined)) => self.complete(joined).await,
                // Nothing in flight (every partition is buffered or failed, which the checks
                // above rule out): nothing can come before the deadline.
                Ok(None) => tokio::time::sleep_until(deadline).await,
                Err(_elapsed) => {}
            }
        }
    }

    /// Starts a fetch, from its position, for every partition that has one and nothing in
    /// flight, buffered or failed.
    fn start_fetches(&mut self) {
        let params = FetchParams {
            max_bytes: self.config.max_partition_fetch_bytes as i32,
            min_bytes: self.config.fetch_min_bytes as i32,
            max_wait: self.config.fetch_max_wait,
            check_crcs: self.config.check_crcs,
            retry_backoff: self.config.retry_backoff,
            use_data_port: self.config.use_data_port,
            read_ahead: self.config.read_ahead_fetches,
        };
        for a in &mut self.assignment {
            let (Fetch::Idle, Some(position)) = (&a.fetch, a.position) else { continue };
            let id = self.next_fetch_id;
            self.next_fetch_id += 1;
            let (cluster, topic, partition) = (self.cluster.clone(), a.topic.clone(), a.partition);
            // The fetch read ahead from here, if one was (a seek or reset elsewhere drops it).
            let ahead = a.ahead.take().filter(|ahead| ahead.next == position);
            let task = self
                .fetches
                .spawn(fetch_task(cluster, topic, partition, position, params, ahead, id));
            a.fetch = Fetch::InFlight(InFlight { id, task });
        }
    }

    /// Takes in a finished fetch task: buffers its records, moves the position past a
    /// response without records, resets an out-of-range position, or keeps a fatal error for
    /// `poll` to report. A response for a fetch its partition no longer waits for (sought or
    /// unassigned since) is dropped.
    async fn complete(&mut self, joined: Result<FetchOutcome, JoinError>) {
        let FetchOutcome { id, result, ahead } = match joined {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Aborted: its partition was sought or unassigned.
            Err(_) => return,
        };
        let Some(index) = self.assignment.iter().position(|a| a.waits_for(id)) else {
            return;
        };
        let a = &mut self.assignment[index];
        // Idle before any await: should this `poll` be cancelled, the next one fetches again.
        a.fetch = Fetch::Idle;
        a.ahead = ahead;
        match result {
            // Nothing to hand out (or only control batches): the position moves at once.
            Ok(decoded) if decoded.records.is_empty() => a.position = Some(decoded.next_position),
            Ok(decoded) => a.fetch = Fetch::Buffered(decoded),
            Err(error @ ClientError::OffsetOutOfRange { .. }) => {
                if let Err(error) = self.reset_out_of_range(index, error).await {
                    self.assignment[index].fetch = Fetch::Failed(error);
                }
            }
            // The task paused `retry_backoff` (after refreshing metadata when the error says
            // it is outdated): the partition's next fetch is the retry.
            Err(error) if is_retried(&error) => {}
            Err(error) => a.fetch = Fetch::Failed(error),
        }
    }

    /// Hands out every buffered record, partition by partition in assignment order, moving
    /// each partition's position past its records.
    fn take_buffered(&mut self) -> Vec<ConsumerRecord> {
        let mut records = Vec::new();
        for a in &mut self.assignment {
            let Fetch::Buffered(decoded) = &mut a.fetch else { continue };
            let Decoded { records: fetched, next_position } = std::mem::take(decoded);
            a.fetch = Fetch::Idle;
            a.position = Some(next_position);
            if records.is_empty() {
                records = fetched;
            } else {
                records.extend(fetched);
            }
        }
        records
    }

    /// Takes the error of the first failed partition (in assignment order), which may then be
    /// fetched again.
    fn take_error(&mut self) -> Option<ClientError> {
        for a in &mut self.assignment {
            if let Fetch::Failed(error) = &a.fetch {
                let error = error.clone();
                a.fetch = Fetch::Idle;
                return Some(error);
            }
        }
        None
    }

    /// Sets the positions of partitions that have none, per `auto_offset_reset`.
    async fn reset_missing_positions(&mut self) -> Result<(), ClientError> {
        for index in 0..self.assignment.len() {
            if self.assignment[index].position.is_some() {
                continue;
            }
            let (topic, partition) =
                (self.assignment[index].topic.clone(), self.assignment[index].partition);
            let spec = match self.config.auto_offset_reset {
                AutoOffsetReset::Earliest => pb::OffsetSpec::Earliest,
                AutoOffsetReset::Latest => pb::OffsetSpec::Latest,
                AutoOffsetReset::None => return Err(ClientError::NoPosition { topic, partition }),
            };
            let offset = self.list_offset(&topic, partition, spec, 0).await?;
            debug!(%topic, partition, offset, ?spec, "position reset");
            self.assignment[index].position = Some(offset);
        }
        Ok(())
    }

    /// Moves a partition whose position fell out of its log per `auto_offset_reset`.
    async fn reset_out_of_range(
        &mut self,
        index: usize,
        error: ClientError,
    ) -> Result<(), ClientError> {
        let ClientError::OffsetOutOfRange { log_start_offset, log_end_offset, .. } = &error else {
            return Err(error);
        };
        let Assigned { topic, partition, position, .. } = &self.assignment[index];
        let (topic, partition, position) = (topic.clone(), *partition, *position);
        let offset = match self.config.auto_offset_reset {
            AutoOffsetReset::None => return Err(error),
            AutoOffsetReset::Earliest => match log_start_offset {
                Some(offset) => *offset,
                None => self.list_offset(&topic, partition, pb::OffsetSpec::Earliest, 0).await?,
            },
            AutoOffsetReset::Latest => match log_end_offset {
                Some(offset) => *offset,
                None => self.list_offset(&topic, partition, pb::OffsetSpec::Latest, 0).await?,
            },
        };
        warn!(
            %topic,
            partition,
            from = ?position,
            to = offset,
            policy = ?self.config.auto_offset_reset,
            "fetch position out of range; reset"
        );
        self.assignment[index].position = Some(offset);
        Ok(())
    }

    async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<i64, ClientError> {
        let request = pb::ListOffsetsRequest {
            topic: topic.to_string(),
            partition,
            spec: spec as i32,
            timestamp_ms,
        };
        let deadline = Instant::now() + self.cluster.request_timeout();
        let response = self
            .cluster
            .call_leader(
                &format!("list offsets of {topic}-{partition}"),
                topic,
                partition,
                deadline,
                self.config.retry_backoff,
                |mut client| {
                    let request = request.clone();
                    async move { client.list_offsets(request).await }
                },
            )
            .await?;
        Ok(response.offset)
    }

    fn find(&self, topic: &str, partition: i32) -> Option<usize> {
        self.assignment.iter().position(|a| a.topic == topic && a.partition == partition)
    }

    fn assigned(&self, topic: &str, partition: i32) -> Result<usize, ClientError> {
        self.find(topic, partition)
            .ok_or_else(|| ClientError::NotAssigned { topic: topic.to_string(), partition })
    }
}

#[derive(Debug, Clone, Copy)]
struct FetchParams {
    max_bytes: i32,
    min_bytes: i32,
    max_wait: Duration,
    check_crcs: bool,
    retry_backoff: Duration,
    use_data_port: bool,
    /// Raw fetches a partition's read-ahead runs beyond the responses decoded.
    read_ahead: usize,
}

/// Errors after which the partition is simply fetched again: retriable ones, and timeouts
/// (of the metadata lookup for the leader).
fn is_retried(error: &ClientError) -> bool {
    error.is_retriable() || matches!(error, ClientError::TimedOut { .. })
}

/// A fetch task: the raw response from `position`, taken from the partition's read-ahead
/// (started here when there is none from `position`), then decoded while the read-ahead
/// fetches on (the broker sends the next batches while this task decodes and the application
/// processes these).
async fn fetch_task(
    cluster: Cluster,
    topic: String,
    partition: i32,
    position: i64,
    params: FetchParams,
    ahead: Option<ReadAhead>,
    id: u64,
) -> FetchOutcome {
    let mut ahead = match ahead {
        Some(ahead) if ahead.next == position => ahead,
        _ => ReadAhead::start(cluster.clone(), topic.clone(), partition, position, params),
    };
    let (raw, permit) = loop {
        let Some(AheadResponse { from, raw, _permit: permit }) = ahead.responses.recv().await
        else {
            // The read-ahead ends only after sending an error (taken with its response), or
            // by a panic, which goes on here.
            if let Err(e) = (&mut ahead.task.0).await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
            return FetchOutcome { id, result: Err(ClientError::Closed), ahead: None };
        };
        if from == position {
            break (raw, permit);
        }
        // Never expected (it answers in order, from where each answer ended): a read-ahead
        // out of step with the position starts over from the position.
        warn!(%topic, partition, from, position, "read-ahead out of step; fetching again");
        ahead = ReadAhead::start(cluster.clone(), topic.clone(), partition, position, params);
    };
    // This response is now this task's (the partition's one decoded or buffered response):
    // the read-ahead may fetch another while it is decoded.
    drop(permit);
    let raw = match raw {
        Ok(raw) => raw,
        // The read-ahead has ended.
        Err(error) => return FetchOutcome { id, result: Err(error), ahead: None },
    };
    ahead.next = fetch_after(position, &raw);
    let result = decode_raw(topic, partition, raw.data, position, params.check_crcs).await;
    FetchOutcome { id, result, ahead: Some(ahead) }
}

/// One raw fetch of a fetch task. After an error that [`is_retried`] it refreshes the metadata
/// (when the error says it is outdated) and pauses `retry_backoff` before returning the error,
/// so the partition's next fetch can start at once.
async fn fetch_or_back_off(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    position: i64,
    params: FetchParams,
    end_hint: Option<oneshot::Sender<i64>>,
) -> Result<Raw, ClientError> {
    let started = Instant::now();
    let result = fetch_partition(cluster, topic, partition, position, params, end_hint).await;
    if let Err(error) = &result
        && is_retried(error)
    {
        debug!(%topic, partition, %error, "fetch failed; will retry");
        if error.invalidates_metadata()
            && let Err(error) = cluster.refresh_after(started).await
        {
            debug!(%error, "metadata refresh failed");
        }
        tokio::time::sleep(params.retry_backoff).await;
    }
    result
}

/// One fetch from the partition's leader, not decoded. Through the data port, `end_hint`
/// gets the response's `next_offset` as soon as its header says the response brings
/// batches; it is dropped unsent otherwise.
async fn fetch_partition(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    position: i64,
    params: FetchParams,
    end_hint: Option<oneshot::Sender<i64>>,
) -> Result<Raw, ClientError> {
    let operation = format!("fetch from {topic}-{partition}");
    let address = cluster.leader(topic, partition).await?;
    let current_leader_epoch =
        cluster.metadata().partition(topic, partition).map(|p| p.leader_epoch);
    let max_wait_ms = i32::try_from(params.max_wait.as_millis()).unwrap_or(i32::MAX);
    let limit = params.max_wait + cluster.request_timeout();
    let data = match cluster.data_address(&address).filter(|_| params.use_data_port) {
        Some(data_address) => {
            let request = pb::DataFetchRequest {
                partitions: vec![pb::DataFetchPartition {
                    topic: topic.to_string(),
                    partition,
                    offset: position,
                    max_bytes: params.max_bytes,
                    current_leader_epoch,
                }],
                max_wait_ms,
                min_bytes: params.min_bytes,
                replica_id: None,
            };
            let on_header = |header: &pb::DataFetchResponse| {
                if let (Some(hint), Some(p)) = (end_hint, header.partitions.first())
                    && p.error_code == ErrorCode::Unspecified as i32
                    && p.payload_length > 0
                    && p.next_offset > position
                {
                    let _ = hint.send(p.next_offset);
                }
            };
            let fetched = cluster.data_connections().fetch(&data_address, &request, on_header);
            let (header, mut payloads) = match tokio::time::timeout(limit, fetched).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    return Err(ClientError::Transport {
                        operation,
                        address: data_address,
                        message: e.to_string(),
                    });
                }
                Err(_) => return Err(ClientError::no_answer(operation, &data_address, limit)),
            };
            let (Some(p), Some(bytes)) = (header.partitions.first(), payloads.pop()) else {
                return Err(ClientError::Transport {
                    operation,
                    address: data_address,
                    message: "an answer without the partition asked".into(),
                });
            };
            match ErrorCode::try_from(p.error_code).unwrap_or(ErrorCode::StorageError) {
                ErrorCode::Unspecified => Raw { data: bytes, next_offset: p.next_offset },
                ErrorCode::OffsetOutOfRange => {
                    return Err(ClientError::OffsetOutOfRange {
                        topic: topic.to_string(),
                        partition,
                        offset: position,
                        log_start_offset: (p.log_start_offset >= 0).then_some(p.log_start_offset),
                        log_end_offset: (p.high_watermark >= 0).then_some(p.high_watermark),
                        message: p.error_message.clone(),
                    });
                }
                code => {
                    return Err(ClientError::Server {
                        operation,
                        address: data_address,
                        code,
                        message: p.error_message.clone(),
                        leader: None,
                    });
                }
            }
        }
        None => {
            fetch_grpc(cluster, &address, topic, partition, position, params, operation).await?
        }
    };
    Ok(data)
}

/// Decodes a response fetched from `position` (on the blocking pool when it is large).
async fn decode_raw(
    topic: String,
    partition: i32,
    data: bytes::Bytes,
    position: i64,
    check_crcs: bool,
) -> Result<Decoded, ClientError> {
    let decoded = if data.len() > BLOCKING_DECODE_BYTES {
        let topic = topic.clone();
        match tokio::task::spawn_blocking(move || {
            decode(&topic, partition, &data, position, check_crcs)
        })
        .await
        {
            Ok(decoded) => decoded,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Ok(Decoded { records: Vec::new(), next_position: position }),
        }
    } else {
        decode(&topic, partition, &data, position, check_crcs)
    };
    decoded.map_err(|error| ClientError::Corrupt { topic, partition, error })
}

/// One gRPC `Fetch` from the leader at `address`: the batches and the next offset.
async fn fetch_grpc(
    cluster: &Cluster,
    address: &str,
    topic: &str,
    partition: i32,
    position: i64,
    params: FetchParams,
    operation: String,
) -> Result<Raw, ClientError> {
    let channel = cluster.channel(address)?;
    let request = pb::FetchRequest {
        topic: topic.to_string(),
        partition,
        offset: position,
        max_bytes: params.max_bytes,
        max_wait_ms: i32::try_from(params.max_wait.as_millis()).unwrap_or(i32::MAX),
        min_bytes: params.min_bytes,
        decode_records: false,
        replica_id: None,
        current_leader_epoch: cluster
            .metadata()
            .partition(topic, partition)
            .map(|p| p.leader_epoch),
    };
    let limit = params.max_wait + cluster.request_timeout();
    let max_answer = params.max_bytes as usize + MAX_FETCH_ANSWER_OVERHEAD;
    let fetched = crate::grpc_call::fetch(channel, &request, max_answer);
    match tokio::time::timeout(limit, fetched).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            Ok(Raw { data: response.record_batches, next_offset: response.next_offset })
        }
        Ok(Err(status)) if error_code_of(&status) == Some(ErrorCode::OffsetOutOfRange) => {
            let read = |key: &str| {
                status
                    .metadata()
                    .get(key)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
            };
            Err(ClientError::OffsetOutOfRange {
                topic: topic.to_string(),
                partition,
                offset: position,
                log_start_offset: read(LOG_START_OFFSET_KEY),
                log_end_offset: read(LOG_END_OFFSET_KEY),
                message: status.message().to_string(),
            })
        }
        Ok(Err(status)) => Err(ClientError::from_status(operation, address, &status)),
        Err(_) => Err(ClientError::no_answer(operation, address, limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    fn consumer() -> Consumer {
        let cluster = Cluster::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        Consumer::new(&cluster, ConsumerConfig::default()).unwrap()
    }

    /// Reassigning keeps the positions of partitions that stay, drops the others, and ignores
    /// duplicates; seeks only work on assigned partitions.
    #[test]
    fn assignment_and_positions() {
        let mut c = consumer();
        c.assign(vec![("a".into(), 0), ("a".into(), 1), ("a".into(), 0)]);
        assert_eq!(c.assignment(), [("a".to_string(), 0), ("a".to_string(), 1)]);
        assert_eq!(c.position("a", 0), None);
        c.seek("a", 0, 42).unwrap();
        c.seek("a", 1, 7).unwrap();
        assert!(matches!(c.seek("b", 0, 1), Err(ClientError::NotAssigned { .. })));
        assert!(matches!(c.seek("a", 0, -1), Err(ClientError::InvalidArgument { .. })));

        c.assign(vec![("a".into(), 0), ("b".into(), 0)]);
        assert_eq!(c.position("a", 0), Some(42));
        assert_eq!(c.position("a", 1), None);
        assert_eq!(c.position("b", 0), None);
    }

    /// Out-of-range positions move to the range the broker reported, or fail under `None`.
    #[tokio::test]
    async fn out_of_range_resets_per_policy() {
        let out_of_range = || ClientError::OffsetOutOfRange {
            topic: "a".into(),
            partition: 0,
            offset: 3,
            log_start_offset: Some(10),
            log_end_offset: Some(20),
            message: "offset 3 is below the log start 10".into(),
        };
        let mut c = consumer();
        c.assign(vec![("a".into(), 0)]);
        c.seek("a", 0, 3).unwrap();
        c.config.auto_offset_reset = AutoOffsetReset::Earliest;
        c.reset_out_of_range(0, out_of_range()).await.unwrap();
        assert_eq!(c.position("a", 0), Some(10));
        c.config.auto_offset_reset = AutoOffsetReset::Latest;
        c.reset_out_of_range(0, out_of_range()).await.unwrap();
        assert_eq!(c.position("a", 0), Some(20));
        c.config.auto_offset_reset = AutoOffsetReset::None;
        let error = c.reset_out_of_range(0, out_of_range()).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange));
        assert_eq!(c.position("a", 0), Some(20));
    }

    /// Without a position and with `auto_offset_reset = None`, poll refuses to guess; without
    /// an assignment it refuses too.
    #[tokio::test]
    async fn poll_needs_an_assignment_and_a_position() {
        let mut c = consumer();
        let error = c.poll(Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(error, ClientError::InvalidArgument { .. }), "{error}");
        c.config.auto_offset_reset = AutoOffsetReset::None;
        c.assign(vec![("a".into(), 0)]);
        let error = c.poll(Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(error, ClientError::NoPosition { .. }), "{error}");
    }

    /// Records of `a`-`partition` at `offsets`, the position after them next.
    fn decoded(partition: i32, offsets: std::ops::Range<i64>) -> Decoded {
        let record = |offset| ConsumerRecord {
            topic: "a".into(),
            partition,
            offset,
            timestamp_ms: 0,
            key: None,
            value: None,
            headers: Vec::new(),
        };
        Decoded { records: offsets.clone().map(record).collect(), next_position: offsets.end }
    }

    /// Puts a stand-in fetch in flight on assigned partition `index`; it answers `result` as
    /// soon as it runs.
    fn answer(c: &mut Consumer, index: usize, result: Result<Decoded, ClientError>) {
        let id = c.next_fetch_id;
        c.next_fetch_id += 1;
        let task = c.fetches.spawn(async move { FetchOutcome { id, result, ahead: None } });
        c.assignment[index].fetch = Fetch::InFlight(InFlight { id, task });
    }

    /// Waits for every fetch task and takes each in, as `poll` does.
    async fn complete_all(c: &mut Consumer) {
        while let Some(joined) = c.fetches.join_next().await {
            c.complete(joined).await;
        }
    }

    fn offsets(records: &[ConsumerRecord]) -> Vec<(i32, i64)> {
        records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    /// A fetched response is buffered without moving the position; handing it out moves the
    /// position past its records. A response without records (only control batches) moves
    /// the position at once.
    #[tokio::test]
    async fn records_fetched_ahead_do_not_move_the_position() {
        let mut c = consumer();
        c.assign(vec![("a".into(), 0)]);
        c.seek("a", 0, 0).unwrap();
        answer(&mut c, 0, Ok(decoded(0, 0..3)));
        complete_all(&mut c).await;
        assert!(matches!(c.assignment[0].fetch, Fetch::Buffered(_)));
        assert_eq!(c.position("a", 0), Some(0), "buffered, not yet returned");
        assert_eq!(offsets(&c.take_buffered()), [(0, 0), (0, 1), (0, 2)]);
        assert_eq!(c.position("a", 0), Some(3));
        assert!(matches!(c.assignment[0].fetch, Fetch::Idle), "the next fetch may start");

        answer(&mut c, 0, Ok(Decoded { records: Vec::new(), next_position: 5 }));
        complete_all(&mut c).await;
        assert_eq!(c.position("a", 0), Some(5));
        assert!(matches!(c.assignment[0].fetch, Fetch::Idle));
        assert!(c.take_buffered().is_empty());
    }

    /// A seek drops the records buffered from the old position, and a response to a fetch
    /// from before the seek (or from before the partition was unassigned and assigned again)
    /// is ignored, even when it finished before the seek.
    #[tokio::test]
    async fn seeks_and_reassignments_drop_old_fetches() {
        let mut c = consumer();
        c.assign(vec![("a".into(), 0), ("a".into(), 1)]);
        c.seek("a", 0, 0).unwrap();
        answer(&mut c, 0, Ok(decoded(0, 0..3)));
        complete_all(&mut c).await;
        c.seek("a", 0, 10).unwrap();
        assert!(c.take_buffered().is_empty());
        assert_eq!(c.position("a", 0), Some(10));

        // Finished (not aborted) before the seek, not yet taken in.
        answer(&mut c, 0, Ok(decoded(0, 10..12)));
        tokio::task::yield_now().await;
        c.seek("a", 0, 20).unwrap();
        complete_all(&mut c).await;
        assert!(c.take_buffered().is_empty());
        assert_eq!(c.position("a", 0), Some(20));
        assert!(matches!(c.assignment[0].fetch, Fetch::Idle));

        c.seek("a", 1, 0).unwrap();
        answer(&mut c, 1, Ok(decoded(1, 0..3)));
        c.assign(vec![("a".into(), 0)]);
        c.assign(vec![("a".into(), 0), ("a".into(), 1)]);
        complete_all(&mut c).await;
        assert!(c.take_buffered().is_empty());
        assert_eq!(c.position("a", 1), None, "assigned afresh");
        assert_eq!(c.next_fetch_id, 3, "one id per fetch, never reused");
    }

    /// Records buffered for several partitions come out together, in assignment order,
    /// whichever fetch finished first; a reassignment keeps those of partitions that stay.
    #[tokio::test]
    async fn buffers_of_every_partition_come_out_together() {
        let mut c = consumer();
        c.assign(vec![("a".into(), 0), ("a".into(), 1), ("a".into(), 2)]);
        for p in 0..3 {
            c.seek("a", p, 0).unwrap();
        }
        answer(&mut c, 1, Ok(decoded(1, 0..2)));
        complete_all(&mut c).await;
        answer(&mut c, 0, Ok(decoded(0, 0..1)));
        answer(&mut c, 2, Ok(decoded(2, 0..1)));
        complete_all(&mut c).await;
        c.assign(vec![("a".into(), 2), ("a".into(), 1)]);
        assert_eq!(offsets(&c.take_buffered()), [(2, 0), (1, 0), (1, 1)]);
        assert_eq!((c.position("a", 1), c.position("a", 2)), (Some(2), Some(1)));
    }

    /// A fatal error is kept until taken, records of other partitions come out before it,
    /// and a retriable one leaves the partition to be fetched again; out-of-range positions
    /// reset.
    #[tokio::test]
    async fn fetch_errors_are_kept_retried_or_reset() {
        let mut c = consumer();
        c.config.auto_offset_reset = AutoOffsetReset::Earliest;
        c.assign(vec![("a".into(), 0), ("a".into(), 1), ("a".into(), 2), ("a".into(), 3)]);
        for p in 0..4 {
            c.seek("a", p, 7).unwrap();
        }
        let fatal = ClientError::Rpc {
            operation: "fetch from a-1".into(),
            address: "h:1".into(),
            code: tonic::Code::Unimplemented,
            message: "no such method".into(),
        };
        let retriable = ClientError::Transport {
            operation: "fetch from a-2".into(),
            address: "h:1".into(),
            message: "connection refused".into(),
        };
        let out_of_range = ClientError::OffsetOutOfRange {
            topic: "a".into(),
            partition: 3,
            offset: 7,
            log_start_offset: Some(2),
            log_end_offset: Some(5),
            message: "offset 7 is past the log end 5".into(),
        };
        answer(&mut c, 0, Ok(decoded(0, 7..9)));
        answer(&mut c, 1, Err(fatal));
        answer(&mut c, 2, Err(retriable));
        answer(&mut c, 3, Err(out_of_range));
        complete_all(&mut c).await;
        assert_eq!(offsets(&c.take_buffered()), [(0, 7), (0, 8)]);
        assert!(matches!(c.assignment[2].fetch, Fetch::Idle), "fetched again");
        assert_eq!(c.position("a", 2), Some(7));
        assert_eq!(c.position("a", 3), Some(2), "reset to the log start");
        let error = c.take_error().expect("the fatal error is kept");
        assert!(matches!(error, ClientError::Rpc { .. }), "{error}");
        assert!(c.take_error().is_none(), "reported once");
        assert!(matches!(c.assignment[1].fetch, Fetch::Idle), "fetched again after the report");
    }

    /// The consumer can move between tasks and be shared, as before fetches ran in the
    /// background.
    #[test]
    fn consumers_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Consumer>();
    }
}
