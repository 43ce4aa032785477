//! The rules of every auction kind (`docs/auction-rules.md`): the book each kind keeps, the
//! least acceptable next bid, how an accepted bid changes the book, soft-close extensions,
//! and the settlement at the end. Everything here reads state and decides; nothing here
//! writes the price word or talks to a sink.

use std::collections::HashMap;

use super::word::HAS_BID;
use super::{Auction, Limits, State};
use crate::event::CloseReason;
use crate::types::{
    AuctionKind, AuctionRules, Bid, BidId, BidderId, IncrementTable, PRICE_MAX, Price, Rejection,
    Settlement, UnixMicros, Winner,
};

/// The leader of an English auction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Lead {
    pub(super) bidder: BidderId,
    /// The bid id of the leader's latest accepted bid.
    pub(super) bid: BidId,
    /// The leader's hidden proxy maximum (at least the price).
    pub(super) max: Price,
}

/// A bidder's standing bid in a sealed auction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct SealedBid {
    pub(super) bid: BidId,
    pub(super) amount: Price,
    /// Sequence number of its acceptance: earlier wins ties.
    pub(super) seq: u64,
}

/// Kind-specific state.
pub(super) enum Book {
    English { price: Price, lead: Option<Lead> },
    Sealed { bids: HashMap<BidderId, SealedBid> },
    Dutch { sold: Option<Winner> },
}

impl Book {
    /// The empty book of a new auction of `kind`.
    pub(super) fn new(kind: &AuctionKind) -> Book {
        match kind {
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
        }
    }

    /// Applies a decided change, made by `bid`, accepted after sequence number `seq`.
    pub(super) fn apply(&mut self, change: BookChange, bid: &Bid, seq: u64) {
        match (self, change) {
            (
                Book::English { price, lead },
                BookChange::English {
                    price: p,
                    bid_leads,
                },
            ) => {
                *price = p;
                if let Some(max) = bid_leads {
                    *lead = Some(Lead {
                        bidder: bid.bidder(),
                        bid: bid.id(),
                        max,
                    });
                }
            }
            (Book::Sealed { bids }, BookChange::Sealed) => {
                let entry = SealedBid {
                    bid: bid.id(),
                    amount: bid.amount(),
                    seq: seq + 1,
                };
                bids.insert(bid.bidder(), entry);
            }
            (Book::Dutch { sold }, BookChange::Dutch { clock }) => {
                *sold = Some(Winner {
                    bidder: bid.bidder(),
                    bid: bid.id(),
                    price: clock,
                });
            }
            _ => unreachable!("a change always matches the auction kind"),
        }
    }
}

/// How a bid changes the book, computed before anything is applied. Relative to the bid:
/// every party a change names is the bid's own bidder, so it carries no bidder id and stays
/// a few words. (A decision holding ids was copied twice on the bid path.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum BookChange {
    /// English: the new price; `bid_leads` is the bid's proxy maximum when the bid leads
    /// afterwards, `None` when the standing leader's proxy defended.
    English {
        price: Price,
        bid_leads: Option<Price>,
    },
    /// Sealed: the bid becomes its bidder's standing bid.
    Sealed,
    /// Dutch: the bid buys at the clock price.
    Dutch { clock: Price },
}

/// What the rules decided for an acceptable bid.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Decision {
    pub(super) change: BookChange,
    /// Visible price after the bid.
    pub(super) price: Price,
    /// The bid ends the auction at once, winning at this price.
    pub(super) close: Option<(CloseReason, Price)>,
}

impl Decision {
    /// The visible leader after the bid, given the book before it: the bid's bidder, the
    /// standing English leader whose proxy defended, or none (sealed bids are secret).
    pub(super) fn leader(&self, bid: &Bid, book: &Book) -> Option<BidderId> {
        match (self.change, book) {
            (
                BookChange::English {
                    bid_leads: None, ..
                },
                Book::English { lead, .. },
            ) => lead.map(|lead| lead.bidder),
            (BookChange::Sealed, _) => None,
            _ => Some(bid.bidder()),
        }
    }

    /// The close and settlement of a bid that ended its auction: the bid wins.
    pub(super) fn close(&self, bid: &Bid) -> Option<(CloseReason, Settlement)> {
        self.close.map(|(reason, price)| {
            let winner = Winner {
                bidder: bid.bidder(),
                bid: bid.id(),
                price,
            };
            (
                reason,
                Settlement {
                    winner: Some(winner),
                },
            )
        })
    }
}

impl Auction {
    /// The least amount a new bid needs at `now`, given a price word. English: the price
    /// plus its increment (or the start price; or the buy-now price while the price is
    /// below it). Sealed: the minimum bid. Dutch: the clock price.
    pub(super) fn min_next(&self, word: u64, now: UnixMicros) -> Price {
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
    pub(super) fn dutch_clock(&self, now: UnixMicros) -> Price {
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

    /// The rules of each kind. Reads the state, changes nothing.
    pub(super) fn decide(
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
                Ok(decide_english(rules, increments, *price, *lead, bid))
            }
            (
                AuctionKind::SealedFirstPrice { .. } | AuctionKind::SealedSecondPrice { .. },
                Book::Sealed { bids },
            ) => decide_sealed(rules, bids, bid, limits),
            (AuctionKind::Dutch { .. }, Book::Dutch { sold }) => decide_dutch(*sold, bid, min_next),
            _ => unreachable!("the book always matches the auction kind"),
        }
    }

