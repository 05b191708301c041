//! The sendfile data listener against a real `tideline-broker` process: for the same request it
//! sends exactly the bytes gRPC Fetch returns (random offsets and size limits over a log of
//! many segments), answers several partitions in one request, waits like a long poll, reports
//! refusals per partition, and a client that goes away mid-transfer or reads slowly leaks no
//! file descriptor and holds up no other client. Against in-process brokers: followers
//! replicate through the leader's data port, and a replica fetch there has gRPC Fetch's
//! `replica_id` semantics (up to the log end, its offset moves the high watermark, a broker
//! that holds no follower replica is refused).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use tideline_broker::{Broker, BrokerConfig};
use tideline_common::{ErrorCode, error_code_of};
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_proto::data_frame;
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

/// The data listener's address of broker `id`, from the metadata.
async fn data_addr(cluster: &Cluster, id: i32) -> String {
    let m = cluster.metadata().await.unwrap();
    let e =
        m.brokers.iter().filter_map(|b| b.endpoint.as_ref()).find(|e| e.broker_id == id).unwrap();
    assert!(e.data_port > 0, "the broker advertises its data port: {e:?}");
    format!("{}:{}", e.host, e.data_port)
}

async fn send_request(stream: &mut TcpStream, request: &pb::DataFetchRequest) {
    data_frame::write_request(stream, request).await.unwrap();
}

/// One answer: the header and each partition's bytes.
async fn read_answer(stream: &mut TcpStream) -> (pb::DataFetchResponse, Vec<Vec<u8>>) {
    let header = data_frame::read_header(stream).await.unwrap();
    let mut payloads = Vec::new();
    for p in &header.partitions {
        let mut bytes = vec![0; p.payload_length as usize];
        stream.read_exact(&mut bytes).await.unwrap();
        payloads.push(bytes);
    }
    (header, payloads)
}

fn part(topic: &str, partition: i32, offset: i64, max_bytes: i32) -> pb::DataFetchPartition {
    pb::DataFetchPartition {
        topic: topic.into(),
        partition,
        offset,
        max_bytes,
        current_leader_epoch: None,
    }
}

fn request(partitions: Vec<pb::DataFetchPartition>, max_wait_ms: i32) -> pb::DataFetchRequest {
    pb::DataFetchRequest { partitions, max_wait_ms, min_bytes: 1, replica_id: None }
}

