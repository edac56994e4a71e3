//! The example deployment manifests (`manifests/`) as the director would see them: operations
//! files applied (the subset of go-patch they use: `replace` and `remove`, paths of keys,
//! `name=VALUE` selectors, indexes, `-` to append, `?` for optional) and `((variables))`
//! interpolated. Checked against `bosh int` by hand (docs/release.md).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::bosh::REPO;

fn yaml(rel: &str) -> Value {
    let path = Path::new(REPO).join(rel);
    let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_str(&body).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The child of `node` that `token` names; `create` makes a missing key (a `?` path).
fn step<'a>(node: &'a mut Value, token: &str, create: bool, path: &str) -> &'a mut Value {
    if let Some((key, want)) = token.split_once('=') {
        let items = node
            .as_array_mut()
            .unwrap_or_else(|| panic!("{path}: not an array at {token}"));
        return items
            .iter_mut()
            .find(|i| i[key].as_str() == Some(want))
            .unwrap_or_else(|| panic!("{path}: no element {token}"));
    }
    if let Ok(i) = token.parse::<usize>() {
        return node
            .get_mut(i)
            .unwrap_or_else(|| panic!("{path}: no index {i}"));
    }
    if node.is_null() && create {
        *node = json!({});
    }
    let map = node
        .as_object_mut()
        .unwrap_or_else(|| panic!("{path}: not a map at {token}"));
    if create {
        return map.entry(token).or_insert(Value::Null);
    }
    map.get_mut(token)
        .unwrap_or_else(|| panic!("{path}: no key {token}"))
}

/// Applies one operations file to `doc`.
pub fn apply_ops(doc: &mut Value, ops: &Value, file: &str) {
    for op in ops
        .as_array()
        .unwrap_or_else(|| panic!("{file}: not a list"))
    {
        let path = op["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: op without path"));
        let tokens: Vec<&str> = path
            .strip_prefix('/')
            .expect("absolute path")
            .split('/')
            .collect();
        let (last, parents) = tokens.split_last().expect("a token");
        let mut node = &mut *doc;
        let mut optional = false;
        for t in parents {
            optional |= t.ends_with('?');
            node = step(node, t.trim_end_matches('?'), optional, path);
        }
        let last_optional = optional || last.ends_with('?');
        let last = last.trim_end_matches('?');
        match op["type"].as_str() {
            Some("replace") => {
                let value = op["value"].clone();
                if last == "-" {
                    if node.is_null() {
                        *node = json!([]);
                    }
                    node.as_array_mut().expect("append to an array").push(value);
                } else {
                    *step(node, last, last_optional, path) = value;
                }
            }
            Some("remove") => match node {
                Value::Object(m) => {
                    m.remove(last);
                }
                Value::Array(a) => {
                    let (key, want) = last.split_once('=').expect("name=VALUE");
                    a.retain(|i| i[key].as_str() != Some(want));
                }
                _ => panic!("{path}: cannot remove"),
            },
            other => panic!("{file}: op type {other:?} is not in the subset"),
        }
    }
}

/// Replaces `((name))` with `vars[name]`: a whole value keeps the variable's type.
pub fn interpolate(v: &mut Value, vars: &BTreeMap<&str, Value>) {
    match v {
        Value::String(s) => {
            let name = s.strip_prefix("((").and_then(|r| r.strip_suffix("))"));
            if let Some(name) = name.filter(|n| !n.contains("((")) {
                *v = vars
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("no variable {name}"));
            } else {
                while let Some(start) = s.find("((") {
                    let end = s[start..].find("))").expect("((name))") + start;
                    let name = &s[start + 2..end];
                    let value = match vars
                        .get(name)
                        .unwrap_or_else(|| panic!("no variable {name}"))
                    {
                        Value::String(x) => x.clone(),
                        other => other.to_string(),
                    };
                    s.replace_range(start..end + 2, &value);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| interpolate(x, vars)),
        Value::Object(m) => m.values_mut().for_each(|x| interpolate(x, vars)),
        _ => {}
    }
}

/// `manifests/NAME` with `manifests/operations/OPS` applied and `vars` interpolated.
pub fn load(name: &str, ops: &[&str], vars: &BTreeMap<&str, Value>) -> Value {
    let mut doc = yaml(&format!("manifests/{name}"));
    for o in ops {
        let file = format!("manifests/operations/{o}");
        apply_ops(&mut doc, &yaml(&file), &file);
    }
    interpolate(&mut doc, vars);
    doc
}

/// The jobs of instance group `group`: name -> (release, properties).
pub fn jobs(manifest: &Value, group: &str) -> BTreeMap<String, (String, Value)> {
    let ig = manifest["instance_groups"]
        .as_array()
        .expect("instance_groups")
        .iter()
        .find(|g| g["name"] == group)
        .unwrap_or_else(|| panic!("no instance group {group}"));
    ig["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            let name = j["name"].as_str().expect("job name").to_string();
            let release = j["release"].as_str().expect("release").to_string();
            let props = if j["properties"].is_null() {
                json!({})
            } else {
                j["properties"].clone()
            };
            (name, (release, props))
        })
        .collect()
}
