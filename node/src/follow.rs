//! Watchers on any node (issue 14 item 6): every partition of the Kafka log this node does
//! not own is followed into a read-only view, so the node's watchers get every auction's
//! stream, with the `(epoch, seq)` of the owner.
//!
//! One thread per followed partition reads it from its beginning ([`KafkaRecords::follow`]:
//! `read_committed`, the epoch fence and the placement check of every replay) and applies
//! each record through a [`Replayer`](gavel_engine::Replayer) — the decoder and applier of
//! the start and of a takeover ([`crate::replay`]) — into the partition's own [`Engine`],
//! its view. Nothing else writes that engine: it has no sink, no closer and no snapshot, so
//! the view never accepts a bid or closes an auction by its own clock (the node's engine,
//! which bids reach, does not hold the followed auctions: their bids are `UnknownAuction`).
//! The node's reads ([`Node::view`](crate::Node::view), `list`, `pruned`) go to a followed
//! partition's view, to the node's engine otherwise. Each applied record marks its auction
//! changed in the fan-out; a `Settled` record read after the partition's first end
//! (not during the catch-up) announces the close and settlement once, as the owner does.
//!
//! Takeover ([`Followers::hand_over`]): once the lease is held and the takeover marker
//! persisted, the follower reads its partition on to the high watermark (past the marker,
//! whose epoch fences whatever the former owner still writes), finishes its replayer (the
//! derived events a cut decision left out are the takeover's missing tail, as in a replay
//! from the beginning: same records, same replayer) and stops; the view's auctions move into
//! the node's engine (snapshot states), the partition is activated at the follower's offset,
//! and the reads switch to the node's engine, which holds exactly what the view had: a
//! watcher's `seq` goes on without a gap. Then every auction of the view is marked changed
//! and the view is dropped. A follower that stopped on a bad record, or fails while catching
//! up, hands nothing over: the partition is replayed from its beginning instead.
//!
//! A record the view cannot decode or replay stops that partition's follower (the view
//! stays at its last good state; `gavel_follower_errors_total` and `/readyz` say why); a
//! reader error opens a new reader at the position reached. Lag: records behind the
//! partition's high watermark, and seconds since the broker's timestamp of the last record
//! applied while behind (0 when caught up), measured every [`LAG_EVERY`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use gavel_engine::{
    AuctionId, AuctionView, Engine, EngineConfig, EventKind, PrunedAuction, ReplaySummary,
    Replayer, UnixMicros,
};
use gavel_proto::convert::state::SnapshotParts;
use gavel_transport::clock::now_micros;
use gavel_transport::fanout::Hub;
use gavel_wal::WalError;
use gavel_wal::kafka::{KafkaConfig, KafkaPosition, KafkaRecords, Partitioner};

use crate::replay::{apply_at, decode_at};

/// Per followed partition (`partition` label): records behind its high watermark.
pub const METRIC_LAG_RECORDS: &str = "gavel_follower_lag_records";
/// Per followed partition: seconds behind the owner (0 when caught up).
pub const METRIC_LAG_SECONDS: &str = "gavel_follower_lag_seconds";
/// Per followed partition: records its view could not apply (the follower stopped).
pub const METRIC_ERRORS: &str = "gavel_follower_errors_total";
/// One poll of a follower's reader.
const POLL: Duration = Duration::from_millis(20);
/// How often a follower measures its lag (one watermark request to the broker).
const LAG_EVERY: Duration = Duration::from_millis(250);
/// The longest watermark request.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before a follower whose reader failed opens another.
const REOPEN_PAUSE: Duration = Duration::from_millis(500);
/// Auctions marked changed at once when a view is handed over.
const HANDOVER_PAGE: usize = 1_024;
/// The longest a follower catches up to the high watermark for a takeover.
const CATCH_UP_MAX: Duration = Duration::from_secs(30);

