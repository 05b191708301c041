//! The group consumer and group admin against in-process fakes of the controller, the broker
//! and the group coordinators (see `fake/mod.rs`; the test decides what each member is
//! assigned): joining with a client-generated member id, consuming from committed offsets,
//! revocation (and its commit failing), fencing, lost sessions, coordinator moves and leaving,
//! without starting Tideline processes.

mod fake;

use std::collections::BTreeMap;
use std::time::Duration;

use fake::{Call, Fake, Tp, cluster_with_topic, produce_one_per_batch, serve_coordinator};
use tideline_client::{
    Admin, AutoOffsetReset, ClientConfig, Cluster, ConsumerConfig, ErrorCode, GroupConsumer,
    GroupConsumerConfig, RebalanceEvent,
};
use tideline_common::status;
use tokio::time::Instant;

const GROUP: &str = "billing";

fn tp(partition: i32) -> Tp {
    ("orders".to_string(), partition)
}

/// A cluster with topic `orders` of `partitions` partitions and coordinators `ids`, the first
/// owning the offsets shard.
async fn group_cluster(partitions: i32, ids: &[&str]) -> (Fake, Cluster) {
    let (fake, cluster) = cluster_with_topic(partitions).await;
    for id in ids {
        serve_coordinator(&fake, id).await;
    }
    fake.state().shard_owner = ids[0].to_string();
    (fake, cluster)
}

fn config() -> GroupConsumerConfig {
    GroupConsumerConfig {
        consumer: ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            fetch_max_wait: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(20),
            ..ConsumerConfig::default()
        },
        ..GroupConsumerConfig::new(GROUP)
    }
}

/// A consumer subscribed to `orders` whose rebalance events go to the fake's call log, in
/// order with what the coordinators were asked.
fn member(fake: &Fake, cluster: &Cluster, config: GroupConsumerConfig) -> GroupConsumer {
    let mut consumer = GroupConsumer::new(cluster, config).unwrap();
    let log = fake.clone();
    consumer
        .set_rebalance_listener(move |e: RebalanceEvent| log.state().calls.push(Call::Event(e)));
    consumer.subscribe(["orders"]).unwrap();
    consumer
}

/// Polls until the member joined, then has the coordinators assign it these partitions of
/// `orders` (from its next heartbeat on); returns its member id.
async fn join(fake: &Fake, consumer: &mut GroupConsumer, partitions: &[i32]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        if let Some(id) = consumer.member_id() {
            break id;
        }
        assert!(Instant::now() < deadline, "timed out waiting for the join");
        consumer.poll(Duration::from_millis(20)).await.unwrap();
    };
    let assigned = partitions.iter().map(|p| tp(*p)).collect();
    fake.state().assignments.insert(id.clone(), assigned);
    id
}

/// The joins (heartbeats at epoch 0) the coordinators were sent, answered or not: member id
/// and refusal.
fn joins(fake: &Fake) -> Vec<(String, Option<ErrorCode>)> {
    let calls = fake.state().calls.clone();
    calls
        .into_iter()
        .filter_map(|c| match c {
            Call::Heartbeat { member_id, member_epoch: 0, refused, .. } => {
                Some((member_id, refused))
            }
            _ => None,
        })
        .collect()
}

