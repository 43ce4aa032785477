//! Worked hex examples in `docs/*.md`, read back for tests that check them byte for byte
//! against the code (this crate's framing, the edge stream's frames). Compiled for tests and
//! with the `doc-examples` feature only.

/// The bytes of the ```text block that follows `heading` in `doc`: from each line, the
/// leading two-digit hex tokens (the rest of the line is commentary).
///
/// Panics when the heading or the block is missing: a test's doc lost its example.
pub fn documented_hex(doc: &str, heading: &str) -> Vec<u8> {
    let after = &doc[doc.find(heading).expect("the doc has the example")..];
    let block = after
        .split("```text\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```text block follows the example's heading");
    block
        .lines()
        .flat_map(|line| {
            line.split_whitespace()
                .take_while(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|t| u8::from_str_radix(t, 16).expect("two hex digits"))
        })
        .collect()
}
