//! PostgreSQL: the server's major picks pg_dump/pg_restore from the client directories.
//! Backup: custom format (directory format with `--jobs` when `jobs > 1`), read in the snapshot
//! of the runner's own transaction, which counts and digests every table dumped. Restore: into a
//! scratch database checked before the atomic swap, or pg_restore's SQL (`--clean --if-exists
//! --file=-`) run by psql in one transaction the runner checks before its COMMIT; the archive's
//! EXTENSION and SCHEMA entries skipped so a non-superuser owner can restore; parallel (not
//! atomic, checked after) only when `parallel_restore` asks for it. Rehearse: into a scratch
//! database, compared, dropped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::{Config, Server};
use super::pg_clients::{self, Found};
use super::tools::{self, Tool, ToolError};
use super::{failed, partial_path, private_tmp, secret_file, BackupRun, DbError, Versions};
use crate::actions::artifact::{Contents, Manifest, TableContents};

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
        let m = with_blockers(config, conn, m.to_string());
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
    .map_err(|e| e.to_string())
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

/// How a table's digest is computed here: a 64-bit hash of each row, summed over the table
/// modulo 2^64 (in decimal); so the rows' order does not matter, no sort is needed, and a
/// duplicated row counts twice. Computed by the server. Each row's hash is one of two:
/// - `record:N`: `hash_record_extended` (PostgreSQL 14 and later) of the row's columns in the
///   order of their names, when every column's type is one of `RECORD_HASHED` and its collation
///   is deterministic: each value hashed by its type's own extended hash function, with no text
///   made (40% to 70% cheaper);
/// - plain `N` (the only one of `postgres-row-hash64-sum/1`): `hashtextextended`, seed 0, of
///   `ROW(...)::text` in collation "C", the columns in the order of their names, printed under
///   `CONTENT_SETTINGS`: any type.
///
/// Both are the hash functions PostgreSQL's hash partitioning keeps stable across versions; not
/// cryptographic (nor need they be: the digest is no signature). A check computes each table's
/// digest the way the backup recorded it (docs/acme-db.md, "The cost").
const ALGORITHM: &str = "postgres-row-hash64-sum/2";

/// The prefix of a digest made with `hash_record_extended`.
const RECORD: &str = "record:";

/// The types (a domain counts as its base type) whose extended hash function a table's digest
/// may use directly: those whose hash is of the value itself, stable across versions (hash
/// partitioning depends on it). A column of any other type (json, arrays, geometry, a type of
/// an extension) makes its table's digest the text one.
const RECORD_HASHED: &[&str] = &[
    "bool",
    "bytea",
    "name",
    "int2",
    "int4",
    "int8",
    "oid",
    "text",
    "varchar",
    "bpchar",
    "float4",
    "float8",
    "numeric",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "jsonb",
    "inet",
    "cidr",
    "macaddr",
];

/// Which digest each table gets.
#[derive(Debug, Clone, Copy)]
enum Digests<'a> {
    /// Rows only.
    Off,
    /// A backup's: the record hash where the table's columns allow it (`TableRef::record`),
    /// else the text one.
    Choose,
    /// A check's: each table's the way the backup recorded it (a `record:` digest, or text).
    As(&'a Contents),
}

impl Digests<'_> {
    /// The record hash for `t`, or the text one; `None`: no digest.
    fn record(&self, t: &TableRef) -> Option<bool> {
        match self {
            Digests::Off => None,
            Digests::Choose => Some(t.record),
            Digests::As(c) => Some(c.tables.iter().any(|w| {
                w.schema.as_deref() == Some(t.schema.as_str())
                    && w.name == t.name
                    && w.digest.as_deref().is_some_and(|d| d.starts_with(RECORD))
            })),
        }
    }
}

/// Settings every contents query runs with, so that a row's text is the same wherever and
/// whenever it is read (time zone, date, interval, float, bytea and money output; the search path
/// is the role's and database's default, as pg_dump's own queries leave it, since a function an
/// index inlines may name tables unqualified); all rows are read (`row_security` off: a policy that would hide some is an
/// error, as for pg_dump), and no statement timeout of the server's ends a long digest.
const CONTENT_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    ("row_security", "off"),
    ("statement_timeout", "0"),
];

/// `CONTENT_SETTINGS` as `SET LOCAL` statements, for a transaction that is already open, and the
/// default search path back (a restore script empties it).
fn content_set_local() -> String {
    CONTENT_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET LOCAL {k} = {};\n", literal(v)))
        .chain(["SET LOCAL search_path TO DEFAULT;\n".to_string()])
        .collect()
}

/// `CONTENT_SETTINGS` as the session's options (with the lock timeout every session has).
fn content_options(config: &Config) -> (String, String) {
    let (k, mut v) = session_options(config, false);
    for (name, value) in CONTENT_SETTINGS {
        v.push_str(&format!(" -c {name}={value}"));
    }
    (k, v)
}

