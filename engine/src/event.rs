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

/// What changed. *Commands* (`Created`, `BidAccepted`, `Closed` by end time or cancel) are
/// re-executed on replay; the other variants are *derived*: replay expects the command
/// before them to produce them again.
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
}

impl EventKind {
    /// Whether replay re-executes this event (a command) or expects it to be produced by
    /// the command before it (derived).
    pub fn is_command(&self) -> bool {
        match self {
            EventKind::Created(_) | EventKind::BidAccepted { .. } => true,
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
    fn publish(&self, events: &[Event]) -> Result<(), Backpressure>;
}

impl<S: EventSink + ?Sized> EventSink for &S {
    fn publish(&self, events: &[Event]) -> Result<(), Backpressure> {
        (**self).publish(events)
    }
}

/// A sink that drops everything: for callers that keep no log (benches of the decision
/// alone, read-only tools). Never refuses.
#[derive(Clone, Copy, Default, Debug)]
pub struct DiscardSink;

impl EventSink for DiscardSink {
    fn publish(&self, _events: &[Event]) -> Result<(), Backpressure> {
        Ok(())
    }
}

/// A bounded in-memory sink: a lock-free array queue of event batches with a fixed
/// capacity. When full, it refuses with [`Backpressure`]. A consumer drains it with
/// [`BoundedSink::pop`]. This is the shape of the WAL's queue, usable in process.
pub struct BoundedSink {
    queue: crossbeam_queue::ArrayQueue<Box<[Event]>>,
    retry_after_us: u64,
}

impl BoundedSink {
    /// A sink holding at most `batches_max` decisions; refusals suggest `retry_after_us`.
    pub fn new(batches_max: usize, retry_after_us: u64) -> BoundedSink {
        BoundedSink {
            queue: crossbeam_queue::ArrayQueue::new(batches_max),
            retry_after_us,
        }
    }

    /// Takes the oldest batch, if any.
    pub fn pop(&self) -> Option<Box<[Event]>> {
        self.queue.pop()
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no batch waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl EventSink for BoundedSink {
    fn publish(&self, events: &[Event]) -> Result<(), Backpressure> {
        self.queue.push(events.into()).map_err(|_| Backpressure {
            retry_after_us: self.retry_after_us,
        })
    }
}

/// A sink that keeps every event in order, unbounded: for tests and replay tooling only.
#[derive(Default, Debug)]
pub struct RecordingSink {
    events: std::sync::Mutex<Vec<Event>>,
}

impl RecordingSink {
    /// Takes the recorded events out, leaving the sink empty.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().expect("recording sink lock poisoned"))
    }
}

impl EventSink for RecordingSink {
    fn publish(&self, events: &[Event]) -> Result<(), Backpressure> {
        self.events
            .lock()
            .expect("recording sink lock poisoned")
            .extend_from_slice(events);
        Ok(())
    }
}
