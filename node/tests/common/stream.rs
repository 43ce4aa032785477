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
/// Tries of a batch of bids refused `OVERLOADED` before a test gives up.
const OVERLOADED_RETRIES_MAX: usize = 50;

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
    /// accepted — as a client following the docs would: a bid refused `OVERLOADED` (the
    /// log's queue was full on a busy machine) is sent again after its `retry_after_us`,
    /// unless a later bid of the batch on its auction was accepted (it would be too low
    /// now, and the price already moved past it).
    pub async fn bids(&mut self, bids: &[(u64, u64)]) {
        let mut pending = bids.to_vec();
        for _ in 0..OVERLOADED_RETRIES_MAX {
            let (accepted, overloaded, retry_after_us) = self.send_all(&pending).await;
            if overloaded.is_empty() {
                return;
            }
            pending = overloaded
                .into_iter()
                .filter(|&i| {
                    let (auction, amount) = pending[i];
                    !accepted
                        .iter()
                        .any(|&(a, later)| a == auction && later > amount)
                })
                .map(|i| pending[i])
                .collect();
            tokio::time::sleep(std::time::Duration::from_micros(retry_after_us)).await;
        }
        panic!("bids still overloaded after {OVERLOADED_RETRIES_MAX} tries: {pending:?}");
    }

    /// Sends `bids` pipelined and reads their outcomes; asserts each was accepted or
    /// refused `OVERLOADED`. Returns the accepted `(auction, amount)`s, the indexes of the
    /// overloaded bids, and the longest `retry_after_us` among them.
    async fn send_all(&mut self, bids: &[(u64, u64)]) -> (Vec<(u64, u64)>, Vec<usize>, u64) {
        let first_id = self.next_id;
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
        let (mut accepted, mut overloaded, mut retry_after_us) = (Vec::new(), Vec::new(), 0);
        while accepted.len() + overloaded.len() < bids.len() {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("an outcome in time")
                .unwrap()
                .unwrap();
            let Message::Binary(bytes) = message else {
                continue;
            };
            let reply = pb::ServerMessage::decode(bytes.as_ref()).unwrap();
            let Some(pb::server_message::Body::BidOutcome(outcome)) = reply.body else {
                continue;
            };
            // Cast: request ids of this batch, counted from `first_id`.
            let index = (reply.request_id - first_id) as usize;
            match outcome.outcome {
                Some(pb::bid_outcome::Outcome::Accepted(_)) => accepted.push(bids[index]),
                Some(pb::bid_outcome::Outcome::Rejected(rejected))
                    if rejected.reason() == pb::RejectReason::Overloaded =>
                {
                    overloaded.push(index);
                    retry_after_us = retry_after_us.max(rejected.retry_after_us.unwrap_or(0));
                }
                other => panic!("{:?}: {other:?}", bids[index]),
            }
        }
        overloaded.sort_unstable();
        (accepted, overloaded, retry_after_us)
    }
}
