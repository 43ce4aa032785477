//! Crash-test helpers shared by the file-log crash test (`crash.rs`) and the Kafka one
//! (`kafka.rs`): a `gavel simulate` child under load whose durable acks (the hidden
//! `--ack-log -`: one flushed line per bid once durable) are read from a pipe, killed with
//! SIGKILL, reaped, and its acks collected.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gavel_engine::{
    AuctionId, Bid, BidOutcome, DiscardSink, Engine, EngineConfig, EventKind, Rejection,
    ReplaySummary, Replayer,
};
use gavel_proto::convert::wal::decode_record;

/// Longest wait for the child's first durable ack before the round fails.
pub const FIRST_ACK_WAIT_MAX: Duration = Duration::from_secs(20);
/// Longest wait for the killed child to be reaped and its pipe to close.
const REAP_WAIT_MAX: Duration = Duration::from_secs(10);

/// One line of the child's `--ack-log`.
#[derive(Clone, Debug)]
pub struct Ack {
    pub auction: u64,
    pub bidder: String,
    pub bid: u128,
    pub seq: u64,
    pub lsn: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut fields = line.strip_prefix("ack ")?.split(' ');
    let ack = Ack {
        auction: fields.next()?.parse().ok()?,
        bidder: fields.next()?.to_owned(),
        bid: fields.next()?.parse().ok()?,
        seq: fields.next()?.parse().ok()?,
        lsn: fields.next()?.parse().ok()?,
    };
    fields.next().is_none().then_some(ack)
}

/// A number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A running child and the thread forwarding its ack lines.
pub struct Loaded {
    pub child: Child,
    pub acks: Receiver<Ack>,
    reader: JoinHandle<()>,
    stderr: PathBuf,
}

/// Spawns `gavel simulate` on `dir` with 20 auctions, 2 bidding threads, a practically
/// endless bid count and `--ack-log -`, plus `extra` arguments; its stderr goes to `stderr`.
pub fn spawn_loaded(dir: &Path, stderr: &Path, seed: u64, extra: &[&str]) -> Loaded {
    let log = std::fs::File::create(stderr).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["simulate", "--data-dir"])
        .arg(dir)
        .args(["--auctions", "20", "--bids", "50000000", "--threads", "2"])
        .args(["--seed", &seed.to_string(), "--no-verify", "--show", "0"])
        .args(["--ack-log", "-"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("the gavel binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, acks) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match stdout.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            // The kill can cut the child's last write: a line without its newline was never
            // delivered whole, so the client never received that ack. Nothing can follow it.
            let Some(complete) = line.strip_suffix('\n') else {
                return;
            };
            if let Some(ack) = parse_ack(complete) {
                if tx.send(ack).is_err() {
                    return;
                }
            } else if complete.starts_with("ack ") {
                panic!("malformed ack line {complete:?}");
            }
        }
    });
    Loaded {
        child,
        acks,
        reader,
        stderr: stderr.to_path_buf(),
    }
}

/// [`spawn_loaded`] in `<scratch>/<name>` (stderr in `<name>.stderr`) writing the Kafka log
/// `kafka` (its brokers, topic and writer lease).
pub fn spawn_loaded_on_kafka(
    scratch: &Path,
    name: &str,
    seed: u64,
    kafka: &gavel_wal::kafka::KafkaConfig,
) -> Loaded {
    let lease = kafka.writer_lease_ms.to_string();
    let extra = [
        "--kafka-brokers",
        &kafka.brokers,
        "--kafka-topic",
        &kafka.topic,
        "--kafka-writer-lease-ms",
        &lease,
    ];
    let stderr = scratch.join(format!("{name}.stderr"));
    spawn_loaded(&scratch.join(name), &stderr, seed, &extra)
}

impl Loaded {
    /// Waits for the first durable ack; kills the child and fails the round if none comes
    /// within [`FIRST_ACK_WAIT_MAX`].
    pub fn first_ack(&mut self, round: u64) -> Ack {
        match self.acks.recv_timeout(FIRST_ACK_WAIT_MAX) {
            Ok(first) => first,
            Err(e) => {
                let reason = match e {
                    RecvTimeoutError::Timeout => "no durable ack in time",
                    RecvTimeoutError::Disconnected => "the child exited before any ack",
                };
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "round {round}: {reason} ({FIRST_ACK_WAIT_MAX:?}); child stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
        }
    }
}

/// Kills the child (SIGKILL), reaps it and collects every ack it wrote. Fails if the child
/// had already exited by itself with an error.
pub fn kill_and_collect(mut loaded: Loaded, round: u64) -> Vec<Ack> {
    // `Child::kill` sends SIGKILL on Unix.
    let _ = loaded.child.kill();
    let status = loaded.child.wait().unwrap();
    let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
    // A child that exited by itself first must have succeeded (it never does with the
    // bid count given, but that is not an error of durability).
    assert!(
        killed || status.success(),
        "round {round}: the child exited by itself with {status}:\n{}",
        std::fs::read_to_string(&loaded.stderr).unwrap_or_default()
    );
    // The pipe's write end died with the child: the reader sees EOF promptly.
    let deadline = Instant::now() + REAP_WAIT_MAX;
    while !loaded.reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "round {round}: the ack pipe did not close"
        );
        thread::sleep(Duration::from_millis(5));
    }
    loaded.reader.join().expect("the ack reader panicked");
    loaded.acks.try_iter().collect()
}

