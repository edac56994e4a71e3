//! PostgreSQL: the server's major picks pg_dump/pg_restore from the client directories.
//! Backup: custom format (directory format with `--jobs` when `jobs > 1`). Restore:
//! `--clean --if-exists --single-transaction --exit-on-error`, skipping the archive's
//! EXTENSION and SCHEMA entries so a non-superuser owner can restore; parallel (not atomic)
//! only when `parallel_restore` asks for it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::{Config, Server};
use super::tools::{self, Tool};
use super::{
    available_majors, failed, find_tool, partial_path, private_tmp, secret_file, BackupRun,
    DbError, Versions,
};
use crate::actions::artifact::Manifest;

const DUMP_FILE: &str = "acme-db.dump";
const DUMP_DIR: &str = "acme-db.dir";

/// Connection: arguments and environment (the password only in the environment).
struct Conn {
    args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

fn conn(server: &Server) -> Result<Conn, DbError> {
    let args = vec![
        format!("--host={}", server.host),
        format!("--port={}", server.port),
        format!("--username={}", server.username),
        "--no-password".to_string(),
    ];
    let mut env = vec![
        ("PGPASSWORD".to_string(), server.password.clone()),
        ("PGCONNECT_TIMEOUT".to_string(), "10".to_string()),
        ("PGAPPNAME".to_string(), "bbr-acme-db".to_string()),
    ];
    let mut tmp = None;
    if let Some(tls) = &server.tls {
        let dir = private_tmp()?;
        env.push((
            "PGSSLMODE".into(),
            if tls.skip_host_verify {
                "verify-ca"
            } else {
                "verify-full"
            }
            .into(),
        ));
        env.push((
            "PGSSLROOTCERT".into(),
            secret_file(dir.path(), "ca.pem", &tls.ca)?
                .display()
                .to_string(),
        ));
        if let Some((cert, key)) = &tls.client {
            env.push((
                "PGSSLCERT".into(),
                secret_file(dir.path(), "cert.pem", cert)?
                    .display()
                    .to_string(),
            ));
            env.push((
                "PGSSLKEY".into(),
                secret_file(dir.path(), "key.pem", key)?
                    .display()
                    .to_string(),
            ));
        }
        tmp = Some(dir);
    } else {
        env.push(("PGSSLMODE".into(), "prefer".into()));
    }
    Ok(Conn {
        args,
        env,
        _tmp: tmp,
    })
}

fn psql(config: &Config, conn: &Conn, sql: &str) -> Result<String, DbError> {
    psql_on(config, conn, &config.database, sql)
}

fn psql_on(config: &Config, conn: &Conn, database: &str, sql: &str) -> Result<String, DbError> {
    let majors = available_majors(&config.postgres_client_dirs, "psql");
    let program = majors
        .first()
        .and_then(|m| find_tool(&config.postgres_client_dirs, Some(*m), "psql"))
        .or_else(|| find_tool(&config.postgres_client_dirs, None, "psql"))
        .ok_or_else(|| {
            DbError::Failed(format!(
                "no psql in the PostgreSQL client directories {:?} (bbr_runner.postgres_client_dirs in {})",
                config.postgres_client_dirs,
                config.source.display()
            ))
        })?;
    let tool = Tool::new(program)
        .args([
            "--no-psqlrc",
            "--tuples-only",
            "--no-align",
            "--quiet",
            "--field-separator=|",
        ])
        .args(conn.args.clone())
        .arg(format!("--dbname={database}"))
        .arg(format!("--command={sql}"))
        .envs(&conn.env);
    let out = tools::run(&tool, None, None, None)
        .map_err(|m| failed(config, "cannot query the PostgreSQL server", m))?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

struct Server15 {
    version: String,
    major: u32,
}

fn server_version(config: &Config, conn: &Conn) -> Result<Server15, DbError> {
    let out = psql(
        config,
        conn,
        "SELECT current_setting('server_version_num'), current_setting('server_version')",
    )?;
    let (num, text) = out.split_once('|').unwrap_or((out.as_str(), ""));
    let num: u32 = num
        .trim()
        .parse()
        .map_err(|_| DbError::Failed(format!("unexpected server version answer `{out}`")))?;
    Ok(Server15 {
        version: text.split_whitespace().next().unwrap_or(text).to_string(),
        major: num / 10000,
    })
}

fn tool_for(config: &Config, major: u32, name: &str) -> Result<PathBuf, DbError> {
    find_tool(&config.postgres_client_dirs, Some(major), name).ok_or_else(|| {
        let have = available_majors(&config.postgres_client_dirs, name);
        DbError::Failed(format!(
            "the server is PostgreSQL {major} but there is no {name} {major} in {:?}; available: {}; install the client for {major} (Debian: apt-get install postgresql-client-{major}) or set bbr_runner.postgres_client_dirs in {}",
            config.postgres_client_dirs,
            if have.is_empty() { "none".into() } else { have.iter().map(u32::to_string).collect::<Vec<_>>().join(", ") },
            config.source.display()
        ))
    })
}

fn tool_version(program: &Path) -> Result<(String, u32), DbError> {
    let out = tools::run(
        &Tool::new(program.to_path_buf()).arg("--version"),
        None,
        None,
        None,
    )
    .map_err(DbError::Failed)?;
    let text = String::from_utf8_lossy(&out).trim().to_string();
    let major = text
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
        .unwrap_or(0);
    Ok((text, major))
}

fn check_tables(config: &Config, conn: &Conn) -> Result<(), DbError> {
    if config.tables.is_none() {
        return Ok(());
    }
    let out = psql(
        config,
        conn,
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema = 'public'",
    )?;
    super::check_tables_present(config, &out, "schema public of ")
}

pub fn backup(run: &BackupRun<'_>) -> Result<Versions, DbError> {
    let config = run.config;
    let server = config
        .server
        .as_ref()
        .ok_or_else(|| DbError::Failed("no server in the config".into()))?;
    let conn = conn(server)?;
    let version = server_version(config, &conn)?;
    let pg_dump = tool_for(config, version.major, "pg_dump")?;
    let (client_version, client_major) = tool_version(&pg_dump)?;
    check_tables(config, &conn)?;
    let (format, name) = if config.jobs > 1 {
        ("directory", DUMP_DIR)
    } else {
        ("custom", DUMP_FILE)
    };
    let partial = partial_path(run.dir, name);
    let mut tool = Tool::new(pg_dump)
        .arg(format!("--format={format}"))
        .arg(format!("--file={}", partial.display()))
        .args(conn.args.clone())
        .envs(&conn.env);
    if config.jobs > 1 {
        tool = tool.arg(format!("--jobs={}", config.jobs));
    }
    if let Some(level) = config.compression {
        tool = tool.arg(format!("--compress={level}"));
    }
    for t in config.tables.iter().flatten() {
        tool = tool.arg(format!("--table={t}"));
    }
    tool = tool.arg(config.database.clone());
    super::dump_and_publish(run, &tool, &partial, name, "pg_dump failed")?;
    Ok(Versions {
        server_version: version.version,
        server_major: version.major,
        client_version,
        client_major,
        dump_format: format.into(),
    })
}

pub fn restore(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
) -> Result<(), DbError> {
    let server = config
        .server
        .as_ref()
        .ok_or_else(|| DbError::Failed("no server in the config".into()))?;
    let archive = match manifest.dump_format.as_str() {
        "custom" => dir.join(DUMP_FILE),
        "directory" => dir.join(DUMP_DIR),
        other => {
            return Err(DbError::Refused(format!(
                "restore refused: dump format `{other}` is not a PostgreSQL format"
            )))
        }
    };
    let conn = conn(server)?;
    let version = server_version(config, &conn)?;
    let pg_restore = tool_for(config, version.major, "pg_restore")?;
    let (_, restore_major) = tool_version(&pg_restore)?;
    if manifest.client_major > restore_major {
        return Err(DbError::Refused(format!(
            "restore refused: the dump was made by pg_dump {} (PostgreSQL {}), newer than pg_restore {restore_major} for this server (PostgreSQL {})",
            manifest.client_major, manifest.server_major, version.major
        )));
    }
    // The archive's table of contents without EXTENSION and SCHEMA entries.
    let listing = tools::run(
        &Tool::new(pg_restore.clone())
            .arg("--list")
            .arg(archive.display().to_string()),
        None,
        deadline,
        None,
    )
    .map_err(|m| {
        DbError::Refused(format!(
            "restore refused: pg_restore cannot read the archive: {m}"
        ))
    })?;
    let listing = String::from_utf8_lossy(&listing);
    let kept: String = listing
        .lines()
        .filter(|l| !l.contains(" EXTENSION ") && !l.contains(" SCHEMA "))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = private_tmp()?;
    let list = secret_file(tmp.path(), "restore.list", &kept)?;
    let scratch = Scratch {
        config,
        listing: &kept,
        conn: &conn,
        pg_restore: &pg_restore,
        list: &list,
        archive: &archive,
        deadline,
    };
    match scratch.restore(manifest) {
        Ok(()) => return Ok(()),
        Err(reason) => crate::note!("acme-db restore: one transaction ({reason})"),
    }
    let mut tool = Tool::new(pg_restore)
        .envs(&restore_session(config))
        .args(["--clean", "--if-exists", "--exit-on-error"])
        .arg(format!("--use-list={}", list.display()))
        .arg(format!("--dbname={}", config.database))
        .args(conn.args.clone())
        .envs(&conn.env);
    let parallel = config.parallel_restore && config.jobs > 1;
    if parallel {
        crate::note!("acme-db restore: parallel restore with {} jobs (not atomic: a failure can leave a partial restore)", config.jobs);
        tool = tool.arg(format!("--jobs={}", config.jobs));
    } else {
        tool = tool.arg("--single-transaction");
    }
    tool = tool.arg(archive.display().to_string());
    let what = if parallel {
        "pg_restore failed (parallel restore: the database may be partly restored; run the restore again)"
    } else {
        "pg_restore failed (its single transaction was rolled back: the database is as it was)"
    };
    tools::run(&tool, None, deadline, None).map_err(|m| failed(config, what, m))?;
    Ok(())
}

/// The fast all-or-nothing route: restore in parallel into a new database, then swap it in with
/// two renames in one transaction (while the API is locked), and drop the old one. The original
/// is not touched until the swap, and the swap is atomic. Used only when it means the same as the
/// single-transaction restore and the role may do it; otherwise `Err(why)`, and the caller
/// restores in one transaction.
struct Scratch<'a> {
    config: &'a Config,
    /// The archive's table of contents, as restored.
    listing: &'a str,
    conn: &'a Conn,
    pg_restore: &'a Path,
    list: &'a Path,
    archive: &'a Path,
    deadline: Option<Instant>,
}

/// The archive bytes of each table's data, from a directory-format archive (one `ID.dat*` file
/// per TABLE DATA entry of the listing); `None` for a custom-format file.
fn table_data_sizes(listing: &str, archive: &Path) -> Option<Vec<u64>> {
    let files: Vec<(String, u64)> = std::fs::read_dir(archive)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let len = e.metadata().ok()?.len();
            Some((e.file_name().to_string_lossy().into_owned(), len))
        })
        .collect();
    Some(
        listing
            .lines()
            .filter(|l| !l.starts_with(';') && l.contains(" TABLE DATA "))
            .filter_map(|l| l.split(';').next())
            .map(|id| {
                let prefix = format!("{}.dat", id.trim());
                files
                    .iter()
                    .filter(|(name, _)| *name == prefix || name.starts_with(&format!("{prefix}.")))
                    .map(|(_, len)| len)
                    .sum()
            })
            .collect(),
    )
}

