//! The command line as an operator meets it: refusals, best effort, exit codes, help, kernel.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::Builder::new()
            .prefix("bbr-cli-")
            .tempdir()
            .expect("tempdir");
        mkdir(dir.path(), 0o755, None);
        mkdir(&dir.path().join("art"), 0o777, None);
        Dir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn profile(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, format!("version: 1\n{body}")).expect("write profile");
        p
    }

    /// `bbr-runner exec --profile P --var BBR_ARTIFACT_DIRECTORY=art/ -- CMD`, as root, with an
    /// empty environment but the run's ABI cap.
    fn command(&self, profile: &Path, cmd: &[&str]) -> Command {
        let mut c = Command::new(runner());
        c.args([
            "exec",
            "--profile",
            profile.to_str().expect("utf8"),
            "--var",
        ])
        .arg(format!(
            "BBR_ARTIFACT_DIRECTORY={}/art/",
            self.path().display()
        ))
        .arg("--")
        .args(cmd)
        .env_clear()
        .envs(kept_env())
        .stdin(std::process::Stdio::null());
        c
    }

    fn exec(&self, profile: &Path, cmd: &[&str]) -> std::process::Output {
        self.command(profile, cmd).output().expect("run bbr-runner")
    }
}

const SHELL: &str = "filesystem:\n  execute: ['@system-bin', '@system-libs']\n  write: ['${BBR_ARTIFACT_DIRECTORY}']\nenvironment:\n  set: {PATH: /usr/bin:/bin}\n";

