//! `tide partitions reassign` end to end, under load: a `tide dev` cluster of 3 brokers gets a
//! fourth broker process, `--balance --throttle --wait` moves replicas onto it while an
//! idempotent acks=all producer and a consumer of every partition keep running, and afterwards
//! each broker holds an equal share of the topic's replicas and leads one partition, every
//! replica is in sync, nothing is still moving, and the consumer has read every acknowledged
//! record (once, in offset order). A `--dry-run` submits nothing, and a plan naming an unknown
//! broker or the same broker twice is refused with one error line, moving nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::{CLI, Dev, TIDE, stop};
use serde_json::{Value, json};
use tideline_client::{
    Acks, AutoOffsetReset, ClientConfig, Cluster, Consumer, ConsumerConfig, Producer,
    ProducerConfig, ProducerRecord,
};

const TOPIC: &str = "moving";
const PARTITIONS: usize = 4;
const REPLICATION: usize = 3;
/// Longest wait for `reassign --balance --wait`.
const REASSIGN: Duration = Duration::from_secs(120);
/// A header on every record, so that the moved logs hold some data for the throttle.
static PADDING: [u8; 512] = [b'x'; 512];

/// A broker process started by the test, stopped when dropped (its log printed if the test is
/// failing).
#[derive(Debug)]
struct Broker {
    child: Child,
    log: PathBuf,
}

impl Broker {
    fn start(id: i64, controllers: &str, dir: &Path) -> Broker {
        let log = dir.join(format!("broker-{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(TIDE)
            .args(["broker", "--broker-id", &id.to_string(), "--controllers", controllers])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.join(format!("broker-{id}")))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Broker { child, log }
    }

    /// Fails the test with the end of the broker's log when it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the fourth broker exited ({status}):\n{}", self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(20));
        if std::thread::panicking() {
            eprintln!("--- end of the fourth broker's log ---\n{}", self.log_tail());
        }
    }
}

/// Calls `check` until it gives `Ok`, failing with its last `Err` after `within`.
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(t) => return t,
            Err(last) if Instant::now() > deadline => {
                panic!("no {what} within {within:?}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn ids(v: &Value) -> Vec<i64> {
    let list = v.as_array().unwrap_or_else(|| panic!("{v} is not a list"));
    list.iter().map(|i| i.as_i64().unwrap_or_else(|| panic!("{i} is not a broker id"))).collect()
}

/// Partition -> replicas of the topic in `tide topic describe --output json`.
fn replicas_of(topic: &Value) -> BTreeMap<i64, Vec<i64>> {
    topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].as_i64().unwrap(), ids(&p["replicas"])))
        .collect()
}

/// Ok when the assignment has every partition, each with `REPLICATION` distinct replicas out
/// of `brokers`, every broker holding the same number of replicas and being the first replica
/// (the preferred leader) of the same number of partitions.
fn check_spread(
    assignment: &BTreeMap<i64, Vec<i64>>,
    brokers: &BTreeSet<i64>,
) -> Result<(), String> {
    let partitions: Vec<i64> = assignment.keys().copied().collect();
    if partitions != (0..PARTITIONS as i64).collect::<Vec<_>>() {
        return Err(format!("partitions {partitions:?} in {assignment:?}"));
    }
    let mut replicas: BTreeMap<i64, usize> = brokers.iter().map(|&b| (b, 0)).collect();
    let mut preferred = replicas.clone();
    for (p, r) in assignment {
        let distinct: BTreeSet<i64> = r.iter().copied().collect();
        if r.len() != REPLICATION || distinct.len() != REPLICATION {
            return Err(format!("partition {p} has replicas {r:?}"));
        }
        if !distinct.is_subset(brokers) {
            return Err(format!("partition {p} has replicas {r:?} outside brokers {brokers:?}"));
        }
        for b in r {
            *replicas.get_mut(b).unwrap() += 1;
        }
        *preferred.get_mut(&r[0]).unwrap() += 1;
    }
    let share = PARTITIONS * REPLICATION / brokers.len();
    if replicas.values().any(|&n| n != share) {
        return Err(format!("replicas per broker {replicas:?} (want {share}): {assignment:?}"));
    }
    let leads = PARTITIONS / brokers.len();
    if preferred.values().any(|&n| n != leads) {
        return Err(format!("preferred leaders per broker {preferred:?}: {assignment:?}"));
    }
    Ok(())
}

