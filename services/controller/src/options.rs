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
    /// This controller's node id; must appear in --peers.
    #[arg(long, env = "TIDELINE_NODE_ID")]
    pub node_id: u64,
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
}

impl TryFrom<Options> for (NodeConfig, SocketAddr) {
    type Error = String;

    fn try_from(o: Options) -> Result<Self, String> {
        let mut peers = BTreeMap::new();
        for p in &o.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| format!("--peers entry {p:?} is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("--peers entry {p:?}: {id:?} is not a node id"))?;
            if addr.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(format!("--peers entry {p:?}: {addr:?} is not HOST:PORT"));
            }
            if peers.insert(id, addr.trim().to_string()).is_some() {
                return Err(format!("--peers names node {id} twice"));
            }
        }
        let own = peers
            .get(&o.node_id)
            .ok_or_else(|| format!("--node-id {} is not in --peers", o.node_id))?;
        let listen = match o.listen {
            Some(a) => a,
            None => {
                let port: u16 =
                    own.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("checked");
                SocketAddr::from(([0, 0, 0, 0], port))
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
        let mut config = NodeConfig::new(o.node_id, o.data_dir, peers);
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

    #[test]
    fn options_become_a_config_or_one_clear_error() {
        let (config, listen) =
            parse(&["--node-id", "2", "--peers", "1=a:7001,2=b:7002,3=c:7003"]).unwrap();
        assert_eq!(config.peers.len(), 3);
        assert_eq!(listen.port(), 7002);
        for (args, message) in [
            (&["--node-id", "4", "--peers", "1=a:7001"][..], "not in --peers"),
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
