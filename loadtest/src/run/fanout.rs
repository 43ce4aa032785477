//! Fan-out phases: the node's watchers ([`Watching`]), connected before the bidding and
//! reported after it, the nats-server peer with as many watchers ([`nats_phase`]) and the
//! burst floor ([`burst_phase`]); each measures idle memory per watcher, delivery latency
//! and staleness.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::apart::{Apart, WatchReport};
use super::bidding::{Driven, drive, one_lane, phase, progress_bar};
use super::{Run, Shape};
use crate::burst::BurstServer;
use crate::pace::{LANE_QUEUE_MAX, Paced, Schedule};
use crate::report::Phase;
use crate::staleness::{Decisions, Held, Staleness, measure};
use crate::stats::{CpuMeter, Latency, ProcessSample, Recorder, sample_process, unix_us};
use crate::target::Node;
use crate::{nats, ws};

/// How long watchers wait, after the bidding stopped, for deliveries to stop coming.
const DELIVERY_QUIET: Duration = Duration::from_millis(500);

/// Longest wait for the last deliveries after the bidding stopped.
const DELIVERY_TAIL_MAX: Duration = Duration::from_secs(10);

/// Longest wait for the sampled watchers' logs once they were told to stop.
pub(super) const LOGS_WAIT: Duration = Duration::from_secs(5);

/// Settling time after the watchers connected, before their memory is measured.
const IDLE_SETTLE: Duration = Duration::from_secs(1);

/// The node's watchers, connected before the bidding so they see every update of it.
pub(super) struct Watching {
    source: Source,
    recorder: Recorder,
    pub(super) stop: CancellationToken,
    /// The topic pattern they watch.
    pattern: String,
    /// Their count and the node's idle memory per watcher.
    figures: BTreeMap<String, f64>,
}

/// Where the watchers run.
enum Source {
    /// In this process, beside the bidders.
    Here(ws::Watchers),
    /// In a process of their own (`--watchers-process`).
    Apart(Mutex<Apart>),
}

impl Watching {
    /// Connects `shape.watchers` watchers of `pattern` (in a process of their own with
    /// `shape.watchers_process`) and measures the node's memory per idle watcher.
    pub(super) async fn connect(node: &Node, shape: &Shape, pattern: String) -> Result<Watching> {
        let recorder = Recorder::default();
        let stop = CancellationToken::new();
        let feed = ws::Feed::Gavel {
            pattern: pattern.clone(),
            interval_ms: shape.watch_interval_ms,
        };
        let (source, figures) = if shape.watchers_process {
            let before = node.pid().and_then(|pid| sample_process(Some(pid)));
            let apart = Apart::start(
                node,
                None,
                &pattern,
                shape.watchers,
                shape.watch_interval_ms,
            )?;
            tokio::time::sleep(IDLE_SETTLE).await;
            let after = node.pid().and_then(|pid| sample_process(Some(pid)));
            let figures = idle_watcher_figures(before, after, apart.subscribed);
            (Source::Apart(Mutex::new(apart)), figures)
        } else {
            let set = WatcherSet {
                node,
                addr: node.https,
                path: "/v1/ws",
                feed,
                count: shape.watchers,
                server_pid: node.pid(),
                label: "gavel watchers",
            };
            let (watchers, figures) = set.connect(shape.progress, &recorder, &stop).await?;
            (Source::Here(watchers), figures)
        };
        Ok(Watching {
            source,
            recorder,
            stop,
            pattern,
            figures,
        })
    }

    /// Watchers subscribed.
    pub(super) fn subscribed(&self) -> usize {
        match &self.source {
            Source::Here(watchers) => watchers.subscribed,
            Source::Apart(apart) => lock(apart).subscribed,
        }
    }

    /// Tells watchers in a process of their own that the bidding starts.
    pub(super) fn begin(&self) -> Result<()> {
        match &self.source {
            Source::Here(_) => Ok(()),
            Source::Apart(apart) => lock(apart).begin(),
        }
    }

