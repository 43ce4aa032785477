//! What the bidders send: the auction of each bid (uniform or Zipf-skewed over the run's
//! auctions) and its amount — a winning bid (above everything this run sent to that
//! auction so far) or a bid that is certainly too low, in a chosen mix.
//!
//! With several connections, auction `i` is bid on only by connection `i % connections`
//! (when there are at least as many auctions as connections): bids on one connection
//! arrive in order, so a bid meant to win is not overtaken by a higher one sent later on
//! another connection. The skew applies within each connection's share of the auctions.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, ensure};
use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// Every auction starts at this price (ticks); a too-low bid offers less.
pub const START_PRICE: u64 = 100;
/// Step between two winning bids on one auction, above every increment of the default
/// English increment table (100 ticks above 100 000).
const WIN_STEP: u64 = 1_000;
/// A too-low bid's amount: below the start price, so refused whatever the auction's state.
const TOO_LOW_AMOUNT: u64 = 1;

/// How auctions are picked.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Pick {
    /// Every auction equally often.
    Uniform,
    /// Zipf-skewed with this exponent: auction rank `k` is picked ∝ `1 / k^s`.
    Zipf(f64),
}

/// The auctions of a run and the amounts bid on them so far.
#[derive(Debug)]
pub struct Workload {
    ids: Vec<u64>,
    zipf: Option<Zipf<f64>>,
    win_ratio: f64,
    /// Highest winning amount handed out per auction (index as in `ids`).
    highest: Vec<AtomicU64>,
}

/// One bid to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedBid {
    /// The auction.
    pub auction_id: u64,
    /// The amount, ticks.
    pub amount: u64,
    /// Whether it was meant to win (it may still lose a race with another connection's bid).
    pub meant_to_win: bool,
}

impl Workload {
    /// A workload over `ids`, picked by `pick`, `win_ratio` of the bids meant to win.
    pub fn new(ids: Vec<u64>, pick: Pick, win_ratio: f64) -> Result<Workload> {
        ensure!(!ids.is_empty(), "at least one auction");
        ensure!(
            (0.0..=1.0).contains(&win_ratio),
            "--win-ratio must be within 0..=1"
        );
        let zipf = match pick {
            Pick::Uniform => None,
            Pick::Zipf(s) => {
                ensure!(s > 0.0, "the Zipf exponent must be positive");
                Some(Zipf::new(ids.len() as f64, s)?)
            }
        };
        let highest = ids.iter().map(|_| AtomicU64::new(START_PRICE)).collect();
        Ok(Workload {
            ids,
            zipf,
            win_ratio,
            highest,
        })
    }

    /// The auctions.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The next bid of connection `lane` of `lanes`.
    pub fn next_bid(&self, rng: &mut impl Rng, lane: usize, lanes: usize) -> PlannedBid {
        let n = self.ids.len();
        let picked = match &self.zipf {
            // Zipf samples ranks 1..=n as floats.
            Some(zipf) => (zipf.sample(rng) as usize).clamp(1, n) - 1,
            None => rng.random_range(0..n),
        };
        let index = if lanes <= 1 || n < lanes {
            picked
        } else {
            // The auction of this lane's share next to the one picked.
            let candidate = picked - picked % lanes + lane % lanes;
            if candidate < n {
                candidate
            } else {
                candidate - lanes
            }
        };
        let meant_to_win = rng.random_bool(self.win_ratio);
        let amount = if meant_to_win {
            // Ordering: only the value matters (amounts unique and growing per auction);
            // nothing else is published through it.
            self.highest[index].fetch_add(WIN_STEP, Ordering::Relaxed) + WIN_STEP
        } else {
            TOO_LOW_AMOUNT
        };
        PlannedBid {
            auction_id: self.ids[index],
            amount,
            meant_to_win,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_and_skew() {
        let ids: Vec<u64> = (1..=100).collect();
        let w = Workload::new(ids, Pick::Zipf(1.1), 0.25).unwrap();
        let mut rng = rand::rng();
        let mut wins = 0;
        let mut first = 0;
        for _ in 0..10_000 {
            let bid = w.next_bid(&mut rng, 0, 1);
            assert!((1..=100).contains(&bid.auction_id));
            if bid.meant_to_win {
                wins += 1;
                assert!(bid.amount > START_PRICE);
            } else {
                assert!(bid.amount < START_PRICE);
            }
            first += u32::from(bid.auction_id == 1);
        }
        assert!((2_000..3_000).contains(&wins), "{wins}");
        // Rank 1 of 100 under s = 1.1 gets ≈ 1/H ≈ 20 % of the picks; uniform would be 1 %.
        assert!(first > 1_000, "{first}");
    }

    #[test]
    fn each_auction_belongs_to_one_lane() {
        let w = Workload::new((0..100).collect(), Pick::Zipf(1.05), 1.0).unwrap();
        let mut rng = rand::rng();
        for lane in 0..16 {
            for _ in 0..1_000 {
                let bid = w.next_bid(&mut rng, lane, 16);
                assert_eq!(bid.auction_id as usize % 16, lane, "{bid:?}");
            }
        }
        // Fewer auctions than lanes: every lane may bid anywhere.
        let w = Workload::new(vec![7], Pick::Uniform, 1.0).unwrap();
        assert_eq!(w.next_bid(&mut rng, 3, 16).auction_id, 7);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Workload::new(vec![], Pick::Uniform, 0.5).is_err());
        assert!(Workload::new(vec![1], Pick::Uniform, 1.5).is_err());
        assert!(Workload::new(vec![1], Pick::Zipf(0.0), 0.5).is_err());
    }
}
