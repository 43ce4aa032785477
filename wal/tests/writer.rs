//! The group-commit writer over real files: ordering under concurrency, the durability
//! contract, batching, back-pressure, fsync failure, shutdown and compaction.

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gavel_wal::{AppendError, LogFailure, WaitError, Wal, WalConfig, WalError};

#[test]
fn concurrent_appends_replay_dense_and_in_each_threads_order() {
    let dir = tempfile::tempdir().unwrap();
    let (threads, per_thread) = (8u32, 400u32);
    let (wal, recovery) = Wal::open(dir.path(), small_segments(8 * 1024)).unwrap();
    assert_eq!(recovery.last_lsn(), 0);
    let wal = Arc::new(wal);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            thread::spawn(move || {
                (0..per_thread)
                    .map(|i| (append_retrying(&wal, format!("{t}:{i}").as_bytes()), i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut assigned = HashMap::new();
    for (t, handle) in handles.into_iter().enumerate() {
        for (lsn, i) in handle.join().unwrap() {
            assigned.insert(lsn, format!("{t}:{i}"));
        }
    }
    let total = u64::from(threads * per_thread);
    assert_eq!(wal.shutdown().unwrap(), total);
    assert!(segment_paths(dir.path()).len() > 3, "small segments rotate");

    let records = reopen_and_replay(dir.path());
    let lsns: Vec<u64> = records.iter().map(|r| r.0).collect();
    assert_eq!(lsns, (1..=total).collect::<Vec<_>>(), "dense 1..=N");
    let mut next_per_thread = vec![0u32; threads as usize];
    for (lsn, payload) in &records {
        let text = String::from_utf8(payload.clone()).unwrap();
        assert_eq!(
            assigned[lsn], text,
            "the LSN append returned holds that payload"
        );
        let (t, i) = text.split_once(':').unwrap();
        let (t, i): (usize, u32) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(
            i, next_per_thread[t],
            "thread {t}'s records in its own order"
        );
        next_per_thread[t] += 1;
    }
}

/// The durability contract: the durable LSN never passes the highest LSN whose fdatasync
/// returned. The hook records `synced_max` after each sync; a poller and every waiter check
/// against it. A writer that advanced the durable LSN before syncing (verified by hand by
/// moving `advance_durable` above `sync_data` in `Writer::sync_chunk`) fails here at once: the
/// 300 µs sync delay leaves the poller a window in every batch to see durable > synced_max.
#[test]
fn durable_never_runs_ahead_of_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::new();
    hooks.sync_delay_us.store(300, Ordering::SeqCst);
    let (wal, _) = Wal::open_with_hooks(dir.path(), WalConfig::default(), hooks.clone()).unwrap();
    let wal = Arc::new(wal);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (wal, hooks, stop) = (Arc::clone(&wal), Arc::clone(&hooks), Arc::clone(&stop));
        thread::spawn(move || {
            let mut checks = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let durable = wal.durable_lsn();
                let synced = hooks.synced_max.load(Ordering::SeqCst);
                assert!(
                    durable <= synced,
                    "durable {durable} ahead of synced {synced}"
                );
                checks += 1;
            }
            checks
        })
    };
    let appenders: Vec<_> = (0..4)
        .map(|t| {
            let (wal, hooks) = (Arc::clone(&wal), Arc::clone(&hooks));
            thread::spawn(move || {
                for i in 0..60 {
                    let lsn = append_retrying(&wal, b"record");
                    if (t + i) % 2 == 0 {
                        wal.wait_durable(lsn, Duration::from_secs(5)).unwrap();
                    } else {
                        block_on(wal.durable(lsn)).unwrap();
                    }
                    let synced = hooks.synced_max.load(Ordering::SeqCst);
                    assert!(
                        lsn <= synced,
                        "lsn {lsn} reported durable, synced only {synced}"
                    );
                }
            })
        })
        .collect();
    for a in appenders {
        a.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(poller.join().unwrap() > 0);
    assert_eq!(wal.shutdown().unwrap(), 240);
}

#[test]
fn group_commit_batches_many_records_per_sync() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::new();
    hooks.sync_delay_us.store(1_000, Ordering::SeqCst);
    let (wal, _) = Wal::open_with_hooks(dir.path(), WalConfig::default(), hooks.clone()).unwrap();
    let wal = Arc::new(wal);
    let (threads, per_thread) = (8, 500);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let wal = Arc::clone(&wal);
            thread::spawn(move || {
                let mut last = 0;
                for _ in 0..per_thread {
                    last = append_retrying(&wal, &[7u8; 64]);
                }
                wal.wait_durable(last, Duration::from_secs(10)).unwrap()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let records = (threads * per_thread) as u64;
    let metrics = wal.metrics();
    assert_eq!(metrics.records_written_total, records);
    assert_eq!(
        metrics.batches_synced_total,
        hooks.syncs.load(Ordering::SeqCst)
    );
    assert!(
        metrics.batches_synced_total * 20 <= records,
        "{} syncs for {records} records",
        metrics.batches_synced_total
    );
    wal.shutdown().unwrap();
}

#[test]
fn full_queue_refuses_promptly_counts_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::new();
    let config = WalConfig {
        queue_records_max: 4,
        queue_bytes_max: 64,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open_with_hooks(dir.path(), config, hooks.clone()).unwrap();
    hooks.close_gate();
    let mut accepted = vec![wal.append([0u8; 10]).unwrap()];
    hooks.wait_writes_entered(1); // the writer holds record 1 and is stuck

    // Records limit: 4 more fit, the 5th is refused.
    for i in 1..=4u8 {
        accepted.push(wal.append([i; 10]).unwrap());
    }
    let started = Instant::now();
    let refused = wal.append([9u8; 10]);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "refusal must not block"
    );
    assert!(
        matches!(refused, Err(AppendError::Backpressure { retry_after_us }) if retry_after_us >= 100)
    );
    assert_eq!(wal.metrics().backpressure_total, 1);
    assert_eq!(wal.metrics().queue_records, 4);
    hooks.open_gate();
    wal.wait_durable(*accepted.last().unwrap(), Duration::from_secs(5))
        .unwrap();

    // Bytes limit: 30 + 30 fit in 64 bytes, a third 30-byte record does not.
    hooks.close_gate();
    accepted.push(wal.append([5u8; 30]).unwrap());
    hooks.wait_writes_entered(3);
    accepted.push(wal.append([6u8; 30]).unwrap());
    accepted.push(wal.append([7u8; 30]).unwrap());
    assert!(matches!(
        wal.append([8u8; 30]),
        Err(AppendError::Backpressure { .. })
    ));
    assert_eq!(wal.metrics().backpressure_total, 2);
    hooks.open_gate();
    let last = *accepted.last().unwrap();
    wal.wait_durable(last, Duration::from_secs(5)).unwrap();
    // A record larger than the byte limit still fits into an empty queue.
    let big = wal.append([1u8; 200]).unwrap();
    wal.shutdown().unwrap();

    let records = reopen_and_replay(dir.path());
    assert_eq!(records.len(), accepted.len() + 1);
    assert_eq!(records.last().unwrap().0, big);
    assert_eq!(
        records.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=big).collect::<Vec<_>>()
    );
}

#[test]
fn failed_fsync_stops_the_log_and_durable_never_advances() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = TestHooks::new();
    let (wal, _) = Wal::open_with_hooks(dir.path(), WalConfig::default(), hooks.clone()).unwrap();
    append_each_synced(&wal, (0..4).map(|i| vec![i; 8]));
    assert_eq!(wal.durable_lsn(), 4);

    hooks.fail_sync.store(true, Ordering::SeqCst);
    let lsn = wal.append(b"never durable").unwrap();
    assert_eq!(
        wal.wait_durable(lsn, Duration::from_secs(5)),
        Err(WaitError::Failed { durable: 4 })
    );
    assert_eq!(
        block_on(wal.durable(lsn)),
        Err(WaitError::Failed { durable: 4 })
    );
    assert_eq!(wal.append(b"after"), Err(AppendError::Failed));
    assert_eq!(wal.durable_lsn(), 4);
    let failure = wal.failure().unwrap();
    assert!(
        matches!(
            &failure,
            LogFailure::Io {
                op: "fdatasync",
                kind: io::ErrorKind::Other,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(
        failure.to_string().contains("injected fsync failure"),
        "{failure}"
    );
    // No retry: the fsync hook was reached once for the failing batch, never again.
    thread::sleep(Duration::from_millis(20));
    assert_eq!(hooks.syncs.load(Ordering::SeqCst), 4);
    assert!(matches!(wal.shutdown(), Err(WalError::WriterFailed(_))));

    // The acknowledged records survive; the unacknowledged one may or may not.
    let records = reopen_and_replay(dir.path());
    assert!(records.len() >= 4);
    assert_eq!(records[3], (4, vec![3; 8]));
}

#[test]
fn waits_time_out_and_end_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let lsn = wal.append(b"a").unwrap();
    assert_eq!(block_on(wal.durable(lsn)), Ok(1));
    assert_eq!(
        wal.wait_durable(2, Duration::from_millis(10)),
        Err(WaitError::Timeout { durable: 1 })
    );
    assert_eq!(wal.shutdown().unwrap(), 1);
    assert_eq!(wal.append(b"b"), Err(AppendError::Closed));
    assert_eq!(
        wal.wait_durable(2, Duration::from_secs(1)),
        Err(WaitError::Closed { durable: 1 })
    );
}

#[test]
fn drop_without_shutdown_keeps_durable_records_and_reopen_continues_lsns() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
        append_each_synced(&wal, (0..3).map(|i| vec![i]));
    }
    let (wal, recovery) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!((recovery.records(), recovery.last_lsn()), (3, 3));
    assert_eq!(wal.durable_lsn(), 3);
    assert_eq!(wal.append(b"next").unwrap(), 4);
    drop(wal);
    assert_eq!(reopen_and_replay(dir.path()).len(), 4);
}

