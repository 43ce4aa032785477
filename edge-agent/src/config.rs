//! `gavel-edge`'s configuration: one struct read from flags, `GAVEL_EDGE_*` environment
//! variables and an optional TOML file, validated once at start — the node's way
//! (`gavel serve`'s config).
//!
//! Precedence: a flag beats its environment variable (clap reads both into the same field),
//! which beats the TOML file, which beats the default. TOML keys are the long flag names with
//! `_` for `-`. Unknown keys in the file stop the start with an error naming them; unknown
//! `GAVEL_EDGE_*` variables are warned about with the closest known one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{Args, Command};
use serde::{Deserialize, Serialize};

/// Every option of `gavel-edge`. All are optional here; [`AgentOptions::resolve`] fills in
/// the defaults and checks the result.
#[derive(Args, Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentOptions {
    /// A TOML file with any of the options below (keys as the flag names, `_` for `-`).
    #[arg(long, env = "GAVEL_EDGE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// The node's QUIC address. [default: 127.0.0.1:7443]
    #[arg(long, env = "GAVEL_EDGE_NODE", value_name = "ADDR")]
    pub node: Option<SocketAddr>,

    /// The name the node's certificate is checked against. [default: localhost]
    #[arg(long, env = "GAVEL_EDGE_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,

    /// Directory of certificates written by `gavel cert` (ca.pem, clients/device-<id>.pem
    /// and .key); used for any of --ca-cert, --cert, --key not given. [default: ./data/certs]
    #[arg(long, env = "GAVEL_EDGE_CERT_DIR", value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,

    /// The device id of this agent's certificate (`gavel://device/<id>`), for --cert-dir.
    /// [default: device-1]
    #[arg(long, env = "GAVEL_EDGE_DEVICE_ID", value_name = "ID")]
    pub device_id: Option<String>,

    /// CA certificate (PEM) the node's certificate must chain to. [default: <cert-dir>/ca.pem]
    #[arg(long, env = "GAVEL_EDGE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// This device's certificate chain (PEM). [default: <cert-dir>/clients/device-<id>.pem]
    #[arg(long, env = "GAVEL_EDGE_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// This device's private key (PEM). [default: <cert-dir>/clients/device-<id>.key]
    #[arg(long, env = "GAVEL_EDGE_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Topic patterns to subscribe to (comma-separated; `*` one segment, a final `>` the
    /// rest). [default: >]
    #[arg(
        long,
        env = "GAVEL_EDGE_PATTERNS",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub patterns: Option<Vec<String>>,

    /// At most one update per auction per this many milliseconds (0: every update).
    /// [default: 0]
    #[arg(long, env = "GAVEL_EDGE_INTERVAL_MS", value_name = "MS")]
    pub interval_ms: Option<u32>,

    /// Ask the node for price updates as QUIC datagrams (one self-contained edge keyframe
    /// each; snapshots, closes and settlements stay on the stream). A lost datagram is
    /// caught by a periodic `Resume` of the auctions datagrams touched, which brings a
    /// keyframe of any that moved. [default: false]
    #[arg(long, env = "GAVEL_EDGE_DATAGRAMS", value_name = "BOOL", num_args = 0..=1,
        default_missing_value = "true")]
    pub datagrams: Option<bool>,

    /// Directory of the bid queue (<data-dir>/queue.log). [default: ./edge-data]
    #[arg(long, env = "GAVEL_EDGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Local HTTP address: POST /v1/bids, GET /v1/bids/<id>, GET /v1/auctions, GET
    /// /v1/stream (SSE), /metrics, /healthz. [default: 127.0.0.1:8090]
    #[arg(long, env = "GAVEL_EDGE_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,

    /// The local MQTT broker, host:port, or `off`. [default: 127.0.0.1:1883]
    #[arg(long, env = "GAVEL_EDGE_MQTT_BROKER", value_name = "HOST:PORT")]
    pub mqtt_broker: Option<String>,

    /// MQTT topic prefix: states at <prefix>/auctions/<id> (retained), bid requests on
    /// <prefix>/bids/request, bid statuses on <prefix>/bids/status. [default: gavel]
    #[arg(long, env = "GAVEL_EDGE_MQTT_TOPIC_PREFIX", value_name = "PREFIX")]
    pub mqtt_topic_prefix: Option<String>,

    /// Payload of the retained auction states: `json`, or `edge` (one self-contained edge
    /// frame holding one KEYFRAME). [default: json]
    #[arg(long, env = "GAVEL_EDGE_MQTT_ENCODING", value_name = "json|edge")]
    pub mqtt_encoding: Option<MqttEncoding>,

    /// MQTT QoS of what the agent publishes and subscribes to: 0, 1 or 2. [default: 1]
    #[arg(long, env = "GAVEL_EDGE_MQTT_QOS", value_name = "QOS")]
    pub mqtt_qos: Option<u8>,

    /// Bids the queue holds at most (waiting to be forwarded); beyond, new bids are refused.
    /// [default: 10000]
    #[arg(long, env = "GAVEL_EDGE_QUEUE_BIDS_MAX", value_name = "COUNT")]
    pub queue_bids_max: Option<usize>,

    /// Bytes of queued bid records at most; beyond, new bids are refused. [default: 1048576]
    #[arg(long, env = "GAVEL_EDGE_QUEUE_BYTES_MAX", value_name = "BYTES")]
    pub queue_bytes_max: Option<u64>,

    /// Largest reconnect delay to the node and to the broker (full-jitter exponential
    /// backoff from 1 s), in milliseconds. [default: 30000]
    #[arg(long, env = "GAVEL_EDGE_RECONNECT_BACKOFF_MAX_MS", value_name = "MS")]
    pub reconnect_backoff_max_ms: Option<u64>,

    /// Auctions the agent holds at most. [default: 10000]
    #[arg(long, env = "GAVEL_EDGE_AUCTIONS_MAX", value_name = "COUNT")]
    pub auctions_max: Option<usize>,

    /// Longest graceful shutdown, in milliseconds. [default: 5000]
    #[arg(long, env = "GAVEL_EDGE_SHUTDOWN_DEADLINE_MS", value_name = "MS")]
    pub shutdown_deadline_ms: Option<u64>,
}

