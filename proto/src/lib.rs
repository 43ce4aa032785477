//! `gavel-proto`: Gavel's wire schema and the conversions between wire and engine types.
//!
//! Only this crate defines wire types. The engine's value types never derive wire traits;
//! messages are parsed into them here, at the boundary, and every bad input becomes a typed
//! [`ProtoError`] (parse, don't validate). The code is generated from `gavel/v1/*.proto` at
//! build time by prost-build fed by protox, so no system `protoc` is needed.
//!
//! Map of the crate:
//! - [`pb`]: the generated messages of package `gavel.v1`, with serde derives for the JSON
//!   subprotocol:
//!   - `auction.proto`: rules ([`pb::AuctionRules`]), outcomes ([`pb::Accepted`]), results
//!     ([`pb::Settlement`]), [`pb::Phase`], [`pb::CloseReason`];
//!   - `stream.proto`: the client/node envelopes [`pb::ClientMessage`] and
//!     [`pb::ServerMessage`] and everything they carry (bids, outcomes, durable acks,
//!     subscriptions, price updates, snapshots, closes, settlements, ping/pong, errors);
//!   - `admin.proto`: create, cancel, get and list auctions;
//!   - `wal.proto`: [`pb::Record`], the payload of one write-ahead-log record, and
//!     [`pb::Snapshot`] of [`pb::AuctionStateRecord`]s, the payload of a snapshot file.
//! - [`convert`]: the conversions, as `From`/`TryFrom` impls and a few methods on the
//!   generated types:
//!   - [`convert::bid`]: `PlaceBid` + certificate identity → [`gavel_engine::Bid`]; bid
//!     outcomes both ways;
//!   - [`convert::rules`]: auction rules both ways, winners and settlements, phases and close
//!     reasons;
//!   - [`convert::snapshot`]: [`gavel_engine::AuctionView`] ↔ [`pb::AuctionSnapshot`], and
//!     the close and settlement stream messages built from events;
//!   - [`convert::state`]: [`gavel_engine::AuctionState`] ↔ [`pb::AuctionStateRecord`],
//!     lossless, and whole snapshots ([`convert::state::encode_snapshot`],
//!     [`convert::state::decode_snapshot`], or written one auction at a time);
//!   - [`convert::wal`]: [`gavel_engine::Event`] ↔ [`pb::Record`], lossless.
//! - [`frame`]: length-delimited framing of messages on a QUIC stream (sans-IO), shared by
//!   the node and the bidder SDK, with its size limit and the ALPN name.
//! - [`ProtoError`]: why a message could not become an engine value; [`SnapshotError`]: why
//!   a snapshot's bytes could not.
//!
//! Architecture invariant: this crate knows the engine's types and protobuf, nothing of
//! sockets, files or async runtimes. Stream framing lives here as bytes in, messages out;
//! the WAL's record framing belongs to `wal`.

pub mod convert;
mod error;
pub mod frame;

pub use error::{ProtoError, SnapshotError};

/// Messages of package `gavel.v1`, generated from `gavel/v1/*.proto` at build time.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/gavel.v1.rs"));
}
