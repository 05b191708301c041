//! [`LogConfig`]: the per-partition settings of a log, named after their Kafka topic configs.

use crate::batch::BATCH_HEADER_LEN;
use crate::error::LogError;

/// When appended data is forced to disk with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// Leave it to the page cache; replication gives durability (Kafka's default). Segments are
    /// still synced when they roll and when the log closes.
    #[default]
    PageCache,
    /// Sync after every append, before it returns.
    EveryAppend,
    /// Sync when at least this many milliseconds passed since the last sync (checked on append
    /// and by [`crate::Log::flush_if_due`]).
    IntervalMs(u64),
}

/// `cleanup.policy`: what happens to old records. `delete` removes whole old segments by
/// `retention.ms` and `retention.bytes`; `compact` keeps the latest record of every key (see
/// [`crate::Log::clean`]); both may be on (`compact,delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CleanupPolicy {
    /// Retention by time and size deletes old segments.
    pub delete: bool,
    /// The log cleaner compacts the log; producers must key every record.
    pub compact: bool,
}

impl CleanupPolicy {
    /// `delete`, the default.
    pub const DELETE: CleanupPolicy = CleanupPolicy { delete: true, compact: false };
    /// `compact`: no retention by time or size.
    pub const COMPACT: CleanupPolicy = CleanupPolicy { delete: false, compact: true };
    /// `compact,delete`: compacted, and old segments deleted by retention as well.
    pub const COMPACT_DELETE: CleanupPolicy = CleanupPolicy { delete: true, compact: true };

    /// Parses Kafka's comma-separated list: `delete`, `compact`, `compact,delete` (in any order,
    /// spaces allowed around the commas).
    pub fn parse(value: &str) -> Option<Self> {
        let mut policy = CleanupPolicy { delete: false, compact: false };
        for part in value.split(',').map(str::trim) {
            match part {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => return None,
            }
        }
        Some(policy)
    }

    /// The policy as Kafka writes it: `delete`, `compact`, `compact,delete`, or empty.
    pub fn name(self) -> &'static str {
        match (self.compact, self.delete) {
            (false, true) => "delete",
            (true, false) => "compact",
            (true, true) => "compact,delete",
            (false, false) => "",
        }
    }
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy::DELETE
    }
}

/// Settings of one partition log. `Default` gives Kafka's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment once an append would take it past this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once its first batch is this old.
    pub segment_ms: Option<u64>,
    /// `index.interval.bytes`: bytes of batches between two offset (and time) index entries.
    pub index_interval_bytes: u32,
    /// `max.message.bytes`: the largest batch accepted, header included.
    pub max_batch_bytes: usize,
    /// `retention.ms`: delete closed segments whose newest record is older; `None` keeps forever.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: delete the oldest closed segments while the log is larger; `None` for
    /// no limit.
    pub retention_bytes: Option<u64>,
    /// When to fsync.
    pub flush: FlushPolicy,
    /// `cleanup.policy`: retention by time and size only with `delete`; the cleaner only with
    /// `compact`, which also makes appends refuse records without a key.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long the cleaner keeps a tombstone (a record with a null
    /// value), counted from its batch's max timestamp, so that consumers reading the log have
    /// time to see the delete.
    pub delete_retention_ms: u64,
    /// `min.compaction.lag.ms`: the cleaner leaves alone segments holding a record younger
    /// than this.
    pub min_compaction_lag_ms: u64,
}

/// Largest `segment.bytes`: positions in the offset index are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
/// Smallest `segment.bytes`.
pub const MIN_SEGMENT_BYTES: u64 = BATCH_HEADER_LEN as u64;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            max_batch_bytes: 1_048_588,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::PageCache,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
        }
    }
}

impl LogConfig {
    /// Checks every value is in range.
    ///
    /// # Errors
    /// [`LogError::Config`] naming the first bad setting and its allowed range.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |msg: String| Err(LogError::Config(msg));
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(format!(
                "segment.bytes {} must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        if self.segment_ms == Some(0) {
            return bad("segment.ms must be positive".into());
        }
        if self.max_batch_bytes < BATCH_HEADER_LEN || self.max_batch_bytes > i32::MAX as usize {
            return bad(format!(
                "max.message.bytes {} must be between {BATCH_HEADER_LEN} and {}",
                self.max_batch_bytes,
                i32::MAX
            ));
        }
        for (name, value) in [
            ("delete.retention.ms", self.delete_retention_ms),
            ("min.compaction.lag.ms", self.min_compaction_lag_ms),
        ] {
            if i64::try_from(value).is_err() {
                return bad(format!("{name} {value} must be at most {}", i64::MAX));
            }
        }
        if self.flush == FlushPolicy::IntervalMs(0) {
            return bad(
                "flush interval must be positive (use every-append to sync each write)".into()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        LogConfig::default().validate().unwrap();
        let cases = [
            (LogConfig { segment_bytes: 10, ..Default::default() }, "segment.bytes"),
            (LogConfig { segment_bytes: 1 << 40, ..Default::default() }, "segment.bytes"),
            (LogConfig { segment_ms: Some(0), ..Default::default() }, "segment.ms"),
            (LogConfig { max_batch_bytes: 3, ..Default::default() }, "max.message.bytes"),
            (LogConfig { flush: FlushPolicy::IntervalMs(0), ..Default::default() }, "flush"),
            (
                LogConfig { delete_retention_ms: u64::MAX, ..Default::default() },
                "delete.retention.ms",
            ),
            (
                LogConfig { min_compaction_lag_ms: 1 << 63, ..Default::default() },
                "min.compaction.lag.ms",
            ),
        ];
        for (config, name) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err} should name {name}");
        }
    }

    #[test]
    fn cleanup_policies_parse_in_any_order() {
        assert_eq!(CleanupPolicy::parse("delete"), Some(CleanupPolicy::DELETE));
        assert_eq!(CleanupPolicy::parse("compact"), Some(CleanupPolicy::COMPACT));
        assert_eq!(CleanupPolicy::parse("compact,delete"), Some(CleanupPolicy::COMPACT_DELETE));
        assert_eq!(CleanupPolicy::parse("delete, compact"), Some(CleanupPolicy::COMPACT_DELETE));
        assert_eq!(CleanupPolicy::parse("forever"), None);
        for policy in [CleanupPolicy::DELETE, CleanupPolicy::COMPACT, CleanupPolicy::COMPACT_DELETE]
        {
            assert_eq!(CleanupPolicy::parse(policy.name()), Some(policy));
        }
    }
}
