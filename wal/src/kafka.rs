//! [`KafkaLog`]: the write-ahead log on a Kafka topic (feature `kafka`) — an idempotent
//! rdkafka producer (librdkafka built from the crate's bundled sources), local LSNs, a durable
//! LSN driven by delivery reports, a bounded in-flight queue, topic creation, and
//! [`KafkaRecords`], the recovery reader that consumes every partition from the beginning.
//!
//! # Ordering
//!
//! Every record carries a key (the auction id, in decimal): one auction's records hash to one
//! partition, and the idempotent producer (`enable.idempotence=true`, `acks=all`, at most 5
//! requests in flight per connection) keeps them in order there without duplicates, even
//! across retries. [`KafkaConfig::producer_config`] builds that configuration and
//! [`check_producer_config`] refuses any effective configuration that would allow
//! reordering or duplicates, so the node refuses to start with one.
//!
//! # LSNs and the durability rule
//!
//! Records get local LSNs in append order (dense from 1 in each process; they number this
//! process's appends, they are not Kafka offsets). A record is persisted when its delivery
//! report says success with status `PERSISTED` (written to the partition's log and
//! acknowledged by all in-sync replicas: `acks=all`). Reports arrive per partition, so out of
//! LSN order; **the durable LSN advances only over the contiguous prefix of LSNs whose reports
//! were `PERSISTED`**. Any other outcome — an error report, or a status `NOT_PERSISTED` or
//! `POSSIBLY_PERSISTED` — makes the log fail at once: the durable LSN stops below that record
//! for good, every waiter gets [`WaitError::Failed`](crate::WaitError::Failed), every later
//! append [`AppendError::Failed`]. So no acknowledged record ever depends on a record that was
//! possibly persisted, and nothing is retried by hand (librdkafka's own idempotent retries are
//! the only retries; a hand retry of a possibly-persisted record could duplicate or reorder
//! it). A node whose log failed stops; its successor recovers from the topic.
//!
//! # Memory bound and back-pressure
//!
//! At most `queue_records_max` records and `queue_bytes_max` payload bytes are in flight
//! (appended, no report yet); beyond, [`KafkaLog::append_batch`] refuses with
//! [`AppendError::Backpressure`] and enqueues nothing. librdkafka's own queue is sized above
//! these bounds so it never refuses first. While the broker is slow or down the in-flight
//! records wait in librdkafka (up to `message_timeout_ms`, after which their reports fail and
//! so does the log), new bids get `Overloaded`, and the backlog drains when it returns (the
//! producer retries the connection at least once a second).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::durability::{
    Durability, STATUS_CLOSED, STATUS_FAILED, STATUS_OPEN, batch_bytes, check_open, lock,
};
use crate::error::{AppendError, WalError};
use crate::fence::WriterLease;
use crate::frame::PAYLOAD_BYTES_MAX;
use crate::segment::Record;
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
/// Send times kept for the delivery latency, a ring indexed by LSN (a power of two; with more
/// records in flight, a colliding entry only skews one latency sample).
const SENT_AT_RING: usize = 1 << 16;

/// `<host>/<pid>/<random>`: tells nodes (and incarnations of one node) apart in the lease.
fn default_owner() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_owned());
    // std's hasher keys are random per process (and per `RandomState`).
    let random =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
    format!("{host}/{}/{random:016x}", std::process::id())
}

/// Retry hint on back-pressure: about one produce round trip on a healthy broker.
const BACKPRESSURE_RETRY_AFTER_US: u64 = 10_000;
/// librdkafka's `max.in.flight.requests.per.connection` above which the idempotent producer
/// can no longer guarantee order.
const IN_FLIGHT_REQUESTS_MAX: u32 = 5;
/// Longest [`KafkaLog::shutdown`] waits for the reports of the records in flight.
const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(30);
/// librdkafka's `reconnect.backoff.max.ms`: the longest pause between reconnect attempts.
const RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;
/// One poll of the recovery consumer.
const RECOVERY_POLL: Duration = Duration::from_millis(200);

// The delivery opaque carries an LSN as a `usize`.
const _: () = assert!(usize::BITS >= u64::BITS);

