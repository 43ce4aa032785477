//! Replay: rebuilds an engine from its events through the same code path as live traffic.
//!
//! Each *command* event (creation, accepted bid, close by end time, cancel, prune) is executed
//! again with the `now` it was decided at; the events that execution produces must equal
//! the logged ones, the command itself first and then its *derived* events (extension,
//! buy-now or Dutch close, settlement), which the log must hold next for that auction.
//! Any difference stops replay with [`ReplayError::Diverged`]: the log and the code
//! disagree, and guessing would corrupt state.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use thiserror::Error;

use crate::engine::{CreateError, Engine, ManageError};
use crate::event::{Backpressure, CloseReason, Event, EventKind, EventSink, Receipt};
use crate::hash::BuildMixHasher;
use crate::types::{AuctionId, BidOutcome};

/// Why replay stopped.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum ReplayError {
    /// Re-executing a command produced other events than the log holds.
    #[error(
        "replay diverged at auction {auction} seq {seq}: log has {logged:?}, engine produced {produced:?}"
    )]
    Diverged {
        /// The auction.
        auction: AuctionId,
        /// The logged event's sequence number.
        seq: u64,
        /// What the log holds.
        logged: Box<Event>,
        /// What the engine produced (`None`: nothing).
        produced: Option<Box<Event>>,
    },
    /// A derived event appeared without the command that produces it.
    #[error("derived event without its command at auction {auction} seq {seq}")]
    OrphanDerived {
        /// The auction.
        auction: AuctionId,
        /// The event's sequence number.
        seq: u64,
    },
    /// A logged creation could not be re-executed.
    #[error("re-creating auction {auction} failed: {source}")]
    Create {
        /// The auction.
        auction: AuctionId,
        /// Why.
        source: CreateError,
    },
    /// A logged close or cancel could not be re-executed.
    #[error("re-closing auction {auction} failed: {source}")]
    Close {
        /// The auction.
        auction: AuctionId,
        /// Why.
        source: ManageError,
    },
    /// A logged prune could not be re-executed.
    #[error("re-pruning auction {auction} failed: {source}")]
    Prune {
        /// The auction.
        auction: AuctionId,
        /// Why.
        source: ManageError,
    },
    /// A logged forget could not be re-executed.
    #[error("re-forgetting auction {auction} failed: {source}")]
    Forget {
        /// The auction.
        auction: AuctionId,
        /// Why.
        source: ManageError,
    },
    /// A logged accepted bid was not accepted again.
    #[error("logged accepted bid at auction {auction} seq {seq} was decided {outcome:?} on replay")]
    BidNotAccepted {
        /// The auction.
        auction: AuctionId,
        /// The logged sequence number.
        seq: u64,
        /// What replay decided.
        outcome: BidOutcome,
    },
}

/// Collects the events of one re-executed command. Never refuses: replay has no queue.
#[derive(Default)]
struct Capture(RefCell<Vec<Event>>);

impl EventSink for Capture {
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure> {
        self.0.borrow_mut().extend_from_slice(events);
        Ok(Receipt::NONE)
    }
}

/// Feeds logged events into an engine, one at a time, in log order.
pub struct Replayer<'e> {
    engine: &'e Engine,
    /// The engine was restored from a snapshot: events it already includes are skipped.
    after_snapshot: bool,
    skipped: u64,
    /// Derived events each auction's last command produced that the log has not shown yet.
    expected: HashMap<AuctionId, VecDeque<Event>, BuildMixHasher>,
    /// Collects what each re-executed command produces.
    capture: Capture,
    events: u64,
}

/// What a finished replay found.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Events read (applied or skipped).
    pub events: u64,
    /// Events skipped because the restored snapshot already included them.
    pub skipped: u64,
    /// Derived events the last commands produced but the log ends before (a crash between
    /// writing a decision's records). The engine state already includes them; the log
    /// owner appends them so that log and state agree again.
    pub missing_tail: Vec<Event>,
}

