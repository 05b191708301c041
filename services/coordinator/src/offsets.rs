//! Committed offsets of one `__consumer_offsets` shard: the records a coordinator writes to the
//! shard's partition, and the state it rebuilds by replaying them.
//!
//! Each commit is one record whose key names the group, topic and partition, so a compacted
//! partition keeps one record per key: the latest commit. Deleting offsets writes a tombstone
//! (a record with no value). Keys and values are small versioned binary encodings (big-endian,
//! length-prefixed strings), stable across releases:
//!
//! - key: `u16 version (1) | u16 len, group | u16 len, topic | i32 partition`
//! - value: `u16 version (1) | i64 offset | i32 leader epoch | i64 commit time ms |
//!   u16 len, metadata`

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

const VERSION: u16 = 1;

/// Where a commit applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OffsetKey {
    /// The group id.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset to consume.
    pub offset: i64,
    /// The leader epoch of the last consumed record, -1 when unknown.
    pub leader_epoch: i32,
    /// When it was committed, in ms since the Unix epoch.
    pub commit_time_ms: i64,
    /// Free-form client metadata.
    pub metadata: String,
}

/// A record of the shard that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed offsets record: {0}")]
pub struct RecordError(pub(crate) String);

pub(crate) fn put_str(out: &mut BytesMut, s: &str) -> Result<(), RecordError> {
    let len = u16::try_from(s.len())
        .map_err(|_| RecordError(format!("string of {} bytes is too long", s.len())))?;
    out.put_u16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

pub(crate) fn get_str(buf: &mut &[u8]) -> Result<String, RecordError> {
    if buf.remaining() < 2 {
        return Err(RecordError("truncated string length".into()));
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len {
        return Err(RecordError("truncated string".into()));
    }
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| RecordError("string is not UTF-8".into()))?
        .to_string();
    buf.advance(len);
    Ok(s)
}

fn version(buf: &mut &[u8]) -> Result<(), RecordError> {
    if buf.remaining() < 2 {
        return Err(RecordError("truncated version".into()));
    }
    match buf.get_u16() {
        VERSION => Ok(()),
        v => Err(RecordError(format!("unknown version {v}"))),
    }
}

impl OffsetKey {
    /// The record key.
    ///
    /// # Errors
    /// When a name is longer than 65535 bytes (topic names are at most 249, group ids are
    /// checked by the service).
    pub fn encode(&self) -> Result<Bytes, RecordError> {
        let mut out = BytesMut::with_capacity(10 + self.group.len() + self.topic.len());
        out.put_u16(VERSION);
        put_str(&mut out, &self.group)?;
        put_str(&mut out, &self.topic)?;
        out.put_i32(self.partition);
        Ok(out.freeze())
    }

    /// Reads a record key.
    ///
    /// # Errors
    /// [`RecordError`] when the bytes are not a key of this format.
    pub fn decode(mut buf: &[u8]) -> Result<Self, RecordError> {
        version(&mut buf)?;
        let group = get_str(&mut buf)?;
        let topic = get_str(&mut buf)?;
        if buf.remaining() != 4 {
            return Err(RecordError("bad key length".into()));
        }
        Ok(OffsetKey { group, topic, partition: buf.get_i32() })
    }
}

impl CommittedOffset {
    /// The record value.
    ///
    /// # Errors
    /// When the metadata is longer than 65535 bytes.
    pub fn encode(&self) -> Result<Bytes, RecordError> {
        let mut out = BytesMut::with_capacity(24 + self.metadata.len());
        out.put_u16(VERSION);
        out.put_i64(self.offset);
        out.put_i32(self.leader_epoch);
        out.put_i64(self.commit_time_ms);
        put_str(&mut out, &self.metadata)?;
        Ok(out.freeze())
    }

    /// Reads a record value.
    ///
    /// # Errors
    /// [`RecordError`] when the bytes are not a value of this format.
    pub fn decode(mut buf: &[u8]) -> Result<Self, RecordError> {
        version(&mut buf)?;
        if buf.remaining() < 20 {
            return Err(RecordError("truncated value".into()));
        }
        let offset = buf.get_i64();
        let leader_epoch = buf.get_i32();
        let commit_time_ms = buf.get_i64();
        let metadata = get_str(&mut buf)?;
        if buf.has_remaining() {
            return Err(RecordError("trailing bytes in value".into()));
        }
        Ok(CommittedOffset { offset, leader_epoch, commit_time_ms, metadata })
    }
}

/// The committed offsets of one shard, as its records say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetStore {
    offsets: BTreeMap<OffsetKey, CommittedOffset>,
}

