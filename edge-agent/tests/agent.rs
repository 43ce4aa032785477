//! The agent as a process: its metrics, its shutdown, its queue across kills.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AgentProcess, http, parse_json};

#[test]
fn metrics_show_every_gavel_edge_metric_and_sigterm_exits_zero() {
    let certs = tempfile::tempdir().unwrap();
    common::dev_certs(certs.path());
    let data = tempfile::tempdir().unwrap();
    let args = offline_args(certs.path(), data.path(), common::free_port());
    let mut agent = AgentProcess::start(&strs(&args));
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
    // Prometheus's own linter (Debian's prometheus package; ops/test.sh installs it).
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert_eq!(http(agent.http, "GET", "/healthz", "").0, 200);
    assert_eq!(http(agent.http, "GET", "/nope", "").0, 404);
    agent.signal("-TERM");
    let exit = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

/// The agent's flags for a node that is not there (nothing listens on the port).
fn offline_args(certs: &Path, data: &Path, node_port: u16) -> Vec<String> {
    [
        "--mqtt-broker",
        "off",
        "--cert-dir",
        certs.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--node",
        &format!("127.0.0.1:{node_port}"),
        "--queue-bids-max",
        "3",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn bids_queued_offline_survive_a_kill_and_a_full_queue_refuses_with_503() {
    let certs = tempfile::tempdir().unwrap();
    common::dev_certs(certs.path());
    let data = tempfile::tempdir().unwrap();
    let args = offline_args(certs.path(), data.path(), common::free_port());
    let agent = AgentProcess::start(&strs(&args));
    let mut ids = Vec::new();
    for n in 0..3_u64 {
        let body = format!(
            r#"{{"auction_id": 7, "amount": {}, "tag": "t{n}"}}"#,
            100 + n
        );
        let (status, answer) = http(agent.http, "POST", "/v1/bids", &body);
        assert_eq!(status, 202, "{answer}");
        let answer = parse_json(&answer);
        assert_eq!(answer["status"], "queued");
        assert_eq!(answer["position"], n);
        ids.push(answer["bid_id"].as_str().unwrap().to_owned());
    }
    let (status, answer) = http(
        agent.http,
        "POST",
        "/v1/bids",
        r#"{"auction_id": 7, "amount": 200}"#,
    );
    assert_eq!(status, 503, "{answer}");
    assert_eq!(parse_json(&answer)["error"], "queue_full");
    for bad in [
        r#"{"auction_id": 7}"#,
        r#"{"auction_id": 7, "amount": 0}"#,
        "not json",
        r#"{"auction_id": 7, "amount": 5, "bid_id": "xyz"}"#,
    ] {
        let (status, answer) = http(agent.http, "POST", "/v1/bids", bad);
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_eq!(parse_json(&answer)["error"], "invalid");
    }
    let (_, metrics) = http(agent.http, "GET", "/metrics", "");
    assert!(metrics.contains("gavel_edge_queue_bids 3"), "{metrics}");
    assert!(
        metrics.contains("gavel_edge_bids_refused_total{reason=\"queue_full\"} 1"),
        "{metrics}"
    );
    // A crash: no shutdown, no flush — only what was fsynced before each answer.
    agent.signal("-KILL");
    drop(agent);
    let agent = AgentProcess::start(&strs(&args));
    for (position, id) in ids.iter().enumerate() {
        let (status, answer) = http(agent.http, "GET", &format!("/v1/bids/{id}"), "");
        assert_eq!(status, 200, "{answer}");
        let answer = parse_json(&answer);
        assert_eq!(answer["status"], "queued");
        assert_eq!(answer["position"], position);
        assert_eq!(answer["tag"], format!("t{position}"));
    }
    // The same bid id again is the same bid: its status, not a second one.
    let again = format!(
        r#"{{"auction_id": 7, "amount": 100, "bid_id": "{}"}}"#,
        ids[0]
    );
    let (status, answer) = http(agent.http, "POST", "/v1/bids", &again);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(parse_json(&answer)["position"], 0);
    let unknown = format!("/v1/bids/{:032x}", 5);
    assert_eq!(http(agent.http, "GET", &unknown, "").0, 404);
}
