//! The real `tideline-controller` binary, three processes on loopback: the quorum elects a
//! leader, survives `kill -9` of the leader with no metadata lost, a killed controller catches
//! up after restarting, a full restart of every controller keeps the state, and controllers
//! join and leave the quorum while it keeps taking writes.

mod common;

use common::wait_until;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tideline_common::{ErrorCode, error_code_of};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;

/// A controller process: killed when dropped; its log is printed if the test is failing.
struct Controller {
    id: u64,
    child: Child,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- controller {} log ----\n{log}", self.id);
        }
    }
}

fn spawn(id: u64, peers: &str, root: &Path) -> Controller {
    spawn_with(id, peers, root, &[])
}

/// A controller with `extra` arguments.
fn spawn_with(id: u64, peers: &str, root: &Path, extra: &[&str]) -> Controller {
    let log = root.join(format!("controller-{id}.log"));
    let out = File::options().create(true).append(true).open(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tideline-controller"))
        .args(["--node-id", &id.to_string(), "--peers", peers])
        .args(extra)
        .arg("--data-dir")
        .arg(root.join(format!("data-{id}")))
        .args(["--raft-heartbeat-ms", "100"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start tideline-controller");
    Controller { id, child, log }
}

async fn client(addr: &str) -> Option<ControllerServiceClient<tonic::transport::Channel>> {
    ControllerServiceClient::connect(format!("http://{addr}")).await.ok()
}

/// The leader every controller in `addrs` agrees on, itself one of them.
async fn leader(addrs: &[(u64, String)]) -> u64 {
    wait_until(Duration::from_secs(30), "an agreed leader", || async {
        let mut seen = Vec::new();
        for (_, addr) in addrs {
            let mut c = client(addr).await?;
            let s =
                c.get_controller_status(pb::GetControllerStatusRequest {}).await.ok()?.into_inner();
            seen.push(s.leader_id);
        }
        let first = seen[0];
        let alive = addrs.iter().any(|(id, _)| *id as i32 == first);
        (alive && seen.iter().all(|l| *l == first)).then_some(first as u64)
    })
    .await
}

async fn topics(addr: &str) -> Option<Vec<String>> {
    let mut c = client(addr).await?;
    Some(c.list_topics(pb::ListTopicsRequest {}).await.ok()?.into_inner().names)
}

/// Registers broker 1 (topics need a live broker for their replicas).
async fn register_broker(addr: &str) {
    let mut c = client(addr).await.expect("connect to the leader");
    c.register_broker(broker_1()).await.expect("register broker 1");
}

/// The registration of broker 1 (no process: its lease lapses unless registered again).
fn broker_1() -> pb::RegisterBrokerRequest {
    pb::RegisterBrokerRequest {
        endpoint: Some(pb::BrokerEndpoint {
            broker_id: 1,
            host: "127.0.0.1".into(),
            port: 9092,
            data_port: 0,
            rack: String::new(),
        }),
        incarnation_id: vec![1].into(),
    }
}

async fn create_topic(addr: &str, name: &str) {
    let mut c = client(addr).await.expect("connect to the leader");
    c.create_topic(pb::CreateTopicRequest {
        name: name.into(),
        partitions: 3,
        replication_factor: 1,
        configs: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_survives_kill_9_and_restarts() {
    let root = tempfile::tempdir().unwrap();
    let addrs: Vec<(u64, String)> =
        (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let peers = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
    let addr_of = |id: u64| addrs.iter().find(|(i, _)| *i == id).unwrap().1.clone();
    let mut procs: Vec<Controller> = (1..=3).map(|id| spawn(id, &peers, root.path())).collect();

    let first = leader(&addrs).await;
    register_broker(&addr_of(first)).await;
    create_topic(&addr_of(first), "before-kill").await;

    // kill -9 the leader: the others elect a new one; nothing committed is lost.
    let victim = procs.iter().position(|p| p.id == first).unwrap();
    drop(procs.remove(victim)); // SIGKILL
    let survivors: Vec<(u64, String)> =
        addrs.iter().filter(|(id, _)| *id != first).cloned().collect();
    let second = leader(&survivors).await;
    assert_ne!(second, first);
    for (_, addr) in &survivors {
        assert_eq!(topics(addr).await.unwrap(), vec!["before-kill"]);
    }
    create_topic(&addr_of(second), "after-kill").await;

    // The killed controller restarts on its data and catches up.
    procs.push(spawn(first, &peers, root.path()));
    wait_until(Duration::from_secs(30), "the restarted controller to catch up", || async {
        let t = topics(&addr_of(first)).await?;
        (t == vec!["after-kill", "before-kill"]).then_some(())
    })
    .await;

    // Stop every controller gracefully (SIGTERM), start them all again: the state is intact.
    for p in &procs {
        let status =
            Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
    for p in &mut procs {
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "controller {} did not stop on SIGTERM", p.id);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    procs.clear();
    procs.extend((1..=3).map(|id| spawn(id, &peers, root.path())));
    let third = leader(&addrs).await;
    for (_, addr) in &addrs {
        wait_until(Duration::from_secs(30), "state after a full restart", || async {
            (topics(addr).await? == vec!["after-kill", "before-kill"]).then_some(())
        })
        .await;
    }
    create_topic(&addr_of(third), "after-restart").await;
}

/// sled under SIGKILL (the pitfalls in DEPENDENCIES.md): a controller killed at varying points
/// while topics are being created, and killed during start-up, always restarts, and every
/// topic whose creation was acknowledged is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_and_startup_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let peers = format!("1={addr}");
    let spawn_one = || {
        let log = root.path().join("controller-1.log");
        let out = File::options().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tideline-controller"))
            .args(["--node-id", "1", "--peers", &peers, "--broker-lease-ms", "600000"])
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .args(["--raft-heartbeat-ms", "100"])
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start tideline-controller");
        Controller { id: 1, child, log }
    };
    let addrs = vec![(1u64, addr.clone())];
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..8u64 {
        let proc = spawn_one();
        leader(&addrs).await;
        let mut c = client(&addr).await.unwrap();
        if round == 0 {
            register_broker(&addr).await;
        }
        // Every topic acknowledged before the kill must survive it.
        let present = topics(&addr).await.unwrap();
        for name in &acknowledged {
            assert!(present.contains(name), "round {round}: acknowledged topic {name} was lost");
        }
        let writer = tokio::spawn(async move {
            let mut done = Vec::new();
            for k in 0.. {
                let name = format!("t{round}-{k}");
                let request = pb::CreateTopicRequest {
                    name: name.clone(),
                    partitions: 1,
                    replication_factor: 1,
                    configs: Default::default(),
                };
                match c.create_topic(request).await {
                    Ok(_) => done.push(name),
                    Err(_) => return done,
                }
            }
            done
        });
        tokio::time::sleep(Duration::from_millis(40 + 37 * round)).await;
        drop(proc); // SIGKILL in the middle of writes
        acknowledged.extend(writer.await.unwrap());
        // Every other round, also kill the next start early, while sled opens.
        if round % 2 == 1 {
            let early = spawn_one();
            tokio::time::sleep(Duration::from_millis(5 + 11 * round)).await;
            drop(early);
        }
    }
    let _last = spawn_one();
    leader(&addrs).await;
    let present = topics(&addr).await.unwrap();
    eprintln!("{} acknowledged topic creations survived 8 kill -9 rounds", acknowledged.len());
    assert!(acknowledged.len() > 8, "the test must write something: {}", acknowledged.len());
    for name in &acknowledged {
        assert!(present.contains(name), "acknowledged topic {name} was lost");
    }
}

/// A controller started with `--node-id-from-hostname` rather than `--node-id` is refused with
/// one line when its hostname has no ordinal, and one started with `--metrics-listen` serves
/// its Raft state and its RPC counts for Prometheus.
#[tokio::test]
async fn metrics_show_the_raft_state_and_rpcs() {
    use tideline_common::testing::{scrape, series};
    let root = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let log = root.path().join("controller-1.log");
    let out = File::options().create(true).append(true).open(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tideline-controller"))
        .args(["--node-id", "1", "--peers", &format!("1={addr}")])
        .arg("--data-dir")
        .arg(root.path().join("data-1"))
        .args(["--raft-heartbeat-ms", "100", "--metrics-listen", &metrics])
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start tideline-controller");
    let _controller = Controller { id: 1, child, log };
    assert_eq!(leader(&[(1, addr.clone())]).await, 1);
    topics(&addr).await.expect("list topics");
    let text = wait_until(Duration::from_secs(20), "the raft state in the metrics", || async {
        let text = scrape(&metrics).await;
        let listed = r#"tideline_grpc_requests_total{service="tideline.v1.ControllerService",method="ListTopics",code="OK"}"#;
        (series(&text, "tideline_controller_raft_is_leader") == Some(1.0)
            && series(&text, listed) == Some(1.0))
        .then_some(text)
    })
    .await;
    assert_eq!(series(&text, "tideline_controller_raft_leader"), Some(1.0), "{text}");
    assert!(series(&text, "tideline_controller_raft_term").unwrap_or(0.0) >= 1.0, "{text}");
    let applied = series(&text, "tideline_controller_raft_applied_index").unwrap_or(0.0);
    assert!(applied >= 1.0, "the initial membership entry at least: {text}");

    // Only where this host's name has no ordinal: elsewhere the child would start as a node.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if tideline_common::hostname::ordinal_of(&hostname).is_err() {
        let refused = Command::new(env!("CARGO_BIN_EXE_tideline-controller"))
            .args(["--node-id-from-hostname", "--peers", "1=127.0.0.1:1"])
            .output()
            .unwrap();
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("--node-id-from-hostname") && stderr.contains("does not end in -N"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

/// `call` on the Raft leader among `addrs`, again while the answer is NOT_CONTROLLER (an
/// election under load moved the lead) for up to 60 s; any other answer is returned.
async fn on_leader<T, F, Fut>(addrs: &[(u64, String)], call: F) -> Result<T, tonic::Status>
where
    F: Fn(ControllerServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let id = leader(addrs).await;
        let addr = &addrs.iter().find(|(i, _)| *i == id).unwrap().1;
        let answer = match client(addr).await {
            Some(c) => call(c).await.map(tonic::Response::into_inner),
            None => Err(tonic::Status::unavailable(format!("cannot connect to {addr}"))),
        };
        match answer {
            Err(e)
                if error_code_of(&e) == Some(ErrorCode::NotController)
                    || e.code() == tonic::Code::Unavailable =>
            {
                assert!(Instant::now() < deadline, "no stable leader to answer: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Voter ids as controller `addr` reports them.
async fn voters(addr: &str) -> Option<Vec<i32>> {
    let mut c = client(addr).await?;
    let s = c.get_controller_status(pb::GetControllerStatusRequest {}).await.ok()?.into_inner();
    let mut ids: Vec<i32> = s.members.iter().map(|m| m.node_id).collect();
    ids.sort_unstable();
    Some(ids)
}

/// Creates topic `name` through whichever of `addrs` leads (registering broker 1 again first),
/// retrying through elections and membership changes (a NOT_CONTROLLER answer or an
/// unreachable node) for up to 30 s.
async fn create_anywhere(addrs: &[(u64, String)], name: &str) {
    wait_until(Duration::from_secs(30), &format!("topic {name} created"), || async {
        for (_, addr) in addrs {
            let Some(mut c) = client(addr).await else { continue };
            // Broker 1 has no process heartbeating: register it again (its lease may have
            // lapsed), so that the topic has a live broker to be placed on.
            if c.register_broker(broker_1()).await.is_err() {
                continue;
            }
            let request = pb::CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                replication_factor: 1,
                configs: Default::default(),
            };
            match c.create_topic(request).await {
                Ok(_) => return Some(()),
                // A retry of a write that was applied before its answer was lost.
                Err(e) if e.message().contains("already exists") => return Some(()),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        None
    })
    .await
}

/// Scaling the quorum online: a fourth controller started to join (its id is not in its
/// --peers) catches up as a learner and becomes a voter while topics keep being created; one of
/// the first three is then removed. With the removed one and another of the first three
/// stopped, the remaining two (the new one among them) still make a majority of the three
/// voters and take writes, which they could not if the new one did not vote. Adding at an
/// address where no controller answers, or at another member's, is refused with
/// INVALID_REQUEST and changes nothing, as are other bad requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_join_and_leave_while_writes_go_on() {
    let root = tempfile::tempdir().unwrap();
    let mut addrs: Vec<(u64, String)> =
        (1..=4).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let peers = addrs[..3].iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
    let mut procs: Vec<Controller> = (1..=3).map(|id| spawn(id, &peers, root.path())).collect();
    let first = leader(&addrs[..3]).await;
    let addr_of = |id: u64| addrs.iter().find(|(i, _)| *i == id).unwrap().1.clone();
    register_broker(&addr_of(first)).await;
    create_topic(&addr_of(first), "before-join").await;

    // Controller 4 is not in its --peers: it waits to be added, and is nobody's voter yet.
    let listen4 = addr_of(4);
    procs.push(spawn_with(4, &peers, root.path(), &["--listen", &listen4]));
    wait_until(Duration::from_secs(20), "controller 4 to serve", || async {
        client(&listen4).await.map(|_| ())
    })
    .await;
    assert_eq!(voters(&addr_of(first)).await.unwrap(), [1, 2, 3]);

    // Writes go on while it joins.
    let writer_addrs = addrs.clone();
    let writer = tokio::spawn(async move {
        for i in 0..20 {
            create_anywhere(&writer_addrs, &format!("during-{i}")).await;
        }
    });
    let bad = on_leader(&addrs[..3], |mut c| async move {
        c.add_controller(pb::AddControllerRequest { node_id: 5, address: "nowhere".into() }).await
    })
    .await
    .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("HOST:PORT"), "{bad:?}");
    let added = on_leader(&addrs[..3], |mut c| {
        let address = listen4.clone();
        async move { c.add_controller(pb::AddControllerRequest { node_id: 4, address }).await }
    })
    .await
    .unwrap_or_else(|e| panic!("add controller 4: {e}"));
    let mut ids: Vec<i32> = added.members.iter().map(|m| m.node_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4]);
    writer.await.unwrap();
    // The new voter has everything, and says so itself.
    wait_until(Duration::from_secs(30), "controller 4 to hold every topic", || async {
        let names = topics(&listen4).await?;
        (names.len() == 21 && voters(&listen4).await? == [1, 2, 3, 4]).then_some(())
    })
    .await;

    // An address where no controller answers, or another member's, is refused before anything
    // changes: neither becomes a learner the leader replicates to, let alone a voter.
    let nobody = format!("127.0.0.1:{}", free_port());
    for (address, why) in [(nobody, "no controller answers"), (listen4.clone(), "controller 4")] {
        let refused = on_leader(&addrs, |mut c| {
            let address = address.clone();
            async move { c.add_controller(pb::AddControllerRequest { node_id: 5, address }).await }
        })
        .await
        .unwrap_err();
        assert_eq!(error_code_of(&refused), Some(ErrorCode::InvalidRequest), "{refused:?}");
        assert!(refused.message().contains(why), "{refused:?}");
    }
    let mut c = client(&listen4).await.unwrap();
    let status = c.get_controller_status(pb::GetControllerStatusRequest {}).await.unwrap();
    assert_eq!(status.into_inner().members.len(), 4, "no member added");

    // Remove one of the first three, then stop it.
    let removed = (1..=3).find(|id| *id != first).unwrap();
    let unknown = on_leader(&addrs, |mut c| async move {
        c.remove_controller(pb::RemoveControllerRequest { node_id: 9 }).await
    })
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");
    let after = on_leader(&addrs, |mut c| async move {
        c.remove_controller(pb::RemoveControllerRequest { node_id: removed as i32 }).await
    })
    .await
    .unwrap_or_else(|e| panic!("remove controller {removed}: {e}"));
    assert_eq!(after.members.len(), 3, "{after:?}");
    assert!(after.members.iter().all(|m| m.node_id != removed as i32), "{after:?}");
    procs.retain(|p| p.id != removed); // SIGKILL
    addrs.retain(|(id, _)| *id != removed);

    // Stop the old leader too: 4 and the last original controller are two of three voters.
    procs.retain(|p| p.id != first);
    addrs.retain(|(id, _)| *id != first);
    let next = leader(&addrs).await;
    assert_ne!(next, first);
    create_anywhere(&addrs, "after-leave").await;
    for (_, addr) in &addrs {
        wait_until(Duration::from_secs(30), "the write on both remaining voters", || async {
            topics(addr).await?.contains(&"after-leave".to_string()).then_some(())
        })
        .await;
    }
}
