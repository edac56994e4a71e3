//! `--verify`: for each claim the native backend makes, an escape attempt run for real under the
//! profile (through the same plan and sandbox as `exec`), next to an allowed operation that must
//! succeed. A claim reported enforced (or partial) whose attempt succeeds is BROKEN, and the
//! command fails: the review never claims more than it saw.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::claims::{Claim, Status, Verified};
use crate::profile::{Access, Profile};

/// The probe is the runner itself (`bbr-runner probe`), run under the profile.
struct Probe {
    profile: PathBuf,
    runner: PathBuf,
}

impl Probe {
    /// `bbr-runner exec --profile P -- bbr-runner probe OP...`, with an empty environment but
    /// the Landlock ABI cap, so the attempts run as the review's own sandbox would.
    fn command(&self, op: &[&str]) -> Command {
        let mut c = Command::new(&self.runner);
        c.arg("exec")
            .arg("--profile")
            .arg(&self.profile)
            .arg("--")
            .arg(&self.runner)
            .arg("probe")
            .args(op)
            .env_clear();
        if let Some(cap) = std::env::var_os(crate::kernel::ABI_MAX_VAR) {
            c.env(crate::kernel::ABI_MAX_VAR, cap);
        }
        c
    }

    /// The probe under the profile, on a terminal that is the caller's controlling terminal.
    fn run_on_terminal(&self, op: &[&str]) -> (bool, String) {
        on_a_terminal(self.command(op))
    }

    fn run(&self, op: &[&str]) -> (bool, String) {
        let out = self.command(op).output();
        match out {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
                let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                (o.status.success(), if text.is_empty() { err } else { text })
            }
            Err(e) => (false, format!("cannot run: {e}")),
        }
    }
}

