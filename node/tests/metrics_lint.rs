//! `promtool check metrics` on a live node's `/metrics`: every metric family a running node
//! exposes has its help text (and whatever else Prometheus's linter checks), so a new metric
//! without a description fails here.
//!
//! The node is `gavel serve --dev` as an operator runs it, exercised briefly
//! ([`common::exercise`]) so that the families appear, and the log's gauges after their
//! refresh.
//!
//! `promtool` is Debian's `prometheus` package (`ops/test.sh` installs it when missing). This
//! test fails, never skips, without it.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::exercise::{exercise, metrics_with};
use common::served::serve;
use gavel_transport::tls::dev;

/// Families the exercise must make appear before the lint (it checks only what is there),
/// from each kind of activity; the log's gauges come with their once-a-second refresh.
const FAMILIES: [&str; 10] = [
    "gavel_admin_requests_total",
    "gavel_bids_total",
    "gavel_bid_durable_seconds",
    "gavel_request_errors_total",
    "gavel_tls_handshake_failures_total",
    "gavel_stream_datagrams_total",
    "gavel_stream_delivery_seconds",
    "gavel_auctions_settled_total",
    "gavel_auctions_pruned_total",
    "gavel_wal_last_batch_records",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_a_live_node_passes_promtool_check_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = serve(&data_dir);
    let certs = dev::ensure(&data_dir.join("certs")).unwrap();

    exercise(&served, &certs).await;

    let text = metrics_with(served.metrics, &FAMILIES).await;
    assert_lint_clean(&text);
}

/// A node on a Kafka topic of two partitions owning none (`--kafka-follow-only`): it follows
/// both, and its followers' series (`gavel_follower_lag_records`, `gavel_follower_lag_seconds`) pass the
/// lint too (issue 14 item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_metrics_of_a_node_on_a_shared_log_pass_promtool_check_metrics() {
    let broker = common::kafka::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let brokers = broker.bootstrap();
    let env = [
        ("GAVEL_WAL", "kafka"),
        ("GAVEL_KAFKA_BROKERS", brokers.as_str()),
        ("GAVEL_KAFKA_TOPIC", "gavel-wal-lint"),
        ("GAVEL_KAFKA_PARTITIONS", "2"),
        ("GAVEL_KAFKA_FOLLOW_ONLY", "true"),
    ];
    let served = common::served::serve_with_env(&dir.path().join("data"), &env);
    let families = ["gavel_follower_lag_records", "gavel_follower_lag_seconds"];
    let text = metrics_with(served.metrics, &families).await;
    assert!(
        text.contains("gavel_follower_lag_records{partition=\"0\"} 0\n"),
        "{text}"
    );
    assert_lint_clean(&text);
}

/// Asserts that `promtool check metrics` finds nothing to say about `text`.
fn assert_lint_clean(text: &str) {
    let lint = promtool_check_metrics(text);
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics ({}):\n{}{}\n--- the scraped text:\n{text}",
        lint.status,
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr),
    );
}

/// `promtool check metrics` with `text` on its stdin.
fn promtool_check_metrics(text: &str) -> std::process::Output {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed ({e}): install Debian's `prometheus` package \
                 (apt-get install prometheus; ops/test.sh does it when it is missing)"
            )
        });
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    promtool.wait_with_output().unwrap()
}
