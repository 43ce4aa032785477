//! One auction: the lock-free price word, the seen-bid filter, the auction lock and the
//! rules of every kind.
//!
//! The protocol (model-checked by `loom_tests`):
//! - **Price word** (`AtomicU64`): the visible price in the low 62 bits, plus `HAS_BID`
//!   and `CLOSED`. It is written only while the auction lock is held, with a
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

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use arrayvec::ArrayVec;

use crate::event::{CloseReason, DECISION_EVENTS_MAX, Event, EventKind, EventSink, Receipt};
use crate::filter::{FilterKey, SeenFilter};
use crate::snapshot::{
    AuctionState, BookState, LeaderState, RecentBid, RestoreError, SealedBidState,
};
use crate::sync::{AtomicU64, Mutex, MutexGuard, Ordering};
use crate::types::{
    Accepted, AuctionId, AuctionKind, AuctionSpec, Bid, BidId, BidOutcome, BidderId, PRICE_MAX,
    Price, Rejection, Settlement, UnixMicros, Winner,
};
use crate::view::{AuctionView, Phase};

/// Flag in the price word: the auction is closed; no bid is accepted any more.
const CLOSED: u64 = 1 << 63;
/// Flag in the price word: at least one bid was accepted (English: the price is a bid).
const HAS_BID: u64 = 1 << 62;
const _: () = assert!(
    PRICE_MAX & (CLOSED | HAS_BID) == 0,
    "prices must not overlap flags"
);

/// Per-auction limits, from the engine configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Accepted bid ids remembered per generation of the idempotency memory; a retry within
    /// this many accepted bids of the original always gets `Duplicate`.
    pub(crate) dedup_window_bids: usize,
    /// Most distinct bidders in one sealed auction.
    pub(crate) sealed_bidders_max: usize,
}

/// Key of the idempotency memory: bid ids are scoped by bidder, so one bidder cannot learn
/// another's outcome by reusing its id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct BidKey {
    bidder: BidderId,
    id: BidId,
}

impl BidKey {
    fn of(bid: &Bid) -> BidKey {
        BidKey {
            bidder: bid.bidder(),
            id: bid.id(),
        }
    }

    /// The key as the seen-bid filter sees it: fixed (unkeyed, deterministic) hashes.
    /// Collisions only cost a trip to the locked path, so they need not resist crafted keys.
    fn filter_key(&self) -> FilterKey {
        let id = self.id.0;
        let bidder = self.bidder.fingerprint();
        // Cast: the low and high halves of the 128-bit id.
        FilterKey::new(mix64(id as u64 ^ mix64((id >> 64) as u64 ^ bidder)), bidder)
    }
}

/// SplitMix64's finaliser: a cheap, well-distributed 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The exact idempotency memory: the last `window` accepted bid keys with their outcomes,
/// evicted oldest first, one per insert (no rebuild, no latency spike). The seen-bid filter
/// rotates its two generations every `window` inserts, so it always holds a superset.
///
/// Entries live in a ring in acceptance order; a small index maps a keyed 64-bit
/// fingerprint of the key to the entry's position, so lookups and evictions touch a few
/// bytes per entry rather than whole entries. The full key is compared on a hit. Should two
/// keys in one window share a fingerprint (≈ 2⁻⁶⁴ per pair, and the key is per-process
/// random), the older one leaves the memory early.
struct Recent {
    /// Fingerprint → absolute position in `entries`.
    index: HashMap<u64, u64, BuildHasherDefault<PassThrough>>,
    /// `(fingerprint, key, outcome)`, oldest first; at most `window`.
    entries: VecDeque<(u64, BidKey, Accepted)>,
    /// Absolute position of `entries[0]`.
    first: u64,
    fingerprints: foldhash::fast::RandomState,
    /// The filter generation taking inserts.
    generation: usize,
    /// Inserts into `generation` so far.
    in_generation: usize,
}

/// A `Hasher` for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl Recent {
    fn new() -> Recent {
        Recent {
            index: HashMap::default(),
            entries: VecDeque::new(),
            first: 0,
            // Keyed per process: bidders choose their bid ids, and must not be able to
            // choose colliding fingerprints.
            fingerprints: foldhash::fast::RandomState::default(),
            generation: 0,
            in_generation: 0,
        }
    }

    fn get(&self, key: &BidKey) -> Option<Accepted> {
        let position = *self.index.get(&self.fingerprints.hash_one(key))?;
        // Cast: positions in the index are within the ring (evictions remove them).
        let (_, stored, accepted) = self.entries[(position - self.first) as usize];
        (stored == *key).then_some(accepted)
    }

    fn insert(&mut self, key: BidKey, accepted: Accepted, filter: &SeenFilter, window: usize) {
        if self.in_generation >= window {
            self.generation ^= 1;
            self.in_generation = 0;
            filter.clear(self.generation);
        }
        filter.insert(self.generation, key.filter_key());
        self.in_generation += 1;
        if self.entries.len() >= window {
            // Invariant: a full window has an oldest entry.
            let (fingerprint, _, _) = self
                .entries
                .pop_front()
                .expect("a full window is not empty");
            if self.index.get(&fingerprint) == Some(&self.first) {
                self.index.remove(&fingerprint);
            }
            self.first += 1;
        }
        let fingerprint = self.fingerprints.hash_one(key);
        let position = self.first + self.entries.len() as u64;
        self.entries.push_back((fingerprint, key, accepted));
        self.index.insert(fingerprint, position);
    }

    /// Entries, oldest first.
    fn iter(&self) -> impl Iterator<Item = &(u64, BidKey, Accepted)> {
        self.entries.iter()
    }
}

