//! Value types of the engine: identities, money, time, bids, auction rules, outcomes.
//!
//! Every type here is valid by construction: constructors (`new`, `TryFrom`) check their
//! input and return a typed error, so the rest of the engine never re-validates. None of
//! these types knows about the wire; `gavel-proto` converts at the boundary.

use std::fmt;
use std::sync::Arc;

use arrayvec::ArrayVec;
use thiserror::Error;

/// Money in integer minor units (ticks). No floating point ever touches a price.
pub type Price = u64;

/// Largest price, amount or maximum the engine accepts. Two bits of the auction's price word
/// are flags (`CLOSED`, `HAS_BID`), so prices live in the low 62 bits; anything larger is
/// rejected at the edge as an overflowing amount.
pub const PRICE_MAX: Price = (1 << 62) - 1;

/// Identity of an auction. Chosen by the operator at creation; unique within a node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AuctionId(pub u64);

impl fmt::Display for AuctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The client's 128-bit idempotency key for one bid. A retry carries the same id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct BidId(pub u128);

/// A point in time: microseconds since the Unix epoch. The engine never reads a clock;
/// drivers pass `now` into every call.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct UnixMicros(pub u64);

impl UnixMicros {
    /// `self + us`, or `None` on overflow.
    pub fn checked_add_us(self, us: u64) -> Option<UnixMicros> {
        self.0.checked_add(us).map(UnixMicros)
    }
}

/// Why a bidder id or topic was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum NameError {
    /// The text was empty.
    #[error("empty")]
    Empty,
    /// The text was longer than the limit.
    #[error("longer than {len_max} bytes")]
    TooLong {
        /// The limit, in bytes.
        len_max: usize,
    },
    /// The text had a character outside `[A-Za-z0-9_-]` (and `.` where allowed).
    #[error("invalid character at byte {at}")]
    InvalidChar {
        /// Byte offset of the first bad character.
        at: usize,
    },
    /// A topic had an empty segment (`a..b`, a leading or trailing dot).
    #[error("empty segment")]
    EmptySegment,
    /// A topic had more segments than the limit.
    #[error("more than {segments_max} segments")]
    TooManySegments {
        /// The limit.
        segments_max: usize,
    },
}

/// The rule shared by bidder ids and topics: not empty, at most `len_max` bytes, only ASCII
/// letters, digits, `.`, `_` and `-`.
fn check_name(text: &str, len_max: usize) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > len_max {
        return Err(NameError::TooLong { len_max });
    }
    match text
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        Some(at) => Err(NameError::InvalidChar { at }),
        None => Ok(()),
    }
}

/// Identity of a bidder, taken from its mTLS certificate by the transport (never from a
/// message body). Stored inline so that bids, outcomes and events stay `Copy` and allocation
/// free: at most [`BidderId::LEN_MAX`] bytes of `[A-Za-z0-9._-]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BidderId {
    len: u8,
    bytes: [u8; BidderId::LEN_MAX],
}

impl BidderId {
    /// Longest bidder id, in bytes.
    pub const LEN_MAX: usize = 32;

    /// Parses a bidder id.
    pub fn new(text: &str) -> Result<BidderId, NameError> {
        check_name(text, Self::LEN_MAX)?;
        let mut bytes = [0u8; Self::LEN_MAX];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(BidderId {
            // Cast: len <= LEN_MAX = 32, checked above.
            len: text.len() as u8,
            bytes,
        })
    }

    /// A fixed, unkeyed 64-bit hash of the id (for filters, not for hash maps that
    /// clients can flood: it does not resist crafted collisions).
    pub fn fingerprint(&self) -> u64 {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let mut h = u64::from(self.len).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 0..Self::LEN_MAX / 8 {
            h = (h ^ word(i))
                .wrapping_mul(0xbf58_476d_1ce4_e5b9)
                .rotate_left(31);
        }
        h ^ (h >> 29)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Invariant: `new` admits ASCII only, so the bytes are valid UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("bidder id is ASCII by construction")
    }
}

impl fmt::Debug for BidderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BidderId({:?})", self.as_str())
    }
}

