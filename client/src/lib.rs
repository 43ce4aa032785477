//! `gavel-client`: the bidder SDK — place bids on a Gavel node over QUIC with a client
//! certificate, learn within microseconds whether each was accepted, and optionally await
//! the second, durable acknowledgement.
//!
//! ```no_run
//! use gavel_client::{Bid, BidError, Client, ClientConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The dev certificates written by `gavel cert` (or `gavel serve --dev`).
//! let config = ClientConfig::from_cert_dir(
//!     "127.0.0.1:7443".parse()?,
//!     "data/certs".as_ref(),
//!     "bidder-1",
//! )?;
//! let client = Client::connect(config).await?;
//! println!("round trip {:?}", client.ping().await?);
//! match client.place_bid(Bid::new(42, 150)).await {
//!     Ok(placed) => {
//!         println!("accepted as seq {}, price {}", placed.accepted().seq, placed.accepted().price);
//!         let durable = placed.durable().await?; // on the node's disk
//!         println!("durable at seq {}", durable.seq);
//!     }
//!     Err(BidError::TooLow { min_next }) => println!("outbid: at least {min_next} now"),
//!     Err(other) => return Err(other.into()),
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Requests are pipelined on one QUIC stream: many `place_bid` calls may run at once from
//! clones of one [`Client`]. A background task owns the connection; when it drops, the task
//! reconnects with exponential backoff and full jitter and resends every bid still waiting
//! for its outcome or durable ack under the same bid id — the node answers a retry of a bid
//! it already accepted with the original outcome, so a bid counts once however often the
//! network fails.
//!
//! Several nodes: where nodes share the auctions (one Kafka log, each partition owned by one
//! node), a node answers a bid on another node's auction `MISDIRECTED`, naming the owner, or
//! `NO_OWNER` mid-takeover. The client learns a partition → node map from those answers
//! (the node's own partition function, [`gavel_proto::partition::partition_of`]), connects to
//! other nodes lazily with the same certificate, sends each bid to its auction's owner, and
//! resends a redirected bid — or one whose connection was lost — under the same bid id until
//! it is decided (docs/quic.md, "Several nodes").
//!
//! Map of the crate:
//! - [`ClientConfig`] (`config`): address, TLS material, timeouts, backoff, bounds;
//! - [`Client`], [`Bid`], [`PlacedBid`], [`Accepted`], [`DurableAck`] (here);
//! - [`BidError`], [`ConnectError`] (`error`);
//! - [`Watch`], [`Watcher`], [`Update`] (`watch`): live prices on a stream of the
//!   connection, price updates optionally as QUIC datagrams;
//! - `connection`: a node's background task (pipelining, reconnects, idempotent resends);
//! - `router`: the connections to several nodes and the resending of redirected bids;
//! - `routes`: the partition → node map (sans-IO);
//! - `backoff`: full-jitter exponential backoff.
//!
//! The SDK depends on the wire schema (`gavel-proto`), quinn, rustls and tokio only — never
//! on the node, its log or its transports.

mod backoff;
mod config;
mod connection;
mod error;
mod router;
mod routes;
mod watch;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_proto::pb;
use tokio::sync::{mpsc, oneshot};

pub use config::{ClientConfig, dev_files};
pub use error::{BidError, ConnectError};
pub use watch::{Update, Via, Watch, Watcher};

use connection::{BidRequest, Command};
use router::Router;

/// One bid to place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bid {
    /// The auction.
    pub auction_id: u64,
    /// The amount offered now, in ticks (at least 1, at most 2^62 − 1).
    pub amount: u64,
    /// Hidden proxy maximum, in ticks, at least `amount` (English auctions only).
    pub max: Option<u64>,
    /// The idempotency key; a random non-zero id is chosen if `None`. Give one to be able to
    /// retry the very same bid after a [`BidError::Timeout`].
    pub bid_id: Option<u128>,
}

impl Bid {
    /// A bid of `amount` on `auction_id`, no proxy maximum, a random bid id.
    pub fn new(auction_id: u64, amount: u64) -> Bid {
        Bid {
            auction_id,
            amount,
            max: None,
            bid_id: None,
        }
    }

