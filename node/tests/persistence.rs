//! `gavel simulate` on a data directory persists: a second run (another process) recovers
//! exactly the state the first one ended with, and continues with new auctions.

mod common;

use common::*;

#[test]
fn a_second_run_recovers_the_first_runs_state_and_adds_new_auctions() {
    let dir = tempfile::tempdir().unwrap();
    let first = simulate_small(dir.path());
    assert!(first.contains("recovered 0 auctions"), "{first}");
    assert_eq!(value_of(&first, "this run"), "auctions #0..#30");
    assert!(
        first.contains("data directory reopened: recovered state hash is the same"),
        "{first}"
    );
    let first_hash = value_of(&first, "state hash").to_owned();

    let second = simulate_small(dir.path());
    assert!(second.contains("recovered 30 auctions"), "{second}");
    assert!(second.contains("snapshot at LSN"), "{second}");
    assert_eq!(value_of(&second, "recovered hash"), first_hash);
    assert_eq!(value_of(&second, "this run"), "auctions #30..#60");
    assert!(second.contains("settled        30 auctions"), "{second}");

    // `gavel recover` sees what the second run ended with.
    let (recovered, _) = gavel_ok(&["recover", dir.path().to_str().unwrap()]);
    assert!(recovered.contains("recovered 60 auctions"), "{recovered}");
    assert_eq!(
        value_of(&recovered, "state hash"),
        value_of(&second, "state hash")
    );
}

#[test]
fn in_memory_runs_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args([
            "simulate",
            "--in-memory",
            "--auctions",
            "10",
            "--bids",
            "1000",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("events replayed into a fresh engine"),
        "{stdout}"
    );
    assert!(!stdout.contains("data dir"), "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
