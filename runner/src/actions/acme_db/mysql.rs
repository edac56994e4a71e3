//! MySQL and MariaDB (adapter `mysql`): `mysqldump --single-transaction --skip-add-locks`,
//! plus `--set-gtid-purged=OFF` for MySQL (not MariaDB, told apart by the server's version
//! string); restore streams the dump into the `mysql` client.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::{Config, Server};
use super::tools::{self, Tool};
use super::{
    failed, find_tool, partial_path, private_tmp, secret_file, BackupRun, DbError, Versions,
};
use crate::actions::artifact::{Contents, Manifest, TableContents};

const DUMP_FILE: &str = "acme-db.sql";

struct Conn {
    args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

fn conn(server: &Server, mariadb: bool) -> Result<Conn, DbError> {
    // --no-defaults must come first: no option file is read (none is granted by the profile).
    let mut args = vec![
        "--no-defaults".to_string(),
        format!("--user={}", server.username),
    ];
    if server.host.starts_with('/') {
        args.push(format!("--socket={}", server.host));
    } else {
        args.push(format!("--host={}", server.host));
        args.push(format!("--port={}", server.port));
        args.push("--protocol=TCP".into());
    }
    let mut tmp = None;
    if let Some(tls) = &server.tls {
        let dir = private_tmp()?;
        args.push(format!(
            "--ssl-ca={}",
            secret_file(dir.path(), "ca.pem", &tls.ca)?.display()
        ));
        if let Some((cert, key)) = &tls.client {
            args.push(format!(
                "--ssl-cert={}",
                secret_file(dir.path(), "cert.pem", cert)?.display()
            ));
            args.push(format!(
                "--ssl-key={}",
                secret_file(dir.path(), "key.pem", key)?.display()
            ));
        }
        if mariadb {
            if !tls.skip_host_verify {
                args.push("--ssl-verify-server-cert".into());
            }
        } else {
            args.push(format!(
                "--ssl-mode={}",
                if tls.skip_host_verify {
                    "VERIFY_CA"
                } else {
                    "VERIFY_IDENTITY"
                }
            ));
        }
        tmp = Some(dir);
    }
    Ok(Conn {
        args,
        env: vec![("MYSQL_PWD".into(), server.password.clone())],
        _tmp: tmp,
    })
}

fn client(config: &Config, names: &[&str]) -> Result<PathBuf, DbError> {
    names
        .iter()
        .find_map(|n| find_tool(&config.mysql_client_dirs, None, n))
        .ok_or_else(|| {
            DbError::Failed(format!(
                "none of {} in {:?}; install the client (Debian: apt-get install mariadb-client) or set bbr_runner.mysql_client_dirs in {}",
                names.join(", "),
                config.mysql_client_dirs,
                config.source.display()
            ))
        })
}

fn query(config: &Config, conn: &Conn, sql: &str) -> Result<String, DbError> {
    query_on(config, conn, &config.database, sql)
}

fn query_on(config: &Config, conn: &Conn, database: &str, sql: &str) -> Result<String, DbError> {
    let tool = Tool::new(client(config, &["mysql", "mariadb"])?)
        .args(conn.args.clone())
        .args(["--skip-column-names", "--silent", "--batch"])
        .arg(format!("--execute={sql}"))
        .arg(database.to_string())
        .envs(&conn.env);
    let out = tools::run(&tool, None, None, None)
        .map_err(|m| failed(config, "cannot query the MySQL/MariaDB server", m))?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

struct ServerInfo {
    version: String,
    major: u32,
    mariadb: bool,
}

fn server(config: &Config) -> Result<(ServerInfo, Conn), DbError> {
    let s = config
        .server
        .as_ref()
        .ok_or_else(|| DbError::Failed("no server in the config".into()))?;
    // The version query itself needs no TLS flavour decision: try without knowing, as the SDK does.
    let probe = conn(s, true)?;
    let version = query(config, &probe, "SELECT VERSION()")?;
    let mariadb = version.to_lowercase().contains("mariadb");
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    Ok((
        ServerInfo {
            version,
            major,
            mariadb,
        },
        conn(s, mariadb)?,
    ))
}

fn check_tables(config: &Config, conn: &Conn) -> Result<(), DbError> {
    let sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'";
    super::check_tables_present(config, || query(config, conn, sql), "")
}

/// mysqldump's flags: a consistent snapshot without table locks; MySQL (not MariaDB, which has
/// no such option) also leaves GTID statements out, which managed servers refuse.
fn dump_flags(mariadb: bool) -> Vec<&'static str> {
    let mut flags = vec![
        "--single-transaction",
        "--skip-add-locks",
        "--routines",
        "--triggers",
    ];
    if !mariadb {
        flags.push("--set-gtid-purged=OFF");
    }
    flags
}

pub fn backup(run: &BackupRun<'_>) -> Result<Versions, DbError> {
    let config = run.config;
    let (info, conn) = server(config)?;
    check_tables(config, &conn)?;
    let dump = client(config, &["mysqldump", "mariadb-dump"])?;
    let client_version = tools::run(&Tool::new(dump.clone()).arg("--version"), None, None, None)
        .map(|o| String::from_utf8_lossy(&o).trim().to_string())
        .map_err(|e| DbError::Failed(e.to_string()))?;
    let partial = partial_path(run.dir, DUMP_FILE);
    let mut tool = Tool::new(dump)
        .args(conn.args.clone())
        .args(dump_flags(info.mariadb))
        .arg(format!("--result-file={}", partial.display()))
        .envs(&conn.env)
        .arg(config.database.clone());
    for t in config.tables.iter().flatten() {
        tool = tool.arg(t.clone());
    }
    drop_leftovers(config, &conn);
    let tables = list_tables(config, &conn, &config.database, config.tables.as_deref())?;
    let mut snapshot = SameSnapshot::lock(config, &conn, &tables)?;
    let nothing_to_count = tables.is_empty();
    let mut watch = || snapshot.as_mut().and_then(|s| s.watch(config, &conn));
    tools::run_watched_every(
        &tool,
        None,
        run.deadline,
        Some(tools::Progress {
            label: "acme-db backup",
            path: &partial,
            stall: config.stall,
        }),
        Some(&mut watch),
        std::time::Duration::from_millis(50),
    )
    .map_err(|m| failed(config, "mysqldump failed", m))?;
    let contents = match snapshot {
        Some(s) => s.finish(config, &tables, run.deadline)?,
        None if nothing_to_count => Some(Contents {
            algorithm: ALGORITHM.into(),
            snapshot: "the database has no table".into(),
            tables: Vec::new(),
        }),
        None => None,
    };
    crate::actions::artifact::publish(run.dir, &partial, DUMP_FILE)?;
    Ok(Versions {
        server_version: info.version,
        server_major: info.major,
        client_major: info.major,
        client_version,
        dump_format: "sql".into(),
        contents,
    })
}

pub fn restore(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
) -> Result<(), DbError> {
    let conn = server_for(config, manifest, "restore")?;
    // No transactional DDL: the dump cannot be checked before a commit. It is checked in a
    // scratch database first, and applied to the live one only when it holds what the backup saw.
    let mut check_after = false;
    if let Some(expected) = &manifest.contents {
        match in_scratch(
            config,
            &conn,
            dir,
            manifest,
            deadline,
            "new",
            "acme-db restore",
        ) {
            Ok(found) => {
                super::check_before_commit("acme-db restore", Some(expected), &found, true)
                    .map_err(|why| {
                        DbError::Mismatch(format!(
                            "restore refused: the dump, restored into a scratch database, differs from what the backup saw: {why}; the live database was not touched"
                        ))
                    })?;
            }
            Err(Scratch::Unavailable(why)) => {
                crate::note!("acme-db restore: cannot check the dump in a scratch database before restoring ({why}): restoring into the live database directly; the check comes after");
                check_after = true;
            }
            Err(Scratch::Failed(e)) => return Err(e),
        }
    }
    apply(config, &conn, dir, &config.database, deadline)
        .map_err(|m| failed(config, "the mysql client failed to apply the dump", m))?;
    if check_after {
        let tables = list_tables(config, &conn, &config.database, None)?;
        let found = table_contents(config, &conn, &config.database, &tables, manifest, deadline)?;
        super::check_after_commit(
            manifest,
            &found,
            "the restored tables differ",
            " (no scratch database could be made to check first): restore from another backup",
        )?;
    }
    Ok(())
}

/// The server a `what` (restore, rehearsal) of `manifest`'s dump goes to, once the dump is
/// known to be a MySQL/MariaDB dump from a server no newer than it; what killed runs left
/// there is dropped first.
fn server_for(config: &Config, manifest: &Manifest, what: &str) -> Result<Conn, DbError> {
    if manifest.dump_format != "sql" {
        return Err(DbError::Refused(format!(
            "{what} refused: dump format `{}` is not a MySQL/MariaDB dump",
            manifest.dump_format
        )));
    }
    let (info, conn) = server(config)?;
    if manifest.server_major > info.major {
        return Err(DbError::Refused(format!(
            "{what} refused: the dump comes from server major {} ({}), newer than this server ({})",
            manifest.server_major, manifest.server_version, info.version
        )));
    }
    drop_leftovers(config, &conn);
    Ok(conn)
}

/// Streams the dump into `database` with the mysql client.
fn apply(
    config: &Config,
    conn: &Conn,
    dir: &Path,
    database: &str,
    deadline: Option<Instant>,
) -> Result<(), String> {
    let file = dir.join(DUMP_FILE);
    let input = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let tool = Tool::new(client(config, &["mysql", "mariadb"]).map_err(|e| e.to_string())?)
        .args(conn.args.clone())
        .arg(database.to_string())
        .envs(&conn.env);
    tools::run(&tool, Some(input), deadline, None)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// How a table's digest is computed here: the md5 of each row (`QUOTE()` of each value, columns
/// in the order of their names, as bytes, comma-separated), the two 64-bit halves of each summed
/// over the table modulo 2^64 (`HI.LO`); so the rows' order does not matter, no sort is needed,
/// and a duplicated row counts twice. Computed by the server, with `time_zone` +00:00.
const ALGORITHM: &str = "mysql-row-md5-sum/1";

/// A base table of the database, with its columns (sorted by name) and engine.
#[derive(Debug, Clone)]
struct TableRef {
    name: String,
    columns: Vec<String>,
    engine: String,
}

fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn backticks(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The base tables of `database` (or those of `only`), names read as hex so no character in
/// one can break the output's lines.
fn list_tables(
    config: &Config,
    conn: &Conn,
    database: &str,
    only: Option<&[String]>,
) -> Result<Vec<TableRef>, DbError> {
    let filter = match only {
        Some(t) => format!(
            " AND t.TABLE_NAME IN ({})",
            t.iter()
                .map(|t| string_literal(t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    let out = query_on(
        config,
        conn,
        database,
        &format!(
            "SELECT HEX(t.TABLE_NAME), HEX(c.COLUMN_NAME), IFNULL(t.ENGINE, '') FROM information_schema.TABLES t JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED'){filter} ORDER BY t.TABLE_NAME"
        ),
    )?;
    let mut tables: Vec<TableRef> = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let decoded = (f.len() == 3)
            .then(|| {
                Some((
                    super::contents::hex_decode(f[0])?,
                    super::contents::hex_decode(f[1])?,
                ))
            })
            .flatten();
        let Some((name, column)) = decoded else {
            return Err(DbError::Failed(format!(
                "unexpected answer `{line}` listing the tables"
            )));
        };
        match tables.last_mut() {
            Some(t) if t.name == name => t.columns.push(column),
            _ => tables.push(TableRef {
                name,
                columns: vec![column],
                engine: f[2].to_string(),
            }),
        }
    }
    for t in &mut tables {
        t.columns = super::contents::sorted(std::mem::take(&mut t.columns));
    }
    Ok(tables)
}

/// One statement per table, each printing `HEX(name) TAB rows TAB digest` (digest empty
/// without `digests`).
fn contents_sql(tables: &[TableRef], digests: bool) -> String {
    const TWO_64: &str = "18446744073709551616";
    tables
        .iter()
        .map(|t| {
            let hex: String = t.name.bytes().map(|b| format!("{b:02X}")).collect();
            if !digests {
                return format!("SELECT '{hex}', COUNT(*), '' FROM {};\n", backticks(&t.name));
            }
            let values: Vec<String> = t
                .columns
                .iter()
                .map(|c| format!("CAST(QUOTE({}) AS BINARY)", backticks(c)))
                .collect();
            let half = |at: u32| {
                format!("MOD(COALESCE(SUM(CAST(CONV(SUBSTRING(h, {at}, 16), 16, 10) AS UNSIGNED)), 0), {TWO_64})")
            };
            format!(
                "SELECT '{hex}', COUNT(*), CONCAT({}, '.', {}) FROM (SELECT MD5(CONCAT_WS(',', {})) AS h FROM {}) r;\n",
                half(1),
                half(17),
                values.join(", "),
                backticks(&t.name)
            )
        })
        .collect()
}

fn parse_contents(lines: &[String]) -> Result<Vec<TableContents>, DbError> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let parsed = (f.len() == 3)
                .then(|| {
                    Some((
                        super::contents::hex_decode(f[0])?,
                        f[1].parse::<u64>().ok()?,
                    ))
                })
                .flatten();
            let (name, rows) = parsed.ok_or_else(|| {
                DbError::Failed(format!("unexpected answer `{l}` counting a table's rows"))
            })?;
            Ok(TableContents {
                schema: None,
                name,
                rows,
                digest: (!f[2].is_empty()).then(|| f[2].to_string()),
            })
        })
        .collect()
}

/// The mysql client reading statements from its stdin, each result written at once, unescaped.
fn session(config: &Config, conn: &Conn, database: &str) -> Result<tools::Session, DbError> {
    let tool = Tool::new(client(config, &["mysql", "mariadb"])?)
        .args(conn.args.clone())
        .args(["--skip-column-names", "--batch", "--raw", "--unbuffered"])
        .arg(database.to_string())
        .envs(&conn.env);
    tools::Session::start(&tool).map_err(|m| failed(config, "cannot start the mysql client", m))
}

/// A marker no table can print by chance.
fn marker(what: &str) -> String {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut b)
    });
    let nonce: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("bbr-runner-{what}-{nonce}")
}

