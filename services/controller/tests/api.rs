//! The ControllerService API over real gRPC on loopback (a one-controller quorum): topic admin
//! with precise error codes for bad input, placement, metadata watch, broker epochs, leases and
//! fencing, health.

mod common;

use common::wait_until;
use std::collections::BTreeMap;
use std::time::Duration;

use tideline_common::{ErrorCode, error_code_of};
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

async fn single_controller(
    lease_ms: u64,
) -> (tempfile::TempDir, ControllerNode, ControllerServiceClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut config = NodeConfig::new(1, dir.path(), BTreeMap::from([(1, addr.clone())]));
    config.broker_lease_ms = lease_ms;
    let node = ControllerNode::start(config, listener).await.unwrap();
    wait_until(Duration::from_secs(10), "the single controller to lead", || async {
        (node.raft.current_leader().await == Some(1)).then_some(())
    })
    .await;
    let client = ControllerServiceClient::connect(format!("http://{addr}")).await.unwrap();
    (dir, node, client)
}

fn code_of<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
) -> (tonic::Code, Option<ErrorCode>) {
    let status = result.expect_err("the request must fail");
    (status.code(), error_code_of(&status))
}

async fn register(client: &mut ControllerServiceClient<Channel>, id: i32, rack: &str) -> i64 {
    client
        .register_broker(pb::RegisterBrokerRequest {
            endpoint: Some(pb::BrokerEndpoint {
                broker_id: id,
                host: "127.0.0.1".into(),
                port: 9000 + id as u32,
                data_port: 0,
                rack: rack.into(),
            }),
            incarnation_id: vec![id as u8].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .broker_epoch
}

fn create(
    name: &str,
    partitions: i32,
    rf: i32,
    configs: &[(&str, &str)],
) -> pb::CreateTopicRequest {
    pb::CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: rf,
        configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Topic admin: each kind of bad input gets its documented error code and stores nothing;
/// good requests place replicas over live brokers with balanced leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_with_precise_errors() {
    let (_dir, node, mut c) = single_controller(6000).await;
    // No broker yet: nowhere to place replicas.
    assert_eq!(
        code_of(c.create_topic(create("early", 1, 1, &[])).await),
        (tonic::Code::InvalidArgument, Some(ErrorCode::InvalidReplicationFactor))
    );
    for id in 1..=3 {
        register(&mut c, id, "").await;
    }
    let topic = c.create_topic(create("orders", 6, 2, &[("retention.ms", "60000")])).await.unwrap();
    let topic = topic.into_inner().topic.unwrap();
    assert_eq!(topic.partitions.len(), 6);
    let mut leaders = BTreeMap::new();
    for p in &topic.partitions {
        assert_eq!(p.replicas.len(), 2);
        assert_eq!(p.leader, p.replicas[0]);
        *leaders.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "leaders balanced");

    let bad: Vec<(pb::CreateTopicRequest, tonic::Code, ErrorCode)> = vec![
        (create("orders", 1, 1, &[]), tonic::Code::AlreadyExists, ErrorCode::TopicAlreadyExists),
        (create("bad name", 1, 1, &[]), tonic::Code::InvalidArgument, ErrorCode::InvalidTopic),
        (create("..", 1, 1, &[]), tonic::Code::InvalidArgument, ErrorCode::InvalidTopic),
        (
            create(&"x".repeat(250), 1, 1, &[]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidTopic,
        ),
        (create("t", 0, 1, &[]), tonic::Code::InvalidArgument, ErrorCode::InvalidPartitions),
        (
            create("t", 1_000_000, 1, &[]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidPartitions,
        ),
        (create("t", 1, 0, &[]), tonic::Code::InvalidArgument, ErrorCode::InvalidReplicationFactor),
        (create("t", 1, 4, &[]), tonic::Code::InvalidArgument, ErrorCode::InvalidReplicationFactor),
        (
            create("t", 1, 1, &[("retention.ms", "-7")]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidConfig,
        ),
        (
            create("t", 1, 1, &[("segment.bytes", "1")]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidConfig,
        ),
        (
            create("t", 1, 1, &[("no.such", "1")]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidConfig,
        ),
        (
            create("t", 1, 1, &[("min.insync.replicas", "2")]),
            tonic::Code::InvalidArgument,
            ErrorCode::InvalidConfig,
        ),
    ];
    for (request, grpc, code) in bad {
        let name = request.name.clone();
        assert_eq!(code_of(c.create_topic(request).await), (grpc, Some(code)), "{name}");
    }
    let names = c.list_topics(pb::ListTopicsRequest {}).await.unwrap().into_inner().names;
    assert_eq!(names, vec!["orders"], "refused requests stored nothing");

    assert_eq!(
        code_of(c.describe_topic(pb::DescribeTopicRequest { name: "nope".into() }).await),
        (tonic::Code::NotFound, Some(ErrorCode::UnknownTopicOrPartition))
    );
    let grown = c
        .create_partitions(pb::CreatePartitionsRequest { name: "orders".into(), total: 9 })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(grown.partitions.len(), 9);
    assert_eq!(grown.partitions[..6], topic.partitions[..], "existing partitions unchanged");
    assert_eq!(
        code_of(
            c.create_partitions(pb::CreatePartitionsRequest { name: "orders".into(), total: 4 })
                .await
        ),
        (tonic::Code::InvalidArgument, Some(ErrorCode::InvalidPartitions))
    );
    let altered = c
        .alter_topic_config(pb::AlterTopicConfigRequest {
            name: "orders".into(),
            set: [("cleanup.policy".to_string(), "compact".to_string())].into(),
            remove: vec!["retention.ms".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(altered.configs.len(), 1);
    assert_eq!(altered.configs["cleanup.policy"], "compact");
    assert_eq!(
        code_of(
            c.alter_topic_config(pb::AlterTopicConfigRequest {
                name: "orders".into(),
                set: [("cleanup.policy".to_string(), "forever".to_string())].into(),
                remove: vec![],
            })
            .await
        ),
        (tonic::Code::InvalidArgument, Some(ErrorCode::InvalidConfig))
    );
    c.delete_topic(pb::DeleteTopicRequest { name: "orders".into() }).await.unwrap();
    assert_eq!(
        code_of(c.delete_topic(pb::DeleteTopicRequest { name: "orders".into() }).await),
        (tonic::Code::NotFound, Some(ErrorCode::UnknownTopicOrPartition))
    );
    node.shutdown().await;
}

/// WatchMetadata sends the full image first, then deltas carrying exactly what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_an_image_then_deltas() {
    let (_dir, node, mut c) = single_controller(6000).await;
    register(&mut c, 1, "").await;
    c.create_topic(create("a", 2, 1, &[])).await.unwrap();
    let mut stream =
        c.watch_metadata(pb::WatchMetadataRequest { from_version: 0 }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(pb::metadata_event::Event::Image(image)) = first.event else { panic!("{first:?}") };
    assert_eq!((image.brokers.len(), image.topics.len()), (1, 1));
    c.create_topic(create("b", 1, 1, &[])).await.unwrap();
    let next = stream.message().await.unwrap().unwrap();
    assert!(next.version > first.version);
    let Some(pb::metadata_event::Event::Delta(delta)) = next.event else { panic!("{next:?}") };
    assert_eq!(delta.topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["b"]);
    assert!(delta.brokers.is_empty());
    c.delete_topic(pb::DeleteTopicRequest { name: "a".into() }).await.unwrap();
    let next = stream.message().await.unwrap().unwrap();
    let Some(pb::metadata_event::Event::Delta(delta)) = next.event else { panic!("{next:?}") };
    assert_eq!(delta.deleted_topics, vec!["a"]);
    node.shutdown().await;
}

/// Brokers get a new epoch at each registration; heartbeats with a stale epoch are refused; a
/// broker that stops heartbeating is fenced once its lease lapses and its partitions report no
/// leader; registering again unfences it and gives leadership back with a new leader epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_fence_silent_brokers() {
    let (_dir, node, mut c) = single_controller(800).await;
    let e1 = register(&mut c, 1, "").await;
    let e2 = register(&mut c, 2, "").await;
    assert!(e2 > e1);
    c.create_topic(create("t", 2, 1, &[])).await.unwrap();
    let hb =
        |id: i32, epoch: i64| pb::BrokerHeartbeatRequest { broker_id: id, broker_epoch: epoch };
    assert_eq!(
        code_of(c.broker_heartbeat(hb(1, e1 + 100)).await),
        (tonic::Code::FailedPrecondition, Some(ErrorCode::StaleBrokerEpoch))
    );
    // Broker 1 keeps heartbeating, broker 2 goes silent.
    let leader_of = |m: &pb::GetMetadataResponse, broker: i32| {
        m.topics[0].partitions.iter().filter(|p| p.leader == broker).count()
    };
    let fenced = wait_until(Duration::from_secs(10), "broker 2 to be fenced", || {
        let mut c = c.clone();
        async move {
            c.broker_heartbeat(hb(1, e1)).await.unwrap();
            let m = c
                .get_metadata(pb::GetMetadataRequest { topics: vec![] })
                .await
                .unwrap()
                .into_inner();
            let fenced =
                m.brokers.iter().any(|b| b.endpoint.as_ref().unwrap().broker_id == 2 && b.fenced);
            fenced.then_some(m)
        }
    })
    .await;
    assert!(
        !fenced
            .brokers
            .iter()
            .find(|b| b.endpoint.as_ref().unwrap().broker_id == 1)
            .unwrap()
            .fenced
    );
    assert_eq!(leader_of(&fenced, 2), 0, "a fenced broker leads nothing");
    assert!(
        fenced.topics[0].partitions.iter().any(|p| p.leader == -1),
        "its partitions have no leader"
    );
    assert_eq!(
        code_of(c.broker_heartbeat(hb(2, e2)).await),
        (tonic::Code::FailedPrecondition, Some(ErrorCode::BrokerFenced))
    );
    let e2b = register(&mut c, 2, "").await;
    assert!(e2b > e2);
    let m = c
        .get_metadata(pb::GetMetadataRequest { topics: vec!["t".into()] })
        .await
        .unwrap()
        .into_inner();
    let back: Vec<_> = m.topics[0].partitions.iter().filter(|p| p.leader == 2).collect();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].leader_epoch, 2, "leader epoch bumped at fencing and at the return");
    assert_eq!(
        code_of(c.get_metadata(pb::GetMetadataRequest { topics: vec!["zz".into()] }).await),
        (tonic::Code::NotFound, Some(ErrorCode::UnknownTopicOrPartition))
    );
    node.shutdown().await;
}

/// A partition's ISR changes only by its current leader at the current leader and partition
/// epochs: a stale epoch (a deposed leader, or one that missed a change) gets
/// FENCED_LEADER_EPOCH. Controlled shutdown of the leader of an RF=2 partition whose ISR holds
/// both replicas moves the lead to the other with a bumped leader epoch and takes the stopping
/// broker out of the ISR; it then leads nothing, and the new leader, alone in sync, cannot hand
/// its partition over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_partition_fences_stale_epochs_and_controlled_shutdown_moves_leadership() {
    let (_dir, node, mut c) = single_controller(6000).await;
    let mut epochs = BTreeMap::new();
    for id in 1..=2 {
        epochs.insert(id, register(&mut c, id, "").await);
    }
    let topic = c.create_topic(create("r", 1, 2, &[])).await.unwrap().into_inner().topic.unwrap();
    let p = topic.partitions[0].clone();
    let (leader, follower) = (p.replicas[0], p.replicas[1]);
    assert_eq!((p.leader, p.isr.clone()), (leader, vec![leader]));
    let alter = |leader_epoch: i32, partition_epoch: i32| pb::AlterPartitionRequest {
        broker_id: leader,
        broker_epoch: epochs[&leader],
        topic: "r".into(),
        partition: 0,
        leader_epoch,
        partition_epoch,
        isr: vec![leader, follower],
    };
    let fenced = (tonic::Code::FailedPrecondition, Some(ErrorCode::FencedLeaderEpoch));
    assert_eq!(
        code_of(c.alter_partition(alter(p.leader_epoch + 1, p.partition_epoch)).await),
        fenced
    );
    let altered = c
        .alter_partition(alter(p.leader_epoch, p.partition_epoch))
        .await
        .unwrap()
        .into_inner()
        .partition
        .unwrap();
    assert_eq!(altered.isr, vec![leader, follower]);
    assert_eq!(altered.partition_epoch, p.partition_epoch + 1);
    assert_eq!(
        code_of(c.alter_partition(alter(p.leader_epoch, p.partition_epoch)).await),
        fenced,
        "the partition epoch the change was based on is stale once it applied"
    );
    assert_eq!(
        code_of(
            c.controlled_shutdown(pb::ControlledShutdownRequest {
                broker_id: leader,
                broker_epoch: epochs[&leader] + 100,
            })
            .await
        ),
        (tonic::Code::FailedPrecondition, Some(ErrorCode::StaleBrokerEpoch))
    );

    let shutdown =
        |id: i32| pb::ControlledShutdownRequest { broker_id: id, broker_epoch: epochs[&id] };
    let answer = c.controlled_shutdown(shutdown(leader)).await.unwrap().into_inner();
    assert!(answer.remaining.is_empty(), "{answer:?}");
    let now = c.describe_topic(pb::DescribeTopicRequest { name: "r".into() }).await.unwrap();
    let now = now.into_inner().topic.unwrap().partitions[0].clone();
    assert_eq!(now.leader, follower);
    assert_eq!(now.leader_epoch, altered.leader_epoch + 1);
    assert_eq!(now.isr, vec![follower]);
    let answer = c.controlled_shutdown(shutdown(follower)).await.unwrap().into_inner();
    assert_eq!(answer.remaining, vec![pb::TopicPartition { topic: "r".into(), partition: 0 }]);
    node.shutdown().await;
}

/// The standard gRPC health service reports the controller service as serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let (_dir, node, c) = single_controller(6000).await;
    drop(c);
    let addr = node_addr(&node);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tideline.v1.ControllerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    node.shutdown().await;
}

/// The address the node serves on (its only peer entry).
fn node_addr(node: &ControllerNode) -> String {
    node.raft.metrics().borrow().membership_config.nodes().next().unwrap().1.addr.clone()
}
