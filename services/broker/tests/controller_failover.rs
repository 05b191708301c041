//! Failures of the controller quorum and of brokers together, with a three-controller quorum and
//! real `tideline-broker` processes that know every controller.

mod common;

use std::time::Duration;

use common::*;
use tideline_proto::v1 as pb;

/// The partition as the controllers record it, once `check` accepts it.
async fn wait_partition(
    cluster: &Cluster,
    topic: &str,
    what: &str,
    check: impl Fn(&pb::GetMetadataResponse, &pb::PartitionMetadata) -> bool,
) -> pb::PartitionMetadata {
    wait_until(Duration::from_secs(30), what, || async {
        let m = cluster.metadata().await?;
        let p = m.topics.iter().find(|t| t.name == topic)?.partitions.first()?.clone();
        check(&m, &p).then_some(p)
    })
    .await
}

/// kill -9 of the partition leader and shutdown of the Raft leader controller at the same
/// moment: the two remaining controllers elect a leader, which fences the dead broker and moves
/// the partition to an in-sync replica at a higher leader epoch; acks=all produce resumes, and
/// every acknowledged record is read back exactly once, in order, from the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_leader_and_partition_leader_die_together_and_nothing_acknowledged_is_lost() {
    let mut cluster = Cluster::start_quorum(3, &[1, 2, 3]).await;
    cluster.create_topic("failover", 1, 3, &[("min.insync.replicas", "2")]).await;
    cluster.wait_isr("failover", 0, &[1, 2, 3]).await;
    let mut producer = Idempotent::new(&cluster).await;
    let mut acked = Vec::new();
    for i in 0..50 {
        let value = format!("a{i}");
        produce_batch_retrying(&cluster, "failover", producer.batch(&value)).await.unwrap();
        acked.push(value);
    }

    let before = cluster.partition("failover", 0).await.unwrap();
    let (old_controller, _) = cluster.controller_leader().await;
    let dead = cluster.brokers.get_mut(&before.leader).unwrap();
    dead.signal("KILL");
    dead.child.wait().unwrap();
    cluster.stop_controller_node(old_controller).await;

    let (new_controller, _) = cluster.controller_leader().await;
    assert_ne!(new_controller, old_controller, "a surviving controller leads");
    let what = format!("broker {} to be fenced and the partition to move", before.leader);
    let after = wait_partition(&cluster, "failover", &what, |m, p| {
        let fenced = m
            .brokers
            .iter()
            .any(|b| b.fenced && b.endpoint.as_ref().is_some_and(|e| e.broker_id == before.leader));
        fenced && p.leader >= 0 && p.leader != before.leader
    })
    .await;
    assert!(before.isr.contains(&after.leader), "{after:?} is led from the isr of {before:?}");
    assert!(after.leader_epoch > before.leader_epoch, "{after:?} after {before:?}");
    assert!(!after.isr.contains(&before.leader), "the dead broker left the isr: {after:?}");

    for i in 0..50 {
        let value = format!("b{i}");
        produce_batch_retrying(&cluster, "failover", producer.batch(&value)).await.unwrap();
        acked.push(value);
    }

    // Read back from the partition leader (the one elected above: the dead broker cannot
    // return to take the lead back).
    let leader = cluster.wait_leader_ready("failover", 0).await;
    assert_eq!(leader, after.leader, "leadership stayed where the failover put it");
    let mut b = cluster.broker(leader).await;
    let got: Vec<String> = read_all(&mut b, "failover", 0, 0)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect();
    // The producer is idempotent: each acknowledged record exactly once, in order.
    assert_eq!(got, acked);
    cluster.stop().await;
}
