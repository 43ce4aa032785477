//! Live prices for a connected client: [`crate::Client::watch`] opens a QUIC stream on the
//! client's connection, subscribes on it, and returns a [`Watcher`] that yields the
//! snapshots, price updates, closes and settlements of the matching auctions.
//!
//! With [`Watch::datagrams`], the node sends price updates as QUIC datagrams (when they fit
//! one): the latest price with the least delay, loss-tolerant because each one supersedes
//! the previous. Snapshots, closes and settlements always come on the reliable stream.
//! Datagrams can arrive out of order or twice; the watcher drops any price update older
//! than what it already delivered for the auction, so what it yields only moves forward.
//!
//! A watcher does not reconnect by itself: when [`Watcher::next`] fails, call
//! [`crate::Client::watch`] again with [`Watcher::positions`] as the resume positions — the
//! node then sends only what moved meanwhile.

use std::collections::{HashMap, VecDeque};

use gavel_proto::frame::{self, FrameDecoder};
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body as Request;
use gavel_proto::pb::server_message::Body as Reply;
use prost::Message as _;

use crate::connection::{FRAME_BYTES_MAX, server_error};
use crate::error::BidError;

/// Bytes read from the update stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    /// Exact topics.
    pub topics: Vec<String>,
    /// Patterns (`*` one segment, a final `>` the rest).
    pub patterns: Vec<String>,
    /// At most one update per auction per this many milliseconds (0: as fast as read).
    pub interval_ms: u32,
    /// Ask for price updates as QUIC datagrams.
    pub datagrams: bool,
    /// Positions already seen (from an earlier [`Watcher::positions`]).
    pub resume: Vec<pb::StreamPosition>,
}

impl Watch {
    /// Watches the auctions whose topics match `patterns`.
    pub fn patterns<I: IntoIterator<Item = S>, S: Into<String>>(patterns: I) -> Watch {
        Watch {
            patterns: patterns.into_iter().map(Into::into).collect(),
            ..Watch::default()
        }
    }

    /// Price updates as QUIC datagrams.
    pub fn with_datagrams(mut self) -> Watch {
        self.datagrams = true;
        self
    }

    /// At most one update per auction per `interval_ms`.
    pub fn with_interval_ms(mut self, interval_ms: u32) -> Watch {
        self.interval_ms = interval_ms;
        self
    }
}

/// How an update reached the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The reliable stream.
    Stream,
    /// A QUIC datagram.
    Datagram,
}

/// One thing a [`Watcher`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// The full state of an auction (on subscribe, for a newly matching auction, after a
    /// resume or an epoch change).
    Snapshot(pb::AuctionSnapshot),
    /// The latest price of an auction.
    Price(pb::PriceUpdate, Via),
    /// The auction stopped taking bids.
    Closed(pb::AuctionClosed),
    /// The auction's durable result.
    Settled(pb::AuctionSettled),
    /// The node lost the auction's history: drop what is known of it; a snapshot follows.
    SnapshotRequired(pb::SnapshotRequired),
}

impl Update {
    /// The auction and `(epoch, seq)` the update brings the client to, if it carries one.
    fn position(&self) -> Option<(u64, u64, u64)> {
        match self {
            Update::Snapshot(s) => s.rules.as_ref().map(|r| (r.auction_id, s.epoch, s.seq)),
            Update::Price(u, _) => Some((u.auction_id, u.epoch, u.seq)),
            Update::Closed(c) => Some((c.auction_id, c.epoch, c.seq)),
            Update::Settled(s) => Some((s.auction_id, s.epoch, s.seq)),
            Update::SnapshotRequired(_) => None,
        }
    }
}

/// The updates of one subscription stream; see the module documentation.
#[derive(Debug)]
pub struct Watcher {
    connection: quinn::Connection,
    // Kept open: finishing it would end the subscription.
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    datagrams: bool,
    ready: VecDeque<Update>,
    /// `(epoch, seq)` delivered last per auction.
    seen: HashMap<u64, (u64, u64)>,
}

