//! bpm's own rules (what `bpm` itself rejects, `config/job_config.go`, and what fails later at
//! spec-build time, like a bad memory unit), then ours on top: no hooks ever (they run as root
//! on the host), no `unsafe` unless the profile asks for it, capability names the kernel knows,
//! unique process names, absolute executables. Each violation names its field.

use crate::model::{BpmConfig, Process, Volume};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// e.g. `processes[0].additional_volumes[1].path`
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What our rules allow beyond bpm's.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The profile declared `unsafe` options explicitly.
    pub allow_unsafe: bool,
    /// `unsafe.privileged` alone (no unrestricted volumes, not the host's pid namespace) is
    /// accepted: bbr-runner asks for it where its own sandbox must run inside the container.
    pub allow_privileged: bool,
    /// Capability names the kernel knows, with the `CAP_` prefix (e.g. from `caps::all()`).
    pub known_capabilities: Vec<String>,
}

pub const DEFAULT_BOSH_ROOT: &str = "/var/vcap";

/// Go's `filepath.Clean` equality: no trailing slash, no `//`, no `.` or `..` components.
pub fn is_canonical(path: &str) -> bool {
    if path.is_empty() || path == "/" {
        return path == "/";
    }
    !path.ends_with('/') && !path.contains("//") && !path.split('/').any(|c| c == "." || c == "..")
}

/// bpm's volume rules for job `job` under `root`, in bpm's order; the first failure only.
pub fn volume_problem(job: &str, root: &str, path: &str) -> Option<String> {
    if !is_canonical(path) {
        return Some(format!(
            "volume path must be canonical, got `{path}` (no trailing slash, `//`, `.` or `..`)"
        ));
    }
    let own = [format!("{root}/data/{job}"), format!("{root}/store/{job}")];
    if own.iter().any(|o| o == path) {
        return Some(format!(
            "`{path}` cannot conflict with the job's default data or store directory"
        ));
    }
    let inside = path
        .strip_prefix(root)
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1);
    if !inside {
        return Some(format!(
            "`{path}` must be strictly below the BOSH root {root}"
        ));
    }
    None
}

/// `bytefmt.ToBytes`: a positive number (float allowed) and a 1024-based unit; no bare number.
pub fn memory_problem(text: &str) -> Option<String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let units = [
        "B", "K", "KB", "KIB", "M", "MB", "MIB", "G", "GB", "GIB", "T", "TB", "TIB", "P", "PB",
        "PIB", "E", "EB", "EIB",
    ];
    let ok = num.parse::<f64>().is_ok_and(|n| n > 0.0)
        && units.contains(&unit.to_ascii_uppercase().as_str());
    (!ok).then(|| format!("`{text}` is not a byte quantity bpm accepts: a positive number with a unit like M, MB, MiB, G, GiB"))
}

/// A `-v` option bpm accepts.
pub fn volume_option_ok(option: &str) -> bool {
    matches!(
        option,
        "writable" | "mount_only" | "allow_executions" | "shared"
    )
}

fn volume(v: &Volume, field: &str, job: &str, root: &str, out: &mut Vec<Violation>) {
    if let Some(m) = volume_problem(job, root, &v.path) {
        out.push(Violation {
            field: format!("{field}.path"),
            message: m,
        });
    }
}

