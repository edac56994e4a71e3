//! `bbr-runner run JOB ACTION [--root DIR] [--inside-bpm]`: what a rendered `bin/bbr/ACTION`
//! script execs. Loads the job's config; does nothing (and says so) when release-level backup
//! is off; loads the action's profile; picks the backend the profile prefers that can run here,
//! saying which and why; runs the action.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::say;
use crate::backend::bpm::{self, Delegated, INNER_REFUSAL};
use crate::backend::native;
use crate::cli::RunArgs;
use crate::exit;
use crate::job::{self, config_dir};
use crate::plan::{self, PlanError, Request};
use crate::profile::{self, Access, Backend, Profile, Vars};

struct Ctx {
    who: String,
    root: PathBuf,
    job: String,
}

fn runner_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(crate::backend::bpm::RUNNER_EXECUTABLE).with_file_name(""))
}

pub fn run(args: RunArgs) -> i32 {
    let cx = Ctx {
        who: format!("{} {}", args.job, args.action),
        root: args.root.clone(),
        job: args.job.clone(),
    };
    let config = match job::load_config(&args.root, &args.job) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("{}: {e}", cx.who));
            return exit::USAGE;
        }
    };
    if !config.release_level_backup {
        say(&format!(
            "{}: release_level_backup is false for job {}: this script is deactivated and does nothing",
            cx.who, args.job
        ));
        return 0;
    }
    let profiles_dir = config
        .profiles_dir
        .clone()
        .unwrap_or_else(|| runner_dir().join("../profiles").join(&args.job));
    let profiles_dir = std::fs::canonicalize(&profiles_dir).unwrap_or(profiles_dir);
    let actions = match job::load_actions(&profiles_dir, &args.job) {
        Ok(a) => a,
        Err(e) => {
            say(&format!("{}: {e}", cx.who));
            return exit::USAGE;
        }
    };
    let Some(action) = actions.actions.get(&args.action) else {
        let known: Vec<&str> = actions.actions.keys().map(String::as_str).collect();
        say(&format!(
            "{}: job {} has no action `{}`; it has: {}",
            cx.who,
            args.job,
            args.action,
            known.join(", ")
        ));
        return exit::USAGE;
    };
    let vars = match job_vars(&args.root, &args.job, &config) {
        Ok(v) => v,
        Err(m) => {
            say(&format!("{}: {m}", cx.who));
            return exit::USAGE;
        }
    };
    let profile_file = profiles_dir.join(&action.profile);
    let profile = match profile::load(&profile_file, &vars) {
        Ok(p) => p,
        Err(e) => {
            say(&e.to_string());
            return exit::USAGE;
        }
    };
    let mut command = Vec::new();
    for arg in &action.command {
        match vars.expand(arg) {
            Ok(a) => command.push(a),
            Err(e) => {
                say(&format!(
                    "{}: {}: command: {e}",
                    cx.who,
                    profiles_dir.join(job::ACTIONS_FILE).display()
                ));
                return exit::USAGE;
            }
        }
    }
    if args.inside_bpm {
        return run_native(&cx, &profile, &command, true);
    }
    // Two runs of the same action at once (BBR retried while an earlier run still holds the
    // database) are refused: the lock lives as long as this process.
    let _lock = match action_lock(&cx, &args.action) {
        Ok(l) => l,
        Err(m) => {
            say(&format!("{}: refused: {m}", cx.who));
            return exit::REFUSED;
        }
    };
    remove_stale_tmp(&cx, &args.action);
    let code = choose_and_run(&cx, &args, &config, &profile, &command);
    if code != 0 {
        remove_partial_artifacts(&cx);
    }
    remove_stale_tmp(&cx, &args.action);
    code
}

