//! The escape suite, root side: what `bbr-runner run` does as root in places the action's user
//! (vcap) can write, each with a link (or hard link) planted there as vcap could, and the
//! victim shown untouched; each next to the same run without the plant, which succeeds.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

/// A BOSH-like root with job `demo`, whose backup runs `COMMAND` as vcap with write on the
/// artifact directory and the job's tmp dir. `victim` is root's directory with root's file.
struct Vm {
    dir: tempfile::TempDir,
}

const PROFILE: &str = "version: 1\nabi: 7\nuser: vcap\nfilesystem:\n  execute: ['@system-bin', '@system-libs']\n  write: ['${BBR_ARTIFACT_DIRECTORY}', '${JOB_TMP_DIR}']\nenvironment:\n  pass: [BBR_ARTIFACT_DIRECTORY]\n";

impl Vm {
    fn new(command: &str) -> Vm {
        Vm::with_profile(command, PROFILE)
    }

    fn with_profile(command: &str, profile: &str) -> Vm {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("bbr-root-side-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        mkdir(root, 0o755, None);
        let cfg = root.join("jobs/demo/config");
        mkdir(&cfg, 0o755, None);
        let profiles = root.join("packages/bbr-runner/profiles/demo");
        mkdir(&profiles, 0o755, None);
        write(
            &cfg.join("bbr-runner.yml"),
            &format!(
                "job: demo\nrelease_level_backup: true\nprofiles_dir: {}\n",
                profiles.display()
            ),
            0o644,
            None,
        );
        write(
            &profiles.join("actions.yml"),
            &format!("version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, '{command}']\n"),
            0o644,
            None,
        );
        write(&profiles.join("backup.yml"), profile, 0o644, None);
        mkdir(&root.join("store/bbr-backup"), 0o755, None);
        mkdir(&root.join("store/bbr-backup/demo"), 0o755, None);
        mkdir(&root.join("sys/run"), 0o755, None);
        // As bpm leaves them: the job's run and data dirs belong to vcap.
        mkdir(&root.join("sys/run/demo"), 0o755, Some(vcap()));
        mkdir(&root.join("data"), 0o755, None);
        mkdir(&root.join("data/demo"), 0o755, Some(vcap()));
        mkdir(&root.join("victim"), 0o755, None);
        write(&root.join("victim/file"), "root's own\n", 0o644, None);
        mkdir(&root.join("victim/backup-keep"), 0o755, None);
        Vm { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn run_with_artifact(&self, art: &str) -> Output {
        Command::new(shared_bin().join("bbr-runner"))
            .env_clear()
            .envs(kept_env())
            .env("BBR_ARTIFACT_DIRECTORY", art)
            .args([
                "run",
                "--root",
                &self.root().display().to_string(),
                "demo",
                "backup",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run")
    }

    fn run(&self) -> Output {
        self.run_with_artifact(&format!("{}/", self.p("store/bbr-backup/demo").display()))
    }

    /// The victim as it was made: same owner, mode, content and entries.
    fn assert_victim_untouched(&self) {
        let v = self.p("victim");
        let meta = std::fs::metadata(&v).expect("victim");
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755), "victim dir");
        let f = std::fs::metadata(v.join("file")).expect("victim file");
        assert_eq!((f.uid(), f.mode() & 0o7777), (0, 0o644), "victim file");
        assert_eq!(
            std::fs::read_to_string(v.join("file")).expect("read"),
            "root's own\n"
        );
        let mut names: Vec<String> = std::fs::read_dir(&v)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["backup-keep", "file"], "victim entries");
    }
}

/// As vcap: a symbolic link at `link` to `target`.
fn plant_link(target: &Path, link: &Path) {
    let out = as_vcap("ln")
        .arg("-s")
        .arg(target)
        .arg(link)
        .output()
        .expect("ln");
    assert!(
        out.status.success(),
        "vcap plants {}: {}",
        link.display(),
        text(&out)
    );
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn the_lock_is_not_written_through_a_link_vcap_planted_in_sys_run_job() {
    let vm = Vm::new("exit 0");
    // Where the lock lived before: sys/run/JOB, which bpm gives to vcap.
    plant_link(
        &vm.p("victim/file"),
        &vm.p("sys/run/demo/bbr-runner-backup.lock"),
    );
    plant_link(&vm.p("victim/file"), &vm.p("sys/run/demo/demo.backup.lock"));
    let out = vm.run();
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    vm.assert_victim_untouched();
    // The lock is root's, in root's own directory, which vcap cannot write.
    let lock =
        std::fs::symlink_metadata(vm.p("sys/run/bbr-runner/demo.backup.lock")).expect("lock");
    assert!(lock.is_file() && lock.uid() == 0 && lock.mode() & 0o077 == 0);
    let dir = std::fs::symlink_metadata(vm.p("sys/run/bbr-runner")).expect("lock dir");
    assert!(dir.is_dir() && dir.uid() == 0 && dir.mode() & 0o777 == 0o700);
    let out = as_vcap("ln")
        .args(["-s", "/x"])
        .arg(vm.p("sys/run/bbr-runner/y"))
        .output()
        .expect("ln");
    assert!(!out.status.success(), "vcap cannot plant in the lock dir");
}

#[test]
fn a_lock_dir_or_lock_file_that_is_a_link_is_refused_and_its_target_untouched() {
    let vm = Vm::new("exit 0");
    std::os::unix::fs::symlink(vm.p("victim"), vm.p("sys/run/bbr-runner")).expect("ln");
    let out = vm.run();
    assert_eq!(code(&out), Some(121), "{}", text(&out));
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    vm.assert_victim_untouched();

    let vm = Vm::new("exit 0");
    mkdir(&vm.p("sys/run/bbr-runner"), 0o700, None);
    std::os::unix::fs::symlink(
        vm.p("victim/file"),
        vm.p("sys/run/bbr-runner/demo.backup.lock"),
    )
    .expect("ln");
    let out = vm.run();
    assert_eq!(code(&out), Some(121), "{}", text(&out));
    vm.assert_victim_untouched();

    // A hard link (root's file with two names) is refused too.
    let vm = Vm::new("exit 0");
    mkdir(&vm.p("sys/run/bbr-runner"), 0o700, None);
    std::fs::hard_link(
        vm.p("victim/file"),
        vm.p("sys/run/bbr-runner/demo.backup.lock"),
    )
    .expect("hard link");
    let out = vm.run();
    assert_eq!(code(&out), Some(121), "{}", text(&out));
    assert!(text(&out).contains("one name"), "{}", text(&out));
    vm.assert_victim_untouched();

    // A lock dir vcap could write is refused.
    let vm = Vm::new("exit 0");
    mkdir(&vm.p("sys/run/bbr-runner"), 0o700, Some(vcap()));
    let out = vm.run();
    assert_eq!(code(&out), Some(121), "{}", text(&out));
    assert!(text(&out).contains("not root"), "{}", text(&out));
}

/// Only the artifact directory: the job's tmp dir is not granted, but it is swept anyway.
const ARTIFACT_ONLY: &str = "version: 1\nabi: 7\nuser: vcap\nfilesystem:\n  execute: ['@system-bin', '@system-libs']\n  write: ['${BBR_ARTIFACT_DIRECTORY}']\nenvironment:\n  pass: [BBR_ARTIFACT_DIRECTORY]\n";

#[test]
fn the_tmp_sweep_does_not_follow_a_tmp_dir_vcap_replaced_by_a_link() {
    let vm = Vm::with_profile("exit 0", ARTIFACT_ONLY);
    // data/demo is vcap's: vcap makes data/demo/tmp a link to root's directory, where a
    // directory named like a stale private temp dir of the action (`backup-keep`) waits.
    plant_link(&vm.p("victim"), &vm.p("data/demo/tmp"));
    let out = vm.run();
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("not sweeping the job's tmp dir"),
        "{}",
        text(&out)
    );
    vm.assert_victim_untouched();
    // The neighbour: in a real tmp dir, a stale private dir is swept, another is kept.
    std::fs::remove_file(vm.p("data/demo/tmp")).expect("rm link");
    mkdir(&vm.p("data/demo/tmp/backup-stale"), 0o700, Some(vcap()));
    mkdir(&vm.p("data/demo/tmp/restore-other"), 0o700, Some(vcap()));
    let out = vm.run();
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    assert!(
        !vm.p("data/demo/tmp/backup-stale").exists(),
        "{}",
        text(&out)
    );
    assert!(vm.p("data/demo/tmp/restore-other").exists());
}

#[test]
fn the_tmp_dir_is_not_chowned_through_a_link() {
    let vm = Vm::new("exit 0");
    plant_link(&vm.p("victim"), &vm.p("data/demo/tmp"));
    let out = vm.run();
    assert_eq!(code(&out), Some(2), "{}", text(&out));
    assert!(text(&out).contains("symlink"), "{}", text(&out));
    vm.assert_victim_untouched();
    // The neighbour: a real tmp dir is given to vcap, 0700.
    std::fs::remove_file(vm.p("data/demo/tmp")).expect("rm link");
    let out = vm.run();
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let tmp = std::fs::metadata(vm.p("data/demo/tmp")).expect("tmp");
    assert_eq!((tmp.uid(), tmp.mode() & 0o777), (vcap().0, 0o700));
}

#[test]
fn partial_cleanup_removes_a_planted_link_not_what_it_points_to() {
    // The action (vcap) plants `.partial-x` -> root's directory, then fails.
    let vm = Vm::new("ln -s \"$0\" \"$BBR_ARTIFACT_DIRECTORY/.partial-x\"; exit 1");
    // The shell gets the victim's path as $0.
    let actions = vm.p("packages/bbr-runner/profiles/demo/actions.yml");
    let text_ = std::fs::read_to_string(&actions).expect("actions");
    std::fs::write(
        &actions,
        text_.replace(
            "exit 1']",
            &format!("exit 1', '{}']", vm.p("victim").display()),
        ),
    )
    .expect("write actions");
    let out = vm.run();
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("removed any partial artifact"),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::symlink_metadata(vm.p("store/bbr-backup/demo/.partial-x")).is_err(),
        "the link itself is removed"
    );
    vm.assert_victim_untouched();
}

#[test]
fn an_artifact_directory_not_where_bbr_puts_it_is_refused_and_not_chowned() {
    let vm = Vm::new("exit 0");
    for art in [
        vm.p("victim").display().to_string(),
        format!("{}/", vm.p("victim").display()),
        format!("{}/store/bbr-backup/../../victim/", vm.root().display()),
        format!("{}/store/bbr-backup/", vm.root().display()),
    ] {
        let out = vm.run_with_artifact(&art);
        assert_eq!(code(&out), Some(2), "{art}: {}", text(&out));
        assert!(
            text(&out).contains("store/bbr-backup/NAME/"),
            "{}",
            text(&out)
        );
        vm.assert_victim_untouched();
    }
    // A link in store/bbr-backup (root's, so planted by root or a broken tool) is refused.
    std::os::unix::fs::symlink(vm.p("victim"), vm.p("store/bbr-backup/linked")).expect("ln");
    let out = vm.run_with_artifact(&format!("{}/", vm.p("store/bbr-backup/linked").display()));
    assert_eq!(code(&out), Some(2), "{}", text(&out));
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    vm.assert_victim_untouched();
    // The neighbour: BBR's own directory is given to vcap, its parent is not touched.
    let out = vm.run();
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let art = std::fs::metadata(vm.p("store/bbr-backup/demo")).expect("art");
    assert_eq!((art.uid(), art.mode() & 0o777), (vcap().0, 0o700));
    let parent = std::fs::metadata(vm.p("store/bbr-backup")).expect("parent");
    assert_eq!((parent.uid(), parent.mode() & 0o777), (0, 0o755));
}

#[test]
fn acme_apis_ctl_does_not_write_its_logs_or_pidfile_through_links() {
    let vm = support::vm::Vm::boot(&std::collections::BTreeMap::new());
    let log_dir = vm.root().join("sys/log/acme-api");
    // Stop the API, then leave the log directory as an older release (or bpm) left it: vcap's,
    // with links vcap planted in place of the logs.
    let out = vm.monit(&["stop", "acme-api"]);
    assert!(out.status.success(), "{}", text(&out));
    support::wait_until(
        "acme-api did not stop",
        std::time::Duration::from_secs(30),
        || !vm.healthy(),
    );
    let victim_dir = vm.root().join("root-only");
    mkdir(&victim_dir, 0o700, None);
    write(&victim_dir.join("existing"), "root's own\n", 0o600, None);
    let created = victim_dir.join("created-by-root");
    std::os::unix::fs::chown(&log_dir, Some(vcap().0), Some(vcap().1)).expect("chown");
    for name in ["acme-api.stdout.log", "acme-api.stderr.log"] {
        let _ = std::fs::remove_file(log_dir.join(name));
    }
    plant_link(&created, &log_dir.join("acme-api.stdout.log"));
    // The pidfile's directory too, with the pidfile a link to where root must not write.
    let run_dir = vm.root().join("sys/run/acme-api");
    std::os::unix::fs::chown(&run_dir, Some(vcap().0), Some(vcap().1)).expect("chown");
    let _ = std::fs::remove_file(run_dir.join("acme-api.pid"));
    let pid_target = victim_dir.join("pid-by-root");
    plant_link(&pid_target, &run_dir.join("acme-api.pid"));
    plant_link(
        &victim_dir.join("existing"),
        &log_dir.join("acme-api.stderr.log"),
    );
    let out = vm.monit(&["start", "acme-api"]);
    assert!(out.status.success(), "{}", text(&out));
    vm.wait_healthy(std::time::Duration::from_secs(60));
    assert!(!created.exists(), "root created a file through vcap's link");
    assert!(
        !pid_target.exists(),
        "root wrote the pidfile through vcap's link"
    );
    let run = std::fs::metadata(&run_dir).expect("run dir");
    assert_eq!((run.uid(), run.mode() & 0o777), (0, 0o755));
    assert_eq!(
        std::fs::read_to_string(victim_dir.join("existing")).expect("victim"),
        "root's own\n",
        "root appended through vcap's link"
    );
    // The neighbour: the logs are root's own regular files in root's directory, and the API's
    // output reaches them.
    let dir = std::fs::metadata(&log_dir).expect("log dir");
    assert_eq!((dir.uid(), dir.mode() & 0o777), (0, 0o755));
    for name in ["acme-api.stdout.log", "acme-api.stderr.log"] {
        let m = std::fs::symlink_metadata(log_dir.join(name)).expect("log");
        assert!(m.is_file() && m.uid() == 0 && m.nlink() == 1, "{name}");
    }
    // ctl stop signals only what start started: a pid vcap wrote while the pidfile's directory
    // was its own (root's process here) is not signalled.
    let out = vm.monit(&["stop", "acme-api"]);
    assert!(out.status.success(), "{}", text(&out));
    support::wait_until(
        "acme-api did not stop",
        std::time::Duration::from_secs(60),
        || !vm.healthy(),
    );
    let mut victim = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("root's process");
    std::os::unix::fs::chown(&run_dir, Some(vcap().0), Some(vcap().1)).expect("chown");
    let _ = std::fs::remove_file(run_dir.join("acme-api.pid"));
    write(
        &run_dir.join("acme-api.pid"),
        &victim.id().to_string(),
        0o644,
        Some(vcap()),
    );
    let out = Command::new(vm.root().join("jobs/acme-api/bin/ctl"))
        .arg("stop")
        .output()
        .expect("ctl stop");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("is not acme-api's runner"),
        "{}",
        text(&out)
    );
    assert!(
        victim.try_wait().expect("wait").is_none(),
        "root's process was signalled"
    );
    let _ = victim.kill();
    let _ = victim.wait();
}

