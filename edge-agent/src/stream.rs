//! The edge stream from the node: a QUIC stream of the SDK's connection on which the agent
//! subscribes with `encoding = EDGE` (docs/quic.md), resuming from the `(epoch, seq)` it
//! holds per auction; after the node's `Subscribed` answer the stream carries edge frames,
//! which the decoder turns into full states for the store.
//!
//! Bad input (docs/edge-stream.md, "What a decoder does"): a frame that fails a check
//! (truncated, unknown version, forged length, corrupt, a frame gap) is logged and counted
//! (`gavel_edge_decode_errors_total{error}`), the decoder drops everything it derived, and
//! the agent ends the stream and subscribes again on a new one — which starts every
//! auction with a keyframe. One auction's record that cannot apply (no keyframe, a seq
//! gap) drops that auction in the decoder and asks the node for a keyframe with a `Resume`
//! of the auction from seq 0. The store only ever takes what the decoder yields, so a
//! damaged frame never becomes a published price; what it held stays the last good state.
//! A lost stream is subscribed again after the agent's backoff.
//!
//! With `--datagrams`, the subscribe asks for price updates as QUIC datagrams, each a
//! self-contained keyframe applied only if it moves its auction forward (`Datagrams`); a
//! lost one is caught by a periodic `Resume` of the auctions they touched, and a close on
//! the stream after lost datagrams asks for a keyframe (`state::Store::apply_from`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_client::Client;
use gavel_edge_proto::{Decoded, EdgeDecoder, EdgeError, frame_len};
use gavel_proto::frame;
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body as Request;
use gavel_proto::pb::server_message::Body as Reply;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::backoff::Backoff;
use crate::state::{Applied, Store, Via};

/// Bytes read from the stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The largest edge frame accepted: the node writes at most 16 KiB (docs/quic.md), so a
/// header declaring more is a forged length, refused before its body is awaited.
const FRAME_BYTES_MAX: usize = 16 * 1024;
/// How often the auctions that price datagrams touched are checked for a lost update.
const DATAGRAM_CHECK: Duration = Duration::from_secs(1);
/// Largest protobuf answer read before the edge frames (a `Subscribed` or an error).
const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Keeps the edge stream up until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(shared.config.reconnect_backoff_max);
    let mut streams = 0_u64;
    loop {
        let Some(client) = shared.link.client(&shutdown).await else {
            return;
        };
        if streams > 0 {
            metrics::counter!(crate::metrics::RECONNECTS).increment(1);
        }
        streams += 1;
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = session(&shared, &client, &mut backoff) => ended,
        };
        metrics::gauge!(crate::metrics::CONNECTED).set(0.0);
        let delay = backoff.failed(Instant::now(), &mut rand::rng());
        tracing::warn!(why = %ended, ?delay, "edge stream ended; subscribing again after the delay");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One stream: subscribe, then apply frames (and price datagrams) until it fails; the
/// reason.
async fn session(shared: &Shared, client: &Client, backoff: &mut Backoff) -> String {
    let connection = match client.connection().await {
        Ok(connection) => connection,
        Err(e) => return format!("no connection: {e}"),
    };
    let (mut send, mut recv) = match connection.open_bi().await {
        Ok(stream) => stream,
        Err(e) => return format!("opening a stream: {e}"),
    };
    let mut reader = Reader::new(shared.config.auctions_max);
    if let Err(e) = subscribe(shared, &mut send, &mut recv, &mut reader).await {
        return e;
    }
    tracing::info!(node = %shared.config.node, patterns = ?shared.config.patterns,
        datagrams = shared.config.datagrams, "edge stream subscribed");
    metrics::gauge!(crate::metrics::CONNECTED).set(1.0);
    backoff.connected(Instant::now());
    // The first edge bytes may have come with the answer.
    let mut chunk = bytes::Bytes::new();
    metrics::counter!(crate::metrics::STREAM_BYTES).increment(reader.buffer.len() as u64);
    let mut datagrams = Datagrams::new(shared.config.datagrams);
    loop {
        let needed = match reader.push(&chunk, &shared.store) {
            Ok(needed) => needed,
            Err(e) => return format!("a bad edge frame ({e}); every state it carried is dropped"),
        };
        if let Some(request) = keyframe_request(&needed, &shared.store)
            && let Err(e) = send.write_all(&request).await
        {
            return format!("asking for keyframes: {e}");
        }
        chunk = tokio::select! {
            read = recv.read_chunk(READ_CHUNK_BYTES, true) => match read {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => return "the node finished the stream".into(),
                Err(e) => return format!("reading: {e}"),
            },
            datagram = connection.read_datagram(), if datagrams.on => match datagram {
                Ok(datagram) => {
                    datagrams.apply(&datagram, &shared.store);
                    bytes::Bytes::new()
                }
                Err(e) => return format!("reading a datagram: {e}"),
            },
            _ = datagrams.check.tick(), if datagrams.on => {
                if let Some(request) = datagrams.check_request(&shared.store)
                    && let Err(e) = send.write_all(&request).await
                {
                    return format!("checking datagram auctions: {e}");
                }
                bytes::Bytes::new()
            }
        };
        metrics::counter!(crate::metrics::STREAM_BYTES).increment(chunk.len() as u64);
    }
}

