//! The transport floor: a bare quinn server with the node's TLS (the same dev certificates,
//! mutual TLS, ALPN `gavel/1`) and the node's QUIC transport settings, which answers every
//! framed `ClientMessage` with a fixed accepted `BidOutcome` frame — no engine, no log. Run
//! as a child process of the tester (`gavel-loadtest echo-server`), like the node, and
//! driven by the very client lanes that bid on the node (`bidders::quic_raw`): same frames,
//! pacer and connection shape.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use gavel_proto::frame::{self, FrameDecoder};
use gavel_proto::pb;
use gavel_transport::tls::{ServerTls, dev};
use gavel_transport::{Limits, quic};

use crate::stats::unix_us;

/// Largest frame either side accepts (the node's default `frame_bytes_max`).
const FRAME_BYTES_MAX: usize = 64 * 1024;

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
