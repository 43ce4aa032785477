//! Auction rules, settlements, phases and close reasons, both ways.
//!
//! - `&AuctionSpec` → [`pb::AuctionRules`] (`From`), and back with
//!   `AuctionSpec::try_from(pb::AuctionRules)`, which parses the topic, the kind and the
//!   increment table, then validates the whole through the engine's own
//!   `AuctionSpec::try_from(AuctionRules)`. The two directions round-trip exactly.
//! - `AuctionSpec::try_from(pb::CreateAuction)`: the admin request.
//! - [`Winner`] ↔ [`pb::Winner`], [`Settlement`] ↔ [`pb::Settlement`].
//! - [`Phase`] and [`CloseReason`] to their wire enums, and back with [`phase`] and
//!   [`close_reason`].

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, CloseReason, IncrementBand, IncrementTable,
    Phase, Settlement, SoftClose, Topic, UnixMicros, Winner,
};

use super::{bid_id, bid_id_halves, bidder, price};
use crate::ProtoError;
use crate::pb;
use crate::pb::auction_rules::Kind;

impl From<&IncrementTable> for pb::IncrementTable {
    fn from(table: &IncrementTable) -> Self {
        pb::IncrementTable {
            bands: table
                .bands()
                .iter()
                .map(|b| pb::IncrementBand {
                    below: b.below,
                    increment: b.increment,
                })
                .collect(),
            increment_above: table.above(),
        }
    }
}

impl TryFrom<pb::IncrementTable> for IncrementTable {
    type Error = ProtoError;

    fn try_from(table: pb::IncrementTable) -> Result<Self, ProtoError> {
        let bands = table
            .bands
            .into_iter()
            .map(|b| IncrementBand {
                below: b.below,
                increment: b.increment,
            })
            .collect();
        Ok(IncrementTable::new(bands, table.increment_above)?)
    }
}

impl From<SoftClose> for pb::SoftClose {
    fn from(sc: SoftClose) -> Self {
        pb::SoftClose {
            window_us: sc.window_us,
            extension_us: sc.extension_us,
            extensions_max: sc.extensions_max,
        }
    }
}

impl From<pb::SoftClose> for SoftClose {
    /// Carries the values over; `AuctionSpec::try_from` validates them with the other rules.
    fn from(sc: pb::SoftClose) -> Self {
        SoftClose {
            window_us: sc.window_us,
            extension_us: sc.extension_us,
            extensions_max: sc.extensions_max,
        }
    }
}

impl From<&AuctionSpec> for pb::AuctionRules {
    fn from(spec: &AuctionSpec) -> Self {
        let rules = spec.rules();
        let kind = match &rules.kind {
            AuctionKind::English {
                start_price,
                increments,
            } => Kind::English(pb::EnglishRules {
                start_price: *start_price,
                // Always explicit, so a later change of the default table cannot change the
                // rules of an auction already created (replay reads these rules back).
                increments: Some(increments.into()),
            }),
            AuctionKind::SealedFirstPrice { min_bid } => {
                Kind::SealedFirstPrice(pb::SealedRules { min_bid: *min_bid })
            }
            AuctionKind::SealedSecondPrice { min_bid } => {
                Kind::SealedSecondPrice(pb::SealedRules { min_bid: *min_bid })
            }
            AuctionKind::Dutch {
                start_price,
                floor_price,
                step,
                step_interval_us,
            } => Kind::Dutch(pb::DutchRules {
                start_price: *start_price,
                floor_price: *floor_price,
                step: *step,
                step_interval_us: *step_interval_us,
            }),
        };
        pb::AuctionRules {
            auction_id: rules.id.0,
            topic: rules.topic.as_str().to_owned(),
            kind: Some(kind),
            reserve: rules.reserve,
            buy_now: rules.buy_now,
            starts_at_us: rules.starts_at.0,
            ends_at_us: rules.ends_at.0,
            soft_close: rules.soft_close.map(Into::into),
        }
    }
}

impl TryFrom<pb::AuctionRules> for AuctionRules {
    type Error = ProtoError;

