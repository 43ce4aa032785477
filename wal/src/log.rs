//! [`Log`]: the one interface the node writes through, over either backend — the embedded
//! file log ([`Wal`], the default) or a Kafka topic ([`KafkaLog`](crate::kafka::KafkaLog),
//! feature `kafka`).
//!
//! Both give the same contract: `append_batch` of one decision's records (all or none,
//! contiguous LSNs, [`AppendError::Backpressure`] when the bounded queue is full) → the last
//! LSN as the receipt; a durable LSN that only ever covers records on stable storage (a
//! returned fdatasync; `PERSISTED` delivery reports for a contiguous prefix), with a blocking
//! wait and a runtime-agnostic [`DurableFuture`]; a failure that stops the log for good; and
//! shutdown that flushes what was accepted. Recovery readers differ in what they hold but
//! agree on what replay needs: each auction's records in the order they were appended (the
//! file log: log order; Kafka: each partition in order, one auction per partition).
//!
//! Snapshots are files either way: the file log keeps them beside its segments and compacts
//! the log behind them; a Kafka node keeps them in its data directory with the partitions'
//! offsets they cover ([`KafkaLog::durable_position`](crate::kafka::KafkaLog::durable_position))
//! and replays the topic from those offsets.

use std::sync::Arc;
use std::time::Duration;

use crate::durability::Durability;
use crate::error::{AppendError, LogFailure, WaitError, WalError};
use crate::{DurableFuture, Lsn, Wal, WalMetrics};

/// The node's write-ahead log, whichever backend holds it.
#[derive(Debug)]
pub enum Log {
    /// The embedded segmented file log.
    File(Wal),
    /// A Kafka topic (boxed: its client handles and settings make it much larger than a
    /// `Wal` handle).
    #[cfg(feature = "kafka")]
    Kafka(Box<crate::kafka::KafkaLog>),
}

impl Log {
    /// Appends the records of one decision about the auction `key` (the Kafka partition key;
    /// the file log ignores it) with contiguous LSNs; returns the last LSN. All or none.
    pub fn append_batch<P: AsRef<[u8]>>(
        &self,
        key: u64,
        payloads: &[P],
    ) -> Result<Lsn, AppendError> {
        match self {
            Log::File(wal) => {
                let _ = key;
                wal.append_batch(payloads)
            }
            #[cfg(feature = "kafka")]
            Log::Kafka(kafka) => kafka.append_batch(key, payloads),
        }
    }

    /// The last LSN assigned so far (durable or not).
    pub fn last_appended_lsn(&self) -> Lsn {
        match self {
            Log::File(wal) => wal.last_appended_lsn(),
            #[cfg(feature = "kafka")]
            Log::Kafka(kafka) => kafka.last_appended_lsn(),
        }
    }

    /// The highest LSN such that it and every LSN below it are on stable storage.
    pub fn durable_lsn(&self) -> Lsn {
        self.durability().durable_lsn()
    }

    /// Blocks until `lsn` is durable (returns the durable LSN), the log stops, or `timeout`.
    pub fn wait_durable(&self, lsn: Lsn, timeout: Duration) -> Result<Lsn, WaitError> {
        self.durability().wait(lsn, timeout)
    }

    /// A future resolving once `lsn` is durable (or the log stops).
    pub fn durable(&self, lsn: Lsn) -> DurableFuture {
        DurableFuture::new(Arc::clone(self.durability()), lsn)
    }

    /// Why the log failed, if it did (it then accepts nothing and nothing more is durable).
    pub fn failure(&self) -> Option<LogFailure> {
        self.durability().failure()
    }

    fn durability(&self) -> &Arc<Durability> {
        match self {
            Log::File(wal) => wal.durability(),
            #[cfg(feature = "kafka")]
            Log::Kafka(kafka) => kafka.durability(),
        }
    }

    /// The counters, for metrics.
    pub fn metrics(&self) -> WalMetrics {
        match self {
            Log::File(wal) => wal.metrics(),
            #[cfg(feature = "kafka")]
            Log::Kafka(kafka) => kafka.metrics(),
        }
    }

    /// Stops accepting appends and makes everything accepted durable (or reports why not).
    /// Returns the final durable LSN. Idempotent.
    pub fn shutdown(&self) -> Result<Lsn, WalError> {
        match self {
            Log::File(wal) => wal.shutdown(),
            #[cfg(feature = "kafka")]
            Log::Kafka(kafka) => kafka.shutdown(),
        }
    }

    /// The file log, if this is one (snapshots and compaction are file-only).
    pub fn as_file(&self) -> Option<&Wal> {
        match self {
            Log::File(wal) => Some(wal),
            #[cfg(feature = "kafka")]
            Log::Kafka(_) => None,
        }
    }
}