/// A replica fetch by broker `replica_id` of `topic`-0 at `offset`.
fn replica_request(
    topic: &str,
    offset: i64,
    replica_id: i32,
    max_wait_ms: i32,
) -> pb::DataFetchRequest {
    pb::DataFetchRequest {
        replica_id: Some(replica_id),
        ..request(vec![part(topic, 0, offset, 1 << 20)], max_wait_ms)
    }
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_the_bytes_grpc_fetch_returns_for_the_same_request() {
    let cluster = Cluster::start(&[1]).await;
    cluster.create_topic("t", 2, 1, &[]).await;
    let mut b = cluster.broker(1).await;
    // Batches of varied sizes over many 64 KiB segments.
    let mut produced = 0i64;
    for i in 0..120 {
        let records: Vec<pb::Record> = (0..(1 + i % 7))
            .map(|j| record(&format!("k{i}-{j}"), &"v".repeat(50 + (i * 37 + j) % 900), &[], 1))
            .collect();
        produced += records.len() as i64;
        b.produce(produce_records("t", 0, records)).await.unwrap();
    }
    let mut stream = TcpStream::connect(data_addr(&cluster, 1).await).await.unwrap();
    // A deterministic spread of offsets and limits, segment boundaries among them.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..60 {
        let offset = next(produced as u64) as i64;
        let max_bytes = [1, 100, 4096, 70_000, 1 << 20][next(5) as usize];
        let grpc = b
            .fetch(pb::FetchRequest {
                topic: "t".into(),
                partition: 0,
                offset,
                max_bytes,
                max_wait_ms: 0,
                min_bytes: 1,
                decode_records: false,
                replica_id: None,
                current_leader_epoch: None,
            })
            .await
            .unwrap()
            .into_inner();
        send_request(&mut stream, &request(vec![part("t", 0, offset, max_bytes)], 0)).await;
        let (header, payloads) = read_answer(&mut stream).await;
        let p = &header.partitions[0];
        assert_eq!(p.error_code, ErrorCode::Unspecified as i32, "{p:?}");
        assert_eq!(payloads[0], grpc.record_batches.to_vec(), "offset {offset} max {max_bytes}");
        assert_eq!(
            (p.high_watermark, p.log_start_offset),
            (grpc.high_watermark, grpc.log_start_offset)
        );
        assert_eq!(p.next_offset, grpc.next_offset);
    }
    // Several partitions in one request, one of them refused, in the order asked.
    let asked = vec![part("t", 0, 0, 1000), part("nope", 0, 0, 1000), part("t", 1, 0, 1000)];
    send_request(&mut stream, &request(asked, 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    let codes: Vec<i32> = header.partitions.iter().map(|p| p.error_code).collect();
    assert_eq!(
        codes,
        [ErrorCode::Unspecified, ErrorCode::UnknownTopicOrPartition, ErrorCode::Unspecified]
            .map(|c| c as i32)
    );
    assert!(!payloads[0].is_empty() && payloads[1].is_empty() && payloads[2].is_empty());
    // Out of range and negative offsets are refused with their codes.
    send_request(&mut stream, &request(vec![part("t", 0, produced + 5, 1000)], 0)).await;
    let (header, _) = read_answer(&mut stream).await;
    assert_eq!(header.partitions[0].error_code, ErrorCode::OffsetOutOfRange as i32);
    send_request(&mut stream, &request(vec![part("t", 0, -1, 1000)], 0)).await;
    let (header, _) = read_answer(&mut stream).await;
    assert_eq!(header.partitions[0].error_code, ErrorCode::InvalidRequest as i32);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_on_a_produce() {
    let cluster = Cluster::start(&[1]).await;
    cluster.create_topic("t", 1, 1, &[]).await;
    let addr = data_addr(&cluster, 1).await;
    let waiting = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        send_request(&mut stream, &request(vec![part("t", 0, 0, 1 << 20)], 20_000)).await;
        let (header, payloads) = read_answer(&mut stream).await;
        (started.elapsed(), header, payloads)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = cluster.broker(1).await;
    b.produce(produce_records("t", 0, vec![record("k", "v", &[], 1)])).await.unwrap();
    let (waited, header, payloads) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(20), "answered when the record came, not at the deadline");
    assert_eq!(header.partitions[0].next_offset, 1);
    assert!(!payloads[0].is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_or_read_slowly_leak_nothing_and_block_nobody() {
    let cluster = Cluster::start(&[1]).await;
    cluster.create_topic("t", 1, 1, &[]).await;
    let mut b = cluster.broker(1).await;
    for i in 0..40 {
        let records =
            (0..20).map(|j| record(&format!("{i}-{j}"), &"x".repeat(1000), &[], 1)).collect();
        b.produce(produce_records("t", 0, records)).await.unwrap();
    }
    let addr = data_addr(&cluster, 1).await;
    let pid = cluster.brokers[&1].child.id();
    let baseline = open_fds(pid);
    // Clients that ask for 32 MiB and go away having read a few bytes, or nothing.
    for i in 0..20 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        send_request(&mut s, &request(vec![part("t", 0, 0, 32 << 20)], 0)).await;
        if i % 2 == 0 {
            let mut some = [0u8; 64];
            let _ = s.read(&mut some).await;
        }
        drop(s);
    }
    // A client that never reads holds its own answer back, nobody else's.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    for _ in 0..50 {
        send_request(&mut slow, &request(vec![part("t", 0, 0, 32 << 20)], 0)).await;
    }
    let mut quick = TcpStream::connect(&addr).await.unwrap();
    send_request(&mut quick, &request(vec![part("t", 0, 0, 1 << 20)], 0)).await;
    let answered = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut quick)).await;
    let (header, _) = answered.expect("a slow reader blocks no other client");
    assert_eq!(header.partitions[0].error_code, ErrorCode::Unspecified as i32);
    drop(slow);
    drop(quick);
    wait_until(Duration::from_secs(10), "the broker closed every connection", || async {
        (open_fds(pid) <= baseline).then_some(())
    })
    .await;
    cluster.stop().await;
}

