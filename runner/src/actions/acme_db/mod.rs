//! The `bbr-acme-db` job's backup and restore. `bbr-runner acme-db backup|restore --config FILE`
//! runs inside the job's profile (`profiles/bbr-acme-db/*.yml`); one file per adapter.

pub mod config;
pub mod contents;
mod mysql;
mod pg_clients;
mod postgres;
mod sqlite;
pub(crate) mod tools;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use config::{Adapter, Config, ConfigError};

use super::artifact::{self, ArtifactError, Contents, Manifest, TableContents};

/// Exit codes of `bbr-runner acme-db`: `crate::exit::acme_db`.
use crate::exit::acme_db as exit_code;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}; the database was not touched")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    /// The restored data differs from what the backup saw; the message says what became of the
    /// live database.
    #[error("{0}")]
    Mismatch(String),
}

impl DbError {
    pub fn exit_code(&self) -> i32 {
        if let Some(sig) = tools::interrupted() {
            return 128 + sig as i32;
        }
        match self {
            DbError::Config(_) => exit_code::CONFIG,
            DbError::Refused(_) => exit_code::REFUSED,
            DbError::Failed(_) => exit_code::FAILED,
            DbError::Mismatch(_) => exit_code::MISMATCH,
        }
    }
}

impl From<ArtifactError> for DbError {
    fn from(e: ArtifactError) -> Self {
        DbError::Failed(e.to_string())
    }
}

/// What a backup needs from its adapter.
#[derive(Debug)]
pub struct BackupRun<'a> {
    pub config: &'a Config,
    pub dir: &'a Path,
    pub deadline: Option<Instant>,
}

/// Server facts recorded in the manifest.
#[derive(Debug, Clone)]
pub struct Versions {
    pub server_version: String,
    pub server_major: u32,
    pub client_version: String,
    pub client_major: u32,
    pub dump_format: String,
    /// What the dump saw, per table, taken in its snapshot (`None`: not recorded, and why was said).
    pub contents: Option<Contents>,
}

