//! `tide produce` and `tide consume`: records from lines of text, and records printed as text or
//! JSON lines, read from chosen partitions or as a member of a consumer group.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::json;
use tideline_client::{
    Acks, AutoOffsetReset, Cluster, Compression, Consumer, ConsumerConfig, ConsumerRecord,
    GroupConsumer, GroupConsumerConfig, Producer, ProducerConfig, ProducerRecord, RebalanceEvent,
};

use crate::admin::connect;
use crate::output::{self, Output};

/// Options of `tide produce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// Topic to produce to.
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Split each line at the first occurrence of this string into key and value.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Header KEY=VALUE added to every record (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Partition to produce to; by default keyed records go by key hash, others stick to a
    /// partition per batch.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Acknowledgements: all, 1 (leader) or 0 (none).
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Compression: none, gzip, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// How long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

/// Options of `tide consume`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to consume.
    pub topic: String,
    /// Start at the first offset of each partition (default: the end).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset (in each partition read).
    #[arg(long)]
    pub offset: Option<i64>,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Consume as a member of this consumer group: read the partitions the group assigns,
    /// from its committed offsets (--from-beginning: the first offset where the group has
    /// none, else the end), and commit what was printed. Assignment changes are printed to
    /// stderr.
    #[arg(long, conflicts_with_all = ["offset", "partition"])]
    pub group: Option<String>,
    /// Keep waiting for new records; without it, stop at the end offsets seen at start (with
    /// --group: once every assigned partition reached them).
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Print keys, separated from values by --key-separator.
    #[arg(long)]
    pub print_key: bool,
    /// Separator printed between key and value.
    #[arg(long, default_value = "\t")]
    pub key_separator: String,
    /// Print partition, offset and timestamp before each record.
    #[arg(long)]
    pub print_offsets: bool,
}

/// Parses `--acks`: all (-1), 1 (leader) or 0 (none).
pub(crate) fn acks(s: &str) -> anyhow::Result<Acks> {
    Ok(match s {
        "all" | "-1" => Acks::All,
        "1" | "leader" => Acks::Leader,
        "0" | "none" => Acks::None,
        other => bail!("--acks {other:?} is not all, 1 or 0"),
    })
}

/// Parses `--compression`: none, gzip, lz4 or zstd.
pub(crate) fn compression(name: &str) -> anyhow::Result<Compression> {
    Compression::from_name(name)
        .with_context(|| format!("--compression {name:?} is not none, gzip, lz4 or zstd"))
}

/// Runs `tide produce`.
pub async fn produce(bootstrap: &[String], out: Output, args: ProduceArgs) -> anyhow::Result<()> {
    let compression = compression(&args.compression)?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| {
            let (k, v) =
                h.split_once('=').with_context(|| format!("--header {h:?} is not KEY=VALUE"))?;
            Ok((k.to_string(), Some(Bytes::copy_from_slice(v.as_bytes()))))
        })
        .collect::<anyhow::Result<_>>()?;
    let config = ProducerConfig {
        acks: acks(&args.acks)?,
        compression,
        linger: Duration::from_millis(args.linger_ms),
        ..ProducerConfig::default()
    };
    let cluster = connect(bootstrap)?;
    let producer = Producer::new(&cluster, config)?;
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    // Lines (any bytes, not only UTF-8) are read on a blocking thread and handed over as they
    // come, so a terminal user sees each line produced without waiting for end of input.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1024);
    let mut input = input;
    std::thread::spawn(move || {
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        line.pop();
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let separator = args.key_separator.as_deref().map(str::as_bytes).filter(|s| !s.is_empty());
    // Deliveries are awaited as the input goes on, so memory stays bounded on long inputs.
    let mut pending = std::collections::VecDeque::new();
    let mut ranges: BTreeMap<i32, (i64, i64, u64)> = BTreeMap::new();
    let mut record_delivery = |m: tideline_client::RecordMetadata| {
        let e = ranges.entry(m.partition).or_insert((m.offset, m.offset, 0));
        e.0 = e.0.min(m.offset);
        e.1 = e.1.max(m.offset);
        e.2 += 1;
    };
    let mut count = 0u64;
    let mut failure = None;
    while let Some(line) = rx.recv().await {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context("cannot read input"));
                break;
            }
        };
        let mut record = ProducerRecord::new(args.topic.clone());
        let split = separator.and_then(|sep| {
            line.windows(sep.len()).position(|w| w == sep).map(|at| (at, at + sep.len()))
        });
        match split {
            Some((end, start)) => {
                record = record
                    .key(Bytes::copy_from_slice(&line[..end]))
                    .value(Bytes::copy_from_slice(&line[start..]));
            }
            None => record = record.value(Bytes::from(line)),
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        for (k, v) in &headers {
            record = record.header(k.clone(), v.clone());
        }
        match producer.send(record).await {
            Ok(delivery) => pending.push_back(delivery),
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        }
        count += 1;
        while pending.len() > 10_000 {
            match pending.pop_front().expect("not empty").await {
                Ok(m) => record_delivery(m),
                Err(e) => failure = failure.or(Some(e.into())),
            }
        }
    }
    // What was sent is delivered (or fails) even when the input failed part-way.
    producer.flush().await;
    for delivery in pending {
        match delivery.await {
            Ok(m) => record_delivery(m),
            Err(e) => failure = failure.or(Some(e.into())),
        }
    }
    producer.close().await;
    if let Some(e) = failure {
        return Err(e);
    }
    if out == Output::Json {
        output::json(&json!({
            "topic": args.topic,
            "records": count,
            "partitions": ranges.iter().map(|(p, (first, last, n))| json!({
                "partition": p, "first_offset": first, "last_offset": last, "records": n
            })).collect::<Vec<_>>(),
        }));
    } else {
        eprintln!("produced {count} records to {}", args.topic);
        for (p, (first, last, n)) in ranges {
            if first >= 0 {
                eprintln!("  partition {p}: {n} records at offsets {first}..={last}");
            }
        }
    }
    Ok(())
}

