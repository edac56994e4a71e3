//! End to end: both jobs rendered into a BOSH-like root, a real PostgreSQL and a real monit
//! running acme-api (which keeps writing), and BBR's backup and restore workflows driven
//! exactly as BBR runs the scripts (see `support/vm.rs`).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::db::{Postgres, APP_DB, APP_PASSWORD, APP_USER};
use support::vm::{backup, restore, Vm};
use support::*;

fn properties(pg: &Postgres) -> BTreeMap<&'static str, serde_json::Value> {
    let database = json!({"scheme": "postgres", "user": APP_USER, "password": APP_PASSWORD,
        "host": pg.socket_dir.display().to_string(), "port": pg.port, "name": APP_DB});
    BTreeMap::from([
        (
            "bbr-acme-db",
            json!({"release_level_backup": true, "database": database.clone()}),
        ),
        (
            "acme-api",
            json!({"release_level_backup": true, "database": database, "lock": {"stop_timeout_seconds": 30}}),
        ),
    ])
}

/// A client posting items continuously while the test runs.
struct Writer {
    stop: Arc<AtomicBool>,
    stored: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(port: u16) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let stored = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), stored.clone());
        let handle = std::thread::spawn(move || {
            let url = format!("http://127.0.0.1:{port}/items");
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                if ureq::post(&url).send(format!("item {i}")).is_ok() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Writer {
            stop,
            stored,
            handle: Some(handle),
        }
    }

    fn wait_for_more(&self, n: u64) {
        let target = self.stored.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.stored.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "writes did not happen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn items(pg: &Postgres) -> String {
    pg.content("items")
}

#[test]
fn backup_and_restore_through_the_rendered_jobs_give_back_the_backed_up_data() {
    require_root();
    vcap();
    let pg = Postgres::start();
    let vm = Vm::boot(&properties(&pg));
    let writer = Writer::start(vm.api_port);
    writer.wait_for_more(20);

    let mut at_backup = String::new();
    let report = backup(&vm, || at_backup = items(&pg));
    assert!(!report.failed, "{}", report.summary());
    for (job, script) in [
        ("acme-api", "pre-backup-lock"),
        ("bbr-acme-db", "backup"),
        ("acme-api", "post-backup-unlock"),
    ] {
        let ran = report.ran(job, script);
        assert_eq!(
            ran.len(),
            1,
            "{job} {script} ran once\n{}",
            report.summary()
        );
        assert!(ran[0].output.status.success());
    }
    let unlock = String::from_utf8_lossy(
        &report.ran("acme-api", "post-backup-unlock")[0]
            .output
            .stderr,
    )
    .into_owned();
    assert!(
        unlock.contains("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL=true"),
        "{unlock}"
    );
    let backup_err =
        String::from_utf8_lossy(&report.ran("bbr-acme-db", "backup")[0].output.stderr).into_owned();
    assert!(
        backup_err.contains("backend native (bpm is not enabled"),
        "the runner says which backend ran and why: {backup_err}"
    );
    let artifact = &report.artifacts["bbr-acme-db"];
    assert!(
        artifact.files.contains_key("./manifest.json")
            && artifact
                .files
                .keys()
                .any(|k| k.starts_with("./acme-db.dir/")),
        "{:?}",
        artifact.files.keys()
    );
    assert!(
        !report.artifacts.contains_key("acme-api"),
        "acme-api has no backup script"
    );

    // After unlock the API serves and stores again, so the data moves on from the backup.
    writer.wait_for_more(20);
    assert_ne!(items(&pg), at_backup);
    // Then the writer stops and the data is damaged in ways a restore that did nothing could
    // not hide: rows deleted, rows changed, and a table the backup holds dropped.
    drop(writer);
    pg.app_sql(
        "DELETE FROM items WHERE id % 3 = 0; UPDATE items SET name = 'damaged' WHERE id % 5 = 0",
    );
    pg.app_sql("CREATE TABLE audit (id int); INSERT INTO audit VALUES (1)");
    assert_ne!(items(&pg), at_backup);
    pg.app_sql("DROP TABLE items");

    let report = restore(&vm, &report.artifacts);
    assert!(!report.failed, "{}", report.summary());
    for (job, script) in [
        ("acme-api", "pre-restore-lock"),
        ("bbr-acme-db", "restore"),
        ("acme-api", "post-restore-unlock"),
    ] {
        let ran = report.ran(job, script);
        assert_eq!(
            ran.len(),
            1,
            "{job} {script} ran once\n{}",
            report.summary()
        );
        assert_eq!(ran[0].output.status.code(), Some(0), "{job} {script}");
    }
    assert!(vm.healthy(), "unlocked after restore");
    // Nothing writes now: the items are exactly the backed-up ones.
    assert_eq!(
        items(&pg),
        at_backup,
        "the restore gave back the backed-up rows, all of them"
    );
    // A table created after the backup stays (as the SDK's restore keeps it).
    assert_eq!(pg.app_sql("SELECT count(*) FROM audit").trim(), "1");
}

#[test]
fn a_backup_that_fails_midway_still_unlocks_and_keeps_no_artifact() {
    require_root();
    vcap();
    let pg = Postgres::start();
    pg.big_table("big", 100_000);
    let mut props = properties(&pg);
    // One custom-format file, so that "midway" is a file growing past 4 KiB.
    support::bosh::merge(
        props.get_mut("bbr-acme-db").expect("job"),
        &json!({"backup": {"jobs": 1}}),
    );
    let vm = Vm::boot(&props);
    let writer = Writer::start(vm.api_port);
    writer.wait_for_more(10);
    // Midway: once the dump has started writing, pg_dump is killed.
    let partial = vm.artifact_dir("bbr-acme-db").join(".partial-acme-db.dump");
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 4096 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::process::Command::new("pkill")
            .args(["-KILL", "-f", &partial.display().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    });
    let report = backup(&vm, || {});
    assert!(killer.join().expect("killer"), "pg_dump was killed midway");
    assert!(report.failed, "{}", report.summary());
    let backup_out = &report.ran("bbr-acme-db", "backup")[0].output;
    assert_eq!(backup_out.status.code(), Some(1), "{}", text(backup_out));
    assert!(
        String::from_utf8_lossy(&backup_out.stderr).contains("pg_dump"),
        "{}",
        text(backup_out)
    );
    assert_eq!(
        report.left_in_artifact_dirs["bbr-acme-db"],
        Vec::<String>::new(),
        "nothing is left that looks like an artifact"
    );
    assert!(
        report.artifacts.is_empty(),
        "BBR drains nothing after a failed backup"
    );
    let unlock = &report.ran("acme-api", "post-backup-unlock");
    assert_eq!(unlock.len(), 1, "unlock still ran\n{}", report.summary());
    assert!(unlock[0].output.status.success());
    assert!(
        String::from_utf8_lossy(&unlock[0].output.stderr)
            .contains("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL=false"),
        "{}",
        text(&unlock[0].output)
    );
    assert!(vm.healthy());
    writer.wait_for_more(10);
}

#[test]
fn the_demo_runs_the_whole_cycle_and_verifies_the_restored_data() {
    require_root();
    let keep = tempfile::Builder::new()
        .prefix("bbr-demo-test-")
        .tempdir()
        .expect("tempdir");
    let root = keep.path().join("root");
    let out = std::process::Command::new(runner())
        .args(["demo", "--keep", "--dir", &root.display().to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    for want in [
        "acme-api/bin/bbr/pre-backup-lock: ok",
        "bbr-acme-db/bin/bbr/backup: ok",
        "acme-api/bin/bbr/post-backup-unlock: ok",
        "BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL=true",
        "bbr-acme-db/bin/bbr/restore: ok",
        "restored data verified: 10 items, identical to the backup",
        "acme-api answers again: yes",
        "bbr-acme-db/backup.yml: runs as vcap with no capabilities",
        &format!("Kept the BOSH-like root for inspection: {}", root.display()),
    ] {
        assert!(stdout.contains(want), "missing `{want}`:\n{stdout}");
    }
    assert!(
        root.join("jobs/bbr-acme-db/bin/bbr/backup").is_file(),
        "--keep leaves the root"
    );
    // Without root, it says what it needs and what it can show.
    let (uid, gid) = vcap();
    let copy = shared_bin().join("bbr-runner");
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
            "--",
        ])
        .arg(&copy)
        .arg("demo")
        .output()
        .expect("demo as vcap");
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bbr-runner demo needs root"),
        "{}",
        text(&out)
    );
}

