//! The QUIC bidder transport end to end, through the bidder SDK and raw QUIC streams, against a
//! real durable node on loopback: accepted then durable acks, every kind of refusal, bad
//! frames that hurt nobody else, certificates from another CA, reconnects with idempotent
//! retries, and a shutdown that drains durable acks.

mod common;

use std::time::Duration;

use common::serve::{QuicNode, RelayMode, UdpRelay, WAIT_MAX, metric, ping};
use gavel_client::{
    Bid, BidError, Client, ClientConfig, ConnectError, Update, Via, Watch, Watcher, random_bid_id,
};
use gavel_proto::pb;
use gavel_proto::pb::server_message::Body as Reply;
use gavel_transport::Limits;
use gavel_transport::tls::dev;

fn limits() -> Limits {
    Limits {
        idle_timeout_ms: 5_000,
        ..Limits::default()
    }
}

/// A client through `relay` that notices a dead connection and reconnects within a second.
fn quick_to_reconnect(node: &QuicNode, relay: &UdpRelay) -> ClientConfig {
    ClientConfig {
        idle_timeout: Duration::from_millis(300),
        keep_alive_interval: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(300),
        reconnect_backoff_base: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(100),
        ..node.client_config_at(relay.addr, "bidder", "bidder-1")
    }
}

