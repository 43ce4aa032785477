//! What the agent's integration tests share: the `gavel-edge` binary started as a child
//! process on free loopback ports, and a minimal HTTP/1.1 client over a real socket.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `gavel-edge` process; killed when dropped.
pub struct AgentProcess {
    pub child: Child,
    pub http: SocketAddr,
    /// Lines of its log (stderr), as they come.
    pub log: mpsc::Receiver<String>,
}

impl AgentProcess {
    /// Starts `gavel-edge` with `args` (plus `--http-listen 127.0.0.1:0`) and waits for its
    /// listening line.
    pub fn start(args: &[&str]) -> AgentProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gavel-edge"))
            .args(args)
            .args(["--http-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gavel-edge starts");
        let stderr = child.stderr.take().expect("piped");
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[gavel-edge] {line}");
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let line = wait_line(&log, "gavel-edge listening", Duration::from_secs(30));
        let http = field(&line, "http=")
            .parse()
            .expect("an address in the listening line");
        AgentProcess { child, http, log }
    }

    /// Sends `signal` (e.g. `-TERM`, `-KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "gavel-edge did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a log line containing `needle`.
pub fn wait_line(log: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> String {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with {needle:?} within {limit:?}"),
        }
    }
}

/// The value after `key` in a log line, up to the next space.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[start..].split_whitespace().next().unwrap_or("")
}

/// One HTTP/1.1 request over a fresh connection: `(status, body)`.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reads the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A JSON body parsed.
pub fn parse_json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body {body:?}: {e}"))
}

/// Whether `path` exists (for waits on files).
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Development certificates (`gavel cert`'s PKI) in `dir`: ca.pem, the server's, and
/// clients/device-device-1.{pem,key} among others.
pub fn dev_certs(dir: &Path) {
    gavel_transport::tls::dev::ensure(dir).expect("dev certificates");
}

/// A loopback port nothing listens on now (bound and released).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

pub mod broker;
pub mod node;
pub mod relay;
