//! SQLite, the embedded default: SQLite's online backup API copies a consistent snapshot while
//! the database stays in use; restore checks the artifact's integrity, then copies it into the
//! live database in one backup step, which SQLite applies atomically under its write lock.

use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{partial_path, BackupRun, DbError, Versions};
use crate::actions::artifact::{self, Manifest};

const DUMP_FILE: &str = "acme-db.sqlite";

fn sqlite_err(what: &str, path: &Path, e: rusqlite::Error) -> DbError {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    let hint = if busy {
        "; the database is busy: is acme-api still writing? run the lock script first"
    } else {
        ""
    };
    DbError::Failed(format!("{what} {}: {e}{hint}", path.display()))
}

fn copy_all(from: &Connection, to: &mut Connection, path: &Path) -> Result<(), DbError> {
    let backup =
        Backup::new(from, to).map_err(|e| sqlite_err("cannot start the copy to", path, e))?;
    // One step of all pages: atomic for every other connection.
    match backup
        .step(-1)
        .map_err(|e| sqlite_err("copy into", path, e))?
    {
        StepResult::Done => Ok(()),
        other => Err(DbError::Failed(format!(
            "copy into {} did not finish: {other:?}; the database is busy, retry after the lock",
            path.display()
        ))),
    }
}

pub fn backup(run: &BackupRun<'_>) -> Result<Versions, DbError> {
    let db = run
        .config
        .sqlite_path
        .as_deref()
        .ok_or_else(|| DbError::Failed("no sqlite_path".into()))?;
    if !db.is_file() {
        return Err(DbError::Failed(format!(
            "the SQLite database {} does not exist; check bbr_runner.sqlite_path in {}",
            db.display(),
            run.config.source.display()
        )));
    }
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_err("cannot open", db, e))?;
    if let Some(tables) = &run.config.tables {
        return Err(DbError::Failed(format!(
            "`tables` ({}) is not supported for adapter sqlite: the whole database is backed up; remove it from {}",
            tables.join(", "),
            run.config.source.display()
        )));
    }
    let partial = partial_path(run.dir, DUMP_FILE);
    let mut dst =
        Connection::open(&partial).map_err(|e| sqlite_err("cannot create", &partial, e))?;
    copy_all(&src, &mut dst, &partial)?;
    drop(dst);
    artifact::publish(run.dir, &partial, DUMP_FILE)?;
    let version = rusqlite::version().to_string();
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(3);
    Ok(Versions {
        server_version: version.clone(),
        server_major: major,
        client_version: format!("SQLite {version} (bundled)"),
        client_major: major,
        dump_format: "sqlite".into(),
    })
}

pub fn restore(config: &super::Config, dir: &Path, manifest: &Manifest) -> Result<(), DbError> {
    if manifest.dump_format != "sqlite" {
        return Err(DbError::Refused(format!(
            "restore refused: dump format `{}` is not a SQLite database",
            manifest.dump_format
        )));
    }
    let db = config
        .sqlite_path
        .as_deref()
        .ok_or_else(|| DbError::Failed("no sqlite_path".into()))?;
    let file = dir.join(DUMP_FILE);
    let src = Connection::open_with_flags(
        &file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        DbError::Refused(format!(
            "restore refused: cannot open {}: {e}",
            file.display()
        ))
    })?;
    let check: String = src
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| {
            DbError::Refused(format!(
                "restore refused: {} fails SQLite's integrity check: {e}",
                file.display()
            ))
        })?;
    if check != "ok" {
        return Err(DbError::Refused(format!(
            "restore refused: {} fails SQLite's integrity check: {check}",
            file.display()
        )));
    }
    let mut dst = Connection::open(db).map_err(|e| sqlite_err("cannot open", db, e))?;
    dst.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| sqlite_err("cannot configure", db, e))?;
    copy_all(&src, &mut dst, db)
}
