//! Server-sent events (`GET /v1/sse`) over real sockets on 127.0.0.1: a durable node
//! (temporary directory), the development PKI, `serve_https` with its fan-out workers; the
//! client is hyper over TLS reading the `text/event-stream` body as it arrives; bids go
//! through a bidder's WebSocket, auctions through the admin API.
//!
//! Covered: a pattern subscription gets `subscribed`, the snapshot of every matching auction
//! and then updates, each event with the id `<epoch>.<auction>.<seq>`; a reconnect with
//! `Last-Event-ID` gets the current state of what moved and nothing stale (the named auction
//! unchanged is not sent again; its next change comes as an update), `resume` positions in
//! the query, another epoch answered with `snapshotRequired`; refusals with a 400 and a
//! clear message (no topic, a bad pattern, an unknown parameter, a bad `Last-Event-ID`, too
//! many subscriptions), a foreign Origin (403), another method (405); who may watch
//! (certificates of any role, anonymous only when the node allows it); keepalive comments;
//! shutdown ending the stream with `ERROR_CODE_SHUTTING_DOWN`.

mod common;

use bytes::Bytes;
use common::https::{Setup, TestNode, WAIT, metrics_handle};
use common::stream::{Bidder, create};
use gavel_transport::Limits;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

const WATCHER: Option<&str> = Some("watcher/watcher-1");

/// One event of the stream.
#[derive(Debug)]
struct Event {
    id: Option<String>,
    data: Value,
}

/// An open event stream.
struct Events {
    body: Incoming,
    buffer: String,
    /// Comment lines seen so far (keepalives).
    comments: usize,
}

impl Events {
    /// The next event (comments and `retry:` skipped); `None` once the node ended the body.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    }
                }
                if let Some(data) = data {
                    return Some(Event { id, data });
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event in time");
            match frame {
                None => return None,
                Some(frame) => {
                    if let Ok(data) = frame.expect("a valid body").into_data() {
                        self.buffer.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
            }
        }
    }

    /// The next event, which must be there.
    async fn event(&mut self) -> Event {
        self.next().await.expect("the stream is open")
    }
}

/// `GET /v1/sse?<query>` as `who` with extra `headers`; the status and headers, and the
/// event stream when it is 200 (else the error body as JSON).
async fn open(
    node: &TestNode,
    who: Option<&str>,
    method: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Result<Events, Value>) {
    let stream = node.tls(who, &[b"http/1.1"]).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(format!("/v1/sse?{query}"))
        .header("host", "localhost")
        .header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        WAIT,
        sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("an answer in time")
    .unwrap();
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        let bytes = body.collect().await.unwrap().to_bytes();
        let error = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return (parts.status, parts.headers, Err(error));
    }
    let events = Events {
        body,
        buffer: String::new(),
        comments: 0,
    };
    (parts.status, parts.headers, Ok(events))
}

/// Opens a stream that must be accepted; returns it after its `subscribed` event.
async fn watch(node: &TestNode, query: &str, last_event_id: Option<&str>) -> Events {
    let headers: Vec<(&str, &str)> = last_event_id
        .map(|id| ("last-event-id", id))
        .into_iter()
        .collect();
    let (status, headers, events) = open(node, None, "GET", query, &headers).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{events:?}",
        events = events.as_ref().err()
    );
    assert_eq!(headers["content-type"], "text/event-stream");
    let mut events = events.unwrap();
    let first = events.event().await;
    assert_eq!(first.data["subscribed"]["subscriptions"], 1, "{first:?}");
    assert_eq!(first.id, None, "only auction events carry positions");
    events
}

/// `(kind, auction, seq, price)` of an event, and its id.
fn summary(event: &Event) -> (String, u64, u64, u64, Option<String>) {
    let num = |v: &Value| v.as_str().map_or(0, |s| s.parse::<u64>().unwrap());
    let data = &event.data;
    for (kind, id_path) in [
        ("priceUpdate", "/auctionId"),
        ("auctionSnapshot", "/rules/auctionId"),
        ("snapshotRequired", "/auctionId"),
    ] {
        if let Some(body) = data.get(kind) {
            let id = num(body.pointer(id_path).unwrap_or(&Value::Null));
            return (
                kind.to_owned(),
                id,
                num(&body["seq"]),
                num(&body["price"]),
                event.id.clone(),
            );
        }
    }
    panic!("not a stream event: {event:?}");
}

