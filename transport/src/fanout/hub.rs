//! The fan-out hub: the node's subscription registry and the delivery of an auction's
//! current state to every connection whose subscriptions match its topic.
//!
//! - [`Hub`]: the [`DirtyFeed`] the bid path marks, the [`TopicTrie`] of subscriptions, and
//!   [`Hub::publish`], which a fan-out worker calls for each drained auction: one read of
//!   the auction's view, one trie lookup, one push per matching [`Subscriber`] outbox.
//! - [`Subscriber`]: one connection's side — its [`Outbox`] and the wake-up its writer
//!   waits on.
//! - [`SubscribeError`]: why a subscription was refused (`BAD_TOPIC`, `LIMIT_EXCEEDED`).
//!
//! Locks: the registry is a std `RwLock` written only by (un)subscribes; `publish` holds
//! its read side for the trie lookup only (collecting `Arc`s), never while pushing into
//! outboxes. Each outbox has its own std mutex, held for one push or one `take_due`, never
//! across an `.await`; a `take_due` reads the [`LatestPrices`] under it (lock order: outbox,
//! then the latest prices' shard).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use gavel_engine::{AuctionId, AuctionView, Phase, UnixMicros};

use crate::gateway::AuctionReads;
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use thiserror::Error;
use tokio::sync::Notify;

use crate::fanout::feed::DirtyFeed;
use crate::fanout::latest::LatestPrices;
use crate::fanout::outbox::{Outbox, Outgoing, Pushed, SharedPrice};
use crate::fanout::trie::{Pattern, PatternError, TopicTrie};
use crate::limits::Limits;
use crate::metrics;

/// The stream epoch: the node keeps every auction's history across restarts (the WAL), so
/// it never loses state and the epoch stays 1.
pub(crate) const STREAM_EPOCH: u64 = 1;

/// Auctions read per page when a subscription scans for its snapshots.
const SNAPSHOT_PAGE_MAX: usize = 1024;

/// The price update of `view` read at `now`, with its presence counts.
fn price_update(
    view: &AuctionView,
    now: UnixMicros,
    watchers: usize,
    bidders: usize,
) -> pb::PriceUpdate {
    let topic = view.spec.rules().topic.as_str();
    pb::PriceUpdate {
        auction_id: view.spec.id().0,
        topic: topic.to_owned(),
        epoch: STREAM_EPOCH,
        seq: view.seq,
        price: view.price,
        leader: view.leader.map(|l| l.as_str().to_owned()),
        ends_at_us: view.ends_at.0,
        bids_accepted: view.bids_accepted,
        // The decision's time; unknown only for an auction restored from a snapshot and
        // unchanged since, where `now` (the state read) bounds it from above.
        accepted_at_us: if view.changed_at.0 == 0 {
            now.0
        } else {
            view.changed_at.0
        },
        watchers: count(watchers),
        bidders_connected: count(bidders),
    }
}

