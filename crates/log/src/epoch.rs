//! [`LeaderEpochCache`]: the leader-epoch checkpoint of a partition, mapping each leader epoch to
//! the first offset written in it, with Kafka's "end offset of epoch E" lookup (KIP-101/279)
//! that a returning replica uses to find where its log diverges from the leader's.
//!
//! The file `leader-epoch-checkpoint` uses Kafka's text layout: a version line (`0`), a count
//! line, then one `epoch start_offset` line per entry. It is replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{LogError, io_err};

/// File name of the checkpoint inside a partition directory.
pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

/// An epoch and the first offset its leader wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// First offset appended in that epoch.
    pub start_offset: i64,
}

/// Leader epoch -> start offset, persisted beside the segments. Epochs and start offsets both
/// increase strictly along the entries.
#[derive(Debug)]
pub struct LeaderEpochCache {
    dir: PathBuf,
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// Loads the checkpoint in `dir`, or an empty cache when there is none.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] for a malformed file, [`LogError::Io`] when it cannot be read.
    pub fn load(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(CHECKPOINT_FILE);
        let entries = match fs::read_to_string(&path) {
            Ok(text) => parse(&text).map_err(|reason| LogError::Corrupt { path, reason })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        Ok(LeaderEpochCache { dir: dir.to_path_buf(), entries })
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest entry.
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset`. An epoch equal to the latest is a no-op.
    ///
    /// # Errors
    /// [`LogError::EpochRegression`] when `epoch` is older than the latest epoch, and
    /// [`LogError::Corrupt`] when `start_offset` is below the latest epoch's start.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<(), LogError> {
        if let Some(latest) = self.latest() {
            if epoch == latest.epoch {
                return Ok(());
            }
            if epoch < latest.epoch {
                return Err(LogError::EpochRegression { latest: latest.epoch, got: epoch });
            }
            if start_offset < latest.start_offset {
                return Err(LogError::Corrupt {
                    path: self.path(),
                    reason: format!(
                        "epoch {epoch} would start at {start_offset}, before epoch {} at {}",
                        latest.epoch, latest.start_offset
                    ),
                });
            }
            if start_offset == latest.start_offset {
                // The previous epoch wrote nothing: the new one replaces it.
                self.entries.pop();
            }
        }
        self.entries.push(EpochEntry { epoch, start_offset });
        self.persist()
    }

    /// Removes entries starting at or after `end_offset` (the log was truncated there).
    ///
    /// # Errors
    /// [`LogError::Io`] when the checkpoint cannot be rewritten.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> Result<(), LogError> {
        let keep = self.entries.partition_point(|e| e.start_offset < end_offset);
        if keep == self.entries.len() {
            return Ok(());
        }
        self.entries.truncate(keep);
        self.persist()
    }

    /// Drops epochs that ended before `start_offset` (the log start moved there) and moves the
    /// start of the epoch covering it up to `start_offset`.
    ///
    /// # Errors
    /// [`LogError::Io`] when the checkpoint cannot be rewritten.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> Result<(), LogError> {
        let covering = self.entries.partition_point(|e| e.start_offset <= start_offset);
        if covering == 0 {
            return Ok(());
        }
        let drop = covering - 1;
        let moved = self.entries[drop].start_offset != start_offset;
        if drop == 0 && !moved {
            return Ok(());
        }
        self.entries.drain(..drop);
        self.entries[0].start_offset = start_offset;
        self.persist()
    }

    /// Forgets every entry (the log was emptied).
    ///
    /// # Errors
    /// [`LogError::Io`] when the checkpoint cannot be rewritten.
    pub fn clear(&mut self) -> Result<(), LogError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        self.entries.clear();
        self.persist()
    }

    /// Kafka's `endOffsetFor(epoch)`: the largest epoch at most `epoch` and the offset where it
    /// ended (the start of the next higher epoch, or `log_end_offset` for the latest epoch).
    /// `None` when the log holds no epoch at or below `epoch`'s successor, i.e. when `epoch` is
    /// newer than the latest epoch or the cache is empty.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let latest = self.latest()?;
        if epoch == latest.epoch {
            return Some((epoch, log_end_offset));
        }
        let higher = self.entries.partition_point(|e| e.epoch <= epoch);
        let next = self.entries.get(higher)?;
        match higher.checked_sub(1) {
            Some(floor) => Some((self.entries[floor].epoch, next.start_offset)),
            None => Some((epoch, next.start_offset)),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    fn persist(&self) -> Result<(), LogError> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        write_atomically(&self.path(), text.as_bytes())
    }
}

/// Replaces `path` with `contents`: write a temporary file, fsync it, rename over the
/// original, fsync the directory.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), LogError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(contents).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so that creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

fn parse(text: &str) -> Result<Vec<EpochEntry>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some("0") => {}
        other => return Err(format!("unknown checkpoint version {other:?}")),
    }
    let count: usize =
        lines.next().and_then(|l| l.trim().parse().ok()).ok_or("missing or bad entry count")?;
    let mut entries: Vec<EpochEntry> = Vec::with_capacity(count.min(1024));
    for (i, line) in lines.enumerate() {
        let mut parts = line.split_whitespace();
        let (Some(epoch), Some(offset), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {}: expected `epoch offset`, got {line:?}", i + 3));
        };
        let entry = EpochEntry {
            epoch: epoch.parse().map_err(|_| format!("line {}: bad epoch {epoch:?}", i + 3))?,
            start_offset: offset
                .parse()
                .map_err(|_| format!("line {}: bad offset {offset:?}", i + 3))?,
        };
        if let Some(last) = entries.last()
            && (entry.epoch <= last.epoch || entry.start_offset <= last.start_offset)
        {
            return Err(format!("line {}: entries not increasing", i + 3));
        }
        entries.push(entry);
    }
    if entries.len() != count {
        return Err(format!("count says {count} entries, file holds {}", entries.len()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> (tempfile::TempDir, LeaderEpochCache) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LeaderEpochCache::load(dir.path()).unwrap();
        for &(epoch, start) in entries {
            c.assign(epoch, start).unwrap();
        }
        (dir, c)
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        // Epochs 1 at 0, 3 at 10, 5 at 20; the log ends at 30.
        let (_dir, c) = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert_eq!(c.end_offset_for(5, 30), Some((5, 30)), "latest epoch ends at the log end");
        assert_eq!(c.end_offset_for(3, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for(4, 30), Some((3, 20)), "unknown epoch: floor epoch's end");
        assert_eq!(c.end_offset_for(0, 30), Some((0, 0)), "older than all: first start");
        assert_eq!(c.end_offset_for(6, 30), None, "newer than the latest");
        let (_dir, empty) = cache(&[]);
        assert_eq!(empty.end_offset_for(1, 0), None);
    }

    #[test]
    fn checkpoint_survives_reload_and_truncation() {
        let (dir, mut c) = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert!(matches!(c.assign(2, 25), Err(LogError::EpochRegression { latest: 5, got: 2 })));
        c.truncate_from_end(20).unwrap();
        assert_eq!(c.latest(), Some(EpochEntry { epoch: 3, start_offset: 10 }));
        c.truncate_from_start(12).unwrap();
        assert_eq!(c.entries(), &[EpochEntry { epoch: 3, start_offset: 12 }]);
        let reloaded = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), c.entries());
    }

    #[test]
    fn an_epoch_that_wrote_nothing_is_replaced() {
        let (_dir, c) = cache(&[(1, 0), (2, 5), (3, 5)]);
        assert_eq!(
            c.entries(),
            &[EpochEntry { epoch: 1, start_offset: 0 }, EpochEntry { epoch: 3, start_offset: 5 }]
        );
    }

    #[test]
    fn malformed_checkpoints_are_corrupt_not_panics() {
        for text in ["", "1\n0\n", "0\n2\n1 0\n", "0\n1\nx 0\n", "0\n2\n3 10\n1 20\n"] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(CHECKPOINT_FILE), text).unwrap();
            let err = LeaderEpochCache::load(dir.path()).unwrap_err();
            assert!(matches!(err, LogError::Corrupt { .. }), "{text:?}: {err}");
        }
    }
}
