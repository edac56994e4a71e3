//! Findings: what a reviewer should look at, each with a stable id, a severity, the field and
//! line it concerns, and the fix.

use serde::{Deserialize, Serialize};

use crate::profile::{Access, Backend, Enforcement, Origin, Profile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub severity: Severity,
    pub field: String,
    pub line: u64,
    pub message: String,
    pub fix: String,
}

/// Every finding id, its title and its default severity: the SARIF rules and docs/review.md.
pub const RULES: &[(&str, &str, Severity)] = &[
    (
        "BBR001",
        "write access outside the artifact directory and the job's tmp dir",
        Severity::Medium,
    ),
    ("BBR002", "runs as root", Severity::High),
    ("BBR003", "keeps a capability", Severity::Medium),
    ("BBR004", "no timeout", Severity::Medium),
    ("BBR005", "no memory limit", Severity::Low),
    ("BBR006", "no process limit", Severity::Low),
    (
        "BBR007",
        "a secret may be passed through the environment",
        Severity::High,
    ),
    (
        "BBR008",
        "a secret may be passed on the command line",
        Severity::High,
    ),
    ("BBR009", "best-effort enforcement", Severity::Medium),
    ("BBR010", "a Landlock scope is turned off", Severity::Medium),
    (
        "BBR011",
        "a path is both writable and executable",
        Severity::High,
    ),
    (
        "BBR012",
        "a TCP port is allowed to every host",
        Severity::Info,
    ),
    (
        "BBR013",
        "bpm is a backend but does not restrict the network",
        Severity::Low,
    ),
    ("BBR014", "broad read access", Severity::Medium),
    (
        "BBR015",
        "cannot be enforced as declared on the reviewed ABI",
        Severity::High,
    ),
];

const DANGEROUS_CAPS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_NET_ADMIN",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_CHOWN",
    "CAP_FOWNER",
];

pub fn dangerous_capability(name: &str) -> bool {
    DANGEROUS_CAPS.contains(&name)
}

fn secret_like(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "PWD",
        "SECRET",
        "TOKEN",
        "CREDENTIAL",
        "PRIVATE_KEY",
        "API_KEY",
        "ACCESS_KEY",
    ]
    .iter()
    .any(|s| n.contains(s))
        && n != "PWD"
}

fn f(
    id: &str,
    severity: Severity,
    field: impl Into<String>,
    line: u64,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        id: id.into(),
        severity,
        field: field.into(),
        line,
        message: message.into(),
        fix: fix.into(),
    }
}

