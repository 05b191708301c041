//! [`CoordinatorConfig`]: a group coordinator's settings.

use std::time::Duration;

use crate::group::GroupConfig;

/// Longest group id, member id, instance id or rack accepted (they are stored in records).
pub const MAX_ID_BYTES: usize = 255;

/// Settings of one group coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Unique name of this coordinator (e.g. its pod name). A restart under the same name
    /// takes its shards back after replaying them.
    pub coordinator_id: String,
    /// Host clients use to reach it.
    pub advertised_host: String,
    /// Controller addresses (host:port).
    pub controllers: Vec<String>,
    /// Settings of new groups: session timeout, heartbeat interval, default assignor.
    pub group: GroupConfig,
    /// How often groups are checked for expired sessions and the topics of the cluster are
    /// refreshed (new partitions and new topics matching a pattern reach the assignments).
    pub housekeeping_interval: Duration,
    /// Bounds each write of the offsets topic and each controller call.
    pub request_timeout: Duration,
    /// How often consumer lag (per group and partition) is measured for metrics.
    pub lag_interval: Duration,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere. Installed by [`crate::run`]
    /// (the recorder is process-wide).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl CoordinatorConfig {
    /// A config with the defaults: session timeout 45 s, heartbeat interval 5 s (as Kafka's
    /// `group.consumer.*`), uniform assignor, housekeeping every second.
    pub fn new(coordinator_id: impl Into<String>, controllers: Vec<String>) -> Self {
        CoordinatorConfig {
            coordinator_id: coordinator_id.into(),
            advertised_host: "127.0.0.1".into(),
            controllers,
            group: GroupConfig::default(),
            housekeeping_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            lag_interval: Duration::from_secs(10),
            metrics_listen: None,
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// A one-line description of the first invalid value.
    pub fn validate(&self) -> Result<(), String> {
        if self.coordinator_id.is_empty() || self.coordinator_id.len() > MAX_ID_BYTES {
            return Err(format!(
                "coordinator id {:?} must be 1 to {MAX_ID_BYTES} bytes",
                self.coordinator_id
            ));
        }
        if self.advertised_host.is_empty() {
            return Err("advertised host is empty".into());
        }
        if self.controllers.is_empty() {
            return Err("no controller address".into());
        }
        if self.group.heartbeat_interval_ms <= 0
            || self.group.session_timeout_ms <= self.group.heartbeat_interval_ms
        {
            return Err(format!(
                "session timeout {} ms must exceed the heartbeat interval {} ms (> 0)",
                self.group.session_timeout_ms, self.group.heartbeat_interval_ms
            ));
        }
        if self.housekeeping_interval.is_zero()
            || self.request_timeout.is_zero()
            || self.lag_interval.is_zero()
        {
            return Err(
                "housekeeping interval, lag interval and request timeout must be positive".into()
            );
        }
        Ok(())
    }
}
