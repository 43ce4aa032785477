//! The forwarder: takes the queue's bids in order and places each on the node with its
//! bid id, until it has a final outcome; records the outcomes (on disk) and announces them.
//!
//! Order: a bid is placed only once the node decided the bid before it (its answer came:
//! accepted, or a final refusal). A bid whose fate is unknown (no answer, connection lost,
//! node overloaded, rate limited or shutting down) is placed again with the same bid id
//! before any later bid — the node answers a bid it already has with DUPLICATE and the
//! original outcome, which is taken as the outcome, so a bid forwarded twice is one bid.
//! Placing the next bid while an earlier one still waits for its answer would let the node
//! decide them out of order whenever it turned the earlier one away for load.
//!
//! The window: an accepted bid is finished only once the node says it is durable, so a
//! node crash between its acceptance and its log write cannot lose it. Those waits overlap:
//! up to [`WINDOW_BIDS_MAX`] accepted bids wait for their durable acks while later bids are
//! placed (the node's group commit makes one log write of many). Outcomes are recorded in
//! queue order, those ready together with one write and one fdatasync. If the node crashes,
//! the SDK places every bid still waiting again, in order, on its next connection; if a
//! durable ack never comes (the SDK gave up), the forwarder lets the window drain and
//! places everything from that bid on again — those the node has come back DUPLICATE.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::FutureExt as _;
use futures_util::stream::{FuturesOrdered, StreamExt as _};
use gavel_client::{Bid, BidError, Client};
use gavel_proto::pb::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::backoff::Backoff;

use crate::queue::{Outcome, QueuedBid, Status};

/// Accepted bids waiting for their durable acks at most (and outcomes not yet recorded).
pub(crate) const WINDOW_BIDS_MAX: usize = 256;

/// What one attempt to place a bid gave.
enum Attempt {
    /// The node's final answer.
    Final(Outcome),
    /// Place it again after a delay (the node's suggestion, or the backoff's).
    Retry(String, Option<Duration>),
}

/// A placed bid's wait for its final outcome (its durable ack, or a refusal at once).
type Waiting = Pin<Box<dyn Future<Output = (QueuedBid, Attempt)> + Send>>;

/// The forwarder's state between events.
struct Forwarder {
    shared: Arc<Shared>,
    /// Placed bids in queue order: they are the queue's first `window.len()` bids.
    window: FuturesOrdered<Waiting>,
    /// A durable ack never came: the window drains, then placing starts again at the front.
    rewinding: bool,
    backoff: Backoff,
}

/// Forwards bids until `shutdown`; bids in flight at shutdown stay queued.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let backoff = Backoff::new(shared.config.reconnect_backoff_max);
    let mut forwarder = Forwarder {
        shared,
        window: FuturesOrdered::new(),
        rewinding: false,
        backoff,
    };
    loop {
        let placed = forwarder.window.len();
        let room = placed < WINDOW_BIDS_MAX && !forwarder.rewinding;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(first) = forwarder.window.next() => {
                if !forwarder.settle(first, &shutdown).await {
                    return;
                }
            }
            bid = next_bid(&forwarder.shared, placed, &shutdown), if room => {
                let Some(bid) = bid else { return };
                if !forwarder.place(bid, &shutdown).await {
                    return;
                }
            }
        }
    }
}

impl Forwarder {
    /// Places `bid` (the next one) until the node decides it; `false` at shutdown.
    async fn place(&mut self, bid: QueuedBid, shutdown: &CancellationToken) -> bool {
        let Some(client) = self.shared.link.client(shutdown).await else {
            return false;
        };
        let placed = tokio::select! {
            _ = shutdown.cancelled() => return false,
            placed = place(&client, &bid) => placed,
        };
        let waiting: Waiting = match placed {
            Placed::Accepted(wait) => Box::pin(wait.map(move |attempt| (bid, attempt))),
            Placed::Answered(Attempt::Final(outcome)) => {
                Box::pin(std::future::ready((bid, Attempt::Final(outcome))))
            }
            Placed::Answered(Attempt::Retry(why, after)) => {
                metrics::counter!(crate::metrics::FORWARD_RETRIES).increment(1);
                let delay =
                    after.unwrap_or_else(|| self.backoff.failed(Instant::now(), &mut rand::rng()));
                tracing::debug!(bid_id = %crate::bids::bid_id_hex(bid.bid_id), %why, ?delay, "bid not decided; placing it again");
                return tokio::select! {
                    _ = shutdown.cancelled() => false,
                    _ = tokio::time::sleep(delay) => true,
                };
            }
        };
        self.backoff.connected(Instant::now());
        self.window.push_back(waiting);
        true
    }

