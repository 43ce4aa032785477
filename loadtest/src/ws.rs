//! WebSocket over TLS, and the watchers: N connections that subscribe, then record every
//! price update's delivery latency (now − the update's `accepted_at_us`, both by this
//! machine's clock) and count deliveries and `seq` gaps (conflated updates). The same code
//! watches the node (`gavel.v1.proto` subscriptions) and nats-server (its text protocol over
//! WebSocket, carrying the same `PriceUpdate` bytes as payload), so both sides of the fan-out
//! comparison are measured alike.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use gavel_proto::pb;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

use crate::staleness::{self, Held};
use crate::stats::{Recorder, unix_us};
use crate::target::https_connect;

/// The node's binary subprotocol.
pub const GAVEL_PROTO: &str = "gavel.v1.proto";
/// Handshakes (TCP + TLS + WebSocket) in progress at once while connecting watchers (the
/// node admits 256 pending TLS handshakes by default).
const CONNECTING_MAX: usize = 64;
/// Longest wait for one watcher's connection and subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client WebSocket over TLS.
pub type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// Opens a WebSocket to `https_addr` `path`, offering `subprotocol` if any.
pub async fn connect(
    connector: &TlsConnector,
    https_addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<Socket> {
    let stream = https_connect(connector, https_addr).await?;
    let mut request = format!("wss://localhost{path}").into_client_request()?;
    if let Some(subprotocol) = subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", subprotocol.parse()?);
    }
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, None)
        .await
        .with_context(|| format!("WebSocket handshake with {https_addr}{path}"))?;
    Ok(socket)
}

/// What the watchers talk to.
#[derive(Clone, Debug)]
pub enum Feed {
    /// A Gavel node: `Subscribe { patterns: [pattern], interval_ms }`.
    Gavel {
        /// The pattern subscribed to.
        pattern: String,
        /// The subscription's interval.
        interval_ms: u32,
    },
    /// nats-server: `SUB subject`; payloads are encoded `PriceUpdate`s.
    Nats {
        /// The subject subscribed to.
        subject: String,
    },
    /// The burst floor ([`crate::burst`]): nothing to subscribe to; it sends the node's
    /// messages. Every watcher logs its updates (the floor needs each round's last arrival).
    Burst,
}

impl Feed {
    /// Whether watcher `index` of `count` logs its updates.
    fn logs(&self, index: usize, count: usize) -> bool {
        matches!(self, Feed::Burst) || staleness::sampled(index, count)
    }
}

/// Running watchers.
pub struct Watchers {
    /// One task per connection; each ends when the stop token is cancelled.
    pub tasks: Vec<JoinHandle<()>>,
    /// Watchers connected and subscribed.
    pub subscribed: usize,
    /// Updates delivered so far over all watchers (read it to see the fan-out progress).
    pub delivered: Arc<AtomicU64>,
    /// Watchers that log their updates ([`staleness::sampled`]) ...
    pub sampled: usize,
    /// ... and their logs, each added when its watcher ends.
    pub logs: Arc<Mutex<Vec<Vec<Held>>>>,
}

impl Watchers {
    /// The sampled watchers' logs, once they all ended (after `stop`), or whatever came
    /// within `wait`.
    pub async fn sampled_logs(&self, wait: Duration) -> Vec<Vec<Held>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ended = self.logs.lock().expect("no panic holding the logs").len();
            if ended >= self.sampled || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::mem::take(&mut *self.logs.lock().expect("no panic holding the logs"))
    }
}

