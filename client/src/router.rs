//! A client's connections to several nodes sharing the auctions (docs/quic.md, "Several
//! nodes"): one connection task ([`Driver`]) per node, opened lazily, the first being the
//! node the client connected to (its "home"), and the partition → node map ([`Routes`])
//! every bid is routed by.
//!
//! A bid goes to the owner of its auction's partition when the map names one whose
//! connection is up, else to home (or, with home down, to any node whose connection is up).
//! A node that does not own the partition answers `MISDIRECTED` naming the owner, or
//! `NO_OWNER`; the connection task hands the bid back here ([`Router::hand_off`]) and a small
//! task resends it — the same bid id, so a bid decided before counts once — to the owner,
//! connecting first if needed, after a jittered backoff that grows with each hop. A bid whose
//! connection was lost is handed off the same way once another node is known, so a bidder
//! keeps working while a dead node's partitions move. The resending ends when the bid's
//! caller stops waiting (its request or durable timeout).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use gavel_proto::pb;
use tokio::sync::{OnceCell, mpsc};

use crate::backoff::full_jitter;
use crate::config::ClientConfig;
use crate::connection::{self, BidRequest, Command, Driver};
use crate::error::{BidError, ConnectError};
use crate::routes::Routes;

/// Nodes a client connects to at most (home included); a redirect to one more fails the bid.
pub(crate) const NODES_MAX: usize = 64;

/// One node's connection task, started once its first connection succeeded.
#[derive(Default)]
pub(crate) struct NodeSlot {
    commands: OnceCell<mpsc::Sender<Command>>,
    /// The task has a connection now (set and cleared by the task).
    pub(crate) up: Arc<AtomicBool>,
    /// When a connection to it last failed: later attempts within the connect timeout fail
    /// at once, so that many bids redirected to a dead node do not each wait for it.
    failed_at: Mutex<Option<Instant>>,
}

/// The map and the connections of one client.
pub(crate) struct Router {
    config: Arc<ClientConfig>,
    quic: quinn::ClientConfig,
    /// The home node's key in `nodes` (its address).
    home: String,
    state: Mutex<State>,
}

struct State {
    routes: Routes,
    /// Node address (`host:port` as advertised, or home's socket address) → its slot.
    nodes: HashMap<String, Arc<NodeSlot>>,
}

impl Router {
    /// Starts the connection task of the home node on its first connection `first`; the
    /// router of a new client.
    pub(crate) fn start(
        config: Arc<ClientConfig>,
        quic: quinn::ClientConfig,
        endpoint: quinn::Endpoint,
        first: connection::Link,
    ) -> Arc<Router> {
        let home = config.server.to_string();
        let slot = Arc::new(NodeSlot::default());
        let (commands, receiver) = mpsc::channel(config.queued_requests_max.max(1));
        let _ = slot.commands.set(commands);
        let up = Arc::clone(&slot.up);
        let router = Arc::new(Router {
            config: Arc::clone(&config),
            quic: quic.clone(),
            home: home.clone(),
            state: Mutex::new(State {
                routes: Routes::default(),
                nodes: HashMap::from([(home.clone(), slot)]),
            }),
        });
        let driver = Driver::new(config, quic, endpoint, receiver);
        let driver = driver.routed(Arc::downgrade(&router), &home, up);
        tokio::spawn(driver.run(first));
        router
    }

    /// The home node's connection task.
    pub(crate) fn home(&self) -> Option<mpsc::Sender<Command>> {
        self.slot(&self.home)?.commands.get().cloned()
    }

    fn slot(&self, address: &str) -> Option<Arc<NodeSlot>> {
        lock(&self.state).nodes.get(address).cloned()
    }

    /// Where a bid on `auction` goes now: its partition's owner if known and connected,
    /// else home if connected, else any connected node, else home.
    pub(crate) fn sender_for(&self, auction: u64) -> Option<mpsc::Sender<Command>> {
        let state = lock(&self.state);
        let connected = |address: &str| {
            let slot = state.nodes.get(address)?;
            // Ordering: a hint for routing; a stale value costs one more hop.
            slot.up
                .load(Ordering::Relaxed)
                .then(|| slot.commands.get().cloned())?
        };
        let owner = state.routes.owner_of(auction).and_then(connected);
        owner
            .or_else(|| connected(&self.home))
            .or_else(|| state.nodes.keys().find_map(|a| connected(a)))
            .or_else(|| state.nodes.get(&self.home)?.commands.get().cloned())
    }

    /// Learns a node's routing answer; the owner's QUIC address if it can be routed to.
    pub(crate) fn learn(&self, owner: &pb::PartitionOwner) -> Option<String> {
        lock(&self.state).routes.learn(owner)
    }

    /// The connection to the node at `address` was lost: forget the partitions it owned;
    /// whether another node is known to send its bids to.
    pub(crate) fn node_lost(&self, address: &str) -> bool {
        let mut state = lock(&self.state);
        state.routes.forget_node(address);
        state.nodes.len() > 1
    }

    /// Every connection task whose connection is up (to close them; one that is down holds
    /// nothing — its bids were handed off — and ends once the client is gone).
    pub(crate) fn connected(&self) -> Vec<mpsc::Sender<Command>> {
        let state = lock(&self.state);
        // Ordering: a hint, as in `sender_for`.
        let up = state
            .nodes
            .values()
            .filter(|s| s.up.load(Ordering::Relaxed));
        up.filter_map(|s| s.commands.get().cloned()).collect()
    }

