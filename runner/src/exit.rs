//! The runner's own exit codes, in one place. Anything else is the action's own status.
//!
//! The action's exit status is passed through unchanged; a signal that killed it becomes
//! 128 + the signal number, as a shell reports it. The codes below are the runner's own and
//! are documented in the README ("Exit codes").

/// Bad command line, bad profile or config, undefined variable: nothing was run.
pub const USAGE: i32 = 2;
/// A declared restriction cannot be enforced here (kernel, missing path or user): nothing was run.
pub const REFUSED: i32 = 121;
/// A sandbox step failed while the action's process was being set up: the action did not run.
pub const SANDBOX_FAILED: i32 = 122;
/// The runner itself failed (fork, wait, signal handling).
pub const INTERNAL: i32 = 123;
/// The profile's timeout expired: the action's process group was stopped (TERM, then KILL).
pub const TIMEOUT: i32 = 124;
/// The command exists but could not be executed (permission, or denied by the sandbox).
pub const CANNOT_EXECUTE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// Added to a signal number when the action was killed by that signal.
pub const SIGNAL_BASE: i32 = 128;

/// The runner's own codes with what each means: what `bbr-runner --help` says (`help`), and
/// what the README's exit-code table must list (a test checks both).
pub const CODES: [(i32, &str); 7] = [
    (USAGE, "usage or profile error"),
    (REFUSED, "refused: cannot enforce as declared"),
    (SANDBOX_FAILED, "sandbox setup failed"),
    (INTERNAL, "internal error"),
    (TIMEOUT, "timeout"),
    (CANNOT_EXECUTE, "cannot execute"),
    (NOT_FOUND, "command not found"),
];

/// `bbr-runner --help`'s exit-code paragraph, from `CODES`.
pub fn help() -> String {
    let own: Vec<String> = CODES.iter().map(|(c, m)| format!("{c} ({m})")).collect();
    format!(
        "Exit codes: the action's own status is passed through; the runner's own are {}, {SIGNAL_BASE}+N (killed by signal N).",
        own.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_lists_every_exit_code_and_help_says_each() {
        let readme = include_str!("../../README.md");
        let help = super::help();
        for (code, meaning) in super::CODES {
            assert!(
                readme.contains(&format!("\n| {code} | ")),
                "README.md's exit-code table has no row for {code}"
            );
            assert!(help.contains(&format!("{code} ({meaning})")), "{help}");
        }
    }
}
