//! Replication between real `tideline-broker` processes: followers catch up and join the ISR,
//! replicas end byte-identical, acks=all waits for the ISR and survives the leader's kill -9,
//! stopped followers leave the ISR, and acks=all is refused below min.insync.replicas.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tideline_common::{ErrorCode, error_code_of};
use tideline_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_join_the_isr_and_replicas_end_identical() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    cluster.create_topic("rep", 1, 3, &[("min.insync.replicas", "2")]).await;
    // New partitions start with the leader alone in sync; followers join once caught up.
    cluster.wait_isr("rep", 0, &[1, 2, 3]).await;
    for i in 0..200 {
        produce_retrying(&cluster, "rep", &format!("v{i}"), pb::Acks::All).await.unwrap();
    }
    let got = values(&cluster, "rep").await;
    assert_eq!(got, (0..200).map(|i| format!("v{i}")).collect::<Vec<_>>());
    // Every replica holds the same bytes (offsets, epochs, CRCs): followers append as they are.
    wait_until(Duration::from_secs(20), "replicas to be byte-identical", || async {
        let leader = cluster.segment_bytes(1, "rep", 0);
        (!leader.is_empty()
            && cluster.segment_bytes(2, "rep", 0) == leader
            && cluster.segment_bytes(3, "rep", 0) == leader)
            .then_some(())
    })
    .await;
    cluster.stop().await;
}

