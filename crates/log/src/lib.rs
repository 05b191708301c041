//! `tideline-log`: the partition log of Tideline, a distributed commit log.
//!
//! Each partition replica is a directory of segment files holding Kafka RecordBatch v2 batches
//! back to back, with sparse offset and time indexes, a leader-epoch checkpoint, crash
//! recovery, truncation, retention and compaction ([`Log::clean`]). This crate has no network code: the storage broker
//! wires it to gRPC and to `sendfile(2)` through [`FileRegion`].
//!
//! ```
//! use tideline_log::{Compression, Log, LogConfig, RecordBatchBuilder};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(dir.path(), LogConfig::default()).unwrap();
//! let mut builder = RecordBatchBuilder::new(Compression::Lz4);
//! builder.append(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
//! let info = log.append(&builder.build(), 0).unwrap();
//! assert_eq!(info.first_offset, 0);
//!
//! let read = log.read(0, 1 << 20, None).unwrap();
//! let bytes = read.region.read_to_bytes().unwrap();
//! let (batch, _) = tideline_log::RecordBatch::parse(&bytes).unwrap();
//! let records = batch.records().unwrap();
//! let record = records.iter().next().unwrap().unwrap();
//! assert_eq!(record.value, Some(&b"value"[..]));
//! ```
#![warn(missing_docs)]

pub mod batch;
mod builder;
mod cleaner;
mod clock;
mod compression;
mod config;
mod epoch;
mod error;
mod index;
mod log;
mod recovery_point;
mod segment;
pub mod varint;

pub use batch::{Header, Record, RecordBatch, Records, TimestampType, Validation};
pub use builder::{RecordBatchBuilder, RecordHeader};
pub use cleaner::{
    CLEANER_CHECKPOINT_FILE, CleanOptions, CleanOutcome, CleanStep, CleanableStats,
    DEFAULT_OFFSET_MAP_BYTES, Throttle,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use compression::Compression;
pub use config::{CleanupPolicy, FlushPolicy, LogConfig};
pub use epoch::{EpochEntry, LeaderEpochCache};
pub use error::{BatchError, LogError};
pub use log::{
    AppendInfo, CLEAN_SHUTDOWN_FILE, FileRegion, Log, LogRead, RetentionOutcome, TimestampOffset,
};
pub use recovery_point::RECOVERY_POINT_FILE;
pub use segment::{SegmentFile, segment_file_name};
