//! Real database servers from Debian's packages, started in temp dirs for one test each.

use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

fn system_user(name: &str, package: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!("user `{name}` missing: install the server (apt-get install {package})")
        });
    (u.uid.as_raw(), u.gid.as_raw())
}

fn wait_until(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what} did not start within 60s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run client");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub const APP_USER: &str = "acme";
pub const APP_PASSWORD: &str = "acme-secret-pw";
pub const APP_DB: &str = "acme";

/// A PostgreSQL cluster: initdb in a temp dir, socket in that dir, TCP on 127.0.0.1.
pub struct Postgres {
    _dir: tempfile::TempDir,
    /// The data directory (the server's user's).
    pub data: PathBuf,
    log: PathBuf,
    /// The server's programs (initdb, postgres).
    server_bin: PathBuf,
    /// Client tools for the tests' own statements (psql, pg_isready).
    pub bin: PathBuf,
    pub major: u32,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// Server settings beyond the defaults (`NAME=VALUE`, each given as `-c`).
    settings: Vec<String>,
    child: Option<Child>,
}

pub fn postgres_bin() -> (PathBuf, u32) {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    majors.sort_unstable();
    let major = *majors
        .iter()
        .rev()
        .find(|m| Path::new(&format!("/usr/lib/postgresql/{m}/bin/initdb")).is_file())
        .expect("no PostgreSQL server: apt-get install postgresql");
    (
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        major,
    )
}

/// Where tests/fetch-postgres.sh keeps the PostgreSQL builds it fetched (never in the repository).
pub fn test_cache() -> PathBuf {
    PathBuf::from(
        std::env::var("BBR_TEST_CACHE").unwrap_or_else(|_| "/var/cache/bbr-runner-tests".into()),
    )
}

/// The installation (`bin`, `lib`, `share`) of PostgreSQL `major`: Debian's for 15, otherwise
/// the build tests/fetch-postgres.sh fetched (13, 14, 16, 17 from npm: server only; 18 from
/// PyPI: server and clients). Fails naming the script when it is missing or does not run.
pub fn postgres_install(major: u32) -> PathBuf {
    if major == 15 {
        let dir = PathBuf::from("/usr/lib/postgresql/15");
        assert!(
            dir.join("bin/initdb").is_file(),
            "no PostgreSQL 15 server: apt-get install postgresql"
        );
        return dir;
    }
    let dir = test_cache().join(format!("postgres-{major}"));
    let postgres = dir.join("bin/postgres");
    let version = Command::new(&postgres).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stdout)
            .starts_with(&format!("postgres (PostgreSQL) {major}."))),
        "PostgreSQL {major}'s server is missing or does not run ({}: {version:?}): run tests/fetch-postgres.sh (tests/run.sh does)",
        postgres.display()
    );
    dir
}

/// A directory of client tools (psql, pg_isready) that work with a server of `major`: Debian's
/// 15 up to 15, PostgreSQL 18's (fetched) above.
fn admin_clients(major: u32) -> PathBuf {
    if major <= 15 {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    } else {
        postgres_install(18).join("bin")
    }
}

