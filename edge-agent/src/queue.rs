//! The offline bid queue: a bounded, append-only log on disk (`<data-dir>/queue.log`) of
//! bids waiting to be forwarded, and of the outcomes of bids forwarded.
//!
//! A bid is appended and `fdatasync`ed before the local client hears "queued", so a crash
//! after that answer cannot lose it. Bids leave in the order they came, each once its final
//! outcome is known and appended (also synced: a forwarded bid is not forwarded again after
//! a restart — and if it were, the node would answer DUPLICATE with the original outcome).
//! When the queue holds `bids_max` bids or `bytes_max` bytes of records, a new bid is
//! refused: a queued bid is never overwritten or dropped.
//!
//! Record layout (all integers big-endian):
//!
//! | offset | field | type |
//! |---|---|---|
//! | 0 | payload length | u32 |
//! | 4 | CRC-32C of the payload | u32 |
//! | 8 | kind | u8: 1 a bid, 2 an outcome |
//!
//! A bid: `bid_id` u128, `auction_id` u64, `amount` u64, `max` u64 (0: none),
//! `queued_at_us` u64, tag length u8, tag. An outcome: `bid_id` u128, `auction_id` u64,
//! code u8 ([`Outcome::code`]), `seq` u64, `price` u64, `min_next` u64, tag length u8, tag.
//!
//! Opening scans the file. A record cut short, or a bad last record, or a zero-filled rest
//! of the file, is the torn tail of a write interrupted by a crash: it was never answered
//! "queued", and the file is truncated before it. A bad record followed by more records
//! is corruption: the open fails naming the file and offset, and nothing is guessed.
//! The file is rewritten (to a temporary file, synced, renamed) when dead records make it
//! larger than [`COMPACT_BYTES`] and four times the live ones.
//!
//! Memory: the queue holds each waiting bid's id and the place of its record (32 bytes),
//! not the bid; the bid is read back from the file when it is forwarded or asked about.
//! Outcomes (for status queries) are kept in memory, at most [`OUTCOMES_KEPT`].

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The queue's file name inside the data directory.
pub(crate) const FILE_NAME: &str = "queue.log";
/// Header bytes of a record (length and checksum).
const HEADER_BYTES: usize = 8;
/// Longest tag (a client's reference echoed with the outcome), in bytes.
pub(crate) const TAG_BYTES_MAX: usize = 64;
/// Longest payload a valid record has, in bytes.
const PAYLOAD_BYTES_MAX: usize = 1 + 16 + 8 + 1 + 24 + 1 + TAG_BYTES_MAX;
/// Outcomes remembered for status queries (the oldest are forgotten first).
pub(crate) const OUTCOMES_KEPT: usize = 10_000;
/// The file is compacted only when larger than this, in bytes.
pub(crate) const COMPACT_BYTES: u64 = 1 << 20;

const KIND_BID: u8 = 1;
const KIND_OUTCOME: u8 = 2;

/// A bid waiting in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueuedBid {
    /// The idempotency key the node sees.
    pub(crate) bid_id: u128,
    /// The auction.
    pub(crate) auction_id: u64,
    /// Amount, in ticks.
    pub(crate) amount: u64,
    /// Proxy maximum, in ticks.
    pub(crate) max: Option<u64>,
    /// When the agent queued it, microseconds since the Unix epoch.
    pub(crate) queued_at_us: u64,
    /// The client's reference, echoed with the outcome.
    pub(crate) tag: String,
}

/// A bid's final outcome from the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Accepted (or a DUPLICATE of an accepted bid: the original acceptance).
    Accepted {
        /// The auction's seq of the bid's change.
        seq: u64,
        /// The visible price after it.
        price: u64,
    },
    /// Below the next acceptable amount.
    TooLow {
        /// The lowest amount the node would have considered.
        min_next: u64,
    },
    /// The auction had not started.
    NotOpen,
    /// The auction had ended.
    Closed,
    /// No such auction.
    UnknownAuction,
    /// The bid does not fit the auction.
    Invalid,
    /// The device may not bid.
    Forbidden,
    /// The node refused the request with an error that retrying will not change.
    Error,
}

