//! The one seam for privileged operations. `LinuxSyscall` does them; the recording double in
//! the tests lists them, so the order of enforcement is tested without root.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::Path;

use crate::plan::{LandlockPlan, Rlimit};

/// What Landlock reported after `restrict_self`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockOutcome {
    FullyEnforced,
    PartiallyEnforced,
    NotEnforced,
}

pub trait Syscall {
    /// Moves the calling process into the cgroup whose `cgroup.procs` is open as `procs`.
    fn join_cgroup(&self, procs: RawFd) -> io::Result<()>;
    fn unshare_mount_namespace(&self) -> io::Result<()>;
    fn make_mounts_private(&self) -> io::Result<()>;
    /// An `O_PATH` descriptor that keeps `path` reachable after its directory is covered.
    fn open_path(&self, path: &Path) -> io::Result<RawFd>;
    fn mount_tmpfs(&self, dir: &Path) -> io::Result<()>;
    fn create_file(&self, path: &Path) -> io::Result<()>;
    fn bind_mount_fd(&self, fd: RawFd, target: &Path) -> io::Result<()>;
    fn remount_readonly(&self, dir: &Path) -> io::Result<()>;
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
    fn join_cgroup(&self, procs: RawFd) -> io::Result<()> {
        // SAFETY: writes one byte from a static buffer to a descriptor number.
        let n = unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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
        use nix::mount::{mount, MsFlags};
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        )
        .map_err(nix_io)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map(drop)
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
        use nix::mount::{mount, MsFlags};
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        )
        .map_err(nix_io)
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
