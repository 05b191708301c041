//! [`GroupConsumer`]: a member of a consumer group (Kafka's `subscribe`, with the server-side
//! rebalance protocol of KIP-848). A background task heartbeats to the group's coordinator;
//! `poll` applies the assignment the coordinator answers with, and reads the owned partitions
//! through a manual-assignment [`Consumer`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tideline_common::ErrorCode;
use tideline_proto::v1 as pb;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, lock};
use crate::consumer::Consumer;
use crate::error::ClientError;
use crate::group_consumer_config::GroupConsumerConfig;
use crate::rebalance::{RebalanceEvent, RebalanceListener};
use crate::record::ConsumerRecord;

/// A topic and partition.
type Tp = (String, i32);

/// Member epoch of a join.
const JOIN_EPOCH: i32 = 0;
/// Member epoch of a leave.
const LEAVE_EPOCH: i32 = -1;
/// Member epoch of a static member's leave (it keeps its partitions for the session timeout).
const STATIC_LEAVE_EPOCH: i32 = -2;
/// Shortest pause between heartbeats, whatever the coordinator says.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// Pause after a heartbeat failed with an error that retrying does not fix (a bad pattern, an
/// unknown assignor), unless `subscribe` changes the subscription first.
const FATAL_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long the heartbeat task sleeps when it has nothing to do until woken.
const IDLE_INTERVAL: Duration = Duration::from_secs(3600);

/// A member of a consumer group: the group's coordinator assigns it partitions of the topics
/// it subscribes to, and it reads them from their committed offsets.
///
/// - **Heartbeats** run in a background tokio task at the interval the coordinator asks for,
///   so a slow `poll` loop keeps its session. The task joins at the first [`poll`](Self::poll)
///   (epoch 0), follows the group's coordinator when its shard moves (`NOT_COORDINATOR`,
///   `COORDINATOR_LOAD_IN_PROGRESS`, `COORDINATOR_NOT_AVAILABLE` and transport errors refresh
///   the metadata and retry), and reports the owned partitions in every heartbeat.
/// - **Assignment changes** are applied by `poll`, in this order: partitions no longer
///   assigned are revoked (their positions committed first with auto-commit, then
///   [`RebalanceListener::on_revoked`], then dropped from the fetcher so none of their records
///   comes out again), the release is reported to the coordinator at once; then newly assigned
///   partitions are positioned at their committed offsets (`auto_offset_reset` without one)
///   and reported with [`RebalanceListener::on_assigned`].
/// - **Fencing**: when a heartbeat is answered `UNKNOWN_MEMBER_ID` or `STALE_MEMBER_EPOCH`
///   (the session timed out, or the member fell behind), `poll` drops every partition without
///   committing ([`RebalanceListener::on_lost`]) and the member joins again with epoch 0 and a
///   new member id.
/// - **Commits** are by the member at its current epoch: with `auto_commit` every
///   `auto_commit_interval` during `poll`, before a revocation and at `close`; otherwise by
///   [`commit`](Self::commit) or [`commit_offsets`](Self::commit_offsets). A commit by a
///   member that was fenced fails with that error code.
///
/// Dropping the consumer without [`close`](Self::close) stops its heartbeats; the coordinator
/// then removes it when its session times out.
pub struct GroupConsumer {
    cluster: Cluster,
    config: GroupConsumerConfig,
    consumer: Consumer,
    /// The partitions owned now: what the fetcher has, and what heartbeats report.
    owned: BTreeSet<Tp>,
    /// Offsets this member committed or started from, by partition: auto-commit skips
    /// partitions whose position has not moved since.
    committed: HashMap<Tp, i64>,
    /// In a mutex only so the consumer is `Sync` and its futures `Send` (it is never
    /// contended: only `&mut self` methods call it).
    listener: Option<std::sync::Mutex<Box<dyn RebalanceListener>>>,
    shared: Arc<Shared>,
    heartbeat: Option<JoinHandle<()>>,
    last_auto_commit: Instant,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group_id", &self.config.group_id)
            .field("owned", &self.owned)
            .field("member", &*lock(&self.shared.state))
            .finish_non_exhaustive()
    }
}

