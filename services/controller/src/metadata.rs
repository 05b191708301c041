//! [`MetadataState`]: the cluster metadata the controller quorum replicates (brokers, topics,
//! partitions, leaders, ISR), and [`MetadataCommand`], the Raft log entries that change it.
//!
//! `apply` is a pure, deterministic function: every input it depends on (placement, the time of
//! a registration, ids) is decided by the leader before proposing and carried in the command, so
//! every controller computes the same state from the same log. Refused commands change nothing
//! and leave the version as it was.
//!
//! Leader election and ISR management follow Kafka's KRaft controller:
//! - A partition leader changes its in-sync replica set with [`MetadataCommand::AlterPartition`],
//!   naming the leader epoch and partition epoch it holds, so a deposed leader is refused.
//! - When a broker's lease lapses ([`MetadataCommand::FenceBroker`]) or it asks to stop
//!   ([`MetadataCommand::ControlledShutdown`]), it leaves every ISR it is not the last member of,
//!   and each partition it leads goes to the first replica, in `replicas` order, that is in the
//!   ISR and live. Only an ISR member holds every acknowledged record, so without one the
//!   partition stays leaderless (fenced) or stays with the broker (controlled shutdown), unless
//!   the topic enables unclean leader election.
//! - Leadership returns to the preferred replica (`replicas[0]`) when it rejoins the ISR.
//!
//! Every change to a partition bumps its `partition_epoch` once, whatever it combines (ISR
//! shrink and leader change in one command is one bump); a leader change also bumps
//! `leader_epoch`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topic_config::UNCLEAN_LEADER_ELECTION_ENABLE;

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
    /// A broker's lease lapsed: it is fenced, leaves every ISR it is not the last member of, and
    /// each partition it led goes to another in-sync live replica or, when there is none, to
    /// no leader (or, with `unclean.leader.election.enable`, to any live replica).
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
    /// A partition leader sets the partition's ISR. Checked here, against the state the command
    /// applies to: the broker's registration, its leadership, both epochs and the new set.
    AlterPartition {
        /// The leader asking.
        broker_id: i32,
        /// Its broker epoch.
        broker_epoch: i64,
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The leader epoch the leader holds.
        leader_epoch: i32,
        /// The partition epoch the leader last saw.
        partition_epoch: i32,
        /// The new in-sync replica set, the leader included.
        isr: Vec<i32>,
    },
    /// A live broker about to stop: it leaves every ISR it is not the last member of, and each
    /// partition it leads goes to another in-sync live replica. It keeps leading the partitions
    /// no such replica can take over (never an unclean election); the response lists them.
    ControlledShutdown {
        /// Broker id.
        broker_id: i32,
        /// Its current broker epoch.
        broker_epoch: i64,
    },
    /// Hands out the next producer id to an idempotent producer.
    AllocateProducerId,
    /// A group coordinator joins or rejoins; it gets a new epoch and shards are rebalanced.
    RegisterCoordinator {
        /// Unique name.
        coordinator_id: String,
        /// Advertised host.
        host: String,
        /// gRPC port.
        port: u32,
        /// Unique per process start.
        incarnation_id: Vec<u8>,
    },
    /// A coordinator's lease lapsed or it is leaving: it is removed and its shards go to live
    /// coordinators at once (it stopped serving them when its lease ended).
    RemoveCoordinator {
        /// Coordinator id.
        coordinator_id: String,
        /// The registration removed; an older epoch is a no-op.
        coordinator_epoch: i64,
    },
    /// Starts moving partitions to new replica sets (validated here, all or none). Each
    /// partition's `replicas` becomes the original set followed by the adding replicas; the
    /// move completes (here, or at the `AlterPartition` that brings the last adding replica
    /// into the ISR) as described at [`PartitionRecord::target`]. Moving a partition to the
    /// target it already moves to is a no-op; to another one is refused.
    ReassignPartitions {
        /// (topic, partition, target replicas with the preferred leader first).
        moves: Vec<(String, i32, Vec<i32>)>,
        /// Replication throttle for the adding replicas, bytes per second (0: none).
        throttle: u64,
    },
    /// Cancels moves: each partition goes back to its original replicas. An empty list cancels
    /// every move; a listed partition that does not move is left alone.
    CancelReassignments {
        /// (topic, partition).
        partitions: Vec<(String, i32)>,
    },
    /// A coordinator gave up shards it was asked to release; they go to their new owners.
    ReleaseShards {
        /// Coordinator id.
        coordinator_id: String,
        /// Its epoch.
        coordinator_epoch: i64,
        /// The shards released.
        shards: Vec<i32>,
    },
}

/// Why a command was refused. Deterministic: every controller refuses the same commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    /// A topic of this name exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// The internal offsets topic cannot be deleted, nor its partition count changed (groups
    /// map to its partitions by count).
    #[error("{0} is internal: it cannot be deleted nor get more partitions")]
    InternalTopic(String),
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
    /// No broker of this id is registered.
    #[error("broker {0} is not registered")]
    UnknownBroker(i32),
    /// The request carries an epoch other than the broker's current registration.
    #[error(
        "broker {broker_id} epoch {broker_epoch} is stale, its current registration is epoch {current}"
    )]
    StaleBrokerEpoch {
        /// Broker id.
        broker_id: i32,
        /// The epoch the request carried.
        broker_epoch: i64,
        /// The current registration's epoch.
        current: i64,
    },
    /// No coordinator of this id and epoch is registered (its lease lapsed, or it restarted).
    #[error(
        "coordinator {coordinator_id} epoch {coordinator_epoch} is not registered; register again"
    )]
    UnknownCoordinator {
        /// Coordinator id.
        coordinator_id: String,
        /// The epoch the request carried.
        coordinator_epoch: i64,
    },
    /// The broker's lease lapsed; it must register again.
    #[error("broker {broker_id} epoch {broker_epoch} is fenced; register again")]
    BrokerFenced {
        /// Broker id.
        broker_id: i32,
        /// Its (fenced) epoch.
        broker_epoch: i64,
    },
    /// The topic exists but has no partition of this index.
    #[error("unknown partition {topic}/{partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
    },
    /// The broker asking to change a partition does not lead it.
    #[error("broker {broker_id} is not the leader of {topic}/{partition}, the leader is {leader}")]
    NotPartitionLeader {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The broker asking.
        broker_id: i32,
        /// The current leader, -1 for none.
        leader: i32,
    },
    /// The request's leader epoch is not the partition's current one.
    #[error(
        "stale leader epoch {got} for {topic}/{partition}, the current leader epoch is {current}"
    )]
    StaleLeaderEpoch {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The leader epoch the request carried.
        got: i32,
        /// The current leader epoch.
        current: i32,
    },
    /// The request's partition epoch is not the partition's current one: the ISR or leader
    /// changed since the leader last saw the partition.
    #[error(
        "stale partition epoch {got} for {topic}/{partition}, the current partition epoch is {current}"
    )]
    StalePartitionEpoch {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The partition epoch the request carried.
        got: i32,
        /// The current partition epoch.
        current: i32,
    },
    /// A requested ISR is empty, has duplicates, lacks the leader, names a non-replica, or adds
    /// a broker that is fenced or not registered.
    #[error("invalid isr {isr:?} for {topic}/{partition}: {reason}")]
    InvalidIsr {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The requested ISR.
        isr: Vec<i32>,
        /// What is wrong.
        reason: String,
    },
    /// A reassignment target is invalid, or a move cannot be cancelled.
    #[error("invalid reassignment of {topic}/{partition}: {reason}")]
    InvalidReassignment {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// What is wrong.
        reason: String,
    },
    /// The partition already moves to another target.
    #[error("{topic}/{partition} is already moving to {target:?}; cancel that reassignment first")]
    ReassignmentInProgress {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The target it moves to.
        target: Vec<i32>,
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
    /// A producer id was handed out.
    ProducerIdAllocated {
        /// The new producer id.
        producer_id: i64,
    },
    /// A coordinator registered with this epoch.
    CoordinatorRegistered {
        /// The coordinator's epoch.
        coordinator_epoch: i64,
    },
    /// A broker registered with this epoch.
    BrokerRegistered {
        /// The broker's new epoch.
        broker_epoch: i64,
        /// Metadata version after the command.
        version: u64,
    },
    /// An AlterPartition was applied.
    PartitionAltered {
        /// The partition as it now is.
        partition: PartitionRecord,
        /// Metadata version after the command.
        version: u64,
    },
    /// A ControlledShutdown was applied.
    ShutdownProgress {
        /// Partitions (topic, index) the broker still leads: no other live replica in their ISR
        /// could take them over. Sorted by topic, then index.
        remaining: Vec<(String, i32)>,
        /// Metadata version after the command (unchanged when nothing moved).
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
    /// True after a controlled shutdown until it registers again: it neither leads nor joins
    /// an ISR meanwhile, so leadership does not come back to a broker about to stop.
    #[serde(default)]
    pub shutting_down: bool,
}

/// A partition's replicas and leadership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// While the partition moves (empty otherwise): the replica set it moves to, the preferred
    /// leader first. `replicas` is then the original set followed by the adding replicas
    /// (those of `target` not in it), so the preferred leader and the election order stay the
    /// original ones until the move completes. It completes once every adding replica is in
    /// the ISR, and so is every other target replica: `replicas` becomes `target`, the ISR
    /// keeps only target members, and the lead
    /// goes to `target[0]` when it is in sync and live, else (when the leader is not in the
    /// target) to the first target replica in sync and live. The replicas left out stop and
    /// delete their logs when they see it.
    #[serde(default)]
    pub target: Vec<i32>,
    /// While the partition moves: the target replicas not in the original set, in target
    /// order (the tail of `replicas`).
    #[serde(default)]
    pub adding: Vec<i32>,
    /// While the partition moves: bytes per second each adding broker may copy (0: no limit).
    #[serde(default)]
    pub throttle: u64,
}

