//! The latest state of every auction the agent holds, and its two local forms: JSON (the
//! HTTP port, SSE, MQTT by default) and a self-contained edge frame (MQTT with
//! `--mqtt-encoding edge`).
//!
//! The store only moves forward: a state of the same epoch with a lower seq than the one
//! held is ignored, and so is one equal to it (a keyframe after a re-subscribe that
//! changes nothing is not published again). States come only from the edge decoder, which
//! never yields a state the node did not send, so what is held was right when it came.

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
    auctions: Mutex<HashMap<u64, Arc<AuctionState>>>,
    auctions_max: usize,
    updates: broadcast::Sender<Arc<AuctionState>>,
}

impl Store {
    pub(crate) fn new(auctions_max: usize) -> Store {
        Store {
            auctions: Mutex::new(HashMap::new()),
            auctions_max,
            updates: broadcast::channel(UPDATES_CAPACITY).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AuctionState>>> {
        // A panic under this lock left a whole map (inserts are single calls): go on.
        self.auctions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `state` if it moves its auction forward, and announces it; whether it did.
    pub(crate) fn apply(&self, state: AuctionState) -> bool {
        let state = {
            let mut auctions = self.lock();
            if let Some(held) = auctions.get(&state.auction_id)
                && (**held == state || (held.epoch == state.epoch && state.seq < held.seq))
            {
                return false;
            }
            if auctions.len() >= self.auctions_max && !auctions.contains_key(&state.auction_id) {
                tracing::warn!(
                    auction = state.auction_id,
                    max = self.auctions_max,
                    "more auctions than --auctions-max; not held"
                );
                return false;
            }
            let state = Arc::new(state);
            auctions.insert(state.auction_id, Arc::clone(&state));
            metrics::gauge!(crate::metrics::AUCTIONS).set(auctions.len() as f64);
            state
        };
        metrics::counter!(crate::metrics::UPDATES_APPLIED).increment(1);
        let _ = self.updates.send(state);
        true
    }

    /// One auction's state.
    pub(crate) fn get(&self, auction: u64) -> Option<Arc<AuctionState>> {
        self.lock().get(&auction).cloned()
    }

    /// Every state, by auction id.
    pub(crate) fn all(&self) -> Vec<Arc<AuctionState>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_unstable_by_key(|state| state.auction_id);
        all
    }

    /// Every held `(auction, epoch, seq)`: the resume positions of a re-subscribe.
    pub(crate) fn positions(&self) -> Vec<pb::StreamPosition> {
        let mut positions: Vec<_> = self
            .lock()
            .values()
            .map(|s| pb::StreamPosition {
                auction_id: s.auction_id,
                epoch: s.epoch,
                seq: s.seq,
            })
            .collect();
        positions.sort_unstable_by_key(|p| p.auction_id);
        positions
    }

    /// States applied from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<AuctionState>> {
        self.updates.subscribe()
    }
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
