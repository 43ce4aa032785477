//! Engine events ↔ write-ahead-log records, lossless.
//!
//! - `&Event` → [`pb::Record`] (`From`).
//! - `Event::try_from(pb::Record)`: validates everything a corrupt or hostile record could
//!   get wrong (missing parts, unknown enums, malformed names, amounts and rules the engine
//!   would refuse, an auction id that differs between the record and its rules) and returns
//!   a [`ProtoError`]; it never panics.
//! - [`encode_record`] and [`decode_record`]: the same, to and from the bytes of one log
//!   record's payload (what the node appends to its WAL and reads back on replay).
//!
//! For every event the engine produces, `Event::try_from(pb::Record::from(&event))` equals
//! the event. That relies on two engine invariants: a `BidAccepted` bid is for the event's
//! auction, and a `Created` spec has the event's auction id (the record stores the auction
//! id once for a bid, and compares the two copies for a creation).

use std::sync::Arc;

use gavel_engine::{AuctionId, AuctionSpec, Bid, Event, EventKind, Settlement, UnixMicros, Winner};

use prost::Message;

use super::rules::close_reason;
use super::{bid_id, bid_id_halves, bidder, bidder_opt, price};
use crate::pb;
use crate::pb::record::{self, Kind};
use crate::{ProtoError, RecordError};

/// Appends the payload of `event`'s log record (a [`pb::Record`]) to `buf`.
pub fn encode_record(event: &Event, buf: &mut Vec<u8>) {
    pb::Record::from(event)
        .encode(buf)
        .expect("invariant: a Vec grows as needed, so encoding into it never runs out of room");
}

/// The payloads of `events`' log records, one each, in order (one batch to append).
pub fn encode_records(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|event| {
            let mut payload = Vec::new();
            encode_record(event, &mut payload);
            payload
        })
        .collect()
}

/// Decodes one log record's payload, as [`encode_record`] wrote it, into its engine event.
/// Refuses bytes that are not a [`pb::Record`] and every record `Event::try_from` refuses.
/// An accepted bid written as `encode_record` writes it is read without building the
/// `pb::Record` (see `record_fast`); every other payload goes through prost.
pub fn decode_record(payload: &[u8]) -> Result<Event, RecordError> {
    if let Some(event) = super::record_fast::decode_bid_accepted(payload) {
        return Ok(event);
    }
    let record = pb::Record::decode(payload)?;
    Ok(Event::try_from(record)?)
}

impl From<&Event> for pb::Record {
    fn from(event: &Event) -> Self {
        let kind = match &event.kind {
            EventKind::Created(spec) => {
                debug_assert_eq!(spec.id(), event.auction, "creation of another auction");
                Kind::Created(record::Created {
                    rules: Some(spec.as_ref().into()),
                })
            }
            EventKind::BidAccepted {
                bid,
                price,
                leader,
                ends_at,
            } => {
                debug_assert_eq!(bid.auction(), event.auction, "bid on another auction");
                let (bid_id_hi, bid_id_lo) = bid_id_halves(bid.id());
                Kind::BidAccepted(record::BidAccepted {
                    bidder_id: bid.bidder().as_str().to_owned(),
                    bid_id_hi,
                    bid_id_lo,
                    amount: bid.amount(),
                    max: bid.max(),
                    client_sent_at_us: bid.client_sent_at().0,
                    price: *price,
                    leader: leader.map(|l| l.as_str().to_owned()),
                    ends_at_us: ends_at.0,
                })
            }
            EventKind::Extended {
                ends_at,
                extensions,
            } => Kind::Extended(record::Extended {
                ends_at_us: ends_at.0,
                extensions: *extensions,
            }),
            EventKind::Closed { reason } => Kind::Closed(record::Closed {
                reason: pb::CloseReason::from(*reason).into(),
            }),
            EventKind::Settled(settlement) => Kind::Settled(record::Settled {
                winner: settlement.winner.map(Into::into),
            }),
            EventKind::Pruned => Kind::Pruned(record::Pruned {}),
            EventKind::Forgotten => Kind::Forgotten(record::Forgotten {}),
        };
        pb::Record {
            auction_id: event.auction.0,
            seq: event.seq,
            at_us: event.at.0,
            kind: Some(kind),
        }
    }
}

impl TryFrom<pb::Record> for Event {
    type Error = ProtoError;

