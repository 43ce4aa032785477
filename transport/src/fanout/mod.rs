//! Live price streams: who is subscribed to what, the change feed from the bid path, and
//! each subscriber connection's conflated outbound queue.
//!
//! - `trie`: [`Pattern`] (exact topics and `*`/`>` patterns, validated) and
//!   [`TopicTrie`], the prefix trie that finds a topic's subscribers without a scan.
//! - `feed`: [`DirtyFeed`], the conflating queue of changed auctions the bid path feeds
//!   without waiting and the fan-out workers drain.
//! - `hub`: [`Hub`], the subscription registry and [`Hub::publish`], the delivery of one
//!   auction's current state to every matching connection's outbox.
//! - `worker`: [`run_workers`], one fan-out task per feed shard.
//! - `outbox`: [`Outbox`], one subscriber connection's conflated, paced, byte-bounded
//!   outbound queue, with closes and settlements kept in order.
//! - `seen`: what one connection was last sent of each auction it watches (16 bytes per
//!   connection and auction), with its pending marks.
//! - `latest`: [`LatestPrices`], the latest update of each auction, kept once for every
//!   connection.

pub(crate) mod feed;
pub(crate) mod hub;
pub(crate) mod latest;
pub(crate) mod outbox;
pub(crate) mod seen;
pub(crate) mod trie;
pub(crate) mod worker;

pub use feed::DirtyFeed;
pub use hub::{Change, Hub, SubscribeError, Subscriber};
pub use latest::LatestPrices;
pub use outbox::{Outbox, Outgoing, Pushed, SharedPrice};
pub use trie::{Pattern, PatternError, TopicTrie};
pub use worker::run as run_workers;
