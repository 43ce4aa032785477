//! A real Kafka-protocol broker for tests: [`Broker::start`] runs `tansu` (installed by
//! `ops/test.sh` when missing) on a free loopback port with in-memory storage (or, with
//! [`Broker::start_durable`], sqlite storage that survives [`Broker::stop`] and
//! [`Broker::restart`]), waits until it accepts connections, and the guard kills it when
//! dropped — on panic too.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Longest wait for a started broker to accept connections.
const BROKER_READY_MAX: Duration = Duration::from_secs(30);

/// A running broker; killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    addr: SocketAddr,
    /// `--storage-engine`.
    storage: String,
    /// The broker's working directory (where a relative sqlite path lives).
    dir: Option<PathBuf>,
}

/// The `tansu` binary: on `PATH`, or in `~/.cargo/bin` where `cargo install` puts it.
pub fn tansu_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("tansu"))
            .find(|candidate| candidate.is_file())
    });
    let in_cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin").join("tansu"))
        .filter(|candidate| candidate.is_file());
    on_path.or(in_cargo_home).unwrap_or_else(|| {
        panic!(
            "the Kafka tests need the tansu broker; run ops/test.sh, which installs it \
             (cargo install tansu --version 0.6.0 --features dynostore,libsql)"
        )
    })
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

impl Broker {
    /// Starts a broker with in-memory storage on a free loopback port and waits until it
    /// accepts connections.
    pub fn start() -> Broker {
        Broker::spawn(free_port(), "memory://tansu/", None)
    }

    /// Starts a broker whose storage survives a restart (`sqlite://tansu.db`, a file in
    /// `dir`) on a free loopback port; [`Broker::stop`] and [`Broker::restart`] keep it.
    pub fn start_durable(dir: &Path) -> Broker {
        Broker::spawn(free_port(), "sqlite://tansu.db", Some(dir.to_path_buf()))
    }

    fn spawn(port: u16, storage: &str, dir: Option<PathBuf>) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu_binary());
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &dir {
            // A relative sqlite path is relative to the broker's working directory.
            command.current_dir(dir);
        }
        let child = command.spawn().expect("starting tansu");
        let mut broker = Broker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            storage: storage.to_owned(),
            dir,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + BROKER_READY_MAX;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tansu exited before accepting connections: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not accept connections on {} within {BROKER_READY_MAX:?}",
                self.addr
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port with the same storage and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.addr.port();
        let restarted = Broker::spawn(port, &self.storage.clone(), self.dir.clone());
        // The old child is reaped; the guard now owns the new one.
        *self = restarted;
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Already exited is fine; either way reap it so no zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