/// What the load saw, shared by the test thread, the producer task and its callbacks, and the
/// consumer task.
#[derive(Debug, Default)]
struct Load {
    stop_producing: AtomicBool,
    stop_consuming: AtomicBool,
    /// Records handed to the producer; each gets exactly one callback.
    sent: AtomicU64,
    acked: Mutex<HashSet<u64>>,
    /// Errors reported to the application: by `send` or by a delivery callback.
    produce_errors: Mutex<Vec<String>>,
    consumed: Mutex<Consumed>,
    consume_errors: Mutex<Vec<String>>,
}

#[derive(Debug, Default)]
struct Consumed {
    ids: HashSet<u64>,
    records: u64,
    /// Ids read more than once (stored twice, or read twice).
    duplicates: u64,
    /// Records not at the offset after the partition's previous one, or not an id.
    irregular: Vec<String>,
}

impl Load {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn read(&self) -> usize {
        self.consumed.lock().unwrap().ids.len()
    }

    fn errors(&self) -> String {
        let first = |errors: &Mutex<Vec<String>>| {
            let errors = errors.lock().unwrap();
            format!("{} {:?}", errors.len(), &errors[..errors.len().min(5)])
        };
        format!(
            "produce errors {}, consume errors {}",
            first(&self.produce_errors),
            first(&self.consume_errors)
        )
    }
}

