//! The seccomp filter on the real kernel, as root. Each scenario forks a child that sets
//! no_new_privs, installs the filter (`bbr_runner::sandbox::seccomp`) and attempts one escape;
//! the child reports through a pipe and the parent asserts. Every refusal comes with
//!
//! - its control: the same operation in a child without the filter succeeds, so the refusal is
//!   the filter's and not the kernel's or the machine's, and
//! - an allowed neighbour: a close, legitimate operation succeeds under the same filter, so the
//!   filter does not simply break the area.
//!
//! A control that cannot succeed on this kernel fails the test with a message; nothing is
//! skipped.

mod support;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;

use bbr_runner::sandbox::seccomp::{self, Policy, Program};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// What the child saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The operation succeeded.
    Ok,
    /// The operation failed with this errno.
    Errno(Errno),
    /// The scenario's own preparation failed (not the operation).
    Setup(Errno),
    /// Setting no_new_privs or installing the filter failed.
    Install(Errno),
    /// The child died without reporting (killed by the filter, a panic, ...).
    Died(String),
}

type Res = Result<(), Errno>;

const EVERYTHING: Policy = Policy {
    unix: true,
    tcp: true,
    udp: true,
};
const TCP_ONLY: Policy = Policy {
    unix: false,
    tcp: true,
    udp: false,
};

fn filter(policy: Policy) -> Program {
    support::require_root();
    seccomp::compile(&policy).expect("the filter compiles")
}

/// `ret < 0` is a failure with errno, as every raw call here reports.
fn check(ret: libc::c_long) -> Res {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn check_fd(ret: libc::c_long) -> Res {
    check(ret)?;
    // SAFETY: a successful call returned a new descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(ret as i32) });
    Ok(())
}

fn nothing() -> Res {
    Ok(())
}

/// Runs `setup` (unfiltered), then no_new_privs, the filter when given, and `op` in a forked
/// child, and returns what it saw.
fn in_child(program: Option<&Program>, setup: &dyn Fn() -> Res, op: &dyn Fn() -> Res) -> Outcome {
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child runs only the scenario and always leaves through `_exit`; it never
    // returns into the test harness, and the harness's other threads are not touched.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read_end);
            let stages = || -> (u32, i32) {
                if let Err(e) = setup() {
                    return (1, e as i32);
                }
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    return (2, Errno::last() as i32);
                }
                if let Some(program) = program {
                    if let Err(e) = program.install() {
                        return (2, e.raw_os_error().unwrap_or(0));
                    }
                }
                match op() {
                    Ok(()) => (0, 0),
                    Err(e) => (3, e as i32),
                }
            };
            let (stage, errno) =
                std::panic::catch_unwind(AssertUnwindSafe(stages)).unwrap_or((9, 0));
            let mut report = [0u8; 8];
            report[..4].copy_from_slice(&stage.to_ne_bytes());
            report[4..].copy_from_slice(&errno.to_ne_bytes());
            // SAFETY: writes 8 bytes from a local buffer to our end of the pipe, then leaves
            // without running the harness's destructors or atexit handlers.
            unsafe {
                libc::write(write_end.as_raw_fd(), report.as_ptr().cast(), report.len());
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut report = Vec::new();
            std::fs::File::from(read_end)
                .read_to_end(&mut report)
                .expect("read the child's report");
            let status = waitpid(child, None).expect("waitpid");
            if report.len() != 8 {
                return Outcome::Died(format!("{status:?}"));
            }
            let stage = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
            let errno =
                Errno::from_raw(i32::from_ne_bytes(report[4..].try_into().expect("4 bytes")));
            match stage {
                0 => Outcome::Ok,
                1 => Outcome::Setup(errno),
                2 => Outcome::Install(errno),
                3 => Outcome::Errno(errno),
                _ => Outcome::Died(format!("panicked in the child ({status:?})")),
            }
        }
    }
}

