//! The sendfile data listener against a real `tideline-broker` process: for the same request it
//! sends exactly the bytes gRPC Fetch returns (random offsets and size limits over a log of
//! many segments), answers several partitions in one request, waits like a long poll, reports
//! refusals per partition, and a client that goes away mid-transfer or reads slowly leaks no
//! file descriptor and holds up no other client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use tideline_common::ErrorCode;
use tideline_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The data listener's address of broker `id`, from the metadata.
async fn data_addr(cluster: &Cluster, id: i32) -> String {
    let m = cluster.metadata().await.unwrap();
    let e =
        m.brokers.iter().filter_map(|b| b.endpoint.as_ref()).find(|e| e.broker_id == id).unwrap();
    assert!(e.data_port > 0, "the broker advertises its data port: {e:?}");
    format!("{}:{}", e.host, e.data_port)
}

async fn send_request(stream: &mut TcpStream, request: &pb::DataFetchRequest) {
    let body = request.encode_to_vec();
    stream.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
}

/// One answer: the header and each partition's bytes.
async fn read_answer(stream: &mut TcpStream) -> (pb::DataFetchResponse, Vec<Vec<u8>>) {
    let len = stream.read_u32().await.unwrap();
    let mut header = vec![0; len as usize];
    stream.read_exact(&mut header).await.unwrap();
    let header = pb::DataFetchResponse::decode(header.as_slice()).unwrap();
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
    pb::DataFetchRequest { partitions, max_wait_ms, min_bytes: 1 }
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
