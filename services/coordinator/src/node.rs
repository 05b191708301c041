//! The coordinator's runtime: its lease with the controller quorum, the shards it owns (each
//! loaded by replaying its partition of `__consumer_offsets`), the writes to them, and the
//! housekeeping that expires sessions and follows topic changes.
//!
//! - **Ownership** comes from the controller, in the answer to every heartbeat. A shard to take
//!   is loaded first (requests meanwhile get `COORDINATOR_LOAD_IN_PROGRESS`); a shard to give
//!   up is retired (no write is sent for it any more), the writes in flight are waited for (a
//!   few seconds at most), and the release is reported in the next heartbeat, so the controller
//!   hands it over once nothing of this coordinator is in flight.
//! - **The lease** is enforced here too, as on brokers: this coordinator serves only while its
//!   last acknowledged heartbeat, counted from when it was *sent*, is younger than the lease.
//!   The controller counts from when it *received* it, so a coordinator cut off stops serving
//!   before its shards move.
//! - **Fencing in the log.** Every record carries the shard epoch it was written at (header
//!   [`SHARD_EPOCH_HEADER`]). A coordinator that loaded a shard writes a takeover marker for its
//!   epoch, reads on up to it, and only then serves. A replay ignores records of an older epoch
//!   that come after a newer marker: writes of a coordinator that lost the shard (cut off, its
//!   producer still retrying) and landed after the new owner took over are thus ignored by the
//!   new owner's memory and by every later replay alike, and their clients were told
//!   `NOT_COORDINATOR` (the old owner checks its ownership after each write).
//! - **Writes** are applied to the in-memory shard when they are sent (under the shard's lock,
//!   so memory follows log order). No answer goes out before every record sent before it was
//!   acknowledged (`acks=all`), so nothing a client is told rests on a write that may still
//!   fail; a write that fails makes the shard reload from the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tideline_client::{
    Admin, AutoOffsetReset, Cluster, Consumer, ConsumerConfig, DeliveryFuture, Producer,
    ProducerRecord,
};
use tideline_common::controllers::{Controllers, incarnation_id};
use tideline_common::{ErrorCode, OFFSETS_TOPIC, TopicName, error_code_of, shard_for, status};
use tideline_proto::v1 as pb;
use tokio::sync::{Notify, watch};
use tonic::Status;

use crate::config::CoordinatorConfig;
use crate::shard::{SHARD_EPOCH_HEADER, Shard, ShardRecord, marker_epoch, marker_key};

/// Longest wait for the writes in flight of a shard being released or reloaded.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard as this coordinator holds it.
#[derive(Clone)]
pub(crate) enum Slot {
    /// Being replayed.
    Loading {
        /// The shard epoch being loaded.
        epoch: i64,
    },
    /// Serving.
    Active(Arc<ActiveShard>),
}

/// A loaded shard.
pub(crate) struct ActiveShard {
    /// Its index (partition of the offsets topic).
    pub index: i32,
    /// The shard epoch it was loaded at.
    pub epoch: i64,
    /// Its groups and offsets. Held while records are handed to the producer, so memory
    /// follows the order of the log.
    pub state: tokio::sync::Mutex<Shard>,
    /// Set (under `state`) when the shard is released, reloaded or dropped: nothing more is
    /// sent for it.
    retired: AtomicBool,
    /// Records handed to the producer so far (changed under `state`); each has a sequence
    /// number, from 1.
    sent: AtomicU64,
    /// The highest sequence number up to which every record was acknowledged.
    acked: watch::Sender<u64>,
    /// Acknowledged records above `acked` (their deliveries may complete out of order).
    done: Mutex<BTreeSet<u64>>,
    /// Set when a write failed: nothing after it counts as written (the shard reloads).
    failed: AtomicBool,
}

impl ActiveShard {
    fn new(index: i32, epoch: i64, shard: Shard) -> Self {
        ActiveShard {
            index,
            epoch,
            state: tokio::sync::Mutex::new(shard),
            retired: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            acked: watch::channel(0).0,
            done: Mutex::new(BTreeSet::new()),
            failed: AtomicBool::new(false),
        }
    }

    /// Notes record `seq` acknowledged; moves `acked` over every record acknowledged in a row.
    fn ack(&self, seq: u64) {
        let mut done = lock(&self.done);
        done.insert(seq);
        let mut acked = *self.acked.borrow();
        while done.remove(&(acked + 1)) {
            acked += 1;
        }
        drop(done);
        self.acked.send_modify(|a| *a = (*a).max(acked));
    }

