//! The client against real Tideline services in this process: one controller (a one-node Raft
//! quorum) and one or two brokers on loopback ports. Producer to Consumer round trips keep
//! every acknowledged record exactly once; the producer rides out a broker restart; consumer
//! seeks and offset resets; admin calls and the error codes of refused ones.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{TestCluster, await_all, poll_at_least, wait_until};
use tideline_client::partitioner::partition_for_key;
use tideline_client::{
    Acks, Admin, AutoOffsetReset, ClientError, Consumer, ConsumerConfig, ConsumerRecord, ErrorCode,
    Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};

/// Create time of the first record the tests send (2023-11-14).
const TS0: i64 = 1_700_000_000_000;

fn configs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The error's code, failing the test when the call succeeded.
fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    result.expect_err("the call must fail").code()
}

/// Record `i` of the round trip: keyed (`k0`..`k99`) except every sixth, a sequence number in
/// a header and in the value (a few values null), a null header on every third and an empty
/// one on every fourth, an explicit timestamp.
fn mixed_record(topic: &str, i: usize) -> ProducerRecord {
    let mut r = ProducerRecord::new(topic)
        .timestamp_ms(TS0 + i as i64)
        .header("seq", Some(Bytes::from(i.to_string())));
    if i % 6 != 5 {
        r = r.key(format!("k{}", i % 100));
    }
    if i % 500 != 7 {
        r = r.value(format!("value-{i}-{}", "x".repeat(i % 40)));
    }
    if i.is_multiple_of(3) {
        r = r.header("null", None);
    }
    if i.is_multiple_of(4) {
        r = r.header("empty", Some(Bytes::new()));
    }
    r
}

/// Checks that the acknowledgements of `sent` cover each partition's offsets densely from 0,
/// each offset once, and returns the index of the record acknowledged at each
/// (partition, offset) plus the record count per partition.
fn check_acks(
    sent: &[ProducerRecord],
    acks: &[RecordMetadata],
    partitions: i32,
) -> (HashMap<(i32, i64), usize>, BTreeMap<i32, i64>) {
    assert_eq!(sent.len(), acks.len());
    let mut at = HashMap::new();
    let mut counts: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    for (i, (record, ack)) in sent.iter().zip(acks).enumerate() {
        assert_eq!(ack.topic, record.topic);
        assert!((0..partitions).contains(&ack.partition), "record {i}: {ack:?}");
        if let Some(ts) = record.timestamp_ms {
            assert_eq!(ack.timestamp_ms, ts, "record {i}");
        }
        if let Some(previous) = at.insert((ack.partition, ack.offset), i) {
            panic!("records {previous} and {i} both acknowledged at {ack:?}");
        }
        *counts.get_mut(&ack.partition).unwrap() += 1;
    }
    for (&p, &count) in &counts {
        for offset in 0..count {
            assert!(at.contains_key(&(p, offset)), "no record acknowledged at {p}@{offset}");
        }
    }
    (at, counts)
}

/// Checks that `read` is exactly the acknowledged records: per partition offsets dense from 0
/// in order, each equal in key, value, headers and timestamp to the record acknowledged there.
fn check_read_back(
    sent: &[ProducerRecord],
    at: &HashMap<(i32, i64), usize>,
    counts: &BTreeMap<i32, i64>,
    read: &[ConsumerRecord],
) {
    let mut next: BTreeMap<i32, i64> = counts.keys().map(|&p| (p, 0)).collect();
    for r in read {
        let expected_offset = next.get_mut(&r.partition).expect("an assigned partition");
        assert_eq!(r.offset, *expected_offset, "{}-{} read out of order", r.topic, r.partition);
        *expected_offset += 1;
        let i = *at.get(&(r.partition, r.offset)).unwrap_or_else(|| {
            panic!("read {}@{} that was never acknowledged", r.partition, r.offset)
        });
        let s = &sent[i];
        assert_eq!(&*r.topic, s.topic.as_str());
        assert_eq!(r.key, s.key, "key of record {i}");
        assert_eq!(r.value, s.value, "value of record {i}");
        assert_eq!(r.headers, s.headers, "headers of record {i}");
        assert_eq!(Some(r.timestamp_ms), s.timestamp_ms, "timestamp of record {i}");
    }
    assert_eq!(&next, counts, "records read per partition");
}

