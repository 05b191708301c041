//! In-process fakes of the controller, broker and coordinator gRPC services (tonic servers on
//! loopback ports, scripted failures), shared by the test binaries that exercise the client
//! without starting Tideline processes.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tideline_client::{
    Admin, ClientConfig, Cluster, Consumer, ErrorCode, Producer, ProducerConfig, ProducerRecord,
};
use tideline_common::{status, with_leader, with_offset_range};
use tideline_log::RecordBatch;
use tideline_log::batch::set_offset_and_epoch;
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_server::{BrokerService, BrokerServiceServer};
use tideline_proto::v1::controller_service_server::{ControllerService, ControllerServiceServer};
use tideline_proto::v1::coordinator_service_server::{
    CoordinatorService, CoordinatorServiceServer,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Default)]
pub struct State {
    pub port: u32,
    /// The data port advertised for the broker in the metadata (0: none, fetches go over
    /// gRPC). Only the metadata carries it: the test serves the port itself.
    pub data_port: u32,
    /// Partition count by topic.
    pub topics: HashMap<String, i32>,
    /// Batches by partition, with their base offsets.
    pub logs: HashMap<(String, i32), Vec<(i64, Bytes)>>,
    /// Answers for the next produce requests, before the normal one.
    pub produce_failures: VecDeque<Status>,
    /// When set, controller writes answer NOT_CONTROLLER naming this address.
    pub redirect_writes_to: Option<String>,
    pub metadata_requests: usize,
    pub produce_requests: usize,
    /// Answers for the next fetch requests, before the normal one.
    pub fetch_failures: VecDeque<Status>,
    /// Pause before answering a produce.
    pub produce_delay: Option<Duration>,
    /// Produce requests being answered now, and the most there ever were at once.
    pub produces_open: (usize, usize),
    /// Pause before answering a fetch, by partition.
    pub fetch_delays: HashMap<i32, Duration>,
    /// Fetch requests in the order they came: partition and offset.
    pub fetches: Vec<(i32, i64)>,
    /// Fetch requests being answered now (dropped ones, cancelled by the client, not
    /// counted).
    pub fetches_open: usize,
    /// Group coordinators served: id and port.
    pub coordinators: Vec<(String, u32)>,
    /// The coordinator owning the one shard of `__consumer_offsets`; the others answer
    /// NOT_COORDINATOR.
    pub shard_owner: String,
    /// Consumer groups, as the coordinators share them (a shard moving keeps its groups).
    pub groups: HashMap<String, FakeGroup>,
    /// What each member id gets assigned, set by the test (none: nothing).
    pub assignments: HashMap<String, Vec<(String, i32)>>,
    /// Heartbeat interval the coordinators ask for, in ms (0: 50).
    pub heartbeat_interval_ms: i32,
    /// Answers for the next coordinator requests, before the normal one.
    pub coordinator_failures: VecDeque<Status>,
    /// While set, the coordinators refuse every request with this code (down, or not
    /// reachable).
    pub coordinator_down: Option<ErrorCode>,
    /// Answers for the next offset commits, before the normal one (nothing committed).
    pub commit_failures: VecDeque<Status>,
    /// Answers for the next heartbeats after they were applied: the answer lost on its way
    /// back (e.g. `NOT_COORDINATOR` after the join was written).
    pub heartbeat_answers_lost: VecDeque<Status>,
    /// Joins so far (a join repeated with the same member id counts again); a join without a
    /// member id gets `member-<this count>`.
    pub members_joined: u32,
    /// What the coordinators were asked and took (refusals too), and what tests log in
    /// between (rebalance events), in order.
    pub calls: Vec<Call>,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<State>>);

