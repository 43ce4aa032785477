//! The fuzz targets' seed inputs (`fuzz/seeds/<target>/`, issue 16 item 1) are real inputs,
//! made here by the real encoders: bidder messages, admin bodies, log records and segments
//! written by the WAL, snapshots, a development PKI, a config file.
//!
//! `GAVEL_WRITE_FUZZ_SEEDS=1 cargo test -p gavel --test fuzz_seeds` rewrites them. Without
//! it the test checks every checked-in seed is still accepted by the decoder its target
//! fuzzes, so a format change that leaves the fuzzer starting from refused inputs fails here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gavel_engine::{
    AuctionId, AuctionKind, AuctionRules, AuctionSpec, Bid, BidId, BidderId, BoundedSink, Engine,
    EngineConfig, Event, IncrementTable, SoftClose, Topic, UnixMicros,
};
use gavel_node::serve::config::ServeOptions;
use gavel_proto::convert::state::{
    decode_snapshot, decode_snapshot_parts, encode_snapshot, encode_snapshot_pruned,
};
use gavel_proto::convert::wal::{decode_record, encode_record};
use gavel_proto::frame::{self, FrameDecoder};
use gavel_proto::pb;
use gavel_proto::pb::client_message::Body;
use gavel_transport::tls::ServerTls;
use gavel_transport::tls::dev::{self, DevCertOptions};
use gavel_wal::snapshot::{SnapshotFile, read_snapshot, write_snapshot};
use gavel_wal::{Wal, WalConfig, inspect};
use prost::Message as _;

/// `fuzz/PART_SEPARATOR` (gavel_fuzz::PART_SEPARATOR): joins the files of one input.
const PART_SEPARATOR: &[u8] = b"\n%%\n";
/// The LSN the `snapshot_file` target names its file for.
const SNAPSHOT_FILE_LSN: u64 = 7;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(PART_SEPARATOR)
}

fn spec(id: u64, kind: AuctionKind, soft_close: Option<SoftClose>) -> AuctionSpec {
    AuctionSpec::try_from(AuctionRules {
        id: AuctionId(id),
        topic: Topic::new("metals.cu").unwrap(),
        kind,
        reserve: Some(20),
        buy_now: None,
        starts_at: UnixMicros(1_000),
        ends_at: UnixMicros(100_000),
        soft_close,
    })
    .unwrap()
}

/// One auction of each kind.
fn specs() -> Vec<AuctionSpec> {
    let soft = SoftClose {
        window_us: 5_000,
        extension_us: 5_000,
        extensions_max: 3,
    };
    vec![
        spec(
            1,
            AuctionKind::English {
                start_price: 10,
                increments: IncrementTable::default(),
            },
            Some(soft),
        ),
        spec(2, AuctionKind::SealedFirstPrice { min_bid: 5 }, None),
        spec(3, AuctionKind::SealedSecondPrice { min_bid: 5 }, None),
        spec(
            4,
            AuctionKind::Dutch {
                start_price: 1_000,
                floor_price: 100,
                step: 50,
                step_interval_us: 1_000,
            },
            None,
        ),
    ]
}

/// The states of the auctions of [`specs`] after a few bids (a snapshot mid-auction), every
/// event the engine logged (closes, settlements and, a retention later, prunes included),
/// and a snapshot after the first prunes (auctions and pruned results).
fn states_and_events() -> (Vec<gavel_engine::AuctionState>, Vec<Event>, Vec<u8>) {
    let engine = Engine::new(EngineConfig::default());
    let sink = BoundedSink::new(1024, 0);
    let mut events = Vec::new();
    let drain = |events: &mut Vec<Event>| {
        while let Some(event) = sink.pop() {
            events.push(event);
        }
    };
    for spec in specs() {
        let id = spec.id();
        engine
            .create_auction(spec, UnixMicros(1_000), &sink)
            .unwrap();
        drain(&mut events);
        for (n, (bidder, amount)) in [("acme", 30), ("bolt", 60), ("acme", 900)]
            .iter()
            .enumerate()
        {
            let bidder = BidderId::new(bidder).unwrap();
            let bid_id = BidId(u128::from(id.0) << 8 | (n as u128 + 1));
            let at = UnixMicros(2_000 + n as u64 * 1_000);
            let bid = Bid::new(id, bidder, bid_id, *amount, None, at).unwrap();
            engine.place_bid(&bid, at, &sink);
            drain(&mut events);
        }
    }
    let states = engine.snapshot();
    engine.close_due(UnixMicros(200_000), 16, &sink);
    drain(&mut events);
    let retained = UnixMicros(200_000 + engine.config().settled_retention_us);
    assert_eq!(engine.prune_due(retained, 2, &sink).len(), 2);
    drain(&mut events);
    let (after, pruned) = engine.snapshot_with_pruned();
    let mut with_pruned = encode_snapshot(events.len() as u64, retained, &after);
    encode_snapshot_pruned(&pruned, &mut with_pruned);
    (states, events, with_pruned)
}

