//! The Kafka log's sender thread (issue 20 item 3): appenders copy each encoded record with
//! its key, partition and owner epoch into the lock-free ring the file log uses
//! (`writer::ring`), and this one thread takes the ring in LSN order and produces each
//! record. The bidding thread so pays for a copy instead of librdkafka's produce call, and
//! the produce order of a partition is still its LSN order (one thread produces them all,
//! in the order the claims gave).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::EPOCH_HEADER;
use super::client::error_code;
use super::log::{DeliveryContext, Shared};
use crate::Lsn;
use crate::durability::LogStatus;
use crate::error::{LogFailure, WalError};

/// What a slot holds before the payload: the key (an auction id), the partition and the
/// owner epoch the record is written under.
pub(super) const META_BYTES: usize = 8 + 4 + 8;

/// How long the sender waits before producing again after librdkafka's queue refused (it
/// is sized above the log's in-flight bound, so this is not expected).
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// A record's metadata as the slot stores it before the payload.
pub(super) fn meta(key: u64, partition: i32, epoch: u64) -> [u8; META_BYTES] {
    let mut meta = [0; META_BYTES];
    meta[..8].copy_from_slice(&key.to_le_bytes());
    meta[8..12].copy_from_slice(&partition.to_le_bytes());
    meta[12..].copy_from_slice(&epoch.to_be_bytes());
    meta
}

/// A slot's record: key, partition, the epoch header's value, payload.
struct Slot<'a> {
    key: u64,
    partition: i32,
    epoch: [u8; 8],
    payload: &'a [u8],
}

impl<'a> Slot<'a> {
    fn parse(slot: &'a [u8]) -> Slot<'a> {
        let (meta, payload) = slot.split_at(META_BYTES);
        let field = |range: std::ops::Range<usize>| &meta[range];
        Slot {
            key: u64::from_le_bytes(field(0..8).try_into().expect("8 bytes")),
            partition: i32::from_le_bytes(field(8..12).try_into().expect("4 bytes")),
            epoch: field(12..20).try_into().expect("8 bytes"),
            payload,
        }
    }
}

/// `n` in decimal into `buf`, without allocating (the record key the log always wrote); the
/// digits.
fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut rest = &mut buf[..];
    write!(rest, "{n}").expect("a u64 has at most 20 digits");
    let len = 20 - rest.len();
    &buf[..len]
}

/// Starts the sender thread of `shared`'s ring; it ends once the log is closed and every
/// record appended was produced, or at once when the log fails.
pub(super) fn spawn(
    shared: Arc<Shared>,
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
) -> Result<JoinHandle<()>, WalError> {
    thread::Builder::new()
        .name("gavel-wal-kafka".into())
        .spawn(move || run(&shared, &producer, &topic))
        .map_err(|e| WalError::Kafka {
            op: "start the sender thread",
            brokers: String::new(),
            reason: e.to_string(),
        })
}

fn run(shared: &Shared, producer: &ThreadedProducer<DeliveryContext>, topic: &str) {
    shared.ring.set_writer(thread::current());
    let mut failure = None;
    while failure.is_none() && shared.ring.wait_ready() {
        let sent_us = shared.now_us();
        shared.ring.take(|lsn, slot| {
            if failure.is_some() {
                // The log fails below: nothing after the failed record is produced.
                return;
            }
            // Ordering: Relaxed — a statistic; the report reads it on librdkafka's thread
            // after the send below, which synchronises through librdkafka's queue.
            shared.sent_slot(lsn).store(sent_us, Ordering::Relaxed);
            if let Err(why) = produce(shared, producer, topic, lsn, Slot::parse(slot)) {
                failure = Some(why);
            }
        });
    }
    if let Some(why) = failure {
        shared.fail(why);
    }
}

/// Produces one record (non-blocking: librdkafka only enqueues it).
fn produce(
    shared: &Shared,
    producer: &ThreadedProducer<DeliveryContext>,
    topic: &str,
    lsn: Lsn,
    slot: Slot<'_>,
) -> Result<(), LogFailure> {
    let mut digits = [0; 20];
    let key = decimal(slot.key, &mut digits);
    loop {
        let record = BaseRecord::with_opaque_to(topic, lsn as usize)
            .key(key)
            .partition(slot.partition)
            .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: EPOCH_HEADER,
                value: Some(&slot.epoch),
            }))
            .payload(slot.payload);
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                if shared.ring.status() == LogStatus::Open =>
            {
                // Retrying the same record keeps the order: nothing later was produced.
                thread::sleep(QUEUE_FULL_WAIT);
            }
            Err((error, _)) => {
                return Err(LogFailure::Produce {
                    lsn,
                    code: error_code(&error),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_gives_back_the_key_partition_epoch_and_payload() {
        let mut slot = meta(u64::MAX - 3, 7, 0x0102_0304_0506_0708).to_vec();
        slot.extend_from_slice(b"payload");
        let parsed = Slot::parse(&slot);
        assert_eq!(parsed.key, u64::MAX - 3);
        assert_eq!(parsed.partition, 7);
        assert_eq!(
            parsed.epoch,
            [1, 2, 3, 4, 5, 6, 7, 8],
            "big-endian, as the header"
        );
        assert_eq!(parsed.payload, b"payload");
    }

    #[test]
    fn keys_are_written_in_decimal_as_before() {
        let mut buf = [0; 20];
        for n in [0, 7, 10, 1_000, 123_456_789, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
