//! Start-up from a data directory with a segment or a snapshot damaged, through the node's
//! library API: a missing segment refuses to start, naming the files around the gap; a corrupt
//! newest snapshot falls back to the previous one (the log still covers it) with the same
//! state; two corrupt snapshots refuse, naming the file.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gavel_engine::{AuctionId, AuctionSpec, Bid, BidId, BidOutcome, BidderId, UnixMicros};
use gavel_node::{Node, NodeConfig};
use gavel_wal::WalConfig;

const WAIT: Duration = Duration::from_secs(5);

fn config() -> NodeConfig {
    NodeConfig {
        wal: WalConfig {
            // Small segments, so a short run spans several.
            segment_bytes_max: 4_096,
            ..WalConfig::default()
        },
        // Snapshots only when the test asks.
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 0,
        ..NodeConfig::default()
    }
}

fn english(id: u64) -> AuctionSpec {
    common::english(id, UnixMicros(1_000_000_000))
}

/// Places `count` rising bids from `first` on, spread over 3 auctions, and waits until the
/// last is durable.
fn bids(node: &Node, first: u64, count: u64) {
    let mut last = None;
    for n in first..first + count {
        let bid = Bid::new(
            AuctionId(n % 3),
            BidderId::new(&format!("b{}", n % 5)).unwrap(),
            BidId(u128::from(n) + 1),
            100 + 10 * (n + 1),
            None,
            UnixMicros(n),
        )
        .unwrap();
        let decision = node.place_bid(&bid, UnixMicros(n));
        match (decision.outcome, decision.receipt) {
            (BidOutcome::Accepted(_), receipt) => last = receipt,
            other => panic!("bid {n}: {other:?}"),
        }
    }
    node.wait_durable(last.unwrap(), WAIT).unwrap();
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

fn flip_last_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

/// A node with 3 auctions and `count` bids, shut down cleanly; returns its state hash.
fn populated(dir: &Path, count: u64) -> [u8; 32] {
    let (node, _) = Node::open(dir, config()).unwrap();
    for id in 0..3 {
        let receipt = node.create_auction(english(id), UnixMicros(0)).unwrap();
        node.wait_durable(receipt, WAIT).unwrap();
    }
    bids(&node, 0, count);
    let hash = node.engine().state_hash();
    node.shutdown(false).unwrap();
    hash
}

#[test]
fn a_missing_middle_segment_refuses_to_start_naming_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), 300);
    let segments = files(dir.path(), ".wal");
    assert!(
        segments.len() >= 3,
        "the run spans several segments: {segments:?}"
    );
    let middle = &segments[segments.len() / 2];
    std::fs::remove_file(middle).unwrap();

    let error = match Node::open(dir.path(), config()) {
        Ok(_) => panic!("a start with a gap must fail"),
        Err(error) => error,
    };
    let message = format!("{error:#}");
    let before = segments[segments.len() / 2 - 1]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let after = segments[segments.len() / 2 + 1]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        message.contains(&before) && message.contains(&after),
        "{message}"
    );
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), config()).unwrap();
    for id in 0..3 {
        let receipt = node.create_auction(english(id), UnixMicros(0)).unwrap();
        node.wait_durable(receipt, WAIT).unwrap();
    }
    bids(&node, 0, 100);
    node.snapshot_now().unwrap().expect("a first snapshot");
    bids(&node, 100, 100);
    node.snapshot_now().unwrap().expect("a second snapshot");
    bids(&node, 200, 100);
    let hash = node.engine().state_hash();
    node.shutdown(false).unwrap();

    let snapshots = files(dir.path(), ".snap");
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    flip_last_byte(&snapshots[1]);
    let (node, report) =
        Node::open(dir.path(), config()).expect("falls back to the older snapshot");
    assert_eq!(node.engine().state_hash(), hash, "{}", report.summary());
    node.shutdown(false).unwrap();

    // With both corrupt there is nothing to fall back to: refuse, naming a file.
    flip_last_byte(&snapshots[0]);
    let error = match Node::open(dir.path(), config()) {
        Ok(_) => panic!("two corrupt snapshots must refuse"),
        Err(error) => error,
    };
    let message = format!("{error:#}");
    let named = snapshots
        .iter()
        .any(|s| message.contains(&*s.file_name().unwrap().to_string_lossy()));
    assert!(named, "{message}");
}
