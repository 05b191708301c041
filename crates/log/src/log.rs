//! [`Log`]: one partition replica's log, a directory of segments with a single writer and any
//! number of concurrent readers.
//!
//! Concurrency: every mutation happens while holding the `writer` mutex, so there is one
//! writer at a time. Batch bytes are written to the file *before* they are published in
//! `state` (segment sizes, indexes, log end offset) under its write lock; readers take the read
//! lock, see only published sizes, and so never observe a partially written batch. Bytes below
//! a published size never change except through truncation, which holds the write lock. The
//! cleaner (see `cleaner.rs`) writes compacted copies of closed segments without any lock and
//! takes the writer mutex only to swap them in: a segment is replaced whole by a new file, and
//! readers holding the old one keep reading it.

use std::collections::BTreeMap;
use std::fs;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use tracing::{info, warn};

use crate::batch::{BatchIter, LEADER_EPOCH_POS, RecordBatch, TimestampType, Validation, batches};
use crate::cleaner::{
    self, CLEANER_CHECKPOINT_FILE, CleanOptions, CleanOutcome, CleanStep, CleanableStats,
    GroupStats, Interrupt, SegmentView, Throttle,
};
use crate::clock::{Clock, SystemClock};
use crate::config::{FlushPolicy, LogConfig};
use crate::epoch::{EpochEntry, LeaderEpochCache, sync_dir};
use crate::error::{BatchError, LogError, io_err};
use crate::recovery_point::RecoveryPoint;
use crate::segment::{
    BatchHeader, LOG_SUFFIX, Segment, SegmentFile, remove_if_exists, segment_file_name,
};

/// Marker file written by [`Log::close`]; its presence at open means the indexes on disk are
/// complete and the tail needs no CRC scan.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// Largest number of buffers handed to one `pwritev` call (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// What an append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record written.
    pub first_offset: i64,
    /// Offset of the last record written.
    pub last_offset: i64,
    /// Largest record timestamp among the appended batches.
    pub max_timestamp: i64,
    /// Wall-clock time of the append, in ms.
    pub log_append_time_ms: i64,
    /// Number of batches written.
    pub batch_count: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// A byte range of a segment file covering whole batches, ready for `sendfile(2)` or to be
/// copied into memory. Holds the file open: it stays readable even if the segment is deleted.
#[derive(Debug, Clone)]
pub struct FileRegion {
    file: Arc<SegmentFile>,
    position: u64,
    len: u64,
    first_offset: i64,
    next_offset: i64,
}

impl FileRegion {
    /// The segment file.
    pub fn file(&self) -> &fs::File {
        self.file.file()
    }

    /// Byte position of the first batch in the file.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Length in bytes; 0 when there was nothing to read.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the region holds no batch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base offset of the first batch (may be below the offset asked for: batches are whole).
    pub fn first_offset(&self) -> i64 {
        self.first_offset
    }

    /// The offset to read next: one past the last record of the region.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Copies the region into `buf` (cleared first, its capacity reused: a broker's buffer
    /// pool avoids an allocation per fetch), checking that it holds whole batches.
    ///
    /// # Errors
    /// As [`FileRegion::read_to_bytes`].
    pub fn read_into(&self, buf: &mut Vec<u8>) -> Result<(), LogError> {
        buf.clear();
        buf.reserve(self.len as usize);
        while (buf.len() as u64) < self.len {
            let at = self.position + buf.len() as u64;
            match rustix::io::pread(self.file.file(), rustix::buffer::spare_capacity(buf), at) {
                Ok(0) => {
                    return Err(io_err("read", self.file.path())(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io_err("read", self.file.path())(e.into())),
            }
        }
        // The spare capacity may exceed the region: keep only the region.
        buf.truncate(self.len as usize);
        for batch in batches(buf) {
            if let Err(e) = batch {
                return Err(LogError::Corrupt {
                    path: self.file.path().to_path_buf(),
                    reason: format!(
                        "region at position {} changed under the read: {e}",
                        self.position
                    ),
                });
            }
        }
        Ok(())
    }

    /// Copies the region into memory, checking that it still holds whole batches (it could
    /// not if the log was truncated under the reader).
    ///
    /// # Errors
    /// [`LogError::Io`] when the file cannot be read, [`LogError::Corrupt`] when the bytes are
    /// not whole batches.
    pub fn read_to_bytes(&self) -> Result<Bytes, LogError> {
        // A fresh buffer of exactly the region; read into uninitialised capacity, since
        // zero-filling first would double the memory traffic of a page-cache read.
        let mut buf = Vec::with_capacity(self.len as usize);
        self.read_into(&mut buf)?;
        Ok(Bytes::from(buf))
    }
}

/// The answer to a read: the region plus the log's bounds at the time of the read.
#[derive(Debug, Clone)]
pub struct LogRead {
    /// The batches.
    pub region: FileRegion,
    /// First offset of the log.
    pub log_start_offset: i64,
    /// Next offset to be written.
    pub log_end_offset: i64,
}

/// The first record at or after a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    /// The record's offset.
    pub offset: i64,
    /// The record's timestamp.
    pub timestamp: i64,
}

/// What a retention run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Base offsets of the deleted segments.
    pub deleted_segments: Vec<i64>,
    /// Bytes freed.
    pub deleted_bytes: u64,
    /// The log start offset afterwards.
    pub log_start_offset: i64,
}

struct Writer {
    /// Time of the last fsync, ms.
    last_flush_ms: i64,
    /// The newest background sync (of a rolled segment, or an interval flush). Each one waits
    /// for its predecessor before it publishes anything, so the recovery point and the flushed
    /// offset only ever move in order; it returns false if it or any predecessor failed.
    sync_chain: Option<JoinHandle<bool>>,
    closed: bool,
}

struct State {
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    log_end_offset: i64,
    epochs: LeaderEpochCache,
    /// Bumped by every truncation: a clean planned before one must not swap anything in, as
    /// the records its offset map relies on may be gone (or rewritten).
    truncations: u64,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    fn out_of_range(&self, requested: i64) -> LogError {
        LogError::OffsetOutOfRange {
            requested,
            log_start: self.log_start_offset,
            log_end: self.log_end_offset,
        }
    }
}

