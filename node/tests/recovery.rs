//! Start-up from a damaged data directory, across a process boundary: a torn tail is
//! truncated with a log line and the state recovered; a flipped bit in the middle of the
//! log stops the start with an error naming the segment and the offset; a start interrupted
//! (asked to stop during recovery) writes nothing past the torn tail's truncation.

mod common;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use common::*;
use gavel_node::{Node, NodeConfig};
use gavel_wal::Interrupt;

/// A simulated run's log (no snapshot) whose last record — the `Settled` of the last close
/// — is cut in the middle: its `Closed` survives, so replay re-derives the settlement and
/// appends it again. The run's final state hash, the last segment and the cut's offset.
fn log_cut_inside_a_decision(dir: &Path) -> (String, PathBuf, u64) {
    // No snapshot: one taken during the closes could hold the settlement cut below (it was
    // durable then; a crash cannot tear a synced record, only this test can), and recovery
    // would rightly find nothing missing.
    let run = simulate_small_with_snapshots(dir, 0);
    let final_hash = value_of(&run, "state hash").to_owned();
    let last = segments(dir).pop().unwrap();
    let (offset, len) = *record_spans(&last).last().unwrap();
    let file = OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(offset + len / 2).unwrap();
    (final_hash, last, offset)
}

#[test]
fn a_torn_tail_is_truncated_logged_and_the_decision_completed() {
    let dir = tempfile::tempdir().unwrap();
    let (final_hash, _, offset) = log_cut_inside_a_decision(dir.path());
    let data_dir = dir.path().to_str().unwrap();
    let (stdout, stderr) = gavel_ok(&["recover", data_dir]);
    assert!(stderr.contains("torn tail truncated"), "{stderr}");
    assert!(stderr.contains(&format!("offset={offset}")), "{stderr}");
    assert!(
        stderr.contains("appended its missing derived events"),
        "{stderr}"
    );
    assert!(stdout.contains("recovered 30 auctions"), "{stdout}");
    assert_eq!(value_of(&stdout, "state hash"), final_hash);

    // The log agrees with the state again: a second start finds nothing to repair.
    let (again, stderr) = gavel_ok(&["recover", data_dir]);
    assert!(!stderr.contains("torn tail"), "{stderr}");
    assert_eq!(value_of(&again, "state hash"), final_hash);
    gavel_ok(&["wal", "verify", data_dir]);
}

#[test]
fn a_flipped_bit_in_the_middle_refuses_to_start_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    simulate_small(dir.path());
    let segment = segments(dir.path()).pop().unwrap();
    let spans = record_spans(&segment);
    let (offset, _) = spans[spans.len() / 2];
    flip_payload_bit(&segment, offset);

    let data_dir = dir.path().to_str().unwrap();
    let name = segment.file_name().unwrap().to_str().unwrap();
    for args in [
        vec!["recover", data_dir],
        vec!["simulate", "--data-dir", data_dir, "--bids", "10"],
    ] {
        let (_, stderr) = gavel_fails(&args);
        assert!(stderr.contains(name), "{stderr}");
        assert!(
            stderr.contains("corrupt record in")
                && stderr.contains(&format!("at byte offset {offset}")),
            "{stderr}"
        );
    }
    // Refusing changed nothing: the damage is still there to inspect.
    assert_eq!(record_spans(&segment), spans);
}

#[test]
fn an_interrupted_start_writes_nothing_and_the_next_start_completes_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let (final_hash, last, offset) = log_cut_inside_a_decision(dir.path());
    let files_before = segments(dir.path());
    let interrupt = Interrupt::default();
    interrupt.interrupt();
    let config = NodeConfig {
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 0,
        ..NodeConfig::default()
    };
    let error = match Node::open_interruptible(dir.path(), config, &interrupt) {
        Ok(_) => panic!("an interrupted start must give up"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("interrupted: asked to stop during recovery"),
        "{error}"
    );
    // Only the torn tail went (as at every start): no missing event appended, no segment
    // compacted, no snapshot.
    assert_eq!(std::fs::metadata(&last).unwrap().len(), offset);
    assert_eq!(segments(dir.path()), files_before);
    let snapshots = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .contains("snap")
        })
        .count();
    assert_eq!(snapshots, 0);

    let (stdout, stderr) = gavel_ok(&["recover", dir.path().to_str().unwrap()]);
    assert!(
        stderr.contains("appended its missing derived events"),
        "{stderr}"
    );
    assert_eq!(value_of(&stdout, "state hash"), final_hash);
}