fn check_artifact_dir(dir: &Path) -> Result<(), DbError> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        DbError::Failed(format!(
            "the artifact directory {} cannot be used: {e}; BBR creates it before calling the script",
            dir.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(DbError::Failed(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    Ok(())
}

/// The names a backup writes (`acme-db.*`, partials), removed from a directory with no
/// manifest: they are not a finished artifact. Anything else is left (and a restore refuses it).
fn remove_unfinished(dir: &Path) {
    artifact::remove_partials(dir);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(ARTIFACT_STEM) {
            continue;
        }
        let p = e.path();
        let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match removed {
            Ok(()) => crate::note!(
                "acme-db backup: removed {}, left by a backup that did not finish (no {})",
                p.display(),
                artifact::MANIFEST
            ),
            Err(err) => crate::note!("acme-db backup: cannot remove {}: {err}", p.display()),
        }
    }
}

/// What every file a backup writes is named after.
const ARTIFACT_STEM: &str = "acme-db.";

pub fn backup(config: &Config, dir: &Path) -> Result<Manifest, DbError> {
    let _ = ACTION.set("backup");
    tools::catch_stop_signals();
    check_artifact_dir(dir)?;
    if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(DbError::Failed(format!(
            "the artifact directory {} is not writable by uid {}: BBR creates it as root; `bbr-runner run` (and bpm) give it to the action's user",
            dir.display(),
            nix::unistd::getuid()
        )));
    }
    if dir.join(artifact::MANIFEST).exists() {
        return Err(DbError::Failed(format!(
            "{} already holds a finished backup ({}); BBR gives every backup a new directory",
            dir.display(),
            artifact::MANIFEST
        )));
    }
    // No manifest: whatever a backup wrote here before is not an artifact (a run killed or failed
    // after publishing its dump, before its manifest). It is removed, so a retry works.
    remove_unfinished(dir);
    let started = Instant::now();
    let started_at = artifact::now_rfc3339();
    let run = BackupRun {
        config,
        dir,
        deadline: config.timeout.map(|t| started + t),
    };
    let result = match config.adapter {
        Adapter::Postgres => postgres::backup(&run),
        Adapter::Mysql => mysql::backup(&run),
        Adapter::Sqlite => sqlite::backup(&run),
    };
    let versions = match (result, tools::interrupted()) {
        (Ok(v), None) => v,
        (Ok(_), Some(sig)) => {
            artifact::remove_partials(dir);
            return Err(DbError::Failed(format!(
                "stopped by {sig} before the backup was published; nothing was kept"
            )));
        }
        // A dump may have been published before the step that failed (the counts): without a
        // manifest it is no backup, and goes.
        (Err(e), _) => {
            remove_unfinished(dir);
            return Err(e);
        }
    };
    let manifest = Manifest {
        format_version: artifact::MANIFEST_FORMAT,
        written_by: format!("bbr-runner {}", env!("CARGO_PKG_VERSION")),
        adapter: config.adapter.name().into(),
        database: config.database.clone(),
        tables: config.tables.clone(),
        server_version: versions.server_version,
        server_major: versions.server_major,
        client_version: versions.client_version,
        client_major: versions.client_major,
        dump_format: versions.dump_format,
        files: Vec::new(),
        started_at,
        finished_at: artifact::now_rfc3339(),
        contents: versions.contents,
    };
    let manifest =
        artifact::write_manifest(dir, manifest).inspect_err(|_| remove_unfinished(dir))?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    crate::note!(
        "acme-db backup: {} database `{}` backed up to {} ({} in {} file(s), {:.1}s)",
        config.adapter.name(),
        config.database,
        dir.display(),
        tools::human(bytes),
        manifest.files.len(),
        started.elapsed().as_secs_f64()
    );
    if config.rehearse_after_backup {
        let deadline = config.timeout.map(|t| started + t);
        rehearse_artifact(config, dir, &manifest, deadline, "acme-db backup: rehearsal").map_err(
            |e| {
                let why = e.to_string();
                let e = match e {
                    DbError::Mismatch(_) => DbError::Mismatch,
                    DbError::Refused(_) | DbError::Config(_) | DbError::Failed(_) => {
                        DbError::Failed
                    }
                };
                e(format!(
                    "the backup was written to {} but its rehearsal failed (bbr_runner.rehearse_after_backup in {}): {why}; this backup would not restore what the database held: do not rely on it",
                    dir.display(),
                    config.source.display()
                ))
            },
        )?;
    }
    Ok(manifest)
}

/// `bbr-runner acme-db rehearse`: restores the artifact into a scratch database next to the live
/// one (SQLite: a temp file), compares it with what the backup saw, reports per table, and drops
/// the scratch copy; the live database is only read (its encoding, and the leftovers to drop).
pub fn rehearse(config: &Config, dir: &Path) -> Result<(), DbError> {
    let _ = ACTION.set("rehearse");
    tools::catch_stop_signals();
    check_artifact_dir(dir)?;
    let _one = one_rehearsal()?;
    let started = Instant::now();
    let manifest =
        artifact::verify(dir).map_err(|e| DbError::Refused(format!("rehearsal refused: {e}")))?;
    let deadline = config.timeout.map(|t| started + t);
    rehearse_artifact(config, dir, &manifest, deadline, "acme-db rehearse")?;
    crate::note!(
        "acme-db rehearse: the backup in {} (taken {}) restores, and what it restores is what the backup saw ({:.1}s)",
        dir.display(),
        manifest.finished_at,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Why a manifest has no `contents`.
fn no_contents(manifest: &Manifest) -> String {
    if manifest.format_version < 2 {
        format!(
            "the manifest records no rows or digests (written by an older bbr-runner, format {})",
            manifest.format_version
        )
    } else {
        "the manifest records no rows or digests (the backup could not take them, and said why)"
            .to_string()
    }
}

/// One rehearsal at a time per temp dir (`TMPDIR/rehearse.lock`, held while it runs): the
/// private temp directories (`rehearse-*`: a SQLite rehearsal's copy, the restore list, TLS
/// keys) a killed one left are then stale, and removed, saying so. (`bbr-runner run` sweeps its
/// actions' the same way; a rehearsal is run by hand, through `exec`.)
fn one_rehearsal() -> Result<nix::fcntl::Flock<std::fs::File>, DbError> {
    let tmp = std::env::temp_dir();
    let path = tmp.join("rehearse.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            DbError::Failed(format!(
                "cannot open {}: {e}; set TMPDIR to a writable directory",
                path.display()
            ))
        })?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            DbError::Failed(format!(
                "another rehearsal is running with the same temp dir ({} is held): wait for it to end",
                path.display()
            ))
        })?;
    let prefix = crate::job::private_tmp_prefix("rehearse");
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => crate::note!(
                "acme-db rehearse: removed {}, left by a rehearsal that was killed",
                e.path().display()
            ),
            Err(err) => crate::note!(
                "acme-db rehearse: cannot remove {}, left by a rehearsal that was killed: {err}",
                e.path().display()
            ),
        }
    }
    Ok(lock)
}