/// A stream snapshot of `view` with its presence counts.
fn snapshot_message(view: &AuctionView, watchers: usize, bidders: usize) -> pb::ServerMessage {
    let mut snapshot = pb::AuctionSnapshot::from_view(view, STREAM_EPOCH);
    snapshot.watchers = count(watchers);
    snapshot.bidders_connected = count(bidders);
    pb::ServerMessage {
        request_id: 0,
        body: Some(Reply::AuctionSnapshot(snapshot)),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One connection's delivery metrics, looked up once per connection rather than per
/// write: updates delivered and conflated over its transport, and the delivery latency.
#[derive(Debug)]
pub struct Delivery {
    delivered: ::metrics::Counter,
    conflated: ::metrics::Counter,
    latency: ::metrics::Histogram,
}

impl Delivery {
    /// The handles for a connection over `transport` (a metric label).
    pub fn new(transport: &'static str) -> Delivery {
        Delivery {
            delivered: ::metrics::counter!(metrics::STREAM_UPDATES_DELIVERED, "transport" => transport),
            conflated: ::metrics::counter!(metrics::STREAM_UPDATES_CONFLATED, "transport" => transport),
            latency: ::metrics::histogram!(metrics::STREAM_DELIVERY_SECONDS),
        }
    }

    /// Counts `messages` as written to the peer, and records the delivery latency
    /// (decision → `now`) of each price update among them.
    pub fn record(&self, messages: &[Outgoing], now: UnixMicros) {
        for accepted_at_us in messages.iter().filter_map(Outgoing::accepted_at_us) {
            self.latency
                .record(now.0.saturating_sub(accepted_at_us) as f64 / 1e6);
        }
        self.delivered.increment(messages.len() as u64);
    }
}

/// Presence of one bidder connection: counted in [`Hub::bidders_connected`] while it
/// lives.
#[derive(Debug)]
pub struct BidderPresence(Arc<Hub>);

impl Drop for BidderPresence {
    fn drop(&mut self) {
        // Ordering: Relaxed; a gauge, no data behind it.
        let now = self.0.bidders.fetch_sub(1, Ordering::Relaxed) - 1;
        ::metrics::gauge!(metrics::PRESENCE_BIDDERS).set(now as f64);
    }
}

/// The exact `topics` and `patterns` of a `Subscribe` or `Unsubscribe`, parsed.
pub(crate) fn parse_request(
    topics: &[String],
    patterns: &[String],
) -> Result<Vec<Pattern>, PatternError> {
    topics
        .iter()
        .map(|t| Pattern::exact(t))
        .chain(patterns.iter().map(|p| Pattern::parse(p)))
        .collect()
}

/// Why a subscription was refused; nothing changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum SubscribeError {
    /// A topic or pattern was malformed (`BAD_TOPIC`).
    #[error("bad topic or pattern: {0}")]
    BadTopic(#[from] PatternError),
    /// The connection would hold more than `subscriptions_per_connection_max`
    /// (`LIMIT_EXCEEDED`).
    #[error("more than {subscriptions_max} subscriptions on one connection")]
    TooMany {
        /// The limit.
        subscriptions_max: usize,
    },
}

/// Which way [`Hub::change`] changes a connection's subscriptions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Change {
    /// `Subscribe`: add them.
    Add,
    /// `Unsubscribe`: remove them.
    Remove,
}

/// One subscriber connection as the hub sees it.
#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    outbox: Mutex<Outbox>,
    /// Set when something was pushed since the connection's writer last looked; `waker` is
    /// that writer's wake-up (one task per connection waits, so an `AtomicWaker` does: no
    /// waiter list, and pushes before the writer runs again wake it once).
    pushed: AtomicBool,
    waker: AtomicWaker,
    patterns: Mutex<HashSet<Pattern>>,
    /// Set when the outbox refused a push at its hard bound: close the connection now.
    full: AtomicBool,
}

