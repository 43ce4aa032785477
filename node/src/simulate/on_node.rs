//! The durable venue: the engine inside a [`Node`], its events in the write-ahead log; the
//! `--ack-log` promised to a crash test; the recovery check at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use gavel_engine::{AuctionId, AuctionSpec, Engine, Receipt, Settlement, UnixMicros};
use gavel_wal::kafka::KafkaConfig;
use hdrhistogram::Histogram;

use crate::durable::WalSink;
use crate::node::{Node, NodeConfig, RecoveryReport};

use super::{
    DAY_US, DURABLE_WAIT_MAX, Day, DurableReport, OVERLOADED_SLEEP, Options, PendingAck, Report,
    Tally, Venue,
};

/// `--ack-log`: where durable acknowledgements are streamed, one flushed line each.
pub(super) struct AckLog {
    out: Mutex<Box<dyn Write + Send>>,
    /// A write failed (the reader went away): bidders stop.
    failed: AtomicBool,
}

impl AckLog {
    pub(super) fn open(path: &Path) -> Result<AckLog> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating the ack log {}", path.display()))?,
            )
        };
        Ok(AckLog {
            out: Mutex::new(out),
            failed: AtomicBool::new(false),
        })
    }

    /// Writes and flushes one line per released ack; false if the log failed.
    pub(super) fn write(&self, released: &[PendingAck]) -> bool {
        if released.is_empty() {
            return true;
        }
        let mut text = String::with_capacity(released.len() * 64);
        for ack in released {
            use std::fmt::Write as _;
            let _ = writeln!(
                text,
                "ack {} {} {} {} {}",
                ack.bid.auction(),
                ack.bid.bidder(),
                ack.bid.id().0,
                ack.seq,
                ack.lsn
            );
        }
        let mut out = self
            .out
            .lock()
            .expect("ack log mutex poisoned: nothing panics while holding it");
        let ok = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        drop(out);
        match ok {
            Ok(()) => true,
            Err(_) => {
                // Ordering: a flag read after the bidders joined.
                self.failed.store(true, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The durable mode: the simulation on a [`Node`] over `options.data_dir`.
pub(super) struct OnNode {
    node: Node,
    config: NodeConfig,
    recovered: RecoveryReport,
    ack_log: Option<AckLog>,
}

impl OnNode {
    pub(super) fn open(options: &Options) -> Result<OnNode> {
        let config = NodeConfig {
            snapshot_every_records: options.snapshot_every_records,
            kafka: options.kafka_brokers.as_ref().map(|brokers| KafkaConfig {
                brokers: brokers.clone(),
                topic: options.kafka_topic.clone(),
                writer_lease_ms: options.kafka_writer_lease_ms,
                ..KafkaConfig::default()
            }),
            ..NodeConfig::default()
        };
        let ack_log = options.ack_log.as_deref().map(AckLog::open).transpose()?;
        let (node, recovered) = Node::open(&options.data_dir, config.clone())
            .with_context(|| format!("starting on {}", options.data_dir.display()))?;
        Ok(OnNode {
            node,
            config,
            recovered,
            ack_log,
        })
    }

    /// This run's day: new auction ids after the recovered ones, and engine time after the
    /// latest end among them, so the log reads in time order.
    pub(super) fn day(&self, options: &Options) -> Result<Day> {
        let engine = self.node.engine();
        let auctions_max = engine.config().auctions_max as u64;
        ensure!(
            engine.len() as u64 + options.auctions <= auctions_max,
            "{} holds {} auctions; {} more would pass the limit of {auctions_max}: use another --data-dir",
            options.data_dir.display(),
            engine.len(),
            options.auctions
        );
        let mut first_auction = engine.len() as u64;
        while engine.auction_seq(AuctionId(first_auction)).is_some() {
            first_auction += 1;
        }
        let epoch = engine
            .snapshot()
            .iter()
            .map(|state| state.ends_at.0)
            .max()
            .map_or(0, |latest| latest + DAY_US);
        Ok(Day {
            first_auction,
            epoch,
        })
    }

    /// Stops the node, reopens the data directory to check the recovered state hash (unless
    /// `--no-verify`), and completes the report with the durable part.
    pub(super) fn finish(
        self,
        options: &Options,
        day: Day,
        mut report: Report,
        tallies: Vec<Tally>,
    ) -> Result<Report> {
        let wal = self.node.wal().metrics();
        let final_lsn = self.node.shutdown(false)?;
        drop(self.node);
        if !options.no_verify {
            let config = NodeConfig {
                snapshot_every_records: 0,
                snapshot_every_log_bytes: 0,
                ..self.config
            };
            let (reopened, recovered) = Node::open(&options.data_dir, config)
                .context("reopening the data directory to verify it")?;
            reopened.shutdown(false)?;
            report.replay_verified = Some(recovered.state_hash == report.state_hash);
        }
        report.events = final_lsn - self.recovered.last_lsn;
        let (durable_acks, ack_latency_us) = ack_latencies(tallies)?;
        report.durable = Some(DurableReport {
            data_dir: options.data_dir.clone(),
            recovered: self.recovered,
            first_auction: day.first_auction,
            durable_acks,
            ack_latency_us,
            wal,
            final_lsn,
        });
        Ok(report)
    }
}

/// The durable acks the desks observed, and their latency's p50, p99, p99.9 and max in µs.
pub(super) fn ack_latencies(tallies: Vec<Tally>) -> Result<(u64, Option<[u64; 4]>)> {
    let mut latency: Option<Histogram<u64>> = None;
    let mut durable_acks = 0;
    for tally in tallies {
        ensure!(!tally.stopped, "a bidder stopped early: the log failed");
        if let Some(acks) = tally.acks {
            durable_acks += acks.latency_us.len();
            match &mut latency {
                Some(all) => all
                    .add(&acks.latency_us)
                    .context("merging latency histograms")?,
                None => latency = Some(acks.latency_us),
            }
        }
    }
    let quantiles = latency.filter(|h| !h.is_empty()).map(|h| {
        [
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        ]
    });
    Ok((durable_acks, quantiles))
}

impl Venue for OnNode {
    type Sink = WalSink;

    fn engine(&self) -> &Engine {
        self.node.engine()
    }

    fn sink(&self) -> &WalSink {
        self.node.sink()
    }

    fn node(&self) -> Option<&Node> {
        Some(&self.node)
    }

    fn ack_log(&self) -> Option<&AckLog> {
        self.ack_log.as_ref()
    }

    fn create(&self, spec: AuctionSpec, now: UnixMicros) -> Result<()> {
        loop {
            match self.node.create_auction(spec.clone(), now) {
                Ok(_) => return Ok(()),
                Err(gavel_engine::CreateError::Overloaded { .. }) => {
                    if let Some(failure) = self.node.failure() {
                        bail!("the log failed: {failure}");
                    }
                    thread::sleep(OVERLOADED_SLEEP);
                }
                Err(e) => return Err(e).context("creating the demo auctions"),
            }
        }
    }

    fn drain_during<R: Send>(&self, bidding: impl FnOnce() -> R + Send) -> R {
        // The log's writer drains the sink.
        bidding()
    }

    fn after_bidding(&self) -> Result<()> {
        if let Some(failure) = self.node.failure() {
            bail!("the log failed during the run; nothing after it was acknowledged: {failure}");
        }
        // Ordering: read after the bidders joined.
        if self
            .ack_log
            .as_ref()
            .is_some_and(|l| l.failed.load(Ordering::Relaxed))
        {
            bail!("writing the ack log failed; the bidders stopped");
        }
        Ok(())
    }

    /// Settlements are final once durable: waits for the last close's receipt.
    fn close_all(&self, close_at: UnixMicros) -> Result<()> {
        let deadline = Instant::now() + DURABLE_WAIT_MAX;
        let mut last_close = Receipt::NONE;
        loop {
            let closed = self.node.close_due(close_at, 1_024);
            last_close = closed
                .iter()
                .map(|c| c.receipt)
                .fold(last_close, Receipt::max);
            if closed.is_empty() {
                // Nothing closed: done, unless the log refused some (back-pressure).
                if self.node.poll_timeout().is_none_or(|due| due > close_at) {
                    break;
                }
                if let Some(failure) = self.node.failure() {
                    bail!("the log failed while closing: {failure}");
                }
                ensure!(Instant::now() < deadline, "closing the auctions timed out");
                thread::sleep(OVERLOADED_SLEEP);
            }
        }
        self.node
            .wait_durable(last_close, DURABLE_WAIT_MAX)
            .context("waiting for the settlements to be durable")?;
        Ok(())
    }
}

/// The settlements of auctions `first..first + n`, by id.
pub(super) fn settlements_of(
    engine: &Engine,
    first: u64,
    n: u64,
    at: UnixMicros,
) -> BTreeMap<AuctionId, (String, Settlement)> {
    (first..first + n)
        .filter_map(|i| {
            let id = AuctionId(i);
            let view = engine.view(id, at)?;
            let settlement = view.settlement?;
            Some((
                id,
                (view.spec.rules().topic.as_str().to_owned(), settlement),
            ))
        })
        .collect()
}
