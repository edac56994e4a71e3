//! `BBR_RUNNER_TRACE=1`: the start-up and teardown of a native run, step by step, on stderr.
//!
//! Each line is `bbr-runner: trace: WHO AT ms (+SINCE ms) WHAT`: WHO is the process
//! (`runner` the supervisor, `sandbox` the child that enforces the plan, `init` the same child
//! once it is the pid namespace's pid 1 starting the action), AT the time since the
//! runner's `main` began, SINCE the time since that process's previous line (for the child,
//! since the supervisor's last line before the clone). Off unless the variable is set to
//! something other than empty or `0`; when off, each mark is one atomic load. The variable is
//! the caller's: the action's environment is built from the profile, so it never sees it.
//!
//! Marks are written with one `write(2)` each, from a stack buffer: they are also made in the
//! forked child, after its seccomp filter is installed (`write` is allowed there).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The environment variable that turns tracing on.
pub const VAR: &str = "BBR_RUNNER_TRACE";

static ON: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();
/// Nanoseconds since `START` of this process's previous mark (a fork copies it).
static LAST: AtomicU64 = AtomicU64::new(0);

/// Reads the variable and starts the clock; called first thing in `main`.
pub fn init() {
    let _ = START.set(Instant::now());
    let on = std::env::var_os(VAR).is_some_and(|v| !v.is_empty() && v != "0");
    ON.store(on, Ordering::Relaxed);
}

pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// `trace!(WHO, FORMAT, ARGS...)`: one trace line, when tracing is on (the arguments are not
/// evaluated otherwise).
#[macro_export]
macro_rules! trace {
    ($who:expr, $($t:tt)*) => {
        if $crate::trace::on() {
            $crate::trace::mark($who, format_args!($($t)*))
        }
    };
}

/// Writes one trace line (when tracing is on).
pub fn mark(who: &str, what: std::fmt::Arguments<'_>) {
    if !on() {
        return;
    }
    let Some(start) = START.get() else { return };
    let now = start.elapsed().as_nanos() as u64;
    let since = now.saturating_sub(LAST.swap(now, Ordering::Relaxed));
    let mut buf = [0u8; 256];
    let mut w = Cursor {
        buf: &mut buf,
        len: 0,
    };
    use std::fmt::Write as _;
    let _ = writeln!(
        w,
        "bbr-runner: trace: {who:<7} {:>8.3} ms (+{:.3} ms) {what}",
        now as f64 / 1e6,
        since as f64 / 1e6
    );
    let len = w.len;
    // A line cut at the buffer's end still ends with a newline.
    if len == buf.len() {
        buf[len - 1] = b'\n';
    }
    // SAFETY: writes `len` initialised bytes of a local buffer to descriptor 2.
    unsafe { libc::write(2, buf.as_ptr().cast(), len) };
}

/// A `fmt::Write` into a fixed buffer, dropping what does not fit (no allocation).
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
