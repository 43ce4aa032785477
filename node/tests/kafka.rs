//! The Kafka write-ahead log against a real Kafka-protocol broker (`tansu`, started per test
//! on a free loopback port by `common::kafka::Broker`, killed when the test ends):
//!
//! - every bid acknowledged durable is in the topic and a fresh node that replays the topic
//!   (every partition from the beginning, records of 2 bidding threads interleaved over 3
//!   partitions) reaches the live node's state hash; `gavel wal dump --kafka` lists them;
//! - with the broker gone mid-run, the bounded in-flight queue turns bids into `Overloaded`
//!   within a second, nothing is acknowledged durable, and the failed delivery reports fail
//!   the log;
//! - with a durable broker (sqlite storage) stopped mid-load and started again: while it is
//!   down bids beyond the in-flight bound get `Overloaded` within a second and nothing is
//!   acknowledged durable; once it is back the backlog drains, every bid accepted in the
//!   outage becomes durable, and a fresh node replays the topic to the live state hash;
//! - an unreachable broker fails the start within the bounded wait, naming the address;
//! - a producer setting that would allow reordering or loss is refused at start;
//! - `gavel simulate` on the topic under load, SIGKILLed at seeded random moments and
//!   restarted on the same topic: every bid it acknowledged durable is in the topic, and a
//!   node that starts from the newest snapshot (recording the partitions' offsets) and the
//!   topic after it reaches the state hash of a reference engine fed exactly the records in
//!   it;
//! - one node writes a topic: a second is refused, naming the holder of the writer lease and
//!   when it lapses, once it saw the first renew it, and starts at once after the first shut
//!   down; a successor started just after the holder was SIGKILLed right after a heartbeat
//!   waits out the lease (longer than its connect timeout), takes over and replays every
//!   acknowledged bid; a node that cannot renew its lease (broker gone) stops acknowledging;
//! - pausing a partition while 2 threads bid on it and others (appends claim their LSNs
//!   without a lock, a sender thread produces them): no record of the paused partition gets
//!   an LSN above the one `pause` returned, the others go on, and all of it becomes durable;
//! - delivery outcomes and latencies are recorded as `gavel_wal_kafka_*` metrics;
//! - a snapshot records the partitions' offsets: a restart replays only the records after
//!   them, to the same state hash as a replay of the whole topic;
//! - `gavel serve` stopped by SIGTERM while it recovers — waiting for an unreachable broker
//!   (60 s connect timeout) or out another node's writer lease — exits 0 at once, says the
//!   stop came during recovery, writes no snapshot, and a later start recovers.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use gavel_engine::{
    AuctionId, AuctionSpec, Bid, BidId, BidOutcome, BidderId, Rejection, UnixMicros,
};
use gavel_node::{Node, NodeConfig};
use gavel_wal::kafka::KafkaConfig;

use common::crash::{
    Ack, Reference, env_u64, kill_and_collect, spawn_loaded, spawn_loaded_on_kafka,
};
use common::kafka::{Broker, free_port};
use gavel_wal::kafka::KafkaRecords;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const WAIT: Duration = Duration::from_secs(30);
const AUCTIONS: u64 = 6;
const BIDS_PER_THREAD: u64 = 300;

fn config(kafka: KafkaConfig) -> NodeConfig {
    NodeConfig {
        kafka: Some(kafka),
        ..NodeConfig::default()
    }
}

fn kafka(brokers: String, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers,
        topic: topic.to_owned(),
        partitions: 3,
        connect_timeout_ms: 10_000,
        ..KafkaConfig::default()
    }
}

fn english(id: u64) -> AuctionSpec {
    common::english(id, UnixMicros(1_000_000_000))
}

/// Bids of thread `t` on its auctions (id % 2 == t), rising; returns the (auction, bid id)
/// of each bid whose durable wait succeeded.
fn bid_and_wait(node: &Node, t: u64) -> Vec<(u64, u128)> {
    let mut acked = Vec::new();
    for n in 0..BIDS_PER_THREAD {
        let auction = 1 + t + 2 * (n % (AUCTIONS / 2));
        let bid_id = u128::from(t) << 64 | u128::from(n);
        let bid = Bid::new(
            AuctionId(auction),
            BidderId::new(&format!("b{}", n % 7)).unwrap(),
            BidId(bid_id),
            200 + 10 * n,
            None,
            UnixMicros(1 + n),
        )
        .unwrap();
        let decision = node.place_bid(&bid, UnixMicros(1 + n));
        let (outcome, receipt) = (decision.outcome, decision.receipt);
        assert!(
            matches!(outcome, BidOutcome::Accepted(_)),
            "thread {t} bid {n}: {outcome:?}"
        );
        // Every few bids, wait for durability (the others ride along in between).
        if n % 10 == 9 || n + 1 == BIDS_PER_THREAD {
            node.wait_durable(receipt.unwrap(), WAIT)
                .unwrap_or_else(|e| panic!("thread {t} bid {n} not durable: {e}"));
        }
        acked.push((auction, bid_id));
    }
    acked
}

