//! [`ProducerConfig`] and [`Acks`]: how a producer batches, buffers and retries.

use std::time::Duration;

use tideline_log::Compression;
use tideline_proto::v1 as pb;
use tokio::sync::Semaphore;

use crate::error::ClientError;

/// How many replicas must have a batch before the producer counts it delivered (`acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Acks {
    /// Fire and forget (`acks=0`): records resolve once their request is on its way, with
    /// offset -1; failures are only logged.
    None,
    /// The leader appended it (`acks=1`).
    Leader,
    /// Every in-sync replica has it (`acks=all`).
    #[default]
    All,
}

impl Acks {
    pub(crate) fn to_pb(self) -> pb::Acks {
        match self {
            Acks::None => pb::Acks::None,
            Acks::Leader => pb::Acks::Leader,
            Acks::All => pb::Acks::All,
        }
    }
}

/// Producer settings, named after Kafka's producer configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Acknowledgement level (`acks`). Default [`Acks::All`].
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent (`linger.ms`). Default 5 ms.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes, before compression (`batch.size`).
    /// A record larger than this goes alone in its own batch. Default 64 KiB.
    pub batch_size: usize,
    /// Bytes of records buffered or in flight at most (`buffer.memory`); `send` waits for
    /// space, up to `max_block`. At most 4 GiB. Default 32 MiB.
    pub buffer_memory: usize,
    /// Codec of the batches (`compression.type`). Default none.
    pub compression: Compression,
    /// How long a record may take from `send` to acknowledgement, retries included
    /// (`delivery.timeout.ms`). Default 120 s.
    pub delivery_timeout: Duration,
    /// Pause before retrying a failed request (`retry.backoff.ms`). Default 100 ms.
    pub retry_backoff: Duration,
    /// Longest wait of `send` for buffer space or for the topic's metadata (`max.block.ms`).
    /// Default 60 s.
    pub max_block: Duration,
    /// Idempotence (`enable.idempotence`): batches carry a producer id from the controller and
    /// per-partition sequence numbers, so a retried batch the broker already wrote is not
    /// written twice. Default on, as in Kafka 3+. Applies with acks=all only.
    pub enable_idempotence: bool,
    /// Produce requests in flight to one broker at most, over all its partitions
    /// (Kafka's `max.in.flight.requests.per.connection`; a Tideline request carries one
    /// partition's batch, so the bound is per broker). A batch waits for a slot before it
    /// goes. Each partition still has one batch in flight at a time, so order holds.
    /// Default 32.
    pub max_in_flight_requests_per_broker: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_size: 64 << 10,
            buffer_memory: 32 << 20,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            max_block: Duration::from_secs(60),
            enable_idempotence: true,
            max_in_flight_requests_per_broker: 32,
        }
    }
}

impl ProducerConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] naming the first bad value.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let invalid = |reason: &str| Err(ClientError::InvalidArgument { reason: reason.into() });
        if self.batch_size == 0 {
            return invalid("batch_size must be positive");
        }
        if self.buffer_memory == 0 || u32::try_from(self.buffer_memory).is_err() {
            return invalid("buffer_memory must be between 1 byte and 4 GiB");
        }
        if self.max_in_flight_requests_per_broker == 0
            || self.max_in_flight_requests_per_broker > Semaphore::MAX_PERMITS
        {
            return invalid("max_in_flight_requests_per_broker must be positive");
        }
        if self.delivery_timeout.is_zero() {
            return invalid("delivery_timeout must be positive");
        }
        Ok(())
    }
}
