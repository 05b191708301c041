//! Log compaction (`cleanup.policy=compact`), as Kafka's log cleaner does it: keep the latest
//! record of every key, drop tombstones once `delete.retention.ms` has passed. [`crate::Log::clean`]
//! drives it; this module holds the pieces that run without the log's locks:
//!
//! 1. **Offset map.** Every batch of the *dirty* segments (those at or past the cleaner
//!    checkpoint) is read and each keyed record's offset put in a map key -> latest offset,
//!    until the map reaches its memory budget; the map's end (a segment boundary) bounds this
//!    clean.
//! 2. **Rewrite.** Every closed segment from the log start to the map's end is read again and
//!    rewritten, grouping consecutive small segments up to `segment.bytes`: a record is kept
//!    unless the map holds a newer offset for its key, or it is a tombstone whose batch is
//!    older than `delete.retention.ms`. Kept records keep their offsets and bytes; a batch that
//!    loses records is rebuilt (same base offset, same `lastOffsetDelta`, re-compressed with its
//!    codec, new CRC); a batch that loses all is dropped, except the last batch of each cleaned
//!    segment and the last batch of each idempotent producer, which stay as empty batches. The
//!    first keeps every segment ending where the next one starts (recovery checks it), the
//!    second keeps producer sequences (the broker rebuilds them from the log).
//! 3. **Swap.** The cleaned segment is written as `<base>.log.cleaned` (and `.index.cleaned`,
//!    `.timeindex.cleaned`), synced, renamed to `.swap` (the log file last: its rename is the
//!    commit point) and the directory synced; then the replaced segments' files are deleted and
//!    the `.swap` files renamed to their final names. At open, [`recover`] deletes `*.cleaned`
//!    files and completes any committed swap, so a crash at any step leaves either the old or
//!    the new segments, never neither.
//!
//! The cleaner checkpoint (file `cleaner-checkpoint`) is the offset below which the log is
//! clean (no key twice); it moves up after each swap and down with truncation.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::batch::{self, BATCH_HEADER_LEN, RecordBatch, Validation, batch_size};
use crate::config::{LogConfig, MAX_SEGMENT_BYTES};
use crate::epoch::sync_dir;
use crate::error::{BatchError, LogError, io_err};
use crate::segment::{
    BatchHeader, INDEX_SUFFIX, LOG_SUFFIX, Segment, SegmentFile, TIME_INDEX_SUFFIX,
    remove_if_exists, segment_file_name,
};

/// File in a partition directory holding the cleaner checkpoint: the offset below which the log
/// has been compacted.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";
/// Stage suffix of a cleaned segment being written.
const CLEANED: &str = "cleaned";
/// Stage suffix of a cleaned segment that replaces the segments it covers.
const SWAP: &str = "swap";
/// Default memory budget of the offset map (Kafka's `log.cleaner.dedupe.buffer.size`).
pub const DEFAULT_OFFSET_MAP_BYTES: usize = 128 << 20;
/// Map memory counted per key on top of the key's bytes (box, offset, hash table slot).
const MAP_ENTRY_OVERHEAD: usize = 48;
/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 1 << 20;
/// Cleaned bytes buffered before a write.
const WRITE_CHUNK: usize = 1 << 20;

/// An I/O budget in bytes per second shared by cleaner runs (Kafka's
/// `log.cleaner.io.max.bytes.per.second`): the cleaner reports every byte it reads or writes
/// and sleeps when it is ahead of the budget, so compaction does not starve produce and fetch
/// of disk bandwidth. Also carries a cancel flag, checked between batches, so a broker that
/// stops does not wait for a long clean.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_second: Option<u64>,
    window: Mutex<ThrottleWindow>,
    cancelled: AtomicBool,
}

#[derive(Debug)]
struct ThrottleWindow {
    start: Instant,
    bytes: u64,
}

/// Length of the throttle's measuring window: a burst after idling is at most this much
/// budget.
const THROTTLE_WINDOW: Duration = Duration::from_secs(1);
/// Longest single sleep; the cancel flag is checked between sleeps.
const THROTTLE_NAP: Duration = Duration::from_millis(50);
/// Longest wait of one [`Throttle::acquire`] (reached only with budgets of a few bytes per
/// second), so time arithmetic cannot overflow.
const THROTTLE_MAX_PAUSE: Duration = Duration::from_secs(3600);

