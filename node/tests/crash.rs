//! Crash test (issue 3, item 3): the `gavel` binary under bid load is killed with SIGKILL at
//! random moments, and what survives is checked against what it acknowledged.
//!
//! Each round spawns `gavel simulate` (durable, small snapshot interval, so snapshots and
//! their compaction run during the load) on a data directory, reads its durable-ack stream
//! (the hidden `--ack-log -`: one line per bid, written only once the log's durable LSN
//! reached the bid's receipt) from a pipe, and kills it with SIGKILL at a seeded random
//! moment: usually 20–400 ms after the first ack, sometimes 0–60 ms after the spawn (before
//! any ack, possibly during the child's own recovery). Some rounds start a fresh directory;
//! the others reuse the last one (restart → recovery of a crashed, maybe already recovered,
//! log → more load → kill), so recovery of recovered logs is exercised too. After each kill,
//! on a copy of the directory (the original is left as crashed for the next child):
//!
//! 1. the surviving log (read with `gavel_wal::records`, up to where a start would truncate a
//!    torn tail) holds LSNs exactly `1..=N`, no gap, nothing else wrong with it;
//! 2. every bid acknowledged durable — in this round or any earlier round on the directory —
//!    has LSN ≤ `N`, and its `BidAccepted` record (same auction, seq, bidder and bid id) is
//!    in the log at or before its receipt; after recovery the auction's seq is at least the
//!    acked seq, and the last acked bid of each auction is answered `Duplicate` with its
//!    seq (idempotency);
//! 3. a reference engine fed exactly the surviving records (decoded, through `Replayer`, no
//!    snapshot) has the state hash that `Node::open` — the code of `gavel recover`, which
//!    restores the latest snapshot and replays the tail — reports; the records beyond the
//!    last ack are complete decisions (the reference replay accepts them all), and if the log
//!    ends inside a decision, the node re-appended exactly the derived events the reference
//!    reports missing (`missing_tail`), after `N`.
//!
//! # What it can and cannot catch
//!
//! It catches anything that acknowledges a bid before its records reached the kernel: an ack
//! on accept or when the decision is queued to the log writer (injected by hand — printing
//! the ack line at acceptance instead of after the durable wait — it failed in round 0 for
//! the default seed and for each of 8 other seeds: "acknowledged durable at LSN x but the log
//! survived only to LSN x−1"), a durable LSN published before the `write`; and a recovery
//! that loses, gaps or mis-replays written records, a snapshot that holds what the log lacks
//! or disagrees with it, a torn-tail rule that truncates complete records.
//!
//! It cannot catch a missing or misplaced `fdatasync`: SIGKILL leaves the page cache intact,
//! so whatever was written survives a process kill, synced or not. With the WAL's
//! `sync_data` removed by hand, 40 rounds passed. Ack-before-fsync, a snapshot rename without
//! a directory fsync and the like need a power loss (a VM, a fault-injecting file system) or
//! the WAL's writer-hook tests. Likewise a batch is one `write(2)`, which a kill does not
//! split, so torn tails and decisions cut between two batches (`missing_tail`) practically
//! never happen here: the checks for them are in place, but the file fault-injection tests
//! are what exercise those paths. And with one 64 MiB segment per directory the snapshots'
//! compaction removes nothing, which is why the log can be read from LSN 1 (asserted).
//!
//! Rounds: 20 by default (about 15 s in debug); `GAVEL_CRASH_ROUNDS=500` runs more,
//! `GAVEL_CRASH_SEED=<n>` replays another schedule.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use gavel_node::node::WAL_DIR;
use gavel_node::{Node, NodeConfig};
use gavel_proto::convert::wal::decode_record;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use common::crash::{Ack, Reference, env_u64, kill_and_collect, spawn_loaded};

/// Rounds when `GAVEL_CRASH_ROUNDS` is not set.
const ROUNDS_DEFAULT: u64 = 20;
/// Seed when `GAVEL_CRASH_SEED` is not set.
const SEED_DEFAULT: u64 = 0x6761_7665_6c00;
/// Kill delay after the first ack, ms.
const KILL_AFTER_ACK_MS: std::ops::RangeInclusive<u64> = 20..=400;
/// Kill delay after the spawn in the rounds that kill before any ack, ms.
const KILL_EARLY_MS: std::ops::RangeInclusive<u64> = 0..=60;
/// Rounds on one directory at most before a fresh one (bounds the log, hence the round).
const CHAIN_ROUNDS_MAX: u32 = 3;

