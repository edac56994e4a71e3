//! The bpm backend: the rendered bpm.yml equals the committed one and passes bpm's rules; and
//! `bbr-runner run` delegating to bpm, shown against a **stand-in `bpm`** (a shell script named
//! as such) that records its argv and environment and plays each of bpm's pitfalls, or runs the
//! inner runner as vcap the way bpm's container would (same argv, only the `-e` environment).
//! Real bpm cannot run in CI: it is built from its Go source, which the project may neither commit
//! nor script. The stand-in prints what a bpm built from source printed here in each case
//! (docs/running.md, "Checked against real bpm").

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn rendered_bpm_yml_is_the_committed_template_and_passes_bpms_rules() {
    // bbr-acme-db: its two BBR actions. acme-api: its service only (the lock scripts are
    // native-only: monit's files are root's), with the job's store mounted by bpm.
    for (job, processes, first) in [("bbr-acme-db", 2, "backup"), ("acme-api", 1, "serve")] {
        let out = Command::new(runner())
            .current_dir(REPO)
            .args(["bpm", "render", job])
            .output()
            .expect("render");
        assert!(out.status.success(), "{}", text(&out));
        let committed = std::fs::read(
            Path::new(REPO)
                .join("jobs")
                .join(job)
                .join("templates/bpm.yml"),
        )
        .expect("committed bpm.yml");
        assert!(
            out.stdout == committed,
            "jobs/{job}/templates/bpm.yml differs from `bbr-runner bpm render {job}`: regenerate it with\n  bbr-runner bpm render {job} > jobs/{job}/templates/bpm.yml"
        );
        let parsed = bbr_bpm::BpmConfig::parse(&String::from_utf8_lossy(&committed))
            .expect("bpm.yml parses");
        let policy = bbr_bpm::Policy {
            allow_unsafe: false,
            allow_privileged: true,
            known_capabilities: bbr_runner::backend::bpm::known_capabilities(),
        };
        assert_eq!(
            bbr_bpm::validate::validate(&parsed, job, "/var/vcap", &policy),
            vec![]
        );
        assert_eq!(parsed.processes.len(), processes);
        assert_eq!(
            parsed.processes[0].args,
            ["run", job, first, "--inside-bpm"]
        );
        assert_eq!(parsed.processes[0].persistent_disk, job == "acme-api");
    }
}

struct Vm {
    dir: tempfile::TempDir,
}

impl Vm {
    /// A BOSH-like root with job `demo` whose backup profile is `profile_body`, bpm enabled or not.
    fn new(
        profile_body: &str,
        bpm_enabled: bool,
        with_bpm: bool,
        release_level_backup: bool,
    ) -> Vm {
        require_root();
        let (uid, gid) = vcap();
        let dir = tempfile::Builder::new()
            .prefix("bbr-bpm-")
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
                "job: demo\nrelease_level_backup: {release_level_backup}\nbpm_enabled: {bpm_enabled}\nprofiles_dir: {}\nvars:\n  MARK: {}/store/bbr-backup/demo/ran\n",
                profiles.display(),
                root.display()
            ),
            0o644,
            None,
        );
        write(
            &profiles.join("actions.yml"),
            "version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'echo ran > \"$0\"; env > \"$0.env\"', \"${MARK}\"]\n",
            0o644,
            None,
        );
        write(&profiles.join("backup.yml"), profile_body, 0o644, None);
        // The job's bpm.yml as BOSH renders it: the committed template is `bpm render`'s output.
        let rendered = Command::new(shared_bin().join("bbr-runner"))
            .args(["bpm", "render", "demo", "--profiles"])
            .arg(&profiles)
            .output()
            .expect("bpm render");
        if rendered.status.success() {
            write(
                &cfg.join("bpm.yml"),
                &String::from_utf8_lossy(&rendered.stdout),
                0o644,
                None,
            );
        }
        mkdir(&root.join("store/bbr-backup"), 0o755, None);
        mkdir(&root.join("store/bbr-backup/demo"), 0o755, None);
        let _ = (uid, gid);
        if with_bpm {
            support::bpm_stand_in::install(root, &shared_bin().join("bbr-runner"));
            write(&root.join("stand-in-mode"), "exit7", 0o644, None);
        }
        Vm { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn art(&self) -> PathBuf {
        self.root().join("store/bbr-backup/demo")
    }

    /// The job's bpm.yml without `unsafe`: bpm's default container, as a bpm.yml rendered by
    /// an older release asks (the runner inside is vcap, and bpm's filter refuses Landlock).
    fn default_container(&self) {
        let path = self.root().join("jobs/demo/config/bpm.yml");
        let rendered = std::fs::read_to_string(&path).expect("bpm.yml");
        let default = rendered.replace("  unsafe:\n    privileged: true\n", "");
        assert_ne!(
            default, rendered,
            "the rendered bpm.yml asked for privileged"
        );
        std::fs::write(&path, default).expect("bpm.yml");
    }

    fn mode(&self, m: &str) {
        std::fs::write(self.root().join("stand-in-mode"), m).expect("mode");
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.root().join("bpm-calls.log")).unwrap_or_default()
    }

    /// As BBR runs a script: root, no arguments, only BBR's variables (plus a secret in the
    /// caller's environment, to show it does not travel).
    fn run(&self) -> Output {
        self.command()
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run")
    }

    /// `bbr-runner run demo backup` as BBR starts it.
    fn command(&self) -> Command {
        let mut c = Command::new(shared_bin().join("bbr-runner"));
        c.env_clear()
            .envs(kept_env())
            .env(
                "BBR_ARTIFACT_DIRECTORY",
                format!("{}/", self.art().display()),
            )
            .env("PGPASSWORD", "caller-secret")
            .args([
                "run",
                "--root",
                &self.root().display().to_string(),
                "demo",
                "backup",
            ])
            .stdin(std::process::Stdio::null());
        c
    }

    fn ran(&self) -> bool {
        self.art().join("ran").is_file()
    }
}