/// A table whose rows a backup counts and digests: every ordinary table outside the system's
/// schemas that is not an extension's (restore skips extensions), or those of `tables`.
#[derive(Debug, Clone, serde::Deserialize)]
struct TableRef {
    schema: String,
    name: String,
    columns: Vec<String>,
    /// Its digest may be the record hash: the server has `hash_record_extended`, and every
    /// column's type is one of `RECORD_HASHED` with a deterministic collation.
    #[serde(default)]
    record: bool,
}

/// One JSON line per table (`TableRef`), ordered.
fn tables_sql(config: &Config) -> String {
    let only = match &config.tables {
        Some(t) => format!(
            " AND n.nspname = 'public' AND c.relname IN ({})",
            t.iter().map(|t| literal(t)).collect::<Vec<_>>().join(", ")
        ),
        None => String::new(),
    };
    let hashed: Vec<String> = RECORD_HASHED
        .iter()
        .map(|t| format!("'pg_catalog.{t}'::regtype"))
        .collect();
    let record = format!(
        "current_setting('server_version_num')::int >= 140000 AND coalesce((SELECT bool_and(coalesce(nullif(ty.typbasetype, 0), ty.oid) IN ({}) AND (a.attcollation = 0 OR coalesce((SELECT co.collisdeterministic FROM pg_collation co WHERE co.oid = a.attcollation), false))) FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), false)",
        hashed.join(", ")
    );
    format!(
        "SELECT json_build_object('schema', n.nspname, 'name', c.relname, 'columns', coalesce((SELECT json_agg(a.attname) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'), 'record', {record})::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'){only} \
         ORDER BY n.nspname, c.relname"
    )
}

/// One value per non-empty line of JSON (a query's `json_build_object(..)::text` rows); `doing`
/// names the query in the error.
fn json_lines<T: serde::de::DeserializeOwned>(
    lines: &[String],
    doing: &str,
) -> Result<Vec<T>, DbError> {
    lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| DbError::Failed(format!("unexpected answer `{l}` {doing}: {e}")))
        })
        .collect()
}

fn parse_tables(lines: &[String]) -> Result<Vec<TableRef>, DbError> {
    json_lines(lines, "listing the tables")
}

/// 2^64: each half-sum is kept modulo it, printed as an unsigned 64-bit number.
const TWO_64: &str = "18446744073709551616";

/// One statement: per table a JSON line with its rows and, unless `digests` is off, its digest
/// (`ALGORITHM`); `None` when there is no table. `sum` of the bigint hashes adds them in 128
/// bits and returns a numeric: the exact sum, without a numeric per row (which cost 15% of
/// the digest's time, on pgbench's accounts).
fn contents_sql(tables: &[TableRef], digests: Digests<'_>) -> Option<String> {
    let per_table: Vec<String> = tables
        .iter()
        .map(|t| {
            let from = format!("ONLY {}.{}", ident(&t.schema), ident(&t.name));
            let id = format!(
                "'schema', {}, 'name', {}, 'rows', count(*)",
                literal(&t.schema),
                literal(&t.name)
            );
            let Some(record) = digests.record(t) else {
                return format!("SELECT json_build_object({id})::text FROM {from}");
            };
            let columns: Vec<String> = super::contents::sorted(t.columns.clone())
                .iter()
                .map(|c| format!("t.{}", ident(c)))
                .collect();
            let (prefix, hash) = if record {
                (
                    format!("{} || ", literal(RECORD)),
                    format!("hash_record_extended(ROW({}), 0)", columns.join(", ")),
                )
            } else {
                (
                    String::new(),
                    format!(
                        "hashtextextended((ROW({})::text) COLLATE \"C\", 0)",
                        columns.join(", ")
                    ),
                )
            };
            format!(
                "SELECT json_build_object({id}, 'digest', {prefix}mod(mod(coalesce(sum(h), 0), {TWO_64}) + {TWO_64}, {TWO_64})::text)::text FROM (SELECT {hash} AS h FROM {from} t) r"
            )
        })
        .collect();
    (!per_table.is_empty()).then(|| per_table.join("\nUNION ALL\n"))
}

fn parse_contents(lines: &[String]) -> Result<Vec<TableContents>, DbError> {
    json_lines(lines, "counting a table's rows")
}

/// The tables of `database` (or those of `only`, when given) with their rows and, with
/// `digests`, digests: two queries of their own.
fn contents_in(
    config: &Config,
    conn: &Conn,
    database: &str,
    only: Option<&Contents>,
    digests: Digests<'_>,
) -> Result<Vec<TableContents>, DbError> {
    let query = |sql: &str| -> Result<Vec<String>, DbError> {
        let tool = psql_tool(config, conn, database, sql)?.envs(&[content_options(config)]);
        let out = tools::run(&tool, None, conn.deadline, None)
            .map_err(|m| failed(config, "cannot read the restored tables", m))?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .map(str::to_string)
            .collect())
    };
    let mut tables = parse_tables(&query(&tables_sql(
        config_without_tables(config).as_ref().unwrap_or(config),
    ))?)?;
    if let Some(want) = only {
        tables.retain(|t| {
            want.tables
                .iter()
                .any(|w| w.schema.as_deref() == Some(t.schema.as_str()) && w.name == t.name)
        });
    }
    match contents_sql(&tables, digests) {
        Some(sql) => parse_contents(&query(&sql)?),
        None => Ok(Vec::new()),
    }
}

