//! [`Shard`]: the groups and committed offsets of one `__consumer_offsets` partition, with the
//! operations the coordinator serves on them. Pure: offset commits and deletions come out as the
//! records to write to the shard (and to replay here once written), time and partition end
//! offsets come in as arguments.
//!
//! [`shard_for`] maps a group id to its shard as Kafka does (`abs(javaHashCode(id)) % shards`),
//! so a group keeps its shard number across Kafka-style tooling.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tideline_common::{ErrorCode, TopicName};

use crate::assignor::Assignor;
use crate::group::{Group, GroupConfig, GroupError, Heartbeat, HeartbeatAnswer};
use crate::offsets::{CommittedOffset, OffsetKey, OffsetStore, RecordError};

/// A record to write to the shard: key, and value (`None` for a tombstone).
pub type ShardRecord = (Bytes, Option<Bytes>);

pub use tideline_common::shard_for;

/// Key version of a group's membership record (offset commits use version 1).
const GROUP_KEY_VERSION: u16 = 2;

/// Key version of a takeover marker.
const MARKER_KEY_VERSION: u16 = 3;

/// Header every record a coordinator writes carries: the shard epoch it owned the shard at
/// (`i64`, big-endian).
pub const SHARD_EPOCH_HEADER: &str = "tideline.shard.epoch";

/// The key of the takeover marker a coordinator writes when it loaded a shard at `epoch`:
/// `u16 version (3) | i64 epoch`. Replaying the shard, records written at an older epoch that
/// come after a newer marker are ignored: they come from a coordinator that had lost the shard
/// (its writes landed after the new owner took over). Each epoch has its own key, so compaction
/// keeps every marker.
pub fn marker_key(epoch: i64) -> Bytes {
    let mut out = bytes::BytesMut::with_capacity(10);
    bytes::BufMut::put_u16(&mut out, MARKER_KEY_VERSION);
    bytes::BufMut::put_i64(&mut out, epoch);
    out.freeze()
}

/// The epoch of a takeover marker's key, `None` for any other record.
pub fn marker_epoch(key: &[u8]) -> Option<i64> {
    if key.len() != 10 || u16::from_be_bytes([key[0], key[1]]) != MARKER_KEY_VERSION {
        return None;
    }
    Some(i64::from_be_bytes(key[2..10].try_into().ok()?))
}

/// The key of `group`'s membership record: `u16 version (2) | u16 len, group`.
fn group_key(group: &str) -> Result<Bytes, RecordError> {
    let mut out = bytes::BytesMut::with_capacity(4 + group.len());
    bytes::BufMut::put_u16(&mut out, GROUP_KEY_VERSION);
    crate::offsets::put_str(&mut out, group)?;
    Ok(out.freeze())
}

fn decode_group_key(key: &[u8]) -> Result<String, RecordError> {
    let mut buf = &key[2..];
    let group = crate::offsets::get_str(&mut buf)?;
    if !buf.is_empty() {
        return Err(RecordError("trailing bytes in group key".into()));
    }
    Ok(group)
}

/// Why a shard operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// A membership error (unknown member, stale epoch, invalid heartbeat).
    #[error(transparent)]
    Group(#[from] GroupError),
    /// No such group.
    #[error("group {0:?} does not exist")]
    UnknownGroup(String),
    /// The group has members: offsets can only be set by its members, and it cannot be deleted.
    #[error("group {group:?} has {members} members")]
    NonEmptyGroup {
        /// The group.
        group: String,
        /// How many members it has.
        members: usize,
    },
    /// A commit names a partition that does not exist (or the topics are not known yet).
    #[error("commit for group {group:?} names unknown partition {topic}-{partition}")]
    UnknownPartition {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// A commit has a negative offset.
    #[error("invalid commit for group {group:?}: {reason}")]
    InvalidCommit {
        /// The group.
        group: String,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl ShardError {
    /// The error code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            ShardError::Group(e) => e.code(),
            ShardError::UnknownGroup(_) => ErrorCode::GroupIdNotFound,
            ShardError::NonEmptyGroup { .. } => ErrorCode::NonEmptyGroup,
            ShardError::UnknownPartition { .. } => ErrorCode::UnknownTopicOrPartition,
            ShardError::InvalidCommit { .. } | ShardError::Record(_) => ErrorCode::InvalidRequest,
        }
    }
}

/// A group's state as `DescribeGroup` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (offsets may remain).
    Empty,
    /// Members are moving towards a new target assignment.
    Reconciling,
    /// Every member owns its target.
    Stable,
}

