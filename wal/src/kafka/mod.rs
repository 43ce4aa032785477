//! [`KafkaLog`]: the write-ahead log on a Kafka topic (feature `kafka`) — an idempotent
//! rdkafka producer (librdkafka built from the crate's bundled sources), local LSNs, a durable
//! LSN driven by delivery reports, a bounded in-flight queue, topic creation, and
//! [`KafkaRecords`], the recovery reader that consumes every partition from the beginning.
//!
//! # Ordering
//!
//! Every record carries a key (the auction id, in decimal) and goes to the partition the
//! caller's [`Partitioner`] names for it (the node's is `gavel_proto::partition::partition_of`,
//! librdkafka's default partitioner on that key, so topics written before keep their
//! placement): one auction's records are in one partition. A recovery reader given the
//! partitioner refuses a record found in another partition than it names — the sign that the
//! topic's partition count changed under its records. The idempotent producer (`enable.idempotence=true`, `acks=all`, at most 5
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
//! append [`AppendError::Failed`](crate::AppendError::Failed). So no acknowledged record ever depends on a record that was
//! possibly persisted, and nothing is retried by hand (librdkafka's own idempotent retries are
//! the only retries; a hand retry of a possibly-persisted record could duplicate or reorder
//! it). A node whose log failed stops; its successor recovers from the topic.
//!
//! # The append path
//!
//! An append claims its LSNs in the lock-free ring of the file log (`writer::ring`) and
//! copies each record there with its key, partition and owner epoch; one sender thread takes
//! the ring in LSN order and hands each record to librdkafka (issue 20 item 3). The caller's
//! thread so pays for a copy, not for a produce call, and a partition's produce order is its
//! LSN order. A record the sender fails to produce fails the log (its LSN never becomes
//! durable). Ownership changes ([`KafkaLog::pause`], [`KafkaLog::give_up`]) wait for the
//! appends between their ownership check and their claim, so none slips past them.
//!
//! # Memory bound and back-pressure
//!
//! At most `queue_records_max` records and `queue_bytes_max` payload bytes are in flight
//! (appended, no report yet); beyond, [`KafkaLog::append_batch`] refuses with
//! [`AppendError::Backpressure`](crate::AppendError::Backpressure) and enqueues nothing. librdkafka's own queue is sized above
//! these bounds so it never refuses first. While the broker is slow or down the in-flight
//! records wait in librdkafka (up to `message_timeout_ms`, after which their reports fail and
//! so does the log), new bids get `Overloaded`, and the backlog drains when it returns (the
//! producer retries the connection at least once a second).

mod client;
pub mod fence;
pub mod group;
mod log;
mod reader;
mod sender;

pub use client::{GroupConfig, KafkaConfig, check_producer_config, ensure_topic};
pub(crate) use client::{ReaderContext, ensure_topic_named, kafka_error};
pub use log::{
    KafkaLog, METRIC_DELIVERIES, METRIC_DELIVERY_SECONDS, METRIC_FENCED, METRIC_IN_FLIGHT_BYTES,
    METRIC_IN_FLIGHT_RECORDS, Takeover,
};
pub use reader::{KafkaPosition, KafkaRecords};

/// The header carrying the owner epoch a record was written under (8 bytes, big-endian); a
/// record without it was written before epochs existed and has epoch 0.
pub(crate) const EPOCH_HEADER: &str = "gavel-epoch";
/// The header of a takeover marker (its value: the new owner); the marker carries no payload
/// and is not a log record.
pub(crate) const TAKEOVER_HEADER: &str = "gavel-takeover";

/// Maps a record's key (an auction id) to its partition in a topic of `partitions`
/// partitions. It must be a pure function of its arguments, the same in every process that
/// writes or reads the topic.
pub type Partitioner = fn(key: u64, partitions: i32) -> i32;