impl Throttle {
    /// A throttle allowing `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Self {
        Self::with_limit(Some(bytes_per_second.max(1)))
    }

    /// A throttle that never sleeps (it can still be cancelled).
    pub fn unlimited() -> Self {
        Self::with_limit(None)
    }

    fn with_limit(bytes_per_second: Option<u64>) -> Self {
        Throttle {
            bytes_per_second,
            window: Mutex::new(ThrottleWindow { start: Instant::now(), bytes: 0 }),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Accounts for `bytes` of I/O, sleeping (in short naps, returning early once cancelled)
    /// until the rate is back within budget.
    pub fn acquire(&self, bytes: u64) {
        let Some(rate) = self.bytes_per_second else { return };
        let pause = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.start.elapsed() >= THROTTLE_WINDOW {
                *w = ThrottleWindow { start: Instant::now(), bytes: 0 };
            }
            w.bytes = w.bytes.saturating_add(bytes);
            let due = Duration::try_from_secs_f64(w.bytes as f64 / rate as f64)
                .unwrap_or(THROTTLE_MAX_PAUSE);
            due.saturating_sub(w.start.elapsed()).min(THROTTLE_MAX_PAUSE)
        };
        let until = Instant::now() + pause;
        while !self.is_cancelled() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(THROTTLE_NAP));
        }
    }

    /// Asks every clean using this throttle to stop at its next batch (it leaves the log as it
    /// was, or with the groups already swapped).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Whether [`Throttle::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// Settings of one [`crate::Log::clean`] run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanOptions {
    /// The current time in ms; tombstones whose batch max timestamp is at least
    /// `delete.retention.ms` older are removed, and `min.compaction.lag.ms` counts from it.
    pub now_ms: i64,
    /// Only segments wholly below this offset are cleaned: a broker passes the high
    /// watermark, so that records a truncation may still remove never make an older value of
    /// their key disappear. `None` for no bound (the active segment is never cleaned anyway).
    pub upper_bound: Option<i64>,
    /// Memory budget of the offset map; a clean covers as many dirty segments as fit (at least
    /// one).
    pub offset_map_bytes: usize,
    /// For crash tests only: stop right after this step of the first segment swap, as a
    /// crash would (files left as they are), and take the log offline; reopening recovers.
    #[doc(hidden)]
    pub crash_after: Option<CleanStep>,
}

impl CleanOptions {
    /// Options for a clean at `now_ms` with no upper bound and the default map budget.
    pub fn new(now_ms: i64) -> Self {
        CleanOptions {
            now_ms,
            upper_bound: None,
            offset_map_bytes: DEFAULT_OFFSET_MAP_BYTES,
            crash_after: None,
        }
    }
}

/// The steps of swapping a cleaned segment in, for crash tests ([`CleanOptions::crash_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanStep {
    /// The cleaned files are written and synced under `.cleaned` names.
    Written,
    /// They are renamed to `.swap` and the directory synced: the swap is committed.
    Committed,
    /// The first replaced segment's files are deleted, the others not yet.
    OldPartlyDeleted,
    /// Every replaced segment's files are deleted.
    OldDeleted,
    /// The index files have their final names, the log file is still `.swap`.
    IndexesRenamed,
    /// Every file has its final name (the in-memory log is not updated yet).
    Renamed,
}

/// What a [`crate::Log::clean`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanOutcome {
    /// Segments replaced by cleaned ones.
    pub segments_replaced: usize,
    /// Cleaned segments written in their place.
    pub segments_written: usize,
    /// Bytes of the replaced segments.
    pub bytes_before: u64,
    /// Bytes of the cleaned segments.
    pub bytes_after: u64,
    /// Records removed because a newer record has the same key.
    pub records_removed: u64,
    /// Tombstones removed because `delete.retention.ms` passed.
    pub tombstones_removed: u64,
    /// The cleaner checkpoint afterwards: the log below it holds each key at most once.
    pub cleaned_to: i64,
    /// Why the run stopped early (cancelled, the segments changed under it, another clean was
    /// running, the log is not compacted); the segments swapped before stay cleaned.
    pub abandoned: Option<String>,
}

/// The part of a log a clean would consider, and how dirty it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanableStats {
    /// The cleaner checkpoint, within the cleanable range: segments before it are clean.
    pub first_dirty_offset: i64,
    /// The end of the cleanable range: the first segment that is active, reaches the upper
    /// bound, or holds a record younger than `min.compaction.lag.ms`.
    pub first_uncleanable_offset: i64,
    /// Bytes of cleanable segments below the checkpoint.
    pub clean_bytes: u64,
    /// Bytes of cleanable segments at or past the checkpoint.
    pub dirty_bytes: u64,
}

