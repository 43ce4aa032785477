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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gavel_engine::AuctionId;
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use prost::Message;

/// The hard bound on pending bytes, as a multiple of the soft bound.
pub(crate) const OUTBOX_HARD_BOUND_FACTOR: usize = 2;

/// What [`Outbox::push_price`] did with an update.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pushed {
    /// Queued: nothing was pending for the auction.
    Queued,
    /// Replaced the auction's pending update (which is dropped as superseded).
    Conflated,
    /// Older than what is pending or was sent already: dropped.
    Stale,
    /// The outbox is at its hard bound: the connection must be closed as a slow consumer.
    Full,
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

#[derive(Debug, Default)]
struct Slot {
    /// The latest price update not written yet (its size is in it).
    /// Shared by every connection the update went to.
    pending: Option<Arc<SharedPrice>>,
    /// The highest sequence number queued or written for this auction.
    seq_max: u64,
    /// When the last price update of this auction was taken for writing.
    sent_at: Option<Instant>,
}

/// The outbound queue of one subscriber connection.
#[derive(Debug)]
pub struct Outbox {
    interval: Duration,
    bytes_max: usize,
    slow_after: Duration,
    /// Keyed by auction id with foldhash: ids are chosen by operators, not peers, and this
    /// map is touched once per update per connection.
    slots: HashMap<AuctionId, Slot, foldhash::fast::RandomState>,
    /// Auctions with a pending price update, oldest first (each at most once).
    waiting: VecDeque<AuctionId>,
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
    /// over the bound.
    pub fn new(interval: Duration, bytes_max: usize, slow_after: Duration) -> Outbox {
        Outbox {
            interval,
            bytes_max: bytes_max.max(1),
            slow_after,
            slots: HashMap::default(),
            waiting: VecDeque::new(),
            ordered: VecDeque::new(),
            bytes: 0,
            over_since: None,
            conflated: 0,
        }
    }

    /// Changes the pacing interval (a new `Subscribe` may carry another one).
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Whether the connection was sent (or has pending) anything of `auction` yet; a first
    /// contact gets a snapshot rather than a price update.
    pub fn knows(&self, auction: AuctionId) -> bool {
        self.slots.contains_key(&auction)
    }

    /// Records that the peer already holds `auction` at `seq` (a resume position): later
    /// changes come as price updates, and nothing at or below `seq` is sent.
    pub fn note_seen(&mut self, auction: AuctionId, seq: u64) {
        let slot = self.slots.entry(auction).or_default();
        slot.seq_max = slot.seq_max.max(seq);
    }

