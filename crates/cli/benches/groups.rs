//! Consumer groups on three brokers and one or two group coordinators (`tide coordinator`),
//! every service a process on this machine:
//!
//! - **rebalance**: how long a group takes to reach a stable assignment when it grows from 1 to
//!   10 members on a 100-partition topic. Members are `GroupConsumer`s, each a task of this
//!   process with its own client, polling in a loop; ownership is tracked from their
//!   rebalance listeners, so "stable" means every member has been handed its 10 partitions,
//!   and a partition handed to a member while another still owns it is counted as a violation.
//!   The coordinator's own measure (its `group stable` log line) and `DescribeGroup` are
//!   checked beside it. One row per heartbeat interval: the protocol moves each member one
//!   step per heartbeat.
//! - **commits**: `CommitOffsets` of one offset per call, raw gRPC from N concurrent tasks, on
//!   one group or one group per task (spread over the shards); acks=all to the RF-3 offsets
//!   topic.
//! - **produce**: the log write a commit is built on, in the same run: small records with
//!   acks=all and the coordinator's producer settings to RF-3 topics (`min.insync.replicas=2`,
//!   as the offsets topic), from N concurrent senders each with one record in flight, all to
//!   one partition or each to its own of 16.
//!
//! Commit and produce rows are sampled `--repeats` times, interleaved, with the CPU time each
//! process (brokers, coordinators, this one) spent per operation.
//!
//! ```sh
//! cargo bench -p tideline-cli --bench groups -- --runs 5 --secs 1.5 --repeats 3
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Procs, machine, median, process_cpu_seconds, start_cluster, start_coordinators};
use tideline_client::{
    Acks, Admin, ClientConfig, Cluster, GroupConsumer, GroupConsumerConfig, Producer,
    ProducerConfig, ProducerRecord, RebalanceEvent,
};
use tideline_proto::v1 as pb;
use tideline_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Partitions of the topic the group reads.
const PARTITIONS: i32 = 100;
/// Members after the group grew.
const MEMBERS: usize = 10;
/// Bytes of each produced record's value (an offset commit record is about this size).
const RECORD: usize = 100;
/// The measurements of the rate table.
const PRODUCE_ONE: &str = "produce, 1 partition";
const PRODUCE_SPREAD: &str = "produce, a partition per task (of 16)";
const COMMIT_ONE: &str = "commits, one group";
const COMMIT_SPREAD: &str = "commits, a group per task";
const WHATS: [&str; 4] = [PRODUCE_ONE, PRODUCE_SPREAD, COMMIT_ONE, COMMIT_SPREAD];
/// Warm-up before each timed commit or produce measurement.
const WARMUP: Duration = Duration::from_millis(500);