impl CleanableStats {
    /// Dirty bytes over cleanable bytes, 0 when nothing is cleanable (Kafka's cleanable
    /// ratio, compared with `min.cleanable.dirty.ratio`).
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 { 0.0 } else { self.dirty_bytes as f64 / total as f64 }
    }
}

/// A closed segment as the cleaner saw it when it planned: the swap checks it is still there,
/// unchanged, before replacing it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    pub base_offset: i64,
    pub file: Arc<SegmentFile>,
    pub size: u64,
    pub next_offset: i64,
}

/// Why a cleaning step did not finish.
#[derive(Debug)]
pub(crate) enum Interrupt {
    /// The throttle was cancelled.
    Cancelled,
    /// An error; the log may still be fine (e.g. it was closed meanwhile).
    Failed(LogError),
}

impl From<LogError> for Interrupt {
    fn from(e: LogError) -> Self {
        Interrupt::Failed(e)
    }
}

/// Key -> offset of its latest record over the mapped range, plus the last batch of each
/// idempotent producer.
#[derive(Debug, Default)]
pub(crate) struct OffsetMap {
    latest: HashMap<Box<[u8]>, i64>,
    /// Producer id -> base offset of its last batch in the cleaned range.
    last_producer_batch: HashMap<i64, i64>,
    /// Offset after the last mapped segment: the clean covers the log below it.
    pub end: i64,
    memory: usize,
}

impl OffsetMap {
    fn record(&mut self, key: &[u8], offset: i64) {
        match self.latest.get_mut(key) {
            Some(latest) => *latest = (*latest).max(offset),
            None => {
                self.memory += key.len() + MAP_ENTRY_OVERHEAD;
                self.latest.insert(Box::from(key), offset);
            }
        }
    }
}

/// Builds the offset map over `segments` (cleanable, oldest first): producers' last batches
/// over all of them, keys over the dirty ones (those reaching `first_dirty` or later) until the
/// map outgrows `budget` (always at least one dirty segment).
pub(crate) fn build_offset_map(
    segments: &[SegmentView],
    first_dirty: i64,
    budget: usize,
    throttle: &Throttle,
) -> Result<OffsetMap, Interrupt> {
    let mut map = OffsetMap { end: first_dirty, ..OffsetMap::default() };
    let mut mapped_any = false;
    for seg in segments {
        let dirty = seg.next_offset > first_dirty;
        if dirty && mapped_any && map.memory >= budget {
            break;
        }
        for_each_batch(seg, throttle, |batch| {
            if batch.producer_id() >= 0 {
                map.last_producer_batch.insert(batch.producer_id(), batch.base_offset());
            }
            if dirty && !batch.is_control() {
                let records = batch.records().map_err(|e| corrupt_batch(seg, &batch, e))?;
                for record in records.iter() {
                    let record = record.map_err(|e| corrupt_batch(seg, &batch, e))?;
                    if let Some(key) = record.key {
                        map.record(key, record.offset);
                    }
                }
            }
            Ok(())
        })?;
        if dirty {
            mapped_any = true;
            map.end = seg.next_offset;
        }
    }
    Ok(map)
}

/// Splits the segments below `end` into consecutive groups, each to become one cleaned
/// segment: at most `max_bytes` of input (a single larger segment stays alone) and offsets
/// within 32-bit reach of the group's base.
pub(crate) fn groups(segments: &[SegmentView], end: i64, max_bytes: u64) -> Vec<&[SegmentView]> {
    let cleaned = segments.partition_point(|s| s.next_offset <= end);
    let mut out = Vec::new();
    let mut start = 0;
    while start < cleaned {
        let base = segments[start].base_offset;
        let mut bytes = segments[start].size;
        let mut stop = start + 1;
        while stop < cleaned {
            let next = &segments[stop];
            let span = next.next_offset - 1 - base;
            if bytes + next.size > max_bytes || span > i64::from(u32::MAX) {
                break;
            }
            bytes += next.size;
            stop += 1;
        }
        out.push(&segments[start..stop]);
        start = stop;
    }
    out
}

/// What one clean run counted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GroupStats {
    pub records_removed: u64,
    pub tombstones_removed: u64,
}

