//! Every limit of the network edge, with safe defaults (PRODUCT.md §6), and the per-bidder
//! token bucket.
//!
//! Config may lower (or raise) each value; `gavel serve --help` documents them with their
//! units and, from [`Limits::default`], their defaults. Names carry the unit last (`frame_bytes_max`, `idle_timeout_ms`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gavel_engine::BidderId;
use serde::{Deserialize, Serialize};

/// The limits of one node's network edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest protobuf frame on a QUIC stream, in bytes (length prefix excluded).
    pub frame_bytes_max: usize,
    /// Largest WebSocket message, in bytes; larger ones close the connection with 1009.
    pub ws_message_bytes_max: usize,
    /// Largest HTTP request body (admin API), in bytes.
    pub http_body_bytes_max: usize,
    /// Open connections over all transports.
    pub connections_max: usize,
    /// TLS handshakes in progress at once; more are refused until one finishes.
    pub handshakes_pending_max: usize,
    /// Time a TLS handshake may take, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Bidirectional streams a QUIC connection may open at once.
    pub streams_per_connection_max: u32,
    /// Subscriptions (topics plus patterns) one connection may hold.
    pub subscriptions_per_connection_max: usize,
    /// Requests of one connection waiting for their durable ack.
    pub pending_durable_per_connection_max: usize,
    /// Stream updates one connection may have queued and not yet written, in bytes (after
    /// conflation); twice this is a hard bound.
    pub outbound_bytes_max_per_connection: usize,
    /// A connection over `outbound_bytes_max_per_connection` for this long is closed as a
    /// slow consumer, in milliseconds.
    pub slow_consumer_timeout_ms: u64,
    /// Bytes of stream updates a stream connection may have written that were not sent yet
    /// (the kernel's `TCP_NOTSENT_LOWAT` of WebSocket and SSE sockets, the HTTP/2 send
    /// buffer per stream, the batch a stream writes at once): newer updates wait, conflated,
    /// in the outbox until the reader takes these.
    pub stream_unsent_bytes_max: usize,
    /// Sustained bids per second per bidder (token bucket refill rate), over all of the
    /// bidder's connections.
    pub bids_per_second_per_bidder: u32,
    /// Bids a bidder may send in a burst above its rate (token bucket size).
    pub bid_burst_per_bidder: u32,
    /// A connection with no traffic for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Most auctions in one page of the admin list.
    pub list_limit_max: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            frame_bytes_max: 64 * 1024,
            ws_message_bytes_max: 64 * 1024,
            http_body_bytes_max: 64 * 1024,
            connections_max: 10_000,
            handshakes_pending_max: 256,
            handshake_timeout_ms: 10_000,
            streams_per_connection_max: 16,
            subscriptions_per_connection_max: 256,
            pending_durable_per_connection_max: 4096,
            outbound_bytes_max_per_connection: 1024 * 1024,
            slow_consumer_timeout_ms: 5_000,
            stream_unsent_bytes_max: 4 * 1024,
            bids_per_second_per_bidder: 100_000,
            bid_burst_per_bidder: 10_000,
            idle_timeout_ms: 60_000,
            list_limit_max: 1_000,
        }
    }
}

/// Smallest QUIC frame or WebSocket message limit, in bytes: one bid with its envelope must
/// fit.
pub(crate) const MESSAGE_BYTES_MAX_LEAST: usize = 256;
/// Greatest QUIC frame or WebSocket message limit, in bytes.
pub(crate) const MESSAGE_BYTES_MAX_MOST: usize = 16 * 1024 * 1024;

/// A limit [`Limits::validate`] refuses: which one, and the bound it is on the wrong side of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The value is below the limit's least allowed value.
    #[error("{limit} must be at least {least}, got {value}")]
    TooSmall {
        /// The limit (its config key).
        limit: &'static str,
        /// The least allowed value.
        least: u64,
        /// The value given.
        value: u64,
    },
    /// The value is above the limit's greatest allowed value.
    #[error("{limit} must be at most {most}, got {value}")]
    TooLarge {
        /// The limit (its config key).
        limit: &'static str,
        /// The greatest allowed value.
        most: u64,
        /// The value given.
        value: u64,
    },
}

impl Limits {
    /// Checks every value is within its bounds; called once at start. The first limit out
    /// of bounds is the error.
    pub fn validate(&self) -> Result<(), LimitError> {
        let at_least_one = [
            ("frame_bytes_max", self.frame_bytes_max as u64),
            ("ws_message_bytes_max", self.ws_message_bytes_max as u64),
            ("http_body_bytes_max", self.http_body_bytes_max as u64),
            ("connections_max", self.connections_max as u64),
            ("handshakes_pending_max", self.handshakes_pending_max as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "streams_per_connection_max",
                u64::from(self.streams_per_connection_max),
            ),
            (
                "pending_durable_per_connection_max",
                self.pending_durable_per_connection_max as u64,
            ),
            (
                "outbound_bytes_max_per_connection",
                self.outbound_bytes_max_per_connection as u64,
            ),
            ("slow_consumer_timeout_ms", self.slow_consumer_timeout_ms),
            (
                "stream_unsent_bytes_max",
                self.stream_unsent_bytes_max as u64,
            ),
            (
                "bids_per_second_per_bidder",
                u64::from(self.bids_per_second_per_bidder),
            ),
            ("bid_burst_per_bidder", u64::from(self.bid_burst_per_bidder)),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("list_limit_max", u64::from(self.list_limit_max)),
        ];
        for (limit, value) in at_least_one {
            within(limit, value, 1, u64::MAX)?;
        }
        for (limit, value) in [
            ("frame_bytes_max", self.frame_bytes_max),
            ("ws_message_bytes_max", self.ws_message_bytes_max),
        ] {
            within(
                limit,
                value as u64,
                MESSAGE_BYTES_MAX_LEAST as u64,
                MESSAGE_BYTES_MAX_MOST as u64,
            )?;
        }
        Ok(())
    }

