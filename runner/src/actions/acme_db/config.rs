//! The database config: the same JSON keys as the BBR SDK's database-backup-restorer
//! (`username`, `password`, `host`, `port`, `database`, `adapter`, `tables`, `tls`), so its
//! templates carry over, plus our own keys, kept apart under `bbr_runner`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Postgres,
    Mysql,
    Sqlite,
}

impl Adapter {
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Postgres => "postgres",
            Adapter::Mysql => "mysql",
            Adapter::Sqlite => "sqlite",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    username: Option<String>,
    password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    adapter: String,
    tables: Option<Vec<String>>,
    tls: Option<RawTls>,
    bbr_runner: Option<RawExtras>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    skip_host_verify: bool,
    cert: Option<RawCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    ca: Option<String>,
    certificate: Option<String>,
    private_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtras {
    sqlite_path: Option<String>,
    postgres_client_dirs: Option<Vec<String>>,
    mysql_client_dirs: Option<Vec<String>>,
    jobs: Option<u32>,
    parallel_restore: Option<bool>,
    compression: Option<u32>,
    timeout_seconds: Option<u64>,
    maintenance_work_mem: Option<String>,
    scratch_restore_min_bytes: Option<u64>,
    lock_wait_timeout_seconds: Option<u64>,
    connect_attempts: Option<u32>,
    stall_seconds: Option<u64>,
    digests: Option<bool>,
    rehearse_after_backup: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub skip_host_verify: bool,
    pub ca: String,
    /// Client certificate and key, both or neither.
    pub client: Option<(String, String)>,
}

/// A server to connect to (postgres and mysql).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub username: String,
    pub password: String,
    /// A host name or address, or an absolute path: the unix socket directory (postgres) or
    /// socket file (mysql).
    pub host: String,
    pub port: u16,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: PathBuf,
    pub adapter: Adapter,
    pub database: String,
    pub tables: Option<Vec<String>>,
    /// `None` for sqlite.
    pub server: Option<Server>,
    pub sqlite_path: Option<PathBuf>,
    /// Directories holding client tools; `{major}` stands for the server's major version.
    pub postgres_client_dirs: Vec<String>,
    pub mysql_client_dirs: Vec<String>,
    pub jobs: u32,
    pub parallel_restore: bool,
    /// pg_dump compression level (0-9); default `DEFAULT_COMPRESSION`.
    pub compression: Option<u32>,
    /// PostgreSQL restore sessions' `maintenance_work_mem` (index builds sort in memory).
    pub maintenance_work_mem: String,
    /// The scratch-database restore only when the archive's tables other than the largest hold at
    /// least this many bytes: what parallel workers can restore side by side.
    pub scratch_restore_min_bytes: u64,
    pub timeout: Option<std::time::Duration>,
    /// How long any database step waits for a lock another session holds before it gives up
    /// and names that session (PostgreSQL `lock_timeout`, pg_dump `--lock-wait-timeout`).
    pub lock_wait_timeout: std::time::Duration,
    /// How many times a backup tries to reach a server that refuses connections (a restart, a
    /// failover) before any data is written; a restore never retries.
    pub connect_attempts: u32,
    /// A dump that writes nothing for this long is stopped (`None`: 0 in the config, never).
    pub stall: Option<std::time::Duration>,
    /// The backup records a digest of each table's rows beside its row count (default); false:
    /// counts only, for databases where reading every row once more costs too much.
    pub digests: bool,
    /// The backup rehearses its own restore (into a scratch database, or a temp SQLite file) and
    /// fails when that restore would fail or differ from what the backup saw.
    pub rehearse_after_backup: bool,
}

/// Parallel dump jobs when the config does not say: 2, the best measured (BENCHMARKS.md), with
/// the directory format; `jobs: 1` gives one custom-format file.
pub const DEFAULT_JOBS: u32 = 2;
/// The restore sessions' maintenance_work_mem when the config does not say: index builds, most of
/// a restore's time, sort in memory instead of on disk (a setting any role may make).
pub const DEFAULT_MAINTENANCE_WORK_MEM: &str = "256MB";
/// Below this many archive bytes outside the largest table, the scratch route's fixed cost
/// (create, swap, drop with its checkpoint) outweighs what parallel workers gain (BENCHMARKS.md).
pub const DEFAULT_SCRATCH_RESTORE_MIN_BYTES: u64 = 8 << 20;
/// Lock waits end after this long, naming the session that holds the lock.
pub const DEFAULT_LOCK_WAIT_TIMEOUT_SECONDS: u64 = 120;
/// A dump that writes nothing for this long has lost its server: longer than the lock wait, so
/// a dump waiting for a lock is ended by that, with its reason.
pub const DEFAULT_STALL_SECONDS: u64 = 300;
/// A backup's connection attempts: the first and three more, 1, 2 and 4 s apart.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 4;
/// pg_dump's compression level when the config does not say.
pub const DEFAULT_COMPRESSION: u32 = 1;
pub const DEFAULT_POSTGRES_CLIENT_DIRS: &[&str] = &["/usr/lib/postgresql/{major}/bin"];
pub const DEFAULT_MYSQL_CLIENT_DIRS: &[&str] = &["/usr/bin"];

