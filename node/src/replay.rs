//! Parallel replay of the log at start-up: records are read (and CRC-checked) in log order
//! on the calling thread and handed, in batches, to one worker per core by auction id; each
//! worker decodes its records and feeds them to its own [`Replayer`] over the shared engine.
//!
//! Why this is the same as replaying in log order: an event touches exactly one auction and
//! every event of an auction goes to the same worker in log order, so each auction sees
//! exactly the sequence a single replayer would feed it; auctions never read each other's
//! state. (The engine's one cross-auction limit, `auctions_max`, was respected when the log
//! was written, so creations cannot hit it on replay in any order.) The replayers' per-auction
//! bookkeeping (derived events still expected) therefore partitions by auction too, and their
//! summaries add up. The state hash after a parallel replay equals a sequential one; tests
//! check it.
//!
//! Locality: a worker applies each batch grouped by auction (log order within an auction),
//! for the same reason — only per-auction order matters. With many auctions and a skewed
//! load, consecutive records in log order touch a different auction each (its registry
//! entry, lock, book, idempotency memory and seen-bid filter, all cold in the cache); grouped,
//! a hot auction's run of records finds them in the cache. Batches of [`BATCH_RECORDS`].
//!
//! Errors: every record is still dispatched after a worker failed (to the workers still
//! running), and each worker stops after the batch holding its first failure, so the error
//! reported — the lowest LSN among the workers' first failures — is the first bad record in
//! log order, whatever the number of workers. Within a batch applied by auction, an
//! auction's records after its first failure are skipped and the other auctions' records
//! still applied, so the lowest failing LSN of the batch is its first failure in log order
//! (every record before it, of any auction, applied cleanly).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use anyhow::{Context, Result, anyhow, ensure};
use gavel_engine::{AuctionId, Engine, Event, ReplaySummary, Replayer};
use gavel_proto::convert::wal::decode_record;
use gavel_wal::{Lsn, WalError};

/// Records handed to a worker at once, and applied grouped by auction: the larger, the more
/// records of a hot auction find its state in the cache (measured in BENCHMARKS.md).
const BATCH_RECORDS: usize = 16_384;
/// Batches queued per worker: bounds the memory of a reader running ahead.
const BATCHES_QUEUED_MAX: usize = 2;

/// Initial payload bytes of a batch (it grows if records are larger).
const BATCH_PAYLOAD_BYTES: usize = BATCH_RECORDS * 128;
/// A batch is handed over once its payloads reach this many bytes, however few its records:
/// with [`BATCHES_QUEUED_MAX`] it bounds a worker's queued bytes whatever the record sizes
/// (a record may hold up to 1 MiB).
const BATCH_PAYLOAD_BYTES_MAX: usize = 8 << 20;
const _: () = assert!(BATCH_PAYLOAD_BYTES <= BATCH_PAYLOAD_BYTES_MAX);

/// Records for one worker: their payloads copied end to end into one buffer, so that the
/// reader frees each record's own buffer at once (in its own thread) and a worker frees one
/// buffer per batch.
struct Batch {
    payloads: Vec<u8>,
    records: Vec<Item>,
}

/// One record of a batch.
struct Item {
    /// The auction its payload starts with (see [`auction_of`]); 0 if none.
    auction: AuctionId,
    lsn: Lsn,
    /// Its payload: `payloads[start..end]`.
    start: usize,
    end: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            payloads: Vec::with_capacity(BATCH_PAYLOAD_BYTES),
            records: Vec::with_capacity(BATCH_RECORDS),
        }
    }

    fn is_full(&self) -> bool {
        self.records.len() >= BATCH_RECORDS || self.payloads.len() >= BATCH_PAYLOAD_BYTES_MAX
    }

    fn push(&mut self, auction: AuctionId, lsn: Lsn, payload: &[u8]) {
        let start = self.payloads.len();
        self.payloads.extend_from_slice(payload);
        self.records.push(Item {
            auction,
            lsn,
            start,
            end: self.payloads.len(),
        });
    }
}

