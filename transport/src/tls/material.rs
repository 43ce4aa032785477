//! Reading the TLS files (bounded), parsing their PEM, and building the QUIC and HTTPS server
//! configurations from one reading. Pure functions of the bytes read, so a reload can compare
//! what it read with what it read last time and build from exactly that.

use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};

use super::{ALPN_GAVEL, ALPN_HTTPS, TLS_FILE_BYTES_MAX, TlsError, TlsPaths};

/// The crypto provider of every configuration here: `ring`, chosen explicitly so nothing
/// depends on a process-wide default.
pub(super) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads a whole file of at most [`TLS_FILE_BYTES_MAX`] bytes.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file at the limit from a larger one, even if it
    // grows while being read.
    file.take(TLS_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > TLS_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
            bytes_max: TLS_FILE_BYTES_MAX,
        });
    }
    Ok(bytes)
}

/// The contents of the node's TLS files at one moment.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct RawFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
    crl: Option<Vec<u8>>,
}

impl RawFiles {
    /// Reads every file of `paths`.
    pub(super) fn read(paths: &TlsPaths) -> Result<RawFiles, TlsError> {
        Ok(RawFiles {
            cert: read_file(&paths.cert)?,
            key: read_file(&paths.key)?,
            client_ca: read_file(&paths.client_ca)?,
            crl: paths.crl.as_deref().map(read_file).transpose()?,
        })
    }
}

impl std::fmt::Debug for RawFiles {
    // Lengths only: the key's bytes must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawFiles")
            .field("cert_bytes", &self.cert.len())
            .field("key_bytes", &self.key.len())
            .field("client_ca_bytes", &self.client_ca.len())
            .field("crl_bytes", &self.crl.as_ref().map(Vec::len))
            .finish()
    }
}

/// The QUIC and HTTPS configurations built from one reading of the material.
#[derive(Debug)]
pub(super) struct Configs {
    pub(super) quic: Arc<ServerConfig>,
    pub(super) https: Arc<ServerConfig>,
    pub(super) expiry: Expiry,
}

/// When the material of one reading stops being valid, in Unix seconds (for the
/// `gavel_tls_expiry_timestamp_seconds` gauges and their alerts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Expiry {
    /// The earliest `notAfter` of the server's chain.
    pub(super) server_cert: i64,
    /// The earliest `notAfter` in the client CA bundle.
    pub(super) client_ca: i64,
    /// The earliest `nextUpdate` of the CRLs, if a CRL is configured.
    pub(super) crl: Option<i64>,
}

impl Configs {
    /// Builds both configurations from `raw` (read from `paths`, which name the files in
    /// errors). `now` is the time a CRL must not have expired at.
    pub(super) fn build(
        paths: &TlsPaths,
        raw: &RawFiles,
        anonymous_watchers: bool,
        now: time::OffsetDateTime,
    ) -> Result<Configs, TlsError> {
        let provider = provider();
        let chain = certificates(&paths.cert, &raw.cert)?;
        let mut expiry = Expiry {
            server_cert: not_after_min(&chain),
            client_ca: not_after_min(&certificates(&paths.client_ca, &raw.client_ca)?),
            crl: None,
        };
        let key = private_key(&paths.key, &raw.key)?;
        let certified = Arc::new(
            CertifiedKey::from_der(chain, key, &provider)
                .map_err(|source| key_error(&paths.cert, &paths.key, source))?,
        );

        let roots = Arc::new(root_store(&paths.client_ca, &raw.client_ca)?);
        let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        if let (Some(path), Some(bytes)) = (&paths.crl, &raw.crl) {
            // Unknown status stays denied (the builder's default): see the module doc.
            let crls = crls(path, bytes, now)?;
            expiry.crl = next_update_min(&crls);
            verifier = verifier.with_crls(crls).enforce_revocation_expiration();
        }
        if anonymous_watchers {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|source| TlsError::Verifier {
            ca: paths.client_ca.clone(),
            crl: paths.crl.clone(),
            source,
        })?;

        let config = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|source| TlsError::Rustls {
                    what: "server TLS versions".to_owned(),
                    source,
                })?
                .with_client_cert_verifier(verifier.clone())
                .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone())));
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        Ok(Configs {
            quic: config(&[ALPN_GAVEL])?,
            https: config(ALPN_HTTPS)?,
            expiry,
        })
    }
}

