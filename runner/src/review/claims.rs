//! What each backend really enforces of a profile, on a given Landlock ABI: for every claim,
//! enforced, partial (and why) or not enforced (and why). The gaps are the documented ones
//! (shared/research/sandbox-peers.md 1.6-1.8; bpm.md 3.10).

use serde::{Deserialize, Serialize};

use crate::profile::{Backend, Profile};

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

fn claim(id: &str, text: String, status: Status, why: impl Into<String>) -> Claim {
    Claim {
        id: id.into(),
        claim: text,
        status,
        why: why.into(),
        verified: None,
    }
}

use crate::layers::tcp_text;

/// The Landlock ABI in effect: the profile's pinned ABI, as far as the kernel has it.
pub fn effective_abi(p: &Profile, abi: u8) -> u8 {
    p.abi.min(abi)
}

pub fn native(p: &Profile, abi: u8) -> Vec<Claim> {
    // As `run` starts an action: as root, so with namespaces; see `layers`.
    let facts = crate::layers::Facts::native(effective_abi(p, abi));
    let mut out: Vec<Claim> = crate::layers::decide(p, &facts)
        .into_iter()
        .map(|c| {
            let why = if c.layers.is_empty() {
                c.why
            } else {
                format!("{}: {}", c.layers.join(" + "), c.why)
            };
            claim(c.id, c.text, c.status, why)
        })
        .collect();
    out.extend(common(p));
    out.push(timeout_claim(
        p,
        "the supervisor sends TERM to the process group, then KILL after the grace period",
        "the profile has no timeout (BBR has none either)",
    ));
    out.extend(ownership_and_terminal(p, false));
    out
}

fn common(p: &Profile) -> Vec<Claim> {
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
fn limits_claim(p: &Profile) -> Claim {
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

/// bpm with the bpm.yml `bpm render` gives the profile. Privileged (`backend::bpm::privileged`):
/// the runner's whole sandbox inside bpm's container, as natively, except that bpm's cgroup
/// holds the limits. Else bpm's default container, plus whatever the runner can apply inside
/// it: bpm's seccomp filter answers landlock_* with ENOSYS (checked on a real bpm).
pub fn bpm(p: &Profile, abi: u8) -> Vec<Claim> {
    use Status::*;
    if crate::backend::bpm::privileged(p) {
        let mut out = native(p, abi);
        for c in &mut out {
            if matches!(c.id.as_str(), "identity" | "capabilities" | "no_new_privs") {
                c.why = format!(
                    "{} by the runner, which bpm's privileged container starts as root",
                    c.why
                );
            }
        }
        replace(&mut out, bpm_limits());
        return out;
    }
    let mut out = vec![
        claim("fs.read", "reads only its read, execute and write grants".into(), Partial, "bpm's mount view: all of /etc, /usr, /bin, /lib, every package, the job's directory and the volumes are readable; volumes under /var/vcap can reach other jobs' config"),
        claim("fs.write", "writes only its write grants".into(), Partial, "bpm mounts the job's data, tmp and log directories and writable volumes; every bpm job runs as vcap, so vcap-owned files in mounted paths are writable across jobs"),
        claim("fs.execute", "executes only its execute grants".into(), NotEnforced, "bpm mounts /usr, /bin, /lib and every package executable"),
        claim("net.tcp_connect", tcp_text("connects over TCP", &p.connect_tcp), NotEnforced, "bpm shares the host network; the runner cannot apply Landlock inside bpm's seccomp filter"),
        claim("net.tcp_bind", tcp_text("binds TCP", &p.bind_tcp), NotEnforced, "bpm shares the host network"),
        claim("net.udp", "sends and receives no UDP".into(), NotEnforced, "bpm shares the host network"),
        claim("unix.pathname", "connects only to its declared unix sockets".into(), Partial, "only mounted paths are visible; every socket in a mounted directory is reachable"),
        claim("scope.abstract_unix", "connects to no abstract unix socket made outside the sandbox".into(), NotEnforced, "abstract sockets belong to the network namespace, which bpm shares with the host"),
        claim("scope.signal", "signals no process outside the sandbox".into(), Enforced, "bpm's pid namespace"),
    ];
    out.extend(common(p));

    replace(
        &mut out,
        claim(
            "no_new_privs",
            "cannot gain privileges through exec (setuid, file capabilities)".into(),
            Enforced,
            "bpm sets no_new_privileges and mounts nosuid",
        ),
    );
    why(
        &mut out,
        "identity",
        "bpm runs every job as vcap (one uid shared by all bpm jobs)",
    );
    why(
        &mut out,
        "capabilities",
        "bpm's empty capability set, plus the ones its bpm.yml lists",
    );
    replace(&mut out, bpm_limits());
    replace(
        &mut out,
        claim(
            "environment",
            "sees only the environment the profile passes or sets".into(),
            Enforced,
            "the runner inside bpm's container clears the environment: bpm's own TMPDIR, LANG, PATH and HOME reach the action only when the profile passes them",
        ),
    );
    if p.user != "vcap" {
        replace(
            &mut out,
            claim(
                "identity",
                format!("runs as {}", p.user),
                NotEnforced,
                "bpm always runs as vcap (without unsafe.privileged)",
            ),
        );
    }
    out.push(timeout_claim(
        p,
        "bpm run has none; the runner inside bpm's container sends TERM to the action's process group, then KILL after the grace period",
        "the profile has no timeout (BBR and bpm run have none either)",
    ));
    out.extend(ownership_and_terminal(p, true));
    out
}

fn bpm_limits() -> Claim {
    claim("limits", "runs within its declared limits".into(), Status::Enforced, "bpm applies memory and processes as cgroup limits (its bpm.yml, rendered from the profile) and open_files and core as rlimits; the runner inside bpm's container applies cpu_seconds, file_size, open_files and core as rlimits")
}

/// The timeout claim: enforced (`how`) when the profile has one, else not (`why_none`).
fn timeout_claim(p: &Profile, how: &str, why_none: &str) -> Claim {
    match p.timeout {
        Some(t) => claim(
            "timeout",
            format!("is stopped after {}", super::human_duration(t)),
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
fn replace(out: &mut [Claim], new: Claim) {
    if let Some(c) = out.iter_mut().find(|c| c.id == new.id) {
        *c = new;
    }
}

fn why(out: &mut [Claim], id: &str, text: &str) {
    if let Some(c) = out.iter_mut().find(|c| c.id == id) {
        c.why = text.into();
    }
}

/// Root's files and the caller's terminal: what the dropped identity and the action's own
/// session keep out of reach, whatever Landlock mediates.
fn ownership_and_terminal(p: &Profile, bpm: bool) -> Vec<Claim> {
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

pub fn for_backend(p: &Profile, backend: Backend, abi: u8) -> Vec<Claim> {
    match backend {
        Backend::Native => native(p, abi),
        Backend::Bpm => bpm(p, abi),
    }
}
