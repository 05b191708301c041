//! [`ClientError`]: every way a client call fails, with the server's code and message.

use std::time::Duration;

use tideline_common::{ErrorCode, error_code_of, leader_hint_of};
use tideline_log::BatchError;

/// Why a client call failed. The `Display` is one readable line that includes the server's
/// message; [`ClientError::code`] gives the machine-readable [`ErrorCode`] when there is one.
///
/// Errors nested in a variant (the last error of a retry loop, a batch decoding error) are
/// part of the one-line message rather than a `source()` chain, so printing the error alone
/// tells the whole story.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A Tideline node refused the request and said why.
    #[error("{operation} at {address} failed: {}: {message}", code_name(*code))]
    Server {
        /// What was attempted, e.g. `produce to orders-3`.
        operation: String,
        /// The node that answered (`host:port`).
        address: String,
        /// The Tideline error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
        /// For `NOT_LEADER` and `NOT_CONTROLLER`: the id and address of the node that leads.
        leader: Option<(i64, String)>,
    },
    /// The request did not reach the node or its answer did not come back: connection
    /// refused or reset, or no answer in time. Retried by every client.
    #[error("{operation} at {address} failed: {message}")]
    Transport {
        /// What was attempted.
        operation: String,
        /// The node tried (`host:port`).
        address: String,
        /// What went wrong.
        message: String,
    },
    /// A gRPC error that carries no Tideline error code (e.g. `UNIMPLEMENTED` from a node of
    /// another version, or a message over the size limit).
    #[error("{operation} at {address} failed: grpc status {code:?}: {message}")]
    Rpc {
        /// What was attempted.
        operation: String,
        /// The node that answered (`host:port`).
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// An operation kept failing with retriable errors (or waiting) until its time ran out.
    #[error("{operation} timed out after {after:?}{}", last_error_suffix(*attempts, last.as_deref()))]
    TimedOut {
        /// What was attempted, e.g. `produce to orders-3` or `waiting for buffer memory`.
        operation: String,
        /// How long it was tried.
        after: Duration,
        /// Requests made; 0 when it timed out before any.
        attempts: u32,
        /// The last error seen, if any request was made.
        last: Option<Box<ClientError>>,
    },
    /// The cluster metadata has no topic of this name.
    #[error("unknown topic {topic}")]
    UnknownTopic {
        /// Topic name.
        topic: String,
    },
    /// The partition is not one of the topic's.
    #[error("unknown partition {topic}-{partition}: the topic has {partitions} partitions")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: i32,
        /// The topic's partition count.
        partitions: i32,
    },
    /// The partition has no usable leader right now (election under way, leader fenced or
    /// missing from the broker list).
    #[error("no leader for {topic}-{partition}: {reason}")]
    LeaderNotAvailable {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// A record cannot fit in the producer's memory.
    #[error("record of {size} bytes (batch-encoded) exceeds buffer_memory of {max} bytes")]
    RecordTooLarge {
        /// The record's encoded size including one batch header.
        size: usize,
        /// The producer's `buffer_memory`.
        max: usize,
    },
    /// A fetch position is outside the partition's log and `auto_offset_reset` is `None`.
    #[error(
        "offset {offset} is out of range for {topic}-{partition} (log start {}, log end {}): {message}",
        opt(*log_start_offset),
        opt(*log_end_offset)
    )]
    OffsetOutOfRange {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// The position fetched from.
        offset: i64,
        /// First offset of the log, when the broker said.
        log_start_offset: Option<i64>,
        /// Log end offset, when the broker said.
        log_end_offset: Option<i64>,
        /// The broker's message.
        message: String,
    },
    /// An assigned partition has no position and `auto_offset_reset` is `None`: `seek` first.
    #[error("no position for {topic}-{partition} and auto_offset_reset is none: seek first")]
    NoPosition {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
    },
    /// The consumer is not assigned this partition (or no partition at all).
    #[error("{topic}-{partition} is not assigned to this consumer")]
    NotAssigned {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
    },
    /// A fetched record batch failed to decode or its CRC did not match.
    #[error("corrupt record batch from {topic}-{partition}: {error}")]
    Corrupt {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// What is wrong with the batch.
        error: BatchError,
    },
    /// An argument or config value is invalid.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// A node's answer broke the protocol (e.g. a required field is missing).
    #[error("{operation}: unexpected answer: {reason}")]
    UnexpectedResponse {
        /// What was attempted.
        operation: String,
        /// What is wrong with the answer.
        reason: String,
    },
    /// The producer was closed before the record was sent.
    #[error("producer is closed")]
    Closed,
    /// The metadata names no live coordinator for the group's shard (no coordinator registered
    /// yet, or the shard is moving). Retried after refreshing the metadata.
    #[error("no coordinator for group {group}: {reason}")]
    CoordinatorNotAvailable {
        /// The group id.
        group: String,
        /// Why.
        reason: String,
    },
    /// A group consumer is not a member of its group right now (it has not joined yet, or it
    /// was fenced and is joining again), so it cannot commit as one.
    #[error("not a member of group {group}: {reason}")]
    NotMember {
        /// The group id.
        group: String,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// The Tideline error code behind this error, when there is one. Client-side checks map to
    /// the code a server would have used (an unknown topic to `UNKNOWN_TOPIC_OR_PARTITION`, a
    /// record over `buffer_memory` to `MESSAGE_TOO_LARGE`); a timeout gives its last error's
    /// code, or `REQUEST_TIMED_OUT`.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::TimedOut { last, .. } => {
                Some(last.as_ref().and_then(|e| e.code()).unwrap_or(ErrorCode::RequestTimedOut))
            }
            ClientError::UnknownTopic { .. } | ClientError::UnknownPartition { .. } => {
                Some(ErrorCode::UnknownTopicOrPartition)
            }
            ClientError::LeaderNotAvailable { .. } => Some(ErrorCode::LeaderNotAvailable),
            ClientError::RecordTooLarge { .. } => Some(ErrorCode::MessageTooLarge),
            ClientError::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            ClientError::Corrupt { .. } => Some(ErrorCode::CorruptMessage),
            ClientError::CoordinatorNotAvailable { .. } => Some(ErrorCode::CoordinatorNotAvailable),
            ClientError::NotMember { .. } => Some(ErrorCode::UnknownMemberId),
            ClientError::Transport { .. }
            | ClientError::Rpc { .. }
            | ClientError::NoPosition { .. }
            | ClientError::NotAssigned { .. }
            | ClientError::InvalidArgument { .. }
            | ClientError::UnexpectedResponse { .. }
            | ClientError::Closed => None,
        }
    }

    /// Whether the same request may succeed later, once metadata is refreshed: transport
    /// errors, leader changes and elections, fenced brokers, topics not yet (or no longer)
    /// in the metadata. The producer and the controller calls retry these by themselves.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => {
                tideline_common::is_retriable(*code)
                    || matches!(
                        code,
                        ErrorCode::BrokerFenced
                            | ErrorCode::UnknownTopicOrPartition
                            | ErrorCode::LeaderNotAvailable
                    )
            }
            ClientError::Transport { .. }
            | ClientError::UnknownTopic { .. }
            | ClientError::UnknownPartition { .. }
            | ClientError::LeaderNotAvailable { .. }
            | ClientError::CoordinatorNotAvailable { .. } => true,
            _ => false,
        }
    }

    /// Whether the cached metadata is likely wrong after this error (leaders moved, a broker
    /// was fenced or is unreachable, a topic appeared or changed, a group's shard moved to
    /// another coordinator).
    pub(crate) fn invalidates_metadata(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => matches!(
                code,
                ErrorCode::NotLeader
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::UnknownTopicOrPartition
                    | ErrorCode::BrokerFenced
                    | ErrorCode::FencedLeaderEpoch
                    | ErrorCode::NotCoordinator
                    | ErrorCode::CoordinatorNotAvailable
            ),
            ClientError::Transport { .. }
            | ClientError::UnknownTopic { .. }
            | ClientError::UnknownPartition { .. }
            | ClientError::LeaderNotAvailable { .. }
            | ClientError::CoordinatorNotAvailable { .. } => true,
            _ => false,
        }
    }

    /// The error for a gRPC status from `address`: [`ClientError::Server`] when it carries a
    /// Tideline code, [`ClientError::Transport`] for connection-level failures,
    /// [`ClientError::Rpc`] otherwise.
    pub(crate) fn from_status(
        operation: impl Into<String>,
        address: &str,
        status: &tonic::Status,
    ) -> Self {
        let operation = operation.into();
        let address = address.to_string();
        if let Some(code) = error_code_of(status) {
            return ClientError::Server {
                operation,
                address,
                code,
                message: status.message().to_string(),
                leader: leader_hint_of(status),
            };
        }
        let message = if status.message().is_empty() {
            format!("grpc status {:?}", status.code())
        } else {
            status.message().to_string()
        };
        match status.code() {
            // tonic reports refused and broken connections as UNAVAILABLE or UNKNOWN, and its
            // own timeouts as CANCELLED ("Timeout expired").
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => {
                ClientError::Transport { operation, address, message }
            }
            // A connection torn down mid-stream (a server stopping) surfaces as an HTTP/2
            // protocol error: the transport failed, the request may be retried.
            tonic::Code::Internal if message.starts_with("h2 protocol error") => {
                ClientError::Transport { operation, address, message }
            }
            code => ClientError::Rpc { operation, address, code, message },
        }
    }

    /// The transport error for a request that got no answer within `after`.
    pub(crate) fn no_answer(operation: impl Into<String>, address: &str, after: Duration) -> Self {
        ClientError::Transport {
            operation: operation.into(),
            address: address.to_string(),
            message: format!("no answer within {after:?}"),
        }
    }
}