fn ask(
    s: &mut tools::Session,
    sql: &str,
    what: &str,
    deadline: Option<Instant>,
) -> Result<Vec<String>, tools::ToolError> {
    let m = marker(what);
    s.send(&format!("{sql}\nSELECT '{m}';\n"))?;
    s.until(&m, deadline, None)
}

/// Counts and digests `tables` of `database` in a session of their own.
fn table_contents(
    config: &Config,
    conn: &Conn,
    database: &str,
    tables: &[TableRef],
    manifest: &Manifest,
    deadline: Option<Instant>,
) -> Result<Vec<TableContents>, DbError> {
    let digests = manifest
        .contents
        .as_ref()
        .is_some_and(|c| c.tables.iter().any(|t| t.digest.is_some()));
    let mut s = session(config, conn, database)?;
    let lines = ask(
        &mut s,
        &format!(
            "SET time_zone = '+00:00';\n{}",
            contents_sql(tables, digests)
        ),
        "contents",
        deadline,
    )
    .map_err(|m| failed(config, "cannot count the restored tables", m))?;
    let _ = s.finish(deadline);
    parse_contents(&lines)
}

/// The dump's snapshot, shared: mysqldump --single-transaction starts its own transaction, which
/// no other session can join. So the runner holds every table it dumps write-locked (LOCK TABLES
/// ... WRITE: no other session can change them) while its own session starts a consistent-
/// snapshot transaction and mysqldump starts its own; it releases the lock the moment mysqldump
/// waits for it to read the first table's rows (`SELECT /*!40001 SQL_NO_CACHE */`, after its
/// START TRANSACTION WITH CONSISTENT SNAPSHOT). Both snapshots were taken while nothing could
/// change the tables: the same rows. Writers wait for that moment only.
struct SameSnapshot {
    locker: Option<tools::Session>,
    reader: tools::Session,
    ours: [String; 2],
    locked_at: Instant,
    done: Option<String>,
    /// Why the counts are not the dump's (the lock was released before mysqldump was seen).
    not_same: Option<String>,
}

