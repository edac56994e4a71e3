//! PostgreSQL: the server's major picks pg_dump/pg_restore from the client directories.
//! Backup: custom format (directory format with `--jobs` when `jobs > 1`). Restore:
//! `--clean --if-exists --single-transaction --exit-on-error`, skipping the archive's
//! EXTENSION and SCHEMA entries so a non-superuser owner can restore; parallel (not atomic)
//! only when `parallel_restore` asks for it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::{Config, Server};
use super::pg_clients::{self, Found};
use super::tools::{self, Tool};
use super::{failed, partial_path, private_tmp, secret_file, BackupRun, DbError, Versions};
use crate::actions::artifact::Manifest;

const DUMP_FILE: &str = "acme-db.dump";
const DUMP_DIR: &str = "acme-db.dir";

/// Connection: arguments and environment (the password only in the environment), and the
/// action's deadline, which every step on it runs under.
struct Conn {
    args: Vec<String>,
    env: Vec<(String, String)>,
    deadline: Option<Instant>,
    _tmp: Option<tempfile::TempDir>,
}

/// Session settings for every connection: a lock wait ends (`lock_timeout`), and, for a
/// restore's sessions, index builds sort in memory. Any role may make them.
fn session_options(config: &Config, restore: bool) -> (String, String) {
    let mut o = format!("-c lock_timeout={}s", config.lock_wait_timeout.as_secs());
    if restore {
        o.push_str(&format!(
            " -c maintenance_work_mem={}",
            config.maintenance_work_mem
        ));
    }
    ("PGOPTIONS".into(), o)
}

fn conn(config: &Config, server: &Server, deadline: Option<Instant>) -> Result<Conn, DbError> {
    let args = vec![
        format!("--host={}", server.host),
        format!("--port={}", server.port),
        format!("--username={}", server.username),
        "--no-password".to_string(),
    ];
    let mut env = vec![
        ("PGPASSWORD".to_string(), server.password.clone()),
        ("PGCONNECT_TIMEOUT".to_string(), "10".to_string()),
        // This run's sessions, by name: the lock watch finds them (and only them) by it.
        ("PGAPPNAME".to_string(), app_name()),
        session_options(config, false),
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
        deadline,
        _tmp: tmp,
    })
}

fn psql(config: &Config, conn: &Conn, sql: &str) -> Result<String, DbError> {
    psql_on(config, conn, &config.database, sql)
}

