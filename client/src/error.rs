//! The SDK's errors: why a bid was not placed ([`BidError`]) and why a client could not
//! connect ([`ConnectError`]).

use std::time::Duration;

use gavel_proto::pb;

use crate::Accepted;

/// Why a bid (or a ping) did not get the answer hoped for. One variant per reason the node
/// rejects a bid, then the failures of the request itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BidError {
    /// Below the next acceptable amount.
    #[error("bid too low: the next acceptable amount is {min_next}")]
    TooLow {
        /// The lowest amount the node would have considered, in ticks.
        min_next: u64,
    },
    /// The auction has not started.
    #[error("the auction has not started")]
    NotOpen,
    /// The auction has ended.
    #[error("the auction has ended")]
    Closed,
    /// No auction with that id.
    #[error("no such auction")]
    UnknownAuction,
    /// The bid id was used before by another bid of this bidder (not a retry by this SDK,
    /// which turns its own retries into their original outcome).
    #[error("the bid id was used before (original seq {})", original.seq)]
    Duplicate {
        /// The outcome the bid id got the first time.
        original: Accepted,
    },
    /// The bidder exceeded its bid rate.
    #[error("rate limited")]
    RateLimited,
    /// The node could not take the bid now.
    #[error("the node is overloaded; retry after {retry_after:?}")]
    Overloaded {
        /// The node's suggested wait before a retry.
        retry_after: Duration,
    },
    /// The bid does not fit the auction (for example a proxy maximum in a sealed auction).
    #[error("the bid does not fit the auction")]
    Invalid,
    /// This certificate's identity may not bid.
    #[error("this identity may not bid")]
    Forbidden,
    /// The node refused the request with an error (bad argument, shutting down, internal).
    #[error("the node answered {code:?}: {message}")]
    Server {
        /// The node's error code.
        code: pb::ErrorCode,
        /// The node's explanation, for people.
        message: String,
    },
    /// The connection failed and the request could not be retried (the client is closed,
    /// or a ping was in flight), or the node's answer was not understood.
    #[error("connection: {0}")]
    Connection(String),
    /// No answer in time. For a bid, its fate is unknown: place it again with the same
    /// `bid_id` to learn it (the node answers a retry with the original outcome).
    #[error("no answer in time")]
    Timeout,
}

/// Why [`crate::Client::connect`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is unusable (unreadable PEM, no certificate, bad key).
    #[error("configuration: {0}")]
    Config(String),
    /// The connection could not be established or was refused (for example the node did
    /// not accept the client certificate).
    #[error("connection: {0}")]
    Connection(String),
    /// The node did not complete the handshake and answer a ping in time.
    #[error("connecting timed out")]
    Timeout,
}
