//! `bbr-runner probe OP ARGS...`: attempt exactly one operation, print `ok` (exit 0) or the
//! errno that refused it (`errno EACCES ...`, exit 1). Usage errors exit 2. The escape suite
//! and `review --verify` run it inside a sandbox to show what really happens.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use super::CommandResult;
use crate::cli::ProbeArgs;
use crate::exit;

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

fn report(result: Result<String, Errno>) -> i32 {
    match result {
        Ok(info) if info.is_empty() => {
            crate::show!("ok");
            0
        }
        Ok(info) => {
            crate::show!("ok {info}");
            0
        }
        Err(e) => {
            crate::show!("errno {e:?} ({})", e.desc());
            1
        }
    }
}

fn io<T>(r: std::io::Result<T>) -> Result<T, Errno> {
    r.map_err(|e| errno_of(&e))
}

/// The probe's statuses are its answer to the test that runs it (0: done; 1: failed, with
/// `error ...` on stdout; 2: an unknown operation), not failures of the runner.
pub fn probe(args: ProbeArgs) -> CommandResult {
    Ok(exit::status(attempt(args)))
}

fn attempt(args: ProbeArgs) -> i32 {
    let op: Vec<&str> = args.op.iter().map(String::as_str).collect();
    let result = match op.as_slice() {
        ["write-file", path] => io(std::fs::write(path, b"probe\n")).map(|_| String::new()),
        ["append-file", path] => io(std::fs::OpenOptions::new().append(true).open(path))
            .and_then(|mut f| io(f.write_all(b"probe\n")))
            .map(|_| String::new()),
        ["read-file", path] => io(std::fs::read(path)).map(|b| format!("{} bytes", b.len())),
        ["list-dir", path] => io(std::fs::read_dir(path)).map(|d| format!("{} entries", d.count())),
        ["truncate", path] => io(std::fs::OpenOptions::new().write(true).open(path))
            .and_then(|f| io(f.set_len(0)))
            .map(|_| String::new()),
        ["rename", from, to] => io(std::fs::rename(from, to)).map(|_| String::new()),
        ["link", from, to] => io(std::fs::hard_link(from, to)).map(|_| String::new()),
        ["symlink", target, link] => {
            io(std::os::unix::fs::symlink(target, link)).map(|_| String::new())
        }
        ["remove", path] => io(std::fs::remove_file(path)).map(|_| String::new()),
        ["alloc", megabytes] => alloc(megabytes),
        ["mkdir", path] => io(std::fs::create_dir(path)).map(|_| String::new()),
        ["mkfifo", path] => {
            nix::unistd::mkfifo(*path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map(|_| String::new())
        }
        ["exec", program, rest @ ..] => exec(program, rest),
        ["connect-tcp", addr] => io(std::net::TcpStream::connect(addr)).map(|_| String::new()),
        ["bind-tcp", addr] => io(std::net::TcpListener::bind(addr))
            .map(|l| l.local_addr().map(|a| a.to_string()).unwrap_or_default()),
        ["send-udp", addr] => io(std::net::UdpSocket::bind("127.0.0.1:0"))
            .and_then(|s| io(s.send_to(b"probe", addr)))
            .map(|n| format!("{n} bytes")),
        ["connect-unix", path] => io(UnixStream::connect(path)).map(|_| String::new()),
        ["connect-abstract", name] => connect_abstract(name),
        ["kill", pid, sig] => kill(pid, sig),
        ["ptrace", pid] => ptrace(pid),
        ["unshare-mount"] => {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map(|_| String::new())
        }
        ["unshare-user"] => {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map(|_| String::new())
        }
        ["mount-tmpfs", dir] => nix::mount::mount(
            Some("tmpfs"),
            *dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map(|_| String::new()),
        ["chroot", dir] => nix::unistd::chroot(*dir).map(|_| String::new()),
        ["setuid", uid] => match uid.parse::<u32>() {
            Ok(u) => nix::unistd::setuid(nix::unistd::Uid::from_raw(u)).map(|_| String::new()),
            Err(_) => return usage(&op),
        },
        ["status"] => io(std::fs::read_to_string("/proc/self/status")).map(|s| {
            s.lines()
                .filter(|l| {
                    l.starts_with("Cap")
                        || l.starts_with("NoNewPrivs")
                        || l.starts_with("Uid")
                        || l.starts_with("Gid")
                        || l.starts_with("Groups")
                })
                .collect::<Vec<_>>()
                .join("\n")
        }),
        ["chmod", path, mode] => match u32::from_str_radix(mode, 8) {
            Ok(m) => io(std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(m),
            ))
            .map(|_| String::new()),
            Err(_) => return usage(&op),
        },
        ["tiocsti"] => tiocsti(),
        ["broker", request] => match crate::broker::Client::from_env() {
            Ok(c) => match c.request(request) {
                Ok(answer) => Ok(answer),
                Err(e) => {
                    crate::show!("error {e}");
                    return 1;
                }
            },
            Err(e) => {
                crate::show!("error {e}");
                return 1;
            }
        },
        ["broker-flood", n] => broker_flood(n),
        ["listen-once", addr] => listen_once(addr),
        ["accept-inherited", addr] => accept_inherited(addr),
        ["mmap-exec", path] => mmap_exec(path),
        ["mptcp-connect", addr] => raw_stream(addr, 262, false),
        ["tfo-send", addr] => raw_stream(addr, 0, true),
        ["shm-read", key] => shm_read(key),
        ["spawn-detached", n, file] => spawn_detached(n, file),
        ["fork-hop", file] => fork_hop(file),
        ["spawn-chain", n, file] => spawn_chain(n, file),
        ["broker-hold"] => {
            // Shows its pid and the broker's descriptor, then waits to be stopped.
            crate::show!(
                "pid {} fd {}",
                std::process::id(),
                std::env::var(crate::broker::FD_VAR).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(String::new())
        }
        ["env"] => Ok(std::env::vars()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")),
        ["key-search", desc] => key_search(desc),
        ["key-add", desc] => key_add(desc),
        ["fds"] => Ok(open_descriptors()
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",")),
        _ => return usage(&op),
    };
    report(result)
}

/// The open descriptors of this process, found by asking the kernel about each number up
/// to the soft RLIMIT_NOFILE. Listing /proc/self/fd instead would open a descriptor of its
/// own, whose number cannot be told apart from an inherited one.
fn open_descriptors() -> Vec<i32> {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft.min(1 << 20));
    (0..i32::try_from(limit).unwrap_or(i32::MAX))
        // SAFETY: F_GETFD only reads the flags of a descriptor number; a closed one gives EBADF.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .collect()
}

fn usage(op: &[&str]) -> i32 {
    crate::note!("bbr-runner probe: unknown operation `{}`", op.join(" "));
    exit::USAGE
}

fn exec(program: &str, rest: &[&str]) -> Result<String, Errno> {
    let c = |s: &str| CString::new(s).map_err(|_| Errno::EINVAL);
    let prog = c(program)?;
    let mut argv = vec![prog.clone()];
    for a in rest {
        argv.push(c(a)?);
    }
    match nix::unistd::execv(&prog, &argv) {
        Err(e) => Err(e),
        Ok(never) => match never {},
    }
}

fn connect_abstract(name: &str) -> Result<String, Errno> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new_abstract(name.as_bytes())?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map(|_| String::new())
}