    /// Notes a failed write: waiting answers give up.
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.acked.send_modify(|_| {});
    }

    fn gone(&self) -> bool {
        self.retired.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire)
    }

    /// What an answer given now must wait for: every record sent so far. Call under `state`.
    pub(crate) fn barrier(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }
}

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Shards loaded (replayed) so far.
    pub shard_loads: AtomicU64,
    /// Records replayed by loads.
    pub records_replayed: AtomicU64,
    /// Records a replay ignored: written at an older epoch after a newer takeover.
    pub records_fenced: AtomicU64,
    /// Records written to the offsets topic.
    pub records_written: AtomicU64,
    /// Writes that failed (each made its shard reload).
    pub write_failures: AtomicU64,
}

/// State shared by the service, the lease loop and housekeeping.
pub(crate) struct Shared {
    pub config: CoordinatorConfig,
    pub port: u16,
    pub cluster: Cluster,
    pub producer: Producer,
    shards: Mutex<BTreeMap<i32, Slot>>,
    /// Shards given up and drained, to report in the next heartbeat.
    released: Mutex<Vec<i32>>,
    /// Shards being given up (retired, draining).
    releasing: Mutex<BTreeSet<i32>>,
    /// When this coordinator's lease ends, as it counts it (from when the heartbeat was sent).
    lease: Mutex<Option<Instant>>,
    /// Partitions of the offsets topic, 0 until known.
    shard_count: AtomicI32,
    /// Wakes the lease loop (a release to report).
    heartbeat_now: Notify,
    pub counters: Counters,
    pub rebalances: crate::metrics::RebalanceTracker,
    pub health: tonic_health::server::HealthReporter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wall clock, ms since the Unix epoch (sessions and commit times).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn not_coordinator(id: &str, index: i32) -> Status {
    status(
        ErrorCode::NotCoordinator,
        format!("coordinator {id} no longer owns shard {index}; retry with the new owner"),
    )
}

impl Shared {
    pub(crate) fn new(
        config: CoordinatorConfig,
        port: u16,
        cluster: Cluster,
        producer: Producer,
        health: tonic_health::server::HealthReporter,
    ) -> Self {
        Shared {
            config,
            port,
            cluster,
            producer,
            shards: Mutex::new(BTreeMap::new()),
            released: Mutex::new(Vec::new()),
            releasing: Mutex::new(BTreeSet::new()),
            lease: Mutex::new(None),
            shard_count: AtomicI32::new(0),
            heartbeat_now: Notify::new(),
            counters: Counters::default(),
            rebalances: Default::default(),
            health,
        }
    }

    fn lease_valid(&self) -> bool {
        lock(&self.lease).is_some_and(|t| Instant::now() < t)
    }

    /// The shards this coordinator serves now.
    pub(crate) fn active_shards(&self) -> Vec<Arc<ActiveShard>> {
        lock(&self.shards)
            .values()
            .filter_map(|s| match s {
                Slot::Active(a) => Some(Arc::clone(a)),
                Slot::Loading { .. } => None,
            })
            .collect()
    }

    /// Shard indexes owned (loaded or loading).
    pub(crate) fn owned(&self) -> Vec<(i32, bool)> {
        lock(&self.shards).iter().map(|(i, s)| (*i, matches!(s, Slot::Active(_)))).collect()
    }

    /// The loaded shard holding `group`, or the status telling the client where to go.
    pub(crate) fn shard_of(&self, group: &str) -> Result<Arc<ActiveShard>, Status> {
        let count = self.shard_count.load(Ordering::Acquire);
        if count <= 0 {
            return Err(status(
                ErrorCode::CoordinatorNotAvailable,
                format!(
                    "coordinator {} has not joined the cluster yet",
                    self.config.coordinator_id
                ),
            ));
        }
        let index = shard_for(group, count);
        let not_owner = || {
            status(
                ErrorCode::NotCoordinator,
                format!(
                    "coordinator {} does not own shard {index} of group {group:?}",
                    self.config.coordinator_id
                ),
            )
        };
        if !self.lease_valid() {
            return Err(not_owner());
        }
        match lock(&self.shards).get(&index) {
            Some(Slot::Active(a)) => Ok(Arc::clone(a)),
            Some(Slot::Loading { .. }) => Err(status(
                ErrorCode::CoordinatorLoadInProgress,
                format!("shard {index} of group {group:?} is loading; retry shortly"),
            )),
            None => Err(not_owner()),
        }
    }

