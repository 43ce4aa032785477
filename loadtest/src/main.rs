//! `gavel-loadtest`: drives a Gavel node (a `gavel serve --dev` child by default) with
//! open-loop bidders and watchers, runs the baselines side by side, and writes the report
//! (JSON, `.hgrm`, SVG) — see the crate docs of `gavel_loadtest` and BENCHMARKS.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use gavel_loadtest::report::{self, Machine, RunReport};
use gavel_loadtest::run::{self, Floors, Search, Shape};
use gavel_loadtest::target::{self, Node};
use gavel_loadtest::workload::Pick;
use gavel_loadtest::{echo, stats};

/// Load tester for Gavel: open-loop bidders (QUIC, WebSocket), watchers, and baselines.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One run: the node's phases at a fixed rate, then the chosen baselines, then ratios.
    Run {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The highest rate at which the p99 of bid answers stays under a bound (node, and the
    /// quinn echo with `--floors echo`), in bounded steps.
    MaxRate {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        out: OutArgs,
        /// The p99 bound, in microseconds.
        #[arg(long, default_value_t = 1000)]
        p99_bound_us: u64,
        /// Most steps per system (each lasts --duration).
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Highest rate tried, bids/s.
        #[arg(long, default_value_t = 2_000_000.0)]
        rate_max: f64,
    },
    /// Watchers in a process of their own (started by `run --watchers-process`): holds them
    /// and answers the run on its standard input and output.
    #[command(hide = true)]
    Watch {
        /// The node's HTTPS address.
        #[arg(long)]
        https: SocketAddr,
        /// The node's dev certificate directory.
        #[arg(long)]
        certs: PathBuf,
        /// Allow a non-loopback address.
        #[arg(long)]
        allow_remote: bool,
        /// Watch the burst floor at --https rather than a node.
        #[arg(long)]
        burst: bool,
        /// The pattern every watcher subscribes to.
        #[arg(long)]
        pattern: String,
        /// Watchers.
        #[arg(long)]
        watchers: usize,
        /// Their subscription interval, ms.
        #[arg(long, default_value_t = 0)]
        interval_ms: u32,
    },
    /// The transport floor's server (started by `run`): a bare quinn mTLS echo.
    #[command(hide = true)]
    EchoServer {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The dev certificate directory.
        #[arg(long)]
        certs: PathBuf,
        /// Allow a non-loopback listen address.
        #[arg(long)]
        allow_remote: bool,
    },
}

#[derive(Args, Debug)]
struct TargetArgs {
    /// A running node's QUIC address (with --https and --certs); without it, a `gavel serve
    /// --dev` child is started on free loopback ports with a temporary data directory.
    #[arg(long, requires_all = ["https", "certs"])]
    quic: Option<SocketAddr>,
    /// A running node's HTTPS address.
    #[arg(long)]
    https: Option<SocketAddr>,
    /// A running node's dev certificate directory (`<data-dir>/certs`).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Allow targets that are not loopback addresses.
    #[arg(long)]
    allow_remote: bool,
    /// The `gavel` binary for the child node (default: beside this binary, else on PATH).
    #[arg(long)]
    gavel_bin: Option<PathBuf>,
    /// Extra argument for the child node (repeat), e.g. --node-arg=--wal-batch-wait-us-max=300.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

#[derive(Args, Debug)]
struct ShapeArgs {
    /// Bids per second over all bidder connections.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Longest sending time of each phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Most bids of each phase.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// QUIC bidder connections (0: no QUIC phase).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// WebSocket bidder connections (0: no WebSocket bidding phase).
    #[arg(long, default_value_t = 0)]
    ws_connections: usize,
    /// Also bid through the SDK (gavel-client) with --connections, after the other phases.
    #[arg(long)]
    sdk: bool,
    /// Bid only through the SDK (no raw QUIC phase, no echo floor): for several nodes, where
    /// the SDK routes each bid to its auction's owner and the raw bidders would be redirected.
    #[arg(long)]
    sdk_only: bool,
    /// With --floors echo and no watchers: alternate the node's QUIC phase and the echo in
    /// this many rounds (each --duration / rounds), so both share the same neighbours.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Auctions to bid on.
    #[arg(long, default_value_t = 1000)]
    auctions: usize,
    /// Pick auctions Zipf-skewed with this exponent (default: uniformly).
    #[arg(long)]
    zipf: Option<f64>,
    /// Share of bids meant to win (the rest are too low).
    #[arg(long, default_value_t = 0.5)]
    win_ratio: f64,
    /// WebSocket watchers of every auction of the run (0: none).
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// The watchers' subscription interval, ms (0: every update).
    #[arg(long, default_value_t = 0)]
    watch_interval_ms: u32,
    /// Run the watchers in a process of their own (this binary again), so the bidders'
    /// latency is measured without watcher tasks in their runtime.
    #[arg(long)]
    watchers_process: bool,
    /// Baselines to run after the node: any of echo, fsync, nats, burst (comma-separated;
    /// nats and burst need --watchers).
    #[arg(long, value_delimiter = ',')]
    floors: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Write the price stream of the run's auctions (every update, as one more WebSocket
    /// watcher receives it: length-delimited protobuf `ServerMessage`s) to this file.
    #[arg(long, value_name = "FILE")]
    record_trace: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct OutArgs {
    /// Directory for the JSON, .hgrm and SVG files.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// File name stem of this run's files.
    #[arg(long, default_value = "run")]
    name: String,
}

/// Longest --duration accepted, seconds.
const DURATION_S_MAX: f64 = 3600.0;
/// Most connections (bidders or watchers) accepted.
const CONNECTIONS_MAX: usize = 100_000;

impl ShapeArgs {
    fn shape(&self) -> Result<Shape> {
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a positive number");
        }
        if !(self.duration > 0.0 && self.duration <= DURATION_S_MAX) {
            bail!("--duration must be within (0, {DURATION_S_MAX}] seconds");
        }
        if self.count == 0 {
            bail!("--count must be at least 1");
        }
        if self.rounds == 0 || self.rounds > 100 {
            bail!("--rounds must be within 1..=100");
        }
        for (name, n) in [
            ("--connections", self.connections),
            ("--ws-connections", self.ws_connections),
            ("--watchers", self.watchers),
        ] {
            if n > CONNECTIONS_MAX {
                bail!("{name} must be at most {CONNECTIONS_MAX}");
            }
        }
        if self.auctions == 0 || self.auctions > 1_000_000 {
            bail!("--auctions must be within 1..=1000000");
        }
        let mut floors = Floors::default();
        for floor in &self.floors {
            match floor.as_str() {
                "echo" => floors.echo = true,
                "fsync" => floors.fsync = true,
                "nats" => floors.nats = true,
                "burst" => floors.burst = true,
                other => bail!("unknown floor {other:?}; expected echo, fsync, nats or burst"),
            }
        }
        Ok(Shape {
            rate_per_s: self.rate,
            duration: Duration::from_secs_f64(self.duration),
            count_max: self.count,
            quic_connections: self.connections,
            ws_connections: self.ws_connections,
            sdk: self.sdk || self.sdk_only,
            sdk_only: self.sdk_only,
            rounds: self.rounds,
            auctions: self.auctions,
            pick: self.zipf.map_or(Pick::Uniform, Pick::Zipf),
            win_ratio: self.win_ratio,
            watchers: self.watchers,
            watch_interval_ms: self.watch_interval_ms,
            watchers_process: self.watchers_process,
            floors,
            progress: !self.no_progress,
            record_trace: self.record_trace.clone(),
        })
    }
}

impl TargetArgs {
    fn node(&self, watchers: usize) -> Result<Node> {
        match (self.quic, self.https, &self.certs) {
            (Some(quic), Some(https), Some(certs)) => {
                Node::existing(quic, https, certs.clone(), self.allow_remote)
            }
            (None, None, None) => {
                let gavel = target::find_gavel(self.gavel_bin.as_deref())?;
                let mut args = self.node_args.clone();
                // Room for every watcher and bidder on top of the default bound.
                if !args.iter().any(|a| a.starts_with("--connections-max")) {
                    args.push(format!("--connections-max={}", 10_000 + watchers));
                }
                Node::spawn(&gavel, &args)
            }
            _ => bail!("--quic, --https and --certs go together"),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> Result<()> {
    let command_line: Vec<String> = std::env::args().collect();
    match cli.command {
        Command::EchoServer {
            listen,
            certs,
            allow_remote,
        } => {
            target::check_loopback(listen, allow_remote)?;
            echo::serve(listen, &certs).await
        }
        Command::Watch {
            https,
            certs,
            allow_remote,
            burst,
            pattern,
            watchers,
            interval_ms,
        } => {
            if watchers > CONNECTIONS_MAX {
                bail!("--watchers must be at most {CONNECTIONS_MAX}");
            }
            let target = run::WatchTarget {
                https,
                certs,
                allow_remote,
                burst,
                pattern,
                interval_ms,
            };
            run::serve_watchers(target, watchers).await
        }
        Command::Run { target, shape, out } => {
            run_command(&target, &shape, &out, command_line).await
        }
        Command::MaxRate {
            target,
            shape,
            out,
            p99_bound_us,
            steps,
            rate_max,
        } => {
            let shape = shape.shape()?;
            if steps == 0 || steps > 32 {
                bail!("--steps must be within 1..=32");
            }
            let search = Search {
                p99_bound: Duration::from_micros(p99_bound_us),
                start_rate_per_s: shape.rate_per_s,
                steps_max: steps,
                rate_max_per_s: rate_max,
            };
            max_rate_command(&target, &shape, search, &out, command_line).await
        }
    }
}

/// `run`: every phase against the node, the report written.
async fn run_command(
    target: &TargetArgs,
    shape: &ShapeArgs,
    out: &OutArgs,
    command_line: Vec<String>,
) -> Result<()> {
    let shape = shape.shape()?;
    let machine = Machine::probe();
    let started = stats::unix_us() / 1_000_000;
    let mut node = target.node(shape.watchers)?;
    let outcome = run::run(&node, &shape).await;
    let clean_stop = node.child.as_mut().map(|c| c.stop());
    let outcome = outcome?;
    if clean_stop == Some(false) {
        eprintln!("warning: the node did not stop cleanly on SIGTERM");
    }
    let report = RunReport {
        tool: format!("gavel-loadtest {}", env!("CARGO_PKG_VERSION")),
        command: command_line,
        started_at_unix_s: started,
        machine,
        phases: outcome.phases.iter().map(|p| p.report.clone()).collect(),
        ratios: outcome.ratios,
        search: vec![],
        max_rate_per_s: Default::default(),
    };
    finish(out, &report, &outcome.phases)
}

/// `max-rate`: the search against the node (and the echo), its steps printed and the report
/// written.
async fn max_rate_command(
    target: &TargetArgs,
    shape: &Shape,
    search: Search,
    out: &OutArgs,
    command_line: Vec<String>,
) -> Result<()> {
    let machine = Machine::probe();
    let started = stats::unix_us() / 1_000_000;
    let mut node = target.node(0)?;
    let found = run::max_rate(&node, shape, search).await;
    if let Some(child) = node.child.as_mut() {
        child.stop();
    }
    let (steps, best) = found?;
    let mut ratios = Vec::new();
    if let (Some(g), Some(e)) = (best.get("gavel_quic"), best.get("echo_floor")) {
        let p99_bound_us = search.p99_bound.as_micros();
        ratios.push(report::Ratio::new(
            &format!("max rate with p99 < {p99_bound_us} µs / quinn echo's"),
            *g,
            *e,
            "≥ 0.8",
        ));
    }
    let report = RunReport {
        tool: format!("gavel-loadtest {}", env!("CARGO_PKG_VERSION")),
        command: command_line,
        started_at_unix_s: started,
        machine,
        phases: vec![],
        ratios,
        search: steps,
        max_rate_per_s: best,
    };
    for s in &report.search {
        println!(
            "{:<11} rate {:>10.0}/s achieved {:>10.0}/s p99 {:>8} µs errors {:>6} {}",
            s.system,
            s.rate_per_s,
            s.achieved_rate_per_s,
            s.p99_us,
            s.errors,
            if s.ok { "ok" } else { "over" }
        );
    }
    finish(out, &report, &[])
}

fn finish(out: &OutArgs, report: &RunReport, phases: &[report::Phase]) -> Result<()> {
    print!("{}", report::table(report));
    let files = report::write(&out.out, &out.name, report, phases)?;
    for file in files {
        println!("wrote {}", file.display());
    }
    Ok(())
}
