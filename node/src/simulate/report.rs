//! What a simulation run reports: the day's totals, and the durable part in durable mode.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use gavel_engine::{AuctionId, Settlement};
use gavel_wal::WalMetrics;

use crate::node::RecoveryReport;

/// What a simulation did.
#[derive(Debug)]
pub struct Report {
    /// Bid decisions made (retries after `Overloaded` included).
    pub decisions: u64,
    /// Wall time of the bidding phase.
    pub elapsed: Duration,
    /// Bids accepted.
    pub accepted: u64,
    /// Rejections by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Events the consumer received.
    pub events: u64,
    /// Every settlement, by auction id.
    pub settlements: BTreeMap<AuctionId, (String, Settlement)>,
    /// The engine's state hash at the end.
    pub state_hash: [u8; 32],
    /// Whether replaying the events reproduced the state hash (`None`: not checked).
    pub replay_verified: Option<bool>,
    /// What the durable mode did (`None`: in memory).
    pub durable: Option<DurableReport>,
    pub(super) show: usize,
}

/// What a durable run did beyond the simulation.
#[derive(Debug)]
pub struct DurableReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// What start-up recovered.
    pub recovered: RecoveryReport,
    /// The first auction id of this run (the ones before were recovered).
    pub first_auction: u64,
    /// Accepted bids whose durable acknowledgement was observed.
    pub durable_acks: u64,
    /// Durable-ack latency, µs: accepted → durable (p50, p99, p99.9, max).
    pub ack_latency_us: Option<[u64; 4]>,
    /// The log's counters at the end.
    pub wal: WalMetrics,
    /// Durable LSN after the final flush.
    pub final_lsn: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "gavel simulate")?;
        if let Some(durable) = &self.durable {
            durable.fmt_start(f, self.settlements.len() as u64)?;
        }
        writeln!(
            f,
            "  decisions      {} in {:.3} s = {:.0} decisions/s",
            self.decisions,
            secs,
            self.decisions as f64 / secs
        )?;
        writeln!(f, "  accepted       {}", self.accepted)?;
        for (reason, n) in &self.rejected {
            writeln!(f, "  rejected       {n} {reason}")?;
        }
        writeln!(f, "  events         {}", self.events)?;
        self.fmt_settlements(f)?;
        if let Some(durable) = &self.durable {
            durable.fmt_end(f)?;
        }
        writeln!(f, "  state hash     {}", crate::hex(&self.state_hash))?;
        let (verified, mismatch) = if self.durable.is_some() {
            (
                "data directory reopened: recovered state hash is the same",
                "MISMATCH: the reopened data directory has another state hash",
            )
        } else {
            (
                "events replayed into a fresh engine: same state hash",
                "MISMATCH: replayed state hash differs",
            )
        };
        match self.replay_verified {
            Some(true) => writeln!(f, "  replay         {verified}"),
            Some(false) => writeln!(f, "  replay         {mismatch}"),
            None => writeln!(f, "  replay         not verified (--no-verify)"),
        }
    }
}

impl Report {
    /// The settlement totals and the first `show` settlements.
    pub(super) fn fmt_settlements(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sold = self
            .settlements
            .values()
            .filter(|(_, s)| s.winner.is_some())
            .count();
        let revenue: u64 = self
            .settlements
            .values()
            .filter_map(|(_, s)| s.winner.map(|w| w.price))
            .sum();
        writeln!(
            f,
            "  settled        {} auctions: {sold} sold, {} unsold, revenue {revenue} ticks",
            self.settlements.len(),
            self.settlements.len() - sold
        )?;
        for (id, (topic, s)) in self.settlements.iter().take(self.show) {
            match s.winner {
                Some(w) => writeln!(
                    f,
                    "    #{id:<6} {topic:<28} won by {} at {} (bid {:#x})",
                    w.bidder, w.price, w.bid.0
                )?,
                None => writeln!(f, "    #{id:<6} {topic:<28} no winner")?,
            }
        }
        Ok(())
    }
}

impl DurableReport {
    /// What the start recovered and which auctions this run of `auctions` used.
    pub(super) fn fmt_start(&self, f: &mut fmt::Formatter<'_>, auctions: u64) -> fmt::Result {
        writeln!(f, "  data dir       {}", self.data_dir.display())?;
        writeln!(f, "  start          {}", self.recovered.summary())?;
        if let Some(torn) = &self.recovered.torn_tail {
            writeln!(
                f,
                "  torn tail      truncated {} bytes of {} at byte offset {}",
                torn.bytes_removed,
                torn.path.display(),
                torn.offset
            )?;
        }
        writeln!(
            f,
            "  recovered hash {}",
            crate::hex(&self.recovered.state_hash)
        )?;
        writeln!(
            f,
            "  this run       auctions #{}..#{}",
            self.first_auction,
            self.first_auction + auctions
        )
    }

    /// The durable acks' latency and the log's work.
    pub(super) fn fmt_end(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ack_latency_us {
            Some([p50, p99, p999, max]) => writeln!(
                f,
                "  durable acks   {} accepted bids acknowledged durable; latency p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs, max {max} µs",
                self.durable_acks
            )?,
            None => writeln!(f, "  durable acks   none")?,
        }
        let w = &self.wal;
        writeln!(
            f,
            "  wal            {} records in {} fdatasyncs ({:.1} records/sync, {:.0} µs/sync), {} refused by back-pressure, durable LSN {}",
            w.records_written_total,
            w.batches_synced_total,
            w.records_written_total as f64 / w.batches_synced_total.max(1) as f64,
            w.sync_latency_us_total as f64 / w.batches_synced_total.max(1) as f64,
            w.backpressure_total,
            self.final_lsn
        )
    }
}
