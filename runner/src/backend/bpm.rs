//! The bpm backend. `render` derives a job's bpm.yml from its profiles: one process per action,
//! whose executable is the runner itself, entering the action with its profile
//! (`run JOB ACTION --inside-bpm`). `delegate` runs `bpm run` with only what the action needs
//! and reads bpm's outcome, pitfalls included. Inside the container the runner applies what it
//! can of the profile (what bpm lacks), and refuses under `strict` what it cannot.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use bbr_bpm::run::{interpret, pid_argv, run_argv, Outcome, RunRequest, VolumeArg};
use bbr_bpm::{BpmConfig, Limits, Process};

use crate::job::{Actions, DEFAULT_ROOT};
use crate::profile::{self, Access, Profile, Vars};

/// Where the release installs the runner on a VM.
pub const RUNNER_EXECUTABLE: &str = "/var/vcap/packages/bbr-runner/bin/bbr-runner";
/// The flag by which the runner knows it runs inside bpm's container.
pub const INSIDE_BPM: &str = "--inside-bpm";

fn bpm_memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}G", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else {
        format!("{}K", bytes.div_ceil(1 << 10))
    }
}

/// The bpm process for one action, from its profile.
pub fn process(job: &str, action: &str, p: &Profile) -> Process {
    let l = &p.limits;
    let limits = Limits {
        memory: l.memory_bytes.map(bpm_memory),
        processes: l.processes.and_then(|n| i64::try_from(n).ok()),
        open_files: l.open_files,
        core_file_size: l.core_file_size_bytes,
    };
    Process {
        name: action.to_string(),
        executable: RUNNER_EXECUTABLE.to_string(),
        args: vec!["run".into(), job.into(), action.into(), INSIDE_BPM.into()],
        capabilities: p
            .capabilities
            .iter()
            .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
            .collect(),
        limits: (limits != Limits::default()).then_some(limits),
        ..Process::default()
    }
}

/// The job's bpm.yml, derived from `profiles_dir/actions.yml` and its profiles.
pub fn render(job: &str, actions: &Actions, profiles_dir: &Path) -> Result<BpmConfig, String> {
    let vars = Vars::lenient();
    let mut processes = Vec::new();
    for (name, action) in &actions.actions {
        let file = profiles_dir.join(&action.profile);
        let p = profile::load(&file, &vars).map_err(|e| e.to_string())?;
        // An action whose profile does not list bpm never runs there: no process for it.
        if p.backends.contains(&crate::profile::Backend::Bpm) {
            processes.push(process(job, name, &p));
        }
    }
    Ok(BpmConfig { processes })
}

/// The kernel's capability names, for bpm's capability check.
pub fn known_capabilities() -> Vec<String> {
    caps::runtime::thread_all_supported()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delegated {
    /// The action ran under bpm and ended with this status.
    Ran(i32),
    /// The runner inside bpm refused the profile (nothing ran): try the next backend.
    InnerRefused,
    /// bpm cannot take this action as asked (a volume bpm refuses, such as the job's own store):
    /// nothing ran; try the next backend, saying why.
    Unsuitable(String),
    /// bpm itself failed, or would have done nothing: the message says why.
    BpmFailed { code: i32, message: String },
}

/// Volumes the action needs beyond bpm's defaults: the artifact directory (writable when the
/// profile writes it, and bpm chowns it to vcap, as the action needs; else read-only and left
/// alone), and every granted path under the BOSH root that
/// bpm does not mount by itself (`mount_only`: bpm must not chown another job's files).
pub fn volumes(root: &Path, job: &str, p: &Profile, artifact_dir: Option<&str>) -> Vec<VolumeArg> {
    let defaults = [
        root.join("jobs").join(job),
        root.join("packages"),
        root.join("data/packages"),
        root.join("data").join(job).join("tmp"),
        root.join("sys/log").join(job),
    ];
    let artifact = artifact_dir.map(|a| a.trim_end_matches('/').to_string());
    let mut out: Vec<VolumeArg> = Vec::new();
    if let Some(a) = &artifact {
        let written = p
            .grants(Access::Write)
            .any(|g| g.path == Path::new(a.as_str()));
        out.push(VolumeArg {
            path: a.clone(),
            // Read only (a restore): bpm mounts it read-only and, with `mount_only`, neither
            // chmods nor chowns BBR's directory.
            options: vec![if written { "writable" } else { "mount_only" }.into()],
        });
    }
    let mut add = |path: &Path, writable: bool| {
        let s = path.display().to_string();
        if !path.starts_with(root)
            || defaults.iter().any(|d| path.starts_with(d))
            || artifact.as_deref() == Some(s.as_str())
        {
            return;
        }
        if let Some(existing) = out.iter_mut().find(|v| v.path == s) {
            if writable && !existing.options.iter().any(|o| o == "writable") {
                existing.options.insert(0, "writable".into());
            }
            return;
        }
        let mut options = vec!["mount_only".to_string()];
        if writable {
            options.insert(0, "writable".into());
        }
        out.push(VolumeArg { path: s, options });
    };
    for g in &p.grants {
        add(&g.path, g.access == Access::Write);
    }
    for s in &p.sockets {
        if let Some(dir) = s.parent() {
            add(dir, false);
        }
    }
    out
}

/// Only BBR's own variables cross into the container; secrets stay in files bpm mounts read-only.
pub fn bbr_env() -> Vec<(String, String)> {
    crate::profile::vars::ENV_ALLOW_LIST
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// bpm is called with a minimal environment: nothing of the caller's (secrets included) reaches
/// it; what the action needs goes by `-e`.
/// bpm's own variable for a BOSH root other than /var/vcap (its test harness uses it too).
fn bpm_command(argv: &[String], root: &Path) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null());
    if root != Path::new(DEFAULT_ROOT) {
        c.env("BPM_BOSH_ROOT", root);
    }
    c
}

