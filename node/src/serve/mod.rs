//! `gavel serve`: the network node. One process that recovers the durable engine from its
//! data directory and serves bidders (QUIC, WebSocket), operators (admin API) and SREs
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! Start-up order: configuration (flags, env, TOML — [`config`]), TLS material (generated
//! with `--dev`), the metrics recorder, the HTTPS listener (so `/healthz` answers and
//! `/readyz` says "not ready" during recovery), recovery of the node on a blocking thread,
//! then the gateway turns ready and the QUIC listener opens. The closer ([`closer`]) settles
//! auctions at their ends.
//!
//! A stop during recovery (SIGINT/SIGTERM, or the token) interrupts it
//! ([`Node::open_interruptible`]): the listeners close, recovery gives up within a poll
//! without writing anything, and [`start`] returns [`StoppedDuringRecovery`] — `gavel serve`
//! exits 0, as after any requested stop.
//!
//! Shutdown (SIGINT/SIGTERM, or the token given to [`start`]): the gateway's token is
//! cancelled, listeners stop accepting, connections drain their in-flight replies, the closer
//! stops, and the node writes a final snapshot and flushes the log — all under the
//! configured deadline; past it, the process exits with an error and recovery handles the
//! rest on the next start.

pub mod config;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use gavel_transport::Gateway;
use gavel_transport::http::{self, HttpOptions, MetricsRenderer};
use gavel_transport::quic;
use gavel_transport::tls::{self, ServerTls, TlsPaths};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ServeConfig, ServeOptions, TlsSource};

use crate::backend::NodeBackend;
use crate::closer;
use crate::follow;
use crate::node::{Node, RecoveryReport};
use crate::takeover;
use gavel_wal::{Interrupt, Log, kafka};

/// How often the log and engine gauges are refreshed.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// The process-wide Prometheus recorder, installed on first use (tests start several
/// servers in one process; the recorder is global).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS_SECONDS)
                .expect("the bucket list is non-empty (a constant)")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            gavel_transport::metrics::describe();
            describe_node_metrics();
            gavel_transport::metrics::set_build(gavel_transport::metrics::Build {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::COMMIT,
            });
            gavel_transport::metrics::build_info();
            gavel_transport::metrics::start_rare_counters_at_zero();
            handle
        })
        .clone()
}

