//! Harness for the broker's integration tests: in-process controllers (a one-node quorum, or
//! several, with a short broker lease) and real `tideline-broker` processes on ephemeral
//! loopback ports, killed when dropped, also when a test fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tideline_common::error_code_of;
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_log::{Compression, RecordBatchBuilder};
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Broker lease used by the tests, in ms.
pub const LEASE_MS: u64 = 1500;

pub use tideline_common::testing::wait_until;

/// A `tideline-broker` process.
pub type BrokerProcess = tideline_common::testing::ServiceProcess;

/// A controller quorum plus brokers.
pub struct Cluster {
    /// The first controller's address (the only one, in a one-controller cluster).
    pub controller_addr: String,
    /// Every controller's address; controller `id` is at index `id - 1`.
    pub controller_addrs: Vec<String>,
    /// The controllers, at index `id - 1`; `None` once stopped.
    controllers: Vec<Option<ControllerNode>>,
    /// Broker processes by id.
    pub brokers: BTreeMap<i32, BrokerProcess>,
    /// Each broker's last registered address.
    addrs: std::sync::Mutex<BTreeMap<i32, String>>,
    /// Extra command-line arguments for every broker started.
    broker_args: Vec<String>,
    /// Holds every data directory and broker log. Declared last, so it is dropped last: the
    /// brokers are killed first and show their logs when a test fails.
    pub root: tempfile::TempDir,
}

impl Cluster {
    /// A controller and brokers `ids`, each registered.
    pub async fn start(ids: &[i32]) -> Cluster {
        Cluster::start_quorum(1, ids).await
    }

    /// A quorum of `controllers` controllers (node ids 1..=controllers, each with its own data
    /// directory) and brokers `ids` that know every controller, each registered.
    pub async fn start_quorum(controllers: usize, ids: &[i32]) -> Cluster {
        Cluster::start_with_broker_args(controllers, ids, &[]).await
    }

