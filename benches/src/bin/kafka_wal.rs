//! Bids/s through the Kafka write-ahead log and accepted → durable latency, beside a raw
//! rdkafka producer with the same settings and record sizes, in the same run against one
//! local broker on loopback (the ratio is the WAL's overhead, engine decisions included).
//!
//! - `tansu` (as the tests install it) is started on a free loopback port with in-memory
//!   storage, and stopped at the end.
//! - **Kafka log**: a [`Node`] on the topic (`KafkaConfig::default()`: idempotent, `acks=all`,
//!   `linger.ms` 1, 65,536 records in flight at most), 1,000 English auctions, one bidder
//!   thread placing raises round-robin as fast as the log admits (an `Overloaded` answer is
//!   retried after 50 µs and counted). Each accepted bid's latency runs from its acceptance
//!   until the bidder observes the durable LSN at or past its receipt (checked after every
//!   bid, so to within one bid's time). One accepted bid = one ≈ 100-byte record.
//! - **Raw**: a `ThreadedProducer` with the same librdkafka configuration
//!   (`KafkaConfig::producer_config`) on its own topic with as many partitions, sending the
//!   same number of ≈ 100-byte encoded accepted-bid records keyed by auction id and carrying
//!   the log's 8-byte owner-epoch header (the same records; `--raw-without-header` leaves it
//!   out, as this bench did before issue 20), with the same in-flight bound; latency from
//!   `send` to its delivery report (each record on its own, no contiguous-prefix rule).
//!
//! Bounded: `--records` (default 100,000) per side, and each side gives up after
//! `--seconds-max` (default 120). `--sides log` or `--sides raw` runs one side alone (to
//! profile it).
//!
//! Usage: `cargo run --release -p gavel-benches --bin kafka_wal -- [--records N]`.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use gavel_benches::process::{process_cpu_seconds, vm_steal_seconds};
use gavel_benches::wal_load::{accepted_bid_payloads, bidder16};
use gavel_benches::{INCREMENT, NOW, START_PRICE, bid, english_spec};
use gavel_engine::{AuctionId, BidOutcome, Rejection};
use gavel_node::{Node, NodeConfig};
use gavel_wal::kafka::{KafkaConfig, ensure_topic};
use hdrhistogram::Histogram;
use rdkafka::ClientContext;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;

/// Auctions bid on round-robin.
const AUCTIONS: u64 = 1_000;
/// Partitions of both topics.
const PARTITIONS: i32 = 8;
/// The header the log writes on every record (`gavel_wal::kafka`'s `EPOCH_HEADER`), and the
/// raw side's value for it.
const EPOCH_HEADER: &str = "gavel-epoch";
const RAW_EPOCH: u64 = 1;
/// Wait before retrying an `Overloaded` bid.
const OVERLOADED_SLEEP: Duration = Duration::from_micros(50);

#[derive(Parser, Debug)]
struct Args {
    /// Records (accepted bids) per side.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Longest run of one side, seconds.
    #[arg(long, default_value_t = 120)]
    seconds_max: u64,
    /// Offered rates, records/s; `max` = as fast as the in-flight bound admits. With a
    /// rate, record `i` is due at `start + i / rate` and its latency counts from then (no
    /// coordinated omission).
    #[arg(long, value_delimiter = ',', default_value = "20000,50000,max")]
    rates: Vec<String>,
    /// Which sides to run: `log`, `raw` or both (one side alone, e.g. to profile it).
    #[arg(long, value_delimiter = ',', default_value = "log,raw")]
    sides: Vec<String>,
    /// Raw records without the owner-epoch header the log writes on every record (by
    /// default the raw side sends it too: the same records).
    #[arg(long)]
    raw_without_header: bool,
}

/// When record `i` is due; `None`: as fast as possible.
fn due(start: Instant, rate: Option<u64>, i: u64) -> Option<Instant> {
    rate.map(|r| start + Duration::from_nanos(i * 1_000_000_000 / r))
}

/// Sleeps until `due` (if any); the instant the record's latency counts from.
fn pace(due: Option<Instant>) -> Instant {
    if let Some(due) = due {
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        due
    } else {
        Instant::now()
    }
}

/// A tansu broker on a free loopback port; killed on drop.
struct Broker(Child, SocketAddr);

