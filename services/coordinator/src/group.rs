//! [`Group`]: one consumer group's membership and its incremental, server-side rebalances, in
//! the shape of Kafka's KIP-848 protocol. Pure and deterministic: time comes in as an argument,
//! so the coordinator can replay a group from its log and tests can drive it step by step.
//!
//! - Members heartbeat with their member epoch, their subscription and the partitions they own.
//!   A change of membership or subscriptions bumps the **group epoch**; the coordinator then
//!   computes a new **target assignment** with the group's assignor (sticky by default).
//! - Each member is moved towards its target one heartbeat at a time. Partitions it must give up
//!   are **revoked** first; a partition is handed to its new owner only once no other member
//!   holds it (given or still being revoked), so no partition ever has two owners and there is
//!   no stop-the-world rebalance. A member reaches the target epoch once it owns exactly its
//!   target.
//! - A member that misses its session timeout is removed and its partitions freed; a member can
//!   leave (epoch -1). A static member (with an instance id) leaving with epoch -2 keeps its
//!   partitions until its session timeout, and takes them back when it rejoins with the same
//!   instance id.
//! - Heartbeats and offset commits carrying an older member epoch than the member's are fenced.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::assignor::{Assignor, GroupSpec, MemberSpec, TopicPartition};
use crate::offsets::{RecordError, get_str, put_str};
use tideline_common::{PartitionId, TopicName};

/// Version of the group record's value encoding.
const GROUP_RECORD_VERSION: u16 = 1;

/// Heartbeat interval, in ms, of a member waiting for partitions that other members are still
/// releasing.
pub const WAITING_HEARTBEAT_MS: i64 = 200;

/// Member epoch a member joins with.
pub const JOIN_EPOCH: i32 = 0;
/// Member epoch a member leaves with.
pub const LEAVE_EPOCH: i32 = -1;
/// Member epoch a static member leaves with, meaning to come back (it keeps its partitions
/// until its session times out).
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// A group's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// A member that does not heartbeat for this long is removed, in ms.
    pub session_timeout_ms: i64,
    /// How often members heartbeat, in ms.
    pub heartbeat_interval_ms: i64,
    /// The server-side assignor.
    pub assignor: Assignor,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            assignor: Assignor::Uniform,
        }
    }
}

/// One heartbeat of a member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// The member id; empty to join.
    pub member_id: String,
    /// The member's epoch: [`JOIN_EPOCH`] to join, [`LEAVE_EPOCH`] or [`STATIC_LEAVE_EPOCH`] to
    /// leave, else the last epoch the coordinator gave it.
    pub member_epoch: i32,
    /// The static member's instance id, if it is one.
    pub instance_id: Option<String>,
    /// The member's rack.
    pub rack: Option<String>,
    /// The subscribed topics; `None` when unchanged since the last heartbeat.
    pub subscribed_topics: Option<BTreeSet<TopicName>>,
    /// A pattern (Rust `regex` syntax, matched against whole topic names) subscribing to every
    /// matching topic, present and future; `None` when unchanged, `Some("")` to drop it.
    pub subscribed_regex: Option<String>,
    /// The partitions the member owns now; `None` when unchanged since the last heartbeat.
    pub owned: Option<BTreeSet<TopicPartition>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The member id (new when joining).
    pub member_id: String,
    /// The member's epoch now ([`LEAVE_EPOCH`] after leaving).
    pub member_epoch: i32,
    /// When to heartbeat next, in ms.
    pub heartbeat_interval_ms: i64,
    /// The partitions the member should own now: keep these, give up any others.
    pub assignment: BTreeSet<TopicPartition>,
}

/// Why a heartbeat or commit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// No member has this id (it left, or was removed after its session timed out).
    #[error("unknown member {member_id:?} in group {group}")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id.
        member_id: String,
    },
    /// The member epoch is not the member's current one: it was fenced (another incarnation
    /// took its place, or it missed an epoch).
    #[error("member {member_id:?} of group {group} sent epoch {got}, its epoch is {current}")]
    StaleMemberEpoch {
        /// The group.
        group: String,
        /// The member id.
        member_id: String,
        /// The epoch sent.
        got: i32,
        /// The member's epoch.
        current: i32,
    },
    /// The heartbeat is malformed (e.g. a first heartbeat without a subscription).
    #[error("invalid heartbeat for group {group}: {reason}")]
    Invalid {
        /// The group.
        group: String,
        /// What is wrong.
        reason: String,
    },
}