/// The fate of one batch.
enum Kept {
    /// Every record stays: the batch is copied as it is.
    Whole,
    /// Some records or none stay: the batch is replaced by these bytes.
    Rebuilt(Vec<u8>),
    /// The batch goes.
    Dropped,
}

/// Writes the cleaned version of `group` as `<base>.log.cleaned` plus index files, synced, and
/// returns the segment (named with its final path; the open file follows the renames).
pub(crate) fn clean_group(
    dir: &Path,
    group: &[SegmentView],
    map: &OffsetMap,
    config: &LogConfig,
    now_ms: i64,
    throttle: &Throttle,
    stats: &mut GroupStats,
) -> Result<Segment, Interrupt> {
    let base = group[0].base_offset;
    let group_end = group[group.len() - 1].next_offset;
    let mut out = CleanedSegment::create(dir, base, config.index_interval_bytes)?;
    let retention = i64::try_from(config.delete_retention_ms).unwrap_or(i64::MAX);
    let mut previous_last = base - 1;
    for seg in group {
        for_each_batch(seg, throttle, |batch| {
            // Corrupt data is never carried forward: the CRC and the offsets are checked here,
            // every record when it is decoded below.
            let bad = |e: BatchError| corrupt_batch(seg, &batch, e);
            batch.verify_crc().map_err(bad)?;
            batch.check_offset_range().map_err(bad)?;
            if batch.base_offset() <= previous_last {
                return Err(Interrupt::Failed(seg_corrupt(
                    seg,
                    format!(
                        "batch at offset {} does not follow the previous batch ending at {previous_last}",
                        batch.base_offset()
                    ),
                )));
            }
            previous_last = batch.last_offset();
            let tombstones_expire = now_ms.saturating_sub(batch.max_timestamp()) >= retention;
            let keep_empty = batch.next_offset() == group_end
                || (batch.producer_id() >= 0
                    && map.last_producer_batch.get(&batch.producer_id())
                        == Some(&batch.base_offset()));
            match filter_batch(&batch, map, tombstones_expire, keep_empty, stats).map_err(bad)? {
                Kept::Whole => out.push(batch.as_bytes(), throttle)?,
                Kept::Rebuilt(bytes) => {
                    // Checked on write as it will be on read.
                    RecordBatch::parse_exact(&bytes)
                        .and_then(|b| b.validate(usize::MAX, Validation::Records))
                        .map_err(|e| {
                            seg_corrupt(
                                seg,
                                format!(
                                    "cleaned batch at offset {} is invalid: {e}",
                                    batch.base_offset()
                                ),
                            )
                        })?;
                    out.push(&bytes, throttle)?;
                }
                Kept::Dropped => {}
            }
            Ok(())
        })?;
    }
    Ok(out.finish(throttle)?)
}

/// Decides what stays of `batch`.
fn filter_batch(
    batch: &RecordBatch<'_>,
    map: &OffsetMap,
    tombstones_expire: bool,
    keep_empty: bool,
    stats: &mut GroupStats,
) -> Result<Kept, BatchError> {
    if batch.is_control() || batch.is_transactional() {
        // Transactions are not written by this log's producers; keep such batches untouched.
        return Ok(Kept::Whole);
    }
    let records = batch.records()?;
    let mut iter = records.iter();
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut total: i64 = 0;
    while let Some(next) = iter.next_with_bytes() {
        let (record, bytes) = next?;
        total += 1;
        if let Some(key) = record.key {
            if map.latest.get(key).is_some_and(|&latest| record.offset < latest) {
                stats.records_removed += 1;
                continue;
            }
            if record.value.is_none() && tombstones_expire {
                stats.tombstones_removed += 1;
                continue;
            }
        }
        kept.push(bytes);
    }
    if total != i64::from(batch.records_count()) {
        return Err(BatchError::RecordCountMismatch {
            header: batch.records_count(),
            actual: i32::try_from(total).unwrap_or(i32::MAX),
        });
    }
    Ok(if kept.is_empty() {
        if keep_empty { Kept::Rebuilt(batch::emptied(batch)) } else { Kept::Dropped }
    } else if kept.len() as i64 == total {
        Kept::Whole
    } else {
        Kept::Rebuilt(batch::rebuild(batch, &kept)?)
    })
}

fn seg_corrupt(seg: &SegmentView, reason: String) -> LogError {
    LogError::Corrupt { path: seg.file.path().to_path_buf(), reason }
}

