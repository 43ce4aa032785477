//! Retention across a restart (issue 21 §2): the closer prunes a settled auction once its
//! retention passed (a cancel rings its alarm), never an open one; after a restart the log
//! replays the prune (no snapshot), and after a snapshot the result is restored from it —
//! either way the same result and the same state hash, and a bid for it is `Closed`. The
//! parallel start-up replay reaches the live state with prunes in the log. A result older
//! than its own retention is forgotten by a logged record, and stays forgotten across
//! restarts by log and by snapshot.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_engine::{
    AuctionId, Bid, BidId, BidOutcome, BidderId, Engine, EngineConfig, PrunedAuction, Rejection,
    UnixMicros,
};
use gavel_node::replay::replay_parallel;
use gavel_node::{Node, NodeBackend, NodeConfig, closer};
use gavel_transport::Limits;
use gavel_transport::clock::now_micros;
use gavel_transport::fanout::Hub;
use gavel_wal::{Wal, WalConfig};
use tokio_util::sync::CancellationToken;

/// Short, so the closer prunes within the test.
const RETENTION_US: u64 = 300_000;

fn config() -> NodeConfig {
    NodeConfig {
        engine: EngineConfig {
            settled_retention_us: RETENTION_US,
            ..EngineConfig::default()
        },
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 0,
        ..NodeConfig::default()
    }
}