/// Sends records with values "0", "1", ... round robin over the partitions, ~1000 a second,
/// until told to stop; then flushes and closes.
async fn produce(bootstrap: Vec<String>, load: Arc<Load>) {
    let cluster = Cluster::new(ClientConfig::new(bootstrap)).expect("a client");
    let config = ProducerConfig {
        acks: Acks::All,
        enable_idempotence: true,
        retry_backoff: Duration::from_millis(50),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&cluster, config).expect("a producer");
    let mut id = 0u64;
    while !load.stop_producing.load(Ordering::Acquire) {
        let record = ProducerRecord::new(TOPIC)
            .partition((id % PARTITIONS as u64) as i32)
            .header("pad", Some(Bytes::from_static(&PADDING)))
            .value(id.to_string());
        load.sent.fetch_add(1, Ordering::AcqRel);
        let outcome = load.clone();
        let sent = producer
            .send_with_callback(record, move |result| match result {
                Ok(_) => {
                    outcome.acked.lock().unwrap().insert(id);
                }
                Err(e) => outcome.produce_errors.lock().unwrap().push(format!("record {id}: {e}")),
            })
            .await;
        // The callback has the error too.
        if sent.is_err() {
            break;
        }
        id += 1;
        if id.is_multiple_of(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    producer.flush().await;
    producer.close().await;
}

/// Reads every partition from offset 0 until told to stop.
async fn consume(bootstrap: Vec<String>, load: Arc<Load>) {
    let cluster = Cluster::new(ClientConfig::new(bootstrap)).expect("a client");
    let config = ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(&cluster, config).expect("a consumer");
    consumer.assign((0..PARTITIONS as i32).map(|p| (TOPIC.to_string(), p)).collect());
    for p in 0..PARTITIONS as i32 {
        consumer.seek(TOPIC, p, 0).expect("seek to 0");
    }
    let mut next = [0i64; PARTITIONS];
    while !load.stop_consuming.load(Ordering::Acquire) {
        let records = match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => records,
            Err(e) => {
                {
                    let mut errors = load.consume_errors.lock().unwrap();
                    if errors.len() < 100 {
                        errors.push(e.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut consumed = load.consumed.lock().unwrap();
        for r in records {
            consumed.records += 1;
            let expected = &mut next[r.partition as usize];
            if r.offset != *expected && consumed.irregular.len() < 100 {
                let at = format!("{}-{}@{}", r.topic, r.partition, r.offset);
                consumed.irregular.push(format!("{at} read where {} was next", *expected));
            }
            *expected = r.offset + 1;
            let id = r.value.as_deref().and_then(|v| std::str::from_utf8(v).ok());
            match id.and_then(|v| v.parse::<u64>().ok()) {
                Some(id) if !consumed.ids.insert(id) => consumed.duplicates += 1,
                Some(_) => {}
                None if consumed.irregular.len() < 100 => {
                    let what = format!("{}-{}@{}: {:?}", r.topic, r.partition, r.offset, r.value);
                    consumed.irregular.push(format!("{what} is not an id"));
                }
                None => {}
            }
        }
    }
}

#[test]
fn a_fourth_broker_takes_its_share_under_load_and_no_record_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let dev = Dev::start(&root.path().join("dev"), &["--brokers", "3", "--coordinators", "1"]);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let status = dev.json(&["cluster", "status"]);
    let initial: BTreeSet<i64> = status["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["broker_id"].as_i64().unwrap())
        .collect();
    assert_eq!(initial.len(), 3, "{status}");
    let partitions = PARTITIONS.to_string();
    let replication = REPLICATION.to_string();
    let create = ["topic", "create", TOPIC, "--partitions", &partitions];
    dev.ok(&[&create[..], &["--replication-factor", &replication]].concat(), None);

    // The load: it runs from before the fourth broker starts until after the move.
    let load = Arc::new(Load::default());
    let bootstrap: Vec<String> = dev.bootstrap.split(',').map(str::to_string).collect();
    let producing = runtime.spawn(produce(bootstrap.clone(), load.clone()));
    let consuming = runtime.spawn(consume(bootstrap, load.clone()));
    wait_for("records acknowledged and read before the move", CLI, || {
        let (acked, read) = (load.acked(), load.read());
        if acked >= 3000 && read >= 1000 {
            Ok(())
        } else {
            Err(format!("{acked} acknowledged, {read} read; {}", load.errors()))
        }
    });

    let new_id = initial.last().unwrap() + 1;
    let mut broker = Broker::start(new_id, &dev.bootstrap, root.path());
    let brokers = wait_for("fourth live broker", CLI, || {
        broker.assert_running();
        let status = dev.json(&["cluster", "status"]);
        let live: BTreeSet<i64> = status["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["fenced"] == false)
            .map(|b| b["broker_id"].as_i64().unwrap())
            .collect();
        if live.len() == 4 && live.contains(&new_id) { Ok(live) } else { Err(status.to_string()) }
    });

    // A dry run shows a balanced plan and submits nothing.
    let before = replicas_of(&dev.json(&["topic", "describe", TOPIC]));
    // The brokers named: one whose lease lapses for a moment on this loaded machine must not
    // make the plan refuse (or, named, it is still planned for).
    let over = brokers.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let balance = ["partitions", "reassign", "--balance", "--topic", TOPIC, "--brokers", &over];
    let plan = dev.json(&[&balance[..], &["--dry-run"]].concat());
    let mut planned = before.clone();
    for p in plan["partitions"].as_array().unwrap_or_else(|| panic!("plan {plan}")) {
        assert_eq!(p["topic"], TOPIC, "{plan}");
        planned.insert(p["partition"].as_i64().unwrap(), ids(&p["replicas"]));
    }
    check_spread(&planned, &brokers).unwrap_or_else(|e| panic!("dry-run plan {plan}: {e}"));
    assert_no_reassignments(&dev);
    assert_eq!(replicas_of(&dev.json(&["topic", "describe", TOPIC])), before, "dry run moved");

    let throttle = (10 << 20).to_string();
    let started = Instant::now();
    let reassign = [&balance[..], &["--throttle", &throttle, "--wait"]].concat();
    let moved = dev.ok_within(&reassign, None, REASSIGN);
    println!("reassigned in {:.1?}:\n{moved}", started.elapsed());
    broker.assert_running();

    assert_no_reassignments(&dev);
    wait_for("balanced and fully in sync topic", Duration::from_secs(30), || {
        let topic = dev.json(&["topic", "describe", TOPIC]);
        check_spread(&replicas_of(&topic), &brokers).map_err(|e| format!("{e}: {topic}"))?;
        for p in topic["partitions"].as_array().unwrap() {
            let replicas: BTreeSet<i64> = ids(&p["replicas"]).into_iter().collect();
            let isr: BTreeSet<i64> = ids(&p["isr"]).into_iter().collect();
            let leader = p["leader"].as_i64().unwrap();
            if isr != replicas || !replicas.contains(&leader) {
                return Err(format!("partition {p} not led by an in-sync replica: {topic}"));
            }
        }
        Ok(())
    });

    // The load goes on after the move, then stops; the consumer reads everything acknowledged.
    let acked_at_move = load.acked();
    wait_for("records acknowledged after the move", Duration::from_secs(30), || {
        let acked = load.acked();
        if acked >= acked_at_move + 2000 {
            Ok(())
        } else {
            Err(format!("{acked} acknowledged, {acked_at_move} at the move; {}", load.errors()))
        }
    });
    load.stop_producing.store(true, Ordering::Release);
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(150), producing).await })
        .expect("the producer flushed and closed within its delivery timeout")
        .expect("the producer task did not panic");
    let sent = load.sent.load(Ordering::Acquire);
    wait_for("outcome of every record sent", Duration::from_secs(10), || {
        let done = load.acked() + load.produce_errors.lock().unwrap().len();
        if done as u64 == sent { Ok(()) } else { Err(format!("{done} of {sent}")) }
    });
    let acked = load.acked.lock().unwrap().clone();
    wait_for("every acknowledged record read", Duration::from_secs(60), || {
        let consumed = load.consumed.lock().unwrap();
        let missing = acked.iter().filter(|id| !consumed.ids.contains(id)).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing; {}", load.errors())) }
    });
    load.stop_consuming.store(true, Ordering::Release);
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), consuming).await })
        .expect("the consumer stopped")
        .expect("the consumer task did not panic");

    let consumed = load.consumed.lock().unwrap();
    println!(
        "sent {sent}, acknowledged {}, read {} records ({} distinct ids, {} read twice)",
        acked.len(),
        consumed.records,
        consumed.ids.len(),
        consumed.duplicates
    );
    let produce_errors = load.produce_errors.lock().unwrap();
    assert!(produce_errors.is_empty(), "the producer reported errors: {produce_errors:?}");
    let consume_errors = load.consume_errors.lock().unwrap();
    assert!(consume_errors.is_empty(), "the consumer reported errors: {consume_errors:?}");
    assert!(acked.iter().all(|id| consumed.ids.contains(id)), "an acknowledged record is lost");
    assert!(consumed.ids.iter().all(|&id| id < sent), "read a record never sent");
    assert_eq!(consumed.duplicates, 0, "an idempotent producer's records are stored once");
    assert!(consumed.irregular.is_empty(), "read out of offset order: {:?}", consumed.irregular);
    drop((consumed, produce_errors, consume_errors));

    invalid_plans_are_refused(&dev, root.path(), &brokers);
    broker.assert_running();
}