    /// This bid with a hidden proxy maximum.
    pub fn with_max(self, max: u64) -> Bid {
        Bid {
            max: Some(max),
            ..self
        }
    }

    /// This bid with a given bid id (`0` is refused by the node).
    pub fn with_id(self, bid_id: u128) -> Bid {
        Bid {
            bid_id: Some(bid_id),
            ..self
        }
    }
}

/// A fresh random non-zero bid id.
pub fn random_bid_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// The node accepted a bid.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Accepted {
    /// The auction's sequence number of the state change the bid made.
    pub seq: u64,
    /// Visible price after the bid, in ticks (sealed auctions: the bid's own amount).
    pub price: u64,
    /// The leading bidder's id after the bid (absent in sealed auctions).
    pub leader: Option<String>,
    /// End of the auction after the bid (soft close may move it), microseconds since the
    /// Unix epoch.
    pub ends_at_us: u64,
}

impl From<pb::Accepted> for Accepted {
    fn from(accepted: pb::Accepted) -> Accepted {
        Accepted {
            seq: accepted.seq,
            price: accepted.price,
            leader: accepted.leader,
            ends_at_us: accepted.ends_at_us,
        }
    }
}

/// An accepted bid is on the node's stable storage and survives a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableAck {
    /// The auction.
    pub auction_id: u64,
    /// The bid id.
    pub bid_id: u128,
    /// The accepted bid's sequence number, as in [`Accepted::seq`].
    pub seq: u64,
}

/// A bid the node accepted; [`PlacedBid::durable`] awaits its durable acknowledgement.
#[derive(Debug)]
pub struct PlacedBid {
    auction_id: u64,
    bid_id: u128,
    accepted: Accepted,
    durable: oneshot::Receiver<Result<DurableAck, BidError>>,
    durable_timeout: Duration,
}

impl PlacedBid {
    /// The acceptance: sequence number, price, leader, end.
    pub fn accepted(&self) -> &Accepted {
        &self.accepted
    }

    /// The auction.
    pub fn auction_id(&self) -> u64 {
        self.auction_id
    }

    /// The bid id (the one given, or the one chosen).
    pub fn bid_id(&self) -> u128 {
        self.bid_id
    }

    /// Waits until the node reports the bid durable (at most
    /// [`ClientConfig::durable_timeout`]). Survives reconnects: a durable ack lost with a
    /// connection is recovered by resending the bid. If the node that accepted it died before
    /// writing it, the bid is decided anew by the auction's new owner, and a refusal then
    /// (for example [`BidError::TooLow`], later bids having overtaken it) ends this wait.
    pub async fn durable(self) -> Result<DurableAck, BidError> {
        match tokio::time::timeout(self.durable_timeout, self.durable).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BidError::Connection("the client was closed".into())),
            Err(_) => Err(BidError::Timeout),
        }
    }
}

/// A connection to a node for one bidder. Cheap to clone; clones share the connection.
/// The connection closes when the last clone is dropped and nothing is in flight, or at
/// [`Client::close`].
#[derive(Clone)]
pub struct Client {
    /// The home node's connection task (pings, watches, the connection).
    commands: mpsc::Sender<Command>,
    router: Arc<Router>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects (TLS handshake with the client certificate, then a ping the node must
    /// answer) and starts the background connection task. Must be called inside a tokio
    /// runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client, ConnectError> {
        let quic = config.quic()?;
        let endpoint = client_endpoint(config.server)?;
        let first = connection::connect(&endpoint, &config, &quic).await?;
        let config = Arc::new(config);
        let router = Router::start(Arc::clone(&config), quic, endpoint, first);
        let commands = router
            .home()
            .expect("invariant: Router::start sets the home node's task");
        Ok(Client {
            commands,
            router,
            config,
        })
    }

