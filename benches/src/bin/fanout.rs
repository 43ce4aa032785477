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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

impl Args {
    /// Checks the bounds and finds the `gavel` binary.
    fn gavel_binary(&self) -> Result<PathBuf> {
        ensure!(
            self.seconds <= SECONDS_MAX && self.hold_idle_seconds <= SECONDS_MAX,
            "--seconds and --hold-idle-seconds are at most {SECONDS_MAX}"
        );
        ensure!(
            self.watchers + self.idle_watchers <= CONNECTIONS_MAX,
            "at most {CONNECTIONS_MAX} watcher connections"
        );
        let gavel = match self.gavel.clone() {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("gavel"),
        };
        ensure!(
            gavel.exists(),
            "{} not found: run `cargo build --release -p gavel` first",
            gavel.display()
        );
        Ok(gavel)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let gavel = args.gavel_binary()?;
    let node = NodeProcess::start(&gavel)?;
    create_auctions(&node, args.auctions).await?;
    measure_idle_watchers(&node, &args).await?;
    let watchers = Watchers::connect(&node, &args).await?;
    // Bidders: two, alternating per auction, open loop at `rate`.
    let bidders = [
        bidder(&node, "bidder-1").await?,
        bidder(&node, "bidder-2").await?,
    ];
    let published_before = node
        .target
        .metric("gavel_stream_updates_published_total")
        .await?;
    // Ordering: Relaxed; see the watcher loop.
    watchers.measuring.store(true, Ordering::Relaxed);
    let node_cpu_before = pid_cpu_seconds(node.child.id());
    let load = offer_bids(&args, bidders).await?;
    // Let the last updates arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watchers.measuring.store(false, Ordering::Relaxed);
    let node_figures = NodeFigures {
        published: node
            .target
            .metric("gavel_stream_updates_published_total")
            .await?
            - published_before,
        conflated: node
            .target
            .metric("gavel_stream_updates_conflated_total")
            .await?,
        rss_loaded: node.rss_bytes()?,
        cpu_seconds: pid_cpu_seconds(node.child.id()) - node_cpu_before,
    };
    drop(node);
    for task in watchers.tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    print_results(&args, &load, &watchers.delivery, &node_figures).await;
    Ok(())
}

/// Creates auctions 1..=`count` (English, open for an hour) through the admin API.
async fn create_auctions(node: &NodeProcess, count: u64) -> Result<()> {
    let now = now_us();
    for id in 1..=count {
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
    Ok(())
}

/// Memory per idle watcher: the node's RSS before and after connecting `--idle-watchers`
/// watchers of a topic no auction has; they stay open `--hold-idle-seconds`, then close.
async fn measure_idle_watchers(node: &NodeProcess, args: &Args) -> Result<()> {
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
    Ok(())
}

/// The watchers of every auction, counting deliveries while `measuring` is set.
struct Watchers {
    delivery: Arc<Delivery>,
    measuring: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watchers {
    /// Connects `--watchers` watchers of `bench.>`, each read by its own task.
    async fn connect(node: &NodeProcess, args: &Args) -> Result<Watchers> {
        let delivery = Arc::new(Delivery {
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            delivered: AtomicU64::new(0),
        });
        let measuring = Arc::new(AtomicBool::new(false));
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
            tasks.push(watch_runtime.spawn(count_deliveries(socket, delivery, measuring)));
        }
        println!(
            "{} watchers subscribed to bench.> (interval {} ms)",
            args.watchers, args.interval_ms
        );
        Ok(Watchers {
            delivery,
            measuring,
            tasks,
        })
    }
}

/// One watcher's loop: records each update's delivery latency while `measuring`, merging
/// into `delivery` every 1024 updates and at the end.
async fn count_deliveries(
    mut socket: WebSocketStream<TlsStream<TcpStream>>,
    delivery: Arc<Delivery>,
    measuring: Arc<AtomicBool>,
) {
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
}

/// A bidder connected to the node's QUIC port with the dev certificate of `who`.
async fn bidder(node: &NodeProcess, who: &str) -> Result<Client> {
    let config = ClientConfig::from_cert_dir(node.quic, &node.target.certs, who)?;
    Ok(Client::connect(config).await?)
}

/// What the bidders saw.
struct Load {
    /// Bids offered.
    total: u64,
    /// From the first bid due to the last answer.
    seconds: f64,
    accepted: u64,
    rejected: u64,
    /// From when each bid was due to its answer.
    bid_latency_us: Histogram<u64>,
}

/// Shared by the bid tasks: each auction's next amount and the outcomes.
struct Tally {
    next: Vec<AtomicU64>,
    accepted: AtomicU64,
    rejected: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

/// Offers `rate × seconds` bids open loop, alternating `bidders` per auction, one task per
/// bid; waits for every answer.
async fn offer_bids(args: &Args, bidders: [Client; 2]) -> Result<Load> {
    let tally = Arc::new(Tally {
        next: (0..args.auctions).map(|_| AtomicU64::new(100)).collect(),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        latency_us: Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?),
    });
    let started = Instant::now();
    let total = args.rate * args.seconds;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::new();
    for n in 0..total {
        ticker.tick().await;
        // Open loop: latency from when the bid was due, not from when it went out.
        let intended = started + period.mul_f64(n as f64);
        let auction = n % args.auctions;
        let client = bidders[(n / args.auctions % 2) as usize].clone();
        let tally = Arc::clone(&tally);
        inflight.push(tokio::spawn(place_bid(client, tally, auction, intended)));
    }
    for task in inflight {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Ordering: Relaxed; every bid task has ended.
    Ok(Load {
        total,
        seconds,
        accepted: tally.accepted.load(Ordering::Relaxed),
        rejected: tally.rejected.load(Ordering::Relaxed),
        bid_latency_us: tally.latency_us.lock().await.clone(),
    })
}

/// Places one bid on `auction` (0-based) above the last amount seen, and tallies it.
async fn place_bid(client: Client, tally: Arc<Tally>, auction: u64, intended: Instant) {
    let next = &tally.next[auction as usize];
    // Ordering: Relaxed; amounts only need to grow, races just cost a too-low bid.
    let amount = next.fetch_add(1000, Ordering::Relaxed) + 1000;
    let result = client.place_bid(Bid::new(auction + 1, amount)).await;
    let latency = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _ = tally
        .latency_us
        .lock()
        .await
        .record(latency.clamp(1, 60_000_000));
    match result {
        Ok(_) => tally.accepted.fetch_add(1, Ordering::Relaxed),
        Err(BidError::TooLow { min_next }) => {
            next.fetch_max(min_next, Ordering::Relaxed);
            tally.rejected.fetch_add(1, Ordering::Relaxed)
        }
        Err(_) => tally.rejected.fetch_add(1, Ordering::Relaxed),
    };
}

/// The node's figures over the load.
struct NodeFigures {
    /// Updates the node published during the load.
    published: f64,
    /// Updates conflated (all run).
    conflated: f64,
    rss_loaded: u64,
    cpu_seconds: f64,
}

/// Prints the load, deliveries, both latencies and the node's figures.
async fn print_results(args: &Args, load: &Load, delivery: &Delivery, node: &NodeFigures) {
    let histogram = delivery.latency_us.lock().await;
    // Ordering: Relaxed; a counter read after the tasks are stopped.
    let delivered = delivery.delivered.load(Ordering::Relaxed);
    let load_seconds = load.seconds;
    println!(
        "load: {:.1} s, bids offered {} ({} /s), accepted {}, rejected {}",
        load_seconds, load.total, args.rate, load.accepted, load.rejected
    );
    println!(
        "updates published {:.0} ({:.0} /s), delivered {} ({:.0} /s, {:.0} per watcher /s), conflated {:.0}",
        node.published,
        node.published / load_seconds,
        delivered,
        delivered as f64 / load_seconds,
        delivered as f64 / load_seconds / args.watchers.max(1) as f64,
        node.conflated
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
    let bids = &load.bid_latency_us;
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
        node.rss_loaded as f64 / 1048576.0,
        node.cpu_seconds,
        node.cpu_seconds * 1e6 / delivered.max(1) as f64
    );
}