/// The payload of a retained auction state on MQTT.
#[derive(clap::ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MqttEncoding {
    /// A JSON object (the same as `GET /v1/auctions/<id>`).
    Json,
    /// One edge frame (docs/edge-stream.md) with one KEYFRAME, frame number 0.
    Edge,
}

/// The resolved, validated configuration of `gavel-edge`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's QUIC address.
    pub node: SocketAddr,
    /// The node certificate's name.
    pub server_name: String,
    /// CA certificate file.
    pub ca_cert: PathBuf,
    /// Device certificate file.
    pub cert: PathBuf,
    /// Device key file.
    pub key: PathBuf,
    /// Subscribed patterns.
    pub patterns: Vec<String>,
    /// Conflation interval, in milliseconds.
    pub interval_ms: u32,
    /// Price updates as QUIC datagrams.
    pub datagrams: bool,
    /// Queue directory.
    pub data_dir: PathBuf,
    /// Local HTTP address.
    pub http_listen: SocketAddr,
    /// The MQTT side, if on.
    pub mqtt: Option<MqttConfig>,
    /// Queue bounds.
    pub queue_bids_max: usize,
    /// Queue bounds, in bytes.
    pub queue_bytes_max: u64,
    /// Largest reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// Auctions held at most.
    pub auctions_max: usize,
    /// Graceful shutdown deadline.
    pub shutdown_deadline: Duration,
}

/// The local MQTT broker and what goes to it.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Payload of auction states.
    pub encoding: MqttEncoding,
    /// QoS, 0..=2.
    pub qos: u8,
}

/// Default node address.
pub const NODE_DEFAULT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7443));
/// Default local HTTP address.
pub const HTTP_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8090));
/// Default MQTT broker.
pub const MQTT_BROKER_DEFAULT: &str = "127.0.0.1:1883";
/// Default queue bound, in bids.
pub const QUEUE_BIDS_MAX_DEFAULT: usize = 10_000;
/// Default queue bound, in bytes.
pub const QUEUE_BYTES_MAX_DEFAULT: u64 = 1 << 20;
/// Default largest reconnect delay, in milliseconds.
pub const RECONNECT_BACKOFF_MAX_MS_DEFAULT: u64 = 30_000;
/// Default bound on auctions held.
pub const AUCTIONS_MAX_DEFAULT: usize = 10_000;
/// Default shutdown deadline, in milliseconds.
pub const SHUTDOWN_DEADLINE_MS_DEFAULT: u64 = 5_000;

/// `(flag id, value)` pairs: these options where set, else the fallback's.
macro_rules! prefer {
    ($first:ident, $second:ident; $($field:ident),* $(,)?) => {
        AgentOptions {
            config: $first.config.or($second.config),
            $($field: $first.$field.or($second.$field),)*
        }
    };
}

impl AgentOptions {
    /// These options where set, else `fallback`'s.
    fn or(self, fallback: AgentOptions) -> AgentOptions {
        prefer!(self, fallback;
            node, server_name, cert_dir, device_id, ca_cert, cert, key, patterns, interval_ms,
            datagrams, data_dir, http_listen, mqtt_broker, mqtt_topic_prefix, mqtt_encoding, mqtt_qos,
            queue_bids_max, queue_bytes_max, reconnect_backoff_max_ms, auctions_max,
            shutdown_deadline_ms)
    }

