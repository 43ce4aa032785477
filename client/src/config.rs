//! [`ClientConfig`]: where the node is, the TLS material (the CA that signed the node's
//! certificate, this bidder's certificate and key), timeouts, reconnect backoff and bounds;
//! and the QUIC/TLS configuration built from it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gavel_proto::frame::ALPN;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConnectError;

/// Everything a [`crate::Client`] needs. [`ClientConfig::new`] or
/// [`ClientConfig::from_cert_dir`] fill the timeouts and bounds with sensible defaults;
/// change the public fields as needed.
#[derive(Clone)]
pub struct ClientConfig {
    /// The node's QUIC address.
    pub server: SocketAddr,
    /// The name the node's certificate is checked against (`localhost` for dev certs).
    pub server_name: String,
    /// PEM of the CA certificate(s) that signed the node's certificate.
    pub ca_cert_pem: Vec<u8>,
    /// PEM of this bidder's certificate chain (its `gavel://bidder/<id>` SAN names it).
    pub client_cert_pem: Vec<u8>,
    /// PEM of this bidder's private key.
    pub client_key_pem: Vec<u8>,
    /// Time one connection attempt may take (handshake and a first ping), in the SDK's
    /// `Duration` units.
    pub connect_timeout: Duration,
    /// Time [`crate::Client::place_bid`] and [`crate::Client::ping`] wait for an answer,
    /// including any reconnect in between.
    pub request_timeout: Duration,
    /// Time [`crate::PlacedBid::durable`] waits for the durable ack.
    pub durable_timeout: Duration,
    /// A connection with no traffic for this long is dead (QUIC idle timeout).
    pub idle_timeout: Duration,
    /// A keep-alive is sent after this long without traffic; below `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// First reconnect delay cap; doubles per failed attempt (full jitter).
    pub reconnect_backoff_base: Duration,
    /// Largest reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// Requests sent and not yet fully answered (a bid stays until its durable ack); more
    /// wait in [`ClientConfig::queued_requests_max`].
    pub requests_in_flight_max: usize,
    /// Requests waiting to be sent; callers wait for room beyond it.
    pub queued_requests_max: usize,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("durable_timeout", &self.durable_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("reconnect_backoff_base", &self.reconnect_backoff_base)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("requests_in_flight_max", &self.requests_in_flight_max)
            .field("queued_requests_max", &self.queued_requests_max)
            .finish_non_exhaustive()
    }
}

/// The file names `gavel cert` and `gavel serve --dev` write into the certificate
/// directory (`./data/certs` by default).
pub mod dev_files {
    /// The development CA's certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// The directory of client certificates, inside the certificate directory.
    pub const CLIENTS_DIR: &str = "clients";

    /// The certificate file of the client `<role>/<id>` (e.g. `bidder`, `bidder-1`),
    /// relative to the certificate directory.
    pub fn cert(role: &str, id: &str) -> String {
        format!("{CLIENTS_DIR}/{role}-{id}.pem")
    }

    /// The key file of the client `<role>/<id>`, relative to the certificate directory.
    pub fn key(role: &str, id: &str) -> String {
        format!("{CLIENTS_DIR}/{role}-{id}.key")
    }
}

impl ClientConfig {
    /// A configuration with default timeouts and bounds.
    pub fn new(
        server: SocketAddr,
        server_name: impl Into<String>,
        ca_cert_pem: Vec<u8>,
        client_cert_pem: Vec<u8>,
        client_key_pem: Vec<u8>,
    ) -> ClientConfig {
        ClientConfig {
            server,
            server_name: server_name.into(),
            ca_cert_pem,
            client_cert_pem,
            client_key_pem,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            durable_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            reconnect_backoff_base: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            requests_in_flight_max: 4096,
            queued_requests_max: 1024,
        }
    }

    /// Reads the development certificates written by `gavel cert` from `dir`: the CA
    /// ([`dev_files::CA_CERT`]) and the certificate and key of the bidder `bidder_id`
    /// ([`dev_files::cert`], [`dev_files::key`] with role `bidder`). The node's name is
    /// `localhost`. For another role (a device), use [`ClientConfig::from_cert_files`].
    pub fn from_cert_dir(
        server: SocketAddr,
        dir: &Path,
        bidder_id: &str,
    ) -> Result<ClientConfig, ConnectError> {
        ClientConfig::from_cert_files(
            server,
            "localhost",
            &dir.join(dev_files::CA_CERT),
            &dir.join(dev_files::cert("bidder", bidder_id)),
            &dir.join(dev_files::key("bidder", bidder_id)),
        )
    }

    /// Reads the CA certificate, the client certificate and its key from PEM files.
    pub fn from_cert_files(
        server: SocketAddr,
        server_name: impl Into<String>,
        ca_cert: &Path,
        client_cert: &Path,
        client_key: &Path,
    ) -> Result<ClientConfig, ConnectError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| ConnectError::Config(format!("reading {}: {e}", path.display())))
        };
        Ok(ClientConfig::new(
            server,
            server_name,
            read(ca_cert)?,
            read(client_cert)?,
            read(client_key)?,
        ))
    }

    /// The QUIC client configuration: TLS 1.3, ALPN `gavel/1`, the node checked against the
    /// CA, this bidder's certificate presented, the idle timeout and keep-alive.
    pub(crate) fn quic(&self) -> Result<quinn::ClientConfig, ConnectError> {
        let config_error =
            |what: &str, e: &dyn std::fmt::Display| ConnectError::Config(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_cert_pem) {
            let cert = cert.map_err(|e| config_error("CA certificate PEM", &e))?;
            roots
                .add(cert)
                .map_err(|e| config_error("CA certificate", &e))?;
        }
        if roots.is_empty() {
            return Err(ConnectError::Config("no CA certificate in the PEM".into()));
        }
        let chain = CertificateDer::pem_slice_iter(&self.client_cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_error("client certificate PEM", &e))?;
        if chain.is_empty() {
            return Err(ConnectError::Config(
                "no client certificate in the PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.client_key_pem)
            .map_err(|e| config_error("client key PEM", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error("TLS versions", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_error("client certificate and key", &e))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| config_error("QUIC TLS config", &e))?;
        let mut transport = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| config_error("idle timeout", &e))?;
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive_interval))
            // The node opens no streams towards the client.
            .max_concurrent_bidi_streams(0_u8.into())
            .max_concurrent_uni_streams(0_u8.into());
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}
