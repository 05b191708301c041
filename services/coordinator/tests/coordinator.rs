//! The group coordinator against a real cluster: an in-process controller and brokers, and
//! `tideline-coordinator` processes (killed with SIGKILL where a test says so). Requests are
//! raw gRPC, so each test sees exactly what any client in any language would.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, SESSION_MS, wait_until};
use tideline_common::{ErrorCode, OFFSETS_TOPIC, error_code_of};
use tideline_proto::v1 as pb;
use tideline_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::Channel;

type Client = CoordinatorServiceClient<Channel>;

/// One member's view: id, epoch and what it owns.
#[derive(Debug, Clone, Default)]
struct Member {
    id: String,
    epoch: i32,
    owned: BTreeSet<(String, i32)>,
}

fn list(owned: &BTreeSet<(String, i32)>) -> pb::PartitionList {
    pb::PartitionList {
        partitions: owned
            .iter()
            .map(|(t, p)| pb::TopicPartition { topic: t.clone(), partition: *p })
            .collect(),
    }
}

/// A heartbeat that joins (epoch 0, subscribing to `topics`) or reports what it owns, then
/// adopts the answer (a well-behaved member gives up at once what it no longer owns).
async fn beat(
    c: &mut Client,
    group: &str,
    m: &mut Member,
    topics: &[&str],
) -> Result<(), tonic::Status> {
    let joining = m.epoch == 0;
    let answer = c
        .consumer_group_heartbeat(pb::ConsumerGroupHeartbeatRequest {
            group_id: group.into(),
            member_id: m.id.clone(),
            member_epoch: m.epoch,
            subscribed_topics: joining
                .then(|| pb::TopicList { topics: topics.iter().map(|t| t.to_string()).collect() }),
            owned_partitions: Some(list(&m.owned)),
            ..Default::default()
        })
        .await?
        .into_inner();
    m.id = answer.member_id;
    m.epoch = answer.member_epoch;
    m.owned = answer
        .assignment
        .unwrap_or_default()
        .partitions
        .into_iter()
        .map(|tp| (tp.topic, tp.partition))
        .collect();
    Ok(())
}

fn code(r: Result<impl std::fmt::Debug, tonic::Status>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => error_code_of(&s).unwrap_or_else(|| panic!("no error code in {s:?}")),
    }
}

async fn commit(
    c: &mut Client,
    group: &str,
    m: &Member,
    offsets: &[(&str, i32, i64)],
) -> Result<(), tonic::Status> {
    c.commit_offsets(pb::CommitOffsetsRequest {
        group_id: group.into(),
        member_id: m.id.clone(),
        member_epoch: m.epoch,
        offsets: offsets
            .iter()
            .map(|(t, p, o)| pb::OffsetCommit {
                topic: t.to_string(),
                partition: *p,
                offset: *o,
                leader_epoch: -1,
                metadata: String::new(),
            })
            .collect(),
    })
    .await
    .map(|_| ())
}

async fn committed(c: &mut Client, group: &str) -> Vec<(String, i32, i64)> {
    let r = c
        .fetch_offsets(pb::FetchOffsetsRequest { group_id: group.into(), partitions: vec![] })
        .await
        .unwrap()
        .into_inner();
    r.offsets.into_iter().map(|o| (o.topic, o.partition, o.offset)).collect()
}

