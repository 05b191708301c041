//! [`Metadata`]: one snapshot of the cluster metadata (brokers, topics, partition leaders,
//! group coordinators and the owners of the `__consumer_offsets` shards) as a controller
//! reported it, indexed for the lookups clients make on every request.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use tideline_proto::v1::{
    BrokerMetadata, CoordinatorMetadata, GetMetadataResponse, PartitionMetadata, ShardAssignment,
    TopicMetadata,
};

/// A snapshot of cluster metadata from `GetMetadata`. Cheap lookups by topic, partition,
/// broker id and group; never changes once built (the cache swaps in a new snapshot).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    version: u64,
    controller_leader_id: i32,
    brokers: HashMap<i32, BrokerMetadata>,
    /// Looked up for every record a producer sends: a fast hash, not SipHash.
    topics: HashMap<String, TopicEntry, RandomState>,
    /// Live group coordinators by coordinator id.
    coordinators: HashMap<String, CoordinatorMetadata>,
    /// Owner of each shard of `__consumer_offsets`, by shard index.
    shards: Vec<ShardAssignment>,
}

#[derive(Debug, Clone)]
struct TopicEntry {
    metadata: TopicMetadata,
    /// Partitions that have a leader, for the sticky partitioner.
    available: Vec<i32>,
}

impl Metadata {
    /// Indexes a `GetMetadata` answer.
    pub fn from_response(response: GetMetadataResponse) -> Self {
        let brokers = response
            .brokers
            .into_iter()
            .filter_map(|b| Some((b.endpoint.as_ref()?.broker_id, b)))
            .collect();
        let topics = response
            .topics
            .into_iter()
            .map(|mut t| {
                t.partitions.sort_by_key(|p| p.partition);
                let available =
                    t.partitions.iter().filter(|p| p.leader >= 0).map(|p| p.partition).collect();
                (t.name.clone(), TopicEntry { metadata: t, available })
            })
            .collect();
        let coordinators = response
            .coordinators
            .into_iter()
            .filter_map(|c| Some((c.endpoint.as_ref()?.coordinator_id.clone(), c)))
            .collect();
        let mut shards = response.shards;
        shards.sort_by_key(|s| s.shard);
        Metadata {
            version: response.version,
            controller_leader_id: response.controller_leader_id,
            brokers,
            topics,
            coordinators,
            shards,
        }
    }

    /// The metadata version this snapshot reflects.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Id of the controller that led the quorum when this was fetched, if one did.
    pub fn controller_leader_id(&self) -> Option<i32> {
        (self.controller_leader_id >= 0).then_some(self.controller_leader_id)
    }