/// The three runs every refusal needs: the control without the filter succeeds, the escape
/// under the filter gets `denied_with`, the neighbour under the filter succeeds.
fn refused(
    what: &str,
    program: &Program,
    setup: &dyn Fn() -> Res,
    escape: &dyn Fn() -> Res,
    denied_with: Errno,
    neighbour: &dyn Fn() -> Res,
) {
    assert_eq!(
        in_child(None, setup, escape),
        Outcome::Ok,
        "control: without the filter, {what} must succeed here (else this test proves nothing)"
    );
    assert_eq!(
        in_child(Some(program), setup, escape),
        Outcome::Errno(denied_with),
        "under the filter, {what} must be refused"
    );
    assert_eq!(
        in_child(Some(program), setup, neighbour),
        Outcome::Ok,
        "under the filter, the allowed neighbour of {what} must succeed"
    );
}

/// fork, the child `_exit`s at once, the parent reaps it.
fn fork_and_reap() -> Res {
    // SAFETY: the child only calls `_exit`.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(Errno::last()),
        0 => unsafe { libc::_exit(0) },
        pid => reap(pid),
    }
}

fn reap(pid: libc::pid_t) -> Res {
    match waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, 0)) | Ok(WaitStatus::Signaled(..)) => Ok(()),
        Ok(_) => Err(Errno::ECHILD),
        Err(e) => Err(e),
    }
}

/// A raw `clone` with `flags`, fork-like (no new stack): the child `_exit`s at once.
fn raw_clone(flags: i32) -> Res {
    // SAFETY: no CLONE_VM, so the child gets a copy of this stack, as with fork, and only calls
    // `_exit`. The other arguments (stack, tids, tls) are zero.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_long,
            0,
            0,
            0,
            0,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => unsafe { libc::_exit(0) },
        pid => reap(pid as libc::pid_t),
    }
}

fn unshare(flags: i32) -> Res {
    // SAFETY: integer argument only.
    check(unsafe { libc::unshare(flags) }.into())
}

fn socket(domain: i32, ty: i32, protocol: i32) -> Res {
    // SAFETY: integer arguments only; the descriptor is closed by `check_fd`.
    check_fd(unsafe { libc::socket(domain, ty, protocol) }.into())
}

fn socketpair(domain: i32) -> Res {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::socketpair(domain, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }.into())?;
    for fd in fds {
        // SAFETY: both descriptors are new and ours.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(())
}

// ---------------------------------------------------------------- namespaces

#[test]
fn cannot_create_a_user_namespace() {
    let f = filter(EVERYTHING);
    refused(
        "unshare(CLONE_NEWUSER)",
        &f,
        &nothing,
        &|| unshare(libc::CLONE_NEWUSER),
        Errno::EPERM,
        &fork_and_reap,
    );
    refused(
        "unshare(CLONE_NEWNET)",
        &f,
        &nothing,
        &|| unshare(libc::CLONE_NEWNET),
        Errno::EPERM,
        &fork_and_reap,
    );
}

#[test]
fn cannot_clone_into_new_namespaces() {
    let f = filter(EVERYTHING);
    for (name, flag) in [
        ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
        ("CLONE_NEWNS", libc::CLONE_NEWNS),
        ("CLONE_NEWPID", libc::CLONE_NEWPID),
        ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ] {
        refused(
            &format!("clone({name})"),
            &f,
            &nothing,
            &|| raw_clone(flag),
            Errno::EPERM,
            &|| raw_clone(0),
        );
    }
}

#[test]
fn cannot_join_another_namespace() {
    let f = filter(EVERYTHING);
    let path = CString::new("/proc/self/ns/uts").expect("path");
    let setns = || -> Res {
        let file = std::fs::File::open("/proc/self/ns/uts").map_err(|_| Errno::ENOENT)?;
        // SAFETY: integer arguments only; `file` outlives the call.
        check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWUTS) }.into())
    };
    let read_link = || -> Res {
        let mut buf = [0u8; 64];
        // SAFETY: `path` is a C string, `buf` is writable for its length.
        check(
            unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
                as libc::c_long,
        )
    };
    refused(
        "setns into a UTS namespace",
        &f,
        &nothing,
        &setns,
        Errno::EPERM,
        &read_link,
    );
}

/// The layout of `struct clone_args` up to CLONE_ARGS_SIZE_VER0 (64 bytes).
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
}

fn clone3(flags: u64) -> Res {
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM the child gets
    // a copy of this stack, as with fork, and only calls `_exit`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => unsafe { libc::_exit(0) },
        pid => reap(pid as libc::pid_t),
    }
}

