//! Routing bids across nodes (issue 14 item 5), end to end: one broker (`tansu`) and three
//! `gavel serve` processes sharing one Kafka log of six partitions (node i owns partitions
//! 2i and 2i+1 and stands by for its predecessor's), one CA for all, the SDK connected to
//! node 0 only.
//!
//! - Every bid, on auctions of every partition, reaches its owner: the first bids on another
//!   node's partition come back `MISDIRECTED` (counted in node 0's `gavel_redirects_total`),
//!   the SDK learns the map and sends the rest there directly; every bid is accepted.
//! - The owner of the busiest partition is SIGKILLed under load: its standby takes the
//!   partition over, the SDK keeps bidding (bids of the dead node's partitions are resent under
//!   their bid ids until the new owner decides them) without a single error, and bids on the
//!   busiest partition are accepted again after the kill.
//! - Afterwards every bid the SDK saw durable-acked is in the topic as replayed (checked
//!   against the test's own record of the acks), a node replaying every partition has the
//!   state hash of an independent replay of the topic, and a retry of each auction's last
//!   acked bid is answered `DUPLICATE` with its original seq.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gavel_client::{Bid, BidError, Client, ClientConfig};
use gavel_node::{Node, NodeConfig};
use gavel_proto::partition::partition_of;
use gavel_transport::tls::dev::{self, DevCerts};
use gavel_wal::kafka::{KafkaConfig, KafkaRecords};

use common::crash::{Ack, Reference};
use common::https::{plain_get, request_to};
use common::kafka::Broker;
use common::served::{Served, create_english, serve_with_args};

const NODES: usize = 3;
const PARTITIONS: u32 = 6;
const TOPIC: &str = "gavel-wal-routing";
/// Auctions bid on; each bidding task takes every `TASKS`-th.
const AUCTIONS: u64 = 36;
const TASKS: u64 = 6;
/// Bidding rounds over all auctions before the kill.
const ROUNDS_BEFORE_KILL: u64 = 3;
/// The writer lease of every node: a killed owner's partitions move about this long after.
const LEASE_MS: u64 = 2_000;
/// Longest the test waits for any one thing (a start, a takeover, the bidding to end).
const WAIT: Duration = Duration::from_secs(30);

/// The partitions node `i` owns.
fn owned_by(i: usize) -> [u32; 2] {
    [2 * i as u32, 2 * i as u32 + 1]
}

/// Comma-separated partitions.
fn list(partitions: [u32; 2]) -> String {
    format!("{},{}", partitions[0], partitions[1])
}

/// Starts node `i` on the shared log (standby of node i-1's partitions) with the shared
/// certificates; its log in `<dir>/node<i>.log`.
fn start_node(dir: &std::path::Path, certs: &DevCerts, brokers: &str, i: usize) -> Served {
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (owned, standby) = (list(owned_by(i)), list(owned_by((i + NODES - 1) % NODES)));
    let (owner, lease) = (format!("node-{i}"), LEASE_MS.to_string());
    let partitions = PARTITIONS.to_string();
    let args = [
        "--tls-cert",
        &path(&certs.server_cert),
        "--tls-key",
        &path(&certs.server_key),
        "--tls-client-ca",
        &path(&certs.ca_cert),
        "--wal",
        "kafka",
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        TOPIC,
        "--kafka-partitions",
        &partitions,
        "--kafka-owner",
        &owner,
        "--kafka-owned-partitions",
        &owned,
        "--kafka-standby-partitions",
        &standby,
        "--kafka-writer-lease-ms",
        &lease,
        "--kafka-connect-timeout-ms",
        "20000",
    ];
    let log = dir.join(format!("node{i}.log"));
    serve_with_args(&dir.join(format!("node{i}")), &args, &log)
}

/// Creates every auction through its owner's admin API.
async fn create_auctions(nodes: &[Option<Served>], certs: &DevCerts) {
    for id in 1..=AUCTIONS {
        let owner = nodes[(partition_of(id, PARTITIONS) / 2) as usize].as_ref();
        create_english(owner.unwrap(), certs, id, &format!("test.lot-{id}")).await;
    }
}

/// The sum of the series of metric `name` with all of `labels` (`key="value"` each) on a
/// node's metrics port.
async fn metric(node: &Served, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = plain_get(node.metrics, "/metrics").await;
    let text = String::from_utf8_lossy(&text).into_owned();
    let series = text
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'));
    let matching = series.filter(|rest| labels.iter().all(|l| rest.contains(l)));
    let values = matching.filter_map(|rest| rest.rsplit_once(' ')?.1.parse::<f64>().ok());
    values.sum()
}

