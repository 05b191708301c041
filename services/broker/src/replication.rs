//! Replication between brokers, pull based as in Kafka.
//!
//! - A **follower** runs one fetcher task per partition: it first asks the leader where its own
//!   latest epoch ends there (`OffsetForLeaderEpoch`) and truncates what it has beyond that
//!   (KIP-101/279), then fetches from its log end with its broker id and the leader epoch it
//!   knows, appends what comes as it is (`append_replicated`), and takes the high watermark from
//!   the answers. It fetches through the leader's sendfile data port, on one connection per
//!   fetcher, or with gRPC `Fetch` when the leader advertises no data port.
//! - The **leader** records each follower's fetch offset as its log end, and moves the high
//!   watermark to the smallest log end in the ISR. It shrinks the ISR (through the controller's
//!   `AlterPartition`) when a follower has not caught up for `replica.lag.time.max.ms`, and
//!   expands it when a follower has reached the high watermark.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tideline_common::{ErrorCode, error_code_of, offset_range_of};
use tideline_log::LogError;
use tideline_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::leader_link::LeaderLink;
use crate::membership::{Controllers, Shared};
use crate::replicas::{FollowerProgress, Replica};

/// How long a pending ISR change waits for its metadata before it is asked for again.
const PENDING_RETRY: Duration = Duration::from_secs(5);

/// Counters of replication events on this broker (exported with the other metrics later).
#[derive(Debug, Default)]
pub struct ReplicationCounters {
    /// ISR shrinks this broker made as leader.
    pub isr_shrinks: std::sync::atomic::AtomicU64,
    /// ISR expansions this broker made as leader.
    pub isr_expands: std::sync::atomic::AtomicU64,
    /// Replica fetch requests this broker received as leader on its data port.
    pub data_port_replica_fetches: std::sync::atomic::AtomicU64,
    /// Replica fetch requests this broker received as leader over gRPC `Fetch` (followers use
    /// it only when the leader advertises no data port).
    pub grpc_replica_fetches: std::sync::atomic::AtomicU64,
}

/// A running fetcher: the leader epoch it follows and its task.
type Fetcher = (i32, JoinHandle<()>);

/// Replication health of one broker at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// Partitions led here whose ISR lacks one of their replicas (replicas being added in a
    /// reassignment aside).
    pub under_replicated: usize,
    /// Partitions led here that are moving (replicas being added).
    pub reassigning: usize,
    /// Partitions with a replica here that have no leader.
    pub offline: usize,
    /// ISR shrinks this broker made as leader since it started.
    pub isr_shrinks: u64,
    /// ISR expansions this broker made as leader since it started.
    pub isr_expands: u64,
    /// Replica fetch requests received on the data port since the broker started.
    pub data_port_replica_fetches: u64,
    /// Replica fetch requests received over gRPC `Fetch` since the broker started.
    pub grpc_replica_fetches: u64,
}

/// The broker's replication health now.
pub fn status(shared: &Shared) -> ReplicationStatus {
    let me = shared.config.broker_id;
    let c = &shared.counters;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let mut s = ReplicationStatus {
        isr_shrinks: load(&c.isr_shrinks),
        isr_expands: load(&c.isr_expands),
        data_port_replica_fetches: load(&c.data_port_replica_fetches),
        grpc_replica_fetches: load(&c.grpc_replica_fetches),
        ..Default::default()
    };
    for (_, r) in shared.replicas.all() {
        if r.leader < 0 {
            s.offline += 1;
        } else if r.leader == me {
            // Replicas being added in a reassignment are not missing ones (as in Kafka).
            let in_sync = r.isr.iter().filter(|id| !r.adding.contains(id)).count();
            if in_sync < r.replicas.len() - r.adding.len() {
                s.under_replicated += 1;
            }
            if !r.adding.is_empty() {
                s.reassigning += 1;
            }
        }
    }
    s
}

