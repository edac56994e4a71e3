//! Spreading the start-up's concurrent work over the CPUs.
//!
//! The kernel places a task just created, thread or process, on its creator's CPU, where it
//! waits until the creator blocks or its time slice ends: on the 2-CPU machine of BENCHMARKS.md
//! a thread created by a busy thread started 2.8 ms later (median; 87 of 100 on the creator's
//! CPU, the other one idle), and 0.07 ms later when moved to the other CPU at once. So work
//! meant to run alongside the creator's did not. A new thread is created on the other CPUs the
//! creator may use ([`CpuMask::others`]); the sandbox's first process is moved there once
//! created (a child not yet reaped keeps its pid), told so over a pipe. Each goes back to the
//! creator's whole set as its first step, once it runs there: pinned for longer, it could not
//! be moved to a CPU with room when its own is busy with other work (the first version kept the
//! child pinned until the cgroup step, and on a VM busy with other jobs the start got slower),
//! and the action runs on every CPU it was given.
//! Nothing here restricts anything: a failure to move a task only loses the overlap.

use std::io;

/// A set of CPUs (`cpu_set_t`).
#[derive(Clone, Copy)]
pub struct CpuMask(libc::cpu_set_t);

impl std::fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: every index is below CPU_SETSIZE, the set's size.
            .filter(|c| unsafe { libc::CPU_ISSET(*c, &self.0) })
            .collect();
        write!(f, "CpuMask{cpus:?}")
    }
}

impl CpuMask {
    /// The CPUs the calling thread may run on.
    pub fn mine() -> Option<CpuMask> {
        // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: passes the set's size and a pointer to it, valid for the call.
        let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        (ret == 0).then_some(CpuMask(set))
    }

    /// This set without the CPU the caller runs on now; `None` when nothing is left (one CPU).
    pub fn others(&self) -> Option<CpuMask> {
        // SAFETY: sched_getcpu takes no arguments.
        let now = unsafe { libc::sched_getcpu() };
        let mut set = self.0;
        match usize::try_from(now) {
            // SAFETY: the index is below CPU_SETSIZE, the set's size.
            Ok(now) if now < libc::CPU_SETSIZE as usize => unsafe { libc::CPU_CLR(now, &mut set) },
            _ => return None,
        }
        // SAFETY: CPU_COUNT reads the set only.
        let (left, all) = unsafe { (libc::CPU_COUNT(&set), libc::CPU_COUNT(&self.0)) };
        (left > 0 && left < all).then_some(CpuMask(set))
    }

    /// Makes threads created with `attr` start on this set (best effort).
    pub fn set_on(&self, attr: &mut libc::pthread_attr_t) {
        // SAFETY: an initialised attribute object; the set is copied into it.
        unsafe { libc::pthread_attr_setaffinity_np(attr, std::mem::size_of_val(&self.0), &self.0) };
    }

    /// Moves process `pid` (a child of the caller) to this set (best effort).
    pub fn move_process(&self, pid: libc::pid_t) {
        // SAFETY: passes the set's size and a pointer to it, valid for the call.
        unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&self.0), &self.0) };
    }

    /// Puts the calling thread on this set.
    pub fn set_mine(&self) -> io::Result<()> {
        // SAFETY: passes the set's size and a pointer to it, valid for the call.
        let ret = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&self.0), &self.0) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
