//! The printed results: one block per log and rate, and the load average.

use crate::driver::Run;

pub(super) fn us(ns: u64) -> String {
    // Cast: for display.
    let us = ns as f64 / 1e3;
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

pub(super) fn print_run(run: &Run) {
    let h = &run.waiter.latency;
    let a = &run.appender;
    // Cast: counts and seconds, for display.
    let send_seconds = a.last_sent_ns as f64 / 1e9;
    let durable_seconds = run.waiter.last_durable_ns as f64 / 1e9;
    println!(
        "{:<4} {:>8}: durable ack from scheduled send, µs: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
        run.log,
        run.rate.to_string(),
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.value_at_quantile(0.9999)),
        us(h.max()),
    );
    println!(
        "     {} records in {send_seconds:.2} s = {:.0}/s sent ({:.0}/s made durable){}; \
         send lag p50 {} p99 {} max {} µs; back-pressure rejections {}",
        a.sent,
        a.sent as f64 / send_seconds.max(1e-9),
        a.sent as f64 / durable_seconds.max(1e-9),
        if a.sustained {
            ""
        } else {
            " — SCHEDULE NOT SUSTAINED, abandoned"
        },
        us(a.send_lag.value_at_quantile(0.5)),
        us(a.send_lag.value_at_quantile(0.99)),
        us(a.send_lag.max()),
        a.rejections,
    );
    println!(
        "     {} syncs, {:.1} records/sync, fdatasync mean {} p99 {} max {} µs; CPU: process {:.2} s in {:.2} s wall \
         ({:.0} % of one core), load generator {:.2} s (appender {:.2} + waiter {:.2}), log writer {:.2} s; \
         VM steal {:.2} s",
        run.sync.syncs,
        run.sync.records as f64 / run.sync.syncs.max(1) as f64,
        run.sync.sync_us_total / run.sync.syncs.max(1),
        us(run.sync.sync_ns.value_at_quantile(0.99)),
        us(run.sync.sync_ns.max()),
        run.process_cpu_seconds,
        run.wall_seconds,
        100.0 * run.process_cpu_seconds / run.wall_seconds,
        a.cpu_seconds + run.waiter.cpu_seconds,
        a.cpu_seconds,
        run.waiter.cpu_seconds,
        run.writer_cpu_seconds,
        run.steal_seconds,
    );
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