/// Runs one round's child on `dir` and kills it; returns the acks it wrote.
fn crash_round(dir: &Path, scratch: &Path, round: u64, rng: &mut SmallRng) -> Vec<Ack> {
    let snapshot_every = [200, 1_000, 5_000][rng.random_range(0..3)];
    let early = rng.random_bool(0.15);
    let delay = Duration::from_millis(if early {
        rng.random_range(KILL_EARLY_MS)
    } else {
        rng.random_range(KILL_AFTER_ACK_MS)
    });
    let stderr = scratch.join(format!("round-{round}.stderr"));
    let snapshot_every = snapshot_every.to_string();
    let mut loaded = spawn_loaded(
        dir,
        &stderr,
        rng.random(),
        &["--snapshot-every-records", &snapshot_every],
    );
    let mut early_acks = Vec::new();
    if !early {
        early_acks.push(loaded.first_ack(round));
    }
    thread::sleep(delay);
    early_acks.extend(kill_and_collect(loaded, round));
    early_acks
}

/// What one round's checks found, for the summary.
#[derive(Default, Debug)]
struct Found {
    records: u64,
    torn_tail: bool,
    from_snapshot: bool,
    missing_tail: usize,
    beyond_last_ack: u64,
    /// Retries of a last acknowledged bid that were checked to be duplicates.
    retries_checked: u64,
    /// Last acknowledged bids left unchecked: their auction moved on past the dedup window
    /// since (possible on a directory reused over several runs).
    retries_beyond_window: u64,
}

