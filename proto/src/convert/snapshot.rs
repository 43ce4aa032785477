//! Auction snapshots and the stream messages that announce closes and settlements.
//!
//! - [`pb::AuctionSnapshot::from_view`]: an [`AuctionView`] in a stream epoch → snapshot;
//!   `AuctionView::try_from(pb::AuctionSnapshot)` reads one back (clients, tests).
//! - [`pb::AuctionClosed::from_event`] and [`pb::AuctionSettled::from_event`]: the
//!   never-conflated stream messages, built from the engine's `Closed` and `Settled` events.
//! - [`pb::AuctionSettled::new`]: the same from a [`Settlement`] directly.

use std::sync::Arc;

use gavel_engine::{AuctionId, AuctionSpec, AuctionView, Event, EventKind, Settlement, UnixMicros};

use super::rules::{close_reason, phase};
use super::{bidder_opt, price};
use crate::ProtoError;
use crate::pb;

impl pb::AuctionSnapshot {
    /// The snapshot of `view`, stamped with the stream's `epoch` for the auction.
    pub fn from_view(view: &AuctionView, epoch: u64) -> Self {
        pb::AuctionSnapshot {
            rules: Some(view.spec.as_ref().into()),
            epoch,
            seq: view.seq,
            phase: pb::Phase::from(view.phase).into(),
            price: view.price,
            leader: view.leader.map(|l| l.as_str().to_owned()),
            ends_at_us: view.ends_at.0,
            extensions: view.extensions,
            bids_accepted: view.bids_accepted,
            settlement: view.settlement.map(Into::into),
            close_reason: view
                .close_reason
                .map_or(pb::CloseReason::Unspecified, pb::CloseReason::from)
                .into(),
            changed_at_us: view.changed_at.0,
            // Presence is filled in by the stream that sends the snapshot.
            watchers: 0,
            bidders_connected: 0,
        }
    }
}

impl TryFrom<pb::AuctionSnapshot> for AuctionView {
    type Error = ProtoError;

    /// Validates the rules and every field; the epoch is left in the message.
    fn try_from(snapshot: pb::AuctionSnapshot) -> Result<Self, ProtoError> {
        let spec = AuctionSpec::try_from(
            snapshot
                .rules
                .ok_or(ProtoError::Missing("AuctionSnapshot.rules"))?,
        )?;
        Ok(AuctionView {
            spec: Arc::new(spec),
            phase: phase("AuctionSnapshot.phase", snapshot.phase)?,
            seq: snapshot.seq,
            price: snapshot
                .price
                .map(|p| price("AuctionSnapshot.price", p))
                .transpose()?,
            leader: bidder_opt("AuctionSnapshot.leader", snapshot.leader.as_deref())?,
            ends_at: UnixMicros(snapshot.ends_at_us),
            extensions: snapshot.extensions,
            bids_accepted: snapshot.bids_accepted,
            settlement: snapshot.settlement.map(Settlement::try_from).transpose()?,
            close_reason: match snapshot.close_reason {
                0 => None,
                reason => Some(close_reason("AuctionSnapshot.close_reason", reason)?),
            },
            changed_at: UnixMicros(snapshot.changed_at_us),
        })
    }
}

impl pb::AuctionClosed {
    /// The close announced by `event` in stream epoch `epoch`; `None` for any other event.
    pub fn from_event(event: &Event, epoch: u64) -> Option<Self> {
        let EventKind::Closed { reason } = event.kind else {
            return None;
        };
        Some(pb::AuctionClosed {
            auction_id: event.auction.0,
            epoch,
            seq: event.seq,
            reason: pb::CloseReason::from(reason).into(),
            closed_at_us: event.at.0,
        })
    }
}

impl pb::AuctionSettled {
    /// The settlement of `auction` at `(epoch, seq)`, decided at `settled_at`.
    pub fn new(
        auction: AuctionId,
        epoch: u64,
        seq: u64,
        settled_at: UnixMicros,
        settlement: Settlement,
    ) -> Self {
        pb::AuctionSettled {
            auction_id: auction.0,
            epoch,
            seq,
            settled_at_us: settled_at.0,
            winner: settlement.winner.map(Into::into),
        }
    }

