//! The client against an in-process fake of the controller and broker gRPC services (one
//! tonic server on a loopback port, scripted failures): exercises the producer's sender,
//! retries, redirects and the consumer's fetch loop without starting Tideline processes.
//! Tests against the real broker and controller binaries live with the integration tests.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tideline_client::{
    Acks, Admin, AutoOffsetReset, ClientConfig, ClientError, Cluster, Consumer, ConsumerConfig,
    ErrorCode, Producer, ProducerConfig, ProducerRecord, partitioner::partition_for_key,
};
use tideline_common::{status, with_leader, with_offset_range};
use tideline_log::RecordBatch;
use tideline_log::batch::set_offset_and_epoch;
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_server::{BrokerService, BrokerServiceServer};
use tideline_proto::v1::controller_service_server::{ControllerService, ControllerServiceServer};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    port: u32,
    /// Partition count by topic.
    topics: HashMap<String, i32>,
    /// Batches by partition, with their base offsets.
    logs: HashMap<(String, i32), Vec<(i64, Bytes)>>,
    /// Answers for the next produce requests, before the normal one.
    produce_failures: VecDeque<Status>,
    /// When set, controller writes answer NOT_CONTROLLER naming this address.
    redirect_writes_to: Option<String>,
    metadata_requests: usize,
    produce_requests: usize,
    /// Answers for the next fetch requests, before the normal one.
    fetch_failures: VecDeque<Status>,
    /// Pause before answering a fetch, by partition.
    fetch_delays: HashMap<i32, Duration>,
    /// Fetch requests in the order they came: partition and offset.
    fetches: Vec<(i32, i64)>,
    /// Fetch requests being answered now (dropped ones, cancelled by the client, not
    /// counted).
    fetches_open: usize,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn topic(&self, name: &str) -> Option<pb::TopicMetadata> {
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

    fn end_offset(&self, topic: &str, partition: i32) -> i64 {
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
        let port = self.state().port;
        Ok(Response::new(pb::GetMetadataResponse {
            version: 1,
            brokers: vec![pb::BrokerMetadata {
                endpoint: Some(pb::BrokerEndpoint {
                    broker_id: 1,
                    host: "127.0.0.1".into(),
                    port,
                    ..Default::default()
                }),
                broker_epoch: 1,
                fenced: false,
                shutting_down: false,
            }],
            topics,
            controller_leader_id: 1,
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
    type WatchMetadataStream = tokio_stream::Empty<Result<pb::MetadataEvent, Status>>;
    async fn watch_metadata(
        &self,
        _: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
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
        {
            let mut state = self.state();
            state.produce_requests += 1;
            if let Some(failure) = state.produce_failures.pop_front() {
                return Err(failure);
            }
        }
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
        let mut data = BytesMut::new();
        let state = self.state();
        for (base, batch) in state.logs.get(&(req.topic, req.partition)).into_iter().flatten() {
            let next = base + RecordBatch::parse(batch).unwrap().0.last_offset_delta() as i64 + 1;
            if next > req.offset && (data.is_empty() || data.len() < req.max_bytes as usize) {
                data.extend_from_slice(batch);
            }
        }
        Ok(Response::new(pb::FetchResponse {
            record_batches: data.freeze(),
            high_watermark: end,
            next_offset: end,
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
async fn serve(fake: &Fake) -> String {
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
async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `count` records to `orders`-`partition`, one batch each, values `v{i}`.
async fn produce_one_per_batch(cluster: &Cluster, partition: i32, count: usize) {
    let producer = Producer::new(cluster, ProducerConfig::default()).unwrap();
    for i in 0..count {
        let record = ProducerRecord::new("orders").partition(partition).value(format!("v{i}"));
        producer.send_and_wait(record).await.unwrap();
    }
    producer.close().await;
}

/// Polls until `count` records came or `limit` passed; returns their partitions and offsets.
async fn poll_offsets(consumer: &mut Consumer, count: usize, limit: Duration) -> Vec<(i32, i64)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut read = Vec::new();
    while read.len() < count && tokio::time::Instant::now() < deadline {
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        read.extend(records.iter().map(|r| (r.partition, r.offset)));
    }
    read
}

async fn cluster_with_topic(partitions: i32) -> (Fake, Cluster) {
    let fake = Fake::default();
    let address = serve(&fake).await;
    let mut config = ClientConfig::new([address]);
    config.request_timeout = Duration::from_secs(5);
    let cluster = Cluster::new(config).unwrap();
    Admin::new(&cluster).create_topic("orders", partitions, 1, HashMap::new()).await.unwrap();
    (fake, cluster)
}

/// Every acknowledged record is stored once, keyed records land where Kafka's partitioner
/// puts them, offsets per partition are dense from 0, and a consumer reads back exactly what
/// was produced, in order.
#[tokio::test]
async fn produced_records_are_acknowledged_and_read_back_in_order() {
    let (_fake, cluster) = cluster_with_topic(3).await;
    let producer = Producer::new(&cluster, ProducerConfig::default()).unwrap();
    let mut futures = Vec::new();
    for i in 0..200 {
        let record = ProducerRecord::new("orders")
            .key(format!("key-{}", i % 10))
            .value(format!("value-{i}"))
            .header("i", Some(Bytes::from(i.to_string())));
        futures.push(producer.send(record).await.unwrap());
    }
    let mut acked: HashMap<i32, Vec<(i64, usize)>> = HashMap::new();
    for (i, f) in futures.into_iter().enumerate() {
        let m = f.await.unwrap();
        let key = format!("key-{}", i % 10);
        assert_eq!(m.partition, partition_for_key(key.as_bytes(), 3), "record {i}");
        acked.entry(m.partition).or_default().push((m.offset, i));
    }
    for (partition, offsets) in &acked {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        let got: Vec<i64> = offsets.iter().map(|(o, _)| *o).collect();
        assert_eq!(got, expected, "partition {partition}: offsets dense, in send order");
    }
    producer.close().await;

    let mut consumer = Consumer::new(&cluster, ConsumerConfig::default()).unwrap();
    consumer.assign((0..3).map(|p| ("orders".to_string(), p)).collect());
    for p in 0..3 {
        assert_eq!(consumer.seek_to_beginning("orders", p).await.unwrap(), 0);
    }
    let mut read: HashMap<i32, Vec<(i64, usize)>> = HashMap::new();
    let mut total = 0;
    while total < 200 {
        let records = consumer.poll(Duration::from_secs(2)).await.unwrap();
        assert!(!records.is_empty(), "records keep coming until all 200 are read");
        for r in records {
            let i: usize =
                std::str::from_utf8(r.headers[0].1.as_ref().unwrap()).unwrap().parse().unwrap();
            assert_eq!(r.value.unwrap(), format!("value-{i}"));
            read.entry(r.partition).or_default().push((r.offset, i));
            total += 1;
        }
    }
    assert_eq!(read, acked);
    assert!(consumer.poll(Duration::from_millis(50)).await.unwrap().is_empty());
    assert_eq!(consumer.position("orders", 0), Some(acked[&0].len() as i64));
}

/// Retriable errors (NOT_LEADER, BROKER_FENCED) are retried after a metadata refresh, and the
/// record is stored once; an error that is not retriable fails the record with its code.
#[tokio::test]
async fn retriable_errors_are_retried_and_fatal_ones_fail_the_batch() {
    let (fake, cluster) = cluster_with_topic(1).await;
    let config = ProducerConfig { retry_backoff: Duration::from_millis(10), ..Default::default() };
    let producer = Producer::new(&cluster, config).unwrap();
    producer.send_and_wait(ProducerRecord::new("orders").value("warm-up")).await.unwrap();
    let metadata_before = fake.state().metadata_requests;
    fake.state().produce_failures.extend([
        status(ErrorCode::NotLeader, "broker 1 does not lead orders-0"),
        status(ErrorCode::BrokerFenced, "broker 1 is fenced"),
    ]);
    let m = producer.send_and_wait(ProducerRecord::new("orders").value("v")).await.unwrap();
    assert_eq!(m.offset, 1);
    assert_eq!(fake.state().produce_requests, 4);
    assert!(fake.state().metadata_requests >= metadata_before + 2, "each retry refreshed");

    fake.state()
        .produce_failures
        .push_back(status(ErrorCode::MessageTooLarge, "batch of 1 MiB exceeds 512 KiB"));
    let error = producer.send_and_wait(ProducerRecord::new("orders").value("x")).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::MessageTooLarge));
    assert!(error.to_string().contains("exceeds 512 KiB"), "{error}");
    assert_eq!(fake.end_offset("orders", 0), 2, "the failed record was not stored");
}

/// A record that keeps failing retriably fails once delivery_timeout has passed, naming the
/// last error.
#[tokio::test]
async fn delivery_timeout_bounds_retries() {
    let (fake, cluster) = cluster_with_topic(1).await;
    fake.state()
        .produce_failures
        .extend((0..1000).map(|_| status(ErrorCode::LeaderNotAvailable, "election under way")));
    let config = ProducerConfig {
        delivery_timeout: Duration::from_millis(300),
        retry_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    let producer = Producer::new(&cluster, config).unwrap();
    let error = producer.send_and_wait(ProducerRecord::new("orders").value("v")).await.unwrap_err();
    assert!(matches!(error, ClientError::TimedOut { .. }), "{error}");
    assert_eq!(error.code(), Some(ErrorCode::LeaderNotAvailable));
    assert!(error.to_string().contains("election under way"), "{error}");
}

/// acks=None resolves records with offset -1; flush waits until buffered records were sent.
#[tokio::test]
async fn acks_none_and_flush() {
    let (fake, cluster) = cluster_with_topic(2).await;
    let config = ProducerConfig {
        acks: Acks::None,
        linger: Duration::from_secs(3600),
        ..Default::default()
    };
    let producer = Producer::new(&cluster, config).unwrap();
    let futures: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(
                producer.send(ProducerRecord::new("orders").value(format!("{i}"))).await.unwrap(),
            );
        }
        v
    };
    producer.flush().await;
    let stored = fake.end_offset("orders", 0) + fake.end_offset("orders", 1);
    assert_eq!(stored, 10, "flush sent everything despite the hour-long linger");
    for f in futures {
        assert_eq!(f.await.unwrap().offset, -1);
    }
    producer.close().await;
    let error = producer.send(ProducerRecord::new("orders")).await.unwrap_err();
    assert!(matches!(error, ClientError::Closed));
}

/// Records that cannot fit in buffer_memory and partitions the topic lacks fail at once.
#[tokio::test]
async fn oversized_records_and_bad_partitions_fail_at_once() {
    let (_fake, cluster) = cluster_with_topic(2).await;
    let config = ProducerConfig { buffer_memory: 1024, batch_size: 256, ..Default::default() };
    let producer = Producer::new(&cluster, config).unwrap();
    let big = ProducerRecord::new("orders").value(vec![0u8; 2048]);
    let error = producer.send(big).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::MessageTooLarge), "{error}");
    let error = producer.send(ProducerRecord::new("orders").partition(2)).await.unwrap_err();
    assert!(matches!(error, ClientError::UnknownPartition { partitions: 2, .. }), "{error}");
    // Larger than batch_size but within buffer_memory: goes alone.
    let m = producer
        .send_and_wait(ProducerRecord::new("orders").partition(1).value(vec![1u8; 600]))
        .await
        .unwrap();
    assert_eq!((m.partition, m.offset), (1, 0));
}

/// An unknown topic fails after max_block with the reason.
#[tokio::test]
async fn unknown_topics_fail_after_max_block() {
    let (_fake, cluster) = cluster_with_topic(1).await;
    let config = ProducerConfig {
        max_block: Duration::from_millis(200),
        retry_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    let producer = Producer::new(&cluster, config).unwrap();
    let error = producer.send(ProducerRecord::new("nope").value("v")).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownTopicOrPartition), "{error}");
    assert!(error.to_string().contains("unknown topic nope"), "{error}");
}

/// A write sent to a follower controller follows its NOT_CONTROLLER redirect to the leader.
#[tokio::test]
async fn controller_writes_follow_redirects() {
    let leader = Fake::default();
    let leader_address = serve(&leader).await;
    let follower = Fake::default();
    let follower_address = serve(&follower).await;
    follower.state().redirect_writes_to = Some(leader_address);

    let cluster = Cluster::new(ClientConfig::new([follower_address])).unwrap();
    let admin = Admin::new(&cluster);
    let topic = admin.create_topic("orders", 4, 1, HashMap::new()).await.unwrap();
    assert_eq!(topic.partitions.len(), 4);
    assert!(leader.state().topics.contains_key("orders"));
    assert!(!follower.state().topics.contains_key("orders"));
    let again = admin.create_topic("orders", 4, 1, HashMap::new()).await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::TopicAlreadyExists));
    assert_eq!(admin.list_topics().await.unwrap(), ["orders"], "reads go to the leader too");
}

/// With no controller reachable, calls give up after request_timeout with the transport
/// error.
#[tokio::test]
async fn unreachable_controllers_time_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().to_string();
    drop(listener);
    let mut config = ClientConfig::new([closed.clone()]);
    config.request_timeout = Duration::from_millis(300);
    let cluster = Cluster::new(config).unwrap();
    let started = std::time::Instant::now();
    let error = Admin::new(&cluster).list_topics().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &error {
        ClientError::TimedOut { last: Some(last), .. } => {
            assert!(matches!(**last, ClientError::Transport { .. }), "{error}")
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(error.to_string().contains(&closed), "{error}");
}

/// A position past the log end resets per auto_offset_reset (here: earliest).
#[tokio::test]
async fn out_of_range_positions_reset() {
    let (_fake, cluster) = cluster_with_topic(1).await;
    let producer = Producer::new(&cluster, ProducerConfig::default()).unwrap();
    for i in 0..3 {
        producer.send_and_wait(ProducerRecord::new("orders").value(format!("{i}"))).await.unwrap();
    }
    let config =
        ConsumerConfig { auto_offset_reset: AutoOffsetReset::Earliest, ..Default::default() };
    let mut consumer = Consumer::new(&cluster, config).unwrap();
    consumer.assign(vec![("orders".into(), 0)]);
    consumer.seek("orders", 0, 100).unwrap();
    let records = consumer.poll(Duration::from_secs(2)).await.unwrap();
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2]);

    let mut strict = Consumer::new(
        &cluster,
        ConsumerConfig { auto_offset_reset: AutoOffsetReset::None, ..Default::default() },
    )
    .unwrap();
    strict.assign(vec![("orders".into(), 0)]);
    strict.seek("orders", 0, 100).unwrap();
    let error = strict.poll(Duration::from_secs(1)).await.unwrap_err();
    match error {
        ClientError::OffsetOutOfRange { log_start_offset, log_end_offset, .. } => {
            assert_eq!((log_start_offset, log_end_offset), (Some(0), Some(3)))
        }
        other => panic!("expected out of range, got {other}"),
    }
}

