//! `tideline-common`: what every Tideline service, the client and the CLI share: typed ids at
//! crate boundaries ([`ids`]), Kafka's topic naming rules, and the one mapping from
//! [`ErrorCode`] to gRPC statuses ([`error`]). With feature `process`, what every binary does
//! alike (`process`); with `test-util`, shared test helpers (`testing`).
#![warn(missing_docs)]

pub mod error;
pub mod ids;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "test-util")]
pub mod testing;

pub use error::{
    ErrorCode, error_code_of, grpc_code, is_retriable, leader_hint_of, offset_range_of, status,
    with_leader, with_offset_range,
};
pub use ids::{BrokerId, InvalidTopicName, LeaderEpoch, NodeId, PartitionId, TopicName};