/// A config problem: the file, the line and column when known, the key path and what is wrong.
/// Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {key}: {message}", file.display(), position(*line, *column))]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: String,
    pub message: String,
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// Where a key first appears (line, column): its last part, else the nearest parent that is
/// there (a missing `tls.cert.private_key` points at `"cert"`).
pub fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    key.split('.').rev().find_map(|part| {
        let needle = format!("\"{}\"", part.split('[').next().unwrap_or(part));
        text.lines()
            .enumerate()
            .find_map(|(i, l)| l.find(&needle).map(|c| (i + 1, c + 1)))
    })
}

/// Why a JSON config did not parse: the key (`(document)` at the top level), where (when serde_json
/// knows), and serde_json's message without its own " at line L column C" (printed as
/// file:line:column instead).
#[derive(Debug)]
pub struct JsonError {
    pub key: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Parses a JSON config into `T`, naming the key a type error is at.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, JsonError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." || key == "?" {
            "(document)".to_string()
        } else {
            key
        };
        let e = e.into_inner();
        let mut message = e.to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        let known = e.line() > 0;
        JsonError {
            key,
            line: known.then_some(e.line()),
            column: known.then_some(e.column()),
            message,
        }
    })
}

/// Configs larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let err = |key: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        line: None,
        column: None,
        key: key.to_string(),
        message,
    };
    let size = std::fs::metadata(file)
        .map_err(|e| err("(file)", format!("cannot read the config: {e}")))?
        .len();
    if size > MAX_CONFIG_BYTES {
        return Err(err("(file)", format!("the config is {size} bytes; configs larger than {MAX_CONFIG_BYTES} bytes are refused")));
    }
    let bytes =
        std::fs::read(file).map_err(|e| err("(file)", format!("cannot read the config: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        err(
            "(document)",
            format!(
                "the config is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let raw: Raw = parse_json(&text).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: e.line,
        column: e.column,
        key: e.key,
        message: e.message,
    })?;
    validate(file, raw).map_err(|mut e| {
        if let Some((l, c)) = locate_key(&text, &e.key) {
            e.line = Some(l);
            e.column = Some(c);
        }
        e
    })
}

fn required(
    file: &Path,
    value: Option<String>,
    key: &str,
    adapter: Adapter,
) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            key: key.into(),
            message: format!("is required for adapter `{}`", adapter.name()),
        }),
    }
}

