//! The bpm backend. `render` derives a job's bpm.yml from its profiles: one process per action,
//! whose executable is the runner itself, entering the action with its profile
//! (`run JOB ACTION --inside-bpm`). `delegate` runs `bpm run` with only what the action needs
//! and reads bpm's outcome, pitfalls included. Inside the container the runner applies what it
//! can of the profile (what bpm lacks), and refuses under `strict` what it cannot.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bbr_bpm::run::{interpret, pid_argv, run_argv, Outcome, RunRequest, VolumeArg};
use bbr_bpm::{BpmConfig, Limits, Process};

use crate::invocation::Invocation;
use crate::job::{Actions, DEFAULT_ROOT};
use crate::profile::{self, Access, Profile, ProfileError, Vars};

mod action;
pub use action::Bpm;

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
/// Whether the profile's process asks bpm for `unsafe.privileged`: when bpm's default container
/// cannot hold what the profile declares. There bpm's seccomp filter answers Landlock with
/// ENOSYS and forbids namespaces, and the process is vcap with no capability, so a strict
/// profile or a capability kept would be refused inside and run natively. A profile for
/// another user than vcap is not asked for: bpm gives the job's directories and writable
/// volumes to vcap on every run, so such a profile runs natively (the runner inside, vcap in
/// the default container, refuses it and says why). Privileged, the container starts the runner as root with every capability and no
/// filter (and still bpm's mount, pid, ipc and uts namespaces and its cgroup); the runner then
/// applies its whole sandbox, as natively, before the action starts: its own namespaces and
/// view, Landlock, its seccomp filter, the drop to the profile's user with no capability
/// beyond the profile's. Only the runner's own code runs with the container's privileges.
pub fn privileged(p: &Profile) -> bool {
    p.user == "vcap"
        && (p.enforcement == crate::profile::Enforcement::Strict || !p.capabilities.is_empty())
}

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
        unsafe_: privileged(p).then(|| bbr_bpm::Unsafe {
            privileged: true,
            ..bbr_bpm::Unsafe::default()
        }),
        ..Process::default()
    }
}