/// An in-process controller and brokers 1 and 2, which a test can stop one by one and whose
/// replication counters it reads. The lease (20 s) and `replica.lag.time.max.ms` (30 s) are
/// long: a stopped follower stays in the ISR for the whole test.
struct InProcess {
    controller: ControllerNode,
    controller_addr: String,
    brokers: BTreeMap<i32, Broker>,
    root: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> InProcess {
        InProcess::start_with(|_| {}).await
    }

    /// As [`InProcess::start`], each broker's config changed by `tune` first.
    async fn start_with(tune: impl Fn(&mut BrokerConfig)) -> InProcess {
        let root = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let controller_addr = listener.local_addr().unwrap().to_string();
        let peers = BTreeMap::from([(1, controller_addr.clone())]);
        let mut config = NodeConfig::new(1, root.path().join("c"), peers);
        config.broker_lease_ms = 20_000;
        let controller = ControllerNode::start(config, listener).await.unwrap();
        let mut brokers = BTreeMap::new();
        for id in [1, 2] {
            let dir = root.path().join(format!("b{id}"));
            let mut config = BrokerConfig::new(id, dir, vec![controller_addr.clone()]);
            config.replica_lag_time_max = Duration::from_secs(30);
            tune(&mut config);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            brokers.insert(id, Broker::start(config, listener).await.unwrap());
        }
        let cluster = InProcess { controller, controller_addr, brokers, root };
        wait_until(Duration::from_secs(20), "both brokers to register", || async {
            let m = cluster.metadata().await;
            (m.brokers.iter().filter(|b| !b.fenced).count() == 2).then_some(())
        })
        .await;
        cluster
    }

    async fn metadata(&self) -> pb::GetMetadataResponse {
        let mut c = ControllerServiceClient::connect(format!("http://{}", self.controller_addr))
            .await
            .unwrap();
        c.get_metadata(pb::GetMetadataRequest { topics: vec![] }).await.unwrap().into_inner()
    }

    /// Creates `name` (one partition, replication factor 2) and waits until both replicas are
    /// in sync: (leader, follower).
    async fn create_replicated_topic(&self, name: &str) -> (i32, i32) {
        let mut c = ControllerServiceClient::connect(format!("http://{}", self.controller_addr))
            .await
            .unwrap();
        let topic = c
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                replication_factor: 2,
                configs: Default::default(),
            })
            .await
            .unwrap()
            .into_inner()
            .topic
            .unwrap();
        let leader = topic.partitions[0].leader;
        let follower = 3 - leader;
        wait_until(Duration::from_secs(20), "the follower to join the ISR", || async {
            let m = self.metadata().await;
            let p = &m.topics.iter().find(|t| t.name == name)?.partitions[0];
            (p.isr.len() == 2).then_some(())
        })
        .await;
        (leader, follower)
    }

    async fn client(&self, id: i32) -> BrokerServiceClient<Channel> {
        let addr = self.brokers[&id].local_addr();
        BrokerServiceClient::connect(format!("http://{addr}")).await.unwrap()
    }

    /// The data listener's address of broker `id`, from the metadata.
    async fn data_addr(&self, id: i32) -> String {
        let m = self.metadata().await;
        let e = m
            .brokers
            .iter()
            .filter_map(|b| b.endpoint.as_ref())
            .find(|e| e.broker_id == id)
            .unwrap();
        format!("{}:{}", e.host, e.data_port)
    }

    /// The bytes of every segment file of `topic`-0 on broker `id`, in offset order.
    fn segment_bytes(&self, id: i32, topic: &str) -> Vec<u8> {
        let dir = self.root.path().join(format!("b{id}")).join(format!("{topic}-0"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "log"));
        files.sort();
        files.iter().flat_map(|f| std::fs::read(f).unwrap_or_default()).collect()
    }

    async fn stop(self) {
        for (_, b) in self.brokers {
            b.shutdown().await.unwrap();
        }
        self.controller.shutdown().await;
    }
}

