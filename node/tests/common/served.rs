//! `gavel serve` as a child process on OS-chosen loopback ports, the way an operator runs
//! it: `--dev` certificates generated into the data directory on first run, the bound
//! addresses read from its `listening …` line; killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `gavel serve` child and the addresses it printed.
pub struct Served {
    /// The process.
    pub child: Child,
    /// The QUIC port.
    pub quic: SocketAddr,
    /// The HTTPS port.
    pub https: SocketAddr,
    /// The plain-HTTP metrics port.
    pub metrics: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gavel serve --dev` on `data_dir` with OS-chosen ports; waits for its
/// `listening …` line.
pub fn serve(data_dir: &Path) -> Served {
    serve_with_env(data_dir, &[])
}

/// [`serve`] with these variables added to its environment.
pub fn serve_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Served {
    spawn(data_dir, "127.0.0.1:0", env, &[], Stdio::piped())
}

/// [`serve`] with its metrics on `metrics` (so a scraper finds it again after a restart).
pub fn serve_with_metrics_on(data_dir: &Path, metrics: SocketAddr) -> Served {
    spawn(data_dir, &metrics.to_string(), &[], &[], Stdio::piped())
}

/// Where a node of a multi-node test writes: the broker, the topic and its partitions, the
/// node's name (lease owner) and its writer lease.
pub struct OnKafka<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub partitions: u32,
    pub owner: &'a str,
    pub lease_ms: u64,
}

/// [`serve_with_args`] on the Kafka log `on` with the shared certificates `certs`, in
/// `<dir>/<owner>` with its log in `<dir>/<owner>.log`, and `extra` options (its ownership).
pub fn serve_on_kafka(
    dir: &Path,
    certs: &gavel_transport::tls::dev::DevCerts,
    on: &OnKafka<'_>,
    extra: &[&str],
) -> Served {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let (partitions, lease) = (on.partitions.to_string(), on.lease_ms.to_string());
    let mut args = vec![
        "--tls-cert".to_owned(),
        path(&certs.server_cert),
        "--tls-key".to_owned(),
        path(&certs.server_key),
        "--tls-client-ca".to_owned(),
        path(&certs.ca_cert),
    ];
    let kafka = [
        ("--wal", "kafka"),
        ("--kafka-brokers", on.brokers),
        ("--kafka-topic", on.topic),
        ("--kafka-partitions", &partitions),
        ("--kafka-owner", on.owner),
        ("--kafka-writer-lease-ms", &lease),
        ("--kafka-connect-timeout-ms", "20000"),
    ];
    for (key, value) in kafka {
        args.extend([key.to_owned(), value.to_owned()]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = dir.join(format!("{}.log", on.owner));
    serve_with_args(&dir.join(on.owner), &args, &log)
}

/// [`serve`] with these options added (e.g. TLS files shared by several nodes, a Kafka log)
/// and its log (stderr) written to `log`.
pub fn serve_with_args(data_dir: &Path, args: &[&str], log: &Path) -> Served {
    let log = std::fs::File::create(log).expect("creating the node's log file");
    spawn(data_dir, "127.0.0.1:0", &[], args, Stdio::from(log))
}

fn spawn(
    data_dir: &Path,
    metrics_listen: &str,
    env: &[(&str, &str)],
    args: &[&str],
    stderr: Stdio,
) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["serve", "--dev", "--data-dir"])
        .arg(data_dir)
        .args([
            "--quic-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            metrics_listen,
            "--shutdown-deadline-ms",
            "8000",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("gavel starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a listening line");
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .parse()
            .unwrap()
    };
    Served {
        quic: addr("quic="),
        https: addr("https="),
        metrics: addr("metrics="),
        child,
    }
}

/// The admin API's body creating English auction `id` on `topic` (start price 100), open from
/// `start_us` for ten minutes.
pub fn english_rules(id: u64, topic: &str, start_us: u64) -> String {
    format!(
        r#"{{"rules":{{"auctionId":"{id}","topic":"{topic}","english":{{"startPrice":"100"}},"startsAtUs":"{start_us}","endsAtUs":"{}"}}}}"#,
        start_us + 600_000_000
    )
}

/// Creates English auction `id` on `topic`, open from a second ago for ten minutes, through
/// the admin API of `served` (certificates `certs`); fails unless it answers 201.
pub async fn create_english(
    served: &Served,
    certs: &gavel_transport::tls::dev::DevCerts,
    id: u64,
    topic: &str,
) {
    let body = english_rules(id, topic, super::stream::now_us() - 1_000_000).into_bytes();
    let (status, _, answer) = super::https::request_to(
        served.https,
        certs,
        Some("admin/admin"),
        "POST",
        "/v1/auctions",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
}