/// What `poll` and the heartbeat task share.
#[derive(Debug)]
struct Shared {
    /// Never held across `.await`.
    state: Mutex<MemberState>,
    /// Wakes the heartbeat task: send a heartbeat now (owned partitions or subscription
    /// changed, a fenced member may rejoin, or the consumer closes).
    wake_heartbeat: Notify,
    /// Wakes a waiting `poll`: a heartbeat brought a new assignment, a fencing or an error.
    wake_poll: Notify,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    Topics(Vec<String>),
    Pattern(String),
}

/// The member as the heartbeat task and `poll` know it.
#[derive(Debug, Default)]
struct MemberState {
    /// Empty until the coordinator gave one (and again after a fencing).
    member_id: String,
    /// 0 until joined (and again after a fencing).
    member_epoch: i32,
    subscription: Option<Subscription>,
    /// Bumped by every `subscribe`.
    subscription_version: u64,
    /// The subscription version the coordinator last took; 0 forces sending it again.
    subscription_sent: u64,
    /// The partitions the coordinator last said this member should own; `None` before the
    /// first answer after a join.
    target: Option<BTreeSet<Tp>>,
    /// The partitions `poll` owns now, reported in every heartbeat.
    owned: BTreeSet<Tp>,
    /// Set by the heartbeat task when the member was fenced; `poll` drops every partition,
    /// clears it and wakes the task to join again.
    fenced: Option<ClientError>,
    /// An error for the next `poll` to report.
    error: Option<ClientError>,
    closing: bool,
}

impl MemberState {
    /// The next heartbeat: a join (epoch 0, full subscription) or a heartbeat at the current
    /// epoch, with the subscription only when it changed or was not acknowledged, and the owned
    /// partitions always.
    fn heartbeat_request(&self, config: &GroupConsumerConfig) -> pb::ConsumerGroupHeartbeatRequest {
        let joining = self.member_epoch == JOIN_EPOCH;
        let send = joining || self.subscription_sent != self.subscription_version;
        let (subscribed_topics, subscribed_regex) = match (&self.subscription, send) {
            (Some(Subscription::Topics(topics)), true) => {
                (Some(pb::TopicList { topics: topics.clone() }), (!joining).then(String::new))
            }
            (Some(Subscription::Pattern(pattern)), true) => {
                ((!joining).then(pb::TopicList::default), Some(pattern.clone()))
            }
            _ => (None, None),
        };
        pb::ConsumerGroupHeartbeatRequest {
            group_id: config.group_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.member_epoch,
            instance_id: config.instance_id.clone(),
            rack: config.rack.clone(),
            subscribed_topics,
            subscribed_regex,
            owned_partitions: Some(partition_list(&self.owned)),
            server_assignor: config.server_assignor.clone().unwrap_or_default(),
        }
    }
}

fn partition_list(partitions: &BTreeSet<Tp>) -> pb::PartitionList {
    pb::PartitionList {
        partitions: partitions
            .iter()
            .map(|(topic, partition)| pb::TopicPartition {
                topic: topic.clone(),
                partition: *partition,
            })
            .collect(),
    }
}

/// What reconciling `owned` with `target` takes: the partitions to revoke, then those to add,
/// each sorted.
fn plan(owned: &BTreeSet<Tp>, target: &BTreeSet<Tp>) -> (Vec<Tp>, Vec<Tp>) {
    (owned.difference(target).cloned().collect(), target.difference(owned).cloned().collect())
}

fn is_fencing(error: &ClientError) -> bool {
    matches!(error.code(), Some(ErrorCode::UnknownMemberId | ErrorCode::StaleMemberEpoch))
        && !matches!(error, ClientError::NotMember { .. })
}

impl GroupConsumer {
    /// A consumer of `config.group_id` on `cluster`, subscribed to nothing yet. Nothing is
    /// sent until the first `poll` after a `subscribe`.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a bad config.
    pub fn new(cluster: &Cluster, config: GroupConsumerConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let consumer = Consumer::new(cluster, config.consumer.clone())?;
        Ok(GroupConsumer {
            cluster: cluster.clone(),
            config,
            consumer,
            owned: BTreeSet::new(),
            committed: HashMap::new(),
            listener: None,
            shared: Arc::new(Shared {
                state: Mutex::new(MemberState::default()),
                wake_heartbeat: Notify::new(),
                wake_poll: Notify::new(),
            }),
            heartbeat: None,
            last_auto_commit: Instant::now(),
        })
    }

