//! Compressed batches through real Tideline services in this process, for every codec
//! (`none`, `gzip`, `lz4`, `zstd`): what a `Producer` sends with a codec is stored in batches
//! that carry that codec's attribute bits (and, compressed, take fewer bytes than the same
//! records plain), and a `Consumer` reads back every record, through the sendfile data port
//! and through gRPC Fetch, in order, at the offsets the producer's deliveries reported, equal
//! in key, value, headers and timestamp, also from a position inside a compressed batch.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use common::{TestCluster, await_all, poll_at_least};
use tideline_client::{
    AutoOffsetReset, Compression, Consumer, ConsumerConfig, ConsumerRecord, Producer,
    ProducerConfig, ProducerRecord, RecordMetadata,
};
use tideline_log::batch::batches;
use tideline_log::{RecordBatchBuilder, RecordHeader, Validation};
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;

/// Create time of the first record (2023-11-14).
const TS0: i64 = 1_700_000_000_000;
/// Partitions of each test topic.
const PARTITIONS: i32 = 2;
/// Records sent per codec.
const RECORDS: usize = 1500;

/// A xorshift64 generator: the same bytes on every run, none of them compressible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Record `i`: keyed except every seventh (an empty key on every eleventh), a null value on
/// every fifth and an empty one on every sixth, otherwise text that compresses well or, on
/// every thirteenth, random bytes; two very large values (larger than a batch); zero to three
/// headers with text, null, empty and binary values; create times that do not always grow
/// (timestamp deltas inside a batch go negative).
fn record(topic: &str, i: usize, random: &mut XorShift) -> ProducerRecord {
    let mut r = ProducerRecord::new(topic).timestamp_ms(TS0 + 10 * i as i64 - 25 * (i % 4) as i64);
    if i % 11 == 3 {
        r = r.key(Bytes::new());
    } else if i % 7 != 6 {
        r = r.key(format!("key-{}", i % 50));
    }
    let value: Option<Vec<u8>> = match i {
        100 => Some(format!("{i}:").repeat(40_000).into_bytes()),
        700 => Some(random.bytes(70_000)),
        _ if i % 5 == 4 => None,
        _ if i % 6 == 5 => Some(Vec::new()),
        _ if i % 13 == 12 => Some(random.bytes(50 + i % 300)),
        _ => Some(format!("value {i} of the codec test; ").repeat(1 + i % 20).into_bytes()),
    };
    if let Some(v) = value {
        r = r.value(v);
    }
    for h in 0..i % 4 {
        let value = match (i + h) % 4 {
            0 => None,
            1 => Some(Bytes::new()),
            2 => Some(Bytes::from(format!("header {h} of record {i}"))),
            _ => Some(Bytes::from(random.bytes(1 + i % 17))),
        };
        r = r.header(format!("h{h}"), value);
    }
    r
}

/// The records sent and where the producer's deliveries put them.
struct Delivered {
    sent: Vec<ProducerRecord>,
    /// Index in `sent` of the record acknowledged at each (partition, offset).
    at: HashMap<(i32, i64), usize>,
    /// Records acknowledged per partition (their offsets run densely from 0).
    counts: BTreeMap<i32, i64>,
}

impl Delivered {
    /// Checks the acknowledgements of `sent`: in the topic, each (partition, offset) once, per
    /// partition densely from 0, the create time sent.
    fn check(sent: Vec<ProducerRecord>, acks: &[RecordMetadata]) -> Delivered {
        assert_eq!(sent.len(), acks.len());
        let mut at = HashMap::new();
        let mut counts: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
        for (i, (record, ack)) in sent.iter().zip(acks).enumerate() {
            assert_eq!(ack.topic, record.topic, "record {i}");
            assert_eq!(Some(ack.timestamp_ms), record.timestamp_ms, "record {i}: {ack:?}");
            let count = counts.get_mut(&ack.partition).unwrap_or_else(|| panic!("{ack:?}"));
            *count += 1;
            if let Some(previous) = at.insert((ack.partition, ack.offset), i) {
                panic!("records {previous} and {i} both acknowledged at {ack:?}");
            }
        }
        for (&p, &count) in &counts {
            assert!(count > 0, "no record went to partition {p}");
            for offset in 0..count {
                assert!(at.contains_key(&(p, offset)), "no record acknowledged at {p}@{offset}");
            }
        }
        Delivered { sent, at, counts }
    }

    /// The record acknowledged at `partition`@`offset`.
    fn sent_at(&self, partition: i32, offset: i64) -> (usize, &ProducerRecord) {
        let i = *self
            .at
            .get(&(partition, offset))
            .unwrap_or_else(|| panic!("{partition}@{offset} was never acknowledged"));
        (i, &self.sent[i])
    }

