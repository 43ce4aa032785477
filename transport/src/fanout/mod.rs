//! Live price streams: who is subscribed to what, and (in later slices) the change feed
//! from the engine to the subscribed connections.
//!
//! - [`trie`]: [`Pattern`] (exact topics and `*`/`>` patterns, validated) and
//!   [`TopicTrie`], the prefix trie that finds a topic's subscribers without a scan.
//! - [`feed`]: [`DirtyFeed`], the conflating queue of changed auctions the bid path feeds
//!   without waiting and the fan-out workers drain.
//! - [`outbox`]: [`Outbox`], one subscriber connection's conflated, paced, byte-bounded
//!   outbound queue, with closes and settlements kept in order.

pub mod feed;
pub mod outbox;
pub mod trie;

pub use feed::DirtyFeed;
pub use outbox::{Outbox, Pushed};
pub use trie::{Pattern, PatternError, TopicTrie};