/// `(auction, bid id)` of every `bid_accepted` line of `gavel wal dump`.
fn dumped_bids(dump: &str) -> BTreeSet<(u64, u128)> {
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_owned()
    };
    dump.lines()
        .filter(|line| line.contains(" bid_accepted "))
        .map(|line| {
            let auction = field(line, "auction=").parse().unwrap();
            let bid = field(line, "bid=");
            let bid = u128::from_str_radix(bid.trim_start_matches("0x"), 16).unwrap();
            (auction, bid)
        })
        .collect()
}

#[test]
fn every_bid_acknowledged_durable_is_replayed_by_a_fresh_node_with_the_same_state() {
    let broker = Broker::start();
    let kafka = kafka(broker.bootstrap(), "gavel-wal-replay");
    let live_dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (node, report) = Node::open(live_dir.path(), config(kafka.clone())).unwrap();
    assert_eq!(report.records_read, 0, "a new topic is empty");
    for id in 1..=AUCTIONS {
        let receipt = node.create_auction(english(id), UnixMicros(0)).unwrap();
        node.wait_durable(receipt, WAIT).unwrap();
    }
    let acked: Vec<(u64, u128)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let node = &node;
                scope.spawn(move || bid_and_wait(node, t))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(acked.len() as u64, 2 * BIDS_PER_THREAD);
    let live_hash = node.engine().state_hash();
    let appended = node.wal().last_appended_lsn();
    assert_eq!(appended, AUCTIONS + 2 * BIDS_PER_THREAD);
    assert_eq!(node.wal().durable_lsn(), appended);
    node.shutdown(false).unwrap();
    drop(node);
    let live_elapsed = started.elapsed();

    // A fresh node (another data directory) rebuilds everything from the topic alone.
    let fresh_dir = tempfile::tempdir().unwrap();
    let (fresh, report) = Node::open(fresh_dir.path(), config(kafka.clone())).unwrap();
    assert_eq!(report.records_read, appended, "{}", report.summary());
    assert_eq!(report.auctions, AUCTIONS as usize);
    assert_eq!(
        gavel_node::hex(&fresh.engine().state_hash()),
        gavel_node::hex(&live_hash),
        "the replayed state differs from the live one"
    );
    fresh.shutdown(false).unwrap();

    // Every acknowledged bid is in the topic, as `gavel wal dump --kafka` shows it.
    let (dump, _) = common::gavel_ok(&[
        "wal",
        "dump",
        "--kafka",
        &broker.bootstrap(),
        "--topic",
        &kafka.topic,
    ]);
    let in_topic = dumped_bids(&dump);
    let missing: Vec<_> = acked.iter().filter(|b| !in_topic.contains(b)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged bids not in the topic: {missing:?}"
    );
    assert_eq!(in_topic.len(), acked.len(), "no bid twice, none unknown");
    eprintln!(
        "kafka: {appended} records live in {live_elapsed:?}, replayed in {:?}",
        report.elapsed
    );
}

/// Bids of thread `t` on its auctions (id % 2 == t) in turn, rising, until `stop`; returns
/// the (auction, receipt) of each accepted bid and the number refused `Overloaded`.
fn bid_until(node: &Node, t: u64, stop: &std::sync::atomic::AtomicBool) -> (Vec<(u64, u64)>, u64) {
    let (mut accepted, mut refused) = (Vec::new(), 0);
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200_000 {
        let auction = 1 + t + 2 * (n % (AUCTIONS / 2));
        let bid = Bid::new(
            AuctionId(auction),
            BidderId::new(&format!("b{}", n % 7)).unwrap(),
            BidId(u128::from(t) << 64 | u128::from(n)),
            200 + 10 * n,
            None,
            UnixMicros(1 + n),
        )
        .unwrap();
        let decision = node.place_bid(&bid, UnixMicros(1 + n));
        match (decision.outcome, decision.receipt) {
            (BidOutcome::Accepted(_), Some(receipt)) => accepted.push((auction, receipt.0)),
            (BidOutcome::Rejected(Rejection::Overloaded { .. }), _) => refused += 1,
            _ => {}
        }
        n += 1;
    }
    (accepted, refused)
}

