//! [`KafkaLog`]: the producer side of the Kafka log — local LSNs, the bounded in-flight
//! queue, delivery reports and the durability rule (see the [module docs](super)).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use super::client::{KafkaConfig, check_producer_config, ensure_topic, error_code, kafka_error};
use super::fence::{LeaseClock, WriterLease};
use super::reader::{KafkaPosition, KafkaRecords};
use super::sender::{self, META_BYTES};
use super::{EPOCH_HEADER, Partitioner, TAKEOVER_HEADER};
use crate::durability::{Durability, LogStatus, batch_bytes, lock};
use crate::error::{AppendError, LogFailure, Persistence, WalError};
use crate::writer::ring::{Bounds, Refusal, Ring};
use crate::{Lsn, WalMetrics};

/// Delivery reports, by `status`: `persisted`, `not_persisted`, `possibly_persisted`,
/// `error` (a failed delivery, whatever its persistence status).
pub const METRIC_DELIVERIES: &str = "gavel_wal_kafka_deliveries_total";
/// Produce → delivery report time of `PERSISTED` records, seconds.
pub const METRIC_DELIVERY_SECONDS: &str = "gavel_wal_kafka_delivery_seconds";
/// Records produced and not yet reported (published by the node from
/// [`KafkaLog::metrics`]).
pub const METRIC_IN_FLIGHT_RECORDS: &str = "gavel_wal_kafka_in_flight_records";
/// Payload bytes produced and not yet reported (likewise).
pub const METRIC_IN_FLIGHT_BYTES: &str = "gavel_wal_kafka_in_flight_bytes";
/// Times this node stopped because a partition's writer lease may have lapsed (a heartbeat
/// not persisted in time, or a delivery reported after the lease).
pub const METRIC_FENCED: &str = "gavel_wal_kafka_fenced_total";
/// Send times kept for the delivery latency, a ring indexed by LSN (a power of two; with more
/// records in flight, a colliding entry only skews one latency sample).
const SENT_AT_RING: usize = 1 << 16;

/// Retry hint on back-pressure: about one produce round trip on a healthy broker.
const BACKPRESSURE_RETRY_AFTER_US: u64 = 10_000;
/// Longest [`KafkaLog::shutdown`] waits for the reports of the records in flight.
const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(30);
// The delivery opaque carries an LSN as a `usize`.
const _: () = assert!(usize::BITS >= u64::BITS);

/// The delivery reports' bookkeeping (appends do not take its lock: they claim LSNs in the
/// ring, and the sender thread produces in LSN order).
#[derive(Debug)]
struct InFlight {
    /// The durable LSN as this struct last advanced it.
    durable: Lsn,
    /// LSNs above `durable + 1` already reported `PERSISTED`, with their partition and
    /// offset (bounded by `records`).
    persisted: BTreeMap<Lsn, (i32, i64)>,
    /// Per partition, the offset after the last record the durable prefix covers (records
    /// replayed at start included); negative: nothing yet, the partition's beginning.
    offsets: Vec<i64>,
}

#[derive(Debug, Default)]
struct Counters {
    records_persisted: AtomicU64,
    bytes_persisted: AtomicU64,
    backpressure: AtomicU64,
    /// Records appended and not yet reported (the in-flight bound).
    in_flight_records: AtomicUsize,
    /// Their payload bytes.
    in_flight_bytes: AtomicUsize,
}

/// Per partition, the clock of this node's lease on it (unset: not owned; set at open or at
/// a takeover, unset when the partition is given up).
#[derive(Debug)]
struct Fences {
    topic: String,
    clocks: Vec<RwLock<Option<Arc<LeaseClock>>>>,
}

impl Fences {
    fn slot(&self, partition: i32) -> Option<&RwLock<Option<Arc<LeaseClock>>>> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.clocks.get(p))
    }

    fn live(&self, partition: i32) -> bool {
        self.slot(partition).is_some_and(|slot| {
            let clock = slot.read().expect("lease clock lock poisoned");
            clock.as_ref().is_some_and(|clock| clock.live())
        })
    }

    fn set(&self, partition: i32, clock: Option<Arc<LeaseClock>>) {
        if let Some(slot) = self.slot(partition) {
            *slot.write().expect("lease clock lock poisoned") = clock;
        }
    }
}

/// A partition taken over by a running node ([`KafkaLog::take_over`]): its lease is held and
/// its marker written; bring the state to the partition's end past the marker (replay it
/// from [`KafkaLog::reader`], or go on reading it from where a follower was), then
/// [`KafkaLog::activate`] it.
#[derive(Debug)]
pub struct Takeover {
    partition: i32,
    epoch: u64,
}