/// `reassign --status` lists nothing in progress.
fn assert_no_reassignments(dev: &Dev) {
    let status = dev.json(&["partitions", "reassign", "--status"]);
    let moving = status["reassignments"].as_array().unwrap_or_else(|| panic!("{status}"));
    assert!(moving.is_empty(), "reassignments in progress: {status}");
}

/// A plan naming an unknown broker, or one broker twice, is refused with one error line that
/// says so, and nothing moves.
fn invalid_plans_are_refused(dev: &Dev, dir: &Path, brokers: &BTreeSet<i64>) {
    let before = replicas_of(&dev.json(&["topic", "describe", TOPIC]));
    let (a, b) = (*brokers.first().unwrap(), *brokers.last().unwrap());
    let duplicate: &[&str] = &["duplicate", "twice", "more than once", "repeat", "distinct"];
    for (name, replicas, mentions) in [
        ("unknown-broker", vec![a, b, 42], &["42"][..]),
        ("duplicate-broker", vec![a, a, b], duplicate),
    ] {
        let partition = json!({ "topic": TOPIC, "partition": 0, "replicas": replicas });
        let plan = json!({ "partitions": [partition] });
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, plan.to_string()).unwrap();
        let out = dev.tide(&["partitions", "reassign", "--plan", file.to_str().unwrap()], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {plan} was accepted: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("error:"), "{name}: {err}");
        let lower = err.to_lowercase();
        assert!(mentions.iter().any(|m| lower.contains(m)), "{name}: {err}");
    }
    assert_no_reassignments(dev);
    let after = replicas_of(&dev.json(&["topic", "describe", TOPIC]));
    assert_eq!(after, before, "a refused plan moved replicas");
}