/// A restored database is read whole: a backup's `tables` filter names what it dumped, not what
/// a check may find.
fn config_without_tables(config: &Config) -> Option<Config> {
    config.tables.as_ref().map(|_| Config {
        tables: None,
        ..config.clone()
    })
}

/// The digests a check computes: those the manifest holds, made as it says (else rows alone are
/// counted and compared).
fn manifest_digests(manifest: &Manifest) -> Digests<'_> {
    match &manifest.contents {
        Some(c) if c.tables.iter().any(|t| t.digest.is_some()) => Digests::As(c),
        _ => Digests::Off,
    }
}

/// A marker no dump can print by chance: the session's output up to it is the answer.
fn marker(what: &str) -> String {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut b)
    });
    let nonce: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("bbr-runner-{what}-{}-{nonce}", std::process::id())
}

/// psql reading statements from its stdin (`Session`), stopping at the first error.
fn psql_session(config: &Config, conn: &Conn, database: &str) -> Result<Tool, DbError> {
    let tool = psql_tool(config, conn, database, "")?;
    Ok(Tool {
        args: tool
            .args
            .into_iter()
            .filter(|a| !a.starts_with("--command="))
            .chain(["--set=ON_ERROR_STOP=1".to_string(), "--file=-".to_string()])
            .collect(),
        ..tool
    })
}

/// The backup's own session: a read-only repeatable-read transaction whose snapshot it exports
/// for pg_dump (`--snapshot`), held open while the dump runs, in which it counts and digests
/// every table the dump reads: the same snapshot, so the same rows.
struct SnapshotSession {
    session: tools::Session,
    snapshot: String,
    done: Option<String>,
}

impl SnapshotSession {
    fn open(config: &Config, conn: &Conn) -> Result<SnapshotSession, DbError> {
        let what = "cannot open the backup's snapshot session";
        let fail = |e: ToolError| failed(config, what, e);
        let mut session =
            tools::Session::start(&psql_session(config, conn, &config.database)?).map_err(fail)?;
        let exported = marker("snapshot");
        // The transaction stays idle while pg_dump runs: no idle timeout of the server's ends it.
        session
            .send(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSET LOCAL idle_in_transaction_session_timeout = 0;\n{}SELECT pg_export_snapshot();\n\\echo {exported}\n",
                content_set_local()
            ))
            .map_err(fail)?;
        let lines = session
            .until(&exported, conn.deadline, None)
            .map_err(fail)?;
        let snapshot = lines
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .ok_or_else(|| failed(config, what, "pg_export_snapshot() gave no snapshot"))?
            .to_string();
        Ok(SnapshotSession {
            session,
            snapshot,
            done: None,
        })
    }

    /// Lists the tables, then sends the counting statement, which runs while pg_dump does.
    fn start_contents(&mut self, config: &Config, conn: &Conn) -> Result<(), DbError> {
        let fail = |e: ToolError| failed(config, "the backup's snapshot session failed", e);
        let listed = marker("tables");
        self.session
            .send(&format!("{};\n\\echo {listed}\n", tables_sql(config)))
            .map_err(fail)?;
        let tables = parse_tables(
            &self
                .session
                .until(&listed, conn.deadline, None)
                .map_err(fail)?,
        )?;
        let done = marker("contents");
        let digests = if config.digests {
            Digests::Choose
        } else {
            Digests::Off
        };
        let sql = contents_sql(&tables, digests)
            .map(|s| format!("{s};\n"))
            .unwrap_or_default();
        // A failing count must not end the transaction: pg_dump (its parallel workers too) may
        // still have to import the snapshot. It is rolled back to a savepoint, and said.
        self.session
            .send(&format!(
                "SAVEPOINT bbr_contents;\n\\set ON_ERROR_STOP 0\n{sql}\\if :ERROR\n\\echo {FAILED}\nROLLBACK TO SAVEPOINT bbr_contents;\n\\endif\n\\set ON_ERROR_STOP 1\n\\echo {done}\n"
            ))
            .map_err(fail)?;
        self.done = Some(done);
        Ok(())
    }

    /// Waits for the counts, ends the transaction, and says what it took. `None` when the
    /// counts failed (said, with the server's words): the backup goes on without them.
    fn finish(mut self, config: &Config, conn: &Conn) -> Result<Option<Contents>, DbError> {
        let fail = |e: ToolError| failed(config, "the backup's snapshot session failed", e);
        let done = self.done.take().unwrap_or_default();
        let started = Instant::now();
        let lines = self
            .session
            .until(&done, conn.deadline, None)
            .map_err(fail)?;
        self.session.send("COMMIT;\n").map_err(fail)?;
        let said = self
            .session
            .finish_with_stderr(conn.deadline)
            .map_err(fail)?;
        if lines.iter().any(|l| l == FAILED) {
            crate::note!(
                "acme-db backup: cannot count the tables' rows in the dump's snapshot ({}): no rows or digests are recorded, and a restore of this backup will not be checked",
                said.lines().find(|l| l.contains("ERROR")).unwrap_or(&said)
            );
            return Ok(None);
        }
        let tables = parse_contents(&lines)?;
        if started.elapsed() > std::time::Duration::from_secs(1) {
            crate::note!(
                "acme-db backup: counting{} the tables' rows took {:.1}s after the dump ended",
                if config.digests { " and digesting" } else { "" },
                started.elapsed().as_secs_f64()
            );
        }
        Ok(Some(Contents {
            algorithm: ALGORITHM.into(),
            snapshot: format!(
                "counted in the runner's own repeatable-read transaction, whose snapshot ({}) pg_dump read (--snapshot)",
                self.snapshot
            ),
            tables,
        }))
    }

    /// When the session has ended (with its error), why: pg_dump could not use its snapshot.
    fn ended(&mut self) -> Option<String> {
        self.session.has_ended()
    }
}

