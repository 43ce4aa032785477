//! The node as the transports' [`Backend`]: bids and auction operations through the durable
//! engine, durable acks from the write-ahead log's durable LSN.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use gavel_engine::{
    AuctionId, AuctionSpec, AuctionView, Bid, BidDecision, ClosedAuction, CreateError, ManageError,
    Receipt, UnixMicros,
};
use gavel_transport::{AuctionReads, Backend, DurableError};
use gavel_wal::{DurableFuture, WaitError};

use crate::node::Node;

/// A [`Node`] shared with the transports.
#[derive(Debug, Clone)]
pub struct NodeBackend(pub Arc<Node>);

impl AuctionReads for NodeBackend {
    fn view(&self, id: AuctionId, now: UnixMicros) -> Option<AuctionView> {
        self.0.view(id, now)
    }

    fn list(&self, after: Option<AuctionId>, limit: usize, now: UnixMicros) -> Vec<AuctionView> {
        self.0.list(after, limit, now)
    }

    fn pruned(&self, id: AuctionId) -> Option<gavel_engine::PrunedAuction> {
        self.0.pruned(id)
    }
}

impl Backend for NodeBackend {
    type Durable = NodeDurable;

    fn place_bid(&self, bid: &Bid, now: UnixMicros) -> BidDecision {
        self.0.place_bid(bid, now)
    }

    fn create_auction(&self, spec: AuctionSpec, now: UnixMicros) -> Result<Receipt, CreateError> {
        self.0.create_auction(spec, now)
    }

    fn cancel_auction(&self, id: AuctionId, now: UnixMicros) -> Result<ClosedAuction, ManageError> {
        self.0.cancel_auction(id, now)
    }

    fn durable(&self, receipt: Receipt) -> NodeDurable {
        NodeDurable(self.0.durable(receipt))
    }

    fn last_receipt(&self) -> Receipt {
        Receipt(self.0.wal().last_appended_lsn())
    }

    fn cluster(&self) -> Option<gavel_proto::pb::Cluster> {
        self.0.cluster()
    }

    fn owner_elsewhere(&self, auction: AuctionId) -> Option<gavel_proto::pb::PartitionOwner> {
        self.0.owner_elsewhere(auction)
    }

    fn readiness_detail(&self) -> String {
        readiness_detail(&self.0.follower_lags())
    }
}

/// One `/readyz` line per followed partition: `follower partition=<p> lag_records=<n>
/// lag_seconds=<s>`, and ` failed: <why>` for a follower that stopped.
fn readiness_detail(lags: &[crate::follow::FollowerLag]) -> String {
    use std::fmt::Write as _;
    let mut detail = String::new();
    for lag in lags {
        let _ = write!(
            detail,
            "follower partition={} lag_records={} lag_seconds={:.3}",
            lag.partition, lag.records, lag.seconds
        );
        if let Some(why) = &lag.failed {
            let _ = write!(detail, " failed: {}", why.replace('\n', " "));
        }
        detail.push('\n');
    }
    detail
}

/// Resolves once a receipt's LSN is durable; fails if the log stopped first.
#[derive(Debug)]
#[must_use = "a future does nothing unless polled"]
pub struct NodeDurable(DurableFuture);

impl Future for NodeDurable {
    type Output = Result<(), DurableError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map(|_| ()).map_err(durable_error))
    }
}

/// The transports' view of a failed durability wait (same message).
fn durable_error(error: WaitError) -> DurableError {
    match error {
        WaitError::Failed { durable } => DurableError::Failed { durable },
        WaitError::Closed { durable } => DurableError::Closed { durable },
        WaitError::Timeout { durable } => DurableError::Timeout { durable },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readiness_detail_has_a_line_per_followed_partition() {
        let lag = |partition, records, failed: Option<&str>| crate::follow::FollowerLag {
            partition,
            records,
            seconds: 0.25,
            failed: failed.map(str::to_owned),
        };
        assert_eq!(readiness_detail(&[]), "");
        assert_eq!(
            readiness_detail(&[lag(0, 0, None), lag(3, 7, Some("bad\nrecord"))]),
            "follower partition=0 lag_records=0 lag_seconds=0.250\n\
             follower partition=3 lag_records=7 lag_seconds=0.250 failed: bad record\n"
        );
    }

    #[test]
    fn a_durable_error_reads_as_the_wait_error_it_comes_from() {
        for error in [
            WaitError::Failed { durable: 5 },
            WaitError::Closed { durable: 6 },
            WaitError::Timeout { durable: 7 },
        ] {
            // The text bidders get in the Internal error answer stays what it was.
            assert_eq!(
                durable_error(error).to_string(),
                format!("not durable: {error}")
            );
        }
    }
}
