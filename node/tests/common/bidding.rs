//! SDK bidding under load across the nodes of one Kafka log, for the multi-node tests
//! (`routing.rs`, `group.rs`): bidding tasks that record every durable ack, the metrics of a
//! node, and the check that every ack is in the topic as replayed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gavel_client::{Bid, BidError, Client};
use gavel_node::{Node, NodeConfig};
use gavel_wal::kafka::{KafkaConfig, KafkaRecords};

use super::crash::{Ack, Reference};
use super::https::plain_get;
use super::kafka::Broker;
use super::served::Served;

/// The sum of the series of metric `name` with all of `labels` (`key="value"` each) on a
/// node's metrics port (a series without labels counts when `labels` is empty).
pub async fn metric(node: &Served, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = plain_get(node.metrics, "/metrics").await;
    let text = String::from_utf8_lossy(&text).into_owned();
    let series = text.lines().filter_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix('{')
            .or_else(|| rest.starts_with(' ').then_some(rest))
    });
    let matching = series.filter(|rest| labels.iter().all(|l| rest.contains(l)));
    let values = matching.filter_map(|rest| rest.rsplit_once(' ')?.1.parse::<f64>().ok());
    values.sum()
}

/// The SDK's configuration for `node` (`bidder-1` of the dev certificates `certs`): short
/// connect and reconnect times, a dead node noticed within 2 s (docs/quic.md, "Several
/// nodes"), requests and durable waits bounded by `wait`.
pub fn client_config(
    node: &Served,
    certs: &gavel_transport::tls::dev::DevCerts,
    wait: Duration,
) -> gavel_client::ClientConfig {
    let mut config = gavel_client::ClientConfig::from_cert_dir(node.quic, &certs.dir, "bidder-1")
        .expect("the dev certs");
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = wait;
    config.durable_timeout = wait;
    config.reconnect_backoff_max = Duration::from_millis(500);
    config.idle_timeout = Duration::from_secs(2);
    config.keep_alive_interval = Duration::from_millis(500);
    config
}

/// What the bidding tasks share: the acks seen, the errors, the phase and the stop.
#[derive(Default)]
pub struct Record {
    /// Durable acks seen, with the phase the bid was placed in.
    pub acks: Mutex<Vec<(Ack, u64)>>,
    pub errors: Mutex<Vec<String>>,
    /// Accepted bids whose durable ack never came, and why.
    pub lost: Mutex<Vec<(u64, BidError)>>,
    /// Bids placed (Ok) so far.
    pub placed: AtomicU64,
    /// The test's phase (0 at first; e.g. 1 after a kill), recorded with each bid placed.
    pub phase: AtomicU64,
    pub stop: AtomicBool,
}

/// One bidding task: rounds over its auctions (every `step`-th of `1..=auctions` from
/// `first`), each bid higher than its last on the auction by 100 (the default increment
/// table's largest step, so it is never too low), a bid id per (auction, round);
/// each durable ack awaited on its own task.
pub async fn bid_on(client: Client, (first, step, auctions): (u64, u64, u64), record: Arc<Record>) {
    let mut round = 0u64;
    while !record.stop.load(Ordering::Acquire) {
        for auction in (first..=auctions).step_by(step as usize) {
            let id = (u128::from(auction) << 32) | u128::from(round + 1);
            let bid = Bid::new(auction, 200 + 100 * round).with_id(id);
            let phase = record.phase.load(Ordering::Acquire);
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
                                record.acks.lock().unwrap().push((ack, phase));
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

/// Waits until `placed` bids were placed; fails after `wait`.
pub async fn wait_placed(record: &Record, placed: u64, wait: Duration) {
    let deadline = Instant::now() + wait;
    while record.placed.load(Ordering::Acquire) < placed {
        assert!(
            Instant::now() < deadline,
            "only {} bids placed",
            record.placed.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every ack is in the topic `kafka.topic` as replayed; a node replaying every partition
/// (in `<dir>/checker`) has the state hash of an independent replay and answers a retry of
/// each auction's last acked bid `DUPLICATE`. `what` names the test in what it prints.
pub fn check_topic(kafka: KafkaConfig, dir: &std::path::Path, acks: &[Ack], what: &str) {
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
        "{what}: {} durable acks all in the topic; {checked} retries answered DUPLICATE",
        acks.len()
    );
    all.shutdown(false).unwrap();
}

/// A broker's Kafka log settings for a checker of `topic`.
pub fn checker_config(broker: &Broker, topic: &str, partitions: u32, lease_ms: u64) -> KafkaConfig {
    KafkaConfig {
        brokers: broker.bootstrap(),
        topic: topic.to_owned(),
        partitions: partitions as i32,
        writer_lease_ms: lease_ms,
        owner: "checker".to_owned(),
        ..KafkaConfig::default()
    }
}