impl GroupError {
    /// The error code a client sees.
    pub fn code(&self) -> tideline_common::ErrorCode {
        use tideline_common::ErrorCode;
        match self {
            GroupError::UnknownMember { .. } => ErrorCode::UnknownMemberId,
            GroupError::StaleMemberEpoch { .. } => ErrorCode::StaleMemberEpoch,
            GroupError::Invalid { .. } => ErrorCode::InvalidRequest,
        }
    }
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub member_id: String,
    /// Its instance id, for static members.
    pub instance_id: Option<String>,
    /// Its rack.
    pub rack: Option<String>,
    /// Its subscription by name.
    pub subscribed_topics: BTreeSet<TopicName>,
    /// Its subscription by pattern (whole-name match), if any.
    pub subscribed_regex: Option<String>,
    /// Its epoch: the last target epoch it moved to (having released what it had to).
    pub member_epoch: i32,
    /// Its epoch before that (heartbeats in flight may still carry it).
    pub previous_epoch: i32,
    /// The partitions the coordinator told it to own.
    pub assigned: BTreeSet<TopicPartition>,
    /// Partitions it was told to give up and has not yet reported released.
    pub revoking: BTreeSet<TopicPartition>,
    /// When its session ends unless it heartbeats, in ms.
    pub expires_ms: i64,
    /// True after a static leave: it keeps its partitions until `expires_ms`.
    pub away: bool,
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group id.
    pub group_id: String,
    /// Its settings.
    pub config: GroupConfig,
    /// Bumped by every change of membership, subscriptions or topics.
    pub group_epoch: i32,
    /// The group epoch the target assignment was computed at.
    pub target_epoch: i32,
    /// The target assignment, by member id.
    pub target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// The topics the group's members subscribe to (by name or pattern), with their partition
    /// counts: what assignments are computed from (and what its record keeps).
    pub topics: BTreeMap<TopicName, i32>,
    /// Every topic of the cluster, once known (from metadata; not recorded): subscriptions by
    /// pattern are matched against it.
    all_topics: Option<BTreeMap<TopicName, i32>>,
    /// Member ids handed out so far (member ids are `<group>-<n>`).
    next_member: u64,
}

impl Group {
    /// An empty group.
    pub fn new(group_id: impl Into<String>, config: GroupConfig) -> Self {
        Group {
            group_id: group_id.into(),
            config,
            group_epoch: 0,
            target_epoch: 0,
            target: BTreeMap::new(),
            members: BTreeMap::new(),
            topics: BTreeMap::new(),
            all_topics: None,
            next_member: 0,
        }
    }

    /// True when the group has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// True when every member owns exactly its target at the target epoch.
    pub fn is_stable(&self) -> bool {
        self.target_epoch == self.group_epoch
            && self.members.values().all(|m| {
                m.revoking.is_empty()
                    && m.member_epoch == self.target_epoch
                    && Some(&m.assigned) == self.target.get(&m.member_id)
            })
    }

    /// Sets the cluster's topics and partition counts. The group keeps those its members
    /// subscribe to; a change among them (a subscribed topic created, deleted or grown) bumps
    /// the group epoch. Returns whether it did.
    pub fn set_topics(&mut self, topics: BTreeMap<TopicName, i32>) -> bool {
        self.all_topics = Some(topics);
        self.refresh_topics()
    }

    /// Recomputes the subscribed topics from the cluster's (once known); bumps the group epoch
    /// when they changed.
    fn refresh_topics(&mut self) -> bool {
        let Some(all) = &self.all_topics else { return false };
        let mut wanted: BTreeSet<TopicName> = BTreeSet::new();
        for m in self.members.values() {
            wanted.extend(m.subscribed_topics.iter().cloned());
            if let Some(re) = m.subscribed_regex.as_deref().and_then(|p| whole_match(p).ok()) {
                wanted.extend(all.keys().filter(|t| re.is_match(t.as_str())).cloned());
            }
        }
        let relevant: BTreeMap<TopicName, i32> =
            all.iter().filter(|(t, _)| wanted.contains(*t)).map(|(t, n)| (t.clone(), *n)).collect();
        if relevant == self.topics {
            return false;
        }
        self.topics = relevant;
        self.group_epoch += 1;
        true
    }

    /// Removes members whose session ended by `now_ms`, freeing their partitions. Returns the
    /// removed member ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.expires_ms <= now_ms)
            .map(|m| m.member_id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        gone
    }