    /// Checks that `read` is, per partition, exactly the records acknowledged from `from[p]`
    /// to the partition's end, in offset order, each equal to the record sent.
    fn check_read(&self, read: &[ConsumerRecord], from: &BTreeMap<i32, i64>, how: &str) {
        let mut next = from.clone();
        for r in read {
            let expected = next.get_mut(&r.partition).expect("an assigned partition");
            assert_eq!(r.offset, *expected, "{how}: partition {} read out of order", r.partition);
            *expected += 1;
            let (i, s) = self.sent_at(r.partition, r.offset);
            assert_eq!(&*r.topic, s.topic.as_str(), "{how}: record {i}");
            assert_eq!(r.key, s.key, "{how}: key of record {i}");
            assert_eq!(r.value, s.value, "{how}: value of record {i}");
            assert_eq!(r.headers, s.headers, "{how}: headers of record {i}");
            assert_eq!(Some(r.timestamp_ms), s.timestamp_ms, "{how}: timestamp of record {i}");
        }
        assert_eq!(next, self.counts, "{how}: each partition read to its end");
    }
}

/// Reads every partition of `topic` from `from[p]` to its end with a consumer fetching through
/// the data port or through gRPC.
async fn read_from(
    cluster: &TestCluster,
    topic: &str,
    delivered: &Delivered,
    from: &BTreeMap<i32, i64>,
    use_data_port: bool,
) -> Vec<ConsumerRecord> {
    let config = ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::None,
        // Small fetches: many of them, each starting inside or at the end of a batch.
        max_partition_fetch_bytes: 4 << 10,
        use_data_port,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(&cluster.client(), config).unwrap();
    consumer.assign(from.keys().map(|&p| (topic.to_string(), p)).collect());
    for (&p, &offset) in from {
        consumer.seek(topic, p, offset).unwrap();
    }
    let total: i64 = delivered.counts.iter().map(|(p, count)| count - from[p]).sum();
    let read = poll_at_least(&mut consumer, total as usize, Duration::from_secs(60)).await;
    assert_eq!(read.len(), total as usize, "more records read than acknowledged");
    for (&p, &count) in &delivered.counts {
        assert_eq!(consumer.position(topic, p), Some(count));
    }
    read
}

/// What the raw batches of one partition showed.
struct Stored {
    /// Bytes of the batches as stored.
    stored_bytes: usize,
    /// Bytes of the same batches rebuilt uncompressed from their records.
    plain_bytes: usize,
    /// An offset inside a batch of several records (not its first), in the partition's first
    /// half, if there is such a batch.
    inside_a_batch: Option<i64>,
}