/// Histogram buckets for latencies, seconds: 1 µs to 10 s.
const LATENCY_BUCKETS_SECONDS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn describe_node_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        "gavel_ready",
        "1 once recovery finished and the node serves, else 0."
    );
    describe_gauge!(
        "gavel_auctions",
        "Auctions held in memory (open and settled)."
    );
    describe_gauge!(
        "gavel_auctions_pruned",
        "Final results held of auctions pruned by the retention rule."
    );
    describe_counter!(
        crate::closer::METRIC_PRUNED,
        "Settled auctions pruned to their final result by this process."
    );
    describe_counter!(
        crate::closer::METRIC_FORGOTTEN,
        "Pruned auctions whose final result this process forgot."
    );
    describe_gauge!(
        "gavel_wal_durable_lsn",
        "The write-ahead log's durable LSN."
    );
    describe_gauge!(
        "gavel_wal_appended_lsn",
        "The last LSN handed to the log writer."
    );
    describe_gauge!(
        "gavel_wal_queue_records",
        "Records waiting for the log writer."
    );
    describe_gauge!(
        "gavel_wal_queue_bytes",
        Unit::Bytes,
        "Payload bytes waiting for the log writer."
    );
    describe_counter!(
        "gavel_wal_records_written_total",
        "Records written and synced."
    );
    describe_counter!(
        "gavel_wal_bytes_written_total",
        Unit::Bytes,
        "Encoded bytes written and synced."
    );
    describe_counter!(
        "gavel_wal_syncs_total",
        "Log batches written, one fdatasync each."
    );
    describe_counter!(
        "gavel_wal_backpressure_total",
        "Appends refused because the log's queue was full."
    );
    describe_gauge!(
        "gavel_wal_last_batch_records",
        "Records in the log's latest batch (one write + fdatasync)."
    );
    describe_gauge!(
        "gavel_wal_last_sync_seconds",
        Unit::Seconds,
        "Duration of the log's latest fdatasync."
    );
    describe_counter!(
        kafka::METRIC_DELIVERIES,
        "Kafka log delivery reports, by status (persisted, not_persisted, possibly_persisted, error)."
    );
    metrics::describe_histogram!(
        kafka::METRIC_DELIVERY_SECONDS,
        Unit::Seconds,
        "Kafka log produce to PERSISTED delivery report, seconds."
    );
    describe_gauge!(
        kafka::METRIC_IN_FLIGHT_RECORDS,
        "Kafka log records produced and not yet reported."
    );
    describe_gauge!(
        kafka::METRIC_IN_FLIGHT_BYTES,
        Unit::Bytes,
        "Kafka log payload bytes produced and not yet reported."
    );
    describe_counter!(
        kafka::METRIC_FENCED,
        "Times the Kafka log stopped because a partition's writer lease may have lapsed."
    );
    describe_gauge!(
        takeover::METRIC_PARTITIONS_OWNED,
        "Partitions of the Kafka log this node writes."
    );
    describe_counter!(
        takeover::METRIC_TAKEOVERS,
        "Partitions of the Kafka log taken over from a node whose lease lapsed."
    );
    metrics::describe_histogram!(
        takeover::METRIC_TAKEOVER_SECONDS,
        Unit::Seconds,
        "Kafka partition takeover, lapsed lease seen to partition activated, seconds."
    );
    describe_counter!(
        kafka::group::METRIC_REBALANCES,
        "Kafka ownership group rebalances this node took part in (assignments received)."
    );
    metrics::describe_histogram!(
        kafka::group::METRIC_REBALANCE_SECONDS,
        Unit::Seconds,
        "Kafka ownership group rebalance, revocation callback to assignment handled, seconds."
    );
    describe_counter!(
        crate::node::METRIC_REVOCATIONS,
        "Kafka partitions this node gave up because the ownership group moved them."
    );
    describe_gauge!(
        follow::METRIC_LAG_RECORDS,
        "Per followed Kafka partition: records behind its high watermark."
    );
    describe_gauge!(
        follow::METRIC_LAG_SECONDS,
        Unit::Seconds,
        "Per followed Kafka partition: seconds behind the owner (0 when caught up)."
    );
    describe_counter!(
        follow::METRIC_ERRORS,
        "Per followed Kafka partition: records its view could not apply (its follower stopped)."
    );
}

/// Reads the configuration and runs the node until SIGINT/SIGTERM.
pub fn run(options: ServeOptions) -> Result<()> {
    config::warn_about_unknown_env_vars();
    let config = options.load()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("gavel-io");
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = builder.build().context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // Registered before the listening line: a script may signal the moment it reads it,
        // and a signal without a handler would end the process at once (no drain, no flush).
        // Acted on from the start: a stop during recovery interrupts it.
        let stop_signal = stop_signal()?;
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            let name = stop_signal.await;
            tracing::info!("{name}: shutting down");
            cancel.cancel();
        });
        let server = match start(config, shutdown).await {
            Err(error) if error.is::<StoppedDuringRecovery>() => return Ok(()),
            started => started?,
        };
        // One line on stdout for scripts and tests (ports may be chosen by the OS).
        println!("{}", server.listening_line());
        server.wait().await
    });
    // Dropping the runtime would wait for a recovery thread still in a step that cannot be
    // interrupted (past the deadline); the exit ends it as a crash would.
    runtime.shutdown_background();
    result
}

/// [`start`] returned without a server: the stop (the shutdown token) came during recovery,
/// which was interrupted; everything started was stopped and nothing was written.
#[derive(Debug)]
pub struct StoppedDuringRecovery;

impl std::fmt::Display for StoppedDuringRecovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped during recovery")
    }
}

impl std::error::Error for StoppedDuringRecovery {}

/// Registers the handlers of SIGINT and SIGTERM now; the future resolves with the name of
/// the first that arrives.
#[cfg(unix)]
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// Ctrl-C where there are no Unix signals.
#[cfg(not(unix))]
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

