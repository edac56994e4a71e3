//! Rendering the release's jobs with Ruby's ERB (Debian's `ruby`) as BOSH does, through
//! `tests/bosh/render.rb`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub fn job_dir(job: &str) -> PathBuf {
    Path::new(REPO).join("jobs").join(job)
}

/// Renders `job` with `properties` into `out`, consuming no link; `root` relocates /var/vcap.
pub fn render(
    job: &str,
    properties: &serde_json::Value,
    out: &Path,
    root: Option<&Path>,
) -> Output {
    render_linked(job, properties, &serde_json::json!({}), out, root)
}

/// Renders `job` with `properties` and the `links` it consumes (as
/// `bbr_runner::release::links` resolves them) into `out`; `root` relocates /var/vcap.
pub fn render_linked(
    job: &str,
    properties: &serde_json::Value,
    links: &serde_json::Value,
    out: &Path,
    root: Option<&Path>,
) -> Output {
    assert!(
        Path::new("/usr/bin/ruby").is_file(),
        "ruby is missing: apt-get install ruby"
    );
    let json_file = |v: &serde_json::Value| {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), serde_json::to_vec(v).expect("json")).expect("write json");
        f
    };
    let (props, links) = (json_file(properties), json_file(links));
    let mut c = Command::new("/usr/bin/ruby");
    c.arg(Path::new(REPO).join("tests/bosh/render.rb"))
        .arg(job_dir(job))
        .arg(props.path())
        .arg(out)
        .arg(root.unwrap_or(Path::new("")))
        .arg(links.path());
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