/// Copies the log of `dir` into a fresh data directory under `scratch`.
fn copy_data_dir(dir: &Path, to: &Path) {
    let (from, into) = (dir.join(WAL_DIR), to.join(WAL_DIR));
    std::fs::create_dir_all(&into).unwrap();
    if let Ok(entries) = std::fs::read_dir(&from) {
        for entry in entries {
            let path = entry.unwrap().path();
            std::fs::copy(&path, into.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// The checks after a kill, on a copy of `dir`. `acks`: every ack of every round on `dir`.
fn check_recovery(dir: &Path, copy: &Path, acks: &[Ack], round: u64) -> Found {
    let mut found = Found::default();
    copy_data_dir(dir, copy);
    let wal_dir = copy.join(WAL_DIR);
    if !wal_dir.join("00000000000000000001.wal").exists() {
        // Killed before the log was created: nothing may have been acknowledged.
        assert!(acks.is_empty(), "round {round}: acks but no log");
        return found;
    }

    // 1. The surviving records: what a start keeps (everything before a torn tail).
    let verify = gavel_wal::verify(&wal_dir).unwrap();
    assert!(
        verify.problem.is_none(),
        "round {round}: the crashed log has a problem a start would refuse: {:?}",
        verify.problem
    );
    found.torn_tail = verify.torn_tail.is_some();
    let n = verify.last_lsn;
    let mut expected_lsn = 0;
    let surviving = gavel_wal::records(&wal_dir, 1)
        .unwrap()
        .take(n as usize)
        .map(|record| {
            expected_lsn += 1;
            let record = record.unwrap_or_else(|e| {
                panic!("round {round}: reading record {expected_lsn} of 1..={n}: {e}")
            });
            assert_eq!(
                record.lsn, expected_lsn,
                "round {round}: the surviving LSNs have a gap (the log was compacted?)"
            );
            (record.lsn, record.payload)
        });
    let reference = Reference::replay(surviving, round);
    assert_eq!(
        expected_lsn, n,
        "round {round}: the log ends before LSN {n}"
    );
    found.records = n;

    // 2. Every acknowledged bid survived, at or before its receipt.
    let last_ack_lsn = acks.iter().map(|a| a.lsn).max().unwrap_or(0);
    for ack in acks {
        assert!(
            ack.lsn <= n,
            "round {round}: bid {} (auction {}, seq {}) was acknowledged durable at LSN {} but the log survived only to LSN {n}",
            ack.bid,
            ack.auction,
            ack.seq,
            ack.lsn
        );
        let lsn = reference.logged(ack, round);
        assert!(
            lsn <= ack.lsn,
            "round {round}: {ack:?} logged at LSN {lsn}, after its receipt"
        );
    }
    found.beyond_last_ack = n.saturating_sub(last_ack_lsn);

    // 3. The node's own recovery (snapshot + tail) agrees with the reference.
    let (node, report) = Node::open(
        copy,
        NodeConfig {
            snapshot_every_records: 0,
            snapshot_every_log_bytes: 0,
            ..NodeConfig::default()
        },
    )
    .unwrap_or_else(|e| panic!("round {round}: the crashed directory does not start: {e:#}"));
    found.from_snapshot = report.snapshot_lsn.is_some();
    found.missing_tail = report.missing_tail_appended;
    assert_eq!(
        gavel_node::hex(&report.state_hash),
        gavel_node::hex(&reference.engine.state_hash()),
        "round {round}: the recovered state hash (snapshot at {:?}) differs from the reference fed LSN 1..={n}",
        report.snapshot_lsn
    );
    assert_eq!(
        report.missing_tail_appended,
        reference.summary.missing_tail.len(),
        "round {round}: the node re-appended another number of missing derived events than the reference lacks"
    );
    assert_eq!(
        report.last_lsn,
        n + reference.summary.missing_tail.len() as u64,
        "round {round}"
    );
    (found.retries_checked, found.retries_beyond_window) =
        reference.check_recovered(node.engine(), acks, round);
    node.shutdown(false).unwrap();
    drop(node);

    // The re-appended tail is exactly the reference's missing events, after N.
    if !reference.summary.missing_tail.is_empty() {
        let appended: Vec<_> = gavel_wal::records(&wal_dir, n + 1)
            .unwrap()
            .map(|r| decode_record(&r.unwrap().payload).unwrap())
            .collect();
        assert_eq!(
            appended, reference.summary.missing_tail,
            "round {round}: the re-appended tail"
        );
    }
    found
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_bid_and_recovers_the_reference_state() {
    let rounds = env_u64("GAVEL_CRASH_ROUNDS", ROUNDS_DEFAULT);
    let seed = env_u64("GAVEL_CRASH_SEED", SEED_DEFAULT);
    let mut rng = SmallRng::seed_from_u64(seed);
    eprintln!("crash test: {rounds} rounds, seed {seed} (GAVEL_CRASH_SEED to repeat)");
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();

    let mut dir_index = 0;
    let mut dir = scratch.path().join("data-0");
    let mut chain = 0;
    let mut dir_acks: Vec<Ack> = Vec::new();
    let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut retries_checked = 0u64;
    for round in 0..rounds {
        if chain >= CHAIN_ROUNDS_MAX || (chain > 0 && rng.random_bool(0.4)) {
            let _ = std::fs::remove_dir_all(&dir);
            dir_index += 1;
            dir = scratch.path().join(format!("data-{dir_index}"));
            chain = 0;
            dir_acks.clear();
        }
        chain += 1;
        let acks = crash_round(&dir, scratch.path(), round, &mut rng);
        let round_acks = acks.len() as u64;
        dir_acks.extend(acks);
        let copy = scratch.path().join(format!("check-{round}"));
        let found = check_recovery(&dir, &copy, &dir_acks, round);
        std::fs::remove_dir_all(&copy).unwrap();
        totals.0 += round_acks;
        totals.1 += u64::from(found.from_snapshot);
        totals.2 += u64::from(found.torn_tail);
        totals.3 += u64::from(found.missing_tail > 0);
        totals.4 += u64::from(found.beyond_last_ack > 0);
        totals.5 += u64::from(chain > 1);
        totals.6 = totals.6.max(found.records);
        retries_checked += found.retries_checked;
        eprintln!(
            "round {round}: dir {dir_index} (run {chain}), {round_acks} acks, {found:?}, {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let (acks, snapshots, torn, missing, beyond, reused, records_max) = totals;
    eprintln!(
        "{rounds} rounds (seed {seed}) in {:.1} s: {acks} acks checked; recovered from a snapshot {snapshots}, torn tail {torn}, tail re-appended {missing}, unacknowledged records after the last ack {beyond}, on a reused directory {reused}; longest log {records_max} records",
        started.elapsed().as_secs_f64()
    );
    // The suite must exercise what it claims to (a default run always does; a tiny
    // GAVEL_CRASH_ROUNDS may not).
    if rounds >= ROUNDS_DEFAULT {
        assert!(acks > 0, "no ack was ever checked");
        assert!(retries_checked > 0, "no retry was ever checked");
        assert!(snapshots > 0, "no round recovered from a snapshot");
        assert!(reused > 0, "no round reused a directory");
    }
}