impl fmt::Display for BidderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dot-separated topic path given at auction creation, e.g. `energy.eu.de.block-42`.
/// Segments are non-empty `[A-Za-z0-9_-]`; `*` and `>` are reserved for patterns.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Longest topic, in bytes.
    pub const LEN_MAX: usize = 256;
    /// Most segments in a topic.
    pub const SEGMENTS_MAX: usize = 16;

    /// Parses a topic.
    pub fn new(text: &str) -> Result<Topic, NameError> {
        check_name(text, Self::LEN_MAX)?;
        if text.split('.').any(str::is_empty) {
            return Err(NameError::EmptySegment);
        }
        if text.split('.').count() > Self::SEGMENTS_MAX {
            return Err(NameError::TooManySegments {
                segments_max: Self::SEGMENTS_MAX,
            });
        }
        Ok(Topic(Arc::from(text)))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.as_str())
    }
}

/// Why a bid was refused before it reached an auction.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum BidError {
    /// The amount was zero.
    #[error("amount must be at least 1 tick")]
    ZeroAmount,
    /// The amount or maximum was above [`PRICE_MAX`].
    #[error("amount {amount} overflows the price range (max {PRICE_MAX})")]
    Overflow {
        /// The offending value.
        amount: u64,
    },
    /// The proxy maximum was below the bid amount.
    #[error("proxy maximum {max} is below the amount {amount}")]
    MaxBelowAmount {
        /// The bid amount.
        amount: Price,
        /// The proxy maximum.
        max: Price,
    },
}

/// One bid, validated. The bidder is the certificate identity the transport attached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Bid {
    auction: AuctionId,
    bidder: BidderId,
    id: BidId,
    amount: Price,
    max: Option<Price>,
    client_sent_at: UnixMicros,
}

impl Bid {
    /// Builds a bid, rejecting zero or overflowing amounts and a proxy maximum below the amount.
    pub fn new(
        auction: AuctionId,
        bidder: BidderId,
        id: BidId,
        amount: u64,
        max: Option<u64>,
        client_sent_at: UnixMicros,
    ) -> Result<Bid, BidError> {
        if amount == 0 {
            return Err(BidError::ZeroAmount);
        }
        if amount > PRICE_MAX {
            return Err(BidError::Overflow { amount });
        }
        if let Some(max) = max {
            if max > PRICE_MAX {
                return Err(BidError::Overflow { amount: max });
            }
            if max < amount {
                return Err(BidError::MaxBelowAmount { amount, max });
            }
        }
        Ok(Bid {
            auction,
            bidder,
            id,
            amount,
            max,
            client_sent_at,
        })
    }

    /// The auction bid on.
    pub fn auction(&self) -> AuctionId {
        self.auction
    }
    /// Who bids (from the certificate).
    pub fn bidder(&self) -> BidderId {
        self.bidder
    }
    /// The idempotency key.
    pub fn id(&self) -> BidId {
        self.id
    }
    /// The amount offered now.
    pub fn amount(&self) -> Price {
        self.amount
    }
    /// The hidden proxy maximum, if any (English auctions only).
    pub fn max(&self) -> Option<Price> {
        self.max
    }
    /// The client's send time, carried for latency measurement only; never used to decide.
    pub fn client_sent_at(&self) -> UnixMicros {
        self.client_sent_at
    }
    /// The bid's effective maximum: the proxy maximum, or the amount.
    pub fn effective_max(&self) -> Price {
        self.max.unwrap_or(self.amount)
    }
}

/// One band of an English increment table: below `below`, the increment is `increment`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IncrementBand {
    /// Exclusive upper bound of the band.
    pub below: Price,
    /// Increment for prices in this band.
    pub increment: Price,
}

/// Price-band increment table of an English auction: each bid must reach
/// `current + increment(current)`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct IncrementTable {
    /// Inline, so the bid path reads it from the auction's own memory without a pointer
    /// chase.
    bands: ArrayVec<IncrementBand, { IncrementTable::BANDS_MAX }>,
    above: Price,
}

impl IncrementTable {
    /// Most bands in a table.
    pub const BANDS_MAX: usize = 16;

