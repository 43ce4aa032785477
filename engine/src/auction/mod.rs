//! One auction: the lock-free price word, the seen-bid filter, the auction lock, and the
//! state changes made under it (accepted bids, extensions, close and settlement).
//!
//! The protocol (model-checked by `loom_tests`):
//! - **Price word** (`word`): the visible price in the low 62 bits, plus `HAS_BID` and
//!   `CLOSED`. It is written only while the auction lock is held, with a
//!   compare-and-swap from the value the lock holder last stored (so a second writer, a
//!   bug, is caught at once), and read without any lock by watchers and by the bid path.
//! - **Lock-free reject**: a bid below `min_next(word)`, or at a `CLOSED` word, is refused
//!   without the lock — unless the seen-bid filter says it may be a retry, which must get
//!   its original outcome instead.
//! - **Auction lock** (also the settlement lock): every state change — an accepted bid, an
//!   extension, the close and the settlement — happens under it, gets the next sequence
//!   number, and hands its events to the sink before it is applied. Close sets `CLOSED` in
//!   the word under the lock, so no bid is accepted after it and settlement happens once.
//!
//! Why accepted bids take the lock rather than a bare CAS: the decision depends on more
//! than one word holds (the leader and its hidden proxy maximum, soft-close state, the
//! idempotency memory), and the WAL needs one auction's events in sequence order with no
//! gap. See ARCHITECTURE.md, "The price word and the auction lock".
//!
//! Inside: `word` the price word; `recent` the idempotency memory; `rules` the rules of
//! every kind (the book, `decide`, extensions, settlement); `snapshot` the state as values
//! and back; `state_hash` the canonical state hash; `loom_tests` the model checks.

mod recent;
mod rules;
mod snapshot;
mod state_hash;
mod word;

#[cfg(all(test, loom))]
mod loom_tests;

use std::sync::Arc;

use arrayvec::ArrayVec;

pub(crate) use self::state_hash::hash_pruned;

use self::recent::{BidKey, Recent};
use self::rules::Book;
use self::word::{CLOSED, HAS_BID, PriceWord};
use crate::decision::{BidDecision, ClosedAuction};
use crate::event::{CloseReason, DECISION_EVENTS_MAX, Event, EventKind, EventSink, Receipt};
use crate::filter::SeenFilter;
use crate::snapshot::PrunedAuction;
use crate::sync::{AtomicU64, Mutex, MutexGuard, Ordering};
use crate::types::{
    Accepted, AuctionId, AuctionKind, AuctionSpec, Bid, BidOutcome, PRICE_MAX, Price, Rejection,
    Settlement, UnixMicros,
};
use crate::view::{AuctionView, Phase};

/// Per-auction limits, from the engine configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Accepted bid ids remembered per generation of the idempotency memory; a retry within
    /// this many accepted bids of the original always gets `Duplicate`.
    pub(crate) dedup_window_bids: usize,
    /// Most distinct bidders in one sealed auction.
    pub(crate) sealed_bidders_max: usize,
}

/// Everything guarded by the auction lock.
struct State {
    seq: u64,
    ends_at: UnixMicros,
    extensions: u32,
    bids_accepted: u64,
    book: Book,
    recent: Recent,
    /// Set once, together with `CLOSED` in the price word.
    settled: Option<(CloseReason, Settlement)>,
    /// When `settled` was set (zero before); not part of the state hash (see
    /// `AuctionState::settled_at`).
    settled_at: UnixMicros,
    /// Set once by `prune`; the auction takes no event after it.
    pruned: bool,
    /// The last value this lock holder stored in the price word.
    word: u64,
    /// When `seq` last moved (the decision's `now`); zero after a restore until the next
    /// change. Not part of the state hash: streams use it, replay needs it not.
    changed_at: UnixMicros,
}

/// Outcome of a close attempt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CloseAttempt {
    /// Closed and settled now; the sink's receipt for the events.
    Closed(Settlement, Receipt),
    /// Not due yet: the (possibly extended) end is later.
    NotDue(UnixMicros),
    /// Already closed and settled earlier.
    AlreadyClosed,
    /// The sink refused the events; nothing changed.
    Backpressure { retry_after_us: u64 },
}

/// Why an auction was not pruned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PruneRefusal {
    /// It has not settled.
    NotSettled,
    /// The sink refused the event; nothing changed.
    Backpressure { retry_after_us: u64 },
}

