//! [`ControllerApi`]: the `ControllerService` gRPC API. Writes (topics, broker registration,
//! fencing) go through Raft on the leader; a follower answers `NOT_CONTROLLER` with the
//! leader's id and address so the client retries there. Reads answer from the local state
//! machine on any controller. Broker leases are kept by the leader, in memory: a new leader
//! grants every live broker a fresh lease, and a lease that lapses fences the broker through
//! Raft. Partition leaders change their ISR with AlterPartition, and a stopping broker hands
//! its leaderships over with ControlledShutdown; both are checked in the state machine
//! ([`crate::metadata`]), which also elects leaders.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tideline_common::{ErrorCode, OFFSETS_TOPIC, TopicName, status, with_leader};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_server::ControllerService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::metadata::{
    BrokerRecord, CoordinatorRecord, MetadataCommand, MetadataError, MetadataResponse,
    MetadataState, PartitionRecord, ShardOwnership, TopicRecord,
};
use crate::placement::{Candidate, PlacementError, place};
use crate::store::StateMachineStore;
use crate::topic_config;
use crate::types::TypeConfig;

/// How long AddController waits for the new controller to catch up as a learner (less than
/// the client's default request timeout, 30 s, so the answer reaches `tide`).
const ADD_CONTROLLER_TIMEOUT: Duration = Duration::from_secs(20);

/// Most partitions one request may create.
pub const MAX_PARTITIONS: i32 = 10_000;

/// How the controller creates `__consumer_offsets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetsTopic {
    /// Partitions (shards).
    pub partitions: i32,
    /// `segment.bytes`.
    pub segment_bytes: u64,
    /// Replication factor (Kafka's `offsets.topic.replication.factor`): the topic is created
    /// once that many brokers are live.
    pub replication_factor: i32,
}

/// A broker's lease as the leader tracks it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    broker_epoch: i64,
    expires: Instant,
}

/// The controller's client-facing gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct ControllerApi {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    raft: Raft<TypeConfig>,
    state: StateMachineStore,
    peers: BTreeMap<u64, String>,
    lease: Duration,
    /// Leases of live brokers; only meaningful on the leader. Never held across an await.
    leases: Mutex<HashMap<i32, Lease>>,
    /// Leases of live coordinators (epoch, expiry), as for brokers.
    coordinator_leases: Mutex<HashMap<String, (i64, Instant)>>,
    /// How `__consumer_offsets` is created.
    offsets: OffsetsTopic,
    /// Turns true when the node shuts down: ends watch streams and the lease checker.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for ControllerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerApi")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn metadata_status(e: &MetadataError) -> Status {
    let code = match e {
        MetadataError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        MetadataError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        MetadataError::InvalidAssignment { .. } => ErrorCode::InvalidReplicationFactor,
        MetadataError::PartitionCountChanged { .. } => ErrorCode::InvalidPartitions,
        MetadataError::InternalTopic(_) => ErrorCode::InvalidTopic,
        MetadataError::UnknownCoordinator { .. } => ErrorCode::BrokerFenced,
        MetadataError::UnknownBroker(_) | MetadataError::StaleBrokerEpoch { .. } => {
            ErrorCode::StaleBrokerEpoch
        }
        MetadataError::BrokerFenced { .. } => ErrorCode::BrokerFenced,
        MetadataError::UnknownPartition { .. } => ErrorCode::UnknownTopicOrPartition,
        MetadataError::NotPartitionLeader { .. }
        | MetadataError::StaleLeaderEpoch { .. }
        | MetadataError::StalePartitionEpoch { .. } => ErrorCode::FencedLeaderEpoch,
        MetadataError::InvalidIsr { .. } => ErrorCode::InvalidRequest,
        MetadataError::InvalidReassignment { .. } => ErrorCode::InvalidReplicaAssignment,
        MetadataError::ReassignmentInProgress { .. } => ErrorCode::ReassignmentInProgress,
    };
    status(code, e.to_string())
}

fn placement_status(e: &PlacementError) -> Status {
    let code = match e {
        PlacementError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
        PlacementError::InvalidReplicationFactor(_) | PlacementError::NotEnoughBrokers { .. } => {
            ErrorCode::InvalidReplicationFactor
        }
    };
    status(code, e.to_string())
}

/// A stable per-topic rotation, so topics do not all start on the same broker.
fn rotation(name: &str) -> usize {
    name.bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        as usize
}

/// 16 random bytes for a topic id (std's randomly keyed hasher, seeded per process and call).
fn random_id(name: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    id
}

/// Checks that a controller of node id `id` answers at `address` (within 5 s).
async fn probe_controller(id: u64, address: &str) -> Result<(), Status> {
    let ask = async {
        let mut c =
            tideline_proto::v1::controller_service_client::ControllerServiceClient::connect(
                format!("http://{address}"),
            )
            .await
            .map_err(|e| e.to_string())?;
        c.get_controller_status(pb::GetControllerStatusRequest {})
            .await
            .map(|r| r.into_inner().node_id)
            .map_err(|s| s.message().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(node)) if i64::from(node) == id as i64 => Ok(()),
        Ok(Ok(node)) => Err(status(
            ErrorCode::InvalidRequest,
            format!("{address} is controller {node}, not controller {id}"),
        )),
        Ok(Err(e)) => Err(status(
            ErrorCode::InvalidRequest,
            format!("no controller answers at {address} (start it with --join first): {e}"),
        )),
        Err(_) => Err(status(
            ErrorCode::InvalidRequest,
            format!("no controller answers at {address} within 5 s (start it with --join first)"),
        )),
    }
}

