//! Property tests of the edge codec against a reference model (issue 13 item 7):
//! - any sequence of updates over many auctions (conflation gaps, resubscribes, forgotten
//!   auctions, new epochs, huge and tiny prices, Dutch decreases, closes, settlements)
//!   decodes to exactly the states the model holds;
//! - arbitrary bytes, and arbitrary TLVs behind a valid checksum, never panic;
//! - a valid stream with one frame mutated never yields a state other than the encoder's
//!   input: the damaged frame is an error, and every state yielded after it is right.

use std::sync::Arc;

use gavel_edge_proto::*;
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body;
use proptest::prelude::*;

const FRAME_MAX: usize = 1024;
const AUCTIONS: u64 = 12;

/// One step of a generated trace.
#[derive(Clone, Debug)]
enum Op {
    /// A price update.
    Price(PriceOp),
    /// A full snapshot (a resubscribe or epoch change brings one).
    Snapshot {
        auction: u64,
        next_epoch: bool,
    },
    Close {
        auction: u64,
        reason: u8,
    },
    Settle {
        auction: u64,
        winner: Option<(u8, u64)>,
    },
    /// The peer asked for a keyframe of this auction.
    Forget(u64),
    /// End of a write batch.
    Flush,
    /// A new stream: new encoder, new decoder (a reconnect and resubscribe).
    Restart,
}

/// A price update: auction, seq step (0: stale), price change, leader, other fields.
#[derive(Clone, Copy, Debug)]
struct PriceOp {
    auction: u64,
    step: u64,
    price: PriceChange,
    leader: Option<u8>,
    time_step: u64,
    ends_step: i32,
    bids_step: u64,
    presence: Option<(u32, u32)>,
}

#[derive(Clone, Copy, Debug)]
enum PriceChange {
    Same,
    Up(u64),
    Down(u64),
    To(u64),
    Cleared,
}

fn auction_id() -> impl Strategy<Value = u64> {
    // Small ids and a few huge ones (varint lengths 1 and 10).
    (0..AUCTIONS).prop_map(|a| if a % 5 == 4 { u64::MAX - a } else { a })
}