/// A scratch place outside every grant, reachable by any user through file permissions.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let dir = tempfile::Builder::new().prefix("bbr-verify-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))?;
        std::fs::write(dir.path().join("secret"), "not for the sandbox\n")?;
        std::fs::set_permissions(
            dir.path().join("secret"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        std::fs::copy("/bin/true", dir.path().join("true"))?;
        std::fs::set_permissions(
            dir.path().join("true"),
            std::fs::Permissions::from_mode(0o755),
        )?;
        Ok(Scratch { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Why `--verify` could not run the escape attempts (nothing was verified).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("--verify runs the sandbox for real and needs root")]
    NotRoot,
    /// The profile's user does not exist on this machine.
    #[error("user `{user}` does not exist here: useradd --system {user}")]
    NoUser { user: String },
    /// The allowed neighbour failed: the probe cannot run under the profile.
    #[error("the probe does not run under this profile ({status}): nothing can be verified")]
    ProbeDoesNotRun { status: String },
    /// Making the verification profile or its directories.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Making the scratch place the attempts aim at.
    #[error("scratch dir: {0}")]
    Scratch(#[source] std::io::Error),
    /// Making the shared memory segment the ipc attempt reads.
    #[error("shmget: {0}")]
    SharedMemory(#[source] std::io::Error),
    /// Any other preparation (a temp directory, a permission, a listener the attempts aim at).
    #[error("{0}")]
    Setup(#[source] std::io::Error),
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// The profile as it can be run here: grants of paths absent on this machine left out, plus
/// execute on the runner (the probe), read of /proc (its status) and write of the verifier's
/// own `out` directory (where a leftover process would show itself), written to a file.
fn verification_profile(p: &Profile, runner: &Path, dir: &Path) -> Result<PathBuf, VerifyError> {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).map_err(file_err(&out))?;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777))
        .map_err(VerifyError::Setup)?;
    let mut v = p.clone();
    v.description = String::new();
    v.enforcement = crate::profile::Enforcement::BestEffort;
    v.group = None;
    v.supplementary_groups.clear();
    v.limits = crate::profile::Limits::default();
    v.env_pass.clear();
    v.env_set.clear();
    v.timeout = Some(std::time::Duration::from_secs(60));
    // Direct grants of paths absent here would be refused; a set's absent members are skipped.
    v.grants
        .retain(|g| g.origin != crate::profile::Origin::Direct || g.path.exists());
    v.sockets.retain(|s| s.exists());
    let grant = |access, path: PathBuf| crate::profile::PathGrant {
        access,
        written: path.display().to_string(),
        path,
        origin: crate::profile::Origin::Direct,
        position: crate::profile::Position {
            file: p.source.clone(),
            line: 0,
            column: 0,
        },
    };
    v.grants.push(grant(
        Access::Execute,
        runner.parent().unwrap_or(Path::new("/")).to_path_buf(),
    ));
    v.grants.push(grant(Access::Read, PathBuf::from("/proc")));
    v.grants.push(grant(Access::Write, out));
    let file = dir.join("verify.yml");
    std::fs::write(&file, crate::profile::to_yaml(&v)).map_err(file_err(&file))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(VerifyError::Setup)?;
    Ok(file)
}

fn outcome(claim: &Claim, denied: bool, what: String) -> Verified {
    // A partial unix.pathname claim covers the socket directories only; the attempt is elsewhere.
    let tests_the_claim = !(claim.id == "unix.pathname" && claim.status == Status::Partial);
    match (claim.status, denied) {
        (Status::NotEnforced, _) => Verified::Observed(what),
        (_, _) if !tests_the_claim => Verified::Observed(format!(
            "{what} (a socket outside the declared directories)"
        )),
        (_, true) => Verified::Held(what),
        (_, false) => Verified::Broken(what),
    }
}

/// The probe listens on 127.0.0.1:`port` under the profile; the host then tries to connect.
/// Returns whether it was denied (no bind, or nothing reachable) and what happened.
fn reachable_listener(probe: &Probe, port: u16) -> (bool, String) {
    use std::io::BufRead;
    let addr = format!("127.0.0.1:{port}");
    let mut child = match probe
        .command(&["listen-once", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (true, format!("listen-once {addr} -> cannot run: {e}")),
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    let line = line.trim().to_string();
    let result = if line == "listening" {
        let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        match std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(1)) {
            Ok(_) => (
                false,
                format!("listen-once {addr} -> listening; the host connected to it"),
            ),
            Err(e) => (
                true,
                format!("listen-once {addr} -> listening, but the host cannot reach it ({e})"),
            ),
        }
    } else {
        (true, format!("listen-once {addr} -> {line}"))
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Runs the escape attempts for `claims` (the native backend's) and records what happened.
pub fn verify(p: &Profile, claims: &mut [Claim], runner: &Path) -> Result<(), VerifyError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(VerifyError::NotRoot);
    }
    if nix::unistd::User::from_name(&p.user)
        .ok()
        .flatten()
        .is_none()
    {
        return Err(VerifyError::NoUser {
            user: p.user.clone(),
        });
    }
    let work = tempfile::Builder::new()
        .prefix("bbr-verify-profile-")
        .tempdir()
        .map_err(VerifyError::Setup)?;
    let scratch = Scratch::new().map_err(VerifyError::Scratch)?;
    let probe = Probe {
        profile: verification_profile(p, runner, work.path())?,
        runner: runner.to_path_buf(),
    };
    // The allowed neighbour: the probe runs at all, and reports its status.
    let (ok, status) = probe.run(&["status"]);
    if !ok {
        return Err(VerifyError::ProbeDoesNotRun { status });
    }
    let status = status.strip_prefix("ok ").unwrap_or(&status).to_string();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(VerifyError::Setup)?;
    let closed_port = listener.local_addr().map_err(VerifyError::Setup)?.port();
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(VerifyError::Setup)?;
    let abstract_name = format!("bbr-verify-{}", std::process::id());
    let _abstract = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .map_err(VerifyError::Setup)?;
        std::os::unix::net::UnixListener::bind_addr(&addr).map_err(VerifyError::Setup)?
    };
    let sock_path = scratch.path("elsewhere.sock");
    let _sock = std::os::unix::net::UnixListener::bind(&sock_path).map_err(VerifyError::Setup)?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o777))
        .map_err(VerifyError::Setup)?;
    let me = std::process::id().to_string();
    let mut results: BTreeMap<String, (bool, String)> = BTreeMap::new();
    let mut attempt = |id: &str, op: &[&str]| {
        let (ok, text) = probe.run(op);
        results.insert(id.to_string(), (!ok, format!("{} -> {text}", op.join(" "))));
    };
    attempt("fs.write", &["write-file", &scratch.path("written")]);
    attempt("fs.read", &["read-file", &scratch.path("secret")]);
    attempt("fs.execute", &["exec", &scratch.path("true")]);
    if !p.connect_tcp.contains(&closed_port) {
        attempt(
            "net.tcp_connect",
            &["connect-tcp", &format!("127.0.0.1:{closed_port}")],
        );
    }

    attempt("unix.pathname", &["connect-unix", &sock_path]);
    if !p.bind_tcp.contains(&free_port) {
        // What counts is a listener reachable from the host: one bound inside the action's own
        // network namespace succeeds and reaches nobody.
        let (denied, what) = reachable_listener(&probe, free_port);
        results.insert("net.tcp_bind".into(), (denied, what));
    }
    // UDP: what counts is whether the host's listener receives it (a send into the action's
    // own loopback succeeds and reaches nobody).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(VerifyError::Setup)?;
    let udp_port = udp.local_addr().map_err(VerifyError::Setup)?.port();
    let _ = udp.set_read_timeout(Some(std::time::Duration::from_millis(500)));
    let (sent, text) = probe.run(&["send-udp", &format!("127.0.0.1:{udp_port}")]);
    let received = sent && udp.recv(&mut [0u8; 16]).is_ok();
    results.insert(
        "net.udp".into(),
        (
            !received,
            format!(
                "send-udp 127.0.0.1:{udp_port} -> {text}; the host's listener {}",
                if received {
                    "received it"
                } else {
                    "received nothing"
                }
            ),
        ),
    );
    let mut attempt = |id: &str, op: &[&str]| {
        let (ok, text) = probe.run(op);
        results.insert(id.to_string(), (!ok, format!("{} -> {text}", op.join(" "))));
    };
    attempt("proc.others", &["read-file", &format!("/proc/{me}/status")]);
    // System V shared memory the host made readable by everyone: only the ipc namespace hides it.
    let shm = SharedMemory::new().map_err(VerifyError::SharedMemory)?;
    attempt("ipc", &["shm-read", &shm.key.to_string()]);
    drop(shm);
    attempt("syscalls", &["unshare-user"]);
    attempt("scope.abstract_unix", &["connect-abstract", &abstract_name]);
    attempt("scope.signal", &["kill", &me, "0"]);
    // Root's own file (scratch/secret): only its owner (or CAP_FOWNER) may chmod it.
    attempt("root_files", &["chmod", &scratch.path("secret"), "4755"]);
    drop(listener);
    results.insert("environment".into(), caller_variable_hidden(&probe));
    results.insert(
        "leftovers".into(),
        nothing_left_running(&probe, work.path()),
    );
    let uid = nix::unistd::User::from_name(&p.user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw().to_string())
        .unwrap_or_default();
    let caps_mask: u64 = p.capabilities.iter().map(|c| 1u64 << c.index()).sum();
    for c in claims.iter_mut() {
        c.verified = Some(match c.id.as_str() {
            "identity" => {
                let seen = field("Uid:");
                if seen == uid {
                    Verified::Held(format!("Uid {seen}"))
                } else {
                    Verified::Broken(format!("Uid {seen}, expected {uid}"))
                }
            }
            "capabilities" => {
                let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX);
                let bnd = u64::from_str_radix(&field("CapBnd:"), 16).unwrap_or(u64::MAX);
                if eff == caps_mask && bnd == caps_mask {
                    Verified::Held(format!("CapEff {eff:016x}, CapBnd {bnd:016x}"))
                } else {
                    Verified::Broken(format!(
                        "CapEff {eff:016x}, CapBnd {bnd:016x}, expected {caps_mask:016x}"
                    ))
                }
            }
            "no_new_privs" => {
                let v = field("NoNewPrivs:");
                if v == "1" {
                    Verified::Held("NoNewPrivs 1".into())
                } else {
                    Verified::Broken(format!("NoNewPrivs {v}"))
                }
            }
            "terminal" => terminal(&probe, &p.user),
            id => match results.get(id) {
                Some((denied, what)) => outcome(c, *denied, what.clone()),
                None => Verified::NotRun(match TESTED_ELSEWHERE.iter().find(|(i, _)| *i == id) {
                    Some((_, tests)) => format!("no live attempt here (it would take the declared limit or timeout to reach); checked by {tests}"),
                    None => "no escape attempt for this claim".into(),
                }),
            },
        });
    }
    Ok(())
}

/// Claims `--verify` does not attempt live, and the tests that check them.
pub const TESTED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "limits",
        "tests/limits.rs (a fork bomb over processes, an allocation over memory, a file over file_size, a loop over cpu_seconds)",
    ),
    (
        "timeout",
        "tests/escape.rs timeout_kills_a_process_that_ignores_term_and_its_children",
    ),
];

