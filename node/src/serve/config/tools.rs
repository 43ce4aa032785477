//! `gavel config print` and `gavel config check`, and the warning about unknown `GAVEL_*`
//! variables: what the configuration of [`super::ServeOptions`] says about itself.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Command};

use super::{ServeConfig, ServeOptions, code_defaults, command};

/// `gavel config print`: the options `gavel serve` would run with, given `options` as parsed
/// from flags and environment (`matches` are that parse's, to tell a flag from a variable)
/// and the `--config` file they name; one TOML line per option with its source as a comment
/// (`# flag --x`, `# env GAVEL_X`, `# file PATH`, `# default`). Options left at their
/// default are commented out, so the output is itself a valid `--config` file. Fails, after
/// printing, if the configuration is invalid.
pub fn print_effective(
    options: &ServeOptions,
    matches: &ArgMatches,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let file = match &options.config {
        Some(path) => ServeOptions::from_toml_file(path)?,
        None => ServeOptions::default(),
    };
    let merged = options.clone().or(file);
    let toml::Value::Table(values) =
        toml::Value::try_from(&merged).context("showing the options as TOML")?
    else {
        bail!("the options are not a TOML table");
    };
    let defaults = code_defaults();
    writeln!(
        out,
        "# gavel serve's effective configuration; after each value, its source."
    )?;
    for arg in command().get_arguments() {
        let id = arg.get_id().as_str();
        if id == "config" {
            let file = options.config.as_ref().map(|p| p.display().to_string());
            writeln!(out, "# --config {}", file.as_deref().unwrap_or("not given"))?;
            continue;
        }
        let line = match (
            values.get(id),
            defaults.iter().find(|(name, _)| *name == id),
        ) {
            (Some(value), _) => format!("{id} = {value} # {}", source(arg, matches, options)),
            (None, Some((_, default))) => format!("# {id} = {} # default", literal(default)),
            (None, None) => format!("# {id} is not set # default (see gavel serve --help)"),
        };
        writeln!(out, "{line}")?;
    }
    merged
        .resolve()
        .context("the configuration above is invalid")?;
    Ok(())
}

/// Where a set option's value came from.
fn source(arg: &Arg, matches: &ArgMatches, options: &ServeOptions) -> String {
    let id = arg.get_id().as_str();
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => {
            format!("flag --{}", arg.get_long().unwrap_or(id))
        }
        Some(ValueSource::EnvVariable) => {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            format!("env {}", env.unwrap_or_default())
        }
        _ => {
            let file = options.config.as_ref().map(|p| p.display().to_string());
            format!("file {}", file.unwrap_or_default())
        }
    }
}

/// A default from [`code_defaults`] as a TOML value: numbers and booleans bare, the rest
/// quoted.
fn literal(default: &str) -> String {
    if default.parse::<i64>().is_ok() || default == "true" || default == "false" {
        default.to_owned()
    } else {
        toml::Value::String(default.to_owned()).to_string()
    }
}

/// `gavel config check FILE`: reads `path` as `gavel serve --config` would (unknown keys are
/// an error) and validates it alone — no flags or environment. The TLS files and the data
/// directory are not read.
pub fn check_file(path: &Path) -> Result<ServeConfig> {
    ServeOptions::from_toml_file(path)?
        .resolve()
        .with_context(|| format!("{} is not a valid configuration", path.display()))
}

/// The variable of the global `--log-format` option (every subcommand reads it, so it is
/// not among `serve`'s own arguments).
pub const LOG_FORMAT_ENV: &str = "GAVEL_LOG_FORMAT";

/// The `GAVEL_*` variables `gavel serve` reads.
pub fn known_env_vars() -> Vec<String> {
    let command = ServeOptions::augment_args(Command::new("serve"));
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .chain([LOG_FORMAT_ENV.to_owned()])
        .collect()
}

/// A `GAVEL_*` variable that is no option of `gavel serve`, and the known one nearest to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEnvVar {
    /// The variable's name.
    pub name: String,
    /// The known variable with the smallest edit distance to it (a typo's likely intent).
    pub closest: String,
}

/// The `GAVEL_*` names among `names` that are not options, each with the closest known one.
/// A typo would otherwise be ignored silently; the start warns about each and goes on.
pub fn unknown_env_vars(names: impl IntoIterator<Item = String>) -> Vec<UnknownEnvVar> {
    let known = known_env_vars();
    names
        .into_iter()
        .filter(|name| name.starts_with("GAVEL_") && !known.contains(name))
        .map(|name| {
            let closest = known
                .iter()
                .min_by_key(|candidate| strsim::levenshtein(&name, candidate))
                .cloned()
                .unwrap_or_default();
            UnknownEnvVar { name, closest }
        })
        .collect()
}

/// Logs a warning for each unknown `GAVEL_*` variable of this process's environment
/// (variables whose name is not UTF-8 are not ours and are skipped).
pub fn warn_about_unknown_env_vars() {
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for unknown in unknown_env_vars(names) {
        tracing::warn!(
            variable = %unknown.name,
            closest = %unknown.closest,
            "unknown GAVEL_* environment variable ignored (`gavel serve --help` lists the ones \
             it reads)"
        );
    }
}
