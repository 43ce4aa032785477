//! End to end on loopback: a real node (`gavel serve --dev`), the agent (`gavel-edge`) with
//! the device certificate, and mosquitto — prices reach a client that is not the agent
//! (mosquitto_sub) and the agent's SSE; queued bids survive a SIGKILLed node and a
//! SIGKILLed agent and reach the node exactly once, in order; a restarted broker gets the
//! current state again.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::time::Duration;

use common::broker::{self, Mosquitto};
use common::node::{NodeProcess, eventually};
use common::relay::Relay;
use common::{AgentProcess, http, parse_json};

/// Generous bounds: the node restarts, the SDK and the agent back off (cap 2 s here).
const WAIT: Duration = Duration::from_secs(60);

fn agent_args(node: &NodeProcess, broker: &Mosquitto, data: &std::path::Path) -> Vec<String> {
    let mqtt = format!("127.0.0.1:{}", broker.port);
    agent_args_to(node, node.quic_port, &mqtt, data)
}

/// The agent's flags for the node's certificates, a QUIC port (the node's or a relay's)
/// and an MQTT broker (or `off`).
fn agent_args_to(
    node: &NodeProcess,
    quic_port: u16,
    mqtt: &str,
    data: &std::path::Path,
) -> Vec<String> {
    [
        "--node",
        &format!("127.0.0.1:{quic_port}"),
        "--cert-dir",
        node.certs().to_str().unwrap(),
        "--mqtt-broker",
        mqtt,
        "--data-dir",
        data.to_str().unwrap(),
        "--patterns",
        "energy.>",
        "--reconnect-backoff-max-ms",
        "2000",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn start_agent(args: &[String]) -> AgentProcess {
    AgentProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Queues a bid of `amount` on auction 1; its bid id.
fn bid(agent: &AgentProcess, amount: u64) -> String {
    let body = format!(r#"{{"auction_id": 1, "amount": {amount}, "tag": "a{amount}"}}"#);
    let (status, answer) = http(agent.http, "POST", "/v1/bids", &body);
    assert_eq!(status, 202, "{answer}");
    parse_json(&answer)["bid_id"].as_str().unwrap().to_owned()
}

/// Waits for the bid's final status; its JSON.
fn outcome(agent: &AgentProcess, bid_id: &str) -> serde_json::Value {
    eventually(WAIT, &format!("an outcome of bid {bid_id}"), || {
        let (status, answer) = http(agent.http, "GET", &format!("/v1/bids/{bid_id}"), "");
        let answer = (status == 200).then(|| parse_json(&answer))?;
        (answer["status"] != "queued").then_some(answer)
    })
}

/// The retained state of auction 1 as mosquitto_sub reads it, once `wanted` holds.
fn retained(
    broker: &Mosquitto,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(WAIT, what, || {
        let seen = broker::subscribe(broker.port, "gavel/auctions/1", 1, 5, false);
        let state = parse_json(&seen.first()?.1);
        wanted(&state).then_some(state)
    })
}

/// The retained state of auction 1 once its price is `price`.
fn retained_price(broker: &Mosquitto, price: u64) -> serde_json::Value {
    retained(broker, &format!("a retained price of {price}"), |state| {
        state["price"] == price
    })
}

/// The node's own count of accepted bids on auction 1 (admin API).
fn node_bids_accepted(node: &NodeProcess) -> u64 {
    let (status, body) = node.admin("GET", "/v1/auctions/1", None);
    assert_eq!(status, 200, "{body}");
    parse_json(&body)["bidsAccepted"]
        .as_str()
        .map_or(0, |n| n.parse().unwrap())
}

/// Reads the agent's SSE until an event of auction 1 with `price`.
fn sse_sees_price(agent: &AgentProcess, price: u64) {
    let mut stream = std::net::TcpStream::connect(agent.http).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET /v1/stream HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    let wanted = format!(r#""price":{price}"#);
    let found = BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .any(|line| {
            line.starts_with("data: ")
                && line.contains(r#""auction_id":1"#)
                && line.contains(&wanted)
        });
    assert!(found, "no SSE event with {wanted}");
}

#[test]
fn prices_reach_mqtt_and_sse_and_queued_bids_survive_kills_of_the_node_and_the_agent() {
    let node_dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(node_dir.path());
    node.create_english(1, "energy.de.a1");
    let mut broker = Mosquitto::start();
    let agent_dir = tempfile::tempdir().unwrap();
    let args = agent_args(&node, &broker, agent_dir.path());
    let mut agent = start_agent(&args);

    // Prices: the keyframe of the subscribe, then a bid's change, as retained MQTT
    // messages read by mosquitto_sub and on the agent's SSE.
    let keyframe = retained(&broker, "the subscribe's keyframe", |state| {
        state["topic"] == "energy.de.a1"
    });
    assert_eq!(keyframe["bids_accepted"], 0);
    let first = bid(&agent, 150);
    let accepted = outcome(&agent, &first);
    assert_eq!(
        (accepted["status"].as_str(), accepted["price"].as_u64()),
        (Some("accepted"), Some(150))
    );
    let state = retained_price(&broker, 150);
    assert_eq!(state["leader"], "device-1");
    sse_sees_price(&agent, 150);

    // The node is SIGKILLed; bids queued meanwhile reach the restarted node once each, in
    // order, and their outcomes reach the local client.
    node.kill();
    let queued: Vec<String> = [160, 170, 180]
        .iter()
        .map(|&amount| bid(&agent, amount))
        .collect();
    node.restart();
    let outcomes: Vec<serde_json::Value> = queued.iter().map(|id| outcome(&agent, id)).collect();
    let seqs: Vec<u64> = outcomes
        .iter()
        .map(|o| o["seq"].as_u64().unwrap())
        .collect();
    assert!(
        outcomes.iter().all(|o| o["status"] == "accepted"),
        "{outcomes:?}"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_eq!(node_bids_accepted(&node), 4, "each bid once");
    retained_price(&broker, 180);

    // The agent is SIGKILLed with bids queued on disk (the node is down): nothing is lost.
    node.kill();
    let queued: Vec<String> = [190, 200]
        .iter()
        .map(|&amount| bid(&agent, amount))
        .collect();
    agent.signal("-KILL");
    agent.wait_exit(Duration::from_secs(10));
    agent = start_agent(&args);
    node.restart();
    for id in &queued {
        assert_eq!(outcome(&agent, id)["status"], "accepted");
    }
    assert_eq!(node_bids_accepted(&node), 6, "each bid once");
    retained_price(&broker, 200);

    // The broker restarts empty: the agent backs off, reconnects and publishes again.
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    retained_price(&broker, 200);
    let (_, metrics) = http(agent.http, "GET", "/metrics", "");
    assert!(metrics.contains("gavel_edge_connected 1"), "{metrics}");
    assert!(metrics.contains("gavel_edge_mqtt_connected 1"), "{metrics}");
}

/// Bids queued on auction 1 from `from` up, 10 apart; their bid ids, in order.
fn bids(agent: &AgentProcess, from: u64, count: u64) -> Vec<String> {
    (0..count).map(|n| bid(agent, from + 10 * n)).collect()
}

#[test]
fn bids_in_flight_when_the_node_is_killed_reach_it_once_each_in_order() {
    let node_dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(node_dir.path());
    node.create_english(1, "energy.de.a1");
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&agent_args_to(
        &node,
        node.quic_port,
        "off",
        agent_dir.path(),
    ));
    // Each bid 10 above the one before: one decided out of order would be too low.
    const BIDS: u64 = 60;
    let ids = bids(&agent, 150, BIDS);
    // The node dies while the forwarder's window holds bids placed and not yet durable
    // (or, on a slow machine, with bids still queued: the same guarantees hold).
    eventually(WAIT, "the node accepting some bids", || {
        (node_bids_accepted(&node) >= BIDS / 4).then_some(())
    });
    node.kill();
    node.restart();
    let outcomes: Vec<serde_json::Value> = ids.iter().map(|id| outcome(&agent, id)).collect();
    assert!(
        outcomes.iter().all(|o| o["status"] == "accepted"),
        "{outcomes:?}"
    );
    let seqs: Vec<u64> = outcomes
        .iter()
        .map(|o| o["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_eq!(node_bids_accepted(&node), BIDS, "each bid once");
    let (_, metrics) = http(agent.http, "GET", "/metrics", "");
    assert!(
        metrics.contains(&format!(
            "gavel_edge_bids_forwarded_total{{outcome=\"accepted\"}} {BIDS}"
        )),
        "{metrics}"
    );
}

/// The agent's held state of auction 1.
fn held(agent: &AgentProcess) -> serde_json::Value {
    let (status, body) = http(agent.http, "GET", "/v1/auctions/1", "");
    if status == 200 {
        parse_json(&body)
    } else {
        serde_json::Value::Null
    }
}

/// A counter's value on the agent's /metrics (0 when absent).
fn counter(agent: &AgentProcess, name: &str) -> u64 {
    let (_, metrics) = http(agent.http, "GET", "/metrics", "");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn price_datagrams_lost_in_an_outage_come_back_as_keyframes() {
    let node_dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(node_dir.path());
    node.create_english(1, "energy.de.a1");
    let relay = Relay::start(node.quic_port);
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = agent_args_to(&node, relay.port, "off", agent_dir.path());
    args.push("--datagrams".into());
    let agent = start_agent(&args);
    for id in bids(&agent, 150, 3) {
        assert_eq!(outcome(&agent, &id)["status"], "accepted");
    }
    eventually(WAIT, "price 170 held", || {
        (held(&agent)["price"] == 170).then_some(())
    });
    assert!(
        counter(&agent, "gavel_edge_datagrams_total") >= 1,
        "prices came as datagrams"
    );
    // An outage of everything the node sends while it accepts the next bid: the bid's
    // answer and durable ack come when QUIC retransmits them; its price datagram is lost.
    relay.outage(true);
    let last = bid(&agent, 180);
    eventually(WAIT, "the node accepting the bid", || {
        (node_bids_accepted(&node) == 4).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(held(&agent)["price"], 170, "the outage held the price back");
    relay.outage(false);
    assert_eq!(outcome(&agent, &last)["status"], "accepted");
    // The periodic check of auctions datagrams touched brings a keyframe of it.
    let state = eventually(WAIT, "price 180 held", || {
        let state = held(&agent);
        (state["price"] == 180).then_some(state)
    });
    let (_, node_state) = node.admin("GET", "/v1/auctions/1", None);
    assert_eq!(
        state["seq"].as_u64().map(|s| s.to_string()),
        parse_json(&node_state)["seq"].as_str().map(str::to_owned),
        "the node's seq"
    );
    assert!(
        counter(
            &agent,
            "gavel_edge_keyframe_requests_total{why=\"datagram_check\"}"
        ) >= 1
    );
}