    /// Builds a table from bands with strictly ascending `below` and the increment that
    /// applies above the last band.
    pub fn new(bands: Vec<IncrementBand>, above: Price) -> Result<IncrementTable, SpecError> {
        if bands.len() > Self::BANDS_MAX {
            return Err(SpecError::IncrementTable("more than 16 bands"));
        }
        if above == 0 || bands.iter().any(|b| b.increment == 0) {
            return Err(SpecError::IncrementTable("an increment is zero"));
        }
        if above > PRICE_MAX
            || bands
                .iter()
                .any(|b| b.increment > PRICE_MAX || b.below > PRICE_MAX)
        {
            return Err(SpecError::IncrementTable(
                "a value overflows the price range",
            ));
        }
        if bands.windows(2).any(|w| w[0].below >= w[1].below) {
            return Err(SpecError::IncrementTable(
                "bands are not strictly ascending",
            ));
        }
        Ok(IncrementTable {
            bands: bands.into_iter().collect(),
            above,
        })
    }

    /// The increment that applies at `price`.
    pub fn increment_at(&self, price: Price) -> Price {
        self.bands
            .iter()
            .find(|b| price < b.below)
            .map_or(self.above, |b| b.increment)
    }

    /// The bands, ascending.
    pub fn bands(&self) -> &[IncrementBand] {
        &self.bands
    }

    /// The increment above the last band.
    pub fn above(&self) -> Price {
        self.above
    }
}

impl Default for IncrementTable {
    /// below 100: 1; below 1,000: 5; below 10,000: 10; below 100,000: 50; above: 100.
    fn default() -> Self {
        let band = |below, increment| IncrementBand { below, increment };
        IncrementTable::new(
            vec![
                band(100, 1),
                band(1_000, 5),
                band(10_000, 10),
                band(100_000, 50),
            ],
            100,
        )
        .expect("the default table is valid")
    }
}

/// The kind of an auction and its kind-specific rules.
// The English variant carries its increment table inline (≈ 270 bytes) on purpose: the
// auction keeps a copy next to its price word so the bid path reads it without a pointer
// chase. Kinds are built once per auction, never moved on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum AuctionKind {
    /// Ascending open auction with an increment table and proxy bidding.
    English {
        /// The lowest acceptable first bid.
        start_price: Price,
        /// Minimum raise per price band.
        increments: IncrementTable,
    },
    /// Sealed bids; the highest pays its own bid.
    SealedFirstPrice {
        /// The lowest acceptable bid.
        min_bid: Price,
    },
    /// Sealed bids; the highest pays the second-highest bid (Vickrey).
    SealedSecondPrice {
        /// The lowest acceptable bid.
        min_bid: Price,
    },
    /// Descending auction: the clock price falls by `step` every `step_interval_us` from
    /// `start_price` down to `floor_price`; the first bid at or above the clock wins at once.
    Dutch {
        /// Clock price at `starts_at`.
        start_price: Price,
        /// Lowest clock price; also the reserve of a Dutch auction.
        floor_price: Price,
        /// How much the clock falls per step.
        step: Price,
        /// Time between steps.
        step_interval_us: u64,
    },
}

/// Soft close: an accepted bid within `window_us` of the end extends the end by
/// `extension_us`, at most `extensions_max` times. Rejected bids never extend.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SoftClose {
    /// Width of the closing window.
    pub window_us: u64,
    /// How far one extension moves the end.
    pub extension_us: u64,
    /// Cap on the number of extensions.
    pub extensions_max: u32,
}

/// The rules of one auction, as the operator wrote them. Validate with
/// [`AuctionSpec::try_from`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AuctionRules {
    /// The auction's id.
    pub id: AuctionId,
    /// Topic watchers subscribe to.
    pub topic: Topic,
    /// Kind and kind-specific rules.
    pub kind: AuctionKind,
    /// Lowest clearing price that sells; not met means no winner.
    pub reserve: Option<Price>,
    /// A bid at or above this price wins at once (English and sealed kinds).
    pub buy_now: Option<Price>,
    /// First instant bids are accepted.
    pub starts_at: UnixMicros,
    /// Bid deadline: first instant bids are refused (before soft-close extensions).
    pub ends_at: UnixMicros,
    /// Optional soft close.
    pub soft_close: Option<SoftClose>,
}

