//! Readers running beside the single writer never observe a partially written batch: every
//! region they get is whole batches with valid CRCs, contiguous offsets and the contents the
//! writer wrote at those offsets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::{Rec, build, decode_all};
use tideline_log::{Compression, FlushPolicy, Log, LogConfig};

/// The value the writer stores at `offset`; readers check it.
fn value_at(offset: i64) -> Vec<u8> {
    let len = 1 + (offset * 7919 % 700) as usize;
    (0..len).map(|i| (offset as usize + i) as u8).collect()
}

/// Concurrent reads during appends (and segment rolls) see only whole, valid, correct batches.
#[test]
fn readers_never_see_torn_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 512,
        flush: FlushPolicy::PageCache,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(dir.path(), config).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (log, done) = (Arc::clone(&log), Arc::clone(&done));
            thread::spawn(move || {
                let mut checked = 0u64;
                let mut offset = 0i64;
                let mut rng = r as i64 + 1;
                while !done.load(Ordering::Acquire) || offset < log.log_end_offset() {
                    let end = log.log_end_offset();
                    if offset >= end {
                        thread::yield_now();
                        continue;
                    }
                    rng = (rng * 1_103_515_245 + 12_345) % 2_147_483_648;
                    let max_bytes = 1 + (rng % 20_000) as usize;
                    let read = log.read(offset, max_bytes, None).unwrap();
                    assert!(read.log_end_offset >= end);
                    let bytes = read.region.read_to_bytes().unwrap();
                    let records = decode_all(&bytes);
                    assert!(!records.is_empty(), "data below the end must be returned");
                    assert!(records[0].0 <= offset);
                    for (i, (o, _, rec)) in records.iter().enumerate() {
                        assert_eq!(*o, records[0].0 + i as i64, "contiguous offsets");
                        assert_eq!(rec.value.as_deref(), Some(&value_at(*o)[..]), "offset {o}");
                    }
                    checked += records.len() as u64;
                    offset = read.region.next_offset();
                    // Now and then, while the writer runs, jump back a little to re-read older
                    // data (from inside a batch as often as not).
                    if !done.load(Ordering::Acquire) && rng % 5 == 0 {
                        offset = (offset - rng % 200).max(0);
                    }
                }
                checked
            })
        })
        .collect();

    let mut next = 0i64;
    for round in 0..3000 {
        let count = 1 + round % 9;
        let records: Vec<Rec> = (next..next + count).map(|o| Rec::value(o, &value_at(o))).collect();
        let codec = if round % 4 == 0 { Compression::Zstd } else { Compression::None };
        let info = log.append(&build(&records, codec), 0).unwrap();
        assert_eq!(info.first_offset, next);
        next += count;
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert!(log.segment_base_offsets().len() > 5, "rolls happened during the reads");
}