/// Private temp directories an action names after itself (`ACTION-*` in the job's tmp dir: TLS
/// keys, restore lists) are removed by the action when it ends; one killed outright leaves them.
/// Under this action's lock no other run of it is alive, so any left are stale: remove them,
/// before the run and after it. Another action's, and anything else, stays.
fn remove_stale_tmp(cx: &Ctx, action: &str) {
    let tmp = job_tmp_dir(cx);
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    let prefix = job::private_tmp_prefix(action);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name.starts_with(&prefix) {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => say(&format!(
                    "{}: removed {}, left by a run that was killed",
                    cx.who,
                    e.path().display()
                )),
                Err(err) => say(&format!(
                    "{}: cannot remove {}, left by a run that was killed: {err}",
                    cx.who,
                    e.path().display()
                )),
            }
        }
    }
}

fn choose_and_run(
    cx: &Ctx,
    args: &RunArgs,
    config: &job::JobConfig,
    profile: &Profile,
    command: &[String],
) -> i32 {
    let mut reasons = Vec::new();
    for backend in &profile.backends {
        match backend {
            Backend::Bpm => {
                if !config.bpm_enabled {
                    reasons
                        .push("bpm is not enabled for this job (bpm.enabled: false)".to_string());
                    continue;
                }
                let Some(bpm_path) = bpm::find_bpm(&cx.root) else {
                    reasons.push(format!(
                        "bpm is enabled but not installed (no {}/jobs/bpm/bin/bpm)",
                        cx.root.display()
                    ));
                    continue;
                };
                say(&format!("{}: backend bpm ({})", cx.who, bpm_path.display()));
                match bpm::delegate(&bpm_path, &cx.root, &args.job, &args.action, profile) {
                    Delegated::Ran(code) => return code,
                    Delegated::InnerRefused => {
                        reasons.push("the runner inside bpm's container could not enforce this strict profile (see above)".into());
                    }
                    Delegated::BpmFailed { code, message } => {
                        say(&format!("{}: {message}", cx.who));
                        return code;
                    }
                }
            }
            Backend::Native => {
                let why = if reasons.is_empty() {
                    "the profile's first choice".to_string()
                } else {
                    reasons.join("; ")
                };
                say(&format!("{}: backend native ({why})", cx.who));
                return run_native(cx, profile, command, false);
            }
        }
    }
    say(&format!(
        "{}: refused: no backend of the profile's list ({}) can run here: {}",
        cx.who,
        profile
            .backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", "),
        reasons.join("; ")
    ));
    exit::REFUSED
}

/// A job's profile variables: the allow-listed environment, those derived from its database
/// config, its own, and the built-in ones.
pub fn job_vars(root: &Path, job_name: &str, config: &job::JobConfig) -> Result<Vars, String> {
    let mut v = Vars::from_env_and_args(std::env::vars(), &[]).map_err(|e| e.to_string())?;
    if let Some(name) = &config.db_config {
        let c = crate::actions::acme_db::config::load(&config_dir(root, job_name).join(name))
            .map_err(|e| e.to_string())?;
        for (k, val) in job::db_vars(&c) {
            v.set(&k, &val);
        }
    }
    for (k, val) in &config.vars {
        v.set(k, val);
    }
    v.set("BOSH_ROOT", &root.display().to_string());
    v.set("JOB", job_name);
    v.set(
        "JOB_CONFIG_DIR",
        &config_dir(root, job_name).display().to_string(),
    );
    v.set(
        "JOB_TMP_DIR",
        &root
            .join("data")
            .join(job_name)
            .join("tmp")
            .display()
            .to_string(),
    );
    v.set(super::BBR_RUNNER_DIR, &runner_dir().display().to_string());
    Ok(v)
}

