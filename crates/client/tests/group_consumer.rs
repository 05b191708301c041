//! The group consumer and group admin against in-process fakes of the controller, the broker
//! and the group coordinators (see `fake/mod.rs`; the test decides what each member is
//! assigned): joining, consuming from committed offsets, revocation, fencing, coordinator
//! moves and leaving, without starting Tideline processes.

mod fake;

use std::collections::BTreeMap;
use std::time::Duration;

use fake::{Call, Fake, Tp, cluster_with_topic, produce_one_per_batch, serve_coordinator};
use tideline_client::{
    Admin, AutoOffsetReset, Cluster, ConsumerConfig, ErrorCode, GroupConsumer, GroupConsumerConfig,
    RebalanceEvent,
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

/// A member joins with its subscription (epoch 0, no member id), gets its assignment, and
/// reads each partition from the group's committed offset (`auto_offset_reset` where there
/// is none); `commit` stores its positions. Heartbeats go on while nobody polls.
#[tokio::test]
async fn a_member_joins_and_consumes_from_the_committed_offsets() {
    let (fake, cluster) = group_cluster(2, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 5).await;
    produce_one_per_batch(&cluster, 1, 5).await;
    let admin = Admin::new(&cluster);
    admin.commit_offsets_admin(GROUP, &BTreeMap::from([(tp(0), 3)])).await.unwrap();
    fake.state().assignments.insert("member-1".into(), vec![tp(0), tp(1)]);

    let mut consumer = member(&fake, &cluster, config());
    let read = poll_until(&mut consumer, "7 records", |r| r.len() >= 7).await;
    assert_eq!(of_partition(&read, 0), [3, 4], "from the committed offset");
    assert_eq!(of_partition(&read, 1), [0, 1, 2, 3, 4], "from the earliest offset");
    assert_eq!(events(&fake), [RebalanceEvent::Assigned(vec![tp(0), tp(1)])]);
    assert_eq!(consumer.assignment(), [tp(0), tp(1)]);
    assert_eq!(consumer.member_id().as_deref(), Some("member-1"));
    let join = fake.state().calls.iter().find(|c| matches!(c, Call::Heartbeat { .. })).cloned();
    match join {
        Some(Call::Heartbeat { member_id, member_epoch: 0, subscribed_topics, .. }) => {
            assert_eq!(member_id, "");
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
    fake.state().assignments.insert("member-1".into(), vec![tp(0), tp(1)]);
    let mut consumer = member(&fake, &cluster, config());
    poll_until(&mut consumer, "10 records", |r| r.len() >= 10).await;

    fake.state().assignments.insert("member-1".into(), vec![tp(0)]);
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
/// UNKNOWN_MEMBER_ID, loses its partitions without committing, and joins again as a new
/// member with epoch 0 and nothing owned.
#[tokio::test]
async fn a_fenced_member_loses_its_partitions_and_joins_again() {
    let (fake, cluster) = group_cluster(2, &["a"]).await;
    produce_one_per_batch(&cluster, 0, 5).await;
    fake.state().assignments.insert("member-1".into(), vec![tp(0)]);
    let mut consumer = member(&fake, &cluster, config());
    poll_until(&mut consumer, "5 records", |r| r.len() >= 5).await;

    {
        let mut state = fake.state();
        state.groups.get_mut(GROUP).unwrap().members.remove("member-1");
        state.assignments.insert("member-2".into(), vec![tp(0), tp(1)]);
    }
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
    assert_eq!(consumer.member_id().as_deref(), Some("member-2"));
    let calls = fake.state().calls.clone();
    let rejoin = calls.iter().rev().find(|c| {
        matches!(c, Call::Heartbeat { member_epoch: 0, refused: None, member_id, .. }
            if member_id.is_empty())
    });
    match rejoin {
        Some(Call::Heartbeat { owned, subscribed_topics, .. }) => {
            assert_eq!(owned.as_deref(), Some(&[][..]), "nothing owned when joining again");
            assert_eq!(subscribed_topics.as_deref(), Some(&["orders".to_string()][..]));
        }
        _ => panic!("no second join: {calls:#?}"),
    }
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Commit { member_id, .. } if member_id == "member-1")),
        "the fenced member committed nothing"
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
    fake.state().assignments.insert("member-1".into(), vec![tp(0)]);
    let mut consumer = member(&fake, &cluster, config());
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
    assert_eq!(consumer.member_id().as_deref(), Some("member-1"), "still the same member");
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
    fake.state().assignments.insert("member-1".into(), vec![tp(0)]);
    let mut consumer = member(&fake, &cluster, config());
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

    fake.state().assignments.insert("member-2".into(), vec![tp(0)]);
    let config = GroupConsumerConfig { instance_id: Some("i-1".into()), ..config() };
    let mut consumer = member(&fake, &cluster, config);
    let read = poll_until(&mut consumer, "the assignment", |_| {
        events(&fake).contains(&RebalanceEvent::Assigned(vec![tp(0)]))
            && fake.state().groups[GROUP].members.contains_key("member-2")
    })
    .await;
    assert!(read.iter().all(|r| r.1 >= 4), "resumed from the commit: {read:?}");
    consumer.close().await.unwrap();
    let last = fake.state().calls.last().cloned();
    assert!(
        matches!(&last, Some(Call::Heartbeat { member_epoch: -2, member_id, .. }) if member_id == "member-2"),
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
    fake.state().assignments.insert("member-1".into(), vec![tp(0), tp(1)]);
    let admin = Admin::new(&cluster);
    let mut consumer = member(&fake, &cluster, config());
    poll_until(&mut consumer, "2 records", |r| r.len() >= 2).await;
    consumer.commit().await.unwrap();

    let groups = admin.list_groups().await.unwrap();
    assert_eq!(groups.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(), [GROUP]);
    let described = admin.describe_group(GROUP).await.unwrap();
    assert_eq!(described.state, "Stable");
    assert_eq!(described.members[0].member_id, "member-1");
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
