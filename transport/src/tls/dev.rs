//! A development PKI, so a newcomer runs everything with one command (`gavel cert`,
//! `gavel serve --dev`): a CA, a server certificate for the loopback names, one client
//! certificate per identity, and a signed CRL — all with rcgen, all in one directory.
//!
//! Layout of the directory:
//! - `ca.pem`, `ca.key`: the CA (valid [`CA_VALID_FOR`]);
//! - `server.pem`, `server.key`: the server (`localhost`, `127.0.0.1`, `::1` and any extra
//!   names);
//! - `crl.pem`: the CA's CRL, re-signed by [`revoke`] (and by [`ensure`] when it nears its
//!   `nextUpdate`);
//! - `clients/<role>-<id>.pem`, `clients/<role>-<id>.key`: client certificates, each naming
//!   its identity as the SAN URI `gavel://<role>/<id>`.
//!
//! Keys are written `0600`. Every file is written to a temporary name and renamed, so a
//! node watching the directory never reads half a file. Not for production: the CA key sits
//! next to everything else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;
use tracing::info;

use super::material::{self, rfc3339};
use super::{TlsError, TlsPaths, peer_identity};
use crate::identity::Identity;

/// The CA certificate's file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca.key";
/// The server certificate's file name.
pub const SERVER_CERT: &str = "server.pem";
/// The server key's file name.
pub const SERVER_KEY: &str = "server.key";
/// The CRL's file name.
pub const CRL: &str = "crl.pem";
/// The directory of client certificates, under the development directory.
pub const CLIENTS_DIR: &str = "clients";

/// How long the development CA is valid.
pub const CA_VALID_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long server and client certificates are valid by default.
pub const CERT_VALID_FOR_DEFAULT: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a CRL is valid (until its `nextUpdate`) by default.
pub const CRL_VALID_FOR_DEFAULT: Duration = Duration::from_secs(90 * 24 * 3600);
/// [`ensure`] re-signs a CRL whose `nextUpdate` is closer than this.
pub const CRL_REFRESH_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Certificates and CRLs start this long before they are made, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// The server names every development server certificate carries.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What [`generate`] makes.
#[derive(Clone, Debug)]
pub struct DevCertOptions {
    /// One client certificate per identity.
    pub identities: Vec<Identity>,
    /// Server names (DNS names or IP addresses) besides [`LOOPBACK_NAMES`].
    pub server_names: Vec<String>,
    /// Replace an existing CA (and everything it issued) instead of refusing.
    pub overwrite: bool,
    /// Validity of the server and client certificates.
    pub cert_valid_for: Duration,
    /// Time from now to the CRL's `nextUpdate`.
    pub crl_valid_for: Duration,
}

impl Default for DevCertOptions {
    fn default() -> DevCertOptions {
        DevCertOptions {
            identities: default_identities(),
            server_names: Vec::new(),
            overwrite: false,
            cert_valid_for: CERT_VALID_FOR_DEFAULT,
            crl_valid_for: CRL_VALID_FOR_DEFAULT,
        }
    }
}

/// `bidder/bidder-1`, `bidder/bidder-2`, `device/device-1`, `admin/admin`,
/// `watcher/watcher-1`.
pub fn default_identities() -> Vec<Identity> {
    [
        "gavel://bidder/bidder-1",
        "gavel://bidder/bidder-2",
        "gavel://device/device-1",
        "gavel://admin/admin",
        "gavel://watcher/watcher-1",
    ]
    .into_iter()
    .map(|uri| Identity::from_uri(uri).expect("the default identities are valid URIs"))
    .collect()
}

/// A client certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// The identity its SAN URI names.
    pub identity: Identity,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, `0600`).
    pub key: PathBuf,
}

/// The files of a development PKI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCerts {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The CA certificate: the client CA bundle of the server and the roots of clients.
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// The CA's CRL.
    pub crl: PathBuf,
    /// The client certificates, by file name.
    pub clients: Vec<ClientCert>,
}

impl DevCerts {
    fn at(dir: &Path) -> DevCerts {
        DevCerts {
            dir: dir.to_owned(),
            ca_cert: dir.join(CA_CERT),
            ca_key: dir.join(CA_KEY),
            server_cert: dir.join(SERVER_CERT),
            server_key: dir.join(SERVER_KEY),
            crl: dir.join(CRL),
            clients: Vec::new(),
        }
    }

    /// The server's TLS files: this server certificate, the CA as client CA, this CRL.
    pub fn tls_paths(&self) -> TlsPaths {
        TlsPaths {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: self.ca_cert.clone(),
            crl: Some(self.crl.clone()),
        }
    }