impl Outcome {
    /// The outcome's name in statuses and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::TooLow { .. } => "too_low",
            Outcome::NotOpen => "not_open",
            Outcome::Closed => "closed",
            Outcome::UnknownAuction => "unknown_auction",
            Outcome::Invalid => "invalid",
            Outcome::Forbidden => "forbidden",
            Outcome::Error => "error",
        }
    }

    /// `(code, seq, price, min_next)` as recorded.
    fn code(self) -> (u8, u64, u64, u64) {
        match self {
            Outcome::Accepted { seq, price } => (1, seq, price, 0),
            Outcome::TooLow { min_next } => (2, 0, 0, min_next),
            Outcome::NotOpen => (3, 0, 0, 0),
            Outcome::Closed => (4, 0, 0, 0),
            Outcome::UnknownAuction => (5, 0, 0, 0),
            Outcome::Invalid => (6, 0, 0, 0),
            Outcome::Forbidden => (7, 0, 0, 0),
            Outcome::Error => (8, 0, 0, 0),
        }
    }

    fn from_code(code: u8, seq: u64, price: u64, min_next: u64) -> Option<Outcome> {
        Some(match code {
            1 => Outcome::Accepted { seq, price },
            2 => Outcome::TooLow { min_next },
            3 => Outcome::NotOpen,
            4 => Outcome::Closed,
            5 => Outcome::UnknownAuction,
            6 => Outcome::Invalid,
            7 => Outcome::Forbidden,
            8 => Outcome::Error,
            _ => return None,
        })
    }
}

/// Where a bid is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Waiting; `position` 0 is forwarded next.
    Queued {
        /// Bids ahead of it.
        position: usize,
        /// The client's reference.
        tag: String,
    },
    /// Forwarded, with its final outcome.
    Done {
        /// The outcome.
        outcome: Outcome,
        /// The client's reference.
        tag: String,
    },
}

/// Why a bid was not queued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    /// The queue is at one of its bounds.
    #[error(
        "the queue is full: {bids} bids, {bytes} bytes queued (at most {bids_max} bids, \
         {bytes_max} bytes); retry once the node took some"
    )]
    Full {
        /// Bids queued.
        bids: usize,
        /// Bytes queued.
        bytes: u64,
        /// The bound on bids.
        bids_max: usize,
        /// The bound on bytes.
        bytes_max: u64,
    },
    /// A bid with this id is already queued or done (a client's retry): its status.
    #[error("the bid id is known")]
    Known(Status),
    /// Writing or syncing the file failed: the bid is not queued.
    #[error("writing the queue: {0}")]
    Io(#[from] std::io::Error),
}

/// The queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Reading, truncating or creating the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A damaged record followed by more records.
    #[error("{path}: corrupt record at offset {offset}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The record's offset.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
}

/// One record as read back.
enum Record {
    Bid(QueuedBid),
    Outcome {
        bid_id: u128,
        outcome: Outcome,
        tag: String,
    },
}

/// A waiting bid as the queue holds it in memory: its id and where its record is in the
/// file. The bid itself is read back (one `pread` of its record, from the page cache as a
/// rule) when it is forwarded or asked about, so the memory of 10,000 waiting bids is
/// 32 bytes each, not the bids with their tags.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    bid_id: u128,
    offset: u64,
    len: u32,
}