/// `repr(C)` keeps what the lock-free path reads — the price word, the end, and a copy of
/// the rules it needs — together at the front, in the auction's own memory.
#[repr(C)]
pub(crate) struct Auction {
    word: PriceWord,
    /// The current end (µs), for the lock-free `Closed` check; written under the lock.
    ends_at: AtomicU64,
    /// Copies of `spec`'s `starts_at`, `buy_now` and `kind` (the increment table inline).
    starts_at: UnixMicros,
    buy_now: Option<Price>,
    /// Its bidder summary sits in the first cache line with the word.
    seen: SeenFilter,
    kind: AuctionKind,
    state: Mutex<State>,
    spec: Arc<AuctionSpec>,
}

impl Auction {
    /// A new auction and its `Created` event (sequence 1).
    pub(crate) fn new(spec: Arc<AuctionSpec>, now: UnixMicros) -> (Auction, Event) {
        let rules = spec.rules();
        let book = Book::new(&rules.kind);
        let event = Event {
            auction: rules.id,
            seq: 1,
            at: now,
            kind: EventKind::Created(Arc::clone(&spec)),
        };
        let auction = Auction {
            starts_at: rules.starts_at,
            buy_now: rules.buy_now,
            kind: rules.kind.clone(),
            word: PriceWord::new(0),
            ends_at: AtomicU64::new(rules.ends_at.0),
            seen: SeenFilter::new(),
            state: Mutex::new(State {
                seq: 1,
                ends_at: rules.ends_at,
                extensions: 0,
                bids_accepted: 0,
                book,
                recent: Recent::new(),
                settled: None,
                settled_at: UnixMicros(0),
                pruned: false,
                word: 0,
                changed_at: now,
            }),
            spec,
        };
        (auction, event)
    }

    /// The sequence number of the latest state change.
    pub(crate) fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// The current end and whether the auction is closed.
    pub(crate) fn end(&self) -> (UnixMicros, bool) {
        let state = self.lock();
        (state.ends_at, state.settled.is_some())
    }

    pub(crate) fn spec(&self) -> &Arc<AuctionSpec> {
        &self.spec
    }

    pub(crate) fn id(&self) -> AuctionId {
        self.spec.id()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Invariant: nothing panics while holding the lock except a violated invariant
        // assertion, after which the state must not be used again.
        self.state
            .lock()
            .expect("auction lock poisoned: an invariant failed while it was held")
    }

    /// The visible price and whether the auction is closed, read without any lock.
    /// Sealed auctions show no price until settled.
    pub(crate) fn price(&self) -> (Option<Price>, bool) {
        word::decode(self.word.load())
    }

    /// Decides one bid. Too-low bids and bids on a closed auction are refused without the
    /// lock when the seen-bid filter proves they are not retries.
    ///
    /// Inlined into the engine's `place_bid`: the lock-free refusal is most decisions, and
    /// a call returning the decision through memory costs it about a fifth; the locked path
    /// stays a call.
    #[inline(always)]
    pub(crate) fn place_bid<S: EventSink + ?Sized>(
        &self,
        bid: &Bid,
        now: UnixMicros,
        sink: &S,
        limits: Limits,
    ) -> BidDecision {
        let key = BidKey::of(bid);
        let word = self.word.load();
        // The same checks, in the same order, as the locked path (docs/auction-rules.md).
        // The end: Acquire pairs with the Release store of an extension. A stale (earlier)
        // end only makes this bid linearise before the extension, where `Closed` is right.
        let fast = if word & CLOSED != 0 || past_end(now.0, self.ends_at.load(Ordering::Acquire)) {
            Some(Rejection::Closed)
        } else if now < self.starts_at {
            Some(Rejection::NotOpen)
        } else {
            let min_next = self.min_next(word, now);
            (bid.amount() < min_next).then_some(Rejection::TooLow { min_next })
        };
        if let Some(rejection) = fast
            && !self.seen.may_contain(key.filter_key())
        {
            return BidDecision::rejected(rejection);
        }
        let mut state = self.lock();
        self.place_bid_locked(&mut state, bid, key, now, sink, limits)
    }

