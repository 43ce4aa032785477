//! One auction's complete state as values (`AuctionState`) and back, checked against the
//! auction's own rules.

use std::collections::HashMap;
use std::sync::Arc;

use super::recent::{BidKey, Recent};
use super::rules::{Book, Lead, SealedBid};
use super::word::{CLOSED, HAS_BID, PriceWord};
use super::{Auction, Limits, State};
use crate::filter::SeenFilter;
use crate::snapshot::{
    AuctionState, BookState, LeaderState, RecentBid, RestoreError, SealedBidState,
};
use crate::sync::{AtomicU64, Mutex};
use crate::types::{AuctionKind, AuctionRules, BidderId, PRICE_MAX, UnixMicros};

/// What is wrong with a snapshot state (`RestoreError::Inconsistent`'s `what`).
type Inconsistency = &'static str;

impl Auction {
    /// The complete state, taken under the lock.
    // The binding returned at once is where the `sim-bugs` build alters the state.
    #[cfg_attr(not(feature = "sim-bugs"), allow(clippy::let_and_return))]
    pub(crate) fn state(&self) -> AuctionState {
        let state = self.lock();
        let state = AuctionState {
            spec: Arc::clone(&self.spec),
            seq: state.seq,
            ends_at: state.ends_at,
            extensions: state.extensions,
            bids_accepted: state.bids_accepted,
            closed: state.settled,
            settled_at: state.settled_at,
            book: book_state(&state.book),
            recent: state
                .recent
                .iter()
                .map(|(_, key, accepted)| RecentBid {
                    bidder: key.bidder,
                    bid: key.id,
                    accepted: *accepted,
                })
                .collect(),
        };
        #[cfg(feature = "sim-bugs")]
        let state = if crate::sim_bugs::on(&crate::sim_bugs::FORGET_DEDUP_ON_SNAPSHOT) {
            AuctionState {
                recent: Vec::new(),
                ..state
            }
        } else {
            state
        };
        state
    }

    /// An auction from a snapshot state, checked against its own rules. The idempotency
    /// memory keeps the newest `dedup_window_bids` entries.
    pub(crate) fn from_state(
        snapshot: AuctionState,
        limits: Limits,
    ) -> Result<Auction, RestoreError> {
        let id = snapshot.spec.id();
        let inconsistent = |what| RestoreError::Inconsistent { id, what };
        let rules = snapshot.spec.rules();
        check_timing(&snapshot, rules).map_err(inconsistent)?;
        let closed = snapshot.closed.is_some();
        let (book, word) = book_from_state(&snapshot, rules).map_err(inconsistent)?;
        let word = word | if closed { CLOSED } else { 0 };
        let seen = SeenFilter::new();
        let recent = recent_from_state(&snapshot.recent, &seen, limits).map_err(inconsistent)?;
        Ok(Auction {
            starts_at: rules.starts_at,
            buy_now: rules.buy_now,
            kind: rules.kind.clone(),
            word: PriceWord::new(word),
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
                // A snapshot that does not say when it settled (written before it did):
                // the end — a close by end time came soon after it, any other close before
                // it, so retention keeps the auction about as long as it should or longer.
                settled_at: match (closed, snapshot.settled_at) {
                    (true, UnixMicros(0)) => snapshot.ends_at,
                    (true, at) => at,
                    (false, _) => UnixMicros(0),
                },
                pruned: false,
                word,
                changed_at: UnixMicros(0),
            }),
            spec: snapshot.spec,
        })
    }
}

fn book_state(book: &Book) -> BookState {
    match book {
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
    }
}

