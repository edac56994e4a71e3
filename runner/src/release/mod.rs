//! The BOSH release as the binary carries it: its files (`embedded`) and the ERB subset its
//! templates use (`erb`), so that `bbr-runner demo` renders the real jobs by itself.

pub mod embedded;
pub mod erb;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Why a job of the embedded release cannot be read, linked or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no job {job} in this build")]
    NoJob { job: String },
    /// The job's spec is not YAML (the parser's error, boxed: it is large).
    #[error("jobs/{job}/spec: {source}")]
    Spec {
        job: String,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("jobs/{job}/spec: a consumes entry without name or type")]
    BadConsumes { job: String },
    /// A required link no job of the instance group provides.
    #[error("{job}: no job provides the link '{name}' ({kind})")]
    NoProvider {
        job: String,
        name: String,
        kind: String,
    },
    #[error("{job}: more than one job provides '{name}' ({kind})")]
    TwoProviders {
        job: String,
        name: String,
        kind: String,
    },
    #[error("spec has no templates")]
    NoTemplates,
    #[error("template destination is not a string")]
    BadDestination,
    #[error("template {template} missing")]
    MissingTemplate { template: String },
    /// A template does not render (as BOSH words it: a missing property, most often).
    #[error("Error filling in template '{template}' for job '{job}': {source}")]
    Template {
        template: String,
        job: String,
        #[source]
        source: erb::ErbError,
    },
    #[error("monit of {job}: {source}")]
    Monit {
        job: String,
        #[source]
        source: erb::ErbError,
    },
    /// The rendered monit file cannot be written.
    #[error("monit: {0}")]
    WriteMonit(#[source] std::io::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A job's spec, parsed.
pub fn spec(job: &str) -> Result<Value, ReleaseError> {
    let text = embedded::get(&format!("jobs/{job}/spec")).ok_or_else(|| ReleaseError::NoJob {
        job: job.to_string(),
    })?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| ReleaseError::Spec {
        job: job.to_string(),
        source: Box::new(e),
    })
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
pub fn links(job: &str, instance_group: &BTreeMap<String, Value>) -> Result<Value, ReleaseError> {
    let mut resolved = json!({});
    let consumes = spec(job)?.get("consumes").cloned().unwrap_or(json!([]));
    for c in consumes.as_array().into_iter().flatten() {
        let (name, kind) = (c["name"].as_str(), c["type"].as_str());
        let (Some(name), Some(kind)) = (name, kind) else {
            return Err(ReleaseError::BadConsumes {
                job: job.to_string(),
            });
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
            [] => {
                return Err(ReleaseError::NoProvider {
                    job: job.to_string(),
                    name: name.to_string(),
                    kind: kind.to_string(),
                })
            }
            [(provider, values)] => {
                resolved[name] = json!({
                    "instances": [{"name": provider, "index": 0, "address": "127.0.0.1"}],
                    "properties": values,
                });
            }
            _ => {
                return Err(ReleaseError::TwoProviders {
                    job: job.to_string(),
                    name: name.to_string(),
                    kind: kind.to_string(),
                })
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
) -> Result<(), ReleaseError> {
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
        .ok_or(ReleaseError::NoTemplates)?;
    for (source, dest) in templates {
        let dest = dest.as_str().ok_or(ReleaseError::BadDestination)?;
        let text = embedded::get(&format!("jobs/{job}/templates/{source}")).ok_or_else(|| {
            ReleaseError::MissingTemplate {
                template: source.clone(),
            }
        })?;
        let rendered = erb::render(text, &props).map_err(|e| ReleaseError::Template {
            template: source.clone(),
            job: job.to_string(),
            source: e,
        })?;
        let path = out.join(dest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(&path, relocate(rendered)).map_err(io_err(&path))?;
        let mode = if dest.starts_with("bin/") {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&path))?;
    }
    let monit = embedded::get(&format!("jobs/{job}/monit")).unwrap_or("");
    let monit = erb::render(monit, &props).map_err(|source| ReleaseError::Monit {
        job: job.to_string(),
        source,
    })?;
    std::fs::write(out.join("monit"), relocate(monit)).map_err(ReleaseError::WriteMonit)?;
    Ok(())
}

/// Writes the embedded profiles under `dir` (as the package installs them).
pub fn install_profiles(dir: &Path) -> Result<(), ReleaseError> {
    for (path, content) in embedded::FILES {
        if let Some(rel) = path.strip_prefix("profiles/") {
            let target = dir.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::write(&target, content).map_err(io_err(&target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_as_before() {
        let e = spec("nope").expect_err("no such job");
        assert_eq!(e.to_string(), "no job nope in this build");
        let group = BTreeMap::from([("nope".to_string(), json!({}))]);
        assert!(matches!(
            links("acme-api", &group),
            Err(ReleaseError::NoJob { job }) if job == "nope"
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let e = render_job(
            "bbr-acme-db",
            &json!({"database": {"scheme": "postgres", "user": "acme"}}),
            &json!({}),
            dir.path(),
            dir.path(),
        )
        .expect_err("no database password");
        assert!(
            e.to_string().starts_with("Error filling in template '")
                && e.to_string().contains(
                    "' for job 'bbr-acme-db': Can't find property '[\"database.password\"]'"
                ),
            "{e}"
        );
    }
}