/// Sends the `Subscribe` (resuming from the held positions) and reads the node's answer.
async fn subscribe(
    shared: &Shared,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reader: &mut Reader,
) -> Result<(), String> {
    let subscribe = pb::ClientMessage {
        request_id: 1,
        body: Some(Request::Subscribe(pb::Subscribe {
            patterns: shared.config.patterns.clone(),
            interval_ms: shared.config.interval_ms,
            resume: shared.store.positions(),
            encoding: pb::StreamEncoding::Edge as i32,
            datagrams: shared.config.datagrams,
            ..pb::Subscribe::default()
        })),
    };
    let mut bytes = Vec::new();
    frame::encode(&subscribe, &mut bytes);
    send.write_all(&bytes)
        .await
        .map_err(|e| format!("subscribing: {e}"))?;
    reader.subscribed(recv).await
}

/// A `Resume` of each auction from seq 0 (its held epoch): the node answers with its
/// snapshot, which the stream carries as a keyframe.
fn keyframe_request(auctions: &[u64], store: &Store) -> Option<Vec<u8>> {
    let positions: Vec<_> = auctions
        .iter()
        .map(|&auction_id| pb::StreamPosition {
            auction_id,
            epoch: store.get(auction_id).map_or(0, |s| s.epoch),
            seq: 0,
        })
        .collect();
    metrics::counter!(crate::metrics::KEYFRAME_REQUESTS, "why" => "record")
        .increment(positions.len() as u64);
    resume_request(positions)
}

/// A `Resume` of `positions`: the node sends a snapshot (a keyframe on the stream) of each
/// auction that moved since its position; `None` if there is none.
fn resume_request(positions: Vec<pb::StreamPosition>) -> Option<Vec<u8>> {
    if positions.is_empty() {
        return None;
    }
    let request = pb::ClientMessage {
        request_id: 2,
        body: Some(Request::Resume(pb::Resume { positions })),
    };
    let mut bytes = Vec::new();
    frame::encode(&request, &mut bytes);
    Some(bytes)
}

/// The price datagrams of a stream (docs/edge-stream.md, "Asking a node for the edge
/// stream"): each one edge frame with one keyframe, decoded on its own and applied only if
/// it moves its auction forward. A lost datagram leaves its auction behind until its next
/// update — so every [`DATAGRAM_CHECK`] the agent sends a `Resume` with the held position
/// of each auction datagrams touched in the last two checks, and the node sends a keyframe
/// of each that moved since (a lost last update of a burst comes back within two checks).
struct Datagrams {
    on: bool,
    check: tokio::time::Interval,
    /// Auctions touched since the last check, and in the check before it.
    touched: [BTreeSet<u64>; 2],
}

impl Datagrams {
    fn new(on: bool) -> Datagrams {
        Datagrams {
            on,
            check: tokio::time::interval(DATAGRAM_CHECK),
            touched: [BTreeSet::new(), BTreeSet::new()],
        }
    }

    /// Decodes one datagram and applies its state; a bad one is counted and dropped (the
    /// checks bring the auction back).
    fn apply(&mut self, datagram: &[u8], store: &Store) {
        metrics::counter!(crate::metrics::DATAGRAMS).increment(1);
        metrics::counter!(crate::metrics::STREAM_BYTES).increment(datagram.len() as u64);
        let mut decoded = Vec::new();
        let mut decoder = EdgeDecoder::new(FRAME_BYTES_MAX, 1);
        if let Err(e) = decoder.decode_frame(datagram, &mut decoded) {
            count(&e);
            tracing::warn!(error = %e, "a bad price datagram from the node; dropped");
            return;
        }
        for decoded in decoded {
            match decoded {
                Decoded::State(state) => {
                    self.touched[0].insert(state.auction_id);
                    store.apply_from(state, Via::Datagram);
                }
                Decoded::KeyframeNeeded { error, .. } => count(&error),
            }
        }
    }

