//! One subscriber connection's outbound queue: conflated to at most one pending price update
//! per auction (the latest), paced to one update per auction per interval, with closes and
//! settlements kept in order and never conflated away, and bounded in bytes.
//!
//! Sans-IO, in the manner of `quinn-proto`: the fan-out pushes updates in with `push_*`, the
//! connection's writer takes what is due with [`Outbox::take_due`] and writes it as one
//! batch, and asks [`Outbox::is_slow`] whether the peer fell too far behind. Time is passed
//! in, so tests drive it without a clock.
//!
//! Memory bound: the pending bytes (encoded sizes) stay at most twice
//! `outbound_bytes_max_per_connection` — a push that would go beyond is refused and the
//! connection is declared slow at once; above the bound itself, the connection is slow once
//! it stayed there for `slow_consumer_timeout_ms`.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gavel_engine::AuctionId;
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use prost::Message;

use super::latest::LatestPrices;
use super::seen::{Mark, Pending, Seen};

/// The hard bound on pending bytes, as a multiple of the soft bound.
pub(crate) const OUTBOX_HARD_BOUND_FACTOR: usize = 2;

/// What [`Outbox::push_shared_price`] did with an update.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pushed {
    /// Queued, and due before the writer looks next: wake it.
    Queued,
    /// Queued, due when the writer looks anyway (it was woken, or its timer is set).
    Joined,
    /// Replaced the auction's pending update (which is dropped as superseded).
    Conflated,
    /// Older than what is pending or was sent already: dropped.
    Stale,
    /// The outbox is at its hard bound: the connection must be closed as a slow consumer.
    Full,
    /// The connection was never sent the auction: it needs a snapshot first.
    Unknown,
}