/// As bpm does for its volumes: the job's tmp dir exists and is the action user's, and so is
/// the artifact directory BBR created as root (the action writes it, not root).
fn prepare_dirs(cx: &Ctx, profile: &Profile, identity: &plan::Identity) -> Result<(), String> {
    let own = |path: &Path| -> Result<(), String> {
        std::os::unix::fs::chown(path, Some(identity.uid), Some(identity.gid))
            .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("cannot give {} to {}: {e}", path.display(), identity.user))
    };
    let tmp = cx.root.join("data").join(&cx.job).join("tmp");
    if profile.grants(Access::Write).any(|g| g.path == tmp) {
        std::fs::create_dir_all(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        own(&tmp)?;
    }
    if let Ok(art) = std::env::var("BBR_ARTIFACT_DIRECTORY") {
        let art = PathBuf::from(art.trim_end_matches('/'));
        if art.is_dir() && profile.grants(Access::Write).any(|g| g.path == art) {
            own(&art)?;
        }
    }
    Ok(())
}

fn job_tmp_dir(cx: &Ctx) -> PathBuf {
    cx.root.join("data").join(&cx.job).join("tmp")
}

fn run_native(cx: &Ctx, profile: &Profile, command: &[String], inside_bpm: bool) -> i32 {
    // The job's tmp dir exists before the plan checks the grants (bpm creates it too).
    let tmp = job_tmp_dir(cx);
    if !inside_bpm && profile.grants(Access::Write).any(|g| g.path == tmp) {
        if let Err(e) = std::fs::create_dir_all(&tmp) {
            say(&format!("{}: cannot create {}: {e}", cx.who, tmp.display()));
            return exit::SANDBOX_FAILED;
        }
    }
    let kernel = crate::kernel::probe_for_run();
    let caller_env: BTreeMap<String, String> = std::env::vars().collect();
    let plan = match plan::build(Request {
        profile,
        command,
        caller_env: &caller_env,
        kernel: &kernel,
    }) {
        Ok(p) => p,
        Err(e @ PlanError::Refused(_)) => {
            if inside_bpm {
                say(&format!("{}: {INNER_REFUSAL} {e}", cx.who));
            } else {
                say(&format!("{}: {}: {e}", cx.who, profile.source.display()));
            }
            return exit::REFUSED;
        }
        Err(e @ PlanError::NotFound(..)) => {
            say(&format!("{}: {e}", cx.who));
            return exit::NOT_FOUND;
        }
        Err(PlanError::Usage(m)) => {
            say(&format!("{}: {m}", cx.who));
            return exit::USAGE;
        }
    };
    if inside_bpm {
        bpm::say_applied_inside(&plan);
    } else if let Some(id) = &plan.identity {
        if let Err(m) = prepare_dirs(cx, profile, id) {
            say(&format!("{}: {m}", cx.who));
            return exit::SANDBOX_FAILED;
        }
    }
    let outcome = native::run(&plan, &mut |m| say(m));
    if let Some(message) = outcome.message(plan.kill_grace) {
        say(&format!("{}: {message}", cx.who));
    }
    outcome.exit_code()
}

/// `ROOT/sys/run/JOB/bbr-runner-ACTION.lock`, held (flock) until this process ends.
fn action_lock(cx: &Ctx, action: &str) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::io::{Read, Seek, Write};
    let dir = cx.root.join("sys/run").join(&cx.job);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("bbr-runner-{action}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.rewind();
            let _ = write!(lock, "{}", std::process::id());
            Ok(lock)
        }
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(format!(
                "another `bbr-runner run {} {action}` is running (pid {}; lock {}). BBR may have been retried while an earlier run still holds the database: wait for it to end, or stop it",
                cx.job,
                if holder.trim().is_empty() { "unknown" } else { holder.trim() },
                path.display()
            ))
        }
    }
}

/// After a failed or stopped action, nothing that could look like a finished artifact stays.
fn remove_partial_artifacts(cx: &Ctx) {
    if let Ok(dir) = std::env::var("BBR_ARTIFACT_DIRECTORY") {
        let dir = PathBuf::from(dir);
        if dir.is_dir() {
            crate::actions::artifact::remove_partials(&dir);
            say(&format!(
                "{}: removed any partial artifact from {}",
                cx.who,
                dir.display()
            ));
        }
    }
}