fn process(
    p: &Process,
    i: usize,
    job: &str,
    root: &str,
    policy: &Policy,
    out: &mut Vec<Violation>,
) {
    let f = |k: &str| format!("processes[{i}].{k}");
    if p.name.is_empty() {
        out.push(Violation {
            field: f("name"),
            message: "is required".into(),
        });
    }
    if p.executable.is_empty() {
        out.push(Violation {
            field: f("executable"),
            message: "is required".into(),
        });
    } else if !p.executable.starts_with('/') {
        out.push(Violation {
            field: f("executable"),
            message: format!("`{}` must be an absolute path", p.executable),
        });
    }
    for (j, v) in p.additional_volumes.iter().enumerate() {
        volume(v, &f(&format!("additional_volumes[{j}]")), job, root, out);
    }
    if let Some(sig) = &p.shutdown_signal {
        if !matches!(sig.as_str(), "" | "TERM" | "INT") {
            out.push(Violation {
                field: f("shutdown_signal"),
                message: format!("should be `TERM` or `INT` (or left out), got `{sig}`"),
            });
        }
    }
    if let Some(m) = p
        .limits
        .as_ref()
        .and_then(|l| l.memory.as_deref())
        .and_then(memory_problem)
    {
        out.push(Violation {
            field: f("limits.memory"),
            message: m,
        });
    }
    if p.limits
        .as_ref()
        .and_then(|l| l.processes)
        .is_some_and(|n| n < 1)
    {
        out.push(Violation {
            field: f("limits.processes"),
            message: "must be at least 1".into(),
        });
    }
    // Ours.
    if p.hooks.is_some() {
        out.push(Violation {
            field: f("hooks"),
            message: "hooks are refused: bpm runs hooks.pre_start as root on the host, outside the container".into(),
        });
    }
    let privileged_alone = p.unsafe_.as_ref().is_some_and(|u| {
        u.privileged && u.unrestricted_volumes.is_empty() && !u.host_pid_namespace
    });
    if p.unsafe_.is_some() && !policy.allow_unsafe && !(privileged_alone && policy.allow_privileged)
    {
        out.push(Violation {
            field: f("unsafe"),
            message: if policy.allow_privileged {
                "only `unsafe.privileged` is accepted: unrestricted volumes and the host's pid namespace are refused unless the profile declares them explicitly"
            } else {
                "unsafe options are refused unless the profile declares them explicitly"
            }
            .into(),
        });
    }
    for (j, c) in p.capabilities.iter().enumerate() {
        let full = format!("CAP_{c}");
        if c.starts_with("CAP_") {
            out.push(Violation {
                field: f(&format!("capabilities[{j}]")),
                message: format!("`{c}`: bpm wants names without the CAP_ prefix"),
            });
        } else if !policy.known_capabilities.is_empty()
            && !policy.known_capabilities.contains(&full)
        {
            out.push(Violation {
                field: f(&format!("capabilities[{j}]")),
                message: format!(
                    "`{c}` is not a capability this kernel knows (bpm would silently drop it)"
                ),
            });
        }
    }
}