/// A price update published once and shared by every outbox it went to, with its wire
/// encodings made once, by the first connection that writes it in that form (a hot
/// auction's update goes to thousands of connections: one encoding, not thousands).
#[derive(Debug)]
pub struct SharedPrice {
    /// The `ServerMessage` carrying the update.
    message: pb::ServerMessage,
    /// The message's encoded (protobuf) size.
    size: usize,
    proto: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl SharedPrice {
    /// Wraps `update` for sharing.
    pub fn new(update: pb::PriceUpdate) -> SharedPrice {
        let message = pb::ServerMessage {
            request_id: 0,
            body: Some(Reply::PriceUpdate(update)),
        };
        SharedPrice {
            size: message.encoded_len(),
            message,
            proto: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    fn update(&self) -> &pb::PriceUpdate {
        match &self.message.body {
            Some(Reply::PriceUpdate(update)) => update,
            // Invariant: `new` is the only constructor.
            _ => unreachable!("a SharedPrice always carries a price update"),
        }
    }

    /// The auction it is an update of.
    pub fn auction(&self) -> AuctionId {
        AuctionId(self.update().auction_id)
    }

    /// The auction's sequence number it carries.
    pub fn seq(&self) -> u64 {
        self.update().seq
    }
}

/// One message taken from an outbox for writing: a price update shared with other
/// connections, or a message of this connection alone (a snapshot, a close, …).
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A shared price update.
    Price(Arc<SharedPrice>),
    /// Any other message (boxed: a `ServerMessage` is some 300 bytes, a shared update one
    /// pointer).
    Message(Box<pb::ServerMessage>),
}

impl Outgoing {
    /// The message.
    pub fn message(&self) -> &pb::ServerMessage {
        match self {
            Outgoing::Price(shared) => &shared.message,
            Outgoing::Message(message) => message,
        }
    }

    /// The message, owned (a shared update is cloned).
    pub fn into_message(self) -> pb::ServerMessage {
        match self {
            Outgoing::Price(shared) => match Arc::try_unwrap(shared) {
                Ok(shared) => shared.message,
                Err(shared) => shared.message.clone(),
            },
            Outgoing::Message(message) => *message,
        }
    }

    /// The message's protobuf encoding (made once for a shared update).
    pub fn proto(&self) -> Bytes {
        match self {
            Outgoing::Price(shared) => shared
                .proto
                .get_or_init(|| Bytes::from(shared.message.encode_to_vec()))
                .clone(),
            Outgoing::Message(message) => Bytes::from(message.encode_to_vec()),
        }
    }

    /// The message's canonical proto3 JSON, UTF-8 (made once for a shared update).
    pub fn json(&self) -> Bytes {
        match self {
            Outgoing::Price(shared) => shared
                .json
                .get_or_init(|| json_bytes(&shared.message))
                .clone(),
            Outgoing::Message(message) => json_bytes(message),
        }
    }

    /// When the decision a price update carries was taken (`accepted_at_us`); `None` for
    /// other messages.
    pub fn accepted_at_us(&self) -> Option<u64> {
        match self.message().body.as_ref()? {
            Reply::PriceUpdate(update) => Some(update.accepted_at_us),
            _ => None,
        }
    }

    /// Whether this is a price update (what may go out as a QUIC datagram).
    pub fn is_price(&self) -> bool {
        matches!(self.message().body, Some(Reply::PriceUpdate(_)))
    }
}

/// `message` as canonical proto3 JSON.
fn json_bytes(message: &pb::ServerMessage) -> Bytes {
    match serde_json::to_vec(message) {
        Ok(json) => Bytes::from(json),
        // Not reachable with the generated messages (no floats, no maps with non-string
        // keys); still no panic.
        Err(e) => Bytes::from(format!(
            r#"{{"error":{{"code":"ERROR_CODE_INTERNAL","message":"encoding failed: {e}"}}}}"#
        )),
    }
}

/// Ordered messages whose queue's memory is kept once it empties: none, so an idle
/// connection holds no queue (the snapshots of a subscription to many auctions, or the one
/// of a single auction, 96 B per idle watcher otherwise).
const ORDERED_KEPT_MAX: usize = 0;

/// What one take may still carry: at least one message, then at most about `bytes_max`
/// bytes and `messages_max` messages.
struct Budget {
    bytes: usize,
    count: usize,
    bytes_max: usize,
    messages_max: usize,
}

impl Budget {
    fn fits(&self, size: usize) -> bool {
        self.count == 0 || (self.bytes + size <= self.bytes_max && self.count < self.messages_max)
    }

    fn add(&mut self, size: usize) {
        self.bytes += size;
        self.count += 1;
    }
}

/// Units of the send stamps: at least 1,024 per interval, so that a stamp (16 bits) wraps
/// only after 64 intervals.
const STAMP_UNITS_PER_INTERVAL: u128 = 1024;
/// Send stamps wrap at this many units.
const STAMP_WRAP: u64 = u16::MAX as u64;

/// The outbound queue of one subscriber connection.
///
/// Price updates are paced per auction (at most one per interval each, the first change
/// after a quiet interval at once); a take moves every due one into one batch, visiting the
/// pending auctions in id order from where the last full batch stopped. When an auction's
/// update was last taken is a 16-bit stamp in units of 1/1024 of the interval (at least
/// 1 ms), so pacing is exact to one unit; an auction quiet for 64 intervals or more may see
/// its next update held back by up to one interval (the stamp wrapped).
#[derive(Debug)]
pub struct Outbox {
    interval: Duration,
    /// The unit of the send stamps, in milliseconds (at least 1).
    stamp_ms: u64,
    /// Stamps count from here.
    epoch: Instant,
    bytes_max: usize,
    slow_after: Duration,
    /// The latest update of every auction, shared by all connections.
    latest: Arc<LatestPrices>,
    /// What was queued or written of each auction, and which have a pending update.
    seen: Seen,
    /// The auction id the next take starts from (where the last full batch stopped).
    cursor: u64,
    /// When the writer looks next, as the last take told it (`None`: once woken). A push
    /// due earlier wakes it; one due later does not.
    writer_due: Option<Instant>,
    /// Messages that are never conflated (and a price update flushed ahead of them), in
    /// order, with their encoded sizes.
    ordered: VecDeque<(Outgoing, usize)>,
    bytes: usize,
    over_since: Option<Instant>,
    conflated: u64,
}

impl Outbox {
    /// An empty outbox pacing each auction to one update per `interval` (zero: as fast as
    /// the peer reads), soft-bounded at `bytes_max` pending bytes, slow after `slow_after`
    /// over the bound; it takes price updates from `latest`.
    pub fn new(
        interval: Duration,
        bytes_max: usize,
        slow_after: Duration,
        latest: Arc<LatestPrices>,
    ) -> Outbox {
        Outbox {
            interval,
            stamp_ms: stamp_ms(interval),
            epoch: Instant::now(),
            bytes_max: bytes_max.max(1),
            slow_after,
            latest,
            seen: Seen::default(),
            cursor: 0,
            writer_due: None,
            ordered: VecDeque::new(),
            bytes: 0,
            over_since: None,
            conflated: 0,
        }
    }

    fn stamp(&self, now: Instant) -> u16 {
        let units =
            now.saturating_duration_since(self.epoch).as_millis() / u128::from(self.stamp_ms);
        // Truncation intended: below STAMP_WRAP.
        (units % u128::from(STAMP_WRAP)) as u16
    }

    /// How long an auction whose update was last taken at `stamp` still waits at `now`
    /// (stamped `now_stamp`); `None`: it is due.
    fn wait(&self, stamp: Option<u16>, now_stamp: u16) -> Option<Duration> {
        let stamp = stamp.filter(|_| !self.interval.is_zero())?;
        let units = (u64::from(now_stamp) + STAMP_WRAP - u64::from(stamp)) % STAMP_WRAP;
        self.interval
            .checked_sub(Duration::from_millis(units * self.stamp_ms))
            .filter(|wait| !wait.is_zero())
    }

    /// Changes the pacing interval (a new `Subscribe` may carry another one); the stamps
    /// taken before then count in the new unit, so each auction's next update may come up
    /// to one interval late.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
        self.stamp_ms = stamp_ms(interval);
    }

    /// Whether the connection was sent (or has pending) anything of `auction` yet; a first
    /// contact gets a snapshot rather than a price update.
    pub fn knows(&self, auction: AuctionId) -> bool {
        self.seen.knows(auction.0)
    }

    /// Records that the peer already holds `auction` at `seq` (a resume position): later
    /// changes come as price updates, and nothing at or below `seq` is sent.
    pub fn note_seen(&mut self, auction: AuctionId, seq: u64) {
        self.seen.note(auction.0, seq);
    }

    /// Gives back spare memory (after a subscription added many auctions at once).
    pub fn shrink(&mut self) {
        self.seen.shrink();
    }

    /// Bytes of heap the per-auction records hold.
    pub fn seen_heap_bytes(&self) -> usize {
        self.seen.heap_bytes()
    }

    /// Pending bytes (encoded sizes of the queued messages).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.seen.pending() == 0 && self.ordered.is_empty()
    }

