//! `--record-trace FILE`: one more watcher of the run's auctions, every update (interval 0),
//! that writes each message the node sends it to `FILE` as it arrived — a protobuf
//! `ServerMessage`, length-delimited (protobuf varint length, then the message), one after
//! the other — so the price stream of a real run can be replayed elsewhere (the edge
//! stream's size benchmark reads it: `benches/src/edge_trace.rs`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::ws::{self, Feed, GAVEL_PROTO};

/// Most messages one trace holds; the recorder stops there (the run goes on).
pub const TRACE_MESSAGES_MAX: u64 = 1_000_000;

/// Connects the recording watcher of `pattern` and returns once it is subscribed; the task
/// writes until `stop` (or [`TRACE_MESSAGES_MAX`]) and returns the messages written.
pub async fn record(
    connector: &TlsConnector,
    https_addr: SocketAddr,
    pattern: &str,
    path: &Path,
    stop: CancellationToken,
) -> Result<JoinHandle<Result<u64>>> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut socket = ws::connect(connector, https_addr, "/v1/ws", Some(GAVEL_PROTO)).await?;
    let feed = Feed::Gavel {
        pattern: pattern.to_owned(),
        interval_ms: 0,
    };
    ws::subscribe(&mut socket, &feed).await?;
    let path = path.to_owned();
    Ok(tokio::spawn(async move {
        let mut out = BufWriter::new(file);
        let mut written = 0_u64;
        while written < TRACE_MESSAGES_MAX {
            let message = tokio::select! {
                () = stop.cancelled() => break,
                message = socket.next() => message,
            };
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    write_delimited(&mut out, &bytes)?;
                    written += 1;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("the trace watcher's WebSocket"),
            }
        }
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(written)
    }))
}

/// Writes `message` with its length as a protobuf varint before it.
fn write_delimited(out: &mut impl Write, message: &[u8]) -> Result<()> {
    let mut prefix = Vec::with_capacity(10);
    prost::encoding::encode_varint(message.len() as u64, &mut prefix);
    out.write_all(&prefix)?;
    out.write_all(message)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_length_delimited_as_protobuf_writes_them() {
        let mut out = Vec::new();
        write_delimited(&mut out, &[7; 300]).unwrap();
        assert_eq!(&out[..2], &[0xac, 0x02], "300 as a protobuf varint");
        assert_eq!(out.len(), 302);
    }
}
