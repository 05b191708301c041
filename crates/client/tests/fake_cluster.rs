//! The client against an in-process fake of the controller and broker gRPC services (one
//! tonic server on a loopback port, scripted failures; see `fake/mod.rs`): exercises the
//! producer's sender, retries, redirects and the consumer's fetch loop without starting
//! Tideline processes. Tests against the real broker and controller binaries live with the
//! integration tests.

mod fake;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use fake::{
    Fake, cluster_with_topic, cluster_with_topic_and_data_port, poll_offsets,
    produce_one_per_batch, serve, wait_until,
};
use tideline_client::{
    Acks, Admin, AutoOffsetReset, ClientConfig, ClientError, Cluster, Consumer, ConsumerConfig,
    ErrorCode, Producer, ProducerConfig, ProducerRecord, partitioner::partition_for_key,
};
use tideline_common::status;

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

/// Backpressure: once `buffer_memory` is taken by records not yet acknowledged, `send` waits
/// for memory and goes on when a batch completes; with the broker slower than `max_block`, it
/// fails with a timeout naming the buffer. Every record that was accepted is delivered.
#[tokio::test]
async fn a_full_buffer_blocks_send_until_memory_frees_or_max_block() {
    let (fake, cluster) = cluster_with_topic(1).await;
    fake.state().produce_delay = Some(Duration::from_millis(150));
    let config = ProducerConfig {
        acks: Acks::Leader,
        buffer_memory: 4096,
        batch_size: 1024,
        linger: Duration::ZERO,
        max_block: Duration::from_secs(10),
        ..Default::default()
    };
    let producer = Producer::new(&cluster, config.clone()).unwrap();
    let record = || ProducerRecord::new("orders").partition(0).value(vec![7u8; 900]);
    // Four records of ~910 bytes fill the 4 KiB buffer; the fifth waits for the first batch.
    let mut deliveries = Vec::new();
    for _ in 0..4 {
        deliveries.push(producer.send(record()).await.unwrap());
    }
    let started = std::time::Instant::now();
    deliveries.push(producer.send(record()).await.unwrap());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100), "send returned after {waited:?}");
    let mut offsets = Vec::new();
    for d in deliveries {
        offsets.push(d.await.unwrap().offset);
    }
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    producer.close().await;

    let config =
        ProducerConfig { buffer_memory: 2048, max_block: Duration::from_millis(50), ..config };
    let producer = Producer::new(&cluster, config).unwrap();
    let first = producer.send(record()).await.unwrap();
    let second = producer.send(record()).await.unwrap();
    let error = producer.send(record()).await.unwrap_err();
    assert!(matches!(error, ClientError::TimedOut { .. }), "{error}");
    assert!(error.to_string().contains("buffer memory"), "{error}");
    assert_eq!((first.await.unwrap().offset, second.await.unwrap().offset), (5, 6));
    producer.close().await;
    assert_eq!(fake.end_offset("orders", 0), 7);
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

/// A producer keeps at most `max_in_flight_requests_per_broker` produce requests in flight to
/// a broker, over all its partitions, and every record still goes.
#[tokio::test]
async fn produce_requests_in_flight_per_broker_are_bounded() {
    for (bound, expected) in [(2, 2), (32, 8)] {
        let (fake, cluster) = cluster_with_topic(8).await;
        fake.state().produce_delay = Some(Duration::from_millis(50));
        let config = ProducerConfig {
            max_in_flight_requests_per_broker: bound,
            linger: Duration::ZERO,
            ..Default::default()
        };
        let producer = Producer::new(&cluster, config).unwrap();
        let mut deliveries = Vec::new();
        for round in 0..3 {
            for p in 0..8 {
                let record = ProducerRecord::new("orders").partition(p).value(format!("{round}"));
                deliveries.push(producer.send(record).await.unwrap());
            }
        }
        for d in deliveries {
            d.await.unwrap();
        }
        producer.close().await;
        let (open, most) = fake.state().produces_open;
        assert_eq!(open, 0);
        // 8 partitions with one batch each in flight: the bound is what holds them back.
        assert_eq!(most, expected, "bound {bound}");
        let stored: usize = (0..8).map(|p| fake.end_offset("orders", p) as usize).sum();
        assert_eq!(stored, 24);
    }
    let (_fake, cluster) = cluster_with_topic(1).await;
    let bad = ProducerConfig { max_in_flight_requests_per_broker: 0, ..Default::default() };
    assert!(matches!(Producer::new(&cluster, bad), Err(ClientError::InvalidArgument { .. })));
}

