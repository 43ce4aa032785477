//! What the engine's state-changing calls decided, carrying every fact a driver needs so
//! that nothing asks the engine again afterwards: [`BidDecision`] for a bid,
//! [`ClosedAuction`] for a close (an end reached, a cancel, or a bid that ended its auction).

use crate::event::Receipt;
use crate::types::{AuctionId, BidOutcome, Rejection, Settlement};

/// What [`Engine::place_bid`](crate::Engine::place_bid) decided about one bid.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BidDecision {
    /// Accepted or rejected, as the bidder is told.
    pub outcome: BidOutcome,
    /// For an accepted bid, the sink's receipt for its events (what the durable
    /// acknowledgement waits for); `None` for a rejection.
    pub receipt: Option<Receipt>,
    /// The close this bid made, when it ended its auction at once (a buy-now, a Dutch
    /// sale). Its receipt is the bid's: announce the settlement once it is durable.
    pub closed: Option<ClosedAuction>,
}

impl BidDecision {
    /// A rejection: nothing changed, nothing to wait for.
    pub fn rejected(rejection: Rejection) -> BidDecision {
        BidDecision {
            outcome: BidOutcome::Rejected(rejection),
            receipt: None,
            closed: None,
        }
    }
}

/// An auction that closed and settled. Announce the settlement only once the receipt is
/// durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClosedAuction {
    /// The auction.
    pub id: AuctionId,
    /// Winner and clearing price.
    pub settlement: Settlement,
    /// The sink's receipt for the `Closed` and `Settled` events.
    pub receipt: Receipt,
}
