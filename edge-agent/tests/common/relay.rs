//! A UDP relay on loopback between the agent and the node, for a link that fails: while
//! its outage is on, everything the node sends is dropped — QUIC retransmits the stream's
//! bytes afterwards, a datagram is lost for good.

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running relay; stopped when dropped.
pub struct Relay {
    /// The port the agent connects to (127.0.0.1).
    pub port: u16,
    outage: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Relays 127.0.0.1:<port> to the node's QUIC port.
    pub fn start(node_port: u16) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("binds");
        let back = UdpSocket::bind("127.0.0.1:0").expect("binds");
        back.connect(("127.0.0.1", node_port)).expect("connects");
        for socket in [&front, &back] {
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let (outage, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let (client2, stop2, outage2) =
            (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&outage));
        // Ordering: flags between test and relay threads; no data is published through them.
        let up = std::thread::spawn(move || {
            let mut buf = [0_u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = front2.recv_from(&mut buf) {
                    *client2.lock().unwrap() = Some(from);
                    let _ = back2.send(&buf[..n]);
                }
            }
        });
        let stop3 = Arc::clone(&stop);
        let down = std::thread::spawn(move || {
            let mut buf = [0_u8; 65_536];
            while !stop3.load(Ordering::Relaxed) {
                let Ok(n) = back.recv(&mut buf) else { continue };
                let to = *client.lock().unwrap();
                if let Some(to) = to.filter(|_| !outage2.load(Ordering::Relaxed)) {
                    let _ = front.send_to(&buf[..n], to);
                }
            }
        });
        Relay {
            port,
            outage,
            stop,
            threads: vec![up, down],
        }
    }

    /// Starts or ends the outage of the node → agent direction.
    pub fn outage(&self, on: bool) {
        self.outage.store(on, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
