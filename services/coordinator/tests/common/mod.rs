//! Harness for the coordinator's integration tests: an in-process controller (short leases),
//! in-process storage brokers, and real `tideline-coordinator` processes on ephemeral loopback
//! ports, killed when dropped (also when a test fails, printing their logs).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::process::Command;
use std::time::Duration;

use tideline_broker::{Broker, BrokerConfig};
use tideline_common::{OFFSETS_TOPIC, shard_for};
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tideline_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub use tideline_common::testing::{ServiceProcess, wait_until};

/// Lease of brokers and coordinators in the tests, in ms.
pub const LEASE_MS: u64 = 1500;
/// Session timeout of group members in the tests, in ms.
pub const SESSION_MS: u64 = 3000;
/// Heartbeat interval of group members in the tests, in ms.
pub const HEARTBEAT_MS: u64 = 300;

/// A `tideline-coordinator` process.
pub struct CoordinatorProcess {
    /// Where it serves Prometheus metrics.
    pub metrics_addr: String,
    /// The process.
    pub process: ServiceProcess,
}

impl std::ops::Deref for CoordinatorProcess {
    type Target = ServiceProcess;

    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl std::ops::DerefMut for CoordinatorProcess {
    fn deref_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }
}

/// A controller, brokers and coordinators.
pub struct Cluster {
    /// The controller's address.
    pub controller_addr: String,
    controller: Option<ControllerNode>,
    /// In-process brokers by id.
    pub brokers: BTreeMap<i32, Broker>,
    /// Coordinator processes by id.
    pub coordinators: BTreeMap<String, CoordinatorProcess>,
    /// Data directories and logs; dropped last.
    pub root: tempfile::TempDir,
}

impl Cluster {
    /// A controller whose offsets topic has `shards` partitions, and brokers 1..=`brokers`,
    /// each registered.
    pub async fn start(brokers: i32, shards: i32) -> Cluster {
        Cluster::start_with(brokers, |c| {
            c.offsets_topic_partitions = shards;
            c.offsets_topic_replication_factor = brokers.clamp(1, 3);
        })
        .await
    }

