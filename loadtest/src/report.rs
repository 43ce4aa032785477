//! The report: one [`PhaseReport`] per measured phase (the node and each baseline), the
//! ratios between them, the machine; written as JSON, as one `.hgrm` percentile
//! distribution per histogram, and as an SVG plot of the percentile spectra; and printed as a
//! table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use crate::stats::{Counts, CpuUse, Latency, LatencySummary};

/// What one phase measured.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// Short name (`gavel_quic`, `echo_floor`, `fsync_floor`, `gavel_fanout`, `nats_fanout`, …).
    pub name: String,
    /// What ran, for people.
    pub what: String,
    /// Target rate, requests (or publishes) per second.
    pub rate_per_s: f64,
    /// Connections (bidders or watchers) of the phase.
    pub connections: usize,
    /// Requests the schedule planned.
    pub planned: u64,
    /// Requests handed to the connections.
    pub sent: u64,
    /// `sent` over the sending time.
    pub achieved_rate_per_s: f64,
    /// Outcomes and errors by kind.
    pub counts: Counts,
    /// Latency percentiles by histogram name, µs.
    pub latency_us: BTreeMap<String, LatencySummary>,
    /// CPU of the generator and the server during the phase.
    pub cpu: CpuUse,
    /// Other figures of the phase (deliveries/s, memory per watcher, …).
    pub figures: BTreeMap<String, f64>,
}

/// A phase's report and its histograms.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The figures.
    pub report: PhaseReport,
    /// The histograms behind `report.latency_us`.
    pub histograms: BTreeMap<String, Latency>,
}

impl Phase {
    /// A phase from its histograms (summaries derived here).
    pub fn new(report: PhaseReport, histograms: BTreeMap<String, Latency>) -> Phase {
        let mut report = report;
        report.latency_us = histograms
            .iter()
            .map(|(name, h)| (name.clone(), h.summary()))
            .collect();
        Phase { report, histograms }
    }
}

/// One headline ratio: the node's figure over the baseline's, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// What is compared (`accepted p99 / echo p99`).
    pub name: String,
    /// The node's figure.
    pub measured: f64,
    /// The baseline's figure.
    pub baseline: f64,
    /// `measured / baseline`.
    pub ratio: f64,
    /// The PRODUCT.md §10 goal for it, in words.
    pub goal: String,
}

impl Ratio {
    /// `measured / baseline` with its goal.
    pub fn new(name: &str, measured: f64, baseline: f64, goal: &str) -> Ratio {
        Ratio {
            name: name.to_owned(),
            measured,
            baseline,
            ratio: if baseline > 0.0 {
                measured / baseline
            } else {
                f64::NAN
            },
            goal: goal.to_owned(),
        }
    }
}

/// The machine the run measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Load average (1 min) at the start.
    pub load_1m: f64,
}

impl Machine {
    /// This machine now.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let load_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            load_1m,
        }
    }
}

/// One `--max-rate` step.
#[derive(Clone, Debug, Serialize)]
pub struct SearchStep {
    /// Which system (`gavel_quic`, `echo_floor`).
    pub system: String,
    /// Rate tried.
    pub rate_per_s: f64,
    /// Rate achieved.
    pub achieved_rate_per_s: f64,
    /// p99 of `decided`, µs.
    pub p99_us: u64,
    /// Errors (answers other than accepted / too low).
    pub errors: u64,
    /// Whether the step met the bound.
    pub ok: bool,
}

/// Everything a run writes.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// `gavel-loadtest <version>`.
    pub tool: String,
    /// The command line.
    pub command: Vec<String>,
    /// Start, seconds since the Unix epoch.
    pub started_at_unix_s: u64,
    /// The machine.
    pub machine: Machine,
    /// The phases in the order they ran.
    pub phases: Vec<PhaseReport>,
    /// Node / baseline ratios.
    pub ratios: Vec<Ratio>,
    /// `--max-rate` steps, if searched.
    pub search: Vec<SearchStep>,
    /// Highest rate meeting the bound per system, if searched.
    pub max_rate_per_s: BTreeMap<String, f64>,
}

