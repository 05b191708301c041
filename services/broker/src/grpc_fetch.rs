//! gRPC `Fetch` answers without copying the batches: the broker's `BrokerService` as tonic
//! generates it, except that `Fetch` answers are framed by [`tideline_proto::grpc_frame`]
//! (the batches read from the segment go to the socket writer as they are, where tonic would
//! copy them into its encode buffer: a third of the broker's CPU in a gRPC consume profile).
//! Requests are decoded, checked and answered by the same `BrokerService::fetch` as before;
//! errors are the same trailers-only statuses, and the bytes on the wire are those tonic
//! would send.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use prost::Message;
use tideline_proto::grpc_frame::{self, Chunks};
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

/// `record_batches` is field 1 of `FetchResponse`.
const RECORD_BATCHES_FIELD: u32 = 1;

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
    let message = grpc_frame::unframe(&body)?;
    let message = pb::FetchRequest::decode(message)
        .map_err(|e| Status::internal(format!("failed to decode FetchRequest: {e}")))?;
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    );
    let (metadata, response, _) = api.fetch(request).await?.into_parts();
    let mut http_response = http::Response::new(Body::new(Chunks::ok_response(frame(response))));
    *http_response.headers_mut() = metadata.into_headers();
    http_response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    Ok(http_response)
}

/// The answer as the chunks of its gRPC frame, the batches not copied (field 1, so first).
fn frame(mut response: pb::FetchResponse) -> Vec<Bytes> {
    let batches = std::mem::take(&mut response.record_batches);
    grpc_frame::chunks(Vec::new(), RECORD_BATCHES_FIELD, batches, response.encode_to_vec())
}
