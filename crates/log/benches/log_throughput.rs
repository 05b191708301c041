//! Log throughput against the machine's own limits, measured in the same run.
//!
//! `cargo bench -p tideline-log --bench log_throughput [-- --mib 1024 --runs 5 --dir PATH]`
//!
//! Limits: 1 GiB written through `std::fs::File` in 1 MiB writes (into the page cache, and
//! with `fdatasync` every second), and read back in 1 MiB reads (from the page cache).
//! Log: the same volume of 1 KiB records appended in 16 KiB and 1 MiB batches with the flush
//! left to the page cache and with a sync every second, then read back through `Log::read` +
//! `FileRegion::read_to_bytes` in 1 MiB fetches. Each figure is the median of the runs; the
//! measurements are interleaved so that drift on a shared machine hits them alike, and dirty
//! pages are flushed (`sync`) between them so none inherits another's writeback.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tideline_log::{Compression, FlushPolicy, Log, LogConfig, RecordBatchBuilder};

const MIB: u64 = 1 << 20;
const RECORD_BYTES: usize = 1024;

struct Args {
    mib: u64,
    runs: usize,
    dir: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args { mib: 1024, runs: 5, dir: std::env::temp_dir() };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mib" => args.mib = it.next().and_then(|v| v.parse().ok()).expect("--mib N"),
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--dir" => args.dir = it.next().map(PathBuf::from).expect("--dir PATH"),
            "--bench" => {} // passed by cargo bench
            other => panic!("unknown argument {other}; use --mib N --runs N --dir PATH"),
        }
    }
    args
}

/// One measured figure: bytes and records moved in a time.
#[derive(Clone, Copy)]
struct Sample {
    bytes: u64,
    records: u64,
    elapsed: Duration,
}

impl Sample {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64()
    }
    fn records_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

fn sync_all() {
    let _ = std::process::Command::new("sync").status();
}

fn raw_write(path: &Path, mib: u64, sync_every: Option<Duration>) -> Sample {
    let block: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut file = File::create(path).unwrap();
    let mut last_sync = start;
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
    Sample { bytes: mib * MIB, records: 0, elapsed: start.elapsed() }
}

fn raw_read(path: &Path) -> Sample {
    let mut buf = vec![0u8; MIB as usize];
    let start = Instant::now();
    let mut file = File::open(path).unwrap();
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Sample { bytes: total, records: 0, elapsed: start.elapsed() }
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

fn log_config(flush: FlushPolicy) -> LogConfig {
    LogConfig { max_batch_bytes: 2 << 20, flush, ..LogConfig::default() }
}

fn log_append(dir: &Path, mib: u64, records_per_batch: usize, flush: FlushPolicy) -> (Log, Sample) {
    let batch = batch(records_per_batch);
    let count = (mib * MIB).div_ceil(batch.len() as u64);
    let log = Log::open(dir, log_config(flush)).unwrap();
    let start = Instant::now();
    for _ in 0..count {
        log.append(&batch, 0).unwrap();
    }
    let elapsed = start.elapsed();
    (
        log,
        Sample {
            bytes: count * batch.len() as u64,
            records: count * records_per_batch as u64,
            elapsed,
        },
    )
}

fn log_read(log: &Log) -> Sample {
    let start = Instant::now();
    let (mut offset, mut bytes) = (0i64, 0u64);
    let end = log.log_end_offset();
    while offset < end {
        let read = log.read(offset, MIB as usize, None).unwrap();
        let data = read.region.read_to_bytes().unwrap();
        bytes += data.len() as u64;
        offset = read.region.next_offset();
    }
    Sample { bytes, records: end as u64, elapsed: start.elapsed() }
}

fn median(samples: &mut [Sample]) -> Sample {
    samples.sort_by(|a, b| a.mib_s().total_cmp(&b.mib_s()));
    samples[samples.len() / 2]
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

fn main() {
    let args = parse_args();
    let root = tempfile::Builder::new().prefix("tideline-bench-").tempdir_in(&args.dir).unwrap();
    let names = [
        "raw write (page cache)",
        "raw write (fdatasync every 1 s)",
        "raw read (page cache)",
        "log append, 16 KiB batches, page cache",
        "log append, 1 MiB batches, page cache",
        "log append, 16 KiB batches, fsync every 1 s",
        "log append, 1 MiB batches, fsync every 1 s",
        "log read, 1 MiB fetches (page cache)",
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); names.len()];
    eprintln!("{} MiB per measurement, {} runs, in {}", args.mib, args.runs, root.path().display());
    // Warm-up, not measured: the first large write of a process pays for page-cache growth.
    let warm = root.path().join("warm.bin");
    raw_write(&warm, args.mib, None);
    fs::remove_file(&warm).unwrap();
    for run in 0..args.runs {
        let raw = root.path().join("raw.bin");
        let p = |i: usize, s: Sample, v: &mut Vec<Vec<Sample>>| {
            eprintln!("run {run}: {:<45} {:>8.0} MiB/s", names[i], s.mib_s());
            v[i].push(s);
        };
        sync_all();
        p(0, raw_write(&raw, args.mib, None), &mut samples);
        p(2, raw_read(&raw), &mut samples);
        fs::remove_file(&raw).unwrap();
        sync_all();
        p(1, raw_write(&raw, args.mib, Some(Duration::from_secs(1))), &mut samples);
        fs::remove_file(&raw).unwrap();
        for (i, records, flush) in [
            (3, 16, FlushPolicy::PageCache),
            (4, 1024, FlushPolicy::PageCache),
            (5, 16, FlushPolicy::IntervalMs(1000)),
            (6, 1024, FlushPolicy::IntervalMs(1000)),
        ] {
            sync_all();
            let dir = root.path().join(format!("log-{i}"));
            let (log, s) = log_append(&dir, args.mib, records, flush);
            p(i, s, &mut samples);
            if i == 4 {
                p(7, log_read(&log), &mut samples);
            }
            drop(log);
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    // Ratios are taken within each run (the limit and the figure measured minutes apart at
    // most), then the median over runs: drift of a shared machine cancels out.
    let limit_of = |i: usize| match i {
        0..=2 => (i, "limit"),
        3 | 4 => (0, "raw write"),
        5 | 6 => (1, "raw write + fdatasync/1 s"),
        _ => (2, "raw read"),
    };
    let ratios: Vec<f64> = (0..names.len())
        .map(|i| {
            let limit = limit_of(i).0;
            let mut r: Vec<f64> = samples[i]
                .iter()
                .zip(&samples[limit])
                .map(|(s, l)| s.mib_s() / l.mib_s() * 100.0)
                .collect();
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect();
    let m: Vec<Sample> = samples.iter_mut().map(|s| median(s)).collect();
    println!("\nMachine: {}", machine());
    println!(
        "Volume: {} MiB per measurement, median of {} runs, 1 KiB records\n",
        args.mib, args.runs
    );
    println!(
        "| measurement | MiB/s (median) | records/s (median) | vs limit (median of per-run ratios) |"
    );
    println!("|---|---:|---:|---:|");
    for (i, name) in names.iter().enumerate() {
        let (limit, label) = limit_of(i);
        let records =
            if m[i].records > 0 { format!("{:.0}", m[i].records_s()) } else { "-".into() };
        let versus =
            if limit == i { label.to_string() } else { format!("{:.0}% of {label}", ratios[i]) };
        println!("| {name} | {:.0} | {records} | {versus} |", m[i].mib_s());
    }
}