/// A started node: its bound addresses and what [`Server::wait`] drains.
#[derive(Debug)]
pub struct Server {
    /// The gateway all connections share.
    pub gateway: Arc<Gateway<NodeBackend>>,
    /// The TLS material in use (reloaded from disk on change).
    pub tls: ServerTls,
    /// The QUIC address bound (port 0 in the config picks a free one).
    pub quic_addr: Option<SocketAddr>,
    /// The HTTPS address bound.
    pub https_addr: Option<SocketAddr>,
    /// The plain-HTTP metrics address bound, if configured.
    pub metrics_addr: Option<SocketAddr>,
    node: Arc<Node>,
    deadline: Duration,
    tasks: Vec<JoinHandle<()>>,
    closer: Option<std::thread::JoinHandle<()>>,
    /// The stream side's runtime; shut down when the server goes.
    _streams: StreamRuntime,
}

/// The stream side's runtime, shut down without blocking when dropped (dropping a runtime
/// blocks, which the async code that owns it may not do).
#[derive(Debug)]
struct StreamRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for StreamRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only on drop")
    }
}

impl Drop for StreamRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Recovers the node and starts serving; returns once ready. Cancel `shutdown` to stop,
/// then await [`Server::wait`].
pub async fn start(config: ServeConfig, shutdown: CancellationToken) -> Result<Server> {
    let prometheus = prometheus();
    metrics::gauge!("gavel_ready").set(0.0);
    let gateway = Arc::new(Gateway::<NodeBackend>::new(
        config.limits.clone(),
        shutdown.clone(),
    ));
    let tls = load_tls(&config).await?;
    let mut tasks = vec![
        tls.spawn_reloader(config.tls_reload_poll, shutdown.clone()),
        tokio::spawn(metrics_upkeep(prometheus.clone(), shutdown.clone())),
    ];
    // Watchers (HTTPS: WebSocket, SSE, the page) and the fan-out run on their own runtime,
    // so thousands of stream sockets never queue ahead of QUIC bids on the same threads.
    let streams = stream_runtime(config.worker_threads)?;
    let https_addr = open_https(&config, &streams, &tls, &gateway, &prometheus, &mut tasks)?;
    let metrics_addr = match config.metrics_listen {
        Some(addr) => Some(open_metrics(addr, &gateway, prometheus, &mut tasks).await?),
        None => None,
    };
    // Bound now, served once ready: its address goes into the lease claims of recovery.
    let quic_socket = std::net::UdpSocket::bind(config.quic_listen)
        .with_context(|| format!("binding the QUIC port {}", config.quic_listen))?;
    let advertise = advertisement(&config, quic_socket.local_addr()?, https_addr);
    tracing::info!(https = %https_addr, metrics = ?metrics_addr, %advertise, "listening; recovering the data directory");
    let Some(node) = recover(&config, &advertise, &shutdown).await? else {
        drain(tasks, config.shutdown_deadline).await?;
        tracing::info!("stopped during recovery; the next start recovers from the start");
        return Err(StoppedDuringRecovery.into());
    };
    let backend = Arc::new(NodeBackend(Arc::clone(&node)));
    // The other nodes' partitions' changes reach this node's watchers too.
    node.follow_into(Arc::clone(gateway.hub()));
    gateway.set_ready(Arc::clone(&backend));
    metrics::gauge!("gavel_ready").set(1.0);
    // QUIC opens once ready: a bidder that connects can bid at once.
    let quic_addr = open_quic(&config, quic_socket, &tls, &gateway, &mut tasks)?;
    tracing::info!(quic = %quic_addr, https = %https_addr, "ready");
    tasks.push(tokio::spawn(refresh_gauges(
        Arc::clone(&node),
        shutdown.clone(),
    )));
    tasks.push(streams.spawn(gavel_transport::fanout::run_workers(Arc::clone(&gateway))));
    let closer = closer::spawn(
        backend,
        Arc::clone(gateway.hub()),
        config.close_tick,
        shutdown.clone(),
        tokio::runtime::Handle::current(),
    )?;
    Ok(Server {
        gateway,
        tls,
        quic_addr: Some(quic_addr),
        https_addr: Some(https_addr),
        metrics_addr,
        node,
        deadline: config.shutdown_deadline,
        tasks,
        closer: Some(closer),
        _streams: streams,
    })
}

