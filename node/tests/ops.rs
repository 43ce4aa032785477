//! The operations kit in `ops/` checked with the real tools and a live node:
//! - the alert and recording rules with `promtool check rules` and their unit tests
//!   (`promtool test rules`), and every alert's runbook link and test cases;
//! - the Grafana dashboard (Grafana itself is not installable here): its structure, every
//!   panel query as PromQL (`promtool check rules` on a rules file made of them), and every
//!   metric it names present on a live node's `/metrics` after a short load — the node runs
//!   the Kafka log against a real broker (tansu), so the Kafka panels are checked too.
//!
//! `promtool` comes with Debian's `prometheus` package (`ops/test.sh` installs it when
//! missing). These tests fail, never skip, without it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::exercise::exercise;
use common::https::{WAIT, plain_get};
use common::kafka::Broker;
use common::served::serve_with_env;
use gavel_transport::tls::dev;
use hyper::StatusCode;
use serde_json::Value;

/// Where every alert's `runbook_url` points: docs/runbook.md, the section named by the alert.
const RUNBOOK_URL: &str = "https://github.com/gavel-rtb/gavel/blob/main/docs/runbook.md#";

/// The repository's `ops/` directory.
fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

/// The shipped rules file.
fn rules_file() -> PathBuf {
    ops_dir().join("prometheus/gavel.rules.yml")
}

/// Runs `promtool` with `args`; panics with how to install it when it is missing.
fn promtool(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed ({e}): install Debian's `prometheus` package \
                 (apt-get install prometheus; ops/test.sh does it when it is missing)"
            )
        })
}

/// Asserts that a tool's run succeeded, showing its output otherwise.
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn the_rules_pass_promtool_check_rules_and_their_unit_tests() {
    let rules = rules_file();
    let check = promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()]);
    assert_success("promtool check rules", &check);
    let tests = ops_dir().join("prometheus/tests/gavel.rules.test.yml");
    let test = promtool(&["test".as_ref(), "rules".as_ref(), tests.as_os_str()]);
    assert_success("promtool test rules", &test);
}

/// The alerts of the rules file, each with its `runbook_url`, in file order.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let mut alerts: Vec<(String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push((name.to_owned(), String::new()));
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let (name, slot) = alerts.last_mut().expect("a runbook_url inside an alert");
            assert!(slot.is_empty(), "{name} has two runbook_urls");
            *slot = url.to_owned();
        }
    }
    alerts
}

#[test]
fn every_alert_links_its_runbook_section_and_has_cases_that_fire_and_stay_quiet() {
    let alerts = alerts();
    assert!(alerts.len() >= 12, "{alerts:?}");
    let tests =
        std::fs::read_to_string(ops_dir().join("prometheus/tests/gavel.rules.test.yml")).unwrap();
    // (alert, whether the case expects it firing), from `alertname:` and the `exp_alerts:`
    // line after it (`[]` = nothing fires).
    let mut cases: Vec<(String, bool)> = Vec::new();
    let mut current = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            cases.push((name, rest.trim() != "[]"));
        }
    }
    for (name, url) in &alerts {
        assert_eq!(
            url,
            &format!("{RUNBOOK_URL}{}", name.to_lowercase()),
            "{name}'s runbook_url"
        );
        for firing in [true, false] {
            assert!(
                cases.contains(&(name.clone(), firing)),
                "{name} has no unit test case where it is {}",
                if firing { "firing" } else { "quiet" }
            );
        }
    }
    for (name, _) in &cases {
        assert!(
            alerts.iter().any(|(alert, _)| alert == name),
            "a test case names {name}, which is no alert"
        );
    }
}

/// The shipped dashboard, parsed.
fn dashboard() -> Value {
    let text = std::fs::read_to_string(ops_dir().join("grafana/gavel.json")).unwrap();
    serde_json::from_str(&text).expect("ops/grafana/gavel.json is JSON")
}

