//! The native backend: the supervisor stays outside the sandbox, forks the child that enforces
//! the plan and execs the action, then supervises it: timeout (TERM the process group, grace,
//! KILL), forwarded signals, leftover descendants, and the exit status.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use crate::broker::{self, Broker};
use crate::cgroup::{self, CgroupError, LinuxCgroupFs, RunCgroup};
use crate::cpus::CpuMask;
use crate::exit;
use crate::plan::{self as plan_mod, CgroupRequest, Plan};
use crate::sandbox::{self, syscall::LinuxSyscall};

mod action;
pub mod forward;
mod relay;

pub use action::{run_native, Native};

/// How the action ended, as the supervisor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(Signal),
    TimedOut {
        after: Duration,
        killed: bool,
    },
    /// The supervisor got `signal` and stopped the action.
    Interrupted {
        signal: Signal,
        killed: bool,
    },
    /// The sandbox refused or failed before the action ran.
    SetupFailed {
        code: i32,
        message: String,
    },
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::Signaled(sig) => exit::SIGNAL_BASE + *sig as i32,
            Outcome::TimedOut { .. } => exit::TIMEOUT,
            Outcome::Interrupted { signal, .. } => exit::SIGNAL_BASE + *signal as i32,
            Outcome::SetupFailed { code, .. } => *code,
        }
    }

    /// What the operator should read on stderr; `None` when the action's own status says it.
    pub fn message(&self, kill_grace: Duration) -> Option<String> {
        let grace = kill_grace.as_secs();
        match self {
            Outcome::Exited(_) => None,
            Outcome::Signaled(sig) => Some(format!("the action was killed by {sig}")),
            Outcome::TimedOut { after, killed } => Some(format!(
                "the action timed out after {}s: its process group got SIGTERM{}; raise `timeout` in the profile if the work is legitimately longer",
                after.as_secs(),
                if *killed { format!(" and, {grace}s later, SIGKILL") } else { String::new() }
            )),
            Outcome::Interrupted { signal, killed } => Some(format!(
                "the runner received {signal} and stopped the action{}",
                if *killed { " (SIGKILL after the grace period)" } else { "" }
            )),
            Outcome::SetupFailed { message, .. } => Some(message.clone()),
        }
    }
}

/// Names the listeners the runner bound for the action: `ADDR=FD[,ADDR=FD]...`.
pub const LISTENERS_VAR: &str = "BBR_RUNNER_TCP_LISTENERS";

/// The listener the runner bound for `addr`, when the action runs under it.
pub fn inherited_listener(addr: &str) -> Option<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let list = std::env::var(LISTENERS_VAR).ok()?;
    let fd: i32 = list
        .split(',')
        .find_map(|e| e.strip_prefix(addr)?.strip_prefix('='))?
        .parse()
        .ok()?;
    // SAFETY: the runner kept this descriptor open across exec for exactly this listener; it
    // is taken once (the variable is removed).
    std::env::remove_var(LISTENERS_VAR);
    Some(unsafe { std::net::TcpListener::from_raw_fd(fd) })
}

/// The signals the runner passes on to the action (natively, or through bpm).
pub(crate) const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

fn supervised_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(s);
    }
    set
}

fn internal(what: &str, e: impl std::fmt::Display) -> Outcome {
    Outcome::SetupFailed {
        code: exit::INTERNAL,
        message: format!("runner error: {what}: {e}"),
    }
}

/// The action's network namespace, made by a thread of the supervisor while the main thread
/// builds the plan: creating a network namespace is the costliest part of the action's start
/// (0.4 to 0.6 ms here, in `copy_net_ns`), and nothing else needs the main thread meanwhile.
/// The thread unshares its own network namespace, sets `lo` up and opens the namespace; the
/// child enters it with `setns` as its network step. Nothing else is ever in it: the thread
/// ends right after, and the descriptor is closed by the supervisor once the child is started
/// and by the child once it has entered.
/// Dropped unused (the plan refused), it still waits for its thread.
#[derive(Debug)]
pub struct NetNamespace(Option<libc::pthread_t>);

