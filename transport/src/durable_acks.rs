//! [`DurableAcks`]: the accepted bids of one QUIC stream or WebSocket connection waiting for
//! their durable acks, answered in request order — one queue for both transports.
//!
//! Why request order costs nothing: a session's receipts never decrease in request order (an
//! accepted bid's is the LSN its record was appended at; a retried bid's is the last receipt
//! so far, at least every earlier one), and the log's durable LSN only grows. So the front
//! of the queue is always the first to become durable, and a later bid is never held back
//! by an earlier one that is not durable yet.
//!
//! No `Box` per bid: the waits ([`DurableWait`], each holding the backend's `Unpin`
//! durability future) sit inline in one ring buffer, and only the front is polled — one
//! waker registered with the log for the whole queue. When the front resolves, the waits
//! behind it are polled in the same turn (each a read of the durable LSN) and every one
//! already decided is answered.
//!
//! The log failed or shut down: each waiting bid whose record is not durable is answered,
//! in order, with `ERROR_CODE_INTERNAL` naming the cause (it was accepted but never
//! acknowledged durable; the next recovery decides its fate); those before it that are
//! durable still get their `DurableAck`.
//!
//! Bound: `len_max` waits, the connection's `pending_durable_per_connection_max`. The queue is
//! never full when a bid is pushed: the session refuses a bid (`Overloaded`, reason
//! `pending_durable`) while the connection's pending count — which counts every wait in
//! this queue until it is answered — is at that limit. Pushing onto a full queue is
//! therefore a broken invariant and panics.

use std::collections::VecDeque;
use std::future::Future;
use std::task::{Context, Poll};

use gavel_proto::pb;

use crate::gateway::DurableError;
use crate::session::DurableWait;

/// One stream's accepted bids waiting for their durable acks, in request order.
#[derive(Debug)]
pub(crate) struct DurableAcks<F> {
    waits: VecDeque<DurableWait<F>>,
    len_max: usize,
}