    /// A quorum of `controllers` controllers and brokers `ids`, every broker started with
    /// `broker_args` besides the harness's own arguments (which they must not repeat).
    pub async fn start_with_broker_args(
        controllers: usize,
        ids: &[i32],
        broker_args: &[&str],
    ) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        // Every listener is bound before any node starts: each node's peer list holds them all.
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        for id in (1..).take(controllers) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            peers.insert(id, listener.local_addr().unwrap().to_string());
            listeners.push(listener);
        }
        let mut nodes = Vec::new();
        for (id, listener) in (1..).zip(listeners) {
            let data_dir = root.path().join(format!("controller-{id}"));
            let mut config = NodeConfig::new(id, data_dir, peers.clone());
            config.broker_lease_ms = LEASE_MS;
            nodes.push(Some(ControllerNode::start(config, listener).await.unwrap()));
        }
        let controller_addrs: Vec<String> = peers.into_values().collect();
        let mut cluster = Cluster {
            root,
            controller_addr: controller_addrs[0].clone(),
            controller_addrs,
            controllers: nodes,
            brokers: BTreeMap::new(),
            addrs: Default::default(),
            broker_args: broker_args.iter().map(|a| a.to_string()).collect(),
        };
        for &id in ids {
            cluster.start_broker(id).await;
        }
        cluster
    }

    /// The data directory of broker `id`.
    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.root.path().join(format!("broker-{id}"))
    }

    /// Starts (or restarts) broker `id` and waits until it is registered and unfenced.
    pub async fn start_broker(&mut self, id: i32) {
        let log = self.root.path().join(format!("broker-{id}.log"));
        let out = File::options().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tideline-broker"))
            .args(["--broker-id", &id.to_string()])
            .args(["--controllers", &self.controller_addrs.join(",")])
            .args(["--listen", "127.0.0.1:0", "--log-segment-bytes", "65536"])
            .args(["--replica-lag-time-max-ms", "1500", "--produce-timeout-ms", "10000"])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.broker_args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.brokers.insert(id, BrokerProcess::new(format!("broker {id}"), child, log));
        self.wait_broker_live(id).await;
    }

    /// Waits until broker `id` is registered, unfenced and reachable at its advertised address.
    pub async fn wait_broker_live(&self, id: i32) {
        wait_until(Duration::from_secs(30), "the broker to register", || async {
            let m = self.metadata().await?;
            let b = m.brokers.iter().find(|b| b.endpoint.as_ref().unwrap().broker_id == id)?;
            let addr = self.broker_addr_in(&m, id)?;
            (!b.fenced && BrokerServiceClient::connect(format!("http://{addr}")).await.is_ok())
                .then_some(())
        })
        .await;
    }

    fn broker_addr_in(&self, m: &pb::GetMetadataResponse, id: i32) -> Option<String> {
        let e = m.brokers.iter().find_map(|b| b.endpoint.as_ref().filter(|e| e.broker_id == id))?;
        let addr = format!("{}:{}", e.host, e.port);
        self.addrs.lock().unwrap().insert(id, addr.clone());
        Some(addr)
    }

    /// Broker `id`'s last registered address.
    pub fn addr_of(&self, id: i32) -> String {
        self.addrs.lock().unwrap()[&id].clone()
    }

    /// A client of the Raft leader among the controllers (it takes writes).
    pub async fn controller(&self) -> ControllerServiceClient<Channel> {
        let (_, addr) = self.controller_leader().await;
        ControllerServiceClient::connect(format!("http://{addr}")).await.unwrap()
    }

    /// The Raft leader every running controller agrees on, once there is one and it is running:
    /// its node id and address.
    pub async fn controller_leader(&self) -> (u64, String) {
        wait_until(Duration::from_secs(30), "a controller leader all agree on", || async {
            let mut agreed = None;
            for node in self.controllers.iter().flatten() {
                let leader = node.raft.current_leader().await?;
                if agreed.is_some_and(|l| l != leader) {
                    return None;
                }
                agreed = Some(leader);
            }
            let leader = agreed?;
            let index = usize::try_from(leader).ok()?.checked_sub(1)?;
            self.controllers.get(index)?.as_ref()?;
            Some((leader, self.controller_addrs[index].clone()))
        })
        .await
    }

    /// Addresses of the running controllers, those that believe they lead first.
    async fn running_controller_addrs(&self) -> Vec<String> {
        let mut addrs = Vec::new();
        for (id, (node, addr)) in (1..).zip(self.controllers.iter().zip(&self.controller_addrs)) {
            let Some(node) = node else { continue };
            if node.raft.current_leader().await == Some(id) {
                addrs.insert(0, addr.clone());
            } else {
                addrs.push(addr.clone());
            }
        }
        addrs
    }

    /// The cluster metadata from the controller that leads, else from any running one (a
    /// follower's may lag), or `None` when no controller answers.
    pub async fn metadata(&self) -> Option<pb::GetMetadataResponse> {
        for addr in self.running_controller_addrs().await {
            let Ok(mut c) = ControllerServiceClient::connect(format!("http://{addr}")).await else {
                continue;
            };
            if let Ok(m) = c.get_metadata(pb::GetMetadataRequest { topics: vec![] }).await {
                return Some(m.into_inner());
            }
        }
        None
    }

    /// A client of broker `id`, at its currently registered address (the last known one when
    /// the controller is gone).
    pub async fn broker(&self, id: i32) -> BrokerServiceClient<Channel> {
        self.try_broker(id).await.expect("connect to the broker")
    }

    /// A client of broker `id`, or `None` when it cannot be reached (e.g. it was killed).
    pub async fn try_broker(&self, id: i32) -> Option<BrokerServiceClient<Channel>> {
        let addr = match self.metadata().await {
            Some(m) => self.broker_addr_in(&m, id)?,
            None => self.addr_of(id),
        };
        Some(
            BrokerServiceClient::connect(format!("http://{addr}"))
                .await
                .ok()?
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
    }

    /// Creates a topic and waits until every partition's leader accepts requests.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        rf: i32,
        configs: &[(&str, &str)],
    ) -> pb::TopicMetadata {
        let topic = self
            .controller()
            .await
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor: rf,
                configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            })
            .await
            .unwrap()
            .into_inner()
            .topic
            .unwrap();
        for p in &topic.partitions {
            self.wait_leader_ready(name, p.partition).await;
        }
        topic
    }

    /// A partition as the controller records it.
    pub async fn partition(&self, topic: &str, partition: i32) -> Option<pb::PartitionMetadata> {
        let m = self.metadata().await?;
        m.topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            .cloned()
    }

    /// Waits until the partition's ISR (sorted) is `isr`.
    pub async fn wait_isr(
        &self,
        topic: &str,
        partition: i32,
        isr: &[i32],
    ) -> pb::PartitionMetadata {
        let what = format!("the ISR of {topic}-{partition} to be {isr:?}");
        wait_until(Duration::from_secs(30), &what, || async {
            let p = self.partition(topic, partition).await?;
            let mut got = p.isr.clone();
            got.sort_unstable();
            (got == isr).then_some(p)
        })
        .await
    }

    /// The bytes of every segment file of a partition replica on broker `id`, concatenated in
    /// offset order.
    pub fn segment_bytes(&self, id: i32, topic: &str, partition: i32) -> Vec<u8> {
        let dir = self.data_dir(id).join(format!("{topic}-{partition}"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "log"));
        files.sort();
        files.iter().flat_map(|f| std::fs::read(f).unwrap_or_default()).collect()
    }

    /// The leader of a partition per the controller, -1 for none.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        let m = self.metadata().await.expect("metadata");
        m.topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            .map_or(-1, |p| p.leader)
    }

    /// Waits until the partition's leader answers ListOffsets.
    pub async fn wait_leader_ready(&self, topic: &str, partition: i32) -> i32 {
        wait_until(Duration::from_secs(30), "the partition leader to serve", || async {
            let leader = self.leader_of(topic, partition).await;
            if leader < 0 {
                return None;
            }
            let mut b = self.broker(leader).await;
            b.list_offsets(pb::ListOffsetsRequest {
                topic: topic.into(),
                partition,
                spec: pb::OffsetSpec::Latest as i32,
                timestamp_ms: 0,
            })
            .await
            .ok()
            .map(|_| leader)
        })
        .await
    }

    /// Stops the controller (every controller), leaving the brokers without anyone to renew
    /// their leases.
    pub async fn stop_controller(&mut self) {
        for c in self.controllers.iter_mut().filter_map(Option::take) {
            c.shutdown().await;
        }
    }

    /// Stops controller `id` alone (`ControllerNode::shutdown`); the others go on.
    pub async fn stop_controller_node(&mut self, id: u64) {
        let index = usize::try_from(id).unwrap() - 1;
        if let Some(c) = self.controllers[index].take() {
            c.shutdown().await;
        }
    }

    /// The health status broker `id` reports for `tideline.v1.BrokerService`.
    pub async fn broker_health(
        &self,
        id: i32,
    ) -> tonic_health::pb::health_check_response::ServingStatus {
        let addr = self.addr_of(id);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "tideline.v1.BrokerService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    }

    /// Stops the controllers (brokers are killed on drop).
    pub async fn stop(mut self) {
        self.brokers.clear();
        self.stop_controller().await;
    }
}