    fn remove(&mut self, member_id: &str) {
        if self.members.remove(member_id).is_some() {
            self.target.remove(member_id);
            self.group_epoch += 1;
            self.refresh_topics();
        }
    }

    /// Checks that an offset commit from `member_id` at `member_epoch` for `partitions` may be
    /// accepted: the member exists and the epoch is its current one, or its previous one (a
    /// commit sent before its last heartbeat's answer arrived) for partitions it still owns or
    /// is giving up, so a delayed commit cannot move back a partition that has moved on.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`] or [`GroupError::StaleMemberEpoch`].
    pub fn check_commit<'a>(
        &self,
        member_id: &str,
        member_epoch: i32,
        mut partitions: impl Iterator<Item = (&'a str, i32)>,
    ) -> Result<(), GroupError> {
        let m = self.member(member_id)?;
        if member_epoch == m.member_epoch {
            return Ok(());
        }
        let held = |(t, p): (&str, i32)| {
            m.assigned.iter().chain(&m.revoking).any(|(tt, pp)| tt.as_str() == t && pp.0 == p)
        };
        if member_epoch != m.previous_epoch || !partitions.all(held) {
            return Err(self.stale(m, member_epoch));
        }
        Ok(())
    }

    fn member(&self, member_id: &str) -> Result<&Member, GroupError> {
        self.members.get(member_id).ok_or_else(|| GroupError::UnknownMember {
            group: self.group_id.clone(),
            member_id: member_id.to_string(),
        })
    }

    fn stale(&self, m: &Member, got: i32) -> GroupError {
        GroupError::StaleMemberEpoch {
            group: self.group_id.clone(),
            member_id: m.member_id.clone(),
            got,
            current: m.member_epoch,
        }
    }

    /// Handles one heartbeat at `now_ms`.
    ///
    /// # Errors
    /// [`GroupError::UnknownMember`], [`GroupError::StaleMemberEpoch`] (the member must rejoin
    /// with epoch 0), or [`GroupError::Invalid`].
    pub fn heartbeat(&mut self, hb: Heartbeat, now_ms: i64) -> Result<HeartbeatAnswer, GroupError> {
        if let Some(pattern) = hb.subscribed_regex.as_deref().filter(|p| !p.is_empty()) {
            whole_match(pattern).map_err(|e| GroupError::Invalid {
                group: self.group_id.clone(),
                reason: format!("subscription pattern {pattern:?}: {e}"),
            })?;
        }
        self.expire(now_ms);
        let member_id = match hb.member_epoch {
            JOIN_EPOCH => self.join(&hb, now_ms)?,
            LEAVE_EPOCH | STATIC_LEAVE_EPOCH => return self.leave(&hb, now_ms),
            epoch => {
                let m = self.member(&hb.member_id)?;
                if m.away || (epoch != m.member_epoch && epoch != m.previous_epoch) {
                    return Err(self.stale(m, epoch));
                }
                hb.member_id.clone()
            }
        };
        let session = self.config.session_timeout_ms;
        let m = self.members.get_mut(&member_id).expect("joined or checked");
        m.expires_ms = now_ms.saturating_add(session);
        if let Some(topics) = &hb.subscribed_topics
            && *topics != m.subscribed_topics
        {
            m.subscribed_topics = topics.clone();
            self.group_epoch += 1;
        }
        if let Some(pattern) = &hb.subscribed_regex {
            let pattern = (!pattern.is_empty()).then(|| pattern.clone());
            if pattern != m.subscribed_regex {
                m.subscribed_regex = pattern;
                self.group_epoch += 1;
            }
        }
        if hb.rack.is_some() && hb.rack != m.rack {
            m.rack = hb.rack.clone();
        }
        self.refresh_topics();
        let m = self.members.get_mut(&member_id).expect("joined or checked");
        if let Some(owned) = &hb.owned {
            // Revocations the member confirms by no longer owning them.
            m.revoking.retain(|tp| owned.contains(tp));
        }
        self.update_target();
        self.reconcile(&member_id);
        let m = &self.members[&member_id];
        // A member still waiting for partitions others are releasing comes back soon rather
        // than a whole interval later: growth then takes the revocations' time, not a round.
        let waiting = self.target.get(&member_id).is_some_and(|t| !t.is_subset(&m.assigned));
        let interval = self.config.heartbeat_interval_ms;
        Ok(HeartbeatAnswer {
            member_id,
            member_epoch: m.member_epoch,
            heartbeat_interval_ms: if waiting {
                interval.min(WAITING_HEARTBEAT_MS)
            } else {
                interval
            },
            assignment: m.assigned.clone(),
        })
    }