impl NetNamespace {
    /// Starts making it when `wanted` (`plan::network_namespace_wanted`, or earlier, before the
    /// profile is read: the runner is root); `None` otherwise, or when no thread can be started
    /// (clone3 then makes the namespace, as without this). `run` drops it unused when the plan
    /// gives the action no network namespace.
    ///
    /// A bare pthread with a 64 KiB stack, created on the other CPUs (`cpus`: the kernel would
    /// leave it waiting on this thread's CPU). Not `std::thread` moved once started: a thread
    /// that has already ended has no kernel id left, and `pthread_setaffinity_np` then pins
    /// the caller instead (the supervisor, and through it the action, ended up on one CPU:
    /// `tests/cli.rs`, `the_action_runs_on_every_cpu_the_runner_was_given`).
    pub fn start_if(wanted: bool) -> Option<NetNamespace> {
        if !wanted {
            return None;
        }
        // SAFETY: an attribute object initialised, used for one pthread_create, destroyed;
        // the thread runs `make_net_namespace`, which takes no argument and returns its result
        // as the thread's (read by `finish` or `drop`, which always join it).
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            if libc::pthread_attr_init(&mut attr) != 0 {
                return None;
            }
            libc::pthread_attr_setstacksize(&mut attr, 64 * 1024);
            // Started on the other CPUs, it goes back to all of them at once (`cpus`): the
            // mask to go back to is its argument, freed by the thread (or here if none starts).
            let mut back: *mut CpuMask = std::ptr::null_mut();
            if let Some(mine) = CpuMask::mine() {
                if let Some(others) = mine.others() {
                    others.set_on(&mut attr);
                    back = Box::into_raw(Box::new(mine));
                }
            }
            let mut thread: libc::pthread_t = 0;
            let ret = libc::pthread_create(&mut thread, &attr, make_net_namespace, back.cast());
            libc::pthread_attr_destroy(&mut attr);
            if ret != 0 {
                if !back.is_null() {
                    drop(Box::from_raw(back));
                }
                return None;
            }
            Some(NetNamespace(Some(thread)))
        }
    }

    /// Waits for the thread (the process is single-threaded again after it) and returns the
    /// namespace, or `None` if it could not be made (clone3 then makes one).
    fn finish(mut self) -> Option<OwnedFd> {
        let made = join_net_thread(self.0.take()?);
        crate::trace!(
            "runner",
            "network namespace made by the thread: {}",
            made.is_some()
        );
        made
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            drop(join_net_thread(t));
        }
    }
}

/// The thread's body: the namespace's descriptor, or -1, as its result. `back`: the CPUs to go
/// back to first (a `Box<CpuMask>` it owns), or null.
extern "C" fn make_net_namespace(back: *mut libc::c_void) -> *mut libc::c_void {
    use std::os::fd::IntoRawFd;
    if !back.is_null() {
        // SAFETY: `start_if` gave this thread the box and keeps no copy of the pointer.
        let mask = unsafe { Box::from_raw(back.cast::<CpuMask>()) };
        // Best effort: a thread left on the other CPUs only loses the scheduler's choice.
        let _ = mask.set_mine();
    }
    let fd: isize =
        sandbox::net::new_namespace_with_loopback().map_or(-1, |fd| fd.into_raw_fd() as isize);
    fd as *mut libc::c_void
}

fn join_net_thread(thread: libc::pthread_t) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut result: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: a thread created by `start_if` and joined once, here.
    if unsafe { libc::pthread_join(thread, &mut result) } != 0 {
        return None;
    }
    let fd = result as isize;
    // SAFETY: the thread opened this descriptor and handed it over; nothing else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Runs the plan, serving `broker`'s requests for the action when given. The calling process
