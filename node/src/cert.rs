//! `gavel cert`: the development PKI in one command — a CA, a server certificate for the
//! loopback names, client certificates naming their identity (`gavel://<role>/<id>`), and a
//! signed CRL (see [`gavel_transport::tls::dev`] for the layout). `gavel cert issue` adds a
//! client certificate from the same CA; `gavel cert revoke` adds a certificate to the CRL,
//! which a running node picks up without a restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use gavel_transport::Identity;
use gavel_transport::tls::TlsError;
use gavel_transport::tls::dev::{self, DevCertOptions};

/// Options of `gavel cert`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct CertArgs {
    /// Issue or revoke with the existing CA instead of creating one.
    #[command(subcommand)]
    pub action: Option<CertAction>,
    /// Directory of the certificates (created if missing).
    #[arg(long, global = true, default_value = "./data/certs")]
    pub dir: PathBuf,
    /// A client certificate to create with the CA, as ROLE/ID (role: bidder, device, admin
    /// or watcher); repeat for more. Without it: bidder/bidder-1, bidder/bidder-2,
    /// device/device-1, admin/admin and watcher/watcher-1.
    #[arg(long = "identity", value_name = "ROLE/ID", value_parser = parse_identity)]
    pub identities: Vec<Identity>,
    /// A server name (DNS name or IP address) for the server certificate besides localhost,
    /// 127.0.0.1 and ::1; repeat for more.
    #[arg(long = "server-name", value_name = "HOST")]
    pub server_names: Vec<String>,
    /// Replace an existing CA, with everything it issued.
    #[arg(long)]
    pub force: bool,
}

/// What to do with an existing CA.
#[derive(clap::Subcommand, Debug, Clone)]
pub(crate) enum CertAction {
    /// Issue client certificates from the existing CA.
    Issue {
        /// The identity to issue for, as ROLE/ID; repeat for more.
        #[arg(long = "identity", value_name = "ROLE/ID", value_parser = parse_identity, required = true)]
        identities: Vec<Identity>,
    },
    /// Revoke a certificate of the CA: re-sign the CRL with its serial added. A node
    /// watching the CRL rejects it from its next connection on.
    Revoke {
        /// The certificate (PEM) to revoke.
        cert: PathBuf,
    },
}

/// `role/id` or `gavel://role/id`.
fn parse_identity(text: &str) -> Result<Identity, String> {
    let uri = if text.starts_with(gavel_transport::IDENTITY_URI_SCHEME) {
        text.to_owned()
    } else {
        format!("{}{text}", gavel_transport::IDENTITY_URI_SCHEME)
    };
    Identity::from_uri(&uri).map_err(|e| e.to_string())
}

/// Runs `gavel cert`, printing what it wrote to `out`.
pub(crate) fn run(args: &CertArgs, out: &mut impl Write) -> Result<()> {
    let dir = &args.dir;
    // Not `args_conflicts_with_subcommands`: that would also refuse `--dir` before them.
    if args.action.is_some()
        && (!args.identities.is_empty() || !args.server_names.is_empty() || args.force)
    {
        bail!(
            "--identity, --server-name and --force before `issue`/`revoke` apply to creating a CA; put `issue --identity` after the subcommand"
        );
    }
    match &args.action {
        None => {
            let mut options = DevCertOptions {
                server_names: args.server_names.clone(),
                overwrite: args.force,
                ..DevCertOptions::default()
            };
            if !args.identities.is_empty() {
                options.identities = args.identities.clone();
            }
            let certs = match dev::generate(dir, &options) {
                Err(TlsError::AlreadyExists(ca)) => bail!(
                    "{} already exists: `gavel cert issue` adds client certificates from it, `--force` replaces it",
                    ca.display()
                ),
                result => result.with_context(|| {
                    format!("creating development certificates in {}", dir.display())
                })?,
            };
            writeln!(out, "development CA, server and client certificates:")?;
            for path in certs.files() {
                wrote(out, path)?;
            }
            for client in &certs.clients {
                writeln!(out, "  {} -> {}", client.identity, client.cert.display())?;
            }
            writeln!(
                out,
                "clients trust {}; the server trusts it for client certificates and checks {}",
                certs.ca_cert.display(),
                certs.crl.display()
            )?;
        }
        Some(CertAction::Issue { identities }) => {
            for identity in identities {
                let client = dev::issue(dir, identity)
                    .with_context(|| format!("issuing a certificate for {identity}"))?;
                writeln!(out, "{identity}:")?;
                wrote(out, &client.cert)?;
                wrote(out, &client.key)?;
            }
        }
        Some(CertAction::Revoke { cert }) => {
            dev::revoke(dir, cert).with_context(|| format!("revoking {}", cert.display()))?;
            writeln!(out, "revoked {}", cert.display())?;
            wrote(out, &dir.join(dev::CRL))?;
        }
    }
    Ok(())
}

fn wrote(out: &mut impl Write, path: &Path) -> std::io::Result<()> {
    writeln!(out, "  wrote {}", path.display())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cert: CertArgs,
    }

    fn run_args(args: &[&str]) -> Result<String> {
        let cli = Cli::try_parse_from(std::iter::once("cert").chain(args.iter().copied()))?;
        let mut out = Vec::new();
        run(&cli.cert, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn creates_issues_and_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let dir_arg = dir.path().to_str().unwrap();
        let printed = run_args(&[
            "--dir",
            dir_arg,
            "--identity",
            "bidder/acme",
            "--identity",
            "gavel://watcher/w",
            "--server-name",
            "gavel.test",
        ])
        .unwrap();
        assert!(printed.contains("ca.pem"), "{printed}");
        assert!(printed.contains("bidder/acme -> "), "{printed}");
        assert!(!printed.contains("bidder-1"), "{printed}");

        // An existing CA is kept unless --force.
        let error = run_args(&["--dir", dir_arg]).unwrap_err();
        assert!(format!("{error:#}").contains("already exists"), "{error:#}");
        let ca = std::fs::read(dir.path().join(dev::CA_CERT)).unwrap();
        run_args(&["--dir", dir_arg, "--force", "--identity", "bidder/acme"]).unwrap();
        assert_ne!(std::fs::read(dir.path().join(dev::CA_CERT)).unwrap(), ca);

        let printed = run_args(&["issue", "--identity", "device/d-9", "--dir", dir_arg]).unwrap();
        assert!(printed.contains("device-d-9.pem"), "{printed}");
        let crl = std::fs::read(dir.path().join(dev::CRL)).unwrap();
        let cert = dir.path().join("clients/device-d-9.pem");
        let printed = run_args(&["--dir", dir_arg, "revoke", cert.to_str().unwrap()]).unwrap();
        assert!(printed.contains("revoked"), "{printed}");
        assert_ne!(std::fs::read(dir.path().join(dev::CRL)).unwrap(), crl);
    }

    #[test]
    fn refuses_bad_arguments() {
        for args in [
            &["--identity", "king/x"][..],
            &["--identity", "bidder/"],
            &["issue"],
            &["revoke"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("cert").chain(args.iter().copied())).is_err(),
                "{args:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let missing_ca = run_args(&[
            "--dir",
            dir.path().to_str().unwrap(),
            "issue",
            "--identity",
            "bidder/x",
        ]);
        assert!(missing_ca.is_err());
        let mixed = run_args(&["--identity", "bidder/a", "issue", "--identity", "bidder/b"]);
        assert!(format!("{:#}", mixed.unwrap_err()).contains("creating a CA"));
    }
}
