//! [`WriterLease`]: one writer per partition of a Kafka topic — a lease held through records
//! in a lock topic `<topic>.writer.<partition>` (one partition, so every node sees the same
//! order of claims), and the partition's **owner epoch**.
//!
//! # The rule
//!
//! Records are `claim <owner> <lease_ms> [<advertise>]`, `beat <owner> <lease_ms>` and
//! `release <owner>`, each timestamped by its producer's clock; a claim's optional fourth word
//! is the claimant's [`KafkaConfig::advertise`] (where to reach it), which older readers
//! ignore. Folding the partition in order: a claim takes
//! the lease if nobody holds it or the holder's last claim/beat is `lease_ms` older than the
//! claim; a beat renews only a holder whose lease had not lapsed at the beat; a release by
//! the holder frees it. Every claim that wins raises the partition's owner epoch by one (from
//! 0, the epoch of records written before epochs existed), so every node folding the lock
//! topic agrees on it; the lock topics must keep their records (no retention, no compaction).
//!
//! A starting node reads the partition (within `connect_timeout_ms`). While another owner
//! holds a live lease it waits for that lease to lapse, plus [`LAPSE_MARGIN`] so that a beat
//! the holder sent just before the lapse is read before this node claims. That wait is bounded
//! by the lease, not by `connect_timeout_ms`: a successor started right after a crash takes
//! over once the dead holder's lease has lapsed, whatever the connect timeout. A holder that
//! renews its lease twice while this node waits is alive (a dead one can have at most one beat
//! in flight: the lease producer sends one record at a time), and the start is refused at once
//! with [`WalError::KafkaFenced`], naming the holder, its lease and when it lapses; so is a
//! wait that outlasts twice the holder's lease (clocks far apart). Otherwise it produces its
//! claim, reads up to it, and holds the lease only if its claim won (another node's claim in
//! between wins instead). The holder beats every `lease_ms / 3`; if a beat cannot be persisted
//! within `lease_ms` of the previous one, another claim may have won: the holder's log fails at
//! once (it acknowledges nothing more). Shutdown releases the lease so a successor starts at
//! once; after a crash the successor waits out the lease (at most `lease_ms` plus the margin
//! after the dead node's last heartbeat).
//! Every wait of a starting node (reading the lock partition, waiting out a lease) ends with
//! [`WalError::Interrupted`] within a poll once the configuration's
//! [`Interrupt`](crate::Interrupt) is set.
//!
//! # Limits
//!
//! Clocks of the nodes must agree to well within the lease. This is a lease, not a
//! broker-enforced fence: records a stale owner had already sent when it stopped (a paused
//! process) could still land after its successor's replay; the successor's next replay would
//! then refuse to start on the diverging record rather than lose anything silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::client::error_code;
use super::{KafkaConfig, ReaderContext, ensure_topic_named, kafka_error};
use crate::Interrupt;
use crate::durability::lock;
use crate::error::{HeartbeatFailure, LogFailure, WalError};

/// One poll of the lock reader.
const POLL: Duration = Duration::from_millis(100);
/// One poll for the lease producer's delivery report.
const REPORT_POLL: Duration = Duration::from_millis(1);
/// Longest wait for the release record at shutdown (best effort: without it a successor
/// waits out the lease).
const RELEASE_WAIT_MAX: Duration = Duration::from_secs(1);
/// How long past another holder's lapse a starting node still reads before it claims: a beat
/// the holder sent just before the lapse lands in the meantime (five lock-reader polls).
pub const LAPSE_MARGIN: Duration = Duration::from_millis(500);
/// Renewals of another holder's lease, seen while waiting for it to lapse, that prove the
/// holder alive: a dead holder can have at most one beat in flight.
const RENEWALS_PROVE_LIFE: u32 = 2;
/// How long one slice of the wait for a lapse reads before the lease is judged again.
const LAPSE_WAIT_SLICE: Duration = Duration::from_millis(250);

