//! The phases of a run, in order: auctions created; watchers connected (the node's idle
//! memory per watcher measured); QUIC bidders at the fixed rate while the watchers record
//! deliveries; WebSocket bidders at the same rate; then the baselines with the same shape —
//! the quinn echo (transport floor), raw append + fsync at the node's accepted rate
//! (durability floor), nats-server with as many watchers and the node's update rate
//! (fan-out peer) — and the ratios between them. [`max_rate`] searches the highest rate
//! whose p99 stays under a bound, for the node and the echo.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bidders::{self, Lanes};
use crate::pace::{self, LANE_QUEUE_MAX, Lane, Paced, Schedule};
use crate::report::{Phase, PhaseReport, Ratio, SearchStep};
use crate::stats::{CpuMeter, CpuUse, ProcessSample, Recorder, sample_process};
use crate::target::{ChildServer, Node};
use crate::workload::{Pick, Workload};
use crate::{fsync, nats, ws};

/// How long watchers wait, after the bidding stopped, for deliveries to stop coming.
const DELIVERY_QUIET: Duration = Duration::from_millis(500);
/// Longest wait for the last deliveries after the bidding stopped.
const DELIVERY_TAIL_MAX: Duration = Duration::from_secs(10);
/// Settling time after the watchers connected, before their memory is measured.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for all lanes to finish after the pacer stopped.
const LANES_TIMEOUT: Duration = Duration::from_secs(60);

/// Which baselines run after the node's phases.
#[derive(Clone, Copy, Debug, Default)]
pub struct Floors {
    /// The bare quinn mTLS echo.
    pub echo: bool,
    /// Raw append + fsync.
    pub fsync: bool,
    /// nats-server's WebSocket fan-out.
    pub nats: bool,
}

/// The load shape of a run.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Bids per second (over all bidder connections).
    pub rate_per_s: f64,
    /// Longest sending time of each phase.
    pub duration: Duration,
    /// Most bids of each phase.
    pub count_max: u64,
    /// QUIC bidder connections (0: no QUIC phase).
    pub quic_connections: usize,
    /// WebSocket bidder connections (0: no WebSocket bidding phase).
    pub ws_connections: usize,
    /// Also bid through the SDK (`gavel-client`), same connections and rate.
    pub sdk: bool,
    /// Without watchers and with the echo floor: alternate node and echo in this many
    /// rounds (each `duration / rounds`), so both see the same neighbours.
    pub rounds: u32,
    /// Auctions bid on.
    pub auctions: usize,
    /// How auctions are picked.
    pub pick: Pick,
    /// Share of bids meant to win.
    pub win_ratio: f64,
    /// WebSocket watchers (0: none).
    pub watchers: usize,
    /// The watchers' subscription interval.
    pub watch_interval_ms: u32,
    /// Baselines to run.
    pub floors: Floors,
    /// Show progress bars.
    pub progress: bool,
}

/// The results of a run: the phases and the ratios between them.
pub struct Outcome {
    /// Every phase, in order.
    pub phases: Vec<Phase>,
    /// Node / baseline ratios.
    pub ratios: Vec<Ratio>,
}

fn progress_bar(show: bool, len: u64, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    // Invariant: the template is a valid indicatif template.
    let style = ProgressStyle::with_template(
        "{prefix:>14} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} ETA {eta}",
    )
    .expect("valid progress template");
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Hands the schedule to `lanes` and waits until every lane finished.
async fn drive(schedule: Schedule, lanes: Lanes, bar: ProgressBar) -> Result<Paced> {
    let Lanes { lanes, tasks } = lanes;
    let pacer_bar = bar.clone();
    let paced = tokio::task::spawn_blocking(move || pace::run(schedule, lanes, &pacer_bar))
        .await
        .context("the pacer thread")?;
    bar.finish_and_clear();
    let all = futures_util::future::join_all(tasks);
    if tokio::time::timeout(LANES_TIMEOUT, all).await.is_err() {
        bail!("the connections did not finish within {LANES_TIMEOUT:?} after the last bid");
    }
    Ok(paced)
}

/// A phase report with the counts and histograms of `recorder`.
#[allow(clippy::too_many_arguments)]
fn phase(
    name: &str,
    what: String,
    schedule: &Schedule,
    connections: usize,
    paced: &Paced,
    recorder: &Recorder,
    meter: &CpuMeter,
    figures: BTreeMap<String, f64>,
) -> Phase {
    let recorded = recorder.snapshot();
    Phase::new(
        PhaseReport {
            name: name.to_owned(),
            what,
            rate_per_s: schedule.rate_per_s,
            connections,
            planned: schedule.planned(),
            sent: paced.sent,
            achieved_rate_per_s: paced.sent as f64 / paced.elapsed.as_secs_f64().max(1e-9),
            counts: recorded.counts,
            latency_us: BTreeMap::new(),
            cpu: meter.finish(),
            figures,
        },
        recorded.latencies,
    )
}

/// What every phase of a run shares: the node, the load shape, the schedule of a phase and
/// the workload on the run's auctions.
struct Run<'a> {
    node: &'a Node,
    shape: &'a Shape,
    schedule: Schedule,
    workload: Arc<Workload>,
}