    /// Parses the parts (topic, kind, increment table); the rules as a whole are validated by
    /// `AuctionSpec::try_from`.
    fn try_from(rules: pb::AuctionRules) -> Result<Self, ProtoError> {
        let topic = Topic::new(&rules.topic).map_err(|error| ProtoError::Name {
            field: "AuctionRules.topic",
            error,
        })?;
        let kind = match rules.kind.ok_or(ProtoError::Missing("AuctionRules.kind"))? {
            Kind::English(english) => AuctionKind::English {
                start_price: english.start_price,
                increments: match english.increments {
                    Some(table) => table.try_into()?,
                    None => IncrementTable::default(),
                },
            },
            Kind::SealedFirstPrice(sealed) => AuctionKind::SealedFirstPrice {
                min_bid: sealed.min_bid,
            },
            Kind::SealedSecondPrice(sealed) => AuctionKind::SealedSecondPrice {
                min_bid: sealed.min_bid,
            },
            Kind::Dutch(dutch) => AuctionKind::Dutch {
                start_price: dutch.start_price,
                floor_price: dutch.floor_price,
                step: dutch.step,
                step_interval_us: dutch.step_interval_us,
            },
        };
        Ok(AuctionRules {
            id: AuctionId(rules.auction_id),
            topic,
            kind,
            reserve: rules.reserve,
            buy_now: rules.buy_now,
            starts_at: UnixMicros(rules.starts_at_us),
            ends_at: UnixMicros(rules.ends_at_us),
            soft_close: rules.soft_close.map(Into::into),
        })
    }
}

impl TryFrom<pb::AuctionRules> for AuctionSpec {
    type Error = ProtoError;

    fn try_from(rules: pb::AuctionRules) -> Result<Self, ProtoError> {
        Ok(AuctionSpec::try_from(AuctionRules::try_from(rules)?)?)
    }
}

impl TryFrom<pb::CreateAuction> for AuctionSpec {
    type Error = ProtoError;

    fn try_from(request: pb::CreateAuction) -> Result<Self, ProtoError> {
        request
            .rules
            .ok_or(ProtoError::Missing("CreateAuction.rules"))?
            .try_into()
    }
}

impl From<&AuctionSpec> for pb::CreateAuction {
    fn from(spec: &AuctionSpec) -> Self {
        pb::CreateAuction {
            rules: Some(spec.into()),
        }
    }
}

impl From<Winner> for pb::Winner {
    fn from(winner: Winner) -> Self {
        let (bid_id_hi, bid_id_lo) = bid_id_halves(winner.bid);
        pb::Winner {
            bidder_id: winner.bidder.as_str().to_owned(),
            bid_id_hi,
            bid_id_lo,
            price: winner.price,
        }
    }
}

impl TryFrom<pb::Winner> for Winner {
    type Error = ProtoError;

    fn try_from(winner: pb::Winner) -> Result<Self, ProtoError> {
        Ok(Winner {
            bidder: bidder("Winner.bidder_id", &winner.bidder_id)?,
            bid: bid_id(winner.bid_id_hi, winner.bid_id_lo),
            price: price("Winner.price", winner.price)?,
        })
    }
}

impl From<Settlement> for pb::Settlement {
    fn from(settlement: Settlement) -> Self {
        pb::Settlement {
            winner: settlement.winner.map(Into::into),
        }
    }
}

impl TryFrom<pb::Settlement> for Settlement {
    type Error = ProtoError;

    fn try_from(settlement: pb::Settlement) -> Result<Self, ProtoError> {
        Ok(Settlement {
            winner: settlement.winner.map(Winner::try_from).transpose()?,
        })
    }
}

impl From<Phase> for pb::Phase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Scheduled => pb::Phase::Scheduled,
            Phase::Open => pb::Phase::Open,
            Phase::Settled => pb::Phase::Settled,
        }
    }
}

/// Parses a wire [`pb::Phase`] value of field `field`.
pub fn phase(field: &'static str, value: i32) -> Result<Phase, ProtoError> {
    match pb::Phase::try_from(value) {
        Ok(pb::Phase::Scheduled) => Ok(Phase::Scheduled),
        Ok(pb::Phase::Open) => Ok(Phase::Open),
        Ok(pb::Phase::Settled) => Ok(Phase::Settled),
        Ok(pb::Phase::Unspecified) => Err(ProtoError::Missing(field)),
        Err(_) => Err(ProtoError::UnknownEnum { field, value }),
    }
}

impl From<CloseReason> for pb::CloseReason {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::EndReached => pb::CloseReason::EndReached,
            CloseReason::Cancelled => pb::CloseReason::Cancelled,
            CloseReason::BuyNow => pb::CloseReason::BuyNow,
            CloseReason::Sold => pb::CloseReason::Sold,
        }
    }
}

/// Parses a wire [`pb::CloseReason`] value of field `field`.
pub fn close_reason(field: &'static str, value: i32) -> Result<CloseReason, ProtoError> {
    match pb::CloseReason::try_from(value) {
        Ok(pb::CloseReason::EndReached) => Ok(CloseReason::EndReached),
        Ok(pb::CloseReason::Cancelled) => Ok(CloseReason::Cancelled),
        Ok(pb::CloseReason::BuyNow) => Ok(CloseReason::BuyNow),
        Ok(pb::CloseReason::Sold) => Ok(CloseReason::Sold),
        Ok(pb::CloseReason::Unspecified) => Err(ProtoError::Missing(field)),
        Err(_) => Err(ProtoError::UnknownEnum { field, value }),
    }
}

