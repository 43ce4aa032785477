//! Bid accepted → retained MQTT state seen by a local subscriber, beside its two floors
//! measured in the same run (PRODUCT.md §10, issue 13 item 8):
//!
//! - **end to end**: a bidder (`bidder-1`, the SDK) places a bid every `--interval-ms` on
//!   one auction; a rumqttc subscriber of the agent's `<prefix>/auctions/<id>` takes the
//!   receive time of each new state minus its `changed_at_us` (the node's decision time);
//! - **stream floor**: a QUIC watcher (`watcher-1`, protobuf stream, no datagrams) of the
//!   same auction: receive time minus the price update's `accepted_at_us`;
//! - **MQTT floor**: a second rumqttc client publishes its send time on
//!   `edge-latency/floor` (same broker, same QoS) between the bids; the subscriber takes
//!   receive minus send.
//!
//! The target: end-to-end p99 ≤ 2 × (stream floor p99 + MQTT floor p99). Every clock is
//! the same machine's (loopback). `ops/edge-bench.sh` starts the node, mosquitto and the
//! agent and runs this; by hand:
//!
//! ```text
//! cargo run --profile edge -p gavel-edge --example edge_latency -- --node 127.0.0.1:7443 \
//!     --certs data/certs --mqtt-port 1883 --auction 7 --bids 500
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use gavel_client::{Bid, BidError, Client, ClientConfig, Update, Watch, dev_files};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// The floor messages' topic.
const FLOOR_TOPIC: &str = "edge-latency/floor";
/// How long the last states may take to arrive after the last bid.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
struct Args {
    /// The node's QUIC address.
    #[arg(long)]
    node: SocketAddr,
    /// The node's development certificates (`<data-dir>/certs`).
    #[arg(long)]
    certs: PathBuf,
    /// The agent's MQTT broker port on 127.0.0.1.
    #[arg(long)]
    mqtt_port: u16,
    /// The agent's MQTT topic prefix.
    #[arg(long, default_value = "gavel")]
    topic_prefix: String,
    /// The auction to bid on (open, English, held by the agent).
    #[arg(long)]
    auction: u64,
    /// Bids to place (and floor messages to publish).
    #[arg(long, default_value_t = 500)]
    bids: u64,
    /// Milliseconds between bids.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
}

