//! The phases of a run, in order: auctions created; watchers connected (the node's idle
//! memory per watcher measured); QUIC bidders at the fixed rate while the watchers record
//! deliveries; WebSocket bidders at the same rate; then the baselines with the same shape —
//! the quinn echo (transport floor), raw append + fsync at the node's accepted rate
//! (durability floor), nats-server with as many watchers and the node's update rate
//! (fan-out peer) — and the ratios between them. [`max_rate`] searches the highest rate
//! whose p99 stays under a bound, for the node and the echo.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bidders::{self, Lanes};
use crate::pace::{self, LANE_QUEUE_MAX, Paced, Schedule};
use crate::report::{Phase, PhaseReport, Ratio, SearchStep};
use crate::stats::{CpuMeter, CpuUse, Recorder, sample_process};
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

/// A bidding phase without watchers.
struct Bidding {
    name: &'static str,
    what: String,
    connections: usize,
    server_pid: Option<u32>,
}

impl Bidding {
    /// Drives `lanes` with `schedule` and reports what `recorder` saw.
    async fn run(
        self,
        shape: &Shape,
        schedule: Schedule,
        lanes: Lanes,
        recorder: &Recorder,
    ) -> Result<Phase> {
        let meter = CpuMeter::start(self.server_pid);
        let bar = progress_bar(shape.progress, schedule.planned(), self.name);
        let paced = drive(schedule, lanes, bar).await?;
        Ok(phase(
            self.name,
            self.what,
            &schedule,
            self.connections,
            &paced,
            recorder,
            &meter,
            BTreeMap::new(),
        ))
    }
}