/// A plain record.
pub fn record(key: &str, value: &str, headers: &[(&str, Option<&str>)], ts: i64) -> pb::Record {
    pb::Record {
        key: Some(key.as_bytes().to_vec().into()),
        value: Some(value.as_bytes().to_vec().into()),
        headers: headers
            .iter()
            .map(|(k, v)| pb::RecordHeader {
                key: k.to_string(),
                value: v.map(|v| v.as_bytes().to_vec().into()),
            })
            .collect(),
        timestamp_ms: ts,
        offset: 0,
    }
}

/// A produce request of plain records.
pub fn produce_records(
    topic: &str,
    partition: i32,
    records: Vec<pb::Record>,
) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition,
        acks: pb::Acks::All as i32,
        timeout_ms: 0,
        current_leader_epoch: None,
        payload: Some(pb::produce_request::Payload::Records(pb::RecordList {
            records,
            compression: String::new(),
        })),
    }
}

/// A produce request of raw batch bytes.
pub fn produce_bytes(topic: &str, partition: i32, bytes: Vec<u8>) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition,
        acks: pb::Acks::Leader as i32,
        timeout_ms: 0,
        current_leader_epoch: None,
        payload: Some(pb::produce_request::Payload::RecordBatches(bytes.into())),
    }
}