/// The earliest `notAfter` of `certs`, Unix seconds. They come from [`certificates`], which
/// parsed each and returns at least one; were that ever broken, `i64::MIN` reads as
/// "expired" and alerts.
fn not_after_min(certs: &[CertificateDer<'_>]) -> i64 {
    certs
        .iter()
        .filter_map(|cert| x509_parser::parse_x509_certificate(cert).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .min()
        .unwrap_or(i64::MIN)
}

/// The earliest `nextUpdate` of `crls` (from [`crls`], which checked each has one).
fn next_update_min(crls: &[CertificateRevocationListDer<'_>]) -> Option<i64> {
    crls.iter()
        .filter_map(|crl| x509_parser::parse_x509_crl(crl).ok())
        .filter_map(|(_, crl)| crl.next_update().map(|at| at.timestamp()))
        .min()
}

/// The certificates of a PEM file, in file order; at least one.
pub(super) fn certificates(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::bad_file(path, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::bad_file(path, "no CERTIFICATE block"));
    }
    // rustls parses certificates only when it uses them; parse now so a bad file fails
    // the load that reads it, not a later handshake.
    for (at, cert) in chain.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| TlsError::bad_file(path, format!("certificate #{}: {e}", at + 1)))?;
    }
    Ok(chain)
}

/// The first private key of a PEM file.
pub(super) fn private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::bad_file(path, "no PRIVATE KEY block")
        }
        e => TlsError::bad_file(path, format!("bad PEM: {e}")),
    })
}

/// The trust anchors of a PEM CA bundle; every certificate must be usable as one.
pub(super) fn root_store(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (at, cert) in certificates(path, bytes)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| TlsError::bad_file(path, format!("CA certificate #{}: {e}", at + 1)))?;
    }
    Ok(roots)
}

/// The CRLs of a file (PEM `X509 CRL` blocks, or a single DER CRL), each parsed, with a
/// `nextUpdate` that is after `now`.
pub(super) fn crls(
    path: &Path,
    bytes: &[u8],
    now: time::OffsetDateTime,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    // DER starts with a SEQUENCE tag; anything else is read as PEM.
    let crls = if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    } else {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::bad_file(path, format!("bad PEM: {e}")))?
    };
    if crls.is_empty() {
        return Err(TlsError::bad_file(path, "no X509 CRL block"));
    }
    for (at, crl) in crls.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_crl(crl)
            .map_err(|e| TlsError::bad_file(path, format!("CRL #{}: {e}", at + 1)))?;
        let next_update = parsed.next_update().ok_or_else(|| {
            TlsError::bad_file(path, format!("CRL #{} has no nextUpdate", at + 1))
        })?;
        let next_update = next_update.to_datetime();
        if next_update <= now {
            return Err(TlsError::CrlExpired {
                path: path.to_owned(),
                next_update: rfc3339(next_update),
            });
        }
    }
    Ok(crls)
}

/// A time for humans and logs.
pub(super) fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// A rustls error about a certificate and its key, with the files named.
pub(super) fn key_error(cert: &Path, key: &Path, source: rustls::Error) -> TlsError {
    match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            }
        }
        source => TlsError::Rustls {
            what: format!("certificate {} with key {}", cert.display(), key.display()),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z.
    const NOW: time::OffsetDateTime =
        time::OffsetDateTime::UNIX_EPOCH.saturating_add(time::Duration::seconds(1_767_225_600));

    #[test]
    fn garbage_is_refused_naming_the_file() {
        let path = Path::new("/x/cert.pem");
        for bad in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ] {
            let error = certificates(path, bad).unwrap_err();
            assert!(error.to_string().contains("/x/cert.pem"), "{error}");
        }
        // Valid base64 that is not a certificate.
        let error = certificates(
            path,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("certificate #1"), "{error}");
        assert!(matches!(
            private_key(Path::new("k"), b"nothing"),
            Err(TlsError::BadFile { .. })
        ));
        assert!(matches!(
            crls(Path::new("c"), b"nothing", NOW),
            Err(TlsError::BadFile { .. })
        ));
        assert!(matches!(
            crls(Path::new("c"), b"\x30\x03\x02\x01\x01", NOW),
            Err(TlsError::BadFile { .. })
        ));
    }

    #[test]
    fn read_file_refuses_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pem");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(TLS_FILE_BYTES_MAX + 1).unwrap();
        assert!(matches!(read_file(&path), Err(TlsError::TooLarge { .. })));
        file.set_len(TLS_FILE_BYTES_MAX).unwrap();
        assert_eq!(read_file(&path).unwrap().len() as u64, TLS_FILE_BYTES_MAX);
        assert!(matches!(
            read_file(&dir.path().join("missing.pem")),
            Err(TlsError::Read { .. })
        ));
    }
}