    fn join(&mut self, hb: &Heartbeat, now_ms: i64) -> Result<String, GroupError> {
        if hb.subscribed_topics.is_none() && hb.subscribed_regex.is_none() {
            return Err(GroupError::Invalid {
                group: self.group_id.clone(),
                reason: "a joining member must send its subscription".into(),
            });
        }
        let topics = hb.subscribed_topics.clone().unwrap_or_default();
        // A member joining with an id it already has (its earlier join's answer was lost, or it
        // was fenced) starts over: what it held is freed first (it owns nothing now).
        if !hb.member_id.is_empty() {
            self.remove(&hb.member_id);
        }
        let id = if hb.member_id.is_empty() { self.new_member_id() } else { hb.member_id.clone() };
        // A static member coming back replaces its old incarnation and keeps its partitions.
        if let Some(instance) = &hb.instance_id
            && let Some(old) =
                self.members.values().find(|m| m.instance_id.as_ref() == Some(instance)).cloned()
        {
            let mut m = old.clone();
            m.member_id = id.clone();
            m.away = false;
            m.expires_ms = now_ms.saturating_add(self.config.session_timeout_ms);
            self.members.remove(&old.member_id);
            if let Some(t) = self.target.remove(&old.member_id) {
                self.target.insert(id.clone(), t);
            }
            self.members.insert(id.clone(), m);
            return Ok(id);
        }
        self.members.insert(
            id.clone(),
            Member {
                member_id: id.clone(),
                instance_id: hb.instance_id.clone(),
                rack: hb.rack.clone(),
                subscribed_topics: topics,
                subscribed_regex: hb.subscribed_regex.clone().filter(|p| !p.is_empty()),
                member_epoch: 0,
                previous_epoch: 0,
                assigned: BTreeSet::new(),
                revoking: BTreeSet::new(),
                expires_ms: now_ms.saturating_add(self.config.session_timeout_ms),
                away: false,
            },
        );
        self.group_epoch += 1;
        self.refresh_topics();
        Ok(id)
    }

    /// A member id for a join that brought none (the service gives random ones; this keeps the
    /// state machine deterministic for tests).
    fn new_member_id(&mut self) -> String {
        self.next_member += 1;
        format!("{}-{}", self.group_id, self.next_member)
    }

    fn leave(&mut self, hb: &Heartbeat, now_ms: i64) -> Result<HeartbeatAnswer, GroupError> {
        let m = self.member(&hb.member_id)?.clone();
        if hb.member_epoch == STATIC_LEAVE_EPOCH && m.instance_id.is_some() {
            // Keeps its partitions (nobody else gets them) until its session ends.
            let session = self.config.session_timeout_ms;
            let m = self.members.get_mut(&hb.member_id).expect("checked");
            m.away = true;
            m.expires_ms = now_ms.saturating_add(session);
        } else {
            self.remove(&hb.member_id);
            self.update_target();
        }
        Ok(HeartbeatAnswer {
            member_id: m.member_id,
            member_epoch: hb.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: BTreeSet::new(),
        })
    }

    /// The topics `m` subscribes to: by name, and every known topic its pattern matches.
    fn effective_subscription(&self, m: &Member) -> BTreeSet<TopicName> {
        let mut topics = m.subscribed_topics.clone();
        if let Some(re) = m.subscribed_regex.as_deref().and_then(|p| whole_match(p).ok()) {
            let known = self.all_topics.as_ref().unwrap_or(&self.topics);
            topics.extend(
                known
                    .keys()
                    .filter(|t| re.is_match(t.as_str()) && self.topics.contains_key(*t))
                    .cloned(),
            );
        }
        topics
    }

    /// Recomputes the target assignment when the group epoch moved past it.
    fn update_target(&mut self) {
        if self.target_epoch == self.group_epoch {
            return;
        }
        let spec = GroupSpec {
            members: self
                .members
                .values()
                .map(|m| {
                    (
                        m.member_id.clone(),
                        MemberSpec {
                            rack: m.rack.clone(),
                            subscribed_topics: self.effective_subscription(m),
                        },
                    )
                })
                .collect(),
            topics: self.topics.clone(),
            current: self.target.clone(),
        };
        // Partition counts are never negative here (they come from the controller's
        // metadata); should an assignor refuse, the previous target stays.
        if let Ok(target) = self.config.assignor.assign(&spec) {
            self.target =
                target.into_iter().map(|(m, tps)| (m, tps.into_iter().collect())).collect();
        }
        self.target_epoch = self.group_epoch;
    }

