//! openraft's v2 storage traits over sled: [`LogStore`] (Raft log, vote, committed id) and
//! [`StateMachineStore`] (the metadata state machine, persisted through snapshots).
//!
//! Durability: an append is acknowledged to openraft (`LogFlushed::log_io_completed`) only after
//! sled's `flush_async` completed, and the vote is flushed before `save_vote` returns. The state
//! machine lives in memory and is rebuilt at start from the last snapshot plus the log entries
//! after it (openraft re-applies them, since `applied_state` reports the snapshot's last id).
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::metadata::{MetadataResponse, MetadataState};
use crate::types::TypeConfig;

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
const SNAPSHOT_KEY: &[u8] = b"snapshot";

/// Opens the controller's sled database in `dir`, first removing any `snap.*.generating` file:
/// sled 0.34 writes one at every open and, when an open was killed, later reads the cut-off file
/// as the newest snapshot and refuses to open (sled issue #1527); without the partial file the
/// database opens with every key intact.
///
/// # Errors
/// The sled or I/O error.
pub fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snap.") && name.ends_with(".generating") {
                tracing::warn!(file = %entry.path().display(), "removing partial sled snapshot");
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    // sled releases its file lock from a background thread after the last handle drops: a
    // reopen in the same process (a restarted node, a test) may find it still held for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new().path(dir).cache_capacity(64 << 20).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn read_err(e: impl Into<openraft::AnyError>) -> StorageError<NodeId> {
    StorageIOError::read(e).into()
}

fn to_any(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}

/// The Raft log, vote and committed id in sled. Clones share the same trees (the log reader
/// handed to replication tasks is a clone).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    /// The log store in `db` (trees `raft_log` and `raft_meta`).
    ///
    /// # Errors
    /// The sled error when a tree cannot be opened.
    pub fn new(db: sled::Db) -> Result<Self, sled::Error> {
        Ok(LogStore { logs: db.open_tree("raft_log")?, meta: db.open_tree("raft_meta")?, db })
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self.meta.get(key).map_err(|e| read_err(to_any(e)))? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| read_err(to_any(e)))
            }
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), openraft::AnyError> {
        let bytes = serde_json::to_vec(value).map_err(to_any)?;
        self.meta.insert(key, bytes).map_err(to_any)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), openraft::AnyError> {
        self.db.flush_async().await.map(|_| ()).map_err(to_any)
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let iter = match range.end_bound() {
            Bound::Included(&i) => self.logs.range(key(start)..=key(i)),
            Bound::Excluded(&i) => self.logs.range(key(start)..key(i)),
            Bound::Unbounded => self.logs.range(key(start)..),
        };
        iter.map(|kv| {
            let (_, value) = kv.map_err(|e| read_err(to_any(e)))?;
            serde_json::from_slice(&value).map_err(|e| read_err(to_any(e)))
        })
        .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED_KEY)?;
        let last = match self.logs.last().map_err(|e| read_err(to_any(e)))? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(&value).map_err(|e| read_err(to_any(e)))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let write = |e| StorageError::from(StorageIOError::write_vote(e));
        self.put_meta(VOTE_KEY, vote).map_err(write)?;
        self.flush().await.map_err(write)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: losing it only delays applying until the next commit is learned.
        self.put_meta(COMMITTED_KEY, &committed).map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, to_any(e)))?;
            batch.insert(&key(entry.log_id.index), bytes);
        }
        self.logs.apply_batch(batch).map_err(|e| StorageIOError::write_logs(to_any(e)))?;
        // Acknowledged only once sled has the entries on disk.
        let flushed = self.db.flush_async().await.map(|_| ()).map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let write = |e| StorageError::from(StorageIOError::write_logs(e));
        let mut batch = sled::Batch::default();
        for kv in self.logs.range(key(log_id.index)..) {
            let (k, _) = kv.map_err(|e| write(to_any(e)))?;
            batch.remove(k);
        }
        self.logs.apply_batch(batch).map_err(|e| write(to_any(e)))?;
        self.flush().await.map_err(write)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let write = |e| StorageError::from(StorageIOError::write_logs(e));
        // The purge point first: a crash in between leaves extra entries, never a hole.
        self.put_meta(LAST_PURGED_KEY, &log_id).map_err(write)?;
        self.flush().await.map_err(write)?;
        let mut batch = sled::Batch::default();
        for kv in self.logs.range(..=key(log_id.index)) {
            let (k, _) = kv.map_err(|e| write(to_any(e)))?;
            batch.remove(k);
        }
        self.logs.apply_batch(batch).map_err(|e| write(to_any(e)))?;
        self.flush().await.map_err(write)
    }
}

/// A snapshot as stored in sled: its meta and the serialized metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The applied state: the metadata plus the Raft bookkeeping openraft asks for.
#[derive(Debug, Default, Clone)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    metadata: MetadataState,
}

