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