/// What the snapshot session prints when the counts failed.
const FAILED: &str = "bbr-runner-contents-failed";

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

/// The tool's version and major (asked once per run); why not, when it cannot say.
fn tool_version(program: &Path) -> Result<(String, u32), DbError> {
    if let Some(known) = pg_clients::version_of(program) {
        return Ok(known);
    }
    let out = tools::run(
        &Tool::new(program.to_path_buf()).arg("--version"),
        None,
        None,
        None,
    )
    .map_err(|e| DbError::Failed(e.to_string()))?;
    Err(DbError::Failed(format!(
        "{} --version printed `{}`: no version in it",
        program.display(),
        String::from_utf8_lossy(&out).trim()
    )))
}

fn check_tables(config: &Config, conn: &Conn) -> Result<(), DbError> {
    let sql = "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema = 'public'";
    super::check_tables_present(config, || psql(config, conn, sql), "schema public of ")
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
    // The runner's own transaction first: pg_dump reads its snapshot, and so do the counts.
    let mut snapshot = SnapshotSession::open(config, conn)?;
    let mut tool = Tool::new(pg_dump)
        .arg(format!("--snapshot={}", snapshot.snapshot))
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
    snapshot.start_contents(config, conn)?;
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
        match (e, snapshot.ended()) {
            (DbError::Failed(m), Some(why)) => DbError::Failed(format!(
                "{m}\nthe runner's snapshot session, whose snapshot pg_dump reads, had ended: {why}"
            )),
            (DbError::Failed(m), None) => DbError::Failed(with_blockers(config, conn, m)),
            (other, _) => other,
        }
    })?;
    let contents = snapshot.finish(config, conn)?;
    Ok(Versions {
        server_version: version.version,
        server_major: version.major,
        client_version,
        client_major,
        dump_format: format.into(),
        contents,
    })
}

/// Scratch databases a restore or rehearsal that did not finish left (`DB_bbr_new_PID`: a
/// half-restored copy; `DB_bbr_old_PID`: the previous database, swapped out and not yet dropped;
/// `DB_bbr_rehearse_PID`: a rehearsal's copy): under the action's lock no other run of it goes
/// on, so they are dropped now, saying so. One still in use by another action's run (its
/// restore tool connected) cannot be dropped, and is said to be.
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
        "SELECT datname FROM pg_database WHERE datname LIKE {} OR datname LIKE {} OR datname LIKE {}",
        like("new"),
        like("old"),
        like("rehearse")
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
                "acme-db: dropped the database `{name}`, left by a restore or rehearsal that did not finish"
            ),
            Err(e) => crate::note!(
                "acme-db: the database `{name}`, left by a restore or rehearsal that did not finish, could not be dropped ({e}); drop it by hand: DROP DATABASE {}",
                ident(name)
            ),
        }
    }
}

