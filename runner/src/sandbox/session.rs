//! A session of the action's own: `setsid`, so it has no controlling terminal (a TIOCSTI or
//! any other ioctl on the caller's terminal needs it to be the caller's controlling terminal,
//! or CAP_SYS_ADMIN), and a new anonymous session keyring, so the caller's (root's) session
//! keyring and the keys it holds are not possessed by the action. Runs after the identity
//! change, so the new keyring belongs to the action's user.
//!
//! And a clean signal state, as runc gives an action under bpm: every disposition the default,
//! no signal blocked. Otherwise the action inherits the caller's ignored signals (a background
//! job of a non-interactive shell ignores SIGINT and SIGQUIT, and a shell cannot trap a signal
//! ignored on entry, so a forwarded SIGINT did nothing) and the runner's own (Rust ignores
//! SIGPIPE: `pg_dump | head` would see EPIPE instead of ending).

use super::syscall::Syscall;
use super::{SandboxError, Step};

pub fn apply(sys: &dyn Syscall) -> Result<(), SandboxError> {
    let step = |what: &str, e| SandboxError::step(Step::Session, what, e);
    sys.new_session().map_err(|e| step("setsid", e))?;
    sys.default_signals()
        .map_err(|e| step("resetting signal dispositions", e))?;
    match sys.join_new_session_keyring() {
        Ok(()) => Ok(()),
        // keyctl refused by a seccomp filter (inside bpm's container): the action inherits the
        // same filter, so it cannot reach any keyring either.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => Ok(()),
        Err(e) => Err(step("KEYCTL_JOIN_SESSION_KEYRING", e)),
    }
}
