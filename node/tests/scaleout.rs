//! Scale-out on a Kafka topic (issue 14) against a real Kafka-protocol broker (`tansu`,
//! started per test on a free loopback port, killed when the test ends):
//!
//! - an auction's partition is `gavel_proto::partition::partition_of` of its id — the same as
//!   librdkafka's default partitioner on the decimal key, which is how topics written before
//!   chose partitions — and every record the node writes is in that partition;
//! - a record found in another partition than its key hashes to (the topic's partition count
//!   changed under its records) stops the replay with an error naming it;
//! - two nodes own disjoint partitions of one topic (static assignment, a writer lease per
//!   partition): each creates and decides only its own auctions (another node's creation is
//!   refused without harm, its bids are unknown there), and a node owning every partition
//!   replays both to the same views;
//! - a record written under an owner epoch older than a takeover marker already in its
//!   partition is skipped by every replay, also by a restart from a snapshot whose offsets
//!   are past that marker (the snapshot records the epochs);
//! - a zombie: a `gavel simulate` owner SIGSTOPped under load until a successor waited out
//!   its lease and took its partitions over, then SIGCONTed — every bid it acknowledged
//!   durable (before or after) is in the topic as replayed, nothing it wrote after the
//!   takeover is replayed (a fresh replay has the successor's state hash), and it stops;
//! - the admin API of a node owning partitions 2-3 beside one owning 0-1: `GET /v1/cluster`
//!   shows both with their advertised addresses; creating, reading or cancelling an auction
//!   of the other's partitions is 421 `misdirected` naming that node and its addresses, and a
//!   WebSocket bid on it `REJECT_REASON_MISDIRECTED` with the same owner; once the other
//!   node stopped (its leases released) the same are 503 `no_owner` and
//!   `REJECT_REASON_NO_OWNER`; its own auctions work as usual; each is counted in
//!   `gavel_redirects_total`;
//! - a standby whose replay of a partition it took over fails (a record that does not
//!   decode) stops acknowledging, naming the partition, rather than serve half of it;
//! - live takeover: an owner process (this test binary re-run as [`owner_process`]) owns
//!   partitions 0 and 1 and bids under load; a running node owning 2 and 3 with 0 and 1 as
//!   standby sees its lease lapse after a SIGKILL, takes both over (replay into the running
//!   engine) and accepts bids on their auctions; every bid the owner acknowledged durable is
//!   there (checked against the owner's own acks) and the state hash is the topic's. The time
//!   from the kill to the first accepted bid is printed (`GAVEL_TAKEOVER_ROUNDS` rounds).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gavel_engine::{
    AuctionId, Bid, BidId, BidOutcome, BidderId, CreateError, Rejection, UnixMicros,
};
use gavel_node::{Node, NodeConfig};
use gavel_proto::partition::partition_of;
use gavel_wal::kafka::{KafkaConfig, ensure_topic};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use common::crash::{Ack, Reference, collect_after, env_u64, spawn_loaded_on_kafka};
use common::https::{Setup, TestNode};
use common::kafka::Broker;
use gavel_wal::kafka::KafkaRecords;

const PARTITIONS: i32 = 4;
/// Longest wait for the broker in a raw client's call.
const WAIT: Duration = Duration::from_secs(20);

fn kafka(brokers: String, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers,
        topic: topic.to_owned(),
        partitions: PARTITIONS,
        connect_timeout_ms: 10_000,
        writer_lease_ms: 2_000,
        ..KafkaConfig::default()
    }
}

fn config(kafka: KafkaConfig) -> NodeConfig {
    NodeConfig {
        kafka: Some(kafka),
        ..NodeConfig::default()
    }
}

/// A plain producer (librdkafka's defaults: its own partitioner) on `brokers`.
fn raw_producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("creating a raw producer")
}

/// Produces one record keyed `key` (to `partition`, or where librdkafka's default
/// partitioner puts it; with the owner epoch `epoch` if any) and waits until the broker has it.
fn produce_as(
    producer: &BaseProducer,
    topic: &str,
    (key, partition, epoch): (&str, Option<i32>, Option<u64>),
    payload: &[u8],
) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(epoch) = epoch {
        let epoch = epoch.to_be_bytes();
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "gavel-epoch",
            value: Some(&epoch),
        }));
    }
    producer
        .send(record)
        .map_err(|(e, _)| e)
        .expect("producing");
    producer.flush(Timeout::After(WAIT)).expect("flushing");
}

