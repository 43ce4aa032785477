//! The log's error types: [`WalError`] for opening, recovery, compaction and offline tools;
//! [`SnapshotDefect`], what is wrong with a snapshot file; [`AppendError`] and [`WaitError`],
//! small `Copy` values for the hot path.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

#[cfg(feature = "kafka")]
use rdkafka::types::RDKafkaErrorCode;

use thiserror::Error;

use crate::Lsn;
use crate::frame::FrameError;

/// An error opening, recovering, reading or maintaining a log directory.
#[derive(Debug, Error)]
pub enum WalError {
    /// An I/O operation on a file or directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"open"`, `"read"`, `"fsync"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record that is not part of the torn tail of the last segment fails to decode.
    #[error("corrupt record in {} at byte offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the record in the segment.
        offset: u64,
        /// What is wrong with it.
        reason: FrameError,
    },
    /// A bad record in the last segment is followed by a valid record of a later write batch,
    /// so it is corruption of synced data, not a torn tail.
    #[error(
        "corrupt record in {} at byte offset {offset}: {reason}; a valid record of a later \
         batch follows at byte offset {valid_offset}, so this is not a torn tail",
        file.display()
    )]
    CorruptBeforeValid {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: FrameError,
        /// Byte offset of the valid record found after it.
        valid_offset: u64,
    },
    /// A record checks out but carries an LSN other than the next one (swapped or foreign).
    #[error(
        "record in {} at byte offset {offset} has LSN {found}, expected {expected}",
        file.display()
    )]
    LsnMismatch {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The LSN that should come next.
        expected: Lsn,
        /// The LSN the record carries.
        found: Lsn,
    },
    /// Records are missing between two segments.
    #[error(
        "missing segment: {} ends at LSN {prev_last_lsn} but the next segment {} starts at LSN \
         {next_first_lsn}",
        prev.display(),
        next.display()
    )]
    MissingSegment {
        /// The earlier segment.
        prev: PathBuf,
        /// Its last LSN.
        prev_last_lsn: Lsn,
        /// The following segment.
        next: PathBuf,
        /// Its first LSN (from its name).
        next_first_lsn: Lsn,
    },
    /// Two segments overlap: the later one starts at or before the earlier one's end.
    #[error(
        "overlapping segments: {} ends at LSN {prev_last_lsn} but {} starts at LSN \
         {next_first_lsn}",
        prev.display(),
        next.display()
    )]
    OverlappingSegments {
        /// The earlier segment.
        prev: PathBuf,
        /// Its last LSN.
        prev_last_lsn: Lsn,
        /// The following segment.
        next: PathBuf,
        /// Its first LSN (from its name).
        next_first_lsn: Lsn,
    },
    /// A `.wal` file whose name is not a 20-digit LSN.
    #[error("unexpected segment file name {}", path.display())]
    BadSegmentName {
        /// The file.
        path: PathBuf,
    },
    /// Records before the first one the log still holds were asked for.
    #[error("records from LSN {requested} were asked for, but the log starts at LSN {first}")]
    LogStartsAfter {
        /// The first LSN asked for.
        requested: Lsn,
        /// The first LSN the log holds.
        first: Lsn,
    },
    /// Records after the last one the log holds were asked for (e.g. a snapshot is ahead of
    /// the log).
    #[error("records from LSN {requested} were asked for, but the log ends at LSN {last}")]
    LogEndsBefore {
        /// The first LSN asked for.
        requested: Lsn,
        /// The last LSN the log holds (0 if none).
        last: Lsn,
    },
    /// Another process (or another open log in this process) holds the directory's lock.
    #[error(
        "{} is in use by another gavel process (its lock file {} is held); stop it first",
        dir.display(),
        lock_file.display()
    )]
    Locked {
        /// The log directory.
        dir: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
    },
    /// The directory holds snapshots but no segment: the log was removed by hand.
    #[error("{} holds snapshots but no log segment", dir.display())]
    SegmentsMissing {
        /// The log directory.
        dir: PathBuf,
    },
    /// The newest snapshot is corrupt and the log no longer holds every record after the
    /// snapshot that would replace it (see [`snapshot`](crate::snapshot)).
    #[error(
        "snapshot {} is corrupt ({defect}) and cannot be replaced: the fallback is LSN \
         {fallback_lsn} but the log starts at LSN {log_first_lsn}",
        corrupt.display()
    )]
    SnapshotUnusable {
        /// The newest corrupt snapshot file.
        corrupt: PathBuf,
        /// What is wrong with it.
        defect: SnapshotDefect,
        /// LSN of the valid snapshot that would be used instead (0 = none).
        fallback_lsn: Lsn,
        /// First LSN the log holds (0 = no segment).
        log_first_lsn: Lsn,
    },
    /// A snapshot was asked for at an LSN that is not yet durable.
    #[error("snapshot at LSN {lsn} is ahead of the durable LSN {durable}")]
    SnapshotAheadOfLog {
        /// The snapshot's LSN.
        lsn: Lsn,
        /// The durable LSN.
        durable: Lsn,
    },
    /// A configuration value is out of range.
    #[error("invalid WAL configuration: {0}")]
    Config(&'static str),
    /// The Kafka brokers did not answer within the start's bounded wait.
    #[error(
        "the Kafka brokers {brokers} did not answer within {timeout_ms} ms: {reason} (check \
         the address and that the broker runs)"
    )]
    KafkaUnreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// The bounded wait, in milliseconds.
        timeout_ms: u64,
        /// What librdkafka said.
        reason: String,
    },
    /// A Kafka operation failed (topic creation, permissions, reading the topic, ...).
    #[error("could not {op} on the Kafka brokers {brokers}: {reason}")]
    Kafka {
        /// What was being done.
        op: &'static str,
        /// The bootstrap brokers.
        brokers: String,
        /// What librdkafka or the broker said.
        reason: String,
    },
    /// Another node holds a partition's writer lease (see `fence`): one node writes a
    /// partition.
    /// The start waited for the lease to lapse and the holder kept renewing it (or its claim
    /// won over this node's).
    #[error(
        "partition {partition} of the Kafka topic {topic} is written by another node \
         ({owner}): it holds the partition's writer lease ({lease_ms} ms), last renewed \
         {age_ms} ms ago, which lapses in {lapses_in_ms} ms unless renewed; this node waited \
         {waited_ms} ms and saw it renewed {renewals} times. Only one node may write a \
         partition: stop that node (a clean stop releases the lease at once), start this one \
         once its lease has lapsed, or give the nodes disjoint --kafka-owned-partitions"
    )]
    KafkaFenced {
        /// The log topic.
        topic: String,
        /// The partition whose lease another node holds.
        partition: i32,
        /// The holder of the lease.
        owner: String,
        /// Since its last claim or heartbeat, in milliseconds.
        age_ms: u64,
        /// Its lease, in milliseconds.
        lease_ms: u64,
        /// Until the lease lapses unless the holder renews it, in milliseconds (0: lapsed).
        lapses_in_ms: u64,
        /// How long this node waited for the lease to lapse, in milliseconds.
        waited_ms: u64,
        /// Renewals by the holder seen while waiting.
        renewals: u32,
    },
    /// The Kafka producer's effective configuration would allow reordering or duplicates.
    #[error("refusing the Kafka producer setting {setting}={value:?}: {why}")]
    KafkaUnsafeConfig {
        /// The librdkafka property.
        setting: String,
        /// Its effective value.
        value: String,
        /// Why it is unsafe.
        why: &'static str,
    },
    /// The writer failed earlier (see [`Wal::failure`](crate::Wal::failure)); the log is stopped.
    #[error("the log writer failed and the log is stopped: {0}")]
    WriterFailed(#[source] LogFailure),
    /// The start was interrupted ([`Interrupt`](crate::Interrupt)): asked to stop while it
    /// waited or replayed. Nothing was written past what recovery writes first (a torn tail
    /// truncated); the next start recovers as this one would have.
    #[error("interrupted: asked to stop during recovery")]
    Interrupted,
}