/// A fetch request returning decoded records.
pub fn fetch(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> pb::FetchRequest {
    pb::FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms,
        min_bytes: 1,
        decode_records: true,
        replica_id: None,
        current_leader_epoch: None,
    }
}

/// Reads every record of a partition from `from` up to the high watermark.
pub async fn read_all(
    b: &mut BrokerServiceClient<Channel>,
    topic: &str,
    partition: i32,
    from: i64,
) -> Vec<pb::Record> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = b.fetch(fetch(topic, partition, offset, 0)).await.unwrap().into_inner();
        if r.records.is_empty() {
            assert!(offset >= r.high_watermark, "no records below the high watermark");
            return out;
        }
        offset = r.next_offset;
        out.extend(r.records);
    }
}

/// Sends `request` to the leader of partition 0 of `topic`, retrying on retriable errors
/// (refreshing the leader) for up to 30 s. Ok(base offset) when acknowledged.
pub async fn produce_request_retrying(
    cluster: &Cluster,
    topic: &str,
    request: pb::ProduceRequest,
) -> Result<i64, tonic::Status> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = cluster.leader_of(topic, 0).await;
        let client = if leader < 0 { None } else { cluster.try_broker(leader).await };
        let attempt = match client {
            None => Err(tonic::Status::unavailable("no leader reachable")),
            Some(mut b) => b.produce(request.clone()).await.map(|r| r.into_inner().base_offset),
        };
        match attempt {
            Ok(offset) => return Ok(offset),
            Err(s)
                if std::time::Instant::now() < deadline
                    && error_code_of(&s).is_none_or(tideline_common::is_retriable) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// Produces one record `value` with `acks`, retrying (see [`produce_request_retrying`]).
pub async fn produce_retrying(
    cluster: &Cluster,
    topic: &str,
    value: &str,
    acks: pb::Acks,
) -> Result<i64, tonic::Status> {
    let mut request = produce_records(topic, 0, vec![record("k", value, &[], 0)]);
    request.acks = acks as i32;
    produce_request_retrying(cluster, topic, request).await
}

/// An idempotent producer for the tests: a producer id from the controller and one sequence
/// number per record (each record its own batch), reused on retries.
pub struct Idempotent {
    /// The producer id.
    pub id: i64,
    /// The next sequence number.
    pub next: i32,
}

impl Idempotent {
    pub async fn new(cluster: &Cluster) -> Idempotent {
        let id = cluster
            .controller()
            .await
            .init_producer_id(pb::InitProducerIdRequest {})
            .await
            .unwrap()
            .into_inner()
            .producer_id;
        Idempotent { id, next: 0 }
    }

    /// The batch for the next record: `value` at the next sequence.
    pub fn batch(&mut self, value: &str) -> Vec<u8> {
        let mut b = RecordBatchBuilder::new(Compression::None).producer(self.id, 0, self.next);
        b.append(1_700_000_000_000, Some(b"k"), Some(value.as_bytes()), &[]);
        self.next += 1;
        b.build().to_vec()
    }
}

/// Produces `batch` with acks=all, retrying on retriable errors for up to 30 s.
pub async fn produce_batch_retrying(
    cluster: &Cluster,
    topic: &str,
    batch: Vec<u8>,
) -> Result<i64, tonic::Status> {
    let mut request = produce_bytes(topic, 0, batch);
    request.acks = pb::Acks::All as i32;
    produce_request_retrying(cluster, topic, request).await
}

/// Values of every record of partition 0, read from its current leader.
pub async fn values(cluster: &Cluster, topic: &str) -> Vec<String> {
    let leader = cluster.wait_leader_ready(topic, 0).await;
    let mut b = cluster.broker(leader).await;
    read_all(&mut b, topic, 0, 0)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect()
}
