//! The burst floor (`--floors burst`): a bare server on the node's own TLS and WebSocket
//! stack (tokio-rustls with the node's dev certificates and HTTPS TLS configuration,
//! tungstenite) with no engine and no conflation, that writes each round's one message to
//! every connected socket as fast as it can: one task per socket, woken by a broadcast. The
//! time until the last watcher holds a round is the physical floor of one round of fan-out
//! on this machine, for as many watchers as the node's phase had.
//!
//! Each round's message is a `ServerMessage` carrying a `PriceUpdate` of auction 1 with
//! `seq` = the round and `accepted_at_us` = when the round started, so the watchers read it
//! as they read the node's stream.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::SinkExt;
use gavel_proto::pb;
use gavel_transport::tls::{ServerTls, dev};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

use crate::stats::{Recorder, unix_us};

/// Rounds queued for a socket that has not written the earlier ones yet; a socket further
/// behind skips to the newest (counted as `burst_lagged`).
const ROUNDS_QUEUED_MAX: usize = 64;

/// A running burst server.
pub struct BurstServer {
    /// Its WebSocket address (`wss://<addr>/`).
    pub addr: SocketAddr,
    rounds: broadcast::Sender<Bytes>,
    stop: CancellationToken,
    accepting: JoinHandle<()>,
}

impl BurstServer {
    /// Binds a loopback port and accepts watchers (TLS with the dev certificates in
    /// `certs`, anonymous clients allowed, as the node's HTTPS port) until dropped.
    pub async fn start(certs: &Path, recorder: Recorder) -> Result<BurstServer> {
        let dev = dev::ensure(certs).context("reading the dev certificates")?;
        let tls = ServerTls::load(dev.tls_paths(), true).context("server TLS")?;
        let acceptor = TlsAcceptor::from(tls.https_config());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (rounds, _) = broadcast::channel(ROUNDS_QUEUED_MAX);
        let stop = CancellationToken::new();
        let accepting = tokio::spawn(accept(
            listener,
            acceptor,
            rounds.clone(),
            stop.clone(),
            recorder,
        ));
        Ok(BurstServer {
            addr,
            rounds,
            stop,
            accepting,
        })
    }

    /// Sends one round per due time from `due` (the pacer's lane) until it closes; returns
    /// each round's `(seq, started at µs)`.
    pub async fn send_rounds(
        &self,
        mut due: mpsc::Receiver<(Instant, u64)>,
        recorder: &Recorder,
    ) -> Vec<(u64, u64)> {
        let mut stamps = Vec::new();
        while let Some((_, n)) = due.recv().await {
            let seq = n + 1;
            let stamp = unix_us();
            let message = pb::ServerMessage {
                request_id: 0,
                body: Some(pb::server_message::Body::PriceUpdate(pb::PriceUpdate {
                    auction_id: 1,
                    topic: "burst.a1".into(),
                    epoch: 1,
                    seq,
                    price: Some(1_000 + seq),
                    leader: Some("bidder-1".into()),
                    ends_at_us: stamp + 600_000_000,
                    bids_accepted: seq,
                    accepted_at_us: stamp,
                    watchers: 10_000,
                    bidders_connected: 16,
                })),
            };
            // No receiver (no watcher connected) is not an error for a floor.
            let _ = self.rounds.send(message.encode_to_vec().into());
            stamps.push((seq, stamp));
            recorder.count("published", 1);
        }
        stamps
    }
}

impl Drop for BurstServer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.accepting.abort();
    }
}

/// Accepts connections until `stop`; each gets its own writer task.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    rounds: broadcast::Sender<Bytes>,
    stop: CancellationToken,
    recorder: Recorder,
) {
    loop {
        let (tcp, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let receiver = rounds.subscribe();
        let stop = stop.clone();
        let recorder = recorder.clone();
        tokio::spawn(async move {
            if serve(tcp, acceptor, receiver, stop, &recorder)
                .await
                .is_err()
            {
                recorder.count("burst_connection_failed", 1);
            }
        });
    }
}

/// Writes every round to one watcher until `stop` or the watcher leaves.
async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    mut rounds: broadcast::Receiver<Bytes>,
    stop: CancellationToken,
    recorder: &Recorder,
) -> Result<()> {
    let tls = acceptor.accept(tcp).await.context("TLS handshake")?;
    let mut socket = tokio_tungstenite::accept_async(tls)
        .await
        .context("WebSocket handshake")?;
    loop {
        let round = tokio::select! {
            () = stop.cancelled() => break,
            round = rounds.recv() => round,
        };
        match round {
            Ok(bytes) => socket.send(Message::Binary(bytes)).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => recorder.count("burst_lagged", n),
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}
