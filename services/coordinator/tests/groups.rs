//! Consumer groups end to end: `tideline_client::GroupConsumer` members (in-process tasks, or
//! a separate process where a test kills one with SIGKILL) against `tideline-coordinator`
//! processes, an in-process controller and brokers, under a producing load.
//!
//! Every member writes what happens to it (partitions assigned, revoked or lost, records
//! processed) into one ordered log; the checks replay that log, so "no partition has two
//! owners at any moment" is checked on the real order of events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, SESSION_MS, wait_until};
use tideline_client::{
    AutoOffsetReset, ClientConfig, GroupConsumer, GroupConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, RebalanceEvent,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TOPIC: &str = "events";

/// One entry of the shared log.
#[derive(Debug, Clone)]
enum Ev {
    /// A member's partitions changed.
    Rebalance(String, RebalanceEvent),
    /// A member was handed a record.
    Processed(String, i32, i64),
}

type Log = Arc<Mutex<Vec<Ev>>>;

fn push(log: &Log, ev: Ev) {
    log.lock().unwrap().push(ev);
}

/// Replays the log: checks that no partition ever has two owners and that a member processes
/// only partitions it owns; returns the owners at the end and every record processed, with how
/// many times.
fn replay(log: &Log) -> (BTreeMap<i32, String>, BTreeMap<(i32, i64), usize>) {
    let mut owners: BTreeMap<i32, String> = BTreeMap::new();
    let mut processed: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for (i, ev) in log.lock().unwrap().iter().enumerate() {
        match ev {
            Ev::Rebalance(m, RebalanceEvent::Assigned(ps)) => {
                for (_, p) in ps {
                    if let Some(other) = owners.insert(*p, m.clone()) {
                        panic!("event {i}: {m} assigned partition {p} still owned by {other}");
                    }
                }
            }
            Ev::Rebalance(m, RebalanceEvent::Revoked(ps) | RebalanceEvent::Lost(ps)) => {
                for (_, p) in ps {
                    let owner = owners.remove(p);
                    assert_eq!(owner.as_ref(), Some(m), "event {i}: {m} gave up {p}");
                }
            }
            Ev::Processed(m, p, o) => {
                assert_eq!(
                    owners.get(p),
                    Some(m),
                    "event {i}: {m} processed {p}@{o} it does not own"
                );
                *processed.entry((*p, *o)).or_default() += 1;
            }
        }
    }
    (owners, processed)
}

fn owned_by(log: &Log) -> BTreeMap<String, usize> {
    let (owners, _) = replay(log);
    let mut counts = BTreeMap::new();
    for m in owners.values() {
        *counts.entry(m.clone()).or_default() += 1;
    }
    counts
}

/// A member polling in a loop until `stop`, then closing (commit, leave).
struct MemberTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MemberTask {
    async fn close(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

fn start_member(
    client: &tideline_client::Cluster,
    group: &str,
    name: &str,
    log: &Log,
) -> MemberTask {
    let mut config = GroupConsumerConfig::new(group);
    config.auto_commit_interval = Duration::from_millis(300);
    config.consumer.auto_offset_reset = AutoOffsetReset::Earliest;
    let mut consumer = GroupConsumer::new(client, config).unwrap();
    let (l, n) = (log.clone(), name.to_string());
    consumer.set_rebalance_listener(move |e: RebalanceEvent| push(&l, Ev::Rebalance(n.clone(), e)));
    consumer.subscribe([TOPIC]).unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let (log, name) = (log.clone(), name.to_string());
    let task = tokio::spawn(async move {
        while !*stopped.borrow_and_update() {
            match consumer.poll(Duration::from_millis(100)).await {
                Ok(records) => {
                    for r in records {
                        push(&log, Ev::Processed(name.clone(), r.partition, r.offset));
                    }
                }
                Err(e) => eprintln!("{name}: poll: {e}"),
            }
        }
        consumer.close().await.unwrap();
    });
    MemberTask { stop, task }
}

/// Produces keyed records to every partition until stopped; returns what was acknowledged.
fn start_load(
    client: &tideline_client::Cluster,
) -> (watch::Sender<bool>, JoinHandle<BTreeSet<(i32, i64)>>) {
    let producer = Producer::new(client, ProducerConfig::default()).unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut seq = 0u64;
        while !*stopped.borrow() {
            for _ in 0..20 {
                let record =
                    ProducerRecord::new(TOPIC).key(format!("k{seq}")).value(format!("v{seq}"));
                pending.push(producer.send(record).await.unwrap());
                seq += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut acked = BTreeSet::new();
        for d in pending {
            let m = d.await.expect("every record is acknowledged");
            acked.insert((m.partition, m.offset));
        }
        producer.close().await;
        acked
    });
    (stop, task)
}

/// Waits until every record of `acked` was processed; on failure says which are missing,
/// per partition, with the owner and the events of that partition.
async fn wait_processed(log: &Log, acked: &BTreeSet<(i32, i64)>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (owners, processed) = replay(log);
        let missing: Vec<(i32, i64)> =
            acked.iter().filter(|k| !processed.contains_key(k)).copied().collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
            for (p, o) in &missing {
                by_partition.entry(*p).or_default().push(*o);
            }
            let summary: Vec<String> = by_partition
                .iter()
                .map(|(p, offsets)| {
                    let last = processed.keys().filter(|(pp, _)| pp == p).map(|(_, o)| *o).max();
                    format!(
                        "partition {p} (owner {:?}, last processed {last:?}): {} missing, first {:?}",
                        owners.get(p),
                        offsets.len(),
                        offsets.first()
                    )
                })
                .collect();
            let events: Vec<String> = log
                .lock()
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Ev::Rebalance(..)))
                .map(|e| format!("{e:?}"))
                .collect();
            panic!(
                "records never processed:\n{}\nrebalances:\n{}",
                summary.join("\n"),
                events.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_owned(log: &Log, what: &str, want: impl Fn(&BTreeMap<String, usize>) -> bool) {
    wait_until(Duration::from_secs(60), what, || {
        let ok = want(&owned_by(log));
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_scales_1_3_1_under_load_with_one_owner_per_partition_and_nothing_lost() {
    let mut cluster = Cluster::start(3, 4).await;
    cluster.create_topic(TOPIC, 12, 3).await;
    cluster.start_coordinator("c1");
    cluster.start_coordinator("c2");
    cluster.wait_shards_settled(2).await;
    let client = cluster.client();
    let log: Log = Arc::default();

    let m1 = start_member(&client, "scaling", "m1", &log);
    wait_owned(&log, "m1 owns all 12", |c| c.get("m1") == Some(&12)).await;
    let (stop_load, load) = start_load(&client);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let m2 = start_member(&client, "scaling", "m2", &log);
    let m3 = start_member(&client, "scaling", "m3", &log);
    wait_owned(&log, "4 partitions each", |c| c.len() == 3 && c.values().all(|n| *n == 4)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    m3.close().await;
    m2.close().await;
    wait_owned(&log, "m1 owns all 12 again", |c| c.get("m1") == Some(&12)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_load.send(true);
    let acked = load.await.unwrap();
    assert!(acked.len() > 500, "the load produced {} records", acked.len());
    wait_processed(&log, &acked).await;
    m1.close().await;

    let (owners, processed) = replay(&log);
    assert!(owners.is_empty(), "everything released at the end: {owners:?}");
    // Partitions moved only with a commit first, so none was read twice.
    let twice: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
    assert!(twice.is_empty(), "records processed more than once: {twice:?}");
    cluster.shutdown().await;
}

/// Not a test on its own: the member process of the SIGKILL test (this test binary run again
/// with `TIDELINE_TEST_MEMBER` set to the controller address). It appends each assignment to
/// the file named by `TIDELINE_TEST_MEMBER_LOG` and polls until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_process() {
    let Ok(controller) = std::env::var("TIDELINE_TEST_MEMBER") else { return };
    let out = std::env::var("TIDELINE_TEST_MEMBER_LOG").unwrap();
    let client = tideline_client::Cluster::new(ClientConfig::new([controller])).unwrap();
    let mut config = GroupConsumerConfig::new("killed");
    config.consumer.auto_offset_reset = AutoOffsetReset::Earliest;
    let mut consumer = GroupConsumer::new(&client, config).unwrap();
    consumer.set_rebalance_listener(move |e: RebalanceEvent| {
        if let RebalanceEvent::Assigned(ps) = e {
            use std::io::Write;
            let mut f = std::fs::File::options().create(true).append(true).open(&out).unwrap();
            writeln!(f, "assigned {}", ps.len()).unwrap();
        }
    });
    consumer.subscribe([TOPIC]).unwrap();
    loop {
        let _ = consumer.poll(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_with_sigkill_loses_its_partitions_after_the_session_timeout() {
    let mut cluster = Cluster::start(1, 1).await;
    cluster.create_topic(TOPIC, 6, 1).await;
    cluster.start_coordinator("c1");
    cluster.wait_shards_settled(1).await;
    let client = cluster.client();
    let log: Log = Arc::default();
    let a = start_member(&client, "killed", "a", &log);
    wait_owned(&log, "a owns all 6", |c| c.get("a") == Some(&6)).await;

    let member_log = cluster.root.path().join("member-b.log");
    let b = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "member_process", "--nocapture", "--test-threads", "1"])
        .env("TIDELINE_TEST_MEMBER", &cluster.controller_addr)
        .env("TIDELINE_TEST_MEMBER_LOG", &member_log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut b = common::ServiceProcess::new("member b", b, &member_log);
    wait_owned(&log, "a gave half to b", |c| c.get("a") == Some(&3)).await;
    let line = wait_until(Duration::from_secs(30), "b reports its assignment", || {
        let text = std::fs::read_to_string(&member_log).unwrap_or_default();
        async move { text.lines().last().map(str::to_string) }
    })
    .await;
    assert_eq!(line, "assigned 3");

    // b dies without a word: nothing moves until its session times out, then a gets it all.
    let killed = Instant::now();
    b.kill9();
    tokio::time::sleep(Duration::from_millis(SESSION_MS / 2)).await;
    assert_eq!(owned_by(&log).get("a"), Some(&3), "b's partitions stay with b within its session");
    wait_owned(&log, "a owns all 6 after b's session timed out", |c| c.get("a") == Some(&6)).await;
    assert!(killed.elapsed() >= Duration::from_millis(SESSION_MS / 2));
    let d = tideline_client::Admin::new(&client).describe_group("killed").await.unwrap();
    assert_eq!(d.members.len(), 1, "{d:?}");
    a.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_carry_on_when_their_coordinator_is_killed_with_sigkill() {
    let mut cluster = Cluster::start(3, 4).await;
    cluster.create_topic(TOPIC, 6, 3).await;
    cluster.start_coordinator("c1");
    cluster.start_coordinator("c2");
    cluster.wait_shards_settled(2).await;
    let client = cluster.client();
    let admin = tideline_client::Admin::new(&client);
    let log: Log = Arc::default();
    let m1 = start_member(&client, "survivors", "m1", &log);
    let m2 = start_member(&client, "survivors", "m2", &log);
    // A second group reads the same topic on its own.
    let other_log: Log = Arc::default();
    let other = start_member(&client, "bystanders", "x", &other_log);
    wait_owned(&log, "3 partitions each", |c| c.len() == 2 && c.values().all(|n| *n == 3)).await;
    let (stop_load, load) = start_load(&client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let committed = |admin: &tideline_client::Admin| {
        let admin = admin.clone();
        async move {
            admin.fetch_offsets("survivors").await.ok().map(|o| {
                o.into_iter().map(|c| (c.partition, c.offset)).collect::<BTreeMap<i32, i64>>()
            })
        }
    };
    let before = wait_until(Duration::from_secs(10), "commits", || {
        let f = committed(&admin);
        async move { f.await.filter(|o| o.len() == 6) }
    })
    .await;

    let (owner, _) = cluster.owner_of("survivors").await.unwrap();
    cluster.coordinators.get_mut(&owner).unwrap().kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_load.send(true);
    let acked = load.await.unwrap();
    // Nobody restarts anything: the members find the new coordinator and keep reading.
    wait_processed(&log, &acked).await;
    let (new_owner, _) = cluster.owner_of("survivors").await.unwrap();
    assert_ne!(new_owner, owner);
    let after = wait_until(Duration::from_secs(10), "commits after the failover", || {
        let f = committed(&admin);
        let before = before.clone();
        async move {
            f.await.filter(|o| {
                o.len() == 6 && o.iter().all(|(p, off)| *off >= before[p]) && o != &before
            })
        }
    })
    .await;
    assert!(after.values().sum::<i64>() > before.values().sum::<i64>());
    let (owners, _) = replay(&log);
    assert_eq!(owners.len(), 6, "both members kept their partitions: {owners:?}");
    // The other group, on another shard or the same, read everything too.
    wait_until(Duration::from_secs(30), "the other group read everything", || {
        let (_, seen) = replay(&other_log);
        let missing = acked.iter().filter(|k| !seen.contains_key(k)).count();
        async move { (missing == 0).then_some(()) }
    })
    .await;
    m1.close().await;
    m2.close().await;
    other.close().await;
    cluster.shutdown().await;
}
