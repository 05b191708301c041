//! [`ConsumerConfig`] and [`AutoOffsetReset`]: where a consumer starts and how it fetches.

use std::time::Duration;

use crate::error::ClientError;

/// Where a partition without a valid position starts (`auto.offset.reset`): when it was just
/// assigned without `seek`, or when its position fell outside the log (retention deleted it,
/// or the log was truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AutoOffsetReset {
    /// The first offset of the log.
    Earliest,
    /// The end of the log: only records produced from now on.
    #[default]
    Latest,
    /// No reset: `poll` fails with [`ClientError::NoPosition`] or
    /// [`ClientError::OffsetOutOfRange`].
    None,
}

/// Consumer settings, named after Kafka's consumer configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Where to start without a valid position. Default [`AutoOffsetReset::Latest`].
    pub auto_offset_reset: AutoOffsetReset,
    /// Most bytes fetched per partition per request (`max.partition.fetch.bytes`); a batch
    /// larger than this still comes whole. A partition holds up to `read_ahead_fetches` + 1
    /// such responses at once, besides those the caller holds. Default 1 MiB.
    pub max_partition_fetch_bytes: usize,
    /// Fewest bytes a broker waits for before answering a fetch (`fetch.min.bytes`).
    /// Default 1.
    pub fetch_min_bytes: usize,
    /// Longest wait of one fetch request for `fetch_min_bytes` (`fetch.max.wait.ms`). Fetches
    /// run in the background and may outlast the `poll` that started them; what they bring
    /// waits for a later `poll`. Default 500 ms.
    pub fetch_max_wait: Duration,
    /// Pause after a failed fetch before the partition's next one, and between attempts of
    /// an offset lookup (`retry.backoff.ms`). Default 100 ms.
    pub retry_backoff: Duration,
    /// Check the CRC of fetched batches (`check.crcs`). Default true.
    pub check_crcs: bool,
    /// Fetch through the brokers' sendfile data port when they advertise one (the batches
    /// come from the page cache without a copy on the broker), else through gRPC `Fetch`.
    /// Default true.
    pub use_data_port: bool,
    /// Fetches a partition runs ahead of the one being decoded (read-ahead): each starts
    /// from where the one before ended, and through the data port as soon as that one's
    /// header has come, so the broker streams on while the client decodes. Each holds up to
    /// `max_partition_fetch_bytes`. Between 1 and 16; default 2. Records are slices of the
    /// response they came in (no copy), so a record kept keeps its response's buffer alive:
    /// through the data port that is the response itself; through gRPC it is the HTTP/2
    /// receive buffer the response arrived in, which may be larger.
    pub read_ahead_fetches: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Latest,
            max_partition_fetch_bytes: 1 << 20,
            fetch_min_bytes: 1,
            fetch_max_wait: Duration::from_millis(500),
            retry_backoff: Duration::from_millis(100),
            check_crcs: true,
            use_data_port: true,
            read_ahead_fetches: 2,
        }
    }
}

impl ConsumerConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] naming the first bad value.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let invalid = |reason: &str| Err(ClientError::InvalidArgument { reason: reason.into() });
        if self.max_partition_fetch_bytes == 0
            || i32::try_from(self.max_partition_fetch_bytes).is_err()
        {
            return invalid("max_partition_fetch_bytes must be between 1 byte and 2 GiB");
        }
        if i32::try_from(self.fetch_min_bytes).is_err() {
            return invalid("fetch_min_bytes must be below 2 GiB");
        }
        if !(1..=16).contains(&self.read_ahead_fetches) {
            return invalid("read_ahead_fetches must be between 1 and 16");
        }
        Ok(())
    }
}