/// The lock topic of a partition of a log topic.
pub fn lock_topic(topic: &str, partition: i32) -> String {
    format!("{topic}.writer.{partition}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Who holds the lease, as the partition's records so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    owner: String,
    last_beat_ms: i64,
    lease_ms: i64,
    /// Its claim's advertisement (empty if none).
    advertise: String,
}

/// The lease folded from the lock partition in order (see the module docs).
#[derive(Debug, Default)]
struct LeaseState {
    holder: Option<Holder>,
    /// Claims that won so far: the current holder's owner epoch.
    epoch: u64,
}

impl LeaseState {
    fn apply(&mut self, value: &str, timestamp_ms: i64) {
        let mut words = value.split(' ');
        let (Some(kind), Some(owner)) = (words.next(), words.next()) else {
            return;
        };
        let lease_ms = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let advertise = words.next().unwrap_or_default();
        let live = |h: &Holder| timestamp_ms < h.last_beat_ms + h.lease_ms;
        let held_by_owner = self.holder.as_ref().is_some_and(|h| h.owner == owner);
        match kind {
            "claim" if held_by_owner || !self.holder.as_ref().is_some_and(live) => {
                self.epoch += 1;
                self.holder = Some(Holder {
                    owner: owner.to_owned(),
                    last_beat_ms: timestamp_ms,
                    lease_ms,
                    advertise: advertise.to_owned(),
                });
            }
            "beat" if held_by_owner && self.holder.as_ref().is_some_and(live) => {
                if let Some(h) = &mut self.holder {
                    h.last_beat_ms = timestamp_ms;
                }
            }
            "release" if held_by_owner => self.holder = None,
            _ => {}
        }
    }

    /// The holder other than `me` whose lease is live at `now_ms`.
    fn other_live_holder(&self, me: &str, now_ms: i64) -> Option<&Holder> {
        self.holder
            .as_ref()
            .filter(|h| h.owner != me && now_ms < h.last_beat_ms + h.lease_ms)
    }
}

/// Reads the lock partition in order into a [`LeaseState`].
struct LockReader {
    consumer: BaseConsumer<ReaderContext>,
    state: LeaseState,
    /// Offset after the last record read.
    next_offset: i64,
    /// The last event was the end of the partition.
    at_end: bool,
    /// Ends [`LockReader::read`] early (the wait for another holder's lease included).
    interrupt: Interrupt,
}

impl LockReader {
    fn open(config: &KafkaConfig, topic: &str) -> Result<LockReader, WalError> {
        let brokers = config.brokers.as_str();
        let consumer: BaseConsumer<ReaderContext> = config
            .client_config()
            .set("group.id", "gavel-wal-lock-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // Claims and beats are few: answer each fetch at once rather than after 500 ms.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(ReaderContext)
            .map_err(kafka_error("create the lock reader", brokers))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(kafka_error("assign the lock partition", brokers))?;
        consumer
            .assign(&assignment)
            .map_err(kafka_error("assign the lock partition", brokers))?;
        Ok(LockReader {
            consumer,
            state: LeaseState::default(),
            next_offset: 0,
            at_end: false,
            interrupt: config.interrupt.clone(),
        })
    }

    /// Reads records until `until` is met (or fails at `deadline`).
    fn read(&mut self, until: Until, deadline: Instant, brokers: &str) -> Result<(), WalError> {
        let started = Instant::now();
        loop {
            let done = match until {
                Until::End => self.at_end,
                Until::Past(offset) => self.next_offset > offset,
                Until::For(time) => started.elapsed() >= time,
            };
            if done {
                return Ok(());
            }
            self.interrupt.check()?;
            if Instant::now() >= deadline {
                return Err(WalError::Kafka {
                    op: "read the writer lock topic",
                    brokers: brokers.to_owned(),
                    reason: "it did not reach its end in time".to_owned(),
                });
            }
            match self.consumer.poll(Timeout::After(POLL)) {
                None => {}
                Some(Ok(message)) => {
                    self.at_end = false;
                    self.next_offset = message.offset() + 1;
                    let value = message
                        .payload()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    let timestamp = message.timestamp().to_millis().unwrap_or(0);
                    self.state.apply(&value, timestamp);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => self.at_end = true,
                Some(Err(error)) => {
                    return Err(kafka_error("read the writer lock topic", brokers)(error));
                }
            }
        }
    }
}

/// A partition's lease holder as a [`LeaseWatch`] last read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseHolder {
    /// Its name ([`KafkaConfig::owner`]).
    pub owner: String,
    /// The partition's owner epoch (the claims that won so far).
    pub epoch: u64,
    /// Its lease is live now (by this node's clock).
    pub live: bool,
    /// Its claim's [`KafkaConfig::advertise`] (empty if none).
    pub advertise: String,
}

/// Follows the lock topic of one partition another node holds, to see when its lease
/// lapses (a standby node's cue to [take it over](super::KafkaLog::take_over)).
pub struct LeaseWatch {
    reader: LockReader,
    me: String,
    brokers: String,
}

impl std::fmt::Debug for LeaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWatch")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl LeaseWatch {
    /// Starts following the lease of `partition` of `config.topic` (creating its lock topic
    /// if missing), as `config.owner`.
    pub fn open(config: &KafkaConfig, partition: i32) -> Result<LeaseWatch, WalError> {
        let topic = lock_topic(&config.topic, partition);
        ensure_topic_named(config, &topic, 1)?;
        Ok(LeaseWatch {
            reader: LockReader::open(config, &topic)?,
            me: config.owner.clone(),
            brokers: config.brokers.clone(),
        })
    }

    /// The holder as last read; `None` if nobody holds it.
    pub fn holder(&self) -> Option<LeaseHolder> {
        let state = &self.reader.state;
        let holder = state.holder.as_ref()?;
        Some(LeaseHolder {
            owner: holder.owner.clone(),
            epoch: state.epoch,
            live: now_ms() < holder.last_beat_ms + holder.lease_ms,
            advertise: holder.advertise.clone(),
        })
    }

    /// Reads what came for `slice`, then says whether the partition was owned once and
    /// nobody else holds a live lease now (with [`LAPSE_MARGIN`]): released or lapsed. A
    /// partition never claimed is not lapsed: it waits for its owner's first start.
    pub fn lapsed(&mut self, slice: Duration) -> Result<bool, WalError> {
        let deadline = Instant::now() + slice + Duration::from_secs(10);
        self.reader
            .read(Until::For(slice), deadline, &self.brokers)?;
        let margin_ms = LAPSE_MARGIN.as_millis() as i64;
        let now = now_ms() - margin_ms;
        let state = &self.reader.state;
        Ok(state.epoch > 0 && state.other_live_holder(&self.me, now).is_none())
    }

    /// As [`LeaseWatch::lapsed`], but a partition never claimed is free too (group
    /// ownership: the group's assignment, not a first owner's start, says who claims it).
    pub fn free(&mut self, slice: Duration) -> Result<bool, WalError> {
        let lapsed = self.lapsed(slice)?;
        Ok(lapsed || self.reader.state.epoch == 0)
    }
}

/// How far [`LockReader::read`] reads.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// The end of the partition (its end-of-partition event, which comes once per end).
    End,
    /// Past this offset.
    Past(i64),
    /// For this long (whatever arrives meanwhile).
    For(Duration),
}