/// Every panel of the dashboard that is not a row: (id, title, panel).
fn panels(dashboard: &Value) -> Vec<(u64, String, &Value)> {
    let all = dashboard["panels"].as_array().expect("a panels array");
    all.iter()
        .filter(|panel| panel["type"] != "row")
        .map(|panel| {
            let id = panel["id"].as_u64().expect("a numeric id");
            let title = panel["title"].as_str().expect("a title").to_owned();
            (id, title, panel)
        })
        .collect()
}

/// Every query of the dashboard: (panel title, refId, expr).
fn queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for (_, title, panel) in panels(dashboard) {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let ref_id = target["refId"].as_str().expect("a refId").to_owned();
            let expr = target["expr"].as_str().expect("an expr").to_owned();
            queries.push((title.clone(), ref_id, expr));
        }
    }
    queries
}

/// Grafana's variables in the queries, and what stands for each when the query is checked
/// as plain PromQL.
const VARIABLES: [(&str, &str); 2] = [("$__rate_interval", "5m"), ("$instance", ".*")];

/// The metric names a query reads: its identifiers that start with `gavel_` (label names and
/// values never do: labels are `transport`, `reason`, ...; `job="gavel"` has no underscore).
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("gavel_"))
        .collect()
}

#[test]
fn the_dashboard_has_the_expected_structure() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "gavel-node");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "instance"]);
    let panels = panels(&dashboard);
    let ids: BTreeSet<u64> = panels.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let mut cells = BTreeSet::new();
    for (_, title, panel) in &panels {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap());
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: {grid}");
        // Every grid cell a panel covers is covered once: no panel hides another.
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
    }
    for (title, ref_id, expr) in queries(&dashboard) {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "{title} {ref_id}: {expr}"
        );
    }
    let kinds: BTreeSet<&str> = panels
        .iter()
        .map(|(_, _, panel)| panel["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains("heatmap") && kinds.contains("table"),
        "{kinds:?}"
    );
    // The panels the issue lists, by the metrics they must show.
    let used: BTreeSet<String> = queries(&dashboard)
        .iter()
        .flat_map(|(_, _, expr)| metric_names(expr).into_iter().map(str::to_owned))
        .collect();
    for family in [
        "gavel_bids_total",
        "gavel_bid_decide_seconds_bucket",
        "gavel_bid_durable_seconds_bucket",
        "gavel_wal_queue_records",
        "gavel_wal_syncs_total",
        "gavel_connections",
        "gavel_tls_handshake_failures_total",
        "gavel_stream_updates_delivered_total",
        "gavel_stream_updates_conflated_total",
        "gavel_stream_delivery_seconds_bucket",
        "gavel_presence_watchers",
        "gavel_presence_bidders",
        "gavel_stream_slow_consumer_disconnects_total",
        "gavel_wal_kafka_deliveries_total",
        "gavel_wal_kafka_in_flight_records",
        "gavel_build_info",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (at, (title, ref_id, expr)) in queries(&dashboard).into_iter().enumerate() {
        let mut promql = expr.clone();
        for (variable, value) in VARIABLES {
            promql = promql.replace(variable, value);
        }
        assert!(
            !promql.contains('$'),
            "{title} {ref_id}: unknown variable in {expr}"
        );
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(&promql).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard_query_{at}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let check = promtool(&["check".as_ref(), "rules".as_ref(), path.as_os_str()]);
    assert_success(&format!("promtool check rules on\n{rules}"), &check);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_reads_is_on_a_live_node() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let brokers = broker.bootstrap();
    let served = serve_with_env(
        &data_dir,
        &[("GAVEL_WAL", "kafka"), ("GAVEL_KAFKA_BROKERS", &brokers)],
    );
    let certs = dev::ensure(&data_dir.join("certs")).unwrap();
    exercise(&served, &certs).await;

    let wanted: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|(_, _, expr)| metric_names(expr).into_iter().map(str::to_owned))
        .collect();
    // The log's gauges come with their once-a-second refresh; the rest with the load.
    let started = Instant::now();
    loop {
        let (status, body) = plain_get(served.metrics, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let exposed: BTreeSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|name| !exposed.contains(name.as_str()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "the dashboard reads {missing:?}, which the node does not expose:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