/// One partition of a group's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset, if any.
    pub committed: Option<i64>,
    /// The partition's end offset (high watermark), if known.
    pub end: Option<i64>,
    /// Records behind: end minus committed (the whole partition when nothing is committed and
    /// the end is known).
    pub lag: Option<i64>,
    /// The member owning it now, if any.
    pub owner: Option<String>,
}

/// A member as `DescribeGroup` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id.
    pub member_id: String,
    /// Its epoch.
    pub member_epoch: i32,
    /// Its instance id, for a static member.
    pub instance_id: Option<String>,
    /// Its rack.
    pub rack: Option<String>,
    /// Its subscription by name.
    pub subscribed_topics: Vec<String>,
    /// Its subscription by pattern.
    pub subscribed_regex: Option<String>,
    /// The partitions it was given, as (topic, partition).
    pub assigned: BTreeSet<(String, i32)>,
}

/// A group as `DescribeGroup` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// Its epoch.
    pub group_epoch: i32,
    /// Its server-side assignor.
    pub assignor: Assignor,
    /// Members with their epochs and assigned partitions.
    pub members: Vec<MemberDescription>,
    /// Per partition with a commit or an owner: committed offset, end offset, lag.
    pub partitions: Vec<PartitionLag>,
}

/// The groups and offsets of one shard.
#[derive(Debug, Clone, Default)]
pub struct Shard {
    config: GroupConfig,
    topics: BTreeMap<TopicName, i32>,
    groups: BTreeMap<String, Group>,
    offsets: OffsetStore,
    /// The last record written or replayed per group, so only changes are written.
    persisted: BTreeMap<String, Bytes>,
    /// Set once the cluster's topics were given.
    topics_known: bool,
}

impl Shard {
    /// An empty shard whose new groups use `config`.
    pub fn new(config: GroupConfig) -> Self {
        Shard { config, ..Default::default() }
    }

    /// Applies one record read back from the shard's partition (at load), in log order: an
    /// offset commit or its tombstone, or a group's membership record or its tombstone.
    /// Members of a replayed group get no session deadline until [`Shard::start_sessions`].
    ///
    /// # Errors
    /// [`RecordError`] for a record that is not an offsets-shard record (nothing changes).
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RecordError> {
        if key.len() >= 2 && u16::from_be_bytes([key[0], key[1]]) == GROUP_KEY_VERSION {
            let group = decode_group_key(key)?;
            match value {
                Some(v) => {
                    let g = Group::decode_record(&group, self.config.clone(), v, i64::MAX)?;
                    self.persisted.insert(group.clone(), Bytes::copy_from_slice(v));
                    self.groups.insert(group, g);
                }
                None => {
                    self.persisted.remove(&group);
                    self.groups.remove(&group);
                }
            }
            return Ok(());
        }
        self.offsets.replay(key, value)
    }

    /// Starts a session, ending `session_timeout_ms` after `now_ms`, for every member (after
    /// a load: the members had no chance to heartbeat to this coordinator yet).
    pub fn start_sessions(&mut self, now_ms: i64) {
        for g in self.groups.values_mut() {
            for m in g.members.values_mut() {
                m.expires_ms = now_ms.saturating_add(g.config.session_timeout_ms);
            }
        }
    }

    /// The record to write for `group` when its membership changed since it was last written
    /// (or replayed); remembers it as written.
    fn dirty(&mut self, group: &str) -> Result<Option<ShardRecord>, ShardError> {
        let Some(g) = self.groups.get(group) else {
            return Ok(None);
        };
        let value = g.encode_record()?;
        if self.persisted.get(group) == Some(&value) {
            return Ok(None);
        }
        self.persisted.insert(group.to_string(), value.clone());
        Ok(Some((group_key(group)?, Some(value))))
    }

    /// The records of `groups` that changed (a group that became empty without offsets is
    /// removed, with a tombstone when it had been written).
    fn records_of(&mut self, groups: Vec<String>) -> Vec<ShardRecord> {
        // A group too large to encode was refused when it grew; nothing to add here.
        groups.iter().filter_map(|g| self.gc(g).or_else(|| self.dirty(g).ok().flatten())).collect()
    }

