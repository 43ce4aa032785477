//! `gavel-sim`: runs seeds of the simulation and prints the first failing one with its trace.
//!
//! ```text
//! gavel-sim --seeds 1..100000          # a block of seeds (end exclusive)
//! gavel-sim --seed 42 --trace          # one seed, printing its trace
//! gavel-sim --seeds 1..500 --random 5  # the block plus 5 random seeds (printed)
//! gavel-sim --bug ack_without_fsync --seed 7 --trace   # with --features sim-bugs
//! ```

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use gavel_sim::{STEPS_DEFAULT, run_seed, trace_seed};

struct Args {
    seeds: std::ops::Range<u64>,
    random: u64,
    trace: bool,
    steps: usize,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        seeds: 1..101,
        random: 0,
        trace: false,
        steps: STEPS_DEFAULT,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").context("--seeds takes A..B")?;
                args.seeds = a.parse()?..b.parse()?;
            }
            "--seed" => {
                let n: u64 = value()?.parse()?;
                args.seeds = n..n + 1;
            }
            "--random" => args.random = value()?.parse()?,
            "--steps" => args.steps = value()?.parse()?,
            "--trace" => args.trace = true,
            #[cfg(feature = "sim-bugs")]
            "--bug" => {
                let name = value()?;
                let bug = gavel_sim::bugs::find(&name)
                    .with_context(|| format!("no injected bug named {name}"))?;
                bug.set(true);
                println!("injected bug on: {} ({})", bug.name, bug.fault);
            }
            other => bail!(
                "unknown argument {other} (--seeds A..B, --seed N, --trace, --random K, --steps N)"
            ),
        }
    }
    Ok(args)
}

fn main() -> Result<ExitCode> {
    let args = parse()?;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut random = gavel_sim::Rng::new(clock);
    let extra: Vec<u64> = (0..args.random).map(|_| random.next_u64()).collect();
    if !extra.is_empty() {
        println!("random seeds: {extra:?}");
    }
    let started = Instant::now();
    let mut runs = 0u64;
    for seed in args.seeds.clone().chain(extra) {
        runs += 1;
        let result = if args.trace {
            let (result, trace) = trace_seed(seed, args.steps);
            trace.iter().for_each(|line| println!("{line}"));
            result.map_err(|f| (f, true))
        } else {
            run_seed(seed, args.steps, false).map_err(|f| (f, false))
        };
        match result {
            Ok(stats) if args.trace => println!("seed {seed}: ok {stats:?}"),
            Ok(_) => {}
            Err((_, traced)) => {
                // Replay it traced: the trace is every step up to the failing one.
                let failure = run_seed(seed, args.steps, true).expect_err("a seed replays");
                if !traced {
                    failure.trace.iter().for_each(|line| println!("{line}"));
                }
                println!(
                    "FAILED seed {seed} at step {}: {}",
                    failure.step, failure.what
                );
                println!("replay: cargo run -p gavel-sim --release -- --seed {seed} --trace");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{runs} seeds passed in {secs:.1} s ({:.0} seeds/s, {} steps each)",
        runs as f64 / secs,
        args.steps
    );
    Ok(ExitCode::SUCCESS)
}