impl WalError {
    /// `Ok` when `ok`, else [`WalError::Config`] saying `what` (a configuration check).
    pub(crate) fn require(ok: bool, what: &'static str) -> Result<(), WalError> {
        if ok {
            Ok(())
        } else {
            Err(WalError::Config(what))
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// Why a log stopped for good ([`Log::failure`](crate::Log::failure)): nothing more is
/// appended or becomes durable. The first failure wins.
#[derive(Debug, Clone)]
pub enum LogFailure {
    /// A file operation of the file log's writer failed (a write, an fdatasync, a new
    /// segment); fsync is never retried.
    Io {
        /// What was being done (`"write"`, `"fdatasync"`, `"create"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kind of the I/O error.
        kind: io::ErrorKind,
        /// The I/O error itself, for its message.
        source: Arc<io::Error>,
    },
    /// librdkafka refused a record of a decision, so the rest of it cannot follow.
    #[cfg(feature = "kafka")]
    Produce {
        /// The record's local LSN.
        lsn: Lsn,
        /// librdkafka's error.
        code: RDKafkaErrorCode,
    },
    /// A record's delivery report was not a success with status `PERSISTED`.
    #[cfg(feature = "kafka")]
    NotPersisted {
        /// The record's local LSN.
        lsn: Lsn,
        /// The report's persistence status.
        status: Persistence,
        /// The report's error, if it was one (`None`: it said success).
        code: Option<RDKafkaErrorCode>,
    },
    /// Shutdown gave up waiting for the delivery reports of the records in flight.
    #[cfg(feature = "kafka")]
    Unflushed {
        /// Records without a report.
        records: usize,
        /// How long shutdown waited, in seconds.
        waited_s: u64,
        /// librdkafka's error.
        code: RDKafkaErrorCode,
    },
    /// The node may have lost its Kafka writer lease (another node may write the topic now):
    /// a heartbeat was not persisted within the lease.
    #[cfg(feature = "kafka")]
    LeaseLost {
        /// The log topic.
        topic: String,
        /// The lease, in milliseconds.
        lease_ms: u64,
        /// What happened to the heartbeat.
        beat: HeartbeatFailure,
    },
    /// The replay of a partition taken over while running failed; the state holds part of it.
    #[cfg(feature = "kafka")]
    Takeover {
        /// The partition.
        partition: i32,
        /// What failed.
        reason: String,
    },
    /// A record was reported persisted after its partition's lease had lapsed (a paused
    /// process, say): another node may have taken the partition over.
    #[cfg(feature = "kafka")]
    Fenced {
        /// The log topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's LSN.
        lsn: Lsn,
    },
}

impl LogFailure {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            op,
            path,
            kind: source.kind(),
            source: Arc::new(source),
        }
    }
}

impl fmt::Display for LogFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io {
                op, path, source, ..
            } => write!(f, "{op} {}: {source}", path.display()),
            #[cfg(feature = "kafka")]
            Self::Produce { lsn, code } => write!(
                f,
                "producing the record at LSN {lsn}: Message production error: {code}"
            ),
            #[cfg(feature = "kafka")]
            Self::NotPersisted {
                lsn,
                status,
                code: None,
            } => write!(
                f,
                "the record at LSN {lsn} was not persisted: delivery succeeded with status \
                 {status}"
            ),
            #[cfg(feature = "kafka")]
            Self::NotPersisted {
                lsn,
                status,
                code: Some(code),
            } => write!(
                f,
                "the record at LSN {lsn} was not persisted: Message production error: {code} \
                 (status {status})"
            ),
            #[cfg(feature = "kafka")]
            Self::Unflushed {
                records,
                waited_s,
                code,
            } => write!(
                f,
                "shutdown: {records} records still without a delivery report after {waited_s} \
                 s: Flush error: {code}"
            ),
            #[cfg(feature = "kafka")]
            Self::LeaseLost {
                topic,
                lease_ms,
                beat,
            } => write!(
                f,
                "the Kafka writer lease of {topic} may have lapsed: no heartbeat persisted \
                 within {lease_ms} ms ({beat}); another node may write the topic now"
            ),
            #[cfg(feature = "kafka")]
            Self::Takeover { partition, reason } => write!(
                f,
                "replaying partition {partition}, taken over from another node, failed: \
                 {reason}; the state holds part of it, so the node stops (a restart replays \
                 it whole)"
            ),
            #[cfg(feature = "kafka")]
            Self::Fenced {
                topic,
                partition,
                lsn,
            } => write!(
                f,
                "the writer lease of partition {partition} of the Kafka topic {topic} had \
                 lapsed when the record at LSN {lsn} was reported persisted: another node may \
                 own the partition now (its replay skips this node's later records), so \
                 nothing more is acknowledged"
            ),
        }
    }
}