    /// Updates dropped as superseded so far (for the conflated-updates metric).
    pub fn take_conflated(&mut self) -> u64 {
        std::mem::take(&mut self.conflated)
    }

    /// Queues the latest price of an auction the connection knows (an unknown one is
    /// noted at sequence number 0 first), keeping it in the latest prices.
    #[cfg(test)]
    pub fn push_price(&mut self, update: pb::PriceUpdate, now: Instant) -> Pushed {
        let shared = Arc::new(SharedPrice::new(update));
        if !self.knows(shared.auction()) {
            self.note_seen(shared.auction(), 0);
        }
        self.latest.put(Arc::clone(&shared));
        self.push_shared_price(&shared, now)
    }

    /// Marks `shared`'s auction pending at its sequence number; the writer takes the
    /// auction's latest update from the latest prices, where the caller put `shared` first.
    pub fn push_shared_price(&mut self, shared: &SharedPrice, now: Instant) -> Pushed {
        let room = self.hard_bound().saturating_sub(self.bytes);
        let pushed =
            match self
                .seen
                .mark_pending(shared.auction().0, shared.seq(), shared.size, room)
            {
                Mark::Unknown => return Pushed::Unknown,
                Mark::Stale => return Pushed::Stale,
                Mark::Full => return Pushed::Full,
                Mark::Queued { size, stamp } => {
                    self.bytes += size;
                    let due = self
                        .wait(stamp, self.stamp(now))
                        .map_or(now, |wait| now + wait);
                    if self.writer_due.is_none_or(|at| due < at) {
                        self.writer_due = Some(due);
                        Pushed::Queued
                    } else {
                        Pushed::Joined
                    }
                }
                Mark::Conflated { old, new } => {
                    self.bytes = self.bytes - old + new;
                    self.conflated += 1;
                    Pushed::Conflated
                }
            };
        self.track_bound(now);
        pushed
    }