#[test]
fn clone3_answers_enosys_so_glibc_falls_back_to_clone() {
    let f = filter(EVERYTHING);
    // clone3's flags are in memory the filter cannot read: refused whatever they are.
    refused(
        "clone3 (plain)",
        &f,
        &nothing,
        &|| clone3(0),
        Errno::ENOSYS,
        &fork_and_reap,
    );
    refused(
        "clone3(CLONE_NEWUSER)",
        &f,
        &nothing,
        &|| clone3(libc::CLONE_NEWUSER as u64),
        Errno::ENOSYS,
        &fork_and_reap,
    );
    // glibc (2.34 on) starts threads with clone3 and falls back to clone on ENOSYS.
    let thread = || -> Res {
        std::thread::spawn(|| 42)
            .join()
            .map_err(|_| Errno::EIO)
            .and_then(|v| if v == 42 { Ok(()) } else { Err(Errno::EIO) })
    };
    assert_eq!(
        in_child(Some(&f), &nothing, &thread),
        Outcome::Ok,
        "a thread starts under the filter"
    );
}

// ---------------------------------------------------------------- mounts

#[test]
fn cannot_mount_a_tmpfs() {
    let f = filter(EVERYTHING);
    let dir = tempfile::tempdir().expect("tempdir");
    let target = CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
    let tmpfs = CString::new("tmpfs").expect("tmpfs");
    let root = CString::new("/").expect("/");
    // The child's own mount namespace, private, so neither the control's mount nor anything
    // else reaches the host's mount table. Done before the filter (which refuses both calls).
    let own_namespace = || -> Res {
        unshare(libc::CLONE_NEWNS)?;
        // SAFETY: C strings and null pointers, as mount(2) takes them.
        check(
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            }
            .into(),
        )
    };
    let mount = || -> Res {
        // SAFETY: C strings and a null data pointer.
        check(
            unsafe {
                libc::mount(
                    tmpfs.as_ptr(),
                    target.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            }
            .into(),
        )
    };
    let fsopen = || -> Res {
        // SAFETY: a C string and an integer.
        check_fd(unsafe { libc::syscall(libc::SYS_fsopen, tmpfs.as_ptr(), 0) })
    };
    let chroot = || -> Res {
        // SAFETY: a C string.
        check(unsafe { libc::chroot(root.as_ptr()) }.into())
    };
    let write_in_dir = || -> Res {
        std::fs::write(dir.path().join("file"), b"x")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    };
    refused(
        "mount(tmpfs)",
        &f,
        &own_namespace,
        &mount,
        Errno::EPERM,
        &write_in_dir,
    );
    refused(
        "fsopen(tmpfs)",
        &f,
        &own_namespace,
        &fsopen,
        Errno::EPERM,
        &write_in_dir,
    );
    refused(
        "chroot(/)",
        &f,
        &own_namespace,
        &chroot,
        Errno::EPERM,
        &write_in_dir,
    );
    // The host's mount table never saw the tmpfs.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(dir.path().to_str().expect("utf-8")),
        "the control's mount leaked to the host"
    );
}

// ---------------------------------------------------------------- keys, ptrace, kernel surfaces

#[test]
fn cannot_touch_the_kernel_keyring() {
    let f = filter(EVERYTHING);
    let join = || -> Res {
        // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a null name: a new anonymous keyring.
        check(unsafe { libc::syscall(libc::SYS_keyctl, libc::KEYCTL_JOIN_SESSION_KEYRING, 0) })
    };
    let setsid = || -> Res {
        // SAFETY: no arguments.
        check(unsafe { libc::setsid() }.into())
    };
    refused(
        "keyctl(KEYCTL_JOIN_SESSION_KEYRING)",
        &f,
        &nothing,
        &join,
        Errno::EPERM,
        &setsid,
    );
}

/// Forks a child that waits to be killed, runs `with(pid)`, then kills and reaps it.
fn with_sleeping_child(with: &dyn Fn(libc::pid_t) -> Res) -> Res {
    // SAFETY: the child only pauses until killed, then `_exit`s.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => return Err(Errno::last()),
        0 => loop {
            unsafe {
                libc::pause();
            }
        },
        _ => {}
    }
    let result = with(pid);
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid)?;
    result
}

