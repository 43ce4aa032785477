//! [`ServerTls`]: the node's current server configurations, swapped whole when the TLS files
//! change.
//!
//! Reload rule: every attempt reads all files once and builds both configurations from
//! exactly those bytes; only a complete success replaces them (and bumps the generation a
//! QUIC endpoint watches to call `set_server_config`). A failure keeps the last good
//! configurations, logs an `error!` naming the file, and counts
//! `gavel_tls_reloads_total{result="error"}`.
//!
//! The watcher compares file *contents* (not mtimes) with what the last attempt read, so a
//! torn write seen half-written fails once, and the final content — different from the torn
//! one — is picked up by the next poll. Replacing the certificate and the key one after the
//! other works the same way: a poll between the two sees a mismatch and fails, the next one
//! loads the pair. Writers should still prefer write-then-rename.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::material::{Configs, Expiry, RawFiles};
use super::{TlsError, TlsPaths};
use crate::metrics::{TLS_EXPIRY, TLS_LAST_RELOAD_SUCCESSFUL, TLS_RELOADS};

/// Shortest poll period of [`ServerTls::spawn_reloader`]; shorter requests are raised to it.
pub const RELOAD_POLL_MIN: Duration = Duration::from_millis(50);

/// The node's TLS server configurations, shared by every listener. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    paths: TlsPaths,
    anonymous_watchers: bool,
    /// The current configurations; connections take a snapshot when they start.
    configs: ArcSwap<Configs>,
    /// Bumped on each successful reload.
    generation: watch::Sender<u64>,
    /// Serializes reloads (a std mutex: held only in blocking code, never across `.await`).
    attempts: Mutex<Attempts>,
}

/// What the last reload attempt saw.
struct Attempts {
    /// The files as last read (whether or not they loaded).
    last_read: Option<RawFiles>,
    /// The last read failure, so a file that stays unreadable is reported once.
    last_read_error: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("paths", &self.inner.paths)
            .field("anonymous_watchers", &self.inner.anonymous_watchers)
            .field("generation", &*self.inner.generation.borrow())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the material; with `anonymous_watchers`, clients without a certificate are let
    /// through the handshake (and may only watch). Blocking (reads files).
    pub fn load(paths: TlsPaths, anonymous_watchers: bool) -> Result<ServerTls, TlsError> {
        let raw = RawFiles::read(&paths)?;
        let configs = Configs::build(&paths, &raw, anonymous_watchers, now())?;
        if paths.crl.is_none() {
            warn!(ca = %paths.client_ca.display(), "no CRL configured: client certificates are not checked for revocation");
        }
        info!(cert = %paths.cert.display(), ca = %paths.client_ca.display(), anonymous_watchers, "TLS material loaded");
        record_in_use(&configs.expiry);
        Ok(ServerTls {
            inner: Arc::new(Inner {
                paths,
                anonymous_watchers,
                configs: ArcSwap::from_pointee(configs),
                generation: watch::Sender::new(0),
                attempts: Mutex::new(Attempts {
                    last_read: Some(raw),
                    last_read_error: None,
                }),
            }),
        })
    }

    /// The files this was loaded from.
    pub fn paths(&self) -> &TlsPaths {
        &self.inner.paths
    }

    /// The current QUIC configuration: TLS 1.3, ALPN `gavel/1`, client certificates verified.
    pub fn quic_config(&self) -> Arc<rustls::ServerConfig> {
        self.inner.configs.load().quic.clone()
    }

    /// The current HTTPS configuration: TLS 1.3, ALPN `h2` then `http/1.1`, the same client
    /// verification as QUIC.
    pub fn https_config(&self) -> Arc<rustls::ServerConfig> {
        self.inner.configs.load().https.clone()
    }

