//! One segment of a partition log: the `<base offset>.log` file of batches laid back to back,
//! its in-memory offset and time indexes, and the scans that rebuild them from the file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{
    BASE_OFFSET_POS, BATCH_HEADER_LEN, LAST_OFFSET_DELTA_POS, LEADER_EPOCH_POS, MAGIC_POS,
    MAGIC_V2, MAX_TIMESTAMP_POS, RecordBatch, batch_size, read_i32, read_i64,
};
use crate::error::{LogError, io_err};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};

/// Suffix of segment data files.
pub const LOG_SUFFIX: &str = "log";
/// Suffix of offset index files.
pub const INDEX_SUFFIX: &str = "index";
/// Suffix of time index files.
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

/// File name of a segment file: the base offset zero-padded to 20 digits plus the suffix.
pub fn segment_file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// An open segment data file, shared by the writer and by readers (through [`crate::FileRegion`])
/// so that a region stays readable even after retention unlinks the file.
#[derive(Debug)]
pub struct SegmentFile {
    file: File,
    path: PathBuf,
}

impl SegmentFile {
    /// The open file, for positional reads and `sendfile(2)`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's path (it may have been deleted since).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The header fields of one batch, read from a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub position: u64,
    pub size: u64,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub leader_epoch: i32,
}

impl BatchHeader {
    /// Reads the header fields of a batch whose first bytes are `buf`.
    pub(crate) fn parse(buf: &[u8], position: u64) -> Result<Self, String> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(format!("{} bytes left, less than a batch header", buf.len()));
        }
        let size = batch_size(buf).map_err(|e| e.to_string())? as u64;
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(format!("bad magic {magic}"));
        }
        let last_offset_delta = read_i32(buf, LAST_OFFSET_DELTA_POS);
        if last_offset_delta < 0 {
            return Err(format!("negative lastOffsetDelta {last_offset_delta}"));
        }
        let base_offset = read_i64(buf, BASE_OFFSET_POS);
        let last_offset = base_offset
            .checked_add(i64::from(last_offset_delta) + 1)
            .filter(|_| base_offset >= 0)
            .ok_or_else(|| {
                format!("offsets out of range: base {base_offset}, delta {last_offset_delta}")
            })?
            - 1;
        Ok(BatchHeader {
            position,
            size,
            base_offset,
            last_offset,
            max_timestamp: read_i64(buf, MAX_TIMESTAMP_POS),
            leader_epoch: read_i32(buf, LEADER_EPOCH_POS),
        })
    }

    /// The header of a batch about to be appended at `position`.
    pub fn of(batch: &RecordBatch<'_>, position: u64, base_offset: i64, leader_epoch: i32) -> Self {
        BatchHeader {
            position,
            size: batch.size() as u64,
            base_offset,
            last_offset: base_offset + i64::from(batch.last_offset_delta()),
            max_timestamp: batch.max_timestamp(),
            leader_epoch,
        }
    }
}

/// A segment's metadata and indexes. Lives in the log's state; mutated only by the writer.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub file: Arc<SegmentFile>,
    /// Bytes of whole, published batches; readers never look past it.
    pub size: u64,
    /// Offset after the last batch (the base offset when empty).
    pub next_offset: i64,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Largest batch max timestamp, `i64::MIN` when empty.
    pub max_timestamp: i64,
    /// Base offset of the last batch.
    pub last_batch_offset: i64,
    pub bytes_since_index: u64,
    /// Wall-clock time the segment started taking batches in this process, for `segment.ms`.
    pub roll_base_ms: Option<i64>,
}

