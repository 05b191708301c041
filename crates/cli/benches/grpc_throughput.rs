//! Produce and fetch throughput through gRPC to one broker (replication factor 1, 1 KiB
//! records, the batching `tideline-client` Producer and Consumer), each run paired with the
//! raw sequential disk write speed measured in the same run on the same disk.
//!
//! The controller and the broker are real processes (`tide controller`, `tide broker`); the
//! client runs in this process. Client and broker share the machine's cores, as in the
//! reference figures of docs/benchmarks.md.
//!
//! ```sh
//! cargo bench -p tideline-cli --bench grpc_throughput -- --mib 1024 --runs 5
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{MIB, machine, median, raw_write, start_cluster, sync_all};

use bytes::Bytes;
use tideline_client::{
    Acks, Admin, AutoOffsetReset, Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord,
};
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;

const RECORD: usize = 1024;

struct Args {
    mib: u64,
    runs: usize,
    partitions: Vec<i32>,
    batch_kib: usize,
}

fn parse_args() -> Args {
    let mut a = Args { mib: 512, runs: 3, partitions: vec![1, 4], batch_kib: 1024 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match arg.as_str() {
            "--mib" => a.mib = value().parse().expect("--mib N"),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--batch-kib" => a.batch_kib = value().parse().expect("--batch-kib N"),
            "--partitions" => {
                a.partitions =
                    value().split(',').map(|p| p.parse().expect("--partitions N,M")).collect()
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Produces `mib` MiB of 1 KiB records to `topic`; MiB/s of record values.
async fn produce(cluster: &Cluster, topic: &str, mib: u64, batch: usize) -> f64 {
    let producer = Producer::new(
        cluster,
        ProducerConfig {
            acks: Acks::Leader,
            batch_size: batch,
            buffer_memory: 64 << 20,
            linger: Duration::from_millis(5),
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let value = Bytes::from((0..RECORD).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    let records = mib * MIB / RECORD as u64;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(records as usize);
    for _ in 0..records {
        pending.push(producer.send(ProducerRecord::new(topic).value(value.clone())).await.unwrap());
    }
    producer.flush().await;
    for p in pending {
        p.await.expect("record delivered");
    }
    let rate = mib as f64 / start.elapsed().as_secs_f64();
    producer.close().await;
    rate
}

/// Reads every batch of `topic` from the beginning with plain gRPC Fetch calls (1 MiB each,
/// one partition after the other, no decoding): the broker's fetch path without the client's
/// work; MiB/s of batch bytes.
async fn fetch_raw(cluster: &Cluster, topic: &str, partitions: i32) -> f64 {
    let m = Admin::new(cluster).metadata(&[topic]).await.unwrap();
    let start = Instant::now();
    let mut bytes = 0u64;
    for p in 0..partitions {
        let addr = m.broker_address(m.leader(topic, p).unwrap()).unwrap();
        // The client library's channel settings.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20);
        let mut b = BrokerServiceClient::new(endpoint.connect().await.unwrap())
            .max_decoding_message_size(64 << 20);
        let mut offset = 0;
        loop {
            let r = b
                .fetch(pb::FetchRequest {
                    topic: topic.to_string(),
                    partition: p,
                    offset,
                    max_bytes: 1 << 20,
                    max_wait_ms: 0,
                    min_bytes: 1,
                    decode_records: false,
                    replica_id: None,
                    current_leader_epoch: None,
                })
                .await
                .unwrap()
                .into_inner();
            if r.record_batches.is_empty() {
                break;
            }
            bytes += r.record_batches.len() as u64;
            offset = r.next_offset;
        }
    }
    bytes as f64 / MIB as f64 / start.elapsed().as_secs_f64()
}

/// Reads every record of `topic` from the beginning; MiB/s of record values.
async fn consume(cluster: &Cluster, topic: &str, partitions: i32, records: u64) -> f64 {
    let mut consumer = Consumer::new(
        cluster,
        ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    )
    .unwrap();
    consumer.assign((0..partitions).map(|p| (topic.to_string(), p)).collect());
    let start = Instant::now();
    let mut got = 0u64;
    let mut bytes = 0u64;
    while got < records {
        for r in consumer.poll(Duration::from_secs(5)).await.unwrap() {
            bytes += r.value.map_or(0, |v| v.len() as u64);
            got += 1;
        }
    }
    bytes as f64 / MIB as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args = parse_args();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_procs, cluster) = start_cluster(root.path(), 1).await;
        let admin = Admin::new(&cluster);
        println!("machine: {}", machine());
        println!(
            "records: {RECORD} B values, {} MiB per run, producer batches {} KiB, linger 5 ms, acks=1",
            args.mib, args.batch_kib
        );
        let raw_path = root.path().join("raw-write");
        let mut rows = Vec::new();
        for &partitions in &args.partitions {
            let (mut produced, mut consumed, mut raw, mut limits) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for run in 0..args.runs {
                let topic = format!("bench-{partitions}-{run}");
                // Alternate which side runs first; each side's files are gone before the other.
                let limit_first = run % 2 == 0;
                if limit_first {
                    for _ in 0..3 {
                        limits.push(raw_write(&raw_path, args.mib));
                    }
                }
                admin.create_topic(&topic, partitions, 1, Default::default()).await.unwrap();
                let p = produce(&cluster, &topic, args.mib, args.batch_kib << 10).await;
                let records = args.mib * MIB / RECORD as u64;
                let c = consume(&cluster, &topic, partitions, records).await;
                let f = fetch_raw(&cluster, &topic, partitions).await;
                admin.delete_topic(&topic).await.unwrap();
                // Give the broker time to delete the logs before the next write.
                tokio::time::sleep(Duration::from_secs(2)).await;
                sync_all();
                if !limit_first {
                    for _ in 0..3 {
                        limits.push(raw_write(&raw_path, args.mib));
                    }
                }
                eprintln!(
                    "partitions {partitions} run {run}: produce {p:.0} MiB/s, consumer {c:.0} MiB/s, raw gRPC fetch {f:.0} MiB/s, raw write {:.0} MiB/s (last 3: {:.0?})",
                    median(limits[limits.len() - 3..].to_vec()),
                    &limits[limits.len() - 3..]
                );
                produced.push(p);
                consumed.push(c);
                raw.push(f);
            }
            rows.push((partitions, median(produced), median(consumed), median(raw), median(limits)));
        }
        println!();
        println!(
            "| partitions | produce MiB/s | consumer MiB/s | gRPC Fetch, raw batches MiB/s | raw disk write MiB/s (median of all) | produce / raw write | consumer / raw write | raw fetch / raw write |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (partitions, p, c, f, l) in rows {
            println!(
                "| {partitions} | {p:.0} | {c:.0} | {f:.0} | {l:.0} | {:.0}% | {:.0}% | {:.0}% |",
                100.0 * p / l,
                100.0 * c / l,
                100.0 * f / l
            );
        }
    });
}