    /// The soft-close extension an accepted bid at `now` earns, if any.
    pub(super) fn extension(&self, state: &State, now: UnixMicros) -> Option<(UnixMicros, u32)> {
        let sc = self.spec.rules().soft_close?;
        let left_us = state.ends_at.0 - now.0;
        if left_us >= sc.window_us || state.extensions >= sc.extensions_max {
            return None;
        }
        #[cfg(feature = "sim-bugs")]
        let sc = if crate::sim_bugs::on(&crate::sim_bugs::EXTENSION_TWICE) {
            crate::types::SoftClose {
                extension_us: sc.extension_us * 2,
                ..sc
            }
        } else {
            sc
        };
        // Invariant: validation proved `ends_at + extension_us * extensions_max` fits.
        let ends_at = state
            .ends_at
            .checked_add_us(sc.extension_us)
            .expect("soft close end fits, checked at creation");
        Some((ends_at, state.extensions + 1))
    }

    /// Winner and clearing price by the kind's rule, at the end time.
    pub(super) fn settlement(&self, state: &State) -> Settlement {
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
}

/// English: a buy-now, or the proxy contest with the leader, then the reserve.
#[inline]
fn decide_english(
    rules: &AuctionRules,
    increments: &IncrementTable,
    price: Price,
    lead: Option<Lead>,
    bid: &Bid,
) -> Decision {
    let buy_now = rules.buy_now.filter(|&b| price < b || lead.is_none());
    if let Some(buy_now) = buy_now.filter(|&b| bid.amount() >= b) {
        return Decision {
            change: BookChange::English {
                price: buy_now,
                bid_leads: Some(bid.effective_max().max(buy_now)),
            },
            price: buy_now,
            close: Some((CloseReason::BuyNow, buy_now)),
        };
    }
    let amount = bid.amount();
    let (mut new_price, bid_leads) = proxy_contest(increments, lead, bid);
    let leader_max = bid_leads.unwrap_or_else(|| lead.expect("only a standing leader defends").max);
    // Reserve: a leader whose maximum reaches the reserve lifts the price to it.
    if let Some(reserve) = rules.reserve
        && new_price < reserve
        && leader_max >= reserve
    {
        new_price = reserve;
    }
    assert!(
        new_price >= amount,
        "the price fell below the accepted amount"
    );
    assert!(
        new_price <= leader_max,
        "the price rose above the leader's max"
    );
    assert!(
        lead.is_none() || new_price > price,
        "accepted English prices must strictly increase"
    );
    Decision {
        change: BookChange::English {
            price: new_price,
            bid_leads,
        },
        price: new_price,
        close: None,
    }
}

/// English proxy bidding: the price after `bid` meets the current `lead`, and the bid's
/// proxy maximum when the bid leads afterwards (`None`: the leader's proxy defended).
#[inline]
fn proxy_contest(
    increments: &IncrementTable,
    lead: Option<Lead>,
    bid: &Bid,
) -> (Price, Option<Price>) {
    let inc = |p: Price| increments.increment_at(p);
    let amount = bid.amount();
    let max = bid.effective_max();
    match lead {
        None => (amount, Some(max)),
        Some(lead) if lead.bidder == bid.bidder() => (amount, Some(lead.max.max(max))),
        // The newcomer's maximum beats the leader's: it leads at one increment
        // above the old maximum, capped at its own maximum.
        Some(lead) if max > lead.max => (
            max.min(amount.max(lead.max.saturating_add(inc(lead.max)))),
            Some(max),
        ),
        // The leader's proxy defends (ties go to the earlier bid): the price
        // rises to one increment above the newcomer's maximum, capped at the
        // leader's maximum.
        Some(lead) => (lead.max.min(amount.max(max.saturating_add(inc(max)))), None),
    }
}

/// Sealed: one standing bid per bidder, at most `sealed_bidders_max` bidders; a bid at or
/// above the buy-now price wins at once.
#[inline]
fn decide_sealed(
    rules: &AuctionRules,
    bids: &HashMap<BidderId, SealedBid>,
    bid: &Bid,
    limits: Limits,
) -> Result<Decision, Rejection> {
    if bid.max().is_some() {
        return Err(Rejection::Invalid);
    }
    if !bids.contains_key(&bid.bidder()) && bids.len() >= limits.sealed_bidders_max {
        return Err(Rejection::Forbidden);
    }
    let close = rules
        .buy_now
        .filter(|&b| bid.amount() >= b)
        .map(|buy_now| (CloseReason::BuyNow, buy_now));
    Ok(Decision {
        change: BookChange::Sealed,
        price: bid.amount(),
        close,
    })
}

/// Dutch: the first bid at or above the clock (`clock`, which the bid met) wins at it.
#[inline]
fn decide_dutch(sold: Option<Winner>, bid: &Bid, clock: Price) -> Result<Decision, Rejection> {
    assert!(sold.is_none(), "a sold Dutch auction must be closed");
    if bid.max().is_some() {
        return Err(Rejection::Invalid);
    }
    Ok(Decision {
        change: BookChange::Dutch { clock },
        price: clock,
        close: Some((CloseReason::Sold, clock)),
    })
}

/// Sealed bids, best first: highest amount, then earliest acceptance.
pub(super) fn ranked(
    bids: &HashMap<BidderId, SealedBid>,
) -> impl Iterator<Item = (BidderId, SealedBid)> {
    let mut all: Vec<(BidderId, SealedBid)> = bids.iter().map(|(k, v)| (*k, *v)).collect();
    all.sort_unstable_by(|a, b| b.1.amount.cmp(&a.1.amount).then(a.1.seq.cmp(&b.1.seq)));
    all.into_iter()
}
