//! The independent model: what docs/auction-rules.md says every bid and close must give,
//! written here from the document and sharing no code with the engine. Plain integers:
//! bidders are `u32`, bid ids `u128`, prices and times `u64`. No proxy maxima.

use std::collections::BTreeMap;

/// The increment table every simulated English auction uses: below 100: 1; below 1,000: 5;
/// above: 10.
pub(crate) const INCREMENTS: [(u64, u64); 2] = [(100, 1), (1_000, 5)];
/// The increment above the last band.
pub(crate) const INCREMENT_ABOVE: u64 = 10;

/// The kind and its prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Ascending, open.
    English {
        /// Lowest first bid.
        start: u64,
    },
    /// Sealed, the best pays its bid.
    SealedFirst {
        /// Lowest bid.
        min: u64,
    },
    /// Sealed, the best pays the second price.
    SealedSecond {
        /// Lowest bid.
        min: u64,
    },
    /// Descending clock.
    Dutch {
        /// Clock at the start.
        start: u64,
        /// Lowest clock.
        floor: u64,
        /// Fall per step.
        step: u64,
        /// Time between steps.
        interval_us: u64,
    },
}

/// Soft close: window, extension, cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Soft {
    /// Closing window.
    pub(crate) window_us: u64,
    /// One extension.
    pub(crate) extension_us: u64,
    /// Most extensions.
    pub(crate) extensions_max: u32,
}

/// One auction's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Kind.
    pub(crate) kind: Kind,
    /// Reserve.
    pub(crate) reserve: Option<u64>,
    /// Buy-now price (not Dutch).
    pub(crate) buy_now: Option<u64>,
    /// First instant open.
    pub(crate) starts_at: u64,
    /// Deadline before extensions.
    pub(crate) ends_at: u64,
    /// Soft close.
    pub(crate) soft: Option<Soft>,
}

/// An accepted bid's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acc {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Visible price after it.
    pub(crate) price: u64,
    /// Leader after it.
    pub(crate) leader: Option<u32>,
    /// End after it.
    pub(crate) ends_at: u64,
}

/// What a bid must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Accepted.
    Accepted(Acc),
    /// A retry of an accepted bid.
    Duplicate(Acc),
    /// Below `min_next`.
    TooLow(u64),
    /// Before the start.
    NotOpen,
    /// After the end or settled.
    Closed,
    /// No such auction.
    Unknown,
}

/// A winner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Win {
    /// Bidder.
    pub(crate) bidder: u32,
    /// Its winning bid id.
    pub(crate) bid: u128,
    /// Clearing price.
    pub(crate) price: u64,
}

/// One auction's state.
#[derive(Debug, Clone)]
pub(crate) struct Auction {
    spec: Spec,
    seq: u64,
    ends_at: u64,
    extensions: u32,
    /// English: price and leader (bidder, its latest bid id).
    price: Option<u64>,
    leader: Option<(u32, u128)>,
    /// Sealed: bidder → (bid id, amount, acceptance seq).
    sealed: BTreeMap<u32, (u128, u64, u64)>,
    /// Settled, with its winner.
    pub(crate) settled: Option<Option<Win>>,
    accepted: BTreeMap<(u32, u128), Acc>,
}

/// Every auction.
#[derive(Debug, Clone, Default)]
pub(crate) struct Model {
    /// By id.
    pub(crate) auctions: BTreeMap<u64, Auction>,
}

fn increment(price: u64) -> u64 {
    INCREMENTS
        .iter()
        .find(|(below, _)| price < *below)
        .map_or(INCREMENT_ABOVE, |(_, inc)| *inc)
}

impl Auction {
    fn new(spec: Spec) -> Auction {
        Auction {
            spec,
            seq: 1,
            ends_at: spec.ends_at,
            extensions: 0,
            price: None,
            leader: None,
            sealed: BTreeMap::new(),
            settled: None,
            accepted: BTreeMap::new(),
        }
    }

    /// The Dutch clock at `now`.
    fn clock(&self, now: u64) -> u64 {
        match self.spec.kind {
            Kind::Dutch {
                start,
                floor,
                step,
                interval_us,
            } => {
                let steps = now.saturating_sub(self.spec.starts_at) / interval_us;
                start.saturating_sub(step.saturating_mul(steps)).max(floor)
            }
            _ => 0,
        }
    }

    /// The lowest amount considered at `now`.
    pub(crate) fn min_next(&self, now: u64) -> u64 {
        match self.spec.kind {
            Kind::English { start } => match self.price {
                None => start,
                Some(price) => {
                    let regular = price + increment(price);
                    match self.spec.buy_now {
                        Some(b) if price < b => regular.min(b),
                        _ => regular,
                    }
                }
            },
            Kind::SealedFirst { min } | Kind::SealedSecond { min } => min,
            Kind::Dutch { .. } => self.clock(now),
        }
    }

    /// The current end (soft close may have moved it).
    pub(crate) fn ends_at(&self) -> u64 {
        self.ends_at
    }

    /// Whether the timer must close it at `now`.
    pub(crate) fn due(&self, now: u64) -> bool {
        self.settled.is_none() && now >= self.ends_at
    }

