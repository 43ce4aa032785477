//! The Kafka clients' configuration and set-up: [`KafkaConfig`] (the producer's, the lease
//! producer's and the readers' librdkafka settings), [`check_producer_config`], topic creation
//! ([`ensure_topic`]) and the readers' client context.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::Interrupt;
use crate::error::WalError;
use crate::frame::PAYLOAD_BYTES_MAX;

/// librdkafka's `max.in.flight.requests.per.connection` above which the idempotent producer
/// can no longer guarantee order.
const IN_FLIGHT_REQUESTS_MAX: u32 = 5;
/// The longest metadata request of [`ensure_topic`]: the connect wait is made of such
/// requests, so that an [`Interrupt`] is seen between two.
const METADATA_SLICE: Duration = Duration::from_millis(250);
/// The pause between two metadata requests of [`ensure_topic`].
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// librdkafka's `reconnect.backoff.max.ms`: the longest pause between reconnect attempts.
const RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;
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

/// Configuration of a [`KafkaLog`](super::KafkaLog). Times in milliseconds, sizes in bytes.
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
    /// for another holder's writer lease, which is bounded by that lease (see [`super::fence`]).
    pub connect_timeout_ms: u64,
    /// librdkafka's `message.timeout.ms`: how long a record may wait for its delivery
    /// (broker down included) before its report fails — and with it the log.
    pub message_timeout_ms: u64,
    /// librdkafka's `linger.ms`: how long the producer waits to fill a batch.
    pub linger_ms: u64,
    /// Further librdkafka producer properties, applied last and then checked by
    /// [`check_producer_config`].
    pub producer_overrides: Vec<(String, String)>,
    /// Each owned partition's writer lease (one node writes a partition; see
    /// [`super::fence`]): a holder that cannot renew it within this long stops; a successor
    /// after a crash waits until it lapses (plus [`LAPSE_MARGIN`](super::fence::LAPSE_MARGIN)).
    pub writer_lease_ms: u64,
    /// Who this node is in the lease (host, process and a random part by default).
    pub owner: String,
    /// The partitions this node writes and replays (static assignment), each under its own
    /// writer lease; empty: every partition of the topic (a node alone).
    pub owned_partitions: Vec<i32>,
    /// Partitions of other nodes this node takes over, while running, once their owner's
    /// lease lapses (see [`KafkaLog::take_over`](super::KafkaLog::take_over)); needs
    /// `owned_partitions`, disjoint from them.
    pub standby_partitions: Vec<i32>,
    /// Own no partition (`owned_partitions` empty): the node follows every partition for its
    /// watchers and writes only the `standby_partitions` it takes over.
    pub follow_only: bool,
    /// Ownership by Kafka group membership ([`super::group`]) instead of the static
    /// assignment: owns no partition at open; the group's assignment decides which
    /// partitions the node takes over. Excludes `owned_partitions`, `standby_partitions` and
    /// `follow_only`.
    pub group: Option<GroupConfig>,
    /// Where other nodes and clients reach this node, published with every claim of a
    /// partition's writer lease for the others to read (an opaque word, no whitespace;
    /// the node writes `quic=<host:port>,https=<host:port>`); empty: nothing published.
    pub advertise: String,
    /// Set it to make the start's waits (brokers, lease, recovery reader) return
    /// [`WalError::Interrupted`] within a poll. Not configuration (always compares equal).
    pub interrupt: Interrupt,
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
            owned_partitions: Vec::new(),
            standby_partitions: Vec::new(),
            follow_only: false,
            advertise: String::new(),
            group: None,
            interrupt: Interrupt::default(),
        }
    }
}

/// Ownership by group membership (see [`super::group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The consumer group (`group.id`) the nodes of one topic share.
    pub group_id: String,
    /// This node's static member name (`group.instance.id`): a restart under it within
    /// the session timeout gets the same partitions without a rebalance.
    pub instance_id: String,
    /// librdkafka's `session.timeout.ms`: a member silent this long leaves the group.
    pub session_timeout_ms: u64,
}

impl GroupConfig {
    /// The group of a topic's nodes by default: `<topic>.owners`.
    pub fn default_group_id(topic: &str) -> String {
        format!("{topic}.owners")
    }
}