/// How long the tables stay locked at most, waiting to see mysqldump reach them.
const LOCK_AT_MOST: std::time::Duration = std::time::Duration::from_secs(10);

impl SameSnapshot {
    /// `None` (said on stderr) when the tables cannot be locked: no counts are recorded then.
    fn lock(
        config: &Config,
        conn: &Conn,
        tables: &[TableRef],
    ) -> Result<Option<SameSnapshot>, DbError> {
        if tables.is_empty() {
            return Ok(None);
        }
        let deadline = Some(Instant::now() + config.lock_wait_timeout + LOCK_AT_MOST);
        let mut locker = session(config, conn, &config.database)?;
        let list: Vec<String> = tables
            .iter()
            .map(|t| format!("{} WRITE", backticks(&t.name)))
            .collect();
        let locked = ask(&mut locker, "SELECT CONNECTION_ID();", "id", deadline).and_then(|id| {
            ask(
                &mut locker,
                &format!(
                    "SET SESSION lock_wait_timeout = {};\nLOCK TABLES {};",
                    config.lock_wait_timeout.as_secs(),
                    list.join(", ")
                ),
                "locked",
                deadline,
            )
            .map(|_| id)
        });
        let locker_id = match locked {
            Ok(id) => id.first().cloned().unwrap_or_default(),
            Err(e) => {
                let m = e.to_string();
                crate::note!(
                    "acme-db backup: cannot lock the tables for a moment to count them in the dump's snapshot ({}): no rows or digests are recorded, and a restore will not be checked; GRANT LOCK TABLES ON {}.* to the backup's user",
                    m.lines().last().unwrap_or(&m),
                    backticks(&config.database)
                );
                return Ok(None);
            }
        };
        let locked_at = Instant::now();
        let mut reader = session(config, conn, &config.database)?;
        let id = ask(
            &mut reader,
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\nSET time_zone = '+00:00';\nSTART TRANSACTION WITH CONSISTENT SNAPSHOT;\nSELECT CONNECTION_ID();",
            "snapshot",
            deadline,
        )
        .map_err(|m| failed(config, "cannot start the backup's snapshot session", m))?;
        Ok(Some(SameSnapshot {
            locker: Some(locker),
            reader,
            ours: [locker_id, id.first().cloned().unwrap_or_default()],
            locked_at,
            done: None,
            not_same: None,
        }))
    }

