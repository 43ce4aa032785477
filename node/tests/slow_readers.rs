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

use common::https::{plain_get, request_to, tls_over, ws_over};
use common::serve::raw_connect;
use common::served::{Served, english_rules, serve_with_env};
use common::stream::{now_us, place_bid};
use futures_util::{SinkExt, StreamExt};
use gavel_proto::frame::{self, FrameDecoder};
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use gavel_transport::Identity;
use gavel_transport::tls::dev::{self, DevCerts};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

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
/// Most updates the slow reader may get, in percent of the bids.
const UPDATES_PERCENT_MAX: u64 = 15;
/// Longest wait for anything else.
const WAIT: Duration = Duration::from_secs(30);
const ADMIN: Option<&str> = Some("admin/admin");
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

/// Creates English auction `id` on `topic` through the admin API.
async fn create(served: &Served, certs: &DevCerts, id: u64, topic: &str) {
    let body = english_rules(id, topic, now_us() - 1_000_000).into_bytes();
    let (status, _, answer) = request_to(
        served.https,
        certs,
        ADMIN,
        "POST",
        "/v1/auctions",
        Some(body),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&answer)
    );
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

/// Folds one stream message (canonical JSON) into the count; `Some` once it carries
/// `final_price`. Prices only rise along the stream.
fn fold_json(message: &Value, final_price: u64, updates: &mut u64, last: &mut u64) -> bool {
    let Some(update) = message.get("priceUpdate") else {
        return false;
    };
    let price: u64 = update["price"].as_str().unwrap().parse().unwrap();
    assert!(
        price > *last,
        "a newer price came first: {price} after {last}"
    );
    *last = price;
    *updates += 1;
    price == final_price
}

/// Checks and prints what a slow reader of `transport` measured; the conflated counter must
/// have risen from `conflated_before`.
async fn check(served: &Served, transport: &str, seen: &Seen, last_bid: Instant, before: f64) {
    let delay = seen.final_at.saturating_duration_since(last_bid);
    let conflated_now = metric(served, &conflated(transport)).await;
    println!(
        "{transport} slow reader: {} of {BIDS} updates ({:.1} %), final price {:?} after the \
         last bid; gavel_stream_updates_conflated_total +{}",
        seen.updates,
        seen.updates as f64 * 100.0 / BIDS as f64,
        delay,
        conflated_now - before
    );
    assert!(
        delay <= FINAL_PRICE_DELAY_MAX,
        "{transport}: the final price came {delay:?} after the last bid"
    );
    assert!(
        seen.updates * 100 <= BIDS * UPDATES_PERCENT_MAX,
        "{transport}: {} updates of {BIDS}",
        seen.updates
    );
    assert!(conflated_now > before, "{transport}: nothing conflated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_reader_sees_the_final_price_promptly() {
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
        let (mut updates, mut last) = (0, 0);
        while !fold_json(
            &next_json(&mut socket).await,
            amount(BIDS - 1),
            &mut updates,
            &mut last,
        ) {}
        Seen {
            updates,
            final_at: Instant::now(),
        }
    });
    let last_bid = QuicBidder::connect(&served, &certs).await.bid_run(1).await;
    let seen = reader.await.unwrap();
    check(&served, "ws", &seen, last_bid, before).await;
}