const STRICT_TCP: &str = "version: 1\nabi: 7\nuser: vcap\nfilesystem:\n  execute: ['@system-bin', '@system-libs']\n  write: ['${BBR_ARTIFACT_DIRECTORY}']\nnetwork:\n  connect_tcp: [5432]\nenvironment:\n  pass: [BBR_ARTIFACT_DIRECTORY]\n";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn delegation_gives_bpm_the_exact_argv_and_only_bbrs_environment() {
    let vm = Vm::new(STRICT_TCP, true, true, true);
    let out = vm.run();
    assert_eq!(
        out.status.code(),
        Some(7),
        "the action's status under bpm is propagated\n{}",
        text(&out)
    );
    let calls = vm.calls();
    let art = vm.art().display().to_string();
    let bpm = vm.root().join("jobs/bpm/bin/bpm").display().to_string();
    assert!(calls.contains("ARGV pid demo -p backup\n"), "{calls}");
    assert!(
        calls.contains(&format!("ARGV run demo -p backup -v {art}:writable -v {}/sys/run/bbr-runner:mount_only -e BBR_ARTIFACT_DIRECTORY={art}/\n", vm.root().display())),
        "exact bpm run argv (artifact dir without its trailing slash, writable; the lock dir, the lifeline of a privileged container, read-only; only BBR's variable)\n{calls}"
    );
    assert!(
        !calls.contains("caller-secret") && !calls.contains("PGPASSWORD"),
        "no secret reaches bpm: {calls}"
    );
    let env: Vec<&str> = calls
        .split("ENV\n")
        .nth(2)
        .and_then(|e| e.split("END").next())
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with('_') && !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .collect();
    assert_eq!(
        env,
        [
            format!("BPM_BOSH_ROOT={}", vm.root().display()).as_str(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
        ],
        "bpm's environment is minimal"
    );
    assert!(
        stderr(&out).contains(&format!("backend bpm ({bpm})")),
        "{}",
        text(&out)
    );
}

/// A profile that only reads the artifact directory (a restore) gets it read-only, and bpm is
/// told not to chmod or chown it (`mount_only`): the action reads BBR's files, never writes them.
#[test]
fn an_artifact_directory_the_profile_only_reads_is_not_writable_under_bpm() {
    let read_only = STRICT_TCP.replace(
        "  write: ['${BBR_ARTIFACT_DIRECTORY}']\n",
        "  read: ['${BBR_ARTIFACT_DIRECTORY}']\n",
    );
    assert_ne!(read_only, STRICT_TCP);
    let vm = Vm::new(&read_only, true, true, true);
    let out = vm.run();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let calls = vm.calls();
    let art = vm.art().display().to_string();
    assert!(
        calls.contains(&format!(
            "ARGV run demo -p backup -v {art}:mount_only -v {}/sys/run/bbr-runner:mount_only -e BBR_ARTIFACT_DIRECTORY={art}/\n",
            vm.root().display()
        )),
        "read-only, neither chmod nor chown by bpm\n{calls}"
    );
}

/// A grant of the job's own store (a SQLite database in `store/JOB`): bpm refuses that path as a
/// volume, so the action cannot run under bpm; the runner says why and runs it natively (it
/// exited 2 with no fallback).
#[test]
fn a_grant_bpm_cannot_mount_means_the_next_backend_and_the_reason() {
    let vm = Vm::new(STRICT_TCP, true, true, true);
    let store = vm.root().join("store/demo");
    mkdir(&store, 0o755, None);
    let body = STRICT_TCP.replace(
        "  write: ['${BBR_ARTIFACT_DIRECTORY}']\n",
        &format!(
            "  write: ['${{BBR_ARTIFACT_DIRECTORY}}', '{}']\n",
            store.display()
        ),
    );
    assert_ne!(body, STRICT_TCP);
    std::fs::write(
        vm.root()
            .join("packages/bbr-runner/profiles/demo/backup.yml"),
        &body,
    )
    .expect("profile");
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("backend native (bpm cannot run this action:")
            && err.contains("cannot conflict with the job's default data or store directory"),
        "{err}"
    );
    assert!(!vm.calls().contains("ARGV run"), "bpm run was not called");
    // With bpm only, the same is a refusal that names the reason.
    std::fs::write(
        vm.root()
            .join("packages/bbr-runner/profiles/demo/backup.yml"),
        format!("{body}backends: [bpm]\n"),
    )
    .expect("profile");
    let out = vm.run();
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    assert!(stderr(&out).contains("cannot conflict"), "{}", text(&out));
}

