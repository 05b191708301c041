//! Log compaction (`cleanup.policy=compact`): a cleaned log holds the latest record of every
//! key at its original offset, tombstones go once `delete.retention.ms` has passed, reads,
//! reopening and followers cope with the offset gaps, a crash at any step of a segment swap
//! leaves either the old or the new segments, and the active segment is never touched.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Rec, build};
use proptest::prelude::*;
use tideline_log::batch::batches;
use tideline_log::{
    BatchError, CLEAN_SHUTDOWN_FILE, CleanOptions, CleanStep, CleanupPolicy, Compression,
    FlushPolicy, Log, LogConfig, LogError, ManualClock, RECOVERY_POINT_FILE, RecordBatch, Throttle,
    Validation, segment_file_name,
};

const RETENTION_MS: u64 = 1000;
const START_MS: i64 = 1_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        segment_ms: None,
        index_interval_bytes: 100,
        retention_ms: None,
        flush: FlushPolicy::PageCache,
        cleanup_policy: CleanupPolicy::COMPACT,
        delete_retention_ms: RETENTION_MS,
        ..LogConfig::default()
    }
}

/// A record as a consumer sees it: offset, key, value.
type Seen = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Reads the log from `from` to its end as a consumer does: whole batches from the read path,
/// records below the position skipped, the position moved to the region's next offset (past
/// empty and emptied batches too). Every stored batch must pass record-level validation.
fn consume(log: &Log, from: i64, max_bytes: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut position = from;
    loop {
        let read = log.read(position, max_bytes, None).unwrap();
        if read.region.is_empty() {
            break;
        }
        assert!(read.region.next_offset() > position, "a read at {position} makes progress");
        let bytes = read.region.read_to_bytes().unwrap();
        for batch in batches(&bytes) {
            let batch = batch.unwrap();
            batch.validate(usize::MAX, Validation::Records).unwrap();
            for record in batch.records().unwrap().iter() {
                let record = record.unwrap();
                if record.offset >= position {
                    out.push((
                        record.offset,
                        record.key.map(<[u8]>::to_vec),
                        record.value.map(<[u8]>::to_vec),
                    ));
                }
            }
        }
        position = read.region.next_offset();
    }
    assert_eq!(position.max(from), log.log_end_offset(), "a consumer reaches the log end");
    out
}

/// A record of the model, with its batch's max timestamp (tombstones expire by it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    offset: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    batch_max_ts: i64,
}

/// The model: records present, every record ever appended, and the log end.
#[derive(Debug, Default)]
struct Model {
    present: Vec<Stored>,
    history: Vec<Stored>,
    end: i64,
}

impl Model {
    fn append(&mut self, records: &[Rec]) {
        let max_ts = records.iter().map(|r| r.timestamp).max().unwrap();
        for r in records {
            let s = Stored {
                offset: self.end,
                key: r.key.clone().unwrap(),
                value: r.value.clone(),
                batch_max_ts: max_ts,
            };
            self.present.push(s.clone());
            self.history.push(s);
            self.end += 1;
        }
    }

    /// What a clean that covered the log below `cleaned_to` at `now` leaves.
    fn clean(&mut self, cleaned_to: i64, now: i64) {
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for r in self.present.iter().filter(|r| r.offset < cleaned_to) {
            latest.insert(r.key.clone(), r.offset);
        }
        self.present.retain(|r| {
            r.offset >= cleaned_to
                || (latest[&r.key] == r.offset
                    && !(r.value.is_none() && now - r.batch_max_ts >= RETENTION_MS as i64))
        });
    }

