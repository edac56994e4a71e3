//! The one seam for privileged operations. `LinuxSyscall` does them; the recording double in
//! the tests lists them, so the order of enforcement is tested without root.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::Path;

use crate::plan::{EntryKind, LandlockPlan, Rlimit};

/// How a granted path is mounted in the action's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindFlags {
    pub read_only: bool,
    pub no_exec: bool,
    pub no_dev: bool,
}

/// What the supervisor did about the run's cgroup (`sandbox::cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The cgroup is made: join it by writing `0` to each of these (its join files, one per
    /// hierarchy, open for writing; this process owns them).
    Join(Vec<RawFd>),
    /// No cgroup: `processes` and `memory` apply as rlimits.
    Rlimits,
    /// The cgroup was made but the process could not be moved into it.
    Failed(String),
}

/// What Landlock reported after `restrict_self`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockOutcome {
    FullyEnforced,
    PartiallyEnforced,
    NotEnforced,
}

pub trait Syscall {
    /// Reads the supervisor's word on the run's cgroup from `fd` (one message, with the join
    /// files when it made the cgroup), then closes `fd`.
    fn await_cgroup(&self, fd: RawFd) -> io::Result<Placement>;
    /// Moves the calling thread (the process: it has no other) into the cgroup whose join file
    /// is open as `fd`, by writing `0`; then closes `fd`.
    fn join_cgroup(&self, fd: RawFd) -> io::Result<()>;
    /// Waits for the supervisor's word on `fd` (it has moved this process off its own CPU;
    /// end of file if it could not), closes `fd`, then puts this process on the CPUs of `mask`.
    fn back_on_all_cpus(&self, fd: RawFd, mask: &crate::cpus::CpuMask) -> io::Result<()>;
    fn unshare_mount_namespace(&self) -> io::Result<()>;
    fn make_mounts_private(&self) -> io::Result<()>;
    /// An `O_PATH` descriptor that keeps `path` reachable after its directory is covered.
    fn open_path(&self, path: &Path) -> io::Result<RawFd>;
    fn mount_tmpfs(&self, dir: &Path) -> io::Result<()>;
    fn create_file(&self, path: &Path) -> io::Result<()>;
    fn bind_mount_fd(&self, fd: RawFd, target: &Path) -> io::Result<()>;
    fn remount_readonly(&self, dir: &Path) -> io::Result<()>;
    /// The view's root: an empty tmpfs (nosuid, nodev, noexec) mounted on `dir`.
    fn mount_view_root(&self, dir: &Path) -> io::Result<()>;
    /// `mkdir -p`, mode 0755.
    fn make_dir(&self, path: &Path) -> io::Result<()>;
    /// `pivot_root(new_root, put_old)`, then `chdir("/")`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// A fresh proc of the calling process's pid namespace (nosuid, nodev, noexec).
    /// Mounts a fresh proc (nosuid, nodev, noexec; read-only when asked) on `target`.
    fn mount_proc(&self, target: &Path, read_only: bool) -> io::Result<()>;
    /// An `O_PATH` descriptor of `path`, refused when any component is a symlink or the file
    /// is not of `kind`.
    fn open_exact(&self, path: &Path, kind: EntryKind) -> io::Result<RawFd>;
    /// Binds what `fd` names (not recursively) onto `target` with `flags` (always nosuid), set
    /// before the mount is attached. The host mount's own restrictions are kept (`ro`,
    /// `noexec`, ... are only ever added).
    fn bind_with_flags(&self, fd: RawFd, target: &Path, flags: BindFlags) -> io::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// `umount2(MNT_DETACH)`, then removes the mount point.
    fn detach(&self, path: &Path) -> io::Result<()>;
    /// Makes the view's root (the current `/`) read-only.
    fn remount_root_readonly(&self) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// Sets the loopback interface up (in a new network namespace).
    fn loopback_up(&self) -> io::Result<()>;
    /// Enters the network namespace open as `fd` (its loopback already up), closing `fd`.
    fn enter_net_namespace(&self, fd: RawFd) -> io::Result<()>;
    /// For each endpoint: its address made local on `lo`, a listener bound to it; the listeners
    /// sent to the supervisor over `channel`, then closed here.
    fn forward_listeners(
        &self,
        endpoints: &[std::net::SocketAddr],
        channel: RawFd,
    ) -> io::Result<()>;
    /// Writes a new file (mode 0644) with `text`.
    fn write_file(&self, path: &Path, text: &str) -> io::Result<()>;
    /// As the pid namespace's init: starts the action (a child exec'ing `program`), reaps, and
    /// exits with the action's status (writing the signal that killed it, if any, to
    /// `status`); never returns once the action is exec'd. `Err`: no child could be made;
    /// `Ok`: the child's exec failed, with this error.
    fn start_action(
        &self,
        status: RawFd,
        program: &CStr,
        argv: &[CString],
        env: &[CString],
    ) -> Result<io::Error, io::Error>;
    /// Installs the compiled seccomp filter (no_new_privs is already set).
    fn install_seccomp(&self, program: &super::seccomp::Program) -> io::Result<()>;
    fn set_rlimit(&self, limit: Rlimit, value: u64) -> io::Result<()>;
    fn landlock_restrict(&self, plan: &LandlockPlan) -> io::Result<LandlockOutcome>;
    fn set_keep_caps(&self, keep: bool) -> io::Result<()>;
    fn set_groups(&self, groups: &[u32]) -> io::Result<()>;
    fn set_gid(&self, gid: u32) -> io::Result<()>;
    fn set_uid(&self, uid: u32) -> io::Result<()>;
    /// Makes the effective set equal to the permitted set (to hold CAP_SETPCAP for the bounding drop).
    fn raise_effective(&self) -> io::Result<()>;
    fn drop_bounding(&self, keep: &[caps::Capability]) -> io::Result<()>;
    fn set_capset(&self, set: caps::CapSet, keep: &[caps::Capability]) -> io::Result<()>;
    /// `setsid`: a new session and process group, no controlling terminal.
    fn new_session(&self) -> io::Result<()>;
    /// `KEYCTL_JOIN_SESSION_KEYRING` with no name: a new anonymous session keyring.
    fn join_new_session_keyring(&self) -> io::Result<()>;
    /// Every signal's disposition back to its default and none blocked, as a fresh process
    /// has: nothing the caller (or the runner's own runtime) ignored or blocked is inherited.
    fn default_signals(&self) -> io::Result<()>;
    fn set_no_new_privs(&self) -> io::Result<()>;
    fn set_parent_death_signal(&self) -> io::Result<()>;
    /// Marks every descriptor above 2 close-on-exec, but those in `keep`.
    fn close_fds_above_stderr(&self, keep: &[RawFd]) -> io::Result<()>;
    /// Returns only on failure.
    fn exec(&self, program: &CStr, argv: &[CString], env: &[CString]) -> io::Error;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn to_set(keep: &[caps::Capability]) -> caps::CapsHashSet {
    keep.iter().copied().collect()
}

fn caps_io(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Syscall for LinuxSyscall {
    fn await_cgroup(&self, fd: RawFd) -> io::Result<Placement> {
        let received = recv_word(fd);
        // SAFETY: this process's end of the supervisor's socket, used only here.
        unsafe { libc::close(fd) };
        let (word, fds) = received?;
        if !fds.is_empty() {
            return Ok(Placement::Join(fds));
        }
        Ok(parse_placement(&String::from_utf8_lossy(&word)))
    }

    fn join_cgroup(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: writes one byte from a static buffer to the join file handed over by the
        // supervisor, then closes this process's copy of it.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let result = if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        result
    }

    fn back_on_all_cpus(&self, fd: RawFd, mask: &crate::cpus::CpuMask) -> io::Result<()> {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a local, then closes this process's copy of the
        // supervisor's pipe; whatever the read gives, the mask is set next.
        unsafe {
            libc::read(fd, (&mut byte as *mut u8).cast(), 1);
            libc::close(fd);
        }
        mask.set_mine()
    }

    fn unshare_mount_namespace(&self) -> io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(nix_io)
    }

    fn make_mounts_private(&self) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(nix_io)
    }

