//! [`Producer`]: sends records to partition leaders in batches, and [`DeliveryFuture`], the
//! outcome of one record.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tideline_log::batch::BATCH_HEADER_LEN;
use tideline_log::{RecordBatchBuilder, RecordHeader};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::error;

use crate::accumulator::{Accumulator, DeliverySender, PendingRecord};
use crate::cluster::{Cluster, lock};
use crate::error::ClientError;
use crate::metadata::Metadata;
use crate::partitioner::{Partitioner, XorShift};
use crate::producer_config::ProducerConfig;
use crate::record::{ProducerRecord, RecordMetadata};
use crate::sender::{self, Shared};

/// Sends records to Tideline, as Kafka's producer does: `send` encodes the record into its
/// partition's open batch and returns at once with a [`DeliveryFuture`]; a background task
/// sends batches when they are full or have lingered, one in flight per partition (so order
/// holds across retries), many partitions in parallel, retrying retriable errors until
/// `delivery_timeout`.
///
/// Share it between tasks behind an `Arc`. Dropping it without [`Producer::close`] still
/// sends what is buffered, in the background.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Producer {
    /// A producer on `cluster`; starts its sender task.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a bad config, or when called outside a tokio
    /// runtime.
    pub fn new(cluster: &Cluster, config: ProducerConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ClientError::InvalidArgument {
                reason: "a producer must be created inside a tokio runtime".into(),
            })?;
        let accumulator = Accumulator::new(
            config.batch_size,
            config.linger,
            config.compression,
            Partitioner::new(XorShift::seed_from_time()),
        );
        let shared = Arc::new(Shared {
            cluster: cluster.clone(),
            memory: Arc::new(Semaphore::new(config.buffer_memory)),
            config,
            accumulator: Mutex::new(accumulator),
            wake: Notify::new(),
            idempotence: Default::default(),
            broker_slots: Default::default(),
        });
        let sender = runtime.spawn(sender::run(shared.clone()));
        Ok(Producer { shared, sender: Mutex::new(Some(sender)) })
    }

    /// The producer's config.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Adds a record to its partition's batch and returns the future of its delivery. Waits
    /// (up to `max_block`) for the topic's metadata and for buffer memory.
    ///
    /// The partition is the record's own, else `murmur2(key)` for a keyed record, else the
    /// topic's sticky partition.
    ///
    /// # Errors
    /// [`ClientError::RecordTooLarge`] when the record cannot fit in `buffer_memory`;
    /// [`ClientError::UnknownPartition`] for a partition the topic lacks;
    /// [`ClientError::TimedOut`] when the topic stays unknown or memory stays full for
    /// `max_block`; [`ClientError::Closed`] after [`Producer::close`]. Delivery errors come
    /// through the [`DeliveryFuture`].
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let (delivery, rx) = oneshot::channel();
        self.enqueue(record, DeliverySender::future(delivery)).await?;
        Ok(DeliveryFuture { rx })
    }

    /// [`Producer::send`] with a callback instead of a future, as Kafka's
    /// `send(record, callback)`: `callback` gets the record's outcome once its batch is
    /// acknowledged or failed for good ([`ClientError::Closed`] if the producer's runtime
    /// stops first). It runs on the task that sent the batch, in the order of the partition's
    /// records, concurrently with other partitions' callbacks: keep it short. A callback that
    /// panics is logged. Cheaper than a future per record when records are many and small.
    /// When `send_with_callback` itself fails, the callback gets the same error; when its
    /// future is dropped before the record was added, [`ClientError::Closed`].
    ///
    /// # Errors
    /// Those of [`Producer::send`].
    pub async fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(Result<RecordMetadata, ClientError>) + Send + 'static,
    ) -> Result<(), ClientError> {
        self.enqueue(record, DeliverySender::callback(Box::new(callback))).await
    }

    /// Puts the record in its partition's batch, its outcome to go to `delivery`. When that
    /// fails, `delivery` gets the same error (as a Kafka callback does).
    ///
    /// Nearly always the topic's metadata is cached and buffer memory is free: the record is
    /// appended without waiting, and the future holds little more than the record. Only a send
    /// that has to wait builds the (larger) waiting future, on the heap: moving a large future
    /// around for every record was a twentieth of a producer's CPU.
    async fn enqueue(
        &self,
        record: ProducerRecord,
        delivery: DeliverySender,
    ) -> Result<(), ClientError> {
        // Taken by `append` once the record is in a batch; until then, errors go to it.
        let mut delivery = Some(delivery);
        let result = match self.accept(record) {
            Ok(record) => match self.try_append(record, &mut delivery) {
                Ok(None) => Ok(()),
                Ok(Some(record)) => Box::pin(self.append_waiting(record, &mut delivery)).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let (Err(error), Some(delivery)) = (&result, delivery) {
            delivery.send(Err(error.clone()));
        }
        result
    }

    /// Checks that the producer is open and that the record fits in `buffer_memory`, and
    /// computes its encoded size: the first step of every send.
    fn accept(&self, record: ProducerRecord) -> Result<Accepted, ClientError> {
        let config = &self.shared.config;
        if lock(&self.shared.accumulator).is_closing() {
            return Err(ClientError::Closed);
        }
        let ProducerRecord { topic, partition, key, value, headers, timestamp_ms } = record;
        let headers: Vec<RecordHeader> =
            headers.into_iter().map(|(key, value)| RecordHeader { key, value }).collect();
        let size = RecordBatchBuilder::record_size(key.as_deref(), value.as_deref(), &headers);
        if size + BATCH_HEADER_LEN > config.buffer_memory {
            return Err(ClientError::RecordTooLarge {
                size: size + BATCH_HEADER_LEN,
                max: config.buffer_memory,
            });
        }
        Ok(Accepted { topic, partition, key, value, headers, timestamp_ms, size })
    }

    /// Appends the record if the topic's metadata is cached and buffer memory is free; else
    /// hands the record back (`Ok(Some)`) for [`Producer::append_waiting`]. Never waits.
    fn try_append(
        &self,
        record: Accepted,
        delivery: &mut Option<DeliverySender>,
    ) -> Result<Option<Accepted>, ClientError> {
        let shared = &self.shared;
        let Some(metadata) = shared.cluster.cached_topic_metadata(&record.topic) else {
            return Ok(Some(record));
        };
        let partitions = partition_count(&metadata, &record)?;
        let permit = match shared.memory.clone().try_acquire_many_owned(record.permits()) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ClientError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Ok(Some(record)),
        };
        self.append(record, delivery, &metadata, partitions, permit)?;
        Ok(None)
    }

    /// The rest of a send that has to wait: for the topic's metadata and for buffer memory,
    /// `max_block` counted from the first wait (a metadata request under way may overrun it
    /// by up to the request timeout).
    async fn append_waiting(
        &self,
        record: Accepted,
        delivery: &mut Option<DeliverySender>,
    ) -> Result<(), ClientError> {
        let shared = &self.shared;
        let config = &shared.config;
        let mut deadline = None;
        let metadata = self.wait_for_topic(&record.topic, &mut deadline).await?;
        let partitions = partition_count(&metadata, &record)?;
        let permits = record.permits();
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + config.max_block);
        let memory = shared.memory.clone().acquire_many_owned(permits);
        let permit = match tokio::time::timeout_at(deadline, memory).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                return Err(ClientError::TimedOut {
                    operation: format!(
                        "waiting for {} bytes of buffer memory (buffer_memory {})",
                        record.size, config.buffer_memory
                    ),
                    after: config.max_block,
                    attempts: 0,
                    last: None,
                });
            }
        };
        self.append(record, delivery, &metadata, partitions, permit)
    }

    /// Adds the accepted record, its memory held by `permit`, to its partition's open batch;
    /// takes `delivery` once the record is in.
    fn append(
        &self,
        record: Accepted,
        delivery: &mut Option<DeliverySender>,
        metadata: &Metadata,
        partitions: i32,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ClientError> {
        let shared = &self.shared;
        let Accepted { topic, partition, key, value, headers, timestamp_ms, size } = record;
        let timestamp_ms = timestamp_ms.unwrap_or_else(now_ms);
        let wake = {
            let mut accumulator = lock(&shared.accumulator);
            if accumulator.is_closing() {
                return Err(ClientError::Closed);
            }
            let Some(delivery) = delivery.take() else {
                return Err(ClientError::Closed);
            };
            let partition = partition.unwrap_or_else(|| {
                accumulator.choose_partition(
                    &topic,
                    key.as_deref(),
                    partitions,
                    metadata.available_partitions(&topic),
                )
            });
            let pending = PendingRecord {
                timestamp_ms,
                key,
                value,
                headers,
                size,
                permit: Some(permit),
                delivery,
            };
            accumulator.append(&topic, partition, pending, Instant::now)
        };
        if wake {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// [`Producer::send`], then waits for the delivery.
    ///
    /// # Errors
    /// Those of `send`, then the delivery's: the last retriable error wrapped in
    /// [`ClientError::TimedOut`] after `delivery_timeout`, or the first error that is not
    /// retriable (e.g. `MESSAGE_TOO_LARGE`).
    pub async fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> Result<RecordMetadata, ClientError> {
        self.send(record).await?.await
    }

    /// Sends every buffered record without lingering and waits until the records sent before
    /// the call are delivered or failed (their futures tell which).
    pub async fn flush(&self) {
        let signals = lock(&self.shared.accumulator).begin_flush();
        // Ends the flush even if this future is dropped.
        struct EndFlush<'a>(&'a Shared);
        impl Drop for EndFlush<'_> {
            fn drop(&mut self) {
                lock(&self.0.accumulator).end_flush();
            }
        }
        let _end = EndFlush(&self.shared);
        self.shared.wake.notify_one();
        for mut signal in signals {
            // Nothing is ever sent on it: it ends when the batch is dropped after completing.
            while signal.changed().await.is_ok() {}
        }
    }

    /// Stops accepting records, sends everything buffered (retrying as usual) and waits for
    /// the sender to stop. Later `send` calls fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        lock(&self.shared.accumulator).close();
        self.shared.wake.notify_one();
        let sender = lock(&self.sender).take();
        if let Some(sender) = sender
            && let Err(e) = sender.await
        {
            error!(error = %e, "producer sender task failed");
        }
    }

    /// Metadata that has `topic`, waiting for it to appear (e.g. just after it was created
    /// through another controller) until `deadline`.
    async fn wait_for_topic(
        &self,
        topic: &str,
        deadline: &mut Option<Instant>,
    ) -> Result<Arc<Metadata>, ClientError> {
        let max_block = self.shared.config.max_block;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut lookup = std::pin::pin!(self.shared.cluster.topic_metadata(topic));
            // Known nearly always: answered on the first poll, and no clock is read. A lookup
            // that has to wait (a metadata request) starts `max_block`'s clock before it does.
            let first = lookup.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop()));
            let result = match first {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    deadline.get_or_insert_with(|| Instant::now() + max_block);
                    lookup.await
                }
            };
            let error = match result {
                Ok(metadata) => return Ok(metadata),
                // Not there yet, or no controller answered: wait.
                Err(e @ (ClientError::UnknownTopic { .. } | ClientError::TimedOut { .. })) => e,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + max_block);
            let backoff = self.shared.config.retry_backoff;
            if now + backoff >= deadline {
                return Err(ClientError::TimedOut {
                    operation: format!("waiting for metadata of topic {topic}"),
                    after: max_block.saturating_sub(deadline - now),
                    attempts,
                    last: Some(Box::new(error)),
                });
            }
            tokio::time::sleep(backoff).await;
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // The sender sends what is buffered, then stops.
        lock(&self.shared.accumulator).close();
        self.shared.wake.notify_one();
    }
}