impl Subscriber {
    /// The connection's outbox; lock it for one push or one `take_due`, never across an
    /// `.await`.
    pub fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .expect("outbox mutex poisoned: nothing panics while holding it")
    }

    /// Resolves once something was pushed since the last wake-up (the writer then takes
    /// what is due).
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await;
    }

    /// Polls for [`Subscriber::woken`]: ready once something was pushed since the last
    /// time it was ready. Only the connection's own task may poll it (one waker is kept).
    pub fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Ordering: AcqRel/Acquire; the flag orders nothing itself (the outbox has its own
        // lock), but a push after the swap must either be seen by the second swap or wake
        // the registered waker.
        if self.pushed.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.pushed.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }

    /// Whether the connection must be closed as a slow consumer at `now`: its outbox hit
    /// the hard bound, or stayed over the bound past the timeout.
    pub fn is_slow(&self, now: Instant) -> bool {
        // Ordering: Relaxed; a flag read by the connection's own writer, no data behind it.
        self.full.load(Ordering::Relaxed) || self.outbox().is_slow(now)
    }

    /// Bytes pending in the outbox (encoded sizes).
    pub fn pending_bytes(&self) -> usize {
        self.outbox().bytes()
    }

    fn mark_slow(&self) {
        // Ordering: Relaxed; see `is_slow`.
        self.full.store(true, Ordering::Relaxed);
    }

    /// Moves what is due into `batch` for one write of at most about `bytes_max` bytes and
    /// `messages_max` messages, counting conflated updates in `delivery`. Returns when the
    /// next held-back update becomes due and the bytes still pending.
    pub fn take_due(
        &self,
        now: Instant,
        bytes_max: usize,
        messages_max: usize,
        delivery: &Delivery,
        batch: &mut Vec<Outgoing>,
    ) -> (Option<Instant>, usize) {
        let (next, conflated, bytes) = {
            let mut outbox = self.outbox();
            let next = outbox.take_due_at_most(now, bytes_max, messages_max, batch);
            (next, outbox.take_conflated(), outbox.bytes())
        };
        if conflated > 0 {
            delivery.conflated.increment(conflated);
        }
        (next, bytes)
    }

    /// Wakes the connection's writer (after pushing into its outbox directly).
    pub fn wake(&self) {
        // Ordering: Release; see `poll_woken`.
        self.pushed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Subscriptions held.
    pub fn subscriptions(&self) -> usize {
        self.patterns().len()
    }

    fn patterns(&self) -> MutexGuard<'_, HashSet<Pattern>> {
        self.patterns
            .lock()
            .expect("patterns mutex poisoned: nothing panics while holding it")
    }
}

#[derive(Debug, Default)]
struct Registry {
    trie: TopicTrie<u64>,
    /// Keyed by the node's own connection ids (foldhash: no peer picks them).
    subscribers: HashMap<u64, Arc<Subscriber>, foldhash::fast::RandomState>,
}

/// The node's fan-out: dirty feed, subscriptions, delivery.
#[derive(Debug)]
pub struct Hub {
    feed: DirtyFeed,
    /// The latest update of each auction being fanned out, shared by every outbox.
    latest: Arc<LatestPrices>,
    /// One wake-up per shard, for its worker.
    wakers: Box<[Notify]>,
    registry: RwLock<Registry>,
    next_id: AtomicU64,
    /// Bidder connections open (presence).
    bidders: AtomicUsize,
    /// Subscriptions held by all connections: while there are none, changes are not marked
    /// (no fan-out wake-ups for nobody; a later subscription starts from snapshots).
    subscriptions: AtomicUsize,
    subscriptions_max: usize,
    outbound_bytes_max: usize,
    slow_after: Duration,
}

impl Hub {
    /// A hub with `shards` fan-out shards, each dirty queue holding `queue_len_max` ids,
    /// with the per-connection bounds of `limits`.
    pub fn new(shards: usize, queue_len_max: usize, limits: &Limits) -> Hub {
        let feed = DirtyFeed::new(shards, queue_len_max);
        Hub {
            wakers: (0..feed.shards()).map(|_| Notify::new()).collect(),
            feed,
            latest: Arc::default(),
            registry: RwLock::new(Registry::default()),
            next_id: AtomicU64::new(1),
            bidders: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            subscriptions_max: limits.subscriptions_per_connection_max,
            outbound_bytes_max: limits.outbound_bytes_max_per_connection,
            slow_after: limits.slow_consumer_timeout(),
        }
    }

    /// Counts a bidder connection until the returned guard is dropped.
    pub fn bidder_present(self: &Arc<Self>) -> BidderPresence {
        // Ordering: Relaxed; see `BidderPresence`.
        let now = self.bidders.fetch_add(1, Ordering::Relaxed) + 1;
        ::metrics::gauge!(metrics::PRESENCE_BIDDERS).set(now as f64);
        BidderPresence(Arc::clone(self))
    }

