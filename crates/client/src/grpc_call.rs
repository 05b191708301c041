//! The client's two bulk gRPC calls, framed by hand with [`tideline_proto::grpc_frame`]
//! instead of tonic's codec, which copies a message into one buffer on the way out and on
//! the way in: `Produce`, whose batch goes from the producer's buffer to the socket writer
//! as it is, and `Fetch`, whose `record_batches` comes out as a slice of the HTTP/2 frame it
//! arrived in (the channel accepts frames of up to 16 MiB, so a fetch answer's batches come
//! in one). Both read the answer as tonic would: a trailers-only error, or one message and
//! then `grpc-status` in the trailers; the bytes on the wire are those tonic would send.

use bytes::Bytes;
use prost::Message;
use tideline_proto::grpc_frame::{self, Chunks, Rope};
use tideline_proto::v1 as pb;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cluster::MAX_MESSAGE_BYTES;

/// The HTTP/2 path of `BrokerService/Produce`.
const PRODUCE_PATH: &str = "/tideline.v1.BrokerService/Produce";

/// The HTTP/2 path of `BrokerService/Fetch`.
const FETCH_PATH: &str = "/tideline.v1.BrokerService/Fetch";

/// `record_batches` is field 5 of `ProduceRequest`; `current_leader_epoch` (7) follows it.
const RECORD_BATCHES_FIELD: u32 = 5;

/// Largest `Produce` answer read (a `ProduceResponse` is a few dozen bytes).
const MAX_PRODUCE_ANSWER_BYTES: usize = 64 << 10;

/// Sends `request` on `channel` as `BrokerService/Produce`, the batches not copied.
///
/// # Errors
/// The broker's status, or one for a transport failure or a malformed answer, as tonic's
/// generated client would give them.
pub(crate) async fn produce(
    channel: Channel,
    request: pb::ProduceRequest,
) -> Result<tonic::Response<pb::ProduceResponse>, Status> {
    let pb::ProduceRequest { topic, partition, acks, timeout_ms, current_leader_epoch, payload } =
        request;
    if let Some(pb::produce_request::Payload::RecordBatches(batches)) = &payload
        && batches.len() > MAX_MESSAGE_BYTES
    {
        // As tonic's `max_encoding_message_size`: refused before anything is sent.
        return Err(Status::out_of_range(format!(
            "Produce of {} bytes of batches exceeds the message limit of {MAX_MESSAGE_BYTES}",
            batches.len()
        )));
    }
    let chunks = match payload {
        Some(pb::produce_request::Payload::RecordBatches(batches)) if !batches.is_empty() => {
            let before = pb::ProduceRequest {
                topic,
                partition,
                acks,
                timeout_ms,
                current_leader_epoch: None,
                payload: None,
            };
            let after = pb::ProduceRequest { current_leader_epoch, ..Default::default() };
            grpc_frame::chunks(
                before.encode_to_vec(),
                RECORD_BATCHES_FIELD,
                batches,
                after.encode_to_vec(),
            )
        }
        payload => {
            let request = pb::ProduceRequest {
                topic,
                partition,
                acks,
                timeout_ms,
                current_leader_epoch,
                payload,
            };
            grpc_frame::message(&request)
        }
    };
    let (metadata, message) =
        unary(channel, PRODUCE_PATH, chunks, MAX_PRODUCE_ANSWER_BYTES).await?;
    let message = pb::ProduceResponse::decode(message)
        .map_err(|e| Status::internal(format!("failed to decode ProduceResponse: {e}")))?;
    Ok(tonic::Response::from_parts(metadata, message, http::Extensions::default()))
}

/// Sends `request` on `channel` as `BrokerService/Fetch`; the answer's `record_batches` is a
/// slice of the frame that brought it. Answers above `max_answer` bytes are refused.
///
/// # Errors
/// As [`produce`].
pub(crate) async fn fetch(
    channel: Channel,
    request: &pb::FetchRequest,
    max_answer: usize,
) -> Result<tonic::Response<pb::FetchResponse>, Status> {
    let (metadata, message) =
        unary(channel, FETCH_PATH, grpc_frame::message(request), max_answer).await?;
    let message = pb::FetchResponse::decode(message)
        .map_err(|e| Status::internal(format!("failed to decode FetchResponse: {e}")))?;
    Ok(tonic::Response::from_parts(metadata, message, http::Extensions::default()))
}