    /// A controller configured by `configure` (after the test defaults), and in-process
    /// brokers 1..=`brokers`, each registered.
    pub async fn start_with(brokers: i32, configure: impl FnOnce(&mut NodeConfig)) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut config =
            NodeConfig::new(1, root.path().join("controller"), BTreeMap::from([(1, addr.clone())]));
        config.broker_lease_ms = LEASE_MS;
        configure(&mut config);
        let controller = ControllerNode::start(config, listener).await.unwrap();
        let mut cluster = Cluster {
            controller_addr: addr,
            controller: Some(controller),
            brokers: BTreeMap::new(),
            coordinators: BTreeMap::new(),
            root,
        };
        for id in 1..=brokers {
            cluster.start_broker(id).await;
        }
        cluster.wait_brokers(brokers as usize).await;
        cluster
    }

    /// Starts in-process broker `id` (it registers on its own).
    pub async fn start_broker(&mut self, id: i32) {
        let mut config = BrokerConfig::new(
            id,
            self.root.path().join(format!("broker-{id}")),
            vec![self.controller_addr.clone()],
        );
        config.replica_lag_time_max = Duration::from_millis(1500);
        config.produce_timeout = Duration::from_secs(10);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.brokers.insert(id, Broker::start(config, listener).await.unwrap());
    }

    /// Waits until `want` brokers are registered and unfenced.
    pub async fn wait_brokers(&self, want: usize) {
        let cluster = self;
        wait_until(Duration::from_secs(20), "brokers registered", || {
            let mut c = cluster.controller();
            async move {
                let m = c.get_metadata(pb::GetMetadataRequest::default()).await.ok()?.into_inner();
                (m.brokers.iter().filter(|b| !b.fenced).count() == want).then_some(())
            }
        })
        .await;
    }

    /// A Rust client of the cluster.
    pub fn client(&self) -> tideline_client::Cluster {
        let config = tideline_client::ClientConfig::new([self.controller_addr.clone()]);
        tideline_client::Cluster::new(config).unwrap()
    }

    /// A client of the controller.
    pub fn controller(&self) -> ControllerServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.controller_addr))
            .unwrap()
            .connect_lazy();
        ControllerServiceClient::new(channel)
    }

    /// The log of coordinator `id`.
    pub fn coordinator_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.root.path().join(format!("coordinator-{id}.log")))
            .unwrap_or_default()
    }

    /// Starts coordinator process `id` (it registers on its own).
    pub fn start_coordinator(&mut self, id: &str) {
        let log = self.root.path().join(format!("coordinator-{id}.log"));
        // The metrics port must be given (the exporter cannot report one it picked): one free
        // now, tried again should another process take it before the coordinator binds it.
        for _ in 0..5 {
            let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string();
            let out = File::options().create(true).append(true).open(&log).unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_tideline-coordinator"))
                .args(["--metrics-listen", &metrics_addr, "--lag-interval-ms", "300"])
                .args(["--coordinator-id", id, "--controllers", &self.controller_addr])
                .args(["--listen", "127.0.0.1:0"])
                .args(["--group-session-timeout-ms", &SESSION_MS.to_string()])
                .args(["--group-heartbeat-interval-ms", &HEARTBEAT_MS.to_string()])
                .args(["--housekeeping-interval-ms", "200"])
                .env("RUST_LOG", "info")
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            let taken = child.try_wait().unwrap().is_some()
                && std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("cannot serve metrics");
            if taken {
                continue;
            }
            self.coordinators.insert(
                id.to_string(),
                CoordinatorProcess {
                    metrics_addr,
                    process: ServiceProcess::new(format!("coordinator {id}"), child, log),
                },
            );
            return;
        }
        panic!("no free metrics port for coordinator {id} in 5 tries");
    }

    /// The metadata now.
    pub async fn metadata(&self) -> pb::GetMetadataResponse {
        self.controller()
            .get_metadata(pb::GetMetadataRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    /// The owner (id, address) of `group`'s shard per the controller, if any.
    pub async fn owner_of(&self, group: &str) -> Option<(String, String)> {
        let m = self
            .controller()
            .get_metadata(pb::GetMetadataRequest::default())
            .await
            .ok()?
            .into_inner();
        if m.shards.is_empty() {
            return None;
        }
        let shard = &m.shards[shard_for(group, m.shards.len() as i32) as usize];
        if shard.coordinator_id.is_empty() || shard.releasing {
            return None;
        }
        let c = m.coordinators.iter().find(|c| {
            c.endpoint.as_ref().is_some_and(|e| e.coordinator_id == shard.coordinator_id)
        })?;
        let e = c.endpoint.as_ref()?;
        Some((e.coordinator_id.clone(), format!("{}:{}", e.host, e.port)))
    }

    /// Waits until every shard has a settled owner, spread over `coordinators` coordinators.
    pub async fn wait_shards_settled(&self, coordinators: usize) {
        wait_until(Duration::from_secs(30), "shards settled", || async {
            let m = self
                .controller()
                .get_metadata(pb::GetMetadataRequest::default())
                .await
                .ok()?
                .into_inner();
            let owners: std::collections::BTreeSet<&str> =
                m.shards.iter().map(|s| s.coordinator_id.as_str()).collect();
            let settled = !m.shards.is_empty()
                && m.shards.iter().all(|s| !s.coordinator_id.is_empty() && !s.releasing)
                && owners.len() == coordinators
                && m.coordinators.len() == coordinators;
            settled.then_some(())
        })
        .await;
    }

    /// A client of the coordinator of `group`, once one serves it (answers FetchOffsets).
    pub async fn coordinator_of(&self, group: &str) -> (String, CoordinatorServiceClient<Channel>) {
        wait_until(Duration::from_secs(30), &format!("a coordinator serving {group}"), || async {
            let (id, addr) = self.owner_of(group).await?;
            let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
            let mut client = CoordinatorServiceClient::new(channel);
            let probe = pb::FetchOffsetsRequest { group_id: group.into(), partitions: vec![] };
            client.fetch_offsets(probe).await.ok()?;
            Some((id, client))
        })
        .await
    }

    /// Creates topic `name`.
    pub async fn create_topic(&self, name: &str, partitions: i32, rf: i32) {
        self.controller()
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor: rf,
                configs: Default::default(),
            })
            .await
            .unwrap();
    }

    /// The offsets topic as the controller describes it.
    pub async fn offsets_topic(&self) -> pb::TopicMetadata {
        self.controller()
            .describe_topic(pb::DescribeTopicRequest { name: OFFSETS_TOPIC.into() })
            .await
            .unwrap()
            .into_inner()
            .topic
            .unwrap()
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        self.coordinators.clear();
        for (_, b) in std::mem::take(&mut self.brokers) {
            let _ = b.shutdown().await;
        }
        if let Some(c) = self.controller.take() {
            c.shutdown().await;
        }
    }
}