/// A System V shared memory segment made by the verifier, mode 0666, removed on drop.
struct SharedMemory {
    key: i32,
    id: i32,
}

impl SharedMemory {
    fn new() -> std::io::Result<SharedMemory> {
        for attempt in 0..16 {
            let key = 0x6262_0000 | ((std::process::id() as i32 + attempt) & 0xffff);
            // SAFETY: shmget creates a segment this struct owns and removes.
            let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o666) };
            if id >= 0 {
                return Ok(SharedMemory { key, id });
            }
        }
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: removes the segment made in `new`.
        unsafe { libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// The probe prints its environment, started with a variable only the caller has.
fn caller_variable_hidden(probe: &Probe) -> (bool, String) {
    const VAR: &str = "BBR_VERIFY_CALLER_ONLY";
    let out = probe.command(&["env"]).env(VAR, "1").output();
    match out {
        Ok(o) if o.status.success() => {
            let seen = String::from_utf8_lossy(&o.stdout).contains(&format!("{VAR}="));
            (
                !seen,
                format!(
                    "env, started with {VAR}=1 -> {}",
                    if seen {
                        "the action sees it"
                    } else {
                        "the action does not see it"
                    }
                ),
            )
        }
        Ok(o) => (
            true,
            format!("env -> {}", String::from_utf8_lossy(&o.stdout).trim()),
        ),
        Err(e) => (true, format!("env -> cannot run: {e}")),
    }
}

/// The probe starts a standing chain of 150 processes, each in its own session, that write
/// their pids every 100 ms, and returns; once the runner returned, the file must stop growing.
/// (Without the pid namespace, about a third of such a chain outlives the action.)
fn nothing_left_running(probe: &Probe, work: &Path) -> (bool, String) {
    let file = work.join("out/leftover-pids");
    if std::fs::write(&file, "").is_err() {
        return (true, "cannot make the leftover file".into());
    }
    let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666));
    let (ran, text) = probe.run(&["spawn-chain", "150", &file.display().to_string()]);
    if !ran {
        return (true, format!("spawn-chain 150 -> {text}"));
    }
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let before = size();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let after = size();
    (
        after == before,
        format!(
            "spawn-chain 150 -> {text}; after the runner returned their pid file {}",
            if after == before {
                "stopped growing (nothing left running)".to_string()
            } else {
                format!("grew from {before} to {after} bytes (it still runs)")
            }
        ),
    )
}

