//! Topic configs (Kafka names, as the controller validated them) to a partition log's
//! [`LogConfig`], over the broker's defaults. Configs that are not about the log
//! (`min.insync.replicas`, `cleanup.policy`, ...) are left to the services that use them.

use std::collections::HashMap;

use tideline_log::{FlushPolicy, LogConfig};

fn int(key: &str, value: &str) -> Result<i64, String> {
    value.parse().map_err(|_| format!("topic config {key}: {value:?} is not an integer"))
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
        assert_eq!(log_config(&HashMap::new(), &d).unwrap(), d);
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
