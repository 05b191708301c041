//! Errors of the log crate: [`BatchError`] for bytes that are not a valid record batch (the
//! caller sent bad input; nothing was written) and [`LogError`] for the log itself.

use std::io;
use std::path::PathBuf;

/// A buffer is not a valid Kafka v2 record batch. Each failure has its own variant so that a
/// broker can map it to a precise status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The buffer ends before the batch does.
    #[error("short buffer: batch needs {needed} bytes, {available} available")]
    ShortBuffer {
        /// Bytes the batch header or length field says are needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// `batchLength` is smaller than a batch header or negative.
    #[error("bad batch length {length}: must be at least {min}")]
    BadLength {
        /// The `batchLength` field.
        length: i32,
        /// The smallest valid value.
        min: i32,
    },
    /// The magic byte is not 2.
    #[error("bad magic {magic}: only record batch v2 (magic 2) is supported")]
    BadMagic {
        /// The magic byte found.
        magic: i8,
    },
    /// The stored CRC-32C does not match the bytes from `attributes` to the end.
    #[error("batch crc mismatch: expected {expected:#010x}, got {actual:#010x}")]
    CrcMismatch {
        /// The CRC stored in the batch.
        expected: u32,
        /// The CRC computed over the bytes.
        actual: u32,
    },
    /// The batch is larger than the configured maximum (`max.message.bytes`).
    #[error("batch of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the whole batch in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The record count is negative, or zero where records are required.
    #[error("invalid record count {count}")]
    InvalidRecordCount {
        /// The `recordsCount` field.
        count: i32,
    },
    /// The header's record count differs from the number of records in the records section.
    #[error("record count mismatch: header says {header}, records section holds {actual}")]
    RecordCountMismatch {
        /// The `recordsCount` field.
        header: i32,
        /// Records actually decoded (counting stops one past the header's count).
        actual: i32,
    },
    /// `lastOffsetDelta` or a record's offset delta is inconsistent with the records.
    #[error("offset delta mismatch: {what}: expected {expected}, got {actual}")]
    OffsetDeltaMismatch {
        /// Which delta: `lastOffsetDelta` or `record N offsetDelta`.
        what: String,
        /// The value consistent with the records.
        expected: i64,
        /// The value found.
        actual: i64,
    },
    /// The header's `maxTimestamp` is not the largest record timestamp (create-time batches).
    #[error("maxTimestamp {header} differs from the largest record timestamp {actual}")]
    MaxTimestampMismatch {
        /// The `maxTimestamp` field.
        header: i64,
        /// The largest timestamp among the records.
        actual: i64,
    },
    /// The batch's offsets do not fit: negative base offset or `lastOffsetDelta`, or their sum
    /// overflows.
    #[error("offsets out of range: baseOffset {base_offset}, lastOffsetDelta {last_offset_delta}")]
    OffsetOverflow {
        /// The `baseOffset` field.
        base_offset: i64,
        /// The `lastOffsetDelta` field.
        last_offset_delta: i32,
    },
    /// A record inside the batch cannot be decoded.
    #[error("malformed record {index}: {reason}")]
    MalformedRecord {
        /// Position of the record in the batch, from 0.
        index: i32,
        /// What is wrong with it.
        reason: String,
    },
    /// The compression codec is not supported.
    #[error("unsupported compression codec {codec}")]
    UnsupportedCompression {
        /// Codec id from the attributes.
        codec: u8,
    },
    /// The compressed records section cannot be decompressed.
    #[error("{codec} decompression failed: {reason}")]
    Decompression {
        /// Codec name.
        codec: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A record has no key, and the log is compacted (`cleanup.policy=compact`): compaction
    /// keeps the latest record per key, so every record must have one.
    #[error(
        "record {index} has no key: a compacted topic (cleanup.policy=compact) needs a key on every record"
    )]
    MissingKey {
        /// Position of the first keyless record in the batch, from 0.
        index: i32,
    },
    /// A batch feature this log does not accept from producers (transactions, control batches).
    #[error("unsupported batch feature: {what}")]
    Unsupported {
        /// The feature.
        what: &'static str,
    },
}

/// An operation on a partition log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Batch `index` (from 0) of an append is invalid; nothing of the append was written.
    #[error("invalid batch {index} in append: {source}")]
    InvalidBatch {
        /// Position of the batch in the appended buffer.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: BatchError,
    },
    /// The requested offset is outside `[log_start, log_end]`.
    #[error("offset {requested} out of range: log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: i64,
        /// First offset in the log.
        log_start: i64,
        /// Next offset to be written.
        log_end: i64,
    },
    /// A replicated append does not continue the log (its first offset is not the log end).
    #[error("replicated batch starts at offset {got}, log end offset is {expected}")]
    NonContiguousAppend {
        /// The log end offset.
        expected: i64,
        /// The batch's base offset.
        got: i64,
    },
    /// A replicated batch carries a leader epoch older than one already in the log.
    #[error("batch leader epoch {got} is older than the log's latest epoch {latest}")]
    EpochRegression {
        /// Latest epoch in the leader-epoch cache.
        latest: i32,
        /// Epoch carried by the batch.
        got: i32,
    },
    /// The log configuration is invalid.
    #[error("invalid log config: {0}")]
    Config(String),
    /// A file of the log is corrupt in a way recovery cannot repair by truncation.
    #[error("corrupt log file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O operation on a log file failed. The log should be taken offline.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done: `open`, `write`, `read`, `fsync`, ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An earlier write or fsync failed, so what is on disk is in doubt; the log accepts no
    /// more changes until it is reopened (which recovers it).
    #[error("log {path} is offline after an I/O failure: {reason}")]
    Offline {
        /// The partition directory.
        path: PathBuf,
        /// The failure that took it offline.
        reason: String,
    },
    /// The log was closed; it accepts no more operations.
    #[error("log {0} is closed")]
    Closed(PathBuf),
}

impl LogError {
    /// True when the log can no longer be trusted and must be taken offline (I/O failure or
    /// corruption); false for errors caused by the request (bad batch, offset out of range).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            LogError::Io { .. }
                | LogError::Corrupt { .. }
                | LogError::Offline { .. }
                | LogError::Closed(_)
        )
    }
}

/// Builds a closure that wraps an [`io::Error`] into [`LogError::Io`] with context.
pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}