#[test]
fn when_bbrs_connection_is_gone_every_script_finishes_its_work_and_cleans_up() {
    require_root();
    vcap();
    let on = json!({"release_level_backup": true, "lock": {"stop_timeout_seconds": 30}});
    let props = BTreeMap::from([("bbr-acme-db", on.clone()), ("acme-api", on)]);
    let vm = Vm::boot(&props);
    let api = format!("http://127.0.0.1:{}", vm.api_port);
    for i in 0..5 {
        ureq::post(&format!("{api}/items"))
            .send(format!("item-{i}"))
            .expect("post");
    }
    let list = || {
        ureq::get(&format!("{api}/items"))
            .call()
            .expect("get")
            .body_mut()
            .read_to_string()
            .expect("body")
    };
    let at_backup = list();
    // Every script's stderr is a pipe whose reader has closed, as when BBR or its SSH session
    // went away: each write fails with EPIPE. Before, the first message killed the runner.
    vm.stderr_lost_after.set(Some(0));
    let report = backup(&vm, || {});
    assert!(!report.failed, "{}", report.summary());
    for r in &report.ran {
        assert_eq!(r.output.status.code(), Some(0), "{} {}", r.job, r.script);
    }
    assert!(
        report.artifacts["bbr-acme-db"]
            .files
            .contains_key("./manifest.json"),
        "the backup finished and published its manifest"
    );
    assert!(vm.healthy(), "unlocked");
    vm.stderr_lost_after.set(None);
    ureq::post(&format!("{api}/items"))
        .send("after the backup")
        .expect("post");
    assert_ne!(list(), at_backup);
    // Midway this time: each script's first 40 bytes of stderr are read, then the reader is gone.
    vm.stderr_lost_after.set(Some(40));
    let restored = restore(&vm, &report.artifacts);
    assert!(!restored.failed, "{}", restored.summary());
    assert_eq!(restored.ran.len(), 3, "lock, restore, unlock ran");
    assert!(vm.healthy(), "unlocked after restore");
    assert_eq!(
        list(),
        at_backup,
        "the restore finished: the data is the backup's"
    );
}