/// One followed partition: its read-only view and how far behind it is.
struct Followed {
    partition: i32,
    engine: Engine,
    stop: AtomicBool,
    /// Set by a takeover: catch up to the high watermark, finish, and stop.
    hand_over: AtomicBool,
    /// What the follower handed over: its offset and its replayer's summary.
    handed: Mutex<Option<(i64, ReplaySummary)>>,
    lag_records: AtomicU64,
    lag_ms: AtomicU64,
    /// Why the follower stopped applying, if it did.
    failed: Mutex<Option<String>>,
}

/// A followed partition's lag as last measured (`/readyz`).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerLag {
    /// The partition.
    pub partition: i32,
    /// Records behind its high watermark.
    pub records: u64,
    /// Seconds behind the owner.
    pub seconds: f64,
    /// Why the follower stopped applying, if it did.
    pub failed: Option<String>,
}

/// Every partition this node follows.
#[derive(Default)]
pub(crate) struct Followers {
    /// By partition: its view while followed.
    views: RwLock<Vec<Option<Arc<Followed>>>>,
    threads: Mutex<Vec<(i32, JoinHandle<()>)>>,
    /// The fan-out to tell of changes (set once the node serves watchers).
    hub: Arc<OnceLock<Arc<Hub>>>,
}

/// What a follower thread reads with.
struct Source {
    config: KafkaConfig,
    partitioner: Partitioner,
    hub: Arc<OnceLock<Arc<Hub>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("follower mutex poisoned: a panic under it is a bug")
}

impl Followers {
    /// Starts following `partitions` of the topic of `config` (`partitions_total` in all),
    /// each into a view with the limits of `engine`.
    pub(crate) fn start(
        &self,
        config: &KafkaConfig,
        partitioner: Partitioner,
        engine: EngineConfig,
        (partitions, partitions_total): (&[i32], i32),
    ) -> Result<()> {
        let mut views = self.views.write().expect("follower views poisoned");
        views.resize_with(usize::try_from(partitions_total).unwrap_or(0), || None);
        drop(views);
        for &partition in partitions {
            let source = Source {
                config: config.clone(),
                partitioner,
                hub: Arc::clone(&self.hub),
            };
            self.spawn(partition, Engine::new(engine), source, None)?;
        }
        Ok(())
    }

    /// Starts following `partition` — given up by this node (a group rebalance moved it) —
    /// from `start`, into a view holding `seed`: the partition's state up to `start`, from
    /// the node's engine (so a watcher's `seq` goes on without a gap).
    pub(crate) fn start_seeded(
        &self,
        (config, partitioner, engine): (&KafkaConfig, Partitioner, EngineConfig),
        partition: i32,
        seed: SnapshotParts,
        start: KafkaPosition,
    ) -> Result<()> {
        let view = Engine::new(engine);
        let what = format!("the state of partition {partition} given up");
        let mut report = crate::node::RecoveryReport::default();
        crate::node::restore_parts(&view, seed, &what, |_| true, &mut report)?;
        let source = Source {
            config: config.clone(),
            partitioner,
            hub: Arc::clone(&self.hub),
        };
        self.spawn(partition, view, source, Some(start))
    }

    /// Starts a follower thread of `partition` into `engine`, reading from `start` (the
    /// beginning if `None`).
    fn spawn(
        &self,
        partition: i32,
        engine: Engine,
        source: Source,
        start: Option<KafkaPosition>,
    ) -> Result<()> {
        let followed = Arc::new(Followed {
            partition,
            engine,
            stop: AtomicBool::new(false),
            hand_over: AtomicBool::new(false),
            handed: Mutex::new(None),
            lag_records: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            failed: Mutex::new(None),
        });
        let for_thread = Arc::clone(&followed);
        let handle = std::thread::Builder::new()
            .name(format!("gavel-follow-{partition}"))
            .spawn(move || follow(&for_thread, &source, start))
            .context("spawning a follower thread")?;
        let mut views = self.views.write().expect("follower views poisoned");
        if let Some(slot) = views.get_mut(partition as usize) {
            *slot = Some(followed);
        }
        lock(&self.threads).push((partition, handle));
        Ok(())
    }