#[cfg(test)]
mod tests {
    use gavel_engine::{BidId, BidderId, NameError, PRICE_MAX, SpecError};

    use super::*;

    fn english_rules() -> pb::AuctionRules {
        pb::AuctionRules {
            auction_id: 3,
            topic: "energy.eu.de.block-42".into(),
            kind: Some(Kind::English(pb::EnglishRules {
                start_price: 10,
                increments: Some(pb::IncrementTable {
                    bands: vec![
                        pb::IncrementBand {
                            below: 100,
                            increment: 2,
                        },
                        pb::IncrementBand {
                            below: 1_000,
                            increment: 20,
                        },
                    ],
                    increment_above: 50,
                }),
            })),
            reserve: Some(200),
            buy_now: Some(5_000),
            starts_at_us: 1_000,
            ends_at_us: 2_000,
            soft_close: Some(pb::SoftClose {
                window_us: 100,
                extension_us: 50,
                extensions_max: 3,
            }),
        }
    }

    fn dutch_rules(
        start_price: u64,
        floor_price: u64,
        step: u64,
        interval: u64,
    ) -> pb::AuctionRules {
        pb::AuctionRules {
            kind: Some(Kind::Dutch(pb::DutchRules {
                start_price,
                floor_price,
                step,
                step_interval_us: interval,
            })),
            reserve: None,
            buy_now: None,
            ..english_rules()
        }
    }

    fn spec(rules: pb::AuctionRules) -> Result<AuctionSpec, ProtoError> {
        AuctionSpec::try_from(rules)
    }

    #[test]
    fn every_kind_round_trips() {
        let sealed = |first: bool| pb::AuctionRules {
            kind: Some(if first {
                Kind::SealedFirstPrice(pb::SealedRules { min_bid: 7 })
            } else {
                Kind::SealedSecondPrice(pb::SealedRules { min_bid: 7 })
            }),
            soft_close: None,
            ..english_rules()
        };
        for wire in [
            english_rules(),
            sealed(true),
            sealed(false),
            dutch_rules(1_000, 100, 10, 1_000),
        ] {
            let parsed = spec(wire.clone()).unwrap();
            assert_eq!(pb::AuctionRules::from(&parsed), wire);
            assert_eq!(spec(pb::AuctionRules::from(&parsed)), Ok(parsed));
        }
    }

    #[test]
    fn english_without_a_table_gets_the_default() {
        let mut wire = english_rules();
        wire.kind = Some(Kind::English(pb::EnglishRules {
            start_price: 10,
            increments: None,
        }));
        let parsed = spec(wire).unwrap();
        let AuctionKind::English { increments, .. } = &parsed.rules().kind else {
            panic!("not English: {parsed:?}");
        };
        assert_eq!(increments, &IncrementTable::default());
    }

    #[test]
    fn create_auction_requires_rules() {
        assert_eq!(
            AuctionSpec::try_from(pb::CreateAuction { rules: None }),
            Err(ProtoError::Missing("CreateAuction.rules"))
        );
        let parsed = spec(english_rules()).unwrap();
        assert_eq!(
            AuctionSpec::try_from(pb::CreateAuction::from(&parsed)),
            Ok(parsed)
        );
    }

    #[test]
    fn missing_kind_is_refused() {
        let wire = pb::AuctionRules {
            kind: None,
            ..english_rules()
        };
        assert_eq!(spec(wire), Err(ProtoError::Missing("AuctionRules.kind")));
    }

