//! `gavel-transport`: the node's network edge — QUIC and WebSocket bidders and watchers,
//! the HTTPS admin API with `/metrics` and health probes, TLS with client certificates, and
//! the limits that keep one bad client from hurting the others.
//!
//! The modules other crates need are public; the rest are private, and the crate root
//! re-exports the few types of theirs that other crates name.
//!
//! Map of the crate:
//! - [`clock`]: the wall clock as the engine's time ([`clock::now_micros`]).
//! - `identity`: [`Identity`] and [`Role`], parsed from a certificate's
//!   `gavel://<role>/<id>` SAN URI.
//! - `limits`: [`Limits`], every bound of the edge with its safe default, and the
//!   per-bidder token bucket.
//! - `gateway`: [`Gateway`], what all connections share, and [`Backend`], the seam to the
//!   durable engine the node implements (its reads: [`AuctionReads`]).
//! - `session`: one connection's request handling, the same for every transport: a
//!   decoded `ClientMessage` in, `ServerMessage`s out, durable acks as waits.
//! - `durable_acks`: one stream's accepted bids waiting for their durable acks, answered
//!   in request order — the queue of both QUIC streams and WebSockets, no `Box` per bid.
//! - `stream`: the sans-IO stream core, one per QUIC stream, WebSocket or SSE stream:
//!   requests, durable acks, outbox batches, timers and the end with its documented code;
//!   the transports' loops only move bytes between their socket and it.
//! - [`settlement`]: a close and settlement announced to the watchers once durable, the
//!   same for the closer, the admin API's cancel and a bid that closes its auction.
//! - [`http`]: the HTTPS port — admin API, `/metrics`, `/healthz`, `/readyz` and the
//!   WebSocket endpoint `/v1/ws` — and a plain-HTTP metrics listener.
//! - [`fanout`]: live price streams — topic patterns and the subscription trie, and the
//!   conflating feed of changed auctions from the bid path to the fan-out workers.
//! - [`metrics`]: the names of the edge's Prometheus metrics.
//! - [`tls`]: [`tls::ServerTls`], the QUIC and HTTPS server configurations with client
//!   certificates verified against the CA and its CRL, reloaded without restart;
//!   [`tls::peer_identity`]; the development PKI (`tls::dev`, feature `dev-pki`) behind `gavel cert`.
//! - [`quic`]: the QUIC listener for bidders ([`quic::bind`], [`quic::serve_quic`]):
//!   connection and handshake limits, one task per stream, batched writes, durable acks as
//!   they resolve, graceful drain.
//!
//! Architecture invariant: the transports know the engine's types and the wire schema, but
//! nothing of the write-ahead log or files beyond the TLS material they load; the engine is
//! reached only through [`Backend`].

pub mod clock;
mod durable_acks;
pub mod fanout;
mod gateway;
pub mod http;
mod identity;
mod limits;
pub mod metrics;
pub mod quic;
mod session;
pub mod settlement;
mod stream;
#[cfg(test)]
mod test_support;
pub mod tls;

pub use gateway::{AuctionReads, Backend, DurableError, Gateway};
pub use identity::{IDENTITY_URI_SCHEME, Identity, IdentityError, Role};
pub use limits::{LimitError, Limits};
