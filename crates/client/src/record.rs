//! The records clients exchange: [`ProducerRecord`] going in, [`RecordMetadata`] acknowledging
//! it, [`ConsumerRecord`] coming out.

use bytes::Bytes;

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Topic name.
    pub topic: String,
    /// Partition; `None` lets the partitioner choose (by key hash, or sticky without a key).
    pub partition: Option<i32>,
    /// Key; `None` for null.
    pub key: Option<Bytes>,
    /// Value; `None` for null (a tombstone on compacted topics).
    pub value: Option<Bytes>,
    /// Headers, in order: key and value (`None` for null).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time in ms since the Unix epoch; `None` for the time of `send`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record for `topic` with no key, value or headers yet.
    pub fn new(topic: impl Into<String>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    /// Sets the partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Appends a header.
    pub fn header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }

    /// Sets the timestamp.
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Where a produced record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Offset of the record; -1 with `acks = None`, where the broker does not say.
    pub offset: i64,
    /// The record's timestamp (its create time) in ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A record read by a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic name, shared by the records of one fetch (`&*record.topic` for a `&str`).
    pub topic: std::sync::Arc<str>,
    /// Partition index.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Timestamp in ms since the Unix epoch: the create time, or the broker's append time for
    /// topics that use log-append time.
    pub timestamp_ms: i64,
    /// Key; `None` for null.
    pub key: Option<Bytes>,
    /// Value; `None` for null.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}
