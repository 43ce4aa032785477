//! `gavel serve`'s configuration: one struct read from flags, `GAVEL_*` environment
//! variables and an optional TOML file, validated once at start.
//!
//! Precedence: a flag beats its environment variable (clap reads both into the same field),
//! which beats the TOML file, which beats the default. TOML keys are the long flag names with
//! `_` for `-` (`frame_bytes_max = 65536`). Unknown keys in the file stop the start with an
//! error naming them (the user wrote that file); unknown `GAVEL_*` variables are only warned
//! about, each with the closest known one (the environment is shared with other programs
//! and scripts, which may use the prefix for themselves). `--help` shows each default that is
//! a value of the code from the code ([`code_defaults`]), so it cannot drift.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{Arg, Args, Command};
use gavel_engine::EngineConfig;
use gavel_transport::Limits;
use gavel_wal::WalConfig;
use gavel_wal::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

use crate::node::NodeConfig;

mod resolve;
mod tools;

use resolve::advertised;

pub use tools::{
    LOG_FORMAT_ENV, UnknownEnvVar, check_file, known_env_vars, print_effective, unknown_env_vars,
    warn_about_unknown_env_vars,
};

/// Every option of `gavel serve`. All are optional here; [`ServeOptions::resolve`] fills
/// in the defaults and checks the result.
#[derive(Args, Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// A TOML file with any of the options below (keys as the flag names, `_` for `-`).
    #[arg(long, env = "GAVEL_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Directory of the write-ahead log, snapshots and (with --dev) certificates.
    #[arg(long, env = "GAVEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Development mode: without --tls-* paths, generate a development CA and certificates
    /// into <data-dir>/certs on first run and use them (ca.pem; client certificates
    /// clients/<role>-<id>.pem with keys clients/<role>-<id>.key, each listed in the log at
    /// start); allows anonymous watchers unless --anonymous-watchers=false.
    #[arg(long, env = "GAVEL_DEV", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dev: Option<bool>,

    /// QUIC listen address for bidders (ALPN gavel/1).
    #[arg(long, env = "GAVEL_QUIC_LISTEN", value_name = "ADDR")]
    pub quic_listen: Option<SocketAddr>,

    /// HTTPS listen address: admin API, WebSocket (/v1/ws), /metrics, /healthz, /readyz.
    #[arg(long, env = "GAVEL_HTTPS_LISTEN", value_name = "ADDR")]
    pub https_listen: Option<SocketAddr>,

    /// Also serve /metrics on this plain-HTTP address for scrapers. [default: off]
    #[arg(long, env = "GAVEL_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Where bidders and other nodes reach this node's QUIC port, host:port, published in
    /// its Kafka writer-lease claims so that other nodes name it when they redirect a bid
    /// (MISDIRECTED). [default: the bound QUIC address, unless it is 0.0.0.0 or ::]
    #[arg(long, env = "GAVEL_ADVERTISE_QUIC", value_name = "HOST:PORT")]
    pub advertise_quic: Option<String>,

    /// Where clients reach this node's HTTPS port (WebSocket, admin API), host:port, published
    /// as --advertise-quic is. [default: the bound HTTPS address, unless it is 0.0.0.0 or ::]
    #[arg(long, env = "GAVEL_ADVERTISE_HTTPS", value_name = "HOST:PORT")]
    pub advertise_https: Option<String>,

    /// Server certificate chain (PEM). Required unless --dev.
    #[arg(long, env = "GAVEL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM). Required unless --dev.
    #[arg(long, env = "GAVEL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM) that client certificates must chain to. Required unless --dev.
    #[arg(long, env = "GAVEL_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Certificate revocation list (PEM) checked for client certificates; an expired list
    /// refuses every client. [default: none, or the development CRL with --dev]
    #[arg(long, env = "GAVEL_TLS_CRL", value_name = "FILE")]
    pub tls_crl: Option<PathBuf>,

    /// How often the TLS files are checked for changes (they also reload on SIGHUP), in
    /// milliseconds.
    #[arg(long, env = "GAVEL_TLS_RELOAD_POLL_MS", value_name = "MS")]
    pub tls_reload_poll_ms: Option<u64>,

    /// Allow watchers without a client certificate (they can never bid).
    /// [default: false; true with --dev]
    #[arg(long, env = "GAVEL_ANONYMOUS_WATCHERS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub anonymous_watchers: Option<bool>,

    /// Origins allowed to open WebSockets and SSE streams from a browser (comma-separated,
    /// e.g. https://example.com); requests without an Origin header are not browsers and are
    /// allowed, and so is the node's own origin (its page at /). [default:
    /// https://localhost:<https port> and https://127.0.0.1:<https port>]
    #[arg(
        long,
        env = "GAVEL_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allowed_origins: Option<Vec<String>>,

    /// Largest protobuf frame on a QUIC stream, in bytes.
    #[arg(long, env = "GAVEL_FRAME_BYTES_MAX", value_name = "BYTES")]
    pub frame_bytes_max: Option<usize>,

    /// Largest WebSocket message, in bytes; larger ones close with 1009.
    #[arg(long, env = "GAVEL_WS_MESSAGE_BYTES_MAX", value_name = "BYTES")]
    pub ws_message_bytes_max: Option<usize>,

    /// Largest admin API request body, in bytes.
    #[arg(long, env = "GAVEL_HTTP_BODY_BYTES_MAX", value_name = "BYTES")]
    pub http_body_bytes_max: Option<usize>,

    /// Open client connections over all transports.
    #[arg(long, env = "GAVEL_CONNECTIONS_MAX", value_name = "COUNT")]
    pub connections_max: Option<usize>,

    /// TLS handshakes in progress at once.
    #[arg(long, env = "GAVEL_HANDSHAKES_PENDING_MAX", value_name = "COUNT")]
    pub handshakes_pending_max: Option<usize>,

    /// Time a TLS handshake may take, in milliseconds.
    #[arg(long, env = "GAVEL_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,

    /// Bidirectional QUIC streams per connection.
    #[arg(long, env = "GAVEL_STREAMS_PER_CONNECTION_MAX", value_name = "COUNT")]
    pub streams_per_connection_max: Option<u32>,

    /// Subscriptions (topics plus patterns) per connection.
    #[arg(
        long,
        env = "GAVEL_SUBSCRIPTIONS_PER_CONNECTION_MAX",
        value_name = "COUNT"
    )]
    pub subscriptions_per_connection_max: Option<usize>,

    /// Bids of one connection waiting for their durable ack.
    #[arg(
        long,
        env = "GAVEL_PENDING_DURABLE_PER_CONNECTION_MAX",
        value_name = "COUNT"
    )]
    pub pending_durable_per_connection_max: Option<usize>,

    /// Stream updates one connection may have queued and not written, in bytes; twice this is a
    /// hard bound.
    #[arg(
        long,
        env = "GAVEL_OUTBOUND_BYTES_MAX_PER_CONNECTION",
        value_name = "BYTES"
    )]
    pub outbound_bytes_max_per_connection: Option<usize>,

    /// Close a stream connection over its outbound bound for this long, in milliseconds.
    #[arg(long, env = "GAVEL_SLOW_CONSUMER_TIMEOUT_MS", value_name = "MS")]
    pub slow_consumer_timeout_ms: Option<u64>,

    /// Bytes of stream updates a WebSocket, SSE or QUIC stream may have written but not yet
    /// sent (the kernel's unsent bytes, the HTTP/2 send buffer, one write's batch); newer
    /// updates wait, conflated, until the reader takes these.
    #[arg(long, env = "GAVEL_STREAM_UNSENT_BYTES_MAX", value_name = "BYTES")]
    pub stream_unsent_bytes_max: Option<usize>,

    /// Sustained bids per second per bidder, over all its connections.
    #[arg(
        long,
        env = "GAVEL_BIDS_PER_SECOND_PER_BIDDER",
        value_name = "PER_SECOND"
    )]
    pub bids_per_second_per_bidder: Option<u32>,

    /// Bids a bidder may send in a burst above its rate.
    #[arg(long, env = "GAVEL_BID_BURST_PER_BIDDER", value_name = "COUNT")]
    pub bid_burst_per_bidder: Option<u32>,

    /// Close a connection idle for this long, in milliseconds.
    #[arg(long, env = "GAVEL_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,

    /// Most auctions in one page of the admin list.
    #[arg(long, env = "GAVEL_LIST_LIMIT_MAX", value_name = "COUNT")]
    pub list_limit_max: Option<u32>,

    /// Engine registry shards, a power of two.
    #[arg(long, env = "GAVEL_ENGINE_SHARDS", value_name = "COUNT")]
    pub engine_shards: Option<usize>,

    /// Most auctions held in memory (open and settled).
    #[arg(long, env = "GAVEL_AUCTIONS_MAX", value_name = "COUNT")]
    pub auctions_max: Option<usize>,

    /// Accepted bids remembered per auction to recognise retries.
    #[arg(long, env = "GAVEL_DEDUP_WINDOW_BIDS", value_name = "COUNT")]
    pub dedup_window_bids: Option<usize>,

    /// Most distinct bidders in one sealed auction.
    #[arg(long, env = "GAVEL_SEALED_BIDDERS_MAX", value_name = "COUNT")]
    pub sealed_bidders_max: Option<usize>,

    /// How long a settled auction stays whole before it is pruned to its final result, in
    /// milliseconds; 0 keeps settled auctions forever.
    #[arg(long, env = "GAVEL_SETTLED_RETENTION_MS", value_name = "MS")]
    pub settled_retention_ms: Option<u64>,

    /// How long a pruned auction's final result is kept before it is forgotten too (the
    /// node then answers as for an unknown auction), in milliseconds; 0 keeps results
    /// forever.
    #[arg(long, env = "GAVEL_PRUNED_RETENTION_MS", value_name = "MS")]
    pub pruned_retention_ms: Option<u64>,

    /// Size at which a new log segment starts, in bytes.
    #[arg(long, env = "GAVEL_WAL_SEGMENT_BYTES_MAX", value_name = "BYTES")]
    pub wal_segment_bytes_max: Option<u64>,

    /// Records waiting for the log writer; beyond, bids get Overloaded.
    #[arg(long, env = "GAVEL_WAL_QUEUE_RECORDS_MAX", value_name = "COUNT")]
    pub wal_queue_records_max: Option<usize>,

    /// Payload bytes waiting for the log writer; beyond, bids get Overloaded.
    #[arg(long, env = "GAVEL_WAL_QUEUE_BYTES_MAX", value_name = "BYTES")]
    pub wal_queue_bytes_max: Option<usize>,

    /// Records per write + fdatasync at most.
    #[arg(long, env = "GAVEL_WAL_BATCH_RECORDS_MAX", value_name = "COUNT")]
    pub wal_batch_records_max: Option<usize>,

    /// Bytes per write + fdatasync at most.
    #[arg(long, env = "GAVEL_WAL_BATCH_BYTES_MAX", value_name = "BYTES")]
    pub wal_batch_bytes_max: Option<usize>,

    /// How long the log writer may wait to fill a batch once records are pending and its previous
    /// batch held more than one record (under load; a lone record is synced at once), in
    /// microseconds (0 = never wait).
    #[arg(long, env = "GAVEL_WAL_BATCH_WAIT_US_MAX", value_name = "US")]
    pub wal_batch_wait_us_max: Option<u64>,

    /// Where the write-ahead log lives: `file` (segments in <data-dir>/wal) or `kafka` (a
    /// topic; needs --kafka-brokers). [default: file]
    #[arg(long, env = "GAVEL_WAL", value_name = "file|kafka")]
    pub wal: Option<LogKind>,

    /// Kafka bootstrap brokers for --wal kafka, host:port[,host:port...].
    #[arg(long, env = "GAVEL_KAFKA_BROKERS", value_name = "HOST:PORT")]
    pub kafka_brokers: Option<String>,

    /// Kafka topic of the log.
    #[arg(long, env = "GAVEL_KAFKA_TOPIC", value_name = "TOPIC")]
    pub kafka_topic: Option<String>,

    /// Partitions of the Kafka topic when the node creates it (an existing topic keeps its own).
    #[arg(long, env = "GAVEL_KAFKA_PARTITIONS", value_name = "COUNT")]
    pub kafka_partitions: Option<i32>,

    /// How long the start waits for the Kafka brokers before giving up, in milliseconds (waiting
    /// for a crashed node's writer lease to lapse is bounded by that lease instead).
    #[arg(long, env = "GAVEL_KAFKA_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub kafka_connect_timeout_ms: Option<u64>,

    /// Records sent to Kafka and not yet reported persisted, at most; beyond, bids are refused
    /// Overloaded.
    #[arg(long, env = "GAVEL_KAFKA_QUEUE_RECORDS_MAX", value_name = "COUNT")]
    pub kafka_queue_records_max: Option<usize>,

    /// Payload bytes sent to Kafka and not yet reported persisted, at most.
    #[arg(long, env = "GAVEL_KAFKA_QUEUE_BYTES_MAX", value_name = "BYTES")]
    pub kafka_queue_bytes_max: Option<usize>,

    /// How long a record may wait for its Kafka delivery (a broker outage included) before it
    /// fails, and with it the log and the node, in milliseconds (librdkafka's message.timeout.ms).
    #[arg(long, env = "GAVEL_KAFKA_MESSAGE_TIMEOUT_MS", value_name = "MS")]
    pub kafka_message_timeout_ms: Option<u64>,

    /// How long the Kafka producer waits to fill a batch, in milliseconds (librdkafka's linger.ms).
    #[arg(long, env = "GAVEL_KAFKA_LINGER_MS", value_name = "MS")]
    pub kafka_linger_ms: Option<u64>,

    /// Each owned partition's writer lease, in milliseconds: one node writes a partition; a node
    /// that cannot renew a lease this long stops, and a successor of a crashed node waits until it lapses (at most
    /// this long plus 500 ms after the crashed node's last heartbeat).
    #[arg(long, env = "GAVEL_KAFKA_WRITER_LEASE_MS", value_name = "MS")]
    pub kafka_writer_lease_ms: Option<u64>,

    /// This node's name in the Kafka log's writer leases and GET /v1/cluster (host, process and
    /// a random part by default; give each node its own).
    #[arg(long, env = "GAVEL_KAFKA_OWNER", value_name = "NAME")]
    pub kafka_owner: Option<String>,

    /// The Kafka topic's partitions this node owns (static assignment, comma-separated, e.g.
    /// 0,1,2); each is written under its own writer lease. Unset: every partition (a node alone).
    #[arg(
        long,
        env = "GAVEL_KAFKA_OWNED_PARTITIONS",
        value_name = "P,P,...",
        value_delimiter = ','
    )]
    pub kafka_owned_partitions: Option<Vec<i32>>,

    /// Partitions of other nodes this node takes over while running once their owner's writer
    /// lease lapses (comma-separated); needs --kafka-owned-partitions, disjoint from them.
    #[arg(
        long,
        env = "GAVEL_KAFKA_STANDBY_PARTITIONS",
        value_name = "P,P,...",
        value_delimiter = ','
    )]
    pub kafka_standby_partitions: Option<Vec<i32>>,

    /// Own no partition of the Kafka topic: follow every partition for this node's watchers
    /// and write only the standby partitions taken over. [default: false]
    #[arg(long, env = "GAVEL_KAFKA_FOLLOW_ONLY", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub kafka_follow_only: Option<bool>,

    /// Who decides which partitions of the Kafka topic this node owns: `static` (the
    /// --kafka-owned/standby-partitions assignment) or `group` (Kafka group membership: the
    /// group's assignment, claimed through the writer leases; see docs/cluster.md).
    /// [default: static]
    #[arg(long, env = "GAVEL_KAFKA_OWNERSHIP", value_name = "MODE")]
    pub kafka_ownership: Option<Ownership>,

    /// With --kafka-ownership group: the consumer group of the topic's nodes.
    /// [default: <topic>.owners]
    #[arg(long, env = "GAVEL_KAFKA_GROUP_ID", value_name = "GROUP")]
    pub kafka_group_id: Option<String>,

    /// With --kafka-ownership group: this node's static member name (group.instance.id); a
    /// restart under it within the session timeout gets its partitions back without moving
    /// the others'. [default: --kafka-owner, which must then be set]
    #[arg(long, env = "GAVEL_KAFKA_GROUP_INSTANCE_ID", value_name = "NAME")]
    pub kafka_group_instance_id: Option<String>,

    /// With --kafka-ownership group: how long a silent member keeps its partitions, in
    /// milliseconds. [default: 10000]
    #[arg(long, env = "GAVEL_KAFKA_GROUP_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub kafka_group_session_timeout_ms: Option<u64>,

    /// Take a snapshot (and compact the log) every this many records; 0 = not by records.
    #[arg(long, env = "GAVEL_SNAPSHOT_EVERY_RECORDS", value_name = "COUNT")]
    pub snapshot_every_records: Option<u64>,

    /// Take a snapshot (and compact the log) every this many bytes of log, or every
    /// `snapshot_every_records` records, whichever comes first; 0 = not by bytes (both 0:
    /// never). Bounds what a restart replays.
    #[arg(long, env = "GAVEL_SNAPSHOT_EVERY_LOG_BYTES", value_name = "BYTES")]
    pub snapshot_every_log_bytes: Option<u64>,

    /// Longest the closer sleeps between looks for due auctions, in milliseconds (it wakes at
    /// the next auction's end, or when an earlier-ending auction is created; this bounds the
    /// effect of a wall-clock jump).
    #[arg(long, env = "GAVEL_CLOSE_TICK_MS", value_name = "MS")]
    pub close_tick_ms: Option<u64>,

    /// Longest graceful shutdown (stop accepting, drain, flush the log), in milliseconds.
    #[arg(long, env = "GAVEL_SHUTDOWN_DEADLINE_MS", value_name = "MS")]
    pub shutdown_deadline_ms: Option<u64>,

    /// Worker threads of each of the two async runtimes (QUIC bidders; HTTPS, WebSocket, SSE and
    /// fan-out); 0 = one per core.
    #[arg(long, env = "GAVEL_WORKER_THREADS", value_name = "COUNT")]
    pub worker_threads: Option<usize>,
}