#[test]
fn cannot_ptrace_or_read_another_process() {
    let f = filter(EVERYTHING);
    let attach = || {
        with_sleeping_child(&|pid| {
            // SAFETY: PTRACE_ATTACH to our own child; it is killed right after.
            check(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) })
        })
    };
    let read_memory = || {
        with_sleeping_child(&|pid| {
            // Reads the child's copy of a local (fork keeps addresses).
            let value = 7u64;
            let mut out = 0u64;
            let local = libc::iovec {
                iov_base: (&mut out as *mut u64).cast(),
                iov_len: 8,
            };
            let remote = libc::iovec {
                iov_base: (&value as *const u64).cast_mut().cast(),
                iov_len: 8,
            };
            // SAFETY: one iovec each side, both 8 bytes; `out` is writable.
            check(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)
        })
    };
    let signal = || {
        with_sleeping_child(&|pid| {
            // SAFETY: signals our own child.
            check(unsafe { libc::kill(pid, libc::SIGTERM) }.into())
        })
    };
    refused(
        "ptrace(PTRACE_ATTACH) to a child",
        &f,
        &nothing,
        &attach,
        Errno::EPERM,
        &signal,
    );
    refused(
        "process_vm_readv of a child",
        &f,
        &nothing,
        &read_memory,
        Errno::EPERM,
        &signal,
    );
}

#[test]
fn cannot_set_up_io_uring() {
    let f = filter(EVERYTHING);
    let setup = || -> Res {
        let mut params = [0u8; 120];
        // SAFETY: `params` is a zeroed struct io_uring_params (120 bytes).
        check_fd(unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) })
    };
    let epoll = || -> Res {
        // SAFETY: an integer argument.
        check_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }.into())
    };
    refused("io_uring_setup", &f, &nothing, &setup, Errno::EPERM, &epoll);
}

#[test]
fn cannot_load_ebpf() {
    let f = filter(EVERYTHING);
    let map = || -> Res {
        // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
        let mut attr = [0u32; 32];
        attr[..4].copy_from_slice(&[2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1]);
        // SAFETY: `attr` is a zeroed bpf_attr of the size passed.
        check_fd(unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0, /* BPF_MAP_CREATE */
                attr.as_ptr(),
                128,
            )
        })
    };
    let classic = || -> Res {
        // Classic BPF on a socket (SO_ATTACH_FILTER) stays allowed: accept every packet.
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().map_err(|_| Errno::EIO)?;
        let code = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0xffff,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: code.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `code`, both live across the call.
        check(
            unsafe {
                libc::setsockopt(
                    a.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_FILTER,
                    (&prog as *const libc::sock_fprog).cast(),
                    std::mem::size_of::<libc::sock_fprog>() as u32,
                )
            }
            .into(),
        )
    };
    refused(
        "bpf(BPF_MAP_CREATE)",
        &f,
        &nothing,
        &map,
        Errno::EPERM,
        &classic,
    );
}

#[test]
fn cannot_open_perf_events() {
    let f = filter(EVERYTHING);
    let perf = || -> Res {
        // struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size, config, then the
        // flag bits at byte 40: disabled (0), exclude_kernel (5), exclude_hv (6).
        let mut attr = [0u8; 64];
        attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
        attr[4..8].copy_from_slice(&64u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&1u64.to_ne_bytes()); // PERF_COUNT_SW_TASK_CLOCK
        attr[40..48].copy_from_slice(&(1u64 | 1 << 5 | 1 << 6).to_ne_bytes());
        // SAFETY: `attr` is a valid perf_event_attr of the size it states; self, any CPU.
        check_fd(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) })
    };
    let cpu_clock = || -> Res {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is writable.
        check(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) }.into())
    };
    refused(
        "perf_event_open(task clock)",
        &f,
        &nothing,
        &perf,
        Errno::EPERM,
        &cpu_clock,
    );
}

#[test]
fn cannot_create_a_userfaultfd() {
    let f = filter(EVERYTHING);
    let uffd = || -> Res {
        // SAFETY: an integer argument.
        check_fd(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) })
    };
    let memfd = || -> Res {
        let name = c"scratch";
        // SAFETY: a C string and an integer.
        check_fd(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) }.into())
    };
    refused("userfaultfd", &f, &nothing, &uffd, Errno::EPERM, &memfd);
}

