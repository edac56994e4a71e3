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

impl Tool {
    /// Starts the tool with `stdin`, its stdout and stderr piped, in an empty environment but
    /// its own. If this action is killed (its supervisor died or stopped it), the tool dies too
    /// rather than finish an artifact nobody will publish; and it leads its own process group,
    /// so that a stop or a deadline kills every helper it forked (pg_dump's parallel workers),
    /// not just the leader.
    fn spawn(&self, stdin: Stdio) -> Result<std::process::Child, String> {
        let mut command = Command::new(&self.program);
        // SAFETY: only prctl between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        command
            .process_group(0)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", self.program.display()))
    }
}

/// All that `from` gives until its end, read by a thread of its own (so that a tool never
/// blocks on a full pipe while another is read).
fn read_in_background(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = from.read_to_end(&mut v);
        v
    })
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
    watch: Option<Watch<'_>>,
) -> Result<Vec<u8>, String> {
    run_watched_every(tool, stdin, deadline, progress, watch, WATCH_EVERY)
}

/// `run_watched`, with `watch` consulted every `every` (at least every 100 ms).
pub fn run_watched_every(
    tool: &Tool,
    stdin: Option<File>,
    deadline: Option<Instant>,
    progress: Option<Progress<'_>>,
    mut watch: Option<Watch<'_>>,
    every: Duration,
) -> Result<Vec<u8>, String> {
    let mut child = tool.spawn(stdin.map_or_else(Stdio::null, Stdio::from))?;
    let mut out = child.stdout.take().map(read_in_background);
    let err = child.stderr.take().map(read_in_background);
    let started = Instant::now();
    let mut next_report = started + PROGRESS_EVERY;
    let mut next_watch = started + every;
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
            next_watch = Instant::now() + every;
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
                let wait = every.as_millis().clamp(1, 100) as u16;
                let _ = poll(&mut fds, PollTimeout::from(wait));
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

/// What `stream_into` passes from the producer to the session: called with each line (with its
/// newline); `false` leaves the line out.
pub type LineFilter<'a> = &'a mut (dyn FnMut(&[u8]) -> bool + Send);

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

/// A client tool the action talks to while it runs (psql, mysql): statements written to its
/// stdin, its output read line by line up to a marker the statements make it print. Its own
/// process group, killed whole when dropped, and it dies with the action (parent-death signal).
#[derive(Debug)]
pub struct Session {
    name: String,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Session {
    pub fn start(tool: &Tool) -> Result<Session, String> {
        let mut child = tool.spawn(Stdio::piped())?;
        let (send, lines) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(read_in_background);
        Ok(Session {
            name: tool.name(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        })
    }

    /// Its process (group) id, for a thread that must stop it.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin, for a thread that streams into it (a restore); `send` fails after this.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.stdin.take()
    }

    /// Gives back the stdin taken by `take_stdin`.
    pub fn put_stdin(&mut self, stdin: std::process::ChildStdin) {
        self.stdin = Some(stdin);
    }

    /// Writes `text` to the tool's stdin. A tool that has ended fails it, with its message.
    pub fn send(&mut self, text: &str) -> Result<(), String> {
        use std::io::Write;
        let written = match self.stdin.as_mut() {
            Some(s) => s.write_all(text.as_bytes()).and_then(|()| s.flush()),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        written.map_err(|e| match self.ended() {
            Some(m) => m,
            None => format!("cannot write to `{}`: {e}", self.name),
        })
    }

    /// The tool's output lines up to a line that is exactly `marker` (not included). Stops the
    /// tool (and fails) on a stop signal, at `deadline`, when `watch` says so (checked about once
    /// a second), or fails when the tool ends first, with its stderr.
    pub fn until(
        &mut self,
        marker: &str,
        deadline: Option<Instant>,
        mut watch: Option<Watch<'_>>,
    ) -> Result<Vec<String>, String> {
        use std::sync::mpsc::RecvTimeoutError;
        let started = Instant::now();
        let mut next_watch = started + WATCH_EVERY;
        let mut out = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line == marker => return Ok(out),
                Ok(line) => {
                    out.push(line);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Its stdout is closed: it ended (or is ending).
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    return Err(self
                        .ended()
                        .unwrap_or_else(|| format!("`{}` ended before it answered", self.name)));
                }
            }
            if let Some(sig) = interrupted() {
                self.kill();
                return Err(format!("stopped by {sig}: `{}` was killed", self.name));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                self.kill();
                return Err(format!(
                    "`{}` did not finish before its deadline and was stopped after running {}s",
                    self.name,
                    (now - started).as_secs()
                ));
            }
            if now >= next_watch {
                if let Some(reason) = watch.as_mut().and_then(|w| w()) {
                    self.kill();
                    return Err(reason);
                }
                next_watch = Instant::now() + WATCH_EVERY;
            }
        }
    }

    /// Closes its stdin and waits for it to end; `Ok` when it exited 0.
    pub fn finish(mut self, deadline: Option<Instant>) -> Result<(), String> {
        self.stdin = None;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for `{}`: {e}", self.name)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.kill();
                return Err(format!(
                    "`{}` did not finish before its deadline and was stopped",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.ended() {
            None => Ok(()),
            Some(m) => Err(m),
        }
    }

    /// `finish`, and what the tool wrote on stderr (its end), also when it exited 0.
    pub fn finish_with_stderr(mut self, deadline: Option<Instant>) -> Result<String, String> {
        let stderr = self.stderr.take();
        let status = self.finish(deadline);
        let text = stderr
            .and_then(|h| h.join().ok())
            .map(|b| tail(&b))
            .unwrap_or_default();
        match status {
            Ok(()) => Ok(text),
            Err(m) => Err(format!("{m}{text}")),
        }
    }

    /// `Some(message)` when the tool has ended: how, and its stderr's end.
    pub fn has_ended(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) if s.success() => Some(format!("`{}` exited", self.name)),
            Ok(Some(_)) => self.ended(),
            _ => None,
        }
    }

    /// `Some(message)` when the tool has exited other than with status 0 (its stderr's end).
    fn ended(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        if status.success() {
            return None;
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let how = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "was killed by a signal".to_string(),
        };
        Some(format!("`{}` {how}: {}", self.name, tail(&stderr)))
    }

    /// Kills its whole process group and reaps it.
    pub fn kill(&mut self) {
        kill_group(&mut self.child);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        } else {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Streams `producer`'s stdout into `into` (a session's stdin), after `head`, each line through
/// `keep` when given (dropped when it says no); when the producer exits 0, writes `after` and
/// gives `into` back. When the producer fails, `stop_consumer` runs before `into` is closed, so
/// the session never takes a cut stream for a whole one. A failing producer keeps `into` (dropping it
/// closes the session's input without what `after` would have said). `pgid` is set to the
/// producer's process group while it runs, so the caller can stop it from another thread.
pub fn stream_into(
    producer: &Tool,
    mut into: std::process::ChildStdin,
    head: &str,
    after: &str,
    pgid: &std::sync::atomic::AtomicI32,
    keep: Option<LineFilter<'_>>,
    stop_consumer: impl FnOnce(),
) -> Result<std::process::ChildStdin, String> {
    use std::io::{BufRead, Write};
    let mut child = producer.spawn(Stdio::null())?;
    pgid.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
    let err = child.stderr.take().map(read_in_background);
    let copied =
        into.write_all(head.as_bytes())
            .and_then(|()| match (child.stdout.as_mut(), keep) {
                (Some(out), None) => std::io::copy(out, &mut into).map(drop),
                (Some(out), Some(keep)) => {
                    let mut reader = std::io::BufReader::with_capacity(1 << 16, out);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        if reader.read_until(b'\n', &mut line)? == 0 {
                            break Ok(());
                        }
                        if keep(&line) {
                            into.write_all(&line)?;
                        }
                    }
                }
                (None, _) => Ok(()),
            });
    if copied.is_err() {
        // The session is gone: the producer would block on its full pipe.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let status = child.wait();
    pgid.store(0, std::sync::atomic::Ordering::SeqCst);
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            if copied.is_ok() {
                stop_consumer();
            }
            let how = match s.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            };
            return Err(format!("`{}` {how}: {}", producer.name(), tail(&stderr)));
        }
        Err(e) => {
            stop_consumer();
            return Err(format!("waiting for `{}`: {e}", producer.name()));
        }
    }
    copied
        .and_then(|()| into.write_all(after.as_bytes()))
        .and_then(|()| into.flush())
        .map_err(|e| format!("cannot pass `{}`'s output on: {e}", producer.name()))?;
    Ok(into)
}
