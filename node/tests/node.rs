//! The durable engine through its library API: snapshots with compaction and recovery from
//! snapshot + tail; a failing log refuses every decision and acknowledges nothing durable.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gavel_engine::{
    AuctionId, AuctionSpec, Bid, BidDecision, BidId, BidOutcome, BidderId, Receipt, Rejection,
    UnixMicros,
};
use gavel_node::durable::FAILED_RETRY_AFTER_US;
use gavel_node::{Node, NodeConfig};
use gavel_wal::{Lsn, WaitError, WalConfig, WriterHooks};

const SECOND: Duration = Duration::from_secs(5);

fn english(id: u64) -> AuctionSpec {
    common::english(id, UnixMicros(1_000_000_000))
}

/// Places bid `n` on auction `n % auctions`, each above the last, and returns its receipt.
fn bid(node: &Node, auctions: u64, n: u64) -> Receipt {
    let id = AuctionId(n % auctions);
    let bidder = BidderId::new(&format!("b{}", n % 7)).unwrap();
    let amount = 100 + 1_000 * (n / auctions + 1);
    let bid = Bid::new(
        id,
        bidder,
        BidId(u128::from(n) + 1),
        amount,
        None,
        UnixMicros(n),
    )
    .unwrap();
    let decision = node.place_bid(&bid, UnixMicros(n));
    match (decision.outcome, decision.receipt) {
        (BidOutcome::Accepted(_), Some(receipt)) => receipt,
        other => panic!("bid {n}: {other:?}"),
    }
}

fn snapshot_files(node_dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    names.sort();
    names
}

#[test]
fn snapshots_compact_the_log_and_recovery_from_snapshot_and_tail_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        wal: WalConfig {
            segment_bytes_max: 8 << 10,
            ..WalConfig::default()
        },
        snapshot_every_records: 400,
        ..NodeConfig::default()
    };
    let (node, report) = Node::open(dir.path(), config.clone()).unwrap();
    assert_eq!((report.auctions, report.snapshot_lsn), (0, None));
    const AUCTIONS: u64 = 20;
    for id in 0..AUCTIONS {
        node.create_auction(english(id), UnixMicros(0)).unwrap();
    }
    // Bids in rounds; the background thread snapshots every 400 records.
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshot_files(dir.path()).len() < 2 || n < 2_000 {
        assert!(Instant::now() < deadline, "no snapshots were taken");
        for _ in 0..200 {
            let receipt = bid(&node, AUCTIONS, n);
            n += 1;
            if n % 50 == 0 {
                node.wait_durable(receipt, SECOND).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A tail after the last snapshot.
    let mut last = Receipt::NONE;
    for _ in 0..123 {
        last = bid(&node, AUCTIONS, n);
        n += 1;
    }
    node.wait_durable(last, SECOND).unwrap();
    let hash = node.engine().state_hash();
    node.shutdown(false).unwrap();
    drop(node);

    // Compaction kept at most two snapshots and removed the first segments.
    let snapshots = snapshot_files(dir.path());
    assert!((1..=2).contains(&snapshots.len()), "{snapshots:?}");
    let report = gavel_wal::verify(dir.path().join("wal")).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);
    let first_lsn = report.first_lsn.unwrap();
    assert!(
        first_lsn > 1,
        "the log was compacted: starts at {first_lsn}"
    );

    let (node, recovered) = Node::open(dir.path(), config).unwrap();
    let snapshot_lsn = recovered.snapshot_lsn.expect("restored from a snapshot");
    assert!(snapshot_lsn >= first_lsn - 1);
    assert_eq!(recovered.auctions_restored, AUCTIONS as usize);
    assert!(recovered.records_replayed() >= 123, "{recovered:?}");
    assert_eq!(recovered.last_lsn, last.0);
    assert_eq!(recovered.state_hash, hash);
    assert_eq!(node.engine().state_hash(), hash);
    // The recovered node goes on where the log ended.
    let next = bid(&node, AUCTIONS, n);
    assert_eq!(next, Receipt(last.0 + 1));
    node.shutdown(true).unwrap();
}

/// Bids on `auctions` (up to `records_max` bids) until a snapshot file appears; returns the
/// bids placed.
fn bid_until_snapshot(node: &Node, dir: &std::path::Path, auctions: u64, records_max: u64) -> u64 {
    let mut n = 0;
    while n < records_max && snapshot_files(dir).is_empty() {
        let receipt = bid(node, auctions, n);
        n += 1;
        if n % 100 == 0 {
            node.wait_durable(receipt, SECOND).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    n
}

#[test]
fn snapshots_are_taken_by_log_bytes_and_never_with_both_rules_off() {
    // Records never trigger (0); 20 kB of log does: about 200 bid records of ≈ 100 bytes.
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 20_000,
        ..NodeConfig::default()
    };
    let (node, _) = Node::open(dir.path(), config.clone()).unwrap();
    for id in 0..5 {
        node.create_auction(english(id), UnixMicros(0)).unwrap();
    }
    let n = bid_until_snapshot(&node, dir.path(), 5, 20_000);
    assert!(
        !snapshot_files(dir.path()).is_empty(),
        "no snapshot after {n} bids"
    );
    assert!(
        n >= 100,
        "a snapshot after only {n} bids: before 20 kB of log"
    );
    assert!(node.sink().appended_log_bytes() >= 20_000);
    let hash = node.engine().state_hash();
    node.shutdown(false).unwrap();
    drop(node);
    let (node, recovered) = Node::open(dir.path(), config).unwrap();
    assert!(recovered.snapshot_lsn.is_some());
    assert_eq!(
        recovered.state_hash, hash,
        "snapshot + tail = the live state"
    );
    node.shutdown(false).unwrap();

    // Both rules off: no snapshot however much is appended.
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 0,
        ..NodeConfig::default()
    };
    let (node, _) = Node::open(dir.path(), config).unwrap();
    for id in 0..5 {
        node.create_auction(english(id), UnixMicros(0)).unwrap();
    }
    let n = bid_until_snapshot(&node, dir.path(), 5, 2_000);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        snapshot_files(dir.path()).is_empty(),
        "a snapshot after {n} bids"
    );
    node.shutdown(false).unwrap();
}