    fn seen_from(&self, from: i64) -> Vec<Seen> {
        self.present
            .iter()
            .filter(|r| r.offset >= from)
            .map(|r| (r.offset, Some(r.key.clone()), r.value.clone()))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A leader append of one batch of keyed records (`None` values are tombstones).
    Append { records: Vec<(u8, Option<u8>)>, codec: Compression, jitter: u8 },
    /// A clean after the clock moved by `advance_ms`.
    Clean { advance_ms: u16 },
    /// Reopen: after a clean close, after a crash, or after a crash that lost the recovery
    /// point (every segment is scanned).
    Reopen { how: u8 },
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        3 => Just(Compression::None),
        1 => Just(Compression::Gzip),
        1 => Just(Compression::Lz4),
        1 => Just(Compression::Zstd),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            proptest::collection::vec(
                (0u8..6, proptest::option::weighted(0.8, any::<u8>())),
                1..6,
            ),
            codec(),
            any::<u8>(),
        )
            .prop_map(|(records, codec, jitter)| Op::Append { records, codec, jitter }),
        2 => (0u16..2500).prop_map(|advance_ms| Op::Clean { advance_ms }),
        1 => (0u8..3).prop_map(|how| Op::Reopen { how }),
    ]
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    let clock = Arc::new(ManualClock::new(START_MS));
    let open = || Log::open_with_clock(&path, config(), clock.clone()).unwrap();
    let mut log = open();
    let mut model = Model::default();
    let throttle = Throttle::unlimited();
    for op in ops {
        match op {
            Op::Append { records, codec, jitter } => {
                let now = clock.now();
                let recs: Vec<Rec> = records
                    .iter()
                    .enumerate()
                    .map(|(i, (key, value))| Rec {
                        timestamp: now - i64::from(jitter) + i as i64,
                        key: Some(format!("key-{key}").into_bytes()),
                        value: value
                            .map(|v| format!("value-{v}-{}", "x".repeat(v as usize % 40)))
                            .map(String::into_bytes),
                        headers: Vec::new(),
                    })
                    .collect();
                let info = log.append(&build(&recs, codec), 1).unwrap();
                assert_eq!(info.first_offset, model.end, "offsets go on from the log end");
                model.append(&recs);
            }
            Op::Clean { advance_ms } => {
                clock.advance(i64::from(advance_ms));
                let active_before = active_bytes(&log);
                let now = clock.now();
                let outcome = log.clean(&CleanOptions::new(now), &throttle).unwrap();
                assert_eq!(outcome.abandoned, None);
                if outcome.segments_written > 0 {
                    model.clean(outcome.cleaned_to, now);
                }
                assert!(outcome.bytes_after <= outcome.bytes_before);
                assert_eq!(active_bytes(&log), active_before, "the active segment is untouched");
                let again = log.clean(&CleanOptions::new(now), &throttle).unwrap();
                assert_eq!(again.segments_written, 0, "nothing is dirty right after a clean");
            }
            Op::Reopen { how } => {
                if how == 0 {
                    log.close().unwrap();
                }
                drop(log);
                if how == 2 {
                    let _ = std::fs::remove_file(path.join(RECOVERY_POINT_FILE));
                }
                log = open();
            }
        }
        assert_eq!(log.log_start_offset(), 0);
        assert_eq!(log.log_end_offset(), model.end, "compaction never moves the log end");
        assert_eq!(consume(&log, 0, 1 << 20), model.seen_from(0));
    }
    // Reads from every offset, with small and large reads, see exactly the model's records
    // from there on, across the gaps.
    for from in 0..=model.end {
        assert_eq!(consume(&log, from, 1), model.seen_from(from), "consuming from {from}");
    }
    assert_eq!(consume(&log, 0, 300), model.seen_from(0));
    // Every key keeps its latest record, unless that is a tombstone that expired (then the
    // key is gone entirely); nothing is invented.
    let present = consume(&log, 0, 1 << 20);
    let mut latest: HashMap<Vec<u8>, &Stored> = HashMap::new();
    for r in &model.history {
        latest.insert(r.key.clone(), r);
    }
    for (key, last) in latest {
        let of_key: Vec<&Seen> =
            present.iter().filter(|(_, k, _)| k.as_deref() == Some(&key[..])).collect();
        match of_key.last() {
            Some(found) => assert_eq!(
                (found.0, &found.2),
                (last.offset, &last.value),
                "the latest record of a key stays"
            ),
            None => assert!(last.value.is_none(), "only a deleted key may disappear"),
        }
    }
    for (offset, _, _) in &present {
        assert!(model.history.iter().any(|r| r.offset == *offset));
    }
    log.close().unwrap();
    let reopened = open();
    assert_eq!(consume(&reopened, 0, 1 << 20), model.seen_from(0));
}