#[test]
fn a_paused_partition_gets_no_record_after_the_lsn_pause_returned() {
    let broker = Broker::start();
    let kafka = kafka(broker.bootstrap(), "gavel-wal-pause");
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), config(kafka)).unwrap();
    for id in 1..=AUCTIONS {
        let receipt = node.create_auction(english(id), UnixMicros(0)).unwrap();
        node.wait_durable(receipt, WAIT).unwrap();
    }
    let gavel_wal::Log::Kafka(log) = node.wal() else {
        panic!("a Kafka node's log is a KafkaLog");
    };
    let paused = log.partition_of(1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (last, results) = thread::scope(|scope| {
        let bidders: Vec<_> = (0..2)
            .map(|t| {
                let (node, stop) = (&node, &stop);
                scope.spawn(move || bid_until(node, t, stop))
            })
            .collect();
        thread::sleep(Duration::from_millis(300));
        let last = log.pause(paused).expect("owned");
        thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let results: Vec<_> = bidders.into_iter().map(|h| h.join().unwrap()).collect();
        (last, results)
    });
    let accepted: Vec<(u64, u64)> = results.iter().flat_map(|r| r.0.clone()).collect();
    let in_paused = |a: &&(u64, u64)| log.partition_of(a.0) == paused;
    let late: Vec<_> = accepted
        .iter()
        .filter(in_paused)
        .filter(|a| a.1 > last)
        .collect();
    assert!(
        late.is_empty(),
        "records of the paused partition after LSN {last}: {late:?}"
    );
    assert!(
        accepted.iter().filter(in_paused).any(|a| a.1 <= last),
        "the paused partition took bids before the pause"
    );
    let others_after = accepted
        .iter()
        .filter(|a| !in_paused(a) && a.1 > last)
        .count();
    assert!(
        others_after > 0,
        "the other partitions go on after the pause"
    );
    assert!(
        results.iter().any(|r| r.1 > 0),
        "bids on the paused partition are refused"
    );
    let highest = accepted.iter().map(|a| a.1).max().unwrap();
    node.wait_durable(gavel_engine::Receipt(highest), WAIT)
        .unwrap();
    node.shutdown(false).unwrap();
}

#[test]
fn an_unreachable_broker_fails_the_start_within_the_bounded_wait() {
    let brokers = format!("127.0.0.1:{}", free_port());
    let kafka = KafkaConfig {
        connect_timeout_ms: 2_000,
        ..kafka(brokers.clone(), "gavel-wal-unreachable")
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let error = match Node::open(dir.path(), config(kafka)) {
        Ok(_) => panic!("nothing listens on {brokers}: the start must fail"),
        Err(error) => format!("{error:#}"),
    };
    let elapsed = started.elapsed();
    assert!(
        error.contains(&brokers) && error.contains("did not answer within 2000 ms"),
        "{error}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "the start took {elapsed:?} to give up"
    );
}

#[test]
fn a_producer_setting_that_allows_loss_or_reordering_is_refused_at_start() {
    for (key, value) in [("acks", "1"), ("enable.idempotence", "false")] {
        let kafka = KafkaConfig {
            producer_overrides: vec![(key.to_owned(), value.to_owned())],
            ..kafka(format!("127.0.0.1:{}", free_port()), "gavel-wal-unsafe")
        };
        let dir = tempfile::tempdir().unwrap();
        let error = match Node::open(dir.path(), config(kafka)) {
            Ok(_) => panic!("{key}={value} must be refused"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains(&format!("refusing the Kafka producer setting {key}")),
            "{error}"
        );
    }
}

#[test]
fn gavel_serve_with_an_unreachable_broker_exits_with_a_message() {
    let brokers = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (_, stderr) = common::gavel_fails(&[
        "serve",
        "--dev",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--quic-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
        "--wal",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--kafka-connect-timeout-ms",
        "1500",
    ]);
    assert!(
        stderr.contains(&brokers) && stderr.contains("did not answer within 1500 ms"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn with_the_broker_gone_bids_are_overloaded_and_nothing_unpersisted_is_acknowledged() {
    const IN_FLIGHT_MAX: usize = 8;
    let broker = Broker::start();
    let kafka = KafkaConfig {
        queue_records_max: IN_FLIGHT_MAX,
        message_timeout_ms: 3_000,
        ..kafka(broker.bootstrap(), "gavel-wal-outage")
    };
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), config(kafka)).unwrap();
    let created = node.create_auction(english(1), UnixMicros(0)).unwrap();
    node.wait_durable(created, WAIT).unwrap();
    drop(broker);

    let mut accepted = Vec::new();
    let mut overloaded = 0;
    for n in 0..50u64 {
        let (outcome, receipt) = timed_bid(&node, n);
        match outcome {
            BidOutcome::Accepted(_) => accepted.push(receipt.unwrap()),
            BidOutcome::Rejected(Rejection::Overloaded { retry_after_us }) => {
                assert!(retry_after_us > 0 && retry_after_us <= 1_000_000);
                overloaded += 1;
            }
            other => panic!("bid {n}: {other:?}"),
        }
    }
    assert_eq!(
        accepted.len(),
        IN_FLIGHT_MAX,
        "the in-flight bound admits exactly that many"
    );
    assert_eq!(overloaded, 50 - IN_FLIGHT_MAX);
    let metrics = node.wal().metrics();
    assert!(metrics.queue_records <= IN_FLIGHT_MAX as u64, "{metrics:?}");
    assert_eq!(metrics.backpressure_total, overloaded as u64);
    // None of them is ever acknowledged: their reports fail after message_timeout_ms, and
    // the log fails with them.
    for receipt in accepted {
        let waited = node.wait_durable(receipt, WAIT);
        assert!(
            matches!(waited, Err(gavel_wal::WaitError::Failed { durable }) if durable == created.0),
            "{waited:?}"
        );
    }
    assert_eq!(node.wal().durable_lsn(), created.0);
    let failure = node.failure().expect("the log failed");
    assert!(failure.contains("not persisted"), "{failure}");
}

/// Kafka crash rounds when `GAVEL_KAFKA_CRASH_ROUNDS` is not set.
const CRASH_ROUNDS_DEFAULT: u64 = 3;

/// Every record of the topic as `(read position, payload)`, each partition in its order.
fn topic_records(kafka: &KafkaConfig) -> Vec<(u64, Vec<u8>)> {
    KafkaRecords::open(kafka)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.payload)
        })
        .collect()
}