/// Assigns the partitions of `counts` from their beginning (which must be offset 0), reads as
/// many records as `counts` adds up to, and checks nothing more is stored: each partition's
/// end is its count.
async fn read_everything(
    consumer: &mut Consumer,
    topic: &str,
    counts: &BTreeMap<i32, i64>,
) -> Vec<ConsumerRecord> {
    consumer.assign(counts.keys().map(|&p| (topic.to_string(), p)).collect());
    for &p in counts.keys() {
        assert_eq!(consumer.seek_to_beginning(topic, p).await.unwrap(), 0);
    }
    let total = counts.values().sum::<i64>() as usize;
    let read = poll_at_least(consumer, total, Duration::from_secs(30)).await;
    assert_eq!(read.len(), total, "more records read than acknowledged");
    for (&p, &count) in counts {
        assert_eq!(consumer.position(topic, p), Some(count));
        assert_eq!(consumer.seek_to_end(topic, p).await.unwrap(), count, "{topic}-{p} end");
    }
    read
}

/// Every acknowledged record of a keyed and unkeyed mix over two brokers comes back exactly
/// once: per partition at dense offsets from 0, in send order per key, with its key, value,
/// headers and timestamp. Keyed records sit on Kafka's murmur2 partition; unkeyed ones move
/// to another partition whenever their sticky partition's batch fills up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_returns_exactly_the_acknowledged_records() {
    const TOPIC: &str = "orders";
    const PARTITIONS: i32 = 4;
    let cluster = TestCluster::start(&[1, 2]).await;
    let topic = cluster.create_topic(TOPIC, PARTITIONS, 1, &[]).await;
    let leaders: BTreeSet<i32> = topic.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(leaders, BTreeSet::from([1, 2]), "both brokers lead partitions");
    let client = cluster.client();

    // 16 KiB batches: the ~50 KiB of unkeyed records fill several, so their sticky partition
    // changes at least once whatever the random choices.
    let config = ProducerConfig { batch_size: 16 << 10, ..ProducerConfig::default() };
    let producer = Producer::new(&client, config).unwrap();
    let sent: Vec<ProducerRecord> = (0..6000).map(|i| mixed_record(TOPIC, i)).collect();
    let mut deliveries = Vec::with_capacity(sent.len());
    for record in &sent {
        deliveries.push(producer.send(record.clone()).await.expect("send"));
    }
    let acks: Vec<RecordMetadata> = await_all(deliveries, Duration::from_secs(60))
        .await
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("record {i} not delivered: {e}")))
        .collect();
    producer.close().await;

    let (at, counts) = check_acks(&sent, &acks, PARTITIONS);
    let mut last_offset_of_key: HashMap<&Bytes, i64> = HashMap::new();
    let mut unkeyed_partitions = BTreeSet::new();
    for (record, ack) in sent.iter().zip(&acks) {
        match &record.key {
            Some(key) => {
                assert_eq!(ack.partition, partition_for_key(key, PARTITIONS), "{key:?}");
                if let Some(previous) = last_offset_of_key.insert(key, ack.offset) {
                    assert!(previous < ack.offset, "{key:?} stored out of send order");
                }
            }
            None => {
                unkeyed_partitions.insert(ack.partition);
            }
        }
    }
    assert_eq!(last_offset_of_key.len(), 100);
    assert!(unkeyed_partitions.len() > 1, "unkeyed records all went to {unkeyed_partitions:?}");

    // Through the brokers' sendfile data ports (the default), and through gRPC Fetch: the
    // same records either way.
    for use_data_port in [true, false] {
        let config = ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::None,
            use_data_port,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(&client, config).unwrap();
        let read = read_everything(&mut consumer, TOPIC, &counts).await;
        check_read_back(&sent, &at, &counts, &read);
    }
    let metadata = tideline_client::Admin::new(&client).metadata(&[]).await.unwrap();
    assert!(
        metadata.brokers().all(|b| b.endpoint.as_ref().is_some_and(|e| e.data_port > 0)),
        "every broker advertises a data port"
    );
    cluster.shutdown().await;
}