/// What a starting node does about another holder's lease (see the module docs).
#[derive(Debug, PartialEq, Eq)]
enum Lapse<'a> {
    /// Nobody else holds a live lease (with the margin): claim.
    Free,
    /// Read the lock partition this long, then decide again.
    Wait(Duration),
    /// The holder is alive (or the wait outlasted its bound): refuse the start.
    Refuse(&'a Holder),
}

/// The wait for another holder's lease to lapse: a sans-IO judge of the folded lease, fed
/// the wall clock; it counts the holder's renewals since the wait began.
#[derive(Debug)]
struct LapseWait<'a> {
    me: &'a str,
    started: Instant,
    /// The holder being waited for and its last beat, as first seen or last renewed.
    watched: Option<(String, i64)>,
    renewals: u32,
}

impl<'a> LapseWait<'a> {
    fn new(me: &'a str) -> Self {
        Self {
            me,
            started: Instant::now(),
            watched: None,
            renewals: 0,
        }
    }

    /// Judges the lease at `now_ms`: free once every other holder's lease lapsed
    /// [`LAPSE_MARGIN`] ago; refused once the holder renewed [`RENEWALS_PROVE_LIFE`] times
    /// or the wait outlasted twice its lease plus the margin.
    fn decide<'s>(&mut self, state: &'s LeaseState, now_ms: i64) -> Lapse<'s> {
        let margin_ms = LAPSE_MARGIN.as_millis() as i64;
        let Some(holder) = state.other_live_holder(self.me, now_ms - margin_ms) else {
            return Lapse::Free;
        };
        match &mut self.watched {
            Some((owner, beat)) if *owner == holder.owner => {
                if *beat != holder.last_beat_ms {
                    *beat = holder.last_beat_ms;
                    self.renewals += 1;
                }
            }
            // A new holder (another node claimed a lapsed lease meanwhile): count anew.
            _ => {
                self.watched = Some((holder.owner.clone(), holder.last_beat_ms));
                self.renewals = 0;
            }
        }
        let bound = Duration::from_millis(2 * holder.lease_ms.max(0) as u64) + LAPSE_MARGIN;
        if self.renewals >= RENEWALS_PROVE_LIFE || self.started.elapsed() >= bound {
            return Lapse::Refuse(holder);
        }
        // Clocks may differ: never wait longer than one lease for one lapse.
        let lapses_in_ms = (holder.last_beat_ms + holder.lease_ms + margin_ms - now_ms)
            .clamp(1, holder.lease_ms.max(1) + margin_ms);
        Lapse::Wait(Duration::from_millis(lapses_in_ms as u64).min(LAPSE_WAIT_SLICE))
    }

    /// The start's refusal because `holder` holds the lease of `partition`.
    fn refusal(&self, topic: &str, partition: i32, holder: &Holder, now_ms: i64) -> WalError {
        WalError::KafkaFenced {
            topic: topic.to_owned(),
            partition,
            owner: holder.owner.clone(),
            age_ms: (now_ms - holder.last_beat_ms).max(0) as u64,
            lease_ms: holder.lease_ms.max(0) as u64,
            lapses_in_ms: (holder.last_beat_ms + holder.lease_ms - now_ms).max(0) as u64,
            waited_ms: self.started.elapsed().as_millis() as u64,
            renewals: self.renewals,
        }
    }
}