/// The leader of an English auction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Lead {
    bidder: BidderId,
    /// The bid id of the leader's latest accepted bid.
    bid: BidId,
    /// The leader's hidden proxy maximum (at least the price).
    max: Price,
}

/// A bidder's standing bid in a sealed auction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct SealedBid {
    bid: BidId,
    amount: Price,
    /// Sequence number of its acceptance: earlier wins ties.
    seq: u64,
}

/// Kind-specific state.
enum Book {
    English { price: Price, lead: Option<Lead> },
    Sealed { bids: HashMap<BidderId, SealedBid> },
    Dutch { sold: Option<Winner> },
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
    /// The last value this lock holder stored in the price word.
    word: u64,
    /// When `seq` last moved (the decision's `now`); zero after a restore until the next
    /// change. Not part of the state hash: streams use it, replay needs it not.
    changed_at: UnixMicros,
}

/// How a bid changes the book, computed before anything is applied.
enum BookChange {
    English { price: Price, lead: Lead },
    Sealed { bidder: BidderId, entry: SealedBid },
    Dutch { sold: Winner },
}

struct Decision {
    change: BookChange,
    /// Visible price after the bid.
    price: Price,
    /// Visible leader after the bid.
    leader: Option<BidderId>,
    /// The bid ends the auction at once.
    close: Option<(CloseReason, Settlement)>,
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

/// `repr(C)` keeps what the lock-free path reads — the price word, the end, and a copy of
/// the rules it needs — together at the front, in the auction's own memory.
#[repr(C)]
pub(crate) struct Auction {
    word: AtomicU64,
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
    pub(crate) fn new(spec: Arc<AuctionSpec>, now: UnixMicros, limits: Limits) -> (Auction, Event) {
        let rules = spec.rules();
        let book = match rules.kind {
            AuctionKind::English { .. } => Book::English {
                price: 0,
                lead: None,
            },
            AuctionKind::SealedFirstPrice { .. } | AuctionKind::SealedSecondPrice { .. } => {
                Book::Sealed {
                    bids: HashMap::new(),
                }
            }
            AuctionKind::Dutch { .. } => Book::Dutch { sold: None },
        };
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
            word: AtomicU64::new(0),
            ends_at: AtomicU64::new(rules.ends_at.0),
            seen: SeenFilter::new(limits.dedup_window_bids),
            state: Mutex::new(State {
                seq: 1,
                ends_at: rules.ends_at,
                extensions: 0,
                bids_accepted: 0,
                book,
                recent: Recent::new(),
                settled: None,
                word: 0,
                changed_at: now,
            }),
            spec,
        };
        (auction, event)
    }

    /// The complete state, taken under the lock.
    pub(crate) fn state(&self) -> AuctionState {
        let state = self.lock();
        let book = match &state.book {
            Book::English { price, lead } => BookState::English {
                price: *price,
                leader: lead.map(|l| LeaderState {
                    bidder: l.bidder,
                    bid: l.bid,
                    max: l.max,
                }),
            },
            Book::Sealed { bids } => {
                let mut bids: Vec<SealedBidState> = bids
                    .iter()
                    .map(|(bidder, b)| SealedBidState {
                        bidder: *bidder,
                        bid: b.bid,
                        amount: b.amount,
                        seq: b.seq,
                    })
                    .collect();
                bids.sort_unstable_by_key(|b| b.bidder);
                BookState::Sealed { bids }
            }
            Book::Dutch { sold } => BookState::Dutch { sold: *sold },
        };
        AuctionState {
            spec: Arc::clone(&self.spec),
            seq: state.seq,
            ends_at: state.ends_at,
            extensions: state.extensions,
            bids_accepted: state.bids_accepted,
            closed: state.settled,
            book,
            recent: state
                .recent
                .iter()
                .map(|(_, key, accepted)| RecentBid {
                    bidder: key.bidder,
                    bid: key.id,
                    accepted: *accepted,
                })
                .collect(),
        }
    }

