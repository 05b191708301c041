//! The producer's record accumulator: per partition, an open batch that records are encoded
//! into, a queue of closed batches, and whether a batch is in flight. Pure state, driven by
//! the producer (appends) and the sender task (drains, completions), with time passed in so
//! tests control it.
//!
//! A batch closes when the next record would not fit in `batch_size`, when it reaches
//! `batch_size`, or when it is drained: after `linger`, or at once while a flush or close is
//! under way. At most one batch per partition is in flight, so retries cannot reorder them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foldhash::fast::RandomState;
use tideline_log::batch::BATCH_HEADER_LEN;
use tideline_log::{Compression, RecordBatchBuilder, RecordHeader};
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use tokio::time::Instant;

use crate::error::ClientError;
use crate::partitioner::Partitioner;
use crate::record::RecordMetadata;

/// Where the outcome of one record goes.
/// A delivery callback of `Producer::send_with_callback`.
pub(crate) type Callback = Box<dyn FnOnce(Result<RecordMetadata, ClientError>) + Send>;

/// Where a record's outcome goes: the [`DeliveryFuture`](crate::DeliveryFuture) of
/// `Producer::send`, or the callback of `Producer::send_with_callback`. Dropped without an
/// outcome (its batch task failed, the runtime stopped), it reports [`ClientError::Closed`],
/// as a dropped future does: every record's callback runs once.
pub(crate) enum DeliverySender {
    /// `None` once the outcome was sent.
    Future(Option<oneshot::Sender<Result<RecordMetadata, ClientError>>>),
    /// `None` once called.
    Callback(Option<Callback>),
}

impl DeliverySender {
    /// A sender that calls `callback`.
    pub(crate) fn callback(callback: Callback) -> Self {
        DeliverySender::Callback(Some(callback))
    }

    /// A sender that resolves a future through `tx`.
    pub(crate) fn future(tx: oneshot::Sender<Result<RecordMetadata, ClientError>>) -> Self {
        DeliverySender::Future(Some(tx))
    }

    /// Hands over the outcome (a dropped future is no error; a callback that panics is
    /// logged, and the other records' callbacks still run).
    pub(crate) fn send(mut self, outcome: Result<RecordMetadata, ClientError>) {
        self.deliver(outcome);
    }

    fn deliver(&mut self, outcome: Result<RecordMetadata, ClientError>) {
        match self {
            DeliverySender::Future(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(outcome);
                }
            }
            DeliverySender::Callback(callback) => {
                if let Some(f) = callback.take() {
                    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        f(outcome);
                    }));
                    if called.is_err() {
                        tracing::error!("a producer delivery callback panicked");
                    }
                }
            }
        }
    }
}

impl Drop for DeliverySender {
    fn drop(&mut self) {
        if matches!(self, DeliverySender::Callback(Some(_))) {
            self.deliver(Err(ClientError::Closed));
        }
    }
}

impl std::fmt::Debug for DeliverySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliverySender::Future(_) => "DeliverySender::Future",
            DeliverySender::Callback(_) => "DeliverySender::Callback",
        })
    }
}

/// A record accepted by `send`, on its way into a batch.
#[derive(Debug)]
pub(crate) struct PendingRecord {
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<RecordHeader>,
    /// Encoded size ([`RecordBatchBuilder::record_size`]).
    pub(crate) size: usize,
    /// Buffer memory held for the record until its batch completes.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) delivery: DeliverySender,
}

/// One record's completion: where its outcome goes and its timestamp.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) delivery: DeliverySender,
    pub(crate) timestamp_ms: i64,
}

/// Records of one partition encoded into one batch, with their completions in order.
/// Most bytes reserved up front for a new batch's buffer (it grows past this if needed).
const MAX_RESERVED: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct ProducerBatch {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    /// When its first record arrived: linger and the delivery timeout count from here.
    pub(crate) created: Instant,
    pub(crate) builder: RecordBatchBuilder,
    pub(crate) completions: Vec<Completion>,
    /// Buffer memory of all its records, released when the batch is dropped.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// Dropped with the batch, after its records were resolved: `flush` waits for that.
    pub(crate) done: watch::Sender<()>,
}

