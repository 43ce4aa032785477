//! `--max-rate`: the highest rate whose `decided` p99 stays under a bound, for the node
//! and the echo floor (doubling, then bisecting).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use super::bidding::{drive, echo_bidding, progress_bar, quic_bidding};
use super::floors::start_echo;
use super::{Run, Shape};
use crate::pace::{Paced, Schedule};
use crate::report::SearchStep;
use crate::stats::Recorder;
use crate::target::{ChildServer, Node};

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
