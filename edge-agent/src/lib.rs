//! `gavel_edge_agent`: the edge agent (`gavel-edge`) as a library, so integration tests can
//! drive it. The agent lives on a device or a site gateway: it keeps the latest state of the
//! auctions it subscribed to and re-publishes them locally, and it takes bids from local
//! clients into a bounded queue on disk that it forwards to the node in order.
//!
//! Map of the crate:
//! - [`config`]: flags, `GAVEL_EDGE_*` environment, TOML; validated once;
//! - `metrics`: the `gavel_edge_*` metrics and the Prometheus recorder;
//! - `backoff`: full-jitter exponential reconnect delays (node and broker);
//! - `queue`: the bounded bid queue on disk (append, fdatasync, torn-tail truncation);
//! - `bids`: local clients' bid requests and statuses, the queue behind its lock;
//! - `link`: the node client (the `gavel-client` SDK with the device certificate);
//! - `forward`: the forwarder — queued bids to the node in order, idempotently;
//! - `state`: the latest state per auction (moves only forward), as JSON or an edge frame;
//! - `stream`: the edge stream from the node (subscribe, resume, decode, keyframe requests);
//! - `mqtt`: retained states, bid requests and statuses on the local MQTT broker;
//! - `http`: the local HTTP port (`/metrics`, `/healthz`, bids, states, SSE).
//!
//! Shutdown (SIGINT/SIGTERM, or the token given to [`run`]): the HTTP port stops accepting,
//! every task stops at its next await, and the process exits; nothing queued is lost, since
//! every queued bid was on disk before it was answered.

pub mod config;

mod backoff;
mod bids;
mod forward;
mod http;
mod link;
mod metrics;
mod mqtt;
mod queue;
mod state;
mod stream;
/// The tests' real broker (mosquitto), shared with the integration tests.
#[cfg(test)]
#[path = "../tests/common/broker.rs"]
mod test_broker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::AgentConfig;

/// What every task of a running agent shares.
struct Shared {
    config: AgentConfig,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    bids: Arc<bids::Bids>,
    link: Arc<link::NodeLink>,
    store: state::Store,
    /// Cancelled at shutdown (long-lived responses such as SSE end on it).
    shutdown: CancellationToken,
}

#[cfg(test)]
impl Shared {
    /// A shared state over a queue in `dir`, no node connection, defaults otherwise.
    fn for_tests(dir: &std::path::Path, change: impl FnOnce(&mut AgentConfig)) -> Arc<Shared> {
        let mut config = config::AgentOptions::default()
            .resolve()
            .expect("defaults resolve");
        config.data_dir = dir.to_owned();
        change(&mut config);
        let queue = queue::Queue::open(dir, config.queue_bids_max, config.queue_bytes_max)
            .expect("the queue opens");
        Arc::new(Shared {
            prometheus: metrics::prometheus(),
            bids: Arc::new(bids::Bids::new(queue)),
            link: Arc::new(link::NodeLink::new()),
            store: state::Store::new(config.auctions_max),
            shutdown: CancellationToken::new(),
            config,
        })
    }
}

/// A started agent: its bound local address and what [`Agent::wait`] drains.
pub struct Agent {
    /// The local HTTP address bound (port 0 in the config picks a free one).
    pub http_addr: SocketAddr,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    deadline: std::time::Duration,
}

impl Agent {
    /// Waits until `shutdown` is cancelled and every task stopped (at most the shutdown
    /// deadline after the cancel).
    pub async fn wait(self) -> Result<()> {
        self.shutdown.cancelled().await;
        self.tasks.close();
        tokio::time::timeout(self.deadline, self.tasks.wait())
            .await
            .context("the agent's tasks did not stop within the shutdown deadline")
    }
}

/// Starts the agent's tasks; they run until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<Agent> {
    let listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding the local HTTP port {}", config.http_listen))?;
    let http_addr = listener.local_addr()?;
    let deadline = config.shutdown_deadline;
    let prometheus = metrics::prometheus();
    let auctions_max = config.auctions_max;
    let queue = queue::Queue::open(
        &config.data_dir,
        config.queue_bids_max,
        config.queue_bytes_max,
    )
    .context("opening the bid queue")?;
    let client_config = link::client_config(&config).context("reading the device certificate")?;
    let shared = Arc::new(Shared {
        config,
        prometheus,
        bids: Arc::new(bids::Bids::new(queue)),
        link: Arc::new(link::NodeLink::new()),
        store: state::Store::new(auctions_max),
        shutdown: shutdown.clone(),
    });
    let tasks = TaskTracker::new();
    tasks.spawn(http::serve(listener, Arc::clone(&shared), shutdown.clone()));
    tasks.spawn(link::connect(
        client_config,
        shared.config.clone(),
        Arc::clone(&shared.link),
        shutdown.clone(),
    ));
    tasks.spawn(forward::run(Arc::clone(&shared), shutdown.clone()));
    tasks.spawn(stream::run(Arc::clone(&shared), shutdown.clone()));
    if let Some(mqtt) = shared.config.mqtt.clone() {
        tasks.spawn(mqtt::run(Arc::clone(&shared), mqtt, shutdown.clone()));
    }
    tracing::info!(http = %http_addr, node = %shared.config.node,
        queued = shared.bids.lock().len(), "gavel-edge listening");
    Ok(Agent {
        http_addr,
        tasks,
        shutdown,
        deadline,
    })
}

/// Runs the agent until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run_until_signal(config: AgentConfig) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered before the listening line: a script may signal as soon as it reads it.
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let shutdown = CancellationToken::new();
    let agent = run(config, shutdown.clone()).await?;
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "shutting down; the bid queue stays on disk");
    shutdown.cancel();
    agent.wait().await?;
    tracing::info!("stopped");
    Ok(())
}