/// bpm gives the job's `sys/run/JOB` to vcap on every run (the stand-in does as bpm does); a
/// link vcap plants there, where the runner's lock once lived, is never written through by the
/// next run as root: root's file is untouched.
#[test]
fn a_link_vcap_plants_in_the_run_dir_bpm_gave_it_is_not_followed_by_root() {
    let vm = Vm::new(STRICT_TCP, true, true, true);
    let out = vm.run();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let run_dir = vm.root().join("sys/run/demo");
    let meta = std::fs::metadata(&run_dir).expect("bpm made sys/run/demo");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        vcap().0,
        "the stand-in, as bpm, gave sys/run/demo to vcap"
    );
    let victim = vm.root().join("victim");
    write(&victim, "root's\n", 0o600, None);
    for name in ["bbr-runner-backup.lock", "demo.backup.lock", "backup.lock"] {
        let link = run_dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).expect("plant");
    }
    let out = vm.run();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "root's\n"
    );
    let meta = std::fs::metadata(&victim).expect("victim");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn bpm_exit_zero_with_failed_to_run_is_a_failure() {
    let vm = Vm::new(STRICT_TCP, true, true, true);
    vm.mode("failed-to-run");
    let out = vm.run();
    assert_eq!(out.status.code(), Some(122), "{}", text(&out));
    assert!(stderr(&out).contains("bpm failed before the action ran (bpm exit status 0): Error: failed to run job-process"), "{}", text(&out));
    assert!(!vm.ran());
}

#[test]
fn runc_failing_to_start_the_container_means_the_next_backend_not_the_actions_status() {
    // Seen with real bpm: runc could not give a privileged container the capabilities this
    // machine's root lacks. Nothing ran: the next backend runs it and says why.
    let vm = Vm::new(STRICT_TCP, true, true, true);
    vm.mode("runc-failed");
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("backend native (bpm could not start the container (bpm exit status 1)")
            && err.contains("runc run failed"),
        "{err}"
    );
    // With bpm alone it is a failure before the action (122), not the action's status.
    let vm = Vm::new(&format!("{STRICT_TCP}backends: [bpm]\n"), true, true, true);
    vm.mode("runc-failed");
    let out = vm.run();
    assert_eq!(out.status.code(), Some(122), "{}", text(&out));
    assert!(
        stderr(&out).contains("bpm could not start the container (bpm exit status 1)")
            && stderr(&out).contains("nothing ran"),
        "{}",
        text(&out)
    );
    assert!(!vm.ran());
}

#[test]
fn a_running_container_of_the_same_name_is_reported_not_accepted() {
    let vm = Vm::new(STRICT_TCP, true, true, true);
    vm.mode("running");
    // The running container's unfinished dump: the refusal must leave it alone (it removed it).
    let partial = vm.art().join(".partial-acme.dump");
    std::fs::write(&partial, "still being written").expect("plant");
    let out = vm.run();
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    assert!(
        stderr(&out).contains("already running (pid 4242)"),
        "{}",
        text(&out)
    );
    assert!(!vm.calls().contains("ARGV run"), "bpm run was not called");
    assert!(
        partial.exists(),
        "the running container's partial dump was removed:\n{}",
        text(&out)
    );
}

