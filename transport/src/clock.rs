//! The wall clock as the engine's time. The engine takes `now` on every call and reads no
//! clock itself; the drivers (transports, the node's closer) read it here.

use std::time::{SystemTime, UNIX_EPOCH};

use gavel_engine::UnixMicros;

/// Microseconds since the Unix epoch now (0 before the epoch, saturating far after it).
pub fn now_micros() -> UnixMicros {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UnixMicros(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

/// Sleeps until `at` (a driver's next deadline from its sans-IO core); never without one.
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