/// A record that passed [`Producer::accept`], on its way to a batch.
struct Accepted {
    topic: String,
    partition: Option<i32>,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<RecordHeader>,
    timestamp_ms: Option<i64>,
    /// Encoded size ([`RecordBatchBuilder::record_size`]), below `buffer_memory`.
    size: usize,
}

impl Accepted {
    /// Buffer memory permits the record takes.
    fn permits(&self) -> u32 {
        u32::try_from(self.size).expect("size is below buffer_memory, at most 4 GiB")
    }
}

/// The topic's partition count, checking the record's explicit partition against it.
fn partition_count(metadata: &Metadata, record: &Accepted) -> Result<i32, ClientError> {
    let partitions = metadata.partition_count(&record.topic).unwrap_or(0);
    if partitions <= 0 {
        return Err(ClientError::UnexpectedResponse {
            operation: "get metadata".into(),
            reason: format!("topic {} has no partitions", record.topic),
        });
    }
    if let Some(p) = record.partition
        && !(0..partitions).contains(&p)
    {
        return Err(ClientError::UnknownPartition {
            topic: record.topic.clone(),
            partition: p,
            partitions,
        });
    }
    Ok(partitions)
}

/// The outcome of one record given to [`Producer::send`]: where it was stored, or why it
/// was not. Dropping it does not cancel the delivery.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The sender went away without resolving: the runtime shut down under it.
        Pin::new(&mut self.rx).poll(cx).map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