fn text(b: &Option<Bytes>) -> String {
    b.as_deref().map_or_else(|| "null".to_string(), |v| String::from_utf8_lossy(v).into_owned())
}

fn print_record(r: &ConsumerRecord, out: Output, args: &ConsumeArgs) {
    if out == Output::Json {
        let headers: Vec<_> = r
            .headers
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v.as_deref().map(String::from_utf8_lossy)}))
            .collect();
        output::emit(&format!(
            "{}\n",
            json!({
                "topic": &*r.topic, "partition": r.partition, "offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
                "key": r.key.as_deref().map(String::from_utf8_lossy),
                "value": r.value.as_deref().map(String::from_utf8_lossy),
                "headers": headers,
            })
        ));
        return;
    }
    let mut line = String::new();
    if args.print_offsets {
        line.push_str(&format!("{}:{}@{}\t", r.partition, r.offset, r.timestamp_ms));
    }
    if args.print_key {
        line.push_str(&text(&r.key));
        line.push_str(&args.key_separator);
    }
    line.push_str(&text(&r.value));
    line.push('\n');
    output::emit(&line);
}

/// Runs `tide consume`.
pub async fn consume(bootstrap: &[String], out: Output, args: ConsumeArgs) -> anyhow::Result<()> {
    let cluster = connect(bootstrap)?;
    let admin = tideline_client::Admin::new(&cluster);
    let topic = admin.describe_topic(&args.topic).await?;
    if let Some(group) = args.group.clone() {
        let partitions = topic.partitions.iter().map(|p| p.partition).collect();
        return consume_group(&cluster, out, &args, &group, partitions).await;
    }
    let partitions: Vec<i32> = match args.partition {
        Some(p) if topic.partitions.iter().any(|x| x.partition == p) => vec![p],
        Some(p) => bail!(
            "topic {} has {} partitions; there is no partition {p}",
            args.topic,
            topic.partitions.len()
        ),
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    // From the beginning, a position that retention passed resets to the new beginning.
    let reset =
        if args.from_beginning { AutoOffsetReset::Earliest } else { AutoOffsetReset::Latest };
    let config = ConsumerConfig { auto_offset_reset: reset, ..ConsumerConfig::default() };
    let mut consumer = Consumer::new(&cluster, config)?;
    consumer.assign(partitions.iter().map(|p| (args.topic.clone(), *p)).collect());
    // The end of each partition now: where a consume without --follow stops.
    let mut ends = BTreeMap::new();
    for &p in &partitions {
        consumer.seek_to_end(&args.topic, p).await?;
        ends.insert(p, consumer.position(&args.topic, p).unwrap_or(0));
    }
    for &p in &partitions {
        if args.from_beginning {
            consumer.seek_to_beginning(&args.topic, p).await?;
        } else if let Some(o) = args.offset {
            consumer.seek(&args.topic, p, o)?;
        }
    }
    let mut printed = 0u64;
    let done = |consumer: &Consumer, printed: u64| {
        args.max_messages.is_some_and(|m| printed >= m)
            || (!args.follow
                && ends.iter().all(|(p, end)| {
                    consumer.position(&args.topic, *p).is_some_and(|pos| pos >= *end)
                }))
    };
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while !done(&consumer, printed) {
        let records = tokio::select! {
            r = consumer.poll(Duration::from_millis(500)) => r?,
            _ = &mut interrupted => break,
        };
        for r in &records {
            if args.max_messages.is_some_and(|m| printed >= m) {
                break;
            }
            print_record(r, out, &args);
            printed += 1;
        }
    }
    Ok(())
}

/// Prints an assignment change on stderr: `assigned orders-0 orders-1`, or a JSON line.
fn print_event(event: &RebalanceEvent, out: Output) {
    let (kind, partitions) = match event {
        RebalanceEvent::Assigned(p) => ("assigned", p),
        RebalanceEvent::Revoked(p) => ("revoked", p),
        RebalanceEvent::Lost(p) => ("lost", p),
    };
    if out == Output::Json {
        let partitions: Vec<_> =
            partitions.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect();
        eprintln!("{}", json!({"event": kind, "partitions": partitions}));
    } else {
        let names: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}-{p}")).collect();
        eprintln!("{kind} {}", names.join(" "));
    }
}

