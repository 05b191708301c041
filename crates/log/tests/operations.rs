//! Rolling, retention, truncation, follower appends, epoch fencing, flush policies and
//! configuration errors of the partition log.

mod common;

use std::fs;
use std::sync::Arc;

use common::{Rec, build, read_all};
use tideline_log::{
    Compression, FlushPolicy, Log, LogConfig, LogError, ManualClock, segment_file_name,
};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        segment_ms: None,
        index_interval_bytes: 256,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn recs(n: usize, ts: i64) -> Vec<Rec> {
    (0..n).map(|i| Rec::value(ts, format!("record {i:04} {}", "v".repeat(60)).as_bytes())).collect()
}

/// Segments roll on size, are named by their base offset padded to 20 digits, and each has
/// its index files once closed.
#[test]
fn segments_roll_on_size_and_are_named_by_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    for _ in 0..20 {
        log.append(&build(&recs(5, 1), Compression::None), 0).unwrap();
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() >= 5, "{bases:?}");
    assert_eq!(bases[0], 0);
    for (i, base) in bases.iter().enumerate() {
        let name = segment_file_name(*base, "log");
        assert_eq!(name.len(), 24);
        let size = fs::metadata(dir.path().join(&name)).unwrap().len();
        assert!(size <= 2048, "{name} is {size} bytes");
        if i + 1 < bases.len() {
            assert!(dir.path().join(segment_file_name(*base, "index")).exists());
            assert!(dir.path().join(segment_file_name(*base, "timeindex")).exists());
        }
    }
    assert_eq!(segment_file_name(1234, "log"), "00000000000000001234.log");
}

/// A batch larger than segment.bytes still goes in (alone in a fresh segment).
#[test]
fn an_oversized_batch_gets_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.append(&build(&recs(1, 1), Compression::None), 0).unwrap();
    let big = log.append(&build(&recs(60, 1), Compression::None), 0).unwrap();
    log.append(&build(&recs(1, 1), Compression::None), 0).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, big.first_offset, big.last_offset + 1]);
    assert_eq!(read_all(&log, 100).unwrap().len(), 62);
}

/// segment.ms rolls a segment whose first batch is older than the limit, measured by the log's
/// clock.
#[test]
fn segments_roll_on_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(10_000));
    let config = LogConfig { segment_bytes: 1 << 20, segment_ms: Some(1000), ..config() };
    let log = Log::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    log.append(&build(&recs(1, 1), Compression::None), 0).unwrap();
    clock.advance(999);
    log.append(&build(&recs(1, 1), Compression::None), 0).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0]);
    clock.advance(1);
    log.append(&build(&recs(1, 1), Compression::None), 0).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, 2]);
}

/// retention.ms deletes closed segments whose newest record is older than the limit, moves the
/// log start offset, makes old offsets out of range, and never deletes the active segment.
#[test]
fn time_retention_deletes_old_closed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(5_000));
    let config = LogConfig { retention_ms: Some(10_000), ..config() };
    let log = Log::open_with_clock(dir.path(), config, clock.clone()).unwrap();
    for i in 0..30 {
        log.append(&build(&recs(5, 1_000 + i), Compression::None), 0).unwrap();
    }
    let segments = log.segment_base_offsets().len();
    assert_eq!(log.apply_retention().unwrap().deleted_segments, Vec::<i64>::new(), "all young");
    clock.set(1_000 + 20 + 10_001); // records with timestamp < 1020 have expired
    let outcome = log.apply_retention().unwrap();
    assert!(!outcome.deleted_segments.is_empty());
    assert_eq!(outcome.log_start_offset, log.log_start_offset());
    assert!(matches!(log.read(0, 100, None), Err(LogError::OffsetOutOfRange { requested: 0, .. })));
    let remaining = read_all(&log, 1 << 20).unwrap();
    let young = remaining.iter().filter(|r| r.2.timestamp >= 1_021).count();
    assert_eq!(young, 9 * 5, "every record young enough is kept");
    assert!(remaining.len() < 150, "old records were deleted");
    assert_eq!(remaining.first().unwrap().0, log.log_start_offset());
    for base in &outcome.deleted_segments {
        assert!(!dir.path().join(segment_file_name(*base, "log")).exists());
    }
    // Everything expired: only the active segment is left.
    clock.set(1_000_000_000);
    log.apply_retention().unwrap();
    assert_eq!(log.segment_base_offsets().len(), 1);
    assert!(segments > 1);
    assert!(log.log_start_offset() < log.log_end_offset(), "active segment kept with its data");
}