#[test]
fn sigkill_under_load_then_restart_from_the_topic_loses_no_acknowledged_bid() {
    let rounds = env_u64("GAVEL_KAFKA_CRASH_ROUNDS", CRASH_ROUNDS_DEFAULT);
    let seed = env_u64("GAVEL_CRASH_SEED", 0x6b61_666b_6100);
    eprintln!("kafka crash test: {rounds} rounds, seed {seed} (GAVEL_CRASH_SEED to repeat)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let broker = Broker::start();
    let kafka = kafka(broker.bootstrap(), "gavel-wal-crash");
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut acks: Vec<Ack> = Vec::new();
    let mut from_snapshot = 0;
    for round in 0..rounds {
        // Each child first recovers what the earlier ones left — from the newest snapshot
        // of the shared data directory and the topic after its offsets — then bids.
        let dir = scratch.path().join("data");
        let stderr = scratch.path().join(format!("round-{round}.stderr"));
        let mut loaded = spawn_loaded(
            &dir,
            &stderr,
            rng.random(),
            &[
                "--kafka-brokers",
                &kafka.brokers,
                "--kafka-topic",
                &kafka.topic,
                "--snapshot-every-records",
                "1000",
                // The successor of a killed child waits out its writer lease.
                "--kafka-writer-lease-ms",
                "2000",
            ],
        );
        let first = loaded.first_ack(round);
        thread::sleep(Duration::from_millis(rng.random_range(50..=400)));
        let round_acks = kill_and_collect(loaded, round);
        let round_ack_count = round_acks.len() + 1;
        acks.push(first);
        acks.extend(round_acks);
        // A produce request the child had already written to its socket may still reach
        // the broker just after the kill; let it land before the topic is read.
        thread::sleep(Duration::from_millis(300));

        // Every acknowledged bid (of every round) is in the topic; the reference engine
        // fed exactly the topic's records is what a node rebuilds from it.
        let records = topic_records(&kafka);
        let n = records.len();
        let reference = Reference::replay(records, round);
        for ack in &acks {
            reference.logged(ack, round);
        }
        // A node on the killed child's data directory starts from its newest snapshot and
        // the topic after the snapshot's offsets (no snapshot of its own: the next child
        // finds the same ones).
        let checking = NodeConfig {
            snapshot_every_records: 0,
            snapshot_every_log_bytes: 0,
            ..config(KafkaConfig {
                writer_lease_ms: 2_000,
                ..kafka.clone()
            })
        };
        let (node, report) = Node::open(&dir, checking)
            .unwrap_or_else(|e| panic!("round {round}: the node does not start: {e:#}"));
        match report.snapshot_lsn {
            Some(_) => {
                from_snapshot += 1;
                assert!(report.records_read < n as u64, "{}", report.summary());
            }
            None => assert_eq!(report.records_read, n as u64, "{}", report.summary()),
        }
        assert_eq!(
            gavel_node::hex(&report.state_hash),
            gavel_node::hex(&reference.engine.state_hash()),
            "round {round}: the recovered state (snapshot at {:?}) differs from the reference fed the topic's {n} records",
            report.snapshot_lsn
        );
        assert_eq!(
            report.missing_tail_appended,
            reference.summary.missing_tail.len(),
            "round {round}: re-appended another number of missing derived events"
        );
        let (retries, _) = reference.check_recovered(node.engine(), &acks, round);
        node.shutdown(false).unwrap();
        drop(node);
        eprintln!(
            "round {round}: {round_ack_count} acks, {n} records in the topic, {} replayed after snapshot {:?}, {retries} retries checked, {:.1} s",
            report.records_read,
            report.snapshot_lsn,
            started.elapsed().as_secs_f64()
        );
    }
    assert!(acks.len() as u64 >= rounds, "every round acknowledged bids");
    if rounds >= CRASH_ROUNDS_DEFAULT {
        assert!(from_snapshot > 0, "no round recovered from a snapshot");
    }
}

/// `beat` records in the writer lock topic of `kafka`'s topic so far (0 before it exists).
fn lease_beats(kafka: &KafkaConfig) -> usize {
    let lock = KafkaConfig {
        topic: gavel_wal::kafka::fence::lock_topic(&kafka.topic, 0),
        ..kafka.clone()
    };
    KafkaRecords::open(&lock).map_or(0, |records| {
        records
            .map_while(Result::ok)
            .filter(|r| r.payload.starts_with(b"beat "))
            .count()
    })
}

/// Issue 19 item 12: the successor of a node SIGKILLed just after a heartbeat must wait out
/// almost a whole lease (4 s here), longer than its connect timeout (2 s); that wait is bounded
/// by the lease, so it takes over and replays every acknowledged bid. (Before, the wait was
/// bounded by the connect timeout and the start was refused as `KafkaFenced`.)
#[test]
fn a_successor_started_right_after_a_crash_takes_over_once_the_lease_lapses() {
    const LEASE_MS: u64 = 4_000;
    const BEAT_WAIT_MAX: Duration = Duration::from_secs(20);
    let broker = Broker::start();
    let kafka = KafkaConfig {
        connect_timeout_ms: 2_000,
        writer_lease_ms: LEASE_MS,
        owner: "successor".to_owned(),
        ..kafka(broker.bootstrap(), "gavel-wal-takeover")
    };
    let scratch = tempfile::tempdir().unwrap();
    let mut loaded = spawn_loaded_on_kafka(scratch.path(), "crashed", 7, &kafka);
    let first = loaded.first_ack(0);
    // Kill the holder just after a heartbeat: its lease then has almost all of its 4 s left.
    let beats = lease_beats(&kafka);
    let deadline = Instant::now() + BEAT_WAIT_MAX;
    while lease_beats(&kafka) == beats {
        assert!(
            Instant::now() < deadline,
            "no heartbeat in {BEAT_WAIT_MAX:?}"
        );
    }
    let mut acks = kill_and_collect(loaded, 0);
    acks.push(first);

    let started = Instant::now();
    let dir = scratch.path().join("successor");
    let (node, report) = Node::open(&dir, config(kafka.clone()))
        .unwrap_or_else(|e| panic!("the successor does not take over: {e:#}"));
    let took_over = started.elapsed();
    assert!(
        took_over < Duration::from_millis(LEASE_MS) + Duration::from_secs(10),
        "{took_over:?}"
    );
    // Every acknowledged bid is in the topic and in the successor's state.
    let reference = Reference::replay(topic_records(&kafka), 0);
    for ack in &acks {
        reference.logged(ack, 0);
    }
    assert_eq!(
        gavel_node::hex(&node.engine().state_hash()),
        gavel_node::hex(&reference.engine.state_hash()),
        "the successor's state differs from the topic's"
    );
    let (retries, _) = reference.check_recovered(node.engine(), &acks, 0);
    node.shutdown(false).unwrap();
    eprintln!(
        "takeover: {} acks, {} records replayed, took over after {took_over:?}, {retries} retries checked",
        acks.len(),
        report.records_read
    );
}

/// Places bid `n` on auction 1 (rising amounts) and checks it is answered within a second.
fn timed_bid(node: &Node, n: u64) -> (BidOutcome, Option<gavel_engine::Receipt>) {
    let bid = Bid::new(
        AuctionId(1),
        BidderId::new(&format!("b{}", n % 5)).unwrap(),
        BidId(u128::from(n)),
        // Above every increment band's step.
        200 + 100 * n,
        None,
        UnixMicros(1 + n),
    )
    .unwrap();
    let started = Instant::now();
    let decision = node.place_bid(&bid, UnixMicros(1 + n));
    let answer = (decision.outcome, decision.receipt);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "bid {n} was answered after {:?}",
        started.elapsed()
    );
    answer
}