fn sse_counter(name: &str) -> f64 {
    let series = format!("{name}{{transport=\"sse\"");
    metrics_handle()
        .render()
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_delivers_snapshots_and_updates_and_resumes_from_its_last_event_id() {
    let node = TestNode::start(Setup::default()).await;
    create(&node, 1, "energy.eu.de.a1").await;
    create(&node, 2, "energy.eu.fr.a2").await;
    create(&node, 3, "energy.us.tx.a3").await;
    let mut bidder = Bidder::connect(&node).await;
    let delivered_before = sse_counter("gavel_stream_updates_delivered_total");

    // `>` escaped as a browser's URLSearchParams does.
    let query = "pattern=energy.eu.%3E";
    let mut events = watch(&node, query, None).await;
    let mut snapshots = [
        summary(&events.event().await),
        summary(&events.event().await),
    ];
    snapshots.sort_by_key(|s| s.1);
    assert_eq!(
        snapshots,
        [
            ("auctionSnapshot".into(), 1, 1, 0, Some("1.1.1".into())),
            ("auctionSnapshot".into(), 2, 1, 0, Some("1.2.1".into())),
        ],
        "the matching auctions only (no price before a bid), each with its position as id"
    );
    bidder.bid(3, 100).await;
    bidder.bid(1, 100).await;
    let update = events.event().await;
    assert_eq!(
        summary(&update),
        ("priceUpdate".into(), 1, 2, 100, Some("1.1.2".into())),
        "{update:?}"
    );
    let last_id = update.id.clone().unwrap();
    drop(events);

    // While the client is away auction 2 moves twice (conflated: one state is owed) and
    // auction 1 does not.
    bidder.bid(2, 100).await;
    bidder.bid(2, 105).await;
    let mut events = watch(&node, query, Some(&last_id)).await;
    let moved = events.event().await;
    assert_eq!(
        summary(&moved),
        ("auctionSnapshot".into(), 2, 3, 105, Some("1.2.3".into())),
        "the current state of what moved: {moved:?}"
    );
    bidder.bid(1, 105).await;
    let update = events.event().await;
    assert_eq!(
        summary(&update),
        ("priceUpdate".into(), 1, 3, 105, Some("1.1.3".into())),
        "auction 1 was not sent again; its next change is an update: {update:?}"
    );
    drop(events);

    // Positions in the query: nothing is resent; the next change comes as an update.
    let mut events = watch(&node, &format!("{query}&resume=1.1.3&resume=1.2.3"), None).await;
    bidder.bid(2, 110).await;
    let update = events.event().await;
    assert_eq!(
        summary(&update),
        ("priceUpdate".into(), 2, 4, 110, Some("1.2.4".into()))
    );
    drop(events);

    // Another epoch: the node says so, then sends the current state.
    let mut events = watch(&node, query, Some("7.1.3")).await;
    let required = events.event().await;
    assert_eq!(summary(&required).0, "snapshotRequired", "{required:?}");
    assert_eq!(summary(&required).1, 1);
    assert_eq!(required.id, None);
    let mut snapshots = [
        summary(&events.event().await),
        summary(&events.event().await),
    ];
    snapshots.sort_by_key(|s| s.1);
    assert_eq!(
        snapshots[0],
        ("auctionSnapshot".into(), 1, 3, 105, Some("1.1.3".into()))
    );
    assert_eq!(
        snapshots[1],
        ("auctionSnapshot".into(), 2, 4, 110, Some("1.2.4".into()))
    );

    let delivered = sse_counter("gavel_stream_updates_delivered_total") - delivered_before;
    assert!(
        delivered >= 9.0,
        "delivered{{transport=sse}} grew by {delivered}"
    );

    // Shutdown ends the stream with a reason.
    node.begin_shutdown();
    let last = events.event().await;
    assert_eq!(
        last.data["error"]["code"], "ERROR_CODE_SHUTTING_DOWN",
        "{last:?}"
    );
    assert!(events.next().await.is_none(), "the body ends");
    node.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_clear_error() {
    let node = TestNode::start(Setup {
        limits: Limits {
            subscriptions_per_connection_max: 2,
            ..Setup::default().limits
        },
        ..Setup::default()
    })
    .await;
    let errors_before = sse_counter("gavel_request_errors_total");
    // (query, headers, status, code, words of the message)
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        StatusCode,
        &'a str,
        &'a str,
    );
    let cases: &[Case] = &[
        (
            "",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_query",
            "at least one topic",
        ),
        (
            "pattern=a&pattern=a.%3E.b",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_topic",
            "pattern \"a.>.b\": `>` is only allowed as the last segment",
        ),
        (
            "topic=a.*",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_topic",
            "wildcard",
        ),
        (
            "pattern=a&since=5",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_query",
            "\"since\"",
        ),
        (
            "pattern=a&interval_ms=fast",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_query",
            "interval_ms",
        ),
        (
            "pattern=a&resume=1.2",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_query",
            "<epoch>.<auction>.<seq>",
        ),
        (
            "pattern=a",
            &[("last-event-id", "abc")],
            StatusCode::BAD_REQUEST,
            "bad_query",
            "Last-Event-ID",
        ),
        (
            "pattern=a&pattern=b&pattern=c",
            &[],
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
            "2 subscriptions",
        ),
        (
            "pattern=a",
            &[("origin", "https://evil.example.com")],
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "Origin",
        ),
    ];
    for (query, headers, status, code, words) in cases {
        let (got, _, answer) = open(&node, WATCHER, "GET", query, headers).await;
        let error = answer
            .err()
            .unwrap_or_else(|| panic!("{query:?} was accepted"));
        assert_eq!(got, *status, "{query:?}: {error}");
        assert_eq!(error["code"], *code, "{query:?}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(words), "{query:?}: {message}");
    }
    let (status, headers, _) = open(&node, WATCHER, "POST", "pattern=a", &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");
    let errors = sse_counter("gavel_request_errors_total") - errors_before;
    assert!(errors >= cases.len() as f64, "counted: {errors}");

    // An allowed Origin, and the node's own, are served.
    for origin in ["https://market.example.com", "https://localhost"] {
        let (status, _, _) = open(&node, WATCHER, "GET", "pattern=a", &[("origin", origin)]).await;
        assert_eq!(status, StatusCode::OK, "{origin}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_any_role_may_stream_and_anonymous_ones_only_when_allowed() {
    let closed = TestNode::start(Setup {
        anonymous_watchers: false,
        ws_ping_interval_ms: 20,
        ..Setup::default()
    })
    .await;
    create(&closed, 5, "metals.cu.lot-5").await;
    for who in ["watcher/watcher-1", "bidder/bidder-1", "admin/admin"] {
        let (status, _, events) =
            open(&closed, Some(who), "GET", "topic=metals.cu.lot-5", &[]).await;
        assert_eq!(status, StatusCode::OK, "{who}");
        let mut events = events.unwrap();
        assert!(events.event().await.data.get("subscribed").is_some());
        let snapshot = events.event().await;
        assert_eq!(snapshot.id.as_deref(), Some("1.5.1"), "{who}: {snapshot:?}");
        // Keepalive comments (every 20 ms here) while nothing moves.
        let keepalives = async {
            while events.comments < 2 {
                assert!(events.body.frame().await.is_some());
                events.comments += 1;
            }
        };
        tokio::time::timeout(WAIT, keepalives)
            .await
            .expect("keepalives");
    }
    let anonymous = closed.try_tls(None, &[b"http/1.1"]).await;
    // TLS 1.3: the refusal may only surface on the first read.
    if let Ok(mut stream) = anonymous {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream
            .write_all(b"GET /v1/sse?pattern=a HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await;
        let mut buf = [0_u8; 64];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap();
        assert!(
            read.is_err() || read.is_ok_and(|n| n == 0),
            "an anonymous client is refused without anonymous watchers"
        );
    }
    closed.stop().await;

    let open_node = TestNode::start(Setup::default()).await;
    let events = watch(&open_node, "pattern=metals.%3E", None).await;
    drop(events);
    open_node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_its_outbound_bound_ends_as_a_slow_consumer_and_is_counted() {
    let node = TestNode::start(Setup {
        limits: Limits {
            // One snapshot (≈ 120 bytes of protobuf) fits under twice the bound; three do
            // not, so the subscription's snapshots alone overflow it.
            outbound_bytes_max_per_connection: 100,
            ..Setup::default().limits
        },
        ..Setup::default()
    })
    .await;
    for id in 1..=3 {
        create(&node, id, &format!("metals.cu.lot-{id}")).await;
    }
    let before = sse_counter("gavel_stream_slow_consumer_disconnects_total");
    let mut events = watch(&node, "pattern=metals.%3E", None).await;
    let mut last = events.event().await;
    while last.data.get("auctionSnapshot").is_some() {
        last = events.event().await;
    }
    assert_eq!(
        last.data["error"]["code"], "ERROR_CODE_SLOW_CONSUMER",
        "{last:?}"
    );
    assert!(events.next().await.is_none(), "the stream ends");
    let counted = sse_counter("gavel_stream_slow_consumer_disconnects_total") - before;
    assert!(counted >= 1.0, "counted {counted}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_served_over_http2_too() {
    let node = TestNode::start(Setup::default()).await;
    create(&node, 9, "metals.ni.lot-9").await;
    let stream = node.tls(WATCHER, &[b"h2"]).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri("https://localhost/v1/sse?topic=metals.ni.lot-9")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = Events {
        body: response.into_body(),
        buffer: String::new(),
        comments: 0,
    };
    assert!(events.event().await.data.get("subscribed").is_some());
    assert_eq!(events.event().await.id.as_deref(), Some("1.9.1"));
    let mut bidder = Bidder::connect(&node).await;
    bidder.bid(9, 120).await;
    let update = events.event().await;
    assert_eq!(update.id.as_deref(), Some("1.9.2"), "{update:?}");
    assert_eq!(update.data["priceUpdate"]["price"], "120");
    drop(events);
    node.stop().await;
}
