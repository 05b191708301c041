//! Regression tests, each named after the bug it pins down.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use common::{Rec, build};
use tideline_log::{BatchError, Compression, Log, LogConfig, LogError, segment_file_name};

fn two_records() -> Vec<u8> {
    build(&[Rec::value(1_000, b"a"), Rec::value(1_300, b"b")], Compression::None).to_vec()
}

fn set_i64(buf: &mut [u8], pos: usize, v: i64) {
    buf[pos..pos + 8].copy_from_slice(&v.to_be_bytes());
}

fn fix_crc(buf: &mut [u8]) {
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Bug: a producer batch whose (ignored) baseOffset was near i64::MAX made validation panic
/// with an add overflow. The log assigns its own offsets, so the append succeeds.
#[test]
fn producer_base_offset_near_i64_max_panicked_in_validation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut batch = two_records();
    set_i64(&mut batch, 0, i64::MAX); // baseOffset lies outside the CRC
    let info = log.append(&batch, 0).unwrap();
    assert_eq!((info.first_offset, info.last_offset), (0, 1));
}

/// Bug: a producer batch with timestamps near i64::MAX made validation panic with an add
/// overflow. It is now answered (accepted or refused), never a panic.
#[test]
fn producer_timestamp_near_i64_max_panicked_in_validation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut batch = two_records();
    set_i64(&mut batch, 27, i64::MAX - 100); // baseTimestamp
    set_i64(&mut batch, 35, i64::MAX - 100); // maxTimestamp
    fix_crc(&mut batch);
    match log.append(&batch, 0) {
        Ok(_) | Err(LogError::InvalidBatch { .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// Bug: recovery panicked on a batch whose baseOffset (outside the CRC) was garbage near
/// i64::MAX instead of cutting the log there.
#[test]
fn recovery_panicked_on_garbage_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&two_records(), 0).unwrap();
    let second = log.append(&two_records(), 0).unwrap();
    let position = log.read(second.first_offset, 1, None).unwrap().region.position();
    drop(log); // unclean
    let file =
        OpenOptions::new().write(true).open(dir.path().join(segment_file_name(0, "log"))).unwrap();
    file.write_all_at(&i64::MAX.to_be_bytes(), position).unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end_offset(), 2, "cut before the damaged batch");
}