/// Runs every phase of `shape` against `node`.
pub async fn run(node: &Node, shape: &Shape) -> Result<Outcome> {
    let tag = crate::stats::unix_us() / 1_000_000;
    let ids: Vec<u64> = (1..=shape.auctions as u64)
        .map(|i| tag * 100_000 + i)
        .collect();
    let topic = move |id: u64| format!("load.r{tag}.a{id}");
    let pattern = format!("load.r{tag}.>");
    let open_for = shape.duration * 4 + Duration::from_secs(600);
    node.create_auctions(&ids, topic, open_for)
        .await
        .context("creating the auctions through the admin API")?;
    let workload = Arc::new(Workload::new(ids, shape.pick, shape.win_ratio)?);
    let schedule = Schedule {
        rate_per_s: shape.rate_per_s,
        count_max: shape.count_max,
        duration: shape.duration,
    };
    let mut phases = Vec::new();

    // Watchers first, so they see every update of the bidding phases.
    let stop_watchers = CancellationToken::new();
    let watch_recorder = Recorder::default();
    let mut watcher_figures = BTreeMap::new();
    let watchers = if shape.watchers > 0 {
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
            watch_recorder.clone(),
            stop_watchers.clone(),
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        tokio::time::sleep(IDLE_SETTLE).await;
        if let (Some(before), Some(after)) =
            (before, node.pid().and_then(|pid| sample_process(Some(pid))))
        {
            let per =
                (after.rss_bytes as f64 - before.rss_bytes as f64) / watchers.subscribed as f64;
            watcher_figures.insert("server_rss_per_idle_watcher_bytes".to_owned(), per);
        }
        watcher_figures.insert("watchers_subscribed".to_owned(), watchers.subscribed as f64);
        Some(watchers)
    } else {
        None
    };

    let mut gavel_update_rate = None;
    let mut echo_done = None;
    if shape.quic_connections > 0 && shape.rounds > 1 && shape.floors.echo && watchers.is_none() {
        let (quic_phase, echo_phase) = interleaved(node, shape, schedule, &workload).await?;
        gavel_update_rate = quic_phase.report.figures.get("accepted_per_s").copied();
        phases.push(quic_phase);
        echo_done = Some(echo_phase);
    } else if shape.quic_connections > 0 {
        let recorder = Recorder::default();
        let lanes = bidders::quic_raw(
            node.quic,
            &node.certs,
            shape.quic_connections,
            Arc::clone(&workload),
            recorder.clone(),
            true,
        )
        .await?;
        let meter = CpuMeter::start(node.pid());
        let started = Instant::now();
        let bar = progress_bar(shape.progress, schedule.planned(), "gavel quic");
        let paced = drive(schedule, lanes, bar).await?;
        let mut figures = BTreeMap::new();
        let accepted = recorder.snapshot().counts.get("accepted");
        let accepted_rate = accepted as f64 / paced.elapsed.as_secs_f64().max(1e-9);
        figures.insert("accepted_per_s".to_owned(), accepted_rate);
        gavel_update_rate = Some(accepted_rate);
        let mut quic_phase = phase(
            "gavel_quic",
            format!(
                "gavel serve: QUIC bidders (lean client, as the echo floor's), {} connections, {} auctions {:?}, win ratio {}",
                shape.quic_connections, shape.auctions, shape.pick, shape.win_ratio
            ),
            &schedule,
            shape.quic_connections,
            &paced,
            &recorder,
            &meter,
            figures,
        );
        if let Some(watchers) = &watchers {
            let window = wait_deliveries(watchers, started).await;
            stop_watchers.cancel();
            let delivered_phase = fanout_phase(
                "gavel_fanout",
                format!(
                    "gavel serve: {} WebSocket watchers of pattern {pattern}, interval {} ms",
                    watchers.subscribed, shape.watch_interval_ms
                ),
                &schedule,
                watchers,
                &watch_recorder,
                &meter,
                &paced,
                window,
                accepted,
                watcher_figures.clone(),
            )
            .await;
            quic_phase.report.figures.insert(
                "delivered_per_s".to_owned(),
                delivered_phase
                    .report
                    .figures
                    .get("delivered_per_s")
                    .copied()
                    .unwrap_or(0.0),
            );
            phases.push(quic_phase);
            phases.push(delivered_phase);
        } else {
            phases.push(quic_phase);
        }
    }

    if shape.ws_connections > 0 {
        let recorder = Recorder::default();
        let lanes = bidders::websocket(
            node,
            shape.ws_connections,
            Arc::clone(&workload),
            recorder.clone(),
        )
        .await?;
        let what = format!(
            "gavel serve: WebSocket bidders ({}), {} connections, {} auctions {:?}, win ratio {}",
            ws::GAVEL_PROTO,
            shape.ws_connections,
            shape.auctions,
            shape.pick,
            shape.win_ratio
        );
        let bidding = Bidding {
            name: "gavel_ws",
            what,
            connections: shape.ws_connections,
            server_pid: node.pid(),
        };
        phases.push(bidding.run(shape, schedule, lanes, &recorder).await?);
    }
    stop_watchers.cancel();

    if shape.sdk && shape.quic_connections > 0 {
        let recorder = Recorder::default();
        let lanes = bidders::sdk(
            node,
            shape.quic_connections,
            Arc::clone(&workload),
            recorder.clone(),
        )
        .await?;
        let what = format!(
            "gavel serve: QUIC bidders through the SDK (gavel-client), {} connections",
            shape.quic_connections
        );
        let bidding = Bidding {
            name: "gavel_sdk",
            what,
            connections: shape.quic_connections,
            server_pid: node.pid(),
        };
        phases.push(bidding.run(shape, schedule, lanes, &recorder).await?);
    }

    if let Some(echo_phase) = echo_done {
        phases.push(echo_phase);
    } else if shape.floors.echo && shape.quic_connections > 0 {
        let echo_server = start_echo(node)?;
        let recorder = Recorder::default();
        let lanes = bidders::quic_raw(
            echo_server.addr("quic=")?,
            &node.certs,
            shape.quic_connections,
            Arc::clone(&workload),
            recorder.clone(),
            false,
        )
        .await?;
        let what = format!(
            "bare quinn mTLS echo (node's TLS and QUIC settings, same frames), {} connections",
            shape.quic_connections
        );
        let bidding = Bidding {
            name: "echo_floor",
            what,
            connections: shape.quic_connections,
            server_pid: Some(echo_server.pid()),
        };
        phases.push(bidding.run(shape, schedule, lanes, &recorder).await?);
    }

    if let (true, Some(rate)) = (shape.floors.fsync, gavel_update_rate) {
        let dir = tempfile::tempdir().context("a directory for the raw log")?;
        let fsync_schedule = Schedule {
            rate_per_s: rate.max(1.0),
            ..schedule
        };
        let recorder = Recorder::default();
        let (lane, due) = mpsc::channel(LANE_QUEUE_MAX);
        let writer = {
            let recorder = recorder.clone();
            let path = dir.path().to_owned();
            std::thread::spawn(move || fsync::run(&path, fsync::RECORD_BYTES, due, &recorder))
        };
        let meter = CpuMeter::start(None);
        let bar = progress_bar(shape.progress, fsync_schedule.planned(), "fsync floor");
        let paced = drive(
            fsync_schedule,
            Lanes {
                lanes: vec![lane],
                tasks: vec![],
            },
            bar,
        )
        .await?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the raw log writer panicked"))??;
        phases.push(phase(
            "fsync_floor",
            format!(
                "raw append + fdatasync of {}-byte records at the node's accepted rate, in {}",
                fsync::RECORD_BYTES,
                std::env::temp_dir().display()
            ),
            &fsync_schedule,
            1,
            &paced,
            &recorder,
            &meter,
            BTreeMap::new(),
        ));
    }

    if let (true, Some(rate), Some(watchers)) = (shape.floors.nats, gavel_update_rate, &watchers) {
        phases.push(nats_phase(node, shape, &schedule, rate, watchers.subscribed).await?);
    }
    Ok(Outcome {
        ratios: ratios(&phases),
        phases,
    })
}

