//! The Kafka RecordBatch v2 (magic 2) byte format: a borrowing view over a batch, its
//! validation, and the borrowing record iterator used by readers.
//!
//! ```text
//! offset size field
//!      0    8 baseOffset            rewritten by the log on append (outside the CRC)
//!      8    4 batchLength           bytes after this field
//!     12    4 partitionLeaderEpoch  rewritten by the log on append (outside the CRC)
//!     16    1 magic                 2
//!     17    4 crc                   CRC-32C (Castagnoli) of bytes 21..end
//!     21    2 attributes            bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
//!     23    4 lastOffsetDelta
//!     27    8 baseTimestamp
//!     35    8 maxTimestamp
//!     43    8 producerId
//!     51    2 producerEpoch
//!     53    4 baseSequence
//!     57    4 recordsCount
//!     61    - records (compressed as a whole when the codec is not none)
//! ```
//! Each record: `length` varint, `attributes` i8, `timestampDelta` varlong, `offsetDelta` varint,
//! `keyLength` varint (-1 = null), key, `valueLength` varint (-1 = null), value, `headerCount`
//! varint, then per header `keyLength` varint, key (UTF-8), `valueLength` varint (-1 = null), value.
//! All fixed-width integers are big-endian.

use std::borrow::Cow;

use crate::compression::Compression;
use crate::error::BatchError;
use crate::varint::{VarintError, get_varint, get_varlong};

/// Size of the fixed batch header, up to and including `recordsCount`.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s coverage starts (`baseOffset` + `batchLength`).
pub const LOG_OVERHEAD: usize = 12;
/// Smallest valid `batchLength`.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;
/// Largest records section a compressed batch may expand to.
pub const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;
/// The only magic value accepted.
pub const MAGIC_V2: i8 = 2;

pub(crate) const BASE_OFFSET_POS: usize = 0;
pub(crate) const LENGTH_POS: usize = 8;
pub(crate) const LEADER_EPOCH_POS: usize = 12;
pub(crate) const MAGIC_POS: usize = 16;
pub(crate) const CRC_POS: usize = 17;
pub(crate) const ATTRIBUTES_POS: usize = 21;
pub(crate) const LAST_OFFSET_DELTA_POS: usize = 23;
pub(crate) const BASE_TIMESTAMP_POS: usize = 27;
pub(crate) const MAX_TIMESTAMP_POS: usize = 35;
pub(crate) const PRODUCER_ID_POS: usize = 43;
pub(crate) const PRODUCER_EPOCH_POS: usize = 51;
pub(crate) const BASE_SEQUENCE_POS: usize = 53;
pub(crate) const RECORDS_COUNT_POS: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Whether a batch's timestamps were set by the producer or by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Set by the producer when the record was created.
    CreateTime,
    /// Set by the broker when the batch was appended.
    LogAppendTime,
}

/// How strictly [`RecordBatch::validate`] checks a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Framing, size and CRC only: for replicated batches and recovery, whose records a leader
    /// already checked.
    Crc,
    /// Every record decoded, as a batch already in a log may be after compaction: offset deltas
    /// strictly increasing and at most `lastOffsetDelta` (gaps allowed), any record count from
    /// 0 (an emptied batch kept for its offsets) to `lastOffsetDelta + 1`, record timestamps at
    /// most `maxTimestamp` (create time); control and transactional batches accepted. For
    /// stored, replicated and cleaned batches.
    Records,
    /// Everything: every record decoded, counts, offset deltas (exactly 0, 1, .., n-1) and max
    /// timestamp consistent; no transactional or control batches. For batches from producers.
    Full,
}

/// How the offset deltas of a batch's records must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deltas {
    /// 0, 1, 2, ..: a batch as a producer builds it.
    Contiguous,
    /// Strictly increasing, each at most `last` (the batch's `lastOffsetDelta`): a batch whose
    /// superseded records were removed by compaction.
    Increasing { last: i32 },
}

/// What a walk over a records section found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walk {
    /// Records in the section.
    seen: i32,
    /// Largest record timestamp, `i64::MIN` when there is no record.
    max_timestamp: i64,
    /// Position of the first record with a null key.
    first_null_key: Option<i32>,
}