fn client_messages() -> Vec<(&'static str, pb::ClientMessage)> {
    let message = |request_id, body| pb::ClientMessage {
        request_id,
        body: Some(body),
    };
    let position = pb::StreamPosition {
        auction_id: 1,
        epoch: 1,
        seq: 3,
    };
    vec![
        (
            "place_bid",
            message(
                1,
                Body::PlaceBid(pb::PlaceBid {
                    auction_id: 1,
                    amount: 150,
                    max: Some(400),
                    bid_id_hi: 7,
                    bid_id_lo: 42,
                    client_sent_at_us: 1_700_000_000_000_000,
                }),
            ),
        ),
        (
            "subscribe",
            message(
                2,
                Body::Subscribe(pb::Subscribe {
                    topics: vec!["metals.cu".into()],
                    patterns: vec!["metals.*".into(), "energy.>".into()],
                    interval_ms: 50,
                    resume: vec![position],
                    datagrams: true,
                    encoding: pb::StreamEncoding::Protobuf as i32,
                }),
            ),
        ),
        (
            "unsubscribe",
            message(
                3,
                Body::Unsubscribe(pb::Unsubscribe {
                    topics: vec!["metals.cu".into()],
                    patterns: vec!["metals.*".into()],
                }),
            ),
        ),
        (
            "resume",
            message(
                4,
                Body::Resume(pb::Resume {
                    positions: vec![position],
                }),
            ),
        ),
        (
            "ping",
            message(
                5,
                Body::Ping(pb::Ping {
                    nonce: 9,
                    client_sent_at_us: 1,
                }),
            ),
        ),
    ]
}

/// Every seed: target, file name, bytes.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for (name, message) in client_messages() {
        frame::encode(&message, &mut stream);
        let mut framed = vec![7]; // the target's first byte: how reads are cut
        frame::encode(&message, &mut framed);
        seeds.push(("quic_frames", format!("{name}.bin"), framed));
        seeds.push(("ws_proto", format!("{name}.bin"), message.encode_to_vec()));
        let json = serde_json::to_vec(&message).unwrap();
        seeds.push(("ws_json", format!("{name}.json"), json));
    }
    stream.insert(0, 3);
    seeds.push(("quic_frames", "all.bin".into(), stream));
    for spec in specs() {
        let body = serde_json::to_vec(&pb::CreateAuction::from(&spec)).unwrap();
        seeds.push((
            "admin_create",
            format!("auction-{}.json", spec.id().0),
            body,
        ));
    }
    seeds.extend(log_seeds());
    seeds.push(("tls_material", "dev-pki.pem".into(), tls_seed()));
    seeds.push((
        "config_toml",
        "gavel.toml".into(),
        CONFIG_SEED.as_bytes().to_vec(),
    ));
    seeds.extend(edge_seeds());
    seeds
}

/// Edge streams written by the real encoder: the snapshots and price updates of the
/// specs' auctions, in one stream of 10 ms batches, and the same updates one per frame.
fn edge_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let engine = Engine::new(EngineConfig::default());
    let mut messages: Vec<pb::ServerMessage> = Vec::new();
    for spec in specs() {
        let id = spec.id();
        engine
            .create_auction(spec, UnixMicros(0), &gavel_engine::DiscardSink)
            .unwrap();
        let view = engine.view(id, UnixMicros(1)).unwrap();
        let snapshot = pb::AuctionSnapshot::from_view(&view, 1);
        messages.push(pb::ServerMessage {
            request_id: 0,
            body: Some(pb::server_message::Body::AuctionSnapshot(snapshot.clone())),
        });
        for step in 1..=3_u64 {
            messages.push(pb::ServerMessage {
                request_id: 0,
                body: Some(pb::server_message::Body::PriceUpdate(pb::PriceUpdate {
                    auction_id: id.0,
                    topic: view.spec.rules().topic.as_str().to_owned(),
                    epoch: snapshot.epoch,
                    seq: snapshot.seq + step,
                    price: Some(1_000 * step),
                    leader: Some(format!("bidder-{step}")),
                    ends_at_us: snapshot.ends_at_us,
                    bids_accepted: snapshot.bids_accepted + step,
                    accepted_at_us: 1_764_237_600_000_000 + 1_000 * step,
                    watchers: 2,
                    bidders_connected: 1,
                })),
            });
        }
    }
    let mut batched = Vec::new();
    let mut encoder = gavel_edge_proto::EdgeEncoder::new(4_096);
    for message in &messages {
        encoder.encode(message, &mut batched);
    }
    encoder.flush(&mut batched);
    let mut single = Vec::new();
    let mut encoder = gavel_edge_proto::EdgeEncoder::new(4_096);
    for message in &messages {
        encoder.encode(message, &mut single);
        encoder.flush(&mut single);
    }
    vec![
        ("edge_stream", "batched.bin".into(), batched),
        ("edge_stream", "one-per-frame.bin".into(), single),
    ]
}