#[test]
fn a_broker_outage_overloads_new_bids_and_the_backlog_drains_when_it_returns() {
    const IN_FLIGHT_MAX: usize = 64;
    const OUTAGE_BIDS: u64 = 2_000;
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_durable(broker_dir.path());
    let kafka = KafkaConfig {
        queue_records_max: IN_FLIGHT_MAX,
        // Longer than the outage: the records in flight wait for the broker's return.
        message_timeout_ms: 60_000,
        ..kafka(broker.bootstrap(), "gavel-wal-restart")
    };
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), config(kafka.clone())).unwrap();
    let created = node.create_auction(english(1), UnixMicros(0)).unwrap();
    node.wait_durable(created, WAIT).unwrap();
    let mut n = 0;
    let mut before = None;
    // Fewer than the in-flight bound: all accepted with the broker up.
    while n < IN_FLIGHT_MAX as u64 / 2 {
        let (outcome, receipt) = timed_bid(&node, n);
        assert!(matches!(outcome, BidOutcome::Accepted(_)), "{outcome:?}");
        before = receipt;
        n += 1;
    }
    node.wait_durable(before.unwrap(), WAIT).unwrap();
    let durable_before = node.wal().durable_lsn();

    // The broker goes away under load: bids go on, each answered within a second.
    broker.stop();
    let stopped = Instant::now();
    let mut accepted_in_outage = Vec::new();
    let mut overloaded = 0u64;
    let mut first_overloaded = None;
    let mut queue_max = 0;
    for _ in 0..OUTAGE_BIDS {
        match timed_bid(&node, n) {
            (BidOutcome::Accepted(_), receipt) => accepted_in_outage.push(receipt.unwrap()),
            (BidOutcome::Rejected(Rejection::Overloaded { retry_after_us }), _) => {
                assert!(retry_after_us > 0 && retry_after_us <= 1_000_000);
                first_overloaded.get_or_insert_with(|| stopped.elapsed());
                overloaded += 1;
            }
            other => panic!("bid {n} in the outage: {other:?}"),
        }
        queue_max = queue_max.max(node.wal().metrics().queue_records);
        n += 1;
        thread::sleep(Duration::from_micros(500));
    }
    let outage_load = stopped.elapsed();
    // Nothing of the outage is acknowledged: the durable LSN did not move.
    assert_eq!(node.wal().durable_lsn(), durable_before);
    assert!(node.failure().is_none(), "{:?}", node.failure());
    assert!(
        accepted_in_outage.len() <= IN_FLIGHT_MAX && !accepted_in_outage.is_empty(),
        "{} accepted while the broker was down",
        accepted_in_outage.len()
    );
    assert_eq!(overloaded, OUTAGE_BIDS - accepted_in_outage.len() as u64);
    assert!(queue_max <= IN_FLIGHT_MAX as u64, "in flight {queue_max}");
    let first_overloaded = first_overloaded.expect("the bound was reached");

    // The broker returns with its storage: the backlog drains, in order, and bids are
    // accepted and made durable again.
    broker.restart();
    let restarted = Instant::now();
    let last_in_outage = *accepted_in_outage.last().unwrap();
    node.wait_durable(last_in_outage, WAIT)
        .unwrap_or_else(|e| panic!("the backlog did not drain: {e}"));
    let drained = restarted.elapsed();
    for _ in 0..50 {
        let (outcome, receipt) = timed_bid(&node, n);
        assert!(matches!(outcome, BidOutcome::Accepted(_)), "{outcome:?}");
        node.wait_durable(receipt.unwrap(), WAIT).unwrap();
        n += 1;
    }
    let live_hash = node.engine().state_hash();
    let appended = node.wal().last_appended_lsn();
    node.shutdown(false).unwrap();
    drop(node);

    let fresh_dir = tempfile::tempdir().unwrap();
    let (fresh, report) = Node::open(fresh_dir.path(), config(kafka)).unwrap();
    assert_eq!(report.records_read, appended, "{}", report.summary());
    assert_eq!(
        gavel_node::hex(&fresh.engine().state_hash()),
        gavel_node::hex(&live_hash)
    );
    fresh.shutdown(false).unwrap();
    eprintln!(
        "outage: first Overloaded {first_overloaded:?} after the stop; {} accepted and {overloaded} \
         Overloaded in {outage_load:?}; in flight at most {queue_max}; backlog durable \
         {drained:?} after the restart",
        accepted_in_outage.len()
    );
}

