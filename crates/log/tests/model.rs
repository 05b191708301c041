//! Model-based property test of the partition log: any sequence of appends (leader and
//! replicated), reads, timestamp lookups, truncations, retention runs and reopenings (clean and
//! after a crash) leaves the log equal to a simple in-memory model.

mod common;

use std::sync::Arc;

use common::{Rec, build, decode_all, read_all};
use proptest::prelude::*;
use tideline_log::{
    Compression, EpochEntry, FlushPolicy, Log, LogConfig, LogError, ManualClock, RecordBatch,
};

#[derive(Debug, Clone)]
enum Op {
    /// Leader append of several batches; `bump` starts a new leader epoch first.
    Append {
        batches: Vec<(Vec<Rec>, Compression)>,
        bump: bool,
    },
    /// Follower append of one batch built here with explicit offset and epoch.
    Replicate {
        records: Vec<Rec>,
        bump: bool,
    },
    Read {
        at: u16,
        max_bytes: u16,
        bound: Option<u16>,
    },
    Timestamp {
        ts: i64,
    },
    Truncate {
        at: u16,
    },
    Retain {
        bytes: u16,
    },
    Reopen {
        clean: bool,
    },
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        0i64..1000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        proptest::collection::vec(
            ("[a-z]{1,4}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4))),
            0..2,
        ),
    )
        .prop_map(|(timestamp, key, value, headers)| Rec { timestamp, key, value, headers })
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        4 => Just(Compression::None),
        1 => Just(Compression::Gzip),
        1 => Just(Compression::Lz4),
        1 => Just(Compression::Zstd),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::collection::vec((proptest::collection::vec(rec(), 1..6), codec()), 1..4), proptest::bool::weighted(0.1))
            .prop_map(|(batches, bump)| Op::Append { batches, bump }),
        1 => (proptest::collection::vec(rec(), 1..4), proptest::bool::weighted(0.3))
            .prop_map(|(records, bump)| Op::Replicate { records, bump }),
        4 => (any::<u16>(), 1u16..3000, proptest::option::of(any::<u16>()))
            .prop_map(|(at, max_bytes, bound)| Op::Read { at, max_bytes, bound }),
        1 => (-10i64..1100).prop_map(|ts| Op::Timestamp { ts }),
        1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        1 => (0u16..4000).prop_map(|bytes| Op::Retain { bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// A record with its offset and the leader epoch of its batch.
type Stored = (i64, i32, Rec);

/// The model: every record still in the log with its offset and epoch, batch boundaries, the
/// log start and end, and the leader-epoch entries.
#[derive(Debug, Default)]
struct Model {
    /// (base offset, last offset, records with epoch)
    batches: Vec<(i64, i64, Vec<Stored>)>,
    start: i64,
    end: i64,
    epoch: i32,
    epochs: Vec<EpochEntry>,
}

impl Model {
    fn records(&self) -> Vec<Stored> {
        self.batches.iter().flat_map(|b| b.2.clone()).collect()
    }

    fn assign_epoch(&mut self, epoch: i32, start: i64) {
        match self.epochs.last() {
            Some(last) if last.epoch == epoch => {}
            Some(last) if last.start_offset == start => {
                *self.epochs.last_mut().unwrap() = EpochEntry { epoch, start_offset: start };
            }
            _ => self.epochs.push(EpochEntry { epoch, start_offset: start }),
        }
    }

    fn push_batch(&mut self, base: i64, epoch: i32, records: &[Rec]) {
        let recs: Vec<_> =
            records.iter().enumerate().map(|(i, r)| (base + i as i64, epoch, r.clone())).collect();
        self.batches.push((base, base + records.len() as i64 - 1, recs));
        self.end = base + records.len() as i64;
    }

    fn truncate(&mut self, offset: i64) {
        if offset >= self.end {
            return;
        }
        self.batches.retain(|b| b.1 < offset);
        self.end = self.batches.last().map_or(self.start, |b| b.1 + 1);
        self.epochs.retain(|e| e.start_offset < self.end);
    }

    fn set_start(&mut self, start: i64) {
        self.batches.retain(|b| b.0 >= start);
        self.start = start;
        let covering = self.epochs.partition_point(|e| e.start_offset <= start);
        if covering > 0 {
            self.epochs.drain(..covering - 1);
            self.epochs[0].start_offset = start;
        }
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        segment_ms: None,
        index_interval_bytes: 150,
        max_batch_bytes: 1 << 20,
        retention_ms: None,
        retention_bytes: None,
        flush: FlushPolicy::PageCache,
        ..LogConfig::default()
    }
}

fn check_read(log: &Log, model: &Model, offset: i64, max_bytes: usize, bound: Option<i64>) {
    let result = log.read(offset, max_bytes, bound);
    if offset < model.start || offset > model.end {
        assert!(matches!(result, Err(LogError::OffsetOutOfRange { .. })), "{offset}: {result:?}");
        return;
    }
    let read = result.unwrap();
    assert_eq!((read.log_start_offset, read.log_end_offset), (model.start, model.end));
    let limit = bound.map_or(model.end, |b| b.min(model.end));
    let Some(first) = model.batches.iter().position(|b| b.1 >= offset) else {
        assert!(read.region.is_empty());
        return;
    };
    let bytes = read.region.read_to_bytes().unwrap();
    if model.batches[first].1 >= limit {
        assert!(read.region.is_empty(), "nothing below the bound {limit} at {offset}");
        return;
    }
    assert!(!read.region.is_empty(), "data at {offset} below {limit} must be returned");
    let got = decode_all(&bytes);
    let sizes: Vec<usize> =
        tideline_log::batch::batches(&bytes).map(|b| b.unwrap().size()).collect();
    assert!(sizes.len() == 1 || sizes.iter().sum::<usize>() <= max_bytes, "max_bytes respected");
    assert_eq!(
        read.region.first_offset(),
        model.batches[first].0,
        "starts with the containing batch"
    );
    let expected: Vec<_> =
        model.batches[first..].iter().take(sizes.len()).flat_map(|b| b.2.clone()).collect();
    assert_eq!(got, expected);
    assert!(got.last().unwrap().0 < limit, "nothing at or past the bound");
    assert_eq!(read.region.next_offset(), got.last().unwrap().0 + 1);
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let open = |clock: &Arc<ManualClock>| {
        Log::open_with_clock(dir.path().join("p0"), config(), clock.clone()).unwrap()
    };
    let mut log = open(&clock);
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Append { batches, bump } => {
                if bump {
                    model.epoch += 1;
                }
                let mut buf = Vec::new();
                for (records, codec) in &batches {
                    buf.extend_from_slice(&build(records, *codec));
                }
                let info = log.append(&buf, model.epoch).unwrap();
                assert_eq!(info.first_offset, model.end);
                model.assign_epoch(model.epoch, model.end);
                for (records, _) in &batches {
                    model.push_batch(model.end, model.epoch, records);
                }
                assert_eq!(info.last_offset, model.end - 1);
            }
            Op::Replicate { records, bump } => {
                if bump {
                    model.epoch += 1;
                }
                let mut batch = build(&records, Compression::None).to_vec();
                tideline_log::batch::set_offset_and_epoch(&mut batch, model.end, model.epoch);
                log.append_replicated(&batch).unwrap();
                model.assign_epoch(model.epoch, model.end);
                model.push_batch(model.end, model.epoch, &records);
                // A batch that does not continue the log is refused.
                let stale = log.append_replicated(&batch);
                assert!(matches!(stale, Err(LogError::NonContiguousAppend { .. })), "{stale:?}");
            }
            Op::Read { at, max_bytes, bound } => {
                let span = (model.end - model.start + 3) as u64;
                let offset = model.start - 1 + (u64::from(at) % span) as i64;
                let bound = bound.map(|b| model.start + (u64::from(b) % span) as i64);
                check_read(&log, &model, offset, usize::from(max_bytes), bound);
            }
            Op::Timestamp { ts } => {
                let expected = model
                    .records()
                    .into_iter()
                    .find(|(_, _, r)| r.timestamp >= ts)
                    .map(|(o, _, r)| (o, r.timestamp));
                let got = log.offset_for_timestamp(ts).unwrap().map(|t| (t.offset, t.timestamp));
                assert_eq!(got, expected, "first record at or after {ts}");
            }
            Op::Truncate { at } => {
                let span = (model.end - model.start + 2) as u64;
                let offset = model.start + (u64::from(at) % span) as i64;
                let end = log.truncate_to(offset).unwrap();
                model.truncate(offset);
                assert_eq!(end, model.end);
            }
            Op::Retain { bytes } => {
                let before = log.size_bytes();
                log.set_config(LogConfig { retention_bytes: Some(u64::from(bytes)), ..config() })
                    .unwrap();
                let outcome = log.apply_retention().unwrap();
                log.set_config(config()).unwrap();
                let after = log.size_bytes();
                assert_eq!(before - after, outcome.deleted_bytes);
                if outcome.deleted_bytes > 0 {
                    assert!(after >= u64::from(bytes), "retention keeps at least retention.bytes");
                }
                let start = outcome.log_start_offset;
                assert!(start >= model.start);
                assert!(
                    start == model.end || model.batches.iter().any(|b| b.0 == start),
                    "log start {start} must be a batch boundary"
                );
                model.set_start(start);
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().unwrap();
                    assert!(matches!(
                        log.append(&build(&[Rec::value(0, b"x")], Compression::None), 0),
                        Err(LogError::Closed(_))
                    ));
                }
                drop(log);
                log = open(&clock);
            }
        }
        assert_eq!(log.log_start_offset(), model.start);
        assert_eq!(log.log_end_offset(), model.end);
        assert_eq!(log.epoch_entries(), model.epochs);
    }
    assert_eq!(read_all(&log, 500).unwrap(), model.records());
    // Every batch boundary is visible through a read from its base offset.
    for b in &model.batches {
        let read = log.read(b.0, 1, None).unwrap();
        let bytes = read.region.read_to_bytes().unwrap();
        let (batch, rest) = RecordBatch::parse(&bytes).unwrap();
        assert!(rest.is_empty(), "max_bytes 1 returns exactly one batch");
        assert_eq!((batch.base_offset(), batch.last_offset()), (b.0, b.1));
    }
    log.close().unwrap();
    let reopened = open(&clock);
    assert_eq!(read_all(&reopened, 1 << 20).unwrap(), model.records());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of operations leaves the log equal to the model: same records at the same
    /// offsets with the same epochs, same bounds and epoch entries, across reopenings.
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
