//! The order of enforcement, checked without root through a recording `Syscall`.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::syscall::{LandlockOutcome, Syscall};
use super::*;
use crate::plan::{Identity, LandlockPlan, Plan, Rlimit, SocketDir};

#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<String>>,
    landlock: Option<LandlockOutcome>,
    /// The supervisor's word on the cgroup (default: the child is in it).
    placement: Option<syscall::Placement>,
    fail_at: Option<&'static str>,
}

impl Recorder {
    fn rec(&self, call: impl Into<String>) -> io::Result<()> {
        let call = call.into();
        let failing = self.fail_at.is_some_and(|f| call.starts_with(f));
        self.calls.borrow_mut().push(call);
        if failing {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        } else {
            Ok(())
        }
    }
}

impl Syscall for Recorder {
    fn join_cgroup(&self, fd: RawFd) -> io::Result<()> {
        self.rec(format!("join_cgroup(fd {fd})"))
    }
    fn await_cgroup(&self, fd: RawFd) -> io::Result<syscall::Placement> {
        self.rec(format!("await_cgroup(fd {fd})"))?;
        Ok(self
            .placement
            .clone()
            .unwrap_or(syscall::Placement::Join(Vec::new())))
    }
    fn unshare_mount_namespace(&self) -> io::Result<()> {
        self.rec("unshare(NEWNS)")
    }
    fn make_mounts_private(&self) -> io::Result<()> {
        self.rec("mount(/, rprivate)")
    }
    fn open_path(&self, path: &Path) -> io::Result<RawFd> {
        self.rec(format!("open_path({})", path.display()))
            .map(|_| 7)
    }
    fn mount_tmpfs(&self, dir: &Path) -> io::Result<()> {
        self.rec(format!("tmpfs({})", dir.display()))
    }
    fn create_file(&self, path: &Path) -> io::Result<()> {
        self.rec(format!("create({})", path.display()))
    }
    fn bind_mount_fd(&self, fd: RawFd, target: &Path) -> io::Result<()> {
        self.rec(format!("bind(fd {fd} -> {})", target.display()))
    }
    fn remount_readonly(&self, dir: &Path) -> io::Result<()> {
        self.rec(format!("remount_ro({})", dir.display()))
    }
    fn mount_view_root(&self, dir: &Path) -> io::Result<()> {
        self.rec(format!("view_root({})", dir.display()))
    }
    fn make_dir(&self, path: &Path) -> io::Result<()> {
        self.rec(format!("mkdir({})", path.display()))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.rec(format!(
            "pivot_root({}, {})",
            new_root.display(),
            put_old.display()
        ))
    }
    fn mount_proc(&self, target: &Path, read_only: bool) -> io::Result<()> {
        let ro = if read_only { ", ro" } else { "" };
        self.rec(format!("proc({}{ro})", target.display()))
    }
    fn open_exact(&self, path: &Path, kind: crate::plan::EntryKind) -> io::Result<RawFd> {
        self.rec(format!("open_exact({}, {kind:?})", path.display()))
            .map(|_| 8)
    }
    fn bind_with_flags(
        &self,
        fd: RawFd,
        target: &Path,
        flags: syscall::BindFlags,
    ) -> io::Result<()> {
        self.rec(format!(
            "bind(fd {fd} -> {}, ro={} noexec={} nodev={})",
            target.display(),
            flags.read_only,
            flags.no_exec,
            flags.no_dev
        ))
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.rec(format!(
            "symlink({} -> {})",
            link.display(),
            target.display()
        ))
    }
    fn detach(&self, path: &Path) -> io::Result<()> {
        self.rec(format!("detach({})", path.display()))
    }
    fn remount_root_readonly(&self) -> io::Result<()> {
        self.rec("remount_ro(/)")
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.rec(format!("chdir({})", path.display()))
    }
    fn loopback_up(&self) -> io::Result<()> {
        self.rec("lo up")
    }
    fn back_on_all_cpus(&self, fd: RawFd, _mask: &crate::cpus::CpuMask) -> io::Result<()> {
        self.rec(format!("cpus(moved: fd {fd}; back to the supervisor's)"))
    }
    fn enter_net_namespace(&self, fd: RawFd) -> io::Result<()> {
        self.rec(format!("setns(fd {fd}, NEWNET)"))
    }
    fn forward_listeners(
        &self,
        endpoints: &[std::net::SocketAddr],
        channel: RawFd,
    ) -> io::Result<()> {
        self.rec(format!("listeners({endpoints:?} -> fd {channel})"))
    }
    fn write_file(&self, path: &Path, text: &str) -> io::Result<()> {
        self.rec(format!("write({}, {} bytes)", path.display(), text.len()))
    }
    fn start_action(
        &self,
        status: RawFd,
        program: &CStr,
        argv: &[CString],
        env: &[CString],
    ) -> Result<io::Error, io::Error> {
        self.rec(format!("init(status fd {status})"))?;
        Ok(self.exec(program, argv, env))
    }
    fn install_seccomp(&self, _program: &seccomp::Program) -> io::Result<()> {
        self.rec("seccomp")
    }
    fn set_rlimit(&self, limit: Rlimit, value: u64) -> io::Result<()> {
        self.rec(format!("rlimit({}={value})", limit.name()))
    }
    fn landlock_restrict(&self, _plan: &LandlockPlan) -> io::Result<LandlockOutcome> {
        self.rec("landlock_restrict")?;
        Ok(self.landlock.unwrap_or(LandlockOutcome::FullyEnforced))
    }
    fn set_keep_caps(&self, keep: bool) -> io::Result<()> {
        self.rec(format!("keepcaps({keep})"))
    }
    fn set_groups(&self, groups: &[u32]) -> io::Result<()> {
        self.rec(format!("setgroups({groups:?})"))
    }
    fn set_gid(&self, gid: u32) -> io::Result<()> {
        self.rec(format!("setresgid({gid})"))
    }
    fn set_uid(&self, uid: u32) -> io::Result<()> {
        self.rec(format!("setresuid({uid})"))
    }
    fn raise_effective(&self) -> io::Result<()> {
        self.rec("caps(effective=permitted)")
    }
    fn drop_bounding(&self, keep: &[caps::Capability]) -> io::Result<()> {
        self.rec(format!("caps(bounding={keep:?})"))
    }
    fn set_capset(&self, set: caps::CapSet, keep: &[caps::Capability]) -> io::Result<()> {
        self.rec(format!("caps({set:?}={keep:?})"))
    }
    fn new_session(&self) -> io::Result<()> {
        self.rec("setsid")
    }
    fn join_new_session_keyring(&self) -> io::Result<()> {
        self.rec("keyring(new session)")
    }
    fn default_signals(&self) -> io::Result<()> {
        self.rec("signals(default)")
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.rec("no_new_privs")
    }
    fn set_parent_death_signal(&self) -> io::Result<()> {
        self.rec("pdeathsig")
    }
    fn close_fds_above_stderr(&self, _keep: &[RawFd]) -> io::Result<()> {
        self.rec("cloexec(3..)")
    }
    fn exec(&self, program: &CStr, _argv: &[CString], env: &[CString]) -> io::Error {
        let _ = self.rec(format!(
            "exec({}, env={})",
            program.to_string_lossy(),
            env.len()
        ));
        io::Error::from_raw_os_error(libc::ENOENT)
    }
}