/// The bytes of the active segment's file.
fn active_bytes(log: &Log) -> Vec<u8> {
    let base = *log.segment_base_offsets().last().unwrap();
    std::fs::read(log.dir().join(segment_file_name(base, "log"))).unwrap()
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for ManualClock {
    fn now(&self) -> i64 {
        tideline_log::Clock::now_ms(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Any sequence of appends, cleans and reopenings leaves exactly the records a
    /// "latest value per key" model predicts, at their original offsets: superseded records
    /// go, tombstones stay until `delete.retention.ms` passed and then go, the log end never
    /// moves, and reads from every offset see the same records.
    #[test]
    fn compacted_log_matches_the_latest_value_per_key_model(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(ops);
    }
}

/// Appends `rounds` batches updating keys `0..keys` (every key once per batch).
fn fill(log: &Log, rounds: usize, keys: usize, codec: Compression) {
    for round in 0..rounds {
        let recs: Vec<Rec> = (0..keys)
            .map(|k| Rec {
                timestamp: START_MS,
                key: Some(format!("key-{k}").into_bytes()),
                value: Some(format!("value {round} of {k}").into_bytes()),
                headers: Vec::new(),
            })
            .collect();
        log.append(&build(&recs, codec), 1).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn staged_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
        .collect();
    names.sort();
    names
}

/// A crash after every step of a segment swap (cleaned files written; committed by the rename
/// to `.swap`; some or all old segments deleted; indexes renamed; everything renamed) leaves,
/// after reopening, either exactly the old log (before the commit point) or exactly the cleaned
/// one (from it on): never a key without its latest record, never a stray file. The reopened
/// log takes appends and cleans again.
#[test]
fn a_crash_at_every_swap_step_recovers_the_old_or_the_new_segments() {
    let original = tempfile::tempdir().unwrap();
    let log = Log::open(original.path(), config()).unwrap();
    fill(&log, 40, 4, Compression::Lz4);
    // Segments rolled at 400 bytes; cleaned into one group.
    log.set_config(LogConfig { segment_bytes: 1 << 20, ..config() }).unwrap();
    assert!(log.segment_base_offsets().len() > 4, "{:?}", log.segment_base_offsets());
    let old = consume(&log, 0, 1 << 20);
    let end = log.log_end_offset();
    drop(log);

    let reference = tempfile::tempdir().unwrap();
    copy_dir(original.path(), reference.path());
    let log = Log::open(reference.path(), config()).unwrap();
    log.set_config(LogConfig { segment_bytes: 1 << 20, ..config() }).unwrap();
    let outcome = log.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
    assert_eq!(outcome.segments_written, 1, "{outcome:?}");
    assert!(outcome.segments_replaced > 1);
    let new = consume(&log, 0, 1 << 20);
    assert!(new.len() < old.len());
    drop(log);

    for step in [
        CleanStep::Written,
        CleanStep::Committed,
        CleanStep::OldPartlyDeleted,
        CleanStep::OldDeleted,
        CleanStep::IndexesRenamed,
        CleanStep::Renamed,
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        let log = Log::open(dir.path(), config()).unwrap();
        log.set_config(LogConfig { segment_bytes: 1 << 20, ..config() }).unwrap();
        let options = CleanOptions { crash_after: Some(step), ..CleanOptions::new(START_MS) };
        let crashed = log.clean(&options, &Throttle::unlimited());
        assert!(matches!(crashed, Err(LogError::Offline { .. })), "{step:?}: {crashed:?}");
        assert!(log.append(&build(&[Rec::value(1, b"x")], Compression::None), 1).is_err());
        drop(log);
        for reopen in 0..2 {
            let log = Log::open(dir.path(), config()).unwrap();
            let expected = if step == CleanStep::Written { &old } else { &new };
            assert_eq!(&consume(&log, 0, 1 << 20), expected, "{step:?}, open {reopen}");
            assert_eq!(log.log_end_offset(), end, "{step:?}");
            assert_eq!(staged_files(dir.path()), Vec::<String>::new(), "{step:?}");
            drop(log);
        }
        let log = Log::open(dir.path(), config()).unwrap();
        let rec = Rec {
            timestamp: START_MS,
            key: Some(b"key-0".to_vec()),
            value: Some(b"after".to_vec()),
            headers: Vec::new(),
        };
        assert_eq!(log.append(&build(&[rec], Compression::None), 2).unwrap().first_offset, end);
        log.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
        let after = consume(&log, 0, 1 << 20);
        assert_eq!(after.last().unwrap().2.as_deref(), Some(&b"after"[..]), "{step:?}");
    }
}

/// Files left by hand in the states a crash can leave them: a torn `.cleaned` file and index
/// `.swap` files without a log `.swap` (before the commit point) are removed at open; a
/// committed `.swap` whose covered segments are partly deleted replaces them.
#[test]
fn open_removes_uncommitted_clean_files_and_completes_committed_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    fill(&log, 20, 3, Compression::None);
    let old = consume(&log, 0, 1 << 20);
    let bases = log.segment_base_offsets();
    drop(log);
    let torn = dir.path().join(format!("{}.cleaned", segment_file_name(0, "log")));
    std::fs::write(&torn, b"half a batch").unwrap();
    let stray = dir.path().join(format!("{}.swap", segment_file_name(0, "index")));
    std::fs::write(&stray, [0u8; 8]).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(consume(&log, 0, 1 << 20), old);
    assert_eq!(staged_files(dir.path()), Vec::<String>::new());
    drop(log);

    // A committed swap of the first two segments: the first is already deleted, the second
    // not yet. Built from a real clean of a copy.
    let cleaned = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), cleaned.path());
    let log = Log::open(cleaned.path(), LogConfig { segment_bytes: 1 << 20, ..config() }).unwrap();
    let first_two = CleanOptions { upper_bound: Some(bases[2]), ..CleanOptions::new(START_MS) };
    log.clean(&first_two, &Throttle::unlimited()).unwrap();
    assert_eq!(&log.segment_base_offsets()[1..], &bases[2..], "the first two were merged");
    drop(log);
    std::fs::copy(
        cleaned.path().join(segment_file_name(0, "log")),
        dir.path().join(format!("{}.swap", segment_file_name(0, "log"))),
    )
    .unwrap();
    for suffix in ["log", "index", "timeindex"] {
        std::fs::remove_file(dir.path().join(segment_file_name(0, suffix))).unwrap();
    }
    // The second one is half deleted: its data file is gone, its index files are not.
    std::fs::remove_file(dir.path().join(segment_file_name(bases[1], "log"))).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.segment_base_offsets()[1..], bases[2..]);
    for suffix in ["index", "timeindex"] {
        let orphan = dir.path().join(segment_file_name(bases[1], suffix));
        assert!(!orphan.exists(), "{} of a replaced segment is removed", orphan.display());
    }
    let got = consume(&log, 0, 1 << 20);
    let split = bases[2];
    assert_eq!(
        got.iter().filter(|r| r.0 >= split).collect::<Vec<_>>(),
        old.iter().filter(|r| r.0 >= split).collect::<Vec<_>>()
    );
    assert!(got.iter().filter(|r| r.0 < split).count() <= 3, "the first two segments cleaned");
    assert_eq!(staged_files(dir.path()), Vec::<String>::new());
}