/// A region read before retention deletes its segment stays readable (the file stays open).
#[test]
fn regions_survive_deletion_of_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig { retention_bytes: Some(0), ..config() }).unwrap();
    for _ in 0..10 {
        log.append(&build(&recs(5, 1), Compression::None), 0).unwrap();
    }
    let read = log.read(0, 1 << 20, None).unwrap();
    log.apply_retention().unwrap();
    assert!(log.log_start_offset() > 0);
    let bytes = read.region.read_to_bytes().unwrap();
    assert_eq!(common::decode_all(&bytes)[0].0, 0);
}

/// Truncation below the log start empties the log and restarts it at that offset;
/// truncate_fully_and_start_at does so explicitly.
#[test]
fn truncating_fully_restarts_the_log_at_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    for _ in 0..5 {
        log.append(&build(&recs(5, 1), Compression::None), 3).unwrap();
    }
    log.truncate_fully_and_start_at(1000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1000));
    assert_eq!(log.epoch_entries(), vec![]);
    assert_eq!(log.append(&build(&recs(2, 1), Compression::None), 4).unwrap().first_offset, 1000);
    log.close().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (1000, 1002));
    assert_eq!(log.segment_base_offsets(), vec![1000]);
}

/// A deposed leader (an older epoch) cannot append; a replica follows the leader's epochs and
/// answers "end offset of epoch E" as Kafka does.
#[test]
fn epochs_fence_old_leaders_and_locate_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.append(&build(&recs(3, 1), Compression::None), 1).unwrap(); // 0..3 in epoch 1
    log.append(&build(&recs(2, 1), Compression::None), 4).unwrap(); // 3..5 in epoch 4
    let stale = log.append(&build(&recs(1, 1), Compression::None), 3);
    assert!(matches!(stale, Err(LogError::EpochRegression { latest: 4, got: 3 })), "{stale:?}");
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 3)));
    assert_eq!(log.end_offset_for_epoch(2), Some((1, 3)));
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 5)));
    assert_eq!(log.end_offset_for_epoch(5), None);

    // A follower copies the leader's batches byte for byte.
    let follower_dir = tempfile::tempdir().unwrap();
    let follower = Log::open(follower_dir.path(), config()).unwrap();
    let bytes = log.read(0, 1 << 20, None).unwrap().region.read_to_bytes().unwrap();
    follower.append_replicated(&bytes).unwrap();
    assert_eq!(follower.epoch_entries(), log.epoch_entries());
    let copied = follower.read(0, 1 << 20, None).unwrap().region.read_to_bytes().unwrap();
    assert_eq!(copied, bytes, "replicated bytes are stored unchanged");
    // Divergence repair: truncate to the end offset of the follower's epoch on the leader.
    assert_eq!(follower.truncate_to(3).unwrap(), 3);
    assert_eq!(follower.latest_epoch(), Some(1));
}

