//! The forwarder: takes the queue's bids in order and places each on the node with its
//! bid id, until it has a final outcome; records the outcome (on disk) and announces it.
//!
//! One bid at a time, in queue order: a bid whose fate is unknown (no answer, connection
//! lost, node overloaded or shutting down) is placed again with the same bid id before any
//! later bid — the node answers a bid it already has with DUPLICATE and the original
//! outcome, which is taken as the outcome, so a bid forwarded twice is one bid. An accepted
//! bid is finished only once the node says it is durable, so a node crash between its
//! acceptance and its log write cannot lose it: the agent places it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_client::{Bid, BidError, Client};
use gavel_proto::pb::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::backoff::Backoff;

use crate::queue::{Outcome, QueuedBid, Status};

/// What one attempt to place a bid gave.
enum Attempt {
    /// The node's final answer.
    Final(Outcome),
    /// Place it again after a delay (the node's suggestion, or the backoff's).
    Retry(String, Option<Duration>),
}

/// Forwards bids until `shutdown`; a bid in flight at shutdown stays queued.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(shared.config.reconnect_backoff_max);
    loop {
        let Some(bid) = next_bid(&shared, &shutdown).await else {
            return;
        };
        let Some(client) = shared.link.client(&shutdown).await else {
            return;
        };
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = place(&client, &bid) => attempt,
        };
        match attempt {
            Attempt::Final(outcome) => {
                backoff.connected(Instant::now());
                if !finish(&shared, &bid, outcome).await {
                    return;
                }
            }
            Attempt::Retry(why, after) => {
                metrics::counter!(crate::metrics::FORWARD_RETRIES).increment(1);
                let delay =
                    after.unwrap_or_else(|| backoff.failed(Instant::now(), &mut rand::rng()));
                tracing::debug!(bid_id = %crate::bids::bid_id_hex(bid.bid_id), %why, ?delay, "bid not decided; placing it again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The front bid, waiting for one to be queued.
async fn next_bid(shared: &Shared, shutdown: &CancellationToken) -> Option<QueuedBid> {
    loop {
        let queued = shared.bids.queued.notified();
        if let Some(bid) = shared.bids.lock().front().cloned() {
            return Some(bid);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = queued => {}
        }
    }
}

/// Records `outcome` on disk and announces it; `false` if the disk failed (the forwarder
/// stops: the bid stays queued and is placed again, as a DUPLICATE, after a restart).
async fn finish(shared: &Arc<Shared>, bid: &QueuedBid, outcome: Outcome) -> bool {
    let bids = Arc::clone(&shared.bids);
    let bid_id = bid.bid_id;
    let written = tokio::task::spawn_blocking(move || bids.lock().finish(bid_id, outcome)).await;
    if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
        tracing::error!(error = %e, "recording a bid's outcome failed; forwarding stops");
        return false;
    }
    metrics::counter!(crate::metrics::BIDS_FORWARDED, "outcome" => outcome.name()).increment(1);
    let waited_us = crate::bids::unix_micros().saturating_sub(bid.queued_at_us);
    metrics::histogram!(crate::metrics::BID_SECONDS).record(waited_us as f64 / 1e6);
    let status = Status::Done {
        outcome,
        tag: bid.tag.clone(),
    };
    let _ = shared.bids.events.send((bid_id, status));
    true
}

/// Places `bid` once (the SDK resends it across reconnects within its request timeout) and
/// waits for its durable ack if accepted.
async fn place(client: &Client, bid: &QueuedBid) -> Attempt {
    let mut request = Bid::new(bid.auction_id, bid.amount).with_id(bid.bid_id);
    if let Some(max) = bid.max {
        request = request.with_max(max);
    }
    let placed = match client.place_bid(request).await {
        Ok(placed) => placed,
        Err(error) => return answer(error),
    };
    let accepted = placed.accepted().clone();
    match placed.durable().await {
        Ok(_) => Attempt::Final(Outcome::Accepted {
            seq: accepted.seq,
            price: accepted.price,
        }),
        Err(e) => Attempt::Retry(format!("no durable ack: {e}"), None),
    }
}

/// A refusal as a final outcome, or a reason to place the bid again.
fn answer(error: BidError) -> Attempt {
    let outcome = match error {
        // This bid, placed before (by an earlier attempt or before a restart).
        BidError::Duplicate { original } => Outcome::Accepted {
            seq: original.seq,
            price: original.price,
        },
        BidError::TooLow { min_next } => Outcome::TooLow { min_next },
        BidError::NotOpen => Outcome::NotOpen,
        BidError::Closed => Outcome::Closed,
        BidError::UnknownAuction => Outcome::UnknownAuction,
        BidError::Invalid => Outcome::Invalid,
        BidError::Forbidden => Outcome::Forbidden,
        BidError::Overloaded { retry_after } => {
            let after = retry_after.max(Duration::from_millis(100));
            return Attempt::Retry("overloaded".into(), Some(after));
        }
        BidError::Server { code, message }
            if matches!(code, ErrorCode::Malformed | ErrorCode::InvalidArgument) =>
        {
            tracing::warn!(?code, %message, "the node refused a queued bid");
            Outcome::Error
        }
        other => return Attempt::Retry(other.to_string(), None),
    };
    Attempt::Final(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_client::Accepted;

    #[test]
    fn a_duplicate_is_the_original_outcome_and_undecided_answers_are_retried() {
        let original = Accepted {
            seq: 4,
            price: 150,
            ..Accepted::default()
        };
        assert!(matches!(
            answer(BidError::Duplicate { original }),
            Attempt::Final(Outcome::Accepted { seq: 4, price: 150 })
        ));
        assert!(matches!(
            answer(BidError::TooLow { min_next: 160 }),
            Attempt::Final(Outcome::TooLow { min_next: 160 })
        ));
        assert!(matches!(
            answer(BidError::Closed),
            Attempt::Final(Outcome::Closed)
        ));
        let Attempt::Retry(_, Some(after)) = answer(BidError::Overloaded {
            retry_after: Duration::ZERO,
        }) else {
            panic!("overloaded is retried after a delay")
        };
        assert!(after >= Duration::from_millis(100), "never a tight loop");
        for undecided in [
            BidError::Timeout,
            BidError::RateLimited,
            BidError::Connection("lost".into()),
            BidError::Server {
                code: ErrorCode::ShuttingDown,
                message: String::new(),
            },
        ] {
            assert!(matches!(answer(undecided), Attempt::Retry(_, None)));
        }
    }
}
