//! The names of the network edge's Prometheus metrics, their descriptions, and the small
//! recording helpers the transports share. Labels are bounded: a transport, a result, a
//! reason — never an auction or bidder id.

use gavel_engine::{BidOutcome, Rejection};

/// Bids decided, by `transport`, `result` (`accepted`/`rejected`) and `reason`.
pub const BIDS: &str = "gavel_bids_total";
/// Durable acks sent, by `transport`.
pub const DURABLE_ACKS: &str = "gavel_durable_acks_total";
/// Bid decide time on the node (decode excluded), seconds.
pub const BID_DECIDE_SECONDS: &str = "gavel_bid_decide_seconds";
/// Accepted → durable time as seen by the edge, seconds.
pub const BID_DURABLE_SECONDS: &str = "gavel_bid_durable_seconds";
/// Bids and admin requests for an auction this node does not serve (several nodes share
/// the auctions), by `transport` (`quic`, `ws`, `https` for the admin API) and `reason`
/// (`misdirected`: another node owns it, the answer names it; `no_owner`: nobody does now).
pub const REDIRECTS: &str = "gavel_redirects_total";
/// Requests refused before reaching the engine, by `transport` and `reason`
/// (`malformed`, `too_large`, `invalid_argument`, `forbidden`, `limit`,
/// `handshake`: a refused WebSocket handshake).
pub const REQUEST_ERRORS: &str = "gavel_request_errors_total";
/// Open connections, by `transport` and `role` (`bidder`, `device`, `admin`, `watcher`,
/// `anonymous`).
pub const CONNECTIONS: &str = "gavel_connections";
/// Connections accepted, by `transport`.
pub const CONNECTIONS_ACCEPTED: &str = "gavel_connections_accepted_total";
/// Connections refused or closed by a limit or a failure, by `transport` and `reason`.
pub const CONNECTIONS_REFUSED: &str = "gavel_connections_refused_total";
/// TLS handshakes that failed, by `transport` and `reason`.
pub const TLS_HANDSHAKE_FAILURES: &str = "gavel_tls_handshake_failures_total";
/// TLS material reloads, by `result` (`ok`/`error`).
pub const TLS_RELOADS: &str = "gavel_tls_reloads_total";
/// 1 if the latest load or reload of the TLS material succeeded, 0 if it failed (the last
/// good material stays in use).
pub const TLS_LAST_RELOAD_SUCCESSFUL: &str = "gavel_tls_last_reload_successful";
/// When the TLS material in use stops being valid, Unix seconds, by `kind`: `server_cert`
/// (the earliest `notAfter` of the server's chain), `client_ca` (the earliest in the client
/// CA bundle), `crl` (the earliest `nextUpdate`; past it every client is refused).
pub const TLS_EXPIRY: &str = "gavel_tls_expiry_timestamp_seconds";
/// Admin API requests, by `method`, `route` (the route template) and `status`.
pub const ADMIN_REQUESTS: &str = "gavel_admin_requests_total";

/// Dirty auctions whose state a fan-out worker read and published.
pub const STREAM_UPDATES_PUBLISHED: &str = "gavel_stream_updates_published_total";
/// Updates queued into subscriber outboxes (one per matching connection).
pub const STREAM_UPDATES_QUEUED: &str = "gavel_stream_updates_queued_total";
/// Updates written to subscriber sockets, by `transport`.
pub const STREAM_UPDATES_DELIVERED: &str = "gavel_stream_updates_delivered_total";
/// Price updates dropped as superseded by a later one before they were written, by
/// `transport`.
pub const STREAM_UPDATES_CONFLATED: &str = "gavel_stream_updates_conflated_total";
/// Stream connections closed as slow consumers, by `transport`.
pub const STREAM_SLOW_CONSUMERS: &str = "gavel_stream_slow_consumer_disconnects_total";
/// Subscriptions (topics plus patterns) held, by `transport`.
pub const STREAM_SUBSCRIPTIONS: &str = "gavel_stream_subscriptions";
/// Bytes waiting in subscriber outboxes, by `transport`.
pub const STREAM_QUEUE_BYTES: &str = "gavel_stream_queue_bytes";
/// Decision → written to the socket (or sent as a datagram), for price updates, seconds.
pub const STREAM_DELIVERY_SECONDS: &str = "gavel_stream_delivery_seconds";
/// Price updates sent as QUIC datagrams (loss-tolerant ticks to bidders who asked).
pub const STREAM_DATAGRAMS: &str = "gavel_stream_datagrams_total";
/// Bytes of edge stream (docs/edge-stream.md) written, by `transport` (`quic`, `ws`).
pub const STREAM_EDGE_BYTES: &str = "gavel_stream_edge_bytes_total";
/// Presence: connections holding at least one stream subscription, all transports.
pub const PRESENCE_WATCHERS: &str = "gavel_presence_watchers";
/// Presence: bidder connections open, all transports.
pub const PRESENCE_BIDDERS: &str = "gavel_presence_bidders";

