//! The parts of [`ServeOptions::resolve`]: each group of options checked and turned into the
//! configuration of the piece it sets up (TLS, origins, limits, engine, file log, Kafka log).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use gavel_engine::EngineConfig;
use gavel_transport::Limits;
use gavel_wal::WalConfig;
use gavel_wal::kafka::{GroupConfig, KafkaConfig};

use super::*;

/// An advertised address as given: `host:port`, a port number after the last `:` and no
/// whitespace or comma (it goes into the one-word lease advertisement).
pub(super) fn advertised(option: &str, address: Option<&str>) -> Result<Option<String>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let port = address
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    ensure!(
        matches!(port, Some((host, Ok(port))) if !host.is_empty() && port != 0)
            && !address.contains(|c: char| c.is_whitespace() || c == ','),
        "{option} must be host:port with a port from 1 to 65535, got {address:?}"
    );
    Ok(Some(address.to_owned()))
}

impl ServeOptions {
    /// The TLS material: all three files, or `--dev` certificates under `data_dir`.
    pub(super) fn tls_source(&self, data_dir: &Path, dev: bool) -> Result<TlsSource> {
        let tls = match (
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_client_ca.clone(),
        ) {
            (Some(cert), Some(key), Some(client_ca)) => TlsSource::Files {
                cert,
                key,
                client_ca,
                crl: self.tls_crl.clone(),
            },
            (None, None, None) if dev => {
                ensure!(
                    self.tls_crl.is_none(),
                    "--tls-crl needs --tls-cert, --tls-key and --tls-client-ca"
                );
                TlsSource::Dev(data_dir.join(DEV_CERTS_DIR))
            }
            (None, None, None) => bail!(
                "no TLS material: give --tls-cert, --tls-key and --tls-client-ca, or run with \
                 --dev to generate development certificates into {}",
                data_dir.join(DEV_CERTS_DIR).display()
            ),
            _ => bail!("--tls-cert, --tls-key and --tls-client-ca go together: give all three"),
        };
        Ok(tls)
    }

    /// The Origins allowed to open WebSockets (default: this node's HTTPS port on loopback).
    pub(super) fn allowed_origins(&self, https_listen: SocketAddr) -> Result<Vec<String>> {
        let allowed_origins = self.allowed_origins.clone().unwrap_or_else(|| {
            let port = https_listen.port();
            vec![
                format!("https://localhost:{port}"),
                format!("https://127.0.0.1:{port}"),
            ]
        });
        for origin in &allowed_origins {
            ensure!(
                origin.starts_with("https://") || origin.starts_with("http://"),
                "allowed origin {origin:?} must start with https:// or http://"
            );
        }
        Ok(allowed_origins)
    }

    /// The edge's limits, validated.
    pub(super) fn limits(&self) -> Result<Limits> {
        let defaults = Limits::default();
        let limits = Limits {
            frame_bytes_max: self.frame_bytes_max.unwrap_or(defaults.frame_bytes_max),
            ws_message_bytes_max: self
                .ws_message_bytes_max
                .unwrap_or(defaults.ws_message_bytes_max),
            http_body_bytes_max: self
                .http_body_bytes_max
                .unwrap_or(defaults.http_body_bytes_max),
            connections_max: self.connections_max.unwrap_or(defaults.connections_max),
            handshakes_pending_max: self
                .handshakes_pending_max
                .unwrap_or(defaults.handshakes_pending_max),
            handshake_timeout_ms: self
                .handshake_timeout_ms
                .unwrap_or(defaults.handshake_timeout_ms),
            streams_per_connection_max: self
                .streams_per_connection_max
                .unwrap_or(defaults.streams_per_connection_max),
            subscriptions_per_connection_max: self
                .subscriptions_per_connection_max
                .unwrap_or(defaults.subscriptions_per_connection_max),
            pending_durable_per_connection_max: self
                .pending_durable_per_connection_max
                .unwrap_or(defaults.pending_durable_per_connection_max),
            outbound_bytes_max_per_connection: self
                .outbound_bytes_max_per_connection
                .unwrap_or(defaults.outbound_bytes_max_per_connection),
            slow_consumer_timeout_ms: self
                .slow_consumer_timeout_ms
                .unwrap_or(defaults.slow_consumer_timeout_ms),
            stream_unsent_bytes_max: self
                .stream_unsent_bytes_max
                .unwrap_or(defaults.stream_unsent_bytes_max),
            bids_per_second_per_bidder: self
                .bids_per_second_per_bidder
                .unwrap_or(defaults.bids_per_second_per_bidder),
            bid_burst_per_bidder: self
                .bid_burst_per_bidder
                .unwrap_or(defaults.bid_burst_per_bidder),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(defaults.idle_timeout_ms),
            list_limit_max: self.list_limit_max.unwrap_or(defaults.list_limit_max),
        };
        limits.validate().context("invalid limit")?;
        Ok(limits)
    }