impl Dir {
    /// `exec` started by vcap itself (no root: no namespaces, Landlock alone), as on a kernel
    /// whose Landlock ABI is `cap`.
    fn exec_as_vcap(&self, profile: &Path, cap: u8, cmd: &[&str]) -> std::process::Output {
        let var = format!("BBR_ARTIFACT_DIRECTORY={}/art/", self.path().display());
        as_vcap(shared_bin().join("bbr-runner"))
            .args([
                "exec",
                "--profile",
                profile.to_str().expect("utf8"),
                "--var",
                &var,
                "--",
            ])
            .args(cmd)
            .env_clear()
            .envs(kept_env())
            .env("BBR_RUNNER_LANDLOCK_ABI_MAX", cap.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("exec as vcap")
    }
}

/// Strict refuses only what no layer enforces: started by vcap (no namespaces) on a kernel
/// without Landlock, nothing confines the filesystem, so the profile is refused; with Landlock
/// (the neighbour) the same profile runs.
#[test]
fn strict_profile_is_refused_when_no_layer_enforces_a_declared_restriction() {
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile("strict.yml", &format!("abi: 7\n{SHELL}"));
    let marker = d.path().join("art/ran");
    let out = d.exec_as_vcap(&p, 0, &["touch", marker.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`fs.write` (writes only its write grants) is enforced by no layer here: Landlock is not available (ABI 0)"),
        "{stderr}"
    );
    assert!(!marker.exists(), "nothing ran");
    let out = d.exec_as_vcap(&p, 7, &["touch", marker.to_str().expect("utf8")]);
    assert!(out.status.success() && marker.exists(), "{}", text(&out));
    // As root, the runner's own filesystem view enforces it without Landlock.
    std::fs::remove_file(&marker).expect("rm");
    let out = d
        .command(&p, &["touch", marker.to_str().expect("utf8")])
        .env("BBR_RUNNER_LANDLOCK_ABI_MAX", "0")
        .output()
        .expect("exec");
    assert!(out.status.success() && marker.exists(), "{}", text(&out));
}

#[test]
fn best_effort_runs_and_says_exactly_what_is_not_enforced() {
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile(
        "be.yml",
        &format!("abi: 7\nenforcement: best_effort\n{SHELL}"),
    );
    let out = d.exec_as_vcap(&p, 0, &["true"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for id in ["fs.read", "fs.write", "fs.execute"] {
        assert!(
            stderr.contains(&format!("not enforced (best_effort): `{id}`")),
            "{stderr}"
        );
    }
}

#[test]
fn missing_user_is_refused_with_the_command_that_creates_it() {
    require_root();
    let d = Dir::new();
    let p = d.profile("u.yml", &format!("abi: 7\nuser: nosuchuser-bbr\n{SHELL}"));
    let out = d.exec(&p, &["true"]);
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("useradd --system nosuchuser-bbr"),
        "{}",
        text(&out)
    );
}

#[test]
fn missing_write_path_is_refused_before_anything_runs() {
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile(
        "w.yml",
        &format!("abi: 7\n{SHELL}").replace(
            "'${BBR_ARTIFACT_DIRECTORY}'",
            "'${BBR_ARTIFACT_DIRECTORY}/missing'",
        ),
    );
    let out = d.exec(&p, &["true"]);
    assert_eq!(out.status.code(), Some(121), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("art/missing"),
        "{}",
        text(&out)
    );
}

#[test]
fn write_grant_through_a_symlink_is_refused() {
    require_root();
    vcap();
    let d = Dir::new();
    std::os::unix::fs::symlink("/etc", d.path().join("art/etc-link")).expect("symlink");
    let p = d.profile(
        "s.yml",
        &format!("abi: 7\n{SHELL}").replace(
            "'${BBR_ARTIFACT_DIRECTORY}'",
            "'${BBR_ARTIFACT_DIRECTORY}/etc-link'",
        ),
    );
    // A profile error (exit 2): the grant as written names a symlink.
    let out = d.exec(&p, &["true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("goes through a symlink to `/etc`"),
        "{}",
        text(&out)
    );
}

#[test]
fn exit_codes_pass_through_and_runner_codes_are_distinct() {
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile("e.yml", &format!("abi: 7\n{SHELL}"));
    assert_eq!(d.exec(&p, &["sh", "-c", "exit 42"]).status.code(), Some(42));
    assert_eq!(
        d.exec(&p, &["sh", "-c", "kill -KILL $$"]).status.code(),
        Some(128 + 9)
    );
    let out = d.exec(&p, &["no-such-command-bbr"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found in the sandbox's PATH"),
        "{}",
        text(&out)
    );
    // Present but not executable: a written file (its grant is mounted noexec).
    let written = d.path().join("art/script");
    std::fs::write(&written, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(
        &written,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let out = d.exec(&p, &[written.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
}

#[test]
fn trace_shows_each_step_with_its_time_only_when_asked() {
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile(
        "t.yml",
        &format!("abi: 7\n{SHELL}limits:\n  processes: 64\n  memory: 256M\n"),
    );
    let out = d.exec(&p, &["sh", "-c", "echo $BBR_RUNNER_TRACE >&2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("trace:"), "{}", text(&out));
    let out = d
        .command(
            &p,
            &["sh", "-c", "echo \"action sees [$BBR_RUNNER_TRACE]\" >&2"],
        )
        .env("BBR_RUNNER_TRACE", "1")
        .output()
        .expect("run bbr-runner");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // The caller's variable is not the action's.
    assert!(err.contains("action sees []"), "{err}");
    for step in [
        "runner ",
        "plan built",
        "cgroup made",
        "sandbox ",
        "filesystem view built",
        "landlock ruleset applied",
        "seccomp filter installed",
        "execve",
        "cgroup removed",
        "exit",
    ] {
        assert!(err.contains(step), "no `{step}` in:\n{err}");
    }
    for line in err.lines().filter(|l| l.contains("trace:")) {
        assert!(
            line.contains(" ms (+") && line.starts_with("bbr-runner: trace: "),
            "{line}"
        );
    }
}

#[test]
fn the_action_runs_on_every_cpu_the_runner_was_given() {
    // The supervisor moves the sandbox's first process off its own CPU while it makes the
    // cgroup (runner/src/cpus.rs); the action must not inherit that.
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile(
        "n.yml",
        &format!("abi: 7\n{SHELL}limits:\n  processes: 64\n  memory: 256M\n"),
    );
    let mine = std::thread::available_parallelism().map_or(1, |n| n.get());
    for _ in 0..5 {
        let out = d.exec(&p, &["nproc"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            mine.to_string(),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn undefined_variable_on_the_command_line_is_a_usage_error() {
    let d = Dir::new();
    let p = d.profile("v.yml", "abi: 7\nfilesystem:\n  write: ['${OTHER}']\n");
    let out = run_runner(&["check", p.to_str().expect("utf8")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --var OTHER=VALUE"),
        "{}",
        text(&out)
    );
    let out = run_runner(
        &["check", "--var", "OTHER=/tmp", p.to_str().expect("utf8")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run_runner(
        &["check", "--var", "NOEQUALS", p.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn check_print_shows_sets_and_variables_expanded() {
    let out = run_runner(
        &[
            "check",
            "--print",
            "--var",
            "BBR_ARTIFACT_DIRECTORY=/var/vcap/store/bbr-backup/acme/",
            EXAMPLE_PROFILE,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "/usr/bin  (@system-bin)",
        "/etc/passwd  (@name-service)",
        "    /var/vcap/store/bbr-backup/acme",
        "tcp connect: none",
        "capabilities kept: none",
    ] {
        assert!(stdout.contains(want), "missing `{want}`:\n{stdout}");
    }
}

#[test]
fn kernel_reports_the_abi_the_kernel_reports() {
    let out = run_runner(&["kernel", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // SAFETY: the version query of landlock_create_ruleset takes no pointers.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1usize,
        )
    };
    assert_eq!(json["landlock_abi"], serde_json::json!(raw.max(0)));
    let out = run_runner(&["kernel"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("landlock ABI:         {raw}")));
}

/// Under a seccomp filter that answers Landlock's calls with ENOSYS (as bpm's does), `kernel`
/// says the filter is why, not that the kernel lacks Landlock. Control: the same `kernel` without
/// the filter reports the kernel's ABI.
#[test]
fn kernel_under_a_filter_that_hides_landlock_says_so() {
    use std::os::unix::process::CommandExt;
    let filter: seccompiler::BpfProgram = seccompiler::SeccompFilter::new(
        [(libc::SYS_landlock_create_ruleset, vec![])]
            .into_iter()
            .collect(),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
        seccompiler::TargetArch::x86_64,
    )
    .expect("filter")
    .try_into()
    .expect("compiles");
    let control = run_runner(&["kernel"], &[]);
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    assert!(!control.contains("seccomp filter"), "{control}");
    let mut c = Command::new(runner());
    c.arg("kernel").env_clear().envs(kept_env());
    // SAFETY: between fork and exec: prctl and the seccomp system call only.
    unsafe {
        c.pre_exec(move || {
            seccompiler::apply_filter(&filter).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    let out = c.output().expect("kernel");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "landlock ABI:         none here (this process's seccomp filter answers ENOSYS"
        ),
        "{stdout}"
    );
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let out = run_runner(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["exec", "check", "kernel", "121 (refused", "124 (timeout)"] {
        assert!(help.contains(want), "missing `{want}`:\n{help}");
    }
    assert_eq!(run_runner(&["exec"], &[]).status.code(), Some(2));
}

#[test]
fn demo_refuses_a_dir_vcap_cannot_reach_or_one_that_is_not_empty_before_starting_anything() {
    require_root();
    vcap();
    let d = Dir::new();
    let locked = d.path().join("locked");
    mkdir(&locked, 0o700, None);
    let inside = locked.join("root");
    let out = run_runner(&["demo", "--dir", inside.to_str().expect("utf8")], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "{} (mode 700, owner uid 0) does not let vcap through",
            locked.display()
        )),
        "{}",
        text(&out)
    );
    assert!(!inside.exists(), "nothing was laid out");
    // Not empty: refused before anything, and nothing in it is touched.
    write(&d.path().join("keep-me"), "x", 0o644, None);
    let out = run_runner(&["demo", "--dir", d.path().to_str().expect("utf8")], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert!(d.path().join("keep-me").is_file());
}

/// TERM, INT, HUP and QUIT sent to the runner reach the action (in its pid namespace, behind
/// its init) and the runner says it stopped it, with 128 + the signal as its exit code. The
/// action proves the signal arrived by writing its name before it exits 0 itself.
#[test]
fn each_forwarded_signal_reaches_the_action_and_the_runner_says_so() {
    use nix::sys::signal::Signal;
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile("s.yml", &format!("abi: 7\n{SHELL}"));
    for (sig, name) in [
        (Signal::SIGTERM, "TERM"),
        (Signal::SIGINT, "INT"),
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
    ] {
        let art = d.path().join("art");
        let got = art.join(format!("got-{name}"));
        let ready = art.join(format!("ready-{name}"));
        let script = format!(
            "trap 'echo {name} > {got}; exit 0' {name}; touch {ready}; while :; do sleep 0.05; done",
            got = got.display(),
            ready = ready.display()
        );
        // The caller ignores SIGINT and SIGQUIT, as a background job of a non-interactive
        // shell does: the action must not inherit that (a shell cannot trap a signal ignored on
        // entry, and the forwarded signal would do nothing).
        let child = ignoring_int_and_quit_blocking_usr1(d.command(&p, &["sh", "-c", &script]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        support::wait_until(
            &format!("{name}: the action never started"),
            std::time::Duration::from_secs(30),
            || ready.exists(),
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("kill");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(128 + sig as i32),
            "{name}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                "the runner received SIG{name} and stopped the action"
            )),
            "{name}: {}",
            text(&out)
        );
        assert_eq!(
            std::fs::read_to_string(&got)
                .map(|s| s.trim().to_string())
                .ok(),
            Some(name.to_string()),
            "{name}: the action's trap ran"
        );
    }
}

/// The caller's signal state, as a background job of a non-interactive shell has it (SIGINT and
/// SIGQUIT ignored), plus SIGUSR1 blocked.
fn ignoring_int_and_quit_blocking_usr1(mut c: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls (sigaction, sigprocmask).
    unsafe {
        c.pre_exec(|| {
            use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
            signal(Signal::SIGINT, SigHandler::SigIgn)?;
            signal(Signal::SIGQUIT, SigHandler::SigIgn)?;
            let mut set = SigSet::empty();
            set.add(Signal::SIGUSR1);
            set.thread_block()?;
            Ok(())
        })
    };
    c
}

/// The action starts with every signal at its default and none blocked, whatever the caller
/// ignored or blocked and whatever the runner's runtime ignores (SIGPIPE). Control: the same
/// caller starting the same command without the runner passes its state on.
#[test]
fn the_action_starts_with_no_signal_ignored_or_blocked() {
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile(
        "s.yml",
        &format!(
            "abi: 7\n{}",
            SHELL.replace("  write:", "  read: [/proc]\n  write:")
        ),
    );
    let show = [
        "sh",
        "-c",
        "exec grep -E '^Sig(Ign|Blk):' /proc/self/status",
    ];
    let field = |out: &std::process::Output, name: &str| -> u64 {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line: {}", text(out)));
        u64::from_str_radix(line[name.len()..].trim(), 16).expect("hex mask")
    };
    let (int, quit, usr1, pipe) = (1u64 << 1, 1u64 << 2, 1u64 << 9, 1u64 << 12);

    let mut control = Command::new(show[0]);
    control.args(&show[1..]).env_clear().envs(kept_env());
    let control = ignoring_int_and_quit_blocking_usr1(control)
        .output()
        .expect("control");
    assert!(control.status.success(), "{}", text(&control));
    assert_eq!(
        field(&control, "SigIgn:") & (int | quit),
        int | quit,
        "control ignores INT, QUIT"
    );
    assert_eq!(
        field(&control, "SigBlk:") & usr1,
        usr1,
        "control blocks USR1"
    );

    let out = ignoring_int_and_quit_blocking_usr1(d.command(&p, &show))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        field(&out, "SigIgn:"),
        0,
        "nothing ignored (INT, QUIT, PIPE: {int:#x} {quit:#x} {pipe:#x})"
    );
    assert_eq!(field(&out, "SigBlk:"), 0, "nothing blocked");
}

/// CMD is looked up in the PATH the profile sets, never the caller's: a decoy `true` first in
/// the caller's PATH is not what runs (it would leave a marker), the real one is.
#[test]
fn the_command_is_found_in_the_profiles_path_not_the_callers() {
    require_root();
    vcap();
    let d = Dir::new();
    let decoys = d.path().join("decoys");
    std::fs::create_dir(&decoys).expect("mkdir");
    let marker = d.path().join("art/decoy-ran");
    let decoy = decoys.join("true");
    std::fs::write(&decoy, format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("decoy");
    std::fs::set_permissions(&decoy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    // The control: with the caller's PATH, `true` is the decoy.
    let control = Command::new("true")
        .env("PATH", format!("{}:/usr/bin:/bin", decoys.display()))
        .status()
        .expect("sh");
    assert!(
        control.success() && marker.exists(),
        "the decoy runs from the caller's PATH"
    );
    std::fs::remove_file(&marker).expect("rm");
    let p = d.profile("p.yml", &format!("abi: 7\n{SHELL}"));
    let out = d
        .command(&p, &["true"])
        .env("PATH", format!("{}:/usr/bin:/bin", decoys.display()))
        .output()
        .expect("exec");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!marker.exists(), "the decoy ran under the profile");
}

/// `BBR_RUNNER_LANDLOCK_ABI_MAX` caps the ABI every command uses, `kernel` shows both, and a
/// bad value is a usage error before anything runs.
#[test]
fn the_abi_cap_is_shown_and_a_bad_one_is_a_usage_error() {
    let kernel = bbr_runner::kernel::kernel_landlock_abi().1;
    let out = Command::new(runner())
        .arg("kernel")
        .env_clear()
        .env("BBR_RUNNER_LANDLOCK_ABI_MAX", "0")
        .output()
        .expect("kernel");
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(&format!(
            "landlock ABI:         0 (the kernel has {kernel}; capped by BBR_RUNNER_LANDLOCK_ABI_MAX=0)"
        )),
        "{shown}"
    );
    // The neighbour: without the cap, the kernel's own.
    let out = Command::new(runner())
        .arg("kernel")
        .env_clear()
        .output()
        .expect("kernel");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("landlock ABI:         {kernel}\n")),
        "{}",
        text(&out)
    );
    for bad in ["x", "11", "-1"] {
        let out = Command::new(runner())
            .args(["check", "profiles/examples/artifact-only.yml"])
            .env_clear()
            .env("BBR_RUNNER_LANDLOCK_ABI_MAX", bad)
            .output()
            .expect("check");
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                "BBR_RUNNER_LANDLOCK_ABI_MAX={bad}: expected a Landlock ABI from 0"
            )),
            "{}",
            text(&out)
        );
    }
}

/// Exit 122: a sandbox step failed while the action was being set up, so the action did not
/// run. The step: the runner binds the profile's declared `bind_tcp` endpoint on the host
/// before the action starts; with the port already taken, that bind fails. The neighbour: the
/// same profile, the port free again, runs the action. It would fail if a failed setup step
/// let the action run, or were reported with another code.
#[test]
fn a_sandbox_step_that_fails_exits_122_and_the_action_does_not_run() {
    require_root();
    vcap();
    let d = Dir::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let p = d.profile(
        "bind.yml",
        &format!("abi: 7\n{SHELL}network:\n  bind_tcp: ['127.0.0.1:{port}']\n"),
    );
    let marker = d.path().join("art/ran");
    let touch = ["touch", marker.to_str().expect("utf8")];
    let out = d.exec(&p, &touch);
    assert_eq!(out.status.code(), Some(122), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("cannot listen on 127.0.0.1:{port} for the action")),
        "{}",
        text(&out)
    );
    assert!(!marker.exists(), "the action must not have run");
    drop(holder);
    let out = d.exec(&p, &touch);
    assert!(out.status.success() && marker.exists(), "{}", text(&out));
}

/// Exit 123: the runner itself failed. Started by vcap under `RLIMIT_NPROC` = 1 (vcap's own
/// process is already one), the runner's fork of the action fails with EAGAIN; the runner
/// says which call failed and nothing runs. The neighbour: the same command without the
/// limit runs the action. It would fail if a failed fork were reported as the action's status
/// or as a sandbox refusal.
#[test]
fn a_fork_the_kernel_refuses_exits_123_and_names_the_call() {
    require_root();
    vcap();
    let d = Dir::new();
    let p = d.profile("shell.yml", &format!("abi: 7\n{SHELL}"));
    let marker = d.path().join("art/ran");
    let var = format!("BBR_ARTIFACT_DIRECTORY={}/art/", d.path().display());
    let run = |limit: Option<&str>| {
        let mut c = as_vcap("prlimit");
        if let Some(l) = limit {
            c.arg(format!("--nproc={l}"));
        }
        c.arg("--")
            .arg(shared_bin().join("bbr-runner"))
            .args(["exec", "--profile", p.to_str().expect("utf8"), "--var"])
            .arg(&var)
            .args(["--", "touch", marker.to_str().expect("utf8")])
            .env_clear()
            .envs(kept_env())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("prlimit")
    };
    let out = run(Some("1:1"));
    assert_eq!(out.status.code(), Some(123), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("runner error: fork") && stderr.contains("EAGAIN"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the action must not have run");
    let out = run(None);
    assert!(out.status.success() && marker.exists(), "{}", text(&out));
}
