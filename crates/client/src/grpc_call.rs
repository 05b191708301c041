//! The client's two bulk gRPC calls, framed by hand with [`tideline_proto::grpc_frame`]
//! instead of tonic's codec, which copies a message into one buffer on the way out and on
//! the way in: `Produce`, whose batch goes from the producer's buffer to the socket writer
//! as it is, and `Fetch`, whose `record_batches` comes out as a slice of the HTTP/2 frame it
//! arrived in (the channel accepts frames of up to 16 MiB, so a fetch answer's batches come
//! in one). Both read the answer as tonic would: a trailers-only error, or one message and
//! then `grpc-status` in the trailers; the bytes on the wire are those tonic would send.

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use prost::Message;
use tideline_proto::grpc_frame::{self, Chunks, Rope};
use tideline_proto::v1 as pb;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Status};

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
            whole(&request)
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
    let (metadata, message) = unary(channel, FETCH_PATH, whole(request), max_answer).await?;
    let message = pb::FetchResponse::decode(message)
        .map_err(|e| Status::internal(format!("failed to decode FetchResponse: {e}")))?;
    Ok(tonic::Response::from_parts(metadata, message, http::Extensions::default()))
}

/// A small message as the one chunk of its gRPC frame.
fn whole(message: &impl Message) -> Vec<Bytes> {
    grpc_frame::chunks(message.encode_to_vec(), 0, Bytes::new(), Vec::new())
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

    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(transport_status)?;
    let response = channel.call(request).await.map_err(transport_status)?;
    let (parts, mut body) = response.into_parts();
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
    let mut message = Rope::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                if message.remaining() + data.len() > max_answer + 5 {
                    return Err(Status::new(
                        Code::OutOfRange,
                        format!("{path} answer larger than {max_answer} bytes"),
                    ));
                }
                message.push(data);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => {}
        Some(status) => return Err(status),
        None => return Err(Status::internal(format!("{path} answer without grpc-status"))),
    }
    Ok((MetadataMap::from_headers(parts.headers), message.unframe()?))
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