impl<'a> Run<'a> {
    /// Creates `shape.auctions` auctions (ids `tag * 100_000 + offset + i`, topics
    /// `load.r{tag}.{letter}{id}`, where `tag` is this second) open for `open_for`, and the
    /// workload bidding on them. Returns the run and its tag.
    async fn prepare(
        node: &'a Node,
        shape: &'a Shape,
        offset: u64,
        letter: char,
        open_for: Duration,
    ) -> Result<(Run<'a>, u64)> {
        let tag = crate::stats::unix_us() / 1_000_000;
        let ids: Vec<u64> = (1..=shape.auctions as u64)
            .map(|i| tag * 100_000 + offset + i)
            .collect();
        node.create_auctions(&ids, |id| format!("load.r{tag}.{letter}{id}"), open_for)
            .await
            .context("creating the auctions through the admin API")?;
        let workload = Arc::new(Workload::new(ids, shape.pick, shape.win_ratio)?);
        let schedule = Schedule {
            rate_per_s: shape.rate_per_s,
            count_max: shape.count_max,
            duration: shape.duration,
        };
        let run = Run {
            node,
            shape,
            schedule,
            workload,
        };
        Ok((run, tag))
    }
}

/// Which client a bidding phase's connections use, and where they go.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// The lean QUIC client, to `addr` (the node or the echo floor); `durable`: it waits for
    /// the node's durable acks too.
    QuicRaw { addr: SocketAddr, durable: bool },
    /// WebSocket bidders on the node.
    WebSocket,
    /// The SDK (`gavel-client`) on the node.
    Sdk,
}

/// The set-up every bidding phase shares: its name, what it measures, its connections and
/// the process whose CPU it measures.
struct Bidding {
    name: &'static str,
    what: String,
    client: Client,
    connections: usize,
    server_pid: Option<u32>,
}

/// What sending a bidding phase's bids left for its report.
struct Driven {
    paced: Paced,
    meter: CpuMeter,
    /// When the CPU meter started, just before the first bid was due.
    started: Instant,
}

impl Bidding {
    /// Opens the phase's connections, recording into `recorder`.
    async fn connect(&self, run: &Run<'_>, recorder: &Recorder) -> Result<Lanes> {
        let workload = Arc::clone(&run.workload);
        match self.client {
            Client::QuicRaw { addr, durable } => {
                bidders::quic_raw(
                    addr,
                    &run.node.certs,
                    self.connections,
                    workload,
                    recorder.clone(),
                    durable,
                )
                .await
            }
            Client::WebSocket => {
                bidders::websocket(run.node, self.connections, workload, recorder.clone()).await
            }
            Client::Sdk => {
                bidders::sdk(run.node, self.connections, workload, recorder.clone()).await
            }
        }
    }

    /// Connects, then sends `schedule`'s bids (CPU measured from the first), with a progress
    /// bar labelled `label`.
    async fn drive(
        &self,
        run: &Run<'_>,
        schedule: Schedule,
        recorder: &Recorder,
        label: &str,
    ) -> Result<Driven> {
        let lanes = self.connect(run, recorder).await?;
        let meter = CpuMeter::start(self.server_pid);
        let started = Instant::now();
        let bar = progress_bar(run.shape.progress, schedule.planned(), label);
        let paced = drive(schedule, lanes, bar).await?;
        Ok(Driven {
            paced,
            meter,
            started,
        })
    }

    /// The phase's report of what `recorder` saw, with `figures`.
    fn report(
        self,
        schedule: &Schedule,
        driven: &Driven,
        recorder: &Recorder,
        figures: BTreeMap<String, f64>,
    ) -> Phase {
        phase(
            self.name,
            self.what,
            schedule,
            self.connections,
            &driven.paced,
            recorder,
            &driven.meter,
            figures,
        )
    }

