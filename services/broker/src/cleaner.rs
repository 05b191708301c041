//! The broker's log cleaner: every `log_cleaner.interval` it compacts the logs of
//! `cleanup.policy=compact` topics (leader and follower replicas alike, each on its own, as
//! Kafka does) whose dirty share of cleanable bytes exceeds `min.cleanable.dirty.ratio`, the
//! dirtiest first, one at a time on a blocking thread, within one shared I/O budget. Only
//! segments below the replica's high watermark are cleaned: records a truncation may still
//! remove never stand in for an older record of their key.
//!
//! A log deleted or closed while it is cleaned makes the clean fail as closed (nothing to do);
//! a log whose segments turn out damaged is skipped until the broker restarts, as Kafka marks
//! such partitions uncleanable. At shutdown the running clean is cancelled at its next batch.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tideline_log::{CleanOptions, Log, LogError, Throttle};
use tokio::sync::watch;

use crate::log_config::min_cleanable_dirty_ratio;
use crate::membership::Shared;

/// A compacted log this broker holds, as one round found it.
#[derive(Debug)]
struct Candidate {
    topic: String,
    partition: i32,
    log: Arc<Log>,
    high_watermark: i64,
    min_ratio: f64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs the cleaner until `stop`.
pub async fn run_cleaner(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let config = shared.config.log_cleaner.clone();
    let throttle = Arc::new(Throttle::new(config.io_max_bytes_per_second));
    // Logs with damaged segments, by directory: skipped until the broker restarts.
    let mut uncleanable: HashSet<PathBuf> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let candidates = candidates(&shared, config.min_cleanable_ratio, &uncleanable);
        if candidates.is_empty() {
            continue;
        }
        let round = {
            let (shared, throttle) = (Arc::clone(&shared), Arc::clone(&throttle));
            let map_bytes = config.dedupe_buffer_bytes;
            tokio::task::spawn_blocking(move || {
                clean_round(&shared, candidates, map_bytes, &throttle)
            })
        };
        tokio::pin!(round);
        let finished = tokio::select! {
            done = &mut round => Some(done),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(damaged) = finished else {
            // The broker is stopping: the running clean stops at its next batch.
            throttle.cancel();
            let _ = round.await;
            return;
        };
        match damaged {
            Ok(damaged) => uncleanable.extend(damaged),
            Err(e) => tracing::error!(error = %e, "log cleaner task failed"),
        }
    }
}

/// The compacted logs held now, with their high watermark and dirty-ratio threshold.
fn candidates(shared: &Shared, default_ratio: f64, skip: &HashSet<PathBuf>) -> Vec<Candidate> {
    let replicas = shared.replicas.all();
    let metadata = shared.metadata.read().unwrap_or_else(|e| e.into_inner());
    replicas
        .into_iter()
        .filter(|(_, r)| r.log.config().cleanup_policy.compact && !skip.contains(r.log.dir()))
        .map(|((topic, partition), r)| {
            let min_ratio = match metadata.topics.get(&topic) {
                Some(t) => min_cleanable_dirty_ratio(&t.configs, default_ratio).unwrap_or_else(
                    |e| {
                        tracing::warn!(%topic, error = %e, "using the default min.cleanable.dirty.ratio");
                        default_ratio
                    },
                ),
                None => default_ratio,
            };
            Candidate {
                high_watermark: r.high_watermark(),
                log: Arc::clone(&r.log),
                topic,
                partition,
                min_ratio,
            }
        })
        .collect()
}

/// Cleans the candidates whose dirty ratio exceeds their threshold, dirtiest first. Returns
/// the directories of logs found damaged.
fn clean_round(
    shared: &Shared,
    candidates: Vec<Candidate>,
    map_bytes: usize,
    throttle: &Throttle,
) -> Vec<PathBuf> {
    let now = now_ms();
    let options_for = |c: &Candidate| CleanOptions {
        upper_bound: Some(c.high_watermark),
        offset_map_bytes: map_bytes,
        ..CleanOptions::new(now)
    };
    let mut due: Vec<(f64, Candidate)> = candidates
        .into_iter()
        .filter_map(|c| {
            let stats = c.log.cleanable(&options_for(&c));
            let ratio = stats.dirty_ratio();
            (stats.dirty_bytes > 0 && ratio > c.min_ratio).then_some((ratio, c))
        })
        .collect();
    due.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut damaged = Vec::new();
    for (ratio, c) in due {
        if throttle.is_cancelled() {
            break;
        }
        // The replica may have been deleted, or re-created with a new log, since the list
        // was taken.
        let held =
            shared.replicas.get(&c.topic, c.partition).is_some_and(|r| Arc::ptr_eq(&r.log, &c.log));
        if !held {
            continue;
        }
        let (topic, partition) = (&c.topic, c.partition);
        match c.log.clean(&options_for(&c), throttle) {
            Ok(o) if o.segments_written > 0 || o.abandoned.is_some() => {
                tracing::info!(
                    %topic,
                    partition,
                    dirty_ratio = ratio,
                    segments = o.segments_replaced,
                    bytes_before = o.bytes_before,
                    bytes_after = o.bytes_after,
                    records_removed = o.records_removed,
                    tombstones_removed = o.tombstones_removed,
                    abandoned = o.abandoned.as_deref().unwrap_or(""),
                    "log cleaned"
                );
            }
            Ok(_) => {}
            Err(LogError::Closed(_)) => {
                tracing::debug!(%topic, partition, "log closed while it was cleaned");
            }
            Err(e @ LogError::Corrupt { .. }) => {
                tracing::error!(%topic, partition, error = %e, "log has damaged segments; not cleaning it until restart");
                damaged.push(c.log.dir().to_path_buf());
            }
            Err(e) => tracing::error!(%topic, partition, error = %e, "log cleaning failed"),
        }
    }
    damaged
}
