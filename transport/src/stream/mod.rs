//! The stream core: one connection's (or QUIC stream's) request handling, durable acks,
//! stream updates, timers and end, without I/O — in the manner of `quinn-proto`. The
//! transports' loops (`quic::serve_stream`, `http::ws::run`, `http::sse::run`) only move
//! bytes between their socket and a [`StreamCore`]:
//!
//! - in: [`StreamCore::handle_bytes`] (QUIC's length-delimited frames),
//!   [`StreamCore::handle_request`] (a WebSocket message, decoded), [`StreamCore::handle_read_end`],
//!   [`StreamCore::handle_flushed`] (the last write reached the peer's side: for a paced
//!   socket, the kernel is below its unsent bound), [`StreamCore::handle_wake`] /
//!   [`StreamCore::poll_ready`] (the outbox signalled, or a durable wait ended),
//!   [`StreamCore::handle_timeout`], [`StreamCore::handle_shutdown`];
//! - out: [`StreamCore::poll_write`] (what to write next, in the transport's [`Encoding`]),
//!   [`StreamCore::poll_datagram`] (QUIC price datagrams), [`StreamCore::poll_timeout`] (the
//!   next deadline), [`StreamCore::poll_event`] (stop reading with a code; the end).
//!
//! The one thing it polls is what it cannot be told: the backend's durability futures (in
//! [`DurableAcks`], one waker for the whole queue) and the subscriber's wake-up flag, both
//! through [`StreamCore::poll_ready`]'s `Context`. It keeps no socket, spawns nothing and
//! reads no clock: every call takes `now`.
//!
//! Writes go one batch at a time: stream updates are taken from the outbox only once
//! everything handed to the transport before was flushed, so what a slow reader cannot
//! take waits, conflated, in the outbox. What differs per transport is its [`Profile`]
//! (the bound on unflushed bytes, what a write the peer never takes means, notices before
//! the end, the idle close) — the constants live here, once.

mod encoding;
#[cfg(test)]
mod tests;
mod updates;

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gavel_proto::frame::{FrameDecoder, FrameError};
use gavel_proto::pb;
use gavel_proto::pb::ErrorCode;

pub(crate) use encoding::{Delimited, EDGE_FRAME_BYTES_MAX, Encoding, Output};
use updates::{SlowConsumer, Updates};

use crate::durable_acks::DurableAcks;
use crate::fanout::Outgoing;
use crate::gateway::Backend;
use crate::metrics;
use crate::session::{Session, error_message};

/// How often a subscriber's outbox is looked at while the transport has not taken the
/// last batch, or while the outbox is over its bound (slow-consumer detection).
pub(crate) const STREAM_CHECK: Duration = Duration::from_millis(50);
/// Stream updates taken for one write at most (and about `stream_unsent_bytes_max` bytes).
const BATCH_MESSAGES_MAX: usize = 256;
/// Room for stream updates a stream keeps between two takes: none, so an idle watcher
/// holds no batch (heaptrack of 2,000 idle watchers: 64 B each kept otherwise).
const BATCH_KEPT_MAX: usize = 0;
/// Bytes a WebSocket may have fed but not flushed before its core reads no more requests
/// and answers no more acks (stream updates wait for a complete flush anyway).
pub(crate) const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// What a write the peer does not take means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// A subscribed stream whose write waits for `slow_consumer_timeout_ms` is a slow
    /// consumer (QUIC: reset with `SLOW_CONSUMER`).
    SlowConsumer,
    /// A write that waits for `idle_timeout_ms`: the peer stalled; drop it (WebSocket, SSE).
    Stalled,
}

/// How one transport's streams behave where they differ.
#[derive(Debug)]
pub(crate) struct Profile {
    /// The metric label.
    pub(crate) transport: &'static str,
    /// Bytes handed to the transport and not flushed past which the core reads no
    /// requests, answers no durable acks and sends no keepalive.
    unflushed_max: usize,
    /// Durable acks answered per wake-up (one, where each must fit the write buffer).
    acks_per_wake: usize,
    blocked: Blocked,
    /// Whether the peer gets an error message saying why the stream ends.
    notices: bool,
    /// Whether a peer from which nothing arrives for `idle_timeout_ms` is closed.
    idle_close: bool,
}