fn plan(sockets: bool, keep: Vec<caps::Capability>) -> Plan {
    Plan {
        profile: PathBuf::from("p.yml"),
        namespaces: Default::default(),
        view: None,
        socket_dirs: if sockets {
            vec![SocketDir {
                dir: "/run/db".into(),
                sockets: vec!["/run/db/.s.PGSQL.5432".into()],
            }]
        } else {
            Vec::new()
        },
        rlimits: vec![(Rlimit::OpenFiles, 64), (Rlimit::CoreFileSize, 0)],
        landlock: Some(LandlockPlan {
            abi: 7,
            handled_fs: ::landlock::AccessFs::ReadFile.into(),
            rules: Vec::new(),
            handle_tcp: true,
            handle_udp: false,
            connect_tcp: vec![5432],
            bind_tcp: Vec::new(),
            scope_abstract_unix_socket: true,
            scope_signal: true,
            strict: true,
        }),
        identity: Some(Identity {
            user: "vcap".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![],
        }),
        keep_capabilities: keep,
        program: CString::new("/bin/true").expect("no NUL"),
        argv: vec![CString::new("true").expect("no NUL")],
        env: vec![CString::new("PATH=/bin").expect("no NUL")],
        timeout: Some(Duration::from_secs(5)),
        kill_grace: Duration::from_secs(1),
        not_enforced: Vec::new(),
        keep_fds: Vec::new(),
        cgroup: None,
        cgroup_placement: Some(9),
        cgroup_fallback: vec![(Rlimit::Processes, 64), (Rlimit::Memory, 1 << 30)],
        cpu_kick: None,
        init_status: None,
        forwards: Vec::new(),
        forward_channel: None,
        net_namespace: None,
        listeners: Vec::new(),
        seccomp: None,
        notices: Vec::new(),
    }
}

