//! A minimal quinn echo with mutual TLS, to check the load tester's echo floor against (issue
//! 20 item 2): nothing of Gavel's stack but the dev certificates and the precise timer.
//!
//! `quinn-echo-min run --certs DIR` starts itself as the server (`serve`, a child process
//! with its own runtime, as the node is), opens `--connections` QUIC connections (one UDP
//! socket and one bidirectional stream each, rustls with default settings, a client
//! certificate), and sends `--rate` requests per second over them for `--seconds`, open loop:
//! request `i` is due at `start + i / rate` on connection `i % connections`, whose one task
//! sleeps to each due time on a `timerfd`, writes a 16-byte request (its sequence number and
//! padding), and reads the echoed bytes between sends. Latency is taken from the due time
//! (no coordinated omission) into an HdrHistogram; `wake` is the due time to the task
//! holding the request (the timer's own lateness). Prints one line of figures, with both
//! processes' CPU seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use gavel_loadtest::pace::PreciseTimer;
use gavel_loadtest::stats::{CpuMeter, Latency};
use gavel_transport::tls::dev;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Bytes of one request (and of its echo): the sequence number, then padding.
const REQUEST_BYTES: usize = 16;

#[derive(Parser)]
#[command(about = "A minimal quinn mTLS echo, open loop (issue 20 item 2)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the echo on 127.0.0.1 (an ephemeral port, printed as `listening <addr>`).
    Serve {
        /// The dev certificates' directory (made if missing).
        #[arg(long)]
        certs: PathBuf,
    },
    /// Start the server and send to it open loop; print the figures.
    Run {
        /// The dev certificates' directory (made if missing).
        #[arg(long)]
        certs: PathBuf,
        /// Requests per second over all connections.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Connections (each one stream).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Sending time.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Serve { certs } => runtime.block_on(serve(&certs)),
        Command::Run {
            certs,
            rate,
            connections,
            seconds,
        } => runtime.block_on(run(&certs, rate, connections, seconds)),
    }
}

/// The PEM certificates of `path`.
fn certs_of(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_of(ca)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

async fn serve(certs: &Path) -> Result<()> {
    let dev = dev::ensure(certs)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots(&dev.ca_cert)?).build()?;
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_of(&dev.server_cert)?,
            PrivateKeyDer::from_pem_file(&dev.server_key)?,
        )?;
    tls.alpn_protocols = vec![b"echo".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    println!("listening {}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                        if send.write_all(&chunk.bytes).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    Ok(())
}

/// The echo server as a child process, killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(certs: &Path) -> Result<(Server, SocketAddr)> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--certs")
        .arg(certs)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the echo server")?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let server = Server(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("listening ") else {
        bail!("the echo server did not start: {line:?}");
    };
    Ok((server, addr.parse()?))
}

fn client_config(certs: &Path) -> Result<quinn::ClientConfig> {
    let dev = dev::ensure(certs)?;
    let bidder = dev
        .clients
        .first()
        .context("the dev certificates hold no client certificate")?;
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots(&dev.ca_cert)?)
        .with_client_auth_cert(
            certs_of(&bidder.cert)?,
            PrivateKeyDer::from_pem_file(&bidder.key)?,
        )?;
    tls.alpn_protocols = vec![b"echo".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// One connection's schedule: requests `first`, `first + step`, … below `planned`.
#[derive(Clone, Copy)]
struct Share {
    start: Instant,
    interval: Duration,
    first: u64,
    step: u64,
    planned: u64,
}

impl Share {
    fn due(&self, seq: u64) -> Instant {
        self.start + self.interval.mul_f64(seq as f64)
    }
}

/// What one connection measured.
#[derive(Default)]
struct Measured {
    latency: Latency,
    wake: Latency,
    answered: u64,
}

async fn run(certs: &Path, rate: f64, connections: usize, seconds: f64) -> Result<()> {
    let (server, addr) = start_server(certs)?;
    let config = client_config(certs)?;
    let mut opened = Vec::new();
    for _ in 0..connections {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config.clone());
        let connection = endpoint.connect(addr, "localhost")?.await?;
        let stream = connection.open_bi().await?;
        opened.push((endpoint, connection, stream));
    }
    let planned = (rate * seconds) as u64;
    let start = Instant::now() + Duration::from_millis(5);
    let meter = CpuMeter::start(Some(server.0.id()));
    let mut tasks = Vec::new();
    for (i, (endpoint, connection, (send, recv))) in opened.into_iter().enumerate() {
        let share = Share {
            start,
            interval: Duration::from_secs_f64(1.0 / rate),
            first: i as u64,
            step: connections as u64,
            planned,
        };
        tasks.push(tokio::spawn(async move {
            let measured = connection_loop(share, send, recv).await;
            connection.close(0_u32.into(), b"done");
            endpoint.wait_idle().await;
            measured
        }));
    }
    let mut all = Measured::default();
    for task in tasks {
        let one = task.await??;
        all.latency.merge(&one.latency);
        all.wake.merge(&one.wake);
        all.answered += one.answered;
    }
    let cpu = meter.finish();
    let (l, w) = (all.latency.summary(), all.wake.summary());
    println!(
        "quinn-echo-min {connections} connections {rate}/s: planned {planned} answered {} | latency µs p50 {} p90 {} p99 {} p99.9 {} max {} | wake µs p50 {} p99 {} | cpu s client {:.2} server {:.2} steal {:.2}",
        all.answered,
        l.p50_us,
        l.p90_us,
        l.p99_us,
        l.p999_us,
        l.max_us,
        w.p50_us,
        w.p99_us,
        cpu.generator_cpu_s,
        cpu.server_cpu_s.unwrap_or(0.0),
        cpu.steal_s,
    );
    drop(server);
    Ok(())
}

/// Sends a connection's share at its due times and reads the echoes between sends, until
/// every request was answered (or 10 s after the last was due).
async fn connection_loop(
    share: Share,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<Measured> {
    let mut timer = PreciseTimer::new()?;
    let mut measured = Measured::default();
    let mut next = share.first;
    let mut expected = 0_u64;
    let mut pending = Vec::new();
    let give_up = share.due(share.planned) + Duration::from_secs(10);
    while next < share.planned || measured.answered < expected {
        if Instant::now() > give_up {
            bail!("{} echoes missing", expected - measured.answered);
        }
        tokio::select! {
            woke = timer.sleep_until(share.due(next)), if next < share.planned => {
                woke?;
                let due = share.due(next);
                measured.wake.record(due.elapsed());
                let mut request = [0_u8; REQUEST_BYTES];
                request[..8].copy_from_slice(&next.to_le_bytes());
                send.write_all(&request).await?;
                next += share.step;
                expected += 1;
            }
            chunk = recv.read_chunk(64 * 1024, true) => {
                let Some(chunk) = chunk? else { bail!("the echo ended the stream") };
                pending.extend_from_slice(&chunk.bytes);
                let whole = pending.len() / REQUEST_BYTES * REQUEST_BYTES;
                for echo in pending[..whole].chunks_exact(REQUEST_BYTES) {
                    let mut seq = [0_u8; 8];
                    seq.copy_from_slice(&echo[..8]);
                    measured.latency.record(share.due(u64::from_le_bytes(seq)).elapsed());
                    measured.answered += 1;
                }
                pending.drain(..whole);
            }
            () = tokio::time::sleep_until(give_up.into()) => {}
        }
    }
    Ok(measured)
}