    /// [`Limits::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// [`Limits::slow_consumer_timeout_ms`] as a duration.
    pub fn slow_consumer_timeout(&self) -> Duration {
        Duration::from_millis(self.slow_consumer_timeout_ms)
    }

    /// [`Limits::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// `Ok` if `least <= value <= most`, else the bound `limit` broke.
fn within(limit: &'static str, value: u64, least: u64, most: u64) -> Result<(), LimitError> {
    if value < least {
        Err(LimitError::TooSmall {
            limit,
            least,
            value,
        })
    } else if value > most {
        Err(LimitError::TooLarge { limit, most, value })
    } else {
        Ok(())
    }
}

/// Shards of the bidder rate table; a power of two.
const RATE_SHARDS: usize = 64;
/// Buckets kept per shard before idle full buckets are swept out.
const RATE_BUCKETS_PER_SHARD_MAX: usize = 4096;

/// Per-bidder token buckets, shared by all connections of a node.
#[derive(Debug)]
pub struct BidRateLimiter {
    rate_per_s: f64,
    burst: f64,
    shards: Box<[Mutex<HashMap<BidderId, Bucket>>]>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl BidRateLimiter {
    /// A limiter refilling `rate_per_s` tokens per second up to `burst`.
    pub fn new(rate_per_s: u32, burst: u32) -> BidRateLimiter {
        BidRateLimiter {
            rate_per_s: f64::from(rate_per_s.max(1)),
            burst: f64::from(burst.max(1)),
            shards: (0..RATE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    /// Takes one token for `bidder`; `false` means the bid must be refused as rate limited.
    pub fn try_take(&self, bidder: &BidderId, now: Instant) -> bool {
        let shard = &self.shards[shard_of(bidder)];
        // A std mutex: the critical section is a few arithmetic operations and never awaits.
        let mut buckets = shard
            .lock()
            .expect("rate-limit mutex poisoned: nothing panics while holding it");
        if buckets.len() >= RATE_BUCKETS_PER_SHARD_MAX && !buckets.contains_key(bidder) {
            sweep(&mut buckets, now, self.rate_per_s, self.burst);
        }
        let bucket = buckets.entry(*bidder).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_s).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Drops buckets that would be full by now: forgetting them changes nothing.
fn sweep(buckets: &mut HashMap<BidderId, Bucket>, now: Instant, rate: f64, burst: f64) {
    buckets.retain(|_, b| {
        let elapsed = now.saturating_duration_since(b.refilled_at).as_secs_f64();
        b.tokens + elapsed * rate < burst
    });
}

fn shard_of(bidder: &BidderId) -> usize {
    let hash = bidder
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    // Truncation intended: the low bits pick the shard.
    (hash as usize) & (RATE_SHARDS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_each_refusal_names_the_limit_and_its_bound() {
        Limits::default().validate().unwrap();
        let refused = |limits: Limits| limits.validate().unwrap_err();
        let zero = refused(Limits {
            connections_max: 0,
            ..Limits::default()
        });
        assert_eq!(
            zero,
            LimitError::TooSmall {
                limit: "connections_max",
                least: 1,
                value: 0
            }
        );
        assert_eq!(
            zero.to_string(),
            "connections_max must be at least 1, got 0"
        );
        let small = refused(Limits {
            frame_bytes_max: 255,
            ..Limits::default()
        });
        assert_eq!(
            small,
            LimitError::TooSmall {
                limit: "frame_bytes_max",
                least: 256,
                value: 255
            }
        );
        let large = refused(Limits {
            ws_message_bytes_max: MESSAGE_BYTES_MAX_MOST + 1,
            ..Limits::default()
        });
        assert_eq!(
            large,
            LimitError::TooLarge {
                limit: "ws_message_bytes_max",
                most: 16 << 20,
                value: (16 << 20) + 1
            }
        );
        let bounds = Limits {
            frame_bytes_max: MESSAGE_BYTES_MAX_LEAST,
            ws_message_bytes_max: MESSAGE_BYTES_MAX_MOST,
            ..Limits::default()
        };
        bounds.validate().unwrap();
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let limiter = BidRateLimiter::new(10, 5);
        let bidder = BidderId::new("b1").unwrap();
        let other = BidderId::new("b2").unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.try_take(&bidder, t0));
        }
        assert!(!limiter.try_take(&bidder, t0), "the burst is 5");
        assert!(limiter.try_take(&other, t0), "buckets are per bidder");
        // 10/s: one token after 100 ms, not before.
        assert!(!limiter.try_take(&bidder, t0 + Duration::from_millis(50)));
        assert!(limiter.try_take(&bidder, t0 + Duration::from_millis(160)));
        assert!(!limiter.try_take(&bidder, t0 + Duration::from_millis(160)));
    }

    #[test]
    fn idle_full_buckets_are_swept() {
        let limiter = BidRateLimiter::new(1000, 1);
        let t0 = Instant::now();
        for i in 0..(RATE_SHARDS * RATE_BUCKETS_PER_SHARD_MAX * 2) {
            let bidder = BidderId::new(&format!("b{i}")).unwrap();
            assert!(limiter.try_take(&bidder, t0 + Duration::from_secs(i as u64)));
        }
        let held: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(
            held <= RATE_SHARDS * RATE_BUCKETS_PER_SHARD_MAX,
            "held {held}"
        );
    }
}
