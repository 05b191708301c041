//! The sled Raft store: openraft's storage conformance suite, restart durability, and the sled
//! partial-snapshot pitfall.

use std::io::Cursor;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};
use tideline_controller::metadata::{MetadataCommand, MetadataResponse};
use tideline_controller::store::{LogStore, StateMachineStore, open_db};
use tideline_controller::types::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(dir.path()).expect("open sled");
        Ok((dir, LogStore::new(db.clone()).expect("trees"), StateMachineStore::new(db)?))
    }
}

/// The sled log store and state machine pass every test of openraft's storage conformance
/// suite (log state, membership recovery, append, truncate, purge, vote, snapshots).
#[test]
fn sled_store_passes_openraft_conformance_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("conformance suite failed: {e}");
    }
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}

fn register(id: i32) -> MetadataCommand {
    MetadataCommand::RegisterBroker {
        broker_id: id,
        host: "127.0.0.1".into(),
        port: 9000,
        data_port: 0,
        rack: String::new(),
        incarnation_id: vec![1],
    }
}

/// What was flushed (vote, appended entries, a snapshot of applied metadata) is all there after
/// the database is closed and reopened, and the state machine restarts from the snapshot.
#[test]
fn restart_keeps_vote_log_and_snapshot() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let db = open_db(dir.path()).unwrap();
        let mut log = LogStore::new(db.clone()).unwrap();
        let mut sm = StateMachineStore::new(db.clone()).unwrap();
        log.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        let entries: Vec<Entry<TypeConfig>> = vec![
            Entry {
                log_id: log_id(3, 1),
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1u64].into_iter().collect()],
                    [(1u64, BasicNode::new("127.0.0.1:7000"))]
                        .into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )),
            },
            Entry { log_id: log_id(3, 2), payload: EntryPayload::Normal(register(1)) },
            Entry { log_id: log_id(3, 3), payload: EntryPayload::Normal(register(2)) },
        ];
        // Append and wait for the flush callback.
        log.blocking_append(entries.clone()).await.unwrap();
        let responses = sm.apply(entries).await.unwrap();
        assert!(matches!(responses[2], MetadataResponse::BrokerRegistered { broker_epoch: 2, .. }));
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(3, 3)));
        drop((log, sm, db));

        let db = open_db(dir.path()).unwrap();
        let mut log = LogStore::new(db.clone()).unwrap();
        let mut sm = StateMachineStore::new(db).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(3, 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(3, 3)));
        assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3);
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(3, 3)));
        assert_eq!(membership.log_id(), &Some(log_id(3, 1)));
        assert_eq!(sm.metadata().await.brokers.len(), 2);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.snapshot_id, snapshot.meta.snapshot_id);
        let _: Cursor<Vec<u8>> = *current.snapshot;
    });
}

/// Regression for sled issue #1527: an open killed while sled wrote `snap.<lsn>.generating`
/// left a partial file that made the next open fail; `open_db` removes it and every key
/// survives.
#[test]
fn a_partial_sled_snapshot_file_does_not_block_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path()).unwrap();
        db.insert(b"k", b"v").unwrap();
        db.flush().unwrap();
    }
    std::fs::write(dir.path().join("snap.7fffffffffffffff.generating"), b"cut off").unwrap();
    let db = open_db(dir.path()).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(!dir.path().join("snap.7fffffffffffffff.generating").exists());
}

/// After a snapshot is installed, the current snapshot is never older than it, even when a
/// build runs afterwards (the race itself, a build that read the state before the install, is
/// pinned by the unit test `store::tests::an_older_snapshot_is_not_saved_over_a_newer_one`).
#[test]
fn a_build_after_an_install_keeps_the_installed_state() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let db = open_db(dir.path()).unwrap();
        let mut sm = StateMachineStore::new(db).unwrap();
        let entries: Vec<Entry<TypeConfig>> =
            vec![Entry { log_id: log_id(1, 1), payload: EntryPayload::Normal(register(1)) }];
        sm.apply(entries).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        let mut newer = tideline_controller::metadata::MetadataState::default();
        newer.apply(&register(1));
        newer.apply(&register(2));
        let meta = openraft::SnapshotMeta {
            last_log_id: Some(log_id(2, 200)),
            last_membership: Default::default(),
            snapshot_id: "leader-200".into(),
        };
        let data = serde_json::to_vec(&newer).unwrap();
        sm.install_snapshot(&meta, Box::new(Cursor::new(data))).await.unwrap();
        builder.build_snapshot().await.unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(2, 200)));
        assert_eq!(sm.metadata().await, newer);
    });
}
