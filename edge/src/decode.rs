//! The decoder of one edge stream: frames in, full auction states out.
//!
//! A frame is checked whole before anything in it is applied: its length against the
//! limit and the bytes present, its version, its checksum, its frame number. A frame that
//! fails any check changes no state except that every auction's state is dropped (a lost
//! or damaged frame may have carried deltas the next ones build on). Inside a checked
//! frame, an update that cannot be applied to its auction (no keyframe, a close that does
//! not follow) drops that auction and is reported as [`Decoded::KeyframeNeeded`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::wire::*;
use crate::{AuctionState, Closed, EdgeError, Settled, Winner};

/// What one frame did to one auction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The auction's full state after the update.
    State(AuctionState),
    /// The update could not be applied: the auction's state was dropped and it needs a
    /// keyframe (ask the node for one; until then its updates are refused the same way).
    KeyframeNeeded {
        /// The auction.
        auction: u64,
        /// Why.
        error: EdgeError,
    },
}

/// Where a frame ends in `bytes` (a stream's buffered bytes): `None` until its header's
/// first five bytes are there. A declared length above `frame_bytes_max` is refused before
/// the frame's bytes arrive, as is an unknown version.
pub fn frame_len(bytes: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, EdgeError> {
    let Some(&version) = bytes.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(EdgeError::UnknownVersion(version));
    }
    let Some(len) = bytes.get(3..5) else {
        return Ok(None);
    };
    let total = FRAME_HEADER_BYTES + usize::from(u16::from_be_bytes([len[0], len[1]]));
    if total > frame_bytes_max {
        return Err(EdgeError::ForgedLength {
            declared: total,
            limit: frame_bytes_max,
        });
    }
    Ok(Some(total))
}

/// One auction as decoded: its state and the base of its next timestamp.
#[derive(Debug)]
struct Entry {
    state: AuctionState,
    time_delta: i64,
}

/// A delta record as read, before it is applied.
struct Delta {
    auction: u64,
    flags: u8,
    gap: u64,
    dod: i64,
    price: i64,
    /// The leader byte (when `D_LEADER`).
    leader: u8,
    ends: i64,
    bids: u64,
    watchers: u32,
    bidders: u32,
}

/// The edge decoder of one stream.
#[derive(Debug)]
pub struct EdgeDecoder {
    frame_bytes_max: usize,
    auctions_max: usize,
    next_frame: u16,
    auctions: HashMap<u64, Entry, foldhash::fast::RandomState>,
    leaders: Vec<Option<Arc<str>>>,
}

impl EdgeDecoder {
    /// A decoder of a new stream (its first frame is number 0) refusing frames above
    /// `frame_bytes_max` bytes and holding at most `auctions_max` auctions.
    pub fn new(frame_bytes_max: usize, auctions_max: usize) -> EdgeDecoder {
        EdgeDecoder {
            frame_bytes_max,
            auctions_max,
            next_frame: 0,
            auctions: HashMap::default(),
            leaders: vec![None; LEADER_SLOTS],
        }
    }

    /// The state of `auction`, if held.
    pub fn state(&self, auction: u64) -> Option<&AuctionState> {
        self.auctions.get(&auction).map(|entry| &entry.state)
    }

    /// Auctions held.
    pub fn auctions(&self) -> usize {
        self.auctions.len()
    }

    /// Decodes one whole frame (exactly its bytes), appending what it did to `out`. A
    /// frame-level error rejects the frame and drops every auction's state.
    pub fn decode_frame(&mut self, frame: &[u8], out: &mut Vec<Decoded>) -> Result<(), EdgeError> {
        let result = self.check(frame).and_then(|body| self.apply(body, out));
        result.inspect_err(|_| {
            self.auctions.clear();
            self.leaders.fill(None);
        })
    }