/// A partition replica's log. `Send + Sync`: share it with an `Arc`.
pub struct Log {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    recovery_point: Arc<RecoveryPoint>,
    /// Every offset below this is on disk.
    flushed: Arc<AtomicI64>,
    /// Set, with the reason, after an I/O failure that leaves durability or the files in doubt
    /// (a failed write or fsync): the log then refuses every change, as Kafka takes the log
    /// directory offline.
    offline: Arc<OnceLock<String>>,
    /// The cleaner checkpoint: below it the log holds each key at most once. Raised after a
    /// cleaned segment is swapped in, lowered by truncation (both under the writer mutex).
    cleaned_to: RecoveryPoint,
    /// Held for a whole [`Log::clean`]: one clean of a log at a time.
    cleaning: Mutex<()>,
    writer: Mutex<Writer>,
    state: RwLock<State>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("log_start_offset", &self.log_start_offset())
            .field("log_end_offset", &self.log_end_offset())
            .finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering from an unclean shutdown.
    ///
    /// # Errors
    /// [`LogError::Config`] for a bad config, [`LogError::Io`] or [`LogError::Corrupt`] when the
    /// directory cannot be read or holds damage that truncating the tail cannot repair.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Self, LogError> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    /// [`Log::open`] with an explicit clock (tests move time by hand).
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_with_clock(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LogError> {
        config.validate()?;
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = marker.exists();
        if clean {
            // From here on a crash must be seen as unclean.
            fs::remove_file(&marker).map_err(io_err("remove", &marker))?;
            sync_dir(&dir)?;
        }
        let now = clock.now_ms();
        // A clean interrupted by a crash: its uncommitted files go, a committed swap is
        // completed, before the segments are listed.
        cleaner::recover(&dir, config.index_interval_bytes)?;
        let recovery_point = RecoveryPoint::load(&dir)?;
        let scan_from = if clean { None } else { Some(recovery_point.get()) };
        let mut segments = recover_segments(&dir, &config, scan_from)?;
        if segments.is_empty() {
            let segment = Segment::create(&dir, 0)?;
            sync_dir(&dir)?;
            segments.insert(0, segment);
        }
        let log_start_offset = *segments.keys().next().expect("not empty");
        let active = segments.values_mut().next_back().expect("not empty");
        if !active.is_empty() {
            active.roll_base_ms = Some(now);
        }
        let log_end_offset = active.next_offset;
        // Offsets past what recovery kept are not on disk, whatever the file said.
        recovery_point.lower(log_end_offset)?;
        let cleaned_to = RecoveryPoint::load_file(&dir, CLEANER_CHECKPOINT_FILE)?;
        cleaned_to.lower(log_end_offset)?;
        let mut epochs = LeaderEpochCache::load(&dir)?;
        epochs.truncate_from_end(log_end_offset)?;
        epochs.truncate_from_start(log_start_offset)?;
        info!(
            dir = %dir.display(),
            clean,
            segments = segments.len(),
            log_start_offset,
            log_end_offset,
            "opened log"
        );
        let flushed = Arc::new(AtomicI64::new(recovery_point.get().min(log_end_offset)));
        Ok(Log {
            dir,
            clock,
            recovery_point: Arc::new(recovery_point),
            flushed,
            offline: Arc::new(OnceLock::new()),
            cleaned_to,
            cleaning: Mutex::new(()),
            writer: Mutex::new(Writer { last_flush_ms: now, sync_chain: None, closed: false }),
            state: RwLock::new(State {
                config,
                segments,
                log_start_offset,
                log_end_offset,
                epochs,
                truncations: 0,
            }),
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current configuration.
    pub fn config(&self) -> LogConfig {
        self.read_state().config
    }

    /// Replaces the configuration (e.g. after an `AlterTopicConfig`); applies from the next
    /// append or retention run.
    ///
    /// # Errors
    /// [`LogError::Config`] when the new config is invalid; the old one stays.
    pub fn set_config(&self, config: LogConfig) -> Result<(), LogError> {
        config.validate()?;
        let _w = self.lock_writer()?;
        self.write_state().config = config;
        Ok(())
    }

    /// First offset in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.read_state().log_start_offset
    }

    /// Offset the next record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.read_state().log_end_offset
    }

    /// Every offset below this has been fsynced.
    pub fn flushed_offset(&self) -> i64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.read_state().segments.values().map(|s| s.size).sum()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.read_state().segments.keys().copied().collect()
    }

    /// The leader-epoch checkpoint's entries.
    pub fn epoch_entries(&self) -> Vec<EpochEntry> {
        self.read_state().epochs.entries().to_vec()
    }

    /// The newest leader epoch that appended to this log.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.read_state().epochs.latest().map(|e| e.epoch)
    }

