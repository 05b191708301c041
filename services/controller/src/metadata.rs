//! [`MetadataState`]: the cluster metadata the controller quorum replicates (brokers, topics,
//! partitions, leaders, ISR), and [`MetadataCommand`], the Raft log entries that change it.
//!
//! `apply` is a pure, deterministic function: every input it depends on (placement, the time of
//! a registration, ids) is decided by the leader before proposing and carried in the command, so
//! every controller computes the same state from the same log. Refused commands change nothing
//! and leave the version as it was.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A change of cluster metadata, as written to the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// A broker joins or rejoins; it gets a new broker epoch and is unfenced.
    RegisterBroker {
        /// Broker id.
        broker_id: i32,
        /// Advertised host.
        host: String,
        /// gRPC port.
        port: u32,
        /// sendfile data port, 0 for none.
        data_port: u32,
        /// Rack, empty when unknown.
        rack: String,
        /// Unique per broker process start.
        incarnation_id: Vec<u8>,
    },
    /// A broker's lease lapsed: it is fenced and leads nothing.
    FenceBroker {
        /// Broker id.
        broker_id: i32,
        /// The epoch whose lease lapsed; an older epoch (the broker re-registered since) is a
        /// no-op.
        broker_epoch: i64,
    },
    /// Creates a topic with replicas already placed by the leader.
    CreateTopic {
        /// Validated topic name.
        name: String,
        /// Unique topic id.
        topic_id: [u8; 16],
        /// Replicas per partition.
        replication_factor: i32,
        /// Topic configs.
        configs: BTreeMap<String, String>,
        /// Replica broker ids per partition, the preferred leader first.
        assignments: Vec<Vec<i32>>,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Adds partitions to a topic.
    CreatePartitions {
        /// Topic name.
        name: String,
        /// The partition count the request was based on; a different count (a concurrent or
        /// retried request already applied) refuses the command.
        existing: usize,
        /// Replica broker ids of each new partition.
        assignments: Vec<Vec<i32>>,
    },
    /// Sets and removes topic configs (already validated by the leader).
    AlterTopicConfig {
        /// Topic name.
        name: String,
        /// Keys to set.
        set: BTreeMap<String, String>,
        /// Keys to remove.
        remove: Vec<String>,
    },
}

/// Why a command was refused. Deterministic: every controller refuses the same commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    /// A topic of this name exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// No topic of this name.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The topic's partition count changed since the request was planned.
    #[error("topic {name} has {actual} partitions, the request expected {expected}")]
    PartitionCountChanged {
        /// Topic name.
        name: String,
        /// The count the request was based on.
        expected: usize,
        /// The count now.
        actual: usize,
    },
    /// A replica assignment is empty, has duplicates, names an unknown broker, or does not
    /// match the replication factor.
    #[error("invalid replica assignment for partition {partition}: {reason}")]
    InvalidAssignment {
        /// Partition index.
        partition: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What an applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataResponse {
    /// The command was applied; the metadata version after it.
    Applied {
        /// Metadata version after the command.
        version: u64,
    },
    /// A broker registered with this epoch.
    BrokerRegistered {
        /// The broker's new epoch.
        broker_epoch: i64,
        /// Metadata version after the command.
        version: u64,
    },
    /// The command was refused; nothing changed.
    Refused(MetadataError),
    /// A Raft-internal entry (blank or membership) with no metadata effect.
    Internal,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    /// Broker id.
    pub broker_id: i32,
    /// Advertised host.
    pub host: String,
    /// gRPC port.
    pub port: u32,
    /// sendfile data port.
    pub data_port: u32,
    /// Rack.
    pub rack: String,
    /// Current registration's epoch.
    pub broker_epoch: i64,
    /// Process incarnation of the current registration.
    pub incarnation_id: Vec<u8>,
    /// True when its lease lapsed.
    pub fenced: bool,
}

/// A partition's replicas and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Replica broker ids, the preferred leader first.
    pub replicas: Vec<i32>,
    /// Leader broker id, -1 for none.
    pub leader: i32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every change of replicas, ISR or leader.
    pub partition_epoch: i32,
    /// In-sync replicas.
    pub isr: Vec<i32>,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Topic name.
    pub name: String,
    /// Unique id.
    pub topic_id: [u8; 16],
    /// Replicas per partition.
    pub replication_factor: i32,
    /// Configs set on the topic.
    pub configs: BTreeMap<String, String>,
    /// Partitions by index.
    pub partitions: Vec<PartitionRecord>,
}