    /// Flags and environment (already in `self`, by clap) over the TOML file named by
    /// `--config`, if any; then [`AgentOptions::resolve`].
    pub fn load(self) -> Result<AgentConfig> {
        let merged = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the config file {}", path.display()))?;
                let file: AgentOptions = toml::from_str(&text)
                    .with_context(|| format!("in the config file {}", path.display()))?;
                self.or(file)
            }
            None => self,
        };
        merged.resolve()
    }

    /// Fills in defaults and validates.
    pub fn resolve(self) -> Result<AgentConfig> {
        let cert_dir = self
            .cert_dir
            .unwrap_or_else(|| PathBuf::from("./data/certs"));
        let device = self.device_id.unwrap_or_else(|| "device-1".to_owned());
        let client = |ext: &str| cert_dir.join(format!("clients/device-{device}.{ext}"));
        let patterns = self.patterns.unwrap_or_else(|| vec![">".to_owned()]);
        ensure!(
            !patterns.is_empty() && patterns.iter().all(|p| !p.is_empty()),
            "patterns: at least one non-empty pattern is needed"
        );
        let queue_bids_max = self.queue_bids_max.unwrap_or(QUEUE_BIDS_MAX_DEFAULT);
        ensure!(queue_bids_max >= 1, "queue-bids-max must be at least 1");
        let queue_bytes_max = self.queue_bytes_max.unwrap_or(QUEUE_BYTES_MAX_DEFAULT);
        ensure!(
            queue_bytes_max >= 1_024,
            "queue-bytes-max must be at least 1024"
        );
        let backoff_ms = self
            .reconnect_backoff_max_ms
            .unwrap_or(RECONNECT_BACKOFF_MAX_MS_DEFAULT);
        ensure!(
            (1_000..=3_600_000).contains(&backoff_ms),
            "reconnect-backoff-max-ms must be within 1000..=3600000 (the backoff starts at 1 s)"
        );
        let auctions_max = self.auctions_max.unwrap_or(AUCTIONS_MAX_DEFAULT);
        ensure!(auctions_max >= 1, "auctions-max must be at least 1");
        let mqtt = mqtt_config(
            self.mqtt_broker.as_deref(),
            self.mqtt_topic_prefix,
            self.mqtt_encoding,
            self.mqtt_qos,
        )?;
        Ok(AgentConfig {
            node: self.node.unwrap_or(NODE_DEFAULT),
            server_name: self.server_name.unwrap_or_else(|| "localhost".to_owned()),
            ca_cert: self.ca_cert.unwrap_or_else(|| cert_dir.join("ca.pem")),
            cert: self.cert.unwrap_or_else(|| client("pem")),
            key: self.key.unwrap_or_else(|| client("key")),
            patterns,
            interval_ms: self.interval_ms.unwrap_or(0),
            datagrams: self.datagrams.unwrap_or(false),
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from("./edge-data")),
            http_listen: self.http_listen.unwrap_or(HTTP_LISTEN_DEFAULT),
            mqtt,
            queue_bids_max,
            queue_bytes_max,
            reconnect_backoff_max: Duration::from_millis(backoff_ms),
            auctions_max,
            shutdown_deadline: Duration::from_millis(
                self.shutdown_deadline_ms
                    .unwrap_or(SHUTDOWN_DEADLINE_MS_DEFAULT),
            ),
        })
    }
}

