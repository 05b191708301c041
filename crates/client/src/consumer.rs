//! [`Consumer`]: reads manually assigned partitions from their leaders.

use std::time::Duration;

use tideline_common::error::{LOG_END_OFFSET_KEY, LOG_START_OFFSET_KEY};
use tideline_common::{ErrorCode, error_code_of};
use tideline_proto::v1 as pb;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::consumer_config::{AutoOffsetReset, ConsumerConfig};
use crate::error::ClientError;
use crate::fetch::{Decoded, decode};
use crate::record::ConsumerRecord;

/// Fetch responses larger than this are decoded on the blocking pool.
const BLOCKING_DECODE_BYTES: usize = 64 << 10;

/// Reads records from manually assigned partitions (Kafka's `assign`, no consumer group).
/// Each `poll` fetches from every assigned partition's leader in parallel and returns the
/// records at or after each partition's position, advancing the positions past them.
#[derive(Debug)]
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    assignment: Vec<Assigned>,
}

#[derive(Debug, Clone)]
struct Assigned {
    topic: String,
    partition: i32,
    /// The next offset to read; `None` until set by `seek` or `auto_offset_reset`.
    position: Option<i64>,
}

/// What one partition's fetch gave.
#[derive(Debug)]
struct FetchOutcome {
    /// Index into the assignment.
    index: usize,
    result: Result<Decoded, ClientError>,
}

impl Consumer {
    /// A consumer on `cluster` with nothing assigned.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a bad config.
    pub fn new(cluster: &Cluster, config: ConsumerConfig) -> Result<Self, ClientError> {
        config.validate()?;
        Ok(Consumer { cluster: cluster.clone(), config, assignment: Vec::new() })
    }