/// The running fetcher tasks of a follower, by partition.
#[derive(Debug, Default)]
pub struct Fetchers {
    tasks: std::sync::Mutex<HashMap<(String, i32), Fetcher>>,
}

impl Fetchers {
    /// Stops every fetcher.
    pub fn stop_all(&self) {
        for (_, (_, task)) in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            task.abort();
        }
    }
}

/// The high watermark a leader may publish: the smallest log end offset among the in-sync
/// replicas (the ISR and any pending change to it), its own included. A member that has not
/// fetched yet in this leader epoch holds it where it is. Not leading: it stays.
pub fn leader_high_watermark(replica: &Replica, me: i32) -> i64 {
    let current = replica.high_watermark();
    let st = replica.state.read().unwrap_or_else(|e| e.into_inner());
    if st.leader != me {
        return current;
    }
    let progress = replica.progress.lock().unwrap_or_else(|e| e.into_inner());
    if progress.leader_epoch != st.leader_epoch {
        return current;
    }
    let mut hw = replica.log.log_end_offset();
    for id in st.maximal_isr().iter().filter(|id| **id != me) {
        match progress.followers.get(id) {
            Some(f) => hw = hw.min(f.log_end),
            None => hw = hw.min(current),
        }
    }
    hw
}

/// Moves a leader's high watermark forward as far as its ISR allows.
pub fn update_leader_high_watermark(replica: &Replica, me: i32) {
    replica.advance_high_watermark(leader_high_watermark(replica, me));
}

/// Records a follower's fetch at `fetch_offset` (its log end), then updates the high
/// watermark.
pub fn record_follower_fetch(
    replica: &Replica,
    me: i32,
    follower: i32,
    fetch_offset: i64,
    isr_check: &tokio::sync::Notify,
) {
    let leader_end = replica.log.log_end_offset();
    let now = Instant::now();
    {
        let mut progress = replica.progress.lock().unwrap_or_else(|e| e.into_inner());
        let since = progress.since;
        let f = progress.followers.entry(follower).or_insert(FollowerProgress {
            log_end: fetch_offset,
            caught_up_at: since,
            last_fetch: now,
            leader_end_at_last_fetch: leader_end,
        });
        // Caught up: it has everything the leader has, or everything the leader had when its
        // previous fetch was answered (Kafka's rule, so a steady stream of appends does not make
        // a healthy follower look behind).
        if fetch_offset >= leader_end {
            f.caught_up_at = now;
        } else if fetch_offset >= f.leader_end_at_last_fetch {
            f.caught_up_at = f.caught_up_at.max(f.last_fetch);
        }
        f.log_end = fetch_offset;
        f.last_fetch = now;
        f.leader_end_at_last_fetch = leader_end;
    }
    update_leader_high_watermark(replica, me);
    // A follower outside the ISR that reached the high watermark: add it back now rather than
    // at the next periodic check.
    let epoch_start = replica.progress.lock().unwrap_or_else(|e| e.into_inner()).epoch_start;
    if !replica.isr.contains(&follower)
        && fetch_offset >= replica.high_watermark()
        && fetch_offset >= epoch_start
    {
        isr_check.notify_one();
    }
}

