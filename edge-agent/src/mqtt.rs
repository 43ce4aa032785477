//! The local MQTT side (`rumqttc` to the device's own broker): one retained message per
//! auction on `<prefix>/auctions/<auction id>`, bid requests taken from
//! `<prefix>/bids/request`, and every bid status published on `<prefix>/bids/status`.
//!
//! `rumqttc` reconnects as soon as its event loop is polled again, with no delay; this loop
//! adds the agent's full-jitter backoff (1 s to the cap, reset after 20 s connected), so a
//! broker that is down is tried ever more slowly, never in a tight loop. Every (re)connect
//! starts a clean session and re-publishes the current state of every auction.
//!
//! Publishing is bounded: changed auctions are kept as a set of ids (at most one pending
//! publish per auction, the latest state when it goes out) and handed to the client only
//! while its request channel has room; bid statuses wait in a bounded queue.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::backoff::Backoff;
use crate::bids::{BidRequest, status_json};
use crate::config::{MqttConfig, MqttEncoding};
use crate::queue::{PushError, Status};
use crate::state::{edge_keyframe, state_json};

/// Requests the client may queue towards its event loop.
const CLIENT_CAPACITY: usize = 256;
/// Bid statuses waiting to be published, at most (the oldest are dropped beyond; the HTTP
/// status endpoint keeps them all).
const STATUSES_MAX: usize = 1_024;
/// Keep-alive to the broker.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The MQTT loop's state between events.
struct Side {
    client: AsyncClient,
    config: MqttConfig,
    qos: QoS,
    connected: bool,
    /// Auctions whose latest state is not published yet.
    dirty: BTreeSet<u64>,
    statuses: VecDeque<serde_json::Value>,
    /// The client's channel was full: wait for the event loop to make progress.
    blocked: bool,
    /// Answers of request tasks that are not bid events (refusals, known bids).
    answers: mpsc::Sender<serde_json::Value>,
}

/// Runs the MQTT side until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, config: MqttConfig, shutdown: CancellationToken) {
    let id = format!("gavel-edge-{:08x}", rand::random::<u32>());
    let mut options = MqttOptions::new(id, config.host.clone(), config.port);
    options.set_keep_alive(KEEP_ALIVE).set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, CLIENT_CAPACITY);
    let qos = match config.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let (answers_tx, mut answers) = mpsc::channel(STATUSES_MAX);
    let mut side = Side {
        client,
        config,
        qos,
        connected: false,
        dirty: BTreeSet::new(),
        statuses: VecDeque::new(),
        blocked: false,
        answers: answers_tx,
    };
    let mut updates = shared.store.subscribe();
    let mut statuses = shared.bids.events.subscribe();
    let mut backoff = Backoff::new(shared.config.reconnect_backoff_max);
    loop {
        let publishing = side.connected && !side.blocked && side.has_work();
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = side.client.try_disconnect();
                return;
            }
            event = events.poll() => {
                side.blocked = false;
                let ok = side.event(event, &shared, &mut backoff);
                if !ok && !pause(&mut side, &mut backoff, &shutdown).await {
                    return;
                }
            }
            update = updates.recv() => match update {
                Ok(state) => { side.dirty.insert(state.auction_id); }
                Err(RecvError::Lagged(_)) => side.all_dirty(&shared),
                Err(RecvError::Closed) => return,
            },
            status = statuses.recv() => match status {
                Ok((bid_id, status)) => side.status(bid_id, &status),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "bid statuses not published on MQTT (still on HTTP)");
                }
                Err(RecvError::Closed) => return,
            },
            Some(answer) = answers.recv() => side.push_status(answer),
            () = std::future::ready(()), if publishing => side.publish(&shared),
        }
    }
}