/// `tide consume --group`: a group member printing what it is assigned. Commits the positions
/// past the printed records after every batch (so a revocation or a stop loses nothing
/// printed and skips nothing unprinted), then leaves the group.
async fn consume_group(
    cluster: &Cluster,
    out: Output,
    args: &ConsumeArgs,
    group: &str,
    partitions: Vec<i32>,
) -> anyhow::Result<()> {
    // The end of each partition now: where a consume without --follow stops.
    let mut ends = BTreeMap::new();
    if !args.follow {
        let mut lookup = Consumer::new(cluster, ConsumerConfig::default())?;
        lookup.assign(partitions.iter().map(|p| (args.topic.clone(), *p)).collect());
        for &p in &partitions {
            ends.insert(p, lookup.seek_to_end(&args.topic, p).await?);
        }
    }
    let reset =
        if args.from_beginning { AutoOffsetReset::Earliest } else { AutoOffsetReset::Latest };
    let config = GroupConsumerConfig {
        auto_commit: false,
        consumer: ConsumerConfig { auto_offset_reset: reset, ..ConsumerConfig::default() },
        ..GroupConsumerConfig::new(group)
    };
    let mut consumer = GroupConsumer::new(cluster, config)?;
    consumer.set_rebalance_listener(move |event: RebalanceEvent| print_event(&event, out));
    consumer.subscribe([args.topic.clone()])?;
    let mut printed = 0u64;
    let done = |consumer: &GroupConsumer, printed: u64| {
        args.max_messages.is_some_and(|m| printed >= m)
            || (!args.follow && {
                let assigned = consumer.assignment();
                !assigned.is_empty()
                    && assigned.iter().all(|(t, p)| {
                        let end = ends.get(p).copied().unwrap_or(0);
                        consumer.position(t, *p).is_some_and(|pos| pos >= end)
                    })
            })
    };
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut result: anyhow::Result<()> = Ok(());
    while !done(&consumer, printed) {
        let records = tokio::select! {
            r = consumer.poll(Duration::from_millis(500)) => r,
            _ = &mut interrupted => break,
        };
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        let mut next = BTreeMap::new();
        for r in &records {
            if args.max_messages.is_some_and(|m| printed >= m) {
                break;
            }
            print_record(r, out, args);
            printed += 1;
            next.insert((r.topic.to_string(), r.partition), r.offset + 1);
        }
        if let Err(e) = consumer.commit_offsets(next).await {
            eprintln!("warning: commit failed: {e}");
        }
    }
    let closed = consumer.close().await;
    result?;
    Ok(closed?)
}
