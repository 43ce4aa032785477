//! Shared helpers for the node's integration tests: running the built `gavel` binary, reading
//! values out of its report, and finding records in segment files.
#![allow(dead_code)]
// each test binary uses a subset
// Helpers shared by several test crates (each test file is one): `pub` is their interface.
#![allow(unreachable_pub)]

pub mod bidding;
pub mod cdp;
pub mod crash;
pub mod exercise;
pub mod https;
pub mod kafka;
pub mod serve;
pub mod served;
pub mod stream;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, IncrementTable, Topic, UnixMicros,
};
use gavel_wal::frame::HEADER_BYTES;

/// An English auction `id` (topic `test.lot-<id>`) starting at 100 ticks, open from time 0
/// until `ends_at`.
pub fn english(id: u64, ends_at: UnixMicros) -> AuctionSpec {
    AuctionSpec::try_from(AuctionRules {
        id: AuctionId(id),
        topic: Topic::new(&format!("test.lot-{id}")).unwrap(),
        kind: AuctionKind::English {
            start_price: 100,
            increments: IncrementTable::default(),
        },
        reserve: None,
        buy_now: None,
        starts_at: UnixMicros(0),
        ends_at,
        soft_close: None,
    })
    .unwrap()
}

/// Runs `gavel` with `args`; returns the output whatever the exit status.
pub fn gavel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("the gavel binary runs")
}

/// Runs `gavel` and expects success; returns (stdout, stderr).
pub fn gavel_ok(args: &[&str]) -> (String, String) {
    let out = gavel(args);
    let (stdout, stderr) = texts(&out);
    assert!(
        out.status.success(),
        "gavel {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Runs `gavel` and expects failure; returns (stdout, stderr).
pub fn gavel_fails(args: &[&str]) -> (String, String) {
    let out = gavel(args);
    let (stdout, stderr) = texts(&out);
    assert!(
        !out.status.success(),
        "gavel {args:?} should have failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small durable simulation on `dir`: 30 auctions, 4 000 bids (about 3 000 records),
/// snapshots every 500 records (so that several are taken whatever the scheduling). Returns
/// its stdout.
pub fn simulate_small(dir: &Path) -> String {
    simulate_small_with_snapshots(dir, 500)
}

/// [`simulate_small`] with snapshots every `snapshot_every_records` (0 = none).
pub fn simulate_small_with_snapshots(dir: &Path, snapshot_every_records: u64) -> String {
    let dir = dir.to_str().expect("a UTF-8 temp path");
    let snapshot_every_records = snapshot_every_records.to_string();
    gavel_ok(&[
        "simulate",
        "--data-dir",
        dir,
        "--auctions",
        "30",
        "--bids",
        "4000",
        "--threads",
        "2",
        "--snapshot-every-records",
        &snapshot_every_records,
        "--show",
        "0",
    ])
    .0
}

/// The value after `label` on the report line that starts with it (after indentation).
pub fn value_of<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"))
}

/// The segment files of a data directory's log, in order.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// `(offset, length)` of every record of a segment, from the length fields of the headers.
pub fn record_spans(segment: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(segment).unwrap();
    let mut spans = Vec::new();
    let mut at = 0usize;
    while at + HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let total = HEADER_BYTES + len;
        spans.push((at as u64, total as u64));
        at += total;
    }
    spans
}

/// Flips one bit in the payload of the record at `offset`.
pub fn flip_payload_bit(segment: &Path, offset: u64) {
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[offset as usize + HEADER_BYTES] ^= 0x10;
    std::fs::write(segment, bytes).unwrap();
}
