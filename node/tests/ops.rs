//! The operations kit in `ops/` checked with the real tools and a live node:
//! - the alert and recording rules with `promtool check rules` and their unit tests
//!   (`promtool test rules`), every alert's test cases, and its runbook section in
//!   `docs/runbook.md` (meaning, how to confirm, what to do);
//! - the Grafana dashboard (Grafana itself is not installable here): its structure, every
//!   panel query as PromQL (`promtool check rules` on a rules file made of them), and every
//!   metric it names present on a live node's `/metrics` after a short load — the node runs
//!   the Kafka log against a real broker (tansu), so the Kafka panels are checked too;
//! - a real Prometheus server (Debian's `prometheus`) on loopback, with the shipped scrape
//!   config and rules, scraping a live node: every recording rule yields a series from the
//!   node's real metrics, killing the node fires `GavelDown`, restarting it resolves it;
//! - the deployment kit: `systemd-analyze verify` on the unit, and `ops/cluster.sh` bringing
//!   up a broker, two nodes (each owning half the partitions, standby of the other's) and
//!   Prometheus; node 1 SIGKILLed, node 2 takes its partitions over; all taken down;
//! - the TLS gauges on a live node: expiry times, and a broken certificate file failing its
//!   reload until it is fixed;
//! - the operator's conveniences: `gavel --version` and `/healthz` name the build,
//!   `--log-format json`, `gavel config print` (sources) and `gavel config check` (the
//!   example production file `ops/gavel.example.toml` passes it and names every option).
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
use common::served::{serve, serve_with_env, serve_with_metrics_on};
use common::{gavel, gavel_fails, gavel_ok};
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