/// Opens the HTTPS port on the stream runtime. It opens before recovery: `/healthz` answers
/// and `/readyz` says "recovering" (and the admin API 503) until the node is ready.
fn open_https(
    config: &ServeConfig,
    streams: &StreamRuntime,
    tls: &ServerTls,
    gateway: &Arc<Gateway<NodeBackend>>,
    prometheus: &PrometheusHandle,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(config.https_listen)
        .with_context(|| format!("binding the HTTPS port {}", config.https_listen))?;
    listener.set_nonblocking(true)?;
    let https_addr = listener.local_addr()?;
    let listener = {
        // Registered with the stream runtime's reactor, as every socket it accepts.
        let _entered = streams.enter();
        TcpListener::from_std(listener)?
    };
    let options = HttpOptions::new(MetricsRenderer::prometheus(prometheus.clone()))
        .with_allowed_origins(config.allowed_origins.clone());
    tasks.push(streams.spawn(http::serve_https(
        listener,
        tls.clone(),
        Arc::clone(gateway),
        options,
    )));
    Ok(https_addr)
}

/// Opens the plain-HTTP metrics port on `addr`.
async fn open_metrics(
    addr: SocketAddr,
    gateway: &Arc<Gateway<NodeBackend>>,
    prometheus: PrometheusHandle,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics port {addr}"))?;
    let bound = listener.local_addr()?;
    tasks.push(tokio::spawn(http::serve_metrics(
        listener,
        Arc::clone(gateway),
        MetricsRenderer::prometheus(prometheus),
    )));
    Ok(bound)
}

/// This node's advertisement in its lease claims ([`crate::routing`]): `--advertise-*`, else
/// the bound address unless it is unspecified (0.0.0.0 or ::, no use to another machine).
fn advertisement(config: &ServeConfig, quic: SocketAddr, https: SocketAddr) -> String {
    let address = |given: &Option<String>, bound: SocketAddr| match given {
        Some(given) => given.clone(),
        None if bound.ip().is_unspecified() => String::new(),
        None => bound.to_string(),
    };
    crate::routing::advertisement(
        &address(&config.advertise_quic, quic),
        &address(&config.advertise_https, https),
    )
}