    #[inline(never)]
    fn place_bid_locked<S: EventSink + ?Sized>(
        &self,
        state: &mut State,
        bid: &Bid,
        key: BidKey,
        now: UnixMicros,
        sink: &S,
        limits: Limits,
    ) -> BidDecision {
        if let Some(rejection) = self.locked_rejection(state, key, now) {
            return BidDecision::rejected(rejection);
        }
        let decision = match self.decide(state, bid, now, limits) {
            Ok(decision) => decision,
            Err(rejection) => return BidDecision::rejected(rejection),
        };
        let extension = if decision.close.is_none() {
            self.extension(state, now)
        } else {
            None
        };
        let accepted = Accepted {
            seq: state.seq + 1,
            price: decision.price,
            leader: decision.leader(bid, &state.book),
            ends_at: extension.map_or(state.ends_at, |(ends_at, _)| ends_at),
        };
        let close = decision.close(bid);
        // Filled in place: the events are large, and a returned array of them was copied.
        let mut events = ArrayVec::new();
        self.accepted_events(&mut events, bid, &accepted, extension, close, now);
        let receipt = match sink.publish(&events) {
            Ok(receipt) => receipt,
            Err(backpressure) => {
                return BidDecision::rejected(Rejection::Overloaded {
                    retry_after_us: backpressure.retry_after_us,
                });
            }
        };

        // Apply. From here on nothing may fail: the events are out.
        state.book.apply(decision.change, bid, state.seq);
        state.seq += events.len() as u64;
        state.changed_at = now;
        state.bids_accepted += 1;
        if let Some((ends_at, extensions)) = extension {
            assert!(
                ends_at > state.ends_at,
                "an extension must move the end later"
            );
            state.ends_at = ends_at;
            // Ordering: Release; see the lock-free `Closed` check in `place_bid`.
            self.ends_at.store(ends_at.0, Ordering::Release);
            state.extensions = extensions;
        }
        state
            .recent
            .insert(key, accepted, &self.seen, limits.dedup_window_bids);
        if let Some(close) = close {
            state.settled = Some(close);
            state.settled_at = now;
        }
        self.publish_word(state, decision.price, decision.close.is_some());
        BidDecision {
            outcome: BidOutcome::Accepted(accepted),
            receipt: Some(receipt),
            closed: close.map(|(_, settlement)| ClosedAuction {
                id: self.id(),
                settlement,
                receipt,
            }),
        }
    }

    /// What the locked path refuses before the rules: a retry (with its original's
    /// outcome), a closed auction, one not open yet.
    #[inline]
    fn locked_rejection(&self, state: &State, key: BidKey, now: UnixMicros) -> Option<Rejection> {
        // The filter holds every key of the memory: most fresh bids skip the lookup.
        if self.seen.may_contain(key.filter_key())
            && let Some(original) = state.recent.get(&key)
        {
            return Some(Rejection::Duplicate { original });
        }
        if state.settled.is_some() || past_end(now.0, state.ends_at.0) {
            return Some(Rejection::Closed);
        }
        (now < self.starts_at).then_some(Rejection::NotOpen)
    }

    /// Pushes the events of an accepted bid: `BidAccepted` at `accepted.seq`, then an
    /// `Extended` it earned, or the `Closed` and `Settled` of a bid that ends the auction.
    #[inline(always)]
    fn accepted_events(
        &self,
        events: &mut ArrayVec<Event, DECISION_EVENTS_MAX>,
        bid: &Bid,
        accepted: &Accepted,
        extension: Option<(UnixMicros, u32)>,
        close: Option<(CloseReason, Settlement)>,
        now: UnixMicros,
    ) {
        let id = self.id();
        let mut seq = accepted.seq - 1;
        let mut next = |kind| {
            seq += 1;
            Event {
                auction: id,
                seq,
                at: now,
                kind,
            }
        };
        events.push(next(EventKind::BidAccepted {
            bid: *bid,
            price: accepted.price,
            leader: accepted.leader,
            ends_at: accepted.ends_at,
        }));
        if let Some((ends_at, extensions)) = extension {
            events.push(next(EventKind::Extended {
                ends_at,
                extensions,
            }));
        }
        if let Some((reason, settlement)) = close {
            events.push(next(EventKind::Closed { reason }));
            events.push(next(EventKind::Settled(settlement)));
        }
    }

    /// Stores a new price word. Only ever called under the lock.
    fn publish_word(&self, state: &mut State, price: Price, closed: bool) {
        assert!(price <= PRICE_MAX, "a price overflowed the price word");
        let visible = match self.spec.rules().kind {
            // Sealed prices are secret until settlement: the word carries only `CLOSED`.
            AuctionKind::SealedFirstPrice { .. } | AuctionKind::SealedSecondPrice { .. } => 0,
            _ => price | HAS_BID,
        };
        let word = visible | if closed { CLOSED } else { 0 };
        assert!(
            state.word & CLOSED == 0,
            "the price word changed after close"
        );
        self.word.store_locked(state.word, word);
        state.word = word;
    }

