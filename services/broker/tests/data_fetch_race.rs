//! Data-port fetches racing segment rolls and retention, against a real `tideline-broker`
//! process: a topic with 8 KiB segments and a 32 KiB `retention.bytes`, a producer appending
//! batches of random sizes and codecs without pause, and fetchers asking for random offsets
//! (near the log start, anywhere, below it) with random `max_bytes` through the sendfile data
//! port and gRPC Fetch at the same moment.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use tideline_common::{ErrorCode, error_code_of, offset_range_of};
use tideline_log::batch::batches;
use tideline_log::{Compression, RecordBatchBuilder, segment_file_name};
use tideline_proto::data_frame;
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::transport::Channel;

const TOPIC: &str = "race";
/// How long the fetchers race the producer and retention, at the least.
const RACE: Duration = Duration::from_secs(4);
/// How long they race at the most, when a loaded machine makes [`RACE`] too short for the
/// minimum counts below.
const RACE_MAX: Duration = Duration::from_secs(30);
/// Fetchers, each with its own data-port connection.
const FETCHERS: u64 = 2;
/// Pairs where both answers carried batches, compared byte for byte, at the least.
const MIN_COMPARED: usize = 300;
/// Answers OFFSET_OUT_OF_RANGE at the least (retention must have moved the log start under
/// the fetchers).
const MIN_OUT_OF_RANGE: usize = 20;

/// A xorshift64 generator: each task's sequence is fixed by its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A batch the producer sent, as it must be stored at its base offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Produced {
    size: usize,
    crc: u32,
    next_offset: i64,
}

/// What the producer and the fetchers share.
#[derive(Default)]
struct Shared {
    /// Every batch produced, by base offset, entered before its produce request is sent (a
    /// fetch may see it before the acknowledgement comes back).
    produced: Mutex<BTreeMap<i64, Produced>>,
    /// The high watermark as far as anyone has seen it (acknowledgements and answers).
    high_watermark: AtomicI64,
    /// The log start offset as far as anyone has seen it (answers).
    log_start: AtomicI64,
    /// Pairs where both answers carried batches.
    compared: AtomicUsize,
    /// Pairs where both carried batches and one carried more than the other.
    compared_unequal: AtomicUsize,
    /// Answers OFFSET_OUT_OF_RANGE.
    out_of_range: AtomicUsize,
    /// Set once every fetcher returned: the producer stops.
    fetchers_done: AtomicBool,
    /// Answers OFFSET_OUT_OF_RANGE for an offset that was at or above the log start known
    /// when the pair was sent (retention deleted it during the fetch).
    deleted_under_fetch: AtomicUsize,
}

/// Appends batches without pause until the fetchers are done: 1 to 3 batches per request, each
/// of 1 to 24 records of 0 to 900 random bytes (from ~70 bytes to more than a segment), with a
/// random codec. Checks each acknowledgement is at the offset the log end predicts.
async fn produce(mut broker: BrokerServiceClient<Channel>, shared: Arc<Shared>) {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let codecs = [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd];
    let mut next_offset = 0i64;
    let mut requests = 0u64;
    while !shared.fetchers_done.load(Ordering::Acquire) {
        let base = next_offset;
        let mut payload = Vec::new();
        let mut entries = Vec::new();
        for _ in 0..=random.below(3) {
            let mut builder = RecordBatchBuilder::new(codecs[random.below(4) as usize]);
            let count = 1 + random.below(24);
            for r in 0..count {
                let value: Vec<u8> = (0..random.below(901)).map(|_| random.next() as u8).collect();
                let key = format!("{requests}-{r}");
                builder.append(1_700_000_000_000, Some(key.as_bytes()), Some(&value), &[]);
            }
            let batch = builder.build();
            let crc = tideline_log::RecordBatch::parse_exact(&batch).unwrap().stored_crc();
            let first = next_offset;
            next_offset += count as i64;
            entries.push((first, Produced { size: batch.len(), crc, next_offset }));
            payload.extend_from_slice(&batch);
        }
        shared.produced.lock().unwrap().extend(entries);
        let mut request = produce_bytes(TOPIC, 0, payload);
        request.acks = pb::Acks::All as i32;
        let response = broker
            .produce(request)
            .await
            .unwrap_or_else(|s| panic!("produce request {requests} at {base}: {s:?}"))
            .into_inner();
        assert_eq!(response.base_offset, base, "request {requests} stored where the log ended");
        shared.high_watermark.fetch_max(next_offset, Ordering::AcqRel);
        requests += 1;
    }
}