    /// The client certificate of `identity`, if one was made.
    pub fn client(&self, identity: &Identity) -> Option<&ClientCert> {
        self.clients.iter().find(|c| &c.identity == identity)
    }

    /// Every file, for printing what was written.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![
            self.ca_cert.as_path(),
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
            &self.crl,
        ];
        for client in &self.clients {
            files.push(&client.cert);
            files.push(&client.key);
        }
        files
    }
}

/// Makes a new CA in `dir` (created if missing), a server certificate, a client certificate
/// per identity and an empty CRL. Refuses if `dir` already has a CA, unless
/// `options.overwrite` (which also removes the old client certificates).
pub fn generate(dir: &Path, options: &DevCertOptions) -> Result<DevCerts, TlsError> {
    let mut certs = DevCerts::at(dir);
    if certs.ca_cert.exists() {
        if !options.overwrite {
            return Err(TlsError::AlreadyExists(certs.ca_cert));
        }
        remove_clients(dir)?;
    }
    create_dir(&dir.join(CLIENTS_DIR))?;

    let now = OffsetDateTime::now_utc();
    let ca_key = generate_key("the CA key")?;
    let mut params = CertificateParams::default();
    // Unique: CRLs are matched to certificates by issuer name, so two development CAs in
    // one bundle must not share one.
    let created = now.replace_nanosecond(0).unwrap_or(now);
    let tag: u32 = rand::random();
    params.distinguished_name = name(&format!(
        "Gavel development CA {} {tag:08x}",
        rfc3339(created)
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_VALID_FOR);
    let ca = CertifiedIssuer::self_signed(params, ca_key).map_err(generate_error("the CA"))?;
    write_file(&certs.ca_cert, ca.pem().as_bytes(), PUBLIC)?;
    write_file(&certs.ca_key, ca.key().serialize_pem().as_bytes(), SECRET)?;

    issue_server(&certs, &ca, &options.server_names, options.cert_valid_for)?;
    for identity in &options.identities {
        certs
            .clients
            .push(issue_client(dir, &ca, identity, options.cert_valid_for)?);
    }
    sign_crl(&certs.crl, &ca, &[], 1, now, options.crl_valid_for)?;
    certs.clients.sort_by(|a, b| a.cert.cmp(&b.cert));
    info!(dir = %dir.display(), clients = certs.clients.len(), "development certificates generated");
    Ok(certs)
}

/// The development PKI in `dir`: generated with the defaults on first use, reused afterwards.
/// A missing server certificate is issued again; a CRL that is missing or within
/// [`CRL_REFRESH_BEFORE`] of its `nextUpdate` is re-signed with the same revocations.
pub fn ensure(dir: &Path) -> Result<DevCerts, TlsError> {
    let mut certs = DevCerts::at(dir);
    if !certs.ca_cert.exists() {
        return generate(dir, &DevCertOptions::default());
    }
    let ca = load_ca(&certs)?;
    if !certs.server_cert.exists() || !certs.server_key.exists() {
        issue_server(&certs, &ca, &[], CERT_VALID_FOR_DEFAULT)?;
    }
    let now = OffsetDateTime::now_utc();
    let crl = read_crl(&certs.crl)?;
    let fresh = crl.as_ref().is_some_and(|crl| {
        crl.next_update
            .is_some_and(|next| next - now > CRL_REFRESH_BEFORE)
    });
    if !fresh {
        let (revoked, number) = crl
            .map(|crl| (crl.revoked, crl.next_number))
            .unwrap_or_default();
        sign_crl(
            &certs.crl,
            &ca,
            &revoked,
            number,
            now,
            CRL_VALID_FOR_DEFAULT,
        )?;
    }
    certs.clients = list_clients(dir)?;
    Ok(certs)
}

/// Adds `cert`'s serial to the CA's CRL in `dir` and re-signs it (a fresh `nextUpdate`, the
/// next CRL number). Revoking a revoked certificate changes nothing.
pub fn revoke(dir: &Path, cert: &Path) -> Result<(), TlsError> {
    let certs = DevCerts::at(dir);
    let ca = load_ca(&certs)?;
    let cert_der = material::certificates(cert, &material::read_file(cert)?)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::bad_file(cert, "no certificate"))?;
    let ca_der = material::certificates(&certs.ca_cert, &material::read_file(&certs.ca_cert)?)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::bad_file(&certs.ca_cert, "no certificate"))?;
    // Both parsed by `material::certificates` already.
    let parse = |path: &Path, der| {
        x509_parser::parse_x509_certificate(der)
            .map(|(_, parsed)| parsed)
            .map_err(|e| TlsError::bad_file(path, e.to_string()))
    };
    let (parsed, parsed_ca) = (parse(cert, &cert_der)?, parse(&certs.ca_cert, &ca_der)?);
    // The name, and the key id where both have one (two development CAs may share a name).
    let (authority_key, _) = key_ids(&parsed);
    let (_, ca_key) = key_ids(&parsed_ca);
    let same_key = match (authority_key, ca_key) {
        (Some(authority), Some(ca)) => authority == ca,
        _ => true,
    };
    if parsed.issuer().as_raw() != parsed_ca.subject().as_raw() || !same_key {
        return Err(TlsError::NotIssuedByCa {
            cert: cert.to_owned(),
            ca: certs.ca_cert,
        });
    }
    let serial = parsed.raw_serial().to_vec();

    let now = OffsetDateTime::now_utc();
    let crl = read_crl(&certs.crl)?.unwrap_or_default();
    if crl
        .revoked
        .iter()
        .any(|r| r.serial_number.as_ref() == serial)
    {
        info!(cert = %cert.display(), "already revoked");
        return Ok(());
    }
    let mut revoked = crl.revoked;
    revoked.push(RevokedCertParams {
        serial_number: SerialNumber::from_slice(&serial),
        revocation_time: now,
        reason_code: None,
        invalidity_date: None,
    });
    sign_crl(
        &certs.crl,
        &ca,
        &revoked,
        crl.next_number,
        now,
        crl.valid_for.unwrap_or(CRL_VALID_FOR_DEFAULT),
    )?;
    info!(cert = %cert.display(), crl = %certs.crl.display(), "certificate revoked");
    Ok(())
}