#[test]
fn a_restart_replays_only_the_records_after_the_snapshot_offsets() {
    let broker = Broker::start();
    let kafka = kafka(broker.bootstrap(), "gavel-wal-snapshot");
    let dir = tempfile::tempdir().unwrap();
    let no_auto_snapshots = NodeConfig {
        snapshot_every_records: 0,
        snapshot_every_log_bytes: 0,
        ..config(kafka.clone())
    };
    let (node, _) = Node::open(dir.path(), no_auto_snapshots.clone()).unwrap();
    for id in 1..=AUCTIONS {
        let receipt = node.create_auction(english(id), UnixMicros(0)).unwrap();
        node.wait_durable(receipt, WAIT).unwrap();
    }
    bid_and_wait(&node, 0);
    let taken = node.snapshot_now().unwrap().expect("a snapshot");
    assert_eq!(taken.lsn, AUCTIONS + BIDS_PER_THREAD);
    bid_and_wait(&node, 1);
    let live_hash = node.engine().state_hash();
    node.shutdown(false).unwrap();
    drop(node);

    // Same data directory: the snapshot, then only the other thread's bids.
    let (restarted, report) = Node::open(dir.path(), no_auto_snapshots.clone()).unwrap();
    assert_eq!(report.snapshot_lsn, Some(taken.lsn), "{}", report.summary());
    assert_eq!(report.auctions_restored, AUCTIONS as usize);
    assert_eq!(report.records_read, BIDS_PER_THREAD, "{}", report.summary());
    assert_eq!(
        gavel_node::hex(&report.state_hash),
        gavel_node::hex(&live_hash)
    );
    // LSNs go on after the restored ones, so the next snapshot sorts after this one.
    assert_eq!(report.last_lsn, taken.lsn + BIDS_PER_THREAD);
    let next = restarted
        .snapshot_now()
        .unwrap()
        .expect("a second snapshot");
    assert!(next.lsn > taken.lsn);
    restarted.shutdown(false).unwrap();
    drop(restarted);

    // And from the second snapshot nothing is left to replay; a fresh directory replays
    // the whole topic to the same state.
    let (again, report) = Node::open(dir.path(), no_auto_snapshots.clone()).unwrap();
    assert_eq!(
        (report.snapshot_lsn, report.records_read),
        (Some(next.lsn), 0)
    );
    assert_eq!(again.engine().state_hash(), live_hash);
    again.shutdown(false).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let (whole, report) = Node::open(fresh.path(), no_auto_snapshots).unwrap();
    assert_eq!(report.records_read, AUCTIONS + 2 * BIDS_PER_THREAD);
    assert_eq!(whole.engine().state_hash(), live_hash);
    whole.shutdown(false).unwrap();
}

