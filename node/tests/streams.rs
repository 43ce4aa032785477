//! Live price streams over real sockets on 127.0.0.1: a durable node (temporary directory),
//! the development PKI, `serve_https` with its fan-out workers; watchers are tokio-tungstenite
//! clients on `/v1/ws` (`gavel.v1.json`), bids go through a bidder's WebSocket
//! (`gavel.v1.proto`), auctions through the admin API.
//!
//! Covered: a wildcard subscription gets `Subscribed`, the snapshot of every matching auction
//! and then updates of matching auctions only, including one created later; refusals
//! (`BAD_TOPIC`, `LIMIT_EXCEEDED`); a paced watcher receives fewer updates than bids, in
//! increasing `seq`, ending with the latest price; a cancel is delivered as `AuctionClosed`
//! then `AuctionSettled`; a reconnecting watcher resuming from its positions gets only what
//! moved; a watcher that stops reading is closed as a slow consumer (and counted) while a
//! fast watcher of the same auctions keeps getting the latest prices.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::https::{Setup, TestNode, WAIT};
use common::stream::{Bidder, create, now_us};
use futures_util::{SinkExt, StreamExt};
use gavel_transport::Limits;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Socket = WebSocketStream<TlsStream<TcpStream>>;

const ADMIN: Option<&str> = Some("admin/admin");
const WATCHER: Option<&str> = Some("watcher/watcher-1");

