//! Parallel replay at start-up: any number of workers reaches the state a sequential
//! replay reaches, and a bad record stops it with the record's LSN.

mod common;

use common::*;
use gavel_engine::{Engine, EngineConfig, Replayer};
use gavel_node::hex;
use gavel_node::node::WAL_DIR;
use gavel_node::replay::replay_parallel;
use gavel_proto::convert::wal::decode_record;
use gavel_proto::pb;
use gavel_wal::{Wal, WalConfig};
use prost::Message;

/// The state hash of a plain, one-thread replay of the whole log in `wal_dir`.
fn sequential_hash(wal_dir: &std::path::Path) -> String {
    let (_wal, recovery) = Wal::open(wal_dir, WalConfig::default()).unwrap();
    let engine = Engine::new(EngineConfig::default());
    let mut replayer = Replayer::new(&engine);
    for record in recovery.replay(1).unwrap() {
        let record = record.unwrap();
        replayer
            .apply(&decode_record(&record.payload).unwrap())
            .unwrap();
    }
    assert!(replayer.finish().missing_tail.is_empty());
    hex(&engine.state_hash())
}

/// The error of a parallel replay of the log in `wal_dir`, which must fail.
fn replay_error(wal_dir: &std::path::Path, workers: usize) -> String {
    let (_wal, recovery) = Wal::open(wal_dir, WalConfig::default()).unwrap();
    let engine = Engine::new(EngineConfig::default());
    let err = replay_parallel(&engine, false, recovery.replay(1).unwrap(), workers).unwrap_err();
    format!("{err:#}")
}

#[test]
fn any_number_of_workers_reaches_the_sequential_state() {
    let dir = tempfile::tempdir().unwrap();
    let run = simulate_small_with_snapshots(dir.path(), 0);
    let live_hash = value_of(&run, "state hash").to_owned();
    let wal_dir = dir.path().join(WAL_DIR);
    assert_eq!(sequential_hash(&wal_dir), live_hash);
    for workers in [1, 2, 3, 8] {
        let (_wal, recovery) = Wal::open(&wal_dir, WalConfig::default()).unwrap();
        let engine = Engine::new(EngineConfig::default());
        let summary =
            replay_parallel(&engine, false, recovery.replay(1).unwrap(), workers).unwrap();
        assert_eq!(summary.events, recovery.records(), "{workers} workers");
        assert!(summary.missing_tail.is_empty());
        assert_eq!(hex(&engine.state_hash()), live_hash, "{workers} workers");
    }
}

#[test]
fn a_bad_record_stops_replay_naming_its_lsn_whatever_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    simulate_small_with_snapshots(dir.path(), 0);
    let wal_dir = dir.path().join(WAL_DIR);
    let (wal, recovery) = Wal::open(&wal_dir, WalConfig::default()).unwrap();
    let records: Vec<_> = recovery.replay(1).unwrap().map(Result::unwrap).collect();
    // A record that decodes but did not happen: the first bid again with a new seq.
    let bid = records
        .iter()
        .map(|r| pb::Record::decode(r.payload.as_slice()).unwrap())
        .find(|r| matches!(r.kind, Some(pb::record::Kind::BidAccepted(_))))
        .unwrap();
    let forged = pb::Record {
        seq: bid.seq + 1_000_000,
        ..bid
    };
    let forged_lsn = wal.append(forged.encode_to_vec()).unwrap();
    // And garbage after it, which must not be what is reported (it comes later).
    let garbage_lsn = wal.append(b"\x08\x01\xff\xff").unwrap();
    wal.shutdown().unwrap();
    drop(wal);
    assert_eq!(
        Wal::open(&wal_dir, WalConfig::default())
            .unwrap()
            .1
            .last_lsn(),
        garbage_lsn
    );
    for workers in [1, 2, 4] {
        let text = replay_error(&wal_dir, workers);
        // The first bad record in log order is reported, whichever worker saw it.
        assert!(
            text.contains(&format!("LSN {forged_lsn}")),
            "{workers} workers: {text}"
        );
        assert!(
            !text.contains(&format!("LSN {garbage_lsn}")),
            "{workers} workers: {text}"
        );
    }
}

#[test]
fn the_first_bad_record_in_log_order_is_reported_when_a_batch_is_applied_by_auction() {
    let dir = tempfile::tempdir().unwrap();
    simulate_small_with_snapshots(dir.path(), 0);
    let wal_dir = dir.path().join(WAL_DIR);
    let (wal, recovery) = Wal::open(&wal_dir, WalConfig::default()).unwrap();
    let bids: Vec<pb::Record> = recovery
        .replay(1)
        .unwrap()
        .map(|r| pb::Record::decode(r.unwrap().payload.as_slice()).unwrap())
        .filter(|r| matches!(r.kind, Some(pb::record::Kind::BidAccepted(_))))
        .collect();
    let low = bids.iter().min_by_key(|r| r.auction_id).unwrap().clone();
    let high = bids.iter().max_by_key(|r| r.auction_id).unwrap().clone();
    assert!(low.auction_id < high.auction_id);
    // Two records that did not happen, the higher auction's first in the log: grouped by
    // auction, the lower auction's comes first, but the log's first is the one to report.
    let forge = |r: pb::Record| {
        pb::Record {
            seq: r.seq + 1_000_000,
            ..r
        }
        .encode_to_vec()
    };
    let first_lsn = wal.append(forge(high)).unwrap();
    let second_lsn = wal.append(forge(low)).unwrap();
    wal.shutdown().unwrap();
    drop(wal);
    for workers in [1, 2] {
        let text = replay_error(&wal_dir, workers);
        assert!(
            text.contains(&format!("LSN {first_lsn}")),
            "{workers} workers: {text}"
        );
        assert!(
            !text.contains(&format!("LSN {second_lsn}")),
            "{workers} workers: {text}"
        );
    }
}

#[test]
fn a_record_not_starting_with_its_auction_id_stops_replay() {
    let dir = tempfile::tempdir().unwrap();
    simulate_small_with_snapshots(dir.path(), 0);
    let wal_dir = dir.path().join(WAL_DIR);
    let (wal, recovery) = Wal::open(&wal_dir, WalConfig::default()).unwrap();
    let last = recovery.replay(1).unwrap().last().unwrap().unwrap();
    let record = pb::Record::decode(last.payload.as_slice()).unwrap();
    // Field 1 twice: protobuf keeps the last, so it decodes as `record`'s auction, but it
    // starts with another id (by which workers and batches are grouped).
    let mut payload = pb::Record {
        auction_id: record.auction_id + 1,
        seq: 0,
        at_us: 0,
        kind: None,
    }
    .encode_to_vec();
    payload.extend_from_slice(&last.payload);
    let lsn = wal.append(payload).unwrap();
    wal.shutdown().unwrap();
    drop(wal);
    for workers in [1, 2] {
        let text = replay_error(&wal_dir, workers);
        assert!(
            text.contains(&format!(
                "LSN {lsn} (auction {}) does not start with its auction id",
                record.auction_id
            )),
            "{workers} workers: {text}"
        );
    }
}