impl<'e> Replayer<'e> {
    /// A replayer into `engine`, which should be empty (or hold the state of the snapshot
    /// the log continues from).
    pub fn new(engine: &'e Engine) -> Replayer<'e> {
        Replayer {
            engine,
            after_snapshot: false,
            skipped: 0,
            expected: HashMap::default(),
            capture: Capture::default(),
            events: 0,
        }
    }

    /// A replayer into an engine restored from a snapshot (with [`Engine::restore`]): an
    /// event whose auction's restored state already includes it (its sequence number is
    /// not above the state's) is skipped; the rest replays as usual. The log may therefore
    /// start anywhere before the snapshot was taken.
    pub fn after_snapshot(engine: &'e Engine) -> Replayer<'e> {
        let mut replayer = Replayer::new(engine);
        replayer.after_snapshot = true;
        replayer
    }

    /// Applies one logged event.
    pub fn apply(&mut self, logged: &Event) -> Result<(), ReplayError> {
        self.events += 1;
        if let Some(expected) = self
            .expected
            .get_mut(&logged.auction)
            .and_then(VecDeque::pop_front)
        {
            if expected != *logged {
                return Err(diverged(logged, Some(expected)));
            }
            return Ok(());
        }
        if self.after_snapshot && self.included_in_snapshot(logged) {
            self.skipped += 1;
            return Ok(());
        }
        if !logged.kind.is_command() {
            return Err(ReplayError::OrphanDerived {
                auction: logged.auction,
                seq: logged.seq,
            });
        }
        // One buffer for every command: no allocation per replayed event.
        self.capture.0.borrow_mut().clear();
        self.run_command(logged)?;
        let id = logged.auction;
        let capture = &self.capture;
        let mut captured = capture.0.borrow_mut();
        let mut produced = captured.drain(..);
        match produced.next() {
            Some(first) if first == *logged => {}
            other => return Err(diverged(logged, other)),
        }
        if produced.len() > 0 {
            self.expected.entry(id).or_default().extend(produced);
        }
        Ok(())
    }

    /// Whether the restored snapshot already includes `logged`: its auction's state is at
    /// `logged.seq` or later, or the auction is unknown although `logged` is no creation —
    /// it was forgotten before the snapshot was read (the snapshot's log position is read
    /// before its state, so the log may hold an auction's last records, up to its
    /// `Forgotten`, from before that point). A creation of an unknown auction is never
    /// included: its auction would be known.
    fn included_in_snapshot(&self, logged: &Event) -> bool {
        match self.engine.auction_seq(logged.auction) {
            Some(seq) => logged.seq <= seq,
            None => !matches!(logged.kind, EventKind::Created(_)),
        }
    }

    /// Runs a logged command through the engine into the capture buffer, so its events can be
    /// compared with the log's.
    #[inline]
    fn run_command(&self, logged: &Event) -> Result<(), ReplayError> {
        let capture = &self.capture;
        let id = logged.auction;
        match &logged.kind {
            EventKind::Created(spec) => {
                self.engine
                    .create_auction((**spec).clone(), logged.at, capture)
                    .map_err(|source| ReplayError::Create {
                        auction: id,
                        source,
                    })?;
            }
            EventKind::BidAccepted { bid, .. } => {
                let outcome = self.engine.place_bid(bid, logged.at, capture).outcome;
                if !matches!(outcome, BidOutcome::Accepted(_)) {
                    return Err(ReplayError::BidNotAccepted {
                        auction: id,
                        seq: logged.seq,
                        outcome,
                    });
                }
            }
            EventKind::Closed {
                reason: CloseReason::EndReached,
            } => {
                self.engine
                    .close_auction(id, logged.at, capture)
                    .map_err(|source| ReplayError::Close {
                        auction: id,
                        source,
                    })?;
            }
            EventKind::Closed {
                reason: CloseReason::Cancelled,
            } => {
                self.engine
                    .cancel_auction(id, logged.at, capture)
                    .map_err(|source| ReplayError::Close {
                        auction: id,
                        source,
                    })?;
            }
            EventKind::Pruned => {
                self.engine
                    .prune_auction(id, logged.at, capture)
                    .map_err(|source| ReplayError::Prune {
                        auction: id,
                        source,
                    })?;
            }
            EventKind::Forgotten => {
                self.engine
                    .forget_auction(id, logged.at, capture)
                    .map_err(|source| ReplayError::Forget {
                        auction: id,
                        source,
                    })?;
            }
            EventKind::Closed { .. } | EventKind::Extended { .. } | EventKind::Settled(_) => {
                unreachable!("derived events were handled above")
            }
        }
        Ok(())
    }

    /// Ends the replay.
    pub fn finish(mut self) -> ReplaySummary {
        let expected = std::mem::take(&mut self.expected);
        let mut missing_tail: Vec<Event> = expected.into_values().flatten().collect();
        missing_tail.sort_by_key(|e| (e.auction, e.seq));
        ReplaySummary {
            events: self.events,
            skipped: self.skipped,
            missing_tail,
        }
    }
}

fn diverged(logged: &Event, produced: Option<Event>) -> ReplayError {
    ReplayError::Diverged {
        auction: logged.auction,
        seq: logged.seq,
        logged: Box::new(logged.clone()),
        produced: produced.map(Box::new),
    }
}