/// Why auction rules were refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum SpecError {
    /// `ends_at` was not after `starts_at`.
    #[error("ends_at must be after starts_at")]
    EndsBeforeStart,
    /// A start price, minimum bid, floor or step was zero.
    #[error("{0} must be at least 1 tick")]
    ZeroPrice(&'static str),
    /// A price was above [`PRICE_MAX`].
    #[error("{0} overflows the price range")]
    Overflow(&'static str),
    /// The Dutch schedule was inconsistent.
    #[error("dutch schedule: {0}")]
    DutchSchedule(&'static str),
    /// The increment table was invalid.
    #[error("increment table: {0}")]
    IncrementTable(&'static str),
    /// The buy-now price was inconsistent with the other prices, or given for a Dutch auction.
    #[error("buy-now: {0}")]
    BuyNow(&'static str),
    /// The reserve was inconsistent with the kind.
    #[error("reserve: {0}")]
    Reserve(&'static str),
    /// The soft-close rule was invalid.
    #[error("soft close: {0}")]
    SoftClose(&'static str),
}

/// Auction rules that passed validation. The engine only ever holds these.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AuctionSpec(AuctionRules);

/// Most soft-close extensions an auction may allow.
pub const EXTENSIONS_MAX: u32 = 10_000;

impl TryFrom<AuctionRules> for AuctionSpec {
    type Error = SpecError;

    fn try_from(rules: AuctionRules) -> Result<Self, SpecError> {
        if rules.ends_at <= rules.starts_at {
            return Err(SpecError::EndsBeforeStart);
        }
        let lowest_bid = lowest_bid(&rules)?;
        if let Some(reserve) = rules.reserve {
            price_ok("reserve", reserve)?;
        }
        if let Some(buy_now) = rules.buy_now {
            price_ok("buy_now", buy_now)?;
            if buy_now < lowest_bid {
                return Err(SpecError::BuyNow("below the lowest acceptable bid"));
            }
            if rules.reserve.is_some_and(|r| buy_now < r) {
                return Err(SpecError::BuyNow("below the reserve"));
            }
        }
        if let Some(sc) = rules.soft_close {
            check_soft_close(sc, rules.ends_at)?;
        }
        Ok(AuctionSpec(rules))
    }
}

/// A price field of the rules: at least one tick, at most [`PRICE_MAX`].
fn price_ok(name: &'static str, p: Price) -> Result<(), SpecError> {
    match p {
        0 => Err(SpecError::ZeroPrice(name)),
        p if p > PRICE_MAX => Err(SpecError::Overflow(name)),
        _ => Ok(()),
    }
}

/// Checks the kind's own prices and schedule, and returns the lowest bid the kind can
/// accept (a buy-now price must not be below it).
fn lowest_bid(rules: &AuctionRules) -> Result<Price, SpecError> {
    match &rules.kind {
        AuctionKind::English { start_price, .. } => {
            price_ok("start_price", *start_price)?;
            Ok(*start_price)
        }
        AuctionKind::SealedFirstPrice { min_bid } | AuctionKind::SealedSecondPrice { min_bid } => {
            price_ok("min_bid", *min_bid)?;
            Ok(*min_bid)
        }
        AuctionKind::Dutch {
            start_price,
            floor_price,
            step,
            step_interval_us,
        } => {
            price_ok("start_price", *start_price)?;
            price_ok("floor_price", *floor_price)?;
            price_ok("step", *step)?;
            if floor_price >= start_price {
                return Err(SpecError::DutchSchedule(
                    "floor_price must be below start_price",
                ));
            }
            if *step_interval_us == 0 {
                return Err(SpecError::DutchSchedule(
                    "step_interval_us must be at least 1",
                ));
            }
            if rules.buy_now.is_some() {
                return Err(SpecError::BuyNow(
                    "a Dutch auction sells at once; no buy-now",
                ));
            }
            if rules.reserve.is_some_and(|r| r > *floor_price) {
                return Err(SpecError::Reserve(
                    "a Dutch auction's reserve is its floor_price; raise the floor instead",
                ));
            }
            Ok(*floor_price)
        }
    }
}

/// Soft close: a non-zero window and extension, at most [`EXTENSIONS_MAX`] extensions, and a
/// latest possible end that fits in the clock.
fn check_soft_close(sc: SoftClose, ends_at: UnixMicros) -> Result<(), SpecError> {
    if sc.window_us == 0 || sc.extension_us == 0 {
        return Err(SpecError::SoftClose(
            "window_us and extension_us must be at least 1",
        ));
    }
    if sc.extensions_max > EXTENSIONS_MAX {
        return Err(SpecError::SoftClose("extensions_max above 10000"));
    }
    let latest = sc
        .extension_us
        .checked_mul(u64::from(sc.extensions_max))
        .and_then(|total| ends_at.checked_add_us(total));
    if latest.is_none() {
        return Err(SpecError::SoftClose("the latest possible end overflows"));
    }
    Ok(())
}

impl AuctionSpec {
    /// The validated rules.
    pub fn rules(&self) -> &AuctionRules {
        &self.0
    }
    /// The auction's id.
    pub fn id(&self) -> AuctionId {
        self.0.id
    }
}

/// An accepted bid's outcome, as sent in the accepted acknowledgement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Accepted {
    /// The per-auction sequence number of the acceptance.
    pub seq: u64,
    /// The visible price after the bid (sealed kinds: the bid's own amount).
    pub price: Price,
    /// The leader after the bid (sealed kinds: hidden, `None`).
    pub leader: Option<BidderId>,
    /// The end of the auction after the bid (soft close may have moved it).
    pub ends_at: UnixMicros,
}

/// Why a bid was rejected. Small and `Copy`: rejections are the hot path's common result.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rejection {
    /// Below the next acceptable amount.
    TooLow {
        /// The lowest amount that would have been considered.
        min_next: Price,
    },
    /// The auction has not started.
    NotOpen,
    /// The auction has ended.
    Closed,
    /// No auction with that id.
    UnknownAuction,
    /// The bid id was seen before; here is what it got then.
    Duplicate {
        /// The original outcome.
        original: Accepted,
    },
    /// The bidder exceeded its rate (transport).
    RateLimited,
    /// The node cannot take the bid now; retry after the given time.
    Overloaded {
        /// Suggested wait before a retry.
        retry_after_us: u64,
    },
    /// The bid does not fit the auction (e.g. a proxy maximum in a sealed auction).
    Invalid,
    /// The bidder may not bid here.
    Forbidden,
}

impl Rejection {
    /// A short snake_case name of the reason, for metric labels and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Rejection::TooLow { .. } => "too_low",
            Rejection::NotOpen => "not_open",
            Rejection::Closed => "closed",
            Rejection::UnknownAuction => "unknown_auction",
            Rejection::Duplicate { .. } => "duplicate",
            Rejection::RateLimited => "rate_limited",
            Rejection::Overloaded { .. } => "overloaded",
            Rejection::Invalid => "invalid",
            Rejection::Forbidden => "forbidden",
        }
    }
}

/// The outcome of one bid.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BidOutcome {
    /// Decided in memory and recorded.
    Accepted(Accepted),
    /// Refused; nothing changed.
    Rejected(Rejection),
}

/// The result of an auction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Settlement {
    /// The winner, or `None` (no bids, reserve not met, or cancelled).
    pub winner: Option<Winner>,
}