/// After the replicas changed with the metadata: recomputes the high watermark of every
/// partition led here and starts or stops follower fetchers.
pub fn after_metadata(shared: &Arc<Shared>) {
    let me = shared.config.broker_id;
    let mut tasks = shared.fetchers.tasks.lock().unwrap_or_else(|e| e.into_inner());
    let mut wanted = HashMap::new();
    for (key, r) in shared.replicas.all() {
        if r.leader == me {
            update_leader_high_watermark(&r, me);
        } else if r.leader >= 0 {
            wanted.insert(key, r.leader_epoch);
        }
    }
    tasks.retain(|key, (epoch, task)| {
        let keep = wanted.get(key) == Some(epoch) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    for (key, epoch) in wanted {
        if tasks.contains_key(&key) {
            continue;
        }
        let task = tokio::spawn(run_fetcher(Arc::clone(shared), key.0.clone(), key.1, epoch));
        tasks.insert(key, (epoch, task));
    }
}

/// Runs `write` (a follower's change to its log) while holding the partition's state lock, and
/// only if this broker still follows at `leader_epoch`: a fetcher aborted late, after the broker
/// became leader, must not touch the log (applying metadata takes the write lock, so it waits
/// for a write in progress).
fn as_follower<T>(
    replica: &Replica,
    me: i32,
    leader_epoch: i32,
    write: impl FnOnce() -> Result<T, LogError>,
) -> Result<Option<T>, LogError> {
    let st = replica.state.read().unwrap_or_else(|e| e.into_inner());
    if st.leader == me || st.leader_epoch != leader_epoch {
        return Ok(None);
    }
    write().map(Some)
}

/// Where to truncate so the local log agrees with the leader's (KIP-279), given the leader's
/// answer for the local latest epoch `asked`; and whether to ask again afterwards (the leader's
/// epoch is one this log does not have: what this log holds of the epoch below it is checked
/// in another round).
fn truncation_point(replica: &Replica, asked: i32, leader: (i32, i64)) -> (i64, bool) {
    let (epoch, end) = leader;
    let local_end = replica.log.log_end_offset();
    if epoch < 0 || epoch == asked {
        return (end.min(local_end), false);
    }
    // The leader's largest epoch at or below ours is older: our records of epochs above it
    // diverge; keep what both have of `epoch`.
    match replica.log.end_offset_for_epoch(epoch) {
        Some((ours, ours_end)) => (end.min(ours_end).min(local_end), ours != epoch),
        None => (end.min(local_end), false),
    }
}

/// Follows the leader of `topic`-`partition` at `leader_epoch` until the task is aborted (a
/// newer epoch or leadership here) or the broker stops.
async fn run_fetcher(shared: Arc<Shared>, topic: String, partition: i32, leader_epoch: i32) {
    let me = shared.config.broker_id;
    let mut stop = shared.stop.clone();
    let mut link = LeaderLink::default();
    let mut truncated = false;
    let backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(replica) = shared.replicas.get(&topic, partition) else { return };
        if replica.leader_epoch != leader_epoch || replica.leader == me || replica.leader < 0 {
            return;
        }
        let (address, data_address) = {
            let m = shared.metadata.read().unwrap_or_else(|e| e.into_inner());
            (m.broker_address(replica.leader), m.broker_data_address(replica.leader))
        };
        let Some(address) = address else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        let Some(c) = link.grpc(&address) else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        if !truncated {
            let asked = replica.log.latest_epoch().unwrap_or(-1);
            let answer = c
                .offset_for_leader_epoch(pb::OffsetForLeaderEpochRequest {
                    topic: topic.clone(),
                    partition,
                    leader_epoch: asked,
                    current_leader_epoch: Some(leader_epoch),
                })
                .await;
            match answer {
                Ok(a) => {
                    let a = a.into_inner();
                    let (to, again) =
                        truncation_point(&replica, asked, (a.leader_epoch, a.end_offset));
                    if to < replica.log.log_end_offset() {
                        let r = replica.clone();
                        // Truncation removes batches: the producer state is rebuilt after it.
                        let done = tokio::task::spawn_blocking(move || {
                            as_follower(&r, me, leader_epoch, || {
                                let end = r.log.truncate_to(to)?;
                                let rebuilt =
                                    crate::producer_state::ProducerStates::rebuild(&r.log)?;
                                *r.producers.lock().unwrap_or_else(|e| e.into_inner()) = rebuilt;
                                Ok(end)
                            })
                        })
                        .await;
                        match done {
                            Ok(Ok(None)) => return,
                            Ok(Ok(Some(end))) => {
                                tracing::info!(%topic, partition, leader_epoch, to = end, "truncated a diverging log tail");
                                replica.set_log_end(end);
                                replica.cap_high_watermark(end);
                            }
                            Ok(Err(e)) => {
                                tracing::error!(%topic, partition, error = %e, "truncation failed");
                                tokio::time::sleep(backoff * 10).await;
                                continue;
                            }
                            Err(_) => return,
                        }
                    }
                    truncated = !again;
                    continue;
                }
                Err(s) => {
                    tracing::debug!(%topic, partition, error = %s.message(), "offset for leader epoch failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let offset = replica.log.log_end_offset();
        // A replica being added in a reassignment copies at the throttled rate (the metadata
        // of each fetcher's replica snapshot says whether, and at what rate).
        let throttle = replica.throttle;
        let max_bytes = if throttle > 0 {
            crate::throttle::Throttle::fetch_size(throttle, 8 << 20)
        } else {
            8 << 20
        };
        let request = pb::FetchRequest {
            topic: topic.clone(),
            partition,
            offset,
            max_bytes,
            max_wait_ms: 500,
            min_bytes: 1,
            decode_records: false,
            replica_id: Some(me),
            current_leader_epoch: Some(leader_epoch),
        };
        // Through the data port when the leader has one; its refusals come back as the
        // statuses gRPC Fetch gives, so both paths are handled below.
        let answer = tokio::select! {
            a = link.fetch(&address, data_address.as_deref(), request) => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match answer {
            Ok(r) => {
                if !r.record_batches.is_empty() {
                    // Records of traced produces: a span in each of their traces, for the
                    // time this follower takes to append them.
                    let spans: Vec<tracing::Span> = r
                        .traceparents
                        .iter()
                        .map(|traceparent| {
                            let span = tracing::info_span!(
                                "replicate",
                                otel.name = "replicate",
                                topic = %topic,
                                partition,
                                leader = replica.leader,
                                offset,
                            );
                            tideline_common::trace_context::set_parent(&span, traceparent);
                            span
                        })
                        .collect();
                    let rep = replica.clone();
                    let bytes = r.record_batches.clone();
                    // The producer state moves with the log in one step, even if this task is
                    // aborted meanwhile.
                    let appended = tokio::task::spawn_blocking(move || {
                        as_follower(&rep, me, leader_epoch, || {
                            let mut producers =
                                rep.producers.lock().unwrap_or_else(|e| e.into_inner());
                            let info = rep.log.append_replicated(&bytes)?;
                            if let Err(e) = producers.record_batches(&bytes) {
                                tracing::error!(error = %e, "producer state of replicated batches");
                            }
                            Ok(info)
                        })
                    })
                    .await;
                    match appended {
                        Ok(Ok(None)) => return,
                        Ok(Ok(Some(info))) => {
                            replica.set_log_end(info.last_offset + 1);
                            drop(spans);
                        }
                        Ok(Err(
                            LogError::NonContiguousAppend { .. } | LogError::EpochRegression { .. },
                        )) => {
                            // The logs disagree: find the divergence again.
                            truncated = false;
                            continue;
                        }
                        Ok(Err(e)) => {
                            tracing::error!(%topic, partition, error = %e, "replicated append failed");
                            tokio::time::sleep(backoff * 10).await;
                            continue;
                        }
                        Err(_) => return,
                    }
                }
                let end = replica.log.log_end_offset();
                replica.advance_high_watermark(r.high_watermark.min(end));
                let pause =
                    shared.reassignment_throttle.charge(r.record_batches.len() as u64, throttle);
                if !pause.is_zero() {
                    metrics::histogram!("tideline_broker_reassignment_throttle_wait_seconds")
                        .record(pause.as_secs_f64());
                    // New metadata that changes this replica's throttle (it joined the ISR, the
                    // move completed or was cancelled, another rate) ends the pause; other
                    // metadata, frequent during a rebalance, does not.
                    let deadline = tokio::time::Instant::now() + pause;
                    let mut applied = shared.metadata_applied.subscribe();
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            changed = applied.changed() => {
                                let now = shared.replicas.get(&topic, partition).map(|r| r.throttle);
                                if changed.is_err() || now != Some(throttle) {
                                    break;
                                }
                            }
                            _ = stop.wait_for(|s| *s) => return,
                        }
                    }
                }
            }
            Err(s) => match error_code_of(&s) {
                Some(ErrorCode::OffsetOutOfRange) => {
                    let local_end = replica.log.log_end_offset();
                    match offset_range_of(&s) {
                        // The leader's log starts after ours ends: start over at its start.
                        Some((start, _)) if local_end < start => {
                            let r = replica.clone();
                            let done = tokio::task::spawn_blocking(move || {
                                as_follower(&r, me, leader_epoch, || {
                                    r.log.truncate_fully_and_start_at(start)?;
                                    *r.producers.lock().unwrap_or_else(|e| e.into_inner()) =
                                        Default::default();
                                    Ok(())
                                })
                            })
                            .await;
                            match done {
                                Ok(Ok(Some(()))) => {
                                    replica.set_log_end(start);
                                    // The log is empty from `start`, and so is what
                                    // it holds committed.
                                    replica.cap_high_watermark(start);
                                    replica.advance_high_watermark(start);
                                }
                                Ok(Ok(None)) | Err(_) => return,
                                Ok(Err(e)) => {
                                    tracing::error!(%topic, partition, error = %e, "log reset failed");
                                }
                            }
                        }
                        // Ours is longer than the leader's: find the divergence again.
                        _ => truncated = false,
                    }
                }
                _ => {
                    tracing::debug!(%topic, partition, error = %s.message(), "replica fetch failed");
                    tokio::time::sleep(backoff).await;
                }
            },
        }
    }
}

/// Every quarter of `replica.lag.time.max.ms`, for each partition led here: takes out of the
/// ISR followers that have not caught up for that long, and adds back replicas that reached the
/// high watermark, through the controller. Runs until `stop`.
pub async fn run_isr_maintenance(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let me = shared.config.broker_id;
    let lag = shared.config.replica_lag_time_max;
    let mut controllers = Controllers::new(shared.config.controllers.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lag / 4) => {}
            _ = shared.isr_check.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let lease = shared.lease();
        let Some(broker_epoch) = lease.broker_epoch.filter(|_| lease.is_live()) else { continue };
        for ((topic, partition), r) in shared.replicas.all() {
            if r.leader != me {
                continue;
            }
            let pending = {
                let st = r.state.read().unwrap_or_else(|e| e.into_inner());
                st.pending_isr.clone().zip(st.pending_since)
            };
            let fresh = pending.is_none();
            let isr = match pending {
                // Asked for already; the metadata carrying the answer has not arrived. If it
                // does not come for a while the answer may have been lost: ask again (a change
                // the controller already made is then refused as stale, and the metadata will
                // bring it).
                Some((isr, since)) if since.elapsed() >= PENDING_RETRY => isr,
                Some(_) => continue,
                None => match wanted_isr(&shared, &r, me, lag) {
                    Some(isr) => isr,
                    None => continue,
                },
            };
            let request = pb::AlterPartitionRequest {
                broker_id: me,
                broker_epoch,
                topic: topic.clone(),
                partition,
                leader_epoch: r.leader_epoch,
                partition_epoch: r.partition_epoch,
                isr: isr.clone(),
            };
            // Until the controller's answer is applied, the high watermark waits for both the
            // old and the new members.
            {
                let mut st = r.state.write().unwrap_or_else(|e| e.into_inner());
                // The snapshot `r` was taken before metadata that changed the partition: the
                // decision was made on an old ISR (and the metadata already cleared what was
                // pending). Decide again next round, on the new state.
                if st.partition_epoch != r.partition_epoch || st.leader_epoch != r.leader_epoch {
                    continue;
                }
                st.pending_isr = Some(isr.clone());
                st.pending_since = Some(Instant::now());
            }
            // From here on the high watermark waits for the joining members. Had it moved past
            // one of them between the decision and now, that member would lack committed
            // records: check again, and give up this round if so.
            let joining: Vec<i32> = isr.iter().copied().filter(|id| !r.isr.contains(id)).collect();
            // (A retried request may already be committed: its pending ISR stays.)
            if fresh && !joining.is_empty() {
                let hw = r.high_watermark();
                let behind = {
                    let progress = r.progress.lock().unwrap_or_else(|e| e.into_inner());
                    joining
                        .iter()
                        .any(|id| progress.followers.get(id).is_none_or(|f| f.log_end < hw))
                };
                if behind {
                    let mut st = r.state.write().unwrap_or_else(|e| e.into_inner());
                    st.pending_isr = None;
                    st.pending_since = None;
                    continue;
                }
            }
            let call = controllers.call(|mut c| {
                let request = request.clone();
                async move { c.alter_partition(request).await }
            });
            let Some(answer) = crate::membership::until_stop(call, &mut stop).await else {
                return;
            };
            // Only a refusal that proves nothing changed clears the pending ISR: after a lost
            // answer or a stale-epoch refusal the change may have been made, and the high
            // watermark must keep waiting for the would-be members until the metadata says.
            if let Err(s) = &answer
                && error_code_of(s) == Some(ErrorCode::InvalidRequest)
            {
                let mut st = r.state.write().unwrap_or_else(|e| e.into_inner());
                st.pending_isr = None;
                st.pending_since = None;
            }
            match answer {
                Ok(answer) => {
                    // The partition as the controller has it now: when the metadata already
                    // brought that epoch (a retried change that was made before), nothing else
                    // will clear what is pending.
                    let mut st = r.state.write().unwrap_or_else(|e| e.into_inner());
                    if answer.partition.is_some_and(|p| {
                        p.partition_epoch == st.partition_epoch && p.leader_epoch == st.leader_epoch
                    }) {
                        st.pending_isr = None;
                        st.pending_since = None;
                    }
                    drop(st);
                    let counter = if isr.len() < r.isr.len() {
                        &shared.counters.isr_shrinks
                    } else {
                        &shared.counters.isr_expands
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%topic, partition, from = ?r.isr, to = ?isr, "ISR changed");
                }
                Err(s) => {
                    tracing::warn!(%topic, partition, error = %s.message(), "ISR change refused")
                }
            }
        }
    }
}

/// The ISR a leader wants now, or `None` when it is right as it is.
fn wanted_isr(shared: &Shared, r: &Replica, me: i32, lag: Duration) -> Option<Vec<i32>> {
    let now = Instant::now();
    let hw = r.high_watermark();
    let progress = r.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let live = |id: i32| {
        let m = shared.metadata.read().unwrap_or_else(|e| e.into_inner());
        m.brokers.get(&id).is_some_and(|b| !b.fenced && !b.shutting_down)
    };
    let isr: Vec<i32> = r
        .replicas
        .iter()
        .copied()
        .filter(|id| {
            if *id == me {
                return true;
            }
            let f = progress.followers.get(id);
            if r.isr.contains(id) {
                // Stays while it caught up within the lag (or leadership is younger than it).
                let caught_up = f.map_or(progress.since, |f| f.caught_up_at);
                now.duration_since(caught_up) <= lag
            } else {
                // Comes back once it has everything committed, including all this leader had
                // when its epoch began (its high watermark may trail the old leader's), and is
                // live.
                f.is_some_and(|f| f.log_end >= hw && f.log_end >= progress.epoch_start) && live(*id)
            }
        })
        .collect();
    let mut current = r.isr.clone();
    current.sort_unstable();
    let mut next = isr.clone();
    next.sort_unstable();
    (current != next).then_some(isr)
}