/// A follower copies a compacted leader by fetching from its own log end: batches arrive with
/// gaps (inside batches, between batches, past the follower's end), are accepted with the
/// leader's offsets, and the follower's log end follows the leader's. It survives a crash and
/// a full recovery scan, and truncation inside a gap ends the log at most at the offset asked.
#[test]
fn a_follower_replicates_a_compacted_leader_across_gaps() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = Log::open(leader_dir.path(), config()).unwrap();
    fill(&leader, 30, 3, Compression::Zstd);
    let outcome = leader.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
    assert!(outcome.records_removed > 0, "{outcome:?}");
    let expected = consume(&leader, 0, 1 << 20);

    let follower_dir = tempfile::tempdir().unwrap();
    let follower = Log::open(follower_dir.path(), config()).unwrap();
    // The first record at offset 0 was superseded: the leader's first batch may still start
    // at 0 (kept for the segment's end or a later key), but later fetches jump gaps.
    let mut gaps = 0;
    loop {
        let end = follower.log_end_offset();
        let read = leader.read(end, 200, None).unwrap();
        if read.region.is_empty() {
            break;
        }
        let bytes = read.region.read_to_bytes().unwrap();
        let (first, _) = RecordBatch::parse(&bytes).unwrap();
        if first.base_offset() > end {
            gaps += 1;
        }
        let info = follower.append_replicated(&bytes).unwrap();
        assert_eq!(follower.log_end_offset(), info.last_offset + 1);
    }
    assert!(gaps > 0, "some fetch started past the follower's log end");
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(consume(&follower, 0, 1 << 20), expected);
    drop(follower);
    std::fs::remove_file(follower_dir.path().join(RECOVERY_POINT_FILE)).unwrap();
    let follower = Log::open(follower_dir.path(), config()).unwrap();
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(consume(&follower, 0, 1 << 20), expected);

    // A batch far past the end (more records compacted away) is accepted too.
    let mut batch = build(
        &[Rec {
            timestamp: START_MS,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: Vec::new(),
        }],
        Compression::None,
    )
    .to_vec();
    let far = follower.log_end_offset() + 1000;
    tideline_log::batch::set_offset_and_epoch(&mut batch, far, 1);
    follower.append_replicated(&batch).unwrap();
    assert_eq!(follower.log_end_offset(), far + 1);
    assert_eq!(follower.read(far - 500, 1 << 20, None).unwrap().region.first_offset(), far);

    // Truncating at an offset inside the gap ends the log where the batch before it ended.
    let end = follower.truncate_to(far - 10).unwrap();
    assert!(end <= far - 10, "{end}");
    assert_eq!(end, leader.log_end_offset());
    assert_eq!(follower.log_end_offset(), end);
}

