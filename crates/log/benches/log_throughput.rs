//! Log throughput against the machine's own limits, measured in the same run.
//!
//! `cargo bench -p tideline-log --bench log_throughput [-- --mib 1024 --runs 7 --dir PATH]`
//!
//! Each log figure is measured right beside its limit, as a pair, and the pair's ratio is
//! kept; the order inside a pair alternates between runs, and the report gives medians over
//! runs. On a shared machine throughput drifts by 2x within a minute, so only ratios taken
//! seconds apart are meaningful; the CPU time the process spends per GiB (user + system) is
//! reported beside them, as it does not suffer from other tenants. Dirty pages are flushed
//! (`sync`) before every measurement.
//!
//! Limits: `std::fs::File` writes of 1 MiB (into the page cache, or with `fdatasync` every
//! second) and 1 MiB reads of a page-cached file into one reused buffer.
//! Log: 1 KiB records appended in 16 KiB and 1 MiB batches (flush left to the page cache, or
//! `FlushPolicy::IntervalMs(1000)`), read back in 1 MiB fetches through `Log::read` with
//! `FileRegion::read_to_bytes` (a fresh buffer per fetch, as the gRPC path) and
//! `FileRegion::read_into` (a reused buffer).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tideline_log::{Compression, FlushPolicy, Log, LogConfig, RecordBatchBuilder};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const RECORD_BYTES: usize = 1024;

struct Args {
    mib: u64,
    runs: usize,
    dir: PathBuf,
    /// Measure only this append pair (0-4), for profiling.
    only: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args { mib: 1024, runs: 7, dir: std::env::temp_dir(), only: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mib" => args.mib = it.next().and_then(|v| v.parse().ok()).expect("--mib N"),
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--dir" => args.dir = it.next().map(PathBuf::from).expect("--dir PATH"),
            "--only" => args.only = it.next().and_then(|v| v.parse().ok()),
            "--bench" => {} // passed by cargo bench
            other => panic!("unknown argument {other}; use --mib N --runs N --dir PATH"),
        }
    }
    args
}

/// One measured figure: bytes and records moved in a wall-clock time, and the CPU time (user
/// + system) the process spent on it.
#[derive(Clone, Copy)]
struct Sample {
    bytes: u64,
    records: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Sample {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64()
    }
    fn records_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_s_per_gib(&self) -> f64 {
        self.cpu.as_secs_f64() / (self.bytes as f64 / GIB)
    }
}

/// User + system CPU time of this process so far, from /proc/self/stat (in clock ticks).
fn cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name is in parentheses and may hold spaces: read the fields after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12th and 13th after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10) // USER_HZ is 100 on Linux
}

/// Runs `f` (which returns bytes and records moved), measuring wall-clock and CPU time.
fn measure(f: impl FnOnce() -> (u64, u64)) -> Sample {
    let (cpu0, start) = (cpu_time(), Instant::now());
    let (bytes, records) = f();
    Sample { bytes, records, elapsed: start.elapsed(), cpu: cpu_time().saturating_sub(cpu0) }
}

fn sync_all() {
    let _ = std::process::Command::new("sync").status();
}

fn raw_write(path: &Path, mib: u64, sync_every: Option<Duration>) -> Sample {
    let block: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    measure(|| {
        let mut file = File::create(path).unwrap();
        let mut last_sync = Instant::now();
        for _ in 0..mib {
            file.write_all(&block).unwrap();
            if let Some(every) = sync_every
                && last_sync.elapsed() >= every
            {
                file.sync_data().unwrap();
                last_sync = Instant::now();
            }
        }
        if sync_every.is_some() {
            file.sync_data().unwrap();
        }
        (mib * MIB, 0)
    })
}

fn raw_read(path: &Path) -> Sample {
    let mut buf = vec![0u8; MIB as usize];
    measure(|| {
        let mut file = File::open(path).unwrap();
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                return (total, 0);
            }
            total += n as u64;
        }
    })
}

/// A batch of `records` 1 KiB records, as a producer would send it.
fn batch(records: usize) -> bytes::Bytes {
    let mut b = RecordBatchBuilder::new(Compression::None);
    let value: Vec<u8> = (0..RECORD_BYTES).map(|i| (i * 7 % 256) as u8).collect();
    for i in 0..records {
        b.append(1_700_000_000_000 + i as i64, None, Some(&value), &[]);
    }
    b.build()
}

