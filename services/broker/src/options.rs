//! [`Options`]: the broker's command line and `TIDELINE_*` environment, validated into a
//! [`BrokerConfig`] and a listen address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tideline_log::FlushPolicy;

use crate::config::{BrokerConfig, LogCleanerConfig};

/// Runs one Tideline storage broker.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tideline-broker", version)]
pub struct Options {
    /// This broker's id, unique in the cluster. Or --broker-id-from-hostname.
    #[arg(
        long,
        env = "TIDELINE_BROKER_ID",
        allow_negative_numbers = true,
        required_unless_present = "broker_id_from_hostname"
    )]
    pub broker_id: Option<i32>,
    /// Take the broker id from the hostname of a StatefulSet pod: `NAME-N` is broker N.
    #[arg(long, env = "TIDELINE_BROKER_ID_FROM_HOSTNAME", conflicts_with = "broker_id")]
    pub broker_id_from_hostname: bool,
    /// Controller addresses as HOST:PORT, comma separated (any one is enough to start).
    #[arg(long, env = "TIDELINE_CONTROLLERS", value_delimiter = ',', required = true)]
    pub controllers: Vec<String>,
    /// Address to serve gRPC on; port 0 picks a free port (registered with the controller).
    #[arg(long, env = "TIDELINE_LISTEN", default_value = "0.0.0.0:9092")]
    pub listen: SocketAddr,
    /// Address of the sendfile data listener (consumers' bulk reads); defaults to the gRPC
    /// listen address with a port the system picks. Advertised in metadata as `data_port`.
    #[arg(long, env = "TIDELINE_DATA_LISTEN")]
    pub data_listen: Option<SocketAddr>,
    /// Most connections the data listener serves at once; one more is closed at once.
    #[arg(long, env = "TIDELINE_DATA_MAX_CONNECTIONS", default_value_t = 1024)]
    pub data_max_connections: usize,
    /// Host clients use to reach this broker; defaults to the listen address, or the machine's
    /// host name when listening on all interfaces.
    #[arg(long, env = "TIDELINE_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Directory for partition logs.
    #[arg(long, env = "TIDELINE_DATA_DIR", default_value = "tideline-data/broker")]
    pub data_dir: PathBuf,
    /// Rack (or zone) of this broker, for rack-aware replica placement.
    #[arg(long, env = "TIDELINE_RACK", default_value = "")]
    pub rack: String,
    /// Default segment size in bytes (topic config segment.bytes).
    #[arg(long, env = "TIDELINE_LOG_SEGMENT_BYTES", default_value_t = 1 << 30)]
    pub log_segment_bytes: u64,
    /// Default retention in ms, -1 to keep forever (topic config retention.ms).
    #[arg(long, env = "TIDELINE_LOG_RETENTION_MS", default_value_t = 7 * 24 * 3600 * 1000, allow_negative_numbers = true)]
    pub log_retention_ms: i64,
    /// Default size cap per partition in bytes, -1 for none (topic config retention.bytes).
    #[arg(long, env = "TIDELINE_LOG_RETENTION_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub log_retention_bytes: i64,
    /// Default largest record batch in bytes (topic config max.message.bytes).
    #[arg(long, env = "TIDELINE_MESSAGE_MAX_BYTES", default_value_t = 1_048_588)]
    pub message_max_bytes: usize,
    /// Default fsync interval in ms; unset leaves flushing to the OS page cache, as Kafka does
    /// (durability comes from replication).
    #[arg(long, env = "TIDELINE_LOG_FLUSH_INTERVAL_MS")]
    pub log_flush_interval_ms: Option<u64>,
    /// A follower that has not caught up for this long leaves the ISR, in ms.
    #[arg(long, env = "TIDELINE_REPLICA_LAG_TIME_MAX_MS", default_value_t = 30_000)]
    pub replica_lag_time_max_ms: u64,
    /// How long acks=all waits for the in-sync replicas when a request sets no timeout, in ms.
    #[arg(long, env = "TIDELINE_PRODUCE_TIMEOUT_MS", default_value_t = 30_000)]
    pub produce_timeout_ms: u64,
    /// How often retention runs, in ms.
    #[arg(long, env = "TIDELINE_RETENTION_CHECK_INTERVAL_MS", default_value_t = 30_000)]
    pub retention_check_interval_ms: u64,
    /// How often the log cleaner looks for compacted logs to clean, in ms (Kafka's
    /// log.cleaner.backoff.ms).
    #[arg(long, env = "TIDELINE_LOG_CLEANER_INTERVAL_MS", default_value_t = 15_000)]
    pub log_cleaner_interval_ms: u64,
    /// Disk bytes per second the log cleaner may read and write, over all logs (Kafka's
    /// log.cleaner.io.max.bytes.per.second).
    #[arg(long, env = "TIDELINE_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND", default_value_t = 64 << 20)]
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// Default share of dirty bytes at which a compacted log is cleaned, 0 to 1 (topic config
    /// min.cleanable.dirty.ratio).
    #[arg(long, env = "TIDELINE_LOG_CLEANER_MIN_CLEANABLE_RATIO", default_value_t = 0.5)]
    pub log_cleaner_min_cleanable_ratio: f64,
    /// Default time a compacted log keeps tombstones, in ms (topic config delete.retention.ms).
    #[arg(long, env = "TIDELINE_LOG_CLEANER_DELETE_RETENTION_MS", default_value_t = 24 * 3600 * 1000)]
    pub log_cleaner_delete_retention_ms: u64,
    /// Default minimum age of a record before it may be compacted, in ms (topic config
    /// min.compaction.lag.ms).
    #[arg(long, env = "TIDELINE_LOG_CLEANER_MIN_COMPACTION_LAG_MS", default_value_t = 0)]
    pub log_cleaner_min_compaction_lag_ms: u64,
    /// Memory for the log cleaner's key -> offset map, in bytes (Kafka's
    /// log.cleaner.dedupe.buffer.size).
    #[arg(long, env = "TIDELINE_LOG_CLEANER_DEDUPE_BUFFER_SIZE", default_value_t = 128 << 20)]
    pub log_cleaner_dedupe_buffer_size: usize,
    /// Log format: text or json.
    #[arg(long, env = "TIDELINE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "TIDELINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl TryFrom<Options> for (BrokerConfig, SocketAddr) {
    type Error = String;

    fn try_from(o: Options) -> Result<Self, String> {
        o.resolve(tideline_common::hostname::own_hostname)
    }
}

