//! One stream's side of its subscriber's outbox: taking what is due with the slow-consumer
//! check, the per-transport gauges each connection reports its share of, the delivered
//! and conflated counters and the delivery latency.

use std::time::Instant;

use crate::clock::now_micros;
use crate::fanout::{Outgoing, Subscriber, hub};
use crate::metrics;

use super::STREAM_CHECK;

/// The subscriber fell too far behind: end its stream and count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlowConsumer;

/// What a stream last reported to the per-transport gauges (each connection adds its
/// deltas), its metric handles (looked up once, not per write) and the batch being taken.
#[derive(Debug)]
pub(super) struct Updates {
    subscriptions: usize,
    bytes: usize,
    subscriptions_gauge: ::metrics::Gauge,
    bytes_gauge: ::metrics::Gauge,
    delivery: hub::Delivery,
    /// The messages of the current take.
    pub(super) batch: Vec<Outgoing>,
}

impl Updates {
    /// Nothing reported yet, for a stream of `transport` (a metric label).
    pub(super) fn new(transport: &'static str) -> Updates {
        Updates {
            subscriptions: 0,
            bytes: 0,
            subscriptions_gauge: ::metrics::gauge!(metrics::STREAM_SUBSCRIPTIONS, "transport" => transport),
            bytes_gauge: ::metrics::gauge!(metrics::STREAM_QUEUE_BYTES, "transport" => transport),
            delivery: hub::Delivery::new(transport),
            batch: Vec::new(),
        }
    }

    /// Reports the subscriptions the stream holds now.
    pub(super) fn report_subscriptions(&mut self, now: usize) {
        if now != self.subscriptions {
            self.subscriptions_gauge
                .increment(now as f64 - self.subscriptions as f64);
            self.subscriptions = now;
        }
    }

    fn report_bytes(&mut self, now: usize) {
        if now != self.bytes {
            self.bytes_gauge.increment(now as f64 - self.bytes as f64);
            self.bytes = now;
        }
    }

    /// Takes back the stream's share of the gauges (it is closing).
    pub(super) fn report_closed(&mut self) {
        self.report_subscriptions(0);
        self.report_bytes(0);
    }

    /// Moves what is due in `subscriber`'s outbox into [`Updates::batch`]: at most `room`
    /// messages and about `bytes_max` bytes (at least one message when `room` is not
    /// zero). Counts them as delivered (the caller sends them now) and records their
    /// delivery latency. Returns when to look again (`None`: nothing is pending; a wake-up
    /// will come): at the next held-back update's time, and within [`STREAM_CHECK`] while
    /// the transport has no room or the outbox is over `outbound_max` (slow-consumer
    /// detection).
    pub(super) fn take(
        &mut self,
        subscriber: &Subscriber,
        now: Instant,
        room: usize,
        bytes_max: usize,
        outbound_max: usize,
    ) -> Result<Option<Instant>, SlowConsumer> {
        let check = now + STREAM_CHECK;
        if subscriber.is_slow(now) {
            return Err(SlowConsumer);
        }
        if room == 0 {
            // The gauge shows what waits while the transport cannot take it.
            self.report_bytes(subscriber.pending_bytes());
            return Ok(Some(check));
        }
        let (next, bytes) =
            subscriber.take_due(now, bytes_max, room, &self.delivery, &mut self.batch);
        self.report_bytes(bytes);
        self.delivery.record(&self.batch, now_micros());
        Ok(match next {
            Some(due) if bytes > outbound_max => Some(due.min(check)),
            Some(due) => Some(due),
            None if bytes > 0 => Some(check),
            None => None,
        })
    }
}