/// Appends `mib` MiB of batches of `records_per_batch` records from `producers` threads at
/// once (a broker serves many produce requests concurrently: each validates its batch outside
/// the writer lock, and only the file write is serialized).
fn log_append(
    dir: &Path,
    mib: u64,
    records_per_batch: usize,
    flush: FlushPolicy,
    producers: u64,
) -> (Log, Sample) {
    let batch = batch(records_per_batch);
    let count = (mib * MIB).div_ceil(batch.len() as u64).div_ceil(producers) * producers;
    let config = LogConfig { max_batch_bytes: 2 << 20, flush, ..LogConfig::default() };
    let log = Log::open(dir, config).unwrap();
    let sample = measure(|| {
        std::thread::scope(|scope| {
            for _ in 0..producers {
                scope.spawn(|| {
                    for _ in 0..count / producers {
                        log.append(&batch, 0).unwrap();
                    }
                });
            }
        });
        (count * batch.len() as u64, count * records_per_batch as u64)
    });
    (log, sample)
}

/// Reads the whole log in 1 MiB fetches; `reuse` picks `read_into` over `read_to_bytes`.
fn log_read(log: &Log, reuse: bool) -> Sample {
    measure(|| {
        let (mut offset, mut bytes) = (0i64, 0u64);
        let end = log.log_end_offset();
        let mut buf = Vec::new();
        while offset < end {
            let read = log.read(offset, MIB as usize, None).unwrap();
            if reuse {
                read.region.read_into(&mut buf).unwrap();
                bytes += buf.len() as u64;
            } else {
                bytes += read.region.read_to_bytes().unwrap().len() as u64;
            }
            offset = read.region.next_offset();
        }
        (bytes, end as u64)
    })
}

fn median_by(v: &[Sample], key: impl Fn(&Sample) -> f64) -> f64 {
    let mut k: Vec<f64> = v.iter().map(key).collect();
    k.sort_by(f64::total_cmp);
    k[k.len() / 2]
}

