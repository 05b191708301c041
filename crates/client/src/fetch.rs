//! Decoding a fetch response: whole Kafka v2 batches back to back, the first of which may
//! start before the position fetched from. Records below the position are skipped; keys,
//! values and headers of uncompressed batches are slices of the response buffer, not copies.

use bytes::Bytes;
use tideline_log::batch::batches;
use tideline_log::{BatchError, Compression, TimestampType};

use crate::record::ConsumerRecord;

/// The records of a fetch response at or after the position, and the position after them.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) records: Vec<ConsumerRecord>,
    /// Where the next fetch starts: past the last batch returned (control batches included),
    /// or the position unchanged when nothing came.
    pub(crate) next_position: i64,
}

/// Decodes the batches in `data`, fetched from `topic`-`partition` at `position`.
///
/// # Errors
/// The first [`BatchError`]: bad framing, CRC mismatch (when `check_crcs`), an undecodable
/// record. A partial batch after at least one whole one is not an error: it comes whole with
/// the next fetch.
pub(crate) fn decode(
    topic: &str,
    partition: i32,
    data: &Bytes,
    position: i64,
    check_crcs: bool,
) -> Result<Decoded, BatchError> {
    let mut records = Vec::new();
    // One name for all the records, not an allocation each.
    let shared_topic: std::sync::Arc<str> = std::sync::Arc::from(topic);
    let mut next_position = position;
    let mut parsed_any = false;
    for batch in batches(data) {
        let batch = match batch {
            Ok(batch) => batch,
            Err(BatchError::ShortBuffer { .. }) if parsed_any => break,
            Err(e) => return Err(e),
        };
        parsed_any = true;
        if batch.next_offset() <= position {
            continue;
        }
        if check_crcs {
            batch.verify_crc()?;
        }
        if !batch.is_control() {
            let zero_copy = batch.compression()? == Compression::None;
            let to_bytes = |b: &[u8]| {
                if zero_copy { data.slice_ref(b) } else { Bytes::copy_from_slice(b) }
            };
            let append_time = (batch.timestamp_type() == TimestampType::LogAppendTime)
                .then(|| batch.max_timestamp());
            let section = batch.records()?;
            records.reserve(section.count().max(0) as usize);
            for record in section.iter() {
                let record = record?;
                if record.offset < position {
                    continue;
                }
                records.push(ConsumerRecord {
                    topic: shared_topic.clone(),
                    partition,
                    offset: record.offset,
                    timestamp_ms: append_time.unwrap_or(record.timestamp),
                    key: record.key.map(to_bytes),
                    value: record.value.map(to_bytes),
                    headers: record
                        .headers
                        .iter()
                        .map(|h| (h.key.to_string(), h.value.map(to_bytes)))
                        .collect(),
                });
            }
        }
        next_position = next_position.max(batch.next_offset());
    }
    Ok(Decoded { records, next_position })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tideline_log::batch::set_offset_and_epoch;
    use tideline_log::{RecordBatchBuilder, RecordHeader};

    /// A batch of `count` records at `base_offset`, values `v{offset}`, key `k` on even
    /// offsets, one header.
    fn batch(base_offset: i64, count: i64, compression: Compression) -> Bytes {
        let mut builder = RecordBatchBuilder::new(compression);
        for offset in base_offset..base_offset + count {
            let key = (offset % 2 == 0).then_some(&b"k"[..]);
            let value = format!("v{offset}");
            let headers =
                [RecordHeader { key: "h".into(), value: Some(Bytes::from(offset.to_string())) }];
            builder.append(1_000 + offset, key, Some(value.as_bytes()), &headers);
        }
        let mut buf = BytesMut::from(&builder.build()[..]);
        set_offset_and_epoch(&mut buf, base_offset, 0);
        buf.freeze()
    }

    fn concat(parts: &[Bytes]) -> Bytes {
        parts.iter().flat_map(|p| p.iter().copied()).collect::<Vec<u8>>().into()
    }

    /// Records below the position (in a batch that starts before it) are skipped, the rest
    /// come in order with their fields, and the position moves past the last batch.
    #[test]
    fn skips_records_below_the_position() {
        for compression in [Compression::None, Compression::Lz4] {
            let data = concat(&[batch(10, 5, compression), batch(15, 3, compression)]);
            let decoded = decode("t", 2, &data, 12, true).unwrap();
            let offsets: Vec<i64> = decoded.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, [12, 13, 14, 15, 16, 17], "{compression:?}");
            assert_eq!(decoded.next_position, 18);
            let r = &decoded.records[0];
            assert_eq!((&*r.topic, r.partition, r.timestamp_ms), ("t", 2, 1_012));
            assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
            assert_eq!(r.value.as_deref(), Some(&b"v12"[..]));
            assert_eq!(r.headers, [("h".to_string(), Some(Bytes::from_static(b"12")))]);
            assert_eq!(decoded.records[1].key, None);
        }
    }

    /// Batches wholly below the position are skipped; an empty response leaves the position.
    #[test]
    fn whole_batches_below_the_position_and_empty_responses() {
        let data = concat(&[batch(0, 5, Compression::None), batch(5, 5, Compression::None)]);
        let decoded = decode("t", 0, &data, 7, true).unwrap();
        assert_eq!(decoded.records.first().map(|r| r.offset), Some(7));
        assert_eq!(decoded.records.len(), 3);

        let empty = decode("t", 0, &Bytes::new(), 42, true).unwrap();
        assert!(empty.records.is_empty());
        assert_eq!(empty.next_position, 42);
    }

    /// A cut-off batch after a whole one is left for the next fetch; a corrupt one fails.
    #[test]
    fn partial_and_corrupt_batches() {
        let whole = batch(0, 2, Compression::None);
        let next = batch(2, 2, Compression::None);
        let data = concat(&[whole.clone(), next.slice(..next.len() - 3)]);
        let decoded = decode("t", 0, &data, 0, true).unwrap();
        assert_eq!(decoded.records.len(), 2);
        assert_eq!(decoded.next_position, 2);

        let mut corrupt = BytesMut::from(&whole[..]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let corrupt = corrupt.freeze();
        assert!(matches!(decode("t", 0, &corrupt, 0, true), Err(BatchError::CrcMismatch { .. })));
        let only_partial = whole.slice(..20);
        assert!(decode("t", 0, &only_partial, 0, true).is_err());
    }

    /// Values of uncompressed batches share the response buffer instead of being copied.
    #[test]
    fn uncompressed_values_are_slices_of_the_response() {
        let data = batch(0, 3, Compression::None);
        let decoded = decode("t", 0, &data, 0, true).unwrap();
        let value = decoded.records[2].value.as_ref().unwrap();
        let range = data.as_ptr_range();
        assert!(range.contains(&value.as_ptr()), "value points into the fetched bytes");
    }
}
