//! The Gavel load tester: honest latency numbers for a node, side by side with baselines
//! measured in the same run with the same load shape.
//!
//! - [`pace`]: the open-loop schedule (fixed arrival rate, latency from each request's
//!   intended send time — no coordinated omission);
//! - [`workload`]: which auction each bid goes to (uniform or Zipf) and its amount (a mix of
//!   winning and too-low bids);
//! - [`bidders`]: bidder connections over QUIC (the SDK) and WebSocket;
//! - [`ws`]: WebSocket over TLS and the watchers (the node's subscriptions, nats-server's
//!   subjects) recording delivery latency from the updates' `accepted_at_us`;
//! - [`echo`], [`fsync`], [`nats`], [`burst`]: the baselines — a bare quinn mTLS echo
//!   (transport floor), raw append + fsync (durability floor), nats-server's WebSocket
//!   fan-out (peer), one message to every TLS WebSocket at once (fan-out floor);
//! - [`target`]: the node as a child process (`gavel serve --dev`) or a running one, and the
//!   admin API;
//! - [`run`]: the phases of a run and `--max-rate` search;
//! - [`staleness`]: fan-out freshness — each (watcher, change)'s time until the watcher holds
//!   it or a newer one;
//! - [`stats`], [`report`]: HdrHistogram, counts, CPU; JSON, `.hgrm`, SVG and the table;
//! - [`trace`]: `--record-trace`, the run's price stream written to a file.
//!
//! Every run is bounded in time and count, and targets loopback addresses unless told
//! otherwise.

pub mod bidders;
pub mod burst;
pub mod echo;
pub mod fsync;
pub mod nats;
pub mod pace;
pub mod report;
pub mod run;
pub mod staleness;
pub mod stats;
pub mod target;
pub mod trace;
pub mod workload;
pub mod ws;
