//! Price-update traces for the edge stream's size and speed (issue 13 item 1): one hot
//! English auction with consecutive seqs, and a Zipf-skewed market of [`TRACE_AUCTIONS`]
//! auctions, both generated deterministically from a seed; and their sizes as the protobuf
//! stream sends them (length-delimited `ServerMessage`s, as on a QUIC stream) and as edge
//! frames.

use gavel_edge_proto::EdgeEncoder;
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};

use crate::{INCREMENT, START_PRICE, ZIPF_EXPONENT};

/// Auctions of the Zipf trace.
pub const TRACE_AUCTIONS: u64 = 1_000;
/// Bidders whose ids lead (the load tester uses three identities; more leaders cost more).
pub const TRACE_BIDDERS: u32 = 16;
/// The edge frame bound of the measurements, in bytes (the node's stream batch, 4 KiB).
pub const TRACE_FRAME_BYTES: usize = 4_096;
/// When the traces start, microseconds since the Unix epoch.
const T0_US: u64 = 1_764_237_600_000_000;
/// Auctions end an hour after [`T0_US`].
const ENDS_AT_US: u64 = T0_US + 3_600_000_000;

/// One price update of the trace and when it was decided.
pub struct Traced {
    /// The message as the fan-out hands it to a connection.
    pub message: pb::ServerMessage,
    /// Its `accepted_at_us`.
    pub at_us: u64,
}

/// The state a trace moves on per auction.
#[derive(Clone)]
struct Auction {
    seq: u64,
    price: u64,
    leader: u32,
    watchers: u32,
}

fn update(id: u64, a: &Auction, at_us: u64) -> Traced {
    let update = pb::PriceUpdate {
        auction_id: id,
        topic: format!("energy.eu.de.block-{id:04}"),
        epoch: 1,
        seq: a.seq,
        price: Some(a.price),
        leader: Some(format!("bidder-{}", a.leader + 1)),
        ends_at_us: ENDS_AT_US,
        bids_accepted: a.seq - 1,
        accepted_at_us: at_us,
        watchers: a.watchers,
        bidders_connected: TRACE_BIDDERS,
    };
    Traced {
        message: pb::ServerMessage {
            request_id: 0,
            body: Some(Body::PriceUpdate(update)),
        },
        at_us,
    }
}

/// Moves an auction on by one accepted bid: a raise by the increment, another leader, and
/// now and then a watcher more or less.
fn raise(a: &mut Auction, rng: &mut SmallRng) {
    a.seq += 1;
    a.price += INCREMENT;
    a.leader = (a.leader + rng.random_range(1..TRACE_BIDDERS)) % TRACE_BIDDERS;
    if rng.random_ratio(1, 100) {
        a.watchers = if rng.random() {
            a.watchers + 1
        } else {
            a.watchers.saturating_sub(1)
        };
    }
}

/// `updates` consecutive updates of one auction, about 1,000 a second (exponential gaps).
pub fn hot_trace(seed: u64, updates: usize) -> Vec<Traced> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let gaps = Exp::new(1.0 / 1_000.0).expect("a positive rate");
    let mut a = Auction {
        seq: 1,
        price: START_PRICE,
        leader: 0,
        watchers: 40,
    };
    let mut at_us = T0_US;
    (0..updates)
        .map(|_| {
            raise(&mut a, &mut rng);
            at_us += gaps.sample(&mut rng) as u64 + 1;
            update(7, &a, at_us)
        })
        .collect()
}

/// `updates` updates over [`TRACE_AUCTIONS`] auctions picked by a Zipf law (the benches'
/// exponent), about 2,000 a second; each auction's seqs are consecutive.
pub fn zipf_trace(seed: u64, updates: usize) -> Vec<Traced> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(TRACE_AUCTIONS as f64, ZIPF_EXPONENT).expect("valid parameters");
    let gaps = Exp::new(1.0 / 500.0).expect("a positive rate");
    let mut auctions = vec![
        Auction {
            seq: 1,
            price: START_PRICE,
            leader: 0,
            watchers: 3,
        };
        TRACE_AUCTIONS as usize
    ];
    let mut at_us = T0_US;
    (0..updates)
        .map(|_| {
            // Zipf samples ranks 1..=n as floats.
            let id = (zipf.sample(&mut rng) as u64).clamp(1, TRACE_AUCTIONS);
            let a = &mut auctions[(id - 1) as usize];
            raise(a, &mut rng);
            at_us += gaps.sample(&mut rng) as u64 + 1;
            update(id, a, at_us)
        })
        .collect()
}

