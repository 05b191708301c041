//! Arbitrary damage to a batch never panics the codec or the log: the append is either
//! accepted whole or refused with an error, and a refused append leaves the log unchanged.

mod common;

use common::{Rec, build};
use proptest::prelude::*;
use tideline_log::{Compression, Log, LogConfig, LogError, RecordBatch, Validation};

fn sample(codec: Compression) -> Vec<u8> {
    let records = vec![
        Rec {
            timestamp: 5,
            key: Some(b"key".to_vec()),
            value: Some(b"value".to_vec()),
            headers: vec![("h".into(), None)],
        },
        Rec { timestamp: 9, key: None, value: None, headers: vec![] },
        Rec::value(7, b"third"),
    ];
    build(&records, codec).to_vec()
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Byte edits anywhere (CRC recomputed half of the time so the damage reaches the record
    /// decoder) and truncations never panic, and a refused append changes nothing.
    #[test]
    fn damaged_batches_are_refused_or_accepted_never_panic(
        codec in codec(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        fix_crc in any::<bool>(),
    ) {
        let mut batch = sample(codec);
        for (at, byte) in edits {
            let i = at.index(batch.len());
            batch[i] = byte;
        }
        if fix_crc && batch.len() > 21 {
            let crc = crc32c::crc32c(&batch[21..]);
            batch[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        if let Some(cut) = cut {
            batch.truncate(cut.index(batch.len() + 1));
        }
        // The codec on its own.
        if let Ok((b, _)) = RecordBatch::parse(&batch) {
            let _ = b.validate(1 << 20, Validation::Full);
            if let Ok(records) = b.records() {
                for r in records.iter() {
                    let _ = r;
                }
            }
        }
        // Through the log as leader (full validation: whatever is accepted decodes) and as
        // follower (framing and CRC only: whatever is accepted is whole batches).
        for follower in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), LogConfig::default()).unwrap();
            log.append(&sample(Compression::None), 0).unwrap();
            let before = (log.log_end_offset(), log.size_bytes());
            let result = if follower { log.append_replicated(&batch) } else { log.append(&batch, 0) };
            match result {
                Ok(_) => {}
                Err(LogError::InvalidBatch { .. } | LogError::NonContiguousAppend { .. } | LogError::EpochRegression { .. }) => {
                    prop_assert_eq!((log.log_end_offset(), log.size_bytes()), before);
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
            if follower {
                let read = log.read(0, 1 << 20, None).unwrap();
                prop_assert!(read.region.read_to_bytes().is_ok());
            } else {
                let all = common::read_all(&log, 1 << 20);
                prop_assert!(all.is_ok(), "the log stays readable: {:?}", all.err());
            }
        }
    }
}
