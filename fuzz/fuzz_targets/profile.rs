//! The profile parser on arbitrary bytes: it may reject them, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut vars = bbr_runner::profile::Vars::lenient();
    vars.set("BBR_ARTIFACT_DIRECTORY", "/var/vcap/store/bbr-backup/job/");
    let _ = bbr_runner::profile::parse(std::path::Path::new("fuzz.yml"), data, &vars);
});