#[test]
fn a_second_node_on_the_same_topic_is_refused_while_the_first_holds_the_lease() {
    let broker = Broker::start();
    let base = kafka(broker.bootstrap(), "gavel-wal-fence");
    let owned_by = |owner: &str, connect_timeout_ms| KafkaConfig {
        owner: owner.to_owned(),
        connect_timeout_ms,
        ..base.clone()
    };
    let dir_a = tempfile::tempdir().unwrap();
    let (a, _) = Node::open(dir_a.path(), config(owned_by("node-a", 10_000))).unwrap();
    let created = a.create_auction(english(1), UnixMicros(0)).unwrap();
    a.wait_durable(created, WAIT).unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let error = match Node::open(dir_b.path(), config(owned_by("node-b", 2_000))) {
        Ok(_) => panic!("two nodes write one topic"),
        Err(error) => format!("{error:#}"),
    };
    let refused_after = started.elapsed();
    assert!(
        error.contains(
            "partition 0 of the Kafka topic gavel-wal-fence is written by another node (node-a)"
        ),
        "{error}"
    );
    // Refused because the holder renewed its lease twice while b waited (about 2/3 of its
    // 10 s lease), not after b's 2 s connect timeout; the error says when the lease lapses.
    assert!(
        error.contains("writer lease (10000 ms)")
            && error.contains("lapses in")
            && error.contains("renewed 2 times"),
        "{error}"
    );
    assert!(refused_after < Duration::from_secs(12), "{refused_after:?}");
    // `gavel serve` likewise exits with the message.
    let (_, stderr) = common::gavel_fails(&[
        "serve",
        "--dev",
        "--data-dir",
        dir_b.path().to_str().unwrap(),
        "--quic-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
        "--wal",
        "kafka",
        "--kafka-brokers",
        &base.brokers,
        "--kafka-topic",
        &base.topic,
        "--kafka-connect-timeout-ms",
        "1500",
    ]);
    assert!(
        stderr.contains(
            "partition 0 of the Kafka topic gavel-wal-fence is written by another node (node-a"
        ),
        "{stderr}"
    );
    // The holder goes on undisturbed.
    let (outcome, receipt) = timed_bid(&a, 1);
    assert!(matches!(outcome, BidOutcome::Accepted(_)), "{outcome:?}");
    a.wait_durable(receipt.unwrap(), WAIT).unwrap();
    let hash = a.engine().state_hash();
    a.shutdown(false).unwrap();
    drop(a);

    // Released at shutdown: the next node starts without waiting for the lease (10 s).
    let started = Instant::now();
    let (b, _) = Node::open(dir_b.path(), config(owned_by("node-b", 2_000))).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.engine().state_hash(), hash);
    b.shutdown(false).unwrap();
    eprintln!("fence: second node refused after {refused_after:?}: {error}");
}

#[test]
fn a_node_that_cannot_renew_its_lease_stops_acknowledging() {
    let broker = Broker::start();
    let kafka = KafkaConfig {
        writer_lease_ms: 600,
        ..kafka(broker.bootstrap(), "gavel-wal-lease")
    };
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), config(kafka)).unwrap();
    // Longer than several heartbeats: the lease stays held.
    thread::sleep(Duration::from_millis(1_500));
    assert_eq!(node.failure(), None);
    drop(broker);
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.failure().is_none() {
        assert!(Instant::now() < deadline, "the lease was never given up");
        thread::sleep(Duration::from_millis(50));
    }
    let failure = node.failure().unwrap();
    assert!(failure.contains("writer lease"), "{failure}");
    let (outcome, _) = timed_bid(&node, 0);
    assert!(!matches!(outcome, BidOutcome::Accepted(_)), "{outcome:?}");
}

/// The value of the series `name{labels}` (or `name` without labels) in a Prometheus text
/// rendering; 0 if absent.
fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn delivery_outcomes_and_latencies_are_metrics() {
    let handle = common::https::metrics_handle();
    let before = handle.render();
    let persisted = r#"gavel_wal_kafka_deliveries_total{status="persisted"}"#;
    let latencies = "gavel_wal_kafka_delivery_seconds_count";
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(
        dir.path(),
        config(kafka(broker.bootstrap(), "gavel-wal-metrics")),
    )
    .unwrap();
    let created = node.create_auction(english(1), UnixMicros(0)).unwrap();
    node.wait_durable(created, WAIT).unwrap();
    for n in 0..20 {
        let (outcome, receipt) = timed_bid(&node, n);
        assert!(matches!(outcome, BidOutcome::Accepted(_)), "{outcome:?}");
        node.wait_durable(receipt.unwrap(), WAIT).unwrap();
    }
    node.shutdown(false).unwrap();
    let after = handle.render();
    // Other tests of this binary record too: at least this test's 21 records.
    let delta = |series| series_value(&after, series) - series_value(&before, series);
    assert!(delta(persisted) >= 21.0, "{after}");
    assert!(delta(latencies) >= 21.0, "{after}");
}

