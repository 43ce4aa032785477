//! Slow readers of price streams, on `gavel serve --dev` as an operator runs it (real
//! sockets on 127.0.0.1, real TLS, bids over QUIC): conflation keeps a slow reader fresh.
//!
//! The setup of issue 19 item 9: one watcher whose receive buffer is 16 KiB, reading at most
//! 4 KiB every 200 ms (a reader that reads slowly, not one that never reads), while 2,000
//! bids arrive at about 750 per second, each in its own QUIC packet. The watcher must see
//! the final price soon after the last bid, having received few of the updates (the rest
//! were conflated in its outbox, counted in `gavel_stream_updates_conflated_total`) — over
//! WebSocket, SSE (HTTP/1.1 and HTTP/2) and a subscribed QUIC stream. Each test prints what
//! it measured (updates received, delay of the final price).
//!
//! Also: a WebSocket reader that pauses until the node gives up on it as a slow consumer and
//! then reads again gets `ERROR_CODE_SLOW_CONSUMER` and close 1008 (not an end without a
//! close frame), and `gavel_stream_queue_bytes{transport="ws"}` shows the bytes waiting for a
//! stalled reader.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::https::{plain_get, tls_over, ws_over};
use common::serve::raw_connect;
use common::served::{Served, create_english as create, serve_with_env};
use common::stream::place_bid;
use futures_util::{SinkExt, StreamExt};
use gavel_proto::frame::{self, FrameDecoder};
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use gavel_transport::Identity;
use gavel_transport::tls::dev::{self, DevCerts};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bids of the item-9 setup, and the time between two (about 750 per second).
const BIDS: u64 = 2_000;
const BID_INTERVAL: Duration = Duration::from_micros(1_333);
/// The slow reader: its socket's receive buffer, and what it reads how often.
const RECV_BUFFER_BYTES: u32 = 16 * 1024;
const READ_BYTES_MAX: usize = 4 * 1024;
const READ_EVERY: Duration = Duration::from_millis(200);
/// How late the final price may reach the slow reader after the last bid. The target is
/// 1 s; the bound is generous for a shared, noisy machine (each test prints the measured
/// delay).
const FINAL_PRICE_DELAY_MAX: Duration = Duration::from_secs(3);
/// Most updates the slow reader may get, in percent of the bids. The target is 15 %; the
/// bound is generous like the delay's (the two measure one backlog: every 200 ms of delay
/// is another 4 KiB of updates read), and each test prints the measured share.
const UPDATES_PERCENT_MAX: u64 = 20;
/// Longest wait for anything else.
const WAIT: Duration = Duration::from_secs(30);
/// The timed tests run one at a time: the delays they measure are not another test's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WATCHER: Option<&str> = Some("watcher/watcher-1");

/// The price of bid `i` (each beats the one before by the largest default increment).
fn amount(i: u64) -> u64 {
    1_000 + 100 * i
}

/// A node as `gavel serve --dev` with `env`, its dev PKI, and its data directory's guard.
fn start(env: &[(&str, &str)]) -> (tempfile::TempDir, Served, DevCerts) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = serve_with_env(&data_dir, env);
    let certs = dev::ensure(&data_dir.join("certs")).unwrap();
    (dir, served, certs)
}