    /// The English price, for the monotonicity check.
    pub(crate) fn english_price(&self) -> Option<u64> {
        matches!(self.spec.kind, Kind::English { .. })
            .then_some(self.price)
            .flatten()
    }

    fn decide(&self, bidder: u32, bid: u128, amount: u64, now: u64) -> (Answer, Option<Win>) {
        if let Some(acc) = self.accepted.get(&(bidder, bid)) {
            return (Answer::Duplicate(*acc), None);
        }
        if self.settled.is_some() || now >= self.ends_at {
            return (Answer::Closed, None);
        }
        if now < self.spec.starts_at {
            return (Answer::NotOpen, None);
        }
        let min_next = self.min_next(now);
        if amount < min_next {
            return (Answer::TooLow(min_next), None);
        }
        let win = |price| Some(Win { bidder, bid, price });
        let (price, leader, close) = match self.spec.kind {
            Kind::English { .. } => {
                let buy_now = self
                    .spec
                    .buy_now
                    .filter(|&b| self.price.is_none_or(|p| p < b));
                match buy_now.filter(|&b| amount >= b) {
                    Some(b) => (b, Some(bidder), win(b)),
                    None => (amount, Some(bidder), None),
                }
            }
            Kind::SealedFirst { .. } | Kind::SealedSecond { .. } => {
                let close = self.spec.buy_now.filter(|&b| amount >= b).and_then(win);
                (amount, None, close)
            }
            Kind::Dutch { .. } => (min_next, Some(bidder), win(min_next)),
        };
        let mut ends_at = self.ends_at;
        if close.is_none()
            && let Some(soft) = self.spec.soft
            && self.ends_at - now < soft.window_us
            && self.extensions < soft.extensions_max
        {
            ends_at += soft.extension_us;
        }
        let acc = Acc {
            seq: self.seq + 1,
            price,
            leader,
            ends_at,
        };
        (Answer::Accepted(acc), close)
    }

    fn apply(&mut self, bidder: u32, bid: u128, amount: u64, acc: Acc, close: Option<Win>) {
        self.seq += 1;
        match self.spec.kind {
            Kind::English { .. } => {
                self.price = Some(acc.price);
                self.leader = Some((bidder, bid));
            }
            Kind::SealedFirst { .. } | Kind::SealedSecond { .. } => {
                self.sealed.insert(bidder, (bid, amount, acc.seq));
            }
            Kind::Dutch { .. } => {}
        }
        if acc.ends_at != self.ends_at {
            self.ends_at = acc.ends_at;
            self.extensions += 1;
            self.seq += 1;
        }
        if let Some(win) = close {
            self.settled = Some(Some(win));
            self.seq += 2;
        }
        self.accepted.insert((bidder, bid), acc);
    }

    /// Winner at the end, by the kind's rule.
    fn settlement(&self) -> Option<Win> {
        let reserve = self.spec.reserve.unwrap_or(0);
        match self.spec.kind {
            Kind::English { .. } => {
                let (price, (bidder, bid)) = (self.price?, self.leader?);
                (price >= reserve).then_some(Win { bidder, bid, price })
            }
            Kind::SealedFirst { .. } | Kind::SealedSecond { .. } => {
                let mut ranked: Vec<(u32, (u128, u64, u64))> =
                    self.sealed.iter().map(|(k, v)| (*k, *v)).collect();
                ranked.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.1.2.cmp(&b.1.2)));
                let (bidder, (bid, amount, _)) = *ranked.first()?;
                if amount < reserve {
                    return None;
                }
                let price = match self.spec.kind {
                    Kind::SealedSecond { min } => {
                        let second = ranked.get(1).map_or(min, |r| r.1.1);
                        second.max(reserve).min(amount)
                    }
                    _ => amount,
                };
                Some(Win { bidder, bid, price })
            }
            // A Dutch auction closed by time never sold.
            Kind::Dutch { .. } => None,
        }
    }
}

impl Model {
    /// Adds an auction.
    pub(crate) fn create(&mut self, id: u64, spec: Spec) {
        self.auctions.insert(id, Auction::new(spec));
    }

    /// What a bid must get; applies it when accepted and `apply`.
    pub(crate) fn bid(
        &mut self,
        auction: u64,
        bidder: u32,
        bid: u128,
        amount: u64,
        now: u64,
        apply: bool,
    ) -> Answer {
        let Some(a) = self.auctions.get_mut(&auction) else {
            return Answer::Unknown;
        };
        let (answer, close) = a.decide(bidder, bid, amount, now);
        if let (Answer::Accepted(acc), true) = (answer, apply) {
            a.apply(bidder, bid, amount, acc, close);
        }
        answer
    }

    /// Closes a due auction by time; its winner, or `None` if it was not due.
    pub(crate) fn close(&mut self, auction: u64, now: u64) -> Option<Option<Win>> {
        let a = self.auctions.get_mut(&auction)?;
        if !a.due(now) {
            return None;
        }
        let win = a.settlement();
        a.settled = Some(win);
        a.seq += 2;
        Some(win)
    }

    /// Some auction that must close at `now`.
    pub(crate) fn any_due(&self, now: u64) -> Option<u64> {
        self.auctions
            .iter()
            .find(|(_, a)| a.due(now))
            .map(|(id, _)| *id)
    }
}
