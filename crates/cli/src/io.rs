//! `tide produce` and `tide consume`: records from lines of text, and records printed as text or
//! JSON lines.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::json;
use tideline_client::{
    Acks, AutoOffsetReset, Compression, Consumer, ConsumerConfig, ConsumerRecord, Producer,
    ProducerConfig, ProducerRecord,
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
    /// Keep waiting for new records; without it, stop at the end offsets seen at start.
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

fn acks(s: &str) -> anyhow::Result<Acks> {
    Ok(match s {
        "all" | "-1" => Acks::All,
        "1" | "leader" => Acks::Leader,
        "0" | "none" => Acks::None,
        other => bail!("--acks {other:?} is not all, 1 or 0"),
    })
}

/// Runs `tide produce`.
pub async fn produce(bootstrap: &[String], out: Output, args: ProduceArgs) -> anyhow::Result<()> {
    let compression = Compression::from_name(&args.compression).with_context(|| {
        format!("--compression {:?} is not none, gzip, lz4 or zstd", args.compression)
    })?;
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
    // Lines are read on a blocking thread and handed over as they come, so a terminal user
    // sees each line produced without waiting for end of input.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1024);
    std::thread::spawn(move || {
        for line in input.lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut pending = Vec::new();
    let mut count = 0u64;
    while let Some(line) = rx.recv().await {
        let line = line.context("cannot read input")?;
        let mut record = ProducerRecord::new(args.topic.clone());
        match args.key_separator.as_deref().and_then(|sep| line.split_once(sep)) {
            Some((k, v)) => {
                record = record
                    .key(Bytes::copy_from_slice(k.as_bytes()))
                    .value(Bytes::copy_from_slice(v.as_bytes()));
            }
            None => record = record.value(Bytes::from(line.into_bytes())),
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        for (k, v) in &headers {
            record = record.header(k.clone(), v.clone());
        }
        pending.push(producer.send(record).await?);
        count += 1;
    }
    producer.flush().await;
    // partition -> (first offset, last offset, records)
    let mut ranges: BTreeMap<i32, (i64, i64, u64)> = BTreeMap::new();
    for delivery in pending {
        let m = delivery.await?;
        let e = ranges.entry(m.partition).or_insert((m.offset, m.offset, 0));
        e.0 = e.0.min(m.offset);
        e.1 = e.1.max(m.offset);
        e.2 += 1;
    }
    producer.close().await;
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
        println!(
            "{}",
            json!({
                "topic": r.topic, "partition": r.partition, "offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
                "key": r.key.as_deref().map(String::from_utf8_lossy),
                "value": r.value.as_deref().map(String::from_utf8_lossy),
                "headers": headers,
            })
        );
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
    println!("{line}");
}

/// Runs `tide consume`.
pub async fn consume(bootstrap: &[String], out: Output, args: ConsumeArgs) -> anyhow::Result<()> {
    let cluster = connect(bootstrap)?;
    let admin = tideline_client::Admin::new(&cluster);
    let topic = admin.describe_topic(&args.topic).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if topic.partitions.iter().any(|x| x.partition == p) => vec![p],
        Some(p) => bail!(
            "topic {} has {} partitions; there is no partition {p}",
            args.topic,
            topic.partitions.len()
        ),
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let config =
        ConsumerConfig { auto_offset_reset: AutoOffsetReset::Latest, ..ConsumerConfig::default() };
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
    while !done(&consumer, printed) {
        let records = tokio::select! {
            r = consumer.poll(Duration::from_millis(500)) => r?,
            _ = tokio::signal::ctrl_c() => break,
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