async fn bidder(node: &QuicNode, id: &str) -> Client {
    Client::connect(node.client_config("bidder", id))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_is_accepted_then_durable_and_rejections_are_typed() {
    let node = QuicNode::start(limits()).await;
    node.create_english(1);
    // The SDK finds the files `gavel cert` writes by their names.
    let config = ClientConfig::from_cert_dir(node.addr, &node.certs.dir, "bidder-1").unwrap();
    let client = Client::connect(config).await.unwrap();
    assert!(client.ping().await.unwrap() < WAIT_MAX);

    let placed = client.place_bid(Bid::new(1, 150)).await.unwrap();
    let accepted = placed.accepted().clone();
    assert_eq!(accepted.price, 150);
    assert_eq!(accepted.leader.as_deref(), Some("bidder-1"));
    assert_eq!(accepted.seq, node.view(1).seq);
    let bid_id = placed.bid_id();
    assert_ne!(bid_id, 0);
    let durable = placed.durable().await.unwrap();
    assert_eq!((durable.auction_id, durable.bid_id), (1, bid_id));
    assert_eq!(durable.seq, accepted.seq);

    // Too low: the node says what the next acceptable amount is.
    let error = client.place_bid(Bid::new(1, 120)).await.unwrap_err();
    let BidError::TooLow { min_next } = error else {
        panic!("{error:?}")
    };
    assert!(min_next > 150, "min_next {min_next}");
    assert_eq!(
        client.place_bid(Bid::new(77, 500)).await.unwrap_err(),
        BidError::UnknownAuction
    );
    // The same bid id again, not as this SDK's own retry: a duplicate with the original.
    let again = client
        .place_bid(Bid::new(1, 150).with_id(bid_id))
        .await
        .unwrap_err();
    assert_eq!(
        again,
        BidError::Duplicate {
            original: accepted.clone()
        }
    );
    // A zero amount, an amount above 2^62 - 1 and a proxy maximum below the amount never
    // reach the engine.
    for bad in [
        Bid::new(1, 0),
        Bid::new(1, 1 << 62),
        Bid::new(1, u64::MAX),
        Bid::new(1, 500).with_max(400),
    ] {
        let error = client.place_bid(bad).await.unwrap_err();
        assert!(
            matches!(
                error,
                BidError::Server {
                    code: pb::ErrorCode::InvalidArgument,
                    ..
                }
            ),
            "{bad:?}: {error:?}"
        );
    }
    // Pipelined bids from clones of one client, each higher than the last.
    let bids = (0..20_u64).map(|i| {
        let client = client.clone();
        async move { client.place_bid(Bid::new(1, 1_000 + 100 * i)).await }
    });
    let mut handles = Vec::new();
    for bid in bids {
        handles.push(tokio::spawn(bid));
    }
    for handle in handles {
        match handle.await.unwrap() {
            Ok(placed) => {
                placed.durable().await.unwrap();
            }
            Err(BidError::TooLow { .. }) => {} // overtaken by a higher one sent earlier
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(node.view(1).price, Some(2_900));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_that_may_not_bid_are_forbidden_and_the_rate_limit_holds() {
    let node = QuicNode::start(Limits {
        bids_per_second_per_bidder: 1,
        bid_burst_per_bidder: 2,
        ..limits()
    })
    .await;
    node.create_english(1);
    for (role, id) in [("watcher", "watcher-1"), ("admin", "admin")] {
        let client = Client::connect(node.client_config(role, id)).await.unwrap();
        assert_eq!(
            client.place_bid(Bid::new(1, 150)).await.unwrap_err(),
            BidError::Forbidden,
            "{role}"
        );
    }
    let client = bidder(&node, "bidder-2").await;
    client.place_bid(Bid::new(1, 150)).await.unwrap();
    client.place_bid(Bid::new(1, 300)).await.unwrap();
    assert_eq!(
        client.place_bid(Bid::new(1, 500)).await.unwrap_err(),
        BidError::RateLimited
    );
    assert_eq!(node.view(1).bids_accepted, 2);
    // The limit is per bidder: another bidder still bids.
    let other = bidder(&node, "bidder-1").await;
    other.place_bid(Bid::new(1, 500)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_hurt_no_other_stream_or_client() {
    let node = QuicNode::start(Limits {
        frame_bytes_max: 1024,
        ..limits()
    })
    .await;
    node.create_english(1);
    let raw = node.raw_connection("bidder", "bidder-1").await;
    let malformed = r#"gavel_request_errors_total{transport="quic",reason="malformed"}"#;
    let too_large = r#"gavel_request_errors_total{transport="quic",reason="too_large"}"#;
    let (malformed_before, too_large_before) = (metric(malformed), metric(too_large));

    // Undecodable bytes in a well-framed message: MALFORMED, and the stream goes on.
    let mut stream = raw.stream().await;
    stream.write_bytes(&[3, 0xff, 0xff, 0xff]).await;
    stream.write(&ping(5)).await;
    let error = stream.read().await.unwrap();
    let Some(Reply::Error(error)) = error.body else {
        panic!("{error:?}")
    };
    assert_eq!(error.code(), pb::ErrorCode::Malformed);
    let pong = stream.read().await.unwrap();
    assert!(matches!(pong.body, Some(Reply::Pong(_))), "{pong:?}");
    assert_eq!(pong.request_id, 5);

    // A frame over the limit: TOO_LARGE, then the stream is finished.
    let mut oversized = raw.stream().await;
    let mut prefix = Vec::new();
    prost::encode_length_delimiter(1025, &mut prefix).unwrap();
    oversized.write_bytes(&prefix).await;
    let error = oversized.read().await.unwrap();
    let Some(Reply::Error(error)) = error.body else {
        panic!("{error:?}")
    };
    assert_eq!(error.code(), pb::ErrorCode::TooLarge);
    assert!(oversized.read().await.is_none(), "the stream is finished");
    assert!(metric(malformed) > malformed_before);
    assert!(metric(too_large) > too_large_before);

    // The connection's other stream, a new stream, and another client all still work.
    stream.write(&ping(6)).await;
    assert_eq!(stream.read().await.unwrap().request_id, 6);
    let mut fresh = raw.stream().await;
    fresh.write(&ping(7)).await;
    assert_eq!(fresh.read().await.unwrap().request_id, 7);
    let client = bidder(&node, "bidder-2").await;
    client.place_bid(Bid::new(1, 150)).await.unwrap();
}

/// docs/quic.md's stream limit is what a client gets: the documented number of streams open
/// at once, each answered; one more waits until more than an eighth of them (3 of 16) have
/// ended, the step in which the node's quinn grants new streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_the_documented_number_of_streams_at_once() {
    let doc = include_str!("../../docs/quic.md");
    let documented: u64 = doc
        .split("`streams_per_connection_max` at once, ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("docs/quic.md states the default stream limit");
    assert_eq!(
        documented,
        u64::from(Limits::default().streams_per_connection_max),
        "docs/quic.md and Limits::default() disagree"
    );
    let step = documented / 8 + 1;
    assert!(doc.contains(&format!("({step} streams at the default {documented})")));
    let node = QuicNode::start(limits()).await;
    let raw = node.raw_connection("bidder", "bidder-1").await;
    let mut streams = Vec::new();
    for request_id in 1..=documented {
        let mut stream = tokio::time::timeout(WAIT_MAX, raw.stream())
            .await
            .unwrap_or_else(|_| panic!("stream {request_id} of {documented} opens"));
        stream.write(&ping(request_id)).await;
        assert_eq!(stream.read().await.unwrap().request_id, request_id);
        streams.push(stream);
    }
    for ended in 0..step {
        let one_more = tokio::time::timeout(Duration::from_millis(300), raw.connection.open_bi());
        assert!(
            one_more.await.is_err(),
            "a stream opened while {documented} were open and {ended} had ended"
        );
        // One stream ends: both sides finished.
        let mut stream = streams.pop().unwrap();
        stream.send.finish().unwrap();
        assert!(stream.read().await.is_none(), "the node finishes its side");
    }
    for request_id in 1..=step {
        let mut stream = tokio::time::timeout(WAIT_MAX, raw.stream())
            .await
            .expect("streams open again once enough have ended");
        stream.write(&ping(1000 + request_id)).await;
        assert_eq!(stream.read().await.unwrap().request_id, 1000 + request_id);
    }
}

/// docs/quic.md: an oversized frame gets the `TOO_LARGE` error answer, then the stream is
/// stopped (STOP_SENDING) with the application code `TOO_LARGE` (3) — whether the client sent
/// only the length prefix, the whole frame, or far more; a broken length prefix gets
/// `MALFORMED` and a stop with `MALFORMED` (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_answered_then_its_stream_stopped_with_too_large() {
    let node = QuicNode::start(limits()).await;
    let raw = node.raw_connection("bidder", "bidder-1").await;
    let framed = |len: usize, body_bytes: usize| {
        let mut bytes = Vec::new();
        prost::encode_length_delimiter(len, &mut bytes).unwrap();
        bytes.resize(bytes.len() + body_bytes, 0x55);
        bytes
    };
    let over = Limits::default().frame_bytes_max + 1; // 65,537: one byte over 64 KiB
    let too_large = pb::ErrorCode::TooLarge;
    for (what, bytes, code) in [
        ("a length prefix alone", framed(over, 0), too_large),
        ("a whole frame one byte over", framed(over, over), too_large),
        ("a 1 MB frame", framed(1 << 20, 1 << 20), too_large),
        (
            "an 11-byte prefix",
            vec![0xff; 11],
            pb::ErrorCode::Malformed,
        ),
    ] {
        let mut stream = raw.stream().await;
        // Made before writing, so a stop that arrives during the write is not missed.
        let stopped = stream.send.stopped();
        let stop_code = Some(quinn::VarInt::from_u32(code as u32));
        // The node stops reading mid-frame: the write may end with the stop.
        if let Err(e) = stream.send.write_all(&bytes).await {
            assert_eq!(Some(e), stop_code.map(quinn::WriteError::Stopped), "{what}");
        }
        let error = stream.read().await.unwrap();
        let Some(Reply::Error(error)) = error.body else {
            panic!("{what}: {error:?}")
        };
        assert_eq!(error.code(), code, "{what}");
        let stopped = tokio::time::timeout(WAIT_MAX, stopped)
            .await
            .expect("the node stops the stream in time")
            .expect("the stream is stopped, not lost");
        assert_eq!(stopped, stop_code, "{what}: the stop code");
    }
    // docs/quic.md's numbers.
    assert_eq!(pb::ErrorCode::TooLarge as u32, 3);
    assert_eq!(pb::ErrorCode::Malformed as u32, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_at_the_handshake() {
    let node = QuicNode::start(limits()).await;
    let other_dir = node.dir.path().join("other-ca");
    let other = dev::generate(&other_dir, &dev::DevCertOptions::default()).unwrap();
    let identity = gavel_transport::Identity::from_uri("gavel://bidder/bidder-1").unwrap();
    let stranger = other.client(&identity).unwrap();
    // Trusts the node's CA, but presents a certificate the node's CA never signed.
    let mut config = ClientConfig::from_cert_files(
        node.addr,
        "localhost",
        &node.certs.ca_cert,
        &stranger.cert,
        &stranger.key,
    )
    .unwrap();
    config.connect_timeout = Duration::from_secs(2);
    let failures = r#"gavel_tls_handshake_failures_total{transport="quic",reason="tls"}"#;
    let before = metric(failures);
    let error = Client::connect(config).await.unwrap_err();
    assert!(matches!(error, ConnectError::Connection(_)), "{error:?}");
    // The node counts the failure as its handshake task ends, maybe after the client saw it.
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while metric(failures) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed handshake is counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The node's own bidders are unaffected.
    let client = bidder(&node, "bidder-1").await;
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_recovered_by_an_idempotent_retry_after_reconnecting() {
    let node = QuicNode::start(limits()).await;
    node.create_english(1);
    let relay = UdpRelay::start(node.addr).await;
    let client = Client::connect(quick_to_reconnect(&node, &relay))
        .await
        .unwrap();
    client.place_bid(Bid::new(1, 150)).await.unwrap();

    // The outcome is lost: the bid reaches the node, the answer never comes back, the
    // connection dies.
    relay.set(RelayMode::DropAnswers);
    let bid_id = random_bid_id();
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.place_bid(Bid::new(1, 400).with_id(bid_id)).await })
    };
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while node.view(1).bids_accepted < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bid never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let original_seq = node.view(1).seq;
    relay.set(RelayMode::DropAll);
    tokio::time::sleep(Duration::from_millis(700)).await;
    relay.set(RelayMode::Pass);
    let placed = pending.await.unwrap().unwrap();
    assert_eq!(placed.bid_id(), bid_id);
    assert_eq!(placed.accepted().seq, original_seq);
    assert_eq!(placed.accepted().price, 400);
    assert_eq!(placed.durable().await.unwrap().seq, original_seq);
    assert_eq!(
        node.view(1).bids_accepted,
        2,
        "the retried bid counted once"
    );

    // The durable ack is lost: accepted, then the connection dies before the sync.
    node.sync_gate.close();
    let placed = client.place_bid(Bid::new(1, 600)).await.unwrap();
    let seq = placed.accepted().seq;
    relay.set(RelayMode::DropAll);
    tokio::time::sleep(Duration::from_millis(700)).await;
    node.sync_gate.open();
    relay.set(RelayMode::Pass);
    assert_eq!(placed.durable().await.unwrap().seq, seq);
    assert_eq!(node.view(1).bids_accepted, 3);
    assert_eq!(node.view(1).price, Some(600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_durable_acks_then_closes() {
    let node = QuicNode::start(limits()).await;
    node.create_english(1);
    let client = bidder(&node, "bidder-1").await;
    node.sync_gate.close();
    let mut placed = Vec::new();
    for i in 0..5 {
        placed.push(client.place_bid(Bid::new(1, 200 + 100 * i)).await.unwrap());
    }
    node.gateway.shutdown().cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!node.server.is_finished(), "durable acks are still due");
    node.sync_gate.open();
    for placed in placed {
        let seq = placed.accepted().seq;
        assert_eq!(placed.durable().await.unwrap().seq, seq);
    }
    let mut late = node.client_config("bidder", "bidder-2");
    late.connect_timeout = Duration::from_millis(300);
    tokio::time::timeout(WAIT_MAX, node.server)
        .await
        .expect("the listener stops after the drain")
        .unwrap();
    assert!(Client::connect(late).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let node = QuicNode::start(Limits {
        connections_max: 1,
        ..limits()
    })
    .await;
    let first = bidder(&node, "bidder-1").await;
    let refused = r#"gavel_connections_refused_total{transport="quic",reason="connections_max"}"#;
    let before = metric(refused);
    let mut config = node.client_config("bidder", "bidder-2");
    config.connect_timeout = Duration::from_millis(500);
    assert!(Client::connect(config).await.is_err());
    assert!(metric(refused) > before);
    first.ping().await.unwrap();
    // The slot is free again once the first connection is gone.
    first.close().await;
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    let mut config = node.client_config("bidder", "bidder-2");
    config.connect_timeout = Duration::from_millis(500);
    while Client::connect(config.clone()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_watcher_connects_when_allowed_but_may_not_bid() {
    let node = QuicNode::start_with(limits(), true).await;
    node.create_english(1);
    let raw = node.raw_connection_as(None).await.unwrap();
    let mut stream = raw.stream().await;
    stream.write(&ping(1)).await;
    assert_eq!(stream.read().await.unwrap().request_id, 1);
    stream
        .write(&pb::ClientMessage {
            request_id: 2,
            body: Some(pb::client_message::Body::PlaceBid(pb::PlaceBid {
                auction_id: 1,
                amount: 150,
                bid_id_lo: 9,
                ..pb::PlaceBid::default()
            })),
        })
        .await;
    let answer = stream.read().await.unwrap();
    let Some(Reply::BidOutcome(outcome)) = answer.body else {
        panic!("{answer:?}")
    };
    let Some(pb::bid_outcome::Outcome::Rejected(rejected)) = outcome.outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(rejected.reason(), pb::RejectReason::Forbidden);
    assert_eq!(node.view(1).bids_accepted, 0);

    // Without anonymous watchers, a connection without a certificate fails.
    let strict = QuicNode::start(limits()).await;
    let refused = async {
        let raw = strict.raw_connection_as(None).await?;
        let (mut send, mut recv) = raw.connection.open_bi().await?;
        let mut bytes = Vec::new();
        gavel_proto::frame::encode(&ping(1), &mut bytes);
        send.write_all(&bytes).await?;
        recv.read_chunk(1024, true).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(refused.await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_tls_material_serves_new_connections() {
    let node = QuicNode::start(limits()).await;
    let old_config = node.client_config("bidder", "bidder-1");
    let old = Client::connect(old_config.clone()).await.unwrap();
    // A new CA, server and client certificates in the same files, then a reload.
    let options = dev::DevCertOptions {
        overwrite: true,
        ..dev::DevCertOptions::default()
    };
    dev::generate(&node.certs.dir, &options).unwrap();
    node.tls.reload().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    let mut fresh = node.client_config("bidder", "bidder-1");
    fresh.connect_timeout = Duration::from_millis(500);
    loop {
        match Client::connect(fresh.clone()).await {
            Ok(client) => {
                client.ping().await.unwrap();
                break;
            }
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e:?}"),
        }
    }
    // Trusting only the old CA, a new connection fails; the open one keeps working.
    let mut stale = old_config;
    stale.connect_timeout = Duration::from_millis(500);
    assert!(Client::connect(stale).await.is_err());
    old.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_bids_from_several_clients_each_get_one_outcome_and_durable_ack() {
    const CLIENTS: u64 = 4;
    const BIDS: u64 = 200;
    let node = QuicNode::start(limits()).await;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        node.create_english(c);
        let client = bidder(&node, if c % 2 == 0 { "bidder-1" } else { "bidder-2" }).await;
        tasks.push(tokio::spawn(async move {
            let bids: Vec<_> = (0..BIDS)
                .map(|i| {
                    let client = client.clone();
                    tokio::spawn(async move { client.place_bid(Bid::new(c, 200 + 10 * i)).await })
                })
                .collect();
            let mut accepted = 0_u64;
            for bid in bids {
                match bid.await.unwrap() {
                    Ok(placed) => {
                        let seq = placed.accepted().seq;
                        assert_eq!(placed.durable().await.unwrap().seq, seq);
                        accepted += 1;
                    }
                    // Spawned bids reach the stream in any order; a later, higher one may
                    // come first.
                    Err(BidError::TooLow { .. }) => {}
                    Err(other) => panic!("{other:?}"),
                }
            }
            (c, accepted)
        }));
    }
    for task in tasks {
        let (auction, accepted) = tokio::time::timeout(WAIT_MAX, task).await.unwrap().unwrap();
        assert!(accepted >= 1);
        assert_eq!(
            node.view(auction).bids_accepted,
            accepted,
            "auction {auction}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_bid_times_out_and_the_client_recovers() {
    let node = QuicNode::start(limits()).await;
    node.create_english(1);
    let relay = UdpRelay::start(node.addr).await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..quick_to_reconnect(&node, &relay)
    };
    let client = Client::connect(config).await.unwrap();
    relay.set(RelayMode::DropAll);
    assert_eq!(
        client.place_bid(Bid::new(1, 150)).await.unwrap_err(),
        BidError::Timeout
    );
    // A ping is not retried: it times out, or fails with the connection it was sent on.
    let error = client.ping().await.unwrap_err();
    assert!(
        matches!(error, BidError::Timeout | BidError::Connection(_)),
        "{error:?}"
    );
    relay.set(RelayMode::Pass);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    let placed = loop {
        match client.place_bid(Bid::new(1, 500)).await {
            Ok(placed) => break placed,
            Err(BidError::Timeout) => {
                assert!(tokio::time::Instant::now() < deadline, "never reconnected");
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(placed.accepted().price, 500);
}

/// Reads `watcher` until auction `auction`'s price is `price`; returns every price update
/// seen (price, via) in order.
async fn prices_until(watcher: &mut Watcher, auction: u64, price: u64) -> Vec<(u64, u64, Via)> {
    let mut seen = Vec::new();
    loop {
        let update = tokio::time::timeout(WAIT_MAX, watcher.next())
            .await
            .expect("an update in time")
            .expect("the stream is open");
        let Update::Price(update, via) = update else {
            continue;
        };
        assert_eq!(update.auction_id, auction);
        if let Some(&(seq_before, _, _)) = seen.last() {
            assert!(
                update.seq > seq_before,
                "seq only grows: {seen:?} then {update:?}"
            );
        }
        seen.push((update.seq, update.price.unwrap(), via));
        if update.price == Some(price) {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_streams_over_quic_by_datagram_or_stream_with_resume() {
    let node = QuicNode::start(limits()).await;
    node.create_english(5);
    let bidder = bidder(&node, "bidder-1").await;
    let watcher = Client::connect(node.client_config("watcher", "watcher-1"))
        .await
        .unwrap();
    let datagrams_before = metric("gavel_stream_datagrams_total{result=\"sent\"}");
    let mut ticks = watcher
        .watch(Watch::patterns(["test.>"]).with_datagrams())
        .await
        .unwrap();
    let mut reliable = watcher.watch(Watch::patterns(["test.*"])).await.unwrap();
    for w in [&mut ticks, &mut reliable] {
        let first = tokio::time::timeout(WAIT_MAX, w.next())
            .await
            .unwrap()
            .unwrap();
        let Update::Snapshot(snapshot) = first else {
            panic!("a snapshot first: {first:?}")
        };
        assert_eq!(snapshot.rules.unwrap().auction_id, 5);
        assert_eq!(snapshot.bidders_connected, 1, "the bidder's connection");
    }
    let last = 100 + 5 * 19;
    for n in 0..20 {
        bidder.place_bid(Bid::new(5, 100 + 5 * n)).await.unwrap();
    }
    let by_datagram = prices_until(&mut ticks, 5, last).await;
    assert!(
        by_datagram.iter().all(|&(_, _, via)| via == Via::Datagram),
        "price ticks come as datagrams: {by_datagram:?}"
    );
    let by_stream = prices_until(&mut reliable, 5, last).await;
    assert!(
        by_stream.iter().all(|&(_, _, via)| via == Via::Stream),
        "{by_stream:?}"
    );
    assert!(
        metric("gavel_stream_datagrams_total{result=\"sent\"}") - datagrams_before
            >= by_datagram.len() as f64
    );

    // Resume on a new stream: only what moved since the positions comes, as a snapshot.
    let positions = reliable.positions();
    assert_eq!(positions.len(), 1);
    assert_eq!(positions[0].seq, node.view(5).seq);
    drop(reliable);
    bidder.place_bid(Bid::new(5, last + 5)).await.unwrap();
    let mut again = watcher
        .watch(Watch {
            resume: positions,
            ..Watch::patterns(["test.*"])
        })
        .await
        .unwrap();
    let update = tokio::time::timeout(WAIT_MAX, again.next())
        .await
        .unwrap()
        .unwrap();
    let Update::Snapshot(snapshot) = update else {
        panic!("what moved, as a snapshot: {update:?}")
    };
    assert_eq!(snapshot.price, Some(last + 5));
    assert_eq!(snapshot.seq, node.view(5).seq);
    node.gateway.shutdown().cancel();
}

/// A subscription matching many auctions gets one snapshot of each at once, over QUIC as
/// over the WebSocket, whether or not it asked for datagrams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_many_auctions_gets_every_snapshot_at_once() {
    const AUCTIONS: u64 = 1_000;
    let node = QuicNode::start(limits()).await;
    for id in 1..=AUCTIONS {
        node.create_english(id);
    }
    let watcher = Client::connect(node.client_config("watcher", "watcher-1"))
        .await
        .unwrap();
    for watch in [
        Watch::patterns(["test.>"]),
        Watch::patterns(["test.>"]).with_datagrams(),
    ] {
        let mut stream = watcher.watch(watch).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < AUCTIONS as usize {
            let update = tokio::time::timeout(WAIT_MAX, stream.next())
                .await
                .unwrap_or_else(|_| panic!("{} of {AUCTIONS} snapshots came", seen.len()))
                .unwrap_or_else(|e| panic!("after {} snapshots: {e}", seen.len()));
            let Update::Snapshot(snapshot) = update else {
                panic!("only snapshots while nothing moves: {update:?}")
            };
            assert!(seen.insert(snapshot.rules.unwrap().auction_id), "one each");
        }
    }
    node.gateway.shutdown().cancel();
}
