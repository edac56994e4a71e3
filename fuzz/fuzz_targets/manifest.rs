//! The artifact manifest reader on arbitrary bytes: it may reject them, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bbr_runner::actions::artifact::parse_manifest(data);
});