    /// Hands `records` to the producer for `shard`'s partition, in order, each stamped with
    /// the shard epoch. Call under the shard's lock. Returns the barrier to wait for before
    /// answering. A retired shard sends nothing; a failed send reloads the shard (memory may
    /// already hold the change).
    pub(crate) async fn send(
        self: &Arc<Self>,
        shard: &Arc<ActiveShard>,
        records: Vec<ShardRecord>,
    ) -> Result<u64, Status> {
        if shard.gone() {
            return Err(not_coordinator(&self.config.coordinator_id, shard.index));
        }
        let epoch = bytes::Bytes::copy_from_slice(&shard.epoch.to_be_bytes());
        for (key, value) in records {
            let mut record = ProducerRecord::new(OFFSETS_TOPIC)
                .partition(shard.index)
                .key(key)
                .header(SHARD_EPOCH_HEADER, Some(epoch.clone()));
            if let Some(v) = value {
                record = record.value(v);
            }
            match self.producer.send(record).await {
                Ok(delivery) => {
                    let seq = shard.sent.fetch_add(1, Ordering::AcqRel) + 1;
                    tokio::spawn(track(Arc::clone(self), Arc::clone(shard), seq, delivery));
                }
                Err(e) => {
                    self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(shard = shard.index, error = %e, "cannot write the shard; reloading it");
                    shard.fail();
                    self.reload(shard);
                    return Err(status(
                        ErrorCode::CoordinatorNotAvailable,
                        format!("cannot write shard {}: {e}; retry", shard.index),
                    ));
                }
            }
        }
        Ok(shard.barrier())
    }

    /// Waits until every record up to `barrier` of `shard` was acknowledged (a failure reloads
    /// the shard), then checks that this coordinator still owns it under a live lease.
    pub(crate) async fn settle(
        self: &Arc<Self>,
        shard: &Arc<ActiveShard>,
        barrier: u64,
    ) -> Result<(), Status> {
        let mut acked = shard.acked.subscribe();
        let _ = acked.wait_for(|a| *a >= barrier || shard.gone()).await;
        let done = *acked.borrow() >= barrier && !shard.failed.load(Ordering::Acquire);
        let still = done
            && !shard.retired.load(Ordering::Acquire)
            && self.lease_valid()
            && matches!(lock(&self.shards).get(&shard.index), Some(Slot::Active(a)) if Arc::ptr_eq(a, shard));
        if !still {
            return Err(status(
                if done { ErrorCode::NotCoordinator } else { ErrorCode::CoordinatorNotAvailable },
                format!(
                    "coordinator {} could not complete the write to shard {}; retry",
                    self.config.coordinator_id, shard.index
                ),
            ));
        }
        Ok(())
    }

    /// Retires `shard`: after this nothing more is sent for it, and answers waiting for it
    /// give up.
    async fn retire(&self, shard: &ActiveShard) {
        let state = shard.state.lock().await;
        shard.retired.store(true, Ordering::Release);
        shard.acked.send_modify(|_| {});
        for g in state.groups() {
            self.rebalances.forget(&g.group_id);
        }
    }

    /// Waits (up to [`DRAIN_TIMEOUT`]) for every record handed to the producer.
    async fn drain(&self) {
        if tokio::time::timeout(DRAIN_TIMEOUT, self.producer.flush()).await.is_err() {
            tracing::warn!("writes still in flight after {DRAIN_TIMEOUT:?}; going on");
        }
    }

    /// Replaces `shard` (if it is still the one held) by a fresh load of the same epoch, once
    /// its writes in flight are done.
    fn reload(self: &Arc<Self>, shard: &Arc<ActiveShard>) {
        let mut slots = lock(&self.shards);
        if matches!(slots.get(&shard.index), Some(Slot::Active(a)) if Arc::ptr_eq(a, shard)) {
            slots.insert(shard.index, Slot::Loading { epoch: shard.epoch });
            let (shared, shard) = (Arc::clone(self), Arc::clone(shard));
            tokio::spawn(async move {
                shared.retire(&shard).await;
                shared.drain().await;
                load(shared, shard.index, shard.epoch).await;
            });
        }
    }

