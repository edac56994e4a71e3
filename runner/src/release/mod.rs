//! The BOSH release as the binary carries it: its files (`embedded`) and the ERB subset its
//! templates use (`erb`), so that `bbr-runner demo` renders the real jobs by itself.

pub mod embedded;
pub mod erb;

use std::path::Path;

use serde_json::Value;

/// A job's spec, parsed.
pub fn spec(job: &str) -> Result<Value, String> {
    let text = embedded::get(&format!("jobs/{job}/spec"))
        .ok_or_else(|| format!("no job {job} in this build"))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| format!("jobs/{job}/spec: {e}"))
}

/// Renders every template of `job` (and its monit file) into `out`, replacing `/var/vcap` with
/// `root` as tests/bosh/render.rb does. Files under bin/ are made executable.
pub fn render_job(job: &str, manifest: &Value, out: &Path, root: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let spec = spec(job)?;
    let props = erb::Properties {
        manifest: manifest.clone(),
        spec: spec.clone(),
    };
    let relocate = |s: String| s.replace("/var/vcap", &root.display().to_string());
    let templates = spec
        .get("templates")
        .and_then(Value::as_object)
        .ok_or("spec has no templates")?;
    for (source, dest) in templates {
        let dest = dest
            .as_str()
            .ok_or("template destination is not a string")?;
        let text = embedded::get(&format!("jobs/{job}/templates/{source}"))
            .ok_or_else(|| format!("template {source} missing"))?;
        let rendered = erb::render(text, &props)
            .map_err(|e| format!("Error filling in template '{source}' for job '{job}': {e}"))?;
        let path = out.join(dest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, relocate(rendered))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = if dest.starts_with("bin/") {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let monit = embedded::get(&format!("jobs/{job}/monit")).unwrap_or("");
    let monit = erb::render(monit, &props).map_err(|e| format!("monit of {job}: {e}"))?;
    std::fs::write(out.join("monit"), relocate(monit)).map_err(|e| format!("monit: {e}"))?;
    Ok(())
}

/// Writes the embedded profiles under `dir` (as the package installs them).
pub fn install_profiles(dir: &Path) -> Result<(), String> {
    for (path, content) in embedded::FILES {
        if let Some(rel) = path.strip_prefix("profiles/") {
            let target = dir.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(&target, content).map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}