    /// After the bidding that `driven` describes: waits for the last deliveries of its
    /// `published` updates, stops the watchers and reports their phase, with their
    /// staleness against the node's log when this process started the node.
    pub(super) async fn finish(
        &self,
        run: &Run<'_>,
        driven: &Driven,
        published: u64,
    ) -> Result<Phase> {
        let from_us = unix_us().saturating_sub(driven.started.elapsed().as_micros() as u64);
        let mut figures = self.figures.clone();
        let (window, logs, (subscribed, delivered)) = self
            .source
            .collect(&self.stop, driven.started, &self.recorder, &mut figures)
            .await?;
        let staleness = match run.node.wal_dir() {
            Some(wal_dir) => {
                let ids: HashSet<u64> = run.workload.ids().iter().copied().collect();
                match Decisions::from_wal(&wal_dir, |id| ids.contains(&id)) {
                    Ok(decisions) => Some(measure(&decisions, &logs, from_us)),
                    Err(e) => {
                        eprintln!("no staleness figures: {e:#}");
                        None
                    }
                }
            }
            None => None,
        };
        if let Some(staleness) = &staleness {
            figures.extend(staleness_figures(staleness, logs.len(), subscribed, window));
        }
        Ok(fanout_phase(
            "gavel_fanout",
            format!(
                "gavel serve: {subscribed} WebSocket watchers of pattern {}, interval {} ms{}",
                self.pattern,
                run.shape.watch_interval_ms,
                if run.shape.watchers_process {
                    ", in a process of their own"
                } else {
                    ""
                }
            ),
            &run.schedule,
            (subscribed, delivered),
            &self.recorder,
            &driven.meter,
            &driven.paced,
            window,
            published,
            figures,
        ))
    }
}

impl Source {
    /// After the rounds or bids that began at `started`: waits for the last deliveries,
    /// stops the watchers (`stop`, here) and returns the delivery window, the sampled logs
    /// and `(subscribed, delivered)`; counts go to `recorder`, and the figures of watchers
    /// in a process of their own to `figures`.
    async fn collect(
        &self,
        stop: &CancellationToken,
        started: Instant,
        recorder: &Recorder,
        figures: &mut BTreeMap<String, f64>,
    ) -> Result<(Duration, Vec<Vec<Held>>, (usize, u64))> {
        match self {
            Source::Here(watchers) => {
                let window = wait_deliveries(watchers, started).await;
                stop.cancel();
                let logs = watchers.sampled_logs(LOGS_WAIT).await;
                Ok((window, logs, settled_count(watchers).await))
            }
            Source::Apart(apart) => {
                let report = lock(apart).finish()?;
                for (kind, n) in &report.counts {
                    recorder.count(kind, *n);
                }
                figures.extend(apart_figures(&report));
                let window = Duration::from_micros(report.window_us);
                Ok((window, report.logs, (report.subscribed, report.delivered)))
            }
        }
    }
}

fn lock(apart: &Mutex<Apart>) -> std::sync::MutexGuard<'_, Apart> {
    apart.lock().unwrap_or_else(|p| p.into_inner())
}

/// The figures of watchers that ran in a process of their own: its CPU over the bidding
/// and their delivery latency.
fn apart_figures(report: &WatchReport) -> BTreeMap<String, f64> {
    let ms = |us: u64| us as f64 / 1_000.0;
    BTreeMap::from([
        ("watchers_process_cpu_s".to_owned(), report.cpu_s),
        ("delivery_p50_ms".to_owned(), ms(report.delivery.p50_us)),
        ("delivery_p99_ms".to_owned(), ms(report.delivery.p99_us)),
        ("delivery_max_ms".to_owned(), ms(report.delivery.max_us)),
    ])
}

/// The staleness figures of a phase (see [`crate::staleness`]): percentiles over the
/// sampled watchers' (watcher, change) pairs, the share never held, and fresh changes per
/// second scaled from `logs` sampled watchers to all of them over `window`.
fn staleness_figures(
    staleness: &Staleness,
    logs: usize,
    subscribed: usize,
    window: Duration,
) -> BTreeMap<String, f64> {
    let mut figures = percentile_figures("staleness", &staleness.latency);
    let pairs = staleness.pairs.max(1) as f64;
    figures.insert("staleness_sampled_watchers".to_owned(), logs as f64);
    figures.insert(
        "changes_never_held_fraction".to_owned(),
        staleness.never_held as f64 / pairs,
    );
    figures.insert(
        "fresh_pairs_fraction".to_owned(),
        staleness.fresh as f64 / pairs,
    );
    let scale = subscribed as f64 / logs.max(1) as f64;
    figures.insert(
        "fresh_changes_per_s".to_owned(),
        staleness.fresh as f64 * scale / window.as_secs_f64().max(1e-9),
    );
    figures
}

/// Watchers to connect: `count` of them, to `addr` `path` (TLS with the node's trust), on
/// `feed`; the server's process is `server_pid`.
struct WatcherSet<'a> {
    node: &'a Node,
    addr: SocketAddr,
    path: &'static str,
    feed: ws::Feed,
    count: usize,
    server_pid: Option<u32>,
    /// The progress bar's label.
    label: &'static str,
}