/// Issues a client certificate for `identity` from the CA in `dir`, into
/// `clients/<role>-<id>.pem`. Refuses if that file exists (revoke and remove it first).
pub fn issue(dir: &Path, identity: &Identity) -> Result<ClientCert, TlsError> {
    let certs = DevCerts::at(dir);
    let ca = load_ca(&certs)?;
    let (cert, _) = client_paths(dir, identity);
    if cert.exists() {
        return Err(TlsError::AlreadyExists(cert));
    }
    create_dir(&dir.join(CLIENTS_DIR))?;
    issue_client(dir, &ca, identity, CERT_VALID_FOR_DEFAULT)
}

/// Re-signs the CRL of the CA in `dir` with the same revocations and a `nextUpdate` of
/// `now + valid_for` (tests use a short one to watch it expire).
pub fn resign_crl(dir: &Path, valid_for: Duration) -> Result<(), TlsError> {
    let certs = DevCerts::at(dir);
    let ca = load_ca(&certs)?;
    let crl = read_crl(&certs.crl)?.unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    sign_crl(
        &certs.crl,
        &ca,
        &crl.revoked,
        crl.next_number,
        now,
        valid_for,
    )
}

/// A certificate's authority key id and subject key id, where it has them.
fn key_ids<'a>(
    cert: &x509_parser::certificate::X509Certificate<'a>,
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    use x509_parser::extensions::ParsedExtension;
    let (mut authority, mut subject) = (None, None);
    for extension in cert.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority = aki.key_identifier.as_ref().map(|id| id.0);
            }
            ParsedExtension::SubjectKeyIdentifier(id) => subject = Some(id.0),
            _ => {}
        }
    }
    (authority, subject)
}

type Ca = Issuer<'static, KeyPair>;

fn load_ca(certs: &DevCerts) -> Result<Ca, TlsError> {
    let key = text(&certs.ca_key)?;
    let key =
        KeyPair::from_pem(&key).map_err(|e| TlsError::bad_file(&certs.ca_key, e.to_string()))?;
    let cert = text(&certs.ca_cert)?;
    Issuer::from_ca_cert_pem(&cert, key)
        .map_err(|e| TlsError::bad_file(&certs.ca_cert, e.to_string()))
}

fn text(path: &Path) -> Result<String, TlsError> {
    String::from_utf8(material::read_file(path)?)
        .map_err(|_| TlsError::bad_file(path, "not UTF-8 text"))
}

fn issue_server(
    certs: &DevCerts,
    ca: &Issuer<'_, KeyPair>,
    extra_names: &[String],
    valid_for: Duration,
) -> Result<(), TlsError> {
    let names: Vec<String> = LOOPBACK_NAMES
        .iter()
        .map(|n| n.to_string())
        .chain(extra_names.iter().cloned())
        .collect();
    let what = "the server certificate";
    let mut params = CertificateParams::new(names).map_err(|source| TlsError::Generate {
        what: what.to_owned(),
        source,
    })?;
    params.distinguished_name = name("Gavel development server");
    let leaf = Leaf {
        what,
        usage: ExtendedKeyUsagePurpose::ServerAuth,
        valid_for,
        cert: &certs.server_cert,
        key: &certs.server_key,
    };
    leaf.issue(params, ca)
}