/// An edge stream decodes whole: every frame accepted, every update applied.
fn accepted_edge_stream(mut bytes: &[u8]) -> Result<(), String> {
    let mut decoder = gavel_edge_proto::EdgeDecoder::new(16_384, 64);
    let mut out = Vec::new();
    let mut frames = 0;
    while let Some(len) = gavel_edge_proto::frame_len(bytes, 16_384).map_err(|e| e.to_string())? {
        let (frame, rest) = bytes.split_at(len.min(bytes.len()));
        decoder
            .decode_frame(frame, &mut out)
            .map_err(|e| e.to_string())?;
        frames += 1;
        bytes = rest;
    }
    let refused = out
        .iter()
        .any(|d| matches!(d, gavel_edge_proto::Decoded::KeyframeNeeded { .. }));
    if frames == 0 || refused || !bytes.is_empty() {
        return Err(format!(
            "{frames} frames, refused {refused}, {} bytes left",
            bytes.len()
        ));
    }
    Ok(())
}

fn log_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let (states, events, with_pruned) = states_and_events();
    let mut payloads = vec![Vec::new(); events.len()];
    for (event, payload) in events.iter().zip(&mut payloads) {
        encode_record(event, payload);
    }
    let parts: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let snapshot = encode_snapshot(events.len() as u64, UnixMicros(50_000), &states);
    let dir = tempfile::tempdir().unwrap();
    let file = write_snapshot(dir.path(), SNAPSHOT_FILE_LSN, &snapshot).unwrap();
    vec![
        ("wal_record", "auctions.bin".into(), join(&parts)),
        (
            "wal_segment",
            "one-segment.bin".into(),
            segments(&parts, u64::MAX),
        ),
        (
            "wal_segment",
            "two-segments.bin".into(),
            segments(&parts, half_of(&parts)),
        ),
        ("snapshot_state", "auctions.bin".into(), snapshot),
        ("snapshot_state", "pruned.bin".into(), with_pruned),
        (
            "snapshot_file",
            "auctions.snap".into(),
            std::fs::read(file).unwrap(),
        ),
    ]
}

/// A segment size that splits the log of `payloads` in two.
fn half_of(payloads: &[&[u8]]) -> u64 {
    let bytes: usize = payloads
        .iter()
        .map(|p| p.len() + gavel_wal::frame::HEADER_BYTES)
        .sum();
    bytes as u64 / 2 + 1
}

/// The segments the WAL writes for `payloads` with segments of `segment_bytes_max`, as the
/// `wal_segment` target reads them: the first, then (if any) the separator, the second's
/// first LSN as one byte, and the second.
fn segments(payloads: &[&[u8]], segment_bytes_max: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        segment_bytes_max,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    for payload in payloads {
        let lsn = wal.append(payload).unwrap();
        wal.wait_durable(lsn, Duration::from_secs(10)).unwrap();
    }
    wal.shutdown().unwrap();
    let files = gavel_wal::segment::list_segments(dir.path()).unwrap();
    let first = std::fs::read(&files[0].path).unwrap();
    match files.get(1) {
        None => first,
        Some(second) => {
            let mut tail = vec![u8::try_from(second.first_lsn).unwrap()];
            tail.extend(std::fs::read(&second.path).unwrap());
            join(&[&first, &tail])
        }
    }
}

fn tls_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let options = DevCertOptions {
        // Long enough that the checked-in CRL still loads for decades.
        crl_valid_for: Duration::from_secs(60 * 365 * 24 * 3600),
        cert_valid_for: Duration::from_secs(60 * 365 * 24 * 3600),
        ..DevCertOptions::default()
    };
    let certs = dev::generate(dir.path(), &options).unwrap();
    let read = |path: &Path| std::fs::read(path).unwrap();
    join(&[
        &read(&certs.server_cert),
        &read(&certs.server_key),
        &read(&certs.ca_cert),
        &read(&certs.crl),
    ])
}

const CONFIG_SEED: &str = r#"data_dir = "/var/lib/gavel"
quic_listen = "127.0.0.1:4433"
https_listen = "127.0.0.1:8443"
tls_cert = "server.pem"
tls_key = "server.key"
tls_client_ca = "ca.pem"
tls_crl = "ca.crl"
allowed_origins = ["https://example.com"]
frame_bytes_max = 65536
connections_max = 1000
bids_per_second_per_bidder = 100
wal = "file"
wal_segment_bytes_max = 67108864
snapshot_every_records = 100000
"#;

