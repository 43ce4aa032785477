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

use bytes::BytesMut;
use gavel_proto::frame;
use gavel_proto::pb;

use crate::fanout::Outgoing;

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
}

/// QUIC streams: each message varint-length-prefixed protobuf (`gavel_proto::frame`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Delimited;

impl Encoding for Delimited {
    type Out = Vec<u8>;

    fn reply(&mut self, message: &pb::ServerMessage, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        frame::encode(message, out);
        out.len() - before
    }

    fn update(&mut self, message: &Outgoing, out: &mut Vec<u8>) -> usize {
        self.reply(message.message(), out)
    }
}