/// Delivery reports of the lease's producer: the last one, as an offset or an error.
#[derive(Clone, Default)]
struct LeaseDeliveries(Arc<Mutex<Option<Result<i64, HeartbeatFailure>>>>);

impl ClientContext for LeaseDeliveries {}

impl ProducerContext for LeaseDeliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = match result {
            Ok(message) => Ok(message.offset()),
            Err((error, _)) => Err(HeartbeatFailure::Kafka {
                code: error_code(error),
            }),
        };
        *lock(&self.0) = Some(outcome);
    }
}

/// Produces one lock record and waits (up to `timeout`) for it to be persisted; its offset.
/// Also gives up as soon as `stop` is set (a heartbeat must not hold up the shutdown).
fn produce(
    producer: &BaseProducer<LeaseDeliveries>,
    topic: &str,
    value: &str,
    timeout: Duration,
    stop: Option<&Mutex<bool>>,
) -> Result<i64, HeartbeatFailure> {
    *lock(&producer.context().0) = None;
    let record = BaseRecord::to(topic)
        .key("writer")
        .payload(value)
        .timestamp(now_ms());
    producer
        .send(record)
        .map_err(|(e, _)| HeartbeatFailure::Kafka {
            code: error_code(&e),
        })?;
    // Polling serves the report as soon as it comes (`flush` checks only every 100 ms).
    let deadline = Instant::now() + timeout;
    loop {
        producer.poll(Timeout::After(REPORT_POLL));
        if let Some(outcome) = lock(&producer.context().0).take() {
            return outcome;
        }
        if Instant::now() >= deadline {
            return Err(HeartbeatFailure::NoReport {
                waited_ms: timeout.as_millis() as u64,
            });
        }
        if stop.is_some_and(|stop| *lock(stop)) {
            return Err(HeartbeatFailure::Stopped);
        }
    }
}

/// What the heartbeat thread and the lease share.
struct Beating {
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Until when a lease is certainly held, by this process's monotonic clock: the send time of
/// the claim or of the last beat persisted, plus the lease. Another node claims only once the
/// lease lapsed by the holder's timestamps plus [`LAPSE_MARGIN`], so a record reported
/// persisted while [`LeaseClock::live`] was written before any successor's claim.
#[derive(Debug)]
pub struct LeaseClock {
    base: Instant,
    valid_until_us: AtomicU64,
}

impl LeaseClock {
    fn new() -> LeaseClock {
        LeaseClock {
            base: Instant::now(),
            valid_until_us: AtomicU64::new(0),
        }
    }