fn corrupt_batch(seg: &SegmentView, batch: &RecordBatch<'_>, e: BatchError) -> Interrupt {
    Interrupt::Failed(seg_corrupt(seg, format!("batch at offset {}: {e}", batch.base_offset())))
}

/// Calls `f` with every batch of `seg`, reading the file in large chunks through the throttle
/// and checking the framing. Stops when the throttle is cancelled.
fn for_each_batch(
    seg: &SegmentView,
    throttle: &Throttle,
    mut f: impl FnMut(RecordBatch<'_>) -> Result<(), Interrupt>,
) -> Result<(), Interrupt> {
    let size = seg.size;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_pos = 0u64; // file position of buf[0]
    let mut pos = 0u64;
    while pos < size {
        if size - pos < BATCH_HEADER_LEN as u64 {
            return Err(seg_corrupt(seg, format!("{} trailing bytes at {pos}", size - pos)).into());
        }
        let at = (pos - buf_pos) as usize;
        let need = if buf.len() >= at + BATCH_HEADER_LEN {
            let len = batch_size(&buf[at..])
                .map_err(|e| seg_corrupt(seg, format!("batch at position {pos}: {e}")))?
                as u64;
            if pos + len > size {
                return Err(seg_corrupt(
                    seg,
                    format!("batch of {len} bytes at position {pos} runs past the end {size}"),
                )
                .into());
            }
            len
        } else {
            BATCH_HEADER_LEN as u64
        };
        if (buf.len() as u64) < at as u64 + need {
            if throttle.is_cancelled() {
                return Err(Interrupt::Cancelled);
            }
            let want = need.max(READ_CHUNK as u64).min(size - pos);
            buf.resize(want as usize, 0);
            seg.file
                .file()
                .read_exact_at(&mut buf, pos)
                .map_err(io_err("read", seg.file.path()))?;
            buf_pos = pos;
            throttle.acquire(want);
            continue;
        }
        let bytes = &buf[at..at + need as usize];
        let (batch, _) = RecordBatch::parse(bytes)
            .map_err(|e| seg_corrupt(seg, format!("batch at position {pos}: {e}")))?;
        f(batch)?;
        pos += need;
    }
    Ok(())
}

/// Path of a staged file of the segment based at `base`: `<base>.<suffix>.<stage>`.
fn staged(dir: &Path, base: i64, suffix: &str, stage: &str) -> PathBuf {
    dir.join(format!("{}.{stage}", segment_file_name(base, suffix)))
}

/// A cleaned segment being written under `.cleaned` names.
struct CleanedSegment {
    dir: PathBuf,
    segment: Segment,
    pending: Vec<u8>,
    written: u64,
    interval: u32,
}

impl CleanedSegment {
    fn create(dir: &Path, base: i64, interval: u32) -> Result<Self, LogError> {
        let path = staged(dir, base, LOG_SUFFIX, CLEANED);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        let segment = Segment::from_file(base, file, dir.join(segment_file_name(base, LOG_SUFFIX)));
        Ok(CleanedSegment {
            dir: dir.to_path_buf(),
            segment,
            pending: Vec::new(),
            written: 0,
            interval,
        })
    }

    fn push(&mut self, bytes: &[u8], throttle: &Throttle) -> Result<(), LogError> {
        let seg = &self.segment;
        let position = seg.size;
        let h = BatchHeader::parse(bytes, position).map_err(|reason| LogError::Corrupt {
            path: staged(&self.dir, seg.base_offset, LOG_SUFFIX, CLEANED),
            reason,
        })?;
        if h.last_offset - seg.base_offset > i64::from(u32::MAX)
            || position + h.size > MAX_SEGMENT_BYTES
        {
            return Err(LogError::Corrupt {
                path: staged(&self.dir, seg.base_offset, LOG_SUFFIX, CLEANED),
                reason: format!(
                    "batch at offset {} does not fit a segment based at {}",
                    h.base_offset, seg.base_offset
                ),
            });
        }
        self.segment.observe(&h, self.interval);
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= WRITE_CHUNK {
            self.flush(throttle)?;
        }
        Ok(())
    }

    fn flush(&mut self, throttle: &Throttle) -> Result<(), LogError> {
        let path = staged(&self.dir, self.segment.base_offset, LOG_SUFFIX, CLEANED);
        self.segment
            .file
            .file()
            .write_all_at(&self.pending, self.written)
            .map_err(io_err("write", &path))?;
        self.written += self.pending.len() as u64;
        throttle.acquire(self.pending.len() as u64);
        self.pending.clear();
        Ok(())
    }

    /// Writes what is buffered, seals the time index, writes the index files and syncs all
    /// three.
    fn finish(mut self, throttle: &Throttle) -> Result<Segment, LogError> {
        self.flush(throttle)?;
        let base = self.segment.base_offset;
        let path = staged(&self.dir, base, LOG_SUFFIX, CLEANED);
        self.segment.file.file().sync_data().map_err(io_err("fsync", &path))?;
        self.segment.seal_time_index();
        let indexes = self.segment.write_indexes_as(&self.dir, &format!(".{CLEANED}"))?;
        for index in indexes {
            fs::File::open(&index).and_then(|f| f.sync_all()).map_err(io_err("fsync", &index))?;
        }
        Ok(self.segment)
    }
}

/// Removes the staged files of a clean of the segment based at `base` that was not committed
/// (best effort: open removes what is left).
pub(crate) fn discard(dir: &Path, base: i64) {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let _ = remove_if_exists(&staged(dir, base, suffix, CLEANED));
    }
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let _ = remove_if_exists(&staged(dir, base, suffix, SWAP));
    }
}