/// `NOT_LEADER` for `ERROR_CODE_NOT_LEADER`.
fn code_name(code: ErrorCode) -> &'static str {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_").unwrap_or(name)
}

fn last_error_suffix(attempts: u32, last: Option<&ClientError>) -> String {
    match last {
        Some(last) => format!(" and {attempts} attempts; last error: {last}"),
        None => String::new(),
    }
}

fn opt(value: Option<i64>) -> String {
    value.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status with a Tideline code keeps the code, message and leader hint, and prints as
    /// one line naming the operation, the node and the short code name.
    #[test]
    fn server_errors_keep_code_message_and_hint() {
        let status = tideline_common::with_leader(
            tideline_common::status(ErrorCode::NotLeader, "broker 1 does not lead orders-3"),
            2,
            "10.0.0.2:7400",
        );
        let error = ClientError::from_status("produce to orders-3", "10.0.0.1:7400", &status);
        assert_eq!(
            error.to_string(),
            "produce to orders-3 at 10.0.0.1:7400 failed: NOT_LEADER: broker 1 does not lead orders-3"
        );
        assert_eq!(error.code(), Some(ErrorCode::NotLeader));
        assert!(error.is_retriable());
        assert!(error.invalidates_metadata());
        match error {
            ClientError::Server { leader, .. } => {
                assert_eq!(leader, Some((2, "10.0.0.2:7400".to_string())))
            }
            other => panic!("expected a server error, got {other:?}"),
        }
    }

    /// Connection failures are transport errors (retried); other code-less statuses are not.
    #[test]
    fn statuses_without_code_split_into_transport_and_rpc() {
        let refused = tonic::Status::unavailable("tcp connect error: connection refused");
        let error = ClientError::from_status("fetch", "h:1", &refused);
        assert!(matches!(error, ClientError::Transport { .. }), "{error:?}");
        assert!(error.is_retriable());
        assert_eq!(error.code(), None);

        // What tonic reports when the server goes away in the middle of a stream.
        let torn = tonic::Status::internal("h2 protocol error: http2 error");
        let error = ClientError::from_status("produce", "h:1", &torn);
        assert!(matches!(error, ClientError::Transport { .. }), "{error:?}");
        assert!(error.is_retriable());
        let internal = tonic::Status::internal("something else");
        assert!(!ClientError::from_status("produce", "h:1", &internal).is_retriable());

        let unimplemented = tonic::Status::unimplemented("no such method");
        let error = ClientError::from_status("fetch", "h:1", &unimplemented);
        assert!(matches!(error, ClientError::Rpc { .. }), "{error:?}");
        assert!(!error.is_retriable());
    }

    /// BROKER_FENCED and UNKNOWN_TOPIC_OR_PARTITION are retried although the common table
    /// calls them non-retriable; invalid requests are not.
    #[test]
    fn client_side_retriable_codes() {
        for (code, retriable) in [
            (ErrorCode::BrokerFenced, true),
            (ErrorCode::UnknownTopicOrPartition, true),
            (ErrorCode::NotEnoughReplicas, true),
            (ErrorCode::MessageTooLarge, false),
            (ErrorCode::InvalidRequest, false),
        ] {
            let status = tideline_common::status(code, "x");
            let error = ClientError::from_status("produce", "h:1", &status);
            assert_eq!(error.is_retriable(), retriable, "{code:?}");
        }
    }

    /// A timeout names its last error and takes its code.
    #[test]
    fn timeouts_carry_the_last_error() {
        let last = ClientError::LeaderNotAvailable {
            topic: "orders".into(),
            partition: 1,
            reason: "the partition has no leader".into(),
        };
        let error = ClientError::TimedOut {
            operation: "produce to orders-1".into(),
            after: Duration::from_secs(2),
            attempts: 3,
            last: Some(Box::new(last)),
        };
        assert_eq!(
            error.to_string(),
            "produce to orders-1 timed out after 2s and 3 attempts; last error: \
             no leader for orders-1: the partition has no leader"
        );
        assert_eq!(error.code(), Some(ErrorCode::LeaderNotAvailable));
        let bare = ClientError::TimedOut {
            operation: "waiting for buffer memory".into(),
            after: Duration::from_millis(5),
            attempts: 0,
            last: None,
        };
        assert_eq!(bare.to_string(), "waiting for buffer memory timed out after 5ms");
        assert_eq!(bare.code(), Some(ErrorCode::RequestTimedOut));
    }
}
