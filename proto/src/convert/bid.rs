//! Bids and bid outcomes.
//!
//! - [`pb::PlaceBid::to_bid`]: a bid message plus the bidder identity from the connection's
//!   certificate → [`Bid`]. A method and not `TryFrom`, because the bidder never comes from
//!   the message body.
//! - `&Bid` → [`pb::PlaceBid`] (for clients and queued bids; the bidder is dropped).
//! - [`Accepted`], [`Rejection`] and [`BidOutcome`] → their wire messages (`From`), and back
//!   (`TryFrom`) for clients reading the node's answers (the edge's routing answers
//!   `MISDIRECTED` and `NO_OWNER` are no engine decision and do not convert).

use gavel_engine::{Accepted, AuctionId, Bid, BidId, BidOutcome, BidderId, Rejection, UnixMicros};

use super::{bid_id, bid_id_halves, bidder_opt, price};
use crate::ProtoError;
use crate::pb;
use crate::pb::bid_outcome::Outcome;

impl pb::PlaceBid {
    /// The 128-bit bid id joined from its halves.
    pub fn bid_id(&self) -> BidId {
        bid_id(self.bid_id_hi, self.bid_id_lo)
    }

    /// Parses the bid sent by the connection whose certificate names `bidder`. Rejects a
    /// zero bid id, a zero or overflowing amount or maximum, and a maximum below the amount.
    pub fn to_bid(&self, bidder: BidderId) -> Result<Bid, ProtoError> {
        let id = self.bid_id();
        if id.0 == 0 {
            return Err(ProtoError::ZeroBidId);
        }
        Ok(Bid::new(
            AuctionId(self.auction_id),
            bidder,
            id,
            self.amount,
            self.max,
            UnixMicros(self.client_sent_at_us),
        )?)
    }
}

impl From<&Bid> for pb::PlaceBid {
    fn from(bid: &Bid) -> Self {
        let (bid_id_hi, bid_id_lo) = bid_id_halves(bid.id());
        pb::PlaceBid {
            auction_id: bid.auction().0,
            amount: bid.amount(),
            max: bid.max(),
            bid_id_hi,
            bid_id_lo,
            client_sent_at_us: bid.client_sent_at().0,
        }
    }
}

impl From<Accepted> for pb::Accepted {
    fn from(accepted: Accepted) -> Self {
        pb::Accepted {
            seq: accepted.seq,
            price: accepted.price,
            leader: accepted.leader.map(|l| l.as_str().to_owned()),
            ends_at_us: accepted.ends_at.0,
        }
    }
}

impl TryFrom<pb::Accepted> for Accepted {
    type Error = ProtoError;

    fn try_from(accepted: pb::Accepted) -> Result<Self, ProtoError> {
        Ok(Accepted {
            seq: accepted.seq,
            price: price("Accepted.price", accepted.price)?,
            leader: bidder_opt("Accepted.leader", accepted.leader.as_deref())?,
            ends_at: UnixMicros(accepted.ends_at_us),
        })
    }
}

impl From<Rejection> for pb::Rejected {
    fn from(rejection: Rejection) -> Self {
        use pb::RejectReason as R;
        let mut rejected = pb::Rejected::default();
        let reason = match rejection {
            Rejection::TooLow { min_next } => {
                rejected.min_next = Some(min_next);
                R::TooLow
            }
            Rejection::NotOpen => R::NotOpen,
            Rejection::Closed => R::Closed,
            Rejection::UnknownAuction => R::UnknownAuction,
            Rejection::Duplicate { original } => {
                rejected.original = Some(original.into());
                R::Duplicate
            }
            Rejection::RateLimited => R::RateLimited,
            Rejection::Overloaded { retry_after_us } => {
                rejected.retry_after_us = Some(retry_after_us);
                R::Overloaded
            }
            Rejection::Invalid => R::Invalid,
            Rejection::Forbidden => R::Forbidden,
        };
        rejected.set_reason(reason);
        rejected
    }
}

impl TryFrom<pb::Rejected> for Rejection {
    type Error = ProtoError;