/// The write-ahead log's backend.
#[derive(clap::ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// The embedded segmented file log in `<data-dir>/wal`.
    File,
    /// A Kafka topic (PRODUCT.md §4, §8).
    Kafka,
}

/// Who decides a Kafka node's partitions.
#[derive(clap::ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// The configured owned and standby partitions (all of them for a node alone).
    Static,
    /// Kafka group membership.
    Group,
}

/// Where the TLS material comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsSource {
    /// Development certificates in this directory, generated on first run.
    Dev(PathBuf),
    /// Operator-provided files.
    Files {
        /// Server certificate chain.
        cert: PathBuf,
        /// Server key.
        key: PathBuf,
        /// CA bundle for client certificates.
        client_ca: PathBuf,
        /// Revocation list, if any.
        crl: Option<PathBuf>,
    },
}

/// The resolved, validated configuration of `gavel serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// TLS material.
    pub tls: TlsSource,
    /// TLS files' change poll interval.
    pub tls_reload_poll: Duration,
    /// Whether watchers without a certificate are allowed.
    pub anonymous_watchers: bool,
    /// Browser origins allowed to open WebSockets.
    pub allowed_origins: Vec<String>,
    /// QUIC listen address.
    pub quic_listen: SocketAddr,
    /// HTTPS listen address.
    pub https_listen: SocketAddr,
    /// `--advertise-quic` (validated `host:port`); `None`: the bound QUIC address.
    pub advertise_quic: Option<String>,
    /// `--advertise-https`; `None`: the bound HTTPS address.
    pub advertise_https: Option<String>,
    /// Optional plain-HTTP metrics address.
    pub metrics_listen: Option<SocketAddr>,
    /// The edge's limits.
    pub limits: Limits,
    /// Engine, log and snapshot settings.
    pub node: NodeConfig,
    /// Longest sleep of the closer.
    pub close_tick: Duration,
    /// Graceful shutdown deadline.
    pub shutdown_deadline: Duration,
    /// Runtime worker threads (0 = one per core).
    pub worker_threads: usize,
}