/// Waits up to `wait` for the child to exit by itself (a fenced node stops), kills it if it
/// has not, and collects every ack it wrote; also its exit status and stderr.
pub fn collect_after(mut loaded: Loaded, wait: Duration) -> (Vec<Ack>, ExitStatus, String) {
    let deadline = Instant::now() + wait;
    let status = loop {
        if let Some(status) = loaded.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = loaded.child.kill();
            break loaded.child.wait().unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    };
    let deadline = Instant::now() + REAP_WAIT_MAX;
    while !loaded.reader.is_finished() {
        assert!(Instant::now() < deadline, "the ack pipe did not close");
        thread::sleep(Duration::from_millis(5));
    }
    loaded.reader.join().expect("the ack reader panicked");
    let stderr = std::fs::read_to_string(&loaded.stderr).unwrap_or_default();
    (loaded.acks.try_iter().collect(), status, stderr)
}

/// A reference engine fed exactly the surviving records, through `Replayer` (no snapshot),
/// and every `BidAccepted` among them.
pub struct Reference {
    pub engine: Engine,
    /// (auction, seq) → (LSN, bid) of every `BidAccepted`.
    pub accepted: HashMap<(u64, u64), (u64, Bid)>,
    pub summary: ReplaySummary,
}

impl Reference {
    /// Feeds `(lsn, payload)` records in log order (each auction's records in order is
    /// what matters).
    pub fn replay(records: impl IntoIterator<Item = (u64, Vec<u8>)>, round: u64) -> Reference {
        let engine = Engine::new(EngineConfig::default());
        let mut accepted = HashMap::new();
        let mut replayer = Replayer::new(&engine);
        for (lsn, payload) in records {
            let event = decode_record(&payload)
                .unwrap_or_else(|e| panic!("round {round}: LSN {lsn}: {e:#}"));
            if let EventKind::BidAccepted { bid, .. } = &event.kind {
                accepted.insert((event.auction.0, event.seq), (lsn, *bid));
            }
            replayer.apply(&event).unwrap_or_else(|e| {
                panic!("round {round}: the reference replay refuses LSN {lsn}: {e}")
            });
        }
        let summary = replayer.finish();
        Reference {
            engine,
            accepted,
            summary,
        }
    }

    /// The LSN of the acknowledged bid's `BidAccepted` record (same auction, seq, bidder and
    /// bid id); fails if the log lacks it.
    pub fn logged(&self, ack: &Ack, round: u64) -> u64 {
        let Some((lsn, bid)) = self.accepted.get(&(ack.auction, ack.seq)) else {
            panic!("round {round}: acknowledged {ack:?} has no BidAccepted record in the log");
        };
        assert_eq!(
            (bid.bidder().to_string().as_str(), bid.id().0),
            (ack.bidder.as_str(), ack.bid),
            "round {round}: auction {} seq {} is another bid than the acknowledged one",
            ack.auction,
            ack.seq
        );
        *lsn
    }

    /// Checks a recovered engine against the acks: every auction at least at its acked seq,
    /// and a retry of each auction's last acked bid answered `Duplicate` with its seq (within
    /// the dedup window, all the engine promises: fewer than `dedup_window_bids` accepted
    /// bids after it; a bidder thread's last ack can be far behind its auction on a loaded
    /// machine). Run after the state hash check: a non-duplicate would change the state.
    /// Returns (retries checked, retries beyond the window).
    pub fn check_recovered(&self, engine: &Engine, acks: &[Ack], round: u64) -> (u64, u64) {
        let mut last_per_auction: HashMap<u64, &Ack> = HashMap::new();
        for ack in acks {
            let seq = engine.auction_seq(AuctionId(ack.auction));
            assert!(
                seq.is_some_and(|s| s >= ack.seq),
                "round {round}: auction {} recovered at seq {seq:?}, below the acknowledged {}",
                ack.auction,
                ack.seq
            );
            let last = last_per_auction.entry(ack.auction).or_insert(ack);
            if ack.seq > last.seq {
                *last = ack;
            }
        }
        let window = EngineConfig::default().dedup_window_bids as u64;
        let (mut checked, mut beyond) = (0, 0);
        for ack in last_per_auction.values() {
            let (_, bid) = self.accepted[&(ack.auction, ack.seq)];
            let seq_now = engine.auction_seq(AuctionId(ack.auction)).unwrap_or(0);
            if seq_now - ack.seq >= window {
                beyond += 1;
                continue;
            }
            match engine
                .place_bid(&bid, bid.client_sent_at(), &DiscardSink)
                .outcome
            {
                BidOutcome::Rejected(Rejection::Duplicate { original }) => assert_eq!(
                    original.seq, ack.seq,
                    "round {round}: a retry of {ack:?} got another original"
                ),
                other => panic!(
                    "round {round}: a retry of {ack:?} ({bid:?}) got {other:?}; the auction is at seq {seq_now}"
                ),
            }
            checked += 1;
        }
        (checked, beyond)
    }
}