    /// Moves member `member_id` one step towards its target: what it must give up is revoked
    /// first; once it has released everything it had to, it moves to the target epoch and
    /// receives the partitions of its target that no other member holds.
    fn reconcile(&mut self, member_id: &str) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .members
            .values()
            .filter(|m| m.member_id != member_id)
            .flat_map(|m| m.assigned.iter().chain(m.revoking.iter()).cloned())
            .collect();
        let target_epoch = self.target_epoch;
        let m = self.members.get_mut(member_id).expect("a member");
        let revoke: Vec<TopicPartition> = m.assigned.difference(&target).cloned().collect();
        for tp in revoke {
            m.assigned.remove(&tp);
            m.revoking.insert(tp);
        }
        if !m.revoking.is_empty() {
            return;
        }
        let free: Vec<TopicPartition> = target
            .difference(&m.assigned)
            .filter(|tp| !held_elsewhere.contains(*tp))
            .cloned()
            .collect();
        m.assigned.extend(free);
        // Nothing left to give up: the member is at the target epoch. Partitions of its target
        // that others still hold come in later heartbeats, once released.
        if m.member_epoch != target_epoch {
            m.previous_epoch = m.member_epoch;
            m.member_epoch = target_epoch;
        }
    }
}

impl Group {
    /// The group's membership as the value of its record in the offsets shard: everything but
    /// session deadlines (a coordinator replaying it gives every member a fresh session).
    ///
    /// `u16 version (1) | u8 assignor | i32 group epoch | i32 target epoch | u64 next member |
    /// topics | members | target`, where topics are `u32 n, (str, i32 count)*`, a member is
    /// `str id | opt str instance | opt str rack | u32 n, str* | opt str regex | i32 epoch |
    /// i32 previous epoch | partitions assigned | partitions revoking | u8 away`, the target is
    /// `u32 n, (str member, partitions)*`, partitions are `u32 n, (str topic, i32 partition)*`
    /// and an optional string is `u8 present` then the string.
    ///
    /// # Errors
    /// [`RecordError`] when a name is too long to encode.
    pub fn encode_record(&self) -> Result<Bytes, RecordError> {
        let mut out = BytesMut::with_capacity(256);
        out.put_u16(GROUP_RECORD_VERSION);
        out.put_u8(match self.config.assignor {
            Assignor::Uniform => 0,
            Assignor::Range => 1,
        });
        out.put_i32(self.group_epoch);
        out.put_i32(self.target_epoch);
        out.put_u64(self.next_member);
        out.put_u32(self.topics.len() as u32);
        for (t, n) in &self.topics {
            put_str(&mut out, t.as_str())?;
            out.put_i32(*n);
        }
        out.put_u32(self.members.len() as u32);
        for m in self.members.values() {
            put_str(&mut out, &m.member_id)?;
            put_opt(&mut out, m.instance_id.as_deref())?;
            put_opt(&mut out, m.rack.as_deref())?;
            out.put_u32(m.subscribed_topics.len() as u32);
            for t in &m.subscribed_topics {
                put_str(&mut out, t.as_str())?;
            }
            put_opt(&mut out, m.subscribed_regex.as_deref())?;
            out.put_i32(m.member_epoch);
            out.put_i32(m.previous_epoch);
            put_partitions(&mut out, &m.assigned)?;
            put_partitions(&mut out, &m.revoking)?;
            out.put_u8(u8::from(m.away));
        }
        out.put_u32(self.target.len() as u32);
        for (id, partitions) in &self.target {
            put_str(&mut out, id)?;
            put_partitions(&mut out, partitions)?;
        }
        Ok(out.freeze())
    }

