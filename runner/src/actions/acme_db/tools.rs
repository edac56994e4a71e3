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
use nix::sys::signal::Signal;

/// How often progress is printed during long work.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often a watched tool's check runs.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How much of a failing tool's stderr the error message keeps (its end).
const STDERR_TAIL: usize = 4096;

/// Why a client tool, or a session with one, failed. Its text is what the action says (after
/// what it was doing, with `hint`'s advice from it).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program could not be started (missing, not executable).
    #[error("cannot start `{}`: {source}", program.display())]
    Start {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for `{tool}`: {source}")]
    Wait {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// It exited with a status other than 0 (`code`), or was killed by a signal (`code` is
    /// `None`); `stderr` is the end of what it wrote there.
    #[error("`{tool}` {}: {stderr}", how(*code))]
    Exited {
        tool: String,
        code: Option<i32>,
        stderr: String,
    },
    /// A stop signal came while it ran: it was killed.
    #[error("stopped by {signal}: `{tool}` was killed")]
    Stopped { tool: String, signal: Signal },
    /// A stop signal came, and the tool ended failing on its own: the end of its stderr.
    #[error("stopped by {signal}: `{tool}` ended ({stderr})")]
    StoppedAndEnded {
        tool: String,
        signal: Signal,
        stderr: String,
    },
    /// It was still running at the deadline and was stopped; `ran`: for how long (seconds),
    /// when said.
    #[error(
        "`{tool}` did not finish before its deadline and was stopped{}",
        ran.map(|s| format!(" after running {s}s")).unwrap_or_default()
    )]
    Deadline { tool: String, ran: Option<u64> },
    /// The path it writes did not grow for `stall`: the server stopped answering; stopped.
    #[error(
        "`{tool}` wrote nothing for {}s ({} written): the server stopped answering, or the network is gone; stopped",
        stall.as_secs(),
        human(*written)
    )]
    Stalled {
        tool: String,
        stall: Duration,
        written: u64,
    },
    /// The caller's watch stopped it, for this reason (a lock waited on too long).
    #[error("{0}")]
    Watched(String),
    /// Its stdin could not be written, though it had not ended.
    #[error("cannot write to `{tool}`: {source}")]
    Write {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// It exited 0 before it printed the marker it was asked for.
    #[error("`{tool}` ended before it answered")]
    EndedEarly { tool: String },
    /// The producer's output could not be written on to the session.
    #[error("cannot pass `{tool}`'s output on: {source}")]
    PassOn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// `finish_with_stderr`: a failure other than an exit, followed by the end of the tool's
    /// stderr (as it was: no separator).
    #[error("{error}{stderr}")]
    WithStderr {
        error: Box<ToolError>,
        stderr: String,
    },
}

fn how(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exited with status {c}"),
        None => "was killed by a signal".to_string(),
    }
}

