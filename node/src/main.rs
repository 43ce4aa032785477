//! `gavel`: the Gavel node binary.
//!
//! Subcommands:
//! - `simulate` ([`simulate`]): demo auctions of every kind with simulated bidders in
//!   process, on real threads against the real engine; prints decisions per second, the
//!   outcome mix and the settled results.
//!
//! The network node (`serve`), the write-ahead log tools (`wal`) and certificates (`cert`)
//! arrive with their issues.

mod simulate;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Gavel: a low-latency real-time bidding engine.
#[derive(Parser, Debug)]
#[command(name = "gavel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run demo auctions with simulated bidders in process and print what happened.
    Simulate(simulate::Options),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate(options) => {
            let report = simulate::run(&options)?;
            print!("{report}");
            Ok(())
        }
    }
}