    /// The group `group_id` from its record's value (see [`Group::encode_record`]), with
    /// `config` but the recorded assignor, every member's session ending at `expires_ms`.
    ///
    /// # Errors
    /// [`RecordError`] for a value that is not a group record.
    pub fn decode_record(
        group_id: &str,
        mut config: GroupConfig,
        mut buf: &[u8],
        expires_ms: i64,
    ) -> Result<Group, RecordError> {
        let buf = &mut buf;
        need(buf, 2)?;
        let version = buf.get_u16();
        if version != GROUP_RECORD_VERSION {
            return Err(RecordError(format!("unknown group record version {version}")));
        }
        need(buf, 1 + 4 + 4 + 8)?;
        config.assignor = match buf.get_u8() {
            0 => Assignor::Uniform,
            1 => Assignor::Range,
            other => return Err(RecordError(format!("unknown assignor {other}"))),
        };
        let group_epoch = buf.get_i32();
        let target_epoch = buf.get_i32();
        let next_member = buf.get_u64();
        let mut topics = BTreeMap::new();
        for _ in 0..count(buf)? {
            let t = topic(buf)?;
            need(buf, 4)?;
            topics.insert(t, buf.get_i32());
        }
        let mut members = BTreeMap::new();
        for _ in 0..count(buf)? {
            let member_id = get_str(buf)?;
            let instance_id = get_opt(buf)?;
            let rack = get_opt(buf)?;
            let mut subscribed_topics = BTreeSet::new();
            for _ in 0..count(buf)? {
                subscribed_topics.insert(topic(buf)?);
            }
            let subscribed_regex = get_opt(buf)?;
            need(buf, 8)?;
            let member_epoch = buf.get_i32();
            let previous_epoch = buf.get_i32();
            let assigned = get_partitions(buf)?;
            let revoking = get_partitions(buf)?;
            need(buf, 1)?;
            let away = buf.get_u8() != 0;
            members.insert(
                member_id.clone(),
                Member {
                    member_id,
                    instance_id,
                    rack,
                    subscribed_topics,
                    subscribed_regex,
                    member_epoch,
                    previous_epoch,
                    assigned,
                    revoking,
                    expires_ms,
                    away,
                },
            );
        }
        let mut target = BTreeMap::new();
        for _ in 0..count(buf)? {
            let id = get_str(buf)?;
            target.insert(id, get_partitions(buf)?);
        }
        if buf.has_remaining() {
            return Err(RecordError("trailing bytes in group record".into()));
        }
        Ok(Group {
            group_id: group_id.to_string(),
            config,
            group_epoch,
            target_epoch,
            target,
            members,
            topics,
            all_topics: None,
            next_member,
        })
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), RecordError> {
    if buf.remaining() < n {
        return Err(RecordError("truncated group record".into()));
    }
    Ok(())
}

fn count(buf: &mut &[u8]) -> Result<u32, RecordError> {
    need(buf, 4)?;
    let n = buf.get_u32();
    // Every counted item takes at least two bytes: a count beyond that is corrupt.
    if n as usize > buf.remaining() / 2 + 1 {
        return Err(RecordError(format!("count {n} exceeds the record")));
    }
    Ok(n)
}

fn topic(buf: &mut &[u8]) -> Result<TopicName, RecordError> {
    let name = get_str(buf)?;
    TopicName::new(name.as_str()).map_err(|e| RecordError(e.to_string()))
}

fn put_opt(out: &mut BytesMut, s: Option<&str>) -> Result<(), RecordError> {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s)
        }
        None => {
            out.put_u8(0);
            Ok(())
        }
    }
}

fn get_opt(buf: &mut &[u8]) -> Result<Option<String>, RecordError> {
    need(buf, 1)?;
    match buf.get_u8() {
        0 => Ok(None),
        1 => get_str(buf).map(Some),
        other => Err(RecordError(format!("bad option marker {other}"))),
    }
}

fn put_partitions(out: &mut BytesMut, ps: &BTreeSet<TopicPartition>) -> Result<(), RecordError> {
    out.put_u32(ps.len() as u32);
    for (t, p) in ps {
        put_str(out, t.as_str())?;
        out.put_i32(p.0);
    }
    Ok(())
}

fn get_partitions(buf: &mut &[u8]) -> Result<BTreeSet<TopicPartition>, RecordError> {
    let mut out = BTreeSet::new();
    for _ in 0..count(buf)? {
        let t = topic(buf)?;
        need(buf, 4)?;
        out.insert((t, PartitionId(buf.get_i32())));
    }
    Ok(out)
}