    /// Stops serving every shard (the lease is gone, or the coordinator leaves).
    async fn drop_all(&self) {
        let dropped = std::mem::take(&mut *lock(&self.shards));
        if !dropped.is_empty() {
            tracing::warn!(shards = dropped.len(), "stopped serving every shard");
        }
        for slot in dropped.into_values() {
            if let Slot::Active(shard) = slot {
                self.retire(&shard).await;
            }
        }
    }

    /// Brings the slots in line with the controller's answer: loads the shards given, and
    /// gives up those to release (retire, drain, then report them in a heartbeat).
    fn apply_assignment(self: &Arc<Self>, shards: &[pb::ShardAssignment]) {
        metrics::gauge!("tideline_coordinator_shards_owned")
            .set(shards.iter().filter(|s| !s.releasing).count() as f64);
        let wanted: BTreeMap<i32, &pb::ShardAssignment> =
            shards.iter().map(|s| (s.shard, s)).collect();
        let mut to_release = Vec::new();
        let mut slots = lock(&self.shards);
        let gone: Vec<i32> =
            slots.keys().copied().filter(|i| wanted.get(i).is_none_or(|s| s.releasing)).collect();
        for index in gone {
            if let Some(slot) = slots.remove(&index) {
                to_release.push((index, slot));
            }
        }
        for (index, a) in &wanted {
            if a.releasing {
                // Never held here (e.g. before a restart): nothing to drain.
                let draining = lock(&self.releasing).contains(index);
                if !draining && !to_release.iter().any(|(i, _)| i == index) {
                    lock(&self.released).push(*index);
                    self.heartbeat_now.notify_one();
                }
                continue;
            }
            let current = match slots.get(index) {
                Some(Slot::Active(s)) => Some(s.epoch),
                Some(Slot::Loading { epoch }) => Some(*epoch),
                None => None,
            };
            if current != Some(a.shard_epoch) {
                tracing::info!(shard = index, epoch = a.shard_epoch, "taking over shard");
                slots.insert(*index, Slot::Loading { epoch: a.shard_epoch });
                tokio::spawn(load(Arc::clone(self), *index, a.shard_epoch));
            }
        }
        drop(slots);
        for (index, slot) in to_release {
            let releasing = wanted.get(&index).is_some_and(|s| s.releasing);
            if releasing {
                lock(&self.releasing).insert(index);
            }
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                if let Slot::Active(shard) = slot {
                    shared.retire(&shard).await;
                }
                shared.drain().await;
                if releasing {
                    tracing::info!(shard = index, "released shard");
                    lock(&shared.releasing).remove(&index);
                    lock(&shared.released).push(index);
                    shared.heartbeat_now.notify_one();
                }
            });
        }
    }
}

/// Follows one record's delivery: moves the shard's acknowledged mark, or reloads the shard.
async fn track(shared: Arc<Shared>, shard: Arc<ActiveShard>, seq: u64, delivery: DeliveryFuture) {
    match delivery.await {
        Ok(_) => {
            shared.counters.records_written.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tideline_coordinator_records_written_total").increment(1);
            shard.ack(seq);
        }
        Err(e) => {
            shared.counters.write_failures.fetch_add(1, Ordering::Relaxed);
            if !shard.gone() {
                tracing::warn!(shard = shard.index, error = %e, "offsets write failed; reloading the shard");
            }
            shard.fail();
            shared.reload(&shard);
        }
    }
}

