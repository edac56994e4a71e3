//! The pid namespace's init.
//!
//! With a pid namespace, the sandbox's first process is pid 1 there. It starts the action
//! (pid 2) after every other step, so both are equally confined, then only reaps: as pid 1 it
//! ignores every signal it has no handler for (it installs none), so the action cannot stop
//! it, while the supervisor's SIGKILL (from the parent namespace) still can. When the action
//! ends, init exits with its status and the kernel kills whatever else is left in the
//! namespace: no descendant outlives the action, however it detached itself.
//!
//! The action is started as `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)` on a stack of
//! its own, the child only calling `execve`. Init's memory is not copied for a process that
//! replaces it at once (a `fork` here cost 0.2 to 0.3 ms, page tables copied, then torn down
//! by the exec), and init is suspended until the exec has succeeded or failed; a failure's
//! errno is left in memory they share, so the error is the exec's own, as before.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;

/// What the child of `clone` needs, prepared before it (it allocates nothing).
struct Spawn {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The exec's errno when it failed (0: it succeeded, or was not reached).
    errno: libc::c_int,
}

extern "C" fn exec_action(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Spawn` of `start_action`, which is suspended (CLONE_VFORK) until
    // this process has exec'd or exited; the pointers in it are NUL-terminated arrays that
    // outlive the call.
    unsafe {
        let spawn = &mut *(arg as *mut Spawn);
        libc::execve(spawn.program, spawn.argv, spawn.envp);
        spawn.errno = *libc::__errno_location();
        libc::_exit(127)
    }
}

/// Starts the action (`program` with `argv` and `env`) and, once it is exec'd, reaps until it
/// ends: never returns then. `Err`: the action's process could not be made (clone's error);
/// `Ok`: it was made but its exec failed (the exec's error; the process is reaped).
pub fn start_action(
    status: RawFd,
    program: &CStr,
    argv: &[CString],
    env: &[CString],
) -> Result<io::Error, io::Error> {
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let env_ptrs: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut spawn = Spawn {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        errno: 0,
    };
    // The child's stack: it only calls execve (and _exit).
    let mut stack = vec![0u128; 4096];
    let top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();
    crate::trace!(
        "init",
        "starting the action (clone with CLONE_VM and CLONE_VFORK, execve)"
    );
    // SAFETY: `exec_action` runs on `stack` (16-byte aligned, 64 KiB) with `spawn`, both
    // alive until clone returns, which CLONE_VFORK delays until the child has exec'd or
    // exited. No signal handler is installed here (the session step reset every disposition),
    // so nothing but `exec_action` runs on the shared memory.
    let action = unsafe {
        libc::clone(
            exec_action,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut spawn as *mut Spawn).cast::<libc::c_void>(),
        )
    };
    if action < 0 {
        return Err(io::Error::last_os_error());
    }
    // Read only after clone has returned (the child is done with it).
    let errno = spawn.errno;
    drop(stack);
    if errno != 0 {
        let mut st = 0;
        // SAFETY: reaps the child that failed its exec; `st` is a valid out-pointer.
        unsafe { libc::waitpid(action, &mut st, 0) };
        return Ok(io::Error::from_raw_os_error(errno));
    }
    reap_until(action, status)
}

fn reap_until(action: libc::pid_t, status: RawFd) -> ! {
    crate::trace!("init", "the action is exec'd; reaping");
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