/// The queue; see the module documentation.
#[derive(Debug)]
pub(crate) struct Queue {
    path: PathBuf,
    file: File,
    file_bytes: u64,
    /// The waiting bids, front first: where their records are (not the bids themselves).
    pending: VecDeque<Waiting>,
    pending_bytes: u64,
    outcomes: HashMap<u128, (Outcome, String, u64)>,
    outcome_order: VecDeque<u128>,
    bids_max: usize,
    bytes_max: u64,
    /// Bytes of the outcome records kept (for the compaction's arithmetic).
    outcome_bytes: u64,
    /// [`OUTCOMES_KEPT`] and [`COMPACT_BYTES`] (smaller in tests).
    outcomes_kept: usize,
    compact_bytes: u64,
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, truncating a torn tail.
    pub(crate) fn open(dir: &Path, bids_max: usize, bytes_max: u64) -> Result<Queue, OpenError> {
        let path = dir.join(FILE_NAME);
        let io = |source| OpenError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (records, valid) = scan(&bytes).map_err(|(offset, why)| OpenError::Corrupt {
            path: path.clone(),
            offset,
            why,
        })?;
        if valid < bytes.len() {
            tracing::warn!(file = %path.display(), offset = valid, dropped = bytes.len() - valid,
                "truncating the queue's torn tail (a write cut by a crash; never answered)");
            file.set_len(valid as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut queue = Queue {
            path,
            file,
            file_bytes: valid as u64,
            pending: VecDeque::new(),
            pending_bytes: 0,
            outcomes: HashMap::new(),
            outcome_order: VecDeque::new(),
            bids_max,
            bytes_max,
            outcome_bytes: 0,
            outcomes_kept: OUTCOMES_KEPT,
            compact_bytes: COMPACT_BYTES,
        };
        let mut offset = 0;
        for (record, len) in records {
            queue.replay(record, offset, len);
            offset += len;
        }
        queue.gauges();
        Ok(queue)
    }

    fn replay(&mut self, record: Record, offset: u64, len: u64) {
        match record {
            Record::Bid(bid) => {
                self.pending_bytes += len;
                self.pending.push_back(Waiting {
                    bid_id: bid.bid_id,
                    offset,
                    // Invariant: a record is at most HEADER_BYTES + PAYLOAD_BYTES_MAX long.
                    len: len as u32,
                });
            }
            Record::Outcome {
                bid_id,
                outcome,
                tag,
            } => {
                let at = self.pending.iter().position(|w| w.bid_id == bid_id);
                if let Some(waiting) = at.and_then(|at| self.pending.remove(at)) {
                    self.pending_bytes -= u64::from(waiting.len);
                }
                self.remember(bid_id, outcome, tag, len);
            }
        }
    }

    /// Appends `bid` and syncs it to disk; only then is it queued.
    pub(crate) fn push(&mut self, bid: QueuedBid) -> Result<usize, PushError> {
        if let Some(status) = self.status(bid.bid_id) {
            return Err(PushError::Known(status));
        }
        let record = encode_bid(&bid);
        let len = record.len() as u64;
        if self.pending.len() >= self.bids_max || self.pending_bytes + len > self.bytes_max {
            return Err(PushError::Full {
                bids: self.pending.len(),
                bytes: self.pending_bytes,
                bids_max: self.bids_max,
                bytes_max: self.bytes_max,
            });
        }
        let offset = self.file_bytes;
        self.append(&record)?;
        self.pending_bytes += len;
        self.pending.push_back(Waiting {
            bid_id: bid.bid_id,
            offset,
            // Invariant: a record is at most HEADER_BYTES + PAYLOAD_BYTES_MAX long.
            len: len as u32,
        });
        self.gauges();
        Ok(self.pending.len() - 1)
    }

    /// The `n`-th waiting bid (0: the front, forwarded first), read back from the file.
    pub(crate) fn nth(&self, n: usize) -> std::io::Result<Option<QueuedBid>> {
        self.pending.get(n).map(|w| self.read_bid(w)).transpose()
    }

    /// A waiting bid's record, read back and checked.
    fn read_bid(&self, waiting: &Waiting) -> std::io::Result<QueuedBid> {
        use std::os::unix::fs::FileExt as _;
        let mut record = vec![0; waiting.len as usize];
        self.file.read_exact_at(&mut record, waiting.offset)?;
        let bad = |why| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        let (header, payload) = record.split_at(HEADER_BYTES.min(record.len()));
        if header.len() < HEADER_BYTES || crc32c::crc32c(payload).to_be_bytes() != header[4..8] {
            return Err(bad("a queued bid's record changed on disk"));
        }
        match parse(payload).map_err(bad)? {
            Record::Bid(bid) if bid.bid_id == waiting.bid_id => Ok(bid),
            _ => Err(bad("a queued bid's record is not that bid")),
        }
    }

    /// Records the final outcome of the front bid (synced), and removes it.
    #[cfg(test)]
    pub(crate) fn finish(&mut self, bid_id: u128, outcome: Outcome) -> std::io::Result<()> {
        self.finish_all(&[(bid_id, outcome)])
    }

    /// Records the final outcomes of the bids at the front, in queue order, with one write
    /// and one sync, and removes them.
    pub(crate) fn finish_all(&mut self, outcomes: &[(u128, Outcome)]) -> std::io::Result<()> {
        let mut records = Vec::new();
        let mut lens = Vec::with_capacity(outcomes.len());
        for (at, &(bid_id, outcome)) in outcomes.iter().enumerate() {
            let Some(waiting) = self.pending.get(at) else {
                break;
            };
            // Invariant: only the forwarder finishes bids, front first, in queue order.
            assert_eq!(waiting.bid_id, bid_id, "bids are finished in queue order");
            let bid = self.read_bid(waiting)?;
            let record = encode_outcome(&bid, outcome);
            lens.push((outcome, bid.tag, record.len() as u64));
            records.extend_from_slice(&record);
        }
        self.append(&records)?;
        for (outcome, tag, len) in lens {
            if let Some(waiting) = self.pending.pop_front() {
                self.pending_bytes -= u64::from(waiting.len);
                self.remember(waiting.bid_id, outcome, tag, len);
            }
        }
        self.gauges();
        if self.file_bytes > self.compact_bytes
            && self.file_bytes > 4 * (self.pending_bytes + self.outcome_bytes)
        {
            self.compact()?;
        }
        Ok(())
    }

    /// Where the bid `bid_id` is, if known.
    pub(crate) fn status(&self, bid_id: u128) -> Option<Status> {
        if let Some((outcome, tag, _)) = self.outcomes.get(&bid_id) {
            return Some(Status::Done {
                outcome: *outcome,
                tag: tag.clone(),
            });
        }
        let position = self.pending.iter().position(|w| w.bid_id == bid_id)?;
        let tag = match self.read_bid(&self.pending[position]) {
            Ok(bid) => bid.tag,
            Err(e) => {
                tracing::warn!(error = %e, "reading a queued bid's tag");
                String::new()
            }
        };
        Some(Status::Queued { position, tag })
    }

    /// Bids waiting.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    fn remember(&mut self, bid_id: u128, outcome: Outcome, tag: String, len: u64) {
        if self.outcomes.insert(bid_id, (outcome, tag, len)).is_none() {
            self.outcome_order.push_back(bid_id);
            self.outcome_bytes += len;
        }
        while self.outcome_order.len() > self.outcomes_kept {
            if let Some(old) = self.outcome_order.pop_front()
                && let Some((_, _, bytes)) = self.outcomes.remove(&old)
            {
                self.outcome_bytes -= bytes;
            }
        }
    }

    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        let result = self
            .file
            .write_all(record)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            // Leave no half record behind a failed write: cut back to the last good end.
            let _ = self.file.set_len(self.file_bytes);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(e);
        }
        self.file_bytes += record.len() as u64;
        Ok(())
    }

    /// Rewrites the file with the waiting bids and the outcomes kept.
    fn compact(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for bid_id in &self.outcome_order {
            if let Some((outcome, tag, _)) = self.outcomes.get(bid_id) {
                bytes.extend(encode_outcome_of(*bid_id, 0, *outcome, tag));
            }
        }
        let mut pending = VecDeque::with_capacity(self.pending.len());
        for waiting in &self.pending {
            let offset = bytes.len() as u64;
            bytes.extend(encode_bid(&self.read_bid(waiting)?));
            pending.push_back(Waiting { offset, ..*waiting });
        }
        let temporary = self.path.with_extension("log.tmp");
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let mut file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        file.seek(SeekFrom::End(0))?;
        self.file = file;
        self.file_bytes = bytes.len() as u64;
        self.pending = pending;
        tracing::debug!(bytes = self.file_bytes, "queue compacted");
        Ok(())
    }

    fn gauges(&self) {
        metrics::gauge!(crate::metrics::QUEUE_BIDS).set(self.pending.len() as f64);
        metrics::gauge!(crate::metrics::QUEUE_BYTES).set(self.pending_bytes as f64);
    }
}