impl Watcher {
    /// Opens a stream on `connection`, subscribes and waits for the node's answer.
    pub(crate) async fn open(
        connection: quinn::Connection,
        watch: Watch,
    ) -> Result<Watcher, BidError> {
        let lost = |e: &dyn std::fmt::Display| BidError::Connection(e.to_string());
        let (mut send, recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
        let request = pb::ClientMessage {
            request_id: 1,
            body: Some(Request::Subscribe(pb::Subscribe {
                topics: watch.topics,
                patterns: watch.patterns,
                interval_ms: watch.interval_ms,
                resume: watch.resume.clone(),
                datagrams: watch.datagrams,
                encoding: pb::StreamEncoding::Protobuf as i32,
            })),
        };
        let mut bytes = Vec::new();
        frame::encode(&request, &mut bytes);
        send.write_all(&bytes).await.map_err(|e| lost(&e))?;
        let mut watcher = Watcher {
            connection,
            _send: send,
            recv,
            decoder: FrameDecoder::new(FRAME_BYTES_MAX),
            datagrams: watch.datagrams,
            ready: VecDeque::new(),
            seen: watch
                .resume
                .iter()
                .map(|p| (p.auction_id, (p.epoch, p.seq)))
                .collect(),
        };
        loop {
            match read_frame(&mut watcher.recv, &mut watcher.decoder).await? {
                Some(pb::ServerMessage {
                    request_id: 1,
                    body: Some(Reply::Subscribed(_)),
                }) => return Ok(watcher),
                Some(pb::ServerMessage {
                    request_id: 1,
                    body: Some(Reply::Error(error)),
                }) => return Err(server_error(error)),
                Some(other) => watcher.accept(other, Via::Stream),
                None => {}
            }
        }
    }

    /// The next update; `Err` when the stream or connection ended (watch again with
    /// [`Watcher::positions`]).
    pub async fn next(&mut self) -> Result<Update, BidError> {
        loop {
            if let Some(update) = self.ready.pop_front() {
                return Ok(update);
            }
            let datagrams = self.datagrams;
            tokio::select! {
                message = read_frame(&mut self.recv, &mut self.decoder) => {
                    if let Some(message) = message? {
                        self.accept(message, Via::Stream);
                    }
                }
                datagram = self.connection.read_datagram(), if datagrams => {
                    let bytes = datagram.map_err(|e| BidError::Connection(e.to_string()))?;
                    match pb::ServerMessage::decode(bytes) {
                        Ok(message) => self.accept(message, Via::Datagram),
                        Err(e) => tracing::warn!(error = %e, "undecodable datagram from the node"),
                    }
                }
            }
        }
    }

    /// The last position delivered per auction, for resuming on a new stream.
    pub fn positions(&self) -> Vec<pb::StreamPosition> {
        let mut positions: Vec<pb::StreamPosition> = self
            .seen
            .iter()
            .map(|(&auction_id, &(epoch, seq))| pb::StreamPosition {
                auction_id,
                epoch,
                seq,
            })
            .collect();
        positions.sort_unstable_by_key(|p| p.auction_id);
        positions
    }

    /// Queues `message` if it moves its auction forward (stale datagrams are dropped).
    fn accept(&mut self, message: pb::ServerMessage, via: Via) {
        let update = match message.body {
            Some(Reply::AuctionSnapshot(s)) => Update::Snapshot(s),
            Some(Reply::PriceUpdate(u)) => Update::Price(u, via),
            Some(Reply::AuctionClosed(c)) => Update::Closed(c),
            Some(Reply::AuctionSettled(s)) => Update::Settled(s),
            Some(Reply::SnapshotRequired(r)) => {
                self.seen.remove(&r.auction_id);
                Update::SnapshotRequired(r)
            }
            Some(Reply::Error(error)) => {
                tracing::warn!(code = error.code, message = %error.message, "the node reported an error on the update stream");
                return;
            }
            _ => return,
        };
        if let Some((auction, epoch, seq)) = update.position() {
            let fresh_epoch = matches!(update, Update::Snapshot(_));
            match self.seen.get(&auction) {
                Some(&(seen_epoch, seen_seq))
                    if !fresh_epoch && epoch == seen_epoch && seq <= seen_seq =>
                {
                    // Older than (or the same as) what was delivered: a late or repeated
                    // datagram, or a stream update a datagram overtook.
                    if !matches!(update, Update::Price(..)) {
                        self.ready.push_back(update);
                    }
                    return;
                }
                _ => {}
            }
            self.seen.insert(auction, (epoch, seq));
        }
        self.ready.push_back(update);
    }
}

/// Reads until one whole message is decoded; `Ok(None)` never ends the loop of a caller
/// by itself (it just means "read again").
async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<pb::ServerMessage>, BidError> {
    match decoder.next_message::<pb::ServerMessage>() {
        Ok(Some(message)) => return Ok(Some(message)),
        Ok(None) => {}
        Err(e) => return Err(BidError::Connection(e.to_string())),
    }
    match recv.read_chunk(READ_CHUNK_BYTES, true).await {
        Ok(Some(chunk)) => {
            decoder.push(&chunk.bytes);
            Ok(None)
        }
        Ok(None) => Err(BidError::Connection(
            "the node finished the update stream".into(),
        )),
        Err(e) => Err(BidError::Connection(e.to_string())),
    }
}