fn produce(topic: &str, values: std::ops::Range<i32>, acks: pb::Acks) -> pb::ProduceRequest {
    let records = values.map(|i| record(&format!("k{i}"), &format!("v{i}"), &[], 1)).collect();
    pb::ProduceRequest { acks: acks as i32, ..produce_records(topic, 0, records) }
}

/// A follower replicates through the leader's data port, not gRPC Fetch: acks=all produces
/// are acknowledged (the follower's data-port fetches move the high watermark), the replicas
/// end byte-identical, and the leader counted replica fetches on its data port and none over
/// gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_replicate_through_the_leaders_data_port() {
    let cluster = InProcess::start().await;
    let (leader, follower) = cluster.create_replicated_topic("r").await;
    let mut b = cluster.client(leader).await;
    for i in 0..20 {
        b.produce(produce("r", i * 10..i * 10 + 10, pb::Acks::All)).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "replicas to be byte-identical", || async {
        let on_leader = cluster.segment_bytes(leader, "r");
        (!on_leader.is_empty() && cluster.segment_bytes(follower, "r") == on_leader).then_some(())
    })
    .await;
    let s = cluster.brokers[&leader].replication_status();
    assert!(s.data_port_replica_fetches > 0, "the follower fetched on the data port: {s:?}");
    assert_eq!(s.grpc_replica_fetches, 0, "and never over gRPC: {s:?}");
    assert_eq!(s.under_replicated, 0);
    cluster.stop().await;
}