/// Session settings for pg_restore (any role may make them): index builds sort in memory.
fn restore_session(config: &Config) -> Vec<(String, String)> {
    vec![(
        "PGOPTIONS".into(),
        format!("-c maintenance_work_mem={}", config.maintenance_work_mem),
    )]
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Scratch<'_> {
    fn restore(&self, manifest: &Manifest) -> Result<(), String> {
        let c = self.config;
        if c.jobs < 2 {
            return Err("jobs is 1: a parallel restore would gain nothing".into());
        }
        if c.tables.is_some() || manifest.tables.is_some() {
            return Err(
                "the backup holds only some tables: the rest of the database must stay".into(),
            );
        }
        let sizes = table_data_sizes(self.listing, self.archive).ok_or(
            "a custom-format archive does not tell its tables' sizes, so a parallel restore's gain is unknown",
        )?;
        let overlap = sizes.iter().sum::<u64>() - sizes.iter().max().copied().unwrap_or(0);
        if overlap < c.scratch_restore_min_bytes {
            return Err(format!(
                "all but the largest table hold {overlap} bytes of the archive, under scratch_restore_min_bytes ({}): parallel workers would gain less than the scratch database costs",
                c.scratch_restore_min_bytes
            ));
        }
        let db = &c.database;
        let facts = psql(
            c,
            self.conn,
            "SELECT r.rolcreatedb, d.datdba = r.oid, d.datacl IS NULL, NOT EXISTS (SELECT 1 FROM pg_db_role_setting s WHERE s.setdatabase = d.oid), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype FROM pg_database d, pg_roles r WHERE d.datname = current_database() AND r.rolname = current_user",
        )
        .map_err(|e| format!("cannot read the database's properties: {e}"))?;
        let f: Vec<&str> = facts.split('|').collect();
        if f.len() != 7 {
            return Err(format!("unexpected answer `{facts}`"));
        }
        for (ok, why) in [
            (f[0], "the role may not create databases (CREATEDB)"),
            (f[1], "the role does not own the database"),
            (f[2], "the database has grants of its own"),
            (f[3], "the database has settings of its own"),
        ] {
            if ok != "t" {
                return Err(why.into());
            }
        }
        let suffix = std::process::id();
        let new = format!("{db}_bbr_new_{suffix}");
        let old = format!("{db}_bbr_old_{suffix}");
        if old.len() > 63 {
            return Err("the database name is too long for the scratch names".into());
        }
        let started = Instant::now();
        psql(
            c,
            self.conn,
            &format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
                ident(&new),
                literal(f[4]),
                literal(f[5]),
                literal(f[6])
            ),
        )
        .map_err(|e| format!("cannot create the scratch database: {e}"))?;
        let drop_new = || {
            let _ = psql(
                c,
                self.conn,
                &format!("DROP DATABASE IF EXISTS {}", ident(&new)),
            );
        };
        let created = started.elapsed();
        crate::note!(
            "acme-db restore: restoring with {} jobs into the scratch database `{new}`",
            c.jobs
        );
        let restore_started = Instant::now();
        let tool = Tool::new(self.pg_restore.to_path_buf())
            .args(["--exit-on-error", &format!("--jobs={}", c.jobs)])
            .arg(format!("--use-list={}", self.list.display()))
            .arg(format!("--dbname={new}"))
            .args(self.conn.args.clone())
            .envs(&self.conn.env)
            .envs(&restore_session(c))
            .arg(self.archive.display().to_string());
        if let Err(m) = tools::run(&tool, None, self.deadline, None) {
            drop_new();
            return Err(format!(
                "the parallel restore into the scratch database failed ({m}); it was dropped"
            ));
        }
        let restored = restore_started.elapsed();
        let swap_started = Instant::now();
        // From a third database: neither of the two can be renamed while we are connected to it.
        let swap = format!(
            "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT;",
            ident(db),
            ident(&old),
            ident(&new),
            ident(db)
        );
        let swapped = psql_on(c, self.conn, "postgres", &swap)
            .or_else(|_| psql_on(c, self.conn, "template1", &swap));
        if let Err(e) = swapped {
            drop_new();
            return Err(format!(
                "the atomic swap failed ({e}); the scratch database was dropped"
            ));
        }
        let swapped = swap_started.elapsed();
        let drop_started = Instant::now();
        // Now `db` is the restored database and `old` the previous one.
        if let Err(e) = psql(c, self.conn, &format!("DROP DATABASE {}", ident(&old))) {
            crate::note!("acme-db restore: the previous database is kept as `{old}`: it could not be dropped ({e}); drop it when convenient");
        }
        crate::note!(
            "acme-db restore: restored in parallel and swapped in atomically (create {:.2}s, restore {:.2}s, swap {:.2}s, drop of the previous database {:.2}s)",
            created.as_secs_f64(),
            restored.as_secs_f64(),
            swapped.as_secs_f64(),
            drop_started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::table_data_sizes;

    #[test]
    fn table_data_sizes_come_from_the_directory_archives_data_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, len) in [
            ("3364.dat.gz", 2000),
            ("3366.dat.gz", 500),
            ("3365.dat", 7),
            ("toc.dat", 4000),
        ] {
            std::fs::write(dir.path().join(name), vec![0u8; len]).expect("write");
        }
        let listing = "3366; 0 16409 TABLE DATA public blobs acme\n\
                       3364; 0 16393 TABLE DATA public pgbench_accounts acme\n\
                       3365; 0 16396 TABLE DATA public pgbench_branches acme\n\
                       ;3362; 0 16387 TABLE DATA public left_out acme\n\
                       3363; 0 16390 TABLE DATA public empty acme\n\
                       218; 1259 16393 TABLE public pgbench_accounts acme\n";
        assert_eq!(
            table_data_sizes(listing, dir.path()),
            Some(vec![500, 2000, 7, 0])
        );
        let custom = dir.path().join("3364.dat.gz");
        assert_eq!(table_data_sizes(listing, &custom), None);
    }
}