fn psql_on(config: &Config, conn: &Conn, database: &str, sql: &str) -> Result<String, DbError> {
    let tool = psql_tool(config, conn, database, sql)?;
    let out = tools::run(&tool, None, conn.deadline, None).map_err(|m| {
        let m = with_blockers(config, conn, m);
        failed(config, "cannot query the PostgreSQL server", m)
    })?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// A cleanup statement (dropping a scratch database): it runs even after a stop signal or past
/// the action's deadline, within 15 seconds of its own.
fn psql_cleanup(config: &Config, conn: &Conn, sql: &str) -> Result<(), String> {
    let tool = psql_tool(config, conn, &config.database, sql)
        .map_err(|e| e.to_string())?
        .cleanup();
    tools::run(
        &tool,
        None,
        Some(Instant::now() + std::time::Duration::from_secs(15)),
        None,
    )
    .map(drop)
}

/// This run's sessions' `application_name`.
fn app_name() -> String {
    format!("bbr-acme-db-{}", std::process::id())
}

/// Watches this run's sessions while a tool runs: one that has waited for a lock longer than
/// `lock_wait_timeout` stops the tool, naming who holds the lock (`pg_blocking_pids`). pg_dump
/// and pg_restore archives reset the session's own `lock_timeout` (`SET lock_timeout = 0`), so
/// the wait is bounded from outside. Stopping a single-transaction restore rolls it back.
fn lock_watch<'a>(config: &'a Config, conn: &'a Conn) -> impl FnMut() -> Option<String> + 'a {
    let mut waiting_since: std::collections::BTreeMap<String, Instant> = Default::default();
    move || {
        let sql = format!(
            "SELECT a.pid, coalesce((SELECT string_agg('pid ' || b.pid || ' (application `' || coalesce(nullif(b.application_name, ''), '?') || '`, user ' || coalesce(b.usename::text, '?') || ', in a transaction since ' || coalesce(to_char(b.xact_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?') || ')', '; ') FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))), 'a session that could not be named') FROM pg_stat_activity a WHERE a.application_name = {} AND a.wait_event_type = 'Lock'",
            literal(&app_name())
        );
        let tool = psql_tool(config, conn, &config.database, &sql)
            .ok()?
            .cleanup();
        let out = tools::run(
            &tool,
            None,
            Some(Instant::now() + std::time::Duration::from_secs(5)),
            None,
        )
        .ok()?;
        let now = Instant::now();
        let mut seen = std::collections::BTreeMap::new();
        for line in String::from_utf8_lossy(&out).lines() {
            let Some((pid, holders)) = line.split_once('|') else {
                continue;
            };
            let since = waiting_since.get(pid).copied().unwrap_or(now);
            if now.duration_since(since) >= config.lock_wait_timeout {
                end_our_sessions(config, conn);
                return Some(format!(
                    "waited {}s for a lock (bbr_runner.lock_wait_timeout_seconds in {}), held by {holders}; stopped",
                    now.duration_since(since).as_secs(),
                    config.source.display()
                ));
            }
            seen.insert(pid.to_string(), since);
        }
        waiting_since = seen;
        None
    }
}

/// Ends this run's server sessions (but the one asking): a killed client's backend goes on
/// waiting for its lock, or holding its transaction, until it notices; this makes it stop now
/// (a single-transaction restore is rolled back). A role may end its own sessions.
fn end_our_sessions(config: &Config, conn: &Conn) {
    let sql = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = {} AND pid <> pg_backend_pid()",
        literal(&app_name())
    );
    let _ = psql_cleanup(config, conn, &sql);
}

