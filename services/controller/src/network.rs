//! Raft RPCs between controllers over gRPC (`tideline.v1.RaftService`, internal, not for
//! clients). openraft's request and response types travel as JSON in a `RaftPayload`; the
//! server answers with the serialized `Result` of the local Raft call, so a remote Raft error
//! reaches the caller as [`RPCError::RemoteError`] and a transport failure as
//! [`RPCError::Unreachable`] (openraft then backs off and retries).
#![allow(clippy::result_large_err)]

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tideline_proto::v1::RaftPayload;
use tideline_proto::v1::raft_service_client::RaftServiceClient;
use tideline_proto::v1::raft_service_server::RaftService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::types::TypeConfig;

type NodeId = u64;

/// Connect timeout for a peer; Raft retries with backoff on failure.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Creates connections to peers (openraft asks for one per replication target).
#[derive(Debug, Clone, Default)]
pub struct GrpcNetwork;

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcConnection {
        GrpcConnection { target, addr: node.addr.clone(), client: None }
    }
}

/// A lazily connected gRPC client to one peer; reconnects after a transport error.
#[derive(Debug)]
pub struct GrpcConnection {
    target: NodeId,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl GrpcConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: &dyn std::error::Error| {
            RPCError::Unreachable(Unreachable::new(&AnyErr(e.to_string())))
        };
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
                    .map_err(|e| unreachable(&e))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(option.hard_ttl());
                let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
                self.client
                    .insert(RaftServiceClient::new(channel).max_decoding_message_size(64 << 20))
            }
        };
        let data = serde_json::to_vec(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .into();
        let payload = RaftPayload { data };
        let answer = match rpc {
            Rpc::AppendEntries => client.append_entries(payload).await,
            Rpc::Vote => client.vote(payload).await,
            Rpc::InstallSnapshot => client.install_snapshot(payload).await,
        };
        let answer = match answer {
            Ok(answer) => answer.into_inner(),
            Err(status) => {
                self.client = None;
                return Err(unreachable(&AnyErr(format!(
                    "{}: {}",
                    status.code(),
                    status.message()
                ))));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&answer.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A plain error carrying a message, for openraft's error constructors.
#[derive(Debug)]
struct AnyErr(String);

impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyErr {}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// The `RaftService` server: hands each request to the local Raft node.
#[derive(Clone)]
pub struct RaftGrpcService {
    raft: Raft<TypeConfig>,
}

impl std::fmt::Debug for RaftGrpcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGrpcService").finish_non_exhaustive()
    }
}

impl RaftGrpcService {
    /// Serves `raft`.
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        RaftGrpcService { raft }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(value)
        .map_err(|e| Status::internal(format!("encode raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