    /// The `Resume` of the auctions touched in the last two checks, if any.
    fn check_request(&mut self, store: &Store) -> Option<Vec<u8>> {
        let previous = std::mem::take(&mut self.touched[1]);
        self.touched[1] = std::mem::take(&mut self.touched[0]);
        let positions: Vec<_> = previous
            .union(&self.touched[1])
            .filter_map(|&auction| store.position(auction))
            .collect();
        metrics::counter!(crate::metrics::KEYFRAME_REQUESTS, "why" => "datagram_check")
            .increment(positions.len() as u64);
        resume_request(positions)
    }
}

/// The agent's side of one edge stream: the bytes not yet a whole frame, and the decoder.
struct Reader {
    buffer: Vec<u8>,
    decoder: EdgeDecoder,
    decoded: Vec<Decoded>,
}

impl Reader {
    fn new(auctions_max: usize) -> Reader {
        Reader {
            buffer: Vec::new(),
            decoder: EdgeDecoder::new(FRAME_BYTES_MAX, auctions_max),
            decoded: Vec::new(),
        }
    }

    /// Reads the node's protobuf answer to the subscribe; bytes after it stay buffered as
    /// the first edge bytes.
    async fn subscribed(&mut self, recv: &mut quinn::RecvStream) -> Result<(), String> {
        loop {
            if let Some(answer) = self.answer()? {
                return match answer.body {
                    Some(Reply::Subscribed(_)) => Ok(()),
                    Some(Reply::Error(error)) => Err(format!(
                        "the node refused the subscription: {} (code {})",
                        error.message, error.code
                    )),
                    other => Err(format!("an unexpected answer to the subscribe: {other:?}")),
                };
            }
            match recv.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err("the node finished the stream".into()),
                Err(e) => return Err(format!("reading the answer: {e}")),
            }
        }
    }

    /// One whole length-delimited message off the front of the buffer, if there is one.
    fn answer(&mut self) -> Result<Option<pb::ServerMessage>, String> {
        let Ok(len) = prost::decode_length_delimiter(self.buffer.as_slice()) else {
            // Not a whole prefix yet (or a broken one, refused once it is ten bytes).
            if self.buffer.len() >= 10 {
                return Err("a broken length prefix from the node".into());
            }
            return Ok(None);
        };
        if len > ANSWER_BYTES_MAX {
            return Err(format!("an answer of {len} bytes from the node"));
        }
        let start = prost::length_delimiter_len(len);
        if self.buffer.len() < start + len {
            return Ok(None);
        }
        let message = pb::ServerMessage::decode(&self.buffer[start..start + len])
            .map_err(|e| format!("an undecodable answer: {e}"))?;
        self.buffer.drain(..start + len);
        Ok(Some(message))
    }

    /// Applies every whole frame in the buffer after `bytes`; the auctions that need a
    /// keyframe, or the frame error that ends the stream.
    fn push(&mut self, bytes: &[u8], store: &Store) -> Result<Vec<u64>, EdgeError> {
        self.buffer.extend_from_slice(bytes);
        let mut needed = Vec::new();
        let mut at = 0;
        let result = loop {
            let len = match frame_len(&self.buffer[at..], FRAME_BYTES_MAX) {
                Ok(Some(len)) if at + len <= self.buffer.len() => len,
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            };
            let frame = &self.buffer[at..at + len];
            at += len;
            if let Err(e) = self.decoder.decode_frame(frame, &mut self.decoded) {
                break Err(e);
            }
            for decoded in self.decoded.drain(..) {
                match decoded {
                    Decoded::State(state) => {
                        let auction = state.auction_id;
                        if store.apply_from(state, Via::Stream) == Applied::KeyframeNeeded {
                            tracing::debug!(
                                auction,
                                "a close after lost datagrams; asking for a keyframe"
                            );
                            needed.push(auction);
                        }
                    }
                    Decoded::KeyframeNeeded { auction, error } => {
                        count(&error);
                        tracing::warn!(auction, %error, "an edge record did not apply; asking for a keyframe");
                        needed.push(auction);
                    }
                }
            }
        };
        self.buffer.drain(..at);
        result.map(|()| needed).inspect_err(|e| {
            count(e);
            tracing::warn!(error = %e, "a bad edge frame from the node");
        })
    }
}