    /// The whole phase at the run's schedule, without extra figures.
    async fn run(self, run: &Run<'_>) -> Result<Phase> {
        let recorder = Recorder::default();
        let driven = self.drive(run, run.schedule, &recorder, self.name).await?;
        Ok(self.report(&run.schedule, &driven, &recorder, BTreeMap::new()))
    }
}

/// The node's QUIC bidders (the lean client, as the echo floor's).
fn quic_bidding(node: &Node, shape: &Shape, what_more: &str) -> Bidding {
    Bidding {
        name: "gavel_quic",
        what: format!(
            "gavel serve: QUIC bidders (lean client, as the echo floor's), {} connections, {} auctions {:?}, win ratio {}{what_more}",
            shape.quic_connections, shape.auctions, shape.pick, shape.win_ratio
        ),
        client: Client::QuicRaw {
            addr: node.quic,
            durable: true,
        },
        connections: shape.quic_connections,
        server_pid: node.pid(),
    }
}

/// The echo floor's bidders: the node's QUIC bidders, on the bare quinn echo at `addr`.
fn echo_bidding(shape: &Shape, addr: SocketAddr, pid: u32, what_more: &str) -> Bidding {
    Bidding {
        name: "echo_floor",
        what: format!(
            "bare quinn mTLS echo (node's TLS and QUIC settings, same frames), {} connections{what_more}",
            shape.quic_connections
        ),
        client: Client::QuicRaw {
            addr,
            durable: false,
        },
        connections: shape.quic_connections,
        server_pid: Some(pid),
    }
}

/// The node's WebSocket bidders.
fn ws_bidding(node: &Node, shape: &Shape) -> Bidding {
    Bidding {
        name: "gavel_ws",
        what: format!(
            "gavel serve: WebSocket bidders ({}), {} connections, {} auctions {:?}, win ratio {}",
            ws::GAVEL_PROTO,
            shape.ws_connections,
            shape.auctions,
            shape.pick,
            shape.win_ratio
        ),
        client: Client::WebSocket,
        connections: shape.ws_connections,
        server_pid: node.pid(),
    }
}

/// The node's QUIC bidders through the SDK.
fn sdk_bidding(node: &Node, shape: &Shape) -> Bidding {
    Bidding {
        name: "gavel_sdk",
        what: format!(
            "gavel serve: QUIC bidders through the SDK (gavel-client), {} connections",
            shape.quic_connections
        ),
        client: Client::Sdk,
        connections: shape.quic_connections,
        server_pid: node.pid(),
    }
}

/// The node's watchers, connected before the bidding so they see every update of it.
struct Watching {
    watchers: ws::Watchers,
    recorder: Recorder,
    stop: CancellationToken,
    /// The topic pattern they watch.
    pattern: String,
    /// Their count and the node's idle memory per watcher.
    figures: BTreeMap<String, f64>,
}

