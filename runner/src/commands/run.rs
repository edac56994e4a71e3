//! `bbr-runner run JOB ACTION [--root DIR] [--inside-bpm]`: what a rendered `bin/bbr/ACTION`
//! script execs. Loads the job's config; does nothing (and says so) when release-level backup
//! is off; loads the action's profile; picks the backend the profile prefers that can run here,
//! saying which and why; runs the action.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::say;
use crate::backend::bpm::{self, Delegated, INNER_REFUSAL};
use crate::backend::native;
use crate::broker::{Broker, MonitGrant};
use crate::cli::RunArgs;
use crate::exit;
use crate::job::{self, config_dir};
use crate::plan::{self, PlanError, Request};
use crate::profile::{self, Access, Backend, Profile, Vars};
use crate::root_side;

struct Ctx {
    who: String,
    root: PathBuf,
    job: String,
    /// BBR's artifact directory, checked and opened once (`None`: BBR gave none, or it does
    /// not exist yet and the action will say so).
    artifact: Option<ArtifactDir>,
}

/// BBR's artifact directory: `ROOT/store/bbr-backup/NAME`, which BBR creates as root. Opened
/// without following a link, so the chown and the cleanup reach that directory and nothing else.
struct ArtifactDir {
    path: PathBuf,
    fd: std::os::fd::OwnedFd,
}

/// Checks `BBR_ARTIFACT_DIRECTORY` against where BBR puts it, and opens it.
fn artifact_dir(root: &Path) -> Result<Option<ArtifactDir>, String> {
    let Some(value) = std::env::var_os("BBR_ARTIFACT_DIRECTORY") else {
        return Ok(None);
    };
    let value = PathBuf::from(value);
    let path = PathBuf::from(value.to_string_lossy().trim_end_matches('/'));
    let parent = root.join("store/bbr-backup");
    let name = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) if p == parent => n.to_string_lossy().into_owned(),
        _ => {
            return Err(format!(
                "BBR_ARTIFACT_DIRECTORY={}: refused: BBR's artifact directory is {}/NAME/ (a directory BBR creates as root); the runner gives it to the action's user and removes partial artifacts from it, so it accepts no other place",
                value.display(),
                parent.display()
            ))
        }
    };
    let base = match root_side::open_trusted(&parent) {
        Ok(fd) => fd,
        Err(_) if !parent.exists() => return Ok(None),
        Err(e) => return Err(format!("BBR_ARTIFACT_DIRECTORY: {e}")),
    };
    root_side::require_root_only(&base, &parent)
        .map_err(|e| format!("BBR_ARTIFACT_DIRECTORY: {e}"))?;
    match root_side::open_dir_at(&base, &name, &path) {
        Ok(fd) => Ok(Some(ArtifactDir { path, fd })),
        Err(_) if std::fs::symlink_metadata(&path).is_err() => Ok(None),
        Err(e) => Err(format!("BBR_ARTIFACT_DIRECTORY: {e}")),
    }
}

fn runner_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(crate::backend::bpm::RUNNER_EXECUTABLE).with_file_name(""))
}