/// must be single-threaded but for `net`'s thread, which is joined before the fork (the child
/// allocates after it).
pub fn run(
    plan: &Plan,
    net: Option<NetNamespace>,
    broker: Option<&Broker>,
    warn: &mut dyn FnMut(&str),
) -> Outcome {
    // Joined first, whatever happens next: nothing may fork while it runs.
    let net = net.and_then(NetNamespace::finish);
    for notice in &plan.not_enforced {
        warn(&format!("not enforced (best_effort): {notice}"));
    }
    for notice in &plan.notices {
        warn(notice);
    }
    let mut owned = plan.clone();
    // The per-action cgroup, made once the child is started (`place`), or, when it cannot be
    // made, the rlimits in its place.
    let request = owned.cgroup.take();
    if let Some(req) = &request {
        owned.cgroup_fallback = req.rlimits();
    }
    // A namespace made for nothing (the plan wants none) is dropped here.
    let net = net.filter(|_| owned.namespaces.net);
    owned.net_namespace = net.as_ref().map(AsRawFd::as_raw_fd);
    let (outcome, run_cgroup) = run_with(&mut owned, request.as_ref(), broker, warn);
    drop(net);
    // After the supervisor has killed and reaped what the action left.
    if let Some(cg) = run_cgroup {
        let shown: Vec<String> = cg.paths().iter().map(|p| p.display().to_string()).collect();
        if let Err(e) = cgroup::remove(&LinuxCgroupFs, cg) {
            warn(&format!(
                "cannot remove the action's cgroup {} ({e}); the next run removes it",
                shown.join(", ")
            ));
        }
        crate::trace!("runner", "cgroup removed");
    }
    outcome
}

/// While the child builds its view: makes the run's cgroup and moves the child into it, then
/// says how that went on `word` (the child waits for it before its rlimits step). Returns the
/// cgroup to remove at the end, whether or not the move succeeded.
fn place(req: &CgroupRequest, word: OwnedFd, warn: &mut dyn FnMut(&str)) -> Option<RunCgroup> {
    // A child that already failed has closed its end: its own report says why, so a failed
    // send is not reported here.
    match make_cgroup(req, warn) {
        Ok(cg) => {
            // Its join files, for the child to write `0` to (`sandbox::cgroup`).
            let files: Vec<_> = cg.procs.iter().map(|f| f.as_fd()).collect();
            let sent = sandbox::net::send_fds(word.as_fd(), &files);
            crate::trace!("runner", "cgroup made, join files sent: {}", sent.is_ok());
            Some(cg)
        }
        Err(e) => {
            warn(&plan_mod::rlimit_notice(&req.user, &e.to_string()));
            let _ = nix::unistd::write(&word, b"rlimits");
            None
        }
    }
}

/// Removes what killed runners left, then makes this run's cgroup: `LABEL.PID.START`.
fn make_cgroup(req: &CgroupRequest, warn: &mut dyn FnMut(&str)) -> Result<RunCgroup, CgroupError> {
    let layout = cgroup::detect(req.limits)?;
    crate::trace!("runner", "cgroup layout detected ({})", layout.name());
    let fs = LinuxCgroupFs;
    let (removed, failed) = cgroup::remove_stale(&fs, &layout);
    crate::trace!("runner", "stale cgroups looked for");
    for path in removed {
        warn(&format!(
            "removed the cgroup {} of a runner that is gone, with what was left in it",
            path.display()
        ));
    }
    for e in failed {
        warn(&format!("cannot remove a stale cgroup: {e}"));
    }
    let me = getpid().as_raw();
    let start = cgroup::start_time(me).ok_or_else(|| {
        CgroupError::Unavailable("cannot read this runner's start time in /proc/self/stat".into())
    })?;
    cgroup::create(
        &fs,
        &layout,
        &cgroup::run_name(&req.label, me, start),
        req.limits,
    )
}

fn run_with(
    plan: &mut Plan,
    cgroup_request: Option<&CgroupRequest>,
    broker: Option<&Broker>,
    warn: &mut dyn FnMut(&str),
) -> (Outcome, Option<RunCgroup>) {
    let mut run_cgroup = None;
    let outcome = run_inner(plan, cgroup_request, &mut run_cgroup, broker, warn);
    (outcome, run_cgroup)
}

