//! `gavel-wal`: Gavel's write-ahead log — payload-agnostic framed records in segment files,
//! group commit with one `fdatasync` per batch, atomic snapshots, and recovery that truncates
//! a torn tail but refuses corruption anywhere else.
//!
//! The log knows nothing of auctions: a record is an opaque byte payload with a log sequence
//! number ([`Lsn`]: dense, from 1, +1 per record, LSN order = on-disk order).
//!
//! # Modules
//!
//! - [`frame`] — the record header, its encoder and decoder (CRC32C over version, LSN, byte
//!   position and payload).
//! - [`segment`] — segment naming and listing, the recovery scan and its **torn-tail rule**,
//!   the streaming [`Records`] reader.
//! - [`writer`] — [`Wal`]: open + recover, non-blocking `append` into a bounded queue, the
//!   group-commit writer thread, durable LSN (atomic, blocking wait, `Future`), metrics,
//!   compaction, shutdown.
//! - [`log`] — [`Log`], the one interface over the file log and the Kafka log.
//! - `kafka` (feature `kafka`) — the log on a Kafka topic: `client` (configuration, topic
//!   creation), `log` (`KafkaLog`: an idempotent rdkafka producer, the durable LSN from
//!   `PERSISTED` delivery reports), `reader` (`KafkaRecords`, the recovery reader) and
//!   `fence` (`WriterLease`: one writer per topic, a lease in a lock topic).
//! - [`snapshot`] — atomic snapshot files, the restore/fallback rule, retention.
//! - [`storage`] — [`Storage`], the seam of every file operation: [`OsStorage`] (the real
//!   filesystem, the default) or a simulated disk ([`Wal::open_on`]).
//! - `sim_bugs` (feature `sim-bugs`, never in a real build) — switches of hand-injected bugs
//!   for the fault matrix of `gavel-sim`.
//! - [`inspect`] — offline [`verify`] and [`records`] for `gavel wal verify` / `dump`.
//! - [`error`] — [`WalError`], [`SnapshotDefect`]; the hot path's small `Copy` errors [`AppendError`],
//!   [`WaitError`].
//!
//! # On-disk format
//!
//! A log directory holds segments `<first LSN, 20 digits>.wal` and snapshots
//! `snapshot-<LSN, 20 digits>.snap`. A segment is records back to back, no file header; each
//! record (little-endian):
//!
//! | offset | bytes | field         | meaning                                                   |
//! |-------:|------:|---------------|-----------------------------------------------------------|
//! | 0      | 4     | `payload_len` | ≤ 1 MiB ([`frame::PAYLOAD_BYTES_MAX`])                    |
//! | 4      | 1     | `version`     | 1                                                         |
//! | 5      | 8     | `lsn`         | log sequence number                                       |
//! | 13     | 8     | `batch_start` | segment offset where this record's write batch begins     |
//! | 21     | 4     | `crc`         | CRC32C of bytes 0..21 ‖ record offset in segment (u64) ‖ payload |
//! | 25     | n     | payload       |                                                           |
//!
//! A snapshot file: `GAVELSNP` ‖ version u8 ‖ LSN u64 ‖ payload length u64 ‖ CRC32C u32 (of
//! all before it and the payload) ‖ payload — see [`snapshot`].
//!
//! # Start-up, in the node
//!
//! ```no_run
//! # fn main() -> Result<(), gavel_wal::WalError> {
//! use gavel_wal::{Wal, WalConfig, latest_snapshot};
//! let dir = std::path::Path::new("./data");
//! let (wal, recovery) = Wal::open(dir, WalConfig::default())?; // truncates a torn tail
//! if let Some(torn) = recovery.torn_tail() { /* log it */ let _ = torn; }
//! let snapshot = latest_snapshot(dir)?; // restore the engine from it, if any
//! for record in recovery.replay(snapshot.map_or(0, |s| s.lsn) + 1)? {
//!     let record = record?; // apply record.payload through the engine
//!     let _ = record;
//! }
//! let lsn = wal.append(b"event").expect("queue has room");
//! wal.wait_durable(lsn, std::time::Duration::from_secs(1)).expect("synced");
//! wal.shutdown()?;
//! # Ok(()) }
//! ```

mod durability;
pub mod error;
pub mod frame;
pub mod inspect;
mod interrupt;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
pub mod segment;
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs;
pub mod snapshot;
pub mod storage;
pub mod writer;

/// A log sequence number: dense, starting at 1, +1 per record; 0 means "none".
pub type Lsn = u64;

pub use durability::DurableFuture;
pub use error::{AppendError, LogFailure, SnapshotDefect, WaitError, WalError};
#[cfg(feature = "kafka")]
pub use error::{HeartbeatFailure, Persistence};
pub use inspect::{VerifyReport, records, verify};
pub use interrupt::Interrupt;
pub use log::Log;
pub use segment::{Record, Records, TornTail};
pub use snapshot::{Snapshot, latest_snapshot, latest_snapshot_in, write_snapshot};
pub use storage::{AppendFile, DirLock, OsStorage, ReadFile, Storage};
pub use writer::{CompactReport, Recovery, Wal, WalConfig, WalMetrics, WriterHooks};
