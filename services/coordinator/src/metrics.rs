//! The coordinator's metrics (through the `metrics` facade; exported for Prometheus on
//! `/metrics` when the binary is given `--metrics-listen`):
//!
//! - `tideline_coordinator_group_members{group}`: members per group;
//! - `tideline_coordinator_group_rebalances_total{group}`: new target assignments computed;
//! - `tideline_coordinator_group_rebalance_seconds{group}`: from a new target assignment until
//!   every member owns exactly its target (the group is stable again);
//! - `tideline_coordinator_group_lag{group,topic,partition}`: end offset (high watermark) minus
//!   committed offset, refreshed every lag interval;
//! - `tideline_coordinator_shards_owned`, `tideline_coordinator_shard_loads_total`,
//!   `tideline_coordinator_records_written_total`: the coordinator itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::group::Group;

/// Follows each group's target epoch to count rebalances and time them.
#[derive(Debug, Default)]
pub(crate) struct RebalanceTracker {
    /// Per group: the last target epoch seen, and when the current rebalance started.
    groups: Mutex<HashMap<String, (i32, Option<Instant>)>>,
}

impl RebalanceTracker {
    /// Notes `group` as it is now; returns the duration of a rebalance that just completed.
    pub(crate) fn observe(&self, group: &Group) -> Option<std::time::Duration> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let entry = groups.entry(group.group_id.clone()).or_insert((group.target_epoch, None));
        if entry.0 != group.target_epoch {
            entry.0 = group.target_epoch;
            entry.1.get_or_insert_with(Instant::now);
            metrics::counter!("tideline_coordinator_group_rebalances_total", "group" => group.group_id.clone())
                .increment(1);
        }
        metrics::gauge!("tideline_coordinator_group_members", "group" => group.group_id.clone())
            .set(group.members.len() as f64);
        if group.is_stable()
            && let Some(started) = entry.1.take()
        {
            let took = started.elapsed();
            metrics::histogram!("tideline_coordinator_group_rebalance_seconds", "group" => group.group_id.clone())
                .record(took.as_secs_f64());
            tracing::info!(group = %group.group_id, members = group.members.len(), ms = took.as_millis() as u64, "group stable");
            return Some(took);
        }
        None
    }

    /// Forgets a group that is gone.
    pub(crate) fn forget(&self, group: &str) {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).remove(group);
        metrics::gauge!("tideline_coordinator_group_members", "group" => group.to_string())
            .set(0.0);
    }
}

/// Sets the lag gauge of `group` at `topic`-`partition`.
pub(crate) fn set_lag(group: &str, topic: &str, partition: i32, lag: i64) {
    metrics::gauge!(
        "tideline_coordinator_group_lag",
        "group" => group.to_string(),
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}