#[test]
fn snapshots_taken_during_concurrent_creations_and_bids_recover_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        wal: WalConfig {
            segment_bytes_max: 16 << 10,
            ..WalConfig::default()
        },
        // Snapshots are taken by hand below, as fast as they go.
        snapshot_every_records: 0,
        ..NodeConfig::default()
    };
    let (node, _) = Node::open(dir.path(), config.clone()).unwrap();
    node.create_auction(english(0), UnixMicros(0)).unwrap();
    let created = AtomicU64::new(1);
    let stop = AtomicBool::new(false);
    let mut snapshots = 0;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for id in 1..200 {
                node.create_auction(english(id), UnixMicros(0)).unwrap();
                created.store(id + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        for t in 0..2u64 {
            let (node, created, stop) = (&node, &created, &stop);
            scope.spawn(move || {
                let bidder = BidderId::new(&format!("t{t}")).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = AuctionId((n * 7 + t) % created.load(Ordering::SeqCst));
                    let price = node.engine().price(id).and_then(|(p, _)| p).unwrap_or(100);
                    let bid = Bid::new(
                        id,
                        bidder,
                        BidId(u128::from(t) << 64 | u128::from(n)),
                        price + 10_000,
                        None,
                        UnixMicros(n),
                    )
                    .unwrap();
                    // Accepted or too low (the other thread got there first): both fine.
                    let _ = node.place_bid(&bid, UnixMicros(n));
                }
            });
        }
        let deadline = Instant::now() + Duration::from_millis(800);
        while Instant::now() < deadline {
            if node.snapshot_now().unwrap().is_some() {
                snapshots += 1;
            }
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(snapshots >= 3, "only {snapshots} snapshots");
    let last = node.wal().last_appended_lsn();
    node.wait_durable(Receipt(last), SECOND).unwrap();
    let hash = node.engine().state_hash();
    let auctions = node.engine().len();
    node.shutdown(false).unwrap();
    drop(node);

    let (node, recovered) = Node::open(dir.path(), config).unwrap();
    assert!(recovered.snapshot_lsn.is_some());
    assert_eq!(recovered.auctions, auctions);
    assert_eq!(recovered.state_hash, hash, "{recovered:?}");
    node.shutdown(false).unwrap();
}

/// Fails every write batch once armed.
#[derive(Default)]
struct FailingDisk {
    armed: AtomicBool,
}

impl WriterHooks for FailingDisk {
    fn before_sync(&self, _last: Lsn) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}

#[test]
fn a_failing_log_refuses_decisions_and_acknowledges_nothing_durable() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FailingDisk::default());
    let (node, _) = Node::open_with_hooks(dir.path(), NodeConfig::default(), disk.clone()).unwrap();
    let created = node.create_auction(english(0), UnixMicros(0)).unwrap();
    node.wait_durable(created, SECOND).unwrap();
    assert_eq!(node.failure(), None);

    disk.armed.store(true, Ordering::SeqCst);
    // Accepted in memory (its record was queued), but its fsync fails: never durable.
    let receipt = bid(&node, 1, 0);
    assert_eq!(
        node.wait_durable(receipt, SECOND),
        Err(WaitError::Failed { durable: created.0 })
    );
    assert!(!node.is_durable(receipt));
    let failure = node.failure().expect("the node knows it must stop");
    assert!(failure.contains("injected fsync failure"), "{failure}");

    // Every later decision is refused: nothing more is accepted on a failed log.
    let bidder = BidderId::new("late").unwrap();
    let late = Bid::new(
        AuctionId(0),
        bidder,
        BidId(99),
        1_000_000,
        None,
        UnixMicros(9),
    )
    .unwrap();
    assert_eq!(
        node.place_bid(&late, UnixMicros(9)),
        BidDecision::rejected(Rejection::Overloaded {
            retry_after_us: FAILED_RETRY_AFTER_US
        })
    );
    assert!(node.create_auction(english(1), UnixMicros(9)).is_err());
    assert_eq!(node.wal().durable_lsn(), created.0);
    assert!(
        node.shutdown(false).is_err(),
        "shutdown reports the failure"
    );
}