/// A strict profile runs inside bpm (issue 17, item 1): its rendered bpm.yml asks for
/// `unsafe.privileged`, bpm starts the runner as root with no seccomp filter (the stand-in, as
/// real bpm), and the runner applies its whole sandbox before the action: the action is vcap
/// with no capability, no_new_privs, the runner's seccomp filter, its own mount view (a
/// directory bpm mounts but the profile does not grant is not there), Landlock. The neighbour:
/// the artifact directory is written. The control: the same profile with the bpm.yml of bpm's
/// default container (no `unsafe`) is refused inside and runs natively.
#[test]
fn a_strict_profile_runs_inside_a_privileged_bpm_container_under_the_runners_whole_sandbox() {
    let body = STRICT_TCP.replace("filesystem:\n", "filesystem:\n  read: [/proc]\n");
    let vm = Vm::new(&body, true, true, true);
    let bpm_yml = vm.root().join("jobs/demo/config/bpm.yml");
    let rendered = std::fs::read_to_string(&bpm_yml).expect("bpm.yml");
    assert!(
        rendered.contains("  unsafe:\n    privileged: true\n"),
        "{rendered}"
    );
    vm.mode("inner");
    let other = vm.root().join("data/demo");
    std::fs::create_dir_all(&other).expect("data dir");
    std::fs::write(
        vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
        format!("version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'grep -E \"^(Uid|CapEff|NoNewPrivs|Seccomp):\" /proc/self/status > \"$0\"; if echo x > {}/x; then echo wrote-outside >> \"$0\"; fi', \"${{MARK}}\"]\n", other.display()),
    )
    .expect("actions");
    let out = vm.run();
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("inside bpm: applying its own namespaces (mount (its own view)")
            && err.contains("Landlock ABI 7")
            && err.contains("the drop to vcap")
            && err.contains("its own seccomp filter")
            && !err.contains("backend native ("),
        "{err}"
    );
    let seen = std::fs::read_to_string(vm.art().join("ran")).expect("the action wrote");
    let field = |name: &str| {
        seen.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), vcap().0.to_string(), "{seen}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{seen}");
    assert_eq!(field("NoNewPrivs:"), "1", "{seen}");
    assert_eq!(field("Seccomp:"), "2", "{seen}");
    assert!(!seen.contains("wrote-outside"), "{seen}");
    assert!(!other.join("x").exists());
    // The control: bpm's default container (the bpm.yml without `unsafe`).
    vm.default_container();
    std::fs::remove_file(vm.art().join("ran")).expect("rm");
    let out = vm.run();
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("inside bpm, refused:") && err.contains("backend native ("),
        "{err}"
    );
    let seen = std::fs::read_to_string(vm.art().join("ran")).expect("the action wrote");
    assert!(!seen.contains("wrote-outside"), "natively too: {seen}");
}

/// bpm adds TMPDIR, LANG, PATH and HOME to the container's environment; the runner inside
/// clears them: the action sees only what the profile passes or sets. Relaxed (`pass: [HOME]`):
/// bpm's HOME reaches the action, so it was there and the runner is what removed it.
#[test]
fn bpms_own_variables_do_not_reach_the_action() {
    let home = |vm: &Vm| format!("HOME={}/data/demo", vm.root().display());
    let vm = Vm::new(STRICT_TCP, true, true, true);
    vm.mode("inner");
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    let env = std::fs::read_to_string(vm.art().join("ran.env")).expect("env");
    for bpms in [home(&vm).as_str(), "LANG=en_US.UTF-8", "TMPDIR="] {
        assert!(!env.contains(bpms), "{bpms} reached the action:\n{env}");
    }
    let relaxed = STRICT_TCP.replace(
        "  pass: [BBR_ARTIFACT_DIRECTORY]",
        "  pass: [BBR_ARTIFACT_DIRECTORY, HOME]",
    );
    assert_ne!(relaxed, STRICT_TCP);
    let vm = Vm::new(&relaxed, true, true, true);
    vm.mode("inner");
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    let env = std::fs::read_to_string(vm.art().join("ran.env")).expect("env");
    assert!(
        env.contains(&home(&vm)),
        "relaxed: bpm's HOME passed\n{env}"
    );
}

/// The runner inside bpm stops the action at the profile's timeout (bpm itself has none): 124
/// comes back through bpm, and the inner runner says it timed out.
#[test]
fn the_runner_inside_bpm_enforces_the_timeout() {
    let vm = Vm::new(&format!("{STRICT_TCP}timeout: 1s\n"), true, true, true);
    vm.mode("inner");
    std::fs::write(
        vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
        "version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'echo ran > \"$0\"; exec sleep 600', \"${MARK}\"]\n",
    )
    .expect("actions");
    let out = vm.run();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(vm.ran(), "the action started: {}", text(&out));
    assert!(
        stderr(&out).contains("timed out after 1s"),
        "{}",
        text(&out)
    );
}