#[test]
fn batch_wait_gathers_and_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        batch_wait_us_max: 2_000,
        batch_records_max: 8,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let mut last = 0;
    for _ in 0..40 {
        last = wal.append(b"x").unwrap();
    }
    wal.wait_durable(last, Duration::from_secs(5)).unwrap();
    let m = wal.metrics();
    assert!(
        m.last_batch_records <= 8,
        "chunks respect batch_records_max"
    );
    assert!(m.batches_synced_total >= 5);
    wal.shutdown().unwrap();
}

#[test]
fn a_lone_record_is_not_held_back_by_the_gather() {
    let dir = tempfile::tempdir().unwrap();
    // A gather far longer than the waits below: only load may trigger it.
    let config = WalConfig {
        batch_wait_us_max: 900_000,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    for _ in 0..3 {
        let lsn = wal.append(b"alone").unwrap();
        wal.wait_durable(lsn, Duration::from_millis(400))
            .expect("a lone record after a quiet spell is synced at once");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Under load the gather applies and everything still completes.
    let mut last = 0;
    for _ in 0..200 {
        last = wal.append(b"burst").unwrap();
    }
    wal.wait_durable(last, Duration::from_secs(5)).unwrap();
    wal.shutdown().unwrap();
}

#[test]
fn compaction_removes_whole_old_segments_never_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments(200)).unwrap();
    // 35-byte records: 5 per 200-byte segment.
    append_each_synced(&wal, (0..23).map(|_| vec![1u8; 10]));
    let before = segment_paths(dir.path());
    assert_eq!(before.len(), 5, "{before:?}");
    // Segments hold 1–5, 6–10, 11–15, 16–20, 21–23; upto 12 removes only the first two.
    let report = wal.compact(12).unwrap();
    assert_eq!(report.removed_segments, before[..2].to_vec());
    let report = wal.compact(1_000).unwrap();
    assert_eq!(
        report.removed_segments.len(),
        2,
        "the current segment stays"
    );
    assert_eq!(segment_paths(dir.path()), before[4..].to_vec());
    wal.shutdown().unwrap();

    let (wal, recovery) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovery.first_lsn(), Some(21));
    assert!(matches!(
        recovery.replay(5),
        Err(WalError::LogStartsAfter {
            requested: 5,
            first: 21
        })
    ));
    assert!(matches!(
        recovery.replay(30),
        Err(WalError::LogEndsBefore {
            requested: 30,
            last: 23
        })
    ));
    let lsns: Vec<u64> = recovery
        .replay(22)
        .unwrap()
        .map(|r| r.unwrap().lsn)
        .collect();
    assert_eq!(lsns, vec![22, 23]);
    assert_eq!(wal.append(b"more").unwrap(), 24);
    wal.shutdown().unwrap();
}

#[test]
fn bad_config_and_oversize_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = WalConfig {
        queue_records_max: 0,
        ..WalConfig::default()
    };
    assert!(matches!(
        Wal::open(dir.path(), bad),
        Err(WalError::Config(_))
    ));
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let huge = vec![0u8; gavel_wal::frame::PAYLOAD_BYTES_MAX + 1];
    assert!(matches!(
        wal.append(&huge),
        Err(AppendError::TooLarge { .. })
    ));
    wal.shutdown().unwrap();
}

#[test]
fn a_second_open_of_a_log_in_use_is_refused_until_the_first_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    let lsn = wal.append(b"first").unwrap();
    wal.wait_durable(lsn, Duration::from_secs(10)).unwrap();
    match Wal::open(dir.path(), WalConfig::default()) {
        Err(WalError::Locked { dir: locked, .. }) => assert_eq!(locked, dir.path()),
        other => panic!("a second writer on the same log must be refused, got {other:?}"),
    }
    // The refused open changed nothing; after the first closes, the log opens again whole.
    wal.shutdown().unwrap();
    drop(wal);
    let (_wal, recovery) = Wal::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovery.last_lsn(), lsn);
}