#[test]
fn cannot_read_the_kernel_log() {
    let f = filter(EVERYTHING);
    let size = || -> Res {
        // SAFETY: SYSLOG_ACTION_SIZE_BUFFER (10) takes no buffer.
        check(unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) }.into())
    };
    let uname = || -> Res {
        // SAFETY: zeroed utsname is a valid out-parameter.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is writable.
        check(unsafe { libc::uname(&mut u) }.into())
    };
    refused(
        "syslog(SIZE_BUFFER)",
        &f,
        &nothing,
        &size,
        Errno::EPERM,
        &uname,
    );
}

#[test]
fn cannot_turn_off_address_randomisation() {
    let f = filter(EVERYTHING);
    let no_aslr = || -> Res {
        // SAFETY: an integer argument.
        check(unsafe { libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) }.into())
    };
    let query = || -> Res {
        // SAFETY: 0xffffffff only queries.
        check(unsafe { libc::personality(0xffff_ffff) }.into())
    };
    refused(
        "personality(ADDR_NO_RANDOMIZE)",
        &f,
        &nothing,
        &no_aslr,
        Errno::EPERM,
        &query,
    );
}

// ---------------------------------------------------------------- x32

#[cfg(target_arch = "x86_64")]
#[test]
fn cannot_make_x32_system_calls() {
    let f = filter(EVERYTHING);
    let x32_getpid = || -> Res {
        // SAFETY: getpid under its x32 number: no arguments.
        check(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) })
    };
    let getpid = || -> Res {
        // SAFETY: no arguments.
        check(unsafe { libc::syscall(libc::SYS_getpid) })
    };
    // This machine's kernel is built without CONFIG_X86_X32_ABI, so the kernel itself already
    // answers ENOSYS and a plain control cannot tell the filter's answer from the kernel's.
    // The control is therefore a probe filter that answers ENOTRECOVERABLE to this number only:
    // alone, the call gets the probe's answer (seccomp sees the number, nothing else refuses
    // it); with our filter installed on top, the call gets ENOSYS. Of two filters answering
    // ERRNO, the kernel keeps the newer one's errno, so the ENOSYS can only be ours.
    let probe: seccompiler::BpfProgram = seccompiler::SeccompFilter::new(
        [(0x4000_0000 | libc::SYS_getpid, vec![])]
            .into_iter()
            .collect(),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::ENOTRECOVERABLE as u32),
        seccompiler::TargetArch::x86_64,
    )
    .expect("probe filter")
    .try_into()
    .expect("probe compiles");
    let install_probe = || -> Res { seccompiler::apply_filter(&probe).map_err(|_| Errno::EINVAL) };
    let unfiltered = in_child(None, &nothing, &x32_getpid);
    assert!(
        matches!(unfiltered, Outcome::Ok | Outcome::Errno(Errno::ENOSYS)),
        "without any filter, an x32 getpid either works (kernel with x32) or answers ENOSYS: {unfiltered:?}"
    );
    assert_eq!(
        in_child(None, &install_probe, &x32_getpid),
        Outcome::Errno(Errno::ENOTRECOVERABLE),
        "control: with only the probe, the x32 number reaches seccomp and nothing else refuses it"
    );
    assert_eq!(
        in_child(Some(&f), &install_probe, &x32_getpid),
        Outcome::Errno(Errno::ENOSYS),
        "our filter answers ENOSYS to x32 numbers"
    );
    assert_eq!(
        in_child(Some(&f), &nothing, &x32_getpid),
        Outcome::Errno(Errno::ENOSYS)
    );
    assert_eq!(
        in_child(Some(&f), &install_probe, &getpid),
        Outcome::Ok,
        "the native getpid passes"
    );
}

// ---------------------------------------------------------------- sockets

#[test]
fn cannot_open_netlink_packet_raw_or_vsock_sockets() {
    // Even the most open policy refuses these.
    let f = filter(EVERYTHING);
    let unix = || socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    for (what, domain, ty, protocol) in [
        (
            "socket(AF_NETLINK, NETLINK_ROUTE)",
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_ROUTE,
        ),
        (
            "socket(AF_PACKET)",
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        ),
        (
            "socket(AF_INET, SOCK_RAW, ICMP)",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        ),
        ("socket(AF_VSOCK)", libc::AF_VSOCK, libc::SOCK_STREAM, 0),
    ] {
        refused(
            what,
            &f,
            &nothing,
            &|| socket(domain, ty, protocol),
            Errno::EPERM,
            &unix,
        );
    }
}