/// What every restore route (and the rehearsal) needs: the connection, the server's major's
/// pg_restore, the archive, and its table of contents without EXTENSION and SCHEMA entries
/// (written to a private list file).
struct Prepared {
    conn: Conn,
    pg_restore: PathBuf,
    archive: PathBuf,
    kept: String,
    /// The whole table of contents.
    kept_all: String,
    list: PathBuf,
    _tmp: tempfile::TempDir,
    /// pg_restore's major and the server's (`pg_clients::needs_script_route`).
    restore_major: u32,
    server_major: u32,
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

fn prepare(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
    what: &str,
) -> Result<Prepared, DbError> {
    let server = config
        .server
        .as_ref()
        .ok_or_else(|| DbError::Failed("no server in the config".into()))?;
    let archive = match manifest.dump_format.as_str() {
        "custom" => dir.join(DUMP_FILE),
        "directory" => dir.join(DUMP_DIR),
        other => {
            return Err(DbError::Refused(format!(
                "{what} refused: dump format `{other}` is not a PostgreSQL format"
            )))
        }
    };
    let conn = conn(config, server, deadline)?;
    let version = server_version(config, &conn)?;
    crate::trace!("acme-db", "{what}: the server's version read");
    drop_leftovers(config, &conn);
    crate::trace!("acme-db", "{what}: leftover scratch databases looked for");
    let pg_restore = restore_client(config, manifest, version.major)?;
    let (_, restore_major) = tool_version(&pg_restore)?;
    crate::trace!("acme-db", "{what}: pg_restore chosen");
    if manifest.client_major > restore_major {
        return Err(DbError::Refused(format!(
            "{what} refused: the dump was made by pg_dump {} (PostgreSQL {}), newer than pg_restore {restore_major} for this server (PostgreSQL {})",
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
            "{what} refused: pg_restore cannot read the archive: {m}"
        ))
    })?;
    let listing = String::from_utf8_lossy(&listing);
    let kept_all = listing.to_string();
    let kept: String = listing
        .lines()
        .filter(|l| !l.contains(" EXTENSION ") && !l.contains(" SCHEMA "))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = private_tmp()?;
    let list = secret_file(tmp.path(), "restore.list", &kept)?;
    crate::trace!("acme-db", "{what}: the archive listed");
    Ok(Prepared {
        conn,
        pg_restore,
        archive,
        kept,
        kept_all,
        list,
        _tmp: tmp,
        restore_major,
        server_major: version.major,
    })
}

pub fn restore(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
) -> Result<(), DbError> {
    let p = prepare(config, dir, manifest, deadline, "restore")?;
    let conn = &p.conn;
    if pg_clients::needs_script_route(p.restore_major, p.server_major) {
        if config.parallel_restore && config.jobs > 1 {
            crate::note!(
                "acme-db restore: parallel_restore is not used: this restore runs as one script"
            );
        }
        crate::note!(
            "acme-db restore: pg_restore {} into PostgreSQL {}: one transaction through psql {}, without pg_restore's `SET transaction_timeout = 0` (PostgreSQL {} does not have that setting)",
            p.restore_major,
            p.server_major,
            p.restore_major,
            p.server_major
        );
        return one_transaction(config, &p, manifest, deadline);
    }
    let scratch = Scratch {
        config,
        listing: &p.kept,
        conn,
        pg_restore: &p.pg_restore,
        list: &p.list,
        archive: &p.archive,
        deadline,
    };
    let routed = scratch.restore(manifest);
    crate::trace!("acme-db", "restore: the scratch route done or declined");
    match routed {
        Ok(()) => return Ok(()),
        Err(NotSwapped::Refused(e)) => return Err(e),
        // Stopped, or out of time: no second route.
        Err(NotSwapped::Fallback(reason))
            if tools::interrupted().is_some() || deadline.is_some_and(|d| Instant::now() >= d) =>
        {
            return Err(DbError::Failed(format!("acme-db restore: {reason}")))
        }
        Err(NotSwapped::Fallback(reason)) => {
            crate::note!("acme-db restore: one transaction ({reason})")
        }
    }
    if !(config.parallel_restore && config.jobs > 1) {
        return one_transaction(config, &p, manifest, deadline);
    }
    crate::note!("acme-db restore: parallel restore with {} jobs (not atomic: a failure can leave a partial restore)", config.jobs);
    let tool = Tool::new(p.pg_restore.clone())
        .envs(&restore_session(config))
        .args(["--clean", "--if-exists", "--exit-on-error"])
        .arg(format!("--use-list={}", p.list.display()))
        .arg(format!("--dbname={}", config.database))
        .args(conn.args.clone())
        .envs(&conn.env)
        .arg(format!("--jobs={}", config.jobs))
        .arg(p.archive.display().to_string());
    let mut watch = lock_watch(config, conn);
    tools::run_watched(&tool, None, deadline, None, Some(&mut watch)).map_err(|m| {
        end_our_sessions(config, conn);
        failed(
            config,
            "pg_restore failed (parallel restore: the database may be partly restored; run the restore again)",
            with_blockers(config, conn, m.to_string()),
        )
    })?;
    // Not atomic: the check can only come after, and says so.
    if manifest.contents.is_some() {
        let found = contents_in(
            config,
            conn,
            &config.database,
            manifest.contents.as_ref(),
            manifest_digests(manifest),
        )?;
        super::check_after_commit(
            manifest,
            &found,
            "the parallel restore (bbr_runner.parallel_restore, not atomic) gave tables that differ",
            ": restore again without parallel_restore, which checks before it commits",
        )?;
    }
    Ok(())
}

/// The one-transaction route: pg_restore writes the restore as SQL, which psql runs inside one
/// transaction the runner opened; when the script has run, the runner counts and digests the
/// restored tables in that same transaction, and commits only when they are what the backup saw
/// (else rolls back: the live database is as it was).
fn one_transaction(
    config: &Config,
    p: &Prepared,
    manifest: &Manifest,
    deadline: Option<Instant>,
) -> Result<(), DbError> {
    use std::sync::atomic::{AtomicI32, Ordering};
    let conn = &p.conn;
    let rolled_back = "its single transaction was rolled back: the database is as it was";
    let producer = Tool::new(p.pg_restore.clone())
        .args(["--clean", "--if-exists", "--exit-on-error", "--file=-"])
        .arg(format!("--use-list={}", p.list.display()))
        .arg(p.archive.display().to_string());
    // psql of pg_restore's own major understands what it writes (`\restrict`); the script route
    // (pg_restore 17 or later into a server before 17) needs it, and leaves out the opening
    // `SET transaction_timeout = 0` such a server does not know.
    let script_route = pg_clients::needs_script_route(p.restore_major, p.server_major);
    let beside = p.pg_restore.with_file_name("psql");
    if script_route && !beside.is_file() {
        return Err(DbError::Failed(format!(
            "restoring into PostgreSQL {} with pg_restore {} needs psql {} beside it, and {} is missing; nothing was restored: the database was not touched",
            p.server_major,
            p.restore_major,
            p.restore_major,
            beside.display()
        )));
    }
    let mut session_tool =
        psql_session(config, conn, &config.database)?.envs(&restore_session(config));
    if beside.is_file() {
        session_tool.program = beside;
    }
    let mut psql = tools::Session::start(&session_tool)
        .map_err(|m| failed(config, "cannot start psql for the restore", m))?;
    let stdin = psql
        .take_stdin()
        .ok_or_else(|| DbError::Failed("psql has no stdin".into()))?;
    let restored = marker("restored");
    let tail = format!("\n\\echo {restored}\n");
    let pgid = std::sync::Arc::new(AtomicI32::new(0));
    let psql_group = psql.id() as i32;
    let feeder = {
        let pgid = pgid.clone();
        std::thread::spawn(move || {
            let mut opening = pg_clients::OpeningSettings::default();
            let mut keep = |line: &[u8]| opening.keep(line);
            let keep: Option<tools::LineFilter<'_>> =
                if script_route { Some(&mut keep) } else { None };
            // pg_restore failed: psql goes first, so it never sees the end of its input.
            let stop_psql = || {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(psql_group),
                    nix::sys::signal::Signal::SIGKILL,
                );
            };
            tools::stream_into(&producer, stdin, "BEGIN;\n", &tail, &pgid, keep, stop_psql)
        })
    };
    let stop_producer = || {
        let g = pgid.load(Ordering::SeqCst);
        if g > 0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(g),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    let mut watch = lock_watch(config, conn);
    crate::trace!("acme-db", "restore: one transaction: psql started");
    let ran = psql.until(&restored, deadline, Some(&mut watch));
    crate::trace!("acme-db", "restore: one transaction: the script ran");
    if let Err(m) = ran {
        stop_producer();
        psql.kill();
        let fed = match feeder.join() {
            Ok(fed) => fed.map_err(|e| e.to_string()),
            Err(_) => Err("the feeding thread failed".to_string()),
        };
        end_our_sessions(config, conn);
        // Killed by the feeding thread: pg_restore failed first, and its message says why.
        let m = match fed {
            Err(f) if matches!(m, ToolError::Exited { code: None, .. }) => {
                format!("{f}\n`psql` was stopped before the end of its input")
            }
            _ => m.to_string(),
        };
        return Err(failed(
            config,
            &format!("the restore through psql failed ({rolled_back})"),
            with_blockers(config, conn, m),
        ));
    }
    let stdin = match feeder.join() {
        Ok(Ok(stdin)) => stdin,
        Ok(Err(m)) => {
            return Err(failed(
                config,
                &format!("pg_restore failed ({rolled_back})"),
                m,
            ))
        }
        Err(_) => {
            return Err(DbError::Failed(format!(
                "the thread feeding psql failed ({rolled_back})"
            )))
        }
    };
    psql.put_stdin(stdin);
    let mut ask = |sql: &str, what: &str| -> Result<Vec<String>, DbError> {
        let m = marker(what);
        psql.send(&format!("{sql};\n\\echo {m}\n"))
            .and_then(|()| psql.until(&m, deadline, None))
            .map_err(|e| {
                failed(
                    config,
                    &format!("cannot check the restored tables ({rolled_back})"),
                    e,
                )
            })
    };
    if let Some(expected) = &manifest.contents {
        ask(
            content_set_local().trim_end().trim_end_matches(';'),
            "settings",
        )?;
        let mut tables = parse_tables(&ask(
            &tables_sql(config_without_tables(config).as_ref().unwrap_or(config)),
            "tables",
        )?)?;
        tables.retain(|t| {
            expected
                .tables
                .iter()
                .any(|w| w.schema.as_deref() == Some(t.schema.as_str()) && w.name == t.name)
        });
        let found = match contents_sql(&tables, manifest_digests(manifest)) {
            Some(sql) => parse_contents(&ask(&sql, "contents")?)?,
            None => Vec::new(),
        };
        crate::trace!(
            "acme-db",
            "restore: one transaction: the tables counted and digested"
        );
        if let Err(why) =
            super::check_before_commit("acme-db restore", Some(expected), &found, false)
        {
            let undone = psql
                .send("ROLLBACK;\n")
                .and_then(|()| psql.finish(deadline));
            return Err(DbError::Mismatch(format!(
                "restore refused: the restored tables differ from what the backup saw: {why}; {}",
                match undone {
                    Ok(()) => rolled_back.to_string(),
                    Err(e) => format!("the rollback failed ({e}), but nothing was committed: the database is as it was"),
                }
            )));
        }
    }
    psql.send("COMMIT;\n")
        .and_then(|()| psql.finish(deadline))
        .map_err(|m| {
            failed(
                config,
                "the restore's COMMIT failed (nothing was committed: the database is as it was)",
                m,
            )
        })?;
    crate::trace!("acme-db", "restore: one transaction: committed");
    Ok(())
}

/// `bbr-runner acme-db rehearse`: restores into a scratch database `DB_bbr_rehearse_PID`
/// (created like the live one: encoding, collation), reads its tables back, and drops it. The
/// live database is only read.
pub fn rehearse(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
    label: &str,
) -> Result<Vec<TableContents>, DbError> {
    let p = prepare(config, dir, manifest, deadline, "rehearsal")?;
    let conn = &p.conn;
    let user = config
        .server
        .as_ref()
        .map(|s| s.username.clone())
        .unwrap_or_default();
    let facts = psql(
        config,
        conn,
        "SELECT r.rolcreatedb, pg_encoding_to_char(d.encoding), d.datcollate, d.datctype FROM pg_database d, pg_roles r WHERE d.datname = current_database() AND r.rolname = current_user",
    )?;
    let f: Vec<&str> = facts.split('|').collect();
    if f.len() != 4 {
        return Err(DbError::Failed(format!("unexpected answer `{facts}`")));
    }
    if f[0] != "t" {
        return Err(DbError::Failed(format!(
            "the role `{user}` may not create databases, and a rehearsal restores into a scratch database next to the live one: ALTER ROLE {} CREATEDB (it creates and drops only `{}_bbr_rehearse_*`), or rehearse with a role that may",
            ident(&user),
            config.database
        )));
    }
    let scratch = format!("{}_bbr_rehearse_{}", config.database, std::process::id());
    if scratch.len() > 63 {
        return Err(DbError::Failed(format!(
            "the database name is too long for the scratch database's name `{scratch}` (63 bytes at most)"
        )));
    }
    let drop_scratch = || {
        match psql_cleanup(
        config,
        conn,
        &format!("DROP DATABASE IF EXISTS {}", ident(&scratch)),
    ) {
        Ok(()) => format!("the scratch database `{scratch}` was dropped"),
        Err(e) => format!(
            "the scratch database `{scratch}` could not be dropped ({e}); the next backup, restore or rehearsal drops it"
        ),
    }
    };
    let started = Instant::now();
    if let Err(e) = psql(
        config,
        conn,
        &format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            ident(&scratch),
            literal(f[1]),
            literal(f[2]),
            literal(f[3])
        ),
    ) {
        let dropped = drop_scratch();
        return Err(DbError::Failed(format!(
            "cannot create the scratch database ({e}); {dropped} if it had been created"
        )));
    }
    // What restore skips because the live database has it already: the archive's schemas and
    // extensions, made here first (as the role may: trusted extensions, or a superuser).
    for (kind, name) in schemas_and_extensions(&p.kept_all) {
        let sql = match kind {
            "SCHEMA" if name == "public" => continue,
            "SCHEMA" => format!("CREATE SCHEMA IF NOT EXISTS {}", ident(name)),
            _ => format!("CREATE EXTENSION IF NOT EXISTS {}", ident(name)),
        };
        if let Err(e) = psql_on(config, conn, &scratch, &sql) {
            let dropped = drop_scratch();
            return Err(DbError::Failed(format!(
                "cannot make the archive's {} `{name}` in the scratch database ({e}); {dropped}. A restore into the live database, which has it, skips it; a rehearsal cannot, unless the role may create it",
                kind.to_lowercase()
            )));
        }
    }
    crate::note!(
        "{label}: restoring with {} jobs into the scratch database `{scratch}`",
        config.jobs
    );
    let tool = Tool::new(p.pg_restore.clone())
        .args(["--exit-on-error", &format!("--jobs={}", config.jobs)])
        .arg(format!("--use-list={}", p.list.display()))
        .arg(format!("--dbname={scratch}"))
        .args(conn.args.clone())
        .envs(&conn.env)
        .envs(&restore_session(config))
        .arg(p.archive.display().to_string());
    if let Err(m) = tools::run(&tool, None, deadline, None) {
        end_our_sessions(config, conn);
        let dropped = drop_scratch();
        return Err(failed(
            config,
            &format!("the rehearsed restore failed, as a restore of this backup would; {dropped}"),
            m,
        ));
    }
    let restored = started.elapsed();
    let found = contents_in(config, conn, &scratch, None, manifest_digests(manifest));
    let dropped = drop_scratch();
    crate::note!(
        "{label}: restored in {:.1}s, read back in {:.1}s; {dropped}",
        restored.as_secs_f64(),
        (started.elapsed() - restored).as_secs_f64()
    );
    found
}

