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
use crate::actions::artifact::Manifest;

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
    let tool = Tool::new(client(config, &["mysql", "mariadb"])?)
        .args(conn.args.clone())
        .args(["--skip-column-names", "--silent", "--batch"])
        .arg(format!("--execute={sql}"))
        .arg(config.database.clone())
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
    if config.tables.is_none() {
        return Ok(());
    }
    let out = query(
        config,
        conn,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'",
    )?;
    super::check_tables_present(config, &out, "")
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
        .map_err(DbError::Failed)?;
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
    super::dump_and_publish(run, &tool, &partial, DUMP_FILE, "mysqldump failed", None)?;
    Ok(Versions {
        server_version: info.version,
        server_major: info.major,
        client_major: info.major,
        client_version,
        dump_format: "sql".into(),
        contents: None,
    })
}

pub fn restore(
    config: &Config,
    dir: &Path,
    manifest: &Manifest,
    deadline: Option<Instant>,
) -> Result<(), DbError> {
    if manifest.dump_format != "sql" {
        return Err(DbError::Refused(format!(
            "restore refused: dump format `{}` is not a MySQL/MariaDB dump",
            manifest.dump_format
        )));
    }
    let (info, conn) = server(config)?;
    if manifest.server_major > info.major {
        return Err(DbError::Refused(format!(
            "restore refused: the dump comes from server major {} ({}), newer than this server ({})",
            manifest.server_major, manifest.server_version, info.version
        )));
    }
    let file = dir.join(DUMP_FILE);
    let input = std::fs::File::open(&file)
        .map_err(|e| DbError::Failed(format!("{}: {e}", file.display())))?;
    let tool = Tool::new(client(config, &["mysql", "mariadb"])?)
        .args(conn.args.clone())
        .arg(config.database.clone())
        .envs(&conn.env);
    tools::run(&tool, Some(input), deadline, None)
        .map_err(|m| failed(config, "the mysql client failed to apply the dump", m))?;
    Ok(())
}

pub fn rehearse(
    _config: &Config,
    _dir: &Path,
    _manifest: &Manifest,
    _deadline: Option<Instant>,
    _label: &str,
) -> Result<Vec<crate::actions::artifact::TableContents>, DbError> {
    Err(DbError::Failed("not yet".into()))
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
