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
//! - `config print|check`: `serve`'s effective configuration with each value's source, and a
//!   check of a TOML file.
//!
//! `--log-format json` (any subcommand; or `GAVEL_LOG_FORMAT=json`) writes the logs as one JSON
//! object per line.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use gavel_node::{Node, NodeConfig, serve, simulate, wal_tools};

mod cert;

/// Gavel: a low-latency real-time bidding engine.
#[derive(Parser, Debug)]
#[command(name = "gavel", version = gavel_node::VERSION, about, long_about = None)]
struct Cli {
    /// How log lines on stderr look: `text` for people, `json` (one object per line) for log
    /// shippers. `RUST_LOG` sets the level (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = serve::config::LOG_FORMAT_ENV)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The format of the log lines.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line: timestamp, level, message, fields, target.
    Json,
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
    /// Show or check the configuration of `gavel serve`.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the configuration `gavel serve` would run with, given these options (flags,
    /// GAVEL_* variables and the --config file, read as `gavel serve` reads them): one TOML
    /// line per option with where its value comes from (flag, env, file, default). Exits
    /// non-zero if the configuration is invalid.
    #[command(after_help = serve::config::SOURCES_HELP, mut_args = serve::config::with_code_default)]
    Print(Box<serve::ServeOptions>),
    /// Check a TOML file as `gavel serve --config FILE` reads it: every key known, every value
    /// valid (flags and GAVEL_* variables are not applied; the TLS files and the data
    /// directory are not read).
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Installs the log subscriber: stderr (reports go to stdout), `RUST_LOG` or `info`.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> Result<()> {
    // Parsed by hand (what `Cli::parse` does) to keep the matches: `config print` tells a
    // flag from a variable by them.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logs(cli.log_format);
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
                snapshot_every_log_bytes: 0,
                ..NodeConfig::default()
            };
            let (node, report) = Node::open(&data_dir, config)?;
            node.shutdown(false)?;
            writeln!(out, "{}", report.summary())?;
            writeln!(out, "state hash {}", gavel_node::hex(&report.state_hash))?;
        }
        Command::Wal(command) => wal_tools::run(&command, &mut out)?,
        Command::Cert(args) => cert::run(&args, &mut out)?,
        Command::Config(ConfigCommand::Print(options)) => {
            serve::config::warn_about_unknown_env_vars();
            let print = matches
                .subcommand_matches("config")
                .and_then(|config| config.subcommand_matches("print"))
                .expect("parsed as `config print`, so its matches are there");
            serve::config::print_effective(&options, print, &mut out)?;
        }
        Command::Config(ConfigCommand::Check { file }) => {
            serve::config::check_file(&file)?;
            writeln!(
                out,
                "ok: {} is a valid gavel serve configuration",
                file.display()
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