    fn open_path(&self, path: &Path) -> io::Result<RawFd> {
        use nix::fcntl::{open, OFlag};
        use nix::sys::stat::Mode;
        let fd = open(
            path,
            OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(nix_io)?;
        Ok(fd.into_raw_fd())
    }

    fn mount_tmpfs(&self, dir: &Path) -> io::Result<()> {
        tmpfs(dir, TmpfsMount::New, SOCKET_COVER)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        // One mknod rather than open and close: an empty regular file, refused if it exists.
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFREG,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            0,
        )
        .map_err(nix_io)
    }

    fn bind_mount_fd(&self, fd: RawFd, target: &Path) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        let source = format!("/proc/self/fd/{fd}");
        mount(
            Some(source.as_str()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_io)
    }

    fn remount_readonly(&self, dir: &Path) -> io::Result<()> {
        tmpfs(dir, TmpfsMount::ReadOnly, SOCKET_COVER)
    }

    fn mount_view_root(&self, dir: &Path) -> io::Result<()> {
        tmpfs(dir, TmpfsMount::New, VIEW_ROOT)
    }

    fn make_dir(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(nix_io)?;
        nix::unistd::chdir("/").map_err(nix_io)
    }

    fn mount_proc(&self, target: &Path, read_only: bool) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(Some("proc"), target, Some("proc"), flags, None::<&str>).map_err(nix_io)
    }

    fn open_exact(&self, path: &Path, kind: EntryKind) -> io::Result<RawFd> {
        let fd = openat2_no_symlinks(path)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes into `st`, which is only read after success.
        let ok = unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0;
        let mode = if ok {
            // SAFETY: fstat succeeded, so `st` is initialised.
            unsafe { st.assume_init() }.st_mode & libc::S_IFMT
        } else {
            0
        };
        let expected = match kind {
            EntryKind::Dir => mode == libc::S_IFDIR,
            EntryKind::File => mode == libc::S_IFREG,
            EntryKind::Socket => mode == libc::S_IFSOCK,
            EntryKind::Device => mode == libc::S_IFCHR || mode == libc::S_IFBLK,
        };
        if !expected {
            // SAFETY: closing the descriptor opened above.
            unsafe { libc::close(fd) };
            return Err(io::Error::other(format!(
                "`{}` is no longer a {kind:?} (changed since the plan)",
                path.display()
            )));
        }
        Ok(fd)
    }

    fn bind_with_flags(&self, fd: RawFd, target: &Path, flags: BindFlags) -> io::Result<()> {
        match bind_detached(fd, target, flags) {
            // Before 5.12 (mount_setattr) or 5.2 (open_tree, move_mount): bind, then remount.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                self.bind_mount_fd(fd, target)?;
                remount_bind(target, flags)
            }
            other => other,
        }
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn detach(&self, path: &Path) -> io::Result<()> {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(nix_io)?;
        std::fs::remove_dir(path)
    }

    fn remount_root_readonly(&self) -> io::Result<()> {
        tmpfs(Path::new("/"), TmpfsMount::ReadOnly, VIEW_ROOT)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(nix_io)
    }

    fn loopback_up(&self) -> io::Result<()> {
        super::net::loopback_up()
    }

    fn enter_net_namespace(&self, fd: RawFd) -> io::Result<()> {
        super::net::enter(fd)
    }

    fn forward_listeners(
        &self,
        endpoints: &[std::net::SocketAddr],
        channel: RawFd,
    ) -> io::Result<()> {
        use std::os::fd::{AsFd, BorrowedFd};
        let mut held = Vec::with_capacity(endpoints.len());
        for a in endpoints {
            super::net::add_local_address(a.ip())?;
            held.push(super::net::listen_on(*a)?);
        }
        let fds: Vec<BorrowedFd<'_>> = held.iter().map(|f| f.as_fd()).collect();
        // SAFETY: the channel descriptor stays open for this call (the supervisor's plan).
        let channel = unsafe { BorrowedFd::borrow_raw(channel) };
        super::net::send_fds(channel, &fds)
    }

    fn write_file(&self, path: &Path, text: &str) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)?
            .write_all(text.as_bytes())
    }

    fn start_action(
        &self,
        status: RawFd,
        program: &CStr,
        argv: &[CString],
        env: &[CString],
    ) -> Result<io::Error, io::Error> {
        super::init::start_action(status, program, argv, env)
    }

    fn install_seccomp(&self, program: &super::seccomp::Program) -> io::Result<()> {
        program.install()
    }

    fn set_rlimit(&self, limit: Rlimit, value: u64) -> io::Result<()> {
        use nix::sys::resource::{setrlimit, Resource};
        let resource = match limit {
            Rlimit::OpenFiles => Resource::RLIMIT_NOFILE,
            Rlimit::Processes => Resource::RLIMIT_NPROC,
            Rlimit::Memory => Resource::RLIMIT_AS,
            Rlimit::FileSize => Resource::RLIMIT_FSIZE,
            Rlimit::CoreFileSize => Resource::RLIMIT_CORE,
            Rlimit::CpuSeconds => Resource::RLIMIT_CPU,
        };
        setrlimit(resource, value, value).map_err(nix_io)
    }

    fn landlock_restrict(&self, plan: &LandlockPlan) -> io::Result<LandlockOutcome> {
        super::landlock::restrict(plan)
    }

    fn set_keep_caps(&self, keep: bool) -> io::Result<()> {
        nix::sys::prctl::set_keepcaps(keep).map_err(nix_io)
    }

    fn set_groups(&self, groups: &[u32]) -> io::Result<()> {
        let gids: Vec<nix::unistd::Gid> = groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).map_err(nix_io)
    }

    fn set_gid(&self, gid: u32) -> io::Result<()> {
        let g = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g).map_err(nix_io)
    }

    fn set_uid(&self, uid: u32) -> io::Result<()> {
        let u = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(nix_io)
    }

    fn raise_effective(&self) -> io::Result<()> {
        let permitted = caps::read(None, caps::CapSet::Permitted).map_err(caps_io)?;
        caps::set(None, caps::CapSet::Effective, &permitted).map_err(caps_io)
    }

    fn drop_bounding(&self, keep: &[caps::Capability]) -> io::Result<()> {
        // One PR_CAPBSET_DROP per capability number, up to the first the kernel does not know
        // (EINVAL): no read-before-drop round trips, this is on every action's start-up path.
        let keep: Vec<u8> = keep.iter().map(|c| c.index()).collect();
        for index in 0u8..64 {
            if keep.contains(&index) {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            let ret =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(index), 0, 0, 0) };
            if ret != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Ok(());
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn set_capset(&self, set: caps::CapSet, keep: &[caps::Capability]) -> io::Result<()> {
        let keep = to_set(keep);
        if matches!(set, caps::CapSet::Ambient) {
            caps::clear(None, caps::CapSet::Ambient).map_err(caps_io)?;
            for cap in keep {
                caps::raise(None, caps::CapSet::Ambient, cap).map_err(caps_io)?;
            }
            return Ok(());
        }
        if matches!(set, caps::CapSet::Permitted) {
            // capset(2) needs effective to stay within permitted: shrink it alongside.
            let effective = caps::read(None, caps::CapSet::Effective).map_err(caps_io)?;
            let within: caps::CapsHashSet = effective.intersection(&keep).copied().collect();
            caps::set(None, caps::CapSet::Effective, &within).map_err(caps_io)?;
        }
        caps::set(None, set, &keep).map_err(caps_io)
    }

    fn new_session(&self) -> io::Result<()> {
        nix::unistd::setsid().map(drop).map_err(nix_io)
    }

    fn default_signals(&self) -> io::Result<()> {
        // The kernel's struct sigaction all zero: SIG_DFL (0), no flags, an empty mask, on
        // every architecture's layout. Through the raw call so that 32 and 33, which the C
        // library keeps for itself and its wrapper refuses, are reset too.
        let dfl = [0u64; 4];
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: installs SIG_DFL (no handler code runs); `dfl` outlives the call and the
            // old action is not asked for.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                )
            };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        nix::sys::signal::SigSet::empty()
            .thread_set_mask()
            .map_err(nix_io)
    }

    fn join_new_session_keyring(&self) -> io::Result<()> {
        const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
        // SAFETY: keyctl with a null name pointer creates an anonymous keyring; no memory is
        // passed to the kernel.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        nix::sys::prctl::set_no_new_privs().map_err(nix_io)
    }

    fn set_parent_death_signal(&self) -> io::Result<()> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(nix_io)
    }

    fn close_fds_above_stderr(&self, keep: &[RawFd]) -> io::Result<()> {
        mark_cloexec_above_stderr()?;
        for fd in keep {
            // SAFETY: clears FD_CLOEXEC on a descriptor number; no memory effects.
            if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn exec(&self, program: &CStr, argv: &[CString], env: &[CString]) -> io::Error {
        match nix::unistd::execve(program, argv, env) {
            Err(e) => nix_io(e),
            Ok(never) => match never {},
        }
    }
}

/// `open_tree(OPEN_TREE_CLONE)` of what `fd` names, `mount_setattr` on the detached copy,
/// `move_mount` onto `target`: no path walk through `/proc/self/fd`, no second one to remount.
fn bind_detached(fd: RawFd, target: &Path, flags: BindFlags) -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
    const MOUNT_ATTR_RDONLY: u64 = 0x01;
    const MOUNT_ATTR_NOSUID: u64 = 0x02;
    const MOUNT_ATTR_NODEV: u64 = 0x04;
    const MOUNT_ATTR_NOEXEC: u64 = 0x08;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_tree reads the empty path; a non-negative result is a new descriptor.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd,
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tree` was just returned by open_tree and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let mut set = MOUNT_ATTR_NOSUID;
    if flags.read_only {
        set |= MOUNT_ATTR_RDONLY;
    }
    if flags.no_exec {
        set |= MOUNT_ATTR_NOEXEC;
    }
    if flags.no_dev {
        set |= MOUNT_ATTR_NODEV;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads the empty path and `attr` (its size passed), both live.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: move_mount reads the two paths, both NUL-terminated and live for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the per-mount flags of the bind mount at `target` (always nosuid): the fallback of
/// [`bind_detached`].
fn remount_bind(target: &Path, flags: BindFlags) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let mut f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    if flags.read_only {
        f |= MsFlags::MS_RDONLY;
    }
    if flags.no_exec {
        f |= MsFlags::MS_NOEXEC;
    }
    if flags.no_dev {
        f |= MsFlags::MS_NODEV;
    }
    mount(None::<&str>, target, None::<&str>, f, None::<&str>).map_err(nix_io)
}

/// One message from the supervisor's socket: its bytes and the descriptors it carries.
fn recv_word(fd: RawFd) -> io::Result<(Vec<u8>, Vec<RawFd>)> {
    use std::os::fd::{BorrowedFd, IntoRawFd};
    let mut word = [0u8; 256];
    // SAFETY: the supervisor's socket stays open for the whole call.
    let channel = unsafe { BorrowedFd::borrow_raw(fd) };
    let got = super::net::recv_fds(channel, &mut word)?;
    if got.truncated {
        // The descriptors received are closed as `got` is dropped.
        return Err(io::Error::other(
            "the supervisor sent more join files than expected",
        ));
    }
    let fds = got.fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
    Ok((word[..got.len].to_vec(), fds))
}

/// The supervisor's word on the cgroup when it carries no join files (`backend::native`):
/// `rlimits`, or `failed: WHY`.
pub fn parse_placement(word: &str) -> Placement {
    match word {
        "rlimits" => Placement::Rlimits,
        "" => Placement::Failed(
            "the supervisor ended before saying whether the action is in its cgroup".into(),
        ),
        other => Placement::Failed(other.strip_prefix("failed: ").unwrap_or(other).to_string()),
    }
}

fn mark_cloexec_above_stderr() -> io::Result<()> {
    // SAFETY: close_range only changes descriptor flags of this process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.11: mark each open descriptor by hand.
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        {
            if fd > 2 {
                // SAFETY: setting FD_CLOEXEC on a descriptor number has no memory effects.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
    Ok(())
}

/// The socket directories' cover and the view's root: small tmpfs mounts, nosuid, nodev, noexec.
const SOCKET_COVER: &str = "mode=0755,size=64k";
const VIEW_ROOT: &str = "mode=0755,size=1m,nr_inodes=4096";

#[derive(Clone, Copy)]
enum TmpfsMount {
    New,
    /// Remounted read-only (its options repeated: a tmpfs remount applies them again).
    ReadOnly,
}

fn tmpfs(dir: &Path, how: TmpfsMount, options: &str) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let source = match how {
        TmpfsMount::New => Some("tmpfs"),
        TmpfsMount::ReadOnly => {
            flags |= MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            None
        }
    };
    mount(source, dir, source, flags, Some(options)).map_err(nix_io)
}

/// `openat2(O_PATH, RESOLVE_NO_SYMLINKS)`: a component replaced by a symlink since the plan
/// resolved the path is refused, not followed.
fn openat2_no_symlinks(path: &Path) -> io::Result<RawFd> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: openat2 reads the path and `how` (its size passed) and returns a descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd as RawFd)
}
