//! The open-loop schedule: request `i` is due at `start + i / rate`, whatever happened to the
//! requests before it, and goes to lane (connection) `i % lanes`. The lane sends it and the
//! latency is measured from that *intended* time, so a stalled server or a slow lane shows
//! up as latency, never as a lower sending rate (no coordinated omission).
//!
//! Two ways to follow it:
//! - [`run`]: one pacer thread hands each due time to its lane's task. It sleeps with
//!   `std::thread::sleep` (≈ 50–60 µs of timer slack on Linux) and the hand-off is a
//!   cross-thread wake-up (tens of µs on these VMs): ≈ 80 µs at p50 on top of every figure.
//!   The WebSocket and SDK bidders and the fsync floor use it.
//! - [`OwnPace`] (issue 20 item 2): each connection's own task computes its share of the due
//!   times and sleeps on a [`PreciseTimer`] (a `timerfd`, which has no timer slack, woken
//!   through the runtime's own epoll) until each — no other thread in between. The lean QUIC
//!   client (the node's QUIC phase and the echo floor) uses it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// How far ahead of a due time the pacer goes to sleep instead of sending.
const SLEEP_AHEAD_MIN: Duration = Duration::from_micros(20);

/// Depth of each lane's queue of due times; a lane that falls this far behind blocks the
/// pacer, which then sends late (the lateness is still measured from the intended time).
pub const LANE_QUEUE_MAX: usize = 65_536;

/// A fixed arrival rate, bounded in count and time.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Schedule {
    /// Requests per second over all lanes.
    pub rate_per_s: f64,
    /// Most requests.
    pub count_max: u64,
    /// Longest sending time.
    pub duration: Duration,
}

impl Schedule {
    /// How many requests the schedule sends: the count, or what fits in the duration.
    pub fn planned(&self) -> u64 {
        // The epsilon keeps e.g. 300/s × (1 s / 3) at 100, not 99.
        let in_time = (self.rate_per_s * self.duration.as_secs_f64() + 1e-6).floor() as u64;
        self.count_max.min(in_time.max(1))
    }
}

/// What the pacer did.
#[derive(Clone, Copy, Debug)]
pub struct Paced {
    /// Requests handed to lanes.
    pub sent: u64,
    /// When request 0 was due.
    pub start: Instant,
    /// From `start` until the last request was handed over.
    pub elapsed: Duration,
}

/// Delay before request 0 is due, so every lane holds its share before it starts.
const START_DELAY: Duration = Duration::from_millis(5);

/// One lane's queue: the intended send time of each request and its sequence number.
pub type Lane = mpsc::Sender<(Instant, u64)>;

/// Runs the schedule on the calling thread (never inside a tokio runtime: it blocks), handing
/// request `i` to lane `i % lanes.len()`. Returns once every request was handed over; the
/// lanes' queues close when `lanes` is dropped here.
pub fn run(schedule: Schedule, lanes: Vec<Lane>, progress: &ProgressBar) -> Paced {
    assert!(!lanes.is_empty(), "the pacer needs at least one lane");
    assert!(schedule.rate_per_s > 0.0, "the rate must be positive");
    let planned = schedule.planned();
    let interval_s = 1.0 / schedule.rate_per_s;
    let start = Instant::now() + START_DELAY;
    let mut sent = 0_u64;
    while sent < planned {
        let due = start + Duration::from_secs_f64(sent as f64 * interval_s);
        let now = Instant::now();
        if due > now + SLEEP_AHEAD_MIN {
            std::thread::sleep(due - now);
            continue;
        }
        let lane = &lanes[(sent % lanes.len() as u64) as usize];
        if lane.blocking_send((due, sent)).is_err() {
            // The lane ended early (its connection failed); its share is counted as unsent.
            progress.println(format!("lane {} closed early", sent % lanes.len() as u64));
        }
        sent += 1;
        if sent.is_multiple_of(1024) {
            progress.set_position(sent);
        }
    }
    progress.set_position(sent);
    Paced {
        sent,
        start,
        elapsed: start.elapsed(),
    }
}

/// What every [`OwnPace`] of one schedule did, summed: requests sent and when the last was.
#[derive(Debug)]
pub struct OwnProgress {
    start: Instant,
    sent: AtomicU64,
    /// Microseconds from `start` to the latest send.
    last_us: AtomicU64,
}

impl OwnProgress {
    /// Requests sent so far over all lanes.
    pub fn sent(&self) -> u64 {
        // Ordering: Relaxed; a count read for progress and after the lanes ended.
        self.sent.load(Ordering::Relaxed)
    }

    /// The pacer's summary once every lane ended.
    pub fn paced(&self) -> Paced {
        Paced {
            sent: self.sent(),
            start: self.start,
            // Ordering: Relaxed; read after the lanes' tasks were joined.
            elapsed: Duration::from_micros(self.last_us.load(Ordering::Relaxed)),
        }
    }
}

/// One lane's share of a schedule, followed by the lane's own task: requests `lane`,
/// `lane + lanes`, `lane + 2 × lanes`, … below the planned count, each due at
/// `start + i / rate`.
#[derive(Debug)]
pub struct OwnPace {
    interval_s: f64,
    next: u64,
    step: u64,
    planned: u64,
    progress: Arc<OwnProgress>,
}