/// `(partition, key)` of every keyed record of `topic`, each partition from its beginning to its end.
fn placement(brokers: &str, topic: &str) -> Vec<(i32, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "gavel-scaleout-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("creating a raw consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let (mut ends, mut records) = (0, Vec::new());
    let deadline = Instant::now() + WAIT;
    while ends < PARTITIONS {
        assert!(
            Instant::now() < deadline,
            "{topic} not read to its end in {WAIT:?}"
        );
        match consumer.poll(Timeout::After(Duration::from_millis(100))) {
            // A takeover marker has no key.
            Some(Ok(message)) => {
                if let Some(key) = message.key() {
                    let key = String::from_utf8(key.to_vec()).unwrap();
                    records.push((message.partition(), key));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => ends += 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}

fn create_auctions(node: &Node, ids: std::ops::RangeInclusive<u64>) {
    let mut last = None;
    for id in ids {
        let spec = common::english(id, UnixMicros(u64::MAX / 4));
        last = Some(node.create_auction(spec, UnixMicros(1)).unwrap());
    }
    node.wait_durable(last.unwrap(), WAIT).unwrap();
}

#[test]
fn an_auction_lives_in_the_partition_its_id_hashes_to_as_librdkafka_would_put_its_key() {
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    // Topics written before the node chose partitions used librdkafka's default partitioner
    // on the decimal id: partition_of must agree with it for every key.
    let old = kafka(brokers.clone(), "gavel-wal-old");
    ensure_topic(&old).unwrap();
    let producer = raw_producer(&brokers);
    for id in 1..=64u64 {
        produce_as(&producer, &old.topic, (&id.to_string(), None, None), b"x");
    }
    let old_placement = placement(&brokers, &old.topic);
    assert_eq!(old_placement.len(), 64);
    for (partition, key) in &old_placement {
        let id: u64 = key.parse().unwrap();
        assert_eq!(
            *partition as u32,
            partition_of(id, PARTITIONS as u32),
            "key {key}"
        );
    }
    let used: std::collections::BTreeSet<i32> = old_placement.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "64 keys spread over every partition"
    );

    // And the node writes each auction's records to that partition.
    let new = kafka(brokers.clone(), "gavel-wal-placed");
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), config(new.clone())).unwrap();
    create_auctions(&node, 1..=32);
    node.shutdown(false).unwrap();
    let placed = placement(&brokers, &new.topic);
    assert_eq!(placed.len(), 32);
    for (partition, key) in placed {
        let id: u64 = key.parse().unwrap();
        assert_eq!(
            partition as u32,
            partition_of(id, PARTITIONS as u32),
            "auction {id}"
        );
    }
}

#[test]
fn a_record_outside_the_partition_its_auction_hashes_to_stops_the_replay() {
    let broker = Broker::start();
    let kafka = kafka(broker.bootstrap(), "gavel-wal-misplaced");
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), config(kafka.clone())).unwrap();
    create_auctions(&node, 1..=8);
    node.shutdown(false).unwrap();
    // As if partitions were added: auction 3's next record lands in another partition.
    let home = partition_of(3, PARTITIONS as u32) as i32;
    let elsewhere = (home + 1) % PARTITIONS;
    // Written under the node's epoch (1): a record without one would be skipped as stale.
    let misplaced = ("3", Some(elsewhere), Some(1));
    produce_as(
        &raw_producer(&kafka.brokers),
        &kafka.topic,
        misplaced,
        b"moved",
    );
    let error = Node::open(tempfile::tempdir().unwrap().path(), config(kafka))
        .map(|_| ())
        .expect_err("a split auction must not replay");
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!(
            "partition {elsewhere} of gavel-wal-misplaced has key 3"
        )) && error.contains(&format!("belongs in partition {home} of {PARTITIONS}"))
            && error.contains("partition count changed"),
        "{error}"
    );
}

