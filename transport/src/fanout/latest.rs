//! The latest price update of every auction being fanned out, kept once for all
//! connections: an outbox only marks an auction pending (`super::seen`) and its writer
//! takes the update from here, so a watcher of many auctions holds no update of its own.
//!
//! Sharded by auction id, each shard a std `RwLock` held for one map operation, never
//! across an `.await`; a writer taking its updates holds its outbox's lock around these
//! reads, never the other way round.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use gavel_engine::AuctionId;

use super::outbox::SharedPrice;

/// Lock shards; a power of two.
const SHARDS: usize = 16;
const _: () = assert!(SHARDS.is_power_of_two());

type Shard = RwLock<HashMap<AuctionId, Arc<SharedPrice>, foldhash::fast::RandomState>>;

/// The latest update of each auction (see the module documentation).
#[derive(Debug)]
pub struct LatestPrices {
    shards: Box<[Shard]>,
}

impl Default for LatestPrices {
    fn default() -> LatestPrices {
        LatestPrices {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl LatestPrices {
    fn shard(&self, auction: AuctionId) -> &Shard {
        // Truncation intended: the low bits pick the shard.
        &self.shards[auction.0 as usize & (SHARDS - 1)]
    }

    /// The latest update of `auction`, if one is kept.
    pub fn get(&self, auction: AuctionId) -> Option<Arc<SharedPrice>> {
        self.shard(auction)
            .read()
            .expect("latest-prices lock poisoned: nothing panics while holding it")
            .get(&auction)
            .cloned()
    }

    /// Keeps `update` unless a newer one of its auction is kept; returns the one kept (a
    /// second publisher of the same change shares the first one's encodings).
    pub fn put(&self, update: Arc<SharedPrice>) -> Arc<SharedPrice> {
        let auction = update.auction();
        let mut shard = self
            .shard(auction)
            .write()
            .expect("latest-prices lock poisoned: nothing panics while holding it");
        let kept = shard.entry(auction).or_insert_with(|| Arc::clone(&update));
        if kept.seq() < update.seq() {
            *kept = update;
        }
        Arc::clone(kept)
    }

    /// Forgets `auction` (it settled: nothing more is published for it).
    pub fn remove(&self, auction: AuctionId) {
        self.shard(auction)
            .write()
            .expect("latest-prices lock poisoned: nothing panics while holding it")
            .remove(&auction);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_proto::pb;

    fn update(auction: u64, seq: u64) -> Arc<SharedPrice> {
        Arc::new(SharedPrice::new(pb::PriceUpdate {
            auction_id: auction,
            seq,
            ..pb::PriceUpdate::default()
        }))
    }

    #[test]
    fn the_newest_update_of_each_auction_is_kept_and_shared() {
        let latest = LatestPrices::default();
        let first = update(1, 5);
        assert!(Arc::ptr_eq(&latest.put(Arc::clone(&first)), &first));
        assert!(
            Arc::ptr_eq(&latest.put(update(1, 4)), &first),
            "an older one is not kept"
        );
        assert!(
            Arc::ptr_eq(&latest.put(update(1, 5)), &first),
            "a second publisher of the same change shares the first one"
        );
        let newer = update(1, 6);
        assert!(Arc::ptr_eq(&latest.put(Arc::clone(&newer)), &newer));
        latest.put(update(17, 1));
        assert_eq!(latest.get(AuctionId(1)).map(|u| u.seq()), Some(6));
        latest.remove(AuctionId(1));
        assert!(latest.get(AuctionId(1)).is_none());
        assert_eq!(latest.get(AuctionId(17)).map(|u| u.seq()), Some(1));
    }
}