/// Fetches partition `p` over raw gRPC (`decode_records: false`) from 0 to its end and checks
/// each batch: CRC and records valid, the codec `codec`, offsets contiguous from 0, each record
/// the one sent at its offset.
async fn check_stored(
    broker: &mut BrokerServiceClient<tonic::transport::Channel>,
    topic: &str,
    p: i32,
    codec: Compression,
    delivered: &Delivered,
) -> Stored {
    let mut stored = Stored { stored_bytes: 0, plain_bytes: 0, inside_a_batch: None };
    let mut offset = 0;
    while offset < delivered.counts[&p] {
        let response = broker
            // Raw batches (decode_records false), as a consumer, without waiting.
            .fetch(pb::FetchRequest {
                topic: topic.into(),
                partition: p,
                offset,
                max_bytes: 1 << 20,
                min_bytes: 1,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("fetch {topic}-{p}@{offset}: {s:?}"))
            .into_inner();
        assert!(response.records.is_empty(), "no decoded records asked for");
        assert_eq!(response.high_watermark, delivered.counts[&p], "{topic}-{p} end");
        assert!(!response.record_batches.is_empty(), "{topic}-{p}@{offset}: nothing below the end");
        for batch in batches(&response.record_batches) {
            let batch = batch.unwrap_or_else(|e| panic!("{topic}-{p}@{offset}: {e}"));
            let at = batch.base_offset();
            assert_eq!(at, offset, "{topic}-{p}: batches contiguous from 0");
            batch
                .validate(usize::MAX, Validation::Records)
                .unwrap_or_else(|e| panic!("@{at}: {e}"));
            assert_eq!(batch.compression_id(), codec.id(), "attribute bits of the batch @{at}");
            assert_eq!(batch.compression().unwrap(), codec, "codec of the batch @{at}");
            let mut plain = RecordBatchBuilder::new(Compression::None);
            for r in batch.records().unwrap().iter() {
                let r = r.unwrap_or_else(|e| panic!("a record of the batch @{at}: {e}"));
                let (i, s) = delivered.sent_at(p, r.offset);
                assert_eq!(r.key, s.key.as_deref(), "stored key of record {i}");
                assert_eq!(r.value, s.value.as_deref(), "stored value of record {i}");
                assert_eq!(Some(r.timestamp), s.timestamp_ms, "stored timestamp of record {i}");
                let headers: Vec<(String, Option<Bytes>)> = r
                    .headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                    .collect();
                assert_eq!(headers, s.headers, "stored headers of record {i}");
                let headers: Vec<RecordHeader> = r
                    .headers
                    .iter()
                    .map(|h| RecordHeader {
                        key: h.key.to_string(),
                        value: h.value.map(Bytes::copy_from_slice),
                    })
                    .collect();
                plain.append(r.timestamp, r.key, r.value, &headers);
            }
            assert_eq!(i64::from(batch.records_count()), batch.next_offset() - at, "@{at}");
            // The last batch of several records in the first half of the partition.
            if batch.records_count() > 1 && at < delivered.counts[&p] / 2 {
                stored.inside_a_batch = Some(at + batch.records_count() as i64 / 2);
            }
            stored.stored_bytes += batch.size();
            stored.plain_bytes += plain.build().len();
            offset = batch.next_offset();
        }
        assert_eq!(response.next_offset, offset, "{topic}-{p}: next offset after the batches");
    }
    stored
}

/// Sends [`RECORDS`] records with `codec` to a topic of its own, then checks what is stored
/// and what consumers read back, both ways.
async fn round_trip(codec: Compression) {
    let topic = format!("codec-{}", codec.name());
    let cluster = TestCluster::start(&[1]).await;
    cluster.create_topic(&topic, PARTITIONS, 1, &[]).await;
    let client = cluster.client();
    // 16 KiB batches: each partition gets many, and the two largest records go alone.
    let config = ProducerConfig { compression: codec, batch_size: 16 << 10, ..Default::default() };
    let producer = Producer::new(&client, config).unwrap();
    assert_eq!(producer.config().compression, codec);
    let mut random = XorShift(0x2545_f491_4f6c_dd1d);
    let sent: Vec<ProducerRecord> = (0..RECORDS).map(|i| record(&topic, i, &mut random)).collect();
    let mut deliveries = Vec::with_capacity(sent.len());
    for r in &sent {
        deliveries.push(producer.send(r.clone()).await.expect("send"));
    }
    let acks: Vec<RecordMetadata> = await_all(deliveries, Duration::from_secs(60))
        .await
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("record {i} not delivered with {codec:?}: {e}")))
        .collect();
    producer.close().await;
    let delivered = Delivered::check(sent, &acks);

    let mut broker = BrokerServiceClient::connect(format!("http://{}", cluster.broker_addr(1)))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let mut stored_bytes = 0;
    let mut plain_bytes = 0;
    let mut inside = BTreeMap::new();
    for p in 0..PARTITIONS {
        let stored = check_stored(&mut broker, &topic, p, codec, &delivered).await;
        stored_bytes += stored.stored_bytes;
        plain_bytes += stored.plain_bytes;
        let offset = stored
            .inside_a_batch
            .unwrap_or_else(|| panic!("{topic}-{p}: no batch of several records"));
        inside.insert(p, offset);
    }
    if codec == Compression::None {
        assert_eq!(stored_bytes, plain_bytes, "uncompressed batches are stored as built");
    } else {
        assert!(
            stored_bytes * 4 < plain_bytes * 3,
            "{codec:?} batches take {stored_bytes} bytes, the same records plain {plain_bytes}"
        );
    }

    let from_start: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for use_data_port in [true, false] {
        let how = format!("{codec:?}, data port {use_data_port}");
        let read = read_from(&cluster, &topic, &delivered, &from_start, use_data_port).await;
        delivered.check_read(&read, &from_start, &how);
        // From the second record of a batch: the records before it in the batch are skipped.
        let read = read_from(&cluster, &topic, &delivered, &inside, use_data_port).await;
        delivered.check_read(&read, &inside, &format!("{how}, from inside a batch"));
    }
    cluster.shutdown().await;
}

/// Uncompressed batches round-trip and carry codec id 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_batches_round_trip() {
    round_trip(Compression::None).await;
}

/// gzip batches round-trip, carry codec id 1 and are stored compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_batches_round_trip() {
    round_trip(Compression::Gzip).await;
}

/// LZ4 batches round-trip, carry codec id 3 and are stored compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_batches_round_trip() {
    round_trip(Compression::Lz4).await;
}

/// zstd batches round-trip, carry codec id 4 and are stored compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_batches_round_trip() {
    round_trip(Compression::Zstd).await;
}
