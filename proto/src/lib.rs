//! `tideline-proto`: the gRPC API of Tideline (package `tideline.v1`), generated at build time
//! from `proto/tideline/v1/*.proto`: messages (prost, `bytes` fields as `bytes::Bytes`), clients
//! and servers (tonic), and the file descriptor set that server reflection serves; and the
//! client side of the data port's framing ([`data_frame`]).

pub mod data_frame;
pub mod grpc_frame;

/// Generated types and services of package `tideline.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("tideline.v1");
}

/// The encoded `FileDescriptorSet` of every Tideline proto (with imports), for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tideline_descriptor");

/// Every method of every Tideline service, as (full service name, method name), e.g.
/// `("tideline.v1.BrokerService", "Produce")`.
pub const GRPC_METHODS: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/grpc_methods.rs"));

/// The method `method` of `service` (full name), as a `'static` name, if there is one.
pub fn known_method(service: &str, method: &str) -> Option<&'static str> {
    GRPC_METHODS.iter().find(|(s, m)| *s == service && *m == method).map(|(_, m)| *m)
}

/// Whether `service` (full name) has a method `method`.
pub fn has_method(service: &str, method: &str) -> bool {
    known_method(service, method).is_some()
}

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message;

    #[test]
    fn descriptor_set_names_every_service() {
        let set = prost::bytes::Bytes::from_static(super::FILE_DESCRIPTOR_SET);
        let text = String::from_utf8_lossy(&set);
        for service in ["ControllerService", "RaftService", "BrokerService", "CoordinatorService"] {
            assert!(text.contains(service), "{service} missing from the descriptor set");
        }
    }

    #[test]
    fn methods_are_listed() {
        assert!(super::has_method("tideline.v1.BrokerService", "Produce"));
        assert!(super::has_method("tideline.v1.ControllerService", "AlterPartitionReassignments"));
        assert!(!super::has_method("tideline.v1.BrokerService", "Nope"));
        assert!(!super::has_method("tideline.v1.Nope", "Produce"));
    }

    #[test]
    fn messages_round_trip_with_bytes_fields() {
        let request = v1::ProduceRequest {
            topic: "orders".into(),
            partition: 3,
            acks: v1::Acks::All as i32,
            timeout_ms: 0,
            current_leader_epoch: Some(0),
            payload: Some(v1::produce_request::Payload::RecordBatches(
                prost::bytes::Bytes::from_static(b"batch bytes"),
            )),
        };
        let decoded = v1::ProduceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, request);
        assert_eq!(v1::ErrorCode::try_from(3).unwrap(), v1::ErrorCode::OffsetOutOfRange);
    }
}
