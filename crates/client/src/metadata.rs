//! [`Metadata`]: one snapshot of the cluster metadata (brokers, topics, partition leaders) as
//! a controller reported it, indexed for the lookups clients make on every request.

use std::collections::HashMap;

use tideline_proto::v1::{BrokerMetadata, GetMetadataResponse, PartitionMetadata, TopicMetadata};

/// A snapshot of cluster metadata from `GetMetadata`. Cheap lookups by topic, partition and
/// broker id; never changes once built (the cache swaps in a new snapshot).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    version: u64,
    controller_leader_id: i32,
    brokers: HashMap<i32, BrokerMetadata>,
    topics: HashMap<String, TopicEntry>,
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
        Metadata {
            version: response.version,
            controller_leader_id: response.controller_leader_id,
            brokers,
            topics,
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
    use tideline_proto::v1::BrokerEndpoint;

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
}