impl Options {
    /// The config and listen address, with `hostname` for --broker-id-from-hostname and a
    /// default advertised host.
    fn resolve(
        self,
        hostname: impl Fn() -> Result<String, String>,
    ) -> Result<(BrokerConfig, SocketAddr), String> {
        let o = self;
        let broker_id = match o.broker_id {
            Some(id) => id,
            None => {
                let flag = "--broker-id-from-hostname";
                let ordinal = tideline_common::hostname::ordinal_for(flag, hostname())?;
                i32::try_from(ordinal)
                    .map_err(|_| format!("{flag}: ordinal {ordinal} is not a broker id"))?
            }
        };
        if o.log_format != "text" && o.log_format != "json" {
            return Err(format!("--log-format {:?} is not text or json", o.log_format));
        }
        let advertised_host = match o.advertised_host {
            Some(h) => h,
            None if !o.listen.ip().is_unspecified() => o.listen.ip().to_string(),
            None => hostname()
                .ok()
                .filter(|h| !h.is_empty())
                .ok_or("cannot tell the host name; set --advertised-host")?,
        };
        let mut c = BrokerConfig::new(broker_id, o.data_dir, o.controllers);
        c.metrics_listen = o.metrics_listen;
        c.advertised_host = advertised_host;
        c.rack = o.rack;
        c.log_defaults.segment_bytes = o.log_segment_bytes;
        c.log_defaults.retention_ms = u64::try_from(o.log_retention_ms).ok();
        c.log_defaults.retention_bytes = u64::try_from(o.log_retention_bytes).ok();
        c.log_defaults.max_batch_bytes = o.message_max_bytes;
        if let Some(ms) = o.log_flush_interval_ms {
            c.log_defaults.flush = FlushPolicy::IntervalMs(ms);
        }
        c.log_defaults.delete_retention_ms = o.log_cleaner_delete_retention_ms;
        c.log_defaults.min_compaction_lag_ms = o.log_cleaner_min_compaction_lag_ms;
        c.retention_check_interval = Duration::from_millis(o.retention_check_interval_ms);
        c.log_cleaner = LogCleanerConfig {
            interval: Duration::from_millis(o.log_cleaner_interval_ms),
            io_max_bytes_per_second: o.log_cleaner_io_max_bytes_per_second,
            min_cleanable_ratio: o.log_cleaner_min_cleanable_ratio,
            dedupe_buffer_bytes: o.log_cleaner_dedupe_buffer_size,
        };
        c.replica_lag_time_max = Duration::from_millis(o.replica_lag_time_max_ms);
        c.produce_timeout = Duration::from_millis(o.produce_timeout_ms);
        c.data_listen = o.data_listen;
        c.data_max_connections = o.data_max_connections;
        c.validate()?;
        Ok((c, o.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<(BrokerConfig, SocketAddr), String> {
        let mut all = vec!["tideline-broker"];
        all.extend_from_slice(args);
        Options::try_parse_from(all).map_err(|e| e.to_string())?.try_into()
    }

    /// --broker-id-from-hostname: pod `NAME-N` is broker N; a hostname without an ordinal is
    /// one clear error, and the two ways of naming the id exclude each other.
    #[test]
    fn the_broker_id_can_come_from_a_statefulset_hostname() {
        let args = ["b", "--controllers", "a:1", "--broker-id-from-hostname"];
        let options = Options::try_parse_from(args).unwrap();
        let (c, _) = options.clone().resolve(|| Ok("tideline-broker-4".into())).unwrap();
        assert_eq!((c.broker_id, c.advertised_host.as_str()), (4, "tideline-broker-4"));
        let error = options.resolve(|| Ok("broker".into())).unwrap_err();
        assert!(error.contains("--broker-id-from-hostname") && error.contains("-N"), "{error}");
        let both = Options::try_parse_from(args.into_iter().chain(["--broker-id", "1"]));
        assert!(both.unwrap_err().to_string().contains("cannot be used with"));
    }

    #[test]
    fn options_become_a_config_or_one_clear_error() {
        let (c, listen) = parse(&[
            "--broker-id",
            "3",
            "--controllers",
            "a:7001,b:7002",
            "--listen",
            "127.0.0.1:0",
            "--log-retention-ms",
            "-1",
            "--log-cleaner-interval-ms",
            "200",
            "--log-cleaner-delete-retention-ms",
            "0",
        ])
        .unwrap();
        assert_eq!((c.broker_id, c.controllers.len(), listen.port()), (3, 2, 0));
        assert_eq!(c.advertised_host, "127.0.0.1");
        assert_eq!(c.log_defaults.retention_ms, None);
        assert_eq!(c.log_cleaner.interval, Duration::from_millis(200));
        assert_eq!(c.log_cleaner.io_max_bytes_per_second, 64 << 20);
        assert_eq!(c.log_defaults.delete_retention_ms, 0);
        for (args, message) in [
            (&["--broker-id", "-1", "--controllers", "a:1"][..], "negative"),
            (&["--broker-id", "1", "--controllers", "a"][..], "HOST:PORT"),
            (
                &["--broker-id", "1", "--controllers", "a:1", "--log-segment-bytes", "3"][..],
                "segment",
            ),
            (
                &["--broker-id", "1", "--controllers", "a:1", "--log-format", "xml"][..],
                "text or json",
            ),
            (
                &["--broker-id", "1", "--controllers", "a:1", "--message-max-bytes", "999999999"][..],
                "request limit",
            ),
            (
                &[
                    "--broker-id",
                    "1",
                    "--controllers",
                    "a:1",
                    "--log-cleaner-min-cleanable-ratio",
                    "1.5",
                ][..],
                "cleanable ratio",
            ),
            (
                &["--broker-id", "1", "--controllers", "a:1", "--log-cleaner-interval-ms", "0"][..],
                "cleaner interval",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(message), "{args:?}: {err}");
        }
    }
}