fn owning(base: &KafkaConfig, owner: &str, owned: &[i32]) -> KafkaConfig {
    KafkaConfig {
        owner: owner.to_owned(),
        owned_partitions: owned.to_vec(),
        ..base.clone()
    }
}

fn bid(auction: u64, n: u64) -> Bid {
    let bidder = BidderId::new(&format!("bidder-{}", n % 3)).unwrap();
    let id = BidId(u128::from(auction) << 32 | u128::from(n));
    Bid::new(
        AuctionId(auction),
        bidder,
        id,
        200 + 10 * n,
        None,
        UnixMicros(2),
    )
    .unwrap()
}

/// `GET /v1/cluster` of a node of the two-node cluster: partitions 0-1 held by node-a, 2-3
/// by node-b, each under epoch 1 (waits for the node's follower to have read the other's).
fn assert_cluster_map(node: &Node) {
    let owner = |p: u32| if p < 2 { "node-a" } else { "node-b" };
    let map = |c: &gavel_proto::pb::Cluster| -> Vec<(u32, String, u64, bool)> {
        let p = c.partitions.iter();
        p.map(|p| (p.partition, p.owner.clone(), p.epoch, p.live))
            .collect()
    };
    let expected: Vec<_> = (0..4).map(|p| (p, owner(p).to_owned(), 1, true)).collect();
    let deadline = Instant::now() + WAIT;
    let mut cluster = node.cluster().unwrap();
    while map(&cluster) != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        cluster = node.cluster().unwrap();
    }
    assert_eq!(map(&cluster), expected);
    assert_eq!(cluster.members, ["node-a", "node-b"]);
    assert_eq!(cluster.topic, "gavel-wal-shared");
}

#[test]
fn two_nodes_own_disjoint_partitions_and_a_node_owning_all_replays_both() {
    let broker = Broker::start();
    let base = kafka(broker.bootstrap(), "gavel-wal-shared");
    let scratch = tempfile::tempdir().unwrap();
    let open = |name: &str, owned: &[i32]| {
        let config = config(owning(&base, name, owned));
        Node::open(scratch.path().join(name), config).unwrap().0
    };
    let (a, b) = (open("node-a", &[0, 1]), open("node-b", &[2, 3]));
    let owner = |id: u64| {
        if partition_of(id, 4) < 2 {
            (&a, &b)
        } else {
            (&b, &a)
        }
    };
    let far = UnixMicros(u64::MAX / 4);
    for id in 1..=24 {
        let (owner, other) = owner(id);
        let refused = other.create_auction(common::english(id, far), UnixMicros(1));
        assert!(
            matches!(refused, Err(CreateError::Overloaded { .. })),
            "{id}: {refused:?}"
        );
        owner
            .create_auction(common::english(id, far), UnixMicros(1))
            .unwrap();
        for n in 0..3 {
            let decision = owner.place_bid(&bid(id, n), UnixMicros(2));
            assert!(
                matches!(decision.outcome, BidOutcome::Accepted(_)),
                "{decision:?}"
            );
            owner.wait_durable(decision.receipt.unwrap(), WAIT).unwrap();
        }
        let elsewhere = other.place_bid(&bid(id, 9), UnixMicros(2)).outcome;
        assert_eq!(elsewhere, BidOutcome::Rejected(Rejection::UnknownAuction));
    }
    assert_eq!(
        (a.failure(), b.failure()),
        (None, None),
        "a refusal harms no log"
    );
    // Each follows the other's leases: both see the whole map (within a few reads).
    for node in [&a, &b] {
        assert_cluster_map(node);
    }
    assert_eq!(a.engine().len() + b.engine().len(), 24);
    let views: Vec<_> = (1..=24)
        .map(|id| {
            owner(id)
                .0
                .engine()
                .view(AuctionId(id), UnixMicros(3))
                .unwrap()
        })
        .collect();
    a.shutdown(true).unwrap();
    b.shutdown(true).unwrap();
    drop((a, b));
    let all = open("node-c", &[]);
    assert_eq!(all.engine().len(), 24);
    for (id, view) in (1..=24).zip(&views) {
        assert_eq!(
            all.engine().view(AuctionId(id), UnixMicros(3)).as_ref(),
            Some(view)
        );
    }
    all.shutdown(false).unwrap();
    // Node a again, from its snapshot: only its own partitions' auctions.
    let a = open("node-a", &[0, 1]);
    let own = (1..=24).filter(|&id| partition_of(id, 4) < 2).count();
    assert_eq!(a.engine().len(), own);
}

