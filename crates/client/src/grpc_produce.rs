//! The producer's gRPC `Produce` call, with the request framed by
//! [`tideline_proto::grpc_frame`] so the batch goes from the producer's buffer to the socket
//! writer without tonic's copy into its encode buffer. The answer (a few fields) is read as
//! tonic would: a trailers-only error, or one message then `grpc-status` in the trailers.

use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use tideline_proto::grpc_frame::{self, Chunks};
use tideline_proto::v1 as pb;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The HTTP/2 path of `BrokerService/Produce`.
const PRODUCE_PATH: &str = "/tideline.v1.BrokerService/Produce";

/// `record_batches` is field 5 of `ProduceRequest`; `current_leader_epoch` (7) follows it.
const RECORD_BATCHES_FIELD: u32 = 5;

/// Largest answer read (a `ProduceResponse` is a few dozen bytes).
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// Sends `request` on `channel` as `BrokerService/Produce`, the batches not copied.
///
/// # Errors
/// The broker's status, or one for a transport failure or a malformed answer, as tonic's
/// generated client would give them.
pub(crate) async fn produce(
    mut channel: Channel,
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
            grpc_frame::chunks(request.encode_to_vec(), 0, Bytes::new(), Vec::new())
        }
    };
    let mut http_request = http::Request::new(Body::new(Chunks::request(chunks)));
    *http_request.method_mut() = http::Method::POST;
    *http_request.uri_mut() = http::Uri::from_static(PRODUCE_PATH);
    let headers = http_request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));

    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(transport_status)?;
    let response = channel.call(http_request).await.map_err(transport_status)?;
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        // Trailers-only: an error (or an OK without a message, which is an error here too).
        return Err(if status.code() == Code::Ok {
            Status::internal("Produce answered OK without a message")
        } else {
            status
        });
    }
    if parts.status != http::StatusCode::OK {
        return Err(http_status(parts.status));
    }
    let collected = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(e) => Status::internal(format!("reading the Produce answer: {e}")),
        })?;
    match collected.trailers().and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => {}
        Some(status) => return Err(status),
        None => return Err(Status::internal("Produce answer without grpc-status trailers")),
    }
    let message = grpc_frame::unframe(&collected.to_bytes())?;
    let message = pb::ProduceResponse::decode(message)
        .map_err(|e| Status::internal(format!("failed to decode ProduceResponse: {e}")))?;
    Ok(tonic::Response::from_parts(
        MetadataMap::from_headers(parts.headers),
        message,
        http::Extensions::default(),
    ))
}

/// The status for a failed call on the channel (no connection, a reset stream), as tonic
/// gives it.
fn transport_status(error: tonic::transport::Error) -> Status {
    Status::from_error(Box::new(error))
}

/// The status for an HTTP status other than 200, as gRPC maps them.
fn http_status(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("Produce answered HTTP status {status}"))
}
