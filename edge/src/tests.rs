//! Encoder ↔ decoder unit tests: the delta rules, frame bounds, and one test per error kind.

use gavel_proto::doc_example::documented_hex;
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body;

use crate::wire::{TLV_DELTAS, TLV_KEYFRAME, checksum};
use crate::*;

const MAX: usize = 4096;
const T0: u64 = 1_764_237_600_000_000;

fn msg(body: Body) -> pb::ServerMessage {
    pb::ServerMessage {
        request_id: 0,
        body: Some(body),
    }
}

fn price(auction: u64, seq: u64, price: u64, leader: &str) -> pb::ServerMessage {
    msg(Body::PriceUpdate(pb::PriceUpdate {
        auction_id: auction,
        topic: format!("energy.eu.de.a{auction}"),
        epoch: 1,
        seq,
        price: Some(price),
        leader: Some(leader.to_owned()),
        ends_at_us: T0 + 3_600_000_000,
        bids_accepted: seq - 1,
        accepted_at_us: T0 + seq * 1_000 + seq % 3,
        watchers: 3,
        bidders_connected: 2,
    }))
}

fn closed(auction: u64, seq: u64) -> pb::ServerMessage {
    msg(Body::AuctionClosed(pb::AuctionClosed {
        auction_id: auction,
        epoch: 1,
        seq,
        reason: pb::CloseReason::EndReached as i32,
        closed_at_us: T0 + 9,
    }))
}

/// Encodes `messages` as one batch (flushed), returning the frames.
fn frames(encoder: &mut EdgeEncoder, messages: &[pb::ServerMessage]) -> Vec<Vec<u8>> {
    let mut bytes = Vec::new();
    for message in messages {
        encoder.encode(message, &mut bytes);
    }
    encoder.flush(&mut bytes);
    split(&bytes)
}