    /// Resends `bid` after `delay`, routed anew (see the module docs).
    pub(crate) fn hand_off(self: &Arc<Self>, bid: BidRequest, delay: Duration) {
        tokio::spawn(reroute(Arc::downgrade(self), bid, delay));
    }

    /// The connection task of the node at `address` (`host:port`), connecting to it first if
    /// there is none; fails fast while a recent attempt failed.
    async fn connect_to(self: &Arc<Self>, address: &str) -> Result<Arc<NodeSlot>, ConnectError> {
        let slot = {
            let mut state = lock(&self.state);
            if !state.nodes.contains_key(address) && state.nodes.len() >= NODES_MAX {
                return Err(ConnectError::Connection(format!(
                    "redirected to {address}, beyond the {NODES_MAX} nodes a client connects to"
                )));
            }
            Arc::clone(state.nodes.entry(address.to_owned()).or_default())
        };
        let recently_failed =
            lock(&slot.failed_at).is_some_and(|at| at.elapsed() < self.config.connect_timeout);
        if recently_failed && slot.commands.get().is_none() {
            return Err(ConnectError::Connection(format!(
                "{address} was unreachable just now"
            )));
        }
        let started = slot
            .commands
            .get_or_try_init(|| self.start_driver(address, &slot))
            .await;
        if started.is_err() {
            *lock(&slot.failed_at) = Some(Instant::now());
        }
        started.map(|_| Arc::clone(&slot))
    }

    /// Connects to the node at `address` and starts its connection task.
    async fn start_driver(
        self: &Arc<Self>,
        address: &str,
        slot: &NodeSlot,
    ) -> Result<mpsc::Sender<Command>, ConnectError> {
        let server = resolve(address).await?;
        // An advertised IP address is checked against the name the home node's certificate
        // was; a host name against itself.
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let server_name = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(_) => self.config.server_name.clone(),
            Err(_) => host.to_owned(),
        };
        let config = Arc::new(ClientConfig {
            server,
            server_name,
            ..(*self.config).clone()
        });
        let endpoint = crate::client_endpoint(server)?;
        let first = connection::connect(&endpoint, &config, &self.quic).await?;
        let (commands, receiver) = mpsc::channel(config.queued_requests_max.max(1));
        let driver = Driver::new(config, self.quic.clone(), endpoint, receiver);
        let driver = driver.routed(Arc::downgrade(self), address, Arc::clone(&slot.up));
        tokio::spawn(driver.run(first));
        tracing::info!(node = address, "connected to another node");
        Ok(commands)
    }
}

/// The first socket address of `address` (`host:port`).
async fn resolve(address: &str) -> Result<SocketAddr, ConnectError> {
    let mut found = tokio::net::lookup_host(address)
        .await
        .map_err(|e| ConnectError::Connection(format!("resolving {address}: {e}")))?;
    found
        .next()
        .ok_or_else(|| ConnectError::Connection(format!("{address} resolves to nothing")))
}

/// The resending task of one bid handed off (see the module docs).
async fn reroute(router: Weak<Router>, mut bid: BidRequest, delay: Duration) {
    tokio::time::sleep(delay).await;
    loop {
        if bid.abandoned() {
            return;
        }
        let Some(router) = router.upgrade() else {
            return bid.fail(BidError::Connection("the client was closed".into()));
        };
        let auction = bid.bid.auction_id;
        let owner = lock(&router.state)
            .routes
            .owner_of(auction)
            .map(str::to_owned);
        let sender = match owner {
            None => router.sender_for(auction),
            Some(address) => match router.connect_to(&address).await {
                // Ordering: a hint for routing, as in `sender_for`.
                Ok(slot) if slot.up.load(Ordering::Relaxed) => slot.commands.get().cloned(),
                Ok(_) | Err(_) => {
                    // Unreachable now: route as if unknown after a backoff; the node asked
                    // next names the owner it knows then.
                    router.node_lost(&address);
                    bid.hops += 1;
                    let delay = hop_delay(bid.hops, None, &router.config);
                    // Not held while waiting: the client may go meanwhile.
                    drop(router);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
        };
        let Some(sender) = sender else {
            return bid.fail(BidError::Connection("the client was closed".into()));
        };
        match sender.send(Command::Bid(bid)).await {
            Ok(()) => return,
            // The task ended (the client is closing): try again, routed anew.
            Err(mpsc::error::SendError(command)) => match command {
                Command::Bid(returned) => bid = returned,
                _ => return,
            },
        }
    }
}

/// The wait before a handed-off bid's next attempt after `hops` hops: none for its first
/// redirect, then a jittered backoff growing with each (the reconnect backoff's settings),
/// at least the node's `retry_after`.
pub(crate) fn hop_delay(
    hops: u32,
    retry_after: Option<Duration>,
    config: &ClientConfig,
) -> Duration {
    let backoff = match hops {
        0 | 1 => Duration::ZERO,
        hops => full_jitter(
            hops - 2,
            config.reconnect_backoff_base,
            config.reconnect_backoff_max,
            &mut rand::rng(),
        ),
    };
    backoff.max(retry_after.unwrap_or(Duration::ZERO))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of a routing hint.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