fn machine() -> String {
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

/// A log figure and the limit measured beside it, over all runs.
struct Pair {
    name: &'static str,
    limit: &'static str,
    log: Vec<Sample>,
    limits: Vec<Sample>,
}

impl Pair {
    fn push(&mut self, run: usize, log: Sample, limit: Sample) {
        eprintln!(
            "run {run}: {:<54} {:>6.0} MiB/s {:>5.2} cpu-s/GiB   {:<30} {:>6.0} MiB/s {:>5.2} cpu-s/GiB",
            self.name,
            log.mib_s(),
            log.cpu_s_per_gib(),
            self.limit,
            limit.mib_s(),
            limit.cpu_s_per_gib()
        );
        self.log.push(log);
        self.limits.push(limit);
    }
}

/// Measures both sides of a pair, limit first or second. Each side's output is deleted (and
/// the deletion synced) before the other side runs: a side that has to fill memory the other
/// still holds in the page cache pays for fresh pages (on a VM, faults on the host), which made
/// whichever side ran second up to 5x slower.
fn pair(
    limit_first: bool,
    limit: impl Fn() -> Sample,
    log: impl Fn() -> Sample,
) -> (Sample, Sample) {
    if limit_first {
        let l = limit();
        (l, log())
    } else {
        let s = log();
        (limit(), s)
    }
}

fn main() {
    let args = parse_args();
    let root = tempfile::Builder::new().prefix("tideline-bench-").tempdir_in(&args.dir).unwrap();
    eprintln!("{} MiB per measurement, {} runs, in {}", args.mib, args.runs, root.path().display());
    eprintln!("(pass --only N to measure one append pair, 0-4)");
    // Warm-up, not measured: the first large write of a process pays for page-cache growth.
    let warm = root.path().join("warm.bin");
    raw_write(&warm, args.mib, None);
    fs::remove_file(&warm).unwrap();

    // CPU-only: what validating a producer's batch costs, without any I/O.
    for records in [16, 1024] {
        let b = batch(records);
        let (rounds, start) = ((512 * MIB) / b.len() as u64, Instant::now());
        for _ in 0..rounds {
            let parsed = tideline_log::RecordBatch::parse_exact(&b).unwrap();
            parsed.validate(2 << 20, tideline_log::Validation::Full).unwrap();
        }
        let full = (rounds * b.len() as u64) as f64 / MIB as f64 / start.elapsed().as_secs_f64();
        let crc_speed = |crc: fn(&[u8]) -> u32| {
            let start = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(crc(std::hint::black_box(&b[21..])));
            }
            (rounds * b.len() as u64) as f64 / MIB as f64 / start.elapsed().as_secs_f64()
        };
        let crc = crc_speed(tideline_log::batch::crc32c);
        let sse = crc_speed(crc32c::crc32c);
        println!(
            "validation of {} KiB batches (CPU only): full {full:.0} MiB/s, CRC-32C alone {crc:.0} MiB/s (crc32c crate: {sse:.0} MiB/s)",
            b.len() / 1024
        );
    }

    let mut pairs: Vec<Pair> = [
        ("log append, 16 KiB batches, page cache", "raw write"),
        ("log append, 1 MiB batches, page cache", "raw write"),
        ("log append, 16 KiB batches, fsync every 1 s", "raw write, fdatasync every 1 s"),
        ("log append, 1 MiB batches, fsync every 1 s", "raw write, fdatasync every 1 s"),
        ("log append, 1 MiB batches, page cache, 2 producers", "raw write"),
        ("log read, 1 MiB fetches, fresh buffer (read_to_bytes)", "raw read"),
        ("log read, 1 MiB fetches, reused buffer (read_into)", "raw read"),
    ]
    .into_iter()
    .map(|(name, limit)| Pair { name, limit, log: Vec::new(), limits: Vec::new() })
    .collect();
    let raw = root.path().join("raw.bin");
    for run in 0..args.runs {
        let limit_first = run % 2 == 0;
        for (i, records, flush, producers) in [
            (0, 16, FlushPolicy::PageCache, 1),
            (1, 1024, FlushPolicy::PageCache, 1),
            (2, 16, FlushPolicy::IntervalMs(1000), 1),
            (3, 1024, FlushPolicy::IntervalMs(1000), 1),
            (4, 1024, FlushPolicy::PageCache, 2),
        ] {
            if args.only.is_some_and(|only| only != i) {
                continue;
            }
            let sync_every =
                matches!(flush, FlushPolicy::IntervalMs(_)).then_some(Duration::from_secs(1));
            let dir = root.path().join(format!("log-{i}"));
            let (limit, sample) = pair(
                limit_first,
                || {
                    sync_all();
                    let s = raw_write(&raw, args.mib, sync_every);
                    fs::remove_file(&raw).unwrap();
                    sync_all();
                    s
                },
                || {
                    sync_all();
                    let (log, s) = log_append(&dir, args.mib, records, flush, producers);
                    drop(log);
                    fs::remove_dir_all(&dir).unwrap();
                    sync_all();
                    s
                },
            );
            pairs[i].push(run, sample, limit);
        }
        if args.only.is_none() {
            // Reads: a raw file and a 1 MiB-batch log, written beforehand (not measured) and
            // both in the page cache.
            let dir = root.path().join("log-read");
            raw_write(&raw, args.mib, None);
            let (log, _) = log_append(&dir, args.mib, 1024, FlushPolicy::PageCache, 1);
            for (j, reuse) in [(5, false), (6, true)] {
                let (limit, sample) =
                    pair(limit_first, || raw_read(&raw), || log_read(&log, reuse));
                pairs[j].push(run, sample, limit);
            }
            drop(log);
            fs::remove_dir_all(&dir).unwrap();
            fs::remove_file(&raw).unwrap();
        }
    }

    println!("\nMachine: {}", machine());
    println!(
        "Volume: {} MiB per measurement, {} runs, 1 KiB records; medians over runs\n",
        args.mib, args.runs
    );
    println!(
        "| measurement | MiB/s | records/s | limit beside it | limit MiB/s | throughput vs limit (median of pairs; range) | CPU s per GiB, log / limit |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    for p in pairs.iter().filter(|p| !p.log.is_empty()) {
        let mut ratios: Vec<f64> =
            p.log.iter().zip(&p.limits).map(|(s, l)| s.mib_s() / l.mib_s() * 100.0).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.0}% ({:.0}-{:.0}%) | {:.2} / {:.2} |",
            p.name,
            median_by(&p.log, Sample::mib_s),
            median_by(&p.log, Sample::records_s),
            p.limit,
            median_by(&p.limits, Sample::mib_s),
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
            median_by(&p.log, Sample::cpu_s_per_gib),
            median_by(&p.limits, Sample::cpu_s_per_gib),
        );
    }
    // Limits drift more than the log on a shared VM (a write that has to fault fresh memory in
    // from the host runs 5x slower): set each figure also against the median of every
    // measurement of its limit in this run.
    println!(
        "\n| measurement | MiB/s | limit: median of all its measurements in this run | limit MiB/s | ratio | CPU s per GiB, log / limit |"
    );
    println!("|---|---:|---|---:|---:|---:|");
    for p in pairs.iter().filter(|p| !p.log.is_empty()) {
        let all: Vec<Sample> = pairs
            .iter()
            .filter(|q| q.limit == p.limit)
            .flat_map(|q| q.limits.iter().copied())
            .collect();
        let (log, limit) = (median_by(&p.log, Sample::mib_s), median_by(&all, Sample::mib_s));
        println!(
            "| {} | {:.0} | {} ({} measurements) | {:.0} | {:.0}% | {:.2} / {:.2} |",
            p.name,
            log,
            p.limit,
            all.len(),
            limit,
            log / limit * 100.0,
            median_by(&p.log, Sample::cpu_s_per_gib),
            median_by(&all, Sample::cpu_s_per_gib),
        );
    }
}