/// The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_that_says_what_it_means_how_to_confirm_and_what_to_do() {
    let runbook =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/runbook.md"))
            .unwrap();
    // Each heading's anchor, with the text of its section.
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in runbook.lines() {
        match line.trim_start_matches('#') {
            heading if line.starts_with('#') => sections.push((anchor(heading), String::new())),
            _ => {
                if let Some((_, text)) = sections.last_mut() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    for (name, url) in alerts() {
        let wanted = url.strip_prefix(RUNBOOK_URL).unwrap();
        let (_, text) = sections
            .iter()
            .find(|(anchor, _)| anchor == wanted)
            .unwrap_or_else(|| panic!("docs/runbook.md has no section for {name} (#{wanted})"));
        for part in ["**Meaning.**", "**Confirm.**", "**Do.**"] {
            assert!(
                text.contains(part),
                "{name}'s runbook section has no {part}"
            );
        }
    }
    // Links inside the runbook land on a section.
    for link in runbook.split("](#").skip(1) {
        let target = link.split(')').next().unwrap();
        assert!(
            sections.iter().any(|(anchor, _)| anchor == target),
            "docs/runbook.md links to #{target}, which is no heading"
        );
    }
}

/// The names of the rules file's recording rules.
fn recording_rules() -> Vec<String> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let rules: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect();
    assert!(rules.len() >= 6, "{rules:?}");
    rules
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

    let mut wanted: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|(_, _, expr)| metric_names(expr).into_iter().map(str::to_owned))
        .collect();
    // The series the Kafka delivery alert reads start at 0 (its first failure is an increase).
    wanted.extend(
        ["not_persisted", "possibly_persisted", "error"]
            .map(|status| format!(r#"gavel_wal_kafka_deliveries_total{{status="{status}"}}"#)),
    );
    // The log's gauges come with their once-a-second refresh; the rest with the load.
    let started = Instant::now();
    loop {
        let (status, body) = plain_get(served.metrics, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        // Each sample's name, and its name with its labels.
        let exposed: BTreeSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| [line.split(['{', ' ']).next(), line.split(' ').next()])
            .flatten()
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

    /// Checks every alert of the rules file is loaded, then waits until the node is scraped
    /// and ready.
    async fn wait_for_rules_and_a_ready_node(&self) {
        let rules = self.api("/api/v1/rules").await;
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
            let ready = self.api("/api/v1/query?query=gavel_ready").await;
            if ready["result"][0]["value"][1] == "1" {
                return;
            }
            self.poll_pause(started, "the node scraped and ready").await;
        }
    }

    /// Waits until every recording rule of the rules file has a series.
    async fn wait_for_every_recording_rule(&self) {
        for rule in recording_rules() {
            let started = Instant::now();
            loop {
                let answer = self.api(&format!("/api/v1/query?query={rule}")).await;
                if answer["result"].as_array().is_some_and(|r| !r.is_empty()) {
                    break;
                }
                self.poll_pause(started, &format!("a series of {rule}"))
                    .await;
            }
        }
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

    prometheus.wait_for_rules_and_a_ready_node().await;
    // Some load, then every recording rule yields a series from the real metric names and
    // labels (the unit tests feed the rules made-up series; this is the real node's).
    let certs = dev::ensure(&data_dir.join("certs")).unwrap();
    exercise(&served, &certs).await;
    prometheus.wait_for_every_recording_rule().await;
    // A healthy node: nothing pending, nothing firing.
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

/// The commit `gavel --version` names (`gavel 0.1.0 (commit 1a2b3c4d5e6f)`).
fn version_commit() -> String {
    let (stdout, _) = gavel_ok(&["--version"]);
    let version = format!("gavel {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = stdout
        .trim()
        .strip_prefix(&version)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("gavel --version: {stdout:?}"));
    // A git checkout gives 12 hex digits; a build without git says so.
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit:?}"
    );
    commit.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_healthz_and_build_info_name_the_same_build() {
    let commit = version_commit();
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("data"));
    let (status, body) = plain_get(served.metrics, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(body, format!("ok version={version} commit={commit}\n"));
    let (_, metrics) = plain_get(served.metrics, "/metrics").await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    let info = format!(r#"gavel_build_info{{version="{version}",commit="{commit}"}} 1"#);
    assert!(metrics.contains(&info), "no {info} in:\n{metrics}");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs = certs.to_str().unwrap();
    let (_, stderr) = gavel_ok(&["--log-format", "json", "cert", "--dir", certs]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "cert logs what it made");
    for line in lines {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        for field in ["timestamp", "level", "message", "target"] {
            assert!(event[field].is_string(), "no {field} in {line}");
        }
    }
    // The default is text, which is not JSON.
    let again = dir.path().join("again");
    let (_, stderr) = gavel_ok(&["cert", "--dir", again.to_str().unwrap()]);
    let first = stderr.lines().next().unwrap();
    assert!(serde_json::from_str::<Value>(first).is_err(), "{first}");
    let (_, stderr) = gavel_fails(&["--log-format", "xml", "cert"]);
    assert!(stderr.contains("invalid value 'xml'"), "{stderr}");
    // The same from the environment, as every other option.
    let by_env = dir.path().join("by-env");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["cert", "--dir", by_env.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("GAVEL_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let first = stderr.lines().next().expect("cert logs what it made");
    assert!(serde_json::from_str::<Value>(first).is_ok(), "{first}");
}

#[test]
fn config_print_shows_each_value_with_its_source_and_its_output_is_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gavel.toml");
    std::fs::write(
        &file,
        "dev = true\nframe_bytes_max = 4096\nidle_timeout_ms = 1\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args([
            "config",
            "print",
            "--config",
            file,
            "--quic-listen",
            "127.0.0.1:9999",
        ])
        .env("GAVEL_IDLE_TIMEOUT_MS", "5000")
        .output()
        .unwrap();
    assert_success("gavel config print", &output);
    let printed = String::from_utf8(output.stdout).unwrap();
    for line in [
        format!("frame_bytes_max = 4096 # file {file}"),
        "idle_timeout_ms = 5000 # env GAVEL_IDLE_TIMEOUT_MS".to_owned(),
        r#"quic_listen = "127.0.0.1:9999" # flag --quic-listen"#.to_owned(),
        "# connections_max = 10000 # default".to_owned(),
        r#"# data_dir = "./data" # default"#.to_owned(),
        "# metrics_listen is not set # default (see gavel serve --help)".to_owned(),
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in:\n{printed}"
        );
    }
    // What it printed configures the same node.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    gavel_ok(&["config", "check", again.to_str().unwrap()]);
    // An invalid combination is printed, then refused.
    let out = gavel(&["config", "print", "--dev", "--engine-shards", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("engine_shards = 3 # flag"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("engine_shards must be a power of two"));
}

#[test]
fn config_check_accepts_the_example_production_file_which_names_every_option() {
    let example = ops_dir().join("gavel.example.toml");
    let (stdout, _) = gavel_ok(&["config", "check", example.to_str().unwrap()]);
    assert!(stdout.starts_with("ok: "), "{stdout}");
    let text = std::fs::read_to_string(&example).unwrap();
    let command = gavel_node::serve::config::command();
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        if key == "config" {
            continue;
        }
        let named = text.lines().any(|line| {
            let line = line.strip_prefix("# ").unwrap_or(line);
            line.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(" = "))
        });
        assert!(named, "ops/gavel.example.toml does not name {key}");
    }
    // A mistyped key, or a bad value, is refused naming it.
    let dir = tempfile::tempdir().unwrap();
    for (content, needle) in [
        (text.replace("dev = false", "devv = false"), "devv"),
        (
            text.replace("# engine_shards = 64", "engine_shards = 3"),
            "engine_shards",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, content).unwrap();
        let (_, stderr) = gavel_fails(&["config", "check", bad.to_str().unwrap()]);
        assert!(stderr.contains(needle), "{stderr}");
    }
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(ops_dir().join("systemd/gavel.service")).unwrap();
    for directive in [
        "User=gavel",
        "StateDirectory=gavel",
        "LimitNOFILE=65536",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/gavel --log-format json serve --config /etc/gavel/gavel.toml",
    ] {
        assert!(
            unit.lines().any(|l| l == directive),
            "no {directive:?} in the unit"
        );
    }
    // systemd-analyze wants the binary to exist: the built one stands in for the installed.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gavel.service");
    let unit = unit.replace("/usr/local/bin/gavel", env!("CARGO_BIN_EXE_gavel"));
    std::fs::write(&copy, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed");
    assert_success("systemd-analyze verify", &verify);
    // An unknown or misspelt directive is only a warning for systemd: none may be printed.
    assert!(
        verify.stderr.is_empty() && verify.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// A `PORT_BASE` for `ops/cluster.sh` with two nodes whose every port is free now.
fn free_port_base() -> u16 {
    let offsets = [90, 92, 143, 144, 164, 243, 244, 264];
    (20_000..30_000)
        .step_by(1_000)
        .find(|base: &u16| {
            offsets.iter().all(|offset| {
                std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", base + offset)).is_ok()
            })
        })
        .expect("a free range of loopback ports")
}

/// `ops/cluster.sh 2` running on ports from a free base; stopped (SIGTERM, as Ctrl-C would)
/// when dropped, so a failing test leaves nothing running.
struct Cluster {
    script: Option<Child>,
    base: u16,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the script and waits for its `ready` line.
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let base = free_port_base();
        let mut script = Command::new(ops_dir().join("cluster.sh"))
            .arg("2")
            .env("GAVEL_BIN", env!("CARGO_BIN_EXE_gavel"))
            .env("CLUSTER_DIR", dir.path())
            .env("PORT_BASE", base.to_string())
            .env("PATH", tansu_on_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = script.stdout.take().unwrap();
        let cluster = Cluster {
            script: Some(script),
            base,
            dir,
        };
        let lines = tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .take_while(|line| line != "ready")
                .collect::<Vec<String>>()
        });
        let lines = tokio::time::timeout(PROMETHEUS_WAIT, lines).await;
        let logs = cluster.dir.path().display();
        let Ok(Ok(lines)) = lines else {
            panic!("cluster.sh did not come up; logs in {logs}");
        };
        assert!(
            lines
                .first()
                .is_some_and(|l| l.starts_with("cluster up in")),
            "{lines:?}"
        );
        cluster
    }

    /// The loopback address `PORT_BASE + offset`.
    fn port(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + offset))
    }

    /// SIGTERMs the script and waits for it.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut script = self.script.take()?;
        let _ = Command::new("kill").arg(script.id().to_string()).status();
        Some(script.wait().unwrap())
    }

    /// Waits until Prometheus has scraped `nodes` nodes up.
    async fn wait_for_scraped(&self, nodes: usize) {
        let started = Instant::now();
        loop {
            let (_, body) = plain_get(self.port(90), "/api/v1/query?query=up").await;
            let answer: Value = serde_json::from_slice(&body).unwrap();
            let up = answer["data"]["result"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|s| s["value"][1] == "1").count());
            if up == nodes {
                return;
            }
            assert!(
                started.elapsed() < PROMETHEUS_WAIT,
                "prometheus never saw {nodes} up: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sh_starts_a_broker_two_owners_and_prometheus_and_a_killed_owner_is_taken_over() {
    let mut cluster = Cluster::start().await;
    // Both nodes own half of the 8 partitions and are ready.
    let started = Instant::now();
    for metrics in [cluster.port(164), cluster.port(264)] {
        while plain_get(metrics, "/readyz").await.0 != StatusCode::OK {
            assert!(started.elapsed() < PROMETHEUS_WAIT, "{metrics} never ready");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let owned = "gavel_kafka_partitions_owned";
    assert_eq!(sample(cluster.port(264), owned).await, Some(4.0));
    // SIGKILL node 1: node 2, its standby, takes its partitions over once its leases lapse
    // (10 s after the last renewal).
    let pid = std::fs::read_to_string(cluster.dir.path().join("node1.pid")).unwrap();
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let killed_at = Instant::now();
    while sample(cluster.port(264), owned).await != Some(8.0) {
        assert!(
            killed_at.elapsed() < PROMETHEUS_WAIT,
            "node 2 never took node 1's partitions"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "cluster.sh: node 2 owns all 8 partitions {:?} after node 1's SIGKILL",
        killed_at.elapsed()
    );
    // Prometheus scrapes node 2 with the shipped rules (node 1 is down).
    cluster.wait_for_scraped(1).await;
    // The node stops on SIGTERM within its shutdown deadline (10 s): the script sends no
    // SIGKILL.
    let stopping = Instant::now();
    let status = cluster.stop().unwrap();
    let stopped_in = stopping.elapsed();
    assert!(
        status.success(),
        "cluster.sh exits 0 when stopped: {status}"
    );
    assert!(stopped_in < Duration::from_secs(10), "{stopped_in:?}");
    eprintln!("cluster.sh stopped in {stopped_in:?}");
    for offset in [90, 92, 144, 164, 244, 264] {
        assert!(
            std::net::TcpStream::connect(cluster.port(offset)).is_err(),
            "port {offset} still open after the script stopped"
        );
    }
}

/// `PATH` with the directory of the tansu binary the Kafka tests use.
fn tansu_on_path() -> std::ffi::OsString {
    let tansu = common::kafka::tansu_binary();
    let mut dirs = vec![tansu.parent().unwrap().to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// The value of the sample `series` (name and labels as exposed) on a node's `/metrics`.
async fn sample(metrics: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = plain_get(metrics, "/metrics").await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

/// Polls `series` on `metrics` until it equals `value` (at most [`WAIT`]).
async fn wait_for_sample(metrics: SocketAddr, series: &str, value: f64) {
    let started = Instant::now();
    while sample(metrics, series).await != Some(value) {
        assert!(started.elapsed() < WAIT, "{series} never became {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_reload_and_the_expiry_of_the_material_show_on_a_live_node() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = serve(&data_dir);
    let ok = "gavel_tls_last_reload_successful";
    wait_for_sample(served.metrics, ok, 1.0).await;
    // The development certificate is valid for a year, its CRL for 90 days.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (kind, days) in [("server_cert", 365.0), ("crl", 90.0)] {
        let series = format!(r#"gavel_tls_expiry_timestamp_seconds{{kind="{kind}"}}"#);
        let at = sample(served.metrics, &series).await.unwrap();
        let left = (at - now) / 86_400.0;
        assert!((left - days).abs() < 1.0, "{kind}: {left} days left");
    }
    // A broken certificate file: the reload fails, the gauge says so, the node keeps serving.
    let cert = data_dir.join("certs/server.pem");
    let good = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, b"not a certificate").unwrap();
    wait_for_sample(served.metrics, ok, 0.0).await;
    let errors = r#"gavel_tls_reloads_total{result="error"}"#;
    assert!(sample(served.metrics, errors).await.unwrap() >= 1.0);
    // Fixed: the next poll loads it.
    std::fs::write(&cert, good).unwrap();
    wait_for_sample(served.metrics, ok, 1.0).await;
}