/// Auctions settled and durable, by `winner` (`yes`/`no`), whatever closed them (end,
/// cancel, buy-now, Dutch sale).
pub const AUCTIONS_SETTLED: &str = "gavel_auctions_settled_total";

/// Always 1, labelled with the node's `version` and source `commit`.
pub const BUILD_INFO: &str = "gavel_build_info";

/// Registers the descriptions of the metrics above with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_bid_path();
    describe_connections();
    describe_streams();
    describe_counter!(
        ADMIN_REQUESTS,
        "Admin API requests, by method, route template and status."
    );
    describe_counter!(
        AUCTIONS_SETTLED,
        "Auctions settled and durable, by whether they had a winner."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version and commit labels name the build."
    );
}

/// The bid path's metrics.
fn describe_bid_path() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(BIDS, "Bids decided, by transport, result and reason.");
    describe_counter!(DURABLE_ACKS, "Durable acknowledgements sent, by transport.");
    describe_histogram!(
        BID_DECIDE_SECONDS,
        Unit::Seconds,
        "Time to decide one bid on the node, decode excluded."
    );
    describe_histogram!(
        BID_DURABLE_SECONDS,
        Unit::Seconds,
        "Time from a bid's acceptance to its durable acknowledgement."
    );
    describe_counter!(
        REQUEST_ERRORS,
        "Requests refused before reaching the engine, by transport and reason."
    );
    describe_counter!(
        REDIRECTS,
        "Requests for an auction another node owns (misdirected) or nobody owns now (no_owner), by transport."
    );
}

/// Connections and TLS.
fn describe_connections() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        CONNECTIONS,
        "Open client connections, by transport and role."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "Client connections accepted, by transport."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused or closed by a limit or failure, by transport and reason."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by transport and reason."
    );
    describe_counter!(TLS_RELOADS, "Reloads of the TLS material, by result.");
    describe_gauge!(
        TLS_LAST_RELOAD_SUCCESSFUL,
        "1 if the latest load of the TLS material succeeded, 0 if it failed and the last good material stays in use."
    );
    describe_gauge!(
        TLS_EXPIRY,
        Unit::Seconds,
        "When the TLS material in use stops being valid (Unix time), by kind: server_cert, client_ca (earliest notAfter), crl (earliest nextUpdate)."
    );
}

/// Price streams and presence.
fn describe_streams() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        STREAM_UPDATES_PUBLISHED,
        "Dirty auctions whose state a fan-out worker read and published."
    );
    describe_counter!(
        STREAM_UPDATES_QUEUED,
        "Stream updates queued into subscriber outboxes."
    );
    describe_counter!(
        STREAM_UPDATES_DELIVERED,
        "Stream updates written to subscriber sockets, by transport."
    );
    describe_counter!(
        STREAM_UPDATES_CONFLATED,
        "Price updates dropped as superseded before they were written, by transport."
    );
    describe_counter!(
        STREAM_SLOW_CONSUMERS,
        "Stream connections closed as slow consumers, by transport."
    );
    describe_gauge!(
        STREAM_SUBSCRIPTIONS,
        "Stream subscriptions (topics plus patterns) held, by transport."
    );
    describe_gauge!(
        STREAM_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes waiting in subscriber outboxes, by transport."
    );
    describe_histogram!(
        STREAM_DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from the decision a price update carries to its write to the socket, or its send as a datagram."
    );
    describe_counter!(
        STREAM_DATAGRAMS,
        "Price updates sent as QUIC datagrams (loss-tolerant ticks), by result (sent, too_large)."
    );
    describe_counter!(
        STREAM_EDGE_BYTES,
        Unit::Bytes,
        "Bytes of the compact edge stream written (frames, datagrams included), by transport."
    );
    describe_gauge!(
        PRESENCE_WATCHERS,
        "Connections holding stream subscriptions, all transports."
    );
    describe_gauge!(PRESENCE_BIDDERS, "Bidder connections open, all transports.");
}

