//! Announcing a settlement: once an auction's close is durable, its close and settlement go
//! to the watchers, exactly once per auction, from whoever made the close — the closer of
//! `gavel serve` for ends, the admin API for cancels, the bid path for a bid that closes
//! (buy-now, a Dutch sale; [`BidDecision::closed`](gavel_engine::BidDecision::closed)).

use std::sync::Arc;

use gavel_engine::ClosedAuction;

use crate::clock::now_micros;
use crate::fanout::Hub;
use crate::gateway::{Backend, DurableError};

/// Waits until `closed` is durable, then hands its close and settlement to every matching
/// watcher; returns how many it reached. If the log fails first nothing is announced (the
/// next recovery decides the close's fate) and the failure is returned.
///
/// Owned arguments so the future can be spawned: the announcement of a closing bid goes out
/// whatever happens to the bidder's connection.
pub async fn announce<B: Backend>(
    backend: Arc<B>,
    hub: Arc<Hub>,
    closed: ClosedAuction,
) -> Result<usize, DurableError> {
    let id = closed.id;
    if let Err(e) = backend.durable(closed.receipt).await {
        tracing::error!(auction = id.0, error = %e, "settlement not durable; it is not announced");
        return Err(e);
    }
    let reached = match backend.view(id, now_micros()) {
        Some(view) => hub.settled(&view, now_micros()),
        None => 0,
    };
    let winner = closed.settlement.winner;
    tracing::info!(
        auction = id.0,
        winner = ?winner.map(|w| w.bidder),
        price = ?winner.map(|w| w.price),
        watchers = reached,
        "auction settled"
    );
    Ok(reached)
}
