//! Ownership by Kafka group membership (issue 14 item 2), end to end: one broker (`tansu`)
//! and `gavel serve` processes with `--kafka-ownership group` sharing one Kafka log of six
//! partitions, one CA for all, the SDK connected to node 0 only.
//!
//! - Three nodes settle into a disjoint assignment covering every partition, each partition
//!   owned (live writer lease) by the node the group assigned it to; bids on auctions of
//!   every partition are accepted.
//! - A node SIGKILLed and restarted at once under the same instance id gets its partitions
//!   back without moving the others' (their assignment and rebalance count unchanged), and
//!   bids on its partitions are accepted again.
//! - A fourth node joining takes partitions over from the others (a graceful revoke: bids
//!   stopped, appends made durable, leases released before the partitions are released), and
//!   the bidding goes on without an error.
//! - Afterwards every bid the SDK saw durable-acked is in the topic as replayed (checked
//!   against the test's own record of the acks), and a node replaying every partition has
//!   the state hash of an independent replay of the topic.
//!
//! A member SIGKILLed for good should lose its partitions to the survivors once its session
//! times out; tansu 0.6.0's group coordinator never reassigns them (see docs/cluster.md,
//! "Group ownership"), so that test is ignored: run it against a broker that does with
//! `cargo test -p gavel --test group -- --ignored`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gavel_client::{BidError, Client};
use gavel_proto::partition::partition_of;
use gavel_transport::tls::dev::{self, DevCerts};

use common::bidding::{
    Record, bid_on, check_topic, checker_config, client_config, metric, wait_placed,
};
use common::https::request_to;
use common::kafka::Broker;
use common::served::{OnKafka, Served, create_english, serve_on_kafka};

const PARTITIONS: u32 = 6;
const TOPIC: &str = "gavel-wal-group";
/// Auctions bid on; each bidding task takes every `TASKS`-th.
const AUCTIONS: u64 = 36;
const TASKS: u64 = 6;
/// The writer lease of every node: tansu stalls requests for about 3 s while a static member
/// joins, so a shorter lease can lapse under its holder (which then stops, as it must).
const LEASE_MS: u64 = 8_000;
/// The group session timeout: tansu pauses a static member's join and sync 3 s each and
/// does not count them as contact, so a session shorter than about 8 s expires members in
/// the middle of their own rebalance.
const SESSION_MS: u64 = 10_000;
/// Longest the test waits for any one thing (a start, a rebalance, the bidding).
const WAIT: Duration = Duration::from_secs(90);

/// Starts node `name` (its lease owner and group instance id) in group mode on the shared log
/// with the shared certificates; its log in `<dir>/<name>.log`.
fn start_node(dir: &std::path::Path, certs: &DevCerts, brokers: &str, name: &str) -> Served {
    let on = OnKafka {
        brokers,
        topic: TOPIC,
        partitions: PARTITIONS,
        owner: name,
        lease_ms: LEASE_MS,
    };
    let session = SESSION_MS.to_string();
    let ownership = [
        "--kafka-ownership",
        "group",
        "--kafka-group-session-timeout-ms",
        &session,
    ];
    serve_on_kafka(dir, certs, &on, &ownership)
}

/// The partitions `map` gives to `name`, ascending.
fn owned_by(map: &BTreeMap<u32, String>, name: &str) -> Vec<u32> {
    (map.iter())
        .filter(|(_, o)| *o == name)
        .map(|(p, _)| *p)
        .collect()
}

