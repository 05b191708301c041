//! `tideline-broker`: the storage broker. It hosts partition replicas on `tideline-log`, holds a
//! lease from the controller quorum, follows its metadata, and serves produce, fetch and offset
//! lookups over gRPC.
//!
//! - [`cleaner`]: the log cleaner, compacting `cleanup.policy=compact` logs.
//! - [`config`]: the broker's settings.
//! - [`data`]: the sendfile data listener (bulk reads from the page cache to the socket, for
//!   consumers and follower replicas).
//! - [`log_config`]: topic configs to a partition log's `LogConfig`.
//! - [`membership`]: registration, heartbeats (the lease) and the metadata watch.
//! - [`options`]: command line and environment, validated into a config.
//! - [`producer_state`]: idempotent producers' sequences per partition (duplicates, gaps).
//! - [`replicas`]: the partitions this broker holds, kept in line with cluster metadata.
//! - [`replication`]: follower fetchers, the leader's high watermark and ISR maintenance.
//! - [`service`]: the `BrokerService` gRPC API.
#![warn(missing_docs)]

pub mod appender;
pub mod cleaner;
pub mod config;
pub mod data;
pub mod grpc_bulk;
mod leader_link;
pub mod log_config;
pub mod membership;
mod metrics;
pub mod options;
pub mod producer_state;
pub mod replicas;
pub mod replication;
pub mod service;
pub mod throttle;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tideline_common::grpc_metrics::Metered;
use tideline_proto::v1::broker_service_server::BrokerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use config::MAX_MESSAGE_BYTES;
pub use config::{BrokerConfig, LogCleanerConfig};
use membership::{Lease, MetadataImage, Shared};
use replicas::ReplicaManager;
use service::BrokerApi;

