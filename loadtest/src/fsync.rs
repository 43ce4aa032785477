//! The durability floor: raw sequential append + `fdatasync` of records of the node's
//! record size, at the same open-loop rate, in the same filesystem as the node's log. One
//! thread takes every record that has arrived, writes them in one `write_all`, syncs, and
//! records each record's latency from its due time — group commit by hand, without framing,
//! CRC or encoding: the least any log on this disk can do.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::stats::Recorder;

/// Bytes of one accepted bid's record in the node's log: ≈ 99 bytes of `gavel.v1.Record` +
/// a 25-byte frame header (BENCHMARKS.md, Durability).
pub const RECORD_BYTES: usize = 124;
/// Most records written by one sync (the WAL's default `batch_records_max`).
const BATCH_RECORDS_MAX: usize = 16_384;

/// Consumes due times from `due` until it closes, appending `record_bytes` per record to a
/// new file in `dir`; records `durable` latencies and the sync count in `recorder`. Blocking:
/// run it on its own thread.
pub fn run(
    dir: &Path,
    record_bytes: usize,
    mut due: mpsc::Receiver<(Instant, u64)>,
    recorder: &Recorder,
) -> Result<()> {
    let path = dir.join("raw-append.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let record = vec![0x5a_u8; record_bytes];
    let mut batch: Vec<Instant> = Vec::with_capacity(BATCH_RECORDS_MAX);
    let mut bytes: Vec<u8> = Vec::with_capacity(BATCH_RECORDS_MAX * record_bytes);
    while let Some((first, _)) = due.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH_RECORDS_MAX {
            match due.try_recv() {
                Ok((intended, _)) => batch.push(intended),
                Err(_) => break,
            }
        }
        bytes.clear();
        for _ in 0..batch.len() {
            bytes.extend_from_slice(&record);
        }
        file.write_all(&bytes).context("appending")?;
        let synced = Instant::now();
        file.sync_data().context("fdatasync")?;
        recorder.latency("fdatasync", synced.elapsed());
        for intended in batch.drain(..) {
            recorder.latency("durable", intended.elapsed());
        }
        recorder.count("synced_records", bytes.len() as u64 / record_bytes as u64);
        recorder.count("syncs", 1);
    }
    Ok(())
}