/// The host's pid of the `sleep MARKER` an action runs, if one is running.
fn sleeping(marker: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.first() == Some(&&b"sleep"[..]) && args.get(1) == Some(&marker.as_bytes()))
            .then_some(pid)
    })
}

/// A TERM, INT, HUP or QUIT to the runner while bpm runs the action reaches the action (through
/// bpm's process group, as runc forwards it into the container; here the stand-in's inner
/// runner), the runner waits until nothing of the run is left, says so, and exits 128+N. Before,
/// the runner died silently of the signal and the action went on.
#[test]
fn a_signal_to_the_runner_reaches_an_action_run_through_bpm() {
    use nix::sys::signal::Signal;
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let vm = Vm::new(STRICT_TCP, true, true, true);
        vm.mode("inner");
        // The action is found by its command line: in the runner's pid namespace inside the
        // container its own pid means nothing here.
        let marker = format!("600.{}{}", std::process::id(), sig as i32);
        std::fs::write(
            vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
            format!("version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'echo ran > \"$0\"; exec sleep {marker}', \"${{MARK}}\"]\n"),
        )
        .expect("actions");
        // The caller ignores INT and QUIT, as a background job of a non-interactive shell does
        // (how a run under load first lost the SIGINT): the runner must not pass that on.
        let mut command = vm.command();
        // SAFETY: between fork and exec, sigaction only.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                use nix::sys::signal::{signal, SigHandler};
                signal(Signal::SIGINT, SigHandler::SigIgn)?;
                signal(Signal::SIGQUIT, SigHandler::SigIgn)?;
                Ok(())
            });
        }
        let child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let action: i32 = loop {
            if let Some(pid) = vm
                .art()
                .join("ran")
                .exists()
                .then(|| sleeping(&marker))
                .flatten()
            {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{sig}: the action never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("kill");
        let mut child = child;
        let mut err_pipe = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut t = String::new();
            let _ = std::io::Read::read_to_string(&mut err_pipe, &mut t);
            t
        });
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let alive = sleeping(&marker).is_some();
        if alive {
            // Not left running after the test: the assertion below reports it.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(action), Signal::SIGKILL);
        }
        let err = reader.join().expect("stderr");
        assert!(
            !alive,
            "{sig}: the action (pid {action}) outlived the run: {err}"
        );
        assert_eq!(status.code(), Some(128 + sig as i32), "{sig}: {err}");
        assert!(
            err.contains(&format!(
                "the runner received {sig} and stopped the action (passed on to bpm's container"
            )),
            "{sig}: {err}"
        );
        // The runner inside said it too (bpm lived on: only runc got the signal, and bpm
        // reported the container's status): real bpm showed the same once the signal went to
        // runc alone (checked by hand).
        assert_eq!(
            err.matches(&format!("the runner received {sig} and stopped the action"))
                .count(),
            2,
            "{sig}: the runner inside said it too: {err}"
        );
        assert!(
            err.contains(&format!(
                "Error: failed to run job-process: exit status {} (exit status",
                128 + sig as i32
            )),
            "{sig}: bpm reported the container's status: {err}"
        );
    }
}