    /// While mysqldump runs: releases the lock once mysqldump waits for it at its first table's
    /// rows (or after `LOCK_AT_MOST`, and then the counts are not recorded), then starts the
    /// counts. Never stops the dump.
    fn watch(&mut self, config: &Config, conn: &Conn) -> Option<String> {
        self.locker.as_ref()?;
        let waiting = query(
            config,
            conn,
            &format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID NOT IN ({}, {}) AND USER = SUBSTRING_INDEX(USER(), '@', 1) AND STATE = 'Waiting for table metadata lock' AND INFO LIKE 'SELECT /*!40001 SQL\\_NO\\_CACHE */%'",
                self.ours[0], self.ours[1]
            ),
        )
        .ok()
        .is_some_and(|n| n.trim() != "0");
        if !waiting && self.locked_at.elapsed() < LOCK_AT_MOST {
            return None;
        }
        if !waiting {
            self.not_same = Some(format!(
                "mysqldump was not seen waiting for the tables within {}s",
                LOCK_AT_MOST.as_secs()
            ));
        }
        // Ending the session releases its locks even when UNLOCK TABLES cannot be sent.
        if let Some(mut l) = self.locker.take() {
            let _ = l.send("UNLOCK TABLES;\n");
            let _ = l.finish(Some(Instant::now() + std::time::Duration::from_secs(5)));
        }
        crate::note!(
            "acme-db backup: the tables were locked {:.2}s while mysqldump and the runner took the same snapshot",
            self.locked_at.elapsed().as_secs_f64()
        );
        None
    }

    /// After the dump: the counts, read in the snapshot the dump read.
    fn finish(
        mut self,
        config: &Config,
        tables: &[TableRef],
        deadline: Option<Instant>,
    ) -> Result<Option<Contents>, DbError> {
        if self.locker.is_some() {
            // The dump ended while the tables were still locked: it never read a row of them.
            self.not_same = Some("mysqldump ended before it read the locked tables".into());
        }
        if let Some(why) = &self.not_same {
            crate::note!("acme-db backup: no rows or digests are recorded: {why}");
            return Ok(None);
        }
        let m = marker("contents");
        self.done = Some(m.clone());
        let sql = contents_sql(tables, config.digests);
        let started = Instant::now();
        let lines = self
            .reader
            .send(&format!("{sql}SELECT '{m}';\n"))
            .and_then(|()| self.reader.until(&m, deadline, None))
            .map_err(|e| failed(config, "the backup's snapshot session failed", e))?;
        let _ = self.reader.send("COMMIT;\n");
        let _ = self.reader.finish(deadline);
        if started.elapsed() > std::time::Duration::from_secs(1) {
            crate::note!(
                "acme-db backup: counting the tables' rows took {:.1}s after the dump",
                started.elapsed().as_secs_f64()
            );
        }
        let others: Vec<&str> = tables
            .iter()
            .filter(|t| !t.engine.eq_ignore_ascii_case("InnoDB"))
            .map(|t| t.name.as_str())
            .collect();
        let mut snapshot = "counted in the runner's own consistent-snapshot transaction, started, as mysqldump's, while the runner held every table write-locked (released when mysqldump waited for its first table's rows): the same rows as the dump".to_string();
        if !others.is_empty() {
            snapshot.push_str(&format!(
                "; except tables of a non-transactional engine ({}), whose rows are the dump's only if nothing wrote them while it ran",
                others.join(", ")
            ));
        }
        Ok(Some(Contents {
            algorithm: ALGORITHM.into(),
            snapshot,
            tables: parse_contents(&lines)?,
        }))
    }
}

