//! Which PostgreSQL client tools serve a server: the policy of docs/acme-db.md ("Server
//! versions and client tools").
//!
//! - The server's own major when its tools are there (as the BBR SDK).
//! - Otherwise the nearest newer major: pg_dump dumps servers older than itself (back to 9.2),
//!   and pg_restore reads archives of older pg_dumps. A pg_restore of 17 or later opens every
//!   restore with `SET transaction_timeout = 0`, which a server before 17 rejects, so there the
//!   restore takes the script route: pg_restore writes the restore as SQL, that one line is left
//!   out of its opening settings, and psql of the same major runs it in one transaction.
//! - A restore needs a pg_restore at least as new as the pg_dump that made the archive, and a
//!   server at least as new as the one the backup was taken from.
//! - Otherwise a refusal naming the server's major, the majors found and where they were
//!   looked for, and what to install.

use std::path::{Path, PathBuf};

use super::tools::{self, Tool};

/// A client tool found in the configured directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub major: u32,
    pub path: PathBuf,
}

/// The first major whose pg_restore opens a restore with `SET transaction_timeout = 0`
/// (`_doSetFixedOutputState` in pg_dump's pg_backup_archiver.c, since 17.0), a parameter that
/// servers before 17 do not know.
pub const SETS_TRANSACTION_TIMEOUT: u32 = 17;

/// Every `tool` in the client directories (templates where `{major}` stands for a major), with
/// its major, lowest first; for one major, the first directory listed wins. A directory without
/// `{major}` is asked its tool's version.
pub fn installed(templates: &[String], tool: &str) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for t in templates {
        let here = if t.contains("{major}") {
            majors_of_template(t)
                .into_iter()
                .map(|m| Found {
                    major: m,
                    path: Path::new(&t.replace("{major}", &m.to_string())).join(tool),
                })
                .filter(|f| f.path.is_file())
                .collect()
        } else {
            let path = Path::new(t).join(tool);
            match path.is_file().then(|| version_of(&path)).flatten() {
                Some((_, major)) => vec![Found { major, path }],
                None => Vec::new(),
            }
        };
        for f in here {
            if !found.iter().any(|g| g.major == f.major) {
                found.push(f);
            }
        }
    }
    found.sort_by_key(|f| f.major);
    found
}

/// The majors `{major}` is tried with. Each is probed by its path rather than found by listing
/// the directory: inside the action's sandbox the directory holding the packages
/// (`/var/vcap/packages`) is not granted and cannot be listed, while the granted packages in it
/// can be reached.
const MAJORS: std::ops::RangeInclusive<u32> = 10..=99;

/// The majors a template's `{major}` can stand for here: those for which the directory exists.
fn majors_of_template(template: &str) -> Vec<u32> {
    MAJORS
        .filter(|m| Path::new(&template.replace("{major}", &m.to_string())).is_dir())
        .collect()
}

/// A tool's `--version` answer and its major (`pg_dump (PostgreSQL) 18.6` gives 18). Asked once
/// per program and run: every query of a backup or restore looks its psql up again.
pub fn version_of(program: &Path) -> Option<(String, u32)> {
    type Seen = std::collections::BTreeMap<std::path::PathBuf, Option<(String, u32)>>;
    static SEEN: std::sync::Mutex<Seen> = std::sync::Mutex::new(Seen::new());
    if let Some(known) = SEEN.lock().ok().and_then(|s| s.get(program).cloned()) {
        return known;
    }
    let answer = tools::run(
        &Tool::new(program.to_path_buf()).arg("--version"),
        None,
        None,
        None,
    )
    .ok()
    .and_then(|out| {
        let text = String::from_utf8_lossy(&out).trim().to_string();
        parse_major(&text).map(|major| (text, major))
    });
    if let Ok(mut seen) = SEEN.lock() {
        seen.insert(program.to_path_buf(), answer.clone());
    }
    answer
}

fn parse_major(version: &str) -> Option<u32> {
    version
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
}

/// The tool for `need`: that major if found, else the nearest newer one.
pub fn nearest(found: &[Found], need: u32) -> Option<&Found> {
    found.iter().find(|f| f.major >= need)
}

/// Whether pg_restore of major `client` must restore into a server of major `server` through
/// the script route (its opening `SET transaction_timeout` left out).
pub fn needs_script_route(client: u32, server: u32) -> bool {
    client >= SETS_TRANSACTION_TIMEOUT && server < SETS_TRANSACTION_TIMEOUT
}