/// The active segment is never cleaned, whatever it holds, and cleaning leaves the log start
/// and end where they were; segments holding a record younger than `min.compaction.lag.ms` or
/// reaching the upper bound (the high watermark) wait.
#[test]
fn the_active_segment_and_young_or_uncommitted_segments_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig { segment_bytes: 1 << 20, ..config() }).unwrap();
    fill(&log, 50, 2, Compression::None);
    assert_eq!(log.segment_base_offsets().len(), 1);
    let before = active_bytes(&log);
    let outcome = log.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
    assert_eq!(outcome.segments_written, 0);
    assert_eq!(active_bytes(&log), before);
    assert_eq!(consume(&log, 0, 1 << 20).len(), 100);

    let dir = tempfile::tempdir().unwrap();
    let lagged = LogConfig { min_compaction_lag_ms: 60_000, ..config() };
    let log = Log::open(dir.path(), lagged).unwrap();
    fill(&log, 30, 2, Compression::None);
    let stats = log.cleanable(&CleanOptions::new(START_MS + 1000));
    assert_eq!((stats.dirty_bytes, stats.dirty_ratio()), (0, 0.0), "younger than the lag");
    let bound = CleanOptions { upper_bound: Some(5), ..CleanOptions::new(START_MS + 120_000) };
    assert_eq!(log.cleanable(&bound).dirty_bytes, 0, "nothing wholly below the bound");
    let old_enough = CleanOptions::new(START_MS + 120_000);
    let stats = log.cleanable(&old_enough);
    assert_eq!(stats.dirty_ratio(), 1.0);
    let outcome = log.clean(&old_enough, &Throttle::unlimited()).unwrap();
    assert!(outcome.segments_written > 0);
    assert_eq!(log.cleanable(&old_enough).dirty_bytes, 0);
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(log.log_end_offset(), 60);
}