/// A replica fetch on the data port has gRPC Fetch's `replica_id` semantics: it reads past the
/// high watermark up to the log end (a consumer's read stops at the high watermark), its
/// offset is recorded as the follower's log end and moves the high watermark, its long poll
/// wakes when the log end moves, an offset past the log end is OFFSET_OUT_OF_RANGE with no
/// high watermark to adopt, and it gets the bytes gRPC Fetch gives the same replica fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fetch_reads_to_the_log_end_and_moves_the_high_watermark() {
    let mut cluster = InProcess::start().await;
    let (leader, follower) = cluster.create_replicated_topic("r").await;
    let mut b = cluster.client(leader).await;
    b.produce(produce("r", 0..10, pb::Acks::All)).await.unwrap();
    // The follower stops (it stays in the ISR: long lease and lag), having fetched up to 10:
    // what is appended now is not committed.
    cluster.brokers.remove(&follower).unwrap().shutdown().await.unwrap();
    b.produce(produce("r", 10..15, pb::Acks::Leader)).await.unwrap();
    let mut stream = TcpStream::connect(cluster.data_addr(leader).await).await.unwrap();
    // A consumer reads nothing past the high watermark.
    send_request(&mut stream, &request(vec![part("r", 0, 10, 1 << 20)], 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    let p = &header.partitions[0];
    assert_eq!((p.error_code, p.high_watermark, p.next_offset), (0, 10, 10), "{p:?}");
    assert!(payloads[0].is_empty());
    // The follower's replica fetch reads on to the log end; the high watermark stays at 10.
    send_request(&mut stream, &replica_request("r", 10, follower, 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    let p = &header.partitions[0];
    assert_eq!((p.error_code, p.high_watermark, p.next_offset), (0, 10, 15), "{p:?}");
    let replicated = payloads[0].clone();
    assert!(!replicated.is_empty());
    // Fetching from 15 says the follower has everything: the high watermark moves to 15, and
    // a consumer reads the records.
    send_request(&mut stream, &replica_request("r", 15, follower, 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    let p = &header.partitions[0];
    assert_eq!((p.error_code, p.high_watermark, p.next_offset), (0, 15, 15), "{p:?}");
    assert!(payloads[0].is_empty());
    send_request(&mut stream, &request(vec![part("r", 0, 10, 1 << 20)], 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    assert_eq!(header.partitions[0].next_offset, 15);
    assert_eq!(payloads[0], replicated, "committed now, the same bytes for a consumer");
    // A replica fetch's long poll wakes when the log end moves (acks=leader: the high
    // watermark waits for this very follower, it cannot be what woke the fetch).
    let addr = cluster.data_addr(leader).await;
    let waiting = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        send_request(&mut stream, &replica_request("r", 15, follower, 20_000)).await;
        let (header, payloads) = read_answer(&mut stream).await;
        (started.elapsed(), header, payloads)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.produce(produce("r", 15..16, pb::Acks::Leader)).await.unwrap();
    let (waited, header, payloads) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(20), "answered when the record came, not at the deadline");
    let p = &header.partitions[0];
    assert_eq!((p.error_code, p.high_watermark, p.next_offset), (0, 15, 16), "{p:?}");
    assert!(!payloads[0].is_empty());
    // Past the log end: a diverged follower. The range comes without a high watermark.
    send_request(&mut stream, &replica_request("r", 17, follower, 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    let p = &header.partitions[0];
    assert_eq!(p.error_code, ErrorCode::OffsetOutOfRange as i32, "{p:?}");
    assert_eq!((p.log_start_offset, p.high_watermark, p.payload_length), (0, -1, 0));
    assert!(payloads[0].is_empty());
    // gRPC Fetch gives the same replica fetch the same bytes.
    let grpc = b
        .fetch(pb::FetchRequest {
            topic: "r".into(),
            partition: 0,
            offset: 10,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            min_bytes: 1,
            decode_records: false,
            replica_id: Some(follower),
            current_leader_epoch: None,
        })
        .await
        .unwrap()
        .into_inner();
    send_request(&mut stream, &replica_request("r", 10, follower, 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    assert_eq!(payloads[0], grpc.record_batches.to_vec());
    assert_eq!(header.partitions[0].next_offset, grpc.next_offset);
    assert_eq!(header.partitions[0].high_watermark, grpc.high_watermark);
    cluster.stop().await;
}

/// A replica fetch from a broker that holds no follower replica of the partition (no such
/// broker, or the leader itself) is refused on the data port with INVALID_REQUEST, naming the
/// broker and partition, as gRPC Fetch refuses it; the other partitions of the request are
/// still answered per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fetch_from_a_broker_holding_no_follower_replica_is_refused() {
    let cluster = Cluster::start(&[1]).await;
    cluster.create_topic("t", 1, 1, &[]).await;
    let mut b = cluster.broker(1).await;
    b.produce(produce_records("t", 0, vec![record("k", "v", &[], 1)])).await.unwrap();
    let mut stream = TcpStream::connect(data_addr(&cluster, 1).await).await.unwrap();
    for replica_id in [7, 1] {
        let asked = vec![part("t", 0, 0, 1000), part("nope", 0, 0, 1000)];
        let replica_fetch =
            pb::DataFetchRequest { replica_id: Some(replica_id), ..request(asked, 0) };
        send_request(&mut stream, &replica_fetch).await;
        let (header, payloads) = read_answer(&mut stream).await;
        let p = &header.partitions[0];
        assert_eq!(p.error_code, ErrorCode::InvalidRequest as i32, "{p:?}");
        assert_eq!(
            p.error_message,
            format!("broker {replica_id} holds no follower replica of t-0")
        );
        assert_eq!((p.high_watermark, p.log_start_offset, p.payload_length), (-1, -1, 0));
        assert_eq!(header.partitions[1].error_code, ErrorCode::UnknownTopicOrPartition as i32);
        assert!(payloads.iter().all(Vec::is_empty));
        let grpc = b
            .fetch(pb::FetchRequest { replica_id: Some(replica_id), ..fetch("t", 0, 0, 0) })
            .await
            .unwrap_err();
        assert_eq!(error_code_of(&grpc), Some(ErrorCode::InvalidRequest));
        assert_eq!(grpc.message(), p.error_message);
    }
    // The connection is still in step: a consumer fetch on it is answered.
    send_request(&mut stream, &request(vec![part("t", 0, 0, 1000)], 0)).await;
    let (header, payloads) = read_answer(&mut stream).await;
    assert_eq!(header.partitions[0].error_code, ErrorCode::Unspecified as i32);
    assert!(!payloads[0].is_empty());
    cluster.stop().await;
}

/// The data listener serves at most `--data-max-connections` connections at once: one more is
/// closed before any answer, the others keep working, and a slot freed by a client that left
/// serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_slots_come_back() {
    let cluster = Cluster::start_with_broker_args(1, &[1], &["--data-max-connections", "2"]).await;
    cluster.create_topic("t", 1, 1, &[]).await;
    let mut b = cluster.broker(1).await;
    b.produce(produce_records("t", 0, vec![record("k", "v", &[], 1)])).await.unwrap();
    let addr = data_addr(&cluster, 1).await;
    let ask = request(vec![part("t", 0, 0, 1000)], 0);
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    for s in [&mut first, &mut second] {
        send_request(s, &ask).await;
        let (header, _) = read_answer(s).await;
        assert_eq!(header.partitions[0].error_code, ErrorCode::Unspecified as i32);
    }
    // The third is closed: its read ends without an answer to a valid request.
    let mut third = TcpStream::connect(&addr).await.unwrap();
    let _ = data_frame::write_request(&mut third, &ask).await;
    let mut buf = [0u8; 4];
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "the connection beyond the limit is closed: {n:?}");
    // The first two still work; once one leaves, a new connection is served.
    send_request(&mut second, &ask).await;
    read_answer(&mut second).await;
    drop(first);
    wait_until(Duration::from_secs(10), "a freed slot to serve a new connection", || async {
        let mut s = TcpStream::connect(&addr).await.ok()?;
        data_frame::write_request(&mut s, &ask).await.ok()?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok().map(|_| ())
    })
    .await;
    cluster.stop().await;
}

/// A follower turned away by a leader whose data port is at its connection limit replicates
/// over gRPC `Fetch` instead: the follower joins the ISR and acks=all produces succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_turned_away_by_the_data_port_replicates_over_grpc() {
    let cluster = InProcess::start_with(|c| c.data_max_connections = 1).await;
    // Each broker's only data connection is taken by a client that keeps it.
    let mut held = Vec::new();
    for id in [1, 2] {
        let mut s = TcpStream::connect(cluster.data_addr(id).await).await.unwrap();
        send_request(&mut s, &request(vec![part("none", 0, 0, 10)], 0)).await;
        read_answer(&mut s).await;
        held.push(s);
    }
    let (leader, _) = cluster.create_replicated_topic("r").await;
    let mut b = cluster.client(leader).await;
    b.produce(produce("r", 0..10, pb::Acks::All)).await.unwrap();
    let s = cluster.brokers[&leader].replication_status();
    assert!(s.grpc_replica_fetches > 0, "the follower fetched over gRPC: {s:?}");
    drop(held);
    cluster.stop().await;
}