    /// Sets the listener that hears of assigned, revoked and lost partitions (replacing any
    /// earlier one). A closure taking a [`RebalanceEvent`] will do.
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        self.listener = Some(std::sync::Mutex::new(Box::new(listener)));
    }

    /// Subscribes to these topics, replacing any earlier subscription (the coordinator then
    /// revokes partitions of topics no longer subscribed). Takes effect with the next
    /// heartbeat; the first `poll` joins the group.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an empty list or an empty name.
    pub fn subscribe<I, S>(&mut self, topics: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let topics: BTreeSet<String> = topics.into_iter().map(Into::into).collect();
        if topics.is_empty() || topics.contains("") {
            return Err(ClientError::InvalidArgument {
                reason: "subscribe needs at least one topic, and no empty name".into(),
            });
        }
        self.set_subscription(Subscription::Topics(topics.into_iter().collect()));
        Ok(())
    }

    /// Subscribes to every topic whose whole name matches `pattern` (Rust `regex` syntax),
    /// including topics created later, replacing any earlier subscription. The coordinator
    /// checks the pattern: a bad one makes `poll` fail with `INVALID_REQUEST`.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an empty pattern.
    pub fn subscribe_pattern(&mut self, pattern: &str) -> Result<(), ClientError> {
        if pattern.is_empty() {
            return Err(ClientError::InvalidArgument {
                reason: "subscribe_pattern needs a non-empty pattern".into(),
            });
        }
        self.set_subscription(Subscription::Pattern(pattern.to_string()));
        Ok(())
    }

    fn set_subscription(&mut self, subscription: Subscription) {
        let mut s = lock(&self.shared.state);
        if s.subscription.as_ref() != Some(&subscription) {
            s.subscription = Some(subscription);
            s.subscription_version += 1;
        }
        s.error = None;
        drop(s);
        self.shared.wake_heartbeat.notify_one();
    }

    /// The partitions this member owns now, sorted.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.owned.iter().cloned().collect()
    }

    /// The next offset `poll` returns from an owned partition (see [`Consumer::position`]).
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.consumer.position(topic, partition)
    }

    /// The member id the coordinator gave, while a member.
    pub fn member_id(&self) -> Option<String> {
        Some(lock(&self.shared.state).member_id.clone()).filter(|id| !id.is_empty())
    }

    /// The member epoch the coordinator last gave (0 while joining).
    pub fn member_epoch(&self) -> i32 {
        lock(&self.shared.state).member_epoch
    }

    /// Returns the records of owned partitions fetched since the last `poll`, waiting up to
    /// `timeout` for some (see [`Consumer::poll`]). Joins the group at the first call, applies
    /// the assignment changes the heartbeats brought (see the type's docs), and auto-commits
    /// when due. A change that comes while it waits is applied at once.
    ///
    /// Applying a change talks to the coordinator (the commit before a revocation, the
    /// committed offsets of new partitions), which may take up to `request_timeout` beyond
    /// `timeout` while the group's coordinator is unreachable. Cancelling a `poll` (dropping
    /// its future) is safe: a change it was applying is applied again by the next one, and no
    /// record is lost.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] before `subscribe`; the error of a heartbeat that
    /// retrying does not fix (e.g. `INVALID_REQUEST` for a bad pattern,
    /// `UNSUPPORTED_ASSIGNOR`), once; a failed lookup of the committed offsets of new
    /// partitions (tried again at the next `poll`); the errors of [`Consumer::poll`].
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        self.start_heartbeats()?;
        let shared = self.shared.clone();
        loop {
            self.reconcile().await?;
            if let Some(error) = lock(&shared.state).error.take() {
                return Err(error);
            }
            self.auto_commit_if_due().await;
            let woken = shared.wake_poll.notified();
            if self.owned.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                    () = woken => continue,
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let records = tokio::select! {
                records = self.consumer.poll(remaining) => records?,
                () = woken => continue,
            };
            if lock(&shared.state).fenced.is_some() {
                // Records of partitions that are lost already: not handed out.
                continue;
            }
            if !records.is_empty() || Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    /// Commits the positions of every owned partition (those `poll` has returned records up
    /// to), waiting for the coordinator to make them durable.
    ///
    /// # Errors
    /// [`ClientError::NotMember`] before the group was joined; [`ClientError::Server`] with
    /// `UNKNOWN_MEMBER_ID` or `STALE_MEMBER_EPOCH` when this member was fenced;
    /// [`ClientError::TimedOut`].
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let offsets = self.positions(self.owned.iter());
        self.commit_offsets(offsets).await
    }

    /// Commits these offsets (the next offset to consume, by topic and partition) as this
    /// member.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub async fn commit_offsets(
        &mut self,
        offsets: BTreeMap<(String, i32), i64>,
    ) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let group = self.config.group_id.clone();
        let (member_id, member_epoch) = {
            let s = lock(&self.shared.state);
            (s.member_id.clone(), s.member_epoch)
        };
        if member_id.is_empty() {
            return Err(ClientError::NotMember {
                group,
                reason: "it has not joined yet (poll first)".into(),
            });
        }
        let request = pb::CommitOffsetsRequest {
            group_id: group.clone(),
            member_id,
            member_epoch,
            offsets: offsets
                .iter()
                .map(|((topic, partition), &offset)| pb::OffsetCommit {
                    topic: topic.clone(),
                    partition: *partition,
                    offset,
                    leader_epoch: -1,
                    metadata: String::new(),
                })
                .collect(),
        };
        let deadline = Instant::now() + self.cluster.request_timeout();
        self.cluster
            .call_coordinator(
                &format!("commit offsets of group {group}"),
                &group,
                deadline,
                self.config.consumer.retry_backoff,
                |mut client| {
                    let request = request.clone();
                    async move { client.commit_offsets(request).await }
                },
            )
            .await?;
        debug!(%group, partitions = offsets.len(), "offsets committed");
        self.committed.extend(offsets);
        Ok(())
    }

    /// Leaves the group: stops heartbeating, commits the owned partitions' positions with
    /// auto-commit, revokes them ([`RebalanceListener::on_revoked`]), and sends a leave
    /// heartbeat (epoch -1; -2 for a static member, which keeps its partitions until its
    /// session times out). Leaves even when the commit fails.
    ///
    /// # Errors
    /// The commit's error, else the leave's (`UNKNOWN_MEMBER_ID` and `STALE_MEMBER_EPOCH`
    /// count as left).
    pub async fn close(mut self) -> Result<(), ClientError> {
        lock(&self.shared.state).closing = true;
        if let Some(task) = self.heartbeat.take() {
            task.abort();
            let _ = task.await;
        }
        let (member_id, fenced) = {
            let s = lock(&self.shared.state);
            (s.member_id.clone(), s.fenced.is_some())
        };
        let mut result = Ok(());
        let owned: Vec<Tp> = std::mem::take(&mut self.owned).into_iter().collect();
        if !owned.is_empty() {
            if fenced {
                self.emit(RebalanceEvent::Lost(owned));
            } else {
                if self.config.auto_commit {
                    let offsets = self.positions(owned.iter());
                    result = self.commit_offsets(offsets).await;
                }
                self.emit(RebalanceEvent::Revoked(owned));
            }
            self.consumer.assign(Vec::new());
        }
        if member_id.is_empty() || fenced {
            return result;
        }
        let group = self.config.group_id.clone();
        let epoch =
            if self.config.instance_id.is_some() { STATIC_LEAVE_EPOCH } else { LEAVE_EPOCH };
        let request = pb::ConsumerGroupHeartbeatRequest {
            group_id: group.clone(),
            member_id,
            member_epoch: epoch,
            instance_id: self.config.instance_id.clone(),
            ..Default::default()
        };
        let deadline = Instant::now() + self.cluster.request_timeout();
        let left = self
            .cluster
            .call_coordinator(
                &format!("leave group {group}"),
                &group,
                deadline,
                self.config.consumer.retry_backoff,
                |mut client| {
                    let request = request.clone();
                    async move { client.consumer_group_heartbeat(request).await }
                },
            )
            .await;
        match left {
            Ok(_) => info!(%group, epoch, "left the group"),
            Err(e) if is_fencing(&e) => debug!(%group, error = %e, "already out of the group"),
            Err(e) => result = result.and(Err(e)),
        }
        result
    }

    /// The positions of these partitions, where known.
    fn positions<'a>(&self, partitions: impl Iterator<Item = &'a Tp>) -> BTreeMap<Tp, i64> {
        partitions
            .filter_map(|(t, p)| Some(((t.clone(), *p), self.consumer.position(t, *p)?)))
            .collect()
    }

    fn start_heartbeats(&mut self) -> Result<(), ClientError> {
        if lock(&self.shared.state).subscription.is_none() {
            return Err(ClientError::InvalidArgument {
                reason: "poll without a subscription: subscribe first".into(),
            });
        }
        if self.heartbeat.is_none() {
            let (shared, cluster, config) =
                (self.shared.clone(), self.cluster.clone(), self.config.clone());
            self.heartbeat = Some(tokio::spawn(run_heartbeats(shared, cluster, config)));
        }
        Ok(())
    }

    /// Applies what the heartbeats brought: a fencing (every partition lost, then a rejoin),
    /// or a new assignment (revocations first, reported to the coordinator at once, then
    /// additions).
    ///
    /// # Errors
    /// The committed-offsets lookup of new partitions; they are added at a later call.
    async fn reconcile(&mut self) -> Result<(), ClientError> {
        let (fenced, target) = {
            let s = lock(&self.shared.state);
            (s.fenced.clone(), s.target.clone())
        };
        if let Some(reason) = fenced {
            let lost: Vec<Tp> = std::mem::take(&mut self.owned).into_iter().collect();
            self.consumer.assign(Vec::new());
            self.committed.clear();
            warn!(
                group = %self.config.group_id,
                error = %reason,
                partitions = lost.len(),
                "member fenced: partitions lost, joining again"
            );
            if !lost.is_empty() {
                self.emit(RebalanceEvent::Lost(lost));
            }
            {
                let mut s = lock(&self.shared.state);
                s.fenced = None;
                s.owned.clear();
                s.member_id.clear();
                s.member_epoch = JOIN_EPOCH;
                s.target = None;
                s.subscription_sent = 0;
            }
            self.shared.wake_heartbeat.notify_one();
            return Ok(());
        }
        let Some(target) = target else { return Ok(()) };
        let (revoked, added) = plan(&self.owned, &target);
        if !revoked.is_empty() {
            if self.config.auto_commit {
                let offsets = self.positions(revoked.iter());
                if let Err(error) = self.commit_offsets(offsets).await {
                    warn!(
                        group = %self.config.group_id,
                        %error,
                        "commit before revoking partitions failed"
                    );
                }
            }
            for tp in &revoked {
                self.owned.remove(tp);
                self.committed.remove(tp);
            }
            self.consumer.assign(self.owned.iter().cloned().collect());
            self.emit(RebalanceEvent::Revoked(revoked));
            self.publish_owned();
        }
        if !added.is_empty() {
            let committed = self.fetch_committed(&added).await?;
            if lock(&self.shared.state).fenced.is_some() {
                return Ok(());
            }
            self.owned.extend(added.iter().cloned());
            self.consumer.assign(self.owned.iter().cloned().collect());
            for tp in &added {
                if let Some(&offset) = committed.get(tp) {
                    self.consumer.seek(&tp.0, tp.1, offset)?;
                    self.committed.insert(tp.clone(), offset);
                }
            }
            self.emit(RebalanceEvent::Assigned(added));
            self.publish_owned();
        }
        Ok(())
    }

    /// Hands the owned partitions to the heartbeat task and has it report them now.
    fn publish_owned(&self) {
        lock(&self.shared.state).owned = self.owned.clone();
        self.shared.wake_heartbeat.notify_one();
    }

    /// The group's committed offsets of these partitions (those without one are absent).
    async fn fetch_committed(&self, partitions: &[Tp]) -> Result<HashMap<Tp, i64>, ClientError> {
        let group = &self.config.group_id;
        let request = pb::FetchOffsetsRequest {
            group_id: group.clone(),
            partitions: partitions
                .iter()
                .map(|(topic, partition)| pb::TopicPartition {
                    topic: topic.clone(),
                    partition: *partition,
                })
                .collect(),
        };
        let deadline = Instant::now() + self.cluster.request_timeout();
        let response = self
            .cluster
            .call_coordinator(
                &format!("fetch offsets of group {group}"),
                group,
                deadline,
                self.config.consumer.retry_backoff,
                |mut client| {
                    let request = request.clone();
                    async move { client.fetch_offsets(request).await }
                },
            )
            .await?;
        Ok(response
            .offsets
            .into_iter()
            .filter(|o| o.offset >= 0)
            .map(|o| ((o.topic, o.partition), o.offset))
            .collect())
    }

    /// Commits the positions that moved since their last commit, when auto-commit is on and
    /// its interval has passed. A failure is logged: the next one tries again.
    async fn auto_commit_if_due(&mut self) {
        if !self.config.auto_commit
            || self.owned.is_empty()
            || self.last_auto_commit.elapsed() < self.config.auto_commit_interval
        {
            return;
        }
        self.last_auto_commit = Instant::now();
        let mut offsets = self.positions(self.owned.iter());
        offsets.retain(|tp, offset| self.committed.get(tp) != Some(offset));
        if let Err(error) = self.commit_offsets(offsets).await {
            warn!(group = %self.config.group_id, %error, "auto-commit failed");
        }
    }

    fn emit(&mut self, event: RebalanceEvent) {
        info!(group = %self.config.group_id, ?event, "partitions changed");
        let Some(listener) = self.listener.as_mut() else { return };
        let listener = listener.get_mut().unwrap_or_else(|e| e.into_inner());
        match &event {
            RebalanceEvent::Assigned(p) => listener.on_assigned(p),
            RebalanceEvent::Revoked(p) => listener.on_revoked(p),
            RebalanceEvent::Lost(p) => listener.on_lost(p),
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(task) = &self.heartbeat {
            task.abort();
        }
    }
}