    /// Bidder connections open now.
    pub fn bidders_connected(&self) -> usize {
        // Ordering: Relaxed; see `BidderPresence`.
        self.bidders.load(Ordering::Relaxed)
    }

    /// Connections whose subscriptions match `topic` now (an auction's watchers).
    pub fn watchers(&self, topic: &str) -> usize {
        self.registry().trie.subscribers(topic).len()
    }

    /// The stream snapshot of `view`, with its presence counts.
    pub fn snapshot(&self, view: &AuctionView) -> pb::ServerMessage {
        snapshot_message(
            view,
            self.watchers(view.spec.rules().topic.as_str()),
            self.bidders_connected(),
        )
    }

    /// The dirty feed: the bid path marks it, the workers drain it.
    pub fn feed(&self) -> &DirtyFeed {
        &self.feed
    }

    /// Announces that auction `id` changed (call it after the change is applied): marks it
    /// dirty and wakes its shard's worker if it was not queued already. Never waits.
    pub fn changed(&self, id: AuctionId) {
        // Ordering: SeqCst fence, then the count. With the SeqCst read-modify-writes of
        // `subscriptions` that precede a subscription's snapshot scan, either this load
        // sees the subscription (and the change is marked), or the scan sees the change
        // (it was applied before the fence): no change falls between the two.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.subscriptions.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.feed.mark(id, |shard| self.wakers[shard].notify_one());
    }

    /// Resolves when shard `shard` has work (a permit is kept if nobody waits, so no
    /// wake-up is lost).
    ///
    /// # Panics
    /// If `shard >= self.feed().shards()` (a programming error of the worker set-up).
    pub async fn work(&self, shard: usize) {
        self.wakers[shard].notified().await;
    }

    /// Delivers a durable close and settlement of auction `id` to every matching
    /// subscriber, in order and never conflated (after a pending price of the auction).
    /// Call it once the settlement is durable, exactly once per auction: the closer for
    /// ends, the admin API for cancels, the bid path for bids that close (buy-now, a Dutch
    /// sale), all through [`crate::settlement::announce`]. `view` is the auction's view
    /// read after the close. Returns how many subscribers it reached.
    pub fn settled(&self, view: &AuctionView, now: UnixMicros) -> usize {
        let id = view.spec.id();
        let (Some(settlement), Some(reason)) = (view.settlement, view.close_reason) else {
            return 0;
        };
        // The decision's time; `now` bounds it from above if it is unknown.
        let at_us = if view.changed_at.0 == 0 {
            now
        } else {
            view.changed_at
        };
        let closed = pb::ServerMessage {
            request_id: 0,
            body: Some(Reply::AuctionClosed(pb::AuctionClosed {
                auction_id: id.0,
                epoch: STREAM_EPOCH,
                // Invariant: `Settled` is always the event right after `Closed`.
                seq: view.seq.saturating_sub(1),
                reason: pb::CloseReason::from(reason).into(),
                closed_at_us: at_us.0,
            })),
        };
        let settled = pb::ServerMessage {
            request_id: 0,
            body: Some(Reply::AuctionSettled(pb::AuctionSettled::new(
                id,
                STREAM_EPOCH,
                view.seq,
                at_us,
                settlement,
            ))),
        };
        let won = if settlement.winner.is_some() {
            "yes"
        } else {
            "no"
        };
        ::metrics::counter!(metrics::AUCTIONS_SETTLED, "winner" => won).increment(1);
        let at = Instant::now();
        let targets = self.matching(view.spec.rules().topic.as_str());
        for subscriber in &targets {
            let mut outbox = subscriber.outbox();
            let ok = outbox.push_ordered(id, closed.clone(), at)
                && outbox.push_ordered(id, settled.clone(), at);
            drop(outbox);
            if !ok {
                subscriber.mark_slow();
            }
            subscriber.wake();
        }
        // Nothing more is published for it; a price still pending somewhere was moved
        // ahead of the close above, or belongs to a connection that no longer matches.
        self.latest.remove(id);
        targets.len()
    }

