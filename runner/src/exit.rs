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

/// A subcommand's `--help` paragraph from its table: `Exit codes: 0 DONE, 1 ..., 2 ....`
fn paragraph(done: &str, codes: &[(i32, &str)]) -> String {
    let each: Vec<String> = codes.iter().map(|(c, m)| format!("{c} {m}")).collect();
    format!("Exit codes: 0 {done}, {}.", each.join(", "))
}

/// `bbr-runner acme-db`'s own codes (the action's status, which `run` passes through).
pub mod acme_db {
    /// Backup or restore failed (database, tool or I/O): the message says what and what to do.
    pub const FAILED: i32 = 1;
    /// The config (or the command line) is invalid: the message names the key.
    pub const CONFIG: i32 = 2;
    /// Restore refused the artifact (missing manifest, checksum, adapter or version mismatch):
    /// the database was not touched.
    pub const REFUSED: i32 = 3;
    /// The restored tables differ from what the backup saw (rows or digests, per table): the
    /// restore did not swap or commit, so the live database is as it was (MySQL/MariaDB without a
    /// scratch database: the message says it was changed); a rehearsal says the same of its copy.
    pub const MISMATCH: i32 = 4;

    pub const CODES: [(i32, &str); 4] = [
        (FAILED, "failed (the message says what and what to do)"),
        (CONFIG, "invalid config or arguments"),
        (REFUSED, "restore or rehearse refused the artifact (the database was not touched)"),
        (MISMATCH, "the restored tables differ from what the backup saw (restore: nothing was swapped or committed; rehearse: the scratch copy was dropped)"),
    ];

    /// `bbr-runner acme-db --help`'s exit-code paragraph.
    pub fn help() -> String {
        super::paragraph("done (rehearse: the backup restores what it saw)", &CODES)
    }
}

/// `bbr-runner acme-api`'s own codes (lock and unlock: the action's status).
pub mod acme_api {
    /// Lock or unlock failed: the message names the process, how long it waited and monit's
    /// last status.
    pub const FAILED: i32 = 1;
    /// The lock config is invalid: the message names the file, line and key.
    pub const CONFIG: i32 = 2;

    pub const CODES: [(i32, &str); 2] = [
        (
            FAILED,
            "failed (the message names the process, how long it waited and monit's last status)",
        ),
        (CONFIG, "invalid config"),
    ];

    /// `bbr-runner acme-api --help`'s exit-code paragraph.
    pub fn help() -> String {
        super::paragraph(
            "done (lock: the service is stopped; unlock: it runs and answers its health check)",
            &CODES,
        )
    }
}

/// `bbr-runner review`'s codes: its findings, not failures of the review.
pub mod review {
    /// A score is above `--threshold`, or `--baseline` shows a new high-severity finding.
    pub const THRESHOLD: i32 = 3;
    /// `--verify` saw a claim broken: something reported enforced is not.
    pub const BROKEN: i32 = 4;

    pub const CODES: [(i32, &str); 3] = [
        (super::USAGE, "usage or profile error"),
        (
            THRESHOLD,
            "a score is above --threshold, or --baseline shows a new high-severity finding",
        ),
        (
            BROKEN,
            "--verify saw a claim broken (reported enforced, but the escape attempt succeeded)",
        ),
    ];

    /// `bbr-runner review --help`'s exit-code paragraph.
    pub fn help() -> String {
        super::paragraph("reviewed", &CODES)
    }
}

/// `bbr-runner demo`'s codes.
pub mod demo {
    /// A step of the demo failed: the message names it.
    pub const FAILED: i32 = 1;
}

/// An exit status for `main` (statuses are 0 to 255; anything else would be a bug).
pub fn status(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(INTERNAL as u8))
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

    /// Each subcommand's codes: in its `--help` (made from its table) and in its page's "Exit
    /// codes" section.
    #[test]
    fn each_subcommands_codes_are_in_its_help_and_its_page() {
        let section = |page: &str| -> String {
            let at = page.find("## Exit codes").expect("an Exit codes section");
            page[at..]
                .split("\n## ")
                .next()
                .unwrap_or_default()
                .to_string()
        };
        type Table = &'static [(i32, &'static str)];
        let cases: [(&str, String, Table); 3] = [
            (
                include_str!("../../docs/acme-db.md"),
                super::acme_db::help(),
                &super::acme_db::CODES,
            ),
            (
                include_str!("../../docs/review.md"),
                super::review::help(),
                &super::review::CODES,
            ),
            (
                include_str!("../../docs/acme-api.md"),
                super::acme_api::help(),
                &super::acme_api::CODES,
            ),
        ];
        for (page, help, codes) in cases {
            let section = section(page);
            for (code, meaning) in codes {
                assert!(help.contains(&format!("{code} {meaning}")), "{help}");
                assert!(
                    section.contains(&format!(" {code} ")),
                    "no {code} in:\n{section}"
                );
            }
        }
    }
}
