//! `Wal::append_batch`: a decision's records are admitted whole or refused whole, and get
//! contiguous LSNs even when many threads append batches at once.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use gavel_wal::{AppendError, Wal, WalConfig, frame::PAYLOAD_BYTES_MAX};

#[test]
fn a_batch_that_does_not_fit_is_refused_whole_and_leaves_nothing_queued() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::new();
    let config = WalConfig {
        queue_records_max: 8,
        queue_bytes_max: 64,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open_with_hooks(dir.path(), config, hooks.clone()).unwrap();
    // Hold the writer inside its first write so the queue fills behind it.
    hooks.close_gate();
    wal.append(b"first").unwrap();
    hooks.wait_writes_entered(1);

    // 5 records queued; a batch of 4 would make 9 > 8 records: refused, nothing queued.
    assert_eq!(
        wal.append_batch(&[b"a", b"b", b"c", b"d", b"e"]).unwrap(),
        6
    );
    let before = wal.metrics();
    assert_eq!((before.queue_records, before.queue_bytes), (5, 5));
    assert!(matches!(
        wal.append_batch(&[b"w", b"x", b"y", b"z"]),
        Err(AppendError::Backpressure { .. })
    ));
    // Bytes: 5 queued + 3 × 20 > 64: refused although 3 more records would fit.
    let big = [[7u8; 20]; 3];
    assert!(matches!(
        wal.append_batch(&big),
        Err(AppendError::Backpressure { .. })
    ));
    // One oversize payload refuses the whole batch.
    let huge = vec![0u8; PAYLOAD_BYTES_MAX + 1];
    assert_eq!(
        wal.append_batch(&[&b"ok"[..], &huge[..]]),
        Err(AppendError::TooLarge { len: huge.len() })
    );
    let after = wal.metrics();
    assert_eq!((after.queue_records, after.queue_bytes), (5, 5));
    assert_eq!(after.backpressure_total, 2);
    assert_eq!(
        wal.last_appended_lsn(),
        6,
        "no LSN was consumed by a refusal"
    );
    // A batch that fits takes the next LSNs.
    assert_eq!(wal.append_batch(&[b"f", b"g", b"h"]).unwrap(), 9);
    hooks.open_gate();
    wal.wait_durable(9, Duration::from_secs(5)).unwrap();
    wal.shutdown().unwrap();

    let records = reopen_and_replay(dir.path());
    let payloads: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(
        payloads,
        [
            &b"first"[..],
            b"a",
            b"b",
            b"c",
            b"d",
            b"e",
            b"f",
            b"g",
            b"h"
        ]
    );
}

#[test]
fn an_oversized_batch_is_admitted_into_an_empty_queue_and_an_empty_batch_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        queue_records_max: 2,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let empty: [&[u8]; 0] = [];
    assert_eq!(wal.append_batch(&empty).unwrap(), 0);
    assert_eq!(wal.append_batch(&[b"1", b"2", b"3"]).unwrap(), 3);
    wal.wait_durable(3, Duration::from_secs(5)).unwrap();
    assert_eq!(wal.append_batch(&empty).unwrap(), 3);
    wal.shutdown().unwrap();
    assert_eq!(
        wal.append_batch(&[b"4"]),
        Err(AppendError::Closed),
        "a closed log refuses"
    );
}

#[test]
fn concurrent_batches_get_contiguous_lsns() {
    const THREADS: u32 = 4;
    const BATCHES: u32 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        // Small bounds so the threads meet back-pressure and retry.
        queue_records_max: 64,
        ..small_segments(16 << 10)
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let wal = Arc::new(wal);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            thread::spawn(move || {
                let mut lasts = Vec::new();
                for b in 0..BATCHES {
                    let n = 1 + (b % 3);
                    let batch: Vec<Vec<u8>> = (0..n)
                        .map(|k| [t.to_le_bytes(), b.to_le_bytes(), k.to_le_bytes()].concat())
                        .collect();
                    let last = loop {
                        match wal.append_batch(&batch) {
                            Ok(last) => break last,
                            Err(AppendError::Backpressure { .. }) => {
                                thread::sleep(Duration::from_micros(20))
                            }
                            Err(e) => panic!("append_batch: {e}"),
                        }
                    };
                    lasts.push((last, n));
                }
                lasts
            })
        })
        .collect();
    let mut batches = Vec::new();
    for (t, h) in handles.into_iter().enumerate() {
        for (b, (last, n)) in h.join().unwrap().into_iter().enumerate() {
            batches.push((t as u32, b as u32, last, n));
        }
    }
    let total: u64 = batches.iter().map(|b| u64::from(b.3)).sum();
    wal.wait_durable(total, Duration::from_secs(10)).unwrap();
    wal.shutdown().unwrap();

    let records = reopen_and_replay(dir.path());
    assert_eq!(records.len() as u64, total);
    for (t, b, last, n) in batches {
        for k in 0..n {
            let lsn = last - u64::from(n - 1 - k);
            let expected = [t.to_le_bytes(), b.to_le_bytes(), k.to_le_bytes()].concat();
            assert_eq!(
                records[(lsn - 1) as usize],
                (lsn, expected),
                "thread {t} batch {b} record {k}"
            );
        }
    }
}

/// Appends race a shutdown: every batch an append took (it returned an LSN) is written
/// whole and durable by the time `shutdown` returns, and nothing else is; every append
/// after the close is refused with `Closed`. (Issue 20: appends claim LSNs without a lock,
/// so the close must freeze the claims and the writer drain every claimed slot.)
#[test]
fn a_shutdown_racing_appends_writes_every_batch_it_took_and_nothing_else() {
    const THREADS: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments(16 << 10)).unwrap();
    let wal = Arc::new(wal);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            thread::spawn(move || {
                let mut taken = Vec::new();
                for b in 0u32.. {
                    let batch = [t.to_le_bytes(), b.to_le_bytes()];
                    match wal.append_batch(&batch) {
                        Ok(last) => taken.push((last, b)),
                        Err(AppendError::Backpressure { .. }) => thread::yield_now(),
                        Err(AppendError::Closed) => return taken,
                        Err(e) => panic!("append_batch: {e}"),
                    }
                }
                unreachable!("the loop ends at the close")
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    let durable = wal.shutdown().unwrap();
    let mut taken: Vec<(u32, u64, u32)> = Vec::new();
    for (t, handle) in handles.into_iter().enumerate() {
        taken.extend(
            handle
                .join()
                .unwrap()
                .into_iter()
                .map(|(l, b)| (t as u32, l, b)),
        );
    }
    let claimed = 2 * taken.len() as u64;
    assert!(claimed > 0, "the appenders ran before the close");
    assert_eq!(durable, claimed, "everything taken is durable at shutdown");
    let records = reopen_and_replay(dir.path());
    assert_eq!(records.len() as u64, claimed, "nothing but what was taken");
    for (t, last, b) in taken {
        let at = (last - 1) as usize;
        assert_eq!(records[at - 1], (last - 1, t.to_le_bytes().to_vec()));
        assert_eq!(records[at], (last, b.to_le_bytes().to_vec()));
    }
}