/// The node's QUIC phase and the echo floor in alternating rounds of `duration / rounds`:
/// node, echo, node, echo, …; each side's rounds merged into one phase.
async fn interleaved(
    node: &Node,
    shape: &Shape,
    schedule: Schedule,
    workload: &Arc<Workload>,
) -> Result<(Phase, Phase)> {
    let echo_server = start_echo(node)?;
    let echo_addr = echo_server.addr("quic=")?;
    let rounds = shape.rounds;
    let round = Schedule {
        duration: schedule.duration / rounds,
        count_max: (schedule.count_max / u64::from(rounds)).max(1),
        ..schedule
    };
    let sides = [
        ("gavel_quic", node.quic, node.pid(), true),
        ("echo_floor", echo_addr, Some(echo_server.pid()), false),
    ];
    let recorders = [Recorder::default(), Recorder::default()];
    let mut cpu = [CpuUse::default(), CpuUse::default()];
    let mut sent = [0_u64; 2];
    let mut elapsed = [Duration::ZERO; 2];
    for r in 0..rounds {
        for (i, (name, addr, pid, durable)) in sides.iter().enumerate() {
            let lanes = bidders::quic_raw(
                *addr,
                &node.certs,
                shape.quic_connections,
                Arc::clone(workload),
                recorders[i].clone(),
                *durable,
            )
            .await?;
            let meter = CpuMeter::start(*pid);
            let bar = progress_bar(
                shape.progress,
                round.planned(),
                &format!("{name} {}/{rounds}", r + 1),
            );
            let paced = drive(round, lanes, bar).await?;
            cpu[i].add(meter.finish());
            sent[i] += paced.sent;
            elapsed[i] += paced.elapsed;
        }
    }
    let mut phases = Vec::with_capacity(2);
    for (i, (name, _, _, _)) in sides.iter().enumerate() {
        let what = if i == 0 {
            format!(
                "gavel serve: QUIC bidders (lean client, as the echo floor's), {} connections, {} auctions {:?}, win ratio {}, {rounds} rounds alternating with the echo",
                shape.quic_connections, shape.auctions, shape.pick, shape.win_ratio
            )
        } else {
            format!(
                "bare quinn mTLS echo (node's TLS and QUIC settings, same frames), {} connections, {rounds} rounds alternating with the node",
                shape.quic_connections
            )
        };
        let paced = Paced {
            sent: sent[i],
            start: Instant::now(),
            elapsed: elapsed[i],
        };
        let mut figures = BTreeMap::new();
        if i == 0 {
            let accepted = recorders[0].snapshot().counts.get("accepted");
            figures.insert(
                "accepted_per_s".to_owned(),
                accepted as f64 / elapsed[0].as_secs_f64().max(1e-9),
            );
        }
        let mut p = phase(
            name,
            what,
            &schedule,
            shape.quic_connections,
            &paced,
            &recorders[i],
            &CpuMeter::start(None),
            figures,
        );
        p.report.planned = round.planned() * u64::from(rounds);
        p.report.cpu = cpu[i];
        phases.push(p);
    }
    let echo_phase = phases.pop().context("two phases")?;
    let quic_phase = phases.pop().context("two phases")?;
    Ok((quic_phase, echo_phase))
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
    let mut figures = BTreeMap::new();
    if let (Some(before), Some(after)) = (before, sample_process(Some(server.child.pid()))) {
        let per = (after.rss_bytes as f64 - before.rss_bytes as f64) / connected.subscribed as f64;
        figures.insert("server_rss_per_idle_watcher_bytes".to_owned(), per);
    }
    figures.insert(
        "watchers_subscribed".to_owned(),
        connected.subscribed as f64,
    );
    let nats_schedule = Schedule {
        rate_per_s: rate.max(1.0),
        ..*schedule
    };
    let (lane, due) = mpsc::channel(LANE_QUEUE_MAX);
    let publisher = tokio::spawn(nats::publish(server.client, subject, due, recorder.clone()));
    let meter = CpuMeter::start(Some(server.child.pid()));
    let started = Instant::now();
    let bar = progress_bar(shape.progress, nats_schedule.planned(), "nats publish");
    let paced = drive(
        nats_schedule,
        Lanes {
            lanes: vec![lane],
            tasks: vec![],
        },
        bar,
    )
    .await?;
    publisher.await.context("the nats publisher")??;
    let window = wait_deliveries(&connected, started).await;
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
        &meter,
        &paced,
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
    let tag = crate::stats::unix_us() / 1_000_000;
    let ids: Vec<u64> = (1..=shape.auctions as u64)
        .map(|i| tag * 100_000 + 50_000 + i)
        .collect();
    node.create_auctions(
        &ids,
        |id| format!("load.r{tag}.s{id}"),
        shape.duration * 2 * search.steps_max as u32 + Duration::from_secs(600),
    )
    .await?;
    let workload = Arc::new(Workload::new(ids, shape.pick, shape.win_ratio)?);
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
        let mut good: Option<f64> = None;
        let mut bad: Option<f64> = None;
        let mut rate = search.start_rate_per_s;
        for _ in 0..search.steps_max {
            let schedule = Schedule {
                rate_per_s: rate,
                count_max: shape.count_max,
                duration: shape.duration,
            };
            let recorder = Recorder::default();
            let lanes = if system == "gavel_quic" {
                bidders::quic_raw(
                    node.quic,
                    &node.certs,
                    shape.quic_connections,
                    Arc::clone(&workload),
                    recorder.clone(),
                    true,
                )
                .await?
            } else {
                let server = echo_server.as_ref().context("the echo server")?;
                bidders::quic_raw(
                    server.addr("quic=")?,
                    &node.certs,
                    shape.quic_connections,
                    Arc::clone(&workload),
                    recorder.clone(),
                    false,
                )
                .await?
            };
            let bar = progress_bar(
                shape.progress,
                schedule.planned(),
                &format!("{system} {rate:.0}/s"),
            );
            let paced = drive(schedule, lanes, bar).await?;
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
            let ok = p99 <= u64::try_from(search.p99_bound.as_micros()).unwrap_or(u64::MAX)
                && errors == 0
                && answered == paced.sent
                && achieved >= 0.95 * rate;
            steps.push(SearchStep {
                system: system.to_owned(),
                rate_per_s: rate,
                achieved_rate_per_s: achieved,
                p99_us: p99,
                errors,
                ok,
            });
            if ok {
                good = Some(good.map_or(rate, |g: f64| g.max(rate)));
            } else {
                bad = Some(bad.map_or(rate, |b: f64| b.min(rate)));
            }
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
        best.insert(system.to_owned(), good.unwrap_or(0.0));
    }
    Ok((steps, best))
}

/// The run's output directory default: `bench-results/` in the working directory.
pub fn default_out_dir() -> PathBuf {
    PathBuf::from("bench-results")
}