impl PartitionRecord {
    /// Whether a reassignment is in progress.
    pub fn is_moving(&self) -> bool {
        !self.target.is_empty()
    }

    /// The replica set from before the move (the whole set when not moving).
    pub fn original(&self) -> Vec<i32> {
        self.replicas.iter().copied().filter(|r| !self.adding.contains(r)).collect()
    }

    /// While moving: original replicas not in the target.
    pub fn removing(&self) -> Vec<i32> {
        if !self.is_moving() {
            return Vec::new();
        }
        self.original().into_iter().filter(|r| !self.target.contains(r)).collect()
    }
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
    /// The last producer id handed out (0: none yet).
    #[serde(default)]
    pub last_producer_id: i64,
    /// Live group coordinators by id.
    #[serde(default)]
    pub coordinators: BTreeMap<String, CoordinatorRecord>,
    /// Ownership of each shard of the offsets topic, by shard index (empty until the topic
    /// exists).
    #[serde(default)]
    pub shards: Vec<ShardOwnership>,
    /// The last coordinator epoch handed out.
    #[serde(default)]
    pub last_coordinator_epoch: i64,
}

/// A registered group coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorRecord {
    /// Unique name.
    pub coordinator_id: String,
    /// Advertised host.
    pub host: String,
    /// gRPC port.
    pub port: u32,
    /// Current registration's epoch.
    pub coordinator_epoch: i64,
    /// Process incarnation of the current registration.
    pub incarnation_id: Vec<u8>,
}