impl Watching {
    /// Connects `shape.watchers` watchers of `pattern` and measures the node's memory per
    /// idle watcher.
    async fn connect(node: &Node, shape: &Shape, pattern: String) -> Result<Watching> {
        let recorder = Recorder::default();
        let stop = CancellationToken::new();
        let before = node.pid().and_then(|pid| sample_process(Some(pid)));
        let bar = progress_bar(shape.progress, shape.watchers as u64, "gavel watchers");
        let watchers = ws::watch(
            node.https_connector(None)?,
            node.https,
            "/v1/ws",
            ws::Feed::Gavel {
                pattern: pattern.clone(),
                interval_ms: shape.watch_interval_ms,
            },
            shape.watchers,
            recorder.clone(),
            stop.clone(),
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        tokio::time::sleep(IDLE_SETTLE).await;
        let after = node.pid().and_then(|pid| sample_process(Some(pid)));
        let figures = idle_watcher_figures(before, after, watchers.subscribed);
        Ok(Watching {
            watchers,
            recorder,
            stop,
            pattern,
            figures,
        })
    }

    /// After the bidding that `driven` describes: waits for the last deliveries of its
    /// `published` updates, stops the watchers and reports their phase.
    async fn finish(&self, run: &Run<'_>, driven: &Driven, published: u64) -> Phase {
        let window = wait_deliveries(&self.watchers, driven.started).await;
        self.stop.cancel();
        fanout_phase(
            "gavel_fanout",
            format!(
                "gavel serve: {} WebSocket watchers of pattern {}, interval {} ms",
                self.watchers.subscribed, self.pattern, run.shape.watch_interval_ms
            ),
            &run.schedule,
            &self.watchers,
            &self.recorder,
            &driven.meter,
            &driven.paced,
            window,
            published,
            self.figures.clone(),
        )
        .await
    }
}

/// The figures of `subscribed` idle watchers: their count and the server's memory growth
/// per watcher, from its samples `before` and `after` they connected.
fn idle_watcher_figures(
    before: Option<ProcessSample>,
    after: Option<ProcessSample>,
    subscribed: usize,
) -> BTreeMap<String, f64> {
    let mut figures = BTreeMap::new();
    if let (Some(before), Some(after)) = (before, after) {
        let per = (after.rss_bytes as f64 - before.rss_bytes as f64) / subscribed as f64;
        figures.insert("server_rss_per_idle_watcher_bytes".to_owned(), per);
    }
    figures.insert("watchers_subscribed".to_owned(), subscribed as f64);
    figures
}

/// Runs every phase of `shape` against `node`.
pub async fn run(node: &Node, shape: &Shape) -> Result<Outcome> {
    let open_for = shape.duration * 4 + Duration::from_secs(600);
    let (run, tag) = Run::prepare(node, shape, 0, 'a', open_for).await?;
    // Watchers first, so they see every update of the bidding phases.
    let watching = if shape.watchers > 0 {
        Some(Watching::connect(node, shape, format!("load.r{tag}.>")).await?)
    } else {
        None
    };
    let mut phases = Vec::new();
    let mut gavel_update_rate = None;
    let mut echo_done = None;
    if shape.quic_connections > 0 && shape.rounds > 1 && shape.floors.echo && watching.is_none() {
        let (quic_phase, echo_phase) = interleaved(&run).await?;
        gavel_update_rate = quic_phase.report.figures.get("accepted_per_s").copied();
        phases.push(quic_phase);
        echo_done = Some(echo_phase);
    } else if shape.quic_connections > 0 {
        let (quic_phases, accepted_rate) = quic_phases(&run, watching.as_ref()).await?;
        gavel_update_rate = Some(accepted_rate);
        phases.extend(quic_phases);
    }
    if shape.ws_connections > 0 {
        phases.push(ws_bidding(node, shape).run(&run).await?);
    }
    if let Some(watching) = &watching {
        watching.stop.cancel();
    }
    if shape.sdk && shape.quic_connections > 0 {
        phases.push(sdk_bidding(node, shape).run(&run).await?);
    }
    if let Some(echo_phase) = echo_done {
        phases.push(echo_phase);
    } else if shape.floors.echo && shape.quic_connections > 0 {
        phases.push(echo_floor(&run).await?);
    }
    if let (true, Some(rate)) = (shape.floors.fsync, gavel_update_rate) {
        phases.push(fsync_floor(&run, rate).await?);
    }
    if let (true, Some(rate), Some(watching)) = (shape.floors.nats, gavel_update_rate, &watching) {
        let watchers = watching.watchers.subscribed;
        phases.push(nats_phase(node, shape, &run.schedule, rate, watchers).await?);
    }
    Ok(Outcome {
        ratios: ratios(&phases),
        phases,
    })
}

/// The node's QUIC bidding phase and, with watchers, their fan-out phase; and the node's
/// accepted bids per second (its update rate).
async fn quic_phases(run: &Run<'_>, watching: Option<&Watching>) -> Result<(Vec<Phase>, f64)> {
    let bidding = quic_bidding(run.node, run.shape, "");
    let recorder = Recorder::default();
    let driven = bidding
        .drive(run, run.schedule, &recorder, "gavel quic")
        .await?;
    let accepted = recorder.snapshot().counts.get("accepted");
    let accepted_rate = accepted as f64 / driven.paced.elapsed.as_secs_f64().max(1e-9);
    let figures = BTreeMap::from([("accepted_per_s".to_owned(), accepted_rate)]);
    let mut quic_phase = bidding.report(&run.schedule, &driven, &recorder, figures);
    let Some(watching) = watching else {
        return Ok((vec![quic_phase], accepted_rate));
    };
    let delivered_phase = watching.finish(run, &driven, accepted).await;
    quic_phase.report.figures.insert(
        "delivered_per_s".to_owned(),
        delivered_phase
            .report
            .figures
            .get("delivered_per_s")
            .copied()
            .unwrap_or(0.0),
    );
    Ok((vec![quic_phase, delivered_phase], accepted_rate))
}

/// The echo floor: the node's QUIC bidders on a bare quinn echo.
async fn echo_floor(run: &Run<'_>) -> Result<Phase> {
    let echo_server = start_echo(run.node)?;
    let addr = echo_server.addr("quic=")?;
    echo_bidding(run.shape, addr, echo_server.pid(), "")
        .run(run)
        .await
}

/// The durability floor: raw append + fdatasync at `rate`, the node's accepted rate.
async fn fsync_floor(run: &Run<'_>, rate: f64) -> Result<Phase> {
    let dir = tempfile::tempdir().context("a directory for the raw log")?;
    let schedule = Schedule {
        rate_per_s: rate.max(1.0),
        ..run.schedule
    };
    let recorder = Recorder::default();
    let (lane, due) = mpsc::channel(LANE_QUEUE_MAX);
    let writer = {
        let recorder = recorder.clone();
        let path = dir.path().to_owned();
        std::thread::spawn(move || fsync::run(&path, fsync::RECORD_BYTES, due, &recorder))
    };
    let meter = CpuMeter::start(None);
    let bar = progress_bar(run.shape.progress, schedule.planned(), "fsync floor");
    let paced = drive(schedule, one_lane(lane), bar).await?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the raw log writer panicked"))??;
    Ok(phase(
        "fsync_floor",
        format!(
            "raw append + fdatasync of {}-byte records at the node's accepted rate, in {}",
            fsync::RECORD_BYTES,
            std::env::temp_dir().display()
        ),
        &schedule,
        1,
        &paced,
        &recorder,
        &meter,
        BTreeMap::new(),
    ))
}

/// Lanes of one queue and no tasks (the caller consumes it).
fn one_lane(lane: Lane) -> Lanes {
    Lanes {
        lanes: vec![lane],
        tasks: vec![],
    }
}

/// One side's totals over the rounds of [`interleaved`].
#[derive(Clone, Copy, Default)]
struct Rounds {
    cpu: CpuUse,
    sent: u64,
    elapsed: Duration,
}

/// The node's QUIC phase and the echo floor in alternating rounds of `duration / rounds`:
/// node, echo, node, echo, …; each side's rounds merged into one phase.
async fn interleaved(run: &Run<'_>) -> Result<(Phase, Phase)> {
    let echo_server = start_echo(run.node)?;
    let echo_addr = echo_server.addr("quic=")?;
    let rounds = run.shape.rounds;
    let round = Schedule {
        duration: run.schedule.duration / rounds,
        count_max: (run.schedule.count_max / u64::from(rounds)).max(1),
        ..run.schedule
    };
    let sides = [
        quic_bidding(
            run.node,
            run.shape,
            &format!(", {rounds} rounds alternating with the echo"),
        ),
        echo_bidding(
            run.shape,
            echo_addr,
            echo_server.pid(),
            &format!(", {rounds} rounds alternating with the node"),
        ),
    ];
    let recorders = [Recorder::default(), Recorder::default()];
    let mut totals = [Rounds::default(); 2];
    for r in 0..rounds {
        for (i, side) in sides.iter().enumerate() {
            let label = format!("{} {}/{rounds}", side.name, r + 1);
            let driven = side.drive(run, round, &recorders[i], &label).await?;
            totals[i].cpu.add(driven.meter.finish());
            totals[i].sent += driven.paced.sent;
            totals[i].elapsed += driven.paced.elapsed;
        }
    }
    let planned = round.planned() * u64::from(rounds);
    let [quic, echo] = sides;
    let accepted = recorders[0].snapshot().counts.get("accepted");
    let figures = BTreeMap::from([(
        "accepted_per_s".to_owned(),
        accepted as f64 / totals[0].elapsed.as_secs_f64().max(1e-9),
    )]);
    let quic_phase = merged_rounds(quic, run, &recorders[0], totals[0], planned, figures);
    let echo_phase = merged_rounds(
        echo,
        run,
        &recorders[1],
        totals[1],
        planned,
        BTreeMap::new(),
    );
    Ok((quic_phase, echo_phase))
}

/// One side's rounds of [`interleaved`] as one phase: bids, time and CPU summed.
fn merged_rounds(
    side: Bidding,
    run: &Run<'_>,
    recorder: &Recorder,
    totals: Rounds,
    planned: u64,
    figures: BTreeMap<String, f64>,
) -> Phase {
    let paced = Paced {
        sent: totals.sent,
        start: Instant::now(),
        elapsed: totals.elapsed,
    };
    let mut merged = phase(
        side.name,
        side.what,
        &run.schedule,
        side.connections,
        &paced,
        recorder,
        &CpuMeter::start(None),
        figures,
    );
    merged.report.planned = planned;
    merged.report.cpu = totals.cpu;
    merged
}

/// Waits until deliveries stop (no new one for [`DELIVERY_QUIET`], at most
/// [`DELIVERY_TAIL_MAX`]); returns the time from `started` to the last delivery seen.
async fn wait_deliveries(watchers: &ws::Watchers, started: Instant) -> Duration {
    let tail_start = Instant::now();
    // Ordering: a progress counter only.
    let mut last = watchers.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while tail_start.elapsed() < DELIVERY_TAIL_MAX && last_change.elapsed() < DELIVERY_QUIET {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = watchers.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    last_change.duration_since(started)
}

/// The watchers' phase: deliveries, their latency, and deliveries per second over `window`.
#[allow(clippy::too_many_arguments)]
async fn fanout_phase(
    name: &str,
    what: String,
    schedule: &Schedule,
    watchers: &ws::Watchers,
    recorder: &Recorder,
    meter: &CpuMeter,
    paced: &Paced,
    window: Duration,
    published: u64,
    mut figures: BTreeMap<String, f64>,
) -> Phase {
    // Let the tasks add their final counts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let delivered = watchers.delivered.load(Ordering::Relaxed);
    let expected = published * watchers.subscribed as u64;
    figures.insert("published".to_owned(), published as f64);
    figures.insert("delivered".to_owned(), delivered as f64);
    figures.insert(
        "delivered_per_s".to_owned(),
        delivered as f64 / window.as_secs_f64().max(1e-9),
    );
    figures.insert(
        "delivered_fraction".to_owned(),
        if expected > 0 {
            delivered as f64 / expected as f64
        } else {
            0.0
        },
    );
    phase(
        name,
        what,
        schedule,
        watchers.subscribed,
        paced,
        recorder,
        meter,
        figures,
    )
}

/// Starts this executable's echo server on the node's certificates.
fn start_echo(node: &Node) -> Result<ChildServer> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let log = std::env::temp_dir().join(format!("gavel-loadtest-echo-{}.log", std::process::id()));
    let mut command = std::process::Command::new(exe);
    command
        .args(["echo-server", "--listen", "127.0.0.1:0", "--certs"])
        .arg(&node.certs);
    ChildServer::start(command, "listening quic=", &log)
}

/// nats-server with `watchers` WebSocket watchers of one subject, publishes at `rate`.
async fn nats_phase(
    node: &Node,
    shape: &Shape,
    schedule: &Schedule,
    rate: f64,
    watchers: usize,
) -> Result<Phase> {
    let binary = nats::find_binary().context(
        "nats-server is not installed (Debian: apt-get install nats-server); run without --floors nats",
    )?;
    let dir = tempfile::tempdir()?;
    let server = nats::Nats::start(&binary, dir.path(), &node.certs, watchers + 16)?;
    let recorder = Recorder::default();
    let stop = CancellationToken::new();
    let before = sample_process(Some(server.child.pid()));
    let bar = progress_bar(shape.progress, watchers as u64, "nats watchers");
    let subject = "load.nats.a1".to_owned();
    let connected = ws::watch(
        node.https_connector(None)?,
        server.websocket,
        "/",
        ws::Feed::Nats {
            subject: subject.clone(),
        },
        watchers,
        recorder.clone(),
        stop.clone(),
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    tokio::time::sleep(IDLE_SETTLE).await;
    let after = sample_process(Some(server.child.pid()));
    let figures = idle_watcher_figures(before, after, connected.subscribed);
    let nats_schedule = Schedule {
        rate_per_s: rate.max(1.0),
        ..*schedule
    };
    let publishing = Publishing {
        server: &server,
        subject,
        schedule: nats_schedule,
        recorder: &recorder,
        watchers: &connected,
    };
    let (driven, window) = publishing.run(shape.progress).await?;
    stop.cancel();
    let published = recorder.snapshot().counts.get("published");
    let phase = fanout_phase(
        "nats_fanout",
        format!(
            "nats-server {}: {} WebSocket watchers (TLS) of one subject, publishing at the node's update rate",
            server_version(&binary),
            connected.subscribed
        ),
        &nats_schedule,
        &connected,
        &recorder,
        &driven.meter,
        &driven.paced,
        window,
        published,
        figures,
    )
    .await;
    for task in connected.tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(phase)
}

/// The publishing half of [`nats_phase`].
struct Publishing<'a> {
    server: &'a nats::Nats,
    subject: String,
    schedule: Schedule,
    recorder: &'a Recorder,
    watchers: &'a ws::Watchers,
}

impl Publishing<'_> {
    /// Publishes at the schedule's rate (nats-server's CPU measured), then waits for the
    /// watchers' last deliveries; returns what was sent and the delivery window.
    async fn run(self, progress: bool) -> Result<(Driven, Duration)> {
        let (lane, due) = mpsc::channel(LANE_QUEUE_MAX);
        let publish = nats::publish(self.server.client, self.subject, due, self.recorder.clone());
        let publisher = tokio::spawn(publish);
        let meter = CpuMeter::start(Some(self.server.child.pid()));
        let started = Instant::now();
        let bar = progress_bar(progress, self.schedule.planned(), "nats publish");
        let paced = drive(self.schedule, one_lane(lane), bar).await?;
        publisher.await.context("the nats publisher")??;
        let window = wait_deliveries(self.watchers, started).await;
        let driven = Driven {
            paced,
            meter,
            started,
        };
        Ok((driven, window))
    }
}

