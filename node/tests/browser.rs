//! The browser page end to end: `gavel serve --dev` as a process (real ports, the dev PKI,
//! anonymous watchers), an auction created through the admin API, the page at `/` opened in
//! headless Chromium (no client certificate: an anonymous watcher), bids placed with the
//! SDK over QUIC, and the page's DOM polled until it shows them: the price, the leader, a
//! chart that grew, time left ticking; after its socket drops, the page reconnects, resumes
//! and shows a bid placed meanwhile. No script error and no CSP violation on the way. A
//! screenshot goes to `target/test-artifacts/browser.png`.
//!
//! Chromium must be installed (`ops/test.sh` installs the Debian package when missing): the
//! test fails without it, it never skips.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cdp::Browser;
use common::https::{WAIT, request_to};
use common::served::{english_rules, serve};
use common::stream::now_us;
use gavel_client::{Bid, Client, ClientConfig};
use gavel_transport::tls::dev;
use hyper::StatusCode;
use serde_json::Value;

const ADMIN: Option<&str> = Some("admin/admin");

/// Longest wait for the page to show something.
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// Where test artifacts go: `<target dir>/test-artifacts`.
fn artifacts() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("test-artifacts")
}

/// A JavaScript expression: the text of cell `class` in auction `id`'s row, or null.
fn cell(id: u64, class: &str) -> String {
    format!(r#"document.querySelector('tr[data-auction="{id}"] td.{class}')?.textContent ?? null"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_prices_from_bids_placed_with_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = serve(&data_dir);
    let certs_dir = data_dir.join("certs");
    let certs = dev::ensure(&certs_dir).unwrap();

    // Two auctions through the admin API.
    let start = now_us();
    for (id, topic) in [(42, "energy.eu.de.block-42"), (43, "metals.cu.lot-43")] {
        let create = english_rules(id, topic, start).into_bytes();
        let (status, _, body) = request_to(
            served.https,
            &certs,
            ADMIN,
            "POST",
            "/v1/auctions",
            Some(create),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
    }

    // The page and its headers, as a browser gets them (no certificate).
    let (status, headers, body) = request_to(served.https, &certs, None, "GET", "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(String::from_utf8_lossy(&body).contains("/assets/app.js"));
    for asset in ["/assets/app.js", "/assets/style.css", "/assets/icon.svg"] {
        let (status, _, _) = request_to(served.https, &certs, None, "GET", asset, None).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
    }

    let mut browser = Browser::launch(1280, 420).await;
    let url = format!("https://127.0.0.1:{}/", served.https.port());
    browser.navigate(&url).await;
    browser
        .wait_for(
            "the page connects",
            "window.gavel?.connected() ?? false",
            PAGE_WAIT,
            |v| v == true,
        )
        .await;
    browser
        .wait_for(
            "both auctions listed",
            "document.querySelectorAll('#rows tr').length",
            PAGE_WAIT,
            |v| v == 2,
        )
        .await;
    assert_eq!(
        browser.eval(&cell(42, "topic")).await,
        "energy.eu.de.block-42"
    );
    assert_eq!(browser.eval(&cell(42, "price")).await, "—", "no bid yet");

    // Bids through the SDK, as bidder-1.
    let config = ClientConfig::from_cert_dir(served.quic, &certs_dir, "bidder-1").unwrap();
    let client = tokio::time::timeout(WAIT, Client::connect(config))
        .await
        .unwrap()
        .unwrap();
    for amount in [150, 200] {
        client.place_bid(Bid::new(42, amount)).await.unwrap();
        let expected = amount.to_string();
        browser
            .wait_for("the new price", &cell(42, "price"), PAGE_WAIT, |v| {
                v == expected.as_str()
            })
            .await;
    }
    assert_eq!(browser.eval(&cell(42, "leader")).await, "bidder-1");
    assert_eq!(browser.eval(&cell(42, "bids")).await, "2");
    let points =
        r#"Number(document.querySelector('tr[data-auction="42"] svg.chart').dataset.points)"#;
    assert_eq!(
        browser.eval(points).await,
        2,
        "the chart has a point per price"
    );
    assert_eq!(
        browser.eval(&cell(43, "price")).await,
        "—",
        "the other auction did not move"
    );

    // Time left ticks.
    let left = browser.eval(&cell(42, "left")).await;
    assert!(
        left.as_str().is_some_and(|l| l.starts_with("00:0")),
        "{left}"
    );
    browser
        .wait_for(
            "time left ticks",
            &cell(42, "left"),
            PAGE_WAIT,
            |v: &Value| v != &left,
        )
        .await;

    // The socket drops; a bid lands meanwhile; the page reconnects and resumes.
    browser.eval("window.gavel.drop()").await;
    client.place_bid(Bid::new(42, 250)).await.unwrap();
    browser
        .wait_for(
            "the price after a reconnect",
            &cell(42, "price"),
            PAGE_WAIT,
            |v| v == "250",
        )
        .await;
    browser
        .wait_for("reconnected", "window.gavel.connected()", PAGE_WAIT, |v| {
            v == true
        })
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#rows tr').length")
            .await,
        2
    );

    let shot = artifacts().join("browser.png");
    browser.screenshot(&shot).await;
    // Events that arrived during the last calls are in `problems` too.
    browser.eval("0").await;
    assert!(
        browser.problems.is_empty(),
        "script errors or CSP violations: {:#?}",
        browser.problems
    );
    client.close().await;
}
