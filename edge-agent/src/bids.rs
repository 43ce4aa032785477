//! Local clients' bids: the request they send (HTTP `POST /v1/bids`, or the MQTT request
//! topic), its checks, the queue behind a lock, and the status they read back (HTTP `GET
//! /v1/bids/<id>`, or the MQTT status topic).

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
use tokio::sync::{Notify, broadcast};

use crate::queue::{Outcome, PushError, Queue, QueuedBid, Status, TAG_BYTES_MAX};

/// Bid statuses announced to the MQTT side at most this far ahead of it (a lagging
/// publisher skips the oldest; the HTTP status endpoint still has them).
const EVENTS_CAPACITY: usize = 1_024;
/// Amounts are below 2^62 (the engine's price word).
const AMOUNT_LIMIT: u64 = 1 << 62;

/// A bid as a local client sends it (JSON).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct BidRequest {
    auction_id: u64,
    amount: u64,
    #[serde(default)]
    max: Option<u64>,
    /// 1 to 32 hex digits, not all zero; a random id when absent.
    #[serde(default)]
    bid_id: Option<String>,
    /// The client's reference, echoed with every status (at most 64 bytes).
    #[serde(default)]
    tag: Option<String>,
}

impl BidRequest {
    /// Parses and checks a JSON request; the error says what is wrong.
    pub(crate) fn parse(body: &[u8]) -> Result<QueuedBid, String> {
        let request: BidRequest =
            serde_json::from_slice(body).map_err(|e| format!("bad bid JSON: {e}"))?;
        if !(1..AMOUNT_LIMIT).contains(&request.amount) {
            return Err(format!(
                "amount must be within 1..2^62, got {}",
                request.amount
            ));
        }
        if let Some(max) = request.max
            && !(request.amount..AMOUNT_LIMIT).contains(&max)
        {
            return Err(format!("max must be within amount..2^62, got {max}"));
        }
        let tag = request.tag.unwrap_or_default();
        if tag.len() > TAG_BYTES_MAX {
            return Err(format!("tag longer than {TAG_BYTES_MAX} bytes"));
        }
        let bid_id = match request.bid_id.as_deref() {
            None => gavel_client::random_bid_id(),
            Some(hex) => parse_bid_id(hex)?,
        };
        Ok(QueuedBid {
            bid_id,
            auction_id: request.auction_id,
            amount: request.amount,
            max: request.max,
            queued_at_us: unix_micros(),
            tag,
        })
    }
}

/// A bid id from 1 to 32 hex digits, not zero.
pub(crate) fn parse_bid_id(hex: &str) -> Result<u128, String> {
    let valid = (1..=32).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    match u128::from_str_radix(hex, 16) {
        Ok(id) if valid && id != 0 => Ok(id),
        _ => Err(format!(
            "bid_id must be 1 to 32 hex digits, not zero: {hex:?}"
        )),
    }
}

/// A bid id as 32 hex digits.
pub(crate) fn bid_id_hex(bid_id: u128) -> String {
    format!("{bid_id:032x}")
}

/// A status as JSON: `bid_id`, `status` (`queued` or the outcome's name), `tag`, and
/// `position` (queued), `seq` and `price` (accepted) or `min_next` (too low).
pub(crate) fn status_json(bid_id: u128, status: &Status) -> serde_json::Value {
    let (name, tag) = match status {
        Status::Queued { tag, .. } => ("queued", tag),
        Status::Done { outcome, tag } => (outcome.name(), tag),
    };
    let mut json = serde_json::json!({
        "bid_id": bid_id_hex(bid_id),
        "status": name,
        "tag": tag,
    });
    match status {
        Status::Queued { position, .. } => json["position"] = (*position).into(),
        Status::Done {
            outcome: Outcome::Accepted { seq, price },
            ..
        } => {
            json["seq"] = (*seq).into();
            json["price"] = (*price).into();
        }
        Status::Done {
            outcome: Outcome::TooLow { min_next },
            ..
        } => json["min_next"] = (*min_next).into(),
        Status::Done { .. } => {}
    }
    json
}

/// The queue as the agent's tasks share it.
pub(crate) struct Bids {
    queue: Mutex<Queue>,
    /// Rung when a bid is queued (the forwarder waits on it).
    pub(crate) queued: Notify,
    /// Every status change, for the MQTT status topic.
    pub(crate) events: broadcast::Sender<(u128, Status)>,
}

impl Bids {
    pub(crate) fn new(queue: Queue) -> Bids {
        Bids {
            queue: Mutex::new(queue),
            queued: Notify::new(),
            events: broadcast::channel(EVENTS_CAPACITY).0,
        }
    }

    /// The queue, locked (short scopes only; never across an await).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock is a bug that already aborted the task; the queue
        // on disk is the truth, so go on with the state as it is.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `bid` on a blocking thread (append + fdatasync) and announces it.
    pub(crate) async fn submit(self: &Arc<Self>, bid: QueuedBid) -> Result<Status, PushError> {
        let bids = Arc::clone(self);
        let (bid_id, tag) = (bid.bid_id, bid.tag.clone());
        let pushed = tokio::task::spawn_blocking(move || bids.lock().push(bid))
            .await
            .map_err(|e| PushError::Io(std::io::Error::other(e)))?;
        let position = pushed.inspect_err(|e| {
            if matches!(e, PushError::Full { .. }) {
                metrics::counter!(crate::metrics::BIDS_REFUSED, "reason" => "queue_full")
                    .increment(1);
            }
        })?;
        metrics::counter!(crate::metrics::BIDS_QUEUED).increment(1);
        let status = Status::Queued { position, tag };
        let _ = self.events.send((bid_id, status.clone()));
        self.queued.notify_one();
        Ok(status)
    }
}

/// Now, microseconds since the Unix epoch.
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}