    /// Queues a message that is never conflated away (a snapshot, a close, a settlement, a
    /// `SnapshotRequired`) for `auction`; a price update pending for the auction is written
    /// first, whatever its pacing, so the message never overtakes it. `false`: the outbox
    /// is at its hard bound and the connection must be closed as a slow consumer.
    pub fn push_ordered(
        &mut self,
        auction: AuctionId,
        message: pb::ServerMessage,
        now: Instant,
    ) -> bool {
        let size = message.encoded_len();
        if self.bytes + size > self.hard_bound() {
            return false;
        }
        self.writer_due = Some(now);
        let stamp = self.seen.knows(auction.0).then(|| self.stamp(now));
        if let Some(pending) = self.seen.clear_pending(auction.0, stamp) {
            self.bytes -= pending;
            if let Some(latest) = self.latest.get(auction) {
                self.ordered.push_back((Outgoing::Price(latest), pending));
                self.bytes += pending;
            }
        }
        if let Some(seq) = ordered_seq(&message) {
            self.seen.note(auction.0, seq);
        }
        self.ordered
            .push_back((Outgoing::Message(Box::new(message)), size));
        self.bytes += size;
        self.track_bound(now);
        true
    }

    /// Forgets an auction the connection no longer watches (after `Unsubscribe`); what is
    /// pending for it is dropped.
    pub fn forget(&mut self, auction: AuctionId, now: Instant) {
        if let Some(pending) = self.seen.remove(auction.0) {
            self.bytes -= pending;
        }
        self.track_bound(now);
    }

    /// Moves what is due into `out` for one write, up to about `batch_bytes_max` bytes (at
    /// least one message): every ordered message first, then the due price updates (of
    /// every auction whose interval passed). Returns when more becomes due (`None`: nothing
    /// is pending).
    pub fn take_due(
        &mut self,
        now: Instant,
        batch_bytes_max: usize,
        out: &mut Vec<Outgoing>,
    ) -> Option<Instant> {
        self.take_due_at_most(now, batch_bytes_max, usize::MAX, out)
    }

    /// [`Outbox::take_due`], and at most `messages_max` messages (at least one): for a
    /// writer with that much room.
    pub fn take_due_at_most(
        &mut self,
        now: Instant,
        batch_bytes_max: usize,
        messages_max: usize,
        out: &mut Vec<Outgoing>,
    ) -> Option<Instant> {
        let mut budget = Budget {
            bytes: 0,
            count: 0,
            bytes_max: batch_bytes_max,
            messages_max,
        };
        while let Some((_, size)) = self.ordered.front() {
            if !budget.fits(*size) {
                self.writer_due = Some(now);
                self.track_bound(now);
                return Some(now);
            }
            let Some((message, size)) = self.ordered.pop_front() else {
                break;
            };
            budget.add(size);
            self.bytes -= size;
            out.push(message);
        }
        if self.ordered.capacity() > ORDERED_KEPT_MAX {
            self.ordered = VecDeque::new();
        }
        let next = self.take_prices(now, &mut budget, out);
        self.writer_due = next;
        self.track_bound(now);
        next
    }

    /// The price-update part of a take: every due pending auction, from the cursor round
    /// to it again, as far as the budget goes. Returns when more becomes due.
    fn take_prices(
        &mut self,
        now: Instant,
        budget: &mut Budget,
        out: &mut Vec<Outgoing>,
    ) -> Option<Instant> {
        let now_stamp = self.stamp(now);
        let start = std::mem::take(&mut self.cursor);
        // The first pass runs from `start` on; the second, from 0 up to `start`.
        let (mut from, mut limit) = (start, None);
        let mut next_due: Option<Instant> = None;
        loop {
            let pending = match self.seen.next_pending(from) {
                Some(p) if limit.is_none_or(|limit| p.auction < limit) => p,
                _ if limit.is_none() && start > 0 => {
                    (from, limit) = (0, Some(start));
                    continue;
                }
                _ => return next_due,
            };
            if let Some(wait) = self.wait(pending.stamp, now_stamp) {
                next_due = Some(next_due.map_or(now + wait, |at| at.min(now + wait)));
            } else if !budget.fits(pending.size) {
                self.cursor = pending.auction;
                return Some(now);
            } else {
                self.take_price(pending, now_stamp, budget, out);
            }
            match pending.auction.checked_add(1) {
                Some(next) => from = next,
                None if limit.is_none() && start > 0 => (from, limit) = (0, Some(start)),
                None => return next_due,
            }
        }
    }