/// Where a state stands in the topic: it includes every record up to the local LSN `lsn`,
/// and replay resumes at `next_offsets[p]` in partition `p` (negative: its beginning;
/// partitions past the end of the list: their beginning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaPosition {
    /// The local LSN the state covers.
    pub lsn: Lsn,
    /// The topic.
    pub topic: String,
    /// Per partition, the offset replay resumes at.
    pub next_offsets: Vec<i64>,
}

/// Configuration of a [`KafkaLog`]. Times in milliseconds, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic holding the log.
    pub topic: String,
    /// Partitions of the topic when this log creates it (an existing topic keeps its own).
    pub partitions: i32,
    /// Replication factor of the topic when this log creates it.
    pub replication_factor: i32,
    /// Records in flight (appended, no delivery report yet) at most.
    pub queue_records_max: usize,
    /// Payload bytes in flight at most.
    pub queue_bytes_max: usize,
    /// How long the start waits for the brokers (metadata, topic creation, watermarks); not
    /// for another holder's writer lease, which is bounded by that lease (see [`crate::fence`]).
    pub connect_timeout_ms: u64,
    /// librdkafka's `message.timeout.ms`: how long a record may wait for its delivery
    /// (broker down included) before its report fails — and with it the log.
    pub message_timeout_ms: u64,
    /// librdkafka's `linger.ms`: how long the producer waits to fill a batch.
    pub linger_ms: u64,
    /// Further librdkafka producer properties, applied last and then checked by
    /// [`check_producer_config`].
    pub producer_overrides: Vec<(String, String)>,
    /// The writer lease (one node writes a topic; see [`crate::fence`]): a holder that
    /// cannot renew it within this long stops; a successor after a crash waits until it lapses
    /// (plus [`LAPSE_MARGIN`](crate::fence::LAPSE_MARGIN)).
    pub writer_lease_ms: u64,
    /// Who this node is in the lease (host, process and a random part by default).
    pub owner: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic: "gavel-wal".to_owned(),
            partitions: 8,
            replication_factor: 1,
            queue_records_max: 65_536,
            queue_bytes_max: 32 << 20,
            connect_timeout_ms: 10_000,
            message_timeout_ms: 300_000,
            linger_ms: 1,
            producer_overrides: Vec::new(),
            writer_lease_ms: 10_000,
            owner: default_owner(),
        }
    }
}

impl KafkaConfig {
    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<(), WalError> {
        let check = |ok: bool, what: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(WalError::Config(what))
            }
        };
        check(
            !self.brokers.trim().is_empty(),
            "kafka brokers must not be empty",
        )?;
        check(
            !self.topic.trim().is_empty(),
            "kafka topic must not be empty",
        )?;
        check(
            (1..=10_000).contains(&self.partitions),
            "kafka partitions must be between 1 and 10000",
        )?;
        check(
            (1..=32).contains(&self.replication_factor),
            "kafka replication factor must be between 1 and 32",
        )?;
        check(
            (1..=1 << 24).contains(&self.queue_records_max),
            "kafka queue_records_max must be between 1 and 2^24",
        )?;
        check(
            (1..=1 << 30).contains(&self.queue_bytes_max),
            "kafka queue_bytes_max must be between 1 and 1 GiB",
        )?;
        check(
            (1..=600_000).contains(&self.connect_timeout_ms),
            "kafka connect_timeout_ms must be between 1 and 600000",
        )?;
        check(
            (1..=3_600_000).contains(&self.message_timeout_ms),
            "kafka message_timeout_ms must be between 1 and 3600000",
        )?;
        check(
            self.linger_ms <= 1_000,
            "kafka linger_ms must be at most 1000",
        )?;
        check(
            (300..=600_000).contains(&self.writer_lease_ms),
            "kafka writer_lease_ms must be between 300 and 600000",
        )?;
        check(
            !self.owner.is_empty() && !self.owner.contains(char::is_whitespace),
            "kafka owner must be a non-empty word",
        )
    }

    /// The lease producer's configuration: `acks=all`, one request in flight, each record
    /// on its own. Not idempotent: a duplicated claim or beat means the same as one, and the
    /// idempotent producer's start (hundreds of ms to get a producer id) would eat into the
    /// lease.
    pub(crate) fn lease_producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", self.writer_lease_ms.to_string())
            .set(
                "reconnect.backoff.max.ms",
                RECONNECT_BACKOFF_MAX_MS.to_string(),
            );
        config
    }

    /// The producer's librdkafka configuration: idempotent, `acks=all`, librdkafka's queue
    /// sized above this log's bounds, then the overrides. Check it with
    /// [`check_producer_config`].
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "max.in.flight.requests.per.connection",
                IN_FLIGHT_REQUESTS_MAX.to_string(),
            )
            // Twice our bounds: librdkafka must never refuse a record our bound admitted
            // (a refusal in the middle of a decision's batch would fail the log).
            .set(
                "queue.buffering.max.messages",
                (self.queue_records_max * 2).to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                (self.queue_bytes_max / 1024 * 2 + 2 * PAYLOAD_BYTES_MAX / 1024).to_string(),
            )
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("linger.ms", self.linger_ms.to_string())
            .set(
                "socket.connection.setup.timeout.ms",
                self.connect_timeout_ms.max(1_000).to_string(),
            )
            // librdkafka backs off reconnects up to 10 s by default: a returning broker
            // would wait that long for the backlog. A WAL reconnects within a second.
            .set(
                "reconnect.backoff.max.ms",
                RECONNECT_BACKOFF_MAX_MS.to_string(),
            );
        for (key, value) in &self.producer_overrides {
            config.set(key, value);
        }
        config
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }
}

