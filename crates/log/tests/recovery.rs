//! Crash recovery of the partition log: torn and corrupted tails are cut back to exactly the
//! valid prefix, indexes are rebuilt when missing or damaged, and a clean shutdown skips the
//! scan.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{Rec, build, read_all};
use tideline_log::{
    CLEAN_SHUTDOWN_FILE, Compression, FlushPolicy, Log, LogConfig, segment_file_name,
};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        segment_ms: None,
        index_interval_bytes: 256,
        retention_ms: None,
        flush: FlushPolicy::PageCache,
        ..LogConfig::default()
    }
}

fn batch(i: i64) -> Vec<Rec> {
    (0..3)
        .map(|j| Rec {
            timestamp: 1_000 + i * 10 + j,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(
                format!("value {i}/{j} {}", "x".repeat((i % 7) as usize * 20)).into_bytes(),
            ),
            headers: vec![("h".into(), Some(vec![i as u8]))],
        })
        .collect()
}

/// Writes `n` batches and drops the log without closing it (a crash). Returns the expected
/// records and the byte position of the last batch inside the active segment.
fn write_unclean(dir: &Path, n: i64) -> (Vec<(i64, i32, Rec)>, PathBuf, u64, u64) {
    let log = Log::open(dir, config()).unwrap();
    let mut last = None;
    for i in 0..n {
        let codec = if i % 3 == 0 { Compression::Lz4 } else { Compression::None };
        last = Some(log.append(&build(&batch(i), codec), 1).unwrap());
    }
    let last = last.unwrap();
    let read = log.read(last.first_offset, 1 << 20, None).unwrap();
    let records = read_all(&log, 1 << 20).unwrap();
    let active = dir.join(segment_file_name(*log.segment_base_offsets().last().unwrap(), "log"));
    let (pos, len) = (read.region.position(), read.region.len());
    drop(log);
    (records, active, pos, len)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Reopens a damaged copy and checks it holds exactly `expected` and appends continue at the
/// right offset.
fn assert_recovers_to(dir: &Path, expected: &[(i64, i32, Rec)]) {
    let log = Log::open(dir, config()).unwrap();
    assert_eq!(read_all(&log, 1 << 20).unwrap(), expected);
    let next = expected.last().map_or(0, |r| r.0 + 1);
    assert_eq!(log.log_end_offset(), next);
    let info = log.append(&build(&[Rec::value(5, b"after")], Compression::None), 2).unwrap();
    assert_eq!(info.first_offset, next);
    // The new batch is readable and the log reopens cleanly with it.
    log.close().unwrap();
    let log = Log::open(dir, config()).unwrap();
    let all = read_all(&log, 1 << 20).unwrap();
    assert_eq!(&all[..expected.len()], expected);
    assert_eq!(all.last().unwrap().2, Rec::value(5, b"after"));
}

/// Cutting the active segment at every byte inside its last batch recovers exactly the batches
/// before it.
#[test]
fn cut_at_every_byte_of_the_last_batch_recovers_the_valid_prefix() {
    let src = tempfile::tempdir().unwrap();
    let (records, active, pos, len) = write_unclean(src.path(), 12);
    let last_base = records.iter().rev().nth(2).unwrap().0;
    let prefix: Vec<_> = records.iter().filter(|r| r.0 < last_base).cloned().collect();
    let name = active.file_name().unwrap().to_owned();
    for cut in pos..pos + len {
        let dst = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dst.path());
        OpenOptions::new().write(true).open(dst.path().join(&name)).unwrap().set_len(cut).unwrap();
        assert_recovers_to(dst.path(), &prefix);
    }
}

/// Flipping any byte the CRC or framing covers inside the last batch (length, magic, CRC,
/// attributes .. end) recovers exactly the batches before it. The baseOffset and
/// partitionLeaderEpoch fields lie outside Kafka's CRC by design (the broker rewrites them), so a
/// flip there is not detectable by the checksum and is not part of this property.
#[test]
fn flipping_any_checked_byte_of_the_last_batch_recovers_the_valid_prefix() {
    let src = tempfile::tempdir().unwrap();
    let (records, active, pos, len) = write_unclean(src.path(), 9);
    let last_base = records.iter().rev().nth(2).unwrap().0;
    let prefix: Vec<_> = records.iter().filter(|r| r.0 < last_base).cloned().collect();
    let name = active.file_name().unwrap().to_owned();
    for at in (pos + 8..pos + 12).chain(pos + 16..pos + len) {
        let dst = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dst.path());
        let file = OpenOptions::new().read(true).write(true).open(dst.path().join(&name)).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        assert_recovers_to(dst.path(), &prefix);
    }
}

/// Garbage appended after the last batch (a write that was cut before its length was whole) is
/// removed, and nothing acknowledged is lost.
#[test]
fn trailing_garbage_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (records, active, pos, len) = write_unclean(dir.path(), 5);
    let file = OpenOptions::new().write(true).open(&active).unwrap();
    file.write_all_at(&[0xAB; 37], pos + len).unwrap();
    drop(file);
    assert_recovers_to(dir.path(), &records);
}

/// After a clean close the marker makes open trust the files: damage inside an already
/// written batch is not scanned for (and is found by a scan after an unclean stop).
#[test]
fn clean_shutdown_skips_the_scan_and_unclean_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    for i in 0..3 {
        log.append(&build(&batch(i), Compression::None), 0).unwrap();
    }
    let second = log.read(3, 1, None).unwrap().region;
    let active = dir.path().join(segment_file_name(0, "log"));
    log.close().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_FILE).exists());
    // Damage a record byte of batch 2 of 3: a CRC scan would cut the log at offset 3.
    let file = OpenOptions::new().read(true).write(true).open(&active).unwrap();
    file.write_all_at(&[0xFF], second.position() + 70).unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert!(!dir.path().join(CLEAN_SHUTDOWN_FILE).exists(), "marker consumed at open");
    assert_eq!(log.log_end_offset(), 9, "clean open trusts the segment");
    drop(log); // crash: no marker now

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_end_offset(), 3, "unclean open scans and cuts at the bad batch");
}

