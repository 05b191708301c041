//! Moving a partition between broker processes (`AlterPartitionReassignments`): a throttled
//! move takes at least what its throttle allows, ends with the new replica leading and holding
//! every record, and the old replica deleting its log; a cancelled move puts the original
//! replica back in charge and the broker that was being added deletes its partial copy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tideline_common::testing::wait_until;
use tideline_proto::v1 as pb;

/// Records of 16 KiB: 128 of them make 2 MiB to move.
const VALUE_BYTES: usize = 16 << 10;
const RECORDS: usize = 128;

/// Creates `topic` (1 partition, RF 1) and fills it; returns its leader and the values.
async fn filled(cluster: &Cluster, topic: &str) -> (i32, Vec<String>) {
    cluster.create_topic(topic, 1, 1, &[]).await;
    let leader = cluster.wait_leader_ready(topic, 0).await;
    let mut broker = cluster.broker(leader).await;
    for chunk in 0..RECORDS / 8 {
        let records = (0..8)
            .map(|i| {
                let value = format!("{:0>width$}", chunk * 8 + i, width = VALUE_BYTES);
                record("k", &value, &[], 0)
            })
            .collect();
        broker.produce(produce_records(topic, 0, records)).await.unwrap();
    }
    (leader, values(cluster, topic).await)
}

/// Asks the controller to move (or, with `cancel`, to stop moving) partition 0 of `topic`.
async fn reassign(cluster: &Cluster, topic: &str, target: &[i32], throttle: u64, cancel: bool) {
    let request = pb::AlterPartitionReassignmentsRequest {
        reassignments: vec![pb::PartitionReassignment {
            topic: topic.into(),
            partition: 0,
            replicas: target.to_vec(),
        }],
        cancel,
        throttle_bytes_per_sec: throttle,
    };
    cluster.controller().await.alter_partition_reassignments(request).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_move_completes_and_a_cancelled_one_leaves_nothing_behind() {
    let cluster = Cluster::start(&[1, 2]).await;

    // A move of 2 MiB at 512 KiB/s: the adding broker fetches 128 KiB at a time and pays for
    // each before the next, so its 16th fetch starts at least 15 pauses of 250 ms after the
    // first, however fast the machine (a slow one only takes longer).
    let (from, before) = filled(&cluster, "moved").await;
    let to = if from == 1 { 2 } else { 1 };
    let started = Instant::now();
    reassign(&cluster, "moved", &[to], 512 << 10, false).await;
    let p = cluster.partition("moved", 0).await.unwrap();
    // (Unless this machine took seconds to answer two calls: then the move may be done.)
    if started.elapsed() < Duration::from_secs(3) {
        let moving = (p.adding_replicas.as_slice(), p.reassignment_throttle);
        assert_eq!(moving, (&[to][..], 512 << 10), "{p:?}");
    }
    let p = wait_until(Duration::from_secs(60), "the move to complete", || async {
        let p = cluster.partition("moved", 0).await?;
        (p.target_replicas.is_empty() && p.leader == to).then_some(p)
    })
    .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(3500), "2 MiB at 512 KiB/s moved in {took:?}");
    assert_eq!((p.replicas.as_slice(), p.isr.as_slice()), (&[to][..], &[to][..]));
    assert_eq!(values(&cluster, "moved").await, before, "every record on the new replica");
    let old = cluster.data_dir(from).join("moved-0");
    wait_until(Duration::from_secs(30), "the old replica to delete its log", || async {
        (!old.exists()).then_some(())
    })
    .await;

    // A move too slow to finish (64 KiB/s), cancelled once the new replica has started.
    let (home, before) = filled(&cluster, "stays").await;
    let away = if home == 1 { 2 } else { 1 };
    reassign(&cluster, "stays", &[away], 64 << 10, false).await;
    let partial = cluster.data_dir(away).join("stays-0");
    wait_until(Duration::from_secs(30), "the adding replica to start", || async {
        partial.exists().then_some(())
    })
    .await;
    reassign(&cluster, "stays", &[], 0, true).await;
    let p = cluster.partition("stays", 0).await.unwrap();
    assert!(p.target_replicas.is_empty() && p.adding_replicas.is_empty(), "{p:?}");
    assert_eq!((p.replicas.as_slice(), p.leader), (&[home][..], home));
    wait_until(Duration::from_secs(30), "the partial copy to be deleted", || async {
        (!partial.exists()).then_some(())
    })
    .await;
    assert_eq!(values(&cluster, "stays").await, before);
}