    /// The body of a frame that passed every frame-level check.
    fn check<'a>(&mut self, frame: &'a [u8]) -> Result<&'a [u8], EdgeError> {
        let total = frame_len(frame, self.frame_bytes_max)?.ok_or(EdgeError::Truncated {
            needed: FRAME_HEADER_BYTES,
            got: frame.len(),
        })?;
        if frame.len() < total {
            return Err(EdgeError::Truncated {
                needed: total,
                got: frame.len(),
            });
        }
        if frame.len() > total {
            return Err(EdgeError::ForgedLength {
                declared: total,
                limit: frame.len(),
            });
        }
        let sent = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]);
        let computed = checksum(&frame[..5], &frame[FRAME_HEADER_BYTES..]);
        if sent != computed {
            return Err(EdgeError::Corrupt { sent, computed });
        }
        let got = u16::from_be_bytes([frame[1], frame[2]]);
        let expected = self.next_frame;
        // Later frames are numbered from this one, so one loss is reported once.
        self.next_frame = got.wrapping_add(1);
        if got != expected {
            return Err(EdgeError::FrameGap { expected, got });
        }
        Ok(&frame[FRAME_HEADER_BYTES..])
    }

    fn apply(&mut self, body: &[u8], out: &mut Vec<Decoded>) -> Result<(), EdgeError> {
        let mut tlvs = Reader::new(body, "TLV header past the frame's end");
        while !tlvs.is_empty() {
            let kind = tlvs.u8()?;
            let len = usize::from(tlvs.u16()?);
            let left = tlvs.remaining();
            if len > left {
                return Err(EdgeError::ForgedLength {
                    declared: len,
                    limit: left,
                });
            }
            let value = tlvs.take(len)?;
            match kind {
                TLV_KEYFRAME => self.keyframe(value, out)?,
                TLV_DELTAS => self.deltas(value, out)?,
                TLV_CLOSED => self.closed(value, out)?,
                TLV_SETTLED => self.settled(value, out)?,
                // Unknown TLVs carry nothing the known ones depend on: skipped by length.
                _ => {}
            }
        }
        Ok(())
    }

    fn keyframe(&mut self, value: &[u8], out: &mut Vec<Decoded>) -> Result<(), EdgeError> {
        let mut r = Reader::new(value, "keyframe shorter than its fields");
        if value.len() < KEYFRAME_FIXED_BYTES {
            return Err(EdgeError::Malformed("keyframe shorter than its fields"));
        }
        let (auction_id, epoch, seq) = (r.u64()?, r.u64()?, r.u64()?);
        let (ends_at_us, bids_accepted, changed_at_us) = (r.u64()?, r.u64()?, r.u64()?);
        let price = r.u64()?;
        let watchers = r.u32()?;
        let bidders_connected = r.u32()?;
        let flags = r.u8()?;
        let topic_len = usize::from(r.u16()?);
        let topic = Arc::from(r.str(topic_len)?);
        let leader = if flags & KEY_LEADER != 0 {
            let len = usize::from(r.u8()?);
            Some(Arc::from(r.str(len)?))
        } else {
            None
        };
        let closed = if flags & KEY_CLOSED != 0 {
            Some(Closed {
                reason: r.u8()?,
                closed_at_us: r.u64()?,
            })
        } else {
            None
        };
        let settled = if flags & KEY_SETTLED != 0 {
            Some(read_settled(&mut r)?)
        } else {
            None
        };
        // Bytes after the fields version 1 knows belong to later versions: ignored.
        let state = AuctionState {
            auction_id,
            topic,
            epoch,
            seq,
            price: (flags & KEY_PRICE != 0).then_some(price),
            leader,
            ends_at_us,
            bids_accepted,
            changed_at_us,
            watchers,
            bidders_connected,
            closed,
            settled,
        };
        if !self.auctions.contains_key(&auction_id) && self.auctions.len() >= self.auctions_max {
            let error = EdgeError::TooManyAuctions {
                auction: auction_id,
                max: self.auctions_max,
            };
            out.push(Decoded::KeyframeNeeded {
                auction: auction_id,
                error,
            });
            return Ok(());
        }
        out.push(Decoded::State(state.clone()));
        self.auctions.insert(
            auction_id,
            Entry {
                state,
                time_delta: 0,
            },
        );
        Ok(())
    }

    fn deltas(&mut self, value: &[u8], out: &mut Vec<Decoded>) -> Result<(), EdgeError> {
        let mut r = Reader::new(value, "delta record past its TLV");
        while !r.is_empty() {
            let delta = self.read_delta(&mut r)?;
            let Some(entry) = self.auctions.get_mut(&delta.auction) else {
                out.push(Decoded::KeyframeNeeded {
                    auction: delta.auction,
                    error: EdgeError::NoKeyframe {
                        auction: delta.auction,
                    },
                });
                continue;
            };
            apply_delta(entry, &delta, &self.leaders)?;
            out.push(Decoded::State(entry.state.clone()));
        }
        Ok(())
    }

    /// Reads one delta record; a leader definition in it takes its slot at once (the
    /// encoder's table changed whether or not the record applies).
    fn read_delta(&mut self, r: &mut Reader<'_>) -> Result<Delta, EdgeError> {
        let auction = r.varint()?;
        let flags = r.u8()?;
        if flags & D_RESERVED != 0 {
            return Err(EdgeError::Malformed("reserved delta flag set"));
        }
        if flags & D_PRICE != 0 && flags & D_PRICE_NONE != 0 {
            return Err(EdgeError::Malformed("price both set and cleared"));
        }
        let gap = if flags & D_SEQ != 0 { r.varint()? } else { 1 };
        if gap < 1 || (flags & D_SEQ != 0 && gap == 1) {
            return Err(EdgeError::Malformed("explicit seq gap below 2"));
        }
        let dod = r.zigzag()?;
        let price = if flags & D_PRICE != 0 { r.zigzag()? } else { 0 };
        let leader = if flags & D_LEADER != 0 {
            self.read_leader(r)?
        } else {
            LEADER_NONE
        };
        let ends = if flags & D_ENDS != 0 { r.zigzag()? } else { 0 };
        let bids = if flags & D_BIDS != 0 {
            r.varint()?
        } else {
            gap
        };
        let (watchers, bidders) = if flags & D_PRESENCE != 0 {
            (read_u32(r)?, read_u32(r)?)
        } else {
            (0, 0)
        };
        Ok(Delta {
            auction,
            flags,
            gap,
            dod,
            price,
            leader,
            ends,
            bids,
            watchers,
            bidders,
        })
    }

    /// Reads a leader byte, applying a definition; returns the slot, or `LEADER_NONE`.
    fn read_leader(&mut self, r: &mut Reader<'_>) -> Result<u8, EdgeError> {
        let byte = r.u8()?;
        if byte == LEADER_NONE {
            return Ok(LEADER_NONE);
        }
        let slot = byte & LEADER_SLOT_MASK;
        match byte & !LEADER_SLOT_MASK {
            0 => {}
            LEADER_DEFINE => {
                let len = usize::from(r.u8()?);
                self.leaders[usize::from(slot)] = Some(Arc::from(r.str(len)?));
            }
            _ => return Err(EdgeError::Malformed("leader byte with reserved bits")),
        }
        Ok(slot)
    }

    fn closed(&mut self, value: &[u8], out: &mut Vec<Decoded>) -> Result<(), EdgeError> {
        let mut r = Reader::new(value, "close shorter than its fields");
        let (auction, epoch, seq) = (r.u64()?, r.u64()?, r.u64()?);
        let closed = Closed {
            reason: r.u8()?,
            closed_at_us: r.u64()?,
        };
        self.event(auction, epoch, seq, out, |state| {
            state.closed = Some(closed)
        });
        Ok(())
    }

    fn settled(&mut self, value: &[u8], out: &mut Vec<Decoded>) -> Result<(), EdgeError> {
        let mut r = Reader::new(value, "settlement shorter than its fields");
        let (auction, epoch, seq) = (r.u64()?, r.u64()?, r.u64()?);
        let settled = read_settled(&mut r)?;
        self.event(auction, epoch, seq, out, |state| {
            state.settled = Some(settled)
        });
        Ok(())
    }

    /// Applies a close or settlement at `(epoch, seq)` to its auction, which must hold an
    /// older sequence number of the same epoch.
    fn event(
        &mut self,
        auction: u64,
        epoch: u64,
        seq: u64,
        out: &mut Vec<Decoded>,
        set: impl FnOnce(&mut AuctionState),
    ) {
        let error = match self.auctions.get_mut(&auction) {
            None => EdgeError::NoKeyframe { auction },
            Some(entry) if entry.state.epoch == epoch && entry.state.seq < seq => {
                entry.state.seq = seq;
                set(&mut entry.state);
                out.push(Decoded::State(entry.state.clone()));
                return;
            }
            Some(entry) => EdgeError::SeqGap {
                auction,
                epoch: entry.state.epoch,
                seq: entry.state.seq,
                got_epoch: epoch,
                got_seq: seq,
            },
        };
        self.auctions.remove(&auction);
        out.push(Decoded::KeyframeNeeded { auction, error });
    }
}