/// A missing or corrupt index file of a closed segment is rebuilt from the segment, and reads
/// by offset and by timestamp answer as before.
#[test]
fn missing_or_corrupt_indexes_are_rebuilt() {
    for damage in ["delete", "garbage", "truncate-entry"] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        for i in 0..40 {
            log.append(&build(&batch(i), Compression::None), 0).unwrap();
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() > 3, "several segments: {bases:?}");
        let expected = common::read_all(&log, 700).unwrap();
        let by_time = log.offset_for_timestamp(1_000 + 25 * 10).unwrap();
        log.close().unwrap();
        for base in &bases {
            for suffix in ["index", "timeindex"] {
                let path = dir.path().join(segment_file_name(*base, suffix));
                match damage {
                    "delete" => fs::remove_file(&path).unwrap(),
                    "garbage" => fs::write(&path, [0x7f; 24]).unwrap(),
                    _ => {
                        let len = fs::metadata(&path).unwrap().len();
                        OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .unwrap()
                            .set_len(len.saturating_sub(3))
                            .unwrap();
                    }
                }
            }
        }
        let log = Log::open(dir.path(), config()).unwrap();
        assert_eq!(common::read_all(&log, 700).unwrap(), expected, "{damage}");
        assert_eq!(log.offset_for_timestamp(1_000 + 25 * 10).unwrap(), by_time, "{damage}");
        for offset in [0, 17, 59, 119] {
            let read = log.read(offset, 1, None).unwrap();
            assert!(read.region.first_offset() <= offset && read.region.next_offset() > offset);
        }
    }
}

/// A torn closed segment (its fsync at roll did not hold) is cut back and every later segment
/// dropped, so offsets stay contiguous; nothing before the damage is lost.
#[test]
fn damage_in_a_closed_segment_drops_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    for i in 0..40 {
        log.append(&build(&batch(i), Compression::None), 0).unwrap();
    }
    let bases = log.segment_base_offsets();
    let all = read_all(&log, 1 << 20).unwrap();
    drop(log);
    // Cut the second segment in the middle of its last batch, and remove its index so the
    // tail cannot be trusted.
    let second = dir.path().join(segment_file_name(bases[1], "log"));
    let len = fs::metadata(&second).unwrap().len();
    OpenOptions::new().write(true).open(&second).unwrap().set_len(len - 10).unwrap();
    fs::remove_file(dir.path().join(segment_file_name(bases[1], "index"))).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.segment_base_offsets(), bases[..2].to_vec());
    let end = log.log_end_offset();
    assert!(end > bases[1] && end < bases[2]);
    let expected: Vec<_> = all.into_iter().filter(|r| r.0 < end).collect();
    assert_eq!(read_all(&log, 1 << 20).unwrap(), expected);
    for later in &bases[2..] {
        assert!(!dir.path().join(segment_file_name(*later, "log")).exists());
    }
}

/// A leader-epoch entry whose data never reached the segment (crash between the two writes)
/// is dropped at open.
#[test]
fn epoch_entries_past_the_recovered_end_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (records, active, pos, _len) = write_unclean(dir.path(), 4);
    let log = Log::open(dir.path(), config()).unwrap();
    log.append(&build(&batch(9), Compression::None), 7).unwrap();
    assert_eq!(log.latest_epoch(), Some(7));
    drop(log);
    // Lose the epoch-7 batch (and the last epoch-1 batch) as a torn write would.
    OpenOptions::new().write(true).open(&active).unwrap().set_len(pos).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.latest_epoch(), Some(1));
    assert_eq!(log.log_end_offset(), records.last().unwrap().0 - 2);
}

/// Rolled segments are synced in the background and only then move the recovery point:
/// after a crash every segment from the recovery point on is scanned (damage found and cut),
/// while segments below it are trusted without a scan.
#[test]
fn unclean_open_scans_from_the_recovery_point() {
    let src = tempfile::tempdir().unwrap();
    let log = Log::open(src.path(), config()).unwrap();
    for i in 0..40 {
        log.append(&build(&batch(i), Compression::None), 0).unwrap();
    }
    let bases = log.segment_base_offsets();
    let in_second = log.read(bases[1] + 1, 1, None).unwrap().region;
    drop(log); // crash; background syncs finished (drop waits for them)
    let point: i64 = fs::read_to_string(src.path().join(tideline_log::RECOVERY_POINT_FILE))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(point, *bases.last().unwrap(), "synced up to the active segment");

    for (recovery_point, expect_cut) in [(point, false), (0, true)] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        fs::write(dir.path().join(tideline_log::RECOVERY_POINT_FILE), recovery_point.to_string())
            .unwrap();
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(segment_file_name(bases[1], "log")))
            .unwrap();
        file.write_all_at(&[0xEE], in_second.position() + 70).unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        if expect_cut {
            assert_eq!(
                log.log_end_offset(),
                in_second.first_offset(),
                "scanned and cut at the damage"
            );
            assert_eq!(log.segment_base_offsets(), bases[..2].to_vec());
        } else {
            assert_eq!(log.segment_base_offsets(), bases, "synced segments are trusted");
        }
    }
}
