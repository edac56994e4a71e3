//! The native sandbox: each isolation step is one call below, in the fixed order the design
//! gives. Runs in the forked child; on success it does not return (the action is exec'd).
//!
//! (namespaces: made by the supervisor's clone3) -> filesystem view (or, without a mount
//! namespace of its own, the socket directories' cover) -> loopback -> cgroup (the supervisor's
//! placement, made meanwhile, awaited) -> rlimits -> Landlock
//! -> groups, gid, uid -> new session and session keyring -> capabilities -> no_new_privs ->
//! parent-death signal -> descriptors -> seccomp -> init (pid namespace: pid 1 starts the action)
//! -> cleared environment + exec

mod capabilities;
mod cgroup;
mod identity;
pub mod init;
mod landlock;
mod limits;
mod mount;
pub mod net;
pub mod seccomp;
mod session;
pub mod syscall;
mod view;

use std::io;

use crate::exit;
use crate::plan::Plan;
use syscall::{LandlockOutcome, Syscall};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Cgroup,
    Mount,
    Network,
    Limits,
    Landlock,
    Identity,
    Session,
    Capabilities,
    NoNewPrivs,
    Descriptors,
    Seccomp,
    Init,
    Exec,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Cgroup => "cgroup",
            Step::Mount => "mount namespace",
            Step::Network => "network namespace",
            Step::Limits => "rlimits",
            Step::Landlock => "landlock",
            Step::Identity => "identity",
            Step::Session => "session",
            Step::Capabilities => "capabilities",
            Step::NoNewPrivs => "no_new_privs",
            Step::Descriptors => "file descriptors",
            Step::Seccomp => "seccomp",
            Step::Init => "init",
            Step::Exec => "exec",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox step `{}` failed at {what}: {source}", step.name())]
    Step {
        step: Step,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("refused: {0}")]
    Refused(String),
    #[error("cannot execute `{program}`: {source}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
}

impl SandboxError {
    pub fn step(step: Step, what: &str, source: io::Error) -> Self {
        SandboxError::Step {
            step,
            what: what.to_string(),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            SandboxError::Step { .. } => exit::SANDBOX_FAILED,
            SandboxError::Refused(_) => exit::REFUSED,
            SandboxError::Exec { source, .. } => match source.raw_os_error() {
                Some(libc::ENOENT) => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            },
        }
    }
}

/// Applies the plan to the calling process, then execs the action. `warn` receives the
/// best-effort notices (what is declared but not enforced).
pub fn enforce(plan: &Plan, sys: &dyn Syscall, warn: &mut dyn FnMut(&str)) -> SandboxError {
    match enforce_steps(plan, sys, warn) {
        Ok(()) => {}
        Err(e) => return e,
    }
    let source = match plan.init_status {
        // pid 1 of the action's pid namespace: starts the action, then only reaps.
        Some(status) => match sys.start_action(status, &plan.program, &plan.argv, &plan.env) {
            Ok(exec_failed) => exec_failed,
            Err(e) => return SandboxError::step(Step::Init, "clone", e),
        },
        None => {
            crate::trace!("sandbox", "execve");
            sys.exec(&plan.program, &plan.argv, &plan.env)
        }
    };
    SandboxError::Exec {
        program: plan.program.to_string_lossy().into_owned(),
        source,
    }
}

fn enforce_steps(
    plan: &Plan,
    sys: &dyn Syscall,
    warn: &mut dyn FnMut(&str),
) -> Result<(), SandboxError> {
    cgroup::start_beside(plan, sys)?;
    view::apply(plan, sys)?;
    crate::trace!("sandbox", "filesystem view built");
    if plan.namespaces.net {
        match plan.net_namespace {
            // Made by the supervisor while it built the plan.
            Some(fd) => sys
                .enter_net_namespace(fd)
                .map_err(|e| SandboxError::step(Step::Network, "entering it", e))?,
            // Made by clone3.
            None => sys
                .loopback_up()
                .map_err(|e| SandboxError::step(Step::Network, "setting lo up", e))?,
        }
        if let (false, Some(channel)) = (plan.forwards.is_empty(), plan.forward_channel) {
            sys.forward_listeners(&plan.forwards, channel)
                .map_err(|e| {
                    SandboxError::step(Step::Network, "listening on the declared endpoints", e)
                })?;
        }
        crate::trace!("sandbox", "network namespace entered, loopback up");
    }
    let in_place_of_cgroup = cgroup::apply(plan, sys)?;
    crate::trace!("sandbox", "cgroup entered (placed by the supervisor)");
    limits::apply(plan, &in_place_of_cgroup, sys)?;
    crate::trace!("sandbox", "rlimits set");
    if plan.identity.is_none() {
        // Unprivileged Landlock needs no_new_privs first; with root it comes later, in order.
        sys.set_no_new_privs()
            .map_err(|e| SandboxError::step(Step::NoNewPrivs, "prctl", e))?;
    }
    if let Some(ll) = &plan.landlock {
        let outcome = sys
            .landlock_restrict(ll)
            .map_err(|e| SandboxError::step(Step::Landlock, "restrict_self", e))?;
        match (outcome, ll.strict) {
            (LandlockOutcome::FullyEnforced, _) => {}
            (other, true) => {
                return Err(SandboxError::Refused(format!(
                    "Landlock reported {other:?} for a strict profile; nothing was run"
                )))
            }
            (other, false) => warn(&format!("Landlock ruleset is {other:?} on this kernel")),
        }
        crate::trace!("sandbox", "landlock ruleset applied");
    }
    identity::apply(plan, sys)?;
    crate::trace!("sandbox", "identity dropped");
    session::apply(sys)?;
    crate::trace!("sandbox", "session, keyring, signals");
    capabilities::apply(plan, sys)?;
    crate::trace!("sandbox", "capabilities dropped");
    sys.set_no_new_privs()
        .map_err(|e| SandboxError::step(Step::NoNewPrivs, "prctl", e))?;
    sys.set_parent_death_signal()
        .map_err(|e| SandboxError::step(Step::Descriptors, "PR_SET_PDEATHSIG", e))?;
    sys.close_fds_above_stderr(&plan.keep_fds)
        .map_err(|e| SandboxError::step(Step::Descriptors, "close_range", e))?;
    crate::trace!("sandbox", "no_new_privs, pdeathsig, descriptors");
    if let Some(program) = &plan.seccomp {
        sys.install_seccomp(program)
            .map_err(|e| SandboxError::step(Step::Seccomp, "seccomp(SET_MODE_FILTER)", e))?;
        crate::trace!("sandbox", "seccomp filter installed");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