/// A compacted log refuses a producer batch with a keyless record (nothing written), as Kafka
/// does; a delete log takes it. A producer batch must still have contiguous offset deltas,
/// while the same batch with gaps is valid as a stored (cleaned) batch.
#[test]
fn producer_batches_need_keys_when_compacted_and_contiguous_deltas_always() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let keyed = Rec {
        timestamp: START_MS,
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: Vec::new(),
    };
    let keyless = build(&[keyed.clone(), Rec::value(START_MS, b"no key")], Compression::Lz4);
    match log.append(&keyless, 1) {
        Err(LogError::InvalidBatch { index: 0, source: BatchError::MissingKey { index: 1 } }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(log.log_end_offset(), 0, "nothing written");
    let delete = Log::open(dir.path().join("other"), LogConfig::default()).unwrap();
    delete.append(&keyless, 1).unwrap();

    // A cleaned batch: offsets 0..=2 with the middle record removed.
    let mut recs = Vec::new();
    for v in [b"a", b"b", b"c"] {
        recs.push(Rec { value: Some(v.to_vec()), ..keyed.clone() });
    }
    recs[2].key = Some(b"other".to_vec());
    let log = Log::open(dir.path().join("gapped"), config()).unwrap();
    log.append(&build(&recs, Compression::None), 1).unwrap();
    log.append(&build(&recs, Compression::None), 1).unwrap();
    // Roll so the first two batches are closed, then clean.
    log.set_config(LogConfig { segment_bytes: 100, ..config() }).unwrap();
    log.append(&build(&recs, Compression::None), 1).unwrap();
    log.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
    let read = log.read(0, 1, None).unwrap();
    let bytes = read.region.read_to_bytes().unwrap();
    let batch = RecordBatch::parse_exact(&bytes).unwrap();
    batch.validate(usize::MAX, Validation::Records).unwrap();
    let err = batch.validate(usize::MAX, Validation::Full).unwrap_err();
    assert!(
        matches!(
            err,
            BatchError::InvalidRecordCount { .. } | BatchError::OffsetDeltaMismatch { .. }
        ),
        "{err}"
    );
    assert!(matches!(log.append(&bytes, 1), Err(LogError::InvalidBatch { .. })));
}

/// `cleanup.policy=compact` alone never deletes segments by retention; `compact,delete` does.
#[test]
fn retention_only_deletes_with_the_delete_policy() {
    let clock = Arc::new(ManualClock::new(START_MS));
    for (policy, deletes) in
        [(CleanupPolicy::COMPACT, false), (CleanupPolicy::COMPACT_DELETE, true)]
    {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_ms: Some(1000),
            retention_bytes: Some(0),
            cleanup_policy: policy,
            ..config()
        };
        let log = Log::open_with_clock(dir.path(), config, clock.clone()).unwrap();
        fill(&log, 20, 2, Compression::None);
        clock.advance(10_000);
        let outcome = log.apply_retention().unwrap();
        assert_eq!(!outcome.deleted_segments.is_empty(), deletes, "{policy:?}");
    }
}

/// Cleaning runs without the log's locks: appends and reads go on while a slow (throttled)
/// clean reads; when the segments it read change meanwhile (here a truncation) it abandons
/// its work and leaves nothing behind; a cancelled clean stops; a log deleted under a clean
/// makes it fail as closed.
#[test]
fn a_slow_clean_blocks_nobody_and_gives_up_on_changed_deleted_or_cancelled_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), config()).unwrap());
    fill(&log, 60, 4, Compression::None);
    let throttle = Arc::new(Throttle::new(20_000));
    let cleaning = {
        let (log, throttle) = (Arc::clone(&log), Arc::clone(&throttle));
        std::thread::spawn(move || log.clean(&CleanOptions::new(START_MS), &throttle))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    fill(&log, 1, 4, Compression::None);
    assert!(!consume(&log, 0, 1 << 20).is_empty());
    assert!(started.elapsed() < Duration::from_millis(500), "appends and reads do not wait");
    log.truncate_to(10).unwrap();
    let outcome = cleaning.join().unwrap().unwrap();
    assert!(outcome.abandoned.as_ref().is_some_and(|why| why.contains("changed")), "{outcome:?}");
    assert_eq!(staged_files(dir.path()), Vec::<String>::new());
    assert_eq!(log.log_end_offset(), 8, "the batch holding offset 10 went whole");

    fill(&log, 60, 4, Compression::None);
    let cancelled = {
        let (log, throttle) = (Arc::clone(&log), Arc::clone(&throttle));
        std::thread::spawn(move || log.clean(&CleanOptions::new(START_MS), &throttle))
    };
    std::thread::sleep(Duration::from_millis(100));
    throttle.cancel();
    let outcome = cancelled.join().unwrap().unwrap();
    assert_eq!(outcome.abandoned.as_deref(), Some("cancelled"));
    assert_eq!(staged_files(dir.path()), Vec::<String>::new());

    let slow = Arc::new(Throttle::new(20_000));
    let deleted = {
        let (log, throttle) = (Arc::clone(&log), Arc::clone(&slow));
        std::thread::spawn(move || log.clean(&CleanOptions::new(START_MS), &throttle))
    };
    std::thread::sleep(Duration::from_millis(100));
    log.delete().unwrap();
    let result = deleted.join().unwrap();
    assert!(matches!(result, Err(LogError::Closed(_))), "{result:?}");
    assert!(!dir.path().exists());
}