/// The archive's SCHEMA and EXTENSION entries (`4; 2615 16385 SCHEMA - app acme`): kind, name.
fn schemas_and_extensions(listing: &str) -> Vec<(&'static str, &str)> {
    listing
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            ["SCHEMA", "EXTENSION"].into_iter().find_map(|kind| {
                let rest = l.split_once(&format!(" {kind} - "))?.1;
                Some((kind, rest.split_whitespace().next()?))
            })
        })
        .collect()
}

/// Why the scratch route did not swap: `Fallback(why)` (the one-transaction route restores
/// instead), or `Refused` (the restored copy differs from what the backup saw: nothing restores).
enum NotSwapped {
    Fallback(String),
    Refused(DbError),
}

impl From<String> for NotSwapped {
    fn from(why: String) -> Self {
        NotSwapped::Fallback(why)
    }
}

impl From<&str> for NotSwapped {
    fn from(why: &str) -> Self {
        NotSwapped::Fallback(why.to_string())
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
    fn restore(&self, manifest: &Manifest) -> Result<(), NotSwapped> {
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
            return Err(NotSwapped::Fallback(format!(
                "all but the largest table hold {overlap} bytes of the archive, under scratch_restore_min_bytes ({}): parallel workers would gain less than the scratch database costs",
                c.scratch_restore_min_bytes
            )));
        }
        let extra = objects_not_in(c, self.conn, self.listing)
            .map_err(|e| format!("cannot list the database's objects: {e}"))?;
        if !extra.is_empty() {
            let shown: Vec<&str> = extra.iter().take(5).map(String::as_str).collect();
            return Err(NotSwapped::Fallback(format!(
                "the database holds {} object(s) the backup does not ({}{}): a restore keeps what the backup does not know, and only the one-transaction route does",
                extra.len(),
                shown.join(", "),
                if extra.len() > 5 { ", ..." } else { "" }
            )));
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
            return Err(NotSwapped::Fallback(format!("unexpected answer `{facts}`")));
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
            return Err(NotSwapped::Fallback(format!(
                "cannot create the scratch database ({e}); {dropped} if it had been created"
            )));
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
            return Err(NotSwapped::Fallback(format!(
                "the parallel restore into the scratch database failed ({m}); {dropped}"
            )));
        }
        let restored = restore_started.elapsed();
        // Before the swap: the scratch database holds only what the dump restored, and must
        // hold what the backup saw. Else it is dropped and nothing is restored (the one-
        // transaction route would restore the same dump).
        let check_started = Instant::now();
        if manifest.contents.is_some() {
            let found = contents_in(c, self.conn, &new, None, manifest_digests(manifest));
            let checked = found.map(|found| {
                super::check_before_commit(
                    "acme-db restore",
                    manifest.contents.as_ref(),
                    &found,
                    true,
                )
            });
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    let dropped = drop_new();
                    return Err(NotSwapped::Refused(DbError::Mismatch(format!(
                        "restore refused: the scratch database differs from what the backup saw: {why}; it was not swapped in ({dropped}): the live database is as it was"
                    ))));
                }
                Err(why) => {
                    let dropped = drop_new();
                    return Err(NotSwapped::Refused(DbError::Failed(format!(
                        "cannot check the scratch database against what the backup saw ({why}); it was not swapped in ({dropped}): the live database is as it was"
                    ))));
                }
            }
        }
        let checked = check_started.elapsed();
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
            return Err(NotSwapped::Fallback(format!(
                "the atomic swap failed ({e}); {dropped}"
            )));
        }
        let swapped = swap_started.elapsed();
        let drop_started = Instant::now();
        // Now `db` is the restored database and `old` the previous one.
        // The restore has succeeded: a slow or failing drop of the old copy never undoes that.
        if let Err(e) = psql_cleanup(c, self.conn, &format!("DROP DATABASE {}", ident(&old))) {
            crate::note!("acme-db restore: the previous database is kept as `{old}`: it could not be dropped within 15s ({e}); the next backup or restore drops it, or DROP DATABASE {} by hand", ident(&old));
        }
        crate::note!(
            "acme-db restore: restored in parallel and swapped in atomically (create {:.2}s, restore {:.2}s, check {:.2}s, swap {:.2}s, drop of the previous database {:.2}s)",
            created.as_secs_f64(),
            restored.as_secs_f64(),
            checked.as_secs_f64(),
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
    fn schemas_and_extensions_come_from_the_listing() {
        let listing = ";\n; Archive created at ...\n4; 2615 16385 SCHEMA - app acme\n2; 3079 16386 EXTENSION - citext \n3; 0 0 COMMENT - EXTENSION citext \n5; 2615 2200 SCHEMA - public pg_database_owner\n;6; 2615 16390 SCHEMA - skipped acme\n218; 1259 16393 TABLE app items acme\n";
        assert_eq!(
            super::schemas_and_extensions(listing),
            [
                ("SCHEMA", "app"),
                ("EXTENSION", "citext"),
                ("SCHEMA", "public")
            ]
        );
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