fn server_version(binary: &std::path::Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The headline ratios between the phases present.
pub fn ratios(phases: &[Phase]) -> Vec<Ratio> {
    let find = |name: &str| {
        phases
            .iter()
            .find(|p| p.report.name == name)
            .map(|p| &p.report)
    };
    let lat = |p: &PhaseReport, h: &str| p.latency_us.get(h).copied().unwrap_or_default();
    let fig = |p: &PhaseReport, f: &str| p.figures.get(f).copied().unwrap_or(0.0);
    let mut out = Vec::new();
    if let (Some(node), Some(floor)) = (find("gavel_quic"), find("echo_floor")) {
        let (a, e) = (lat(node, "accepted"), lat(floor, "decided"));
        out.push(Ratio::new(
            "accepted ack p50 / quinn echo p50",
            a.p50_us as f64,
            e.p50_us as f64,
            "≤ 1.2",
        ));
        out.push(Ratio::new(
            "accepted ack p99 / quinn echo p99",
            a.p99_us as f64,
            e.p99_us as f64,
            "≤ 1.2",
        ));
        out.push(Ratio::new(
            "accepted ack p99.9 / quinn echo p99.9",
            a.p999_us as f64,
            e.p999_us as f64,
            "reported",
        ));
    }
    if let (Some(node), Some(floor)) = (find("gavel_quic"), find("fsync_floor")) {
        let (d, f) = (lat(node, "durable"), lat(floor, "durable"));
        out.push(Ratio::new(
            "durable ack p99 / raw append+fsync p99",
            d.p99_us as f64,
            f.p99_us as f64,
            "≤ 1.5 (and p99 ≤ 3 ms)",
        ));
    }
    if let (Some(node), Some(peer)) = (find("gavel_fanout"), find("nats_fanout")) {
        out.push(Ratio::new(
            "deliveries/s / nats-server deliveries/s",
            fig(node, "delivered_per_s"),
            fig(peer, "delivered_per_s"),
            "≥ 2 (with delivery p99 ≤ 100 ms)",
        ));
        out.push(Ratio::new(
            "delivery p99 / nats-server delivery p99",
            lat(node, "delivery").p99_us as f64,
            lat(peer, "delivery").p99_us as f64,
            "node p99 ≤ 100 ms",
        ));
        out.push(Ratio::new(
            "idle memory per watcher / nats-server's (bytes)",
            fig(node, "server_rss_per_idle_watcher_bytes"),
            fig(peer, "server_rss_per_idle_watcher_bytes"),
            "node ≤ 4 KiB",
        ));
    }
    out
}

/// What `--max-rate` searches.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// The p99 bound of `decided`.
    pub p99_bound: Duration,
    /// The first rate tried.
    pub start_rate_per_s: f64,
    /// Most steps per system.
    pub steps_max: usize,
    /// Highest rate tried.
    pub rate_max_per_s: f64,
}