impl Broker {
    fn start() -> Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let home = std::env::var_os("HOME").context("HOME")?;
        let tansu = PathBuf::from(home).join(".cargo/bin/tansu");
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (ops/test.sh installs it)", tansu.display()))?;
        let broker = Broker(child, SocketAddr::from(([127, 0, 0, 1], port)));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&broker.1, Duration::from_millis(200)).is_err() {
            ensure!(Instant::now() < deadline, "tansu did not start");
            thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// What one side measured.
struct Side {
    name: &'static str,
    records: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    overloaded: u64,
    cpu_s: f64,
    steal_s: f64,
}

impl Side {
    fn line(&self) -> String {
        let h = &self.latency_us;
        let rate = self.records as f64 / self.elapsed.as_secs_f64();
        format!(
            "| {} | {} | {:.2} s | {:.0}/s | {} | {} | {} | {} | {} | {} | {:.2} s | {:.2} s |",
            self.name,
            self.records,
            self.elapsed.as_secs_f64(),
            rate,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            self.overloaded,
            self.cpu_s,
            self.steal_s,
        )
    }
}

fn kafka_log(
    config: KafkaConfig,
    records: u64,
    seconds_max: u64,
    rate: Option<u64>,
) -> Result<Side> {
    let dir = tempfile::tempdir()?;
    let node_config = NodeConfig {
        kafka: Some(config),
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 0,
        ..NodeConfig::default()
    };
    let (node, _) = Node::open(dir.path(), node_config)?;
    let mut last = gavel_engine::Receipt::NONE;
    for id in 1..=AUCTIONS {
        last = node
            .create_auction(english_spec(AuctionId(id)), NOW)
            .map_err(|e| anyhow::anyhow!("creating auction {id}: {e:?}"))?;
    }
    node.wait_durable(last, Duration::from_secs(30))?;
    let (cpu0, steal0) = (process_cpu_seconds(), vm_steal_seconds());
    let deadline = Instant::now() + Duration::from_secs(seconds_max);
    let mut latency_us = histogram();
    // Sized for every record up front, as the raw side's send times are.
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::with_capacity(records as usize);
    let mut overloaded = 0;
    let started = Instant::now();
    let mut n = 0;
    let mut scheduled = None;
    while n < records {
        ensure!(
            Instant::now() < deadline,
            "the Kafka log side ran out of time"
        );
        // A retried bid keeps its schedule.
        let from = *scheduled.get_or_insert_with(|| pace(due(started, rate, n)));
        let auction = 1 + n % AUCTIONS;
        let amount = START_PRICE + INCREMENT * (1 + n / AUCTIONS);
        let b = bid(AuctionId(auction), bidder16(n), u128::from(n), amount);
        let decision = node.place_bid(&b, NOW);
        match (decision.outcome, decision.receipt) {
            (BidOutcome::Accepted(_), Some(receipt)) => {
                pending.push_back((receipt.0, from));
                scheduled = None;
                n += 1;
            }
            (BidOutcome::Rejected(Rejection::Overloaded { .. }), _) => {
                overloaded += 1;
                thread::sleep(OVERLOADED_SLEEP);
            }
            other => bail!("bid {n}: {other:?}"),
        }
        let durable = node.wal().durable_lsn();
        while pending.front().is_some_and(|(lsn, _)| *lsn <= durable) {
            let (_, at) = pending.pop_front().expect("checked");
            latency_us.saturating_record(at.elapsed().as_micros() as u64);
        }
    }
    while let Some((lsn, at)) = pending.pop_front() {
        node.wait_durable(gavel_engine::Receipt(lsn), Duration::from_secs(60))?;
        latency_us.saturating_record(at.elapsed().as_micros() as u64);
    }
    let elapsed = started.elapsed();
    let side = Side {
        name: "Kafka log (Node: engine + WalSink + KafkaLog)",
        records,
        elapsed,
        latency_us,
        overloaded,
        cpu_s: process_cpu_seconds() - cpu0,
        steal_s: vm_steal_seconds() - steal0,
    };
    node.shutdown(false)?;
    Ok(side)
}

/// Raw producer's delivery reports: latency from the send time stored by index.
struct Reports {
    sent_at_us: Vec<AtomicU64>,
    epoch: Instant,
    in_flight: AtomicUsize,
    failed: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

struct RawContext(Arc<Reports>);

impl ClientContext for RawContext {}

impl ProducerContext for RawContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let r = &self.0;
        let now = r.epoch.elapsed().as_micros() as u64;
        // Ordering: Relaxed — stored before the send, which librdkafka's queue orders.
        let sent = r.sent_at_us[index].load(Ordering::Relaxed);
        match result {
            Ok(message) if message.offset() >= 0 => {
                let mut h = r.latency_us.lock().expect("no panic under this lock");
                h.saturating_record(now.saturating_sub(sent));
            }
            _ => {
                r.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Ordering: Release pairs with the sender's Acquire load of the bound.
        r.in_flight.fetch_sub(1, Ordering::Release);
    }
}

fn raw(
    config: &KafkaConfig,
    records: u64,
    seconds_max: u64,
    rate: Option<u64>,
    header: bool,
) -> Result<Side> {
    ensure_topic(config)?;
    let payloads = accepted_bid_payloads(records as usize, 7);
    let reports = Arc::new(Reports {
        // One more: the warm-up record.
        sent_at_us: (0..=records).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
        in_flight: AtomicUsize::new(0),
        failed: AtomicU64::new(0),
        latency_us: Mutex::new(histogram()),
    });
    let producer: ThreadedProducer<RawContext> = config
        .producer_config()
        .create_with_context(RawContext(Arc::clone(&reports)))?;
    // Warm up as the node's producer is by then (its auctions' creations): the idempotent
    // producer's id and the connections, which take hundreds of ms the first time.
    reports.in_flight.fetch_add(1, Ordering::Relaxed);
    let warm_up = BaseRecord::with_opaque_to(&config.topic, records as usize)
        .key("0")
        .payload(payloads[0].as_slice());
    if let Err((e, _)) = producer.send(warm_up) {
        bail!("raw warm-up send: {e}");
    }
    producer
        .flush(Timeout::After(Duration::from_secs(30)))
        .context("the raw warm-up record")?;
    *reports.latency_us.lock().expect("no panic under this lock") = histogram();
    let (cpu0, steal0) = (process_cpu_seconds(), vm_steal_seconds());
    let deadline = Instant::now() + Duration::from_secs(seconds_max);
    let mut overloaded = 0;
    let started = Instant::now();
    for (i, payload) in payloads.iter().enumerate() {
        let from = pace(due(started, rate, i as u64));
        // Ordering: Acquire pairs with the reports' Release decrement.
        while reports.in_flight.load(Ordering::Acquire) >= config.queue_records_max {
            ensure!(Instant::now() < deadline, "the raw side ran out of time");
            overloaded += 1;
            thread::sleep(OVERLOADED_SLEEP);
        }
        let key = (1 + i as u64 % AUCTIONS).to_string();
        let from_us = from.saturating_duration_since(reports.epoch).as_micros() as u64;
        reports.sent_at_us[i].store(from_us, Ordering::Relaxed);
        reports.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut record = BaseRecord::with_opaque_to(&config.topic, i)
            .key(key.as_str())
            .payload(payload.as_slice());
        if header {
            // The log's owner-epoch header: 8 bytes, big-endian.
            record = record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: EPOCH_HEADER,
                value: Some(&RAW_EPOCH.to_be_bytes()),
            }));
        }
        if let Err((e, _)) = producer.send(record) {
            bail!("raw send {i}: {e}");
        }
    }
    producer
        .flush(Timeout::After(Duration::from_secs(60)))
        .context("flushing the raw producer")?;
    let elapsed = started.elapsed();
    ensure!(
        reports.failed.load(Ordering::Relaxed) == 0,
        "raw deliveries failed"
    );
    let latency_us = reports
        .latency_us
        .lock()
        .expect("no panic under this lock")
        .clone();
    Ok(Side {
        name: "raw rdkafka producer, same settings",
        records,
        elapsed,
        latency_us,
        overloaded,
        cpu_s: process_cpu_seconds() - cpu0,
        steal_s: vm_steal_seconds() - steal0,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let broker = Broker::start()?;
    let brokers = broker.1.to_string();
    let config = |topic: &str| KafkaConfig {
        brokers: brokers.clone(),
        topic: topic.to_owned(),
        partitions: PARTITIONS,
        ..KafkaConfig::default()
    };
    eprintln!(
        "kafka_wal: {} records per side, tansu on {brokers}, {PARTITIONS} partitions",
        args.records
    );
    println!(
        "| offered | side | records | time | records/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | waits on the bound | CPU | VM steal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (run, offered) in args.rates.iter().enumerate() {
        let rate = match offered.as_str() {
            "max" => None,
            r => Some(r.parse::<u64>().context("--rates: numbers or max")?),
        };
        let side = |name: &str| args.sides.iter().any(|s| s == name);
        let log = side("log")
            .then(|| {
                let config = config(&format!("bench-wal-{run}"));
                kafka_log(config, args.records, args.seconds_max, rate)
            })
            .transpose()?;
        let raw = side("raw")
            .then(|| {
                let config = config(&format!("bench-raw-{run}"));
                let header = !args.raw_without_header;
                raw(&config, args.records, args.seconds_max, rate, header)
            })
            .transpose()?;
        for s in log.iter().chain(&raw) {
            println!("| {offered} {}", s.line());
        }
        let (Some(log), Some(raw)) = (log, raw) else {
            continue;
        };
        let per_s = |s: &Side| s.records as f64 / s.elapsed.as_secs_f64();
        let q = |s: &Side, q| s.latency_us.value_at_quantile(q).max(1) as f64;
        eprintln!(
            "{offered}: throughput ratio (Kafka log / raw) {:.2}; latency ratio p50 {:.2}, p99 {:.2}",
            per_s(&log) / per_s(&raw),
            q(&log, 0.5) / q(&raw, 0.5),
            q(&log, 0.99) / q(&raw, 0.99),
        );
    }
    drop(broker);
    Ok(())
}