/// Refuses a producer configuration that would allow reordering or duplicates:
/// idempotence off, `acks` other than `all`/`-1`, more than 5 requests in flight per
/// connection, or retries disabled.
pub fn check_producer_config(config: &ClientConfig) -> Result<(), WalError> {
    let refuse = |setting: &str, value: &str, why: &'static str| {
        Err(WalError::KafkaUnsafeConfig {
            setting: setting.to_owned(),
            value: value.to_owned(),
            why,
        })
    };
    let value = |key: &str| config.get(key).unwrap_or("").trim().to_ascii_lowercase();
    let idempotence = value("enable.idempotence");
    if idempotence != "true" {
        return refuse(
            "enable.idempotence",
            &idempotence,
            "without idempotence a retried produce can duplicate or reorder records",
        );
    }
    let acks = value("acks");
    if acks != "all" && acks != "-1" {
        return refuse(
            "acks",
            &acks,
            "a record acknowledged by fewer than all in-sync replicas can be lost",
        );
    }
    let in_flight = value("max.in.flight.requests.per.connection");
    match in_flight.parse::<u32>() {
        Ok(n) if (1..=IN_FLIGHT_REQUESTS_MAX).contains(&n) => {}
        _ => {
            return refuse(
                "max.in.flight.requests.per.connection",
                &in_flight,
                "the idempotent producer keeps order only with 1 to 5 requests in flight",
            );
        }
    }
    for key in ["retries", "message.send.max.retries"] {
        let retries = value(key);
        if retries == "0" {
            return refuse(key, &retries, "the idempotent producer needs retries");
        }
    }
    Ok(())
}

/// Runs a future to completion on this thread (the admin client's futures complete from
/// librdkafka's own thread; no async runtime is needed).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

pub(crate) fn kafka_error(op: &'static str, brokers: &str) -> impl FnOnce(KafkaError) -> WalError {
    let brokers = brokers.to_owned();
    move |e| WalError::Kafka {
        op,
        brokers,
        reason: e.to_string(),
    }
}

/// Reaches the brokers and makes sure the topic exists (creating it with the configured
/// partitions when missing); returns its partition count. Bounded by `connect_timeout_ms`.
pub fn ensure_topic(config: &KafkaConfig) -> Result<i32, WalError> {
    config.validate()?;
    ensure_topic_named(config, &config.topic, config.partitions)
}

