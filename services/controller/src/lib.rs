//! `tideline-controller`: the controller quorum. A Raft group (openraft) replicates the cluster
//! metadata; its log, vote and snapshots live in sled.
//!
//! - [`metadata`]: the replicated state and the commands that change it (a pure `apply`).
//! - [`network`]: Raft RPCs between controllers over gRPC.
//! - [`node`]: one quorum member: Raft over the sled store, serving the Raft transport.
//! - [`placement`]: rack-aware round-robin replica placement with balanced leaders.
//! - [`service`]: the `ControllerService` gRPC API (admin, metadata, broker leases, watch).
//! - [`topic_config`]: the topic configs the cluster understands and their ranges.
//! - [`store`]: openraft's v2 storage traits over sled, checked by openraft's conformance suite.

#![warn(missing_docs)]

pub mod metadata;
pub mod network;
pub mod node;
pub mod placement;
pub mod service;
pub mod store;
pub mod topic_config;
pub mod types;
