//! The transport floor: a bare quinn server with the node's TLS (the same dev certificates,
//! mutual TLS, ALPN `gavel/1`) and the node's QUIC transport settings, which answers every
//! framed `ClientMessage` with a fixed accepted `BidOutcome` frame — no engine, no log. Run
//! as a child process of the tester (`gavel-loadtest echo-server`), like the node, and
//! driven by client lanes with the same frame sizes, pacer and connection shape as the SDK
//! bidders (one connection per lane, each with its own UDP socket, one pipelined stream).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gavel_proto::frame::{self, ALPN, FrameDecoder};
use gavel_proto::pb;
use gavel_transport::tls::{self, ServerTls, dev};
use gavel_transport::{Limits, quic};
use tokio::sync::mpsc;

use crate::bidders::{BIDDERS, IN_FLIGHT_MAX, Lanes, place_bid_message};
use crate::stats::{Recorder, unix_us};
use crate::workload::Workload;

/// Largest frame either side accepts (the node's default `frame_bytes_max`).
const FRAME_BYTES_MAX: usize = 64 * 1024;
/// Longest a lane waits for its last answers after the pacer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves the echo on `listen` with the dev certificates in `certs` until killed; prints
/// `listening quic=<addr>` once bound.
pub async fn serve(listen: SocketAddr, certs: &Path) -> Result<()> {
    let dev = dev::ensure(certs).context("reading the dev certificates")?;
    let server_tls = ServerTls::load(dev.tls_paths(), false).context("server TLS")?;
    let limits = Limits::default();
    let endpoint = quic::bind(listen, server_tls.quic_config(), &limits)?;
    println!("listening quic={}", endpoint.local_addr()?);
    // A typical accepted answer: the shape of what the node sends for a bid.
    let answer = pb::ServerMessage {
        request_id: 0,
        body: Some(pb::server_message::Body::BidOutcome(pb::BidOutcome {
            outcome: Some(pb::bid_outcome::Outcome::Accepted(pb::Accepted {
                seq: 12_345,
                price: 1_234_000,
                leader: Some("bidder-1".into()),
                ends_at_us: unix_us() + 600_000_000,
            })),
        })),
    };
    while let Some(incoming) = endpoint.accept().await {
        let answer = answer.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(echo_stream(send, recv, answer.clone()));
            }
        });
    }
    Ok(())
}

/// Answers each whole frame of one stream; every answer due after a read goes out in one
/// write, as the node does.
async fn echo_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut answer: pb::ServerMessage,
) {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let mut out = Vec::with_capacity(4096);
    while let Ok(Some(chunk)) = recv.read_chunk(FRAME_BYTES_MAX, true).await {
        decoder.push(&chunk.bytes);
        while let Ok(Some(request)) = decoder.next_message::<pb::ClientMessage>() {
            answer.request_id = request.request_id;
            frame::encode(&answer, &mut out);
        }
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// Connects `connections` echo clients (with the bidders' certificates, round robin) to
/// `server` and starts their lanes; each records `decided` from the due time.
pub async fn clients(
    server: SocketAddr,
    certs: &Path,
    connections: usize,
    workload: Arc<Workload>,
    recorder: Recorder,
) -> Result<Lanes> {
    let mut lanes = Lanes::default();
    for i in 0..connections {
        let (role, id) = BIDDERS[i % BIDDERS.len()];
        let clients = certs.join("clients");
        let tls = tls::client_config(
            &certs.join("ca.pem"),
            Some((
                &clients.join(format!("{role}-{id}.pem")),
                &clients.join(format!("{role}-{id}.key")),
            )),
            &[ALPN],
        )?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(30))?))
            .keep_alive_interval(Some(Duration::from_secs(5)));
        config.transport_config(Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config);
        let connection = endpoint
            .connect(server, "localhost")?
            .await
            .with_context(|| format!("echo connection {i} to {server}"))?;
        let (send, recv) = connection.open_bi().await?;
        let (workload, recorder) = (Arc::clone(&workload), recorder.clone());
        lanes.add(|due| lane_task(endpoint, connection, send, recv, due, workload, recorder));
    }
    Ok(lanes)
}

#[allow(clippy::too_many_arguments)]
async fn lane_task(
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut due: mpsc::Receiver<(Instant, u64)>,
    workload: Arc<Workload>,
    recorder: Recorder,
) {
    // Answers come in request order on the one stream: a queue of due times suffices.
    let waiting: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let reader = {
        let waiting = Arc::clone(&waiting);
        let in_flight = Arc::clone(&in_flight);
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
            while let Ok(Some(chunk)) = recv.read_chunk(FRAME_BYTES_MAX, true).await {
                decoder.push(&chunk.bytes);
                while let Ok(Some(_)) = decoder.next_message::<pb::ServerMessage>() {
                    let intended = waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                    if let Some(intended) = intended {
                        recorder.latency("decided", intended.elapsed());
                        recorder.count("answered", 1);
                        in_flight.add_permits(1);
                    }
                }
            }
        })
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut out = Vec::with_capacity(256);
    while let Some((intended, seq)) = due.recv().await {
        let Ok(permit) = in_flight.acquire().await else {
            break;
        };
        // Returned by the reader with `add_permits` when the answer arrives.
        permit.forget();
        let planned = workload.next_bid(&mut rng);
        let message = place_bid_message(seq + 1, planned);
        out.clear();
        frame::encode(&message, &mut out);
        waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(intended);
        if send.write_all(&out).await.is_err() {
            recorder.count("connection", 1);
            break;
        }
    }
    let all = u32::try_from(IN_FLIGHT_MAX).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, in_flight.acquire_many(all))
        .await
        .is_err()
    {
        let lost = waiting.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        recorder.count("timeout", lost);
    }
    let _ = send.finish();
    reader.abort();
    connection.close(0_u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}
