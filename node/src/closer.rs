//! The closer: closes and settles auctions at their ends, on a thread of its own (deciding
//! is CPU work, not async), and announces each settlement once it is durable
//! ([`gavel_transport::settlement::announce`]). It also prunes auctions settled longer ago
//! than the retention ([`Node::prune_due`]), at most [`PRUNE_PER_ROUND_MAX`] per round,
//! and forgets their results once those are older than the results' retention
//! ([`Node::forget_due`], as many per round):
//! a prune holds one registry shard's writer lock (creations in that shard wait; bids only
//! for the moment each pruned auction leaves the shard's map).
//!
//! It sleeps until the engine's next due time ([`Node::poll_timeout`], the next close or
//! prune) rather than ticking:
//! a creation that ends before the closer would wake rings its [`DueAlarm`], and so does
//! shutdown. It never sleeps longer than `longest`, because due times are wall-clock times
//! and the wall clock may jump. Soft-close extensions only move ends later (the closer
//! wakes at the old end, finds the auction not due, and sleeps again); cancels need no wake.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use gavel_engine::UnixMicros;
use gavel_transport::clock::now_micros;
use gavel_transport::fanout::Hub;
use gavel_transport::settlement;
use tokio_util::sync::CancellationToken;

use crate::backend::NodeBackend;
use crate::node::Node;

/// Most auctions closed per round; when more are due the next round starts at once.
const CLOSE_PER_ROUND_MAX: usize = 1024;
/// Most auctions pruned per round; when more are due the next round starts at once.
pub const PRUNE_PER_ROUND_MAX: usize = 256;
/// Settled auctions pruned by this process (the counter's name).
pub const METRIC_PRUNED: &str = "gavel_auctions_pruned_total";
/// Pruned auctions' results forgotten by this process (the counter's name).
pub const METRIC_FORGOTTEN: &str = "gavel_auctions_forgotten_total";
/// The pause before closing again when an auction is still due after a round (the log's
/// queue refused its close: back-pressure).
const RETRY_DUE_AFTER: Duration = Duration::from_millis(1);

/// Why a [`DueAlarm::sleep`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Rung: a creation ends before the planned wake-up, or shutdown.
    Rung,
    /// The planned due time came.
    Due,
    /// The longest sleep passed first.
    Longest,
}

/// What wakes the closer before its planned time.
#[derive(Debug)]
pub struct DueAlarm {
    state: Mutex<AlarmState>,
    rung: Condvar,
}

#[derive(Debug)]
struct AlarmState {
    /// When the sleeping closer plans to wake; [`UnixMicros`]`(u64::MAX)` while it is
    /// awake (a creation then rings, so the next sleep sees it).
    wake_at: UnixMicros,
    rung: bool,
}

impl Default for DueAlarm {
    fn default() -> DueAlarm {
        DueAlarm {
            state: Mutex::new(AlarmState {
                wake_at: UnixMicros(u64::MAX),
                rung: false,
            }),
            rung: Condvar::new(),
        }
    }
}

impl DueAlarm {
    fn state(&self) -> std::sync::MutexGuard<'_, AlarmState> {
        self.state
            .lock()
            .expect("alarm mutex poisoned: nothing panics while holding it")
    }

    /// An auction ending at `ends_at` was created: wakes the closer if it plans to wake
    /// later (or is awake, between reading the next due time and sleeping).
    pub fn due_at(&self, ends_at: UnixMicros) {
        let mut state = self.state();
        if ends_at < state.wake_at {
            state.rung = true;
            self.rung.notify_all();
        }
    }

    /// Wakes the closer now (shutdown).
    pub fn ring(&self) {
        self.state().rung = true;
        self.rung.notify_all();
    }

    /// Sleeps until `due` (`None`: nothing is due; only a ring or `longest` ends it), a
    /// ring, or `longest`, whichever comes first; `now` is the wall clock's time. A ring
    /// since the last sleep returns at once.
    pub fn sleep(&self, due: Option<UnixMicros>, now: UnixMicros, longest: Duration) -> Wake {
        let mut state = self.state();
        if std::mem::take(&mut state.rung) {
            return Wake::Rung;
        }
        let wake_at = due.unwrap_or(UnixMicros(u64::MAX));
        let until_due = match wake_at.0.checked_sub(now.0) {
            Some(us) if us > 0 => Duration::from_micros(us),
            _ => RETRY_DUE_AFTER,
        };
        let timeout = until_due.min(longest);
        state.wake_at = wake_at;
        let (mut state, waited) = self
            .rung
            .wait_timeout_while(state, timeout, |state| !state.rung)
            .expect("alarm mutex poisoned: nothing panics while holding it");
        state.wake_at = UnixMicros(u64::MAX);
        if std::mem::take(&mut state.rung) {
            Wake::Rung
        } else if waited.timed_out() && timeout == longest && until_due > longest {
            Wake::Longest
        } else {
            Wake::Due
        }
    }
}