    /// Places a bid and waits for its outcome (at most [`ClientConfig::request_timeout`],
    /// reconnects included). `Ok` means accepted; every rejection is a [`BidError`].
    pub async fn place_bid(&self, bid: Bid) -> Result<PlacedBid, BidError> {
        let bid_id = bid.bid_id.unwrap_or_else(random_bid_id);
        let message = pb::PlaceBid {
            auction_id: bid.auction_id,
            amount: bid.amount,
            max: bid.max,
            bid_id_hi: (bid_id >> 64) as u64,
            // Truncation intended: the low 64 bits.
            bid_id_lo: bid_id as u64,
            client_sent_at_us: unix_micros(),
        };
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let (durable_tx, durable_rx) = oneshot::channel();
        let command = Command::Bid(BidRequest {
            bid: message,
            outcome: Some(outcome_tx),
            durable: durable_tx,
            retried: false,
            hops: 0,
        });
        // The owner of the auction's partition if known, else the home node.
        let to = self
            .router
            .sender_for(bid.auction_id)
            .unwrap_or_else(|| self.commands.clone());
        let accepted = request_to(&to, command, outcome_rx, self.config.request_timeout)
            .await
            .and_then(|result| result)?;
        Ok(PlacedBid {
            auction_id: bid.auction_id,
            bid_id,
            accepted,
            durable: durable_rx,
            durable_timeout: self.config.durable_timeout,
        })
    }

    /// Subscribes to live prices on a new stream of this client's connection; see
    /// [`Watcher`]. Any role may watch.
    pub async fn watch(&self, watch: Watch) -> Result<Watcher, BidError> {
        let (reply, answer) = oneshot::channel();
        let connection = self.request(Command::Connection { reply }, answer).await?;
        tokio::time::timeout(
            self.config.request_timeout,
            Watcher::open(connection, watch),
        )
        .await
        .map_err(|_| BidError::Timeout)?
    }

    /// The client's current QUIC connection (waiting for a reconnect if it is down, at most
    /// the request timeout): for a stream the SDK does not speak itself, such as the edge
    /// stream (`Subscribe.encoding = EDGE`, docs/quic.md).
    pub async fn connection(&self) -> Result<quinn::Connection, BidError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Connection { reply }, answer).await
    }

    /// Measures one round trip to the node (through the request stream, behind any requests
    /// queued before it).
    pub async fn ping(&self) -> Result<Duration, BidError> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.request(Command::Ping { reply }, answer)
            .await
            .and_then(|result| result)?;
        Ok(started.elapsed())
    }

    /// Waits until every request in flight is answered or given up by its caller (durable
    /// acks included), then closes the connection; at most the request timeout plus the
    /// durable timeout. Other clones fail from then on.
    pub async fn close(self) {
        let wait = self.config.request_timeout + self.config.durable_timeout;
        // Every node's connection, the home node's last (a watch may use it until then).
        let mut tasks = self.router.connected();
        tasks.sort_by_key(|task| task.same_channel(&self.commands));
        let close = async {
            for task in tasks {
                let (done, closed) = oneshot::channel();
                if task.send(Command::Close { done }).await.is_ok() {
                    let _ = closed.await;
                }
            }
        };
        let _ = tokio::time::timeout(wait, close).await;
    }

    async fn request<T>(
        &self,
        command: Command,
        answer: oneshot::Receiver<T>,
    ) -> Result<T, BidError> {
        request_to(&self.commands, command, answer, self.config.request_timeout).await
    }
}

/// Sends `command` to a connection task and waits for `answer`, at most `timeout`.
async fn request_to<T>(
    task: &mpsc::Sender<Command>,
    command: Command,
    answer: oneshot::Receiver<T>,
    timeout: Duration,
) -> Result<T, BidError> {
    let exchange = async {
        task.send(command)
            .await
            .map_err(|_| BidError::Connection("the client was closed".into()))?;
        answer
            .await
            .map_err(|_| BidError::Connection("the connection failed".into()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| BidError::Timeout)?
}

/// A client endpoint (its own UDP socket) for a node at `server`.
fn client_endpoint(server: SocketAddr) -> Result<quinn::Endpoint, ConnectError> {
    let bind = SocketAddr::new(local_ip_for(server.ip()), 0);
    quinn::Endpoint::client(bind)
        .map_err(|e| ConnectError::Connection(format!("binding {bind}: {e}")))
}

/// The address to bind the client's UDP socket to: loopback for a loopback node (nothing
/// leaves the machine), otherwise the unspecified address of the node's family.
fn local_ip_for(server: IpAddr) -> IpAddr {
    match (server, server.is_loopback()) {
        (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}