    /// Prunes the settled auction at `now`: its `Pruned` event goes to `sink`, and its
    /// final result comes back. The caller removes the auction from the registry before
    /// anyone else can prune it (the shard's writer lock); an auction still open is refused.
    pub(crate) fn prune<S: EventSink + ?Sized>(
        &self,
        now: UnixMicros,
        sink: &S,
    ) -> Result<PrunedAuction, PruneRefusal> {
        let mut state = self.lock();
        assert!(!state.pruned, "an auction was pruned twice");
        let Some((reason, settlement)) = state.settled else {
            return Err(PruneRefusal::NotSettled);
        };
        let event = Event {
            auction: self.id(),
            seq: state.seq + 1,
            at: now,
            kind: EventKind::Pruned,
        };
        sink.publish(std::slice::from_ref(&event))
            .map_err(|bp| PruneRefusal::Backpressure {
                retry_after_us: bp.retry_after_us,
            })?;
        state.seq += 1;
        state.changed_at = now;
        state.pruned = true;
        Ok(PrunedAuction {
            id: self.id(),
            topic: self.spec.rules().topic.clone(),
            reason,
            settlement,
            seq: state.seq,
            settled_at: state.settled_at,
            pruned_at: now,
        })
    }

    /// When the auction settled, if it has.
    pub(crate) fn settled_at(&self) -> Option<UnixMicros> {
        let state = self.lock();
        state.settled.map(|_| state.settled_at)
    }

    /// Closes the auction if its end has passed at `now`.
    pub(crate) fn close_if_due<S: EventSink + ?Sized>(
        &self,
        now: UnixMicros,
        sink: &S,
    ) -> CloseAttempt {
        let mut state = self.lock();
        if state.settled.is_some() {
            return CloseAttempt::AlreadyClosed;
        }
        if now < state.ends_at {
            return CloseAttempt::NotDue(state.ends_at);
        }
        let settlement = self.settlement(&state);
        self.close_locked(&mut state, now, CloseReason::EndReached, settlement, sink)
    }

    /// Cancels the auction: it closes now with no winner.
    pub(crate) fn cancel<S: EventSink + ?Sized>(&self, now: UnixMicros, sink: &S) -> CloseAttempt {
        let mut state = self.lock();
        if state.settled.is_some() {
            return CloseAttempt::AlreadyClosed;
        }
        self.close_locked(
            &mut state,
            now,
            CloseReason::Cancelled,
            Settlement { winner: None },
            sink,
        )
    }

    fn close_locked<S: EventSink + ?Sized>(
        &self,
        state: &mut State,
        now: UnixMicros,
        reason: CloseReason,
        settlement: Settlement,
        sink: &S,
    ) -> CloseAttempt {
        let id = self.id();
        let events = [
            Event {
                auction: id,
                seq: state.seq + 1,
                at: now,
                kind: EventKind::Closed { reason },
            },
            Event {
                auction: id,
                seq: state.seq + 2,
                at: now,
                kind: EventKind::Settled(settlement),
            },
        ];
        let receipt = match sink.publish(&events) {
            Ok(receipt) => receipt,
            Err(backpressure) => {
                return CloseAttempt::Backpressure {
                    retry_after_us: backpressure.retry_after_us,
                };
            }
        };
        state.seq += 2;
        state.changed_at = now;
        state.settled = Some((reason, settlement));
        state.settled_at = now;
        let price = state.word & PRICE_MAX;
        let has_bid = state.word & HAS_BID;
        let word = price | has_bid | CLOSED;
        self.word.store_locked(state.word, word);
        state.word = word;
        CloseAttempt::Closed(settlement, receipt)
    }

    /// A consistent view at `now`.
    pub(crate) fn view(&self, now: UnixMicros) -> AuctionView {
        let state = self.lock();
        let rules = self.spec.rules();
        let phase = if state.settled.is_some() {
            Phase::Settled
        } else if now < rules.starts_at {
            Phase::Scheduled
        } else {
            Phase::Open
        };
        let (price, leader) = match &state.book {
            Book::English { price, lead } => (lead.map(|_| *price), lead.map(|l| l.bidder)),
            Book::Sealed { .. } => (
                state.settled.and_then(|(_, s)| s.winner).map(|w| w.price),
                None,
            ),
            Book::Dutch { sold: Some(w) } => (Some(w.price), Some(w.bidder)),
            Book::Dutch { sold: None } => (
                (state.settled.is_none()).then(|| self.dutch_clock(now.max(rules.starts_at))),
                None,
            ),
        };
        AuctionView {
            spec: Arc::clone(&self.spec),
            phase,
            seq: state.seq,
            price,
            leader,
            ends_at: state.ends_at,
            extensions: state.extensions,
            bids_accepted: state.bids_accepted,
            settlement: state.settled.map(|(_, s)| s),
            close_reason: state.settled.map(|(reason, _)| reason),
            changed_at: state.changed_at,
        }
    }
}

/// Whether a bid at `now` is at or past the end `end` (µs): the auction takes no more bids.
#[inline(always)]
fn past_end(now: u64, end: u64) -> bool {
    #[cfg(feature = "sim-bugs")]
    if crate::sim_bugs::on(&crate::sim_bugs::ACCEPT_AT_END) {
        return now > end;
    }
    now >= end
}