/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./data";
/// Default QUIC listen address.
pub const QUIC_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7443));
/// Default HTTPS listen address.
pub const HTTPS_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8443));
/// Default poll interval of the TLS files, in milliseconds.
pub const TLS_RELOAD_POLL_MS_DEFAULT: u64 = 2_000;
/// Default longest sleep of the closer, in milliseconds.
pub const CLOSE_TICK_MS_DEFAULT: u64 = 1_000;
/// Default graceful shutdown deadline, in milliseconds.
pub const SHUTDOWN_DEADLINE_MS_DEFAULT: u64 = 10_000;
/// Default worker threads per runtime (0 = one per core).
pub const WORKER_THREADS_DEFAULT: usize = 0;

/// The default of every option whose default is a value of the code (the rest say theirs in
/// their help, e.g. "off"), by argument id, from the structs' `Default`s and the constants
/// above: `--help` shows these, so it cannot drift from what [`ServeOptions::resolve`] uses.
pub fn code_defaults() -> Vec<(&'static str, String)> {
    /// `(id, default)` of each field of `$config`: the id is `$prefix` + the field's name.
    macro_rules! defaults_of {
        ($prefix:literal, $config:expr; $($field:ident),* $(,)?) => {
            [$((concat!($prefix, stringify!($field)), $config.$field.to_string())),*]
        };
    }
    let limits = Limits::default();
    let engine = EngineConfig::default();
    let wal = WalConfig::default();
    let kafka = KafkaConfig::default();
    let mut defaults = vec![
        ("data_dir", DATA_DIR_DEFAULT.to_owned()),
        ("quic_listen", QUIC_LISTEN_DEFAULT.to_string()),
        ("https_listen", HTTPS_LISTEN_DEFAULT.to_string()),
        ("tls_reload_poll_ms", TLS_RELOAD_POLL_MS_DEFAULT.to_string()),
        ("close_tick_ms", CLOSE_TICK_MS_DEFAULT.to_string()),
        (
            "shutdown_deadline_ms",
            SHUTDOWN_DEADLINE_MS_DEFAULT.to_string(),
        ),
        ("worker_threads", WORKER_THREADS_DEFAULT.to_string()),
        ("engine_shards", engine.shards.to_string()),
        (
            "settled_retention_ms",
            (engine.settled_retention_us / 1_000).to_string(),
        ),
        (
            "pruned_retention_ms",
            (engine.pruned_retention_us / 1_000).to_string(),
        ),
        (
            "snapshot_every_records",
            NodeConfig::default().snapshot_every_records.to_string(),
        ),
        (
            "snapshot_every_log_bytes",
            NodeConfig::default().snapshot_every_log_bytes.to_string(),
        ),
    ];
    defaults.extend(defaults_of!("", limits;
        frame_bytes_max, ws_message_bytes_max, http_body_bytes_max, connections_max,
        handshakes_pending_max, handshake_timeout_ms, streams_per_connection_max,
        subscriptions_per_connection_max, pending_durable_per_connection_max,
        outbound_bytes_max_per_connection, slow_consumer_timeout_ms, stream_unsent_bytes_max,
        bids_per_second_per_bidder, bid_burst_per_bidder, idle_timeout_ms, list_limit_max));
    defaults.extend(defaults_of!("", engine; auctions_max, dedup_window_bids, sealed_bidders_max));
    defaults.extend(defaults_of!("wal_", wal;
        segment_bytes_max, queue_records_max, queue_bytes_max, batch_records_max,
        batch_bytes_max, batch_wait_us_max));
    defaults.extend(defaults_of!("kafka_", kafka;
        topic, partitions, connect_timeout_ms, queue_records_max, queue_bytes_max,
        message_timeout_ms, linger_ms, writer_lease_ms));
    defaults
}

