//! [`WalSink`]: the engine's [`EventSink`] onto the write-ahead log (a [`Log`]: the file log
//! or the Kafka log).
//!
//! The engine calls [`EventSink::publish`] under the auction's lock with the events of one
//! decision, before applying it. The sink encodes each event as a `gavel.v1.Record` (prost)
//! into buffers reused per thread, and appends them with [`Log::append_batch`] (keyed by the
//! decision's auction, which keeps an auction's records in one Kafka partition): all or none,
//! contiguous LSNs, no I/O and no blocking beyond the log's short queue mutex. The receipt is
//! the LSN of the decision's last record; the decision is durable once the log's durable LSN
//! reaches it.
//!
//! Refusals: a full queue is the engine's [`Backpressure`] (the bidder is told `Overloaded`
//! and retries). A log that failed, was shut down, or refused a record as too large also
//! refuses — a decision that cannot be logged must not be applied — and the sink remembers
//! the first such failure so the node can stop: a failed log never acknowledges anything.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use gavel_engine::{Backpressure, DECISION_EVENTS_MAX, Event, EventSink, Receipt};
use gavel_proto::convert::wal::encode_record;
use gavel_wal::{AppendError, Log};

/// Retry hint when the log has failed or closed: long, since retrying cannot help; the node
/// stops once it notices.
pub const FAILED_RETRY_AFTER_US: u64 = 1_000_000;

/// Bytes of a reused encode buffer above which it is dropped rather than kept (a huge rules
/// record must not pin memory in every thread).
const ENCODE_BUFFER_BYTES_KEEP_MAX: usize = 64 << 10;

thread_local! {
    /// One encode buffer per event of a decision, reused across calls on this thread.
    static ENCODE_BUFFERS: RefCell<Vec<Vec<u8>>> =
        RefCell::new((0..DECISION_EVENTS_MAX).map(|_| Vec::with_capacity(256)).collect());
}

/// The engine's sink onto a [`Log`]. Share it (`&WalSink` is a sink too).
#[derive(Debug)]
pub struct WalSink {
    wal: Arc<Log>,
    /// The first refusal that was not back-pressure; set once.
    failure: OnceLock<AppendError>,
    /// Records appended through this sink (for the snapshot trigger and metrics).
    appended: AtomicU64,
    /// Wake `snapshot_thread` each time `appended` crosses a multiple of this (0 = never).
    snapshot_every_records: u64,
    /// Log bytes appended through this sink (payloads and frame headers; the snapshot
    /// trigger by bytes).
    appended_bytes: AtomicU64,
    /// Wake `snapshot_thread` each time `appended_bytes` crosses a multiple of this (0 =
    /// never).
    snapshot_every_log_bytes: u64,
    snapshot_thread: OnceLock<Thread>,
}

impl WalSink {
    /// A sink appending to `wal`; every `snapshot_every_records` records (0 = never) it wakes
    /// the thread registered with [`WalSink::set_snapshot_thread`].
    pub fn new(wal: Arc<Log>, snapshot_every_records: u64) -> WalSink {
        WalSink {
            wal,
            failure: OnceLock::new(),
            appended: AtomicU64::new(0),
            snapshot_every_records,
            appended_bytes: AtomicU64::new(0),
            snapshot_every_log_bytes: 0,
            snapshot_thread: OnceLock::new(),
        }
    }

    /// Also wakes the snapshot thread every `bytes` of log appended (0 = never).
    pub fn with_snapshot_every_log_bytes(self, bytes: u64) -> WalSink {
        WalSink {
            snapshot_every_log_bytes: bytes,
            ..self
        }
    }

    /// Registers the thread to unpark when a snapshot is due (once).
    pub fn set_snapshot_thread(&self, thread: Thread) {
        let _ = self.snapshot_thread.set(thread);
    }

    /// The log.
    pub fn wal(&self) -> &Arc<Log> {
        &self.wal
    }

    /// The first refusal that was not back-pressure (the log failed, closed, or a record was
    /// too large): the node must stop.
    pub fn failure(&self) -> Option<AppendError> {
        self.failure.get().copied()
    }

    /// Records appended through this sink.
    pub fn appended_records(&self) -> u64 {
        // Ordering: Relaxed; a counter that only paces snapshots.
        self.appended.load(Ordering::Relaxed)
    }

    /// Log bytes appended through this sink: payloads plus each record's frame header.
    pub fn appended_log_bytes(&self) -> u64 {
        // Ordering: Relaxed; as `appended_records`.
        self.appended_bytes.load(Ordering::Relaxed)
    }

    fn refuse(&self, error: AppendError) -> Backpressure {
        match error {
            AppendError::Backpressure { retry_after_us } => Backpressure { retry_after_us },
            // Another node's partition: refused, but the log is fine (the node checks
            // ownership before deciding; this is the last line).
            AppendError::NotOwner { .. } => Backpressure {
                retry_after_us: FAILED_RETRY_AFTER_US,
            },
            AppendError::TooLarge { .. } | AppendError::Failed | AppendError::Closed => {
                let _ = self.failure.set(error);
                Backpressure {
                    retry_after_us: FAILED_RETRY_AFTER_US,
                }
            }
        }
    }
}

