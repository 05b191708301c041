//! The producer's background sender: one task that drains the accumulator whenever a batch is
//! ready, a linger timer fires or a batch completes, and one task per batch in flight that
//! produces it to the partition leader, retrying until the delivery timeout.

use std::future::pending;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tideline_log::{Compression, RecordBatchBuilder};
use tideline_proto::v1 as pb;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, warn};

use crate::accumulator::{Accumulator, Completion, ProducerBatch};
use crate::cluster::{Cluster, lock};
use crate::error::ClientError;
use crate::producer_config::{Acks, ProducerConfig};
use crate::record::RecordMetadata;

/// State shared by a producer's handle, its sender task and its batch tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cluster: Cluster,
    pub(crate) config: ProducerConfig,
    /// Never held across `.await`.
    pub(crate) accumulator: Mutex<Accumulator>,
    /// Wakes the sender: a batch opened or closed, one completed, a flush or close began.
    pub(crate) wake: Notify,
    /// Buffer memory in bytes (`buffer_memory` permits).
    pub(crate) memory: Arc<Semaphore>,
    /// The producer id and sequences, with idempotence.
    pub(crate) idempotence: Idempotence,
    /// Per broker id, slots for produce requests in flight
    /// (`max_in_flight_requests_per_broker`). Never held across `.await`.
    pub(crate) broker_slots: Mutex<std::collections::HashMap<i32, Arc<Semaphore>>>,
}

impl Shared {
    /// The in-flight slots of broker `id`.
    fn slots(&self, id: i32) -> Arc<Semaphore> {
        lock(&self.broker_slots)
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.config.max_in_flight_requests_per_broker))
            })
            .clone()
    }
}

/// An idempotent producer's id and the next sequence per partition.
#[derive(Debug, Default)]
pub(crate) struct Idempotence {
    /// Never held across `.await`.
    state: Mutex<Option<ProducerId>>,
    /// One InitProducerId at a time.
    init: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct ProducerId {
    id: i64,
    epoch: i16,
    next_sequence: std::collections::HashMap<(Arc<str>, i32), i32>,
}

impl Idempotence {
    /// The producer id, epoch and first sequence for a batch of `records` records to
    /// `topic`-`partition` (asking the controller for an id first when there is none).
    async fn assign(
        &self,
        cluster: &Cluster,
        topic: &Arc<str>,
        partition: i32,
        records: i32,
    ) -> Result<(i64, i16, i32), ClientError> {
        loop {
            if let Some(p) = lock(&self.state).as_mut() {
                let next = p.next_sequence.entry((topic.clone(), partition)).or_insert(0);
                let first = *next;
                *next = next.wrapping_add(records);
                return Ok((p.id, p.epoch, first));
            }
            let _one = self.init.lock().await;
            if lock(&self.state).is_some() {
                continue;
            }
            let answer = cluster
                .call_controller("init producer id", |mut c| async move {
                    c.init_producer_id(pb::InitProducerIdRequest {}).await
                })
                .await?;
            let epoch = i16::try_from(answer.producer_epoch).unwrap_or(0);
            debug!(producer_id = answer.producer_id, "idempotent producer id");
            *lock(&self.state) = Some(ProducerId {
                id: answer.producer_id,
                epoch,
                next_sequence: Default::default(),
            });
        }
    }

    /// Forgets the producer id after a batch failed for good: whether the broker wrote it is
    /// unknown, so the next batches start over under a new id (sequence 0) rather than leave a
    /// gap or reuse the failed batch's sequences.
    fn reset(&self) {
        *lock(&self.state) = None;
    }
}

/// Runs until the producer is closed and everything buffered was sent.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    loop {
        let (batches, linger_deadline, finished) = {
            let mut accumulator = lock(&shared.accumulator);
            let batches = accumulator.drain(Instant::now());
            let finished = accumulator.is_closing() && accumulator.is_idle();
            (batches, accumulator.next_linger_deadline(), finished)
        };
        for batch in batches {
            // One client span per produce request, its context sent along (see grpc_call).
            let span = tracing::info_span!(
                "produce",
                otel.name = "produce",
                otel.kind = "client",
                topic = %batch.topic,
                partition = batch.partition,
                records = batch.completions.len(),
            );
            tasks.spawn(tracing::Instrument::instrument(send_batch(shared.clone(), batch), span));
        }
        if finished {
            break;
        }
        let linger = async {
            match linger_deadline {
                Some(deadline) => sleep_until(deadline).await,
                None => pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = linger => {}
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => report_panic(joined),
        }
    }
    while let Some(joined) = tasks.join_next().await {
        report_panic(joined);
    }
    debug!("producer sender stopped");
}

fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        error!(error = %e, "producer batch task failed");
    }
}

/// Marks the partition's batch completed when the batch task ends, however it ends.
struct InFlight {
    shared: Arc<Shared>,
    topic: Arc<str>,
    partition: i32,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.shared.accumulator).complete(&self.topic, self.partition);
        self.shared.wake.notify_one();
    }
}