/// The proto form of partition `index`.
pub fn partition_pb(index: i32, p: &PartitionRecord) -> pb::PartitionMetadata {
    pb::PartitionMetadata {
        partition: index,
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        target_replicas: p.target.clone(),
        adding_replicas: p.adding.clone(),
        removing_replicas: p.removing(),
        reassignment_throttle: p.throttle,
    }
}

/// The proto form of a topic.
pub fn topic_pb(t: &TopicRecord) -> pb::TopicMetadata {
    pb::TopicMetadata {
        name: t.name.clone(),
        topic_id: t.topic_id.to_vec().into(),
        replication_factor: t.replication_factor,
        configs: t.configs.clone().into_iter().collect(),
        partitions: t
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| partition_pb(i as i32, p))
            .collect(),
    }
}

/// The proto form of a broker.
pub fn broker_pb(b: &BrokerRecord) -> pb::BrokerMetadata {
    pb::BrokerMetadata {
        endpoint: Some(pb::BrokerEndpoint {
            broker_id: b.broker_id,
            host: b.host.clone(),
            port: b.port,
            data_port: b.data_port,
            rack: b.rack.clone(),
        }),
        broker_epoch: b.broker_epoch,
        fenced: b.fenced,
        shutting_down: b.shutting_down,
    }
}

/// The proto form of a coordinator.
pub fn coordinator_pb(c: &CoordinatorRecord) -> pb::CoordinatorMetadata {
    pb::CoordinatorMetadata {
        endpoint: Some(pb::CoordinatorEndpoint {
            coordinator_id: c.coordinator_id.clone(),
            host: c.host.clone(),
            port: c.port,
        }),
        coordinator_epoch: c.coordinator_epoch,
    }
}

/// The proto form of shard `index`'s ownership.
pub fn shard_pb(index: usize, s: &ShardOwnership) -> pb::ShardAssignment {
    pb::ShardAssignment {
        shard: index as i32,
        coordinator_id: s.owner.clone(),
        shard_epoch: s.epoch,
        releasing: !s.moving_to.is_empty(),
    }
}

/// The first event of a watch: everything.
pub fn image(m: &MetadataState) -> pb::MetadataEvent {
    pb::MetadataEvent {
        version: m.version,
        event: Some(pb::metadata_event::Event::Image(pb::MetadataImage {
            brokers: m.brokers.values().map(broker_pb).collect(),
            topics: m.topics.values().map(topic_pb).collect(),
        })),
    }
}

/// What changed from `old` to `new`.
pub fn delta(old: &MetadataState, new: &MetadataState) -> pb::MetadataEvent {
    pb::MetadataEvent {
        version: new.version,
        event: Some(pb::metadata_event::Event::Delta(pb::MetadataDelta {
            brokers: new
                .brokers
                .iter()
                .filter(|(id, b)| old.brokers.get(id) != Some(b))
                .map(|(_, b)| broker_pb(b))
                .collect(),
            topics: new
                .topics
                .iter()
                .filter(|(name, t)| old.topics.get(*name) != Some(t))
                .map(|(_, t)| topic_pb(t))
                .collect(),
            deleted_topics: old
                .topics
                .keys()
                .filter(|n| !new.topics.contains_key(*n))
                .cloned()
                .collect(),
        })),
    }
}

impl ControllerApi {
    /// The API of controller `node_id`, whose peers (itself included) are `peers`; `shutdown`
    /// turning true ends its watch streams and lease checker.
    pub fn new(
        node_id: u64,
        raft: Raft<TypeConfig>,
        state: StateMachineStore,
        peers: BTreeMap<u64, String>,
        lease: Duration,
        offsets: OffsetsTopic,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        ControllerApi {
            inner: Arc::new(Inner {
                node_id,
                raft,
                state,
                peers,
                lease,
                leases: Mutex::new(HashMap::new()),
                coordinator_leases: Mutex::new(HashMap::new()),
                offsets,
                shutdown,
            }),
        }
    }

    fn not_controller(&self, leader_id: Option<u64>, leader: Option<BasicNode>) -> Status {
        let message = match leader_id {
            Some(id) => {
                format!("controller {} is not the leader; controller {id} is", self.inner.node_id)
            }
            None => format!(
                "controller {} is not the leader and no leader is known",
                self.inner.node_id
            ),
        };
        let s = status(ErrorCode::NotController, message);
        match (
            leader_id,
            leader.map(|n| n.addr).or_else(|| leader_id.and_then(|id| self.address_of(id))),
        ) {
            (Some(id), Some(addr)) => with_leader(s, id as i64, &addr),
            _ => s,
        }
    }

    /// The address of controller `id`: from the membership, else the configured peers.
    fn address_of(&self, id: u64) -> Option<String> {
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let known = membership.nodes().find(|(n, _)| **n == id).map(|(_, node)| node.addr.clone());
        known.or_else(|| self.inner.peers.get(&id).cloned())
    }