fn run_inner(
    plan: &mut Plan,
    cgroup_request: Option<&CgroupRequest>,
    run_cgroup: &mut Option<RunCgroup>,
    broker: Option<&Broker>,
    warn: &mut dyn FnMut(&str),
) -> Outcome {
    let old_mask = match SigSet::thread_get_mask() {
        Ok(m) => m,
        Err(e) => return internal("reading the signal mask", e),
    };
    if let Err(e) = supervised_signals().thread_block() {
        return internal("blocking signals", e);
    }
    // Orphaned descendants of the action come back to us, so none outlives the runner.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return internal("PR_SET_CHILD_SUBREAPER", e);
    }
    let (report_r, report_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return internal("pipe", e),
    };
    // The broker's channel: the action's end stays open across its exec, named in its
    // environment.
    let channel = match broker.map(|_| broker::channel()).transpose() {
        Ok(c) => c,
        Err(e) => return internal("socketpair for the broker", e),
    };
    if let Some(ch) = &channel {
        let fd = ch.child.as_raw_fd();
        plan.keep_fds.push(fd);
        plan.env.push(
            std::ffi::CString::new(format!("{}={fd}", broker::FD_VAR)).expect("no NUL in a number"),
        );
    }
    // The pid namespace's init reports the signal that killed the action here (as pid 1 it
    // cannot die of that signal itself).
    let init_status = if plan.namespaces.pid {
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK) {
            Ok((r, w)) => {
                plan.init_status = Some(w.as_raw_fd());
                Some((r, w))
            }
            Err(e) => return internal("pipe", e),
        }
    } else {
        None
    };
    // Declared binds: bound here, on the host, and handed over (the action's own network
    // namespace could bind nothing reachable).
    let mut bound = Vec::new();
    for addr in plan.listeners.clone() {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                plan.keep_fds.push(l.as_raw_fd());
                bound.push((addr, l));
            }
            Err(e) => {
                return Outcome::SetupFailed {
                    code: exit::SANDBOX_FAILED,
                    message: format!("cannot listen on {addr} for the action: {e}"),
                }
            }
        }
    }
    if !bound.is_empty() {
        let list: Vec<String> = bound
            .iter()
            .map(|(a, l)| format!("{a}={}", l.as_raw_fd()))
            .collect();
        plan.env.push(
            std::ffi::CString::new(format!("{}={}", LISTENERS_VAR, list.join(",")))
                .expect("no NUL in addresses"),
        );
    }
    // The channel on which the child sends its endpoints' listeners (network namespace).
    let forward_channel = if plan.forwards.is_empty() || !plan.namespaces.net {
        None
    } else {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        match socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) {
            Ok((parent, child)) => {
                plan.forward_channel = Some(child.as_raw_fd());
                Some((parent, child))
            }
            Err(e) => return internal("socketpair for the forwarder", e),
        }
    };
    // While the supervisor places the child in the cgroup, the child builds its view: on
    // another CPU, or it would wait for the supervisor's (`cpus`).
    let spread = match cgroup_request
        .and_then(|_| CpuMask::mine())
        .and_then(|mine| Some((mine, mine.others()?)))
    {
        None => None,
        Some((mine, others)) => match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok((r, w)) => {
                plan.cpu_kick = Some((r.as_raw_fd(), mine));
                Some((others, r, w))
            }
            Err(e) => return internal("pipe", e),
        },
    };
    // The supervisor's word on the cgroup, with its join files (see `place`): one message.
    let placement = match cgroup_request {
        None => None,
        Some(_) => {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            match socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            ) {
                Ok((r, w)) => {
                    plan.cgroup_placement = Some(r.as_raw_fd());
                    Some((r, w))
                }
                Err(e) => return internal("socketpair for the cgroup", e),
            }
        }
    };
    let plan = &*plan;
    // The caller's terminal is never handed to the action: its output is relayed instead.
    let (mut relay, ends) = match relay::for_terminals() {
        Ok(r) => r,
        Err(e) => return internal("replacing the terminal", e),
    };
    crate::trace!("runner", "pipes and descriptors ready; clone3");
    let mut flags = plan.namespaces.clone_flags();
    if plan.net_namespace.is_some() {
        // Entered by the child instead.
        flags &= !(libc::CLONE_NEWNET as u64);
    }
    // SAFETY: the runner is single-threaded here (the network namespace's thread was joined);
    // the child only enforces and execs.
    match unsafe { spawn(flags) } {
        Err(e) => internal("fork (clone3 into the action's namespaces)", e),
        Ok(ForkResult::Child) => {
            crate::trace!("sandbox", "started (clone3 returned in the child)");
            drop(report_r);
            // The child reads its end of the cgroup word (`plan.cgroup_placement`, closed
            // there); the supervisor's end must not stay open here too.
            if let Some((r, w)) = placement {
                drop(w);
                std::mem::forget(r);
            }
            if let Some((_, r, w)) = spread {
                drop(w);
                std::mem::forget(r);
            }
            child(plan, &old_mask, report_w, &ends, warn)
        }
        Ok(ForkResult::Parent { child }) => {
            crate::trace!("runner", "clone3 returned");
            drop(report_w);
            drop(ends);
            if let Some((others, r, w)) = spread {
                drop(r);
                others.move_process(child.as_raw());
                // The child goes back on every CPU once it runs (`cpus`).
                let _ = nix::unistd::write(&w, b"m");
            }
            if let (Some(req), Some((r, w))) = (cgroup_request, placement) {
                drop(r);
                *run_cgroup = place(req, w, warn);
            }
            let status_r = init_status.map(|(r, w)| {
                drop(w);
                r
            });
            let served = broker.zip(channel.map(|c| c.parent));
            // The listeners arrive before the action is executed; a child that failed first
            // closes the channel, and its report says why.
            let forwarder = forward_channel.and_then(|(parent, child_end)| {
                drop(child_end);
                let fds = forward::recv_fds(parent.as_fd(), plan.forwards.len()).ok()?;
                let pairs = fds.into_iter().zip(plan.forwards.iter().copied()).collect();
                match forward::Forwarder::start(pairs) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        let _ = kill(child, Signal::SIGKILL);
                        crate::note!("bbr-runner: cannot start the forwarder: {e}");
                        None
                    }
                }
            });
            // The action holds the listeners now.
            drop(bound);
            let mut outcome = supervise(plan, child, report_r, &mut relay, served);
            crate::trace!("runner", "action ended, reaped, leftovers killed");
            if let Some(f) = forwarder {
                f.stop();
                crate::trace!("runner", "forwarder stopped");
            }
            if let (Outcome::Exited(_), Some(r)) = (&outcome, status_r) {
                let mut sig = [0u8; 4];
                if nix::unistd::read(&r, &mut sig) == Ok(4) {
                    if let Ok(s) = Signal::try_from(i32::from_ne_bytes(sig)) {
                        outcome = Outcome::Signaled(s);
                    }
                }
            }
            relay.drain();
            outcome
        }
    }
}

