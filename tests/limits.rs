//! `limits.processes` and `limits.memory` bound the action, not its user: run for real through
//! `bbr-runner exec` as root, where the machine has the pids and memory controllers (cgroup v1
//! on the test machine; v2's file layout is unit-tested in `runner/src/cgroup/tests.rs`).
//! Each limit is shown to hold (the over-limit attempt fails), next to the neighbour that
//! succeeds under it and the same attempt succeeding with the limit removed from the profile;
//! the crowded-user case next to its control: the old RLIMIT_NPROC alone failing.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Where the test machine mounts the v1 controllers; the run's cgroups are below `bbr-runner`.
const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory"];

struct Fx {
    _dir: tempfile::TempDir,
    root: PathBuf,
    art: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        require_root();
        let (uid, gid) = vcap();
        let dir = tempfile::Builder::new()
            .prefix("bbr-limits-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        mkdir(&root, 0o755, None);
        mkdir(&root.join("store/bbr-backup"), 0o755, None);
        let art = root.join("store/bbr-backup/acme");
        mkdir(&art, 0o700, Some((uid, gid)));
        Fx {
            _dir: dir,
            root,
            art,
        }
    }

    /// A strict profile as vcap with `limits` (YAML lines, indented by two) and nothing else
    /// relaxed: the runner's copy executable, the artifact directory writable.
    fn profile(&self, name: &str, limits: &str) -> PathBuf {
        let path = self.root.join(format!("{name}.yml"));
        let text = format!(
            "version: 1\nabi: 7\nenforcement: strict\nuser: vcap\n\
             filesystem:\n  read: [\"@locale\", \"@name-service\", \"@proc\"]\n  \
             execute: [\"@system-bin\", \"@system-libs\", \"{bin}\"]\n  \
             write: [\"@devices\", \"${{BBR_ARTIFACT_DIRECTORY}}\"]\n\
             network:\n  connect_tcp: []\n  bind_tcp: []\n\
             limits:\n  core_file_size: \"0\"\n{limits}\
             environment:\n  set:\n    PATH: /usr/sbin:/usr/bin:/sbin:/bin\n    ART: \"${{BBR_ARTIFACT_DIRECTORY}}\"\n\
             timeout: 5m\nkill_grace: 1s\n",
            bin = shared_bin().display()
        );
        write(&path, &text, 0o644, None);
        path
    }

    fn args(&self, profile: &Path, cmd: &[&str]) -> Vec<String> {
        let mut args = vec![
            "exec".to_string(),
            "--profile".into(),
            profile.display().to_string(),
            "--var".into(),
            format!("BBR_ARTIFACT_DIRECTORY={}/", self.art.display()),
            "--".into(),
        ];
        args.extend(cmd.iter().map(|c| c.to_string()));
        args
    }