impl Takeover {
    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The owner epoch it is taken over under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

pub(super) struct Shared {
    durability: Arc<Durability>,
    /// Set once the partitions' leases are held: a report for a partition whose lease is not
    /// certainly held fails the log (see [`LeaseClock`]).
    fences: OnceLock<Fences>,
    /// The log's status and the LSNs; the records appended until the sender thread
    /// produces them.
    pub(super) ring: Ring,
    in_flight: Mutex<InFlight>,
    counters: Counters,
    /// When each in-flight LSN was produced, µs after `epoch`, at `lsn % SENT_AT_RING`.
    sent_at_us: Box<[AtomicU64]>,
    epoch: Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("durable_lsn", &self.durability.durable_lsn())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Open, with the in-flight bound of `config` (the ring holds at least as many records:
    /// a record leaves it when produced, before its report).
    fn new(in_flight: InFlight, config: &KafkaConfig) -> Shared {
        let bounds = Bounds {
            records_max: config.queue_records_max,
            // The byte bound is the in-flight one, checked before the claim.
            bytes_max: usize::MAX / 2,
            // The sender never gathers.
            batch_records_max: 1,
            batch_bytes_max: 0,
        };
        Shared {
            durability: Arc::new(Durability::new(0)),
            fences: OnceLock::new(),
            ring: Ring::new(1, bounds),
            in_flight: Mutex::new(in_flight),
            counters: Counters::default(),
            sent_at_us: (0..SENT_AT_RING).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    pub(super) fn sent_slot(&self, lsn: Lsn) -> &AtomicU64 {
        &self.sent_at_us[lsn as usize % SENT_AT_RING]
    }

    /// Microseconds since `epoch`.
    pub(super) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// A delivery outcome, reduced to what the durability rule needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Persisted at this partition and offset.
    Persisted(i32, i64),
    /// Anything else: a report that succeeded with another status, or an error (`code`).
    Failed {
        status: Persistence,
        code: Option<RDKafkaErrorCode>,
    },
}

impl Shared {
    /// Applies one delivery report (see the module docs for the rule).
    fn delivered(&self, lsn: Lsn, bytes: usize, outcome: Outcome) {
        // Ordering: Release pairs with the appenders' AcqRel bound check (a freed place is
        // seen with everything before it).
        self.counters
            .in_flight_records
            .fetch_sub(1, Ordering::Release);
        self.counters
            .in_flight_bytes
            .fetch_sub(bytes, Ordering::Release);
        let mut in_flight = lock(&self.in_flight);
        if self.ring.status() == LogStatus::Failed {
            // The durable LSN never moves after a failure, even for later successes.
            return;
        }
        match outcome {
            Outcome::Persisted(partition, _)
                if self.fences.get().is_some_and(|f| !f.live(partition)) =>
            {
                drop(in_flight);
                let topic = self
                    .fences
                    .get()
                    .map(|f| f.topic.clone())
                    .unwrap_or_default();
                self.fail(LogFailure::Fenced {
                    topic,
                    partition,
                    lsn,
                });
            }
            Outcome::Persisted(partition, offset) => {
                // Ordering: Relaxed — statistics; the durable LSN is the synchronising store.
                self.counters
                    .records_persisted
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_persisted
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                in_flight.persisted.insert(lsn, (partition, offset));
                let mut durable = in_flight.durable;
                while let Some((partition, offset)) = in_flight.persisted.remove(&(durable + 1)) {
                    durable += 1;
                    // One producer, in order per partition: offsets grow with LSNs.
                    let next = usize::try_from(partition)
                        .ok()
                        .and_then(|p| in_flight.offsets.get_mut(p));
                    if let Some(next) = next {
                        *next = (*next).max(offset + 1);
                    }
                }
                if durable > in_flight.durable {
                    in_flight.durable = durable;
                    // Under the in-flight lock: reports also come from `flush`'s thread, and
                    // two advances must not store out of order.
                    self.durability.advance(durable);
                }
            }
            Outcome::Failed { status, code } => {
                drop(in_flight);
                self.fail(LogFailure::NotPersisted { lsn, status, code });
            }
        }
    }

    /// Fails the log for good: nothing more is appended, produced or becomes durable.
    pub(super) fn fail(&self, why: LogFailure) {
        if matches!(
            why,
            LogFailure::Fenced { .. } | LogFailure::LeaseLost { .. }
        ) {
            metrics::counter!(METRIC_FENCED).increment(1);
        }
        {
            // Under the lock: a report applied after this sees the failure.
            let _in_flight = lock(&self.in_flight);
            self.ring.set_status(LogStatus::Failed);
        }
        self.durability.record_failure(why);
        self.durability.finish(LogStatus::Failed);
    }
}

/// The producer's context: turns delivery reports into [`Shared::delivered`].
pub(super) struct DeliveryContext {
    shared: Arc<Shared>,
    /// Handles for the common case, looked up once (not per delivery report).
    delivery_seconds: metrics::Histogram,
    persisted: metrics::Counter,
}

impl ClientContext for DeliveryContext {}

/// The persistence status librdkafka gives a produced message.
#[allow(unsafe_code)]
fn persistence(message: &BorrowedMessage<'_>) -> Persistence {
    use rdkafka::bindings::rd_kafka_msg_status_t as Status;
    // SAFETY: `message.ptr()` is the live `rd_kafka_message_t` of this delivery report,
    // borrowed for the duration of the callback; `rd_kafka_message_status` only reads it.
    match unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) } {
        Status::RD_KAFKA_MSG_STATUS_PERSISTED => Persistence::Persisted,
        Status::RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED => Persistence::PossiblyPersisted,
        Status::RD_KAFKA_MSG_STATUS_NOT_PERSISTED => Persistence::NotPersisted,
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, lsn: usize) {
        let lsn = lsn as Lsn;
        let (bytes, outcome, status_label) = match result {
            Ok(message) => match persistence(message) {
                Persistence::Persisted => {
                    let shared = &self.shared;
                    // Ordering: Relaxed — a statistic; the slot was stored before the send.
                    let sent_us = shared.sent_slot(lsn).load(Ordering::Relaxed);
                    let now_us = shared.epoch.elapsed().as_micros() as u64;
                    self.delivery_seconds
                        .record(now_us.saturating_sub(sent_us) as f64 / 1e6);
                    let outcome = Outcome::Persisted(message.partition(), message.offset());
                    (message.payload_len(), outcome, "persisted")
                }
                status => {
                    let outcome = Outcome::Failed { status, code: None };
                    (message.payload_len(), outcome, status.label())
                }
            },
            Err((error, message)) => {
                let outcome = Outcome::Failed {
                    status: persistence(message),
                    code: Some(error_code(error)),
                };
                (message.payload_len(), outcome, "error")
            }
        };
        if status_label == "persisted" {
            self.persisted.increment(1);
        } else {
            metrics::counter!(METRIC_DELIVERIES, "status" => status_label).increment(1);
        }
        self.shared.delivered(lsn, bytes, outcome);
    }
}

/// The write-ahead log on a Kafka topic; see the module docs.
pub struct KafkaLog {
    shared: Arc<Shared>,
    producer: ThreadedProducer<DeliveryContext>,
    config: KafkaConfig,
    /// The topic's partition count at open, and the key → partition map over it.
    partitions: i32,
    partitioner: Partitioner,
    /// Per partition, the owner epoch this node writes it under (0: not owned).
    epochs: Vec<AtomicU64>,
    /// Per partition, appends are refused for now (a group rebalance revoked it; see
    /// [`KafkaLog::pause`]).
    paused: Vec<AtomicBool>,
    /// Per partition, appends between their ownership checks and their claim (see
    /// [`KafkaLog::quiesce`]).
    appending: Vec<AtomicUsize>,
    /// Per partition, new decisions are refused for now but appends still accepted: the
    /// moment before a pause, for the decisions already past the ownership check to land
    /// (see [`KafkaLog::close`]).
    closing: Vec<AtomicBool>,
    /// The owned partitions' writer leases, released at shutdown.
    leases: Mutex<Vec<WriterLease>>,
    /// The sender thread, joined at shutdown.
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic)
            .field("durable_lsn", &self.shared.durability.durable_lsn())
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Checks the configuration, reaches the brokers (an unreachable broker is
    /// [`WalError::KafkaUnreachable`] after `connect_timeout_ms`), creates the topic when
    /// missing, starts the idempotent producer, and opens the recovery reader positioned at
    /// `start` (a snapshot's position) or at the beginning of every partition. Every record
    /// goes to the partition `partitioner` names for its key, and the reader refuses one
    /// found elsewhere. Read the records to their end, then call [`KafkaLog::resume`] before
    /// the first append.
    pub fn open(
        config: KafkaConfig,
        start: Option<&KafkaPosition>,
        partitioner: Partitioner,
    ) -> Result<(KafkaLog, KafkaRecords), WalError> {
        config.validate()?;
        let producer_config = config.producer_config();
        check_producer_config(&producer_config)?;
        let partitions = ensure_topic(&config)?;
        let shared = Arc::new(Shared::new(
            InFlight {
                durable: 0,
                persisted: BTreeMap::new(),
                offsets: Vec::new(),
            },
            &config,
        ));
        // One writer per partition: its lease, then a takeover marker under the new epoch,
        // come before reading, so whatever a former owner still writes lands after the marker
        // with an older epoch and every replay skips it. Losing a lease fails the log
        // (nothing more is acknowledged).
        let owned = config.owned_in(partitions)?;
        let leases = acquire_leases(&config, &owned, &shared)?;
        let slots = usize::try_from(partitions).unwrap_or(0);
        let epochs: Vec<AtomicU64> = (0..slots).map(|_| AtomicU64::new(0)).collect();
        let fences = Fences {
            topic: config.topic.clone(),
            clocks: (0..slots).map(|_| RwLock::new(None)).collect(),
        };
        let held: Vec<(i32, u64)> = owned
            .iter()
            .zip(&leases)
            .map(|(&p, l)| (p, l.epoch()))
            .collect();
        write_markers(&config, &held)?;
        for (&p, lease) in owned.iter().zip(&leases) {
            // Ordering: Relaxed — published to other threads with the log itself.
            epochs[p as usize].store(lease.epoch(), Ordering::Relaxed);
            fences.set(p, Some(Arc::clone(lease.clock())));
        }
        let _ = shared.fences.set(fences);
        let records = KafkaRecords::open_at(&config, start)?.check_placement(partitioner);
        let producer: ThreadedProducer<DeliveryContext> = producer_config
            .create_with_context(DeliveryContext {
                shared: Arc::clone(&shared),
                delivery_seconds: metrics::histogram!(METRIC_DELIVERY_SECONDS),
                persisted: metrics::counter!(METRIC_DELIVERIES, "status" => "persisted"),
            })
            .map_err(kafka_error("create the producer", &config.brokers))?;
        let sender = sender::spawn(Arc::clone(&shared), producer.clone(), config.topic.clone())?;
        Ok((
            KafkaLog {
                shared,
                producer,
                config,
                partitions,
                partitioner,
                epochs,
                paused: (0..slots).map(|_| AtomicBool::new(false)).collect(),
                appending: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
                closing: (0..slots).map(|_| AtomicBool::new(false)).collect(),
                leases: Mutex::new(leases),
                sender: Mutex::new(Some(sender)),
            },
            records,
        ))
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Continues after the recovery reader `records` was read to its end: local LSNs go on
    /// after its last one (so snapshot LSNs grow across restarts) and the durable position
    /// starts where it stopped. Call once, before the first append.
    pub fn resume(&self, records: &KafkaRecords) {
        let mut in_flight = lock(&self.shared.in_flight);
        assert!(
            self.shared.ring.last_claimed() == 0,
            "KafkaLog::resume after an append is a bug"
        );
        let last = records.last_lsn();
        self.shared.ring.restart_at(last + 1);
        in_flight.durable = last;
        in_flight.offsets = records.next_offsets().to_vec();
        self.shared.durability.advance(last);
    }

    /// The durable LSN and, consistent with it, per partition the offset after the last
    /// record it covers: a snapshot of state that includes every record up to the LSN can be
    /// replayed from these offsets (every record below them is at or below the LSN, or was
    /// replayed at start).
    pub fn durable_position(&self) -> KafkaPosition {
        let in_flight = lock(&self.shared.in_flight);
        // An owned partition's offsets are past its takeover marker (read at open or
        // takeover): the highest epoch below them is this node's.
        let epochs = (0..self.epochs.len() as i32)
            .map(|p| self.epoch_of(p))
            .collect();
        KafkaPosition {
            lsn: in_flight.durable,
            topic: self.config.topic.clone(),
            next_offsets: in_flight.offsets.clone(),
            epochs,
        }
    }

    /// Produces `payloads` — the events of one decision, all about the auction `key` — with
    /// contiguous LSNs, and returns the LSN of the last one. All or none: the bounds are
    /// checked for the whole batch before anything is produced. The records are durable once
    /// [`Log::durable_lsn`](crate::Log::durable_lsn) reaches the LSN.
    pub fn append_batch<P: AsRef<[u8]>>(
        &self,
        key: u64,
        payloads: &[P],
    ) -> Result<Lsn, AppendError> {
        let batch_bytes = batch_bytes(payloads)?;
        let ring = &self.shared.ring;
        ring.status().check_open()?;
        if payloads.is_empty() {
            return Ok(ring.last_claimed());
        }
        let partition = (self.partitioner)(key, self.partitions);
        let Some(appending) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.appending.get(p))
        else {
            return Err(AppendError::NotOwner { partition });
        };
        // Ordering: Relaxed, then the fence: see `quiesce`.
        appending.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let appended = self.append_owned(key, partition, payloads, batch_bytes);
        // Ordering: Release; `quiesce` reads it with Acquire after this append's claim.
        appending.fetch_sub(1, Ordering::Release);
        appended
    }

    /// [`KafkaLog::append_batch`] once counted in `appending`: the ownership checks, the
    /// in-flight bound, and the claim of the LSNs in the ring (the sender thread produces
    /// them).
    fn append_owned<P: AsRef<[u8]>>(
        &self,
        key: u64,
        partition: i32,
        payloads: &[P],
        batch_bytes: usize,
    ) -> Result<Lsn, AppendError> {
        let epoch = self.epoch_of(partition);
        if epoch == 0 || self.is_paused(partition) {
            return Err(AppendError::NotOwner { partition });
        }
        let n = payloads.len();
        let counters = &self.shared.counters;
        // Ordering: AcqRel — the count is the bound; a refusal gives it back below.
        let records = counters.in_flight_records.fetch_add(n, Ordering::AcqRel);
        let bytes = counters
            .in_flight_bytes
            .fetch_add(batch_bytes, Ordering::AcqRel);
        // As in the file log, a batch larger than a bound is admitted when nothing is in
        // flight, so it is never refused for ever.
        let full = records > 0
            && (records + n > self.config.queue_records_max
                || bytes + batch_bytes > self.config.queue_bytes_max);
        let appended = if full {
            Err(Refusal::Full)
        } else {
            let meta = sender::meta(key, partition, epoch);
            let slot_bytes = batch_bytes + n * META_BYTES;
            self.shared.ring.append(&meta, payloads, slot_bytes)
        };
        appended.map_err(|refusal| {
            // Ordering: AcqRel; see above.
            counters.in_flight_records.fetch_sub(n, Ordering::AcqRel);
            counters
                .in_flight_bytes
                .fetch_sub(batch_bytes, Ordering::AcqRel);
            match refusal {
                Refusal::Full => {
                    // Ordering: Relaxed — a statistic.
                    counters.backpressure.fetch_add(1, Ordering::Relaxed);
                    AppendError::Backpressure {
                        retry_after_us: BACKPRESSURE_RETRY_AFTER_US,
                    }
                }
                Refusal::Stopped(error) => error,
            }
        })
    }

    /// Waits until no append to partition `p` is between its ownership checks and its claim,
    /// after a change of the partition's epoch or pause flag: every append that claims later
    /// sees the change. (An append counts itself in `appending` and then, after a `SeqCst`
    /// fence, reads the flags; this changes them, fences, and then reads the count: one of
    /// the two sees the other.)
    fn quiesce(&self, p: usize) {
        fence(Ordering::SeqCst);
        // Ordering: Acquire pairs with the appenders' Release decrement.
        while self.appending[p].load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
    }

    /// The owner epoch this node writes `partition` under; 0 if it does not own it.
    pub fn epoch_of(&self, partition: i32) -> u64 {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.epochs.get(p))
            // Ordering: Acquire pairs with `activate`'s Release: an append that sees the
            // epoch sees the partition's offsets set.
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The partition of an auction (the key → partition map the log writes by).
    pub fn partition_of(&self, key: u64) -> i32 {
        (self.partitioner)(key, self.partitions)
    }

    /// Whether this node writes `partition` (owned from the start, or taken over and
    /// activated).
    pub fn owns(&self, partition: i32) -> bool {
        self.epoch_of(partition) != 0
    }

    /// Takes `partition` over while running: its lease (waiting out a lapsed holder's, or
    /// refused with [`WalError::KafkaFenced`] while it lives), then a takeover marker under
    /// the new epoch. Appends to it stay refused until [`KafkaLog::activate`]. Blocks for up
    /// to about twice the lease.
    pub fn take_over(&self, partition: i32) -> Result<Takeover, WalError> {
        let fences = (self.shared.fences.get())
            .expect("invariant: KafkaLog::open sets the fences before returning the log");
        let unowned = fences
            .slot(partition)
            .is_some_and(|s| s.read().expect("lease clock lock poisoned").is_none());
        if !unowned {
            return Err(WalError::Kafka {
                op: "take a partition over",
                brokers: self.config.brokers.clone(),
                reason: format!("partition {partition} is owned already or does not exist"),
            });
        }
        let mut lease = acquire_leases(&self.config, &[partition], &self.shared)?;
        let lease = lease
            .pop()
            .expect("invariant: one lease per partition asked");
        let epoch = lease.epoch();
        // Any failure so far drops the lease, which releases it.
        write_markers(&self.config, &[(partition, epoch)])?;
        fences.set(partition, Some(Arc::clone(lease.clock())));
        lock(&self.leases).push(lease);
        Ok(Takeover { partition, epoch })
    }

    /// A reader of `partition` from its beginning, with the placement check (a takeover's
    /// replay).
    pub fn reader(&self, partition: i32) -> Result<KafkaRecords, WalError> {
        let records = KafkaRecords::follow(&self.config, partition, None)?;
        Ok(records.check_placement(self.partitioner))
    }

    /// Fails the log for good because the replay of a partition taken over failed: the state
    /// holds part of it, which no retry can mend; the node stops and releases its leases.
    pub fn fail_takeover(&self, takeover: &Takeover, reason: String) {
        self.shared.fail(LogFailure::Takeover {
            partition: takeover.partition,
            reason,
        });
    }

    /// Starts writing a partition taken over once the state holds its records up to
    /// `next_offset` (its end, past the marker): its position in later snapshots is there,
    /// and appends to it are accepted.
    pub fn activate(&self, takeover: &Takeover, next_offset: i64) {
        let p = takeover.partition as usize;
        {
            let mut in_flight = lock(&self.shared.in_flight);
            if let Some(offset) = in_flight.offsets.get_mut(p) {
                *offset = next_offset;
            }
        }
        // Ordering: Relaxed — published by the epoch's Release below (appends read the
        // epoch first).
        self.paused[p].store(false, Ordering::Relaxed);
        self.closing[p].store(false, Ordering::Relaxed);
        // Ordering: Release pairs with `epoch_of`'s Acquire.
        self.epochs[p].store(takeover.epoch, Ordering::Release);
    }

    fn is_paused(&self, partition: i32) -> bool {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.paused.get(p))
            // Ordering: Relaxed — appends read it after their `SeqCst` fence (see `quiesce`).
            .is_some_and(|paused| paused.load(Ordering::Relaxed))
    }