impl ProducerBatch {
    fn new(
        topic: Arc<str>,
        partition: i32,
        compression: Compression,
        capacity: usize,
        now: Instant,
    ) -> Self {
        ProducerBatch {
            topic,
            partition,
            created: now,
            builder: RecordBatchBuilder::with_capacity(compression, capacity),
            completions: Vec::new(),
            permit: None,
            done: watch::Sender::new(()),
        }
    }

    fn push(&mut self, record: PendingRecord) {
        self.builder.append(
            record.timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        self.completions
            .push(Completion { delivery: record.delivery, timestamp_ms: record.timestamp_ms });
        match (&mut self.permit, record.permit) {
            (Some(held), Some(permit)) => held.merge(permit),
            (held @ None, permit) => *held = permit,
            (Some(_), None) => {}
        }
    }

    /// Bytes the batch takes, before compression.
    fn size(&self) -> usize {
        self.builder.estimated_size()
    }
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<ProducerBatch>,
    ready: VecDeque<ProducerBatch>,
    /// The done signal of the batch in flight, if one is.
    in_flight: Option<watch::Receiver<()>>,
}

impl PartitionQueue {
    fn is_empty(&self) -> bool {
        self.open.is_none() && self.ready.is_empty() && self.in_flight.is_none()
    }
}

#[derive(Debug)]
struct TopicQueues {
    name: Arc<str>,
    partitions: HashMap<i32, PartitionQueue, RandomState>,
}

/// The batches of a producer, by topic and partition.
#[derive(Debug)]
pub(crate) struct Accumulator {
    batch_size: usize,
    linger: Duration,
    compression: Compression,
    /// Looked up for every record: a fast hash, not SipHash.
    topics: HashMap<Arc<str>, TopicQueues, RandomState>,
    partitioner: Partitioner,
    /// Flushes under way: while any is, open batches are sent without lingering.
    flushes: usize,
    closing: bool,
}

impl Accumulator {
    pub(crate) fn new(
        batch_size: usize,
        linger: Duration,
        compression: Compression,
        partitioner: Partitioner,
    ) -> Self {
        Accumulator {
            batch_size,
            linger,
            compression,
            topics: HashMap::default(),
            partitioner,
            flushes: 0,
            closing: false,
        }
    }

    /// The partition for a record without an explicit one: by key hash, or the topic's sticky
    /// partition.
    pub(crate) fn choose_partition(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        partitions: i32,
        available: &[i32],
    ) -> i32 {
        self.partitioner.partition(topic, key, partitions, available)
    }

    /// Adds a record to the partition's open batch, closing it first if the record would not
    /// fit, and after if it is full. Returns whether the sender should look again (a batch
    /// opened, so a linger timer starts, or one closed). `now` is called only when a batch
    /// opens (its creation time): most records read no clock here.
    pub(crate) fn append(
        &mut self,
        topic: &str,
        partition: i32,
        record: PendingRecord,
        now: impl FnOnce() -> Instant,
    ) -> bool {
        let queues = match self.topics.get_mut(topic) {
            Some(queues) => queues,
            None => {
                let name: Arc<str> = Arc::from(topic);
                self.topics
                    .entry(name.clone())
                    .or_insert(TopicQueues { name, partitions: HashMap::default() })
            }
        };
        let queue = queues.partitions.entry(partition).or_default();
        let mut wake = false;
        if let Some(open) = &queue.open
            && !open.builder.is_empty()
            && open.size() + record.size > self.batch_size
        {
            queue.ready.extend(queue.open.take());
            self.partitioner.on_batch_closed(topic, partition);
            wake = true;
        }
        let open = queue.open.get_or_insert_with(|| {
            wake = true;
            // Room for a whole batch (or this record, when larger), up to 1 MiB: records
            // are not moved as it fills, and a large `batch_size` over many partitions does
            // not reserve far more than `buffer_memory` counts.
            let capacity = self.batch_size.max(BATCH_HEADER_LEN + record.size).min(MAX_RESERVED);
            ProducerBatch::new(queues.name.clone(), partition, self.compression, capacity, now())
        });
        open.push(record);
        if open.size() >= self.batch_size {
            queue.ready.extend(queue.open.take());
            self.partitioner.on_batch_closed(topic, partition);
            wake = true;
        }
        wake
    }