/// [`ensure_topic`] for the topic `name` with `partitions` when created.
pub(crate) fn ensure_topic_named(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
) -> Result<i32, WalError> {
    let brokers = config.brokers.as_str();
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let deadline = Instant::now() + timeout;
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(kafka_error("create an admin client", brokers))?;
    let mut created = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let metadata = admin
            .inner()
            .fetch_metadata(Some(name), Timeout::After(left))
            .map_err(|e| WalError::KafkaUnreachable {
                brokers: brokers.to_owned(),
                timeout_ms: config.connect_timeout_ms,
                reason: e.to_string(),
            })?;
        let topic = metadata.topics().iter().find(|t| t.name() == name);
        match topic.map(|t| (t.error(), t.partitions().len())) {
            Some((None, n)) if n > 0 => {
                return Ok(i32::try_from(n).unwrap_or(i32::MAX));
            }
            Some((Some(err), _))
                if RDKafkaErrorCode::from(err) == RDKafkaErrorCode::TopicAuthorizationFailed =>
            {
                return Err(WalError::Kafka {
                    op: "describe the topic",
                    brokers: brokers.to_owned(),
                    reason: format!("not authorised for topic {name}"),
                });
            }
            _ if !created => {
                create_topic(&admin, config, name, partitions, left)?;
                created = true;
            }
            // Created; the brokers' metadata catches up shortly.
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(WalError::KafkaUnreachable {
                brokers: brokers.to_owned(),
                timeout_ms: config.connect_timeout_ms,
                reason: format!("topic {name} has no partitions yet"),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), WalError> {
    let brokers = config.brokers.as_str();
    let topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(Timeout::After(timeout)))
        .operation_timeout(Some(Timeout::After(timeout)));
    let results = block_on(admin.create_topics([&topic], &options))
        .map_err(kafka_error("create the topic", brokers))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(WalError::Kafka {
                    op: "create the topic",
                    brokers: brokers.to_owned(),
                    reason: format!("{name}: {code}"),
                });
            }
        }
    }
    Ok(())
}

/// In-flight bookkeeping, under one mutex with the produce calls so LSN order is produce
/// order.
#[derive(Debug)]
struct InFlight {
    /// `STATUS_*`: appends are accepted only while open.
    status: u8,
    next_lsn: Lsn,
    records: usize,
    bytes: usize,
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
}

#[derive(Debug)]
struct Shared {
    durability: Arc<Durability>,
    in_flight: Mutex<InFlight>,
    counters: Counters,
    /// When each in-flight LSN was produced, µs after `epoch`, at `lsn % SENT_AT_RING`.
    sent_at_us: Box<[AtomicU64]>,
    epoch: Instant,
}

impl Shared {
    fn new(in_flight: InFlight) -> Shared {
        Shared {
            durability: Arc::new(Durability::new(0)),
            in_flight: Mutex::new(in_flight),
            counters: Counters::default(),
            sent_at_us: (0..SENT_AT_RING).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    fn sent_slot(&self, lsn: Lsn) -> &AtomicU64 {
        &self.sent_at_us[lsn as usize % SENT_AT_RING]
    }
}

/// A delivery outcome, reduced to what the durability rule needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Persisted at this partition and offset.
    Persisted(i32, i64),
    Failed(String),
}

impl Shared {
    /// Applies one delivery report (see the module docs for the rule).
    fn delivered(&self, lsn: Lsn, bytes: usize, outcome: Outcome) {
        let mut in_flight = lock(&self.in_flight);
        in_flight.records = in_flight.records.saturating_sub(1);
        in_flight.bytes = in_flight.bytes.saturating_sub(bytes);
        if in_flight.status == STATUS_FAILED {
            // The durable LSN never moves after a failure, even for later successes.
            return;
        }
        match outcome {
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
            Outcome::Failed(reason) => {
                drop(in_flight);
                self.fail(format!(
                    "the record at LSN {lsn} was not persisted: {reason}"
                ));
            }
        }
    }