/// Connects `count` watchers (anonymous TLS) to `https_addr` `path`, subscribes each to
/// `feed`, and returns once all are subscribed; they record into `recorder` until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn watch(
    connector: TlsConnector,
    https_addr: SocketAddr,
    path: &str,
    feed: Feed,
    count: usize,
    recorder: Recorder,
    stop: CancellationToken,
    progress: &indicatif::ProgressBar,
) -> Result<Watchers> {
    let connecting = Arc::new(Semaphore::new(CONNECTING_MAX));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        let connecting = Arc::clone(&connecting);
        let connector = connector.clone();
        let feed = feed.clone();
        let path = path.to_owned();
        let subprotocol = matches!(feed, Feed::Gavel { .. }).then_some(GAVEL_PROTO);
        pending.push(tokio::spawn(async move {
            let _permit = connecting.acquire_owned().await?;
            tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
                let mut socket = connect(&connector, https_addr, &path, subprotocol).await?;
                subscribe(&mut socket, &feed).await?;
                anyhow::Ok(socket)
            })
            .await
            .context("connecting and subscribing a watcher timed out")?
        }));
    }
    let mut tasks = Vec::with_capacity(count);
    let mut failed = 0_usize;
    let mut first_error = None;
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut sampled = 0;
    for (index, connecting) in pending.into_iter().enumerate() {
        match connecting.await.context("watcher task")? {
            Ok(socket) => {
                let seen = Seen {
                    log: feed.logs(index, count).then(Vec::new),
                    ..Seen::default()
                };
                sampled += usize::from(seen.log.is_some());
                let reading = read_updates(
                    socket,
                    feed.clone(),
                    seen,
                    recorder.clone(),
                    Arc::clone(&delivered),
                    stop.clone(),
                );
                let logs = Arc::clone(&logs);
                tasks.push(tokio::spawn(async move {
                    if let Some(log) = reading.await {
                        logs.lock().expect("no panic holding the logs").push(log);
                    }
                }));
                progress.inc(1);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if failed > 0 {
        recorder.count("watcher_connect_failed", failed as u64);
        if tasks.is_empty() {
            bail!(
                "no watcher connected: {:#}",
                first_error.expect("one failure")
            );
        }
        progress.println(format!(
            "{failed} of {count} watchers failed to connect; first: {:#}",
            first_error.expect("one failure")
        ));
    }
    Ok(Watchers {
        subscribed: tasks.len(),
        tasks,
        delivered,
        sampled,
        logs,
    })
}

/// Sends the subscription and waits for its confirmation.
pub(crate) async fn subscribe(socket: &mut Socket, feed: &Feed) -> Result<()> {
    match feed {
        Feed::Gavel {
            pattern,
            interval_ms,
        } => {
            let request = pb::ClientMessage {
                request_id: 1,
                body: Some(pb::client_message::Body::Subscribe(pb::Subscribe {
                    topics: vec![],
                    patterns: vec![pattern.clone()],
                    interval_ms: *interval_ms,
                    resume: vec![],
                    datagrams: false,
                    encoding: pb::StreamEncoding::Protobuf as i32,
                })),
            };
            socket
                .send(Message::Binary(request.encode_to_vec().into()))
                .await?;
            while let Some(message) = socket.next().await {
                let Message::Binary(bytes) = message? else {
                    continue;
                };
                let answer = pb::ServerMessage::decode(bytes)?;
                match answer.body {
                    Some(pb::server_message::Body::Subscribed(_)) if answer.request_id == 1 => {
                        return Ok(());
                    }
                    Some(pb::server_message::Body::Error(e)) => {
                        bail!("subscription refused: {:?} {}", e.code(), e.message)
                    }
                    _ => {}
                }
            }
            bail!("the node closed the WebSocket before confirming the subscription")
        }
        Feed::Burst => Ok(()),
        Feed::Nats { subject } => {
            // verbose off (no +OK per message); the PONG to our PING confirms the SUB.
            let hello = format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}}\r\nSUB {subject} 1\r\nPING\r\n"
            );
            socket
                .send(Message::Binary(hello.into_bytes().into()))
                .await?;
            let mut parser = NatsParser::default();
            while let Some(message) = socket.next().await {
                let bytes = match message? {
                    Message::Binary(b) => b.to_vec(),
                    Message::Text(t) => t.as_bytes().to_vec(),
                    _ => continue,
                };
                parser.push(&bytes);
                while let Some(item) = parser.next_item()? {
                    match item {
                        NatsItem::Pong => return Ok(()),
                        NatsItem::Ping => {
                            socket
                                .send(Message::Binary(b"PONG\r\n".to_vec().into()))
                                .await?;
                        }
                        NatsItem::Error(e) => bail!("nats-server refused: {e}"),
                        NatsItem::Msg(_) | NatsItem::Other => {}
                    }
                }
            }
            bail!("nats-server closed the WebSocket before confirming the subscription")
        }
    }
}

/// Reads updates until `stop`, recording each `PriceUpdate`'s delivery latency; returns
/// the watcher's log of updates if it keeps one.
async fn read_updates(
    mut socket: Socket,
    feed: Feed,
    mut seen: Seen,
    recorder: Recorder,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Option<Vec<Held>> {
    let mut parser = NatsParser::default();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = socket.next() => message,
        };
        let bytes = match message {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec().into(),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(0, |f| u16::from(f.code));
                recorder.count(&format!("watcher_closed_{code}"), 1);
                return seen.log;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                recorder.count("watcher_disconnected", 1);
                return seen.log;
            }
        };
        match &feed {
            Feed::Gavel { .. } | Feed::Burst => {
                read_gavel_message(bytes, &mut seen, &recorder, &delivered);
            }
            Feed::Nats { .. } => {
                parser.push(&bytes);
                loop {
                    match parser.next_item() {
                        Ok(Some(NatsItem::Msg(payload))) => {
                            match pb::PriceUpdate::decode(&payload[..]) {
                                Ok(update) => seen.update(&update, &recorder, &delivered),
                                Err(_) => recorder.count("watcher_undecodable", 1),
                            }
                        }
                        Ok(Some(NatsItem::Ping)) => {
                            let _ = socket
                                .send(Message::Binary(b"PONG\r\n".to_vec().into()))
                                .await;
                        }
                        Ok(Some(NatsItem::Error(e))) => {
                            let kind = if e.to_lowercase().contains("slow consumer") {
                                "watcher_slow_consumer"
                            } else {
                                "watcher_server_error"
                            };
                            recorder.count(kind, 1);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => {
                            recorder.count("watcher_undecodable", 1);
                            return seen.log;
                        }
                    }
                }
            }
        }
    }
    let _ = socket.close(None).await;
    seen.log
}