impl ToolError {
    fn exited(tool: String, status: std::process::ExitStatus, stderr: &[u8]) -> ToolError {
        ToolError::Exited {
            tool,
            code: status.code(),
            stderr: tail(stderr),
        }
    }
}

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
    fn spawn(&self, stdin: Stdio) -> Result<std::process::Child, ToolError> {
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
            .map_err(|source| ToolError::Start {
                program: self.program.clone(),
                source,
            })
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
) -> Result<Vec<u8>, ToolError> {
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
) -> Result<Vec<u8>, ToolError> {
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
) -> Result<Vec<u8>, ToolError> {
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
            Err(source) => {
                return Err(ToolError::Wait {
                    tool: tool.name(),
                    source,
                })
            }
        }
        if let Some(signal) = interrupted().filter(|_| !tool.cleanup) {
            kill_group(&mut child);
            return Err(ToolError::Stopped {
                tool: tool.name(),
                signal,
            });
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            kill_group(&mut child);
            // `started` is this tool's start, not the action's: its running time is not the
            // configured timeout, which the hint names.
            return Err(ToolError::Deadline {
                tool: tool.name(),
                ran: Some((now - started).as_secs()),
            });
        }
        if now >= next_watch {
            if let Some(reason) = watch.as_mut().and_then(|w| w()) {
                kill_group(&mut child);
                return Err(ToolError::Watched(reason));
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
                    return Err(ToolError::Stalled {
                        tool: tool.name(),
                        stall,
                        written: bytes,
                    });
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
    } else if let Some(signal) = interrupted().filter(|_| !tool.cleanup) {
        Err(ToolError::StoppedAndEnded {
            tool: tool.name(),
            signal,
            stderr: tail(&stderr),
        })
    } else {
        Err(ToolError::exited(tool.name(), status, &stderr))
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
    pub fn start(tool: &Tool) -> Result<Session, ToolError> {
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
    pub fn send(&mut self, text: &str) -> Result<(), ToolError> {
        use std::io::Write;
        let written = match self.stdin.as_mut() {
            Some(s) => s.write_all(text.as_bytes()).and_then(|()| s.flush()),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        written.map_err(|source| match self.ended() {
            Some(e) => e,
            None => ToolError::Write {
                tool: self.name.clone(),
                source,
            },
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
    ) -> Result<Vec<String>, ToolError> {
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
                    return Err(self.ended().unwrap_or_else(|| ToolError::EndedEarly {
                        tool: self.name.clone(),
                    }));
                }
            }
            if let Some(signal) = interrupted() {
                self.kill();
                return Err(ToolError::Stopped {
                    tool: self.name.clone(),
                    signal,
                });
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                self.kill();
                return Err(ToolError::Deadline {
                    tool: self.name.clone(),
                    ran: Some((now - started).as_secs()),
                });
            }
            if now >= next_watch {
                if let Some(reason) = watch.as_mut().and_then(|w| w()) {
                    self.kill();
                    return Err(ToolError::Watched(reason));
                }
                next_watch = Instant::now() + WATCH_EVERY;
            }
        }
    }

    /// Closes its stdin and waits for it to end; `Ok` when it exited 0.
    pub fn finish(mut self, deadline: Option<Instant>) -> Result<(), ToolError> {
        self.stdin = None;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(source) => {
                    return Err(ToolError::Wait {
                        tool: self.name.clone(),
                        source,
                    })
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.kill();
                return Err(ToolError::Deadline {
                    tool: self.name.clone(),
                    ran: None,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.ended() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// `finish`, and what the tool wrote on stderr (its end), also when it exited 0.
    pub fn finish_with_stderr(mut self, deadline: Option<Instant>) -> Result<String, ToolError> {
        let stderr = self.stderr.take();
        let status = self.finish(deadline);
        let text = stderr
            .and_then(|h| h.join().ok())
            .map(|b| tail(&b))
            .unwrap_or_default();
        match status {
            Ok(()) => Ok(text),
            // Its stderr was taken above, so `finish` said none.
            Err(ToolError::Exited { tool, code, .. }) => Err(ToolError::Exited {
                tool,
                code,
                stderr: text,
            }),
            Err(error) if text.is_empty() => Err(error),
            Err(error) => Err(ToolError::WithStderr {
                error: Box::new(error),
                stderr: text,
            }),
        }
    }

    /// `Some(message)` when the tool has ended: how, and its stderr's end.
    pub fn has_ended(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) if s.success() => Some(format!("`{}` exited", self.name)),
            Ok(Some(_)) => self.ended().map(|e| e.to_string()),
            _ => None,
        }
    }

    /// `Some(ToolError::Exited)` when the tool has exited other than with status 0 (its
    /// stderr's end).
    fn ended(&mut self) -> Option<ToolError> {
        let status = self.child.try_wait().ok().flatten()?;
        if status.success() {
            return None;
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Some(ToolError::exited(self.name.clone(), status, &stderr))
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
) -> Result<std::process::ChildStdin, ToolError> {
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
            return Err(ToolError::exited(producer.name(), s, &stderr));
        }
        Err(source) => {
            stop_consumer();
            return Err(ToolError::Wait {
                tool: producer.name(),
                source,
            });
        }
    }
    copied
        .and_then(|()| into.write_all(after.as_bytes()))
        .and_then(|()| into.flush())
        .map_err(|source| ToolError::PassOn {
            tool: producer.name(),
            source,
        })?;
    Ok(into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Tool {
        Tool::new(PathBuf::from("/bin/sh")).args(["-c", script])
    }

    #[test]
    fn a_failing_tool_says_how_it_ended_with_its_stderr() {
        let e = run(&sh("echo oops >&2; exit 3"), None, None, None).expect_err("exit 3");
        assert!(
            matches!(e, ToolError::Exited { code: Some(3), .. }),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "`sh` exited with status 3: oops");
        let e = run(&sh("kill -9 $$"), None, None, None).expect_err("killed");
        assert_eq!(e.to_string(), "`sh` was killed by a signal: ");
        let e = run(
            &Tool::new(PathBuf::from("/nonexistent/tool")),
            None,
            None,
            None,
        )
        .expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot start `/nonexistent/tool`: No such file or directory"),
            "{e}"
        );
        let mut stop = || Some("the watch said stop".to_string());
        let e = run_watched_every(
            &sh("sleep 5"),
            None,
            None,
            None,
            Some(&mut stop),
            Duration::from_millis(10),
        )
        .expect_err("watched");
        assert_eq!(e.to_string(), "the watch said stop");
        let e = run(&sh("sleep 5"), None, Some(Instant::now()), None).expect_err("deadline");
        assert!(
            e.to_string().starts_with(
                "`sh` did not finish before its deadline and was stopped after running "
            ),
            "{e}"
        );
    }

    #[test]
    fn a_session_says_how_it_ended() {
        let mut s = Session::start(&sh("read line; echo oops >&2; exit 2")).expect("start");
        s.send("go\n").expect("send");
        let e = s.until("never", None, None).expect_err("ended");
        assert_eq!(e.to_string(), "`sh` exited with status 2: oops");
        let mut s = Session::start(&sh("read line")).expect("start");
        s.send("go\n").expect("send");
        let e = s.until("never", None, None).expect_err("ended");
        assert_eq!(e.to_string(), "`sh` ended before it answered");
        // Its stderr's end follows the failure, also when the tool's stderr was kept for it.
        let s = Session::start(&sh("echo oops >&2; exit 4")).expect("start");
        let e = s.finish_with_stderr(None).expect_err("exit 4");
        assert_eq!(e.to_string(), "`sh` exited with status 4: oops");
        let s = Session::start(&sh("echo said >&2")).expect("start");
        assert_eq!(s.finish_with_stderr(None).expect("exit 0"), "said");
        let mut s = Session::start(&sh("echo said >&2; echo ready; sleep 5")).expect("start");
        s.until("ready", None, None).expect("ready");
        let e = s
            .finish_with_stderr(Some(Instant::now()))
            .expect_err("deadline");
        assert_eq!(
            e.to_string(),
            "`sh` did not finish before its deadline and was stoppedsaid"
        );
    }

    #[test]
    fn the_other_messages_are_as_they_were() {
        let io = || std::io::Error::from_raw_os_error(libc::EPIPE);
        let tool = || "psql".to_string();
        let cases = [
            (
                ToolError::Wait {
                    tool: tool(),
                    source: io(),
                },
                "waiting for `psql`: Broken pipe (os error 32)",
            ),
            (
                ToolError::Stopped {
                    tool: tool(),
                    signal: Signal::SIGTERM,
                },
                "stopped by SIGTERM: `psql` was killed",
            ),
            (
                ToolError::StoppedAndEnded {
                    tool: tool(),
                    signal: Signal::SIGINT,
                    stderr: "bye".into(),
                },
                "stopped by SIGINT: `psql` ended (bye)",
            ),
            (
                ToolError::Stalled {
                    tool: tool(),
                    stall: Duration::from_secs(60),
                    written: 3 << 20,
                },
                "`psql` wrote nothing for 60s (3.0 MiB written): the server stopped answering, or the network is gone; stopped",
            ),
            (
                ToolError::Write {
                    tool: tool(),
                    source: io(),
                },
                "cannot write to `psql`: Broken pipe (os error 32)",
            ),
            (
                ToolError::PassOn {
                    tool: "pg_restore".into(),
                    source: io(),
                },
                "cannot pass `pg_restore`'s output on: Broken pipe (os error 32)",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