pub fn run(args: RunArgs) -> i32 {
    let mut cx = Ctx {
        who: format!("{} {}", args.job, args.action),
        root: args.root.clone(),
        job: args.job.clone(),
        artifact: None,
    };
    let config = match job::load_config(&args.root, &args.job) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("{}: {e}", cx.who));
            return exit::USAGE;
        }
    };
    if let Some(cap) = config.landlock_abi_max {
        if cap > 10 {
            say(&format!(
                "{}: landlock_abi_max: {cap} in {}: expected a Landlock ABI from 0 to 10",
                cx.who,
                job::config_dir(&args.root, &args.job)
                    .join(job::JOB_CONFIG_FILE)
                    .display()
            ));
            return exit::USAGE;
        }
        let env_cap = crate::kernel::abi_cap().ok().flatten();
        let cap = env_cap.map_or(cap, |e| e.min(cap));
        // Read by every later probe, and by the inner runner under bpm. The runner is
        // single-threaded here.
        std::env::set_var(crate::kernel::ABI_MAX_VAR, cap.to_string());
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
    if !config.release_level_backup && !action.service {
        say(&format!(
            "{}: release_level_backup is false for job {}: this script is deactivated and does nothing",
            cx.who, args.job
        ));
        return 0;
    }
    if !args.inside_bpm {
        cx.artifact = match artifact_dir(&cx.root) {
            Ok(a) => a,
            Err(m) => {
                say(&format!("{}: {m}", cx.who));
                return exit::USAGE;
            }
        };
    }
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
        // A service is started by `bpm start`, with no runner outside to hold a lifeline to.
        if nix::unistd::geteuid().is_root() && !action.service {
            if let Err(why) =
                crate::backend::bpm::watch_outer_runner(&cx.root, &args.job, &args.action)
            {
                say(&format!(
                    "{}: inside bpm: no lifeline to the runner outside ({why}): a SIGKILL of it leaves this run going",
                    cx.who
                ));
            }
        }
        return run_native(&cx, &profile, &command, true, None);
    }
    let broker = match &action.monit {
        None => None,
        Some(m) => match monit_broker(&vars, m) {
            Ok(b) => Some(b),
            Err(message) => {
                say(&format!(
                    "{}: {}: actions.{}.monit: {message}",
                    cx.who,
                    profiles_dir.join(job::ACTIONS_FILE).display(),
                    args.action
                ));
                return exit::USAGE;
            }
        },
    };
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
    let (code, ran) = choose_and_run(&cx, &args, &config, &profile, &command, broker.as_ref());
    // Only this run's own partials: when nothing ran (bpm refused because a container of this
    // action is still running), a partial there is that container's, still being written.
    if code != 0 && ran == Ran::Maybe {
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
    // data/JOB is the job user's (bpm chowns it): opened name by name, never through a link.
    let dir = match root_side::open_below(&cx.root.join("data"), &[&cx.job, "tmp"]) {
        Ok(d) => d,
        Err(_) if std::fs::symlink_metadata(&tmp).is_err() => return,
        Err(e) => {
            say(&format!("{}: not sweeping the job's tmp dir: {e}", cx.who));
            return;
        }
    };
    for name in root_side::subdirs_with_prefix(&dir, &job::private_tmp_prefix(action)) {
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

/// Whether the action may have run (and written partial artifacts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Maybe,
    No,
}

fn choose_and_run(
    cx: &Ctx,
    args: &RunArgs,
    config: &job::JobConfig,
    profile: &Profile,
    command: &[String],
    broker: Option<&Broker>,
) -> (i32, Ran) {
    let mut reasons = Vec::new();
    for backend in &profile.backends {
        match backend {
            Backend::Bpm => {
                if broker.is_some() {
                    reasons.push("the action asks monit through the runner's root side, which only the native backend keeps outside the sandbox".to_string());
                    continue;
                }
                if !config.bpm_enabled {
                    reasons
                        .push("bpm is not enabled for this job (bpm.enabled: false)".to_string());
                    continue;
                }
                let Some(bpm_path) = crate::kernel::find_bpm(&cx.root) else {
                    let places: Vec<String> = crate::kernel::bpm_locations(&cx.root)
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect();
                    reasons.push(format!(
                        "bpm is enabled but not installed (neither {})",
                        places.join(" nor ")
                    ));
                    continue;
                };
                say(&format!("{}: backend bpm ({})", cx.who, bpm_path.display()));
                // bpm chowns and chmods a writable volume (the artifact directory) for vcap; a
                // run that falls back from bpm gets it back as BBR made it.
                let before = cx
                    .artifact
                    .as_ref()
                    .and_then(|a| nix::sys::stat::fstat(&a.fd).ok());
                let undo_bpm = || {
                    if let (Some(a), Some(st)) = (&cx.artifact, before) {
                        if let Err(e) = root_side::give(
                            &a.fd,
                            st.st_uid,
                            st.st_gid,
                            st.st_mode & 0o7777,
                            &a.path,
                        ) {
                            say(&format!("{}: {e}", cx.who));
                        }
                    }
                };
                match bpm::delegate(&bpm_path, &cx.root, &args.job, &args.action, profile) {
                    Delegated::Ran(code) => return (code, Ran::Maybe),
                    Delegated::InnerRefused => {
                        undo_bpm();
                        reasons.push(
                            "the runner inside bpm's container refused this profile (see above)"
                                .into(),
                        );
                    }
                    Delegated::Unsuitable(why) => reasons.push(why),
                    Delegated::NotStarted(why) => {
                        undo_bpm();
                        // A failure, not a refusal, when no backend comes after bpm.
                        if profile.backends.last() == Some(&Backend::Bpm) {
                            say(&format!("{}: {why}; nothing ran", cx.who));
                            return (exit::SANDBOX_FAILED, Ran::No);
                        }
                        reasons.push(why);
                    }
                    Delegated::Interrupted { signal } => {
                        say(&format!(
                            "{}: the runner received {signal} and stopped the action (passed on to bpm's container; bpm, runc and the container are gone)",
                            cx.who
                        ));
                        return (128 + signal as i32, Ran::Maybe);
                    }
                    Delegated::BpmFailed { code, message } => {
                        say(&format!("{}: {message}", cx.who));
                        return (code, Ran::No);
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
                return (run_native(cx, profile, command, false, broker), Ran::Maybe);
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
    (exit::REFUSED, Ran::No)
}

/// A job's profile variables: the allow-listed environment, those derived from its database
/// config, its own, and the built-in ones.
pub fn job_vars(root: &Path, job_name: &str, config: &job::JobConfig) -> Result<Vars, String> {
    let mut v = Vars::from_env_and_args(std::env::vars(), &[]).map_err(|e| e.to_string())?;
    if let Some(name) = &config.db_config {
        let c = crate::actions::acme_db::config::load(&config_dir(root, job_name).join(name))
            .map_err(|e| e.to_string())?;
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

/// The job's tmp dir (`ROOT/data/JOB/tmp`), created as root if missing, opened name by name
/// without following a link (`data/JOB` is the job user's under bpm).
fn open_job_tmp(cx: &Ctx) -> Result<std::os::fd::OwnedFd, String> {
    let data = cx.root.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let base = root_side::open_trusted(&data).map_err(|e| e.to_string())?;
    let job = root_side::ensure_dir_at(&base, &cx.job, 0o755, &data.join(&cx.job))
        .map_err(|e| e.to_string())?;
    root_side::ensure_dir_at(&job, "tmp", 0o700, &job_tmp_dir(cx)).map_err(|e| e.to_string())
}

/// As bpm does for its volumes: the job's tmp dir exists and is the action user's, and so is
/// the artifact directory BBR created as root (the action writes it, not root). Each is given
/// through its opened descriptor; the artifact directory only when root or that user owns it.
fn prepare_dirs(cx: &Ctx, profile: &Profile, identity: &plan::Identity) -> Result<(), String> {
    let tmp = job_tmp_dir(cx);
    if profile.grants(Access::Write).any(|g| g.path == tmp) {
        let fd = open_job_tmp(cx)?;
        // data/JOB is the job user's: it can rename any directory there to `tmp`. Only the
        // action user's own tmp dir, or an empty one root just made, is given.
        let owner = nix::sys::stat::fstat(&fd)
            .map_err(|e| format!("{}: {e}", tmp.display()))?
            .st_uid;
        let empty =
            std::fs::read_dir(root_side::fd_path(&fd)).is_ok_and(|mut d| d.next().is_none());
        if owner != identity.uid && !(owner == 0 && empty) {
            return Err(format!(
                "{}: belongs to uid {owner} and is not an empty directory root just made: refused (it is not the job's tmp dir; move it away)",
                tmp.display()
            ));
        }
        root_side::give(&fd, identity.uid, identity.gid, 0o700, &tmp).map_err(|e| e.to_string())?;
    }
    if let Some(art) = &cx.artifact {
        if profile.grants(Access::Write).any(|g| g.path == art.path) {
            let owner = nix::sys::stat::fstat(&art.fd)
                .map_err(|e| format!("{}: {e}", art.path.display()))?
                .st_uid;
            if owner != 0 && owner != identity.uid {
                return Err(format!(
                    "{}: belongs to uid {owner}, neither root (BBR creates it) nor {}: refused",
                    art.path.display(),
                    identity.user
                ));
            }
            root_side::give(&art.fd, identity.uid, identity.gid, 0o700, &art.path)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn job_tmp_dir(cx: &Ctx) -> PathBuf {
    cx.root.join("data").join(&cx.job).join("tmp")
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

fn run_native(
    cx: &Ctx,
    profile: &Profile,
    command: &[String],
    inside_bpm: bool,
    broker: Option<&Broker>,
) -> i32 {
    // The job's tmp dir exists before the plan checks the grants (bpm creates it too).
    let tmp = job_tmp_dir(cx);
    if !inside_bpm && profile.grants(Access::Write).any(|g| g.path == tmp) {
        if let Err(m) = open_job_tmp(cx) {
            say(&format!("{}: {m}", cx.who));
            return exit::SANDBOX_FAILED;
        }
    }
    let kernel = crate::kernel::probe_for_run();
    // Made by a thread while the plan is built.
    let net = native::NetNamespace::start_if(plan::network_namespace_wanted(
        profile, &kernel, inside_bpm,
    ));
    let caller_env: BTreeMap<String, String> = std::env::vars().collect();
    let plan = match plan::build(Request {
        profile,
        command,
        caller_env: &caller_env,
        kernel: &kernel,
        inside_bpm,
        label: &cx.who,
    }) {
        Ok(p) => p,
        Err(e) => {
            match &e {
                PlanError::Refused(reasons) if inside_bpm => say(&format!(
                    "{}: {INNER_REFUSAL} {}",
                    cx.who,
                    reasons.join("; ")
                )),
                PlanError::Refused(_) => {
                    say(&format!("{}: {}: {e}", cx.who, profile.source.display()))
                }
                _ => say(&format!("{}: {e}", cx.who)),
            }
            return e.exit_code();
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
    let outcome = native::run(&plan, net, broker, &mut |m| say(m));
    if let Some(message) = outcome.message(plan.kill_grace) {
        say(&format!("{}: {message}", cx.who));
    }
    outcome.exit_code()
}

/// `ROOT/sys/run/bbr-runner/JOB.ACTION.lock`, held (flock) until this process ends. Root's
/// own directory (0700, refused unless root alone can write it), not `sys/run/JOB`, which bpm
/// gives to vcap; the lock file is opened without following a link and must be root's, with
/// one name.
fn action_lock(cx: &Ctx, action: &str) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
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
fn remove_partial_artifacts(cx: &Ctx) {
    if let Some(art) = &cx.artifact {
        crate::actions::artifact::remove_partials(&root_side::fd_path(&art.fd));
        say(&format!(
            "{}: removed any partial artifact from {}",
            cx.who,
            art.path.display()
        ));
    }
}
