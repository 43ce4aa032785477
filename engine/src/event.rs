//! Events: every state change of an auction, in the form the WAL records and replays and
//! the streams publish, and the [`EventSink`] the engine hands them to.
//!
//! An event carries the full input of the decision that made it (the bid and the `now` it
//! was decided at), so replay re-runs the same code path as live traffic and checks that it
//! produces the very same events (see [`crate::replay`]).

use std::sync::Arc;

use crate::types::{AuctionId, AuctionSpec, Bid, BidderId, Price, Settlement, UnixMicros};

/// One state change of one auction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Event {
    /// The auction that changed.
    pub auction: AuctionId,
    /// Per-auction sequence number: every state change takes the next one, starting at 1
    /// with the creation.
    pub seq: u64,
    /// The `now` the change was decided at.
    pub at: UnixMicros,
    /// What changed.
    pub kind: EventKind,
}

/// What changed. *Commands* (`Created`, `BidAccepted`, `Closed` by end time or cancel,
/// `Pruned`, `Forgotten`) are re-executed on replay; the other variants are *derived*: replay expects
/// the command before them to produce them again.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EventKind {
    /// The auction was created with these rules.
    Created(Arc<AuctionSpec>),
    /// A bid was accepted; price, leader and end after it.
    BidAccepted {
        /// The bid as decided (sealed kinds: its amount is secret until settlement).
        bid: Bid,
        /// Visible price after the bid (sealed kinds: the bid's amount).
        price: Price,
        /// Leader after the bid (sealed kinds: `None`).
        leader: Option<BidderId>,
        /// End after the bid.
        ends_at: UnixMicros,
    },
    /// Soft close moved the end (derived from the bid just before).
    Extended {
        /// The new end.
        ends_at: UnixMicros,
        /// How many extensions so far, this one included.
        extensions: u32,
    },
    /// The auction stopped taking bids.
    Closed {
        /// Why.
        reason: CloseReason,
    },
    /// Winner and clearing price (always right after `Closed`, derived from it).
    Settled(Settlement),
    /// The settled auction was removed from memory; only its final result
    /// ([`crate::PrunedAuction`]) is kept. The auction's last event, unless a `Forgotten`
    /// follows.
    Pruned,
    /// The pruned auction's result was dropped too: the engine no longer knows the auction.
    /// Its last event.
    Forgotten,
}

impl EventKind {
    /// Whether replay re-executes this event (a command) or expects it to be produced by
    /// the command before it (derived).
    pub fn is_command(&self) -> bool {
        match self {
            EventKind::Created(_)
            | EventKind::BidAccepted { .. }
            | EventKind::Pruned
            | EventKind::Forgotten => true,
            EventKind::Closed { reason } => reason.is_command(),
            EventKind::Extended { .. } | EventKind::Settled(_) => false,
        }
    }
}

/// Why an auction closed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CloseReason {
    /// The (possibly extended) end time passed; driven by the timer.
    EndReached,
    /// The operator cancelled it; no winner.
    Cancelled,
    /// A bid met the buy-now price (derived from that bid).
    BuyNow,
    /// A Dutch auction took its first bid at or above the clock (derived from that bid).
    Sold,
}

impl CloseReason {
    /// Closes by end time and cancellation are commands; the others follow from a bid.
    pub fn is_command(self) -> bool {
        matches!(self, CloseReason::EndReached | CloseReason::Cancelled)
    }
}

/// Most events one decision produces: a bid's acceptance, closure and settlement (buy-now,
/// Dutch), or its acceptance and extension.
pub const DECISION_EVENTS_MAX: usize = 3;

/// Where a sink put a decision's events. For a log, the position (LSN) of the decision's
/// last event: the caller awaits it for the durable acknowledgement. Sinks without
/// positions return [`Receipt::NONE`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Receipt(pub u64);

impl Receipt {
    /// No position (the sink keeps no log).
    pub const NONE: Receipt = Receipt(0);
}

/// The sink refused events: its bounded queue is full.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Backpressure {
    /// Suggested wait before the caller retries.
    pub retry_after_us: u64,
}

/// Where the engine hands the events of each decision (the WAL queue, a test recorder, a
/// replay checker).
///
/// `publish` is called while the auction's lock is held, so the events of one auction
/// arrive in sequence order, and the events of one decision arrive together in one call.
/// It is called *before* the change is applied: if it returns [`Backpressure`], nothing
/// changed and the caller is told `Overloaded`. Keep it short and non-blocking.
pub trait EventSink {
    /// Takes all of `events` or none of them.
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure>;
}

impl<S: EventSink + ?Sized> EventSink for &S {
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure> {
        (**self).publish(events)
    }
}

/// A sink that drops everything: for callers that keep no log (benches of the decision
/// alone, read-only tools). Never refuses.
#[derive(Clone, Copy, Default, Debug)]
pub struct DiscardSink;