/// `fork`, or, with namespaces, `clone3` creating them: the child is then the first process
/// of each (pid 1 of a new pid namespace).
///
/// # Safety
/// As `fork`: the calling process must be single-threaded.
unsafe fn spawn(flags: u64) -> nix::Result<ForkResult> {
    if flags == 0 {
        // SAFETY: the caller guarantees a single-threaded process.
        return unsafe { fork() };
    }
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without a stack behaves as fork (the child continues on a copy of this
    // stack); the caller guarantees a single-threaded process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
}

fn child(
    plan: &Plan,
    old_mask: &SigSet,
    report: OwnedFd,
    stdio: &relay::ChildEnds,
    warn: &mut dyn FnMut(&str),
) -> ! {
    // The action's own session (the sandbox's session step) is also its own process group, so
    // the timeout reaches every process the action starts.
    let _ = old_mask.thread_set_mask();
    if let Err(e) = stdio.install() {
        let code = exit::SANDBOX_FAILED;
        let mut file = std::fs::File::from(report);
        let _ = write!(
            file,
            "{code}\nsandbox step `session` failed at replacing the terminal: {e}"
        );
        drop(file);
        // SAFETY: _exit skips atexit handlers and destructors, which belong to the parent.
        unsafe { libc::_exit(code) }
    }
    let err = sandbox::enforce(plan, &LinuxSyscall, &mut |m| warn(m));
    // Reached only when enforcement or exec failed: tell the supervisor, then leave.
    let code = err.exit_code();
    let mut file = std::fs::File::from(report);
    let _ = write!(file, "{code}\n{err}");
    drop(file);
    // SAFETY: _exit skips atexit handlers and destructors, which belong to the parent.
    unsafe { libc::_exit(code) }
}

fn supervise(
    plan: &Plan,
    child: Pid,
    report: OwnedFd,
    relay: &mut relay::Relay,
    mut broker: Option<(&Broker, OwnedFd)>,
) -> Outcome {
    // Either the exec closes the pipe (EOF, nothing read) or the child explains its failure.
    let mut text = String::new();
    let _ = std::fs::File::from(report).read_to_string(&mut text);
    crate::trace!(
        "runner",
        "report pipe closed (the action was executed, or failed)"
    );
    if !text.is_empty() {
        let _ = waitpid(child, None);
        let (code, message) = text.split_once('\n').unwrap_or(("", text.as_str()));
        return Outcome::SetupFailed {
            code: code.parse().unwrap_or(exit::SANDBOX_FAILED),
            message: message.to_string(),
        };
    }
    let sfd = match SignalFd::with_flags(
        &supervised_signals(),
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = killpg(child, Signal::SIGKILL);
            return internal("signalfd", e);
        }
    };
    let started = Instant::now();
    let mut deadline = plan.timeout.map(|t| started + t);
    // Set once the action is being stopped: why, and when SIGKILL follows.
    let mut stopping: Option<(Outcome, Instant)> = None;
    loop {
        match reap(child) {
            Ok(Some(status)) => {
                crate::trace!("runner", "action reaped");
                kill_leftovers(child);
                return match stopping {
                    Some((reason, _)) => reason,
                    None => status,
                };
            }
            Ok(None) => {}
            Err(e) => return internal("waitpid", e),
        }
        let now = Instant::now();
        if let Some((reason, kill_at)) = &mut stopping {
            if now >= *kill_at {
                let _ = killpg(child, Signal::SIGKILL);
                let _ = kill(child, Signal::SIGKILL);
                mark_killed(reason);
                *kill_at = now + Duration::from_secs(3600);
            }
        } else if deadline.is_some_and(|d| now >= d) {
            deadline = None;
            let _ = killpg(child, Signal::SIGTERM);
            stopping = Some((
                Outcome::TimedOut {
                    after: now - started,
                    killed: false,
                },
                now + plan.kill_grace,
            ));
        }
        let next = match (&stopping, deadline) {
            (Some((_, k)), _) => Some(*k),
            (None, d) => d,
        };
        let timeout = match next {
            // At most a minute per wait (u16 milliseconds), at least 1 ms.
            Some(t) => {
                let ms = t
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .clamp(1, 60_000);
                PollTimeout::from(ms as u16)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some((_, fd)) = &broker {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let relayed = fds.len();
        fds.extend(relay.poll_fds());
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return internal("poll", e),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        relay.copy_ready(&ready[relayed..]);
        if relayed == 2 && ready[1] {
            if let Some((b, fd)) = &broker {
                if !broker::serve_one(b, fd, child) {
                    // The action closed its end: nothing more to serve.
                    broker = None;
                }
            }
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if FORWARDED.contains(&sig) {
                let _ = killpg(child, sig);
                if stopping.is_none() {
                    stopping = Some((
                        Outcome::Interrupted {
                            signal: sig,
                            killed: false,
                        },
                        Instant::now() + plan.kill_grace,
                    ));
                }
            }
        }
    }
}

fn mark_killed(reason: &mut Outcome) {
    match reason {
        Outcome::TimedOut { killed, .. } | Outcome::Interrupted { killed, .. } => *killed = true,
        _ => {}
    }
}

/// The action's status once it has ended; other children (reparented descendants) are reaped.
fn reap(child: Pid) -> nix::Result<Option<Outcome>> {
    let mut result = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(result),
            Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                result = Some(Outcome::Exited(code))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                result = Some(Outcome::Signaled(sig))
            }
            Ok(_) => {}
            Err(Errno::ECHILD) => return Ok(result),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// After the action ended: nothing it started may outlive it. Kills its process group, then
/// every descendant that came back to the runner (it is their subreaper), until none is left.
fn kill_leftovers(child: Pid) {
    let me = getpid();
    for _ in 0..100 {
        let _ = killpg(child, Signal::SIGKILL);
        let orphans = children_of(me);
        if orphans.is_empty() {
            return;
        }
        for pid in orphans {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// The runner's live children: one read of /proc/thread-self/children (the supervisor is
/// single-threaded), else a scan of /proc.
pub(crate) fn children_of(parent: Pid) -> Vec<Pid> {
    if let Ok(list) = std::fs::read_to_string("/proc/thread-self/children") {
        return list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(Pid::from_raw)
            .collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // The command name may contain spaces and parentheses: parse after the last `)`.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}