    /// Takes one due pending price update: the auction's latest, unless it is gone (the
    /// auction settled; its close follows) or older than what was marked.
    fn take_price(
        &mut self,
        pending: Pending,
        now_stamp: u16,
        budget: &mut Budget,
        out: &mut Vec<Outgoing>,
    ) {
        self.seen.clear_pending(pending.auction, Some(now_stamp));
        self.bytes -= pending.size;
        let Some(latest) = self.latest.get(AuctionId(pending.auction)) else {
            return;
        };
        if !pending.is_covered_by(latest.seq()) {
            return;
        }
        self.seen.note(pending.auction, latest.seq());
        budget.add(pending.size);
        out.push(Outgoing::Price(latest));
    }

    /// Whether the peer fell too far behind: pending bytes above the bound for longer than
    /// the slow-consumer timeout.
    pub fn is_slow(&self, now: Instant) -> bool {
        self.over_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.slow_after)
    }

    fn hard_bound(&self) -> usize {
        self.bytes_max.saturating_mul(OUTBOX_HARD_BOUND_FACTOR)
    }

    fn track_bound(&mut self, now: Instant) {
        if self.bytes > self.bytes_max {
            self.over_since.get_or_insert(now);
        } else {
            self.over_since = None;
        }
    }
}

/// The unit of the send stamps for `interval`, in milliseconds: 1/1024 of it, at least 1.
fn stamp_ms(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis() / STAMP_UNITS_PER_INTERVAL)
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The sequence number an ordered message brings its auction to, if it carries one.
fn ordered_seq(message: &pb::ServerMessage) -> Option<u64> {
    match message.body.as_ref()? {
        Reply::AuctionSnapshot(s) => Some(s.seq),
        Reply::AuctionClosed(c) => Some(c.seq),
        Reply::AuctionSettled(s) => Some(s.seq),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(auction: u64, seq: u64, price: u64) -> pb::PriceUpdate {
        pb::PriceUpdate {
            auction_id: auction,
            topic: "energy.eu.de".into(),
            epoch: 1,
            seq,
            price: Some(price),
            ..pb::PriceUpdate::default()
        }
    }

    fn closed(auction: u64, seq: u64) -> pb::ServerMessage {
        pb::ServerMessage {
            request_id: 0,
            body: Some(Reply::AuctionClosed(pb::AuctionClosed {
                auction_id: auction,
                epoch: 1,
                seq,
                ..pb::AuctionClosed::default()
            })),
        }
    }

    /// (auction, seq, price) of the price updates, and `(auction, seq, 0)` for closes.
    fn summary(out: &[Outgoing]) -> Vec<(u64, u64, u64)> {
        out.iter()
            .map(|m| match m.message().body.as_ref().unwrap() {
                Reply::PriceUpdate(u) => (u.auction_id, u.seq, u.price.unwrap()),
                Reply::AuctionClosed(c) => (c.auction_id, c.seq, 0),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn outbox(interval: Duration, bytes_max: usize, slow_after: Duration) -> Outbox {
        let mut outbox = Outbox::new(interval, bytes_max, slow_after, Arc::default());
        outbox.epoch = Instant::now();
        outbox
    }

    #[test]
    fn a_shared_update_is_encoded_once_for_every_outbox() {
        let t0 = Instant::now();
        let latest = Arc::new(LatestPrices::default());
        let shared = latest.put(Arc::new(SharedPrice::new(price(1, 2, 10))));
        let mut taken = Vec::new();
        for _ in 0..2 {
            let mut outbox = Outbox::new(
                Duration::ZERO,
                1 << 20,
                Duration::from_secs(1),
                Arc::clone(&latest),
            );
            assert_eq!(outbox.push_shared_price(&shared, t0), Pushed::Unknown);
            outbox.note_seen(AuctionId(1), 1);
            assert_eq!(outbox.push_shared_price(&shared, t0), Pushed::Queued);
            outbox.take_due(t0, 1 << 20, &mut taken);
        }
        let [first, second] = &taken[..] else {
            panic!("one update per outbox: {taken:?}");
        };
        let expected = pb::ServerMessage {
            request_id: 0,
            body: Some(Reply::PriceUpdate(price(1, 2, 10))),
        };
        assert_eq!(first.proto(), expected.encode_to_vec());
        assert_eq!(
            first.proto().as_ptr(),
            second.proto().as_ptr(),
            "the same bytes, not a second encoding"
        );
        assert_eq!(first.json(), serde_json::to_vec(&expected).unwrap());
        assert_eq!(first.json().as_ptr(), second.json().as_ptr());
        assert_eq!(first.accepted_at_us(), Some(0));
        let own = Outgoing::Message(Box::new(closed(1, 3)));
        assert_eq!(own.proto(), closed(1, 3).encode_to_vec());
        assert_eq!(own.accepted_at_us(), None);
    }

    #[test]
    fn one_pending_update_per_auction_and_the_latest_wins() {
        let t0 = Instant::now();
        let mut outbox = outbox(Duration::ZERO, 1 << 20, Duration::from_secs(1));
        assert_eq!(outbox.push_price(price(1, 2, 10), t0), Pushed::Queued);
        assert_eq!(outbox.push_price(price(2, 2, 50), t0), Pushed::Joined);
        assert_eq!(outbox.push_price(price(1, 3, 11), t0), Pushed::Conflated);
        assert_eq!(outbox.push_price(price(1, 5, 13), t0), Pushed::Conflated);
        assert_eq!(
            outbox.push_price(price(1, 4, 12), t0),
            Pushed::Stale,
            "older"
        );
        assert_eq!(outbox.take_conflated(), 2);
        let mut out = Vec::new();
        assert_eq!(outbox.take_due(t0, 1 << 20, &mut out), None);
        assert_eq!(summary(&out), vec![(1, 5, 13), (2, 2, 50)]);
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes(), 0);
        assert_eq!(
            outbox.push_price(price(1, 5, 13), t0),
            Pushed::Stale,
            "sent"
        );
    }

    #[test]
    fn the_interval_paces_each_auction_and_holds_the_latest() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut outbox = outbox(ms(50), 1 << 20, Duration::from_secs(1));
        outbox.epoch = t0;
        let mut out = Vec::new();
        assert_eq!(outbox.push_price(price(1, 2, 10), t0), Pushed::Queued);
        assert_eq!(outbox.take_due(t0, 1 << 20, &mut out), None);
        assert_eq!(summary(&out), vec![(1, 2, 10)], "the first goes at once");
        out.clear();
        let pushes = [
            // The writer waits for nothing: wake it for the time this is due (50 ms).
            (10, price(1, 3, 11), Pushed::Queued),
            (20, price(1, 4, 12), Pushed::Conflated),
            // Due before the writer would look.
            (20, price(2, 2, 99), Pushed::Queued),
        ];
        for (at, update, pushed) in pushes {
            assert_eq!(outbox.push_price(update, t0 + ms(at)), pushed, "at {at} ms");
        }
        assert_eq!(
            outbox.take_due(t0 + ms(20), 1 << 20, &mut out),
            Some(t0 + ms(50))
        );
        assert_eq!(
            summary(&out),
            vec![(2, 2, 99)],
            "another auction is not held back"
        );
        out.clear();
        // Due now while the writer looks at 50 ms; then due at 70 ms, after it looks anyway.
        for (update, pushed) in [
            (price(3, 2, 7), Pushed::Queued),
            (price(2, 3, 98), Pushed::Joined),
        ] {
            assert_eq!(outbox.push_price(update, t0 + ms(30)), pushed);
        }
        assert_eq!(
            outbox.take_due(t0 + ms(49), 1 << 20, &mut out),
            Some(t0 + ms(50))
        );
        assert_eq!(summary(&out), vec![(3, 2, 7)]);
        out.clear();
        assert_eq!(
            outbox.take_due(t0 + ms(50), 1 << 20, &mut out),
            Some(t0 + ms(70))
        );
        assert_eq!(
            summary(&out),
            vec![(1, 4, 12)],
            "the latest, once per interval"
        );
    }

    #[test]
    fn a_full_batch_resumes_where_it_stopped() {
        let t0 = Instant::now();
        let mut outbox = outbox(Duration::ZERO, 1 << 20, Duration::from_secs(1));
        for auction in 1..=3 {
            outbox.push_price(price(auction, 2, 10), t0);
        }
        let one = SharedPrice::new(price(1, 2, 10)).size;
        let mut out = Vec::new();
        assert_eq!(outbox.take_due(t0, one * 2, &mut out), Some(t0));
        assert_eq!(summary(&out), vec![(1, 2, 10), (2, 2, 10)]);
        out.clear();
        outbox.push_price(price(1, 3, 11), t0);
        assert_eq!(outbox.take_due(t0, one * 2, &mut out), None);
        assert_eq!(
            summary(&out),
            vec![(3, 2, 10), (1, 3, 11)],
            "the auction cut off goes first"
        );
    }

    #[test]
    fn a_close_is_never_conflated_and_never_overtakes_the_last_price() {
        let t0 = Instant::now();
        let mut outbox = outbox(Duration::from_secs(1), 1 << 20, Duration::from_secs(1));
        let mut out = Vec::new();
        outbox.push_price(price(1, 2, 10), t0);
        outbox.take_due(t0, 1 << 20, &mut out);
        out.clear();
        outbox.push_price(price(1, 3, 11), t0);
        assert!(outbox.push_ordered(AuctionId(1), closed(1, 4), t0));
        assert_eq!(outbox.push_price(price(1, 3, 11), t0), Pushed::Stale);
        outbox.take_due(t0, 1 << 20, &mut out);
        assert_eq!(
            summary(&out),
            vec![(1, 3, 11), (1, 4, 0)],
            "the held-back price goes first, despite the interval"
        );
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn batches_are_bounded_in_bytes_but_never_empty() {
        let t0 = Instant::now();
        let mut outbox = outbox(Duration::ZERO, 1 << 20, Duration::from_secs(1));
        for auction in 1..=10 {
            outbox.push_price(price(auction, 2, auction), t0);
        }
        let one = SharedPrice::new(price(1, 2, 1)).size;
        let mut out = Vec::new();
        assert_eq!(
            outbox.take_due(t0, 1, &mut out),
            Some(t0),
            "more is due now"
        );
        assert_eq!(out.len(), 1, "at least one message");
        out.clear();
        outbox.take_due(t0, one * 4, &mut out);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn a_reader_over_the_bound_past_the_timeout_is_slow() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let one = SharedPrice::new(price(1, 2, 10)).size;
        let mut outbox = outbox(Duration::ZERO, one * 3, ms(100));
        assert_eq!(outbox.push_price(price(1, 2, 10), t0), Pushed::Queued);
        for auction in 2..=3 {
            assert_eq!(outbox.push_price(price(auction, 2, 10), t0), Pushed::Joined);
        }
        assert!(!outbox.is_slow(t0 + ms(500)), "at the bound, not over it");
        outbox.push_price(price(4, 2, 10), t0 + ms(10));
        assert!(!outbox.is_slow(t0 + ms(109)));
        assert!(outbox.is_slow(t0 + ms(110)));
        let mut out = Vec::new();
        outbox.take_due(t0 + ms(111), one, &mut out);
        assert!(!outbox.is_slow(t0 + ms(1000)), "back under the bound");
        for auction in 5..=8 {
            outbox.push_price(price(auction, 2, 10), t0 + ms(200));
        }
        assert_eq!(
            outbox.push_price(price(9, 2, 10), t0 + ms(200)),
            Pushed::Full,
            "twice the bound is the hard limit"
        );
        assert!(!outbox.push_ordered(AuctionId(9), closed(9, 3), t0 + ms(200)));
        outbox.forget(AuctionId(5), t0 + ms(200));
        assert_eq!(
            outbox.push_price(price(9, 2, 10), t0 + ms(200)),
            Pushed::Joined
        );
    }
}
