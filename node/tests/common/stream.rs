//! Helpers of the stream tests (WebSocket and SSE watchers): auctions created through the
//! admin API and a bidder's WebSocket (`gavel.v1.proto`) placing bids.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use gavel_proto::pb;
use prost::Message as _;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::https::{TestNode, WAIT};

/// The dev bidder the tests bid as.
pub const BIDDER: Option<&str> = Some("bidder/bidder-1");

/// The wall clock in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Creates an English auction `id` on `topic` (start price 100, open ten minutes).
pub async fn create(node: &TestNode, id: u64, topic: &str) {
    let now = now_us();
    let body = json!({"rules": {
        "auctionId": id.to_string(),
        "topic": topic,
        "english": {"startPrice": "100"},
        "startsAtUs": (now - 1_000_000).to_string(),
        "endsAtUs": (now + 600_000_000).to_string(),
    }});
    node.create_auction(body.to_string().into_bytes()).await;
}

/// Request `id`: a bid of `amount` on `auction` (bid id `7:id`).
pub fn place_bid(id: u64, auction: u64, amount: u64) -> pb::ClientMessage {
    pb::ClientMessage {
        request_id: id,
        body: Some(pb::client_message::Body::PlaceBid(pb::PlaceBid {
            auction_id: auction,
            amount,
            max: None,
            bid_id_hi: 7,
            bid_id_lo: id,
            client_sent_at_us: now_us(),
        })),
    }
}

/// A bidder's socket placing bids and reading their outcomes.
pub struct Bidder {
    socket: WebSocketStream<TlsStream<TcpStream>>,
    next_id: u64,
}

impl Bidder {
    /// Connects as [`BIDDER`].
    pub async fn connect(node: &TestNode) -> Bidder {
        Bidder::over(node.ws(BIDDER, "gavel.v1.proto", None).await.unwrap())
    }

    /// A bidder on an open `gavel.v1.proto` WebSocket.
    pub fn over(socket: WebSocketStream<TlsStream<TcpStream>>) -> Bidder {
        Bidder { socket, next_id: 1 }
    }

    /// Bids `amount` on `auction` and asserts it was accepted.
    pub async fn bid(&mut self, auction: u64, amount: u64) {
        self.bids(&[(auction, amount)]).await;
    }

    /// Sends every `(auction, amount)` bid at once (pipelined), then asserts each was
    /// accepted.
    pub async fn bids(&mut self, bids: &[(u64, u64)]) {
        for &(auction, amount) in bids {
            let id = self.next_id;
            self.next_id += 1;
            let request = place_bid(id, auction, amount);
            self.socket
                .feed(Message::Binary(request.encode_to_vec().into()))
                .await
                .unwrap();
        }
        self.socket.flush().await.unwrap();
        let mut outcomes = 0;
        while outcomes < bids.len() {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("an outcome in time")
                .unwrap()
                .unwrap();
            let Message::Binary(bytes) = message else {
                continue;
            };
            let reply = pb::ServerMessage::decode(bytes.as_ref()).unwrap();
            if let Some(pb::server_message::Body::BidOutcome(outcome)) = reply.body {
                assert!(
                    matches!(outcome.outcome, Some(pb::bid_outcome::Outcome::Accepted(_))),
                    "{:?}: {outcome:?}",
                    bids[outcomes]
                );
                outcomes += 1;
            }
        }
    }
}