/// Replays shard `index`, marks the takeover, and serves it once done, unless it was given up
/// meanwhile. Retries (every second) until it succeeds or the shard is no longer wanted at
/// `epoch`.
async fn load(shared: Arc<Shared>, index: i32, epoch: i64) {
    let wanted = |shared: &Shared| matches!(lock(&shared.shards).get(&index), Some(Slot::Loading { epoch: e }) if *e == epoch);
    loop {
        if !wanted(&shared) {
            return;
        }
        let started = Instant::now();
        match load_once(&shared, index, epoch, &wanted).await {
            Ok(None) => return,
            Ok(Some((shard, replayed, changes))) => {
                let active = Arc::new(ActiveShard::new(index, epoch, shard));
                // Held until what the cluster's topics changed in the groups since they were
                // written is sent, so no request sees those changes without waiting for them.
                let state = active.state.lock().await;
                {
                    let mut slots = lock(&shared.shards);
                    if !matches!(slots.get(&index), Some(Slot::Loading { epoch: e }) if *e == epoch)
                    {
                        return;
                    }
                    slots.insert(index, Slot::Active(Arc::clone(&active)));
                }
                shared.counters.shard_loads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tideline_coordinator_shard_loads_total").increment(1);
                tracing::info!(
                    shard = index,
                    epoch,
                    records = replayed,
                    ms = started.elapsed().as_millis() as u64,
                    "shard loaded"
                );
                if !changes.is_empty() {
                    let sent = shared.send(&active, changes).await;
                    drop(state);
                    if let Ok(barrier) = sent {
                        let _ = shared.settle(&active, barrier).await;
                    }
                }
                return;
            }
            Err(e) => {
                tracing::warn!(shard = index, error = %e, "loading shard failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One attempt at loading shard `index` at `epoch`: replays the partition up to its high
/// watermark, writes the takeover marker, replays on up to the marker, and applies the
/// cluster's topics. `None` when the shard stopped being wanted meanwhile.
async fn load_once(
    shared: &Shared,
    index: i32,
    epoch: i64,
    wanted: &impl Fn(&Shared) -> bool,
) -> Result<Option<(Shard, u64, Vec<ShardRecord>)>, String> {
    let mut consumer = Consumer::new(
        &shared.cluster,
        ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            max_partition_fetch_bytes: 8 << 20,
            fetch_max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    consumer.assign(vec![(OFFSETS_TOPIC.to_string(), index)]);
    let end = consumer.seek_to_end(OFFSETS_TOPIC, index).await.map_err(|e| e.to_string())?;
    consumer.seek_to_beginning(OFFSETS_TOPIC, index).await.map_err(|e| e.to_string())?;
    let mut replay = Replay {
        shard: Shard::new(shared.config.group.clone()),
        fence: i64::MIN,
        applied: 0,
        fenced: 0,
    };
    if !replay.read_to(&mut consumer, index, end, || wanted(shared)).await? {
        return Ok(None);
    }
    // Everything acknowledged before is in; mark the takeover, and read on to the marker
    // (records an old owner landed meanwhile are applied, as every later replay will).
    let marker = ProducerRecord::new(OFFSETS_TOPIC)
        .partition(index)
        .key(marker_key(epoch))
        .value(shared.config.coordinator_id.clone())
        .header(SHARD_EPOCH_HEADER, Some(bytes::Bytes::copy_from_slice(&epoch.to_be_bytes())));
    let delivery = shared.producer.send(marker).await.map_err(|e| e.to_string())?;
    let at = delivery.await.map_err(|e| format!("writing the takeover marker: {e}"))?.offset;
    if !replay.read_to(&mut consumer, index, at + 1, || wanted(shared)).await? {
        return Ok(None);
    }
    let topics = cluster_topics(shared).await.map_err(|e| e.to_string())?;
    // What the topics change in the groups is written once the shard serves.
    let changes = replay.shard.set_topics(topics);
    replay.shard.start_sessions(now_ms());
    shared.counters.records_replayed.fetch_add(replay.applied, Ordering::Relaxed);
    shared.counters.records_fenced.fetch_add(replay.fenced, Ordering::Relaxed);
    if replay.fenced > 0 {
        tracing::warn!(
            shard = index,
            records = replay.fenced,
            "ignored records of a coordinator that had lost the shard"
        );
    }
    Ok(Some((replay.shard, replay.applied, changes)))
}

/// A shard being rebuilt from its partition.
struct Replay {
    shard: Shard,
    /// The newest takeover marker's epoch so far.
    fence: i64,
    applied: u64,
    fenced: u64,
}

impl Replay {
    /// Applies the records before offset `end`. False when `wanted` turned false meanwhile.
    async fn read_to(
        &mut self,
        consumer: &mut Consumer,
        index: i32,
        end: i64,
        wanted: impl Fn() -> bool,
    ) -> Result<bool, String> {
        let mut position = consumer.position(OFFSETS_TOPIC, index).unwrap_or(0);
        while position < end {
            if !wanted() {
                return Ok(false);
            }
            for r in consumer.poll(Duration::from_millis(500)).await.map_err(|e| e.to_string())? {
                if r.offset >= end {
                    break;
                }
                let Some(key) = r.key else { continue };
                if let Some(e) = marker_epoch(&key) {
                    self.fence = self.fence.max(e);
                    continue;
                }
                let epoch = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == SHARD_EPOCH_HEADER)
                    .and_then(|(_, v)| v.as_deref())
                    .and_then(|v| v.try_into().ok())
                    .map_or(i64::MIN, i64::from_be_bytes);
                if epoch < self.fence {
                    self.fenced += 1;
                    continue;
                }
                // A record this version cannot read would silently lose state: fail the load
                // (loudly, retried) instead.
                self.shard
                    .replay(&key, r.value.as_deref())
                    .map_err(|e| format!("record at offset {}: {e}", r.offset))?;
                self.applied += 1;
            }
            position = consumer.position(OFFSETS_TOPIC, index).unwrap_or(position);
        }
        Ok(true)
    }
}

/// The topics groups may be assigned, with partition counts (the internal topic excluded).
pub(crate) async fn cluster_topics(
    shared: &Shared,
) -> Result<BTreeMap<TopicName, i32>, tideline_client::ClientError> {
    let metadata = Admin::new(&shared.cluster).metadata(&[]).await?;
    Ok(metadata
        .topics()
        .filter(|t| t.name != OFFSETS_TOPIC)
        .filter_map(|t| {
            TopicName::new(t.name.as_str()).ok().map(|n| (n, t.partitions.len() as i32))
        })
        .collect())
}

/// Expires sessions of `shard` and applies `topics`, writing what changed.
async fn tend(
    shared: Arc<Shared>,
    shard: Arc<ActiveShard>,
    topics: Option<BTreeMap<TopicName, i32>>,
) {
    let barrier = {
        let mut state = shard.state.lock().await;
        let mut records = topics.map(|t| state.set_topics(t)).unwrap_or_default();
        records.extend(state.expire(now_ms()));
        for g in state.groups() {
            shared.rebalances.observe(g);
        }
        if records.is_empty() {
            return;
        }
        match shared.send(&shard, records).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(shard = shard.index, error = %e.message(), "housekeeping write failed");
                return;
            }
        }
    };
    let _ = shared.settle(&shard, barrier).await;
}

/// Every housekeeping interval: expires sessions in every loaded shard and applies the
/// cluster's topics (new topics, new partitions), each shard on its own task so a slow one
/// holds up no other. Runs until `stop`.
pub(crate) async fn run_housekeeping(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut last_lag = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.config.housekeeping_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let active = shared.active_shards();
        if active.is_empty() {
            continue;
        }
        let topics = match cluster_topics(&shared).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(error = %e, "metadata refresh failed");
                None
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for shard in &active {
            tasks.spawn(tend(Arc::clone(&shared), Arc::clone(shard), topics.clone()));
        }
        while tasks.join_next().await.is_some() {}
        if last_lag.elapsed() >= shared.config.lag_interval {
            last_lag = Instant::now();
            measure_lag(&shared, &active).await;
        }
    }
}

/// Sets the lag gauges of every group in `shards`: end offsets asked of the leaders once per
/// partition, whatever the number of groups reading it.
async fn measure_lag(shared: &Shared, shards: &[Arc<ActiveShard>]) {
    let mut wanted = BTreeSet::new();
    for shard in shards {
        let state = shard.state.lock().await;
        for (group, _) in state.list_groups() {
            if let Ok(d) = state.describe(&group, |_, _| None) {
                wanted.extend(d.partitions.into_iter().map(|p| (p.topic, p.partition)));
            }
        }
    }
    let ends = end_offsets(shared, wanted.into_iter()).await;
    for shard in shards {
        let state = shard.state.lock().await;
        for (group, _) in state.list_groups() {
            let Ok(d) = state.describe(&group, |t, p| ends.get(&(t.to_string(), p)).copied())
            else {
                continue;
            };
            for p in d.partitions {
                if let Some(lag) = p.lag {
                    crate::metrics::set_lag(&group, &p.topic, p.partition, lag);
                }
            }
        }
    }
}

/// The high watermark of each partition, asked of its leader, up to 16 lookups at once;
/// partitions whose leader cannot be asked in time are left out.
pub(crate) async fn end_offsets(
    shared: &Shared,
    partitions: impl Iterator<Item = (String, i32)>,
) -> BTreeMap<(String, i32), i64> {
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for (topic, partition) in partitions {
        let (cluster, limit) = (shared.cluster.clone(), Arc::clone(&limit));
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            let mut consumer = Consumer::new(&cluster, ConsumerConfig::default()).ok()?;
            consumer.assign(vec![(topic.clone(), partition)]);
            let lookup = consumer.seek_to_end(&topic, partition);
            let end = tokio::time::timeout(Duration::from_secs(5), lookup).await.ok()?.ok()?;
            Some(((topic, partition), end))
        });
    }
    let mut ends = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some((k, end))) = done {
            ends.insert(k, end);
        }
    }
    ends
}