    /// The generation of the configurations: 0 at load, bumped by each successful reload.
    /// A QUIC endpoint follows it with
    /// `while generation.changed().await.is_ok() { endpoint.set_server_config(..from
    /// quic_config()..) }`; a TCP listener needs nothing, it takes [`Self::https_config`]
    /// per accepted connection.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Re-reads every file and replaces the configurations. On any error the last good ones
    /// stay, the error is logged naming the file and counted, and returned.
    ///
    /// Blocking (reads files): from async code call it in `spawn_blocking`.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut attempts = self.lock_attempts();
        let raw = match RawFiles::read(&self.inner.paths) {
            Ok(raw) => raw,
            Err(e) => {
                attempts.last_read = None;
                attempts.last_read_error = Some(e.to_string());
                return Err(self.failed(e));
            }
        };
        attempts.last_read_error = None;
        attempts.last_read = Some(raw.clone());
        self.apply(&raw)
    }

    /// One poll of the watcher: reloads if any file's content differs from the last read.
    /// Returns whether the configurations were replaced.
    fn poll_files(&self) -> bool {
        let mut attempts = self.lock_attempts();
        let raw = match RawFiles::read(&self.inner.paths) {
            Ok(raw) => raw,
            Err(e) => {
                // Reported once until it changes; when the files come back they reload.
                let message = e.to_string();
                if attempts.last_read_error.as_ref() != Some(&message) {
                    attempts.last_read_error = Some(message);
                    self.failed(e);
                }
                attempts.last_read = None;
                return false;
            }
        };
        attempts.last_read_error = None;
        if attempts.last_read.as_ref() == Some(&raw) {
            return false;
        }
        attempts.last_read = Some(raw.clone());
        self.apply(&raw).is_ok()
    }

    /// Builds from `raw` and swaps on success. Called with the attempts lock held.
    fn apply(&self, raw: &RawFiles) -> Result<(), TlsError> {
        let configs = Configs::build(&self.inner.paths, raw, self.inner.anonymous_watchers, now())
            .map_err(|e| self.failed(e))?;
        record_in_use(&configs.expiry);
        self.inner.configs.store(Arc::new(configs));
        let mut generation = 0;
        self.inner.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        metrics::counter!(TLS_RELOADS, "result" => "ok").increment(1);
        info!(generation, "TLS material reloaded");
        Ok(())
    }

    /// Logs and counts a failed reload; returns the error.
    fn failed(&self, error: TlsError) -> TlsError {
        metrics::counter!(TLS_RELOADS, "result" => "error").increment(1);
        metrics::gauge!(TLS_LAST_RELOAD_SUCCESSFUL).set(0.0);
        error!(%error, "TLS reload failed; keeping the last good configuration");
        error
    }

    fn lock_attempts(&self) -> std::sync::MutexGuard<'_, Attempts> {
        // A panic while holding it cannot leave `Attempts` inconsistent (two plain fields,
        // each written whole), so a poisoned lock is still usable.
        self.inner
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches the files: every `poll` (at least [`RELOAD_POLL_MIN`]) reloads if any file's
    /// content changed, and on unix reloads on `SIGHUP`. Ends when `shutdown` is cancelled.
    /// Must be called within a tokio runtime.
    pub fn spawn_reloader(
        &self,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let poll = poll.max(RELOAD_POLL_MIN);
        // Installed before returning, so a SIGHUP right after this call is not missed.
        let mut hangup = Hangup::new();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(poll);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // The first tick is immediate; the files were just loaded.
            loop {
                let this = this.clone();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {
                        let polled = tokio::task::spawn_blocking(move || this.poll_files()).await;
                        if let Err(e) = polled {
                            error!(error = %e, "TLS reload poll failed");
                        }
                    }
                    () = hangup.recv() => {
                        info!("SIGHUP: reloading the TLS material");
                        // Errors of the reload itself are logged and counted by `reload`.
                        let reloaded = tokio::task::spawn_blocking(move || this.reload()).await;
                        if let Err(e) = reloaded {
                            error!(error = %e, "TLS reload failed");
                        }
                    }
                }
            }
        })
    }
}