impl EventSink for DiscardSink {
    fn publish(&self, _events: &[Event]) -> Result<Receipt, Backpressure> {
        Ok(Receipt::NONE)
    }
}

/// Queues a [`BoundedSink`] spreads auctions over (at most), so that threads deciding for
/// different auctions rarely contend on one queue's head and tail.
const SINK_QUEUES_MAX: usize = 16;

/// One queue of a [`BoundedSink`]: events, and how many slots publishers have reserved.
struct SinkQueue {
    events: crossbeam_queue::ArrayQueue<Event>,
    /// Events pushed or about to be pushed and not yet popped; never above capacity, so a
    /// publisher that reserved its slots can always push.
    reserved: std::sync::atomic::AtomicUsize,
}

/// A bounded in-memory sink: lock-free array queues of events with a fixed total capacity,
/// allocated up front (publishing never allocates). Auctions are spread over the queues by
/// id, so one auction's events stay in order; across auctions [`BoundedSink::pop`] gives
/// no order. A decision's events are admitted all or none: when its queue lacks room for
/// all of them, it refuses with [`Backpressure`]. This is the shape of the WAL's queue,
/// usable in process.
pub struct BoundedSink {
    queues: Box<[SinkQueue]>,
    /// Where the next `pop` starts looking.
    cursor: std::sync::atomic::AtomicUsize,
    retry_after_us: u64,
}

impl BoundedSink {
    /// A sink holding at most about `events_max` events (at least [`DECISION_EVENTS_MAX`]
    /// per queue); refusals suggest `retry_after_us`.
    pub fn new(events_max: usize, retry_after_us: u64) -> BoundedSink {
        let queues = (events_max / DECISION_EVENTS_MAX).clamp(1, SINK_QUEUES_MAX);
        let capacity = events_max.div_ceil(queues).max(DECISION_EVENTS_MAX);
        BoundedSink {
            queues: (0..queues)
                .map(|_| SinkQueue {
                    events: crossbeam_queue::ArrayQueue::new(capacity),
                    reserved: std::sync::atomic::AtomicUsize::new(0),
                })
                .collect(),
            cursor: std::sync::atomic::AtomicUsize::new(0),
            retry_after_us,
        }
    }

    /// Takes an event, if any: the oldest of some auction's queue.
    pub fn pop(&self) -> Option<Event> {
        // Ordering: Relaxed; the cursor only spreads the consumers' starting points.
        let start = self
            .cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (0..self.queues.len()).find_map(|i| {
            let queue = &self.queues[(start + i) % self.queues.len()];
            let event = queue.events.pop()?;
            // Ordering: Release; a publisher that reads the lower count (Acquire) finds the
            // slot free. The count never drops below the queue's length.
            queue
                .reserved
                .fetch_sub(1, std::sync::atomic::Ordering::Release);
            Some(event)
        })
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.queues.iter().map(|q| q.events.len()).sum()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.events.is_empty())
    }
}

impl EventSink for BoundedSink {
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure> {
        let Some(first) = events.first() else {
            return Ok(Receipt::NONE);
        };
        // Cast: the modulo keeps the index in range.
        let queue = &self.queues[(first.auction.0 % self.queues.len() as u64) as usize];
        let capacity = queue.events.capacity();
        // Ordering: Acquire pairs with the consumer's Release; AcqRel so that competing
        // publishers see each other's reservations.
        let before = queue
            .reserved
            .fetch_add(events.len(), std::sync::atomic::Ordering::AcqRel);
        if before + events.len() > capacity {
            // Ordering: Release; returns the reservation.
            queue
                .reserved
                .fetch_sub(events.len(), std::sync::atomic::Ordering::Release);
            return Err(Backpressure {
                retry_after_us: self.retry_after_us,
            });
        }
        for event in events {
            // Invariant: the reservation guarantees a free slot.
            if queue.events.push(event.clone()).is_err() {
                unreachable!("a reserved slot of the bounded sink was taken");
            }
        }
        Ok(Receipt::NONE)
    }
}

/// A sink that keeps every event in order, unbounded: for tests and replay tooling only.
#[derive(Default, Debug)]
pub struct RecordingSink {
    /// The events not yet taken, and how many were ever recorded.
    events: std::sync::Mutex<(Vec<Event>, u64)>,
}

impl RecordingSink {
    /// Takes the recorded events out, leaving the sink empty.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.events.lock().expect("recording sink lock poisoned").0)
    }
}

impl EventSink for RecordingSink {
    /// The receipt is the count of events ever recorded (a log position).
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure> {
        let mut recorded = self.events.lock().expect("recording sink lock poisoned");
        recorded.0.extend_from_slice(events);
        recorded.1 += events.len() as u64;
        Ok(Receipt(recorded.1))
    }
}