/// Opens the QUIC listener for bidders on the socket bound before recovery.
fn open_quic(
    config: &ServeConfig,
    socket: std::net::UdpSocket,
    tls: &ServerTls,
    gateway: &Arc<Gateway<NodeBackend>>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr> {
    let endpoint = quic::bind_socket(socket, tls.quic_config(), gateway.limits())
        .context("opening the QUIC listener")?;
    let quic_addr = endpoint
        .local_addr()
        .context("the QUIC listener's address")?;
    // Half the deadline for draining connections leaves the rest for the final snapshot
    // and the log flush.
    tasks.push(tokio::spawn(quic::serve_quic(
        endpoint,
        Arc::clone(gateway),
        Some(tls.clone()),
        config.shutdown_deadline / 2,
    )));
    Ok(quic_addr)
}

/// Recovers the node on a blocking thread, its Kafka lease claims carrying `advertise`;
/// `None` if the stop came first (then the recovery was interrupted: [`interrupt_recovery`]).
async fn recover(
    config: &ServeConfig,
    advertise: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<Node>>> {
    let interrupt = Interrupt::default();
    let mut recovery = {
        let (dir, mut node_config) = (config.data_dir.clone(), config.node.clone());
        if let Some(kafka) = &mut node_config.kafka {
            kafka.advertise = advertise.to_owned();
        }
        let interrupt = interrupt.clone();
        tokio::task::spawn_blocking(move || Node::open_interruptible(&dir, node_config, &interrupt))
    };
    let opened = tokio::select! {
        biased;
        joined = &mut recovery => joined,
        () = shutdown.cancelled() => {
            interrupt_recovery(recovery, &interrupt, config.shutdown_deadline).await?;
            return Ok(None);
        }
    };
    let (node, report) = opened
        .context("the recovery thread panicked")?
        .with_context(|| format!("recovering {}", config.data_dir.display()))?;
    tracing::info!(data_dir = %config.data_dir.display(), "{}", report.summary());
    Ok(Some(Arc::new(node)))
}

/// Interrupts a recovery because a stop came during it and waits (up to `deadline`) for
/// its thread: the waits and the replay see the interrupt within a poll and return without
/// writing anything, so the log closes and a Kafka writer lease is released. A recovery
/// that finished meanwhile is shut down without a final snapshot. Past the deadline (a step
/// that cannot be interrupted, see [`Node::open_interruptible`]) the thread is left behind
/// and the error says so: the process exits as a crash would, which the next start recovers.
async fn interrupt_recovery(
    recovery: JoinHandle<Result<(Node, RecoveryReport)>>,
    interrupt: &Interrupt,
    deadline: Duration,
) -> Result<()> {
    tracing::warn!("stop requested during recovery: interrupting it");
    interrupt.interrupt();
    let Ok(joined) = tokio::time::timeout(deadline, recovery).await else {
        anyhow::bail!("shutdown deadline of {deadline:?} passed while interrupting recovery");
    };
    match joined.context("the recovery thread panicked")? {
        Ok((node, _)) => {
            tokio::task::spawn_blocking(move || node.shutdown(false))
                .await
                .context("the flush thread panicked")??;
        }
        Err(error) => tracing::info!("recovery ended: {error:#}"),
    }
    Ok(())
}

/// Waits for `tasks` (which watch the shutdown token) to end, at most `deadline`.
async fn drain(tasks: Vec<JoinHandle<()>>, deadline: Duration) -> Result<()> {
    let until = tokio::time::Instant::now() + deadline;
    for task in tasks {
        if tokio::time::timeout_at(until, task).await.is_err() {
            anyhow::bail!("shutdown deadline of {deadline:?} passed while draining connections");
        }
    }
    Ok(())
}

/// The runtime of the stream side (HTTPS listener, WebSocket/SSE sockets, fan-out workers):
/// as many threads as the main runtime (`worker_threads`, 0 = one per core).
fn stream_runtime(worker_threads: usize) -> Result<StreamRuntime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("gavel-stream");
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    let runtime = builder.build().context("starting the stream runtime")?;
    Ok(StreamRuntime(Some(runtime)))
}

impl Server {
    /// `listening quic=<addr> https=<addr> metrics=<addr|off>`, the line `gavel serve`
    /// prints on stdout once ready.
    pub fn listening_line(&self) -> String {
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        format!(
            "listening quic={} https={} metrics={}",
            show(self.quic_addr),
            show(self.https_addr),
            show(self.metrics_addr)
        )
    }

    /// The durable node behind the gateway.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Waits for the shutdown token, drains the listeners and flushes the log, all within
    /// the shutdown deadline.
    pub async fn wait(mut self) -> Result<()> {
        self.gateway.shutdown().cancelled().await;
        metrics::gauge!("gavel_ready").set(0.0);
        let started = tokio::time::Instant::now();
        let deadline = started + self.deadline;
        drain(std::mem::take(&mut self.tasks), self.deadline).await?;
        let node = Arc::clone(&self.node);
        node.wake_closer();
        let closer = self.closer.take();
        let flush = tokio::task::spawn_blocking(move || -> Result<u64> {
            if let Some(closer) = closer {
                let _ = closer.join();
            }
            node.shutdown(true)
        });
        match tokio::time::timeout_at(deadline, flush).await {
            Ok(joined) => {
                let lsn = joined.context("the flush thread panicked")??;
                tracing::info!(
                    durable_lsn = lsn,
                    took_ms = started.elapsed().as_millis() as u64,
                    "stopped"
                );
                Ok(())
            }
            Err(_) => anyhow::bail!(
                "shutdown deadline of {:?} passed while flushing the log",
                self.deadline
            ),
        }
    }
}

/// Loads the TLS material, generating development certificates first with `--dev`.
async fn load_tls(config: &ServeConfig) -> Result<ServerTls> {
    let source = config.tls.clone();
    let anonymous_watchers = config.anonymous_watchers;
    tokio::task::spawn_blocking(move || -> Result<ServerTls> {
        let paths = match source {
            TlsSource::Dev(dir) => {
                let certs = tls::dev::ensure(&dir).with_context(|| {
                    format!("preparing development certificates in {}", dir.display())
                })?;
                tracing::info!(
                    dir = %dir.display(),
                    clients = certs.clients.len(),
                    "development certificates (CA ca.pem; client certificates \
                     clients/<role>-<id>.pem with their keys beside them); not for production"
                );
                for client in &certs.clients {
                    tracing::info!(
                        identity = %client.identity,
                        cert = %client.cert.display(),
                        key = %client.key.display(),
                        "development client certificate"
                    );
                }
                certs.tls_paths()
            }
            TlsSource::Files {
                cert,
                key,
                client_ca,
                crl,
            } => TlsPaths {
                cert,
                key,
                client_ca,
                crl,
            },
        };
        ServerTls::load(paths, anonymous_watchers).context("loading the TLS material")
    })
    .await
    .context("the TLS loading thread panicked")?
}

/// How often the Prometheus recorder's histograms are maintained.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Runs the recorder's periodic upkeep (histogram buckets) until shutdown.
async fn metrics_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => handle.run_upkeep(),
        }
    }
}