/// A lock wait that timed out says who holds the lock: the other sessions on the database
/// holding a relation lock, with their application and since when.
fn with_blockers(config: &Config, conn: &Conn, message: String) -> String {
    if !message.contains("lock timeout") && !message.contains("statement timeout") {
        return message;
    }
    let sql = "SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), coalesce(a.usename::text, '?'), coalesce(to_char(a.xact_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?') FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation') ORDER BY a.xact_start";
    let held = psql_tool(config, conn, &config.database, sql)
        .ok()
        .and_then(|t| {
            tools::run(
                &t.cleanup(),
                None,
                Some(Instant::now() + std::time::Duration::from_secs(10)),
                None,
            )
            .ok()
        })
        .map(|out| {
            String::from_utf8_lossy(&out)
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split('|').collect();
                    (f.len() == 4).then(|| {
                        format!(
                            "pid {} (application `{}`, user {}, in a transaction since {})",
                            f[0], f[1], f[2], f[3]
                        )
                    })
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let who = if held.is_empty() {
        "no session holding a lock could be named".to_string()
    } else {
        format!("held by {}", held.join("; "))
    };
    format!(
        "{message}\nwaited {}s for a lock (bbr_runner.lock_wait_timeout_seconds in {}): {who}",
        config.lock_wait_timeout.as_secs(),
        config.source.display()
    )
}

fn psql_tool(config: &Config, conn: &Conn, database: &str, sql: &str) -> Result<Tool, DbError> {
    // The newest psql: psql works with servers of its own major and older.
    let program = pg_clients::installed(&config.postgres_client_dirs, "psql")
        .pop()
        .map(|f| f.path)
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
    Ok(tool)
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

/// The client tool `name` for a server of major `server`, at least of major `need` (pg_clients:
/// the nearest major from there), or a failure naming the server's major, the majors found,
/// where they were looked for and what to install.
fn client_for(
    config: &Config,
    server: u32,
    need: u32,
    name: &str,
    action: &str,
) -> Result<Found, DbError> {
    let found = pg_clients::installed(&config.postgres_client_dirs, name);
    let Some(f) = pg_clients::nearest(&found, need).cloned() else {
        return Err(DbError::Failed(format!(
            "the server is PostgreSQL {server}, and there is no {name} {need} or newer in {:?} (found: {}); {name} works with servers of its own major or older only: install the client tools of PostgreSQL {need} ({}), or set bbr_runner.postgres_client_dirs in {}; nothing was {}",
            config.postgres_client_dirs,
            pg_clients::list(&found),
            pg_clients::install_hint(need),
            config.source.display(),
            if action == "backup" { "dumped" } else { "restored: the database was not touched" }
        )));
    };
    if f.major != server {
        crate::note!(
            "acme-db {action}: the server is PostgreSQL {server}{}: using {name} {} ({}), the nearest newer in {:?}",
            if need > server {
                format!(" and the dump was made by pg_dump {need}")
            } else {
                format!(" and there is no {name} {server}")
            },
            f.major,
            f.path.display(),
            config.postgres_client_dirs
        );
    }
    Ok(f)
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
    let conn = conn(config, server, run.deadline)?;
    let mut attempt = 1;
    loop {
        match backup_once(run, &conn) {
            Err(DbError::Failed(m))
                if attempt < config.connect_attempts
                    && unreachable_before_data(&m, run.dir)
                    && tools::interrupted().is_none() =>
            {
                let pause = std::time::Duration::from_secs(1 << (attempt - 1).min(4));
                if run.deadline.is_some_and(|d| Instant::now() + pause >= d) {
                    return Err(DbError::Failed(m));
                }
                crate::note!(
                    "acme-db backup: the server cannot be reached before any data was written (attempt {attempt} of {}); trying again in {}s: {}",
                    config.connect_attempts,
                    pause.as_secs(),
                    m.lines().next().unwrap_or("")
                );
                super::artifact::remove_partials(run.dir);
                tools::pause(pause);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A connection that failed before the dump wrote anything: a restart or a failover, worth
/// another try. Anything else (a wrong password, data already written) is not.
fn unreachable_before_data(message: &str, dir: &Path) -> bool {
    let m = message.to_lowercase();
    let unreachable = [
        "could not connect",
        "connection refused",
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "server closed the connection unexpectedly",
        "timeout expired",
    ]
    .iter()
    .any(|s| m.contains(s))
        || (m.contains("no such file or directory") && m.contains("socket"))
        || (m.contains("connection to server") && m.contains("failed"));
    // The server answered, and said no (libpq words these `connection to server ... failed`
    // too): another try gets the same answer.
    let refused = [
        "authentication failed",
        "no pg_hba.conf entry",
        "certificate",
        "does not exist",
    ]
    .iter()
    .any(|s| m.contains(s));
    unreachable
        && !refused
        && tools::size_of(&partial_path(dir, DUMP_DIR))
            + tools::size_of(&partial_path(dir, DUMP_FILE))
            == 0
}

fn backup_once(run: &BackupRun<'_>, conn: &Conn) -> Result<Versions, DbError> {
    let config = run.config;
    let version = server_version(config, conn)?;
    drop_leftovers(config, conn);
    let pg_dump = client_for(config, version.major, version.major, "pg_dump", "backup")?.path;
    let (client_version, client_major) = tool_version(&pg_dump)?;
    check_tables(config, conn)?;
    let (format, name) = if config.jobs > 1 {
        ("directory", DUMP_DIR)
    } else {
        ("custom", DUMP_FILE)
    };
    let partial = partial_path(run.dir, name);
    let mut tool = Tool::new(pg_dump)
        .arg(format!("--format={format}"))
        .arg(format!("--file={}", partial.display()))
        .arg(format!(
            "--lock-wait-timeout={}s",
            config.lock_wait_timeout.as_secs()
        ))
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
    let mut watch = lock_watch(config, conn);
    super::dump_and_publish(
        run,
        &tool,
        &partial,
        name,
        "pg_dump failed",
        Some(&mut watch),
    )
    .map_err(|e| {
        end_our_sessions(config, conn);
        match e {
            DbError::Failed(m) => DbError::Failed(with_blockers(config, conn, m)),
            other => other,
        }
    })?;
    Ok(Versions {
        server_version: version.version,
        server_major: version.major,
        client_version,
        client_major,
        dump_format: format.into(),
    })
}

/// Scratch databases a restore that did not finish left (`DB_bbr_new_PID`: a half-restored
/// copy; `DB_bbr_old_PID`: the previous database, swapped out and not yet dropped): under the
/// action's lock no other restore of this job runs, so they are dropped now, saying so.
fn drop_leftovers(config: &Config, conn: &Conn) {
    let like = |kind: &str| {
        let escaped: String = config
            .database
            .chars()
            .flat_map(|c| match c {
                '\\' | '%' | '_' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        literal(&format!("{escaped}\\_bbr\\_{kind}\\_%"))
    };
    let sql = format!(
        "SELECT datname FROM pg_database WHERE datname LIKE {} OR datname LIKE {}",
        like("new"),
        like("old")
    );
    let Ok(names) = psql(config, conn, &sql) else {
        return;
    };
    for name in names.lines().map(str::trim).filter(|n| {
        n.rsplit('_')
            .next()
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    }) {
        match psql_cleanup(config, conn, &format!("DROP DATABASE IF EXISTS {}", ident(name))) {
            Ok(()) => crate::note!(
                "acme-db: dropped the database `{name}`, left by a restore that did not finish"
            ),
            Err(e) => crate::note!(
                "acme-db: the database `{name}`, left by a restore that did not finish, could not be dropped ({e}); drop it by hand: DROP DATABASE {}",
                ident(name)
            ),
        }
    }
}

/// The pg_restore for a restore of `manifest` into a server of major `server`: refused when the
/// server is older than the backup's (a dump's SQL is written for its own server's major and
/// may not load into an older one); otherwise the nearest pg_restore at least as new as both
/// the server and the pg_dump that made the archive (an older pg_restore cannot read it).
fn restore_client(config: &Config, manifest: &Manifest, server: u32) -> Result<PathBuf, DbError> {
    if manifest.server_major > server {
        return Err(DbError::Refused(format!(
            "restore refused: the backup was taken from PostgreSQL {} ({}) and this server is PostgreSQL {server}, an older major: a dump is made to load into its own server's major or a newer one, not an older one; restore it into a PostgreSQL {} or newer server",
            manifest.server_major, manifest.server_version, manifest.server_major
        )));
    }
    let need = server.max(manifest.client_major);
    let found = pg_clients::installed(&config.postgres_client_dirs, "pg_restore");
    if need > server && pg_clients::nearest(&found, need).is_none() {
        if let Some(best) = found.iter().rev().find(|f| f.major >= server) {
            return Err(DbError::Refused(format!(
                "restore refused: the dump was made by pg_dump {} (PostgreSQL {}), newer than pg_restore {} for this server (PostgreSQL {server}), the newest in {:?}: pg_restore reads archives of its own major or older only; install the client tools of PostgreSQL {} or newer ({})",
                manifest.client_major,
                manifest.server_major,
                best.major,
                config.postgres_client_dirs,
                manifest.client_major,
                pg_clients::install_hint(manifest.client_major)
            )));
        }
    }
    Ok(client_for(config, server, need, "pg_restore", "restore")?.path)
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
    let conn = conn(config, server, deadline)?;
    let version = server_version(config, &conn)?;
    drop_leftovers(config, &conn);
    let pg_restore = restore_client(config, manifest, version.major)?;
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
    if pg_clients::needs_script_route(restore_major, version.major) {
        let script = ScriptRoute {
            config,
            conn: &conn,
            pg_restore: &pg_restore,
            client_major: restore_major,
            server_major: version.major,
        };
        return script.restore(&list, &archive, deadline);
    }
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
        // Stopped, or out of time: no second route.
        Err(reason)
            if tools::interrupted().is_some() || deadline.is_some_and(|d| Instant::now() >= d) =>
        {
            return Err(DbError::Failed(format!("acme-db restore: {reason}")))
        }
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
    let mut watch = lock_watch(config, &conn);
    tools::run_watched(&tool, None, deadline, None, Some(&mut watch)).map_err(|m| {
        end_our_sessions(config, &conn);
        failed(config, what, with_blockers(config, &conn, m))
    })?;
    Ok(())
}

/// The script route (pg_clients): a pg_restore of 17 or later into a server before 17. pg_restore
/// writes the restore as SQL (`--file=-`, one transaction: `BEGIN` ... `COMMIT` in the script),
/// its opening `SET transaction_timeout = 0` is left out, and psql of the same major runs it,
/// stopping at the first error (`ON_ERROR_STOP`): all or nothing, as the one-transaction route.
struct ScriptRoute<'a> {
    config: &'a Config,
    conn: &'a Conn,
    pg_restore: &'a Path,
    client_major: u32,
    server_major: u32,
}

impl ScriptRoute<'_> {
    fn restore(
        &self,
        list: &Path,
        archive: &Path,
        deadline: Option<Instant>,
    ) -> Result<(), DbError> {
        let c = self.config;
        // psql of the same major understands what its pg_restore writes (`\restrict`).
        let psql = self.pg_restore.with_file_name("psql");
        if !psql.is_file() {
            return Err(DbError::Failed(format!(
                "restoring into PostgreSQL {} with pg_restore {} needs psql {} beside it, and {} is missing; nothing was restored: the database was not touched",
                self.server_major,
                self.client_major,
                self.client_major,
                psql.display()
            )));
        }
        if c.parallel_restore && c.jobs > 1 {
            crate::note!(
                "acme-db restore: parallel_restore is not used: this restore runs as one script"
            );
        }
        crate::note!(
            "acme-db restore: pg_restore {} into PostgreSQL {}: one transaction through psql {}, without pg_restore's `SET transaction_timeout = 0` (PostgreSQL {} does not have that setting)",
            self.client_major,
            self.server_major,
            self.client_major,
            self.server_major
        );
        let producer = Tool::new(self.pg_restore.to_path_buf())
            .args(["--clean", "--if-exists", "--single-transaction", "--file=-"])
            .arg(format!("--use-list={}", list.display()))
            .arg(archive.display().to_string());
        let consumer = Tool::new(psql)
            .args(["--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1"])
            .args(self.conn.args.clone())
            .arg(format!("--dbname={}", c.database))
            .envs(&self.conn.env)
            .envs(&restore_session(c));
        let mut opening = pg_clients::OpeningSettings::default();
        let mut keep = |line: &[u8]| opening.keep(line);
        let mut watch = lock_watch(c, self.conn);
        tools::run_piped(&producer, &mut keep, &consumer, deadline, Some(&mut watch)).map_err(
            |m| {
                end_our_sessions(c, self.conn);
                failed(
                    c,
                    "the restore through psql failed (its single transaction was rolled back: the database is as it was)",
                    with_blockers(c, self.conn, m),
                )
            },
        )?;
        Ok(())
    }
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

/// The database's own objects (relations, standalone types, functions; not an extension's)
/// that the archive's listing does not have: objects created after the backup. A restore keeps
/// them on every route (as the SDK's `--clean` restore does), so the scratch route, which would
/// replace the whole database, is not taken when there are any.
fn objects_not_in(config: &Config, conn: &Conn, listing: &str) -> Result<Vec<String>, DbError> {
    let sql = "SELECT kind || ' ' || nspname || ' ' || name FROM (\
        SELECT CASE c.relkind WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'TABLE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TYPE' END AS kind, n.nspname, c.relname::text AS name, c.oid AS oid, 'pg_class'::regclass AS cls \
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S','f','c') \
        UNION ALL SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname::text, t.oid, 'pg_type'::regclass \
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype IN ('e','d','r') \
        UNION ALL SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, n.nspname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.oid, 'pg_proc'::regclass \
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
        ) o WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%' \
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = o.cls AND d.objid = o.oid AND d.deptype = 'e') \
        ORDER BY 1";
    let live = psql(config, conn, sql)?;
    Ok(live
        .lines()
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .filter(|o| !listing.lines().any(|l| l.contains(&format!(" {o} "))))
        .map(str::to_string)
        .collect())
}

/// Session settings for pg_restore: lock waits end, index builds sort in memory.
fn restore_session(config: &Config) -> Vec<(String, String)> {
    vec![session_options(config, true)]
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
        let extra = objects_not_in(c, self.conn, self.listing)
            .map_err(|e| format!("cannot list the database's objects: {e}"))?;
        if !extra.is_empty() {
            let shown: Vec<&str> = extra.iter().take(5).map(String::as_str).collect();
            return Err(format!(
                "the database holds {} object(s) the backup does not ({}{}): a restore keeps what the backup does not know, and only the one-transaction route does",
                extra.len(),
                shown.join(", "),
                if extra.len() > 5 { ", ..." } else { "" }
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
        // Runs even after a stop signal or the deadline, and says what really happened.
        let drop_new = || {
            match psql_cleanup(
            c,
            self.conn,
            &format!("DROP DATABASE IF EXISTS {}", ident(&new)),
        ) {
            Ok(()) => "the scratch database was dropped".to_string(),
            Err(e) => format!(
                "the scratch database `{new}` could not be dropped ({e}); the next backup or restore drops it"
            ),
        }
        };
        let started = Instant::now();
        let create = psql(
            c,
            self.conn,
            &format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
                ident(&new),
                literal(f[4]),
                literal(f[5]),
                literal(f[6])
            ),
        );
        if let Err(e) = create {
            // A stop can end psql after the server committed the CREATE: drop it in case.
            let dropped = drop_new();
            return Err(format!(
                "cannot create the scratch database ({e}); {dropped} if it had been created"
            ));
        }
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
            end_our_sessions(c, self.conn);
            let dropped = drop_new();
            return Err(format!(
                "the parallel restore into the scratch database failed ({m}); {dropped}"
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
            let dropped = drop_new();
            return Err(format!("the atomic swap failed ({e}); {dropped}"));
        }
        let swapped = swap_started.elapsed();
        let drop_started = Instant::now();
        // Now `db` is the restored database and `old` the previous one.
        // The restore has succeeded: a slow or failing drop of the old copy never undoes that.
        if let Err(e) = psql_cleanup(c, self.conn, &format!("DROP DATABASE {}", ident(&old))) {
            crate::note!("acme-db restore: the previous database is kept as `{old}`: it could not be dropped within 15s ({e}); the next backup or restore drops it, or DROP DATABASE {} by hand", ident(&old));
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
    use super::{table_data_sizes, unreachable_before_data};

    #[test]
    fn only_a_server_that_cannot_be_reached_is_tried_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = "psql: error: connection to server at \"127.0.0.1\", port 5432 failed: ";
        for retried in [
            "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
            "FATAL:  the database system is starting up",
            "server closed the connection unexpectedly",
            "Connection reset by peer",
        ] {
            assert!(
                unreachable_before_data(&format!("{at}{retried}"), dir.path()),
                "{retried}"
            );
        }
        for answered in [
            "FATAL:  password authentication failed for user \"acme\"",
            "server certificate for \"db.other.example\" (and 1 other name) does not match host name \"127.0.0.1\"",
            "SSL error: certificate verify failed",
            "FATAL:  no pg_hba.conf entry for host \"127.0.0.1\", user \"acme\", database \"acme\", no encryption",
            "FATAL:  database \"acme\" does not exist",
        ] {
            assert!(
                !unreachable_before_data(&format!("{at}{answered}"), dir.path()),
                "{answered}"
            );
        }
    }

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