/// QUIC streams (`docs/quic.md`): written inline, so never anything unflushed while the
/// core is asked for more.
pub(crate) const QUIC: Profile = Profile {
    transport: "quic",
    unflushed_max: usize::MAX,
    acks_per_wake: usize::MAX,
    blocked: Blocked::SlowConsumer,
    notices: false,
    idle_close: false,
};

/// WebSockets (`docs/websocket.md`).
pub(crate) const WS: Profile = Profile {
    transport: "ws",
    unflushed_max: WS_WRITE_BUFFER_BYTES,
    acks_per_wake: 1,
    blocked: Blocked::Stalled,
    notices: true,
    idle_close: true,
};

/// Server-sent events (`docs/sse.md`): one chunk in flight.
pub(crate) const SSE: Profile = Profile {
    transport: "sse",
    unflushed_max: 1,
    acks_per_wake: usize::MAX,
    blocked: Blocked::Stalled,
    notices: true,
    idle_close: false,
};

/// Why a stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer finished sending and every answer is written (QUIC: finish the stream).
    Finished,
    /// The peer went away, or its socket failed.
    Peer,
    /// The peer took nothing for the idle timeout while bytes waited for it: drop it.
    Stalled,
    /// The subscriber fell too far behind.
    SlowConsumer,
    /// Nothing arrived from the peer for the idle timeout.
    IdleTimeout,
    /// The node shuts down (after the durable acks still due, within the drain deadline).
    Shutdown,
    /// The peer sent a message over the limit.
    TooLarge,
}

impl End {
    /// The WebSocket close code and reason the node sends (`docs/websocket.md`); `None`:
    /// none of its own (the peer's close is echoed, a stalled peer dropped).
    pub(crate) fn ws_close(self) -> Option<(u16, &'static str)> {
        match self {
            End::IdleTimeout => Some((1000, "idle timeout")),
            End::Shutdown => Some((1001, "node shutting down")),
            End::SlowConsumer => Some((1008, "slow consumer")),
            End::TooLarge => Some((1009, "message too large")),
            End::Finished | End::Peer | End::Stalled => None,
        }
    }

    /// The code a QUIC stream is reset and stopped with (`docs/quic.md`); `None`: it is
    /// finished.
    pub(crate) fn quic_reset(self) -> Option<ErrorCode> {
        (self == End::SlowConsumer).then_some(ErrorCode::SlowConsumer)
    }
}

/// What the driver must do besides writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Stop reading (QUIC: STOP_SENDING with this code); the answers due still go.
    StopReading(ErrorCode),
    /// The stream is over: [`StreamCore::close`], then the transport's goodbye.
    End(End),
}

/// The limits a core applies, copied from the gateway's `Limits`.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    slow_consumer_timeout: Duration,
    idle_timeout: Duration,
    batch_bytes_max: usize,
    outbound_max: usize,
}

/// One stream's state machine; see the module doc.
pub(crate) struct StreamCore<B: Backend, E: Encoding> {
    profile: &'static Profile,
    bounds: Bounds,
    session: Session<B>,
    /// Bounded by the session: it refuses bids beyond `pending_durable_per_connection_max`.
    durable: DurableAcks<B::Durable>,
    /// QUIC's frame decoder, made at the first bytes (boxed: a WebSocket or SSE stream,
    /// whose core every idle watcher holds, has none).
    decoder: Option<Box<FrameDecoder>>,
    frame_bytes_max: usize,
    encoding: E,
    updates: Updates,
    replies: Vec<pb::ServerMessage>,
    /// Encoded, not yet handed to the transport, and its size.
    out: E::Out,
    out_bytes: usize,
    /// Handed to the transport and not yet flushed, and since when.
    unflushed: usize,
    waiting_since: Option<Instant>,
    /// Requests are read and updates taken (until the peer finishes, a frame error, the
    /// shutdown or the end).
    reading: bool,
    shutting_down: bool,
    drain_due: Option<Instant>,
    stream_due: Option<Instant>,
    keepalive: Option<(Duration, Instant)>,
    heard_at: Instant,
    datagram_max: usize,
    /// Price updates to send as datagrams, with their bytes.
    datagrams: VecDeque<(Outgoing, Bytes)>,
    datagram_in_flight: Option<Outgoing>,
    stop: Option<ErrorCode>,
    end: Option<End>,
    ended: bool,
}