fn split(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some(len) = frame_len(bytes, FRAME_BYTES_LIMIT).unwrap() {
        frames.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    assert!(bytes.is_empty(), "whole frames only");
    frames
}

fn decode(decoder: &mut EdgeDecoder, frame: &[u8]) -> Result<Vec<Decoded>, EdgeError> {
    let mut out = Vec::new();
    decoder.decode_frame(frame, &mut out).map(|()| out)
}

/// A frame of `body` numbered `no`, with a correct checksum.
fn seal(no: u16, body: &[u8]) -> Vec<u8> {
    let mut head = vec![VERSION];
    head.extend(no.to_be_bytes());
    head.extend((body.len() as u16).to_be_bytes());
    let crc = checksum(&head, body);
    head.extend(crc.to_be_bytes());
    head.extend(body);
    head
}

fn prices(decoded: &[Decoded]) -> Vec<(u64, u64, Option<u64>)> {
    decoded
        .iter()
        .map(|d| match d {
            Decoded::State(s) => (s.auction_id, s.seq, s.price),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn a_keyframe_then_deltas_give_back_every_field() {
    let mut encoder = EdgeEncoder::new(MAX);
    let updates: Vec<_> = (1..=6)
        .map(|seq| price(7, seq, 1_000 + seq * 10, ["a", "b"][seq as usize % 2]))
        .collect();
    let mut encoded = Vec::new();
    let mut bytes = Vec::new();
    for update in &updates {
        encoded.push(encoder.encode(update, &mut bytes));
    }
    encoder.flush(&mut bytes);
    assert_eq!(encoded[0], Encoded::Keyframe);
    assert!(encoded[1..].iter().all(|e| *e == Encoded::Delta));
    let batch = split(&bytes);
    assert_eq!(batch.len(), 1, "one frame carries them all");
    let mut decoder = EdgeDecoder::new(MAX, 16);
    let out = decode(&mut decoder, &batch[0]).unwrap();
    for (decoded, update) in out.iter().zip(&updates) {
        let (Decoded::State(state), Some(Body::PriceUpdate(u))) = (decoded, &update.body) else {
            panic!("a state per update");
        };
        assert_eq!(state.seq, u.seq);
        assert_eq!(state.price, u.price);
        assert_eq!(state.leader.as_deref(), u.leader.as_deref());
        assert_eq!(state.changed_at_us, u.accepted_at_us);
        assert_eq!(state.bids_accepted, u.bids_accepted);
        assert_eq!(&*state.topic, u.topic);
    }
    // Consecutive deltas with an unchanged presence are a handful of bytes each.
    let more: Vec<_> = (7..=11)
        .map(|seq| price(7, seq, 1_000 + seq * 10, "a"))
        .collect();
    let deltas = &frames(&mut encoder, &more)[0];
    let per_delta = (deltas.len() - FRAME_HEADER_BYTES - 3) / more.len();
    assert!(per_delta <= 6, "{per_delta} bytes per update");
    assert_eq!(prices(&decode(&mut decoder, deltas).unwrap()).len(), 5);
}

#[test]
fn conflated_gaps_decreases_and_cleared_prices_round_trip() {
    let mut encoder = EdgeEncoder::new(MAX);
    let mut dutch = price(3, 2, 900, "x");
    let seqs_prices = [(2, 900), (5, 850), (6, 851), (40, 12), (41, u64::MAX >> 2)];
    let mut messages = Vec::new();
    for (seq, p) in seqs_prices {
        if let Some(Body::PriceUpdate(u)) = &mut dutch.body {
            u.seq = seq;
            u.price = Some(p);
            u.bids_accepted = 0;
            u.accepted_at_us = T0 - seq * 7;
        }
        messages.push(dutch.clone());
    }
    if let Some(Body::PriceUpdate(u)) = &mut dutch.body {
        u.seq = 42;
        u.price = None;
        u.leader = None;
    }
    messages.push(dutch.clone());
    let frames = frames(&mut encoder, &messages);
    let mut decoder = EdgeDecoder::new(MAX, 16);
    let out = decode(&mut decoder, &frames[0]).unwrap();
    let mut expected: Vec<_> = seqs_prices.iter().map(|&(s, p)| (3, s, Some(p))).collect();
    expected.push((3, 42, None));
    assert_eq!(prices(&out), expected);
    let last = decoder.state(3).unwrap();
    assert_eq!(last.leader, None);
    assert_eq!(last.bids_accepted, 0);
    assert_eq!(last.changed_at_us, T0 - 41 * 7);
}

#[test]
fn stale_updates_are_not_sent_and_a_new_epoch_is_a_keyframe() {
    let mut encoder = EdgeEncoder::new(MAX);
    let mut out = Vec::new();
    assert_eq!(
        encoder.encode(&price(1, 5, 10, "a"), &mut out),
        Encoded::Keyframe
    );
    assert_eq!(
        encoder.encode(&price(1, 5, 10, "a"), &mut out),
        Encoded::Stale
    );
    assert_eq!(
        encoder.encode(&price(1, 4, 10, "a"), &mut out),
        Encoded::Stale
    );
    let mut next_epoch = price(1, 1, 10, "a");
    if let Some(Body::PriceUpdate(u)) = &mut next_epoch.body {
        u.epoch = 2;
    }
    assert_eq!(encoder.encode(&next_epoch, &mut out), Encoded::Keyframe);
    encoder.forget(1);
    assert_eq!(
        encoder.encode(&price(1, 2, 11, "a"), &mut out),
        Encoded::Keyframe
    );
    let pong = msg(Body::Pong(pb::Pong::default()));
    assert_eq!(encoder.encode(&pong, &mut out), Encoded::Ignored);
    let long = price(1, 3, 12, &"l".repeat(BIDDER_BYTES_MAX + 1));
    assert_eq!(encoder.encode(&long, &mut out), Encoded::Refused);
}

#[test]
fn frames_stay_within_their_byte_bound() {
    let mut encoder = EdgeEncoder::new(FRAME_BYTES_MIN);
    let messages: Vec<_> = (1..=300)
        .flat_map(|a| [price(a, 1, a, "lead"), price(a, 2, a + 1, "other")])
        .collect();
    let frames = frames(&mut encoder, &messages);
    assert!(frames.len() > 10, "{} frames", frames.len());
    let mut decoder = EdgeDecoder::new(FRAME_BYTES_MIN, 1_000);
    let mut states = 0;
    for frame in &frames {
        assert!(frame.len() <= FRAME_BYTES_MIN, "{} bytes", frame.len());
        states += decode(&mut decoder, frame).unwrap().len();
    }
    assert_eq!(states, messages.len());
    assert_eq!(decoder.state(300).unwrap().price, Some(301));
}

#[test]
fn the_leader_table_recycles_its_slots_without_mixing_leaders() {
    let mut encoder = EdgeEncoder::new(MAX);
    let messages: Vec<_> = (1..=200)
        .map(|seq| price(seq % 5 + 1, seq, seq, &format!("bidder-{}", seq % 97)))
        .collect();
    let mut decoder = EdgeDecoder::new(MAX, 16);
    for chunk in messages.chunks(7) {
        for frame in frames(&mut encoder, chunk) {
            for (decoded, message) in decode(&mut decoder, &frame).unwrap().iter().zip(chunk) {
                let (Decoded::State(state), Some(Body::PriceUpdate(u))) = (decoded, &message.body)
                else {
                    panic!("a state per update");
                };
                assert_eq!(state.leader.as_deref(), u.leader.as_deref());
            }
        }
    }
}

#[test]
fn closes_settlements_and_settled_snapshots_carry_their_result() {
    let winner = pb::Winner {
        bidder_id: "w".into(),
        bid_id_hi: 1,
        bid_id_lo: 2,
        price: 300,
    };
    let settled = msg(Body::AuctionSettled(pb::AuctionSettled {
        auction_id: 4,
        epoch: 1,
        seq: 4,
        settled_at_us: T0 + 10,
        winner: Some(winner.clone()),
    }));
    let mut encoder = EdgeEncoder::new(MAX);
    let messages = [price(4, 2, 300, "w"), closed(4, 3), settled];
    let frame = &frames(&mut encoder, &messages)[0];
    let mut decoder = EdgeDecoder::new(MAX, 16);
    decode(&mut decoder, frame).unwrap();
    let state = decoder.state(4).unwrap().clone();
    assert_eq!(state.seq, 4);
    assert_eq!(
        state.closed,
        Some(Closed {
            reason: 1,
            closed_at_us: T0 + 9
        })
    );
    let result = state.settled.clone().unwrap();
    assert_eq!(result.winner.unwrap().bidder_id.as_ref(), "w");
    // A snapshot of the settled auction, to a new stream, says the same in one keyframe.
    let snapshot = msg(Body::AuctionSnapshot(pb::AuctionSnapshot {
        rules: Some(pb::AuctionRules {
            auction_id: 4,
            topic: state.topic.to_string(),
            ..pb::AuctionRules::default()
        }),
        epoch: 1,
        seq: 4,
        phase: pb::Phase::Settled as i32,
        price: Some(300),
        leader: Some("w".into()),
        ends_at_us: state.ends_at_us,
        bids_accepted: state.bids_accepted,
        settlement: Some(pb::Settlement {
            winner: Some(winner),
        }),
        close_reason: pb::CloseReason::EndReached as i32,
        changed_at_us: state.changed_at_us,
        watchers: 3,
        bidders_connected: 2,
        ..pb::AuctionSnapshot::default()
    }));
    let mut encoder = EdgeEncoder::new(MAX);
    let frame = &frames(&mut encoder, &[snapshot])[0];
    let mut decoder = EdgeDecoder::new(MAX, 16);
    let out = decode(&mut decoder, frame).unwrap();
    let Decoded::State(from_snapshot) = &out[0] else {
        panic!("a state");
    };
    assert_eq!(from_snapshot.settled.as_ref().unwrap().settled_at_us, 0);
    assert_eq!(from_snapshot.closed.unwrap().reason, 1);
    assert_eq!(from_snapshot.price, state.price);
}

/// Two frames: a keyframe of auction 1, then a delta of it.
fn two_frames() -> (Vec<u8>, Vec<u8>) {
    let mut encoder = EdgeEncoder::new(MAX);
    let first = frames(&mut encoder, &[price(1, 1, 100, "a")]).remove(0);
    let second = frames(&mut encoder, &[price(1, 2, 105, "b")]).remove(0);
    (first, second)
}

#[test]
fn a_truncated_frame_is_refused_and_drops_every_auction() {
    let (first, second) = two_frames();
    let mut decoder = EdgeDecoder::new(MAX, 16);
    decode(&mut decoder, &first).unwrap();
    let short = &second[..second.len() - 1];
    assert_eq!(
        decode(&mut decoder, short),
        Err(EdgeError::Truncated {
            needed: second.len(),
            got: second.len() - 1
        })
    );
    assert_eq!(decoder.auctions(), 0, "the delta chain is broken");
    assert_eq!(
        decode(&mut EdgeDecoder::new(MAX, 16), &first[..4]),
        Err(EdgeError::Truncated { needed: 9, got: 4 })
    );
}

#[test]
fn an_unknown_version_is_refused() {
    let (mut first, _) = two_frames();
    first[0] = 2;
    assert_eq!(
        decode(&mut EdgeDecoder::new(MAX, 16), &first),
        Err(EdgeError::UnknownVersion(2))
    );
    assert_eq!(frame_len(&[9], MAX), Err(EdgeError::UnknownVersion(9)));
}

#[test]
fn forged_lengths_are_refused_before_buffering() {
    let (first, _) = two_frames();
    let mut forged = first.clone();
    forged[3..5].copy_from_slice(&u16::MAX.to_be_bytes());
    let declared = FRAME_HEADER_BYTES + usize::from(u16::MAX);
    let error = EdgeError::ForgedLength {
        declared,
        limit: MAX,
    };
    assert_eq!(frame_len(&forged[..5], MAX), Err(error));
    assert_eq!(decode(&mut EdgeDecoder::new(MAX, 16), &forged), Err(error));
    // Bytes beyond the declared end.
    let mut longer = first.clone();
    longer.push(0);
    assert!(matches!(
        decode(&mut EdgeDecoder::new(MAX, 16), &longer),
        Err(EdgeError::ForgedLength { .. })
    ));
    // A TLV claiming more than its (checksummed) frame holds.
    let body = [TLV_KEYFRAME, 0x01, 0x00, 0xaa];
    assert_eq!(
        decode(&mut EdgeDecoder::new(MAX, 16), &seal(0, &body)),
        Err(EdgeError::ForgedLength {
            declared: 256,
            limit: 1
        })
    );
}

#[test]
fn a_corrupt_frame_never_yields_a_price() {
    let (first, second) = two_frames();
    let mut decoder = EdgeDecoder::new(MAX, 16);
    decode(&mut decoder, &first).unwrap();
    // A bit flipped in any byte of the body (the price delta among them): the checksum
    // catches each.
    for i in FRAME_HEADER_BYTES..second.len() {
        let mut bad = second.clone();
        bad[i] ^= 0x04;
        let mut fresh = EdgeDecoder::new(MAX, 16);
        decode(&mut fresh, &first).unwrap();
        assert!(
            matches!(decode(&mut fresh, &bad), Err(EdgeError::Corrupt { .. })),
            "byte {i}"
        );
        assert_eq!(fresh.state(1), None);
    }
    assert_eq!(
        prices(&decode(&mut decoder, &second).unwrap()),
        [(1, 2, Some(105))]
    );
}

#[test]
fn a_lost_frame_is_a_gap_and_later_deltas_need_a_keyframe() {
    let mut encoder = EdgeEncoder::new(MAX);
    let first = frames(&mut encoder, &[price(1, 1, 100, "a")]).remove(0);
    let _lost = frames(&mut encoder, &[price(1, 2, 105, "b")]);
    let third = frames(&mut encoder, &[price(1, 3, 110, "a")]).remove(0);
    let fourth = frames(&mut encoder, &[price(1, 4, 115, "a")]).remove(0);
    let mut decoder = EdgeDecoder::new(MAX, 16);
    decode(&mut decoder, &first).unwrap();
    assert_eq!(
        decode(&mut decoder, &third),
        Err(EdgeError::FrameGap {
            expected: 1,
            got: 2
        })
    );
    assert_eq!(
        decode(&mut decoder, &fourth).unwrap(),
        [Decoded::KeyframeNeeded {
            auction: 1,
            error: EdgeError::NoKeyframe { auction: 1 }
        }],
        "never 110 + 5 applied to the stale 100"
    );
}

#[test]
fn a_close_that_does_not_follow_is_a_seq_gap() {
    let mut encoder = EdgeEncoder::new(MAX);
    let first = frames(&mut encoder, &[price(1, 5, 100, "a")]).remove(0);
    // The encoder would never send it (stale); forge one with a valid checksum.
    let mut other = EdgeEncoder::new(MAX);
    frames(&mut other, &[price(1, 1, 1, "a")]);
    let close = frames(&mut other, &[closed(1, 3)]).remove(0);
    let mut decoder = EdgeDecoder::new(MAX, 16);
    decode(&mut decoder, &first).unwrap();
    assert_eq!(
        decode(&mut decoder, &close).unwrap(),
        [Decoded::KeyframeNeeded {
            auction: 1,
            error: EdgeError::SeqGap {
                auction: 1,
                epoch: 1,
                seq: 5,
                got_epoch: 1,
                got_seq: 3
            }
        }]
    );
    assert_eq!(decoder.state(1), None);
}

#[test]
fn malformed_contents_and_unknown_tlvs() {
    // A delta record with the reserved flag, behind a valid checksum.
    let body = [TLV_DELTAS, 0x00, 0x03, 0x01, 0x80, 0x00];
    assert_eq!(
        decode(&mut EdgeDecoder::new(MAX, 16), &seal(0, &body)),
        Err(EdgeError::Malformed("reserved delta flag set"))
    );
    // An unknown TLV before a keyframe is skipped by its length.
    let (first, _) = two_frames();
    let mut body = vec![0x7e, 0x00, 0x02, 0xde, 0xad];
    body.extend_from_slice(&first[FRAME_HEADER_BYTES..]);
    // Bytes appended to a known TLV (a later version's fields) are ignored too.
    let keyframe_len = u16::from_be_bytes([body[6], body[7]]);
    body[6..8].copy_from_slice(&(keyframe_len + 1).to_be_bytes());
    body.push(0x55);
    let out = decode(&mut EdgeDecoder::new(MAX, 16), &seal(0, &body)).unwrap();
    assert_eq!(prices(&out), [(1, 1, Some(100))]);
}

#[test]
fn the_auction_bound_refuses_keyframes_beyond_it() {
    let mut encoder = EdgeEncoder::new(MAX);
    let frame = frames(&mut encoder, &[price(1, 1, 1, "a"), price(2, 1, 1, "a")]).remove(0);
    let out = decode(&mut EdgeDecoder::new(MAX, 1), &frame).unwrap();
    assert_eq!(
        out[1],
        Decoded::KeyframeNeeded {
            auction: 2,
            error: EdgeError::TooManyAuctions { auction: 2, max: 1 }
        }
    );
}

/// The messages of docs/edge-stream.md's worked example: a keyframe of auction 7, two
/// consecutive updates, one after a conflated gap (a Dutch-style decrease).
fn documented_example() -> Vec<pb::ServerMessage> {
    let update = |seq: u64, p: u64, leader: &str, at: u64| {
        msg(Body::PriceUpdate(pb::PriceUpdate {
            auction_id: 7,
            topic: "energy.de".into(),
            epoch: 1,
            seq,
            price: Some(p),
            leader: Some(leader.into()),
            ends_at_us: 1_764_241_200_000_000,
            bids_accepted: seq - 1,
            accepted_at_us: at,
            watchers: 2,
            bidders_connected: 1,
        }))
    };
    vec![
        update(1, 100, "ann", T0),
        update(2, 105, "bob", T0 + 1_000),
        update(3, 110, "ann", T0 + 2_000),
        update(7, 104, "bob", T0 + 5_000),
    ]
}

/// docs/edge-stream.md's worked example is what the encoder writes, byte for byte, and
/// decodes to the states and sizes the doc states: the doc cannot drift from the code.
#[test]
fn docs_edge_stream_md_worked_example_is_what_the_encoder_writes() {
    let doc = include_str!("../../docs/edge-stream.md");
    let documented = documented_hex(doc, "## Worked example");
    let messages = documented_example();
    let mut encoder = EdgeEncoder::new(MAX);
    let frame = frames(&mut encoder, &messages).remove(0);
    assert_eq!(
        documented, frame,
        "docs/edge-stream.md's hex differs from the encoder"
    );
    assert!(doc.contains(&format!("{} bytes for four updates", frame.len())));
    let protobuf: usize = messages
        .iter()
        .map(|m| prost::Message::encode_length_delimited_to_vec(m).len())
        .sum();
    assert!(
        doc.contains(&format!("take {protobuf} bytes")),
        "protobuf: {protobuf}"
    );
    let mut decoder = EdgeDecoder::new(MAX, 16);
    let out = decode(&mut decoder, &documented).unwrap();
    let got: Vec<_> = out
        .iter()
        .map(|d| match d {
            Decoded::State(s) => (
                s.seq,
                s.price,
                s.leader.as_deref().map(str::to_owned),
                s.changed_at_us - T0,
                s.bids_accepted,
            ),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let leader = |l: &str| Some(l.to_owned());
    assert_eq!(
        got,
        [
            (1, Some(100), leader("ann"), 0, 0),
            (2, Some(105), leader("bob"), 1_000, 1),
            (3, Some(110), leader("ann"), 2_000, 2),
            (7, Some(104), leader("bob"), 5_000, 6),
        ]
    );
}