    /// Takes the batches to send now: per partition with nothing in flight, the oldest closed
    /// batch, or the open one once it lingered long enough (at once during a flush or close).
    /// Their partitions count as in flight until [`Accumulator::complete`].
    pub(crate) fn drain(&mut self, now: Instant) -> Vec<ProducerBatch> {
        let force = self.flushes > 0 || self.closing;
        let mut out = Vec::new();
        for queues in self.topics.values_mut() {
            for (&partition, queue) in &mut queues.partitions {
                if queue.in_flight.is_some() {
                    continue;
                }
                let batch = if let Some(batch) = queue.ready.pop_front() {
                    batch
                } else if queue
                    .open
                    .as_ref()
                    .is_some_and(|b| force || now >= b.created + self.linger)
                {
                    self.partitioner.on_batch_closed(&queues.name, partition);
                    queue.open.take().expect("checked above")
                } else {
                    continue;
                };
                queue.in_flight = Some(batch.done.subscribe());
                out.push(batch);
            }
        }
        out
    }

    /// When the next open batch finishes lingering, if one is waiting for that.
    pub(crate) fn next_linger_deadline(&self) -> Option<Instant> {
        self.topics
            .values()
            .flat_map(|q| q.partitions.values())
            .filter(|q| q.in_flight.is_none() && q.ready.is_empty())
            .filter_map(|q| q.open.as_ref().map(|b| b.created + self.linger))
            .min()
    }

    /// The partition's batch in flight completed: the next may go.
    pub(crate) fn complete(&mut self, topic: &str, partition: i32) {
        let Some(queues) = self.topics.get_mut(topic) else { return };
        if let Some(queue) = queues.partitions.get_mut(&partition) {
            queue.in_flight = None;
            if queue.is_empty() {
                queues.partitions.remove(&partition);
            }
        }
        if queues.partitions.is_empty() {
            self.topics.remove(topic);
        }
    }

    /// Nothing buffered and nothing in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.topics.values().all(|q| q.partitions.values().all(PartitionQueue::is_empty))
    }

    /// Starts a flush: batches are sent without lingering until [`Accumulator::end_flush`].
    /// Returns the done signals of every batch buffered or in flight now.
    pub(crate) fn begin_flush(&mut self) -> Vec<watch::Receiver<()>> {
        self.flushes += 1;
        let mut signals = Vec::new();
        for queue in self.topics.values().flat_map(|q| q.partitions.values()) {
            signals.extend(queue.open.iter().chain(&queue.ready).map(|b| b.done.subscribe()));
            signals.extend(queue.in_flight.clone());
        }
        signals
    }

    /// Ends a flush started with [`Accumulator::begin_flush`].
    pub(crate) fn end_flush(&mut self) {
        self.flushes -= 1;
    }

    /// Stops accepting records; what is buffered is sent without lingering.
    pub(crate) fn close(&mut self) {
        self.closing = true;
    }