impl EventSink for WalSink {
    fn publish(&self, events: &[Event]) -> Result<Receipt, Backpressure> {
        let Some(first) = events.first() else {
            return Ok(Receipt::NONE);
        };
        // One decision is about one auction (the engine decides under its lock).
        debug_assert!(events.iter().all(|e| e.auction == first.auction));
        let key = first.auction.0;
        let appended = ENCODE_BUFFERS.with(|buffers| {
            // Invariant: `publish` does not re-enter itself on one thread (the engine calls
            // the sink once per decision and the sink calls nothing of the engine).
            let mut buffers = buffers.borrow_mut();
            if buffers.len() < events.len() {
                buffers.resize_with(events.len(), Vec::new);
            }
            for (event, buffer) in events.iter().zip(buffers.iter_mut()) {
                buffer.clear();
                encode_record(event, buffer);
            }
            let bytes: usize = buffers[..events.len()]
                .iter()
                .map(|b| b.len() + gavel_wal::frame::HEADER_BYTES)
                .sum();
            let result = self.wal.append_batch(key, &buffers[..events.len()]);
            for buffer in buffers.iter_mut() {
                if buffer.capacity() > ENCODE_BUFFER_BYTES_KEEP_MAX {
                    *buffer = Vec::with_capacity(256);
                }
            }
            result.map(|lsn| (lsn, bytes as u64))
        });
        let (last, bytes) = appended.map_err(|e| self.refuse(e))?;
        let n = events.len() as u64;
        // Ordering: Relaxed; only pace the snapshot thread, which reads them again itself.
        let before = self.appended.fetch_add(n, Ordering::Relaxed);
        let bytes_before = self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        let crossed =
            |before: u64, n: u64, every: u64| every > 0 && before / every != (before + n) / every;
        if (crossed(before, n, self.snapshot_every_records)
            || crossed(bytes_before, bytes, self.snapshot_every_log_bytes))
            && let Some(thread) = self.snapshot_thread.get()
        {
            thread.unpark();
        }
        Ok(Receipt(last))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gavel_engine::{
        AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidOutcome, BidderId,
        Engine, EngineConfig, IncrementTable, Rejection, Topic, UnixMicros,
    };
    use gavel_proto::convert::wal::decode_record;
    use gavel_wal::{Wal, WalConfig};

    use super::*;

    fn spec(id: u64) -> AuctionSpec {
        AuctionSpec::try_from(AuctionRules {
            id: AuctionId(id),
            topic: Topic::new("test.lot").unwrap(),
            kind: AuctionKind::English {
                start_price: 10,
                increments: IncrementTable::default(),
            },
            reserve: None,
            buy_now: Some(1_000),
            starts_at: UnixMicros(0),
            ends_at: UnixMicros(1_000),
            soft_close: None,
        })
        .unwrap()
    }

    #[test]
    fn a_decision_is_one_batch_and_its_receipt_is_the_last_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let sink = WalSink::new(Arc::new(Log::File(wal)), 0);
        let engine = Engine::new(EngineConfig::default());
        assert_eq!(
            engine.create_auction(spec(1), UnixMicros(0), &sink),
            Ok(Receipt(1))
        );
        let bidder = BidderId::new("acme").unwrap();
        let bid = Bid::new(AuctionId(1), bidder, BidId(1), 20, None, UnixMicros(5)).unwrap();
        let decision = engine.place_bid(&bid, UnixMicros(5), &sink);
        assert!(matches!(decision.outcome, BidOutcome::Accepted(_)));
        assert_eq!(decision.receipt, Some(Receipt(2)));
        // Buy-now: accepted, closed and settled — three records, one batch.
        let buy = Bid::new(AuctionId(1), bidder, BidId(2), 1_000, None, UnixMicros(6)).unwrap();
        let decision = engine.place_bid(&buy, UnixMicros(6), &sink);
        assert_eq!(decision.receipt, Some(Receipt(5)));
        assert_eq!(sink.appended_records(), 5);
        sink.wal()
            .wait_durable(5, Duration::from_secs(5))
            .expect("durable");

        let events: Vec<Event> = gavel_wal::records(dir.path(), 1)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                decode_record(&r.payload).unwrap()
            })
            .collect();
        assert_eq!(events.len(), 5);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let fresh = Engine::new(EngineConfig::default());
        let mut replayer = gavel_engine::Replayer::new(&fresh);
        for event in &events {
            replayer.apply(event).unwrap();
        }
        assert_eq!(fresh.state_hash(), engine.state_hash());
    }

    #[test]
    fn a_closed_log_refuses_and_is_remembered_as_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let wal = Arc::new(Log::File(wal));
        let sink = WalSink::new(Arc::clone(&wal), 0);
        let engine = Engine::new(EngineConfig::default());
        engine
            .create_auction(spec(1), UnixMicros(0), &sink)
            .unwrap();
        assert_eq!(sink.failure(), None);
        wal.shutdown().unwrap();
        let bid = Bid::new(
            AuctionId(1),
            BidderId::new("acme").unwrap(),
            BidId(1),
            20,
            None,
            UnixMicros(5),
        )
        .unwrap();
        assert_eq!(
            engine.place_bid(&bid, UnixMicros(5), &sink).outcome,
            BidOutcome::Rejected(Rejection::Overloaded {
                retry_after_us: FAILED_RETRY_AFTER_US
            })
        );
        assert_eq!(sink.failure(), Some(AppendError::Closed));
        assert_eq!(engine.auction_seq(AuctionId(1)), Some(1), "nothing applied");
    }
}
