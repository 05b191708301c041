//! The coordinator's runtime: its lease with the controller quorum, the shards it owns (each
//! loaded by replaying its partition of `__consumer_offsets`), the writes to them, and the
//! housekeeping that expires sessions and follows topic changes.
//!
//! - **Ownership** comes from the controller, in the answer to every heartbeat. A shard to take
//!   is loaded first (requests meanwhile get `COORDINATOR_LOAD_IN_PROGRESS`); a shard to give
//!   up is dropped, the producer flushed, and the release reported in the next heartbeat, so
//!   the controller hands it over only once nothing of this coordinator is in flight.
//! - **The lease** is enforced here too, as on brokers: this coordinator serves only while its
//!   last acknowledged heartbeat, counted from when it was *sent*, is younger than the lease.
//!   The controller counts from when it *received* it, so a coordinator cut off stops serving
//!   before its shards move. A write acknowledged after the lease ended is reported to the
//!   client as `NOT_COORDINATOR` (it may or may not be visible to the next owner).
//! - **Writes** are applied to the in-memory shard when they are sent (under the shard's lock,
//!   so memory follows log order) and answered once the brokers acknowledged them (`acks=all`).
//!   A write that fails makes the shard reload from the log, so memory never keeps what the log
//!   lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
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
use crate::shard::{Shard, ShardRecord};

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
}

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Shards loaded (replayed) so far.
    pub shard_loads: AtomicU64,
    /// Records replayed by loads.
    pub records_replayed: AtomicU64,
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

    /// The shards this coordinator serves now, by index, with their epochs.
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

    /// Hands `records` to the producer for `shard`'s partition (in order; call under the
    /// shard's lock). The futures resolve when the brokers acknowledged them.
    pub(crate) async fn send(
        &self,
        shard: &ActiveShard,
        records: Vec<ShardRecord>,
    ) -> Result<Vec<DeliveryFuture>, Status> {
        let mut out = Vec::with_capacity(records.len());
        for (key, value) in records {
            let mut record = ProducerRecord::new(OFFSETS_TOPIC).partition(shard.index).key(key);
            if let Some(v) = value {
                record = record.value(v);
            }
            let delivery = self.producer.send(record).await.map_err(|e| {
                status(
                    ErrorCode::CoordinatorNotAvailable,
                    format!("cannot write shard {}: {e}", shard.index),
                )
            })?;
            out.push(delivery);
        }
        Ok(out)
    }

    /// Waits for `deliveries` of `shard`; a failure reloads the shard. Then checks that this
    /// coordinator still owns the shard under a live lease.
    pub(crate) async fn settle(
        self: &Arc<Self>,
        shard: &Arc<ActiveShard>,
        deliveries: Vec<DeliveryFuture>,
    ) -> Result<(), Status> {
        let n = deliveries.len() as u64;
        for d in deliveries {
            if let Err(e) = d.await {
                self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(shard = shard.index, error = %e, "offsets write failed; reloading the shard");
                self.reload(shard);
                return Err(status(
                    ErrorCode::CoordinatorNotAvailable,
                    format!("write to shard {} failed ({e}); retry", shard.index),
                ));
            }
        }
        self.counters.records_written.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("tideline_coordinator_records_written_total").increment(n);
        let still = self.lease_valid()
            && matches!(lock(&self.shards).get(&shard.index), Some(Slot::Active(a)) if Arc::ptr_eq(a, shard));
        if !still {
            return Err(status(
                ErrorCode::NotCoordinator,
                format!(
                    "coordinator {} lost shard {} while writing; retry with the new owner",
                    self.config.coordinator_id, shard.index
                ),
            ));
        }
        Ok(())
    }

    /// Replaces `shard` (if it is still the one held) by a fresh load of the same epoch.
    fn reload(self: &Arc<Self>, shard: &Arc<ActiveShard>) {
        let mut slots = lock(&self.shards);
        if matches!(slots.get(&shard.index), Some(Slot::Active(a)) if Arc::ptr_eq(a, shard)) {
            slots.insert(shard.index, Slot::Loading { epoch: shard.epoch });
            tokio::spawn(load(Arc::clone(self), shard.index, shard.epoch));
        }
    }

    fn drop_all(&self) {
        let dropped = std::mem::take(&mut *lock(&self.shards));
        if !dropped.is_empty() {
            tracing::warn!(shards = dropped.len(), "stopped serving every shard");
        }
    }

    /// Brings the slots in line with the controller's answer; returns the shards released.
    fn apply_assignment(self: &Arc<Self>, shards: &[pb::ShardAssignment]) -> Vec<i32> {
        let mut released = Vec::new();
        let mut slots = lock(&self.shards);
        metrics::gauge!("tideline_coordinator_shards_owned")
            .set(shards.iter().filter(|s| !s.releasing).count() as f64);
        let wanted: BTreeMap<i32, &pb::ShardAssignment> =
            shards.iter().map(|s| (s.shard, s)).collect();
        slots.retain(|index, _| wanted.get(index).is_some_and(|s| !s.releasing));
        for (index, a) in wanted {
            if a.releasing {
                released.push(index);
                continue;
            }
            let current = match slots.get(&index) {
                Some(Slot::Active(s)) => Some(s.epoch),
                Some(Slot::Loading { epoch }) => Some(*epoch),
                None => None,
            };
            if current != Some(a.shard_epoch) {
                tracing::info!(shard = index, epoch = a.shard_epoch, "taking over shard");
                slots.insert(index, Slot::Loading { epoch: a.shard_epoch });
                tokio::spawn(load(Arc::clone(self), index, a.shard_epoch));
            }
        }
        released
    }
}

