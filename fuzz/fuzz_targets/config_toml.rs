//! The node's TOML config file: `toml::from_str` into `ServeOptions` (unknown keys refused,
//! as `ServeOptions::from_toml_file` reads it), then `resolve`, which fills in defaults and
//! validates (refused with an error naming the option). Neither may panic; options merged
//! over themselves are unchanged.
#![no_main]

use gavel_node::serve::config::ServeOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(options) = toml::from_str::<ServeOptions>(text) else {
        return;
    };
    assert_eq!(options.clone().or(options.clone()), options);
    assert_eq!(options.clone().or(ServeOptions::default()), options);
    let _ = options.resolve();
});
