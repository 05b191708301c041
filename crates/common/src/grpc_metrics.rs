//! Per-RPC metrics of a gRPC server: [`Metered`] wraps a service (tonic's generated servers,
//! or the broker's hand-framed one) and counts each call and its time, labelled by service,
//! method and gRPC status code:
//!
//! - `tideline_grpc_requests_total{service,method,code}`: calls answered;
//! - `tideline_grpc_request_duration_seconds{service,method}`: from the request's arrival
//!   to its response headers (for a unary call, its whole handling; for a server stream, until
//!   the stream starts).
//!
//! The code is the `grpc-status` of the response headers (errors are trailers-only responses),
//! `OK` when there is none there (a success puts it in the trailers). Calls to methods the
//! service lacks count under `method="unknown"`, so that a client cannot grow the label set.
//!
//! Each call also runs in a `tracing` span (`SERVICE/METHOD`, kind server) whose parent is
//! the W3C trace context the caller sent (`traceparent`), so that with OTLP export on (see
//! `process::init_tracing`) a call is part of its caller's trace.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::Extractor;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A gRPC service whose calls are counted and timed (see the module doc).
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

impl<S> Metered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Metered { inner }
    }
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

/// The name of a gRPC status code number, as Prometheus label value.
fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

impl<S, B, RB> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + NamedService,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let started = Instant::now();
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(request.headers()))
        });
        let span = tracing::info_span!(
            "rpc",
            otel.name = format!("{}/{method}", S::NAME),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = S::NAME,
            rpc.method = method.as_str(),
        );
        // Without an OpenTelemetry layer there is nothing to parent: not an error.
        let _ = span.set_parent(parent);
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_name),
                // The transport failed under the call: no gRPC answer.
                Err(_) => "UNAVAILABLE",
            };
            let method = if code == "UNIMPLEMENTED" { "unknown".to_string() } else { method };
            metrics::counter!(
                "tideline_grpc_requests_total",
                "service" => S::NAME,
                "method" => method.clone(),
                "code" => code,
            )
            .increment(1);
            metrics::histogram!(
                "tideline_grpc_request_duration_seconds",
                "service" => S::NAME,
                "method" => method,
            )
            .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
