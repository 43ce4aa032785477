//! The node's baselines: the bare quinn echo (transport floor, alone or in rounds
//! alternating with the node) and raw append + fsync (durability floor).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::Run;
use super::bidding::{Bidding, drive, echo_bidding, one_lane, phase, progress_bar, quic_bidding};
use crate::fsync;
use crate::pace::{LANE_QUEUE_MAX, Paced, Schedule};
use crate::report::Phase;
use crate::stats::{CpuMeter, CpuUse, Recorder};
use crate::target::{ChildServer, Node};

/// The echo floor: the node's QUIC bidders on a bare quinn echo.
pub(super) async fn echo_floor(run: &Run<'_>) -> Result<Phase> {
    let echo_server = start_echo(run.node)?;
    let addr = echo_server.addr("quic=")?;
    echo_bidding(run.shape, addr, echo_server.pid(), "")
        .run(run)
        .await
}

/// Starts this executable's echo server on the node's certificates.
pub(super) fn start_echo(node: &Node) -> Result<ChildServer> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let log = std::env::temp_dir().join(format!("gavel-loadtest-echo-{}.log", std::process::id()));
    let mut command = std::process::Command::new(exe);
    command
        .args(["echo-server", "--listen", "127.0.0.1:0", "--certs"])
        .arg(&node.certs);
    ChildServer::start(command, "listening quic=", &log)
}

/// The durability floor: raw append + fdatasync at `rate`, the node's accepted rate.
pub(super) async fn fsync_floor(run: &Run<'_>, rate: f64) -> Result<Phase> {
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

/// One side's totals over the rounds of [`interleaved`].
#[derive(Clone, Copy, Default)]
struct Rounds {
    cpu: CpuUse,
    sent: u64,
    elapsed: Duration,
}

/// The node's QUIC phase and the echo floor in alternating rounds of `duration / rounds`:
/// node, echo, node, echo, …; each side's rounds merged into one phase.
pub(super) async fn interleaved(run: &Run<'_>) -> Result<(Phase, Phase)> {
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
