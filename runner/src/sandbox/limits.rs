//! rlimits: soft and hard set to the profile's value, so the action cannot raise them.

use super::syscall::Syscall;
use super::{SandboxError, Step};
use crate::plan::Plan;

pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<(), SandboxError> {
    for (limit, value) in &plan.rlimits {
        sys.set_rlimit(*limit, *value)
            .map_err(|e| SandboxError::step(Step::Limits, limit.name(), e))?;
    }
    Ok(())
}
