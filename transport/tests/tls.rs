//! TLS of the node over real sockets on 127.0.0.1: client-certificate verification against
//! the development CA and its CRL, anonymous watchers, reload (by call, by the file watcher,
//! by SIGHUP), and the identity a certificate names.
//!
//! The test server accepts TCP, runs the rustls handshake with the *current*
//! `https_config()` (as the HTTPS listener does), and answers one line: the peer's identity,
//! `anonymous`, or `identity error: …`. A client learns it was rejected by failing to read
//! that line: in TLS 1.3 the server checks the client certificate after the client's side of
//! the handshake is done, so the refusal arrives as an alert on the first read.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gavel_transport::Identity;
use gavel_transport::tls::dev::{self, DevCertOptions, DevCerts};
use gavel_transport::tls::{
    ALPN_GAVEL, ALPN_HTTPS, ServerTls, TlsError, client_config, peer_identity,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn identity(text: &str) -> Identity {
    Identity::from_uri(&format!("gavel://{text}")).unwrap()
}

/// A development PKI in a fresh temporary directory.
fn pki() -> (tempfile::TempDir, DevCerts) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev::generate(dir.path(), &DevCertOptions::default()).unwrap();
    (dir, certs)
}

/// Serves TLS on 127.0.0.1 until dropped: each connection gets one line naming its peer.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Why the server failed handshakes, in order.
    refusals: tokio::sync::Mutex<mpsc::Receiver<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(tls: ServerTls) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (refused, refusals) = mpsc::channel(REFUSALS_MAX);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.https_config());
            let refused = refused.clone();
            tokio::spawn(async move {
                let mut stream = match acceptor.accept(stream).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        let _ = refused.try_send(e.to_string());
                        return;
                    }
                };
                let line = match stream.get_ref().1.peer_certificates() {
                    None => "anonymous".to_owned(),
                    Some(chain) => match peer_identity(chain) {
                        Ok(identity) => identity.to_string(),
                        Err(e) => format!("identity error: {e}"),
                    },
                };
                let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Server {
        addr,
        task,
        refusals: tokio::sync::Mutex::new(refusals),
    }
}

/// Most handshake refusals a test server remembers.
const REFUSALS_MAX: usize = 64;

/// What a successful connection saw.
#[derive(Debug)]
struct Served {
    /// The server's line: the identity it saw.
    peer: String,
    /// The server's end-entity certificate.
    server_cert: CertificateDer<'static>,
    /// The negotiated ALPN protocol.
    alpn: Option<Vec<u8>>,
}