fn run(rec: &Recorder, plan: &Plan) -> (SandboxError, Vec<String>) {
    let mut warnings = Vec::new();
    let err = enforce(plan, rec, &mut |w| warnings.push(w.to_string()));
    (err, rec.calls.borrow().clone())
}

#[test]
fn steps_run_in_the_designed_order() {
    let rec = Recorder::default();
    let (_, calls) = run(&rec, &plan(true, vec![]));
    assert_eq!(
        calls,
        [
            "unshare(NEWNS)",
            "mount(/, rprivate)",
            "open_path(/run/db/.s.PGSQL.5432)",
            "tmpfs(/run/db)",
            "create(/run/db/.s.PGSQL.5432)",
            "bind(fd 7 -> /run/db/.s.PGSQL.5432)",
            "remount_ro(/run/db)",
            // The supervisor placed the child in the run's cgroup meanwhile.
            "await_cgroup(fd 9)",
            "rlimit(open_files=64)",
            "rlimit(core_file_size=0)",
            "landlock_restrict",
            "keepcaps(true)",
            "setgroups([])",
            "setresgid(1000)",
            "setresuid(1000)",
            "keepcaps(false)",
            "setsid",
            "signals(default)",
            "keyring(new session)",
            "caps(effective=permitted)",
            "caps(bounding=[])",
            "caps(Ambient=[])",
            "caps(Inheritable=[])",
            "caps(Permitted=[])",
            "caps(Effective=[])",
            "no_new_privs",
            "pdeathsig",
            "cloexec(3..)",
            "exec(/bin/true, env=1)",
        ]
    );
}

#[test]
fn no_mount_namespace_without_sockets_and_kept_caps_become_ambient() {
    let rec = Recorder::default();
    let (_, calls) = run(
        &rec,
        &plan(false, vec![caps::Capability::CAP_NET_BIND_SERVICE]),
    );
    assert_eq!(calls[..2], ["await_cgroup(fd 9)", "rlimit(open_files=64)"]);
    assert!(calls.contains(&"caps(Ambient=[CAP_NET_BIND_SERVICE])".to_string()));
    let ambient_fill = calls
        .iter()
        .position(|c| c == "caps(Ambient=[CAP_NET_BIND_SERVICE])");
    let effective = calls.iter().position(|c| c.starts_with("caps(Effective"));
    assert!(
        ambient_fill > effective,
        "ambient is refilled last: {calls:?}"
    );
}

#[test]
fn partial_landlock_under_strict_is_a_refusal_before_identity_and_exec() {
    let rec = Recorder {
        landlock: Some(LandlockOutcome::PartiallyEnforced),
        ..Recorder::default()
    };
    let (err, calls) = run(&rec, &plan(false, vec![]));
    assert!(matches!(err, SandboxError::Refused(_)), "{err}");
    assert_eq!(err.exit_code(), crate::exit::REFUSED);
    assert_eq!(calls.last().map(String::as_str), Some("landlock_restrict"));
}

#[test]
fn partial_landlock_under_best_effort_warns_and_runs() {
    let rec = Recorder {
        landlock: Some(LandlockOutcome::PartiallyEnforced),
        ..Recorder::default()
    };
    let mut p = plan(false, vec![]);
    if let Some(ll) = p.landlock.as_mut() {
        ll.strict = false;
    }
    let mut warnings = Vec::new();
    let err = enforce(&p, &rec, &mut |w| warnings.push(w.to_string()));
    assert!(matches!(err, SandboxError::Exec { .. }));
    assert_eq!(
        warnings,
        ["Landlock ruleset is PartiallyEnforced on this kernel"]
    );
    assert!(rec
        .calls
        .borrow()
        .last()
        .is_some_and(|c| c.starts_with("exec(")));
}