/// One latency sample, in microseconds.
enum Sample {
    EndToEnd(u64),
    Stream(u64),
    Mqtt(u64),
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn client_config(args: &Args, role: &str, id: &str) -> Result<ClientConfig> {
    Ok(ClientConfig::from_cert_files(
        args.node,
        "localhost",
        &args.certs.join(dev_files::CA_CERT),
        &args.certs.join(dev_files::cert(role, id)),
        &args.certs.join(dev_files::key(role, id)),
    )?)
}

/// A connected rumqttc client, its event loop polled by a task that hands every
/// non-retained publish to `on_publish` with its receive time.
async fn mqtt(
    port: u16,
    name: &str,
    subscribe: &[String],
    on_publish: impl Fn(&str, &[u8], u64) + Send + 'static,
) -> Result<AsyncClient> {
    let mut options = MqttOptions::new(name, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(15));
    let (client, mut events) = AsyncClient::new(options, 1_024);
    for topic in subscribe {
        client.subscribe(topic, QoS::AtLeastOnce).await?;
    }
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let mut acks_wanted = subscribe.len();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                    on_publish(&p.topic, &p.payload, unix_micros());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => acks_wanted -= 1,
                Ok(Event::Incoming(Packet::ConnAck(_))) => {}
                Ok(_) => {}
                Err(e) => {
                    eprintln!("MQTT client: {e}");
                    return;
                }
            }
            if acks_wanted == 0
                && let Some(ready) = ready_tx.take()
            {
                let _ = ready.send(());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .context("no MQTT connection and subscription within 10 s")??;
    Ok(client)
}

/// The subscriber of the agent's state topic and of the floor topic.
async fn subscriber(args: &Args, samples: mpsc::UnboundedSender<Sample>) -> Result<AsyncClient> {
    let state_topic = format!("{}/auctions/{}", args.topic_prefix, args.auction);
    let topics = [state_topic.clone(), FLOOR_TOPIC.to_owned()];
    let last_seq = std::sync::Mutex::new(0_u64);
    mqtt(
        args.mqtt_port,
        "edge-latency-sub",
        &topics,
        move |topic, payload, now| {
            let sample = if topic == FLOOR_TOPIC {
                std::str::from_utf8(payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|sent| Sample::Mqtt(now.saturating_sub(sent)))
            } else {
                let state: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
                let (Some(seq), Some(changed)) =
                    (state["seq"].as_u64(), state["changed_at_us"].as_u64())
                else {
                    return;
                };
                let mut last = last_seq.lock().unwrap_or_else(|p| p.into_inner());
                let new = seq > *last;
                *last = seq.max(*last);
                new.then(|| Sample::EndToEnd(now.saturating_sub(changed)))
            };
            if let Some(sample) = sample {
                let _ = samples.send(sample);
            }
        },
    )
    .await
}

/// A QUIC watcher of the auction (protobuf stream): each price update's delay.
async fn watcher(args: &Args, samples: mpsc::UnboundedSender<Sample>) -> Result<Client> {
    let client = Client::connect(client_config(args, "watcher", "watcher-1")?).await?;
    let mut watcher = client
        .watch(Watch::patterns([">"]))
        .await
        .context("watching")?;
    let auction = args.auction;
    tokio::spawn(async move {
        while let Ok(update) = watcher.next().await {
            if let Update::Price(price, _) = update
                && price.auction_id == auction
            {
                let delay = unix_micros().saturating_sub(price.accepted_at_us);
                let _ = samples.send(Sample::Stream(delay));
            }
        }
    });
    Ok(client)
}

/// Places `bids` bids a pace apart, each above the last price; a floor message between
/// each two.
async fn bid(args: &Args, floor: &AsyncClient) -> Result<u64> {
    let bidder = Client::connect(client_config(args, "bidder", "bidder-1")?).await?;
    let mut amount = 0_u64;
    let mut accepted = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(args.interval_ms));
    for _ in 0..args.bids {
        pace.tick().await;
        match bidder
            .place_bid(Bid::new(args.auction, amount.max(1)))
            .await
        {
            Ok(placed) => {
                accepted += 1;
                amount = placed.accepted().price + 1;
            }
            Err(BidError::TooLow { min_next }) => amount = min_next,
            Err(e) => return Err(e).context("placing a bid"),
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms / 2)).await;
        let sent = unix_micros().to_string();
        floor
            .publish(FLOOR_TOPIC, QoS::AtLeastOnce, false, sent)
            .await?;
    }
    Ok(accepted)
}

fn line(name: &str, histogram: &Histogram<u64>) -> String {
    let q = |q: f64| histogram.value_at_quantile(q);
    format!(
        "{name:<44} n {:>5}  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  max {:>6} µs",
        histogram.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        histogram.max()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (samples_tx, mut samples) = mpsc::unbounded_channel();
    let _subscriber = subscriber(&args, samples_tx.clone()).await?;
    let _watcher = watcher(&args, samples_tx.clone()).await?;
    let publisher = mqtt(args.mqtt_port, "edge-latency-pub", &[], |_, _, _| {}).await?;
    let accepted = bid(&args, &publisher).await?;
    tokio::time::sleep(SETTLE).await;
    drop(samples_tx);
    let new = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut end_to_end, mut stream, mut mqtt_floor) = (new(), new(), new());
    while let Ok(sample) = samples.try_recv() {
        let (histogram, value) = match sample {
            Sample::EndToEnd(v) => (&mut end_to_end, v),
            Sample::Stream(v) => (&mut stream, v),
            Sample::Mqtt(v) => (&mut mqtt_floor, v),
        };
        histogram.saturating_record(value.max(1));
    }
    println!(
        "{} bids placed, {accepted} accepted, one per {} ms",
        args.bids, args.interval_ms
    );
    println!(
        "{}",
        line("bid accepted -> retained MQTT state (agent)", &end_to_end)
    );
    println!("{}", line("floor: bid accepted -> QUIC watcher", &stream));
    println!("{}", line("floor: MQTT publish -> receive", &mqtt_floor));
    let bound = 2 * (stream.value_at_quantile(0.99) + mqtt_floor.value_at_quantile(0.99));
    println!(
        "target p99 <= 2 x (stream p99 + MQTT p99) = {bound} µs: end-to-end p99 {} µs ({:.2} of the bound)",
        end_to_end.value_at_quantile(0.99),
        end_to_end.value_at_quantile(0.99) as f64 / bound.max(1) as f64
    );
    Ok(())
}
