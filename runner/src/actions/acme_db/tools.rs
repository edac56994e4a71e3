//! Running a client tool (pg_dump, mysql, ...): an explicit environment only (the password
//! travels there, never in argv), stderr kept for the error message, a deadline, and progress
//! on stderr while it runs.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How often progress is printed during long work.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often a watched tool's check runs.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How much of a failing tool's stderr the error message keeps (its end).
const STDERR_TAIL: usize = 4096;

#[derive(Debug, Clone)]
pub struct Tool {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A cleanup step (dropping a scratch database): it runs even after a stop signal, within
    /// its own deadline, so the action can undo what it did before it ends.
    pub cleanup: bool,
}

impl Tool {
    pub fn new(program: PathBuf) -> Tool {
        Tool {
            program,
            args: Vec::new(),
            env: Vec::new(),
            cleanup: false,
        }
    }

    pub fn cleanup(mut self) -> Tool {
        self.cleanup = true;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Tool {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Tool {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn envs(mut self, env: &[(String, String)]) -> Tool {
        self.env.extend_from_slice(env);
        self
    }

    pub fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// What is reported while a tool runs: a path whose size grows. `stall`: when it has not grown
/// for this long, the tool is stopped (a server that stopped answering mid-dump).
pub struct Progress<'a> {
    pub label: &'a str,
    pub path: &'a Path,
    pub stall: Option<Duration>,
}

pub fn size_of(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// Runs the tool to completion. `Ok(stdout)` on exit 0; otherwise a message with its stderr.
pub fn run(
    tool: &Tool,
    stdin: Option<File>,
    deadline: Option<Instant>,
    progress: Option<Progress<'_>>,
) -> Result<Vec<u8>, String> {
    run_watched(tool, stdin, deadline, progress, None)
}

/// A check made about once a second while a tool runs; `Some(reason)` stops the tool (its whole
/// process group) and becomes the error.
pub type Watch<'a> = &'a mut dyn FnMut() -> Option<String>;

/// `run`, with `watch` consulted while the tool runs.
pub fn run_watched(
    tool: &Tool,
    stdin: Option<File>,
    deadline: Option<Instant>,
    progress: Option<Progress<'_>>,
    mut watch: Option<Watch<'_>>,
) -> Result<Vec<u8>, String> {
    let mut command = Command::new(&tool.program);
    // SAFETY: only prctl between fork and exec. If this action is killed (its supervisor died or
    // stopped it), the tool dies too rather than finish an artifact nobody will publish.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    // Its own process group: a stop or the deadline kills the tool and every helper it forked
    // (pg_dump's parallel workers), not just the leader.
    command.process_group(0);
    let mut child = command
        .args(&tool.args)
        .env_clear()
        .envs(tool.env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", tool.program.display()))?;
    let mut out = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let err = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let started = Instant::now();
    let mut next_report = started + PROGRESS_EVERY;
    let mut next_watch = started + WATCH_EVERY;
    let mut last_size = 0;
    let mut grew_at = started;
    // Woken the moment the tool exits (a pidfd), and every 100 ms for signals, the deadline and
    // progress. Without a pidfd (kernels before 5.3): poll fast first, then every 50 ms.
    let exited = pidfd(child.id());
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for `{}`: {e}", tool.name())),
        }
        if let Some(sig) = interrupted().filter(|_| !tool.cleanup) {
            kill_group(&mut child);
            return Err(format!("stopped by {sig}: `{}` was killed", tool.name()));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            kill_group(&mut child);
            // `started` is this tool's start, not the action's: its running time is not the
            // configured timeout, which the hint names.
            return Err(format!(
                "`{}` did not finish before its deadline and was stopped after running {}s",
                tool.name(),
                (now - started).as_secs()
            ));
        }
        if now >= next_watch {
            if let Some(reason) = watch.as_mut().and_then(|w| w()) {
                kill_group(&mut child);
                return Err(reason);
            }
            next_watch = Instant::now() + WATCH_EVERY;
        }
        if let Some(p) = &progress {
            if now >= next_report {
                let bytes = size_of(p.path);
                if bytes != last_size {
                    (last_size, grew_at) = (bytes, now);
                }
                if let Some(stall) = p.stall.filter(|s| now.duration_since(grew_at) >= *s) {
                    kill_group(&mut child);
                    return Err(format!(
                        "`{}` wrote nothing for {}s ({} written): the server stopped answering, or the network is gone; stopped",
                        tool.name(),
                        stall.as_secs(),
                        human(bytes)
                    ));
                }
                let secs = (now - started).as_secs_f64().max(0.001);
                crate::note!(
                    "{}: {} written, {}/s",
                    p.label,
                    human(bytes),
                    human((bytes as f64 / secs) as u64)
                );
                next_report = now + PROGRESS_EVERY;
            }
        }
        match &exited {
            Some(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                // EINTR (a stop signal) and the timeout both lead back to the checks above.
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            None => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    };
    let stdout = out.take().and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    // Whatever the leader left behind in its group (a worker that outlived it) goes too.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    if status.success() {
        Ok(stdout)
    } else if let Some(sig) = interrupted().filter(|_| !tool.cleanup) {
        Err(format!(
            "stopped by {sig}: `{}` ended ({})",
            tool.name(),
            tail(&stderr)
        ))
    } else {
        let how = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "was killed by a signal".to_string(),
        };
        Err(format!("`{}` {how}: {}", tool.name(), tail(&stderr)))
    }
}

/// What `run_piped` passes from the producer to the consumer: called with each line (with its
/// newline); `false` leaves the line out.
pub type LineFilter<'a> = &'a mut (dyn FnMut(&[u8]) -> bool + Send);

/// Runs `producer | consumer` (each in its own process group, dying with the action), every
/// line of the producer's output going through `keep`. The consumer sees the end of its input
/// only after the producer exited 0: when the producer fails, the consumer is killed first, so
/// it never takes a cut stream for a whole one (psql running a one-transaction script then ends
/// without COMMIT, and the server rolls it back). The deadline, a stop signal and `watch` stop
/// both. `Ok(consumer's stdout)`; otherwise the failing tool's message with its stderr.
pub fn run_piped(
    producer: &Tool,
    keep: LineFilter<'_>,
    consumer: &Tool,
    deadline: Option<Instant>,
    mut watch: Option<Watch<'_>>,
) -> Result<Vec<u8>, String> {
    use std::io::{BufRead, Write};
    let spawn = |tool: &Tool, stdin: Stdio| {
        let mut command = Command::new(&tool.program);
        // SAFETY: only prctl between fork and exec (as in `run_watched`).
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        command
            .process_group(0)
            .args(&tool.args)
            .env_clear()
            .envs(tool.env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", tool.program.display()))
    };
    let drain = |s: Option<std::process::ChildStderr>| {
        s.map(|mut s| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = s.read_to_end(&mut v);
                v
            })
        })
    };
    let mut cons = spawn(consumer, Stdio::piped())?;
    let mut prod = match spawn(producer, Stdio::null()) {
        Ok(p) => p,
        Err(e) => {
            kill_group(&mut cons);
            return Err(e);
        }
    };
    let cons_err = drain(cons.stderr.take());
    let prod_err = drain(prod.stderr.take());
    let cons_out = cons.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let (Some(source), Some(mut sink)) = (prod.stdout.take(), cons.stdin.take()) else {
        kill_group(&mut prod);
        kill_group(&mut cons);
        return Err("the pipe between the tools could not be made".into());
    };
    // The producer's lines, filtered, into the consumer. The pump hands the consumer's input
    // back open at the producer's end: it is closed only once the producer exited 0.
    let outcome = std::thread::scope(|scope| {
        let mut pump = Some(scope.spawn(move || {
            let mut reader = std::io::BufReader::with_capacity(1 << 16, source);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if !keep(&line) => {}
                    // The consumer is gone: stop reading, and the producer gets EPIPE.
                    Ok(_) if sink.write_all(&line).is_err() => break,
                    Ok(_) => {}
                }
            }
            sink
        }));
        let started = Instant::now();
        let mut next_watch = started + WATCH_EVERY;
        let (mut exited, mut produced) = (false, false);
        let outcome = loop {
            if !exited {
                match prod.try_wait() {
                    Ok(Some(s)) if s.success() => exited = true,
                    Ok(Some(_)) | Err(_) => break Piped::ProducerFailed,
                    Ok(None) => {}
                }
            }
            // Once all its output is passed on (never waited for here: the checks below must
            // go on while the consumer works), the end of the input.
            if exited && pump.as_ref().is_some_and(|p| p.is_finished()) {
                if let Some(p) = pump.take() {
                    drop(p.join());
                }
                produced = true;
            }
            if cons.try_wait().ok().flatten().is_some() {
                break Piped::Ended { produced };
            }
            if let Some(sig) = interrupted() {
                break Piped::Stopped(format!(
                    "stopped by {sig}: `{}` and `{}` were killed",
                    producer.name(),
                    consumer.name()
                ));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break Piped::Stopped(format!(
                    "`{}` did not finish before its deadline and was stopped after running {}s",
                    consumer.name(),
                    (now - started).as_secs()
                ));
            }
            if now >= next_watch {
                if let Some(reason) = watch.as_mut().and_then(|w| w()) {
                    break Piped::Stopped(reason);
                }
                next_watch = Instant::now() + WATCH_EVERY;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Before the pump is joined (leaving the scope): the consumer first, whenever it must
        // not see the end of its input; the producer has no reader left once the consumer ended.
        match &outcome {
            Piped::Stopped(_) | Piped::ProducerFailed => {
                kill_group(&mut cons);
                kill_group(&mut prod);
            }
            Piped::Ended { produced: false } => kill_group(&mut prod),
            Piped::Ended { produced: true } => {}
        }
        outcome
    });
    let prod_status = prod.wait();
    let cons_status = cons.wait();
    let prod_stderr = prod_err.and_then(|h| h.join().ok()).unwrap_or_default();
    let cons_stderr = cons_err.and_then(|h| h.join().ok()).unwrap_or_default();
    let stdout = cons_out.and_then(|h| h.join().ok()).unwrap_or_default();
    for pid in [prod.id(), cons.id()] {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let how = |s: &std::io::Result<std::process::ExitStatus>| match s.as_ref().map(|s| s.code()) {
        Ok(Some(c)) => format!("exited with status {c}"),
        _ => "was killed by a signal".to_string(),
    };
    let cons_ok = cons_status.as_ref().is_ok_and(|s| s.success());
    match outcome {
        Piped::Stopped(reason) => Err(reason),
        Piped::Ended { produced: true } if cons_ok => Ok(stdout),
        // The consumer's own failure (it explains the producer's EPIPE too).
        Piped::Ended { .. } if !cons_ok => Err(format!(
            "`{}` {}: {}",
            consumer.name(),
            how(&cons_status),
            tail(&cons_stderr)
        )),
        Piped::Ended { .. } => Err(format!(
            "`{}` ended before `{}` had written everything",
            consumer.name(),
            producer.name()
        )),
        Piped::ProducerFailed => Err(format!(
            "`{}` {}: {} (`{}` was stopped before the end of its input)",
            producer.name(),
            how(&prod_status),
            tail(&prod_stderr),
            consumer.name()
        )),
    }
}

/// How `run_piped`'s pipeline ended.
enum Piped {
    /// Stopped from outside (signal, deadline, watch): the reason.
    Stopped(String),
    /// The producer failed: the consumer was stopped before the end of its input.
    ProducerFailed,
    /// The consumer ended; `produced`: after the producer had succeeded and all was passed on.
    Ended { produced: bool },
}

/// Kills the tool's whole process group, then reaps the leader.
fn kill_group(child: &mut std::process::Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A descriptor that becomes readable when process `pid` (our child, not yet reaped) exits.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(sig, std::sync::atomic::Ordering::SeqCst);
}

/// From now on TERM, INT and HUP stop the running tool and let the action clean up (remove its
/// partial files) instead of dying mid-write.
pub fn catch_stop_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// Sleeps `d`, or less when a stop signal arrives.
pub fn pause(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && interrupted().is_none() {
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
}

/// The signal that asked the action to stop, if any.
pub fn interrupted() -> Option<nix::sys::signal::Signal> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        n => nix::sys::signal::Signal::try_from(n).ok(),
    }
}

/// A hint for the operator from a client tool's error text.
pub fn hint(message: &str, config: &Path) -> String {
    let m = message.to_lowercase();
    let cfg = config.display();
    if m.contains("did not finish before its deadline") {
        format!("the action's deadline is bbr_runner.timeout_seconds in {cfg}")
    } else if m.contains("password authentication failed") || m.contains("access denied") {
        format!("check `username` and `password` in {cfg}")
    } else if m.contains("could not connect")
        || m.contains("connection refused")
        // Through the runner's forwarder a refused connection reaches the tool as a reset.
        || m.contains("connection reset by peer")
        || m.contains("server closed the connection unexpectedly")
        || m.contains("lost connection to server at 'handshake")
        || m.contains("can't connect")
        || m.contains("no such file or directory") && m.contains("socket")
    {
        format!("is the database server running and reachable at `host`/`port` of {cfg}?")
    } else if m.contains("does not exist") || m.contains("unknown database") {
        format!("check `database` and `tables` in {cfg}")
    } else if m.contains("permission denied") {
        "the action's profile or the database's grants may not allow this; see `bbr-runner check --print` for the profile".to_string()
    } else {
        "see the tool's message above".to_string()
    }
}
