//! SQLite, the embedded default: SQLite's online backup API copies a consistent snapshot while
//! the database stays in use; restore checks the artifact's integrity, then copies it into the
//! live database in one backup step, which SQLite applies atomically under its write lock.

use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{partial_path, private_tmp, BackupRun, DbError, Versions};
use crate::actions::artifact::{self, Contents, Manifest, TableContents};

const DUMP_FILE: &str = "acme-db.sqlite";

/// How a table's digest is computed here: the SHA-256 of each row (its values in the order of
/// their columns' names, each tagged with its type and, for text and blobs, its length), the
/// first 16 bytes of each summed modulo 2^128; so the rows' order does not matter and a
/// duplicated row counts twice.
const ALGORITHM: &str = "sqlite-row-sha256-sum/1";

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every table's rows, and with `digests` its digest (`ALGORITHM`); SQLite's own tables and
/// virtual tables (whose content lives in tables listed themselves) left out.
fn table_contents(conn: &Connection, digests: bool) -> rusqlite::Result<Vec<TableContents>> {
    use rusqlite::types::ValueRef;
    use sha2::{Digest, Sha256};
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for name in names {
        if !digests {
            let rows: i64 =
                conn.query_row(&format!("SELECT count(*) FROM {}", quote(&name)), [], |r| {
                    r.get(0)
                })?;
            out.push(TableContents {
                schema: None,
                name,
                rows: rows.unsigned_abs(),
                digest: None,
            });
            continue;
        }
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1)")?
            .query_map([&name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let columns = super::contents::sorted(columns);
        let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let mut stmt =
            conn.prepare(&format!("SELECT {} FROM {}", list.join(", "), quote(&name)))?;
        let mut rows = stmt.query([])?;
        let (mut count, mut sum) = (0u64, 0u128);
        while let Some(row) = rows.next()? {
            let mut h = Sha256::new();
            for i in 0..columns.len() {
                match row.get_ref(i)? {
                    ValueRef::Null => h.update([0u8]),
                    ValueRef::Integer(v) => {
                        h.update([1u8]);
                        h.update(v.to_be_bytes());
                    }
                    ValueRef::Real(v) => {
                        h.update([2u8]);
                        h.update(v.to_bits().to_be_bytes());
                    }
                    ValueRef::Text(b) => {
                        h.update([3u8]);
                        h.update((b.len() as u64).to_be_bytes());
                        h.update(b);
                    }
                    ValueRef::Blob(b) => {
                        h.update([4u8]);
                        h.update((b.len() as u64).to_be_bytes());
                        h.update(b);
                    }
                }
            }
            let d = h.finalize();
            let mut first = [0u8; 16];
            first.copy_from_slice(&d[..16]);
            sum = sum.wrapping_add(u128::from_be_bytes(first));
            count += 1;
        }
        out.push(TableContents {
            schema: None,
            name,
            rows: count,
            digest: Some(format!("{sum:032x}")),
        });
    }
    Ok(out)
}

/// What the backup copy holds: it is the snapshot, so its tables are what the backup saw.
fn contents_of(path: &Path, digests: bool) -> Result<Vec<TableContents>, DbError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_err("cannot open", path, e))?;
    table_contents(&conn, digests).map_err(|e| sqlite_err("cannot read the tables of", path, e))
}

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
    let tables = contents_of(&partial, run.config.digests)?;
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
        contents: Some(Contents {
            algorithm: ALGORITHM.into(),
            snapshot: "read from the backup copy itself, which SQLite's online backup API wrote as one consistent snapshot".into(),
            tables,
        }),
    })
}

/// The artifact's database, opened read-only after SQLite's integrity check.
fn open_checked(dir: &Path, manifest: &Manifest, what: &str) -> Result<Connection, DbError> {
    if manifest.dump_format != "sqlite" {
        return Err(DbError::Refused(format!(
            "{what} refused: dump format `{}` is not a SQLite database",
            manifest.dump_format
        )));
    }
    let file = dir.join(DUMP_FILE);
    let src = Connection::open_with_flags(
        &file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        DbError::Refused(format!(
            "{what} refused: cannot open {}: {e}",
            file.display()
        ))
    })?;
    let check: String = src
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| {
            DbError::Refused(format!(
                "{what} refused: {} fails SQLite's integrity check: {e}",
                file.display()
            ))
        })?;
    if check != "ok" {
        return Err(DbError::Refused(format!(
            "{what} refused: {} fails SQLite's integrity check: {check}",
            file.display()
        )));
    }
    Ok(src)
}

/// Whether the manifest recorded digests (else rows only are compared, and computed).
fn with_digests(manifest: &Manifest) -> bool {
    manifest
        .contents
        .as_ref()
        .is_some_and(|c| c.tables.iter().any(|t| t.digest.is_some()))
}

pub fn restore(config: &super::Config, dir: &Path, manifest: &Manifest) -> Result<(), DbError> {
    let db = config
        .sqlite_path
        .as_deref()
        .ok_or_else(|| DbError::Failed("no sqlite_path".into()))?;
    let src = open_checked(dir, manifest, "restore")?;
    let file = dir.join(DUMP_FILE);
    // What lands in the live database is this file, page for page: it is checked before.
    if manifest.contents.is_some() {
        let found = table_contents(&src, with_digests(manifest))
            .map_err(|e| sqlite_err("cannot read the tables of", &file, e))?;
        super::check_before_commit(
            "acme-db restore",
            manifest.contents.as_ref(),
            &found,
            true,
        )
        .map_err(|why| {
            DbError::Mismatch(format!(
                "restore refused: {} differs from what the backup saw: {why}; the live database {} was not touched",
                file.display(),
                db.display()
            ))
        })?;
    }
    let mut dst = Connection::open(db).map_err(|e| sqlite_err("cannot open", db, e))?;
    dst.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| sqlite_err("cannot configure", db, e))?;
    copy_all(&src, &mut dst, db)
}

/// Restores the artifact into a temp file in the private temp directory as restore would (one
/// backup step of every page), and reads its tables back; the file is removed. The live
/// database is not opened at all.
pub fn rehearse(
    _config: &super::Config,
    dir: &Path,
    manifest: &Manifest,
    label: &str,
) -> Result<Vec<TableContents>, DbError> {
    let src = open_checked(dir, manifest, "rehearsal")?;
    let tmp = private_tmp()?;
    let scratch = tmp.path().join("rehearsal.sqlite");
    let mut dst =
        Connection::open(&scratch).map_err(|e| sqlite_err("cannot create", &scratch, e))?;
    copy_all(&src, &mut dst, &scratch)?;
    drop(dst);
    crate::note!("{label}: restored into the temp file {}", scratch.display());
    let found = contents_of(&scratch, with_digests(manifest))?;
    drop(tmp);
    Ok(found)
}
