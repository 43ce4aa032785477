//! The stream core without sockets: requests and wake-ups in, writes, deadlines and the
//! documented stop and close codes out.

use std::sync::Arc;
use std::task::{Context, Waker};

use gavel_engine::{
    AuctionId, AuctionSpec, AuctionView, Bid, BidDecision, BidderId, ClosedAuction, CreateError,
    DiscardSink, Engine, EngineConfig, ManageError, Receipt, UnixMicros,
};
use gavel_proto::frame;
use gavel_proto::pb::client_message::Body as Request;
use gavel_proto::pb::server_message::Body as Reply;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::now_micros;
use crate::gateway::{AuctionReads, DurableError, Gateway};
use crate::identity::{Identity, Role};
use crate::limits::Limits;
use crate::test_support::english;

/// The engine in memory; every receipt is durable at once (this crate knows no log).
struct Memory(Engine);

impl AuctionReads for Memory {
    fn view(&self, id: AuctionId, now: UnixMicros) -> Option<AuctionView> {
        self.0.view(id, now)
    }

    fn list(&self, after: Option<AuctionId>, limit: usize, now: UnixMicros) -> Vec<AuctionView> {
        self.0.list(after, limit, now)
    }

    fn pruned(&self, id: AuctionId) -> Option<gavel_engine::PrunedAuction> {
        self.0.pruned(id)
    }
}

impl Backend for Memory {
    type Durable = std::future::Ready<Result<(), DurableError>>;

    fn place_bid(&self, bid: &Bid, now: UnixMicros) -> BidDecision {
        self.0.place_bid(bid, now, &DiscardSink)
    }

    fn create_auction(&self, spec: AuctionSpec, now: UnixMicros) -> Result<Receipt, CreateError> {
        self.0.create_auction(spec, now, &DiscardSink)
    }

    fn cancel_auction(&self, id: AuctionId, now: UnixMicros) -> Result<ClosedAuction, ManageError> {
        self.0.cancel_auction(id, now, &DiscardSink)
    }

    fn durable(&self, _: Receipt) -> Self::Durable {
        std::future::ready(Ok(()))
    }

    fn last_receipt(&self) -> Receipt {
        Receipt(0)
    }
}

/// Writes each message as a short name, so a test reads what went out; keeps the ids of
/// the requests it saw.
#[derive(Debug, Default)]
struct Names {
    requests: Vec<u64>,
}

fn name(message: &pb::ServerMessage) -> String {
    match message.body.as_ref() {
        Some(Reply::Subscribed(_)) => "subscribed".into(),
        Some(Reply::AuctionSnapshot(_)) => "snapshot".into(),
        Some(Reply::PriceUpdate(u)) => format!("price {}", u.price.unwrap_or(0)),
        Some(Reply::BidOutcome(o)) => match o.outcome {
            Some(pb::bid_outcome::Outcome::Accepted(_)) => "accepted".into(),
            _ => "rejected".into(),
        },
        Some(Reply::DurableAck(_)) => "durable".into(),
        Some(Reply::Pong(_)) => "pong".into(),
        Some(Reply::Error(e)) => format!("error {:?}", e.code()),
        other => format!("{other:?}"),
    }
}

impl Encoding for Names {
    type Out = Vec<String>;

    fn on_request(&mut self, request: &pb::ClientMessage) {
        self.requests.push(request.request_id);
    }

    fn reply(&mut self, message: &pb::ServerMessage, out: &mut Vec<String>) -> usize {
        out.push(name(message));
        out.last().map_or(0, String::len)
    }

    fn update(&mut self, message: &Outgoing, out: &mut Vec<String>) -> usize {
        self.reply(message.message(), out)
    }

    fn keepalive(&mut self, out: &mut Vec<String>) -> usize {
        out.push("keepalive".into());
        9
    }
}

struct Fixture {
    gateway: Arc<Gateway<Memory>>,
    backend: Arc<Memory>,
    now: Instant,
}

impl Fixture {
    /// A ready gateway over one open English auction (id 1, start price 100).
    fn new(limits: Limits) -> Fixture {
        let gateway = Arc::new(Gateway::new(limits, CancellationToken::new()));
        let engine = Engine::new(EngineConfig::default());
        let ends_at = UnixMicros(now_micros().0 + 3_600_000_000);
        let spec = english(1, "energy.eu.de", ends_at);
        engine
            .create_auction(spec, now_micros(), &DiscardSink)
            .unwrap();
        let backend = Arc::new(Memory(engine));
        gateway.set_ready(Arc::clone(&backend));
        Fixture {
            gateway,
            backend,
            now: Instant::now(),
        }
    }