impl<B: Backend, E: Encoding> StreamCore<B, E> {
    /// The core of a stream of `profile`'s transport, serving `session`, writing in
    /// `encoding`.
    pub(crate) fn new(
        session: Session<B>,
        encoding: E,
        profile: &'static Profile,
        now: Instant,
    ) -> Self {
        let limits = session.gateway().limits();
        let bounds = Bounds {
            slow_consumer_timeout: limits.slow_consumer_timeout(),
            idle_timeout: limits.idle_timeout(),
            batch_bytes_max: limits.stream_unsent_bytes_max,
            outbound_max: limits.outbound_bytes_max_per_connection,
        };
        let durable = DurableAcks::new(limits.pending_durable_per_connection_max);
        let frame_bytes_max = limits.frame_bytes_max;
        let mut updates = Updates::new(profile.transport);
        if let Some(subscriber) = session.subscriber() {
            updates.report_subscriptions(subscriber.subscriptions());
        }
        StreamCore {
            profile,
            bounds,
            session,
            durable,
            decoder: None,
            frame_bytes_max,
            encoding,
            updates,
            replies: Vec::new(),
            out: E::Out::default(),
            out_bytes: 0,
            unflushed: 0,
            waiting_since: None,
            reading: true,
            shutting_down: false,
            drain_due: None,
            stream_due: None,
            keepalive: None,
            heard_at: now,
            datagram_max: 0,
            datagrams: VecDeque::new(),
            datagram_in_flight: None,
            stop: None,
            end: None,
            ended: false,
        }
    }

    /// Sends a keepalive every `every`, the first one `every` from `now`.
    pub(crate) fn with_keepalive(mut self, every: Duration, now: Instant) -> Self {
        self.keepalive = Some((every, now + every));
        self
    }

    /// Whether requests are still read (and updates taken).
    pub(crate) fn is_reading(&self) -> bool {
        self.reading && self.end.is_none() && !self.ended
    }

    /// Whether the driver should read the peer now: reading, and room for the answers.
    pub(crate) fn wants_read(&self) -> bool {
        self.is_reading() && self.has_room()
    }

    /// Whether the stream carries subscriptions.
    pub(crate) fn is_subscribed(&self) -> bool {
        self.session.subscriber().is_some()
    }

    /// Whether a shutdown is under way.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether bytes handed to the transport wait for their flush.
    pub(crate) fn awaits_flush(&self) -> bool {
        self.unflushed > 0
    }

    /// Whether bytes wait to be handed out by [`StreamCore::poll_write`] (a take after a
    /// flush can leave some with no deadline or wake-up to come for them).
    pub(crate) fn has_output(&self) -> bool {
        self.out_bytes > 0
    }

    fn has_room(&self) -> bool {
        self.unflushed.saturating_add(self.out_bytes) < self.profile.unflushed_max
    }

    /// Length-delimited frames read from the peer (QUIC): each whole request is handled;
    /// an oversized frame or a broken length prefix stops the reading (`TOO_LARGE`,
    /// `MALFORMED`, as docs/quic.md says) after its error answer.
    pub(crate) fn handle_bytes(&mut self, bytes: &[u8], now: Instant) {
        self.heard_at = now;
        let max = self.frame_bytes_max;
        let mut decoder = self
            .decoder
            .take()
            .unwrap_or_else(|| Box::new(FrameDecoder::new(max)));
        decoder.push(bytes);
        loop {
            match decoder.next_message::<pb::ClientMessage>() {
                Ok(Some(request)) => self.request(request),
                Ok(None) => break,
                Err(FrameError::Malformed(detail)) => {
                    self.replies.push(self.session.malformed(detail));
                }
                Err(FrameError::TooLarge { len, max }) => {
                    metrics::request_error(self.profile.transport, "too_large");
                    self.replies.push(error_message(
                        0,
                        ErrorCode::TooLarge,
                        format!("a frame of {len} bytes exceeds the limit of {max} bytes; closing the stream"),
                    ));
                    self.stop_reading(ErrorCode::TooLarge);
                    break;
                }
                Err(FrameError::BadLength) => {
                    let reply = self
                        .session
                        .malformed("bad frame length prefix; closing the stream");
                    self.replies.push(reply);
                    self.stop_reading(ErrorCode::Malformed);
                    break;
                }
            }
        }
        self.decoder = Some(decoder);
        self.answered();
    }