/// A profile that keeps a capability: its rendered bpm.yml asks for `unsafe.privileged`, the
/// runner inside starts as root and gives the action vcap and only that capability, and
/// `review` predicts it runs under bpm. The control: bpm's default container (a bpm.yml
/// without `unsafe`, as an older release rendered it) starts the runner as vcap, which cannot
/// keep a capability: the runner inside refuses, the action runs natively, the reason said.
/// A profile for another user than vcap is not rendered privileged (bpm gives the job's
/// directories to vcap): the runner inside refuses it, and `review` predicts that.
#[test]
fn a_profile_keeping_a_capability_runs_in_a_privileged_bpm_and_another_user_natively() {
    let with_proc = STRICT_TCP.replace("filesystem:\n", "filesystem:\n  read: [/proc]\n");
    for (body, uid, cap_eff, refusal) in [
        (
            format!("{with_proc}enforcement: best_effort\ncapabilities: [CAP_NET_BIND_SERVICE]\n"),
            vcap().0,
            "0000000000000400",
            "keeping capabilities needs the runner to start as root",
        ),
        (
            format!("{with_proc}capabilities: [CAP_NET_BIND_SERVICE]\n"),
            vcap().0,
            "0000000000000400",
            "keeping capabilities needs the runner to start as root",
        ),
    ] {
        let vm = Vm::new(&body, true, true, true);
        vm.mode("inner");
        std::fs::write(
            vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
            "version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'grep -E \"^(Uid|CapEff):\" /proc/self/status > \"$0\"', \"${MARK}\"]\n",
        )
        .expect("actions");
        let out = vm.run();
        assert!(out.status.success(), "{}", text(&out));
        assert!(!stderr(&out).contains("backend native ("), "{}", text(&out));
        let seen = std::fs::read_to_string(vm.art().join("ran")).expect("the action wrote");
        assert!(
            seen.contains(&format!("Uid:\t{uid}\t"))
                && seen.contains(&format!("CapEff:\t{cap_eff}")),
            "{seen}"
        );
        review_of_bpm_says(&vm, true, "privileged container");
        // The control: bpm's default container.
        vm.default_container();
        let out = vm.run();
        assert!(out.status.success(), "{}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains("inside bpm, refused:")
                && err.contains(refusal)
                && err.contains("backend native ("),
            "{err}"
        );
    }
    // Another user: rendered without `unsafe`, refused inside, native; review says so.
    let body = format!(
        "{}enforcement: best_effort\n",
        STRICT_TCP.replace("user: vcap", "user: root")
    );
    let vm = Vm::new(&body, true, true, true);
    vm.mode("inner");
    let rendered =
        std::fs::read_to_string(vm.root().join("jobs/demo/config/bpm.yml")).expect("bpm.yml");
    assert!(!rendered.contains("unsafe:"), "{rendered}");
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("inside bpm, refused:")
            && err.contains("switching to user `root` needs the runner to start as root")
            && err.contains("backend native ("),
        "{err}"
    );
    review_of_bpm_says(&vm, false, "cannot switch to user `root`");
}

/// `review --format json` of the job's backup profile: its bpm backend entry says that the
/// backend `runs` (or not), and why, in words that contain `why`.
fn review_of_bpm_says(vm: &Vm, runs: bool, why: &str) {
    let profile = vm
        .root()
        .join("packages/bbr-runner/profiles/demo/backup.yml");
    let review = Command::new(shared_bin().join("bbr-runner"))
        .args(["review", "--format", "json", "--var"])
        .arg(format!("BBR_ARTIFACT_DIRECTORY={}/", vm.art().display()))
        .arg(&profile)
        .output()
        .expect("review");
    let json: serde_json::Value =
        serde_json::from_slice(&review.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&review)));
    let bpm = json["profiles"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["backend"] == "bpm")
        .cloned()
        .expect("bpm backend");
    assert_eq!(bpm["runs"], runs, "{bpm}");
    assert!(
        bpm["why"].as_str().is_some_and(|w| w.contains(why)),
        "{bpm}"
    );
}

