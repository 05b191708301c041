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
//! - [`config`] and [`options`]: settings, from the command line and `TIDELINE_*` variables;
//! - `node`: the runtime: lease and shard ownership from the controller, loading a shard by
//!   replaying its partition of `__consumer_offsets`, writes with `acks=all`, housekeeping;
//! - [`service`]: the `CoordinatorService` gRPC API.
//!
//! [`Coordinator::start`] runs one in-process; [`run`] is what the `tideline-coordinator`
//! binary and `tide dev` call. The process keeps no local state: everything it knows is in the
//! offsets topic, so it scales and fails over like a stateless service.

#![warn(missing_docs)]

pub mod assignor;
pub mod config;
pub mod group;
pub mod metrics;
mod node;
pub mod offsets;
pub mod options;
pub mod service;
pub mod shard;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tideline_client::{Acks, ClientConfig, Cluster, Producer, ProducerConfig};
use tideline_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::CoordinatorConfig;
pub use node::Counters;
use node::Shared;
use service::CoordinatorApi;

pub use assignor::{
    Assignor, AssignorError, GroupSpec, MemberSpec, TargetAssignment, TopicPartition,
};

/// Why a coordinator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The config is invalid.
    #[error("invalid coordinator config: {0}")]
    Config(String),
    /// The listener cannot be bound or served.
    #[error("{0}")]
    Listen(String),
    /// The gRPC server stopped on its own.
    #[error("the gRPC server failed: {0}")]
    Server(String),
}

/// What a coordinator is doing, for tests and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorStatus {
    /// Shards loaded and serving.
    pub serving: Vec<i32>,
    /// Shards being loaded.
    pub loading: Vec<i32>,
    /// Shard loads so far.
    pub shard_loads: u64,
    /// Records replayed by loads so far.
    pub records_replayed: u64,
    /// Records written so far.
    pub records_written: u64,
}

/// A running group coordinator.
pub struct Coordinator {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("coordinator_id", &self.shared.config.coordinator_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Starts a coordinator serving on `listener`: registers with the controllers, loads the
    /// shards it is given and serves `CoordinatorService`, `grpc.health.v1` and reflection.
    /// Returns at once.
    ///
    /// # Errors
    /// [`CoordinatorError::Config`] for an invalid config.
    pub async fn start(
        config: CoordinatorConfig,
        listener: TcpListener,
    ) -> Result<Coordinator, CoordinatorError> {
        config.validate().map_err(CoordinatorError::Config)?;
        let local_addr =
            listener.local_addr().map_err(|e| CoordinatorError::Listen(e.to_string()))?;
        let mut client = ClientConfig::new(config.controllers.iter().cloned());
        client.request_timeout = config.request_timeout;
        let cluster = Cluster::new(client).map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let producer = Producer::new(
            &cluster,
            ProducerConfig {
                acks: Acks::All,
                enable_idempotence: true,
                linger: Duration::ZERO,
                // Group records repeat topic names and member ids: they compress well.
                compression: tideline_client::Compression::Lz4,
                delivery_timeout: config.request_timeout,
                ..ProducerConfig::default()
            },
        )
        .map_err(|e| CoordinatorError::Config(e.to_string()))?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_not_serving::<CoordinatorServiceServer<CoordinatorApi>>().await;
        let shared = Arc::new(Shared::new(config, local_addr.port(), cluster, producer, health));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tideline_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| CoordinatorError::Config(format!("reflection: {e}")))?;
        let (stop, stopped) = watch::channel(false);
        let mut server_stopped = stopped.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(tideline_common::grpc_metrics::Metered::new(
                    CoordinatorServiceServer::new(CoordinatorApi::new(Arc::clone(&shared))),
                ))
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(
                    // Nagle off, as on the other services: trailers must not wait for an ACK.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = server_stopped.wait_for(|s| *s).await;
                    },
                ),
        );
        let tasks = vec![
            tokio::spawn(node::run_lease(Arc::clone(&shared), stopped.clone())),
            tokio::spawn(node::run_housekeeping(Arc::clone(&shared), stopped)),
        ];
        tracing::info!(coordinator_id = %shared.config.coordinator_id, %local_addr, "coordinator started");
        Ok(Coordinator { shared, local_addr, stop, tasks, server: Some(server) })
    }

    /// The address the coordinator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shards it serves and loads, and its counters.
    pub fn status(&self) -> CoordinatorStatus {
        let owned = self.shared.owned();
        let c = &self.shared.counters;
        CoordinatorStatus {
            serving: owned.iter().filter(|(_, a)| *a).map(|(i, _)| *i).collect(),
            loading: owned.iter().filter(|(_, a)| !*a).map(|(i, _)| *i).collect(),
            shard_loads: c.shard_loads.load(Ordering::Relaxed),
            records_replayed: c.records_replayed.load(Ordering::Relaxed),
            records_written: c.records_written.load(Ordering::Relaxed),
        }
    }

    /// Resolves if the gRPC server stops on its own (it should not before
    /// [`Coordinator::shutdown`]).
    pub async fn server_failed(&mut self) -> CoordinatorError {
        let Some(server) = self.server.as_mut() else {
            return std::future::pending().await;
        };
        let result = server.await;
        self.server = None;
        CoordinatorError::Server(match result {
            Ok(Ok(())) => "stopped".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        })
    }

    /// Stops serving, waits for writes in flight, tells the controller it leaves (its shards
    /// move at once) and stops.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.shared.producer.close().await;
    }
}

/// Runs a coordinator until `shutdown` resolves: binds `listen`, starts, and stops cleanly.
/// The `tideline-coordinator` binary and `tide dev` call this.
///
/// # Errors
/// [`CoordinatorError`] when the listener cannot be bound, the config is invalid, or the server
/// fails.
pub async fn run(
    config: CoordinatorConfig,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| CoordinatorError::Listen(format!("cannot listen on {listen}: {e}")))?;
    if let Some(addr) = config.metrics_listen {
        tideline_common::process::serve_metrics(addr, None).map_err(CoordinatorError::Listen)?;
    }
    let mut coordinator = Coordinator::start(config, listener).await?;
    tokio::select! {
        _ = shutdown => {}
        e = coordinator.server_failed() => {
            coordinator.shutdown().await;
            return Err(e);
        }
    }
    coordinator.shutdown().await;
    Ok(())
}
