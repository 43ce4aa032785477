//! Realistic write-ahead-log records for the WAL benches: engine events of accepted English
//! bids with 16-byte bidder ids, encoded as `pb::Record` exactly as a WAL sink encodes them
//! (≈ 100 bytes each).

use gavel_engine::{
    AuctionId, Bid, BidId, BidderId, Event, EventKind, EventSink, Price, Receipt, UnixMicros,
};
use gavel_proto::convert::wal::encode_record;
use gavel_wal::{AppendError, Lsn, Wal};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{INCREMENT, START_PRICE, ZIPF_AUCTIONS};

/// Length of every bidder id here (`bidder-` and 9 digits).
pub const BIDDER_ID_BYTES: usize = 16;
/// A plausible decision time (late 2025, µs since the Unix epoch), so the timestamps in the
/// records have their real varint widths.
pub const EPOCH_US: u64 = 1_764_000_000_000_000;
/// How far before the decision the client sent its bid, µs.
const CLIENT_LEAD_US: u64 = 350;
/// The auctions' end as written in the records (an hour after [`EPOCH_US`]).
const ENDS_AT_US: u64 = EPOCH_US + 3_600_000_000;
/// Distinct bidders in [`accepted_bid_payloads`].
const PAYLOAD_BIDDERS: u64 = 1_000;

/// Bidder `n` (mod 10^9) with a 16-byte id: `bidder-000000042`.
pub fn bidder16(n: u64) -> BidderId {
    let id = format!("bidder-{:09}", n % 1_000_000_000);
    debug_assert_eq!(id.len(), BIDDER_ID_BYTES);
    // Invariant: `bidder-` and digits are valid bidder-id characters, 16 ≤ the limit.
    BidderId::new(&id).expect("16-byte bench bidder ids are valid")
}

/// The event of an accepted English bid of `amount` by `bidder` (no proxy maximum), which
/// leads afterwards, decided at `at`.
pub fn accepted_bid_event(
    auction: AuctionId,
    seq: u64,
    bidder: BidderId,
    bid_id: u128,
    amount: Price,
    at: UnixMicros,
) -> Event {
    // Invariant: bench amounts are positive and far below PRICE_MAX.
    let bid = Bid::new(
        auction,
        bidder,
        BidId(bid_id),
        amount,
        None,
        UnixMicros(at.0.saturating_sub(CLIENT_LEAD_US)),
    )
    .expect("bench bids are valid");
    Event {
        auction,
        seq,
        at,
        kind: EventKind::BidAccepted {
            bid,
            price: amount,
            leader: Some(bidder),
            ends_at: UnixMicros(ENDS_AT_US),
        },
    }
}

/// Encodes `event` as a `pb::Record` into `buf` (cleared first).
pub fn encode_event(event: &Event, buf: &mut Vec<u8>) {
    buf.clear();
    encode_record(event, buf);
}

/// `count` distinct encoded records of accepted bids on [`ZIPF_AUCTIONS`] auctions by
/// 1,000 bidders, at realistic prices, sequence numbers and times (seeded: repeatable).
pub fn accepted_bid_payloads(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let event = accepted_bid_event(
                AuctionId(rng.random_range(0..ZIPF_AUCTIONS)),
                rng.random_range(2..20_000),
                bidder16(rng.random_range(0..PAYLOAD_BIDDERS)),
                rng.random(),
                START_PRICE + INCREMENT * rng.random_range(0..100_000),
                // Cast: an index, far below 2^64.
                UnixMicros(EPOCH_US + i as u64 * 10),
            );
            let mut buf = Vec::new();
            encode_event(&event, &mut buf);
            buf
        })
        .collect()
}

/// Appends `payload`, retrying at once while the queue is full; returns the LSN and the
/// number of back-pressure rejections it took.
pub fn append_retrying(wal: &Wal, payload: &[u8]) -> Result<(Lsn, u64), AppendError> {
    let mut rejections = 0;
    loop {
        match wal.append(payload) {
            Ok(lsn) => return Ok((lsn, rejections)),
            Err(AppendError::Backpressure { .. }) => {
                rejections += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
}

/// An engine sink that encodes each event as a `pb::Record` and appends it to a [`Wal`],
/// waiting (yielding) while the log's queue is full — a load generator's sink, which never
/// refuses, for one deciding thread. The receipt is the LSN of the decision's last event.
#[derive(Debug)]
pub struct WalAppendSink<'w> {
    wal: &'w Wal,
    buf: std::cell::RefCell<Vec<u8>>,
    rejections: std::cell::Cell<u64>,
}

impl<'w> WalAppendSink<'w> {
    /// A sink into `wal`.
    pub fn new(wal: &'w Wal) -> WalAppendSink<'w> {
        WalAppendSink {
            wal,
            buf: std::cell::RefCell::new(Vec::with_capacity(256)),
            rejections: std::cell::Cell::new(0),
        }
    }

    /// Back-pressure rejections retried so far.
    pub fn rejections(&self) -> u64 {
        self.rejections.get()
    }
}

impl EventSink for WalAppendSink<'_> {
    fn publish(&self, events: &[Event]) -> Result<Receipt, gavel_engine::Backpressure> {
        let mut buf = self.buf.borrow_mut();
        let mut last = 0;
        for event in events {
            encode_event(event, &mut buf);
            // A failed log (disk full, I/O error) makes the whole bench meaningless.
            let (lsn, rejections) = append_retrying(self.wal, &buf)
                .unwrap_or_else(|e| panic!("the bench log failed: {e}"));
            self.rejections.set(self.rejections.get() + rejections);
            last = lsn;
        }
        Ok(Receipt(last))
    }
}
