//! The pid namespace's init.
//!
//! With a pid namespace, the sandbox's first process is pid 1 there. It forks the action (pid 2)
//! after every other step, so both are equally confined, then only reaps: as pid 1 it ignores
//! every signal it has no handler for (it installs none), so the action cannot stop it, while
//! the supervisor's SIGKILL (from the parent namespace) still can. When the action ends, init
//! exits with its status and the kernel kills whatever else is left in the namespace: no
//! descendant outlives the action, however it detached itself.

use std::io;
use std::os::fd::RawFd;

/// Never returns in the caller (init); returns `Ok` in the forked action.
pub fn become_init(status: RawFd) -> io::Result<()> {
    // SAFETY: the sandbox child is single-threaded; the child only goes on to exec.
    let action = unsafe { libc::fork() };
    if action < 0 {
        return Err(io::Error::last_os_error());
    }
    if action == 0 {
        // SAFETY: closing the init's status descriptor, which the action must not hold.
        unsafe { libc::close(status) };
        return Ok(());
    }
    reap_until(action, status)
}

fn reap_until(action: libc::pid_t, status: RawFd) -> ! {
    crate::trace!("init", "forked the action; reaping");
    // Init holds nothing of the action's: not its output pipes, not the supervisor's report
    // pipe (whose end-of-file says the action was executed), not the broker's socket.
    // SAFETY: close_range only closes this process's descriptors.
    unsafe {
        if status > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (status - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (status + 1) as u32, u32::MAX, 0u32);
    }
    loop {
        let mut st = 0;
        // SAFETY: waits for any child of this process; `st` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut st, 0) };
        if pid == action {
            crate::trace!("init", "action reaped; exiting");
            if libc::WIFSIGNALED(st) {
                let sig = libc::WTERMSIG(st);
                let bytes = sig.to_ne_bytes();
                // SAFETY: writes 4 bytes from a local buffer, then leaves without unwinding.
                unsafe {
                    libc::write(status, bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(128 + sig)
                }
            }
            // SAFETY: leaves without running the parent's destructors.
            unsafe { libc::_exit(libc::WEXITSTATUS(st)) }
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: as above.
            unsafe { libc::_exit(crate::exit::INTERNAL) }
        }
    }
}