/// Produces one batch and resolves its records.
async fn send_batch(shared: Arc<Shared>, batch: ProducerBatch) {
    let _in_flight =
        InFlight { shared: shared.clone(), topic: batch.topic.clone(), partition: batch.partition };
    // Fields dropped in order at the end: records resolved, then memory and the done signal.
    let ProducerBatch { topic, partition, created, builder, completions, permit, done } = batch;
    let config = &shared.config;
    let cluster = &shared.cluster;
    let operation = format!("produce to {topic}-{partition}");

    // As in Kafka, idempotence needs acks=all: with acks=1 a failover can drop a batch the
    // producer saw acknowledged, and the next sequence would then be a gap.
    let idempotent = config.enable_idempotence && config.acks == Acks::All;
    let builder = if idempotent {
        match shared.idempotence.assign(cluster, &topic, partition, builder.len()).await {
            Ok((id, epoch, sequence)) => builder.producer(id, epoch, sequence),
            Err(error) => return resolve_failed(completions, &error),
        }
    } else {
        builder
    };
    let bytes = match encode(builder, config.compression).await {
        Ok(bytes) => bytes,
        Err(error) => return resolve_failed(completions, &error),
    };
    let request = pb::ProduceRequest {
        topic: topic.to_string(),
        partition,
        acks: config.acks.to_pb() as i32,
        timeout_ms: i32::try_from(cluster.request_timeout().as_millis()).unwrap_or(i32::MAX),
        current_leader_epoch: None,
        payload: Some(pb::produce_request::Payload::RecordBatches(bytes)),
    };
    let produce = |channel| {
        let mut request = request.clone();
        // The leader epoch this attempt's metadata knows: a deposed leader that has not heard
        // yet refuses it (FENCED_LEADER_EPOCH) and the retry goes to the new one.
        request.current_leader_epoch =
            cluster.metadata().partition(&topic, partition).map(|p| p.leader_epoch);
        crate::grpc_call::produce(channel, request)
    };
    // A slot among the leader's in-flight requests, taken before the first attempt and held
    // through its retries (counted against the broker the batch first went to): waiting for
    // it is not part of any attempt's timeout.
    let leader = cluster.metadata().partition(&topic, partition).map_or(-1, |p| p.leader);
    let _slot = shared.slots(leader).acquire_owned().await;

    let send = |deadline| {
        cluster.call_leader_on_channel(
            &operation,
            &topic,
            partition,
            deadline,
            config.retry_backoff,
            produce,
        )
    };

    if config.acks == Acks::None {
        // Fire and forget: the records count as delivered once the request is on its way.
        // The task still waits for the answer (immediate with acks=0), so that one request
        // per partition is in flight and `close` sends everything.
        for c in completions {
            let metadata = record_metadata(&topic, partition, -1, &c);
            c.delivery.send(Ok(metadata));
        }
        if let Err(error) = send(Instant::now() + cluster.request_timeout()).await {
            warn!(%topic, partition, %error, "acks=0 produce failed; records lost");
        }
        drop((permit, done));
        return;
    }

    let result = send(created + config.delivery_timeout).await.map_err(|e| match e {
        // Count from the first record, not from the first attempt.
        ClientError::TimedOut { operation, attempts, last, .. } => {
            ClientError::TimedOut { operation, after: created.elapsed(), attempts, last }
        }
        e => e,
    });
    match result {
        Ok(response) => {
            let expected = completions.len() as i64;
            if response.last_offset - response.base_offset + 1 != expected {
                warn!(
                    %topic,
                    partition,
                    base_offset = response.base_offset,
                    last_offset = response.last_offset,
                    records = expected,
                    "broker assigned an offset range of another size than the batch"
                );
            }
            for (i, c) in completions.into_iter().enumerate() {
                let metadata =
                    record_metadata(&topic, partition, response.base_offset + i as i64, &c);
                c.delivery.send(Ok(metadata));
            }
        }
        Err(error) => {
            warn!(%topic, partition, records = completions.len(), %error, "batch failed");
            if idempotent {
                shared.idempotence.reset();
            }
            resolve_failed(completions, &error);
        }
    }
    drop((permit, done));
}

fn record_metadata(topic: &str, partition: i32, offset: i64, c: &Completion) -> RecordMetadata {
    RecordMetadata { topic: topic.to_string(), partition, offset, timestamp_ms: c.timestamp_ms }
}

fn resolve_failed(completions: Vec<Completion>, error: &ClientError) {
    for c in completions {
        c.delivery.send(Err(error.clone()));
    }
}

/// The batch's bytes. Compressing 64 KiB takes longer than a poll should, so compressed
/// batches are built on the blocking pool.
async fn encode(
    builder: RecordBatchBuilder,
    compression: Compression,
) -> Result<Bytes, ClientError> {
    if compression == Compression::None {
        return Ok(builder.finish());
    }
    match tokio::task::spawn_blocking(move || builder.finish()).await {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(ClientError::Closed),
    }
}
