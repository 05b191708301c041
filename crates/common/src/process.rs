//! What every Tideline binary does the same way: a runtime, one-line errors with a non-zero
//! exit status, text or JSON logs, Prometheus metrics on an admin port, and a clean stop on
//! SIGTERM or Ctrl-C.

use std::fmt::Display;
use std::future::Future;

/// Runs `main` on a multi-threaded Tokio runtime. An error is printed as one line
/// (`error: ...`, with its causes) and the process exits with status 1.
pub fn run_main<E: Display, F: Future<Output = Result<(), E>>>(main: impl FnOnce() -> F) {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(main()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Starts logging to stderr as `text` or `json`, filtered by `RUST_LOG` (default: info, with
/// openraft and sled at warn). When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also
/// exported over OTLP/gRPC as those of `service` (the `OTEL_*` variables of the OpenTelemetry
/// SDK apply, e.g. `OTEL_BSP_SCHEDULE_DELAY`), and W3C trace context is read from and written
/// to gRPC calls, so that one request is one trace across processes. Call inside the runtime,
/// and [`Tracing::shutdown`] the result at the end, so that the last spans are sent.
pub fn init_tracing(service: &'static str, format: &str) -> Tracing {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    let provider = match std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(_) => match otlp_provider(service) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("warning: no OTLP trace export: {e}");
                None
            }
        },
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    tracing_subscriber::registry().with(fmt).with(otel).with(filter).init();
    Tracing(provider)
}

/// Trace export of a process, from [`init_tracing`].
#[derive(Debug)]
#[must_use = "shut it down at the end, or the spans of the last moments are lost"]
pub struct Tracing(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Tracing {
    /// Sends the spans still batched and stops the export (nothing to do without it).
    pub async fn shutdown(self) {
        if let Some(provider) = self.0 {
            // The SDK's shutdown blocks until the exporter is done.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// A tracer provider exporting `service`'s spans over OTLP/gRPC (the endpoint and batching
/// from the `OTEL_*` environment), installed as the global one with the W3C propagator.
///
/// # Errors
/// The exporter's, as text.
pub fn otlp_provider(
    service: &'static str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// Serves the process's metrics (the `metrics` facade) for Prometheus at `http://addr/metrics`
/// (`--metrics-listen`). Call once per process, inside the runtime. With `stale_gauges_after`,
/// a gauge not set for that long leaves the output: for a process that sets its gauges
/// periodically, so that the series of something gone (a deleted or moved partition) do not
/// linger until a restart.
///
/// # Errors
/// One line naming the address when it cannot be served (taken, or a recorder is installed).
pub fn serve_metrics(
    addr: std::net::SocketAddr,
    stale_gauges_after: Option<std::time::Duration>,
) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use metrics_util::MetricKindMask;
    // Durations (`*_seconds`) as histograms with these buckets, not summaries: histograms
    // aggregate over instances and over time in PromQL.
    const SECONDS: [f64; 14] =
        [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .map(|b| b.idle_timeout(MetricKindMask::GAUGE, stale_gauges_after))
        .and_then(|b| b.install())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}
