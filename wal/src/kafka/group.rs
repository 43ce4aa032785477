//! [`GroupMembership`]: ownership of a topic's partitions by Kafka group membership (issue 14
//! item 2) — an rdkafka consumer in the group [`GroupConfig::group_id`], subscribed to the
//! log topic, whose assignment says which partitions this node should own.
//!
//! The consumer reads nothing (each assigned partition is paused at once: the node reads
//! partitions through its followers and replay); it only takes part in the group. Its
//! rebalance callbacks go to a [`Rebalancer`]: [`Rebalancer::revoke`] runs before the
//! partitions are released (the node stops accepting bids for them and lets what is in
//! flight become durable), [`Rebalancer::assign`] once the new assignment is known. The
//! assignor is librdkafka's `range` under the eager protocol: a rebalance revokes every
//! partition of every member and assigns them all again, so `revoke` gets all this member
//! had and `assign` the whole new assignment (the node resumes what came back and gives up
//! the rest).
//!
//! Membership is static (`group.instance.id` is [`GroupConfig::instance_id`]): a member
//! restarted under the same name within the session timeout rejoins as itself and gets its
//! partitions back without a rebalance of the others.
//!
//! The group is not the fence: the writer lease and the owner epoch are
//! ([`super::fence`]). A rebalance only tells a node which partitions to claim or give up; a
//! node that was assigned a partition still waits for its former owner's lease to be
//! released or to lapse before it writes, and a node that lost a partition without hearing
//! of it (paused, cut off) is fenced by the epoch as with the static assignment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::{GroupConfig, KafkaConfig, kafka_error};
use crate::durability::lock;
use crate::error::WalError;

/// Rebalances this member took part in (an assignment received).
pub const METRIC_REBALANCES: &str = "gavel_kafka_rebalances_total";
/// Time from a revocation's callback to the next assignment's handled, seconds.
pub const METRIC_REBALANCE_SECONDS: &str = "gavel_kafka_rebalance_seconds";
/// One poll of the group consumer: rebalance callbacks run inside it.
const POLL: Duration = Duration::from_millis(50);
/// How often the group's members are described (`GET /v1/cluster`).
const DESCRIBE_EVERY: Duration = Duration::from_secs(2);
/// The longest description request.
const DESCRIBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a member does when the group moves partitions (see the module docs).
pub trait Rebalancer: Send + Sync + 'static {
    /// The group takes `partitions` away from this member; they are released when this
    /// returns.
    fn revoke(&self, partitions: &[i32]);
    /// The group's assignment to this member now.
    fn assign(&self, partitions: &[i32]);
}

/// The member's consumer context: hands the rebalances to the [`Rebalancer`].
struct Member {
    rebalancer: Arc<dyn Rebalancer>,
    revoked_at: Mutex<Option<Instant>>,
}

impl ClientContext for Member {}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    let mut partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
    partitions.sort_unstable();
    partitions
}

impl ConsumerContext for Member {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                *lock(&self.revoked_at) = Some(Instant::now());
                let revoked = partitions(list);
                log::info!("the group revokes partitions {revoked:?}");
                self.rebalancer.revoke(&revoked);
            }
            Rebalance::Error(e) => log::warn!("group rebalance error: {e}"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        // Nothing is read through this consumer.
        if let Err(e) = consumer.pause(list) {
            log::warn!("cannot pause the group consumer's partitions: {e}");
        }
        let assigned = partitions(list);
        log::info!("the group assigns partitions {assigned:?}");
        self.rebalancer.assign(&assigned);
        metrics::counter!(METRIC_REBALANCES).increment(1);
        if let Some(revoked_at) = lock(&self.revoked_at).take() {
            metrics::histogram!(METRIC_REBALANCE_SECONDS)
                .record(revoked_at.elapsed().as_secs_f64());
        }
    }
}

