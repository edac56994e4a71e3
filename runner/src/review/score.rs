//! The exposure score, computed the way `systemd-analyze security` does: every check has a
//! weight and a range; a check's badness (0..=range) adds ceil(badness * weight / range); the
//! sum over the sum of weights, x100, rounded up, shown /10 on a 0-10 scale, with named bands.
//! Weights and ranges can be overridden by a JSON policy (`--policy FILE`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::claims::{Claim, Status};
use crate::profile::{Backend, Enforcement, Profile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weight {
    pub weight: u32,
    pub range: u32,
}

/// (check id, weight, range, what it measures): the defaults, documented in docs/review.md.
pub const CHECKS: &[(&str, u32, u32, &str)] = &[
    ("user", 2000, 10, "root 10; vcap shared by every bpm job 2; another user 0"),
    ("capabilities", 1500, 10, "5 per dangerous capability kept, 2 per other, up to 10"),
    ("no_new_privs", 1000, 1, "1 when exec could gain privileges"),
    ("fs_write", 1500, 10, "not enforced 10; partial 2 (native) or 6 (bpm); +3 for writes beyond the artifact and tmp dirs"),
    ("fs_read", 1000, 10, "not enforced 10; partial 2 (native) or 6 (bpm)"),
    ("fs_execute", 1000, 10, "not enforced 10"),
    ("network_tcp", 1500, 10, "not enforced 10; ports granted 3 (each to every host)"),
    ("network_udp", 500, 1, "1 when UDP is not restricted"),
    ("unix_sockets", 500, 10, "not enforced 10; partial 3"),
    ("scope_abstract", 500, 1, "1 when abstract unix sockets are not scoped"),
    ("scope_signal", 500, 1, "1 when signals are not scoped"),
    ("timeout", 500, 1, "1 when nothing stops a hung action"),
    ("limit_memory", 250, 1, "1 without a memory limit"),
    ("limit_processes", 250, 1, "1 without a process limit"),
    ("environment", 500, 1, "1 when a secret-like variable is passed, or the environment is not cleared"),
    ("enforcement", 500, 1, "1 for best_effort"),
];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub checks: BTreeMap<String, Weight>,
}

/// Why a `--policy` file cannot be used: the file, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not JSON, or not a policy's fields.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{}: checks.{id}: unknown check; known: {}",
        path.display(),
        CHECKS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
    )]
    UnknownCheck { path: PathBuf, id: String },
    #[error("{}: checks.{id}.range: must be at least 1", path.display())]
    ZeroRange { path: PathBuf, id: String },
}

pub fn load_policy(path: &Path) -> Result<Policy, PolicyError> {
    let path_buf = || path.to_path_buf();
    let text = std::fs::read(path).map_err(|source| PolicyError::Read {
        path: path_buf(),
        source,
    })?;
    let p: Policy = serde_json::from_slice(&text).map_err(|source| PolicyError::Json {
        path: path_buf(),
        source,
    })?;
    for (id, w) in &p.checks {
        if !CHECKS.iter().any(|(c, ..)| c == id) {
            return Err(PolicyError::UnknownCheck {
                path: path_buf(),
                id: id.clone(),
            });
        }
        if w.range == 0 {
            return Err(PolicyError::ZeroRange {
                path: path_buf(),
                id: id.clone(),
            });
        }
    }
    Ok(p)
}

pub fn band(score: f64) -> &'static str {
    match score {
        s if s >= 10.0 => "DANGEROUS",
        s if s >= 9.0 => "UNSAFE",
        s if s >= 7.5 => "EXPOSED",
        s if s >= 5.0 => "MEDIUM",
        s if s >= 1.0 => "OK",
        s if s > 0.0 => "SAFE",
        _ => "PERFECT",
    }
}

fn status(claims: &[Claim], id: &str) -> Status {
    claims
        .iter()
        .find(|c| c.id == id)
        .map_or(Status::NotEnforced, |c| c.status)
}