/// The labels of the home node's redirected QUIC bids.
const MISDIRECTED: [&str; 2] = ["transport=\"quic\"", "reason=\"misdirected\""];

/// What the bidding tasks share: the acks seen, the errors, the phase and the stop.
#[derive(Default)]
struct Record {
    /// Durable acks seen, with whether the bid was placed after the kill.
    acks: Mutex<Vec<(Ack, bool)>>,
    errors: Mutex<Vec<String>>,
    /// Accepted bids whose durable ack never came, and why.
    lost: Mutex<Vec<(u64, BidError)>>,
    /// Bids placed (Ok) so far.
    placed: std::sync::atomic::AtomicU64,
    killed: AtomicBool,
    stop: AtomicBool,
}

/// One bidding task: rounds over its auctions (every `TASKS`-th from `first`), each bid
/// higher than its last on the auction, a bid id per (auction, round); each durable ack
/// awaited on its own task.
async fn bid_on(client: Client, first: u64, record: Arc<Record>) {
    let mut round = 0u64;
    while !record.stop.load(Ordering::Acquire) {
        for auction in (first..=AUCTIONS).step_by(TASKS as usize) {
            let id = (u128::from(auction) << 32) | u128::from(round + 1);
            let bid = Bid::new(auction, 200 + 10 * round).with_id(id);
            let after_kill = record.killed.load(Ordering::Acquire);
            match client.place_bid(bid).await {
                Ok(placed) => {
                    record.placed.fetch_add(1, Ordering::AcqRel);
                    let record = Arc::clone(&record);
                    tokio::spawn(async move {
                        match placed.durable().await {
                            Ok(durable) => {
                                let ack = Ack {
                                    auction,
                                    bidder: "bidder-1".into(),
                                    bid: id,
                                    seq: durable.seq,
                                    lsn: 0,
                                };
                                record.acks.lock().unwrap().push((ack, after_kill));
                            }
                            Err(e) => record.lost.lock().unwrap().push((auction, e)),
                        }
                    });
                }
                Err(e) => record
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("{auction}/{round}: {e}")),
            }
        }
        round += 1;
    }
}