/// The whole cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    /// Bumped by every applied change.
    pub version: u64,
    /// Registered brokers by id.
    pub brokers: BTreeMap<i32, BrokerRecord>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicRecord>,
    /// The last broker epoch handed out (epochs are unique across brokers).
    pub last_broker_epoch: i64,
}

impl MetadataState {
    /// Applies `command`, returning what it produced. A refused command changes nothing.
    pub fn apply(&mut self, command: &MetadataCommand) -> MetadataResponse {
        match self.try_apply(command) {
            Ok(response) => response,
            Err(e) => MetadataResponse::Refused(e),
        }
    }

    fn try_apply(&mut self, command: &MetadataCommand) -> Result<MetadataResponse, MetadataError> {
        match command {
            MetadataCommand::RegisterBroker {
                broker_id,
                host,
                port,
                data_port,
                rack,
                incarnation_id,
            } => {
                // A retried registration of the same process: keep its epoch.
                if let Some(b) = self.brokers.get(broker_id)
                    && !b.fenced
                    && b.incarnation_id == *incarnation_id
                {
                    return Ok(MetadataResponse::BrokerRegistered {
                        broker_epoch: b.broker_epoch,
                        version: self.version,
                    });
                }
                self.last_broker_epoch += 1;
                let broker_epoch = self.last_broker_epoch;
                self.brokers.insert(
                    *broker_id,
                    BrokerRecord {
                        broker_id: *broker_id,
                        host: host.clone(),
                        port: *port,
                        data_port: *data_port,
                        rack: rack.clone(),
                        broker_epoch,
                        incarnation_id: incarnation_id.clone(),
                        fenced: false,
                    },
                );
                // Leaderless partitions this broker can lead (it is in their ISR) get it back.
                for topic in self.topics.values_mut() {
                    for p in &mut topic.partitions {
                        if p.leader == -1 && p.isr.contains(broker_id) {
                            p.leader = *broker_id;
                            p.leader_epoch += 1;
                            p.partition_epoch += 1;
                        }
                    }
                }
                self.version += 1;
                Ok(MetadataResponse::BrokerRegistered { broker_epoch, version: self.version })
            }
            MetadataCommand::FenceBroker { broker_id, broker_epoch } => {
                match self.brokers.get_mut(broker_id) {
                    Some(b) if b.broker_epoch == *broker_epoch && !b.fenced => b.fenced = true,
                    // Re-registered since, already fenced, or unknown: nothing to do.
                    _ => return Ok(MetadataResponse::Applied { version: self.version }),
                }
                for topic in self.topics.values_mut() {
                    for p in &mut topic.partitions {
                        if p.leader == *broker_id {
                            p.leader = -1;
                            p.leader_epoch += 1;
                            p.partition_epoch += 1;
                        }
                    }
                }
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::CreateTopic {
                name,
                topic_id,
                replication_factor,
                configs,
                assignments,
            } => {
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(name.clone()));
                }
                let partitions = self.new_partitions(assignments, *replication_factor, 0)?;
                self.topics.insert(
                    name.clone(),
                    TopicRecord {
                        name: name.clone(),
                        topic_id: *topic_id,
                        replication_factor: *replication_factor,
                        configs: configs.clone(),
                        partitions,
                    },
                );
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::CreatePartitions { name, existing: expected, assignments } => {
                let (rf, existing) = match self.topics.get(name) {
                    Some(t) => (t.replication_factor, t.partitions.len()),
                    None => return Err(MetadataError::UnknownTopic(name.clone())),
                };
                if existing != *expected {
                    return Err(MetadataError::PartitionCountChanged {
                        name: name.clone(),
                        expected: *expected,
                        actual: existing,
                    });
                }
                let added = self.new_partitions(assignments, rf, existing)?;
                self.topics.get_mut(name).expect("checked").partitions.extend(added);
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::AlterTopicConfig { name, set, remove } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                for key in remove {
                    topic.configs.remove(key);
                }
                topic.configs.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
        }
    }

    /// Checks assignments and builds partitions led by their first live replica.
    fn new_partitions(
        &self,
        assignments: &[Vec<i32>],
        replication_factor: i32,
        first_index: usize,
    ) -> Result<Vec<PartitionRecord>, MetadataError> {
        if assignments.is_empty() {
            return Err(MetadataError::InvalidAssignment {
                partition: first_index,
                reason: "no partitions".into(),
            });
        }
        assignments
            .iter()
            .enumerate()
            .map(|(i, replicas)| {
                let bad = |reason: String| MetadataError::InvalidAssignment {
                    partition: first_index + i,
                    reason,
                };
                if replicas.len() != replication_factor as usize {
                    return Err(bad(format!(
                        "{} replicas for replication factor {replication_factor}",
                        replicas.len()
                    )));
                }
                for (j, r) in replicas.iter().enumerate() {
                    if !self.brokers.contains_key(r) {
                        return Err(bad(format!("unknown broker {r}")));
                    }
                    if replicas[..j].contains(r) {
                        return Err(bad(format!("broker {r} listed twice")));
                    }
                }
                let leader = replicas
                    .iter()
                    .copied()
                    .find(|r| self.brokers.get(r).is_some_and(|b| !b.fenced))
                    .unwrap_or(-1);
                // Followers hold no data until they have replicated it, so a new partition's
                // in-sync set is its leader alone: only a replica holding every acknowledged
                // record may lead it after a failure. (With no live replica, nothing was
                // written, and any replica may take the lead.)
                let isr = if leader >= 0 { vec![leader] } else { replicas.clone() };
                Ok(PartitionRecord {
                    replicas: replicas.clone(),
                    leader,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    isr,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(id: i32) -> MetadataCommand {
        MetadataCommand::RegisterBroker {
            broker_id: id,
            host: "127.0.0.1".into(),
            port: 9000 + id as u32,
            data_port: 0,
            rack: String::new(),
            incarnation_id: vec![id as u8],
        }
    }

    fn create(name: &str, assignments: Vec<Vec<i32>>) -> MetadataCommand {
        let rf = assignments.first().map_or(1, |a| a.len() as i32);
        MetadataCommand::CreateTopic {
            name: name.into(),
            topic_id: [7; 16],
            replication_factor: rf,
            configs: BTreeMap::new(),
            assignments,
        }
    }

    fn cluster() -> MetadataState {
        let mut s = MetadataState::default();
        for id in 1..=3 {
            s.apply(&register(id));
        }
        s
    }

    #[test]
    fn commands_change_state_and_bump_the_version_refusals_do_not() {
        let mut s = cluster();
        assert_eq!(s.version, 3);
        let cases: Vec<(MetadataCommand, bool)> = vec![
            (create("a", vec![vec![1, 2], vec![2, 3]]), true),
            (create("a", vec![vec![1, 2]]), false), // exists
            (create("b", vec![vec![1, 1]]), false), // duplicate replica
            (create("b", vec![vec![1, 9]]), false), // unknown broker
            (create("b", vec![]), false),           // no partitions
            (
                MetadataCommand::CreatePartitions {
                    name: "a".into(),
                    existing: 2,
                    assignments: vec![vec![3, 1]],
                },
                true,
            ),
            // The same request again (raced or retried after it applied): refused.
            (
                MetadataCommand::CreatePartitions {
                    name: "a".into(),
                    existing: 2,
                    assignments: vec![vec![3, 1]],
                },
                false,
            ),
            (
                MetadataCommand::CreatePartitions {
                    name: "a".into(),
                    existing: 3,
                    assignments: vec![vec![3]],
                },
                false,
            ), // rf
            (
                MetadataCommand::CreatePartitions {
                    name: "zz".into(),
                    existing: 0,
                    assignments: vec![vec![3, 1]],
                },
                false,
            ),
            (
                MetadataCommand::AlterTopicConfig {
                    name: "a".into(),
                    set: [("retention.ms".to_string(), "1000".to_string())].into(),
                    remove: vec![],
                },
                true,
            ),
            (MetadataCommand::DeleteTopic { name: "nope".into() }, false),
        ];
        for (command, applies) in cases {
            let before = s.clone();
            let response = s.apply(&command);
            if applies {
                assert_eq!(
                    response,
                    MetadataResponse::Applied { version: before.version + 1 },
                    "{command:?}"
                );
            } else {
                assert!(
                    matches!(response, MetadataResponse::Refused(_)),
                    "{command:?}: {response:?}"
                );
                assert_eq!(s, before, "a refused command changes nothing: {command:?}");
            }
        }
        let a = &s.topics["a"];
        assert_eq!(a.partitions.len(), 3);
        assert_eq!(a.partitions[0].leader, 1, "first replica leads");
        assert_eq!(a.partitions[0].isr, vec![1], "followers are not in sync before replicating");
        assert_eq!(a.configs["retention.ms"], "1000");
    }

    #[test]
    fn fencing_removes_leadership_and_reregistering_restores_it() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![2], vec![3]]));
        let epoch = s.brokers[&2].broker_epoch;
        // A fence for an older registration is ignored.
        let v = s.version;
        s.apply(&MetadataCommand::FenceBroker { broker_id: 2, broker_epoch: epoch - 1 });
        assert_eq!(s.version, v);
        s.apply(&MetadataCommand::FenceBroker { broker_id: 2, broker_epoch: epoch });
        assert!(s.brokers[&2].fenced);
        assert_eq!(s.topics["t"].partitions[0].leader, -1, "a fenced broker leads nothing");
        assert_eq!(s.topics["t"].partitions[1].leader, 3);
        let MetadataResponse::BrokerRegistered { broker_epoch, .. } = s.apply(&register(2)) else {
            panic!("registration refused");
        };
        assert!(broker_epoch > epoch, "a new registration gets a newer epoch");
        let p = &s.topics["t"].partitions[0];
        assert_eq!(
            (p.leader, p.leader_epoch),
            (2, 2),
            "the leader epoch moved when the partition lost its leader and again when 2 took it back"
        );
    }

    /// A follower that never replicated is not in sync: when the leader is fenced, the
    /// partition waits for the leader to come back rather than hand leadership to a replica
    /// without its data.
    #[test]
    fn only_in_sync_replicas_take_the_lead() {
        let mut s = cluster();
        s.apply(&create("r", vec![vec![2, 3]]));
        assert_eq!(s.topics["r"].partitions[0].isr, vec![2]);
        let epoch = s.brokers[&2].broker_epoch;
        s.apply(&MetadataCommand::FenceBroker { broker_id: 2, broker_epoch: epoch });
        let epoch3 = s.brokers[&3].broker_epoch;
        s.apply(&MetadataCommand::FenceBroker { broker_id: 3, broker_epoch: epoch3 });
        s.apply(&register(3));
        assert_eq!(s.topics["r"].partitions[0].leader, -1, "3 holds none of the data");
        s.apply(&register(2));
        assert_eq!(s.topics["r"].partitions[0].leader, 2);
    }

    /// Review finding: a retried registration of the same process (same incarnation) used to
    /// get a new epoch and invalidate the one the broker was using.
    #[test]
    fn a_retried_registration_keeps_its_epoch() {
        let mut s = cluster();
        let epoch = s.brokers[&1].broker_epoch;
        let version = s.version;
        assert_eq!(
            s.apply(&register(1)),
            MetadataResponse::BrokerRegistered { broker_epoch: epoch, version }
        );
        let restarted = MetadataCommand::RegisterBroker {
            broker_id: 1,
            host: "127.0.0.1".into(),
            port: 9001,
            data_port: 0,
            rack: String::new(),
            incarnation_id: vec![99],
        };
        let MetadataResponse::BrokerRegistered { broker_epoch, .. } = s.apply(&restarted) else {
            panic!("refused");
        };
        assert!(broker_epoch > epoch, "a new process gets a new epoch");
    }

    #[test]
    fn apply_is_deterministic_and_survives_serialization() {
        let commands = vec![
            register(1),
            register(2),
            create("x", vec![vec![1, 2]]),
            MetadataCommand::FenceBroker { broker_id: 1, broker_epoch: 1 },
            register(1),
        ];
        let (mut a, mut b) = (MetadataState::default(), MetadataState::default());
        for c in &commands {
            let wire: MetadataCommand =
                serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
            assert_eq!(a.apply(c), b.apply(&wire));
        }
        assert_eq!(a, b);
        let restored: MetadataState =
            serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(restored, a);
    }
}