async fn send_request(stream: &mut TcpStream, request: &pb::DataFetchRequest) {
    data_frame::write_request(stream, request).await.expect("data port request");
}

/// Sends a data-port request for `offset` of partition 0, up to `max_bytes`, without waiting.
async fn send_fetch(stream: &mut TcpStream, offset: i64, max_bytes: i32) {
    // No leader epoch, no replica id, no waiting.
    let partition = pb::DataFetchPartition {
        topic: TOPIC.into(),
        partition: 0,
        offset,
        max_bytes,
        ..Default::default()
    };
    let request =
        pb::DataFetchRequest { partitions: vec![partition], min_bytes: 1, ..Default::default() };
    send_request(stream, &request).await;
}

/// Panics for a read that failed on the data port. The broker closes the connection only when
/// a segment is truncated under a read, which retention never does.
fn closed(e: std::io::Error, what: &str) -> ! {
    panic!("data port closed the connection {what}: {e}")
}

/// The header of the next answer, for a request of one partition: its one entry.
async fn read_header(stream: &mut TcpStream, what: &str) -> pb::DataFetchPartitionResult {
    let mut header = data_frame::read_header(stream).await.unwrap_or_else(|e| closed(e, what));
    assert_eq!(header.partitions.len(), 1, "one entry per partition asked");
    header.partitions.remove(0)
}

/// The bytes that follow the header entry `p`.
async fn read_payload(
    stream: &mut TcpStream,
    p: &pb::DataFetchPartitionResult,
    what: &str,
) -> Vec<u8> {
    let mut payload = vec![0; p.payload_length as usize];
    stream.read_exact(&mut payload).await.unwrap_or_else(|e| closed(e, what));
    payload
}

/// One data-port answer for partition 0: its header entry and its bytes.
async fn data_fetch(
    stream: &mut TcpStream,
    offset: i64,
    max_bytes: i32,
) -> (pb::DataFetchPartitionResult, Vec<u8>) {
    let what = format!("fetching {offset} (max {max_bytes})");
    send_fetch(stream, offset, max_bytes).await;
    let p = read_header(stream, &what).await;
    let payload = read_payload(stream, &p, &what).await;
    (p, payload)
}

/// A gRPC fetch of partition 0's raw batches from `offset`, up to `max_bytes`, not waiting.
fn raw_fetch(offset: i64, max_bytes: i32) -> pb::FetchRequest {
    // No leader epoch, not a replica, no decoding, no waiting.
    pb::FetchRequest {
        topic: TOPIC.into(),
        partition: 0,
        offset,
        max_bytes,
        min_bytes: 1,
        ..Default::default()
    }
}

/// One answer, whichever way it came.
#[derive(Debug)]
enum Answer {
    /// Batches: the bytes, the next offset, the high watermark and log start reported.
    Batches { bytes: Vec<u8>, next_offset: i64, high_watermark: i64, log_start: i64 },
    /// OFFSET_OUT_OF_RANGE with the readable range it carried.
    OutOfRange { log_start: i64, high_watermark: i64 },
}