    /// An auction from a snapshot state, checked against its own rules. The idempotency
    /// memory keeps the newest `dedup_window_bids` entries.
    pub(crate) fn from_state(
        snapshot: AuctionState,
        limits: Limits,
    ) -> Result<Auction, RestoreError> {
        let id = snapshot.spec.id();
        let bad = |what| Err(RestoreError::Inconsistent { id, what });
        let rules = snapshot.spec.rules();
        if snapshot.seq == 0 {
            return bad("sequence number 0");
        }
        if snapshot.ends_at < rules.ends_at {
            return bad("end before the rules' end");
        }
        let extensions_max = rules.soft_close.map_or(0, |sc| sc.extensions_max);
        if snapshot.extensions > extensions_max {
            return bad("more extensions than the rules allow");
        }
        // Every extension moves the end by exactly `extension_us`.
        let extension_us = rules.soft_close.map_or(0, |sc| sc.extension_us);
        let expected_end = extension_us
            .checked_mul(u64::from(snapshot.extensions))
            .and_then(|total| rules.ends_at.checked_add_us(total));
        if Some(snapshot.ends_at) != expected_end {
            return bad("the end does not match the extensions");
        }
        let closed = snapshot.closed.is_some();
        let (book, word) = match (&rules.kind, snapshot.book) {
            (AuctionKind::English { .. }, BookState::English { price, leader }) => {
                if price > PRICE_MAX || leader.is_some_and(|l| l.max < price) {
                    return bad("English price above the leader's maximum or the price range");
                }
                if leader.is_none() && price != 0 {
                    return bad("an English price without a leader");
                }
                let lead = leader.map(|l| Lead {
                    bidder: l.bidder,
                    bid: l.bid,
                    max: l.max,
                });
                let word = lead.map_or(0, |_| price | HAS_BID);
                (Book::English { price, lead }, word)
            }
            (
                AuctionKind::SealedFirstPrice { .. } | AuctionKind::SealedSecondPrice { .. },
                BookState::Sealed { bids },
            ) => {
                let count = bids.len();
                let min_bid = match rules.kind {
                    AuctionKind::SealedFirstPrice { min_bid }
                    | AuctionKind::SealedSecondPrice { min_bid } => min_bid,
                    _ => unreachable!("matched a sealed kind"),
                };
                if bids
                    .iter()
                    .any(|b| b.amount < min_bid || b.amount > PRICE_MAX || b.seq > snapshot.seq)
                {
                    return bad("a sealed bid out of range or after the state's sequence number");
                }
                if count as u64 > snapshot.bids_accepted {
                    return bad("more sealed bids than accepted bids");
                }
                let bids: HashMap<BidderId, SealedBid> = bids
                    .into_iter()
                    .map(|b| {
                        let entry = SealedBid {
                            bid: b.bid,
                            amount: b.amount,
                            seq: b.seq,
                        };
                        (b.bidder, entry)
                    })
                    .collect();
                if bids.len() != count {
                    return bad("a sealed bidder appears twice");
                }
                (Book::Sealed { bids }, 0)
            }
            (AuctionKind::Dutch { .. }, BookState::Dutch { sold }) => {
                if sold.is_some() && !closed {
                    return bad("a sold Dutch auction that is not closed");
                }
                let word = sold.map_or(0, |w| (w.price & PRICE_MAX) | HAS_BID);
                (Book::Dutch { sold }, word)
            }
            _ => return bad("the book does not match the auction kind"),
        };
        let word = word | if closed { CLOSED } else { 0 };
        let seen = SeenFilter::new(limits.dedup_window_bids);
        let mut recent = Recent::new();
        let skip = snapshot
            .recent
            .len()
            .saturating_sub(limits.dedup_window_bids);
        for entry in snapshot.recent.into_iter().skip(skip) {
            let key = BidKey {
                bidder: entry.bidder,
                id: entry.bid,
            };
            if recent.get(&key).is_some() {
                return bad("a bid id appears twice in the idempotency memory");
            }
            recent.insert(key, entry.accepted, &seen, limits.dedup_window_bids);
        }
        Ok(Auction {
            starts_at: rules.starts_at,
            buy_now: rules.buy_now,
            kind: rules.kind.clone(),
            word: AtomicU64::new(word),
            ends_at: AtomicU64::new(snapshot.ends_at.0),
            seen,
            state: Mutex::new(State {
                seq: snapshot.seq,
                ends_at: snapshot.ends_at,
                extensions: snapshot.extensions,
                bids_accepted: snapshot.bids_accepted,
                book,
                recent,
                settled: snapshot.closed,
                word,
                changed_at: UnixMicros(0),
            }),
            spec: snapshot.spec,
        })
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
        // Ordering: Acquire pairs with the Release CAS under the lock, so a reader that
        // sees a price also sees the state change (and filter inserts) that produced it.
        let word = self.word.load(Ordering::Acquire);
        let price = (word & HAS_BID != 0).then_some(word & PRICE_MAX);
        (price, word & CLOSED != 0)
    }

