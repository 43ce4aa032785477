//! The seam between the stream core and a wire format: [`Encoding`] turns the answers and the
//! batches of stream updates the core decides to send into what one write of its transport
//! carries. One implementation per format: [`Delimited`] (QUIC: varint-length-prefixed
//! protobuf, `gavel_proto::frame`), the WebSocket codecs (`http::ws::Codec`: one binary
//! protobuf or text JSON message each) and the SSE events (`http::sse::SseEvents`).
//!
//! A stateful format (the compact edge stream, one `EdgeEncoder` per subscriber stream)
//! keeps its state in `self`, closes a frame over several updates in
//! [`Encoding::end_batch`], and learns from [`Encoding::on_request`] when a `Subscribe`
//! asks for it (QUIC) or starts a new stream; the WebSocket subprotocol picks it at the
//! handshake, as it picks the codec today.

use bytes::{Bytes, BytesMut};
use gavel_edge_proto::EdgeEncoder;
use gavel_proto::frame;
use gavel_proto::pb;

use crate::fanout::Outgoing;
use crate::metrics;

/// The largest edge frame the node writes, in bytes (docs/edge-stream.md: "the node's
/// choice"); a decoder accepting [`gavel_edge_proto::FRAME_BYTES_LIMIT`] takes them all.
pub(crate) const EDGE_FRAME_BYTES_MAX: usize = 16 * 1024;

/// What a transport writes at once: bytes or a list of messages, emptied by the driver
/// after each write (and cleared again before the core refills it).
pub(crate) trait Output: Default {
    /// Empties it, keeping its memory.
    fn clear(&mut self);
}

impl<T> Output for Vec<T> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
}

impl Output for BytesMut {
    fn clear(&mut self) {
        BytesMut::clear(self);
    }
}

/// Encodes what the stream core sends. Each method appends to `out` and returns the bytes
/// it added (what counts against the transport's write bounds).
pub(crate) trait Encoding {
    /// What one write of the transport carries.
    type Out: Output;

    /// Sees each request before the session handles it (a no-op by default): an encoding
    /// a `Subscribe` may choose (the edge stream) switches here, and a re-subscribe starts
    /// its new stream.
    fn on_request(&mut self, _request: &pb::ClientMessage) {}

    /// A direct answer, durable ack or notice of the session.
    fn reply(&mut self, message: &pb::ServerMessage, out: &mut Self::Out) -> usize;

    /// One stream update taken from the subscriber's outbox (a shared price update's
    /// encodings are made once for every connection).
    fn update(&mut self, message: &Outgoing, out: &mut Self::Out) -> usize;

    /// The end of one batch of updates (the updates of one take): an encoding that frames
    /// several updates together writes its frame here.
    fn end_batch(&mut self, _out: &mut Self::Out) -> usize {
        0
    }

    /// A keepalive (a WebSocket ping, an SSE comment); nothing for a transport without
    /// one.
    fn keepalive(&mut self, _out: &mut Self::Out) -> usize {
        0
    }

    /// The stream's `Subscribe` asked for the edge encoding, and its `Subscribed` answer
    /// was just encoded: what follows is edge frames (QUIC; others ignore it).
    fn start_edge(&mut self) {}

    /// A price update as one QUIC datagram.
    fn datagram(&mut self, update: &Outgoing) -> Bytes {
        // Encoded once per update for every connection it goes to.
        update.proto()
    }
}

/// QUIC streams: each message varint-length-prefixed protobuf (`gavel_proto::frame`) —
/// until a `Subscribe` asks for the edge encoding (docs/quic.md): after its `Subscribed`
/// answer, the stream carries nothing but edge frames, and each price datagram is one
/// self-contained edge frame (a fresh encoder's frame 0 with one KEYFRAME), since a lost
/// datagram must not break a delta chain.
#[derive(Debug, Default)]
pub(crate) struct Delimited {
    edge: Option<Edge>,
}

/// The edge side of a QUIC stream: its encoder and the byte counter.
#[derive(Debug)]
struct Edge {
    encoder: Box<EdgeEncoder>,
    bytes: ::metrics::Counter,
}

impl Edge {
    /// Runs `write` on the encoder and counts the bytes it added to `out`.
    fn counted(
        &mut self,
        out: &mut Vec<u8>,
        write: impl FnOnce(&mut EdgeEncoder, &mut Vec<u8>),
    ) -> usize {
        let before = out.len();
        write(&mut self.encoder, out);
        let added = out.len() - before;
        self.bytes.increment(added as u64);
        added
    }
}

impl Encoding for Delimited {
    type Out = Vec<u8>;

    fn reply(&mut self, message: &pb::ServerMessage, out: &mut Vec<u8>) -> usize {
        match &mut self.edge {
            None => {
                let before = out.len();
                frame::encode(message, out);
                out.len() - before
            }
            // Only stream content has a place in the edge stream: answers to later
            // requests and notices are not sent (the encoder ignores them).
            Some(edge) => edge.counted(out, |encoder, out| {
                encoder.encode(message, out);
                encoder.flush(out);
            }),
        }
    }

    fn update(&mut self, message: &Outgoing, out: &mut Vec<u8>) -> usize {
        match &mut self.edge {
            None => self.reply(message.message(), out),
            Some(edge) => edge.counted(out, |encoder, out| {
                encoder.encode(message.message(), out);
            }),
        }
    }

    fn end_batch(&mut self, out: &mut Vec<u8>) -> usize {
        match &mut self.edge {
            None => 0,
            Some(edge) => edge.counted(out, |encoder, out| encoder.flush(out)),
        }
    }

    fn start_edge(&mut self) {
        self.edge.get_or_insert_with(|| Edge {
            encoder: Box::new(EdgeEncoder::new(EDGE_FRAME_BYTES_MAX)),
            bytes: ::metrics::counter!(metrics::STREAM_EDGE_BYTES, "transport" => "quic"),
        });
    }

    fn datagram(&mut self, update: &Outgoing) -> Bytes {
        match &mut self.edge {
            None => update.proto(),
            Some(edge) => {
                let mut out = Vec::new();
                let mut fresh = EdgeEncoder::new(EDGE_FRAME_BYTES_MAX);
                fresh.encode(update.message(), &mut out);
                fresh.flush(&mut out);
                edge.bytes.increment(out.len() as u64);
                Bytes::from(out)
            }
        }
    }
}
