//! The sparse per-segment indexes, kept in memory and written beside the segment as Kafka lays
//! them out: `.index` holds 8-byte entries (relative offset u32, file position u32) and
//! `.timeindex` 12-byte entries (timestamp i64, relative offset u32), all big-endian.
//!
//! An offset index entry points at the start of a batch; a time index entry says "the largest
//! timestamp in this segment up to and including the batch at this offset is T".

/// One offset index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    /// Batch base offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

/// Sparse map from offsets to file positions, strictly increasing in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub const ENTRY_LEN: usize = 8;

    /// Adds an entry past the last one; an entry at or before it (a re-scan of indexed
    /// batches) is ignored.
    pub fn maybe_push(&mut self, entry: OffsetEntry) {
        if self.entries.last().is_none_or(|last| {
            last.relative_offset < entry.relative_offset && last.position < entry.position
        }) {
            self.entries.push(entry);
        }
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// The last entry whose offset is at most `relative_offset`.
    pub fn floor_offset(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let n = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry whose position is at most `position`.
    pub fn floor_position(&self, position: u32) -> Option<OffsetEntry> {
        let n = self.entries.partition_point(|e| e.position <= position);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * Self::ENTRY_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Decodes an index file, checking that it can belong to a segment of `segment_size` bytes.
    pub fn decode(bytes: &[u8], segment_size: u64) -> Result<Self, String> {
        if !bytes.len().is_multiple_of(Self::ENTRY_LEN) {
            return Err(format!("size {} is not a multiple of {}", bytes.len(), Self::ENTRY_LEN));
        }
        let mut index = OffsetIndex::default();
        for chunk in bytes.chunks_exact(Self::ENTRY_LEN) {
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes(chunk[0..4].try_into().expect("4 bytes")),
                position: u32::from_be_bytes(chunk[4..8].try_into().expect("4 bytes")),
            };
            if u64::from(entry.position) >= segment_size {
                return Err(format!(
                    "entry position {} is past the segment end {segment_size}",
                    entry.position
                ));
            }
            if let Some(last) = index.last()
                && (entry.relative_offset <= last.relative_offset
                    || entry.position <= last.position)
            {
                return Err(format!("entries not increasing: {last:?} then {entry:?}"));
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

/// One time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Largest timestamp seen in the segment up to this batch.
    pub timestamp: i64,
    /// Base offset of the batch, relative to the segment's base offset.
    pub relative_offset: u32,
}

/// Sparse map from timestamps to offsets, strictly increasing in timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    pub const ENTRY_LEN: usize = 12;

    /// Adds an entry if it raises the largest timestamp.
    pub fn maybe_push(&mut self, entry: TimeEntry) {
        if self.entries.last().is_none_or(|last| entry.timestamp > last.timestamp) {
            self.entries.push(entry);
        }
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// The last entry with a timestamp strictly below `timestamp`: every record before its
    /// batch is older than `timestamp`.
    pub fn floor_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let n = self.entries.partition_point(|e| e.timestamp < timestamp);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * Self::ENTRY_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        out
    }

    /// Decodes a time index file, checking entries against the segment's offset range.
    pub fn decode(bytes: &[u8], max_relative_offset: u32) -> Result<Self, String> {
        if !bytes.len().is_multiple_of(Self::ENTRY_LEN) {
            return Err(format!("size {} is not a multiple of {}", bytes.len(), Self::ENTRY_LEN));
        }
        let mut index = TimeIndex::default();
        for chunk in bytes.chunks_exact(Self::ENTRY_LEN) {
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(chunk[0..8].try_into().expect("8 bytes")),
                relative_offset: u32::from_be_bytes(chunk[8..12].try_into().expect("4 bytes")),
            };
            if entry.relative_offset > max_relative_offset {
                return Err(format!("entry offset {} is past the segment", entry.relative_offset));
            }
            if let Some(last) = index.last()
                && (entry.timestamp <= last.timestamp
                    || entry.relative_offset < last.relative_offset)
            {
                return Err(format!("entries not increasing: {last:?} then {entry:?}"));
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index_of(steps: &[(u32, u32)]) -> OffsetIndex {
        let mut index = OffsetIndex::default();
        let (mut off, mut pos) = (0u32, 0u32);
        for &(d_off, d_pos) in steps {
            off += d_off + 1;
            pos += d_pos + 1;
            index.maybe_push(OffsetEntry { relative_offset: off, position: pos });
        }
        index
    }

    proptest! {
        /// Lookups are monotonic: a larger key never maps to an earlier entry, and the entry
        /// found is never past the key.
        #[test]
        fn offset_lookups_are_monotonic(
            steps in proptest::collection::vec((0u32..1000, 0u32..100_000), 0..200),
            mut keys in proptest::collection::vec(0u32..300_000, 1..50),
        ) {
            let index = index_of(&steps);
            keys.sort_unstable();
            let mut last: Option<OffsetEntry> = None;
            for k in keys {
                let found = index.floor_offset(k);
                if let Some(e) = found {
                    prop_assert!(e.relative_offset <= k);
                }
                if let (Some(prev), Some(cur)) = (last, found) {
                    prop_assert!(prev.relative_offset <= cur.relative_offset);
                }
                prop_assert!(!(last.is_some() && found.is_none()));
                last = found;
            }
        }

        #[test]
        fn index_files_round_trip(steps in proptest::collection::vec((0u32..1000, 0u32..100_000), 0..200)) {
            let index = index_of(&steps);
            let bytes = index.encode();
            prop_assert_eq!(OffsetIndex::decode(&bytes, u64::MAX).unwrap(), index);
        }
    }

    #[test]
    fn corrupt_index_files_are_rejected() {
        let index = index_of(&[(1, 10), (1, 10)]);
        let bytes = index.encode();
        assert!(OffsetIndex::decode(&bytes[..5], 1000).is_err(), "torn entry");
        assert!(OffsetIndex::decode(&bytes, 5).is_err(), "position past the segment");
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert!(OffsetIndex::decode(&swapped, 1000).is_err(), "not increasing");
    }

    #[test]
    fn time_index_floor_is_strictly_below() {
        let mut t = TimeIndex::default();
        t.maybe_push(TimeEntry { timestamp: 10, relative_offset: 0 });
        t.maybe_push(TimeEntry { timestamp: 10, relative_offset: 5 }); // not larger: skipped
        t.maybe_push(TimeEntry { timestamp: 20, relative_offset: 7 });
        assert_eq!(t.floor_below(10), None);
        assert_eq!(t.floor_below(11).unwrap().relative_offset, 0);
        assert_eq!(t.floor_below(21).unwrap().relative_offset, 7);
        let decoded = TimeIndex::decode(&t.encode(), 7).unwrap();
        assert_eq!(decoded, t);
        assert!(TimeIndex::decode(&t.encode(), 6).is_err());
    }
}