impl Segment {
    /// Creates an empty segment file (replacing stale index files of the same base).
    pub fn create(dir: &Path, base_offset: i64) -> Result<Self, LogError> {
        let path = dir.join(segment_file_name(base_offset, LOG_SUFFIX));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            remove_if_exists(&dir.join(segment_file_name(base_offset, suffix)))?;
        }
        Ok(Self::empty(base_offset, SegmentFile { file, path }))
    }

    /// Opens an existing segment file; its metadata is filled in by [`Segment::load`].
    pub fn open(path: PathBuf, base_offset: i64) -> Result<(Self, u64), LogError> {
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        Ok((Self::empty(base_offset, SegmentFile { file, path }), len))
    }

    /// An empty segment over an open `file` whose final name is `path` (the cleaner writes a
    /// segment under a temporary name and renames it later; the open handle follows).
    pub(crate) fn from_file(base_offset: i64, file: File, path: PathBuf) -> Self {
        Self::empty(base_offset, SegmentFile { file, path })
    }

    fn empty(base_offset: i64, file: SegmentFile) -> Self {
        Segment {
            base_offset,
            file: Arc::new(file),
            size: 0,
            next_offset: base_offset,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            max_timestamp: i64::MIN,
            last_batch_offset: base_offset,
            bytes_since_index: 0,
            roll_base_ms: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// `offset` relative to the segment base, saturated into `u32`.
    pub fn relative(&self, offset: i64) -> u32 {
        (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// Records a batch written at the end of the segment: indexes, size, offsets, timestamps.
    pub fn observe(&mut self, h: &BatchHeader, index_interval_bytes: u32) {
        debug_assert_eq!(h.position, self.size);
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
        if self.bytes_since_index >= u64::from(index_interval_bytes) {
            let relative_offset = self.relative(h.base_offset);
            self.index.maybe_push(OffsetEntry { relative_offset, position: h.position as u32 });
            self.time_index
                .maybe_push(TimeEntry { timestamp: self.max_timestamp, relative_offset });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += h.size;
        self.size = h.position + h.size;
        self.next_offset = h.last_offset + 1;
        self.last_batch_offset = h.base_offset;
    }

    /// Adds the final time index entry so that its last entry is the segment's max timestamp
    /// (done when the segment stops being active, as Kafka does).
    pub fn seal_time_index(&mut self) {
        if !self.is_empty() {
            let relative_offset = self.relative(self.last_batch_offset);
            self.time_index
                .maybe_push(TimeEntry { timestamp: self.max_timestamp, relative_offset });
        }
    }

    /// Writes both index files (without syncing them; see [`Segment::sync`]).
    pub fn write_indexes(&self, dir: &Path) -> Result<(), LogError> {
        self.write_indexes_as(dir, "").map(|_| ())
    }

    /// Writes both index files under their names followed by `stage` (e.g. `.cleaned`), without
    /// syncing them, and returns their paths.
    pub fn write_indexes_as(&self, dir: &Path, stage: &str) -> Result<[PathBuf; 2], LogError> {
        let pairs =
            [(INDEX_SUFFIX, self.index.encode()), (TIME_INDEX_SUFFIX, self.time_index.encode())];
        let paths = pairs.each_ref().map(|(suffix, _)| {
            dir.join(format!("{}{stage}", segment_file_name(self.base_offset, suffix)))
        });
        for ((_, bytes), path) in pairs.iter().zip(&paths) {
            fs::write(path, bytes).map_err(io_err("write", path))?;
        }
        Ok(paths)
    }

    /// Fsyncs the data file and both index files of the segment based at `base_offset`.
    pub fn sync(dir: &Path, file: &SegmentFile, base_offset: i64) -> Result<(), LogError> {
        file.file.sync_data().map_err(io_err("fsync", &file.path))?;
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            let path = dir.join(segment_file_name(base_offset, suffix));
            match File::open(&path).and_then(|f| f.sync_all()) {
                // Retention or truncation deleted the segment meanwhile: nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other.map_err(io_err("fsync", &path))?,
            }
        }
        Ok(())
    }

    /// Loads the index files if they are present and consistent with a file of `len` bytes.
    pub fn load_indexes(&mut self, dir: &Path, len: u64) -> Result<(), String> {
        let read = |suffix| {
            let path = dir.join(segment_file_name(self.base_offset, suffix));
            fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        self.index = OffsetIndex::decode(&read(INDEX_SUFFIX)?, len)?;
        // Time entries may point past the last offset entry (the sealing entry); the caller
        // checks them against the last batch once the tail has been walked.
        self.time_index = TimeIndex::decode(&read(TIME_INDEX_SUFFIX)?, u32::MAX)?;
        if let Some(t) = self.time_index.last() {
            self.max_timestamp = t.timestamp;
        }
        Ok(())
    }

    /// Reads the header of the batch at `position`, which must end by `self.size`.
    pub fn read_header(&self, position: u64) -> Result<BatchHeader, LogError> {
        let mut buf = [0u8; BATCH_HEADER_LEN];
        self.file.file.read_exact_at(&mut buf, position).map_err(io_err("read", self.path()))?;
        let h = BatchHeader::parse(&buf, position)
            .map_err(|reason| self.corrupt(format!("batch at position {position}: {reason}")))?;
        if position + h.size > self.size {
            return Err(self.corrupt(format!(
                "batch at position {position} of {} bytes runs past the segment end {}",
                h.size, self.size
            )));
        }
        Ok(h)
    }

    /// Walks batch headers from `position` and returns the first batch whose last offset is at
    /// least `offset`, or `None` when no batch in the segment reaches it.
    pub fn find_batch(
        &self,
        offset: i64,
        mut position: u64,
    ) -> Result<Option<BatchHeader>, LogError> {
        while position < self.size {
            let h = self.read_header(position)?;
            if h.last_offset >= offset {
                return Ok(Some(h));
            }
            position += h.size;
        }
        Ok(None)
    }

    /// The index's starting point for a search for `offset`: a batch position at or before it.
    pub fn lookup_position(&self, offset: i64) -> u64 {
        self.index.floor_offset(self.relative(offset)).map_or(0, |e| u64::from(e.position))
    }

    pub fn corrupt(&self, reason: String) -> LogError {
        LogError::Corrupt { path: self.path().to_path_buf(), reason }
    }

    /// Scans the file from `from` to `len`, checking framing, offsets (never decreasing) and,
    /// when `check_crc`, every CRC; each valid batch is observed into this segment. Stops at
    /// the first invalid batch and returns why, leaving `self.size` at the end of the valid
    /// prefix.
    pub fn scan(
        &mut self,
        from: u64,
        len: u64,
        check_crc: bool,
        index_interval_bytes: u32,
    ) -> Result<Option<String>, LogError> {
        const CHUNK: usize = 4 << 20;
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_pos = from; // file position of buf[0]
        let mut pos = from;
        let mut expected = if from == 0 { self.base_offset } else { self.next_offset };
        loop {
            if pos == len {
                return Ok(None);
            }
            if len - pos < BATCH_HEADER_LEN as u64 {
                return Ok(Some(format!("{} trailing bytes, less than a batch header", len - pos)));
            }
            let at = (pos - buf_pos) as usize;
            if buf.len() < at + BATCH_HEADER_LEN {
                buf_pos = pos;
                buf = self.read_chunk(pos, CHUNK.min((len - pos) as usize))?;
                continue;
            }
            let h = match BatchHeader::parse(&buf[at..], pos) {
                Ok(h) => h,
                Err(reason) => return Ok(Some(reason)),
            };
            if pos + h.size > len {
                return Ok(Some(format!(
                    "batch of {} bytes at position {pos} is cut off at {len}",
                    h.size
                )));
            }
            if buf.len() < at + h.size as usize {
                buf_pos = pos;
                buf = self.read_chunk(pos, (CHUNK as u64).max(h.size).min(len - pos) as usize)?;
                continue;
            }
            if h.base_offset < expected {
                return Ok(Some(format!(
                    "batch base offset {} is below the expected {expected}",
                    h.base_offset
                )));
            }
            if check_crc {
                let bytes = &buf[at..at + h.size as usize];
                let (batch, _) =
                    RecordBatch::parse(bytes).map_err(|e| self.corrupt(e.to_string()))?;
                if let Err(e) = batch.verify_crc() {
                    return Ok(Some(format!("batch at offset {}: {e}", h.base_offset)));
                }
            }
            if h.last_offset - self.base_offset > i64::from(u32::MAX) {
                return Ok(Some(format!("offset {} does not fit the segment", h.last_offset)));
            }
            self.observe(&h, index_interval_bytes);
            expected = h.last_offset + 1;
            pos += h.size;
        }
    }

    fn read_chunk(&self, pos: u64, len: usize) -> Result<Vec<u8>, LogError> {
        let mut buf = vec![0u8; len];
        self.file.file.read_exact_at(&mut buf, pos).map_err(io_err("read", self.path()))?;
        Ok(buf)
    }

    /// Shrinks the file and metadata to `size` bytes (a batch boundary), then rescans what is
    /// left so the indexes and timestamps describe exactly the remaining batches.
    pub fn truncate_to_size(
        &mut self,
        size: u64,
        index_interval_bytes: u32,
    ) -> Result<(), LogError> {
        self.file.file.set_len(size).map_err(io_err("truncate", self.path()))?;
        self.file.file.sync_data().map_err(io_err("fsync", self.path()))?;
        self.size = 0;
        self.next_offset = self.base_offset;
        self.index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.max_timestamp = i64::MIN;
        self.last_batch_offset = self.base_offset;
        self.bytes_since_index = 0;
        if let Some(reason) = self.scan(0, size, false, index_interval_bytes)? {
            return Err(self.corrupt(format!("after truncation to {size} bytes: {reason}")));
        }
        Ok(())
    }

    /// Deletes the segment's files (open handles keep the data readable).
    pub fn delete_files(dir: &Path, base_offset: i64) -> Result<(), LogError> {
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            remove_if_exists(&dir.join(segment_file_name(base_offset, suffix)))?;
        }
        Ok(())
    }
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}