/// A pid, or `self` for the probe's own.
fn pid_of(text: &str) -> Result<nix::unistd::Pid, Errno> {
    if text == "self" {
        return Ok(nix::unistd::getpid());
    }
    text.parse::<i32>()
        .map(nix::unistd::Pid::from_raw)
        .map_err(|_| Errno::EINVAL)
}

/// `sig` is a name (`SIGTERM`) or `0`, which only checks permission.
fn kill(pid: &str, sig: &str) -> Result<String, Errno> {
    let sig: Option<nix::sys::signal::Signal> = match sig {
        "0" => None,
        name => Some(name.parse().map_err(|_| Errno::EINVAL)?),
    };
    nix::sys::signal::kill(pid_of(pid)?, sig).map(|_| String::new())
}

/// Reserves and touches N MiB, reporting ENOMEM instead of aborting.
fn alloc(megabytes: &str) -> Result<String, Errno> {
    let mb: usize = megabytes.parse().map_err(|_| Errno::EINVAL)?;
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(mb << 20).map_err(|_| Errno::ENOMEM)?;
    v.resize(mb << 20, 1);
    Ok(format!("{} MiB", v.len() >> 20))
}

fn ptrace(pid: &str) -> Result<String, Errno> {
    let pid = pid_of(pid)?;
    nix::sys::ptrace::attach(pid)?;
    let _ = nix::sys::wait::waitpid(pid, None);
    let _ = nix::sys::ptrace::detach(pid, None);
    Ok(String::new())
}

