//! A `Profile` written back out as a version-1 profile: the one serialiser (`review --verify`
//! writes the profile it runs with it). A `Profile` has every variable expanded and every path
//! normalized, so the output uses no variables; grants from a set are written as that set
//! (`@name`, the profile's own sets under `sets:`), so a member absent on this machine stays
//! optional. Parsing the output gives the same profile back (the tests check it for every
//! shipped profile).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{units, Access, Enforcement, Origin, Profile};

#[derive(Serialize)]
struct Out<'a> {
    version: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    abi: u8,
    enforcement: &'static str,
    backends: Vec<&'static str>,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    supplementary_groups: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sets: BTreeMap<String, Vec<String>>,
    filesystem: Filesystem,
    sockets: Vec<String>,
    network: Network,
    scopes: Scopes,
    capabilities: Vec<String>,
    limits: Limits,
    environment: Environment<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    kill_grace: String,
}

#[derive(Serialize)]
struct Filesystem {
    read: Vec<String>,
    execute: Vec<String>,
    write: Vec<String>,
}

#[derive(Serialize)]
struct Network {
    connect_tcp: Vec<String>,
    bind_tcp: Vec<String>,
}

#[derive(Serialize)]
struct Scopes {
    abstract_unix_socket: bool,
    signal: bool,
}

#[derive(Serialize)]
struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    open_files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    processes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    core_file_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_seconds: Option<u64>,
}

#[derive(Serialize)]
struct Environment<'a> {
    pass: &'a [String],
    set: &'a BTreeMap<String, String>,
}

/// The profile as YAML that `profile::parse` reads back into the same profile.
pub fn to_yaml(p: &Profile) -> String {
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut list = |access: Access| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for g in p.grants(access) {
            let entry = match &g.origin {
                Origin::Direct => g.path.display().to_string(),
                Origin::Set(name) => {
                    if super::sets::builtin(name).is_none() {
                        let members = sets.entry(name.clone()).or_default();
                        let path = g.path.display().to_string();
                        if !members.contains(&path) {
                            members.push(path);
                        }
                    }
                    format!("@{name}")
                }
            };
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
        out
    };
    let filesystem = Filesystem {
        read: list(Access::Read),
        execute: list(Access::Execute),
        write: list(Access::Write),
    };
    let size = |b: Option<u64>| b.map(units::format_size);
    let out = Out {
        version: super::FORMAT_VERSION,
        description: &p.description,
        abi: p.abi,
        enforcement: match p.enforcement {
            Enforcement::Strict => "strict",
            Enforcement::BestEffort => "best_effort",
        },
        backends: p.backends.iter().map(|b| b.name()).collect(),
        user: &p.user,
        group: p.group.as_deref(),
        supplementary_groups: &p.supplementary_groups,
        sets,
        filesystem,
        sockets: p.sockets.iter().map(|s| s.display().to_string()).collect(),
        network: Network {
            connect_tcp: p.connect_entries(),
            bind_tcp: p.bind_entries(),
        },
        scopes: Scopes {
            abstract_unix_socket: p.scope_abstract_unix_socket,
            signal: p.scope_signal,
        },
        capabilities: p.capabilities.iter().map(|c| c.to_string()).collect(),
        limits: Limits {
            open_files: p.limits.open_files,
            processes: p.limits.processes,
            memory: size(p.limits.memory_bytes),
            file_size: size(p.limits.file_size_bytes),
            core_file_size: size(p.limits.core_file_size_bytes),
            cpu_seconds: p.limits.cpu_seconds,
        },
        environment: Environment {
            pass: &p.env_pass,
            set: &p.env_set,
        },
        timeout: p.timeout.map(units::format_duration),
        kill_grace: units::format_duration(p.kill_grace),
    };
    // Serialising plain strings, numbers and lists cannot fail.
    serde_saphyr::to_string(&out).unwrap_or_else(|e| format!("# cannot serialise: {e}\n"))
}
