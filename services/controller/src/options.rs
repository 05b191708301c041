//! [`Options`]: the controller's command line and `TIDELINE_*` environment, validated into a
//! [`NodeConfig`] and a listen address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::node::NodeConfig;

/// Runs one controller of Tideline's metadata quorum.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tideline-controller", version)]
pub struct Options {
    /// This controller's node id; must appear in --peers. Or --node-id-from-hostname.
    #[arg(long, env = "TIDELINE_NODE_ID", required_unless_present = "node_id_from_hostname")]
    pub node_id: Option<u64>,
    /// Take the node id from the hostname of a StatefulSet pod: `NAME-N` is node N + 1
    /// (`tideline-controller-0` is node 1).
    #[arg(long, env = "TIDELINE_NODE_ID_FROM_HOSTNAME", conflicts_with = "node_id")]
    pub node_id_from_hostname: bool,
    /// Every controller of the quorum as ID=HOST:PORT, comma separated, this one included.
    #[arg(long, env = "TIDELINE_PEERS", value_delimiter = ',', required = true)]
    pub peers: Vec<String>,
    /// Address to listen on; defaults to 0.0.0.0 with this node's port from --peers.
    #[arg(long, env = "TIDELINE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the Raft log, vote and snapshots.
    #[arg(long, env = "TIDELINE_DATA_DIR", default_value = "tideline-data/controller")]
    pub data_dir: PathBuf,
    /// A broker that does not heartbeat for this long is fenced, in ms.
    #[arg(long, env = "TIDELINE_BROKER_LEASE_MS", default_value_t = 6000)]
    pub broker_lease_ms: u64,
    /// Partitions (shards) of the internal `__consumer_offsets` topic, created when the first
    /// group coordinator registers; fixed afterwards.
    #[arg(long, env = "TIDELINE_OFFSETS_TOPIC_PARTITIONS", default_value_t = 16)]
    pub offsets_topic_partitions: i32,
    /// `segment.bytes` of `__consumer_offsets`: smaller segments are compacted sooner.
    #[arg(long, env = "TIDELINE_OFFSETS_TOPIC_SEGMENT_BYTES", default_value_t = 100 << 20)]
    pub offsets_topic_segment_bytes: u64,
    /// Replication factor of `__consumer_offsets`; it is created once that many brokers are
    /// live (set 1 for a single-broker cluster).
    #[arg(long, env = "TIDELINE_OFFSETS_TOPIC_REPLICATION_FACTOR", default_value_t = 3)]
    pub offsets_topic_replication_factor: i32,
    /// Raft heartbeat interval in ms; the election timeout is 4-8 times it.
    #[arg(long, env = "TIDELINE_RAFT_HEARTBEAT_MS", default_value_t = 200)]
    pub raft_heartbeat_ms: u64,
    /// Log format: text or json.
    #[arg(long, env = "TIDELINE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "TIDELINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Start outside the quorum and wait to be added to it (`tide controllers add`), never
    /// initializing a quorum of its own. Implied when --peers does not name this node (then
    /// --listen is required).
    #[arg(long, env = "TIDELINE_JOIN")]
    pub join: bool,
}

impl TryFrom<Options> for (NodeConfig, SocketAddr) {
    type Error = String;

    fn try_from(o: Options) -> Result<Self, String> {
        o.resolve(tideline_common::hostname::own_hostname)
    }
}