/// `send_with_callback` reports each record's outcome through its callback: the offsets of
/// delivered records, in order per partition, the error of a failed batch, and the error of
/// a send that failed at once.
#[tokio::test]
async fn callbacks_get_each_records_outcome() {
    let (fake, cluster) = cluster_with_topic(2).await;
    let producer = Producer::new(&cluster, ProducerConfig::default()).unwrap();
    let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..20 {
        let outcomes = outcomes.clone();
        let record = ProducerRecord::new("orders").partition(i % 2).value(format!("v{i}"));
        producer
            .send_with_callback(record, move |r| outcomes.lock().unwrap().push((i, r)))
            .await
            .unwrap();
    }
    producer.flush().await;
    {
        let outcomes = outcomes.lock().unwrap();
        assert_eq!(outcomes.len(), 20);
        for p in 0..2 {
            let offsets: Vec<i64> = outcomes
                .iter()
                .filter(|(i, _)| i % 2 == p)
                .map(|(_, r)| r.as_ref().unwrap().offset)
                .collect();
            assert_eq!(offsets, (0..10).collect::<Vec<_>>(), "partition {p}");
        }
    }
    fake.state().produce_failures.push_back(status(ErrorCode::MessageTooLarge, "too large"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let record = ProducerRecord::new("orders").partition(0).value("x");
    producer.send_with_callback(record, move |r| drop(tx.send(r))).await.unwrap();
    let failed = rx.await.unwrap().unwrap_err();
    assert_eq!(failed.code(), Some(ErrorCode::MessageTooLarge));
    // A send that fails at once (a partition the topic lacks) returns the error and calls
    // the callback once, with the same error.
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    let record = ProducerRecord::new("orders").partition(5).value("x");
    let error = producer
        .send_with_callback(record, move |r| seen.lock().unwrap().push(r))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::UnknownPartition { partition: 5, .. }), "{error}");
    {
        let calls = calls.lock().unwrap();
        assert!(
            matches!(calls[..], [Err(ClientError::UnknownPartition { partition: 5, .. })]),
            "{calls:?}"
        );
    }
    producer.close().await;
}

/// The next fetch starts from where a response ended before that response is decoded
/// (read-ahead), so the broker sends the next batches while the client decodes: even a
/// response whose batch fails its CRC has been followed by a fetch from past it. The error is
/// still reported, the position stays, and a seek elsewhere drops the read-ahead.
#[tokio::test]
async fn the_next_fetch_starts_before_a_response_is_decoded() {
    let (fake, cluster) = cluster_with_topic(1).await;
    produce_one_per_batch(&cluster, 0, 3).await;
    {
        let mut state = fake.state();
        let log = state.logs.get_mut(&("orders".to_string(), 0)).unwrap();
        let mut corrupt = log[1].1.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        log[1].1 = Bytes::from(corrupt);
    }
    // One batch per fetch.
    let config = ConsumerConfig { max_partition_fetch_bytes: 1, ..Default::default() };
    let mut consumer = Consumer::new(&cluster, config).unwrap();
    consumer.assign(vec![("orders".to_string(), 0)]);
    consumer.seek("orders", 0, 1).unwrap();
    let error = consumer.poll(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, ClientError::Corrupt { .. }), "{error}");
    wait_until(Duration::from_secs(5), "a fetch from past the corrupt batch", || {
        fake.state().fetches.contains(&(0, 2))
    })
    .await;
    assert_eq!(consumer.position("orders", 0), Some(1));
    // A seek back: the records from 0, the read-ahead from 2 not used for offset 0.
    consumer.seek("orders", 0, 0).unwrap();
    let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0]);
    assert_eq!(consumer.position("orders", 0), Some(1));
}