    /// Kafka's `OffsetsForLeaderEpoch`: the largest epoch at most `epoch` and the offset where
    /// it ended in this log. See [`LeaderEpochCache::end_offset_for`].
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let st = self.read_state();
        st.epochs.end_offset_for(epoch, st.log_end_offset)
    }

    /// Appends batches sent by a producer to the leader: `batches` holds one or more v2 batches
    /// back to back. Every batch is fully validated first (offset deltas must run 0..n-1; on a
    /// compacted log every record must have a key); then offsets are assigned from the
    /// log end offset and `leader_epoch` is stamped, by rewriting the two header fields that lie
    /// outside the CRC, and all batches are written with one vectored write. All or nothing.
    ///
    /// # Errors
    /// [`LogError::InvalidBatch`] for the first bad batch (nothing written; a keyless record
    /// on a compacted log is [`BatchError::MissingKey`]),
    /// [`LogError::EpochRegression`] when `leader_epoch` is older than the log's latest epoch
    /// (a deposed leader), [`LogError::Io`] when the write fails.
    pub fn append(&self, batches: &[u8], leader_epoch: i32) -> Result<AppendInfo, LogError> {
        let mut results = self.append_many(&[batches], leader_epoch)?;
        results.pop().expect("append_many answers each request")
    }

    /// Appends the batches of several producer requests with one write (group commit), each
    /// as [`Log::append`] would: every request is validated on its own, and an invalid one is
    /// refused alone (its result is its error, nothing of it written); the valid ones get
    /// consecutive offsets in the order given and are written together with one vectored
    /// write. Returns one result per request, in order.
    ///
    /// # Errors
    /// For all requests at once, nothing written: [`LogError::EpochRegression`],
    /// [`LogError::Io`] when the write fails, [`LogError::Closed`] or [`LogError::Offline`].
    pub fn append_many(
        &self,
        requests: &[&[u8]],
        leader_epoch: i32,
    ) -> Result<Vec<Result<AppendInfo, LogError>>, LogError> {
        let (max_batch_bytes, compacted) = {
            let config = self.read_state().config;
            (config.max_batch_bytes, config.cleanup_policy.compact)
        };
        // `None` for a valid request until it is written.
        let mut results: Vec<Option<Result<AppendInfo, LogError>>> =
            Vec::with_capacity(requests.len());
        let mut valid = Vec::with_capacity(requests.len());
        for (index, batches) in requests.iter().enumerate() {
            let parsed = parse_all(batches, |b| {
                if compacted {
                    b.validate_keyed(max_batch_bytes)
                } else {
                    b.validate(max_batch_bytes, Validation::Full)
                }
            });
            match parsed {
                Ok(pending) => {
                    results.push(None);
                    valid.push((index, pending));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if valid.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }
        let mut w = self.lock_writer()?;
        if let Some(latest) = self.read_state().epochs.latest()
            && leader_epoch < latest.epoch
        {
            return Err(LogError::EpochRegression { latest: latest.epoch, got: leader_epoch });
        }
        let records: i64 = valid
            .iter()
            .flat_map(|(_, pending)| pending)
            .map(|p| i64::from(p.last_offset_delta()) + 1)
            .sum();
        let bytes: u64 = valid.iter().map(|(i, _)| requests[*i].len() as u64).sum();
        let base = self.read_state().log_end_offset;
        self.maybe_roll(&mut w, base, base + records - 1, bytes)?;

        let (position, file) = self.active_position();
        let mut headers = Vec::new();
        let mut spans = Vec::with_capacity(valid.len());
        let mut offset = base;
        let mut pos = position;
        for (index, pending) in &valid {
            let first = headers.len();
            for p in pending {
                headers.push(BatchHeader::of(p, pos, offset, leader_epoch));
                offset += i64::from(p.last_offset_delta()) + 1;
                pos += p.size() as u64;
            }
            spans.push((*index, first..headers.len()));
        }
        let all = valid.iter().flat_map(|(_, pending)| pending);
        let prefixes: Vec<[u8; LEADER_EPOCH_POS + 4]> = all
            .clone()
            .zip(&headers)
            .map(|(p, h)| {
                let mut prefix = [0u8; LEADER_EPOCH_POS + 4];
                prefix.copy_from_slice(&p.as_bytes()[..LEADER_EPOCH_POS + 4]);
                crate::batch::set_offset_and_epoch(&mut prefix, h.base_offset, leader_epoch);
                prefix
            })
            .collect();
        let mut slices = Vec::with_capacity(headers.len() * 2);
        for (p, prefix) in all.zip(&prefixes) {
            slices.push(IoSlice::new(prefix));
            slices.push(IoSlice::new(&p.as_bytes()[LEADER_EPOCH_POS + 4..]));
        }
        let written = self.write_and_publish(
            &mut w,
            &file,
            position,
            &mut slices,
            &headers,
            &[(leader_epoch, base)],
        )?;
        for (index, span) in spans {
            let mine = &headers[span];
            results[index] = Some(Ok(AppendInfo {
                first_offset: mine[0].base_offset,
                last_offset: mine[mine.len() - 1].last_offset,
                max_timestamp: mine.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
                log_append_time_ms: written.log_append_time_ms,
                batch_count: mine.len(),
                bytes: mine.iter().map(|h| h.size).sum(),
            }));
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Appends batches fetched from the leader, as they are: offsets and leader epochs are
    /// kept. Checks framing, size and CRC of each batch, that offsets only grow from the log
    /// end offset, and that epochs never go back. Gaps are accepted, inside a batch and between
    /// batches (the leader compacted its log): a first batch may start past the log end, and
    /// the log end becomes the last batch's last offset + 1.
    ///
    /// # Errors
    /// [`LogError::InvalidBatch`], [`LogError::NonContiguousAppend`] when the first batch starts
    /// below the log end offset, [`LogError::EpochRegression`], [`LogError::Io`].
    pub fn append_replicated(&self, batches: &[u8]) -> Result<AppendInfo, LogError> {
        let max_batch_bytes = self.read_state().config.max_batch_bytes;
        let pending = parse_all(batches, |b| {
            b.validate(max_batch_bytes, Validation::Crc)?;
            b.check_offset_range()
        })?;
        let mut w = self.lock_writer()?;
        let (log_end, latest_epoch) = {
            let st = self.read_state();
            (st.log_end_offset, st.epochs.latest().map_or(i32::MIN, |e| e.epoch))
        };
        let mut expected = log_end;
        let mut epoch = latest_epoch;
        let mut new_epochs = Vec::new();
        for (index, b) in pending.iter().enumerate() {
            if b.base_offset() < expected {
                return Err(if index == 0 {
                    LogError::NonContiguousAppend { expected, got: b.base_offset() }
                } else {
                    LogError::InvalidBatch {
                        index,
                        source: BatchError::OffsetDeltaMismatch {
                            what: "baseOffset".into(),
                            expected,
                            actual: b.base_offset(),
                        },
                    }
                });
            }
            if b.partition_leader_epoch() < epoch {
                return Err(LogError::EpochRegression {
                    latest: epoch,
                    got: b.partition_leader_epoch(),
                });
            }
            if b.partition_leader_epoch() > epoch {
                epoch = b.partition_leader_epoch();
                new_epochs.push((epoch, b.base_offset()));
            }
            expected = b.next_offset();
        }
        let first = pending[0].base_offset();
        if expected - 1 - first > i64::from(u32::MAX) && pending.len() > 1 {
            // The batches span more offsets than one segment can index (a leader's compacted
            // gap): append them one by one, each rolling where it must.
            drop(w);
            let mut info: Option<AppendInfo> = None;
            for p in &pending {
                let one = self.append_replicated(p.as_bytes())?;
                info = Some(match info {
                    None => one,
                    Some(sum) => AppendInfo {
                        last_offset: one.last_offset,
                        max_timestamp: sum.max_timestamp.max(one.max_timestamp),
                        batch_count: sum.batch_count + one.batch_count,
                        bytes: sum.bytes + one.bytes,
                        ..sum
                    },
                });
            }
            return Ok(info.expect("at least one batch"));
        }
        self.maybe_roll(&mut w, first, expected - 1, batches.len() as u64)?;
        let (position, file) = self.active_position();
        let mut pos = position;
        let headers: Vec<BatchHeader> = pending
            .iter()
            .map(|p| {
                let h = BatchHeader::of(p, pos, p.base_offset(), p.partition_leader_epoch());
                pos += h.size;
                h
            })
            .collect();
        let mut slices = vec![IoSlice::new(batches)];
        self.write_and_publish(&mut w, &file, position, &mut slices, &headers, &new_epochs)
    }

    /// Writes `slices` at `position` of the active segment, then publishes `headers` and the
    /// leader epochs that start in this append.
    fn write_and_publish(
        &self,
        w: &mut Writer,
        file: &Arc<SegmentFile>,
        position: u64,
        slices: &mut [IoSlice<'_>],
        headers: &[BatchHeader],
        epochs: &[(i32, i64)],
    ) -> Result<AppendInfo, LogError> {
        let bytes: u64 = headers.iter().map(|h| h.size).sum();
        if !epochs.is_empty() {
            // Persisted before the data: after a crash in between, open drops the entry as it
            // starts at the log end; the other order could leave data with no epoch entry.
            let mut st = self.write_state();
            for &(epoch, start) in epochs {
                st.epochs.assign(epoch, start)?;
            }
        }
        let policy = self.read_state().config.flush;
        let written = write_all_at(file.file(), slices, position)
            .map_err(io_err("write", file.path()))
            .and_then(|()| match policy {
                FlushPolicy::EveryAppend => {
                    file.file().sync_data().map_err(io_err("fsync", file.path()))
                }
                _ => Ok(()),
            });
        if let Err(e) = written {
            // Take back what landed and the epochs that would have started in it, so that not
            // even a crash recovery brings the failed append back; then go offline, since after
            // a failed write or fsync the file's state on disk is in doubt.
            let _ = file.file().set_len(position);
            let mut st = self.write_state();
            let end = st.log_end_offset;
            let _ = st.epochs.truncate_from_end(end);
            return Err(self.go_offline(e));
        }
        let now = self.clock.now_ms();
        let last = headers.last().expect("an append has at least one batch");
        let end = last.last_offset + 1;
        let mut st = self.write_state();
        let interval = st.config.index_interval_bytes;
        let active = st.active_mut();
        if active.roll_base_ms.is_none() {
            active.roll_base_ms = Some(now);
        }
        for h in headers {
            active.observe(h, interval);
        }
        st.log_end_offset = end;
        drop(st);
        match policy {
            FlushPolicy::EveryAppend => {
                w.last_flush_ms = now;
                self.flushed.fetch_max(end, Ordering::AcqRel);
            }
            FlushPolicy::IntervalMs(ms) if now - w.last_flush_ms >= ms as i64 => {
                self.spawn_flush(w, now);
            }
            _ => {}
        }
        Ok(AppendInfo {
            first_offset: headers[0].base_offset,
            last_offset: last.last_offset,
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
            log_append_time_ms: now,
            batch_count: headers.len(),
            bytes,
        })
    }

    fn active_position(&self) -> (u64, Arc<SegmentFile>) {
        let st = self.read_state();
        let active = st.active();
        (active.size, Arc::clone(&active.file))
    }

    /// Rolls to a new segment when an append of `bytes` with offsets `first..=last` does not
    /// belong in the active one: too large, too old, or beyond 32-bit relative offsets. The new
    /// segment starts at the log end offset, so every segment starts where the previous one
    /// ended (recovery relies on it), except when the append starts more than `u32::MAX` past
    /// the log end (a replica copying a leader's compacted gap); it then starts at `first`.
    fn maybe_roll(
        &self,
        w: &mut Writer,
        first: i64,
        last: i64,
        bytes: u64,
    ) -> Result<(), LogError> {
        let now = self.clock.now_ms();
        let (roll, base) = {
            let st = self.read_state();
            let active = st.active();
            let config = &st.config;
            let beyond_relative = last - active.base_offset > i64::from(u32::MAX);
            let roll = beyond_relative
                || (!active.is_empty()
                    && (active.size + bytes > config.segment_bytes
                        || config.segment_ms.is_some_and(|ms| {
                            active.roll_base_ms.is_some_and(|base| now - base >= ms as i64)
                        })));
            let end = st.log_end_offset;
            (roll, if last - end > i64::from(u32::MAX) { first } else { end })
        };
        if roll { self.roll(w, base) } else { Ok(()) }
    }

    /// Starts a new active segment at `base_offset`. A non-empty active segment is sealed
    /// (final time index entry, index files written) and fsynced by a background thread, which
    /// then moves the recovery point to `base_offset`: the writer never waits for a
    /// segment-sized sync, and until the sync lands a crash recovery rescans that segment. An
    /// empty active segment is replaced instead.
    fn roll(&self, w: &mut Writer, base_offset: i64) -> Result<(), LogError> {
        let sealed = {
            let mut st = self.write_state();
            let active = st.active_mut();
            active.seal_time_index();
            (Arc::clone(&active.file), active.base_offset, active.is_empty())
        };
        let (sealed_file, sealed_base, replace) = sealed;
        if !replace {
            self.read_state().active().write_indexes(&self.dir)?;
        }
        let segment = Segment::create(&self.dir, base_offset)?;
        sync_dir(&self.dir)?;
        {
            let mut st = self.write_state();
            st.segments.insert(base_offset, segment);
            if replace {
                st.segments.remove(&sealed_base);
                st.log_start_offset = *st.segments.keys().next().expect("just inserted");
                st.log_end_offset = st.log_end_offset.max(base_offset);
                let start = st.log_start_offset;
                st.epochs.truncate_from_start(start)?;
            }
        }
        if replace {
            Segment::delete_files(&self.dir, sealed_base)?;
            sync_dir(&self.dir)?;
            info!(dir = %self.dir.display(), base_offset, "replaced empty active segment");
            return Ok(());
        }
        info!(dir = %self.dir.display(), base_offset, "rolled segment");
        let (recovery_point, flushed) =
            (Arc::clone(&self.recovery_point), Arc::clone(&self.flushed));
        let dir = self.dir.clone();
        self.chain_sync(
            w,
            move || Segment::sync(&dir, &sealed_file, sealed_base),
            move || {
                recovery_point.advance(base_offset)?;
                flushed.fetch_max(base_offset, Ordering::AcqRel);
                Ok(())
            },
        );
        Ok(())
    }

    /// Starts a background sync of the active segment (the `IntervalMs` policy): the writer
    /// goes on appending while it runs, as Kafka's scheduled flush does.
    fn spawn_flush(&self, w: &mut Writer, now: i64) {
        let (file, end) = {
            let st = self.read_state();
            (Arc::clone(&st.active().file), st.log_end_offset)
        };
        w.last_flush_ms = now;
        let flushed = Arc::clone(&self.flushed);
        self.chain_sync(
            w,
            move || file.file().sync_data().map_err(io_err("fsync", file.path())),
            move || {
                flushed.fetch_max(end, Ordering::AcqRel);
                Ok(())
            },
        );
    }

    /// Runs `sync` on a background thread, then waits for the previous sync in the chain and,
    /// if both succeeded and the log is not offline, runs `publish`. A failure takes the log
    /// offline: nothing is published after it and every later change is refused. When no
    /// thread can be started the job runs inline, so a sync is never skipped.
    fn chain_sync(
        &self,
        w: &mut Writer,
        sync: impl FnOnce() -> Result<(), LogError> + Send + 'static,
        publish: impl FnOnce() -> Result<(), LogError> + Send + 'static,
    ) {
        let previous = w.sync_chain.take();
        let (dir, offline) = (self.dir.clone(), Arc::clone(&self.offline));
        let job = move || {
            let own = sync();
            let previous_ok = previous.is_none_or(|h| h.join().unwrap_or(false));
            let ok = previous_ok && offline.get().is_none();
            match own.and_then(|()| if ok { publish() } else { Ok(()) }) {
                Ok(()) => ok,
                Err(e) => {
                    let _ = offline.set(e.to_string());
                    warn!(dir = %dir.display(), error = %e, "background log sync failed; log is offline");
                    false
                }
            }
        };
        let cell = Arc::new(Mutex::new(Some(job)));
        let in_thread = Arc::clone(&cell);
        let spawned =
            std::thread::Builder::new().name("tideline-log-sync".into()).spawn(move || {
                let job = in_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
                job.is_some_and(|job| job())
            });
        match spawned {
            Ok(handle) => w.sync_chain = Some(handle),
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot start a sync thread, syncing inline");
                let job = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(job) = job {
                    job();
                }
            }
        }
    }

    /// Waits for the background syncs.
    ///
    /// # Errors
    /// [`LogError::Offline`] when one of them (or anything before) failed: data they covered
    /// may not be on disk.
    fn join_syncs(&self, w: &mut Writer) -> Result<(), LogError> {
        if let Some(handle) = w.sync_chain.take() {
            let _ = handle.join();
        }
        match self.offline.get() {
            None => Ok(()),
            Some(reason) => {
                Err(LogError::Offline { path: self.dir.clone(), reason: reason.clone() })
            }
        }
    }

    /// Reads whole batches starting with the one that contains `offset`, up to `max_bytes`
    /// (always at least one batch, so a batch larger than `max_bytes` is still delivered), from
    /// a single segment, stopping before any batch that reaches `upper_bound` (exclusive; the
    /// high watermark for consumers) or the log end.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] when `offset` is below the log start or above the log end;
    /// [`LogError::Io`] or [`LogError::Corrupt`] when the segment cannot be read.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: Option<i64>,
    ) -> Result<LogRead, LogError> {
        let st = self.read_state();
        if offset < st.log_start_offset || offset > st.log_end_offset {
            return Err(st.out_of_range(offset));
        }
        let bound = upper_bound.map_or(st.log_end_offset, |b| b.min(st.log_end_offset));
        let empty = |seg: &Segment| FileRegion {
            file: Arc::clone(&seg.file),
            position: 0,
            len: 0,
            first_offset: offset,
            next_offset: offset,
        };
        let mut region = empty(st.active());
        for seg in st
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .map(|(_, s)| s)
            .chain(st.segments.range(offset + 1..).map(|(_, s)| s))
        {
            if offset >= bound {
                break;
            }
            if seg.next_offset <= offset {
                continue;
            }
            let Some(first) = seg.find_batch(offset, seg.lookup_position(offset))? else {
                continue;
            };
            if first.last_offset >= bound {
                region = empty(seg);
                break;
            }
            region = read_region(seg, first, max_bytes as u64, bound)?;
            break;
        }
        Ok(LogRead {
            region,
            log_start_offset: st.log_start_offset,
            log_end_offset: st.log_end_offset,
        })
    }

    /// The first record whose timestamp is at least `timestamp_ms` (Kafka's ListOffsets by
    /// time), or `None` when every record is older.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Corrupt`] when a segment cannot be read or decoded.
    pub fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<TimestampOffset>, LogError> {
        let st = self.read_state();
        for seg in st.segments.values().filter(|s| s.max_timestamp >= timestamp_ms) {
            if let Some(found) = find_timestamp(seg, timestamp_ms)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Removes every record at or after `offset` (a follower does this when its log diverged
    /// from a new leader's). The batch containing `offset` goes whole, so the new log end is the
    /// returned value, at most `offset`. Below the log start this empties the log and starts it
    /// at `offset`.
    ///
    /// # Errors
    /// [`LogError::Io`] when a file cannot be truncated or deleted.
    pub fn truncate_to(&self, offset: i64) -> Result<i64, LogError> {
        check_offset_argument(offset)?;
        let mut w = self.lock_writer()?;
        let (holder, cut, end, before) = {
            let st = self.read_state();
            if offset >= st.log_end_offset {
                return Ok(st.log_end_offset);
            }
            if offset < st.log_start_offset {
                drop(st);
                self.reset_to(&mut w, offset)?;
                return Ok(offset);
            }
            let seg = st.segments.range(..=offset).next_back().expect("offset >= log start").1;
            // The batch containing `offset` goes whole. In a compacted log it may start past
            // `offset` (the records between were removed): the log then ends where the batch
            // before it ended, found once the holder is cut.
            let (cut, end) = match seg.find_batch(offset, seg.lookup_position(offset))? {
                Some(h) => (h.position, h.base_offset.min(offset)),
                None => (seg.size, seg.next_offset),
            };
            (seg.base_offset, cut, end, st.log_end_offset)
        };
        // The order keeps a crash at any step safe: first a later recovery must scan what
        // stays, then later segments go newest first (a crash leaves a shorter log with no
        // hole), and only then is the holder cut.
        self.join_syncs(&mut w)?;
        self.recovery_point.lower(end)?;
        {
            let mut st = self.write_state();
            st.truncations += 1;
            let doomed: Vec<i64> = st.segments.range(holder + 1..).map(|(&b, _)| b).rev().collect();
            for base in doomed {
                st.segments.remove(&base);
                Segment::delete_files(&self.dir, base).map_err(|e| self.go_offline(e))?;
            }
        }
        sync_dir(&self.dir)?;
        let mut st = self.write_state();
        let interval = st.config.index_interval_bytes;
        let seg = st.segments.get_mut(&holder).expect("holder exists");
        seg.truncate_to_size(cut, interval).map_err(|e| self.go_offline(e))?;
        if seg.is_empty() {
            seg.roll_base_ms = None;
        }
        // At most `end`: below it when the batch before the cut ends in a compacted gap.
        let end = seg.next_offset;
        st.log_end_offset = end;
        st.epochs.truncate_from_end(end)?;
        drop(st);
        // (A crash before these lines is fine: open lowers both to the log end it finds.)
        self.recovery_point.lower(end)?;
        self.cleaned_to.lower(end)?;
        self.flushed.fetch_min(end, Ordering::AcqRel);
        warn!(dir = %self.dir.display(), requested = offset, from = before, to = end, "truncated log");
        Ok(end)
    }

    /// Deletes every segment and starts the log empty at `offset` (a follower that fell behind
    /// the leader's log start does this).
    ///
    /// # Errors
    /// [`LogError::Io`] when files cannot be deleted or created.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), LogError> {
        check_offset_argument(offset)?;
        let mut w = self.lock_writer()?;
        self.reset_to(&mut w, offset)
    }

    fn reset_to(&self, w: &mut Writer, offset: i64) -> Result<(), LogError> {
        self.join_syncs(w)?;
        let mut st = self.write_state();
        st.truncations += 1;
        // Newest first: a crash part way leaves an older prefix of the log, never a hole.
        let old: Vec<i64> = st.segments.keys().rev().copied().collect();
        for base in old {
            st.segments.remove(&base);
            Segment::delete_files(&self.dir, base).map_err(|e| self.go_offline(e))?;
        }
        st.segments.insert(offset, Segment::create(&self.dir, offset)?);
        sync_dir(&self.dir)?;
        st.log_start_offset = offset;
        st.log_end_offset = offset;
        st.epochs.clear()?;
        self.recovery_point.set(offset)?;
        self.cleaned_to.set(offset)?;
        self.flushed.store(offset, Ordering::Release);
        warn!(dir = %self.dir.display(), offset, "emptied log");
        Ok(())
    }

    /// Deletes the oldest closed segments that are past `retention.ms` (their newest record is
    /// older) or that the log can lose while staying at least `retention.bytes` large, and
    /// moves the log start offset up. Never deletes the active segment. Does nothing unless
    /// `cleanup.policy` includes `delete` (a `compact` log keeps every key's latest record
    /// forever).
    ///
    /// # Errors
    /// [`LogError::Io`] when a file cannot be deleted.
    pub fn apply_retention(&self) -> Result<RetentionOutcome, LogError> {
        self.apply_retention_below(i64::MAX)
    }

    /// [`Log::apply_retention`], deleting only segments wholly below `limit` (the next
    /// segment starts at or below it). A replica passes its high watermark, as Kafka does, so
    /// retention never deletes records that are not committed yet (a lagging follower still
    /// needs them, and a new leader may not have them).
    ///
    /// # Errors
    /// [`LogError::Io`] when a file cannot be deleted.
    pub fn apply_retention_below(&self, limit: i64) -> Result<RetentionOutcome, LogError> {
        let _w = self.lock_writer()?;
        let now = self.clock.now_ms();
        let mut st = self.write_state();
        let config = st.config;
        let mut excess = config.retention_bytes.map_or(0, |limit| {
            st.segments.values().map(|s| s.size).sum::<u64>().saturating_sub(limit)
        });
        let mut outcome = RetentionOutcome::default();
        let closed = if config.cleanup_policy.delete { st.segments.len() - 1 } else { 0 };
        let next_bases: Vec<i64> = st.segments.keys().skip(1).copied().collect();
        for (seg, next_base) in st.segments.values().take(closed).zip(next_bases) {
            if next_base > limit {
                break;
            }
            let expired = config.retention_ms.is_some_and(|ms| {
                !seg.is_empty() && now.saturating_sub(seg.max_timestamp) > ms as i64
            });
            let over_size = config.retention_bytes.is_some() && excess >= seg.size;
            if !(expired || over_size) {
                break;
            }
            excess = excess.saturating_sub(seg.size);
            outcome.deleted_segments.push(seg.base_offset);
            outcome.deleted_bytes += seg.size;
        }
        for base in &outcome.deleted_segments {
            st.segments.remove(base);
        }
        st.log_start_offset = *st.segments.keys().next().expect("active segment kept");
        let start = st.log_start_offset;
        st.epochs.truncate_from_start(start)?;
        drop(st);
        for &base in &outcome.deleted_segments {
            Segment::delete_files(&self.dir, base)?;
        }
        if !outcome.deleted_segments.is_empty() {
            info!(
                dir = %self.dir.display(),
                segments = outcome.deleted_segments.len(),
                bytes = outcome.deleted_bytes,
                log_start_offset = start,
                "retention deleted segments"
            );
        }
        outcome.log_start_offset = start;
        Ok(outcome)
    }

    /// The part of the log a [`Log::clean`] with `options` would consider (closed segments
    /// below the upper bound and older than `min.compaction.lag.ms`) and how much of it is
    /// dirty (at or past the cleaner checkpoint). A broker compares
    /// [`CleanableStats::dirty_ratio`] with `min.cleanable.dirty.ratio`.
    pub fn cleanable(&self, options: &CleanOptions) -> CleanableStats {
        let st = self.read_state();
        self.cleanable_segments(&st, options).1
    }

    /// The cleanable segments, oldest first, and their statistics.
    fn cleanable_segments(
        &self,
        st: &State,
        options: &CleanOptions,
    ) -> (Vec<SegmentView>, CleanableStats) {
        let lag = i64::try_from(st.config.min_compaction_lag_ms).unwrap_or(i64::MAX);
        let closed = st.segments.len() - 1;
        let mut views = Vec::new();
        for seg in st.segments.values().take(closed) {
            let too_young = lag > 0 && seg.max_timestamp > options.now_ms.saturating_sub(lag);
            let uncommitted = options.upper_bound.is_some_and(|bound| seg.next_offset > bound);
            if too_young || uncommitted {
                break;
            }
            views.push(SegmentView {
                base_offset: seg.base_offset,
                file: Arc::clone(&seg.file),
                size: seg.size,
                next_offset: seg.next_offset,
            });
        }
        let uncleanable = views.last().map_or(st.log_start_offset, |v| v.next_offset);
        let first_dirty = self.cleaned_to.get().clamp(st.log_start_offset, uncleanable);
        let (mut clean_bytes, mut dirty_bytes) = (0, 0);
        for v in &views {
            if v.next_offset <= first_dirty {
                clean_bytes += v.size;
            } else {
                dirty_bytes += v.size;
            }
        }
        let stats = CleanableStats {
            first_dirty_offset: first_dirty,
            first_uncleanable_offset: uncleanable,
            clean_bytes,
            dirty_bytes,
        };
        (views, stats)
    }

    /// Compacts the log (`cleanup.policy=compact`, as Kafka's log cleaner does): over the
    /// closed segments below [`CleanOptions::upper_bound`] and older than
    /// `min.compaction.lag.ms` (never the active segment), keeps only the latest record of each
    /// key, and drops tombstones (null values) whose batch max timestamp is at least
    /// `delete.retention.ms` before [`CleanOptions::now_ms`]. Records keep their offsets, so a
    /// compacted log has gaps; the log start and end offsets do not change. Records without a
    /// key (which a compacted log refuses from producers) are kept.
    ///
    /// The reading and rewriting run without the log's locks, at the pace `throttle` allows;
    /// appends and reads go on meanwhile. Each cleaned segment (several small ones are merged,
    /// up to `segment.bytes`) is swapped in under the writer mutex, crash-safely: it is written
    /// under a temporary name, synced, renamed as the swap's commit point, and the old
    /// segments deleted; [`Log::open`] completes or discards an interrupted swap. If the
    /// segments changed meanwhile (retention or truncation), or the throttle is cancelled, the
    /// clean stops there and says so in [`CleanOutcome::abandoned`].
    ///
    /// # Errors
    /// [`LogError::Closed`] when the log is (or was meanwhile) closed or deleted,
    /// [`LogError::Offline`], [`LogError::Corrupt`] when a segment holds damaged batches (the
    /// clean stops; nothing is changed), [`LogError::Io`].
    pub fn clean(
        &self,
        options: &CleanOptions,
        throttle: &Throttle,
    ) -> Result<CleanOutcome, LogError> {
        let _cleaning = match self.cleaning.try_lock() {
            Ok(guard) => guard,
            // A clean that panicked left nothing half done in memory: the state is only
            // changed by a completed swap.
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Ok(CleanOutcome {
                    cleaned_to: self.cleaned_to.get(),
                    abandoned: Some("another clean of this log is running".into()),
                    ..CleanOutcome::default()
                });
            }
        };
        drop(self.lock_writer()?);
        let (views, stats, config, generation) = {
            let st = self.read_state();
            let (views, stats) = self.cleanable_segments(&st, options);
            (views, stats, st.config, st.truncations)
        };
        let mut outcome =
            CleanOutcome { cleaned_to: stats.first_dirty_offset, ..CleanOutcome::default() };
        if !config.cleanup_policy.compact {
            outcome.abandoned = Some("cleanup.policy does not include compact".into());
            return Ok(outcome);
        }
        if stats.dirty_bytes == 0 {
            return Ok(outcome);
        }
        let map = match cleaner::build_offset_map(
            &views,
            stats.first_dirty_offset,
            options.offset_map_bytes,
            throttle,
        ) {
            Ok(map) => map,
            Err(Interrupt::Cancelled) => {
                outcome.abandoned = Some("cancelled".into());
                return Ok(outcome);
            }
            Err(Interrupt::Failed(e)) => {
                return self.clean_failed(e, &views, generation, outcome);
            }
        };
        let mapped = views.partition_point(|v| v.next_offset <= map.end);
        for group in cleaner::groups(&views, map.end, config.segment_bytes) {
            let base = group[0].base_offset;
            // The group and every later mapped segment: the map's newer records live there.
            let start = views.partition_point(|v| v.base_offset < base);
            let mut counts = GroupStats::default();
            let cleaned = cleaner::clean_group(
                &self.dir,
                group,
                &map,
                &config,
                options.now_ms,
                throttle,
                &mut counts,
            );
            let segment = match cleaned {
                Ok(segment) => segment,
                Err(interrupt) => {
                    cleaner::discard(&self.dir, base);
                    return match interrupt {
                        Interrupt::Cancelled => {
                            outcome.abandoned = Some("cancelled".into());
                            Ok(outcome)
                        }
                        Interrupt::Failed(e) => {
                            self.clean_failed(e, &views[start..mapped], generation, outcome)
                        }
                    };
                }
            };
            let bytes_after = segment.size;
            if !self.swap_in(&views[start..mapped], group.len(), segment, generation, options)? {
                outcome.abandoned =
                    Some(format!("segments from {base} changed while they were cleaned"));
                return Ok(outcome);
            }
            outcome.segments_replaced += group.len();
            outcome.segments_written += 1;
            outcome.bytes_before += group.iter().map(|s| s.size).sum::<u64>();
            outcome.bytes_after += bytes_after;
            outcome.records_removed += counts.records_removed;
            outcome.tombstones_removed += counts.tombstones_removed;
            outcome.cleaned_to = self.cleaned_to.get();
        }
        info!(
            dir = %self.dir.display(),
            segments = outcome.segments_replaced,
            bytes_before = outcome.bytes_before,
            bytes_after = outcome.bytes_after,
            records_removed = outcome.records_removed,
            tombstones_removed = outcome.tombstones_removed,
            cleaned_to = outcome.cleaned_to,
            "cleaned log"
        );
        Ok(outcome)
    }

    /// An error met while reading or writing for a clean, as the caller should see it:
    /// [`LogError::Closed`] when the log was closed or deleted meanwhile (its files may be
    /// gone), an abandoned clean when the segments it read were truncated or removed meanwhile
    /// (a read past a cut file fails), else the error.
    fn clean_failed(
        &self,
        e: LogError,
        views: &[SegmentView],
        generation: u64,
        mut outcome: CleanOutcome,
    ) -> Result<CleanOutcome, LogError> {
        if let Err(closed @ LogError::Closed(_)) = self.lock_writer() {
            return Err(closed);
        }
        let st = self.read_state();
        if st.truncations != generation || !segments_unchanged(&st, views) {
            outcome.abandoned = Some(format!("segments changed while they were cleaned ({e})"));
            return Ok(outcome);
        }
        Err(e)
    }

    /// Swaps the cleaned `segment` in for the first `group_len` segments of `mapped` under the
    /// writer mutex, if no truncation happened since the clean was planned (`generation`) and
    /// every segment of `mapped` (the group and the later segments whose records the offset
    /// map holds) is still in the log, unchanged and closed. Returns false (and discards the
    /// cleaned files) when not.
    fn swap_in(
        &self,
        mapped: &[SegmentView],
        group_len: usize,
        segment: Segment,
        generation: u64,
        options: &CleanOptions,
    ) -> Result<bool, LogError> {
        let base = segment.base_offset;
        let end = segment.next_offset;
        let step = |at: CleanStep| {
            if options.crash_after == Some(at) {
                return Err(self.go_offline(LogError::Offline {
                    path: self.dir.clone(),
                    reason: format!("simulated crash after clean step {at:?}"),
                }));
            }
            Ok(())
        };
        step(CleanStep::Written)?;
        let _w = match self.lock_writer() {
            Ok(w) => w,
            Err(e) => {
                cleaner::discard(&self.dir, base);
                return Err(e);
            }
        };
        let group = &mapped[..group_len.min(mapped.len())];
        let unchanged = {
            let st = self.read_state();
            st.truncations == generation
                && segments_unchanged(&st, mapped)
                && group.first().is_some_and(|v| v.base_offset == base)
                && group.last().is_some_and(|v| v.next_offset == end)
        };
        if !unchanged {
            cleaner::discard(&self.dir, base);
            return Ok(false);
        }
        let (committed, result) = cleaner::commit_swap(&self.dir, base);
        if let Err(e) = result {
            if committed {
                // The swap may be on disk: the next open completes it.
                return Err(self.go_offline(e));
            }
            cleaner::discard(&self.dir, base);
            return Err(e);
        }
        step(CleanStep::Committed)?;
        let old: Vec<i64> = group.iter().map(|v| v.base_offset).collect();
        cleaner::finish_swap(&self.dir, base, &old, &step).map_err(|e| match e {
            e @ LogError::Offline { .. } => e,
            e => self.go_offline(e),
        })?;
        {
            let mut st = self.write_state();
            for b in &old {
                st.segments.remove(b);
            }
            st.segments.insert(base, segment);
        }
        self.cleaned_to.advance(end)?;
        Ok(true)
    }

    /// Fsyncs the active segment (after waiting for background syncs) before returning.
    ///
    /// # Errors
    /// [`LogError::Io`] when this sync or an earlier background one failed.
    pub fn flush(&self) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        self.join_syncs(&mut w)?;
        let (file, end) = {
            let st = self.read_state();
            (Arc::clone(&st.active().file), st.log_end_offset)
        };
        file.file().sync_data().map_err(io_err("fsync", file.path()))?;
        w.last_flush_ms = self.clock.now_ms();
        self.flushed.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// With the `IntervalMs` policy, starts a background sync if the interval has passed since
    /// the last one and returns true; [`Log::flushed_offset`] moves once it lands. Appends
    /// do this themselves; a broker also calls it from a timer so idle partitions get synced.
    ///
    /// # Errors
    /// [`LogError::Io`] when the sync thread cannot be started.
    pub fn flush_if_due(&self) -> Result<bool, LogError> {
        let mut w = self.lock_writer()?;
        let FlushPolicy::IntervalMs(ms) = self.read_state().config.flush else {
            return Ok(false);
        };
        let now = self.clock.now_ms();
        if now - w.last_flush_ms < ms as i64 {
            return Ok(false);
        }
        self.spawn_flush(&mut w, now);
        Ok(true)
    }

    /// Flushes everything, writes the active segment's indexes and the clean-shutdown marker,
    /// and refuses further writes. The next open skips the recovery scan.
    ///
    /// # Errors
    /// [`LogError::Io`] when a file cannot be written or synced (the marker is then not
    /// written, so the next open recovers).
    pub fn close(&self) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        {
            let mut st = self.write_state();
            st.active_mut().seal_time_index();
        }
        let end = {
            let st = self.read_state();
            let active = st.active();
            // A failed write may have left bytes past the last whole batch.
            active.file.file().set_len(active.size).map_err(io_err("truncate", active.path()))?;
            active.write_indexes(&self.dir)?;
            Segment::sync(&self.dir, &active.file, active.base_offset)?;
            st.log_end_offset
        };
        // A failed background sync means data may be missing: no marker, so the next open
        // scans from the recovery point.
        self.join_syncs(&mut w)?;
        self.recovery_point.advance(end)?;
        self.flushed.fetch_max(end, Ordering::AcqRel);
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        fs::write(&marker, b"").map_err(io_err("write", &marker))?;
        sync_dir(&self.dir)?;
        w.closed = true;
        Ok(())
    }

    /// Closes the log and deletes its directory (the topic was deleted or the replica moved).
    /// Further operations fail with [`LogError::Closed`]; regions already handed out stay
    /// readable, as their files stay open.
    ///
    /// # Errors
    /// [`LogError::Io`] when the directory cannot be removed.
    pub fn delete(&self) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        let _ = self.join_syncs(&mut w); // the files are going away either way
        w.closed = true;
        // A clean running meanwhile may create a file while the directory is being emptied
        // (it stops at its next step, seeing the log closed): try again.
        let mut attempts = 0;
        loop {
            match fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempts < 5 => {
                    attempts += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                other => return other.map_err(io_err("remove", &self.dir)),
            }
        }
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, LogError> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.closed {
            return Err(LogError::Closed(self.dir.clone()));
        }
        if let Some(reason) = self.offline.get() {
            return Err(LogError::Offline { path: self.dir.clone(), reason: reason.clone() });
        }
        Ok(w)
    }

    /// Takes the log offline after `error` and returns it.
    fn go_offline(&self, error: LogError) -> LogError {
        let _ = self.offline.set(error.to_string());
        warn!(dir = %self.dir.display(), error = %error, "log is offline");
        error
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Log {
    /// Waits for background segment syncs; writes no clean-shutdown marker (see [`Log::close`]).
    fn drop(&mut self) {
        let w = self.writer.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = w.sync_chain.take() {
            let _ = handle.join();
        }
    }
}

/// Whether every segment in `views` is still in the log as the cleaner saw it (same file, same
/// size and offsets) and closed (a later segment exists).
fn segments_unchanged(st: &State, views: &[SegmentView]) -> bool {
    views.iter().all(|v| {
        st.segments.get(&v.base_offset).is_some_and(|s| {
            Arc::ptr_eq(&s.file, &v.file) && s.size == v.size && s.next_offset == v.next_offset
        })
    }) && views.last().is_none_or(|v| st.segments.range(v.next_offset..).next().is_some())
}

/// Deletes the segments based at `bases`, newest first, and syncs the directory.
fn drop_segments(dir: &Path, bases: &[i64]) -> Result<(), LogError> {
    for &base in bases.iter().rev() {
        warn!(dir = %dir.display(), segment = base, "deleting segment after a damaged one");
        Segment::delete_files(dir, base)?;
    }
    sync_dir(dir)
}

/// Largest offset a log may be restarted or truncated at: far enough below `i64::MAX` that
/// offsets assigned after it cannot overflow.
const MAX_START_OFFSET: i64 = i64::MAX - (1 << 40);

/// Refuses offsets a log cannot start at (negative, or too close to `i64::MAX`).
fn check_offset_argument(offset: i64) -> Result<(), LogError> {
    if (0..=MAX_START_OFFSET).contains(&offset) {
        return Ok(());
    }
    Err(LogError::OffsetOutOfRange { requested: offset, log_start: 0, log_end: MAX_START_OFFSET })
}

/// Parses `buf` into batches, checking each with `check`.
fn parse_all<'a>(
    buf: &'a [u8],
    check: impl Fn(&RecordBatch<'a>) -> Result<(), BatchError>,
) -> Result<Vec<RecordBatch<'a>>, LogError> {
    if buf.is_empty() {
        return Err(LogError::InvalidBatch {
            index: 0,
            source: BatchError::ShortBuffer {
                needed: crate::batch::BATCH_HEADER_LEN,
                available: 0,
            },
        });
    }
    let iter: BatchIter<'a> = batches(buf);
    iter.enumerate()
        .map(|(index, batch)| {
            let batch = batch.map_err(|source| LogError::InvalidBatch { index, source })?;
            check(&batch).map_err(|source| LogError::InvalidBatch { index, source })?;
            Ok(batch)
        })
        .collect()
}

/// The region from batch `first` forward: whole batches, at most `max_bytes` unless the first
/// batch alone is larger, all with offsets below `bound`.
fn read_region(
    seg: &Segment,
    first: BatchHeader,
    max_bytes: u64,
    bound: i64,
) -> Result<FileRegion, LogError> {
    // Where batches reaching `bound` start: the region must end before.
    let mut end_limit = seg.size;
    if bound < seg.next_offset
        && let Some(h) = seg.find_batch(bound, seg.lookup_position(bound))?
    {
        end_limit = h.position;
    }
    let target = first.position.saturating_add(max_bytes.max(first.size)).min(end_limit);
    let mut end = first.position + first.size;
    let mut next_offset = first.last_offset + 1;
    // Jump close to the target with the index, then walk the last few headers.
    if let Some(e) = seg.index.floor_position(target.min(u64::from(u32::MAX)) as u32)
        && u64::from(e.position) > end
    {
        end = u64::from(e.position);
        next_offset = seg.base_offset + i64::from(e.relative_offset);
    }
    while end < target {
        let h = seg.read_header(end)?;
        if end + h.size > target {
            break;
        }
        end += h.size;
        next_offset = h.last_offset + 1;
    }
    Ok(FileRegion {
        file: Arc::clone(&seg.file),
        position: first.position,
        len: end - first.position,
        first_offset: first.base_offset,
        next_offset,
    })
}

/// The first record at or after `timestamp_ms` in `seg`, starting from the time index.
fn find_timestamp(seg: &Segment, timestamp_ms: i64) -> Result<Option<TimestampOffset>, LogError> {
    use std::os::unix::fs::FileExt;
    let mut position = seg
        .time_index
        .floor_below(timestamp_ms)
        .map_or(0, |t| seg.lookup_position(seg.base_offset + i64::from(t.relative_offset)));
    while position < seg.size {
        let h = seg.read_header(position)?;
        position += h.size;
        if h.max_timestamp < timestamp_ms {
            continue;
        }
        let mut buf = vec![0u8; h.size as usize];
        seg.file.file().read_exact_at(&mut buf, h.position).map_err(io_err("read", seg.path()))?;
        let bad = |e: BatchError| seg.corrupt(format!("batch at offset {}: {e}", h.base_offset));
        let batch = RecordBatch::parse_exact(&buf).map_err(bad)?;
        if batch.timestamp_type() == TimestampType::LogAppendTime {
            return Ok(Some(TimestampOffset { offset: h.base_offset, timestamp: h.max_timestamp }));
        }
        let records = batch.records().map_err(bad)?;
        for record in records.iter() {
            let record = record.map_err(bad)?;
            if record.timestamp >= timestamp_ms {
                return Ok(Some(TimestampOffset {
                    offset: record.offset,
                    timestamp: record.timestamp,
                }));
            }
        }
    }
    Ok(None)
}

/// Writes all of `slices` at `position` with `pwritev`, resuming after partial writes.
fn write_all_at(
    file: &fs::File,
    mut slices: &mut [IoSlice<'_>],
    mut position: u64,
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = slices.len().min(IOV_MAX);
        match rustix::io::pwritev(file, &slices[..n], position) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                position += written as u64;
                IoSlice::advance_slices(&mut slices, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Opens every segment in `dir`, loading or rebuilding indexes. After an unclean shutdown
/// (`scan_from` is the recovery point) every segment from the one holding the recovery point
/// on is checked batch by batch, CRC included, and the first damaged one is cut after its last
/// whole valid batch; every later segment is then dropped, since offsets must stay contiguous.
/// Segments before the recovery point were synced and are trusted, as are all after a clean
/// shutdown (`scan_from` is `None`); a trusted segment whose index disagrees with it is
/// rescanned all the same.
fn recover_segments(
    dir: &Path,
    config: &LogConfig,
    scan_from: Option<i64>,
) -> Result<BTreeMap<i64, Segment>, LogError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(&format!(".{LOG_SUFFIX}"))
            && stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(base) = stem.parse::<i64>()
        {
            bases.push(base);
        }
        if name.ends_with(".tmp") {
            remove_if_exists(&entry.path())?;
        }
    }
    bases.sort_unstable();
    let interval = config.index_interval_bytes;
    let mut segments = BTreeMap::new();
    let mut prev_next: Option<i64> = None;
    // The first segment to scan: the one holding the recovery point.
    let first_scanned = scan_from
        .map(|point| bases.iter().copied().filter(|&b| b <= point).max().unwrap_or(i64::MIN));
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment_file_name(base, LOG_SUFFIX));
        if let Some(prev) = prev_next {
            if prev > base {
                return Err(LogError::Corrupt {
                    path,
                    reason: format!(
                        "segment starts at {base}, before the previous one ends at {prev}"
                    ),
                });
            }
            // A segment starts where the previous one ended (see `Log::maybe_roll`), unless
            // more than u32::MAX offsets apart: a shorter gap means the previous segment lost
            // its tail, and what follows cannot stay.
            if prev < base && base - prev <= i64::from(u32::MAX) {
                warn!(segment = %path.display(), previous_end = prev, "segment does not continue the log");
                drop_segments(dir, &bases[i..])?;
                break;
            }
        }
        let (mut seg, len) = Segment::open(path.clone(), base)?;
        let is_last = i + 1 == bases.len();
        let full_scan = first_scanned.is_some_and(|first| base >= first);
        let mut rebuilt = full_scan;
        let problem = if full_scan {
            seg.scan(0, len, true, interval)?
        } else {
            match seg.load_indexes(dir, len) {
                Ok(()) => {
                    // Walk from the last indexed batch to the end for the log end and timestamps.
                    let from = seg.index.last().map_or(0, |e| u64::from(e.position));
                    if from > 0 {
                        let e = seg.index.last().expect("checked");
                        seg.size = from;
                        seg.next_offset = base + i64::from(e.relative_offset);
                        seg.bytes_since_index = 0;
                    }
                    let tail = seg.scan(from, len, false, interval)?;
                    let stray_time_entry = seg
                        .time_index
                        .last()
                        .is_some_and(|t| t.relative_offset > seg.relative(seg.last_batch_offset));
                    let tail = match tail {
                        None if stray_time_entry => {
                            Some("time index points past the last batch".to_string())
                        }
                        other => other,
                    };
                    match tail {
                        None => None,
                        Some(reason) => {
                            warn!(segment = %path.display(), reason, "index disagrees with segment, rebuilding");
                            rebuilt = true;
                            seg = Segment::open(path.clone(), base)?.0;
                            seg.scan(0, len, true, interval)?
                        }
                    }
                }
                Err(reason) => {
                    info!(segment = %path.display(), reason, "rebuilding segment index");
                    rebuilt = true;
                    seg.scan(0, len, true, interval)?
                }
            }
        };
        if let Some(reason) = problem {
            warn!(
                segment = %path.display(),
                valid_bytes = seg.size,
                truncated_bytes = len - seg.size,
                next_offset = seg.next_offset,
                reason,
                "truncating torn or corrupt tail of segment"
            );
            // Later segments go first: a crash part way must not leave them behind a segment
            // that was already cut.
            drop_segments(dir, &bases[i + 1..])?;
            seg.file.file().set_len(seg.size).map_err(io_err("truncate", &path))?;
            seg.file.file().sync_data().map_err(io_err("fsync", &path))?;
            segments.insert(base, seg);
            break;
        }
        if rebuilt && !is_last {
            // A closed segment checked by this open: make it and its fresh indexes durable
            // before a later roll or close moves the recovery point past it.
            seg.seal_time_index();
            seg.write_indexes(dir)?;
            Segment::sync(dir, &seg.file, base)?;
        }
        prev_next = Some(seg.next_offset);
        segments.insert(base, seg);
    }
    Ok(segments)
}
