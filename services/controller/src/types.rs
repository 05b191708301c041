//! The openraft type configuration of the controller quorum.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

use crate::metadata::{MetadataCommand, MetadataResponse};

openraft::declare_raft_types!(
    /// Raft types of the controller: metadata commands in, metadata responses out, nodes
    /// addressed by their gRPC address.
    pub TypeConfig:
        D = MetadataCommand,
        R = MetadataResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