fn frame(payload: Vec<u8>) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    // Invariant: payloads are at most PAYLOAD_BYTES_MAX bytes.
    record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    record.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    record.extend_from_slice(&payload);
    record
}

fn put_tag(payload: &mut Vec<u8>, tag: &str) {
    // Invariant: tags are checked against TAG_BYTES_MAX (< 256) before they are queued.
    let tag = &tag.as_bytes()[..tag.len().min(TAG_BYTES_MAX)];
    payload.push(tag.len() as u8);
    payload.extend_from_slice(tag);
}

fn encode_bid(bid: &QueuedBid) -> Vec<u8> {
    let mut payload = vec![KIND_BID];
    payload.extend_from_slice(&bid.bid_id.to_be_bytes());
    for field in [
        bid.auction_id,
        bid.amount,
        bid.max.unwrap_or(0),
        bid.queued_at_us,
    ] {
        payload.extend_from_slice(&field.to_be_bytes());
    }
    put_tag(&mut payload, &bid.tag);
    frame(payload)
}

fn encode_outcome(bid: &QueuedBid, outcome: Outcome) -> Vec<u8> {
    encode_outcome_of(bid.bid_id, bid.auction_id, outcome, &bid.tag)
}

fn encode_outcome_of(bid_id: u128, auction_id: u64, outcome: Outcome, tag: &str) -> Vec<u8> {
    let (code, seq, price, min_next) = outcome.code();
    let mut payload = vec![KIND_OUTCOME];
    payload.extend_from_slice(&bid_id.to_be_bytes());
    payload.extend_from_slice(&auction_id.to_be_bytes());
    payload.push(code);
    for field in [seq, price, min_next] {
        payload.extend_from_slice(&field.to_be_bytes());
    }
    put_tag(&mut payload, tag);
    frame(payload)
}

