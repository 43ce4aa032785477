//! The agent as a process: its metrics, its shutdown, its queue across kills.

mod common;

use std::time::Duration;

use common::{AgentProcess, http};

#[test]
fn metrics_show_every_gavel_edge_metric_and_sigterm_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::start(&[
        "--mqtt-broker",
        "off",
        "--node",
        "127.0.0.1:9",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    let (status, body) = http(agent.http, "GET", "/metrics", "");
    assert_eq!(status, 200);
    for name in [
        "gavel_edge_connected 0",
        "gavel_edge_reconnects_total",
        "gavel_edge_stream_bytes_total",
        "gavel_edge_updates_applied_total",
        "gavel_edge_queue_bids",
        "gavel_edge_queue_bytes",
        "gavel_edge_bids_forwarded_total{outcome=\"accepted\"}",
        "gavel_edge_mqtt_publishes_total{kind=\"state\"}",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert_eq!(http(agent.http, "GET", "/healthz", "").0, 200);
    assert_eq!(http(agent.http, "GET", "/nope", "").0, 404);
    agent.signal("-TERM");
    let exit = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