impl Options {
    /// The config and listen address, with `hostname` for --node-id-from-hostname.
    fn resolve(
        self,
        hostname: impl FnOnce() -> Result<String, String>,
    ) -> Result<(NodeConfig, SocketAddr), String> {
        let o = self;
        // --node-id, or the hostname's StatefulSet ordinal + 1.
        let node_id = match o.node_id {
            Some(id) => id,
            None => {
                let flag = "--node-id-from-hostname";
                let ordinal = tideline_common::hostname::ordinal_for(flag, hostname())?;
                ordinal
                    .checked_add(1)
                    .ok_or_else(|| format!("{flag}: ordinal {ordinal} is too large"))?
            }
        };
        let mut peers = BTreeMap::new();
        for p in &o.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| format!("--peers entry {p:?} is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("--peers entry {p:?}: {id:?} is not a node id"))?;
            if tideline_common::host_port(addr).is_none() {
                return Err(format!("--peers entry {p:?}: {addr:?} is not HOST:PORT"));
            }
            if peers.insert(id, addr.trim().to_string()).is_some() {
                return Err(format!("--peers names node {id} twice"));
            }
        }
        let listen = match (o.listen, peers.get(&node_id)) {
            (Some(a), _) => a,
            (None, Some(own)) => {
                let (_, port) = tideline_common::host_port(own).expect("checked");
                SocketAddr::from(([0, 0, 0, 0], port))
            }
            (None, None) => {
                return Err(format!(
                    "--node-id {node_id} is not in --peers: a joining controller needs --listen"
                ));
            }
        };
        if o.broker_lease_ms < 100 {
            return Err(format!("--broker-lease-ms {} is below 100", o.broker_lease_ms));
        }
        if !(1..=1000).contains(&o.offsets_topic_partitions) {
            return Err(format!(
                "--offsets-topic-partitions {} is not between 1 and 1000",
                o.offsets_topic_partitions
            ));
        }
        if !(1024..=i32::MAX as u64).contains(&o.offsets_topic_segment_bytes) {
            return Err(format!(
                "--offsets-topic-segment-bytes {} is not between 1024 and {}",
                o.offsets_topic_segment_bytes,
                i32::MAX
            ));
        }
        if !(1..=10).contains(&o.offsets_topic_replication_factor) {
            return Err(format!(
                "--offsets-topic-replication-factor {} is not between 1 and 10",
                o.offsets_topic_replication_factor
            ));
        }
        if o.raft_heartbeat_ms == 0 {
            return Err("--raft-heartbeat-ms must be positive".into());
        }
        if o.log_format != "text" && o.log_format != "json" {
            return Err(format!("--log-format {:?} is not text or json", o.log_format));
        }
        let mut config = NodeConfig::new(node_id, o.data_dir, peers);
        config.metrics_listen = o.metrics_listen;
        config.join = o.join || !config.peers.contains_key(&node_id);
        config.broker_lease_ms = o.broker_lease_ms;
        config.heartbeat_interval_ms = o.raft_heartbeat_ms;
        config.offsets_topic_partitions = o.offsets_topic_partitions;
        config.offsets_topic_segment_bytes = o.offsets_topic_segment_bytes;
        config.offsets_topic_replication_factor = o.offsets_topic_replication_factor;
        config.election_timeout_ms = (o.raft_heartbeat_ms * 4, o.raft_heartbeat_ms * 8);
        Ok((config, listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<(NodeConfig, SocketAddr), String> {
        let mut all = vec!["tideline-controller"];
        all.extend_from_slice(args);
        Options::try_parse_from(all).map_err(|e| e.to_string())?.try_into()
    }

    /// --node-id-from-hostname: pod `NAME-N` is node N + 1; a hostname without an ordinal,
    /// or both ways at once, is one clear error.
    #[test]
    fn the_node_id_can_come_from_a_statefulset_hostname() {
        let peers = ["--peers", "1=a:7001,2=b:7002,3=c:7003", "--node-id-from-hostname"];
        let options = Options::try_parse_from(std::iter::once("c").chain(peers)).unwrap();
        let (config, listen) =
            options.clone().resolve(|| Ok("tideline-controller-2".into())).unwrap();
        assert_eq!((config.node_id, listen.port()), (3, 7003));
        let error = options.resolve(|| Ok("controller".into())).unwrap_err();
        assert!(error.contains("--node-id-from-hostname") && error.contains("-N"), "{error}");
        let both = Options::try_parse_from(["c", "--node-id", "1"].into_iter().chain(peers));
        assert!(both.unwrap_err().to_string().contains("cannot be used with"));
        let neither = Options::try_parse_from(["c", "--peers", "1=a:1"]);
        assert!(neither.unwrap_err().to_string().contains("--node-id"));
    }

    #[test]
    fn options_become_a_config_or_one_clear_error() {
        let (config, listen) =
            parse(&["--node-id", "2", "--peers", "1=a:7001,2=b:7002,3=c:7003"]).unwrap();
        assert_eq!(config.peers.len(), 3);
        assert_eq!(listen.port(), 7002);
        for (args, message) in [
            (&["--node-id", "4", "--peers", "1=a:7001"][..], "needs --listen"),
            (&["--node-id", "1", "--peers", "1=a"][..], "HOST:PORT"),
            (&["--node-id", "1", "--peers", "x=a:1"][..], "not a node id"),
            (&["--node-id", "1", "--peers", "1=a:1,1=b:2"][..], "twice"),
            (&["--node-id", "1", "--peers", "1=a:1", "--broker-lease-ms", "5"][..], "below 100"),
            (
                &["--node-id", "1", "--peers", "1=a:1", "--offsets-topic-partitions", "0"][..],
                "not between 1 and 1000",
            ),
            (&["--node-id", "1", "--peers", "1=a:1", "--log-format", "xml"][..], "text or json"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(message), "{args:?}: {err}");
        }
    }
}