/// Appends ` [default: <value>]` from [`code_defaults`] to an option's help; for
/// `Command::mut_args` on the `serve` command (`gavel`'s `main.rs`, and [`command`]).
pub fn with_code_default(arg: Arg) -> Arg {
    let id = arg.get_id().as_str();
    let Some((_, value)) = code_defaults().into_iter().find(|(name, _)| *name == id) else {
        return arg;
    };
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let arg = arg.help(format!("{help} [default: {value}]"));
    match arg.get_long_help().map(ToString::to_string) {
        Some(long) => arg.long_help(format!("{long} [default: {value}]")),
        None => arg,
    }
}

/// The `serve` command as `gavel` builds it: the options, their defaults from the code,
/// and [`SOURCES_HELP`].
pub fn command() -> Command {
    ServeOptions::augment_args(Command::new("serve"))
        .mut_args(with_code_default)
        .after_help(SOURCES_HELP)
}

/// The end of `gavel serve --help`: where options come from, and what is refused.
pub const SOURCES_HELP: &str = "\
Every option is also a GAVEL_* environment variable (shown as [env: ...]) and a key of the \
--config TOML file (the long flag's name with _ for -). A flag beats its variable, which \
beats the file, which beats the default.

Unknown keys in the --config file stop the start with an error naming them (you wrote that \
file). Unknown GAVEL_* environment variables do not: each is named in a warning in the log, \
with the closest known variable, and ignored (the environment is shared with other programs \
and scripts).";