/// `gavel serve` on the Kafka log `brokers`/`topic` in `dir`, its HTTPS and metrics ports
/// free loopback ports chosen here (no listening line is printed before recovery ends):
/// the child and its metrics address, where `/readyz` answers plain HTTP.
fn serve_on_kafka(dir: &Path, brokers: &str, topic: &str, connect_ms: &str) -> (Child, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["serve", "--dev", "--data-dir"])
        .arg(dir)
        .args(["--quic-listen", "127.0.0.1:0", "--https-listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .args([
            "--wal",
            "kafka",
            "--kafka-brokers",
            brokers,
            "--kafka-topic",
            topic,
        ])
        .args(["--kafka-connect-timeout-ms", connect_ms])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gavel starts");
    (child, metrics)
}

/// Waits until `/readyz` on `metrics` answers 503 `recovering` (and `child` still runs, so
/// it is recovering), then `settle` more; sends SIGTERM and waits for the exit (at most
/// 10 s, far below the wait the recovery is in): its status, stderr and how long it took.
async fn sigterm_while_recovering(
    mut child: Child,
    metrics: SocketAddr,
    settle: Duration,
) -> (ExitStatus, String, Duration) {
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let started = Instant::now();
    while tokio::net::TcpStream::connect(metrics).await.is_err() {
        assert!(started.elapsed() < WAIT, "the metrics port never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = common::https::plain_get(metrics, "/readyz").await;
    assert_eq!((status.as_u16(), &body[..]), (503, &b"recovering\n"[..]));
    tokio::time::sleep(settle).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "it must still be recovering"
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!(
                "still running 10 s after SIGTERM; stderr:\n{}",
                reader.join().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    (exit, reader.join().unwrap(), took)
}

/// What a stop during recovery must look like: exit status 0 (a requested stop, README),
/// the log line saying so, and no snapshot written.
fn assert_stopped_during_recovery(exit: ExitStatus, stderr: &str, snapshots: &Path) {
    assert_eq!(exit.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
    assert!(
        stderr.contains("stop requested during recovery: interrupting it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("interrupted: asked to stop during recovery"),
        "{stderr}"
    );
    assert!(stderr.contains("stopped during recovery;"), "{stderr}");
    assert!(!stderr.contains("listening quic="), "{stderr}");
    let written = std::fs::read_dir(snapshots).map_or(0, |dir| dir.count());
    assert_eq!(written, 0, "an interrupted recovery writes no snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_an_unreachable_broker_stops_at_once_with_status_0() {
    let brokers = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    // A 60 s connect wait: without the interrupt the stop would wait for all of it.
    let (child, metrics) = serve_on_kafka(dir.path(), &brokers, "gavel-wal-stop", "60000");
    let (exit, stderr, took) = sigterm_while_recovering(child, metrics, Duration::ZERO).await;
    assert_stopped_during_recovery(exit, &stderr, &dir.path().join("kafka-gavel-wal-stop"));
    assert!(!stderr.contains("did not answer within"), "{stderr}");
    eprintln!("stop while connecting: exited {took:?} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_out_another_nodes_writer_lease_stops_at_once() {
    let broker = Broker::start();
    // a holds a 60 s lease and beats every 20 s: b would wait about 40 s before refusing.
    let base = KafkaConfig {
        writer_lease_ms: 60_000,
        owner: "node-a".to_owned(),
        ..kafka(broker.bootstrap(), "gavel-wal-stop-lease")
    };
    let dir_a = tempfile::tempdir().unwrap();
    let (a, _) = Node::open(dir_a.path(), config(base.clone())).unwrap();
    let created = a.create_auction(english(1), UnixMicros(0)).unwrap();
    a.wait_durable(created, WAIT).unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    let (child, metrics) = serve_on_kafka(dir_b.path(), &base.brokers, &base.topic, "10000");
    // Reaching the broker takes milliseconds; two seconds on, b waits for a's lease.
    let settle = Duration::from_secs(2);
    let (exit, stderr, took) = sigterm_while_recovering(child, metrics, settle).await;
    let snapshots = dir_b.path().join("kafka-gavel-wal-stop-lease");
    assert_stopped_during_recovery(exit, &stderr, &snapshots);
    assert!(!stderr.contains("is written by another node"), "{stderr}");

    // Nothing half-written: once a releases the lease, a start on b's directory recovers
    // a's state at once.
    let hash = a.engine().state_hash();
    a.shutdown(false).unwrap();
    drop(a);
    let b_config = KafkaConfig {
        owner: "node-b".to_owned(),
        ..base
    };
    let (b, report) = Node::open(dir_b.path(), config(b_config)).unwrap();
    assert_eq!(b.engine().state_hash(), hash);
    assert_eq!(report.auctions, 1);
    b.shutdown(false).unwrap();
    eprintln!("stop while waiting for the lease: exited {took:?} after SIGTERM");
}
