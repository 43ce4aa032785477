//! CPU time and memory of this process and its threads, read from `/proc` (Linux; zeros
//! elsewhere), and the filesystem under a path (`df -T`): what every load figure reports
//! beside itself, since the load generator shares the 2 cores with what it measures.

use std::path::Path;

/// Clock ticks per second of the `/proc/*/stat` CPU fields: Linux's `USER_HZ`, fixed at 100
/// in the user-space ABI whatever the kernel's `HZ`. A tick is 10 ms, fine for runs of
/// seconds.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds from a `/proc/.../stat` file; 0 if unreadable.
fn stat_cpu_seconds(path: impl AsRef<Path>) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; fields after its closing parenthesis
    // start with field 3 (state), so utime (field 14) and stime (15) are at 11 and 12.
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Cast: tick counts far below 2^53.
    (ticks(11) + ticks(12)) as f64 / USER_HZ
}

/// CPU seconds (user + system) used by this process so far, all threads, exited ones too.
pub fn process_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/self/stat")
}

/// CPU seconds (user + system) used so far by process `pid` (a child under test).
pub fn pid_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(format!("/proc/{pid}/stat"))
}

/// CPU seconds used by the calling thread so far.
pub fn thread_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// CPU seconds used so far by the live threads of this process named `name` (as
/// `std::thread::Builder::name` sets it, truncated by Linux to 15 bytes).
pub fn named_threads_cpu_seconds(name: &str) -> f64 {
    /// Linux keeps at most this many bytes of a thread's name.
    const COMM_BYTES_MAX: usize = 15;
    let name = name.get(..COMM_BYTES_MAX).unwrap_or(name);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .map(|task| stat_cpu_seconds(task.path().join("stat")))
        .sum()
}

/// A `kB` field of `/proc/self/status` in MiB; 0 if unreadable.
fn status_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib >> 10)
}

/// Resident memory of this process now, MiB.
pub fn rss_mib() -> u64 {
    status_mib("VmRSS:")
}

/// Peak resident memory of this process so far, MiB.
pub fn peak_rss_mib() -> u64 {
    status_mib("VmHWM:")
}

/// The `df -T` line of the filesystem holding `path` (device, type, size, use, mount), or
/// why it could not be had.
pub fn filesystem(path: &Path) -> String {
    match std::process::Command::new("df")
        .arg("-T")
        .arg(path)
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        Ok(out) => format!(
            "df -T failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("df -T failed: {e}"),
    }
}

/// CPU seconds the hypervisor has stolen from this VM so far (all vCPUs; the `steal` column
/// of `/proc/stat`): time the guest was runnable but not running. On these machines it
/// shows up as whole-VM stalls, which every latency figure includes.
pub fn vm_steal_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
            // Fields: cpu user nice system idle iowait irq softirq steal ...
            cpu.split_whitespace().nth(8)?.parse::<u64>().ok()
        })
        // Cast: tick counts far below 2^53.
        .map_or(0.0, |ticks| ticks as f64 / USER_HZ)
}
