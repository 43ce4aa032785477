//! Fan-out probe: a real `gavel serve --dev` child process on loopback, WebSocket watchers
//! (`gavel.v1.proto`, TLS, anonymous) subscribed to every auction, and QUIC bidders placing
//! bids at a fixed open-loop rate through the SDK. Reports watchers, bids/s, updates the node
//! published per second, updates delivered per second (counted by the watchers), the delivery
//! latency from each update's decision time (`accepted_at_us`) to its arrival at a watcher
//! (HdrHistogram; both clocks are this machine's), and the node's resident memory per idle
//! watcher connection (RSS before and after connecting them, from `/proc/<pid>/status`).
//!
//! ```text
//! cargo build --release -p gavel && \
//!   cargo run --release -p gavel-benches --bin fanout -- --watchers 1000 --rate 500
//! ```
//!
//! Bounded: `--seconds` of load (at most 120), at most 10,000 connections, loopback only.
//! The watchers, the bidders and the node share this machine's cores: read the figures as a
//! lower bound of what the node alone can do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use gavel_benches::process::pid_cpu_seconds;
use gavel_client::{Bid, BidError, Client, ClientConfig};
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use gavel_transport::tls::client_config;
use hdrhistogram::Histogram;
use prost::Message as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser, Debug)]
#[command(
    about = "Fan-out probe: watchers, updates/s, delivered/s, p99 delivery, memory per idle watcher"
)]
struct Args {
    /// Watcher connections subscribed to every auction during the load.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Idle watcher connections for the memory measurement (subscribed to a topic no auction has).
    #[arg(long, default_value_t = 2000)]
    idle_watchers: usize,
    /// Auctions bid on.
    #[arg(long, default_value_t = 10)]
    auctions: u64,
    /// Bids per second offered (open loop, all bidders together).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Watchers' subscription interval in milliseconds (0: every update they can read).
    #[arg(long, default_value_t = 0)]
    interval_ms: u32,
    /// The `gavel` binary (default: next to this one; a wrapper script that runs it under a
    /// heap profiler works too, the listening line being the first it prints).
    #[arg(long)]
    gavel: Option<PathBuf>,
    /// Seconds to keep the idle watchers open after measuring them (time to snapshot the
    /// node's heap with a profiler).
    #[arg(long, default_value_t = 0)]
    hold_idle_seconds: u64,
}

const CONNECTIONS_MAX: usize = 10_000;
const SECONDS_MAX: u64 = 120;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The node under test: a child process, killed on drop.
struct NodeProcess {
    child: Child,
    target: Target,
    quic: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Where and how to reach the node's HTTPS port (cheap to clone into watcher tasks).
#[derive(Clone)]
struct Target {
    https: SocketAddr,
    certs: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn start(gavel: &Path) -> Result<NodeProcess> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(gavel)
            .args(["serve", "--dev", "--data-dir"])
            .arg(dir.path())
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--https-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", gavel.display()))?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let field = |name: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .context("a listening line")?
                .parse()
                .with_context(|| format!("the {name} address in {line:?}"))
        };
        Ok(NodeProcess {
            target: Target {
                https: field("https=")?,
                certs: dir.path().join("certs"),
            },
            quic: field("quic=")?,
            child,
            _dir: dir,
        })
    }

    /// Resident memory of the node process, in bytes.
    fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("VmRSS")?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Target {
    async fn tls(&self, who: Option<&str>, alpn: &[&[u8]]) -> Result<TlsStream<TcpStream>> {
        let files = who.map(|who| {
            (
                self.certs.join(format!("clients/{who}.pem")),
                self.certs.join(format!("clients/{who}.key")),
            )
        });
        let config = client_config(
            &self.certs.join("ca.pem"),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            alpn,
        )?;
        let tcp = TcpStream::connect(self.https).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost")?;
        Ok(TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?)
    }

    /// One HTTP/1.1 request (connection closed after it); returns status and body.
    async fn http(
        &self,
        who: Option<&str>,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        let mut tls = self.tls(who, &[b"http/1.1"]).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(tls);
        let mut status = String::new();
        reader.read_line(&mut status).await?;
        let code = status
            .split_whitespace()
            .nth(1)
            .context("a status line")?
            .parse()?;
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest).await;
        Ok((code, rest))
    }

    /// The sum of the node's metric lines starting with `series`.
    async fn metric(&self, series: &str) -> Result<f64> {
        let (_, text) = self.http(None, "GET", "/metrics", "").await?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(series))
            .filter_map(|rest| rest.trim().rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    async fn watcher(
        &self,
        pattern: &str,
        interval_ms: u32,
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>> {
        let tls = self.tls(None, &[b"http/1.1"]).await?;
        let mut request = "wss://localhost/v1/ws".into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "gavel.v1.proto".parse()?);
        let (mut socket, _) = tokio_tungstenite::client_async(request, tls).await?;
        let subscribe = pb::ClientMessage {
            request_id: 1,
            body: Some(pb::client_message::Body::Subscribe(pb::Subscribe {
                patterns: vec![pattern.to_owned()],
                interval_ms,
                ..pb::Subscribe::default()
            })),
        };
        socket
            .send(Message::Binary(subscribe.encode_to_vec().into()))
            .await?;
        loop {
            let Some(message) = socket.next().await else {
                bail!("the watcher's socket closed before Subscribed");
            };
            if let Message::Binary(bytes) = message? {
                let reply = pb::ServerMessage::decode(bytes.as_ref())?;
                if matches!(reply.body, Some(Reply::Subscribed(_))) {
                    return Ok(socket);
                }
            }
        }
    }
}

