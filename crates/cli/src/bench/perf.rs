//! `tide bench produce|consume|e2e`: load against a running cluster through the Rust client,
//! in the spirit of `kafka-producer-perf-test` and `kafka-consumer-perf-test`. Producers send
//! `--records` records of `--record-size` bytes (optionally capped at `--throughput` records/s);
//! consumers read them back through the sendfile data port (or gRPC `Fetch` with `--grpc`).
//! Latencies go into HdrHistograms (microseconds): from `send` to the acknowledgement for
//! produce, from `send` to the consumer's `poll` for e2e (the send time travels in the first 8
//! bytes of each value). With `--limits` the machine's limits are measured first, in the same
//! run, and the report gives each rate as a ratio to its limit. Every load and every limit
//! starts after `sync(2)`, so none runs behind the writeback of what came before.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tideline_client::{
    Admin, AutoOffsetReset, Cluster, Consumer, ConsumerConfig, ErrorCode, Producer, ProducerConfig,
    ProducerRecord,
};

use super::limits::{self, Limits};
use crate::admin::connect;
use crate::output::{self, Output};

/// The topic, the amount of data, and the limits: options every scenario shares.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Topic to use; created when missing with `--partitions` and `--replication-factor`.
    #[arg(long, default_value = "tide-bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Records to produce (and, for consume and e2e, to consume), over all clients.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes of each record's value (no key). At least 8 for e2e (the send time).
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Measure this machine's limits first (disk write in `--limits-dir`, loopback TCP and
    /// sendfile) and report the rates as ratios to them.
    #[arg(long)]
    pub limits: bool,
    /// Directory for the limits' test file: put it on the brokers' disk.
    #[arg(long, default_value = ".")]
    pub limits_dir: PathBuf,
    /// MiB moved by each limit measurement.
    #[arg(long, default_value_t = 1024)]
    pub limits_mib: u64,
    /// No progress bar (there is none either with `--output json` or without a terminal).
    #[arg(long)]
    pub quiet: bool,
}

/// Producer options.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    /// Producer clients, each with its own connections, sharing `--records` and
    /// `--throughput` evenly.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Acknowledgement level: all, 1 or 0.
    #[arg(long, default_value = "1")]
    pub acks: String,
    /// Compression: none, gzip, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Records per second at most, over all producers: a rate cap, for latency at a given
    /// load. As fast as possible when absent.
    #[arg(long)]
    pub throughput: Option<f64>,
    /// Producer `batch.size` in bytes.
    #[arg(long, default_value_t = ProducerConfig::default().batch_size)]
    pub batch_size: usize,
    /// Producer `linger.ms`.
    #[arg(long, default_value_t = ProducerConfig::default().linger.as_millis() as u64)]
    pub linger_ms: u64,
    /// Producer `buffer.memory` in MiB.
    #[arg(long, default_value_t = (ProducerConfig::default().buffer_memory >> 20) as u64)]
    pub buffer_mib: u64,
}

/// Consumer options.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Consumer clients; the topic's partitions are split between them (at most one consumer
    /// per partition).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Fetch through gRPC `Fetch` instead of the brokers' sendfile data port.
    #[arg(long)]
    pub grpc: bool,
    /// Consumer `max.partition.fetch.bytes`.
    #[arg(long, default_value_t = ConsumerConfig::default().max_partition_fetch_bytes)]
    pub fetch_max_bytes: usize,
    /// Consumer read-ahead: fetches a partition runs ahead of the one being decoded.
    #[arg(long, default_value_t = ConsumerConfig::default().read_ahead_fetches)]
    pub read_ahead_fetches: usize,
    /// Give up when no record arrived for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_timeout_secs: u64,
}

/// Options of `tide bench produce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    producer: ProducerArgs,
}

/// Options of `tide bench consume`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
}

/// Options of `tide bench e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    producer: ProducerArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
}

/// How late a rate-capped record may be sent and still count its latency from its send (see
/// `run_producers`): twice the pacing timer's granularity.
const PACING_SLACK: Duration = Duration::from_millis(2);