/// Pushes one byte into the input of a terminal: through stdin, stdout, stderr, then
/// `/dev/tty` (the controlling terminal). `ok` names the first that took it.
fn tiocsti() -> Result<String, Errno> {
    let byte: libc::c_char = b'#' as libc::c_char;
    let mut last = Errno::ENOTTY;
    for fd in 0..=2 {
        // SAFETY: TIOCSTI reads one byte from the pointer, which outlives the call.
        if unsafe { libc::ioctl(fd, libc::TIOCSTI, &byte) } == 0 {
            return Ok(format!("fd {fd}"));
        }
        last = Errno::last();
    }
    let tty = nix::fcntl::open(
        "/dev/tty",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    );
    match tty {
        Ok(fd) => {
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            // SAFETY: as above.
            if unsafe { libc::ioctl(raw, libc::TIOCSTI, &byte) } == 0 {
                return Ok("/dev/tty".into());
            }
            Err(Errno::last())
        }
        // ENXIO: no controlling terminal; the descriptors' errno says more.
        Err(Errno::ENXIO) => Err(last),
        Err(e) => Err(e),
    }
}

const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
const KEYCTL_SEARCH: libc::c_long = 10;
const KEYCTL_READ: libc::c_long = 11;

fn key_read(id: libc::c_long) -> Result<String, Errno> {
    let mut buf = [0u8; 256];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_READ,
            id,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    Ok(format!("read {n} bytes of key {id}"))
}

/// Finds a `user` key by description in the session keyring (possession) and reads it.
fn key_search(desc: &str) -> Result<String, Errno> {
    let d = CString::new(desc).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let id = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_SEARCH,
            KEY_SPEC_SESSION_KEYRING,
            c"user".as_ptr(),
            d.as_ptr(),
            0,
        )
    };
    if id < 0 {
        return Err(Errno::last());
    }
    key_read(id)
}

/// Adds a `user` key to the session keyring and reads it back.
fn key_add(desc: &str) -> Result<String, Errno> {
    let d = CString::new(desc).map_err(|_| Errno::EINVAL)?;
    let payload = b"probe";
    // SAFETY: the strings are NUL-terminated; the payload pointer and length match.
    let id = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            d.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_SESSION_KEYRING,
        )
    };
    if id < 0 {
        return Err(Errno::last());
    }
    key_read(id)
}

