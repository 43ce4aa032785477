//! The operations kit in `ops/` checked with the real tools and a live node:
//! - the alert and recording rules with `promtool check rules` and their unit tests
//!   (`promtool test rules`), and every alert's runbook link and test cases;
//! - the Grafana dashboard (Grafana itself is not installable here): its structure, every
//!   panel query as PromQL (`promtool check rules` on a rules file made of them), and every
//!   metric it names present on a live node's `/metrics` after a short load — the node runs
//!   the Kafka log against a real broker (tansu), so the Kafka panels are checked too;
//! - a real Prometheus server (Debian's `prometheus`) on loopback, with the shipped scrape
//!   config and rules, scraping a live node: killing the node fires `GavelDown`, restarting it
//!   resolves it.
//!
//! `promtool` and `prometheus` come with Debian's `prometheus` package (`ops/test.sh`
//! installs it when missing). These tests fail, never skip, without them.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::exercise::exercise;
use common::https::{WAIT, plain_get};
use common::kafka::{Broker, free_port};
use common::served::{serve_with_env, serve_with_metrics_on};
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

/// The longest wait for Prometheus to start, scrape, or move an alert (its `for` included).
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

/// A `prometheus` server on a free loopback port with the shipped configuration, templated
/// (1 s scrape and evaluation intervals, the node's metrics address as the target, the
/// rules file by its path), storing in a temporary directory; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An active alert: its name, its instance label and its state (`pending`, `firing`).
type Alert = (String, String, String);

/// The shipped `prometheus.yml` with its `# templated` lines filled in.
fn scrape_config(target: SocketAddr) -> String {
    let shipped = std::fs::read_to_string(ops_dir().join("prometheus/prometheus.yml")).unwrap();
    let rules = rules_file().canonicalize().unwrap();
    let mut templated = 0;
    let lines: Vec<String> = shipped
        .lines()
        .map(|line| {
            let Some((setting, _)) = line.split_once(" # templated") else {
                return line.to_owned();
            };
            templated += 1;
            let indent = &setting[..setting.len() - setting.trim_start().len()];
            match setting.trim_start() {
                "scrape_interval: 15s" => format!("{indent}scrape_interval: 1s"),
                "evaluation_interval: 15s" => format!("{indent}evaluation_interval: 1s"),
                "- gavel.rules.yml" => format!("{indent}- {}", rules.display()),
                r#"- targets: ["127.0.0.1:9464"]"# => format!(r#"{indent}- targets: ["{target}"]"#),
                other => panic!("an unknown templated line in prometheus.yml: {other:?}"),
            }
        })
        .collect();
    assert_eq!(templated, 4, "prometheus.yml's templated lines");
    lines.join("\n")
}

impl Prometheus {
    /// Starts it scraping `target` and waits until it is ready.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(target)).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the prometheus server is needed ({e}): install Debian's `prometheus` \
                     package (ops/test.sh does it when it is missing)"
                )
            });
        let prometheus = Prometheus { child, addr, dir };
        let started = Instant::now();
        // Connecting first: a GET of a port nobody listens on yet panics.
        while std::net::TcpStream::connect(addr).is_err()
            || plain_get(addr, "/-/ready").await.0 != StatusCode::OK
        {
            prometheus.poll_pause(started, "prometheus ready").await;
        }
        prometheus
    }

    /// The `data` of a GET of an API path.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = plain_get(self.addr, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body:?}");
        let mut answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["status"], "success", "{path}: {answer}");
        answer["data"].take()
    }

    /// The active alerts.
    async fn alerts(&self) -> Vec<Alert> {
        let data = self.api("/api/v1/alerts").await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|alert| {
                let label = |name: &str| alert["labels"][name].as_str().unwrap_or("").to_owned();
                let state = alert["state"].as_str().unwrap().to_owned();
                (label("alertname"), label("instance"), state)
            })
            .collect()
    }

    /// Fails with Prometheus's log once [`PROMETHEUS_WAIT`] has passed since `started`, else
    /// sleeps a poll period.
    async fn poll_pause(&self, started: Instant, what: &str) {
        if started.elapsed() > PROMETHEUS_WAIT {
            let log = std::fs::read_to_string(self.dir.path().join("prometheus.log"));
            panic!("waited {PROMETHEUS_WAIT:?} for {what}; prometheus's log:\n{log:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    /// Polls the active alerts until `done` says so.
    async fn wait_for_alerts(&self, what: &str, mut done: impl FnMut(&[Alert]) -> bool) {
        let started = Instant::now();
        while !done(&self.alerts().await) {
            self.poll_pause(started, what).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_fires_gavel_down_when_the_node_dies_and_resolves_it_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut served = serve_with_metrics_on(&data_dir, metrics);
    let prometheus = Prometheus::start(metrics).await;
    let instance = metrics.to_string();

    // The shipped rules are loaded, and the node is scraped and ready.
    let rules = prometheus.api("/api/v1/rules").await;
    let alerting = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .filter(|rule| rule["type"] == "alerting")
        .count();
    assert_eq!(alerting, alerts().len(), "{rules}");
    let started = Instant::now();
    loop {
        let ready = prometheus.api("/api/v1/query?query=gavel_ready").await;
        if ready["result"][0]["value"][1] == "1" {
            break;
        }
        prometheus
            .poll_pause(started, "the node scraped and ready")
            .await;
    }
    // A few evaluations of a healthy node: nothing pending, nothing firing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        prometheus.alerts().await,
        [],
        "a healthy node raises no alert"
    );

    // The fault: the node dies (SIGKILL). GavelDown goes pending, then firing after its 30 s.
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let down = |state: &str| ("GavelDown".to_owned(), instance.clone(), state.to_owned());
    let mut states = Vec::new();
    prometheus
        .wait_for_alerts("GavelDown firing", |alerts| {
            states.extend(
                alerts
                    .iter()
                    .filter(|a| a.0 == "GavelDown")
                    .map(|a| a.2.clone()),
            );
            alerts.contains(&down("firing"))
        })
        .await;
    assert_eq!(
        states.first().map(String::as_str),
        Some("pending"),
        "{states:?}"
    );

    // The node comes back on the same data and port: the alert resolves.
    served = serve_with_metrics_on(&data_dir, metrics);
    prometheus
        .wait_for_alerts("GavelDown resolved", |alerts| {
            !alerts.iter().any(|a| a.0 == "GavelDown")
        })
        .await;
    drop(served);
}
