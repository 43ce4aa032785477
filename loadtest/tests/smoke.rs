//! A short smoke of the load tester, as CI runs it: `gavel-loadtest run` for about two
//! seconds per phase with small counts against a `gavel serve --dev` child (the `gavel`
//! binary of this workspace, built here if missing), with QUIC (lean client and SDK) and
//! WebSocket bidders,
//! watchers and the echo and fsync baselines (nats-server too when installed); the report
//! must add up and every file must be written. Plus the refusals of bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The workspace's `gavel` binary of this profile, built if it is not there yet
/// (`cargo test --workspace` builds it; `cargo test -p gavel-loadtest` alone does not).
fn gavel_bin() -> PathBuf {
    let test_exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/smoke-… → target/<profile>
    let profile_dir = test_exe.parent().unwrap().parent().unwrap().to_owned();
    let gavel = profile_dir.join("gavel");
    if !gavel.is_file() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "gavel", "--bin", "gavel"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the gavel binary failed");
    }
    assert!(gavel.is_file(), "no {}", gavel.display());
    gavel
}

/// The arguments of a short run against a `gavel` child, its files named `name` in `out`.
fn short_run(gavel: &Path, out: &Path, name: &str) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--gavel-bin"].map(String::from).to_vec();
    args.push(gavel.to_str().unwrap().to_owned());
    let shape = "--rate 200 --duration 2 --count 300 --connections 2 --auctions 10";
    args.extend(shape.split(' ').map(String::from));
    args.extend(["--no-progress".to_owned(), "--out".to_owned()]);
    args.push(out.to_str().unwrap().to_owned());
    args.extend(["--name".to_owned(), name.to_owned()]);
    args
}

fn loadtest<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gavel-loadtest"))
        .args(args)
        .output()
        .expect("gavel-loadtest runs")
}

fn phase<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no phase {name} in {report:#}"))
}

fn count(phase: &Value, kind: &str) -> u64 {
    phase["counts"][kind].as_u64().unwrap_or(0)
}

fn latency_count(phase: &Value, histogram: &str) -> u64 {
    phase["latency_us"][histogram]["count"]
        .as_u64()
        .unwrap_or(0)
}

/// Every bid sent has exactly one outcome: the sum of the outcome kinds (not the `durable_`
/// failures) is what was sent, and it has a `decided` latency unless the connection failed.
fn check_bidding(phase: &Value) -> u64 {
    let sent = phase["sent"].as_u64().unwrap();
    assert_eq!(sent, phase["planned"].as_u64().unwrap(), "{phase:#}");
    let outcomes: u64 = phase["counts"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with("durable_"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(outcomes, sent, "{phase:#}");
    assert_eq!(latency_count(phase, "decided"), sent, "{phase:#}");
    let accepted = count(phase, "accepted");
    assert!(
        accepted > 0 && count(phase, "too_low") > 0,
        "a mix of outcomes: {phase:#}"
    );
    assert_eq!(latency_count(phase, "accepted"), accepted, "{phase:#}");
    assert_eq!(
        latency_count(phase, "durable"),
        accepted,
        "every accepted bid durable: {phase:#}"
    );
    let s = &phase["latency_us"]["decided"];
    assert!(
        s["p50_us"].as_u64() <= s["p99_us"].as_u64()
            && s["p99_us"].as_u64() <= s["max_us"].as_u64()
    );
    accepted
}

#[test]
fn a_short_run_adds_up_and_writes_its_files() {
    let gavel = gavel_bin();
    let out = tempfile::tempdir().unwrap();
    let with_nats =
        Path::new("/usr/sbin/nats-server").is_file() || Path::new("/usr/bin/nats-server").is_file();
    let floors = if with_nats {
        "echo,fsync,nats"
    } else {
        "echo,fsync"
    };
    let mut args = short_run(&gavel, out.path(), "smoke");
    args.extend(
        [
            "--ws-connections",
            "1",
            "--sdk",
            "--zipf",
            "1.1",
            "--watchers",
            "3",
            "--floors",
            floors,
        ]
        .map(String::from),
    );
    let output = loadtest(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("smoke.json")).unwrap()).unwrap();
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);

    let quic = phase(&report, "gavel_quic");
    let accepted = check_bidding(quic);
    check_bidding(phase(&report, "gavel_ws"));
    check_bidding(phase(&report, "gavel_sdk"));
    assert!(
        quic["cpu"]["server_cpu_s"].as_f64().is_some(),
        "the child's CPU is measured"
    );

    // Every watcher sees every auction: each accepted QUIC bid is an update for 3 watchers;
    // some may be conflated, none invented.
    let fanout = phase(&report, "gavel_fanout");
    let delivered = count(fanout, "delivered");
    assert!(delivered > 0 && delivered <= 3 * accepted, "{fanout:#}");
    assert_eq!(latency_count(fanout, "delivery"), delivered, "{fanout:#}");

    let echo = phase(&report, "echo_floor");
    assert_eq!(
        count(echo, "accepted"),
        echo["sent"].as_u64().unwrap(),
        "{echo:#}"
    );
    let fsync = phase(&report, "fsync_floor");
    assert_eq!(
        latency_count(fsync, "durable"),
        fsync["sent"].as_u64().unwrap(),
        "{fsync:#}"
    );
    assert!(count(fsync, "syncs") >= 1);
    if with_nats {
        let nats = phase(&report, "nats_fanout");
        assert!(count(nats, "delivered") > 0, "{nats:#}");
    }

    let ratios = report["ratios"].as_array().unwrap();
    assert!(
        ratios
            .iter()
            .any(|r| r["name"].as_str().unwrap().contains("quinn echo p99"))
    );
    assert!(
        ratios
            .iter()
            .any(|r| r["name"].as_str().unwrap().contains("fsync"))
    );

    for file in [
        "smoke.svg",
        "smoke-gavel_quic-accepted.hgrm",
        "smoke-gavel_quic-durable.hgrm",
        "smoke-gavel_fanout-delivery.hgrm",
        "smoke-echo_floor-decided.hgrm",
        "smoke-fsync_floor-durable.hgrm",
    ] {
        let path = out.path().join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!text.is_empty(), "{file} is empty");
    }
    assert!(stdout.contains("ratio accepted ack p99"), "{stdout}");
}

