//! A real MQTT broker for tests: Debian's `mosquitto`, started with a written config on a
//! free loopback port (`listener <port> 127.0.0.1`, `allow_anonymous true`, no
//! persistence: a restart forgets retained messages), and `mosquitto_sub` as a client that
//! is not the agent. Shared by the unit tests (`src/`) and the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running mosquitto; killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    config: tempfile::NamedTempFile,
}

impl Mosquitto {
    /// Starts mosquitto on a free loopback port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut config = tempfile::NamedTempFile::new().expect("a config file");
        write!(
            config,
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        )
        .expect("writes the config");
        let mut broker = Mosquitto {
            child: None,
            port,
            config,
        };
        broker.restart();
        broker
    }

    /// Kills the broker (its retained messages are gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (Debian's mosquitto package; ops/test.sh installs it)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `mosquitto_sub` on the broker at `port`, `topic`, until `count` messages came (retained
/// ones included) or `timeout_s` passed: `(topic, payload)` pairs, the payload as text or,
/// with `hex`, as hex digits.
pub fn subscribe(
    port: u16,
    topic: &str,
    count: usize,
    timeout_s: u32,
    hex: bool,
) -> Vec<(String, String)> {
    {
        let format = if hex { "%t %x" } else { "%t %p" };
        let output = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
            .args([
                "-C",
                &count.to_string(),
                "-W",
                &timeout_s.to_string(),
                "-F",
                format,
            ])
            .output()
            .expect("mosquitto_sub runs (Debian's mosquitto-clients package)");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(topic, payload)| (topic.to_owned(), payload.to_owned()))
            .collect()
    }
}

/// Publishes one message with `mosquitto_pub` to the broker at `port`.
pub fn publish(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-m",
            payload,
        ])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success());
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