    /// Tells `hub` of every change the views apply from now on.
    pub(crate) fn set_hub(&self, hub: Arc<Hub>) {
        let _ = self.hub.set(hub);
    }

    fn view_of(&self, partition: i32) -> Option<Arc<Followed>> {
        let views = self.views.read().expect("follower views poisoned");
        usize::try_from(partition)
            .ok()
            .and_then(|p| views.get(p).cloned().flatten())
    }

    fn all(&self) -> Vec<Arc<Followed>> {
        let views = self.views.read().expect("follower views poisoned");
        views.iter().flatten().cloned().collect()
    }

    /// The view of `partition`'s auction `id` at `now`; `None` if not followed or unknown.
    pub(crate) fn view(
        &self,
        partition: i32,
        id: AuctionId,
        now: UnixMicros,
    ) -> Option<AuctionView> {
        self.view_of(partition)?.engine.view(id, now)
    }

    /// The pruned result of `partition`'s auction `id`, if its view holds one.
    pub(crate) fn pruned(&self, partition: i32, id: AuctionId) -> Option<PrunedAuction> {
        self.view_of(partition)?.engine.pruned(id)
    }

    /// Up to `limit` views of the followed auctions after `after`, ascending by id, merged
    /// into `views` (the node's own).
    pub(crate) fn list_into(
        &self,
        views: &mut Vec<AuctionView>,
        (after, limit, now): (Option<AuctionId>, usize, UnixMicros),
    ) {
        for followed in self.all() {
            views.extend(followed.engine.list(after, limit, now));
        }
        views.sort_unstable_by_key(|v| v.spec.id());
        views.truncate(limit);
    }

    /// Every followed partition's lag as last measured, by partition.
    pub(crate) fn lags(&self) -> Vec<FollowerLag> {
        self.all()
            .iter()
            .map(|f| FollowerLag {
                partition: f.partition,
                // Ordering: Relaxed — statistics.
                records: f.lag_records.load(Ordering::Relaxed),
                seconds: f.lag_ms.load(Ordering::Relaxed) as f64 / 1e3,
                failed: lock(&f.failed).clone(),
            })
            .collect()
    }

    /// Stops following `partition`, taken over and activated: its auctions are marked
    /// changed (their reads now come from the node's engine) and its view dropped.
    pub(crate) fn release(&self, partition: i32) {
        let Some(followed) = self.view_of(partition) else {
            return;
        };
        self.stop_threads(|p| p == partition);
        if let Some(hub) = self.hub.get() {
            let mut after = None;
            loop {
                let page = followed.engine.list(after, HANDOVER_PAGE, now_micros());
                for view in &page {
                    hub.changed(view.spec.id());
                }
                match page.last() {
                    Some(last) if page.len() == HANDOVER_PAGE => after = Some(last.spec.id()),
                    _ => break,
                }
            }
        }
        let mut views = self.views.write().expect("follower views poisoned");
        if let Some(slot) = views.get_mut(partition as usize) {
            *slot = None;
        }
        let labels = [("partition", partition.to_string())];
        metrics::gauge!(METRIC_LAG_RECORDS, &labels).set(0.0);
        metrics::gauge!(METRIC_LAG_SECONDS, &labels).set(0.0);
    }

    /// A takeover of `partition` (lease held, marker persisted): its follower catches up to
    /// the partition's end, and the view's auctions move into `into`. `None`: no view to
    /// hand over (not followed, or its follower stopped or failed to catch up) — replay the
    /// partition instead; an error: the move failed midway (`into` holds part of it).
    pub(crate) fn hand_over(
        &self,
        partition: i32,
        into: &Engine,
    ) -> Option<Result<(i64, ReplaySummary)>> {
        let followed = self.view_of(partition)?;
        // Ordering: Release pairs with the follower's Acquire load.
        followed.hand_over.store(true, Ordering::Release);
        self.join_threads(|p| p == partition);
        let (next_offset, summary) = lock(&followed.handed).take()?;
        let (auctions, pruned) = followed.engine.snapshot_with_pruned();
        let parts = SnapshotParts {
            lsn: 0,
            taken_at: UnixMicros(0),
            auctions,
            pruned,
            kafka: None,
        };
        let what = format!("the view of partition {partition}");
        let mut report = crate::node::RecoveryReport::default();
        let moved = crate::node::restore_parts(into, parts, &what, |_| true, &mut report);
        Some(moved.map(|()| (next_offset, summary)))
    }