/// Why a broker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The config is invalid.
    #[error("invalid broker config: {0}")]
    Config(String),
    /// The listener cannot be bound or served.
    #[error("{0}")]
    Listen(String),
    /// The data directory cannot be used, or a log could not be closed cleanly at shutdown.
    #[error("{0}")]
    Replicas(#[from] replicas::ReplicaError),
    /// The gRPC server stopped on its own.
    #[error("the gRPC server failed: {0}")]
    Server(String),
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Broker {
    /// Starts a broker serving on `listener`: registers with the controllers, follows their
    /// metadata and serves `BrokerService`, `grpc.health.v1` and reflection. Returns at once;
    /// the broker serves partitions once it holds a lease and has the metadata.
    ///
    /// # Errors
    /// [`BrokerError::Config`] for an invalid config.
    pub async fn start(config: BrokerConfig, listener: TcpListener) -> Result<Broker, BrokerError> {
        config.validate().map_err(BrokerError::Config)?;
        let local_addr = listener.local_addr().map_err(|e| BrokerError::Listen(e.to_string()))?;
        let data_addr = config.data_listen.unwrap_or(std::net::SocketAddr::new(local_addr.ip(), 0));
        let data_listener = TcpListener::bind(data_addr).await.map_err(|e| {
            BrokerError::Listen(format!("cannot listen for data on {data_addr}: {e}"))
        })?;
        let data_port =
            data_listener.local_addr().map_err(|e| BrokerError::Listen(e.to_string()))?.port();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_not_serving::<BrokerServiceServer<BrokerApi>>().await;
        let replicas =
            ReplicaManager::new(&config.data_dir, config.broker_id, config.log_defaults)?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            replicas,
            config,
            port: local_addr.port(),
            data_port,
            lease_ms: AtomicU64::new(0),
            metadata: RwLock::new(MetadataImage::default()),
            metadata_applied: watch::channel(0).0,
            lease: Mutex::new(Lease::default()),
            stop: stopped.clone(),
            health,
            fetchers: Default::default(),
            counters: Default::default(),
            isr_check: tokio::sync::Notify::new(),
            reassignment_throttle: Default::default(),
        });
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tideline_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| BrokerError::Config(format!("reflection: {e}")))?;
        let api = BrokerServiceServer::new(BrokerApi::new(Arc::clone(&shared)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut server_stopped = stopped.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                // Bounds the requests (and so the memory) one connection can have in flight.
                .concurrency_limit_per_connection(256)
                .initial_stream_window_size(16 << 20)
                .initial_connection_window_size(32 << 20)
                .max_frame_size(16_777_215)
                .add_service(Metered::new(grpc_bulk::BrokerGrpc::new(
                    BrokerApi::new(Arc::clone(&shared)),
                    api,
                )))
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(
                    // Nagle off: a response's last frames (gRPC trailers) must not wait for the
                    // peer's delayed ACK. `Server::tcp_nodelay` covers only listeners tonic binds.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = server_stopped.wait_for(|s| *s).await;
                    },
                ),
        );
        let mut tasks = vec![
            tokio::spawn(membership::run_lease(Arc::clone(&shared), stopped.clone())),
            tokio::spawn(membership::run_watch(Arc::clone(&shared), stopped.clone())),
            tokio::spawn(replication::run_isr_maintenance(Arc::clone(&shared), stopped.clone())),
            tokio::spawn(cleaner::run_cleaner(Arc::clone(&shared), stopped.clone())),
            tokio::spawn(data::run(Arc::clone(&shared), data_listener, stopped.clone())),
            tokio::spawn(housekeeping(Arc::clone(&shared), stopped.clone())),
        ];
        if shared.config.metrics_listen.is_some() {
            tasks.push(tokio::spawn(metrics::run_gauges(Arc::clone(&shared), stopped)));
        }
        tracing::info!(broker_id = shared.config.broker_id, %local_addr, data_dir = %shared.config.data_dir.display(), "broker started");
        Ok(Broker { shared, local_addr, stop, tasks, server: Some(server) })
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Under-replicated and offline partitions, ISR shrinks and expands, replica fetches served
    /// by path (for metrics).
    pub fn replication_status(&self) -> replication::ReplicationStatus {
        replication::status(&self.shared)
    }

    /// Group commit so far, over the partitions this broker holds: log writes made for
    /// produce requests, and the produce requests they carried.
    pub fn produce_writes(&self) -> (u64, u64) {
        self.shared.replicas.all().iter().fold((0, 0), |(w, r), (_, replica)| {
            let (writes, requests) = replica.appends.stats();
            (w + writes, r + requests)
        })
    }

    /// The broker's epoch while it holds a lease.
    pub fn broker_epoch(&self) -> Option<i64> {
        let lease = self.shared.lease();
        lease.is_live().then_some(lease.broker_epoch).flatten()
    }

    /// Controlled shutdown: asks the controller to move this broker's leaderships to other
    /// in-sync replicas and to take it out of every ISR, then waits (up to `timeout`) until the
    /// metadata shows it leads only what could not move. Producers then find the new leaders
    /// before this broker stops answering.
    pub async fn controlled_shutdown(&self, timeout: Duration) {
        let shared = &self.shared;
        let Some(broker_epoch) = shared.lease().broker_epoch else { return };
        let me = shared.config.broker_id;
        let deadline = Instant::now() + timeout;
        let mut controllers = membership::Controllers::new(shared.config.controllers.clone());
        let request = tideline_proto::v1::ControlledShutdownRequest { broker_id: me, broker_epoch };
        let remaining = loop {
            let answer =
                controllers.call(|mut c| async move { c.controlled_shutdown(request).await }).await;
            match answer {
                Ok(a) => break a.remaining.len(),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e.message(), "controlled shutdown refused; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), "controlled shutdown failed; stopping anyway");
                    return;
                }
            }
        };
        let mut applied = shared.metadata_applied.subscribe();
        loop {
            let leading = {
                let m = shared.metadata.read().unwrap_or_else(|e| e.into_inner());
                m.topics
                    .values()
                    .flat_map(|t| t.partitions.iter())
                    .filter(|p| p.leader == me)
                    .count()
            };
            if leading <= remaining {
                tracing::info!(still_leading = leading, "leaderships moved; stopping");
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    still_leading = leading,
                    "leaderships did not all move in time; stopping"
                );
                return;
            }
            let _ = tokio::time::timeout(left, applied.changed()).await;
        }
    }

    /// Resolves if the gRPC server stops on its own (it should not before [`Broker::shutdown`]).
    pub async fn server_failed(&mut self) -> BrokerError {
        let Some(server) = self.server.as_mut() else {
            return std::future::pending().await;
        };
        let result = server.await;
        self.server = None;
        BrokerError::Server(match result {
            Ok(Ok(())) => "stopped".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        })
    }

    /// Stops serving (waiting fetches answer at once), stops the background tasks and closes
    /// every log cleanly.
    ///
    /// # Errors
    /// [`BrokerError::Replicas`] when a log cannot be closed cleanly (it recovers at next
    /// start).
    pub async fn shutdown(mut self) -> Result<(), BrokerError> {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.shared.fetchers.stop_all();
        let shared = self.shared;
        tokio::task::spawn_blocking(move || shared.replicas.close())
            .await
            .map_err(|e| BrokerError::Server(format!("close task failed: {e}")))??;
        Ok(())
    }
}

