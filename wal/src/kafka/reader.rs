//! [`KafkaRecords`]: the recovery reader of the Kafka log, and [`KafkaPosition`], where a
//! snapshot's state stands in the topic.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::client::{KafkaConfig, ReaderContext, kafka_error};
use crate::error::WalError;
use crate::segment::Record;
use crate::{Interrupt, Lsn};

/// One poll of the recovery consumer.
const RECOVERY_POLL: Duration = Duration::from_millis(200);

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

/// Reads every record of a topic, each partition from its beginning to its end (the
/// consumer's end-of-partition event, so the end is what the broker serves, not a separately
/// listed offset), numbering them 1, 2, … in read order. Partitions interleave, but each
/// partition — and so each auction — comes in its log order, which is what replay needs.
/// Memory: librdkafka's fetch buffers and one payload. Ends at the first error; a stretch of
/// `connect_timeout_ms` without any record or end event is an error too (bounded), and so is
/// the configuration's [`Interrupt`] once set ([`WalError::Interrupted`], within a poll).
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
    /// Ends the reading early with [`WalError::Interrupted`].
    interrupt: Interrupt,
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
        let partitions = partitions(&consumer, config, start)?;
        let next_offsets: Vec<i64> = (0..partitions)
            .map(|p| {
                start
                    .and_then(|s| s.next_offsets.get(p).copied())
                    .unwrap_or(-1)
            })
            .collect();
        assign(&consumer, config, &next_offsets)?;
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
            interrupt: config.interrupt.clone(),
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

/// The topic's partition count; an error if the topic is missing or `start` is a position in
/// another topic (or in more partitions than it has).
fn partitions(
    consumer: &BaseConsumer<ReaderContext>,
    config: &KafkaConfig,
    start: Option<&KafkaPosition>,
) -> Result<usize, WalError> {
    let brokers = config.brokers.as_str();
    let timeout = Duration::from_millis(config.connect_timeout_ms);
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
    Ok(partitions)
}

/// Assigns every partition to `consumer` at its offset in `next_offsets` (negative: its
/// beginning).
fn assign(
    consumer: &BaseConsumer<ReaderContext>,
    config: &KafkaConfig,
    next_offsets: &[i64],
) -> Result<(), WalError> {
    let brokers = config.brokers.as_str();
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
        .map_err(kafka_error("assign the partitions", brokers))
}

impl Iterator for KafkaRecords {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut idle_since = Instant::now();
        while self.remaining > 0 {
            if let Err(interrupted) = self.interrupt.check() {
                self.failed = true;
                return Some(Err(interrupted));
            }
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