/// Why no scratch check: it cannot be made here (`Unavailable`: say so, and restore without),
/// or the dump failed to restore into it (`Failed`: a restore would fail too).
enum Scratch {
    Unavailable(String),
    Failed(DbError),
}

/// Restores the dump into the scratch database `DB_bbr_KIND_PID` (created with the live one's
/// character set and collation), reads its tables back, and drops it.
fn in_scratch(
    config: &Config,
    conn: &Conn,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
    kind: &str,
    label: &str,
) -> Result<Vec<TableContents>, Scratch> {
    let scratch = format!("{}_bbr_{kind}_{}", config.database, std::process::id());
    if scratch.len() > 64 {
        return Err(Scratch::Unavailable(format!(
            "the scratch database's name `{scratch}` is longer than 64 characters"
        )));
    }
    let charset = query(
        config,
        conn,
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()",
    )
    .map_err(|e| Scratch::Unavailable(e.to_string()))?;
    let (cs, coll) = charset
        .split_once('\t')
        .unwrap_or(("utf8mb4", "utf8mb4_general_ci"));
    let drop_scratch = || {
        let tool = client(config, &["mysql", "mariadb"]).map(|c| {
            Tool::new(c)
                .args(conn.args.clone())
                .arg(format!(
                    "--execute=DROP DATABASE IF EXISTS {}",
                    backticks(&scratch)
                ))
                .envs(&conn.env)
                .cleanup()
        });
        match tool.map_err(|e| e.to_string()).and_then(|t| {
            tools::run(&t, None, Some(Instant::now() + std::time::Duration::from_secs(15)), None)
                .map_err(|e| e.to_string())
        }) {
            Ok(_) => format!("the scratch database `{scratch}` was dropped"),
            Err(e) => format!("the scratch database `{scratch}` could not be dropped ({e}); the next backup, restore or rehearsal drops it"),
        }
    };
    if let Err(e) = query(
        config,
        conn,
        &format!(
            "CREATE DATABASE {} CHARACTER SET {} COLLATE {}",
            backticks(&scratch),
            cs.trim(),
            coll.trim()
        ),
    ) {
        // Stopped while the server may have made it: drop it in case.
        if tools::interrupted().is_some() {
            crate::note!("{label}: {}", drop_scratch());
        }
        return Err(Scratch::Unavailable(format!(
            "cannot create the scratch database `{scratch}` ({}); GRANT ALL ON {}.* to the user lets it",
            server_said(&e.to_string()),
            backticks(&format!("{}\\_bbr\\_%", config.database))
        )));
    }
    crate::note!("{label}: restoring into the scratch database `{scratch}`");
    let started = Instant::now();
    if let Err(m) = apply(config, conn, dir, &scratch, deadline) {
        let dropped = drop_scratch();
        return Err(Scratch::Failed(failed(
            config,
            &format!("the dump fails to restore into a scratch database ({dropped}); the live database was not touched"),
            m,
        )));
    }
    let restored = started.elapsed();
    let found = list_tables(config, conn, &scratch, None)
        .and_then(|t| table_contents(config, conn, &scratch, &t, manifest, deadline));
    let dropped = drop_scratch();
    crate::note!(
        "{label}: restored in {:.1}s, read back in {:.1}s; {dropped}",
        restored.as_secs_f64(),
        (started.elapsed() - restored).as_secs_f64()
    );
    found.map_err(Scratch::Failed)
}

