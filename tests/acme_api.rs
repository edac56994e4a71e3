//! acme-api lock and unlock against a real monit (Debian's package) controlling the real
//! acme-api component, each run through `bbr-runner exec` under `profiles/acme-api/*.yml`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::monit::{acme_api_command, Monit, Service};
use support::*;

const PROFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles/acme-api");

struct Api {
    monit: Monit,
    port: u16,
    db: PathBuf,
    config_dir: PathBuf,
}

impl Api {
    fn start() -> Api {
        require_root();
        let (uid, gid) = vcap();
        let data = tempfile::Builder::new()
            .prefix("bbr-acme-api-")
            .tempdir()
            .expect("tempdir")
            .keep();
        mkdir(&data, 0o755, None);
        let store = data.join("store");
        mkdir(&store, 0o750, Some((uid, gid)));
        let config_dir = data.join("config");
        mkdir(&config_dir, 0o755, None);
        let db = store.join("acme.db");
        write(
            &config_dir.join("db.json"),
            &format!(
                r#"{{"adapter":"sqlite","bbr_runner":{{"sqlite_path":"{}"}}}}"#,
                db.display()
            ),
            0o640,
            Some((0, gid)),
        );
        let port = free_port();
        let api = acme_api_command();
        let monit = Monit::start(&[Service {
            name: "acme-api".into(),
            command: format!(
                "{} --config {} --listen 127.0.0.1:{port} --pidfile {{pidfile}}",
                api,
                config_dir.join("db.json").display()
            ),
            stop_grace_seconds: 10,
        }]);
        let a = Api {
            monit,
            port,
            db,
            config_dir,
        };
        a.wait_healthy();
        a.write_lock_config("acme-api", 30);
        a
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn healthy(&self) -> bool {
        ureq::get(&self.url("/health")).call().is_ok()
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "acme-api did not answer: {:?}",
                self.monit.status_text("acme-api")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write_lock_config(&self, process: &str, stop_timeout: u64) {
        let json = format!(
            r#"{{"process":"{process}","pidfile":"{}","health_url":"{}","stop_timeout_seconds":{stop_timeout},"start_timeout_seconds":30}}"#,
            self.monit.pidfile(process).display(),
            self.url("/health")
        );
        write(
            &self.config_dir.join("lock.json"),
            &json,
            0o640,
            Some((0, vcap().1)),
        );
    }

    fn items_in_db(&self) -> i64 {
        let c = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open");
        c.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .expect("count")
    }

    fn command(&self, action: &str, profile_action: &str) -> Command {
        self.command_with(action, profile_action, &self.monit, "acme-api")
    }

    /// `bbr-runner exec` of a lock action under its profile, as `run` would start it, with the
    /// runner's monit broker for `service` of `monit`.
    fn command_with(
        &self,
        action: &str,
        profile_action: &str,
        monit: &Monit,
        service: &str,
    ) -> Command {
        let mut c = Command::new(runner());
        c.env_clear()
            .envs(kept_env())
            .arg("exec")
            .arg(format!("--profile={PROFILES}/{profile_action}.yml"))
            .arg(format!("--var=BBR_RUNNER_DIR={}", shared_bin().display()))
            .arg(format!(
                "--var=JOB_CONFIG_DIR={}",
                self.config_dir.display()
            ))
            .arg(format!(
                "--monit-control-file={}",
                monit.control_file().display()
            ))
            .arg(format!("--monit-service={service}"))
            .arg(format!("--var=API_PORT={}", self.port))
            .arg(format!(
                "--var=API_RUN_DIR={}",
                monit.root().join("run").display()
            ))
            .arg("--");
        if action == "probe" {
            c.arg(shared_bin().join("bbr-runner")).arg("probe");
        } else {
            c.arg(shared_bin().join("bbr-runner"))
                .args(["acme-api", action, "--config"])
                .arg(self.config_dir.join("lock.json"));
        }
        c
    }

    fn lock(&self) -> Output {
        self.command("lock", "lock").output().expect("lock")
    }

    fn unlock(&self, after: Option<&str>) -> Output {
        let mut c = self.command("unlock", "unlock");
        if let Some(v) = after {
            c.env("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL", v);
        }
        c.output().expect("unlock")
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

#[test]
fn after_lock_no_item_is_stored_and_after_unlock_writes_succeed_again() {
    let api = Api::start();
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, stored, url) = (stop.clone(), stored.clone(), api.url("/items"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if ureq::post(&url).send(format!("item {n}")).is_ok() {
                    stored.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    while stored.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = api.lock();
    ok(&out);
    assert!(
        stderr(&out).contains("acme-api stopped in"),
        "{}",
        text(&out)
    );
    let at_lock = api.items_in_db();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(api.items_in_db(), at_lock, "no item is stored while locked");
    assert!(!api.healthy());
    let out = api.unlock(Some("true"));
    ok(&out);
    assert!(
        stderr(&out).contains("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL=true"),
        "{}",
        text(&out)
    );
    assert!(api.healthy(), "unlock returns once the API answers");
    let after_unlock = stored.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored.load(Ordering::Relaxed) < after_unlock + 10 {
        assert!(Instant::now() < deadline, "writes did not resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(api.items_in_db() > at_lock);
}

#[test]
fn unlock_five_times_without_a_lock_succeeds_and_the_service_runs_once() {
    let api = Api::start();
    let pid = api.monit.pid("acme-api").expect("pid");
    for i in 0..5 {
        let out = api.unlock(if i % 2 == 0 { Some("false") } else { None });
        ok(&out);
    }
    assert_eq!(
        api.monit.pid("acme-api"),
        Some(pid),
        "the same process still runs"
    );
    let running = Command::new("pgrep")
        .args([
            "-c",
            "-f",
            &format!("acme-api serve --config {}", api.config_dir.display()),
        ])
        .output()
        .expect("pgrep");
    assert_eq!(
        String::from_utf8_lossy(&running.stdout).trim(),
        "1",
        "exactly one acme-api"
    );
    // Lock twice: the second finds it stopped, which is success.
    ok(&api.lock());
    let out = api.lock();
    ok(&out);
    assert!(stderr(&out).contains("already stopped"), "{}", text(&out));
    ok(&api.unlock(Some("false")));
}

#[test]
fn without_monit_lock_and_unlock_fail_clearly() {
    let api = Api::start();
    api.monit.quit();
    let out = api.lock();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("monit does not answer") && stderr(&out).contains("is monit running"),
        "{}",
        text(&out)
    );
    let out = api.unlock(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("unlock of acme-api failed"),
        "{}",
        text(&out)
    );
    // monit back: unlock works (monit restarts the service itself, unlock just confirms).
    api.monit.start_daemon();
    ok(&api.unlock(None));
}

#[test]
fn a_process_that_ignores_term_fails_the_lock_after_its_deadline_and_monit_still_stops_it() {
    let api = Api::start();
    let stubborn = Monit::start(&[Service {
        name: "stubborn".into(),
        command: "sh -c 'trap \"\" TERM; echo $$ > {pidfile}; while true; do sleep 0.1; done'"
            .into(),
        stop_grace_seconds: 4,
    }]);
    let json = format!(
        r#"{{"process":"stubborn","pidfile":"{}","health_url":"http://127.0.0.1:1/","stop_timeout_seconds":1,"start_timeout_seconds":5}}"#,
        stubborn.pidfile("stubborn").display()
    );
    write(
        &api.config_dir.join("lock.json"),
        &json,
        0o640,
        Some((0, vcap().1)),
    );
    let pid = stubborn.pid("stubborn").expect("pid");
    // The stubborn service's monit has its own control file and port.
    let mut c = api.command_with("lock", "lock", &stubborn, "stubborn");
    let out = c.output().expect("lock");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("stubborn did not stop within 1s")
            && msg.contains("monit's last status")
            && msg.contains(&format!("process {pid} is still running")),
        "{msg}"
    );
    // That it gave up at its own deadline is what it says above ("did not stop within 1s"),
    // not a measured time: no timing assertion.
    // monit's stop program escalates to KILL after its grace; nothing we did broke that.
    stubborn.wait_status("stubborn", "Not monitored", Duration::from_secs(20));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the stubborn process is gone"
    );
}

/// `bbr-runner probe OP...` as vcap with no sandbox: the control for a denial.
fn unsandboxed_vcap_probe(op: &[&str]) -> Output {
    as_vcap(shared_bin().join("bbr-runner"))
        .arg("probe")
        .args(op)
        .output()
        .expect("probe")
}

#[test]
fn the_lock_runs_as_vcap_and_reaches_only_the_apis_port_not_monit_nor_the_data() {
    let api = Api::start();
    let probe = |op: &[&str]| {
        api.command("probe", "lock")
            .args(op)
            .output()
            .expect("probe")
    };
    let denied = |op: &[&str], errno: &str| {
        // The same operation by the same user without the sandbox works...
        ok(&unsandboxed_vcap_probe(op));
        // ...and the sandbox refuses it.
        let out = probe(op);
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(errno),
            "{op:?}: {}",
            text(&out)
        );
    };
    // monit's HTTP interface: only the runner's root side talks to it (Landlock's port rule
    // from ABI 4; below, the lock's network namespace has only the API's forwarded port).
    denied(
        &["connect-tcp", &format!("127.0.0.1:{}", api.monit.port)],
        if bbr_runner::kernel::landlock_abi().1 >= 4 {
            "errno EACCES"
        } else {
            "errno ECONNREFUSED"
        },
    );
    // The API's data, which vcap owns: not in the action's view at all.
    denied(
        &["read-file", &api.db.display().to_string()],
        "errno ENOENT",
    );
    // The neighbours: the API's port, the pidfile.
    ok(&probe(&["connect-tcp", &format!("127.0.0.1:{}", api.port)]));
    ok(&probe(&[
        "list-dir",
        &api.monit.root().join("run").display().to_string(),
    ]));
    let status = probe(&["status"]);
    let (vcap_uid, _) = vcap();
    let s = String::from_utf8_lossy(&status.stdout);
    assert!(
        s.contains("CapEff:\t0000000000000000") && s.contains(&format!("Uid:\t{vcap_uid}\t")),
        "{}",
        text(&status)
    );
}

#[test]
fn the_lock_asks_monit_through_the_runner_for_its_own_service_only_and_never_sees_the_password() {
    let api = Api::start();
    let probe = |op: &[&str]| {
        api.command("probe", "lock")
            .args(op)
            .output()
            .expect("probe")
    };
    // The broker answers for the granted service...
    let out = probe(&["broker", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok status=0 monitor=1"),
        "{}",
        text(&out)
    );
    // ...and has no way to name another, nor any other request.
    for request in ["restart", "stop other", "unmonitor"] {
        let out = probe(&["broker", request]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("unknown request"),
            "{request}: {}",
            text(&out)
        );
    }
    // monit's password is nowhere in the action's environment; the channel's number is.
    let out = probe(&["env"]);
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains("BBR_RUNNER_MONIT_FD="), "{}", text(&out));
    assert!(!env.contains("pw4monit"), "{env}");
    // Without the broker the action has no way to monit: a clear error, not a hang.
    let out = Command::new(runner())
        .env_clear()
        .envs(kept_env())
        .args(["probe", "broker", "status"])
        .output()
        .expect("probe");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BBR_RUNNER_MONIT_FD is not set"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_api_stores_items_in_postgresql() {
    require_root();
    let pg = support::db::Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("db.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"username":"{}","password":"{}","host":"{}","port":{},"database":"{}","adapter":"postgres"}}"#,
            support::db::APP_USER,
            support::db::APP_PASSWORD,
            pg.socket_dir.display(),
            pg.port,
            support::db::APP_DB
        ),
    )
    .expect("config");
    let port = free_port();
    let mut child = Command::new(shared_bin().join("bbr-runner"))
        .args(["acme-api", "serve"])
        .arg("--config")
        .arg(&config)
        .arg(format!("--listen=127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("acme-api");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("{base}/health")).call().is_err() {
        assert!(
            Instant::now() < deadline && child.try_wait().expect("wait").is_none(),
            "acme-api did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for name in ["alpha", "beta"] {
        let r = ureq::post(&format!("{base}/items"))
            .send(format!(r#"{{"name":"{name}"}}"#))
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    let body = ureq::get(&format!("{base}/items"))
        .call()
        .expect("get")
        .body_mut()
        .read_to_string()
        .expect("body");
    assert_eq!(body, r#"[{"id":1,"name":"alpha"},{"id":2,"name":"beta"}]"#);
    assert_eq!(
        pg.app_sql("SELECT string_agg(name, ',' ORDER BY id) FROM items")
            .trim(),
        "alpha,beta"
    );
    assert_eq!(
        ureq::get(&format!("{base}/nope"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| match e {
                ureq::Error::StatusCode(c) => c,
                _ => 0,
            }),
        404
    );
    let _ = child.kill();
    let _ = child.wait();
}