    fn core(&self, profile: &'static Profile, role: Option<Role>) -> StreamCore<Memory, Names> {
        let identity = role.map(|role| Identity {
            role,
            id: BidderId::new("b1").unwrap(),
        });
        let session = Session::new(Arc::clone(&self.gateway), identity, profile.transport);
        StreamCore::new(session, Names::default(), profile, self.now)
    }

    /// A bid at `amount` on auction 1, published to the watchers.
    fn bid(&self, n: u128, amount: u64) {
        let bid = Bid::new(
            AuctionId(1),
            BidderId::new("b2").unwrap(),
            gavel_engine::BidId(n),
            amount,
            None,
            now_micros(),
        )
        .unwrap();
        self.backend.place_bid(&bid, now_micros());
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        for shard in 0..shards {
            self.gateway
                .hub()
                .publish(&*self.backend, AuctionId(1), now_micros(), shard);
        }
    }
}

fn subscribe(request_id: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        request_id,
        body: Some(Request::Subscribe(pb::Subscribe {
            patterns: vec!["energy.>".into()],
            ..Default::default()
        })),
    }
}

fn place_bid(request_id: u64, amount: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        request_id,
        body: Some(Request::PlaceBid(pb::PlaceBid {
            auction_id: 1,
            amount,
            bid_id_lo: request_id,
            ..Default::default()
        })),
    }
}

fn written<B: Backend>(core: &mut StreamCore<B, Names>, now: Instant) -> Vec<String> {
    let mut out = Vec::new();
    core.poll_write(now, &mut out);
    out
}

fn poll_ready<B: Backend, E: Encoding>(core: &mut StreamCore<B, E>, now: Instant) -> bool {
    core.poll_ready(&mut Context::from_waker(Waker::noop()), now)
        .is_ready()
}

#[test]
fn updates_go_one_batch_at_a_time_and_wait_for_the_flush() {
    let f = Fixture::new(Limits::default());
    let mut core = f.core(&QUIC, None);
    let mut frames = Vec::new();
    frame::encode(&subscribe(1), &mut frames);
    core.handle_bytes(&frames, f.now);
    assert!(core.is_subscribed());
    assert_eq!(written(&mut core, f.now), ["subscribed"]);
    // The snapshot waits in the outbox until the answer was flushed.
    assert!(poll_ready(&mut core, f.now));
    assert!(
        written(&mut core, f.now).is_empty(),
        "nothing while unflushed"
    );
    assert_eq!(
        core.poll_timeout(),
        Some(f.now + STREAM_CHECK),
        "a slow-consumer check"
    );
    core.handle_flushed(f.now);
    assert_eq!(written(&mut core, f.now), ["snapshot"]);
    // Two bids while the snapshot is on its way: the update waits, conflated to the latest.
    f.bid(1, 150);
    f.bid(2, 200);
    assert!(poll_ready(&mut core, f.now));
    assert!(written(&mut core, f.now).is_empty());
    core.handle_flushed(f.now);
    assert_eq!(written(&mut core, f.now), ["price 200"]);
    core.handle_flushed(f.now);
    assert_eq!(
        core.poll_timeout(),
        None,
        "nothing pending: wait for a wake-up"
    );
    assert_eq!(core.poll_event(), None);
}

#[test]
fn frame_errors_stop_reading_with_the_documented_codes() {
    let f = Fixture::new(Limits {
        frame_bytes_max: 64,
        ..Limits::default()
    });
    // docs/quic.md: TOO_LARGE (3) after an oversized frame, then the stream is finished.
    let mut core = f.core(&QUIC, None);
    let mut prefix = Vec::new();
    prost::encode_length_delimiter(65, &mut prefix).unwrap();
    core.handle_bytes(&prefix, f.now);
    assert_eq!(
        core.poll_event(),
        Some(Event::StopReading(ErrorCode::TooLarge))
    );
    assert_eq!(ErrorCode::TooLarge as u32, 3);
    assert!(!core.is_reading());
    assert_eq!(core.poll_event(), None, "the answer is written first");
    assert_eq!(written(&mut core, f.now), ["error TooLarge"]);
    assert_eq!(core.poll_event(), Some(Event::End(End::Finished)));
    assert_eq!(End::Finished.quic_reset(), None, "finished, not reset");

    // MALFORMED (1) after a broken length prefix; an undecodable message goes on.
    let mut core = f.core(&QUIC, None);
    core.handle_bytes(&[3, 0xff, 0xff, 0xff], f.now);
    assert_eq!(core.poll_event(), None);
    assert_eq!(written(&mut core, f.now), ["error Malformed"]);
    core.handle_bytes(&[0xff; 11], f.now);
    assert_eq!(
        core.poll_event(),
        Some(Event::StopReading(ErrorCode::Malformed))
    );
    assert_eq!(ErrorCode::Malformed as u32, 1);
}