    /// The least amount a new bid needs at `now`, given a price word. English: the price
    /// plus its increment (or the start price; or the buy-now price while the price is
    /// below it). Sealed: the minimum bid. Dutch: the clock price.
    fn min_next(&self, word: u64, now: UnixMicros) -> Price {
        match &self.kind {
            AuctionKind::English {
                start_price,
                increments,
            } => {
                if word & HAS_BID == 0 {
                    return *start_price;
                }
                let price = word & PRICE_MAX;
                let regular = price.saturating_add(increments.increment_at(price));
                match self.buy_now {
                    Some(buy_now) if price < buy_now => regular.min(buy_now),
                    _ => regular,
                }
            }
            AuctionKind::SealedFirstPrice { min_bid }
            | AuctionKind::SealedSecondPrice { min_bid } => *min_bid,
            AuctionKind::Dutch { .. } => self.dutch_clock(now),
        }
    }

    /// The Dutch clock price at `now`.
    fn dutch_clock(&self, now: UnixMicros) -> Price {
        let AuctionKind::Dutch {
            start_price,
            floor_price,
            step,
            step_interval_us,
        } = self.kind
        else {
            unreachable!("dutch_clock on a non-Dutch auction")
        };
        let steps = now.0.saturating_sub(self.starts_at.0) / step_interval_us;
        start_price
            .saturating_sub(steps.saturating_mul(step))
            .max(floor_price)
    }

    /// Decides one bid. Too-low bids and bids on a closed auction are refused without the
    /// lock when the seen-bid filter proves they are not retries.
    pub(crate) fn place_bid<S: EventSink + ?Sized>(
        &self,
        bid: &Bid,
        now: UnixMicros,
        sink: &S,
        limits: Limits,
    ) -> (BidOutcome, Option<Receipt>) {
        let key = BidKey::of(bid);
        // Ordering: Acquire; see `price`.
        let word = self.word.load(Ordering::Acquire);
        // The same checks, in the same order, as the locked path (docs/auction-rules.md).
        // The end: Acquire pairs with the Release store of an extension. A stale (earlier)
        // end only makes this bid linearise before the extension, where `Closed` is right.
        let fast = if word & CLOSED != 0 || now.0 >= self.ends_at.load(Ordering::Acquire) {
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
            return (BidOutcome::Rejected(rejection), None);
        }
        let mut state = self.lock();
        self.place_bid_locked(&mut state, bid, key, now, sink, limits)
    }

    fn place_bid_locked<S: EventSink + ?Sized>(
        &self,
        state: &mut State,
        bid: &Bid,
        key: BidKey,
        now: UnixMicros,
        sink: &S,
        limits: Limits,
    ) -> (BidOutcome, Option<Receipt>) {
        let rejected = |r| (BidOutcome::Rejected(r), None);
        // The filter holds every key of the memory: most fresh bids skip the lookup.
        if self.seen.may_contain(key.filter_key())
            && let Some(original) = state.recent.get(&key)
        {
            return rejected(Rejection::Duplicate { original });
        }
        if state.settled.is_some() || now >= state.ends_at {
            return rejected(Rejection::Closed);
        }
        if now < self.starts_at {
            return rejected(Rejection::NotOpen);
        }
        let decision = match self.decide(state, bid, now, limits) {
            Ok(decision) => decision,
            Err(rejection) => return rejected(rejection),
        };

        let id = self.id();
        let mut events = ArrayVec::<Event, DECISION_EVENTS_MAX>::new();
        let mut seq = state.seq;
        let mut next = |kind| {
            seq += 1;
            Event {
                auction: id,
                seq,
                at: now,
                kind,
            }
        };
        let extension = if decision.close.is_none() {
            self.extension(state, now)
        } else {
            None
        };
        let ends_at = extension.map_or(state.ends_at, |(ends_at, _)| ends_at);
        let accepted_seq = state.seq + 1;
        events.push(next(EventKind::BidAccepted {
            bid: *bid,
            price: decision.price,
            leader: decision.leader,
            ends_at,
        }));
        if let Some((ends_at, extensions)) = extension {
            events.push(next(EventKind::Extended {
                ends_at,
                extensions,
            }));
        }
        if let Some((reason, settlement)) = decision.close {
            events.push(next(EventKind::Closed { reason }));
            events.push(next(EventKind::Settled(settlement)));
        }
        let receipt = match sink.publish(&events) {
            Ok(receipt) => receipt,
            Err(backpressure) => {
                return rejected(Rejection::Overloaded {
                    retry_after_us: backpressure.retry_after_us,
                });
            }
        };

        // Apply. From here on nothing may fail: the events are out.
        let accepted = Accepted {
            seq: accepted_seq,
            price: decision.price,
            leader: decision.leader,
            ends_at,
        };
        self.apply_book(state, decision.change);
        state.seq = seq;
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
        let closed = decision.close.is_some();
        if let Some(close) = decision.close {
            state.settled = Some(close);
        }
        self.publish_word(state, decision.price, closed);
        (BidOutcome::Accepted(accepted), Some(receipt))
    }

