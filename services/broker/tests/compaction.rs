//! Log compaction against real `tideline-broker` processes: a `cleanup.policy=compact` topic
//! is cleaned in the background until a consumer reading from offset 0 sees exactly the latest
//! value of every key at its original offset (deleted keys gone), also after a crash; a
//! keyless record is refused; a follower that was away copies the compacted leader across its
//! offset gaps and can take over.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use tideline_common::{ErrorCode, error_code_of};
use tideline_log::{Compression, RecordBatchBuilder};
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tonic::transport::Channel;

/// Clean every 200 ms; tombstones go at the first clean.
const CLEANER_ARGS: &[&str] =
    &["--log-cleaner-interval-ms", "200", "--log-cleaner-delete-retention-ms", "0"];
const TOPIC_CONFIGS: &[(&str, &str)] = &[("cleanup.policy", "compact"), ("segment.bytes", "1024")];

/// A record as a consumer sees it: offset, key, value.
type Seen = (i64, String, Option<String>);

fn keyed(key: &str, value: Option<&str>) -> pb::Record {
    pb::Record {
        key: Some(key.as_bytes().to_vec().into()),
        value: value.map(|v| v.as_bytes().to_vec().into()),
        headers: Vec::new(),
        timestamp_ms: 0,
        offset: 0,
    }
}

/// Every record of partition 0 below the high watermark, read from offset 0 with decoded
/// fetches that move on by the answer's next offset (past emptied batches too).
async fn consume(b: &mut BrokerServiceClient<Channel>, topic: &str) -> Vec<Seen> {
    let text =
        |b: &Option<bytes::Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = b.fetch(fetch(topic, 0, offset, 0)).await.unwrap().into_inner();
        out.extend(
            r.records.iter().map(|r| (r.offset, text(&r.key).unwrap_or_default(), text(&r.value))),
        );
        if r.next_offset <= offset || r.next_offset >= r.high_watermark {
            return out;
        }
        offset = r.next_offset;
    }
}

/// Tracks what was produced: the latest (offset, value) of every key.
#[derive(Default)]
struct Produced {
    latest: BTreeMap<String, (i64, Option<String>)>,
    end: i64,
}

impl Produced {
    async fn send(
        &mut self,
        cluster: &Cluster,
        topic: &str,
        records: Vec<pb::Record>,
        acks: pb::Acks,
    ) {
        let mut request = produce_records(topic, 0, records.clone());
        request.acks = acks as i32;
        let base = produce_request_retrying(cluster, topic, request).await.unwrap();
        for (i, r) in records.iter().enumerate() {
            let key = String::from_utf8(r.key.as_ref().unwrap().to_vec()).unwrap();
            let value = r.value.as_ref().map(|v| String::from_utf8(v.to_vec()).unwrap());
            self.latest.insert(key, (base + i as i64, value));
        }
        self.end = base + records.len() as i64;
    }

    /// Many updates over a few keys; key `k5` is deleted (a tombstone) two thirds in.
    async fn updates(&mut self, cluster: &Cluster, topic: &str, rounds: usize, acks: pb::Acks) {
        for round in 0..rounds {
            let mut records: Vec<pb::Record> = (0..5)
                .map(|k| keyed(&format!("k{k}"), Some(&format!("round {round} of k{k}"))))
                .collect();
            if round < rounds * 2 / 3 {
                records.push(keyed("k5", Some(&format!("round {round} of k5"))));
            } else if round == rounds * 2 / 3 {
                records.push(keyed("k5", None));
            }
            self.send(cluster, topic, records, acks).await;
        }
    }

    /// Unique keys until the active segment of `broker`'s replica starts past `offset`, so
    /// every update is in a closed (cleanable) segment.
    async fn fill_past(
        &mut self,
        cluster: &Cluster,
        broker: i32,
        topic: &str,
        offset: i64,
        acks: pb::Acks,
    ) {
        for i in 0..200 {
            if active_base(cluster, broker, topic) > offset {
                return;
            }
            self.send(cluster, topic, vec![keyed(&format!("filler-{i}"), Some("f"))], acks).await;
        }
        panic!("the active segment never moved past {offset}");
    }

    /// What a consumer of the compacted log sees: each key's latest record unless it is a
    /// tombstone (they expire at once here), in offset order.
    fn expected(&self) -> Vec<Seen> {
        let mut out: Vec<Seen> = self
            .latest
            .iter()
            .filter(|(_, (_, v))| v.is_some())
            .map(|(k, (o, v))| (*o, k.clone(), v.clone()))
            .collect();
        out.sort();
        out
    }
}

/// Base offset of the active (newest) segment of a replica on `broker`.
fn active_base(cluster: &Cluster, broker: i32, topic: &str) -> i64 {
    let dir = cluster.data_dir(broker).join(format!("{topic}-0"));
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".log").and_then(|s| s.parse::<i64>().ok())
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Records stored in a replica's segment files.
fn records_on_disk(cluster: &Cluster, broker: i32, topic: &str) -> usize {
    let bytes = cluster.segment_bytes(broker, topic, 0);
    tideline_log::batch::batches(&bytes).map(|b| b.unwrap().records_count() as usize).sum()
}