    /// Whether this node takes new decisions on `partition` now: owned, and neither closed
    /// nor paused.
    pub fn accepts(&self, partition: i32) -> bool {
        let closing = usize::try_from(partition)
            .ok()
            .and_then(|p| self.closing.get(p))
            // Ordering: Relaxed — a hint for routing; the pause is the barrier.
            .is_some_and(|c| c.load(Ordering::Relaxed));
        self.owns(partition) && !closing && !self.is_paused(partition)
    }

    /// Stops taking new decisions on `partition` ([`KafkaLog::accepts`] is false) while
    /// still accepting appends, so that a decision already past the ownership check lands;
    /// [`KafkaLog::pause`] it a moment later. Undone by [`KafkaLog::unpause`].
    pub fn close(&self, partition: i32) {
        if let Some(closing) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.closing.get(p))
        {
            // Ordering: Relaxed — see `accepts`.
            closing.store(true, Ordering::Relaxed);
        }
    }

    /// Refuses appends to the owned `partition` from now on (a group rebalance revokes it),
    /// keeping its lease; returns the last LSN appended before (wait for it to be durable
    /// before giving the partition up), `None` if the partition is not owned. Undone by
    /// [`KafkaLog::unpause`].
    pub fn pause(&self, partition: i32) -> Option<Lsn> {
        // The in-flight lock orders the changes of ownership among themselves.
        let _in_flight = lock(&self.shared.in_flight);
        let p = usize::try_from(partition).ok()?;
        if !self.owns(partition) {
            return None;
        }
        // Ordering: Relaxed — `quiesce` fences after it.
        self.paused[p].store(true, Ordering::Relaxed);
        self.quiesce(p);
        Some(self.shared.ring.last_claimed())
    }