fn price_change() -> impl Strategy<Value = PriceChange> {
    prop_oneof![
        Just(PriceChange::Same),
        (1..1_000_u64).prop_map(PriceChange::Up),
        (1..1_000_u64).prop_map(PriceChange::Down),
        any::<u64>().prop_map(PriceChange::To),
        Just(PriceChange::Cleared),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let price = (
        auction_id(),
        prop_oneof![8 => Just(1_u64), 2 => 0..5_u64, 1 => any::<u64>().prop_map(|s| s >> 1)],
        price_change(),
        prop::option::weighted(0.9, 0..80_u8),
        prop_oneof![Just(1_000_u64), 0..5_000_u64, any::<u64>()],
        prop_oneof![4 => Just(0), 1 => any::<i32>()],
        prop_oneof![Just(1_u64), 0..3_u64],
        prop::option::weighted(0.1, (any::<u32>(), 0..100_u32)),
    )
        .prop_map(
            |(auction, step, price, leader, time_step, ends_step, bids_step, presence)| {
                Op::Price(PriceOp {
                    auction,
                    step,
                    price,
                    leader,
                    time_step,
                    ends_step,
                    bids_step,
                    presence,
                })
            },
        );
    prop_oneof![
        30 => price,
        2 => (auction_id(), any::<bool>())
            .prop_map(|(auction, next_epoch)| Op::Snapshot { auction, next_epoch }),
        1 => (auction_id(), 0..5_u8).prop_map(|(auction, reason)| Op::Close { auction, reason }),
        1 => (auction_id(), prop::option::of((0..80_u8, any::<u64>())))
            .prop_map(|(auction, winner)| Op::Settle { auction, winner }),
        1 => auction_id().prop_map(Op::Forget),
        4 => Just(Op::Flush),
        1 => Just(Op::Restart),
    ]
}

fn bidder(n: u8) -> String {
    format!("bidder-{n:02}")
}

/// What the node knows of each auction: the model the decoder must reproduce.
#[derive(Default)]
struct Model {
    states: std::collections::HashMap<u64, AuctionState>,
}

impl Model {
    fn state(&mut self, auction: u64) -> AuctionState {
        self.states
            .entry(auction)
            .or_insert_with(|| AuctionState {
                auction_id: auction,
                topic: Arc::from(format!("energy.eu.de.a{auction}")),
                epoch: 1,
                seq: 1,
                price: Some(1_000),
                leader: None,
                ends_at_us: 1_764_241_200_000_000,
                bids_accepted: 0,
                changed_at_us: 1_764_237_600_000_000,
                watchers: 1,
                bidders_connected: 1,
                closed: None,
                settled: None,
            })
            .clone()
    }

    /// The message `op` stands for, given the model (which is moved on).
    fn message(&mut self, op: &Op) -> Option<pb::ServerMessage> {
        let body = match *op {
            Op::Price(ref p) => Body::PriceUpdate(self.price(p)),
            Op::Snapshot {
                auction,
                next_epoch,
            } => Body::AuctionSnapshot(self.snapshot(auction, next_epoch)),
            Op::Close { auction, .. } | Op::Settle { auction, .. }
                if self.state(auction).seq == u64::MAX =>
            {
                return None;
            }
            Op::Close { auction, reason } => {
                let mut s = self.state(auction);
                s.seq = s.seq.saturating_add(1);
                let closed_at_us = s.changed_at_us.wrapping_add(7);
                s.closed = Some(Closed {
                    reason,
                    closed_at_us,
                });
                let message = pb::AuctionClosed {
                    auction_id: auction,
                    epoch: s.epoch,
                    seq: s.seq,
                    reason: i32::from(reason),
                    closed_at_us,
                };
                self.states.insert(auction, s);
                Body::AuctionClosed(message)
            }
            Op::Settle { auction, winner } => Body::AuctionSettled(self.settle(auction, winner)),
            Op::Forget(_) | Op::Flush | Op::Restart => return None,
        };
        Some(pb::ServerMessage {
            request_id: 0,
            body: Some(body),
        })
    }

    fn price(&mut self, op: &PriceOp) -> pb::PriceUpdate {
        let PriceOp {
            auction,
            step,
            price,
            leader,
            time_step,
            ends_step,
            bids_step,
            presence,
        } = *op;
        let mut s = self.state(auction);
        if step == 0 || s.seq.checked_add(step).is_none() {
            // Stale: the same seq, so the same state (the encoder drops it if it sent it).
            return pb::PriceUpdate {
                auction_id: auction,
                topic: s.topic.to_string(),
                epoch: s.epoch,
                seq: s.seq,
                price: s.price,
                leader: s.leader.as_deref().map(str::to_owned),
                ends_at_us: s.ends_at_us,
                bids_accepted: s.bids_accepted,
                accepted_at_us: s.changed_at_us,
                watchers: s.watchers,
                bidders_connected: s.bidders_connected,
            };
        }
        let seq = s.seq + step;
        let new_price = match price {
            PriceChange::Same => s.price,
            PriceChange::Up(d) => Some(s.price.unwrap_or(0).wrapping_add(d)),
            PriceChange::Down(d) => Some(s.price.unwrap_or(0).wrapping_sub(d)),
            PriceChange::To(p) => Some(p),
            PriceChange::Cleared => None,
        };
        let (watchers, bidders) = presence.unwrap_or((s.watchers, s.bidders_connected));
        let update = pb::PriceUpdate {
            auction_id: auction,
            topic: s.topic.to_string(),
            epoch: s.epoch,
            seq,
            price: new_price,
            leader: leader.map(bidder),
            ends_at_us: s.ends_at_us.wrapping_add_signed(i64::from(ends_step)),
            bids_accepted: s.bids_accepted.wrapping_add(bids_step),
            accepted_at_us: s.changed_at_us.wrapping_add(time_step),
            watchers,
            bidders_connected: bidders,
        };
        {
            s.seq = seq;
            s.price = new_price;
            s.leader = update.leader.as_deref().map(Arc::from);
            s.ends_at_us = update.ends_at_us;
            s.bids_accepted = update.bids_accepted;
            s.changed_at_us = update.accepted_at_us;
            s.watchers = watchers;
            s.bidders_connected = bidders;
            self.states.insert(auction, s);
        }
        update
    }

    fn snapshot(&mut self, auction: u64, next_epoch: bool) -> pb::AuctionSnapshot {
        let mut s = self.state(auction);
        if next_epoch {
            s.epoch += 1;
            s.seq = 1;
            s.closed = None;
            s.settled = None;
        }
        let winner = s.settled.as_ref().and_then(|r| r.winner.clone());
        // A snapshot does not carry the times of a close or settlement.
        s.closed = s.closed.map(|c| Closed {
            closed_at_us: 0,
            ..c
        });
        s.settled = s.settled.map(|r| Settled {
            settled_at_us: 0,
            ..r
        });
        let message = pb::AuctionSnapshot {
            rules: Some(pb::AuctionRules {
                auction_id: auction,
                topic: s.topic.to_string(),
                ..pb::AuctionRules::default()
            }),
            epoch: s.epoch,
            seq: s.seq,
            phase: if s.settled.is_some() {
                pb::Phase::Settled as i32
            } else {
                pb::Phase::Open as i32
            },
            price: s.price,
            leader: s.leader.as_deref().map(str::to_owned),
            ends_at_us: s.ends_at_us,
            bids_accepted: s.bids_accepted,
            settlement: s.settled.as_ref().map(|_| pb::Settlement {
                winner: winner.map(|w| pb::Winner {
                    bidder_id: w.bidder_id.to_string(),
                    bid_id_hi: w.bid_id_hi,
                    bid_id_lo: w.bid_id_lo,
                    price: w.price,
                }),
            }),
            close_reason: s.closed.map_or(0, |c| i32::from(c.reason)),
            changed_at_us: s.changed_at_us,
            watchers: s.watchers,
            bidders_connected: s.bidders_connected,
            ..pb::AuctionSnapshot::default()
        };
        // A close reason of 0 is "not said": the keyframe carries no close then.
        if s.closed.is_some_and(|c| c.reason == 0) {
            s.closed = None;
        }
        self.states.insert(auction, s);
        message
    }

    fn settle(&mut self, auction: u64, winner: Option<(u8, u64)>) -> pb::AuctionSettled {
        let mut s = self.state(auction);
        s.seq = s.seq.saturating_add(1);
        let winner = winner.map(|(n, price)| Winner {
            bidder_id: Arc::from(bidder(n)),
            bid_id_hi: price ^ 1,
            bid_id_lo: u64::from(n),
            price,
        });
        let settled_at_us = s.changed_at_us.wrapping_add(9);
        s.settled = Some(Settled {
            settled_at_us,
            winner: winner.clone(),
        });
        let message = pb::AuctionSettled {
            auction_id: auction,
            epoch: s.epoch,
            seq: s.seq,
            settled_at_us,
            winner: winner.map(|w| pb::Winner {
                bidder_id: w.bidder_id.to_string(),
                bid_id_hi: w.bid_id_hi,
                bid_id_lo: w.bid_id_lo,
                price: w.price,
            }),
        };
        self.states.insert(auction, s);
        message
    }
}

/// What one record must decode to: the model's state, or (`None`) a close or settlement
/// for an auction the stream holds no keyframe of, which asks for one.
type Expect = Option<AuctionState>;

/// One stream's frames, each with what its records must decode to, in order.
struct Stream {
    frames: Vec<(Vec<u8>, Vec<Expect>)>,
}

/// Runs `ops` through the model and encoders; returns the streams (one per `Restart`).
fn encode_trace(ops: &[Op]) -> Vec<Stream> {
    let mut model = Model::default();
    let mut streams = vec![Stream { frames: Vec::new() }];
    let mut encoder = EdgeEncoder::new(FRAME_MAX);
    let mut pending: Vec<Expect> = Vec::new();
    let mut out = Vec::new();
    // Auctions the current stream's decoder holds (a keyframe went out on it).
    let mut held = std::collections::HashSet::new();
    for op in ops {
        let before = out.len();
        match op {
            Op::Forget(auction) => encoder.forget(*auction),
            Op::Flush => encoder.flush(&mut out),
            Op::Restart => {
                encoder.flush(&mut out);
                collect(&mut streams, &mut out, before, &mut pending);
                streams.push(Stream { frames: Vec::new() });
                encoder = EdgeEncoder::new(FRAME_MAX);
                held.clear();
                continue;
            }
            _ => {
                let auction = op_auction(op);
                let based = encoder.knows(auction);
                let Some(message) = model.message(op) else {
                    continue;
                };
                let encoded = encoder.encode(&message, &mut out);
                collect(&mut streams, &mut out, before, &mut pending);
                match encoded {
                    Encoded::Closed | Encoded::Settled if !based && !held.contains(&auction) => {
                        pending.push(None);
                    }
                    Encoded::Keyframe | Encoded::Delta | Encoded::Closed | Encoded::Settled => {
                        held.insert(auction);
                        let mut expected = model.state(auction);
                        if encoded == Encoded::Keyframe && matches!(op, Op::Price(_)) {
                            // A keyframe replaces the whole state: an update carries no
                            // close or settlement.
                            expected.closed = None;
                            expected.settled = None;
                            model.states.insert(auction, expected.clone());
                        }
                        pending.push(Some(expected));
                    }
                    Encoded::Stale => {}
                    other => panic!("{op:?} encoded as {other:?}"),
                }
                continue;
            }
        }
        collect(&mut streams, &mut out, before, &mut pending);
    }
    encoder.flush(&mut out);
    collect(&mut streams, &mut out, 0, &mut pending);
    streams
}

/// Moves a frame sealed into `out` since `before` to the current stream, with the states
/// pending before it.
fn collect(streams: &mut [Stream], out: &mut Vec<u8>, before: usize, pending: &mut Vec<Expect>) {
    if out.len() > before {
        let frame = std::mem::take(out);
        let stream = streams.last_mut().expect("at least one stream");
        stream.frames.push((frame, std::mem::take(pending)));
    }
}

fn op_auction(op: &Op) -> u64 {
    match *op {
        Op::Price(PriceOp { auction, .. })
        | Op::Snapshot { auction, .. }
        | Op::Close { auction, .. }
        | Op::Settle { auction, .. }
        | Op::Forget(auction) => auction,
        Op::Flush | Op::Restart => unreachable!("no auction"),
    }
}

/// A mutation of one frame's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutate(frame: &mut Vec<u8>, mutation: &Mutation) {
    let at = |i: usize| i % frame.len();
    match *mutation {
        Mutation::FlipBit(i, bit) => {
            let i = at(i);
            frame[i] ^= 1 << (bit % 8);
        }
        Mutation::SetByte(i, byte) => {
            let i = at(i);
            if frame[i] == byte {
                frame[i] ^= 0xff;
            } else {
                frame[i] = byte;
            }
        }
        Mutation::Truncate(i) => frame.truncate(at(i)),
        Mutation::Insert(i, byte) => frame.insert(at(i), byte),
        Mutation::Remove(i) => {
            frame.remove(at(i));
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

/// Decodes a stream; checks every yielded state against the model's for its record. With
/// `damaged`, that frame must be refused. Returns how many states were checked.
fn check_stream(
    stream: &Stream,
    damaged: Option<(usize, &Mutation)>,
) -> Result<usize, TestCaseError> {
    let mut decoder = EdgeDecoder::new(FRAME_MAX, 1_000);
    let mut checked = 0;
    for (i, (frame, expected)) in stream.frames.iter().enumerate() {
        let mut frame = frame.clone();
        let is_damaged = damaged.is_some_and(|(d, _)| d == i);
        if let Some((_, m)) = damaged.filter(|_| is_damaged) {
            mutate(&mut frame, m);
        }
        let mut out = Vec::new();
        let result = decoder.decode_frame(&frame, &mut out);
        if is_damaged {
            prop_assert!(result.is_err(), "a damaged frame decoded: {out:?}");
            prop_assert!(out.is_empty(), "nothing of a refused frame is applied");
            continue;
        }
        if damaged.is_none() {
            prop_assert_eq!(result, Ok(()));
        }
        if result.is_err() {
            continue;
        }
        prop_assert_eq!(out.len(), expected.len());
        for (got, want) in out.iter().zip(expected) {
            match (got, want) {
                (Decoded::State(state), Some(want)) => {
                    prop_assert_eq!(state, want);
                    checked += 1;
                }
                (
                    Decoded::KeyframeNeeded {
                        error: EdgeError::NoKeyframe { .. },
                        ..
                    },
                    None,
                ) => {}
                (Decoded::KeyframeNeeded { error, .. }, _) => {
                    prop_assert!(damaged.is_some(), "{error} on an intact stream");
                    prop_assert!(error.is_per_auction());
                }
                (Decoded::State(state), None) => {
                    prop_assert!(false, "a state without a keyframe: {state:?}");
                }
            }
        }
    }
    Ok(checked)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_trace_decodes_to_the_models_states(ops in prop::collection::vec(op(), 1..400)) {
        for stream in encode_trace(&ops) {
            check_stream(&stream, None)?;
        }
    }

    #[test]
    fn a_damaged_frame_is_refused_and_no_wrong_state_follows(
        ops in prop::collection::vec(op(), 1..200),
        pick in any::<usize>(),
        mutation in mutation(),
    ) {
        let streams = encode_trace(&ops);
        let stream = &streams[pick % streams.len()];
        if !stream.frames.is_empty() {
            let damaged = (pick / 7) % stream.frames.len();
            check_stream(stream, Some((damaged, &mutation)))?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut decoder = EdgeDecoder::new(FRAME_MAX, 64);
        let mut out = Vec::new();
        let _ = frame_len(&bytes, FRAME_MAX);
        let _ = decoder.decode_frame(&bytes, &mut out);
        let mut versioned = bytes;
        if let Some(first) = versioned.first_mut() {
            *first = VERSION;
        }
        let _ = decoder.decode_frame(&versioned, &mut out);
    }

    /// Past the checksum: arbitrary TLVs in a correctly checksummed frame exercise every
    /// parser path; none panics, and a frame-level error leaves no auction behind.
    #[test]
    fn arbitrary_tlvs_behind_a_valid_checksum_never_panic(
        tlvs in prop::collection::vec(
            (prop_oneof![Just(1_u8), Just(2), Just(3), Just(4), any::<u8>()],
             prop::collection::vec(any::<u8>(), 0..120)),
            0..8,
        ),
        forged_len in prop::option::of(any::<u16>()),
    ) {
        let mut body = Vec::new();
        for (kind, value) in &tlvs {
            body.push(*kind);
            let len = forged_len.unwrap_or(value.len() as u16);
            body.extend(len.to_be_bytes());
            body.extend(value);
        }
        body.truncate(FRAME_MAX - FRAME_HEADER_BYTES);
        let mut head = vec![VERSION, 0, 0];
        head.extend((body.len() as u16).to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &body);
        head.extend(crc.to_be_bytes());
        head.extend(&body);
        let mut decoder = EdgeDecoder::new(FRAME_MAX, 64);
        let mut out = Vec::new();
        if decoder.decode_frame(&head, &mut out).is_err() {
            prop_assert_eq!(decoder.auctions(), 0);
        }
    }
}