    /// The engine's settings, validated.
    pub(super) fn engine_config(&self) -> Result<EngineConfig> {
        let engine_defaults = EngineConfig::default();
        let engine = EngineConfig {
            shards: self.engine_shards.unwrap_or(engine_defaults.shards),
            auctions_max: self.auctions_max.unwrap_or(engine_defaults.auctions_max),
            dedup_window_bids: self
                .dedup_window_bids
                .unwrap_or(engine_defaults.dedup_window_bids),
            sealed_bidders_max: self
                .sealed_bidders_max
                .unwrap_or(engine_defaults.sealed_bidders_max),
            settled_retention_us: match self.settled_retention_ms {
                Some(ms) => ms
                    .checked_mul(1_000)
                    .context("settled_retention_ms is too large")?,
                None => engine_defaults.settled_retention_us,
            },
            pruned_retention_us: match self.pruned_retention_ms {
                Some(ms) => ms
                    .checked_mul(1_000)
                    .context("pruned_retention_ms is too large")?,
                None => engine_defaults.pruned_retention_us,
            },
        };
        ensure!(
            engine.shards.is_power_of_two(),
            "engine_shards must be a power of two, got {}",
            engine.shards
        );
        ensure!(engine.auctions_max >= 1, "auctions_max must be at least 1");
        ensure!(
            engine.dedup_window_bids >= 1,
            "dedup_window_bids must be at least 1"
        );
        ensure!(
            engine.sealed_bidders_max >= 1,
            "sealed_bidders_max must be at least 1"
        );
        Ok(engine)
    }

    /// The file log's settings, validated.
    pub(super) fn wal_config(&self) -> Result<WalConfig> {
        let wal_defaults = WalConfig::default();
        let wal = WalConfig {
            segment_bytes_max: self
                .wal_segment_bytes_max
                .unwrap_or(wal_defaults.segment_bytes_max),
            queue_records_max: self
                .wal_queue_records_max
                .unwrap_or(wal_defaults.queue_records_max),
            queue_bytes_max: self
                .wal_queue_bytes_max
                .unwrap_or(wal_defaults.queue_bytes_max),
            batch_records_max: self
                .wal_batch_records_max
                .unwrap_or(wal_defaults.batch_records_max),
            batch_bytes_max: self
                .wal_batch_bytes_max
                .unwrap_or(wal_defaults.batch_bytes_max),
            batch_wait_us_max: self
                .wal_batch_wait_us_max
                .unwrap_or(wal_defaults.batch_wait_us_max),
        };
        wal.validate().context("invalid write-ahead log setting")?;
        Ok(wal)
    }