/// Read-ahead over gRPC (no data port advertised), one batch per fetch: once `poll` has
/// returned the record at offset 0, the partition goes on fetching without another `poll`,
/// each fetch from where the one before ended, and stops at its memory bound. The next fetch
/// task (started before `poll` returned) takes and decodes the response from offset 1 into
/// the partition's buffer, and beyond it the read-ahead holds `read_ahead_fetches` raw
/// responses: with 2, fetches from 1, 2 and 3 and none from 4; with 1, from 1 and 2 and none
/// from 3 (`read_ahead_fetches` + 1 responses in all, as `Consumer` documents). Without
/// read-ahead only the fetch from 1 would come. The responses fetched ahead are used: every
/// record comes once, in order, and no offset is fetched twice.
#[tokio::test]
async fn read_ahead_fetches_on_without_polling_up_to_its_bound_over_grpc() {
    for read_ahead_fetches in [2, 1] {
        let (fake, cluster) = cluster_with_topic(1).await;
        produce_one_per_batch(&cluster, 0, 8).await;
        let config = ConsumerConfig {
            // One batch, so one record, per fetch.
            max_partition_fetch_bytes: 1,
            read_ahead_fetches,
            ..Default::default()
        };
        let mut consumer = Consumer::new(&cluster, config).unwrap();
        consumer.assign(vec![("orders".to_string(), 0)]);
        consumer.seek("orders", 0, 0).unwrap();
        let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0]);

        // The last offset fetched while nothing polls: one response buffered, decoded, and
        // `read_ahead_fetches` raw ones beyond it.
        let last = 1 + read_ahead_fetches as i64;
        wait_until(Duration::from_secs(5), &format!("fetches from 1 to {last}"), || {
            let state = fake.state();
            (1..=last).all(|o| state.fetches.contains(&(0, o)))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fetched: Vec<i64> = fake.state().fetches.iter().map(|f| f.1).collect();
        assert_eq!(
            fetched,
            (0..=last).collect::<Vec<_>>(),
            "read_ahead_fetches {read_ahead_fetches}: in order, once each, none past {last}"
        );

        let read = poll_offsets(&mut consumer, 7, Duration::from_secs(10)).await;
        assert_eq!(read, (1..8).map(|o| (0, o)).collect::<Vec<_>>());
        let mut fetched: Vec<i64> =
            fake.state().fetches.iter().map(|f| f.1).filter(|o| *o < 8).collect();
        fetched.sort();
        assert_eq!(fetched, (0..8).collect::<Vec<_>>(), "each offset fetched once");
    }
}

/// `read_ahead_fetches` must be between 1 and 16: 0 and 17 are refused by `Consumer::new`
/// with `InvalidArgument`, 1 and 16 are taken.
#[tokio::test]
async fn read_ahead_fetches_out_of_range_are_refused() {
    let cluster = Cluster::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
    for read_ahead_fetches in [0, 17] {
        let config = ConsumerConfig { read_ahead_fetches, ..Default::default() };
        let error = Consumer::new(&cluster, config).unwrap_err();
        assert!(matches!(error, ClientError::InvalidArgument { .. }), "{error}");
        assert!(error.to_string().contains("read_ahead_fetches"), "{error}");
    }
    for read_ahead_fetches in [1, 16] {
        let config = ConsumerConfig { read_ahead_fetches, ..Default::default() };
        Consumer::new(&cluster, config).unwrap();
    }
}

