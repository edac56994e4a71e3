//! Rendering the release's jobs with Ruby's ERB (Debian's `ruby`) as BOSH does, through
//! `tests/bosh/render.rb`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub fn job_dir(job: &str) -> PathBuf {
    Path::new(REPO).join("jobs").join(job)
}

/// Renders `job` with `properties` into `out`; `root` relocates /var/vcap.
pub fn render(
    job: &str,
    properties: &serde_json::Value,
    out: &Path,
    root: Option<&Path>,
) -> Output {
    assert!(
        Path::new("/usr/bin/ruby").is_file(),
        "ruby is missing: apt-get install ruby"
    );
    let props = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(props.path(), serde_json::to_vec(properties).expect("json"))
        .expect("write props");
    let mut c = Command::new("/usr/bin/ruby");
    c.arg(Path::new(REPO).join("tests/bosh/render.rb"))
        .arg(job_dir(job))
        .arg(props.path())
        .arg(out);
    if let Some(r) = root {
        c.arg(r);
    }
    c.output().expect("ruby")
}

/// Merges `b` into `a` (objects recursively).
pub fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}
