//! The engine's one fixed 64-bit mixer (`mix64`), the `Hasher` built on it, and a
//! pass-through `Hasher` for keys that are already hashes.
//!
//! `mix64` serves keys not chosen by bidders: auction ids (chosen by operators) for the
//! registry and its shard index. The idempotency memory's index holds per-process keyed
//! fingerprints, already mixed, and uses them as they are. A fixed mixer is cheaper than a
//! keyed hash and deterministic, which the seen-bid filter's keys also rely on.

use std::hash::{BuildHasherDefault, Hasher};

/// SplitMix64's finaliser: a cheap, well-distributed 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A `Hasher` for one `u64` key (an auction id): `mix64` of it.
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

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = mix64(self.0 ^ v);
    }
}

/// A `Hasher` for keys that are already keyed, well-mixed 64-bit hashes (the idempotency
/// memory's fingerprints): the key itself, so a lookup costs no second mix.
#[derive(Default)]
pub(crate) struct PassThroughHasher(u64);

/// Builds [`PassThroughHasher`]s for `HashMap`s.
pub(crate) type BuildPassThroughHasher = BuildHasherDefault<PassThroughHasher>;

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not a fingerprint: mix it as `MixHasher` would.
        let mut mixer = MixHasher(self.0);
        mixer.write(bytes);
        self.0 = mixer.0;
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
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

    #[test]
    fn a_fingerprint_hashes_to_itself() {
        assert_eq!(BuildPassThroughHasher::default().hash_one(42_u64), 42);
    }
}
