//! `tideline-controller`: the controller quorum. A Raft group (openraft) replicates the cluster
//! metadata; its log, vote and snapshots live in sled.
//!
//! - [`metadata`]: the replicated state and the commands that change it (a pure `apply`).
//! - [`store`]: openraft's v2 storage traits over sled, checked by openraft's conformance suite.

#![warn(missing_docs)]

pub mod metadata;
pub mod store;
pub mod types;