/// `GET /v1/cluster` of `node`.
async fn cluster(node: &Served, certs: &DevCerts) -> serde_json::Value {
    let who = Some("watcher/watcher-1");
    let (status, _, body) = request_to(node.https, certs, who, "GET", "/v1/cluster", None).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Partition → owner once `nodes` (name, node) settled: their assignments disjoint and
/// covering every partition, each partition owned with a live lease by its assignee as the
/// assignee itself shows it, and the map `wanted`. Fails after [`WAIT`].
async fn wait_settled(
    nodes: &[(&str, &Served)],
    certs: &DevCerts,
    wanted: impl Fn(&BTreeMap<u32, String>) -> bool,
) -> BTreeMap<u32, String> {
    let started = Instant::now();
    loop {
        let mut map = BTreeMap::new();
        let mut disjoint = true;
        let mut shown = Vec::new();
        for (name, node) in nodes {
            let cluster = cluster(node, certs).await;
            let assigned = cluster["assigned"].as_array().cloned().unwrap_or_default();
            for p in assigned.iter().filter_map(|p| p.as_u64()) {
                let entry = &cluster["partitions"][p as usize];
                let owned = entry["owner"] == *name && entry["live"] == true;
                disjoint &= map.insert(p as u32, (*name).to_owned()).is_none() && owned;
            }
            shown.push(cluster);
        }
        if disjoint && map.len() == PARTITIONS as usize && wanted(&map) {
            return map;
        }
        assert!(
            started.elapsed() < WAIT,
            "not settled after {WAIT:?}: {}",
            serde_json::Value::Array(shown)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates every auction through its owner's admin API.
async fn create_auctions(
    nodes: &[(&str, &Served)],
    owners: &BTreeMap<u32, String>,
    certs: &DevCerts,
) {
    for id in 1..=AUCTIONS {
        let owner = &owners[&partition_of(id, PARTITIONS)];
        let (_, node) = nodes.iter().find(|(name, _)| name == owner).unwrap();
        create_english(node, certs, id, &format!("test.lot-{id}")).await;
    }
}

/// The number of durable acks on `partition` so far.
fn acks_on(record: &Record, partition: u32) -> usize {
    let acks = record.acks.lock().unwrap();
    (acks.iter())
        .filter(|(a, _)| partition_of(a.auction, PARTITIONS) == partition)
        .count()
}

/// Waits until a bid on every partition of `partitions` was durable-acked after the moment
/// `before` (acks per partition then) was taken.
async fn wait_acked_on(record: &Record, before: &BTreeMap<u32, usize>, partitions: &[u32]) {
    let started = Instant::now();
    while !partitions.iter().all(|p| acks_on(record, *p) > before[p]) {
        assert!(
            started.elapsed() < WAIT,
            "no new ack on {partitions:?} in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ack_counts(record: &Record) -> BTreeMap<u32, usize> {
    (0..PARTITIONS).map(|p| (p, acks_on(record, p))).collect()
}

/// `(name, node)` of the first `nodes.len()` names.
fn named<'a>(names: &[&'a str], nodes: &'a [Served]) -> Vec<(&'a str, &'a Served)> {
    names.iter().copied().zip(nodes).collect()
}

/// `gavel_kafka_rebalances_total` of each node.
async fn rebalances(nodes: &[Served]) -> Vec<f64> {
    let mut counts = Vec::new();
    for node in nodes {
        counts.push(metric(node, "gavel_kafka_rebalances_total", &[]).await);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_own_disjoint_partitions_keep_them_over_a_restart_and_hand_some_to_a_joiner()
{
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = dev::ensure(&dir.path().join("certs")).unwrap();
    let brokers = broker.bootstrap();
    let names = ["node-0", "node-1", "node-2", "node-3"];
    let start = |name: &str| start_node(dir.path(), &certs, &brokers, name);
    let mut nodes: Vec<Served> = names[..3].iter().map(|name| start(name)).collect();
    let everyone = |_: &BTreeMap<u32, String>| true;
    let owners = wait_settled(&named(&names, &nodes), &certs, everyone).await;
    for name in &names[..3] {
        assert!(
            owners.values().any(|o| o == name),
            "{name} owns nothing: {owners:?}"
        );
    }
    create_auctions(&named(&names, &nodes), &owners, &certs).await;

    let client = Client::connect(client_config(&nodes[0], &certs, WAIT))
        .await
        .unwrap();
    let record = Arc::new(Record::default());
    let tasks: Vec<_> = (1..=TASKS)
        .map(|first| {
            let tasks = (first, TASKS, AUCTIONS);
            tokio::spawn(bid_on(client.clone(), tasks, Arc::clone(&record)))
        })
        .collect();
    wait_placed(&record, 2 * AUCTIONS, WAIT).await;
    assert_eq!(*record.errors.lock().unwrap(), Vec::<String>::new());

    // SIGKILL node-1 and restart it at once under the same instance id: it gets its
    // partitions back, the others keep theirs without a rebalance.
    let others_before = rebalances(&nodes).await;
    let acked = ack_counts(&record);
    nodes[1].child.kill().unwrap();
    nodes[1].child.wait().unwrap();
    let restarted_at = Instant::now();
    record.killed.store(true, Ordering::Release);
    nodes[1] = start("node-1");
    let again = wait_settled(&named(&names, &nodes), &certs, everyone).await;
    assert_eq!(
        again, owners,
        "a restart under the same instance id moved partitions"
    );
    let others_after = rebalances(&nodes).await;
    for i in [0, 2] {
        assert_eq!(others_after[i], others_before[i], "{} rebalanced", names[i]);
    }
    let restarted = owned_by(&owners, "node-1");
    wait_acked_on(&record, &acked, &restarted).await;
    let back = restarted_at.elapsed();

    // A fourth member joins: the group moves partitions to it from the others.
    let acked = ack_counts(&record);
    let joined_at = Instant::now();
    nodes.push(start("node-3"));
    let joiner_owns = |map: &BTreeMap<u32, String>| map.values().any(|o| o == "node-3");
    let moved = wait_settled(&named(&names, &nodes), &certs, joiner_owns).await;
    let taken = owned_by(&moved, "node-3");
    wait_acked_on(&record, &acked, &taken).await;
    let handed = joined_at.elapsed();
    let mut revocations = 0.0;
    for node in &nodes[..3] {
        revocations += metric(node, "gavel_kafka_revocations_total", &[]).await;
    }
    assert!(
        revocations >= taken.len() as f64,
        "{revocations} revocations for {taken:?} moved"
    );

    record.stop.store(true, Ordering::Release);
    for task in tasks {
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
    client.close().await;
    eprintln!(
        "group: {owners:?} at first; node-1 restarted and acked again on {restarted:?} after \
         {back:?}; node-3 joined and acked on {taken:?} after {handed:?} ({moved:?}); {} bids \
         placed",
        record.placed.load(Ordering::Acquire)
    );
    assert_eq!(*record.errors.lock().unwrap(), Vec::<String>::new());
    // An accepted bid the killed node had not written yet is decided anew by its restart,
    // after later bids of the same auction: its durable wait ends with that decision. A
    // graceful move loses none.
    for (auction, error) in record.lost.lock().unwrap().iter() {
        let partition = partition_of(*auction, PARTITIONS);
        assert!(
            restarted.contains(&partition) && matches!(error, BidError::TooLow { .. }),
            "auction {auction} (partition {partition}): {error}"
        );
    }
    drop(nodes);
    let acks: Vec<_> = (record.acks.lock().unwrap().iter())
        .map(|(ack, _)| ack.clone())
        .collect();
    let kafka = checker_config(&broker, TOPIC, PARTITIONS, LEASE_MS);
    tokio::task::spawn_blocking(move || check_topic(kafka, dir.path(), &acks, "group"))
        .await
        .unwrap();
}