/// Who owns one shard of the offsets topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOwnership {
    /// The owning coordinator, empty for none.
    pub owner: String,
    /// Bumped at every change of owner (or of the owner's process).
    pub epoch: i64,
    /// When not empty, the owner is asked to release the shard, which then goes to this
    /// coordinator. Two steps, so two coordinators never serve a shard at once.
    pub moving_to: String,
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
                // A new process under a live registration (restarted before its lease lapsed):
                // what the old one led moves to other in-sync replicas first, as if it had been
                // fenced, since the new process may lack the tail of its log. It catches up as a
                // follower and comes back through the ISR like any other.
                if let Some(b) = self.brokers.get_mut(broker_id)
                    && !b.fenced
                {
                    b.fenced = true;
                    self.move_leadership_away(*broker_id, Departure::Replaced);
                }
                // The same process registering again (fenced meanwhile) is still stopping.
                let still_stopping = self
                    .brokers
                    .get(broker_id)
                    .is_some_and(|b| b.shutting_down && b.incarnation_id == *incarnation_id);
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
                        shutting_down: still_stopping,
                    },
                );
                // Leaderless partitions this broker can lead (it is in their ISR) get it back,
                // unless it is on its way out.
                for topic in self.topics.values_mut() {
                    for p in &mut topic.partitions {
                        if !still_stopping && p.leader == -1 && p.isr.contains(broker_id) {
                            p.leader = *broker_id;
                            p.leader_epoch += 1;
                            p.partition_epoch += 1;
                        }
                    }
                }
                self.version += 1;
                Ok(MetadataResponse::BrokerRegistered { broker_epoch, version: self.version })
            }
            MetadataCommand::RegisterCoordinator { coordinator_id, host, port, incarnation_id } => {
                if let Some(c) = self.coordinators.get(coordinator_id)
                    && c.incarnation_id == *incarnation_id
                {
                    return Ok(MetadataResponse::CoordinatorRegistered {
                        coordinator_epoch: c.coordinator_epoch,
                    });
                }
                // A new process under this id: the shards it owned start afresh (it must
                // replay them), so their epochs move on.
                if self.coordinators.contains_key(coordinator_id) {
                    for shard in &mut self.shards {
                        if shard.owner == *coordinator_id {
                            shard.epoch += 1;
                        }
                    }
                }
                self.last_coordinator_epoch += 1;
                let coordinator_epoch = self.last_coordinator_epoch;
                self.coordinators.insert(
                    coordinator_id.clone(),
                    CoordinatorRecord {
                        coordinator_id: coordinator_id.clone(),
                        host: host.clone(),
                        port: *port,
                        coordinator_epoch,
                        incarnation_id: incarnation_id.clone(),
                    },
                );
                self.balance_shards();
                self.version += 1;
                Ok(MetadataResponse::CoordinatorRegistered { coordinator_epoch })
            }
            MetadataCommand::RemoveCoordinator { coordinator_id, coordinator_epoch } => {
                match self.coordinators.get(coordinator_id) {
                    Some(c) if c.coordinator_epoch == *coordinator_epoch => {}
                    _ => return Ok(MetadataResponse::Applied { version: self.version }),
                }
                self.coordinators.remove(coordinator_id);
                for shard in &mut self.shards {
                    if shard.owner == *coordinator_id {
                        shard.owner.clear();
                        shard.moving_to.clear();
                    }
                    if shard.moving_to == *coordinator_id {
                        shard.moving_to.clear();
                    }
                }
                self.balance_shards();
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::ReleaseShards { coordinator_id, coordinator_epoch, shards } => {
                match self.coordinators.get(coordinator_id) {
                    Some(c) if c.coordinator_epoch == *coordinator_epoch => {}
                    _ => {
                        return Err(MetadataError::UnknownCoordinator {
                            coordinator_id: coordinator_id.clone(),
                            coordinator_epoch: *coordinator_epoch,
                        });
                    }
                }
                let mut changed = false;
                for index in shards {
                    let Some(shard) =
                        usize::try_from(*index).ok().and_then(|i| self.shards.get_mut(i))
                    else {
                        continue;
                    };
                    if shard.owner == *coordinator_id && !shard.moving_to.is_empty() {
                        shard.owner = std::mem::take(&mut shard.moving_to);
                        shard.epoch += 1;
                        changed = true;
                    }
                }
                if changed {
                    self.balance_shards();
                    self.version += 1;
                }
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::AllocateProducerId => {
                // Not a metadata change brokers act on: the version stays.
                self.last_producer_id += 1;
                Ok(MetadataResponse::ProducerIdAllocated { producer_id: self.last_producer_id })
            }
            MetadataCommand::FenceBroker { broker_id, broker_epoch } => {
                match self.brokers.get_mut(broker_id) {
                    Some(b) if b.broker_epoch == *broker_epoch && !b.fenced => b.fenced = true,
                    // Re-registered since, already fenced, or unknown: nothing to do.
                    _ => return Ok(MetadataResponse::Applied { version: self.version }),
                }
                self.move_leadership_away(*broker_id, Departure::Fenced);
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::ControlledShutdown { broker_id, broker_epoch } => {
                self.check_live_broker(*broker_id, *broker_epoch)?;
                let newly = self.brokers.get_mut(broker_id).is_some_and(|b| {
                    let newly = !b.shutting_down;
                    b.shutting_down = true;
                    newly
                });
                let (changed, remaining) =
                    self.move_leadership_away(*broker_id, Departure::ControlledShutdown);
                if changed || newly {
                    self.version += 1;
                }
                Ok(MetadataResponse::ShutdownProgress { remaining, version: self.version })
            }
            MetadataCommand::AlterPartition {
                broker_id,
                broker_epoch,
                topic,
                partition,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                self.check_live_broker(*broker_id, *broker_epoch)?;
                let brokers = &self.brokers;
                let record = self
                    .topics
                    .get_mut(topic)
                    .ok_or_else(|| MetadataError::UnknownTopic(topic.clone()))?
                    .partitions
                    .get_mut(usize::try_from(*partition).unwrap_or(usize::MAX))
                    .ok_or_else(|| MetadataError::UnknownPartition {
                        topic: topic.clone(),
                        partition: *partition,
                    })?;
                if record.leader != *broker_id {
                    return Err(MetadataError::NotPartitionLeader {
                        topic: topic.clone(),
                        partition: *partition,
                        broker_id: *broker_id,
                        leader: record.leader,
                    });
                }
                if record.leader_epoch != *leader_epoch {
                    return Err(MetadataError::StaleLeaderEpoch {
                        topic: topic.clone(),
                        partition: *partition,
                        got: *leader_epoch,
                        current: record.leader_epoch,
                    });
                }
                if record.partition_epoch != *partition_epoch {
                    return Err(MetadataError::StalePartitionEpoch {
                        topic: topic.clone(),
                        partition: *partition,
                        got: *partition_epoch,
                        current: record.partition_epoch,
                    });
                }
                check_isr(record, *broker_id, isr, brokers).map_err(|reason| {
                    MetadataError::InvalidIsr {
                        topic: topic.clone(),
                        partition: *partition,
                        isr: isr.clone(),
                        reason,
                    }
                })?;
                let mut next = record.clone();
                next.isr = isr.clone();
                // The last adding replica joining the ISR completes a move (which may move the
                // lead to the target's first replica, below, or off a removed leader).
                complete_reassignment(&mut next, brokers);
                // Preferred-leader rebalancing: once the preferred replica (the first) is back in
                // the ISR and live, it takes the lead again. This is how leadership returns to
                // the first replica after it restarted: it registers, catches up, the current
                // leader adds it to the ISR, and this moves the lead to it. The old leader stays
                // in the ISR and follows.
                if let Some(&preferred) = next.replicas.first()
                    && preferred != next.leader
                    && next.isr.contains(&preferred)
                    && is_live(brokers, preferred)
                {
                    next.leader = preferred;
                    next.leader_epoch += 1;
                }
                // Setting the ISR it already has (and nothing to rebalance) changes nothing.
                if next != *record {
                    next.partition_epoch += 1;
                    *record = next;
                    self.version += 1;
                }
                Ok(MetadataResponse::PartitionAltered {
                    partition: record.clone(),
                    version: self.version,
                })
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
                if name == tideline_common::OFFSETS_TOPIC {
                    self.shards = vec![ShardOwnership::default(); partitions.len()];
                }
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
                if name == tideline_common::OFFSETS_TOPIC {
                    return Err(MetadataError::InternalTopic(name.clone()));
                }
                self.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                self.version += 1;
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::CreatePartitions { name, existing: expected, assignments } => {
                // Groups map to shards by partition count: more partitions would move them.
                if name == tideline_common::OFFSETS_TOPIC {
                    return Err(MetadataError::InternalTopic(name.clone()));
                }
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
            MetadataCommand::ReassignPartitions { moves, throttle } => {
                // Everything is checked before anything changes: all or none.
                for (i, (topic, partition, target)) in moves.iter().enumerate() {
                    if moves[..i].iter().any(|(t, p, _)| t == topic && p == partition) {
                        return Err(MetadataError::InvalidReassignment {
                            topic: topic.clone(),
                            partition: *partition,
                            reason: "listed twice in the request".into(),
                        });
                    }
                    self.check_target(topic, *partition, target)?;
                }
                let brokers = &self.brokers;
                let mut changed = false;
                for (topic, partition, target) in moves {
                    let p = self
                        .topics
                        .get_mut(topic)
                        .and_then(|t| t.partitions.get_mut(*partition as usize))
                        .expect("checked above");
                    if p.is_moving() {
                        // The same target again (checked above): only the throttle may change.
                        if p.throttle != *throttle {
                            p.throttle = *throttle;
                            p.partition_epoch += 1;
                            changed = true;
                        }
                        continue;
                    }
                    if p.replicas == *target {
                        continue;
                    }
                    p.adding = target.iter().copied().filter(|r| !p.replicas.contains(r)).collect();
                    p.replicas.extend(p.adding.iter().copied());
                    p.target = target.clone();
                    p.throttle = *throttle;
                    // A target already in sync (the same brokers in a new order) completes at
                    // once.
                    complete_reassignment(p, brokers);
                    p.partition_epoch += 1;
                    changed = true;
                }
                if changed {
                    self.version += 1;
                }
                Ok(MetadataResponse::Applied { version: self.version })
            }
            MetadataCommand::CancelReassignments { partitions } => {
                let keys: Vec<(String, i32)> = if partitions.is_empty() {
                    self.topics
                        .values()
                        .flat_map(|t| {
                            t.partitions
                                .iter()
                                .enumerate()
                                .filter(|(_, p)| p.is_moving())
                                .map(|(i, _)| (t.name.clone(), i as i32))
                        })
                        .collect()
                } else {
                    partitions.clone()
                };
                let mut reverted = Vec::new();
                for (topic, partition) in &keys {
                    let p = self.partition(topic, *partition)?;
                    if !p.is_moving() {
                        continue;
                    }
                    let next = revert_reassignment(p, &self.brokers).map_err(|reason| {
                        MetadataError::InvalidReassignment {
                            topic: topic.clone(),
                            partition: *partition,
                            reason,
                        }
                    })?;
                    reverted.push((topic, *partition as usize, next));
                }
                let changed = !reverted.is_empty();
                for (topic, index, next) in reverted {
                    self.topics.get_mut(topic).expect("checked").partitions[index] = next;
                }
                if changed {
                    self.version += 1;
                }
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

    /// Gives every shard without a live owner to the least loaded coordinator at once, then
    /// evens out the load (shards owned and not leaving, plus shards arriving) by asking the
    /// most loaded coordinators to release shards to the least loaded ones, until loads differ
    /// by at most one. Deterministic: ties go to the smallest id and the highest shard.
    fn balance_shards(&mut self) {
        if self.coordinators.is_empty() {
            return;
        }
        let ids: Vec<String> = self.coordinators.keys().cloned().collect();
        let load = |shards: &[ShardOwnership], id: &str| {
            shards
                .iter()
                .filter(|s| s.moving_to == id || (s.owner == id && s.moving_to.is_empty()))
                .count()
        };
        for i in 0..self.shards.len() {
            let owner = &self.shards[i].owner;
            if owner.is_empty() || !self.coordinators.contains_key(owner) {
                let least = ids
                    .iter()
                    .min_by_key(|id| (load(&self.shards, id), (*id).clone()))
                    .expect("coordinators exist")
                    .clone();
                let shard = &mut self.shards[i];
                shard.owner = least;
                shard.moving_to.clear();
                shard.epoch += 1;
            }
        }
        loop {
            let by_load = |shards: &[ShardOwnership]| {
                let mut v: Vec<(usize, &String)> =
                    ids.iter().map(|id| (load(shards, id), id)).collect();
                v.sort();
                v
            };
            let sorted = by_load(&self.shards);
            let (min, least) = (sorted[0].0, sorted[0].1.clone());
            let max = sorted[sorted.len() - 1].0;
            let most =
                sorted.iter().find(|(l, _)| *l == max).expect("coordinators exist").1.clone();
            if max <= min + 1 {
                break;
            }
            // A shard still on its way to the most loaded coordinator is redirected; else one
            // it owns is asked to move.
            let incoming = self.shards.iter().rposition(|s| s.moving_to == most);
            let owned = self.shards.iter().rposition(|s| s.owner == most && s.moving_to.is_empty());
            let Some(i) = incoming.or(owned) else {
                break;
            };
            let shard = &mut self.shards[i];
            shard.moving_to = if shard.owner == least { String::new() } else { least };
        }
    }

    /// Partition `index` of `topic`.
    fn partition(&self, topic: &str, index: i32) -> Result<&PartitionRecord, MetadataError> {
        self.topics
            .get(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_string()))?
            .partitions
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .ok_or_else(|| MetadataError::UnknownPartition {
                topic: topic.to_string(),
                partition: index,
            })
    }

    /// Checks a reassignment target: as many replicas as the replication factor, registered,
    /// distinct, and no other move of the partition in progress.
    fn check_target(&self, topic: &str, index: i32, target: &[i32]) -> Result<(), MetadataError> {
        let p = self.partition(topic, index)?;
        let rf = self.topics[topic].replication_factor;
        let bad = |reason: String| MetadataError::InvalidReassignment {
            topic: topic.to_string(),
            partition: index,
            reason,
        };
        if target.len() != rf as usize {
            return Err(bad(format!("{} replicas for replication factor {rf}", target.len())));
        }
        for (j, r) in target.iter().enumerate() {
            if !self.brokers.contains_key(r) {
                return Err(bad(format!("unknown broker {r}")));
            }
            if target[..j].contains(r) {
                return Err(bad(format!("broker {r} listed twice")));
            }
        }
        if p.is_moving() && p.target != target {
            return Err(MetadataError::ReassignmentInProgress {
                topic: topic.to_string(),
                partition: index,
                target: p.target.clone(),
            });
        }
        Ok(())
    }

    /// Checks that `broker_id` is registered with `broker_epoch` and not fenced.
    fn check_live_broker(&self, broker_id: i32, broker_epoch: i64) -> Result<(), MetadataError> {
        let b = self.brokers.get(&broker_id).ok_or(MetadataError::UnknownBroker(broker_id))?;
        if b.broker_epoch != broker_epoch {
            return Err(MetadataError::StaleBrokerEpoch {
                broker_id,
                broker_epoch,
                current: b.broker_epoch,
            });
        }
        if b.fenced {
            return Err(MetadataError::BrokerFenced { broker_id, broker_epoch });
        }
        Ok(())
    }

    /// Moves leadership of every partition away from `broker_id` and takes it out of every ISR
    /// it is not the last member of. Returns whether any partition changed, and the partitions
    /// it still leads (only on controlled shutdown; sorted by topic, then index).
    fn move_leadership_away(
        &mut self,
        broker_id: i32,
        departure: Departure,
    ) -> (bool, Vec<(String, i32)>) {
        let mut changed = false;
        let mut remaining = Vec::new();
        for topic in self.topics.values_mut() {
            let unclean = departure == Departure::Fenced
                && topic.configs.get(UNCLEAN_LEADER_ELECTION_ENABLE).is_some_and(|v| v == "true");
            for (index, p) in topic.partitions.iter_mut().enumerate() {
                match leave(p, broker_id, departure, unclean, &self.brokers) {
                    Left::Unchanged => {}
                    Left::Changed => changed = true,
                    Left::UncleanElection => {
                        changed = true;
                        // Logged by every controller applying the entry (and on replay): rare,
                        // and an operator should see it wherever they look.
                        tracing::warn!(
                            topic = %topic.name,
                            partition = index,
                            leader = p.leader,
                            fenced_broker = broker_id,
                            "unclean leader election: a replica outside the isr leads, \
                             acknowledged records may be lost"
                        );
                    }
                    Left::StillLeads => remaining.push((topic.name.clone(), index as i32)),
                }
            }
        }
        (changed, remaining)
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
                    ..Default::default()
                })
            })
            .collect()
    }
}