/// Runs `cmd` in a new session whose controlling terminal is a new pty (stdin, stdout and stderr
/// on it); whether it succeeded, and what reached the terminal.
fn on_a_terminal(mut cmd: Command) -> (bool, String) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let Ok(pty) = nix::pty::openpty(None, None) else {
        return (false, "cannot open a pty".into());
    };
    let slave = std::fs::File::from(pty.slave);
    let (Ok(a), Ok(b), Ok(c)) = (slave.try_clone(), slave.try_clone(), slave.try_clone()) else {
        return (false, "cannot duplicate the pty".into());
    };
    cmd.stdin(a).stdout(b).stderr(c);
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(cmd);
    drop(slave);
    let status = match child.and_then(|mut c| c.wait()) {
        Ok(s) => s,
        Err(e) => return (false, format!("cannot run: {e}")),
    };
    let master = std::fs::File::from(pty.master);
    let _ = nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut out = Vec::new();
    let _ = (&master).read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).trim().to_string();
    (status.success(), text)
}

/// TIOCSTI on the caller's terminal: first without the sandbox, as the profile's user (the
/// control: the kernel allows it), then under the profile.
fn terminal(probe: &Probe, user: &str) -> Verified {
    use std::os::unix::process::CommandExt;
    let Some(u) = nix::unistd::User::from_name(user).ok().flatten() else {
        return Verified::NotRun(format!("no user {user}"));
    };
    let mut control = Command::new(&probe.runner);
    control
        .args(["probe", "tiocsti"])
        .env_clear()
        .uid(u.uid.as_raw())
        .gid(u.gid.as_raw());
    let (allowed, seen) = on_a_terminal(control);
    if !allowed {
        return Verified::Observed(format!(
            "this kernel refuses TIOCSTI to {user} even without the sandbox ({seen}; dev.tty.legacy_tiocsti = 0?)"
        ));
    }
    let (ok, text) = probe.run_on_terminal(&["tiocsti"]);
    let what = format!("tiocsti -> {text} (without the sandbox: {seen})");
    if ok {
        Verified::Broken(what)
    } else {
        Verified::Held(what)
    }
}