/// Finds, for the node (and the echo floor if `shape.floors.echo`), the highest rate at
/// which `decided` p99 stays under the bound with every bid sent and answered: doubling from
/// the start rate until a step fails, then bisecting, `steps_max` steps in all per system.
pub async fn max_rate(
    node: &Node,
    shape: &Shape,
    search: Search,
) -> Result<(Vec<SearchStep>, BTreeMap<String, f64>)> {
    let open_for = shape.duration * 2 * search.steps_max as u32 + Duration::from_secs(600);
    let (run, _) = Run::prepare(node, shape, 50_000, 's', open_for).await?;
    let echo_server = if shape.floors.echo {
        Some(start_echo(node)?)
    } else {
        None
    };
    let mut steps = Vec::new();
    let mut best = BTreeMap::new();
    let mut systems = vec!["gavel_quic"];
    if echo_server.is_some() {
        systems.push("echo_floor");
    }
    for system in systems {
        let searching = Searching {
            run: &run,
            system,
            echo_server: echo_server.as_ref(),
            search,
        };
        let good = searching.highest_good_rate(&mut steps).await?;
        best.insert(system.to_owned(), good.unwrap_or(0.0));
    }
    Ok((steps, best))
}

/// The search of one system's highest good rate (see [`max_rate`]).
struct Searching<'a> {
    run: &'a Run<'a>,
    /// `gavel_quic` or `echo_floor`.
    system: &'static str,
    echo_server: Option<&'a ChildServer>,
    search: Search,
}