    /// The rules of each kind. Reads the state, changes nothing.
    fn decide(
        &self,
        state: &State,
        bid: &Bid,
        now: UnixMicros,
        limits: Limits,
    ) -> Result<Decision, Rejection> {
        let rules = self.spec.rules();
        let min_next = self.min_next(state.word, now);
        if bid.amount() < min_next {
            return Err(Rejection::TooLow { min_next });
        }
        match (&rules.kind, &state.book) {
            (AuctionKind::English { increments, .. }, Book::English { price, lead }) => {
                let buy_now = rules.buy_now.filter(|&b| *price < b || lead.is_none());
                if let Some(buy_now) = buy_now.filter(|&b| bid.amount() >= b) {
                    let winner = Winner {
                        bidder: bid.bidder(),
                        bid: bid.id(),
                        price: buy_now,
                    };
                    return Ok(Decision {
                        change: BookChange::English {
                            price: buy_now,
                            lead: Lead {
                                bidder: bid.bidder(),
                                bid: bid.id(),
                                max: bid.effective_max().max(buy_now),
                            },
                        },
                        price: buy_now,
                        leader: Some(bid.bidder()),
                        close: Some((
                            CloseReason::BuyNow,
                            Settlement {
                                winner: Some(winner),
                            },
                        )),
                    });
                }
                let inc = |p: Price| increments.increment_at(p);
                let amount = bid.amount();
                let max = bid.effective_max();
                let (mut new_price, new_lead) = match lead {
                    None => (
                        amount,
                        Lead {
                            bidder: bid.bidder(),
                            bid: bid.id(),
                            max,
                        },
                    ),
                    Some(lead) if lead.bidder == bid.bidder() => (
                        amount,
                        Lead {
                            bidder: lead.bidder,
                            bid: bid.id(),
                            max: lead.max.max(max),
                        },
                    ),
                    // The newcomer's maximum beats the leader's: it leads at one increment
                    // above the old maximum, capped at its own maximum.
                    Some(lead) if max > lead.max => (
                        max.min(amount.max(lead.max.saturating_add(inc(lead.max)))),
                        Lead {
                            bidder: bid.bidder(),
                            bid: bid.id(),
                            max,
                        },
                    ),
                    // The leader's proxy defends (ties go to the earlier bid): the price
                    // rises to one increment above the newcomer's maximum, capped at the
                    // leader's maximum.
                    Some(lead) => (
                        lead.max.min(amount.max(max.saturating_add(inc(max)))),
                        *lead,
                    ),
                };
                // Reserve: a leader whose maximum reaches the reserve lifts the price to it.
                if let Some(reserve) = rules.reserve
                    && new_price < reserve
                    && new_lead.max >= reserve
                {
                    new_price = reserve;
                }
                assert!(
                    new_price >= amount,
                    "the price fell below the accepted amount"
                );
                assert!(
                    new_price <= new_lead.max,
                    "the price rose above the leader's max"
                );
                assert!(
                    lead.is_none() || new_price > *price,
                    "accepted English prices must strictly increase"
                );
                Ok(Decision {
                    change: BookChange::English {
                        price: new_price,
                        lead: new_lead,
                    },
                    price: new_price,
                    leader: Some(new_lead.bidder),
                    close: None,
                })
            }
            (
                AuctionKind::SealedFirstPrice { .. } | AuctionKind::SealedSecondPrice { .. },
                Book::Sealed { bids },
            ) => {
                if bid.max().is_some() {
                    return Err(Rejection::Invalid);
                }
                if !bids.contains_key(&bid.bidder()) && bids.len() >= limits.sealed_bidders_max {
                    return Err(Rejection::Forbidden);
                }
                let entry = SealedBid {
                    bid: bid.id(),
                    amount: bid.amount(),
                    seq: state.seq + 1,
                };
                let close = rules.buy_now.filter(|&b| bid.amount() >= b).map(|buy_now| {
                    let winner = Winner {
                        bidder: bid.bidder(),
                        bid: bid.id(),
                        price: buy_now,
                    };
                    (
                        CloseReason::BuyNow,
                        Settlement {
                            winner: Some(winner),
                        },
                    )
                });
                Ok(Decision {
                    change: BookChange::Sealed {
                        bidder: bid.bidder(),
                        entry,
                    },
                    price: bid.amount(),
                    leader: None,
                    close,
                })
            }
            (AuctionKind::Dutch { .. }, Book::Dutch { sold }) => {
                assert!(sold.is_none(), "a sold Dutch auction must be closed");
                if bid.max().is_some() {
                    return Err(Rejection::Invalid);
                }
                // `min_next` is the clock price; the bid met it, so it wins at the clock.
                let winner = Winner {
                    bidder: bid.bidder(),
                    bid: bid.id(),
                    price: min_next,
                };
                Ok(Decision {
                    change: BookChange::Dutch { sold: winner },
                    price: min_next,
                    leader: Some(bid.bidder()),
                    close: Some((
                        CloseReason::Sold,
                        Settlement {
                            winner: Some(winner),
                        },
                    )),
                })
            }
            _ => unreachable!("the book always matches the auction kind"),
        }
    }