/// After a connection error: counted, logged, and a backoff delay; `false` at shutdown.
async fn pause(side: &mut Side, backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
    let delay = backoff.failed(Instant::now(), &mut rand::rng());
    tracing::warn!(broker = %format!("{}:{}", side.config.host, side.config.port), ?delay,
        "MQTT broker unreachable; retrying after the delay");
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

impl Side {
    fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.statuses.is_empty()
    }

    fn all_dirty(&mut self, shared: &Shared) {
        self.dirty
            .extend(shared.store.all().iter().map(|s| s.auction_id));
    }

    fn topic(&self, tail: &str) -> String {
        format!("{}/{tail}", self.config.topic_prefix)
    }

    /// Handles one event of the loop; `false` when the connection failed.
    fn event(
        &mut self,
        event: Result<Event, rumqttc::ConnectionError>,
        shared: &Arc<Shared>,
        backoff: &mut Backoff,
    ) -> bool {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                self.connected = true;
                backoff.connected(Instant::now());
                metrics::gauge!(crate::metrics::MQTT_CONNECTED).set(1.0);
                tracing::info!(broker = %format!("{}:{}", self.config.host, self.config.port), "connected to the MQTT broker");
                let _ = self
                    .client
                    .try_subscribe(self.topic("bids/request"), self.qos);
                self.all_dirty(shared);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic == self.topic("bids/request") {
                    let answers = self.answers.clone();
                    tokio::spawn(request(Arc::clone(shared), publish.payload, answers));
                }
            }
            Ok(_) => {}
            Err(e) => {
                if self.connected {
                    metrics::counter!(crate::metrics::MQTT_RECONNECTS).increment(1);
                    tracing::warn!(error = %e, "MQTT connection lost");
                }
                self.connected = false;
                metrics::gauge!(crate::metrics::MQTT_CONNECTED).set(0.0);
                return false;
            }
        }
        true
    }

    fn status(&mut self, bid_id: u128, status: &Status) {
        self.push_status(status_json(bid_id, status));
    }

    fn push_status(&mut self, json: serde_json::Value) {
        if self.statuses.len() >= STATUSES_MAX {
            self.statuses.pop_front();
        }
        self.statuses.push_back(json);
    }

    /// Hands pending publishes to the client while its channel has room.
    fn publish(&mut self, shared: &Shared) {
        while let Some(status) = self.statuses.front() {
            let topic = self.topic("bids/status");
            if self
                .client
                .try_publish(topic, self.qos, false, status.to_string())
                .is_err()
            {
                self.blocked = true;
                return;
            }
            metrics::counter!(crate::metrics::MQTT_PUBLISHES, "kind" => "status").increment(1);
            self.statuses.pop_front();
        }
        while let Some(&auction) = self.dirty.first() {
            let Some(state) = shared.store.get(auction) else {
                self.dirty.remove(&auction);
                continue;
            };
            let payload = match self.config.encoding {
                MqttEncoding::Json => state_json(&state).to_string().into_bytes(),
                MqttEncoding::Edge => edge_keyframe(&state),
            };
            let topic = self.topic(&format!("auctions/{auction}"));
            if self
                .client
                .try_publish(topic, self.qos, true, payload)
                .is_err()
            {
                self.blocked = true;
                return;
            }
            metrics::counter!(crate::metrics::MQTT_PUBLISHES, "kind" => "state").increment(1);
            self.dirty.remove(&auction);
        }
    }
}

