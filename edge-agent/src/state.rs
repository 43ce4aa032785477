//! The latest state of every auction the agent holds, and its two local forms: JSON (the
//! HTTP port, SSE, MQTT by default) and a self-contained edge frame (MQTT with
//! `--mqtt-encoding edge`).
//!
//! The store only moves forward: a state of the same epoch with a lower seq than the one
//! held is ignored, and so is one equal to it (a keyframe after a re-subscribe that
//! changes nothing is not published again). States come only from the edge decoder, which
//! never yields a state the node did not send, so what is held was right when it came.
//! Price datagrams bring whole states beside the stream's chain; see `next_state` for how
//! a close on the stream meets them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gavel_edge_proto::{AuctionState, EdgeEncoder, FRAME_BYTES_MIN};
use gavel_proto::pb;
use tokio::sync::broadcast;

/// States announced to publishers at most this far ahead of the slowest (a lagging one
/// re-reads everything).
const UPDATES_CAPACITY: usize = 4_096;

/// The agent's auctions; see the module documentation.
pub(crate) struct Store {
    auctions: Mutex<HashMap<u64, Held>>,
    auctions_max: usize,
    updates: broadcast::Sender<Arc<AuctionState>>,
}

/// One auction's state and how its latest price came.
struct Held {
    state: Arc<AuctionState>,
    /// From a price datagram: newer than the stream's own chain of the auction.
    via_datagram: bool,
}

/// Where a state came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The edge stream's decoder.
    Stream,
    /// A price datagram (a self-contained keyframe).
    Datagram,
}

/// What [`Store::apply`] did with a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Taken (and announced).
    Taken,
    /// Not newer than what is held, or beyond the bound on auctions.
    Ignored,
    /// A close or settlement on the stream whose other fields are older than the prices
    /// datagrams brought, with a seq gap between: a datagram may be lost, so neither state
    /// is whole. Ask the node for a keyframe.
    KeyframeNeeded,
}