    /// Every registered broker, in no particular order.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerMetadata> {
        self.brokers.values()
    }

    /// The broker with this id.
    pub fn broker(&self, id: i32) -> Option<&BrokerMetadata> {
        self.brokers.get(&id)
    }

    /// The gRPC address (`host:port`) of the broker with this id.
    pub fn broker_address(&self, id: i32) -> Option<String> {
        let endpoint = self.brokers.get(&id)?.endpoint.as_ref()?;
        Some(host_port(&endpoint.host, endpoint.port))
    }

    /// The topics in this snapshot, in no particular order.
    pub fn topics(&self) -> impl Iterator<Item = &TopicMetadata> {
        self.topics.values().map(|t| &t.metadata)
    }

    /// The topic of this name.
    pub fn topic(&self, name: &str) -> Option<&TopicMetadata> {
        self.topics.get(name).map(|t| &t.metadata)
    }

    /// The topic's partition count.
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.topic(topic).map(|t| t.partitions.len() as i32)
    }

    /// One partition of a topic.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionMetadata> {
        let partitions = &self.topic(topic)?.partitions;
        match usize::try_from(partition).ok().and_then(|i| partitions.get(i)) {
            Some(p) if p.partition == partition => Some(p),
            _ => partitions.iter().find(|p| p.partition == partition),
        }
    }

    /// Broker id of the partition's leader, if it has one.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.partition(topic, partition).map(|p| p.leader).filter(|&l| l >= 0)
    }

    /// Every live group coordinator, in no particular order.
    pub fn coordinators(&self) -> impl Iterator<Item = &CoordinatorMetadata> {
        self.coordinators.values()
    }

    /// The gRPC address (`host:port`) of the live coordinator with this id.
    pub fn coordinator_address(&self, coordinator_id: &str) -> Option<String> {
        let endpoint = self.coordinators.get(coordinator_id)?.endpoint.as_ref()?;
        Some(host_port(&endpoint.host, endpoint.port))
    }

    /// The owners of the shards of `__consumer_offsets`, by shard index (empty until the first
    /// coordinator registered).
    pub fn shards(&self) -> &[ShardAssignment] {
        &self.shards
    }

    /// The shard of `__consumer_offsets` holding `group` (Kafka's
    /// `abs(javaHash(group)) % shards`), when there are shards.
    pub fn shard_for(&self, group: &str) -> Option<i32> {
        let count = i32::try_from(self.shards.len()).ok().filter(|&c| c > 0)?;
        Some(tideline_common::shard_for(group, count))
    }

    /// The coordinator of `group`: the id and address (`host:port`) of the live coordinator
    /// owning the group's shard. `None` when there are no shards yet, the shard has no owner,
    /// or its owner is not live.
    pub fn coordinator_for(&self, group: &str) -> Option<(String, String)> {
        let shard = self.shard_for(group)?;
        let owner = match usize::try_from(shard).ok().and_then(|i| self.shards.get(i)) {
            Some(s) if s.shard == shard => s,
            _ => self.shards.iter().find(|s| s.shard == shard)?,
        };
        if owner.coordinator_id.is_empty() {
            return None;
        }
        let address = self.coordinator_address(&owner.coordinator_id)?;
        Some((owner.coordinator_id.clone(), address))
    }

    /// Partitions of the topic that have a leader (empty for an unknown topic).
    pub(crate) fn available_partitions(&self, topic: &str) -> &[i32] {
        self.topics.get(topic).map_or(&[], |t| &t.available)
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub(crate) fn host_port(host: &str, port: u32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tideline_proto::v1::{BrokerEndpoint, CoordinatorEndpoint};

    /// A response with brokers 1..=3 and topic `orders` whose partition `i` is led by
    /// `leaders[i]` (-1: no leader).
    pub(crate) fn response(leaders: &[i32]) -> GetMetadataResponse {
        GetMetadataResponse {
            version: 7,
            brokers: (1..=3)
                .map(|id| BrokerMetadata {
                    endpoint: Some(BrokerEndpoint {
                        broker_id: id,
                        host: format!("10.0.0.{id}"),
                        port: 7400,
                        ..Default::default()
                    }),
                    broker_epoch: 1,
                    fenced: false,
                    shutting_down: false,
                })
                .collect(),
            topics: vec![TopicMetadata {
                name: "orders".into(),
                replication_factor: 1,
                // Out of order on purpose: lookups must not depend on the wire order.
                partitions: leaders
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, &leader)| PartitionMetadata {
                        partition: i as i32,
                        leader,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            controller_leader_id: 2,
            coordinators: ["c-a", "c-b"]
                .iter()
                .enumerate()
                .map(|(i, id)| CoordinatorMetadata {
                    endpoint: Some(CoordinatorEndpoint {
                        coordinator_id: id.to_string(),
                        host: format!("10.0.1.{i}"),
                        port: 7500,
                    }),
                    coordinator_epoch: 1,
                })
                .collect(),
            // Shard 2 has no owner, shard 3's owner is gone.
            shards: [(1, "c-b"), (0, "c-a"), (2, ""), (3, "c-gone")]
                .iter()
                .map(|&(shard, owner)| ShardAssignment {
                    shard,
                    coordinator_id: owner.to_string(),
                    shard_epoch: 1,
                    releasing: false,
                })
                .collect(),
        }
    }

    /// Lookups by topic, partition and broker id give what the response said.
    #[test]
    fn lookups() {
        let m = Metadata::from_response(response(&[1, -1, 3]));
        assert_eq!(m.version(), 7);
        assert_eq!(m.controller_leader_id(), Some(2));
        assert_eq!(m.partition_count("orders"), Some(3));
        assert_eq!(m.partition_count("missing"), None);
        assert_eq!(m.leader("orders", 0), Some(1));
        assert_eq!(m.leader("orders", 1), None);
        assert_eq!(m.leader("orders", 2), Some(3));
        assert_eq!(m.leader("orders", 3), None);
        assert_eq!(m.available_partitions("orders"), [0, 2]);
        assert_eq!(m.broker_address(3).as_deref(), Some("10.0.0.3:7400"));
        assert_eq!(m.broker_address(9), None);
        assert_eq!(host_port("::1", 7400), "[::1]:7400");
    }

    /// A group's coordinator is the live owner of its shard, per Kafka's hash; a shard
    /// without a live owner gives none.
    #[test]
    fn group_coordinators() {
        let m = Metadata::from_response(response(&[1]));
        assert_eq!(m.coordinators().count(), 2);
        assert_eq!(m.shards().iter().map(|s| s.shard).collect::<Vec<_>>(), [0, 1, 2, 3]);
        // Java's "a".hashCode() is 97, "b" is 98, "c" is 99, "d" is 100.
        assert_eq!(m.shard_for("a"), Some(1));
        assert_eq!(m.coordinator_for("a"), Some(("c-b".into(), "10.0.1.1:7500".into())));
        assert_eq!(m.coordinator_for("d"), Some(("c-a".into(), "10.0.1.0:7500".into())));
        assert_eq!(m.coordinator_for("b"), None, "shard 2 has no owner");
        assert_eq!(m.coordinator_for("c"), None, "shard 3's owner is not live");
        assert_eq!(Metadata::default().coordinator_for("a"), None, "no shards yet");
    }
}
