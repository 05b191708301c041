//! Replication status counters of in-process brokers: under-replicated partitions while a
//! follower is out of the ISR, ISR expansions when it joins and shrinks when it stops.

use std::collections::BTreeMap;
use std::time::Duration;

use tideline_broker::{Broker, BrokerConfig};
use tideline_common::testing::wait_until;
use tideline_controller::node::{ControllerNode, NodeConfig};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tokio::net::TcpListener;

async fn broker(id: i32, root: &std::path::Path, controller: &str) -> Broker {
    let mut config = BrokerConfig::new(id, root.join(format!("b{id}")), vec![controller.into()]);
    config.replica_lag_time_max = Duration::from_millis(300);
    Broker::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_under_replicated_partitions_and_isr_changes() {
    let root = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut config = NodeConfig::new(1, root.path().join("c"), BTreeMap::from([(1, addr.clone())]));
    config.broker_lease_ms = 5000;
    let controller = ControllerNode::start(config, listener).await.unwrap();
    let b1 = broker(1, root.path(), &addr).await;
    let b2 = broker(2, root.path(), &addr).await;
    let mut c = ControllerServiceClient::connect(format!("http://{addr}")).await.unwrap();
    wait_until(Duration::from_secs(20), "both brokers to register", || {
        let mut c = c.clone();
        async move {
            let m = c.get_metadata(pb::GetMetadataRequest { topics: vec![] }).await.ok()?;
            (m.into_inner().brokers.iter().filter(|b| !b.fenced).count() == 2).then_some(())
        }
    })
    .await;
    let topic = c
        .create_topic(pb::CreateTopicRequest {
            name: "s".into(),
            partitions: 1,
            replication_factor: 2,
            configs: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(topic.partitions[0].leader, 1, "broker 1 is the first replica");
    // The follower catches up and joins: one expansion, nothing under-replicated.
    wait_until(Duration::from_secs(20), "the follower to join the ISR", || async {
        let s = b1.replication_status();
        (s.isr_expands >= 1 && s.under_replicated == 0).then_some(())
    })
    .await;
    // The follower stops: the leader shrinks the ISR after the lag.
    b2.shutdown().await.unwrap();
    let s = wait_until(Duration::from_secs(20), "the ISR to shrink", || async {
        let s = b1.replication_status();
        (s.isr_shrinks >= 1 && s.under_replicated == 1).then_some(s)
    })
    .await;
    assert_eq!(s.offline, 0);
    b1.shutdown().await.unwrap();
    controller.shutdown().await;
}
