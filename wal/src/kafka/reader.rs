//! [`KafkaRecords`]: the recovery reader of the Kafka log, and [`KafkaPosition`], where a
//! snapshot's state stands in the topic.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::client::{KafkaConfig, ReaderContext, kafka_error};
use super::{EPOCH_HEADER, Partitioner, TAKEOVER_HEADER};
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
    /// Per partition, the highest owner epoch below `next_offsets` (missing: 0): replay skips
    /// a later record of a lower epoch (a fenced owner's late write).
    pub epochs: Vec<u64>,
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
    /// Where the reading stands (apart from the consumer, which polled messages borrow).
    cursor: Cursor,
    stall_max: Duration,
    failed: bool,
    /// Ends the reading early with [`WalError::Interrupted`].
    interrupt: Interrupt,
}

/// A reader's position and checks.
struct Cursor {
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
    /// Set: every record's key must map to the partition it was read from.
    partitioner: Option<Partitioner>,
    /// The owner epochs read so far, and the stale records skipped.
    fence: EpochFence,
    /// The broker's timestamp of the last record handed out (Unix ms).
    last_timestamp_ms: Option<i64>,
}

impl std::fmt::Debug for KafkaRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRecords")
            .field("topic", &self.cursor.topic)
            .field("remaining_partitions", &self.cursor.remaining)
            .field("next_lsn", &self.cursor.next_lsn)
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
            // Only committed records (librdkafka's default, said here: a follower and a
            // recovery must never apply an aborted transaction's records).
            .set("isolation.level", "read_committed")
            .create_with_context(ReaderContext)
            .map_err(kafka_error("create the recovery consumer", brokers))?;
        let partitions = partitions(&consumer, config, start)?;
        let owned = config.owned_in(i32::try_from(partitions).unwrap_or(i32::MAX))?;
        // A partition this node does not own is not read, and its position is its beginning
        // (its auctions are not in this node's state).
        let next_offsets: Vec<i64> = (0..partitions)
            .map(|p| {
                start
                    .and_then(|s| s.next_offsets.get(p).copied())
                    .filter(|_| owned.contains(&(p as i32)))
                    .unwrap_or(-1)
            })
            .collect();
        assign(&consumer, config, &owned, &next_offsets)?;
        // Seeded from the start: a marker the start's offsets passed still fences.
        let fence_epochs = (0..partitions)
            .map(|p| {
                start
                    .filter(|_| next_offsets[p] >= 0)
                    .and_then(|s| s.epochs.get(p).copied())
                    .unwrap_or(0)
            })
            .collect();
        let mut done = vec![true; partitions];
        for &p in &owned {
            done[p as usize] = false;
        }
        Ok(KafkaRecords {
            consumer,
            cursor: Cursor {
                topic: config.topic.clone(),
                brokers: config.brokers.clone(),
                done,
                remaining: owned.len(),
                next_lsn: start.map_or(0, |s| s.lsn) + 1,
                next_offsets,
                partitioner: None,
                fence: EpochFence {
                    epochs: fence_epochs,
                    stale: 0,
                },
                last_timestamp_ms: None,
            },
            stall_max: timeout,
            failed: false,
            interrupt: config.interrupt.clone(),
        })
    }

    /// A follower of one `partition` of the topic (one this node does not own): from
    /// `start`'s offset of it (and under its epoch fence), or from its beginning; read with
    /// [`KafkaRecords::poll_record`], which waits for records past the partition's end.
    pub fn follow(
        config: &KafkaConfig,
        partition: i32,
        start: Option<&KafkaPosition>,
    ) -> Result<KafkaRecords, WalError> {
        let config = KafkaConfig {
            owned_partitions: vec![partition],
            standby_partitions: Vec::new(),
            follow_only: false,
            group: None,
            ..config.clone()
        };
        KafkaRecords::open_at(&config, start)
    }

    /// Refuses, from now on, a record whose key `partitioner` maps to another partition than
    /// the one it is in (or whose key is not a decimal id): the topic's partition count
    /// changed under its records, and an auction's records would be split.
    pub fn check_placement(mut self, partitioner: Partitioner) -> KafkaRecords {
        self.cursor.partitioner = Some(partitioner);
        self
    }

    /// Records skipped so far because a newer owner of their partition had taken over before
    /// them (a fenced node's late writes).
    pub fn stale_records(&self) -> u64 {
        self.cursor.fence.stale
    }

    /// Partitions of the topic.
    pub fn partitions(&self) -> usize {
        self.cursor.done.len()
    }

    /// The LSN of the last record read (the start's LSN before any).
    pub fn last_lsn(&self) -> Lsn {
        self.cursor.next_lsn - 1
    }

    /// Per partition, the offset after the last record read (negative: none read from a
    /// start at the beginning).
    pub fn next_offsets(&self) -> &[i64] {
        &self.cursor.next_offsets
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
        && (start.topic != config.topic || start.next_offsets.len() != partitions)
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

/// Assigns the `owned` partitions to `consumer`, each at its offset in `next_offsets`
/// (negative: its beginning).
fn assign(
    consumer: &BaseConsumer<ReaderContext>,
    config: &KafkaConfig,
    owned: &[i32],
    next_offsets: &[i64],
) -> Result<(), WalError> {
    let brokers = config.brokers.as_str();
    let mut assignment = TopicPartitionList::new();
    for &partition in owned {
        let next = next_offsets[partition as usize];
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

/// A record's owner epoch (0 without the header) and whether it is a takeover marker.
fn epoch_of(message: &impl Message) -> (u64, bool) {
    let (mut epoch, mut takeover) = (0, false);
    for header in message.headers().iter().flat_map(|h| h.iter()) {
        match header.key {
            EPOCH_HEADER => {
                let bytes = header.value.and_then(|v| <[u8; 8]>::try_from(v).ok());
                epoch = bytes.map_or(0, u64::from_be_bytes);
            }
            TAKEOVER_HEADER => takeover = true,
            _ => {}
        }
    }
    (epoch, takeover)
}

/// Per partition, the highest owner epoch read so far (records or takeover markers), and the
/// records skipped for an older one.
#[derive(Debug)]
struct EpochFence {
    epochs: Vec<u64>,
    stale: u64,
}

impl EpochFence {
    /// Whether `message` is a log record to replay: not a takeover marker (which raises its
    /// partition's epoch), and not written under an epoch older than one already read in its
    /// partition (a fenced owner's late write: skipped, counted and logged).
    fn admit(&mut self, topic: &str, message: &impl Message) -> bool {
        let (epoch, takeover) = epoch_of(message);
        let Some(highest) = usize::try_from(message.partition())
            .ok()
            .and_then(|p| self.epochs.get_mut(p))
        else {
            return true;
        };
        if epoch < *highest {
            self.stale += 1;
            log::warn!(
                target: "gavel_wal::kafka",
                "skipping the record at offset {} of partition {} of {}: written under owner \
                 epoch {epoch} after the partition was taken over under epoch {}",
                message.offset(),
                message.partition(),
                topic,
                *highest
            );
            return false;
        }
        *highest = epoch;
        !takeover
    }
}

impl Cursor {
    /// Whether `message` is in the partition the partitioner names for its key (always,
    /// without a partitioner).
    fn placed(&self, message: &impl Message) -> Result<(), WalError> {
        let Some(partitioner) = self.partitioner else {
            return Ok(());
        };
        let partitions = i32::try_from(self.done.len()).unwrap_or(i32::MAX);
        let key = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse::<u64>().ok());
        let expected = key.map(|key| partitioner(key, partitions));
        if expected == Some(message.partition()) {
            return Ok(());
        }
        let key = key.map_or_else(|| "no decimal key".to_owned(), |k| format!("key {k}"));
        Err(WalError::Kafka {
            op: "read the topic",
            brokers: self.brokers.clone(),
            reason: format!(
                "the record at offset {} of partition {} of {} has {key}, which belongs in \
                 partition {} of {partitions}: the topic's partition count changed (or \
                 another writer chose partitions); refusing to replay a split auction",
                message.offset(),
                message.partition(),
                self.topic,
                expected.map_or_else(|| "none".to_owned(), |p| p.to_string()),
            ),
        })
    }
}

/// What one polled message or event is to the reader.
enum Step {
    /// A log record to hand out.
    Record(Record),
    /// Nothing to hand out (a marker, a stale record, the end of a partition).
    Skip,
    /// The reading stopped with this error.
    Failed(WalError),
}

impl Cursor {
    /// Takes one polled message or event: positions, the epoch fence, the placement check,
    /// partition ends.
    fn step(&mut self, polled: KafkaResult<BorrowedMessage<'_>>) -> Step {
        match polled {
            Ok(message) => {
                let next = usize::try_from(message.partition())
                    .ok()
                    .and_then(|p| self.next_offsets.get_mut(p));
                if let Some(next) = next {
                    *next = message.offset() + 1;
                }
                if !self.fence.admit(&self.topic, &message) {
                    return Step::Skip;
                }
                if let Err(misplaced) = self.placed(&message) {
                    return Step::Failed(misplaced);
                }
                self.last_timestamp_ms = message.timestamp().to_millis();
                let lsn = self.next_lsn;
                self.next_lsn += 1;
                let payload = message.payload().unwrap_or_default().to_vec();
                Step::Record(Record { lsn, payload })
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                let done = usize::try_from(partition)
                    .ok()
                    .and_then(|p| self.done.get_mut(p));
                if let Some(done) = done.filter(|done| !**done) {
                    *done = true;
                    self.remaining -= 1;
                }
                Step::Skip
            }
            Err(error) => Step::Failed(kafka_error("read the topic", &self.brokers)(error)),
        }
    }
}

impl KafkaRecords {
    /// A follower's read ([`KafkaRecords::follow`]): the next record if one comes within
    /// `timeout`, else `None` (try again later; a partition's end is not the end of a
    /// followed partition). After an error it returns that error once and then `None`.
    pub fn poll_record(&mut self, timeout: Duration) -> Option<Result<Record, WalError>> {
        if self.failed {
            return None;
        }
        let polled = self.consumer.poll(Timeout::After(timeout))?;
        match self.cursor.step(polled) {
            Step::Record(record) => Some(Ok(record)),
            Step::Skip => None,
            Step::Failed(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }

    /// Whether every partition read was read to its end once (a follower caught up).
    pub fn reached_end(&self) -> bool {
        self.cursor.remaining == 0
    }

    /// The broker's timestamp of the last record handed out, in Unix milliseconds.
    pub fn last_timestamp_ms(&self) -> Option<i64> {
        self.cursor.last_timestamp_ms
    }

    /// Records of `partition` not read yet: its high watermark minus the offset after the
    /// last record read (or its low watermark, none read), asked of the broker.
    pub fn behind(&self, partition: i32, timeout: Duration) -> Result<u64, WalError> {
        let (low, high) = self.watermarks(partition, timeout)?;
        let next = self.next_offset(partition).max(low);
        Ok(u64::try_from(high - next).unwrap_or(0))
    }

    /// The low and high watermarks of `partition`, asked of the broker.
    pub fn watermarks(&self, partition: i32, timeout: Duration) -> Result<(i64, i64), WalError> {
        let op = "read a partition's watermarks";
        (self.consumer)
            .fetch_watermarks(&self.cursor.topic, partition, Timeout::After(timeout))
            .map_err(kafka_error(op, &self.cursor.brokers))
    }

    /// The offset after the last record (or marker) of `partition` read; negative if none.
    pub fn next_offset(&self, partition: i32) -> i64 {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.cursor.next_offsets.get(p).copied())
            .unwrap_or(-1)
    }

    /// Where the reading stands: a reader opened at this position goes on with the next
    /// record, under the same epoch fence.
    pub fn position(&self) -> KafkaPosition {
        KafkaPosition {
            lsn: self.last_lsn(),
            topic: self.cursor.topic.clone(),
            next_offsets: self.cursor.next_offsets.clone(),
            epochs: self.cursor.fence.epochs.clone(),
        }
    }
}

impl Iterator for KafkaRecords {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut idle_since = Instant::now();
        while self.cursor.remaining > 0 {
            if let Err(interrupted) = self.interrupt.check() {
                self.failed = true;
                return Some(Err(interrupted));
            }
            let Some(polled) = self.consumer.poll(Timeout::After(RECOVERY_POLL)) else {
                if idle_since.elapsed() >= self.stall_max {
                    self.failed = true;
                    return Some(Err(WalError::Kafka {
                        op: "read the topic",
                        brokers: self.cursor.brokers.clone(),
                        reason: format!(
                            "nothing for {} ms with {} partitions of {} not read to their end",
                            self.stall_max.as_millis(),
                            self.cursor.remaining,
                            self.cursor.topic
                        ),
                    }));
                }
                continue;
            };
            match self.cursor.step(polled) {
                Step::Record(record) => return Some(Ok(record)),
                // A partition's end (or a skipped record) is progress too.
                Step::Skip => idle_since = Instant::now(),
                Step::Failed(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
        None
    }
}