#[test]
fn a_quic_write_not_taken_in_time_is_a_slow_consumer_reset_with_code_7() {
    let f = Fixture::new(Limits::default());
    let mut core = f.core(&QUIC, None);
    core.handle_request(Ok(subscribe(1)), f.now);
    assert_eq!(written(&mut core, f.now), ["subscribed"]);
    let deadline = f.now + Limits::default().slow_consumer_timeout();
    assert_eq!(core.write_deadline(), Some(deadline));
    core.handle_timeout(deadline);
    assert_eq!(core.poll_event(), Some(Event::End(End::SlowConsumer)));
    assert_eq!(
        End::SlowConsumer.quic_reset(),
        Some(ErrorCode::SlowConsumer)
    );
    assert_eq!(ErrorCode::SlowConsumer as u32, 7);
    core.close(End::SlowConsumer);
    assert!(
        written(&mut core, f.now).is_empty(),
        "QUIC sends no notice, it resets"
    );

    // Unsubscribed, a write waits as long as flow control and the idle timeout allow.
    let mut core = f.core(&QUIC, None);
    core.handle_request(Ok(place_bid(1, 150)), f.now);
    assert!(!written(&mut core, f.now).is_empty());
    assert_eq!(core.write_deadline(), None);
}

#[test]
fn a_websocket_or_sse_peer_that_takes_nothing_for_the_idle_timeout_is_dropped() {
    let f = Fixture::new(Limits::default());
    for profile in [&WS, &SSE] {
        let mut core = f.core(profile, None);
        core.send(&error_message(0, ErrorCode::Internal, "x"));
        assert!(!written(&mut core, f.now).is_empty());
        assert!(core.awaits_flush());
        let stalled = f.now + Limits::default().idle_timeout();
        assert!(core.poll_timeout().is_some_and(|at| at <= stalled));
        core.handle_timeout(stalled);
        assert_eq!(core.poll_event(), Some(Event::End(End::Stalled)));
        assert_eq!(
            End::Stalled.ws_close(),
            None,
            "dropped without a close frame"
        );
    }
}

#[test]
fn a_silent_websocket_gets_its_notice_and_close_1000() {
    let f = Fixture::new(Limits::default());
    let every = Duration::from_secs(15);
    let mut core = f.core(&WS, None).with_keepalive(every, f.now);
    assert_eq!(core.poll_timeout(), Some(f.now + every));
    core.handle_timeout(f.now + every);
    assert_eq!(written(&mut core, f.now + every), ["keepalive"]);
    core.handle_flushed(f.now + every);
    // A pong counts as hearing from the peer.
    core.handle_heard(f.now + every);
    let idle = f.now + every + Limits::default().idle_timeout();
    core.handle_timeout(idle - Duration::from_millis(1));
    assert_eq!(core.poll_event(), None);
    core.handle_timeout(idle);
    assert_eq!(core.poll_event(), Some(Event::End(End::IdleTimeout)));
    core.close(End::IdleTimeout);
    let last = written(&mut core, idle);
    assert_eq!(
        last.last().map(String::as_str),
        Some("error IdleTimeout"),
        "{last:?}"
    );
    assert_eq!(End::IdleTimeout.ws_close(), Some((1000, "idle timeout")));
}

#[test]
fn shutdown_sends_the_notice_then_the_durable_acks_then_close_1001() {
    let f = Fixture::new(Limits::default());
    let mut core = f.core(&WS, Some(Role::Bidder));
    core.handle_request(Ok(place_bid(1, 150)), f.now);
    core.handle_request(Ok(place_bid(2, 200)), f.now);
    assert_eq!(written(&mut core, f.now), ["accepted", "accepted"]);
    core.handle_flushed(f.now);
    core.handle_shutdown(f.now, Some(Duration::from_secs(5)));
    assert!(!core.wants_read());
    // One ack per wake-up on a WebSocket, each only with room in the write buffer.
    assert_eq!(written(&mut core, f.now), ["error ShuttingDown"]);
    assert_eq!(core.poll_event(), None, "acks are still due");
    assert!(poll_ready(&mut core, f.now));
    assert!(poll_ready(&mut core, f.now));
    assert_eq!(written(&mut core, f.now), ["durable", "durable"]);
    assert_eq!(core.poll_event(), Some(Event::End(End::Shutdown)));
    assert_eq!(End::Shutdown.ws_close(), Some((1001, "node shutting down")));
}