    fn apply_book(&self, state: &mut State, change: BookChange) {
        match (&mut state.book, change) {
            (Book::English { price, lead }, BookChange::English { price: p, lead: l }) => {
                *price = p;
                *lead = Some(l);
            }
            (Book::Sealed { bids }, BookChange::Sealed { bidder, entry }) => {
                bids.insert(bidder, entry);
            }
            (Book::Dutch { sold }, BookChange::Dutch { sold: winner }) => {
                *sold = Some(winner);
            }
            _ => unreachable!("a change always matches the auction kind"),
        }
    }

    /// The soft-close extension an accepted bid at `now` earns, if any.
    fn extension(&self, state: &State, now: UnixMicros) -> Option<(UnixMicros, u32)> {
        let sc = self.spec.rules().soft_close?;
        let left_us = state.ends_at.0 - now.0;
        if left_us >= sc.window_us || state.extensions >= sc.extensions_max {
            return None;
        }
        // Invariant: validation proved `ends_at + extension_us * extensions_max` fits.
        let ends_at = state
            .ends_at
            .checked_add_us(sc.extension_us)
            .expect("soft close end fits, checked at creation");
        Some((ends_at, state.extensions + 1))
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
        // Ordering: Release publishes the state change and the filter inserts to lock-free
        // readers (who load with Acquire). The CAS, not a store, checks that nobody else
        // wrote the word since this lock holder's predecessor did: the lock makes us the
        // only writer, and a failure here is a bug. Failure ordering Relaxed: we panic.
        let swapped =
            self.word
                .compare_exchange(state.word, word, Ordering::Release, Ordering::Relaxed);
        assert!(
            swapped.is_ok(),
            "the price word was written outside the auction lock"
        );
        state.word = word;
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
        let price = state.word & PRICE_MAX;
        let has_bid = state.word & HAS_BID;
        let word = price | has_bid | CLOSED;
        // Ordering: Release, as in `publish_word`; readers seeing CLOSED see the settlement.
        let swapped =
            self.word
                .compare_exchange(state.word, word, Ordering::Release, Ordering::Relaxed);
        assert!(
            swapped.is_ok(),
            "the price word was written outside the auction lock"
        );
        state.word = word;
        CloseAttempt::Closed(settlement, receipt)
    }

    /// Winner and clearing price by the kind's rule, at the end time.
    fn settlement(&self, state: &State) -> Settlement {
        let rules = self.spec.rules();
        let reserve = rules.reserve.unwrap_or(0);
        let winner = match (&rules.kind, &state.book) {
            (AuctionKind::English { .. }, Book::English { price, lead }) => {
                lead.filter(|_| *price >= reserve).map(|lead| Winner {
                    bidder: lead.bidder,
                    bid: lead.bid,
                    price: *price,
                })
            }
            (AuctionKind::SealedFirstPrice { .. }, Book::Sealed { bids }) => ranked(bids)
                .next()
                .filter(|(_, b)| b.amount >= reserve)
                .map(|(bidder, b)| Winner {
                    bidder,
                    bid: b.bid,
                    price: b.amount,
                }),
            (AuctionKind::SealedSecondPrice { min_bid }, Book::Sealed { bids }) => {
                let mut ranking = ranked(bids);
                let best = ranking.next().filter(|(_, b)| b.amount >= reserve);
                let second = ranking.next().map_or(*min_bid, |(_, b)| b.amount);
                best.map(|(bidder, b)| Winner {
                    bidder,
                    bid: b.bid,
                    price: second.max(reserve).min(b.amount),
                })
            }
            (AuctionKind::Dutch { .. }, Book::Dutch { sold }) => *sold,
            _ => unreachable!("the book always matches the auction kind"),
        };
        Settlement { winner }
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

    /// Feeds everything that determines this auction's future into `hasher`, in a canonical
    /// order: replay must reproduce it bit for bit.
    pub(crate) fn hash_into(&self, hasher: &mut blake3::Hasher) {
        let state = self.lock();
        let mut h = Canonical(hasher);
        h.spec(&self.spec);
        h.u64(state.seq);
        h.u64(state.ends_at.0);
        h.u64(u64::from(state.extensions));
        h.u64(state.bids_accepted);
        h.u64(state.word);
        h.u64(state.settled.map_or(0, |(reason, _)| 1 + reason as u64));
        h.winner(state.settled.and_then(|(_, s)| s.winner));
        match &state.book {
            Book::English { price, lead } => {
                h.u64(*price);
                h.bidder(lead.map(|l| l.bidder));
                h.u128(lead.map_or(0, |l| l.bid.0));
                h.u64(lead.map_or(0, |l| l.max));
            }
            Book::Sealed { bids } => {
                let mut sorted: Vec<_> = bids.iter().collect();
                sorted.sort_unstable_by_key(|(bidder, _)| **bidder);
                h.u64(sorted.len() as u64);
                for (bidder, b) in sorted {
                    h.bidder(Some(*bidder));
                    h.u128(b.bid.0);
                    h.u64(b.amount);
                    h.u64(b.seq);
                }
            }
            Book::Dutch { sold } => h.winner(*sold),
        }
        // The memory, oldest first: its order decides what a future insert evicts.
        h.u64(state.recent.entries.len() as u64);
        for (_, key, accepted) in state.recent.iter() {
            h.bidder(Some(key.bidder));
            h.u128(key.id.0);
            h.u64(accepted.seq);
            h.u64(accepted.price);
            h.u64(accepted.ends_at.0);
            h.bidder(accepted.leader);
        }
    }
}

/// Sealed bids, best first: highest amount, then earliest acceptance.
fn ranked(bids: &HashMap<BidderId, SealedBid>) -> impl Iterator<Item = (BidderId, SealedBid)> {
    let mut all: Vec<(BidderId, SealedBid)> = bids.iter().map(|(k, v)| (*k, *v)).collect();
    all.sort_unstable_by(|a, b| b.1.amount.cmp(&a.1.amount).then(a.1.seq.cmp(&b.1.seq)));
    all.into_iter()
}

/// Canonical little-endian encoding of state into the state hash; every optional value is
/// preceded by a presence byte, every variable-length one by its length.
struct Canonical<'h>(&'h mut blake3::Hasher);