#[test]
fn watchers_in_a_process_of_their_own_report_back() {
    let gavel = gavel_bin();
    let out = tempfile::tempdir().unwrap();
    let mut args = short_run(&gavel, out.path(), "apart");
    args.extend(["--watchers", "4", "--watchers-process"].map(String::from));
    let output = loadtest(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr:\n{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("apart.json")).unwrap()).unwrap();
    let accepted = check_bidding(phase(&report, "gavel_quic"));
    let fanout = phase(&report, "gavel_fanout");
    assert_eq!(fanout["connections"].as_u64(), Some(4), "{fanout:#}");
    // Every watcher sees every auction: at most one delivery per accepted bid and watcher.
    let delivered = count(fanout, "delivered");
    assert!(delivered > 0 && delivered <= 4 * accepted, "{fanout:#}");
    let figures = &fanout["figures"];
    for figure in [
        "watchers_process_cpu_s",
        "delivery_p99_ms",
        "staleness_p99_ms",
        "fresh_changes_per_s",
        "server_rss_per_idle_watcher_bytes",
    ] {
        assert!(figures[figure].as_f64().is_some(), "{figure}: {fanout:#}");
    }
    assert!(figures["staleness_sampled_watchers"].as_f64() == Some(4.0));
}

#[test]
fn alternating_rounds_merge_into_one_phase_per_side() {
    let gavel = gavel_bin();
    let out = tempfile::tempdir().unwrap();
    let output = loadtest(&[
        "run",
        "--gavel-bin",
        gavel.to_str().unwrap(),
        "--rate",
        "300",
        "--duration",
        "1",
        "--count",
        "300",
        "--connections",
        "2",
        "--auctions",
        "10",
        "--rounds",
        "3",
        "--floors",
        "echo",
        "--no-progress",
        "--out",
        out.path().to_str().unwrap(),
        "--name",
        "rounds",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr:\n{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("rounds.json")).unwrap()).unwrap();
    let names: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gavel_quic", "echo_floor"]);
    // Three rounds of 100 bids each side, merged.
    let quic = phase(&report, "gavel_quic");
    assert_eq!(quic["planned"], 300);
    check_bidding(quic);
    let echo = phase(&report, "echo_floor");
    assert_eq!(echo["sent"], 300);
    assert_eq!(count(echo, "accepted"), 300);
    assert!(quic["what"].as_str().unwrap().contains("3 rounds"));
    // The connections paced themselves: every bid's wake-up and write are measured.
    for histogram in ["client_handoff", "client_sent"] {
        assert_eq!(latency_count(echo, histogram), 300, "{histogram}");
        assert_eq!(latency_count(quic, histogram), 300, "{histogram}");
    }
}

#[test]
fn the_minimal_quinn_echo_answers_every_request_of_its_schedule() {
    let certs = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_quinn_echo_min"))
        .args(["run", "--certs", certs.path().to_str().unwrap()])
        .args(["--rate", "400", "--connections", "3", "--seconds", "1"])
        .output()
        .expect("quinn_echo_min runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr:\n{stderr}");
    assert!(
        stdout.contains("3 connections 400/s: planned 400 answered 400 |"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.pem"), "").unwrap();
    let remote = loadtest(&[
        "run",
        "--quic",
        "10.1.2.3:7443",
        "--https",
        "10.1.2.3:8443",
        "--certs",
        certs.path().to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(!remote.status.success());
    let stderr = String::from_utf8_lossy(&remote.stderr);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--allow-remote"),
        "{stderr}"
    );

    let floors = loadtest(&["run", "--floors", "bogus"]);
    assert!(!floors.status.success());
    assert!(String::from_utf8_lossy(&floors.stderr).contains("unknown floor"));

    let duration = loadtest(&["run", "--duration", "0"]);
    assert!(!duration.status.success());
    assert!(String::from_utf8_lossy(&duration.stderr).contains("--duration"));
}