/// Reads the records of a file: `(records with their lengths, bytes that are valid)`, or
/// the offset and reason of a corruption.
#[allow(clippy::type_complexity)]
fn scan(bytes: &[u8]) -> Result<(Vec<(Record, u64)>, usize), (u64, &'static str)> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER_BYTES || rest.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let end = HEADER_BYTES.saturating_add(len);
        if end > rest.len() {
            break;
        }
        let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let payload = &rest[HEADER_BYTES..end];
        let parsed = if len > PAYLOAD_BYTES_MAX {
            Err("length beyond any record")
        } else if crc32c::crc32c(payload) != crc {
            Err("checksum mismatch")
        } else {
            parse(payload)
        };
        match parsed {
            Ok(record) => records.push((record, end as u64)),
            // The last record, damaged: the torn tail of an interrupted write.
            Err(_) if end == rest.len() => break,
            Err(why) => return Err((at as u64, why)),
        }
        at += end;
    }
    Ok((records, at))
}

/// Reads fields in order from a payload.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (head, rest) = self.0.split_at_checked(N).ok_or("record too short")?;
        self.0 = rest;
        head.try_into().map_err(|_| "record too short")
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    fn tag(&mut self) -> Result<String, &'static str> {
        let [len] = self.take()?;
        let (tag, rest) = self
            .0
            .split_at_checked(usize::from(len))
            .ok_or("tag too short")?;
        self.0 = rest;
        String::from_utf8(tag.to_vec()).map_err(|_| "tag not UTF-8")
    }
}