#[test]
fn shutdown_ends_at_the_drain_deadline_whatever_is_left() {
    let f = Fixture::new(Limits::default());
    let mut core = f.core(&SSE, None);
    core.handle_shutdown(f.now, None);
    assert_eq!(written(&mut core, f.now), ["error ShuttingDown"]);
    assert_eq!(core.poll_event(), Some(Event::End(End::Shutdown)));

    let mut core = f.core(&WS, Some(Role::Bidder));
    core.handle_request(Ok(place_bid(1, 150)), f.now);
    core.handle_shutdown(f.now, Some(Duration::from_secs(1)));
    assert_eq!(core.poll_timeout(), Some(f.now + Duration::from_secs(1)));
    core.handle_timeout(f.now + Duration::from_secs(1));
    assert_eq!(core.poll_event(), Some(Event::End(End::Shutdown)));
}

#[test]
fn a_subscriber_at_twice_its_bound_gets_its_notice_and_close_1008() {
    let f = Fixture::new(Limits {
        outbound_bytes_max_per_connection: 1,
        ..Limits::default()
    });
    let mut core = f.core(&WS, None);
    core.handle_request(Ok(subscribe(1)), f.now);
    assert_eq!(written(&mut core, f.now), ["subscribed"]);
    // The snapshot is over twice the bound: the next look at the outbox ends the stream.
    assert!(poll_ready(&mut core, f.now));
    assert_eq!(core.poll_event(), Some(Event::End(End::SlowConsumer)));
    assert_eq!(core.poll_timeout(), None);
    core.close(End::SlowConsumer);
    assert_eq!(written(&mut core, f.now), ["error SlowConsumer"]);
    assert_eq!(End::SlowConsumer.ws_close(), Some((1008, "slow consumer")));
    assert_eq!(
        f.gateway.hub().watchers("energy.eu.de"),
        0,
        "it left the hub"
    );
}

#[test]
fn the_websocket_close_codes_are_the_documented_ones() {
    let doc = include_str!("../../../docs/websocket.md");
    for end in [
        End::IdleTimeout,
        End::Shutdown,
        End::SlowConsumer,
        End::TooLarge,
    ] {
        let (code, _) = end.ws_close().unwrap();
        assert!(
            doc.contains(&format!("| {code} |")),
            "{end:?}: {code} is in docs/websocket.md"
        );
    }
    assert_eq!(End::TooLarge.ws_close(), Some((1009, "message too large")));
}

#[test]
fn datagrams_carry_the_price_updates_that_fit_and_fall_back_to_the_stream() {
    let f = Fixture::new(Limits::default());
    let mut core = f.core(&QUIC, None);
    core.handle_request(
        Ok(pb::ClientMessage {
            request_id: 1,
            body: Some(Request::Subscribe(pb::Subscribe {
                patterns: vec!["energy.>".into()],
                datagrams: true,
                ..Default::default()
            })),
        }),
        f.now,
    );
    core.set_datagram_max(1200);
    assert_eq!(written(&mut core, f.now), ["subscribed"]);
    core.handle_flushed(f.now);
    assert_eq!(
        written(&mut core, f.now),
        ["snapshot"],
        "snapshots go on the stream"
    );
    core.handle_flushed(f.now);
    f.bid(1, 150);
    assert!(poll_ready(&mut core, f.now));
    let datagram = core
        .poll_datagram()
        .expect("the price update as a datagram");
    let update = <pb::ServerMessage as prost::Message>::decode(datagram).unwrap();
    assert_eq!(name(&update), "price 150");
    core.handle_datagram_sent(false);
    assert_eq!(
        written(&mut core, f.now),
        ["price 150"],
        "not sent: on the stream"
    );
}

#[test]
fn the_encoding_sees_each_request_before_the_session_answers_it() {
    let f = Fixture::new(Limits::default());
    let mut core = f.core(&QUIC, None);
    let mut frames = Vec::new();
    frame::encode(&subscribe(4), &mut frames);
    frame::encode(&subscribe(5), &mut frames);
    core.handle_bytes(&frames, f.now);
    assert_eq!(core.encoding.requests, [4, 5]);
    assert_eq!(written(&mut core, f.now), ["subscribed", "subscribed"]);
}

#[test]
fn the_quic_stop_and_reset_codes_are_the_documented_ones() {
    let doc = include_str!("../../../docs/quic.md");
    for (name, code) in [
        ("MALFORMED", ErrorCode::Malformed),
        ("TOO_LARGE", ErrorCode::TooLarge),
        ("SLOW_CONSUMER", ErrorCode::SlowConsumer),
    ] {
        let stated = format!("`{name}` ({}", code as u32);
        assert!(doc.contains(&stated), "docs/quic.md states {stated}");
    }
    for end in [End::Finished, End::Peer, End::Shutdown] {
        assert_eq!(end.quic_reset(), None, "{end:?} finishes the stream");
    }
}