    /// Accepts appends to a paused partition again (the rebalance gave it back).
    pub fn unpause(&self, partition: i32) {
        let _in_flight = lock(&self.shared.in_flight);
        if let Some(p) = usize::try_from(partition)
            .ok()
            .filter(|&p| p < self.paused.len())
        {
            // Ordering: Relaxed — an append that reads the old value is refused, no harm.
            self.paused[p].store(false, Ordering::Relaxed);
            self.closing[p].store(false, Ordering::Relaxed);
        }
    }

    /// Gives the owned `partition` up (a group rebalance moved it to another node): no more
    /// appends, its lease released so the next owner need not wait for it to lapse. Call it
    /// once what was appended to it is durable ([`KafkaLog::pause`]): a delivery report for
    /// it from now on fails the log. Returns the offset after its last durable record and
    /// the epoch it was written under (where a follower of it goes on); `None` if not owned.
    pub fn give_up(&self, partition: i32) -> Option<(i64, u64)> {
        let p = usize::try_from(partition).ok()?;
        let (next_offset, epoch) = {
            let in_flight = lock(&self.shared.in_flight);
            let epoch = self.epoch_of(partition);
            if epoch == 0 {
                return None;
            }
            // Ordering: Release pairs with `epoch_of`'s Acquire. Appends see the epoch 0
            // (after `quiesce`) before they see the pause lifted.
            self.epochs[p].store(0, Ordering::Release);
            self.quiesce(p);
            // Ordering: Relaxed — the epoch refuses appends from now on.
            self.paused[p].store(false, Ordering::Relaxed);
            self.closing[p].store(false, Ordering::Relaxed);
            (in_flight.offsets.get(p).copied().unwrap_or(-1), epoch)
        };
        if let Some(fences) = self.shared.fences.get() {
            fences.set(partition, None);
        }
        let given: Vec<WriterLease> = {
            let mut leases = lock(&self.leases);
            let (given, kept) = leases.drain(..).partition(|l| l.partition() == partition);
            *leases = kept;
            given
        };
        for mut lease in given {
            lease.release();
        }
        Some((next_offset, epoch))
    }