/// Counts a decoder error under its kind.
fn count(error: &EdgeError) {
    let kind = match error {
        EdgeError::Truncated { .. } => "truncated",
        EdgeError::UnknownVersion(_) => "unknown_version",
        EdgeError::ForgedLength { .. } => "forged_length",
        EdgeError::Corrupt { .. } => "corrupt",
        EdgeError::FrameGap { .. } => "frame_gap",
        EdgeError::Malformed(_) => "malformed",
        EdgeError::NoKeyframe { .. } => "no_keyframe",
        EdgeError::SeqGap { .. } => "seq_gap",
        EdgeError::TooManyAuctions { .. } => "too_many_auctions",
    };
    metrics::counter!(crate::metrics::DECODE_ERRORS, "error" => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_edge_proto::EdgeEncoder;
    use pb::server_message::Body;

    fn price(seq: u64, price: u64) -> pb::ServerMessage {
        pb::ServerMessage {
            request_id: 0,
            body: Some(Body::PriceUpdate(pb::PriceUpdate {
                auction_id: 7,
                topic: "energy.de".into(),
                epoch: 1,
                seq,
                price: Some(price),
                leader: Some("ann".into()),
                ends_at_us: 2_000_000,
                bids_accepted: seq - 1,
                accepted_at_us: 1_000_000 + seq,
                ..pb::PriceUpdate::default()
            })),
        }
    }

    /// One frame per message, from one encoder (a stream).
    fn frames(messages: &[pb::ServerMessage]) -> Vec<Vec<u8>> {
        let mut encoder = EdgeEncoder::new(4_096);
        messages
            .iter()
            .map(|message| {
                let mut out = Vec::new();
                encoder.encode(message, &mut out);
                encoder.flush(&mut out);
                out
            })
            .collect()
    }

    #[test]
    fn frames_split_anywhere_apply_in_order() {
        let store = Store::new(10);
        let mut reader = Reader::new(10);
        let bytes: Vec<u8> = frames(&[price(1, 100), price(2, 105), price(5, 130)]).concat();
        for piece in bytes.chunks(7) {
            assert_eq!(reader.push(piece, &store), Ok(vec![]));
        }
        let held = store.get(7).unwrap();
        assert_eq!(
            (held.seq, held.price, held.bids_accepted),
            (5, Some(130), 4)
        );
    }

    #[test]
    fn a_corrupt_frame_ends_the_stream_and_never_changes_a_price() {
        let store = Store::new(10);
        let mut reader = Reader::new(10);
        let frames = frames(&[price(1, 100), price(2, 105), price(3, 110)]);
        reader.push(&frames[0], &store).unwrap();
        // A flipped bit in the price delta of the second frame: the checksum catches it.
        let mut damaged = frames[1].clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x04;
        let error = reader.push(&damaged, &store).unwrap_err();
        assert!(matches!(error, EdgeError::Corrupt { .. }), "{error}");
        assert_eq!(
            store.get(7).unwrap().price,
            Some(100),
            "the last good price stays"
        );
        // A lost frame: the next one's number is not the expected one.
        let mut reader = Reader::new(10);
        reader.push(&frames[0], &store).unwrap();
        let error = reader.push(&frames[2], &store).unwrap_err();
        assert_eq!(
            error,
            EdgeError::FrameGap {
                expected: 1,
                got: 2
            }
        );
        assert_eq!(store.get(7).unwrap().price, Some(100));
        // An unknown version and a forged length are refused before any body is read.
        for (at, value) in [(0, 9_u8), (3, 0xff)] {
            let mut forged = frames[0].clone();
            forged[at] = value;
            let error = Reader::new(10).push(&forged[..5], &store).unwrap_err();
            assert!(
                matches!(
                    error,
                    EdgeError::UnknownVersion(9) | EdgeError::ForgedLength { .. }
                ),
                "{error}"
            );
        }
    }

    #[test]
    fn a_delta_without_its_keyframe_asks_for_one_with_a_resume_from_seq_zero() {
        let store = Store::new(10);
        let frames = frames(&[price(1, 100), price(2, 105)]);
        // The delta of frame 1, as the first frame a reader sees: its auction has no
        // keyframe, and the decoder does not guess.
        let mut reader = Reader::new(10);
        let needed = reader.push(&renumbered(&frames[1], 0), &store).unwrap();
        assert_eq!(needed, vec![7]);
        assert!(store.get(7).is_none(), "nothing guessed");
        let request = keyframe_request(&needed, &store).unwrap();
        let mut decoder = frame::FrameDecoder::new(1 << 16);
        decoder.push(&request);
        let message: pb::ClientMessage = decoder.next_message().unwrap().unwrap();
        let expected = pb::StreamPosition {
            auction_id: 7,
            epoch: 0,
            seq: 0,
        };
        assert_eq!(
            message.body,
            Some(Request::Resume(pb::Resume {
                positions: vec![expected]
            }))
        );
    }

    /// `frame` with frame number `no` (checksum recomputed, as an encoder would write it).
    fn renumbered(frame: &[u8], no: u16) -> Vec<u8> {
        let mut frame = frame.to_vec();
        frame[1..3].copy_from_slice(&no.to_be_bytes());
        let mut covered = frame[..5].to_vec();
        covered.extend_from_slice(&frame[9..]);
        frame[5..9].copy_from_slice(&crc32c::crc32c(&covered).to_be_bytes());
        frame
    }
}