    /// Pending bytes (encoded sizes of the queued messages).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.ordered.is_empty()
    }

    /// Updates dropped as superseded so far (for the conflated-updates metric).
    pub fn take_conflated(&mut self) -> u64 {
        std::mem::take(&mut self.conflated)
    }

    /// Queues the latest price of an auction, replacing the one pending (if any).
    pub fn push_price(&mut self, update: pb::PriceUpdate, now: Instant) -> Pushed {
        self.push_shared_price(&Arc::new(SharedPrice::new(update)), now)
    }

    /// [`Outbox::push_price`] of an update shared with other connections.
    pub fn push_shared_price(&mut self, shared: &Arc<SharedPrice>, now: Instant) -> Pushed {
        let update = shared.update();
        let size = shared.size;
        let id = AuctionId(update.auction_id);
        let hard_bound = self.hard_bound();
        let slot = self.slots.entry(id).or_default();
        // Sequence numbers start at 1 (the creation), so a fresh slot takes any update.
        if update.seq <= slot.seq_max {
            return Pushed::Stale;
        }
        let replaced = slot.pending.as_ref().map_or(0, |pending| pending.size);
        if self.bytes - replaced + size > hard_bound {
            return Pushed::Full;
        }
        slot.seq_max = update.seq;
        let was_pending = slot.pending.replace(Arc::clone(shared)).is_some();
        self.bytes = self.bytes - replaced + size;
        let pushed = if was_pending {
            self.conflated += 1;
            Pushed::Conflated
        } else {
            self.waiting.push_back(id);
            Pushed::Queued
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
        if let Some(slot) = self.slots.get_mut(&auction) {
            if let Some(pending) = slot.pending.take() {
                self.waiting.retain(|id| *id != auction);
                let size = pending.size;
                self.ordered.push_back((Outgoing::Price(pending), size));
            }
            slot.sent_at = Some(now);
        }
        if let Some(seq) = ordered_seq(&message) {
            let slot = self.slots.entry(auction).or_default();
            slot.seq_max = slot.seq_max.max(seq);
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
        if let Some(slot) = self.slots.remove(&auction)
            && let Some(pending) = slot.pending
        {
            self.waiting.retain(|id| *id != auction);
            self.bytes -= pending.size;
        }
        self.track_bound(now);
    }

    /// Moves what is due into `out` for one write, up to about `batch_bytes_max` bytes (at
    /// least one message): every ordered message first, then the price updates whose
    /// auction's interval has passed. Returns when the next held-back update becomes due.
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
        let mut taken = 0;
        let mut count = 0;
        while let Some((_, size)) = self.ordered.front() {
            if count > 0 && (taken + size > batch_bytes_max || count >= messages_max) {
                self.track_bound(now);
                return Some(now);
            }
            let Some((message, size)) = self.ordered.pop_front() else {
                break;
            };
            taken += size;
            count += 1;
            self.bytes -= size;
            out.push(message);
        }
        let mut next_due = None;
        // Each waiting auction is looked at once per call: the loop is bounded by the queue.
        for _ in 0..self.waiting.len() {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let due = slot.sent_at.map_or(now, |at| at + self.interval);
            let size = slot.pending.as_ref().map_or(0, |pending| pending.size);
            if due > now || (count > 0 && (taken + size > batch_bytes_max || count >= messages_max))
            {
                next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)).max(now));
                self.waiting.push_back(id);
                continue;
            }
            let Some(pending) = slot.pending.take() else {
                continue;
            };
            slot.sent_at = Some(now);
            taken += pending.size;
            count += 1;
            self.bytes -= pending.size;
            out.push(Outgoing::Price(pending));
        }
        self.track_bound(now);
        next_due
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

    #[test]
    fn a_shared_update_is_encoded_once_for_every_outbox() {
        let t0 = Instant::now();
        let shared = Arc::new(SharedPrice::new(price(1, 2, 10)));
        let mut taken = Vec::new();
        for _ in 0..2 {
            let mut outbox = Outbox::new(Duration::ZERO, 1 << 20, Duration::from_secs(1));
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
        let mut outbox = Outbox::new(Duration::ZERO, 1 << 20, Duration::from_secs(1));
        assert_eq!(outbox.push_price(price(1, 2, 10), t0), Pushed::Queued);
        assert_eq!(outbox.push_price(price(2, 2, 50), t0), Pushed::Queued);
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
        let mut outbox = Outbox::new(ms(50), 1 << 20, Duration::from_secs(1));
        let mut out = Vec::new();
        outbox.push_price(price(1, 2, 10), t0);
        assert_eq!(outbox.take_due(t0, 1 << 20, &mut out), None);
        assert_eq!(summary(&out), vec![(1, 2, 10)], "the first goes at once");
        out.clear();
        outbox.push_price(price(1, 3, 11), t0 + ms(10));
        outbox.push_price(price(1, 4, 12), t0 + ms(20));
        outbox.push_price(price(2, 2, 99), t0 + ms(20));
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
        assert_eq!(
            outbox.take_due(t0 + ms(49), 1 << 20, &mut out),
            Some(t0 + ms(50))
        );
        assert!(out.is_empty());
        assert_eq!(outbox.take_due(t0 + ms(50), 1 << 20, &mut out), None);
        assert_eq!(
            summary(&out),
            vec![(1, 4, 12)],
            "the latest, once per interval"
        );
    }

    #[test]
    fn a_close_is_never_conflated_and_never_overtakes_the_last_price() {
        let t0 = Instant::now();
        let mut outbox = Outbox::new(Duration::from_secs(1), 1 << 20, Duration::from_secs(1));
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
        let mut outbox = Outbox::new(Duration::ZERO, 1 << 20, Duration::from_secs(1));
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
        let mut outbox = Outbox::new(Duration::ZERO, one * 3, ms(100));
        for auction in 1..=3 {
            assert_eq!(outbox.push_price(price(auction, 2, 10), t0), Pushed::Queued);
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
            Pushed::Queued
        );
    }
}
