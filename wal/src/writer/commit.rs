//! The group-commit writer thread (see the [module docs](super)): it takes the pending
//! batch, writes it in chunks of one `write` and one `fdatasync` each, advances the durable
//! LSN, and starts new segments; its first error stops the log for good.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Pending, Shared};
use crate::Lsn;
use crate::durability::{LogStatus, lock};
use crate::error::{LogFailure, WalError};
use crate::frame::{self, HEADER_BYTES};
use crate::segment::{self, SegmentFile};
use crate::storage::AppendFile;

/// Waits for pending records and moves them into the empty `batch` (after gathering for up
/// to `batch_wait_us_max` when `gather`: the log is under load); `false` once the log is
/// closed and drained (or failed).
fn take_pending(shared: &Shared, batch: &mut Pending, gather: bool) -> bool {
    let config = &shared.config;
    if !shared.ring.wait_ready() {
        return false;
    }
    if gather && config.batch_wait_us_max > 0 {
        shared
            .ring
            .gather(Instant::now() + Duration::from_micros(config.batch_wait_us_max));
    }
    batch.first_lsn = shared.ring.take(|_, payload| batch.push(payload));
    true
}

/// The writer thread's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    file: Box<dyn AppendFile>,
    /// Path of the segment being written.
    path: PathBuf,
    segment_bytes: u64,
    /// The encoded batch; reused.
    buf: Vec<u8>,
}

impl Writer {
    /// Starts the writer thread on `file`, the segment at `path` of `segment_bytes` bytes.
    pub(super) fn spawn(
        shared: Arc<Shared>,
        file: Box<dyn AppendFile>,
        path: PathBuf,
        segment_bytes: u64,
    ) -> Result<JoinHandle<()>, WalError> {
        let dir = shared.dir.clone();
        let writer = Writer {
            shared,
            file,
            path,
            segment_bytes,
            buf: Vec::new(),
        };
        std::thread::Builder::new()
            .name("gavel-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(WalError::io("spawn writer thread", &dir))
    }

    fn run(mut self) {
        // Before the first wait: appenders find it once they see it waiting.
        self.shared.ring.set_writer(std::thread::current());
        let mut batch = Pending::default();
        let mut gather = false;
        while take_pending(&self.shared, &mut batch, gather) {
            // Under load (more than one record arrived since the last sync) the next batch
            // is gathered; a lone record is synced at once.
            gather = batch.lens.len() > 1;
            if let Err(e) = self.write_batch(&batch) {
                self.shared.stop(LogStatus::Failed, Some(e));
                return;
            }
            batch.clear();
        }
        self.shared.stop(LogStatus::Closed, None);
    }

    /// Writes `batch` in chunks: one write and one fdatasync each, then the durable advance.
    fn write_batch(&mut self, batch: &Pending) -> Result<(), LogFailure> {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let record_bytes = |len: u32| HEADER_BYTES as u64 + u64::from(len);
        let mut i = 0;
        let mut payload_at = 0usize;
        while i < batch.lens.len() {
            if self.segment_bytes > 0
                && self.segment_bytes + record_bytes(batch.lens[i]) > config.segment_bytes_max
            {
                self.rotate(batch.first_lsn + i as Lsn)?;
            }
            let start = self.segment_bytes;
            self.buf.clear();
            let mut j = i;
            while j < batch.lens.len() {
                let bytes = record_bytes(batch.lens[j]);
                let fits = j - i < config.batch_records_max
                    && self.buf.len() as u64 + bytes <= config.batch_bytes_max as u64
                    && start + self.buf.len() as u64 + bytes <= config.segment_bytes_max;
                if j > i && !fits {
                    break;
                }
                let len = batch.lens[j] as usize;
                let payload = &batch.bytes[payload_at..payload_at + len];
                payload_at += len;
                let offset = start + self.buf.len() as u64;
                frame::encode(
                    &mut self.buf,
                    batch.first_lsn + j as Lsn,
                    offset,
                    start,
                    payload,
                );
                j += 1;
            }
            let first = batch.first_lsn + i as Lsn;
            let last = batch.first_lsn + j as Lsn - 1;
            self.sync_chunk(first, last)?;
            i = j;
        }
        Ok(())
    }

    fn sync_chunk(&mut self, first: Lsn, last: Lsn) -> Result<(), LogFailure> {
        let hooks = &self.shared.hooks;
        let written = hooks
            .before_write(first, last)
            .and_then(|()| self.file.write_all(&self.buf));
        #[cfg(feature = "sim-bugs")]
        let written = written.or_else(|e| {
            let ignore = crate::sim_bugs::on(&crate::sim_bugs::IGNORE_WRITE_ERROR);
            if ignore { Ok(()) } else { Err(e) }
        });
        written.map_err(LogFailure::io("write", &self.path))?;
        let started = Instant::now();
        hooks
            .before_sync(last)
            .and_then(|()| {
                #[cfg(feature = "sim-bugs")]
                if crate::sim_bugs::on(&crate::sim_bugs::ACK_WITHOUT_FSYNC) {
                    return Ok(());
                }
                self.file.sync_data()
            })
            .map_err(LogFailure::io("fdatasync", &self.path))?;
        let sync_us = started.elapsed().as_micros() as u64;
        hooks.after_sync(last);
        self.segment_bytes += self.buf.len() as u64;

        let c = &self.shared.counters;
        // Ordering: Relaxed — statistics; the durable LSN below is the synchronising store.
        c.records_written
            .fetch_add(last - first + 1, Ordering::Relaxed);
        c.bytes_written
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        c.batches_synced.fetch_add(1, Ordering::Relaxed);
        c.last_batch_records
            .store(last - first + 1, Ordering::Relaxed);
        c.last_sync_us.store(sync_us, Ordering::Relaxed);
        c.sync_us_total.fetch_add(sync_us, Ordering::Relaxed);
        self.shared.durability.advance(last);
        Ok(())
    }

    /// Starts a new segment whose first record is `first_lsn`. The previous segment is
    /// already synced (every chunk is).
    fn rotate(&mut self, first_lsn: Lsn) -> Result<(), LogFailure> {
        let path = self.shared.dir.join(segment::segment_file_name(first_lsn));
        let storage = &self.shared.storage;
        self.file = storage
            .create_new(&path)
            .map_err(LogFailure::io("create", &path))?;
        // The new name must be durable before any record in it is acknowledged.
        storage
            .sync_dir(&self.shared.dir)
            .map_err(LogFailure::io("fsync directory", &self.shared.dir))?;
        self.segment_bytes = 0;
        self.path = path.clone();
        lock(&self.shared.segments).push(SegmentFile { first_lsn, path });
        Ok(())
    }
}
