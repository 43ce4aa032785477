//! Places one bid with the development certificates and waits for both acknowledgements.
//!
//! ```text
//! gavel serve --dev            # writes ./data/certs and listens for QUIC bidders
//! cargo run -p gavel-client --example place_bid -- 127.0.0.1:7443 data/certs 1 150
//! ```
//!
//! Arguments: the node's QUIC address, the certificate directory (`gavel cert` output:
//! `ca.pem` and `clients/bidder-<id>.pem`/`.key`), the auction id, the amount, and optionally
//! the bidder id (default `bidder-1`).

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use gavel_client::{Bid, BidError, Client, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, cert_dir, auction, amount, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: place_bid <server addr> <cert dir> <auction id> <amount> [bidder id]\n\
             e.g.:  place_bid 127.0.0.1:7443 data/certs 1 150"
        );
        std::process::exit(2);
    };
    let bidder = rest.first().map_or("bidder-1", String::as_str);
    let config = ClientConfig::from_cert_dir(server.parse()?, &PathBuf::from(cert_dir), bidder)?;
    let client = Client::connect(config).await?;
    println!(
        "connected as {bidder}; round trip {:?}",
        client.ping().await?
    );

    let started = Instant::now();
    match client
        .place_bid(Bid::new(auction.parse()?, amount.parse()?))
        .await
    {
        Ok(placed) => {
            let accepted = placed.accepted().clone();
            println!(
                "accepted in {:?}: seq {}, price {}, leader {}",
                started.elapsed(),
                accepted.seq,
                accepted.price,
                accepted.leader.as_deref().unwrap_or("(hidden)")
            );
            let durable = placed.durable().await?;
            println!("durable in {:?} (seq {})", started.elapsed(), durable.seq);
        }
        Err(BidError::TooLow { min_next }) => println!("too low: bid at least {min_next}"),
        Err(other) => println!("not accepted: {other}"),
    }
    client.close().await;
    Ok(())
}