/// The server's own words in a client's failure (`ERROR 1044 (42000) ...: Access denied ...`).
fn server_said(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("ERROR"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// Scratch databases a restore or rehearsal that did not finish left (`DB_bbr_new_PID`,
/// `DB_bbr_rehearse_PID`), dropped now, saying so.
fn drop_leftovers(config: &Config, conn: &Conn) {
    let like = string_literal(&format!(
        "{}\\_bbr\\_%",
        config
            .database
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    ));
    let Ok(names) = query(config, conn, &format!("SHOW DATABASES LIKE {like}")) else {
        return;
    };
    let prefix = format!("{}_bbr_", config.database);
    for name in names.lines().map(str::trim) {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let leftover = ["new_", "rehearse_"].iter().any(|k| {
            rest.strip_prefix(k)
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        });
        if !leftover {
            continue;
        }
        match query(config, conn, &format!("DROP DATABASE IF EXISTS {}", backticks(name))) {
            Ok(_) => crate::note!("acme-db: dropped the database `{name}`, left by a restore or rehearsal that did not finish"),
            Err(e) => crate::note!("acme-db: the database `{name}`, left by a restore or rehearsal that did not finish, could not be dropped ({e}); drop it by hand: DROP DATABASE {}", backticks(name)),
        }
    }
}

/// `bbr-runner acme-db rehearse`: restores the dump into `DB_bbr_rehearse_PID`, reads its
/// tables back, and drops it.
pub fn rehearse(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
    label: &str,
) -> Result<Vec<TableContents>, DbError> {
    let conn = server_for(config, manifest, "rehearsal")?;
    in_scratch(config, &conn, dir, manifest, deadline, "rehearse", label).map_err(|e| match e {
        Scratch::Unavailable(why) => DbError::Failed(format!(
            "a rehearsal restores into a scratch database next to the live one, and {why}"
        )),
        Scratch::Failed(e) => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_option_only_for_mysql() {
        assert!(dump_flags(false).contains(&"--set-gtid-purged=OFF"));
        assert!(!dump_flags(true).contains(&"--set-gtid-purged=OFF"));
        assert!(
            dump_flags(true).contains(&"--single-transaction")
                && dump_flags(true).contains(&"--skip-add-locks")
        );
    }

    #[test]
    fn socket_host_and_tls_flags() {
        let server = Server {
            username: "u".into(),
            password: "s3cret-pw".into(),
            host: "/run/mysqld/mysqld.sock".into(),
            port: 3306,
            tls: None,
        };
        let c = conn(&server, true).expect("conn");
        assert_eq!(
            c.args,
            [
                "--no-defaults",
                "--user=u",
                "--socket=/run/mysqld/mysqld.sock"
            ]
        );
        assert_eq!(c.env, [("MYSQL_PWD".to_string(), "s3cret-pw".to_string())]);
        assert!(
            !c.args.iter().any(|a| a.contains("s3cret-pw")),
            "the password is not in any argument"
        );
        let tls = Server {
            host: "db".into(),
            tls: Some(super::super::config::Tls {
                skip_host_verify: false,
                ca: "CA".into(),
                client: None,
            }),
            ..server
        };
        let c = conn(&tls, false).expect("conn");
        assert!(
            c.args.contains(&"--ssl-mode=VERIFY_IDENTITY".to_string()),
            "{:?}",
            c.args
        );
        let c = conn(&tls, true).expect("conn");
        assert!(
            c.args.contains(&"--ssl-verify-server-cert".to_string()),
            "{:?}",
            c.args
        );
    }
}