/// The data directory's subdirectory for development certificates.
pub const DEV_CERTS_DIR: &str = "certs";

macro_rules! prefer {
    ($first:ident, $second:ident; $($field:ident),* $(,)?) => {
        ServeOptions {
            config: $first.config.or($second.config),
            $($field: $first.$field.or($second.$field),)*
        }
    };
}

impl ServeOptions {
    /// These options where set, else `fallback`'s.
    pub fn or(self, fallback: ServeOptions) -> ServeOptions {
        prefer!(self, fallback;
            data_dir, dev, quic_listen, https_listen, metrics_listen, advertise_quic,
            advertise_https, tls_cert, tls_key,
            tls_client_ca, tls_crl, tls_reload_poll_ms, anonymous_watchers, allowed_origins,
            frame_bytes_max, ws_message_bytes_max, http_body_bytes_max, connections_max,
            handshakes_pending_max, handshake_timeout_ms, streams_per_connection_max,
            subscriptions_per_connection_max, pending_durable_per_connection_max,
            outbound_bytes_max_per_connection, slow_consumer_timeout_ms, stream_unsent_bytes_max,
            bids_per_second_per_bidder, bid_burst_per_bidder, idle_timeout_ms, list_limit_max,
            engine_shards, auctions_max, dedup_window_bids, sealed_bidders_max,
            settled_retention_ms, pruned_retention_ms, wal_segment_bytes_max, wal_queue_records_max, wal_queue_bytes_max,
            wal_batch_records_max, wal_batch_bytes_max, wal_batch_wait_us_max,
            wal, kafka_brokers, kafka_topic, kafka_partitions, kafka_connect_timeout_ms,
            kafka_queue_records_max, kafka_queue_bytes_max, kafka_message_timeout_ms,
            kafka_linger_ms, kafka_writer_lease_ms, kafka_owner, kafka_owned_partitions,
            kafka_standby_partitions, kafka_follow_only, kafka_ownership, kafka_group_id,
            kafka_group_instance_id, kafka_group_session_timeout_ms,
            snapshot_every_records, snapshot_every_log_bytes, close_tick_ms, shutdown_deadline_ms,
            worker_threads)
    }