/// The next JSON message of a watcher (control frames skipped).
async fn next(socket: &mut Socket) -> Value {
    loop {
        if let Message::Text(text) = next_message(socket).await {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// A JSON watcher subscribed to `patterns` at `interval_ms`; returns the socket and the
/// `Subscribed` answer.
async fn watch(
    node: &TestNode,
    patterns: &[&str],
    interval_ms: u32,
    resume: Value,
) -> (Socket, Value) {
    let mut socket = node.ws(WATCHER, "gavel.v1.json", None).await.unwrap();
    let request = json!({"requestId": "1", "subscribe": {
        "patterns": patterns, "intervalMs": interval_ms, "resume": resume,
    }});
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    let answer = next(&mut socket).await;
    (socket, answer)
}

/// `(kind, auction id, seq, price)` of a stream message.
fn summary(message: &Value) -> (String, u64, u64, u64) {
    let num = |v: &Value| v.as_str().map_or(0, |s| s.parse::<u64>().unwrap());
    for (kind, id_path) in [
        ("priceUpdate", "/auctionId"),
        ("auctionSnapshot", "/rules/auctionId"),
        ("auctionClosed", "/auctionId"),
        ("auctionSettled", "/auctionId"),
    ] {
        if let Some(body) = message.get(kind) {
            let id = num(body.pointer(id_path).unwrap_or(&Value::Null));
            return (kind.to_owned(), id, num(&body["seq"]), num(&body["price"]));
        }
    }
    panic!("not a stream message: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subscription_gets_snapshots_then_matching_updates_only() {
    let node = TestNode::start(Setup {
        limits: Limits {
            subscriptions_per_connection_max: 2,
            ws_message_bytes_max: 4 * 1024,
            http_body_bytes_max: 4 * 1024,
            ..Limits::default()
        },
        ..Setup::default()
    })
    .await;
    create(&node, 1, "energy.eu.de.a1").await;
    create(&node, 2, "energy.us.tx.a2").await;
    let mut bidder = Bidder::connect(&node).await;

    let (mut watcher, answer) = watch(&node, &["energy.eu.>"], 0, json!([])).await;
    assert_eq!(answer["subscribed"]["subscriptions"], 1, "{answer}");
    let snapshot = next(&mut watcher).await;
    assert_eq!(summary(&snapshot).0, "auctionSnapshot", "{snapshot}");
    assert_eq!(
        summary(&snapshot).1,
        1,
        "only the matching auction: {snapshot}"
    );

    bidder.bid(2, 100).await;
    bidder.bid(1, 100).await;
    let update = next(&mut watcher).await;
    assert_eq!(
        summary(&update),
        ("priceUpdate".into(), 1, 2, 100),
        "{update}"
    );
    assert_eq!(update["priceUpdate"]["epoch"], "1", "{update}");

    // An auction created later that matches is delivered, as a snapshot first.
    create(&node, 3, "energy.eu.it.a3").await;
    let later = next(&mut watcher).await;
    assert_eq!(summary(&later).0, "auctionSnapshot", "{later}");
    assert_eq!(summary(&later).1, 3, "{later}");
    bidder.bid(2, 105).await;
    bidder.bid(3, 100).await;
    let update = next(&mut watcher).await;
    assert_eq!(
        summary(&update),
        ("priceUpdate".into(), 3, 2, 100),
        "{update}"
    );

    // Refusals change nothing.
    let bad = json!({"requestId": "2", "subscribe": {"patterns": ["energy.>.de"]}});
    watcher.send(Message::text(bad.to_string())).await.unwrap();
    let answer = next(&mut watcher).await;
    assert_eq!(answer["error"]["code"], "ERROR_CODE_BAD_TOPIC", "{answer}");
    let many =
        json!({"requestId": "3", "subscribe": {"topics": ["x.y"], "patterns": ["metals.>"]}});
    watcher.send(Message::text(many.to_string())).await.unwrap();
    let answer = next(&mut watcher).await;
    assert_eq!(
        answer["error"]["code"], "ERROR_CODE_LIMIT_EXCEEDED",
        "{answer}"
    );
    bidder.bid(1, 105).await;
    let update = next(&mut watcher).await;
    assert_eq!(
        summary(&update),
        ("priceUpdate".into(), 1, 3, 105),
        "still subscribed: {update}"
    );

    // A cancel: close then settlement, never conflated away.
    let (status, _, _) = node
        .request(ADMIN, "POST", "/v1/auctions/3/cancel", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let closed = next(&mut watcher).await;
    assert_eq!(summary(&closed).0, "auctionClosed", "{closed}");
    assert_eq!(
        closed["auctionClosed"]["reason"], "CLOSE_REASON_CANCELLED",
        "{closed}"
    );
    let settled = next(&mut watcher).await;
    assert_eq!(summary(&settled).0, "auctionSettled", "{settled}");
    assert_eq!(summary(&settled).1, 3, "{settled}");
    drop(watcher);

    // Reconnect and resume: auction 1 seen at its current seq (3) is not sent again;
    // auction 3 seen at seq 2 moved (closed, settled) and comes as a snapshot.
    let resume = json!([
        {"auctionId": "1", "epoch": "1", "seq": "3"},
        {"auctionId": "3", "epoch": "1", "seq": "2"},
    ]);
    let (mut again, answer) = watch(&node, &["energy.eu.>"], 0, resume).await;
    assert_eq!(answer["subscribed"]["subscriptions"], 1, "{answer}");
    let moved = next(&mut again).await;
    assert_eq!(summary(&moved).0, "auctionSnapshot", "{moved}");
    assert_eq!(summary(&moved).1, 3, "only what moved: {moved}");
    assert_eq!(
        moved["auctionSnapshot"]["phase"], "PHASE_SETTLED",
        "{moved}"
    );
    bidder.bid(1, 110).await;
    let update = next(&mut again).await;
    assert_eq!(
        summary(&update),
        ("priceUpdate".into(), 1, 4, 110),
        "{update}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_watcher_gets_fewer_updates_ending_with_the_latest_price() {
    const BIDS: u64 = 30;
    let node = TestNode::start(Setup::default()).await;
    create(&node, 7, "metals.cu.lot-7").await;
    let mut bidder = Bidder::connect(&node).await;
    let (mut paced, _) = watch(&node, &["metals.*.lot-7"], 200, json!([])).await;
    let (mut fast, _) = watch(&node, &["metals.>"], 0, json!([])).await;
    for watcher in [&mut paced, &mut fast] {
        assert_eq!(summary(&next(watcher).await).0, "auctionSnapshot");
    }
    let last_price = 100 + 5 * (BIDS - 1);
    for n in 0..BIDS {
        bidder.bid(7, 100 + 5 * n).await;
    }
    for (name, watcher) in [("paced", &mut paced), ("fast", &mut fast)] {
        let mut seen = Vec::new();
        loop {
            let message = next(watcher).await;
            let (kind, id, seq, price) = summary(&message);
            assert_eq!((kind.as_str(), id), ("priceUpdate", 7), "{message}");
            if let Some(&(seq_before, _)) = seen.last() {
                assert!(
                    seq > seq_before,
                    "{name}: seq went back: {seen:?} then {seq}"
                );
            }
            seen.push((seq, price));
            if price == last_price {
                break;
            }
        }
        if name == "paced" {
            assert!(
                (seen.len() as u64) < BIDS / 2,
                "paced at 200 ms, {BIDS} bids conflate: {seen:?}"
            );
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_while_a_fast_watcher_keeps_up() {
    const AUCTIONS: u64 = 5;
    // Rounds (one bid per auction): the loopback socket buffers take megabytes to fill.
    const BIDS_MAX: u64 = 20_000;
    let node = TestNode::start(Setup {
        limits: Limits {
            // Five auctions' pending updates (≈ 60 bytes each) exceed it; one snapshot
            // (≈ 300 bytes) stays under twice it.
            outbound_bytes_max_per_connection: 200,
            slow_consumer_timeout_ms: 300,
            ..Setup::default().limits
        },
        ..Setup::default()
    })
    .await;
    let (mut fast, _) = watch(&node, &["metals.>"], 0, json!([])).await;
    let mut slow = node.ws_small_window(WATCHER, "gavel.v1.json", 4096).await;
    let subscribe = json!({"requestId": "1", "subscribe": {"patterns": ["metals.>"]}});
    slow.send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    // The slow watcher reads nothing from here on.

    let latest = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));
    let reader = {
        let latest = Arc::clone(&latest);
        tokio::spawn(async move {
            loop {
                let message = next(&mut fast).await;
                let (kind, id, _, price) = summary(&message);
                if kind == "priceUpdate" {
                    latest.lock().unwrap().insert(id, price);
                }
            }
        })
    };
    for id in 0..AUCTIONS {
        create(&node, 100 + id, &format!("metals.cu.lot-{id}")).await;
    }
    let mut bidder = Bidder::connect(&node).await;
    let started = Instant::now();
    let mut bids = 0;
    // Rounds of one bid per auction, sent 50 rounds at a time, until the slow watcher's
    // socket buffers are full and its outbox stays over the bound.
    while slow_disconnects() == 0 {
        assert!(
            bids < BIDS_MAX && started.elapsed() < Duration::from_secs(40),
            "no slow-consumer disconnect after {bids} rounds"
        );
        let batch: Vec<(u64, u64)> = (bids..bids + 50)
            .flat_map(|round| (0..AUCTIONS).map(move |id| (100 + id, 100 + 100 * round)))
            .collect();
        bidder.bids(&batch).await;
        bids += 50;
    }
    // The fast watcher still gets every auction's latest price promptly.
    let last = 100 + 100 * bids;
    bidder.bid(100, last).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while latest.lock().unwrap().get(&100) != Some(&last) {
        assert!(
            Instant::now() < deadline,
            "the fast watcher fell behind: {:?}",
            latest.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!reader.is_finished(), "the fast watcher's socket is open");
    reader.abort();
    drop(slow);
    node.stop().await;
}

/// `gavel_stream_slow_consumer_disconnects_total{transport="ws"}`, as `/metrics` renders it
/// (read in process: a scrape over TLS per check would dominate the test's time).
fn slow_disconnects() -> u64 {
    let text = common::https::metrics_handle().render();
    text.lines()
        .find(|l| l.starts_with("gavel_stream_slow_consumer_disconnects_total{transport=\"ws\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buy_now_close_presence_and_decision_times_reach_watchers() {
    let node = TestNode::start(Setup::default()).await;
    let now = now_us();
    let body = json!({"rules": {
        "auctionId": "21",
        "topic": "art.prints.lot-21",
        "english": {"startPrice": "100"},
        "buyNow": "500",
        "startsAtUs": (now - 1_000_000).to_string(),
        "endsAtUs": (now + 600_000_000).to_string(),
    }});
    node.create_auction(body.to_string().into_bytes()).await;
    let mut bidder = Bidder::connect(&node).await;
    let (mut first, _) = watch(&node, &["art.>"], 0, json!([])).await;
    let snapshot = next(&mut first).await;
    assert_eq!(
        snapshot["auctionSnapshot"]["watchers"], 1,
        "only this watcher yet: {snapshot}"
    );
    assert_eq!(
        snapshot["auctionSnapshot"]["biddersConnected"], 1,
        "{snapshot}"
    );
    let (mut second, _) = watch(&node, &["art.prints.lot-21"], 0, json!([])).await;
    let snapshot = next(&mut second).await;
    assert_eq!(snapshot["auctionSnapshot"]["watchers"], 2, "{snapshot}");

    // An update carries the decision's time: the same instant the auction's state records.
    bidder.bid(21, 150).await;
    let update = next(&mut first).await;
    assert_eq!(summary(&update), ("priceUpdate".into(), 21, 2, 150));
    assert_eq!(update["priceUpdate"]["watchers"], 2, "{update}");
    let (status, _, body) = node.request(ADMIN, "GET", "/v1/auctions/21", None).await;
    assert_eq!(status, StatusCode::OK);
    let state: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        update["priceUpdate"]["acceptedAtUs"], state["changedAtUs"],
        "decision time, not the fan-out's read time: {update} vs {state}"
    );

    // A bid at the buy-now price closes the auction: both watchers get the close and the
    // settlement, in order, once the bid is durable.
    bidder.bid(21, 500).await;
    for watcher in [&mut first, &mut second] {
        let mut message = next(watcher).await;
        if summary(&message).0 == "priceUpdate" {
            message = next(watcher).await;
        }
        assert_eq!(summary(&message).0, "auctionClosed", "{message}");
        assert_eq!(
            message["auctionClosed"]["reason"], "CLOSE_REASON_BUY_NOW",
            "{message}"
        );
        let settled = next(watcher).await;
        assert_eq!(summary(&settled).0, "auctionSettled", "{settled}");
        assert_eq!(
            settled["auctionSettled"]["winner"]["price"], "500",
            "{settled}"
        );
        assert_eq!(
            settled["auctionSettled"]["winner"]["bidderId"], "bidder-1",
            "{settled}"
        );
    }
    let metrics = common::https::metrics_handle().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gavel_presence_watchers ")),
        "presence gauges are exported"
    );
    node.stop().await;
}

/// The next data message (binary or text) of a socket, control frames skipped.
async fn next_message(socket: &mut Socket) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        if matches!(message, Message::Binary(_) | Message::Text(_)) {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_subprotocol_sends_one_edge_frame_per_binary_message_and_answers_as_json() {
    use gavel_edge_proto::{Decoded, EdgeDecoder};
    use gavel_proto::pb;
    use prost::Message as _;
    let node = TestNode::start(Setup::default()).await;
    create(&node, 1, "energy.eu.de.a1").await;
    let mut bidder = Bidder::connect(&node).await;
    let mut socket = node.ws(WATCHER, "gavel.v1.edge", None).await.unwrap();
    let subscribe = pb::ClientMessage {
        request_id: 1,
        body: Some(pb::client_message::Body::Subscribe(pb::Subscribe {
            patterns: vec!["energy.>".into()],
            ..pb::Subscribe::default()
        })),
    };
    socket
        .send(Message::binary(subscribe.encode_to_vec()))
        .await
        .unwrap();
    let Message::Text(answer) = next_message(&mut socket).await else {
        panic!("the answer is JSON text")
    };
    let answer: Value = serde_json::from_str(answer.as_str()).unwrap();
    assert_eq!(answer["subscribed"]["subscriptions"], 1, "{answer}");
    let mut decoder = EdgeDecoder::new(16 * 1024, 10);
    let mut states = Vec::new();
    let mut read_frame = async |socket: &mut Socket| {
        let Message::Binary(frame) = next_message(socket).await else {
            panic!("stream updates are binary edge frames")
        };
        let mut decoded = Vec::new();
        decoder.decode_frame(&frame, &mut decoded).unwrap();
        decoded
    };
    let keyframe = read_frame(&mut socket).await;
    assert!(
        matches!(&keyframe[..], [Decoded::State(s)] if s.auction_id == 1 && s.price.is_none()),
        "{keyframe:?}"
    );
    bidder.bid(1, 100).await;
    while !states
        .iter()
        .any(|s: &gavel_edge_proto::AuctionState| s.price == Some(100))
    {
        for decoded in read_frame(&mut socket).await {
            let Decoded::State(state) = decoded else {
                panic!("every record applies: {decoded:?}")
            };
            states.push(state);
        }
    }
    let metrics = node.metrics().await;
    let edge_bytes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gavel_stream_edge_bytes_total{transport=\"ws\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(edge_bytes.is_some_and(|b| b > 0.0), "{metrics}");
    node.stop().await;
}
