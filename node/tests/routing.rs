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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gavel_client::{BidError, Client};
use gavel_proto::partition::partition_of;
use gavel_transport::tls::dev::{self, DevCerts};

use common::bidding::{Record, bid_on, checker_config, client_config, metric, wait_placed};
use common::crash::Ack;
use common::https::request_to;
use common::kafka::Broker;
use common::served::{OnKafka, Served, create_english, serve_on_kafka};

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
/// certificates; its log in `<dir>/node-<i>.log`.
fn start_node(dir: &std::path::Path, certs: &DevCerts, brokers: &str, i: usize) -> Served {
    let (owned, standby) = (list(owned_by(i)), list(owned_by((i + NODES - 1) % NODES)));
    let owner = format!("node-{i}");
    let on = OnKafka {
        brokers,
        topic: TOPIC,
        partitions: PARTITIONS,
        owner: &owner,
        lease_ms: LEASE_MS,
    };
    let ownership = [
        "--kafka-owned-partitions",
        &owned,
        "--kafka-standby-partitions",
        &standby,
    ];
    serve_on_kafka(dir, certs, &on, &ownership)
}

/// Creates every auction through its owner's admin API.
async fn create_auctions(nodes: &[Option<Served>], certs: &DevCerts) {
    for id in 1..=AUCTIONS {
        let owner = nodes[(partition_of(id, PARTITIONS) / 2) as usize].as_ref();
        create_english(owner.unwrap(), certs, id, &format!("test.lot-{id}")).await;
    }
}

/// The labels of the home node's redirected QUIC bids.
const MISDIRECTED: [&str; 2] = ["transport=\"quic\"", "reason=\"misdirected\""];

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
    let client = Client::connect(client_config(home, &certs, WAIT))
        .await
        .unwrap();
    let redirects_before = metric(home, "gavel_redirects_total", &MISDIRECTED).await;

    let record = Arc::new(Record::default());
    let tasks: Vec<_> = (1..=TASKS)
        .map(|first| {
            let tasks = (first, TASKS, AUCTIONS);
            tokio::spawn(bid_on(client.clone(), tasks, Arc::clone(&record)))
        })
        .collect();
    wait_placed(&record, ROUNDS_BEFORE_KILL * AUCTIONS, WAIT).await;
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
    record.phase.store(1, Ordering::Release);
    let survivor = nodes[standby].as_ref().unwrap();
    let moved = wait_owner(survivor, &certs, busiest, &format!("node-{standby}")).await;
    // Bidding goes on a while on the new owner, then stops.
    let placed = record.placed.load(Ordering::Acquire);
    wait_placed(&record, placed + 2 * AUCTIONS, WAIT).await;
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
    let acks: Vec<(Ack, u64)> = record.acks.lock().unwrap().clone();
    let after = acks
        .iter()
        .filter(|(a, phase)| *phase > 0 && partition_of(a.auction, PARTITIONS) == busiest);
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

/// Every ack is in the topic as replayed (see [`common::bidding::check_topic`]).
fn check_topic(broker: &Broker, dir: &std::path::Path, acks: &[Ack]) {
    let kafka = checker_config(broker, TOPIC, PARTITIONS, LEASE_MS);
    common::bidding::check_topic(kafka, dir, acks, "routing");
}