    /// One decoded request (a WebSocket message), or why it could not be decoded.
    pub(crate) fn handle_request(
        &mut self,
        request: Result<pb::ClientMessage, String>,
        now: Instant,
    ) {
        self.heard_at = now;
        match request {
            Ok(request) => self.request(request),
            Err(detail) => self.replies.push(self.session.malformed(detail)),
        }
        self.answered();
        // A bid has one answer: room for more (a subscribe's) is not kept for the
        // stream's life (a `ServerMessage` is ~300 bytes).
        self.replies.shrink_to(1);
    }

    /// Something arrived that is no request (a WebSocket control frame).
    pub(crate) fn handle_heard(&mut self, now: Instant) {
        self.heard_at = now;
    }

    /// The peer finished sending (or reading failed): answer what is due, then end.
    pub(crate) fn handle_read_end(&mut self) {
        self.reading = false;
    }

    /// Sends `message` as the stream's next answer (SSE: the subscription's answer).
    pub(crate) fn send(&mut self, message: &pb::ServerMessage) {
        self.out_bytes += self.encoding.reply(message, &mut self.out);
    }

    /// The node shuts down: read no more, tell the peer (where the transport does), send
    /// the durable acks still due until `drain` passes, then end with [`End::Shutdown`].
    pub(crate) fn handle_shutdown(&mut self, now: Instant, drain: Option<Duration>) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.reading = false;
        self.drain_due = drain.map(|drain| now + drain);
        if self.profile.notices {
            self.notice(
                ErrorCode::ShuttingDown,
                "the node is shutting down; reconnect later or elsewhere",
            );
        }
    }

    /// Everything handed to the transport was flushed (for a paced socket: the kernel is
    /// below its unsent bound): take the next batch of updates.
    pub(crate) fn handle_flushed(&mut self, now: Instant) {
        self.unflushed = 0;
        self.waiting_since = None;
        self.take_updates(now);
    }

    /// The subscriber's outbox signalled: take what is due, as far as there is room.
    pub(crate) fn handle_wake(&mut self, now: Instant) {
        self.take_updates(now);
    }

    /// Polls the durable waits (as many answers as the profile takes per wake-up, while
    /// there is room) and the subscriber's wake-up; `Ready` if either gave something to
    /// write. `Pending` registers `cx` with both.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>, now: Instant) -> Poll<()> {
        if self.end.is_some() || self.ended || !self.has_room() {
            return Poll::Pending;
        }
        let mut ready = false;
        if !self.durable.is_empty()
            && self
                .durable
                .poll_answers(cx, &mut self.replies, self.profile.acks_per_wake)
                .is_ready()
        {
            self.answered();
            ready = true;
        }
        let woken = self.reading
            && self
                .session
                .subscriber()
                .is_some_and(|s| s.poll_woken(cx).is_ready());
        if woken {
            self.handle_wake(now);
            ready = true;
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The deadline of [`StreamCore::poll_timeout`] passed (or any time after it).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.end.is_some() || self.ended {
            return;
        }
        let passed = |at: Option<Instant>| at.is_some_and(|at| now >= at);
        if passed(self.drain_due) {
            return self.finish(End::Shutdown);
        }
        if passed(self.blocked_deadline()) {
            return self.finish(match self.profile.blocked {
                Blocked::SlowConsumer => End::SlowConsumer,
                Blocked::Stalled => End::Stalled,
            });
        }
        if passed(self.idle_deadline()) {
            return self.finish(End::IdleTimeout);
        }
        if let Some((every, at)) = self.keepalive
            && now >= at
        {
            if self.is_reading() && self.has_room() {
                self.out_bytes += self.encoding.keepalive(&mut self.out);
            }
            self.keepalive = Some((every, now + every));
        }
        if passed(self.stream_due) {
            self.stream_due = None;
            self.take_updates(now);
        }
    }

    /// The next deadline: the drain's, a blocked write's, the idle timeout's, the
    /// keepalive's, the stream's (a held-back update, a slow-consumer check).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() || self.ended {
            return None;
        }
        let reading = self.is_reading();
        [
            self.drain_due,
            self.blocked_deadline(),
            self.idle_deadline(),
            self.keepalive.filter(|_| reading).map(|(_, at)| at),
            self.stream_due.filter(|_| reading && self.is_subscribed()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When a write that has not completed means the peer does not read (QUIC: the limit
    /// of one inline write).
    pub(crate) fn write_deadline(&self) -> Option<Instant> {
        self.blocked_deadline()
    }

    fn blocked_deadline(&self) -> Option<Instant> {
        let since = self.waiting_since?;
        match self.profile.blocked {
            Blocked::SlowConsumer if self.is_subscribed() => {
                Some(since + self.bounds.slow_consumer_timeout)
            }
            Blocked::SlowConsumer => None,
            Blocked::Stalled => Some(since + self.bounds.idle_timeout),
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        (self.profile.idle_close && self.is_reading())
            .then(|| self.heard_at + self.bounds.idle_timeout)
    }

    /// Moves what is due to be written into `buf` (cleared first); `false` if nothing is.
    pub(crate) fn poll_write(&mut self, now: Instant, buf: &mut E::Out) -> bool {
        if self.out_bytes == 0 {
            return false;
        }
        buf.clear();
        std::mem::swap(&mut self.out, buf);
        self.unflushed = self.unflushed.saturating_add(self.out_bytes);
        self.out_bytes = 0;
        self.waiting_since.get_or_insert(now);
        if self.is_subscribed() && self.stream_due.is_none() {
            // Updates wait until the transport took this: check the outbox for a slow
            // consumer meanwhile.
            self.stream_due = Some(now + STREAM_CHECK);
        }
        true
    }

    /// The size of the largest datagram the connection sends now (QUIC; 0: none).
    pub(crate) fn set_datagram_max(&mut self, bytes: usize) {
        self.datagram_max = bytes;
    }

    /// The next price update to send as a datagram (asked for, and it fits); the driver
    /// answers with [`StreamCore::handle_datagram_sent`].
    pub(crate) fn poll_datagram(&mut self) -> Option<Bytes> {
        let (update, datagram) = self.datagrams.pop_front()?;
        self.datagram_in_flight = Some(update);
        Some(datagram)
    }

    /// Whether the last datagram went; one that did not goes on the stream.
    pub(crate) fn handle_datagram_sent(&mut self, sent: bool) {
        let Some(update) = self.datagram_in_flight.take() else {
            return;
        };
        if sent {
            ::metrics::counter!(metrics::STREAM_DATAGRAMS, "result" => "sent").increment(1);
        } else {
            self.out_bytes += self.encoding.update(&update, &mut self.out);
            // A framing encoding (edge) writes its frame now, not with the next batch.
            self.out_bytes += self.encoding.end_batch(&mut self.out);
        }
    }

    /// Stop reading, or the end, once due.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        if let Some(code) = self.stop.take() {
            return Some(Event::StopReading(code));
        }
        if self.ended {
            return None;
        }
        if self.end.is_none() && !self.reading && self.durable.is_empty() && self.out_bytes == 0 {
            self.end = Some(if self.shutting_down {
                End::Shutdown
            } else {
                End::Finished
            });
        }
        let end = self.end.take()?;
        self.ended = true;
        Some(Event::End(end))
    }

    /// Ends the stream for `end` (the core's or the transport's own): counts it, queues
    /// the notice the peer gets (if its transport sends one; [`StreamCore::poll_write`]
    /// hands it out, to send if it fits), leaves the hub and takes back the gauges.
    pub(crate) fn close(&mut self, end: End) {
        let transport = self.profile.transport;
        match end {
            End::SlowConsumer => {
                tracing::debug!(transport, "stream subscriber too slow; closing");
                ::metrics::counter!(metrics::STREAM_SLOW_CONSUMERS, "transport" => transport)
                    .increment(1);
                self.notice(
                    ErrorCode::SlowConsumer,
                    "the connection fell too far behind on its updates",
                );
            }
            End::Stalled => {
                tracing::debug!(transport, "stream peer stopped reading; dropped");
                ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "transport" => transport, "reason" => "stalled")
                    .increment(1);
            }
            End::IdleTimeout => {
                self.notice(
                    ErrorCode::IdleTimeout,
                    "nothing received within the idle timeout",
                );
            }
            End::TooLarge => metrics::request_error(transport, "too_large"),
            End::Finished | End::Peer | End::Shutdown => {}
        }
        if let Some(subscriber) = self.session.subscriber() {
            self.session.gateway().hub().disconnect(subscriber);
        }
        self.updates.report_closed();
        self.reading = false;
        self.ended = true;
    }

    fn request(&mut self, request: pb::ClientMessage) {
        self.encoding.on_request(&request);
        if let Some(wait) = self.session.handle(request, &mut self.replies) {
            self.durable.push(wait);
        }
    }

    /// Encodes the answers gathered and reports the subscriptions they may have changed.
    fn answered(&mut self) {
        for reply in self.replies.drain(..) {
            self.out_bytes += self.encoding.reply(&reply, &mut self.out);
            if self.session.wants_edge()
                && matches!(reply.body, Some(pb::server_message::Body::Subscribed(_)))
            {
                // What follows the `Subscribed` answer is edge frames (docs/quic.md).
                self.encoding.start_edge();
            }
        }
        if let Some(subscriber) = self.session.subscriber() {
            self.updates
                .report_subscriptions(subscriber.subscriptions());
        }
    }

    fn notice(&mut self, code: ErrorCode, text: &str) {
        if self.profile.notices {
            self.send(&error_message(0, code, text));
        }
    }

    fn stop_reading(&mut self, code: ErrorCode) {
        self.reading = false;
        self.stop = Some(code);
    }

    fn finish(&mut self, end: End) {
        if self.end.is_none() && !self.ended {
            self.end = Some(end);
        }
    }

    /// Takes what is due from the subscriber's outbox, if there is one and room: price
    /// updates as datagrams where asked for and they fit, the rest encoded for the stream.
    fn take_updates(&mut self, now: Instant) {
        if !self.is_reading() {
            return;
        }
        let Some(subscriber) = self.session.subscriber() else {
            return;
        };
        let room = if self.unflushed == 0 {
            BATCH_MESSAGES_MAX
        } else {
            0
        };
        let taken = self.updates.take(
            subscriber,
            now,
            room,
            self.bounds.batch_bytes_max,
            self.bounds.outbound_max,
        );
        match taken {
            Ok(next) => self.stream_due = next,
            Err(SlowConsumer) => return self.finish(End::SlowConsumer),
        }
        if self.updates.batch.is_empty() {
            return;
        }
        let datagram_max = if self.session.wants_datagrams() {
            self.datagram_max
        } else {
            0
        };
        for update in self.updates.batch.drain(..) {
            if datagram_max > 0 && update.is_price() {
                let datagram = self.encoding.datagram(&update);
                if datagram.len() <= datagram_max {
                    self.datagrams.push_back((update, datagram));
                    continue;
                }
                ::metrics::counter!(metrics::STREAM_DATAGRAMS, "result" => "too_large")
                    .increment(1);
            }
            self.out_bytes += self.encoding.update(&update, &mut self.out);
        }
        // A lap over many auctions fills a long batch; its room is not kept for the
        // stream's life (an idle watcher of many auctions would hold it).
        self.updates.batch.shrink_to(BATCH_KEPT_MAX);
        self.out_bytes += self.encoding.end_batch(&mut self.out);
    }
}