/// Runs the action through `bpm run`, forwarding its output.
pub fn delegate(bpm: &Path, root: &Path, job: &str, action: &str, p: &Profile) -> Delegated {
    let bpm_s = bpm.display().to_string();
    let env = bbr_env();
    let artifact = env
        .iter()
        .find(|(k, _)| k == "BBR_ARTIFACT_DIRECTORY")
        .map(|(_, v)| v.clone());
    let req = RunRequest {
        bpm: bpm_s.clone(),
        job: job.into(),
        process: action.into(),
        volumes: volumes(root, job, p, artifact.as_deref()),
        env,
        bosh_root: root.display().to_string(),
    };
    // bpm's own rules first: what it would refuse, it cannot run.
    let argv = match run_argv(&req) {
        Ok(a) => a,
        Err(v) => return Delegated::Unsuitable(format!("bpm cannot run this action: {v}")),
    };
    // A container of the same name already running would make `bpm run` a silent no-op.
    let pid = pid_argv(&bpm_s, job, action);
    if let Ok(out) = bpm_command(&pid, root).output() {
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && text.parse::<u32>().is_ok() {
            return Delegated::BpmFailed {
                code: crate::exit::REFUSED,
                message: format!(
                    "a bpm container for {job}/{action} is already running (pid {text}); `bpm run` would silently do nothing. A previous run may still hold the database: wait for it, or stop it with `bpm stop {job} -p {action}`"
                ),
            };
        }
    }
    let mut child = match bpm_command(&argv, root).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => {
            return Delegated::BpmFailed {
                code: crate::exit::INTERNAL,
                message: format!("cannot run {}: {e}", argv[0]),
            }
        }
    };
    // Tee bpm's stderr: the operator sees it, and we read it for bpm's own errors.
    let mut captured = Vec::new();
    if let Some(mut err) = child.stderr.take() {
        let mut buf = [0u8; 8192];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stderr().write_all(&buf[..n]);
            captured.extend_from_slice(&buf[..n]);
        }
    }
    let status = match child.wait() {
        Ok(s) => s.code().unwrap_or(crate::exit::INTERNAL),
        Err(e) => {
            return Delegated::BpmFailed {
                code: crate::exit::INTERNAL,
                message: format!("waiting for bpm: {e}"),
            }
        }
    };
    let stderr = String::from_utf8_lossy(&captured);
    match interpret(status, &stderr) {
        Outcome::Exited(code) if code == crate::exit::REFUSED && stderr.contains(INNER_REFUSAL) => {
            Delegated::InnerRefused
        }
        Outcome::Exited(code) => Delegated::Ran(code),
        // Nothing ran: one code for it, whatever bpm exited with (1 from runc would read as
        // the action's own failure).
        Outcome::BpmFailed { status, message } => Delegated::BpmFailed {
            code: crate::exit::SANDBOX_FAILED,
            message: format!(
                "bpm failed before the action ran (bpm exit status {status}): {message}"
            ),
        },
    }
}

/// What the runner inside bpm prints when it refuses; the outer runner recognises it.
pub const INNER_REFUSAL: &str = "inside bpm, refused:";

pub fn say_applied_inside(plan: &crate::plan::Plan) {
    let mut applied = Vec::new();
    if let Some(ll) = &plan.landlock {
        applied.push(format!(
            "Landlock ABI {} (filesystem grants, TCP ports {:?} connect / {:?} bind, scopes)",
            ll.abi, ll.connect_tcp, ll.bind_tcp
        ));
    }
    if !plan.rlimits.is_empty() {
        applied.push("rlimits".into());
    }
    applied.push("capabilities emptied".into());
    applied.push("no_new_privs".into());
    applied.push("environment cleared".into());
    applied.push("descriptors closed".into());
    crate::out::say(&format!(
        "inside bpm: applying {}; bpm provides the mount view, the vcap identity and its seccomp filter",
        applied.join(", ")
    ));
}
