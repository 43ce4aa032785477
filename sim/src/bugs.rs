//! The hand-injected bugs of the fault matrix (feature `sim-bugs`): each names the switch in
//! the engine or the log that turns it on and the fault of the simulation that exposes it.
//! `tests/matrix.rs` turns each on in turn and requires a seed of the CI block to fail.

use std::sync::atomic::{AtomicBool, Ordering};

/// One injected bug.
#[derive(Debug)]
pub struct Bug {
    /// Its name (`--bug NAME`).
    pub name: &'static str,
    /// What it breaks, and the fault of the simulation that exposes it.
    pub fault: &'static str,
    switch: &'static AtomicBool,
}

impl Bug {
    /// Turns the bug on or off (process-wide: one bug at a time, on one thread).
    pub fn set(&self, on: bool) {
        // Ordering: Relaxed; the runs that read it start after this on the same thread
        // (the log's writer thread is spawned after it, which orders it too).
        self.switch.store(on, Ordering::Relaxed);
    }
}

/// Every injected bug.
pub static ALL: [Bug; 8] = [
    Bug {
        name: "ack_without_fsync",
        fault: "log: a batch is acknowledged durable after its write, without fdatasync — \
                exposed by unsynced writes lost at a crash",
        switch: &gavel_wal::sim_bugs::ACK_WITHOUT_FSYNC,
    },
    Bug {
        name: "skip_crc_last_record",
        fault: "log: recovery skips the CRC of a segment's last record — exposed by torn and \
                reordered writes at a crash (and bit flips)",
        switch: &gavel_wal::sim_bugs::SKIP_CRC_LAST_RECORD,
    },
    Bug {
        name: "truncate_middle_corruption",
        fault: "log: recovery truncates corruption that a later batch follows instead of \
                refusing — exposed by bit flips",
        switch: &gavel_wal::sim_bugs::TRUNCATE_MIDDLE_CORRUPTION,
    },
    Bug {
        name: "snapshot_skip_crc",
        fault: "log: a snapshot is restored without checking its CRC — exposed by a bit flip \
                in a snapshot",
        switch: &gavel_wal::sim_bugs::SNAPSHOT_SKIP_CRC,
    },
    Bug {
        name: "ignore_write_error",
        fault: "log: a failed write is ignored and the batch synced and acknowledged — exposed \
                by a full disk",
        switch: &gavel_wal::sim_bugs::IGNORE_WRITE_ERROR,
    },
    Bug {
        name: "extension_twice",
        fault: "engine: soft close moves the end twice as far — exposed by the clock (bids in \
                the closing window, closes)",
        switch: &gavel_engine::sim_bugs::EXTENSION_TWICE,
    },
    Bug {
        name: "accept_at_end",
        fault: "engine: a bid at exactly the end is accepted — exposed by bids racing closes \
                (the clock moved to an auction's end, by a step or a slow fsync)",
        switch: &gavel_engine::sim_bugs::ACCEPT_AT_END,
    },
    Bug {
        name: "forget_dedup_on_snapshot",
        fault: "engine: a snapshot drops the idempotency memory — exposed by retries and \
                duplicate copies after a crash and a restore from a snapshot",
        switch: &gavel_engine::sim_bugs::FORGET_DEDUP_ON_SNAPSHOT,
    },
];

/// The bug named `name`.
pub fn find(name: &str) -> Option<&'static Bug> {
    ALL.iter().find(|b| b.name == name)
}