impl Fake {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    pub fn topic(&self, name: &str) -> Option<pb::TopicMetadata> {
        let partitions = *self.state().topics.get(name)?;
        Some(pb::TopicMetadata {
            name: name.into(),
            replication_factor: 1,
            partitions: (0..partitions)
                .map(|p| pb::PartitionMetadata {
                    partition: p,
                    leader: 1,
                    replicas: vec![1],
                    isr: vec![1],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// The batches a fetch of `topic`-`partition` from `offset` with `max_bytes` answers, as a
    /// broker reads them (whole batches, at least one), and the offset past the last one
    /// (`offset` when there are none).
    pub fn read_batches(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> (Bytes, i64) {
        let mut data = BytesMut::new();
        let mut next_offset = offset;
        let state = self.state();
        for (base, batch) in state.logs.get(&(topic.to_string(), partition)).into_iter().flatten() {
            let next = base + RecordBatch::parse(batch).unwrap().0.last_offset_delta() as i64 + 1;
            if next > offset && (data.is_empty() || data.len() < max_bytes) {
                data.extend_from_slice(batch);
                next_offset = next;
            }
        }
        (data.freeze(), next_offset)
    }

    pub fn end_offset(&self, topic: &str, partition: i32) -> i64 {
        let state = self.state();
        let log = state.logs.get(&(topic.to_string(), partition));
        log.and_then(|l| l.last()).map_or(0, |(base, batch)| {
            base + RecordBatch::parse(batch).unwrap().0.last_offset_delta() as i64 + 1
        })
    }
}

/// Counts a fetch request as open while it lives.
struct OpenFetch(Fake);

impl OpenFetch {
    fn new(fake: &Fake) -> Self {
        fake.state().fetches_open += 1;
        OpenFetch(fake.clone())
    }
}

impl Drop for OpenFetch {
    fn drop(&mut self) {
        self.0.state().fetches_open -= 1;
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl ControllerService for Fake {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        if let Some(leader) = self.state().redirect_writes_to.clone() {
            let s = status(ErrorCode::NotController, "controller 2 is not the leader");
            return Err(with_leader(s, 1, &leader));
        }
        let req = request.into_inner();
        if self.state().topics.insert(req.name.clone(), req.partitions).is_some() {
            return Err(status(
                ErrorCode::TopicAlreadyExists,
                format!("topic {} exists", req.name),
            ));
        }
        Ok(Response::new(pb::CreateTopicResponse { topic: self.topic(&req.name) }))
    }
    async fn delete_topic(
        &self,
        _: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        unimplemented()
    }
    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let mut names: Vec<String> = self.state().topics.keys().cloned().collect();
        names.sort();
        Ok(Response::new(pb::ListTopicsResponse { names }))
    }
    async fn describe_topic(
        &self,
        _: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        unimplemented()
    }
    async fn create_partitions(
        &self,
        _: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        unimplemented()
    }
    async fn alter_topic_config(
        &self,
        _: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        unimplemented()
    }
    async fn get_metadata(
        &self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        let req = request.into_inner();
        self.state().metadata_requests += 1;
        let names = if req.topics.is_empty() {
            self.state().topics.keys().cloned().collect()
        } else {
            req.topics
        };
        let topics = names
            .iter()
            .map(|n| {
                self.topic(n).ok_or_else(|| {
                    status(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {n}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let (port, data_port, coordinators, shards) = {
            let state = self.state();
            let coordinators = state
                .coordinators
                .iter()
                .map(|(id, port)| pb::CoordinatorMetadata {
                    endpoint: Some(pb::CoordinatorEndpoint {
                        coordinator_id: id.clone(),
                        host: "127.0.0.1".into(),
                        port: *port,
                    }),
                    coordinator_epoch: 1,
                })
                .collect();
            let shards = if state.coordinators.is_empty() {
                Vec::new()
            } else {
                vec![pb::ShardAssignment {
                    shard: 0,
                    coordinator_id: state.shard_owner.clone(),
                    shard_epoch: 1,
                    releasing: false,
                }]
            };
            (state.port, state.data_port, coordinators, shards)
        };
        Ok(Response::new(pb::GetMetadataResponse {
            version: 1,
            brokers: vec![pb::BrokerMetadata {
                endpoint: Some(pb::BrokerEndpoint {
                    broker_id: 1,
                    host: "127.0.0.1".into(),
                    port,
                    data_port,
                    ..Default::default()
                }),
                broker_epoch: 1,
                fenced: false,
                shutting_down: false,
            }],
            topics,
            controller_leader_id: 1,
            coordinators,
            shards,
        }))
    }
    async fn get_controller_status(
        &self,
        _: Request<pb::GetControllerStatusRequest>,
    ) -> Result<Response<pb::GetControllerStatusResponse>, Status> {
        unimplemented()
    }
    async fn register_broker(
        &self,
        _: Request<pb::RegisterBrokerRequest>,
    ) -> Result<Response<pb::RegisterBrokerResponse>, Status> {
        unimplemented()
    }
    async fn broker_heartbeat(
        &self,
        _: Request<pb::BrokerHeartbeatRequest>,
    ) -> Result<Response<pb::BrokerHeartbeatResponse>, Status> {
        unimplemented()
    }
    async fn alter_partition(
        &self,
        _: Request<pb::AlterPartitionRequest>,
    ) -> Result<Response<pb::AlterPartitionResponse>, Status> {
        unimplemented()
    }
    async fn controlled_shutdown(
        &self,
        _: Request<pb::ControlledShutdownRequest>,
    ) -> Result<Response<pb::ControlledShutdownResponse>, Status> {
        unimplemented()
    }
    async fn init_producer_id(
        &self,
        _: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        Ok(Response::new(pb::InitProducerIdResponse { producer_id: 1, producer_epoch: 0 }))
    }
    async fn register_coordinator(
        &self,
        _: Request<pb::RegisterCoordinatorRequest>,
    ) -> Result<Response<pb::RegisterCoordinatorResponse>, Status> {
        unimplemented()
    }
    async fn coordinator_heartbeat(
        &self,
        _: Request<pb::CoordinatorHeartbeatRequest>,
    ) -> Result<Response<pb::CoordinatorHeartbeatResponse>, Status> {
        unimplemented()
    }
    type WatchMetadataStream = tokio_stream::Empty<Result<pb::MetadataEvent, Status>>;
    async fn watch_metadata(
        &self,
        _: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        unimplemented()
    }
    async fn alter_partition_reassignments(
        &self,
        _: Request<pb::AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<pb::AlterPartitionReassignmentsResponse>, Status> {
        unimplemented()
    }
    async fn add_controller(
        &self,
        _: Request<pb::AddControllerRequest>,
    ) -> Result<Response<pb::AddControllerResponse>, Status> {
        unimplemented()
    }
    async fn remove_controller(
        &self,
        _: Request<pb::RemoveControllerRequest>,
    ) -> Result<Response<pb::RemoveControllerResponse>, Status> {
        unimplemented()
    }
}

#[tonic::async_trait]
impl BrokerService for Fake {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let req = request.into_inner();
        let Some(pb::produce_request::Payload::RecordBatches(batch)) = req.payload else {
            return Err(status(ErrorCode::InvalidRequest, "the fake takes batches only"));
        };
        let delay = {
            let mut state = self.state();
            state.produce_requests += 1;
            if let Some(failure) = state.produce_failures.pop_front() {
                return Err(failure);
            }
            state.produces_open.0 += 1;
            state.produces_open.1 = state.produces_open.1.max(state.produces_open.0);
            state.produce_delay
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.state().produces_open.0 -= 1;
        let (parsed, rest) = RecordBatch::parse(&batch).expect("one whole batch");
        assert!(rest.is_empty(), "one batch per request");
        parsed.verify_crc().expect("the client sends valid batches");
        let count = parsed.last_offset_delta() as i64 + 1;
        let base = self.end_offset(&req.topic, req.partition);
        let mut stored = BytesMut::from(&batch[..]);
        set_offset_and_epoch(&mut stored, base, 0);
        self.state()
            .logs
            .entry((req.topic, req.partition))
            .or_default()
            .push((base, stored.freeze()));
        Ok(Response::new(pb::ProduceResponse {
            base_offset: base,
            last_offset: base + count - 1,
            log_append_time_ms: 0,
            log_start_offset: 0,
        }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let req = request.into_inner();
        let _open = OpenFetch::new(self);
        let delay = {
            let mut state = self.state();
            state.fetches.push((req.partition, req.offset));
            if let Some(failure) = state.fetch_failures.pop_front() {
                return Err(failure);
            }
            state.fetch_delays.get(&req.partition).copied().unwrap_or_default()
        };
        tokio::time::sleep(delay).await;
        let end = self.end_offset(&req.topic, req.partition);
        if req.offset > end {
            let s =
                status(ErrorCode::OffsetOutOfRange, format!("offset {} > end {end}", req.offset));
            return Err(with_offset_range(s, 0, end));
        }
        if req.offset == end {
            tokio::time::sleep(Duration::from_millis(req.max_wait_ms as u64)).await;
        }
        // Past the last batch sent, as a broker answers.
        let (data, next_offset) =
            self.read_batches(&req.topic, req.partition, req.offset, req.max_bytes as usize);
        Ok(Response::new(pb::FetchResponse {
            record_batches: data,
            high_watermark: end,
            next_offset,
            ..Default::default()
        }))
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let req = request.into_inner();
        let offset = match pb::OffsetSpec::try_from(req.spec) {
            Ok(pb::OffsetSpec::Earliest) => 0,
            _ => self.end_offset(&req.topic, req.partition),
        };
        Ok(Response::new(pb::ListOffsetsResponse { offset, timestamp_ms: -1 }))
    }

    async fn offset_for_leader_epoch(
        &self,
        _: Request<pb::OffsetForLeaderEpochRequest>,
    ) -> Result<Response<pb::OffsetForLeaderEpochResponse>, Status> {
        unimplemented()
    }
}

/// Serves `fake` on a loopback port; returns `host:port`.
pub async fn serve(fake: &Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    fake.state().port = u32::from(address.port());
    let server = tonic::transport::Server::builder()
        .add_service(ControllerServiceServer::new(fake.clone()))
        .add_service(BrokerServiceServer::new(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    address.to_string()
}

/// Waits until `check` holds, failing the test after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `count` records to `orders`-`partition`, one batch each, values `v{i}`.
pub async fn produce_one_per_batch(cluster: &Cluster, partition: i32, count: usize) {
    let producer = Producer::new(cluster, ProducerConfig::default()).unwrap();
    for i in 0..count {
        let record = ProducerRecord::new("orders").partition(partition).value(format!("v{i}"));
        producer.send_and_wait(record).await.unwrap();
    }
    producer.close().await;
}

/// Polls until `count` records came or `limit` passed; returns their partitions and offsets.
pub async fn poll_offsets(
    consumer: &mut Consumer,
    count: usize,
    limit: Duration,
) -> Vec<(i32, i64)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut read = Vec::new();
    while read.len() < count && tokio::time::Instant::now() < deadline {
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        read.extend(records.iter().map(|r| (r.partition, r.offset)));
    }
    read
}

pub async fn cluster_with_topic(partitions: i32) -> (Fake, Cluster) {
    cluster_with_topic_and_data_port(partitions, 0).await
}

/// As [`cluster_with_topic`], with the broker advertising `data_port` (0: none) in the
/// metadata from the first request on.
pub async fn cluster_with_topic_and_data_port(partitions: i32, data_port: u16) -> (Fake, Cluster) {
    let fake = Fake::default();
    fake.state().data_port = u32::from(data_port);
    let address = serve(&fake).await;
    let mut config = ClientConfig::new([address]);
    config.request_timeout = Duration::from_secs(5);
    let cluster = Cluster::new(config).unwrap();
    Admin::new(&cluster).create_topic("orders", partitions, 1, HashMap::new()).await.unwrap();
    (fake, cluster)
}

/// A topic and partition.
pub type Tp = (String, i32);

/// One thing a fake coordinator was asked (or a test logged), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A heartbeat the coordinator answered or refused.
    Heartbeat {
        /// The coordinator asked.
        coordinator: String,
        member_id: String,
        member_epoch: i32,
        subscribed_topics: Option<Vec<String>>,
        owned: Option<Vec<Tp>>,
        /// The error code of a refusal, or of a lost answer (`heartbeat_answers_lost`: the
        /// heartbeat was applied all the same).
        refused: Option<ErrorCode>,
    },
    /// An offset commit the coordinator took.
    Commit { coordinator: String, member_id: String, offsets: Vec<(Tp, i64)> },
    /// An offset commit the coordinator refused, with the error code.
    CommitRefused {
        coordinator: String,
        member_id: String,
        offsets: Vec<(Tp, i64)>,
        code: ErrorCode,
    },
    /// Logged by a test: a rebalance event, as the consumer's listener heard it.
    Event(tideline_client::RebalanceEvent),
}

/// A member of a fake group.
#[derive(Debug, Clone, Default)]
pub struct FakeMember {
    pub epoch: i32,
    pub previous_epoch: i32,
    pub instance_id: Option<String>,
    pub subscribed_topics: Vec<String>,
    /// What it last reported owning.
    pub owned: Vec<Tp>,
    /// What it was last answered to own.
    pub assigned: Vec<Tp>,
}

/// A consumer group of the fake coordinators.
#[derive(Debug, Clone, Default)]
pub struct FakeGroup {
    pub members: BTreeMap<String, FakeMember>,
    pub committed: BTreeMap<Tp, i64>,
}

/// One coordinator of the fake: `id` answers for the shard only while it owns it.
#[derive(Clone)]
pub struct FakeCoordinator {
    fake: Fake,
    id: String,
}

impl FakeCoordinator {
    /// The state, after checking that this coordinator owns the shard and popping a scripted
    /// failure.
    fn owning(&self) -> Result<std::sync::MutexGuard<'_, State>, Status> {
        let mut state = self.fake.state();
        if state.shard_owner != self.id {
            return Err(status(
                ErrorCode::NotCoordinator,
                format!("coordinator {} does not own shard 0", self.id),
            ));
        }
        if let Some(code) = state.coordinator_down {
            return Err(status(code, format!("coordinator {} is down", self.id)));
        }
        if let Some(failure) = state.coordinator_failures.pop_front() {
            return Err(failure);
        }
        Ok(state)
    }
}

fn tps(list: &[pb::TopicPartition]) -> Vec<Tp> {
    list.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect()
}

fn partition_list(list: &[Tp]) -> pb::PartitionList {
    pb::PartitionList {
        partitions: list
            .iter()
            .map(|(topic, partition)| pb::TopicPartition {
                topic: topic.clone(),
                partition: *partition,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl CoordinatorService for FakeCoordinator {
    async fn consumer_group_heartbeat(
        &self,
        request: Request<pb::ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<pb::ConsumerGroupHeartbeatResponse>, Status> {
        let req = request.into_inner();
        let mut log = Call::Heartbeat {
            coordinator: self.id.clone(),
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            subscribed_topics: req.subscribed_topics.as_ref().map(|t| t.topics.clone()),
            owned: req.owned_partitions.as_ref().map(|o| tps(&o.partitions)),
            refused: None,
        };
        let mut state = match self.owning() {
            Ok(state) => state,
            Err(refusal) => {
                if let Call::Heartbeat { refused, .. } = &mut log {
                    *refused = tideline_common::error_code_of(&refusal);
                }
                self.fake.state().calls.push(log);
                return Err(refusal);
            }
        };
        let mut answer = heartbeat(&mut state, req);
        if answer.is_ok()
            && let Some(lost) = state.heartbeat_answers_lost.pop_front()
        {
            answer = Err(lost);
        }
        if let (Call::Heartbeat { refused, .. }, Err(e)) = (&mut log, &answer) {
            *refused = tideline_common::error_code_of(e);
        }
        state.calls.push(log);
        answer.map(Response::new)
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let req = request.into_inner();
        let offsets: Vec<(Tp, i64)> =
            req.offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.offset)).collect();
        let (coordinator, member_id) = (self.id.clone(), req.member_id.clone());
        let answer = self.owning().and_then(|mut state| {
            if let Some(failure) = state.commit_failures.pop_front() {
                return Err(failure);
            }
            commit(&mut state, req)
        });
        let mut state = self.fake.state();
        match answer {
            Ok(()) => {
                state.calls.push(Call::Commit { coordinator, member_id, offsets });
                Ok(Response::new(pb::CommitOffsetsResponse {}))
            }
            Err(refusal) => {
                let code = tideline_common::error_code_of(&refusal).expect("a tideline code");
                state.calls.push(Call::CommitRefused { coordinator, member_id, offsets, code });
                Err(refusal)
            }
        }
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let req = request.into_inner();
        let state = self.owning()?;
        let committed = state.groups.get(&req.group_id).map(|g| g.committed.clone());
        let wanted = tps(&req.partitions);
        let offsets = committed
            .unwrap_or_default()
            .into_iter()
            .filter(|(tp, _)| wanted.is_empty() || wanted.contains(tp))
            .map(|((topic, partition), offset)| pb::CommittedOffset {
                topic,
                partition,
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_time_ms: 0,
            })
            .collect();
        Ok(Response::new(pb::FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let state = self.fake.state();
        let groups = if state.shard_owner == self.id {
            let mut groups: Vec<_> = state
                .groups
                .iter()
                .map(|(id, g)| pb::GroupListing {
                    group_id: id.clone(),
                    state: if g.members.is_empty() { "Empty" } else { "Stable" }.into(),
                    shard: 0,
                })
                .collect();
            groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
            groups
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let req = request.into_inner();
        let group = {
            let state = self.owning()?;
            state.groups.get(&req.group_id).cloned()
        };
        let Some(group) = group else {
            return Err(status(ErrorCode::GroupIdNotFound, format!("no group {}", req.group_id)));
        };
        let members = group
            .members
            .iter()
            .map(|(id, m)| pb::GroupMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                member_epoch: m.epoch,
                rack: None,
                subscribed_topics: m.subscribed_topics.clone(),
                subscribed_regex: None,
                assignment: partition_list(&m.assigned).partitions,
            })
            .collect();
        let mut partitions: BTreeMap<Tp, (Option<i64>, Option<String>)> = BTreeMap::new();
        for (tp, offset) in &group.committed {
            partitions.entry(tp.clone()).or_default().0 = Some(*offset);
        }
        for (id, m) in &group.members {
            for tp in &m.assigned {
                partitions.entry(tp.clone()).or_default().1 = Some(id.clone());
            }
        }
        let partitions = partitions
            .into_iter()
            .map(|((topic, partition), (committed, owner))| {
                let end = self.fake.end_offset(&topic, partition);
                pb::PartitionLag {
                    topic,
                    partition,
                    committed_offset: committed,
                    end_offset: Some(end),
                    lag: Some(end - committed.unwrap_or(0)),
                    owner,
                }
            })
            .collect();
        Ok(Response::new(pb::DescribeGroupResponse {
            group_id: req.group_id,
            state: if group.members.is_empty() { "Empty" } else { "Stable" }.into(),
            group_epoch: 1,
            assignor: "uniform".into(),
            members,
            partitions,
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let req = request.into_inner();
        let mut state = self.owning()?;
        match state.groups.get(&req.group_id) {
            None => Err(status(ErrorCode::GroupIdNotFound, format!("no group {}", req.group_id))),
            Some(g) if !g.members.is_empty() => Err(status(
                ErrorCode::NonEmptyGroup,
                format!("group {} has {} members", req.group_id, g.members.len()),
            )),
            Some(_) => {
                state.groups.remove(&req.group_id);
                Ok(Response::new(pb::DeleteGroupResponse {}))
            }
        }
    }
}

/// The fake's commit rules: an admin commit (no member id) only to a group without members,
/// else by a member at its current (or previous) epoch.
fn commit(state: &mut State, req: pb::CommitOffsetsRequest) -> Result<(), Status> {
    let group = state.groups.entry(req.group_id.clone()).or_default();
    if req.member_id.is_empty() {
        if !group.members.is_empty() {
            return Err(status(
                ErrorCode::NonEmptyGroup,
                format!("group {} has {} members", req.group_id, group.members.len()),
            ));
        }
    } else {
        let Some(m) = group.members.get(&req.member_id) else {
            return Err(status(
                ErrorCode::UnknownMemberId,
                format!("no member {} in group {}", req.member_id, req.group_id),
            ));
        };
        if req.member_epoch != m.epoch && req.member_epoch != m.previous_epoch {
            return Err(status(
                ErrorCode::StaleMemberEpoch,
                format!("epoch {} is not {}", req.member_epoch, m.epoch),
            ));
        }
    }
    group.committed.extend(req.offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.offset)));
    Ok(())
}

/// The fake's membership rules: join at epoch 0 with the member id the client generated (a
/// join with an id the group has replaces that member: the same member starting over; a join
/// without one gets `member-<n>`), leave at -1 or -2, else the member must exist at its
/// current (or previous) epoch. The answer is what the test assigned to the member id; the
/// epoch moves when that changes.
fn heartbeat(
    state: &mut State,
    req: pb::ConsumerGroupHeartbeatRequest,
) -> Result<pb::ConsumerGroupHeartbeatResponse, Status> {
    let interval = if state.heartbeat_interval_ms == 0 { 50 } else { state.heartbeat_interval_ms };
    let member_id = match req.member_epoch {
        0 => {
            state.members_joined += 1;
            let id = if req.member_id.is_empty() {
                format!("member-{}", state.members_joined)
            } else {
                req.member_id.clone()
            };
            let member = FakeMember {
                epoch: 1,
                previous_epoch: 1,
                instance_id: req.instance_id.clone(),
                ..Default::default()
            };
            state
                .groups
                .entry(req.group_id.clone())
                .or_default()
                .members
                .insert(id.clone(), member);
            id
        }
        -1 | -2 => {
            let group = state.groups.entry(req.group_id.clone()).or_default();
            if group.members.remove(&req.member_id).is_none() {
                return Err(status(
                    ErrorCode::UnknownMemberId,
                    format!("no member {}", req.member_id),
                ));
            }
            return Ok(pb::ConsumerGroupHeartbeatResponse {
                member_id: req.member_id,
                member_epoch: req.member_epoch,
                heartbeat_interval_ms: 0,
                assignment: Some(pb::PartitionList::default()),
            });
        }
        epoch => {
            let group = state.groups.entry(req.group_id.clone()).or_default();
            let Some(m) = group.members.get(&req.member_id) else {
                return Err(status(
                    ErrorCode::UnknownMemberId,
                    format!("no member {}", req.member_id),
                ));
            };
            if epoch != m.epoch && epoch != m.previous_epoch {
                return Err(status(
                    ErrorCode::StaleMemberEpoch,
                    format!("epoch {epoch} is not {}", m.epoch),
                ));
            }
            req.member_id.clone()
        }
    };
    let assignment = state.assignments.get(&member_id).cloned().unwrap_or_default();
    let group = state.groups.get_mut(&req.group_id).expect("joined or checked");
    let m = group.members.get_mut(&member_id).expect("joined or checked");
    if let Some(topics) = req.subscribed_topics {
        m.subscribed_topics = topics.topics;
    }
    if let Some(owned) = req.owned_partitions {
        m.owned = tps(&owned.partitions);
    }
    if m.assigned != assignment {
        if req.member_epoch != 0 {
            m.previous_epoch = m.epoch;
            m.epoch += 1;
        }
        m.assigned = assignment.clone();
    }
    Ok(pb::ConsumerGroupHeartbeatResponse {
        member_id,
        member_epoch: m.epoch,
        heartbeat_interval_ms: interval,
        assignment: Some(partition_list(&assignment)),
    })
}

/// Serves a coordinator of `fake` with this id on a loopback port, and adds it to the
/// metadata; returns its `host:port`.
pub async fn serve_coordinator(fake: &Fake, id: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    fake.state().coordinators.push((id.to_string(), u32::from(address.port())));
    let coordinator = FakeCoordinator { fake: fake.clone(), id: id.to_string() };
    let server = tonic::transport::Server::builder()
        .add_service(CoordinatorServiceServer::new(coordinator))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    address.to_string()
}
