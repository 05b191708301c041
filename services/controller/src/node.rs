//! [`ControllerNode`]: one member of the controller quorum: openraft over the sled store,
//! bootstrapped from a static peer list, serving on one listener the client-facing
//! `ControllerService`, the internal `RaftService`, `grpc.health.v1` and server reflection.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Raft};
use tideline_proto::v1::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::network::{GrpcNetwork, RaftGrpcService};
use crate::service::ControllerApi;
use crate::store::{LogStore, StateMachineStore, open_db};
use crate::types::TypeConfig;
use std::time::Duration;
use tideline_common::grpc_metrics::Metered;
use tideline_proto::v1::controller_service_server::ControllerServiceServer;

/// Settings of one controller.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This controller's id; must be a key of `peers`.
    pub node_id: u64,
    /// Where the Raft state (sled) lives.
    pub data_dir: PathBuf,
    /// Every voting member, this one included: node id -> gRPC address (host:port).
    pub peers: BTreeMap<u64, String>,
    /// Raft heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Election timeout range, ms (randomized in it).
    pub election_timeout_ms: (u64, u64),
    /// Broker lease length: a broker that does not heartbeat within it is fenced. Coordinators
    /// hold leases of the same length.
    pub broker_lease_ms: u64,
    /// Partitions (shards) of `__consumer_offsets`, created at the first coordinator's
    /// registration.
    pub offsets_topic_partitions: i32,
    /// `segment.bytes` of `__consumer_offsets` (Kafka's `offsets.topic.segment.bytes`): small
    /// segments are compacted sooner, so a coordinator taking a shard over replays less.
    pub offsets_topic_segment_bytes: u64,
    /// Replication factor of `__consumer_offsets` (Kafka's `offsets.topic.replication.factor`):
    /// it is created once that many brokers are live.
    pub offsets_topic_replication_factor: i32,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Never initialize a quorum: wait to be added to the existing one (AddController). True
    /// for a node `peers` does not name.
    pub join: bool,
}

impl NodeConfig {
    /// A config with the default timings (heartbeat 200 ms, election 800-1600 ms).
    pub fn new(node_id: u64, data_dir: impl Into<PathBuf>, peers: BTreeMap<u64, String>) -> Self {
        NodeConfig {
            node_id,
            data_dir: data_dir.into(),
            peers,
            heartbeat_interval_ms: 200,
            election_timeout_ms: (800, 1600),
            broker_lease_ms: 6000,
            offsets_topic_partitions: 16,
            offsets_topic_segment_bytes: 100 << 20,
            offsets_topic_replication_factor: 3,
            metrics_listen: None,
            join: false,
        }
    }
}

/// Why a controller node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config is inconsistent.
    #[error("invalid controller config: {0}")]
    Config(String),
    /// The sled database cannot be opened.
    #[error("failed to open the raft store in {path}: {source}")]
    OpenStore {
        /// The database directory.
        path: PathBuf,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
    /// openraft refused to start or to initialize the quorum.
    #[error("raft failed: {0}")]
    Raft(String),
}

/// A running controller: the Raft node and its metadata state machine.
pub struct ControllerNode {
    /// The Raft node (clone freely).
    pub raft: Raft<TypeConfig>,
    /// The applied metadata.
    pub state: StateMachineStore,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Ends watch streams and the lease checker.
    stop_api: tokio::sync::watch::Sender<bool>,
    lease_checker: JoinHandle<()>,
}

impl std::fmt::Debug for ControllerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerNode").finish_non_exhaustive()
    }
}