/// Waits until a consumer of `topic` on its leader sees exactly `expected`.
async fn wait_compacted(cluster: &Cluster, topic: &str, expected: &[Seen]) {
    wait_until(Duration::from_secs(30), "the log to be compacted", || async {
        let leader = cluster.leader_of(topic, 0).await;
        let mut b = cluster.try_broker(leader).await?;
        (consume(&mut b, topic).await == expected).then_some(())
    })
    .await;
}

/// A compacted topic with small segments, updated many times over few keys, is cleaned in the
/// background until a consumer from offset 0 sees exactly the latest value of each key at the
/// offset it was written at, the deleted key gone, and the files hold nothing else. A record
/// without a key is refused with INVALID_REQUEST and nothing is stored. The compacted log
/// survives a kill -9 and takes new records at the next offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_sees_the_latest_value_per_key_after_compaction() {
    let mut cluster = Cluster::start_with_broker_args(1, &[1], CLEANER_ARGS).await;
    cluster.create_topic("latest", 1, 1, TOPIC_CONFIGS).await;
    let mut b = cluster.broker(1).await;

    // Keyless records are refused, as plain records and as a producer's batch.
    let plain = b
        .produce(produce_records(
            "latest",
            0,
            vec![keyed("k", Some("ok")), record("", "x", &[], 0)],
        ))
        .await;
    let mut no_key = produce_records("latest", 0, vec![keyed("k", Some("ok"))]);
    if let Some(pb::produce_request::Payload::Records(list)) = &mut no_key.payload {
        list.records[0].key = None;
    }
    let unkeyed = b.produce(no_key).await.unwrap_err();
    assert_eq!(error_code_of(&unkeyed), Some(ErrorCode::InvalidRequest), "{unkeyed:?}");
    assert!(unkeyed.message().contains("no key"), "{}", unkeyed.message());
    assert!(unkeyed.message().contains("cleanup.policy=compact"), "{}", unkeyed.message());
    let mut builder = RecordBatchBuilder::new(Compression::Lz4);
    builder.append(1_700_000_000_000, None, Some(b"raw"), &[]);
    let raw = b.produce(produce_bytes("latest", 0, builder.build().to_vec())).await.unwrap_err();
    assert_eq!(error_code_of(&raw), Some(ErrorCode::InvalidRequest), "{raw:?}");
    // (An empty key is a key: the first request was taken.)
    let stored = plain.unwrap().into_inner();
    assert_eq!((stored.base_offset, stored.last_offset), (0, 1));

    let mut produced = Produced::default();
    produced.latest.insert("k".into(), (0, Some("ok".into())));
    produced.latest.insert(String::new(), (1, Some("x".into())));
    produced.updates(&cluster, "latest", 150, pb::Acks::All).await;
    let last_update = produced.end - 1;
    produced.fill_past(&cluster, 1, "latest", last_update, pb::Acks::All).await;
    let expected = produced.expected();
    assert!(expected.iter().all(|(_, k, _)| k != "k5"), "the deleted key is expected gone");

    wait_compacted(&cluster, "latest", &expected).await;
    assert_eq!(records_on_disk(&cluster, 1, "latest"), expected.len(), "nothing else is stored");

    // A crash and a restart keep the compacted log; offsets go on from the same end.
    cluster.brokers.get_mut(&1).unwrap().signal("KILL");
    cluster.brokers.get_mut(&1).unwrap().child.wait().unwrap();
    cluster.start_broker(1).await;
    cluster.wait_leader_ready("latest", 0).await;
    let mut b = cluster.broker(1).await;
    assert_eq!(consume(&mut b, "latest").await, expected);
    let end = produced.end;
    produced.send(&cluster, "latest", vec![keyed("k0", Some("after"))], pb::Acks::All).await;
    assert_eq!(produced.latest["k0"].0, end, "the next offset after the log end");
    cluster.stop().await;
}

/// A follower stopped before any record is written misses the whole history; meanwhile the
/// leader compacts. Resumed, it fetches the compacted batches (offset gaps inside and between
/// them, first batches past its log end), rejoins the ISR, and after the leader's kill -9 it
/// leads and serves exactly the latest value of every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_copies_a_compacted_leader_across_gaps_and_takes_over() {
    let mut cluster = Cluster::start_with_broker_args(1, &[1, 2], CLEANER_ARGS).await;
    let topic = cluster.create_topic("gaps", 1, 2, TOPIC_CONFIGS).await;
    cluster.wait_isr("gaps", 0, &[1, 2]).await;
    let leader = topic.partitions[0].leader;
    let follower = if leader == 1 { 2 } else { 1 };
    cluster.brokers[&follower].signal("STOP");
    cluster.wait_isr("gaps", 0, &[leader]).await;

    let mut produced = Produced::default();
    produced.updates(&cluster, "gaps", 90, pb::Acks::Leader).await;
    let last_update = produced.end - 1;
    produced.fill_past(&cluster, leader, "gaps", last_update, pb::Acks::Leader).await;
    let expected = produced.expected();
    wait_compacted(&cluster, "gaps", &expected).await;

    cluster.brokers[&follower].signal("CONT");
    cluster.wait_isr("gaps", 0, &[1, 2]).await;
    cluster.brokers.get_mut(&leader).unwrap().signal("KILL");
    wait_until(Duration::from_secs(30), "the follower to lead", || async {
        (cluster.leader_of("gaps", 0).await == follower).then_some(())
    })
    .await;
    wait_compacted(&cluster, "gaps", &expected).await;
    cluster.stop().await;
}