    /// Reads a TOML file of options; unknown keys are an error.
    pub fn from_toml_file(path: &Path) -> Result<ServeOptions> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    /// Flags and environment (already in `self`, by clap) over the TOML file named by
    /// `--config`, if any; then [`ServeOptions::resolve`].
    pub fn load(self) -> Result<ServeConfig> {
        let merged = match &self.config {
            Some(path) => {
                let file = ServeOptions::from_toml_file(path)?;
                self.or(file)
            }
            None => self,
        };
        merged.resolve()
    }

    /// Fills in defaults and validates.
    pub fn resolve(self) -> Result<ServeConfig> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let dev = self.dev.unwrap_or(false);
        let tls = self.tls_source(&data_dir, dev)?;
        let https_listen = self.https_listen.unwrap_or(HTTPS_LISTEN_DEFAULT);
        let allowed_origins = self.allowed_origins(https_listen)?;
        let limits = self.limits()?;
        let node = NodeConfig {
            engine: self.engine_config()?,
            kafka: self.kafka_config()?,
            wal: self.wal_config()?,
            snapshot_every_records: self
                .snapshot_every_records
                .unwrap_or(NodeConfig::default().snapshot_every_records),
            snapshot_every_log_bytes: self
                .snapshot_every_log_bytes
                .unwrap_or(NodeConfig::default().snapshot_every_log_bytes),
        };
        let close_tick_ms = self.close_tick_ms.unwrap_or(CLOSE_TICK_MS_DEFAULT);
        ensure!(
            (1..=60_000).contains(&close_tick_ms),
            "close_tick_ms must be between 1 and 60000"
        );
        let tls_reload_poll_ms = self
            .tls_reload_poll_ms
            .unwrap_or(TLS_RELOAD_POLL_MS_DEFAULT);
        ensure!(
            tls_reload_poll_ms >= 10,
            "tls_reload_poll_ms must be at least 10"
        );
        Ok(ServeConfig {
            data_dir,
            tls,
            tls_reload_poll: Duration::from_millis(tls_reload_poll_ms),
            anonymous_watchers: self.anonymous_watchers.unwrap_or(dev),
            allowed_origins,
            quic_listen: self.quic_listen.unwrap_or(QUIC_LISTEN_DEFAULT),
            https_listen,
            metrics_listen: self.metrics_listen,
            advertise_quic: advertised("advertise_quic", self.advertise_quic.as_deref())?,
            advertise_https: advertised("advertise_https", self.advertise_https.as_deref())?,
            limits,
            node,
            close_tick: Duration::from_millis(close_tick_ms),
            shutdown_deadline: Duration::from_millis(
                self.shutdown_deadline_ms
                    .unwrap_or(SHUTDOWN_DEADLINE_MS_DEFAULT),
            ),
            worker_threads: self.worker_threads.unwrap_or(WORKER_THREADS_DEFAULT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        options: ServeOptions,
    }

    fn parse(args: &[&str]) -> ServeOptions {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
            .options
    }

    #[test]
    fn dev_defaults_resolve() {
        let config = parse(&["--dev"]).resolve().unwrap();
        assert_eq!(config.tls, TlsSource::Dev(PathBuf::from("./data/certs")));
        assert!(config.anonymous_watchers);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.https_listen.port(), 8443);
        assert_eq!(
            config.allowed_origins,
            ["https://localhost:8443", "https://127.0.0.1:8443"]
        );
    }

    #[test]
    fn an_advertised_address_must_be_host_and_port() {
        let config = parse(&["--dev", "--advertise-quic", "node-1.example:7443"]);
        let config = config.resolve().unwrap();
        assert_eq!(
            config.advertise_quic.as_deref(),
            Some("node-1.example:7443")
        );
        assert_eq!(config.advertise_https, None);
        for bad in ["node-1", "node-1:0", ":7443", "a b:1", "a,b:1", "a:99999"] {
            let err = parse(&["--dev", "--advertise-https", bad])
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("advertise_https must be host:port"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn without_tls_material_the_start_is_refused() {
        let err = parse(&[]).resolve().unwrap_err().to_string();
        assert!(err.contains("--dev"), "{err}");
        let err = parse(&["--tls-cert", "a.pem"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gavel.toml");
        std::fs::write(
            &path,
            "dev = true\nframe_bytes_max = 4096\nidle_timeout_ms = 5000\nallowed_origins = [\"https://x.example\"]\n",
        )
        .unwrap();
        let config = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--idle-timeout-ms",
            "7000",
        ])
        .load()
        .unwrap();
        assert_eq!(config.limits.frame_bytes_max, 4096, "from the file");
        assert_eq!(config.limits.idle_timeout_ms, 7000, "the flag wins");
        assert_eq!(config.allowed_origins, ["https://x.example"]);
        assert_eq!(
            config.limits.connections_max,
            Limits::default().connections_max
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gavel.toml");
        std::fs::write(&path, "dev = true\nframe_byte_max = 4096\n").unwrap();
        let err = format!(
            "{:#}",
            parse(&["--config", path.to_str().unwrap()])
                .load()
                .unwrap_err()
        );
        assert!(err.contains("frame_byte_max"), "{err}");
    }

    #[test]
    fn unknown_env_vars_are_named_with_the_closest_known_one() {
        let names = [
            "GAVEL_IDLE_TIMEOUT_MS",
            "PATH",
            "GAVEL_LOG_FORMAT",
            "GAVEL_IDLE_TIMOUT_MS",
            "GAVEL_BIN",
        ];
        let unknown = unknown_env_vars(names.map(String::from));
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert_eq!(
            unknown[0],
            UnknownEnvVar {
                name: "GAVEL_IDLE_TIMOUT_MS".into(),
                closest: "GAVEL_IDLE_TIMEOUT_MS".into()
            }
        );
        assert_eq!(unknown[1].name, "GAVEL_BIN");
        assert!(known_env_vars().contains(&unknown[1].closest));
    }

    #[test]
    fn the_kafka_log_is_chosen_with_its_brokers() {
        let config = parse(&["--dev"]).resolve().unwrap();
        assert_eq!(config.node.kafka, None, "the file log is the default");
        let config = parse(&[
            "--dev",
            "--wal",
            "kafka",
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-partitions",
            "3",
        ])
        .resolve()
        .unwrap();
        let kafka = config.node.kafka.unwrap();
        assert_eq!(
            (
                kafka.brokers.as_str(),
                kafka.topic.as_str(),
                kafka.partitions
            ),
            ("127.0.0.1:9092", "gavel-wal", 3)
        );
        let err = format!(
            "{:#}",
            parse(&["--dev", "--wal", "kafka"]).resolve().unwrap_err()
        );
        assert!(err.contains("--kafka-brokers"), "{err}");
        let err = format!(
            "{:#}",
            parse(&["--dev", "--kafka-topic", "t"])
                .resolve()
                .unwrap_err()
        );
        assert!(err.contains("--wal kafka"), "{err}");
    }

    #[test]
    fn kafka_bounds_timeouts_and_lease_come_from_flags_or_toml_and_are_checked() {
        let config = parse(&[
            "--dev",
            "--wal",
            "kafka",
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-queue-records-max",
            "128",
            "--kafka-queue-bytes-max",
            "65536",
            "--kafka-message-timeout-ms",
            "5000",
            "--kafka-linger-ms",
            "0",
            "--kafka-writer-lease-ms",
            "2000",
        ])
        .resolve()
        .unwrap();
        let kafka = config.node.kafka.unwrap();
        assert_eq!(
            (
                kafka.queue_records_max,
                kafka.queue_bytes_max,
                kafka.message_timeout_ms,
                kafka.linger_ms,
                kafka.writer_lease_ms
            ),
            (128, 65536, 5000, 0, 2000)
        );
        let file: ServeOptions = toml::from_str(
            "dev = true\nwal = \"kafka\"\nkafka_brokers = \"127.0.0.1:9\"\nkafka_writer_lease_ms = 100\n",
        )
        .unwrap();
        let err = format!("{:#}", file.resolve().unwrap_err());
        assert!(err.contains("writer_lease_ms"), "{err}");
        let err = format!(
            "{:#}",
            parse(&["--dev", "--kafka-linger-ms", "1"])
                .resolve()
                .unwrap_err()
        );
        assert!(err.contains("--wal kafka"), "{err}");
    }

    #[test]
    fn group_ownership_needs_a_stable_name_and_excludes_the_static_assignment() {
        let kafka = [
            "--dev",
            "--wal",
            "kafka",
            "--kafka-brokers",
            "127.0.0.1:9092",
        ];
        let with = |extra: &[&str]| parse(&[&kafka[..], extra].concat()).resolve();
        let config = with(&["--kafka-ownership", "group", "--kafka-owner", "n1"]).unwrap();
        let group = config.node.kafka.unwrap().group.unwrap();
        assert_eq!(
            (
                group.group_id.as_str(),
                group.instance_id.as_str(),
                group.session_timeout_ms
            ),
            ("gavel-wal.owners", "n1", 10_000)
        );
        let config = with(&[
            "--kafka-ownership",
            "group",
            "--kafka-group-instance-id",
            "a",
            "--kafka-group-id",
            "g",
            "--kafka-group-session-timeout-ms",
            "6000",
        ])
        .unwrap();
        let group = config.node.kafka.unwrap().group.unwrap();
        assert_eq!(
            (group.group_id.as_str(), group.instance_id.as_str()),
            ("g", "a")
        );
        assert_eq!(group.session_timeout_ms, 6_000);
        assert_eq!(with(&[]).unwrap().node.kafka.unwrap().group, None);
        for (extra, needle) in [
            (
                &["--kafka-ownership", "group"][..],
                "--kafka-group-instance-id",
            ),
            (&["--kafka-group-id", "g"][..], "--kafka-ownership group"),
            (
                &[
                    "--kafka-ownership",
                    "group",
                    "--kafka-owner",
                    "n",
                    "--kafka-owned-partitions",
                    "0",
                ][..],
                "group ownership excludes",
            ),
            (
                &[
                    "--kafka-ownership",
                    "group",
                    "--kafka-owner",
                    "n",
                    "--kafka-group-session-timeout-ms",
                    "10",
                ][..],
                "session timeout",
            ),
        ] {
            let err = format!("{:#}", with(extra).unwrap_err());
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (args, needle) in [
            (&["--dev", "--connections-max", "0"][..], "connections_max"),
            (&["--dev", "--engine-shards", "3"][..], "engine_shards"),
            (&["--dev", "--close-tick-ms", "0"][..], "close_tick_ms"),
            (
                &["--dev", "--allowed-origins", "example.com"][..],
                "example.com",
            ),
        ] {
            let err = format!("{:#}", parse(args).resolve().unwrap_err());
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn every_option_has_an_env_var_and_a_unit_or_default_in_its_help() {
        let command = command();
        for arg in command.get_arguments() {
            let name = arg.get_id().as_str();
            assert!(arg.get_env().is_some(), "{name} has no GAVEL_* variable");
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.is_empty(), "{name} has no help");
        }
    }
}