/// Why leadership leaves a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// Its lease lapsed (it is already marked fenced).
    Fenced,
    /// A new process registered under its id while the old registration was live: like a
    /// fence, but never an unclean election (the broker is back with its data).
    Replaced,
    /// It asked to stop and is still live.
    ControlledShutdown,
}

/// What [`leave`] did to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// Nothing: the broker neither leads the partition nor can leave its ISR.
    Unchanged,
    /// The broker left the ISR, or the lead went to an in-sync replica or to no one.
    Changed,
    /// The lead went to a replica outside the ISR.
    UncleanElection,
    /// Controlled shutdown only: no in-sync replica can take over, the broker still leads.
    StillLeads,
}

/// Registered, not fenced, and not shutting down: may lead or join an ISR.
fn is_live(brokers: &BTreeMap<i32, BrokerRecord>, id: i32) -> bool {
    brokers.get(&id).is_some_and(|b| !b.fenced && !b.shutting_down)
}

/// Moves partition `p` away from `broker`: the lead goes to the first replica, in `replicas`
/// order, that is in the ISR, live and not `broker`, and `broker` leaves the ISR.
///
/// A leader with no such successor stays in the ISR: it holds every acknowledged record, so it
/// may lead again when it registers (a fenced broker; RegisterBroker hands it back) or keeps
/// leading (controlled shutdown). With `unclean`, a fenced leader's partition goes instead to the
/// first live replica, whose log becomes the truth (ISR = it alone).
fn leave(
    p: &mut PartitionRecord,
    broker: i32,
    departure: Departure,
    unclean: bool,
    brokers: &BTreeMap<i32, BrokerRecord>,
) -> Left {
    let candidate = |r: &i32| *r != broker && is_live(brokers, *r);
    if p.leader != broker {
        if p.isr.len() > 1 && p.isr.contains(&broker) {
            p.isr.retain(|r| *r != broker);
            p.partition_epoch += 1;
            return Left::Changed;
        }
        return Left::Unchanged;
    }
    let in_sync = p.replicas.iter().copied().find(|r| p.isr.contains(r) && candidate(r));
    let (leader, isr, outcome) = match (in_sync, departure) {
        (Some(next), _) => {
            let isr = p.isr.iter().copied().filter(|r| *r != broker).collect();
            (next, isr, Left::Changed)
        }
        (None, Departure::ControlledShutdown) => return Left::StillLeads,
        (None, Departure::Fenced | Departure::Replaced) => {
            // Never a replica still being added by a move: it may hold nothing yet.
            let original = |r: &i32| candidate(r) && !p.adding.contains(r);
            match p.replicas.iter().copied().find(original) {
                Some(next) if unclean => (next, vec![next], Left::UncleanElection),
                _ => (-1, p.isr.clone(), Left::Changed),
            }
        }
    };
    p.leader = leader;
    p.isr = isr;
    p.leader_epoch += 1;
    p.partition_epoch += 1;
    outcome
}

/// Completes the move of `p` when every target replica is in the ISR (see
/// [`PartitionRecord::target`]); bumps the leader epoch when the lead moves, not the partition
/// epoch (the caller bumps it once per command). Returns whether it completed. A move whose
/// target has no in-sync live replica to lead (and whose leader leaves) waits.
fn complete_reassignment(p: &mut PartitionRecord, brokers: &BTreeMap<i32, BrokerRecord>) -> bool {
    // The whole target in sync, not only the added replicas (as Kafka): an original replica
    // that stays but lags must catch up first, or the move would leave fewer in-sync copies
    // than there are now.
    if !p.is_moving() || !p.target.iter().all(|r| p.isr.contains(r)) {
        return false;
    }
    // Every target replica is in sync (checked above): liveness alone decides the lead.
    let live = |r: &i32| is_live(brokers, *r);
    let leader = match p.target.first() {
        Some(first) if live(first) => *first,
        _ if p.target.contains(&p.leader) => p.leader,
        _ => match p.target.iter().find(|r| live(r)) {
            Some(r) => *r,
            None => return false,
        },
    };
    let isr: Vec<i32> = p.isr.iter().copied().filter(|r| p.target.contains(r)).collect();
    if leader != p.leader {
        p.leader = leader;
        p.leader_epoch += 1;
    }
    p.replicas = std::mem::take(&mut p.target);
    p.isr = isr;
    p.adding.clear();
    p.throttle = 0;
    true
}

/// `p` back to its replicas from before its move: the adding replicas leave the replica set
/// and the ISR; one that leads hands the lead to the first original replica in sync and live.
/// Bumps the partition epoch (and the leader epoch when the lead moves).
fn revert_reassignment(
    p: &PartitionRecord,
    brokers: &BTreeMap<i32, BrokerRecord>,
) -> Result<PartitionRecord, String> {
    let mut next = p.clone();
    next.replicas = p.original();
    next.isr.retain(|r| !p.adding.contains(r));
    if next.isr.is_empty() {
        return Err("no original replica is in sync; let the move complete".into());
    }
    if p.adding.contains(&p.leader) {
        let leader = next
            .replicas
            .iter()
            .copied()
            .find(|r| next.isr.contains(r) && is_live(brokers, *r))
            .ok_or("no original replica is in sync and live to take the lead back")?;
        next.leader = leader;
        next.leader_epoch += 1;
    }
    next.target.clear();
    next.adding.clear();
    next.throttle = 0;
    next.partition_epoch += 1;
    Ok(next)
}

