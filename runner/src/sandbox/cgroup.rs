//! Entering the run's cgroup. The supervisor makes the cgroup and moves the child into it
//! (writing the child's pid to each `cgroup.procs`) while the child builds its view: both
//! proceed at once, and on cgroup v1 the move's wait for an RCU grace period (the kernel's
//! `cgroup_threadgroup_rwsem`) is no longer spent by the child. The child then waits for the
//! supervisor's word before its rlimits step: nothing of the action has run and nothing has
//! forked yet, so every process the action starts is born inside and counted.
//!
//! The word is `in`, `rlimits` (no cgroup could be made: `processes` and `memory` apply as
//! rlimits, which the next step sets; the supervisor has said why) or `failed: WHY` (the
//! cgroup was made but the move failed: the action does not run). Nothing, as when the
//! supervisor is gone, is a failure too.

use super::syscall::{Placement, Syscall};
use super::{SandboxError, Step};
use crate::plan::{Plan, Rlimit};

/// The child's first step when the supervisor places it: it was moved off the supervisor's CPU
/// so that both work at once (`cpus`); once it runs there, back on every CPU it was given.
pub fn start_beside(plan: &Plan, sys: &dyn Syscall) -> Result<(), SandboxError> {
    if let Some((fd, mask)) = &plan.cpu_kick {
        sys.back_on_all_cpus(*fd, mask).map_err(|e| {
            SandboxError::step(Step::Cgroup, "going back to the supervisor's CPUs", e)
        })?;
    }
    Ok(())
}

/// Returns the rlimits to set in the cgroup's place (none when the child is in it).
pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<Vec<(Rlimit, u64)>, SandboxError> {
    let Some(fd) = plan.cgroup_placement else {
        return Ok(Vec::new());
    };
    let step = |e| SandboxError::step(Step::Cgroup, "being placed in the run's cgroup", e);
    match sys.await_cgroup(fd).map_err(step)? {
        Placement::Joined => Ok(Vec::new()),
        Placement::Rlimits => Ok(plan.cgroup_fallback.clone()),
        Placement::Failed(why) => Err(step(std::io::Error::other(why))),
    }
}
