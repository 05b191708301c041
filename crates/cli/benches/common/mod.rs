//! What the `tide` benchmarks share: a cluster of real `tide controller`/`tide broker` (and
//! `tide coordinator`) processes on loopback, the raw disk write limit, the machine's
//! description.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tideline_client::{Admin, ClientConfig, Cluster};

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Kills the service processes when dropped.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts one controller and `brokers` brokers (ids 1..) with data under `root`, and waits
/// until every broker is registered. Returns the processes and a client of the cluster.
pub async fn start_cluster(root: &Path, brokers: i32) -> (Procs, Cluster) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let controller = format!("127.0.0.1:{port}");
    let log = |name: &str| File::create(root.join(name)).unwrap();
    let tide = env!("CARGO_BIN_EXE_tide");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(tide)
            .args(["controller", "--node-id", "1", "--peers", &format!("1={controller}")])
            .args(["--listen", &controller, "--broker-lease-ms", "10000"])
            .arg("--data-dir")
            .arg(root.join("controller"))
            .stdout(Stdio::null())
            .stderr(log("controller.log"))
            .spawn()
            .unwrap(),
    );
    for id in 1..=brokers {
        procs.0.push(
            Command::new(tide)
                .args(["broker", "--broker-id", &id.to_string(), "--controllers", &controller])
                .args(["--listen", "127.0.0.1:0", "--retention-check-interval-ms", "3600000"])
                .arg("--data-dir")
                .arg(root.join(format!("broker-{id}")))
                .stdout(Stdio::null())
                .stderr(log(&format!("broker-{id}.log")))
                .spawn()
                .unwrap(),
        );
    }
    let cluster = Cluster::new(ClientConfig::new([controller.clone()])).unwrap();
    let admin = Admin::new(&cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = admin.metadata(&[]).await
            && m.brokers().filter(|b| !b.fenced).count() == brokers as usize
        {
            break;
        }
        assert!(Instant::now() < deadline, "the brokers did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (procs, cluster)
}

/// Starts `count` group coordinators (`tide coordinator`, ids `c1`, `c2`, ...) registered
/// with `cluster`'s controller, each with these extra flags and its log (stdout and stderr) in
/// `root/coordinator-<id>.log`, and waits until they own every shard of `__consumer_offsets`
/// (created by the controller when the first one registers) and each shard is loaded.
pub async fn start_coordinators(
    procs: &mut Procs,
    root: &Path,
    cluster: &Cluster,
    count: usize,
    flags: &[String],
) {
    let controller = cluster.config().bootstrap.join(",");
    let tide = env!("CARGO_BIN_EXE_tide");
    for i in 1..=count {
        let id = format!("c{i}");
        let log = File::create(root.join(format!("coordinator-{id}.log"))).unwrap();
        procs.0.push(
            Command::new(tide)
                .args(["coordinator", "--coordinator-id", &id, "--controllers", &controller])
                .args(["--listen", "127.0.0.1:0"])
                .args(flags)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let admin = Admin::new(cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = admin.metadata(&[]).await {
            let shards = m.shards();
            let owners: std::collections::BTreeSet<&str> =
                shards.iter().map(|s| s.coordinator_id.as_str()).collect();
            if !shards.is_empty()
                && shards.iter().all(|s| !s.coordinator_id.is_empty() && !s.releasing)
                && m.coordinators().count() == count
                && owners.len() == count.min(shards.len())
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the coordinators did not take every shard");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every shard answers once loaded (the client retries COORDINATOR_LOAD_IN_PROGRESS).
    let metadata = cluster.refresh_metadata().await.unwrap();
    let shards = metadata.shards().len();
    let mut probed = std::collections::BTreeSet::new();
    for n in 0.. {
        let group = format!("probe-{n}");
        if probed.insert(metadata.shard_for(&group).unwrap()) {
            admin.fetch_offsets(&group).await.unwrap();
        }
        if probed.len() == shards {
            break;
        }
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from
/// `/proc/<pid>/stat` (in USER_HZ ticks, 100 per second on Linux); 0 when unreadable.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 =
        rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

/// Runs `sync`.
pub fn sync_all() {
    let _ = Command::new("sync").status();
}

/// Raw sequential write: `mib` MiB in 1 MiB writes into the page cache; MiB/s. The file is
/// deleted and `sync` run afterwards.
pub fn raw_write(path: &Path, mib: u64) -> f64 {
    let block: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut file = File::create(path).unwrap();
    for _ in 0..mib {
        file.write_all(&block).unwrap();
    }
    drop(file);
    let rate = mib as f64 / start.elapsed().as_secs_f64();
    fs::remove_file(path).unwrap();
    sync_all();
    rate
}

/// Cores, CPU model and kernel.
pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