#[test]
fn a_failed_cgroup_placement_stops_before_the_rlimits_and_the_action() {
    for (placement, fail_at, why) in [
        (
            Some(syscall::Placement::Failed(
                "/sys/fs/cgroup/pids/x: EBUSY".into(),
            )),
            None,
            "/sys/fs/cgroup/pids/x: EBUSY",
        ),
        // The word could not be read.
        (
            None,
            Some("await_cgroup"),
            "Operation not permitted (os error 1)",
        ),
    ] {
        let rec = Recorder {
            placement,
            fail_at,
            ..Recorder::default()
        };
        let (err, calls) = run(&rec, &plan(true, vec![]));
        assert_eq!(err.exit_code(), crate::exit::SANDBOX_FAILED);
        assert_eq!(
            err.to_string(),
            format!("sandbox step `cgroup` failed at being placed in the run's cgroup: {why}")
        );
        assert_eq!(calls.last().map(String::as_str), Some("await_cgroup(fd 9)"));
        assert!(!calls.iter().any(|c| c.starts_with("rlimit")), "{calls:?}");
    }
}

#[test]
fn the_supervisor_ending_without_a_word_is_a_failed_placement() {
    assert_eq!(
        syscall::parse_placement(""),
        syscall::Placement::Failed(
            "the supervisor ended before saying whether the action is in its cgroup".into()
        )
    );
    // "in" was the word when the supervisor moved the child itself: not one now.
    assert_eq!(
        syscall::parse_placement("in"),
        syscall::Placement::Failed("in".into())
    );
    assert_eq!(
        syscall::parse_placement("rlimits"),
        syscall::Placement::Rlimits
    );
    assert_eq!(
        syscall::parse_placement("failed: no"),
        syscall::Placement::Failed("no".into())
    );
}

#[test]
fn without_a_cgroup_processes_and_memory_become_rlimits() {
    let rec = Recorder {
        placement: Some(syscall::Placement::Rlimits),
        ..Recorder::default()
    };
    let (_, calls) = run(&rec, &plan(false, vec![]));
    assert_eq!(
        calls[..5],
        [
            "await_cgroup(fd 9)",
            "rlimit(open_files=64)",
            "rlimit(core_file_size=0)",
            "rlimit(processes=64)",
            "rlimit(memory=1073741824)",
        ]
    );
    // In the cgroup, neither is set.
    let (_, calls) = run(&Recorder::default(), &plan(false, vec![]));
    assert!(!calls.iter().any(|c| c.starts_with("rlimit(processes")));
}

#[test]
fn no_cgroup_no_wait() {
    let rec = Recorder::default();
    let mut p = plan(false, vec![]);
    p.cgroup_placement = None;
    let (_, calls) = run(&rec, &p);
    assert_eq!(calls[0], "rlimit(open_files=64)");
}

#[test]
fn a_failing_step_stops_everything_after_it() {
    let rec = Recorder {
        fail_at: Some("setresgid"),
        ..Recorder::default()
    };
    let (err, calls) = run(&rec, &plan(false, vec![]));
    assert_eq!(err.exit_code(), crate::exit::SANDBOX_FAILED);
    assert!(err.to_string().contains("identity"), "{err}");
    assert_eq!(calls.last().map(String::as_str), Some("setresgid(1000)"));
}

