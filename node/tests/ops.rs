//! The operations kit in `ops/` checked with the real tools: the alert and recording rules
//! with `promtool check rules` and their unit tests (`promtool test rules`), and every alert's
//! runbook link and test cases.
//!
//! `promtool` comes with Debian's `prometheus` package (`ops/test.sh` installs it when
//! missing). These tests fail, never skip, without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where every alert's `runbook_url` points: docs/runbook.md, the section named by the alert.
const RUNBOOK_URL: &str = "https://github.com/gavel-rtb/gavel/blob/main/docs/runbook.md#";

/// The repository's `ops/` directory.
fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

/// The shipped rules file.
fn rules_file() -> PathBuf {
    ops_dir().join("prometheus/gavel.rules.yml")
}

/// Runs `promtool` with `args`; panics with how to install it when it is missing.
fn promtool(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed ({e}): install Debian's `prometheus` package \
                 (apt-get install prometheus; ops/test.sh does it when it is missing)"
            )
        })
}

/// Asserts that a tool's run succeeded, showing its output otherwise.
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn the_rules_pass_promtool_check_rules_and_their_unit_tests() {
    let rules = rules_file();
    let check = promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()]);
    assert_success("promtool check rules", &check);
    let tests = ops_dir().join("prometheus/tests/gavel.rules.test.yml");
    let test = promtool(&["test".as_ref(), "rules".as_ref(), tests.as_os_str()]);
    assert_success("promtool test rules", &test);
}

/// The alerts of the rules file, each with its `runbook_url`, in file order.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let mut alerts: Vec<(String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push((name.to_owned(), String::new()));
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let (name, slot) = alerts.last_mut().expect("a runbook_url inside an alert");
            assert!(slot.is_empty(), "{name} has two runbook_urls");
            *slot = url.to_owned();
        }
    }
    alerts
}

#[test]
fn every_alert_links_its_runbook_section_and_has_cases_that_fire_and_stay_quiet() {
    let alerts = alerts();
    assert!(alerts.len() >= 12, "{alerts:?}");
    let tests =
        std::fs::read_to_string(ops_dir().join("prometheus/tests/gavel.rules.test.yml")).unwrap();
    // (alert, whether the case expects it firing), from `alertname:` and the `exp_alerts:`
    // line after it (`[]` = nothing fires).
    let mut cases: Vec<(String, bool)> = Vec::new();
    let mut current = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            cases.push((name, rest.trim() != "[]"));
        }
    }
    for (name, url) in &alerts {
        assert_eq!(
            url,
            &format!("{RUNBOOK_URL}{}", name.to_lowercase()),
            "{name}'s runbook_url"
        );
        for firing in [true, false] {
            assert!(
                cases.contains(&(name.clone(), firing)),
                "{name} has no unit test case where it is {}",
                if firing { "firing" } else { "quiet" }
            );
        }
    }
    for (name, _) in &cases {
        assert!(
            alerts.iter().any(|(alert, _)| alert == name),
            "a test case names {name}, which is no alert"
        );
    }
}
