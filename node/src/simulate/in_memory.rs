//! The in-memory venue: events go to a bounded queue drained by a consumer thread, and are
//! replayed into a fresh engine at the end to check the state hash.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Context, Result, bail, ensure};
use gavel_engine::{AuctionSpec, BoundedSink, Engine, EngineConfig, Event, Replayer, UnixMicros};

use crate::node::Node;

use super::{AckLog, Options, QUEUE_EVENTS_MAX, Report, VERIFY_BIDS_MAX, Venue};

/// The in-memory mode: the engine's events go to a bounded queue, drained as they come and
/// kept (unless `--no-verify`) for the replay check.
pub(super) struct InMemory {
    engine: Engine,
    sink: BoundedSink,
    keep: bool,
    /// Every event of the run in order (when kept) and their count.
    log: Mutex<(Vec<Event>, u64)>,
}

impl InMemory {
    pub(super) fn new(options: &Options) -> Result<InMemory> {
        if !options.no_verify && options.bids > VERIFY_BIDS_MAX {
            bail!(
                "verifying replay keeps every event in memory: use --bids <= {VERIFY_BIDS_MAX} or --no-verify"
            );
        }
        Ok(InMemory {
            engine: Engine::new(EngineConfig {
                auctions_max: usize::try_from(options.auctions)?.max(1),
                ..EngineConfig::default()
            }),
            sink: BoundedSink::new(QUEUE_EVENTS_MAX, 100),
            keep: !options.no_verify,
            log: Mutex::new((Vec::new(), 0)),
        })
    }

    /// Moves what the queue holds to the log.
    pub(super) fn drain(&self) {
        let mut log = self.log.lock().expect("log mutex poisoned");
        while let Some(event) = self.sink.pop() {
            log.1 += 1;
            if self.keep {
                log.0.push(event);
            }
        }
    }

    /// Replays the log into a fresh engine (unless `--no-verify`) and completes the report.
    pub(super) fn verify(self, options: &Options, mut report: Report) -> Result<Report> {
        let (kept, events) = self.log.into_inner().expect("log mutex poisoned");
        report.events = events;
        if options.no_verify {
            return Ok(report);
        }
        let fresh = Engine::new(*self.engine.config());
        let mut replayer = Replayer::new(&fresh);
        for event in &kept {
            replayer
                .apply(event)
                .context("replaying the simulation's events")?;
        }
        ensure!(
            replayer.finish().missing_tail.is_empty(),
            "replay left decisions half-applied"
        );
        report.replay_verified = Some(fresh.state_hash() == report.state_hash);
        Ok(report)
    }
}

impl Venue for InMemory {
    type Sink = BoundedSink;

    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn sink(&self) -> &BoundedSink {
        &self.sink
    }

    fn node(&self) -> Option<&Node> {
        None
    }

    fn ack_log(&self) -> Option<&AckLog> {
        None
    }

    fn create(&self, spec: AuctionSpec, now: UnixMicros) -> Result<()> {
        self.engine.create_auction(spec, now, &self.sink)?;
        // Nothing drains the queue yet: drain as we go.
        self.drain();
        Ok(())
    }

    fn drain_during<R: Send>(&self, bidding: impl FnOnce() -> R + Send) -> R {
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            let consumer = scope.spawn(|| {
                // Ordering: Acquire pairs with the Release store after the bidders joined:
                // every event they pushed is visible to the final drain.
                while !done.load(Ordering::Acquire) {
                    self.drain();
                    thread::yield_now();
                }
                self.drain();
            });
            let result = bidding();
            // Ordering: Release; see the consumer.
            done.store(true, Ordering::Release);
            consumer.join().expect("the consumer thread panicked");
            result
        })
    }

    fn after_bidding(&self) -> Result<()> {
        Ok(())
    }

    fn close_all(&self, close_at: UnixMicros) -> Result<()> {
        while !self
            .engine
            .close_due(close_at, 1_024, &self.sink)
            .is_empty()
        {
            self.drain();
        }
        self.drain();
        Ok(())
    }
}
