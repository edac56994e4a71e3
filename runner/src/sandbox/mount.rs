//! The mount namespace: only when the profile declares sockets. Each socket directory is
//! covered by an empty read-only tmpfs holding exactly the declared sockets, bind-mounted from
//! descriptors opened before the cover. Landlock cannot mediate pathname unix-socket connect
//! below ABI 9; this is what does.

use std::io;

use super::syscall::Syscall;
use super::{SandboxError, Step};
use crate::plan::Plan;

pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<(), SandboxError> {
    if plan.socket_dirs.is_empty() {
        return Ok(());
    }
    let step = |what: &str, e: io::Error| SandboxError::step(Step::Mount, what, e);
    sys.unshare_mount_namespace()
        .map_err(|e| step("unshare(CLONE_NEWNS)", e))?;
    sys.make_mounts_private()
        .map_err(|e| step("making mounts private", e))?;
    for dir in &plan.socket_dirs {
        let mut held = Vec::new();
        for socket in &dir.sockets {
            let fd = sys
                .open_path(socket)
                .map_err(|e| step(&format!("opening `{}`", socket.display()), e))?;
            held.push((fd, socket));
        }
        sys.mount_tmpfs(&dir.dir)
            .map_err(|e| step(&format!("covering `{}`", dir.dir.display()), e))?;
        for (fd, socket) in held {
            sys.create_file(socket).map_err(|e| {
                step(
                    &format!("creating the mount point `{}`", socket.display()),
                    e,
                )
            })?;
            sys.bind_mount_fd(fd, socket)
                .map_err(|e| step(&format!("exposing `{}`", socket.display()), e))?;
        }
        sys.remount_readonly(&dir.dir)
            .map_err(|e| step(&format!("making `{}` read-only", dir.dir.display()), e))?;
    }
    Ok(())
}