/// Applies a delta to its auction's entry (all or nothing).
fn apply_delta(
    entry: &mut Entry,
    d: &Delta,
    leaders: &[Option<Arc<str>>],
) -> Result<(), EdgeError> {
    let state = &mut entry.state;
    let seq = state
        .seq
        .checked_add(d.gap)
        .ok_or(EdgeError::Malformed("seq above u64"))?;
    let leader = match (d.flags & D_LEADER != 0, d.leader) {
        (false, _) => state.leader.clone(),
        (true, LEADER_NONE) => None,
        (true, slot) => Some(
            leaders[usize::from(slot)]
                .clone()
                .ok_or(EdgeError::Malformed("leader slot never defined"))?,
        ),
    };
    let time_delta = entry.time_delta.wrapping_add(d.dod);
    entry.time_delta = time_delta;
    state.seq = seq;
    state.changed_at_us = state.changed_at_us.wrapping_add(time_delta as u64);
    if d.flags & D_PRICE != 0 {
        state.price = Some(state.price.unwrap_or(0).wrapping_add(d.price as u64));
    } else if d.flags & D_PRICE_NONE != 0 {
        state.price = None;
    }
    state.leader = leader;
    state.ends_at_us = state.ends_at_us.wrapping_add(d.ends as u64);
    state.bids_accepted = state.bids_accepted.wrapping_add(d.bids);
    if d.flags & D_PRESENCE != 0 {
        state.watchers = d.watchers;
        state.bidders_connected = d.bidders;
    }
    Ok(())
}

fn read_u32(r: &mut Reader<'_>) -> Result<u32, EdgeError> {
    u32::try_from(r.varint()?).map_err(|_| EdgeError::Malformed("presence count above u32"))
}

fn read_settled(r: &mut Reader<'_>) -> Result<Settled, EdgeError> {
    let settled_at_us = r.u64()?;
    let winner = match r.u8()? {
        0 => None,
        1 => {
            let (price, bid_id_hi, bid_id_lo) = (r.u64()?, r.u64()?, r.u64()?);
            let len = usize::from(r.u8()?);
            Some(Winner {
                bidder_id: Arc::from(r.str(len)?),
                bid_id_hi,
                bid_id_lo,
                price,
            })
        }
        _ => return Err(EdgeError::Malformed("winner flag neither 0 nor 1")),
    };
    Ok(Settled {
        settled_at_us,
        winner,
    })
}
