//! The encoder of one subscriber stream: stream messages in, frames out.
//!
//! It keeps, per auction, only what it last sent (the delta base), and a 64-slot table of
//! leader ids shared by the stream's auctions. A message is written into the frame being
//! built; a frame is sealed (header and checksum written to `out`) when the next record
//! would not fit `frame_bytes_max`, and by [`EdgeEncoder::flush`].

use std::collections::HashMap;
use std::sync::Arc;

use gavel_proto::pb;
use gavel_proto::pb::server_message::Body;

use crate::wire::*;
use crate::{BIDDER_BYTES_MAX, FRAME_BYTES_LIMIT, TOPIC_BYTES_MAX};

/// What [`EdgeEncoder::encode`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// Written as a keyframe (first contact, a snapshot, or a new epoch).
    Keyframe,
    /// Written as a delta record.
    Delta,
    /// Written as a close.
    Closed,
    /// Written as a settlement.
    Settled,
    /// Not newer than what was sent for the auction: not written.
    Stale,
    /// Not part of the edge stream (an answer, a pong, …), or a `SnapshotRequired` (the
    /// snapshot that follows is the keyframe): not written.
    Ignored,
    /// A topic or bidder id longer than the node allows, or a snapshot without rules: not
    /// written (a faulty caller; the node never builds one).
    Refused,
}

/// What the stream last sent of one auction: the base of its next delta.
#[derive(Clone, Debug)]
struct Sent {
    epoch: u64,
    seq: u64,
    price: Option<u64>,
    leader: Option<Arc<str>>,
    ends_at_us: u64,
    bids_accepted: u64,
    changed_at_us: u64,
    /// The last timestamp delta (for delta-of-delta); 0 after a keyframe.
    time_delta: i64,
    watchers: u32,
    bidders_connected: u32,
}

/// The full state a keyframe carries, borrowed from the message it is built from.
struct Key<'a> {
    auction_id: u64,
    topic: &'a str,
    epoch: u64,
    seq: u64,
    price: Option<u64>,
    leader: Option<&'a str>,
    ends_at_us: u64,
    bids_accepted: u64,
    changed_at_us: u64,
    watchers: u32,
    bidders_connected: u32,
    /// Reason and time.
    closed: Option<(u8, u64)>,
    /// Time and winner.
    settled: Option<(u64, Option<&'a pb::Winner>)>,
}

/// The stream's leader table: slot → bidder id, reused oldest-defined first.
#[derive(Debug, Default)]
struct Leaders {
    slots: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u8, foldhash::fast::RandomState>,
    /// The slot the next definition replaces once the table is full.
    next: usize,
}

impl Leaders {
    /// Writes the leader byte for `leader` (defining a slot if needed); returns the id.
    fn put(&mut self, leader: &str, out: &mut Vec<u8>) -> Arc<str> {
        if let Some((id, &slot)) = self.index.get_key_value(leader) {
            out.push(slot);
            return Arc::clone(id);
        }
        let id: Arc<str> = Arc::from(leader);
        let slot = if self.slots.len() < LEADER_SLOTS {
            self.slots.push(Arc::clone(&id));
            self.slots.len() - 1
        } else {
            let slot = self.next;
            self.next = (self.next + 1) % LEADER_SLOTS;
            let old = std::mem::replace(&mut self.slots[slot], Arc::clone(&id));
            self.index.remove(&old);
            slot
        };
        // Invariant: slot < LEADER_SLOTS = 64, so it fits the low six bits.
        self.index.insert(Arc::clone(&id), slot as u8);
        out.push(LEADER_DEFINE | slot as u8);
        put_str8(out, leader);
        id
    }
}

/// The edge encoder of one subscriber stream.
#[derive(Debug)]
pub struct EdgeEncoder {
    frame_bytes_max: usize,
    frame_no: u16,
    /// The body of the frame being built.
    body: Vec<u8>,
    /// Offset in `body` of the open DELTAS TLV, if the last TLV is one.
    run: Option<usize>,
    sent: HashMap<u64, Sent, foldhash::fast::RandomState>,
    leaders: Leaders,
    /// Scratch for one record.
    record: Vec<u8>,
}

impl EdgeEncoder {
    /// An encoder of a new stream (frame number 0, every auction starts with a keyframe)
    /// writing frames of at most `frame_bytes_max` bytes, clamped to
    /// [`FRAME_BYTES_MIN`]..=[`FRAME_BYTES_LIMIT`].
    pub fn new(frame_bytes_max: usize) -> EdgeEncoder {
        EdgeEncoder {
            frame_bytes_max: frame_bytes_max.clamp(FRAME_BYTES_MIN, FRAME_BYTES_LIMIT),
            frame_no: 0,
            body: Vec::new(),
            run: None,
            sent: HashMap::default(),
            leaders: Leaders::default(),
            record: Vec::new(),
        }
    }