fn from_data_port(p: &pb::DataFetchPartitionResult, payload: Vec<u8>, offset: i64) -> Answer {
    assert_eq!(p.payload_length as usize, payload.len());
    assert_eq!((p.topic.as_str(), p.partition), (TOPIC, 0));
    if p.error_code == ErrorCode::OffsetOutOfRange as i32 {
        assert!(payload.is_empty(), "a refusal carries no bytes: {p:?}");
        assert_eq!(p.next_offset, offset, "{p:?}");
        return Answer::OutOfRange {
            log_start: p.log_start_offset,
            high_watermark: p.high_watermark,
        };
    }
    assert_eq!(p.error_code, ErrorCode::Unspecified as i32, "data port fetch of {offset}: {p:?}");
    Answer::Batches {
        bytes: payload,
        next_offset: p.next_offset,
        high_watermark: p.high_watermark,
        log_start: p.log_start_offset,
    }
}

fn from_grpc(
    result: Result<tonic::Response<pb::FetchResponse>, tonic::Status>,
    offset: i64,
) -> Answer {
    match result {
        Ok(r) => {
            let r = r.into_inner();
            assert!(r.records.is_empty(), "decode_records was not asked for");
            Answer::Batches {
                bytes: r.record_batches.to_vec(),
                next_offset: r.next_offset,
                high_watermark: r.high_watermark,
                log_start: r.log_start_offset,
            }
        }
        Err(s) => {
            assert_eq!(
                error_code_of(&s),
                Some(ErrorCode::OffsetOutOfRange),
                "gRPC fetch of {offset}: {s:?}"
            );
            let (log_start, high_watermark) =
                offset_range_of(&s).unwrap_or_else(|| panic!("no range with {s:?}"));
            Answer::OutOfRange { log_start, high_watermark }
        }
    }
}

/// What was known before a pair was sent: the log start and high watermark had reached at
/// least these (both only grow).
#[derive(Debug, Clone, Copy)]
struct Known {
    log_start: i64,
    high_watermark: i64,
}