/// Whether `bytes` are accepted by the decoder `target` fuzzes.
fn accepted(target: &str, bytes: &[u8]) -> Result<(), String> {
    let parts: Vec<&[u8]> = split(bytes);
    let ok = |what: &str, result: bool| if result { Ok(()) } else { Err(what.to_owned()) };
    match target {
        "quic_frames" => {
            let mut decoder = FrameDecoder::new(4096);
            decoder.push(&bytes[1..]);
            let mut n = 0;
            while decoder
                .next_message::<pb::ClientMessage>()
                .map_err(|e| e.to_string())?
                .is_some()
            {
                n += 1;
            }
            ok("no whole frame", n > 0 && decoder.buffered_bytes() == 0)
        }
        "ws_proto" => pb::ClientMessage::decode(bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "ws_json" => serde_json::from_slice::<pb::ClientMessage>(bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "admin_create" => {
            let message: pb::CreateAuction =
                serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            AuctionSpec::try_from(message)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        "wal_record" => parts
            .iter()
            .try_for_each(|p| decode_record(p).map(drop).map_err(|e| e.to_string())),
        "snapshot_state" => decode_snapshot_parts(bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "wal_segment" => accepted_segments(&parts),
        "snapshot_file" => accepted_snapshot_file(bytes),
        "tls_material" => accepted_tls(&parts),
        "config_toml" => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            let options: ServeOptions = toml::from_str(text).map_err(|e| e.to_string())?;
            options.resolve().map(drop).map_err(|e| e.to_string())
        }
        "edge_stream" => accepted_edge_stream(bytes),
        other => Err(format!("no decoder for target {other}")),
    }
}

fn split(bytes: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest
        .windows(PART_SEPARATOR.len())
        .position(|w| w == PART_SEPARATOR)
    {
        parts.push(&rest[..at]);
        rest = &rest[at + PART_SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

fn accepted_segments(parts: &[&[u8]]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let name = gavel_wal::segment::segment_file_name;
    std::fs::write(dir.path().join(name(1)), parts[0]).unwrap();
    if let Some(second) = parts.get(1) {
        std::fs::write(dir.path().join(name(u64::from(second[0]))), &second[1..]).unwrap();
    }
    let report = inspect::verify(dir.path()).map_err(|e| e.to_string())?;
    if let Some(problem) = report.problem {
        return Err(problem.to_string());
    }
    let whole = report.torn_tail.is_none() && report.records > 0;
    if whole {
        Ok(())
    } else {
        Err(format!("torn tail or empty: {:?}", report.torn_tail))
    }
}

fn accepted_snapshot_file(bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join(gavel_wal::snapshot::snapshot_file_name(SNAPSHOT_FILE_LSN));
    std::fs::write(&path, bytes).unwrap();
    let snapshot = read_snapshot(&SnapshotFile {
        lsn: SNAPSHOT_FILE_LSN,
        path,
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    decode_snapshot(&snapshot.payload)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn accepted_tls(parts: &[&[u8]]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let names = ["cert.pem", "key.pem", "ca.pem", "crl.pem"];
    for (name, part) in names.iter().zip(parts) {
        std::fs::write(dir.path().join(name), part).unwrap();
    }
    let paths = gavel_transport::tls::TlsPaths {
        cert: dir.path().join(names[0]),
        key: dir.path().join(names[1]),
        client_ca: dir.path().join(names[2]),
        crl: Some(dir.path().join(names[3])),
    };
    ServerTls::load(paths, false)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn every_fuzz_seed_is_a_real_input_its_decoder_accepts() {
    let root = seeds_dir();
    if std::env::var_os("GAVEL_WRITE_FUZZ_SEEDS").is_some() {
        for (target, name, bytes) in seeds() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let targets = [
        "quic_frames",
        "ws_proto",
        "ws_json",
        "admin_create",
        "wal_record",
        "wal_segment",
        "snapshot_file",
        "snapshot_state",
        "tls_material",
        "config_toml",
    ];
    for target in targets {
        let files: Vec<_> = std::fs::read_dir(root.join(target))
            .unwrap_or_else(|e| panic!("fuzz/seeds/{target}: {e}"))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "fuzz/seeds/{target} is empty");
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            if let Err(why) = accepted(target, &bytes) {
                panic!("{} is refused by its decoder: {why}", file.display());
            }
        }
    }
    // The same encoders still make seeds the decoders accept (the written ones are checked
    // above; this covers a run that did not write them).
    for (target, name, bytes) in seeds() {
        accepted(target, &bytes).unwrap_or_else(|why| panic!("{target}/{name}: {why}"));
    }
}