/// Renames the cleaned files of `base` to `.swap`, index files first, the log file last (its
/// rename is the commit point). Returns whether the log file was renamed: once it was, the swap
/// must be finished (by [`finish_swap`] or, after a crash, by [`recover`]).
pub(crate) fn commit_swap(dir: &Path, base: i64) -> (bool, Result<(), LogError>) {
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
        let (from, to) = (staged(dir, base, suffix, CLEANED), staged(dir, base, suffix, SWAP));
        if let Err(e) = fs::rename(&from, &to) {
            return (false, Err(io_err("rename", &from)(e)));
        }
    }
    (true, sync_dir(dir))
}

/// Finishes a committed swap of the segment based at `base`: deletes the files of the segments
/// it replaces (`old`, which includes `base`), syncs the directory, then renames the `.swap`
/// files to their final names (index files first) and syncs again. `step` is called after
/// each step (crash tests stop there).
pub(crate) fn finish_swap(
    dir: &Path,
    base: i64,
    old: &[i64],
    step: &dyn Fn(CleanStep) -> Result<(), LogError>,
) -> Result<(), LogError> {
    for (i, &old_base) in old.iter().enumerate() {
        Segment::delete_files(dir, old_base)?;
        if i == 0 && old.len() > 1 {
            step(CleanStep::OldPartlyDeleted)?;
        }
    }
    sync_dir(dir)?;
    step(CleanStep::OldDeleted)?;
    rename_swapped(dir, base, &[INDEX_SUFFIX, TIME_INDEX_SUFFIX])?;
    step(CleanStep::IndexesRenamed)?;
    rename_swapped(dir, base, &[LOG_SUFFIX])?;
    sync_dir(dir)?;
    step(CleanStep::Renamed)
}

/// Renames the `.swap` files of `base` with these suffixes to their final names, skipping
/// those already renamed.
fn rename_swapped(dir: &Path, base: i64, suffixes: &[&str]) -> Result<(), LogError> {
    for suffix in suffixes {
        let from = staged(dir, base, suffix, SWAP);
        match fs::rename(&from, dir.join(segment_file_name(base, suffix))) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(io_err("rename", &from))?,
        }
    }
    Ok(())
}

