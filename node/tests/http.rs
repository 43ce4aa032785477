//! The HTTPS port over real sockets on 127.0.0.1: a durable node (temporary directory),
//! `NodeBackend` + `Gateway`, the development PKI, and `serve_https`; clients are hyper
//! (HTTP/1.1 and HTTP/2 over tokio-rustls, with or without a client certificate) and
//! tokio-tungstenite.
//!
//! Covered: the admin API's round trip and its refusals (roles, bad JSON, invalid rules,
//! oversized bodies, unknown ids, conflicts) with their counters in `/metrics`; the probes
//! before and after recovery; WebSocket bids in both subprotocols with their durable acks;
//! an anonymous watcher's bid refused; handshakes refused for a missing subprotocol or a
//! foreign Origin; an oversized message closing only its own socket with 1009; a malformed
//! message answered while the socket stays; shutdown closing sockets with 1001.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::https::{Setup, TestNode, WAIT, plain_get};
use futures_util::{SinkExt, StreamExt};
use gavel_proto::pb;
use gavel_transport::Limits;
use hyper::StatusCode;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Socket = WebSocketStream<TlsStream<TcpStream>>;

const ADMIN: Option<&str> = Some("admin/admin");
const BIDDER_1: Option<&str> = Some("bidder/bidder-1");
const BIDDER_2: Option<&str> = Some("bidder/bidder-2");
const WATCHER: Option<&str> = Some("watcher/watcher-1");
const ANONYMOUS: Option<&str> = None;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A `CreateAuction` body: an English auction open now for ten minutes, start price 100.
fn english(id: u64) -> Vec<u8> {
    let now = now_us();
    json!({"rules": {
        "auctionId": id.to_string(),
        "topic": format!("energy.eu.de.block-{id}"),
        "english": {"startPrice": "100"},
        "startsAtUs": (now - 1_000_000).to_string(),
        "endsAtUs": (now + 600_000_000).to_string(),
    }})
    .to_string()
    .into_bytes()
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

async fn create(node: &TestNode, id: u64) -> Value {
    parse(&node.create_auction(english(id)).await)
}

/// The next data message of a socket, skipping control frames.
async fn next_message(socket: &mut Socket) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a readable message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn next_json(socket: &mut Socket) -> Value {
    match next_message(socket).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn next_proto(socket: &mut Socket) -> pb::ServerMessage {
    match next_message(socket).await {
        Message::Binary(bytes) => pb::ServerMessage::decode(bytes.as_ref()).unwrap(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

async fn send_json(socket: &mut Socket, value: Value) {
    socket.send(Message::text(value.to_string())).await.unwrap();
}

/// The close frame the node sends, reading past anything before it.
async fn close_code(socket: &mut Socket) -> CloseCode {
    loop {
        match next_message(socket).await {
            Message::Close(Some(frame)) => return frame.code,
            Message::Close(None) => panic!("a close without a code"),
            _ => continue,
        }
    }
}

fn json_bid(request_id: u64, auction: u64, amount: u64, bid_id: u64) -> Value {
    json!({
        "requestId": request_id.to_string(),
        "placeBid": {
            "auctionId": auction.to_string(),
            "amount": amount.to_string(),
            "bidIdLo": bid_id.to_string(),
            "clientSentAtUs": now_us().to_string(),
        },
    })
}

/// The value of the first sample line of `metric` whose labels contain every `label`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_creates_reads_lists_and_cancels_auctions() {
    let node = TestNode::start(Setup::default()).await;

    let (status, headers, body) = node
        .request(ADMIN, "POST", "/v1/auctions", Some(english(7)))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["location"], "/v1/auctions/7");
    let created = parse(&body);
    assert_eq!(created["rules"]["auctionId"], "7");
    assert_eq!(created["rules"]["english"]["startPrice"], "100");
    assert_eq!(created["phase"], "PHASE_OPEN");
    assert_eq!(created["epoch"], "1");

    // The same id again conflicts; only the admin role may create.
    let (status, _, body) = node
        .request(ADMIN, "POST", "/v1/auctions", Some(english(7)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(parse(&body)["code"], "already_exists");
    let (status, _, body) = node
        .request(BIDDER_1, "POST", "/v1/auctions", Some(english(70)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(parse(&body)["code"], "forbidden");
    let (status, _, body) = node
        .request(ANONYMOUS, "POST", "/v1/auctions", Some(english(71)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(parse(&body)["code"], "unauthenticated");

    // Anyone admitted may read.
    for who in [WATCHER, ANONYMOUS, BIDDER_1] {
        let (status, _, body) = node.request(who, "GET", "/v1/auctions/7", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(parse(&body), created);
    }
    let (status, _, body) = node.request(WATCHER, "GET", "/v1/auctions/99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(parse(&body)["code"], "not_found");
    let (status, _, _) = node.request(WATCHER, "GET", "/v1/auctions/x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, headers, _) = node.request(ADMIN, "PUT", "/v1/auctions", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, POST");
    // A node on its own file log is no cluster (tests/scaleout.rs reads a Kafka node's).
    let (status, _, body) = node.request(WATCHER, "GET", "/v1/cluster", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(parse(&body)["code"], "not_found");
    let (status, headers, _) = node.request(ADMIN, "POST", "/v1/cluster", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");

    // Pages in id order.
    create(&node, 8).await;
    create(&node, 9).await;
    let (status, _, body) = node
        .request(WATCHER, "GET", "/v1/auctions?limit=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let page = parse(&body);
    let ids: Vec<&Value> = page["auctions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["rules"]["auctionId"])
        .collect();
    assert_eq!(ids, ["7", "8"]);
    assert_eq!(page["nextAfterId"], "8");
    let (_, _, body) = node
        .request(WATCHER, "GET", "/v1/auctions?after_id=8&limit=2", None)
        .await;
    let last = parse(&body);
    assert_eq!(last["auctions"].as_array().unwrap().len(), 1);
    assert_eq!(last["auctions"][0]["rules"]["auctionId"], "9");
    assert!(last.get("nextAfterId").is_none(), "{last}");

    // Cancel (POST …/cancel or DELETE); a second cancel conflicts.
    let (status, _, body) = node
        .request(BIDDER_1, "POST", "/v1/auctions/7/cancel", None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = node
        .request(ADMIN, "POST", "/v1/auctions/7/cancel", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&body)["phase"], "PHASE_SETTLED");
    let (status, _, body) = node
        .request(ADMIN, "POST", "/v1/auctions/7/cancel", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(parse(&body)["code"], "already_closed");
    let (status, _, body) = node.request(ADMIN, "DELETE", "/v1/auctions/8", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&body)["phase"], "PHASE_SETTLED");
    let (status, _, _) = node.request(ADMIN, "DELETE", "/v1/auctions/98", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The same API over HTTP/2.
    let (status, body) = node.get_h2(WATCHER, "/v1/auctions/9").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&body)["rules"]["auctionId"], "9");

    let metrics = node.metrics().await;
    for (method, route, status) in [
        ("POST", "/v1/auctions", "201"),
        ("POST", "/v1/auctions", "403"),
        ("POST", "/v1/auctions", "401"),
        ("GET", "/v1/auctions/{id}", "404"),
        ("POST", "/v1/auctions/{id}/cancel", "409"),
        ("DELETE", "/v1/auctions/{id}", "200"),
    ] {
        let labels = [
            format!("method=\"{method}\""),
            format!("route=\"{route}\""),
            format!("status=\"{status}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert!(
            sample(&metrics, "gavel_admin_requests_total", &labels).is_some_and(|v| v >= 1.0),
            "{method} {route} {status} not counted:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("route=\"/v1/auctions/7"),
        "ids never label: {metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_clear_errors_and_counters() {
    let node = TestNode::start(Setup::default()).await;

    let (status, _, body) = node
        .request(
            ADMIN,
            "POST",
            "/v1/auctions",
            Some(b"{\"rules\": ".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = parse(&body);
    assert_eq!(error["code"], "bad_json");
    assert!(
        error["message"].as_str().unwrap().contains("JSON"),
        "{error}"
    );

    // Valid JSON, invalid rules: the end before the start.
    let bad_rules = json!({"rules": {
        "auctionId": "3", "topic": "a.b", "english": {"startPrice": "1"},
        "startsAtUs": "2000", "endsAtUs": "1000",
    }});
    let (status, _, body) = node
        .request(
            ADMIN,
            "POST",
            "/v1/auctions",
            Some(bad_rules.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = parse(&body);
    assert_eq!(error["code"], "invalid_argument");
    assert!(
        error["message"].as_str().unwrap().contains("rules"),
        "{error}"
    );

    // A misspelt field is refused, not ignored.
    let (status, _, _) = node
        .request(
            ADMIN,
            "POST",
            "/v1/auctions",
            Some(br#"{"rulez": {}}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Over http_body_bytes_max (4 KiB here).
    let (status, _, body) = node
        .request(ADMIN, "POST", "/v1/auctions", Some(vec![b' '; 5 * 1024]))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(parse(&body)["code"], "too_large");

    let (status, _, _) = node
        .request(WATCHER, "GET", "/v1/auctions?page=2", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = node.request(WATCHER, "GET", "/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let metrics = node.metrics().await;
    let labels = [
        "method=\"POST\"",
        "route=\"/v1/auctions\"",
        "status=\"400\"",
    ];
    assert!(
        sample(&metrics, "gavel_admin_requests_total", &labels).is_some_and(|v| v >= 3.0),
        "{metrics}"
    );
    let labels = [
        "method=\"POST\"",
        "route=\"/v1/auctions\"",
        "status=\"413\"",
    ];
    assert!(
        sample(&metrics, "gavel_admin_requests_total", &labels).is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_recovery() {
    let node = TestNode::start(Setup {
        ready: false,
        ..Setup::default()
    })
    .await;
    let (status, _, _) = node.request(ANONYMOUS, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = node.request(ANONYMOUS, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&body[..], b"recovering\n");
    let (status, headers, body) = node.request(WATCHER, "GET", "/v1/auctions", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(parse(&body)["code"], "not_ready");

    node.set_ready();
    let (status, _, _) = node.request(ANONYMOUS, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = node.request(WATCHER, "GET", "/v1/auctions", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = node.get_h2(ANONYMOUS, "/readyz").await;
    assert_eq!(status, StatusCode::OK);

    let metrics = node.metrics().await;
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        sample(&metrics, "gavel_build_info", &[&version]),
        Some(1.0),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_bids_get_accepted_then_durable_acks_in_both_subprotocols() {
    let node = TestNode::start(Setup::default()).await;
    create(&node, 21).await;

    // gavel.v1.json, text messages.
    let mut json_socket = node.ws(BIDDER_1, "gavel.v1.json", None).await.unwrap();
    send_json(&mut json_socket, json_bid(1, 21, 100, 1)).await;
    let outcome = next_json(&mut json_socket).await;
    assert_eq!(outcome["requestId"], "1", "{outcome}");
    let accepted = &outcome["bidOutcome"]["accepted"];
    assert_eq!(accepted["price"], "100", "{outcome}");
    assert_eq!(accepted["leader"], "bidder-1", "{outcome}");
    let ack = next_json(&mut json_socket).await;
    assert_eq!(ack["requestId"], "1", "{ack}");
    assert_eq!(ack["durableAck"]["auctionId"], "21", "{ack}");
    assert_eq!(ack["durableAck"]["bidIdLo"], "1", "{ack}");
    assert_eq!(ack["durableAck"]["seq"], accepted["seq"], "{ack}");

    // A retry (same bid id) gets the original outcome and, again, a durable ack.
    send_json(&mut json_socket, json_bid(4, 21, 100, 1)).await;
    let retry = next_json(&mut json_socket).await;
    let rejected = &retry["bidOutcome"]["rejected"];
    assert_eq!(rejected["reason"], "REJECT_REASON_DUPLICATE", "{retry}");
    assert_eq!(rejected["original"]["seq"], accepted["seq"], "{retry}");
    let ack = next_json(&mut json_socket).await;
    assert_eq!(ack["requestId"], "4", "{ack}");
    assert_eq!(ack["durableAck"]["seq"], accepted["seq"], "{ack}");

    // gavel.v1.proto, binary messages.
    let mut proto_socket = node.ws(BIDDER_2, "gavel.v1.proto", None).await.unwrap();
    let bid = pb::ClientMessage {
        request_id: 2,
        body: Some(pb::client_message::Body::PlaceBid(pb::PlaceBid {
            auction_id: 21,
            amount: 150,
            max: None,
            bid_id_hi: 0,
            bid_id_lo: 2,
            client_sent_at_us: now_us(),
        })),
    };
    proto_socket
        .send(Message::Binary(bid.encode_to_vec().into()))
        .await
        .unwrap();
    let outcome = next_proto(&mut proto_socket).await;
    assert_eq!(outcome.request_id, 2);
    let Some(pb::server_message::Body::BidOutcome(pb::BidOutcome {
        outcome: Some(pb::bid_outcome::Outcome::Accepted(accepted)),
    })) = outcome.body
    else {
        panic!("not accepted: {outcome:?}");
    };
    assert_eq!(accepted.price, 150);
    let ack = next_proto(&mut proto_socket).await;
    assert_eq!(ack.request_id, 2);
    let Some(pb::server_message::Body::DurableAck(ack)) = ack.body else {
        panic!("not a durable ack: {ack:?}");
    };
    assert_eq!(
        (ack.auction_id, ack.bid_id_lo, ack.seq),
        (21, 2, accepted.seq)
    );

    // A bid too low is rejected with the next acceptable amount.
    send_json(&mut json_socket, json_bid(3, 21, 120, 3)).await;
    let outcome = next_json(&mut json_socket).await;
    assert_eq!(
        outcome["bidOutcome"]["rejected"]["reason"], "REJECT_REASON_TOO_LOW",
        "{outcome}"
    );

    let metrics = node.metrics().await;
    let accepted = ["transport=\"ws\"", "result=\"accepted\""];
    assert!(
        sample(&metrics, "gavel_bids_total", &accepted).is_some_and(|v| v >= 2.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "gavel_durable_acks_total", &["transport=\"ws\""])
            .is_some_and(|v| v >= 2.0),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_cannot_bid() {
    let node = TestNode::start(Setup::default()).await;
    create(&node, 31).await;
    for who in [ANONYMOUS, WATCHER] {
        let mut socket = node.ws(who, "gavel.v1.json", None).await.unwrap();
        send_json(&mut socket, json_bid(4, 31, 500, 9)).await;
        let outcome = next_json(&mut socket).await;
        assert_eq!(
            outcome["bidOutcome"]["rejected"]["reason"], "REJECT_REASON_FORBIDDEN",
            "{who:?}: {outcome}"
        );
    }
    let (_, _, body) = node.request(WATCHER, "GET", "/v1/auctions/31", None).await;
    assert_eq!(parse(&body)["bidsAccepted"], Value::Null, "no bid counted");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_need_a_subprotocol_and_an_allowed_origin() {
    use tokio_tungstenite::tungstenite::Error;
    let node = TestNode::start(Setup::default()).await;

    match node.ws(BIDDER_1, "chat", None).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
    match node
        .ws(BIDDER_1, "gavel.v1.json", Some("https://evil.example.com"))
        .await
    {
        Err(Error::Http(response)) => assert_eq!(response.status(), StatusCode::FORBIDDEN),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
    // An allowed browser origin, and a client without Origin (not a browser), get in.
    let mut socket = node
        .ws(
            ANONYMOUS,
            "gavel.v1.json",
            Some("https://market.example.com"),
        )
        .await
        .unwrap();
    send_json(
        &mut socket,
        json!({"requestId": "1", "ping": {"nonce": "5"}}),
    )
    .await;
    assert_eq!(next_json(&mut socket).await["pong"]["nonce"], "5");
    node.ws(ANONYMOUS, "gavel.v1.proto", None).await.unwrap();

    // A plain GET of the endpoint is not a WebSocket handshake.
    let (status, _, body) = node.request(ANONYMOUS, "GET", "/v1/ws", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(parse(&body)["code"], "not_websocket");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_only_its_socket_with_1009() {
    let node = TestNode::start(Setup::default()).await;
    let mut big = node.ws(BIDDER_1, "gavel.v1.json", None).await.unwrap();
    let mut other = node.ws(BIDDER_2, "gavel.v1.json", None).await.unwrap();

    // ws_message_bytes_max is 4 KiB here.
    big.send(Message::text(" ".repeat(5 * 1024))).await.unwrap();
    assert_eq!(close_code(&mut big).await, CloseCode::Size);

    send_json(
        &mut other,
        json!({"requestId": "8", "ping": {"nonce": "77"}}),
    )
    .await;
    let pong = next_json(&mut other).await;
    assert_eq!(
        (&pong["requestId"], &pong["pong"]["nonce"]),
        (&json!("8"), &json!("77"))
    );

    let metrics = node.metrics().await;
    let labels = ["transport=\"ws\"", "reason=\"too_large\""];
    assert!(
        sample(&metrics, "gavel_request_errors_total", &labels).is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_gets_an_error_and_the_socket_stays_open() {
    let node = TestNode::start(Setup::default()).await;
    let mut socket = node.ws(BIDDER_1, "gavel.v1.json", None).await.unwrap();

    socket.send(Message::text("{not json")).await.unwrap();
    let error = next_json(&mut socket).await;
    assert_eq!(error["error"]["code"], "ERROR_CODE_MALFORMED", "{error}");
    // A binary message on the JSON subprotocol is malformed too.
    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let error = next_json(&mut socket).await;
    assert_eq!(error["error"]["code"], "ERROR_CODE_MALFORMED", "{error}");

    send_json(
        &mut socket,
        json!({"requestId": "9", "ping": {"nonce": "42"}}),
    )
    .await;
    let pong = next_json(&mut socket).await;
    assert_eq!(pong["requestId"], "9", "{pong}");
    assert_eq!(pong["pong"]["nonce"], "42", "{pong}");

    // The same on the protobuf subprotocol: garbage bytes, then a ping.
    let mut proto = node.ws(BIDDER_1, "gavel.v1.proto", None).await.unwrap();
    proto
        .send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    let error = next_proto(&mut proto).await;
    assert!(
        matches!(error.body, Some(pb::server_message::Body::Error(ref e)) if e.code == pb::ErrorCode::Malformed as i32),
        "{error:?}"
    );
    let ping = pb::ClientMessage {
        request_id: 10,
        body: Some(pb::client_message::Body::Ping(pb::Ping {
            nonce: 43,
            client_sent_at_us: 0,
        })),
    };
    proto
        .send(Message::Binary(ping.encode_to_vec().into()))
        .await
        .unwrap();
    let pong = next_proto(&mut proto).await;
    assert!(
        matches!(pong.body, Some(pb::server_message::Body::Pong(ref p)) if p.nonce == 43),
        "{pong:?}"
    );

    let metrics = node.metrics().await;
    let labels = ["transport=\"ws\"", "reason=\"malformed\""];
    assert!(
        sample(&metrics, "gavel_request_errors_total", &labels).is_some_and(|v| v >= 3.0),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_1001_and_the_server_returns() {
    let node = TestNode::start(Setup::default()).await;
    let mut socket = node.ws(BIDDER_1, "gavel.v1.json", None).await.unwrap();
    send_json(&mut socket, json!({"requestId": "1", "ping": {}})).await;
    next_json(&mut socket).await;

    node.begin_shutdown();
    let notice = next_json(&mut socket).await;
    assert_eq!(
        notice["error"]["code"], "ERROR_CODE_SHUTTING_DOWN",
        "{notice}"
    );
    assert_eq!(close_code(&mut socket).await, CloseCode::Away);
    node.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_handshake_limits_hold() {
    let node = TestNode::start(Setup {
        limits: Limits {
            connections_max: 2,
            handshakes_pending_max: 1,
            handshake_timeout_ms: 300,
            ..Setup::default().limits
        },
        ..Setup::default()
    })
    .await;

    // A TCP connection that never starts TLS holds the only handshake permit (the node
    // accepts in connection order) until its handshake times out.
    let mut silent = TcpStream::connect(node.addr).await.unwrap();
    assert!(node.try_tls(BIDDER_1, &[b"http/1.1"]).await.is_err());
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(WAIT, silent.read(&mut byte))
        .await
        .expect("the node drops the silent connection after the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The node releases the permits just after it drops the connection.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Two sockets hold both connection permits; a third connection is refused until one
    // of them closes.
    let first = node.ws(BIDDER_1, "gavel.v1.json", None).await.unwrap();
    let mut second = node.ws(BIDDER_2, "gavel.v1.json", None).await.unwrap();
    assert!(node.try_tls(WATCHER, &[b"http/1.1"]).await.is_err());
    drop(first);
    let mut admitted = None;
    for _ in 0..100 {
        if let Ok(stream) = node.try_tls(WATCHER, &[b"http/1.1"]).await {
            admitted = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted.is_some(), "a closed socket gives its permit back");
    drop(admitted);
    send_json(
        &mut second,
        json!({"requestId": "1", "ping": {"nonce": "3"}}),
    )
    .await;
    assert_eq!(next_json(&mut second).await["pong"]["nonce"], "3");
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let metrics = node.metrics().await;
    for labels in [
        ["transport=\"https\"", "reason=\"handshakes_pending_max\""],
        ["transport=\"https\"", "reason=\"connections_max\""],
    ] {
        assert!(
            sample(&metrics, "gavel_connections_refused_total", &labels).is_some_and(|v| v >= 1.0),
            "{labels:?}: {metrics}"
        );
    }
    let timeout = ["transport=\"https\"", "reason=\"timeout\""];
    assert!(
        sample(&metrics, "gavel_tls_handshake_failures_total", &timeout).is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let node = TestNode::start(Setup {
        limits: Limits {
            idle_timeout_ms: 600,
            ..Setup::default().limits
        },
        ws_ping_interval_ms: 100,
        ..Setup::default()
    })
    .await;
    let mut silent = node.ws(BIDDER_1, "gavel.v1.json", None).await.unwrap();
    let mut live = node.ws(BIDDER_2, "gavel.v1.json", None).await.unwrap();
    // A TLS connection that never sends a request.
    let mut no_request = node.tls(WATCHER, &[b"http/1.1"]).await;

    // The live socket is read (so tungstenite answers every ping) for longer than the idle
    // timeout; the silent one is not read at all. (Read it before the node gives up waiting
    // for its close answer and drops the TCP connection, 1 s after the close.)
    let until = tokio::time::Instant::now() + Duration::from_millis(1_000);
    while let Ok(message) = tokio::time::timeout_at(until, live.next()).await {
        let message = message.expect("open").expect("readable");
        assert!(matches!(message, Message::Ping(_)), "{message:?}");
    }
    send_json(&mut live, json!({"requestId": "2", "ping": {"nonce": "8"}})).await;
    assert_eq!(next_json(&mut live).await["pong"]["nonce"], "8");

    let notice = next_json(&mut silent).await;
    assert_eq!(
        notice["error"]["code"], "ERROR_CODE_IDLE_TIMEOUT",
        "{notice}"
    );
    assert_eq!(close_code(&mut silent).await, CloseCode::Normal);

    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(WAIT, no_request.read(&mut byte))
        .await
        .expect("the node closed the connection without a request");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let metrics = node.metrics().await;
    let idle = ["transport=\"https\"", "reason=\"idle\""];
    assert!(
        sample(&metrics, "gavel_connections_refused_total", &idle).is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_peer_that_reads_nothing_is_dropped_without_slowing_others() {
    // Requests (pings) a stalling client sends at most: their pongs far exceed what the
    // loopback socket buffers hold.
    const PINGS_MAX: u64 = 400_000;
    let node = TestNode::start(Setup {
        limits: Limits {
            idle_timeout_ms: 800,
            ..Setup::default().limits
        },
        ws_ping_interval_ms: 100,
        ..Setup::default()
    })
    .await;
    let stalled = ["transport=\"ws\"", "reason=\"stalled\""];
    let before = sample(
        &node.metrics().await,
        "gavel_connections_refused_total",
        &stalled,
    )
    .unwrap_or(0.0);
    let mut live = node.ws(BIDDER_2, "gavel.v1.json", None).await.unwrap();
    let stalling = node.ws_small_window(BIDDER_1, "gavel.v1.json", 4096).await;
    // The stalling client sends requests as fast as it can and reads nothing back. Its
    // writes block once the node stops reading it; the node must then drop it.
    let flood = tokio::spawn(async move {
        let (mut sink, _unread) = stalling.split();
        for n in 0..PINGS_MAX {
            let ping = json!({"requestId": n.to_string(), "ping": {"nonce": "x"}});
            if sink.feed(Message::text(ping.to_string())).await.is_err() {
                return n;
            }
            if n % 256 == 255 && sink.flush().await.is_err() {
                return n;
            }
        }
        PINGS_MAX
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut nonce = 0_u64;
    loop {
        // Another socket is answered promptly throughout.
        nonce += 1;
        send_json(
            &mut live,
            json!({"requestId": nonce.to_string(), "ping": {"nonce": nonce.to_string()}}),
        )
        .await;
        let pong = loop {
            let reply = next_json(&mut live).await;
            if reply.get("pong").is_some() {
                break reply;
            }
        };
        assert_eq!(pong["pong"]["nonce"], nonce.to_string());
        let metrics = node.metrics().await;
        let now = sample(&metrics, "gavel_connections_refused_total", &stalled).unwrap_or(0.0);
        if now > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalling WebSocket was not dropped: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = tokio::time::timeout(WAIT, flood)
        .await
        .expect("the dropped socket's writes fail")
        .unwrap();
    assert!(
        sent < PINGS_MAX,
        "the node read {sent} requests: it never stopped reading"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_metrics_listener_serves_probes_and_metrics() {
    let node = TestNode::start(Setup::default()).await;
    let (addr, listener) = node.start_metrics_listener().await;
    let (status, body) = plain_get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("gavel_build_info"));
    assert_eq!(plain_get(addr, "/readyz").await.0, StatusCode::OK);
    assert_eq!(plain_get(addr, "/healthz").await.0, StatusCode::OK);
    // Only the probes and metrics: no admin API without TLS.
    assert_eq!(
        plain_get(addr, "/v1/auctions").await.0,
        StatusCode::NOT_FOUND
    );
    node.stop().await;
    tokio::time::timeout(WAIT, listener)
        .await
        .expect("the metrics listener stops with the node")
        .unwrap();
}

/// Retention (issue 21 §2, docs/admin-api.md): an auction pruned from memory answers
/// `410 Gone` with its final result; it is left out of the list, its id cannot be created
/// again (409 `already_exists`), a cancel finds it closed (409 `already_closed`). Once its
/// result is forgotten it answers as an unknown id (404 `not_found`) and can be created
/// again (201).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_auction_answers_410_gone_with_its_result_then_404_once_forgotten() {
    let node = TestNode::start(Setup::default()).await;
    create(&node, 41).await;
    create(&node, 42).await;
    let (status, _, _) = node
        .request(ADMIN, "POST", "/v1/auctions/41/cancel", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let durable = node.node();
    let result = durable
        .engine()
        .prune_auction(
            gavel_engine::AuctionId(41),
            gavel_engine::UnixMicros(now_us()),
            durable.sink(),
        )
        .unwrap();

    let (status, _, body) = node.request(WATCHER, "GET", "/v1/auctions/41", None).await;
    assert_eq!(
        status,
        StatusCode::GONE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let gone: pb::PrunedAuction = serde_json::from_slice(&body).unwrap();
    assert_eq!(gone, pb::PrunedAuction::from(&result));
    let gone = parse(&body);
    assert_eq!(gone["auctionId"], "41");
    assert_eq!(gone["topic"], "energy.eu.de.block-41");
    assert_eq!(gone["closeReason"], "CLOSE_REASON_CANCELLED");
    assert_eq!(gone["seq"], "4", "created, closed, settled, pruned");
    assert_eq!(gone["settlement"], json!({}), "a cancel has no winner");

    let (status, _, body) = node.request(WATCHER, "GET", "/v1/auctions", None).await;
    assert_eq!(status, StatusCode::OK);
    let listed = parse(&body)["auctions"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["rules"]["auctionId"], "42");
    let (status, _, body) = node
        .request(ADMIN, "POST", "/v1/auctions", Some(english(41)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(parse(&body)["code"], "already_exists");
    let (status, _, body) = node
        .request(ADMIN, "POST", "/v1/auctions/41/cancel", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(parse(&body)["code"], "already_closed");
    let (status, _, _) = node.request(WATCHER, "GET", "/v1/auctions/43", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    durable
        .engine()
        .forget_auction(
            gavel_engine::AuctionId(41),
            gavel_engine::UnixMicros(now_us()),
            durable.sink(),
        )
        .unwrap();
    let (status, _, body) = node.request(WATCHER, "GET", "/v1/auctions/41", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(parse(&body)["code"], "not_found");
    assert_eq!(create(&node, 41).await["seq"], "1", "a new auction");
    node.stop().await;
}