    /// The shard (fan-out worker) serving subscriber `id`: connections are dealt round
    /// robin.
    fn shard_of_subscriber(&self, id: u64) -> usize {
        // Truncation intended: the remainder is below the shard count.
        (id % self.wakers.len() as u64) as usize
    }

    /// How many subscribers match `topic`, and those of them that `shard` serves (the
    /// registry lock is released before the caller pushes anything).
    fn matching_in(&self, topic: &str, shard: usize) -> (usize, Vec<Arc<Subscriber>>) {
        let registry = self.registry();
        let ids = registry.trie.subscribers(topic);
        let own = ids
            .iter()
            .filter(|s| self.shard_of_subscriber(**s) == shard)
            .filter_map(|s| registry.subscribers.get(s).cloned())
            .collect();
        (ids.len(), own)
    }

    /// The subscribers whose subscriptions match `topic` (the registry lock is released
    /// before the caller pushes anything).
    fn matching(&self, topic: &str) -> Vec<Arc<Subscriber>> {
        let registry = self.registry();
        registry
            .trie
            .subscribers(topic)
            .iter()
            .filter_map(|s| registry.subscribers.get(s).cloned())
            .collect()
    }

    /// Registers a subscriber connection, paced at `interval`.
    pub fn connect(&self, interval: Duration) -> Arc<Subscriber> {
        // Ordering: Relaxed; only uniqueness matters.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Arc::new(Subscriber {
            id,
            outbox: Mutex::new(Outbox::new(
                interval,
                self.outbound_bytes_max,
                self.slow_after,
                Arc::clone(&self.latest),
            )),
            pushed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            patterns: Mutex::new(HashSet::new()),
            full: AtomicBool::new(false),
        });
        let mut registry = self.registry_mut();
        registry.subscribers.insert(id, Arc::clone(&subscriber));
        ::metrics::gauge!(metrics::PRESENCE_WATCHERS).set(registry.subscribers.len() as f64);
        drop(registry);
        subscriber
    }

    /// Drops a connection and all its subscriptions.
    pub fn disconnect(&self, subscriber: &Subscriber) {
        let patterns: Vec<Pattern> = subscriber.patterns().drain().collect();
        let mut registry = self.registry_mut();
        for pattern in &patterns {
            registry.trie.remove(pattern, subscriber.id);
        }
        // Ordering: SeqCst; see `changed`.
        self.subscriptions
            .fetch_sub(patterns.len(), Ordering::SeqCst);
        registry.subscribers.remove(&subscriber.id);
        ::metrics::gauge!(metrics::PRESENCE_WATCHERS).set(registry.subscribers.len() as f64);
    }

    /// Adds (`Subscribe`) or removes (`Unsubscribe`; unknown ones are ignored) exact
    /// `topics` and `patterns` of a connection, all or none; returns how many
    /// subscriptions it holds now.
    pub fn change(
        &self,
        subscriber: &Subscriber,
        change: Change,
        topics: &[String],
        patterns: &[String],
    ) -> Result<usize, SubscribeError> {
        let parsed = parse_request(topics, patterns)?;
        let mut held = subscriber.patterns();
        if change == Change::Add {
            let new = parsed.iter().filter(|p| !held.contains(*p)).count();
            if held.len() + new > self.subscriptions_max {
                return Err(SubscribeError::TooMany {
                    subscriptions_max: self.subscriptions_max,
                });
            }
        }
        let before = held.len();
        let mut registry = self.registry_mut();
        for pattern in parsed {
            match change {
                Change::Add => {
                    registry.trie.insert(&pattern, subscriber.id);
                    held.insert(pattern);
                }
                Change::Remove => {
                    if held.remove(&pattern) {
                        registry.trie.remove(&pattern, subscriber.id);
                    }
                }
            }
        }
        // Ordering: SeqCst, before the caller scans for snapshots; see `changed`.
        if held.len() >= before {
            self.subscriptions
                .fetch_add(held.len() - before, Ordering::SeqCst);
        } else {
            self.subscriptions
                .fetch_sub(before - held.len(), Ordering::SeqCst);
        }
        Ok(held.len())
    }

    /// Delivers the current state of auction `id` to every matching subscriber that fan-out
    /// worker `shard` serves: one view, one trie lookup, one outbox push each (conflated
    /// there). Returns how many outboxes took it (queued or conflated).
    pub fn publish(
        &self,
        reads: &(impl AuctionReads + ?Sized),
        id: AuctionId,
        now: UnixMicros,
        shard: usize,
    ) -> usize {
        let Some(view) = reads.view(id, now) else {
            return 0;
        };
        let topic = view.spec.rules().topic.as_str();
        if view.phase == Phase::Settled {
            // Closes and settlements go out once durable, through `Hub::settled`.
            return 0;
        }
        let (watchers, targets) = self.matching_in(topic, shard);
        if targets.is_empty() {
            return 0;
        }
        // One update per change, shared by every worker and outbox: sized once and
        // encoded once per wire form.
        let update = match self.latest.get(id) {
            Some(kept) if kept.seq() >= view.seq => kept,
            _ => self.latest.put(Arc::new(SharedPrice::new(price_update(
                &view,
                now,
                watchers,
                self.bidders_connected(),
            )))),
        };
        let at = Instant::now();
        let mut delivered = 0;
        for subscriber in &targets {
            let pushed = {
                let mut outbox = subscriber.outbox();
                match outbox.push_shared_price(&update, at) {
                    // First contact (an auction created after the subscription): the full
                    // state, in order.
                    Pushed::Unknown => {
                        let snapshot =
                            snapshot_message(&view, targets.len(), self.bidders_connected());
                        if outbox.push_ordered(id, snapshot, at) {
                            Pushed::Queued
                        } else {
                            Pushed::Full
                        }
                    }
                    pushed => pushed,
                }
            };
            match pushed {
                Pushed::Queued => {
                    delivered += 1;
                    subscriber.wake();
                }
                // The writer was woken for the first pending one, or has its timer.
                Pushed::Joined | Pushed::Conflated => delivered += 1,
                Pushed::Full => {
                    subscriber.mark_slow();
                    subscriber.wake();
                }
                Pushed::Stale | Pushed::Unknown => {}
            }
        }
        delivered
    }

    /// Queues the snapshot of every auction matching `patterns` (new subscriptions) that
    /// `subscriber` has not seen yet, or that moved since `positions` (`(auction, seq)` the
    /// client last saw); returns how many were queued. A scan of the engine, bounded by
    /// `auctions_max`: subscribes are rare, bids are not.
    pub fn snapshots(
        &self,
        reads: &(impl AuctionReads + ?Sized),
        subscriber: &Subscriber,
        patterns: &[Pattern],
        positions: &HashMap<AuctionId, u64>,
        now: UnixMicros,
    ) -> usize {
        let mut queued = 0;
        let mut after = None;
        let at = Instant::now();
        loop {
            let page = reads.list(after, SNAPSHOT_PAGE_MAX, now);
            let Some(last) = page.last() else {
                return Self::snapshots_queued(subscriber, queued);
            };
            after = Some(last.spec.id());
            for view in &page {
                let id = view.spec.id();
                let topic = view.spec.rules().topic.as_str();
                if !patterns.iter().any(|p| p.matches(topic)) {
                    continue;
                }
                // Before the outbox lock: the registry lock is never taken under it.
                let snapshot = self.snapshot(view);
                let mut outbox = subscriber.outbox();
                if let Some(&seen) = positions.get(&id)
                    && seen >= view.seq
                {
                    outbox.note_seen(id, seen);
                    continue;
                }
                if outbox.knows(id) && !positions.contains_key(&id) {
                    continue;
                }
                if !outbox.push_ordered(id, snapshot, at) {
                    drop(outbox);
                    subscriber.mark_slow();
                    // The writer closes the connection at its next look.
                    subscriber.wake();
                    return queued;
                }
                queued += 1;
            }
            if page.len() < SNAPSHOT_PAGE_MAX {
                return Self::snapshots_queued(subscriber, queued);
            }
        }
    }

    /// The end of a snapshot scan: the outbox gives back its spare room (the scan may
    /// have added many auctions) and the writer is woken.
    fn snapshots_queued(subscriber: &Subscriber, queued: usize) -> usize {
        subscriber.outbox().shrink();
        subscriber.wake();
        queued
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .expect("registry lock poisoned: nothing panics while holding it")
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .expect("registry lock poisoned: nothing panics while holding it")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::english;
    use gavel_engine::{Bid, BidId, BidderId, DiscardSink, Engine, EngineConfig};

    fn engine_with(auctions: &[(u64, &str)]) -> Engine {
        let engine = Engine::new(EngineConfig::default());
        for (id, topic) in auctions {
            let spec = english(*id, topic, UnixMicros(1_000_000));
            engine
                .create_auction(spec, UnixMicros(1), &DiscardSink)
                .unwrap();
        }
        engine
    }

    fn bid(engine: &Engine, auction: u64, n: u128, amount: u64) {
        let bid = Bid::new(
            AuctionId(auction),
            BidderId::new("b1").unwrap(),
            BidId(n),
            amount,
            None,
            UnixMicros(2),
        )
        .unwrap();
        engine.place_bid(&bid, UnixMicros(2), &DiscardSink);
    }

    fn prices(subscriber: &Subscriber) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        subscriber
            .outbox()
            .take_due(Instant::now(), usize::MAX, &mut out);
        out.iter()
            .map(|m| match m.message().body.as_ref().unwrap() {
                Reply::PriceUpdate(u) => (u.auction_id, u.price.unwrap()),
                Reply::AuctionSnapshot(s) => {
                    (s.rules.as_ref().unwrap().auction_id, s.price.unwrap())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn publish_reaches_matching_subscribers_only_with_the_latest_price() {
        let engine = engine_with(&[(1, "energy.eu.de"), (2, "energy.us.tx"), (3, "metals.cu")]);
        let hub = Hub::new(1, 64, &Limits::default());
        let eu = hub.connect(Duration::ZERO);
        let all_energy = hub.connect(Duration::ZERO);
        assert_eq!(
            hub.change(&eu, Change::Add, &[], &["energy.eu.*".into()]),
            Ok(1)
        );
        assert_eq!(
            hub.change(
                &all_energy,
                Change::Add,
                &["metals.cu".into()],
                &["energy.>".into()]
            ),
            Ok(2)
        );
        for (n, amount) in [(1, 100), (2, 105), (3, 110)] {
            bid(&engine, 1, n, amount);
            hub.publish(&engine, AuctionId(1), UnixMicros(3), 0);
        }
        bid(&engine, 2, 4, 100);
        assert_eq!(hub.publish(&engine, AuctionId(2), UnixMicros(3), 0), 1);
        assert_eq!(
            hub.publish(&engine, AuctionId(9), UnixMicros(3), 0),
            0,
            "unknown"
        );
        assert_eq!(
            prices(&eu),
            vec![(1, 100), (1, 110)],
            "a snapshot at first contact, then updates conflated to the latest"
        );
        let mut got = prices(&all_energy);
        got.sort_unstable();
        assert_eq!(got, vec![(1, 100), (1, 110), (2, 100)]);

        assert_eq!(
            hub.change(&all_energy, Change::Remove, &[], &["energy.>".into()]),
            Ok(1)
        );
        bid(&engine, 1, 5, 115);
        assert_eq!(hub.publish(&engine, AuctionId(1), UnixMicros(3), 0), 1);
        assert!(prices(&all_energy).is_empty());
        hub.disconnect(&eu);
        assert_eq!(hub.publish(&engine, AuctionId(1), UnixMicros(3), 0), 0);
        assert!(hub.registry().trie.len() == 1, "only metals.cu is left");
    }

    #[test]
    fn changes_are_marked_only_while_someone_subscribes() {
        let hub = Hub::new(1, 64, &Limits::default());
        let drained = |hub: &Hub| {
            let mut ids = Vec::new();
            hub.feed().drain(0, &mut ids, 64);
            ids
        };
        hub.changed(AuctionId(1));
        assert!(
            drained(&hub).is_empty(),
            "nobody subscribes: no fan-out work"
        );
        let watcher = hub.connect(Duration::ZERO);
        hub.changed(AuctionId(1));
        assert!(drained(&hub).is_empty(), "connected, not subscribed");
        let patterns = ["energy.>".to_owned(), "metals.*".to_owned()];
        hub.change(&watcher, Change::Add, &[], &patterns).unwrap();
        hub.changed(AuctionId(2));
        assert_eq!(drained(&hub), vec![AuctionId(2)]);
        hub.change(&watcher, Change::Remove, &[], &patterns[..1])
            .unwrap();
        hub.changed(AuctionId(3));
        assert_eq!(drained(&hub), vec![AuctionId(3)], "one subscription left");
        hub.disconnect(&watcher);
        hub.changed(AuctionId(4));
        assert!(drained(&hub).is_empty(), "the last subscriber left");
    }

    #[test]
    fn each_worker_serves_its_share_of_a_hot_auctions_watchers() {
        let engine = engine_with(&[(1, "energy.eu.de")]);
        let hub = Hub::new(3, 64, &Limits::default());
        let watchers: Vec<_> = (0..10).map(|_| hub.connect(Duration::ZERO)).collect();
        for w in &watchers {
            hub.change(w, Change::Add, &[], &["energy.>".into()])
                .unwrap();
        }
        bid(&engine, 1, 1, 100);
        let per_shard: Vec<usize> = (0..3)
            .map(|shard| hub.publish(&engine, AuctionId(1), UnixMicros(3), shard))
            .collect();
        assert_eq!(per_shard.iter().sum::<usize>(), 10, "{per_shard:?}");
        assert!(per_shard.iter().all(|&n| n >= 3), "spread: {per_shard:?}");
        for w in &watchers {
            let got = prices(w);
            assert_eq!(got, vec![(1, 100)], "each watcher exactly once");
        }
        let mut out = Vec::new();
        watchers[0]
            .outbox()
            .take_due(Instant::now(), usize::MAX, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn subscriptions_are_validated_and_limited_all_or_nothing() {
        let limits = Limits {
            subscriptions_per_connection_max: 2,
            ..Limits::default()
        };
        let hub = Hub::new(1, 64, &limits);
        let s = hub.connect(Duration::ZERO);
        assert_eq!(
            hub.change(&s, Change::Add, &["a.*".into()], &[]),
            Err(SubscribeError::BadTopic(PatternError::WildcardInTopic))
        );
        assert!(matches!(
            hub.change(&s, Change::Add, &[], &["a.>.b".into()]),
            Err(SubscribeError::BadTopic(PatternError::RestNotLast))
        ));
        assert_eq!(
            hub.change(&s, Change::Add, &["a".into()], &["b.>".into()]),
            Ok(2)
        );
        assert_eq!(
            hub.change(&s, Change::Add, &["a".into()], &[]),
            Ok(2),
            "held already"
        );
        assert_eq!(
            hub.change(&s, Change::Add, &[], &["c.*".into()]),
            Err(SubscribeError::TooMany {
                subscriptions_max: 2
            })
        );
        assert_eq!(s.subscriptions(), 2);
        assert_eq!(
            hub.registry().trie.len(),
            2,
            "nothing of the refused request"
        );
    }
}
