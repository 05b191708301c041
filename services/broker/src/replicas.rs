//! [`ReplicaManager`]: the partition replicas this broker holds, kept in line with the
//! controller's metadata. Each replica is a `tideline-log` directory `<topic>-<partition>` with a
//! `partition.metadata` file naming the topic id (as Kafka does), so a topic deleted and
//! re-created under the same name never serves the old topic's data.
//!
//! The data directory belongs to one broker: a `broker.metadata` file names its id, and a
//! broker refuses a directory of another id. Partition directories (those holding a
//! `partition.metadata` file) that are not placed here are deleted; other files are left alone.
//!
//! Requests look replicas up under a lock held only for a map access; opening, recovering and
//! deleting logs happen outside it, so a broker opening hundreds of partitions keeps serving the
//! ones already open.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tideline_log::{Log, LogConfig, LogError};
use tideline_proto::v1 as pb;

use crate::log_config::log_config;

/// File in each partition directory holding the topic id, in hex.
pub const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// File in each partition directory holding the last checkpointed high watermark.
pub const HIGH_WATERMARK_FILE: &str = "high-watermark";
/// File in the data directory naming the broker that owns it.
pub const BROKER_METADATA_FILE: &str = "broker.metadata";

/// Why the replicas could not be brought in line.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A log failed to open, reconfigure or delete.
    #[error("partition {topic}-{partition}: {source}")]
    Log {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The log error.
        #[source]
        source: LogError,
    },
    /// A topic's configs do not make a valid log config.
    #[error("topic {topic}: {reason}")]
    Config {
        /// Topic name.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// The data directory belongs to another broker.
    #[error("data directory {dir} belongs to broker {owner}, not broker {broker_id}")]
    WrongOwner {
        /// The directory.
        dir: PathBuf,
        /// The id in its broker.metadata.
        owner: String,
        /// This broker's id.
        broker_id: i32,
    },
    /// A partition directory or its metadata file could not be read, written or removed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A partition replica on this broker.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The topic's id.
    pub topic_id: Vec<u8>,
    /// The partition's log.
    pub log: Arc<Log>,
    /// Broker id of the partition's leader, -1 for none.
    pub leader: i32,
    /// The partition's leader epoch.
    pub leader_epoch: i32,
    /// Bumped on every change of replicas or ISR.
    pub partition_epoch: i32,
    /// Broker ids holding a replica, the preferred leader first.
    pub replicas: Vec<i32>,
    /// Broker ids of the in-sync replicas, as the controller recorded them.
    pub isr: Vec<i32>,
    /// While the partition moves: the replicas being added (copying, not yet all in the ISR).
    pub adding: Vec<i32>,
    /// While this broker is adding the partition in a reassignment: the bytes per second it
    /// may copy for all such partitions together (0: no limit, or not adding).
    pub throttle: u64,
    /// The offset below which records are committed (held by every in-sync replica) and
    /// readable by consumers. Consumer fetches and acks=all produces wait on it.
    pub high_watermark: Arc<tokio::sync::watch::Sender<i64>>,
    /// The log end offset, published after every append; follower fetches wait on it.
    pub log_end: Arc<tokio::sync::watch::Sender<i64>>,
    /// While this broker leads: how far each follower has replicated.
    pub progress: Arc<std::sync::Mutex<Progress>>,
    /// What each idempotent producer last wrote here (held while an idempotent batch is
    /// checked and appended).
    pub producers: Arc<std::sync::Mutex<crate::producer_state::ProducerStates>>,
    /// Leadership and ISR as applied now, shared by every copy of this replica. A leader's
    /// append holds its read lock and checks it still leads at its epoch; applying metadata
    /// takes the write lock, so no leader append lands after the broker became a follower.
    pub state: Arc<std::sync::RwLock<PartitionState>>,
    /// Produce requests waiting for the partition's writer (group commit).
    pub appends: Arc<crate::appender::AppendQueue>,
    /// While leading: the `traceparent` of recent traced produces with the leader epoch they
    /// were appended at and the offsets each appended (first, last), oldest first, at most
    /// [`MAX_TRACES`]. Replica fetch answers carrying those offsets at the same epoch pass them
    /// on, so followers' replication joins the traces.
    pub traces: Arc<std::sync::Mutex<std::collections::VecDeque<ProduceTrace>>>,
}