    /// Fails the log for good: nothing more is appended or becomes durable.
    fn fail(&self, why: String) {
        lock(&self.in_flight).status = STATUS_FAILED;
        self.durability.record_failure(why);
        self.durability.finish(STATUS_FAILED);
    }
}

/// The readers' consumer context (recovery, lock topic): the end of a partition is how they
/// know they are done, not an error worth a log line; any other client error is logged as
/// rdkafka's default context logs it.
pub(crate) struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            log::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// The producer's context: turns delivery reports into [`Shared::delivered`].
struct DeliveryContext {
    shared: Arc<Shared>,
    /// Handles for the common case, looked up once (not per delivery report).
    delivery_seconds: metrics::Histogram,
    persisted: metrics::Counter,
}

impl ClientContext for DeliveryContext {}

/// The persistence status librdkafka gives a produced message.
#[allow(unsafe_code)]
fn persistence_status(message: &BorrowedMessage<'_>) -> rdkafka::bindings::rd_kafka_msg_status_t {
    // SAFETY: `message.ptr()` is the live `rd_kafka_message_t` of this delivery report,
    // borrowed for the duration of the callback; `rd_kafka_message_status` only reads it.
    unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, lsn: usize) {
        use rdkafka::bindings::rd_kafka_msg_status_t as Status;
        let lsn = lsn as Lsn;
        let (bytes, outcome, status_label) = match result {
            Ok(message) => {
                let status = persistence_status(message);
                let (outcome, label) = if status == Status::RD_KAFKA_MSG_STATUS_PERSISTED {
                    let shared = &self.shared;
                    // Ordering: Relaxed — a statistic; the slot was stored before the send.
                    let sent_us = shared.sent_slot(lsn).load(Ordering::Relaxed);
                    let now_us = shared.epoch.elapsed().as_micros() as u64;
                    self.delivery_seconds
                        .record(now_us.saturating_sub(sent_us) as f64 / 1e6);
                    (
                        Outcome::Persisted(message.partition(), message.offset()),
                        "persisted",
                    )
                } else {
                    let label = if status == Status::RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED {
                        "possibly_persisted"
                    } else {
                        "not_persisted"
                    };
                    (
                        Outcome::Failed(format!("delivery succeeded with status {status:?}")),
                        label,
                    )
                };
                (message.payload_len(), outcome, label)
            }
            Err((error, message)) => (
                message.payload_len(),
                Outcome::Failed(format!(
                    "{error} (status {:?})",
                    persistence_status(message)
                )),
                "error",
            ),
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
    /// The topic's writer lease, released at shutdown.
    lease: Mutex<Option<WriterLease>>,
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
    /// `start` (a snapshot's position) or at the beginning of every partition. Read the
    /// records to their end, then call [`KafkaLog::resume`] before the first append.
    pub fn open(
        config: KafkaConfig,
        start: Option<&KafkaPosition>,
    ) -> Result<(KafkaLog, KafkaRecords), WalError> {
        config.validate()?;
        let producer_config = config.producer_config();
        check_producer_config(&producer_config)?;
        ensure_topic(&config)?;
        let shared = Arc::new(Shared::new(InFlight {
            status: STATUS_OPEN,
            next_lsn: 1,
            records: 0,
            bytes: 0,
            durable: 0,
            persisted: BTreeMap::new(),
            offsets: Vec::new(),
        }));
        // One writer per topic: the lease comes before reading, so nobody writes behind the
        // replay. Losing it fails the log (nothing more is acknowledged).
        let lease = {
            let shared = Arc::clone(&shared);
            WriterLease::acquire(&config, &config.owner, move |why| shared.fail(why))?
        };
        let records = KafkaRecords::open_at(&config, start)?;
        let producer = producer_config
            .create_with_context(DeliveryContext {
                shared: Arc::clone(&shared),
                delivery_seconds: metrics::histogram!(METRIC_DELIVERY_SECONDS),
                persisted: metrics::counter!(METRIC_DELIVERIES, "status" => "persisted"),
            })
            .map_err(kafka_error("create the producer", &config.brokers))?;
        Ok((
            KafkaLog {
                shared,
                producer,
                config,
                lease: Mutex::new(Some(lease)),
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
            in_flight.next_lsn == 1 && in_flight.records == 0,
            "KafkaLog::resume after an append is a bug"
        );
        let last = records.last_lsn();
        in_flight.next_lsn = last + 1;
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
        KafkaPosition {
            lsn: in_flight.durable,
            topic: self.config.topic.clone(),
            next_offsets: in_flight.offsets.clone(),
        }
    }

    /// Produces `payloads` — the events of one decision, all about the auction `key` — with
    /// contiguous LSNs, and returns the LSN of the last one. All or none: the bounds are
    /// checked for the whole batch before anything is produced. The records are durable once
    /// [`KafkaLog::durable_lsn`] reaches the LSN.
    pub fn append_batch<P: AsRef<[u8]>>(
        &self,
        key: u64,
        payloads: &[P],
    ) -> Result<Lsn, AppendError> {
        let batch_bytes = batch_bytes(payloads)?;
        let mut in_flight = lock(&self.shared.in_flight);
        check_open(in_flight.status)?;
        if payloads.is_empty() {
            return Ok(in_flight.next_lsn - 1);
        }
        // As in the file log, a batch larger than a bound is admitted when nothing is in
        // flight, so it is never refused for ever.
        let full = in_flight.records > 0
            && (in_flight.records + payloads.len() > self.config.queue_records_max
                || in_flight.bytes + batch_bytes > self.config.queue_bytes_max);
        if full {
            drop(in_flight);
            // Ordering: Relaxed — a statistic.
            self.shared
                .counters
                .backpressure
                .fetch_add(1, Ordering::Relaxed);
            return Err(AppendError::Backpressure {
                retry_after_us: BACKPRESSURE_RETRY_AFTER_US,
            });
        }
        let key = key.to_string();
        let first = in_flight.next_lsn;
        let sent_us = self.shared.epoch.elapsed().as_micros() as u64;
        for lsn in first..first + payloads.len() as Lsn {
            // Ordering: Relaxed — a statistic; the report reads it on librdkafka's thread
            // after the send below, which synchronises through librdkafka's queue.
            self.shared.sent_slot(lsn).store(sent_us, Ordering::Relaxed);
        }
        for (i, payload) in payloads.iter().enumerate() {
            let lsn = first + i as Lsn;
            let record = BaseRecord::with_opaque_to(&self.config.topic, lsn as usize)
                .key(key.as_str())
                .payload(payload.as_ref());
            // Non-blocking: librdkafka only enqueues. Its queue is sized above our bounds.
            if let Err((error, _)) = self.producer.send(record) {
                if i == 0
                    && matches!(
                        error,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    )
                {
                    drop(in_flight);
                    return Err(AppendError::Backpressure {
                        retry_after_us: BACKPRESSURE_RETRY_AFTER_US,
                    });
                }
                // Part of a decision may be on its way: the log cannot stay consistent.
                in_flight.status = STATUS_FAILED;
                in_flight.next_lsn = lsn;
                in_flight.records += i;
                drop(in_flight);
                self.shared
                    .durability
                    .record_failure(format!("producing the record at LSN {lsn}: {error}"));
                self.shared.durability.finish(STATUS_FAILED);
                return Err(AppendError::Failed);
            }
        }
        let n = payloads.len();
        in_flight.next_lsn = first + n as Lsn;
        in_flight.records += n;
        in_flight.bytes += batch_bytes;
        Ok(first + n as Lsn - 1)
    }

    /// The last LSN assigned by an append so far (0 before the first).
    pub fn last_appended_lsn(&self) -> Lsn {
        lock(&self.shared.in_flight).next_lsn - 1
    }

    /// The durable LSN (the highest LSN such that it and every LSN below it were reported
    /// `PERSISTED`), its waiters and the failure, for [`Log`](crate::Log).
    pub(crate) fn durability(&self) -> &Arc<Durability> {
        &self.shared.durability
    }

    /// Why the log failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.durability.failure()
    }

    /// The counters, for metrics (`batches_synced_total` and the sync latencies stay 0: a
    /// Kafka log has no syncs of its own).
    pub fn metrics(&self) -> WalMetrics {
        let c = &self.shared.counters;
        // Ordering: Relaxed — statistics, no data depends on them.
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (queue_records, queue_bytes) = {
            let in_flight = lock(&self.shared.in_flight);
            (in_flight.records as u64, in_flight.bytes as u64)
        };
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
            let mut in_flight = lock(&self.shared.in_flight);
            if in_flight.status == STATUS_OPEN {
                in_flight.status = STATUS_CLOSED;
            }
        }
        let flushed = self.producer.flush(Timeout::After(SHUTDOWN_FLUSH_MAX));
        if let Err(error) = flushed {
            let unreported = lock(&self.shared.in_flight).records;
            self.shared.durability.record_failure(format!(
                "shutdown: {unreported} records still without a delivery report after {} s: \
                 {error}",
                SHUTDOWN_FLUSH_MAX.as_secs()
            ));
        }
        // Nothing more is written: a successor may start at once.
        if let Some(mut lease) = lock(&self.lease).take() {
            lease.release();
        }
        if let Some(failure) = self.failure() {
            lock(&self.shared.in_flight).status = STATUS_FAILED;
            self.shared.durability.finish(STATUS_FAILED);
            return Err(WalError::WriterFailed(failure));
        }
        self.shared.durability.finish(STATUS_CLOSED);
        Ok(self.shared.durability.durable_lsn())
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        // Waits for what is in flight; anything acknowledged durable is in the topic anyway.
        let _ = self.shutdown();
    }
}

/// Reads every record of a topic, each partition from its beginning to its end (the
/// consumer's end-of-partition event, so the end is what the broker serves, not a separately
/// listed offset), numbering them 1, 2, … in read order. Partitions interleave, but each
/// partition — and so each auction — comes in its log order, which is what replay needs.
/// Memory: librdkafka's fetch buffers and one payload. Ends at the first error; a stretch of
/// `connect_timeout_ms` without any record or end event is an error too (bounded).
pub struct KafkaRecords {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    brokers: String,
    /// Per partition: whether its end was reached.
    done: Vec<bool>,
    /// Partitions not yet read to their end.
    remaining: usize,
    next_lsn: Lsn,
    /// Per partition, the offset after the last record read (negative: none read, and the
    /// start was the beginning).
    next_offsets: Vec<i64>,
    stall_max: Duration,
    failed: bool,
}

impl std::fmt::Debug for KafkaRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRecords")
            .field("topic", &self.topic)
            .field("remaining_partitions", &self.remaining)
            .field("next_lsn", &self.next_lsn)
            .finish_non_exhaustive()
    }
}