/// Replays `records` (in log order) into `engine` on `workers` threads (at least 1); see the
/// module docs. `after_snapshot`: the engine was restored from a snapshot (see
/// [`Replayer::after_snapshot`]).
pub fn replay_parallel<I>(
    engine: &Engine,
    after_snapshot: bool,
    records: I,
    workers: usize,
) -> Result<ReplaySummary>
where
    I: IntoIterator<Item = Result<gavel_wal::Record, WalError>>,
{
    let workers = workers.max(1);
    thread::scope(|scope| {
        let mut senders: Vec<SyncSender<Batch>> = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Batch>(BATCHES_QUEUED_MAX);
            senders.push(tx);
            let handle = thread::Builder::new()
                .name(format!("gavel-replay-{w}"))
                .spawn_scoped(scope, move || worker(engine, after_snapshot, &rx))
                .context("spawning a replay thread")?;
            handles.push(handle);
        }
        let read = dispatch(records, &senders);
        drop(senders);
        let mut summary = ReplaySummary {
            events: 0,
            skipped: 0,
            missing_tail: Vec::new(),
        };
        let mut first_error: Option<(Lsn, anyhow::Error)> = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(part)) => {
                    summary.events += part.events;
                    summary.skipped += part.skipped;
                    summary.missing_tail.extend(part.missing_tail);
                }
                Ok(Err((lsn, error))) => {
                    if first_error.as_ref().is_none_or(|(first, _)| lsn < *first) {
                        first_error = Some((lsn, error));
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        // A read error ends the log where it happened; a worker's error at an earlier LSN
        // is the first thing that went wrong.
        match (read, first_error) {
            (Err((read_lsn, read_error)), Some((lsn, error))) => {
                Err(if lsn < read_lsn { error } else { read_error })
            }
            (Err((_, read_error)), None) => Err(read_error),
            (Ok(()), Some((_, error))) => Err(error),
            (Ok(()), None) => {
                summary.missing_tail.sort_by_key(|e| (e.auction, e.seq));
                Ok(summary)
            }
        }
    })
}

/// Reads every record and sends it to its auction's worker. Returns the read error (with
/// the LSN it happened after) if the log could not be read to its end.
fn dispatch<I>(
    records: I,
    senders: &[SyncSender<Batch>],
) -> std::result::Result<(), (Lsn, anyhow::Error)>
where
    I: IntoIterator<Item = Result<gavel_wal::Record, WalError>>,
{
    let workers = senders.len();
    let mut batches: Vec<Batch> = (0..workers).map(|_| Batch::new()).collect();
    // A worker that stopped on an error takes nothing more; the others go on.
    let mut running = vec![true; workers];
    let mut last_lsn = 0;
    for record in records {
        let record = record.map_err(|e| (last_lsn + 1, anyhow!(e).context("reading the log")))?;
        last_lsn = record.lsn;
        // No auction id first: an auction 0 record (prost leaves out a zero field), or not a
        // well-formed record, whose decode error the worker reports with its LSN.
        let auction = auction_of(&record.payload).unwrap_or(AuctionId(0));
        // Truncation intended: the low bits spread auctions over workers.
        let w = (mix(auction.0) as usize) % workers;
        if !running[w] {
            continue;
        }
        batches[w].push(auction, record.lsn, &record.payload);
        if batches[w].is_full() {
            let full = std::mem::replace(&mut batches[w], Batch::new());
            // A closed channel: the worker stopped on an error, which it reports.
            running[w] = senders[w].send(full).is_ok();
        }
    }
    for (w, batch) in batches.into_iter().enumerate() {
        if running[w] && !batch.records.is_empty() {
            // As above: a failed send means the worker already has its error.
            let _ = senders[w].send(batch);
        }
    }
    Ok(())
}

