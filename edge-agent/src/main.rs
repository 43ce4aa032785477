//! `gavel-edge`: the Gavel edge agent binary — a thin command line over
//! [`gavel_edge_agent::run`]. Runs until SIGINT/SIGTERM; the bid queue on disk is kept.

use std::io::IsTerminal as _;

use anyhow::Result;
use clap::Parser;
use gavel_edge_agent::config::{AgentOptions, warn_about_unknown_env_vars};

/// Threads for blocking work at most: the queue's appends and syncs take its lock one at a
/// time anyway.
const BLOCKING_THREADS_MAX: usize = 1;
/// Stack of each blocking thread, in bytes: they only write and sync the queue file.
const BLOCKING_STACK_BYTES: usize = 256 * 1024;

/// The Gavel edge agent: prices from a node to local MQTT and HTTP/SSE, bids queued on disk
/// while offline.
#[derive(Parser, Debug)]
#[command(name = "gavel-edge", version, about, long_about = None)]
#[command(
    after_help = "Every option is also a GAVEL_EDGE_* environment variable and a key of \
the --config TOML file (the long flag's name with _ for -). A flag beats its variable, which \
beats the file, which beats the default. Unknown file keys stop the start; unknown \
GAVEL_EDGE_* variables are warned about."
)]
struct Cli {
    #[command(flatten)]
    options: AgentOptions,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    warn_about_unknown_env_vars();
    let config = cli.options.load()?;
    // One thread runs every task: the agent's work is small (a few thousand updates and
    // bids per second at most) and each extra worker costs its stack, its allocator arena
    // and its share of the ≤ 8 MiB resident budget. Blocking work (the queue's fdatasync)
    // goes to a small pool of small-stacked threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .thread_stack_size(BLOCKING_STACK_BYTES)
        .enable_all()
        .build()?;
    runtime.block_on(gavel_edge_agent::run_until_signal(config))
}