/// A latency histogram in microseconds, from 1 µs to 10 minutes at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What producers or consumers moved, and how fast.
#[derive(Debug)]
struct Outcome {
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Outcome {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / f64::from(1 << 20) / self.elapsed.as_secs_f64()
    }

    fn rates_json(&self) -> Value {
        json!({
            "records": self.records,
            "bytes": self.bytes,
            "seconds": self.elapsed.as_secs_f64(),
            "records_per_s": self.records_per_s(),
            "mib_per_s": self.mib_per_s(),
        })
    }
}

/// Percentiles of a histogram in milliseconds.
fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(0.50),
        "p95": ms(0.95),
        "p99": ms(0.99),
        "p99_9": ms(0.999),
        "max": h.max() as f64 / 1000.0,
        "mean": h.mean() / 1000.0,
    })
}

/// Progress bars on stderr, hidden when asked or when the output is for scripts.
struct Progress {
    bars: MultiProgress,
    visible: bool,
}

impl Progress {
    fn new(run: &RunArgs, out: Output) -> Self {
        let visible = !run.quiet && out == Output::Table;
        let target =
            if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Progress { bars: MultiProgress::with_draw_target(target), visible }
    }

    fn bar(&self, what: &str, total: u64) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(total));
        let style = ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} {what:>9} [{{bar:40}}] {{human_pos}}/{{human_len}} records, {{rate}}, eta {{eta}}"
        ))
        .expect("valid progress template")
        .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} records/s", state.per_sec());
        })
        .progress_chars("=> ");
        bar.set_style(style);
        bar
    }
}

/// Measures the limits when asked, before any load.
async fn measure_limits(run: &RunArgs, progress: &Progress) -> anyhow::Result<Option<Limits>> {
    if !run.limits {
        return Ok(None);
    }
    if progress.visible {
        eprintln!("measuring this machine's limits ({} MiB each)...", run.limits_mib);
    }
    let (dir, mib) = (run.limits_dir.clone(), run.limits_mib);
    let limits = tokio::task::spawn_blocking(move || limits::measure(&dir, mib)).await??;
    Ok(Some(limits))
}

/// Writes back what earlier runs left dirty before a load starts (see [`limits::settle`]).
async fn settle() -> anyhow::Result<()> {
    Ok(tokio::task::spawn_blocking(limits::settle).await?)
}

