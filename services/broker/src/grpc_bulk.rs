//! The broker's two bulk gRPC methods framed by hand with [`tideline_proto::grpc_frame`],
//! the others served by tonic's generated server: tonic's codec copies every message into
//! one buffer, which for `Fetch` answers and `Produce` requests is a whole extra pass over
//! the batches (a third of the broker's CPU in a gRPC consume profile). A `Fetch` answer goes
//! out as chunks, the batches read from the segment handed to the socket writer as they
//! are; a `Produce` request's `record_batches` is a slice of the HTTP/2 frame it arrived in
//! (the server accepts 16 MiB frames), handed to the log append as it is. Requests are
//! checked and answered by the same `BrokerService` methods as before; errors are the same
//! trailers-only statuses, and the bytes on the wire are those tonic would send.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message;
use tideline_proto::grpc_frame::{self, Chunks};
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_server::{BrokerService, BrokerServiceServer};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

use crate::config::MAX_MESSAGE_BYTES;
use crate::service::BrokerApi;

/// The HTTP/2 path of `BrokerService/Fetch`.
const FETCH_PATH: &str = "/tideline.v1.BrokerService/Fetch";

/// The HTTP/2 path of `BrokerService/Produce`.
const PRODUCE_PATH: &str = "/tideline.v1.BrokerService/Produce";

/// Largest `Fetch` request accepted (a request is a few dozen bytes).
const MAX_FETCH_REQUEST_BYTES: usize = 64 << 10;

/// `record_batches` is field 1 of `FetchResponse`.
const RECORD_BATCHES_FIELD: u32 = 1;

/// The broker's gRPC service: `Fetch` and `Produce` framed without a copy of the batches,
/// every other method served by tonic's generated server.
#[derive(Debug, Clone)]
pub struct BrokerGrpc {
    api: BrokerApi,
    generated: BrokerServiceServer<BrokerApi>,
}

impl BrokerGrpc {
    /// Serves `api`; `generated` is tonic's server over the same API (with its message size
    /// limits), used for every method but `Fetch` and `Produce`.
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
        let api = self.api.clone();
        let answer = match request.uri().path() {
            FETCH_PATH => Box::pin(async move { fetch(&api, request).await }) as BoxFuture<_, _>,
            PRODUCE_PATH => Box::pin(async move { produce(&api, request).await }),
            _ => return self.generated.call(request),
        };
        Box::pin(async move {
            Ok(match answer.await {
                Ok(response) => response,
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Runs a `Fetch` and frames the answer, the batches not copied.
async fn fetch(
    api: &BrokerApi,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    let request = read_request::<pb::FetchRequest>(request, MAX_FETCH_REQUEST_BYTES).await?;
    let topic = request.get_ref().topic.clone();
    let (metadata, mut answer, _) = api.fetch(request).await?.into_parts();
    let batches = std::mem::take(&mut answer.record_batches);
    crate::metrics::fetched(&topic, "grpc", batches.len() as u64);
    let chunks =
        grpc_frame::chunks(Vec::new(), RECORD_BATCHES_FIELD, batches, answer.encode_to_vec());
    Ok(ok_response(metadata, chunks))
}

/// Runs a `Produce` whose batches were not copied on the way in.
async fn produce(
    api: &BrokerApi,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    let request = read_request::<pb::ProduceRequest>(request, MAX_MESSAGE_BYTES).await?;
    let (metadata, answer, _) = api.produce(request).await?.into_parts();
    Ok(ok_response(metadata, grpc_frame::message(&answer)))
}

/// Reads a unary request of at most `limit` bytes from its HTTP/2 frames without joining
/// them (a `bytes` field within one frame is a slice of it), and decodes it.
async fn read_request<T: Message + Default>(
    request: http::Request<Body>,
    limit: usize,
) -> Result<tonic::Request<T>, Status> {
    let (parts, body) = request.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(Status::unimplemented(format!(
            "request compression {encoding:?} is not supported by {}: send it uncompressed",
            parts.uri.path()
        )));
    }
    let what = format!("{} request", parts.uri.path());
    let (message, _trailers) = grpc_frame::read_body(body, limit, &what).await?;
    let message = T::decode(message).map_err(|e| {
        Status::internal(format!("failed to decode the {} request: {e}", parts.uri.path()))
    })?;
    Ok(tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        message,
    ))
}

/// A successful answer: `metadata` as headers, the frame `chunks`, `grpc-status: 0`.
fn ok_response(metadata: MetadataMap, chunks: Vec<Bytes>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Chunks::ok_response(chunks)));
    let mut headers = metadata.into_headers();
    // As tonic: headers reserved for gRPC itself never come from a handler's metadata.
    for reserved in
        ["te", "user-agent", "content-type", "grpc-message", "grpc-message-type", "grpc-status"]
    {
        headers.remove(reserved);
    }
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}
