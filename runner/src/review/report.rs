//! The review report: one entry per profile with its grants expanded, per backend the claims and
//! the exposure score, and the findings. Its JSON form (`schema: bbr-runner-review/1`) is the
//! documented interface and what `--baseline` reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::claims::Claim;
use super::findings::{self, Finding};
use super::score::{self, Policy};
use crate::profile::{Access, Backend, Enforcement, Origin, Profile};

pub const SCHEMA: &str = "bbr-runner-review/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub tool_version: String,
    /// This machine's Landlock ABI.
    pub kernel_abi: u8,
    /// The ABI the claims were evaluated on (`--abi`, else the kernel's).
    pub evaluated_abi: u8,
    pub profiles: Vec<ProfileReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileReport {
    pub file: String,
    pub description: String,
    pub grants: Grants,
    /// Variables the profile uses that were not given: their entries are left out here.
    pub undefined_variables: Vec<String>,
    /// What the runner's root side does for the action (actions.yml `monit:`), outside the
    /// sandbox: the only privileged requests it can make.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_side: Vec<String>,
    pub backends: Vec<BackendReport>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEntry {
    pub path: String,
    pub written: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub user: String,
    pub group: Option<String>,
    pub supplementary_groups: Vec<String>,
    pub abi: u8,
    pub enforcement: String,
    pub backends: Vec<String>,
    pub read: Vec<GrantEntry>,
    pub execute: Vec<GrantEntry>,
    pub write: Vec<GrantEntry>,
    pub sockets: Vec<String>,
    pub connect_tcp: Vec<u16>,
    pub bind_tcp: Vec<u16>,
    pub capabilities: Vec<String>,
    pub scope_abstract_unix_socket: bool,
    pub scope_signal: bool,
    pub limits: BTreeMap<String, Option<u64>>,
    pub environment_pass: Vec<String>,
    pub environment_set: BTreeMap<String, String>,
    pub timeout_seconds: Option<u64>,
    pub kill_grace_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendReport {
    pub backend: String,
    /// Whether the runner would run this profile with this backend, and why (not).
    pub runs: bool,
    pub why: String,
    pub claims: Vec<Claim>,
    pub score: f64,
    pub band: String,
    pub badness: BTreeMap<String, u32>,
}

fn entries(p: &Profile, a: Access) -> Vec<GrantEntry> {
    p.grants(a)
        .map(|g| GrantEntry {
            path: g.path.display().to_string(),
            written: g.written.clone(),
            set: match &g.origin {
                Origin::Set(s) => Some(s.clone()),
                Origin::Direct => None,
            },
        })
        .collect()
}

pub fn grants(p: &Profile) -> Grants {
    let l = &p.limits;
    Grants {
        user: p.user.clone(),
        group: p.group.clone(),
        supplementary_groups: p.supplementary_groups.clone(),
        abi: p.abi,
        enforcement: match p.enforcement {
            Enforcement::Strict => "strict".into(),
            Enforcement::BestEffort => "best_effort".into(),
        },
        backends: p.backends.iter().map(|b| b.name().to_string()).collect(),
        read: entries(p, Access::Read),
        execute: entries(p, Access::Execute),
        write: entries(p, Access::Write),
        sockets: p.sockets.iter().map(|s| s.display().to_string()).collect(),
        connect_tcp: p.connect_tcp.clone(),
        bind_tcp: p.bind_tcp.clone(),
        capabilities: p.capabilities.iter().map(|c| c.to_string()).collect(),
        scope_abstract_unix_socket: p.scope_abstract_unix_socket,
        scope_signal: p.scope_signal,
        limits: BTreeMap::from([
            ("open_files".to_string(), l.open_files),
            ("processes".to_string(), l.processes),
            ("memory_bytes".to_string(), l.memory_bytes),
            ("file_size_bytes".to_string(), l.file_size_bytes),
            ("core_file_size_bytes".to_string(), l.core_file_size_bytes),
            ("cpu_seconds".to_string(), l.cpu_seconds),
        ]),
        environment_pass: p.env_pass.clone(),
        environment_set: p.env_set.clone(),
        timeout_seconds: p.timeout.map(|t| t.as_secs()),
        kill_grace_seconds: p.kill_grace.as_secs(),
    }
}

/// The report entry of one profile. `command`: its action's command, when known.
pub fn profile_report(
    p: &Profile,
    backends: &[Backend],
    abi: u8,
    policy: &Policy,
    command: Option<&[String]>,
    undefined: Vec<String>,
) -> ProfileReport {
    let backends = backends
        .iter()
        .map(|b| {
            let backend = crate::backend::of(*b);
            let claims = backend.claims(p, abi);
            let bad = score::badness(p, *b, &claims);
            let s = score::exposure(&bad, policy);
            let (runs, why) = backend.runs(p, abi);
            BackendReport {
                backend: b.name().into(),
                runs,
                why,
                claims,
                score: s,
                band: score::band(s).into(),
                badness: bad.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            }
        })
        .collect();
    ProfileReport {
        file: p.source.display().to_string(),
        description: p.description.clone(),
        grants: grants(p),
        undefined_variables: undefined,
        root_side: Vec::new(),
        backends,
        findings: findings::findings(p, abi, command),
    }
}

/// Variables a profile file uses (outside comments) that `vars` does not define.
pub fn undefined_variables(file: &Path, vars: &crate::profile::Vars) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find('}') else { break };
            let name = &rest[..end];
            if vars.get(name).is_none() && !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
            rest = &rest[end..];
        }
    }
    out.sort();
    out
}
