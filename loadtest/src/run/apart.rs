//! Watchers in a process of their own (`run --watchers-process`, issue 17): the run starts
//! this binary again as `gavel-loadtest watch`, which holds the watchers, so the bidders'
//! latency is measured in a process where no watcher task competes for the runtime.
//!
//! The two talk in lines: the child prints `subscribed N` once its watchers are subscribed;
//! the parent sends `begin` when the bidding starts and `finish` when it ended; the child
//! then waits for the last deliveries, stops its watchers and prints one JSON line, a
//! [`WatchReport`] (what it counted, its CPU over the bidding, the sampled watchers' logs
//! for the parent's staleness figures), and exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::bidding::progress_bar;
use super::fanout::{LOGS_WAIT, wait_deliveries};
use crate::staleness::Held;
use crate::stats::{LatencySummary, Recorder, sample_process};
use crate::target::Node;
use crate::ws;

/// What the watchers' process reports at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WatchReport {
    /// Watchers connected and subscribed.
    pub subscribed: usize,
    /// Updates delivered over all watchers.
    pub delivered: u64,
    /// From `begin` to the last delivery, µs.
    pub window_us: u64,
    /// The child's own CPU seconds from `begin` to the end of its deliveries.
    pub cpu_s: f64,
    /// Its counts (`delivered`, `skipped_seq`, `watcher_closed_<code>`, …).
    pub counts: BTreeMap<String, u64>,
    /// Delivery latency (now − `accepted_at_us`).
    pub delivery: LatencySummary,
    /// The sampled watchers' logs.
    pub logs: Vec<Vec<Held>>,
}

/// The parent's side: the child process and its pipes.
pub(super) struct Apart {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Watchers the child subscribed.
    pub(super) subscribed: usize,
}

impl Apart {
    /// Starts `gavel-loadtest watch` with `count` watchers of `pattern` at `interval_ms`
    /// on `node` (or, with `burst`, of the burst floor there, trusting `node`'s
    /// certificates), and waits until they are subscribed.
    pub(super) fn start(
        node: &Node,
        burst: Option<SocketAddr>,
        pattern: &str,
        count: usize,
        interval_ms: u32,
    ) -> Result<Apart> {
        let exe = std::env::current_exe().context("this binary's path")?;
        let mut command = Command::new(exe);
        command
            .arg("watch")
            .arg(format!("--https={}", burst.unwrap_or(node.https)))
            .arg("--certs")
            .arg(&node.certs)
            .arg(format!("--pattern={pattern}"))
            .arg(format!("--watchers={count}"))
            .arg(format!("--interval-ms={interval_ms}"));
        if burst.is_some() {
            command.arg("--burst");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the watchers' process")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the watchers' process has no pipes");
        };
        let mut apart = Apart {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            subscribed: 0,
        };
        let line = apart.read_line()?;
        apart.subscribed = line
            .strip_prefix("subscribed ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("the watchers' process said {line:?}"))?;
        Ok(apart)
    }

    /// Tells the child that the bidding starts.
    pub(super) fn begin(&mut self) -> Result<()> {
        writeln!(self.stdin, "begin").context("telling the watchers' process to begin")
    }

    /// Tells the child that the bidding ended and reads its report.
    pub(super) fn finish(&mut self) -> Result<WatchReport> {
        writeln!(self.stdin, "finish").context("telling the watchers' process to finish")?;
        let line = self.read_line()?;
        serde_json::from_str(&line).context("the watchers' process report")
    }

    /// The child's next line. It answers within its own bounds (connecting, the last
    /// deliveries, the logs), or ends.
    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let read = tokio::task::block_in_place(|| self.stdout.read_line(&mut line))
            .context("reading from the watchers' process")?;
        if read == 0 {
            bail!("the watchers' process ended early (see its errors above)");
        }
        Ok(line)
    }
}

impl Drop for Apart {
    fn drop(&mut self) {
        // It exits after its report; a run that failed before then ends it here.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What the child's watchers watch: the node at `https` (its dev certificates in
/// `certs`), `pattern` at `interval_ms`, or with `burst` the burst floor at `https`.
pub struct WatchTarget {
    /// The HTTPS address.
    pub https: SocketAddr,
    /// The node's dev certificate directory.
    pub certs: PathBuf,
    /// Allow a non-loopback address.
    pub allow_remote: bool,
    /// The burst floor rather than a node.
    pub burst: bool,
    /// The pattern subscribed to.
    pub pattern: String,
    /// The subscription's interval.
    pub interval_ms: u32,
}

/// The child's side (`gavel-loadtest watch`): holds `count` watchers of `target` and
/// answers the parent (see the module docs).
pub async fn serve_watchers(target: WatchTarget, count: usize) -> Result<()> {
    let https = target.https;
    let node = Node::existing(https, https, target.certs, target.allow_remote)?;
    let recorder = Recorder::default();
    let stop = CancellationToken::new();
    let (path, feed) = if target.burst {
        ("/", ws::Feed::Burst)
    } else {
        let feed = ws::Feed::Gavel {
            pattern: target.pattern,
            interval_ms: target.interval_ms,
        };
        ("/v1/ws", feed)
    };
    let watchers = ws::watch(
        node.https_connector(None)?,
        https,
        path,
        feed,
        count,
        recorder.clone(),
        stop.clone(),
        &progress_bar(false, 0, ""),
    )
    .await?;
    // The parent's lines, read on a thread of their own (a blocking read on a runtime
    // thread would take it from the watchers).
    let (said, mut hear) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if said.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    println!("subscribed {}", watchers.subscribed);
    std::io::stdout().flush()?;
    // The parent gone (end of input) or saying anything else: the watchers end.
    if hear.recv().await.as_deref() != Some("begin") {
        return Ok(());
    }
    let started = Instant::now();
    let cpu_before = sample_process(None).map_or(0.0, |s| s.cpu_s);
    if hear.recv().await.as_deref() != Some("finish") {
        return Ok(());
    }
    let window = wait_deliveries(&watchers, started).await;
    let cpu_s = sample_process(None).map_or(0.0, |s| s.cpu_s) - cpu_before;
    stop.cancel();
    let logs = watchers.sampled_logs(LOGS_WAIT).await;
    let recorded = recorder.snapshot();
    let report = WatchReport {
        subscribed: watchers.subscribed,
        delivered: watchers
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed),
        window_us: u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
        cpu_s,
        counts: recorded.counts.0,
        delivery: recorded
            .latencies
            .get("delivery")
            .map(|l| l.summary())
            .unwrap_or_default(),
        logs,
    };
    println!("{}", serde_json::to_string(&report)?);
    std::io::stdout().flush()?;
    Ok(())
}
