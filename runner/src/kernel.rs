//! What this machine can enforce: Landlock ABI and errata, namespaces, capabilities, bpm.
//! Read-only probes; the mount-namespace probe runs in a throwaway child process.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Makes the runner behave as on a kernel whose Landlock ABI is at most this (0: Landlock
/// unavailable), e.g. to run as on a Jammy stemcell (ABI 3) on a newer kernel.
pub const ABI_MAX_VAR: &str = "BBR_RUNNER_LANDLOCK_ABI_MAX";

/// Where BOSH installs bpm on a VM (bosh root `/var/vcap`).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LandlockState {
    Available,
    /// Built into the kernel but not enabled at boot (EOPNOTSUPP).
    Disabled,
    /// Not built into the kernel (ENOSYS).
    NotBuilt,
    /// ENOSYS under a seccomp filter (bpm's container answers Landlock's calls so): the kernel
    /// may well have it, this process cannot use it.
    Filtered,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    pub kernel_release: String,
    pub landlock: LandlockState,
    /// The ABI the runner uses: the kernel's, capped by `BBR_RUNNER_LANDLOCK_ABI_MAX`; 0 when
    /// Landlock is not available (or capped to 0).
    pub landlock_abi: u8,
    /// What the kernel itself reports (0 when not available).
    pub landlock_abi_kernel: u8,
    /// The cap in effect, when one is set.
    pub landlock_abi_cap: Option<u8>,
    /// Bit mask of fixed Landlock errata (bit 0 = erratum 1 ...).
    pub landlock_errata: u32,
    pub is_root: bool,
    /// `None`: not probed (probing costs a fork; `exec` probes only when a socket needs it).
    pub mount_namespace: Option<bool>,
    pub capability_changes: bool,
    /// Root with CAP_SYS_ADMIN: the runner can give the action namespaces (not in a container
    /// that dropped it).
    pub namespaces: bool,
    /// This process already runs under a seccomp filter (`Seccomp: 2` in /proc/self/status):
    /// inside bpm's container, bpm's; not under `unsafe.privileged`, which has none.
    pub seccomp_filtered: bool,
    pub bpm: Option<PathBuf>,
}

const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
const LANDLOCK_CREATE_RULESET_ERRATA: libc::c_ulong = 2;

fn landlock_query(flag: libc::c_ulong) -> Result<i64, i32> {
    // SAFETY: landlock_create_ruleset with a NULL attribute and size 0 only queries the kernel.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            flag,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret)
    }
}

/// A bad `BBR_RUNNER_LANDLOCK_ABI_MAX`.
#[derive(Debug, thiserror::Error)]
pub enum AbiCapError {
    /// Not a number from 0 to 10 (`value` as set).
    #[error("{ABI_MAX_VAR}={value}: expected a Landlock ABI from 0 (Landlock unavailable) to 10")]
    Invalid { value: String },
    /// Not valid Unicode.
    #[error("{ABI_MAX_VAR}: {0}")]
    Unreadable(#[source] std::env::VarError),
}

/// The cap from `BBR_RUNNER_LANDLOCK_ABI_MAX`: `None` when unset or empty. `main` refuses a
/// bad value before any command runs, so later readers may ignore the error.
pub fn abi_cap() -> Result<Option<u8>, AbiCapError> {
    match std::env::var(ABI_MAX_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => match v.trim().parse::<u8>().ok().filter(|n| *n <= 10) {
            Some(n) => Ok(Some(n)),
            None => Err(AbiCapError::Invalid { value: v }),
        },
        Err(e) => Err(AbiCapError::Unreadable(e)),
    }
}

/// The Landlock ABI the runner uses (the kernel's, capped) and the kernel's own state.
pub fn landlock_abi() -> (LandlockState, u8) {
    let (state, abi) = kernel_landlock_abi();
    match abi_cap().ok().flatten() {
        Some(cap) => (state, abi.min(cap)),
        None => (state, abi),
    }
}

/// The running kernel's Landlock ABI (0 when not available) and its state, without the cap.
pub fn kernel_landlock_abi() -> (LandlockState, u8) {
    match landlock_query(LANDLOCK_CREATE_RULESET_VERSION) {
        Ok(v) => (LandlockState::Available, u8::try_from(v).unwrap_or(u8::MAX)),
        Err(libc::EOPNOTSUPP) => (LandlockState::Disabled, 0),
        Err(libc::ENOSYS) if seccomp_filtered() => (LandlockState::Filtered, 0),
        Err(_) => (LandlockState::NotBuilt, 0),
    }
}

/// This process runs under a seccomp filter (`Seccomp: 2` in /proc/self/status).
pub fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim() == "2"))
        })
        .unwrap_or(false)
}

pub fn mount_namespace_possible() -> bool {
    // SAFETY: the child only calls unshare and _exit, both async-signal-safe.
    match unsafe { libc::fork() } {
        0 => {
            let ok = unsafe { libc::unshare(libc::CLONE_NEWNS) } == 0;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: waiting for the child we just forked.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
        _ => false,
    }
}

/// Where bpm is on a VM under `root`: the job wrapper (raises NOFILE), then the package binary.
/// `kernel` and `run` look in the same places.
pub fn find_bpm(root: &Path) -> Option<PathBuf> {
    bpm_locations(root).into_iter().find(|p| p.is_file())
}

/// The places [`find_bpm`] looks, in order.
pub fn bpm_locations(root: &Path) -> [PathBuf; 2] {
    [
        root.join("jobs/bpm/bin/bpm"),
        root.join("packages/bpm/bin/bpm"),
    ]
}

/// What `exec` and `run` need, without the forked mount-namespace probe.
pub fn probe_for_run() -> KernelInfo {
    KernelInfo {
        mount_namespace: None,
        ..probe_common()
    }
}

pub fn probe() -> KernelInfo {
    KernelInfo {
        mount_namespace: Some(mount_namespace_possible()),
        ..probe_common()
    }
}

fn probe_common() -> KernelInfo {
    let (landlock, landlock_abi_kernel) = kernel_landlock_abi();
    let landlock_abi_cap = abi_cap().ok().flatten();
    let landlock_abi = landlock_abi_cap.map_or(landlock_abi_kernel, |c| c.min(landlock_abi_kernel));
    let landlock_errata = match landlock_query(LANDLOCK_CREATE_RULESET_ERRATA) {
        Ok(v) => u32::try_from(v).unwrap_or(0),
        Err(_) => 0,
    };
    let is_root = nix::unistd::geteuid().is_root();
    let capability_changes =
        caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP)
            .unwrap_or(false)
            && caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETUID)
                .unwrap_or(false);
    let seccomp_filtered = seccomp_filtered();
    KernelInfo {
        seccomp_filtered,
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        landlock,
        landlock_abi,
        landlock_abi_kernel,
        landlock_abi_cap,
        landlock_errata,
        is_root,
        mount_namespace: None,
        capability_changes,
        namespaces: is_root
            && caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_ADMIN,
            )
            .unwrap_or(false),
        bpm: find_bpm(Path::new(crate::job::DEFAULT_ROOT)),
    }
}