/// Follower appends refuse gaps backwards, corrupt batches and older epochs, writing nothing.
#[test]
fn replicated_appends_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let mut batch = build(&recs(2, 1), Compression::None).to_vec();
    tideline_log::batch::set_offset_and_epoch(&mut batch, 0, 2);
    log.append_replicated(&batch).unwrap();
    assert!(matches!(
        log.append_replicated(&batch),
        Err(LogError::NonContiguousAppend { expected: 2, got: 0 })
    ));
    tideline_log::batch::set_offset_and_epoch(&mut batch, 2, 1);
    assert!(matches!(
        log.append_replicated(&batch),
        Err(LogError::EpochRegression { latest: 2, got: 1 })
    ));
    tideline_log::batch::set_offset_and_epoch(&mut batch, 2, 2);
    let last = batch.len() - 1;
    batch[last] ^= 1;
    assert!(matches!(log.append_replicated(&batch), Err(LogError::InvalidBatch { index: 0, .. })));
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.size_bytes() as usize, batch.len());
}

/// Polls `done` for up to 10 s (background syncs land asynchronously).
fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "condition not reached in 10 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The flush policies decide when appended data is synced, reported by flushed_offset: every
/// append synchronously, an interval in the background without stalling appends, the page
/// cache only on demand (and at roll and close).
#[test]
fn flush_policies_move_the_flushed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let every = Log::open_with_clock(
        dir.path().join("every"),
        LogConfig { flush: FlushPolicy::EveryAppend, ..config() },
        clock.clone(),
    )
    .unwrap();
    every.append(&build(&recs(2, 1), Compression::None), 0).unwrap();
    assert_eq!(every.flushed_offset(), 2);

    let interval = Log::open_with_clock(
        dir.path().join("interval"),
        LogConfig { flush: FlushPolicy::IntervalMs(1000), ..config() },
        clock.clone(),
    )
    .unwrap();
    interval.append(&build(&recs(2, 1), Compression::None), 0).unwrap();
    assert_eq!(interval.flushed_offset(), 0);
    assert!(!interval.flush_if_due().unwrap());
    clock.advance(1000);
    assert!(interval.flush_if_due().unwrap(), "a timer starts the due sync");
    wait_until(|| interval.flushed_offset() == 2);
    interval.append(&build(&recs(1, 1), Compression::None), 0).unwrap();
    clock.advance(1000);
    interval.append(&build(&recs(1, 1), Compression::None), 0).unwrap();
    wait_until(|| interval.flushed_offset() == 4); // an append past the interval starts one too
    assert!(!interval.flush_if_due().unwrap(), "not due again yet");

    let cache = Log::open_with_clock(dir.path().join("cache"), config(), clock).unwrap();
    cache.append(&build(&recs(2, 1), Compression::None), 0).unwrap();
    assert_eq!(cache.flushed_offset(), 0);
    cache.flush().unwrap();
    assert_eq!(cache.flushed_offset(), 2);
}

/// Bad configuration is refused at open and on change, naming the setting.
#[test]
fn bad_config_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bad = LogConfig { segment_bytes: 1, ..config() };
    let err = Log::open(dir.path(), bad).unwrap_err();
    assert!(matches!(&err, LogError::Config(m) if m.contains("segment.bytes")), "{err}");
    let log = Log::open(dir.path(), config()).unwrap();
    assert!(log.set_config(LogConfig { max_batch_bytes: 0, ..config() }).is_err());
    assert_eq!(log.config(), config());
}