/// Bug: a replicated batch whose baseOffset + lastOffsetDelta overflowed panicked; it is
/// refused as invalid.
#[test]
fn replicated_batch_with_overflowing_offsets_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut batch = two_records();
    set_i64(&mut batch, 0, i64::MAX);
    match log.append_replicated(&batch) {
        Err(LogError::InvalidBatch { index: 0, source: BatchError::OffsetOverflow { .. } }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(log.log_end_offset(), 0);
}

/// Bug (found by the malformed-input property test): a header key that is not UTF-8 passed
/// full validation, although Kafka's format defines header keys as strings.
#[test]
fn non_utf8_header_key_passed_full_validation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let rec = Rec {
        timestamp: 1,
        key: None,
        value: Some(b"v".to_vec()),
        headers: vec![("Q".into(), None)],
    };
    let mut batch = build(&[rec], Compression::None).to_vec();
    let at = batch.iter().rposition(|&b| b == b'Q').unwrap();
    batch[at] = 0x80;
    fix_crc(&mut batch);
    match log.append(&batch, 0) {
        Err(LogError::InvalidBatch {
            source: BatchError::MalformedRecord { reason, .. }, ..
        }) => {
            assert!(reason.contains("UTF-8"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.log_end_offset(), 0);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn small_segments() -> LogConfig {
    LogConfig { segment_bytes: 1024, index_interval_bytes: 128, ..LogConfig::default() }
}

fn fill(log: &Log, batches: usize) {
    for i in 0..batches {
        let recs: Vec<Rec> = (0..4)
            .map(|j| Rec::value(i as i64, format!("{i}-{j}-{}", "p".repeat(40)).as_bytes()))
            .collect();
        log.append(&build(&recs, Compression::None), 0).unwrap();
    }
}

/// Bug (review): a crash during `truncate_to` after the holder segment was cut but before the
/// later segments were deleted brought those segments back at the next open, leaving a hole
/// and the deposed leader's records. Recovery now drops a segment that does not continue the
/// log (and truncation deletes later segments first).
#[test]
fn truncation_interrupted_before_deleting_later_segments_resurrected_them() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&log, 30);
    let bases = log.segment_base_offsets();
    assert!(bases.len() >= 4, "{bases:?}");
    drop(log);
    copy_dir(dir.path(), saved.path());
    let log = Log::open(dir.path(), small_segments()).unwrap();
    let end = log.truncate_to(bases[1] + 2).unwrap();
    drop(log);
    // Put the later segments back, as a crash between cut and delete would have left them.
    for base in &bases[2..] {
        for suffix in ["log", "index", "timeindex"] {
            let name = segment_file_name(*base, suffix);
            if saved.path().join(&name).exists() {
                std::fs::copy(saved.path().join(&name), dir.path().join(&name)).unwrap();
            }
        }
    }
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.log_end_offset(), end, "segments after the cut must not come back");
    assert_eq!(log.segment_base_offsets(), bases[..2].to_vec());
}

/// Bug (review): a replicated batch more than u32::MAX offsets past an empty active segment was
/// written into it, breaking 32-bit relative offsets: reads skipped records and the next open
/// truncated acknowledged data.
#[test]
fn replicated_batch_far_past_an_empty_segment_broke_relative_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let far = 5_000_000_000i64;
    let mut first = two_records();
    tideline_log::batch::set_offset_and_epoch(&mut first, far, 1);
    let mut second = two_records();
    tideline_log::batch::set_offset_and_epoch(&mut second, far + 2, 1);
    // A later batch with a gap larger than u32::MAX inside one append.
    let mut third = two_records();
    tideline_log::batch::set_offset_and_epoch(&mut third, 2 * far, 1);
    let mut append = first.clone();
    append.extend_from_slice(&second);
    append.extend_from_slice(&third);
    log.append_replicated(&append).unwrap();
    let check = |log: &Log| {
        assert_eq!(log.log_end_offset(), 2 * far + 2);
        for (offset, expected_first) in [(far, far), (far + 3, far + 2), (2 * far + 1, 2 * far)] {
            let region = log.read(offset, 1, None).unwrap().region;
            assert_eq!(region.first_offset(), expected_first, "read at {offset}");
        }
    };
    check(&log);
    drop(log); // unclean
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    check(&log);
    log.close().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    check(&log);
}

/// Bug (review): retention deleting a just-rolled segment made its background sync fail on
/// the missing index files, which broke the sync chain and made flush and close fail.
#[test]
fn retention_racing_a_background_sync_failed_later_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_bytes: Some(0), ..small_segments() };
    let log = Log::open(dir.path(), config).unwrap();
    for _ in 0..20 {
        fill(&log, 1);
        log.apply_retention().unwrap();
    }
    log.flush().unwrap();
    log.close().unwrap();
}

/// Bug (review): a read with max_bytes near usize::MAX (a negative fetch size cast) overflowed.
#[test]
fn huge_max_bytes_overflowed_the_read_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&log, 3);
    let region = log.read(0, usize::MAX, None).unwrap().region;
    assert_eq!(region.first_offset(), 0);
    assert!(!region.is_empty());
}

/// Bug (review): negative start offsets were accepted by truncation and made every later batch
/// unreadable after a reopen.
#[test]
fn negative_offsets_were_accepted_by_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&log, 3);
    assert!(matches!(log.truncate_fully_and_start_at(-1), Err(LogError::OffsetOutOfRange { .. })));
    assert!(matches!(log.truncate_to(-5), Err(LogError::OffsetOutOfRange { .. })));
    assert!(matches!(
        log.truncate_fully_and_start_at(i64::MAX - 3),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.log_end_offset(), 12);
}

/// Bug (review): closed segments checked by an unclean open were neither synced nor given
/// fresh index files before the recovery point moved past them.
#[test]
fn segments_scanned_at_recovery_were_not_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    fill(&log, 30);
    let bases = log.segment_base_offsets();
    drop(log); // unclean
    std::fs::write(dir.path().join(tideline_log::RECOVERY_POINT_FILE), "0").unwrap();
    let index = dir.path().join(segment_file_name(bases[1], "index"));
    std::fs::remove_file(&index).unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert!(index.exists(), "the rescanned segment's index is written back at open");
    assert_eq!(log.segment_base_offsets(), bases);
}