impl ControllerNode {
    /// Starts the node, serving `RaftService` on `listener`. A node with no Raft state
    /// initializes the quorum with `peers` (every member does the same, which openraft accepts:
    /// identical memberships at the same first log id), unless it joins (`join`, or not in
    /// `peers`): then it waits for the leader to add it. A restarted node keeps its state,
    /// membership included.
    ///
    /// # Errors
    /// [`NodeError`] when the config is inconsistent, the store cannot be opened or Raft fails.
    pub async fn start(config: NodeConfig, listener: TcpListener) -> Result<Self, NodeError> {
        let join = config.join || !config.peers.contains_key(&config.node_id);
        let path = config.data_dir.join("raft");
        let db =
            open_db(&path).map_err(|source| NodeError::OpenStore { path: path.clone(), source })?;
        let log =
            LogStore::new(db.clone()).map_err(|source| NodeError::OpenStore { path, source })?;
        let state = StateMachineStore::new(db).map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft_config = openraft::Config {
            cluster_name: "tideline-controllers".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            // A snapshot chunk is JSON; give it time on a slow link rather than restart it.
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let raft =
            Raft::new(config.node_id, Arc::new(raft_config), GrpcNetwork, log, state.clone())
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;

        let (stop, stopped) = oneshot::channel::<()>();
        let raft_service = RaftServiceServer::new(RaftGrpcService::new(raft.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
        let api = ControllerApi::new(
            config.node_id,
            raft.clone(),
            state.clone(),
            config.peers.clone(),
            Duration::from_millis(config.broker_lease_ms),
            crate::service::OffsetsTopic {
                partitions: config.offsets_topic_partitions,
                segment_bytes: config.offsets_topic_segment_bytes,
                replication_factor: config.offsets_topic_replication_factor,
            },
            api_stopped,
        );
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ControllerServiceServer<ControllerApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tideline_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| NodeError::Config(format!("reflection: {e}")))?;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Metered::untraced(raft_service))
                .add_service(Metered::new(ControllerServiceServer::new(api.clone())))
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(
                    // Nagle off: a response's last frames (gRPC trailers) must not wait for the
                    // peer's delayed ACK. `Server::tcp_nodelay` covers only listeners tonic binds.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        let lease_checker = tokio::spawn(api.run_lease_checker());
        if config.metrics_listen.is_some() {
            tokio::spawn(publish_raft_metrics(raft.metrics()));
        }

        let initialized =
            raft.is_initialized().await.map_err(|e| NodeError::Raft(e.to_string()))?;
        if !initialized && join {
            tracing::info!(
                node_id = config.node_id,
                "not initializing a quorum: waiting to be added (tide controllers add)"
            );
        } else if !initialized {
            let members: BTreeMap<u64, BasicNode> =
                config.peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(NodeError::Raft(e.to_string())),
            }
        }
        tracing::info!(node_id = config.node_id, peers = ?config.peers, initialized, "controller raft node started");
        Ok(ControllerNode { raft, state, stop, server, stop_api, lease_checker })
    }

    /// Stops Raft and the server, and waits for both.
    pub async fn shutdown(self) {
        let _ = self.stop_api.send(true);
        let _ = self.raft.shutdown().await;
        let _ = self.lease_checker.await;
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// Publishes this node's Raft state as gauges whenever it changes, until the Raft node stops:
/// `tideline_controller_raft_term`, `tideline_controller_raft_leader` (the leader's node id,
/// -1 when there is none), `tideline_controller_raft_is_leader`,
/// `tideline_controller_raft_last_log_index` and `tideline_controller_raft_applied_index`
/// (what this node's metadata state has applied: the commit index it has seen through).
async fn publish_raft_metrics(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
) {
    loop {
        {
            let m = metrics.borrow_and_update();
            metrics::gauge!("tideline_controller_raft_term").set(m.current_term as f64);
            let leader = m.current_leader.map_or(-1.0, |l| l as f64);
            metrics::gauge!("tideline_controller_raft_leader").set(leader);
            let is_leader = m.current_leader == Some(m.id);
            metrics::gauge!("tideline_controller_raft_is_leader")
                .set(f64::from(u8::from(is_leader)));
            let last_log = m.last_log_index.map_or(0.0, |i| i as f64);
            metrics::gauge!("tideline_controller_raft_last_log_index").set(last_log);
            let applied = m.last_applied.map_or(0.0, |l| l.index as f64);
            metrics::gauge!("tideline_controller_raft_applied_index").set(applied);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