/// Checks the ISR `isr` that `leader` asks for partition `p`. Brokers already in the ISR stay
/// acceptable; a broker joining it must be live.
fn check_isr(
    p: &PartitionRecord,
    leader: i32,
    isr: &[i32],
    brokers: &BTreeMap<i32, BrokerRecord>,
) -> Result<(), String> {
    if isr.is_empty() {
        return Err("the isr is empty".into());
    }
    if !isr.contains(&leader) {
        return Err(format!("the isr must contain the leader {leader}"));
    }
    for (i, r) in isr.iter().enumerate() {
        if isr[..i].contains(r) {
            return Err(format!("broker {r} listed twice"));
        }
        if !p.replicas.contains(r) {
            return Err(format!("broker {r} is not a replica (replicas {:?})", p.replicas));
        }
        if !p.isr.contains(r) && !is_live(brokers, *r) {
            return Err(format!("broker {r} is fenced or not registered"));
        }
    }
    Ok(())
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

    fn with_configs(mut command: MetadataCommand, pairs: &[(&str, &str)]) -> MetadataCommand {
        if let MetadataCommand::CreateTopic { configs, .. } = &mut command {
            configs.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        command
    }

    fn epoch(s: &MetadataState, id: i32) -> i64 {
        s.brokers[&id].broker_epoch
    }

    fn part<'a>(s: &'a MetadataState, topic: &str, index: usize) -> &'a PartitionRecord {
        &s.topics[topic].partitions[index]
    }

    fn fence(s: &mut MetadataState, id: i32) {
        let broker_epoch = epoch(s, id);
        let response = s.apply(&MetadataCommand::FenceBroker { broker_id: id, broker_epoch });
        assert!(matches!(response, MetadataResponse::Applied { .. }), "{response:?}");
    }

    /// An AlterPartition from `broker` with its current broker epoch and the partition's
    /// current epochs.
    fn alter_cmd(s: &MetadataState, broker: i32, topic: &str, isr: &[i32]) -> MetadataCommand {
        let p = part(s, topic, 0);
        MetadataCommand::AlterPartition {
            broker_id: broker,
            broker_epoch: epoch(s, broker),
            topic: topic.into(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: isr.to_vec(),
        }
    }

    /// Applies [`alter_cmd`] and expects it to apply.
    fn alter(s: &mut MetadataState, broker: i32, topic: &str, isr: &[i32]) -> PartitionRecord {
        match s.apply(&alter_cmd(s, broker, topic, isr)) {
            MetadataResponse::PartitionAltered { partition, .. } => partition,
            other => panic!("alter partition of {topic} by {broker} to {isr:?}: {other:?}"),
        }
    }

    fn shutdown(s: &mut MetadataState, id: i32) -> MetadataResponse {
        let broker_epoch = epoch(s, id);
        s.apply(&MetadataCommand::ControlledShutdown { broker_id: id, broker_epoch })
    }

    /// (leader, leader epoch, partition epoch, isr) of partition 0 of `topic`.
    fn state_of(s: &MetadataState, topic: &str) -> (i32, i32, i32, Vec<i32>) {
        let p = part(s, topic, 0);
        (p.leader, p.leader_epoch, p.partition_epoch, p.isr.clone())
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
            // Partition a/0 is [1, 2], led by 1 at epochs 0/0 with isr [1]; broker 1 has epoch 1.
            (alter_partition(1, 1, "a", 0, 0, 0, &[1, 2]), true),
            (alter_partition(1, 1, "a", 0, 0, 0, &[1]), false), // stale partition epoch
            (alter_partition(1, 1, "a", 0, 1, 1, &[1]), false), // stale leader epoch
            (alter_partition(2, 2, "a", 0, 0, 1, &[2]), false), // not the leader
            (alter_partition(1, 9, "a", 0, 0, 1, &[1]), false), // stale broker epoch
            (alter_partition(1, 1, "a", 7, 0, 1, &[1]), false), // unknown partition
            (alter_partition(1, 1, "a", 0, 0, 1, &[2]), false), // isr without the leader
            (alter_partition(1, 1, "a", 0, 0, 1, &[1, 3]), false), // not a replica
            (MetadataCommand::ControlledShutdown { broker_id: 1, broker_epoch: 9 }, false),
            (MetadataCommand::ControlledShutdown { broker_id: 9, broker_epoch: 1 }, false),
            // 1 hands a/0 to 2 (in sync) and a/2's [3, 1] isr [3] does not contain it.
            (MetadataCommand::ControlledShutdown { broker_id: 1, broker_epoch: 1 }, true),
        ];
        for (command, applies) in cases {
            let before = s.clone();
            let response = s.apply(&command);
            if applies {
                assert!(!matches!(response, MetadataResponse::Refused(_)), "{command:?}");
                assert_eq!(s.version, before.version + 1, "{command:?}: {response:?}");
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
        assert_eq!(a.partitions[2].leader, 3, "first replica leads");
        assert_eq!(a.partitions[2].isr, vec![3], "followers are not in sync before replicating");
        assert_eq!(a.configs["retention.ms"], "1000");
        assert_eq!(
            (a.partitions[0].leader, a.partitions[0].isr.clone()),
            (2, vec![2]),
            "the controlled shutdown of 1 moved a/0 to 2"
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn alter_partition(
        broker_id: i32,
        broker_epoch: i64,
        topic: &str,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: &[i32],
    ) -> MetadataCommand {
        MetadataCommand::AlterPartition {
            broker_id,
            broker_epoch,
            topic: topic.into(),
            partition,
            leader_epoch,
            partition_epoch,
            isr: isr.to_vec(),
        }
    }

    /// When a leader is fenced, the lead goes to the first replica in `replicas` order (the
    /// preference order, not the ISR's order) that is in the ISR and live; each change bumps the
    /// partition epoch once and each new leader the leader epoch.
    #[test]
    fn fencing_the_leader_elects_the_first_in_sync_replica_in_replica_order() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2, 3]]));
        alter(&mut s, 1, "t", &[1, 3, 2]);
        assert_eq!(state_of(&s, "t"), (1, 0, 1, vec![1, 3, 2]));
        fence(&mut s, 1);
        assert_eq!(state_of(&s, "t"), (2, 1, 2, vec![3, 2]), "2 precedes 3 in replicas");
        fence(&mut s, 2);
        assert_eq!(state_of(&s, "t"), (3, 2, 3, vec![3]));
    }

    /// A live replica outside the ISR never takes the lead (unclean election is off by
    /// default): a fenced follower leaves the ISR, and when the last in-sync replica is fenced
    /// the partition has no leader while its ISR keeps that replica.
    #[test]
    fn no_election_outside_the_isr() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2, 3]]));
        alter(&mut s, 1, "t", &[1, 2]);
        fence(&mut s, 2);
        assert_eq!(state_of(&s, "t"), (1, 0, 2, vec![1]));
        fence(&mut s, 1);
        assert_eq!(
            state_of(&s, "t"),
            (-1, 1, 3, vec![1]),
            "3 is live but out of sync; 1 holds every acknowledged record"
        );
        s.apply(&register(2));
        assert_eq!(part(&s, "t", 0).leader, -1, "2 left the isr when it was fenced");
    }

    /// Fenced followers leave the ISR one by one; the leader and its leader epoch stay, and
    /// each removal bumps the partition epoch.
    #[test]
    fn fenced_followers_leave_the_isr() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2, 3]]));
        alter(&mut s, 1, "t", &[1, 2, 3]);
        fence(&mut s, 3);
        assert_eq!(state_of(&s, "t"), (1, 0, 2, vec![1, 2]));
        fence(&mut s, 2);
        assert_eq!(state_of(&s, "t"), (1, 0, 3, vec![1]));
    }

    /// With `unclean.leader.election.enable=true`, a partition whose in-sync replicas are all
    /// fenced goes to the first live replica, which becomes the whole ISR; with the config off
    /// (or unset) it stays leaderless.
    #[test]
    fn unclean_election_only_when_enabled() {
        let mut s = cluster();
        s.apply(&with_configs(
            create("unclean", vec![vec![1, 2, 3]]),
            &[(UNCLEAN_LEADER_ELECTION_ENABLE, "true")],
        ));
        s.apply(&with_configs(
            create("clean", vec![vec![1, 2, 3]]),
            &[(UNCLEAN_LEADER_ELECTION_ENABLE, "false")],
        ));
        s.apply(&create("default", vec![vec![1, 2, 3]]));
        fence(&mut s, 2);
        fence(&mut s, 1);
        assert_eq!(state_of(&s, "unclean"), (3, 1, 1, vec![3]));
        assert_eq!(state_of(&s, "clean"), (-1, 1, 1, vec![1]));
        assert_eq!(state_of(&s, "default"), (-1, 1, 1, vec![1]));
        // With no live replica at all there is nobody to elect, unclean or not.
        let mut s = cluster();
        s.apply(&with_configs(
            create("unclean", vec![vec![1, 2]]),
            &[(UNCLEAN_LEADER_ELECTION_ENABLE, "true")],
        ));
        fence(&mut s, 2);
        fence(&mut s, 1);
        assert_eq!(state_of(&s, "unclean"), (-1, 1, 1, vec![1]));
    }

    /// Controlled shutdown hands each partition the broker leads to an in-sync live replica,
    /// takes it out of the ISRs it follows in, keeps (and reports) the partitions nobody in
    /// sync can take over, never elects outside the ISR, leaves the broker unfenced, and
    /// changes nothing when asked again.
    #[test]
    fn controlled_shutdown_moves_leadership_and_reports_what_remains() {
        let mut s = cluster();
        s.apply(&create("a", vec![vec![1, 2], vec![1, 3]]));
        s.apply(&with_configs(
            create("b", vec![vec![1, 3]]),
            &[(UNCLEAN_LEADER_ELECTION_ENABLE, "true")],
        ));
        s.apply(&create("c", vec![vec![2, 1]]));
        alter(&mut s, 1, "a", &[1, 2]);
        alter(&mut s, 2, "c", &[2, 1]);
        let version = s.version;
        let response = shutdown(&mut s, 1);
        let remaining = vec![("a".to_string(), 1), ("b".to_string(), 0)];
        assert_eq!(
            response,
            MetadataResponse::ShutdownProgress {
                remaining: remaining.clone(),
                version: version + 1
            }
        );
        assert_eq!(state_of(&s, "a"), (2, 1, 2, vec![2]), "led by the in-sync replica");
        assert_eq!(state_of(&s, "b"), (1, 0, 0, vec![1]), "no unclean election on shutdown");
        assert_eq!(state_of(&s, "c"), (2, 0, 2, vec![2]), "1 left the isr it followed in");
        assert_eq!(s.topics["a"].partitions[1].leader, 1);
        assert!(!s.brokers[&1].fenced);
        let before = s.clone();
        assert_eq!(
            shutdown(&mut s, 1),
            MetadataResponse::ShutdownProgress { remaining, version: version + 1 }
        );
        assert_eq!(s, before, "asking again changes nothing");
    }

    /// ControlledShutdown is checked like a heartbeat: the broker's current epoch, not fenced.
    #[test]
    fn controlled_shutdown_refusals() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2]]));
        let e1 = epoch(&s, 1);
        fence(&mut s, 2);
        let e2 = epoch(&s, 2);
        let cases = [
            (9, 1, MetadataError::UnknownBroker(9)),
            (
                1,
                e1 + 7,
                MetadataError::StaleBrokerEpoch { broker_id: 1, broker_epoch: e1 + 7, current: e1 },
            ),
            (2, e2, MetadataError::BrokerFenced { broker_id: 2, broker_epoch: e2 }),
        ];
        for (broker_id, broker_epoch, error) in cases {
            let before = s.clone();
            let response =
                s.apply(&MetadataCommand::ControlledShutdown { broker_id, broker_epoch });
            assert_eq!(response, MetadataResponse::Refused(error));
            assert_eq!(s, before);
        }
    }

    /// AlterPartition: every refusal, in the order checked, changes nothing; the accepted
    /// change sets the ISR and bumps the partition epoch only; re-sending the ISR the partition
    /// already has (with current epochs) is a no-op, re-sending an applied change is stale.
    #[test]
    fn alter_partition_checks_and_refusals() {
        let mut s = cluster();
        s.apply(&register(4));
        s.apply(&create("t", vec![vec![1, 2, 4]]));
        fence(&mut s, 4);
        let e1 = epoch(&s, 1);
        let e4 = epoch(&s, 4);
        let good = alter_partition(1, e1, "t", 0, 0, 0, &[1, 2]);
        let with = |broker: i32, broker_epoch: i64, topic: &str, partition: i32| {
            alter_partition(broker, broker_epoch, topic, partition, 0, 0, &[1, 2])
        };
        let with_epochs = |leader_epoch, partition_epoch| {
            alter_partition(1, e1, "t", 0, leader_epoch, partition_epoch, &[1, 2])
        };
        let with_isr = |isr: &[i32]| alter_partition(1, e1, "t", 0, 0, 0, isr);
        let invalid = |isr: &[i32], reason: &str| MetadataError::InvalidIsr {
            topic: "t".into(),
            partition: 0,
            isr: isr.to_vec(),
            reason: reason.into(),
        };
        let cases = vec![
            (with(9, 1, "t", 0), MetadataError::UnknownBroker(9)),
            (
                with(1, e1 + 5, "t", 0),
                MetadataError::StaleBrokerEpoch { broker_id: 1, broker_epoch: e1 + 5, current: e1 },
            ),
            (with(4, e4, "t", 0), MetadataError::BrokerFenced { broker_id: 4, broker_epoch: e4 }),
            (with(1, e1, "zz", 0), MetadataError::UnknownTopic("zz".into())),
            (
                with(1, e1, "t", 1),
                MetadataError::UnknownPartition { topic: "t".into(), partition: 1 },
            ),
            (
                with(1, e1, "t", -1),
                MetadataError::UnknownPartition { topic: "t".into(), partition: -1 },
            ),
            (
                with(2, epoch(&s, 2), "t", 0),
                MetadataError::NotPartitionLeader {
                    topic: "t".into(),
                    partition: 0,
                    broker_id: 2,
                    leader: 1,
                },
            ),
            (
                with_epochs(1, 0),
                MetadataError::StaleLeaderEpoch {
                    topic: "t".into(),
                    partition: 0,
                    got: 1,
                    current: 0,
                },
            ),
            (
                with_epochs(0, 3),
                MetadataError::StalePartitionEpoch {
                    topic: "t".into(),
                    partition: 0,
                    got: 3,
                    current: 0,
                },
            ),
            (with_isr(&[]), invalid(&[], "the isr is empty")),
            (with_isr(&[1, 2, 1]), invalid(&[1, 2, 1], "broker 1 listed twice")),
            (with_isr(&[2]), invalid(&[2], "the isr must contain the leader 1")),
            (with_isr(&[1, 3]), invalid(&[1, 3], "broker 3 is not a replica (replicas [1, 2, 4])")),
            (with_isr(&[1, 4]), invalid(&[1, 4], "broker 4 is fenced or not registered")),
        ];
        for (command, error) in cases {
            let before = s.clone();
            assert_eq!(s.apply(&command), MetadataResponse::Refused(error), "{command:?}");
            assert_eq!(s, before, "a refused alter partition changes nothing: {command:?}");
        }
        let MetadataResponse::Refused(stale) = s.apply(&with_epochs(1, 0)) else { panic!() };
        assert!(stale.to_string().contains("stale leader epoch 1"), "{stale}");
        let MetadataResponse::Refused(stale) = s.apply(&with_epochs(0, 3)) else { panic!() };
        assert!(stale.to_string().contains("stale partition epoch 3"), "{stale}");

        let version = s.version;
        let applied = s.apply(&good);
        let expected = PartitionRecord {
            replicas: vec![1, 2, 4],
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 1,
            isr: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(
            applied,
            MetadataResponse::PartitionAltered {
                partition: expected.clone(),
                version: version + 1
            }
        );
        assert_eq!(*part(&s, "t", 0), expected);
        assert!(matches!(
            s.apply(&good),
            MetadataResponse::Refused(MetadataError::StalePartitionEpoch { .. })
        ));
        let before = s.clone();
        assert_eq!(alter(&mut s, 1, "t", &[1, 2]), expected, "same isr: a no-op");
        assert_eq!(s, before);
        // A fenced broker already in the ISR is not refused (only additions are checked), and a
        // shrink works like an expansion.
        assert_eq!(alter(&mut s, 1, "t", &[1]).isr, vec![1]);
    }

    /// After the preferred replica (the first) restarts, it is out of the ISR and another
    /// replica leads; once that leader adds it back to the ISR, the lead moves to it with a new
    /// leader epoch, in the same change (one partition epoch bump).
    #[test]
    fn preferred_leader_takes_the_lead_back_when_it_rejoins_the_isr() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2, 3]]));
        alter(&mut s, 1, "t", &[1, 2, 3]);
        fence(&mut s, 1);
        assert_eq!(state_of(&s, "t"), (2, 1, 2, vec![2, 3]));
        s.apply(&register(1));
        assert_eq!(part(&s, "t", 0).leader, 2, "registering alone does not move the lead");
        // Shrinking without the preferred replica keeps the leader.
        alter(&mut s, 2, "t", &[2]);
        assert_eq!(state_of(&s, "t"), (2, 1, 3, vec![2]));
        let now = alter(&mut s, 2, "t", &[2, 1]);
        assert_eq!((now.leader, now.leader_epoch, now.partition_epoch), (1, 2, 4));
        assert_eq!(now.isr, vec![2, 1], "the old leader stays in sync and follows");
        assert_eq!(*part(&s, "t", 0), now, "the response is the partition as it now is");
        // The old leader's epoch is stale now.
        assert!(matches!(
            s.apply(&alter_partition(2, epoch(&s, 2), "t", 0, 1, 4, &[2, 1])),
            MetadataResponse::Refused(MetadataError::NotPartitionLeader { leader: 1, .. })
        ));
    }

    /// When the last ISR member is fenced the partition has no leader; it re-registers (a new
    /// epoch) and leads again, while another replica that re-registers first does not.
    #[test]
    fn reregistering_the_last_isr_member_restores_leadership() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2]]));
        alter(&mut s, 1, "t", &[1, 2]);
        fence(&mut s, 2);
        fence(&mut s, 1);
        assert_eq!(state_of(&s, "t"), (-1, 1, 3, vec![1]));
        s.apply(&register(2));
        assert_eq!(part(&s, "t", 0).leader, -1);
        s.apply(&register(1));
        assert_eq!(state_of(&s, "t"), (1, 2, 4, vec![1]));
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
            alter_partition(1, 3, "x", 0, 2, 2, &[1, 2]),
            MetadataCommand::ControlledShutdown { broker_id: 1, broker_epoch: 3 },
        ];
        let (mut a, mut b) = (MetadataState::default(), MetadataState::default());
        for c in &commands {
            let wire: MetadataCommand =
                serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
            assert_eq!(a.apply(c), b.apply(&wire));
        }
        assert_eq!(a, b);
        assert_eq!(state_of(&a, "x"), (2, 3, 4, vec![2]), "every command applied");
        let restored: MetadataState =
            serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(restored, a);
    }

    /// Producer ids are handed out once each, also across a snapshot and restore.
    #[test]
    fn producer_ids_are_unique_and_survive_snapshots() {
        let mut s = MetadataState::default();
        let version = s.version;
        let ids: Vec<i64> = (0..3)
            .map(|_| match s.apply(&MetadataCommand::AllocateProducerId) {
                MetadataResponse::ProducerIdAllocated { producer_id } => producer_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(s.version, version, "brokers have nothing to act on");
        let mut restored: MetadataState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(matches!(
            restored.apply(&MetadataCommand::AllocateProducerId),
            MetadataResponse::ProducerIdAllocated { producer_id: 4 }
        ));
    }

    /// Review findings: a broker in controlled shutdown neither joins an ISR nor leads again
    /// until it registers anew; a fast restart of the last in-sync replica never triggers an
    /// unclean election (the broker is back with its data).
    #[test]
    fn shutdown_is_sticky_and_a_restart_is_not_an_unclean_election() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![2, 3]]));
        let alter = |s: &MetadataState, isr: Vec<i32>| {
            let p = &s.topics["t"].partitions[0];
            MetadataCommand::AlterPartition {
                broker_id: p.leader,
                broker_epoch: s.brokers[&p.leader].broker_epoch,
                topic: "t".into(),
                partition: 0,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr,
            }
        };
        s.apply(&alter(&s, vec![2, 3]));
        assert_eq!(s.topics["t"].partitions[0].isr, vec![2, 3]);
        let epoch3 = s.brokers[&3].broker_epoch;
        s.apply(&MetadataCommand::ControlledShutdown { broker_id: 3, broker_epoch: epoch3 });
        assert_eq!(s.topics["t"].partitions[0].isr, vec![2]);
        let again = s.apply(&alter(&s, vec![2, 3]));
        assert!(matches!(again, MetadataResponse::Refused(_)), "{again:?}");
        // Fenced while stopping, the same process registers again: still stopping. A new
        // process (another incarnation) starts afresh.
        let epoch3 = s.brokers[&3].broker_epoch;
        s.apply(&MetadataCommand::FenceBroker { broker_id: 3, broker_epoch: epoch3 });
        s.apply(&register(3));
        assert!(s.brokers[&3].shutting_down, "the same incarnation is still on its way out");
        let mut fresh = register(3);
        if let MetadataCommand::RegisterBroker { incarnation_id, .. } = &mut fresh {
            *incarnation_id = vec![42];
        }
        s.apply(&fresh);
        assert!(!s.brokers[&3].shutting_down);

        let mut s = cluster();
        s.apply(&with_configs(
            create("u", vec![vec![2, 3]]),
            &[(UNCLEAN_LEADER_ELECTION_ENABLE, "true")],
        ));
        let mut restart = register(2);
        if let MetadataCommand::RegisterBroker { incarnation_id, .. } = &mut restart {
            *incarnation_id = vec![99];
        }
        s.apply(&restart);
        let p = &s.topics["u"].partitions[0];
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]), "no unclean election on a restart");
    }

    fn coordinator(id: &str, incarnation: u8) -> MetadataCommand {
        MetadataCommand::RegisterCoordinator {
            coordinator_id: id.into(),
            host: "h".into(),
            port: 1,
            incarnation_id: vec![incarnation],
        }
    }

    fn owners(s: &MetadataState) -> Vec<(&str, &str)> {
        s.shards.iter().map(|o| (o.owner.as_str(), o.moving_to.as_str())).collect()
    }

    fn coordinator_epoch(s: &MetadataState, id: &str) -> i64 {
        s.coordinators[id].coordinator_epoch
    }

    #[test]
    fn shards_go_to_live_coordinators_and_move_only_once_released() {
        let mut s = cluster();
        s.apply(&create(tideline_common::OFFSETS_TOPIC, vec![vec![1]; 6]));
        assert_eq!(owners(&s), vec![("", ""); 6]);
        s.apply(&coordinator("a", 1));
        assert_eq!(owners(&s), vec![("a", ""); 6]);
        assert!(s.shards.iter().all(|o| o.epoch == 1));
        // A second coordinator: half the shards are asked to move, none moves yet.
        s.apply(&coordinator("b", 1));
        let moving: Vec<i32> = (0..6).filter(|&i| s.shards[i as usize].moving_to == "b").collect();
        assert_eq!(moving.len(), 3);
        assert!(s.shards.iter().all(|o| o.owner == "a"));
        // A stale epoch cannot release; the owner's release hands them over.
        let release = |epoch| MetadataCommand::ReleaseShards {
            coordinator_id: "a".into(),
            coordinator_epoch: epoch,
            shards: moving.clone(),
        };
        let a = coordinator_epoch(&s, "a");
        assert!(matches!(s.apply(&release(a + 10)), MetadataResponse::Refused(_)));
        s.apply(&release(a));
        for i in 0..6 {
            let o = &s.shards[i];
            let expected = if moving.contains(&(i as i32)) { ("b", 2) } else { ("a", 1) };
            assert_eq!((o.owner.as_str(), o.epoch), expected, "shard {i}");
            assert!(o.moving_to.is_empty());
        }
        // The first coordinator's lease lapses: its shards go to the live one at once.
        let before = s.clone();
        s.apply(&MetadataCommand::RemoveCoordinator {
            coordinator_id: "a".into(),
            coordinator_epoch: a - 1,
        });
        assert_eq!(s, before, "an old registration's removal is a no-op");
        s.apply(&MetadataCommand::RemoveCoordinator {
            coordinator_id: "a".into(),
            coordinator_epoch: a,
        });
        assert_eq!(owners(&s), vec![("b", ""); 6]);
        assert!(s.shards.iter().all(|o| o.epoch == 2));
        // Restarting under the same id bumps the epochs of what it owns (it must replay).
        let b = coordinator_epoch(&s, "b");
        s.apply(&coordinator("b", 2));
        assert!(coordinator_epoch(&s, "b") > b);
        assert!(s.shards.iter().all(|o| o.epoch == 3 && o.owner == "b"));
        // A retried registration keeps its epoch.
        let b = coordinator_epoch(&s, "b");
        s.apply(&coordinator("b", 2));
        assert_eq!(coordinator_epoch(&s, "b"), b);
        // Three coordinators over 6 shards: two each once released.
        s.apply(&coordinator("c", 1));
        s.apply(&coordinator("d", 1));
        let to = |id: &str| s.shards.iter().filter(|o| o.moving_to == id).count();
        assert_eq!((to("c"), to("d")), (2, 2));
        // The internal topic can be neither deleted nor grown.
        let delete = MetadataCommand::DeleteTopic { name: tideline_common::OFFSETS_TOPIC.into() };
        assert!(matches!(
            s.apply(&delete),
            MetadataResponse::Refused(MetadataError::InternalTopic(_))
        ));
    }

    fn reassign(topic: &str, target: &[i32], throttle: u64) -> MetadataCommand {
        MetadataCommand::ReassignPartitions {
            moves: vec![(topic.into(), 0, target.to_vec())],
            throttle,
        }
    }

    /// A move adds the new replicas after the old ones (the lead stays), waits until all of
    /// them are in the ISR, then becomes the target: the removed leader hands the lead to the
    /// target's first replica, and removed replicas leave the ISR. Each step is one partition
    /// epoch; the lead change one leader epoch.
    #[test]
    fn a_move_adds_replicas_waits_for_the_isr_then_moves_the_lead_and_drops_the_old() {
        let mut s = cluster();
        s.apply(&register(4));
        s.apply(&create("t", vec![vec![1, 2, 3]]));
        alter(&mut s, 1, "t", &[1, 2, 3]);
        let before = part(&s, "t", 0).clone();
        let version = s.version;
        assert!(matches!(
            s.apply(&reassign("t", &[4, 2, 3], 1000)),
            MetadataResponse::Applied { .. }
        ));
        let p = part(&s, "t", 0).clone();
        assert_eq!(
            (p.replicas.as_slice(), p.target.as_slice(), p.adding.as_slice()),
            (&[1, 2, 3, 4][..], &[4, 2, 3][..], &[4][..])
        );
        assert_eq!(p.removing(), [1]);
        assert_eq!((p.leader, p.leader_epoch, p.throttle), (1, before.leader_epoch, 1000));
        assert_eq!((p.partition_epoch, s.version), (before.partition_epoch + 1, version + 1));
        // The same move again is a no-op; another target is refused until cancelled.
        let version = s.version;
        s.apply(&reassign("t", &[4, 2, 3], 1000));
        assert_eq!(s.version, version);
        assert!(matches!(
            s.apply(&reassign("t", &[2, 3, 4], 0)),
            MetadataResponse::Refused(MetadataError::ReassignmentInProgress { .. })
        ));
        // An ISR change that leaves 4 out changes nothing of the move.
        let p = alter(&mut s, 1, "t", &[1, 2]);
        assert!(p.is_moving());
        // 4 joins while 3, which stays, lags: not yet, or only 2 and 4 would be left in sync
        // where 1 and 2 are now.
        let p = alter(&mut s, 1, "t", &[1, 2, 4]);
        assert!(p.is_moving());
        // 3 is back: the whole target is in sync, the move completes, 4 leads, 1 is gone.
        let p = alter(&mut s, 1, "t", &[1, 2, 4, 3]);
        assert_eq!(p.replicas, [4, 2, 3]);
        assert_eq!(p.isr, [2, 4, 3]);
        assert_eq!((p.leader, p.leader_epoch), (4, before.leader_epoch + 1));
        assert!(!p.is_moving() && p.adding.is_empty() && p.throttle == 0);
        // The new leader's ISR changes go on as usual.
        let p = alter(&mut s, 4, "t", &[2, 4]);
        assert_eq!(p.isr, [2, 4]);
    }

    /// A new order of the same replicas completes at once and moves the lead to the new first
    /// replica; a lead-keeping move keeps the leader epoch.
    #[test]
    fn a_reorder_completes_at_once() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2, 3]]));
        alter(&mut s, 1, "t", &[1, 2, 3]);
        let epoch = part(&s, "t", 0).leader_epoch;
        s.apply(&reassign("t", &[2, 1, 3], 0));
        let p = part(&s, "t", 0);
        assert_eq!(
            (p.replicas.as_slice(), p.leader, p.leader_epoch),
            (&[2, 1, 3][..], 2, epoch + 1)
        );
        assert!(!p.is_moving());
    }

    /// A leader failing during a move hands over to an original replica: an unclean election
    /// never picks a replica still being added, which may hold nothing yet.
    #[test]
    fn unclean_elections_skip_replicas_being_added() {
        let mut s = cluster();
        s.apply(&register(4));
        s.apply(&with_configs(
            create("u", vec![vec![1, 2]]),
            &[(UNCLEAN_LEADER_ELECTION_ENABLE, "true")],
        ));
        s.apply(&reassign("u", &[4, 2], 0));
        // Only 1 is in sync; 2 is down too. With 1 fenced, the live 4 is still being added.
        fence(&mut s, 2);
        fence(&mut s, 1);
        let p = part(&s, "u", 0);
        assert_eq!(p.leader, -1, "no leader rather than the empty new 4: {p:?}");
        // 1 comes back: the last in-sync replica leads again.
        s.apply(&register(1));
        assert_eq!(part(&s, "u", 0).leader, 1);
    }

    /// Bad targets refuse the whole request and change nothing.
    #[test]
    fn invalid_moves_are_refused_all_or_none() {
        let mut s = cluster();
        s.apply(&create("t", vec![vec![1, 2]]));
        s.apply(&create("u", vec![vec![1, 2]]));
        let version = s.version;
        for (moves, what) in [
            (vec![("t", 0, vec![1, 9])], "unknown broker 9"),
            (vec![("t", 0, vec![1, 1])], "listed twice"),
            (vec![("t", 0, vec![1, 2, 3])], "3 replicas for replication factor 2"),
            (
                vec![("u", 0, vec![3, 2]), ("t", 0, vec![3, 2]), ("t", 0, vec![3, 1])],
                "listed twice in the request",
            ),
            (vec![("u", 0, vec![3, 2]), ("t", 5, vec![3, 2])], "unknown partition t/5"),
            (vec![("nope", 0, vec![3, 2])], "unknown topic nope"),
        ] {
            let moves = moves.into_iter().map(|(t, p, r)| (t.to_string(), p, r)).collect();
            match s.apply(&MetadataCommand::ReassignPartitions { moves, throttle: 0 }) {
                MetadataResponse::Refused(e) => assert!(e.to_string().contains(what), "{e}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert_eq!(s.version, version);
        assert!(!part(&s, "u", 0).is_moving());
    }

    /// Cancelling puts the original replicas back. An adding replica that took the lead (no
    /// original one was in sync when the leader failed) hands it to an original one back in
    /// sync, and until there is one the cancel is refused. Cancelling when nothing moves
    /// changes nothing.
    #[test]
    fn cancel_restores_the_original_replicas() {
        let mut s = cluster();
        s.apply(&register(4));
        s.apply(&create("t", vec![vec![1, 2]]));
        alter(&mut s, 1, "t", &[1, 2]);
        s.apply(&reassign("t", &[4, 3], 0));
        // 3 joins and 2 falls out (4 not in yet): still moving. Then 1 is fenced: only 3 is in
        // sync, and leads.
        let p = alter(&mut s, 1, "t", &[1, 3]);
        assert_eq!(p.replicas, [1, 2, 4, 3]);
        fence(&mut s, 1);
        assert_eq!((part(&s, "t", 0).leader, part(&s, "t", 0).isr.as_slice()), (3, &[3][..]));
        let cancel = MetadataCommand::CancelReassignments { partitions: vec![] };
        match s.apply(&cancel) {
            MetadataResponse::Refused(e) => assert!(e.to_string().contains("in sync"), "{e}"),
            other => panic!("{other:?}"),
        }
        // 2 catches up with 3: now the cancel goes through and 2 takes the lead.
        let epoch = alter(&mut s, 3, "t", &[3, 2]).leader_epoch;
        let version = s.version;
        s.apply(&cancel);
        let p = part(&s, "t", 0);
        assert_eq!((p.replicas.as_slice(), p.isr.as_slice(), p.leader), (&[1, 2][..], &[2][..], 2));
        assert_eq!(p.leader_epoch, epoch + 1);
        assert!(!p.is_moving() && p.throttle == 0 && p.adding.is_empty());
        assert_eq!(s.version, version + 1);
        s.apply(&MetadataCommand::CancelReassignments { partitions: vec![("t".into(), 0)] });
        assert_eq!(s.version, version + 1);
    }

    /// A moving partition survives a snapshot round trip and an old snapshot (before moves
    /// existed) still reads.
    #[test]
    fn moves_survive_serialization() {
        let mut s = cluster();
        s.apply(&register(4));
        s.apply(&create("t", vec![vec![1, 2, 3]]));
        s.apply(&reassign("t", &[4, 2, 3], 5));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MetadataState>(&json).unwrap(), s);
        let old = r#"{"replicas":[1],"leader":1,"leader_epoch":0,"partition_epoch":0,"isr":[1]}"#;
        let p: PartitionRecord = serde_json::from_str(old).unwrap();
        assert!(!p.is_moving() && p.original() == [1]);
    }
}