/// The value of the series `series` (name and labels, as rendered) on the node's metrics
/// port; 0 if absent.
async fn metric(served: &Served, series: &str) -> f64 {
    let (status, body) = plain_get(served.metrics, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix(series))
        .find_map(|rest| rest.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn conflated(transport: &str) -> String {
    format!("gavel_stream_updates_conflated_total{{transport=\"{transport}\"}}")
}

/// A socket whose reader, once `slow` is set, takes at most [`READ_BYTES_MAX`] bytes per
/// [`READ_EVERY`].
struct SlowRead<T> {
    inner: T,
    slow: Arc<AtomicBool>,
    next_read: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for SlowRead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.slow.load(Ordering::Relaxed) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if let Some(sleep) = &mut this.next_read {
            ready!(sleep.as_mut().poll(cx));
        }
        let mut chunk = [0_u8; READ_BYTES_MAX];
        let room = buf.remaining().min(READ_BYTES_MAX);
        let mut limited = ReadBuf::new(&mut chunk[..room]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        buf.put_slice(limited.filled());
        this.next_read = Some(Box::pin(tokio::time::sleep(READ_EVERY)));
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SlowRead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TLS connection to the HTTPS port as [`WATCHER`] offering `alpn`, over a socket with a
/// [`RECV_BUFFER_BYTES`] receive buffer that reads slowly once `slow` is set.
async fn slow_tls(
    served: &Served,
    certs: &DevCerts,
    alpn: &[u8],
    slow: &Arc<AtomicBool>,
) -> tokio_rustls::client::TlsStream<SlowRead<TcpStream>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(RECV_BUFFER_BYTES).unwrap();
    let tcp = socket.connect(served.https).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let io = SlowRead {
        inner: tcp,
        slow: Arc::clone(slow),
        next_read: None,
    };
    tls_over(io, certs, WATCHER, &[alpn]).await.unwrap()
}

/// A bidder's QUIC stream: bids written one at a time, outcomes counted by a reader task.
struct QuicBidder {
    _connection: common::serve::RawConnection,
    send: quinn::SendStream,
    next_id: u64,
    accepted: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

impl QuicBidder {
    async fn connect(served: &Served, certs: &DevCerts) -> QuicBidder {
        let identity = Identity::from_uri("gavel://bidder/bidder-1").unwrap();
        let client = certs.client(&identity).unwrap();
        let connection = raw_connect(
            served.quic,
            &certs.ca_cert,
            Some((&client.cert, &client.key)),
            quinn::TransportConfig::default(),
        )
        .await
        .unwrap();
        let (send, mut recv) = connection.connection.open_bi().await.unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let rejected = Arc::new(AtomicU64::new(0));
        let counts = (Arc::clone(&accepted), Arc::clone(&rejected));
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(1 << 20);
            while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                decoder.push(&chunk.bytes);
                while let Some(message) = decoder.next_message::<pb::ServerMessage>().unwrap() {
                    if let Some(Reply::BidOutcome(outcome)) = message.body {
                        let count = match outcome.outcome {
                            Some(pb::bid_outcome::Outcome::Accepted(_)) => &counts.0,
                            _ => &counts.1,
                        };
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        QuicBidder {
            _connection: connection,
            send,
            next_id: 1,
            accepted,
            rejected,
        }
    }

    /// Writes one bid (its own write, so its own packet).
    async fn bid(&mut self, auction: u64, amount: u64) {
        let id = self.next_id;
        self.next_id += 1;
        let request = place_bid(id, auction, amount);
        let mut bytes = Vec::new();
        frame::encode(&request, &mut bytes);
        self.send.write_all(&bytes).await.unwrap();
    }

    /// Bids [`BIDS`] times on `auction` at [`amount`]`(i)`, one per [`BID_INTERVAL`];
    /// returns when the last one was sent, once every bid was answered accepted.
    async fn bid_run(&mut self, auction: u64) -> Instant {
        let start = tokio::time::Instant::now();
        for i in 0..BIDS {
            tokio::time::sleep_until(start + BID_INTERVAL * i as u32).await;
            self.bid(auction, amount(i)).await;
        }
        let last = Instant::now();
        let deadline = Instant::now() + WAIT;
        while self.accepted.load(Ordering::Relaxed) < BIDS {
            assert_eq!(
                self.rejected.load(Ordering::Relaxed),
                0,
                "a bid was rejected"
            );
            assert!(Instant::now() < deadline, "bids unanswered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "bids: {BIDS} in {:?} ({:.0}/s)",
            last - start.into_std(),
            BIDS as f64 / (last - start.into_std()).as_secs_f64()
        );
        last
    }
}

/// What a slow reader saw: price updates received, and when the final price arrived.
#[derive(Debug)]
struct Seen {
    updates: u64,
    final_at: Instant,
}

/// The next JSON message of a WebSocket (control frames skipped).
async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next()).await;
        if let Message::Text(text) = message.expect("a message in time").unwrap().unwrap() {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// A slow reader's count of price updates, until the final price.
#[derive(Debug, Default)]
struct Tally {
    updates: u64,
    last: u64,
}

impl Tally {
    /// Counts a price update of `price`; `true` once it is the final price. Prices only
    /// rise along the stream.
    fn price(&mut self, price: u64) -> bool {
        assert!(
            price > self.last,
            "a newer price came first: {price} after {}",
            self.last
        );
        self.last = price;
        self.updates += 1;
        price == amount(BIDS - 1)
    }

    /// [`Tally::price`] of a stream message in canonical JSON (other messages: `false`).
    fn json(&mut self, message: &Value) -> bool {
        message
            .get("priceUpdate")
            .is_some_and(|update| self.price(update["price"].as_str().unwrap().parse().unwrap()))
    }

    /// What was seen, the final price now.
    fn seen(self) -> Seen {
        Seen {
            updates: self.updates,
            final_at: Instant::now(),
        }
    }
}

/// Checks and prints what the slow reader `what` of `transport` (a metric label) measured;
/// the conflated counter must have risen from `before`, and the reader got at most
/// `percent_max` % of the updates (`None`: not checked).
async fn check(
    served: &Served,
    (transport, what): (&str, &str),
    seen: &Seen,
    last_bid: Instant,
    before: f64,
    percent_max: Option<u64>,
) {
    let delay = seen.final_at.saturating_duration_since(last_bid);
    let conflated_now = metric(served, &conflated(transport)).await;
    println!(
        "{what} slow reader: {} of {BIDS} updates ({:.1} %), final price {:?} after the \
         last bid; gavel_stream_updates_conflated_total +{}",
        seen.updates,
        seen.updates as f64 * 100.0 / BIDS as f64,
        delay,
        conflated_now - before
    );
    assert!(
        delay <= FINAL_PRICE_DELAY_MAX,
        "{what}: the final price came {delay:?} after the last bid"
    );
    assert!(
        seen.updates * 100 <= BIDS * percent_max.unwrap_or(100),
        "{what}: {} updates of {BIDS}",
        seen.updates
    );
    assert!(conflated_now > before, "{what}: nothing conflated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_reader_sees_the_final_price_promptly() {
    let _serial = SERIAL.lock().await;
    let (_dir, served, certs) = start(&[]);
    create(&served, &certs, 1, "slow.ws.lot-1").await;
    let before = metric(&served, &conflated("ws")).await;
    let slow = Arc::new(AtomicBool::new(false));
    let tls = slow_tls(&served, &certs, b"http/1.1", &slow).await;
    let mut socket = ws_over(tls, "gavel.v1.json", None).await.unwrap();
    let subscribe = json!({"requestId": "1", "subscribe": {"topics": ["slow.ws.lot-1"]}});
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    assert!(next_json(&mut socket).await.get("subscribed").is_some());
    assert!(
        next_json(&mut socket)
            .await
            .get("auctionSnapshot")
            .is_some()
    );
    slow.store(true, Ordering::Relaxed);
    let reader = tokio::spawn(async move {
        let mut tally = Tally::default();
        while !tally.json(&next_json(&mut socket).await) {}
        tally.seen()
    });
    let last_bid = QuicBidder::connect(&served, &certs).await.bid_run(1).await;
    let seen = reader.await.unwrap();
    let share_max = Some(UPDATES_PERCENT_MAX);
    check(&served, ("ws", "ws"), &seen, last_bid, before, share_max).await;
}

/// An SSE response body, read event by event.
struct Events {
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl Events {
    /// `GET /v1/sse?topic=…` as [`WATCHER`] over a slow socket speaking `alpn` (`http/1.1`
    /// or `h2`).
    async fn open(
        served: &Served,
        certs: &DevCerts,
        topic: &str,
        alpn: &[u8],
        slow: &Arc<AtomicBool>,
    ) -> Events {
        let tls = TokioIo::new(slow_tls(served, certs, alpn, slow).await);
        let path = format!("/v1/sse?topic={topic}");
        let request = Request::builder().header("host", "localhost");
        let response = if alpn == b"h2" {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), tls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = request.uri(format!("https://localhost{path}"));
            sender
                .send_request(request.body(Empty::<Bytes>::new()).unwrap())
                .await
        } else {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(tls).await.unwrap();
            tokio::spawn(connection);
            sender
                .send_request(request.uri(path).body(Empty::<Bytes>::new()).unwrap())
                .await
        };
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Events {
            body: response.into_body(),
            pending: Vec::new(),
        }
    }

    /// The next event's `data:` as JSON (events without data skipped).
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                let event = String::from_utf8(event).unwrap();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }
}

/// The item-9 setup over SSE speaking `alpn`, on auction `auction`.
async fn slow_sse_reader(alpn: &[u8], auction: u64) {
    let _serial = SERIAL.lock().await;
    let (_dir, served, certs) = start(&[]);
    let topic = format!("slow.sse.lot-{auction}");
    create(&served, &certs, auction, &topic).await;
    let before = metric(&served, &conflated("sse")).await;
    let slow = Arc::new(AtomicBool::new(false));
    let mut events = Events::open(&served, &certs, &topic, alpn, &slow).await;
    assert!(events.next().await.get("subscribed").is_some());
    assert!(events.next().await.get("auctionSnapshot").is_some());
    slow.store(true, Ordering::Relaxed);
    let reader = tokio::spawn(async move {
        let mut tally = Tally::default();
        while !tally.json(&events.next().await) {}
        tally.seen()
    });
    let last_bid = QuicBidder::connect(&served, &certs)
        .await
        .bid_run(auction)
        .await;
    let seen = reader.await.unwrap();
    let transport = format!("sse over {}", String::from_utf8_lossy(alpn));
    let share_max = Some(UPDATES_PERCENT_MAX);
    check(
        &served,
        ("sse", &transport),
        &seen,
        last_bid,
        before,
        share_max,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_reader_over_http1_sees_the_final_price_promptly() {
    slow_sse_reader(b"http/1.1", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_reader_over_http2_sees_the_final_price_promptly() {
    slow_sse_reader(b"h2", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_quic_stream_reader_sees_the_final_price_promptly() {
    let _serial = SERIAL.lock().await;
    let (_dir, served, certs) = start(&[]);
    create(&served, &certs, 4, "slow.quic.lot-4").await;
    let before = metric(&served, &conflated("quic")).await;
    let identity = Identity::from_uri("gavel://watcher/watcher-1").unwrap();
    let client = certs.client(&identity).unwrap();
    // The QUIC counterpart of the small receive buffer: the stream's flow-control window.
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(RECV_BUFFER_BYTES));
    let watcher = raw_connect(
        served.quic,
        &certs.ca_cert,
        Some((&client.cert, &client.key)),
        transport,
    )
    .await
    .unwrap();
    let (mut send, mut recv) = watcher.connection.open_bi().await.unwrap();
    let subscribe = pb::ClientMessage {
        request_id: 1,
        body: Some(pb::client_message::Body::Subscribe(pb::Subscribe {
            topics: vec!["slow.quic.lot-4".into()],
            ..pb::Subscribe::default()
        })),
    };
    let mut bytes = Vec::new();
    frame::encode(&subscribe, &mut bytes);
    send.write_all(&bytes).await.unwrap();
    let reader = tokio::spawn(async move {
        // The stream stays open while the reader reads (a finished one ends the stream).
        let _send = send;
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut tally = Tally::default();
        let mut buffer = [0_u8; READ_BYTES_MAX];
        loop {
            while let Some(message) = decoder.next_message::<pb::ServerMessage>().unwrap() {
                if let Some(Reply::PriceUpdate(update)) = message.body
                    && tally.price(update.price.unwrap())
                {
                    return tally.seen();
                }
            }
            tokio::time::sleep(READ_EVERY).await;
            let read = tokio::time::timeout(WAIT, recv.read(&mut buffer))
                .await
                .expect("updates in time")
                .unwrap()
                .expect("the stream is open");
            decoder.push(&buffer[..read]);
        }
    });
    let last_bid = QuicBidder::connect(&served, &certs).await.bid_run(4).await;
    let seen = reader.await.unwrap();
    // Protobuf updates are small (about 70 bytes framed, not 250 bytes of JSON): the reader's
    // 4 KiB per 200 ms carries more of them, so their share is printed, not bounded.
    check(
        &served,
        ("quic", "quic stream"),
        &seen,
        last_bid,
        before,
        None,
    )
    .await;
}

/// `gavel_stream_slow_consumer_disconnects_total{transport="ws"}`.
const WS_SLOW_CONSUMERS: &str = "gavel_stream_slow_consumer_disconnects_total{transport=\"ws\"}";

/// A [`WATCHER`] WebSocket (`gavel.v1.json`, small receive buffer) subscribed to `pattern`,
/// past its `Subscribed`; then `auctions` English auctions `10..` on `<pattern>.lot-<id>` are
/// created one by one, each snapshot read (so a tiny outbound bound holds one at a time).
async fn watcher(
    served: &Served,
    certs: &DevCerts,
    prefix: &str,
    auctions: u64,
) -> tokio_tungstenite::WebSocketStream<impl AsyncRead + AsyncWrite + Unpin> {
    let never_slow = Arc::new(AtomicBool::new(false));
    let tls = slow_tls(served, certs, b"http/1.1", &never_slow).await;
    let mut socket = ws_over(tls, "gavel.v1.json", None).await.unwrap();
    let pattern = format!("{prefix}.>");
    let subscribe = json!({"requestId": "1", "subscribe": {"patterns": [pattern]}});
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    assert!(next_json(&mut socket).await.get("subscribed").is_some());
    for id in 10..10 + auctions {
        create(served, certs, id, &format!("{prefix}.lot-{id}")).await;
        let snapshot = next_json(&mut socket).await;
        assert!(snapshot.get("auctionSnapshot").is_some(), "{snapshot}");
    }
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_that_reads_again_gets_close_1008() {
    const AUCTIONS: u64 = 5;
    let _serial = SERIAL.lock().await;
    // Five auctions' pending updates (≈ 60 bytes each) exceed the bound.
    let (_dir, served, certs) = start(&[
        ("GAVEL_OUTBOUND_BYTES_MAX_PER_CONNECTION", "200"),
        ("GAVEL_SLOW_CONSUMER_TIMEOUT_MS", "300"),
    ]);
    let mut socket = watcher(&served, &certs, "slow.pause", AUCTIONS).await;
    // The reader pauses: nothing is read until the node gave up on it.
    let mut bidder = QuicBidder::connect(&served, &certs).await;
    let started = Instant::now();
    for round in 0.. {
        assert!(
            round < BIDS && started.elapsed() < WAIT,
            "no slow-consumer close after {round} rounds"
        );
        for id in 0..AUCTIONS {
            bidder.bid(10 + id, amount(round)).await;
        }
        if round % 10 == 9 && metric(&served, WS_SLOW_CONSUMERS).await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Longer than the node's one-second wait for other closes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let updates = until_close_1008(&mut socket).await;
    println!("the paused reader got {updates} updates, then the error and the close");
}

/// Reads `socket` until its close frame (within [`WAIT`]); asserts an
/// `ERROR_CODE_SLOW_CONSUMER` error came before it and its code is 1008. Returns the price
/// updates read on the way.
async fn until_close_1008<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut tokio_tungstenite::WebSocketStream<S>,
) -> u64 {
    let (mut updates, mut error) = (0, None);
    let close = loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("the close in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                updates += u64::from(message.get("priceUpdate").is_some());
                if let Some(e) = message.get("error") {
                    error = e["code"].as_str().map(str::to_owned);
                }
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("the stream ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(error.as_deref(), Some("ERROR_CODE_SLOW_CONSUMER"));
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    assert_eq!(u16::from(close.code), 1008);
    updates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_snapshots_do_not_fit_is_closed_with_1008() {
    let _serial = SERIAL.lock().await;
    // Five snapshots (≈ 300 bytes each) exceed twice the bound at once.
    let (_dir, served, certs) = start(&[("GAVEL_OUTBOUND_BYTES_MAX_PER_CONNECTION", "200")]);
    for id in 0..5 {
        create(&served, &certs, 10 + id, &format!("slow.big.lot-{id}")).await;
    }
    let mut socket = watcher(&served, &certs, "slow.big", 0).await;
    until_close_1008(&mut socket).await;
    assert_eq!(metric(&served, WS_SLOW_CONSUMERS).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_gauge_shows_the_bytes_waiting_for_a_stalled_reader() {
    const AUCTIONS: u64 = 20;
    /// Fewer bytes than any price update takes (auction id, topic, seq, price, leader, …).
    const UPDATE_BYTES_LEAST: u64 = 40;
    const QUEUE_BYTES: &str = "gavel_stream_queue_bytes{transport=\"ws\"}";
    let _serial = SERIAL.lock().await;
    let (_dir, served, certs) = start(&[]);
    let _stalled = watcher(&served, &certs, "slow.gauge", AUCTIONS).await;
    // The reader stalls: nothing is read from here on, while every auction moves.
    let mut bidder = QuicBidder::connect(&served, &certs).await;
    let started = Instant::now();
    let mut queued = 0.0;
    for round in 0.. {
        assert!(
            round < BIDS && started.elapsed() < WAIT,
            "{QUEUE_BYTES} stayed at {queued} after {round} rounds"
        );
        for id in 10..10 + AUCTIONS {
            bidder.bid(id, amount(round)).await;
        }
        if round % 5 == 4 {
            queued = metric(&served, QUEUE_BYTES).await;
            if queued >= (AUCTIONS * UPDATE_BYTES_LEAST) as f64 {
                break;
            }
        }
    }
    println!("{QUEUE_BYTES} {queued} while the reader is stalled");
}