/// The last batch of each idempotent producer stays (emptied when all its records were
/// superseded) with its producer id, epoch and sequences, so a broker rebuilding producer state
/// from the log still knows the producer's last sequence; its earlier emptied batches go.
#[test]
fn the_last_batch_of_each_producer_stays_for_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    for seq in 0..3 {
        let mut b =
            tideline_log::RecordBatchBuilder::new(Compression::None).producer(7, 2, seq * 2);
        b.append(START_MS, Some(b"shared"), Some(b"from 7"), &[]);
        b.append(START_MS, Some(b"shared"), Some(b"from 7 again"), &[]);
        log.append(&b.build(), 1).unwrap();
    }
    // Another writer supersedes everything producer 7 wrote, then the segment rolls.
    fill(&log, 20, 1, Compression::None);
    let recs = [Rec {
        timestamp: START_MS,
        key: Some(b"shared".to_vec()),
        value: Some(b"latest".to_vec()),
        headers: Vec::new(),
    }];
    for _ in 0..6 {
        log.append(&build(&recs, Compression::None), 1).unwrap();
    }
    let outcome = log.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
    assert!(outcome.records_removed >= 6, "{outcome:?}");
    let mut from_7 = Vec::new();
    let mut position = 0;
    while position < log.log_end_offset() {
        let read = log.read(position, 1 << 20, None).unwrap();
        let bytes = read.region.read_to_bytes().unwrap();
        for batch in batches(&bytes) {
            let batch = batch.unwrap();
            if batch.producer_id() == 7 {
                from_7.push((batch.base_offset(), batch.base_sequence(), batch.records_count()));
            }
        }
        position = read.region.next_offset();
    }
    assert_eq!(from_7, vec![(4, 4, 0)], "only the producer's last batch, emptied");
}

/// The cleaner checkpoint survives a clean close and a crash: a reopened log does not clean
/// again what it already cleaned, and truncation below it makes the records written after the
/// truncation dirty again.
#[test]
fn the_cleaner_checkpoint_survives_reopening_and_follows_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    fill(&log, 30, 3, Compression::None);
    let first = log.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
    assert!(first.cleaned_to > 0);
    log.close().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.cleanable(&CleanOptions::new(START_MS)).first_dirty_offset, first.cleaned_to);
    drop(log);
    let log = Log::open(dir.path(), config()).unwrap();
    let stats = log.cleanable(&CleanOptions::new(START_MS));
    assert_eq!((stats.first_dirty_offset, stats.dirty_bytes), (first.cleaned_to, 0));
    let end = log.truncate_to(first.cleaned_to / 2).unwrap();
    assert!(log.cleanable(&CleanOptions::new(START_MS)).first_dirty_offset <= end);
    fill(&log, 30, 3, Compression::None);
    let second = log.clean(&CleanOptions::new(START_MS), &Throttle::unlimited()).unwrap();
    assert!(second.records_removed > 0);
    let got = consume(&log, 0, 1 << 20);
    let keys: std::collections::HashSet<_> =
        got.iter().filter(|r| r.0 < second.cleaned_to).map(|r| r.1.clone()).collect();
    assert_eq!(
        keys.len(),
        got.iter().filter(|r| r.0 < second.cleaned_to).count(),
        "each key at most once below the checkpoint"
    );
}
