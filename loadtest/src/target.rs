//! The system under test: a `gavel serve --dev` child on free loopback ports with a temporary
//! data directory, or a node already running; its certificates; auctions created through the
//! admin HTTPS API with the admin certificate.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gavel_transport::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest wait for a child server to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a child to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Admin connections creating auctions at once (creations wait for the log's fsync, so a
/// few in parallel share each sync).
const ADMIN_CONNECTIONS: usize = 8;
/// Longest admin response read, bytes.
const ADMIN_RESPONSE_BYTES_MAX: usize = 1 << 20;

/// Refuses a target that is not a loopback address unless `allow_remote`.
pub fn check_loopback(addr: SocketAddr, allow_remote: bool) -> Result<()> {
    ensure!(
        allow_remote || addr.ip().is_loopback(),
        "{addr} is not a loopback address; pass --allow-remote to load another machine"
    );
    Ok(())
}

/// A server process this tester started; SIGTERM then kill when dropped.
#[derive(Debug)]
pub struct ChildServer {
    child: Child,
    /// What it printed on its first stdout line.
    pub listening: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl ChildServer {
    /// Starts `command` with stderr to `log`, and waits for a first stdout line containing
    /// `marker`; later stdout is drained to nowhere.
    pub fn start(mut command: Command, marker: &str, log: &Path) -> Result<ChildServer> {
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = line_tx.send(std::mem::take(&mut line));
            }
        });
        let started = Instant::now();
        let mut server = ChildServer {
            child,
            listening: String::new(),
            log: log.to_owned(),
        };
        loop {
            let left = START_TIMEOUT.saturating_sub(started.elapsed());
            match line_rx.recv_timeout(left) {
                Ok(line) if line.contains(marker) => {
                    server.listening = line.trim().to_owned();
                    return Ok(server);
                }
                Ok(_) => {}
                Err(_) => {
                    let log_text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: String = log_text
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .join("\n");
                    bail!(
                        "{command:?} printed no `{marker}` line within {START_TIMEOUT:?}; its log ends:\n{tail}"
                    );
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address after `key` (e.g. `quic=`) in the listening line.
    pub fn addr(&self, key: &str) -> Result<SocketAddr> {
        self.listening
            .split_whitespace()
            .find_map(|field| field.strip_prefix(key))
            .with_context(|| format!("no {key} in {:?}", self.listening))?
            .parse()
            .with_context(|| format!("{key} in {:?}", self.listening))
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then kill. Returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return false;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the node is and how to reach it.
#[derive(Debug)]
pub struct Node {
    /// The bidders' QUIC port.
    pub quic: SocketAddr,
    /// The HTTPS port (admin API, WebSocket).
    pub https: SocketAddr,
    /// The development certificate directory (`ca.pem`, `clients/…`).
    pub certs: PathBuf,
    /// The child process, when this tester started the node.
    pub child: Option<ChildServer>,
    /// The temporary data directory of a child node.
    _data: Option<tempfile::TempDir>,
}

impl Node {
    /// The child's process id, for CPU and memory figures.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildServer::pid)
    }

    /// Starts `gavel serve --dev` from `gavel_bin` on free loopback ports in a fresh
    /// temporary data directory, with `extra_args` appended.
    pub fn spawn(gavel_bin: &Path, extra_args: &[String]) -> Result<Node> {
        let data = tempfile::Builder::new()
            .prefix("gavel-loadtest-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let mut command = Command::new(gavel_bin);
        command
            .args(["serve", "--dev", "--data-dir"])
            .arg(data.path().join("data"))
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--https-listen",
                "127.0.0.1:0",
            ])
            .args(extra_args)
            .env_remove("RUST_LOG");
        let child = ChildServer::start(command, "listening quic=", &data.path().join("node.log"))?;
        Ok(Node {
            quic: child.addr("quic=")?,
            https: child.addr("https=")?,
            certs: data.path().join("data").join("certs"),
            child: Some(child),
            _data: Some(data),
        })
    }

    /// A node already running at `quic` and `https`, with its dev certificates in `certs`.
    pub fn existing(
        quic: SocketAddr,
        https: SocketAddr,
        certs: PathBuf,
        allow_remote: bool,
    ) -> Result<Node> {
        check_loopback(quic, allow_remote)?;
        check_loopback(https, allow_remote)?;
        ensure!(
            certs.join("ca.pem").is_file(),
            "no ca.pem in {} (the node's --dev certificate directory)",
            certs.display()
        );
        Ok(Node {
            quic,
            https,
            certs,
            child: None,
            _data: None,
        })
    }

    /// The node's file log, when this process started the node (its data directory is
    /// ours); `None` for a node already running.
    pub fn wal_dir(&self) -> Option<PathBuf> {
        self._data
            .as_ref()
            .map(|data| data.path().join("data").join("wal"))
    }

    /// The certificate and key files of the dev client `<role>/<id>`.
    pub fn client_files(&self, role: &str, id: &str) -> (PathBuf, PathBuf) {
        let clients = self.certs.join("clients");
        (
            clients.join(format!("{role}-{id}.pem")),
            clients.join(format!("{role}-{id}.key")),
        )
    }

    /// A TLS connector for HTTPS (ALPN `http/1.1`) as `<role>/<id>`, or anonymous.
    pub fn https_connector(&self, who: Option<(&str, &str)>) -> Result<TlsConnector> {
        let files = who.map(|(role, id)| self.client_files(role, id));
        let config = tls::client_config(
            &self.certs.join("ca.pem"),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            &[b"http/1.1"],
        )
        .context("client TLS configuration from the dev certificates")?;
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// Creates English auctions `ids` (start price 100, open `open_for`) under topics from
    /// `topic`, through the admin API; each answers once durable.
    pub async fn create_auctions(
        &self,
        ids: &[u64],
        topic: impl Fn(u64) -> String,
        open_for: Duration,
    ) -> Result<()> {
        let connector = self.https_connector(Some(("admin", "admin")))?;
        let now = crate::stats::unix_us();
        let ends = now + u64::try_from(open_for.as_micros()).unwrap_or(u64::MAX / 2);
        let bodies: Vec<String> = ids
            .iter()
            .map(|id| {
                format!(
                    r#"{{"rules":{{"auctionId":"{id}","topic":"{}","english":{{"startPrice":"100"}},"startsAtUs":"{now}","endsAtUs":"{ends}"}}}}"#,
                    topic(*id)
                )
            })
            .collect();
        let chunk = bodies.len().div_ceil(ADMIN_CONNECTIONS).max(1);
        let mut tasks = tokio::task::JoinSet::new();
        for part in bodies.chunks(chunk) {
            let part = part.to_vec();
            let mut stream = https_connect(&connector, self.https).await?;
            let connector = connector.clone();
            tasks.spawn(async move {
                // Several nodes: an auction of another node's partition is created there.
                let mut owners: HashMap<SocketAddr, TlsStream<TcpStream>> = HashMap::new();
                for body in part {
                    let (mut status, mut answer) =
                        http_request(&mut stream, "POST", "/v1/auctions", body.as_bytes()).await?;
                    if status == 421 {
                        let owner = owner_https(&answer)?;
                        let owner_stream = match owners.entry(owner) {
                            Entry::Occupied(found) => found.into_mut(),
                            Entry::Vacant(slot) => {
                                slot.insert(https_connect(&connector, owner).await?)
                            }
                        };
                        (status, answer) =
                            http_request(owner_stream, "POST", "/v1/auctions", body.as_bytes())
                                .await?;
                    }
                    ensure!(status == 201, "creating an auction: {status} {answer}");
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("admin task")??;
        }
        Ok(())
    }
}

/// The owner's HTTPS address named by a 421 `misdirected` answer (docs/admin-api.md).
fn owner_https(answer: &str) -> Result<SocketAddr> {
    let error: serde_json::Value =
        serde_json::from_str(answer).with_context(|| format!("a 421 answer: {answer}"))?;
    let https = error["owner"]["https"].as_str().unwrap_or_default();
    https
        .parse()
        .with_context(|| format!("the owner's HTTPS address in a 421 answer: {answer}"))
}

/// A TLS connection to `addr` (server name `localhost`).
pub async fn https_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    connector
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status and body. The
/// answer must carry `Content-Length` (the node's admin API always does).
pub async fn http_request(
    stream: &mut TlsStream<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String)> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(4096);
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        ensure!(
            buf.len() < ADMIN_RESPONSE_BYTES_MAX,
            "response headers too long"
        );
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).context("response headers")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()
        .context("status code")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("response without content-length")?;
    ensure!(length <= ADMIN_RESPONSE_BYTES_MAX, "response body too long");
    while buf.len() < header_end + length {
        let mut chunk = vec![0_u8; header_end + length - buf.len()];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed inside the response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + length]).into_owned();
    Ok((status, body))
}

/// Finds the `gavel` binary: `explicit`, else beside this executable (`target/<profile>/`,
/// also from `target/<profile>/deps/` for tests), else `gavel` on `PATH`.
pub fn find_gavel(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(path.is_file(), "{} is not a file", path.display());
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("gavel");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("gavel"))
        .find(|p| p.is_file());
    on_path.context(
        "no gavel binary beside this one or on PATH; build it (cargo build --release -p gavel) or pass --gavel-bin",
    )
}

/// Reads a whole small file into a string (for error messages).
pub fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_targets_are_refused_unless_allowed() {
        let remote: SocketAddr = "10.1.2.3:7443".parse().unwrap();
        let err = check_loopback(remote, false).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        check_loopback(remote, true).unwrap();
        check_loopback("127.0.0.1:7443".parse().unwrap(), false).unwrap();
        check_loopback("[::1]:7443".parse().unwrap(), false).unwrap();
    }
}