/// A container with no seccomp filter of its own (as bpm's `unsafe.privileged` gives, checked by
/// hand on a real bpm; the stand-in has none either): the runner inside applies its own filter
/// and says so, instead of claiming bpm's. The action's /proc/self/status shows the filter; the
/// runner inside had none (its parent, the stand-in, shows `Seccomp: 0`).
#[test]
fn inside_a_bpm_without_a_seccomp_filter_the_runner_applies_its_own() {
    let body = STRICT_TCP.replace("filesystem:\n", "filesystem:\n  read: [/proc]\n");
    assert_ne!(body, STRICT_TCP);
    let vm = Vm::new(&body, true, true, true);
    vm.mode("inner");
    std::fs::write(
        vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
        "version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'grep Seccomp: /proc/self/status > \"$0\"', \"${MARK}\"]\n",
    )
    .expect("actions");
    let out = vm.run();
    assert!(out.status.success(), "{}", text(&out));
    let seen = std::fs::read_to_string(vm.art().join("ran")).expect("the action wrote");
    assert_eq!(
        seen.split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"],
        "{seen}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("its own seccomp filter (bpm's container has none)")
            && !err
                .contains("bpm provides the mount view, the vcap identity and its seccomp filter"),
        "{err}"
    );
    // The control: the stand-in's own processes run with no filter.
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(
        own.contains("Seccomp:\t0"),
        "the test itself runs unfiltered: {own}"
    );
}

#[test]
fn when_the_inner_runner_cannot_enforce_a_strict_profile_the_next_backend_runs_and_says_why() {
    // A socket to expose needs a mount namespace, which vcap inside the container cannot make.
    let sock_dir = tempfile::Builder::new()
        .prefix("bbr-bpm-sock-")
        .tempdir()
        .expect("tempdir");
    mkdir(sock_dir.path(), 0o755, None);
    let sock = sock_dir.path().join("db.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let profile = format!("{STRICT_TCP}sockets: ['{}']\n", sock.display());
    let vm = Vm::new(&profile, true, true, true);
    vm.mode("inner");
    // With the bpm.yml `bpm render` gives (privileged), the runner inside makes the namespace.
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    assert!(!stderr(&out).contains("backend native ("), "{}", text(&out));
    std::fs::remove_file(vm.art().join("ran")).expect("rm");
    // In bpm's default container (a bpm.yml without `unsafe`) it cannot.
    vm.default_container();
    let out = vm.run();
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("inside bpm, refused:") && err.contains("mount namespace"),
        "{err}"
    );
    // Said once, and without a hint that cannot apply inside the container.
    assert!(!err.contains("refused: refused:"), "{err}");
    assert!(!err.contains("(run as root)"), "{err}");
    assert!(
        err.contains("cannot be made inside bpm's container"),
        "{err}"
    );
    assert!(
        err.contains("backend native (the runner inside bpm's container refused this profile"),
        "{err}"
    );
    assert!(vm.ran());
    // With bpm only, the same is a refusal.
    let vm = Vm::new(&format!("{profile}backends: [bpm]\n"), true, true, true);
    vm.mode("inner");
    vm.default_container();
    let out = vm.run();
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    assert!(!vm.ran());
}

#[test]
fn bpm_disabled_or_missing_means_native_and_the_runner_says_why() {
    let vm = Vm::new(STRICT_TCP, false, true, true);
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    assert!(
        stderr(&out)
            .contains("backend native (bpm is not enabled for this job (bpm.enabled: false))"),
        "{}",
        text(&out)
    );
    assert_eq!(vm.calls(), "", "bpm was not called");
    let vm = Vm::new(STRICT_TCP, true, false, true);
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    assert!(
        stderr(&out).contains("bpm is enabled but not installed"),
        "{}",
        text(&out)
    );
}

#[test]
fn release_level_backup_false_does_nothing_and_says_so() {
    let vm = Vm::new(STRICT_TCP, true, true, false);
    let out = vm.run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out)
            .contains("release_level_backup is false for job demo: this script is deactivated"),
        "{}",
        text(&out)
    );
    assert!(!vm.ran() && vm.calls().is_empty());
}