/// A producer sending all along while the only broker shuts down, stays down until the
/// controller fences it, and a new process with the same id and data directory starts on
/// another port: every send is delivered within the delivery timeout, and every acknowledged
/// record is stored exactly once, at the offset acknowledged, with nothing else stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_delivers_across_a_broker_restart() {
    const TOPIC: &str = "events";
    const PARTITIONS: i32 = 2;
    let mut cluster = TestCluster::start(&[1]).await;
    cluster.create_topic(TOPIC, PARTITIONS, 1, &[]).await;
    let client = cluster.client();
    let config = ProducerConfig {
        acks: Acks::All,
        batch_size: 2 << 10,
        delivery_timeout: Duration::from_secs(60),
        retry_backoff: Duration::from_millis(50),
        ..ProducerConfig::default()
    };
    let producer = Arc::new(Producer::new(&client, config).unwrap());

    let sent_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn({
        let (producer, sent_count, stop) = (producer.clone(), sent_count.clone(), stop.clone());
        async move {
            let mut sent = Vec::new();
            let mut deliveries = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let i = sent.len();
                let record = ProducerRecord::new(TOPIC)
                    .key(format!("k{}", i % 10))
                    .value(format!("event-{i}"))
                    .timestamp_ms(TS0 + i as i64);
                deliveries.push(producer.send(record.clone()).await.expect("send"));
                sent.push(record);
                sent_count.store(sent.len(), Ordering::Release);
                if sent.len() % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            (sent, deliveries)
        }
    });

    // Some records are stored on both partitions before the restart.
    for p in 0..PARTITIONS {
        wait_until(Duration::from_secs(30), "records stored before the restart", || async {
            (cluster.end_offset(TOPIC, p).await >= 100).then_some(())
        })
        .await;
    }
    let old_addr = cluster.broker_addr(1);
    // Bound before the old broker stops, so the new one cannot get the same port back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    cluster.stop_broker(1).await;
    // Down past its lease: the controller fences it and its partitions lose their leader, so
    // the producer sees both refused connections and leaderless partitions.
    wait_until(Duration::from_secs(30), "the stopped broker to be fenced", || async {
        let m = cluster.metadata().await?;
        let fenced = m.brokers.iter().any(|b| b.fenced);
        let leaderless = m.topics.iter().flat_map(|t| &t.partitions).all(|p| p.leader < 0);
        (fenced && leaderless).then_some(())
    })
    .await;
    let new_addr = cluster.start_broker_on(1, listener).await;
    assert_ne!(old_addr, new_addr);
    let sent_at_restart = sent_count.load(Ordering::Acquire);
    wait_until(Duration::from_secs(30), "records sent after the restart", || async {
        (sent_count.load(Ordering::Acquire) >= sent_at_restart + 300).then_some(())
    })
    .await;
    stop.store(true, Ordering::Release);
    let (sent, deliveries) = sending.await.unwrap();

    let acks: Vec<RecordMetadata> = await_all(deliveries, Duration::from_secs(90))
        .await
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("record {i} not delivered: {e}")))
        .collect();
    producer.close().await;
    for (record, ack) in sent.iter().zip(&acks) {
        assert_eq!(ack.partition, partition_for_key(record.key.as_ref().unwrap(), PARTITIONS));
    }
    let (at, counts) = check_acks(&sent, &acks, PARTITIONS);

    let mut consumer = Consumer::new(&client, ConsumerConfig::default()).unwrap();
    let read = read_everything(&mut consumer, TOPIC, &counts).await;
    check_read_back(&sent, &at, &counts, &read);
    cluster.shutdown().await;
}