    /// Whether [`Accumulator::close`] was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callback dropped without an outcome (its batch task failed) still runs, with
    /// `Closed`; a callback that panics does not take the caller down.
    #[test]
    fn callbacks_run_once_even_when_dropped_or_panicking() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = got.clone();
        let sender =
            DeliverySender::callback(Box::new(move |r: Result<RecordMetadata, ClientError>| {
                seen.lock().unwrap().push(r.map(|m| m.offset));
            }));
        drop(sender);
        assert!(matches!(got.lock().unwrap()[..], [Err(ClientError::Closed)]));
        let panicking = DeliverySender::callback(Box::new(|_| panic!("a user callback fails")));
        panicking.send(Err(ClientError::Closed));
    }

    const LINGER: Duration = Duration::from_millis(5);

    fn accumulator(batch_size: usize) -> Accumulator {
        Accumulator::new(batch_size, LINGER, Compression::None, Partitioner::new(3))
    }

    /// A record with a value of `len` bytes, and the receiver of its outcome.
    fn record(
        len: usize,
    ) -> (PendingRecord, oneshot::Receiver<Result<RecordMetadata, ClientError>>) {
        let value = Bytes::from(vec![b'v'; len]);
        let size = RecordBatchBuilder::record_size(None, Some(&value), &[]);
        let (delivery, rx) = oneshot::channel();
        let record = PendingRecord {
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(value),
            headers: Vec::new(),
            size,
            permit: None,
            delivery: DeliverySender::future(delivery),
        };
        (record, rx)
    }

    fn append(acc: &mut Accumulator, partition: i32, len: usize, now: Instant) -> bool {
        acc.append("t", partition, record(len).0, || now)
    }

    /// A batch closes once the next record would not fit; closed batches go one per
    /// partition at a time, in order, without waiting for linger.
    #[test]
    fn batches_close_by_size_and_go_one_at_a_time() {
        let now = Instant::now();
        // A 61-byte header and 4 records of 107 bytes fit in 512 bytes; a 5th would not (the
        // check uses the worst-case record size, 120 bytes).
        let mut acc = accumulator(512);
        assert!(append(&mut acc, 0, 100, now), "a new batch wakes the sender");
        for _ in 0..3 {
            assert!(!append(&mut acc, 0, 100, now));
        }
        assert!(acc.drain(now).is_empty(), "4 records neither fill the batch nor lingered");
        assert!(append(&mut acc, 0, 100, now), "the 5th record closes the batch");
        for _ in 0..3 {
            assert!(!append(&mut acc, 0, 100, now));
        }
        assert!(append(&mut acc, 0, 100, now), "the 9th closes the second");

        let first = acc.drain(now);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].builder.len(), 4);
        assert!(first[0].size() <= 512);
        assert!(acc.drain(now).is_empty(), "one batch in flight per partition");

        acc.complete("t", 0);
        let second = acc.drain(now);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].builder.len(), 4);
        assert!(second[0].created >= first[0].created);
        acc.complete("t", 0);
        assert!(acc.drain(now).is_empty(), "the open batch still lingers");
        assert!(!acc.is_idle());
    }

    /// An open batch goes once `linger` has passed since its first record, and the sender
    /// is told when that is.
    #[test]
    fn open_batches_go_after_linger() {
        let t0 = Instant::now();
        let mut acc = accumulator(64 << 10);
        assert_eq!(acc.next_linger_deadline(), None);
        append(&mut acc, 0, 10, t0);
        append(&mut acc, 1, 10, t0 + Duration::from_millis(2));
        append(&mut acc, 0, 10, t0 + Duration::from_millis(3));
        assert_eq!(acc.next_linger_deadline(), Some(t0 + LINGER));

        assert!(acc.drain(t0 + Duration::from_millis(4)).is_empty());
        let batches = acc.drain(t0 + LINGER);
        assert_eq!(batches.len(), 1);
        assert_eq!((batches[0].partition, batches[0].builder.len()), (0, 2));
        assert_eq!(acc.next_linger_deadline(), Some(t0 + Duration::from_millis(2) + LINGER));

        let batches = acc.drain(t0 + Duration::from_millis(7));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].partition, 1);
        assert_eq!(acc.next_linger_deadline(), None);
        acc.complete("t", 0);
        acc.complete("t", 1);
        assert!(acc.is_idle());
        assert!(acc.topics.is_empty(), "completed partitions leave no state behind");
    }

    /// A record larger than batch_size is sent alone, and does not drag others along.
    #[test]
    fn oversized_records_go_alone() {
        let now = Instant::now();
        let mut acc = accumulator(256);
        append(&mut acc, 0, 10, now);
        append(&mut acc, 0, 1000, now);
        append(&mut acc, 0, 10, now);
        let sizes: Vec<i32> = (0..3)
            .map(|_| {
                let now = now + LINGER;
                let batch = acc.drain(now).pop().expect("a batch is ready");
                acc.complete("t", 0);
                batch.builder.len()
            })
            .collect();
        assert_eq!(sizes, [1, 1, 1]);
        let mut big = accumulator(256);
        append(&mut big, 0, 1000, now);
        assert_eq!(big.drain(now).len(), 1, "a full batch goes without lingering");
    }

    /// A flush sends open batches at once and hands out signals that fire when every batch
    /// buffered or in flight at the time is done.
    #[tokio::test]
    async fn flush_sends_everything_and_waits_for_it() {
        let now = Instant::now();
        let mut acc = accumulator(64 << 10);
        append(&mut acc, 0, 10, now);
        let in_flight = acc.drain(now + LINGER);
        assert_eq!(in_flight.len(), 1);
        append(&mut acc, 0, 10, now);
        append(&mut acc, 1, 10, now);

        let signals = acc.begin_flush();
        assert_eq!(signals.len(), 3, "two open batches and one in flight");
        let drained = acc.drain(now);
        assert_eq!(drained.len(), 1, "partition 0 still has a batch in flight");
        acc.end_flush();

        let mut wait = tokio::spawn(async move {
            for mut signal in signals {
                while signal.changed().await.is_ok() {}
            }
        });
        drop(in_flight);
        acc.complete("t", 0);
        drop(drained);
        acc.complete("t", 1);
        let pending = tokio::time::timeout(Duration::from_millis(50), &mut wait).await;
        assert!(pending.is_err(), "partition 0's second batch is still buffered");

        let rest = acc.drain(now + LINGER);
        assert_eq!(rest.len(), 1);
        drop(rest);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("flush signals fire once the batches are dropped")
            .unwrap();
    }

    /// Unkeyed records move to another partition once their sticky partition's batch closes.
    #[test]
    fn sticky_partition_moves_when_its_batch_closes() {
        let now = Instant::now();
        let mut acc = accumulator(64 << 10);
        let available = [0, 1, 2, 3];
        let first = acc.choose_partition("t", None, 4, &available);
        append(&mut acc, first, 10, now);
        assert_eq!(acc.choose_partition("t", None, 4, &available), first);
        let batches = acc.drain(now + LINGER);
        assert_eq!(batches.len(), 1);
        let second = acc.choose_partition("t", None, 4, &available);
        assert_ne!(second, first);
    }

    /// Records' buffer memory is held by their batch and released with it.
    #[tokio::test]
    async fn memory_is_released_with_the_batch() {
        let memory = Arc::new(tokio::sync::Semaphore::new(1000));
        let now = Instant::now();
        let mut acc = accumulator(64 << 10);
        for _ in 0..3 {
            let (mut r, _rx) = record(10);
            r.permit = Some(memory.clone().acquire_many_owned(100).await.unwrap());
            acc.append("t", 0, r, || now);
        }
        assert_eq!(memory.available_permits(), 700);
        let batch = acc.drain(now + LINGER).pop().unwrap();
        assert_eq!(memory.available_permits(), 700);
        drop(batch);
        assert_eq!(memory.available_permits(), 1000);
    }
}