impl Searching<'_> {
    /// Doubles, then bisects, adding each step to `steps`; the highest good rate found.
    async fn highest_good_rate(&self, steps: &mut Vec<SearchStep>) -> Result<Option<f64>> {
        let search = self.search;
        let mut good: Option<f64> = None;
        let mut bad: Option<f64> = None;
        let mut rate = search.start_rate_per_s;
        for _ in 0..search.steps_max {
            let step = self.step(rate).await?;
            if step.ok {
                good = Some(good.map_or(rate, |g: f64| g.max(rate)));
            } else {
                bad = Some(bad.map_or(rate, |b: f64| b.min(rate)));
            }
            steps.push(step);
            rate = match (good, bad) {
                (Some(g), None) => (g * 2.0).min(search.rate_max_per_s),
                (Some(g), Some(b)) => (g + b) / 2.0,
                (None, Some(b)) => b / 2.0,
                (None, None) => rate,
            };
            if good.is_some_and(|g| g >= search.rate_max_per_s) {
                break;
            }
            if let (Some(g), Some(b)) = (good, bad)
                && b - g < g * 0.05
            {
                break;
            }
        }
        Ok(good)
    }

    /// One step: bids at `rate` for the shape's duration, judged.
    async fn step(&self, rate: f64) -> Result<SearchStep> {
        let shape = self.run.shape;
        let schedule = Schedule {
            rate_per_s: rate,
            count_max: shape.count_max,
            duration: shape.duration,
        };
        let recorder = Recorder::default();
        let bidding = if self.system == "gavel_quic" {
            quic_bidding(self.run.node, shape, "")
        } else {
            let server = self.echo_server.context("the echo server")?;
            echo_bidding(shape, server.addr("quic=")?, server.pid(), "")
        };
        let lanes = bidding.connect(self.run, &recorder).await?;
        let label = format!("{} {rate:.0}/s", self.system);
        let bar = progress_bar(shape.progress, schedule.planned(), &label);
        let paced = drive(schedule, lanes, bar).await?;
        Ok(self.judge(rate, &recorder, &paced))
    }

    /// A step is good when `decided` p99 is within the bound, every bid was answered without
    /// an error, and the rate was achieved (95 %).
    fn judge(&self, rate: f64, recorder: &Recorder, paced: &Paced) -> SearchStep {
        let recorded = recorder.snapshot();
        let p99 = recorded
            .latencies
            .get("decided")
            .map_or(u64::MAX, |l| l.summary().p99_us);
        let answered = recorded.latencies.get("decided").map_or(0, |l| l.count());
        let errors = recorded.counts.total()
            - recorded.counts.get("accepted")
            - recorded.counts.get("too_low")
            - recorded
                .counts
                .0
                .iter()
                .filter(|(k, _)| k.starts_with("durable_"))
                .map(|(_, v)| v)
                .sum::<u64>();
        let achieved = paced.sent as f64 / paced.elapsed.as_secs_f64().max(1e-9);
        let ok = p99 <= u64::try_from(self.search.p99_bound.as_micros()).unwrap_or(u64::MAX)
            && errors == 0
            && answered == paced.sent
            && achieved >= 0.95 * rate;
        SearchStep {
            system: self.system.to_owned(),
            rate_per_s: rate,
            achieved_rate_per_s: achieved,
            p99_us: p99,
            errors,
            ok,
        }
    }
}

/// The run's output directory default: `bench-results/` in the working directory.
pub fn default_out_dir() -> PathBuf {
    PathBuf::from("bench-results")
}
