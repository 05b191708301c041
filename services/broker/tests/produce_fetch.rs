//! Produce, fetch and ListOffsets against real `tideline-broker` processes: round trips keep
//! keys, values, headers, timestamps and order; data survives restarts; a long poll wakes on new
//! data; non-leaders redirect; a fenced broker serves nothing; bad input gets its documented
//! code and stores nothing.

mod common;

use std::time::Duration;

use common::*;
use tideline_common::{ErrorCode, error_code_of, leader_hint_of, offset_range_of};
use tideline_log::{Compression, RecordBatchBuilder};
use tideline_proto::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (tonic::Code, Option<ErrorCode>) {
    let s = r.expect_err("the request must fail");
    (s.code(), error_code_of(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_records_and_survives_restarts() {
    let mut cluster = Cluster::start(&[1]).await;
    cluster.create_topic("orders", 1, 1, &[]).await;
    let mut b = cluster.broker(1).await;

    // Plain records, which the broker encodes.
    let sent: Vec<pb::Record> = (0..50)
        .map(|i| {
            record(
                &format!("k{i}"),
                &format!("value {i}"),
                &[("trace", Some("abc")), ("empty", None)],
                1_700_000_000_000 + i,
            )
        })
        .collect();
    let r =
        b.produce(produce_records("orders", 0, sent[..30].to_vec())).await.unwrap().into_inner();
    assert_eq!((r.base_offset, r.last_offset), (0, 29));
    assert!(r.log_append_time_ms > 1_700_000_000_000);
    let r =
        b.produce(produce_records("orders", 0, sent[30..].to_vec())).await.unwrap().into_inner();
    assert_eq!((r.base_offset, r.last_offset), (30, 49));

    // A batch a Kafka producer built, compressed, sent as raw bytes.
    let mut builder = RecordBatchBuilder::new(Compression::Zstd);
    for i in 50..60 {
        builder.append(1_700_000_000_000 + i, Some(format!("k{i}").as_bytes()), None, &[]);
    }
    let r =
        b.produce(produce_bytes("orders", 0, builder.build().to_vec())).await.unwrap().into_inner();
    assert_eq!((r.base_offset, r.last_offset), (50, 59));

    let check = |got: &[pb::Record]| {
        assert_eq!(got.len(), 60);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
            assert_eq!(r.timestamp_ms, 1_700_000_000_000 + i as i64);
            if i < 50 {
                assert_eq!(r.value.as_deref(), Some(format!("value {i}").as_bytes()));
                assert_eq!(r.headers, sent[i].headers, "headers kept, null value included");
            } else {
                assert_eq!(r.value, None, "a null value stays null");
            }
        }
    };
    check(&read_all(&mut b, "orders", 0, 0).await);
    // Decoded fetches stop near max_bytes (whole batches) and say where to go on; raw batches
    // are not sent twice.
    let mut small = fetch("orders", 0, 0, 0);
    small.max_bytes = 100;
    let part = b.fetch(small).await.unwrap().into_inner();
    assert!(part.record_batches.is_empty(), "decoded records come without the raw batches");
    assert!(!part.records.is_empty() && part.records.len() < 60, "{}", part.records.len());
    assert_eq!(part.next_offset, part.records.last().unwrap().offset + 1);
    // Reading from the middle of a batch skips the records before the offset asked for.
    let mid = read_all(&mut b, "orders", 0, 35).await;
    assert_eq!(mid.first().map(|r| r.offset), Some(35));

    // ListOffsets: earliest, latest, by time.
    let list = |spec: pb::OffsetSpec, ts: i64| pb::ListOffsetsRequest {
        topic: "orders".into(),
        partition: 0,
        spec: spec as i32,
        timestamp_ms: ts,
    };
    let earliest = b.list_offsets(list(pb::OffsetSpec::Earliest, 0)).await.unwrap().into_inner();
    let latest = b.list_offsets(list(pb::OffsetSpec::Latest, 0)).await.unwrap().into_inner();
    let at = b
        .list_offsets(list(pb::OffsetSpec::Timestamp, 1_700_000_000_042))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (earliest.offset, latest.offset, at.offset, at.timestamp_ms),
        (0, 60, 42, 1_700_000_000_042)
    );

    // A clean restart (SIGTERM) and a crash (kill -9) both keep every acknowledged record.
    assert!(cluster.brokers.get_mut(&1).unwrap().terminate(), "clean exit on SIGTERM");
    cluster.start_broker(1).await;
    cluster.wait_leader_ready("orders", 0).await;
    let mut b = cluster.broker(1).await;
    check(&read_all(&mut b, "orders", 0, 0).await);
    cluster.brokers.get_mut(&1).unwrap().signal("KILL");
    cluster.brokers.get_mut(&1).unwrap().child.wait().unwrap();
    cluster.start_broker(1).await;
    cluster.wait_leader_ready("orders", 0).await;
    let mut b = cluster.broker(1).await;
    check(&read_all(&mut b, "orders", 0, 0).await);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_wakes_on_new_data() {
    let cluster = Cluster::start(&[1]).await;
    cluster.create_topic("events", 1, 1, &[]).await;
    let mut b = cluster.broker(1).await;
    // Health follows the broker's state within its 100 ms housekeeping tick.
    wait_until(Duration::from_secs(5), "health to report serving", || async {
        (cluster.broker_health(1).await == ServingStatus::Serving).then_some(())
    })
    .await;
    // Nothing to read: the fetch waits (up to 20 s) until a produce arrives.
    let mut reader = b.clone();
    let waiting = tokio::spawn(async move { reader.fetch(fetch("events", 0, 0, 20_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the fetch waits for data");
    b.produce(produce_records("events", 0, vec![record("k", "hello", &[], 0)])).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the fetch returns when data arrives, long before max_wait_ms")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0].value.as_deref(), Some(&b"hello"[..]));
    assert_eq!((got.high_watermark, got.next_offset), (1, 1));
    // With no new data the fetch answers empty at max_wait_ms.
    let empty = b.fetch(fetch("events", 0, 1, 100)).await.unwrap().into_inner();
    assert!(empty.records.is_empty() && empty.record_batches.is_empty());
    assert_eq!(empty.next_offset, 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_codes_and_stores_nothing() {
    let cluster = Cluster::start(&[1]).await;
    cluster.create_topic("strict", 2, 1, &[("max.message.bytes", "2000")]).await;
    let mut b = cluster.broker(1).await;
    b.produce(produce_records("strict", 0, vec![record("k", "v", &[], 0)])).await.unwrap();

    let mut good = RecordBatchBuilder::new(Compression::None);
    good.append(1, Some(b"k"), Some(b"v"), &[]);
    let good = good.build().to_vec();
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let mut big = RecordBatchBuilder::new(Compression::None);
    big.append(1, None, Some(&[7u8; 4000]), &[]);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);

    let cases: Vec<(&str, pb::ProduceRequest, tonic::Code, ErrorCode)> = vec![
        (
            "unknown topic",
            produce_bytes("nope", 0, good.clone()),
            tonic::Code::NotFound,
            ErrorCode::UnknownTopicOrPartition,
        ),
        (
            "partition out of range",
            produce_bytes("strict", 2, good.clone()),
            tonic::Code::NotFound,
            ErrorCode::UnknownTopicOrPartition,
        ),
        (
            "negative partition",
            produce_bytes("strict", -1, good.clone()),
            tonic::Code::NotFound,
            ErrorCode::UnknownTopicOrPartition,
        ),
        (
            "corrupt crc",
            produce_bytes("strict", 0, bad_crc),
            tonic::Code::InvalidArgument,
            ErrorCode::CorruptMessage,
        ),
        (
            "truncated batch",
            produce_bytes("strict", 0, truncated),
            tonic::Code::InvalidArgument,
            ErrorCode::CorruptMessage,
        ),
        (
            "garbage",
            produce_bytes("strict", 0, vec![1, 2, 3]),
            tonic::Code::InvalidArgument,
            ErrorCode::CorruptMessage,
        ),
        (
            "larger than max.message.bytes",
            produce_bytes("strict", 0, big.build().to_vec()),
            tonic::Code::InvalidArgument,
            ErrorCode::MessageTooLarge,
        ),
        (
            "empty payload",
            produce_bytes("strict", 0, vec![]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidRequest,
        ),
        (
            "empty record list",
            produce_records("strict", 0, vec![]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidRequest,
        ),
    ];
    for (what, request, grpc, code) in cases {
        assert_eq!(code_of(b.produce(request).await), (grpc, Some(code)), "{what}");
    }
    let mut snappy = produce_records("strict", 0, vec![record("k", "v", &[], 0)]);
    if let Some(pb::produce_request::Payload::Records(l)) = &mut snappy.payload {
        l.compression = "snappy".into();
    }
    assert_eq!(
        code_of(b.produce(snappy).await),
        (tonic::Code::InvalidArgument, Some(ErrorCode::UnsupportedCompression))
    );

    // Nothing of the refused requests was stored.
    let got = read_all(&mut b, "strict", 0, 0).await;
    assert_eq!(got.len(), 1);

    // Fetch outside the log: the valid range comes with the status.
    let s = b.fetch(fetch("strict", 0, 5, 0)).await.unwrap_err();
    assert_eq!(error_code_of(&s), Some(ErrorCode::OffsetOutOfRange));
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    assert_eq!(offset_range_of(&s), Some((0, 1)));
    let mut negative = fetch("strict", 0, 0, 0);
    negative.max_bytes = -1;
    assert_eq!(code_of(b.fetch(negative).await).1, Some(ErrorCode::InvalidRequest));
    let unspecified =
        pb::ListOffsetsRequest { topic: "strict".into(), partition: 0, spec: 0, timestamp_ms: 0 };
    assert_eq!(code_of(b.list_offsets(unspecified).await).1, Some(ErrorCode::InvalidRequest));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_leaders_redirect_and_fenced_brokers_serve_nothing() {
    let cluster = Cluster::start(&[1, 2]).await;
    let topic = cluster.create_topic("pairs", 2, 1, &[]).await;
    let leader = topic.partitions[0].leader;
    let other = if leader == 1 { 2 } else { 1 };

    // The broker that does not lead partition 0 answers NOT_LEADER naming the leader.
    let mut b = cluster.broker(other).await;
    let s =
        b.produce(produce_records("pairs", 0, vec![record("k", "v", &[], 0)])).await.unwrap_err();
    assert_eq!(error_code_of(&s), Some(ErrorCode::NotLeader));
    let m = cluster.metadata().await.unwrap();
    let e = m
        .brokers
        .iter()
        .find_map(|b| b.endpoint.clone().filter(|e| e.broker_id == leader))
        .unwrap();
    assert_eq!(leader_hint_of(&s), Some((i64::from(leader), format!("{}:{}", e.host, e.port))));

    // SIGSTOP the leader: its lease lapses, the controller fences it and the partition has no
    // leader (no other replica to move to with replication factor 1).
    let mut lb = cluster.broker(leader).await;
    lb.produce(produce_records("pairs", 0, vec![record("k", "before", &[], 0)])).await.unwrap();
    cluster.brokers[&leader].signal("STOP");
    wait_until(Duration::from_secs(20), "the stopped broker to be fenced", || async {
        let m = cluster.metadata().await?;
        let fenced =
            m.brokers.iter().any(|b| b.fenced && b.endpoint.as_ref().unwrap().broker_id == leader);
        (fenced && cluster.leader_of("pairs", 0).await == -1).then_some(())
    })
    .await;

    // Resumed, it registers again (its lease lapsed while it was stopped), gets its
    // leadership back, and still has its data.
    cluster.brokers[&leader].signal("CONT");
    cluster.wait_broker_live(leader).await;
    cluster.wait_leader_ready("pairs", 0).await;
    let mut lb = cluster.broker(leader).await;
    let got = read_all(&mut lb, "pairs", 0, 0).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value.as_deref(), Some(&b"before"[..]));
    wait_until(Duration::from_secs(5), "health to report serving", || async {
        (cluster.broker_health(leader).await == ServingStatus::Serving).then_some(())
    })
    .await;

    // With no controller to renew its lease, a broker stops serving once the lease lapses,
    // and says so in its health status.
    let mut cluster = cluster;
    cluster.stop_controller().await;
    let mut lb = cluster.broker(leader).await;
    wait_until(Duration::from_secs(20), "the broker to fence itself", || {
        let mut lb = lb.clone();
        async move {
            let s = lb.fetch(fetch("pairs", 0, 0, 0)).await.err()?;
            (error_code_of(&s) == Some(ErrorCode::BrokerFenced)).then_some(())
        }
    })
    .await;
    let s =
        lb.produce(produce_records("pairs", 0, vec![record("k", "v", &[], 0)])).await.unwrap_err();
    assert_eq!(error_code_of(&s), Some(ErrorCode::BrokerFenced));
    wait_until(Duration::from_secs(5), "health to report not serving", || async {
        (cluster.broker_health(leader).await == ServingStatus::NotServing).then_some(())
    })
    .await;
    cluster.stop().await;
}
