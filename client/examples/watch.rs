//! Watches live prices over QUIC with the development certificates: price ticks as QUIC
//! datagrams, snapshots, closes and settlements on the stream. Stops after `count` updates
//! (default 100) or on Ctrl-C.
//!
//! ```text
//! gavel serve --dev            # writes ./data/certs and listens for QUIC clients
//! cargo run -p gavel-client --example watch -- 127.0.0.1:7443 data/certs 'energy.>'
//! ```
//!
//! Arguments: the node's QUIC address, the certificate directory (`gavel cert` output:
//! `ca.pem` and `clients/watcher-watcher-1.pem`/`.key`), a topic pattern, and optionally how
//! many updates to print.

use std::error::Error;
use std::path::PathBuf;

use gavel_client::{Client, ClientConfig, Update, Watch, dev_files};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, cert_dir, pattern, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: watch <server addr> <cert dir> <pattern> [count]\n\
             e.g.:  watch 127.0.0.1:7443 data/certs 'energy.>'"
        );
        std::process::exit(2);
    };
    let count: u64 = rest.first().map_or(Ok(100), |c| c.parse())?;
    let dir = PathBuf::from(cert_dir);
    let config = ClientConfig::from_cert_files(
        server.parse()?,
        "localhost",
        &dir.join(dev_files::CA_CERT),
        &dir.join(dev_files::cert("watcher", "watcher-1")),
        &dir.join(dev_files::key("watcher", "watcher-1")),
    )?;
    let client = Client::connect(config).await?;
    let mut watcher = client
        .watch(Watch::patterns([pattern.as_str()]).with_datagrams())
        .await?;
    println!("watching {pattern}");
    for _ in 0..count {
        let update = tokio::select! {
            update = watcher.next() => update?,
            _ = tokio::signal::ctrl_c() => break,
        };
        match update {
            Update::Snapshot(s) => {
                let id = s.rules.as_ref().map_or(0, |r| r.auction_id);
                println!(
                    "auction {id}: snapshot seq {} price {:?} leader {:?} ({} watching)",
                    s.seq, s.price, s.leader, s.watchers
                );
            }
            Update::Price(u, via) => println!(
                "auction {}: price {:?} leader {:?} seq {} ({via:?})",
                u.auction_id, u.price, u.leader, u.seq
            ),
            Update::Closed(c) => println!(
                "auction {}: closed ({:?})",
                c.auction_id,
                gavel_proto::pb::CloseReason::try_from(c.reason).unwrap_or_default()
            ),
            Update::Settled(s) => println!(
                "auction {}: settled, winner {:?}",
                s.auction_id,
                s.winner.map(|w| (w.bidder_id, w.price))
            ),
            Update::SnapshotRequired(r) => println!("auction {}: snapshot required", r.auction_id),
        }
    }
    client.close().await;
    Ok(())
}