    /// Records `first` and every outcome ready behind it, in order; `false` at shutdown or
    /// when the disk failed.
    async fn settle(&mut self, first: (QueuedBid, Attempt), shutdown: &CancellationToken) -> bool {
        let mut ready = vec![first];
        while let Some(Some(next)) = self.window.next().now_or_never() {
            ready.push(next);
        }
        let mut done = Vec::with_capacity(ready.len());
        for (bid, attempt) in ready {
            match attempt {
                Attempt::Final(outcome) if !self.rewinding => done.push((bid, outcome)),
                // Behind a bid to place again: placed again after it (DUPLICATE if known).
                Attempt::Final(_) => {}
                Attempt::Retry(why, _) => {
                    if !self.rewinding {
                        metrics::counter!(crate::metrics::FORWARD_RETRIES).increment(1);
                        tracing::debug!(bid_id = %crate::bids::bid_id_hex(bid.bid_id), %why, "no durable ack; placing again from this bid");
                    }
                    self.rewinding = true;
                }
            }
        }
        if !done.is_empty() && !finish(&self.shared, done).await {
            return false;
        }
        if self.rewinding && self.window.is_empty() {
            self.rewinding = false;
            let delay = self.backoff.failed(Instant::now(), &mut rand::rng());
            return tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(delay) => true,
            };
        }
        true
    }
}

/// The `n`-th queued bid (the first not placed yet), waiting for one to be queued; `None`
/// at shutdown, or when the queue file cannot be read.
async fn next_bid(shared: &Shared, n: usize, shutdown: &CancellationToken) -> Option<QueuedBid> {
    loop {
        let queued = shared.bids.queued.notified();
        let next = shared.bids.lock().nth(n);
        match next {
            Ok(Some(bid)) => return Some(bid),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading a queued bid failed; forwarding stops");
                return None;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = queued => {}
        }
    }
}

/// Records the outcomes of the front bids on disk (one sync) and announces them; `false`
/// if the disk failed (the forwarder stops: the bids stay queued and are placed again, as
/// DUPLICATEs, after a restart).
async fn finish(shared: &Arc<Shared>, done: Vec<(QueuedBid, Outcome)>) -> bool {
    let bids = Arc::clone(&shared.bids);
    let outcomes: Vec<(u128, Outcome)> = done.iter().map(|(b, o)| (b.bid_id, *o)).collect();
    let written = tokio::task::spawn_blocking(move || bids.lock().finish_all(&outcomes)).await;
    if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
        tracing::error!(error = %e, "recording bids' outcomes failed; forwarding stops");
        return false;
    }
    let now_us = crate::bids::unix_micros();
    for (bid, outcome) in done {
        metrics::counter!(crate::metrics::BIDS_FORWARDED, "outcome" => outcome.name()).increment(1);
        let waited_us = now_us.saturating_sub(bid.queued_at_us);
        metrics::histogram!(crate::metrics::BID_SECONDS).record(waited_us as f64 / 1e6);
        let status = Status::Done {
            outcome,
            tag: bid.tag,
        };
        let _ = shared.bids.events.send((bid.bid_id, status));
    }
    true
}

/// What placing a bid once gave.
enum Placed<W> {
    /// Accepted: the wait for its durable ack.
    Accepted(W),
    /// Refused, or undecided.
    Answered(Attempt),
}

/// Places `bid` once (the SDK resends it across reconnects within its request timeout);
/// if accepted, the wait for its durable ack.
async fn place(
    client: &Client,
    bid: &QueuedBid,
) -> Placed<impl Future<Output = Attempt> + Send + 'static> {
    let mut request = Bid::new(bid.auction_id, bid.amount).with_id(bid.bid_id);
    if let Some(max) = bid.max {
        request = request.with_max(max);
    }
    let placed = match client.place_bid(request).await {
        Ok(placed) => placed,
        Err(error) => return Placed::Answered(answer(error)),
    };
    let accepted = placed.accepted().clone();
    Placed::Accepted(async move {
        match placed.durable().await {
            Ok(_) => Attempt::Final(Outcome::Accepted {
                seq: accepted.seq,
                price: accepted.price,
            }),
            Err(e) => Attempt::Retry(format!("no durable ack: {e}"), None),
        }
    })
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