/// A server's temp dir (0755): `data` and `run` (its socket, 0755), both owned by the server's
/// user.
fn server_dirs(prefix: &str, uid: u32, gid: u32) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    for d in [&data, &run] {
        std::fs::create_dir(d).expect("mkdir");
        chown(d, Some(uid), Some(gid)).expect("chown");
    }
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, data, run)
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(&[], &[])
    }

    /// A cluster whose server runs with `settings` (`NAME=VALUE`, each as `-c`) besides the
    /// defaults, after `files` (name, content) were written into its data directory, the server's
    /// user's and 0600 (a TLS key and certificate, a pg_hba.conf that keeps the `local` line).
    pub fn start_with(settings: &[&str], files: &[(&str, &[u8])]) -> Postgres {
        let (bin, major) = postgres_bin();
        Postgres::start_from(bin.clone(), bin, major, settings, files)
    }

    /// A cluster of PostgreSQL `major` (see `postgres_install`).
    pub fn start_major(major: u32) -> Postgres {
        Postgres::start_from(
            postgres_install(major).join("bin"),
            admin_clients(major),
            major,
            &[],
            &[],
        )
    }

    fn start_from(
        server_bin: PathBuf,
        bin: PathBuf,
        major: u32,
        settings: &[&str],
        files: &[(&str, &[u8])],
    ) -> Postgres {
        let (uid, gid) = system_user("postgres", "postgresql");
        let (dir, data, socket_dir) = server_dirs("bbr-pg-", uid, gid);
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "super-pw\n").expect("pw");
        chown(&pwfile, Some(uid), Some(gid)).expect("chown");
        let log = dir.path().join("log");
        output(
            Command::new(server_bin.join("initdb"))
                .args([
                    "--auth=scram-sha-256",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .arg("-D")
                .arg(&data)
                .uid(uid)
                .gid(gid),
        );
        let port = free_port();
        std::fs::File::create(&log).expect("log");
        chown(&log, Some(uid), Some(gid)).expect("chown");
        let mut pg = Postgres {
            _dir: dir,
            data,
            log,
            server_bin,
            bin,
            major,
            socket_dir,
            port,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        for (name, content) in files {
            pg.write_data_file(name, content);
        }
        pg.spawn();
        pg.sql(
            "postgres",
            &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
        );
        pg.sql(
            "postgres",
            &format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"),
        );
        if pg
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        {
            panic!("postgres exited");
        }
        pg
    }

    /// Writes `name` into the data directory, the server's user's and 0600 (a restart makes the
    /// server read it).
    pub fn write_data_file(&self, name: &str, content: &[u8]) {
        let (uid, gid) = system_user("postgres", "postgresql");
        let path = self.data.join(name);
        std::fs::write(&path, content).expect("write into the data directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        chown(&path, Some(uid), Some(gid)).expect("chown");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The socket file clients connect to.
    pub fn socket(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// Runs SQL as the superuser; returns unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        output(
            Command::new(self.bin.join("psql"))
                .env_clear()
                .envs(super::kept_env())
                .env("PGPASSWORD", "super-pw")
                .args([
                    "--no-psqlrc",
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    "postgres",
                ])
                .args([
                    "-h",
                    self.socket_dir.to_str().unwrap_or(""),
                    "-p",
                    &self.port.to_string(),
                    "-d",
                    db,
                    "-c",
                    sql,
                ]),
        )
    }

    /// psql as the application user on the application's database (no psqlrc, quiet).
    pub fn app_psql(&self) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.env_clear()
            .envs(super::kept_env())
            .env("PGPASSWORD", APP_PASSWORD)
            .args(["--no-psqlrc", "-X", "-q", "-U", APP_USER])
            .args([
                "-h",
                self.socket_dir.to_str().unwrap_or(""),
                "-p",
                &self.port.to_string(),
                "-d",
                APP_DB,
            ]);
        c
    }

    /// Makes `table` with `rows` rows of about 3 KiB each (`id`, `body`), for tests that need
    /// a dump or a restore lasting seconds. The bodies repeat, so PostgreSQL keeps them
    /// compressed (TOAST): a dump still writes about 3 KiB a row, while the table takes about
    /// 100 bytes a row on disk. (CI once ran out of disk with uncompressed tables of this size.)
    pub fn big_table(&self, table: &str, rows: u32) {
        self.app_sql(&format!(
            "CREATE TABLE {table} AS SELECT g AS id, repeat(md5(g::text), 96) AS body \
             FROM generate_series(1, {rows}) g"
        ));
    }

    /// As the application user (its tables are owned by it, as in a real deployment).
    pub fn app_sql(&self, sql: &str) -> String {
        output(
            self.app_psql()
                .args(["-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        )
    }

    /// Every row of `table`, ordered: what "the same data" means in the tests.
    pub fn content(&self, table: &str) -> String {
        self.app_sql(&format!("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) || ' ' || count(*) FROM {table} t"))
    }

    /// Stops the server (fast shutdown) and starts it again on the same data, socket and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the server again after `stop`.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Ends the server sessions named `application` (killing a client leaves its backend
    /// running until it notices).
    pub fn end_sessions(&self, application: &str) {
        self.sql(
            "postgres",
            &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{application}'"),
        );
    }

    /// A session of the app user, named `application`, holding an ACCESS EXCLUSIVE lock on
    /// `table` inside an open transaction until the returned child is killed and
    /// `end_sessions(application)` called; returns once the lock is granted.
    pub fn hold_lock(&self, table: &str, application: &str) -> Child {
        let child = self
            .app_psql()
            .env("PGAPPNAME", application)
            .arg("-c")
            .arg(format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql holding a lock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.app_sql(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{application}' AND l.mode = 'AccessExclusiveLock' AND l.granted"
        ))
        .trim()
        .parse::<i64>()
        .unwrap_or(0)
            == 0
        {
            assert!(std::time::Instant::now() < deadline, "the lock was never granted");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child
    }

    /// Starts the server on this cluster's data, socket and port, and waits until it answers.
    fn spawn(&mut self) {
        let (uid, gid) = system_user("postgres", "postgresql");
        let logfile = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(self.server_bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .uid(uid)
            .gid(gid)
            .stdout(logfile.try_clone().expect("log"))
            .stderr(logfile)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let isready = self.bin.join("pg_isready");
        let (sock, p) = (self.socket_dir.clone(), self.port);
        wait_until("postgres", &self.log, || {
            Command::new(&isready)
                .args(["-h", sock.to_str().unwrap_or(""), "-p", &p.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A MariaDB server: mariadb-install-db in a temp dir, socket in that dir, TCP on 127.0.0.1.
pub struct Mariadb {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Mariadb {
    pub fn start() -> Mariadb {
        Mariadb::start_with(&[])
    }

    /// A server started with `args` besides the defaults (`--ssl-cert=...`).
    pub fn start_with(args: &[String]) -> Mariadb {
        let (uid, gid) = system_user("mysql", "mariadb-server");
        for tool in [
            "/usr/bin/mariadb-install-db",
            "/usr/sbin/mariadbd",
            "/usr/bin/mariadb",
        ] {
            assert!(
                Path::new(tool).is_file(),
                "{tool} missing: apt-get install mariadb-server mariadb-client"
            );
        }
        let (dir, data, run) = server_dirs("bbr-mariadb-", uid, gid);
        // Each server its own tmpdir: bootstraps running side by side in a shared /tmp remove
        // each other's temporary tables ("Unknown table 'mysql.tmp_user_sys'"; 4 of 20 failed
        // with four at once, none with a tmpdir each).
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        chown(&tmp, Some(uid), Some(gid)).expect("chown tmp");
        output(
            Command::new("/usr/bin/mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=mysql",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display())),
        );
        let socket = run.join("mysqld.sock");
        let port = free_port();
        let log = dir.path().join("err.log");
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", run.join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .args([
                &format!("--port={port}"),
                "--bind-address=127.0.0.1",
                "--user=mysql",
                "--innodb-buffer-pool-size=32M",
                "--skip-log-bin",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let mut db = Mariadb {
            _dir: dir,
            socket,
            port,
            child: Some(child),
        };
        let sock = db.socket.clone();
        wait_until("mariadbd", &log, || {
            Command::new("/usr/bin/mariadb")
                .args([
                    "--no-defaults",
                    "-uroot",
                    &format!("--socket={}", sock.display()),
                    "-e",
                    "SELECT 1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        db.root_sql(&format!(
            "CREATE DATABASE {APP_DB}; CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'; CREATE USER '{APP_USER}'@'localhost' IDENTIFIED BY '{APP_PASSWORD}'; GRANT ALL ON {APP_DB}.* TO '{APP_USER}'@'%'; GRANT ALL ON {APP_DB}.* TO '{APP_USER}'@'localhost'; GRANT PROCESS ON *.* TO '{APP_USER}'@'%'; GRANT PROCESS ON *.* TO '{APP_USER}'@'localhost';"
        ));
        if db
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        {
            panic!("mariadbd exited");
        }
        db
    }

    pub fn root_sql(&self, sql: &str) -> String {
        output(Command::new("/usr/bin/mariadb").args([
            "--no-defaults",
            "-uroot",
            "-N",
            "-B",
            &format!("--socket={}", self.socket.display()),
            "-e",
            sql,
        ]))
    }

    pub fn app_sql(&self, sql: &str) -> String {
        output(
            Command::new("/usr/bin/mariadb")
                .env("MYSQL_PWD", APP_PASSWORD)
                .args([
                    "--no-defaults",
                    "-uacme",
                    "-N",
                    "-B",
                    &format!("--socket={}", self.socket.display()),
                    APP_DB,
                    "-e",
                    sql,
                ]),
        )
    }

    pub fn content(&self, table: &str) -> String {
        self.app_sql(&format!("SELECT * FROM {table} ORDER BY 1"))
    }

    /// A root session holding `LOCK TABLES table WRITE` (other sessions can neither read nor
    /// change it) until the returned child is killed, which ends the session and its lock;
    /// returns once the lock is granted (the session says so).
    pub fn hold_lock(&self, table: &str) -> Child {
        use std::io::BufRead;
        let mut child = Command::new("/usr/bin/mariadb")
            .args([
                "--no-defaults",
                "-uroot",
                "-N",
                "-B",
                // Each result written at once, not when the session ends.
                "--unbuffered",
                &format!("--socket={}", self.socket.display()),
                APP_DB,
                "-e",
                &format!("LOCK TABLES {table} WRITE; SELECT 'locked'; SELECT SLEEP(600);"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadb holding a lock");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "locked", "the lock was never granted");
        child
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
