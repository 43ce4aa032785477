//! One bidding phase's set-up, shared by every phase that bids: [`Bidding`] (which client,
//! how many connections, whose CPU) connects, sends a [`Schedule`] through the pacer
//! ([`drive`]) and reports a [`Phase`] ([`phase`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::{Run, Shape};
use crate::bidders::{self, Lanes};
use crate::pace::{self, Lane, OwnPace, Paced, Schedule};
use crate::report::{Phase, PhaseReport};
use crate::stats::{CpuMeter, Recorder};
use crate::target::Node;
use crate::ws;

/// Longest wait for all lanes to finish after the pacer stopped.
const LANES_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn progress_bar(show: bool, len: u64, prefix: &str) -> ProgressBar {
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

/// Hands the schedule to `lanes` (through the pacer thread, or as shares to lanes that pace
/// themselves) and waits until every lane finished.
pub(super) async fn drive(schedule: Schedule, lanes: Lanes, bar: ProgressBar) -> Result<Paced> {
    let Lanes {
        lanes,
        own_paced,
        tasks,
    } = lanes;
    if !own_paced.is_empty() {
        return drive_own_paced(schedule, own_paced, tasks, bar).await;
    }
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

/// [`drive`] for lanes that pace themselves: each gets its share, then the progress bar
/// follows their common count until they all finished.
async fn drive_own_paced(
    schedule: Schedule,
    lanes: Vec<tokio::sync::oneshot::Sender<OwnPace>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    bar: ProgressBar,
) -> Result<Paced> {
    let (shares, progress) = OwnPace::split(schedule, lanes.len());
    for (lane, share) in lanes.into_iter().zip(shares) {
        // A lane whose connection already failed sends nothing; its share counts as unsent.
        let _ = lane.send(share);
    }
    let deadline = tokio::time::Instant::now() + schedule.duration + LANES_TIMEOUT;
    let mut all = std::pin::pin!(futures_util::future::join_all(tasks));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tick.tick() => bar.set_position(progress.sent()),
            () = tokio::time::sleep_until(deadline) => {
                bail!("the connections did not finish within {LANES_TIMEOUT:?} after the last bid")
            }
        }
    }
    bar.finish_and_clear();
    Ok(progress.paced())
}

/// A phase report with the counts and histograms of `recorder`.
#[allow(clippy::too_many_arguments)]
pub(super) fn phase(
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
pub(super) struct Bidding {
    pub(super) name: &'static str,
    pub(super) what: String,
    client: Client,
    pub(super) connections: usize,
    server_pid: Option<u32>,
}

/// What sending a bidding phase's bids left for its report.
pub(super) struct Driven {
    pub(super) paced: Paced,
    pub(super) meter: CpuMeter,
    /// When the CPU meter started, just before the first bid was due.
    pub(super) started: Instant,
}

impl Bidding {
    /// Opens the phase's connections, recording into `recorder`.
    pub(super) async fn connect(&self, run: &Run<'_>, recorder: &Recorder) -> Result<Lanes> {
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
    pub(super) async fn drive(
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
    pub(super) fn report(
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
    pub(super) async fn run(self, run: &Run<'_>) -> Result<Phase> {
        let recorder = Recorder::default();
        let driven = self.drive(run, run.schedule, &recorder, self.name).await?;
        Ok(self.report(&run.schedule, &driven, &recorder, BTreeMap::new()))
    }
}

/// The node's QUIC bidders (the lean client, as the echo floor's).
pub(super) fn quic_bidding(node: &Node, shape: &Shape, what_more: &str) -> Bidding {
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
pub(super) fn echo_bidding(shape: &Shape, addr: SocketAddr, pid: u32, what_more: &str) -> Bidding {
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
pub(super) fn ws_bidding(node: &Node, shape: &Shape) -> Bidding {
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
pub(super) fn sdk_bidding(node: &Node, shape: &Shape) -> Bidding {
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

/// Lanes of one queue and no tasks (the caller consumes it).
pub(super) fn one_lane(lane: Lane) -> Lanes {
    Lanes {
        lanes: vec![lane],
        ..Lanes::default()
    }
}
