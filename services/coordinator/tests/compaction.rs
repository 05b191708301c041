//! The offsets topic under compaction: a million commits over a thousand keys shrink to about
//! one record per key, a coordinator taking the shard over replays only those, and a broker
//! killed with SIGKILL in the middle of cleaning loses no latest value.
//!
//! The broker runs as a separate process (this test binary run again as `broker_process`), so
//! it can be killed for real; the controller is in-process and the coordinators are
//! `tideline-coordinator` processes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use common::{Cluster, wait_until};
use tideline_common::OFFSETS_TOPIC;
use tideline_proto::v1 as pb;

const GROUPS: usize = 10;
const PARTITIONS: i32 = 100;
/// Commits per key: GROUPS * PARTITIONS * ROUNDS = 1,000,000 commits.
const ROUNDS: i64 = 1000;

/// Not a test on its own: a broker process for the test below, with the options in
/// `TIDELINE_TEST_BROKER_ARGS` (tab separated). Runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_process() {
    let Ok(args) = std::env::var("TIDELINE_TEST_BROKER_ARGS") else { return };
    let options = tideline_broker::options::Options::try_parse_from(
        std::iter::once("tideline-broker").chain(args.split('\t')),
    )
    .unwrap();
    let _tracing = tideline_common::process::init_tracing("tideline-broker", "text");
    let (config, listen) = <(_, _)>::try_from(options).unwrap();
    tideline_broker::run(config, listen, std::future::pending()).await.unwrap();
}

/// The cleaner of the test's broker: how often it looks for work, and its I/O budget.
struct CleanerPace {
    interval_ms: u64,
    bytes_per_second: u64,
}

fn spawn_broker(
    controller: &str,
    data: &Path,
    log: &Path,
    pace: CleanerPace,
) -> common::ServiceProcess {
    let (interval, rate) = (pace.interval_ms.to_string(), pace.bytes_per_second.to_string());
    let args = [
        "--broker-id",
        "1",
        "--controllers",
        controller,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data.display().to_string(),
        "--log-cleaner-interval-ms",
        &interval,
        "--log-cleaner-io-max-bytes-per-second",
        &rate,
    ]
    .join("\t");
    let out = std::fs::File::options().create(true).append(true).open(log).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "broker_process", "--nocapture", "--test-threads", "1"])
        .env("TIDELINE_TEST_BROKER_ARGS", args)
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    common::ServiceProcess::new("broker 1", child, log)
}

/// Files of the offsets shard's partition directory.
fn shard_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join(format!("{OFFSETS_TOPIC}-0")))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

