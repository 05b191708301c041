//! A broker process started with `--metrics-listen` serves Prometheus metrics that follow what
//! it does: per-RPC counts and latencies, bytes and records in and out by topic and path, log
//! end offsets and high watermarks per partition (gone once the partition is), and its
//! partition counts.

mod common;

use std::time::Duration;

use common::*;
use tideline_common::testing::{scrape, series, wait_until};
use tideline_proto::v1 as pb;

#[tokio::test]
async fn metrics_follow_produce_and_fetch() {
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cluster =
        Cluster::start_with_broker_args(1, &[1], &["--metrics-listen", &metrics_addr]).await;
    cluster.create_topic("m", 1, 1, &[]).await;
    cluster.wait_leader_ready("m", 0).await;
    let mut broker = cluster.broker(1).await;
    let records = |n: usize| (0..n).map(|i| record("k", &format!("v{i}"), &[], 0)).collect();
    let mut request = produce_records("m", 0, records(3));
    request.acks = pb::Acks::Leader as i32;
    broker.produce(request).await.unwrap();

    let in_bytes = r#"tideline_broker_bytes_in_total{topic="m"}"#;
    let text = wait_until(Duration::from_secs(10), "log end offset 3 in the metrics", || async {
        let text = scrape(&metrics_addr).await;
        let end = series(&text, r#"tideline_broker_log_end_offset{topic="m",partition="0"}"#);
        (end == Some(3.0)).then_some(text)
    })
    .await;
    let first_bytes = series(&text, in_bytes).expect(&text);
    assert!(first_bytes > 0.0, "{text}");
    assert_eq!(series(&text, r#"tideline_broker_records_in_total{topic="m"}"#), Some(3.0));
    assert_eq!(
        series(&text, r#"tideline_broker_high_watermark{topic="m",partition="0"}"#),
        Some(3.0)
    );
    assert_eq!(series(&text, r#"tideline_broker_under_replicated_partitions"#), Some(0.0));
    assert_eq!(series(&text, r#"tideline_broker_offline_partitions"#), Some(0.0));
    assert!(series(&text, r#"tideline_broker_partitions{role="leader"}"#).unwrap_or(0.0) >= 1.0);
    let produce_ok = r#"tideline_grpc_requests_total{service="tideline.v1.BrokerService",method="Produce",code="OK"}"#;
    assert_eq!(series(&text, produce_ok), Some(1.0), "{text}");
    assert!(
        text.contains(r#"tideline_grpc_request_duration_seconds_bucket{service="tideline.v1.BrokerService",method="Produce",le="#),
        "latency histogram: {text}"
    );

    // More produced, a fetch, and a refused request: the counters move.
    let mut request = produce_records("m", 0, records(2));
    request.acks = pb::Acks::Leader as i32;
    broker.produce(request).await.unwrap();
    let mut batches = fetch("m", 0, 0, 0);
    batches.decode_records = false;
    let answer = broker.fetch(batches).await.unwrap().into_inner();
    assert!(!answer.record_batches.is_empty());
    let error = broker.produce(produce_records("nope", 0, records(1))).await.unwrap_err();
    assert_ne!(error.code(), tonic::Code::Ok);
    let text = wait_until(Duration::from_secs(10), "the second produce in the metrics", || async {
        let text = scrape(&metrics_addr).await;
        let end = series(&text, r#"tideline_broker_log_end_offset{topic="m",partition="0"}"#);
        (end == Some(5.0)).then_some(text)
    })
    .await;
    assert!(series(&text, in_bytes).unwrap() > first_bytes, "{text}");
    assert_eq!(series(&text, r#"tideline_broker_records_in_total{topic="m"}"#), Some(5.0));
    assert!(
        series(&text, r#"tideline_broker_bytes_out_total{topic="m",via="grpc"}"#).unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    assert_eq!(series(&text, produce_ok), Some(2.0), "{text}");
    let refused = text
        .lines()
        .filter(|l| l.starts_with(r#"tideline_grpc_requests_total{service="tideline.v1.BrokerService",method="Produce",code=""#))
        .filter(|l| !l.contains(r#"code="OK""#))
        .count();
    assert_eq!(refused, 1, "the refused produce, under its status code: {text}");

    // A fetch answered with decoded records counts the batches it decoded.
    let out = r#"tideline_broker_bytes_out_total{topic="m",via="grpc"}"#;
    let before = series(&text, out).unwrap_or(0.0);
    let decoded = broker.fetch(fetch("m", 0, 0, 0)).await.unwrap().into_inner();
    assert!(!decoded.records.is_empty() && decoded.record_batches.is_empty());
    wait_until(Duration::from_secs(10), "decoded fetch bytes in the metrics", || async {
        (series(&scrape(&metrics_addr).await, out).unwrap_or(0.0) > before).then_some(())
    })
    .await;

    // A deleted topic's per-partition series leave the output once no longer set.
    let mut controller = cluster.controller().await;
    controller.delete_topic(pb::DeleteTopicRequest { name: "m".into() }).await.unwrap();
    wait_until(Duration::from_secs(30), "the deleted partition's series to go", || async {
        let text = scrape(&metrics_addr).await;
        let gone = !text.contains(r#"tideline_broker_log_end_offset{topic="m""#)
            && !text.contains(r#"tideline_broker_high_watermark{topic="m""#);
        // The process-wide gauges stay: they are set every second.
        let kept = series(&text, "tideline_broker_offline_partitions") == Some(0.0);
        (gone && kept).then_some(())
    })
    .await;
}