/// `command`: the action's command from actions.yml, when known.
pub fn findings(p: &Profile, abi: u8, command: Option<&[String]>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, g) in p.grants(Access::Write).enumerate() {
        let allowed = g.written.contains("${BBR_ARTIFACT_DIRECTORY}")
            || g.written.contains("${JOB_TMP_DIR}")
            || matches!(&g.origin, Origin::Set(s) if s == "devices");
        if !allowed {
            out.push(f(
                "BBR001",
                Severity::Medium,
                format!("filesystem.write[{i}]"),
                g.position.line,
                format!("may write `{}` ({}), outside the artifact directory and the job's tmp dir", g.written, g.path.display()),
                "write only ${BBR_ARTIFACT_DIRECTORY} and ${JOB_TMP_DIR}; if the action must write elsewhere (a restore writing the database's own directory), keep it to that one directory",
            ));
        }
    }
    let line_of = |key: &str| p.line_of(key);
    if p.user == "root" {
        // High even with no capability: ownership is not a capability.
        out.push(f("BBR002", Severity::High, "user", line_of("user"), "runs as uid 0: with no capability at all it still owns every root-owned file, and Landlock does not mediate chmod, chown, utime or setxattr, so it can set the setuid bit on a root-owned binary or chmod /etc/shadow; it also connects to root-only (0600) unix sockets and is exempt from RLIMIT_NPROC (`processes`)", "run as the job's user (vcap); for a privileged request (monit, a service manager) let the runner's root side do it (actions.yml `monit:`), never the action"));
    }
    for (i, c) in p.capabilities.iter().enumerate() {
        let name = c.to_string();
        let sev = if dangerous_capability(&name) {
            Severity::High
        } else {
            Severity::Medium
        };
        out.push(f(
            "BBR003",
            sev,
            format!("capabilities[{i}]"),
            line_of("capabilities"),
            format!("keeps {name}"),
            "drop it unless the action cannot work without it",
        ));
    }
    if p.timeout.is_none() {
        out.push(f(
            "BBR004",
            Severity::Medium,
            "timeout",
            1,
            "no timeout: BBR has none either, so a hung action blocks the backup forever",
            "set `timeout` to a bound the action never needs to exceed",
        ));
    }
    if p.limits.memory_bytes.is_none() {
        out.push(f(
            "BBR005",
            Severity::Low,
            "limits.memory",
            line_of("limits"),
            "no memory limit",
            "set `limits.memory`",
        ));
    }
    if p.limits.processes.is_none() {
        out.push(f(
            "BBR006",
            Severity::Low,
            "limits.processes",
            line_of("limits"),
            "no process limit",
            "set `limits.processes`",
        ));
    }
    for name in p.env_pass.iter().chain(p.env_set.keys()) {
        if secret_like(name) {
            out.push(f("BBR007", Severity::High, format!("environment.{name}"), line_of("environment"), format!("`{name}` looks like a secret passed through the environment, where /proc/PID/environ and crash reports can show it"), "let the action read the secret from a file in the job's config instead"));
        }
    }
    if let Some(cmd) = command {
        for (i, a) in cmd.iter().enumerate() {
            if secret_like(a.split('=').next().unwrap_or(a))
                && (a.contains('=') || cmd.get(i + 1).is_some())
            {
                out.push(f("BBR008", Severity::High, format!("command[{i}]"), 1, format!("`{a}` looks like a secret on the command line, visible to every process in /proc/PID/cmdline"), "pass secrets in a file"));
            }
        }
    }
    if p.enforcement == Enforcement::BestEffort {
        out.push(f("BBR009", Severity::Medium, "enforcement", line_of("enforcement"), "best_effort: what this kernel cannot enforce is skipped with a warning instead of refused", "use `enforcement: strict` (the default)"));
    }
    if crate::landlock_abi::LandlockFeature::Scopes.available(p.abi) {
        for (on, field) in [
            (p.scope_abstract_unix_socket, "scopes.abstract_unix_socket"),
            (p.scope_signal, "scopes.signal"),
        ] {
            if !on {
                out.push(f(
                    "BBR010",
                    Severity::Medium,
                    field,
                    line_of("scopes"),
                    format!("{field} is off"),
                    "turn the scope on unless the action must reach outside its sandbox that way",
                ));
            }
        }
    }
    for w in p.grants(Access::Write) {
        if let Some(x) = p
            .grants(Access::Execute)
            .find(|x| w.path.starts_with(&x.path) || x.path.starts_with(&w.path))
        {
            out.push(f("BBR011", Severity::High, "filesystem", w.position.line, format!("`{}` is writable and `{}` executable: the action can write a program and run it", w.path.display(), x.path.display()), "never grant execute on a writable path"));
        }
    }
    for port in &p.connect_any_host {
        out.push(f(
            "BBR012",
            Severity::Info,
            "network.connect_tcp",
            line_of("network"),
            format!("port {port} is allowed to every host, not only the database's, and only Landlock (ABI 4) can enforce it"),
            format!("write the endpoint as HOST:{port}: the runner then forwards that host and port alone, on every kernel"),
        ));
    }
    if p.backends.contains(&Backend::Bpm) && (!p.connect_tcp.is_empty() || !p.bind_tcp.is_empty()) {
        out.push(f("BBR013", Severity::Low, "backends", line_of("backends"), "bpm shares the host network: under bpm the TCP rules are not enforced (a strict profile then falls back to native)", "list only `native` if the TCP rules must hold, or accept bpm's network exposure"));
    }
    for g in p.grants.iter().filter(|g| g.access != Access::Write) {
        let broad = [
            "/",
            "/etc",
            "/var",
            "/var/vcap",
            "/var/vcap/jobs",
            "/home",
            "/root",
            "/var/vcap/store",
        ]
        .iter()
        .any(|b| g.path == std::path::Path::new(b));
        if broad {
            out.push(f(
                "BBR014",
                Severity::Medium,
                format!("filesystem.{}", g.access.name()),
                g.position.line,
                format!(
                    "`{}` grants {} over all of {}",
                    g.written,
                    g.access.name(),
                    g.path.display()
                ),
                "grant the few files or directories the action needs",
            ));
        }
    }
    if p.enforcement == Enforcement::Strict {
        let facts = crate::layers::Facts::native(p.abi.min(abi));
        let missing = crate::layers::unenforced(&crate::layers::decide(p, &facts));
        if !missing.is_empty() {
            out.push(f("BBR015", Severity::High, "abi", line_of("abi"), format!("on Landlock ABI {abi} the runner refuses this strict profile: {}", missing.join("; ")), "run on a kernel whose Landlock has what is missing, or drop the restriction from the profile (enforcement: best_effort) and accept what that drops"));
        }
    }
    out
}