/// A seek while a fetch from the old position is in flight, or done but not yet returned by
/// `poll`, abandons that fetch: `poll` returns only records from the new position, in order,
/// never one from before it.
#[tokio::test]
async fn a_seek_during_a_fetch_never_returns_records_from_the_old_position() {
    let (fake, cluster) = cluster_with_topic(1).await;
    produce_one_per_batch(&cluster, 0, 10).await;
    let mut consumer = Consumer::new(&cluster, ConsumerConfig::default()).unwrap();
    consumer.assign(vec![("orders".into(), 0)]);

    // In flight: the broker answers only after the seek.
    fake.state().fetch_delays.insert(0, Duration::from_millis(300));
    consumer.seek("orders", 0, 0).unwrap();
    assert!(consumer.poll(Duration::from_millis(20)).await.unwrap().is_empty());
    wait_until(Duration::from_secs(5), "the fetch from offset 0", || {
        fake.state().fetches.contains(&(0, 0))
    })
    .await;
    consumer.seek("orders", 0, 5).unwrap();
    let read = poll_offsets(&mut consumer, 5, Duration::from_secs(5)).await;
    assert_eq!(read, (5..10).map(|o| (0, o)).collect::<Vec<_>>());

    // Done before the seek: its records 0..10 came back but were not returned yet.
    fake.state().fetch_delays.clear();
    consumer.seek("orders", 0, 0).unwrap();
    assert!(consumer.poll(Duration::ZERO).await.unwrap().is_empty());
    wait_until(Duration::from_secs(5), "a second fetch from offset 0", || {
        fake.state().fetches.iter().filter(|f| **f == (0, 0)).count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    consumer.seek("orders", 0, 8).unwrap();
    let read = poll_offsets(&mut consumer, 2, Duration::from_secs(5)).await;
    assert_eq!(read, [(0, 8), (0, 9)]);
    assert!(consumer.poll(Duration::from_millis(200)).await.unwrap().is_empty());
    assert_eq!(consumer.position("orders", 0), Some(10));
}

/// `position` counts only records that `poll` returned: records fetched ahead leave it
/// unchanged until a `poll` hands them out. The next fetch is sent before `poll` returns,
/// so the broker sees it without another `poll`.
#[tokio::test]
async fn position_moves_only_by_records_poll_returned() {
    let (fake, cluster) = cluster_with_topic(1).await;
    produce_one_per_batch(&cluster, 0, 10).await;
    let config =
        ConsumerConfig { fetch_max_wait: Duration::from_millis(200), ..Default::default() };
    let mut consumer = Consumer::new(&cluster, config).unwrap();
    consumer.assign(vec![("orders".into(), 0)]);
    consumer.seek("orders", 0, 0).unwrap();

    assert!(consumer.poll(Duration::ZERO).await.unwrap().is_empty());
    wait_until(Duration::from_secs(5), "the fetch from offset 0", || {
        fake.state().fetches.contains(&(0, 0))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(consumer.position("orders", 0), Some(0), "fetched ahead, not returned");
    let read = consumer.poll(Duration::from_secs(2)).await.unwrap();
    assert_eq!(read.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert_eq!(consumer.position("orders", 0), Some(10));

    wait_until(Duration::from_secs(5), "the next fetch, from offset 10, without a poll", || {
        fake.state().fetches.contains(&(0, 10))
    })
    .await;
    produce_one_per_batch(&cluster, 0, 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(consumer.position("orders", 0), Some(10), "fetched ahead, not returned");
    let read = poll_offsets(&mut consumer, 3, Duration::from_secs(5)).await;
    assert_eq!(read, [(0, 10), (0, 11), (0, 12)]);
    assert_eq!(consumer.position("orders", 0), Some(13));
}

/// Two partitions with records, one answering faster: a fetch that completes while `poll`
/// returns the other partition's records is kept for a later `poll`, not cancelled or
/// thrown away. Every record of both comes exactly once, in offset order per partition, and
/// no offset is fetched twice.
#[tokio::test]
async fn a_slower_partitions_fetch_is_kept_when_another_answers_first() {
    let (fake, cluster) = cluster_with_topic(2).await;
    produce_one_per_batch(&cluster, 0, 20).await;
    produce_one_per_batch(&cluster, 1, 20).await;
    fake.state().fetch_delays.insert(1, Duration::from_millis(30));
    // One batch, so one record, per fetch.
    let config = ConsumerConfig { max_partition_fetch_bytes: 1, ..Default::default() };
    let mut consumer = Consumer::new(&cluster, config).unwrap();
    consumer.assign(vec![("orders".into(), 0), ("orders".into(), 1)]);
    consumer.seek("orders", 0, 0).unwrap();
    consumer.seek("orders", 1, 0).unwrap();

    let read = poll_offsets(&mut consumer, 40, Duration::from_secs(10)).await;
    let expected: Vec<i64> = (0..20).collect();
    for p in 0..2 {
        let got: Vec<i64> = read.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
        assert_eq!(got, expected, "partition {p}: each record once, in order");
        let mut fetched: Vec<i64> =
            fake.state().fetches.iter().filter(|f| f.0 == p && f.1 < 20).map(|f| f.1).collect();
        fetched.sort();
        assert_eq!(fetched, expected, "partition {p}: each offset fetched once");
        assert_eq!(consumer.position("orders", p), Some(20));
    }
}

/// Dropping the consumer aborts its fetch in flight: the broker sees the request cancelled
/// instead of waiting out its max wait.
#[tokio::test]
async fn dropping_the_consumer_aborts_its_fetches() {
    let (fake, cluster) = cluster_with_topic(1).await;
    let config = ConsumerConfig { fetch_max_wait: Duration::from_secs(60), ..Default::default() };
    let mut consumer = Consumer::new(&cluster, config).unwrap();
    consumer.assign(vec![("orders".into(), 0)]);
    assert!(consumer.poll(Duration::from_millis(50)).await.unwrap().is_empty());
    wait_until(Duration::from_secs(5), "the long-poll fetch", || fake.state().fetches_open == 1)
        .await;
    drop(consumer);
    wait_until(Duration::from_secs(5), "the fetch to be cancelled", || {
        fake.state().fetches_open == 0
    })
    .await;
}

/// Fetch errors: retriable ones (NOT_LEADER, BROKER_FENCED) are retried within one `poll`,
/// each after a metadata refresh and a `retry_backoff` pause; one that is not retriable fails
/// the `poll` with its code, leaves the position, and the next `poll` fetches again.
#[tokio::test]
async fn fetch_errors_are_retried_or_reported() {
    let (fake, cluster) = cluster_with_topic(1).await;
    produce_one_per_batch(&cluster, 0, 3).await;
    let backoff = Duration::from_millis(50);
    let config = ConsumerConfig {
        retry_backoff: backoff,
        fetch_max_wait: Duration::from_millis(100),
        ..Default::default()
    };
    let mut consumer = Consumer::new(&cluster, config).unwrap();
    consumer.assign(vec![("orders".into(), 0)]);
    consumer.seek("orders", 0, 0).unwrap();

    let metadata_before = fake.state().metadata_requests;
    fake.state().fetch_failures.extend([
        status(ErrorCode::NotLeader, "broker 1 does not lead orders-0"),
        status(ErrorCode::BrokerFenced, "broker 1 is fenced"),
    ]);
    let started = std::time::Instant::now();
    let read = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(read.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(started.elapsed() >= 2 * backoff, "paused after each failure");
    assert!(fake.state().metadata_requests >= metadata_before + 2, "each retry refreshed");

    fake.state().fetch_failures.push_back(status(ErrorCode::InvalidRequest, "fetch refused"));
    let error = consumer.poll(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidRequest), "{error}");
    assert_eq!(consumer.position("orders", 0), Some(3));
    produce_one_per_batch(&cluster, 0, 1).await;
    let read = poll_offsets(&mut consumer, 1, Duration::from_secs(5)).await;
    assert_eq!(read, [(0, 3)]);
}