/// Runs the closer over `node` (its longest sleep an hour, so only its alarm or its due
/// time wakes it), cancels `auction` once the closer sleeps towards the auctions' end an
/// hour away, and waits until the closer pruned it (generous deadline); returns the result.
fn cancel_then_prune_with_the_closer(node: &Arc<Node>, auction: AuctionId) -> PrunedAuction {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hub = Arc::new(Hub::new(1, 64, &Limits::default()));
    let shutdown = CancellationToken::new();
    let thread = closer::spawn(
        Arc::new(NodeBackend(Arc::clone(node))),
        hub,
        Duration::from_secs(3_600),
        shutdown.clone(),
        runtime.handle().clone(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let cancelled = node.cancel_auction(auction, now_micros()).unwrap();
    node.wait_durable(cancelled.receipt, Duration::from_secs(30))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        if let Some(result) = node.engine().pruned(auction) {
            break result;
        }
        assert!(
            Instant::now() < deadline,
            "the closer never pruned {auction}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    shutdown.cancel();
    node.wake_closer();
    thread.join().unwrap();
    result
}

/// Opens a node in `dir` with auctions 1 and 2 (both ending in an hour, returned), and has
/// the closer prune auction 1 after cancelling it; returns the node and 1's result.
fn open_and_prune_the_first_of_two(
    dir: &std::path::Path,
    config: NodeConfig,
) -> (Arc<Node>, PrunedAuction, UnixMicros) {
    let hour = UnixMicros(now_micros().0 + 3_600_000_000);
    let (node, _) = Node::open(dir, config).unwrap();
    let node = Arc::new(node);
    for id in [1, 2] {
        node.create_auction(common::english(id, hour), now_micros())
            .unwrap();
    }
    let result = cancel_then_prune_with_the_closer(&node, AuctionId(1));
    (node, result, hour)
}

fn bid_on(node: &Node, auction: AuctionId) -> BidOutcome {
    let now = now_micros();
    let bidder = BidderId::new("late").unwrap();
    let bid = Bid::new(auction, bidder, BidId(99), 10_000, None, now).unwrap();
    node.place_bid(&bid, now).outcome
}

#[test]
fn a_pruned_result_survives_restarts_by_log_replay_and_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (node, result, _) = open_and_prune_the_first_of_two(dir.path(), config());
    assert!(result.pruned_at.0 >= result.settled_at.0 + RETENTION_US);
    assert!(
        node.engine().view(AuctionId(2), now_micros()).is_some(),
        "an open auction is never pruned"
    );
    let hash = node.engine().state_hash();
    node.shutdown(false).unwrap();
    drop(node);

    // No snapshot: the log's `Pruned` record is replayed.
    let (node, report) = Node::open(dir.path(), config()).unwrap();
    assert_eq!((report.snapshot_lsn, report.pruned_restored), (None, 0));
    assert_eq!(node.engine().pruned(AuctionId(1)), Some(result.clone()));
    assert_eq!(report.state_hash, hash);
    assert_eq!(
        bid_on(&node, AuctionId(1)),
        BidOutcome::Rejected(Rejection::Closed)
    );
    assert!(node.snapshot_now().unwrap().is_some());
    node.shutdown(false).unwrap();
    drop(node);

    // From the snapshot, which carries the result.
    let (node, report) = Node::open(dir.path(), config()).unwrap();
    assert!(report.snapshot_lsn.is_some());
    assert_eq!((report.auctions_restored, report.pruned_restored), (1, 1));
    assert_eq!(node.engine().pruned(AuctionId(1)), Some(result));
    assert_eq!(report.state_hash, hash);
    assert_eq!(node.engine().len(), 1);
    node.shutdown(false).unwrap();
}

/// The closer wakes for the forget (`poll_timeout`); the forget is logged, so a restart
/// from the log alone and one from a later snapshot both find the auction unknown, with the
/// live state hash; its id can then be created again.
#[test]
fn a_forgotten_result_stays_forgotten_across_restarts() {
    const RESULT_RETENTION_US: u64 = 600_000;
    let config = NodeConfig {
        engine: EngineConfig {
            pruned_retention_us: RESULT_RETENTION_US,
            ..config().engine
        },
        ..config()
    };
    let dir = tempfile::tempdir().unwrap();
    let (node, result, hour) = open_and_prune_the_first_of_two(dir.path(), config.clone());
    let due = UnixMicros(result.pruned_at.0 + RESULT_RETENTION_US);
    assert_eq!(node.poll_timeout(), Some(due), "the closer wakes for it");
    assert_eq!(node.forget_due(UnixMicros(due.0 - 1), usize::MAX), 0);
    assert_eq!(node.forget_due(due, usize::MAX), 1);
    assert_eq!(node.engine().auction_seq(AuctionId(1)), None);
    let hash = node.engine().state_hash();
    node.shutdown(false).unwrap();
    drop(node);

    let (node, report) = Node::open(dir.path(), config.clone()).unwrap();
    assert_eq!(report.snapshot_lsn, None);
    assert_eq!(report.state_hash, hash);
    assert_eq!(node.engine().pruned(AuctionId(1)), None);
    assert!(node.snapshot_now().unwrap().is_some());
    node.shutdown(false).unwrap();
    drop(node);

    let (node, report) = Node::open(dir.path(), config).unwrap();
    assert!(report.snapshot_lsn.is_some());
    assert_eq!((report.auctions_restored, report.pruned_restored), (1, 0));
    assert_eq!(report.state_hash, hash);
    assert_eq!(
        bid_on(&node, AuctionId(1)),
        BidOutcome::Rejected(Rejection::UnknownAuction)
    );
    node.create_auction(common::english(1, hour), now_micros())
        .unwrap();
    node.shutdown(false).unwrap();
}

/// The start-up replay runs on several threads, records grouped by auction: with prunes in
/// the log, any number of workers reaches the live state hash.
#[test]
fn parallel_replay_of_prunes_reaches_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let hour = UnixMicros(now_micros().0 + 3_600_000_000);
    let (node, _) = Node::open(dir.path(), config()).unwrap();
    for id in 0..40 {
        node.create_auction(common::english(id, hour), now_micros())
            .unwrap();
        if id % 2 == 0 {
            node.cancel_auction(AuctionId(id), now_micros()).unwrap();
        }
    }
    let later = UnixMicros(now_micros().0 + RETENTION_US);
    assert_eq!(node.prune_due(later, 8), 8, "a bounded round");
    assert_eq!(node.prune_due(later, usize::MAX), 12);
    assert_eq!((node.engine().len(), node.engine().pruned_len()), (20, 20));
    let live = node.engine().state_hash();
    node.shutdown(false).unwrap();
    drop(node);

    let wal_dir = dir.path().join(gavel_node::node::WAL_DIR);
    for workers in [1, 2, 8] {
        let (_wal, recovery) = Wal::open(&wal_dir, WalConfig::default()).unwrap();
        let engine = Engine::new(config().engine);
        let summary =
            replay_parallel(&engine, false, recovery.replay(1).unwrap(), workers).unwrap();
        assert!(summary.missing_tail.is_empty());
        assert_eq!(engine.state_hash(), live, "{workers} workers");
        assert_eq!(engine.pruned_len(), 20);
    }
}
