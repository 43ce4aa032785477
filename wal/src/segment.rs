//! Segment files: naming, listing, the recovery scan (with the torn-tail rule) and a
//! streaming record reader.
//!
//! A segment is an append-only file of framed records (see [`frame`](crate::frame)) named by
//! the LSN of its first record, zero-padded to 20 digits so names sort by LSN:
//! `00000000000000000001.wal`. A segment has no header of its own; its name must agree with
//! its first record, and each segment must start at the LSN after the previous one's last.
//!
//! # Recovery rules
//!
//! The scan reads every segment in order and checks every record (CRC, version, length, and
//! that LSNs are dense: +1 per record, across segments too).
//!
//! - A gap between segments is [`WalError::MissingSegment`], naming both files.
//! - A record that checks out but has the wrong LSN is [`WalError::LsnMismatch`], anywhere.
//! - A bad record (incomplete, unknown version, oversize length, CRC mismatch) in any
//!   segment but the last is [`WalError::Corrupt`], naming the file and offset: earlier
//!   segments were fully synced before the writer moved on, so damage there is corruption.
//! - A bad record at offset `o` of the **last** segment starts a **torn tail** — truncated to
//!   `o`, synced, and reported in [`TornTail`] — if and only if no record that checks out
//!   (CRC valid at its own offset) and belongs to a *later write batch* follows anywhere
//!   after `o`. Every byte position after `o` is tried. A valid record whose `batch_start`
//!   is ≤ `o` (and not before the last good record's batch) belongs to the same batch as the
//!   bad one: the writer issues one write and one `fdatasync` per batch and does not write
//!   the next batch before the sync returned, so only the last batch can be partly on disk
//!   (a power loss may persist its pages out of order), and none of its records was
//!   acknowledged durable. A valid record of a later batch proves the bad record's batch had
//!   been synced: that is [`WalError::CorruptBeforeValid`], never a silent skip.
//!   Zero-filled (preallocated) tails fail the version check and are torn tails; an empty
//!   last segment is fine.
//!
//! The rule cannot tell a bit flip in the *last synced* batch from a torn unsynced batch
//! (both look alike on disk); such a loss is truncated and reported, not hidden.

use std::collections::VecDeque;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Lsn;
use crate::error::WalError;
use crate::frame::{self, FrameError, HEADER_BYTES, Header, VERSION};
use crate::storage::{OsStorage, Storage};

/// File name extension of segments.
pub const SEGMENT_EXTENSION: &str = "wal";
/// Read buffer of the scan and the reader.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The file name of the segment whose first record has `first_lsn`.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.{SEGMENT_EXTENSION}")
}

/// A segment file and the LSN its name says it starts at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// LSN of its first record (from the name).
    pub first_lsn: Lsn,
    /// Path of the file.
    pub path: PathBuf,
}

/// Lists the segments of `dir`, sorted by first LSN. Files not ending in `.wal` are ignored;
/// a `.wal` file whose name is not 20 digits is an error.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    list_segments_in(&OsStorage, dir)
}

/// [`list_segments`] on `storage`.
pub(crate) fn list_segments_in(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<SegmentFile>, WalError> {
    let mut segments = Vec::new();
    for path in storage.list(dir).map_err(WalError::io("list", dir))? {
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXTENSION) {
            continue;
        }
        let first_lsn = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<Lsn>().ok())
            .filter(|&lsn| lsn >= 1);
        match first_lsn {
            Some(first_lsn) => segments.push(SegmentFile { first_lsn, path }),
            None => return Err(WalError::BadSegmentName { path }),
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// What the scan found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The file.
    pub path: PathBuf,
    /// First LSN (from the name).
    pub first_lsn: Lsn,
    /// Records that check out.
    pub records: u64,
    /// Bytes of those records (the file length after any truncation).
    pub bytes: u64,
}

/// A torn tail found (and, when opening, cut off) at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment.
    pub path: PathBuf,
    /// Offset of the first bad record: the new file length.
    pub offset: u64,
    /// Bytes after it that were (or would be) removed.
    pub bytes_removed: u64,
    /// What was wrong with the first bad record.
    pub reason: FrameError,
}

