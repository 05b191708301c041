//! `tide dev` end to end: it starts a whole cluster as processes, the CLI creates a topic,
//! produces lines and consumes them back (keys, values and headers intact), `tide cluster
//! status` sees every node, SIGTERM stops every process cleanly, and a second run resumes the
//! same data.

mod common;

use std::path::Path;

use common::Dev;

fn pids_under(data: &Path, bootstrap: &str) -> Vec<String> {
    // Processes whose command line names this test's data directory or its controllers (the
    // coordinators keep no data).
    let needle = data.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) || cmdline.contains(bootstrap) {
            pids.push(name);
        }
    }
    pids
}

#[test]
fn tide_dev_round_trip_clean_stop_and_resume() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("tideline-data");
    let dev = Dev::start(&data, &[]);

    let status = dev.ok(&["cluster", "status", "--output", "json"], None);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["controllers"].as_array().unwrap().len(), 3);
    let brokers = status["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 3);
    assert!(brokers.iter().all(|b| b["fenced"] == false));
    assert_eq!(status["under_replicated_partitions"], 0);

    dev.ok(
        &["topic", "create", "greetings", "--partitions", "3", "--replication-factor", "1"],
        None,
    );
    let listed = dev.ok(&["topic", "list"], None);
    // Like kafka-topics --list, the internal offsets topic is listed too.
    assert_eq!(listed.trim(), "__consumer_offsets\ngreetings");
    let produced = dev.tide(
        &["produce", "greetings", "--key-separator", ":", "--header", "source=test"],
        Some("alice:hello\nbob:hi\ncarol:hey there\n"),
    );
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    assert!(String::from_utf8_lossy(&produced.stderr).contains("produced 3 records"));

    let consumed = dev.ok(
        &["consume", "greetings", "--from-beginning", "--max-messages", "3", "--output", "json"],
        None,
    );
    let mut got: Vec<(String, String, String)> = consumed
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["headers"][0]["key"], "source");
            (
                v["key"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
                v["headers"][0]["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("alice".into(), "hello".into(), "test".into()),
            ("bob".into(), "hi".into(), "test".into()),
            ("carol".into(), "hey there".into(), "test".into()),
        ]
    );

    // Errors are one line and a non-zero exit.
    let bad = dev.tide(&["topic", "create", "bad/name"], None);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error:"), "{err}");

    // A consumer group reads everything once, commits, and describes itself.
    let grouped = dev.ok(
        &["consume", "greetings", "--group", "readers", "--from-beginning", "--max-messages", "3"],
        None,
    );
    assert_eq!(grouped.lines().count(), 3, "{grouped}");
    let described = dev.ok(&["group", "describe", "readers", "--output", "json"], None);
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    let committed: i64 = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed_offset"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(committed, 3, "{described}");
    assert!(dev.ok(&["group", "list"], None).contains("readers"));

    bench_round_trip(&dev, root.path());

    let bootstrap = dev.bootstrap.clone();
    assert!(dev.stop(), "tide dev exits with success after stopping every process");
    assert!(pids_under(&data, &bootstrap).is_empty(), "no process of the cluster is left running");

    // Running it again resumes the same data.
    let dev = Dev::start(&data, &[]);
    let consumed = dev.ok(&["consume", "greetings", "--from-beginning", "--print-key"], None);
    let mut lines: Vec<&str> = consumed.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["alice\thello", "bob\thi", "carol\they there"]);
    // The group's offsets survived the restart: it has nothing left to read.
    let grouped = dev.ok(&["consume", "greetings", "--group", "readers"], None);
    assert_eq!(grouped.trim(), "", "the group resumes from its committed offsets");
    assert!(dev.stop());
}

/// `tide bench produce`, `consume` (both fetch paths) and `e2e` against the running cluster:
/// every record is counted once, latencies are recorded for each, and limits and ratios are
/// reported when asked.
fn bench_round_trip(dev: &Dev, scratch: &Path) {
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--output", "json"]);
        serde_json::from_str(&dev.ok(&all, None)).unwrap()
    };
    let limits_dir = scratch.to_str().unwrap();
    let produced = json(&[
        "produce",
        "--topic",
        "bench",
        "--partitions",
        "3",
        "--records",
        "3000",
        "--record-size",
        "100",
        "--producers",
        "2",
        "--acks",
        "all",
        "--compression",
        "lz4",
        "--limits",
        "--limits-mib",
        "4",
        "--limits-dir",
        limits_dir,
    ]);
    assert_eq!(produced["produced"]["records"], 3000, "{produced}");
    assert_eq!(produced["produced"]["bytes"], 300_000, "{produced}");
    assert_eq!(produced["produce_latency_ms"]["count"], 3000, "{produced}");
    assert_eq!(produced["partitions"], 3);
    let ratio = produced["ratios"]["produce / disk write (page cache)"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio.is_finite(), "{produced}");
    for grpc in [false, true] {
        let mut args = vec!["consume", "--topic", "bench", "--records", "3000", "--consumers", "2"];
        if grpc {
            args.push("--grpc");
        }
        let consumed = json(&args);
        assert_eq!(consumed["consumed"]["records"], 3000, "{consumed}");
        assert_eq!(consumed["consumed"]["bytes"], 300_000, "{consumed}");
        assert_eq!(consumed["fetch_path"], if grpc { "grpc" } else { "data port" });
    }
    let e2e = json(&[
        "e2e",
        "--topic",
        "bench-e2e",
        "--partitions",
        "2",
        "--records",
        "400",
        "--record-size",
        "64",
        "--throughput",
        "2000",
        "--linger-ms",
        "1",
    ]);
    assert_eq!(e2e["produced"]["records"], 400, "{e2e}");
    assert_eq!(e2e["consumed"]["records"], 400, "{e2e}");
    assert_eq!(e2e["e2e_latency_ms"]["count"], 400, "{e2e}");
    let (p50, max) = (
        e2e["e2e_latency_ms"]["p50"].as_f64().unwrap(),
        e2e["e2e_latency_ms"]["max"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= max, "{e2e}");
    // The cap holds: 400 records at 2000/s take at least 0.2 s.
    assert!(e2e["produced"]["seconds"].as_f64().unwrap() >= 0.19, "{e2e}");
    // Nothing left behind by the limits, and bad options are one error line.
    assert_eq!(
        std::fs::read_dir(scratch)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tide-bench"))
            .count(),
        0
    );
    let bad = dev.tide(&["bench", "e2e", "--record-size", "4"], None);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("error:") && err.contains("--record-size"), "{err}");
}
