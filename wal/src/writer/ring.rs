//! The pending queue: a ring of record slots that appending threads fill without a lock,
//! and the one writer thread takes in LSN order (issue 20 item 1: before it, every append of
//! every auction went through one mutex). The file log's writer takes it to write and sync;
//! the Kafka log's sender thread takes it to produce (issue 20 item 3).
//!
//! # Protocol
//!
//! - `reserve` holds the next LSN to assign, with the log's status in its top two bits. An
//!   append checks the bounds and claims `n` contiguous LSNs with one compare-and-swap on it;
//!   a status bit makes every later claim fail, so once the log is closed the last LSN is
//!   final. Claiming is the only step appenders order among themselves: LSN order is still
//!   the order of the claims, and a caller that claims under its own lock (the engine under
//!   an auction's lock) gets its records in that lock's order.
//! - The claimer then copies each payload into the slot `lsn & mask` (its buffer is reused, so
//!   there is no allocation once warm) and publishes it by storing `lsn` into the slot's
//!   stamp (Release). Encoding and copying run outside any critical section.
//! - The writer takes the ready prefix `taken..`: each slot whose stamp equals its LSN, in
//!   order, copied into its batch; then it advances `taken` (Release). A slot is reused only
//!   for `lsn + capacity`, which no append can claim before `taken` has passed `lsn`: the
//!   bound check reads `taken` (Acquire), so the claimer's writes follow the writer's reads.
//! - Bounds: at most `records_max` records between `taken` and `reserve` (a larger batch is
//!   admitted into an empty queue, up to the ring's capacity); payload bytes are counted in
//!   `bytes` before the claim and given back on a refusal, so the byte bound holds too
//!   (momentarily counting a refused batch may refuse another append: a back-pressure answer
//!   on a queue that is nearly full, never a lost record).
//! - Waking the writer: it publishes its state (`IDLE`, `GATHERING`) and re-checks the ring
//!   before parking; an appender publishes its stamp and then reads that state. Both sides
//!   put a `SeqCst` fence between their store and their load, so one of them sees the other:
//!   no lost wake-up, and no system call while the writer is busy.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use std::thread::Thread;
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::Lsn;
use crate::durability::LogStatus;
use crate::error::AppendError;

/// The status bits of `reserve`.
const STATUS_SHIFT: u32 = 62;
/// The LSN bits of `reserve`.
const LSN_MASK: u64 = (1 << STATUS_SHIFT) - 1;
/// The ring holds at least this many slots, so a decision's batch always fits.
const SLOTS_MIN: usize = 64;
/// A slot's buffer above this capacity is dropped once taken (a huge record must not pin
/// its memory in the ring).
const SLOT_BYTES_KEEP_MAX: usize = 512;

/// Checks of a claimed slot that is not yet published before the writer yields its core.
const PUBLISH_SPIN_ROUNDS: u32 = 64;
/// Checks of such a slot in all (the last ones after a yield each) before the writer
/// writes what it has.
const PUBLISH_WAIT_ROUNDS: u32 = PUBLISH_SPIN_ROUNDS + 8;

/// The writer is busy (appenders need not wake it).
const BUSY: u8 = 0;
/// The writer sleeps until a record is ready.
const IDLE: u8 = 1;
/// The writer waits for a full batch.
const GATHERING: u8 = 2;

/// Why an append was refused before it claimed LSNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The queue is full (records or bytes).
    Full,
    /// The log is closed or failed.
    Stopped(AppendError),
}

struct Slot {
    /// The LSN whose payload `payload` holds, once published.
    stamp: AtomicU64,
    payload: UnsafeCell<Vec<u8>>,
}

// SAFETY: `payload` is written only by the appender that claimed the slot's LSN, before it
// publishes the stamp (Release), and read only by the writer after it sees that stamp
// (Acquire) and before it advances `taken` (Release), which the next claimer of the slot
// reads (Acquire) before writing. So accesses never overlap (see the module doc).
unsafe impl Sync for Slot {}

