//! The BOSH release as the binary carries it: its files (`embedded`) and the ERB subset its
//! templates use (`erb`), so that `bbr-runner demo` renders the real jobs by itself.

pub mod embedded;
pub mod erb;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

/// A job's spec, parsed.
pub fn spec(job: &str) -> Result<Value, String> {
    let text = embedded::get(&format!("jobs/{job}/spec"))
        .ok_or_else(|| format!("no job {job} in this build"))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| format!("jobs/{job}/spec: {e}"))
}

/// Sets `value` at a dotted `name` in nested objects.
fn set_dotted(root: &mut Value, name: &str, value: Value) {
    let mut node = root;
    for key in name.split('.') {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .expect("an object")
            .entry(key)
            .or_insert(Value::Null);
    }
    *node = value;
}

/// The links `job` consumes when it is deployed with the jobs of `instance_group` (job name ->
/// its manifest properties), resolved as the director resolves implicit links: a consumed link
/// is provided by the one job there whose spec `provides` a link of its type, with the
/// properties that link lists (the manifest's value, else the spec's default; unset ones left
/// out) and one instance on this VM. An optional link no job provides is absent; a required one
/// is an error, as are two providers.
pub fn links(job: &str, instance_group: &BTreeMap<String, Value>) -> Result<Value, String> {
    let mut resolved = json!({});
    let consumes = spec(job)?.get("consumes").cloned().unwrap_or(json!([]));
    for c in consumes.as_array().into_iter().flatten() {
        let (name, kind) = (c["name"].as_str(), c["type"].as_str());
        let (Some(name), Some(kind)) = (name, kind) else {
            return Err(format!(
                "jobs/{job}/spec: a consumes entry without name or type"
            ));
        };
        let mut providers = Vec::new();
        for (other, manifest) in instance_group {
            let other_spec = spec(other)?;
            for p in other_spec["provides"].as_array().into_iter().flatten() {
                if p["type"].as_str() == Some(kind) {
                    let props = erb::Properties {
                        manifest: manifest.clone(),
                        spec: other_spec.clone(),
                        links: json!({}),
                    };
                    let mut values = json!({});
                    for prop in p["properties"].as_array().into_iter().flatten() {
                        let prop = prop.as_str().unwrap_or_default();
                        if let Ok(v) = props.p(prop) {
                            set_dotted(&mut values, prop, v);
                        }
                    }
                    providers.push((other.clone(), values));
                }
            }
        }
        match providers.as_slice() {
            [] if c["optional"].as_bool() == Some(true) => {}
            [] => return Err(format!("{job}: no job provides the link '{name}' ({kind})")),
            [(provider, values)] => {
                resolved[name] = json!({
                    "instances": [{"name": provider, "index": 0, "address": "127.0.0.1"}],
                    "properties": values,
                });
            }
            _ => {
                return Err(format!(
                    "{job}: more than one job provides '{name}' ({kind})"
                ))
            }
        }
    }
    Ok(resolved)
}

/// Renders every template of `job` (and its monit file) into `out`, with the links it consumes
/// (see [`links`]), replacing `/var/vcap` with `root` as tests/bosh/render.rb does. Files under
/// bin/ are made executable.
pub fn render_job(
    job: &str,
    manifest: &Value,
    links: &Value,
    out: &Path,
    root: &Path,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let spec = spec(job)?;
    let props = erb::Properties {
        manifest: manifest.clone(),
        spec: spec.clone(),
        links: links.clone(),
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
