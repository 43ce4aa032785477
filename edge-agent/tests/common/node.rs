//! A real node for the agent's end-to-end tests: the `gavel` binary (`gavel serve --dev`) on
//! fixed free loopback ports (so a restart after a SIGKILL is at the same address), and its
//! admin API reached with curl and the development admin certificate.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `gavel` binary beside `gavel-edge` in the target directory, built if missing (a
/// workspace test run builds it anyway).
pub fn gavel_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_gavel-edge")).with_file_name("gavel");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "gavel", "--bin", "gavel"])
            .status()
            .expect("cargo builds the node");
        assert!(status.success(), "building the gavel binary");
    }
    path
}

/// A `gavel serve --dev` process; killed when dropped.
pub struct NodeProcess {
    child: Option<Child>,
    /// Its data directory (certificates in `certs/`).
    pub data: PathBuf,
    pub quic_port: u16,
    pub https_port: u16,
}

impl NodeProcess {
    /// Starts a node on free ports with its data in `data`.
    pub fn start(data: &Path) -> NodeProcess {
        let mut node = NodeProcess {
            child: None,
            data: data.to_owned(),
            quic_port: super::free_port(),
            https_port: std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port(),
        };
        node.restart();
        node
    }

    /// Kills the node with SIGKILL (no shutdown, no flush).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again (same ports, same data) and waits for its listening line.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(gavel_binary())
            .args(["serve", "--dev", "--data-dir"])
            .arg(&self.data)
            .args(["--quic-listen", &format!("127.0.0.1:{}", self.quic_port)])
            .args(["--https-listen", &format!("127.0.0.1:{}", self.https_port)])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gavel serve starts");
        let stdout = child.stdout.take().expect("piped");
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        super::wait_line(&log, "listening quic=", Duration::from_secs(60));
        self.child = Some(child);
    }

    /// The development certificates' directory.
    pub fn certs(&self) -> PathBuf {
        self.data.join("certs")
    }

    /// An admin API call with curl and the admin certificate: `(status, body)`.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let certs = self.certs();
        let port = self.https_port;
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-X", method, "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("clients/admin-admin.pem"))
            .arg("--key")
            .arg(certs.join("clients/admin-admin.key"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}{path}"));
        if let Some(body) = body {
            curl.args(["-H", "content-type: application/json", "-d", body]);
        }
        let output = curl.output().expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Creates an English auction `id` on `topic`, starting at 100, ending in an hour.
    pub fn create_english(&self, id: u64, topic: &str) {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let body = format!(
            r#"{{"rules": {{"auctionId": "{id}", "topic": "{topic}", "english": {{"startPrice": "100"}}, "startsAtUs": "{}", "endsAtUs": "{}"}}}}"#,
            now_us - 1_000_000,
            now_us + 3_600_000_000
        );
        let (status, answer) = self.admin("POST", "/v1/auctions", Some(&body));
        assert_eq!(status, 201, "{answer}");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it gives `Some`, at most `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