    fn extend(&self, sent: Instant, lease: Duration) {
        let until = (sent + lease)
            .saturating_duration_since(self.base)
            .as_micros() as u64;
        // Ordering: Release pairs with `live`'s Acquire; the value alone is the message.
        self.valid_until_us.fetch_max(until, Ordering::Release);
    }

    /// Whether the lease is certainly still held now.
    pub fn live(&self) -> bool {
        let now = self.base.elapsed().as_micros() as u64;
        // Ordering: Acquire pairs with `extend`'s Release.
        now < self.valid_until_us.load(Ordering::Acquire)
    }
}

/// The writer lease of one topic, held from [`WriterLease::acquire`] until
/// [`WriterLease::release`] (or drop); see the module docs.
pub struct WriterLease {
    owner: String,
    partition: i32,
    topic: String,
    epoch: u64,
    clock: Arc<LeaseClock>,
    beating: Arc<Beating>,
    heartbeat: Option<JoinHandle<BaseProducer<LeaseDeliveries>>>,
}

impl std::fmt::Debug for WriterLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterLease")
            .field("owner", &self.owner)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl WriterLease {
    /// Takes the writer lease of `partition` of `config.topic` for `owner` (or refuses, see
    /// the module docs), then beats in the background; `lost` is called once if the lease
    /// may have lapsed.
    pub fn acquire(
        config: &KafkaConfig,
        partition: i32,
        owner: &str,
        lost: impl FnOnce(LogFailure) + Send + 'static,
    ) -> Result<WriterLease, WalError> {
        let brokers = config.brokers.as_str();
        let topic = lock_topic(&config.topic, partition);
        let lease = Duration::from_millis(config.writer_lease_ms);
        let lease_ms = config.writer_lease_ms as i64;
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        ensure_topic_named(config, &topic, 1)?;
        let mut reader = LockReader::open(config, &topic)?;
        reader.read(Until::End, Instant::now() + connect_timeout, brokers)?;
        // Wait out another holder's lease: bounded by that lease, not the connect timeout.
        let mut waiting = LapseWait::new(owner);
        loop {
            match waiting.decide(&reader.state, now_ms()) {
                Lapse::Free => break,
                Lapse::Wait(slice) => reader.read(
                    Until::For(slice),
                    Instant::now() + slice + connect_timeout,
                    brokers,
                )?,
                Lapse::Refuse(holder) => {
                    return Err(waiting.refusal(&config.topic, partition, holder, now_ms()));
                }
            }
        }
        let producer: BaseProducer<LeaseDeliveries> = config
            .lease_producer_config()
            .create_with_context(LeaseDeliveries::default())
            .map_err(kafka_error("create the lease producer", brokers))?;
        let claimed_at = Instant::now();
        let clock = Arc::new(LeaseClock::new());
        let claim = produce(
            &producer,
            &topic,
            format!("claim {owner} {lease_ms} {}", config.advertise).trim_end(),
            lease,
            None,
        )
        .map_err(|failure| WalError::Kafka {
            op: "claim the writer lease",
            brokers: brokers.to_owned(),
            reason: failure.to_string(),
        })?;
        // Beat from now on: the lease others see runs from the claim's timestamp.
        let beating = Arc::new(Beating {
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let heartbeat = {
            let (beating, topic, owner) = (Arc::clone(&beating), topic.clone(), owner.to_owned());
            let clock = Arc::clone(&clock);
            let renewal = Renewal {
                topic,
                owner,
                lease,
                claimed_at,
            };
            thread::Builder::new()
                .name("gavel-wal-lease".into())
                .spawn(move || beat(producer, &renewal, &beating, &clock, lost))
                .map_err(|e| WalError::Kafka {
                    op: "start the lease heartbeat",
                    brokers: brokers.to_owned(),
                    reason: e.to_string(),
                })?
        };
        let mut held = WriterLease {
            owner: owner.to_owned(),
            partition,
            topic,
            epoch: 0,
            clock,
            beating,
            heartbeat: Some(heartbeat),
        };
        // Did the claim win? Another node's claim just before it wins instead.
        reader.read(
            Until::Past(claim),
            Instant::now() + connect_timeout,
            brokers,
        )?;
        if let Some(holder) = reader.state.holder.as_ref().filter(|h| h.owner != owner) {
            held.stop_beating();
            return Err(waiting.refusal(&config.topic, partition, holder, now_ms()));
        }
        // Held since the claim was sent (its timestamp is no earlier).
        held.clock.extend(claimed_at, lease);
        held.epoch = reader.state.epoch;
        Ok(held)
    }

    /// The owner epoch this lease holds the partition with (its claim's rank among the claims
    /// that won).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The partition it is the lease of.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Until when the lease is certainly held.
    pub fn clock(&self) -> &Arc<LeaseClock> {
        &self.clock
    }

    /// Stops beating and releases the lease (so a successor starts at once); best effort:
    /// without the release record a successor waits for the lease to lapse. Idempotent.
    pub fn release(&mut self) {
        // The heartbeat thread hands its producer back for the release record.
        if let Some(producer) = self.stop_beating() {
            let release = format!("release {}", self.owner);
            let _ = produce(&producer, &self.topic, &release, RELEASE_WAIT_MAX, None);
        }
    }

    /// Stops the heartbeat thread; its producer, if it was running.
    fn stop_beating(&mut self) -> Option<BaseProducer<LeaseDeliveries>> {
        let heartbeat = self.heartbeat.take()?;
        *lock(&self.beating.stop) = true;
        self.beating.wake.notify_all();
        heartbeat.join().ok()
    }
}

impl Drop for WriterLease {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the heartbeat renews: the lock topic, the holder, its lease and when it claimed.
struct Renewal {
    topic: String,
    owner: String,
    lease: Duration,
    claimed_at: Instant,
}

/// The heartbeat loop: a beat every `lease / 3`, each persisted one extending `clock`; a beat
/// not persisted within `lease` of the previous one calls `lost` and ends the loop.
fn beat(
    producer: BaseProducer<LeaseDeliveries>,
    renewal: &Renewal,
    beating: &Beating,
    clock: &LeaseClock,
    lost: impl FnOnce(LogFailure),
) -> BaseProducer<LeaseDeliveries> {
    let Renewal {
        topic,
        owner,
        lease,
        claimed_at,
    } = renewal;
    let (topic, lease) = (topic.as_str(), *lease);
    let mut last = *claimed_at;
    let lease_ms = lease.as_millis();
    loop {
        {
            let stop = lock(&beating.stop);
            let (stop, _) = beating
                .wake
                .wait_timeout_while(stop, lease / 3, |stop| !*stop)
                .expect("lease mutex poisoned: nothing panics while holding it");
            if *stop {
                break;
            }
        }
        let sent = Instant::now();
        let left = lease.saturating_sub(last.elapsed());
        let beat = format!("beat {owner} {lease_ms}");
        let result = produce(&producer, topic, &beat, left, Some(&beating.stop));
        if *lock(&beating.stop) {
            break;
        }
        let failure = match result {
            Ok(_) if last.elapsed() < lease => {
                last = sent;
                clock.extend(sent, lease);
                continue;
            }
            Ok(_) => HeartbeatFailure::Late,
            Err(failure) => failure,
        };
        lost(LogFailure::LeaseLost {
            topic: topic.to_owned(),
            lease_ms: lease_ms as u64,
            beat: failure,
        });
        break;
    }
    // Handed back for the release record.
    producer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(state: &LeaseState) -> Option<&str> {
        state.holder.as_ref().map(|h| h.owner.as_str())
    }

    #[test]
    fn a_claim_wins_only_when_nobody_holds_a_live_lease() {
        let mut state = LeaseState::default();
        state.apply("claim a 1000", 10_000);
        assert_eq!(holder(&state), Some("a"));
        state.apply("claim b 1000", 10_500);
        assert_eq!(holder(&state), Some("a"), "a's lease is live");
        state.apply("beat a 1000", 10_900);
        state.apply("claim b 1000", 11_800);
        assert_eq!(holder(&state), Some("a"), "renewed at 10 900");
        assert_eq!(
            state
                .other_live_holder("b", 11_899)
                .map(|h| h.owner.as_str()),
            Some("a")
        );
        assert_eq!(state.other_live_holder("b", 11_900), None, "lapsed");
        assert_eq!(state.other_live_holder("a", 11_000), None, "not another");
        state.apply("claim b 1000", 11_900);
        assert_eq!(holder(&state), Some("b"), "a's lease lapsed at 11 900");
        state.apply("beat a 1000", 11_950);
        assert_eq!(
            holder(&state),
            Some("b"),
            "a stale holder's beat renews nothing"
        );
        state.apply("release a", 12_000);
        assert_eq!(holder(&state), Some("b"), "only the holder releases");
        state.apply("release b", 12_100);
        assert_eq!(holder(&state), None);
        state.apply("claim a 1000", 12_200);
        assert_eq!(holder(&state), Some("a"), "free after a release");
        state.apply("garbage", 12_300);
        assert_eq!(holder(&state), Some("a"));
        // Claims that won: a, b (after a lapsed), a (after b released).
        assert_eq!(state.epoch, 3);
    }

    #[test]
    fn a_claim_carries_its_advertisement_and_one_without_has_none() {
        let mut state = LeaseState::default();
        state.apply("claim a 1000 quic=127.0.0.1:7443,https=127.0.0.1:8443", 0);
        let advertised = |s: &LeaseState| s.holder.as_ref().map(|h| h.advertise.clone());
        assert_eq!(
            advertised(&state).as_deref(),
            Some("quic=127.0.0.1:7443,https=127.0.0.1:8443")
        );
        state.apply("release a", 10);
        state.apply("claim b 1000", 20);
        assert_eq!(advertised(&state).as_deref(), Some(""));
    }

    #[test]
    fn a_beat_after_the_holders_own_lease_lapsed_does_not_renew_it() {
        let mut state = LeaseState::default();
        state.apply("claim a 1000", 0);
        state.apply("beat a 1000", 1_000);
        state.apply("claim b 1000", 1_001);
        assert_eq!(holder(&state), Some("b"));
    }

    #[test]
    fn a_successor_waits_for_the_lapse_plus_the_margin_and_refuses_a_holder_that_renews() {
        let mut state = LeaseState::default();
        state.apply("claim a 1000", 10_000);
        let mut waiting = LapseWait::new("b");
        assert_eq!(
            waiting.decide(&state, 10_100),
            Lapse::Wait(LAPSE_WAIT_SLICE)
        );
        // Lapses at 11 000; the margin keeps reading until 11 500.
        assert_eq!(
            waiting.decide(&state, 11_400),
            Lapse::Wait(Duration::from_millis(100))
        );
        assert_eq!(waiting.decide(&state, 11_500), Lapse::Free);
        // One renewal may be a dead holder's last beat in flight: keep waiting.
        state.apply("beat a 1000", 10_300);
        assert!(matches!(waiting.decide(&state, 10_400), Lapse::Wait(_)));
        state.apply("beat a 1000", 10_600);
        let Lapse::Refuse(holder) = waiting.decide(&state, 10_700) else {
            panic!("a holder that renewed twice is alive");
        };
        assert_eq!(holder.owner, "a");
        let refusal = waiting.refusal("t", 0, holder, 10_700).to_string();
        assert!(
            refusal.contains("lapses in 900 ms") && refusal.contains("renewed 2 times"),
            "{refusal}"
        );
    }

    #[test]
    fn renewals_are_counted_anew_for_a_new_holder_and_never_for_oneself() {
        let mut state = LeaseState::default();
        state.apply("claim a 1000", 0);
        let mut waiting = LapseWait::new("b");
        assert!(matches!(waiting.decide(&state, 0), Lapse::Wait(_)));
        state.apply("beat a 1000", 300);
        assert!(matches!(waiting.decide(&state, 300), Lapse::Wait(_)));
        // a's lease lapsed and c claimed it: c's renewals count from zero.
        state.apply("claim c 1000", 1_400);
        state.apply("beat c 1000", 1_700);
        assert!(matches!(waiting.decide(&state, 1_700), Lapse::Wait(_)));
        assert_eq!(waiting.renewals, 0);
        assert_eq!(LapseWait::new("c").decide(&state, 1_700), Lapse::Free);
    }
}
