//! Where an auction is served when several nodes share the Kafka log (issue 14 item 5):
//! each node publishes its addresses with its lease claims ([`advertisement`]), reads the
//! others' from their leases, and answers a bid or admin request for an auction of a
//! partition it does not write with that partition's owner (`owner_elsewhere`) — or, when
//! nobody serves the partition right now (its lease lapsed or is being taken over, also by
//! this node), with no owner, which the client retries.
//!
//! The advertisement is one word, `quic=<host:port>,https=<host:port>` (either may be
//! missing), the fourth word of a claim in `<topic>.writer.<p>` (`gavel_wal::kafka::fence`).

use gavel_proto::partition::partition_of;
use gavel_proto::pb;
use gavel_wal::kafka::KafkaLog;
use gavel_wal::kafka::fence::LeaseHolder;

/// The advertisement word of a node reached at `quic` and `https` (`host:port` each; empty:
/// not advertised).
pub fn advertisement(quic: &str, https: &str) -> String {
    let fields = [("quic", quic), ("https", https)];
    let present = fields.iter().filter(|(_, address)| !address.is_empty());
    let words: Vec<String> = present.map(|(key, a)| format!("{key}={a}")).collect();
    words.join(",")
}

/// `(quic, https)` of an advertisement word (empty where missing; unknown keys ignored, so a
/// later release may add some).
pub fn addresses(advertisement: &str) -> (String, String) {
    let (mut quic, mut https) = (String::new(), String::new());
    for field in advertisement.split(',') {
        match field.split_once('=') {
            Some(("quic", address)) => quic = address.to_owned(),
            Some(("https", address)) => https = address.to_owned(),
            _ => {}
        }
    }
    (quic, https)
}

/// The owner of `auction`'s partition when this node does not write it (see the module
/// docs): `holder` is the partition's lease holder as last read. `None` when this node
/// writes the partition and accepts its appends (not paused by a rebalance).
pub(crate) fn owner_elsewhere(
    kafka: &KafkaLog,
    auction: u64,
    holder: impl FnOnce(i32) -> Option<LeaseHolder>,
) -> Option<pb::PartitionOwner> {
    let partition = kafka.partition_of(auction);
    if kafka.accepts(partition) {
        return None;
    }
    let partitions = kafka.partitions().max(1) as u32;
    debug_assert_eq!(partition as u32, partition_of(auction, partitions));
    let mut owner = pb::PartitionOwner {
        partition: partition as u32,
        partitions,
        ..pb::PartitionOwner::default()
    };
    // A lapsed lease, this node's own claim of a partition it is still replaying, or one a
    // group rebalance is revoking from it (paused): nobody decides its bids now.
    let me = &kafka.config().owner;
    if let Some(holder) = holder(partition).filter(|h| h.live && h.owner != *me) {
        (owner.quic, owner.https) = addresses(&holder.advertise);
        owner.node = holder.owner;
        owner.epoch = holder.epoch;
    }
    Some(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertisement_reads_back_as_its_addresses() {
        let word = advertisement("127.0.0.1:7443", "node-2.example:8443");
        assert_eq!(word, "quic=127.0.0.1:7443,https=node-2.example:8443");
        assert_eq!(
            addresses(&word),
            ("127.0.0.1:7443".into(), "node-2.example:8443".into())
        );
        assert_eq!(advertisement("", "[::1]:8443"), "https=[::1]:8443");
        assert_eq!(
            addresses("https=[::1]:8443"),
            (String::new(), "[::1]:8443".into())
        );
        assert_eq!(addresses(""), (String::new(), String::new()));
        assert_eq!(
            addresses("quic=a:1,future=x,junk"),
            ("a:1".into(), String::new())
        );
    }
}