    /// Replaces the assignment with `partitions` (duplicates ignored). Partitions that stay
    /// assigned keep their positions; new ones start per `auto_offset_reset` unless sought.
    pub fn assign(&mut self, partitions: Vec<(String, i32)>) {
        let mut assignment: Vec<Assigned> = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            if assignment.iter().any(|a| a.topic == topic && a.partition == partition) {
                continue;
            }
            let position = self.find(&topic, partition).and_then(|i| self.assignment[i].position);
            assignment.push(Assigned { topic, partition, position });
        }
        self.assignment = assignment;
    }

    /// The assigned partitions, in assignment order.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.assignment.iter().map(|a| (a.topic.clone(), a.partition)).collect()
    }

    /// The next offset `poll` reads from the partition; `None` when not assigned or not yet
    /// known (no `seek`, and no `poll` yet to apply `auto_offset_reset`).
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.find(topic, partition).and_then(|i| self.assignment[i].position)
    }

    /// Makes the next `poll` read the partition from `offset`. An offset outside the log is
    /// handled by `auto_offset_reset` at the next fetch.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; [`ClientError::InvalidArgument`] for a negative offset.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), ClientError> {
        if offset < 0 {
            return Err(ClientError::InvalidArgument {
                reason: format!("cannot seek {topic}-{partition} to negative offset {offset}"),
            });
        }
        let index = self.assigned(topic, partition)?;
        self.assignment[index].position = Some(offset);
        Ok(())
    }

    /// Seeks the partition to the first offset of its log, asked of its leader, and returns it.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; the `ListOffsets` error after retries.
    pub async fn seek_to_beginning(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<i64, ClientError> {
        self.seek_to_spec(topic, partition, pb::OffsetSpec::Earliest, 0).await
    }

    /// Seeks the partition to the end of its log (the high watermark: the offset the next
    /// record will get), asked of its leader, and returns it.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; the `ListOffsets` error after retries.
    pub async fn seek_to_end(&mut self, topic: &str, partition: i32) -> Result<i64, ClientError> {
        self.seek_to_spec(topic, partition, pb::OffsetSpec::Latest, 0).await
    }

    /// Seeks the partition to its first record with a timestamp at or after `timestamp_ms`
    /// (the end of the log when there is none), and returns that offset.
    ///
    /// # Errors
    /// [`ClientError::NotAssigned`]; the `ListOffsets` error after retries.
    pub async fn seek_to_timestamp(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> Result<i64, ClientError> {
        self.seek_to_spec(topic, partition, pb::OffsetSpec::Timestamp, timestamp_ms).await
    }

    async fn seek_to_spec(
        &mut self,
        topic: &str,
        partition: i32,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<i64, ClientError> {
        let index = self.assigned(topic, partition)?;
        let offset = self.list_offset(topic, partition, spec, timestamp_ms).await?;
        self.assignment[index].position = Some(offset);
        Ok(offset)
    }

    /// Fetches from every assigned partition and returns the records that came, waiting up
    /// to `timeout` for some to. Returns as soon as one partition has records (with those of
    /// any other that answered by then); an empty result means none came in time.
    ///
    /// Partitions without a position start per `auto_offset_reset`, and so do partitions whose
    /// position fell out of the log. Retriable errors (leader moved, broker unreachable) are
    /// retried within the timeout after refreshing metadata.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] with no assignment; [`ClientError::NoPosition`] or
    /// [`ClientError::OffsetOutOfRange`] under `AutoOffsetReset::None`;
    /// [`ClientError::Corrupt`] for a batch that fails its CRC; errors that are not
    /// retriable. Records fetched in the same round as an error are returned first, and the
    /// error comes at the next `poll`.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.assignment.is_empty() {
            return Err(ClientError::InvalidArgument {
                reason: "poll without an assignment: assign partitions first".into(),
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.reset_missing_positions().await?;
            let round_started = Instant::now();
            let max_wait =
                deadline.saturating_duration_since(round_started).min(self.config.fetch_max_wait);
            let mut records = Vec::new();
            let mut fatal = None;
            let mut refresh = false;
            let mut failed = false;
            for FetchOutcome { index, result } in self.fetch_round(max_wait).await {
                match result {
                    Ok(decoded) => {
                        self.assignment[index].position = Some(decoded.next_position);
                        records.extend(decoded.records);
                    }
                    Err(error @ ClientError::OffsetOutOfRange { .. }) => {
                        if let Err(error) = self.reset_out_of_range(index, error).await {
                            fatal.get_or_insert(error);
                        }
                    }
                    Err(error)
                        if error.is_retriable()
                            || matches!(error, ClientError::TimedOut { .. }) =>
                    {
                        let Assigned { topic, partition, .. } = &self.assignment[index];
                        debug!(%topic, partition, %error, "fetch failed; will retry");
                        refresh |= error.invalidates_metadata();
                        failed = true;
                    }
                    Err(error) => {
                        fatal.get_or_insert(error);
                    }
                }
            }
            if !records.is_empty() {
                return Ok(records);
            }
            if let Some(error) = fatal {
                return Err(error);
            }
            if refresh && let Err(error) = self.cluster.refresh_after(round_started).await {
                debug!(%error, "metadata refresh failed");
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            if failed {
                tokio::time::sleep(self.config.retry_backoff.min(deadline - now)).await;
            }
        }
    }

    /// Fetches every partition with a position in parallel. Returns once one partition has
    /// records, with the outcomes of the fetches finished by then (the others are cancelled;
    /// their positions are unchanged), or when all fetches finished.
    async fn fetch_round(&self, max_wait: Duration) -> Vec<FetchOutcome> {
        let params = FetchParams {
            max_bytes: self.config.max_partition_fetch_bytes as i32,
            min_bytes: self.config.fetch_min_bytes as i32,
            max_wait,
            check_crcs: self.config.check_crcs,
        };
        let mut tasks = JoinSet::new();
        for (index, a) in self.assignment.iter().enumerate() {
            let Some(position) = a.position else { continue };
            let cluster = self.cluster.clone();
            let (topic, partition) = (a.topic.clone(), a.partition);
            tasks.spawn(async move {
                let result = fetch_partition(&cluster, &topic, partition, position, params).await;
                FetchOutcome { index, result }
            });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let outcome = match joined {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => continue,
            };
            let has_records = matches!(&outcome.result, Ok(d) if !d.records.is_empty());
            outcomes.push(outcome);
            if has_records {
                while let Some(joined) = tasks.try_join_next() {
                    match joined {
                        Ok(outcome) => outcomes.push(outcome),
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(_) => {}
                    }
                }
                break;
            }
        }
        outcomes.sort_by_key(|o| o.index);
        outcomes
    }

    /// Sets the positions of partitions that have none, per `auto_offset_reset`.
    async fn reset_missing_positions(&mut self) -> Result<(), ClientError> {
        for index in 0..self.assignment.len() {
            if self.assignment[index].position.is_some() {
                continue;
            }
            let Assigned { topic, partition, .. } = self.assignment[index].clone();
            let spec = match self.config.auto_offset_reset {
                AutoOffsetReset::Earliest => pb::OffsetSpec::Earliest,
                AutoOffsetReset::Latest => pb::OffsetSpec::Latest,
                AutoOffsetReset::None => return Err(ClientError::NoPosition { topic, partition }),
            };
            let offset = self.list_offset(&topic, partition, spec, 0).await?;
            debug!(%topic, partition, offset, ?spec, "position reset");
            self.assignment[index].position = Some(offset);
        }
        Ok(())
    }

    /// Moves a partition whose position fell out of its log per `auto_offset_reset`.
    async fn reset_out_of_range(
        &mut self,
        index: usize,
        error: ClientError,
    ) -> Result<(), ClientError> {
        let ClientError::OffsetOutOfRange { log_start_offset, log_end_offset, .. } = &error else {
            return Err(error);
        };
        let Assigned { topic, partition, position } = self.assignment[index].clone();
        let offset = match self.config.auto_offset_reset {
            AutoOffsetReset::None => return Err(error),
            AutoOffsetReset::Earliest => match log_start_offset {
                Some(offset) => *offset,
                None => self.list_offset(&topic, partition, pb::OffsetSpec::Earliest, 0).await?,
            },
            AutoOffsetReset::Latest => match log_end_offset {
                Some(offset) => *offset,
                None => self.list_offset(&topic, partition, pb::OffsetSpec::Latest, 0).await?,
            },
        };
        warn!(
            %topic,
            partition,
            from = ?position,
            to = offset,
            policy = ?self.config.auto_offset_reset,
            "fetch position out of range; reset"
        );
        self.assignment[index].position = Some(offset);
        Ok(())
    }

    async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<i64, ClientError> {
        let request = pb::ListOffsetsRequest {
            topic: topic.to_string(),
            partition,
            spec: spec as i32,
            timestamp_ms,
        };
        let deadline = Instant::now() + self.cluster.request_timeout();
        let response = self
            .cluster
            .call_leader(
                &format!("list offsets of {topic}-{partition}"),
                topic,
                partition,
                deadline,
                self.config.retry_backoff,
                |mut client| {
                    let request = request.clone();
                    async move { client.list_offsets(request).await }
                },
            )
            .await?;
        Ok(response.offset)
    }

    fn find(&self, topic: &str, partition: i32) -> Option<usize> {
        self.assignment.iter().position(|a| a.topic == topic && a.partition == partition)
    }

    fn assigned(&self, topic: &str, partition: i32) -> Result<usize, ClientError> {
        self.find(topic, partition)
            .ok_or_else(|| ClientError::NotAssigned { topic: topic.to_string(), partition })
    }
}

#[derive(Debug, Clone, Copy)]
struct FetchParams {
    max_bytes: i32,
    min_bytes: i32,
    max_wait: Duration,
    check_crcs: bool,
}

/// One fetch from the partition's leader, decoded.
async fn fetch_partition(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    position: i64,
    params: FetchParams,
) -> Result<Decoded, ClientError> {
    let operation = format!("fetch from {topic}-{partition}");
    let address = cluster.leader(topic, partition).await?;
    let mut client = cluster.broker_client(&address)?;
    let request = pb::FetchRequest {
        topic: topic.to_string(),
        partition,
        offset: position,
        max_bytes: params.max_bytes,
        max_wait_ms: i32::try_from(params.max_wait.as_millis()).unwrap_or(i32::MAX),
        min_bytes: params.min_bytes,
        decode_records: false,
    };
    let limit = params.max_wait + cluster.request_timeout();
    let response = match tokio::time::timeout(limit, client.fetch(request)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) if error_code_of(&status) == Some(ErrorCode::OffsetOutOfRange) => {
            let read = |key: &str| {
                status
                    .metadata()
                    .get(key)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
            };
            return Err(ClientError::OffsetOutOfRange {
                topic: topic.to_string(),
                partition,
                offset: position,
                log_start_offset: read(LOG_START_OFFSET_KEY),
                log_end_offset: read(LOG_END_OFFSET_KEY),
                message: status.message().to_string(),
            });
        }
        Ok(Err(status)) => return Err(ClientError::from_status(operation, &address, &status)),
        Err(_) => return Err(ClientError::no_answer(operation, &address, limit)),
    };
    let data = response.record_batches;
    let (topic, check_crcs) = (topic.to_string(), params.check_crcs);
    let decoded = if data.len() > BLOCKING_DECODE_BYTES {
        let topic = topic.clone();
        match tokio::task::spawn_blocking(move || {
            decode(&topic, partition, &data, position, check_crcs)
        })
        .await
        {
            Ok(decoded) => decoded,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Ok(Decoded { records: Vec::new(), next_position: position }),
        }
    } else {
        decode(&topic, partition, &data, position, check_crcs)
    };
    decoded.map_err(|error| ClientError::Corrupt { topic, partition, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    fn consumer() -> Consumer {
        let cluster = Cluster::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        Consumer::new(&cluster, ConsumerConfig::default()).unwrap()
    }

    /// Reassigning keeps the positions of partitions that stay, drops the others, and ignores
    /// duplicates; seeks only work on assigned partitions.
    #[test]
    fn assignment_and_positions() {
        let mut c = consumer();
        c.assign(vec![("a".into(), 0), ("a".into(), 1), ("a".into(), 0)]);
        assert_eq!(c.assignment(), [("a".to_string(), 0), ("a".to_string(), 1)]);
        assert_eq!(c.position("a", 0), None);
        c.seek("a", 0, 42).unwrap();
        c.seek("a", 1, 7).unwrap();
        assert!(matches!(c.seek("b", 0, 1), Err(ClientError::NotAssigned { .. })));
        assert!(matches!(c.seek("a", 0, -1), Err(ClientError::InvalidArgument { .. })));

        c.assign(vec![("a".into(), 0), ("b".into(), 0)]);
        assert_eq!(c.position("a", 0), Some(42));
        assert_eq!(c.position("a", 1), None);
        assert_eq!(c.position("b", 0), None);
    }

    /// Out-of-range positions move to the range the broker reported, or fail under `None`.
    #[tokio::test]
    async fn out_of_range_resets_per_policy() {
        let out_of_range = || ClientError::OffsetOutOfRange {
            topic: "a".into(),
            partition: 0,
            offset: 3,
            log_start_offset: Some(10),
            log_end_offset: Some(20),
            message: "offset 3 is below the log start 10".into(),
        };
        let mut c = consumer();
        c.assign(vec![("a".into(), 0)]);
        c.seek("a", 0, 3).unwrap();
        c.config.auto_offset_reset = AutoOffsetReset::Earliest;
        c.reset_out_of_range(0, out_of_range()).await.unwrap();
        assert_eq!(c.position("a", 0), Some(10));
        c.config.auto_offset_reset = AutoOffsetReset::Latest;
        c.reset_out_of_range(0, out_of_range()).await.unwrap();
        assert_eq!(c.position("a", 0), Some(20));
        c.config.auto_offset_reset = AutoOffsetReset::None;
        let error = c.reset_out_of_range(0, out_of_range()).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange));
        assert_eq!(c.position("a", 0), Some(20));
    }

    /// Without a position and with `auto_offset_reset = None`, poll refuses to guess; without
    /// an assignment it refuses too.
    #[tokio::test]
    async fn poll_needs_an_assignment_and_a_position() {
        let mut c = consumer();
        let error = c.poll(Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(error, ClientError::InvalidArgument { .. }), "{error}");
        c.config.auto_offset_reset = AutoOffsetReset::None;
        c.assign(vec![("a".into(), 0)]);
        let error = c.poll(Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(error, ClientError::NoPosition { .. }), "{error}");
    }
}