/// A borrowed view of one record batch whose framing (length and magic) has been checked.
#[derive(Clone, Copy)]
pub struct RecordBatch<'a> {
    buf: &'a [u8],
}

impl std::fmt::Debug for RecordBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBatch")
            .field("base_offset", &self.base_offset())
            .field("last_offset_delta", &self.last_offset_delta())
            .field("records_count", &self.records_count())
            .field("size", &self.size())
            .field("compression", &self.compression_id())
            .finish()
    }
}

/// Reads the total size (`batchLength` + 12) of the batch starting at `buf`, checking only the
/// length field.
///
/// # Errors
/// [`BatchError::ShortBuffer`] when fewer than 12 bytes are present, [`BatchError::BadLength`]
/// when `batchLength` is below the header size.
pub fn batch_size(buf: &[u8]) -> Result<usize, BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(BatchError::ShortBuffer { needed: LOG_OVERHEAD, available: buf.len() });
    }
    let length = read_i32(buf, LENGTH_POS);
    if length < MIN_BATCH_LENGTH {
        return Err(BatchError::BadLength { length, min: MIN_BATCH_LENGTH });
    }
    Ok(LOG_OVERHEAD + length as usize)
}

impl<'a> RecordBatch<'a> {
    /// Parses the batch at the front of `buf`, checking its framing: enough bytes for the header
    /// and for `batchLength`, and magic 2. Returns the batch and the bytes after it. The CRC and
    /// records are not checked: see [`RecordBatch::validate`].
    ///
    /// # Errors
    /// [`BatchError::ShortBuffer`], [`BatchError::BadLength`] or [`BatchError::BadMagic`].
    pub fn parse(buf: &'a [u8]) -> Result<(Self, &'a [u8]), BatchError> {
        let size = batch_size(buf)?;
        if buf.len() < BATCH_HEADER_LEN.max(size) {
            return Err(BatchError::ShortBuffer {
                needed: BATCH_HEADER_LEN.max(size),
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic { magic });
        }
        let (batch, rest) = buf.split_at(size);
        Ok((RecordBatch { buf: batch }, rest))
    }

    /// Parses `buf` as exactly one batch (no trailing bytes allowed).
    ///
    /// # Errors
    /// As [`RecordBatch::parse`], or [`BatchError::BadLength`] when bytes follow the batch.
    pub fn parse_exact(buf: &'a [u8]) -> Result<Self, BatchError> {
        let (batch, rest) = Self::parse(buf)?;
        if !rest.is_empty() {
            return Err(BatchError::BadLength {
                length: read_i32(buf, LENGTH_POS),
                min: (buf.len() - LOG_OVERHEAD).min(i32::MAX as usize) as i32,
            });
        }
        Ok(batch)
    }

    /// The whole batch's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Size of the batch in bytes, header included.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        read_i64(self.buf, BASE_OFFSET_POS)
    }

    /// Offset of the last record: `base_offset + last_offset_delta` (saturating: a batch whose
    /// sum overflows is refused by [`RecordBatch::check_offset_range`]).
    pub fn last_offset(&self) -> i64 {
        self.base_offset().saturating_add(i64::from(self.last_offset_delta()))
    }

    /// The offset after this batch (saturating, as [`RecordBatch::last_offset`]).
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Checks that the batch's offsets are representable: `lastOffsetDelta` not negative and
    /// `baseOffset + lastOffsetDelta + 1` within `i64`.
    ///
    /// # Errors
    /// [`BatchError::OffsetOverflow`].
    pub fn check_offset_range(&self) -> Result<(), BatchError> {
        let (base_offset, last_offset_delta) = (self.base_offset(), self.last_offset_delta());
        if last_offset_delta < 0
            || base_offset < 0
            || base_offset.checked_add(i64::from(last_offset_delta) + 1).is_none()
        {
            return Err(BatchError::OffsetOverflow { base_offset, last_offset_delta });
        }
        Ok(())
    }