/// Checks one answer for `offset` (below `known.high_watermark`) and `max_bytes`; returns the
/// batch bytes if it carried batches.
fn check<'a>(
    how: &str,
    answer: &'a Answer,
    offset: i64,
    max_bytes: i32,
    known: Known,
    shared: &Shared,
) -> Option<&'a [u8]> {
    let what = format!("{how} fetch of {offset} (max {max_bytes}, known {known:?}): {answer:?}");
    match *answer {
        Answer::OutOfRange { log_start, high_watermark } => {
            assert!(offset < log_start, "{what}: out of range though at or above the log start");
            assert!(log_start >= known.log_start, "{what}: the log start went back");
            assert!(high_watermark >= known.high_watermark, "{what}: the high watermark went back");
            assert!(log_start <= high_watermark, "{what}: an empty range");
            shared.log_start.fetch_max(log_start, Ordering::AcqRel);
            shared.high_watermark.fetch_max(high_watermark, Ordering::AcqRel);
            shared.out_of_range.fetch_add(1, Ordering::Relaxed);
            if offset >= known.log_start {
                shared.deleted_under_fetch.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
        Answer::Batches { ref bytes, next_offset, high_watermark, log_start } => {
            assert!(log_start <= offset, "{what}: batches for an offset below the log start");
            assert!(log_start >= known.log_start, "{what}: the log start went back");
            assert!(high_watermark >= known.high_watermark, "{what}: the high watermark went back");
            assert!(!bytes.is_empty(), "{what}: no batch below the high watermark");
            // Not poisoned by another fetcher's failed assertion: that one reports itself.
            let produced = shared.produced.lock().unwrap_or_else(PoisonError::into_inner);
            let mut expected_base = None;
            let mut first_size = None;
            for batch in batches(bytes) {
                let batch = batch.unwrap_or_else(|e| panic!("{what}: not whole batches: {e}"));
                batch.verify_crc().unwrap_or_else(|e| panic!("{what}: {e}"));
                let base = batch.base_offset();
                match expected_base {
                    None => assert!(
                        base <= offset && offset < batch.next_offset(),
                        "{what}: the first batch ({base}..{}) does not hold the offset",
                        batch.next_offset()
                    ),
                    Some(b) => assert_eq!(base, b, "{what}: batches not contiguous"),
                }
                let p = produced
                    .get(&base)
                    .unwrap_or_else(|| panic!("{what}: no batch was produced at {base}"));
                assert_eq!(
                    (batch.size(), batch.stored_crc(), batch.next_offset()),
                    (p.size, p.crc, p.next_offset),
                    "{what}: the batch at {base} is not the one produced there"
                );
                first_size.get_or_insert(batch.size());
                expected_base = Some(batch.next_offset());
            }
            assert_eq!(Some(next_offset), expected_base, "{what}: next offset after the batches");
            assert!(next_offset <= high_watermark, "{what}: batches past the high watermark");
            let limit = (max_bytes as usize).max(first_size.unwrap_or(0));
            assert!(bytes.len() <= limit, "{what}: {} bytes, more than {limit}", bytes.len());
            shared.log_start.fetch_max(log_start, Ordering::AcqRel);
            shared.high_watermark.fetch_max(high_watermark, Ordering::AcqRel);
            Some(bytes)
        }
    }
}

/// Sends pairs of fetches (data port and gRPC, at once) for random offsets and sizes until
/// [`RACE`] passed and the counts reached their minimums, or [`RACE_MAX`] passed, checking each
/// answer and comparing the two.
async fn fetch_pairs(
    data_addr: String,
    mut broker: BrokerServiceClient<Channel>,
    shared: Arc<Shared>,
    seed: u64,
    started: Instant,
) {
    let mut random = XorShift(seed);
    let mut stream = TcpStream::connect(&data_addr).await.expect("connect to the data port");
    stream.set_nodelay(true).unwrap();
    let sizes = [0, 1, 100, 1000, 4096, 8192, 20_000, 100_000, 1 << 20];
    let enough = || {
        shared.compared.load(Ordering::Relaxed) >= MIN_COMPARED
            && shared.out_of_range.load(Ordering::Relaxed) >= MIN_OUT_OF_RANGE
    };
    while started.elapsed() < RACE_MAX && (started.elapsed() < RACE || !enough()) {
        let known = Known {
            log_start: shared.log_start.load(Ordering::Acquire),
            high_watermark: shared.high_watermark.load(Ordering::Acquire),
        };
        let (start, end) = (known.log_start, known.high_watermark);
        assert!(start < end, "the producer is ahead of retention: {known:?}");
        let offset = match random.below(10) {
            // The oldest records, which retention deletes next.
            0..=3 => start + random.below(((end - start) as u64).min(64)) as i64,
            4..=7 => start + random.below((end - start) as u64) as i64,
            // Already deleted, as far as anyone knows.
            _ if start > 0 => random.below(start as u64) as i64,
            _ => start,
        };
        let max_bytes = sizes[random.below(sizes.len() as u64) as usize];
        let pair = async {
            tokio::join!(
                data_fetch(&mut stream, offset, max_bytes),
                broker.fetch(raw_fetch(offset, max_bytes))
            )
        };
        let ((header, payload), grpc) = tokio::time::timeout(Duration::from_secs(10), pair)
            .await
            .unwrap_or_else(|_| panic!("no answers within 10 s to fetches of {offset}"));
        let data = from_data_port(&header, payload, offset);
        let grpc = from_grpc(grpc, offset);
        let data_bytes = check("data port", &data, offset, max_bytes, known, &shared);
        let grpc_bytes = check("gRPC", &grpc, offset, max_bytes, known, &shared);
        if let (Some(d), Some(g)) = (data_bytes, grpc_bytes) {
            let (shorter, longer) = if d.len() <= g.len() { (d, g) } else { (g, d) };
            assert!(
                longer.starts_with(shorter),
                "fetches of {offset} (max {max_bytes}): {} bytes by the data port and {} by gRPC, \
                 neither a prefix of the other",
                d.len(),
                g.len()
            );
            shared.compared.fetch_add(1, Ordering::Relaxed);
            if d.len() != g.len() {
                shared.compared_unequal.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The data listener's address of broker `id`, from the metadata.
async fn data_addr(cluster: &Cluster, id: i32) -> String {
    let m = cluster.metadata().await.unwrap();
    let e =
        m.brokers.iter().filter_map(|b| b.endpoint.as_ref()).find(|e| e.broker_id == id).unwrap();
    assert!(e.data_port > 0, "the broker advertises its data port: {e:?}");
    format!("{}:{}", e.host, e.data_port)
}

/// One broker, with [`TOPIC`] of one partition: 8 KiB segments, retention by size alone (the
/// records' create time is years old) keeping at least 32 KiB (some 4 closed segments), checked
/// on every housekeeping tick of the broker (100 ms; a shorter interval changes nothing).
async fn race_cluster() -> Cluster {
    let args = ["--retention-check-interval-ms", "100"];
    let cluster = Cluster::start_with_broker_args(1, &[1], &args).await;
    let configs = [("segment.bytes", "8192"), ("retention.bytes", "32768"), ("retention.ms", "-1")];
    cluster.create_topic(TOPIC, 1, 1, &configs).await;
    cluster
}

/// Under segment rolls and retention deleting segments, each answer of the data port and of
/// gRPC Fetch (raw batches) is either OFFSET_OUT_OF_RANGE for an offset below the log start,
/// with a range that never goes back, or whole CRC-valid batches, contiguous, the first
/// holding the offset asked, each the very batch produced at its offset, within `max_bytes`
/// (or one batch), up to the high watermark; and when both answers of a pair sent at the same
/// moment carry batches, one is a byte prefix of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_port_and_grpc_fetches_agree_under_rolls_and_retention() {
    let cluster = race_cluster().await;
    let shared = Arc::new(Shared::default());
    let broker = cluster.broker(1).await;
    let addr = data_addr(&cluster, 1).await;

    let producer = tokio::spawn(produce(broker.clone(), Arc::clone(&shared)));
    wait_until(Duration::from_secs(10), "the first acknowledged batch", || async {
        (shared.high_watermark.load(Ordering::Acquire) > 0).then_some(())
    })
    .await;
    let started_at = shared.log_start.load(Ordering::Acquire);
    let started = Instant::now();
    let mut fetchers = tokio::task::JoinSet::new();
    for i in 0..FETCHERS {
        let seed = 0x2545_f491_4f6c_dd1d ^ (i + 1).wrapping_mul(0x9e37_79b9);
        let shared = Arc::clone(&shared);
        fetchers.spawn(fetch_pairs(addr.clone(), broker.clone(), shared, seed, started));
    }
    // The first fetcher to fail fails the test at once (the producer stopped first, so that
    // the broker going away does not fail it too and hide the cause).
    while let Some(done) = fetchers.join_next().await {
        if let Err(e) = done {
            producer.abort();
            std::panic::resume_unwind(e.into_panic());
        }
    }
    shared.fetchers_done.store(true, Ordering::Release);
    producer.await.expect("the producer");

    let compared = shared.compared.load(Ordering::Relaxed);
    let out_of_range = shared.out_of_range.load(Ordering::Relaxed);
    let log_start = shared.log_start.load(Ordering::Relaxed);
    let high_watermark = shared.high_watermark.load(Ordering::Relaxed);
    let batches = shared.produced.lock().unwrap().len();
    eprintln!(
        "{batches} batches produced up to {high_watermark}, log start {started_at} -> {log_start}; \
         {compared} pairs compared ({} unequal in length), {out_of_range} answers out of range \
         ({} for offsets deleted during the fetch)",
        shared.compared_unequal.load(Ordering::Relaxed),
        shared.deleted_under_fetch.load(Ordering::Relaxed),
    );
    assert!(compared >= MIN_COMPARED, "only {compared} pairs compared");
    assert!(out_of_range >= MIN_OUT_OF_RANGE, "only {out_of_range} answers out of range");
    assert!(log_start > started_at, "retention deleted nothing while the fetches ran");
    cluster.stop().await;
}

/// A segment that retention deletes while the data port is still sending it (to a reader
/// slower than the send) is sent whole: the broker holds the file open, so the reader gets
/// every byte the answer announced, whole CRC-valid batches as produced, after the file is
/// gone, and the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_deleted_by_retention_while_being_sent_is_sent_whole() {
    let cluster = race_cluster().await;
    let mut broker = cluster.broker(1).await;
    let addr = data_addr(&cluster, 1).await;
    let mut random = XorShift(0x853c_49e6_748f_ea9b);
    let mut produce_batches = async |count: usize, value_bytes: usize| {
        let mut payload = Vec::new();
        let mut sizes = Vec::new();
        for _ in 0..count {
            let value: Vec<u8> = (0..value_bytes).map(|_| random.next() as u8).collect();
            let mut builder = RecordBatchBuilder::new(Compression::None);
            builder.append(1_700_000_000_000, Some(b"k"), Some(&value), &[]);
            let batch = builder.build();
            let crc = tideline_log::RecordBatch::parse_exact(&batch).unwrap().stored_crc();
            sizes.push((batch.len(), crc));
            payload.extend_from_slice(&batch);
        }
        let mut request = produce_bytes(TOPIC, 0, payload);
        request.acks = pb::Acks::All as i32;
        let base = broker.produce(request).await.expect("produce").into_inner().base_offset;
        (base, sizes)
    };
    // 12 batches of 1 MB in one request, so in one segment: more than the socket buffers on
    // both ends of a loopback connection hold (4 MiB at most by default).
    let (base, big) = produce_batches(12, 1_000_000).await;
    assert_eq!(base, 0);
    let total: usize = big.iter().map(|(size, _)| size).sum();

    // A reader with a small receive buffer asks for all of it and reads the header only.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 << 10).unwrap();
    let mut slow = socket.connect(addr.parse().unwrap()).await.expect("connect to the data port");
    slow.set_nodelay(true).unwrap();
    send_fetch(&mut slow, 0, 32 << 20).await;
    let what = "sending a segment retention deleted";
    let header = read_header(&mut slow, what).await;
    assert_eq!(header.error_code, ErrorCode::Unspecified as i32, "{header:?}");
    assert_eq!(header.payload_length as usize, total, "the whole segment is announced");

    // More than retention.bytes after it: the big segment is closed, and retention deletes it.
    let (base, _) = produce_batches(6, 8 << 10).await;
    assert_eq!(base, 12);
    let segment = cluster.data_dir(1).join(format!("{TOPIC}-0")).join(segment_file_name(0, "log"));
    wait_until(Duration::from_secs(30), "retention to delete the segment", || {
        let mut broker = broker.clone();
        let segment = segment.clone();
        async move {
            let answer = broker.fetch(raw_fetch(0, 1)).await;
            let out_of_range = answer.is_err_and(|s| {
                error_code_of(&s) == Some(ErrorCode::OffsetOutOfRange)
                    && offset_range_of(&s).is_some_and(|(start, _)| start > 0)
            });
            (out_of_range && !segment.exists()).then_some(())
        }
    })
    .await;

    let payload = read_payload(&mut slow, &header, what).await;
    let mut next = 0;
    for (i, batch) in batches(&payload).enumerate() {
        let batch = batch.unwrap_or_else(|e| panic!("batch {i}: {e}"));
        batch.verify_crc().unwrap_or_else(|e| panic!("batch {i}: {e}"));
        assert_eq!(batch.base_offset(), next, "batch {i}");
        assert_eq!((batch.size(), batch.stored_crc()), big[i], "batch {i} is the one produced");
        next = batch.next_offset();
    }
    assert_eq!(next, 12, "every batch of the segment came");
    assert_eq!(header.next_offset, 12);

    // The connection goes on: the log start is now past the batches just read.
    send_fetch(&mut slow, 0, 1).await;
    let refused = read_header(&mut slow, "after the deleted segment").await;
    assert_eq!(refused.error_code, ErrorCode::OffsetOutOfRange as i32, "{refused:?}");
    assert!(refused.log_start_offset >= 12, "{refused:?}");
    cluster.stop().await;
}