    /// Stops every follower thread (shutdown).
    pub(crate) fn stop(&self) {
        self.stop_threads(|_| true);
    }

    fn stop_threads(&self, which: impl Fn(i32) -> bool) {
        for followed in self.all().iter().filter(|f| which(f.partition)) {
            // Ordering: Release pairs with the follower's Acquire load.
            followed.stop.store(true, Ordering::Release);
        }
        self.join_threads(which);
    }

    fn join_threads(&self, which: impl Fn(i32) -> bool) {
        let stopping: Vec<_> = {
            let mut threads = lock(&self.threads);
            let (stopping, kept) = threads.drain(..).partition(|(p, _)| which(*p));
            *threads = kept;
            stopping
        };
        for (_, handle) in stopping {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Why a follower's reading stopped.
enum Stop {
    /// Asked to.
    Asked,
    /// Asked to hand over, and caught up to the partition's end.
    CaughtUp,
    /// The reader failed: open another at the position reached.
    Reader(WalError),
    /// A record cannot be applied: the follower stops for good.
    Record(anyhow::Error),
}

/// A follower thread: reads its partition into its view, from `start` (its beginning if
/// `None`), until stopped or a record fails.
fn follow(followed: &Followed, source: &Source, mut start: Option<KafkaPosition>) {
    let partition = followed.partition;
    let mut replayer = Replayer::new(&followed.engine);
    let since = Instant::now();
    // Ordering: Acquire pairs with the Release stores of `stop_threads` and `hand_over` (a
    // hand-over asked between two readers hands nothing over: the partition is replayed).
    let asked =
        || followed.stop.load(Ordering::Acquire) || followed.hand_over.load(Ordering::Acquire);
    while !asked() {
        let opened = KafkaRecords::follow(&source.config, partition, start.as_ref());
        let mut records = match opened {
            Ok(records) => records.check_placement(source.partitioner),
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot open the follower's reader; retrying");
                std::thread::sleep(REOPEN_PAUSE);
                continue;
            }
        };
        let live = start.is_some();
        let stopped = read(followed, source, &mut records, &mut replayer, (live, since));
        if followed.hand_over.load(Ordering::Acquire) {
            if let Stop::CaughtUp = stopped {
                let next_offset = records.next_offset(partition);
                *lock(&followed.handed) = Some((next_offset, replayer.finish()));
            }
            return;
        }
        match stopped {
            Stop::Asked | Stop::CaughtUp => return,
            Stop::Reader(e) => {
                tracing::warn!(partition, error = %e, "the follower's reader failed; reopening it");
                start = Some(records.position());
                std::thread::sleep(REOPEN_PAUSE);
            }
            Stop::Record(e) => {
                let reason = format!("{e:#}");
                tracing::error!(partition, error = %reason, "a followed record cannot be applied; this partition's view stops here");
                let labels = [("partition", partition.to_string())];
                metrics::counter!(METRIC_ERRORS, &labels).increment(1);
                *lock(&followed.failed) = Some(reason);
                // The lag goes on growing with what the owner writes, and says so.
                while !asked() {
                    measure(followed, &records, since);
                    std::thread::sleep(LAG_EVERY);
                }
                return;
            }
        }
    }
}

/// Reads `records` into the view until stopped or an error; `live`: the reading starts past
/// the partition's first end (a reopened reader), `since`: when following began.
fn read(
    followed: &Followed,
    source: &Source,
    records: &mut KafkaRecords,
    replayer: &mut Replayer<'_>,
    (mut live, since): (bool, Instant),
) -> Stop {
    let mut measured = Instant::now() - LAG_EVERY;
    // Ordering: Acquire pairs with `stop_threads`' Release store.
    while !followed.stop.load(Ordering::Acquire) {
        if followed.hand_over.load(Ordering::Acquire) {
            return catch_up(followed, source, records, replayer);
        }
        if let Some(stop) = read_one(followed, source, records, replayer, live) {
            return stop;
        }
        live = live || records.reached_end();
        if measured.elapsed() >= LAG_EVERY {
            measured = Instant::now();
            measure(followed, records, since);
        }
    }
    Stop::Asked
}

/// Polls one record and applies it to the view (telling the fan-out); `Some` if reading
/// must stop.
fn read_one(
    followed: &Followed,
    source: &Source,
    records: &mut KafkaRecords,
    replayer: &mut Replayer<'_>,
    live: bool,
) -> Option<Stop> {
    match records.poll_record(POLL)? {
        Ok(record) => {
            let applied = decode_at(&record.payload, record.lsn)
                .and_then(|event| apply_at(replayer, &event, record.lsn).map(|()| event));
            match applied {
                Ok(event) => announce(source, &followed.engine, &event, live),
                Err(e) => return Some(Stop::Record(e)),
            }
            None
        }
        Err(e) => Some(Stop::Reader(e)),
    }
}

/// A takeover's end of following: reads on to the partition's high watermark as asked of the
/// broker now (the takeover marker, persisted before, is below it), within [`CATCH_UP_MAX`].
fn catch_up(
    followed: &Followed,
    source: &Source,
    records: &mut KafkaRecords,
    replayer: &mut Replayer<'_>,
) -> Stop {
    let partition = followed.partition;
    let high = match records.watermarks(partition, LAG_TIMEOUT) {
        Ok((_, high)) => high,
        Err(e) => return Stop::Reader(e),
    };
    let deadline = Instant::now() + CATCH_UP_MAX;
    while records.next_offset(partition) < high {
        if Instant::now() > deadline {
            let reason = format!("not at offset {high} of partition {partition} in time");
            return Stop::Record(anyhow::anyhow!(reason));
        }
        if let Some(stop) = read_one(followed, source, records, replayer, true) {
            return stop;
        }
    }
    Stop::CaughtUp
}

/// Tells the fan-out of an applied record: its auction changed, and a settlement read live
/// goes to the watchers (once: the `Settled` record comes once).
fn announce(source: &Source, engine: &Engine, event: &gavel_engine::Event, live: bool) {
    let Some(hub) = source.hub.get() else {
        return;
    };
    hub.changed(event.auction);
    if live
        && matches!(event.kind, EventKind::Settled(_))
        && let Some(view) = engine.view(event.auction, now_micros())
    {
        hub.settled(&view, now_micros());
    }
}

/// Measures the follower's lag (a watermark request) and publishes it.
fn measure(followed: &Followed, records: &KafkaRecords, since: Instant) {
    let partition = followed.partition;
    let behind = match records.behind(partition, LAG_TIMEOUT) {
        Ok(behind) => behind,
        Err(e) => {
            tracing::debug!(partition, error = %e, "cannot measure the follower's lag");
            return;
        }
    };
    let lag_ms = if behind == 0 {
        0
    } else {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        records.last_timestamp_ms().map_or_else(
            || since.elapsed().as_millis() as u64,
            |at| u64::try_from(now_ms - at).unwrap_or(0),
        )
    };
    // Ordering: Relaxed — statistics.
    followed.lag_records.store(behind, Ordering::Relaxed);
    followed.lag_ms.store(lag_ms, Ordering::Relaxed);
    let labels = [("partition", partition.to_string())];
    metrics::gauge!(METRIC_LAG_RECORDS, &labels).set(behind as f64);
    metrics::gauge!(METRIC_LAG_SECONDS, &labels).set(lag_ms as f64 / 1e3);
}
