//! `gavel wal verify` and `gavel wal dump` on real data directories.

mod common;

use common::*;

#[test]
fn verify_reports_a_good_log_and_dump_prints_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let run = simulate_small(dir.path());
    let last_lsn: u64 = value_of(&run, "wal")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let data_dir = dir.path().to_str().unwrap();

    let (report, _) = gavel_ok(&["wal", "verify", data_dir]);
    assert_eq!(value_of(&report, "result"), "ok");
    assert_eq!(value_of(&report, "segments"), "1");
    assert_eq!(value_of(&report, "torn tail"), "none");
    assert_eq!(
        value_of(&report, "records"),
        format!("{last_lsn} (LSN 1..={last_lsn})")
    );
    assert!(
        value_of(&report, "start").starts_with("restores the snapshot at LSN"),
        "{report}"
    );

    let (dump, _) = gavel_ok(&["wal", "dump", data_dir, "--limit", "3"]);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 3, "{dump}");
    assert!(
        lines[0].starts_with(
            "lsn=1 auction=0 seq=1 at_us=0 created topic=demo.english.lot-0 kind=english"
        ),
        "{dump}"
    );
    assert!(lines[2].starts_with("lsn=3 auction=2 seq=1"), "{dump}");

    let (all, _) = gavel_ok(&["wal", "dump", data_dir]);
    assert_eq!(all.lines().count() as u64, last_lsn);
    assert!(all.contains(" bid_accepted bidder=sim-bidder-"), "{all}");
    assert!(
        all.contains(" closed reason=CLOSE_REASON_END_REACHED"),
        "{all}"
    );
    assert!(all.contains(" settled winner=sim-bidder-"), "{all}");

    let (json, _) = gavel_ok(&[
        "wal", "dump", data_dir, "--from", "31", "--limit", "2", "--json",
    ]);
    let values: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values.len(), 2);
    assert_eq!(values[0]["lsn"], 31);
    assert_eq!(values[1]["lsn"], 32);
    assert!(
        values[0]["record"]["bidAccepted"]["bidderId"].is_string(),
        "{json}"
    );
}

#[test]
fn verify_fails_on_a_damaged_log_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    simulate_small(dir.path());
    let segment = segments(dir.path()).pop().unwrap();
    let spans = record_spans(&segment);
    let (offset, _) = spans[spans.len() / 3];
    flip_payload_bit(&segment, offset);

    let data_dir = dir.path().to_str().unwrap();
    let (report, stderr) = gavel_fails(&["wal", "verify", data_dir]);
    let name = segment.file_name().unwrap().to_str().unwrap();
    let problem = value_of(&report, "result");
    assert!(
        problem.starts_with("PROBLEM: corrupt record in"),
        "{report}"
    );
    assert!(problem.contains(name), "{report}");
    assert!(
        problem.contains(&format!("at byte offset {offset}")),
        "{report}"
    );
    assert!(stderr.contains("has a problem"), "{stderr}");
    // Records before the damage still verify and are counted.
    assert!(
        value_of(&report, "records").starts_with(&format!("{} ", spans.len() / 3)),
        "{report}"
    );

    // Dump prints up to the damage, then fails naming it.
    let (dump, stderr) = gavel_fails(&["wal", "dump", data_dir]);
    assert_eq!(dump.lines().count(), spans.len() / 3);
    assert!(stderr.contains(name), "{stderr}");
}

/// A data directory whose log snapshots have compacted: small segments, bids in three rounds
/// with a snapshot after each of the first two (compaction keeps what the older of the two
/// kept snapshots needs, so the second one removes the first segments). Returns the log's
/// first and last LSN.
fn compacted_log(dir: &std::path::Path) -> (u64, u64) {
    use gavel_engine::{AuctionId, Bid, BidId, BidderId, UnixMicros};
    let config = gavel_node::NodeConfig {
        wal: gavel_wal::WalConfig {
            segment_bytes_max: 4 << 10,
            ..gavel_wal::WalConfig::default()
        },
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 0,
        ..gavel_node::NodeConfig::default()
    };
    let (node, _) = gavel_node::Node::open(dir, config).unwrap();
    node.create_auction(english(1, UnixMicros(1_000_000_000)), UnixMicros(0))
        .unwrap();
    for n in 1..=300_u64 {
        let bidder = BidderId::new(&format!("b{}", n % 2)).unwrap();
        let bid = Bid::new(
            AuctionId(1),
            bidder,
            BidId(n.into()),
            100 + 1_000 * n,
            None,
            UnixMicros(n),
        );
        let decision = node.place_bid(&bid.unwrap(), UnixMicros(n));
        let receipt = decision
            .receipt
            .unwrap_or_else(|| panic!("bid {n}: {:?}", decision.outcome));
        if n % 100 == 0 && n < 300 {
            // A snapshot covers what is durable.
            node.wait_durable(receipt, std::time::Duration::from_secs(5))
                .unwrap();
            node.snapshot_now()
                .unwrap()
                .expect("a snapshot of a non-empty log");
        }
    }
    let last = node.shutdown(false).unwrap();
    let report = gavel_wal::verify(dir.join("wal")).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);
    let first = report.first_lsn.unwrap();
    assert!(first > 1, "the log was compacted: it starts at LSN {first}");
    (first, last)
}

#[test]
fn dump_of_a_compacted_log_starts_at_its_first_record_and_refuses_an_earlier_from() {
    let dir = tempfile::tempdir().unwrap();
    let (first, last) = compacted_log(dir.path());
    let data_dir = dir.path().to_str().unwrap();

    // The README's command, as it is.
    let (dump, _) = gavel_ok(&["wal", "dump", data_dir, "--limit", "20"]);
    assert_eq!(dump.lines().count(), 20, "{dump}");
    assert!(dump.starts_with(&format!("lsn={first} ")), "{dump}");
    let (all, _) = gavel_ok(&["wal", "dump", data_dir]);
    assert_eq!(all.lines().count() as u64, last - first + 1);
    assert!(all.contains(&format!("\nlsn={last} ")), "{all}");

    // An explicit --from below the log's first record: refused, saying where it starts.
    for from in ["1", &(first - 1).to_string()] {
        let (out, stderr) = gavel_fails(&["wal", "dump", data_dir, "--from", from]);
        assert!(out.is_empty(), "{out}");
        assert!(
            stderr.contains(&format!(
                "records from LSN {from} were asked for, but the log starts at LSN {first}"
            )),
            "{stderr}"
        );
    }
    let (from_first, _) = gavel_ok(&["wal", "dump", data_dir, "--from", &first.to_string()]);
    assert_eq!(from_first, all);
}