    /// Removes `group` when it has no member and no committed offset; returns its tombstone
    /// when it had been written.
    fn gc(&mut self, group: &str) -> Option<ShardRecord> {
        let empty = self.groups.get(group).is_some_and(Group::is_empty)
            && self.offsets.of_group(group).next().is_none();
        if !empty {
            return None;
        }
        self.groups.remove(group);
        self.persisted.remove(group)?;
        group_key(group).ok().map(|k| (k, None))
    }

    /// The group `group`, if it has members or state.
    pub fn group(&self, group: &str) -> Option<&Group> {
        self.groups.get(group)
    }

    /// Every group with membership state.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Whether the cluster's topics were given (groups can be assigned and commits checked).
    pub fn topics_known(&self) -> bool {
        self.topics_known
    }

    /// Sets the topics and partition counts groups may be assigned (from cluster metadata).
    /// Returns the records of the groups this changed.
    pub fn set_topics(&mut self, topics: BTreeMap<TopicName, i32>) -> Vec<ShardRecord> {
        let mut changed = Vec::new();
        for g in self.groups.values_mut() {
            if g.set_topics(topics.clone()) {
                changed.push(g.group_id.clone());
            }
        }
        self.topics = topics;
        self.topics_known = true;
        self.records_of(changed)
    }

    /// A member's heartbeat to `group` (created on first join, with `assignor` or the shard's
    /// default). Returns the answer, and the group's record when its membership changed (also
    /// when the heartbeat was refused: members may have expired first): the caller writes it
    /// before answering.
    ///
    /// # Errors
    /// The answer is [`ShardError::Group`] with the membership error.
    pub fn heartbeat(
        &mut self,
        group: &str,
        hb: Heartbeat,
        now_ms: i64,
        assignor: Option<Assignor>,
    ) -> (Result<HeartbeatAnswer, ShardError>, Option<ShardRecord>) {
        let created = !self.groups.contains_key(group);
        if created {
            if hb.member_epoch != crate::group::JOIN_EPOCH {
                let e =
                    GroupError::UnknownMember { group: group.to_string(), member_id: hb.member_id };
                return (Err(e.into()), None);
            }
            let mut config = self.config.clone();
            config.assignor = assignor.unwrap_or(config.assignor);
            let mut g = Group::new(group, config);
            g.set_topics(self.topics.clone());
            self.groups.insert(group.to_string(), g);
        }
        let g = self.groups.get_mut(group).expect("present");
        let result = g.heartbeat(hb, now_ms).map_err(ShardError::from);
        if created && result.is_err() {
            // A refused first join leaves nothing behind.
            self.groups.remove(group);
            return (result, None);
        }
        if let Some(tombstone) = self.gc(group) {
            return (result, Some(tombstone));
        }
        match self.dirty(group) {
            Ok(record) => (result, record),
            Err(e) => (Err(e), None),
        }
    }

    /// Removes members whose sessions ended, in every group; returns the records of the
    /// groups this changed.
    pub fn expire(&mut self, now_ms: i64) -> Vec<ShardRecord> {
        let mut changed = Vec::new();
        for g in self.groups.values_mut() {
            if !g.expire(now_ms).is_empty() {
                changed.push(g.group_id.clone());
            }
        }
        self.records_of(changed)
    }