/// Consumer positions: `seek_to_end` reads only what comes next; `seek_to_timestamp` lands on
/// the first record at or after the time (the end when there is none); a position past the
/// log end resets to the log start under `Earliest` and fails with OFFSET_OUT_OF_RANGE under
/// `None`; a poll of an empty partition returns empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_seeks_and_out_of_range_positions() {
    const TOPIC: &str = "seeks";
    let cluster = TestCluster::start(&[1]).await;
    cluster.create_topic(TOPIC, 2, 1, &[]).await;
    let client = cluster.client();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    // Records 0..100 on partition 0, 10 ms apart in create time.
    let record = |i: i64, ts: i64| {
        ProducerRecord::new(TOPIC).partition(0).value(format!("r{i}")).timestamp_ms(ts)
    };
    let mut deliveries = Vec::new();
    for i in 0..100 {
        deliveries.push(producer.send(record(i, TS0 + 10 * i)).await.unwrap());
    }
    for (i, delivered) in
        await_all(deliveries, Duration::from_secs(30)).await.into_iter().enumerate()
    {
        assert_eq!(delivered.unwrap().offset, i as i64);
    }
    let value = |r: &ConsumerRecord| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();

    // The end: nothing until a new record comes, then exactly that one.
    let config = ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(&client, config.clone()).unwrap();
    consumer.assign(vec![(TOPIC.into(), 0)]);
    assert_eq!(consumer.seek_to_end(TOPIC, 0).await.unwrap(), 100);
    assert!(consumer.poll(Duration::from_millis(300)).await.unwrap().is_empty());
    let delivered = producer.send_and_wait(record(100, TS0 + 5_000)).await.unwrap();
    assert_eq!(delivered.offset, 100);
    let read = poll_at_least(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(read.iter().map(|r| r.offset).collect::<Vec<_>>(), [100]);
    assert_eq!(value(&read[0]), "r100");

    // By timestamp: the first record at or after it.
    for (ts, offset) in
        [(0, 0), (TS0, 0), (TS0 + 505, 51), (TS0 + 990, 99), (TS0 + 991, 100), (TS0 + 5_001, 101)]
    {
        assert_eq!(consumer.seek_to_timestamp(TOPIC, 0, ts).await.unwrap(), offset, "ts {ts}");
    }
    consumer.seek_to_timestamp(TOPIC, 0, TS0 + 505).await.unwrap();
    let read = poll_at_least(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!((read[0].offset, read[0].timestamp_ms), (51, TS0 + 510));
    assert_eq!(value(&read[0]), "r51");

    // Past the end under Earliest: back to the log start.
    consumer.seek(TOPIC, 0, 1_000).unwrap();
    let read = poll_at_least(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(read[0].offset, 0, "reset to the log start");
    assert_eq!(value(&read[0]), "r0");

    // Under None: no guess without a position, an error past the end.
    let none = ConsumerConfig { auto_offset_reset: AutoOffsetReset::None, ..config.clone() };
    let mut strict = Consumer::new(&client, none).unwrap();
    strict.assign(vec![(TOPIC.into(), 0)]);
    let error = strict.poll(Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(error, ClientError::NoPosition { .. }), "{error}");
    strict.seek(TOPIC, 0, 1_000).unwrap();
    let error = strict.poll(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange), "{error}");
    match &error {
        ClientError::OffsetOutOfRange { offset, log_start_offset, log_end_offset, .. } => {
            assert_eq!((*offset, *log_start_offset, *log_end_offset), (1_000, Some(0), Some(101)));
        }
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    assert_eq!(strict.position(TOPIC, 0), Some(1_000), "no reset under None");

    // An empty partition: the poll returns, empty, once its timeout passed.
    let mut empty = Consumer::new(&client, config).unwrap();
    empty.assign(vec![(TOPIC.into(), 1)]);
    let polled =
        tokio::time::timeout(Duration::from_secs(10), empty.poll(Duration::from_millis(500)))
            .await
            .expect("a poll returns after its timeout");
    assert!(polled.unwrap().is_empty());
    assert_eq!(empty.position(TOPIC, 1), Some(0));

    producer.close().await;
    cluster.shutdown().await;
}

/// Admin against the real controller: create, describe, list, alter configs, add partitions
/// and delete do what they say, and refused requests carry their documented code and change
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_topics_and_refusals_carry_codes() {
    let cluster = TestCluster::start(&[1]).await;
    let client = cluster.client();
    let admin = Admin::new(&client);

    let status = admin.controller_status().await.unwrap();
    assert_eq!(status.leader_id, 1, "{status:?}");
    let metadata = admin.metadata(&[]).await.unwrap();
    let broker = metadata.broker(1).expect("broker 1 registered");
    assert!(!broker.fenced);

    let created = admin.create_topic("audit", 3, 1, configs(&[("retention.ms", "60000")])).await;
    let created = created.unwrap();
    assert_eq!(created.name, "audit");
    assert_eq!(created.replication_factor, 1);
    assert_eq!(created.partitions.len(), 3);
    assert_eq!(created.configs, configs(&[("retention.ms", "60000")]));
    for p in &created.partitions {
        assert_eq!((p.leader, &p.replicas[..]), (1, &[1][..]), "{p:?}");
    }
    admin.create_topic("billing", 1, 1, HashMap::new()).await.unwrap();
    assert_eq!(admin.list_topics().await.unwrap(), ["audit", "billing"]);
    let described = admin.describe_topic("audit").await.unwrap();
    assert_eq!(described.topic_id, created.topic_id);
    assert_eq!(described.partitions.len(), 3);
    assert_eq!(described.configs, created.configs);

    // Refusals, each with its code, storing nothing.
    let refused = [
        ("bad name", 1, 1, HashMap::new(), ErrorCode::InvalidTopic),
        ("", 1, 1, HashMap::new(), ErrorCode::InvalidTopic),
        ("audit", 1, 1, HashMap::new(), ErrorCode::TopicAlreadyExists),
        ("wide", 1, 2, HashMap::new(), ErrorCode::InvalidReplicationFactor),
        ("zero", 0, 1, HashMap::new(), ErrorCode::InvalidPartitions),
        ("cfg1", 1, 1, configs(&[("retention.ms", "abc")]), ErrorCode::InvalidConfig),
        ("cfg2", 1, 1, configs(&[("segment.bytes", "-5")]), ErrorCode::InvalidConfig),
        ("cfg3", 1, 1, configs(&[("no.such.config", "1")]), ErrorCode::InvalidConfig),
    ];
    for (name, partitions, rf, topic_configs, code) in refused {
        let result = admin.create_topic(name, partitions, rf, topic_configs).await;
        let error = result.expect_err(name);
        assert_eq!(error.code(), Some(code), "{name:?}: {error}");
        assert!(matches!(error, ClientError::Server { .. }), "{name:?}: {error:?}");
    }
    let error =
        admin.create_topic("cfg1", 1, 1, configs(&[("retention.ms", "abc")])).await.unwrap_err();
    assert!(error.to_string().contains("retention.ms"), "the message names the key: {error}");
    assert_eq!(admin.list_topics().await.unwrap(), ["audit", "billing"], "refusals stored nothing");

    // Alter: set, replace and remove configs; a bad value is refused.
    let set = configs(&[("retention.ms", "120000"), ("segment.bytes", "1048576")]);
    let altered = admin.alter_topic_config("audit", set.clone(), vec![]).await.unwrap();
    assert_eq!(altered.configs, set);
    let altered =
        admin.alter_topic_config("audit", HashMap::new(), vec!["retention.ms".into()]).await;
    assert_eq!(altered.unwrap().configs, configs(&[("segment.bytes", "1048576")]));
    let bad = configs(&[("segment.bytes", "-5")]);
    assert_eq!(
        code_of(admin.alter_topic_config("audit", bad, vec![]).await),
        Some(ErrorCode::InvalidConfig)
    );
    assert_eq!(
        admin.describe_topic("audit").await.unwrap().configs,
        configs(&[("segment.bytes", "1048576")]),
        "a refused alter changed nothing"
    );

    // More partitions, never fewer.
    let grown = admin.create_partitions("audit", 5).await.unwrap();
    assert_eq!(grown.partitions.len(), 5);
    assert_eq!(
        code_of(admin.create_partitions("audit", 4).await),
        Some(ErrorCode::InvalidPartitions)
    );
    assert_eq!(admin.describe_topic("audit").await.unwrap().partitions.len(), 5);
    let metadata = admin.metadata(&["audit"]).await.unwrap();
    assert_eq!(metadata.partition_count("audit"), Some(5));

    // Delete, then the topic is unknown to every call.
    admin.delete_topic("audit").await.unwrap();
    assert_eq!(admin.list_topics().await.unwrap(), ["billing"]);
    let unknown = Some(ErrorCode::UnknownTopicOrPartition);
    assert_eq!(code_of(admin.describe_topic("audit").await), unknown);
    assert_eq!(code_of(admin.delete_topic("audit").await), unknown);
    assert_eq!(code_of(admin.create_partitions("audit", 9).await), unknown);
    assert_eq!(code_of(admin.alter_topic_config("audit", HashMap::new(), vec![]).await), unknown);
    assert_eq!(code_of(admin.metadata(&["audit"]).await), unknown);
    cluster.shutdown().await;
}

/// Sends that cannot succeed fail with a clear error instead of hanging: to a topic that does
/// not exist, after `max_block`, with UNKNOWN_TOPIC_OR_PARTITION; a record larger than the
/// topic's `max.message.bytes` at once (no retries until the delivery timeout) with
/// MESSAGE_TOO_LARGE, storing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_errors_for_unknown_topics_and_oversized_records() {
    let cluster = TestCluster::start(&[1]).await;
    cluster.create_topic("small", 1, 1, &[("max.message.bytes", "2000")]).await;
    let client = cluster.client();
    let config = ProducerConfig {
        max_block: Duration::from_secs(1),
        batch_size: 8 << 10,
        delivery_timeout: Duration::from_secs(120),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config).unwrap();

    let send = producer.send(ProducerRecord::new("missing").value("v"));
    let error = tokio::time::timeout(Duration::from_secs(15), send)
        .await
        .expect("send gives up after max_block")
        .expect_err("no such topic");
    assert_eq!(error.code(), Some(ErrorCode::UnknownTopicOrPartition), "{error}");
    assert!(error.to_string().contains("missing"), "the error names the topic: {error}");

    let big = ProducerRecord::new("small").key("big").value(vec![b'x'; 4 << 10]);
    let delivery = producer.send(big).await.expect("buffered");
    let error = tokio::time::timeout(Duration::from_secs(30), delivery)
        .await
        .expect("refused without retrying until the delivery timeout")
        .expect_err("over max.message.bytes");
    assert_eq!(error.code(), Some(ErrorCode::MessageTooLarge), "{error}");
    assert!(matches!(error, ClientError::Server { .. }), "{error:?}");

    // Nothing was stored: the next record is the first of the log.
    assert_eq!(cluster.end_offset("small", 0).await, 0);
    let small = producer.send_and_wait(ProducerRecord::new("small").value("ok")).await.unwrap();
    assert_eq!((small.partition, small.offset), (0, 0));
    let mut consumer = Consumer::new(&client, ConsumerConfig::default()).unwrap();
    consumer.assign(vec![("small".into(), 0)]);
    consumer.seek_to_beginning("small", 0).await.unwrap();
    let read = poll_at_least(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].value.as_deref(), Some(&b"ok"[..]));
    producer.close().await;
    cluster.shutdown().await;
}
