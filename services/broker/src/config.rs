//! [`BrokerConfig`]: what one storage broker needs to run: its id, where its logs live, how to
//! reach the controllers, what address to advertise, and the log defaults for topics that set
//! nothing.

use std::path::PathBuf;
use std::time::Duration;

use tideline_log::LogConfig;

/// Largest gRPC message the broker accepts or sends (a produce request or fetch response).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Settings of the log cleaner, which compacts the logs of `cleanup.policy=compact` topics.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCleanerConfig {
    /// How often the cleaner looks for logs to clean (Kafka's `log.cleaner.backoff.ms`).
    pub interval: Duration,
    /// Disk bytes per second the cleaner may read and write, over all logs
    /// (`log.cleaner.io.max.bytes.per.second`).
    pub io_max_bytes_per_second: u64,
    /// `min.cleanable.dirty.ratio` for topics that set none: a log is cleaned once this share
    /// of its cleanable bytes is dirty (`log.cleaner.min.cleanable.ratio`).
    pub min_cleanable_ratio: f64,
    /// Memory for the key -> offset map of one clean (`log.cleaner.dedupe.buffer.size`).
    pub dedupe_buffer_bytes: usize,
}

impl Default for LogCleanerConfig {
    /// Kafka's defaults, with 64 MiB/s of I/O.
    fn default() -> Self {
        LogCleanerConfig {
            interval: Duration::from_secs(15),
            io_max_bytes_per_second: 64 << 20,
            min_cleanable_ratio: 0.5,
            dedupe_buffer_bytes: tideline_log::DEFAULT_OFFSET_MAP_BYTES,
        }
    }
}

/// Settings of one broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This broker's id, unique in the cluster.
    pub broker_id: i32,
    /// Directory holding one sub-directory per partition replica.
    pub data_dir: PathBuf,
    /// Controller addresses (host:port); any one of them is enough to find the others.
    pub controllers: Vec<String>,
    /// Host clients use to reach this broker; the port is the bound listener's.
    pub advertised_host: String,
    /// Rack, for rack-aware placement; empty when unknown.
    pub rack: String,
    /// Log settings for topics that do not set their own.
    pub log_defaults: LogConfig,
    /// How often retention deletes old segments.
    pub retention_check_interval: Duration,
    /// Longest `max_wait_ms` a fetch may ask for.
    pub max_fetch_wait: Duration,
    /// Where the sendfile data listener listens; `None`: the gRPC listener's address with a
    /// port the system picks.
    pub data_listen: Option<std::net::SocketAddr>,
    /// Most connections the data listener serves at once; one more is closed at once.
    pub data_max_connections: usize,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A follower that has not caught up with the leader for this long leaves the ISR
    /// (`replica.lag.time.max.ms`).
    pub replica_lag_time_max: Duration,
    /// How long an acks=all produce waits for the in-sync replicas when the request sets no
    /// timeout.
    pub produce_timeout: Duration,
    /// The log cleaner (compaction).
    pub log_cleaner: LogCleanerConfig,
}

impl BrokerConfig {
    /// A config with the default log settings, a 30 s retention check, fetch waits capped at
    /// 30 s and the default log cleaner.
    pub fn new(broker_id: i32, data_dir: impl Into<PathBuf>, controllers: Vec<String>) -> Self {
        BrokerConfig {
            broker_id,
            data_dir: data_dir.into(),
            controllers,
            advertised_host: "127.0.0.1".into(),
            rack: String::new(),
            log_defaults: LogConfig::default(),
            retention_check_interval: Duration::from_secs(30),
            max_fetch_wait: Duration::from_secs(30),
            data_listen: None,
            data_max_connections: 1024,
            metrics_listen: None,
            replica_lag_time_max: Duration::from_secs(30),
            produce_timeout: Duration::from_secs(30),
            log_cleaner: LogCleanerConfig::default(),
        }
    }

    /// Checks the values that the rest of the broker relies on.
    ///
    /// # Errors
    /// A one-line message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.broker_id < 0 {
            return Err(format!("broker id {} is negative", self.broker_id));
        }
        if self.controllers.is_empty() {
            return Err("no controller address given".into());
        }
        for c in &self.controllers {
            if tideline_common::host_port(c).is_none() {
                return Err(format!("controller address {c:?} is not HOST:PORT"));
            }
        }
        if self.advertised_host.is_empty() || self.advertised_host.len() > 255 {
            return Err(format!("advertised host {:?} is empty or too long", self.advertised_host));
        }
        if self.rack.len() > 255 {
            return Err("rack is longer than 255 bytes".into());
        }
        if self.data_max_connections == 0
            || self.data_max_connections > tokio::sync::Semaphore::MAX_PERMITS
        {
            return Err("data max connections must be positive".into());
        }
        if self.replica_lag_time_max < Duration::from_millis(100) {
            return Err("replica lag time max must be at least 100 ms".into());
        }
        if self.produce_timeout.is_zero() {
            return Err("produce timeout must be positive".into());
        }
        if self.retention_check_interval.is_zero() {
            return Err("retention check interval must be positive".into());
        }
        let cleaner = &self.log_cleaner;
        if cleaner.interval.is_zero() {
            return Err("log cleaner interval must be positive".into());
        }
        if cleaner.io_max_bytes_per_second == 0 {
            return Err("log cleaner io max bytes per second must be positive".into());
        }
        if !(0.0..=1.0).contains(&cleaner.min_cleanable_ratio) {
            return Err(format!(
                "log cleaner min cleanable ratio {} must be between 0 and 1",
                cleaner.min_cleanable_ratio
            ));
        }
        if cleaner.dedupe_buffer_bytes < (1 << 20) {
            return Err(format!(
                "log cleaner dedupe buffer size {} must be at least 1 MiB",
                cleaner.dedupe_buffer_bytes
            ));
        }
        self.log_defaults.validate().map_err(|e| e.to_string())?;
        if self.log_defaults.max_batch_bytes > MAX_MESSAGE_BYTES - 1024 {
            return Err(format!(
                "max message bytes {} exceeds the broker's request limit of {} bytes",
                self.log_defaults.max_batch_bytes,
                MAX_MESSAGE_BYTES - 1024
            ));
        }
        Ok(())
    }
}