    /// Leader epoch of the leader that appended the batch.
    pub fn partition_leader_epoch(&self) -> i32 {
        read_i32(self.buf, LEADER_EPOCH_POS)
    }

    /// The CRC stored in the batch.
    pub fn stored_crc(&self) -> u32 {
        read_i32(self.buf, CRC_POS) as u32
    }

    /// CRC-32C computed over `attributes..end`.
    pub fn computed_crc(&self) -> u32 {
        crc32c(&self.buf[ATTRIBUTES_POS..])
    }

    /// The raw attributes field.
    pub fn attributes(&self) -> i16 {
        read_i16(self.buf, ATTRIBUTES_POS)
    }

    /// The codec id in the attributes (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression_id(&self) -> u8 {
        (self.attributes() & COMPRESSION_MASK) as u8
    }

    /// The compression codec.
    ///
    /// # Errors
    /// [`BatchError::UnsupportedCompression`] for snappy and unknown codecs.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_id(self.compression_id())
    }

    /// Whether timestamps are create time or log append time.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes() & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }

    /// A control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }

    /// `lastOffsetDelta`.
    pub fn last_offset_delta(&self) -> i32 {
        read_i32(self.buf, LAST_OFFSET_DELTA_POS)
    }

    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        read_i64(self.buf, BASE_TIMESTAMP_POS)
    }

    /// Largest record timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        read_i64(self.buf, MAX_TIMESTAMP_POS)
    }

    /// Producer id, -1 when the producer is not idempotent.
    pub fn producer_id(&self) -> i64 {
        read_i64(self.buf, PRODUCER_ID_POS)
    }

    /// Producer epoch, -1 when the producer is not idempotent.
    pub fn producer_epoch(&self) -> i16 {
        read_i16(self.buf, PRODUCER_EPOCH_POS)
    }

    /// Sequence number of the first record, -1 when the producer is not idempotent.
    pub fn base_sequence(&self) -> i32 {
        read_i32(self.buf, BASE_SEQUENCE_POS)
    }

    /// `recordsCount`.
    pub fn records_count(&self) -> i32 {
        read_i32(self.buf, RECORDS_COUNT_POS)
    }

    /// Checks the CRC.
    ///
    /// # Errors
    /// [`BatchError::CrcMismatch`].
    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let (expected, actual) = (self.stored_crc(), self.computed_crc());
        if expected != actual {
            return Err(BatchError::CrcMismatch { expected, actual });
        }
        Ok(())
    }

    /// Validates the batch: size against `max_batch_bytes`, CRC, and with
    /// [`Validation::Records`] or [`Validation::Full`] every record.
    ///
    /// # Errors
    /// The [`BatchError`] for the first check that fails.
    pub fn validate(&self, max_batch_bytes: usize, level: Validation) -> Result<(), BatchError> {
        self.check(max_batch_bytes, level, false)
    }

    /// [`Validation::Full`] for a batch bound for a compacted topic: also refuses a record
    /// without a key (a compacted log keeps the latest record per key, so a keyless record has
    /// no meaning there; Kafka refuses it too).
    ///
    /// # Errors
    /// As [`RecordBatch::validate`], and [`BatchError::MissingKey`] for the first keyless
    /// record.
    pub fn validate_keyed(&self, max_batch_bytes: usize) -> Result<(), BatchError> {
        self.check(max_batch_bytes, Validation::Full, true)
    }

    fn check(
        &self,
        max_batch_bytes: usize,
        level: Validation,
        require_keys: bool,
    ) -> Result<(), BatchError> {
        if self.size() > max_batch_bytes {
            return Err(BatchError::TooLarge { size: self.size(), max: max_batch_bytes });
        }
        self.verify_crc()?;
        let count = self.records_count();
        let deltas = match level {
            Validation::Crc => return Ok(()),
            Validation::Full => {
                if self.is_control() {
                    return Err(BatchError::Unsupported { what: "control batch from a producer" });
                }
                if self.is_transactional() {
                    return Err(BatchError::Unsupported { what: "transactional batch" });
                }
                if count <= 0 {
                    return Err(BatchError::InvalidRecordCount { count });
                }
                if self.last_offset_delta() != count - 1 {
                    return Err(BatchError::OffsetDeltaMismatch {
                        what: "lastOffsetDelta".to_string(),
                        expected: i64::from(count - 1),
                        actual: i64::from(self.last_offset_delta()),
                    });
                }
                Deltas::Contiguous
            }
            Validation::Records => {
                self.check_offset_range()?;
                if count < 0 || i64::from(count) > i64::from(self.last_offset_delta()) + 1 {
                    return Err(BatchError::InvalidRecordCount { count });
                }
                Deltas::Increasing { last: self.last_offset_delta() }
            }
        };
        let records = self.records()?;
        // The lean walk accepts exactly what the decoder accepts; when it refuses, the decoder
        // runs to name the precise error.
        let walk = match check_records(&records.data, count, self.base_timestamp(), deltas) {
            Some(walk) => walk,
            None => self.explain_records(&records, count, deltas)?,
        };
        if walk.seen != count {
            return Err(BatchError::RecordCountMismatch { header: count, actual: walk.seen });
        }
        if self.timestamp_type() == TimestampType::CreateTime {
            let consistent = match deltas {
                Deltas::Contiguous => walk.max_timestamp == self.max_timestamp(),
                // Compaction keeps the batch's maxTimestamp when it removes records.
                Deltas::Increasing { .. } => walk.max_timestamp <= self.max_timestamp(),
            };
            if !consistent {
                return Err(BatchError::MaxTimestampMismatch {
                    header: self.max_timestamp(),
                    actual: walk.max_timestamp,
                });
            }
        }
        if require_keys && let Some(index) = walk.first_null_key {
            return Err(BatchError::MissingKey { index });
        }
        Ok(())
    }

    /// Decodes the records one by one to find and describe what the lean walk refused; returns
    /// the walk's result when every record is fine.
    fn explain_records(
        &self,
        records: &Records<'_>,
        count: i32,
        deltas: Deltas,
    ) -> Result<Walk, BatchError> {
        let mut walk = Walk { seen: 0, max_timestamp: i64::MIN, first_null_key: None };
        let mut previous: i64 = -1;
        for record in records.iter() {
            let record = record?;
            let seen = walk.seen;
            if seen == count {
                return Err(BatchError::RecordCountMismatch { header: count, actual: seen + 1 });
            }
            let delta = i64::from(record.offset_delta);
            match deltas {
                Deltas::Contiguous if delta != i64::from(seen) => {
                    return Err(BatchError::OffsetDeltaMismatch {
                        what: format!("record {seen} offsetDelta"),
                        expected: i64::from(seen),
                        actual: delta,
                    });
                }
                Deltas::Increasing { last } if delta <= previous || delta > i64::from(last) => {
                    return Err(BatchError::OffsetDeltaMismatch {
                        what: format!(
                            "record {seen} offsetDelta (must exceed the previous {previous} and be at most lastOffsetDelta {last})"
                        ),
                        expected: previous + 1,
                        actual: delta,
                    });
                }
                _ => {}
            }
            previous = delta;
            if record.key.is_none() && walk.first_null_key.is_none() {
                walk.first_null_key = Some(seen);
            }
            walk.max_timestamp = walk.max_timestamp.max(record.timestamp);
            walk.seen += 1;
        }
        Ok(walk)
    }

    /// The records section, decompressed when needed (to at most
    /// [`MAX_DECOMPRESSED_BYTES`], so a decompression bomb cannot exhaust memory).
    ///
    /// # Errors
    /// [`BatchError::UnsupportedCompression`] or [`BatchError::Decompression`].
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        let raw = &self.buf[BATCH_HEADER_LEN..];
        let data = match self.compression()? {
            Compression::None => Cow::Borrowed(raw),
            codec => Cow::Owned(codec.decompress(raw, MAX_DECOMPRESSED_BYTES)?),
        };
        Ok(Records {
            data,
            count: self.records_count(),
            base_offset: self.base_offset(),
            base_timestamp: self.base_timestamp(),
        })
    }
}