    /// The voters of the membership this node knows, with their addresses.
    fn voters(&self) -> Vec<pb::ControllerMember> {
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, node)| pb::ControllerMember {
                node_id: *id as i32,
                address: node.addr.clone(),
            })
            .collect()
    }

    /// The status of a failed membership change.
    fn membership_error(&self, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                self.not_controller(f.leader_id, f.leader_node)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                status(ErrorCode::InvalidRequest, format!("membership change refused: {e}"))
            }
            e => status(ErrorCode::NotController, format!("membership change failed: {e}")),
        }
    }

    /// Proposes `command` through Raft and waits until it is applied here.
    async fn write(&self, command: MetadataCommand) -> Result<MetadataResponse, Status> {
        match self.inner.raft.client_write(command).await {
            Ok(answer) => match answer.data {
                MetadataResponse::Refused(e) => Err(metadata_status(&e)),
                other => Ok(other),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_controller(f.leader_id, f.leader_node))
            }
            Err(e) => Err(status(ErrorCode::NotController, format!("metadata write failed: {e}"))),
        }
    }

    /// Confirms with a quorum that this node still leads and has applied everything committed
    /// (a deposed leader that has not noticed yet must not renew leases).
    async fn require_leader(&self) -> Result<(), Status> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(self.not_controller(f.leader_id, f.leader_node))
            }
            Err(e) => {
                Err(status(ErrorCode::NotController, format!("cannot confirm leadership: {e}")))
            }
        }
    }

    fn live_brokers(m: &MetadataState) -> Vec<Candidate> {
        m.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| Candidate { id: b.broker_id, rack: b.rack.clone() })
            .collect()
    }

    async fn topic(&self, name: &str) -> Result<pb::TopicMetadata, Status> {
        let m = self.inner.state.metadata().await;
        m.topics.get(name).map(topic_pb).ok_or_else(|| {
            status(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {name}"))
        })
    }

    /// Creates `__consumer_offsets` unless it exists: the configured number of partitions,
    /// replication factor min(3, live brokers), compacted.
    async fn ensure_offsets_topic(&self) -> Result<(), Status> {
        let m = self.inner.state.metadata().await;
        if m.topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let live = Self::live_brokers(&m);
        let replication_factor = self.inner.offsets.replication_factor;
        if live.len() < replication_factor as usize {
            return Err(status(
                ErrorCode::CoordinatorNotAvailable,
                format!(
                    "{OFFSETS_TOPIC} needs {replication_factor} live brokers \
                     (--offsets-topic-replication-factor), {} are live; retry",
                    live.len()
                ),
            ));
        }
        let assignments = place(
            &live,
            self.inner.offsets.partitions,
            replication_factor,
            0,
            rotation(OFFSETS_TOPIC),
        )
        .map_err(|e| placement_status(&e))?;
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("segment.bytes".to_string(), self.inner.offsets.segment_bytes.to_string()),
            // Group records of large groups exceed the default 1 MiB.
            ("max.message.bytes".to_string(), (8u64 << 20).to_string()),
            ("min.insync.replicas".to_string(), replication_factor.min(2).to_string()),
        ]);
        let created = self
            .write(MetadataCommand::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                topic_id: random_id(OFFSETS_TOPIC),
                replication_factor,
                configs,
                assignments,
            })
            .await;
        match created {
            Ok(_) => {
                tracing::info!(
                    partitions = self.inner.offsets.partitions,
                    replication_factor,
                    "created {OFFSETS_TOPIC}"
                );
                Ok(())
            }
            // A concurrent registration created it first.
            Err(s) if tideline_common::error_code_of(&s) == Some(ErrorCode::TopicAlreadyExists) => {
                Ok(())
            }
            Err(s) => Err(s),
        }
    }

    /// Fences brokers whose lease lapsed, every quarter lease, until shutdown. Runs on every
    /// controller and acts only while it leads.
    pub async fn run_lease_checker(self) {
        let mut stop = self.inner.shutdown.clone();
        let period = self.inner.lease / 4;
        let mut led_term = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => return,
            }
            let term = self.inner.raft.metrics().borrow().current_term;
            let leading = self.inner.raft.current_leader().await == Some(self.inner.node_id);
            if !leading || led_term != Some(term) {
                // Leases start afresh when this node becomes the leader (also when it lost and
                // regained the lead between two checks: the leases it kept may be stale).
                self.inner.leases.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.inner.coordinator_leases.lock().unwrap_or_else(|e| e.into_inner()).clear();
                led_term = leading.then_some(term);
                continue;
            }
            let m = self.inner.state.metadata().await;
            let now = Instant::now();
            let lapsed: Vec<(i32, i64)> = {
                let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
                m.brokers
                    .values()
                    .filter(|b| !b.fenced)
                    .filter_map(|b| {
                        let lease = leases.entry(b.broker_id).or_insert(Lease {
                            broker_epoch: b.broker_epoch,
                            expires: now + self.inner.lease,
                        });
                        if lease.broker_epoch != b.broker_epoch {
                            *lease = Lease {
                                broker_epoch: b.broker_epoch,
                                expires: now + self.inner.lease,
                            };
                        }
                        (now > lease.expires).then_some((b.broker_id, b.broker_epoch))
                    })
                    .collect()
            };
            let lapsed_coordinators: Vec<(String, i64)> = {
                let mut leases =
                    self.inner.coordinator_leases.lock().unwrap_or_else(|e| e.into_inner());
                leases.retain(|id, _| m.coordinators.contains_key(id));
                m.coordinators
                    .values()
                    .filter_map(|c| {
                        let lease = leases
                            .entry(c.coordinator_id.clone())
                            .or_insert((c.coordinator_epoch, now + self.inner.lease));
                        if lease.0 != c.coordinator_epoch {
                            *lease = (c.coordinator_epoch, now + self.inner.lease);
                        }
                        (now > lease.1).then(|| (c.coordinator_id.clone(), c.coordinator_epoch))
                    })
                    .collect()
            };
            for (coordinator_id, coordinator_epoch) in lapsed_coordinators {
                tracing::warn!(
                    coordinator_id,
                    coordinator_epoch,
                    "coordinator lease lapsed, moving its shards"
                );
                let remove = self.write(MetadataCommand::RemoveCoordinator {
                    coordinator_id,
                    coordinator_epoch,
                });
                tokio::select! {
                    result = remove => if let Err(e) = result {
                        tracing::warn!(error = %e, "removing a coordinator failed");
                    },
                    _ = stop.changed() => return,
                }
            }
            for (broker_id, broker_epoch) in lapsed {
                tracing::warn!(broker_id, broker_epoch, "broker lease lapsed, fencing");
                // Without a quorum the write never commits: do not let it hold up shutdown.
                let fence = self.write(MetadataCommand::FenceBroker { broker_id, broker_epoch });
                tokio::select! {
                    result = fence => if let Err(e) = result {
                        tracing::warn!(broker_id, error = %e, "fencing failed");
                    },
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::MetadataEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ControllerService for ControllerApi {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let req = request.into_inner();
        let name =
            TopicName::new(req.name).map_err(|e| status(ErrorCode::InvalidTopic, e.to_string()))?;
        if name.as_str() == OFFSETS_TOPIC {
            return Err(status(
                ErrorCode::InvalidTopic,
                format!("{OFFSETS_TOPIC} is internal: the controller creates it"),
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&req.partitions) {
            return Err(status(
                ErrorCode::InvalidPartitions,
                format!(
                    "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                    req.partitions
                ),
            ));
        }
        if req.replication_factor < 1 {
            return Err(status(
                ErrorCode::InvalidReplicationFactor,
                format!("replication factor must be at least 1, got {}", req.replication_factor),
            ));
        }
        let configs: BTreeMap<String, String> = req.configs.into_iter().collect();
        topic_config::validate(&configs, req.replication_factor)
            .map_err(|e| status(ErrorCode::InvalidConfig, e))?;
        let m = self.inner.state.metadata().await;
        if m.topics.contains_key(name.as_str()) {
            return Err(status(
                ErrorCode::TopicAlreadyExists,
                format!("topic {name} already exists"),
            ));
        }
        let assignments = place(
            &Self::live_brokers(&m),
            req.partitions,
            req.replication_factor,
            0,
            rotation(name.as_str()),
        )
        .map_err(|e| placement_status(&e))?;
        self.write(MetadataCommand::CreateTopic {
            name: name.to_string(),
            topic_id: random_id(name.as_str()),
            replication_factor: req.replication_factor,
            configs,
            assignments,
        })
        .await?;
        Ok(Response::new(pb::CreateTopicResponse { topic: Some(self.topic(name.as_str()).await?) }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        self.write(MetadataCommand::DeleteTopic { name }).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let m = self.inner.state.metadata().await;
        Ok(Response::new(pb::ListTopicsResponse { names: m.topics.keys().cloned().collect() }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let topic = self.topic(&request.into_inner().name).await?;
        Ok(Response::new(pb::DescribeTopicResponse { topic: Some(topic) }))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        let req = request.into_inner();
        let m = self.inner.state.metadata().await;
        let topic = m.topics.get(&req.name).ok_or_else(|| {
            status(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {}", req.name))
        })?;
        let current = topic.partitions.len() as i32;
        if req.total <= current || req.total > MAX_PARTITIONS {
            return Err(status(
                ErrorCode::InvalidPartitions,
                format!(
                    "topic {} has {current} partitions; the new total must be larger and at most {MAX_PARTITIONS}, got {}",
                    req.name, req.total
                ),
            ));
        }
        let assignments = place(
            &Self::live_brokers(&m),
            req.total - current,
            topic.replication_factor,
            current as usize,
            rotation(&req.name),
        )
        .map_err(|e| placement_status(&e))?;
        self.write(MetadataCommand::CreatePartitions {
            name: req.name.clone(),
            existing: current as usize,
            assignments,
        })
        .await?;
        Ok(Response::new(pb::CreatePartitionsResponse {
            topic: Some(self.topic(&req.name).await?),
        }))
    }

    async fn alter_topic_config(
        &self,
        request: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        let req = request.into_inner();
        let rf = {
            let m = self.inner.state.metadata().await;
            m.topics.get(&req.name).map(|t| t.replication_factor).ok_or_else(|| {
                status(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {}", req.name))
            })?
        };
        let set: BTreeMap<String, String> = req.set.into_iter().collect();
        topic_config::validate(&set, rf).map_err(|e| status(ErrorCode::InvalidConfig, e))?;
        if let Some(key) = req.remove.iter().find(|k| !topic_config::is_known(k)) {
            return Err(status(ErrorCode::InvalidConfig, format!("unknown topic config {key:?}")));
        }
        self.write(MetadataCommand::AlterTopicConfig {
            name: req.name.clone(),
            set,
            remove: req.remove,
        })
        .await?;
        Ok(Response::new(pb::AlterTopicConfigResponse {
            topic: Some(self.topic(&req.name).await?),
        }))
    }

    async fn get_metadata(
        &self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        let req = request.into_inner();
        let m = self.inner.state.metadata().await;
        let topics = if req.topics.is_empty() {
            m.topics.values().map(topic_pb).collect()
        } else {
            req.topics
                .iter()
                .map(|name| {
                    m.topics.get(name).map(topic_pb).ok_or_else(|| {
                        status(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {name}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let leader = self.inner.raft.current_leader().await;
        Ok(Response::new(pb::GetMetadataResponse {
            version: m.version,
            brokers: m.brokers.values().map(broker_pb).collect(),
            topics,
            controller_leader_id: leader.map_or(-1, |l| l as i32),
            coordinators: m.coordinators.values().map(coordinator_pb).collect(),
            shards: m.shards.iter().enumerate().map(|(i, s)| shard_pb(i, s)).collect(),
        }))
    }

    async fn get_controller_status(
        &self,
        _request: Request<pb::GetControllerStatusRequest>,
    ) -> Result<Response<pb::GetControllerStatusResponse>, Status> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let version = self.inner.state.metadata().await.version;
        Ok(Response::new(pb::GetControllerStatusResponse {
            node_id: self.inner.node_id as i32,
            leader_id: metrics.current_leader.map_or(-1, |l| l as i32),
            term: metrics.current_term,
            commit_index: metrics.last_applied.map_or(0, |l| l.index),
            metadata_version: version,
            members: self.voters(),
        }))
    }

    async fn register_broker(
        &self,
        request: Request<pb::RegisterBrokerRequest>,
    ) -> Result<Response<pb::RegisterBrokerResponse>, Status> {
        let req = request.into_inner();
        let endpoint = req
            .endpoint
            .ok_or_else(|| status(ErrorCode::InvalidRequest, "registration without an endpoint"))?;
        if endpoint.broker_id < 0
            || endpoint.host.is_empty()
            || endpoint.host.len() > 255
            || endpoint.rack.len() > 255
            || req.incarnation_id.len() > 64
            || !(1..=65535).contains(&endpoint.port)
            || endpoint.data_port > 65535
        {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!(
                    "bad broker endpoint: id {} host {:?} port {}",
                    endpoint.broker_id, endpoint.host, endpoint.port
                ),
            ));
        }
        let answer = self
            .write(MetadataCommand::RegisterBroker {
                broker_id: endpoint.broker_id,
                host: endpoint.host,
                port: endpoint.port,
                data_port: endpoint.data_port,
                rack: endpoint.rack,
                incarnation_id: req.incarnation_id.to_vec(),
            })
            .await?;
        let MetadataResponse::BrokerRegistered { broker_epoch, version } = answer else {
            return Err(status(ErrorCode::InvalidRequest, format!("unexpected answer {answer:?}")));
        };
        self.inner.leases.lock().unwrap_or_else(|e| e.into_inner()).insert(
            endpoint.broker_id,
            Lease { broker_epoch, expires: Instant::now() + self.inner.lease },
        );
        Ok(Response::new(pb::RegisterBrokerResponse {
            broker_epoch,
            lease_ms: self.inner.lease.as_millis() as i64,
            metadata_version: version,
        }))
    }

    async fn broker_heartbeat(
        &self,
        request: Request<pb::BrokerHeartbeatRequest>,
    ) -> Result<Response<pb::BrokerHeartbeatResponse>, Status> {
        let req = request.into_inner();
        self.require_leader().await?;
        let m = self.inner.state.metadata().await;
        let broker = m.brokers.get(&req.broker_id).ok_or_else(|| {
            status(ErrorCode::BrokerFenced, format!("broker {} is not registered", req.broker_id))
        })?;
        if broker.broker_epoch != req.broker_epoch {
            return Err(status(
                ErrorCode::StaleBrokerEpoch,
                format!(
                    "broker {} heartbeat with epoch {}, current registration is epoch {}",
                    req.broker_id, req.broker_epoch, broker.broker_epoch
                ),
            ));
        }
        if broker.fenced {
            return Err(status(
                ErrorCode::BrokerFenced,
                format!(
                    "broker {} epoch {} is fenced; register again",
                    req.broker_id, req.broker_epoch
                ),
            ));
        }
        {
            // The lease checker decides under this lock too: once a lease has expired it is
            // not renewed, so a broker is never told it holds a lease it is being fenced for.
            let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if let Some(lease) = leases.get(&req.broker_id)
                && lease.broker_epoch == req.broker_epoch
                && now > lease.expires
            {
                return Err(status(
                    ErrorCode::BrokerFenced,
                    format!("broker {} lease expired; register again", req.broker_id),
                ));
            }
            leases.insert(
                req.broker_id,
                Lease { broker_epoch: req.broker_epoch, expires: now + self.inner.lease },
            );
        }
        Ok(Response::new(pb::BrokerHeartbeatResponse {
            lease_expires_ms: now_ms() + self.inner.lease.as_millis() as i64,
        }))
    }

    async fn alter_partition(
        &self,
        request: Request<pb::AlterPartitionRequest>,
    ) -> Result<Response<pb::AlterPartitionResponse>, Status> {
        let req = request.into_inner();
        // Every check runs in the state machine, against the state the command applies to.
        let answer = self
            .write(MetadataCommand::AlterPartition {
                broker_id: req.broker_id,
                broker_epoch: req.broker_epoch,
                topic: req.topic,
                partition: req.partition,
                leader_epoch: req.leader_epoch,
                partition_epoch: req.partition_epoch,
                isr: req.isr,
            })
            .await?;
        let MetadataResponse::PartitionAltered { partition, .. } = answer else {
            return Err(status(ErrorCode::InvalidRequest, format!("unexpected answer {answer:?}")));
        };
        Ok(Response::new(pb::AlterPartitionResponse {
            partition: Some(partition_pb(req.partition, &partition)),
        }))
    }

    async fn controlled_shutdown(
        &self,
        request: Request<pb::ControlledShutdownRequest>,
    ) -> Result<Response<pb::ControlledShutdownResponse>, Status> {
        let req = request.into_inner();
        let answer = self
            .write(MetadataCommand::ControlledShutdown {
                broker_id: req.broker_id,
                broker_epoch: req.broker_epoch,
            })
            .await?;
        let MetadataResponse::ShutdownProgress { remaining, version } = answer else {
            return Err(status(ErrorCode::InvalidRequest, format!("unexpected answer {answer:?}")));
        };
        tracing::info!(
            broker_id = req.broker_id,
            remaining = remaining.len(),
            metadata_version = version,
            "controlled shutdown"
        );
        Ok(Response::new(pb::ControlledShutdownResponse {
            remaining: remaining
                .into_iter()
                .map(|(topic, partition)| pb::TopicPartition { topic, partition })
                .collect(),
        }))
    }

    async fn init_producer_id(
        &self,
        _request: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        let answer = self.write(MetadataCommand::AllocateProducerId).await?;
        let MetadataResponse::ProducerIdAllocated { producer_id } = answer else {
            return Err(status(ErrorCode::InvalidRequest, format!("unexpected answer {answer:?}")));
        };
        Ok(Response::new(pb::InitProducerIdResponse { producer_id, producer_epoch: 0 }))
    }

    type WatchMetadataStream = EventStream;

    async fn register_coordinator(
        &self,
        request: Request<pb::RegisterCoordinatorRequest>,
    ) -> Result<Response<pb::RegisterCoordinatorResponse>, Status> {
        let req = request.into_inner();
        let endpoint = req.endpoint.unwrap_or_default();
        if endpoint.coordinator_id.is_empty()
            || endpoint.host.is_empty()
            || !(1..=65535).contains(&endpoint.port)
        {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!(
                    "bad coordinator endpoint: id {:?} host {:?} port {}",
                    endpoint.coordinator_id, endpoint.host, endpoint.port
                ),
            ));
        }
        self.ensure_offsets_topic().await?;
        // The same process registering again after its lease lapsed (it was refused a
        // heartbeat) must not get its old epoch, and lease, back: its shards may be on their
        // way elsewhere. Remove the old registration first.
        let m = self.inner.state.metadata().await;
        if let Some(c) = m.coordinators.get(&endpoint.coordinator_id) {
            let lapsed = self
                .inner
                .coordinator_leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&endpoint.coordinator_id)
                .is_some_and(|(epoch, expires)| {
                    *epoch == c.coordinator_epoch && Instant::now() > *expires
                });
            if lapsed {
                self.write(MetadataCommand::RemoveCoordinator {
                    coordinator_id: c.coordinator_id.clone(),
                    coordinator_epoch: c.coordinator_epoch,
                })
                .await?;
            }
        }
        let answer = self
            .write(MetadataCommand::RegisterCoordinator {
                coordinator_id: endpoint.coordinator_id.clone(),
                host: endpoint.host,
                port: endpoint.port,
                incarnation_id: req.incarnation_id.to_vec(),
            })
            .await?;
        let MetadataResponse::CoordinatorRegistered { coordinator_epoch } = answer else {
            return Err(status(ErrorCode::InvalidRequest, format!("unexpected answer {answer:?}")));
        };
        self.inner.coordinator_leases.lock().unwrap_or_else(|e| e.into_inner()).insert(
            endpoint.coordinator_id,
            (coordinator_epoch, Instant::now() + self.inner.lease),
        );
        Ok(Response::new(pb::RegisterCoordinatorResponse {
            coordinator_epoch,
            lease_ms: self.inner.lease.as_millis() as i64,
        }))
    }

    async fn coordinator_heartbeat(
        &self,
        request: Request<pb::CoordinatorHeartbeatRequest>,
    ) -> Result<Response<pb::CoordinatorHeartbeatResponse>, Status> {
        let req = request.into_inner();
        self.require_leader().await?;
        let fenced = || {
            status(
                ErrorCode::BrokerFenced,
                format!(
                    "coordinator {} epoch {} is not registered; register again",
                    req.coordinator_id, req.coordinator_epoch
                ),
            )
        };
        let m = self.inner.state.metadata().await;
        match m.coordinators.get(&req.coordinator_id) {
            Some(c) if c.coordinator_epoch == req.coordinator_epoch => {}
            _ => return Err(fenced()),
        }
        if req.leaving {
            self.write(MetadataCommand::RemoveCoordinator {
                coordinator_id: req.coordinator_id.clone(),
                coordinator_epoch: req.coordinator_epoch,
            })
            .await?;
            self.inner
                .coordinator_leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.coordinator_id);
            return Ok(Response::new(pb::CoordinatorHeartbeatResponse {
                lease_expires_ms: now_ms(),
                shards: Vec::new(),
            }));
        }
        {
            // As for brokers: a lease that expired is never renewed.
            let mut leases =
                self.inner.coordinator_leases.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if let Some((epoch, expires)) = leases.get(&req.coordinator_id)
                && *epoch == req.coordinator_epoch
                && now > *expires
            {
                return Err(fenced());
            }
            leases.insert(
                req.coordinator_id.clone(),
                (req.coordinator_epoch, now + self.inner.lease),
            );
        }
        let m = if req.released_shards.is_empty() {
            m
        } else {
            self.write(MetadataCommand::ReleaseShards {
                coordinator_id: req.coordinator_id.clone(),
                coordinator_epoch: req.coordinator_epoch,
                shards: req.released_shards.clone(),
            })
            .await?;
            self.inner.state.metadata().await
        };
        Ok(Response::new(pb::CoordinatorHeartbeatResponse {
            lease_expires_ms: now_ms() + self.inner.lease.as_millis() as i64,
            shards: m
                .shards
                .iter()
                .enumerate()
                .filter(|(_, s)| s.owner == req.coordinator_id)
                .map(|(i, s)| shard_pb(i, s))
                .collect(),
        }))
    }

    async fn watch_metadata(
        &self,
        _request: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        // Brokers delete the logs of partitions missing from the image: it must not come from
        // a controller that has not applied every committed change yet.
        self.require_leader().await?;
        let state = self.inner.state.clone();
        let mut changes = state.subscribe();
        let mut shutdown = self.inner.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = state.metadata().await;
            if tx.send(Ok(image(&last))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = shutdown.changed() => return,
                }
                let now = state.metadata().await;
                if now.version == last.version {
                    continue;
                }
                tokio::select! {
                    sent = tx.send(Ok(delta(&last, &now))) => if sent.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                last = now;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn alter_partition_reassignments(
        &self,
        request: Request<pb::AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::AlterPartitionReassignmentsResponse>, Status> {
        let req = request.into_inner();
        let keys: Vec<(String, i32)> =
            req.reassignments.iter().map(|r| (r.topic.clone(), r.partition)).collect();
        if req.cancel {
            self.write(MetadataCommand::CancelReassignments { partitions: keys.clone() }).await?;
        } else {
            if req.reassignments.is_empty() {
                return Err(status(ErrorCode::InvalidRequest, "no partitions to reassign"));
            }
            let moves = req.reassignments.into_iter().map(|r| (r.topic, r.partition, r.replicas));
            self.write(MetadataCommand::ReassignPartitions {
                moves: moves.collect(),
                throttle: req.throttle_bytes_per_sec,
            })
            .await?;
        }
        // What the request's partitions look like now (a cancel of everything: none moves).
        let m = self.inner.state.metadata().await;
        let moving = keys
            .iter()
            .filter(|(t, i)| {
                m.topics
                    .get(t)
                    .and_then(|t| t.partitions.get(*i as usize))
                    .is_some_and(PartitionRecord::is_moving)
            })
            .count() as u32;
        Ok(Response::new(pb::AlterPartitionReassignmentsResponse {
            moving,
            completed: keys.len() as u32 - moving,
        }))
    }

    async fn add_controller(
        &self,
        request: Request<pb::AddControllerRequest>,
    ) -> Result<Response<pb::AddControllerResponse>, Status> {
        let req = request.into_inner();
        let id = u64::try_from(req.node_id).ok().filter(|id| *id > 0).ok_or_else(|| {
            status(
                ErrorCode::InvalidRequest,
                format!("node id must be positive, got {}", req.node_id),
            )
        })?;
        if tideline_common::host_port(&req.address).is_none_or(|(host, _)| host.is_empty()) {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("controller address must be HOST:PORT, got {:?}", req.address),
            ));
        }
        self.require_leader().await?;
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let known = membership.nodes().find(|(n, _)| **n == id).map(|(_, node)| node.addr.clone());
        if membership.voter_ids().any(|v| v == id) {
            if known.as_deref() == Some(req.address.as_str()) {
                return Ok(Response::new(pb::AddControllerResponse { members: self.voters() }));
            }
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("controller {id} is already a voter at {}", known.unwrap_or_default()),
            ));
        }
        // The address must be a controller of this id, running and reachable from here, and
        // no other member's: a typo must neither add a learner that never answers nor make one
        // process count as two voters.
        if let Some((other, _)) =
            membership.nodes().find(|(n, node)| **n != id && node.addr == req.address)
        {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("{} is the address of controller {other} already", req.address),
            ));
        }
        probe_controller(id, &req.address).await?;
        // A learner first: it receives the log (or a snapshot) without counting in the quorum,
        // so a slow node cannot stall commits. A learner already there (a retried request)
        // must be at the same address.
        match known {
            Some(known) if known != req.address => {
                return Err(status(
                    ErrorCode::InvalidRequest,
                    format!(
                        "controller {id} is already a learner at {known}; remove it first to \
                         add it at {}",
                        req.address
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.inner
                    .raft
                    .add_learner(id, BasicNode::new(&req.address), false)
                    .await
                    .map_err(|e| self.membership_error(e))?;
            }
        }
        // It becomes a voter only once it holds the whole log as of now, the learner entry
        // included (openraft's own blocking add counts a learner that never answered as caught
        // up on a short log). Waiting ends early if this controller stops leading.
        let target = self.inner.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let mut metrics = self.inner.raft.metrics();
        // Timing out is not an error here: the state afterwards decides.
        let _ = tokio::time::timeout(
            ADD_CONTROLLER_TIMEOUT,
            metrics.wait_for(|m| {
                m.current_leader != Some(m.id)
                    || m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .is_some_and(|matched| matched.index >= target)
            }),
        )
        .await;
        let (leader, leading, matched) = {
            let m = self.inner.raft.metrics().borrow().clone();
            let matched = m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten());
            (m.current_leader, m.current_leader == Some(m.id), matched.map(|l| l.index))
        };
        if !leading {
            // The learner (if its entry was committed) stays; the same request to the new
            // leader goes on from there.
            return Err(self.not_controller(leader, None));
        }
        if matched.is_none_or(|at| at < target) {
            // Reachable (probed above) but behind, e.g. receiving a snapshot of a large state:
            // it stays a learner, and the same request again goes on waiting for it.
            return Err(status(
                ErrorCode::RequestTimedOut,
                format!(
                    "controller {id} is still catching up as a learner (at log index {} of \
                     {target} after {} s); run the same request again to wait for it",
                    matched.map_or("none".to_string(), |at| at.to_string()),
                    ADD_CONTROLLER_TIMEOUT.as_secs()
                ),
            ));
        }
        let voters = std::collections::BTreeSet::from([id]);
        self.inner
            .raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        tracing::info!(node_id = id, address = %req.address, "controller added as a voter");
        Ok(Response::new(pb::AddControllerResponse { members: self.voters() }))
    }

    async fn remove_controller(
        &self,
        request: Request<pb::RemoveControllerRequest>,
    ) -> Result<Response<pb::RemoveControllerResponse>, Status> {
        let req = request.into_inner();
        let id = u64::try_from(req.node_id).map_err(|_| {
            status(ErrorCode::InvalidRequest, format!("no controller {}", req.node_id))
        })?;
        self.require_leader().await?;
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        if !membership.nodes().any(|(n, _)| *n == id) {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("controller {id} is not a member (voters {voters:?})"),
            ));
        }
        if voters == [id] {
            return Err(status(
                ErrorCode::InvalidRequest,
                format!("controller {id} is the only voter; add another first"),
            ));
        }
        let change = if voters.contains(&id) {
            openraft::ChangeMembers::RemoveVoters(std::collections::BTreeSet::from([id]))
        } else {
            openraft::ChangeMembers::RemoveNodes(std::collections::BTreeSet::from([id]))
        };
        // retain = false: a removed voter does not stay on as a learner.
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.membership_error(e))?;
        tracing::info!(node_id = id, "controller removed from the quorum");
        Ok(Response::new(pb::RemoveControllerResponse { members: self.voters() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal of AlterPartition and ControlledShutdown reaches the client as its
    /// documented error code.
    #[test]
    fn partition_and_broker_refusals_map_to_their_codes() {
        let topic = || "t".to_string();
        let cases = [
            (MetadataError::UnknownBroker(9), ErrorCode::StaleBrokerEpoch),
            (
                MetadataError::StaleBrokerEpoch { broker_id: 1, broker_epoch: 1, current: 2 },
                ErrorCode::StaleBrokerEpoch,
            ),
            (
                MetadataError::BrokerFenced { broker_id: 1, broker_epoch: 2 },
                ErrorCode::BrokerFenced,
            ),
            (MetadataError::UnknownTopic(topic()), ErrorCode::UnknownTopicOrPartition),
            (
                MetadataError::UnknownPartition { topic: topic(), partition: 3 },
                ErrorCode::UnknownTopicOrPartition,
            ),
            (
                MetadataError::NotPartitionLeader {
                    topic: topic(),
                    partition: 0,
                    broker_id: 2,
                    leader: 1,
                },
                ErrorCode::FencedLeaderEpoch,
            ),
            (
                MetadataError::StaleLeaderEpoch {
                    topic: topic(),
                    partition: 0,
                    got: 1,
                    current: 2,
                },
                ErrorCode::FencedLeaderEpoch,
            ),
            (
                MetadataError::StalePartitionEpoch {
                    topic: topic(),
                    partition: 0,
                    got: 1,
                    current: 2,
                },
                ErrorCode::FencedLeaderEpoch,
            ),
            (
                MetadataError::InvalidIsr {
                    topic: topic(),
                    partition: 0,
                    isr: vec![],
                    reason: "the isr is empty".into(),
                },
                ErrorCode::InvalidRequest,
            ),
        ];
        for (error, code) in cases {
            let s = metadata_status(&error);
            assert_eq!(tideline_common::error_code_of(&s), Some(code), "{error}");
            assert_eq!(s.message(), error.to_string());
        }
    }
}