#[test]
fn cannot_open_mptcp_or_sctp_sockets() {
    let f = filter(TCP_ONLY);
    let tcp = || {
        socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
        socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    let mptcp = || socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP);
    refused(
        "socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)",
        &f,
        &nothing,
        &mptcp,
        Errno::EPERM,
        &tcp,
    );
    let mptcp6 = || socket(libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_MPTCP);
    refused(
        "socket(AF_INET6, SOCK_STREAM, IPPROTO_MPTCP)",
        &f,
        &nothing,
        &mptcp6,
        Errno::EPERM,
        &tcp,
    );

    // SCTP: this machine's kernel is built without SCTP (CONFIG_IP_SCTP is not set), so the
    // control cannot succeed: the kernel answers EPROTONOSUPPORT. The filter answers EPERM,
    // which the kernel never gives for this call, so the difference still shows the refusal is
    // the filter's. On a kernel with SCTP the control succeeds, which is accepted too.
    let sctp = || socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP);
    let control = in_child(None, &nothing, &sctp);
    assert!(
        matches!(control, Outcome::Ok | Outcome::Errno(Errno::EPROTONOSUPPORT)),
        "control: without the filter an SCTP socket is created, or the kernel has no SCTP: {control:?}"
    );
    assert_eq!(
        in_child(Some(&f), &nothing, &sctp),
        Outcome::Errno(Errno::EPERM),
        "SCTP under the filter"
    );
    let sctp_seq = || socket(libc::AF_INET, libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP);
    assert_eq!(
        in_child(Some(&f), &nothing, &sctp_seq),
        Outcome::Errno(Errno::EPERM),
        "SCTP one-to-many under the filter"
    );
    assert_eq!(in_child(Some(&f), &nothing, &tcp), Outcome::Ok);
}

#[test]
fn cannot_open_udp_sockets_unless_the_policy_allows_udp() {
    let udp = || {
        socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        socket(
            libc::AF_INET6,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
            libc::IPPROTO_UDP,
        )
    };
    let tcp = || socket(libc::AF_INET, libc::SOCK_STREAM, 0);
    refused(
        "UDP sockets with policy.udp = false",
        &filter(TCP_ONLY),
        &nothing,
        &udp,
        Errno::EPERM,
        &tcp,
    );
    let with_udp = filter(Policy {
        udp: true,
        ..TCP_ONLY
    });
    assert_eq!(
        in_child(Some(&with_udp), &nothing, &udp),
        Outcome::Ok,
        "UDP with policy.udp = true"
    );
    // UDP-Lite is another protocol on SOCK_DGRAM: refused even then.
    let udplite = || socket(libc::AF_INET, libc::SOCK_DGRAM, 136);
    refused(
        "UDP-Lite",
        &with_udp,
        &nothing,
        &udplite,
        Errno::EPERM,
        &udp,
    );
}

#[test]
fn cannot_open_unix_sockets_unless_the_policy_allows_unix() {
    let unix = || socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
    let pair = || socketpair(libc::AF_UNIX);
    let tcp = || socket(libc::AF_INET, libc::SOCK_STREAM, 0);
    let without = filter(TCP_ONLY);
    refused(
        "socket(AF_UNIX) with policy.unix = false",
        &without,
        &nothing,
        &unix,
        Errno::EPERM,
        &tcp,
    );
    refused(
        "socketpair(AF_UNIX) with policy.unix = false",
        &without,
        &nothing,
        &pair,
        Errno::EPERM,
        &tcp,
    );
    let with = filter(Policy {
        unix: true,
        ..TCP_ONLY
    });
    assert_eq!(in_child(Some(&with), &nothing, &unix), Outcome::Ok);
    assert_eq!(in_child(Some(&with), &nothing, &pair), Outcome::Ok);
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn tcp_socket() -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd.into())?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn local_listener() -> (TcpListener, SocketAddrV4) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on loopback");
    let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("address") else {
        unreachable!("bound to an IPv4 address")
    };
    (listener, addr)
}