fn validate(file: &Path, raw: Raw) -> Result<Config, ConfigError> {
    let err = |key: &str, message: &str| ConfigError {
        file: file.to_path_buf(),
        line: None,
        column: None,
        key: key.to_string(),
        message: message.to_string(),
    };
    let adapter = match raw.adapter.as_str() {
        "postgres" => Adapter::Postgres,
        "mysql" => Adapter::Mysql,
        "sqlite" => Adapter::Sqlite,
        other => {
            return Err(err(
                "adapter",
                &format!("unsupported adapter `{other}`: use `postgres`, `mysql` (also for MariaDB) or `sqlite`"),
            ))
        }
    };
    if let Some(tables) = &raw.tables {
        if tables.is_empty() {
            return Err(err(
                "tables",
                "tables specified but empty: leave the key out to back up the whole database",
            ));
        }
        if let Some((i, _)) = tables.iter().enumerate().find(|(_, t)| t.is_empty()) {
            return Err(err(&format!("tables[{i}]"), "is empty"));
        }
    }
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let cert = t
                .cert
                .ok_or_else(|| err("tls.cert.ca", "TLS block specified without tls.cert.ca"))?;
            let ca = cert
                .ca
                .ok_or_else(|| err("tls.cert.ca", "TLS block specified without tls.cert.ca"))?;
            let client = match (cert.certificate, cert.private_key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(err(
                        "tls.cert.private_key",
                        "tls.cert.certificate specified but not tls.cert.private_key",
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        "tls.cert.certificate",
                        "tls.cert.private_key specified but not tls.cert.certificate",
                    ))
                }
            };
            Some(Tls {
                skip_host_verify: t.skip_host_verify,
                ca,
                client,
            })
        }
    };
    let extras = raw.bbr_runner.unwrap_or_default();
    let jobs = extras.jobs.unwrap_or(DEFAULT_JOBS);
    if jobs == 0 || jobs > 64 {
        return Err(err("bbr_runner.jobs", "must be between 1 and 64"));
    }
    if let Some(level) = extras.compression {
        if level > 9 {
            return Err(err("bbr_runner.compression", "must be between 0 and 9"));
        }
    }
    let maintenance_work_mem = extras
        .maintenance_work_mem
        .clone()
        .unwrap_or_else(|| DEFAULT_MAINTENANCE_WORK_MEM.into());
    let (digits, unit) = maintenance_work_mem.split_at(
        maintenance_work_mem
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(maintenance_work_mem.len()),
    );
    if digits.is_empty() || !["kB", "MB", "GB"].contains(&unit) {
        return Err(err(
            "bbr_runner.maintenance_work_mem",
            "must be a size like `256MB` (kB, MB or GB)",
        ));
    }
    if extras.lock_wait_timeout_seconds == Some(0) {
        return Err(err(
            "bbr_runner.lock_wait_timeout_seconds",
            "0 would wait forever behind a lock; give a number of seconds",
        ));
    }
    if extras.connect_attempts.is_some_and(|n| n == 0 || n > 20) {
        return Err(err(
            "bbr_runner.connect_attempts",
            "must be between 1 and 20",
        ));
    }
    if extras.timeout_seconds == Some(0) {
        return Err(err(
            "bbr_runner.timeout_seconds",
            "0 is not a timeout; leave the key out for none",
        ));
    }
    let dirs =
        |v: Option<Vec<String>>, key: &str, default: &[&str]| -> Result<Vec<String>, ConfigError> {
            let v = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            if let Some((i, d)) = v.iter().enumerate().find(|(_, d)| !d.starts_with('/')) {
                return Err(err(
                    &format!("{key}[{i}]"),
                    &format!("`{d}` is not an absolute path"),
                ));
            }
            Ok(v)
        };
    let (server, sqlite_path, database) = match adapter {
        Adapter::Sqlite => {
            let path = extras
                .sqlite_path
                .clone()
                .ok_or_else(|| err("bbr_runner.sqlite_path", "is required for adapter `sqlite`"))?;
            if !path.starts_with('/') {
                return Err(err(
                    "bbr_runner.sqlite_path",
                    &format!("`{path}` is not an absolute path"),
                ));
            }
            let database = raw.database.unwrap_or_else(|| "acme".into());
            (None, Some(PathBuf::from(path)), database)
        }
        Adapter::Postgres | Adapter::Mysql => {
            let username = required(file, raw.username, "username", adapter)?;
            let host = required(file, raw.host, "host", adapter)?;
            let database = required(file, raw.database, "database", adapter)?;
            let port = raw.port.ok_or_else(|| {
                err(
                    "port",
                    &format!("is required for adapter `{}` (an integer)", adapter.name()),
                )
            })?;
            if port == 0 {
                return Err(err("port", "0 is not a port"));
            }
            let server = Server {
                username,
                password: raw.password.unwrap_or_default(),
                host,
                port,
                tls,
            };
            (Some(server), None, database)
        }
    };
    Ok(Config {
        source: file.to_path_buf(),
        adapter,
        database,
        tables: raw.tables,
        server,
        sqlite_path,
        postgres_client_dirs: dirs(
            extras.postgres_client_dirs,
            "bbr_runner.postgres_client_dirs",
            DEFAULT_POSTGRES_CLIENT_DIRS,
        )?,
        mysql_client_dirs: dirs(
            extras.mysql_client_dirs,
            "bbr_runner.mysql_client_dirs",
            DEFAULT_MYSQL_CLIENT_DIRS,
        )?,
        jobs,
        parallel_restore: extras.parallel_restore.unwrap_or(false),
        // Level 1: measured (BENCHMARKS.md) about twice as fast as pg_dump's default level for an
        // artifact a few percent larger.
        compression: Some(extras.compression.unwrap_or(DEFAULT_COMPRESSION)),
        timeout: extras.timeout_seconds.map(std::time::Duration::from_secs),
        lock_wait_timeout: std::time::Duration::from_secs(
            extras
                .lock_wait_timeout_seconds
                .unwrap_or(DEFAULT_LOCK_WAIT_TIMEOUT_SECONDS),
        ),
        connect_attempts: extras.connect_attempts.unwrap_or(DEFAULT_CONNECT_ATTEMPTS),
        stall: match extras.stall_seconds.unwrap_or(DEFAULT_STALL_SECONDS) {
            0 => None,
            s => Some(std::time::Duration::from_secs(s)),
        },
        maintenance_work_mem,
        scratch_restore_min_bytes: extras
            .scratch_restore_min_bytes
            .unwrap_or(DEFAULT_SCRATCH_RESTORE_MIN_BYTES),
        digests: extras.digests.unwrap_or(true),
        rehearse_after_backup: extras.rehearse_after_backup.unwrap_or(false),
    })
}

