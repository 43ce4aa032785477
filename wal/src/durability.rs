//! [`Durability`]: the durable LSN and its waiters, shared by every log backend — an atomic
//! durable LSN, the backend's final status, blocking waits (a `Condvar`) and the
//! runtime-agnostic [`DurableFuture`] (wakers registered by LSN, woken exactly when their
//! LSN becomes durable or the log stops).
//!
//! A backend calls [`Durability::advance`] only once every record up to the new LSN is on
//! stable storage (fdatasync returned; a `PERSISTED` delivery report for each of them), and
//! [`Durability::finish`] once, when it stops. The waiter registry is bounded by the records
//! in flight: a waker leaves it when its LSN becomes durable or the log stops.

use std::collections::BTreeMap;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::Lsn;
use crate::error::{AppendError, LogFailure, WaitError};
use crate::frame::PAYLOAD_BYTES_MAX;

/// Where a log stands: it accepts appends only while open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LogStatus {
    /// The log accepts appends.
    Open = 0,
    /// The log was shut down after writing everything it had accepted.
    Closed = 1,
    /// The log failed; nothing more becomes durable.
    Failed = 2,
}

impl LogStatus {
    /// The status stored as `self as u8` in an atomic.
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Open,
            1 => Self::Closed,
            _ => Self::Failed,
        }
    }

    /// Refuses an append unless open.
    pub(crate) fn check_open(self) -> Result<(), AppendError> {
        match self {
            Self::Open => Ok(()),
            Self::Failed => Err(AppendError::Failed),
            Self::Closed => Err(AppendError::Closed),
        }
    }
}

/// The total payload bytes of one batch, or [`AppendError::TooLarge`] for its first payload
/// over [`PAYLOAD_BYTES_MAX`].
pub(crate) fn batch_bytes<P: AsRef<[u8]>>(payloads: &[P]) -> Result<usize, AppendError> {
    let mut total = 0usize;
    for payload in payloads {
        let len = payload.as_ref().len();
        if len > PAYLOAD_BYTES_MAX {
            return Err(AppendError::TooLarge { len });
        }
        total += len;
    }
    Ok(total)
}

/// Locks a mutex of this crate. Invariant: no code of this crate panics while holding one
/// (the critical sections are bounds checks, pushes and swaps), so poisoning cannot happen.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("wal mutex poisoned: a panic under a wal lock is a bug")
}

/// The durable LSN, the final status and the waiters of one log.
#[derive(Debug)]
pub(crate) struct Durability {
    durable: AtomicU64,
    /// A [`LogStatus`] as `u8`, set once the backend has stopped (closed after draining, or
    /// failed).
    status: AtomicU8,
    waiters: Mutex<BTreeMap<Lsn, Vec<Waker>>>,
    changed: Condvar,
    failure: Mutex<Option<LogFailure>>,
}

impl Durability {
    /// Open, with everything up to `durable` already on stable storage.
    pub(crate) fn new(durable: Lsn) -> Self {
        Self {
            durable: AtomicU64::new(durable),
            status: AtomicU8::new(LogStatus::Open as u8),
            waiters: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
            failure: Mutex::new(None),
        }
    }

    /// The highest LSN known to be on stable storage (every LSN ≤ it is).
    pub(crate) fn durable_lsn(&self) -> Lsn {
        // Ordering: Acquire pairs with the Release store in `advance`: a reader that sees
        // `lsn` also sees everything the backend did before declaring it durable.
        self.durable.load(Ordering::Acquire)
    }

    /// The outcome for a waiter on `lsn`, if decided.
    pub(crate) fn check(&self, lsn: Lsn) -> Option<Result<Lsn, WaitError>> {
        let durable = self.durable_lsn();
        if durable >= lsn {
            return Some(Ok(durable));
        }
        // Ordering: Acquire pairs with the Release store of the final status, which the
        // backend makes after its last durable store; so the durable reload below is final.
        let status = LogStatus::from_u8(self.status.load(Ordering::Acquire));
        if status == LogStatus::Open {
            return None;
        }
        let durable = self.durable_lsn();
        Some(if durable >= lsn {
            Ok(durable)
        } else if status == LogStatus::Failed {
            Err(WaitError::Failed { durable })
        } else {
            Err(WaitError::Closed { durable })
        })
    }

    /// Publishes a new durable LSN and wakes the waiters it satisfies.
    pub(crate) fn advance(&self, lsn: Lsn) {
        // Ordering: Release — a waiter that sees `lsn` sees that its record was persisted.
        self.durable.store(lsn, Ordering::Release);
        // Taking the waiters lock after the store: a waiter that checked before the store
        // registered before we lock, so it is found here (no lost wake-up).
        let ready = {
            let mut waiters = lock(&self.waiters);
            let later = waiters.split_off(&(lsn + 1));
            mem::replace(&mut *waiters, later)
        };
        self.changed.notify_all();
        ready.into_values().flatten().for_each(Waker::wake);
    }

    /// Remembers why the log failed (the first reason wins).
    pub(crate) fn record_failure(&self, failure: LogFailure) {
        lock(&self.failure).get_or_insert(failure);
    }

    /// Records the final status (closed or failed) and wakes every waiter.
    pub(crate) fn finish(&self, status: LogStatus) {
        // Ordering: Release — see `check`.
        self.status.store(status as u8, Ordering::Release);
        let all = mem::take(&mut *lock(&self.waiters));
        self.changed.notify_all();
        all.into_values().flatten().for_each(Waker::wake);
    }

    /// The failure, if the log failed.
    pub(crate) fn failure(&self) -> Option<LogFailure> {
        lock(&self.failure).clone()
    }

    /// Blocks until `lsn` is durable (returns the durable LSN), the log stops, or `timeout`.
    pub(crate) fn wait(&self, lsn: Lsn, timeout: Duration) -> Result<Lsn, WaitError> {
        if let Some(outcome) = self.check(lsn) {
            return outcome;
        }
        let deadline = Instant::now() + timeout;
        let mut waiters = lock(&self.waiters);
        loop {
            if let Some(outcome) = self.check(lsn) {
                return outcome;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout {
                    durable: self.durable_lsn(),
                });
            }
            waiters = self
                .changed
                .wait_timeout(waiters, deadline - now)
                .expect("wal mutex poisoned: a panic under a wal lock is a bug")
                .0;
        }
    }
}

/// Resolves when its LSN is durable, or with the reason it never will be (the log failed
/// or shut down). Runtime-agnostic: it uses only `std::task::Waker`, so a tokio task can
/// `.await` it.
#[derive(Debug)]
#[must_use = "a future does nothing unless polled"]
pub struct DurableFuture {
    durability: Arc<Durability>,
    lsn: Lsn,
}

impl DurableFuture {
    pub(crate) fn new(durability: Arc<Durability>, lsn: Lsn) -> Self {
        Self { durability, lsn }
    }
}

impl Future for DurableFuture {
    type Output = Result<Lsn, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(outcome) = self.durability.check(self.lsn) {
            return Poll::Ready(outcome);
        }
        let mut waiters = lock(&self.durability.waiters);
        // Re-check under the lock: the backend stores the durable LSN before taking it.
        if let Some(outcome) = self.durability.check(self.lsn) {
            return Poll::Ready(outcome);
        }
        let wakers = waiters.entry(self.lsn).or_default();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
