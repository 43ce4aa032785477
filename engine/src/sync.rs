//! The synchronisation primitives of one auction, swapped for `loom`'s under `cfg(loom)` so
//! the price-word and settlement-lock protocol can be model-checked (see `auction::loom_tests`).

#[cfg(loom)]
pub(crate) use loom::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};
