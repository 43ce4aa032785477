//! Compiles `gavel/v1/*.proto` into Rust at build time: prost for the messages, pbjson for
//! their JSON form.
//!
//! Why protox: it is a protobuf compiler written in Rust, so a fresh machine builds Gavel with
//! `cargo build` alone; no system `protoc` has to be installed or downloaded. protox parses
//! the files into a `FileDescriptorSet` (with comments, which become rustdoc), and prost-build
//! generates the code from that set.
//!
//! Why pbjson: the JSON of the WebSocket subprotocol `gavel.v1.json`, the admin API and
//! `gavel wal dump --json` follows the canonical proto3 JSON mapping, which browsers and every
//! protobuf library understand: lowerCamelCase names (the proto names are accepted too),
//! 64-bit integers as decimal strings (a JavaScript number loses precision above 2^53),
//! enums by name, oneof members as plain fields, default values left out. pbjson-build
//! generates `serde` impls from the same descriptor set, so JSON and binary never disagree.

use std::path::Path;

use prost::Message as _;

/// The schema files, in dependency order (protox resolves imports itself either way).
const PROTO_FILES: [&str; 4] = [
    "gavel/v1/auction.proto",
    "gavel/v1/stream.proto",
    "gavel/v1/admin.proto",
    "gavel/v1/wal.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }

    // protox::compile keeps source info (comments) and includes imported files.
    let descriptors = protox::compile(PROTO_FILES, [root])?;
    let encoded = descriptors.encode_to_vec();

    prost_build::Config::new().compile_fds(descriptors)?;

    // Writes `gavel.v1.serde.rs` beside prost's `gavel.v1.rs`; unknown fields are refused
    // (a misspelt field is an error, not a silent default).
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .build(&[".gavel.v1"])?;
    Ok(())
}
