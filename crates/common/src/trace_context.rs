//! W3C trace context as a string, for spans that continue a trace outside a gRPC call's
//! headers: the leader remembers the `traceparent` of each traced produce with the offsets it
//! appended, and hands it to the followers that replicate those records, whose `replicate`
//! spans then join the produce's trace.

use std::collections::HashMap;

use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` of the current span when it is part of a sampled OpenTelemetry trace
/// (`None` without an OpenTelemetry layer, or when not sampled: nothing to continue).
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    {
        use opentelemetry::trace::TraceContextExt;
        let span = context.span();
        let sc = span.span_context();
        if !sc.is_valid() || !sc.is_sampled() {
            return None;
        }
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `traceparent` the parent of `span` (ignored when it does not parse, or without an
/// OpenTelemetry layer).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(parent);
}
