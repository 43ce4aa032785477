//! What a run records: latency histograms in microseconds (HdrHistogram), outcome counts by
//! kind, and the process figures (CPU seconds, VM steal, resident memory) read from `/proc`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds, in microseconds (60 s); longer ones are clamped to it.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            // Invariant: 1 ≤ low, high ≥ 2 × low and 3 significant digits are valid bounds.
            histogram: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("valid histogram bounds"),
        }
    }
}

impl Latency {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one latency given in microseconds (0 counts as 1 µs, the resolution).
    pub fn record_us(&mut self, us: u64) {
        self.histogram
            .saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds, so adding cannot fail.
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds");
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The underlying histogram.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    /// The percentiles of the report.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let q = |quantile: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(quantile)
            }
        };
        LatencySummary {
            count: h.len(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

/// The percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Latencies recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// Counts by kind (`accepted`, `too_low`, `timeout`, …), sorted by name in the report.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<String, u64>);

impl Counts {
    /// Adds `n` to `kind`.
    pub fn add(&mut self, kind: &str, n: u64) {
        *self.0.entry(kind.to_owned()).or_default() += n;
    }

    /// The count of `kind` (0 if never seen).
    pub fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Counts) {
        for (kind, n) in &other.0 {
            self.add(kind, *n);
        }
    }
}

/// Histograms by name plus counts, shared by the tasks of one phase. The lock is held only
/// to record a value, never across an `.await`.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Recorded>>,
}

/// What a [`Recorder`] holds.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Latency histograms by name (`accepted`, `durable`, `delivery`, …).
    pub latencies: BTreeMap<String, Latency>,
    /// Counts by kind.
    pub counts: Counts,
}

impl Recorder {
    /// Records `latency` in the histogram `name`.
    pub fn latency(&self, name: &str, latency: Duration) {
        self.with(|r| {
            r.latencies
                .entry(name.to_owned())
                .or_default()
                .record(latency)
        });
    }

    /// Records a latency in microseconds in the histogram `name`.
    pub fn latency_us(&self, name: &str, us: u64) {
        self.with(|r| {
            r.latencies
                .entry(name.to_owned())
                .or_default()
                .record_us(us)
        });
    }

    /// Records a delivery: its latency in µs in `delivery`, one more `delivered`, and
    /// `skipped` more `skipped_seq` — under one lock.
    pub fn delivery(&self, us: u64, skipped: u64) {
        self.with(|r| {
            r.latencies
                .entry("delivery".to_owned())
                .or_default()
                .record_us(us);
            r.counts.add("delivered", 1);
            if skipped > 0 {
                r.counts.add("skipped_seq", skipped);
            }
        });
    }

    /// Adds `n` to the count `kind`.
    pub fn count(&self, kind: &str, n: u64) {
        self.with(|r| r.counts.add(kind, n));
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> Recorded {
        self.with(|r| r.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        // A poisoned lock means a recording task panicked; its figures are still usable.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// Microseconds since the Unix epoch by this machine's clock (the node's clock too: both
/// run on the same machine).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// CPU seconds (user + system) and resident memory of a process, from `/proc`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct ProcessSample {
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`), 100 on every Linux we run on.
const USER_HZ: f64 = 100.0;

/// Samples process `pid` (`None`: this process). `None` if `/proc` cannot tell (the process
/// exited, or not Linux).
pub fn sample_process(pid: Option<u32>) -> Option<ProcessSample> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |pid| format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at its closing paren.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name and state.
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Some(ProcessSample {
        cpu_s: ticks / USER_HZ,
        rss_bytes: rss_kib * 1024,
    })
}

/// Seconds of VM steal time so far over all CPUs (`/proc/stat`), 0 if unknown.
pub fn steal_s() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?;
            line.split_whitespace().nth(8)?.parse::<f64>().ok()
        })
        .map_or(0.0, |ticks| ticks / USER_HZ)
}

/// CPU use of the load generator and the system under test over one phase.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct CpuUse {
    /// Wall-clock seconds of the phase.
    pub wall_s: f64,
    /// CPU seconds of the load generator (this process).
    pub generator_cpu_s: f64,
    /// CPU seconds of the system under test (the node, the echo server or nats-server),
    /// when it is a process this tester can see.
    pub server_cpu_s: Option<f64>,
    /// VM steal seconds (all CPUs) during the phase.
    pub steal_s: f64,
}

impl CpuUse {
    /// Adds `other` (a later part of the same phase).
    pub fn add(&mut self, other: CpuUse) {
        self.wall_s += other.wall_s;
        self.generator_cpu_s += other.generator_cpu_s;
        self.server_cpu_s = match (self.server_cpu_s, other.server_cpu_s) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.steal_s += other.steal_s;
    }
}

/// Measures a phase's CPU use: started before it, [`CpuMeter::finish`]ed after.
#[derive(Debug)]
pub struct CpuMeter {
    started: Instant,
    generator: Option<ProcessSample>,
    server_pid: Option<u32>,
    server: Option<ProcessSample>,
    steal: f64,
}

impl CpuMeter {
    /// Starts measuring; `server_pid` is the process under test, if any.
    pub fn start(server_pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            generator: sample_process(None),
            server_pid,
            server: server_pid.and_then(|pid| sample_process(Some(pid))),
            steal: steal_s(),
        }
    }

    /// The CPU used since [`CpuMeter::start`].
    pub fn finish(&self) -> CpuUse {
        let delta = |before: Option<ProcessSample>, after: Option<ProcessSample>| {
            Some(after?.cpu_s - before?.cpu_s)
        };
        CpuUse {
            wall_s: self.started.elapsed().as_secs_f64(),
            generator_cpu_s: delta(self.generator, sample_process(None)).unwrap_or(0.0),
            server_cpu_s: self
                .server_pid
                .and_then(|pid| delta(self.server, sample_process(Some(pid)))),
            steal_s: steal_s() - self.steal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles_and_merge() {
        let mut a = Latency::default();
        for us in 1..=1000 {
            a.record_us(us);
        }
        let mut b = Latency::default();
        b.record(Duration::from_secs(120));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 1001);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=995).contains(&s.p99_us), "{s:?}");
        // Clamped to the histogram's top, not dropped.
        assert!(s.max_us >= LATENCY_US_MAX - LATENCY_US_MAX / 1000, "{s:?}");
    }

    #[test]
    fn counts_add_up() {
        let mut c = Counts::default();
        c.add("accepted", 3);
        c.add("too_low", 2);
        c.add("accepted", 1);
        assert_eq!(c.get("accepted"), 4);
        assert_eq!(c.total(), 6);
    }

    #[test]
    fn this_process_is_sampled() {
        let sample = sample_process(None).expect("/proc/self is readable");
        assert!(sample.rss_bytes > 0);
    }
}
