//! The dropped identity: supplementary groups, then gid, then uid (gid first: after the uid
//! changes, the gid can no longer be changed). keep-caps is set so that the capability step
//! can still drop the bounding set after the uid change.

use super::syscall::Syscall;
use super::{SandboxError, Step};
use crate::plan::Plan;

pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<(), SandboxError> {
    let Some(id) = &plan.identity else {
        return Ok(());
    };
    let step = |what: &str, e| SandboxError::step(Step::Identity, what, e);
    sys.set_keep_caps(true)
        .map_err(|e| step("PR_SET_KEEPCAPS", e))?;
    sys.set_groups(&id.groups)
        .map_err(|e| step("setgroups", e))?;
    sys.set_gid(id.gid).map_err(|e| step("setresgid", e))?;
    sys.set_uid(id.uid).map_err(|e| step("setresuid", e))?;
    sys.set_keep_caps(false)
        .map_err(|e| step("PR_SET_KEEPCAPS", e))?;
    Ok(())
}
