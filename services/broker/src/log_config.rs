//! Topic configs (Kafka names, as the controller validated them) to a partition log's
//! [`LogConfig`], over the broker's defaults, and the cleaner's `min.cleanable.dirty.ratio`.
//! Configs that are not about the log (`min.insync.replicas`, ...) are left to the services
//! that use them.

use std::collections::HashMap;

use tideline_log::{CleanupPolicy, FlushPolicy, LogConfig};

fn int(key: &str, value: &str) -> Result<i64, String> {
    value.parse().map_err(|_| format!("topic config {key}: {value:?} is not an integer"))
}

fn non_negative(key: &str, value: &str) -> Result<u64, String> {
    u64::try_from(int(key, value)?)
        .map_err(|_| format!("topic config {key}: {value} is out of range"))
}

/// Name of the topic config setting the dirty share at which the cleaner compacts a log.
pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";

/// The topic's `min.cleanable.dirty.ratio` (0 to 1), or `default` when it sets none.
///
/// # Errors
/// A message naming the key when the value is not a number between 0 and 1.
pub fn min_cleanable_dirty_ratio(
    configs: &HashMap<String, String>,
    default: f64,
) -> Result<f64, String> {
    let Some(value) = configs.get(MIN_CLEANABLE_DIRTY_RATIO) else { return Ok(default) };
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "topic config {MIN_CLEANABLE_DIRTY_RATIO}: {value:?} is not a number between 0 and 1"
        )),
    }
}

/// The log config for a topic with `configs`, starting from `defaults`.
///
/// # Errors
/// A message naming the bad key when a value does not parse or the result is out of range.
pub fn log_config(
    configs: &HashMap<String, String>,
    defaults: &LogConfig,
) -> Result<LogConfig, String> {
    let mut c = *defaults;
    for (key, value) in configs {
        match key.as_str() {
            "retention.ms" => c.retention_ms = u64::try_from(int(key, value)?).ok(),
            "retention.bytes" => c.retention_bytes = u64::try_from(int(key, value)?).ok(),
            "segment.bytes" => c.segment_bytes = int(key, value)?.max(0) as u64,
            "segment.ms" => c.segment_ms = u64::try_from(int(key, value)?).ok().filter(|v| *v > 0),
            "max.message.bytes" => c.max_batch_bytes = int(key, value)?.max(0) as usize,
            "index.interval.bytes" => {
                c.index_interval_bytes = u32::try_from(int(key, value)?)
                    .map_err(|_| format!("topic config {key}: {value} is out of range"))?;
            }
            "cleanup.policy" => {
                c.cleanup_policy = CleanupPolicy::parse(value).ok_or_else(|| {
                    format!(
                        "topic config {key}: {value:?} is not delete, compact or compact,delete"
                    )
                })?;
            }
            "delete.retention.ms" => c.delete_retention_ms = non_negative(key, value)?,
            "min.compaction.lag.ms" => c.min_compaction_lag_ms = non_negative(key, value)?,
            "flush.ms" => {
                let ms = u64::try_from(int(key, value)?)
                    .map_err(|_| format!("topic config {key}: {value} is out of range"))?;
                c.flush = FlushPolicy::IntervalMs(ms);
            }
            _ => {}
        }
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn topic_configs_override_the_defaults() {
        let d = LogConfig::default();
        let c = log_config(
            &configs(&[
                ("retention.ms", "-1"),
                ("retention.bytes", "1000000"),
                ("segment.bytes", "1048576"),
                ("max.message.bytes", "2000000"),
                ("flush.ms", "1000"),
                ("cleanup.policy", "compact"),
            ]),
            &d,
        )
        .unwrap();
        assert_eq!(c.retention_ms, None, "-1 keeps forever");
        assert_eq!(c.retention_bytes, Some(1_000_000));
        assert_eq!(c.segment_bytes, 1 << 20);
        assert_eq!(c.max_batch_bytes, 2_000_000);
        assert_eq!(c.flush, FlushPolicy::IntervalMs(1000));
        assert_eq!(c.cleanup_policy, CleanupPolicy::COMPACT);
        assert_eq!(log_config(&HashMap::new(), &d).unwrap(), d);
        let c = log_config(
            &configs(&[
                ("cleanup.policy", "delete,compact"),
                ("delete.retention.ms", "5"),
                ("min.compaction.lag.ms", "7"),
            ]),
            &d,
        )
        .unwrap();
        assert_eq!(
            (c.cleanup_policy, c.delete_retention_ms, c.min_compaction_lag_ms),
            (CleanupPolicy::COMPACT_DELETE, 5, 7)
        );
        for (key, value) in [
            ("cleanup.policy", "forever"),
            ("delete.retention.ms", "-1"),
            ("min.compaction.lag.ms", "soon"),
        ] {
            assert!(log_config(&configs(&[(key, value)]), &d).unwrap_err().contains(key));
        }
        assert_eq!(min_cleanable_dirty_ratio(&HashMap::new(), 0.5), Ok(0.5));
        assert_eq!(
            min_cleanable_dirty_ratio(&configs(&[(MIN_CLEANABLE_DIRTY_RATIO, "0.1")]), 0.5),
            Ok(0.1)
        );
        for bad in ["1.5", "-0.1", "half", "NaN"] {
            let err = min_cleanable_dirty_ratio(&configs(&[(MIN_CLEANABLE_DIRTY_RATIO, bad)]), 0.5)
                .unwrap_err();
            assert!(err.contains(MIN_CLEANABLE_DIRTY_RATIO), "{err}");
        }
        assert!(
            log_config(&configs(&[("segment.bytes", "12")]), &d)
                .unwrap_err()
                .contains("segment.bytes")
        );
        assert!(
            log_config(&configs(&[("retention.ms", "x")]), &d)
                .unwrap_err()
                .contains("retention.ms")
        );
    }
}
