//! Which partition of the Kafka write-ahead log an auction lives in — the one function the
//! node (which writes and owns partitions) and the SDK (which routes bids to a partition's
//! owner) share.
//!
//! `partition = CRC-32(decimal auction id) mod partitions`, CRC-32 being the IEEE/zlib
//! checksum (reflected polynomial `0xEDB88320`) of the id written in ASCII decimal without
//! sign or leading zeros (`"42"`). That is exactly librdkafka's default partitioner
//! (`consistent_random`) applied to the record key the node has always used (the decimal
//! id), so topics written before the node chose partitions itself keep every auction in the
//! partition its earlier records are in. The mapping depends on the partition count: a
//! topic's partitions must never be added to: the node refuses to replay a record found in
//! another partition than this function names (docs/cluster.md).

/// The partition of `auction_id` in a topic of `partitions` partitions (at least 1; 0 is
/// taken as 1).
pub fn partition_of(auction_id: u64, partitions: u32) -> u32 {
    let mut digits = [0u8; 20];
    let key = decimal(auction_id, &mut digits);
    crc32fast::hash(key) % partitions.max(1)
}

/// `n` in ASCII decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_decimal_id_and_the_hash_is_ieee_crc32() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
        // The CRC-32 check value: CRC-32("123456789") = 0xCBF43926.
        assert_eq!(partition_of(123_456_789, u32::MAX), 0xCBF4_3926);
        assert_eq!(partition_of(7, 1), 0);
        assert_eq!(partition_of(7, 0), 0, "0 partitions is taken as 1");
    }

    #[test]
    fn auctions_spread_over_every_partition() {
        let mut counts = [0u32; 8];
        for id in 1..=8_000 {
            counts[partition_of(id, 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1_300).contains(&c)),
            "{counts:?}"
        );
    }
}