impl WatcherSet<'_> {
    /// Connects the watchers (recording into `recorder` until `stop`) and lets them settle
    /// idle; returns them with their figures (see [`idle_watcher_figures`]).
    async fn connect(
        self,
        progress: bool,
        recorder: &Recorder,
        stop: &CancellationToken,
    ) -> Result<(ws::Watchers, BTreeMap<String, f64>)> {
        let before = self.server_pid.and_then(|pid| sample_process(Some(pid)));
        let bar = progress_bar(progress, self.count as u64, self.label);
        let watchers = ws::watch(
            self.node.https_connector(None)?,
            self.addr,
            self.path,
            self.feed,
            self.count,
            recorder.clone(),
            stop.clone(),
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        tokio::time::sleep(IDLE_SETTLE).await;
        let after = self.server_pid.and_then(|pid| sample_process(Some(pid)));
        let figures = idle_watcher_figures(before, after, watchers.subscribed);
        Ok((watchers, figures))
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

/// Waits until deliveries stop (no new one for [`DELIVERY_QUIET`], at most
/// [`DELIVERY_TAIL_MAX`]); returns the time from `started` to the last delivery seen.
pub(super) async fn wait_deliveries(watchers: &ws::Watchers, started: Instant) -> Duration {
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

/// `(subscribed, delivered)` of `watchers`, once their tasks added their final counts.
async fn settled_count(watchers: &ws::Watchers) -> (usize, u64) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Ordering: a progress counter only.
    (
        watchers.subscribed,
        watchers.delivered.load(Ordering::Relaxed),
    )
}

/// The watchers' phase: `(subscribed, delivered)`, the deliveries' latency, and deliveries
/// per second over `window`.
#[allow(clippy::too_many_arguments)]
fn fanout_phase(
    name: &str,
    what: String,
    schedule: &Schedule,
    (subscribed, delivered): (usize, u64),
    recorder: &Recorder,
    meter: &CpuMeter,
    paced: &Paced,
    window: Duration,
    published: u64,
    mut figures: BTreeMap<String, f64>,
) -> Phase {
    let expected = published * subscribed as u64;
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
        name, what, schedule, subscribed, paced, recorder, meter, figures,
    )
}

/// nats-server with `watchers` WebSocket watchers of one subject, publishes at `rate`.
pub(super) async fn nats_phase(
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
    let subject = "load.nats.a1".to_owned();
    let set = WatcherSet {
        node,
        addr: server.websocket,
        path: "/",
        feed: ws::Feed::Nats {
            subject: subject.clone(),
        },
        count: watchers,
        server_pid: Some(server.child.pid()),
        label: "nats watchers",
    };
    let (connected, figures) = set.connect(shape.progress, &recorder, &stop).await?;
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
    let from_us = unix_us();
    let (driven, window, stamps) = publishing.run(shape.progress).await?;
    stop.cancel();
    let published = recorder.snapshot().counts.get("published");
    let logs = connected.sampled_logs(LOGS_WAIT).await;
    let mut decisions = Decisions::default();
    for (seq, stamp) in stamps {
        decisions.add(1, seq, stamp);
    }
    decisions.sort();
    let mut figures = figures;
    figures.extend(staleness_figures(
        &measure(&decisions, &logs, from_us),
        logs.len(),
        connected.subscribed,
        window,
    ));
    let phase = fanout_phase(
        "nats_fanout",
        format!(
            "nats-server {}: {} WebSocket watchers (TLS) of one subject, publishing at the node's update rate",
            server_version(&binary),
            connected.subscribed
        ),
        &nats_schedule,
        settled_count(&connected).await,
        &recorder,
        &driven.meter,
        &driven.paced,
        window,
        published,
        figures,
    );
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
    /// watchers' last deliveries; returns what was sent, the delivery window and each
    /// publish's `(seq, stamp)`.
    async fn run(self, progress: bool) -> Result<(Driven, Duration, Vec<(u64, u64)>)> {
        let (lane, due) = mpsc::channel(LANE_QUEUE_MAX);
        let publish = nats::publish(self.server.client, self.subject, due, self.recorder.clone());
        let publisher = tokio::spawn(publish);
        let meter = CpuMeter::start(Some(self.server.child.pid()));
        let started = Instant::now();
        let bar = progress_bar(progress, self.schedule.planned(), "nats publish");
        let paced = drive(self.schedule, one_lane(lane), bar).await?;
        let stamps = publisher.await.context("the nats publisher")??;
        let window = wait_deliveries(self.watchers, started).await;
        let driven = Driven {
            paced,
            meter,
            started,
        };
        Ok((driven, window, stamps))
    }
}

fn server_version(binary: &std::path::Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Rounds per second of the burst floor: far enough apart that one round is done before
/// the next starts, at any watcher count the tester holds.
const BURST_ROUNDS_PER_S: f64 = 5.0;
/// Most rounds of the burst floor.
const BURST_ROUNDS_MAX: u64 = 100;

/// The burst floor with as many watchers as the node's phase: rounds of one message to
/// every watcher ([`crate::burst`]); each round's time to reach all of them, and the same
/// staleness figures as the node's phase.
pub(super) async fn burst_phase(
    node: &Node,
    shape: &Shape,
    schedule: &Schedule,
    watchers: usize,
) -> Result<Phase> {
    let recorder = Recorder::default();
    let server = BurstServer::start(&node.certs, recorder.clone()).await?;
    let stop = CancellationToken::new();
    let (source, mut figures) = if shape.watchers_process {
        let apart = Apart::start(node, Some(server.addr), "", watchers, 0)?;
        let figures = idle_watcher_figures(None, None, apart.subscribed);
        (Source::Apart(Mutex::new(apart)), figures)
    } else {
        let set = WatcherSet {
            node,
            addr: server.addr,
            path: "/",
            feed: ws::Feed::Burst,
            count: watchers,
            server_pid: None,
            label: "burst watchers",
        };
        let (connected, figures) = set.connect(shape.progress, &recorder, &stop).await?;
        (Source::Here(connected), figures)
    };
    let rounds = Schedule {
        rate_per_s: BURST_ROUNDS_PER_S,
        count_max: BURST_ROUNDS_MAX,
        ..*schedule
    };
    let from_us = unix_us();
    let (lane, due) = mpsc::channel(LANE_QUEUE_MAX);
    // The server runs in this process (beside the watchers, unless they run apart).
    let meter = CpuMeter::start(Some(std::process::id()));
    if let Source::Apart(apart) = &source {
        lock(apart).begin()?;
    }
    let started = Instant::now();
    let bar = progress_bar(shape.progress, rounds.planned(), "burst rounds");
    let (paced, stamps) = tokio::join!(
        drive(rounds, one_lane(lane), bar),
        server.send_rounds(due, &recorder)
    );
    let paced = paced?;
    let (window, logs, counted) = source
        .collect(&stop, started, &recorder, &mut figures)
        .await?;
    figures.extend(reach_all_figures(&stamps, &logs));
    let mut decisions = Decisions::default();
    for &(seq, stamp) in &stamps {
        decisions.add(1, seq, stamp);
    }
    decisions.sort();
    let staleness = measure(&decisions, &logs, from_us);
    figures.extend(staleness_figures(&staleness, logs.len(), counted.0, window));
    Ok(fanout_phase(
        "burst_floor",
        format!(
            "burst floor: one message to each of {} TLS WebSocket watchers per round, tokio-rustls + tungstenite, no engine{}",
            counted.0,
            if shape.watchers_process {
                " (watchers in a process of their own)"
            } else {
                ""
            }
        ),
        &rounds,
        counted,
        &recorder,
        &meter,
        &paced,
        window,
        stamps.len() as u64,
        figures,
    ))
}

/// Per round, the time from its start until the last of the watchers (`logs`, one per
/// watcher) held it: p50/p99/max over the rounds, and the rounds some watcher never got.
fn reach_all_figures(stamps: &[(u64, u64)], logs: &[Vec<Held>]) -> BTreeMap<String, f64> {
    let mut last_arrival: HashMap<u64, (u64, usize)> = HashMap::new();
    for log in logs {
        for held in log {
            let entry = last_arrival.entry(held.seq).or_insert((0, 0));
            entry.0 = entry.0.max(held.at_us);
            entry.1 += 1;
        }
    }
    let mut reach_all = Latency::default();
    let mut incomplete = 0_u64;
    for (seq, stamp) in stamps {
        match last_arrival.get(seq) {
            Some(&(last, got)) if got == logs.len() => {
                reach_all.record_us(last.saturating_sub(*stamp))
            }
            _ => incomplete += 1,
        }
    }
    let mut figures = percentile_figures("round_reach_all", &reach_all);
    figures.insert("rounds".to_owned(), stamps.len() as f64);
    figures.insert("rounds_incomplete".to_owned(), incomplete as f64);
    figures
}

/// `<name>_p50_ms`, `_p99_ms` and `_max_ms` of `latency` (µs), when it has values.
fn percentile_figures(name: &str, latency: &Latency) -> BTreeMap<String, f64> {
    let mut figures = BTreeMap::new();
    if latency.count() > 0 {
        let h = latency.histogram();
        let ms = |us: u64| us as f64 / 1_000.0;
        figures.insert(format!("{name}_p50_ms"), ms(h.value_at_quantile(0.5)));
        figures.insert(format!("{name}_p99_ms"), ms(h.value_at_quantile(0.99)));
        figures.insert(format!("{name}_max_ms"), ms(h.max()));
    }
    figures
}
