//! `gavel wal verify` and `gavel wal dump`: offline looks at a log directory. Neither changes
//! anything (a torn tail is reported, not truncated).
//!
//! Both take a data directory (whose log is in `wal/`) or the log directory itself; `dump`
//! starts at the log's first record (after compaction, the first one kept) unless `--from`
//! says otherwise; `dump --kafka <brokers> --topic <t>` reads a Kafka log's topic instead
//! (every partition from its beginning).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gavel_proto::convert::bid_id;
use gavel_proto::pb;
use gavel_proto::pb::record::Kind;
use gavel_wal::kafka::{KafkaConfig, KafkaRecords};
use gavel_wal::{Lsn, VerifyReport, WalError};
use prost::Message;

use crate::node::WAL_DIR;

/// Options of `gavel wal`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum WalCommand {
    /// Check every record and snapshot of a log; exits non-zero on any problem that would
    /// stop a start (a torn tail is reported but is not one: a start truncates it).
    Verify {
        /// A data directory (or its `wal/` directory).
        dir: PathBuf,
    },
    /// Print the log's records, one decoded line each: of a log directory, or of a Kafka
    /// topic with --kafka.
    Dump {
        /// A data directory (or its `wal/` directory).
        #[arg(required_unless_present = "kafka")]
        dir: Option<PathBuf>,
        /// Read the Kafka topic --topic on these brokers (host:port[,...]) instead; LSNs are
        /// then positions in read order, partition by partition interleaved.
        #[arg(long, value_name = "BROKERS", conflicts_with = "dir")]
        kafka: Option<String>,
        /// The Kafka topic, with --kafka.
        #[arg(long, default_value = "gavel-wal", requires = "kafka")]
        topic: String,
        /// First LSN to print; one below the log's first record (a snapshot compacted what
        /// came before) is refused. [default: the log's first record]
        #[arg(long, value_name = "LSN")]
        from: Option<Lsn>,
        /// Most records to print.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `gavel wal` command, printing to `out`.
pub fn run(command: &WalCommand, out: &mut impl std::io::Write) -> Result<()> {
    match command {
        WalCommand::Verify { dir } => {
            let dir = log_dir(dir);
            let report = gavel_wal::verify(&dir)
                .with_context(|| format!("verifying the log in {}", dir.display()))?;
            out.write_all(format_verify(&dir, &report).as_bytes())?;
            if let Some(problem) = &report.problem {
                bail!("the log in {} has a problem: {problem}", dir.display());
            }
            Ok(())
        }
        WalCommand::Dump {
            dir,
            kafka,
            topic,
            from,
            limit,
            json,
        } => {
            let records: Box<dyn Iterator<Item = Result<gavel_wal::Record, WalError>>> =
                match (dir, kafka) {
                    (_, Some(brokers)) => {
                        let config = KafkaConfig {
                            brokers: brokers.clone(),
                            topic: topic.clone(),
                            ..KafkaConfig::default()
                        };
                        let records = KafkaRecords::open(&config).with_context(|| {
                            format!("reading the Kafka topic {topic} on {brokers}")
                        })?;
                        let from = from.unwrap_or(0);
                        Box::new(
                            records.skip_while(move |r| r.as_ref().is_ok_and(|r| r.lsn < from)),
                        )
                    }
                    (Some(dir), None) => {
                        let dir = log_dir(dir);
                        let records = first_lsn(&dir)
                            .and_then(|first| gavel_wal::records(&dir, from.unwrap_or(first)))
                            .with_context(|| format!("reading the log in {}", dir.display()))?;
                        Box::new(records)
                    }
                    (None, None) => bail!("give a data directory or --kafka <brokers>"),
                };
            dump(records, *limit, *json, out)
        }
    }
}

/// The LSN of the first record a log directory holds (its first segment's): after a
/// snapshot compacted the log, later than 1. 1 for a log without segments.
fn first_lsn(dir: &Path) -> Result<Lsn, WalError> {
    let segments = gavel_wal::segment::list_segments(dir)?;
    Ok(segments.first().map_or(1, |segment| segment.first_lsn))
}

/// The log directory for a data directory or a log directory.
pub fn log_dir(dir: &Path) -> PathBuf {
    let inner = dir.join(WAL_DIR);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The verify report as text.
pub fn format_verify(dir: &Path, report: &VerifyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "log        {}", dir.display());
    format_segments(&mut s, report);
    format_snapshots(&mut s, report);
    match report.restore_from_lsn {
        Some(0) => {
            let _ = writeln!(s, "start      replays the log from its first record");
        }
        Some(lsn) => {
            let _ = writeln!(
                s,
                "start      restores the snapshot at LSN {lsn}, replays from LSN {}",
                lsn + 1
            );
        }
        None => {}
    }
    match &report.problem {
        None => {
            let _ = writeln!(s, "result     ok");
        }
        Some(problem) => {
            let _ = writeln!(s, "result     PROBLEM: {problem}");
        }
    }
    s
}

/// The segments, the records they hold and the torn tail.
fn format_segments(s: &mut String, report: &VerifyReport) {
    let _ = writeln!(s, "segments   {}", report.segments.len());
    for segment in &report.segments {
        let _ = writeln!(
            s,
            "  {}  first LSN {}  {} records  {} bytes",
            file_name(&segment.path),
            segment.first_lsn,
            segment.records,
            segment.bytes
        );
    }
    match report.first_lsn {
        Some(first) => {
            let _ = writeln!(
                s,
                "records    {} (LSN {first}..={})",
                report.records, report.last_lsn
            );
        }
        None => {
            let _ = writeln!(s, "records    0");
        }
    }
    match &report.torn_tail {
        Some(torn) => {
            let _ = writeln!(
                s,
                "torn tail  {} at byte offset {}: {} ({} bytes a start would truncate)",
                file_name(&torn.path),
                torn.offset,
                torn.reason,
                torn.bytes_removed
            );
        }
        None => {
            let _ = writeln!(s, "torn tail  none");
        }
    }
}

/// The snapshots and their state.
fn format_snapshots(s: &mut String, report: &VerifyReport) {
    let _ = writeln!(s, "snapshots  {}", report.snapshots.len());
    for snapshot in &report.snapshots {
        let status = match &snapshot.defect {
            None => "ok".to_owned(),
            Some(defect) => format!("CORRUPT: {defect}"),
        };
        let _ = writeln!(
            s,
            "  {}  LSN {}  {status}",
            file_name(&snapshot.path),
            snapshot.lsn
        );
    }
}

fn dump(
    records: impl Iterator<Item = Result<gavel_wal::Record, WalError>>,
    limit: Option<u64>,
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    for record in records.take(limit) {
        let record = record.context("reading the log")?;
        let decoded = pb::Record::decode(record.payload.as_slice()).with_context(|| {
            format!("the record at LSN {} is not a gavel.v1.Record", record.lsn)
        })?;
        let line = if json {
            serde_json::json!({ "lsn": record.lsn, "record": decoded }).to_string()
        } else {
            format_record(record.lsn, &decoded)
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// One record as a line for humans: LSN, auction, sequence, time, kind and its key fields.
pub fn format_record(lsn: Lsn, record: &pb::Record) -> String {
    let mut s = format!(
        "lsn={lsn} auction={} seq={} at_us={} ",
        record.auction_id, record.seq, record.at_us
    );
    let _ = match &record.kind {
        Some(Kind::Created(created)) => match &created.rules {
            Some(rules) => write!(
                s,
                "created topic={} kind={} starts_at_us={} ends_at_us={}",
                rules.topic,
                rules_kind(rules),
                rules.starts_at_us,
                rules.ends_at_us
            ),
            None => write!(s, "created (no rules)"),
        },
        Some(Kind::BidAccepted(b)) => {
            let _ = write!(
                s,
                "bid_accepted bidder={} bid={:#x} amount={}",
                b.bidder_id,
                bid_id(b.bid_id_hi, b.bid_id_lo).0,
                b.amount
            );
            if let Some(max) = b.max {
                let _ = write!(s, " max={max}");
            }
            let _ = write!(s, " price={}", b.price);
            if let Some(leader) = &b.leader {
                let _ = write!(s, " leader={leader}");
            }
            write!(s, " ends_at_us={}", b.ends_at_us)
        }
        Some(Kind::Extended(e)) => write!(
            s,
            "extended ends_at_us={} extensions={}",
            e.ends_at_us, e.extensions
        ),
        Some(Kind::Closed(c)) => write!(
            s,
            "closed reason={}",
            pb::CloseReason::try_from(c.reason).map_or_else(
                |_| format!("unknown({})", c.reason),
                |r| r.as_str_name().to_owned()
            )
        ),
        Some(Kind::Settled(settled)) => match &settled.winner {
            Some(w) => write!(
                s,
                "settled winner={} bid={:#x} price={}",
                w.bidder_id,
                bid_id(w.bid_id_hi, w.bid_id_lo).0,
                w.price
            ),
            None => write!(s, "settled no_winner"),
        },
        Some(Kind::Pruned(_)) => write!(s, "pruned"),
        Some(Kind::Forgotten(_)) => write!(s, "forgotten"),
        None => write!(s, "unknown kind"),
    };
    s
}

fn rules_kind(rules: &pb::AuctionRules) -> &'static str {
    use pb::auction_rules::Kind as RulesKind;
    match &rules.kind {
        Some(RulesKind::English(_)) => "english",
        Some(RulesKind::SealedFirstPrice(_)) => "sealed_first_price",
        Some(RulesKind::SealedSecondPrice(_)) => "sealed_second_price",
        Some(RulesKind::Dutch(_)) => "dutch",
        None => "none",
    }
}