#[test]
fn cannot_connect_with_tcp_fast_open() {
    let f = filter(TCP_ONLY);
    // The listener's backlog completes the handshakes; nothing needs to accept.
    let (_listener, addr) = local_listener();
    let sa = sockaddr(addr);
    let salen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let sendto_fastopen = || -> Res {
        let s = tcp_socket()?;
        // SAFETY: one byte from a static buffer; `sa` is a valid sockaddr_in of `salen` bytes.
        let n = unsafe {
            libc::sendto(
                s.as_raw_fd(),
                b"x".as_ptr().cast(),
                1,
                libc::MSG_FASTOPEN,
                (&sa as *const libc::sockaddr_in).cast(),
                salen,
            )
        };
        check(n as libc::c_long)
    };
    let sendmsg_fastopen = || -> Res {
        let s = tcp_socket()?;
        let mut iov = libc::iovec {
            iov_base: b"x".as_ptr().cast_mut().cast(),
            iov_len: 1,
        };
        // SAFETY: zeroed msghdr, then its fields set to live locals.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&sa as *const libc::sockaddr_in).cast_mut().cast();
        msg.msg_namelen = salen;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: `msg` points at live locals.
        check(unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_FASTOPEN) } as libc::c_long)
    };
    let connect_and_send = || -> Res {
        let mut stream =
            TcpStream::connect(addr).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        stream
            .write_all(b"x")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let s = tcp_socket()?;
        // SAFETY: `sa` is a valid sockaddr_in of `salen` bytes.
        check(
            unsafe {
                libc::connect(
                    s.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    salen,
                )
            }
            .into(),
        )?;
        // SAFETY: one byte from a static buffer, no address (connected), ordinary flags.
        check(unsafe {
            libc::sendto(
                s.as_raw_fd(),
                b"y".as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
                std::ptr::null(),
                0,
            )
        } as libc::c_long)
    };
    refused(
        "sendto(MSG_FASTOPEN) to a local listener",
        &f,
        &nothing,
        &sendto_fastopen,
        Errno::EPERM,
        &connect_and_send,
    );
    refused(
        "sendmsg(MSG_FASTOPEN) to a local listener",
        &f,
        &nothing,
        &sendmsg_fastopen,
        Errno::EPERM,
        &connect_and_send,
    );
}

fn set_tcp_option(optname: i32) -> Res {
    let s = tcp_socket()?;
    let one: libc::c_int = 1;
    // SAFETY: an int option value of its size.
    check(
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                optname,
                (&one as *const libc::c_int).cast(),
                4,
            )
        }
        .into(),
    )
}

#[test]
fn cannot_set_tcp_fastopen_connect_or_tcp_repair() {
    let f = filter(TCP_ONLY);
    let nodelay = || set_tcp_option(libc::TCP_NODELAY);
    refused(
        "setsockopt(TCP_FASTOPEN_CONNECT)",
        &f,
        &nothing,
        &|| set_tcp_option(libc::TCP_FASTOPEN_CONNECT),
        Errno::EPERM,
        &nodelay,
    );
    refused(
        "setsockopt(TCP_REPAIR)",
        &f,
        &nothing,
        &|| set_tcp_option(libc::TCP_REPAIR),
        Errno::EPERM,
        &nodelay,
    );
}

// ---------------------------------------------------------------- cost

/// Prints what compiling and installing the filter cost here; no assertion on time.
#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
fn measure_compile_and_install() {
    support::require_root();
    let rounds = 1000;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(seccomp::compile(&EVERYTHING).expect("compiles"));
    }
    let compile = start.elapsed() / rounds;
    let program = seccomp::compile(&EVERYTHING).expect("compiles");
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child installs, times, reports through the pipe and `_exit`s.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read_end);
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let start = std::time::Instant::now();
            let ok = program.install().is_ok();
            let nanos = if ok {
                start.elapsed().as_nanos() as u64
            } else {
                u64::MAX
            };
            // SAFETY: 8 bytes from a local to our pipe end, then leave.
            unsafe {
                libc::write(
                    write_end.as_raw_fd(),
                    nanos.to_ne_bytes().as_ptr().cast(),
                    8,
                );
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut buf = [0u8; 8];
            std::fs::File::from(read_end)
                .read_exact(&mut buf)
                .expect("report");
            waitpid(child, None).expect("waitpid");
            let install = u64::from_ne_bytes(buf);
            assert_ne!(install, u64::MAX, "install failed");
            println!(
                "seccomp: {} instructions; compile {:?} (mean of {rounds}), install {} ns",
                program.len(),
                compile,
                install
            );
        }
    }
}