/// The records section of a batch, decompressed if it was compressed. Iterate with
/// [`Records::iter`]; records borrow from this value.
#[derive(Debug)]
pub struct Records<'a> {
    data: Cow<'a, [u8]>,
    count: i32,
    base_offset: i64,
    base_timestamp: i64,
}

impl Records<'_> {
    /// Record count from the batch header.
    pub fn count(&self) -> i32 {
        self.count
    }

    /// A borrowing iterator over the records.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            rest: &self.data,
            index: 0,
            base_offset: self.base_offset,
            base_timestamp: self.base_timestamp,
        }
    }
}

/// One record header: a UTF-8 key and an optional value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header key (checked to be UTF-8, as Kafka's format requires).
    pub key: &'a str,
    /// Header value, `None` for null.
    pub value: Option<&'a [u8]>,
}

/// A record borrowed from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset: the batch's base offset plus `offset_delta`.
    pub offset: i64,
    /// Absolute timestamp in ms: the batch's base timestamp plus `timestamp_delta`.
    pub timestamp: i64,
    /// `offsetDelta` as stored.
    pub offset_delta: i32,
    /// `timestampDelta` as stored.
    pub timestamp_delta: i64,
    /// Key, `None` for null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for null (a tombstone in compacted topics).
    pub value: Option<&'a [u8]>,
    /// Headers in order.
    pub headers: Vec<Header<'a>>,
}