/// Each check's badness for this profile and backend.
pub fn badness(p: &Profile, backend: Backend, claims: &[Claim]) -> BTreeMap<&'static str, u32> {
    let by_status = |id: &str, partial: u32| match status(claims, id) {
        Status::Enforced => 0,
        Status::Partial => partial,
        Status::NotEnforced => 10,
    };
    let partial_fs = if backend == Backend::Bpm { 6 } else { 2 };
    let broad_writes = super::findings::findings(p, p.abi, None)
        .iter()
        .any(|f| f.id == "BBR001");
    let caps: u32 = p
        .capabilities
        .iter()
        .map(|c| {
            if super::findings::dangerous_capability(&c.to_string()) {
                5
            } else {
                2
            }
        })
        .sum();
    let secret_env = super::findings::findings(p, p.abi, None)
        .iter()
        .any(|f| f.id == "BBR007");
    let one = |bad: bool| u32::from(bad);
    BTreeMap::from([
        (
            "user",
            if status(claims, "identity") == Status::NotEnforced || p.user == "root" {
                10
            } else if backend == Backend::Bpm {
                2
            } else {
                0
            },
        ),
        ("capabilities", caps.min(10)),
        (
            "no_new_privs",
            one(status(claims, "no_new_privs") != Status::Enforced),
        ),
        (
            "fs_write",
            (by_status("fs.write", partial_fs) + if broad_writes { 3 } else { 0 }).min(10),
        ),
        ("fs_read", by_status("fs.read", partial_fs)),
        ("fs_execute", by_status("fs.execute", partial_fs)),
        (
            "network_tcp",
            match (
                status(claims, "net.tcp_connect"),
                status(claims, "net.tcp_bind"),
            ) {
                (Status::NotEnforced, _) | (_, Status::NotEnforced) => 10,
                _ if !p.connect_tcp.is_empty() || !p.bind_tcp.is_empty() => 3,
                _ => 0,
            },
        ),
        (
            "network_udp",
            one(status(claims, "net.udp") != Status::Enforced),
        ),
        ("unix_sockets", by_status("unix.pathname", 3)),
        (
            "scope_abstract",
            one(status(claims, "scope.abstract_unix") != Status::Enforced),
        ),
        (
            "scope_signal",
            one(status(claims, "scope.signal") != Status::Enforced),
        ),
        (
            "timeout",
            one(status(claims, "timeout") != Status::Enforced),
        ),
        ("limit_memory", one(p.limits.memory_bytes.is_none())),
        ("limit_processes", one(p.limits.processes.is_none())),
        (
            "environment",
            one(secret_env || status(claims, "environment") == Status::NotEnforced),
        ),
        ("enforcement", one(p.enforcement == Enforcement::BestEffort)),
    ])
}

/// The 0-10 exposure.
pub fn exposure(badness: &BTreeMap<&'static str, u32>, policy: &Policy) -> f64 {
    let mut sum = 0u64;
    let mut weights = 0u64;
    for (id, weight, range, _) in CHECKS {
        let w = policy.checks.get(*id).copied().unwrap_or(Weight {
            weight: *weight,
            range: *range,
        });
        let b = u64::from(badness.get(id).copied().unwrap_or(0).min(w.range));
        sum += (b * u64::from(w.weight)).div_ceil(u64::from(w.range));
        weights += u64::from(w.weight);
    }
    if weights == 0 {
        return 0.0;
    }
    (sum * 100).div_ceil(weights) as f64 / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_and_extremes() {
        let zero: BTreeMap<&str, u32> = CHECKS.iter().map(|c| (c.0, 0)).collect();
        assert_eq!(exposure(&zero, &Policy::default()), 0.0);
        assert_eq!(band(0.0), "PERFECT");
        let all: BTreeMap<&str, u32> = CHECKS.iter().map(|c| (c.0, c.2)).collect();
        assert_eq!(exposure(&all, &Policy::default()), 10.0);
        assert_eq!(band(10.0), "DANGEROUS");
        assert_eq!(band(5.2), "MEDIUM");
        // Only `user` bad (root): 2000 of the weights' sum, as systemd weighs User=.
        let mut root = zero.clone();
        root.insert("user", 10);
        let total: u64 = CHECKS.iter().map(|c| u64::from(c.1)).sum();
        assert_eq!(
            exposure(&root, &Policy::default()),
            (2000u64 * 100).div_ceil(total) as f64 / 10.0
        );
        // A policy that weighs `user` at 0 makes it vanish.
        let policy = Policy {
            checks: BTreeMap::from([(
                "user".to_string(),
                Weight {
                    weight: 0,
                    range: 10,
                },
            )]),
        };
        assert_eq!(exposure(&root, &policy), 0.0);
    }

    #[test]
    fn policy_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("policy.json");
        let at = file.display().to_string();
        let error = |text: &str| {
            std::fs::write(&file, text).expect("write");
            load_policy(&file).expect_err(text).to_string()
        };
        let known = CHECKS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ");
        assert_eq!(
            error(r#"{"checks": {"nope": {"weight": 1, "range": 1}}}"#),
            format!("{at}: checks.nope: unknown check; known: {known}")
        );
        assert_eq!(
            error(r#"{"checks": {"user": {"weight": 1, "range": 0}}}"#),
            format!("{at}: checks.user.range: must be at least 1")
        );
        assert!(error("{").starts_with(&format!("{at}: EOF while parsing")));
        std::fs::remove_file(&file).expect("remove");
        assert!(matches!(
            load_policy(&file),
            Err(PolicyError::Read { path, .. }) if path == file
        ));
    }
}
