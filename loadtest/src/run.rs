//! The phases of a run, in order: auctions created; watchers connected (the node's idle
//! memory per watcher measured); QUIC bidders at the fixed rate while the watchers record
//! deliveries; WebSocket bidders at the same rate; then the baselines with the same shape —
//! the quinn echo (transport floor), raw append + fsync at the node's accepted rate
//! (durability floor), nats-server with as many watchers and the node's update rate
//! (fan-out peer) — and the ratios between them. [`max_rate`] searches the highest rate
//! whose p99 stays under a bound, for the node and the echo.
//!
//! Here: the load [`Shape`], the run's auctions and workload, [`run`] (the order of the
//! phases), the node's QUIC phase and the [`ratios`]. Inside:
//! - `bidding`: the one set-up of every bidding phase (client, connections, CPU meter,
//!   pacer, report);
//! - `fanout`: the node's watchers and the nats-server peer;
//! - `floors`: the echo and fsync baselines, and the node/echo rounds;
//! - `search`: `--max-rate`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::pace::Schedule;
use crate::report::{Phase, PhaseReport, Ratio};
use crate::stats::Recorder;
use crate::target::Node;
use crate::workload::{Pick, Workload};

mod apart;
mod bidding;
mod fanout;
mod floors;
mod search;

pub use apart::{WatchReport, WatchTarget, serve_watchers};
use bidding::{quic_bidding, sdk_bidding, ws_bidding};
use fanout::{Watching, burst_phase, nats_phase};
use floors::{echo_floor, fsync_floor, interleaved};
pub use search::{Search, max_rate};

/// Which baselines run after the node's phases.
#[derive(Clone, Copy, Debug, Default)]
pub struct Floors {
    /// The bare quinn mTLS echo.
    pub echo: bool,
    /// Raw append + fsync.
    pub fsync: bool,
    /// nats-server's WebSocket fan-out.
    pub nats: bool,
    /// The burst floor: one message to every watcher's socket at once ([`crate::burst`]).
    pub burst: bool,
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
    /// Only the SDK phase bids (no raw QUIC phase, no echo floor).
    pub sdk_only: bool,
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
    /// The watchers run in a process of their own (`gavel-loadtest watch`), so the bidders'
    /// latency is not the watchers' runtime's.
    pub watchers_process: bool,
    /// Baselines to run.
    pub floors: Floors,
    /// Show progress bars.
    pub progress: bool,
    /// Write the run's price stream here (`--record-trace`, see [`crate::trace`]).
    pub record_trace: Option<PathBuf>,
}

/// The results of a run: the phases and the ratios between them.
pub struct Outcome {
    /// Every phase, in order.
    pub phases: Vec<Phase>,
    /// Node / baseline ratios.
    pub ratios: Vec<Ratio>,
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

/// Runs every phase of `shape` against `node`.
pub async fn run(node: &Node, shape: &Shape) -> Result<Outcome> {
    let open_for = shape.duration * 4 + Duration::from_secs(600);
    let (run, tag) = Run::prepare(node, shape, 0, 'a', open_for).await?;
    // Watchers first, so they see every update of the bidding phases.
    let trace_stop = CancellationToken::new();
    let trace = match &shape.record_trace {
        Some(path) => {
            let connector = node.https_connector(None)?;
            let pattern = format!("load.r{tag}.>");
            Some(
                crate::trace::record(&connector, node.https, &pattern, path, trace_stop.clone())
                    .await?,
            )
        }
        None => None,
    };
    let watching = if shape.watchers > 0 {
        Some(Watching::connect(node, shape, format!("load.r{tag}.>")).await?)
    } else {
        None
    };
    let mut phases = Vec::new();
    let mut gavel_update_rate = None;
    let mut echo_done = None;
    let raw_quic = shape.quic_connections > 0 && !shape.sdk_only;
    if raw_quic && shape.rounds > 1 && shape.floors.echo && watching.is_none() {
        let (quic_phase, echo_phase) = interleaved(&run).await?;
        gavel_update_rate = quic_phase.report.figures.get("accepted_per_s").copied();
        phases.push(quic_phase);
        echo_done = Some(echo_phase);
    } else if raw_quic {
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
    trace_stop.cancel();
    if let (Some(trace), Some(path)) = (trace, &shape.record_trace) {
        let written = trace.await.context("the trace watcher")??;
        eprintln!(
            "recorded {written} messages of the price stream to {}",
            path.display()
        );
    }
    if shape.sdk && shape.quic_connections > 0 {
        phases.push(sdk_bidding(node, shape).run(&run).await?);
    }
    if let Some(echo_phase) = echo_done {
        phases.push(echo_phase);
    } else if shape.floors.echo && raw_quic {
        phases.push(echo_floor(&run).await?);
    }
    if let (true, Some(rate)) = (shape.floors.fsync, gavel_update_rate) {
        phases.push(fsync_floor(&run, rate).await?);
    }
    if let (true, Some(rate), Some(watching)) = (shape.floors.nats, gavel_update_rate, &watching) {
        let watchers = watching.subscribed();
        phases.push(nats_phase(node, shape, &run.schedule, rate, watchers).await?);
    }
    if let (true, Some(watching)) = (shape.floors.burst, &watching) {
        let watchers = watching.subscribed();
        phases.push(burst_phase(node, shape, &run.schedule, watchers).await?);
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
    if let Some(watching) = watching {
        watching.begin()?;
    }
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
    let delivered_phase = watching.finish(run, &driven, accepted).await?;
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

/// The run's output directory default: `bench-results/` in the working directory.
pub fn default_out_dir() -> PathBuf {
    PathBuf::from("bench-results")
}