/// The majors found, for messages: `13, 15` or `none`.
pub fn list(found: &[Found]) -> String {
    if found.is_empty() {
        return "none".into();
    }
    found
        .iter()
        .map(|f| f.major.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to install for `major`, on a BOSH VM and on Debian.
pub fn install_hint(major: u32) -> String {
    format!(
        "on a BOSH VM colocate the BBR SDK's database-backup-restorer job (its package database-backup-restorer-postgres-{major} has them, in /var/vcap/packages/database-backup-restorer-postgres-{major}/bin); on Debian or Ubuntu: apt-get install postgresql-client-{major}"
    )
}

/// Leaves out pg_restore's `SET transaction_timeout = 0;` from a restore script's opening
/// settings, and only there: the block before the first statement that is not a comment,
/// `\restrict`, `BEGIN;`, a `SET` or `set_config` (after it, a table's data could hold the same
/// text, and it is passed on untouched).
#[derive(Debug)]
pub struct OpeningSettings {
    opening: bool,
    /// Whether the line was met (and left out).
    pub dropped: bool,
}

impl Default for OpeningSettings {
    fn default() -> Self {
        OpeningSettings {
            opening: true,
            dropped: false,
        }
    }
}

impl OpeningSettings {
    /// Whether `line` (with its newline) goes on to psql.
    pub fn keep(&mut self, line: &[u8]) -> bool {
        if !self.opening {
            return true;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        if !self.dropped && text == b"SET transaction_timeout = 0;" {
            self.dropped = true;
            return false;
        }
        let opening = text.is_empty()
            || text.starts_with(b"--")
            || text.starts_with(b"\\restrict ")
            || text == b"BEGIN;"
            || (text.starts_with(b"SET ") && text.ends_with(b";"))
            || text.starts_with(b"SELECT pg_catalog.set_config(");
        self.opening = opening;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, "").expect("write");
    }

    #[test]
    fn a_template_finds_every_major_whose_directory_holds_the_tool() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().display().to_string();
        for m in [13, 15, 17] {
            touch(
                &d.path()
                    .join(format!("packages/db-postgres-{m}/bin/pg_dump")),
            );
        }
        // No pg_dump, not a number, another package.
        std::fs::create_dir_all(d.path().join("packages/db-postgres-16/bin")).expect("mkdir");
        touch(&d.path().join("packages/db-postgres-x/bin/pg_dump"));
        touch(&d.path().join("packages/db-postgres-15a/bin/pg_dump"));
        touch(&d.path().join("packages/other-18/bin/pg_dump"));

        touch(&d.path().join("lib/14/bin/pg_dump"));
        touch(&d.path().join("lib/15/bin/pg_dump"));
        let templates = vec![
            format!("{root}/packages/db-postgres-{{major}}/bin"),
            format!("{root}/lib/{{major}}/bin"),
        ];
        let found = installed(&templates, "pg_dump");
        assert_eq!(
            found,
            [13, 14, 15, 17]
                .iter()
                .map(|m| Found {
                    major: *m,
                    path: if *m == 14 {
                        d.path().join("lib/14/bin/pg_dump")
                    } else {
                        d.path()
                            .join(format!("packages/db-postgres-{m}/bin/pg_dump"))
                    },
                })
                .collect::<Vec<_>>(),
            "15 from the first template listed"
        );
        assert_eq!(list(&found), "13, 14, 15, 17");
        assert_eq!(nearest(&found, 15).map(|f| f.major), Some(15), "exact");
        assert_eq!(nearest(&found, 16).map(|f| f.major), Some(17), "newer");
        assert_eq!(nearest(&found, 12).map(|f| f.major), Some(13));
        assert_eq!(nearest(&found, 18), None, "never older");
        assert_eq!(list(&[]), "none");
    }

    #[test]
    fn only_a_newer_pg_restore_into_a_server_before_17_takes_the_script_route() {
        assert!(needs_script_route(17, 16));
        assert!(needs_script_route(18, 13));
        assert!(!needs_script_route(18, 17));
        assert!(!needs_script_route(16, 13));
        assert!(!needs_script_route(15, 15));
    }

    #[test]
    fn versions_are_read_from_the_tools_answer() {
        assert_eq!(parse_major("pg_dump (PostgreSQL) 18.6"), Some(18));
        assert_eq!(
            parse_major("pg_restore (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL)"), None);
    }

    fn filtered(script: &str) -> (String, bool) {
        let mut f = OpeningSettings::default();
        let kept: String = script
            .split_inclusive('\n')
            .filter(|l| f.keep(l.as_bytes()))
            .collect();
        (kept, f.dropped)
    }

    #[test]
    fn the_transaction_timeout_line_is_left_out_of_the_opening_settings_only() {
        let opening = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n-- Dumped from database version 16.14\n-- Dumped by pg_dump version 18.6\n\nBEGIN;\n\nSET statement_timeout = 0;\nSET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\nSET transaction_timeout = 0;\nSET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\nSET row_security = off;\n\n";
        let body = "DROP TABLE IF EXISTS public.t;\nCOPY public.t (v) FROM stdin;\nSET transaction_timeout = 0;\n\\.\n\nCOMMIT;\n";
        let (kept, dropped) = filtered(&format!("{opening}{body}"));
        assert!(dropped);
        assert_eq!(
            kept,
            format!(
                "{}{body}",
                opening.replace("SET transaction_timeout = 0;\n", "")
            ),
            "a row holding the same text is kept"
        );
        // Without the line (a pg_restore before 17): nothing is left out.
        let (kept, dropped) = filtered(body);
        assert!(!dropped);
        assert_eq!(kept, body);
        // Only once.
        let (kept, _) = filtered("SET transaction_timeout = 0;\nSET transaction_timeout = 0;\n");
        assert_eq!(kept, "SET transaction_timeout = 0;\n");
    }
}