impl Canonical<'_> {
    fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }

    fn u128(&mut self, v: u128) {
        self.0.update(&v.to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.u64(text.len() as u64);
        self.0.update(text.as_bytes());
    }

    fn option(&mut self, v: Option<u64>) {
        self.0.update(&[u8::from(v.is_some())]);
        self.u64(v.unwrap_or(0));
    }

    fn bidder(&mut self, bidder: Option<BidderId>) {
        self.0.update(&[u8::from(bidder.is_some())]);
        self.text(bidder.as_ref().map_or("", BidderId::as_str));
    }

    fn winner(&mut self, winner: Option<Winner>) {
        self.bidder(winner.map(|w| w.bidder));
        self.u128(winner.map_or(0, |w| w.bid.0));
        self.u64(winner.map_or(0, |w| w.price));
    }

    fn spec(&mut self, spec: &AuctionSpec) {
        let r = spec.rules();
        self.u64(r.id.0);
        self.text(r.topic.as_str());
        match &r.kind {
            AuctionKind::English {
                start_price,
                increments,
            } => {
                self.u64(1);
                self.u64(*start_price);
                self.u64(increments.bands().len() as u64);
                for band in increments.bands() {
                    self.u64(band.below);
                    self.u64(band.increment);
                }
                self.u64(increments.above());
            }
            AuctionKind::SealedFirstPrice { min_bid } => {
                self.u64(2);
                self.u64(*min_bid);
            }
            AuctionKind::SealedSecondPrice { min_bid } => {
                self.u64(3);
                self.u64(*min_bid);
            }
            AuctionKind::Dutch {
                start_price,
                floor_price,
                step,
                step_interval_us,
            } => {
                self.u64(4);
                for v in [*start_price, *floor_price, *step, *step_interval_us] {
                    self.u64(v);
                }
            }
        }
        self.option(r.reserve);
        self.option(r.buy_now);
        self.u64(r.starts_at.0);
        self.u64(r.ends_at.0);
        self.option(r.soft_close.map(|sc| sc.window_us));
        self.option(r.soft_close.map(|sc| sc.extension_us));
        self.option(r.soft_close.map(|sc| u64::from(sc.extensions_max)));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::event::RecordingSink;
    use crate::types::{AuctionRules, IncrementTable, Topic};
    use loom::thread;

    const END: u64 = 100;
    const LIMITS: Limits = Limits {
        dedup_window_bids: 2,
        sealed_bidders_max: 4,
    };

    fn english() -> Arc<AuctionSpec> {
        let rules = AuctionRules {
            id: AuctionId(1),
            topic: Topic::new("loom").unwrap(),
            kind: AuctionKind::English {
                start_price: 10,
                increments: IncrementTable::default(),
            },
            reserve: None,
            buy_now: None,
            starts_at: UnixMicros(0),
            ends_at: UnixMicros(END),
            soft_close: None,
        };
        Arc::new(AuctionSpec::try_from(rules).unwrap())
    }

    fn bid(who: &str, id: u128, amount: Price, max: Option<Price>) -> Bid {
        Bid::new(
            AuctionId(1),
            BidderId::new(who).unwrap(),
            BidId(id),
            amount,
            max,
            UnixMicros(0),
        )
        .unwrap()
    }

    /// Two bidders race each other and the close; a watcher reads the price lock-free.
    /// Nothing is accepted after the close, it settles once, the winner is the last
    /// leader, every accepted outcome is in the log, and the watcher's prices never fall.
    #[test]
    fn bids_racing_the_close() {
        loom::model(|| {
            let (auction, created) = Auction::new(english(), UnixMicros(0), LIMITS);
            let auction = Arc::new(auction);
            let sink = Arc::new(RecordingSink::default());
            sink.publish(&[created]).unwrap();

            let bidders: Vec<_> = [bid("a", 1, 10, Some(30)), bid("b", 2, 11, None)]
                .into_iter()
                .map(|b| {
                    let (auction, sink) = (Arc::clone(&auction), Arc::clone(&sink));
                    thread::spawn(move || {
                        auction.place_bid(&b, UnixMicros(END - 1), &*sink, LIMITS).0
                    })
                })
                .collect();
            let closer = {
                let (auction, sink) = (Arc::clone(&auction), Arc::clone(&sink));
                thread::spawn(move || auction.close_if_due(UnixMicros(END), &*sink))
            };
            let watcher = {
                let auction = Arc::clone(&auction);
                thread::spawn(move || {
                    let (first, first_closed) = auction.price();
                    let (second, second_closed) = auction.price();
                    assert!(second >= first, "a watcher saw the price fall");
                    assert!(
                        !first_closed || second_closed,
                        "a watcher saw a close undone"
                    );
                })
            };
            let outcomes: Vec<BidOutcome> =
                bidders.into_iter().map(|t| t.join().unwrap()).collect();
            let closed = closer.join().unwrap();
            watcher.join().unwrap();

            let events = sink.take();
            let close_at = events
                .iter()
                .position(|e| matches!(e.kind, EventKind::Closed { .. }))
                .expect("the close always happens: it is due");
            assert!(
                events[close_at..]
                    .iter()
                    .all(|e| !matches!(e.kind, EventKind::BidAccepted { .. })),
                "a bid was accepted after the close"
            );
            let settled: Vec<_> = events
                .iter()
                .filter_map(|e| match e.kind {
                    EventKind::Settled(s) => Some(s),
                    _ => None,
                })
                .collect();
            assert_eq!(settled.len(), 1, "settles exactly once");
            let CloseAttempt::Closed(settlement, _) = closed else {
                panic!("the close was due: {closed:?}")
            };
            assert_eq!(settled[0], settlement);
            let last_leader = events[..close_at].iter().rev().find_map(|e| match &e.kind {
                EventKind::BidAccepted { leader, price, .. } => Some((*leader, *price)),
                _ => None,
            });
            assert_eq!(
                settlement.winner.map(|w| (Some(w.bidder), w.price)),
                last_leader,
                "the winner is the last leader at the last price"
            );
            for outcome in outcomes {
                match outcome {
                    BidOutcome::Accepted(a) => assert!(
                        events.iter().any(|e| e.seq == a.seq
                            && matches!(e.kind, EventKind::BidAccepted { price, .. } if price == a.price)),
                        "an accepted outcome is missing from the log"
                    ),
                    BidOutcome::Rejected(r) => assert!(
                        matches!(r, Rejection::Closed | Rejection::TooLow { .. }),
                        "unexpected rejection {r:?}"
                    ),
                }
            }
            assert!(auction.price().1, "closed in the word");
        });
    }

    /// Two copies of one bid race a higher bid. The copies never both count: either both
    /// are too low (the higher bid came first), or one is accepted and the other gets
    /// `Duplicate` with that very outcome — never `TooLow` after its twin was accepted,
    /// which is what the lock-free path would say without the seen-bid filter.
    #[test]
    fn a_retry_racing_its_original_and_a_higher_bid() {
        loom::model(|| {
            let (auction, _) = Auction::new(english(), UnixMicros(0), LIMITS);
            let auction = Arc::new(auction);
            let sink = Arc::new(RecordingSink::default());
            let spawn = |b: Bid| {
                let (auction, sink) = (Arc::clone(&auction), Arc::clone(&sink));
                thread::spawn(move || auction.place_bid(&b, UnixMicros(1), &*sink, LIMITS).0)
            };
            let copy1 = spawn(bid("a", 7, 10, None));
            let copy2 = spawn(bid("a", 7, 10, None));
            let higher = spawn(bid("c", 9, 50, None));
            let (o1, o2) = (copy1.join().unwrap(), copy2.join().unwrap());
            assert!(matches!(higher.join().unwrap(), BidOutcome::Accepted(_)));
            match (o1, o2) {
                (
                    BidOutcome::Rejected(Rejection::TooLow { .. }),
                    BidOutcome::Rejected(Rejection::TooLow { .. }),
                ) => {}
                (
                    BidOutcome::Accepted(a),
                    BidOutcome::Rejected(Rejection::Duplicate { original }),
                )
                | (
                    BidOutcome::Rejected(Rejection::Duplicate { original }),
                    BidOutcome::Accepted(a),
                ) => {
                    assert_eq!(a, original)
                }
                other => panic!("the copies of one bid got {other:?}"),
            }
            let accepted = sink
                .take()
                .iter()
                .filter(|e| matches!(&e.kind, EventKind::BidAccepted { bid, .. } if bid.id() == BidId(7)))
                .count();
            assert!(accepted <= 1, "one bid counted twice");
        });
    }
}