/// The metadata state machine: in memory, persisted through snapshots in sled (tree
/// `raft_snapshot`). Clones share the state.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: sled::Db,
    snapshots: sled::Tree,
    state: Arc<RwLock<Applied>>,
    /// Counts snapshots built by this process, to make snapshot ids unique.
    built: Arc<std::sync::atomic::AtomicU64>,
    /// The metadata version after each apply or snapshot install, for watchers.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Serializes snapshot saves: openraft builds snapshots in a task of its own, so a build
    /// started before an install could otherwise overwrite the newer installed snapshot.
    saving: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachineStore {
    /// The state machine in `db`, restored from the last snapshot there.
    ///
    /// # Errors
    /// The storage error when the snapshot cannot be read or decoded.
    pub fn new(db: sled::Db) -> StorageResult<Self> {
        let snapshots = db.open_tree("raft_snapshot").map_err(|e| read_err(to_any(e)))?;
        let mut applied = Applied::default();
        if let Some(bytes) = snapshots.get(SNAPSHOT_KEY).map_err(|e| read_err(to_any(e)))? {
            let stored: StoredSnapshot =
                serde_json::from_slice(&bytes).map_err(|e| read_err(to_any(e)))?;
            applied = Applied {
                last_applied: stored.meta.last_log_id,
                last_membership: stored.meta.last_membership.clone(),
                metadata: serde_json::from_slice(&stored.data).map_err(|e| read_err(to_any(e)))?,
            };
        }
        let (changes, _) = tokio::sync::watch::channel(applied.metadata.version);
        Ok(StateMachineStore {
            db,
            snapshots,
            state: Arc::new(RwLock::new(applied)),
            built: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            changes: Arc::new(changes),
            saving: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// A copy of the current metadata.
    pub async fn metadata(&self) -> MetadataState {
        self.state.read().await.metadata.clone()
    }

    /// Notifies the metadata version after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Saves `stored` as the current snapshot unless the one already saved is newer (a build
    /// that raced an install); returns whether it was saved.
    async fn save_snapshot(&self, stored: &StoredSnapshot) -> StorageResult<bool> {
        let _saving = self.saving.lock().await;
        let signature = Some(stored.meta.signature());
        let write = |e| StorageError::from(StorageIOError::write_snapshot(signature.clone(), e));
        if let Some(bytes) = self.snapshots.get(SNAPSHOT_KEY).map_err(|e| read_err(to_any(e)))? {
            let current: StoredSnapshot =
                serde_json::from_slice(&bytes).map_err(|e| read_err(to_any(e)))?;
            if current.meta.last_log_id > stored.meta.last_log_id {
                return Ok(false);
            }
        }
        let bytes = serde_json::to_vec(stored).map_err(|e| write(to_any(e)))?;
        self.snapshots.insert(SNAPSHOT_KEY, bytes).map_err(|e| write(to_any(e)))?;
        self.db.flush_async().await.map_err(|e| write(to_any(e)))?;
        Ok(true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_applied, last_membership) = {
            let state = self.state.read().await;
            let data = serde_json::to_vec(&state.metadata).map_err(|e| read_err(to_any(e)))?;
            (data, state.last_applied, state.last_membership.clone())
        };
        let n = self.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership, snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        // An older build than the saved snapshot is returned but not saved; openraft ignores it.
        let _saved = self.save_snapshot(&stored).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let state = self.state.read().await;
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<MetadataResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state.write().await;
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Blank => MetadataResponse::Internal,
                EntryPayload::Normal(command) => state.metadata.apply(&command),
                EntryPayload::Membership(membership) => {
                    state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    MetadataResponse::Internal
                }
            });
        }
        self.changes.send_replace(state.metadata.version);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let metadata: MetadataState = serde_json::from_slice(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), to_any(e)))
        })?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        if !self.save_snapshot(&stored).await? {
            return Err(StorageIOError::write_snapshot(
                Some(meta.signature()),
                to_any(std::io::Error::other("a newer snapshot is already installed")),
            )
            .into());
        }
        let mut state = self.state.write().await;
        let version = metadata.version;
        *state = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            metadata,
        };
        self.changes.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        match self.snapshots.get(SNAPSHOT_KEY).map_err(|e| read_err(to_any(e)))? {
            None => Ok(None),
            Some(bytes) => {
                let stored: StoredSnapshot =
                    serde_json::from_slice(&bytes).map_err(|e| read_err(to_any(e)))?;
                Ok(Some(Snapshot {
                    meta: stored.meta,
                    snapshot: Box::new(Cursor::new(stored.data)),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(index: u64, id: &str) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 0), index)),
                last_membership: StoredMembership::default(),
                snapshot_id: id.into(),
            },
            data: serde_json::to_vec(&MetadataState::default()).unwrap(),
        }
    }

    /// Review finding: openraft builds snapshots in a task of its own, so a build that read the
    /// state before an install could save after it and replace the newer installed snapshot;
    /// a restart could then not re-apply the log the install had purged.
    #[test]
    fn an_older_snapshot_is_not_saved_over_a_newer_one() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let sm = StateMachineStore::new(open_db(dir.path()).unwrap()).unwrap();
            assert!(sm.save_snapshot(&stored(200, "installed")).await.unwrap());
            assert!(!sm.save_snapshot(&stored(1, "stale build")).await.unwrap());
            let bytes = sm.snapshots.get(SNAPSHOT_KEY).unwrap().unwrap();
            let current: StoredSnapshot = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(current.meta.snapshot_id, "installed");
            assert!(sm.save_snapshot(&stored(300, "newer")).await.unwrap());
        });
    }
}