/// With `bpm.enabled` for both jobs (the STAND-IN bpm, support/bpm_stand_in.rs): monit starts
/// and stops acme-api with `bpm start/stop acme-api -p serve` (the rendered monit file), the API
/// runs in a privileged container under the runner's own sandbox, the lock and unlock stop and
/// start it through monit, and the backup and restore run inside bpm; the data comes back.
#[test]
fn with_bpm_enabled_the_api_is_a_bpm_process_and_the_cycle_runs_inside_bpm() {
    require_root();
    vcap();
    let pg = Postgres::start();
    let mut props = properties(&pg);
    for job in ["bbr-acme-db", "acme-api"] {
        support::bosh::merge(
            props.get_mut(job).expect("job"),
            &json!({"bpm": {"enabled": true}}),
        );
    }
    let vm = Vm::boot(&props);
    let calls = || std::fs::read_to_string(vm.root().join("bpm-calls.log")).unwrap_or_default();
    assert!(
        calls().contains("ARGV start acme-api -p serve\n"),
        "monit started the API through bpm: {}",
        calls()
    );
    assert!(vm.root().join("sys/run/bpm/acme-api/serve.pid").is_file());
    let serve_log = std::fs::read_to_string(vm.root().join("sys/log/acme-api/serve.stderr.log"))
        .unwrap_or_default();
    assert!(
        serve_log.contains("inside bpm: applying its own namespaces"),
        "{serve_log}"
    );
    let writer = Writer::start(vm.api_port);
    writer.wait_for_more(10);
    let mut at_backup = String::new();
    let report = backup(&vm, || at_backup = items(&pg));
    assert!(!report.failed, "{}", report.summary());
    assert!(
        calls().contains("ARGV stop acme-api -p serve\n"),
        "the lock stopped the API through monit and bpm: {}",
        calls()
    );
    let backup_err =
        String::from_utf8_lossy(&report.ran("bbr-acme-db", "backup")[0].output.stderr).into_owned();
    assert!(
        backup_err.contains("backend bpm (")
            && backup_err.contains("inside bpm: applying its own namespaces")
            && !backup_err.contains("backend native"),
        "{backup_err}"
    );
    writer.wait_for_more(10);
    drop(writer);
    assert_ne!(items(&pg), at_backup, "the data changed after the backup");
    let report = restore(&vm, &report.artifacts);
    assert!(!report.failed, "{}", report.summary());
    let restore_err =
        String::from_utf8_lossy(&report.ran("bbr-acme-db", "restore")[0].output.stderr)
            .into_owned();
    assert!(
        restore_err.contains("inside bpm: applying its own namespaces")
            && !restore_err.contains("backend native"),
        "{restore_err}"
    );
    assert_eq!(
        items(&pg),
        at_backup,
        "the restore gave back the backed-up rows"
    );
    vm.wait_healthy(Duration::from_secs(60));
}
