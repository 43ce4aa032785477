//! `gavel-sim`: runs seeds of the simulation and prints the first failing one with its
//! trace, shrunk: steps before the failure that it does not need are skipped (one greedy
//! pass; a skipped step does nothing, so the later random draws shift), and the command that
//! replays the shrunk run is printed.
//!
//! ```text
//! gavel-sim --seeds 1..100000          # a block of seeds (end exclusive)
//! gavel-sim --seed 42 --trace          # one seed, printing its trace
//! gavel-sim --seeds 1..500 --random 5  # the block plus 5 random seeds (printed)
//! gavel-sim --seed 42 --trace --skip 3,9 # a shrunk run: steps 3 and 9 do nothing
//! gavel-sim --bug ack_without_fsync --seed 7 --trace   # with --features sim-bugs
//! ```

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;

use gavel_sim::{Failure, STEPS_DEFAULT, run_seed, shrink, trace_seed};

struct Args {
    seeds: std::ops::Range<u64>,
    /// What a replay command needs besides the seed (an injected bug).
    replay_flags: String,
    skip: BTreeSet<usize>,
    random: u64,
    trace: bool,
    steps: usize,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        seeds: 1..101,
        replay_flags: String::new(),
        skip: BTreeSet::new(),
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
            "--skip" => {
                for step in value()?.split(',').filter(|s| !s.is_empty()) {
                    args.skip.insert(step.parse()?);
                }
            }
            "--steps" => args.steps = value()?.parse()?,
            "--trace" => args.trace = true,
            #[cfg(feature = "sim-bugs")]
            "--bug" => {
                let name = value()?;
                let bug = gavel_sim::bugs::find(&name)
                    .with_context(|| format!("no injected bug named {name}"))?;
                bug.set(true);
                args.replay_flags = format!(" --features sim-bugs -- --bug {name}");
                println!("injected bug on: {} ({})", bug.name, bug.fault);
            }
            other => bail!(
                "unknown argument {other} (--seeds A..B, --seed N, --trace, --random K, --steps N)"
            ),
        }
    }
    Ok(args)
}

/// Prints a failing seed, shrinks its trace and prints that with the command replaying it.
fn report(seed: u64, failure: &Failure, args: &Args) {
    let steps = args.steps;
    let run = match args.replay_flags.as_str() {
        "" => "cargo run -p gavel-sim --release --".to_string(),
        flags => format!("cargo run -p gavel-sim --release{flags}"),
    };
    println!(
        "FAILED seed {seed} at step {} ({}): {}",
        failure.step, failure.invariant, failure.what
    );
    let Some((skip, shrunk)) = shrink(seed, steps) else {
        println!("the seed passed when run again: not deterministic");
        return;
    };
    let kept = shrunk.step + 1 - skip.len();
    println!(
        "shrunk trace ({kept} of {} steps; skipped steps do nothing):",
        shrunk.step + 1
    );
    shrunk.trace.iter().for_each(|line| println!("{line}"));
    println!(
        "FAILED (shrunk) at step {} ({}): {}",
        shrunk.step, shrunk.invariant, shrunk.what
    );
    let skip: Vec<String> = skip.iter().map(usize::to_string).collect();
    println!("replay the whole run:  {run} --seed {seed} --trace");
    println!(
        "replay the shrunk run: {run} --seed {seed} --trace --skip {}",
        skip.join(",")
    );
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
    let mut total = gavel_sim::Stats::default();
    for seed in args.seeds.clone().chain(extra) {
        runs += 1;
        let result = if args.trace {
            let (result, trace) = trace_seed(seed, args.steps, &args.skip);
            trace.iter().for_each(|line| println!("{line}"));
            result
        } else {
            run_seed(seed, args.steps, false)
        };
        match result {
            Ok(stats) if args.trace => println!("seed {seed}: ok {stats:?}"),
            Ok(stats) => {
                total.steps += stats.steps;
                total.crashes += stats.crashes;
                total.torn_tails += stats.torn_tails;
                total.bit_flips += stats.bit_flips;
                total.durable_acks += stats.durable_acks;
            }
            Err(failure) if args.trace => {
                println!(
                    "FAILED seed {seed} at step {} ({}): {}",
                    failure.step, failure.invariant, failure.what
                );
                return Ok(ExitCode::FAILURE);
            }
            Err(failure) => {
                report(seed, &failure, &args);
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
    println!(
        "in all: {} steps, {} crashes recovered, {} torn tails truncated, {} bit flips, \
         {} bids acknowledged durable",
        total.steps, total.crashes, total.torn_tails, total.bit_flips, total.durable_acks
    );
    Ok(ExitCode::SUCCESS)
}