/// Sets the gauges of the material now in use: its expiry times, and that the latest load
/// succeeded.
fn record_in_use(expiry: &Expiry) {
    metrics::gauge!(TLS_EXPIRY, "kind" => "server_cert").set(expiry.server_cert as f64);
    metrics::gauge!(TLS_EXPIRY, "kind" => "client_ca").set(expiry.client_ca as f64);
    if let Some(crl) = expiry.crl {
        metrics::gauge!(TLS_EXPIRY, "kind" => "crl").set(crl as f64);
    }
    metrics::gauge!(TLS_LAST_RELOAD_SUCCESSFUL).set(1.0);
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// `SIGHUP` where there is one; never fires elsewhere or if the handler cannot be installed.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(
                    |e| warn!(error = %e, "no SIGHUP handler; TLS reloads by polling only"),
                )
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

    use super::*;
    use crate::tls::dev;

    /// Counts `gavel_tls_reloads_total` by its `result` label.
    #[derive(Default)]
    struct Reloads {
        ok: Arc<AtomicU64>,
        error: Arc<AtomicU64>,
    }

    struct Count(Arc<AtomicU64>);

    impl metrics::CounterFn for Count {
        fn increment(&self, value: u64) {
            // Ordering: a test counter read after the calls that bump it, on one thread.
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.fetch_max(value, Ordering::Relaxed);
        }
    }

    impl metrics::Recorder for Reloads {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let result = key.labels().find(|l| l.key() == "result");
            match (key.name(), result.map(|l| l.value())) {
                (TLS_RELOADS, Some("ok")) => Counter::from_arc(Arc::new(Count(self.ok.clone()))),
                (TLS_RELOADS, Some("error")) => {
                    Counter::from_arc(Arc::new(Count(self.error.clone())))
                }
                _ => Counter::noop(),
            }
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn the_expiry_of_the_material_in_use_is_read_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let options = dev::DevCertOptions {
            cert_valid_for: Duration::from_secs(20 * 86_400),
            crl_valid_for: Duration::from_secs(2 * 86_400),
            ..dev::DevCertOptions::default()
        };
        let certs = dev::generate(dir.path(), &options).unwrap();
        let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
        let expiry = tls.inner.configs.load().expiry;
        let now = now().unix_timestamp();
        // Generous bounds: the certificates are backdated a little and issued a moment ago.
        let near = |at: i64, from_now: i64| (at - now - from_now).abs() < 3_600;
        assert!(near(expiry.server_cert, 20 * 86_400), "{expiry:?}");
        assert!(near(expiry.crl.unwrap(), 2 * 86_400), "{expiry:?}");
        assert!(
            near(
                expiry.client_ca,
                dev::CA_VALID_FOR.as_secs().try_into().unwrap()
            ),
            "{expiry:?}"
        );
    }

    #[test]
    fn reloads_are_counted_by_result_and_polls_report_a_bad_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dev::generate(dir.path(), &dev::DevCertOptions::default()).unwrap();
        let tls = ServerTls::load(certs.tls_paths(), false).unwrap();
        let reloads = Reloads::default();
        let counts = || {
            (
                reloads.ok.load(Ordering::Relaxed),
                reloads.error.load(Ordering::Relaxed),
            )
        };
        metrics::with_local_recorder(&reloads, || {
            tls.reload().unwrap();
            assert!(!tls.poll_files(), "nothing changed");
            std::fs::write(&certs.server_key, b"garbage").unwrap();
            assert!(tls.reload().is_err());
            // The watcher saw this content already: no second report.
            assert!(!tls.poll_files());
            assert!(!tls.poll_files());
        });
        assert_eq!(counts(), (1, 1));

        metrics::with_local_recorder(&reloads, || {
            // Missing, then back: reported once, then loaded.
            std::fs::remove_file(&certs.server_key).unwrap();
            assert!(!tls.poll_files());
            assert!(!tls.poll_files());
            assert!(dev::ensure(dir.path()).is_ok()); // issues server.pem/.key again
            assert!(tls.poll_files());
        });
        assert_eq!(counts(), (2, 2));
        assert_eq!(*tls.subscribe().borrow(), 2);
    }
}
