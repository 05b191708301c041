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
//! service lacks (not in `tideline_proto::GRPC_METHODS`) count under `method="unknown"`, so
//! that a client cannot grow the label set; a real method's refusal keeps its name, whatever
//! its code (`UNIMPLEMENTED` for a compressed request, say).
//!
//! A call whose future is dropped before it answered (the client gave up or went away)
//! counts as `CANCELLED`.
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
    /// Whether each call gets a span (not for chatty internal services).
    traced: bool,
}

impl<S> Metered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Metered { inner, traced: true }
    }

    /// Wraps `inner`, counting and timing its calls without a span each: for the Raft
    /// service, whose heartbeats would otherwise be several traces a second per follower.
    pub fn untraced(inner: S) -> Self {
        Metered { inner, traced: false }
    }
}

/// Records a call when dropped: with the code set once the call answered, or as `CANCELLED`
/// when the call's future was dropped first (a client that gave up or went away).
struct Record {
    service: &'static str,
    /// The method's label: a real method's name, or `unknown`.
    method: &'static str,
    started: Instant,
    code: &'static str,
}

impl Drop for Record {
    fn drop(&mut self) {
        metrics::counter!(
            "tideline_grpc_requests_total",
            "service" => self.service,
            "method" => self.method,
            "code" => self.code,
        )
        .increment(1);
        metrics::histogram!(
            "tideline_grpc_request_duration_seconds",
            "service" => self.service,
            "method" => self.method,
        )
        .record(self.started.elapsed().as_secs_f64());
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
        let started = Instant::now();
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        // Only real method names label metrics: a client must not grow the label set with
        // made-up ones. The names are `'static`: nothing is allocated per call for them.
        let label = tideline_proto::known_method(S::NAME, method).unwrap_or("unknown");
        let span = if self.traced {
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(request.headers()))
            });
            let span = tracing::info_span!(
                "rpc",
                otel.name = format!("{}/{method}", S::NAME),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = S::NAME,
                rpc.method = method,
            );
            // Without an OpenTelemetry layer there is nothing to parent: not an error.
            let _ = span.set_parent(parent);
            span
        } else {
            tracing::Span::none()
        };
        let mut record = Record { service: S::NAME, method: label, started, code: "CANCELLED" };
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let result = call.await;
            record.code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_name),
                // The transport failed under the call: no gRPC answer.
                Err(_) => "UNAVAILABLE",
            };
            drop(record);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A service answering every call with UNIMPLEMENTED, as tonic does for a method it lacks
    /// and as the broker does for a compressed request to a real one.
    #[derive(Clone)]
    struct Refusing;

    impl NamedService for Refusing {
        const NAME: &'static str = "tideline.v1.BrokerService";
    }

    impl Service<http::Request<()>> for Refusing {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let response = http::Response::builder().header("grpc-status", "12").body(());
            std::future::ready(Ok(response.expect("a valid response")))
        }
    }

    /// Made-up method names share the label `unknown`; a real method keeps its name whatever
    /// its answer.
    #[test]
    fn only_real_methods_get_their_own_label() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                for method in ["Produce", "MadeUp", "AlsoMadeUp"] {
                    let path = format!("/tideline.v1.BrokerService/{method}");
                    let request = http::Request::builder().uri(path).body(()).unwrap();
                    Metered::untraced(Refusing).call(request).await.unwrap();
                }
            });
        });
        let text = handle.render();
        let line = |method: &str| {
            format!(
                r#"tideline_grpc_requests_total{{service="tideline.v1.BrokerService",method="{method}",code="UNIMPLEMENTED"}}"#
            )
        };
        assert!(text.contains(&format!("{} 1", line("Produce"))), "{text}");
        assert!(text.contains(&format!("{} 2", line("unknown"))), "{text}");
        assert!(!text.contains("MadeUp"), "{text}");
    }
}