    /// The Kafka log's settings with `--wal kafka` (validated); `--kafka-*` without it is an
    /// error.
    pub(super) fn kafka_config(&self) -> Result<Option<KafkaConfig>> {
        let kafka = match self.wal.unwrap_or(LogKind::File) {
            LogKind::File => {
                ensure!(
                    self.kafka_brokers.is_none()
                        && self.kafka_topic.is_none()
                        && self.kafka_partitions.is_none()
                        && self.kafka_connect_timeout_ms.is_none()
                        && self.kafka_queue_records_max.is_none()
                        && self.kafka_queue_bytes_max.is_none()
                        && self.kafka_message_timeout_ms.is_none()
                        && self.kafka_linger_ms.is_none()
                        && self.kafka_writer_lease_ms.is_none()
                        && self.kafka_owner.is_none()
                        && self.kafka_owned_partitions.is_none()
                        && self.kafka_standby_partitions.is_none()
                        && self.kafka_follow_only.is_none()
                        && self.kafka_ownership.is_none()
                        && self.kafka_group_id.is_none()
                        && self.kafka_group_instance_id.is_none()
                        && self.kafka_group_session_timeout_ms.is_none(),
                    "--kafka-* options need --wal kafka"
                );
                None
            }
            LogKind::Kafka => {
                let defaults = KafkaConfig::default();
                let kafka = KafkaConfig {
                    brokers: self
                        .kafka_brokers
                        .clone()
                        .context("--wal kafka needs --kafka-brokers (host:port)")?,
                    topic: self.kafka_topic.clone().unwrap_or(defaults.topic),
                    partitions: self.kafka_partitions.unwrap_or(defaults.partitions),
                    connect_timeout_ms: self
                        .kafka_connect_timeout_ms
                        .unwrap_or(defaults.connect_timeout_ms),
                    queue_records_max: self
                        .kafka_queue_records_max
                        .unwrap_or(defaults.queue_records_max),
                    queue_bytes_max: self
                        .kafka_queue_bytes_max
                        .unwrap_or(defaults.queue_bytes_max),
                    message_timeout_ms: self
                        .kafka_message_timeout_ms
                        .unwrap_or(defaults.message_timeout_ms),
                    linger_ms: self.kafka_linger_ms.unwrap_or(defaults.linger_ms),
                    writer_lease_ms: self
                        .kafka_writer_lease_ms
                        .unwrap_or(defaults.writer_lease_ms),
                    owner: self.kafka_owner.clone().unwrap_or(defaults.owner),
                    owned_partitions: self.kafka_owned_partitions.clone().unwrap_or_default(),
                    standby_partitions: self.kafka_standby_partitions.clone().unwrap_or_default(),
                    follow_only: self.kafka_follow_only.unwrap_or(false),
                    group: self.group_config()?,
                    ..defaults
                };
                kafka.validate().context("invalid Kafka log setting")?;
                Some(kafka)
            }
        };
        Ok(kafka)
    }

    /// Group ownership's settings with `--kafka-ownership group`; `--kafka-group-*` without
    /// it is an error.
    fn group_config(&self) -> Result<Option<GroupConfig>> {
        if self.kafka_ownership.unwrap_or(Ownership::Static) == Ownership::Static {
            ensure!(
                self.kafka_group_id.is_none()
                    && self.kafka_group_instance_id.is_none()
                    && self.kafka_group_session_timeout_ms.is_none(),
                "--kafka-group-* options need --kafka-ownership group"
            );
            return Ok(None);
        }
        let topic = self
            .kafka_topic
            .clone()
            .unwrap_or(KafkaConfig::default().topic);
        let instance_id = (self.kafka_group_instance_id.clone())
            .or_else(|| self.kafka_owner.clone())
            .context(
                "--kafka-ownership group needs a stable member name: --kafka-group-instance-id \
                 or --kafka-owner",
            )?;
        Ok(Some(GroupConfig {
            group_id: (self.kafka_group_id.clone())
                .unwrap_or_else(|| GroupConfig::default_group_id(&topic)),
            instance_id,
            session_timeout_ms: self.kafka_group_session_timeout_ms.unwrap_or(10_000),
        }))
    }
}