async fn commit_all(cluster: &Cluster) -> BTreeMap<(usize, i32), i64> {
    let mut tasks = Vec::new();
    for g in 0..GROUPS {
        let (_, mut c) = cluster.coordinator_of(&format!("g{g}")).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let request = pb::CommitOffsetsRequest {
                    group_id: format!("g{g}"),
                    member_id: String::new(),
                    member_epoch: 0,
                    offsets: (0..PARTITIONS)
                        .map(|p| pb::OffsetCommit {
                            topic: "t".into(),
                            partition: p,
                            offset: round * 1000 + i64::from(p),
                            leader_epoch: -1,
                            metadata: String::new(),
                        })
                        .collect(),
                };
                c.commit_offsets(request).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (0..GROUPS)
        .flat_map(|g| (0..PARTITIONS).map(move |p| ((g, p), (ROUNDS - 1) * 1000 + i64::from(p))))
        .collect()
}

async fn fetch_all(cluster: &Cluster) -> BTreeMap<(usize, i32), i64> {
    let mut out = BTreeMap::new();
    for g in 0..GROUPS {
        let (_, mut c) = cluster.coordinator_of(&format!("g{g}")).await;
        let r = c
            .fetch_offsets(pb::FetchOffsetsRequest {
                group_id: format!("g{g}"),
                partitions: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.offsets.into_iter().map(|o| ((g, o.partition), o.offset)));
    }
    out
}

/// `(records, ms)` of the last "shard loaded" line of a coordinator's log.
fn shard_loaded(log: &str) -> Option<(u64, u64)> {
    let colors = regex::Regex::new("\x1b\\[[0-9;]*m").unwrap();
    let line = colors
        .replace_all(log.lines().rev().find(|l| l.contains("shard loaded"))?, "")
        .into_owned();
    let field = |name: &str| -> Option<u64> {
        let re = regex::Regex::new(&format!("{name}=(\\d+)")).unwrap();
        re.captures(&line)?.get(1)?.as_str().parse().ok()
    };
    Some((field("records")?, field("ms")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_commits_compact_to_one_record_per_key_and_survive_a_kill_during_cleaning() {
    let mut cluster = Cluster::start_with(0, |c| {
        c.offsets_topic_partitions = 1;
        c.offsets_topic_segment_bytes = 1 << 20;
        c.offsets_topic_replication_factor = 1;
    })
    .await;
    let data = cluster.root.path().join("broker-1");
    let broker_log = cluster.root.path().join("broker-1.log");
    // No cleaning while the commits are written: the whole shard is dirty when it starts.
    let idle = CleanerPace { interval_ms: 3_600_000, bytes_per_second: 1 << 30 };
    let mut broker = spawn_broker(&cluster.controller_addr, &data, &broker_log, idle);
    let mut ctl = cluster.controller();
    wait_until(Duration::from_secs(30), "the broker registered", || {
        let mut ctl = ctl.clone();
        async move {
            let m = ctl.get_metadata(pb::GetMetadataRequest::default()).await.ok()?.into_inner();
            m.brokers.iter().any(|b| !b.fenced).then_some(())
        }
    })
    .await;
    ctl.create_topic(pb::CreateTopicRequest {
        name: "t".into(),
        partitions: PARTITIONS,
        replication_factor: 1,
        configs: Default::default(),
    })
    .await
    .unwrap();
    cluster.start_coordinator("c1");
    cluster.wait_shards_settled(1).await;

    let expected = commit_all(&cluster).await;
    assert_eq!(expected.len(), 1000);

    // Back with a slow cleaner, which starts on the whole shard at once; killed while the clean
    // is under way (its temporary files are on disk).
    broker.kill9();
    drop(broker);
    let slow = CleanerPace { interval_ms: 200, bytes_per_second: 2 << 20 };
    let mut broker = spawn_broker(&cluster.controller_addr, &data, &broker_log, slow);
    wait_until(Duration::from_secs(120), "a clean in progress", || {
        let cleaning = shard_files(&data).iter().any(|f| {
            let name = f.display().to_string();
            name.ends_with(".cleaned") || name.ends_with(".swap")
        });
        async move { cleaning.then_some(()) }
    })
    .await;
    broker.kill9();
    drop(broker);

    // It comes back with its data and a fast cleaner, which finishes the job.
    let before_restart = std::fs::read_to_string(&broker_log).unwrap_or_default().len();
    let fast = CleanerPace { interval_ms: 200, bytes_per_second: 1 << 30 };
    let _broker = spawn_broker(&cluster.controller_addr, &data, &broker_log, fast);
    wait_until(Duration::from_secs(120), "a clean after the restart", || {
        let text = std::fs::read_to_string(&broker_log).unwrap_or_default();
        let done = text.get(before_restart..).is_some_and(|t| t.contains("log cleaned"));
        async move { done.then_some(()) }
    })
    .await;
    let segments =
        shard_files(&data).iter().filter(|f| f.extension().is_some_and(|e| e == "log")).count();
    eprintln!("the shard has {segments} segments after cleaning");

    // A new coordinator takes the shard over: it replays about one record per key, and every
    // latest value is there.
    cluster.coordinators.get_mut("c1").unwrap().kill9();
    cluster.start_coordinator("c2");
    cluster.wait_shards_settled(1).await;
    let got = fetch_all(&cluster).await;
    assert_eq!(got, expected, "every key has its latest committed offset");
    let (replayed, ms) = shard_loaded(&cluster.coordinator_log("c2")).expect("c2 loaded the shard");
    // The active segment is never compacted: what it holds comes on top of at most one record
    // per key from the cleaned segments before it.
    let active_base = shard_files(&data)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
        .filter_map(|f| f.file_stem()?.to_str()?.parse::<i64>().ok())
        .max()
        .unwrap();
    let client = cluster.client();
    let mut consumer =
        tideline_client::Consumer::new(&client, tideline_client::ConsumerConfig::default())
            .unwrap();
    consumer.assign(vec![(OFFSETS_TOPIC.to_string(), 0)]);
    let end = consumer.seek_to_end(OFFSETS_TOPIC, 0).await.unwrap();
    let active = u64::try_from(end - active_base).unwrap();
    let cleaned = replayed.saturating_sub(active);
    assert!(replayed >= 1000, "replayed {replayed} records for 1000 keys");
    assert!(cleaned <= 1000, "{cleaned} records replayed from the cleaned segments for 1000 keys");
    eprintln!(
        "c2 took the shard over replaying {replayed} records in {ms} ms: at most {active} from the active segment (offsets {active_base}..{end}), the rest ({cleaned}) from the cleaned ones"
    );
    cluster.shutdown().await;
}