/// The result of scanning a log directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every segment, in order (filled as far as the scan got).
    pub segments: Vec<SegmentSummary>,
    /// Records that check out.
    pub records: u64,
    /// LSN of the first record the log holds, if any.
    pub first_lsn: Option<Lsn>,
    /// LSN of the last good record, or `first segment's LSN − 1` (0 for a new log) if none.
    pub last_lsn: Lsn,
    /// The torn tail of the last segment, if any.
    pub torn_tail: Option<TornTail>,
}

/// Whether the scan may truncate a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanMode {
    /// Report only (offline verify).
    ReadOnly,
    /// Truncate a torn tail and sync the file (opening the log).
    Repair,
}

/// Scans `segments` (as listed by [`list_segments`]) into `scan` under the recovery rules of
/// this module. On error, `scan` holds what was found before the problem.
pub(crate) fn scan(
    storage: &dyn Storage,
    segments: &[SegmentFile],
    mode: ScanMode,
    scan: &mut Scan,
) -> Result<(), WalError> {
    let mut prev: Option<&SegmentFile> = None;
    for (index, segment) in segments.iter().enumerate() {
        match prev {
            None => scan.last_lsn = segment.first_lsn - 1,
            Some(prev) => {
                let expected = scan.last_lsn + 1;
                if segment.first_lsn > expected {
                    return Err(WalError::MissingSegment {
                        prev: prev.path.clone(),
                        prev_last_lsn: scan.last_lsn,
                        next: segment.path.clone(),
                        next_first_lsn: segment.first_lsn,
                    });
                }
                if segment.first_lsn < expected {
                    return Err(WalError::OverlappingSegments {
                        prev: prev.path.clone(),
                        prev_last_lsn: scan.last_lsn,
                        next: segment.path.clone(),
                        next_first_lsn: segment.first_lsn,
                    });
                }
            }
        }
        let is_last = index + 1 == segments.len();
        let found = scan_segment(storage, segment, is_last, mode, scan)?;
        scan.segments.push(SegmentSummary {
            path: segment.path.clone(),
            first_lsn: segment.first_lsn,
            records: found.records,
            bytes: found.good_bytes,
        });
        scan.torn_tail = found.torn_tail;
        prev = Some(segment);
    }
    Ok(())
}

struct SegmentScan {
    records: u64,
    good_bytes: u64,
    torn_tail: Option<TornTail>,
}

fn scan_segment(
    storage: &dyn Storage,
    segment: &SegmentFile,
    is_last: bool,
    mode: ScanMode,
    progress: &mut Scan,
) -> Result<SegmentScan, WalError> {
    let path = &segment.path;
    let file = storage
        .open_read(path, 0)
        .map_err(WalError::io("open", path))?;
    let len = file.len;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file.reader);
    let mut payload = Vec::new();
    let mut offset = 0u64;
    let mut expected = segment.first_lsn;
    let mut last_batch_start = 0u64;
    let mut records = 0u64;
    let bad = loop {
        if offset == len {
            break None;
        }
        match read_record(&mut reader, offset, len, &mut payload, path)? {
            Ok(header) => {
                if header.lsn != expected {
                    return Err(WalError::LsnMismatch {
                        file: path.clone(),
                        offset,
                        expected,
                        found: header.lsn,
                    });
                }
                expected += 1;
                records += 1;
                // Kept current record by record, so an error leaves what was good before it.
                progress.records += 1;
                progress.last_lsn = header.lsn;
                progress.first_lsn.get_or_insert(header.lsn);
                last_batch_start = header.batch_start;
                offset += header.record_bytes();
            }
            Err(reason) => break Some(reason),
        }
    };
    let Some(reason) = bad else {
        return Ok(SegmentScan {
            records,
            good_bytes: offset,
            torn_tail: None,
        });
    };
    if !is_last {
        return Err(WalError::Corrupt {
            file: path.clone(),
            offset,
            reason,
        });
    }
    drop(reader);
    let torn_tail = torn_tail(storage, path, offset, len, reason, last_batch_start, mode)?;
    Ok(SegmentScan {
        records,
        good_bytes: offset,
        torn_tail: Some(torn_tail),
    })
}