    /// Auctions with a delta base.
    pub fn auctions(&self) -> usize {
        self.sent.len()
    }

    /// Whether the stream has a delta base for `auction` (its next update is a delta).
    pub fn knows(&self, auction: u64) -> bool {
        self.sent.contains_key(&auction)
    }

    /// Forgets an auction: its next message goes out as a keyframe (the peer asked for
    /// one, or no longer watches it).
    pub fn forget(&mut self, auction: u64) {
        self.sent.remove(&auction);
    }

    /// Adds `message` to the frame being built; sealed frames are appended to `out`.
    pub fn encode(&mut self, message: &pb::ServerMessage, out: &mut Vec<u8>) -> Encoded {
        match &message.body {
            Some(Body::PriceUpdate(update)) => self.price(update, out),
            Some(Body::AuctionSnapshot(snapshot)) => self.snapshot(snapshot, out),
            Some(Body::AuctionClosed(closed)) => self.closed(closed, out),
            Some(Body::AuctionSettled(settled)) => self.settled(settled, out),
            Some(Body::SnapshotRequired(required)) => {
                self.forget(required.auction_id);
                Encoded::Ignored
            }
            _ => Encoded::Ignored,
        }
    }

    /// Seals the frame being built, if it holds anything, into `out`.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.body.is_empty() {
            return;
        }
        // Invariant: frame_bytes_max <= FRAME_BYTES_LIMIT keeps the body within u16.
        let len = u16::try_from(self.body.len()).expect("the body fits the frame limit");
        let mut head = [0_u8; 5];
        head[0] = VERSION;
        head[1..3].copy_from_slice(&self.frame_no.to_be_bytes());
        head[3..5].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&checksum(&head, &self.body).to_be_bytes());
        out.extend_from_slice(&self.body);
        self.body.clear();
        self.run = None;
        self.frame_no = self.frame_no.wrapping_add(1);
    }

    fn price(&mut self, u: &pb::PriceUpdate, out: &mut Vec<u8>) -> Encoded {
        if u.topic.len() > TOPIC_BYTES_MAX || too_long(u.leader.as_deref()) {
            return Encoded::Refused;
        }
        let base = match self.sent.get(&u.auction_id) {
            Some(sent) if sent.epoch == u.epoch => sent,
            _ => {
                let key = Key {
                    auction_id: u.auction_id,
                    topic: &u.topic,
                    epoch: u.epoch,
                    seq: u.seq,
                    price: u.price,
                    leader: u.leader.as_deref(),
                    ends_at_us: u.ends_at_us,
                    bids_accepted: u.bids_accepted,
                    changed_at_us: u.accepted_at_us,
                    watchers: u.watchers,
                    bidders_connected: u.bidders_connected,
                    closed: None,
                    settled: None,
                };
                return self.keyframe(&key, out);
            }
        };
        if u.seq <= base.seq {
            return Encoded::Stale;
        }
        let mut base = base.clone();
        self.delta_record(&mut base, u);
        self.sent.insert(u.auction_id, base);
        self.push_delta(out);
        Encoded::Delta
    }

    /// Writes the delta record of `u` against `base` into `record` and moves `base` to `u`.
    fn delta_record(&mut self, base: &mut Sent, u: &pb::PriceUpdate) {
        let rec = &mut self.record;
        rec.clear();
        put_varint(rec, u.auction_id);
        rec.push(0);
        let mut flags = 0;
        let gap = u.seq - base.seq;
        if gap != 1 {
            flags |= D_SEQ;
            put_varint(rec, gap);
        }
        let time_delta = u.accepted_at_us.wrapping_sub(base.changed_at_us) as i64;
        put_varint(rec, zigzag(time_delta.wrapping_sub(base.time_delta)));
        match (base.price, u.price) {
            (before, now) if before == now => {}
            (_, None) => flags |= D_PRICE_NONE,
            (before, Some(now)) => {
                flags |= D_PRICE;
                put_varint(rec, zigzag(now.wrapping_sub(before.unwrap_or(0)) as i64));
            }
        }
        if base.leader.as_deref() != u.leader.as_deref() {
            flags |= D_LEADER;
            base.leader = match u.leader.as_deref() {
                None => {
                    rec.push(LEADER_NONE);
                    None
                }
                Some(leader) => Some(self.leaders.put(leader, rec)),
            };
        }
        if u.ends_at_us != base.ends_at_us {
            flags |= D_ENDS;
            put_varint(
                rec,
                zigzag(u.ends_at_us.wrapping_sub(base.ends_at_us) as i64),
            );
        }
        if u.bids_accepted != base.bids_accepted.wrapping_add(gap) {
            flags |= D_BIDS;
            put_varint(rec, u.bids_accepted.wrapping_sub(base.bids_accepted));
        }
        if (u.watchers, u.bidders_connected) != (base.watchers, base.bidders_connected) {
            flags |= D_PRESENCE;
            put_varint(rec, u64::from(u.watchers));
            put_varint(rec, u64::from(u.bidders_connected));
        }
        let flags_at = varint_len(u.auction_id);
        rec[flags_at] = flags;
        *base = Sent {
            epoch: u.epoch,
            seq: u.seq,
            price: u.price,
            leader: base.leader.take(),
            ends_at_us: u.ends_at_us,
            bids_accepted: u.bids_accepted,
            changed_at_us: u.accepted_at_us,
            time_delta,
            watchers: u.watchers,
            bidders_connected: u.bidders_connected,
        };
    }

    fn snapshot(&mut self, s: &pb::AuctionSnapshot, out: &mut Vec<u8>) -> Encoded {
        let Some(rules) = &s.rules else {
            return Encoded::Refused;
        };
        let winner = s.settlement.as_ref().and_then(|s| s.winner.as_ref());
        if rules.topic.len() > TOPIC_BYTES_MAX
            || too_long(s.leader.as_deref())
            || too_long(winner.map(|w| w.bidder_id.as_str()))
        {
            return Encoded::Refused;
        }
        let settled = s.phase == pb::Phase::Settled as i32;
        let key = Key {
            auction_id: rules.auction_id,
            topic: &rules.topic,
            epoch: s.epoch,
            seq: s.seq,
            price: s.price,
            leader: s.leader.as_deref(),
            ends_at_us: s.ends_at_us,
            bids_accepted: s.bids_accepted,
            changed_at_us: s.changed_at_us,
            watchers: s.watchers,
            bidders_connected: s.bidders_connected,
            closed: (s.close_reason != 0).then(|| (reason_byte(s.close_reason), 0)),
            settled: settled.then_some((0, winner)),
        };
        self.keyframe(&key, out)
    }

    fn keyframe(&mut self, key: &Key<'_>, out: &mut Vec<u8>) -> Encoded {
        let rec = &mut self.record;
        rec.clear();
        for field in [
            key.auction_id,
            key.epoch,
            key.seq,
            key.ends_at_us,
            key.bids_accepted,
            key.changed_at_us,
            key.price.unwrap_or(0),
        ] {
            rec.extend_from_slice(&field.to_be_bytes());
        }
        rec.extend_from_slice(&key.watchers.to_be_bytes());
        rec.extend_from_slice(&key.bidders_connected.to_be_bytes());
        let flags = [
            (key.price.is_some(), KEY_PRICE),
            (key.leader.is_some(), KEY_LEADER),
            (key.closed.is_some(), KEY_CLOSED),
            (key.settled.is_some(), KEY_SETTLED),
        ]
        .iter()
        .fold(
            0,
            |flags, &(set, flag)| if set { flags | flag } else { flags },
        );
        rec.push(flags);
        // Invariant: the caller checked the topic against TOPIC_BYTES_MAX (< 2^16).
        rec.extend_from_slice(&(key.topic.len() as u16).to_be_bytes());
        rec.extend_from_slice(key.topic.as_bytes());
        if let Some(leader) = key.leader {
            put_str8(rec, leader);
        }
        if let Some((reason, closed_at_us)) = key.closed {
            rec.push(reason);
            rec.extend_from_slice(&closed_at_us.to_be_bytes());
        }
        if let Some((settled_at_us, winner)) = key.settled {
            rec.extend_from_slice(&settled_at_us.to_be_bytes());
            put_winner(rec, winner);
        }
        self.sent.insert(
            key.auction_id,
            Sent {
                epoch: key.epoch,
                seq: key.seq,
                price: key.price,
                leader: key.leader.map(Arc::from),
                ends_at_us: key.ends_at_us,
                bids_accepted: key.bids_accepted,
                changed_at_us: key.changed_at_us,
                time_delta: 0,
                watchers: key.watchers,
                bidders_connected: key.bidders_connected,
            },
        );
        self.push_tlv(TLV_KEYFRAME, out);
        Encoded::Keyframe
    }

    fn closed(&mut self, c: &pb::AuctionClosed, out: &mut Vec<u8>) -> Encoded {
        if !self.advance(c.auction_id, c.epoch, c.seq) {
            return Encoded::Stale;
        }
        let rec = &mut self.record;
        rec.clear();
        put_event_head(rec, c.auction_id, c.epoch, c.seq);
        rec.push(reason_byte(c.reason));
        rec.extend_from_slice(&c.closed_at_us.to_be_bytes());
        self.push_tlv(TLV_CLOSED, out);
        Encoded::Closed
    }

    fn settled(&mut self, s: &pb::AuctionSettled, out: &mut Vec<u8>) -> Encoded {
        if too_long(s.winner.as_ref().map(|w| w.bidder_id.as_str())) {
            return Encoded::Refused;
        }
        if !self.advance(s.auction_id, s.epoch, s.seq) {
            return Encoded::Stale;
        }
        let rec = &mut self.record;
        rec.clear();
        put_event_head(rec, s.auction_id, s.epoch, s.seq);
        rec.extend_from_slice(&s.settled_at_us.to_be_bytes());
        put_winner(rec, s.winner.as_ref());
        self.push_tlv(TLV_SETTLED, out);
        Encoded::Settled
    }

    /// Moves an auction's base to a close or settlement at `(epoch, seq)`; `false` if that is
    /// not newer than what was sent. One from another epoch (or for an auction never sent)
    /// still goes out, and the auction's next update is a keyframe.
    fn advance(&mut self, auction: u64, epoch: u64, seq: u64) -> bool {
        match self.sent.get_mut(&auction) {
            Some(sent) if sent.epoch == epoch => {
                if seq <= sent.seq {
                    return false;
                }
                sent.seq = seq;
            }
            Some(_) => {
                self.sent.remove(&auction);
            }
            None => {}
        }
        true
    }

    /// Whether `record` plus `extra` bytes still fit the frame being built.
    fn fits(&self, extra: usize) -> bool {
        FRAME_HEADER_BYTES + self.body.len() + extra <= self.frame_bytes_max
    }

    /// Appends `record` as one TLV of type `kind`, sealing the frame first if it is full.
    fn push_tlv(&mut self, kind: u8, out: &mut Vec<u8>) {
        if !self.fits(TLV_HEADER_BYTES + self.record.len()) {
            self.flush(out);
        }
        self.run = None;
        self.body.push(kind);
        // Invariant: a record is at most KEYFRAME_BYTES_MAX < 2^16 bytes.
        self.body
            .extend_from_slice(&(self.record.len() as u16).to_be_bytes());
        self.body.extend_from_slice(&self.record);
    }

    /// Appends `record` to the open DELTAS TLV, or opens one (sealing the frame if full).
    fn push_delta(&mut self, out: &mut Vec<u8>) {
        let extra = self.record.len();
        let run = match self.run {
            Some(run) if self.fits(extra) => run,
            _ => {
                if !self.fits(TLV_HEADER_BYTES + extra) {
                    self.flush(out);
                }
                let run = self.body.len();
                self.body.extend_from_slice(&[TLV_DELTAS, 0, 0]);
                self.run = Some(run);
                run
            }
        };
        self.body.extend_from_slice(&self.record);
        // Invariant: the TLV lies within one frame, at most FRAME_BYTES_LIMIT bytes, so
        // its length fits 16 bits.
        let len = (self.body.len() - run - TLV_HEADER_BYTES) as u16;
        self.body[run + 1..run + 3].copy_from_slice(&len.to_be_bytes());
    }
}

fn too_long(bidder: Option<&str>) -> bool {
    bidder.is_some_and(|b| b.len() > BIDDER_BYTES_MAX)
}

/// A `CloseReason` number as one byte (an out-of-range number, never sent by the node,
/// becomes 0, "unspecified").
fn reason_byte(reason: i32) -> u8 {
    u8::try_from(reason).unwrap_or(0)
}

fn put_event_head(rec: &mut Vec<u8>, auction: u64, epoch: u64, seq: u64) {
    for field in [auction, epoch, seq] {
        rec.extend_from_slice(&field.to_be_bytes());
    }
}

fn put_winner(rec: &mut Vec<u8>, winner: Option<&pb::Winner>) {
    let Some(w) = winner else {
        rec.push(0);
        return;
    };
    rec.push(1);
    for field in [w.price, w.bid_id_hi, w.bid_id_lo] {
        rec.extend_from_slice(&field.to_be_bytes());
    }
    put_str8(rec, &w.bidder_id);
}

fn varint_len(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).div_ceil(7).max(1)
}
