//! rlimits: soft and hard set to the profile's value, so the action cannot raise them.

use super::syscall::Syscall;
use super::{SandboxError, Step};
use crate::plan::{Plan, Rlimit};

/// `extra`: the rlimits that stand in for a cgroup that could not be made.
pub fn apply(plan: &Plan, extra: &[(Rlimit, u64)], sys: &dyn Syscall) -> Result<(), SandboxError> {
    for (limit, value) in plan.rlimits.iter().chain(extra) {
        sys.set_rlimit(*limit, *value)
            .map_err(|e| SandboxError::step(Step::Limits, limit.name(), e))?;
    }
    Ok(())
}
