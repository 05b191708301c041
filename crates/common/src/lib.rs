//! `tideline-common`: what every Tideline service, the client and the CLI share: typed ids at
//! crate boundaries ([`ids`]), Kafka's topic naming rules, and the one mapping from
//! [`ErrorCode`] to gRPC statuses ([`error`]), and StatefulSet ordinals ([`hostname`]). With
//! feature `process`, what every binary does alike (`process`) and per-RPC metrics
//! (`grpc_metrics`), and trace context carried outside gRPC headers (`trace_context`); with `test-util`, shared test helpers (`testing`).
#![warn(missing_docs)]

#[cfg(feature = "process")]
pub mod controllers;
pub mod error;
#[cfg(feature = "process")]
pub mod grpc_metrics;
pub mod hostname;
pub mod ids;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "test-util")]
pub mod testing;
#[cfg(feature = "process")]
pub mod trace_context;

pub use error::{
    ErrorCode, error_code_of, grpc_code, is_retriable, leader_hint_of, offset_range_of, status,
    with_leader, with_offset_range,
};
pub use ids::{BrokerId, InvalidTopicName, LeaderEpoch, NodeId, PartitionId, TopicName};

/// `addr` as `HOST:PORT`: the host (possibly empty) and the port, or `None` when it has no
/// `:PORT` with a valid port number.
pub fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// The internal topic holding consumer groups and committed offsets; each partition is a shard
/// owned by one group coordinator.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The shard (partition of `__consumer_offsets`) that owns `group_id`: Kafka's
/// `abs(groupId.hashCode()) % shards`, with Java's `String.hashCode` over UTF-16 code units.
///
/// # Panics
/// If `shards` is not positive.
pub fn shard_for(group_id: &str, shards: i32) -> i32 {
    assert!(shards > 0, "shard count must be positive");
    let hash =
        group_id.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    // Kafka's Utils.abs: Integer.MIN_VALUE maps to 0.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % shards
}