#[test]
fn a_root_directory_renamed_to_the_tmp_dir_is_neither_swept_nor_given_away() {
    let vm = Vm::new("exit 0");
    // A root-owned directory in data/demo (vcap's): vcap can rename it to `tmp`.
    let theirs = vm.p("data/demo/roots");
    mkdir(&theirs, 0o755, None);
    write(&theirs.join("conf"), "root's\n", 0o644, None);
    mkdir(&theirs.join("backup-keep"), 0o755, None);
    let out = as_vcap("mv")
        .arg(&theirs)
        .arg(vm.p("data/demo/tmp"))
        .output()
        .expect("mv");
    assert!(out.status.success(), "vcap renames it: {}", text(&out));
    let out = vm.run();
    assert_eq!(code(&out), Some(122), "{}", text(&out));
    assert!(
        text(&out).contains("not an empty directory root just made"),
        "{}",
        text(&out)
    );
    let tmp = std::fs::metadata(vm.p("data/demo/tmp")).expect("tmp");
    assert_eq!(
        (tmp.uid(), tmp.mode() & 0o777),
        (0, 0o755),
        "not given to vcap"
    );
    assert!(
        vm.p("data/demo/tmp/backup-keep").is_dir(),
        "root's directory not swept"
    );
    assert!(vm.p("data/demo/tmp/conf").is_file());
}
