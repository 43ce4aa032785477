//! TLS for the node: server configurations with client-certificate verification (mTLS),
//! revocation lists, reload without restart, and the peer's identity from its certificate.
//!
//! Inside:
//! - [`TlsPaths`] and [`ServerTls`] (in `server`): the node's certificate, key, client CA
//!   bundle and optional CRL, loaded into one rustls configuration for QUIC (ALPN `gavel/1`)
//!   and one for HTTPS (ALPN `h2`, `http/1.1`), swapped whole on [`ServerTls::reload`] and by
//!   [`ServerTls::spawn_reloader`] when a file's content changes or on `SIGHUP`.
//! - `material`: reading and parsing the PEM files, building the rustls configurations.
//! - [`peer_identity`]: the [`Identity`] named by a verified client certificate.
//! - [`client_config`]: a client configuration for tests, the load tester and tools.
//! - `dev` (feature `dev-pki`): a development CA, server and client certificates and a CRL
//!   (`gavel cert`, `gavel serve --dev`).
//! - [`stream`]: the HTTPS port's TLS server stream (rustls's unbuffered API; no buffer
//!   held while the connection is idle).
//!
//! Policy (PRODUCT.md §6):
//! - TLS 1.3 only, `ring` provider installed explicitly (never the process default).
//! - Client certificates are verified by rustls's `WebPkiClientVerifier` against the CA
//!   bundle. With a CRL file, every certificate of the chain below the trust anchor is checked
//!   against it, and both an **unknown status** (no CRL from that certificate's issuer in the
//!   file) and an **expired CRL** (`nextUpdate` passed) reject the handshake: revocation fails
//!   closed. So the CRL file must hold a current CRL from every CA of the bundle that issues
//!   client certificates. Without a CRL file there is no revocation check (logged at start).
//! - A CRL that has already expired when it is loaded is refused like a malformed file: a
//!   reload keeps the last good material, a start fails naming the file.
//! - With anonymous watchers allowed, a client may present no certificate (the session then
//!   treats it as an anonymous watcher); a client that presents a bad, unknown or revoked
//!   certificate is still rejected.
//! - Every reload builds fresh configurations, so TLS session resumption never crosses a
//!   reload: a revoked client cannot resume a session its certificate opened before the CRL
//!   changed.

#[cfg(feature = "dev-pki")]
pub mod dev;
mod material;
mod server;
pub mod stream;

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::identity::{IDENTITY_URI_SCHEME, Identity, IdentityError};

pub use server::{RELOAD_POLL_MIN, ServerTls};

/// ALPN protocol of Gavel over QUIC.
pub const ALPN_GAVEL: &[u8] = b"gavel/1";
/// ALPN protocols of the HTTPS listener (admin API, WebSocket), most preferred first.
pub const ALPN_HTTPS: &[&[u8]] = &[b"h2", b"http/1.1"];
/// Largest TLS file (certificate chain, key, CA bundle, CRL) the node reads, in bytes. Files
/// are re-read on every reload poll, so they are kept small; a CRL of 10 000 entries is
/// about 400 KiB.
pub const TLS_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Where the node's TLS material lives. All files are PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The server certificate chain, end-entity certificate first.
    pub cert: PathBuf,
    /// The server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists of those CAs (PEM `X509 CRL` blocks, or one DER CRL);
    /// `None` checks no revocation.
    pub crl: Option<PathBuf>,
}

/// Why TLS material could not be loaded, built or generated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is larger than [`TLS_FILE_BYTES_MAX`].
    #[error("{path} is larger than {bytes_max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        bytes_max: u64,
    },
    /// A file is not valid PEM, or holds nothing of the kind expected there.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("the key {key} does not match the certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A CRL's `nextUpdate` has passed: a newer CRL is due and this one proves nothing.
    #[error("{path}: the CRL expired at {next_update} (nextUpdate); issue a fresh one")]
    CrlExpired {
        /// The CRL file.
        path: PathBuf,
        /// Its `nextUpdate`, RFC 3339.
        next_update: String,
    },
    /// rustls refused the material.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built, naming the file(s).
        what: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built from the CA bundle and CRLs.
    #[error("client verifier from {ca} (CRL {crl:?}): {source}")]
    Verifier {
        /// The CA bundle.
        ca: PathBuf,
        /// The CRL file, if any.
        crl: Option<PathBuf>,
        /// rustls's reason.
        source: rustls::server::VerifierBuilderError,
    },
    /// A certificate or CRL could not be generated (development CA).
    #[cfg(feature = "dev-pki")]
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A development file already exists where a new one was asked for without overwrite
    /// (a CA: `gavel cert --force` replaces it; a client certificate: revoke and remove it).
    #[error("{0} already exists")]
    AlreadyExists(PathBuf),
    /// The certificate was not issued by the development CA it was to be revoked from.
    #[error("{cert} was not issued by the CA {ca}")]
    NotIssuedByCa {
        /// The certificate.
        cert: PathBuf,
        /// The CA certificate.
        ca: PathBuf,
    },
}

impl TlsError {
    fn bad_file(path: &Path, reason: impl Into<String>) -> TlsError {
        TlsError::BadFile {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The identity a client certificate chain names: the single `gavel://<role>/<id>` SAN URI of
/// its end-entity (first) certificate. Other URIs are ignored.
///
/// Call it on a chain the handshake verified (`peer_certificates()`): it checks no signature.
/// The handshake does not require an identity URI, so a verified certificate may still fail
/// here: refuse that connection — never treat it as an anonymous watcher, which is only for
/// a client that presented no certificate at all (`peer_certificates()` is `None`).
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Result<Identity, IdentityError> {
    let end_entity = chain.first().ok_or(IdentityError::Missing)?;
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?
        .ok_or(IdentityError::Missing)?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(IDENTITY_URI_SCHEME) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(IdentityError::Missing)?;
    if uris.next().is_some() {
        return Err(IdentityError::Ambiguous);
    }
    Identity::from_uri(uri)
}

/// A TLS 1.3 client configuration trusting the CA certificates in `ca` (PEM), presenting the
/// certificate chain and key in `cert_key` if given, offering `alpn`.
pub fn client_config(
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = material::root_store(ca, &material::read_file(ca)?)?;
    let builder = rustls::ClientConfig::builder_with_provider(material::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "client TLS versions".to_owned(),
            source,
        })?
        .with_root_certificates(roots);
    let mut config = match cert_key {
        Some((cert, key)) => {
            let chain = material::certificates(cert, &material::read_file(cert)?)?;
            let key_der = material::private_key(key, &material::read_file(key)?)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|source| material::key_error(cert, key, source))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