impl Store {
    pub(crate) fn new(auctions_max: usize) -> Store {
        Store {
            auctions: Mutex::new(HashMap::new()),
            auctions_max,
            updates: broadcast::channel(UPDATES_CAPACITY).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        // A panic under this lock left a whole map (inserts are single calls): go on.
        self.auctions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a state from the stream if it moves its auction forward; whether it did.
    #[cfg(test)]
    pub(crate) fn apply(&self, state: AuctionState) -> bool {
        self.apply_from(state, Via::Stream) == Applied::Taken
    }

    /// Takes `state` if it moves its auction forward, and announces it (see [`next_state`]
    /// for what a state from the stream does after datagrams).
    pub(crate) fn apply_from(&self, state: AuctionState, via: Via) -> Applied {
        let taken = {
            let mut auctions = self.lock();
            let next = match auctions.get(&state.auction_id) {
                Some(held) => match next_state(held, state, via) {
                    Next::Take(next) => next,
                    Next::Ignore => return Applied::Ignored,
                    Next::Keyframe => return Applied::KeyframeNeeded,
                },
                None if auctions.len() >= self.auctions_max => {
                    tracing::warn!(
                        auction = state.auction_id,
                        max = self.auctions_max,
                        "more auctions than --auctions-max; not held"
                    );
                    return Applied::Ignored;
                }
                None => Held {
                    state: Arc::new(state),
                    via_datagram: via == Via::Datagram,
                },
            };
            let taken = Arc::clone(&next.state);
            auctions.insert(taken.auction_id, next);
            metrics::gauge!(crate::metrics::AUCTIONS).set(auctions.len() as f64);
            taken
        };
        metrics::counter!(crate::metrics::UPDATES_APPLIED).increment(1);
        let _ = self.updates.send(taken);
        Applied::Taken
    }

    /// One auction's state.
    pub(crate) fn get(&self, auction: u64) -> Option<Arc<AuctionState>> {
        self.lock()
            .get(&auction)
            .map(|held| Arc::clone(&held.state))
    }

    /// Every state, by auction id.
    pub(crate) fn all(&self) -> Vec<Arc<AuctionState>> {
        let mut all: Vec<_> = self
            .lock()
            .values()
            .map(|held| Arc::clone(&held.state))
            .collect();
        all.sort_unstable_by_key(|state| state.auction_id);
        all
    }

    /// Every held `(auction, epoch, seq)`: the resume positions of a re-subscribe.
    pub(crate) fn positions(&self) -> Vec<pb::StreamPosition> {
        let mut positions: Vec<_> = self
            .lock()
            .values()
            .map(|held| &held.state)
            .map(|s| pb::StreamPosition {
                auction_id: s.auction_id,
                epoch: s.epoch,
                seq: s.seq,
            })
            .collect();
        positions.sort_unstable_by_key(|p| p.auction_id);
        positions
    }

    /// The held `(auction, epoch, seq)` of `auction`.
    pub(crate) fn position(&self, auction: u64) -> Option<pb::StreamPosition> {
        self.lock().get(&auction).map(|held| pb::StreamPosition {
            auction_id: auction,
            epoch: held.state.epoch,
            seq: held.state.seq,
        })
    }

    /// States applied from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<AuctionState>> {
        self.updates.subscribe()
    }
}

/// What a state does to the one held.
enum Next {
    Take(Held),
    Ignore,
    Keyframe,
}

/// The held state moves only forward: a state of the same epoch with a lower seq, or the
/// same state, is ignored.
///
/// With datagrams, the stream's decoder does not see the prices they bring, so a close or
/// settlement it yields carries its own chain's older price (its `changed_at_us` is older
/// than the one held). Right after the held seq, the close is stamped on the held state;
/// after a gap (a datagram may be lost), neither state is whole: a keyframe is needed.
fn next_state(held: &Held, state: AuctionState, via: Via) -> Next {
    let old = &held.state;
    let same_epoch = old.epoch == state.epoch;
    if **old == state || (same_epoch && state.seq < old.seq) {
        return Next::Ignore;
    }
    let older_chain = via == Via::Stream
        && held.via_datagram
        && same_epoch
        && state.changed_at_us < old.changed_at_us;
    if !older_chain {
        return Next::Take(Held {
            state: Arc::new(state),
            via_datagram: via == Via::Datagram,
        });
    }
    if state.seq != old.seq.wrapping_add(1) {
        return Next::Keyframe;
    }
    let stamped = AuctionState {
        seq: state.seq,
        closed: state.closed,
        settled: state.settled,
        ..AuctionState::clone(old)
    };
    Next::Take(Held {
        state: Arc::new(stamped),
        via_datagram: true,
    })
}

/// A state as JSON: the fields of [`AuctionState`], the close and settlement as objects
/// (`null` until announced), the winner's bid id as 32 hex digits.
pub(crate) fn state_json(state: &AuctionState) -> serde_json::Value {
    let closed = state
        .closed
        .map(|c| serde_json::json!({ "reason": c.reason, "closed_at_us": c.closed_at_us }));
    let settled = state.settled.as_ref().map(|s| {
        let winner = s.winner.as_ref().map(|w| {
            serde_json::json!({
                "bidder_id": &*w.bidder_id,
                "bid_id": crate::bids::bid_id_hex(u128::from(w.bid_id_hi) << 64 | u128::from(w.bid_id_lo)),
                "price": w.price,
            })
        });
        serde_json::json!({ "settled_at_us": s.settled_at_us, "winner": winner })
    });
    serde_json::json!({
        "auction_id": state.auction_id,
        "topic": &*state.topic,
        "epoch": state.epoch,
        "seq": state.seq,
        "price": state.price,
        "leader": state.leader.as_deref(),
        "ends_at_us": state.ends_at_us,
        "bids_accepted": state.bids_accepted,
        "changed_at_us": state.changed_at_us,
        "watchers": state.watchers,
        "bidders_connected": state.bidders_connected,
        "closed": closed,
        "settled": settled,
    })
}

/// A state as one edge frame (frame number 0) holding one KEYFRAME: what a fresh decoder
/// reads back as this state (the close and settlement times excepted, which a keyframe
/// built from a snapshot carries as 0).
pub(crate) fn edge_keyframe(state: &AuctionState) -> Vec<u8> {
    let settlement = state.settled.as_ref().map(|s| pb::Settlement {
        winner: s.winner.as_ref().map(|w| pb::Winner {
            bidder_id: w.bidder_id.to_string(),
            bid_id_hi: w.bid_id_hi,
            bid_id_lo: w.bid_id_lo,
            price: w.price,
        }),
    });
    let phase = if state.settled.is_some() {
        pb::Phase::Settled
    } else {
        pb::Phase::Open
    };
    let snapshot = pb::AuctionSnapshot {
        rules: Some(pb::AuctionRules {
            auction_id: state.auction_id,
            topic: state.topic.to_string(),
            ..pb::AuctionRules::default()
        }),
        epoch: state.epoch,
        seq: state.seq,
        phase: phase as i32,
        price: state.price,
        leader: state.leader.as_deref().map(str::to_owned),
        ends_at_us: state.ends_at_us,
        bids_accepted: state.bids_accepted,
        settlement,
        close_reason: state.closed.map_or(0, |c| i32::from(c.reason)),
        changed_at_us: state.changed_at_us,
        watchers: state.watchers,
        bidders_connected: state.bidders_connected,
        ..pb::AuctionSnapshot::default()
    };
    let message = pb::ServerMessage {
        request_id: 0,
        body: Some(pb::server_message::Body::AuctionSnapshot(snapshot)),
    };
    let mut encoder = EdgeEncoder::new(FRAME_BYTES_MIN.max(1_024));
    let mut frame = Vec::new();
    encoder.encode(&message, &mut frame);
    encoder.flush(&mut frame);
    frame
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gavel_edge_proto::{Closed, Decoded, EdgeDecoder, Settled, Winner};

    pub(crate) fn state(seq: u64, price: u64) -> AuctionState {
        AuctionState {
            auction_id: 7,
            topic: Arc::from("energy.de"),
            epoch: 1,
            seq,
            price: Some(price),
            leader: Some(Arc::from("ann")),
            ends_at_us: 1_764_241_200_000_000,
            bids_accepted: seq - 1,
            changed_at_us: 1_764_237_600_000_000,
            watchers: 2,
            bidders_connected: 1,
            closed: None,
            settled: None,
        }
    }

    #[test]
    fn the_store_only_moves_forward_and_announces_what_it_took() {
        let store = Store::new(10);
        let mut updates = store.subscribe();
        assert!(store.apply(state(3, 110)));
        assert!(!store.apply(state(2, 105)), "an older seq");
        assert!(!store.apply(state(3, 110)), "the same state");
        assert!(store.apply(state(4, 120)));
        let new_epoch = AuctionState {
            epoch: 2,
            ..state(1, 90)
        };
        assert!(store.apply(new_epoch.clone()));
        assert_eq!(store.get(7).as_deref(), Some(&new_epoch));
        let seen: Vec<u64> =
            std::iter::from_fn(|| updates.try_recv().ok().map(|s| s.seq)).collect();
        assert_eq!(seen, vec![3, 4, 1]);
        assert_eq!(
            store.positions(),
            vec![pb::StreamPosition {
                auction_id: 7,
                epoch: 2,
                seq: 1
            }]
        );
    }

    #[test]
    fn a_close_on_the_stream_after_datagrams_keeps_their_price_or_asks_for_a_keyframe() {
        let store = Store::new(10);
        // The stream's chain: the subscribe's keyframe at seq 1 (price 100).
        let keyframe = AuctionState {
            changed_at_us: 1_000,
            ..state(1, 100)
        };
        assert!(store.apply(keyframe.clone()));
        // Prices by datagram: seq 2 and 3 (the stream's decoder never sees them).
        let datagram = |seq, price| AuctionState {
            changed_at_us: 1_000 + seq,
            ..state(seq, price)
        };
        assert_eq!(
            store.apply_from(datagram(2, 105), Via::Datagram),
            Applied::Taken
        );
        assert_eq!(
            store.apply_from(datagram(3, 110), Via::Datagram),
            Applied::Taken
        );
        assert_eq!(
            store.apply_from(datagram(2, 105), Via::Datagram),
            Applied::Ignored,
            "a late datagram"
        );
        // The close at seq 4 on the stream, as the decoder yields it: the keyframe's price.
        let closed = Closed {
            reason: 1,
            closed_at_us: 5_000,
        };
        let close = |seq| AuctionState {
            seq,
            closed: Some(closed),
            ..keyframe.clone()
        };
        assert_eq!(store.apply_from(close(4), Via::Stream), Applied::Taken);
        let held = store.get(7).unwrap();
        assert_eq!(
            (held.seq, held.price, held.closed),
            (4, Some(110), Some(closed))
        );
        assert_eq!(
            held.changed_at_us, 1_003,
            "the datagram's price, stamped closed"
        );
        // After a gap (the datagram of seq 5 lost), the close is not whole: a keyframe.
        let store = Store::new(10);
        store.apply(keyframe.clone());
        store.apply_from(datagram(4, 120), Via::Datagram);
        assert_eq!(
            store.apply_from(close(6), Via::Stream),
            Applied::KeyframeNeeded
        );
        assert_eq!(store.get(7).unwrap().price, Some(120), "nothing guessed");
        // A newer state on the stream (a snapshot, or a price too large for a datagram) is
        // whole and taken as it is.
        let snapshot = AuctionState {
            changed_at_us: 9_000,
            closed: Some(closed),
            ..state(6, 130)
        };
        assert_eq!(
            store.apply_from(snapshot.clone(), Via::Stream),
            Applied::Taken
        );
        assert_eq!(store.get(7).as_deref(), Some(&snapshot));
    }

    #[test]
    fn the_store_holds_at_most_auctions_max() {
        let store = Store::new(1);
        assert!(store.apply(state(1, 100)));
        assert!(!store.apply(AuctionState {
            auction_id: 8,
            ..state(1, 100)
        }));
        assert_eq!(store.all().len(), 1);
    }

    #[test]
    fn an_edge_keyframe_decodes_to_the_state_with_a_fresh_decoder() {
        let mut settled = state(9, 150);
        settled.closed = Some(Closed {
            reason: 1,
            closed_at_us: 0,
        });
        settled.settled = Some(Settled {
            settled_at_us: 0,
            winner: Some(Winner {
                bidder_id: Arc::from("bob"),
                bid_id_hi: 1,
                bid_id_lo: 2,
                price: 150,
            }),
        });
        for expected in [state(3, 110), settled] {
            let frame = edge_keyframe(&expected);
            let mut decoded = Vec::new();
            EdgeDecoder::new(65_544, 10)
                .decode_frame(&frame, &mut decoded)
                .unwrap();
            assert_eq!(decoded, vec![Decoded::State(expected)]);
        }
    }

    #[test]
    fn json_carries_every_field() {
        let json = state_json(&state(3, 110));
        assert_eq!(json["auction_id"], 7);
        assert_eq!(json["topic"], "energy.de");
        assert_eq!(json["price"], 110);
        assert_eq!(json["leader"], "ann");
        assert_eq!(json["seq"], 3);
        assert!(json["closed"].is_null());
    }
}
