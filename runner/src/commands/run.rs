//! `bbr-runner run JOB ACTION [--root DIR] [--inside-bpm]`: what a rendered `bin/bbr/ACTION`
//! script execs. Loads the job's config; does nothing (and says so) when release-level backup
//! is off; loads the action's profile; picks the backend the profile prefers that can run here,
//! saying which and why; runs the action.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{say, CommandError, CommandResult};
use crate::backend::native::run_native;
use crate::backend::{self, bpm};
use crate::broker::{Broker, MonitGrant};
use crate::cli::RunArgs;
use crate::invocation::Invocation;
use crate::job::{self, config_dir};
use crate::profile::{self, Vars};
use crate::root_side;

pub fn run(args: RunArgs) -> CommandResult {
    let usage = |cx: &str, m: &dyn std::fmt::Display| CommandError::Usage(format!("{cx}: {m}"));
    let who = format!("{} {}", args.job, args.action);
    let config = job::load_config(&args.root, &args.job).map_err(|e| usage(&who, &e))?;
    if let Some(cap) = config.landlock_abi_max {
        if cap > 10 {
            return Err(usage(
                &who,
                &format!(
                    "landlock_abi_max: {cap} in {}: expected a Landlock ABI from 0 to 10",
                    job::config_dir(&args.root, &args.job)
                        .join(job::JOB_CONFIG_FILE)
                        .display()
                ),
            ));
        }
        let env_cap = crate::kernel::abi_cap().ok().flatten();
        let cap = env_cap.map_or(cap, |e| e.min(cap));
        // Read by every later probe, and by the inner runner under bpm. The runner is
        // single-threaded here.
        std::env::set_var(crate::kernel::ABI_MAX_VAR, cap.to_string());
    }
    let profiles_dir = config.profiles_dir.clone().unwrap_or_else(|| {
        crate::invocation::runner_dir()
            .join("../profiles")
            .join(&args.job)
    });
    let profiles_dir = std::fs::canonicalize(&profiles_dir).unwrap_or(profiles_dir);
    let actions = job::load_actions(&profiles_dir, &args.job).map_err(|e| usage(&who, &e))?;
    let Some(action) = actions.actions.get(&args.action) else {
        let known: Vec<&str> = actions.actions.keys().map(String::as_str).collect();
        return Err(usage(
            &who,
            &format!(
                "job {} has no action `{}`; it has: {}",
                args.job,
                args.action,
                known.join(", ")
            ),
        ));
    };
    if !config.release_level_backup && !action.service {
        say(&format!(
            "{who}: release_level_backup is false for job {}: this script is deactivated and does nothing",
            args.job
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let cx = Invocation::new(&args.root, &args.job, &args.action, args.inside_bpm)
        .map_err(|e| usage(&who, &e))?;
    let vars = job_vars(&cx, &config).map_err(|e| usage(&who, &e))?;
    let profile_file = profiles_dir.join(&action.profile);
    let profile =
        profile::load(&profile_file, &vars).map_err(|e| CommandError::Usage(e.to_string()))?;
    let actions_file = profiles_dir.join(job::ACTIONS_FILE);
    let command = action
        .command
        .iter()
        .map(|arg| vars.expand(arg))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(&who, &format!("{}: command: {e}", actions_file.display())))?;
    if cx.inside_bpm {
        // A service is started by `bpm start`, with no runner outside to hold a lifeline to.
        if nix::unistd::geteuid().is_root() && !action.service {
            if let Err(why) = bpm::watch_outer_runner(&cx.root, &cx.job, &cx.action) {
                say(&format!(
                    "{who}: inside bpm: no lifeline to the runner outside ({why}): a SIGKILL of it leaves this run going"
                ));
            }
        }
        return run_native(&cx, &profile, &command, None)
            .map(crate::exit::status)
            .map_err(CommandError::from);
    }
    let broker = match &action.monit {
        None => None,
        Some(m) => Some(monit_broker(&vars, m).map_err(|message| {
            usage(
                &who,
                &format!(
                    "{}: actions.{}.monit: {message}",
                    actions_file.display(),
                    cx.action
                ),
            )
        })?),
    };
    // Two runs of the same action at once (BBR retried while an earlier run still holds the
    // database) are refused: the lock lives as long as this process.
    let _lock =
        action_lock(&cx).map_err(|m| CommandError::Refused(format!("{who}: refused: {m}")))?;
    remove_stale_tmp(&cx);
    let (result, ran) = backend::choose_and_run(&backend::Run {
        cx: &cx,
        config: &config,
        profile: &profile,
        command: &command,
        broker: broker.as_ref(),
    });
    // Only this run's own partials: when nothing ran (bpm refused because a container of this
    // action is still running), a partial there is that container's, still being written.
    if ran == backend::Ran::Maybe && !matches!(result, Ok(0)) {
        remove_partial_artifacts(&cx);
    }
    remove_stale_tmp(&cx);
    result.map(crate::exit::status).map_err(CommandError::from)
}

/// Private temp directories an action names after itself (`ACTION-*` in the job's tmp dir: TLS
/// keys, restore lists) are removed by the action when it ends; one killed outright leaves them.
/// Under this action's lock no other run of it is alive, so any left are stale: remove them,
/// before the run and after it. Another action's, and anything else, stays.
fn remove_stale_tmp(cx: &Invocation) {
    let tmp = cx.job_tmp_dir();
    // data/JOB is the job user's (bpm chowns it): opened name by name, never through a link.
    let dir = match root_side::open_below(&cx.root.join("data"), &[&cx.job, "tmp"]) {
        Ok(d) => d,
        Err(_) if std::fs::symlink_metadata(&tmp).is_err() => return,
        Err(e) => {
            say(&format!("{}: not sweeping the job's tmp dir: {e}", cx.who));
            return;
        }
    };
    for name in root_side::subdirs_with_prefix(&dir, &job::private_tmp_prefix(&cx.action)) {
        let shown = tmp.join(&name);
        match root_side::remove_tree_at(&dir, &name) {
            Ok(()) => say(&format!(
                "{}: removed {}, left by a run that was killed",
                cx.who,
                shown.display()
            )),
            Err(err) => say(&format!(
                "{}: cannot remove {}, left by a run that was killed: {err}",
                cx.who,
                shown.display()
            )),
        }
    }
}

/// Why a job's profile variables cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum JobVarsError {
    #[error(transparent)]
    Environment(#[from] crate::profile::vars::VarError),
    #[error(transparent)]
    DbConfig(#[from] crate::actions::acme_db::ConfigError),
}

/// The profile variables of the invocation's job: the allow-listed environment, those derived
/// from its database config, its own, and the built-in ones.
fn job_vars(cx: &Invocation, config: &job::JobConfig) -> Result<Vars, JobVarsError> {
    vars_of_job(&cx.root, &cx.job, config, &cx.env, &cx.runner_dir)
}

/// A job's profile variables given the caller's environment and the runner's directory (what
/// `run` gives its actions; `demo` shows them).
pub fn vars_of_job(
    root: &Path,
    job_name: &str,
    config: &job::JobConfig,
    env: &BTreeMap<String, String>,
    runner_dir: &Path,
) -> Result<Vars, JobVarsError> {
    let mut v = Vars::from_env_and_args(env.clone(), &[])?;
    if let Some(name) = &config.db_config {
        let c = crate::actions::acme_db::config::load(&config_dir(root, job_name).join(name))?;
        for (k, val) in c.profile_vars() {
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
        &job::tmp_dir(root, job_name).display().to_string(),
    );
    v.set(super::BBR_RUNNER_DIR, &runner_dir.display().to_string());
    Ok(v)
}

/// The root side's monit broker for an action that declares `monit:` (see `broker`).
fn monit_broker(vars: &Vars, m: &job::MonitDecl) -> Result<Broker, String> {
    let control_file = vars
        .expand(&m.control_file)
        .map_err(|e| format!("control_file: {e}"))?;
    let service = vars
        .expand(&m.service)
        .map_err(|e| format!("service: {e}"))?;
    Broker::new(MonitGrant {
        control_file: PathBuf::from(control_file),
        service,
    })
    .map_err(|e| e.to_string())
}

/// `ROOT/sys/run/bbr-runner/JOB.ACTION.lock`, held (flock) until this process ends. Root's
/// own directory (0700, refused unless root alone can write it), not `sys/run/JOB`, which bpm
/// gives to vcap; the lock file is opened without following a link and must be root's, with
/// one name.
fn action_lock(cx: &Invocation) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let action = &cx.action;
    use std::io::{Read, Seek, Write};
    let run = cx.root.join("sys/run");
    std::fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
    let shown = cx.root.join(crate::backend::bpm::LOCK_DIR);
    let dir = root_side::open_trusted(&run)
        .and_then(|base| root_side::ensure_dir_at(&base, "bbr-runner", 0o700, &shown))
        .map_err(|e| e.to_string())?;
    root_side::require_root_only(&dir, &shown).map_err(|e| e.to_string())?;
    let path = crate::backend::bpm::lock_path(&cx.root, &cx.job, action);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fd = nix::fcntl::openat(
        &dir,
        name.as_str(),
        nix::fcntl::OFlag::O_RDWR
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| format!("cannot open {}: {}", path.display(), e.desc()))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| format!("{}: {e}", path.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 || st.st_uid != 0 {
        return Err(format!(
            "{} is not root's own regular file with one name: refused; remove it",
            path.display()
        ));
    }
    let file = std::fs::File::from(fd);
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
/// Removed through the opened directory: a link planted there is removed, never followed.
fn remove_partial_artifacts(cx: &Invocation) {
    if let Some(art) = &cx.artifact {
        crate::actions::artifact::remove_partials(&root_side::fd_path(&art.fd));
        say(&format!(
            "{}: removed any partial artifact from {}",
            cx.who,
            art.path.display()
        ));
    }
}