/// `pattern` compiled to match whole topic names.
fn whole_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topic(name: &str) -> TopicName {
        TopicName::new(name).unwrap()
    }

    fn subscribe(names: &[&str]) -> Option<BTreeSet<TopicName>> {
        Some(names.iter().map(|n| topic(n)).collect())
    }

    fn group(partitions: i32) -> Group {
        let mut g = Group::new("g", GroupConfig::default());
        g.set_topics(BTreeMap::from([(topic("t"), partitions)]));
        g
    }

    fn join(g: &mut Group, now: i64) -> HeartbeatAnswer {
        g.heartbeat(Heartbeat { subscribed_topics: subscribe(&["t"]), ..Default::default() }, now)
            .unwrap()
    }

    /// An honest client: reports it owns what it was last told to own.
    fn beat(g: &mut Group, a: &HeartbeatAnswer, now: i64) -> HeartbeatAnswer {
        g.heartbeat(
            Heartbeat {
                member_id: a.member_id.clone(),
                member_epoch: a.member_epoch,
                owned: Some(a.assignment.clone()),
                ..Default::default()
            },
            now,
        )
        .unwrap()
    }

    fn no_partition_has_two_owners(g: &Group) {
        let mut seen = BTreeSet::new();
        for m in g.members.values() {
            for tp in m.assigned.iter().chain(&m.revoking) {
                assert!(seen.insert(tp.clone()), "{tp:?} held by two members: {g:#?}");
            }
        }
    }

    #[test]
    fn a_second_member_gets_half_only_after_the_first_gave_it_up() {
        let mut g = group(4);
        let a = join(&mut g, 0);
        assert_eq!(a.assignment.len(), 4);
        assert_eq!(a.member_epoch, g.group_epoch);
        let interval = g.config.heartbeat_interval_ms;
        assert_eq!(a.heartbeat_interval_ms, interval);
        let b = join(&mut g, 1);
        assert!(b.assignment.is_empty(), "a still owns everything: b waits");
        assert_eq!(b.heartbeat_interval_ms, WAITING_HEARTBEAT_MS, "b waits, so it comes back soon");
        no_partition_has_two_owners(&g);
        let a = beat(&mut g, &a, 2);
        assert_eq!(a.assignment.len(), 2, "a is told to give up two");
        let a = beat(&mut g, &a, 3); // a reports it released them
        let b = beat(&mut g, &b, 4);
        assert_eq!(b.assignment.len(), 2);
        assert_eq!(b.heartbeat_interval_ms, interval, "b has its share: back to the interval");
        no_partition_has_two_owners(&g);
        let _ = beat(&mut g, &a, 5);
        assert!(g.is_stable());
        assert_eq!(a.member_epoch, b.member_epoch);
    }

    #[test]
    fn stale_epochs_are_fenced_and_sessions_expire() {
        let mut g = group(2);
        let a = join(&mut g, 0);
        let _b = join(&mut g, 0);
        let a2 = beat(&mut g, &a, 1);
        let a3 = beat(&mut g, &a2, 2);
        let old = Heartbeat {
            member_id: a.member_id.clone(),
            member_epoch: a3.member_epoch - 2,
            ..Default::default()
        };
        assert!(a3.member_epoch >= 2, "two joins moved the epoch twice: {a3:?}");
        assert!(matches!(g.heartbeat(old, 3), Err(GroupError::StaleMemberEpoch { .. })));
        assert!(g.check_commit(&a.member_id, a3.member_epoch, std::iter::empty()).is_ok());
        assert!(matches!(
            g.check_commit(&a.member_id, a3.member_epoch + 5, std::iter::empty()),
            Err(GroupError::StaleMemberEpoch { .. })
        ));
        // Nothing heard from either for a session: both are removed.
        let gone = g.expire(2 + g.config.session_timeout_ms + 1);
        assert_eq!(gone.len(), 2);
        let gone = g.check_commit(&a.member_id, a3.member_epoch, std::iter::empty()).unwrap_err();
        assert!(matches!(gone, GroupError::UnknownMember { .. }));
        assert_eq!(gone.code(), tideline_common::ErrorCode::UnknownMemberId);
    }

    #[test]
    fn a_static_member_keeps_its_partitions_across_a_quick_restart() {
        let mut g = group(4);
        let join_static = |g: &mut Group, now| {
            g.heartbeat(
                Heartbeat {
                    instance_id: Some("host-1".into()),
                    subscribed_topics: subscribe(&["t"]),
                    ..Default::default()
                },
                now,
            )
            .unwrap()
        };
        let a = join_static(&mut g, 0);
        let b = join(&mut g, 0);
        let a = beat(&mut g, &a, 1);
        let a = beat(&mut g, &a, 2);
        let _ = beat(&mut g, &b, 3);
        let before = a.assignment.clone();
        assert_eq!(before.len(), 2);
        let epoch = g.group_epoch;
        g.heartbeat(
            Heartbeat {
                member_id: a.member_id.clone(),
                member_epoch: STATIC_LEAVE_EPOCH,
                ..Default::default()
            },
            4,
        )
        .unwrap();
        assert_eq!(g.group_epoch, epoch, "a static leave does not rebalance");
        let back = join_static(&mut g, 5);
        assert_ne!(back.member_id, a.member_id);
        assert_eq!(back.assignment, before, "the same partitions, without a rebalance");
    }

    #[test]
    fn leaving_frees_partitions_for_the_others() {
        let mut g = group(3);
        let a = join(&mut g, 0);
        let b = join(&mut g, 0);
        let a = beat(&mut g, &a, 1);
        let a = beat(&mut g, &a, 2);
        let b = beat(&mut g, &b, 3);
        assert_eq!(a.assignment.len() + b.assignment.len(), 3);
        g.heartbeat(
            Heartbeat {
                member_id: a.member_id.clone(),
                member_epoch: LEAVE_EPOCH,
                ..Default::default()
            },
            4,
        )
        .unwrap();
        let b = beat(&mut g, &b, 5);
        assert_eq!(b.assignment.len(), 3);
        assert!(g.is_stable());
    }

    /// A pattern subscribes to every matching topic, also topics created later; a bad
    /// pattern is refused.
    #[test]
    fn pattern_subscriptions_follow_new_topics() {
        let mut g = Group::new("g", GroupConfig::default());
        g.set_topics(BTreeMap::from([
            (topic("orders-a"), 1),
            (topic("orders-b"), 1),
            (topic("payments"), 1),
        ]));
        let hb = Heartbeat { subscribed_regex: Some("orders-.*".into()), ..Default::default() };
        let a = g.heartbeat(hb, 0).unwrap();
        let topics: BTreeSet<String> = a.assignment.iter().map(|(t, _)| t.to_string()).collect();
        assert_eq!(topics, BTreeSet::from(["orders-a".to_string(), "orders-b".to_string()]));
        let mut more = g.topics.clone();
        more.insert(topic("orders-c"), 2);
        g.set_topics(more);
        let a = beat(&mut g, &a, 1);
        assert_eq!(a.assignment.len(), 4, "the new matching topic's partitions came in");
        let bad = Heartbeat { subscribed_regex: Some("orders-(".into()), ..Default::default() };
        assert_eq!(
            g.heartbeat(bad, 2).unwrap_err().code(),
            tideline_common::ErrorCode::InvalidRequest
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Random joins, leaves and heartbeats of honest members: no partition ever has two
        /// owners, and once membership stops changing a few rounds of heartbeats make the
        /// group stable with every partition owned exactly once.
        #[test]
        fn no_two_owners_and_convergence(
            partitions in 1i32..24,
            steps in proptest::collection::vec((0u8..4, 0usize..8), 1..60),
        ) {
            let mut g = group(partitions);
            let mut answers: Vec<HeartbeatAnswer> = Vec::new();
            let mut now = 0;
            for (op, pick) in steps {
                now += 1;
                match op {
                    0 if answers.len() < 8 => answers.push(join(&mut g, now)),
                    1 if !answers.is_empty() => {
                        let a = answers.remove(pick % answers.len());
                        g.heartbeat(
                            Heartbeat { member_id: a.member_id, member_epoch: LEAVE_EPOCH, ..Default::default() },
                            now,
                        ).unwrap();
                    }
                    _ if !answers.is_empty() => {
                        let i = pick % answers.len();
                        answers[i] = beat(&mut g, &answers[i], now);
                    }
                    _ => {}
                }
                no_partition_has_two_owners(&g);
            }
            for _ in 0..4 {
                for a in answers.iter_mut() {
                    now += 1;
                    *a = beat(&mut g, a, now);
                    no_partition_has_two_owners(&g);
                }
            }
            prop_assert!(answers.is_empty() || g.is_stable(), "not stable: {:#?}", g);
            if !answers.is_empty() {
                let owned: usize = g.members.values().map(|m| m.assigned.len()).sum();
                prop_assert_eq!(owned, partitions as usize);
            }
        }
    }
}