/// The last segment's bad record at `offset` (of `len` bytes): a torn tail, truncated in
/// [`ScanMode::Repair`], unless a valid record of a batch after `last_batch_start` follows it
/// ([`WalError::CorruptBeforeValid`]).
fn torn_tail(
    storage: &dyn Storage,
    path: &Path,
    offset: u64,
    len: u64,
    reason: FrameError,
    last_batch_start: u64,
    mode: ScanMode,
) -> Result<TornTail, WalError> {
    let mut file = storage
        .open_read(path, offset)
        .map_err(WalError::io("open", path))?;
    let mut rest = Vec::new();
    file.reader
        .read_to_end(&mut rest)
        .map_err(WalError::io("read", path))?;
    let later = later_batch_record(&rest, offset, last_batch_start);
    #[cfg(feature = "sim-bugs")]
    let later =
        later.filter(|_| !crate::sim_bugs::on(&crate::sim_bugs::TRUNCATE_MIDDLE_CORRUPTION));
    if let Some(valid_offset) = later {
        return Err(WalError::CorruptBeforeValid {
            file: path.to_path_buf(),
            offset,
            reason,
            valid_offset,
        });
    }
    if mode == ScanMode::Repair {
        storage
            .truncate(path, offset)
            .map_err(WalError::io("truncate", path))?;
    }
    Ok(TornTail {
        path: path.to_path_buf(),
        offset,
        bytes_removed: len - offset,
        reason,
    })
}

/// Reads the record at `offset` (the reader is positioned there) of a file of `len` bytes.
/// The outer `Result` is an I/O error; the inner one a record that does not check out.
fn read_record(
    reader: &mut impl Read,
    offset: u64,
    len: u64,
    payload: &mut Vec<u8>,
    path: &Path,
) -> Result<Result<Header, FrameError>, WalError> {
    let available = len - offset;
    if available < HEADER_BYTES as u64 {
        return Ok(Err(FrameError::Incomplete {
            needed: HEADER_BYTES as u64,
            available,
        }));
    }
    let mut raw = [0u8; HEADER_BYTES];
    reader
        .read_exact(&mut raw)
        .map_err(WalError::io("read", path))?;
    let header = match Header::decode(&raw) {
        Ok(header) => header,
        Err(e) => return Ok(Err(e)),
    };
    if header.record_bytes() > available {
        return Ok(Err(FrameError::Incomplete {
            needed: header.record_bytes(),
            available,
        }));
    }
    payload.resize(header.payload_len as usize, 0);
    reader
        .read_exact(payload)
        .map_err(WalError::io("read", path))?;
    #[cfg(feature = "sim-bugs")]
    if crate::sim_bugs::on(&crate::sim_bugs::SKIP_CRC_LAST_RECORD)
        && offset + header.record_bytes() == len
    {
        return Ok(Ok(header));
    }
    Ok(header.verify(offset, payload).map(|()| header))
}

