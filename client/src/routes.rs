//! The partition → node map of a client of several nodes (docs/quic.md, "Several nodes"):
//! sans-IO, fed by the nodes' `MISDIRECTED` and `NO_OWNER` answers, read for every bid.
//!
//! An auction's partition is `gavel_proto::partition::partition_of(auction, partitions)`,
//! the node's own function; the partition count comes with every redirect. Until the first
//! redirect the map is empty and every bid goes to the node the client connected to.

use std::collections::HashMap;

use gavel_proto::partition::partition_of;
use gavel_proto::pb;

/// Partitions a map holds at most (the node allows 10 000; a larger count in an answer is
/// not believed).
pub(crate) const PARTITIONS_MAX: u32 = 10_000;

/// Who owns which partition, as the nodes last said.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// The log's partition count; 0 until a node said.
    partitions: u32,
    /// Partition → the owner's advertised QUIC address (`host:port`).
    owners: HashMap<u32, String>,
}

impl Routes {
    /// The QUIC address of the owner of `auction`'s partition, if known.
    pub(crate) fn owner_of(&self, auction: u64) -> Option<&str> {
        if self.partitions == 0 {
            return None;
        }
        let partition = partition_of(auction, self.partitions);
        self.owners.get(&partition).map(String::as_str)
    }

    /// Learns from a node's routing answer: the partition count (a new count forgets every
    /// owner: the partitions are others), and the partition's owner — or that it has none
    /// this client can reach (`NO_OWNER`, or an owner advertising no QUIC address). Returns
    /// the owner's QUIC address, if any.
    pub(crate) fn learn(&mut self, owner: &pb::PartitionOwner) -> Option<String> {
        if owner.partitions == 0
            || owner.partitions > PARTITIONS_MAX
            || owner.partition >= owner.partitions
        {
            return None;
        }
        if owner.partitions != self.partitions {
            self.partitions = owner.partitions;
            self.owners.clear();
        }
        if owner.node.is_empty() || owner.quic.is_empty() {
            self.owners.remove(&owner.partition);
            return None;
        }
        self.owners.insert(owner.partition, owner.quic.clone());
        Some(owner.quic.clone())
    }

    /// Forgets every partition owned by the node at `quic` (its connection was lost: its
    /// partitions may move).
    pub(crate) fn forget_node(&mut self, quic: &str) {
        self.owners.retain(|_, owner| owner != quic);
    }

    /// Every node address the map names, and how many partitions each.
    #[cfg(test)]
    fn nodes(&self) -> Vec<(&str, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for owner in self.owners.values() {
            *counts.entry(owner).or_default() += 1;
        }
        let mut nodes: Vec<_> = counts.into_iter().collect();
        nodes.sort_unstable();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(partition: u32, partitions: u32, node: &str, quic: &str) -> pb::PartitionOwner {
        pb::PartitionOwner {
            partition,
            partitions,
            node: node.into(),
            quic: quic.into(),
            ..pb::PartitionOwner::default()
        }
    }

    /// The first auction id (from 1) in `partition` of `partitions`.
    fn auction_in(partition: u32, partitions: u32) -> u64 {
        (1..)
            .find(|&id| partition_of(id, partitions) == partition)
            .unwrap()
    }

    #[test]
    fn a_redirect_routes_every_auction_of_its_partition_and_no_other() {
        let mut routes = Routes::default();
        let a = auction_in(2, 4);
        assert_eq!(routes.owner_of(a), None, "nothing known: the home node");
        assert_eq!(
            routes
                .learn(&owner(2, 4, "node-b", "10.0.0.2:7443"))
                .as_deref(),
            Some("10.0.0.2:7443")
        );
        // Every auction of partition 2 goes there, others are still unknown.
        for id in (1..200).filter(|&id| partition_of(id, 4) == 2) {
            assert_eq!(routes.owner_of(id), Some("10.0.0.2:7443"), "{id}");
        }
        assert_eq!(routes.owner_of(auction_in(1, 4)), None);
        // The same function as the node's: CRC-32 of the decimal id.
        assert_eq!(partition_of(123_456_789, u32::MAX), 0xCBF4_3926);
    }

    #[test]
    fn an_owner_change_replaces_the_old_owner_and_no_owner_forgets_it() {
        let mut routes = Routes::default();
        let a = auction_in(0, 4);
        routes.learn(&owner(0, 4, "node-a", "a:1"));
        routes.learn(&owner(1, 4, "node-a", "a:1"));
        assert_eq!(routes.owner_of(a), Some("a:1"));
        routes.learn(&owner(0, 4, "node-c", "c:1"));
        assert_eq!(routes.owner_of(a), Some("c:1"));
        assert_eq!(routes.nodes(), [("a:1", 1), ("c:1", 1)]);
        // Mid-takeover: nobody owns it.
        assert_eq!(routes.learn(&owner(0, 4, "", "")), None);
        assert_eq!(routes.owner_of(a), None);
        // An owner advertising no QUIC address cannot be routed to.
        assert_eq!(routes.learn(&owner(0, 4, "node-d", "")), None);
        assert_eq!(routes.owner_of(a), None);
    }

    #[test]
    fn a_lost_node_is_forgotten_and_a_new_partition_count_starts_afresh() {
        let mut routes = Routes::default();
        routes.learn(&owner(0, 4, "node-a", "a:1"));
        routes.learn(&owner(1, 4, "node-b", "b:1"));
        routes.learn(&owner(2, 4, "node-a", "a:1"));
        routes.forget_node("a:1");
        assert_eq!(routes.nodes(), [("b:1", 1)]);
        // The log has 8 partitions now: what was said of 4 means nothing.
        routes.learn(&owner(3, 8, "node-c", "c:1"));
        assert_eq!(routes.nodes(), [("c:1", 1)]);
        assert_eq!(routes.owner_of(auction_in(1, 4)), None);
    }

    #[test]
    fn an_answer_with_impossible_numbers_teaches_nothing() {
        let mut routes = Routes::default();
        routes.learn(&owner(0, 4, "node-a", "a:1"));
        for bad in [
            owner(0, 0, "x", "x:1"),
            owner(4, 4, "x", "x:1"),
            owner(0, PARTITIONS_MAX + 1, "x", "x:1"),
        ] {
            assert_eq!(routes.learn(&bad), None);
        }
        assert_eq!(routes.nodes(), [("a:1", 1)]);
    }
}
