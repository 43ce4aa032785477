//! Edge stream encode and decode, per update (issue 13 item 1), on the traces of
//! `gavel_benches::edge_trace`: one hot auction, and a Zipf-skewed market of 1,000 auctions,
//! each generated, and each recorded from a load-tester run (`benches/data/`).
//! Each iteration runs a whole trace through a new stream (a new encoder or decoder), in
//! the writer's batches of 10 ms, so first-contact keyframes are included as a subscriber
//! pays them. Before timing, the sizes against the protobuf stream are printed for one
//! update per frame and for the 10 ms batches.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use gavel_benches::edge_trace::{
    RECORDED_TRACES, TRACE_FRAME_BYTES, Traced, batches, encode_edge, hot_trace, protobuf_bytes,
    recorded_trace, zipf_trace,
};
use gavel_edge_proto::{EdgeDecoder, frame_len};

/// Updates per trace.
const UPDATES: usize = 20_000;
/// The writer's batching window, in microseconds.
const WINDOW_US: u64 = 10_000;

/// The frames of an encoded stream.
fn split(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    // Invariant: the bytes are whole frames the encoder wrote, within its bound.
    while let Some(len) = frame_len(bytes, TRACE_FRAME_BYTES).expect("frames the encoder wrote") {
        frames.push(&bytes[..len]);
        bytes = &bytes[len..];
    }
    frames
}

fn report_sizes(name: &str, trace: &[Traced]) {
    let proto = protobuf_bytes(trace);
    for (how, window) in [("one update per frame", 0), ("10 ms batches", WINDOW_US)] {
        let batched = batches(trace, window);
        let mut edge = Vec::new();
        encode_edge(&batched, &mut edge);
        println!(
            "{name}, {how}: {} updates in {} frames; protobuf {:.2} B/update, edge {:.2} B/update = {:.1} %",
            trace.len(),
            split(&edge).len(),
            proto as f64 / trace.len() as f64,
            edge.len() as f64 / trace.len() as f64,
            100.0 * edge.len() as f64 / proto as f64,
        );
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("edge_codec");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let recorded = RECORDED_TRACES.map(|(name, bytes)| {
        // Invariant: the recorded traces are checked by the crate's tests.
        (
            name,
            recorded_trace(bytes).expect("the recorded traces decode"),
        )
    });
    for (name, trace) in [
        ("hot", hot_trace(1, UPDATES)),
        ("zipf", zipf_trace(1, UPDATES)),
    ]
    .into_iter()
    .chain(recorded)
    {
        report_sizes(name, &trace);
        group.throughput(Throughput::Elements(trace.len() as u64));
        let batched = batches(&trace, WINDOW_US);
        let mut out = Vec::with_capacity(1 << 20);
        group.bench_function(format!("{name}/encode"), |b| {
            b.iter(|| {
                out.clear();
                encode_edge(black_box(&batched), &mut out);
                black_box(out.len())
            })
        });
        let mut bytes = Vec::new();
        encode_edge(&batched, &mut bytes);
        let frames = split(&bytes);
        let mut decoded = Vec::with_capacity(trace.len());
        group.bench_function(format!("{name}/decode"), |b| {
            b.iter_batched_ref(
                || EdgeDecoder::new(TRACE_FRAME_BYTES, 4_096),
                |decoder| {
                    for frame in &frames {
                        decoded.clear();
                        // Invariant: the frames are the encoder's, in order.
                        decoder
                            .decode_frame(black_box(frame), &mut decoded)
                            .expect("valid frames");
                    }
                    black_box(decoder.auctions())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}
