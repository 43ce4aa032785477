//! `gavel-client`: the bidder SDK (being built; see issue 4).