impl std::error::Error for LogFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source.as_ref()),
            #[cfg(feature = "kafka")]
            _ => None,
        }
    }
}

/// The persistence status of a Kafka delivery report (librdkafka's `rd_kafka_msg_status_t`).
#[cfg(feature = "kafka")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Never sent, or the broker said it was not written.
    NotPersisted,
    /// Sent, and no answer says whether it was written.
    PossiblyPersisted,
    /// Written and acknowledged by all in-sync replicas (`acks=all`).
    Persisted,
}

#[cfg(feature = "kafka")]
impl Persistence {
    /// The label of the `gavel_wal_kafka_deliveries_total` metric for a successful report.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::NotPersisted => "not_persisted",
            Self::PossiblyPersisted => "possibly_persisted",
            Self::Persisted => "persisted",
        }
    }
}

#[cfg(feature = "kafka")]
impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotPersisted => "NOT_PERSISTED",
            Self::PossiblyPersisted => "POSSIBLY_PERSISTED",
            Self::Persisted => "PERSISTED",
        })
    }
}

/// What became of a writer-lease record (a claim, heartbeat or release) that was not
/// persisted in time.
#[cfg(feature = "kafka")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeartbeatFailure {
    /// It was persisted, but later than the lease after the previous heartbeat.
    #[error("persisted too late")]
    Late,
    /// librdkafka refused it or its delivery failed.
    #[error("Message production error: {code}")]
    Kafka {
        /// librdkafka's error.
        code: RDKafkaErrorCode,
    },
    /// No delivery report came within the wait.
    #[error("no delivery report within {waited_ms} ms")]
    NoReport {
        /// The wait, in milliseconds.
        waited_ms: u64,
    },
    /// The lease was being given up (shutdown); the record was abandoned.
    #[error("stopped")]
    Stopped,
}