/// Every violation of bpm's rules and ours, for job `job` under BOSH root `root`.
pub fn validate(config: &BpmConfig, job: &str, root: &str, policy: &Policy) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, p) in config.processes.iter().enumerate() {
        process(p, i, job, root, policy, &mut out);
        if config.processes[..i].iter().any(|q| q.name == p.name) {
            out.push(Violation {
                field: format!("processes[{i}].name"),
                message: format!(
                    "`{}` is listed twice (bpm would silently use the first)",
                    p.name
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn base() -> BpmConfig {
        BpmConfig {
            processes: vec![Process {
                name: "backup".into(),
                executable: "/var/vcap/packages/x/bin/x".into(),
                ..Process::default()
            }],
        }
    }

    fn one(mutate: impl FnOnce(&mut Process)) -> Vec<String> {
        let mut c = base();
        mutate(&mut c.processes[0]);
        let policy = Policy {
            allow_unsafe: false,
            allow_privileged: false,
            known_capabilities: vec!["CAP_NET_BIND_SERVICE".into(), "CAP_CHOWN".into()],
        };
        validate(&c, "bbr-acme-db", DEFAULT_BOSH_ROOT, &policy)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn privileged_alone_is_accepted_only_where_the_policy_says_and_nothing_else_of_unsafe() {
        let mut c = base();
        c.processes[0].unsafe_ = Some(Unsafe {
            privileged: true,
            ..Unsafe::default()
        });
        let mut policy = Policy {
            allow_privileged: true,
            ..Policy::default()
        };
        assert!(validate(&c, "bbr-acme-db", DEFAULT_BOSH_ROOT, &policy).is_empty());
        c.processes[0].unsafe_ = Some(Unsafe {
            privileged: true,
            host_pid_namespace: true,
            ..Unsafe::default()
        });
        let v = validate(&c, "bbr-acme-db", DEFAULT_BOSH_ROOT, &policy);
        assert!(
            v.len() == 1
                && v[0]
                    .message
                    .contains("only `unsafe.privileged` is accepted"),
            "{v:?}"
        );
        policy.allow_privileged = false;
        c.processes[0].unsafe_ = Some(Unsafe {
            privileged: true,
            ..Unsafe::default()
        });
        assert_eq!(
            validate(&c, "bbr-acme-db", DEFAULT_BOSH_ROOT, &policy).len(),
            1
        );
    }

    fn vol(p: &str) -> Volume {
        Volume {
            path: p.into(),
            ..Volume::default()
        }
    }

    #[test]
    fn a_clean_process_passes() {
        assert_eq!(one(|_| {}), Vec::<String>::new());
        assert!(one(|p| p.additional_volumes = vec![
            vol("/var/vcap/data/bbr-acme-db/sub"),
            vol("/var/vcap/jobs/other/config")
        ])
        .is_empty());
    }

    #[test]
    fn each_rule_rejects_its_bad_case_naming_the_field() {
        type Mutation = Box<dyn FnOnce(&mut Process)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|p| p.name.clear()),
                "processes[0].name: is required",
            ),
            (
                Box::new(|p| p.executable.clear()),
                "processes[0].executable: is required",
            ),
            (
                Box::new(|p| p.executable = "bin/x".into()),
                "processes[0].executable: `bin/x` must be an absolute path",
            ),
            (
                Box::new(|p| p.additional_volumes = vec![vol("/var/vcap/store/x/")]),
                "processes[0].additional_volumes[0].path: volume path must be canonical",
            ),
            (
                Box::new(|p| p.additional_volumes = vec![vol("/var/vcap/../etc")]),
                "processes[0].additional_volumes[0].path: volume path must be canonical",
            ),
            (
                Box::new(|p| p.additional_volumes = vec![vol("/var/vcap/data/bbr-acme-db")]),
                "cannot conflict with the job's default data or store",
            ),
            (
                Box::new(|p| p.additional_volumes = vec![vol("/var/vcap/store/bbr-acme-db")]),
                "cannot conflict with the job's default data or store",
            ),
            (
                Box::new(|p| p.additional_volumes = vec![vol("/var/vcap")]),
                "must be strictly below the BOSH root",
            ),
            (
                Box::new(|p| p.additional_volumes = vec![vol("/etc")]),
                "processes[0].additional_volumes[0].path: `/etc` must be strictly below",
            ),
            (
                Box::new(|p| p.shutdown_signal = Some("KILL".into())),
                "processes[0].shutdown_signal: should be `TERM` or `INT`",
            ),
            (
                Box::new(|p| {
                    p.limits = Some(Limits {
                        memory: Some("512".into()),
                        ..Limits::default()
                    })
                }),
                "processes[0].limits.memory: `512` is not a byte quantity",
            ),
            (
                Box::new(|p| {
                    p.limits = Some(Limits {
                        memory: Some("1 parsec".into()),
                        ..Limits::default()
                    })
                }),
                "processes[0].limits.memory:",
            ),
            (
                Box::new(|p| {
                    p.limits = Some(Limits {
                        processes: Some(0),
                        ..Limits::default()
                    })
                }),
                "processes[0].limits.processes:",
            ),
            (
                Box::new(|p| p.hooks = Some(Hooks::default())),
                "processes[0].hooks: hooks are refused",
            ),
            (
                Box::new(|p| p.unsafe_ = Some(Unsafe::default())),
                "processes[0].unsafe: unsafe options are refused",
            ),
            (
                Box::new(|p| p.capabilities = vec!["CAP_CHOWN".into()]),
                "processes[0].capabilities[0]: `CAP_CHOWN`: bpm wants names without",
            ),
            (
                Box::new(|p| p.capabilities = vec!["FLY".into()]),
                "processes[0].capabilities[0]: `FLY` is not a capability",
            ),
        ];
        for (mutate, want) in cases {
            let got = one(mutate);
            assert!(
                got.len() == 1 && got[0].contains(want),
                "want `{want}`, got {got:?}"
            );
        }
    }

    #[test]
    fn duplicate_process_names_and_memory_units() {
        let mut c = base();
        c.processes.push(c.processes[0].clone());
        let v = validate(&c, "j", DEFAULT_BOSH_ROOT, &Policy::default());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "processes[1].name");
        for ok in ["1G", "512MiB", "1.5gb", "100k"] {
            assert_eq!(memory_problem(ok), None, "{ok}");
        }
        assert!(
            volume_option_ok("writable") && volume_option_ok("shared") && !volume_option_ok("rw")
        );
    }
}
