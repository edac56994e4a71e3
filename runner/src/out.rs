//! Messages that never stop the work. When BBR, its SSH session or the operator's laptop goes
//! away mid-action, nothing is signalled on the VM: the next write to stderr fails with EPIPE.
//! `eprintln!` panics then (and the release build aborts), killing a lock after it stopped the
//! service or a backup between its phases. These macros lose the line instead: the action
//! finishes, or is stopped by its timeout, and cleans up exactly as it would have.
//!
//! `note!` is `eprintln!`, `show!` is `println!`, `show_raw!` is `print!`; the crate denies the
//! std printing macros (clippy `print_stderr`, `print_stdout`) so none comes back.

use std::io::Write;

#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Writes `args` (and a newline when `newline`) to the stream; an error loses the text only.
#[doc(hidden)]
pub fn write(stream: Stream, args: std::fmt::Arguments<'_>, newline: bool) {
    let end: &[u8] = if newline { b"\n" } else { b"" };
    let _ = match stream {
        Stream::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_fmt(args).and_then(|_| e.write_all(end))
        }
        Stream::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_fmt(args)
                .and_then(|_| o.write_all(end))
                .and_then(|_| o.flush())
        }
    };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {
        $crate::out::write($crate::out::Stream::Stderr, format_args!($($t)*), true)
    };
}

/// `println!` that never panics.
#[macro_export]
macro_rules! show {
    ($($t:tt)*) => {
        $crate::out::write($crate::out::Stream::Stdout, format_args!($($t)*), true)
    };
}

/// `print!` that never panics.
#[macro_export]
macro_rules! show_raw {
    ($($t:tt)*) => {
        $crate::out::write($crate::out::Stream::Stdout, format_args!($($t)*), false)
    };
}

/// Prints a message for the operator on stderr, prefixed with the program name.
pub fn say(message: &str) {
    crate::note!("bbr-runner: {message}");
}
