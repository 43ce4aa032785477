//! Reconnect delays: exponential backoff with full jitter (a uniform random delay between
//! zero and the capped exponential), so that many clients cut off together do not come back
//! together.

use std::time::Duration;

use rand::Rng;

/// The delay before reconnect attempt `attempt` (0 for the first retry): uniform in
/// `[0, min(max, base · 2^attempt)]`.
pub(crate) fn full_jitter(
    attempt: u32,
    base: Duration,
    max: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let cap = base
        .checked_mul(1_u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.random_range(0..=cap_us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn delays_grow_to_the_cap_and_are_spread_below_it() {
        let mut rng = StdRng::seed_from_u64(7);
        let base = Duration::from_millis(10);
        let max = Duration::from_secs(1);
        for attempt in 0..40 {
            let cap = (base * 2_u32.pow(attempt.min(20))).min(max);
            let delays: Vec<_> = (0..200)
                .map(|_| full_jitter(attempt, base, max, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= cap), "attempt {attempt}");
            // Full jitter: some delays fall in the lower half of the range, some in the upper.
            assert!(delays.iter().any(|d| *d < cap / 2), "attempt {attempt}");
            assert!(delays.iter().any(|d| *d > cap / 2), "attempt {attempt}");
        }
    }
}