/// Registers, at 0, the counters of rare events that the shipped alerts and dashboard
/// (`ops/`) read, for every value of their bounded labels: a series that appears only with
/// its first event makes `rate()` miss that event and leaves a dashboard panel empty.
pub fn start_rare_counters_at_zero() {
    for transport in ["ws", "sse", "quic"] {
        metrics::counter!(STREAM_SLOW_CONSUMERS, "transport" => transport).increment(0);
    }
    for transport in ["ws", "quic"] {
        metrics::counter!(STREAM_EDGE_BYTES, "transport" => transport).increment(0);
    }
    // The bidding transports' Overloaded answers (log back-pressure).
    let overloaded = rejection_label(&Rejection::Overloaded { retry_after_us: 0 });
    for transport in ["ws", "quic"] {
        metrics::counter!(BIDS, "transport" => transport, "result" => "rejected", "reason" => overloaded)
            .increment(0);
    }
    for transport in ["quic", "ws", "https"] {
        for reason in ["misdirected", "no_owner"] {
            metrics::counter!(REDIRECTS, "transport" => transport, "reason" => reason).increment(0);
        }
    }
    for result in ["ok", "error"] {
        metrics::counter!(TLS_RELOADS, "result" => result).increment(0);
    }
    for transport in ["https", "quic"] {
        metrics::counter!(CONNECTIONS_REFUSED, "transport" => transport, "reason" => "connections_max")
            .increment(0);
    }
}

/// The running build: its version and source commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    /// The release version (`0.1.0`).
    pub version: &'static str,
    /// The source commit (`unknown` when the build did not know it).
    pub commit: &'static str,
}

static BUILD: std::sync::OnceLock<Build> = std::sync::OnceLock::new();

/// Names the running build for [`BUILD_INFO`] and `/healthz`; the binary calls it before it
/// serves. The first call wins (the build of a process does not change).
pub fn set_build(build: Build) {
    let _ = BUILD.set(build);
}

/// The build named by [`set_build`], or this crate's version with an unknown commit.
pub fn build() -> Build {
    BUILD.get().copied().unwrap_or(Build {
        version: env!("CARGO_PKG_VERSION"),
        commit: "unknown",
    })
}

/// Sets [`BUILD_INFO`] (idempotent).
pub fn build_info() {
    let Build { version, commit } = build();
    metrics::gauge!(BUILD_INFO, "version" => version, "commit" => commit).set(1.0);
}

/// The `role` label of a connection: its certificate's role, or `anonymous`.
pub fn role_label(identity: Option<&crate::Identity>) -> &'static str {
    identity.map_or("anonymous", |i| i.role.as_str())
}

/// The label value of a bid outcome's reason.
pub fn outcome_labels(outcome: &BidOutcome) -> (&'static str, &'static str) {
    match outcome {
        BidOutcome::Accepted(_) => ("accepted", "none"),
        BidOutcome::Rejected(rejection) => ("rejected", rejection_label(rejection)),
    }
}

/// Counts a request answered with `owner` instead of a decision ([`REDIRECTS`]); returns
/// its reason label (`misdirected` when an owner is named, else `no_owner`).
pub(crate) fn redirect(
    transport: &'static str,
    owner: &gavel_proto::pb::PartitionOwner,
) -> &'static str {
    let reason = if owner.node.is_empty() {
        "no_owner"
    } else {
        "misdirected"
    };
    metrics::counter!(REDIRECTS, "transport" => transport, "reason" => reason).increment(1);
    reason
}

/// The label value of a rejection.
pub fn rejection_label(rejection: &Rejection) -> &'static str {
    rejection.name()
}

/// Counts a request refused before the engine.
pub fn request_error(transport: &'static str, reason: &'static str) {
    metrics::counter!(REQUEST_ERRORS, "transport" => transport, "reason" => reason).increment(1);
}
