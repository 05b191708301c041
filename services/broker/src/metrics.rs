//! The broker's Prometheus metrics (through the `metrics` facade; served on `/metrics` with
//! `--metrics-listen`), besides the per-RPC ones of `tideline_common::grpc_metrics`:
//!
//! - `tideline_broker_bytes_in_total{topic}`, `tideline_broker_records_in_total{topic}`:
//!   record batches appended by produce requests (as sent: compressed bytes);
//! - `tideline_broker_bytes_out_total{topic,via}`: batch bytes answered to fetches, `via` =
//!   `grpc` or `data_port` (replica followers' fetches included; for gRPC answers with
//!   `decode_records`, the bytes of the batches decoded into records);
//! - `tideline_broker_log_start_offset`, `tideline_broker_log_end_offset` and
//!   `tideline_broker_high_watermark` `{topic,partition}`: per replica held, every second (the
//!   series of a replica no longer held leave the output 10 s later);
//! - `tideline_broker_partitions{role}` (`leader`, `follower`),
//!   `tideline_broker_under_replicated_partitions` (led here, ISR lacking a replica other than
//!   one being added), `tideline_broker_reassigning_partitions` (led here and moving),
//!   `tideline_broker_offline_partitions` (held here, no leader), and the counters
//!   `tideline_broker_isr_shrinks_total`, `tideline_broker_isr_expands_total`: every second;
//! - `tideline_broker_reassignment_throttle_wait_seconds` (histogram): each pause a replica
//!   being added in a reassignment took to keep to the throttle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::Shared;

/// Counts a produce request's appended batches.
pub(crate) fn produced(topic: &str, bytes: usize, records: i64) {
    metrics::counter!("tideline_broker_bytes_in_total", "topic" => topic.to_string())
        .increment(bytes as u64);
    metrics::counter!("tideline_broker_records_in_total", "topic" => topic.to_string())
        .increment(u64::try_from(records).unwrap_or(0));
}

/// Counts batch bytes answered to a fetch.
pub(crate) fn fetched(topic: &str, via: &'static str, bytes: u64) {
    if bytes > 0 {
        metrics::counter!("tideline_broker_bytes_out_total", "topic" => topic.to_string(), "via" => via)
            .increment(bytes);
    }
}

/// Publishes the per-partition offsets and the replication gauges every second until `stop`.
pub(crate) async fn run_gauges(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let me = shared.config.broker_id;
        let (mut leaders, mut followers) = (0u32, 0u32);
        for ((topic, partition), r) in shared.replicas.all() {
            let labels = [("topic", topic), ("partition", partition.to_string())];
            metrics::gauge!("tideline_broker_log_start_offset", &labels)
                .set(r.log.log_start_offset() as f64);
            metrics::gauge!("tideline_broker_log_end_offset", &labels)
                .set(r.log.log_end_offset() as f64);
            metrics::gauge!("tideline_broker_high_watermark", &labels)
                .set(r.high_watermark() as f64);
            if r.leader == me {
                leaders += 1;
            } else {
                followers += 1;
            }
        }
        metrics::gauge!("tideline_broker_partitions", "role" => "leader").set(f64::from(leaders));
        metrics::gauge!("tideline_broker_partitions", "role" => "follower")
            .set(f64::from(followers));
        let status = crate::replication::status(&shared);
        metrics::gauge!("tideline_broker_under_replicated_partitions")
            .set(status.under_replicated as f64);
        metrics::gauge!("tideline_broker_offline_partitions").set(status.offline as f64);
        metrics::gauge!("tideline_broker_reassigning_partitions").set(status.reassigning as f64);
        metrics::counter!("tideline_broker_isr_shrinks_total").absolute(status.isr_shrinks);
        metrics::counter!("tideline_broker_isr_expands_total").absolute(status.isr_expands);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