impl KafkaConfig {
    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<(), WalError> {
        let check = WalError::require;
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
        )?;
        check(
            !self.advertise.contains(char::is_whitespace),
            "kafka advertise must be one word (no whitespace)",
        )?;
        let mut all = [&self.owned_partitions[..], &self.standby_partitions[..]].concat();
        all.sort_unstable();
        all.dedup();
        check(
            all.len() == self.owned_partitions.len() + self.standby_partitions.len()
                && all.iter().all(|p| (0..10_000).contains(p)),
            "kafka owned and standby partitions must be distinct numbers from 0 to 9999",
        )?;
        if let Some(group) = &self.group {
            check(
                self.owned_partitions.is_empty()
                    && self.standby_partitions.is_empty()
                    && !self.follow_only,
                "kafka group ownership excludes owned and standby partitions and follow_only",
            )?;
            let word = |w: &str| !w.is_empty() && !w.contains(char::is_whitespace);
            check(
                word(&group.group_id) && word(&group.instance_id),
                "kafka group id and group instance id must be non-empty words",
            )?;
            check(
                (1_000..=300_000).contains(&group.session_timeout_ms),
                "kafka group session timeout must be between 1000 and 300000 ms",
            )?;
        }
        check(
            !self.follow_only || self.owned_partitions.is_empty(),
            "kafka follow_only owns no partition: leave owned partitions unset",
        )?;
        check(
            self.standby_partitions.is_empty()
                || !self.owned_partitions.is_empty()
                || self.follow_only,
            "kafka standby partitions need owned partitions or follow_only (a node without them \
             owns all)",
        )
    }

    /// The partitions this node owns at open in a topic of `partitions`: the configured
    /// ones, none (`follow_only`, or group ownership: the group assigns them later), or
    /// every one. An owned partition the topic does not have is an error.
    pub fn owned_in(&self, partitions: i32) -> Result<Vec<i32>, WalError> {
        if self.follow_only || self.group.is_some() {
            return Ok(Vec::new());
        }
        if self.owned_partitions.is_empty() {
            return Ok((0..partitions).collect());
        }
        match self.owned_partitions.iter().find(|&&p| p >= partitions) {
            Some(p) => Err(WalError::Kafka {
                op: "own partitions",
                brokers: self.brokers.clone(),
                reason: format!(
                    "partition {p} is configured owned but topic {} has {partitions}",
                    self.topic
                ),
            }),
            None => Ok(self.owned_partitions.clone()),
        }
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

/// librdkafka's error code of `error` (every producer error carries one; `Fail`, "generic
/// failure", for the few client errors that do not).
pub(crate) fn error_code(error: &KafkaError) -> RDKafkaErrorCode {
    error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)
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
        config.interrupt.check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let asked = admin
            .inner()
            .fetch_metadata(Some(name), Timeout::After(left.min(METADATA_SLICE)));
        let metadata = match asked {
            Ok(metadata) => metadata,
            // No broker answered yet (down, or still starting): ask again until the deadline.
            Err(e) if unanswered(&e) && Instant::now() < deadline => {
                thread::sleep(RETRY_PAUSE);
                continue;
            }
            Err(e) => {
                return Err(WalError::KafkaUnreachable {
                    brokers: brokers.to_owned(),
                    timeout_ms: config.connect_timeout_ms,
                    reason: e.to_string(),
                });
            }
        };
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
            // One admin request, after the brokers answered: bounded by the connect
            // timeout, not by an interrupt.
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
        thread::sleep(RETRY_PAUSE);
    }
}

/// Whether a metadata request failed only because no broker answered (yet).
fn unanswered(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MetadataFetch(
            RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
        )
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_only_node_owns_no_partition_and_may_stand_by() {
        let follow_only = KafkaConfig {
            follow_only: true,
            ..KafkaConfig::default()
        };
        follow_only.validate().unwrap();
        assert_eq!(follow_only.owned_in(4).unwrap(), Vec::<i32>::new());
        let standby = KafkaConfig {
            standby_partitions: vec![1, 2],
            ..follow_only.clone()
        };
        standby.validate().unwrap();
        let owning = KafkaConfig {
            owned_partitions: vec![0],
            ..follow_only
        };
        let refused = owning.validate().unwrap_err().to_string();
        assert!(
            refused.contains("follow_only owns no partition"),
            "{refused}"
        );
        let alone = KafkaConfig {
            standby_partitions: vec![1],
            ..KafkaConfig::default()
        };
        assert!(
            alone.validate().is_err(),
            "standby without owned or follow_only"
        );
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