    /// The settlement announced by `event` in stream epoch `epoch`; `None` for any other
    /// event.
    pub fn from_event(event: &Event, epoch: u64) -> Option<Self> {
        let EventKind::Settled(settlement) = event.kind else {
            return None;
        };
        Some(Self::new(
            event.auction,
            epoch,
            event.seq,
            event.at,
            settlement,
        ))
    }
}

#[cfg(test)]
mod tests {
    use gavel_engine::{
        AuctionKind, AuctionRules, BidId, BidderId, CloseReason, Phase, Topic, Winner,
    };

    use super::*;

    fn view() -> AuctionView {
        let spec = AuctionSpec::try_from(AuctionRules {
            id: AuctionId(9),
            topic: Topic::new("art.prints").unwrap(),
            kind: AuctionKind::SealedSecondPrice { min_bid: 5 },
            reserve: Some(10),
            buy_now: None,
            starts_at: UnixMicros(0),
            ends_at: UnixMicros(100),
            soft_close: None,
        })
        .unwrap();
        AuctionView {
            spec: Arc::new(spec),
            phase: Phase::Settled,
            seq: 12,
            price: Some(30),
            leader: None,
            ends_at: UnixMicros(100),
            extensions: 0,
            bids_accepted: 9,
            settlement: Some(Settlement {
                winner: Some(Winner {
                    bidder: BidderId::new("b-1").unwrap(),
                    bid: BidId(77),
                    price: 30,
                }),
            }),
            close_reason: Some(CloseReason::EndReached),
            changed_at: UnixMicros(101),
        }
    }

    #[test]
    fn snapshots_round_trip() {
        let snapshot = pb::AuctionSnapshot::from_view(&view(), 3);
        assert_eq!(snapshot.epoch, 3);
        assert_eq!(AuctionView::try_from(snapshot), Ok(view()));
        let open = AuctionView {
            phase: Phase::Open,
            price: None,
            settlement: None,
            close_reason: None,
            ..view()
        };
        assert_eq!(
            AuctionView::try_from(pb::AuctionSnapshot::from_view(&open, 0)),
            Ok(open)
        );
    }

    #[test]
    fn snapshots_are_validated() {
        let mut snapshot = pb::AuctionSnapshot::from_view(&view(), 3);
        snapshot.rules = None;
        assert_eq!(
            AuctionView::try_from(snapshot),
            Err(ProtoError::Missing("AuctionSnapshot.rules"))
        );
        let mut snapshot = pb::AuctionSnapshot::from_view(&view(), 3);
        snapshot.phase = 0;
        assert_eq!(
            AuctionView::try_from(snapshot),
            Err(ProtoError::Missing("AuctionSnapshot.phase"))
        );
        let mut snapshot = pb::AuctionSnapshot::from_view(&view(), 3);
        snapshot.leader = Some("no spaces".into());
        assert!(matches!(
            AuctionView::try_from(snapshot),
            Err(ProtoError::Name {
                field: "AuctionSnapshot.leader",
                ..
            })
        ));
    }

    #[test]
    fn close_and_settlement_messages_come_from_their_events() {
        let closed = Event {
            auction: AuctionId(9),
            seq: 11,
            at: UnixMicros(100),
            kind: EventKind::Closed {
                reason: CloseReason::EndReached,
            },
        };
        let settlement = view().settlement.unwrap();
        let settled = Event {
            seq: 12,
            kind: EventKind::Settled(settlement),
            ..closed.clone()
        };
        assert_eq!(
            pb::AuctionClosed::from_event(&closed, 2),
            Some(pb::AuctionClosed {
                auction_id: 9,
                epoch: 2,
                seq: 11,
                reason: pb::CloseReason::EndReached.into(),
                closed_at_us: 100,
            })
        );
        assert_eq!(pb::AuctionClosed::from_event(&settled, 2), None);
        let message = pb::AuctionSettled::from_event(&settled, 2).unwrap();
        assert_eq!(
            message,
            pb::AuctionSettled::new(AuctionId(9), 2, 12, UnixMicros(100), settlement)
        );
        assert_eq!(
            message.winner.map(Winner::try_from),
            Some(Ok(settlement.winner.unwrap()))
        );
        assert_eq!(pb::AuctionSettled::from_event(&closed, 2), None);
    }
}