/// kill -9 of the leader at a point chosen by `seed` while an idempotent producer streams with
/// acks=all and retries: every acknowledged record is read back exactly once, in order, from
/// the new leader.
async fn kill_leader_while_producing(seed: usize) {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let topic = cluster.create_topic("durable", 1, 3, &[("min.insync.replicas", "2")]).await;
    cluster.wait_isr("durable", 0, &[1, 2, 3]).await;
    let first_leader = topic.partitions[0].leader;
    let kill_at = seed % 250 + 20;
    let mut producer = Idempotent::new(&cluster).await;
    let mut acked = Vec::new();
    for i in 0..300 {
        if i == kill_at {
            cluster.brokers.get_mut(&first_leader).unwrap().signal("KILL");
        }
        let value = format!("r{i}");
        let batch = producer.batch(&value);
        produce_batch_retrying(&cluster, "durable", batch)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: record {i} not acknowledged: {e:?}"));
        acked.push(value);
    }
    let new_leader = cluster.wait_leader_ready("durable", 0).await;
    assert_ne!(new_leader, first_leader, "leadership moved to an in-sync replica");
    let got = values(&cluster, "durable").await;
    let present: BTreeSet<&String> = got.iter().collect();
    for v in &acked {
        assert!(present.contains(v), "seed {seed}: acknowledged record {v} was lost");
    }
    // Exactly once (retried batches were not written twice) and in order.
    assert_eq!(got, acked, "seed {seed}: the log holds each acknowledged record once, in order");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_loses_no_acknowledged_record() {
    for seed in [17, 93, 201] {
        kill_leader_while_producing(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_followers_leave_the_isr_and_min_insync_guards_acks_all() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let topic = cluster.create_topic("guard", 1, 3, &[("min.insync.replicas", "2")]).await;
    cluster.wait_isr("guard", 0, &[1, 2, 3]).await;
    let leader = topic.partitions[0].leader;
    let followers: Vec<i32> = (1..=3).filter(|b| *b != leader).collect();

    // One follower stopped: it leaves the ISR, and acks=all still succeeds with 2 in sync.
    cluster.brokers[&followers[0]].signal("STOP");
    let mut two: Vec<i32> = vec![leader, followers[1]];
    two.sort_unstable();
    cluster.wait_isr("guard", 0, &two).await;
    produce_retrying(&cluster, "guard", "with-two", pb::Acks::All).await.unwrap();

    // Both followers down: acks=all is refused and appends nothing; acks=1 succeeds.
    cluster.brokers[&followers[1]].signal("STOP");
    cluster.wait_isr("guard", 0, &[leader]).await;
    let mut b = cluster.broker(leader).await;
    let s = b
        .produce(produce_records("guard", 0, vec![record("k", "refused", &[], 0)]))
        .await
        .unwrap_err();
    assert_eq!(error_code_of(&s), Some(ErrorCode::NotEnoughReplicas), "{s:?}");
    produce_retrying(&cluster, "guard", "acks-1", pb::Acks::Leader).await.unwrap();

    // Resumed, the followers register again, catch up and rejoin the ISR.
    cluster.brokers[&followers[0]].signal("CONT");
    cluster.brokers[&followers[1]].signal("CONT");
    cluster.wait_isr("guard", 0, &[1, 2, 3]).await;
    let got = values(&cluster, "guard").await;
    assert_eq!(got, vec!["with-two".to_string(), "acks-1".to_string()]);
    cluster.stop().await;
}

/// A leader writes records with acks=1 that no follower gets and dies; a follower takes over
/// and writes over those offsets; the old leader returns, truncates, and catches up. `seed`
/// sets how many records come before and how many go unreplicated.
async fn returning_leader_truncates(seed: usize) {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let topic = cluster.create_topic("div", 1, 3, &[]).await;
    cluster.wait_isr("div", 0, &[1, 2, 3]).await;
    let before = 5 + seed % 20;
    let lost = 1 + seed % 3;
    for i in 0..before {
        produce_retrying(&cluster, "div", &format!("a{i}"), pb::Acks::All).await.unwrap();
    }
    let old = topic.partitions[0].leader;
    let followers: Vec<i32> = (1..=3).filter(|b| *b != old).collect();
    // Followers paused long enough for their pending long-poll fetches to be answered (empty),
    // short of their lease and of the ISR lag: they stay in the ISR but fetch nothing more.
    for f in &followers {
        cluster.brokers[f].signal("STOP");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The leader takes records with acks=1 that no follower gets, then dies.
    let mut b = cluster.broker(old).await;
    for j in 0..lost {
        let mut lone = produce_records("div", 0, vec![record("k", "unreplicated", &[], 0)]);
        lone.acks = pb::Acks::Leader as i32;
        let offset = b.produce(lone).await.unwrap().into_inner().base_offset;
        assert_eq!(offset, (before + j) as i64);
    }
    let leader_log = cluster.brokers.get_mut(&old).unwrap();
    leader_log.signal("KILL");
    leader_log.child.wait().unwrap();
    for f in &followers {
        cluster.brokers[f].signal("CONT");
    }
    // A follower from the ISR takes over at a new epoch and writes over offset 10.
    let new = wait_until(Duration::from_secs(30), "a new leader", || async {
        let l = cluster.leader_of("div", 0).await;
        (l >= 0 && l != old).then_some(l)
    })
    .await;
    assert!(followers.contains(&new));
    for i in 0..5 {
        produce_retrying(&cluster, "div", &format!("b{i}"), pb::Acks::All).await.unwrap();
    }
    // The old leader returns: it truncates its unreplicated record and catches up.
    cluster.start_broker(old).await;
    cluster.wait_isr("div", 0, &[1, 2, 3]).await;
    let expected: Vec<String> =
        (0..before).map(|i| format!("a{i}")).chain((0..5).map(|i| format!("b{i}"))).collect();
    assert_eq!(values(&cluster, "div").await, expected);
    wait_until(Duration::from_secs(20), "replicas to be byte-identical", || async {
        let a = cluster.segment_bytes(1, "div", 0);
        (cluster.segment_bytes(2, "div", 0) == a && cluster.segment_bytes(3, "div", 0) == a)
            .then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_leader_truncates_what_it_could_not_replicate() {
    for seed in [5, 22] {
        returning_leader_truncates(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_controlled_shutdown_fails_no_send() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    cluster.create_topic("roll", 1, 3, &[("min.insync.replicas", "2")]).await;
    cluster.wait_isr("roll", 0, &[1, 2, 3]).await;
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let mut i = 0;
    for id in [1, 2, 3] {
        // Produce a while, then restart broker `id` cleanly (SIGTERM: controlled shutdown).
        for _ in 0..30 {
            let v = format!("m{i}");
            i += 1;
            match produce_retrying(&cluster, "roll", &v, pb::Acks::All).await {
                Ok(_) => acked.push(v),
                Err(e) => failed.push((v, e.message().to_string())),
            }
        }
        assert!(cluster.brokers.get_mut(&id).unwrap().terminate(), "broker {id} stops cleanly");
        for _ in 0..30 {
            let v = format!("m{i}");
            i += 1;
            match produce_retrying(&cluster, "roll", &v, pb::Acks::All).await {
                Ok(_) => acked.push(v),
                Err(e) => failed.push((v, e.message().to_string())),
            }
        }
        cluster.start_broker(id).await;
        cluster.wait_isr("roll", 0, &[1, 2, 3]).await;
    }
    assert!(failed.is_empty(), "failed sends: {failed:?}");
    let got = values(&cluster, "roll").await;
    for v in &acked {
        assert!(got.contains(v), "acknowledged record {v} missing");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_written_once_also_after_failover() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let topic = cluster.create_topic("idem", 1, 3, &[("min.insync.replicas", "2")]).await;
    cluster.wait_isr("idem", 0, &[1, 2, 3]).await;
    let mut producer = Idempotent::new(&cluster).await;
    let first = producer.batch("one");
    let second = producer.batch("two");
    assert_eq!(produce_batch_retrying(&cluster, "idem", first.clone()).await.unwrap(), 0);
    assert_eq!(produce_batch_retrying(&cluster, "idem", second.clone()).await.unwrap(), 1);
    // A retry of either is answered with its first offsets and not written again.
    assert_eq!(produce_batch_retrying(&cluster, "idem", first.clone()).await.unwrap(), 0);
    // A gap in sequence numbers is refused and stores nothing.
    producer.next += 3;
    let gap = producer.batch("gap");
    let leader = topic.partitions[0].leader;
    let mut b = cluster.broker(leader).await;
    let s = b.produce(produce_bytes("idem", 0, gap)).await.unwrap_err();
    assert_eq!(error_code_of(&s), Some(ErrorCode::OutOfOrderSequence), "{s:?}");
    // The producer state lives on the followers too: after the leader dies, the new leader
    // still recognises the retry.
    cluster.brokers.get_mut(&leader).unwrap().signal("KILL");
    assert_eq!(produce_batch_retrying(&cluster, "idem", second).await.unwrap(), 1);
    assert_ne!(cluster.leader_of("idem", 0).await, leader);
    assert_eq!(values(&cluster, "idem").await, vec!["one".to_string(), "two".to_string()]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_leader_returns_under_traffic_without_losing_a_record() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let topic = cluster.create_topic("pref", 1, 3, &[("min.insync.replicas", "2")]).await;
    cluster.wait_isr("pref", 0, &[1, 2, 3]).await;
    let preferred = topic.partitions[0].replicas[0];
    let mut producer = Idempotent::new(&cluster).await;
    let mut acked = Vec::new();
    let mut i = 0;
    for round in 0..2 {
        // The preferred leader stops (controlled shutdown) and comes back; while it catches up,
        // rejoins the ISR and takes the lead back, acks=all traffic keeps flowing.
        assert!(cluster.brokers.get_mut(&preferred).unwrap().terminate());
        for _ in 0..20 {
            let v = format!("p{i}");
            i += 1;
            produce_batch_retrying(&cluster, "pref", producer.batch(&v)).await.unwrap();
            acked.push(v);
        }
        cluster.start_broker(preferred).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = format!("p{i}");
            i += 1;
            produce_batch_retrying(&cluster, "pref", producer.batch(&v)).await.unwrap();
            acked.push(v);
            if cluster.leader_of("pref", 0).await == preferred {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "round {round}: lead not back");
        }
        for _ in 0..20 {
            let v = format!("p{i}");
            i += 1;
            produce_batch_retrying(&cluster, "pref", producer.batch(&v)).await.unwrap();
            acked.push(v);
        }
    }
    assert_eq!(values(&cluster, "pref").await, acked, "every acknowledged record once, in order");
    wait_until(Duration::from_secs(20), "replicas to be byte-identical", || async {
        let a = cluster.segment_bytes(1, "pref", 0);
        (cluster.segment_bytes(2, "pref", 0) == a && cluster.segment_bytes(3, "pref", 0) == a)
            .then_some(())
    })
    .await;
    cluster.stop().await;
}