    /// The last LSN assigned by an append so far (0 before the first).
    pub fn last_appended_lsn(&self) -> Lsn {
        self.shared.ring.last_claimed()
    }

    /// The durable LSN (the highest LSN such that it and every LSN below it were reported
    /// `PERSISTED`), its waiters and the failure, for [`Log`](crate::Log).
    pub(crate) fn durability(&self) -> &Arc<Durability> {
        &self.shared.durability
    }

    /// Why the log failed, if it did.
    pub fn failure(&self) -> Option<LogFailure> {
        self.shared.durability.failure()
    }

    /// The counters, for metrics (`batches_synced_total` and the sync latencies stay 0: a
    /// Kafka log has no syncs of its own).
    pub fn metrics(&self) -> WalMetrics {
        let c = &self.shared.counters;
        // Ordering: Relaxed — statistics, no data depends on them.
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let get_usize = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        let queue_records = get_usize(&c.in_flight_records);
        let queue_bytes = get_usize(&c.in_flight_bytes);
        WalMetrics {
            records_written_total: get(&c.records_persisted),
            bytes_written_total: get(&c.bytes_persisted),
            backpressure_total: get(&c.backpressure),
            durable_lsn: self.shared.durability.durable_lsn(),
            queue_records,
            queue_bytes,
            ..WalMetrics::default()
        }
    }

