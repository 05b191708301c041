//! Harness for the client's tests against real services: one in-process controller (a one-node
//! quorum with a short broker lease) and in-process brokers on ephemeral loopback ports, each
//! with its own data directory under one temp dir. Readiness is checked over raw gRPC, not
//! through the client under test.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tideline_broker::{Broker, BrokerConfig};
use tideline_client::{
    ClientConfig, ClientError, Cluster, Consumer, ConsumerRecord, DeliveryFuture, RecordMetadata,
};
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Broker lease of the test controller, in ms.
pub const LEASE_MS: u64 = 1500;

pub use tideline_common::testing::wait_until;

/// A controller and brokers, all in this process.
pub struct TestCluster {
    /// Holds every data directory; deleted on drop.
    root: tempfile::TempDir,
    controller_addr: String,
    controller: Option<ControllerNode>,
    brokers: BTreeMap<i32, Broker>,
}

impl TestCluster {
    /// A leading controller and brokers `ids`, each registered, unfenced and reachable.
    pub async fn start(ids: &[i32]) -> TestCluster {
        let root = tempfile::tempdir().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind controller");
        let controller_addr = listener.local_addr().unwrap().to_string();
        let mut config = NodeConfig::new(
            1,
            root.path().join("controller"),
            BTreeMap::from([(1, controller_addr.clone())]),
        );
        config.broker_lease_ms = LEASE_MS;
        let controller = ControllerNode::start(config, listener).await.expect("controller starts");
        wait_until(Duration::from_secs(20), "the single controller to lead", || async {
            (controller.raft.current_leader().await == Some(1)).then_some(())
        })
        .await;
        let mut cluster = TestCluster {
            root,
            controller_addr,
            controller: Some(controller),
            brokers: BTreeMap::new(),
        };
        for &id in ids {
            cluster.start_broker(id).await;
        }
        cluster
    }

    /// The controller's `host:port`.
    pub fn controller_addr(&self) -> &str {
        &self.controller_addr
    }

    /// A client handle on this cluster (fresh metadata cache and channels).
    pub fn client(&self) -> Cluster {
        Cluster::new(ClientConfig::new([self.controller_addr.clone()])).expect("client config")
    }

    /// The data directory of broker `id` (the same across restarts).
    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.root.path().join(format!("broker-{id}"))
    }

    /// Starts broker `id` on a new ephemeral port and waits until it serves.
    pub async fn start_broker(&mut self, id: i32) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind broker");
        self.start_broker_on(id, listener).await
    }

    /// Starts broker `id` on `listener` and waits until it is registered at that address,
    /// unfenced and reachable.
    pub async fn start_broker_on(&mut self, id: i32, listener: TcpListener) -> SocketAddr {
        let config = BrokerConfig::new(id, self.data_dir(id), vec![self.controller_addr.clone()]);
        let broker = Broker::start(config, listener).await.expect("broker starts");
        let addr = broker.local_addr();
        assert!(self.brokers.insert(id, broker).is_none(), "broker {id} was already running");
        wait_until(Duration::from_secs(30), "the broker to register", || async {
            let m = self.metadata().await?;
            let b = m
                .brokers
                .iter()
                .find(|b| b.endpoint.as_ref().is_some_and(|e| e.broker_id == id))?;
            let e = b.endpoint.as_ref()?;
            let registered_here = e.port == u32::from(addr.port()) && !b.fenced;
            (registered_here
                && BrokerServiceClient::connect(format!("http://{addr}")).await.is_ok())
            .then_some(())
        })
        .await;
        addr
    }

    /// The address broker `id` listens on.
    pub fn broker_addr(&self, id: i32) -> SocketAddr {
        self.brokers.get(&id).unwrap_or_else(|| panic!("broker {id} is not running")).local_addr()
    }

    /// Shuts broker `id` down cleanly (its logs closed).
    pub async fn stop_broker(&mut self, id: i32) {
        let broker =
            self.brokers.remove(&id).unwrap_or_else(|| panic!("broker {id} is not running"));
        broker.shutdown().await.expect("broker shuts down cleanly");
    }

    async fn controller_client(&self) -> Option<ControllerServiceClient<Channel>> {
        ControllerServiceClient::connect(format!("http://{}", self.controller_addr)).await.ok()
    }

    /// The cluster metadata, or `None` when the controller does not answer.
    pub async fn metadata(&self) -> Option<pb::GetMetadataResponse> {
        let mut c = self.controller_client().await?;
        Some(c.get_metadata(pb::GetMetadataRequest { topics: vec![] }).await.ok()?.into_inner())
    }

    /// Creates a topic over raw gRPC and waits until every partition's leader serves it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: &[(&str, &str)],
    ) -> pb::TopicMetadata {
        let configs: HashMap<String, String> =
            configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let topic = self
            .controller_client()
            .await
            .expect("controller reachable")
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor,
                configs,
            })
            .await
            .unwrap_or_else(|s| panic!("create topic {name}: {s:?}"))
            .into_inner()
            .topic
            .expect("created topic in the answer");
        for p in &topic.partitions {
            self.end_offset(name, p.partition).await;
        }
        topic
    }

    /// The high watermark of a partition, asked of its leader over raw gRPC; waits until the
    /// partition has a leader that answers.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> i64 {
        wait_until(Duration::from_secs(30), "the partition leader to serve", || async {
            let m = self.metadata().await?;
            let p = m
                .topics
                .iter()
                .find(|t| t.name == topic)?
                .partitions
                .iter()
                .find(|p| p.partition == partition)?;
            let e = m
                .brokers
                .iter()
                .find_map(|b| b.endpoint.as_ref().filter(|e| e.broker_id == p.leader))?;
            let mut b =
                BrokerServiceClient::connect(format!("http://{}:{}", e.host, e.port)).await.ok()?;
            let request = pb::ListOffsetsRequest {
                topic: topic.into(),
                partition,
                spec: pb::OffsetSpec::Latest as i32,
                timestamp_ms: 0,
            };
            Some(b.list_offsets(request).await.ok()?.into_inner().offset)
        })
        .await
    }

    /// Stops the brokers, then the controller.
    pub async fn shutdown(mut self) {
        for (_, broker) in std::mem::take(&mut self.brokers) {
            broker.shutdown().await.expect("broker shuts down cleanly");
        }
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await;
        }
    }
}

/// Awaits every delivery, in order, within `limit` overall.
pub async fn await_all(
    deliveries: Vec<DeliveryFuture>,
    limit: Duration,
) -> Vec<Result<RecordMetadata, ClientError>> {
    let count = deliveries.len();
    tokio::time::timeout(limit, async {
        let mut out = Vec::with_capacity(count);
        for d in deliveries {
            out.push(d.await);
        }
        out
    })
    .await
    .unwrap_or_else(|_| panic!("{count} deliveries did not all resolve within {limit:?}"))
}

/// Polls until at least `count` records came, failing the test after `limit`.
pub async fn poll_at_least(
    consumer: &mut Consumer,
    count: usize,
    limit: Duration,
) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + limit;
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records within {limit:?}",
            records.len()
        );
        records.extend(consumer.poll(Duration::from_millis(500)).await.expect("poll"));
    }
    records
}