    fn try_from(record: pb::Record) -> Result<Self, ProtoError> {
        let auction = AuctionId(record.auction_id);
        if record.seq == 0 {
            return Err(ProtoError::Invalid {
                field: "Record.seq",
                reason: "sequence numbers start at 1",
            });
        }
        let kind = match record.kind.ok_or(ProtoError::Missing("Record.kind"))? {
            Kind::Created(created) => {
                let spec = AuctionSpec::try_from(
                    created
                        .rules
                        .ok_or(ProtoError::Missing("Record.Created.rules"))?,
                )?;
                if spec.id() != auction {
                    return Err(ProtoError::Invalid {
                        field: "Record.Created.rules.auction_id",
                        reason: "differs from the record's auction_id",
                    });
                }
                EventKind::Created(Arc::new(spec))
            }
            Kind::BidAccepted(accepted) => {
                let bid = Bid::new(
                    auction,
                    bidder("Record.BidAccepted.bidder_id", &accepted.bidder_id)?,
                    bid_id(accepted.bid_id_hi, accepted.bid_id_lo),
                    accepted.amount,
                    accepted.max,
                    UnixMicros(accepted.client_sent_at_us),
                )?;
                EventKind::BidAccepted {
                    bid,
                    price: price("Record.BidAccepted.price", accepted.price)?,
                    leader: bidder_opt("Record.BidAccepted.leader", accepted.leader.as_deref())?,
                    ends_at: UnixMicros(accepted.ends_at_us),
                }
            }
            Kind::Extended(extended) => {
                if extended.extensions == 0 {
                    return Err(ProtoError::Invalid {
                        field: "Record.Extended.extensions",
                        reason: "an extension counts itself, so at least 1",
                    });
                }
                EventKind::Extended {
                    ends_at: UnixMicros(extended.ends_at_us),
                    extensions: extended.extensions,
                }
            }
            Kind::Closed(closed) => EventKind::Closed {
                reason: close_reason("Record.Closed.reason", closed.reason)?,
            },
            Kind::Settled(settled) => EventKind::Settled(Settlement {
                winner: settled.winner.map(Winner::try_from).transpose()?,
            }),
            Kind::Pruned(record::Pruned {}) => EventKind::Pruned,
            Kind::Forgotten(record::Forgotten {}) => EventKind::Forgotten,
        };
        Ok(Event {
            auction,
            seq: record.seq,
            at: UnixMicros(record.at_us),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_engine::{
        AuctionKind, AuctionRules, BidError, BidId, BidderId, CloseReason, IncrementTable,
        NameError, PRICE_MAX, SpecError, Topic,
    };

    fn spec(id: u64) -> AuctionSpec {
        AuctionSpec::try_from(AuctionRules {
            id: AuctionId(id),
            topic: Topic::new("metals.cu").unwrap(),
            kind: AuctionKind::English {
                start_price: 10,
                increments: IncrementTable::default(),
            },
            reserve: None,
            buy_now: None,
            starts_at: UnixMicros(0),
            ends_at: UnixMicros(100),
            soft_close: None,
        })
        .unwrap()
    }

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            auction: AuctionId(5),
            seq,
            at: UnixMicros(40 + seq),
            kind,
        }
    }

    fn bid_accepted() -> Event {
        let bidder = BidderId::new("acme").unwrap();
        let bid = Bid::new(
            AuctionId(5),
            bidder,
            BidId(u128::MAX - 3),
            20,
            Some(50),
            UnixMicros(33),
        )
        .unwrap();
        event(
            2,
            EventKind::BidAccepted {
                bid,
                price: 20,
                leader: Some(bidder),
                ends_at: UnixMicros(100),
            },
        )
    }

    fn every_kind() -> Vec<Event> {
        vec![
            event(1, EventKind::Created(Arc::new(spec(5)))),
            bid_accepted(),
            event(
                3,
                EventKind::Extended {
                    ends_at: UnixMicros(150),
                    extensions: 1,
                },
            ),
            event(
                4,
                EventKind::Closed {
                    reason: CloseReason::EndReached,
                },
            ),
            event(
                5,
                EventKind::Settled(Settlement {
                    winner: Some(Winner {
                        bidder: BidderId::new("acme").unwrap(),
                        bid: BidId(u128::MAX - 3),
                        price: 20,
                    }),
                }),
            ),
            event(6, EventKind::Settled(Settlement { winner: None })),
            event(7, EventKind::Pruned),
            event(8, EventKind::Forgotten),
        ]
    }

    #[test]
    fn every_event_kind_round_trips_through_bytes() {
        for original in every_kind() {
            let bytes = pb::Record::from(&original).encode_to_vec();
            let record = pb::Record::decode(bytes.as_slice()).unwrap();
            assert_eq!(Event::try_from(record), Ok(original));
        }
    }

    #[test]
    fn every_event_kind_round_trips_through_the_record_codec() {
        let mut payload = Vec::new();
        for original in every_kind() {
            payload.clear();
            encode_record(&original, &mut payload);
            assert_eq!(decode_record(&payload), Ok(original));
        }
    }

    #[test]
    fn record_payloads_that_do_not_decode_or_convert_are_refused() {
        // Field 1 (auction_id) as a varint whose continuation bit promises a byte that is not
        // there: a torn record.
        assert!(matches!(
            decode_record(&[0x08, 0x80]),
            Err(RecordError::Decode(_))
        ));
        let mut record = record_of(&bid_accepted());
        record.seq = 0;
        assert!(matches!(
            decode_record(&record.encode_to_vec()),
            Err(RecordError::Invalid(ProtoError::Invalid {
                field: "Record.seq",
                ..
            }))
        ));
    }

    fn record_of(event: &Event) -> pb::Record {
        pb::Record::from(event)
    }

    #[test]
    fn structural_corruption_is_refused() {
        let mut record = record_of(&bid_accepted());
        record.seq = 0;
        assert!(matches!(
            Event::try_from(record),
            Err(ProtoError::Invalid {
                field: "Record.seq",
                ..
            })
        ));

        let mut record = record_of(&bid_accepted());
        record.kind = None;
        assert_eq!(
            Event::try_from(record),
            Err(ProtoError::Missing("Record.kind"))
        );

        let mut record = record_of(&bid_accepted());
        record.kind = Some(Kind::Created(record::Created { rules: None }));
        assert_eq!(
            Event::try_from(record),
            Err(ProtoError::Missing("Record.Created.rules"))
        );

        let mut record = record_of(&every_kind()[0]);
        record.auction_id = 6;
        assert!(matches!(
            Event::try_from(record),
            Err(ProtoError::Invalid {
                field: "Record.Created.rules.auction_id",
                ..
            })
        ));
    }

    #[test]
    fn created_rules_are_validated() {
        let mut record = record_of(&every_kind()[0]);
        let Some(Kind::Created(record::Created { rules: Some(rules) })) = &mut record.kind else {
            panic!("not a creation");
        };
        rules.ends_at_us = 0;
        assert_eq!(
            Event::try_from(record),
            Err(ProtoError::Spec(SpecError::EndsBeforeStart))
        );
    }

    fn corrupt_bid(change: impl FnOnce(&mut record::BidAccepted)) -> Result<Event, ProtoError> {
        let mut record = record_of(&bid_accepted());
        let Some(Kind::BidAccepted(accepted)) = &mut record.kind else {
            panic!("not a bid");
        };
        change(accepted);
        Event::try_from(record)
    }

    #[test]
    fn accepted_bids_are_validated() {
        assert_eq!(
            corrupt_bid(|b| b.amount = 0),
            Err(ProtoError::Bid(BidError::ZeroAmount))
        );
        assert_eq!(
            corrupt_bid(|b| b.amount = PRICE_MAX + 1),
            Err(ProtoError::Bid(BidError::Overflow {
                amount: PRICE_MAX + 1
            }))
        );
        assert_eq!(
            corrupt_bid(|b| b.max = Some(1)),
            Err(ProtoError::Bid(BidError::MaxBelowAmount {
                amount: 20,
                max: 1
            }))
        );
        assert_eq!(
            corrupt_bid(|b| b.bidder_id = "a b".into()),
            Err(ProtoError::Name {
                field: "Record.BidAccepted.bidder_id",
                error: NameError::InvalidChar { at: 1 }
            })
        );
        assert_eq!(
            corrupt_bid(|b| b.leader = Some(String::new())),
            Err(ProtoError::Name {
                field: "Record.BidAccepted.leader",
                error: NameError::Empty
            })
        );
        assert_eq!(
            corrupt_bid(|b| b.price = u64::MAX),
            Err(ProtoError::PriceOverflow {
                field: "Record.BidAccepted.price",
                value: u64::MAX
            })
        );
    }

    #[test]
    fn derived_events_are_validated() {
        let mut record = record_of(&every_kind()[2]);
        record.kind = Some(Kind::Extended(record::Extended {
            ends_at_us: 1,
            extensions: 0,
        }));
        assert!(matches!(
            Event::try_from(record),
            Err(ProtoError::Invalid {
                field: "Record.Extended.extensions",
                ..
            })
        ));

        let mut record = record_of(&every_kind()[3]);
        record.kind = Some(Kind::Closed(record::Closed { reason: 0 }));
        assert_eq!(
            Event::try_from(record.clone()),
            Err(ProtoError::Missing("Record.Closed.reason"))
        );
        record.kind = Some(Kind::Closed(record::Closed { reason: 99 }));
        assert_eq!(
            Event::try_from(record),
            Err(ProtoError::UnknownEnum {
                field: "Record.Closed.reason",
                value: 99
            })
        );

        let mut record = record_of(&every_kind()[4]);
        let Some(Kind::Settled(settled)) = &mut record.kind else {
            panic!("not a settlement");
        };
        settled.winner.as_mut().unwrap().bidder_id = "x".repeat(33);
        assert_eq!(
            Event::try_from(record),
            Err(ProtoError::Name {
                field: "Winner.bidder_id",
                error: NameError::TooLong { len_max: 32 }
            })
        );
    }
}