/// This node's membership of the topic's ownership group; leaves it (and stops calling the
/// rebalancer) when dropped.
pub struct GroupMembership {
    stop: Arc<AtomicBool>,
    members: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMembership").finish_non_exhaustive()
    }
}

impl GroupMembership {
    /// Joins the group of `config.group` (an error if it is unset) on `config.topic`, and
    /// calls `rebalancer` from the group's thread at each rebalance.
    pub fn join(
        config: &KafkaConfig,
        rebalancer: Arc<dyn Rebalancer>,
    ) -> Result<GroupMembership, WalError> {
        let brokers = config.brokers.as_str();
        let Some(group) = &config.group else {
            return Err(WalError::Config("kafka group ownership is not configured"));
        };
        let consumer: BaseConsumer<Member> = member_config(config, group)
            .create_with_context(Member {
                rebalancer,
                revoked_at: Mutex::new(None),
            })
            .map_err(kafka_error("create the group consumer", brokers))?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(kafka_error("join the ownership group", brokers))?;
        let stop = Arc::new(AtomicBool::new(false));
        let members = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, members) = (Arc::clone(&stop), Arc::clone(&members));
            let group_id = group.group_id.clone();
            thread::Builder::new()
                .name("gavel-group".into())
                .spawn(move || take_part(&consumer, &group_id, &stop, &members))
                .map_err(|e| WalError::Kafka {
                    op: "start the group consumer",
                    brokers: brokers.to_owned(),
                    reason: e.to_string(),
                })?
        };
        Ok(GroupMembership {
            stop,
            members,
            thread: Some(thread),
        })
    }

    /// The group's members as last described (their client ids, the instance ids; or their
    /// member ids where the broker leaves the client id out), sorted.
    pub fn members(&self) -> Vec<String> {
        lock(&self.members).clone()
    }

    /// Stops taking part (a static member does not leave: its partitions stay assigned to
    /// it until its session times out, for a restart to get them back). Idempotent.
    pub fn stop(&mut self) {
        // Ordering: Release pairs with the group thread's Acquire load.
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GroupMembership {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The group consumer's configuration: static membership, the session timeout, no commits.
fn member_config(config: &KafkaConfig, group: &GroupConfig) -> rdkafka::ClientConfig {
    let mut client = config.client_config();
    let heartbeat_ms = (group.session_timeout_ms / 4).max(100);
    client
        .set("group.id", &group.group_id)
        .set("group.instance.id", &group.instance_id)
        .set("client.id", &group.instance_id)
        .set("session.timeout.ms", group.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", heartbeat_ms.to_string())
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest");
    client
}

/// The group thread: polls (rebalance callbacks run inside) and describes the group now and
/// then, until `stop`.
fn take_part(
    consumer: &BaseConsumer<Member>,
    group_id: &str,
    stop: &AtomicBool,
    members: &Mutex<Vec<String>>,
) {
    let mut described = Instant::now() - DESCRIBE_EVERY;
    // Ordering: Acquire pairs with `stop`'s Release store.
    while !stop.load(Ordering::Acquire) {
        if let Some(Err(e)) = consumer.poll(POLL) {
            log::debug!("group consumer: {e}");
        }
        if described.elapsed() >= DESCRIBE_EVERY {
            described = Instant::now();
            match consumer.fetch_group_list(Some(group_id), DESCRIBE_TIMEOUT) {
                Ok(list) => {
                    // tansu leaves the client id empty: the member id then (a static
                    // member's starts with its instance id).
                    let name = |m: &rdkafka::groups::GroupMemberInfo| match m.client_id() {
                        "" => m.id().to_owned(),
                        client => client.to_owned(),
                    };
                    let mut names: Vec<String> = (list.groups().iter())
                        .flat_map(|g| g.members().iter().map(name))
                        .collect();
                    names.sort();
                    *lock(members) = names;
                }
                Err(e) => log::debug!("cannot describe the ownership group: {e}"),
            }
        }
    }
}
