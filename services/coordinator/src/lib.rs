//! `tideline-coordinator`: the group coordinator, which runs consumer group membership on the
//! server side (the shape of Kafka's KIP-848) and keeps committed offsets.
//!
//! For now the crate holds the pure core of the service:
//! - [`assignor`]: the server-side partition assignors, from a group's members, their
//!   subscriptions, the topics and the current target assignment to the next target assignment;
//! - [`group`]: one group's membership and incremental rebalances (member epochs, revocation
//!   before reassignment, session timeouts, static members, commit fencing);
//! - [`offsets`]: committed offsets as compaction-friendly records of an offsets shard, and
//!   their replay;
//! - [`shard`]: the groups and offsets of one shard with the operations the service will serve
//!   (heartbeat, commit fenced by member epoch, fetch, list, describe with lag, delete), and
//!   Kafka's group-to-shard mapping.
//!
//! The service itself comes next: the offsets shard replay, the gRPC service and the `run` entry
//! point with its thin binary.

#![warn(missing_docs)]

pub mod assignor;
pub mod group;
pub mod offsets;
pub mod shard;

pub use assignor::{
    Assignor, AssignorError, GroupSpec, MemberSpec, TargetAssignment, TopicPartition,
};