/// A traced produce a leader remembers: (leader epoch, first offset, last offset,
/// traceparent).
pub type ProduceTrace = (i32, i64, i64, String);

/// Most traced produces a replica remembers for its followers (a follower a long way behind
/// does not join those traces).
pub const MAX_TRACES: usize = 64;

/// A partition's leadership and ISR as this broker applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Broker id of the leader, -1 for none.
    pub leader: i32,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch.
    pub partition_epoch: i32,
    /// The in-sync replicas as the controller recorded them.
    pub isr: Vec<i32>,
    /// An ISR this broker, leading, asked the controller for and has not seen applied yet. The
    /// high watermark counts the members of both (Kafka's "maximal ISR"), so a record is never
    /// committed without a replica that is about to join, or only just left.
    pub pending_isr: Option<Vec<i32>>,
    /// When the pending ISR was last asked for (an answer lost on the way is asked for again).
    pub pending_since: Option<std::time::Instant>,
}

impl PartitionState {
    /// The replicas the high watermark waits for: the ISR and any pending one.
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut all = self.isr.clone();
        for id in self.pending_isr.iter().flatten() {
            if !all.contains(id) {
                all.push(*id);
            }
        }
        all
    }
}

/// A leader's view of its followers, for one leader epoch.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The leader epoch this view belongs to (reset when it changes).
    pub leader_epoch: i32,
    /// The log end offset when this epoch began here: a follower must have reached it (and the
    /// high watermark) to join the ISR.
    pub epoch_start: i64,
    /// When this broker took the lead at that epoch.
    pub since: std::time::Instant,
    /// Per follower broker id.
    pub followers: std::collections::HashMap<i32, FollowerProgress>,
}

/// How far one follower has replicated.
#[derive(Debug, Clone, Copy)]
pub struct FollowerProgress {
    /// Its log end offset (the offset of its last fetch).
    pub log_end: i64,
    /// The last time it had everything the leader had (Kafka's lastCaughtUpTime).
    pub caught_up_at: std::time::Instant,
    /// When its previous fetch was answered, and the leader's log end then.
    pub last_fetch: std::time::Instant,
    /// The leader's log end offset when its previous fetch was answered.
    pub leader_end_at_last_fetch: i64,
}

impl Progress {
    fn new(leader_epoch: i32, epoch_start: i64) -> Self {
        Progress {
            leader_epoch,
            epoch_start,
            since: std::time::Instant::now(),
            followers: std::collections::HashMap::new(),
        }
    }
}

impl Replica {
    /// Remembers that a traced produce appended offsets `first..=last`.
    pub fn record_trace(&self, leader_epoch: i32, first: i64, last: i64, traceparent: String) {
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        if traces.len() == MAX_TRACES {
            traces.pop_front();
        }
        traces.push_back((leader_epoch, first, last, traceparent));
    }

    /// The traceparents of remembered produces of the current leader epoch with records in
    /// `from..to` (offsets of another epoch may name other records, after a truncation).
    pub fn traces_between(&self, from: i64, to: i64) -> Vec<String> {
        let epoch = self.leader_epoch;
        let traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        traces
            .iter()
            .filter(|(e, first, last, _)| *e == epoch && *last >= from && *first < to)
            .map(|(_, _, _, traceparent)| traceparent.clone())
            .collect()
    }

    /// Publishes a new log end offset (after an append or truncation).
    pub fn set_log_end(&self, offset: i64) {
        self.log_end.send_replace(offset);
    }

    /// Raises the published log end offset to `offset` (never lowers it): produces written in
    /// one group-commit round publish their ends in any order.
    pub fn raise_log_end(&self, offset: i64) {
        self.log_end.send_if_modified(|end| {
            let raised = *end < offset;
            if raised {
                *end = offset;
            }
            raised
        });
    }

    /// Lowers the high watermark to `offset` when it is above (a follower truncated its log).
    pub fn cap_high_watermark(&self, offset: i64) {
        self.high_watermark.send_if_modified(|hw| {
            let lowered = *hw > offset;
            if lowered {
                *hw = offset;
            }
            lowered
        });
    }

    /// Raises the high watermark to `offset` (never lowers it) and wakes waiting fetches.
    pub fn advance_high_watermark(&self, offset: i64) {
        self.high_watermark.send_if_modified(|hw| {
            let advanced = offset > *hw;
            if advanced {
                *hw = offset;
            }
            advanced
        });
    }