/// Iterator over the records of a batch; yields an error and then stops at the first record
/// that cannot be decoded.
#[derive(Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    index: i32,
    base_offset: i64,
    base_timestamp: i64,
}

impl<'a> RecordIter<'a> {
    /// The next record with its encoded bytes (length prefix included), which stay valid in a
    /// batch with the same base offset and base timestamp: the cleaner copies kept records
    /// this way, without re-encoding them.
    pub(crate) fn next_with_bytes(&mut self) -> Option<Result<(Record<'a>, &'a [u8]), BatchError>> {
        if self.rest.is_empty() {
            return None;
        }
        let index = self.index;
        self.index += 1;
        match decode_record(self.rest, self.base_offset, self.base_timestamp) {
            Ok((record, used)) => {
                let (bytes, rest) = self.rest.split_at(used);
                self.rest = rest;
                Some(Ok((record, bytes)))
            }
            Err(reason) => {
                self.rest = &[];
                Some(Err(BatchError::MalformedRecord { index, reason }))
            }
        }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_bytes().map(|r| r.map(|(record, _)| record))
    }
}

/// A cursor over a record's bytes that turns every failure into a message.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    #[inline]
    fn varint(&mut self, field: &str) -> Result<i32, String> {
        // Most varints of a record (attributes aside, each field) fit in one byte.
        if let Some(&first) = self.buf.first()
            && first < 0x80
        {
            self.buf = &self.buf[1..];
            return Ok(i32::from(first >> 1) ^ -i32::from(first & 1));
        }
        let (v, n) = get_varint(self.buf).map_err(|e| varint_msg(field, e))?;
        self.buf = &self.buf[n..];
        Ok(v)
    }

    #[inline]
    fn varlong(&mut self, field: &str) -> Result<i64, String> {
        if let Some(&first) = self.buf.first()
            && first < 0x80
        {
            self.buf = &self.buf[1..];
            return Ok(i64::from(first >> 1) ^ -i64::from(first & 1));
        }
        let (v, n) = get_varlong(self.buf).map_err(|e| varint_msg(field, e))?;
        self.buf = &self.buf[n..];
        Ok(v)
    }

    #[inline]
    fn bytes(&mut self, len: usize, field: &str) -> Result<&'a [u8], String> {
        if self.buf.len() < len {
            return Err(format!("{field} needs {len} bytes, {} left", self.buf.len()));
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    /// A varint length followed by that many bytes; -1 means null.
    #[inline]
    fn nullable_bytes(&mut self, field: &str) -> Result<Option<&'a [u8]>, String> {
        match self.varint(field)? {
            -1 => Ok(None),
            len if len < 0 => Err(format!("{field} length {len} is negative")),
            len => self.bytes(len as usize, field).map(Some),
        }
    }
}