/// Sends N requests to the broker without ever reading an answer, then waits to be stopped:
/// the supervisor must not block on it (its timeout still fires).
fn broker_flood(n: &str) -> Result<String, Errno> {
    let n: usize = n.parse().map_err(|_| Errno::EINVAL)?;
    let fd: i32 = std::env::var(crate::broker::FD_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(Errno::EBADF)?;
    let mut sent = 0;
    for _ in 0..n {
        if nix::sys::socket::send(
            fd,
            b"status",
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
        .is_ok()
        {
            sent += 1;
        }
    }
    crate::show!("sent {sent} requests");
    std::thread::sleep(std::time::Duration::from_secs(3600));
    Ok(String::new())
}

/// Binds `addr`, says `listening`, accepts one connection and reports what it was sent (up to
/// 2 s of silence): a stand-in for whatever might sit on another program's port.
fn listen_once(addr: &str) -> Result<String, Errno> {
    use std::io::Read;
    let l = io(std::net::TcpListener::bind(addr))?;
    crate::show!("listening");
    let (mut s, _) = io(l.accept())?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    Ok(format!(
        "read {} bytes: {:?}",
        got.len(),
        String::from_utf8_lossy(&got)
    ))
}

/// A stream socket of `protocol` (262: MPTCP) to `addr` (IPv4), connected with `connect`, or
/// with TCP Fast Open's `sendto(MSG_FASTOPEN)` when `fastopen`.
fn raw_stream(addr: &str, protocol: i32, fastopen: bool) -> Result<String, Errno> {
    let a: std::net::SocketAddrV4 = addr.parse().map_err(|_| Errno::EINVAL)?;
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            protocol,
        );
        if fd < 0 {
            return Err(Errno::last());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let ptr = (&sin as *const libc::sockaddr_in).cast::<libc::sockaddr>();
        let ret = if fastopen {
            libc::sendto(
                fd,
                b"probe".as_ptr().cast(),
                5,
                libc::MSG_FASTOPEN,
                ptr,
                len,
            ) as i32
        } else {
            libc::connect(fd, ptr, len)
        };
        let err = Errno::last();
        libc::close(fd);
        if ret < 0 {
            return Err(err);
        }
    }
    Ok(String::new())
}

/// Attaches the System V shared memory segment `key` (decimal) and reads its first bytes.
fn shm_read(key: &str) -> Result<String, Errno> {
    let key: i32 = key.parse().map_err(|_| Errno::EINVAL)?;
    // SAFETY: shmget/shmat/shmdt on a segment this function only reads, then detaches.
    unsafe {
        let id = libc::shmget(key, 0, 0);
        if id < 0 {
            return Err(Errno::last());
        }
        let at = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
        if at as isize == -1 {
            return Err(Errno::last());
        }
        let bytes = std::slice::from_raw_parts(at.cast::<u8>(), 16).to_vec();
        libc::shmdt(at);
        Ok(format!(
            "read {:?}",
            String::from_utf8_lossy(&bytes).trim_end_matches('\0')
        ))
    }
}

/// Starts `n` processes that each leave the action's session (setsid), then returns at once;
/// each writes its pid into `file` every 100 ms for a minute. What runs after the action ended
/// is what the sandbox failed to kill.
fn spawn_detached(n: &str, file: &str) -> Result<String, Errno> {
    let n: u32 = n.parse().map_err(|_| Errno::EINVAL)?;
    for _ in 0..n {
        // SAFETY: the child only calls setsid, fork, write and _exit-free loops on a file.
        match unsafe { libc::fork() } {
            -1 => return Err(Errno::last()),
            0 => {
                // SAFETY: as above, in the child.
                unsafe {
                    libc::setsid();
                    if libc::fork() != 0 {
                        libc::_exit(0);
                    }
                    // Holds nothing of the caller's: its pipes end when the probe does.
                    libc::close(0);
                    libc::close(1);
                    libc::close(2);
                }
                for _ in 0..600 {
                    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(file) {
                        let _ = writeln!(f, "{}", std::process::id());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                // SAFETY: leaves the child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            child => {
                let mut st = 0;
                // SAFETY: reaps the intermediate child.
                unsafe { libc::waitpid(child, &mut st, 0) };
            }
        }
    }
    Ok(format!("{n} started"))
}

/// One process that keeps moving: every millisecond it forks, leaves its session (setsid) and
/// lets the parent exit, for a minute, writing its pid into `file` every 100 ms. Killing it
/// means catching a pid that changes a thousand times a second.
fn fork_hop(file: &str) -> Result<String, Errno> {
    // SAFETY: the child only forks, calls setsid, writes a file and exits.
    match unsafe { libc::fork() } {
        -1 => return Err(Errno::last()),
        0 => {}
        _ => return Ok("hopping".into()),
    }
    // SAFETY: closing this process's own standard descriptors.
    unsafe {
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
    let start = std::time::Instant::now();
    let mut last = start;
    while start.elapsed() < std::time::Duration::from_secs(60) {
        // SAFETY: as above.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: as above.
                unsafe { libc::setsid() };
            }
            // SAFETY: the parent leaves at once, without destructors.
            _ => unsafe { libc::_exit(0) },
        }
        if last.elapsed() >= std::time::Duration::from_millis(100) {
            last = std::time::Instant::now();
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(file) {
                let _ = writeln!(f, "{}", std::process::id());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

/// A chain of `n` live processes, each the child of the one before and in its own session:
/// killing the first only hands the second to the reaper, and so on down the chain. Each writes
/// its pid into `file` every 100 ms for a minute. Returns once the first one is started.
fn spawn_chain(n: &str, file: &str) -> Result<String, Errno> {
    let n: u32 = n.parse().map_err(|_| Errno::EINVAL)?;
    // SAFETY: the children only fork, call setsid, write a file and exit.
    match unsafe { libc::fork() } {
        -1 => return Err(Errno::last()),
        0 => {}
        _ => {
            // Returns once the whole chain stands (its last link has written).
            for _ in 0..500 {
                if std::fs::metadata(file).is_ok_and(|m| m.len() > 0) {
                    return Ok(format!("a chain of {n} started"));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            return Err(Errno::ETIMEDOUT);
        }
    }
    // SAFETY: closing this process's own standard descriptors.
    unsafe {
        libc::setsid();
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
    let mut last = true;
    for _ in 1..n {
        // SAFETY: as above; the parent stays in the chain below.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: as above.
                unsafe { libc::setsid() };
            }
            _ => {
                last = false;
                break;
            }
        }
    }
    if !last {
        // Only the last link writes at once: the chain then stands.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    for _ in 0..600 {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(file) {
            let _ = writeln!(f, "{}", std::process::id());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: leaves without the parent's destructors.
    unsafe { libc::_exit(0) }
}

/// Accepts one connection on the listener the runner bound for `addr` (a declared bind).
fn accept_inherited(addr: &str) -> Result<String, Errno> {
    let l = crate::backend::native::inherited_listener(addr).ok_or(Errno::EBADF)?;
    crate::show!("listening");
    let (_s, peer) = io(l.accept())?;
    Ok(format!("accepted {peer}"))
}

/// Maps `path` executable, as the dynamic loader does for `ld.so FILE` (which needs no execute
/// permission on FILE, only a mapping with PROT_EXEC).
fn mmap_exec(path: &str) -> Result<String, Errno> {
    let f = io(std::fs::File::open(path))?;
    // SAFETY: maps one page of a file read-only and executable, unmaps it at once; the memory is
    // never touched.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        libc::munmap(p, 4096);
    }
    Ok("mapped executable".into())
}
