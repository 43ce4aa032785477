//! `gavel serve` as a process, the way an operator runs it: `--dev` certificates generated on
//! first run, the bound addresses printed on stdout, an auction created through the admin
//! API, a bid placed with the SDK over QUIC (accepted, then durable), metrics on the plain
//! port, SIGTERM stopping it gracefully, and a restart recovering what was durable; plus
//! configuration mistakes refused at start with a message naming them.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::https::{WAIT, request_to};
use common::served::{Served, english_rules, serve, serve_with_env};
use gavel_client::{Bid, Client, ClientConfig};
use gavel_transport::tls::dev;
use hyper::StatusCode;

/// Sends SIGTERM and waits for the exit; returns its stderr.
fn terminate(mut served: Served) -> String {
    let pid = served.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "gavel serve did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(served.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    stderr
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn plain_get(addr: SocketAddr, path: &str) -> String {
    let (status, body) = common::https::plain_get(addr, path).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_takes_bids_stops_on_sigterm_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = serve(&data_dir);
    let certs_dir = data_dir.join("certs");
    let certs = dev::ensure(&certs_dir).unwrap();

    let (status, _, body) = request_to(served.https, &certs, None, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    // An auction through the admin API (admin certificate), durable before the 201.
    let start = now_us();
    let create = english_rules(42, "energy.eu.de.block-42", start);
    let (status, _, body) = request_to(
        served.https,
        &certs,
        Some("admin/admin"),
        "POST",
        "/v1/auctions",
        Some(create.clone().into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    // A bidder may not create auctions.
    let (status, _, _) = request_to(
        served.https,
        &certs,
        Some("bidder/bidder-1"),
        "POST",
        "/v1/auctions",
        Some(create.into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A bid over QUIC with the SDK and the generated bidder certificate.
    let config = ClientConfig::from_cert_dir(served.quic, &certs_dir, "bidder-1").unwrap();
    let client = tokio::time::timeout(WAIT, Client::connect(config.clone()))
        .await
        .unwrap()
        .unwrap();
    let bid_id = 0x5eed_u128;
    let placed = client
        .place_bid(Bid::new(42, 150).with_id(bid_id))
        .await
        .unwrap();
    let seq = placed.accepted().seq;
    assert_eq!(placed.accepted().price, 150);
    let durable = placed.durable().await.unwrap();
    assert_eq!(durable.seq, seq);
    client.close().await;

    // /metrics parses as Prometheus text and counts what happened: one accepted bid, one
    // durable ack, one refused admin request, one open auction.
    let text = plain_get(served.metrics, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let matching: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .collect();
        assert!(!matching.is_empty(), "no {name} {labels:?} in\n{text}");
        matching.iter().sum()
    };
    let accepted = [
        ("transport", "quic"),
        ("result", "accepted"),
        ("reason", "none"),
    ];
    assert_eq!(value("gavel_bids_total", &accepted), 1.0);
    assert_eq!(
        value("gavel_durable_acks_total", &[("transport", "quic")]),
        1.0
    );
    assert_eq!(
        value(
            "gavel_admin_requests_total",
            &[("method", "POST"), ("status", "403")]
        ),
        1.0
    );
    assert_eq!(value("gavel_build_info", &[]), 1.0);
    assert_eq!(value("gavel_ready", &[]), 1.0);
    // Gauges refresh every second.
    let started = Instant::now();
    loop {
        let text = plain_get(served.metrics, "/metrics").await;
        if text.contains(r#"gavel_auctions{state="open"} 1"#) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "no open auction in the gauges:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stderr = terminate(served);
    assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");

    // The restart recovers the auction and the bid; a retry of the bid is answered with
    // its original outcome.
    let served = serve(&data_dir);
    let (status, _, body) = request_to(
        served.https,
        &certs,
        Some("watcher/watcher-1"),
        "GET",
        "/v1/auctions/42",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let auction: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(auction["price"], "150", "{auction}");
    assert_eq!(auction["leader"], "bidder-1", "{auction}");
    let config = ClientConfig::from_cert_dir(served.quic, &certs_dir, "bidder-1").unwrap();
    let client = Client::connect(config).await.unwrap();
    let retry = client.place_bid(Bid::new(42, 150).with_id(bid_id)).await;
    match retry {
        Err(gavel_client::BidError::Duplicate { original }) => assert_eq!(original.seq, seq),
        other => panic!("a retry after the restart got {other:?}"),
    }
    client.close().await;
    terminate(served);
}

#[test]
fn configuration_mistakes_stop_the_start_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gavel"));
        command
            .arg("serve")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[], &[]);
    assert!(err.contains("no TLS material"), "{err}");
    let toml = dir.path().join("gavel.toml");
    std::fs::write(&toml, "dev = true\nconnections_maximum = 3\n").unwrap();
    let err = run(&["--config", toml.to_str().unwrap()], &[]);
    assert!(err.contains("connections_maximum"), "{err}");
    let err = run(&["--dev", "--connections-max", "0"], &[]);
    assert!(err.contains("connections_max"), "{err}");
    // A port in use is named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let err = run(
        &[
            "--dev",
            "--https-listen",
            &port,
            "--quic-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(err.contains(&port), "{err}");
}

/// The environment is shared with other programs: unknown `GAVEL_*` variables (a script's own
/// `GAVEL_BIN`, a typo) do not stop the start; each is named in a warning with the closest
/// variable `gavel serve` reads. A TOML file is the user's own: its unknown keys still do
/// (asserted in `configuration_mistakes_stop_the_start_with_their_name`).
#[test]
fn unknown_gavel_variables_are_warned_about_with_the_closest_known_one() {
    let dir = tempfile::tempdir().unwrap();
    let typo_dir = dir.path().join("elsewhere");
    let served = serve_with_env(
        &dir.path().join("data"),
        &[
            ("GAVEL_BIN", "/usr/local/bin/gavel"),
            ("GAVEL_DATA_DIRR", typo_dir.to_str().unwrap()),
        ],
    );
    let stderr = terminate(served);
    // The warning's `closest=` field for `variable`.
    let closest = |variable: &str| -> String {
        let line = stderr
            .lines()
            .find(|line| line.contains("WARN") && line.contains(&format!("={variable}")))
            .unwrap_or_else(|| panic!("no warning naming {variable}:\n{stderr}"));
        line.split_whitespace()
            .find_map(|field| field.strip_prefix("closest="))
            .unwrap_or_else(|| panic!("no closest= in {line}"))
            .to_owned()
    };
    assert_eq!(closest("GAVEL_DATA_DIRR"), "GAVEL_DATA_DIR");
    assert!(closest("GAVEL_BIN").starts_with("GAVEL_"), "{stderr}");
    assert!(!typo_dir.exists(), "an unknown variable is not read");
    // The rule is in --help.
    let (help, _) = common::gavel_ok(&["serve", "--help"]);
    assert!(
        help.contains("Unknown GAVEL_* environment variables do not"),
        "{help}"
    );
    assert!(help.contains("Unknown keys in the --config file stop the start"));
}

/// A SIGTERM sent as soon as the listening line is out is a graceful stop: the handler is in
/// place before the line is printed (a script may signal the moment it reads it), not the
/// signal's default exit. Five rounds: the window was a task's first poll.
#[test]
fn sigterm_right_after_the_listening_line_stops_gracefully() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let stderr = terminate(serve(&dir.path().join("data")));
        assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
    }
}

/// `serve --dev` names the client certificate files it made, in its log at the start and in
/// the README, so a client finds its certificate and key without reading code.
#[test]
fn serve_dev_names_its_client_certificate_files_in_the_log_and_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let stderr = terminate(serve(&data_dir));
    let readme = include_str!("../../README.md");
    assert!(readme.contains("`clients/<role>-<id>.pem`"), "README");
    let mut files: Vec<String> = std::fs::read_dir(data_dir.join("certs/clients"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        2 * dev::default_identities().len(),
        "{files:?}"
    );
    for file in files {
        let path = data_dir.join("certs/clients").join(&file);
        assert!(
            stderr.contains(&path.display().to_string()),
            "the log names {}:\n{stderr}",
            path.display()
        );
        let stem = file.rsplit_once('.').unwrap().0;
        assert!(readme.contains(&format!("`{stem}`")), "README names {stem}");
    }
}

/// `gavel serve --help` shows, for every option whose default is a value of the code, exactly
/// that value (`code_defaults()`: `Limits::default()`, the engine's, the log's and Kafka's
/// defaults, and serve's constants), once.
#[test]
fn serve_help_shows_each_default_of_the_code() {
    let (help, _) = common::gavel_ok(&["serve", "--help"]);
    let defaults = gavel_node::serve::config::code_defaults();
    assert!(defaults.len() >= 40, "{defaults:?}");
    for (id, value) in defaults {
        let flag = format!("--{} ", id.replace('_', "-"));
        let block = help
            .split("\n      --")
            .map(|b| format!("--{b}"))
            .find(|b| b.starts_with(&flag))
            .unwrap_or_else(|| panic!("no {flag} in:\n{help}"));
        let shown: Vec<&str> = block
            .split("[default: ")
            .skip(1)
            .map(|rest| rest.split(']').next().unwrap())
            .collect();
        assert_eq!(shown, [value.as_str()], "{flag}:\n{block}");
    }
}
