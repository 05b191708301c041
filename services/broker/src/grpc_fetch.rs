//! gRPC `Fetch` answers without copying the batches: the broker's `BrokerService` as tonic
//! generates it, except that `Fetch` responses are framed here. tonic encodes a response by
//! copying every field into one buffer, so a 1 MiB `record_batches` was copied once more
//! than needed on every fetch (a third of the broker's CPU in a gRPC consume profile).
//! Here the message goes out as three HTTP/2 data chunks: the gRPC frame prefix with the
//! `record_batches` field's key and length, the batches themselves (the buffer read from the
//! segment, handed to the socket writer as it is), and the other fields. The bytes on the
//! wire are exactly those tonic would send (fields in number order), so every gRPC client
//! reads them as before. Requests are decoded, checked and answered by the same
//! [`BrokerService::fetch`](tideline_proto::v1::broker_service_server::BrokerService::fetch)
//! as before; errors are the same trailers-only statuses.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use prost::Message;
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_server::{BrokerService, BrokerServiceServer};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::service::BrokerApi;

/// The HTTP/2 path of `BrokerService/Fetch`.
const FETCH_PATH: &str = "/tideline.v1.BrokerService/Fetch";

/// Largest `Fetch` request body accepted (a request is a few dozen bytes).
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// `record_batches` is field 1 of `FetchResponse`, length-delimited (wire type 2).
const RECORD_BATCHES_KEY: u8 = (1 << 3) | 2;

/// The broker's gRPC service: `Fetch` framed without a copy of the batches, every other
/// method served by tonic's generated server.
#[derive(Debug, Clone)]
pub struct BrokerGrpc {
    api: BrokerApi,
    generated: BrokerServiceServer<BrokerApi>,
}

impl BrokerGrpc {
    /// Serves `api`; `generated` is tonic's server over the same API (with its message size
    /// limits), used for every method but `Fetch`.
    pub fn new(api: BrokerApi, generated: BrokerServiceServer<BrokerApi>) -> Self {
        BrokerGrpc { api, generated }
    }
}

impl NamedService for BrokerGrpc {
    const NAME: &'static str = <BrokerServiceServer<BrokerApi> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for BrokerGrpc {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <BrokerServiceServer<BrokerApi> as Service<http::Request<Body>>>::poll_ready(
            &mut self.generated,
            cx,
        )
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != FETCH_PATH {
            return self.generated.call(request);
        }
        let api = self.api.clone();
        Box::pin(async move {
            Ok(match fetch(&api, request).await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Decodes a `Fetch` request, runs it, and frames the answer.
async fn fetch(
    api: &BrokerApi,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    let (parts, body) = request.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(Status::unimplemented(format!(
            "request compression {encoding:?} is not supported: send Fetch uncompressed"
        )));
    }
    let body = Limited::new(body, MAX_REQUEST_BYTES + 5)
        .collect()
        .await
        .map_err(|e| {
            Status::new(
                Code::ResourceExhausted,
                format!("fetch request body unreadable or too large: {e}"),
            )
        })?
        .to_bytes();
    let message = unframe(&body)?;
    let message = pb::FetchRequest::decode(message)
        .map_err(|e| Status::internal(format!("failed to decode FetchRequest: {e}")))?;
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    );
    let (metadata, response, _) = api.fetch(request).await?.into_parts();
    let mut http_response = http::Response::new(Body::new(Chunks::new(frame(response))));
    *http_response.headers_mut() = metadata.into_headers();
    http_response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    Ok(http_response)
}

/// The message of a request body holding one uncompressed gRPC frame.
fn unframe(body: &Bytes) -> Result<Bytes, Status> {
    let invalid = |what: &str| Status::internal(format!("malformed gRPC request frame: {what}"));
    if body.len() < 5 {
        return Err(invalid("shorter than the 5-byte prefix"));
    }
    if body[0] != 0 {
        return Err(Status::unimplemented(
            "compressed Fetch requests are not supported: send Fetch uncompressed",
        ));
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if length != body.len() - 5 {
        return Err(invalid(&format!(
            "the prefix announces {length} bytes, {} follow",
            body.len() - 5
        )));
    }
    Ok(body.slice(5..))
}

/// The response as the chunks of one gRPC frame, the batches not copied: the prefix and the
/// `record_batches` key and length, the batches, the other fields (the same bytes as
/// `response.encode`, in the same order).
fn frame(mut response: pb::FetchResponse) -> Vec<Bytes> {
    let batches = std::mem::take(&mut response.record_batches);
    let rest = response.encode_to_vec();
    let field_head = if batches.is_empty() {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(batches.len() as u64)
    };
    let message_len = field_head + batches.len() + rest.len();
    let mut head = BytesMut::with_capacity(5 + field_head);
    head.put_u8(0);
    head.put_u32(u32::try_from(message_len).expect("a fetch answer is far below 4 GiB"));
    if !batches.is_empty() {
        head.put_u8(RECORD_BATCHES_KEY);
        prost::encoding::encode_varint(batches.len() as u64, &mut head);
    }
    let mut chunks = vec![head.freeze()];
    if !batches.is_empty() {
        chunks.push(batches);
    }
    if !rest.is_empty() {
        chunks.push(Bytes::from(rest));
    }
    chunks
}

/// A response body: data chunks, then the `grpc-status: 0` trailers.
struct Chunks {
    data: VecDeque<Bytes>,
    trailers_sent: bool,
}

impl Chunks {
    fn new(data: Vec<Bytes>) -> Self {
        Chunks { data: data.into(), trailers_sent: false }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(chunk) = self.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.trailers_sent {
            return Poll::Ready(None);
        }
        self.trailers_sent = true;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_sent && self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks put together are the bytes tonic would send: the prefix, then exactly
    /// `response.encode_to_vec()`; with and without batches.
    #[test]
    fn frames_are_the_bytes_tonic_would_send() {
        for batches in [Bytes::new(), Bytes::from(vec![7u8; 300]), Bytes::from(vec![1u8; 70_000])] {
            let response = pb::FetchResponse {
                record_batches: batches.clone(),
                records: Vec::new(),
                high_watermark: 42,
                log_start_offset: 3,
                next_offset: 40,
            };
            let expected = response.encode_to_vec();
            let chunks = frame(response);
            let wire: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(wire[0], 0, "uncompressed");
            assert_eq!(u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize, expected.len());
            assert_eq!(&wire[5..], &expected[..], "{} bytes of batches", batches.len());
            if !batches.is_empty() {
                assert_eq!(chunks[1].as_ptr(), batches.as_ptr(), "the batches are not copied");
            }
        }
    }

    /// Bad request frames are refused with a status, never a panic.
    #[test]
    fn malformed_request_frames_are_refused() {
        assert_eq!(unframe(&Bytes::from_static(b"\0\0\0")).unwrap_err().code(), Code::Internal);
        let compressed = Bytes::from_static(b"\x01\0\0\0\x01x");
        assert_eq!(unframe(&compressed).unwrap_err().code(), Code::Unimplemented);
        let short = Bytes::from_static(b"\0\0\0\0\x09abc");
        assert_eq!(unframe(&short).unwrap_err().code(), Code::Internal);
        let good = Bytes::from_static(b"\0\0\0\0\x03abc");
        assert_eq!(&unframe(&good).unwrap()[..], b"abc");
    }
}