/// Reads outside [log start, log end] are OFFSET_OUT_OF_RANGE with the valid range; a read at
/// the log end is empty; an upper bound (the high watermark) hides batches at or above it.
#[test]
fn read_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    log.append(&build(&recs(3, 1), Compression::None), 0).unwrap();
    log.append(&build(&recs(3, 1), Compression::None), 0).unwrap();
    match log.read(7, 100, None) {
        Err(LogError::OffsetOutOfRange { requested: 7, log_start: 0, log_end: 6 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(log.read(6, 100, None).unwrap().region.is_empty());
    let below_hw = log.read(0, 1 << 20, Some(3)).unwrap().region;
    assert_eq!((below_hw.first_offset(), below_hw.next_offset()), (0, 3));
    assert!(log.read(3, 1 << 20, Some(3)).unwrap().region.is_empty());
    // A read from the middle of a batch starts at the batch's base offset.
    let mid = log.read(4, 1, None).unwrap().region;
    assert_eq!((mid.first_offset(), mid.next_offset()), (3, 6));
}

/// Deleting a log removes its directory; a closed log refuses writes.
#[test]
fn delete_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-0");
    let log = Log::open(&path, config()).unwrap();
    log.append(&build(&recs(3, 1), Compression::None), 0).unwrap();
    log.delete().unwrap();
    assert!(!path.exists());
    let log = Log::open(&path, config()).unwrap();
    log.close().unwrap();
    assert!(matches!(log.flush(), Err(LogError::Closed(_))));
    assert!(matches!(log.truncate_to(0), Err(LogError::Closed(_))));
}

/// Group commit: several producers' requests go in one write; an invalid one is refused
/// alone, the others get consecutive offsets in order and read back as if appended one by
/// one; a stale leader epoch refuses the whole group and writes nothing.
#[test]
fn append_many_writes_the_valid_requests_together_and_refuses_the_bad_one_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig { segment_bytes: 1 << 20, ..config() }).unwrap();
    let a = build(&recs(3, 10), Compression::None);
    let mut bad = build(&recs(2, 20), Compression::None).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff; // breaks the CRC
    let c =
        [build(&recs(2, 30), Compression::Lz4), build(&recs(1, 31), Compression::None)].concat();
    let results = log.append_many(&[&a, &bad, &c], 4).unwrap();
    assert_eq!(results.len(), 3);
    let first = results[0].as_ref().unwrap();
    assert_eq!((first.first_offset, first.last_offset, first.batch_count), (0, 2, 1));
    assert!(matches!(results[1], Err(LogError::InvalidBatch { index: 0, .. })), "{:?}", results[1]);
    let third = results[2].as_ref().unwrap();
    assert_eq!((third.first_offset, third.last_offset, third.batch_count), (3, 5, 2));
    assert_eq!(third.max_timestamp, 31);
    assert_eq!(first.bytes + third.bytes, log.size_bytes());
    assert_eq!(log.log_end_offset(), 6);
    let read = read_all(&log, 1 << 20).unwrap();
    let offsets: Vec<i64> = read.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(offsets, (0..6).collect::<Vec<_>>());
    assert!(read.iter().all(|(_, epoch, _)| *epoch == 4));
    let timestamps: Vec<i64> = read.iter().map(|(_, _, r)| r.timestamp).collect();
    assert_eq!(timestamps, [10, 10, 10, 30, 30, 31]);

    // All invalid: nothing written, each answered.
    let results = log.append_many(&[&bad, &bad], 4).unwrap();
    assert!(results.iter().all(|r| matches!(r, Err(LogError::InvalidBatch { .. }))));
    // A deposed leader's group is refused as a whole.
    assert!(matches!(log.append_many(&[&a, &c], 3), Err(LogError::EpochRegression { .. })));
    assert_eq!(log.log_end_offset(), 6);
}

/// Retention bounded by the high watermark deletes only segments wholly below it: records
/// not yet committed stay, however far past `retention.bytes` the log is.
#[test]
fn retention_below_a_limit_keeps_segments_that_reach_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig { retention_bytes: Some(0), ..config() }).unwrap();
    for _ in 0..10 {
        log.append(&build(&recs(5, 1), Compression::None), 0).unwrap();
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() >= 3, "{bases:?}");
    // Nothing below the first segment's end is committed: nothing goes.
    let o = log.apply_retention_below(bases[1] - 1).unwrap();
    assert!(o.deleted_segments.is_empty(), "{o:?}");
    assert_eq!(log.log_start_offset(), 0);
    // Committed up to the third segment's start: the first two go, no more.
    let o = log.apply_retention_below(bases[2]).unwrap();
    assert_eq!(o.deleted_segments, bases[..2].to_vec());
    assert_eq!(log.log_start_offset(), bases[2]);
    // Everything committed: all closed segments go.
    log.apply_retention_below(log.log_end_offset()).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![*bases.last().unwrap()]);
}