#[test]
fn a_record_of_an_older_owner_epoch_after_a_takeover_is_skipped_by_every_replay() {
    let broker = Broker::start();
    let kafka = kafka(broker.bootstrap(), "gavel-wal-epochs");
    let scratch = tempfile::tempdir().unwrap();
    let (first, _) = Node::open(scratch.path().join("1"), config(kafka.clone())).unwrap();
    create_auctions(&first, 1..=8);
    first.shutdown(false).unwrap();
    drop(first);
    // The second owner takes every partition over under epoch 2 (the first held epoch 1).
    let (second, _) = Node::open(scratch.path().join("2"), config(kafka.clone())).unwrap();
    let hash = second.engine().state_hash();
    second.shutdown(false).unwrap();
    drop(second);
    // A late write of the first owner (epoch 1) after the takeover marker; not even a valid
    // record, so a replay that did not skip it would fail.
    let home = partition_of(3, PARTITIONS as u32) as i32;
    let producer = raw_producer(&kafka.brokers);
    produce_as(
        &producer,
        &kafka.topic,
        ("3", Some(home), Some(1)),
        b"zombie",
    );
    let mut records = KafkaRecords::open(&kafka).unwrap();
    assert_eq!(records.by_ref().map(Result::unwrap).count(), 8);
    assert_eq!(records.stale_records(), 1);
    let (third, _) = Node::open(scratch.path().join("3"), config(kafka.clone())).unwrap();
    assert_eq!(third.engine().state_hash(), hash);
    third.shutdown(false).unwrap();
    // A record of the current epoch is replayed (and this one does not decode).
    produce_as(
        &producer,
        &kafka.topic,
        ("3", Some(home), Some(3)),
        b"current",
    );
    let error = Node::open(scratch.path().join("4"), config(kafka))
        .map(|_| ())
        .expect_err("a current record that does not decode stops the replay");
    assert!(format!("{error:#}").contains("LSN"), "{error:#}");
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[test]
fn a_paused_owner_resumed_after_a_takeover_never_acknowledges_or_replays_what_it_writes() {
    const LEASE_MS: u64 = 1_500;
    let broker = Broker::start();
    let kafka = KafkaConfig {
        partitions: 8,
        writer_lease_ms: LEASE_MS,
        owner: "successor".to_owned(),
        ..kafka(broker.bootstrap(), "gavel-wal-zombie")
    };
    let scratch = tempfile::tempdir().unwrap();
    let mut zombie = spawn_loaded_on_kafka(scratch.path(), "zombie", 11, &kafka);
    let first = zombie.first_ack(0);
    std::thread::sleep(Duration::from_millis(500));
    let pid = zombie.child.id();
    signal(pid, "STOP");
    let stopped = Instant::now();
    let (successor, report) = Node::open(scratch.path().join("successor"), config(kafka.clone()))
        .unwrap_or_else(|e| panic!("the successor does not take over: {e:#}"));
    let took_over = stopped.elapsed();
    let hash = successor.engine().state_hash();
    signal(pid, "CONT");
    // Resumed, it writes on (its threads were mid-load) until it notices its leases lapsed.
    let (mut acks, status, stderr) = collect_after(zombie, Duration::from_secs(10));
    acks.push(first);
    let records: Vec<(u64, Vec<u8>)> = KafkaRecords::open(&kafka)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    let stale = {
        let mut reader = KafkaRecords::open(&kafka).unwrap();
        reader.by_ref().for_each(|r| drop(r.unwrap()));
        reader.stale_records()
    };
    let reference = Reference::replay(records, 0);
    for ack in &acks {
        reference.logged(ack, 0);
    }
    assert_eq!(
        gavel_node::hex(&reference.engine.state_hash()),
        gavel_node::hex(&hash),
        "the topic as replayed holds something the successor did not replay"
    );
    assert!(
        stderr.contains("writer lease"),
        "the zombie did not notice it was fenced ({status}):\n{stderr}"
    );
    successor.shutdown(false).unwrap();
    eprintln!(
        "zombie: {} durable acks all replayed; successor took over {took_over:?} after SIGSTOP \
         ({} records replayed); {stale} late records of the zombie skipped; zombie exit {status}",
        acks.len(),
        report.records_read
    );
}

/// Environment of [`owner_process`]: `brokers topic data_dir`.
const OWNER_ENV: &str = "GAVEL_SCALEOUT_OWNER";
/// The partitions the owner process owns (of [`PARTITIONS`]); the standby node owns the rest.
const OWNER_PARTITIONS: [i32; 2] = [0, 1];
/// Longest an owner process bids.
const OWNER_RUN_MAX: Duration = Duration::from_secs(60);

/// The owner's auctions: of ids 1..=40, those in its partitions.
fn owner_auctions() -> Vec<u64> {
    (1..=40)
        .filter(|&id| OWNER_PARTITIONS.contains(&(partition_of(id, PARTITIONS as u32) as i32)))
        .collect()
}

/// Not a test on its own: the owner process of
/// `a_standby_node_takes_a_killed_owners_partitions_over_and_accepts_bids`, which runs this
/// test binary again with [`OWNER_ENV`] set. Owns [`OWNER_PARTITIONS`], creates its auctions
/// and bids on them until killed, printing `ack auction bidder bid seq lsn` for every bid
/// acknowledged durable.
#[test]
#[ignore = "the owner process of the live takeover test, run by it"]
fn owner_process() {
    let spec = std::env::var(OWNER_ENV).expect("run by the live takeover test");
    let mut words = spec.split(' ');
    let (brokers, topic, dir) = (
        words.next().unwrap(),
        words.next().unwrap(),
        words.next().unwrap(),
    );
    let kafka = KafkaConfig {
        owned_partitions: OWNER_PARTITIONS.to_vec(),
        owner: "owner-a".to_owned(),
        ..kafka(brokers.to_owned(), topic)
    };
    let (node, _) = Node::open(dir, config(kafka)).unwrap();
    let auctions = owner_auctions();
    for &id in &auctions {
        let spec = common::english(id, UnixMicros(u64::MAX / 4));
        node.create_auction(spec, UnixMicros(1)).unwrap();
    }
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < OWNER_RUN_MAX {
        let mut pending = Vec::new();
        for _ in 0..20 {
            let bid = bid(auctions[(n % auctions.len() as u64) as usize], n);
            n += 1;
            let decision = node.place_bid(&bid, UnixMicros(2));
            if let (BidOutcome::Accepted(accepted), Some(receipt)) =
                (decision.outcome, decision.receipt)
            {
                pending.push((bid, accepted.seq, receipt));
            }
        }
        let Some(&(_, _, last)) = pending.last() else {
            continue;
        };
        node.wait_durable(last, WAIT).unwrap();
        for (bid, seq, receipt) in pending {
            let (auction, bidder, id) = (bid.auction().0, bid.bidder(), bid.id().0);
            writeln!(out, "ack {auction} {bidder} {id} {seq} {}", receipt.0).unwrap();
        }
        out.flush().unwrap();
    }
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut w = line.strip_prefix("ack ")?.split(' ');
    Some(Ack {
        auction: w.next()?.parse().ok()?,
        bidder: w.next()?.to_owned(),
        bid: w.next()?.parse().ok()?,
        seq: w.next()?.parse().ok()?,
        lsn: w.next()?.parse().ok()?,
    })
}

/// One round: owner process and standby node on a fresh topic; SIGKILL the owner under load;
/// returns the time from the kill to the standby's first accepted bid on the owner's auction.
fn takeover_round(broker: &Broker, round: u64) -> Duration {
    let scratch = tempfile::tempdir().unwrap();
    let topic = format!("gavel-wal-standby-{round}");
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args([
            "owner_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            OWNER_ENV,
            format!(
                "{} {topic} {}",
                broker.bootstrap(),
                scratch.path().join("a").display()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(owner.stdout.take().unwrap()).lines();
    let mut acks = Vec::new();
    while acks.len() < 200 {
        let line = lines
            .next()
            .expect("the owner process stopped before 200 acks")
            .unwrap();
        acks.extend(parse_ack(&line));
    }
    let standby = KafkaConfig {
        owned_partitions: vec![2, 3],
        standby_partitions: OWNER_PARTITIONS.to_vec(),
        owner: "node-b".to_owned(),
        ..kafka(broker.bootstrap(), &topic)
    };
    let (b, _) = Node::open(scratch.path().join("b"), config(standby.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    owner.kill().unwrap();
    let killed = Instant::now();
    owner.wait().unwrap();
    acks.extend(lines.map_while(Result::ok).filter_map(|l| parse_ack(&l)));
    // Bid on the owner's first auction until the standby accepts one.
    let probe = owner_auctions()[0];
    let (first_accepted, receipt) = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no takeover in 60 s"
        );
        let bid = bid(probe, 1_000_000_000 + killed.elapsed().as_micros() as u64);
        let decision = b.place_bid(&bid, UnixMicros(3));
        match decision.outcome {
            BidOutcome::Accepted(_) => break (killed.elapsed(), decision.receipt.unwrap()),
            BidOutcome::Rejected(Rejection::UnknownAuction | Rejection::Overloaded { .. }) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => panic!("round {round}: the standby answered {other:?}"),
        }
    };
    b.wait_durable(receipt, WAIT).unwrap();
    // The partitions are taken over one after the other: wait for the last one before
    // comparing with the topic.
    let taken = |b: &Node| {
        let cluster = b.cluster().unwrap();
        OWNER_PARTITIONS
            .iter()
            .all(|&p| cluster.partitions[p as usize].owner == "node-b")
    };
    while !taken(&b) {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "round {round}: not all taken over"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = KafkaConfig {
        owned_partitions: Vec::new(),
        standby_partitions: Vec::new(),
        ..standby
    };
    let records: Vec<(u64, Vec<u8>)> = KafkaRecords::open(&all)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    let reference = Reference::replay(records, round);
    for ack in &acks {
        reference.logged(ack, round);
    }
    assert_eq!(
        gavel_node::hex(&b.engine().state_hash()),
        gavel_node::hex(&reference.engine.state_hash()),
        "round {round}: the standby's state is not the topic's"
    );
    reference.check_recovered(b.engine(), &acks, round);
    let cluster = b.cluster().unwrap();
    let map: Vec<_> = cluster
        .partitions
        .iter()
        .map(|p| (p.owner.as_str(), p.epoch, p.standby))
        .collect();
    // The owner's partitions under epoch 2 (it held 1), standby; b's own under epoch 1.
    let (taken, own) = (("node-b", 2, true), ("node-b", 1, false));
    assert_eq!(map, [taken, taken, own, own], "round {round}");
    assert_eq!(cluster.members, ["node-b"]);
    b.shutdown(false).unwrap();
    eprintln!(
        "takeover round {round}: {} acks checked, first accepted bid {first_accepted:?} after the kill",
        acks.len()
    );
    first_accepted
}

#[test]
fn a_standby_node_takes_a_killed_owners_partitions_over_and_accepts_bids() {
    let broker = Broker::start();
    let rounds = env_u64("GAVEL_TAKEOVER_ROUNDS", 2);
    let mut times: Vec<Duration> = (0..rounds)
        .map(|round| takeover_round(&broker, round))
        .collect();
    times.sort();
    eprintln!(
        "takeover: kill → first accepted bid over {rounds} rounds (lease 2000 ms): p50 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_auction_is_misdirected_on_the_admin_api_and_the_cluster_is_shown() {
    const ADMIN: Option<&str> = Some("admin/admin");
    const WATCHER: Option<&str> = Some("watcher/watcher-1");
    let broker = Broker::start();
    let base = kafka(broker.bootstrap(), "gavel-wal-admin");
    let scratch = tempfile::tempdir().unwrap();
    let a_kafka = KafkaConfig {
        advertise: A_ADVERTISED.to_owned(),
        ..owning(&base, "node-a", &[0, 1])
    };
    let (a, _) = Node::open(scratch.path(), config(a_kafka)).unwrap();
    let b = TestNode::start(Setup {
        node: config(owning(&base, "node-b", &[2, 3])),
        ..Setup::default()
    })
    .await;
    // b follows a's leases: the map shows both (within a few reads).
    let deadline = Instant::now() + WAIT;
    let cluster = loop {
        let (status, _, body) = b.request(WATCHER, "GET", "/v1/cluster", None).await;
        assert_eq!(status, 200);
        let cluster: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let read_both = (0..2).all(|p| cluster["partitions"][p]["owner"] == "node-a");
        if read_both || Instant::now() > deadline {
            break cluster;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        cluster["members"],
        serde_json::json!(["node-a", "node-b"]),
        "{cluster}"
    );
    assert_eq!(cluster["node"], "node-b");
    assert_eq!(cluster["partitions"][0]["owner"], "node-a");
    assert_eq!(cluster["partitions"][0]["quic"], "node-a.test:7443");
    assert_eq!(cluster["partitions"][0]["https"], "127.0.0.1:18443");
    assert_eq!(cluster["partitions"][3]["owner"], "node-b");
    let theirs = (1..).find(|&id| partition_of(id, 4) < 2).unwrap();
    let ours = (1..).find(|&id| partition_of(id, 4) >= 2).unwrap();
    let rules = |id: u64| common::served::english_rules(id, "energy.eu.a", 1).into_bytes();
    let misdirected = format!("partition {}", partition_of(theirs, 4));
    let requests = [
        ("POST", "/v1/auctions".to_owned(), Some(rules(theirs))),
        ("GET", format!("/v1/auctions/{theirs}"), None),
        ("POST", format!("/v1/auctions/{theirs}/cancel"), None),
    ];
    let misdirected_before = redirects(&b, "misdirected").await;
    let owner = serde_json::json!({"partition": partition_of(theirs, 4), "partitions": 4,
        "node": "node-a", "quic": "node-a.test:7443", "https": "127.0.0.1:18443", "epoch": "1"});
    for (method, path, body) in requests.clone() {
        let (status, _, body) = b.request(ADMIN, method, &path, body).await;
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status.as_u16(), &error["code"]),
            (421, &serde_json::json!("misdirected"))
        );
        assert_eq!(error["owner"], owner, "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("node-a")
                && message.contains(&misdirected)
                && message.contains("127.0.0.1:18443"),
            "{message}"
        );
    }
    assert!(redirects(&b, "misdirected").await >= misdirected_before + 3.0);
    let bid = ws_bid(&b, theirs).await;
    assert_eq!(bid["reason"], "REJECT_REASON_MISDIRECTED", "{bid}");
    assert_eq!(bid["owner"], owner, "{bid}");
    b.create_auction(rules(ours)).await;
    let (status, _, _) = b
        .request(WATCHER, "GET", &format!("/v1/auctions/{ours}"), None)
        .await;
    assert_eq!(status, 200);
    // a stops and releases its leases: nobody owns its partitions until a node takes them.
    a.shutdown(false).unwrap();
    let deadline = Instant::now() + WAIT;
    let bid = loop {
        let bid = ws_bid(&b, theirs).await;
        if bid["reason"] != "REJECT_REASON_MISDIRECTED" || Instant::now() > deadline {
            break bid;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(bid["reason"], "REJECT_REASON_NO_OWNER", "{bid}");
    assert_eq!(bid["retryAfterUs"], "200000", "{bid}");
    assert_eq!(bid["owner"]["node"], serde_json::Value::Null, "{bid}");
    let no_owner_before = redirects(&b, "no_owner").await;
    for (method, path, body) in requests {
        let (status, headers, body) = b.request(ADMIN, method, &path, body).await;
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status.as_u16(), &error["code"]),
            (503, &serde_json::json!("no_owner"))
        );
        assert_eq!(headers["retry-after"], "1");
    }
    assert!(redirects(&b, "no_owner").await >= no_owner_before + 3.0);
    b.stop().await;
}

/// `gavel_redirects_total{transport="https",reason}` as `node` renders it.
async fn redirects(node: &TestNode, reason: &str) -> f64 {
    let series = format!("gavel_redirects_total{{transport=\"https\",reason=\"{reason}\"}}");
    let text = node.metrics().await;
    let values = text
        .lines()
        .filter_map(|line| line.strip_prefix(series.as_str()));
    values.filter_map(|v| v.trim().parse::<f64>().ok()).sum()
}

/// What node a advertises in the admin test: a QUIC host name, an HTTPS IP address.
const A_ADVERTISED: &str = "quic=node-a.test:7443,https=127.0.0.1:18443";

/// Places a bid on `auction` over a new WebSocket (JSON) to `node`; its `rejected` answer.
async fn ws_bid(node: &TestNode, auction: u64) -> serde_json::Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = node
        .ws(Some("bidder/bidder-1"), "gavel.v1.json", None)
        .await
        .unwrap();
    let bid = format!(
        r#"{{"requestId": "1", "placeBid": {{"auctionId": "{auction}", "amount": "150", "bidIdLo": "7"}}}}"#
    );
    ws.send(Message::text(bid)).await.unwrap();
    let answer = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => break text,
            _ => continue,
        }
    };
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    answer["bidOutcome"]["rejected"].clone()
}

#[test]
fn a_takeover_whose_replay_fails_stops_the_node_naming_the_partition() {
    let broker = Broker::start();
    let base = kafka(broker.bootstrap(), "gavel-wal-bad-takeover");
    let scratch = tempfile::tempdir().unwrap();
    let (a, _) = Node::open(
        scratch.path().join("a"),
        config(owning(&base, "node-a", &[0, 1])),
    )
    .unwrap();
    let home = (1..).find(|&id| partition_of(id, 4) == 0).unwrap();
    create_auctions(&a, home..=home);
    // A record of a's epoch (1) that does not decode, then a clean stop (leases released).
    let bad = (home.to_string(), Some(0), Some(1));
    produce_as(
        &raw_producer(&base.brokers),
        &base.topic,
        (&bad.0, bad.1, bad.2),
        b"garbage",
    );
    a.shutdown(false).unwrap();
    drop(a);
    let standby = KafkaConfig {
        standby_partitions: vec![0, 1],
        ..owning(&base, "node-b", &[2, 3])
    };
    let (b, _) = Node::open(scratch.path().join("b"), config(standby)).unwrap();
    let deadline = Instant::now() + WAIT;
    while b.failure().is_none() {
        assert!(
            Instant::now() < deadline,
            "the failed takeover did not stop the node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let failure = b.failure().unwrap();
    assert!(
        failure.contains("replaying partition 0, taken over"),
        "{failure}"
    );
    let outcome = b.place_bid(&bid(home, 1), UnixMicros(2)).outcome;
    assert!(!matches!(outcome, BidOutcome::Accepted(_)), "{outcome:?}");
}

#[test]
fn a_late_record_of_an_older_epoch_after_a_snapshots_offsets_is_skipped_on_restart() {
    let broker = Broker::start();
    let kafka = kafka(broker.bootstrap(), "gavel-wal-snapshot-epochs");
    let dir = tempfile::tempdir().unwrap();
    // Run 1 (epoch 1) creates; run 2 (epoch 2) creates more and snapshots past its marker.
    let (first, _) = Node::open(dir.path(), config(kafka.clone())).unwrap();
    create_auctions(&first, 1..=4);
    first.shutdown(false).unwrap();
    drop(first);
    let (second, _) = Node::open(dir.path(), config(kafka.clone())).unwrap();
    create_auctions(&second, 5..=8);
    second.snapshot_now().unwrap().expect("a snapshot");
    let hash = second.engine().state_hash();
    second.shutdown(false).unwrap();
    drop(second);
    // Run 1's late write lands after the snapshot's offsets (not a valid record either).
    let home = partition_of(3, PARTITIONS as u32) as i32;
    let late = ("3", Some(home), Some(1));
    produce_as(&raw_producer(&kafka.brokers), &kafka.topic, late, b"late");
    let (third, report) = Node::open(dir.path(), config(kafka)).unwrap();
    assert!(report.snapshot_lsn.is_some(), "restarted from the snapshot");
    assert_eq!(third.engine().state_hash(), hash);
}
