//! The engine's one fixed 64-bit mixer (`mix64`) and the `Hasher` built on it.
//!
//! Used where keys are not chosen by bidders or are already keyed fingerprints: auction ids
//! (chosen by operators) for the registry and its shard index, and the idempotency memory's
//! index of per-process keyed fingerprints. A fixed mixer is cheaper than a keyed hash and
//! deterministic, which the seen-bid filter's keys also rely on.

use std::hash::{BuildHasherDefault, Hasher};

/// SplitMix64's finaliser: a cheap, well-distributed 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A `Hasher` for one `u64` key (an auction id, a fingerprint): `mix64` of it.
#[derive(Default)]
pub(crate) struct MixHasher(u64);

/// Builds [`MixHasher`]s for `HashMap`s.
pub(crate) type BuildMixHasher = BuildHasherDefault<MixHasher>;

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = mix64(self.0 ^ v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_u64_key_hashes_to_its_mix() {
        assert_eq!(BuildMixHasher::default().hash_one(42_u64), mix64(42));
        assert_ne!(mix64(1), mix64(2));
    }
}