    /// Stops accepting appends and waits (up to 30 s) for the reports of every record in
    /// flight. Returns the final durable LSN, or the failure. Idempotent.
    pub fn shutdown(&self) -> Result<Lsn, WalError> {
        {
            let _in_flight = lock(&self.shared.in_flight);
            // Only an open log becomes closed (a failure stays).
            self.shared.ring.set_status(LogStatus::Closed);
        }
        // It produces what was appended before the close, then ends.
        if let Some(sender) = lock(&self.sender).take() {
            let _ = sender.join();
        }
        let flushed = self.producer.flush(Timeout::After(SHUTDOWN_FLUSH_MAX));
        if let Err(error) = flushed {
            // Ordering: Relaxed — the sender thread was joined; reports may still come.
            let unreported = (self.shared.counters.in_flight_records).load(Ordering::Relaxed);
            self.shared
                .durability
                .record_failure(LogFailure::Unflushed {
                    records: unreported,
                    waited_s: SHUTDOWN_FLUSH_MAX.as_secs(),
                    code: error_code(&error),
                });
        }
        // Nothing more is written: a successor may start at once.
        for mut lease in lock(&self.leases).drain(..) {
            lease.release();
        }
        if let Some(failure) = self.failure() {
            {
                let _in_flight = lock(&self.shared.in_flight);
                self.shared.ring.set_status(LogStatus::Failed);
            }
            self.shared.durability.finish(LogStatus::Failed);
            return Err(WalError::WriterFailed(failure));
        }
        self.shared.durability.finish(LogStatus::Closed);
        Ok(self.shared.durability.durable_lsn())
    }
}

