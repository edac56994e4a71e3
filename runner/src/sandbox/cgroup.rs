//! Entering the run's cgroup. The supervisor makes the cgroup while the child builds its view,
//! so both proceed at once, then hands the child the cgroup's join files, open (one message on a
//! socket, `SCM_RIGHTS`). The child waits for that word before its rlimits step and joins by
//! writing `0` to each: nothing of the action has run and nothing has forked yet, so every
//! process the action starts is born inside and counted.
//!
//! On cgroup v1 the join file is `tasks`: the child is single-threaded, and a thread moving
//! itself takes no global lock, where a write to `cgroup.procs` (the supervisor's, or the
//! child's own) waits for an RCU grace period unless another such write came just before: 7.7 ms
//! median on this VM for one after 0.1 s without, 0.035 ms through `tasks` (`cgroup::Layout::
//! join_file`). A benchmark running the runner back to back never sees that wait; an action
//! started once in a while did, every time.
//!
//! The word without files is `rlimits` (no cgroup could be made: `processes` and `memory`
//! apply as rlimits, which the next step sets; the supervisor has said why). Anything else, or
//! nothing (the supervisor is gone), is a failure: the action does not run.

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
        Placement::Join(fds) => {
            for fd in fds {
                sys.join_cgroup(fd)
                    .map_err(|e| SandboxError::step(Step::Cgroup, "joining the run's cgroup", e))?;
            }
            Ok(Vec::new())
        }
        Placement::Rlimits => Ok(plan.cgroup_fallback.clone()),
        Placement::Failed(why) => Err(step(std::io::Error::other(why))),
    }
}
