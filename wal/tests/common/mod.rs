//! Shared helpers for the WAL integration tests: configs, hooks that count, slow, block or fail
//! the writer, a tiny `block_on`, and readers of a log directory.
#![allow(dead_code)]
// each test binary uses a subset
// Helpers shared by several test crates (each test file is one): `pub` is their interface.
#![allow(unreachable_pub)]

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use gavel_wal::{AppendError, Lsn, Wal, WalConfig, WriterHooks};

/// A config with small segments so tests rotate.
pub fn small_segments(segment_bytes_max: u64) -> WalConfig {
    WalConfig {
        segment_bytes_max,
        ..WalConfig::default()
    }
}

/// Appends, retrying (with a short sleep) while the queue is full.
pub fn append_retrying(wal: &Wal, payload: &[u8]) -> Lsn {
    loop {
        match wal.append(payload) {
            Ok(lsn) => return lsn,
            Err(AppendError::Backpressure { .. }) => thread::sleep(Duration::from_micros(50)),
            Err(e) => panic!("append failed: {e}"),
        }
    }
}

/// Appends each payload and waits for it to be durable, so each is its own batch.
pub fn append_each_synced(wal: &Wal, payloads: impl IntoIterator<Item = Vec<u8>>) -> Vec<Lsn> {
    payloads
        .into_iter()
        .map(|p| {
            let lsn = wal.append(&p).expect("room in the queue");
            wal.wait_durable(lsn, Duration::from_secs(5))
                .expect("durable");
            lsn
        })
        .collect()
}

/// Every record of the log in `dir` from LSN 1, via a fresh open (which also repairs).
pub fn reopen_and_replay(dir: &Path) -> Vec<(Lsn, Vec<u8>)> {
    let (wal, recovery) = Wal::open(dir, WalConfig::default()).expect("reopen");
    let from = recovery.first_lsn().unwrap_or(1);
    let records = recovery
        .replay(from)
        .expect("replay")
        .map(|r| r.map(|r| (r.lsn, r.payload)))
        .collect::<Result<Vec<_>, _>>()
        .expect("records");
    wal.shutdown().expect("shutdown");
    records
}

/// The segment files of `dir`, in order.
pub fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// Runs a future to completion on this thread (parks until woken).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park_timeout(Duration::from_millis(100));
    }
}

/// Hooks that count syncs, remember the highest LSN synced, and can slow, block or fail.
#[derive(Default)]
pub struct TestHooks {
    /// fdatasync calls that returned.
    pub syncs: AtomicU64,
    /// Highest LSN whose sync returned (set before the durable LSN may advance).
    pub synced_max: AtomicU64,
    /// Sleep before each sync, µs.
    pub sync_delay_us: AtomicU64,
    /// Fail every sync from now on.
    pub fail_sync: AtomicBool,
    /// While true, `before_write` blocks.
    gate_closed: Mutex<bool>,
    gate: Condvar,
    /// Writes that entered `before_write`.
    pub writes_entered: AtomicU64,
}

impl TestHooks {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn close_gate(&self) {
        *self.gate_closed.lock().unwrap() = true;
    }
    pub fn open_gate(&self) {
        *self.gate_closed.lock().unwrap() = false;
        self.gate.notify_all();
    }
    /// Waits (bounded) until the writer has entered `n` writes.
    pub fn wait_writes_entered(&self, n: u64) {
        for _ in 0..5_000 {
            if self.writes_entered.load(Ordering::SeqCst) >= n {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("writer did not reach write {n}");
    }
}

impl WriterHooks for TestHooks {
    fn before_write(&self, _first: Lsn, _last: Lsn) -> io::Result<()> {
        self.writes_entered.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.gate_closed.lock().unwrap();
        while *closed {
            closed = self.gate.wait(closed).unwrap();
        }
        Ok(())
    }

    fn before_sync(&self, _last: Lsn) -> io::Result<()> {
        let delay = self.sync_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_micros(delay));
        }
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }

    fn after_sync(&self, last: Lsn) {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.synced_max.fetch_max(last, Ordering::SeqCst);
    }
}