fn varint_msg(field: &str, e: VarintError) -> String {
    match e {
        VarintError::Truncated => format!("{field} varint is truncated"),
        VarintError::Overflow => format!("{field} varint overflows"),
    }
}

fn decode_record<'a>(
    buf: &'a [u8],
    base_offset: i64,
    base_timestamp: i64,
) -> Result<(Record<'a>, usize), String> {
    let mut outer = Cursor { buf };
    let length = outer.varint("length")?;
    if length < 0 {
        return Err(format!("record length {length} is negative"));
    }
    let header_len = buf.len() - outer.buf.len();
    let body = outer.bytes(length as usize, "record body")?;
    let mut c = Cursor { buf: body };
    let _attributes = c.bytes(1, "attributes")?;
    let timestamp_delta = c.varlong("timestampDelta")?;
    let offset_delta = c.varint("offsetDelta")?;
    let key = c.nullable_bytes("key")?;
    let value = c.nullable_bytes("value")?;
    let header_count = c.varint("headerCount")?;
    if header_count < 0 {
        return Err(format!("header count {header_count} is negative"));
    }
    let mut headers = Vec::new();
    for h in 0..header_count {
        let key_len = c.varint("header key length")?;
        if key_len < 0 {
            return Err(format!("header {h} key length {key_len} is negative"));
        }
        let key = std::str::from_utf8(c.bytes(key_len as usize, "header key")?)
            .map_err(|e| format!("header {h} key is not UTF-8: {e}"))?;
        let value = c.nullable_bytes("header value")?;
        headers.push(Header { key, value });
    }
    if !c.buf.is_empty() {
        return Err(format!("{} bytes left after the record's fields", c.buf.len()));
    }
    let record = Record {
        // Wrapping: a producer's baseOffset is arbitrary until the log assigns the real one.
        offset: base_offset.wrapping_add(i64::from(offset_delta)),
        timestamp: base_timestamp.wrapping_add(timestamp_delta),
        offset_delta,
        timestamp_delta,
        key,
        value,
        headers,
    };
    Ok((record, header_len + length as usize))
}

/// The validation walk over a records section: checks every record's framing exactly as
/// [`decode_record`] does (lengths, varints, UTF-8 header keys, no bytes left over) and that
/// offset deltas run as `deltas` says, without building records. Returns the number of records,
/// the largest timestamp and the first keyless record, or `None` at the first problem (or at
/// record `count`, one too many).
fn check_records(data: &[u8], count: i32, base_timestamp: i64, deltas: Deltas) -> Option<Walk> {
    let mut pos = 0usize;
    let mut walk = Walk { seen: 0, max_timestamp: i64::MIN, first_null_key: None };
    let mut previous: i32 = -1;
    while pos < data.len() {
        if walk.seen == count {
            return None;
        }
        let length = usize::try_from(varint_at(data, &mut pos)?).ok()?;
        let end = pos.checked_add(length).filter(|&e| e <= data.len())?;
        let body = &data[..end];
        pos += 1; // attributes
        let timestamp_delta = varlong_at(body, &mut pos)?;
        let delta = varint_at(body, &mut pos)?;
        let delta_ok = match deltas {
            Deltas::Contiguous => delta == walk.seen,
            Deltas::Increasing { last } => delta > previous && delta <= last,
        };
        if !delta_ok {
            return None;
        }
        previous = delta;
        if skip_nullable(body, &mut pos)? && walk.first_null_key.is_none() {
            walk.first_null_key = Some(walk.seen);
        }
        skip_nullable(body, &mut pos)?; // value
        let headers = varint_at(body, &mut pos)?;
        for _ in 0..usize::try_from(headers).ok()? {
            let key_len = usize::try_from(varint_at(body, &mut pos)?).ok()?;
            let key_end = pos.checked_add(key_len).filter(|&e| e <= end)?;
            std::str::from_utf8(&body[pos..key_end]).ok()?;
            pos = key_end;
            skip_nullable(body, &mut pos)?;
        }
        if pos != end {
            return None;
        }
        walk.max_timestamp = walk.max_timestamp.max(base_timestamp.wrapping_add(timestamp_delta));
        walk.seen += 1;
    }
    Some(walk)
}

