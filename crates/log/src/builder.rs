//! [`RecordBatchBuilder`]: encodes records into one Kafka v2 record batch, as a producer does.

use bytes::{BufMut, Bytes};

use crate::batch::{ATTRIBUTES_POS, BATCH_HEADER_LEN, CRC_POS, LOG_OVERHEAD, MAGIC_V2};
use crate::compression::Compression;
use crate::varint::{put_varint, put_varlong, varint_len, varlong_len};

/// A header to attach to a record when building a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header key (UTF-8).
    pub key: String,
    /// Header value, `None` for null.
    pub value: Option<Bytes>,
}

/// Encodes records into a single batch. Offsets start at 0 (the log assigns real ones on
/// append), the producer fields default to -1 (not idempotent).
#[derive(Debug, Clone)]
pub struct RecordBatchBuilder {
    compression: Compression,
    /// Room for the batch header (filled in by [`RecordBatchBuilder::finish`]), then the
    /// encoded records.
    buf: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl RecordBatchBuilder {
    /// A builder for a batch compressed with `compression`.
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 0)
    }

    /// A builder with room for `capacity` bytes of batch (header included) before it grows:
    /// a producer passes its batch size, so records are never moved as the batch fills.
    pub fn with_capacity(compression: Compression, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(BATCH_HEADER_LEN));
        buf.resize(BATCH_HEADER_LEN, 0);
        RecordBatchBuilder {
            compression,
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Sets the idempotent producer fields.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Number of records appended so far.
    pub fn len(&self) -> i32 {
        self.count
    }

    /// True when no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the batch if it were built now without compression; an upper bound for the
    /// compressed size up to the codec's framing, used by producers to cap batch sizes.
    pub fn estimated_size(&self) -> usize {
        self.buf.len()
    }

    /// Size one more record would add, before compression.
    pub fn record_size(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) -> usize {
        let body = record_body_len(i64::MAX, i32::MAX, key, value, headers);
        varint_len(body as i32) + body
    }

    /// Appends a record with timestamp `timestamp_ms`.
    ///
    /// # Panics
    /// If the batch would hold more than `i32::MAX` records or a field exceeds `i32::MAX` bytes
    /// (the format's limits; producers cap batches far below).
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) {
        if self.count == 0 {
            self.base_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let timestamp_delta = timestamp_ms - self.base_timestamp;
        let offset_delta = self.count;
        let body = record_body_len(timestamp_delta, offset_delta, key, value, headers);
        let out = &mut self.buf;
        put_varint(out, i32::try_from(body).expect("record larger than 2 GiB"));
        out.push(0); // record attributes: unused
        put_varlong(out, timestamp_delta);
        put_varint(out, offset_delta);
        put_nullable(out, key);
        put_nullable(out, value);
        put_varint(out, headers.len() as i32);
        for h in headers {
            put_varint(out, h.key.len() as i32);
            out.extend_from_slice(h.key.as_bytes());
            put_nullable(out, h.value.as_deref());
        }
        self.count = self.count.checked_add(1).expect("more than i32::MAX records");
    }

    /// Encodes the batch: header, CRC-32C, records (compressed with the builder's codec).
    /// The builder stays as it was; [`RecordBatchBuilder::finish`] does the same without
    /// copying the records.
    pub fn build(&self) -> Bytes {
        self.clone().finish()
    }

    /// Encodes the batch, consuming the builder: an uncompressed batch is the builder's own
    /// buffer with the header written in front of the records (no copy); a compressed one is
    /// a new buffer with the compressed records.
    pub fn finish(self) -> Bytes {
        let mut buf = match self.compression {
            Compression::None => self.buf,
            codec => {
                let section = codec.compress(&self.buf[BATCH_HEADER_LEN..]);
                let mut buf = Vec::with_capacity(BATCH_HEADER_LEN + section.len());
                buf.resize(BATCH_HEADER_LEN, 0);
                buf.extend_from_slice(&section);
                buf
            }
        };
        let size = buf.len();
        let mut header = &mut buf[..BATCH_HEADER_LEN];
        header.put_i64(0); // baseOffset: assigned by the log
        header.put_i32((size - LOG_OVERHEAD) as i32); // batchLength
        header.put_i32(-1); // partitionLeaderEpoch: assigned by the log
        header.put_i8(MAGIC_V2);
        header.put_u32(0); // crc, filled in below
        header.put_i16(i16::from(self.compression.id())); // attributes: codec, create time
        header.put_i32((self.count - 1).max(0)); // lastOffsetDelta
        header.put_i64(self.base_timestamp);
        header.put_i64(self.max_timestamp);
        header.put_i64(self.producer_id);
        header.put_i16(self.producer_epoch);
        header.put_i32(self.base_sequence);
        header.put_i32(self.count);
        debug_assert!(header.is_empty(), "the header fills its room exactly");
        let crc = crate::batch::crc32c(&buf[ATTRIBUTES_POS..]);
        buf[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(buf)
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    bytes.map_or(varint_len(-1), |b| varint_len(b.len() as i32) + b.len())
}

fn record_body_len(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[RecordHeader],
) -> usize {
    let headers_len: usize = headers
        .iter()
        .map(|h| varint_len(h.key.len() as i32) + h.key.len() + nullable_len(h.value.as_deref()))
        .sum();
    1 + varlong_len(timestamp_delta)
        + varint_len(offset_delta)
        + nullable_len(key)
        + nullable_len(value)
        + varint_len(headers.len() as i32)
        + headers_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::batches;

    fn filled(compression: Compression, capacity: usize) -> RecordBatchBuilder {
        let mut b = RecordBatchBuilder::with_capacity(compression, capacity);
        let header = [RecordHeader { key: "h".into(), value: Some(Bytes::from_static(b"x")) }];
        for i in 0..50i64 {
            let value = format!("value-{i}");
            b.append(1_000 + i, Some(b"k"), Some(value.as_bytes()), &header);
        }
        b
    }

    /// `finish` gives the same bytes as `build` for every codec, and a valid batch.
    #[test]
    fn finish_and_build_agree() {
        for compression in
            [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd]
        {
            let b = filled(compression, 0);
            let built = b.build();
            let finished = b.finish();
            assert_eq!(built, finished, "{compression:?}");
            let batch = batches(&finished).next().unwrap().unwrap();
            batch.verify_crc().unwrap();
            assert_eq!(batch.records().unwrap().count(), 50, "{compression:?}");
        }
    }

    /// An uncompressed batch is finished in the builder's own buffer: no copy, and with a
    /// capacity for the whole batch, no reallocation while records were appended.
    #[test]
    fn uncompressed_batches_are_finished_in_place() {
        let b = filled(Compression::None, 1 << 16);
        let start = b.buf.as_ptr();
        let finished = b.finish();
        assert_eq!(finished.as_ptr(), start);
    }
}
