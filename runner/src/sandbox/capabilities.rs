//! Capabilities: bounding, ambient, inheritable, permitted, effective, each reduced to what the
//! profile keeps (none by default). The bounding set is dropped first, while CAP_SETPCAP is
//! still effective; the ambient set carries kept capabilities across exec for a non-root user.

use caps::CapSet;

use super::syscall::Syscall;
use super::{SandboxError, Step};
use crate::plan::Plan;

pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<(), SandboxError> {
    let keep = &plan.keep_capabilities;
    let step = |what: &str, e| SandboxError::step(Step::Capabilities, what, e);
    if plan.identity.is_some() {
        sys.raise_effective()
            .map_err(|e| step("raising effective to permitted", e))?;
        sys.drop_bounding(keep)
            .map_err(|e| step("bounding set", e))?;
    }
    // Ambient must be emptied before inheritable and permitted shrink; it is refilled last.
    sys.set_capset(CapSet::Ambient, &[])
        .map_err(|e| step("ambient set", e))?;
    sys.set_capset(CapSet::Inheritable, keep)
        .map_err(|e| step("inheritable set", e))?;
    sys.set_capset(CapSet::Permitted, keep)
        .map_err(|e| step("permitted set", e))?;
    sys.set_capset(CapSet::Effective, keep)
        .map_err(|e| step("effective set", e))?;
    if !keep.is_empty() {
        sys.set_capset(CapSet::Ambient, keep)
            .map_err(|e| step("ambient set", e))?;
    }
    Ok(())
}