/// Connects with `config`; `Err` is the reason the connection failed.
async fn connect(addr: SocketAddr, config: rustls::ClientConfig) -> Result<Served, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, connection) = stream.get_ref();
        let server_cert = connection.peer_certificates().unwrap()[0].clone();
        let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
        let mut peer = String::new();
        let read = BufReader::new(stream)
            .read_line(&mut peer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if read == 0 {
            return Err("closed without an answer".to_owned());
        }
        Ok(Served {
            peer: peer.trim_end().to_owned(),
            server_cert,
            alpn,
        })
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// A client of `certs`'s CA presenting `who`'s certificate (or none).
fn client(certs: &DevCerts, who: Option<&str>) -> rustls::ClientConfig {
    client_as(certs, who.map(|who| certs.client(&identity(who)).unwrap()))
}

fn client_as(certs: &DevCerts, cert: Option<&dev::ClientCert>) -> rustls::ClientConfig {
    let cert_key = cert.map(|c| (c.cert.as_path(), c.key.as_path()));
    client_config(&certs.ca_cert, cert_key, ALPN_HTTPS).unwrap()
}

async fn peer(server: &Server, config: rustls::ClientConfig) -> Result<String, String> {
    connect(server.addr, config).await.map(|served| served.peer)
}

/// Connects with `config`, expecting the server to refuse the handshake; returns the
/// server's reason.
async fn refused(server: &Server, config: rustls::ClientConfig) -> String {
    let client_error = peer(server, config).await.unwrap_err();
    let reason = tokio::time::timeout(WAIT, server.refusals.lock().await.recv())
        .await
        .expect("the server refused nothing")
        .unwrap();
    eprintln!("refused: {reason} (client: {client_error})");
    reason
}

#[tokio::test]
async fn a_valid_client_certificate_is_accepted_and_names_its_identity() {
    let (_dir, certs) = pki();
    let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
    let server = serve(tls.clone()).await;
    for who in [
        "bidder/bidder-1",
        "bidder/bidder-2",
        "device/device-1",
        "admin/admin",
        "watcher/watcher-1",
    ] {
        let served = connect(server.addr, client(&certs, Some(who)))
            .await
            .unwrap();
        assert_eq!(served.peer, who);
        assert_eq!(served.alpn.as_deref(), Some(&b"h2"[..]));
    }
    assert_eq!(tls.quic_config().alpn_protocols, vec![ALPN_GAVEL.to_vec()]);
    assert_eq!(
        tls.https_config().alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

#[tokio::test]
async fn tls_1_2_is_refused() {
    let (_dir, certs) = pki();
    let server = serve(ServerTls::load(certs.tls_paths(), true).unwrap()).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_cert(&certs.ca_cert)).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let reason = refused(&server, tls12).await;
    assert!(reason.contains("Tls12NotOfferedOrEnabled"), "{reason}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_rejected() {
    let (_dir, certs) = pki();
    let (_other_dir, other) = pki();
    for anonymous_watchers in [false, true] {
        let server = serve(ServerTls::load(certs.tls_paths(), anonymous_watchers).unwrap()).await;
        // Trusts the right server, presents a bidder certificate of the other CA.
        let stranger = other.client(&identity("bidder/bidder-1")).unwrap();
        let reason = refused(&server, client_as(&certs, Some(stranger))).await;
        assert!(reason.contains("UnknownIssuer"), "{reason}");
    }
}

/// A bidder certificate from the development CA in `certs` that expired an hour ago (valid
/// for one day before that), written next to the others.
fn expired_bidder_certificate(certs: &DevCerts) -> dev::ClientCert {
    let ca_key = std::fs::read_to_string(&certs.ca_key).unwrap();
    let ca_cert = std::fs::read_to_string(&certs.ca_cert).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca_cert, rcgen::KeyPair::from_pem(&ca_key).unwrap())
            .unwrap();
    let identity = identity("bidder/expired-1");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(identity.uri()).unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now - time::Duration::hours(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (certs.dir.join("expired.pem"), certs.dir.join("expired.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    dev::ClientCert {
        identity,
        cert: cert_path,
        key: key_path,
    }
}

#[tokio::test]
async fn an_expired_client_certificate_is_rejected() {
    let (_dir, certs) = pki();
    let expired = expired_bidder_certificate(&certs);
    for anonymous_watchers in [false, true] {
        let server = serve(ServerTls::load(certs.tls_paths(), anonymous_watchers).unwrap()).await;
        let reason = refused(&server, client_as(&certs, Some(&expired))).await;
        assert!(reason.contains("certificate expired"), "{reason}");
        // The same CA's valid certificate still gets in.
        assert_eq!(
            peer(&server, client(&certs, Some("bidder/bidder-1")))
                .await
                .unwrap(),
            "bidder/bidder-1"
        );
    }
}

#[tokio::test]
async fn no_certificate_is_rejected_unless_anonymous_watchers_are_allowed() {
    let (_dir, certs) = pki();
    let strict = serve(ServerTls::load(certs.tls_paths(), false).unwrap()).await;
    let reason = refused(&strict, client(&certs, None)).await;
    assert!(reason.contains("no certificates"), "{reason}");

    let open = serve(ServerTls::load(certs.tls_paths(), true).unwrap()).await;
    assert_eq!(
        peer(&open, client(&certs, None)).await.unwrap(),
        "anonymous"
    );
    // Certificates are still verified and still name their identity.
    assert_eq!(
        peer(&open, client(&certs, Some("bidder/bidder-1")))
            .await
            .unwrap(),
        "bidder/bidder-1"
    );
}

#[tokio::test]
async fn a_revoked_certificate_is_rejected_after_reload() {
    let (_dir, certs) = pki();
    for anonymous_watchers in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let certs = dev::generate(dir.path(), &DevCertOptions::default()).unwrap();
        let tls = ServerTls::load(certs.tls_paths(), anonymous_watchers).unwrap();
        let server = serve(tls.clone()).await;
        let bidder = certs.client(&identity("bidder/bidder-1")).unwrap();
        assert!(
            peer(&server, client(&certs, Some("bidder/bidder-1")))
                .await
                .is_ok()
        );

        dev::revoke(&certs.dir, &bidder.cert).unwrap();
        dev::revoke(&certs.dir, &bidder.cert).unwrap(); // Again: no change, no error.
        // Not yet reloaded: the old CRL still applies.
        assert!(
            peer(&server, client(&certs, Some("bidder/bidder-1")))
                .await
                .is_ok()
        );
        let mut generation = tls.subscribe();
        tls.reload().unwrap();
        assert!(generation.has_changed().unwrap());
        assert_eq!(*generation.borrow_and_update(), 1);

        let reason = refused(&server, client(&certs, Some("bidder/bidder-1"))).await;
        assert!(reason.contains("Revoked"), "{reason}");
        // Others are unaffected.
        assert_eq!(
            peer(&server, client(&certs, Some("bidder/bidder-2")))
                .await
                .unwrap(),
            "bidder/bidder-2"
        );
    }
    // Revoking a certificate of another CA is refused.
    let (_other_dir, other) = pki();
    let stranger = other.client(&identity("bidder/bidder-1")).unwrap();
    assert!(matches!(
        dev::revoke(&certs.dir, &stranger.cert),
        Err(TlsError::NotIssuedByCa { .. })
    ));
}

#[tokio::test]
async fn a_certificate_whose_ca_has_no_crl_in_the_file_is_rejected() {
    // A bundle of two CAs with only the first one's CRL: the second CA's clients have an
    // unknown revocation status, which fails closed.
    let (_dir, certs) = pki();
    let (_other_dir, other) = pki();
    let bundle_dir = tempfile::tempdir().unwrap();
    let concat = |name: &str, parts: &[&Path]| {
        let path = bundle_dir.path().join(name);
        let bytes: Vec<u8> = parts
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect();
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut paths = certs.tls_paths();
    paths.client_ca = concat("bundle.pem", &[&certs.ca_cert, &other.ca_cert]);
    paths.crl = Some(concat("crls.pem", &[&certs.crl]));
    let tls = ServerTls::load(paths.clone(), false).unwrap();
    let server = serve(tls.clone()).await;
    let stranger = other.client(&identity("bidder/bidder-1")).unwrap();
    assert_eq!(
        peer(&server, client(&certs, Some("bidder/bidder-1")))
            .await
            .unwrap(),
        "bidder/bidder-1"
    );
    let reason = refused(&server, client_as(&certs, Some(stranger))).await;
    assert!(reason.contains("UnknownRevocationStatus"), "{reason}");

    // With the second CA's CRL in the file too, its clients get in.
    concat("crls.pem", &[&certs.crl, &other.crl]);
    tls.reload().unwrap();
    assert_eq!(
        peer(&server, client_as(&certs, Some(stranger)))
            .await
            .unwrap(),
        "bidder/bidder-1"
    );
}

#[tokio::test]
async fn an_expired_crl_rejects_client_certificates() {
    let (_dir, certs) = pki();
    // A CRL whose nextUpdate is a moment away: good now, expired soon.
    dev::resign_crl(&certs.dir, Duration::from_secs(2)).unwrap();
    let tls = ServerTls::load(certs.tls_paths(), true).unwrap();
    let server = serve(tls.clone()).await;
    assert!(
        peer(&server, client(&certs, Some("bidder/bidder-1")))
            .await
            .is_ok()
    );

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let reason = refused(&server, client(&certs, Some("bidder/bidder-1"))).await;
    assert!(reason.contains("revocation list expired"), "{reason}");
    // No certificate, no revocation check: an anonymous watcher still gets in.
    assert_eq!(
        peer(&server, client(&certs, None)).await.unwrap(),
        "anonymous"
    );

    // An already expired CRL is refused at load and at reload, naming the file.
    let error = ServerTls::load(certs.tls_paths(), false).unwrap_err();
    assert!(matches!(error, TlsError::CrlExpired { .. }), "{error}");
    assert!(error.to_string().contains("crl.pem"), "{error}");
    assert!(matches!(tls.reload(), Err(TlsError::CrlExpired { .. })));

    // A fresh CRL heals it on reload.
    dev::resign_crl(&certs.dir, Duration::from_secs(3600)).unwrap();
    tls.reload().unwrap();
    assert!(
        peer(&server, client(&certs, Some("bidder/bidder-1")))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_after_reload() {
    let (_dir, certs) = pki();
    let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
    let server = serve(tls.clone()).await;
    let bidder = || client(&certs, Some("bidder/bidder-1"));
    let before = connect(server.addr, bidder()).await.unwrap().server_cert;
    assert_eq!(before, pem_cert(&certs.server_cert));

    // `ensure` issues a missing server certificate again from the same CA.
    std::fs::remove_file(&certs.server_cert).unwrap();
    dev::ensure(&certs.dir).unwrap();
    let rotated = pem_cert(&certs.server_cert);
    assert_ne!(rotated, before);
    assert_eq!(
        connect(server.addr, bidder()).await.unwrap().server_cert,
        before
    );

    tls.reload().unwrap();
    assert_eq!(
        connect(server.addr, bidder()).await.unwrap().server_cert,
        rotated
    );
}

#[tokio::test]
async fn a_bad_file_on_reload_keeps_the_last_good_configuration() {
    let (_dir, certs) = pki();
    let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
    let server = serve(tls.clone()).await;
    let bidder = || client(&certs, Some("bidder/bidder-1"));
    let served = connect(server.addr, bidder()).await.unwrap().server_cert;
    let generation = tls.subscribe();

    let good_cert = std::fs::read(&certs.server_cert).unwrap();
    std::fs::write(&certs.server_cert, b"-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    let error = tls.reload().unwrap_err();
    assert!(matches!(error, TlsError::BadFile { .. }), "{error}");
    assert!(error.to_string().contains("server.pem"), "{error}");
    std::fs::write(&certs.server_cert, &good_cert).unwrap();

    // A key that is not the certificate's.
    let good_key = std::fs::read(&certs.server_key).unwrap();
    std::fs::copy(
        &certs.client(&identity("admin/admin")).unwrap().key,
        &certs.server_key,
    )
    .unwrap();
    assert!(matches!(tls.reload(), Err(TlsError::KeyMismatch { .. })));
    std::fs::write(&certs.server_key, &good_key).unwrap();

    // A CA bundle and a CRL that are not what they claim.
    for path in [&certs.ca_cert, &certs.crl] {
        let good = std::fs::read(path).unwrap();
        std::fs::write(path, b"not pem at all").unwrap();
        let error = tls.reload().unwrap_err();
        assert!(
            error.to_string().contains(&*path.to_string_lossy()),
            "{error}"
        );
        std::fs::write(path, &good).unwrap();
    }
    // A missing file.
    std::fs::rename(&certs.crl, certs.dir.join("crl.moved")).unwrap();
    assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
    std::fs::rename(certs.dir.join("crl.moved"), &certs.crl).unwrap();

    // Through all of it the old configuration kept serving.
    assert!(!generation.has_changed().unwrap());
    let after = connect(server.addr, bidder()).await.unwrap();
    assert_eq!(after.server_cert, served);
    assert_eq!(after.peer, "bidder/bidder-1");
}

#[tokio::test]
async fn the_watcher_reloads_changed_files_even_after_a_torn_write() {
    let (_dir, certs) = pki();
    let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
    let server = serve(tls.clone()).await;
    let shutdown = CancellationToken::new();
    let reloader = tls.spawn_reloader(Duration::from_millis(50), shutdown.clone());
    let mut generation = tls.subscribe();

    // Nothing changed: no reload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!generation.has_changed().unwrap());

    // A new CRL revoking bidder-1, first seen half written (as a non-atomic writer leaves
    // it), then whole.
    let good_crl = std::fs::read(&certs.crl).unwrap();
    let bidder = certs.client(&identity("bidder/bidder-1")).unwrap();
    dev::revoke(&certs.dir, &bidder.cert).unwrap();
    let revoking_crl = std::fs::read(&certs.crl).unwrap();
    assert_ne!(good_crl, revoking_crl);
    std::fs::write(&certs.crl, &revoking_crl[..revoking_crl.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !generation.has_changed().unwrap(),
        "a torn CRL must not load"
    );
    assert!(
        peer(&server, client(&certs, Some("bidder/bidder-1")))
            .await
            .is_ok()
    );

    std::fs::write(&certs.crl, &revoking_crl).unwrap();
    tokio::time::timeout(WAIT, generation.changed())
        .await
        .unwrap()
        .unwrap();
    let reason = refused(&server, client(&certs, Some("bidder/bidder-1"))).await;
    assert!(reason.contains("Revoked"), "{reason}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, reloader).await.unwrap().unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads() {
    let (_dir, certs) = pki();
    let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
    let shutdown = CancellationToken::new();
    // A poll far in the future: only the signal can cause the reload.
    let reloader = tls.spawn_reloader(Duration::from_secs(3600), shutdown.clone());
    let mut generation = tls.subscribe();
    std::fs::remove_file(&certs.server_cert).unwrap();
    dev::ensure(&certs.dir).unwrap();

    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(WAIT, generation.changed())
        .await
        .unwrap()
        .unwrap();
    shutdown.cancel();
    tokio::time::timeout(WAIT, reloader).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_quic_handshake_uses_the_quic_configuration() {
    let (_dir, certs) = pki();
    let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls.quic_config()).unwrap(),
    ));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();

    let bidder = certs.client(&identity("bidder/bidder-1")).unwrap();
    let client_tls = client_config(
        &certs.ca_cert,
        Some((&bidder.cert, &bidder.key)),
        &[ALPN_GAVEL],
    )
    .unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
    )));

    let accept = async {
        let connection = server.accept().await.unwrap().await.unwrap();
        let chain = connection
            .peer_identity()
            .unwrap()
            .downcast::<Vec<CertificateDer<'static>>>()
            .unwrap();
        peer_identity(&chain).unwrap()
    };
    let connect = async { client.connect(addr, "localhost").unwrap().await.unwrap() };
    let (seen, _connection) = tokio::time::timeout(WAIT, async { tokio::join!(accept, connect) })
        .await
        .unwrap();
    assert_eq!(seen, identity("bidder/bidder-1"));
}

#[test]
fn peer_identity_needs_exactly_one_gavel_uri() {
    let cert = |sans: Vec<rcgen::SanType>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    };
    let uri = |text: &str| rcgen::SanType::URI(text.try_into().unwrap());
    let dns = rcgen::SanType::DnsName("bidder.example".try_into().unwrap());

    assert_eq!(
        peer_identity(&[cert(vec![
            dns.clone(),
            uri("https://x"),
            uri("gavel://device/d-1")
        ])]),
        Ok(identity("device/d-1"))
    );
    use gavel_transport::IdentityError as E;
    assert_eq!(peer_identity(&[]), Err(E::Missing));
    assert_eq!(peer_identity(&[cert(vec![])]), Err(E::Missing));
    assert_eq!(
        peer_identity(&[cert(vec![dns, uri("https://bidder/x")])]),
        Err(E::Missing)
    );
    assert_eq!(
        peer_identity(&[cert(vec![uri("gavel://bidder/a"), uri("gavel://bidder/b")])]),
        Err(E::Ambiguous)
    );
    assert_eq!(
        peer_identity(&[cert(vec![uri("gavel://bidder/a"), uri("gavel://bidder/a")])]),
        Err(E::Ambiguous)
    );
    assert!(matches!(
        peer_identity(&[cert(vec![uri("gavel://king/x")])]),
        Err(E::UnknownRole(_))
    ));
    assert!(matches!(
        peer_identity(&[CertificateDer::from(vec![0x30, 0x00])]),
        Err(E::BadCertificate(_))
    ));
}

#[test]
fn dev_certificates_are_written_once_with_private_keys() {
    let (_dir, certs) = pki();
    assert_eq!(certs.clients.len(), 5);
    assert!(matches!(
        dev::generate(&certs.dir, &DevCertOptions::default()),
        Err(TlsError::AlreadyExists(_))
    ));
    // `ensure` reuses what is there.
    let ca = std::fs::read(&certs.ca_cert).unwrap();
    assert_eq!(dev::ensure(&certs.dir).unwrap(), certs);
    assert_eq!(std::fs::read(&certs.ca_cert).unwrap(), ca);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&certs.ca_key), 0o600);
        assert_eq!(mode(&certs.server_key), 0o600);
        for client in &certs.clients {
            assert_eq!(mode(&client.key), 0o600);
        }
    }

    // Another client from the same CA; not twice.
    let acme = identity("bidder/acme");
    let issued = dev::issue(&certs.dir, &acme).unwrap();
    assert_eq!(issued.identity, acme);
    assert!(matches!(
        dev::issue(&certs.dir, &acme),
        Err(TlsError::AlreadyExists(_))
    ));
    assert_eq!(dev::ensure(&certs.dir).unwrap().clients.len(), 6);

    // Overwriting makes a new CA and drops the old clients.
    let options = DevCertOptions {
        overwrite: true,
        identities: vec![identity("watcher/w")],
        server_names: vec!["gavel.test".to_owned()],
        ..DevCertOptions::default()
    };
    let fresh = dev::generate(&certs.dir, &options).unwrap();
    assert_ne!(std::fs::read(&certs.ca_cert).unwrap(), ca);
    assert_eq!(dev::ensure(&certs.dir).unwrap().clients, fresh.clients);
    assert_eq!(fresh.clients.len(), 1);
}

fn pem_cert(path: &Path) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_file(path).unwrap()
}