/// The sequence number, the end and the extensions agree with the rules.
fn check_timing(snapshot: &AuctionState, rules: &AuctionRules) -> Result<(), Inconsistency> {
    if snapshot.seq == 0 {
        return Err("sequence number 0");
    }
    if snapshot.ends_at < rules.ends_at {
        return Err("end before the rules' end");
    }
    let extensions_max = rules.soft_close.map_or(0, |sc| sc.extensions_max);
    if snapshot.extensions > extensions_max {
        return Err("more extensions than the rules allow");
    }
    // Every extension moves the end by exactly `extension_us`.
    let extension_us = rules.soft_close.map_or(0, |sc| sc.extension_us);
    let expected_end = extension_us
        .checked_mul(u64::from(snapshot.extensions))
        .and_then(|total| rules.ends_at.checked_add_us(total));
    if Some(snapshot.ends_at) != expected_end {
        return Err("the end does not match the extensions");
    }
    Ok(())
}

/// The book and the price word (without `CLOSED`) of a snapshot state.
fn book_from_state(
    snapshot: &AuctionState,
    rules: &AuctionRules,
) -> Result<(Book, u64), Inconsistency> {
    match (&rules.kind, &snapshot.book) {
        (AuctionKind::English { .. }, BookState::English { price, leader }) => {
            let price = *price;
            if price > PRICE_MAX || leader.is_some_and(|l| l.max < price) {
                return Err("English price above the leader's maximum or the price range");
            }
            if leader.is_none() && price != 0 {
                return Err("an English price without a leader");
            }
            let lead = leader.map(|l| Lead {
                bidder: l.bidder,
                bid: l.bid,
                max: l.max,
            });
            let word = lead.map_or(0, |_| price | HAS_BID);
            Ok((Book::English { price, lead }, word))
        }
        (
            AuctionKind::SealedFirstPrice { min_bid } | AuctionKind::SealedSecondPrice { min_bid },
            BookState::Sealed { bids },
        ) => sealed_from_state(snapshot, bids, *min_bid).map(|bids| (Book::Sealed { bids }, 0)),
        (AuctionKind::Dutch { .. }, BookState::Dutch { sold }) => {
            if sold.is_some() && snapshot.closed.is_none() {
                return Err("a sold Dutch auction that is not closed");
            }
            let word = sold.map_or(0, |w| (w.price & PRICE_MAX) | HAS_BID);
            Ok((Book::Dutch { sold: *sold }, word))
        }
        _ => Err("the book does not match the auction kind"),
    }
}

fn sealed_from_state(
    snapshot: &AuctionState,
    bids: &[SealedBidState],
    min_bid: u64,
) -> Result<HashMap<BidderId, SealedBid>, Inconsistency> {
    if bids
        .iter()
        .any(|b| b.amount < min_bid || b.amount > PRICE_MAX || b.seq > snapshot.seq)
    {
        return Err("a sealed bid out of range or after the state's sequence number");
    }
    if bids.len() as u64 > snapshot.bids_accepted {
        return Err("more sealed bids than accepted bids");
    }
    let map: HashMap<BidderId, SealedBid> = bids
        .iter()
        .map(|b| {
            let entry = SealedBid {
                bid: b.bid,
                amount: b.amount,
                seq: b.seq,
            };
            (b.bidder, entry)
        })
        .collect();
    if map.len() != bids.len() {
        return Err("a sealed bidder appears twice");
    }
    Ok(map)
}

/// The idempotency memory of a snapshot state: its newest `dedup_window_bids` entries,
/// also inserted into `seen`.
fn recent_from_state(
    entries: &[RecentBid],
    seen: &SeenFilter,
    limits: Limits,
) -> Result<Recent, Inconsistency> {
    let mut recent = Recent::new();
    let skip = entries.len().saturating_sub(limits.dedup_window_bids);
    for entry in entries.iter().skip(skip) {
        let key = BidKey {
            bidder: entry.bidder,
            id: entry.bid,
        };
        if recent.get(&key).is_some() {
            return Err("a bid id appears twice in the idempotency memory");
        }
        recent.insert(key, entry.accepted, seen, limits.dedup_window_bids);
    }
    Ok(recent)
}