/// Registers, then heartbeats every third of the lease, taking and releasing shards as the
/// controller says; registers again when told the registration is gone. On `stop`, drains
/// and tells the controller it leaves, so its shards move at once.
pub(crate) async fn run_lease(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let config = &shared.config;
    let mut controllers = Controllers::new(config.controllers.clone());
    let incarnation = incarnation_id();
    let endpoint = pb::CoordinatorEndpoint {
        coordinator_id: config.coordinator_id.clone(),
        host: config.advertised_host.clone(),
        port: u32::from(shared.port),
    };
    let mut backoff = Duration::from_millis(100);
    'register: loop {
        let sent = Instant::now();
        let request = pb::RegisterCoordinatorRequest {
            endpoint: Some(endpoint.clone()),
            incarnation_id: incarnation.clone().into(),
        };
        let registered = tokio::select! {
            r = controllers.call(|mut c| { let request = request.clone(); async move { c.register_coordinator(request).await } }) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (epoch, lease) = match registered {
            Ok(r) => (r.coordinator_epoch, Duration::from_millis(r.lease_ms.max(1) as u64)),
            Err(e) => {
                tracing::warn!(error = %e.message(), "registration failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        *lock(&shared.lease) = Some(sent + lease);
        tracing::info!(coordinator_id = %config.coordinator_id, epoch, "registered");
        shared
            .health
            .set_serving::<pb::coordinator_service_server::CoordinatorServiceServer<crate::service::CoordinatorApi>>()
            .await;
        let mut next = Duration::ZERO;
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(next) => false,
                _ = shared.heartbeat_now.notified() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                leave(&shared, &mut controllers, epoch).await;
                return;
            }
            next = lease / 3;
            if shared.shard_count.load(Ordering::Acquire) <= 0 {
                match Admin::new(&shared.cluster).metadata(&[OFFSETS_TOPIC]).await {
                    Ok(m) => {
                        if let Some(t) = m.topic(OFFSETS_TOPIC) {
                            shared.shard_count.store(t.partitions.len() as i32, Ordering::Release);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "metadata refresh failed"),
                }
            }
            let released = std::mem::take(&mut *lock(&shared.released));
            let sent = Instant::now();
            let request = pb::CoordinatorHeartbeatRequest {
                coordinator_id: config.coordinator_id.clone(),
                coordinator_epoch: epoch,
                released_shards: released.clone(),
                leaving: false,
            };
            let answer = controllers
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.coordinator_heartbeat(request).await }
                })
                .await;
            match answer {
                Ok(a) => {
                    *lock(&shared.lease) = Some(sent + lease);
                    shared.apply_assignment(&a.shards);
                }
                Err(e) if error_code_of(&e) == Some(ErrorCode::BrokerFenced) => {
                    tracing::warn!(error = %e.message(), "registration lost; registering again");
                    *lock(&shared.lease) = None;
                    shared.drop_all().await;
                    continue 'register;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), "heartbeat failed");
                    // Report the releases again next time.
                    lock(&shared.released).extend(released);
                    if !shared.lease_valid() {
                        shared.drop_all().await;
                    }
                    next = Duration::from_millis(200).min(lease / 3);
                }
            }
        }
    }
}

/// Stops serving, waits for writes in flight, and tells the controller this coordinator
/// leaves (best effort: otherwise its lease lapses).
async fn leave(shared: &Shared, controllers: &mut Controllers, epoch: i64) {
    *lock(&shared.lease) = None;
    shared.drop_all().await;
    shared.drain().await;
    let request = pb::CoordinatorHeartbeatRequest {
        coordinator_id: shared.config.coordinator_id.clone(),
        coordinator_epoch: epoch,
        released_shards: Vec::new(),
        leaving: true,
    };
    let call = controllers.call(|mut c| {
        let request = request.clone();
        async move { c.coordinator_heartbeat(request).await }
    });
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(_)) => tracing::info!("left the cluster; shards moved"),
        Ok(Err(e)) => tracing::warn!(error = %e.message(), "leaving failed; the lease will lapse"),
        Err(_) => tracing::warn!("leaving timed out; the lease will lapse"),
    }
}