impl OffsetStore {
    /// Applies one record of the shard, in log order: a value sets the offset, a tombstone
    /// (`None`) deletes it.
    ///
    /// # Errors
    /// [`RecordError`] for a record that is not of this format (nothing changes).
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RecordError> {
        let key = OffsetKey::decode(key)?;
        match value {
            Some(v) => {
                self.offsets.insert(key, CommittedOffset::decode(v)?);
            }
            None => {
                self.offsets.remove(&key);
            }
        }
        Ok(())
    }

    /// The record that commits `offset` at `key` (to write to the shard; apply it with
    /// [`OffsetStore::replay`] once written).
    ///
    /// # Errors
    /// [`RecordError`] when a name or the metadata is too long to encode.
    pub fn commit_record(
        key: &OffsetKey,
        offset: &CommittedOffset,
    ) -> Result<(Bytes, Option<Bytes>), RecordError> {
        Ok((key.encode()?, Some(offset.encode()?)))
    }

    /// The tombstones that delete every offset of `group`.
    ///
    /// # Errors
    /// [`RecordError`] when a key cannot be encoded.
    pub fn delete_group_records(
        &self,
        group: &str,
    ) -> Result<Vec<(Bytes, Option<Bytes>)>, RecordError> {
        self.of_group(group).map(|(k, _)| Ok((k.encode()?, None))).collect()
    }

    /// The committed offset at `key`.
    pub fn get(&self, key: &OffsetKey) -> Option<&CommittedOffset> {
        self.offsets.get(key)
    }

    /// Every committed offset of `group`, by topic and partition.
    pub fn of_group<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = (&'a OffsetKey, &'a CommittedOffset)> + 'a {
        self.offsets.iter().filter(move |(k, _)| k.group == group)
    }

    /// The groups with committed offsets.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self.offsets.keys().map(|k| k.group.clone()).collect();
        groups.dedup();
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(group: &str, topic: &str, partition: i32) -> OffsetKey {
        OffsetKey { group: group.into(), topic: topic.into(), partition }
    }

    fn offset(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: 3,
            commit_time_ms: 1_700_000_000_000,
            metadata: "m".into(),
        }
    }

    #[test]
    fn replay_keeps_the_latest_commit_and_honours_tombstones() {
        let mut store = OffsetStore::default();
        let mut log = Vec::new();
        for (k, o) in [
            (key("g", "t", 0), 5),
            (key("g", "t", 1), 7),
            (key("g", "t", 0), 9),
            (key("h", "t", 0), 1),
        ] {
            log.push(OffsetStore::commit_record(&k, &offset(o)).unwrap());
        }
        for (k, v) in &log {
            store.replay(k, v.as_deref()).unwrap();
        }
        assert_eq!(store.get(&key("g", "t", 0)).map(|o| o.offset), Some(9));
        assert_eq!(store.groups(), ["g", "h"]);
        for (k, v) in store.delete_group_records("g").unwrap() {
            store.replay(&k, v.as_deref()).unwrap();
        }
        assert_eq!(store.of_group("g").count(), 0);
        assert_eq!(store.groups(), ["h"]);
    }

    #[test]
    fn malformed_records_are_refused_and_change_nothing() {
        let mut store = OffsetStore::default();
        let (k, v) = OffsetStore::commit_record(&key("g", "t", 0), &offset(1)).unwrap();
        for bad_key in [&b""[..], &b"\x00\x02"[..], &k[..k.len() - 1]] {
            assert!(store.replay(bad_key, v.as_deref()).is_err());
        }
        let v = v.unwrap();
        for bad_value in [&b"\x00\x01"[..], &v[..v.len() - 1]] {
            assert!(store.replay(&k, Some(bad_value)).is_err());
        }
        let mut trailing = v.to_vec();
        trailing.push(0);
        assert!(store.replay(&k, Some(&trailing)).is_err());
        assert_eq!(store, OffsetStore::default());
    }

    proptest! {
        /// Keys and values round-trip, and equal keys encode to equal bytes (what compaction
        /// relies on).
        #[test]
        fn records_round_trip(group in "[a-z]{0,20}", topic in "[a-z.]{1,30}", partition in any::<i32>(),
                              o in any::<i64>(), epoch in any::<i32>(), ts in any::<i64>(), meta in ".{0,40}") {
            let k = OffsetKey { group, topic, partition };
            let v = CommittedOffset { offset: o, leader_epoch: epoch, commit_time_ms: ts, metadata: meta };
            prop_assert_eq!(OffsetKey::decode(&k.encode().unwrap()).unwrap(), k.clone());
            prop_assert_eq!(CommittedOffset::decode(&v.encode().unwrap()).unwrap(), v);
            prop_assert_eq!(k.encode().unwrap(), k.clone().encode().unwrap());
        }
    }
}
