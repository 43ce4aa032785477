//! The closer: it sleeps until the next auction's end, a creation of an earlier-ending
//! auction wakes it, and each settlement is announced to the watchers once durable.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_engine::{AuctionId, Phase, UnixMicros};
use gavel_node::{Node, NodeBackend, NodeConfig, closer};
use gavel_transport::Limits;
use gavel_transport::clock::now_micros;
use gavel_transport::fanout::{Change, Hub};
use tokio_util::sync::CancellationToken;

/// The closer sleeps towards an auction ending in an hour, and its longest sleep is an hour:
/// only the alarm of a creation can make it close the new, earlier auction in time.
#[test]
fn a_new_earlier_auction_wakes_the_closer_which_settles_it_at_its_end() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(dir.path(), NodeConfig::default()).unwrap();
    let node = Arc::new(node);
    let hub = Arc::new(Hub::new(1, 64, &Limits::default()));
    let watcher = hub.connect(Duration::ZERO);
    hub.change(&watcher, Change::Add, &["test.lot-2".to_owned()], &[])
        .unwrap();
    let hour = Duration::from_secs(3_600);
    let shutdown = CancellationToken::new();
    let thread = closer::spawn(
        Arc::new(NodeBackend(Arc::clone(&node))),
        Arc::clone(&hub),
        hour,
        shutdown.clone(),
        runtime.handle().clone(),
    )
    .unwrap();
    let later = UnixMicros(now_micros().0 + 3_600_000_000);
    node.create_auction(common::english(1, later), now_micros())
        .unwrap();
    // Asleep towards `later` by now (were it still awake, the creation below is kept for its
    // next sleep: either way only the alarm closes auction 2 in time).
    std::thread::sleep(Duration::from_millis(100));
    let soon = UnixMicros(now_micros().0 + 200_000);
    node.create_auction(common::english(2, soon), now_micros())
        .unwrap();
    // Generous: without the alarm the closer would sleep for an hour.
    let deadline = Instant::now() + Duration::from_secs(60);
    while watcher.outbox().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let view = |id| node.engine().view(AuctionId(id), now_micros()).unwrap();
    assert_eq!(view(2).phase, Phase::Settled, "closed at its end");
    assert!(view(2).changed_at >= soon, "not before its end");
    assert!(
        !watcher.outbox().is_empty(),
        "the close and settlement were announced"
    );
    assert_eq!(view(1).phase, Phase::Open);
    shutdown.cancel();
    node.wake_closer();
    thread.join().unwrap();
}