/// Records one message of the node's feed: an update's delivery, or an error's code.
fn read_gavel_message(bytes: Bytes, seen: &mut Seen, recorder: &Recorder, delivered: &AtomicU64) {
    match pb::ServerMessage::decode(bytes) {
        Ok(pb::ServerMessage {
            body: Some(pb::server_message::Body::PriceUpdate(update)),
            ..
        }) => seen.update(&update, recorder, delivered),
        Ok(pb::ServerMessage {
            body: Some(pb::server_message::Body::Error(e)),
            ..
        }) => recorder.count(
            &format!("watcher_error_{}", e.code().as_str_name().to_lowercase()),
            1,
        ),
        Ok(_) => {}
        Err(_) => recorder.count("watcher_undecodable", 1),
    }
}

/// One watcher's view: the last `seq` per auction, to count gaps (conflated updates), and,
/// for a sampled watcher, the log of what arrived when (for its staleness).
#[derive(Default)]
struct Seen {
    last_seq: HashMap<u64, u64>,
    log: Option<Vec<Held>>,
}

impl Seen {
    fn update(&mut self, update: &pb::PriceUpdate, recorder: &Recorder, delivered: &AtomicU64) {
        let now_us = unix_us();
        if let Some(log) = &mut self.log {
            log.push(Held {
                auction: update.auction_id,
                seq: update.seq,
                at_us: now_us,
            });
        }
        let latency_us = now_us.saturating_sub(update.accepted_at_us);
        let skipped = match self.last_seq.insert(update.auction_id, update.seq) {
            Some(last) if update.seq > last + 1 => update.seq - last - 1,
            _ => 0,
        };
        recorder.delivery(latency_us, skipped);
        // Ordering: a progress counter only.
        delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// One item of the nats-server protocol as a client reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum NatsItem {
    /// `MSG <subject> <sid> [reply] <bytes>` and its payload.
    Msg(Vec<u8>),
    /// `PING`: answer `PONG`.
    Ping,
    /// `PONG`.
    Pong,
    /// `-ERR '<text>'`.
    Error(String),
    /// `INFO`, `+OK`.
    Other,
}

/// Longest protocol line accepted from nats-server.
const NATS_LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest payload accepted (nats-server's default `max_payload` is 1 MiB).
const NATS_PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// The client side of nats-server's text protocol: bytes in (WebSocket frames split it
/// anywhere), items out.
#[derive(Default)]
pub struct NatsParser {
    buf: Vec<u8>,
}

impl NatsParser {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole item, if one has arrived.
    pub fn next_item(&mut self) -> Result<Option<NatsItem>> {
        let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            if self.buf.len() > NATS_LINE_BYTES_MAX {
                bail!("nats protocol line over {NATS_LINE_BYTES_MAX} bytes");
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&self.buf[..line_end])
            .context("nats protocol line")?
            .to_owned();
        let (item, consumed) = if let Some(args) = line.strip_prefix("MSG ") {
            let size: usize = args
                .split_whitespace()
                .last()
                .context("MSG without a size")?
                .parse()
                .context("MSG size")?;
            if size > NATS_PAYLOAD_BYTES_MAX {
                bail!("nats payload of {size} bytes");
            }
            let start = line_end + 2;
            if self.buf.len() < start + size + 2 {
                return Ok(None);
            }
            (
                NatsItem::Msg(self.buf[start..start + size].to_vec()),
                start + size + 2,
            )
        } else if line == "PING" {
            (NatsItem::Ping, line_end + 2)
        } else if line == "PONG" {
            (NatsItem::Pong, line_end + 2)
        } else if let Some(e) = line.strip_prefix("-ERR") {
            (NatsItem::Error(e.trim().to_owned()), line_end + 2)
        } else {
            (NatsItem::Other, line_end + 2)
        };
        self.buf.drain(..consumed);
        Ok(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_items_split_anywhere() {
        let stream = b"INFO {\"x\":1}\r\nPONG\r\nMSG a.b 1 5\r\nhe\r\no\r\nPING\r\n-ERR 'Slow Consumer Detected'\r\n";
        for split in 0..stream.len() {
            let mut p = NatsParser::default();
            let mut items = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                p.push(part);
                while let Some(item) = p.next_item().unwrap() {
                    items.push(item);
                }
            }
            assert_eq!(
                items,
                vec![
                    NatsItem::Other,
                    NatsItem::Pong,
                    NatsItem::Msg(b"he\r\no".to_vec()),
                    NatsItem::Ping,
                    NatsItem::Error("'Slow Consumer Detected'".into()),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn oversized_nats_input_is_refused() {
        let mut p = NatsParser::default();
        p.push(b"MSG a 1 999999999\r\n");
        assert!(p.next_item().is_err());
        let mut p = NatsParser::default();
        p.push(&vec![b'x'; NATS_LINE_BYTES_MAX + 1]);
        assert!(p.next_item().is_err());
    }
}