/// Starts the closer thread over `backend`'s node; it announces settlements on `runtime`
/// through `hub` and stops once `shutdown` is cancelled (ring [`Node::wake_closer`] so it
/// notices at once) or the log fails (then it cancels `shutdown`).
pub fn spawn(
    backend: Arc<NodeBackend>,
    hub: Arc<Hub>,
    longest: Duration,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gavel-closer".into())
        .spawn(move || run(&backend, &hub, longest, &shutdown, &runtime))
        .context("starting the closer thread")
}

fn run(
    backend: &Arc<NodeBackend>,
    hub: &Arc<Hub>,
    longest: Duration,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    let node: &Node = &backend.0;
    while !shutdown.is_cancelled() {
        let now = now_micros();
        let closed = node.close_due(now, CLOSE_PER_ROUND_MAX);
        let pruned = node.prune_due(now, PRUNE_PER_ROUND_MAX);
        metrics::counter!(METRIC_PRUNED).increment(pruned as u64);
        let forgotten = node.forget_due(now, PRUNE_PER_ROUND_MAX);
        metrics::counter!(METRIC_FORGOTTEN).increment(forgotten as u64);
        let more = closed.len() == CLOSE_PER_ROUND_MAX
            || pruned == PRUNE_PER_ROUND_MAX
            || forgotten == PRUNE_PER_ROUND_MAX;
        for auction in closed {
            let announce = settlement::announce(Arc::clone(backend), Arc::clone(hub), auction);
            // The outcome is logged by `announce`; nobody else waits for it.
            drop(runtime.spawn(announce));
        }
        if node.failure().is_some() {
            tracing::error!("the log failed; the closer stops");
            shutdown.cancel();
            return;
        }
        if !more {
            node.sleep_until_due(longest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_end_rings_a_later_one_does_not() {
        let alarm = Arc::new(DueAlarm::default());
        let now = UnixMicros(1_000_000);
        let hour = UnixMicros(now.0 + 3_600_000_000);
        let sleeper = {
            let alarm = Arc::clone(&alarm);
            std::thread::spawn(move || alarm.sleep(Some(hour), now, Duration::from_secs(600)))
        };
        // Until the sleeper plans its wake-up every creation rings; after, only an earlier
        // one. Either way this one rings.
        alarm.due_at(UnixMicros(now.0 + 1_000));
        assert_eq!(sleeper.join().unwrap(), Wake::Rung);

        // A later end does not ring a sleeper, which then wakes at its longest.
        let later = UnixMicros(hour.0 + 1);
        let sleeper = {
            let alarm = Arc::clone(&alarm);
            std::thread::spawn(move || alarm.sleep(Some(hour), now, Duration::from_millis(50)))
        };
        // Wait until it sleeps (it planned `hour`), then ring with a later end.
        while alarm.state().wake_at != hour {
            std::thread::yield_now();
        }
        alarm.due_at(later);
        assert_eq!(sleeper.join().unwrap(), Wake::Longest);
    }

    #[test]
    fn a_ring_before_the_sleep_is_kept_and_shutdown_rings() {
        let alarm = DueAlarm::default();
        let now = UnixMicros(1_000_000);
        // Awake (between reading the due time and sleeping): any creation counts.
        alarm.due_at(UnixMicros(u64::MAX - 1));
        assert_eq!(alarm.sleep(None, now, Duration::from_secs(600)), Wake::Rung);
        alarm.ring();
        assert_eq!(alarm.sleep(None, now, Duration::from_secs(600)), Wake::Rung);
        // A due time already past: a short pause, not a spin.
        assert_eq!(
            alarm.sleep(Some(now), now, Duration::from_secs(600)),
            Wake::Due
        );
    }
}
