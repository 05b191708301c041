//! [`ErrorCode`] as gRPC statuses: each code maps to one `tonic::Code`, and travels in the
//! status metadata (`tideline-error-code`, plus `tideline-leader-id` and
//! `tideline-leader-address` for redirects) so that a client in any language can branch on it
//! without parsing messages.

pub use tideline_proto::v1::ErrorCode;
use tonic::metadata::MetadataValue;

/// Metadata key carrying the error code's proto name, e.g. `ERROR_CODE_NOT_LEADER`.
pub const ERROR_CODE_KEY: &str = "tideline-error-code";
/// Metadata key carrying the id of the node that leads instead.
pub const LEADER_ID_KEY: &str = "tideline-leader-id";
/// Metadata key carrying the address (host:port) of the node that leads instead.
pub const LEADER_ADDRESS_KEY: &str = "tideline-leader-address";
/// Metadata key carrying a partition's log start offset (with `OFFSET_OUT_OF_RANGE`).
pub const LOG_START_OFFSET_KEY: &str = "tideline-log-start-offset";
/// Metadata key carrying a partition's readable end offset, the high watermark (with
/// `OFFSET_OUT_OF_RANGE`).
pub const LOG_END_OFFSET_KEY: &str = "tideline-log-end-offset";

/// The gRPC status code for an error code.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    use ErrorCode as E;
    use tonic::Code as C;
    match code {
        E::Unspecified => C::Ok,
        E::NotLeader
        | E::NotController
        | E::LeaderNotAvailable
        | E::NotEnoughReplicas
        | E::StorageError => C::Unavailable,
        E::FencedLeaderEpoch
        | E::BrokerFenced
        | E::StaleBrokerEpoch
        | E::OutOfOrderSequence
        | E::UnknownMemberId
        | E::StaleMemberEpoch
        | E::NonEmptyGroup
        | E::ReassignmentInProgress => C::FailedPrecondition,
        E::NotCoordinator | E::CoordinatorLoadInProgress | E::CoordinatorNotAvailable => {
            C::Unavailable
        }
        E::GroupIdNotFound => C::NotFound,
        E::UnsupportedAssignor => C::InvalidArgument,
        E::OffsetOutOfRange => C::OutOfRange,
        E::UnknownTopicOrPartition => C::NotFound,
        E::TopicAlreadyExists => C::AlreadyExists,
        E::CorruptMessage
        | E::MessageTooLarge
        | E::InvalidTopic
        | E::InvalidConfig
        | E::InvalidReplicationFactor
        | E::InvalidPartitions
        | E::InvalidRequest
        | E::InvalidReplicaAssignment
        | E::UnsupportedCompression => C::InvalidArgument,
        E::RequestTimedOut => C::DeadlineExceeded,
    }
}

/// Whether a client should retry after this error (once it refreshed metadata where a leader
/// moved; `BROKER_FENCED` from a broker means its lease lapsed and leadership moves or returns
/// once it registers again). The others need a different request.
pub fn is_retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BrokerFenced
            | ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorLoadInProgress
            | ErrorCode::CoordinatorNotAvailable
            | ErrorCode::NotLeader
            | ErrorCode::NotController
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::StorageError
            | ErrorCode::RequestTimedOut
            | ErrorCode::FencedLeaderEpoch
    )
}

/// A status for `code` with a lowercase `message` carrying the values that matter.
pub fn status(code: ErrorCode, message: impl Into<String>) -> tonic::Status {
    let mut status = tonic::Status::new(grpc_code(code), message);
    status.metadata_mut().insert(ERROR_CODE_KEY, MetadataValue::from_static(code.as_str_name()));
    status
}

/// Adds a redirect to the node that leads instead (for `NOT_LEADER`, `NOT_CONTROLLER`).
pub fn with_leader(mut status: tonic::Status, leader_id: i64, address: &str) -> tonic::Status {
    let md = status.metadata_mut();
    md.insert(LEADER_ID_KEY, MetadataValue::from(leader_id));
    if let Ok(value) = address.parse() {
        md.insert(LEADER_ADDRESS_KEY, value);
    }
    status
}

/// Adds the valid offset range `[log_start, log_end)` (for `OFFSET_OUT_OF_RANGE`).
pub fn with_offset_range(mut status: tonic::Status, log_start: i64, log_end: i64) -> tonic::Status {
    let md = status.metadata_mut();
    md.insert(LOG_START_OFFSET_KEY, MetadataValue::from(log_start));
    md.insert(LOG_END_OFFSET_KEY, MetadataValue::from(log_end));
    status
}

/// The valid offset range an `OFFSET_OUT_OF_RANGE` status carries: (log start, log end).
pub fn offset_range_of(status: &tonic::Status) -> Option<(i64, i64)> {
    let md = status.metadata();
    let start = md.get(LOG_START_OFFSET_KEY)?.to_str().ok()?.parse().ok()?;
    let end = md.get(LOG_END_OFFSET_KEY)?.to_str().ok()?.parse().ok()?;
    Some((start, end))
}

/// The error code a status carries, if it came from a Tideline service.
pub fn error_code_of(status: &tonic::Status) -> Option<ErrorCode> {
    let name = status.metadata().get(ERROR_CODE_KEY)?.to_str().ok()?;
    ErrorCode::from_str_name(name)
}

/// The leader a status redirects to: id and address.
pub fn leader_hint_of(status: &tonic::Status) -> Option<(i64, String)> {
    let md = status.metadata();
    let id = md.get(LEADER_ID_KEY)?.to_str().ok()?.parse().ok()?;
    let address = md.get(LEADER_ADDRESS_KEY)?.to_str().ok()?.to_string();
    Some((id, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_a_status() {
        for value in 1..=31 {
            let code = ErrorCode::try_from(value).expect("codes are dense from 1 to 31");
            let s = status(code, format!("something about {value}"));
            assert_eq!(s.code(), grpc_code(code));
            assert_ne!(s.code(), tonic::Code::Ok, "{code:?} must not map to OK");
            assert_eq!(error_code_of(&s), Some(code));
        }
        assert!(ErrorCode::try_from(32).is_err(), "a new code needs a mapping and this test");
    }

    #[test]
    fn redirects_carry_the_leader() {
        let s = with_leader(status(ErrorCode::NotController, "not the leader"), 2, "10.0.0.2:7400");
        assert_eq!(leader_hint_of(&s), Some((2, "10.0.0.2:7400".to_string())));
        assert!(is_retriable(ErrorCode::NotController));
        assert!(!is_retriable(ErrorCode::InvalidTopic));
        assert_eq!(error_code_of(&tonic::Status::internal("plain")), None);
        let s = with_offset_range(status(ErrorCode::OffsetOutOfRange, "offset 9"), 2, 7);
        assert_eq!(offset_range_of(&s), Some((2, 7)));
        assert_eq!(offset_range_of(&status(ErrorCode::OffsetOutOfRange, "none")), None);
    }
}