/// Takes the writer lease of every partition in `owned`, in order; losing any later fails
/// `shared`'s log. A refusal releases the leases already taken.
fn acquire_leases(
    config: &KafkaConfig,
    owned: &[i32],
    shared: &Arc<Shared>,
) -> Result<Vec<WriterLease>, WalError> {
    owned
        .iter()
        .map(|&partition| {
            let shared = Arc::clone(shared);
            WriterLease::acquire(config, partition, &config.owner, move |why| {
                shared.fail(why);
            })
        })
        .collect()
}

/// Writes a takeover marker — no payload, the headers [`EPOCH_HEADER`] and
/// [`TAKEOVER_HEADER`] — to every `(partition, epoch)` held and waits until each is
/// persisted. A reader raises the partition's epoch at the marker, so records of an older
/// owner after it are skipped, and everything before it is in this node's replay.
fn write_markers(config: &KafkaConfig, held: &[(i32, u64)]) -> Result<(), WalError> {
    const OP: &str = "write a takeover marker";
    let brokers = config.brokers.as_str();
    let refused = |reason: String| WalError::Kafka {
        op: OP,
        brokers: brokers.to_owned(),
        reason,
    };
    let producer: BaseProducer<MarkerReports> = config
        .lease_producer_config()
        .create_with_context(MarkerReports::default())
        .map_err(kafka_error("create the takeover producer", brokers))?;
    for &(partition, epoch) in held {
        let epoch = epoch.to_be_bytes();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: EPOCH_HEADER,
                value: Some(&epoch),
            })
            .insert(Header {
                key: TAKEOVER_HEADER,
                value: Some(config.owner.as_str()),
            });
        let record = BaseRecord::<(), [u8]>::to(&config.topic)
            .partition(partition)
            .payload(&[])
            .headers(headers);
        producer
            .send(record)
            .map_err(|(e, _)| kafka_error(OP, brokers)(e))?;
    }
    // The marker producer's message timeout is the lease: every report comes by then.
    let deadline = Instant::now() + Duration::from_millis(config.writer_lease_ms + 1_000);
    loop {
        producer.poll(Timeout::After(Duration::from_millis(5)));
        let reports = lock(&producer.context().0);
        if let Some((partition, code)) = reports.iter().find_map(|r| r.err()) {
            return Err(refused(format!("partition {partition}: {code}")));
        }
        if reports.len() == held.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(refused(format!(
                "{} of {} markers reported persisted in time",
                reports.len(),
                held.len()
            )));
        }
    }
}