/// A rehearsal of a verified artifact: each adapter restores it into a scratch copy and returns
/// that copy's tables (with digests when the manifest has them), having dropped the copy.
fn rehearse_artifact(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
    label: &str,
) -> Result<(), DbError> {
    if manifest.adapter != config.adapter.name() {
        return Err(DbError::Refused(format!(
            "rehearsal refused: the backup in {} was taken with adapter `{}`, the config {} says `{}`",
            dir.display(),
            manifest.adapter,
            config.source.display(),
            config.adapter.name()
        )));
    }
    let expected = manifest.contents.as_ref();
    let found = match config.adapter {
        Adapter::Postgres => postgres::rehearse(config, dir, manifest, deadline, label)?,
        Adapter::Mysql => mysql::rehearse(config, dir, manifest, deadline, label)?,
        Adapter::Sqlite => sqlite::rehearse(config, dir, manifest, label)?,
    };
    let Some(expected) = expected else {
        crate::note!(
            "{label}: restored {} table(s); {}: restored, not compared",
            found.len(),
            no_contents(manifest)
        );
        return Ok(());
    };
    let c = contents::compare(expected, &found, true);
    contents::report(label, &c);
    if !c.matches() {
        return Err(DbError::Mismatch(format!(
            "the rehearsed restore differs from what the backup saw: {}; the scratch copy was dropped, and the live database was not touched",
            c.summary()
        )));
    }
    crate::note!("{label}: {}", c.summary());
    Ok(())
}

/// Restored tables that differ from what the backup saw: the comparison, whose summary (the
/// text) names each table that differs.
#[derive(Debug, thiserror::Error)]
#[error("{}", comparison.summary())]
pub struct ContentsDiffer {
    pub comparison: contents::Comparison,
}

/// Checks restored tables against what the backup saw before a swap or commit: `Ok` when they
/// match (or when the manifest records nothing), saying so; `Err` naming each table that
/// differs, for the caller to say what it did instead.
pub fn check_before_commit(
    label: &str,
    expected: Option<&Contents>,
    found: &[TableContents],
    whole: bool,
) -> Result<(), ContentsDiffer> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let c = contents::compare(expected, found, whole);
    if c.matches() {
        crate::note!("{label}: {}", c.summary());
        return Ok(());
    }
    contents::report(label, &c);
    Err(ContentsDiffer { comparison: c })
}

/// The check of a restore that could not check before it committed: `found` against what the
/// backup saw (nothing to check without `contents`). A mismatch says `what` ("... differ"),
/// that the live database was changed, and `then` (what to do).
pub fn check_after_commit(
    manifest: &Manifest,
    found: &[TableContents],
    what: &str,
    then: &str,
) -> Result<(), DbError> {
    check_before_commit("acme-db restore", manifest.contents.as_ref(), found, false).map_err(
        |why| {
            DbError::Mismatch(format!(
                "{what} from what the backup saw: {why}; the live database WAS changed{then}"
            ))
        },
    )
}

