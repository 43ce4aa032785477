//! A short load on a node served by [`super::served`], so that its metric families appear
//! (the exporter lists a family once it has a value): admin requests (one refused), bids over
//! QUIC (one rejected) and over WebSocket, a malformed WebSocket message, a QUIC watcher with
//! datagrams getting a price update, a connection that never finishes its TLS handshake, and
//! an auction that ends and is settled. The metrics lint and the ops checks share it.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use gavel_client::{Bid, Client, ClientConfig, Update, Watch};
use gavel_transport::Identity;
use gavel_transport::tls::dev::DevCerts;
use hyper::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use super::https::{WAIT, plain_get, request_to, tls_over, ws_over};
use super::served::{Served, english_rules};
use super::stream::Bidder;

/// The auction the load bids on, and its topic.
const AUCTION: u64 = 1;
const TOPIC: &str = "lint.lot-1";

/// Runs the load against `served`, whose development certificates are `certs`.
pub async fn exercise(served: &Served, certs: &DevCerts) {
    admin_requests(served.https, certs).await;
    let watcher = Client::connect(quic_config(served.quic, certs, "watcher/watcher-1"))
        .await
        .unwrap();
    let mut ticks = watcher
        .watch(Watch::patterns(["lint.>"]).with_datagrams())
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, ticks.next()).await.unwrap();
    assert!(matches!(first, Ok(Update::Snapshot(_))), "{first:?}");

    let bidder = Client::connect(quic_config(served.quic, certs, "bidder/bidder-1"))
        .await
        .unwrap();
    let placed = bidder.place_bid(Bid::new(AUCTION, 150)).await.unwrap();
    placed.durable().await.unwrap();
    let refused = bidder.place_bid(Bid::new(AUCTION, 120)).await;
    assert!(refused.is_err(), "a bid below the price is rejected");
    ws_bid_and_garbage(served.https, certs, 200).await;
    // The watcher sees the price move (stream delivery, datagrams).
    let started = Instant::now();
    loop {
        let update = tokio::time::timeout(WAIT, ticks.next()).await.unwrap();
        if matches!(&update, Ok(Update::Price(p, _)) if p.price == Some(200)) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "no price update to 200: {update:?}"
        );
    }
    // A TCP connection that never says hello: a failed TLS handshake, once it is dropped.
    drop(tokio::net::TcpStream::connect(served.https).await.unwrap());
}

/// An auction created as the admin, a creation refused to a bidder, a read as a watcher.
async fn admin_requests(https: std::net::SocketAddr, certs: &DevCerts) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let rules = english_rules(AUCTION, TOPIC, now_us - 1_000_000).into_bytes();
    let post = |who| {
        request_to(
            https,
            certs,
            Some(who),
            "POST",
            "/v1/auctions",
            Some(rules.clone()),
        )
    };
    assert_eq!(post("admin/admin").await.0, StatusCode::CREATED);
    assert_eq!(post("bidder/bidder-1").await.0, StatusCode::FORBIDDEN);
    // One that ends at once, so the close ticker settles it.
    let ending = format!(
        r#"{{"rules":{{"auctionId":"2","topic":"lint.lot-2","english":{{"startPrice":"100"}},"startsAtUs":"{}","endsAtUs":"{}"}}}}"#,
        now_us - 1_000_000,
        now_us + 100_000
    );
    let (status, _, body) = request_to(
        https,
        certs,
        Some("admin/admin"),
        "POST",
        "/v1/auctions",
        Some(ending.into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let path = format!("/v1/auctions/{AUCTION}");
    let (status, _, _) =
        request_to(https, certs, Some("watcher/watcher-1"), "GET", &path, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// The SDK's configuration for the dev client `who` (`role/id`).
fn quic_config(quic: std::net::SocketAddr, certs: &DevCerts, who: &str) -> ClientConfig {
    let identity = Identity::from_uri(&format!("gavel://{who}")).unwrap();
    let client = certs.client(&identity).unwrap();
    ClientConfig::from_cert_files(quic, "localhost", &certs.ca_cert, &client.cert, &client.key)
        .unwrap()
}

/// Over a `gavel.v1.proto` WebSocket as `bidder/bidder-2`: bytes that are no message (an
/// error answer, counted as malformed), then a bid of `amount` (accepted).
async fn ws_bid_and_garbage(https: std::net::SocketAddr, certs: &DevCerts, amount: u64) {
    let tls = tls_over(
        tokio::net::TcpStream::connect(https).await.unwrap(),
        certs,
        Some("bidder/bidder-2"),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let mut socket = ws_over(tls, "gavel.v1.proto", None).await.unwrap();
    socket
        .send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    Bidder::over(socket).bid(AUCTION, amount).await;
}

/// `/metrics` from the plain port once every one of `families` is in it.
pub async fn metrics_with(metrics: std::net::SocketAddr, families: &[&str]) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = plain_get(metrics, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let missing: Vec<&str> = families
            .iter()
            .copied()
            .filter(|family| !text.contains(&format!("# TYPE {family} ")))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(started.elapsed() < WAIT, "{missing:?} never came:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