#[test]
fn two_runs_of_the_same_action_at_once_are_refused() {
    let vm = Vm::new(STRICT_TCP, false, false, true);
    let profiles = vm.root().join("packages/bbr-runner/profiles/demo");
    write(
        &profiles.join("actions.yml"),
        "version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'sleep 3; echo ran > \"$0\"', \"${MARK}\"]\n",
        0o644,
        None,
    );
    let first = Command::new(shared_bin().join("bbr-runner"))
        .env_clear()
        .envs(kept_env())
        .env("BBR_ARTIFACT_DIRECTORY", format!("{}/", vm.art().display()))
        .args([
            "run",
            "--root",
            &vm.root().display().to_string(),
            "demo",
            "backup",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("first run");
    let lock = vm.root().join("sys/run/bbr-runner/demo.backup.lock");
    support::wait_until(
        "the first run never took its lock",
        std::time::Duration::from_secs(10),
        || {
            !(std::fs::read_to_string(&lock)
                .map(|s| s.trim().is_empty())
                .unwrap_or(true))
        },
    );
    let second = vm.run();
    assert_eq!(second.status.code(), Some(121), "{}", text(&second));
    let err = stderr(&second);
    assert!(
        err.contains(&format!(
            "another `bbr-runner run demo backup` is running (pid {}",
            first.id()
        )),
        "{err}"
    );
    let first = first.wait_with_output().expect("first");
    assert!(
        first.status.success(),
        "the first run finishes: {}",
        text(&first)
    );
    assert!(vm.ran());
    // The neighbour: once the first has ended, the same action runs again.
    assert!(vm.run().status.success());
}

#[test]
fn temp_dirs_a_killed_run_left_are_removed_and_nothing_else() {
    let vm = Vm::new(STRICT_TCP, false, false, true);
    let tmp = vm.root().join("data/demo/tmp");
    let stale = tmp.join("backup-Xq3v9a");
    // As a killed action leaves them: its user's.
    mkdir(&stale, 0o700, Some(vcap()));
    write(&stale.join("client.key"), "secret", 0o600, Some(vcap()));
    for dir in ["restore-Pz81kd", "other"] {
        mkdir(&tmp.join(dir), 0o700, Some(vcap()));
    }
    std::fs::write(tmp.join("backup-notes.txt"), "a file, not a temp dir").expect("write");
    let out = vm.run();
    assert!(out.status.success() && vm.ran(), "{}", text(&out));
    assert!(!stale.exists(), "the backup's stale temp dir is gone");
    assert!(
        stderr(&out).contains(&format!(
            "removed {}, left by a run that was killed",
            stale.display()
        )),
        "{}",
        text(&out)
    );
    // Another action's temp dir, other directories and files stay.
    for kept in ["restore-Pz81kd", "other", "backup-notes.txt"] {
        assert!(tmp.join(kept).exists(), "{kept} was removed");
    }
}

/// A SIGKILL of the runner cannot be passed on to bpm's container. In a privileged container
/// the runner inside holds a lifeline, the outer runner's action lock (mounted read-only), and
/// stops the action once that lock is released: the action ends soon after the outer runner is
/// killed, and the next run works. The control: in bpm's default container (a best-effort
/// profile; the runner inside is vcap and cannot open root's lock) the same SIGKILL leaves the
/// action running, as seen with real bpm.
#[test]
fn a_sigkilled_runner_takes_the_action_in_a_privileged_bpm_container_with_it() {
    use nix::sys::signal::{kill, Signal};
    for (body, lifeline) in [
        (STRICT_TCP.to_string(), true),
        (format!("{STRICT_TCP}enforcement: best_effort\n"), false),
    ] {
        let vm = Vm::new(&body, true, true, true);
        vm.mode("inner");
        let marker = format!("700.{}{}", std::process::id(), u8::from(lifeline));
        std::fs::write(
            vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
            format!("version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'echo ran > \"$0\"; exec sleep {marker}', \"${{MARK}}\"]\n"),
        )
        .expect("actions");
        let mut outer = vm
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let action = loop {
            if let Some(pid) = sleeping(&marker) {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the action never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(!vm.calls().is_empty());
        kill(
            nix::unistd::Pid::from_raw(outer.id() as i32),
            Signal::SIGKILL,
        )
        .expect("kill");
        let _ = outer.wait();
        // Waits for the outcome (a deadline only turns a hang into a failure).
        let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while sleeping(&marker).is_some() && std::time::Instant::now() < gone_by {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let alive = sleeping(&marker).is_some();
        if alive {
            let _ = kill(nix::unistd::Pid::from_raw(action), Signal::SIGKILL);
        }
        if lifeline {
            assert!(!alive, "the action outlived the killed runner");
            // The neighbour: the next run of the same action works.
            std::fs::write(
                vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
                "version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'echo ran > \"$0\"', \"${MARK}\"]\n",
            )
            .expect("actions");
            let out = vm.run();
            assert!(out.status.success(), "{}", text(&out));
        } else {
            assert!(
                alive,
                "the control: without the lifeline the action runs on after the SIGKILL"
            );
        }
    }
}

/// The stand-in plays bpm's lifecycle lock as real bpm showed it: a `bpm run` holds it while the
/// container runs, so a `bpm stop` of the same process waits on it (seen by hand: `bpm stop`
/// blocked while an orphaned `bpm run` held it) and goes on once the run has ended; the
/// container itself does not hold it.
#[test]
fn the_stand_in_holds_bpms_lifecycle_lock_for_a_run_and_bpm_stop_waits_on_it() {
    let vm = Vm::new(STRICT_TCP, true, true, true);
    vm.mode("inner");
    std::fs::write(
        vm.root().join("packages/bbr-runner/profiles/demo/actions.yml"),
        "version: 1\njob: demo\nactions:\n  backup:\n    profile: backup.yml\n    command: [/bin/sh, -c, 'echo ran > \"$0\"; while [ ! -e \"$0.go\" ]; do sleep 0.1; done', \"${MARK}\"]\n",
    )
    .expect("actions");
    let run = vm
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    support::wait_until(
        "the action never started",
        std::time::Duration::from_secs(60),
        || vm.ran(),
    );
    let stop = Command::new(vm.root().join("jobs/bpm/bin/bpm"))
        .args(["stop", "demo", "-p", "backup"])
        .spawn()
        .expect("bpm stop");
    // Observable: the stop process waits in the kernel's file-lock wait.
    let waiting = |pid: u32| {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .chain([pid])
            .any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/wchan"))
                    .is_ok_and(|w| w.contains("lock"))
            })
    };
    support::wait_until(
        "bpm stop never waited on the lock",
        std::time::Duration::from_secs(60),
        || waiting(stop.id()),
    );
    // The run ends: the lock is free and the stop goes on.
    std::fs::write(vm.art().join("ran.go"), "").expect("go");
    let mut run = run;
    assert!(run.wait().expect("run").success());
    let mut stop = stop;
    assert!(stop.wait().expect("stop").success());
}