/// The heartbeat task: joins, heartbeats at the coordinator's interval or at once when woken,
/// and hands each answer to `poll`. Runs until the consumer closes or is dropped.
async fn run_heartbeats(shared: Arc<Shared>, cluster: Cluster, config: GroupConsumerConfig) {
    let group = config.group_id.clone();
    let operation = format!("heartbeat to group {group}");
    let backoff = config.consumer.retry_backoff;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = shared.wake_heartbeat.notified() => {}
        }
        let (request, subscription_version) = {
            let s = lock(&shared.state);
            if s.closing {
                return;
            }
            if s.fenced.is_some() || s.subscription.is_none() {
                // Waits for `poll` to drop the lost partitions, or for a subscription.
                next = Instant::now() + IDLE_INTERVAL;
                continue;
            }
            (s.heartbeat_request(&config), s.subscription_version)
        };
        let deadline = Instant::now() + cluster.request_timeout();
        let result = cluster
            .call_coordinator(&operation, &group, deadline, backoff, |mut client| {
                let request = request.clone();
                async move { client.consumer_group_heartbeat(request).await }
            })
            .await;
        let mut s = lock(&shared.state);
        if s.closing {
            return;
        }
        // Whether `poll` has something new to apply or report.
        let mut news = true;
        match result {
            Ok(response) => {
                if request.member_epoch == JOIN_EPOCH {
                    info!(%group, member_id = %response.member_id, "joined the group");
                }
                s.member_id = response.member_id;
                s.member_epoch = response.member_epoch;
                s.subscription_sent = subscription_version;
                news = false;
                if let Some(assignment) = response.assignment {
                    let target: BTreeSet<Tp> = assignment
                        .partitions
                        .into_iter()
                        .map(|tp| (tp.topic, tp.partition))
                        .collect();
                    news = s.target.as_ref() != Some(&target);
                    s.target = Some(target);
                }
                let interval = u64::try_from(response.heartbeat_interval_ms).unwrap_or(0);
                next = Instant::now() + Duration::from_millis(interval).max(MIN_HEARTBEAT_INTERVAL);
            }
            Err(error) if is_fencing(&error) => {
                warn!(%group, %error, "member fenced");
                s.fenced = Some(error);
                s.target = None;
                next = Instant::now() + IDLE_INTERVAL;
            }
            Err(error) if error.is_retriable() || matches!(error, ClientError::TimedOut { .. }) => {
                warn!(%group, %error, "heartbeat failed; retrying");
                s.subscription_sent = 0;
                news = false;
                next = Instant::now() + backoff;
            }
            Err(error) => {
                warn!(%group, %error, "heartbeat refused");
                s.subscription_sent = 0;
                s.error = Some(error);
                next = Instant::now() + FATAL_RETRY_INTERVAL;
            }
        }
        drop(s);
        if news {
            shared.wake_poll.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(v: &[(&str, i32)]) -> BTreeSet<Tp> {
        v.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    /// A consumer can live in a spawned task on a multi-threaded runtime: its futures are
    /// `Send` (checked at compile time; a non-`Sync` listener once made them not).
    #[allow(dead_code)]
    fn futures_are_send(c: &mut GroupConsumer) {
        fn send<T: Send>(_: &T) {}
        send(&c.poll(Duration::ZERO));
        send(&c.commit());
    }

    /// A join carries the whole subscription; later heartbeats carry it only when it changed
    /// (or was not acknowledged), and always the owned partitions.
    #[test]
    fn heartbeat_requests() {
        let config = GroupConsumerConfig {
            instance_id: Some("i-1".into()),
            server_assignor: Some("range".into()),
            ..GroupConsumerConfig::new("g")
        };
        let mut s = MemberState {
            subscription: Some(Subscription::Topics(vec!["a".into()])),
            subscription_version: 1,
            ..Default::default()
        };
        let join = s.heartbeat_request(&config);
        assert_eq!((join.member_id.as_str(), join.member_epoch), ("", 0));
        assert_eq!(join.subscribed_topics.unwrap().topics, ["a"]);
        assert_eq!(join.subscribed_regex, None);
        assert_eq!(join.instance_id.as_deref(), Some("i-1"));
        assert_eq!(join.server_assignor, "range");
        assert_eq!(join.owned_partitions, Some(pb::PartitionList::default()));

        s.member_id = "m".into();
        s.member_epoch = 3;
        s.subscription_sent = 1;
        s.owned = tps(&[("a", 1)]);
        let hb = s.heartbeat_request(&config);
        assert_eq!((hb.member_id.as_str(), hb.member_epoch), ("m", 3));
        assert_eq!((hb.subscribed_topics, hb.subscribed_regex), (None, None));
        assert_eq!(hb.owned_partitions.unwrap().partitions.len(), 1);

        s.subscription = Some(Subscription::Pattern("a.*".into()));
        s.subscription_version = 2;
        let hb = s.heartbeat_request(&config);
        assert_eq!(hb.subscribed_topics, Some(pb::TopicList::default()), "topics dropped");
        assert_eq!(hb.subscribed_regex.as_deref(), Some("a.*"));

        s.subscription = Some(Subscription::Topics(vec!["b".into()]));
        s.subscription_version = 3;
        let hb = s.heartbeat_request(&config);
        assert_eq!(hb.subscribed_topics.unwrap().topics, ["b"]);
        assert_eq!(hb.subscribed_regex.as_deref(), Some(""), "pattern dropped");
    }

    /// Reconciling revokes what the target lacks and adds what it has new, each sorted.
    #[test]
    fn plans() {
        let owned = tps(&[("a", 0), ("a", 1), ("b", 0)]);
        let target = tps(&[("a", 1), ("b", 1), ("a", 2)]);
        let (revoked, added) = plan(&owned, &target);
        assert_eq!(revoked, [("a".to_string(), 0), ("b".to_string(), 0)]);
        assert_eq!(added, [("a".to_string(), 2), ("b".to_string(), 1)]);
        assert_eq!(plan(&target, &target), (vec![], vec![]));
    }

    /// The fencing codes send the member back to join; a client-side "not a member" does not.
    #[test]
    fn fencing_errors() {
        let status = tideline_common::status(ErrorCode::StaleMemberEpoch, "epoch 3 < 5");
        assert!(is_fencing(&ClientError::from_status("heartbeat", "h:1", &status)));
        let status = tideline_common::status(ErrorCode::NotCoordinator, "moved");
        assert!(!is_fencing(&ClientError::from_status("heartbeat", "h:1", &status)));
        let not_member = ClientError::NotMember { group: "g".into(), reason: "x".into() };
        assert!(!is_fencing(&not_member));
    }

    /// The consumer can move between tasks.
    #[test]
    fn group_consumers_are_send() {
        fn check<T: Send>() {}
        check::<GroupConsumer>();
    }
}
