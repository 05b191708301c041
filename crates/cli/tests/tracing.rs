//! Traces over OTLP: two broker processes started with `OTEL_EXPORTER_OTLP_ENDPOINT` export
//! their spans to a small OTLP receiver run by the test, and an acks=all produce from a traced
//! client (this test, exporting to the same receiver) shows up as one trace across client,
//! leader and follower: the client's `produce` span, the leader's span of the `Produce` call
//! (its child), and the follower's `replicate` span of those records (the leader's child). An
//! admin call (a generated tonic client) made in a span is that span's child at the
//! controller.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tideline_client::{
    Acks, Admin, ClientConfig, Cluster, Producer, ProducerConfig, ProducerRecord,
};
use tideline_common::testing::{ServiceProcess, wait_until};
use tideline_controller::node::{ControllerNode, NodeConfig};
use tracing_subscriber::prelude::*;

/// One received span: its service, name, trace id, span id and parent span id.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    span: Vec<u8>,
    parent: Vec<u8>,
}

/// An OTLP/gRPC trace receiver keeping every span it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for s in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: s.name,
                        trace: s.trace_id,
                        span: s.span_id,
                        parent: s.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_is_one_trace_across_client_leader_and_follower() {
    // The receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let serving = receiver.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    // This test is a traced client, exporting to the receiver as "test-client".
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&otlp)
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder().with_service_name("test-client").build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // As the services filter (`process::init_tracing`): openraft's debug and trace spans in
    // the in-process controller would otherwise flood the batch exporter's queue, which drops
    // spans once full.
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test-client")))
        .with(tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"))
        .init();

    // A controller in-process, a broker process exporting to the receiver.
    let root = tempfile::tempdir().unwrap();
    let controller_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller_addr = controller_listener.local_addr().unwrap().to_string();
    let mut config = NodeConfig::new(
        1,
        root.path().join("controller"),
        BTreeMap::from([(1, controller_addr.clone())]),
    );
    config.offsets_topic_replication_factor = 1;
    let controller = ControllerNode::start(config, controller_listener).await.unwrap();
    let _brokers: Vec<ServiceProcess> = (1..=2)
        .map(|id| {
            let log = root.path().join(format!("broker-{id}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_tide"))
                .args(["broker", "--broker-id", &id.to_string()])
                .args(["--controllers", &controller_addr, "--listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(root.path().join(format!("broker-{id}")))
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out))
                .spawn()
                .unwrap();
            ServiceProcess::new(format!("broker {id}"), child, log)
        })
        .collect();

    let cluster = Cluster::new(ClientConfig::new([controller_addr.clone()])).unwrap();
    let admin = Admin::new(&cluster);
    wait_until(Duration::from_secs(30), "the topic to be created", || async {
        admin.create_topic("traced", 1, 2, Default::default()).await.ok()
    })
    .await;
    let producer =
        Producer::new(&cluster, ProducerConfig { acks: Acks::All, ..Default::default() }).unwrap();
    // A few produces, one at a time: each is committed once the follower fetched it.
    for i in 0..5 {
        wait_until(Duration::from_secs(30), "a produce to succeed", || async {
            let record = ProducerRecord::new("traced").value(format!("hello {i}"));
            producer.send_and_wait(record).await.ok()
        })
        .await;
    }
    producer.close().await;
    // A call through a generated client (admin) carries the trace context too.
    {
        use tracing::Instrument;
        let span = tracing::info_span!("admin-call");
        admin.describe_topic("traced").instrument(span).await.unwrap();
    }
    // The client's spans go out with its batch exporter's next round; push them now.
    let flushing = provider.clone();
    tokio::task::spawn_blocking(move || flushing.force_flush()).await.unwrap().unwrap();

    // The client's produce span, the leader's Produce span and the follower's replicate span:
    // one trace, each the child of the one before.
    let spans = receiver.spans.clone();
    let (client, leader, follower) =
        wait_until(Duration::from_secs(30), "the three spans at the receiver", || {
            let spans = spans.lock().unwrap().clone();
            async move {
                spans.iter().filter(|s| s.service == "test-client" && s.name == "produce").find_map(
                    |c| {
                        let b = spans.iter().find(|b| {
                            b.service == "tideline-broker"
                                && b.name == "tideline.v1.BrokerService/Produce"
                                && b.trace == c.trace
                        })?;
                        let f = spans.iter().find(|f| {
                            f.service == "tideline-broker"
                                && f.name == "replicate"
                                && f.trace == c.trace
                        })?;
                        Some((c.clone(), b.clone(), f.clone()))
                    },
                )
            }
        })
        .await;
    assert_eq!(leader.parent, client.span, "the leader's span is the client's child");
    assert_eq!(follower.parent, leader.span, "the follower's span is the leader's child");
    assert!(client.trace.iter().any(|b| *b != 0), "a real trace id");
    // The controller runs in this process (its spans go out as "test-client"), but its task is
    // not the caller's: only the traceparent in the request can make it the admin span's child.
    // Flushed again each round: the server span may end after the flush above.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let flushing = provider.clone();
        tokio::task::spawn_blocking(move || flushing.force_flush()).await.unwrap().unwrap();
        let spans = spans.lock().unwrap().clone();
        let caller = spans.iter().find(|s| s.name == "admin-call");
        let found = caller.is_some_and(|caller| {
            spans.iter().any(|s| {
                s.name == "tideline.v1.ControllerService/DescribeTopic"
                    && s.parent == caller.span
                    && s.trace == caller.trace
            })
        });
        if found {
            break;
        }
        if std::time::Instant::now() > deadline {
            let seen: Vec<&Received> = spans
                .iter()
                .filter(|s| s.name == "admin-call" || s.name.ends_with("/DescribeTopic"))
                .collect();
            panic!("no DescribeTopic server span under the admin-call span in 30 s: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    controller.shutdown().await;
}
