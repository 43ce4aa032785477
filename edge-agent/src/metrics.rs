//! The agent's Prometheus metrics (`gavel_edge_*`, served at `/metrics` on the local HTTP
//! port): one process-wide recorder, every metric described and started at zero so a
//! scrape shows them before anything happened.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// 1 when the agent's stream from the node is up, else 0.
pub(crate) const CONNECTED: &str = "gavel_edge_connected";
/// Connections to the node re-established after a loss.
pub(crate) const RECONNECTS: &str = "gavel_edge_reconnects_total";
/// Bytes of edge stream read from the node.
pub(crate) const STREAM_BYTES: &str = "gavel_edge_stream_bytes_total";
/// Price datagrams (edge keyframes) read from the node.
pub(crate) const DATAGRAMS: &str = "gavel_edge_datagrams_total";
/// Keyframes asked for (`Resume` positions sent), by `why` (`record`: a record that did
/// not apply; `datagram_check`: the periodic check of auctions datagrams touched).
pub(crate) const KEYFRAME_REQUESTS: &str = "gavel_edge_keyframe_requests_total";
/// Auction states applied from the stream.
pub(crate) const UPDATES_APPLIED: &str = "gavel_edge_updates_applied_total";
/// Edge frames or records refused by the decoder, by `error`.
pub(crate) const DECODE_ERRORS: &str = "gavel_edge_decode_errors_total";
/// Auctions held.
pub(crate) const AUCTIONS: &str = "gavel_edge_auctions";
/// Bids waiting in the queue.
pub(crate) const QUEUE_BIDS: &str = "gavel_edge_queue_bids";
/// Bytes of the waiting bids' records.
pub(crate) const QUEUE_BYTES: &str = "gavel_edge_queue_bytes";
/// Bids queued (fsynced) since start.
pub(crate) const BIDS_QUEUED: &str = "gavel_edge_bids_queued_total";
/// Bids refused by the agent, by `reason` (`queue_full`, `invalid`).
pub(crate) const BIDS_REFUSED: &str = "gavel_edge_bids_refused_total";
/// Bids forwarded to the node with a final outcome, by `outcome`.
pub(crate) const BIDS_FORWARDED: &str = "gavel_edge_bids_forwarded_total";
/// Forward attempts that must be retried (no answer, connection lost, overloaded).
pub(crate) const FORWARD_RETRIES: &str = "gavel_edge_forward_retries_total";
/// 1 when the agent is connected to the local MQTT broker, else 0.
pub(crate) const MQTT_CONNECTED: &str = "gavel_edge_mqtt_connected";
/// Connections to the MQTT broker re-established after a loss.
pub(crate) const MQTT_RECONNECTS: &str = "gavel_edge_mqtt_reconnects_total";
/// MQTT publishes handed to the client, by `kind` (`state`, `status`).
pub(crate) const MQTT_PUBLISHES: &str = "gavel_edge_mqtt_publishes_total";
/// Seconds from a bid's arrival to its final outcome.
pub(crate) const BID_SECONDS: &str = "gavel_edge_bid_outcome_seconds";

/// Histogram buckets, seconds: 100 µs to 60 s (a queued bid may wait for the node).
const BUCKETS_SECONDS: [f64; 14] = [
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub(crate) fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS_SECONDS)
                .expect("the bucket list is non-empty (a constant)")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            start_at_zero();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CONNECTED, "1 when the stream from the node is up, else 0.");
    describe_counter!(
        RECONNECTS,
        "Connections to the node re-established after a loss."
    );
    describe_counter!(
        STREAM_BYTES,
        Unit::Bytes,
        "Bytes of edge stream read from the node."
    );
    describe_counter!(DATAGRAMS, "Price datagrams read from the node.");
    describe_counter!(
        KEYFRAME_REQUESTS,
        "Auction positions sent in Resume requests for keyframes, by why."
    );
    describe_counter!(
        UPDATES_APPLIED,
        "Auction states applied from the edge stream."
    );
    describe_counter!(
        DECODE_ERRORS,
        "Edge frames or records refused by the decoder, by error."
    );
    describe_gauge!(AUCTIONS, "Auctions held.");
    describe_gauge!(QUEUE_BIDS, "Bids waiting in the on-disk queue.");
    describe_gauge!(
        QUEUE_BYTES,
        Unit::Bytes,
        "Bytes of the waiting bids' records."
    );
    describe_counter!(BIDS_QUEUED, "Bids queued (on disk) since start.");
    describe_counter!(BIDS_REFUSED, "Bids refused by the agent, by reason.");
    describe_counter!(
        BIDS_FORWARDED,
        "Bids forwarded with a final outcome, by outcome."
    );
    describe_counter!(
        FORWARD_RETRIES,
        "Forward attempts to retry (no answer, lost, overloaded)."
    );
    describe_gauge!(
        MQTT_CONNECTED,
        "1 when connected to the local MQTT broker, else 0."
    );
    describe_counter!(
        MQTT_RECONNECTS,
        "Connections to the MQTT broker re-established."
    );
    describe_counter!(
        MQTT_PUBLISHES,
        "MQTT publishes handed to the client, by kind."
    );
    describe_histogram!(
        BID_SECONDS,
        Unit::Seconds,
        "From a bid's arrival to its final outcome."
    );
}

fn start_at_zero() {
    for name in [CONNECTED, AUCTIONS, QUEUE_BIDS, QUEUE_BYTES, MQTT_CONNECTED] {
        metrics::gauge!(name).set(0.0);
    }
    for name in [
        RECONNECTS,
        STREAM_BYTES,
        DATAGRAMS,
        UPDATES_APPLIED,
        BIDS_QUEUED,
        FORWARD_RETRIES,
        MQTT_RECONNECTS,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::counter!(BIDS_REFUSED, "reason" => "queue_full").absolute(0);
    metrics::counter!(BIDS_FORWARDED, "outcome" => "accepted").absolute(0);
    metrics::counter!(MQTT_PUBLISHES, "kind" => "state").absolute(0);
}