/// Creates the topic when missing and waits until every partition has a leader; returns the
/// partition count.
async fn ensure_topic(cluster: &Cluster, run: &RunArgs) -> anyhow::Result<i32> {
    let admin = Admin::new(cluster);
    match admin
        .create_topic(&run.topic, run.partitions, run.replication_factor, HashMap::new())
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create topic {}", run.topic)),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = cluster.refresh_metadata().await?;
        if let Some(t) = metadata.topic(&run.topic)
            && !t.partitions.is_empty()
            && t.partitions.iter().all(|p| p.leader >= 0)
        {
            return Ok(t.partitions.len() as i32);
        }
        if Instant::now() > deadline {
            bail!("topic {} has partitions without a leader after 30 s", run.topic);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn producer_config(p: &ProducerArgs) -> anyhow::Result<ProducerConfig> {
    Ok(ProducerConfig {
        acks: crate::io::acks(&p.acks)?,
        compression: crate::io::compression(&p.compression)?,
        batch_size: p.batch_size,
        linger: Duration::from_millis(p.linger_ms),
        buffer_memory: usize::try_from(p.buffer_mib << 20).context("--buffer-mib is too large")?,
        ..ProducerConfig::default()
    })
}

fn check(run: &RunArgs, producers: Option<&ProducerArgs>) -> anyhow::Result<()> {
    if run.records == 0 {
        bail!("--records must be positive");
    }
    if run.record_size == 0 {
        bail!("--record-size must be positive");
    }
    if let Some(p) = producers {
        if p.producers == 0 {
            bail!("--producers must be positive");
        }
        if let Some(t) = p.throughput
            && !(t.is_finite() && t > 0.0)
        {
            bail!("--throughput must be a positive number of records per second");
        }
    }
    Ok(())
}

/// Record values: slices of a pool of pseudo-random letters (compressible about as much as
/// text, like the payloads of Kafka's perf test), each record a different window.
struct Payloads {
    pool: Bytes,
    size: usize,
}

impl Payloads {
    fn new(size: usize) -> Self {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let pool: Vec<u8> = (0..size + 4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b'A' + (seed % 26) as u8
            })
            .collect();
        Payloads { pool: Bytes::from(pool), size }
    }

    /// The value of record `i`, stamped with `sent` (nanoseconds since the run's base) when
    /// given.
    fn value(&self, i: u64, sent: Option<u64>) -> Bytes {
        let start = (i % 4096) as usize;
        match sent {
            None => self.pool.slice(start..start + self.size),
            Some(sent) => {
                let mut b = BytesMut::with_capacity(self.size);
                b.put_u64(sent);
                b.extend_from_slice(&self.pool[start..start + self.size - 8]);
                b.freeze()
            }
        }
    }
}

/// Runs `producers` producers over `records` records and waits for every acknowledgement.
async fn run_producers(
    cluster: &Cluster,
    run: &RunArgs,
    p: &ProducerArgs,
    stamp: Option<Instant>,
    bar: ProgressBar,
) -> anyhow::Result<Outcome> {
    let config = producer_config(p)?;
    let payloads = Arc::new(Payloads::new(run.record_size));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..p.producers as u64 {
        let n = run.records / p.producers as u64 + u64::from(k < run.records % p.producers as u64);
        let rate = p.throughput.map(|t| t / p.producers as f64);
        let producer = Producer::new(cluster, config.clone())?;
        let (topic, payloads, bar) = (run.topic.clone(), payloads.clone(), bar.clone());
        tasks.spawn(async move {
            let acks = Arc::new(Mutex::new(Acks::new(bar)));
            let sending = async {
                let start = Instant::now();
                for i in 0..n {
                    // Rate-capped, a record more than `PACING_SLACK` late (the producer fell
                    // behind, e.g. its buffer was full) counts from when it was due, so the
                    // slowness that delayed it is not hidden (coordinated omission). Records
                    // sent within the slack count from their send: the pacing timer wakes
                    // once per millisecond and sends the records due meanwhile together,
                    // which is the bench's granularity, not the cluster's latency.
                    let at = match rate {
                        Some(rate) => {
                            let due = start + Duration::from_secs_f64(i as f64 / rate);
                            if due > Instant::now() {
                                tokio::time::sleep_until(due.into()).await;
                            }
                            let now = Instant::now();
                            if now.duration_since(due) > PACING_SLACK { due } else { now }
                        }
                        None => Instant::now(),
                    };
                    let sent = stamp.map(|base| {
                        u64::try_from(at.saturating_duration_since(base).as_nanos())
                            .unwrap_or(u64::MAX)
                    });
                    let record = ProducerRecord::new(topic.as_str()).value(payloads.value(i, sent));
                    let acks = acks.clone();
                    producer
                        .send_with_callback(record, move |outcome| {
                            lock(&acks).record(at, outcome.map(|_| ()));
                        })
                        .await?;
                }
                anyhow::Ok(())
            };
            let sent = sending.await;
            // Every callback has run once the producer closed.
            producer.close().await;
            sent?;
            let mut acks = lock(&acks);
            acks.flush_progress();
            if let Some(e) = acks.failed.take() {
                bail!("a record was not delivered: {e}");
            }
            if acks.acked != n {
                bail!("{} of {n} records were acknowledged", acks.acked);
            }
            anyhow::Ok((acks.acked, std::mem::replace(&mut acks.latency, histogram())))
        });
    }
    let mut outcome =
        Outcome { records: 0, bytes: 0, elapsed: Duration::ZERO, latency: histogram() };
    while let Some(joined) = tasks.join_next().await {
        let (acked, latency) = joined??;
        outcome.records += acked;
        outcome.latency.add(latency).context("merging latency histograms")?;
    }
    outcome.elapsed = started.elapsed();
    outcome.bytes = outcome.records * run.record_size as u64;
    Ok(outcome)
}

/// One producer's acknowledgements, recorded by the delivery callbacks.
struct Acks {
    latency: Histogram<u64>,
    acked: u64,
    failed: Option<String>,
    bar: ProgressBar,
    unreported: u64,
}

impl Acks {
    fn new(bar: ProgressBar) -> Self {
        Acks { latency: histogram(), acked: 0, failed: None, bar, unreported: 0 }
    }

    /// A record's outcome: its latency from `sent`, or the first error.
    fn record(&mut self, sent: Instant, outcome: Result<(), tideline_client::ClientError>) {
        match outcome {
            Ok(()) => {
                self.latency.saturating_record(micros(sent.elapsed()));
                self.acked += 1;
                self.unreported += 1;
                if self.unreported == 1024 {
                    self.flush_progress();
                }
            }
            Err(e) => {
                self.failed.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn flush_progress(&mut self) {
        self.bar.inc(std::mem::take(&mut self.unreported));
    }
}

fn lock(acks: &Mutex<Acks>) -> std::sync::MutexGuard<'_, Acks> {
    acks.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where consumers start.
#[derive(Debug, Clone, Copy)]
enum Start {
    Beginning,
    End,
}

/// Consumers, each assigned its share of the partitions and positioned, not yet polling.
async fn position_consumers(
    cluster: &Cluster,
    run: &RunArgs,
    c: &ConsumerArgs,
    partitions: i32,
    start: Start,
) -> anyhow::Result<Vec<Consumer>> {
    if c.consumers == 0 {
        bail!("--consumers must be positive");
    }
    let count = c.consumers.min(partitions as usize);
    let config = ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        max_partition_fetch_bytes: c.fetch_max_bytes,
        use_data_port: !c.grpc,
        read_ahead_fetches: c.read_ahead_fetches,
        ..ConsumerConfig::default()
    };
    let mut consumers = Vec::with_capacity(count);
    for k in 0..count {
        let mut consumer = Consumer::new(cluster, config.clone())?;
        let mine: Vec<(String, i32)> = (0..partitions)
            .filter(|p| *p as usize % count == k)
            .map(|p| (run.topic.clone(), p))
            .collect();
        consumer.assign(mine.clone());
        for (topic, partition) in &mine {
            match start {
                Start::Beginning => consumer.seek_to_beginning(topic, *partition).await?,
                Start::End => consumer.seek_to_end(topic, *partition).await?,
            };
        }
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Polls the consumers until `records` records arrived over all of them. With `stamp`, each
/// record's latency is from the send time in its value to now.
async fn run_consumers(
    consumers: Vec<Consumer>,
    records: u64,
    idle_timeout: Duration,
    stamp: Option<Instant>,
    bar: ProgressBar,
) -> anyhow::Result<Outcome> {
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut consumer in consumers {
        let (total, bar) = (total.clone(), bar.clone());
        tasks.spawn(async move {
            let mut latency = histogram();
            let (mut mine, mut bytes) = (0u64, 0u64);
            let mut crossed = None;
            let mut last = (total.load(Ordering::Relaxed), Instant::now());
            loop {
                let seen = total.load(Ordering::Relaxed);
                if seen >= records {
                    break;
                }
                if seen != last.0 {
                    last = (seen, Instant::now());
                } else if last.1.elapsed() > idle_timeout {
                    bail!(
                        "no record for {} s after {seen} of {records}: produce them first (tide bench produce)",
                        idle_timeout.as_secs()
                    );
                }
                let batch = consumer.poll(Duration::from_millis(100)).await?;
                let now_ns = stamp.map(|s| s.elapsed().as_nanos());
                for r in &batch {
                    let len = r.value.as_ref().map_or(0, Bytes::len);
                    bytes += (len + r.key.as_ref().map_or(0, Bytes::len)) as u64;
                    if let (Some(now), Some(v)) = (now_ns, &r.value)
                        && let Some(sent) = v.get(..8)
                    {
                        let sent = u64::from_be_bytes(sent.try_into().expect("8 bytes"));
                        let ns = u64::try_from(now).unwrap_or(u64::MAX).saturating_sub(sent);
                        latency.saturating_record((ns / 1000).max(1));
                    }
                }
                mine += batch.len() as u64;
                let n = batch.len() as u64;
                let before = total.fetch_add(n, Ordering::Relaxed);
                if before < records && before + n >= records {
                    // This consumer took the total to its target: the run ends now, not
                    // when the others' polls next return.
                    crossed = Some(started.elapsed());
                }
                bar.inc(n);
            }
            anyhow::Ok((mine, bytes, latency, crossed))
        });
    }
    let mut outcome =
        Outcome { records: 0, bytes: 0, elapsed: Duration::ZERO, latency: histogram() };
    while let Some(joined) = tasks.join_next().await {
        let (records, bytes, latency, crossed) = joined??;
        outcome.records += records;
        outcome.bytes += bytes;
        if let Some(elapsed) = crossed {
            outcome.elapsed = elapsed;
        }
        outcome.latency.add(latency).context("merging latency histograms")?;
    }
    Ok(outcome)
}

/// The final report: a JSON document and the same figures as table rows.
struct Report {
    json: Value,
    rows: Vec<Vec<String>>,
}

impl Report {
    fn new(scenario: &str, run: &RunArgs, partitions: i32) -> Self {
        let json = json!({
            "scenario": scenario,
            "topic": run.topic,
            "partitions": partitions,
            "record_size": run.record_size,
        });
        Report { json, rows: Vec::new() }
    }

    fn row(&mut self, name: &str, value: String) {
        self.rows.push(vec![name.to_string(), value]);
    }

    fn rates(&mut self, what: &str, o: &Outcome) {
        self.json[what] = o.rates_json();
        self.row(&format!("{what}: records"), o.records.to_string());
        self.row(&format!("{what}: records/s"), format!("{:.0}", o.records_per_s()));
        self.row(&format!("{what}: MiB/s"), format!("{:.1}", o.mib_per_s()));
    }

    fn latency(&mut self, what: &str, key: &str, h: &Histogram<u64>) {
        self.json[key] = percentiles(h);
        let ms = |q: f64| format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0);
        self.row(
            &format!("{what} latency ms: p50 / p95 / p99 / p99.9 / max"),
            format!(
                "{} / {} / {} / {} / {:.2}",
                ms(0.5),
                ms(0.95),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            ),
        );
    }

    fn limits(
        &mut self,
        limits: Option<&Limits>,
        ratios: &[(&str, f64, f64)],
    ) -> anyhow::Result<()> {
        let Some(l) = limits else { return Ok(()) };
        self.json["limits"] = serde_json::to_value(l)?;
        for (name, value) in l.rows() {
            self.row(&format!("limit: {name} MiB/s"), format!("{value:.0}"));
        }
        let mut out = serde_json::Map::new();
        for (name, figure, limit) in ratios {
            let ratio = figure / limit;
            out.insert((*name).to_string(), json!(ratio));
            self.row(&format!("ratio: {name}"), format!("{:.0}%", ratio * 100.0));
        }
        self.json["ratios"] = Value::Object(out);
        Ok(())
    }

    fn emit(self, out: Output) {
        match out {
            Output::Json => output::json(&self.json),
            Output::Table => output::table(&["measure", "value"], &self.rows),
        }
    }
}

fn describe_producers(report: &mut Report, p: &ProducerArgs) {
    report.json["producers"] = json!(p.producers);
    report.json["acks"] = json!(p.acks);
    report.json["compression"] = json!(p.compression);
    report.json["throughput_cap_records_s"] = json!(p.throughput);
    report.json["batch_size"] = json!(p.batch_size);
    report.json["linger_ms"] = json!(p.linger_ms);
}

fn describe_consumers(report: &mut Report, c: &ConsumerArgs, count: usize) {
    report.json["consumers"] = json!(count);
    report.json["fetch_path"] = json!(if c.grpc { "grpc" } else { "data port" });
}

/// Runs `tide bench produce`.
pub async fn produce(bootstrap: &[String], out: Output, args: ProduceArgs) -> anyhow::Result<()> {
    let ProduceArgs { run, producer } = args;
    check(&run, Some(&producer))?;
    let progress = Progress::new(&run, out);
    let limits = measure_limits(&run, &progress).await?;
    let cluster = connect(bootstrap)?;
    let partitions = ensure_topic(&cluster, &run).await?;
    settle().await?;
    let bar = progress.bar("acked", run.records);
    let produced = run_producers(&cluster, &run, &producer, None, bar.clone()).await?;
    bar.finish_and_clear();

    let mut report = Report::new("produce", &run, partitions);
    describe_producers(&mut report, &producer);
    report.rates("produced", &produced);
    report.latency("produce", "produce_latency_ms", &produced.latency);
    let ratios = limits.as_ref().map_or(vec![], |l| {
        vec![
            ("produce / disk write (page cache)", produced.mib_per_s(), l.disk_write_mib_s),
            ("produce / disk write with fsync", produced.mib_per_s(), l.disk_write_fsync_mib_s),
        ]
    });
    report.limits(limits.as_ref(), &ratios)?;
    report.emit(out);
    Ok(())
}

/// Runs `tide bench consume`.
pub async fn consume(bootstrap: &[String], out: Output, args: ConsumeArgs) -> anyhow::Result<()> {
    let ConsumeArgs { run, consumer } = args;
    check(&run, None)?;
    let progress = Progress::new(&run, out);
    let limits = measure_limits(&run, &progress).await?;
    let cluster = connect(bootstrap)?;
    let partitions = ensure_topic(&cluster, &run).await?;
    let consumers =
        position_consumers(&cluster, &run, &consumer, partitions, Start::Beginning).await?;
    let count = consumers.len();
    settle().await?;
    let bar = progress.bar("consumed", run.records);
    let idle = Duration::from_secs(consumer.idle_timeout_secs);
    let consumed = run_consumers(consumers, run.records, idle, None, bar.clone()).await?;
    bar.finish_and_clear();

    let mut report = Report::new("consume", &run, partitions);
    describe_consumers(&mut report, &consumer, count);
    report.rates("consumed", &consumed);
    let ratios = limits.as_ref().map_or(vec![], |l| {
        vec![
            ("consume / loopback sendfile", consumed.mib_per_s(), l.loopback_sendfile_mib_s),
            ("consume / loopback TCP", consumed.mib_per_s(), l.loopback_tcp_mib_s),
        ]
    });
    report.limits(limits.as_ref(), &ratios)?;
    report.emit(out);
    Ok(())
}

/// Runs `tide bench e2e`.
pub async fn e2e(bootstrap: &[String], out: Output, args: E2eArgs) -> anyhow::Result<()> {
    let E2eArgs { run, producer, consumer } = args;
    check(&run, Some(&producer))?;
    if run.record_size < 8 {
        bail!("--record-size must be at least 8 for e2e: the send time travels in the value");
    }
    let progress = Progress::new(&run, out);
    let limits = measure_limits(&run, &progress).await?;
    let cluster = connect(bootstrap)?;
    let partitions = ensure_topic(&cluster, &run).await?;
    let consumers = position_consumers(&cluster, &run, &consumer, partitions, Start::End).await?;
    let count = consumers.len();
    settle().await?;
    let base = Instant::now();
    let produce_bar = progress.bar("acked", run.records);
    let consume_bar = progress.bar("consumed", run.records);
    let idle = Duration::from_secs(consumer.idle_timeout_secs);
    let consuming =
        tokio::spawn(run_consumers(consumers, run.records, idle, Some(base), consume_bar.clone()));
    let produced = run_producers(&cluster, &run, &producer, Some(base), produce_bar.clone()).await;
    let consumed = consuming.await?;
    produce_bar.finish_and_clear();
    consume_bar.finish_and_clear();
    let (produced, consumed) = (produced?, consumed?);

    let mut report = Report::new("e2e", &run, partitions);
    describe_producers(&mut report, &producer);
    describe_consumers(&mut report, &consumer, count);
    report.rates("produced", &produced);
    report.rates("consumed", &consumed);
    report.latency("produce", "produce_latency_ms", &produced.latency);
    report.latency("end-to-end", "e2e_latency_ms", &consumed.latency);
    let ratios = limits.as_ref().map_or(vec![], |l| {
        vec![("produce / disk write (page cache)", produced.mib_per_s(), l.disk_write_mib_s)]
    });
    report.limits(limits.as_ref(), &ratios)?;
    report.emit(out);
    Ok(())
}