/// The MQTT side from its options; `None` when the broker is `off`.
fn mqtt_config(
    broker: Option<&str>,
    prefix: Option<String>,
    encoding: Option<MqttEncoding>,
    qos: Option<u8>,
) -> Result<Option<MqttConfig>> {
    let broker = broker.unwrap_or(MQTT_BROKER_DEFAULT);
    if broker == "off" {
        return Ok(None);
    }
    let (host, port) = broker
        .rsplit_once(':')
        .with_context(|| format!("mqtt-broker {broker:?}: expected host:port or off"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("mqtt-broker {broker:?}: bad port"))?;
    ensure!(!host.is_empty(), "mqtt-broker {broker:?}: no host");
    let topic_prefix = prefix.unwrap_or_else(|| "gavel".to_owned());
    ensure!(
        !topic_prefix.is_empty() && !topic_prefix.contains(['#', '+']),
        "mqtt-topic-prefix {topic_prefix:?}: must be non-empty and without wildcards"
    );
    let qos = qos.unwrap_or(1);
    ensure!(qos <= 2, "mqtt-qos must be 0, 1 or 2 (got {qos})");
    Ok(Some(MqttConfig {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        topic_prefix,
        encoding: encoding.unwrap_or(MqttEncoding::Json),
        qos,
    }))
}

/// The `GAVEL_EDGE_*` variables the agent reads.
fn known_env_vars() -> Vec<String> {
    AgentOptions::augment_args(Command::new("gavel-edge"))
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// The `GAVEL_EDGE_*` names among `names` that are no option, each with the closest known
/// one (a typo's likely intent).
fn unknown_env_vars(names: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
    let known = known_env_vars();
    names
        .into_iter()
        .filter(|name| name.starts_with("GAVEL_EDGE_") && !known.contains(name))
        .map(|name| {
            let closest = known
                .iter()
                .min_by_key(|candidate| strsim::levenshtein(&name, candidate))
                .cloned()
                .unwrap_or_default();
            (name, closest)
        })
        .collect()
}

/// Logs a warning for each unknown `GAVEL_EDGE_*` variable of this process's environment.
pub fn warn_about_unknown_env_vars() {
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for (name, closest) in unknown_env_vars(names) {
        tracing::warn!(variable = %name, %closest, "unknown GAVEL_EDGE_* environment variable ignored");
    }
}

/// Reads and checks a TOML file alone (for tests and `--config` errors).
#[cfg(test)]
fn from_file(path: &std::path::Path) -> Result<AgentConfig> {
    AgentOptions {
        config: Some(path.to_owned()),
        ..AgentOptions::default()
    }
    .load()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        options: AgentOptions,
    }

    fn parse(args: &[&str]) -> AgentOptions {
        Cli::try_parse_from(std::iter::once("gavel-edge").chain(args.iter().copied()))
            .unwrap()
            .options
    }

    #[test]
    fn defaults_resolve_to_the_dev_certificates_and_local_ports() {
        let config = parse(&[]).resolve().unwrap();
        assert_eq!(config.node, NODE_DEFAULT);
        assert_eq!(
            config.cert,
            PathBuf::from("./data/certs/clients/device-device-1.pem")
        );
        assert_eq!(config.patterns, vec![">".to_owned()]);
        let mqtt = config.mqtt.unwrap();
        assert_eq!(
            (mqtt.host.as_str(), mqtt.port, mqtt.qos),
            ("127.0.0.1", 1883, 1)
        );
        assert_eq!(config.reconnect_backoff_max, Duration::from_secs(30));
        assert_eq!(config.queue_bids_max, QUEUE_BIDS_MAX_DEFAULT);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(
            &path,
            "queue_bids_max = 5\nmqtt_qos = 2\npatterns = [\"energy.>\"]\nmqtt_encoding = \"edge\"\n",
        )
        .unwrap();
        let file_only = from_file(&path).unwrap();
        assert_eq!(file_only.queue_bids_max, 5);
        assert_eq!(file_only.patterns, vec!["energy.>".to_owned()]);
        assert_eq!(file_only.mqtt.unwrap().encoding, MqttEncoding::Edge);
        let config = parse(&["--config", path.to_str().unwrap(), "--queue-bids-max", "7"])
            .load()
            .unwrap();
        assert_eq!(config.queue_bids_max, 7);
        assert_eq!(config.mqtt.unwrap().qos, 2);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, "queue_bids_mx = 5\n").unwrap();
        let error = format!("{:#}", from_file(&path).unwrap_err());
        assert!(error.contains("queue_bids_mx"), "{error}");
        for (args, name) in [
            (&["--mqtt-qos", "3"][..], "mqtt-qos"),
            (
                &["--reconnect-backoff-max-ms", "10"][..],
                "reconnect-backoff-max-ms",
            ),
            (&["--queue-bids-max", "0"][..], "queue-bids-max"),
            (&["--mqtt-broker", "nowhere"][..], "mqtt-broker"),
            (&["--mqtt-topic-prefix", "a/#"][..], "mqtt-topic-prefix"),
        ] {
            let error = format!("{:#}", parse(args).resolve().unwrap_err());
            assert!(error.contains(name), "{args:?}: {error}");
        }
        assert!(
            parse(&["--mqtt-broker", "off"])
                .resolve()
                .unwrap()
                .mqtt
                .is_none()
        );
    }

    #[test]
    fn unknown_env_vars_are_named_with_the_closest_known_one() {
        let unknown = unknown_env_vars([
            "GAVEL_EDGE_QUEUE_BIDS_MAXX".to_owned(),
            "GAVEL_EDGE_NODE".to_owned(),
            "GAVEL_DATA_DIR".to_owned(),
        ]);
        assert_eq!(
            unknown,
            vec![(
                "GAVEL_EDGE_QUEUE_BIDS_MAXX".to_owned(),
                "GAVEL_EDGE_QUEUE_BIDS_MAX".to_owned()
            )]
        );
    }
}