fn issue_client(
    dir: &Path,
    ca: &Issuer<'_, KeyPair>,
    identity: &Identity,
    valid_for: Duration,
) -> Result<ClientCert, TlsError> {
    let what = format!("the certificate of {identity}");
    let uri = rcgen::string::Ia5String::try_from(identity.uri()).map_err(|source| {
        TlsError::Generate {
            what: what.clone(),
            source,
        }
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&identity.to_string());
    params.subject_alt_names = vec![SanType::URI(uri)];
    let (cert, key) = client_paths(dir, identity);
    let leaf = Leaf {
        what: &what,
        usage: ExtendedKeyUsagePurpose::ClientAuth,
        valid_for,
        cert: &cert,
        key: &key,
    };
    leaf.issue(params, ca)?;
    Ok(ClientCert {
        identity: identity.clone(),
        cert,
        key,
    })
}

/// An end-entity certificate to issue, and where it goes.
struct Leaf<'a> {
    what: &'a str,
    usage: ExtendedKeyUsagePurpose,
    valid_for: Duration,
    cert: &'a Path,
    key: &'a Path,
}

impl Leaf<'_> {
    /// Completes `params` (names and SANs set by the caller), signs it with a new key, and
    /// writes the certificate and the key.
    fn issue(
        &self,
        mut params: CertificateParams,
        ca: &Issuer<'_, KeyPair>,
    ) -> Result<(), TlsError> {
        let error = |source| TlsError::Generate {
            what: self.what.to_owned(),
            source,
        };
        params.extended_key_usages = vec![self.usage.clone()];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, OffsetDateTime::now_utc(), self.valid_for);
        let key = KeyPair::generate().map_err(error)?;
        let cert = params.signed_by(&key, ca).map_err(error)?;
        write_file(self.cert, cert.pem().as_bytes(), PUBLIC)?;
        write_file(self.key, key.serialize_pem().as_bytes(), SECRET)
    }
}

fn client_paths(dir: &Path, identity: &Identity) -> (PathBuf, PathBuf) {
    // Ids are [A-Za-z0-9._-]{1,32} (BidderId), so the name is a plain file name.
    let stem = format!("{}-{}", identity.role.as_str(), identity.id.as_str());
    let clients = dir.join(CLIENTS_DIR);
    (
        clients.join(format!("{stem}.pem")),
        clients.join(format!("{stem}.key")),
    )
}

/// The client certificates in `dir/clients` that have a key beside them, by file name.
fn list_clients(dir: &Path) -> Result<Vec<ClientCert>, TlsError> {
    let clients_dir = dir.join(CLIENTS_DIR);
    let entries = match std::fs::read_dir(&clients_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TlsError::Read {
                path: clients_dir,
                source,
            });
        }
    };
    let mut clients = Vec::new();
    for entry in entries {
        let cert = entry
            .map_err(|source| TlsError::Read {
                path: clients_dir.clone(),
                source,
            })?
            .path();
        let key = cert.with_extension("key");
        if cert.extension().is_none_or(|e| e != "pem") || !key.exists() {
            continue;
        }
        let chain = material::certificates(&cert, &material::read_file(&cert)?)?;
        let identity =
            peer_identity(&chain).map_err(|e| TlsError::bad_file(&cert, e.to_string()))?;
        clients.push(ClientCert {
            identity,
            cert,
            key,
        });
    }
    clients.sort_by(|a, b| a.cert.cmp(&b.cert));
    Ok(clients)
}

fn remove_clients(dir: &Path) -> Result<(), TlsError> {
    for client in list_clients(dir)? {
        for path in [client.cert, client.key] {
            std::fs::remove_file(&path).map_err(|source| TlsError::Write { path, source })?;
        }
    }
    Ok(())
}

/// What a CRL file holds that re-signing it keeps.
#[derive(Default)]
struct CrlState {
    revoked: Vec<RevokedCertParams>,
    /// The CRL number the next CRL takes.
    next_number: u64,
    next_update: Option<OffsetDateTime>,
    /// `nextUpdate - thisUpdate`.
    valid_for: Option<Duration>,
}