    fn sh(&self, profile: &Path, script: &str) -> Output {
        let args = self.args(profile, &["/bin/sh", "-c", script]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_runner(&args, &[])
    }

    fn probe(&self, profile: &Path, op: &[&str]) -> Output {
        let runner = shared_bin().join("bbr-runner").display().to_string();
        let mut cmd = vec![runner.as_str(), "probe"];
        cmd.extend_from_slice(op);
        let args = self.args(profile, &cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_runner(&args, &[])
    }

    /// The runner in the background (for the tests that watch a run while it lasts).
    fn spawn_sh(&self, profile: &Path, script: &str) -> Child {
        Command::new(runner())
            .args(self.args(profile, &["/bin/sh", "-c", script]))
            .env_clear()
            .envs(kept_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bbr-runner")
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `what` to hold, up to a deadline far above any healthy run.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Many vcap processes elsewhere on the machine, as other BOSH jobs: killed when dropped.
struct Crowd(Vec<Child>);

impl Crowd {
    fn of(n: usize) -> Crowd {
        let (uid, gid) = vcap();
        let children = (0..n)
            .map(|_| {
                Command::new("/bin/sleep")
                    .arg("1000")
                    .uid(uid)
                    .gid(gid)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn sleep as vcap")
            })
            .collect();
        Crowd(children)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Processes (and threads) of `uid` on the machine: what RLIMIT_NPROC counts.
fn tasks_of(uid: u32) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                == Some(uid.to_string().as_str())
        })
        .count()
}

/// The cgroups of the runner with this pid (`LABEL.PID.START` below each `bbr-runner`).
fn cgroups_of(runner_pid: u32) -> Vec<PathBuf> {
    let mark = format!(".{runner_pid}.");
    HIERARCHIES
        .iter()
        .filter_map(|h| std::fs::read_dir(Path::new(h).join("bbr-runner")).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| e.file_name().to_string_lossy().contains(&mark))
        .map(|e| e.path())
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead: it only waits for its parent to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s[s.rfind(')')? + 1..]
                .split_whitespace()
                .next()
                .map(|st| st != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn a_crowded_vcap_does_not_stop_an_action_limited_per_action() {
    let fx = Fx::new();
    let (uid, gid) = vcap();
    let _crowd = Crowd::of(300);
    assert!(
        tasks_of(uid) >= 300,
        "the crowd runs: {} vcap tasks",
        tasks_of(uid)
    );
    let limited = fx.profile("limited", "  processes: 64\n  memory: 256M\n");
    // Forks a few times, shows its rlimits and the cgroups it is in.
    let out = fx.sh(
        &limited,
        "for i in 1 2 3 4 5; do /bin/true; done; echo nproc=$(ulimit -p) as=$(ulimit -v); \
         grep -c ':/bbr-runner/' /proc/self/cgroup",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = stdout(&out);
    // Neither RLIMIT_NPROC nor RLIMIT_AS: the limits are the cgroups' (pids and memory).
    assert!(
        seen.contains(" as=unlimited\n") && !seen.contains("nproc=64 "),
        "{}",
        text(&out)
    );
    assert!(
        seen.ends_with("\n2\n"),
        "in the pids and memory cgroups: {}",
        text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("notice"),
        "{}",
        text(&out)
    );

    // The control: what the runner did before, RLIMIT_NPROC = 64 for vcap, cannot even exec.
    let control = Command::new("prlimit")
        .args(["--nproc=64:64", "setpriv"])
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
        .args([
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            "/bin/true && echo ran",
        ])
        .env_clear()
        .envs(kept_env())
        .stdin(Stdio::null())
        .output()
        .expect("prlimit");
    assert!(!control.status.success(), "{}", text(&control));
    assert!(!stdout(&control).contains("ran"), "{}", text(&control));
    assert!(
        String::from_utf8_lossy(&control.stderr).contains("Resource temporarily unavailable"),
        "{}",
        text(&control)
    );
}

/// Starts 200 background sleeps, counting each one started in `$ART/count`.
const FORK_BOMB: &str = "i=0; while [ $i -lt 200 ]; do /bin/sleep 1000 & i=$((i+1)); \
                         echo $i > \"$ART/count\"; done; echo all-started";

fn started(fx: &Fx) -> u32 {
    std::fs::read_to_string(fx.art.join("count"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_fork_bomb_is_stopped_by_processes() {
    let fx = Fx::new();
    let limited = fx.profile("limited", "  processes: 64\n");
    let out = fx.sh(&limited, FORK_BOMB);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!stdout(&out).contains("all-started"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Cannot fork"),
        "{}",
        text(&out)
    );
    let n = started(&fx);
    assert!(n > 0 && n < 64, "{n} started");

    // Relaxed: the same action without `processes` starts them all (and the supervisor kills
    // them when the action ends).
    let _ = std::fs::remove_file(fx.art.join("count"));
    let relaxed = fx.profile("relaxed", "");
    let out = fx.sh(&relaxed, FORK_BOMB);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("all-started"), "{}", text(&out));
    assert_eq!(started(&fx), 200);
}

#[test]
fn an_allocation_over_memory_is_killed() {
    let fx = Fx::new();
    let limited = fx.profile("limited", "  memory: 64M\n");
    let over = fx.probe(&limited, &["alloc", "256"]);
    // The cgroup's OOM killer, not a refused mapping (RLIMIT_AS would answer ENOMEM).
    assert_eq!(over.status.code(), Some(128 + 9), "{}", text(&over));
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("killed by SIGKILL"),
        "{}",
        text(&over)
    );
    let under = fx.probe(&limited, &["alloc", "16"]);
    assert_eq!(stdout(&under), "ok 16 MiB\n", "{}", text(&under));

    let relaxed = fx.profile("relaxed", "");
    let out = fx.probe(&relaxed, &["alloc", "256"]);
    assert_eq!(stdout(&out), "ok 256 MiB\n", "{}", text(&out));
}

#[test]
fn the_cgroup_is_removed_after_the_run_and_after_the_runner_is_killed() {
    let fx = Fx::new();
    let limited = fx.profile("limited", "  processes: 64\n  memory: 256M\n");
    let quick = |what: &str| {
        let out = fx.sh(&limited, "true");
        assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out));
    };

    // A run that waits for `go`: its cgroups exist while it lasts, hold it, and are gone after.
    let go = fx.art.join("go");
    let mut a = fx.spawn_sh(
        &limited,
        "echo $$ > \"$ART/a-started\"; while [ ! -e \"$ART/go\" ]; do /bin/sleep 0.05; done",
    );
    // The whole line, not just the file: `echo $$ > FILE` creates it empty first (under load the
    // test read "" there and found no such pid).
    wait_for("run A to start", || {
        std::fs::read_to_string(fx.art.join("a-started")).is_ok_and(|t| t.ends_with('\n'))
    });
    let a_cgroups = cgroups_of(a.id());
    assert_eq!(a_cgroups.len(), 2, "one per hierarchy: {a_cgroups:?}");
    let action: String = std::fs::read_to_string(fx.art.join("a-started")).expect("pid");
    // The action wrote its pid in its own pid namespace; cgroup.procs shows host pids.
    let ns_pid = |host: &str| {
        std::fs::read_to_string(format!("/proc/{host}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("NSpid:"))
                    .and_then(|l| l.split_whitespace().last().map(str::to_string))
            })
            .unwrap_or_default()
    };
    for cg in &a_cgroups {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("procs");
        assert!(
            procs.lines().any(|p| ns_pid(p) == action.trim()),
            "{cg:?}: {procs}"
        );
    }
    // Another run meanwhile leaves the live run's cgroups alone.
    quick("a run next to A");
    assert!(a_cgroups.iter().all(|c| c.exists()), "{a_cgroups:?}");
    std::fs::write(&go, "").expect("go");
    assert!(a.wait().expect("wait A").success());
    assert!(a_cgroups.iter().all(|c| !c.exists()), "{a_cgroups:?}");
    std::fs::remove_file(&go).expect("rm go");

    // A runner killed by SIGKILL cannot remove its cgroups. What the action left (a background
    // sleep) dies with it: the pid namespace's init gets the parent-death signal, and the
    // kernel kills the rest of the namespace. The next run removes the emptied cgroups.
    let mut b = fx.spawn_sh(
        &limited,
        "/bin/sleep 1000 & echo $! > \"$ART/leftover\"; wait",
    );
    wait_for("run B to start", || {
        std::fs::read_to_string(fx.art.join("leftover")).is_ok_and(|s| s.ends_with('\n'))
    });
    let b_cgroups = cgroups_of(b.id());
    assert_eq!(b_cgroups.len(), 2, "{b_cgroups:?}");
    let leftover_ns = std::fs::read_to_string(fx.art.join("leftover")).expect("leftover");
    let procs = std::fs::read_to_string(b_cgroups[0].join("cgroup.procs")).expect("procs");
    let leftover: i32 = procs
        .lines()
        .find(|p| ns_pid(p) == leftover_ns.trim())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the leftover {leftover_ns} in {procs}"));
    assert!(alive(leftover), "the leftover runs while its runner does");
    b.kill().expect("SIGKILL the runner");
    b.wait().expect("wait B");
    assert!(b_cgroups.iter().all(|c| c.exists()), "stale: {b_cgroups:?}");
    wait_for("the leftover to die with its runner", || !alive(leftover));

    quick("the run after the killed one");
    assert!(b_cgroups.iter().all(|c| !c.exists()), "{b_cgroups:?}");
}

/// `file_size`: a write beyond it ends the writer with SIGXFSZ; under it, and with the limit
/// removed, the same write succeeds.
#[test]
fn a_file_over_file_size_is_refused() {
    let fx = Fx::new();
    let limited = fx.profile("fsize", "  file_size: 1M\n");
    let over = fx.sh(&limited, "head -c 2000000 /dev/zero > \"$ART/big\"");
    assert_eq!(
        over.status.code(),
        Some(128 + 25),
        "SIGXFSZ\n{}",
        text(&over)
    );
    let under = fx.sh(&limited, "head -c 500000 /dev/zero > \"$ART/small\"");
    assert!(under.status.success(), "{}", text(&under));
    let relaxed = fx.profile("fsize-off", "");
    let out = fx.sh(&relaxed, "head -c 2000000 /dev/zero > \"$ART/big\"");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(fx.art.join("big")).map(|m| m.len()).ok(),
        Some(2_000_000)
    );
}

/// `cpu_seconds`: a loop that needs more CPU time than that is killed (CPU time, not
/// wall time: load on the machine changes when, not whether); a short one runs; without the
/// limit the long one finishes.
#[test]
fn a_loop_over_cpu_seconds_is_stopped() {
    let fx = Fx::new();
    let long = "i=0; while [ $i -lt 4000000 ]; do i=$((i+1)); done; echo done";
    let limited = fx.profile("cpu", "  cpu_seconds: 1\n");
    let out = fx.sh(&limited, long);
    // soft = hard: the kernel checks the hard limit first and sends SIGKILL (not SIGXCPU).
    assert_eq!(out.status.code(), Some(128 + 9), "SIGKILL\n{}", text(&out));
    let out = fx.sh(&limited, "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); done");
    assert!(out.status.success(), "{}", text(&out));
    let relaxed = fx.profile("cpu-off", "");
    let out = fx.sh(&relaxed, long);
    assert_eq!(stdout(&out), "done\n", "{}", text(&out));
}

/// `group` and `supplementary_groups` set the action's gid and groups (`id` inside), next to
/// the default: the user's primary group and no supplementary group.
#[test]
fn group_and_supplementary_groups_are_the_actions() {
    let fx = Fx::new();
    let gid_of = |name: &str| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
            .unwrap_or_else(|| panic!("group {name}: groupadd {name}"))
    };
    let (_, vcap_gid) = vcap();
    let default = fx.profile("groups-default", "");
    let out = fx.sh(&default, "id -g; id -G");
    assert_eq!(
        stdout(&out),
        format!("{vcap_gid}\n{vcap_gid}\n"),
        "{}",
        text(&out)
    );
    let path = fx.profile("groups", "");
    let text_of = std::fs::read_to_string(&path).expect("profile");
    let with = text_of.replacen(
        "user: vcap\n",
        "user: vcap\ngroup: nogroup\nsupplementary_groups: [vcap]\n",
        1,
    );
    std::fs::write(&path, with).expect("write");
    let out = fx.sh(&path, "id -g; id -G");
    let nogroup = gid_of("nogroup");
    assert_eq!(
        stdout(&out),
        format!("{nogroup}\n{nogroup} {vcap_gid}\n"),
        "{}",
        text(&out)
    );
}
