//! What a backend claims to enforce of a profile, on a given Landlock ABI: for every claim,
//! enforced, partial (and why) or not enforced (and why). The claim type and the claims every
//! backend shares; each backend says its own (`Backend::claims`), the review reports them.
//! The gaps are the documented ones (docs/review.md, docs/sandbox.md).

use serde::{Deserialize, Serialize};

use crate::profile::units::format_duration;
use crate::profile::Profile;

pub use crate::layers::Status;

/// What `--verify` saw for a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Verified {
    /// The escape attempt was refused, as claimed.
    Held(String),
    /// Claimed enforced (or partial for this attempt), but the attempt succeeded.
    Broken(String),
    /// Observed, for a claim that says it is not enforced.
    Observed(String),
    /// Not run, and why.
    NotRun(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Stable id, e.g. `fs.write`.
    pub id: String,
    pub claim: String,
    pub status: Status,
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
}

pub fn claim(id: &str, text: String, status: Status, why: impl Into<String>) -> Claim {
    Claim {
        id: id.into(),
        claim: text,
        status,
        why: why.into(),
        verified: None,
    }
}

pub use crate::layers::tcp_text;

/// The Landlock ABI in effect: the profile's pinned ABI, as far as the kernel has it.
pub fn effective_abi(p: &Profile, abi: u8) -> u8 {
    p.abi.min(abi)
}

/// The claims `layers::decide` makes for the native sandbox on this ABI, each with the layers
/// that enforce it.
pub fn decided(p: &Profile, abi: u8) -> Vec<Claim> {
    // As `run` starts an action: as root, so with namespaces; see `layers`.
    let facts = crate::layers::Facts::native(effective_abi(p, abi));
    crate::layers::decide(p, &facts)
        .into_iter()
        .map(|c| {
            let why = if c.layers.is_empty() {
                c.why
            } else {
                format!("{}: {}", c.layers.join(" + "), c.why)
            };
            claim(c.id, c.text, c.status, why)
        })
        .collect()
}

pub fn common(p: &Profile) -> Vec<Claim> {
    use Status::*;
    let caps: Vec<String> = p.capabilities.iter().map(|c| c.to_string()).collect();
    vec![
        claim(
            "identity",
            format!("runs as {}", p.user),
            Enforced,
            "setgroups, setresgid, setresuid",
        ),
        claim(
            "capabilities",
            if caps.is_empty() {
                "has no capabilities".into()
            } else {
                format!("has only {}", caps.join(", "))
            },
            Enforced,
            "bounding, ambient, inheritable, permitted and effective sets",
        ),
        claim(
            "no_new_privs",
            "cannot gain privileges through exec (setuid, file capabilities)".into(),
            Enforced,
            "PR_SET_NO_NEW_PRIVS",
        ),
        limits_claim(p),
        claim(
            "environment",
            "sees only the environment the profile passes or sets".into(),
            Enforced,
            "cleared at exec",
        ),
    ]
}

/// Which mechanism enforces the limits: `processes` and `memory` by a per-action cgroup when
/// the runner can make one, else by rlimits, whose meaning differs (per user, address space).
pub fn limits_claim(p: &Profile) -> Claim {
    use Status::*;
    let l = &p.limits;
    if l.processes.is_none() && l.memory_bytes.is_none() {
        return claim(
            "limits",
            "runs within its declared limits".into(),
            Enforced,
            "setrlimit, soft = hard",
        );
    }
    let why = format!(
        "processes and memory: a cgroup per action made by the root supervisor (pids.max; memory.max on cgroup v2, memory.limit_in_bytes on v1), whichever hierarchy the machine has; where it cannot make one (not root, no pids or memory controller) RLIMIT_NPROC, which counts every process of {} on the machine{}, and RLIMIT_AS, which counts address space; the other limits: setrlimit, soft = hard",
        p.user,
        if p.user == "root" { " and does not apply to uid 0" } else { " (does not apply to uid 0)" }
    );
    // As root, RLIMIT_NPROC does nothing: without the cgroup, `processes` is not enforced.
    let status = if p.user == "root" && l.processes.is_some() {
        Partial
    } else {
        Enforced
    };
    claim(
        "limits",
        "runs within its declared limits".into(),
        status,
        why,
    )
}

/// The timeout claim: enforced (`how`) when the profile has one, else not (`why_none`).
pub fn timeout_claim(p: &Profile, how: &str, why_none: &str) -> Claim {
    match p.timeout {
        Some(t) => claim(
            "timeout",
            format!("is stopped after {}", format_duration(t)),
            Status::Enforced,
            how,
        ),
        None => claim(
            "timeout",
            "is stopped after a timeout".into(),
            Status::NotEnforced,
            why_none,
        ),
    }
}

/// Replaces the claim with the same id (claims are keyed by id, never by position).
pub fn replace(out: &mut [Claim], new: Claim) {
    if let Some(c) = out.iter_mut().find(|c| c.id == new.id) {
        *c = new;
    }
}

pub fn why(out: &mut [Claim], id: &str, text: &str) {
    if let Some(c) = out.iter_mut().find(|c| c.id == id) {
        c.why = text.into();
    }
}

/// Root's files and the caller's terminal: what the dropped identity and the action's own
/// session keep out of reach, whatever Landlock mediates.
pub fn ownership_and_terminal(p: &Profile, bpm: bool) -> Vec<Claim> {
    use Status::*;
    let owner_caps: Vec<String> = p
        .capabilities
        .iter()
        .map(|c| c.to_string())
        .filter(|c| matches!(c.as_str(), "CAP_FOWNER" | "CAP_CHOWN" | "CAP_FSETID"))
        .collect();
    let files_text = "cannot change the mode or owner of root's files".to_string();
    let files = if bpm {
        claim(
            "root_files",
            files_text,
            Enforced,
            "bpm runs every job as vcap",
        )
    } else if p.user == "root" {
        claim("root_files", files_text, NotEnforced, "uid 0 owns root's files, and Landlock does not mediate chmod, chown, utime or setxattr: with no capability it can still set the setuid bit on a root-owned binary")
    } else if !owner_caps.is_empty() {
        claim(
            "root_files",
            files_text,
            Partial,
            format!("runs as {}, but keeps {}", p.user, owner_caps.join(", ")),
        )
    } else {
        claim(
            "root_files",
            files_text,
            Enforced,
            format!(
                "runs as {} with no CAP_FOWNER or CAP_CHOWN: chmod and chown need ownership",
                p.user
            ),
        )
    };
    let terminal = claim(
        "terminal",
        "cannot push input into the caller's terminal (TIOCSTI) or hold it".into(),
        Enforced,
        if bpm {
            "the runner inside bpm starts the action in its own session (setsid) and relays a terminal's output through a pipe, as natively"
        } else {
            "its own session (setsid: no controlling terminal); a terminal on stdin is replaced by /dev/null, on stdout or stderr by a pipe the supervisor relays"
        },
    );
    vec![files, terminal]
}