/// Who won, with what bid, at which price.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Winner {
    /// The winning bidder.
    pub bidder: BidderId,
    /// The bid id that won (the bidder's latest accepted bid).
    pub bid: BidId,
    /// The clearing price.
    pub price: Price,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidder_id_accepts_up_to_32_safe_bytes() {
        assert_eq!(
            BidderId::new("acme-trading.eu_1").unwrap().as_str(),
            "acme-trading.eu_1"
        );
        assert_eq!(BidderId::new(""), Err(NameError::Empty));
        assert!(BidderId::new(&"a".repeat(32)).is_ok());
        assert_eq!(
            BidderId::new(&"a".repeat(33)),
            Err(NameError::TooLong { len_max: 32 })
        );
        assert_eq!(
            BidderId::new("ab cd"),
            Err(NameError::InvalidChar { at: 2 })
        );
    }

    #[test]
    fn topic_rejects_empty_segments_and_wildcards() {
        assert!(Topic::new("energy.eu.de.block-42").is_ok());
        assert_eq!(Topic::new("a..b"), Err(NameError::EmptySegment));
        assert_eq!(Topic::new(".a"), Err(NameError::EmptySegment));
        assert_eq!(Topic::new("a.*"), Err(NameError::InvalidChar { at: 2 }));
        assert_eq!(Topic::new("a.>"), Err(NameError::InvalidChar { at: 2 }));
        let deep = vec!["x"; 17].join(".");
        assert_eq!(
            Topic::new(&deep),
            Err(NameError::TooManySegments { segments_max: 16 })
        );
    }

    #[test]
    fn bid_rejects_zero_overflow_and_low_max() {
        let b = BidderId::new("b").unwrap();
        let mk = |amount, max| Bid::new(AuctionId(1), b, BidId(1), amount, max, UnixMicros(0));
        assert_eq!(mk(0, None), Err(BidError::ZeroAmount));
        assert_eq!(
            mk(PRICE_MAX + 1, None),
            Err(BidError::Overflow {
                amount: PRICE_MAX + 1
            })
        );
        assert_eq!(
            mk(5, Some(u64::MAX)),
            Err(BidError::Overflow { amount: u64::MAX })
        );
        assert_eq!(
            mk(5, Some(4)),
            Err(BidError::MaxBelowAmount { amount: 5, max: 4 })
        );
        assert_eq!(mk(5, Some(9)).unwrap().effective_max(), 9);
        assert_eq!(mk(PRICE_MAX, None).unwrap().effective_max(), PRICE_MAX);
    }

    #[test]
    fn increment_table_bands() {
        let t = IncrementTable::default();
        assert_eq!(t.increment_at(0), 1);
        assert_eq!(t.increment_at(99), 1);
        assert_eq!(t.increment_at(100), 5);
        assert_eq!(t.increment_at(99_999), 50);
        assert_eq!(t.increment_at(100_000), 100);
        let band = |below, increment| IncrementBand { below, increment };
        assert!(IncrementTable::new(vec![band(10, 1), band(10, 2)], 3).is_err());
        assert!(IncrementTable::new(vec![band(10, 0)], 3).is_err());
        assert!(IncrementTable::new(vec![], 0).is_err());
    }

    fn rules(kind: AuctionKind) -> AuctionRules {
        AuctionRules {
            id: AuctionId(1),
            topic: Topic::new("t").unwrap(),
            kind,
            reserve: None,
            buy_now: None,
            starts_at: UnixMicros(10),
            ends_at: UnixMicros(20),
            soft_close: None,
        }
    }

    #[test]
    fn spec_validation() {
        let english = AuctionKind::English {
            start_price: 10,
            increments: IncrementTable::default(),
        };
        assert!(AuctionSpec::try_from(rules(english.clone())).is_ok());
        let mut r = rules(english.clone());
        r.ends_at = UnixMicros(10);
        assert_eq!(AuctionSpec::try_from(r), Err(SpecError::EndsBeforeStart));
        let mut r = rules(english.clone());
        r.buy_now = Some(5);
        assert!(matches!(
            AuctionSpec::try_from(r),
            Err(SpecError::BuyNow(_))
        ));
        let mut r = rules(english.clone());
        r.reserve = Some(50);
        r.buy_now = Some(40);
        assert!(matches!(
            AuctionSpec::try_from(r),
            Err(SpecError::BuyNow(_))
        ));
        let mut r = rules(english);
        r.soft_close = Some(SoftClose {
            window_us: 1,
            extension_us: u64::MAX,
            extensions_max: 2,
        });
        assert!(matches!(
            AuctionSpec::try_from(r),
            Err(SpecError::SoftClose(_))
        ));
        let dutch = |start, floor| AuctionKind::Dutch {
            start_price: start,
            floor_price: floor,
            step: 1,
            step_interval_us: 1,
        };
        assert!(matches!(
            AuctionSpec::try_from(rules(dutch(10, 10))),
            Err(SpecError::DutchSchedule(_))
        ));
        let mut r = rules(dutch(10, 5));
        r.reserve = Some(6);
        assert!(matches!(
            AuctionSpec::try_from(r),
            Err(SpecError::Reserve(_))
        ));
        assert_eq!(
            AuctionSpec::try_from(rules(AuctionKind::SealedFirstPrice { min_bid: 0 })),
            Err(SpecError::ZeroPrice("min_bid"))
        );
        assert_eq!(
            AuctionSpec::try_from(rules(AuctionKind::SealedSecondPrice {
                min_bid: PRICE_MAX + 1
            })),
            Err(SpecError::Overflow("min_bid"))
        );
    }
}
