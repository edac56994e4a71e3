//! Joining the run's cgroup: the first step, while the child is still root (moving a process
//! needs it) and before anything of the action runs or forks, so every process the action
//! starts is born inside and counted. The child joins itself (writing 0, "the writer", to each
//! `cgroup.procs` the supervisor opened) rather than being moved by the supervisor after the
//! fork: there is no moment at which the child runs outside, and no handshake to get wrong.

use super::syscall::Syscall;
use super::{SandboxError, Step};
use crate::plan::Plan;

pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<(), SandboxError> {
    for fd in &plan.join_cgroup {
        sys.join_cgroup(*fd)
            .map_err(|e| SandboxError::step(Step::Cgroup, "cgroup.procs", e))?;
    }
    Ok(())
}