/// One worker: decodes each batch and applies it grouped by auction (see the module docs).
fn worker(
    engine: &Engine,
    after_snapshot: bool,
    batches: &Receiver<Batch>,
) -> std::result::Result<ReplaySummary, (Lsn, anyhow::Error)> {
    let mut replayer = if after_snapshot {
        Replayer::after_snapshot(engine)
    } else {
        Replayer::new(engine)
    };
    for mut batch in batches {
        // LSNs are unique: this is log order within each auction.
        batch.records.sort_unstable_by_key(|r| (r.auction, r.lsn));
        // The lowest LSN that failed in this batch, and the auction being skipped.
        let mut first_error: Option<(Lsn, anyhow::Error)> = None;
        let mut failed: Option<AuctionId> = None;
        for record in &batch.records {
            if failed == Some(record.auction) {
                continue;
            }
            let lsn = record.lsn;
            let applied = decode_at(&batch.payloads[record.start..record.end], lsn).and_then(
                |event: Event| {
                    // Dispatch and grouping went by the id the payload starts with.
                    ensure!(
                        event.auction == record.auction,
                        "the record at LSN {lsn} (auction {}) does not start with its auction id",
                        event.auction
                    );
                    apply_at(&mut replayer, &event, lsn)
                },
            );
            if let Err(error) = applied {
                failed = Some(record.auction);
                if first_error.as_ref().is_none_or(|(first, _)| lsn < *first) {
                    first_error = Some((lsn, error));
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
    }
    Ok(replayer.finish())
}

/// Decodes the record at `lsn` (an error names it): the one decoder of every replay, the
/// start's, a takeover's and a follower's.
pub(crate) fn decode_at(payload: &[u8], lsn: Lsn) -> Result<Event> {
    decode_record(payload).with_context(|| format!("the record at LSN {lsn} does not decode"))
}

/// Applies the decoded record at `lsn` through `replayer` (an error names it).
pub(crate) fn apply_at(replayer: &mut Replayer<'_>, event: &Event, lsn: Lsn) -> Result<()> {
    replayer
        .apply(event)
        .with_context(|| format!("replaying the record at LSN {lsn}"))
}

/// The auction id of an encoded `gavel.v1.Record` without decoding the rest: prost writes
/// fields in tag order, so a record starts with `auction_id` (field 1, varint: key byte
/// 0x08) unless the id is 0, which no auction has.
fn auction_of(payload: &[u8]) -> Option<AuctionId> {
    let (&key, mut rest) = payload.split_first()?;
    if key != 0x08 {
        return None;
    }
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first()?;
        rest = tail;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(AuctionId(value));
        }
    }
    None
}

/// Spreads sequential auction ids over workers (a 64-bit finaliser).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_proto::pb;
    use prost::Message;

    /// The batches `dispatch` hands one worker for `records`: (records, payload bytes) each.
    fn batches_of(records: Vec<gavel_wal::Record>) -> Vec<(usize, usize)> {
        let (tx, rx) = sync_channel::<Batch>(8);
        dispatch(records.into_iter().map(Ok), &[tx]).unwrap();
        rx.iter()
            .map(|batch| (batch.records.len(), batch.payloads.len()))
            .collect()
    }

    #[test]
    fn batches_are_bounded_in_records_and_in_bytes() {
        let small: Vec<gavel_wal::Record> = (1..=2 * BATCH_RECORDS as u64 + 1)
            .map(|lsn| gavel_wal::Record {
                lsn,
                payload: vec![0x08, 0x01],
            })
            .collect();
        assert_eq!(
            batches_of(small),
            [(BATCH_RECORDS, 2 * BATCH_RECORDS); 2]
                .into_iter()
                .chain([(1, 2)])
                .collect::<Vec<_>>()
        );
        let record_bytes = 1 << 20;
        let large: Vec<gavel_wal::Record> = (1..=20)
            .map(|lsn| gavel_wal::Record {
                lsn,
                payload: vec![0x08; record_bytes],
            })
            .collect();
        let per_batch = BATCH_PAYLOAD_BYTES_MAX / record_bytes;
        assert_eq!(
            batches_of(large),
            [
                (per_batch, BATCH_PAYLOAD_BYTES_MAX),
                (per_batch, BATCH_PAYLOAD_BYTES_MAX),
                (20 - 2 * per_batch, (20 - 2 * per_batch) * record_bytes)
            ]
        );
    }

    #[test]
    fn the_auction_id_is_read_from_the_first_field() {
        for id in [1u64, 127, 128, 300, u64::MAX >> 2, u64::MAX] {
            let record = pb::Record {
                auction_id: id,
                seq: 7,
                at_us: 99,
                kind: None,
            };
            assert_eq!(auction_of(&record.encode_to_vec()), Some(AuctionId(id)));
        }
        assert_eq!(auction_of(&[]), None);
        assert_eq!(auction_of(&[0x10, 0x01]), None, "field 2 first");
        assert_eq!(auction_of(&[0x08, 0x80]), None, "varint cut short");
        assert_eq!(auction_of(&[0x08; 12]), Some(AuctionId(8)));
        assert_eq!(
            auction_of(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ]),
            None
        );
    }
}