/// One unary call: sends the frame `chunks` to `path` and returns the answer's headers and
/// message (still encoded, as the chunks it came in).
async fn unary(
    mut channel: Channel,
    path: &'static str,
    chunks: Vec<Bytes>,
    max_answer: usize,
) -> Result<(MetadataMap, Rope), Status> {
    let mut request = http::Request::new(Body::new(Chunks::request(chunks)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    let headers = request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    // The caller's trace context (W3C `traceparent`), when OpenTelemetry is set up: the
    // broker's span of this call joins the caller's trace.
    inject_current_context(&mut HeaderInjector(headers));

    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let response = channel.call(request).await.map_err(transport_status)?;
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        // Trailers-only: an error (an OK without a message is one here too).
        return Err(if status.code() == Code::Ok {
            Status::internal(format!("{path} answered OK without a message"))
        } else {
            status
        });
    }
    if parts.status != http::StatusCode::OK {
        return Err(http_status(path, parts.status));
    }
    let what = format!("{path} answer");
    let (message, trailers) = grpc_frame::read_body(body, max_answer, &what).await?;
    trailer_status(path, trailers.as_ref())?;
    Ok((MetadataMap::from_headers(parts.headers), message))
}

/// The outcome an answer's trailers give.
fn trailer_status(path: &str, trailers: Option<&http::HeaderMap>) -> Result<(), Status> {
    match trailers.and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => Ok(()),
        Some(status) => Err(status),
        // As tonic: a stream that ended without a status (reset by a proxy, a broker that
        // went away) is UNKNOWN, which the client retries.
        None => Err(Status::unknown(format!(
            "protocol error: {path} answer ended without a grpc-status trailer"
        ))),
    }
}

/// The status for a failed call on the channel (no connection, a reset stream), as tonic
/// gives it.
fn transport_status(error: tonic::transport::Error) -> Status {
    Status::from_error(Box::new(error))
}

/// The status for an HTTP status other than 200, as gRPC maps them.
fn http_status(path: &str, status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("{path} answered HTTP status {status}"))
}

/// A tonic interceptor that sends the current span's W3C trace context (`traceparent`) with
/// each call of the generated clients (metadata, admin, coordinator calls), so that the
/// server's span of the call joins the caller's trace, as the hand-framed produce's does. It
/// writes nothing when there is no OpenTelemetry layer or no span.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TraceContext;

/// A channel whose calls carry the caller's trace context.
pub(crate) type Traced = tonic::service::interceptor::InterceptedService<Channel, TraceContext>;

impl tonic::service::Interceptor for TraceContext {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        inject_current_context(&mut MetadataInjector(request.metadata_mut()));
        Ok(request)
    }
}

/// Writes the current span's W3C trace context with the global propagator (nothing without an
/// OpenTelemetry layer).
fn inject_current_context(injector: &mut dyn opentelemetry::propagation::Injector) {
    let context = tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, injector));
}

/// Writes W3C trace context into a tonic request's metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Writes W3C trace context into request headers.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trailers give OK, the broker's status, or UNKNOWN (retried) when they are missing, as
    /// tonic's client reads them.
    #[test]
    fn trailers_give_the_status_tonic_would() {
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert!(trailer_status(FETCH_PATH, Some(&ok)).is_ok());
        let mut refused = http::HeaderMap::new();
        refused.insert("grpc-status", http::HeaderValue::from_static("11"));
        refused.insert("grpc-message", http::HeaderValue::from_static("offset%2011%20past"));
        let status = trailer_status(FETCH_PATH, Some(&refused)).unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::OutOfRange, "offset 11 past"));
        for missing in [None, Some(&http::HeaderMap::new())] {
            assert_eq!(trailer_status(FETCH_PATH, missing).unwrap_err().code(), Code::Unknown);
        }
        assert_eq!(
            http_status(FETCH_PATH, http::StatusCode::BAD_GATEWAY).code(),
            Code::Unavailable
        );
    }

    /// A batch beyond the message limit is refused before anything is sent (the channel
    /// points nowhere), as tonic's encoding limit refused it.
    #[tokio::test]
    async fn oversized_produce_is_refused_before_sending() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let request = pb::ProduceRequest {
            topic: "t".into(),
            payload: Some(pb::produce_request::Payload::RecordBatches(Bytes::from(vec![
                0u8;
                MAX_MESSAGE_BYTES
                    + 1
            ]))),
            ..Default::default()
        };
        let status = produce(channel, request).await.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status}");
    }
}