#[test]
fn the_view_is_built_on_a_pivoted_tmpfs_and_init_forks_the_action_last() {
    use crate::plan::{EntryKind, Namespaces, View, ViewEntry};
    let rec = Recorder::default();
    let mut p = plan(false, vec![]);
    p.namespaces = Namespaces {
        mount: true,
        pid: true,
        ipc: true,
        net: true,
    };
    p.view = Some(View {
        entries: vec![
            ViewEntry {
                path: "/usr/lib".into(),
                kind: EntryKind::Dir,
                write: false,
                exec: true,
            },
            ViewEntry {
                path: "/usr/lib/locale".into(),
                kind: EntryKind::Dir,
                write: false,
                exec: false,
            },
            ViewEntry {
                path: "/dev/null".into(),
                kind: EntryKind::Device,
                write: true,
                exec: false,
            },
            ViewEntry {
                path: "/dev/zero".into(),
                kind: EntryKind::Device,
                write: false,
                exec: false,
            },
        ],
        links: vec![("/lib".into(), "usr/lib".into())],
        proc: false,
        proc_writable: false,
        cwd: "/var/vcap".into(),
        hosts: None,
    });
    p.init_status = Some(11);
    p.seccomp = Some(std::sync::Arc::new(
        seccomp::compile(&seccomp::Policy::default()).expect("filter"),
    ));
    let (_, calls) = run(&rec, &p);
    let view: Vec<&str> = calls
        .iter()
        .map(String::as_str)
        .take_while(|c| !c.starts_with("rlimit"))
        .collect();
    assert_eq!(
        view,
        [
            "mount(/, rprivate)",
            "view_root(/tmp)",
            "mkdir(/tmp/.old-root)",
            "pivot_root(/tmp, /tmp/.old-root)",
            "mkdir(/proc)",
            "proc(/proc, ro)",
            // The tmpfs's root is there.
            "symlink(/lib -> usr/lib)",
            "open_exact(/.old-root/usr/lib, Dir)",
            "mkdir(/usr/lib)",
            "bind(fd 8 -> /usr/lib, ro=true noexec=false nodev=true)",
            // Inside the /usr/lib just bound: the mount point is there.
            "open_exact(/.old-root/usr/lib/locale, Dir)",
            "bind(fd 8 -> /usr/lib/locale, ro=true noexec=true nodev=true)",
            "open_exact(/.old-root/dev/null, Device)",
            "mkdir(/dev)",
            "create(/dev/null)",
            "bind(fd 8 -> /dev/null, ro=false noexec=true nodev=false)",
            // Made once.
            "open_exact(/.old-root/dev/zero, Device)",
            "create(/dev/zero)",
            "bind(fd 8 -> /dev/zero, ro=true noexec=true nodev=false)",
            "detach(/.old-root)",
            "detach(/proc)",
            "remount_ro(/)",
            "chdir(/var/vcap)",
            "lo up",
            "await_cgroup(fd 9)",
        ]
    );
    let tail: Vec<&str> = calls.iter().rev().take(4).map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "exec(/bin/true, env=1)",
            "init(status fd 11)",
            "seccomp",
            "cloexec(3..)"
        ]
    );
    // No process for the action: a step failure (122), not the exec's.
    let rec = Recorder {
        fail_at: Some("init"),
        ..Recorder::default()
    };
    let (err, _) = run(&rec, &p);
    assert_eq!(err.exit_code(), crate::exit::SANDBOX_FAILED);
    assert_eq!(
        err.to_string(),
        "sandbox step `init` failed at clone: Operation not permitted (os error 1)"
    );
    // Its exec failed: the exec's error (127 for ENOENT).
    let (err, _) = run(&Recorder::default(), &p);
    assert_eq!(err.exit_code(), crate::exit::NOT_FOUND);
}

#[test]
fn a_network_namespace_made_by_the_supervisor_is_entered_instead_of_set_up() {
    let mut p = plan(false, vec![]);
    p.namespaces.net = true;
    p.net_namespace = Some(12);
    let (_, calls) = run(&Recorder::default(), &p);
    assert_eq!(calls[..2], ["setns(fd 12, NEWNET)", "await_cgroup(fd 9)"]);
    assert!(!calls.iter().any(|c| c == "lo up"), "{calls:?}");
    // Made by clone3: the child sets its loopback up itself.
    p.net_namespace = None;
    let (_, calls) = run(&Recorder::default(), &p);
    assert_eq!(calls[..2], ["lo up", "await_cgroup(fd 9)"]);
}

#[test]
fn the_child_goes_back_to_the_supervisors_cpus_first() {
    let mut p = plan(false, vec![]);
    let mine = crate::cpus::CpuMask::mine().expect("this thread's CPUs");
    p.cpu_kick = Some((13, mine));
    let (_, calls) = run(&Recorder::default(), &p);
    assert_eq!(
        calls[..3],
        [
            "cpus(moved: fd 13; back to the supervisor's)",
            "await_cgroup(fd 9)",
            "rlimit(open_files=64)"
        ]
    );
}

#[test]
fn the_child_joins_each_hierarchy_through_the_files_it_is_handed() {
    let rec = Recorder {
        placement: Some(syscall::Placement::Join(vec![21, 22])),
        ..Recorder::default()
    };
    let (_, calls) = run(&rec, &plan(false, vec![]));
    assert_eq!(
        calls[..4],
        [
            "await_cgroup(fd 9)",
            "join_cgroup(fd 21)",
            "join_cgroup(fd 22)",
            "rlimit(open_files=64)"
        ]
    );
    // A failed join stops before the rlimits and the action.
    let rec = Recorder {
        placement: Some(syscall::Placement::Join(vec![21, 22])),
        fail_at: Some("join_cgroup"),
        ..Recorder::default()
    };
    let (err, calls) = run(&rec, &plan(false, vec![]));
    assert_eq!(err.exit_code(), crate::exit::SANDBOX_FAILED);
    assert_eq!(
        err.to_string(),
        "sandbox step `cgroup` failed at joining the run's cgroup: Operation not permitted (os error 1)"
    );
    assert_eq!(calls.last().map(String::as_str), Some("join_cgroup(fd 21)"));
}