    #[test]
    fn bad_topics_are_refused() {
        for (topic, error) in [
            ("", NameError::Empty),
            ("energy..de", NameError::EmptySegment),
            ("energy.*", NameError::InvalidChar { at: 7 }),
            ("energy.>", NameError::InvalidChar { at: 7 }),
        ] {
            let wire = pb::AuctionRules {
                topic: topic.into(),
                ..english_rules()
            };
            assert_eq!(
                spec(wire),
                Err(ProtoError::Name {
                    field: "AuctionRules.topic",
                    error
                }),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn bad_increment_tables_are_refused() {
        let with_table = |bands: Vec<(u64, u64)>, above| pb::AuctionRules {
            kind: Some(Kind::English(pb::EnglishRules {
                start_price: 10,
                increments: Some(pb::IncrementTable {
                    bands: bands
                        .into_iter()
                        .map(|(below, increment)| pb::IncrementBand { below, increment })
                        .collect(),
                    increment_above: above,
                }),
            })),
            ..english_rules()
        };
        for wire in [
            with_table(vec![], 0),
            with_table(vec![(100, 0)], 5),
            with_table(vec![(100, 1), (100, 2)], 5),
            with_table(vec![(100, 1), (50, 2)], 5),
            with_table(vec![(PRICE_MAX + 1, 1)], 5),
            with_table((1..=33).map(|i| (i * 10, 1)).collect(), 5),
        ] {
            assert!(
                matches!(
                    spec(wire.clone()),
                    Err(ProtoError::Spec(SpecError::IncrementTable(_)))
                ),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn invalid_dutch_schedules_are_refused() {
        for wire in [
            dutch_rules(100, 100, 1, 1),
            dutch_rules(100, 200, 1, 1),
            dutch_rules(100, 10, 1, 0),
        ] {
            assert!(
                matches!(
                    spec(wire.clone()),
                    Err(ProtoError::Spec(SpecError::DutchSchedule(_)))
                ),
                "{wire:?}"
            );
        }
        assert_eq!(
            spec(dutch_rules(100, 10, 0, 1)),
            Err(ProtoError::Spec(SpecError::ZeroPrice("step")))
        );
        assert_eq!(
            spec(dutch_rules(100, 0, 1, 1)),
            Err(ProtoError::Spec(SpecError::ZeroPrice("floor_price")))
        );
        let mut wire = dutch_rules(100, 10, 1, 1);
        wire.buy_now = Some(150);
        assert!(matches!(
            spec(wire),
            Err(ProtoError::Spec(SpecError::BuyNow(_)))
        ));
    }

    #[test]
    fn other_bad_rules_are_refused() {
        let mut wire = english_rules();
        wire.ends_at_us = wire.starts_at_us;
        assert_eq!(
            spec(wire),
            Err(ProtoError::Spec(SpecError::EndsBeforeStart))
        );

        let wire = pb::AuctionRules {
            kind: Some(Kind::SealedFirstPrice(pb::SealedRules { min_bid: 0 })),
            ..english_rules()
        };
        assert_eq!(
            spec(wire),
            Err(ProtoError::Spec(SpecError::ZeroPrice("min_bid")))
        );

        let mut wire = english_rules();
        wire.reserve = Some(u64::MAX);
        wire.buy_now = None;
        assert_eq!(
            spec(wire),
            Err(ProtoError::Spec(SpecError::Overflow("reserve")))
        );

        let mut wire = english_rules();
        wire.soft_close = Some(pb::SoftClose {
            window_us: 0,
            extension_us: 1,
            extensions_max: 1,
        });
        assert!(matches!(
            spec(wire),
            Err(ProtoError::Spec(SpecError::SoftClose(_)))
        ));
    }

    #[test]
    fn enums_reject_unspecified_and_unknown_values() {
        assert_eq!(phase("f", pb::Phase::Open.into()), Ok(Phase::Open));
        assert_eq!(phase("f", 0), Err(ProtoError::Missing("f")));
        assert_eq!(
            phase("f", 17),
            Err(ProtoError::UnknownEnum {
                field: "f",
                value: 17
            })
        );
        for reason in [
            CloseReason::EndReached,
            CloseReason::Cancelled,
            CloseReason::BuyNow,
            CloseReason::Sold,
        ] {
            let wire: i32 = pb::CloseReason::from(reason).into();
            assert_eq!(close_reason("f", wire), Ok(reason));
        }
        assert_eq!(close_reason("f", 0), Err(ProtoError::Missing("f")));
        assert_eq!(
            close_reason("f", -1),
            Err(ProtoError::UnknownEnum {
                field: "f",
                value: -1
            })
        );
    }

    #[test]
    fn settlements_round_trip_and_validate() {
        let winner = Winner {
            bidder: BidderId::new("acme").unwrap(),
            bid: BidId(u128::MAX),
            price: 42,
        };
        for settlement in [
            Settlement { winner: None },
            Settlement {
                winner: Some(winner),
            },
        ] {
            assert_eq!(
                Settlement::try_from(pb::Settlement::from(settlement)),
                Ok(settlement)
            );
        }
        let mut wire = pb::Winner::from(winner);
        wire.bidder_id = String::new();
        assert_eq!(
            Winner::try_from(wire),
            Err(ProtoError::Name {
                field: "Winner.bidder_id",
                error: NameError::Empty
            })
        );
        let mut wire = pb::Winner::from(winner);
        wire.price = PRICE_MAX + 1;
        assert_eq!(
            Winner::try_from(wire),
            Err(ProtoError::PriceOverflow {
                field: "Winner.price",
                value: PRICE_MAX + 1
            })
        );
    }
}