/// The job's bpm.yml, derived from `profiles_dir/actions.yml` and its profiles.
pub fn render(
    job: &str,
    actions: &Actions,
    profiles_dir: &Path,
) -> Result<BpmConfig, ProfileError> {
    let vars = Vars::lenient();
    let mut processes = Vec::new();
    for (name, action) in &actions.actions {
        let file = profiles_dir.join(&action.profile);
        let p = profile::load(&file, &vars)?;
        // An action whose profile does not list bpm never runs there: no process for it.
        if p.backends.contains(&crate::profile::Backend::Bpm) {
            let mut process = process(job, name, &p);
            // The service runs from `bpm start`, which takes no `-v`: the job's store (where
            // its SQLite database lives) is mounted by bpm itself. A database elsewhere under
            // the BOSH root is reached by TCP.
            process.persistent_disk = action.service;
            processes.push(process);
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

#[derive(Debug)]
pub enum Delegated {
    /// The action ran under bpm and ended with this status.
    Ran(i32),
    /// The runner inside bpm refused the profile (nothing ran): try the next backend.
    InnerRefused,
    /// The runner got `signal` while bpm ran the action and passed it on; bpm, runc and the
    /// container are gone.
    Interrupted { signal: nix::sys::signal::Signal },
    /// bpm cannot take this action as asked (a volume bpm refuses, such as the job's own store):
    /// nothing ran; try the next backend, saying why.
    Unsuitable(String),
    /// runc or tini could not start the container's process: nothing ran; try the next
    /// backend, saying why.
    NotStarted(String),
    /// bpm itself failed, or would have done nothing (a refusal when a container of the action
    /// is still running): nothing more is tried; the message starts with who runs.
    BpmFailed(crate::backend::RunError),
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
    // The lifeline (privileged containers, where the runner inside is root): the directory of
    // the action locks, read-only, and `mount_only` (bpm neither chowns nor chmods root's
    // directory). The runner inside waits on this run's lock and stops the action once this
    // runner is gone: a SIGKILL cannot be passed on, and the container would run on.
    if privileged(p) {
        out.push(VolumeArg {
            path: root.join(LOCK_DIR).display().to_string(),
            options: vec!["mount_only".into()],
        });
    }
    out
}

/// Root's directory of the action locks, under the BOSH root.
pub const LOCK_DIR: &str = "sys/run/bbr-runner";

/// The lock a run of `job`'s `action` holds while it lasts.
pub fn lock_path(root: &Path, job: &str, action: &str) -> std::path::PathBuf {
    root.join(LOCK_DIR).join(format!("{job}.{action}.lock"))
}

/// Why there is no lifeline to the runner outside bpm.
#[derive(Debug, thiserror::Error)]
pub enum LifelineError {
    /// The lock cannot be opened (bpm's default container: vcap may not read it).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Nobody holds the lock: no runner outside started this run (a `bpm run` by hand).
    #[error("{} is not held", path.display())]
    NotHeld { path: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot block signals for the lifeline thread: {0}")]
    BlockSignals(#[source] nix::errno::Errno),
    #[error("cannot start the lifeline thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Inside bpm: when the lock of the runner outside is held (it started this container), a
/// thread waits for it to be released, which happens only when that runner is gone (its end,
/// or a SIGKILL), and then sends this runner a SIGTERM: the action is stopped as on any TERM.
/// Not held (a `bpm run` by hand), or not readable (bpm's default container: vcap): no
/// lifeline, and the reason is returned.
pub fn watch_outer_runner(root: &Path, job: &str, action: &str) -> Result<(), LifelineError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = lock_path(root, job, action);
    let open = || {
        std::fs::File::open(&path).map_err(|source| LifelineError::Open {
            path: path.clone(),
            source,
        })
    };
    match Flock::lock(open()?, FlockArg::LockSharedNonblock) {
        // Nobody holds it: no runner outside is waiting for this run.
        Ok(_) => return Err(LifelineError::NotHeld { path }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
        Err((_, source)) => return Err(LifelineError::Lock { path, source }),
    }
    let file = open()?;
    // The thread starts with every signal blocked (it inherits this mask, restored below): a
    // process-directed signal must reach the supervisor's signalfd, SIGCHLD included, never
    // this thread.
    use nix::sys::signal::SigSet;
    let old = SigSet::all()
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)
        .map_err(LifelineError::BlockSignals)?;
    // The supervisor forks right after: it waits until this thread is past its start-up (which
    // takes the allocator's and std's locks) and about to block in flock, holding no lock a
    // forked child could need.
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready_in_thread = ready.clone();
    let spawned = std::thread::Builder::new()
        .name("lifeline".into())
        .spawn(move || {
            ready_in_thread.store(true, std::sync::atomic::Ordering::SeqCst);
            if Flock::lock(file, FlockArg::LockShared).is_ok() {
                crate::out::say(
                    "inside bpm: the runner outside bpm is gone (its lock was released): stopping the action",
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::getpid(),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        });
    let _ = old.thread_set_mask();
    spawned.map_err(LifelineError::Thread)?;
    while !ready.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::yield_now();
    }
    Ok(())
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
pub fn delegate(bpm: &Path, cx: &Invocation, p: &Profile) -> Delegated {
    let (root, job, action) = (cx.root.as_path(), cx.job.as_str(), cx.action.as_str());
    let bpm_s = bpm.display().to_string();
    let env = cx.bbr_env();
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
            return Delegated::BpmFailed(crate::backend::RunError::Refused(format!(
                "{}: a bpm container for {job}/{action} is already running (pid {text}); `bpm run` would silently do nothing. A previous run may still hold the database: wait for it, or stop it with `kill -TERM {text}` (its init passes the signal to the runner inside, which stops the action; `bpm stop {job} -p {action}` waits while an earlier `bpm run` still holds bpm's lock)",
                cx.who
            )));
        }
    }
    let (status, captured, interrupted) = match supervise(&argv, root, p.kill_grace) {
        Ok(r) => r,
        Err(message) => {
            return Delegated::BpmFailed(crate::backend::RunError::Internal(format!(
                "{}: {message}",
                cx.who
            )))
        }
    };
    if let Some(signal) = interrupted {
        return Delegated::Interrupted { signal };
    }
    let stderr = String::from_utf8_lossy(&captured);
    match interpret(status, &stderr) {
        Outcome::Exited(code) if code == crate::exit::REFUSED && stderr.contains(INNER_REFUSAL) => {
            Delegated::InnerRefused
        }
        Outcome::Exited(code) => Delegated::Ran(code),
        // runc or tini could not start the container's process (a privileged container where
        // root lacks a capability runc asks for, a mount it cannot make): nothing ran, and the
        // next backend can.
        Outcome::BpmFailed { status, message }
            if bbr_bpm::run::NOT_STARTED
                .iter()
                .any(|m| message.contains(m)) =>
        {
            Delegated::NotStarted(format!(
                "bpm could not start the container (bpm exit status {status}): {message}"
            ))
        }
        // Nothing ran: one code for it, whatever bpm exited with (1 from runc would read as
        // the action's own failure).
        Outcome::BpmFailed { status, message } => {
            Delegated::BpmFailed(crate::backend::RunError::SandboxFailed(format!(
                "{}: bpm failed before the action ran (bpm exit status {status}): {message}",
                cx.who
            )))
        }
    }
}

/// Runs `bpm run` in its own process group and stays its supervisor. bpm's stderr is teed (the
/// operator sees it; bpm's own errors are read from it). A TERM, INT, HUP or QUIT to this runner
/// goes to bpm's process group: bpm has no handler and dies, runc forwards it to the container,
/// where the runner inside stops the action as it would natively. This runner, a subreaper,
/// then waits for every descendant (runc and the container's init come back to it), and after
/// `grace` (the profile's kill grace, plus a margin for the runner inside) kills what is left.
/// Returns bpm's exit status, its stderr, and the signal that stopped it, if any.
fn supervise(
    argv: &[String],
    root: &Path,
    grace: std::time::Duration,
) -> Result<(i32, Vec<u8>, Option<nix::sys::signal::Signal>), String> {
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::{killpg, SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{getpid, Pid};

    let forwarded = crate::backend::native::FORWARDED;
    let mut set = SigSet::empty();
    for s in forwarded {
        set.add(s);
    }
    let old_mask =
        SigSet::thread_get_mask().map_err(|e| format!("reading the signal mask: {e}"))?;
    set.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let restore = || {
        let _ = old_mask.thread_set_mask();
    };
    let sfd = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            restore();
            return Err(format!("signalfd: {e}"));
        }
    };
    // runc (and, after it, the container's init) come back here if bpm dies first.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let mut command = bpm_command(argv, root);
    // bpm starts with no signal blocked (this thread blocks the forwarded ones for its
    // signalfd, and a child inherits the mask: the stand-in's runc never got a TERM).
    // SAFETY: only sigprocmask between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // And at their defaults: a caller that ignores INT and QUIT (a background job of a
            // non-interactive shell) would leave them ignored in bpm's wrapper and runc, where a
            // shell cannot even trap them.
            for sig in forwarded {
                nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl)
                    .map_err(std::io::Error::from)?;
            }
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
    let mut child = match command.stderr(Stdio::piped()).process_group(0).spawn() {
        Ok(c) => c,
        Err(e) => {
            restore();
            return Err(format!("cannot run {}: {e}", argv[0]));
        }
    };
    let bpm_pid = Pid::from_raw(child.id() as i32);
    let mut err = child.stderr.take();
    let mut captured = Vec::new();
    let mut status: Option<i32> = None;
    let mut interrupted: Option<Signal> = None;
    let mut deadline: Option<std::time::Instant> = None;
    let me = getpid();
    loop {
        // Reap bpm and anything that came back to this runner.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == bpm_pid => status = Some(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == bpm_pid => {
                    status = Some(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let others = crate::backend::native::children_of(me);
        if status.is_some() && err.is_none() && (interrupted.is_none() || others.is_empty()) {
            break;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            let _ = killpg(bpm_pid, Signal::SIGKILL);
            for pid in &others {
                let _ = nix::sys::signal::kill(*pid, Signal::SIGKILL);
            }
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(e) = &err {
            fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        let ready_err = fds.get(1).and_then(|f| f.any()).unwrap_or(false);
        drop(fds);
        if ready_err {
            let mut buf = [0u8; 8192];
            match err.as_mut().map(|e| e.read(&mut buf)) {
                Some(Ok(n)) if n > 0 => {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                    captured.extend_from_slice(&buf[..n]);
                }
                _ => err = None,
            }
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            // runc forwards what it gets into the container; bpm itself (Go: a goroutine dump on
            // QUIT) and bpm-release's wrapper script are left to end when runc does. Before
            // runc runs, nothing of the action has started: bpm's group gets the signal.
            let runcs = processes_named(bpm_pid, "runc");
            if runcs.is_empty() {
                let _ = killpg(bpm_pid, sig);
            }
            for pid in runcs {
                let _ = nix::sys::signal::kill(pid, sig);
            }
            for pid in crate::backend::native::children_of(me) {
                if pid != bpm_pid {
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
            if interrupted.is_none() {
                interrupted = Some(sig);
                deadline =
                    Some(std::time::Instant::now() + grace + std::time::Duration::from_secs(5));
            }
        }
    }
    drop(sfd);
    restore();
    Ok((
        status.unwrap_or(crate::exit::INTERNAL),
        captured,
        interrupted,
    ))
}

/// The processes below `top` (its descendants, `top` excluded) whose command name is `name`.
fn processes_named(top: nix::unistd::Pid, name: &str) -> Vec<nix::unistd::Pid> {
    let mut found = Vec::new();
    let mut queue = vec![top.as_raw()];
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                let comm =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim_end() == name {
                    found.push(nix::unistd::Pid::from_raw(child));
                }
                queue.push(child);
            }
        }
    }
    found
}

/// What the runner inside bpm prints when it refuses; the outer runner recognises it.
pub const INNER_REFUSAL: &str = "inside bpm, refused:";

pub fn say_applied_inside(plan: &crate::plan::Plan) {
    let mut applied = Vec::new();
    let ns = plan.namespaces;
    if ns.any() {
        // Privileged container: the runner's own namespaces inside bpm's.
        let names: Vec<&str> = [
            (ns.mount, "mount (its own view)"),
            (ns.pid, "pid"),
            (ns.ipc, "ipc"),
            (ns.net, "network"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        applied.push(format!("its own namespaces ({})", names.join(", ")));
    }
    if let Some(ll) = &plan.landlock {
        applied.push(format!(
            "Landlock ABI {} (filesystem grants, TCP ports {:?} connect / {:?} bind, scopes)",
            ll.abi, ll.connect_tcp, ll.bind_tcp
        ));
    }
    if !plan.rlimits.is_empty() {
        applied.push("rlimits".into());
    }
    if let Some(id) = &plan.identity {
        applied.push(format!("the drop to {}", id.user));
    }
    applied.push("capabilities emptied".into());
    applied.push("no_new_privs".into());
    applied.push("environment cleared".into());
    applied.push("descriptors closed".into());
    let mut provided = Vec::new();
    if !ns.mount {
        provided.push("the mount view");
    }
    if plan.identity.is_none() {
        provided.push("the vcap identity");
    }
    if plan.seccomp.is_some() {
        // bpm gave no filter (unsafe.privileged): the runner's own.
        applied.push("its own seccomp filter (bpm's container has none)".into());
    } else {
        provided.push("its seccomp filter");
    }
    let provided = if provided.is_empty() {
        "its container around it (mount, pid, ipc and uts namespaces, its cgroup)".to_string()
    } else {
        provided.join(", ")
    };
    crate::out::say(&format!(
        "inside bpm: applying {}; bpm provides {provided}",
        applied.join(", ")
    ));
}
