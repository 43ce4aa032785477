//! `gavel`: the Gavel node binary.
//!
//! Subcommands:
//! - `simulate` ([`gavel_node::simulate`]): demo auctions of every kind with simulated
//!   bidders in process, on real threads against the real engine — durable on `./data` by
//!   default (a second run recovers the first), or `--in-memory`.
//! - `recover <data-dir>`: start as the node would (truncate a torn tail, restore the latest
//!   snapshot, replay the log), print what was recovered and the state hash, and exit.
//! - `wal verify|dump` ([`gavel_node::wal_tools`]): offline checks and a readable dump of a
//!   log.
//! - `cert`: a development CA with server, bidder, device, admin and watcher certificates
//!   (`cert issue`, `cert revoke` for more).
//! - `serve` ([`gavel_node::serve`]): the network node — QUIC and WebSocket bidders, the
//!   HTTPS admin API, `/metrics`, health probes; `serve --dev` generates development
//!   certificates into `./data/certs` on first run.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use gavel_node::{Node, NodeConfig, serve, simulate, wal_tools};

mod cert;

/// Gavel: a low-latency real-time bidding engine.
#[derive(Parser, Debug)]
#[command(name = "gavel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the network node: recover the data directory and serve bidders, watchers and
    /// operators until SIGINT/SIGTERM.
    #[command(after_help = serve::config::SOURCES_HELP, mut_args = serve::config::with_code_default)]
    Serve(Box<serve::ServeOptions>),
    /// Run demo auctions with simulated bidders in process and print what happened.
    Simulate(simulate::Options),
    /// Recover a data directory as a start would, print what it holds, and exit.
    Recover {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// Offline tools for a write-ahead log.
    #[command(subcommand)]
    Wal(wal_tools::WalCommand),
    /// Create a development CA with server and client certificates; issue or revoke more.
    Cert(cert::CertArgs),
}

fn main() -> Result<()> {
    // Logs go to stderr (reports go to stdout); `RUST_LOG` overrides the level.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    // Not locked for the whole command: `simulate --ack-log -` writes from bidder threads.
    let mut out = std::io::stdout();
    match cli.command {
        Command::Serve(options) => serve::run(*options)?,
        Command::Simulate(options) => {
            let report = simulate::run(&options)?;
            write!(out, "{report}")?;
        }
        Command::Recover { data_dir } => {
            let config = NodeConfig {
                snapshot_every_records: 0,
                ..NodeConfig::default()
            };
            let (node, report) = Node::open(&data_dir, config)?;
            node.shutdown(false)?;
            writeln!(out, "{}", report.summary())?;
            writeln!(out, "state hash {}", gavel_node::hex(&report.state_hash))?;
        }
        Command::Wal(command) => wal_tools::run(&command, &mut out)?,
        Command::Cert(args) => cert::run(&args, &mut out)?,
    }
    out.flush()?;
    Ok(())
}