/// At open, before segments are listed: deletes `*.cleaned` files (a clean that was not
/// committed), completes every committed swap (`<base>.log.swap`: the segments it covers are
/// deleted and it takes their place) and deletes index `.swap` files without a log `.swap`
/// (renamed before the commit point).
///
/// # Errors
/// [`LogError::Io`], or [`LogError::Corrupt`] when a committed swap file is damaged (it was
/// synced before the commit, so this is damage recovery must not paper over).
pub(crate) fn recover(dir: &Path, index_interval_bytes: u32) -> Result<(), LogError> {
    let mut log_swaps = Vec::new();
    let mut index_swaps = Vec::new();
    // Bases with a segment data file, and with any segment file (a crash part way through
    // deleting a replaced segment may have left only its index files).
    let mut log_bases = Vec::new();
    let mut any_bases = Vec::new();
    let mut changed = false;
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(&format!(".{CLEANED}")) {
            remove_if_exists(&entry.path())?;
            changed = true;
            continue;
        }
        let (stem, swap) = match name.strip_suffix(&format!(".{SWAP}")) {
            Some(stem) => (stem, true),
            None => (&name[..], false),
        };
        let Some((base, suffix)) = stem.split_once('.') else { continue };
        if base.len() != 20 || !base.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(base) = base.parse::<i64>() else { continue };
        match (swap, suffix) {
            (true, LOG_SUFFIX) => log_swaps.push(base),
            (true, _) => index_swaps.push((base, entry.path())),
            (false, LOG_SUFFIX | INDEX_SUFFIX | TIME_INDEX_SUFFIX) => {
                if suffix == LOG_SUFFIX {
                    log_bases.push(base);
                }
                any_bases.push(base);
            }
            _ => {}
        }
    }
    log_swaps.sort_unstable();
    for &base in &log_swaps {
        let path = staged(dir, base, LOG_SUFFIX, SWAP);
        let (mut seg, len) = Segment::open(path.clone(), base)?;
        if let Some(reason) = seg.scan(0, len, true, index_interval_bytes)? {
            return Err(LogError::Corrupt {
                path,
                reason: format!("committed cleaned segment is damaged: {reason}"),
            });
        }
        if seg.is_empty() {
            return Err(LogError::Corrupt {
                path,
                reason: "committed cleaned segment holds no batch".into(),
            });
        }
        let end = seg.next_offset;
        drop(seg);
        any_bases.sort_unstable();
        any_bases.dedup();
        // The swap's own base: its old files go only while its old data file is there; once
        // that is gone, index files of that base are already the new ones (renamed from
        // `.swap` after every old file was deleted) or are about to be replaced by a rename.
        let replaced: Vec<i64> = any_bases
            .iter()
            .copied()
            .filter(|&b| (base..end).contains(&b) && (b != base || log_bases.contains(&b)))
            .collect();
        warn!(
            dir = %dir.display(),
            segment = base,
            replaced = ?replaced,
            "completing a cleaned segment swap interrupted by a crash"
        );
        for old in replaced {
            Segment::delete_files(dir, old)?;
        }
        sync_dir(dir)?;
        rename_swapped(dir, base, &[INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX])?;
        changed = true;
    }
    for (base, path) in index_swaps {
        if !log_swaps.contains(&base) {
            remove_if_exists(&path)?;
            changed = true;
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_holds_the_rate_and_stops_when_cancelled() {
        let throttle = Throttle::new(1 << 20);
        let start = Instant::now();
        for _ in 0..4 {
            throttle.acquire(64 << 10);
        }
        // 256 KiB at 1 MiB/s: about 250 ms.
        assert!(start.elapsed() >= Duration::from_millis(200), "{:?}", start.elapsed());
        throttle.cancel();
        let start = Instant::now();
        throttle.acquire(100 << 20);
        assert!(start.elapsed() < Duration::from_millis(100), "a cancelled throttle returns");
        let tiny = Throttle::new(1);
        tiny.cancel();
        tiny.acquire(u64::MAX);
        tiny.acquire(u64::MAX);
        let unlimited = Throttle::unlimited();
        let start = Instant::now();
        unlimited.acquire(u64::MAX);
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    fn view(base: i64, size: u64, next: i64) -> SegmentView {
        let dir = std::env::temp_dir();
        let file = fs::File::open(&dir).unwrap();
        SegmentView {
            base_offset: base,
            file: Segment::from_file(base, file, dir).file,
            size,
            next_offset: next,
        }
    }

    #[test]
    fn groups_stay_within_segment_bytes_and_the_mapped_range() {
        let segments =
            vec![view(0, 300, 10), view(10, 300, 20), view(20, 500, 30), view(30, 100, 40)];
        let bases = |groups: Vec<&[SegmentView]>| -> Vec<Vec<i64>> {
            groups.iter().map(|g| g.iter().map(|s| s.base_offset).collect()).collect()
        };
        assert_eq!(bases(groups(&segments, 40, 700)), vec![vec![0, 10], vec![20, 30]]);
        assert_eq!(bases(groups(&segments, 30, 700)), vec![vec![0, 10], vec![20]]);
        assert_eq!(bases(groups(&segments, 40, 100)), vec![vec![0], vec![10], vec![20], vec![30]]);
        assert_eq!(bases(groups(&segments, 0, 700)), Vec::<Vec<i64>>::new());
    }
}
