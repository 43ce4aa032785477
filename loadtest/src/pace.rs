//! The open-loop schedule: request `i` is due at `start + i / rate`, whatever happened to the
//! requests before it. One pacer thread hands each due time to a lane (a connection) in
//! turn; the lane sends it and the latency is measured from that *intended* time, so a
//! stalled server or a slow lane shows up as latency, never as a lower sending rate
//! (no coordinated omission).
//!
//! The pacer sleeps with `std::thread::sleep` (a high-resolution timer, ≈ 50–60 µs of slack on
//! Linux) rather than tokio's millisecond timer, and sends everything due at once after
//! waking. That slack is part of every figure, the baselines' too, since they use the same
//! pacer.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
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
    let start = Instant::now() + Duration::from_millis(5);
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
}
