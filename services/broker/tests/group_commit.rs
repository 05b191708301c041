//! Group commit on an in-process broker: many produce requests in flight at once to one
//! partition (HTTP/2 streams on one connection, plus idempotent producers and corrupt
//! batches among them) are written with fewer log writes than requests, each good request
//! gets its own dense offset range, a bad one is refused alone, and every record reads back
//! once.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tideline_broker::{Broker, BrokerConfig};
use tideline_common::testing::wait_until;
use tideline_common::{ErrorCode, error_code_of};
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_log::{Compression, RecordBatch, RecordBatchBuilder};
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;

/// A batch of `n` records whose values name `tag`; idempotent when `producer` is given.
fn batch(tag: &str, n: usize, producer: Option<(i64, i32)>) -> Bytes {
    let mut b = RecordBatchBuilder::new(Compression::None);
    for i in 0..n {
        b.append(1, None, Some(format!("{tag}/{i}").as_bytes()), &[]);
    }
    if let Some((id, sequence)) = producer {
        b = b.producer(id, 0, sequence);
    }
    b.build()
}

fn request(bytes: Bytes) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "g".into(),
        partition: 0,
        acks: pb::Acks::Leader as i32,
        timeout_ms: 10_000,
        current_leader_epoch: None,
        payload: Some(pb::produce_request::Payload::RecordBatches(bytes)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_produces_share_log_writes_and_each_gets_its_own_offsets() {
    let root = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = NodeConfig::new(1, root.path().join("c"), BTreeMap::from([(1, addr.clone())]));
    let controller = ControllerNode::start(config, listener).await.unwrap();
    let config = BrokerConfig::new(1, root.path().join("b1"), vec![addr.clone()]);
    let broker =
        Broker::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let mut c = ControllerServiceClient::connect(format!("http://{addr}")).await.unwrap();
    wait_until(Duration::from_secs(20), "the broker to register", || {
        let mut c = c.clone();
        async move {
            let m = c.get_metadata(pb::GetMetadataRequest { topics: vec![] }).await.ok()?;
            m.into_inner().brokers.iter().any(|b| !b.fenced).then_some(())
        }
    })
    .await;
    c.create_topic(pb::CreateTopicRequest {
        name: "g".into(),
        partitions: 1,
        replication_factor: 1,
        configs: Default::default(),
    })
    .await
    .unwrap();
    let client =
        BrokerServiceClient::connect(format!("http://{}", broker.local_addr())).await.unwrap();
    wait_until(Duration::from_secs(20), "the broker to lead g-0", || {
        let mut client = client.clone();
        async move { client.produce(request(batch("warm-up", 1, None))).await.ok().map(|_| ()) }
    })
    .await;
    let before = broker.produce_writes();

    let mut expected = vec!["warm-up/0".to_string()];
    let mut ranges = vec![(0i64, 0i64)];
    for round in 0..5 {
        let mut tasks = tokio::task::JoinSet::new();
        // 48 plain requests of 10 records, 4 corrupt ones.
        for k in 0..52 {
            let mut client = client.clone();
            let tag = format!("r{round}-{k}");
            let mut bytes = batch(&tag, 10, None).to_vec();
            let corrupt = k >= 48;
            if corrupt {
                let last = bytes.len() - 1;
                bytes[last] ^= 0x55;
            } else {
                expected.extend((0..10).map(|i| format!("{tag}/{i}")));
            }
            tasks.spawn(async move {
                let answer = client.produce(request(Bytes::from(bytes))).await;
                (corrupt, vec![answer.map(tonic::Response::into_inner)])
            });
        }
        // 8 idempotent producers, each two batches one after the other, the second also
        // retried (a duplicate: answered with the first write's offsets, not written again).
        for p in 0..8i64 {
            let mut client = client.clone();
            let tag = format!("p{round}-{p}");
            expected.extend((0..10).map(|i| format!("{tag}-a/{i}")));
            expected.extend((0..10).map(|i| format!("{tag}-b/{i}")));
            let id = 1000 + round * 8 + p;
            tasks.spawn(async move {
                let first = batch(&format!("{tag}-a"), 10, Some((id, 0)));
                let a = client.produce(request(first)).await.unwrap().into_inner();
                let second = batch(&format!("{tag}-b"), 10, Some((id, 10)));
                let b = client.produce(request(second.clone())).await.unwrap().into_inner();
                let again = client.produce(request(second)).await.unwrap().into_inner();
                assert_eq!((again.base_offset, again.last_offset), (b.base_offset, b.last_offset));
                (false, vec![Ok(a), Ok(b)])
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (corrupt, answers) = joined.unwrap();
            for answer in answers {
                if corrupt {
                    let e = answer.expect_err("a corrupt batch is refused");
                    assert_eq!(error_code_of(&e), Some(ErrorCode::CorruptMessage), "{e:?}");
                } else {
                    let r = answer.unwrap();
                    assert_eq!(r.last_offset - r.base_offset, 9, "{r:?}");
                    ranges.push((r.base_offset, r.last_offset));
                }
            }
        }
    }
    // Every good request's range is its own, and together they cover the log densely.
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "ranges {:?} and {:?}", w[0], w[1]);
    }
    let end = ranges.last().unwrap().1 + 1;
    assert_eq!(end as usize, expected.len());

    // Read back: every record once.
    let mut client = client.clone();
    let mut got = Vec::new();
    let mut offset = 0;
    while offset < end {
        let f = client
            .fetch(pb::FetchRequest {
                topic: "g".into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                min_bytes: 1,
                decode_records: false,
                replica_id: None,
                current_leader_epoch: None,
            })
            .await
            .unwrap()
            .into_inner();
        let mut rest = &f.record_batches[..];
        while !rest.is_empty() {
            let (b, tail) = RecordBatch::parse(rest).unwrap();
            b.verify_crc().unwrap();
            let records = b.records().unwrap();
            for r in records.iter() {
                let r = r.unwrap();
                got.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
            offset = b.next_offset();
            rest = tail;
        }
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected);

    let after = broker.produce_writes();
    let (writes, requests) = (after.0 - before.0, after.1 - before.1);
    // 5 rounds of 52 plain (4 of them refused by the write's validation) and 16 idempotent
    // requests; the retried duplicates are answered without a write.
    assert_eq!(requests, 5 * (52 + 16), "requests carried by log writes");
    assert!(writes < requests, "concurrent produces were grouped: {writes} writes for {requests}");
    broker.shutdown().await.unwrap();
    controller.shutdown().await;
}