struct Args {
    runs: usize,
    secs: f64,
    repeats: usize,
    concurrency: Vec<usize>,
    heartbeats_ms: Vec<i64>,
    two_coordinators: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: 5,
        secs: 1.5,
        repeats: 3,
        concurrency: vec![1, 8, 64],
        heartbeats_ms: vec![5000, 500],
        two_coordinators: true,
    };
    let list = |v: String| -> Vec<String> { v.split(',').map(str::to_string).collect() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match arg.as_str() {
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--secs" => a.secs = value().parse().expect("--secs SECONDS"),
            "--repeats" => a.repeats = value().parse().expect("--repeats N"),
            "--concurrency" => {
                a.concurrency =
                    list(value()).iter().map(|n| n.parse().expect("--concurrency N,N")).collect()
            }
            "--heartbeats-ms" => {
                a.heartbeats_ms = list(value())
                    .iter()
                    .map(|n| n.parse().expect("--heartbeats-ms MS,MS"))
                    .collect()
            }
            "--one-coordinator" => a.two_coordinators = false,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// `p` (0..=1) of `sorted`, in ms.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Who owns which partition, as the members' rebalance listeners report it.
#[derive(Default)]
struct Ownership {
    by_member: BTreeMap<usize, BTreeSet<i32>>,
    owner: HashMap<i32, usize>,
    /// Partitions handed to a member while another member still owned them.
    doubles: usize,
    /// `Assigned` and `Revoked`/`Lost` events per member.
    assigned_events: BTreeMap<usize, usize>,
    revoked_events: BTreeMap<usize, usize>,
}

impl Ownership {
    fn apply(&mut self, member: usize, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Assigned(partitions) => {
                *self.assigned_events.entry(member).or_default() += 1;
                for (_, p) in partitions {
                    if self.owner.insert(p, member).is_some_and(|m| m != member) {
                        self.doubles += 1;
                    }
                    self.by_member.entry(member).or_default().insert(p);
                }
            }
            RebalanceEvent::Revoked(partitions) | RebalanceEvent::Lost(partitions) => {
                *self.revoked_events.entry(member).or_default() += 1;
                for (_, p) in partitions {
                    if self.owner.get(&p) == Some(&member) {
                        self.owner.remove(&p);
                    }
                    if let Some(owned) = self.by_member.get_mut(&member) {
                        owned.remove(&p);
                    }
                }
            }
        }
    }

    /// True when each of `members` members owns `PARTITIONS / members` partitions and every
    /// partition has exactly one owner.
    fn balanced(&self, members: usize) -> bool {
        let share = PARTITIONS as usize / members;
        self.owner.len() == PARTITIONS as usize
            && (0..members).all(|m| self.by_member.get(&m).map_or(0, BTreeSet::len) == share)
    }
}

/// One group member: polls until `stop`, then closes (commits and leaves).
async fn member(
    controller: String,
    group: String,
    topic: String,
    index: usize,
    ownership: Arc<Mutex<Ownership>>,
    stop: Arc<AtomicBool>,
) {
    // Its own client, as a member in its own process would have.
    let cluster = Cluster::new(ClientConfig::new([controller])).unwrap();
    let mut consumer = GroupConsumer::new(&cluster, GroupConsumerConfig::new(group)).unwrap();
    consumer.set_rebalance_listener(move |event: RebalanceEvent| {
        ownership.lock().unwrap().apply(index, event);
    });
    consumer.subscribe([topic]).unwrap();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = consumer.poll(Duration::from_millis(100)).await {
            eprintln!("member {index}: poll failed: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer.close()).await;
}

/// Waits (up to 120 s) until `done` holds of the ownership; the time it took.
async fn wait_for(ownership: &Mutex<Ownership>, done: impl Fn(&Ownership) -> bool) -> Duration {
    let start = Instant::now();
    while !done(&ownership.lock().unwrap()) {
        assert!(start.elapsed() < Duration::from_secs(120), "the group did not settle");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// The duration of the first "group stable" with `members` members the coordinators logged
/// for `group`, in ms (their rebalance metric: first change of the target to stable).
fn logged_stable_ms(root: &Path, group: &str, members: u64) -> Option<f64> {
    let mut found = None;
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("coordinator-") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let f = &v["fields"];
            if f["message"] == "group stable"
                && f["group"] == group
                && f["members"].as_u64() == Some(members)
            {
                found = found.or(f["ms"].as_f64());
            }
        }
    }
    found
}

/// What one rebalance run measured.
struct Rebalance {
    /// From starting the 9 members until every member owns its 10 partitions.
    stable: Duration,
    /// The coordinator's own measure.
    logged_ms: Option<f64>,
    /// Revocation steps of the first member, and the most assignment steps of a new one.
    revoke_steps: usize,
    assign_steps: usize,
    doubles: usize,
    /// How long the final `DescribeGroup` took.
    describe: Duration,
}

/// Grows group `group` from 1 to 10 members. The 9 start `phase` after the first member got
/// its partitions, so that runs sample where in its heartbeat cycle the first member is.
async fn rebalance(
    cluster: &Cluster,
    root: &Path,
    group: &str,
    topic: &str,
    phase: Duration,
) -> Rebalance {
    let controller = cluster.config().bootstrap[0].clone();
    let ownership = Arc::new(Mutex::new(Ownership::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |index: usize| {
        tokio::spawn(member(
            controller.clone(),
            group.to_string(),
            topic.to_string(),
            index,
            Arc::clone(&ownership),
            Arc::clone(&stop),
        ))
    };
    let mut tasks = vec![spawn(0)];
    wait_for(&ownership, |o| o.balanced(1)).await;
    tokio::time::sleep(phase).await;
    let start = Instant::now();
    tasks.extend((1..MEMBERS).map(spawn));
    wait_for(&ownership, |o| o.balanced(MEMBERS)).await;
    let stable = start.elapsed();
    let (revoke_steps, assign_steps, doubles) = {
        let o = ownership.lock().unwrap();
        (
            o.revoked_events.get(&0).copied().unwrap_or(0),
            (1..MEMBERS).map(|m| o.assigned_events.get(&m).copied().unwrap_or(0)).max().unwrap(),
            o.doubles,
        )
    };
    // The coordinator agrees: Stable, ten members of ten partitions each.
    let admin = Admin::new(cluster);
    let asked = Instant::now();
    let mut described = admin.describe_group(group).await.unwrap();
    let mut describe = asked.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while described.state != "Stable" {
        assert!(Instant::now() < deadline, "DescribeGroup never said Stable");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let asked = Instant::now();
        described = admin.describe_group(group).await.unwrap();
        describe = asked.elapsed();
    }
    assert_eq!(described.members.len(), MEMBERS);
    assert!(described.members.iter().all(|m| m.assignment.len() == PARTITIONS as usize / MEMBERS));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    Rebalance {
        stable,
        logged_ms: logged_stable_ms(root, group, MEMBERS as u64),
        revoke_steps,
        assign_steps,
        doubles,
        describe,
    }
}

/// What a commit or produce measurement gives.
struct Measured {
    /// Operations per second in the timed part.
    rate: f64,
    /// Latencies of the timed part, sorted.
    latencies: Vec<Duration>,
    /// Every operation, warm-up included.
    ops: u64,
}

/// The repeated samples of one cell of the rate table: rates, latencies (pooled), CPU µs per
/// operation (brokers, coordinators, this process).
#[derive(Default)]
struct Samples(Vec<f64>, Vec<Duration>, Vec<[f64; 3]>);

/// A channel to `address` with Nagle off, as the client's.
fn coordinator_channel(address: &str) -> Channel {
    Endpoint::from_shared(format!("http://{address}")).unwrap().tcp_nodelay(true).connect_lazy()
}

/// Commits per second, the sorted latencies and the number of every commit (warm-up included)
/// of `tasks` tasks each committing one offset per call (admin commits: the groups have no
/// members) for `secs` after a warm-up, on one group or on one group per task.
async fn commits(
    cluster: &Cluster,
    topic: &str,
    tag: &str,
    tasks: usize,
    many_groups: bool,
    secs: f64,
) -> Measured {
    let metadata = cluster.refresh_metadata().await.unwrap();
    let mut channels: HashMap<String, Channel> = HashMap::new();
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let group = if many_groups { format!("{tag}-{t}") } else { tag.to_string() };
        let (_, address) = metadata.coordinator_for(&group).expect("the group has a coordinator");
        let channel = channels
            .entry(address.clone())
            .or_insert_with(|| coordinator_channel(&address))
            .clone();
        let mut client = CoordinatorServiceClient::new(channel);
        let topic = topic.to_string();
        handles.push(tokio::spawn(async move {
            let (mut latencies, mut ops) = (Vec::new(), 0u64);
            let mut offset = 0i64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                offset += 1;
                let request = pb::CommitOffsetsRequest {
                    group_id: group.clone(),
                    member_id: String::new(),
                    member_epoch: -1,
                    offsets: vec![pb::OffsetCommit {
                        topic: topic.clone(),
                        partition: (t as i32) % PARTITIONS,
                        offset,
                        leader_epoch: -1,
                        metadata: String::new(),
                    }],
                };
                client.commit_offsets(request).await.expect("commit");
                if sent >= start {
                    latencies.push(sent.elapsed());
                }
                ops += 1;
            }
            (latencies, ops)
        }));
    }
    let (mut latencies, mut ops) = (Vec::new(), 0);
    for h in handles {
        let (l, n) = h.await.unwrap();
        latencies.extend(l);
        ops += n;
    }
    latencies.sort_unstable();
    Measured { rate: latencies.len() as f64 / secs, latencies, ops }
}

/// Records per second, the sorted latencies and the number of every record (warm-up included)
/// of `senders` tasks each sending one small record at a time with acks=all to `topic`, for
/// `secs` after a warm-up; task `t` writes to partition `t % partitions`.
async fn produce(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    senders: usize,
    secs: f64,
) -> Measured {
    // The coordinator's producer settings.
    let producer = Arc::new(
        Producer::new(
            cluster,
            ProducerConfig {
                acks: Acks::All,
                enable_idempotence: true,
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            },
        )
        .unwrap(),
    );
    let value = Bytes::from(vec![7u8; RECORD]);
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for t in 0..senders {
        let (producer, value, topic) = (Arc::clone(&producer), value.clone(), topic.to_string());
        let partition = t as i32 % partitions;
        handles.push(tokio::spawn(async move {
            let (mut latencies, mut ops) = (Vec::new(), 0u64);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let record =
                    ProducerRecord::new(topic.as_str()).partition(partition).value(value.clone());
                producer.send_and_wait(record).await.expect("record acknowledged");
                if sent >= start {
                    latencies.push(sent.elapsed());
                }
                ops += 1;
            }
            (latencies, ops)
        }));
    }
    let (mut latencies, mut ops) = (Vec::new(), 0);
    for h in handles {
        let (l, n) = h.await.unwrap();
        latencies.extend(l);
        ops += n;
    }
    if let Ok(p) = Arc::try_unwrap(producer) {
        p.close().await;
    }
    latencies.sort_unstable();
    Measured { rate: latencies.len() as f64 / secs, latencies, ops }
}

/// Creates `name` and waits until every partition has a leader and a full ISR.
async fn create_topic(admin: &Admin, name: &str, partitions: i32, rf: i32) {
    let mut configs = HashMap::new();
    if rf == 3 {
        configs.insert("min.insync.replicas".to_string(), "2".to_string());
    }
    admin.create_topic(name, partitions, rf, configs).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin.describe_topic(name).await.is_ok_and(|t| {
        t.partitions.len() == partitions as usize
            && t.partitions.iter().all(|p| p.leader >= 0 && p.isr.len() == rf as usize)
    }) {
        assert!(Instant::now() < deadline, "topic {name} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rebalance table row.
struct RebalanceRow {
    coordinators: usize,
    heartbeat_ms: i64,
    runs: Vec<Rebalance>,
}

/// A commit or produce table row.
struct RateRow {
    coordinators: usize,
    what: String,
    tasks: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    /// CPU µs per operation of the brokers, the coordinators and this process.
    cpu_us: [f64; 3],
}

/// Setup of one cluster: coordinators and heartbeat interval, and whether commits and produce
/// are measured on it.
struct Setup {
    coordinators: usize,
    heartbeat_ms: i64,
    rates: bool,
}

fn main() {
    let args = parse_args();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut setups: Vec<Setup> = args
        .heartbeats_ms
        .iter()
        .map(|&heartbeat_ms| Setup { coordinators: 1, heartbeat_ms, rates: false })
        .collect();
    if let Some(last) = setups.last_mut() {
        last.rates = true;
    }
    if args.two_coordinators {
        let heartbeat_ms = *args.heartbeats_ms.iter().min().unwrap();
        setups.push(Setup { coordinators: 2, heartbeat_ms, rates: true });
    }
    println!("machine: {}", machine());
    println!(
        "3 brokers, a controller and 1-2 coordinators as processes on this machine; offsets topic 16 shards, RF 3, min.insync.replicas 2"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut rebalances, mut rates) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for (n, setup) in setups.iter().enumerate() {
            let dir = root.path().join(format!("setup-{n}"));
            std::fs::create_dir(&dir).unwrap();
            let (mut procs, cluster): (Procs, Cluster) = start_cluster(&dir, 3).await;
            let flags: Vec<String> = [
                "--group-heartbeat-interval-ms",
                &setup.heartbeat_ms.to_string(),
                "--log-format",
                "json",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            start_coordinators(&mut procs, &dir, &cluster, setup.coordinators, &flags).await;
            let admin = Admin::new(&cluster);
            let topic = "events";
            create_topic(&admin, topic, PARTITIONS, 1).await;
            // Coordinators learn of new topics at housekeeping (every second).
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let name = format!(
                "{} coordinator(s), heartbeat {} ms",
                setup.coordinators, setup.heartbeat_ms
            );
            let mut runs = Vec::new();
            for run in 0..args.runs {
                let phase = Duration::from_millis(setup.heartbeat_ms as u64)
                    .mul_f64((run as f64 + 0.5) / args.runs as f64);
                let group = format!("grow-{n}-{run}");
                let r = rebalance(&cluster, &dir, &group, topic, phase).await;
                eprintln!(
                    "{name}, run {run} (phase {:.0} ms): stable after {:.0} ms (coordinator: {:?} ms); first member revoked in {} step(s), new members assigned in up to {}; {} double owners; DescribeGroup {:.1} ms",
                    ms(phase),
                    ms(r.stable),
                    r.logged_ms,
                    r.revoke_steps,
                    r.assign_steps,
                    r.doubles,
                    ms(r.describe)
                );
                runs.push(r);
            }
            rebalances.push(RebalanceRow {
                coordinators: setup.coordinators,
                heartbeat_ms: setup.heartbeat_ms,
                runs,
            });
            if !setup.rates {
                continue;
            }
            // Processes: the controller, brokers 1-3, then the coordinators.
            let pids: Vec<u32> = procs.0.iter().map(|c| c.id()).collect();
            let cpu = || {
                let sum = |p: &[u32]| p.iter().map(|&p| process_cpu_seconds(p)).sum::<f64>();
                [sum(&pids[1..4]), sum(&pids[4..]), process_cpu_seconds(std::process::id())]
            };
            create_topic(&admin, "rtt", 1, 3).await;
            create_topic(&admin, "rtt16", 16, 3).await;
            // Every cell measured `repeats` times, interleaved, so that a burst of load from
            // outside hits one sample of a cell rather than all of it.
            let cells: Vec<(usize, &str)> = args
                .concurrency
                .iter()
                .flat_map(|&tasks| WHATS.iter().map(move |&what| (tasks, what)))
                .collect();
            let mut samples: Vec<Samples> = cells.iter().map(|_| Samples::default()).collect();
            for repeat in 0..args.repeats {
                for (&(tasks, what), sample) in cells.iter().zip(&mut samples) {
                    let tag = format!("commit-{n}-{tasks}-{repeat}");
                    let cpu_before = cpu();
                    let m = match what {
                        PRODUCE_ONE => produce(&cluster, "rtt", 1, tasks, args.secs).await,
                        PRODUCE_SPREAD => produce(&cluster, "rtt16", 16, tasks, args.secs).await,
                        COMMIT_ONE => {
                            commits(&cluster, topic, &tag, tasks, false, args.secs).await
                        }
                        _ => commits(&cluster, topic, &tag, tasks, true, args.secs).await,
                    };
                    let cpu_after = cpu();
                    let cpu_us: [f64; 3] = std::array::from_fn(|i| {
                        (cpu_after[i] - cpu_before[i]) * 1e6 / m.ops.max(1) as f64
                    });
                    eprintln!(
                        "{name}: {what}, {tasks} task(s), repeat {repeat}: {:.0}/s, p50 {:.2} ms p99 {:.2} ms, CPU us per op: brokers {:.0}, coordinators {:.0}, bench {:.0}",
                        m.rate,
                        percentile(&m.latencies, 0.5),
                        percentile(&m.latencies, 0.99),
                        cpu_us[0],
                        cpu_us[1],
                        cpu_us[2]
                    );
                    sample.0.push(m.rate);
                    sample.1.extend(m.latencies);
                    sample.2.push(cpu_us);
                }
            }
            for (&(tasks, what), Samples(rate, mut latencies, cpu_us)) in cells.iter().zip(samples)
            {
                latencies.sort_unstable();
                rates.push(RateRow {
                    coordinators: setup.coordinators,
                    what: what.into(),
                    tasks,
                    rate: median(rate),
                    p50: percentile(&latencies, 0.5),
                    p99: percentile(&latencies, 0.99),
                    cpu_us: std::array::from_fn(|i| median(cpu_us.iter().map(|c| c[i]).collect())),
                });
            }
            drop(procs);
        }
    });

    println!();
    println!(
        "Rebalance 1 -> {MEMBERS} members, {PARTITIONS} partitions ({} runs each; median, range in brackets):",
        args.runs
    );
    println!();
    println!(
        "| coordinators | heartbeat interval | stable, all members own {} (ms) | coordinator's own measure (ms) | in heartbeat intervals | steps: first member revoked / new member assigned | partitions owned twice | DescribeGroup call (ms) |",
        PARTITIONS as usize / MEMBERS
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rebalances {
        let stable: Vec<f64> = row.runs.iter().map(|r| ms(r.stable)).collect();
        let logged: Vec<f64> = row.runs.iter().filter_map(|r| r.logged_ms).collect();
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.0}-{hi:.0}")
        };
        let logged_text = if logged.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0} ({})", median(logged.clone()), range(&logged))
        };
        let m = median(stable.clone());
        println!(
            "| {} | {} ms | **{m:.0}** ({}) | {logged_text} | {:.2} | {:.0} / {:.0} | {} | {:.1} |",
            row.coordinators,
            row.heartbeat_ms,
            range(&stable),
            m / row.heartbeat_ms as f64,
            median(row.runs.iter().map(|r| r.revoke_steps as f64).collect()),
            median(row.runs.iter().map(|r| r.assign_steps as f64).collect()),
            row.runs.iter().map(|r| r.doubles).sum::<usize>(),
            median(row.runs.iter().map(|r| ms(r.describe)).collect()),
        );
    }
    println!();
    println!(
        "Offset commits (one offset per CommitOffsets, admin commits) and produce with acks=all; {} s per sample, {} samples per row (median rate and CPU, percentiles of all samples):",
        args.secs, args.repeats
    );
    println!();
    println!(
        "| coordinators | what | concurrent tasks | per second | p50 ms | p99 ms | p50 / produce p50 (1 in flight) | CPU µs per op: brokers / coordinators / client |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for row in &rates {
        let base = rates
            .iter()
            .find(|r| r.coordinators == row.coordinators && r.what == PRODUCE_ONE && r.tasks == 1)
            .map_or(f64::NAN, |r| r.p50);
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} |",
            row.coordinators,
            row.what,
            row.tasks,
            row.rate,
            row.p50,
            row.p99,
            row.p50 / base,
            row.cpu_us[0],
            row.cpu_us[1],
            row.cpu_us[2]
        );
    }
}