/// Waits until `placed` bids were placed (or the bound passes).
async fn wait_placed(record: &Record, placed: u64) {
    let deadline = Instant::now() + WAIT;
    while record.placed.load(Ordering::Acquire) < placed {
        assert!(
            Instant::now() < deadline,
            "only {} bids placed",
            record.placed.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node`'s `GET /v1/cluster` shows `partition` owned by `owner` with a live lease.
async fn wait_owner(node: &Served, certs: &DevCerts, partition: u32, owner: &str) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _, body) = request_to(
            node.https,
            certs,
            Some("watcher/watcher-1"),
            "GET",
            "/v1/cluster",
            None,
        )
        .await;
        assert_eq!(status, 200);
        let cluster: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let entry = &cluster["partitions"][partition as usize];
        if entry["owner"] == owner && entry["live"] == true {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "{owner} does not own {partition}: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_on_one_node_reaches_every_owner_and_keeps_bidding_through_a_takeover() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = dev::ensure(&dir.path().join("certs")).unwrap();
    let mut nodes: Vec<Option<Served>> = (0..NODES)
        .map(|i| Some(start_node(dir.path(), &certs, &broker.bootstrap(), i)))
        .collect();
    create_auctions(&nodes, &certs).await;
    let home = nodes[0].as_ref().unwrap();
    let mut config =
        ClientConfig::from_cert_dir(home.quic, &certs.dir, "bidder-1").expect("the dev certs");
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = WAIT;
    config.durable_timeout = WAIT;
    config.reconnect_backoff_max = Duration::from_millis(500);
    // A killed node is noticed when its connection idles out (docs/quic.md, "Several nodes").
    config.idle_timeout = Duration::from_secs(2);
    config.keep_alive_interval = Duration::from_millis(500);
    let client = Client::connect(config).await.unwrap();
    let redirects_before = metric(home, "gavel_redirects_total", &MISDIRECTED).await;

    let record = Arc::new(Record::default());
    let tasks: Vec<_> = (1..=TASKS)
        .map(|first| tokio::spawn(bid_on(client.clone(), first, Arc::clone(&record))))
        .collect();
    wait_placed(&record, ROUNDS_BEFORE_KILL * AUCTIONS).await;
    // Every bid so far was accepted, on all three owners, reached through redirects.
    assert_eq!(*record.errors.lock().unwrap(), Vec::<String>::new());
    assert!(record.lost.lock().unwrap().is_empty());
    let redirected = metric(home, "gavel_redirects_total", &MISDIRECTED).await - redirects_before;
    assert!(redirected >= 1.0, "no bid was redirected");
    for node in nodes.iter().flatten() {
        let accepted = metric(
            node,
            "gavel_bids_total",
            &["transport=\"quic\"", "result=\"accepted\""],
        )
        .await;
        assert!(accepted >= 1.0, "node on {} accepted no bid", node.quic);
    }

    // Kill the owner of the busiest partition (most acks so far) under load.
    let busiest = busiest_partition(&record);
    let victim = (busiest / 2) as usize;
    let standby = (victim + 1) % NODES;
    let mut killed = nodes[victim].take().unwrap();
    killed.child.kill().unwrap();
    let kill_at = Instant::now();
    killed.child.wait().unwrap();
    record.killed.store(true, Ordering::Release);
    let survivor = nodes[standby].as_ref().unwrap();
    let moved = wait_owner(survivor, &certs, busiest, &format!("node-{standby}")).await;
    // Bidding goes on a while on the new owner, then stops.
    let placed = record.placed.load(Ordering::Acquire);
    wait_placed(&record, placed + 2 * AUCTIONS).await;
    record.stop.store(true, Ordering::Release);
    for task in tasks {
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
    client.close().await;
    eprintln!(
        "routing: node-{victim} (partition {busiest}) killed; node-{standby} owned it {moved:?} after the kill \
         ({:?} since); {} bids placed, {redirected} redirected at first, {} accepted bids of the \
         killed node decided anew too low",
        kill_at.elapsed(),
        record.placed.load(Ordering::Acquire),
        record.lost.lock().unwrap().len()
    );
    assert_eq!(*record.errors.lock().unwrap(), Vec::<String>::new());
    // An accepted bid the killed node had not written yet is decided anew by the new owner,
    // after later bids of the same auction: its durable wait ends with that decision.
    for (auction, error) in record.lost.lock().unwrap().iter() {
        let partition = partition_of(*auction, PARTITIONS);
        assert!(
            owned_by(victim).contains(&partition) && matches!(error, BidError::TooLow { .. }),
            "auction {auction} (partition {partition}): {error}"
        );
    }
    let acks: Vec<(Ack, bool)> = record.acks.lock().unwrap().clone();
    let after = acks
        .iter()
        .filter(|(a, after)| *after && partition_of(a.auction, PARTITIONS) == busiest);
    assert!(
        after.count() > 0,
        "no bid on partition {busiest} was acked after the kill"
    );
    drop(nodes);
    let acks: Vec<Ack> = acks.into_iter().map(|(ack, _)| ack).collect();
    tokio::task::spawn_blocking(move || check_topic(&broker, dir.path(), &acks))
        .await
        .unwrap();
}

/// The partition with the most durable acks so far (the lowest of a tie).
fn busiest_partition(record: &Record) -> u32 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for (ack, _) in record.acks.lock().unwrap().iter() {
        *counts
            .entry(partition_of(ack.auction, PARTITIONS))
            .or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    (0..PARTITIONS)
        .find(|p| counts.get(p) == Some(&most))
        .unwrap_or(0)
}

/// Every ack is in the topic as replayed; a node replaying every partition has the state hash
/// of an independent replay and answers a retry of each auction's last acked bid `DUPLICATE`.
fn check_topic(broker: &Broker, dir: &std::path::Path, acks: &[Ack]) {
    let kafka = KafkaConfig {
        brokers: broker.bootstrap(),
        topic: TOPIC.to_owned(),
        partitions: PARTITIONS as i32,
        writer_lease_ms: LEASE_MS,
        owner: "checker".to_owned(),
        ..KafkaConfig::default()
    };
    let records: Vec<(u64, Vec<u8>)> = KafkaRecords::open(&kafka)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    let reference = Reference::replay(records, 0);
    for ack in acks {
        reference.logged(ack, 0);
    }
    let config = NodeConfig {
        kafka: Some(kafka),
        ..NodeConfig::default()
    };
    let (all, _) = Node::open(dir.join("checker"), config).unwrap();
    assert_eq!(
        gavel_node::hex(&all.engine().state_hash()),
        gavel_node::hex(&reference.engine.state_hash()),
        "a node replaying every partition differs from the topic"
    );
    let (checked, _) = reference.check_recovered(all.engine(), acks, 0);
    assert!(checked > 0);
    eprintln!(
        "routing: {} durable acks all in the topic; {checked} retries answered DUPLICATE",
        acks.len()
    );
    all.shutdown(false).unwrap();
}
