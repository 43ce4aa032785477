//! `gavel-edge`: the Gavel edge agent binary — a thin command line over
//! [`gavel_edge_agent::run`]. Runs until SIGINT/SIGTERM; the bid queue on disk is kept.

use std::io::IsTerminal as _;

use anyhow::Result;
use clap::Parser;
use gavel_edge_agent::config::{AgentOptions, warn_about_unknown_env_vars};

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
    // Two worker threads at most: the agent is small and shares a device.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(gavel_edge_agent::run_until_signal(config))
}
