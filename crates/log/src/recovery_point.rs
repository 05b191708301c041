//! [`RecoveryPoint`]: the persisted offset below which every segment is known to be on disk.
//! The same file format also holds the cleaner's checkpoint (see `cleaner.rs`).
//!
//! Rolled segments are synced in the background (as Kafka does), so the writer never stalls on
//! a segment-sized fsync; when a sync completes the recovery point moves up. After an unclean
//! shutdown only segments at or past the recovery point are scanned batch by batch. The file
//! `recovery-point` holds the offset as decimal text and is replaced atomically.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::epoch::write_atomically;
use crate::error::{LogError, io_err};

/// File name of the recovery point inside a partition directory.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";

/// The recovery point of one log, shared with its background flush threads.
#[derive(Debug)]
pub(crate) struct RecoveryPoint {
    path: PathBuf,
    /// Held while the file is rewritten so concurrent updates land in order.
    offset: Mutex<i64>,
}

impl RecoveryPoint {
    /// Loads the recovery point of the log in `dir`; 0 (scan everything) when absent or
    /// unreadable as a number.
    pub fn load(dir: &Path) -> Result<Self, LogError> {
        Self::load_file(dir, RECOVERY_POINT_FILE)
    }

    /// Loads an offset checkpoint kept in the same format under another name (the cleaner's
    /// `cleaner-checkpoint`); 0 when absent or unreadable as a number.
    pub fn load_file(dir: &Path, name: &str) -> Result<Self, LogError> {
        let path = dir.join(name);
        let offset = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        Ok(RecoveryPoint { path, offset: Mutex::new(offset) })
    }

    pub fn get(&self) -> i64 {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the recovery point up to `offset` (never down).
    pub fn advance(&self, offset: i64) -> Result<(), LogError> {
        let mut current = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        if offset > *current {
            write_atomically(&self.path, offset.to_string().as_bytes())?;
            *current = offset;
        }
        Ok(())
    }

    /// Moves the recovery point down to `offset` (the log was truncated below it).
    pub fn lower(&self, offset: i64) -> Result<(), LogError> {
        let mut current = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        if offset < *current {
            write_atomically(&self.path, offset.to_string().as_bytes())?;
            *current = offset;
        }
        Ok(())
    }

    /// Sets the recovery point (the log was emptied and restarted at `offset`).
    pub fn set(&self, offset: i64) -> Result<(), LogError> {
        let mut current = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        write_atomically(&self.path, offset.to_string().as_bytes())?;
        *current = offset;
        Ok(())
    }
}