/// Aborts a spawned task when dropped (the test's fake servers, also when an assertion fails).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A data port of `fake` (`docs/data-protocol.md`) that answers each request from the fake's
/// log, but withholds the payload of every fetch from offset 0, after its header, until a
/// fetch from offset 1 has come (on another connection: this one is busy answering). Logs
/// each request as its connection's number and offset. Aborting the task closes its
/// connections.
async fn serve_withholding_data_port(
    listener: tokio::net::TcpListener,
    fake: Fake,
    requests: std::sync::Arc<std::sync::Mutex<Vec<(usize, i64)>>>,
) {
    let (one_came, one_has_come) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    for number in 0.. {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let (fake, requests, one_came) = (fake.clone(), requests.clone(), one_came.clone());
        let mut one_has_come = one_has_come.clone();
        connections.spawn(async move {
            use prost::Message;
            use tideline_proto::v1 as pb;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok(length) = stream.read_u32().await else { return };
                let mut body = vec![0; length as usize];
                stream.read_exact(&mut body).await.unwrap();
                let request = pb::DataFetchRequest::decode(body.as_slice()).unwrap();
                let [p] = &request.partitions[..] else { panic!("one partition per request") };
                requests.lock().unwrap().push((number, p.offset));
                if p.offset == 1 {
                    one_came.send_replace(true);
                }
                let end = fake.end_offset(&p.topic, p.partition);
                if p.offset >= end {
                    // Nothing to read: the long poll waits it out.
                    tokio::time::sleep(Duration::from_millis(request.max_wait_ms as u64)).await;
                }
                let (data, next_offset) =
                    fake.read_batches(&p.topic, p.partition, p.offset, p.max_bytes as usize);
                let header = pb::DataFetchResponse {
                    partitions: vec![pb::DataFetchPartitionResult {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        error_code: ErrorCode::Unspecified as i32,
                        error_message: String::new(),
                        high_watermark: end,
                        log_start_offset: 0,
                        next_offset,
                        payload_length: data.len() as u32,
                        traceparents: Vec::new(),
                    }],
                }
                .encode_to_vec();
                let mut frame = (header.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&header);
                stream.write_all(&frame).await.unwrap();
                stream.flush().await.unwrap();
                if p.offset == 0 {
                    one_has_come.wait_for(|came| *came).await.unwrap();
                }
                stream.write_all(&data).await.unwrap();
                stream.flush().await.unwrap();
            }
        });
    }
}

/// Through the data port, the next fetch starts as soon as the answer before it has sent its
/// header (which says where it ends), before its payload, so two fetches overlap on two
/// connections. The fake data port sends the header of the fetch from 0 (one batch,
/// `next_offset` 1) and withholds its payload until a fetch from 1 has come: `poll` can
/// return the record at offset 0 only if that fetch started off the header alone (waiting
/// for the whole answer first would deadlock until the poll timed out). Nothing goes over
/// gRPC, each offset is fetched once, and the fetch ahead from 1 brings the next record.
#[tokio::test]
async fn data_port_fetches_start_at_the_header_of_the_one_before() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data_port = listener.local_addr().unwrap().port();
    let (fake, cluster) = cluster_with_topic_and_data_port(1, data_port).await;
    produce_one_per_batch(&cluster, 0, 2).await;
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = AbortOnDrop(tokio::spawn(serve_withholding_data_port(
        listener,
        fake.clone(),
        requests.clone(),
    )));

    let config = ConsumerConfig {
        // One batch per fetch.
        max_partition_fetch_bytes: 1,
        read_ahead_fetches: 2,
        ..Default::default()
    };
    let mut consumer = Consumer::new(&cluster, config).unwrap();
    consumer.assign(vec![("orders".to_string(), 0)]);
    consumer.seek("orders", 0, 0).unwrap();
    let records = consumer.poll(Duration::from_secs(10)).await.unwrap();
    let got: Vec<(i64, Option<Bytes>)> =
        records.iter().map(|r| (r.offset, r.value.clone())).collect();
    assert_eq!(got, [(0, Some(Bytes::from("v0")))], "the record at 0, past the withheld payload");
    {
        let requests = requests.lock().unwrap();
        let from =
            |offset| requests.iter().filter(|r| r.1 == offset).map(|r| r.0).collect::<Vec<_>>();
        let (zero, one) = (from(0), from(1));
        assert_eq!(zero.len(), 1, "one fetch from 0, not retried: {requests:?}");
        assert_eq!(one.len(), 1, "one fetch from 1: {requests:?}");
        assert_ne!(zero[0], one[0], "the fetches from 0 and 1 on two connections");
    }

    let read = poll_offsets(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(read, [(0, 1)]);
    assert_eq!(
        requests.lock().unwrap().iter().filter(|r| r.1 <= 1).count(),
        2,
        "the record at 1 came from the fetch ahead: {:?}",
        requests.lock().unwrap()
    );
    assert!(fake.state().fetches.is_empty(), "nothing over gRPC: {:?}", fake.state().fetches);
    drop(consumer);
    drop(server);
}