impl OwnPace {
    /// The shares of `lanes` lanes, starting shortly from now, and their common progress.
    pub fn split(schedule: Schedule, lanes: usize) -> (Vec<OwnPace>, Arc<OwnProgress>) {
        assert!(schedule.rate_per_s > 0.0, "the rate must be positive");
        let progress = Arc::new(OwnProgress {
            start: Instant::now() + START_DELAY,
            sent: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
        });
        let shares = (0..lanes as u64)
            .map(|lane| OwnPace {
                interval_s: 1.0 / schedule.rate_per_s,
                next: lane,
                step: lanes as u64,
                planned: schedule.planned(),
                progress: Arc::clone(&progress),
            })
            .collect();
        (shares, progress)
    }

    /// The next request of this lane: its due time and sequence number.
    pub fn next_due(&mut self) -> Option<(Instant, u64)> {
        if self.next >= self.planned {
            return None;
        }
        let seq = self.next;
        self.next += self.step;
        let due = self.progress.start + Duration::from_secs_f64(seq as f64 * self.interval_s);
        Some((due, seq))
    }

    /// Notes that the lane sent a request (now).
    pub fn sent(&self) {
        let progress = &self.progress;
        let us = u64::try_from(progress.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Ordering: Relaxed; counters read once the lanes ended.
        progress.sent.fetch_add(1, Ordering::Relaxed);
        progress.last_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// A sleep to the microsecond inside the runtime: a `timerfd` (armed without timer slack,
/// unlike `nanosleep` or tokio's millisecond wheel) whose expiry wakes the task through the
/// runtime's epoll, on the thread that polls it.
#[derive(Debug)]
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// A disarmed timer (inside a tokio runtime).
    pub fn new() -> std::io::Result<PreciseTimer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // `AsyncFd::new` is deprecated for fds it does not own (I/O safety, tokio #8587):
        // this `OwnedFd` lives inside the `AsyncFd` until it is dropped, which is what its
        // unsafe replacement `register` requires, without `unsafe` (denied here).
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(PreciseTimer { fd })
    }

    /// Returns at `at` (at once if it passed).
    pub async fn sleep_until(&mut self, at: Instant) -> std::io::Result<()> {
        let wait = at.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let expiry = Itimerspec {
            it_interval: zero,
            it_value: rustix::time::Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(wait.subsec_nanos()),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &expiry)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0_u8; 8];
            match rustix::io::read(ready.get_inner(), &mut expirations) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_is_bounded_by_count_and_time() {
        let s = Schedule {
            rate_per_s: 1000.0,
            count_max: 500,
            duration: Duration::from_secs(10),
        };
        assert_eq!(s.planned(), 500);
        let s = Schedule {
            count_max: 1_000_000,
            ..s
        };
        assert_eq!(s.planned(), 10_000);
    }

    #[test]
    fn requests_are_spread_over_lanes_at_the_rate() {
        let (a_tx, mut a_rx) = mpsc::channel(1024);
        let (b_tx, mut b_rx) = mpsc::channel(1024);
        let schedule = Schedule {
            rate_per_s: 2000.0,
            count_max: 200,
            duration: Duration::from_secs(5),
        };
        let paced = run(schedule, vec![a_tx, b_tx], &ProgressBar::hidden());
        assert_eq!(paced.sent, 200);
        // 200 requests at 2000/s take ≈ 100 ms; a loaded machine may stretch it a little.
        assert!(paced.elapsed >= Duration::from_millis(99), "{paced:?}");
        let mut a = Vec::new();
        while let Ok(item) = a_rx.try_recv() {
            a.push(item);
        }
        let mut b = Vec::new();
        while let Ok(item) = b_rx.try_recv() {
            b.push(item);
        }
        assert_eq!((a.len(), b.len()), (100, 100));
        assert!(a.iter().all(|(_, i)| i % 2 == 0));
        // Due times are the schedule's, 0.5 ms apart, not the times they were sent.
        let gap = b[0].0 - a[0].0;
        assert!(gap >= Duration::from_micros(499) && gap <= Duration::from_micros(501));
    }

    #[test]
    fn own_paces_share_the_schedule_round_robin() {
        let schedule = Schedule {
            rate_per_s: 2000.0,
            count_max: 7,
            duration: Duration::from_secs(5),
        };
        let (mut shares, progress) = OwnPace::split(schedule, 3);
        let mut all: Vec<Vec<(Instant, u64)>> = shares
            .iter_mut()
            .map(|share| std::iter::from_fn(|| share.next_due()).collect())
            .collect();
        let seqs: Vec<Vec<u64>> = all
            .iter()
            .map(|lane| lane.iter().map(|(_, seq)| *seq).collect())
            .collect();
        assert_eq!(seqs, [vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        // Due times are the schedule's: request i at start + i × 0.5 ms.
        let (due_4, _) = all[1].pop().unwrap();
        let (due_1, _) = all[1].pop().unwrap();
        assert_eq!(due_4 - due_1, Duration::from_micros(1500));
        shares[0].sent();
        shares[2].sent();
        assert_eq!(progress.paced().sent, 2);
    }

    #[tokio::test]
    async fn the_precise_timer_sleeps_until_the_instant() {
        let mut timer = PreciseTimer::new().unwrap();
        let at = Instant::now() + Duration::from_millis(3);
        timer.sleep_until(at).await.unwrap();
        assert!(Instant::now() >= at);
        // A passed instant returns at once, and the timer can be armed again.
        timer.sleep_until(at).await.unwrap();
        let at = Instant::now() + Duration::from_millis(1);
        timer.sleep_until(at).await.unwrap();
        assert!(Instant::now() >= at);
    }
}