impl Config {
    /// The job's profile variables for this config (`DB_SOCKET`, `DB_HOST`, `DB_PORT`,
    /// `SQLITE_DIR`): a socket when `host` is a path (PostgreSQL: the socket directory; MySQL:
    /// the socket file), else the host and TCP port; SQLite: the database file's directory.
    pub fn profile_vars(&self) -> std::collections::BTreeMap<String, String> {
        let mut v = std::collections::BTreeMap::from([
            ("DB_SOCKET".to_string(), String::new()),
            ("DB_HOST".to_string(), String::new()),
            ("DB_PORT".to_string(), String::new()),
            ("SQLITE_DIR".to_string(), String::new()),
        ]);
        match (&self.server, self.adapter) {
            (Some(s), Adapter::Postgres) if s.host.starts_with('/') => {
                v.insert(
                    "DB_SOCKET".into(),
                    format!("{}/.s.PGSQL.{}", s.host.trim_end_matches('/'), s.port),
                );
            }
            (Some(s), Adapter::Mysql) if s.host.starts_with('/') => {
                v.insert("DB_SOCKET".into(), s.host.clone());
            }
            (Some(s), _) => {
                v.insert("DB_HOST".into(), s.host.clone());
                v.insert("DB_PORT".into(), s.port.to_string());
            }
            (None, _) => {
                if let Some(dir) = self
                    .sqlite_path
                    .as_deref()
                    .and_then(std::path::Path::parent)
                {
                    v.insert("SQLITE_DIR".into(), dir.display().to_string());
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.json");
        std::fs::write(&f, text).expect("write");
        load(&f).map_err(|mut e| {
            e.file = PathBuf::from("c.json");
            e.line = None;
            e.column = None;
            e
        })
    }

    fn err(text: &str) -> String {
        load_str(text).expect_err("rejected").to_string()
    }

    const PG: &str = r#"{"username":"acme","password":"p","host":"127.0.0.1","port":5432,"database":"acme","adapter":"postgres"}"#;

    #[test]
    fn sdk_config_is_accepted_with_defaults() {
        let c = load_str(PG).expect("valid");
        assert_eq!(c.adapter, Adapter::Postgres);
        assert_eq!(
            (c.jobs, c.compression),
            (DEFAULT_JOBS, Some(DEFAULT_COMPRESSION))
        );
        assert_eq!(c.postgres_client_dirs, ["/usr/lib/postgresql/{major}/bin"]);
        assert_eq!(c.server.as_ref().map(|s| s.port), Some(5432));
    }

    #[test]
    fn each_error_names_its_key() {
        assert_eq!(
            err(&PG.replace("5432", "\"5432\"")).split(": ").nth(1),
            Some("port")
        );
        assert!(err(&PG.replace("postgres", "oracle"))
            .starts_with("c.json: adapter: unsupported adapter `oracle`"));
        assert!(err(&PG.replace("}", r#","tables":[]}"#))
            .starts_with("c.json: tables: tables specified but empty"));
        assert!(err(&PG.replace("}", r#","tls":{"cert":{}}}"#))
            .starts_with("c.json: tls.cert.ca: TLS block specified without tls.cert.ca"));
        assert!(
            err(&PG.replace("}", r#","tls":{"cert":{"ca":"x","certificate":"c"}}}"#))
                .starts_with("c.json: tls.cert.private_key:")
        );
        assert!(err(&PG.replace("}", r#","bbr_runner":{"jobs":0}}"#))
            .starts_with("c.json: bbr_runner.jobs:"));
        assert!(err(&PG.replace("}", r#","bogus":1}"#)).contains("unknown field `bogus`"));
        assert!(
            err(&PG.replace(r#""host":"127.0.0.1","#, "")).starts_with("c.json: host: is required")
        );
        assert!(err(r#"{"adapter":"sqlite"}"#)
            .starts_with("c.json: bbr_runner.sqlite_path: is required"));
        assert!(err("{").starts_with("c.json: (document):"), "{}", err("{"));
    }
}