/// Heartbeats both members until each owns its share and nothing is being moved.
async fn settle(c: &mut Client, group: &str, members: &mut [&mut Member], partitions: usize) {
    for _ in 0..50 {
        for m in members.iter_mut() {
            beat(c, group, m, &[]).await.unwrap();
        }
        let total: usize = members.iter().map(|m| m.owned.len()).sum();
        let max = members.iter().map(|m| m.owned.len()).max().unwrap();
        let min = members.iter().map(|m| m.owned.len()).min().unwrap();
        if total == partitions && max - min <= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("group {group} did not settle: {members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_and_offsets_survive_a_coordinator_killed_with_sigkill() {
    let mut cluster = Cluster::start(3, 4).await;
    cluster.create_topic("orders", 6, 3).await;
    cluster.start_coordinator("c1");
    cluster.start_coordinator("c2");
    cluster.wait_shards_settled(2).await;

    // The controller created the internal topic: one partition per shard, replicated, compacted.
    let topic = cluster.offsets_topic().await;
    assert_eq!(topic.partitions.len(), 4);
    assert_eq!(topic.replication_factor, 3);
    assert_eq!(topic.configs.get("cleanup.policy").map(String::as_str), Some("compact"));

    let group = "billing";
    let (owner, mut c) = cluster.coordinator_of(group).await;
    let mut a = Member::default();
    beat(&mut c, group, &mut a, &["orders"]).await.unwrap();
    assert!(a.epoch > 0 && !a.id.is_empty());
    assert_eq!(a.owned.len(), 6, "a lone member owns every partition");
    let mut b = Member::default();
    beat(&mut c, group, &mut b, &["orders"]).await.unwrap();
    assert!(b.owned.is_empty(), "nothing moves before its owner released it: {b:?}");
    settle(&mut c, group, &mut [&mut a, &mut b], 6).await;
    assert!(a.owned.is_disjoint(&b.owned));

    // Commits are fenced by member epoch; an admin cannot set offsets of a live group.
    let (pa, pb_) = (a.owned.first().unwrap().1, b.owned.first().unwrap().1);
    commit(&mut c, group, &a, &[("orders", pa, 11)]).await.unwrap();
    commit(&mut c, group, &b, &[("orders", pb_, 22)]).await.unwrap();
    let stale = Member { epoch: a.epoch + 7, ..a.clone() };
    assert_eq!(
        code(commit(&mut c, group, &stale, &[("orders", pa, 99)]).await),
        ErrorCode::StaleMemberEpoch
    );
    let nobody = Member { id: "nobody".into(), epoch: 1, ..Member::default() };
    assert_eq!(
        code(commit(&mut c, group, &nobody, &[("orders", pa, 99)]).await),
        ErrorCode::UnknownMemberId
    );
    let admin = Member::default();
    assert_eq!(
        code(commit(&mut c, group, &admin, &[("orders", pa, 0)]).await),
        ErrorCode::NonEmptyGroup
    );
    let mut before = committed(&mut c, group).await;
    before.sort();
    assert_eq!(
        before,
        vec![
            ("orders".into(), pa.min(pb_), if pa < pb_ { 11 } else { 22 }),
            ("orders".into(), pa.max(pb_), if pa < pb_ { 22 } else { 11 })
        ]
    );

    // A second group reads the same topic independently.
    let (_, mut c2) = cluster.coordinator_of("audit").await;
    let mut x = Member::default();
    beat(&mut c2, "audit", &mut x, &["orders"]).await.unwrap();
    assert_eq!(x.owned.len(), 6);
    assert!(committed(&mut c2, "audit").await.is_empty());

    // The owner of the group's shard dies without a word.
    cluster.coordinators.get_mut(&owner).unwrap().kill9();
    let (new_owner, mut c) = cluster.coordinator_of(group).await;
    assert_ne!(new_owner, owner);
    let mut after = committed(&mut c, group).await;
    after.sort();
    assert_eq!(after, before, "committed offsets survive the failover");
    // Members carry on with their epochs: the membership was replayed, not lost.
    let (a_owned, b_owned) = (a.owned.clone(), b.owned.clone());
    beat(&mut c, group, &mut a, &[]).await.unwrap();
    beat(&mut c, group, &mut b, &[]).await.unwrap();
    assert_eq!((&a.owned, &b.owned), (&a_owned, &b_owned));
    commit(&mut c, group, &a, &[("orders", pa, 12)]).await.unwrap();

    // b goes silent: after its session times out, a gets everything.
    let deadline = std::time::Instant::now() + Duration::from_millis(SESSION_MS * 4);
    while a.owned.len() < 6 {
        assert!(std::time::Instant::now() < deadline, "b was never evicted: {a:?}");
        beat(&mut c, group, &mut a, &[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        code(commit(&mut c, group, &b, &[("orders", pb_, 23)]).await),
        ErrorCode::UnknownMemberId
    );

    // Describe shows the member, its partitions and the offsets; list shows the group.
    let d = c
        .describe_group(pb::DescribeGroupRequest { group_id: group.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].assignment.len(), 6);
    assert_eq!(d.assignor, "uniform");
    let row = d.partitions.iter().find(|p| p.partition == pa).unwrap();
    assert_eq!((row.committed_offset, row.end_offset), (Some(12), Some(0)));
    let groups = c.list_groups(pb::ListGroupsRequest {}).await.unwrap().into_inner().groups;
    assert!(groups.iter().any(|g| g.group_id == group), "{groups:?}");

    // Once a leaves, the group can be deleted with its offsets; a deleted group is gone.
    assert_eq!(
        code(c.delete_group(pb::DeleteGroupRequest { group_id: group.into() }).await),
        ErrorCode::NonEmptyGroup
    );
    a.epoch = -1;
    beat(&mut c, group, &mut a, &[]).await.unwrap();
    c.delete_group(pb::DeleteGroupRequest { group_id: group.into() }).await.unwrap();
    assert!(committed(&mut c, group).await.is_empty());
    assert_eq!(
        code(c.describe_group(pb::DescribeGroupRequest { group_id: group.into() }).await),
        ErrorCode::GroupIdNotFound
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_move_to_an_added_coordinator_and_away_from_one_that_stops() {
    let mut cluster = Cluster::start(1, 4).await;
    cluster.create_topic("t", 3, 1).await;
    cluster.start_coordinator("c1");
    cluster.wait_shards_settled(1).await;
    let groups = ["g0", "g1", "g2", "g3", "g4", "g5"];
    let mut members = Vec::new();
    for g in groups {
        let (_, mut c) = cluster.coordinator_of(g).await;
        let mut m = Member::default();
        beat(&mut c, g, &mut m, &["t"]).await.unwrap();
        commit(&mut c, g, &m, &[("t", 0, 5)]).await.unwrap();
        members.push(m);
    }
    // A second coordinator: half the shards move, once the first released them.
    cluster.start_coordinator("c2");
    cluster.wait_shards_settled(2).await;
    for (g, m) in groups.iter().zip(&mut members) {
        let (_, mut c) = cluster.coordinator_of(g).await;
        assert_eq!(committed(&mut c, g).await, vec![("t".into(), 0, 5)]);
        beat(&mut c, g, m, &[]).await.unwrap();
        assert_eq!(m.owned.len(), 3, "{g} keeps its member and assignment");
    }
    // The first stops cleanly: its shards move at once, well within a lease.
    let stopped = std::time::Instant::now();
    assert!(cluster.coordinators.get_mut("c1").unwrap().terminate());
    cluster.wait_shards_settled(1).await;
    assert!(stopped.elapsed() < Duration::from_millis(common::LEASE_MS), "{:?}", stopped.elapsed());
    for (g, m) in groups.iter().zip(&mut members) {
        let (owner, mut c) = cluster.coordinator_of(g).await;
        assert_eq!(owner, "c2");
        beat(&mut c, g, m, &[]).await.unwrap();
        assert_eq!(committed(&mut c, g).await, vec![("t".into(), 0, 5)]);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_precise_codes() {
    let mut cluster = Cluster::start(1, 2).await;
    cluster.create_topic("t", 2, 1).await;
    cluster.start_coordinator("c1");
    cluster.wait_shards_settled(1).await;
    let (_, mut c) = cluster.coordinator_of("g").await;
    let join = |group: &str, topics: &[&str], assignor: &str| pb::ConsumerGroupHeartbeatRequest {
        group_id: group.into(),
        member_epoch: 0,
        subscribed_topics: Some(pb::TopicList {
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }),
        server_assignor: assignor.into(),
        ..Default::default()
    };
    assert_eq!(
        code(c.consumer_group_heartbeat(join("", &["t"], "")).await),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        code(c.consumer_group_heartbeat(join("g", &["bad name"], "")).await),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        code(c.consumer_group_heartbeat(join("g", &["t"], "sticky")).await),
        ErrorCode::UnsupportedAssignor
    );
    let mut bad_regex = join("g", &[], "");
    bad_regex.subscribed_topics = None;
    bad_regex.subscribed_regex = Some("(".into());
    assert_eq!(code(c.consumer_group_heartbeat(bad_regex).await), ErrorCode::InvalidRequest);
    let mut unknown = join("g", &["t"], "");
    unknown.member_id = "g-77".into();
    unknown.member_epoch = 3;
    assert_eq!(code(c.consumer_group_heartbeat(unknown).await), ErrorCode::UnknownMemberId);
    let ranged = c.consumer_group_heartbeat(join("g", &["t"], "range")).await.unwrap().into_inner();
    let m = Member { id: ranged.member_id, epoch: ranged.member_epoch, owned: BTreeSet::new() };
    let unknown_partition = commit(&mut c, "g", &m, &[("t", 9, 1)]).await;
    assert_eq!(code(unknown_partition), ErrorCode::UnknownTopicOrPartition);
    assert_eq!(code(commit(&mut c, "g", &m, &[("t", 0, -5)]).await), ErrorCode::InvalidRequest);
    let unknown_topic = commit(&mut c, "g", &m, &[("nope", 0, 1)]).await;
    assert_eq!(code(unknown_topic), ErrorCode::UnknownTopicOrPartition);
    // A join retried with the member's own id (its answer was lost) is the same member.
    for _ in 0..2 {
        let mut again = join("g", &["t"], "");
        again.member_id = "client-chosen-id".into();
        let answer = c.consumer_group_heartbeat(again).await.unwrap().into_inner();
        assert_eq!(answer.member_id, "client-chosen-id");
    }
    let d = c.describe_group(pb::DescribeGroupRequest { group_id: "g".into() }).await.unwrap();
    assert_eq!(d.into_inner().members.len(), 2, "the range member and the client-chosen one");
    assert_eq!(
        code(c.delete_group(pb::DeleteGroupRequest { group_id: "never".into() }).await),
        ErrorCode::GroupIdNotFound
    );
    // The internal topic is the controller's: not created, deleted or grown by hand.
    let mut ctl = cluster.controller();
    let create = pb::CreateTopicRequest {
        name: OFFSETS_TOPIC.into(),
        partitions: 1,
        replication_factor: 1,
        configs: Default::default(),
    };
    assert_eq!(code(ctl.create_topic(create).await), ErrorCode::InvalidTopic);
    assert_eq!(
        code(ctl.delete_topic(pb::DeleteTopicRequest { name: OFFSETS_TOPIC.into() }).await),
        ErrorCode::InvalidTopic
    );
    let grow = pb::CreatePartitionsRequest { name: OFFSETS_TOPIC.into(), total: 8 };
    assert_eq!(code(ctl.create_partitions(grow).await), ErrorCode::InvalidTopic);
    // A coordinator that does not own a group's shard says so.
    cluster.start_coordinator("c2");
    cluster.wait_shards_settled(2).await;
    let m = cluster.metadata().await;
    let (owner, mut c1) = cluster.coordinator_of("g").await;
    let other = if owner == "c2" { "c1" } else { "c2" };
    let foreign = (0..100)
        .map(|i| format!("group-{i}"))
        .find(|g| m.shards[tideline_common::shard_for(g, 2) as usize].coordinator_id == other)
        .unwrap();
    assert_eq!(
        code(c1.consumer_group_heartbeat(join(&foreign, &["t"], "")).await),
        ErrorCode::NotCoordinator
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_members_rebalances_and_lag() {
    use tideline_client::{Producer, ProducerConfig, ProducerRecord};
    let mut cluster = Cluster::start(1, 1).await;
    cluster.create_topic("t", 2, 1).await;
    cluster.start_coordinator("c1");
    cluster.wait_shards_settled(1).await;
    let client = cluster.client();
    let producer = Producer::new(&client, ProducerConfig::default()).unwrap();
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("t").partition(0).value(format!("v{i}")))
            .await
            .unwrap();
    }
    producer.close().await;
    let (_, mut c) = cluster.coordinator_of("m").await;
    let (mut a, mut b) = (Member::default(), Member::default());
    beat(&mut c, "m", &mut a, &["t"]).await.unwrap();
    beat(&mut c, "m", &mut b, &["t"]).await.unwrap();
    settle(&mut c, "m", &mut [&mut a, &mut b], 2).await;
    let owner = if a.owned.contains(&("t".to_string(), 0)) { &a } else { &b };
    commit(&mut c, "m", owner, &[("t", 0, 4)]).await.unwrap();
    let addr = cluster.coordinators["c1"].metrics_addr.clone();
    let text = wait_for_lag(&addr, 6.0).await;
    assert_eq!(
        tideline_common::testing::series(&text, r#"tideline_coordinator_group_members{group="m"}"#),
        Some(2.0),
        "{text}"
    );
    assert!(
        tideline_common::testing::series(
            &text,
            r#"tideline_coordinator_group_rebalances_total{group="m"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        tideline_common::testing::series(
            &text,
            r#"tideline_coordinator_group_rebalance_seconds_count{group="m"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        tideline_common::testing::series(&text, "tideline_coordinator_shards_owned"),
        Some(1.0),
        "{text}"
    );
    assert!(
        tideline_common::testing::series(&text, "tideline_coordinator_records_written_total")
            .unwrap_or(0.0)
            >= 3.0,
        "{text}"
    );
    assert!(
        tideline_common::testing::series(
            &text,
            r#"tideline_grpc_requests_total{service="tideline.v1.CoordinatorService",method="ConsumerGroupHeartbeat",code="OK"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "per-RPC counts: {text}"
    );
    // The member catches up: the lag drains to 0.
    commit(&mut c, "m", owner, &[("t", 0, 10)]).await.unwrap();
    wait_for_lag(&addr, 0.0).await;
    cluster.shutdown().await;
}

/// The metrics text of the coordinator at `addr` once it shows `lag` for group `m`, `t`-0.
async fn wait_for_lag(addr: &str, lag: f64) -> String {
    wait_until(Duration::from_secs(20), &format!("lag {lag} in the metrics"), || async move {
        let text = tideline_common::testing::scrape(addr).await;
        let seen = tideline_common::testing::series(
            &text,
            r#"tideline_coordinator_group_lag{group="m",topic="t",partition="0"}"#,
        );
        (seen == Some(lag)).then_some(text)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_offsets_topic_waits_for_enough_brokers() {
    let mut cluster = Cluster::start_with(1, |c| {
        c.offsets_topic_partitions = 2;
        c.offsets_topic_replication_factor = 2;
    })
    .await;
    cluster.start_coordinator("c1");
    // One live broker is not enough for two replicas: the coordinator keeps asking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = cluster.metadata().await;
    assert!(m.shards.is_empty() && m.coordinators.is_empty(), "{m:?}");
    assert!(cluster.coordinator_log("c1").contains("needs 2 live brokers"));
    cluster.start_broker(2).await;
    cluster.wait_shards_settled(1).await;
    assert_eq!(cluster.offsets_topic().await.replication_factor, 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_coordinator_loses_its_shards_and_comes_back_with_a_new_epoch() {
    let mut cluster = Cluster::start(1, 2).await;
    cluster.create_topic("t", 2, 1).await;
    cluster.start_coordinator("c1");
    cluster.wait_shards_settled(1).await;
    let (_, mut c) = cluster.coordinator_of("g").await;
    let mut a = Member::default();
    beat(&mut c, "g", &mut a, &["t"]).await.unwrap();
    commit(&mut c, "g", &a, &[("t", 0, 7)]).await.unwrap();
    let epoch_of = |m: &pb::GetMetadataResponse, id: &str| {
        m.coordinators
            .iter()
            .find(|c| c.endpoint.as_ref().is_some_and(|e| e.coordinator_id == id))
            .map(|c| c.coordinator_epoch)
    };
    let before = epoch_of(&cluster.metadata().await, "c1").unwrap();
    cluster.start_coordinator("c2");
    cluster.wait_shards_settled(2).await;
    // c1 stops for longer than its lease: it is removed and c2 gets every shard.
    cluster.coordinators["c1"].signal("STOP");
    wait_until(Duration::from_secs(20), "c2 owns every shard", || async {
        let m = cluster.metadata().await;
        (m.shards.iter().all(|s| s.coordinator_id == "c2") && epoch_of(&m, "c1").is_none())
            .then_some(())
    })
    .await;
    let (owner, mut c) = cluster.coordinator_of("g").await;
    assert_eq!(owner, "c2");
    assert_eq!(committed(&mut c, "g").await, vec![("t".into(), 0, 7)]);
    beat(&mut c, "g", &mut a, &[]).await.unwrap();
    // c1 resumes: refused as it stands, it registers again under a new epoch and takes its
    // share back only through the controller.
    cluster.coordinators["c1"].signal("CONT");
    wait_until(Duration::from_secs(20), "c1 registered again", || async {
        let m = cluster.metadata().await;
        epoch_of(&m, "c1").filter(|e| *e > before).map(|_| ())
    })
    .await;
    cluster.wait_shards_settled(2).await;
    let (_, mut c) = cluster.coordinator_of("g").await;
    assert_eq!(committed(&mut c, "g").await, vec![("t".into(), 0, 7)]);
    beat(&mut c, "g", &mut a, &[]).await.unwrap();
    commit(&mut c, "g", &a, &[("t", 0, 8)]).await.unwrap();
    assert_eq!(committed(&mut c, "g").await, vec![("t".into(), 0, 8)]);
    cluster.shutdown().await;
}