/// Reads a zig-zag varint at `*pos` of `buf` (one-byte values on a fast path).
#[inline]
fn varint_at(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(i32::from(first >> 1) ^ -i32::from(first & 1));
    }
    let (v, n) = get_varint(&buf[*pos..]).ok()?;
    *pos += n;
    Some(v)
}

/// Reads a zig-zag varlong at `*pos` of `buf` (one-byte values on a fast path).
#[inline]
fn varlong_at(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(i64::from(first >> 1) ^ -i64::from(first & 1));
    }
    let (v, n) = get_varlong(&buf[*pos..]).ok()?;
    *pos += n;
    Some(v)
}

/// Skips a varint length (-1 for null) and that many bytes; true when the field was null.
#[inline]
fn skip_nullable(buf: &[u8], pos: &mut usize) -> Option<bool> {
    match varint_at(buf, pos)? {
        -1 => Some(true),
        len if len < 0 => None,
        len => {
            *pos = pos.checked_add(len as usize).filter(|&e| e <= buf.len())?;
            Some(false)
        }
    }
}

/// CRC-32C (Castagnoli), the RecordBatch v2 checksum. `crc-fast` folds with carry-less
/// multiplication (VPCLMULQDQ/PCLMULQDQ/PMULL, detected at run time): about twice the speed of
/// the `crc32` instruction here, which matters because every produced byte is checksummed.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// Iterates over the batches laid back to back in `buf`, checking each one's framing.
pub fn batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter { rest: buf }
}

/// Iterator returned by [`batches`]; yields an error and stops at the first bad frame.
#[derive(Debug)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<RecordBatch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match RecordBatch::parse(self.rest) {
            Ok((batch, rest)) => {
                self.rest = rest;
                Some(Ok(batch))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// A copy of `batch` holding only `records`: the encoded bytes of some of its records, in
/// order, as [`RecordIter::next_with_bytes`] returned them (their offset and timestamp deltas
/// stay valid, as the base offset and base timestamp are kept). The records section is
/// compressed again with the batch's codec; every header field but `batchLength`,
/// `recordsCount` and the CRC is kept, `lastOffsetDelta` and `maxTimestamp` included, so the
/// batch still covers the same offsets and keeps its age.
///
/// # Errors
/// [`BatchError::UnsupportedCompression`] for a codec this log does not write.
pub(crate) fn rebuild(batch: &RecordBatch<'_>, records: &[&[u8]]) -> Result<Vec<u8>, BatchError> {
    let codec = batch.compression()?;
    let plain: Vec<u8> = records.concat();
    let section = match codec {
        Compression::None => plain,
        codec => codec.compress(&plain),
    };
    let count = i32::try_from(records.len()).unwrap_or(i32::MAX);
    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + section.len());
    out.extend_from_slice(&batch.as_bytes()[..BATCH_HEADER_LEN]);
    out.extend_from_slice(&section);
    finish_header(&mut out, batch.attributes(), count);
    Ok(out)
}

/// A batch with no records that keeps `batch`'s offsets (`baseOffset`, `lastOffsetDelta`),
/// leader epoch, timestamps and producer fields, uncompressed. Kafka keeps such batches where a
/// batch's records all went but its offsets or producer sequence must stay visible.
pub(crate) fn emptied(batch: &RecordBatch<'_>) -> Vec<u8> {
    let mut out = batch.as_bytes()[..BATCH_HEADER_LEN].to_vec();
    finish_header(&mut out, batch.attributes() & !COMPRESSION_MASK, 0);
    out
}

