//! Ownership by Kafka group membership (issue 14 item 2), end to end: one broker (`tansu`)
//! and `gavel serve` processes with `--kafka-ownership group` sharing one Kafka log of six
//! partitions, one CA for all, the SDK connected to node 0 only.
//!
//! - A node alone in the group owns every partition; with two more, the three settle into a
//!   disjoint assignment covering every partition, each partition owned (live writer lease)
//!   by the node the group assigned it to; bids on auctions of every partition are accepted.
//! - A node SIGKILLed and restarted at once under the same instance id gets its partitions
//!   back without moving the others' (their assignment and rebalance count unchanged), and
//!   bids on its partitions are accepted again.
//! - A fourth node joining takes partitions over from the others (a graceful revoke: bids
//!   stopped, appends made durable, leases released before the partitions are released), and
//!   the bidding goes on without an error; the node that gave a partition up follows it on
//!   from the state its engine held (its follower applies the new owner's records and
//!   catches up, which a wrong seed would stop with an error).
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
use common::crash::Ack;
use common::https::{plain_get, request_to};
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

/// A broker, and the directory and certificates its nodes share.
struct Fixture {
    broker: Broker,
    dir: tempfile::TempDir,
    certs: DevCerts,
}

impl Fixture {
    fn new() -> Fixture {
        let broker = Broker::start();
        let dir = tempfile::tempdir().unwrap();
        let certs = dev::ensure(&dir.path().join("certs")).unwrap();
        Fixture { broker, dir, certs }
    }