impl KafkaRecords {
    /// Opens a reader of the whole topic; a missing topic is an error (this never creates
    /// one).
    pub fn open(config: &KafkaConfig) -> Result<KafkaRecords, WalError> {
        KafkaRecords::open_at(config, None)
    }

    /// Opens a reader of the topic from `start` (records numbered from its LSN + 1), or from
    /// the beginning. A start offset the broker no longer has (the topic was recreated or
    /// truncated) is an error, never a silent reset.
    pub fn open_at(
        config: &KafkaConfig,
        start: Option<&KafkaPosition>,
    ) -> Result<KafkaRecords, WalError> {
        let brokers = config.brokers.as_str();
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let consumer: BaseConsumer<ReaderContext> = config
            .client_config()
            .set("group.id", "gavel-wal-recovery")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            // At a partition's end a fetch waits this long for more (500 ms by default):
            // recovery wants the end-of-partition event, not more records.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(ReaderContext)
            .map_err(kafka_error("create the recovery consumer", brokers))?;
        let metadata = consumer
            .fetch_metadata(Some(&config.topic), Timeout::After(timeout))
            .map_err(|e| WalError::KafkaUnreachable {
                brokers: brokers.to_owned(),
                timeout_ms: config.connect_timeout_ms,
                reason: e.to_string(),
            })?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == config.topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Err(WalError::Kafka {
                op: "read the topic",
                brokers: brokers.to_owned(),
                reason: format!("topic {} does not exist", config.topic),
            });
        }
        if let Some(start) = start
            && (start.topic != config.topic || start.next_offsets.len() > partitions)
        {
            return Err(WalError::Kafka {
                op: "resume from a snapshot",
                brokers: brokers.to_owned(),
                reason: format!(
                    "the snapshot is of topic {} with {} partitions; topic {} has {partitions}",
                    start.topic,
                    start.next_offsets.len(),
                    config.topic
                ),
            });
        }
        let next_offsets: Vec<i64> = (0..partitions)
            .map(|p| {
                start
                    .and_then(|s| s.next_offsets.get(p).copied())
                    .unwrap_or(-1)
            })
            .collect();
        let mut assignment = TopicPartitionList::new();
        for (partition, &next) in next_offsets.iter().enumerate() {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            let offset = if next < 0 {
                Offset::Beginning
            } else {
                Offset::Offset(next)
            };
            assignment
                .add_partition_offset(&config.topic, partition, offset)
                .map_err(kafka_error("assign a partition", brokers))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka_error("assign the partitions", brokers))?;
        Ok(KafkaRecords {
            consumer,
            topic: config.topic.clone(),
            brokers: config.brokers.clone(),
            done: vec![false; partitions],
            remaining: partitions,
            next_lsn: start.map_or(0, |s| s.lsn) + 1,
            next_offsets,
            stall_max: timeout,
            failed: false,
        })
    }

    /// Partitions of the topic.
    pub fn partitions(&self) -> usize {
        self.done.len()
    }

    /// The LSN of the last record read (the start's LSN before any).
    pub fn last_lsn(&self) -> Lsn {
        self.next_lsn - 1
    }

    /// Per partition, the offset after the last record read (negative: none read from a
    /// start at the beginning).
    pub fn next_offsets(&self) -> &[i64] {
        &self.next_offsets
    }
}