/// A bid request from the request topic: queued (its status goes out as a bid event),
/// known (its current status), or refused (`{"status": "refused", "error": …, "message":
/// …, "tag": …}`), each on the status topic.
async fn request(
    shared: Arc<Shared>,
    payload: bytes::Bytes,
    answers: mpsc::Sender<serde_json::Value>,
) {
    let refusal = |error: &str, message: String| {
        let tag = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| v.get("tag").cloned())
            .unwrap_or(serde_json::Value::Null);
        serde_json::json!({ "status": "refused", "error": error, "message": message, "tag": tag })
    };
    let bid = match BidRequest::parse(&payload) {
        Ok(bid) => bid,
        Err(why) => {
            metrics::counter!(crate::metrics::BIDS_REFUSED, "reason" => "invalid").increment(1);
            let _ = answers.send(refusal("invalid", why)).await;
            return;
        }
    };
    let bid_id = bid.bid_id;
    let answer = match shared.bids.submit(bid).await {
        Ok(_) => return,
        Err(PushError::Known(status)) => status_json(bid_id, &status),
        Err(e @ PushError::Full { .. }) => refusal("queue_full", e.to_string()),
        Err(e) => refusal("disk", e.to_string()),
    };
    let _ = answers.send(answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::state;
    use gavel_edge_proto::AuctionState;

    use crate::test_broker::{self as broker, Mosquitto};

    fn shared(dir: &std::path::Path, encoding: MqttEncoding) -> (Arc<Shared>, MqttConfig) {
        let shared = Shared::for_tests(dir, |_| {});
        let mut config = shared.config.mqtt.clone().expect("MQTT is on by default");
        config.encoding = encoding;
        (shared, config)
    }

    async fn subscribe(port: u16, topic: &str, count: usize, hex: bool) -> Vec<(String, String)> {
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || broker::subscribe(port, &topic, count, 20, hex))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn states_are_retained_per_auction_and_read_by_mosquitto_sub() {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut config) = shared(dir.path(), MqttEncoding::Json);
        config.port = broker.port;
        shared.store.apply(state(3, 110));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&shared), config, shutdown.clone()));
        shared.store.apply(AuctionState {
            auction_id: 8,
            ..state(1, 90)
        });
        shared.store.apply(state(4, 120));
        // A subscriber that comes later gets the retained latest state of each auction.
        let mut seen = subscribe(broker.port, "gavel/auctions/#", 2, false).await;
        seen.sort();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, "gavel/auctions/7");
        let json: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
        assert_eq!(
            (json["seq"].as_u64(), json["price"].as_u64()),
            (Some(4), Some(120))
        );
        assert_eq!(seen[1].0, "gavel/auctions/8");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edge_payloads_decode_to_the_state_and_a_restarted_broker_gets_it_again() {
        let mut broker = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut config) = shared(dir.path(), MqttEncoding::Edge);
        config.port = broker.port;
        config.topic_prefix = "site/9".into();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&shared), config, shutdown.clone()));
        shared.store.apply(state(5, 130));
        let decode = |seen: Vec<(String, String)>| {
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!(seen[0].0, "site/9/auctions/7");
            let bytes: Vec<u8> = (0..seen[0].1.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&seen[0].1[i..i + 2], 16).unwrap())
                .collect();
            let mut decoded = Vec::new();
            gavel_edge_proto::EdgeDecoder::new(65_544, 10)
                .decode_frame(&bytes, &mut decoded)
                .unwrap();
            decoded
        };
        let expected = vec![gavel_edge_proto::Decoded::State(state(5, 130))];
        assert_eq!(
            decode(subscribe(broker.port, "site/9/auctions/#", 1, true).await),
            expected
        );
        // The broker goes away and comes back empty (no persistence): the agent backs off,
        // reconnects and publishes the current state again.
        broker.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.restart();
        assert_eq!(
            decode(subscribe(broker.port, "site/9/auctions/#", 1, true).await),
            expected
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bid_requests_on_mqtt_are_queued_and_answered_on_the_status_topic() {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut config) = shared(dir.path(), MqttEncoding::Json);
        config.port = broker.port;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&shared), config, shutdown.clone()));
        // Connected once the retained state of an auction is there.
        shared.store.apply(state(1, 100));
        subscribe(broker.port, "gavel/auctions/7", 1, false).await;
        let port = broker.port;
        let statuses = tokio::task::spawn_blocking(move || {
            broker::subscribe(port, "gavel/bids/status", 2, 20, false)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker::publish(
            port,
            "gavel/bids/request",
            r#"{"auction_id": 7, "amount": 150, "tag": "m1"}"#,
        );
        broker::publish(
            port,
            "gavel/bids/request",
            r#"{"auction_id": 7, "tag": "m2"}"#,
        );
        let mut statuses: Vec<serde_json::Value> = statuses
            .await
            .unwrap()
            .into_iter()
            .map(|(_, payload)| serde_json::from_str(&payload).unwrap())
            .collect();
        statuses.sort_by_key(|s| s["tag"].as_str().map(str::to_owned));
        assert_eq!(statuses.len(), 2, "{statuses:?}");
        assert_eq!(
            (&statuses[0]["tag"], &statuses[0]["status"]),
            (&"m1".into(), &"queued".into())
        );
        assert_eq!(
            (&statuses[1]["tag"], &statuses[1]["status"]),
            (&"m2".into(), &"refused".into())
        );
        assert_eq!(statuses[1]["error"], "invalid");
        let bid_id = crate::bids::parse_bid_id(statuses[0]["bid_id"].as_str().unwrap()).unwrap();
        assert!(matches!(
            shared.bids.lock().status(bid_id),
            Some(Status::Queued { position: 0, .. })
        ));
        shutdown.cancel();
        task.await.unwrap();
    }
}