    /// Starts node `name` (see [`start_node`]).
    fn start(&self, name: &str) -> Served {
        start_node(self.dir.path(), &self.certs, &self.broker.bootstrap(), name)
    }
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

/// The number of durable acks on `partition` of bids placed in `phase`.
fn acks_on(record: &Record, partition: u32, phase: u64) -> usize {
    let acks = record.acks.lock().unwrap();
    let on = |a: &Ack| partition_of(a.auction, PARTITIONS) == partition;
    acks.iter().filter(|(a, p)| *p == phase && on(a)).count()
}

/// Starts a new phase of the bidding (its number), e.g. at a kill: acks of bids placed from
/// now on count for [`wait_acked_on`].
fn next_phase(record: &Record) -> u64 {
    record.phase.fetch_add(1, Ordering::AcqRel) + 1
}

/// Waits until a bid placed in `phase` was durable-acked on every partition of
/// `partitions`; returns how long that took from `since`.
async fn wait_acked_on(
    record: &Record,
    phase: u64,
    partitions: &[u32],
    since: Instant,
) -> Duration {
    while !partitions.iter().all(|p| acks_on(record, *p, phase) > 0) {
        assert!(
            since.elapsed() < WAIT,
            "no ack on {partitions:?} in phase {phase} in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    since.elapsed()
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

/// Starts nodes `names` (in order; the first alone, until it owns every partition), waits
/// until they settled, and creates the auctions through their owners: the nodes and the
/// partition → owner map.
async fn form(
    names: &[&str],
    start: impl Fn(&str) -> Served,
    certs: &DevCerts,
) -> (Vec<Served>, BTreeMap<u32, String>) {
    let mut nodes = vec![start(names[0])];
    let alone = wait_settled(&named(names, &nodes), certs, |_| true).await;
    assert!(alone.values().all(|o| o == names[0]), "{alone:?}");
    nodes.extend(names[1..].iter().map(|name| start(name)));
    let everyone_owns =
        |map: &BTreeMap<u32, String>| (names.iter()).all(|name| map.values().any(|o| o == name));
    let owners = wait_settled(&named(names, &nodes), certs, everyone_owns).await;
    create_auctions(&named(names, &nodes), &owners, certs).await;
    (nodes, owners)
}

/// The SDK bidding through one node: its client, the record and the tasks.
struct Bidding {
    client: Client,
    record: Arc<Record>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bidding {
    /// Starts [`TASKS`] bidding tasks through `node` and waits for two rounds of bids.
    async fn start(node: &Served, certs: &DevCerts) -> Bidding {
        let config = client_config(node, certs, WAIT);
        let client = Client::connect(config).await.unwrap();
        let record = Arc::new(Record::default());
        let tasks = (1..=TASKS)
            .map(|first| {
                let tasks = (first, TASKS, AUCTIONS);
                tokio::spawn(bid_on(client.clone(), tasks, Arc::clone(&record)))
            })
            .collect();
        wait_placed(&record, 2 * AUCTIONS, WAIT).await;
        assert_eq!(*record.errors.lock().unwrap(), Vec::<String>::new());
        Bidding {
            client,
            record,
            tasks,
        }
    }

    /// Stops the bidding; its record.
    async fn stop(self) -> Arc<Record> {
        self.record.stop.store(true, Ordering::Release);
        for task in self.tasks {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
        self.client.close().await;
        self.record
    }
}

/// Waits until `node`'s `/readyz` shows its follower of `partition` caught up (lag 0) and
/// not stopped on a record it could not apply; the line.
async fn wait_followed(node: &Served, partition: u32) -> String {
    let started = Instant::now();
    let prefix = format!("follower partition={partition} ");
    loop {
        let (_, body) = plain_get(node.metrics, "/readyz").await;
        let body = String::from_utf8_lossy(&body).into_owned();
        let line = body
            .lines()
            .find(|l| l.starts_with(&prefix))
            .map(str::to_owned);
        match line {
            Some(line) if line.contains(" failed: ") => panic!("{line}"),
            Some(line) if line.contains(" lag_records=0 ") => return line,
            _ => {}
        }
        assert!(
            started.elapsed() < WAIT,
            "partition {partition} not followed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGKILLs `node`; when.
fn kill(node: &mut Served) -> Instant {
    node.child.kill().unwrap();
    let at = Instant::now();
    node.child.wait().unwrap();
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_own_disjoint_partitions_keep_them_over_a_restart_and_hand_some_to_a_joiner()
{
    let fixture = Fixture::new();
    let (certs, start) = (&fixture.certs, |name: &str| fixture.start(name));
    let names = ["node-0", "node-1", "node-2", "node-3"];
    let (mut nodes, owners) = form(&names[..3], &start, certs).await;
    let shown = cluster(&nodes[0], certs).await;
    assert_eq!(shown["ownership"], "group", "{shown}");
    eprintln!("group: GET /v1/cluster on node-0: {shown}");
    let bidding = Bidding::start(&nodes[0], certs).await;
    let record = Arc::clone(&bidding.record);

    // SIGKILL node-1 and restart it at once under the same instance id: it gets its
    // partitions back, the others keep theirs without a rebalance.
    let others_before = rebalances(&nodes).await;
    let phase = next_phase(&record);
    let killed_at = kill(&mut nodes[1]);
    nodes[1] = start("node-1");
    let again = wait_settled(&named(&names, &nodes), certs, |_| true).await;
    assert_eq!(
        again, owners,
        "a restart under the same instance id moved partitions"
    );
    let others_after = rebalances(&nodes).await;
    for i in [0, 2] {
        assert_eq!(others_after[i], others_before[i], "{} rebalanced", names[i]);
    }
    let restarted = owned_by(&owners, "node-1");
    let back = wait_acked_on(&record, phase, &restarted, killed_at).await;

    // A fourth member joins: the group moves partitions to it from the others.
    let phase = next_phase(&record);
    let joined_at = Instant::now();
    nodes.push(start("node-3"));
    let joiner_owns = |map: &BTreeMap<u32, String>| map.values().any(|o| o == "node-3");
    let moved = wait_settled(&named(&names, &nodes), certs, joiner_owns).await;
    let taken = owned_by(&moved, "node-3");
    let handed = wait_acked_on(&record, phase, &taken, joined_at).await;
    let mut revocations = 0.0;
    for node in &nodes[..3] {
        revocations += metric(node, "gavel_kafka_revocations_total", &[]).await;
    }
    assert!(
        revocations >= taken.len() as f64,
        "{revocations} revocations, {taken:?} moved"
    );

    let record = bidding.stop().await;
    // Each node that gave a partition up follows it on from the state its engine held.
    for p in &taken {
        let giver = names.iter().position(|n| *n == owners[p]).unwrap();
        let line = wait_followed(&nodes[giver], *p).await;
        eprintln!(
            "group: {} follows the partition it gave up: {line}",
            names[giver]
        );
    }
    eprintln!(
        "group: {owners:?} at first; node-1 killed, restarted and acked again on {restarted:?} \
         {back:?} after the kill; node-3 joined and acked on {taken:?} {handed:?} after its \
         start ({moved:?}); {} bids placed",
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
    let acks: Vec<Ack> = (record.acks.lock().unwrap().iter())
        .map(|(ack, _)| ack.clone())
        .collect();
    let kafka = checker_config(&fixture.broker, TOPIC, PARTITIONS, LEASE_MS);
    tokio::task::spawn_blocking(move || check_topic(kafka, fixture.dir.path(), &acks, "group"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6.0 never reassigns an expired member's partitions (docs/cluster.md)"]
async fn a_killed_members_partitions_move_to_the_survivors_after_its_session_times_out() {
    let fixture = Fixture::new();
    let (certs, start) = (&fixture.certs, |name: &str| fixture.start(name));
    let names = ["node-0", "node-1", "node-2"];
    let (mut nodes, owners) = form(&names, &start, certs).await;
    let bidding = Bidding::start(&nodes[0], certs).await;
    let phase = next_phase(&bidding.record);
    let killed_at = kill(&mut nodes[1]);
    let orphaned = owned_by(&owners, "node-1");
    let survivors = [("node-0", &nodes[0]), ("node-2", &nodes[2])];
    let moved = wait_settled(&survivors, certs, |_| true).await;
    let taken = wait_acked_on(&bidding.record, phase, &orphaned, killed_at).await;
    eprintln!("group: node-1's {orphaned:?} taken over {taken:?} after the kill ({moved:?})");
    bidding.stop().await;
}

/// Rounds of [`group_takeover_time`] (`GAVEL_GROUP_ROUNDS`).
const ROUNDS: u64 = 5;

/// Measures, over `GAVEL_GROUP_ROUNDS` rounds, the time from a SIGKILL of a group member
/// that is restarted at once under its instance id to the first accepted (durable-acked) bid
/// on each of its partitions, with the SDK bidding through another node. Not a CI test (a
/// measurement; on tansu 0.6.0 a killed member's partitions move only with its restart):
/// `cargo test --release -p gavel --test group -- --ignored group_takeover_time --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release"]
async fn group_takeover_time() {
    let rounds = common::crash::env_u64("GAVEL_GROUP_ROUNDS", ROUNDS);
    let fixture = Fixture::new();
    let (certs, start) = (&fixture.certs, |name: &str| fixture.start(name));
    let names = ["node-0", "node-1", "node-2"];
    let (mut nodes, owners) = form(&names, &start, certs).await;
    let bidding = Bidding::start(&nodes[0], certs).await;
    let mut times = Vec::new();
    for round in 0..rounds {
        let victim = 1 + (round % 2) as usize;
        let phase = next_phase(&bidding.record);
        let killed_at = kill(&mut nodes[victim]);
        nodes[victim] = start(names[victim]);
        let partitions = owned_by(&owners, names[victim]);
        let took = wait_acked_on(&bidding.record, phase, &partitions, killed_at).await;
        eprintln!(
            "group takeover round {round}: {} {partitions:?} acked again {took:?} after the kill",
            names[victim]
        );
        times.push(took);
    }
    bidding.stop().await;
    times.sort();
    eprintln!(
        "group takeover (SIGKILL + restart under the instance id → first accepted bid on each \
         of its partitions), {rounds} rounds: p50 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
