//! Topic configs the cluster understands, with the range each value must be in. The controller
//! refuses an unknown key or an out-of-range value at CreateTopic and AlterTopicConfig, so
//! brokers never see a config they cannot apply.

use std::collections::BTreeMap;

/// Whether a partition whose in-sync replicas are all gone may be led by an out-of-sync replica
/// (availability over durability: records it lacks are lost). "true" or "false", default false.
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

/// Checks one value; `rf` is the topic's replication factor (for `min.insync.replicas`).
type Check = fn(&str, i32) -> Result<(), String>;

fn int_in(value: &str, min: i64, max: i64) -> Result<(), String> {
    let v: i64 = value.parse().map_err(|_| format!("{value:?} is not an integer"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{v} is outside {min}..={max}"));
    }
    Ok(())
}

/// Known keys, as in Kafka, and their checks.
const KNOWN: &[(&str, Check)] = &[
    ("retention.ms", |v, _| int_in(v, -1, i64::MAX)),
    ("retention.bytes", |v, _| int_in(v, -1, i64::MAX)),
    ("segment.bytes", |v, _| int_in(v, 1024, i64::from(i32::MAX))),
    ("segment.ms", |v, _| int_in(v, 1, i64::MAX)),
    // At most the brokers' gRPC request limit (64 MiB) less room for the request's framing.
    ("max.message.bytes", |v, _| int_in(v, 61, (64 << 20) - 1024)),
    ("index.interval.bytes", |v, _| int_in(v, 0, i64::from(i32::MAX))),
    ("flush.ms", |v, _| int_in(v, 1, i64::MAX)),
    ("min.insync.replicas", |v, rf| int_in(v, 1, i64::from(rf.max(1)))),
    (UNCLEAN_LEADER_ELECTION_ENABLE, |v, _| match v {
        "true" | "false" => Ok(()),
        _ => Err(format!("{v:?} is not true or false")),
    }),
    ("cleanup.policy", |v, _| match v {
        "delete" | "compact" | "compact,delete" | "delete,compact" => Ok(()),
        _ => Err(format!("{v:?} is not delete, compact or compact,delete")),
    }),
    ("delete.retention.ms", |v, _| int_in(v, 0, i64::MAX)),
    ("min.compaction.lag.ms", |v, _| int_in(v, 0, i64::MAX)),
    ("min.cleanable.dirty.ratio", |v, _| match v.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
        _ => Err(format!("{v:?} is not a number between 0 and 1")),
    }),
    ("compression.type", |v, _| match v {
        "producer" | "uncompressed" | "gzip" | "lz4" | "zstd" => Ok(()),
        _ => Err(format!("{v:?} is not producer, uncompressed, gzip, lz4 or zstd")),
    }),
];

/// Checks every entry of `configs` for a topic with `replication_factor` replicas.
///
/// # Errors
/// A message naming the first unknown key or bad value.
pub fn validate(configs: &BTreeMap<String, String>, replication_factor: i32) -> Result<(), String> {
    for (key, value) in configs {
        let Some((_, check)) = KNOWN.iter().find(|(k, _)| k == key) else {
            return Err(format!("unknown topic config {key:?}"));
        };
        check(value, replication_factor).map_err(|e| format!("topic config {key}: {e}"))?;
    }
    Ok(())
}

/// Whether `key` is a known topic config (for removals).
pub fn is_known(key: &str) -> bool {
    KNOWN.iter().any(|(k, _)| *k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_configs_are_range_checked() {
        let ok: BTreeMap<String, String> = [
            ("retention.ms", "-1"),
            ("segment.bytes", "1048576"),
            ("min.insync.replicas", "2"),
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "1000"),
            ("min.compaction.lag.ms", "0"),
            ("min.cleanable.dirty.ratio", "0.25"),
            (UNCLEAN_LEADER_ELECTION_ENABLE, "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        validate(&ok, 3).unwrap();
        for (key, value, rf) in [
            ("retention.ms", "-2", 1),
            ("retention.ms", "ten", 1),
            ("segment.bytes", "10", 1),
            ("segment.bytes", "99999999999", 1),
            ("max.message.bytes", "-5", 1),
            ("min.insync.replicas", "3", 2),
            ("cleanup.policy", "forever", 1),
            ("delete.retention.ms", "-1", 1),
            ("min.cleanable.dirty.ratio", "1.5", 1),
            (UNCLEAN_LEADER_ELECTION_ENABLE, "yes", 1),
            ("no.such.key", "1", 1),
        ] {
            let one = BTreeMap::from([(key.to_string(), value.to_string())]);
            let err = validate(&one, rf).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }
}
