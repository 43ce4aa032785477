//! `gavel_node`: the parts of the Gavel node, as a library the `gavel` binary (and the
//! integration tests) drive.
//!
//! Map of the crate:
//! - [`backend`]: [`NodeBackend`], the node as the transports' [`gavel_transport::Backend`].
//! - [`closer`]: the closer thread — closes due auctions, sleeping until the next end (or an
//!   earlier creation), and announces each settlement once durable.
//! - [`durable`]: [`WalSink`], the engine's event sink that encodes each decision's events as
//!   WAL records and appends them all or none; its receipt is the decision's last LSN.
//! - [`node`]: [`Node`], the durable engine — start-up (snapshot + replay of the log after it),
//!   auction operations through the WAL, durable waits, periodic snapshots with compaction,
//!   shutdown.
//! - [`replay`]: parallel replay of the log at start-up, partitioned by auction.
//! - [`routing`]: with several nodes on one Kafka log, who serves an auction's partition and
//!   where to reach it (the advertisement published with each lease claim).
//! - [`serve`]: `gavel serve`, the network node — configuration, start-up, the close ticker,
//!   metrics, graceful shutdown.
//! - [`simulate`]: `gavel simulate`, demo auctions with simulated bidders, in memory or on a
//!   data directory.
//! - [`wal_tools`]: `gavel wal verify` and `gavel wal dump`, offline.
//!
//! Architecture invariant: nothing here is acknowledged durable unless the WAL's durable LSN
//! reached its receipt; a failed log stops the node, it never acknowledges.

pub mod backend;
pub mod closer;
pub mod durable;
pub mod follow;
pub mod node;
pub mod replay;
pub mod routing;
pub mod serve;
pub mod simulate;
pub mod takeover;
pub mod wal_tools;

pub use backend::NodeBackend;
pub use durable::WalSink;
pub use node::{Node, NodeConfig, RecoveryReport, SnapshotTaken};

/// The source commit this build comes from (`unknown` when it was built without git and
/// without `GAVEL_COMMIT`; see `build.rs`).
pub const COMMIT: &str = env!("GAVEL_COMMIT");

/// The version and build, as `gavel --version` prints it: `0.1.0 (commit 1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GAVEL_COMMIT"),
    ")"
);

/// Hex of a state hash, for humans and for tests that compare runs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