pub fn restore(config: &Config, dir: &Path) -> Result<(), DbError> {
    let _ = ACTION.set("restore");
    tools::catch_stop_signals();
    check_artifact_dir(dir)?;
    let started = Instant::now();
    let manifest =
        artifact::verify(dir).map_err(|e| DbError::Refused(format!("restore refused: {e}")))?;
    crate::trace!("acme-db", "restore: the artifact verified");
    if manifest.adapter != config.adapter.name() {
        return Err(DbError::Refused(format!(
            "restore refused: the backup in {} was taken with adapter `{}`, the config {} says `{}`",
            dir.display(),
            manifest.adapter,
            config.source.display(),
            config.adapter.name()
        )));
    }
    let deadline = config.timeout.map(|t| started + t);
    match config.adapter {
        Adapter::Postgres => postgres::restore(config, dir, &manifest, deadline)?,
        Adapter::Mysql => mysql::restore(config, dir, &manifest, deadline)?,
        Adapter::Sqlite => sqlite::restore(config, dir, &manifest)?,
    }
    if manifest.contents.is_none() {
        crate::note!(
            "acme-db restore: {}: the restored data was not compared with what the backup saw",
            no_contents(&manifest)
        );
    }
    crate::note!(
        "acme-db restore: {} database `{}` restored from {} (taken {}, {:.1}s)",
        config.adapter.name(),
        config.database,
        dir.display(),
        manifest.finished_at,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fails naming every configured table missing from the database's tables (`present`: one
/// name per line, asked only when the config lists tables), before anything is dumped; `place`
/// says where they were looked for.
pub fn check_tables_present(
    config: &Config,
    present: impl FnOnce() -> Result<String, DbError>,
    place: &str,
) -> Result<(), DbError> {
    let Some(tables) = &config.tables else {
        return Ok(());
    };
    let present = present()?;
    let present: Vec<&str> = present.lines().map(str::trim).collect();
    let missing: Vec<&str> = tables
        .iter()
        .map(String::as_str)
        .filter(|t| !present.contains(t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DbError::Failed(format!(
        "can't find specified table(s) in {place}`{}`: {}; fix `tables` in {}",
        config.database,
        missing.join(", "),
        config.source.display()
    )))
}

/// The first client directory (a template with `{major}`) holding `tool` for `major`.
pub fn find_tool(templates: &[String], major: Option<u32>, tool: &str) -> Option<PathBuf> {
    templates.iter().find_map(|t| {
        let dir = match major {
            Some(m) => t.replace("{major}", &m.to_string()),
            None if t.contains("{major}") => return None,
            None => t.clone(),
        };
        let path = Path::new(&dir).join(tool);
        path.is_file().then_some(path)
    })
}

/// A private temp directory (0700) for TLS material and lists; removed on drop, failure included.
/// The action running in this process (`backup`, `restore`): its private temp directories are
/// named after it, so that `bbr-runner run`, holding that action's lock, can remove the ones a
/// killed run left behind (they may hold TLS keys) without touching another action's.
static ACTION: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

pub fn private_tmp() -> Result<tempfile::TempDir, DbError> {
    tempfile::Builder::new()
        .prefix(&crate::job::private_tmp_prefix(
            ACTION.get().copied().unwrap_or("acme-db"),
        ))
        .tempdir()
        .map_err(|e| DbError::Failed(format!("cannot create a private temp directory in {}: {e}; set TMPDIR to a writable directory", std::env::temp_dir().display())))
}

/// Writes a secret file, 0600, in the private temp directory.
pub fn secret_file(dir: &Path, name: &str, content: &str) -> Result<PathBuf, DbError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(|e| DbError::Failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// A tool's failure (a `ToolError`, or a message made from one), with a hint for the operator
/// from its text.
pub fn failed(config: &Config, what: &str, message: impl std::fmt::Display) -> DbError {
    let message = message.to_string();
    let hint = tools::hint(&message, &config.source);
    DbError::Failed(format!("{what}: {message}\n{hint}"))
}

/// Runs a dump tool that writes `partial` (progress on stderr while it runs), then publishes it
/// in the artifact as `name`.
pub fn dump_and_publish(
    run: &BackupRun<'_>,
    tool: &tools::Tool,
    partial: &Path,
    name: &str,
    what: &str,
    watch: Option<tools::Watch<'_>>,
) -> Result<(), DbError> {
    tools::run_watched(
        tool,
        None,
        run.deadline,
        Some(tools::Progress {
            label: "acme-db backup",
            path: partial,
            stall: run.config.stall,
        }),
        watch,
    )
    .map_err(|m| failed(run.config, what, m))?;
    artifact::publish(run.dir, partial, name)?;
    Ok(())
}

pub fn partial_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}{name}", artifact::PARTIAL_PREFIX))
}
