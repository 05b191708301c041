//! `tideline-controller`: the controller quorum. A Raft group (openraft) replicates the cluster
//! metadata; its log, vote and snapshots live in sled.
//!
//! - [`metadata`]: the replicated state and the commands that change it (a pure `apply`),
//!   leader election and ISR changes included.
//! - [`network`]: Raft RPCs between controllers over gRPC.
//! - [`node`]: one quorum member: Raft over the sled store, serving the Raft transport.
//! - [`options`]: command line and environment, validated into a config.
//! - [`placement`]: rack-aware round-robin replica placement with balanced leaders.
//! - [`service`]: the `ControllerService` gRPC API (admin, metadata, broker leases,
//!   ISR changes, controlled shutdown, watch).
//! - [`topic_config`]: the topic configs the cluster understands and their ranges.
//! - [`store`]: openraft's v2 storage traits over sled, checked by openraft's conformance suite.

#![warn(missing_docs)]

pub mod metadata;
pub mod network;
pub mod node;
pub mod options;
pub mod placement;
pub mod service;
pub mod store;
pub mod topic_config;
pub mod types;

use std::future::Future;
use std::net::SocketAddr;

use node::{ControllerNode, NodeConfig, NodeError};

/// Runs a controller until `shutdown` resolves: binds `listen`, starts the node, and stops it
/// cleanly. The `tideline-controller` binary and `tide dev` call this.
///
/// # Errors
/// [`NodeError`] when the listener cannot be bound or the node cannot start.
pub async fn run(
    config: NodeConfig,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| NodeError::Config(format!("cannot listen on {listen}: {e}")))?;
    if let Some(addr) = config.metrics_listen {
        tideline_common::process::serve_metrics(addr, None).map_err(NodeError::Config)?;
    }
    let node = ControllerNode::start(config, listener).await?;
    shutdown.await;
    node.shutdown().await;
    Ok(())
}