/// Replays shard `index` and serves it once done, unless it was given up meanwhile. Retries
/// (every second) until it succeeds or the shard is no longer wanted at `epoch`.
async fn load(shared: Arc<Shared>, index: i32, epoch: i64) {
    let wanted = |shared: &Shared| matches!(lock(&shared.shards).get(&index), Some(Slot::Loading { epoch: e }) if *e == epoch);
    loop {
        if !wanted(&shared) {
            return;
        }
        let started = Instant::now();
        match replay(&shared, index).await {
            Ok((mut shard, records)) => {
                shard.start_sessions(now_ms());
                let active =
                    Arc::new(ActiveShard { index, epoch, state: tokio::sync::Mutex::new(shard) });
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
                    records,
                    ms = started.elapsed().as_millis() as u64,
                    "shard loaded"
                );
                if let Ok(topics) = cluster_topics(&shared).await {
                    tend(&shared, &active, Some(topics)).await;
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

/// Reads shard `index` from the start of its partition to the high watermark seen when
/// starting (everything acknowledged before this coordinator took it), applying each record.
async fn replay(shared: &Shared, index: i32) -> Result<(Shard, u64), tideline_client::ClientError> {
    let mut consumer = Consumer::new(
        &shared.cluster,
        ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            max_partition_fetch_bytes: 8 << 20,
            fetch_max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    )?;
    consumer.assign(vec![(OFFSETS_TOPIC.to_string(), index)]);
    let end = consumer.seek_to_end(OFFSETS_TOPIC, index).await?;
    let mut position = consumer.seek_to_beginning(OFFSETS_TOPIC, index).await?;
    let mut shard = Shard::new(shared.config.group.clone());
    let mut applied = 0u64;
    while position < end {
        for r in consumer.poll(Duration::from_millis(500)).await? {
            if r.offset >= end {
                break;
            }
            let Some(key) = r.key else { continue };
            match shard.replay(&key, r.value.as_deref()) {
                Ok(()) => applied += 1,
                Err(e) => {
                    tracing::warn!(shard = index, offset = r.offset, error = %e, "skipping a record")
                }
            }
        }
        position = consumer.position(OFFSETS_TOPIC, index).unwrap_or(position);
    }
    shared.counters.records_replayed.fetch_add(applied, Ordering::Relaxed);
    Ok((shard, applied))
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
    shared: &Arc<Shared>,
    shard: &Arc<ActiveShard>,
    topics: Option<BTreeMap<TopicName, i32>>,
) {
    let deliveries = {
        let mut state = shard.state.lock().await;
        let mut records = topics.map(|t| state.set_topics(t)).unwrap_or_default();
        records.extend(state.expire(now_ms()));
        for g in state.groups() {
            shared.rebalances.observe(g);
        }
        if records.is_empty() {
            return;
        }
        match shared.send(shard, records).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(shard = shard.index, error = %e.message(), "housekeeping write failed");
                return;
            }
        }
    };
    let _ = shared.settle(shard, deliveries).await;
}

/// Every housekeeping interval: expires sessions in every loaded shard and applies the
/// cluster's topics (new topics, new partitions). Runs until `stop`.
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
        for shard in &active {
            tend(&shared, shard, topics.clone()).await;
        }
        if last_lag.elapsed() >= shared.config.lag_interval {
            last_lag = Instant::now();
            measure_lag(&shared, &active).await;
        }
    }
}

/// Sets the lag gauges of every group in `shards`: end offsets asked of the leaders once per
/// partition, whatever the number of groups reading it.
async fn measure_lag(shared: &Shared, shards: &[Arc<ActiveShard>]) {
    let mut wanted = std::collections::BTreeSet::new();
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

/// The high watermark of each partition, asked of its leader; partitions whose leader cannot
/// be asked in time are left out.
pub(crate) async fn end_offsets(
    shared: &Shared,
    partitions: impl Iterator<Item = (String, i32)>,
) -> BTreeMap<(String, i32), i64> {
    let partitions: Vec<(String, i32)> = partitions.collect();
    let mut ends = BTreeMap::new();
    if partitions.is_empty() {
        return ends;
    }
    let Ok(mut consumer) = Consumer::new(&shared.cluster, ConsumerConfig::default()) else {
        return ends;
    };
    consumer.assign(partitions.clone());
    for (topic, partition) in partitions {
        let lookup = consumer.seek_to_end(&topic, partition);
        if let Ok(Ok(end)) = tokio::time::timeout(Duration::from_secs(5), lookup).await {
            ends.insert((topic, partition), end);
        }
    }
    ends
}

/// Registers, then heartbeats every third of the lease, taking and releasing shards as the
/// controller says; registers again when told the registration is gone. On `stop`, flushes
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
        let mut released: Vec<i32> = Vec::new();
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
                    released.clear();
                    let to_release = shared.apply_assignment(&a.shards);
                    if !to_release.is_empty() {
                        // Nothing of ours may land after the next owner replays: wait for every
                        // write in flight before reporting the release.
                        shared.producer.flush().await;
                        tracing::info!(shards = ?to_release, "released shards");
                        released = to_release;
                        next = Duration::ZERO;
                    }
                }
                Err(e) if error_code_of(&e) == Some(ErrorCode::BrokerFenced) => {
                    tracing::warn!(error = %e.message(), "registration lost; registering again");
                    shared.drop_all();
                    *lock(&shared.lease) = None;
                    continue 'register;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), "heartbeat failed");
                    if !shared.lease_valid() {
                        shared.drop_all();
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
    shared.drop_all();
    *lock(&shared.lease) = None;
    shared.producer.flush().await;
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
