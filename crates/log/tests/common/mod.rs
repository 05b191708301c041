//! Helpers shared by the log's integration tests: building batches from simple records and
//! reading a whole log back as decoded records.
#![allow(dead_code)]

use tideline_log::{Compression, Log, LogError, RecordBatch, RecordBatchBuilder, RecordHeader};

/// A record as the tests model it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    pub fn value(timestamp: i64, value: &[u8]) -> Self {
        Rec { timestamp, key: None, value: Some(value.to_vec()), headers: Vec::new() }
    }
}

/// Encodes `records` as one batch.
pub fn build(records: &[Rec], compression: Compression) -> bytes::Bytes {
    let mut b = RecordBatchBuilder::new(compression);
    for r in records {
        let headers: Vec<RecordHeader> = r
            .headers
            .iter()
            .map(|(k, v)| RecordHeader { key: k.clone(), value: v.clone().map(Into::into) })
            .collect();
        b.append(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
    }
    b.build()
}

/// Decodes every record of every batch in `bytes`, with its offset and the batch's epoch.
pub fn decode_all(bytes: &[u8]) -> Vec<(i64, i32, Rec)> {
    let mut out = Vec::new();
    for batch in tideline_log::batch::batches(bytes) {
        let batch = batch.expect("whole batch");
        batch.verify_crc().expect("crc");
        out.extend(decode_batch(&batch));
    }
    out
}

pub fn decode_batch(batch: &RecordBatch<'_>) -> Vec<(i64, i32, Rec)> {
    let records = batch.records().expect("records");
    records
        .iter()
        .map(|r| {
            let r = r.expect("record");
            let rec = Rec {
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect(),
            };
            (r.offset, batch.partition_leader_epoch(), rec)
        })
        .collect()
}

/// Reads the whole log from its start through the read path, in chunks of `max_bytes`.
pub fn read_all(log: &Log, max_bytes: usize) -> Result<Vec<(i64, i32, Rec)>, LogError> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let read = log.read(offset, max_bytes, None)?;
        if read.region.is_empty() {
            return Ok(out);
        }
        let bytes = read.region.read_to_bytes()?;
        out.extend(decode_all(&bytes).into_iter().filter(|(o, _, _)| *o >= offset));
        offset = read.region.next_offset();
    }
}