/// What is wrong with a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SnapshotDefect {
    /// Shorter than the header.
    #[error("shorter than the snapshot header")]
    TooShort,
    /// The magic bytes are wrong.
    #[error("bad magic")]
    BadMagic,
    /// The version byte is not one this code reads.
    #[error("unknown snapshot format version {0}")]
    UnknownVersion(u8),
    /// The file length disagrees with the declared payload length.
    #[error("declared payload of {declared} bytes but {actual} bytes follow the header")]
    LengthMismatch {
        /// Declared payload length.
        declared: u64,
        /// Bytes actually after the header.
        actual: u64,
    },
    /// The CRC does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Stored CRC.
        stored: u32,
        /// Computed CRC.
        computed: u32,
    },
    /// The LSN inside disagrees with the file name.
    #[error("file name says LSN {named} but the header says {stored}")]
    NameMismatch {
        /// LSN in the name.
        named: Lsn,
        /// LSN in the header.
        stored: Lsn,
    },
}

/// Why [`Wal::append`](crate::Wal::append) refused a record. Nothing was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AppendError {
    /// The queue is full (records or bytes); retry later.
    #[error("write-ahead log queue full; retry after {retry_after_us} µs")]
    Backpressure {
        /// A hint: roughly one sync's latency.
        retry_after_us: u64,
    },
    /// The payload exceeds [`PAYLOAD_BYTES_MAX`](crate::frame::PAYLOAD_BYTES_MAX).
    #[error("record payload of {len} bytes exceeds the maximum")]
    TooLarge {
        /// The payload length.
        len: usize,
    },
    /// The writer failed (write or fsync error); the log accepts nothing more.
    #[error("the write-ahead log failed and accepts no more records")]
    Failed,
    /// The log was shut down.
    #[error("the write-ahead log is shut down")]
    Closed,
    /// The record's Kafka partition is not this node's to write (another node owns it).
    #[error("partition {partition} of the write-ahead log is owned by another node")]
    NotOwner {
        /// The partition.
        partition: i32,
    },
}

/// Why waiting for durability ended without the LSN being durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WaitError {
    /// The timeout passed first.
    #[error("timed out waiting for durability; durable LSN is {durable}")]
    Timeout {
        /// The durable LSN when the wait ended.
        durable: Lsn,
    },
    /// The writer failed; the LSN will never become durable in this process.
    #[error("the write-ahead log failed; durable LSN stays at {durable}")]
    Failed {
        /// The last durable LSN.
        durable: Lsn,
    },
    /// The log shut down without this LSN (it was never appended).
    #[error("the write-ahead log is shut down; durable LSN is {durable}")]
    Closed {
        /// The last durable LSN.
        durable: Lsn,
    },
}
