//! The fan-out workers: one task per shard of the [`DirtyFeed`](super::DirtyFeed), each
//! draining the dirty auctions (every worker sees every change) and publishing their current
//! state to the outboxes of the matching connections it serves (connections are dealt to
//! workers round robin; [`Hub::publish`](super::Hub::publish)). A hot auction's watchers are
//! so served by every core at once.

use std::sync::Arc;

use gavel_engine::AuctionId;
use tokio::task::JoinSet;

use crate::clock::now_micros;
use crate::gateway::{Backend, Gateway};
use crate::metrics;

/// Dirty auctions a worker drains per round before it yields to other tasks.
pub(crate) const DRAIN_IDS_MAX: usize = 1024;
/// Auctions read per page when a worker sweeps its shard after a feed overflow.
const SWEEP_PAGE_MAX: usize = 1024;

/// Runs one worker per shard until the gateway shuts down.
pub async fn run<B: Backend>(gateway: Arc<Gateway<B>>) {
    let mut workers = JoinSet::new();
    for shard in 0..gateway.hub().feed().shards() {
        workers.spawn(run_shard(Arc::clone(&gateway), shard));
    }
    while workers.join_next().await.is_some() {}
}

async fn run_shard<B: Backend>(gateway: Arc<Gateway<B>>, shard: usize) {
    let hub = Arc::clone(gateway.hub());
    let shutdown = gateway.shutdown().clone();
    let mut ids = Vec::with_capacity(DRAIN_IDS_MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hub.work(shard) => {}
        }
        // Nothing is decided before recovery finished, so nothing is dirty before then.
        let Some(backend) = gateway.backend().cloned() else {
            continue;
        };
        loop {
            ids.clear();
            let drained = hub.feed().drain(shard, &mut ids, DRAIN_IDS_MAX);
            let now = now_micros();
            if drained.overflowed {
                // The feed dropped marks: every auction may have moved. The outboxes drop
                // what they already have (by sequence number).
                let mut after = None;
                loop {
                    let page = backend.list(after, SWEEP_PAGE_MAX, now);
                    after = page.last().map(|v| v.spec.id());
                    ids.extend(page.iter().map(|v| v.spec.id()));
                    if page.len() < SWEEP_PAGE_MAX {
                        break;
                    }
                }
                ids.sort_unstable();
                ids.dedup();
            }
            let mut delivered = 0;
            for id in &ids {
                delivered += hub.publish(&*backend, AuctionId(id.0), now, shard);
            }
            if shard == 0 {
                // Every worker reads every dirty auction; count each publication once.
                ::metrics::counter!(metrics::STREAM_UPDATES_PUBLISHED).increment(ids.len() as u64);
            }
            ::metrics::counter!(metrics::STREAM_UPDATES_QUEUED).increment(delivered as u64);
            if drained.ids < DRAIN_IDS_MAX && !drained.overflowed {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