fn parse(payload: &[u8]) -> Result<Record, &'static str> {
    let mut fields = Fields(payload);
    let [kind] = fields.take()?;
    let bid_id = u128::from_be_bytes(fields.take()?);
    let record = match kind {
        KIND_BID => {
            let auction_id = fields.u64()?;
            let amount = fields.u64()?;
            let max = Some(fields.u64()?).filter(|&max| max != 0);
            let queued_at_us = fields.u64()?;
            Record::Bid(QueuedBid {
                bid_id,
                auction_id,
                amount,
                max,
                queued_at_us,
                tag: fields.tag()?,
            })
        }
        KIND_OUTCOME => {
            let _auction_id = fields.u64()?;
            let [code] = fields.take()?;
            let (seq, price, min_next) = (fields.u64()?, fields.u64()?, fields.u64()?);
            let outcome =
                Outcome::from_code(code, seq, price, min_next).ok_or("unknown outcome code")?;
            Record::Outcome {
                bid_id,
                outcome,
                tag: fields.tag()?,
            }
        }
        _ => return Err("unknown record kind"),
    };
    if fields.0.is_empty() {
        Ok(record)
    } else {
        Err("bytes after the record's fields")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(n: u64) -> QueuedBid {
        QueuedBid {
            bid_id: u128::from(n) << 64 | 0xabc,
            auction_id: 7,
            amount: 100 + n,
            max: n.is_multiple_of(2).then_some(1_000),
            queued_at_us: 1_764_237_600_000_000 + n,
            tag: format!("client-{n}"),
        }
    }

    fn open(dir: &Path) -> Queue {
        Queue::open(dir, 100, 1 << 20).unwrap()
    }

    fn pending(queue: &Queue) -> Vec<QueuedBid> {
        (0..queue.len())
            .map(|n| queue.nth(n).unwrap().unwrap())
            .collect()
    }

    #[test]
    fn queued_bids_and_outcomes_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = open(dir.path());
        for n in 1..=5 {
            assert_eq!(queue.push(bid(n)).unwrap(), (n - 1) as usize);
        }
        queue
            .finish(bid(1).bid_id, Outcome::Accepted { seq: 2, price: 101 })
            .unwrap();
        queue
            .finish(bid(2).bid_id, Outcome::TooLow { min_next: 150 })
            .unwrap();
        drop(queue);
        let queue = open(dir.path());
        assert_eq!(pending(&queue), vec![bid(3), bid(4), bid(5)]);
        assert_eq!(
            queue.status(bid(1).bid_id),
            Some(Status::Done {
                outcome: Outcome::Accepted { seq: 2, price: 101 },
                tag: "client-1".into()
            })
        );
        assert_eq!(
            queue.status(bid(4).bid_id),
            Some(Status::Queued {
                position: 1,
                tag: "client-4".into()
            })
        );
        assert_eq!(queue.status(99), None);
    }

    #[test]
    fn a_full_queue_refuses_new_bids_and_keeps_every_queued_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut by_count = Queue::open(dir.path(), 3, 1 << 20).unwrap();
        for n in 1..=3 {
            by_count.push(bid(n)).unwrap();
        }
        let refused = by_count.push(bid(4)).unwrap_err();
        assert!(
            matches!(
                refused,
                PushError::Full {
                    bids: 3,
                    bids_max: 3,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("the queue is full"),
            "{refused}"
        );
        assert_eq!(pending(&by_count), vec![bid(1), bid(2), bid(3)]);
        let record_bytes = encode_bid(&bid(1)).len() as u64;
        let dir = tempfile::tempdir().unwrap();
        let mut by_bytes = Queue::open(dir.path(), 100, 2 * record_bytes + 1).unwrap();
        by_bytes.push(bid(1)).unwrap();
        by_bytes.push(bid(3)).unwrap();
        assert!(matches!(
            by_bytes.push(bid(5)),
            Err(PushError::Full { bids: 2, .. })
        ));
        // Room again once the front bid is done.
        by_bytes.finish(bid(1).bid_id, Outcome::Closed).unwrap();
        by_bytes.push(bid(5)).unwrap();
        assert_eq!(pending(&by_bytes), vec![bid(3), bid(5)]);
    }

    #[test]
    fn a_known_bid_id_is_not_queued_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = open(dir.path());
        queue.push(bid(1)).unwrap();
        assert!(matches!(
            queue.push(bid(1)),
            Err(PushError::Known(Status::Queued { position: 0, .. }))
        ));
        queue.finish(bid(1).bid_id, Outcome::NotOpen).unwrap();
        assert!(matches!(
            queue.push(bid(1)),
            Err(PushError::Known(Status::Done {
                outcome: Outcome::NotOpen,
                ..
            }))
        ));
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn every_cut_of_the_last_record_is_truncated_and_never_misread() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = open(dir.path());
        queue.push(bid(1)).unwrap();
        queue.push(bid(2)).unwrap();
        drop(queue);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        let last = encode_bid(&bid(3));
        // A crash anywhere inside the third record's write: every prefix of it.
        for cut in 1..last.len() {
            let mut torn = good.clone();
            torn.extend_from_slice(&last[..cut]);
            std::fs::write(&path, &torn).unwrap();
            let mut queue = open(dir.path());
            assert_eq!(pending(&queue), vec![bid(1), bid(2)], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good.len() as u64);
            // Appending after the truncation gives a clean file.
            queue.push(bid(3)).unwrap();
            drop(queue);
            assert_eq!(pending(&open(dir.path())), vec![bid(1), bid(2), bid(3)]);
            std::fs::write(&path, &good).unwrap();
        }
        // A whole last record with a flipped bit, and a zero-filled tail.
        for tail in [flip(&last, last.len() - 1), vec![0; 300]] {
            let mut torn = good.clone();
            torn.extend_from_slice(&tail);
            std::fs::write(&path, &torn).unwrap();
            assert_eq!(pending(&open(dir.path())), vec![bid(1), bid(2)]);
        }
    }

    fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        bytes[at] ^= 0x10;
        bytes
    }

    #[test]
    fn a_damaged_record_before_others_is_corruption_named_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = open(dir.path());
        for n in 1..=3 {
            queue.push(bid(n)).unwrap();
        }
        drop(queue);
        let path = dir.path().join(FILE_NAME);
        let record = encode_bid(&bid(1)).len();
        let damaged = flip(&std::fs::read(&path).unwrap(), record + 20);
        std::fs::write(&path, &damaged).unwrap();
        let error = Queue::open(dir.path(), 100, 1 << 20).unwrap_err();
        assert!(
            matches!(&error, OpenError::Corrupt { offset, why: "checksum mismatch", .. } if *offset == record as u64),
            "{error}"
        );
        assert!(
            error.to_string().contains(&format!("offset {record}")),
            "{error}"
        );
        // Nothing was truncated: the evidence stays.
        assert_eq!(std::fs::read(&path).unwrap(), damaged);
    }

    #[test]
    fn compaction_shrinks_the_file_and_keeps_waiting_bids_and_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = Queue::open(dir.path(), 1_000, 1 << 30).unwrap();
        queue.compact_bytes = 4_096;
        queue.outcomes_kept = 10;
        let record = encode_bid(&bid(1)).len() as u64;
        // Four times the compaction threshold written, in bids and their outcomes.
        let rounds = 4 * queue.compact_bytes / (2 * record);
        for n in 1..=rounds {
            queue.push(bid(n)).unwrap();
            queue
                .finish(bid(n).bid_id, Outcome::Accepted { seq: n, price: n })
                .unwrap();
        }
        queue.push(bid(u64::MAX >> 1)).unwrap();
        let size = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert!(size <= 4_096 + 2 * record, "compacted to {size} bytes");
        drop(queue);
        let queue = open(dir.path());
        assert_eq!(pending(&queue), vec![bid(u64::MAX >> 1)]);
        assert_eq!(
            queue.status(bid(rounds).bid_id),
            Some(Status::Done {
                outcome: Outcome::Accepted {
                    seq: rounds,
                    price: rounds
                },
                tag: format!("client-{rounds}")
            })
        );
    }
}
