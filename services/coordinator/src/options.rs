//! [`Options`]: the coordinator's command line and `TIDELINE_*` environment, validated into a
//! [`CoordinatorConfig`] and a listen address.

use std::net::SocketAddr;
use std::time::Duration;

use crate::assignor::Assignor;
use crate::config::CoordinatorConfig;

/// Runs one Tideline group coordinator.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tideline-coordinator", version)]
pub struct Options {
    /// Unique name of this coordinator; defaults to the host name (a pod's name).
    #[arg(long, env = "TIDELINE_COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    /// Controller addresses as HOST:PORT, comma separated.
    #[arg(long, env = "TIDELINE_CONTROLLERS", value_delimiter = ',', required = true)]
    pub controllers: Vec<String>,
    /// Address to serve gRPC on; port 0 picks a free port (registered with the controller).
    #[arg(long, env = "TIDELINE_LISTEN", default_value = "0.0.0.0:9095")]
    pub listen: SocketAddr,
    /// Host clients use to reach this coordinator; defaults to the listen address, or the
    /// machine's host name when listening on all interfaces.
    #[arg(long, env = "TIDELINE_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// A member that does not heartbeat for this long leaves its group, in ms.
    #[arg(long, env = "TIDELINE_GROUP_SESSION_TIMEOUT_MS", default_value_t = 45_000)]
    pub group_session_timeout_ms: i64,
    /// How often members heartbeat, in ms.
    #[arg(long, env = "TIDELINE_GROUP_HEARTBEAT_INTERVAL_MS", default_value_t = 5_000)]
    pub group_heartbeat_interval_ms: i64,
    /// Server-side assignor of groups whose members ask for none: uniform or range.
    #[arg(long, env = "TIDELINE_GROUP_ASSIGNOR", default_value = "uniform")]
    pub group_assignor: String,
    /// How often sessions are checked and topics refreshed, in ms.
    #[arg(long, env = "TIDELINE_HOUSEKEEPING_INTERVAL_MS", default_value_t = 1_000)]
    pub housekeeping_interval_ms: u64,
    /// How often consumer lag is measured for metrics, in ms.
    #[arg(long, env = "TIDELINE_LAG_INTERVAL_MS", default_value_t = 10_000)]
    pub lag_interval_ms: u64,
    /// Address to serve Prometheus metrics on (`/metrics`); none when unset.
    #[arg(long, env = "TIDELINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long, env = "TIDELINE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
}

impl TryFrom<Options> for (CoordinatorConfig, SocketAddr) {
    type Error = String;

    fn try_from(o: Options) -> Result<Self, String> {
        let id = match o.coordinator_id {
            Some(id) => id,
            None => {
                host_name().ok_or("--coordinator-id is not set and the host name is unknown")?
            }
        };
        let mut config = CoordinatorConfig::new(id, o.controllers);
        config.advertised_host = match o.advertised_host {
            Some(h) => h,
            None if o.listen.ip().is_unspecified() => {
                host_name().ok_or("--advertised-host is not set and the host name is unknown")?
            }
            None => o.listen.ip().to_string(),
        };
        config.group.session_timeout_ms = o.group_session_timeout_ms;
        config.group.heartbeat_interval_ms = o.group_heartbeat_interval_ms;
        config.group.assignor =
            Assignor::ALL.into_iter().find(|a| a.name() == o.group_assignor).ok_or_else(|| {
                format!("--group-assignor {:?} is not uniform or range", o.group_assignor)
            })?;
        config.housekeeping_interval = Duration::from_millis(o.housekeeping_interval_ms);
        config.lag_interval = Duration::from_millis(o.lag_interval_ms);
        config.metrics_listen = o.metrics_listen;
        if o.log_format != "text" && o.log_format != "json" {
            return Err(format!("--log-format {:?} is not text or json", o.log_format));
        }
        config.validate()?;
        Ok((config, o.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<(CoordinatorConfig, SocketAddr), String> {
        let mut all = vec!["tideline-coordinator", "--controllers", "c:1"];
        all.extend_from_slice(args);
        Options::try_parse_from(all).map_err(|e| e.to_string())?.try_into()
    }

    #[test]
    fn options_become_a_config_or_one_clear_error() {
        let (config, listen) = parse(&[
            "--coordinator-id",
            "coord-0",
            "--listen",
            "127.0.0.1:0",
            "--group-assignor",
            "range",
            "--group-session-timeout-ms",
            "6000",
            "--group-heartbeat-interval-ms",
            "500",
        ])
        .unwrap();
        assert_eq!(config.coordinator_id, "coord-0");
        assert_eq!(config.advertised_host, "127.0.0.1");
        assert_eq!(config.group.assignor, Assignor::Range);
        assert_eq!(config.group.session_timeout_ms, 6000);
        assert_eq!(listen.port(), 0);
        for (args, message) in [
            (&["--coordinator-id", "a", "--group-assignor", "sticky"][..], "not uniform or range"),
            (
                &["--coordinator-id", "a", "--group-session-timeout-ms", "100"][..],
                "must exceed the heartbeat interval",
            ),
            (&["--coordinator-id", ""][..], "must be 1 to 255 bytes"),
            (&["--coordinator-id", "a", "--log-format", "xml"][..], "not text or json"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(message), "{args:?}: {err}");
        }
    }
}