    /// Requires the detail field of the reasons that carry one; ignores detail fields that
    /// do not belong to the reason.
    fn try_from(rejected: pb::Rejected) -> Result<Self, ProtoError> {
        use pb::RejectReason as R;
        let reason = R::try_from(rejected.reason).map_err(|_| ProtoError::UnknownEnum {
            field: "Rejected.reason",
            value: rejected.reason,
        })?;
        Ok(match reason {
            R::Unspecified => return Err(ProtoError::Missing("Rejected.reason")),
            R::TooLow => Rejection::TooLow {
                min_next: rejected
                    .min_next
                    .ok_or(ProtoError::Missing("Rejected.min_next"))?,
            },
            R::NotOpen => Rejection::NotOpen,
            R::Closed => Rejection::Closed,
            R::UnknownAuction => Rejection::UnknownAuction,
            R::Duplicate => Rejection::Duplicate {
                original: rejected
                    .original
                    .ok_or(ProtoError::Missing("Rejected.original"))?
                    .try_into()?,
            },
            R::RateLimited => Rejection::RateLimited,
            R::Overloaded => Rejection::Overloaded {
                retry_after_us: rejected
                    .retry_after_us
                    .ok_or(ProtoError::Missing("Rejected.retry_after_us"))?,
            },
            R::Invalid => Rejection::Invalid,
            R::Forbidden => Rejection::Forbidden,
            // Routing answers of the network edge, never an engine decision: a client
            // follows them (docs/quic.md, "Several nodes") before reading an outcome.
            R::Misdirected | R::NoOwner => {
                return Err(ProtoError::Invalid {
                    field: "Rejected.reason",
                    reason: "a routing answer (MISDIRECTED, NO_OWNER) is not a bid decision",
                });
            }
        })
    }
}

impl From<BidOutcome> for pb::BidOutcome {
    fn from(outcome: BidOutcome) -> Self {
        pb::BidOutcome {
            outcome: Some(match outcome {
                BidOutcome::Accepted(accepted) => Outcome::Accepted(accepted.into()),
                BidOutcome::Rejected(rejection) => Outcome::Rejected(rejection.into()),
            }),
        }
    }
}

impl TryFrom<pb::BidOutcome> for BidOutcome {
    type Error = ProtoError;