/// Sets `batchLength` from the buffer's length, `attributes`, `recordsCount` and the CRC of a
/// batch laid out in `buf`.
fn finish_header(buf: &mut [u8], attributes: i16, count: i32) {
    let length = i32::try_from(buf.len() - LOG_OVERHEAD).unwrap_or(i32::MAX);
    buf[LENGTH_POS..LENGTH_POS + 4].copy_from_slice(&length.to_be_bytes());
    buf[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    buf[RECORDS_COUNT_POS..RECORDS_COUNT_POS + 4].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c(&buf[ATTRIBUTES_POS..]);
    buf[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Writes `base_offset` and `leader_epoch` into the header of the batch at the front of `buf`.
/// Both fields are outside the CRC, so the batch stays valid.
///
/// # Panics
/// If `buf` is shorter than 16 bytes.
pub fn set_offset_and_epoch(buf: &mut [u8], base_offset: i64, leader_epoch: i32) {
    buf[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
    buf[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

pub(crate) fn read_i64(buf: &[u8], pos: usize) -> i64 {
    i64::from_be_bytes(buf[pos..pos + 8].try_into().expect("8 bytes"))
}

pub(crate) fn read_i32(buf: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes(buf[pos..pos + 4].try_into().expect("4 bytes"))
}

pub(crate) fn read_i16(buf: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes(buf[pos..pos + 2].try_into().expect("2 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{RecordBatchBuilder, RecordHeader};
    use proptest::prelude::*;

    /// What the full decoder says about a records section: count, max timestamp and first
    /// keyless record, or refusal.
    fn decoded(data: &[u8], count: i32, base_timestamp: i64, deltas: Deltas) -> Option<Walk> {
        let records = Records { data: Cow::Borrowed(data), count, base_offset: 0, base_timestamp };
        let mut walk = Walk { seen: 0, max_timestamp: i64::MIN, first_null_key: None };
        let mut previous = -1;
        for r in records.iter() {
            let r = r.ok()?;
            let delta_ok = match deltas {
                Deltas::Contiguous => r.offset_delta == walk.seen,
                Deltas::Increasing { last } => r.offset_delta > previous && r.offset_delta <= last,
            };
            if walk.seen == count || !delta_ok {
                return None;
            }
            previous = r.offset_delta;
            if r.key.is_none() && walk.first_null_key.is_none() {
                walk.first_null_key = Some(walk.seen);
            }
            walk.max_timestamp = walk.max_timestamp.max(r.timestamp);
            walk.seen += 1;
        }
        Some(walk)
    }

    proptest! {
        /// The CRC-32C implementation agrees with the `crc32c` crate (SSE4.2 / table based) on
        /// any input, including the lengths where SIMD folding switches strategy.
        #[test]
        fn crc32c_agrees_with_an_independent_implementation(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            prop_assert_eq!(crc32c(&data), ::crc32c::crc32c(&data));
        }

        /// The lean validation walk accepts exactly what the record decoder accepts, with the
        /// same count and max timestamp, for valid sections and for sections with random damage.
        #[test]
        fn lean_walk_agrees_with_the_decoder(
            records in proptest::collection::vec(
                (any::<i16>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
                 proptest::option::of("[a-zé]{0,3}"), any::<bool>()),
                1..20),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            count_delta in -1i32..=1,
            increasing in proptest::option::of(0i32..40),
        ) {
            let mut b = RecordBatchBuilder::new(Compression::None);
            for (ts, value, header, keyed) in &records {
                let headers: Vec<RecordHeader> =
                    header.iter().map(|k| RecordHeader { key: k.clone(), value: None }).collect();
                let key = keyed.then_some(&b"k"[..]);
                b.append(i64::from(*ts), key, value.as_deref(), &headers);
            }
            let built = b.build();
            let mut data = built[BATCH_HEADER_LEN..].to_vec();
            for (at, byte) in edits {
                let i = at.index(data.len());
                data[i] = byte;
            }
            let count = records.len() as i32 + count_delta;
            let base = i64::from(records[0].0);
            let deltas = increasing.map_or(Deltas::Contiguous, |last| Deltas::Increasing { last });
            prop_assert_eq!(
                check_records(&data, count, base, deltas),
                decoded(&data, count, base, deltas)
            );
        }
    }
}