/// What the watchers measured.
struct Delivery {
    latency_us: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
}

impl Delivery {
    /// Adds one watcher's local histogram and count of updates, and resets both.
    async fn merge(&self, local: &mut Histogram<u64>, count: &mut u64) {
        self.latency_us
            .lock()
            .await
            .add(&*local)
            .expect("same bounds");
        local.reset();
        // Ordering: Relaxed; a counter read after the tasks are stopped.
        self.delivered.fetch_add(*count, Ordering::Relaxed);
        *count = 0;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.seconds <= SECONDS_MAX && args.hold_idle_seconds <= SECONDS_MAX,
        "--seconds and --hold-idle-seconds are at most {SECONDS_MAX}"
    );
    ensure!(
        args.watchers + args.idle_watchers <= CONNECTIONS_MAX,
        "at most {CONNECTIONS_MAX} watcher connections"
    );
    let gavel = match args.gavel.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("gavel"),
    };
    ensure!(
        gavel.exists(),
        "{} not found: run `cargo build --release -p gavel` first",
        gavel.display()
    );
    let node = NodeProcess::start(&gavel)?;
    let now = now_us();
    for id in 1..=args.auctions {
        let body = format!(
            r#"{{"rules":{{"auctionId":"{id}","topic":"bench.lot-{id}","english":{{"startPrice":"100"}},"startsAtUs":"{}","endsAtUs":"{}"}}}}"#,
            now - 1_000_000,
            now + 3_600_000_000
        );
        let (status, answer) = node
            .target
            .http(Some("admin-admin"), "POST", "/v1/auctions", &body)
            .await?;
        ensure!(status == 201, "creating auction {id}: {status} {answer}");
    }

    // Memory per idle watcher.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = node.rss_bytes()?;
    let mut idle = Vec::with_capacity(args.idle_watchers);
    for _ in 0..args.idle_watchers {
        idle.push(node.target.watcher("idle.>", 0).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = node.rss_bytes()?;
    let per_idle = (rss_idle.saturating_sub(rss_before)) as f64 / args.idle_watchers.max(1) as f64;
    println!(
        "idle watchers: {} connections, node RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per idle watcher",
        args.idle_watchers,
        rss_before as f64 / 1048576.0,
        rss_idle as f64 / 1048576.0,
        per_idle / 1024.0
    );
    tokio::time::sleep(Duration::from_secs(args.hold_idle_seconds)).await;
    drop(idle);

    // Watchers of every auction.
    let delivery = Arc::new(Delivery {
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        delivered: AtomicU64::new(0),
    });
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    let interval_ms = args.interval_ms;
    // The watchers run on their own runtime, so the bidders' acks below are not queued
    // behind thousands of watcher tasks in this process.
    // Leaked: it lives until the process exits (dropping a runtime here would block).
    let watch_runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("watchers")
            .build()?,
    ));
    for _ in 0..args.watchers {
        let target = node.target.clone();
        let socket = watch_runtime
            .spawn(async move { target.watcher("bench.>", interval_ms).await })
            .await??;
        let (delivery, measuring) = (Arc::clone(&delivery), Arc::clone(&measuring));
        tasks.push(watch_runtime.spawn(async move {
            let mut socket = socket;
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut count = 0_u64;
            while let Some(Ok(message)) = socket.next().await {
                let Message::Binary(bytes) = message else {
                    continue;
                };
                let Ok(reply) = pb::ServerMessage::decode(bytes.as_ref()) else {
                    continue;
                };
                if let Some(Reply::PriceUpdate(update)) = reply.body
                    // Ordering: Relaxed; a flag for which updates count, no data behind it.
                    && measuring.load(Ordering::Relaxed)
                {
                    let latency = now_us().saturating_sub(update.accepted_at_us).max(1);
                    let _ = local.record(latency.min(60_000_000));
                    count += 1;
                }
                if count == 1024 {
                    delivery.merge(&mut local, &mut count).await;
                }
            }
            delivery.merge(&mut local, &mut count).await;
        }));
    }
    println!(
        "{} watchers subscribed to bench.> (interval {} ms)",
        args.watchers, args.interval_ms
    );

    // Bidders: two, alternating per auction, open loop at `rate`.
    let bidders = [
        Client::connect(ClientConfig::from_cert_dir(
            node.quic,
            &node.target.certs,
            "bidder-1",
        )?)
        .await?,
        Client::connect(ClientConfig::from_cert_dir(
            node.quic,
            &node.target.certs,
            "bidder-2",
        )?)
        .await?,
    ];
    let next: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.auctions).map(|_| AtomicU64::new(100)).collect());
    let published_before = node
        .target
        .metric("gavel_stream_updates_published_total")
        .await?;
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    // Ordering: Relaxed; see the watcher loop.
    measuring.store(true, Ordering::Relaxed);
    let node_cpu_before = pid_cpu_seconds(node.child.id());
    let started = Instant::now();
    let total = args.rate * args.seconds;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::new();
    let bid_latency_us = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    for n in 0..total {
        ticker.tick().await;
        // Open loop: latency from when the bid was due, not from when it went out.
        let intended = started + period.mul_f64(n as f64);
        let bid_latency_us = Arc::clone(&bid_latency_us);
        let auction = n % args.auctions;
        let client = bidders[(n / args.auctions % 2) as usize].clone();
        let (next, accepted, rejected) = (
            Arc::clone(&next),
            Arc::clone(&accepted),
            Arc::clone(&rejected),
        );
        inflight.push(tokio::spawn(async move {
            // Ordering: Relaxed; amounts only need to grow, races just cost a too-low bid.
            let amount = next[auction as usize].fetch_add(1000, Ordering::Relaxed) + 1000;
            let result = client.place_bid(Bid::new(auction + 1, amount)).await;
            let latency = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = bid_latency_us
                .lock()
                .await
                .record(latency.clamp(1, 60_000_000));
            match result {
                Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                Err(BidError::TooLow { min_next }) => {
                    next[auction as usize].fetch_max(min_next, Ordering::Relaxed);
                    rejected.fetch_add(1, Ordering::Relaxed)
                }
                Err(_) => rejected.fetch_add(1, Ordering::Relaxed),
            };
        }));
    }
    for task in inflight {
        let _ = task.await;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    // Let the last updates arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(false, Ordering::Relaxed);
    let published = node
        .target
        .metric("gavel_stream_updates_published_total")
        .await?
        - published_before;
    let conflated = node
        .target
        .metric("gavel_stream_updates_conflated_total")
        .await?;
    let rss_loaded = node.rss_bytes()?;
    let node_cpu = pid_cpu_seconds(node.child.id()) - node_cpu_before;
    drop(node);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let histogram = delivery.latency_us.lock().await;
    let delivered = delivery.delivered.load(Ordering::Relaxed);
    println!(
        "load: {:.1} s, bids offered {total} ({} /s), accepted {}, rejected {}",
        load_seconds,
        args.rate,
        accepted.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed)
    );
    println!(
        "updates published {:.0} ({:.0} /s), delivered {} ({:.0} /s, {:.0} per watcher /s), conflated {:.0}",
        published,
        published / load_seconds,
        delivered,
        delivered as f64 / load_seconds,
        delivered as f64 / load_seconds / args.watchers.max(1) as f64,
        conflated
    );
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "delivery latency (decision -> watcher): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    let bids = bid_latency_us.lock().await;
    let bid_ms = |q: f64| bids.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "bid -> accepted ack over QUIC during the fan-out (open loop): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        bid_ms(0.5),
        bid_ms(0.99),
        bid_ms(0.999),
        bids.max() as f64 / 1000.0
    );
    println!(
        "node RSS under load: {:.1} MiB; node CPU during the load {:.2} s ({:.1} µs per delivered update)",
        rss_loaded as f64 / 1048576.0,
        node_cpu,
        node_cpu * 1e6 / delivered.max(1) as f64
    );
    Ok(())
}
