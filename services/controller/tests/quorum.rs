//! The controller quorum over real gRPC on loopback: three nodes elect one leader, replicate
//! metadata commands to every state machine, answer reads on followers and redirect writes to
//! the leader, fail over when the leader stops without losing a committed command, and a
//! restarted node catches up from its persisted state.

mod common;

use common::wait_until;
use std::collections::BTreeMap;
use std::time::Duration;

use tideline_common::{ErrorCode, error_code_of, leader_hint_of};
use tideline_controller::metadata::{MetadataCommand, MetadataResponse};
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;

fn register(id: i32) -> MetadataCommand {
    MetadataCommand::RegisterBroker {
        broker_id: id,
        host: "127.0.0.1".into(),
        port: 9000 + id as u32,
        data_port: 0,
        rack: String::new(),
        incarnation_id: vec![id as u8],
    }
}

/// The leader all `nodes` agree on.
async fn agreed_leader(nodes: &BTreeMap<u64, ControllerNode>) -> u64 {
    wait_until(Duration::from_secs(20), "a leader all nodes agree on", || async {
        let mut leaders = Vec::new();
        for node in nodes.values() {
            leaders.push(node.raft.current_leader().await?);
        }
        let first = leaders[0];
        (leaders.iter().all(|&l| l == first) && nodes.contains_key(&first)).then_some(first)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controllers_replicate_fail_over_and_catch_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, listener.local_addr().unwrap().to_string());
        listeners.insert(id, listener);
    }
    let config = |id: u64| NodeConfig::new(id, dirs[id as usize - 1].path(), peers.clone());
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        nodes.insert(id, ControllerNode::start(config(id), listener).await.unwrap());
    }

    let leader = agreed_leader(&nodes).await;
    let written = nodes[&leader].raft.client_write(register(1)).await.unwrap();
    assert!(matches!(written.data, MetadataResponse::BrokerRegistered { broker_epoch: 1, .. }));
    let create = MetadataCommand::CreateTopic {
        name: "orders".into(),
        topic_id: [1; 16],
        replication_factor: 1,
        configs: BTreeMap::new(),
        assignments: vec![vec![1], vec![1]],
    };
    let written = nodes[&leader].raft.client_write(create).await.unwrap();
    assert!(matches!(written.data, MetadataResponse::Applied { .. }), "{:?}", written.data);
    for (id, node) in &nodes {
        wait_until(Duration::from_secs(10), "replication to every node", || async {
            let m = node.state.metadata().await;
            (m.brokers.len() == 1 && m.topics.contains_key("orders")).then_some(())
        })
        .await;
        assert_eq!(node.state.metadata().await.topics["orders"].partitions.len(), 2, "node {id}");
    }

    // A follower answers reads itself and redirects writes to the leader.
    let follower = *nodes.keys().find(|id| **id != leader).unwrap();
    let mut client =
        ControllerServiceClient::connect(format!("http://{}", peers[&follower])).await.unwrap();
    let names = client.list_topics(pb::ListTopicsRequest {}).await.unwrap().into_inner().names;
    assert_eq!(names, vec!["orders"]);
    let refused = client
        .create_topic(pb::CreateTopicRequest {
            name: "elsewhere".into(),
            partitions: 1,
            replication_factor: 1,
            configs: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_code_of(&refused), Some(ErrorCode::NotController));
    assert_eq!(leader_hint_of(&refused), Some((leader as i64, peers[&leader].clone())));

    // Stop the leader: the other two elect a new one and accept writes; nothing committed is lost.
    let old = nodes.remove(&leader).unwrap();
    old.shutdown().await;
    let new_leader = agreed_leader(&nodes).await;
    assert_ne!(new_leader, leader);
    nodes[&new_leader].raft.client_write(register(2)).await.unwrap();
    for node in nodes.values() {
        wait_until(Duration::from_secs(10), "the write after failover", || async {
            let m = node.state.metadata().await;
            (m.brokers.len() == 2 && m.topics.contains_key("orders")).then_some(())
        })
        .await;
    }

    // The old leader restarts on its data and the same address, and catches up.
    let listener = TcpListener::bind(&peers[&leader]).await.unwrap();
    let restarted = ControllerNode::start(config(leader), listener).await.unwrap();
    wait_until(Duration::from_secs(20), "the restarted node to catch up", || async {
        let m = restarted.state.metadata().await;
        (m.brokers.len() == 2 && m.topics.contains_key("orders")).then_some(())
    })
    .await;
    nodes.insert(leader, restarted);
    let final_leader = agreed_leader(&nodes).await;
    let mut versions = Vec::new();
    for node in nodes.values() {
        versions.push(node.state.metadata().await);
    }
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "every controller holds the same metadata");
    assert!(nodes.contains_key(&final_leader));
    for node in nodes.into_values() {
        node.shutdown().await;
    }
}
