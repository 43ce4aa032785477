//! Compiles `gavel/v1/*.proto` into Rust at build time.
//!
//! Why protox: it is a protobuf compiler written in Rust, so a fresh machine builds Gavel with
//! `cargo build` alone; no system `protoc` has to be installed or downloaded. protox parses
//! the files into a `FileDescriptorSet` (with comments, which become rustdoc), and prost-build
//! generates the code from that set.

use std::path::Path;

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

    prost_build::Config::new()
        // Serde derives for the JSON WebSocket subprotocol (`gavel.v1.json`), which carries
        // the same messages with the proto field names (snake_case). Oneofs become
        // externally tagged objects keyed by the oneof field's name, e.g.
        // `{"request_id": 1, "body": {"place_bid": {...}}}`.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // proto3 semantics: a field left out of the JSON takes its default value.
        .message_attribute(".", "#[serde(default)]")
        .enum_attribute(".", "#[serde(rename_all = \"snake_case\")]")
        .compile_fds(descriptors)?;
    Ok(())
}