impl Iterator for KafkaRecords {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut idle_since = Instant::now();
        while self.remaining > 0 {
            let Some(polled) = self.consumer.poll(Timeout::After(RECOVERY_POLL)) else {
                if idle_since.elapsed() >= self.stall_max {
                    self.failed = true;
                    return Some(Err(WalError::Kafka {
                        op: "read the topic",
                        brokers: self.brokers.clone(),
                        reason: format!(
                            "nothing for {} ms with {} partitions of {} not read to their end",
                            self.stall_max.as_millis(),
                            self.remaining,
                            self.topic
                        ),
                    }));
                }
                continue;
            };
            match polled {
                Ok(message) => {
                    let lsn = self.next_lsn;
                    self.next_lsn += 1;
                    let next = usize::try_from(message.partition())
                        .ok()
                        .and_then(|p| self.next_offsets.get_mut(p));
                    if let Some(next) = next {
                        *next = message.offset() + 1;
                    }
                    let payload = message.payload().unwrap_or_default().to_vec();
                    return Some(Ok(Record { lsn, payload }));
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    idle_since = Instant::now();
                    let done = usize::try_from(partition)
                        .ok()
                        .and_then(|p| self.done.get_mut(p));
                    if let Some(done) = done.filter(|done| !**done) {
                        *done = true;
                        self.remaining -= 1;
                    }
                }
                Err(error) => {
                    self.failed = true;
                    return Some(Err(kafka_error("read the topic", &self.brokers)(error)));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WaitError;

    fn shared() -> Shared {
        Shared::new(InFlight {
            status: STATUS_OPEN,
            next_lsn: 6,
            records: 5,
            bytes: 50,
            durable: 0,
            persisted: BTreeMap::new(),
            offsets: vec![-1; 2],
        })
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
        assert_eq!((in_flight.records, in_flight.bytes), (1, 10));
    }

    #[test]
    fn a_report_that_is_not_persisted_fails_the_log_and_freezes_the_durable_lsn() {
        let s = shared();
        s.delivered(1, 10, Outcome::Persisted(0, 0));
        s.delivered(
            2,
            10,
            Outcome::Failed("status RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED".into()),
        );
        // Later successes never move it: LSN 3 could depend on LSN 2's auction state.
        s.delivered(3, 10, Outcome::Persisted(0, 0));
        assert_eq!(s.durability.durable_lsn(), 1);
        assert_eq!(
            s.durability.wait(3, Duration::from_secs(1)),
            Err(WaitError::Failed { durable: 1 })
        );
        assert_eq!(s.durability.wait(1, Duration::ZERO), Ok(1));
        assert!(s.durability.failure().unwrap().contains("LSN 2"));
    }

    #[test]
    fn unsafe_producer_settings_are_refused() {
        let base = KafkaConfig::default();
        check_producer_config(&base.producer_config()).unwrap();
        for (key, value) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("max.in.flight.requests.per.connection", "6"),
            ("retries", "0"),
        ] {
            let config = KafkaConfig {
                producer_overrides: vec![(key.into(), value.into())],
                ..base.clone()
            };
            let err = check_producer_config(&config.producer_config()).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }
}