fn read_crl(path: &Path) -> Result<Option<CrlState>, TlsError> {
    let bytes = match material::read_file(path) {
        Ok(bytes) => bytes,
        Err(TlsError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // Read even if expired: re-signing an expired CRL is how it gets fresh.
    let past = OffsetDateTime::UNIX_EPOCH;
    let der = material::crls(path, &bytes, past)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::bad_file(path, "no CRL"))?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| TlsError::bad_file(path, e.to_string()))?;
    let number = crl.crl_number().map(|n| n.to_u64_digits());
    let next_number = match number.as_deref() {
        None | Some([]) => 1,
        Some([n]) => n.saturating_add(1),
        Some(_) => return Err(TlsError::bad_file(path, "CRL number beyond 64 bits")),
    };
    let this_update = crl.last_update().to_datetime();
    let next_update = crl.next_update().map(|t| t.to_datetime());
    Ok(Some(CrlState {
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        next_number,
        next_update,
        // `thisUpdate` is backdated, so the period asked for is the span less that.
        valid_for: next_update.and_then(|next| (next - this_update - BACKDATE).try_into().ok()),
    }))
}

fn sign_crl(
    path: &Path,
    ca: &Issuer<'_, KeyPair>,
    revoked: &[RevokedCertParams],
    number: u64,
    now: OffsetDateTime,
    valid_for: Duration,
) -> Result<(), TlsError> {
    let params = CertificateRevocationListParams {
        this_update: now - BACKDATE,
        next_update: now + valid_for,
        crl_number: SerialNumber::from(number.max(1)),
        issuing_distribution_point: None,
        revoked_certs: revoked.to_vec(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(ca).map_err(generate_error("the CRL"))?;
    let pem = crl.pem().map_err(generate_error("the CRL"))?;
    write_file(path, pem.as_bytes(), PUBLIC)?;
    info!(crl = %path.display(), revoked = revoked.len(), next_update = %rfc3339(now + valid_for), "CRL signed");
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Gavel development");
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, now: OffsetDateTime, valid_for: Duration) {
    params.not_before = now - BACKDATE;
    params.not_after = now + valid_for;
    params.serial_number = Some(random_serial());
}

/// 16 random bytes, positive and without a leading zero byte (RFC 5280 §4.1.2.2).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn generate_key(what: &'static str) -> Result<KeyPair, TlsError> {
    KeyPair::generate().map_err(generate_error(what))
}

fn generate_error(what: &'static str) -> impl Fn(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate {
        what: what.to_owned(),
        source,
    }
}

/// Mode of certificates and CRLs.
const PUBLIC: u32 = 0o644;
/// Mode of private keys.
const SECRET: u32 = 0o600;

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `bytes` to a temporary file beside `path` with `mode` (on unix), then renames it
/// over `path`: a reader sees the old file or the new one, never half of one.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    let write_error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error(std::io::ErrorKind::InvalidInput.into()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    // `mode` applies only when the file is created, so never reuse a stale temporary.
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write_error(e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temp).map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    std::fs::rename(&temp, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_signing_a_crl_keeps_its_revocations_and_period_and_counts_up() {
        let dir = tempfile::tempdir().unwrap();
        let options = DevCertOptions {
            crl_valid_for: Duration::from_secs(3600),
            ..DevCertOptions::default()
        };
        let certs = generate(dir.path(), &options).unwrap();
        let first = read_crl(&certs.crl).unwrap().unwrap();
        assert_eq!(first.next_number, 2);
        assert!(first.revoked.is_empty());
        assert_eq!(first.valid_for, Some(Duration::from_secs(3600)));

        revoke(dir.path(), &certs.clients[0].cert).unwrap();
        revoke(dir.path(), &certs.clients[1].cert).unwrap();
        revoke(dir.path(), &certs.clients[1].cert).unwrap();
        let crl = read_crl(&certs.crl).unwrap().unwrap();
        assert_eq!(crl.next_number, 4);
        assert_eq!(crl.revoked.len(), 2);
        assert_eq!(crl.valid_for, Some(Duration::from_secs(3600)));

        // `ensure` re-signs a CRL near its nextUpdate (an hour < CRL_REFRESH_BEFORE),
        // keeping the revocations.
        ensure(dir.path()).unwrap();
        let refreshed = read_crl(&certs.crl).unwrap().unwrap();
        assert_eq!(refreshed.next_number, 5);
        assert_eq!(refreshed.revoked, crl.revoked);
        assert_eq!(refreshed.valid_for, Some(CRL_VALID_FOR_DEFAULT));
        // And leaves a fresh one alone.
        ensure(dir.path()).unwrap();
        assert_eq!(read_crl(&certs.crl).unwrap().unwrap().next_number, 5);
    }
}