    /// The records committing `offsets` for `group`: from a member (its id and epoch are
    /// checked, a stale epoch is fenced), or, with `member` `None`, from an admin on a group
    /// with no members.
    ///
    /// # Errors
    /// [`ShardError::Group`] (unknown member, stale epoch), [`ShardError::NonEmptyGroup`] for an
    /// admin commit to a group with members, [`ShardError::InvalidCommit`].
    pub fn commit(
        &self,
        group: &str,
        member: Option<(&str, i32)>,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<Vec<ShardRecord>, ShardError> {
        match (member, self.groups.get(group)) {
            (Some((id, epoch)), Some(g)) => {
                g.check_commit(id, epoch, offsets.iter().map(|(t, p, _)| (t.as_str(), *p)))?
            }
            (Some((id, _)), None) => {
                return Err(GroupError::UnknownMember {
                    group: group.to_string(),
                    member_id: id.to_string(),
                }
                .into());
            }
            (None, Some(g)) if !g.is_empty() => {
                return Err(ShardError::NonEmptyGroup {
                    group: group.to_string(),
                    members: g.members.len(),
                });
            }
            (None, _) => {}
        }
        offsets
            .iter()
            .map(|(topic, partition, o)| {
                let known = TopicName::new(topic.as_str())
                    .ok()
                    .and_then(|t| self.topics.get(&t))
                    .is_some_and(|count| (0..*count).contains(partition));
                if !known {
                    return Err(ShardError::UnknownPartition {
                        group: group.to_string(),
                        topic: topic.clone(),
                        partition: *partition,
                    });
                }
                if o.offset < 0 {
                    return Err(ShardError::InvalidCommit {
                        group: group.to_string(),
                        reason: format!("{topic}-{partition} at negative offset {}", o.offset),
                    });
                }
                let key = OffsetKey {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                };
                Ok(OffsetStore::commit_record(&key, o)?)
            })
            .collect()
    }

    /// The committed offsets of `group`.
    pub fn fetch_offsets(&self, group: &str) -> Vec<(OffsetKey, CommittedOffset)> {
        self.offsets.of_group(group).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every group with members or committed offsets.
    pub fn list_groups(&self) -> Vec<(String, GroupState)> {
        let mut names: BTreeSet<String> = self.groups.keys().cloned().collect();
        names.extend(self.offsets.groups());
        names.into_iter().map(|g| (g.clone(), self.state(&g))).collect()
    }

    fn state(&self, group: &str) -> GroupState {
        match self.groups.get(group) {
            Some(g) if !g.is_empty() && g.is_stable() => GroupState::Stable,
            Some(g) if !g.is_empty() => GroupState::Reconciling,
            _ => GroupState::Empty,
        }
    }

    /// Describes `group`: members, and per partition the committed offset, the end offset
    /// `end_of(topic, partition)` reports, and the lag.
    ///
    /// # Errors
    /// [`ShardError::UnknownGroup`].
    pub fn describe(
        &self,
        group: &str,
        end_of: impl Fn(&str, i32) -> Option<i64>,
    ) -> Result<GroupDescription, ShardError> {
        let g = self.groups.get(group);
        if g.is_none() && self.offsets.of_group(group).next().is_none() {
            return Err(ShardError::UnknownGroup(group.to_string()));
        }
        let mut partitions: BTreeMap<(String, i32), PartitionLag> = BTreeMap::new();
        let mut members = Vec::new();
        for m in g.iter().flat_map(|g| g.members.values()) {
            let owned: BTreeSet<(String, i32)> =
                m.assigned.iter().map(|(t, p)| (t.to_string(), p.0)).collect();
            for (t, p) in &owned {
                partitions.entry((t.clone(), *p)).or_insert_with(|| lag_row(t, *p)).owner =
                    Some(m.member_id.clone());
            }
            members.push(MemberDescription {
                member_id: m.member_id.clone(),
                member_epoch: m.member_epoch,
                instance_id: m.instance_id.clone(),
                rack: m.rack.clone(),
                subscribed_topics: m.subscribed_topics.iter().map(|t| t.to_string()).collect(),
                subscribed_regex: m.subscribed_regex.clone(),
                assigned: owned,
            });
        }
        for (k, v) in self.offsets.of_group(group) {
            partitions
                .entry((k.topic.clone(), k.partition))
                .or_insert_with(|| lag_row(&k.topic, k.partition))
                .committed = Some(v.offset);
        }
        for row in partitions.values_mut() {
            row.end = end_of(&row.topic, row.partition);
            row.lag = row.end.map(|end| (end - row.committed.unwrap_or(0)).max(0));
        }
        Ok(GroupDescription {
            group: group.to_string(),
            state: self.state(group),
            group_epoch: g.map_or(0, |g| g.group_epoch),
            assignor: g.map_or(self.config.assignor, |g| g.config.assignor),
            members,
            partitions: partitions.into_values().collect(),
        })
    }

    /// The tombstones deleting `group`'s offsets; the group must have no members.
    ///
    /// # Errors
    /// [`ShardError::UnknownGroup`], [`ShardError::NonEmptyGroup`].
    pub fn delete_group(&mut self, group: &str) -> Result<Vec<ShardRecord>, ShardError> {
        let known =
            self.groups.contains_key(group) || self.offsets.of_group(group).next().is_some();
        if !known {
            return Err(ShardError::UnknownGroup(group.to_string()));
        }
        if let Some(g) = self.groups.get(group)
            && !g.is_empty()
        {
            return Err(ShardError::NonEmptyGroup {
                group: group.to_string(),
                members: g.members.len(),
            });
        }
        self.groups.remove(group);
        let mut records = self.offsets.delete_group_records(group)?;
        if self.persisted.remove(group).is_some() {
            records.push((group_key(group)?, None));
        }
        Ok(records)
    }
}

fn lag_row(topic: &str, partition: i32) -> PartitionLag {
    PartitionLag {
        topic: topic.to_string(),
        partition,
        committed: None,
        end: None,
        lag: None,
        owner: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignor::TopicPartition;

    fn topics() -> BTreeMap<TopicName, i32> {
        BTreeMap::from([(TopicName::new("t").unwrap(), 2)])
    }

    fn offset(o: i64) -> CommittedOffset {
        CommittedOffset { offset: o, leader_epoch: -1, commit_time_ms: 0, metadata: String::new() }
    }

    fn join(shard: &mut Shard, group: &str) -> HeartbeatAnswer {
        shard
            .heartbeat(
                group,
                Heartbeat {
                    subscribed_topics: Some(BTreeSet::from([TopicName::new("t").unwrap()])),
                    ..Default::default()
                },
                0,
                None,
            )
            .0
            .unwrap()
    }

    /// Kafka's mapping: `Utils.abs(groupId.hashCode()) % shards`, including the id whose Java
    /// hash is `Integer.MIN_VALUE`.
    #[test]
    fn groups_map_to_shards_as_in_kafka() {
        // "my-group".hashCode() is -1906497762 in Java: abs -> 1906497762, % 50 = 12.
        assert_eq!(shard_for("my-group", 50), 12);
        assert_eq!(shard_for("", 50), 0);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Kafka's abs maps it to 0.
        assert_eq!(shard_for("polygenelubricants", 16), 0);
    }

    #[test]
    fn commits_are_fenced_by_member_epoch_and_replayed() {
        let mut shard = Shard::new(GroupConfig::default());
        shard.set_topics(topics());
        let a = join(&mut shard, "g");
        let records = shard
            .commit("g", Some((&a.member_id, a.member_epoch)), &[("t".into(), 0, offset(5))])
            .unwrap();
        for (k, v) in &records {
            shard.replay(k, v.as_deref()).unwrap();
        }
        assert_eq!(shard.fetch_offsets("g")[0].1.offset, 5);
        let stale = shard.commit(
            "g",
            Some((&a.member_id, a.member_epoch + 7)),
            &[("t".into(), 0, offset(6))],
        );
        assert_eq!(stale.unwrap_err().code(), ErrorCode::StaleMemberEpoch);
        let unknown = shard.commit("g", Some(("nobody", 1)), &[("t".into(), 0, offset(6))]);
        assert_eq!(unknown.unwrap_err().code(), ErrorCode::UnknownMemberId);
        let bad =
            shard.commit("g", Some((&a.member_id, a.member_epoch)), &[("t".into(), 9, offset(6))]);
        assert_eq!(bad.unwrap_err().code(), ErrorCode::UnknownTopicOrPartition);
        let negative =
            shard.commit("g", Some((&a.member_id, a.member_epoch)), &[("t".into(), 0, offset(-2))]);
        assert_eq!(negative.unwrap_err().code(), ErrorCode::InvalidRequest);
        // An admin may set offsets only of an empty group; a group with members cannot be
        // deleted.
        let admin = shard.commit("g", None, &[("t".into(), 0, offset(0))]);
        assert_eq!(admin.unwrap_err().code(), ErrorCode::NonEmptyGroup);
        assert_eq!(shard.delete_group("g").unwrap_err().code(), ErrorCode::NonEmptyGroup);
        assert_eq!(shard.delete_group("nope").unwrap_err().code(), ErrorCode::GroupIdNotFound);
    }

    #[test]
    fn describe_shows_members_offsets_and_lag_and_empty_groups_can_be_deleted() {
        let mut shard = Shard::new(GroupConfig::default());
        shard.set_topics(topics());
        let a = join(&mut shard, "g");
        for (k, v) in shard
            .commit("g", Some((&a.member_id, a.member_epoch)), &[("t".into(), 1, offset(40))])
            .unwrap()
        {
            shard.replay(&k, v.as_deref()).unwrap();
        }
        let d = shard.describe("g", |_, p| Some(if p == 0 { 10 } else { 100 })).unwrap();
        assert_eq!(d.state, GroupState::Stable);
        assert_eq!(d.members.len(), 1);
        assert_eq!(d.partitions.len(), 2);
        assert_eq!((d.partitions[0].lag, d.partitions[1].lag), (Some(10), Some(60)));
        assert_eq!(d.partitions[1].owner.as_deref(), Some(a.member_id.as_str()));
        // The member leaves; the group is empty and its offsets can be reset or deleted.
        shard
            .heartbeat(
                "g",
                Heartbeat {
                    member_id: a.member_id.clone(),
                    member_epoch: crate::group::LEAVE_EPOCH,
                    ..Default::default()
                },
                1,
                None,
            )
            .0
            .unwrap();
        assert_eq!(shard.list_groups(), vec![("g".to_string(), GroupState::Empty)]);
        assert!(shard.commit("g", None, &[("t".into(), 1, offset(0))]).is_ok());
        for (k, v) in shard.delete_group("g").unwrap() {
            shard.replay(&k, v.as_deref()).unwrap();
        }
        assert!(shard.list_groups().is_empty());
        assert_eq!(
            shard.describe("g", |_, _| None).unwrap_err().code(),
            ErrorCode::GroupIdNotFound
        );
    }

    /// Membership changes come out as records; replaying them in order rebuilds the same
    /// groups (members, epochs, assignments) on another coordinator, and heartbeats that change
    /// nothing write nothing.
    #[test]
    fn membership_records_replay_into_the_same_groups() {
        let mut shard = Shard::new(GroupConfig::default());
        let mut log: Vec<ShardRecord> = shard.set_topics(topics());
        let hb = |member_id: &str, epoch: i32, owned: Option<BTreeSet<TopicPartition>>| Heartbeat {
            member_id: member_id.into(),
            member_epoch: epoch,
            subscribed_topics: (epoch == 0).then(|| BTreeSet::from([TopicName::new("t").unwrap()])),
            instance_id: (epoch == 0 && owned.is_some()).then(|| "static-1".to_string()),
            owned,
            ..Default::default()
        };
        let (a, record) =
            shard.heartbeat("g", hb("", 0, Some(BTreeSet::new())), 0, Some(Assignor::Range));
        let a = a.unwrap();
        log.extend(record);
        let (b, record) = shard.heartbeat("g", hb("", 0, None), 1, None);
        let b = b.unwrap();
        log.extend(record);
        // a gives up what it must; both converge.
        for now in 2..6 {
            let (ans, record) =
                shard.heartbeat("g", hb(&a.member_id, a.member_epoch, None), now, None);
            ans.unwrap();
            log.extend(record);
        }
        let before = log.len();
        let (again, record) = shard.heartbeat("g", hb(&b.member_id, b.member_epoch, None), 7, None);
        again.unwrap();
        log.extend(record);
        let settled = log.len();
        let (again, record) = shard.heartbeat("g", hb(&b.member_id, b.member_epoch, None), 8, None);
        // Once settled, a heartbeat that changes nothing writes nothing.
        assert!(record.is_none(), "{again:?} after {before} then {settled} records");
        let commits = shard
            .commit("g", Some((&b.member_id, b.member_epoch)), &[("t".into(), 1, offset(9))])
            .unwrap();
        for (k, v) in &commits {
            shard.replay(k, v.as_deref()).unwrap();
        }
        log.extend(commits);

        let mut other = Shard::new(GroupConfig::default());
        for (k, v) in &log {
            other.replay(k, v.as_deref()).unwrap();
        }
        other.start_sessions(100);
        assert_eq!(other.groups["g"].members.len(), 2);
        for (id, m) in &shard.groups["g"].members {
            let r = &other.groups["g"].members[id];
            assert_eq!(
                (r.member_epoch, &r.assigned, &r.revoking, &r.instance_id),
                (m.member_epoch, &m.assigned, &m.revoking, &m.instance_id)
            );
            assert_eq!(r.expires_ms, 100 + GroupConfig::default().session_timeout_ms);
        }
        assert_eq!(other.groups["g"].target, shard.groups["g"].target);
        assert_eq!(other.groups["g"].config.assignor, Assignor::Range);
        assert_eq!(other.fetch_offsets("g"), shard.fetch_offsets("g"));
        // Nothing changed, so nothing to write after the replay.
        assert!(other.set_topics(topics()).is_empty());
        // Every member gone and the group deleted: its record is tombstoned too.
        let gone = other.expire(i64::MAX);
        assert_eq!(gone.len(), 1);
        let deleted = other.delete_group("g").unwrap();
        assert!(
            deleted.iter().any(|(k, v)| k[..2] == GROUP_KEY_VERSION.to_be_bytes() && v.is_none())
        );
        let mut third = Shard::new(GroupConfig::default());
        for (k, v) in log.iter().chain(&gone).chain(&deleted) {
            third.replay(k, v.as_deref()).unwrap();
        }
        assert!(third.list_groups().is_empty());
    }

    /// What a review found: a topic nobody subscribes to does not touch groups; a join with an
    /// id already present starts that member over; an old epoch commits only partitions the
    /// member still holds; a refused first join and an emptied group leave nothing behind.
    #[test]
    fn groups_keep_only_what_they_need() {
        let mut shard = Shard::new(GroupConfig::default());
        let t = |n: &str, p: i32| (TopicName::new(n).unwrap(), p);
        let _ = shard.set_topics(BTreeMap::from([t("t", 2), t("other", 3)]));
        let join = |id: &str| Heartbeat {
            member_id: id.into(),
            subscribed_topics: Some(BTreeSet::from([TopicName::new("t").unwrap()])),
            ..Default::default()
        };
        let (a, _) = shard.heartbeat("g", join("client-a"), 0, None);
        let a = a.unwrap();
        assert_eq!(a.member_id, "client-a");
        let epoch = shard.group("g").unwrap().group_epoch;
        assert_eq!(shard.group("g").unwrap().topics.len(), 1, "only the subscribed topic");
        // Another topic grows: the group does not move, nothing is written.
        let records = shard.set_topics(BTreeMap::from([t("t", 2), t("other", 9)]));
        assert!(records.is_empty());
        assert_eq!(shard.group("g").unwrap().group_epoch, epoch);
        // Its own topic grows: it does.
        assert_eq!(shard.set_topics(BTreeMap::from([t("t", 4), t("other", 9)])).len(), 1);
        // The same client joins again (its answer was lost): still one member.
        let (again, _) = shard.heartbeat("g", join("client-a"), 1, None);
        assert_eq!(again.unwrap().member_id, "client-a");
        assert_eq!(shard.group("g").unwrap().members.len(), 1);
        // A commit at a previous epoch for a partition the member does not hold is stale.
        let g = shard.group("g").unwrap();
        let m = &g.members["client-a"];
        let (current, previous) = (m.member_epoch, m.previous_epoch);
        let held: Vec<i32> = m.assigned.iter().map(|(_, p)| p.0).collect();
        let not_held = (0..4).find(|p| !held.contains(p));
        if let Some(p) = not_held {
            let r = shard.commit("g", Some(("client-a", previous)), &[("t".into(), p, offset(1))]);
            assert_eq!(r.unwrap_err().code(), ErrorCode::StaleMemberEpoch);
        }
        assert!(
            shard.commit("g", Some(("client-a", current)), &[("t".into(), 0, offset(1))]).is_ok()
        );
        // A refused first join (bad pattern) creates no group.
        let bad = Heartbeat { subscribed_regex: Some("(".into()), ..Default::default() };
        let (r, record) = shard.heartbeat("h", bad, 0, None);
        assert!(r.is_err() && record.is_none() && shard.group("h").is_none());
        // The only member leaves a group without offsets: the group goes, with a tombstone.
        let leave = Heartbeat {
            member_id: "client-a".into(),
            member_epoch: crate::group::LEAVE_EPOCH,
            ..Default::default()
        };
        let (r, record) = shard.heartbeat("g", leave, 2, None);
        r.unwrap();
        let (key, value) = record.expect("a tombstone");
        assert!(value.is_none() && key[..2] == GROUP_KEY_VERSION.to_be_bytes());
        assert!(shard.group("g").is_none() && shard.list_groups().is_empty());
    }
}