/// Writes `<name>.json`, `<name>-<phase>-<histogram>.hgrm` and `<name>.svg` into `dir`;
/// returns the files written.
pub fn write(dir: &Path, name: &str, report: &RunReport, phases: &[Phase]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let json = dir.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    written.push(json);
    let mut series = Vec::new();
    for phase in phases {
        for (hist_name, latency) in &phase.histograms {
            if latency.count() == 0 {
                continue;
            }
            let path = dir.join(format!("{name}-{}-{hist_name}.hgrm", phase.report.name));
            std::fs::write(&path, hgrm(latency))
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
            series.push((format!("{} {hist_name}", phase.report.name), latency));
        }
    }
    if !series.is_empty() {
        let svg = dir.join(format!("{name}.svg"));
        plot(&svg, name, &series)?;
        written.push(svg);
    }
    Ok(written)
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format (values in µs).
pub fn hgrm(latency: &Latency) -> String {
    let h = latency.histogram();
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0_u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {inverse}",
            v.value_iterated_to() as f64,
            q,
            total
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean(),
        h.stdev()
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// An SVG of latency against percentile (x: 0, 90, 99, 99.9, 99.99, 99.999 %; y: µs, log).
fn plot(path: &Path, title: &str, series: &[(String, &Latency)]) -> Result<()> {
    const NINES_MAX: f64 = 5.0;
    let points: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, latency)| {
            let points = latency
                .histogram()
                .iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() < 1.0)
                .map(|v| {
                    let nines = (1.0 / (1.0 - v.quantile_iterated_to()))
                        .log10()
                        .min(NINES_MAX);
                    (nines, v.value_iterated_to().max(1) as f64)
                })
                .collect();
            (name.clone(), points)
        })
        .collect();
    let y_max = series
        .iter()
        .map(|(_, l)| l.histogram().max())
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 1.2;
    let area = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Debug| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    area.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!("{title}: latency by percentile (µs)"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..NINES_MAX, (1.0..y_max).log_scale())
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| format!("{:.3}%", 100.0 * (1.0 - 10_f64.powf(-x))))
        .x_desc("percentile")
        .y_desc("latency µs")
        .draw()
        .map_err(|e| draw(&e))?;
    for (i, (name, points)) in points.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| draw(&e))?;
    area.present().map_err(|e| draw(&e))?;
    Ok(())
}

/// The report as a table for the terminal.
pub fn table(report: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8}",
        "phase",
        "latency",
        "count",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "rate/s",
        "gen cpu",
        "srv cpu"
    );
    for phase in &report.phases {
        for (name, s) in &phase.latency_us {
            let _ = writeln!(
                out,
                "{:<14} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10.0} {:>8.2} {:>8}",
                phase.name,
                name,
                s.count,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.p999_us,
                s.p9999_us,
                s.max_us,
                phase.achieved_rate_per_s,
                phase.cpu.generator_cpu_s,
                phase
                    .cpu
                    .server_cpu_s
                    .map_or("-".into(), |c| format!("{c:.2}")),
            );
        }
        let counts: Vec<String> = phase
            .counts
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let figures: Vec<String> = phase
            .figures
            .iter()
            .map(|(k, v)| format!("{k}={v:.1}"))
            .collect();
        let _ = writeln!(
            out,
            "  {}: {} | {}",
            phase.name,
            counts.join(" "),
            figures.join(" ")
        );
    }
    for r in &report.ratios {
        let _ = writeln!(
            out,
            "ratio {:<44} {:>12.1} / {:>12.1} = {:>6.2}  (goal: {})",
            r.name, r.measured, r.baseline, r.ratio, r.goal
        );
    }
    for (system, rate) in &report.max_rate_per_s {
        let _ = writeln!(out, "max rate {system}: {rate:.0}/s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_ends_at_the_total() {
        let mut l = Latency::default();
        for us in [10, 20, 30, 40, 1000] {
            l.record_us(us);
        }
        let text = hgrm(&l);
        assert!(text.starts_with("       Value     Percentile"));
        assert!(text.contains("Total count    =            5"), "{text}");
        let last_row = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(
            last_row.split_whitespace().nth(2) == Some("5"),
            "{last_row}"
        );
    }

    #[test]
    fn files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Latency::default();
        for us in 1..500 {
            l.record_us(us * 3);
        }
        let report = PhaseReport {
            name: "p".into(),
            what: "test".into(),
            rate_per_s: 1.0,
            connections: 1,
            planned: 1,
            sent: 1,
            achieved_rate_per_s: 1.0,
            counts: Counts::default(),
            latency_us: BTreeMap::new(),
            cpu: CpuUse::default(),
            figures: BTreeMap::new(),
        };
        let phase = Phase::new(report, BTreeMap::from([("decided".to_owned(), l)]));
        let run = RunReport {
            tool: "t".into(),
            command: vec![],
            started_at_unix_s: 0,
            machine: Machine::probe(),
            phases: vec![phase.report.clone()],
            ratios: vec![Ratio::new("x", 2.0, 1.0, "≤ 1.2")],
            search: vec![],
            max_rate_per_s: BTreeMap::new(),
        };
        let files = write(dir.path(), "run", &run, &[phase]).unwrap();
        assert_eq!(files.len(), 3, "{files:?}");
        let svg = std::fs::read_to_string(dir.path().join("run.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("polyline"), "{svg}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("run.json")).unwrap()).unwrap();
        assert_eq!(json["ratios"][0]["ratio"], 2.0);
        assert!(table(&run).contains("ratio x"));
    }
}
