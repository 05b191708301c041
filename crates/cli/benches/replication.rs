//! Produce throughput and latency with replication factor 3 and acks=all against replication
//! factor 1 and acks=1, on three brokers sharing this machine's disk and cores, in the same run.
//!
//! Latency is from `Producer::send` to the acknowledgement of the record: at full speed (where
//! it includes waiting in the producer's buffer) and at a fixed rate below the limit.
//!
//! ```sh
//! cargo bench -p tideline-cli --bench replication -- --mib 512 --runs 3 --rate-mib 10
//! ```

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{MIB, machine, median, start_cluster};
use tideline_client::{Acks, Admin, Cluster, Producer, ProducerConfig, ProducerRecord};

const RECORD: usize = 1024;

struct Args {
    mib: u64,
    runs: usize,
    rate_mib: u64,
    rate_secs: u64,
}

fn parse_args() -> Args {
    let mut a = Args { mib: 512, runs: 3, rate_mib: 10, rate_secs: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match arg.as_str() {
            "--mib" => a.mib = value().parse().expect("--mib N"),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--rate-mib" => a.rate_mib = value().parse().expect("--rate-mib N"),
            "--rate-secs" => a.rate_secs = value().parse().expect("--rate-secs N"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Throughput (MiB/s) and the sorted latencies of one produce run of `records` records, sent
/// as fast as possible or paced at `rate` MiB/s.
async fn produce(
    cluster: &Cluster,
    topic: &str,
    acks: Acks,
    records: u64,
    rate: Option<u64>,
) -> (f64, Vec<Duration>) {
    let producer = Producer::new(
        cluster,
        ProducerConfig {
            acks,
            batch_size: 1 << 20,
            buffer_memory: 64 << 20,
            linger: Duration::from_millis(5),
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let value = Bytes::from((0..RECORD).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    // Acknowledgements are awaited in send order by a second task, which times each record.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waiter = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while let Some((sent, delivery)) = rx.recv().await {
            let delivery: tideline_client::DeliveryFuture = delivery;
            delivery.await.expect("record acknowledged");
            latencies.push(Instant::now().duration_since(sent));
        }
        latencies
    });
    let start = Instant::now();
    let per_record = rate.map(|r| Duration::from_secs_f64(RECORD as f64 / (r * MIB) as f64));
    for i in 0..records {
        if let Some(gap) = per_record
            && i % 100 == 0
        {
            let due = start + gap * i as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        let delivery =
            producer.send(ProducerRecord::new(topic).value(value.clone())).await.unwrap();
        tx.send((Instant::now(), delivery)).unwrap();
    }
    drop(tx);
    producer.flush().await;
    let mut latencies = waiter.await.unwrap();
    let rate = (records * RECORD as u64) as f64 / MIB as f64 / start.elapsed().as_secs_f64();
    producer.close().await;
    latencies.sort_unstable();
    (rate, latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let args = parse_args();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_procs, cluster) = start_cluster(root.path(), 3).await;
        let admin = Admin::new(&cluster);
        println!("machine: {}", machine());
        println!(
            "3 brokers on this machine (one disk, shared cores); {RECORD} B records, {} MiB per run, batches 1 MiB, linger 5 ms, one partition",
            args.mib
        );
        let configs = [("RF=1, acks=1", 1, Acks::Leader), ("RF=3, acks=all", 3, Acks::All)];
        let mut rows = Vec::new();
        for (name, rf, acks) in configs {
            let (mut rates, mut full, mut paced) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..args.runs {
                let topic = format!("rep-{rf}-{run}");
                let mut configs = std::collections::HashMap::new();
                if rf == 3 {
                    configs.insert("min.insync.replicas".to_string(), "2".to_string());
                }
                admin.create_topic(&topic, 1, rf, configs).await.unwrap();
                // Followers join the ISR (new partitions start with the leader alone).
                let deadline = Instant::now() + Duration::from_secs(30);
                while admin
                    .describe_topic(&topic)
                    .await
                    .map_or(true, |t| t.partitions[0].isr.len() < rf as usize)
                {
                    assert!(Instant::now() < deadline, "the ISR did not fill");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let records = args.mib * MIB / RECORD as u64;
                let (rate, lat) = produce(&cluster, &topic, acks, records, None).await;
                let paced_records = args.rate_mib * args.rate_secs * MIB / RECORD as u64;
                let (_, plat) =
                    produce(&cluster, &topic, acks, paced_records, Some(args.rate_mib)).await;
                eprintln!(
                    "{name} run {run}: {rate:.0} MiB/s, full speed p50 {:.1} ms p99 {:.1} ms; at {} MiB/s p50 {:.2} ms p99 {:.2} ms",
                    percentile(&lat, 0.5),
                    percentile(&lat, 0.99),
                    args.rate_mib,
                    percentile(&plat, 0.5),
                    percentile(&plat, 0.99)
                );
                rates.push(rate);
                full.push((percentile(&lat, 0.5), percentile(&lat, 0.99)));
                paced.push((percentile(&plat, 0.5), percentile(&plat, 0.99)));
                admin.delete_topic(&topic).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
                common::sync_all();
            }
            rows.push((
                name,
                median(rates),
                median(full.iter().map(|l| l.0).collect()),
                median(full.iter().map(|l| l.1).collect()),
                median(paced.iter().map(|l| l.0).collect()),
                median(paced.iter().map(|l| l.1).collect()),
            ));
        }
        let base = rows[0].1;
        println!();
        println!(
            "| config | produce MiB/s | vs RF=1 acks=1 | p50 / p99 ms at full speed | p50 / p99 ms at {} MiB/s |",
            args.rate_mib
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, rate, p50, p99, q50, q99) in rows {
            println!(
                "| {name} | {rate:.0} | {:.0}% | {p50:.1} / {p99:.1} | {q50:.2} / {q99:.2} |",
                100.0 * rate / base
            );
        }
    });
}