/// A price stream the load tester recorded (`gavel-loadtest --record-trace FILE`:
/// length-delimited `ServerMessage`s as one watcher received them), as a trace: every
/// message, each at the `accepted_at_us` of the latest price update up to it (snapshots,
/// closes and settlements go with the updates before them).
pub fn recorded_trace(mut bytes: &[u8]) -> Result<Vec<Traced>, prost::DecodeError> {
    let mut trace = Vec::new();
    let mut at_us = 0;
    while !bytes.is_empty() {
        let message = <pb::ServerMessage as prost::Message>::decode_length_delimited(&mut bytes)?;
        if let Some(Body::PriceUpdate(update)) = &message.body {
            at_us = update.accepted_at_us;
        }
        trace.push(Traced { message, at_us });
    }
    Ok(trace)
}

/// The recorded traces kept with the benches (`benches/data/`, see its README): a name and
/// the file's bytes.
pub const RECORDED_TRACES: [(&str, &[u8]); 2] = [
    ("recorded zipf", include_bytes!("../data/zipf-1000.trace")),
    ("recorded hot", include_bytes!("../data/hot-1.trace")),
];

/// Bytes of the trace as the protobuf stream sends it: length-delimited `ServerMessage`s.
pub fn protobuf_bytes(trace: &[Traced]) -> usize {
    trace
        .iter()
        .map(|t| prost::Message::encode_length_delimited_to_vec(&t.message).len())
        .sum()
}

/// The trace's batches as a writer takes them: the updates decided within each
/// `window_us` (0: every update alone).
pub fn batches(trace: &[Traced], window_us: u64) -> Vec<&[Traced]> {
    if window_us == 0 {
        return trace.chunks(1).collect();
    }
    trace
        .chunk_by(|a, b| a.at_us / window_us == b.at_us / window_us)
        .collect()
}

/// Encodes `batches` on one new edge stream (a frame or more per batch) into `out`.
pub fn encode_edge(batches: &[&[Traced]], out: &mut Vec<u8>) {
    let mut encoder = EdgeEncoder::new(TRACE_FRAME_BYTES);
    for batch in batches {
        for traced in *batch {
            encoder.encode(&traced.message, out);
        }
        encoder.flush(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The goal as a deterministic check (bytes, not time): the edge stream takes at
    /// most 25 % of the protobuf stream's bytes for the same updates, first-contact
    /// keyframes included, on the generated and the recorded traces, batched as a writer
    /// would (10 ms windows).
    #[test]
    fn edge_frames_take_at_most_a_quarter_of_the_protobuf_bytes() {
        for (name, bytes) in RECORDED_TRACES {
            let trace = recorded_trace(bytes).expect("the recorded traces decode");
            let updates = trace
                .iter()
                .filter(|t| matches!(t.message.body, Some(Body::PriceUpdate(_))))
                .count();
            assert!(updates >= 5_000, "{name}: only {updates} price updates");
        }
        let recorded = RECORDED_TRACES.map(|(name, bytes)| {
            (
                name,
                recorded_trace(bytes).expect("the recorded traces decode"),
            )
        });
        for (name, trace) in [
            ("hot", hot_trace(1, 20_000)),
            ("zipf", zipf_trace(1, 20_000)),
        ]
        .into_iter()
        .chain(recorded)
        {
            let mut edge = Vec::new();
            encode_edge(&batches(&trace, 10_000), &mut edge);
            let proto = protobuf_bytes(&trace);
            let ratio = edge.len() as f64 / proto as f64;
            eprintln!(
                "{name}: {} messages, protobuf {proto} B, edge {} B = {:.1} %",
                trace.len(),
                edge.len(),
                100.0 * ratio
            );
            assert!(
                ratio <= 0.25,
                "{name}: {} / {proto} = {ratio:.3}",
                edge.len()
            );
        }
    }
}