/// Every 100 ms: keeps the health status in line with whether the broker may serve, and
/// flushes logs whose flush interval is due; checkpoints high watermarks every 5 s; applies
/// retention every `retention_check_interval`. Runs until `stop`.
async fn housekeeping(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut last_retention = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut serving = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now_serving = shared.is_serving();
        if now_serving != serving {
            serving = now_serving;
            if serving {
                shared.health.set_serving::<BrokerServiceServer<BrokerApi>>().await;
            } else {
                shared.health.set_not_serving::<BrokerServiceServer<BrokerApi>>().await;
            }
        }
        let retention = last_retention.elapsed() >= shared.config.retention_check_interval;
        if retention {
            last_retention = Instant::now();
        }
        let checkpoint = last_checkpoint.elapsed() >= Duration::from_secs(5);
        if checkpoint {
            last_checkpoint = Instant::now();
        }
        let logs: Vec<_> = shared
            .replicas
            .all()
            .into_iter()
            .map(|(key, r)| {
                let hw = r.high_watermark();
                (key, Arc::clone(&r.log), hw)
            })
            .collect();
        let current = Arc::clone(&shared);
        let done = tokio::task::spawn_blocking(move || {
            for ((topic, partition), log, hw) in logs {
                // Only for the log still held (not one deleted, or replaced by a re-created
                // topic, since the list was taken), and never past what it holds.
                let still_held = current
                    .replicas
                    .get(&topic, partition)
                    .is_some_and(|r| Arc::ptr_eq(&r.log, &log));
                if checkpoint
                    && still_held
                    && let Err(e) =
                        replicas::write_high_watermark(log.dir(), hw.min(log.log_end_offset()))
                {
                    tracing::warn!(%topic, partition, error = %e, "high watermark checkpoint failed");
                }
                if let Err(e) = log.flush_if_due() {
                    tracing::error!(%topic, partition, error = %e, "interval flush failed");
                }
                if retention {
                    // Only committed records: never past the high watermark.
                    match log.apply_retention_below(hw) {
                        Ok(o) if !o.deleted_segments.is_empty() => {
                            tracing::info!(%topic, partition, segments = o.deleted_segments.len(), bytes = o.deleted_bytes, "retention deleted segments");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(%topic, partition, error = %e, "retention failed"),
                    }
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "housekeeping task failed");
        }
    }
}

/// Runs a broker until `shutdown` resolves: binds `listen`, starts, and stops cleanly. The
/// `tideline-broker` binary and `tide dev` call this.
///
/// # Errors
/// [`BrokerError`] when the listener cannot be bound, the config is invalid, or logs cannot be
/// closed.
pub async fn run(
    config: BrokerConfig,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| BrokerError::Listen(format!("cannot listen on {listen}: {e}")))?;
    if let Some(addr) = config.metrics_listen {
        // Every gauge is set each second (`metrics::run_gauges`): one of a partition no longer
        // here stops being set and goes.
        let stale = Some(std::time::Duration::from_secs(10));
        tideline_common::process::serve_metrics(addr, stale).map_err(BrokerError::Listen)?;
    }
    let mut broker = Broker::start(config, listener).await?;
    tokio::select! {
        _ = shutdown => {}
        e = broker.server_failed() => {
            let _ = broker.shutdown().await;
            return Err(e);
        }
    }
    broker.controlled_shutdown(Duration::from_secs(10)).await;
    broker.shutdown().await
}