/// The ring's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Records claimed and not taken, at most (a larger batch is admitted into an empty ring).
    pub(crate) records_max: usize,
    /// Bytes claimed and not taken, at most.
    pub(crate) bytes_max: usize,
    /// A gathering writer is woken once this many records are queued...
    pub(crate) batch_records_max: usize,
    /// ... or this many bytes.
    pub(crate) batch_bytes_max: usize,
}

/// The pending queue of a log (see the module doc).
pub(crate) struct Ring {
    reserve: CachePadded<AtomicU64>,
    taken: CachePadded<AtomicU64>,
    bytes: CachePadded<AtomicUsize>,
    writer_state: AtomicU8,
    writer: OnceLock<Thread>,
    slots: Box<[Slot]>,
    mask: u64,
    records_max: u64,
    bytes_max: usize,
    batch_records_max: u64,
    batch_bytes_max: usize,
}

impl Ring {
    /// An empty open ring whose first append gets `next_lsn`.
    pub(crate) fn new(next_lsn: Lsn, bounds: Bounds) -> Self {
        let capacity = bounds.records_max.max(SLOTS_MIN).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| Slot {
                stamp: AtomicU64::new(0),
                payload: UnsafeCell::new(Vec::new()),
            })
            .collect();
        Self {
            reserve: CachePadded::new(AtomicU64::new(next_lsn)),
            taken: CachePadded::new(AtomicU64::new(next_lsn)),
            bytes: CachePadded::new(AtomicUsize::new(0)),
            writer_state: AtomicU8::new(BUSY),
            writer: OnceLock::new(),
            slots,
            mask: capacity as u64 - 1,
            records_max: bounds.records_max as u64,
            bytes_max: bounds.bytes_max,
            batch_records_max: bounds.batch_records_max as u64,
            batch_bytes_max: bounds.batch_bytes_max,
        }
    }

    /// The writer thread, to unpark (set once, when it starts).
    pub(crate) fn set_writer(&self, thread: Thread) {
        let _ = self.writer.set(thread);
    }

    /// Makes the next claim get `next_lsn`; only before the first append (a Kafka log resumed
    /// after its recovery reader).
    #[cfg(feature = "kafka")]
    pub(crate) fn restart_at(&self, next_lsn: Lsn) {
        let (_, next) = self.load_reserve();
        // Ordering: Relaxed; only the writer stores `taken`, and it takes nothing before the
        // first append.
        assert_eq!(
            next,
            self.taken.load(Ordering::Relaxed),
            "Ring::restart_at with records queued is a bug"
        );
        // Ordering: Release; appenders read both with Acquire.
        self.taken.store(next_lsn, Ordering::Release);
        let _ = self
            .reserve
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                Some((word & !LSN_MASK) | next_lsn)
            });
    }

    /// The status and the next LSN.
    fn load_reserve(&self) -> (LogStatus, Lsn) {
        // Ordering: Acquire; pairs with the Release of `set_status` and the claims.
        let word = self.reserve.load(Ordering::Acquire);
        (status_of(word), word & LSN_MASK)
    }

    /// The log's status.
    pub(crate) fn status(&self) -> LogStatus {
        self.load_reserve().0
    }

    /// The last LSN claimed so far.
    pub(crate) fn last_claimed(&self) -> Lsn {
        self.load_reserve().1 - 1
    }

    /// Records and payload bytes claimed and not yet taken by the writer.
    pub(crate) fn queued(&self) -> (u64, u64) {
        let next = self.load_reserve().1;
        // Ordering: Relaxed; statistics.
        let taken = self.taken.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        (next.saturating_sub(taken), bytes as u64)
    }

    /// Sets the status (a failure replaces a close); wakes the writer.
    pub(crate) fn set_status(&self, status: LogStatus) {
        let bits = (status as u64) << STATUS_SHIFT;
        // Ordering: AcqRel; a claim that reads the new word sees the status.
        let _ = self
            .reserve
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let current = status_of(word);
                let replace = current == LogStatus::Open
                    || (current == LogStatus::Closed && status == LogStatus::Failed);
                replace.then_some((word & LSN_MASK) | bits)
            });
        self.unpark_writer();
    }

    /// Claims LSNs for `payloads` and publishes them, each after `prefix` in its slot
    /// (`batch_bytes` in all, prefixes included; each payload ≤ the payload bound); returns
    /// the last LSN. All or none.
    pub(crate) fn append(
        &self,
        prefix: &[u8],
        payloads: &[impl AsRef<[u8]>],
        batch_bytes: usize,
    ) -> Result<Lsn, Refusal> {
        let n = payloads.len() as u64;
        if n > self.mask + 1 {
            return Err(Refusal::Stopped(AppendError::TooLarge { len: batch_bytes }));
        }
        // Ordering: AcqRel; the count is a bound, read again by the writer after its take.
        let bytes_after = self.bytes.fetch_add(batch_bytes, Ordering::AcqRel) + batch_bytes;
        let first = match self.claim(n, bytes_after) {
            Ok(first) => first,
            Err(refusal) => {
                // Ordering: AcqRel; see above.
                self.bytes.fetch_sub(batch_bytes, Ordering::AcqRel);
                return Err(refusal);
            }
        };
        for (lsn, payload) in (first..).zip(payloads) {
            let slot = &self.slots[(lsn & self.mask) as usize];
            // SAFETY: this append claimed `lsn` alone, and the slot's previous LSN
            // (`lsn - capacity`) was taken: `claim` saw `taken` past it (see `Slot`).
            let buffer = unsafe { &mut *slot.payload.get() };
            buffer.clear();
            buffer.extend_from_slice(prefix);
            buffer.extend_from_slice(payload.as_ref());
            // Ordering: Release publishes the payload to the writer's Acquire load.
            slot.stamp.store(lsn, Ordering::Release);
        }
        let last = first + n - 1;
        self.wake_writer(last);
        Ok(last)
    }

    /// Claims `n` contiguous LSNs if the log is open and the bounds allow (`bytes_after`:
    /// the byte count with this batch); returns the first.
    fn claim(&self, n: u64, bytes_after: usize) -> Result<Lsn, Refusal> {
        // Ordering: Acquire; see `load_reserve`.
        let mut word = self.reserve.load(Ordering::Acquire);
        loop {
            status_of(word).check_open().map_err(Refusal::Stopped)?;
            let next = word & LSN_MASK;
            // Ordering: Acquire; pairs with the writer's Release after it took the slots.
            let taken = self.taken.load(Ordering::Acquire);
            // A stale `word` may be behind `taken`: the exchange below then fails anyway.
            let queued = next.saturating_sub(taken);
            let full =
                queued > 0 && (queued + n > self.records_max || bytes_after > self.bytes_max);
            if full || queued + n > self.mask + 1 {
                return Err(Refusal::Full);
            }
            // Ordering: AcqRel on success (claims are ordered), Acquire on failure (retry
            // with the current word).
            match self.reserve.compare_exchange_weak(
                word,
                word + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(next),
                Err(current) => word = current,
            }
        }
    }

    /// After publishing up to `last`: wakes the writer if it sleeps on an empty ring, or
    /// gathers and the batch is now full.
    fn wake_writer(&self, last: Lsn) {
        // Ordering: SeqCst fence between the stamp store and the state load (see the module
        // doc: the writer has the mirror fence).
        fence(Ordering::SeqCst);
        // Ordering: SeqCst; the writer registered its thread before storing a waiting state.
        let wake = match self.writer_state.load(Ordering::SeqCst) {
            IDLE => true,
            GATHERING => self.batch_full(last + 1),
            _ => false,
        };
        if wake {
            self.unpark_writer();
        }
    }

    fn unpark_writer(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    /// Whether the records before `next` that the writer has not taken fill a batch.
    fn batch_full(&self, next: Lsn) -> bool {
        // Ordering: Relaxed; a heuristic, re-checked by the writer.
        let taken = self.taken.load(Ordering::Relaxed);
        next.saturating_sub(taken) >= self.batch_records_max
            || self.bytes.load(Ordering::Relaxed) >= self.batch_bytes_max
    }

    /// Whether the next record for the writer is published.
    fn front_ready(&self) -> bool {
        // Ordering: Relaxed; only the writer stores `taken`.
        let taken = self.taken.load(Ordering::Relaxed);
        // Ordering: Acquire; pairs with the appender's Release of the stamp.
        self.slots[(taken & self.mask) as usize]
            .stamp
            .load(Ordering::Acquire)
            == taken
    }

    /// Writer side: parks in `state` unless `ready` holds once the state is published.
    fn park_unless(&self, state: u8, deadline: Option<Instant>, ready: impl Fn() -> bool) {
        // Ordering: SeqCst; see `wake_writer`.
        self.writer_state.store(state, Ordering::SeqCst);
        // Ordering: SeqCst; the mirror of the fence in `wake_writer`.
        fence(Ordering::SeqCst);
        if !ready() {
            match deadline {
                Some(deadline) => {
                    std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
                }
                None => std::thread::park(),
            }
        }
        // Ordering: Relaxed; a stale waiting state only costs an appender an unpark.
        self.writer_state.store(BUSY, Ordering::Relaxed);
    }

    /// Writer side: waits until a record is ready; `false` once the log stopped and (if
    /// closed) everything claimed was taken.
    pub(crate) fn wait_ready(&self) -> bool {
        loop {
            if self.front_ready() {
                return true;
            }
            let (status, next) = self.load_reserve();
            // Ordering: Relaxed; only the writer stores `taken`.
            let drained = self.taken.load(Ordering::Relaxed) == next;
            if status == LogStatus::Failed || (status == LogStatus::Closed && drained) {
                return false;
            }
            // A claimed record not yet published: its appender wakes us after publishing.
            self.park_unless(IDLE, None, || {
                self.front_ready() || self.status() != LogStatus::Open
            });
        }
    }

    /// Writer side: waits until a batch is full, the log stops or `deadline` passes.
    pub(crate) fn gather(&self, deadline: Instant) {
        let full = || self.batch_full(self.load_reserve().1);
        while self.status() == LogStatus::Open && !full() && Instant::now() < deadline {
            self.park_unless(GATHERING, Some(deadline), || {
                full() || self.status() != LogStatus::Open
            });
        }
    }

    /// Whether the slot of `lsn` is published, waiting a little if it was claimed before
    /// `claimed` (its appender is between its claim and its stamp: a few copies away).
    fn published(&self, slot: &Slot, lsn: Lsn, claimed: Lsn) -> bool {
        for round in 0..PUBLISH_WAIT_ROUNDS {
            // Ordering: Acquire; pairs with the appender's Release of the stamp.
            if slot.stamp.load(Ordering::Acquire) == lsn {
                return true;
            }
            if lsn >= claimed {
                return false;
            }
            if round < PUBLISH_SPIN_ROUNDS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        false
    }

    /// Writer side: hands the published records to `each` (LSN, slot contents) in LSN order
    /// and frees their slots; returns the first LSN taken. Records claimed before the call
    /// are waited for briefly, so that an appender in the middle of its copy does not cut the
    /// batch (and cost a sync more).
    pub(crate) fn take(&self, mut each: impl FnMut(Lsn, &[u8])) -> Lsn {
        // Ordering: Relaxed; only the writer stores `taken`.
        let first = self.taken.load(Ordering::Relaxed);
        let claimed = self.load_reserve().1;
        let mut lsn = first;
        let mut bytes = 0;
        loop {
            let slot = &self.slots[(lsn & self.mask) as usize];
            if !self.published(slot, lsn, claimed) {
                break;
            }
            // SAFETY: the stamp says the payload of `lsn` is published, and no appender
            // claims this slot again before `taken` passes `lsn` (see `Slot`).
            let buffer = unsafe { &mut *slot.payload.get() };
            bytes += buffer.len();
            each(lsn, buffer);
            if buffer.capacity() > SLOT_BYTES_KEEP_MAX {
                *buffer = Vec::new();
            }
            lsn += 1;
        }
        // Ordering: Release; the slots' next claimers read it (Acquire) before writing.
        self.taken.store(lsn, Ordering::Release);
        // Ordering: AcqRel; see `append`.
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        first
    }
}

fn status_of(word: u64) -> LogStatus {
    match word >> STATUS_SHIFT {
        0 => LogStatus::Open,
        1 => LogStatus::Closed,
        _ => LogStatus::Failed,
    }
}
