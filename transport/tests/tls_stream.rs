//! The HTTPS listener's TLS stream (`tls::stream`, rustls's unbuffered API) over real sockets
//! on 127.0.0.1 against a rustls client: data both ways in every size, no buffer held while
//! idle, bad records and untrusted certificates refused with an alert, `close_notify` and a
//! bare end of input told apart.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gavel_transport::tls::dev::{self, DevCertOptions, DevCerts};
use gavel_transport::tls::stream::{ServerStream, accept};
use gavel_transport::tls::{ALPN_HTTPS, ServerTls, client_config};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// Longest wait for anything in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn pki() -> (tempfile::TempDir, DevCerts) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev::generate(dir.path(), &DevCertOptions::default()).unwrap();
    (dir, certs)
}

/// A listener and the server configuration (anonymous clients allowed).
async fn listen(certs: &DevCerts) -> (TcpListener, Arc<rustls::ServerConfig>) {
    let tls = ServerTls::load(certs.tls_paths(), true).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (listener, tls.https_config())
}

async fn accept_one(
    listener: &TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<ServerStream<TcpStream>> {
    let (tcp, _) = listener.accept().await?;
    accept(config, tcp).await
}

async fn connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The error the server task ended with.
async fn server_error<T: std::fmt::Debug>(
    server: tokio::task::JoinHandle<io::Result<T>>,
) -> io::Error {
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err()
}

fn anonymous(certs: &DevCerts) -> rustls::ClientConfig {
    client_config(&certs.ca_cert, None, ALPN_HTTPS).unwrap()
}

/// Sizes across one byte, one record (16 KiB) and several records.
const SIZES: [usize; 5] = [1, 100, 4096, 16 * 1024 + 1, 70_000];

fn message(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn data_passes_both_ways_and_an_idle_stream_holds_no_buffer() {
    let (_dir, certs) = pki();
    let (listener, config) = listen(&certs).await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut stream = accept_one(&listener, config).await.unwrap();
        assert_eq!(stream.alpn_protocol(), Some(&b"h2"[..]));
        assert!(stream.peer_certificates().is_none());
        let mut held = Vec::new();
        for size in SIZES {
            let mut received = vec![0; size];
            stream.read_exact(&mut received).await.unwrap();
            stream.write_all(&received).await.unwrap();
            stream.flush().await.unwrap();
            held.push(stream.buffered_capacity());
        }
        // The client's close_notify ends the input.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        stream.shutdown().await.unwrap();
        held
    });
    let mut client = tokio::time::timeout(WAIT, connect(addr, anonymous(&certs)))
        .await
        .unwrap()
        .unwrap();
    for size in SIZES {
        let sent = message(size);
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut echoed = vec![0; size];
        tokio::time::timeout(WAIT, client.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert!(echoed == sent, "echo of {size} bytes differs");
    }
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    // The server's close_notify ends the client's input cleanly.
    tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let held = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(
        held,
        vec![0; SIZES.len()],
        "buffer bytes held after each echo"
    );
}

#[tokio::test]
async fn a_bad_record_is_invalid_data_and_the_client_gets_an_alert() {
    let (_dir, certs) = pki();
    let (listener, config) = listen(&certs).await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut stream = accept_one(&listener, config).await.unwrap();
        let mut buf = [0; 64];
        stream.read(&mut buf).await
    });
    let mut client = connect(addr, anonymous(&certs)).await.unwrap();
    // An application-data record whose contents were not encrypted with the session's key.
    let mut forged = vec![23, 3, 3, 0, 20];
    forged.extend(1..=20);
    client.get_mut().0.write_all(&forged).await.unwrap();
    let error = server_error(server).await;
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    let mut buf = [0; 64];
    let answer = tokio::time::timeout(WAIT, client.read(&mut buf))
        .await
        .unwrap();
    let alert = answer.unwrap_err().to_string();
    assert!(alert.contains("alert"), "client saw: {alert}");
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_the_handshake_with_an_alert() {
    let (_dir, certs) = pki();
    let (_other_dir, other) = pki();
    let (listener, config) = listen(&certs).await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { accept_one(&listener, config).await.map(|_| ()) });
    let stranger = &other.clients[0];
    let client_config = client_config(
        &certs.ca_cert,
        Some((stranger.cert.as_path(), stranger.key.as_path())),
        ALPN_HTTPS,
    )
    .unwrap();
    let client = tokio::time::timeout(WAIT, connect(addr, client_config))
        .await
        .unwrap();
    let error = server_error(server).await;
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    // TLS 1.3: the client's side was done before the server checked its certificate, so the
    // refusal arrives as an alert on its first read.
    let mut buf = [0; 64];
    let alert = match client {
        Err(e) => e.to_string(),
        Ok(mut stream) => tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err()
            .to_string(),
    };
    assert!(alert.contains("alert"), "client saw: {alert}");
}

#[tokio::test]
async fn an_end_of_input_without_close_notify_is_unexpected_eof() {
    let (_dir, certs) = pki();
    let (listener, config) = listen(&certs).await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut stream = accept_one(&listener, config).await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.map(|_| rest)
    });
    let mut client = connect(addr, anonymous(&certs)).await.unwrap();
    client.write_all(b"cut short").await.unwrap();
    client.flush().await.unwrap();
    // Closes the TCP connection without a close_notify.
    drop(client);
    let error = server_error(server).await;
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
}

#[tokio::test]
async fn a_peer_that_sends_no_tls_fails_the_handshake() {
    let (_dir, certs) = pki();
    let (listener, config) = listen(&certs).await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { accept_one(&listener, config).await.map(|_| ()) });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let error = server_error(server).await;
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
}

#[tokio::test]
async fn data_passes_after_the_client_updates_its_keys() {
    let (_dir, certs) = pki();
    let (listener, config) = listen(&certs).await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut stream = accept_one(&listener, config).await.unwrap();
        let mut line = [0; 5];
        for _ in 0..3 {
            stream.read_exact(&mut line).await.unwrap();
            // The node's key update (asked for by the client's) goes out ahead of this.
            stream.write_all(&line).await.unwrap();
            stream.flush().await.unwrap();
        }
    });
    let mut client = connect(addr, anonymous(&certs)).await.unwrap();
    for round in 0..3_u8 {
        client.get_mut().1.refresh_traffic_keys().unwrap();
        let sent = [b'k', b'e', b'y', b'0' + round, b'\n'];
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut echoed = [0; 5];
        tokio::time::timeout(WAIT, client.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, sent);
    }
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
}
