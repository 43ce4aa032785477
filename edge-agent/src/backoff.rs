//! Reconnect delays for the node link and the MQTT broker: full-jitter exponential backoff
//! from 1 s to a cap, reset once a connection has stayed up for 20 s — so a peer that
//! accepts and drops at once is retried ever more slowly, never in a tight loop.

use std::time::{Duration, Instant};

use rand::Rng;

/// The first delay's upper bound.
pub(crate) const BASE: Duration = Duration::from_secs(1);
/// A connection up this long counts as healthy: the next failure starts from [`BASE`].
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(20);

/// The delays of one peer's reconnects.
#[derive(Debug)]
pub(crate) struct Backoff {
    cap: Duration,
    attempt: u32,
    connected_at: Option<Instant>,
}

impl Backoff {
    /// Delays up to `cap`.
    pub(crate) fn new(cap: Duration) -> Backoff {
        Backoff {
            cap: cap.max(BASE),
            attempt: 0,
            connected_at: None,
        }
    }

    /// A connection came up at `now`.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection (or an attempt) failed at `now`: the delay before the next attempt,
    /// uniform in `[0, min(cap, 1 s · 2^attempt)]`; the attempt count restarts when the
    /// connection had been up for [`HEALTHY_AFTER`].
    pub(crate) fn failed(&mut self, now: Instant, rng: &mut impl Rng) -> Duration {
        if let Some(at) = self.connected_at.take()
            && now.saturating_duration_since(at) >= HEALTHY_AFTER
        {
            self.attempt = 0;
        }
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling_us))
    }

    /// The upper bound of the next delay (for logs and tests).
    pub(crate) fn ceiling(&self) -> Duration {
        BASE.checked_mul(1_u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn delays_double_to_the_cap_with_full_jitter() {
        let mut rng = StdRng::seed_from_u64(1);
        let cap = Duration::from_secs(30);
        let now = Instant::now();
        for attempt in 0..12_u32 {
            let ceiling = (BASE * 2_u32.pow(attempt)).min(cap);
            let delays: Vec<Duration> = (0..300)
                .map(|_| {
                    let mut backoff = Backoff::new(cap);
                    backoff.attempt = attempt;
                    backoff.failed(now, &mut rng)
                })
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            assert!(delays.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                delays.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn twenty_seconds_connected_resets_a_shorter_connection_does_not() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let start = Instant::now();
        for _ in 0..5 {
            backoff.failed(start, &mut rng);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(30));
        backoff.connected(start);
        backoff.failed(start + Duration::from_secs(19), &mut rng);
        assert_eq!(backoff.ceiling(), Duration::from_secs(30));
        backoff.connected(start);
        let delay = backoff.failed(start + HEALTHY_AFTER, &mut rng);
        assert!(delay <= BASE);
        assert_eq!(backoff.ceiling(), Duration::from_secs(2));
    }
}