/// Refreshes the log and engine gauges until shutdown.
async fn refresh_gauges(node: Arc<Node>, shutdown: CancellationToken) {
    if let Log::Kafka(_) = node.wal() {
        // Failed delivery reports start at 0, so the first one is an increase the alert sees.
        for status in ["not_persisted", "possibly_persisted", "error"] {
            metrics::counter!(kafka::METRIC_DELIVERIES, "status" => status).increment(0);
        }
        metrics::counter!(kafka::METRIC_FENCED).increment(0);
        metrics::counter!(takeover::METRIC_TAKEOVERS).increment(0);
        metrics::counter!(crate::node::METRIC_REVOCATIONS).increment(0);
    }
    // Present from the start, so a scrape before the first prune sees 0.
    metrics::counter!(crate::closer::METRIC_PRUNED).increment(0);
    metrics::counter!(crate::closer::METRIC_FORGOTTEN).increment(0);
    let mut interval = tokio::time::interval(GAUGE_REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let wal = node.wal().metrics();
        let [scheduled, open, settled] = node
            .engine()
            .phase_counts(gavel_transport::clock::now_micros());
        metrics::gauge!("gavel_auctions", "state" => "scheduled").set(scheduled as f64);
        metrics::gauge!("gavel_auctions", "state" => "open").set(open as f64);
        metrics::gauge!("gavel_auctions", "state" => "settled").set(settled as f64);
        metrics::gauge!("gavel_auctions_pruned").set(node.engine().pruned_len() as f64);
        metrics::gauge!("gavel_wal_last_batch_records").set(wal.last_batch_records as f64);
        metrics::gauge!("gavel_wal_durable_lsn").set(wal.durable_lsn as f64);
        metrics::gauge!("gavel_wal_appended_lsn").set(node.wal().last_appended_lsn() as f64);
        metrics::gauge!("gavel_wal_queue_records").set(wal.queue_records as f64);
        metrics::gauge!("gavel_wal_queue_bytes").set(wal.queue_bytes as f64);
        metrics::counter!("gavel_wal_records_written_total").absolute(wal.records_written_total);
        metrics::counter!("gavel_wal_bytes_written_total").absolute(wal.bytes_written_total);
        metrics::counter!("gavel_wal_syncs_total").absolute(wal.batches_synced_total);
        metrics::counter!("gavel_wal_backpressure_total").absolute(wal.backpressure_total);
        metrics::gauge!("gavel_wal_last_sync_seconds").set(wal.last_sync_latency_us as f64 / 1e6);
        if let Log::Kafka(_) = node.wal() {
            metrics::gauge!(kafka::METRIC_IN_FLIGHT_RECORDS).set(wal.queue_records as f64);
            metrics::gauge!(kafka::METRIC_IN_FLIGHT_BYTES).set(wal.queue_bytes as f64);
        }
    }
}