impl<F> DurableAcks<F>
where
    F: Future<Output = Result<(), DurableError>> + Unpin,
{
    /// An empty queue of at most `len_max` waits (it allocates as it grows, so an idle
    /// watcher holds nothing).
    pub(crate) fn new(len_max: usize) -> Self {
        Self {
            waits: VecDeque::new(),
            len_max,
        }
    }

    /// Whether no bid waits for its durable ack.
    pub(crate) fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }

    /// Queues the wait of the latest accepted bid behind every earlier one.
    ///
    /// # Panics
    /// If the queue is full: the session refuses bids before that (see the module doc).
    pub(crate) fn push(&mut self, wait: DurableWait<F>) {
        assert!(
            self.waits.len() < self.len_max,
            "durable-ack queue full ({} waits): the session admits no bid past \
             pending_durable_per_connection_max",
            self.len_max
        );
        self.waits.push_back(wait);
    }

    /// Appends to `out`, in request order, the answers of the waits at the front that have
    /// ended (a durable ack, or the error of a log that failed or shut down), at most
    /// `answers_max` of them (a driver whose write buffer has room for a few passes a
    /// small number; the rest stay queued); `Ready` if there was one. `Pending` registers
    /// `cx` with the front wait only.
    pub(crate) fn poll_answers(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<pb::ServerMessage>,
        answers_max: usize,
    ) -> Poll<()> {
        let before = out.len();
        while out.len() - before < answers_max
            && let Some(front) = self.waits.front_mut()
        {
            let Poll::Ready(result) = front.poll_durable(cx) else {
                break;
            };
            // Invariant: the loop holds the front just polled.
            let wait = self
                .waits
                .pop_front()
                .expect("the front wait was just polled");
            out.push(wait.answer(result));
        }
        if out.len() > before {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use gavel_proto::pb::server_message::Body as Reply;

    use super::*;

    /// A durability wait the test ends by hand (the transport crate knows no log): `None`
    /// while waiting, then the log's verdict.
    #[derive(Clone, Default)]
    struct Gate(Arc<Mutex<Option<Result<(), DurableError>>>>);

    impl Gate {
        fn end(&self, result: Result<(), DurableError>) {
            *self.0.lock().unwrap() = Some(result);
        }
    }

    impl Future for Gate {
        type Output = Result<(), DurableError>;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            match *self.0.lock().unwrap() {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            }
        }
    }

    /// A queue of `n` waits for request ids 1..=n, their gates, and the connection's
    /// pending count.
    fn queue(n: u64, len_max: usize) -> (DurableAcks<Gate>, Vec<Gate>, Arc<AtomicUsize>) {
        let pending = Arc::new(AtomicUsize::new(0));
        let mut acks = DurableAcks::new(len_max);
        let gates: Vec<Gate> = (1..=n).map(|_| Gate::default()).collect();
        for (id, gate) in (1..=n).zip(&gates) {
            acks.push(DurableWait::for_test(id, gate.clone(), &pending));
        }
        (acks, gates, pending)
    }

    fn poll(acks: &mut DurableAcks<Gate>) -> (Poll<()>, Vec<pb::ServerMessage>) {
        poll_at_most(acks, usize::MAX)
    }

    fn poll_at_most(
        acks: &mut DurableAcks<Gate>,
        answers_max: usize,
    ) -> (Poll<()>, Vec<pb::ServerMessage>) {
        let mut out = Vec::new();
        let cx = &mut Context::from_waker(Waker::noop());
        let poll = acks.poll_answers(cx, &mut out, answers_max);
        (poll, out)
    }

    /// Each answer's request id, and the error text of an error answer.
    fn answers(out: &[pb::ServerMessage]) -> Vec<(u64, Option<String>)> {
        out.iter()
            .map(|m| match &m.body {
                Some(Reply::DurableAck(_)) => (m.request_id, None),
                Some(Reply::Error(e)) => {
                    assert_eq!(e.code, pb::ErrorCode::Internal as i32);
                    (m.request_id, Some(e.message.clone()))
                }
                other => panic!("not a durable answer: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn later_waits_that_end_first_are_answered_after_the_front_in_request_order() {
        let (mut acks, gates, pending) = queue(3, 8);
        gates[2].end(Ok(()));
        gates[1].end(Ok(()));
        assert_eq!(poll(&mut acks), (Poll::Pending, vec![]));
        assert_eq!(pending.load(Ordering::Relaxed), 3);

        gates[0].end(Ok(()));
        let (ready, out) = poll(&mut acks);
        assert_eq!(ready, Poll::Ready(()));
        assert_eq!(answers(&out), vec![(1, None), (2, None), (3, None)]);
        assert!(acks.is_empty());
        assert_eq!(pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_the_ended_front_is_answered_and_the_rest_keep_waiting() {
        let (mut acks, gates, pending) = queue(3, 8);
        gates[0].end(Ok(()));
        gates[2].end(Ok(()));
        let (ready, out) = poll(&mut acks);
        assert_eq!(ready, Poll::Ready(()));
        assert_eq!(answers(&out), vec![(1, None)]);
        assert_eq!(pending.load(Ordering::Relaxed), 2);
        assert_eq!(poll(&mut acks), (Poll::Pending, vec![]));
    }

    #[test]
    fn a_poll_answers_at_most_answers_max_and_keeps_the_rest_in_order() {
        let (mut acks, gates, pending) = queue(3, 8);
        for gate in &gates {
            gate.end(Ok(()));
        }
        let (ready, out) = poll_at_most(&mut acks, 2);
        assert_eq!(ready, Poll::Ready(()));
        assert_eq!(answers(&out), vec![(1, None), (2, None)]);
        assert_eq!(pending.load(Ordering::Relaxed), 1);
        let (_, out) = poll_at_most(&mut acks, 2);
        assert_eq!(answers(&out), vec![(3, None)]);
        assert!(acks.is_empty());
    }

    #[test]
    fn a_failed_or_closed_log_answers_each_undurable_bid_with_an_internal_error_in_order() {
        for end in [
            DurableError::Failed { durable: 5 },
            DurableError::Closed { durable: 5 },
        ] {
            let (mut acks, gates, pending) = queue(3, 8);
            // Bid 1's record reached the disk before the log ended; 2 and 3 never will.
            gates[0].end(Ok(()));
            gates[2].end(Err(end));
            gates[1].end(Err(end));
            let (_, out) = poll(&mut acks);
            let error =
                format!("the bid was accepted but is {end}; it was never acknowledged durable");
            assert_eq!(
                answers(&out),
                vec![(1, None), (2, Some(error.clone())), (3, Some(error))]
            );
            assert!(acks.is_empty());
            assert_eq!(pending.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn a_queue_holds_len_max_waits() {
        let (mut acks, _gates, pending) = queue(4, 4);
        assert_eq!(pending.load(Ordering::Relaxed), 4);
        assert_eq!(poll(&mut acks), (Poll::Pending, vec![]));
    }

    #[test]
    #[should_panic(expected = "durable-ack queue full (4 waits)")]
    fn pushing_past_len_max_breaks_the_sessions_admission_invariant() {
        let (mut acks, _gates, pending) = queue(4, 4);
        acks.push(DurableWait::for_test(5, Gate::default(), &pending));
    }
}