    fn try_from(outcome: pb::BidOutcome) -> Result<Self, ProtoError> {
        match outcome
            .outcome
            .ok_or(ProtoError::Missing("BidOutcome.outcome"))?
        {
            Outcome::Accepted(accepted) => Ok(BidOutcome::Accepted(accepted.try_into()?)),
            Outcome::Rejected(rejected) => Ok(BidOutcome::Rejected(rejected.try_into()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use gavel_engine::{BidError, PRICE_MAX};

    use super::*;

    fn place(amount: u64, max: Option<u64>) -> pb::PlaceBid {
        pb::PlaceBid {
            auction_id: 7,
            amount,
            max,
            bid_id_hi: 1,
            bid_id_lo: 2,
            client_sent_at_us: 1_000,
        }
    }

    fn bidder() -> BidderId {
        BidderId::new("acme").unwrap()
    }

    #[test]
    fn place_bid_takes_the_bidder_from_the_caller() {
        let bid = place(10, Some(20)).to_bid(bidder()).unwrap();
        assert_eq!(bid.auction(), AuctionId(7));
        assert_eq!(bid.bidder(), bidder());
        assert_eq!(bid.id(), BidId((1 << 64) | 2));
        assert_eq!(bid.amount(), 10);
        assert_eq!(bid.max(), Some(20));
        assert_eq!(bid.client_sent_at(), UnixMicros(1_000));
        assert_eq!(pb::PlaceBid::from(&bid), place(10, Some(20)));
    }

    #[test]
    fn place_bid_rejects_bad_amounts() {
        let err = |amount, max| place(amount, max).to_bid(bidder()).unwrap_err();
        assert_eq!(err(0, None), ProtoError::Bid(BidError::ZeroAmount));
        assert_eq!(
            err(PRICE_MAX + 1, None),
            ProtoError::Bid(BidError::Overflow {
                amount: PRICE_MAX + 1
            })
        );
        assert_eq!(
            err(u64::MAX, None),
            ProtoError::Bid(BidError::Overflow { amount: u64::MAX })
        );
        assert_eq!(
            err(5, Some(PRICE_MAX + 1)),
            ProtoError::Bid(BidError::Overflow {
                amount: PRICE_MAX + 1
            })
        );
        assert_eq!(
            err(5, Some(4)),
            ProtoError::Bid(BidError::MaxBelowAmount { amount: 5, max: 4 })
        );
        assert!(place(PRICE_MAX, Some(PRICE_MAX)).to_bid(bidder()).is_ok());
    }

    #[test]
    fn place_bid_rejects_a_missing_bid_id() {
        let mut msg = place(10, None);
        msg.bid_id_hi = 0;
        msg.bid_id_lo = 0;
        assert_eq!(msg.to_bid(bidder()), Err(ProtoError::ZeroBidId));
        msg.bid_id_hi = 1;
        assert!(msg.to_bid(bidder()).is_ok());
        msg.bid_id_hi = 0;
        msg.bid_id_lo = 1;
        assert!(msg.to_bid(bidder()).is_ok());
    }

    fn accepted() -> Accepted {
        Accepted {
            seq: 4,
            price: 120,
            leader: Some(bidder()),
            ends_at: UnixMicros(9_000),
        }
    }

    #[test]
    fn every_outcome_round_trips() {
        let outcomes = [
            BidOutcome::Accepted(accepted()),
            BidOutcome::Accepted(Accepted {
                leader: None,
                ..accepted()
            }),
            BidOutcome::Rejected(Rejection::TooLow { min_next: 125 }),
            BidOutcome::Rejected(Rejection::NotOpen),
            BidOutcome::Rejected(Rejection::Closed),
            BidOutcome::Rejected(Rejection::UnknownAuction),
            BidOutcome::Rejected(Rejection::Duplicate {
                original: accepted(),
            }),
            BidOutcome::Rejected(Rejection::RateLimited),
            BidOutcome::Rejected(Rejection::Overloaded {
                retry_after_us: 500,
            }),
            BidOutcome::Rejected(Rejection::Invalid),
            BidOutcome::Rejected(Rejection::Forbidden),
        ];
        for outcome in outcomes {
            let wire = pb::BidOutcome::from(outcome);
            assert_eq!(BidOutcome::try_from(wire), Ok(outcome));
        }
    }

    #[test]
    fn rejection_details_are_required_where_the_reason_has_them() {
        let rejected = |reason: pb::RejectReason| pb::Rejected {
            reason: reason.into(),
            ..Default::default()
        };
        assert_eq!(
            Rejection::try_from(rejected(pb::RejectReason::TooLow)),
            Err(ProtoError::Missing("Rejected.min_next"))
        );
        assert_eq!(
            Rejection::try_from(rejected(pb::RejectReason::Overloaded)),
            Err(ProtoError::Missing("Rejected.retry_after_us"))
        );
        assert_eq!(
            Rejection::try_from(rejected(pb::RejectReason::Duplicate)),
            Err(ProtoError::Missing("Rejected.original"))
        );
        assert_eq!(
            Rejection::try_from(rejected(pb::RejectReason::Unspecified)),
            Err(ProtoError::Missing("Rejected.reason"))
        );
        for routing in [pb::RejectReason::Misdirected, pb::RejectReason::NoOwner] {
            assert!(matches!(
                Rejection::try_from(rejected(routing)),
                Err(ProtoError::Invalid {
                    field: "Rejected.reason",
                    ..
                })
            ));
        }
        assert_eq!(
            Rejection::try_from(pb::Rejected {
                reason: 42,
                ..Default::default()
            }),
            Err(ProtoError::UnknownEnum {
                field: "Rejected.reason",
                value: 42
            })
        );
    }

    #[test]
    fn outcome_requires_its_oneof_and_valid_names() {
        assert_eq!(
            BidOutcome::try_from(pb::BidOutcome { outcome: None }),
            Err(ProtoError::Missing("BidOutcome.outcome"))
        );
        let mut wire = pb::Accepted::from(accepted());
        wire.leader = Some("not a name".into());
        assert!(matches!(
            Accepted::try_from(wire),
            Err(ProtoError::Name {
                field: "Accepted.leader",
                ..
            })
        ));
        let mut wire = pb::Accepted::from(accepted());
        wire.price = u64::MAX;
        assert_eq!(
            Accepted::try_from(wire),
            Err(ProtoError::PriceOverflow {
                field: "Accepted.price",
                value: u64::MAX
            })
        );
    }
}