/// Looks for a record that checks out at any byte position of `rest` after its start (`rest`
/// begins with the bad record at segment offset `bad_offset`) and belongs to a later batch
/// than the bad record's: its `batch_start` is after `bad_offset`, or before the batch of the
/// last good record (`last_batch_start`), which no honest writer produces. Returns its offset.
fn later_batch_record(rest: &[u8], bad_offset: u64, last_batch_start: u64) -> Option<u64> {
    (1..rest.len()).find_map(|at| {
        // Cheap filter before the CRC: the version byte must match.
        if rest.get(at + 4) != Some(&VERSION) {
            return None;
        }
        let offset = bad_offset + at as u64;
        let (header, _) = frame::decode(&rest[at..], offset).ok()?;
        let same_batch = header.batch_start <= bad_offset && header.batch_start >= last_batch_start;
        (!same_batch).then_some(offset)
    })
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its log sequence number.
    pub lsn: Lsn,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A streaming iterator over records, segment by segment, verifying each record's CRC and
/// LSN as it reads. Memory: one read buffer and one payload. After the first error it ends.
pub struct Records {
    storage: Arc<dyn Storage>,
    segments: VecDeque<SegmentFile>,
    current: Option<Current>,
    /// The LSN the next record read must carry.
    expected: Lsn,
    /// The first LSN to yield.
    from_lsn: Lsn,
    /// The last LSN to yield, if bounded.
    end_lsn: Option<Lsn>,
    done: bool,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("segments", &self.segments)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

struct Current {
    reader: BufReader<Box<dyn Read + Send>>,
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl Records {
    /// Records from `from_lsn` through `end_lsn` (inclusive; `None` = to the end of the last
    /// segment, ending with an error at a torn tail) of `segments`.
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        mut segments: Vec<SegmentFile>,
        from_lsn: Lsn,
        end_lsn: Option<Lsn>,
    ) -> Result<Self, WalError> {
        let from_lsn = from_lsn.max(1);
        // No let-chains here: the workspace's rust-version (1.85) predates them.
        if let Some(first) = segments.first()
            && from_lsn < first.first_lsn
        {
            return Err(WalError::LogStartsAfter {
                requested: from_lsn,
                first: first.first_lsn,
            });
        }
        if let Some(end) = end_lsn
            && from_lsn > end + 1
        {
            return Err(WalError::LogEndsBefore {
                requested: from_lsn,
                last: end,
            });
        }
        // Skip whole segments that end before `from_lsn`.
        let keep_from = segments
            .iter()
            .rposition(|s| s.first_lsn <= from_lsn)
            .unwrap_or(0);
        segments.drain(..keep_from);
        let expected = segments.first().map_or(from_lsn, |s| s.first_lsn);
        Ok(Self {
            storage,
            segments: segments.into(),
            current: None,
            expected,
            from_lsn,
            end_lsn,
            done: false,
        })
    }

    fn next_record(&mut self) -> Result<Option<Record>, WalError> {
        loop {
            if self.end_lsn.is_some_and(|end| self.expected > end) {
                return Ok(None);
            }
            let Some(current) = self.current.as_mut() else {
                let Some(segment) = self.segments.pop_front() else {
                    return Ok(None);
                };
                if segment.first_lsn != self.expected {
                    return Err(WalError::LsnMismatch {
                        file: segment.path,
                        offset: 0,
                        expected: self.expected,
                        found: segment.first_lsn,
                    });
                }
                let file = self
                    .storage
                    .open_read(&segment.path, 0)
                    .map_err(WalError::io("open", &segment.path))?;
                self.current = Some(Current {
                    reader: BufReader::with_capacity(READ_BUFFER_BYTES, file.reader),
                    path: segment.path,
                    offset: 0,
                    len: file.len,
                });
                continue;
            };
            if current.offset == current.len {
                self.current = None;
                continue;
            }
            let mut payload = Vec::new();
            let header = read_record(
                &mut current.reader,
                current.offset,
                current.len,
                &mut payload,
                &current.path,
            )?
            .map_err(|reason| WalError::Corrupt {
                file: current.path.clone(),
                offset: current.offset,
                reason,
            })?;
            if header.lsn != self.expected {
                return Err(WalError::LsnMismatch {
                    file: current.path.clone(),
                    offset: current.offset,
                    expected: self.expected,
                    found: header.lsn,
                });
            }
            current.offset += header.record_bytes();
            self.expected += 1;
            if header.lsn >= self.from_lsn {
                return Ok(Some(Record {
                    lsn: header.lsn,
                    payload,
                }));
            }
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Fsyncs a directory so that created, renamed or removed entries in it are durable.
pub(crate) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), WalError> {
    storage
        .sync_dir(dir)
        .map_err(WalError::io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_lsn() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        let mut names = [
            segment_file_name(10),
            segment_file_name(9),
            segment_file_name(100),
        ];
        names.sort();
        assert_eq!(names[0], segment_file_name(9));
        assert_eq!(names[2], segment_file_name(100));
    }

    fn batch(records: &[(Lsn, &[u8])], start: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (lsn, payload) in records {
            let offset = start + out.len() as u64;
            frame::encode(&mut out, *lsn, offset, start, payload);
        }
        out
    }

    #[test]
    fn valid_record_of_the_same_batch_after_a_hole_is_a_torn_tail() {
        // One batch of three records whose middle one never reached the disk (zeros).
        let mut bytes = batch(&[(1, b"aaaa"), (2, b"bbbb"), (3, b"cccc")], 0);
        let second = HEADER_BYTES + 4;
        bytes[second..second * 2].fill(0);
        assert_eq!(later_batch_record(&bytes[second..], second as u64, 0), None);
    }

    #[test]
    fn valid_record_of_a_later_batch_is_corruption() {
        let mut bytes = batch(&[(1, b"aaaa"), (2, b"bbbb")], 0);
        let later = batch(&[(3, b"cccc")], bytes.len() as u64);
        bytes.extend_from_slice(&later);
        let second = HEADER_BYTES + 4;
        bytes[second + 7] ^= 0x10;
        assert_eq!(
            later_batch_record(&bytes[second..], second as u64, 0),
            Some(2 * second as u64)
        );
    }
}