fn events(fake: &Fake) -> Vec<RebalanceEvent> {
    let calls = fake.state().calls.clone();
    calls
        .into_iter()
        .filter_map(|c| match c {
            Call::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Polls until `done` holds, failing after 5 s; returns the records' partitions and offsets.
async fn poll_until(
    consumer: &mut GroupConsumer,
    what: &str,
    mut done: impl FnMut(&[(i32, i64)]) -> bool,
) -> Vec<(i32, i64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut read = Vec::new();
    while !done(&read) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; read {read:?}");
        let records = consumer.poll(Duration::from_millis(50)).await.unwrap();
        read.extend(records.iter().map(|r| (r.partition, r.offset)));
    }
    read
}

fn of_partition(read: &[(i32, i64)], partition: i32) -> Vec<i64> {
    read.iter().filter(|r| r.0 == partition).map(|r| r.1).collect()
}

/// A member joins with its subscription (epoch 0, and the member id it generated, which the
/// coordinator keeps), gets its assignment, and reads each partition from the group's
/// committed offset (`auto_offset_reset` where there is none); `commit` stores its positions.
/// Heartbeats go on while nobody polls.
#[tokio::test]
async fn a_member_joins_and_consumes_from_the_committed_offsets() {
    let (fake, cluster) = group_cluster(2, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 5).await;
    produce_one_per_batch(&cluster, 1, 5).await;
    let admin = Admin::new(&cluster);
    admin.commit_offsets_admin(GROUP, &BTreeMap::from([(tp(0), 3)])).await.unwrap();

    let mut consumer = member(&fake, &cluster, config());
    assert_eq!(consumer.member_id(), None, "not a member before its join");
    let id = join(&fake, &mut consumer, &[0, 1]).await;
    let read = poll_until(&mut consumer, "7 records", |r| r.len() >= 7).await;
    assert_eq!(of_partition(&read, 0), [3, 4], "from the committed offset");
    assert_eq!(of_partition(&read, 1), [0, 1, 2, 3, 4], "from the earliest offset");
    assert_eq!(events(&fake), [RebalanceEvent::Assigned(vec![tp(0), tp(1)])]);
    assert_eq!(consumer.assignment(), [tp(0), tp(1)]);
    assert_eq!(id.len(), 22, "16 random bytes in base64: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
    let members: Vec<String> = fake.state().groups[GROUP].members.keys().cloned().collect();
    assert_eq!(members, [id.as_str()], "the coordinator took the member's id");
    let join = fake.state().calls.iter().find(|c| matches!(c, Call::Heartbeat { .. })).cloned();
    match join {
        Some(Call::Heartbeat { member_id, member_epoch: 0, subscribed_topics, .. }) => {
            assert_eq!(member_id, id, "the join carries the generated id");
            assert_eq!(subscribed_topics, Some(vec!["orders".to_string()]));
        }
        other => panic!("expected a join first, got {other:?}"),
    }

    consumer.commit().await.unwrap();
    let committed: Vec<(String, i32, i64)> = admin
        .fetch_offsets(GROUP)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect();
    assert_eq!(committed, [("orders".into(), 0, 5), ("orders".into(), 1, 5)]);

    let heartbeats =
        || fake.state().calls.iter().filter(|c| matches!(c, Call::Heartbeat { .. })).count();
    let before = heartbeats();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(heartbeats() >= before + 3, "heartbeats run in the background between polls");
}

/// A partition taken away is committed first, then reported revoked, and only then released
/// to the coordinator; none of its records is returned after the revocation.
#[tokio::test]
async fn a_revoked_partition_is_committed_before_its_release_and_yields_no_more_records() {
    let (fake, cluster) = group_cluster(2, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 5).await;
    produce_one_per_batch(&cluster, 1, 5).await;
    let mut consumer = member(&fake, &cluster, config());
    let id = join(&fake, &mut consumer, &[0, 1]).await;
    poll_until(&mut consumer, "10 records", |r| r.len() >= 10).await;

    fake.state().assignments.insert(id, vec![tp(0)]);
    let revoked = RebalanceEvent::Revoked(vec![tp(1)]);
    poll_until(&mut consumer, "the revocation", |_| events(&fake).contains(&revoked)).await;
    assert_eq!(consumer.assignment(), [tp(0)]);

    let calls = fake.state().calls.clone();
    let commit = calls
        .iter()
        .position(|c| matches!(c, Call::Commit { offsets, .. } if offsets.contains(&(tp(1), 5))))
        .expect("the revoked partition's position was committed");
    let event = calls.iter().position(|c| *c == Call::Event(revoked.clone())).unwrap();
    let release = calls
        .iter()
        .position(|c| {
            matches!(c, Call::Heartbeat { owned: Some(owned), refused: None, .. }
                if owned.as_slice() == [tp(0)])
        })
        .expect("a heartbeat reported the release");
    assert!(commit < event && event < release, "commit, then revoke, then release: {calls:#?}");

    produce_one_per_batch(&cluster, 0, 3).await;
    produce_one_per_batch(&cluster, 1, 3).await;
    let read = poll_until(&mut consumer, "3 new records", |r| r.len() >= 3).await;
    let more = poll_until(&mut consumer, "a quiet 300 ms", {
        let started = Instant::now();
        move |_| started.elapsed() >= Duration::from_millis(300)
    })
    .await;
    assert_eq!(of_partition(&read, 0), [5, 6, 7]);
    assert!(
        read.iter().chain(&more).all(|r| r.0 == 0),
        "nothing of the revoked partition: {read:?} {more:?}"
    );
}

/// A member the coordinator no longer knows (session expired) fails its commit with
/// UNKNOWN_MEMBER_ID, loses its partitions without committing, and joins again with epoch 0,
/// its same member id and nothing owned.
#[tokio::test]
async fn a_fenced_member_loses_its_partitions_and_joins_again() {
    let (fake, cluster) = group_cluster(2, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 5).await;
    let mut consumer = member(&fake, &cluster, config());
    let id = join(&fake, &mut consumer, &[0]).await;
    poll_until(&mut consumer, "5 records", |r| r.len() >= 5).await;

    let removed_at = {
        let mut state = fake.state();
        state.groups.get_mut(GROUP).unwrap().members.remove(&id);
        state.assignments.insert(id.clone(), vec![tp(0), tp(1)]);
        state.calls.len()
    };
    let error = consumer.commit().await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownMemberId), "{error}");

    let rejoined = RebalanceEvent::Assigned(vec![tp(0), tp(1)]);
    let read = poll_until(&mut consumer, "the new assignment and its records", |r| {
        events(&fake).contains(&rejoined) && r.len() >= 5
    })
    .await;
    // Nothing was committed: the partition starts over from the earliest offset.
    assert_eq!(of_partition(&read, 0), [0, 1, 2, 3, 4]);
    assert_eq!(
        events(&fake),
        [RebalanceEvent::Assigned(vec![tp(0)]), RebalanceEvent::Lost(vec![tp(0)]), rejoined]
    );
    assert_eq!(consumer.member_id(), Some(id.clone()), "the same member id");
    assert_eq!(joins(&fake), [(id.clone(), None), (id.clone(), None)], "joined, then again");
    let calls = fake.state().calls.clone();
    let rejoin = calls
        .iter()
        .rposition(|c| matches!(c, Call::Heartbeat { member_epoch: 0, refused: None, .. }))
        .unwrap();
    match &calls[rejoin] {
        Call::Heartbeat { owned, subscribed_topics, .. } => {
            assert_eq!(owned.as_deref(), Some(&[][..]), "nothing owned when joining again");
            assert_eq!(subscribed_topics.as_deref(), Some(&["orders".to_string()][..]));
        }
        other => panic!("not a join: {other:?}"),
    }
    assert!(
        !calls[removed_at..rejoin].iter().any(|c| matches!(c, Call::Commit { .. })),
        "the fenced member committed nothing: {calls:#?}"
    );
}

/// Regression: a join whose answer was lost (NOT_COORDINATOR after the coordinator had
/// written it) is retried with the same member id, which the coordinator takes as the same
/// member starting over: the group has one member, not a second one holding partitions idle
/// until its session times out.
#[tokio::test]
async fn a_join_retried_after_its_answer_was_lost_does_not_create_a_second_member() {
    let (fake, cluster) = group_cluster(1, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 3).await;
    let lost = status(ErrorCode::NotCoordinator, "shard 0 moved after the join was written");
    fake.state().heartbeat_answers_lost.push_back(lost);
    let mut consumer = member(&fake, &cluster, config());
    let id = join(&fake, &mut consumer, &[0]).await;
    let read = poll_until(&mut consumer, "3 records", |r| r.len() >= 3).await;

    assert_eq!(of_partition(&read, 0), [0, 1, 2]);
    assert_eq!(
        joins(&fake),
        [(id.clone(), Some(ErrorCode::NotCoordinator)), (id.clone(), None)],
        "the join was applied, its answer lost, and the retry carried the same id"
    );
    let members: Vec<String> = fake.state().groups[GROUP].members.keys().cloned().collect();
    assert_eq!(members, [id], "one member");
    assert_eq!(events(&fake), [RebalanceEvent::Assigned(vec![tp(0)])]);
}

/// Regression: when the commit before a revocation fails (the coordinator loading its shard
/// for longer than a request), the partition is not revoked uncommitted, which would have its
/// next owner read again from an older commit (or skip records with `latest`): the member
/// keeps it, still reads it, and tries the commit again at later polls, without poll errors.
/// The revocation and the release come only after the commit succeeded, and no record of the
/// partition is returned after the revocation.
#[tokio::test]
async fn a_partition_is_not_revoked_before_the_commit_of_its_position_succeeds() {
    let (fake, _) = group_cluster(2, &["a"]).await;
    // A request timeout no longer than the retry backoff: each refusal fails a whole commit,
    // rather than being retried within it.
    let address = format!("127.0.0.1:{}", fake.state().port);
    let mut client_config = ClientConfig::new([address]);
    client_config.request_timeout = Duration::from_millis(500);
    let cluster = Cluster::new(client_config).unwrap();
    produce_one_per_batch(&cluster, 0, 5).await;
    produce_one_per_batch(&cluster, 1, 5).await;
    let config = GroupConsumerConfig {
        // No auto-commit but the ones before revoking.
        auto_commit_interval: Duration::from_secs(60),
        consumer: ConsumerConfig { retry_backoff: Duration::from_millis(500), ..config().consumer },
        ..config()
    };
    let mut consumer = member(&fake, &cluster, config);
    let id = join(&fake, &mut consumer, &[0, 1]).await;
    poll_until(&mut consumer, "10 records", |r| r.len() >= 10).await;

    {
        let mut state = fake.state();
        let loading = || status(ErrorCode::CoordinatorLoadInProgress, "shard 0 is loading");
        state.commit_failures.extend([loading(), loading()]);
        state.assignments.insert(id.clone(), vec![tp(0)]);
    }
    produce_one_per_batch(&cluster, 1, 2).await;
    let revoked = RebalanceEvent::Revoked(vec![tp(1)]);
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(&fake).contains(&revoked) {
        assert!(Instant::now() < deadline, "timed out waiting for the revocation");
        let records = consumer.poll(Duration::from_millis(50)).await.unwrap();
        // The revocation comes before the records of the poll that makes it.
        let read = if events(&fake).contains(&revoked) { &mut after } else { &mut before };
        read.extend(records.iter().map(|r| (r.partition, r.offset)));
    }
    assert_eq!(of_partition(&before, 1), [5, 6], "still read while the commit failed");
    assert_eq!(consumer.assignment(), [tp(0)]);

    let calls = fake.state().calls.clone();
    let refused: Vec<usize> = (0..calls.len())
        .filter(|&i| {
            matches!(&calls[i], Call::CommitRefused { offsets, code, .. }
                if *code == ErrorCode::CoordinatorLoadInProgress && offsets[0].0 == tp(1))
        })
        .collect();
    assert_eq!(refused.len(), 2, "two commits failed: {calls:#?}");
    let commit = calls
        .iter()
        .position(|c| matches!(c, Call::Commit { offsets, .. } if offsets.contains(&(tp(1), 7))))
        .expect("the revoked partition's position was committed");
    let event = calls.iter().position(|c| *c == Call::Event(revoked.clone())).unwrap();
    let release = calls
        .iter()
        .position(|c| {
            matches!(c, Call::Heartbeat { owned: Some(owned), refused: None, .. }
                if owned.as_slice() == [tp(0)])
        })
        .expect("a heartbeat reported the release");
    assert!(
        refused[1] < commit && commit < event && event < release,
        "failed commits, then the commit, the revocation and the release: {calls:#?}"
    );

    produce_one_per_batch(&cluster, 0, 3).await;
    produce_one_per_batch(&cluster, 1, 3).await;
    let read = poll_until(&mut consumer, "3 new records", |r| r.len() >= 3).await;
    let more = poll_until(&mut consumer, "a quiet 300 ms", {
        let started = Instant::now();
        move |_| started.elapsed() >= Duration::from_millis(300)
    })
    .await;
    assert_eq!(of_partition(&read, 0), [5, 6, 7]);
    let all: Vec<_> = after.iter().chain(&read).chain(&more).collect();
    assert!(all.iter().all(|r| r.0 == 0), "nothing of the revoked partition: {all:?}");
}

/// A commit before a revocation that retrying does not fix (INVALID_REQUEST) fails one poll,
/// and the partition is revoked and released all the same, so that the group does not wait
/// for it forever.
#[tokio::test]
async fn a_refused_commit_before_a_revocation_fails_one_poll_and_the_partition_is_released() {
    let (fake, cluster) = group_cluster(2, &["a"]).await;
    produce_one_per_batch(&cluster, 1, 2).await;
    let mut consumer = member(&fake, &cluster, config());
    let id = join(&fake, &mut consumer, &[0, 1]).await;
    poll_until(&mut consumer, "2 records", |r| r.len() >= 2).await;

    {
        let mut state = fake.state();
        state.commit_failures.push_back(status(ErrorCode::InvalidRequest, "bad commit"));
        state.assignments.insert(id, vec![tp(0)]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let error = loop {
        assert!(Instant::now() < deadline, "timed out waiting for the commit error");
        match consumer.poll(Duration::from_millis(50)).await {
            Ok(records) => assert!(records.iter().all(|r| r.partition == 0 || r.offset < 2)),
            Err(error) => break error,
        }
    };
    assert_eq!(error.code(), Some(ErrorCode::InvalidRequest), "{error}");
    assert_eq!(events(&fake).last(), Some(&RebalanceEvent::Revoked(vec![tp(1)])));
    assert_eq!(consumer.assignment(), [tp(0)]);
    poll_until(&mut consumer, "the release", |_| {
        fake.state().calls.iter().any(|c| {
            matches!(c, Call::Heartbeat { owned: Some(owned), refused: None, .. }
                if owned.as_slice() == [tp(0)])
        })
    })
    .await;
}

/// A member that cannot reach its coordinator stops consuming once no heartbeat succeeded for
/// its session timeout (when the coordinator has removed it and given its partitions to
/// others), instead of reading them on next to their new owner: they are lost, nothing is
/// committed, and none of their records is returned after. It joins again, with the same
/// member id, once the coordinator answers.
#[tokio::test]
async fn a_member_cut_off_from_its_coordinator_for_its_session_timeout_loses_its_partitions() {
    let (fake, cluster) = group_cluster(1, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 3).await;
    let session_timeout = Duration::from_millis(600);
    let config = GroupConsumerConfig {
        session_timeout,
        auto_commit_interval: Duration::from_secs(60),
        ..config()
    };
    let mut consumer = member(&fake, &cluster, config);
    let id = join(&fake, &mut consumer, &[0]).await;
    poll_until(&mut consumer, "3 records", |r| r.len() >= 3).await;

    let down = Instant::now();
    let down_at = {
        let mut state = fake.state();
        state.coordinator_down = Some(ErrorCode::CoordinatorNotAvailable);
        state.calls.len()
    };
    produce_one_per_batch(&cluster, 0, 2).await;
    let lost = RebalanceEvent::Lost(vec![tp(0)]);
    poll_until(&mut consumer, "the partition lost", |_| events(&fake).contains(&lost)).await;
    let lost_after = down.elapsed();
    // The last heartbeat that succeeded went out at most an interval (50 ms) before, unless
    // the machine is slow: a loose lower bound, but well past the first failed heartbeat.
    assert!(
        lost_after >= session_timeout / 2,
        "kept while the session may last: lost after {lost_after:?}"
    );
    assert!(
        lost_after < Duration::from_secs(3),
        "at the session's end, not at the heartbeat's own timeout (5 s): {lost_after:?}"
    );
    assert_eq!(consumer.assignment(), []);
    assert_eq!(consumer.member_id(), None, "not a member now");

    produce_one_per_batch(&cluster, 0, 2).await;
    let more = poll_until(&mut consumer, "a quiet 300 ms", {
        let started = Instant::now();
        move |_| started.elapsed() >= Duration::from_millis(300)
    })
    .await;
    assert_eq!(more, [], "nothing of the lost partition");

    fake.state().coordinator_down = None;
    let assigned = RebalanceEvent::Assigned(vec![tp(0)]);
    poll_until(&mut consumer, "the rejoin", |_| {
        events(&fake).iter().filter(|e| **e == assigned).count() == 2
    })
    .await;
    assert_eq!(events(&fake), [assigned.clone(), lost, assigned]);
    assert_eq!(consumer.member_id(), Some(id.clone()), "the same member id");
    assert_eq!(joins(&fake).last(), Some(&(id.clone(), None)), "joined again");
    let members: Vec<String> = fake.state().groups[GROUP].members.keys().cloned().collect();
    assert_eq!(members, [id]);
    let calls = fake.state().calls.clone();
    assert!(
        !calls[down_at..]
            .iter()
            .any(|c| matches!(c, Call::Commit { .. } | Call::CommitRefused { .. })),
        "lost, not revoked: no commit tried {calls:#?}"
    );
}

/// When the group's shard moves, the old coordinator answers NOT_COORDINATOR and the member
/// finds the new one through the metadata, keeping its membership and partitions; commits and
/// admin requests follow too, and COORDINATOR_LOAD_IN_PROGRESS and COORDINATOR_NOT_AVAILABLE
/// are retried.
#[tokio::test]
async fn a_coordinator_move_is_followed_through_the_metadata() {
    let (fake, cluster) = group_cluster(1, &["a", "b"]).await;
    produce_one_per_batch(&cluster, 0, 3).await;
    let mut consumer = member(&fake, &cluster, config());
    let id = join(&fake, &mut consumer, &[0]).await;
    poll_until(&mut consumer, "3 records", |r| r.len() >= 3).await;

    fake.state().shard_owner = "b".into();
    let at_b = |fake: &Fake| {
        fake.state().calls.iter().any(|c| {
            matches!(c, Call::Heartbeat { coordinator, refused: None, .. } if coordinator == "b")
        })
    };
    poll_until(&mut consumer, "a heartbeat at b", |_| at_b(&fake)).await;
    let refused = fake.state().calls.iter().any(|c| {
        matches!(c, Call::Heartbeat { coordinator, refused: Some(ErrorCode::NotCoordinator), .. }
            if coordinator == "a")
    });
    assert!(refused, "a refused with NOT_COORDINATOR first");
    assert_eq!(consumer.member_id(), Some(id), "still the same member");
    assert_eq!(events(&fake), [RebalanceEvent::Assigned(vec![tp(0)])], "nothing lost");

    // A shard still loading, or briefly without a coordinator, is waited out.
    fake.state().coordinator_failures.extend([
        status(ErrorCode::CoordinatorLoadInProgress, "shard 0 is loading"),
        status(ErrorCode::CoordinatorNotAvailable, "shard 0 has no coordinator"),
    ]);
    consumer.commit().await.unwrap();
    let committed_at_b = fake.state().calls.iter().any(|c| {
        matches!(c, Call::Commit { coordinator, offsets, .. }
            if coordinator == "b" && offsets.as_slice() == [(tp(0), 3)])
    });
    assert!(committed_at_b);
    let described = Admin::new(&cluster).describe_group(GROUP).await.unwrap();
    assert_eq!(described.members.len(), 1);
}

/// `close` commits the positions, reports the partitions revoked, and leaves with epoch -1;
/// a static member leaves with -2.
#[tokio::test]
async fn close_commits_then_leaves() {
    let (fake, cluster) = group_cluster(1, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 4).await;
    let mut consumer = member(&fake, &cluster, config());
    join(&fake, &mut consumer, &[0]).await;
    poll_until(&mut consumer, "4 records", |r| r.len() >= 4).await;
    consumer.close().await.unwrap();

    let calls = fake.state().calls.clone();
    let tail: Vec<_> = calls.iter().rev().take(3).rev().cloned().collect();
    assert!(
        matches!(&tail[0], Call::Commit { offsets, .. } if offsets.as_slice() == [(tp(0), 4)]),
        "{tail:#?}"
    );
    assert_eq!(tail[1], Call::Event(RebalanceEvent::Revoked(vec![tp(0)])));
    assert!(matches!(&tail[2], Call::Heartbeat { member_epoch: -1, .. }), "{tail:#?}");
    assert!(fake.state().groups[GROUP].members.is_empty(), "the member left");

    let config = GroupConsumerConfig { instance_id: Some("i-1".into()), ..config() };
    let mut consumer = member(&fake, &cluster, config);
    let id = join(&fake, &mut consumer, &[0]).await;
    let assigned = RebalanceEvent::Assigned(vec![tp(0)]);
    let read = poll_until(&mut consumer, "the assignment", |_| {
        events(&fake).iter().filter(|e| **e == assigned).count() == 2
    })
    .await;
    assert!(read.iter().all(|r| r.1 >= 4), "resumed from the commit: {read:?}");
    consumer.close().await.unwrap();
    let last = fake.state().calls.last().cloned();
    assert!(
        matches!(&last, Some(Call::Heartbeat { member_epoch: -2, member_id, .. }) if *member_id == id),
        "{last:?}"
    );
}

/// Group admin: groups are listed from every coordinator, described and deleted through the
/// owner of their shard; an admin commit and a delete are refused with NON_EMPTY_GROUP while
/// the group has members.
#[tokio::test]
async fn group_admin_lists_describes_resets_and_deletes() {
    let (fake, cluster) = group_cluster(2, &["a", "b"]).await;
    produce_one_per_batch(&cluster, 1, 2).await;
    let admin = Admin::new(&cluster);
    let mut consumer = member(&fake, &cluster, config());
    let id = join(&fake, &mut consumer, &[0, 1]).await;
    poll_until(&mut consumer, "2 records", |r| r.len() >= 2).await;
    consumer.commit().await.unwrap();

    let groups = admin.list_groups().await.unwrap();
    assert_eq!(groups.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(), [GROUP]);
    let described = admin.describe_group(GROUP).await.unwrap();
    assert_eq!(described.state, "Stable");
    assert_eq!(described.members[0].member_id, id);
    let p1 = described.partitions.iter().find(|p| p.partition == 1).unwrap();
    assert_eq!((p1.committed_offset, p1.end_offset, p1.lag), (Some(2), Some(2), Some(0)));

    let reset = BTreeMap::from([(tp(1), 0)]);
    let error = admin.commit_offsets_admin(GROUP, &reset).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NonEmptyGroup), "{error}");
    let error = admin.delete_group(GROUP).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NonEmptyGroup), "{error}");

    consumer.close().await.unwrap();
    admin.commit_offsets_admin(GROUP, &reset).await.unwrap();
    let offsets = admin.fetch_offsets(GROUP).await.unwrap();
    assert_eq!(offsets.iter().find(|o| o.partition == 1).map(|o| o.offset), Some(0));
    admin.delete_group(GROUP).await.unwrap();
    assert!(admin.list_groups().await.unwrap().is_empty());
    let error = admin.describe_group(GROUP).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::GroupIdNotFound), "{error}");
}