    /// The current high watermark.
    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }
}

/// What one [`ReplicaManager::apply`] changed.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    /// Replicas opened, as (topic, partition).
    pub opened: Vec<(String, i32)>,
    /// Replicas whose logs were deleted (topic deleted, replica moved, or topic re-created).
    pub removed: Vec<(String, i32)>,
    /// Partitions that could not be brought in line; the others were. Applying again retries.
    pub errors: Vec<ReplicaError>,
}

/// The replicas of one broker.
#[derive(Debug)]
pub struct ReplicaManager {
    dir: PathBuf,
    broker_id: i32,
    defaults: LogConfig,
    replicas: RwLock<BTreeMap<(String, i32), Replica>>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReplicaError {
    let path = path.to_path_buf();
    move |source| ReplicaError::Io { op, path, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The high watermark checkpointed in partition directory `dir`, if any.
fn read_high_watermark(dir: &Path) -> Option<i64> {
    fs::read_to_string(dir.join(HIGH_WATERMARK_FILE)).ok()?.trim().parse().ok()
}

/// Checkpoints `hw` in partition directory `dir` (write and rename: a crash leaves the old or
/// the new value; a stale value only makes the restart start lower).
pub fn write_high_watermark(dir: &Path, hw: i64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{HIGH_WATERMARK_FILE}.tmp"));
    fs::write(&tmp, hw.to_string())?;
    fs::rename(&tmp, dir.join(HIGH_WATERMARK_FILE))
}

impl ReplicaManager {
    /// A manager for broker `broker_id` keeping logs under `dir`, with `defaults` for configs a
    /// topic does not set. Claims the directory for this broker (or checks that it is this
    /// broker's); nothing is opened until [`ReplicaManager::apply`].
    ///
    /// # Errors
    /// [`ReplicaError::WrongOwner`] when the directory belongs to another broker id;
    /// [`ReplicaError::Io`] when it cannot be created or claimed.
    pub fn new(
        dir: impl Into<PathBuf>,
        broker_id: i32,
        defaults: LogConfig,
    ) -> Result<Self, ReplicaError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let file = dir.join(BROKER_METADATA_FILE);
        let mine = format!("broker.id={broker_id}\n");
        match fs::read_to_string(&file) {
            Ok(owner) if owner == mine => {}
            Ok(owner) => {
                let owner = owner.trim().trim_start_matches("broker.id=").to_string();
                return Err(ReplicaError::WrongOwner { dir, owner, broker_id });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::write(&file, mine).map_err(io("write", &file))?;
            }
            Err(e) => return Err(io("read", &file)(e)),
        }
        Ok(ReplicaManager { dir, broker_id, defaults, replicas: RwLock::new(BTreeMap::new()) })
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<(String, i32), Replica>> {
        self.replicas.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<(String, i32), Replica>> {
        self.replicas.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The replica of `topic`/`partition`, if this broker holds it.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Replica> {
        self.map().get(&(topic.to_string(), partition)).cloned()
    }

    /// Every replica held, by (topic, partition).
    pub fn all(&self) -> Vec<((String, i32), Replica)> {
        self.map().iter().map(|(k, r)| (k.clone(), r.clone())).collect()
    }

    /// Number of replicas held.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no replica is held.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Brings the replicas in line with `topics` (every topic of the cluster, from a metadata
    /// image no older than any applied before): opens (creating if needed) the partitions
    /// placed on this broker, applies config changes and leadership, and deletes the logs of
    /// partitions no longer placed here, including directories left from before a restart and
    /// those of an older topic with the same name. A partition that fails is reported in
    /// [`ApplyOutcome::errors`] and the others still proceed. Calls must not overlap.
    pub fn apply(&self, topics: &[pb::TopicMetadata]) -> ApplyOutcome {
        let mut outcome = ApplyOutcome::default();
        let mut wanted: BTreeMap<(String, i32), (&pb::TopicMetadata, &pb::PartitionMetadata)> =
            BTreeMap::new();
        for topic in topics {
            for p in topic.partitions.iter().filter(|p| p.replicas.contains(&self.broker_id)) {
                wanted.insert((topic.name.clone(), p.partition), (topic, p));
            }
        }
        // Replicas no longer wanted here, or of an older topic of that name: out of the map
        // first (requests stop finding them), then deleted.
        let stale: Vec<((String, i32), Replica)> = {
            let mut map = self.map_mut();
            let keys: Vec<(String, i32)> = map
                .iter()
                .filter(|(key, r)| {
                    wanted.get(*key).is_none_or(|(t, _)| t.topic_id[..] != r.topic_id[..])
                })
                .map(|(key, _)| key.clone())
                .collect();
            keys.into_iter().filter_map(|k| map.remove(&k).map(|r| (k, r))).collect()
        };
        for (key, replica) in stale {
            match replica.log.delete() {
                Ok(()) => outcome.removed.push(key),
                Err(source) => outcome.errors.push(ReplicaError::Log {
                    topic: key.0,
                    partition: key.1,
                    source,
                }),
            }
        }
        // Partition directories not wanted (left from before a restart).
        match fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some((topic, partition)) = name.rsplit_once('-') else { continue };
                    let Ok(partition) = partition.parse::<i32>() else { continue };
                    let key = (topic.to_string(), partition);
                    let path = entry.path();
                    if wanted.contains_key(&key)
                        || self.map().contains_key(&key)
                        || !path.join(PARTITION_METADATA_FILE).is_file()
                    {
                        continue;
                    }
                    match fs::remove_dir_all(&path) {
                        Ok(()) => outcome.removed.push(key),
                        Err(e) => outcome.errors.push(io("remove", &path)(e)),
                    }
                }
            }
            Err(e) => outcome.errors.push(io("list", &self.dir)(e)),
        }
        for (key, (topic, p)) in wanted {
            if let Err(e) = self.bring_in_line(&key, topic, p, &mut outcome) {
                outcome.errors.push(e);
            }
        }
        outcome
    }

    fn bring_in_line(
        &self,
        key: &(String, i32),
        topic: &pb::TopicMetadata,
        p: &pb::PartitionMetadata,
        outcome: &mut ApplyOutcome,
    ) -> Result<(), ReplicaError> {
        let config = log_config(&topic.configs, &self.defaults)
            .map_err(|reason| ReplicaError::Config { topic: topic.name.clone(), reason })?;
        let log_err = |source| ReplicaError::Log { topic: key.0.clone(), partition: key.1, source };
        let existing = self.get(&key.0, key.1);
        if let Some(replica) = existing {
            if replica.log.config() != config {
                replica.log.set_config(config).map_err(log_err)?;
            }
            if let Some(r) = self.map_mut().get_mut(key) {
                r.leader = p.leader;
                r.leader_epoch = p.leader_epoch;
                r.partition_epoch = p.partition_epoch;
                r.replicas = p.replicas.clone();
                r.isr = p.isr.clone();
                r.throttle = self.throttle_of(p);
                r.adding = p.adding_replicas.clone();
            }
            // Waits for leader appends in flight at the old epoch to finish.
            let mut st = replica.state.write().unwrap_or_else(|e| e.into_inner());
            let new_leadership = st.leader != p.leader || st.leader_epoch != p.leader_epoch;
            if new_leadership || st.partition_epoch != p.partition_epoch {
                st.pending_isr = None;
                st.pending_since = None;
            }
            st.leader = p.leader;
            st.leader_epoch = p.leader_epoch;
            st.partition_epoch = p.partition_epoch;
            st.isr = p.isr.clone();
            drop(st);
            let mut progress = replica.progress.lock().unwrap_or_else(|e| e.into_inner());
            if new_leadership {
                *progress = Progress::new(p.leader_epoch, replica.log.log_end_offset());
            } else {
                // A follower that left the ISR starts afresh: what it had before (another
                // process, maybe with a shorter log) must not count when it asks back in.
                let keep = replica.state.read().unwrap_or_else(|e| e.into_inner()).maximal_isr();
                progress.followers.retain(|id, _| keep.contains(id));
            }
            return Ok(());
        }
        let path = self.dir.join(format!("{}-{}", key.0, key.1));
        let id_file = path.join(PARTITION_METADATA_FILE);
        let id = hex(&topic.topic_id);
        match fs::read_to_string(&id_file) {
            Ok(existing) if existing.trim() == id => {}
            Ok(_) => {
                // An older topic of the same name: its data must not be served.
                fs::remove_dir_all(&path).map_err(io("remove", &path))?;
                outcome.removed.push(key.clone());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &id_file)(e)),
        }
        // Opening may scan a log after an unclean stop: no lock is held meanwhile.
        let log = Log::open(&path, config).map_err(log_err)?;
        let producers = crate::producer_state::ProducerStates::rebuild(&log).map_err(log_err)?;
        fs::write(&id_file, &id).map_err(io("write", &id_file))?;
        let end = log.log_end_offset();
        // The high watermark starts where it was last checkpointed (never past the log end):
        // consumers of a restarted leader do not see it fall back to the log start, and it
        // only moves on once the in-sync followers have fetched.
        let start = read_high_watermark(&path).unwrap_or(0).clamp(log.log_start_offset(), end);
        self.map_mut().insert(
            key.clone(),
            Replica {
                topic_id: topic.topic_id.to_vec(),
                high_watermark: Arc::new(tokio::sync::watch::channel(start).0),
                log_end: Arc::new(tokio::sync::watch::channel(end).0),
                log: Arc::new(log),
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                throttle: self.throttle_of(p),
                adding: p.adding_replicas.clone(),
                progress: Arc::new(std::sync::Mutex::new(Progress::new(p.leader_epoch, end))),
                producers: Arc::new(std::sync::Mutex::new(producers)),
                appends: Default::default(),
                traces: Default::default(),
                state: Arc::new(std::sync::RwLock::new(PartitionState {
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    isr: p.isr.clone(),
                    pending_isr: None,
                    pending_since: None,
                })),
            },
        );
        outcome.opened.push(key.clone());
        Ok(())
    }

    /// The reassignment throttle this broker applies to `p`: the partition's while this
    /// broker is one of its adding replicas and not yet in sync (as Kafka: a replica in the
    /// ISR is never throttled, or acks=all would wait on the throttle and the replica could
    /// fall out of the ISR again).
    fn throttle_of(&self, p: &pb::PartitionMetadata) -> u64 {
        let me = self.broker_id;
        if p.adding_replicas.contains(&me) && !p.isr.contains(&me) {
            p.reassignment_throttle
        } else {
            0
        }
    }

    /// Closes every log cleanly (the next start skips recovery scans).
    ///
    /// # Errors
    /// The first close that failed; the others are still closed.
    pub fn close(&self) -> Result<(), ReplicaError> {
        let mut first = None;
        for ((topic, partition), replica) in std::mem::take(&mut *self.map_mut()) {
            if let Err(e) = write_high_watermark(replica.log.dir(), replica.high_watermark()) {
                tracing::warn!(%topic, partition, error = %e, "high watermark checkpoint failed");
            }
            if let Err(source) = replica.log.close() {
                first.get_or_insert(ReplicaError::Log { topic, partition, source });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tideline_log::{Compression, RecordBatchBuilder};

    fn topic(
        name: &str,
        id: u8,
        partitions: &[&[i32]],
        configs: &[(&str, &str)],
    ) -> pb::TopicMetadata {
        pb::TopicMetadata {
            name: name.into(),
            topic_id: vec![id; 16].into(),
            replication_factor: partitions[0].len() as i32,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(i, r)| pb::PartitionMetadata {
                    partition: i as i32,
                    leader: r[0],
                    leader_epoch: 3,
                    partition_epoch: 0,
                    replicas: r.to_vec(),
                    isr: r.to_vec(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn append(r: &Replica) {
        let mut b = RecordBatchBuilder::new(Compression::None);
        b.append(1, None, Some(b"v"), &[]);
        r.log.append(&b.build(), r.leader_epoch).unwrap();
        r.advance_high_watermark(r.log.log_end_offset());
    }

    /// Only the partitions placed on this broker are opened, with their topic configs and
    /// leadership; data survives a restart of the manager.
    #[test]
    fn opens_assigned_partitions_and_keeps_data_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let m = ReplicaManager::new(dir.path(), 1, LogConfig::default()).unwrap();
        let t = topic("orders-v2", 7, &[&[1, 2], &[2, 3], &[3, 1]], &[("retention.ms", "1000")]);
        let outcome = m.apply(std::slice::from_ref(&t));
        assert!(outcome.errors.is_empty());
        assert_eq!(outcome.opened, vec![("orders-v2".into(), 0), ("orders-v2".into(), 2)]);
        assert!(m.get("orders-v2", 1).is_none(), "not placed here");
        let r = m.get("orders-v2", 0).unwrap();
        assert_eq!((r.leader, r.leader_epoch), (1, 3));
        assert_eq!(r.high_watermark(), 0);
        assert_eq!(r.log.config().retention_ms, Some(1000));
        append(&r);
        m.close().unwrap();

        let again = ReplicaManager::new(dir.path(), 1, LogConfig::default()).unwrap();
        again.apply(std::slice::from_ref(&t));
        let r = again.get("orders-v2", 0).unwrap();
        assert_eq!(r.log.log_end_offset(), 1, "data kept");
        assert_eq!(r.high_watermark(), 1, "the high watermark checkpointed at close is kept");
    }

    /// Deleting a topic, moving a replica away, or re-creating a topic under the same name
    /// removes the old logs, also when it happened while the broker was down.
    #[test]
    fn removes_deleted_moved_and_recreated_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let m = ReplicaManager::new(dir.path(), 1, LogConfig::default()).unwrap();
        let a = topic("a", 1, &[&[1], &[1]], &[]);
        let b = topic("b", 2, &[&[1]], &[]);
        m.apply(&[a.clone(), b.clone()]);
        append(&m.get("a", 0).unwrap());
        append(&m.get("b", 0).unwrap());

        // Partition a-1 moves to broker 2; topic b is deleted.
        let a_moved = topic("a", 1, &[&[1], &[2]], &[]);
        let outcome = m.apply(std::slice::from_ref(&a_moved));
        assert_eq!(outcome.removed, vec![("a".into(), 1), ("b".into(), 0)]);
        assert!(!dir.path().join("b-0").exists());
        assert_eq!(m.len(), 1);

        // Topic a is re-created with a new id while this manager is down.
        m.close().unwrap();
        let a_new = topic("a", 9, &[&[1]], &[]);
        let again = ReplicaManager::new(dir.path(), 1, LogConfig::default()).unwrap();
        let outcome = again.apply(&[a_new]);
        assert_eq!(outcome.removed, vec![("a".into(), 0)]);
        assert_eq!(
            again.get("a", 0).unwrap().log.log_end_offset(),
            0,
            "the old topic's data is gone"
        );
    }

    /// A config change reaches the open log.
    #[test]
    fn config_changes_reach_open_logs() {
        let dir = tempfile::tempdir().unwrap();
        let m = ReplicaManager::new(dir.path(), 1, LogConfig::default()).unwrap();
        m.apply(&[topic("t", 1, &[&[1]], &[])]);
        m.apply(&[topic("t", 1, &[&[1]], &[("segment.bytes", "1048576")])]);
        assert_eq!(m.get("t", 0).unwrap().log.config().segment_bytes, 1 << 20);
        let bad = m.apply(&[topic("t", 1, &[&[1]], &[("segment.bytes", "3")])]);
        assert!(bad.errors[0].to_string().contains("segment.bytes"), "{:?}", bad.errors);
    }
}

#[cfg(test)]
mod ownership_tests {
    use super::*;

    /// A data directory is claimed by one broker id; files that are not partition directories
    /// are never deleted; one failing partition does not keep the others from opening.
    #[test]
    fn directory_ownership_and_partial_failures() {
        let dir = tempfile::tempdir().unwrap();
        let m = ReplicaManager::new(dir.path(), 1, LogConfig::default()).unwrap();
        let other = ReplicaManager::new(dir.path(), 2, LogConfig::default()).unwrap_err();
        assert!(other.to_string().contains("belongs to broker 1"), "{other}");
        std::fs::create_dir(dir.path().join("backup-2024")).unwrap();
        std::fs::write(dir.path().join("backup-2024").join("keep"), b"x").unwrap();
        // A partition directory that cannot be opened (its path is a file).
        std::fs::write(dir.path().join("broken-0"), b"not a directory").unwrap();
        let topic = |name: &str, id: u8| pb::TopicMetadata {
            name: name.into(),
            topic_id: vec![id; 16].into(),
            replication_factor: 1,
            configs: Default::default(),
            partitions: vec![pb::PartitionMetadata {
                partition: 0,
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
                replicas: vec![1],
                isr: vec![1],
                ..Default::default()
            }],
        };
        let outcome = m.apply(&[topic("broken", 1), topic("fine", 2)]);
        assert_eq!(outcome.errors.len(), 1, "{:?}", outcome.errors);
        assert!(m.get("fine", 0).is_some(), "the healthy partition opened");
        assert!(dir.path().join("backup-2024").join("keep").exists(), "not a partition directory");
    }
}
