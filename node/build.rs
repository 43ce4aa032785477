//! Names the source commit the `gavel` binary is built from, for `gavel --version`, `/healthz`
//! and the `gavel_build_info` metric: `GAVEL_COMMIT` in the build's environment if set (a
//! packager building from a tarball), else `git rev-parse` of the checkout, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GAVEL_COMMIT");
    let commit = std::env::var("GAVEL_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // A new commit or checkout moves HEAD or appends to its log (in a worktree too).
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    println!("cargo:rustc-env=GAVEL_COMMIT={commit}");
}

/// The trimmed output of a successful `git` run, if any.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