/// The takeover markers' delivery reports: the partition, or it and the error.
#[derive(Default)]
struct MarkerReports(Mutex<Vec<Result<i32, (i32, RDKafkaErrorCode)>>>);

impl ClientContext for MarkerReports {}

impl ProducerContext for MarkerReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let report = match result {
            Ok(message) => Ok(message.partition()),
            Err((error, message)) => Err((message.partition(), error_code(error))),
        };
        lock(&self.0).push(report);
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        // Waits for what is in flight; anything acknowledged durable is in the topic anyway.
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WaitError;

    fn shared() -> Shared {
        let shared = Shared::new(
            InFlight {
                durable: 0,
                persisted: BTreeMap::new(),
                offsets: vec![-1; 2],
            },
            &KafkaConfig::default(),
        );
        shared.ring.restart_at(6);
        let c = &shared.counters;
        c.in_flight_records.store(5, Ordering::Relaxed);
        c.in_flight_bytes.store(50, Ordering::Relaxed);
        shared
    }

    #[test]
    fn the_durable_lsn_advances_only_over_a_contiguous_persisted_prefix() {
        let s = shared();
        s.delivered(2, 10, Outcome::Persisted(0, 5));
        s.delivered(3, 10, Outcome::Persisted(1, 7));
        assert_eq!(s.durability.durable_lsn(), 0, "LSN 1 not reported yet");
        assert_eq!(lock(&s.in_flight).offsets, [-1, -1]);
        s.delivered(1, 10, Outcome::Persisted(0, 4));
        assert_eq!(s.durability.durable_lsn(), 3);
        assert_eq!(
            lock(&s.in_flight).offsets,
            [6, 8],
            "after the prefix's records"
        );
        s.delivered(5, 10, Outcome::Persisted(1, 9));
        assert_eq!(s.durability.durable_lsn(), 3);
        let in_flight = lock(&s.in_flight);
        assert_eq!(
            in_flight.offsets,
            [6, 8],
            "LSN 5 is beyond the durable prefix"
        );
        let c = &s.counters;
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        assert_eq!(
            (get(&c.in_flight_records), get(&c.in_flight_bytes)),
            (1, 10)
        );
    }

    #[test]
    fn a_report_that_is_not_persisted_fails_the_log_and_freezes_the_durable_lsn() {
        let s = shared();
        s.delivered(1, 10, Outcome::Persisted(0, 0));
        s.delivered(
            2,
            10,
            Outcome::Failed {
                status: Persistence::PossiblyPersisted,
                code: None,
            },
        );
        // Later successes never move it: LSN 3 could depend on LSN 2's auction state.
        s.delivered(3, 10, Outcome::Persisted(0, 0));
        assert_eq!(s.durability.durable_lsn(), 1);
        assert_eq!(
            s.durability.wait(3, Duration::from_secs(1)),
            Err(WaitError::Failed { durable: 1 })
        );
        assert_eq!(s.durability.wait(1, Duration::ZERO), Ok(1));
        let failure = s.durability.failure().unwrap().to_string();
        assert_eq!(
            failure,
            "the record at LSN 2 was not persisted: delivery succeeded with status \
             POSSIBLY_PERSISTED"
        );
    }
}
