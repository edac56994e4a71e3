//! The escape suite: named attempts to get out of `profiles/examples/artifact-only.yml`, each
//! run for real through `bbr-runner exec` as root, each asserting the specific outcome, each
//! paired with the allowed neighbour that must succeed in the same sandbox, and each (where a
//! profile key controls it) run again with that restriction removed from the profile, where it
//! must then succeed: so the denial is proven to come from the declared restriction.

mod support;

use std::collections::BTreeMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use support::*;

/// One scenario's sandbox: a BOSH-like tree in a temp dir, with things to reach for.
struct Fx {
    _dir: tempfile::TempDir,
    vars: BTreeMap<&'static str, String>,
    _tcp: Vec<std::net::TcpListener>,
    _unix: Vec<UnixListener>,
    outside_proc: Option<Child>,
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Some(c) = self.outside_proc.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fx {
    fn new() -> Fx {
        require_root();
        let (uid, gid) = vcap();
        let vc = Some((uid, gid));
        let dir = tempfile::Builder::new()
            .prefix("bbr-escape-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        mkdir(&root, 0o755, None);
        let art = root.join("store/bbr-backup/acme");
        mkdir(&root.join("store/bbr-backup"), 0o777, None);
        mkdir(&art, 0o700, vc);
        write(&art.join("own"), "mine\n", 0o644, vc);
        write(&art.join("spare"), "mine too\n", 0o644, vc);
        let outside = root.join("outside");
        // World-writable: only the sandbox stands between vcap and this directory.
        mkdir(&outside, 0o777, None);
        write(&outside.join("file"), "outside\n", 0o666, vc);
        let other = root.join("jobs/other-job/config");
        mkdir(&other, 0o755, None);
        write(&other.join("secret.yml"), "password: hunter2\n", 0o644, vc);
        let tmp = root.join("tmp");
        mkdir(&tmp, 0o1777, None);
        // Root's own file, where anyone may look: only its owner may chmod it.
        write(&root.join("rootfile"), "root's\n", 0o644, None);
        for d in [&art, &tmp] {
            std::fs::copy("/bin/true", d.join("true")).expect("copy true");
            std::fs::set_permissions(d.join("true"), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        std::os::unix::fs::symlink(other.join("secret.yml"), art.join("link-to-secret"))
            .expect("symlink");
        std::os::unix::fs::symlink(outside.join("via-link"), art.join("link-out"))
            .expect("symlink");
        let _ = nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &art.join("link-out"),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );

        let sockets = root.join("run/acme-db");
        mkdir(&sockets, 0o755, None);
        let mut unix = Vec::new();
        for name in ["db.sock", "other.sock"] {
            let l = UnixListener::bind(sockets.join(name)).expect("bind unix");
            std::fs::set_permissions(sockets.join(name), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
            unix.push(l);
        }
        let abstract_name = format!(
            "bbr-escape-{}-{}",
            std::process::id(),
            root.display().to_string().len() ^ rand_u16() as usize
        );
        let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("abstract name");
        unix.push(UnixListener::bind_addr(&addr).expect("bind abstract"));

        let tcp: Vec<_> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp"))
            .collect();
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let free_port = free.local_addr().expect("addr").port();
        drop(free);

        let mut vars = BTreeMap::new();
        vars.insert("root", root.display().to_string());
        vars.insert("art", art.display().to_string());
        vars.insert("outside", outside.display().to_string());
        vars.insert("other", other.display().to_string());
        vars.insert("secret", other.join("secret.yml").display().to_string());
        vars.insert("tmp", tmp.display().to_string());
        vars.insert("rootfile", root.join("rootfile").display().to_string());
        vars.insert("bin", shared_bin().display().to_string());
        vars.insert("sockets", sockets.display().to_string());
        vars.insert("abstract", abstract_name);
        vars.insert(
            "port_ok",
            tcp[0].local_addr().expect("addr").port().to_string(),
        );
        vars.insert(
            "port_no",
            tcp[1].local_addr().expect("addr").port().to_string(),
        );
        vars.insert("port_free", free_port.to_string());
        vars.insert("vcap_uid", uid.to_string());
        Fx {
            _dir: dir,
            vars,
            _tcp: tcp,
            _unix: unix,
            outside_proc: None,
        }
    }

    fn v(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    /// A vcap process outside any sandbox: the target for signals and ptrace.
    fn start_outside_process(&mut self) -> String {
        let (uid, gid) = vcap();
        let child = Command::new("sleep")
            .arg("600")
            .uid(uid)
            .gid(gid)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id().to_string();
        self.outside_proc = Some(child);
        self.vars.insert("outside_pid", pid.clone());
        pid
    }

    /// The example profile with the edits applied, plus execute on the runner's copy (the probe).
    fn profile(&self, edits: &[Edit]) -> PathBuf {
        let mut text = std::fs::read_to_string(EXAMPLE_PROFILE).expect("example profile");
        let mut all = vec![Edit::Execute("{bin}")];
        all.extend_from_slice(edits);
        for e in &all {
            text = e.apply(&text, self);
        }
        let n = std::fs::read_dir(self.vars["root"].as_str())
            .map(|d| d.count())
            .unwrap_or(0);
        let path = PathBuf::from(&self.vars["root"]).join(format!("profile-{n}.yml"));
        std::fs::write(&path, text).expect("write profile");
        path
    }

    fn exec(&self, profile: &Path, cmd: &[&str], env: &[(&str, &str)]) -> Output {
        let art = format!("{}/", self.vars["art"]);
        let mut args = vec![
            "exec".to_string(),
            "--profile".into(),
            profile.display().to_string(),
            "--var".into(),
            format!("BBR_ARTIFACT_DIRECTORY={art}"),
            "--".into(),
        ];
        args.extend(cmd.iter().map(|c| self.v(c)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_runner(&args, env)
    }

    fn probe(&self, profile: &Path, op: &[&str]) -> Output {
        let runner = format!("{}/bbr-runner", self.vars["bin"]);
        let mut cmd = vec![runner.as_str(), "probe"];
        cmd.extend_from_slice(op);
        self.exec(profile, &cmd, &[])
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u16::from_le_bytes(b)
}

/// A change to the example profile's text.
#[derive(Clone, Copy, Debug)]
enum Edit {
    Read(&'static str),
    Execute(&'static str),
    Write(&'static str),
    User(&'static str),
    Connect(&'static str),
    Bind(&'static str),
    Caps(&'static str),
    NoLimit(&'static str),
    Pass(&'static str),
    Sockets(&'static str),
    NoSockets,
    Timeout(&'static str, &'static str),
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the example profile no longer has `{from}`"
    );
    text.replacen(from, to, 1)
}

/// `key: [a]` becomes `key: [a, value]`.
fn add_to_flow_list(text: &str, key: &str, value: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{key}: [")))
        .unwrap_or_else(|| panic!("the example profile no longer has `{key}: [...]`"));
    let inner = line[line.find('[').expect("[") + 1..line.rfind(']').expect("]")].trim();
    let indent = &line[..line.len() - line.trim_start().len()];
    let items = if inner.is_empty() {
        value.to_string()
    } else {
        format!("{inner}, {value}")
    };
    replace_once(text, line, &format!("{indent}{key}: [{items}]"))
}

impl Edit {
    fn apply(&self, text: &str, fx: &Fx) -> String {
        let add = |key: &str, value: &str| {
            replace_once(
                text,
                &format!("  {key}:\n"),
                &format!("  {key}:\n    - \"{}\"\n", fx.v(value)),
            )
        };
        match *self {
            Edit::Read(p) => add("read", p),
            Edit::Execute(p) => add("execute", p),
            Edit::Write(p) => add("write", p),
            Edit::User(u) => replace_once(text, "user: vcap", &format!("user: {u}")),
            Edit::Connect(p) => add_to_flow_list(text, "connect_tcp", &fx.v(p)),
            Edit::Bind(p) => add_to_flow_list(text, "bind_tcp", &fx.v(p)),
            Edit::Caps(c) => {
                replace_once(text, "capabilities: []", &format!("capabilities: [{c}]"))
            }
            Edit::NoLimit(key) => {
                let line = text
                    .lines()
                    .find(|l| l.trim_start().starts_with(&format!("{key}:")))
                    .expect("limit line");
                replace_once(text, &format!("{line}\n"), "")
            }
            Edit::Pass(names) => replace_once(
                text,
                "environment:\n",
                &format!("environment:\n  pass: [{names}]\n"),
            ),
            Edit::Sockets(s) => format!("{text}sockets: [\"{}\"]\n", fx.v(s)),
            Edit::NoSockets => {
                let line = text
                    .lines()
                    .find(|l| l.starts_with("sockets:"))
                    .expect("sockets line");
                replace_once(text, &format!("{line}\n"), "")
            }
            Edit::Timeout(t, g) => replace_once(
                &replace_once(text, "timeout: 1h", &format!("timeout: {t}")),
                "kill_grace: 10s",
                &format!("kill_grace: {g}"),
            ),
        }
    }
}

/// deny: the probe operation and the outcome it must give under `edits`;
/// allow: the neighbouring operation that must succeed under the same profile;
/// relax: the edits that remove the restriction, under which `deny` must succeed.
struct Scenario {
    edits: &'static [Edit],
    deny: &'static [&'static str],
    expect: &'static str,
    allow: &'static [&'static str],
    relax: Option<&'static [Edit]>,
    outside_process: bool,
    /// No profile key controls it: the control is the same operation by vcap without the
    /// sandbox, which must succeed.
    unsandboxed_control: bool,
}

/// `bbr-runner probe OP...` as vcap, outside any sandbox.
fn unsandboxed(fx: &Fx, op: &[&str]) -> Output {
    let runner = format!("{}/bbr-runner", fx.vars["bin"]);
    Command::new("setpriv")
        .args(["--reuid=vcap", "--regid=vcap", "--clear-groups", "--"])
        .arg(runner)
        .arg("probe")
        .args(op)
        .env_clear()
        .envs(kept_env())
        .output()
        .expect("setpriv")
}

fn check(s: Scenario) {
    let mut fx = Fx::new();
    if s.outside_process {
        fx.start_outside_process();
    }
    let op = |o: &[&str]| o.iter().map(|a| fx.v(a)).collect::<Vec<_>>();
    let deny = op(s.deny);
    let deny: Vec<&str> = deny.iter().map(String::as_str).collect();
    if s.unsandboxed_control {
        let out = unsandboxed(&fx, &deny);
        assert!(
            out.status.success(),
            "the control: {deny:?} by vcap without the sandbox must succeed\n{}",
            text(&out)
        );
    }
    let allow = op(s.allow);
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();

    let profile = fx.profile(s.edits);
    let out = fx.probe(&profile, &deny);
    if s.expect == "refused" {
        // Strict, and no layer of this kernel enforces a declared restriction: nothing runs.
        assert_eq!(out.status.code(), Some(121), "{deny:?}\n{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is enforced by no layer here"),
            "{}",
            text(&out)
        );
        return;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim_end().starts_with(s.expect)
            && out.status.code() == Some(if s.expect == "ok" { 0 } else { 1 }),
        "denied operation {deny:?}: expected `{}`\n{}",
        s.expect,
        text(&out)
    );
    let out = fx.probe(&profile, &allow);
    assert!(
        out.status.success(),
        "allowed neighbour {allow:?} must succeed\n{}",
        text(&out)
    );

    if let Some(relax) = s.relax {
        let mut edits = s.edits.to_vec();
        edits.extend_from_slice(relax);
        let relaxed = fx.profile(&edits);
        let out = fx.probe(&relaxed, &deny);
        assert!(
            out.status.success(),
            "with the restriction removed ({relax:?}) {deny:?} must succeed, proving the restriction is what denies it\n{}",
            text(&out)
        );
    }
}

macro_rules! escape {
    ($name:ident, edits: $edits:expr, deny: $deny:expr => $expect:expr, allow: $allow:expr, relax: $relax:expr $(, outside: $outside:expr)? $(, control: $control:expr)?) => {
        #[test]
        fn $name() {
            check(Scenario {
                edits: &$edits,
                deny: &$deny,
                expect: $expect,
                allow: &$allow,
                relax: $relax,
                outside_process: false $(|| $outside)?,
                unsandboxed_control: false $(|| $control)?,
            });
        }
    };
}

// --- Filesystem: the view (mount namespace), then Landlock ------------------------------
// As root the runner gives the action a root of only its grants: a path not granted does not
// exist (ENOENT), a granted directory's parent is the view's read-only tmpfs (EROFS), and each
// grant is its own bind mount, so nothing moves or links across grants (EXDEV).

escape!(write_outside_the_artifact_dir_is_denied, edits: [],
    deny: ["write-file", "{outside}/new"] => "errno ENOENT", allow: ["write-file", "{art}/new"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(write_to_the_artifact_dirs_parent_is_denied, edits: [],
    deny: ["write-file", "{root}/store/bbr-backup/sibling"] => "errno EROFS", allow: ["write-file", "{art}/child"],
    relax: Some(&[Edit::Write("{root}/store/bbr-backup")]));
escape!(write_through_dotdot_from_the_artifact_dir_is_denied, edits: [],
    deny: ["write-file", "{art}/../escaped"] => "errno EROFS", allow: ["write-file", "{art}/./kept"],
    relax: Some(&[Edit::Write("{root}/store/bbr-backup")]));
escape!(overwrite_a_file_outside_is_denied, edits: [],
    deny: ["write-file", "{outside}/file"] => "errno ENOENT", allow: ["write-file", "{art}/own"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(append_to_a_file_outside_is_denied, edits: [],
    deny: ["append-file", "{outside}/file"] => "errno ENOENT", allow: ["append-file", "{art}/own"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(truncate_a_file_outside_is_denied, edits: [],
    deny: ["truncate", "{outside}/file"] => "errno ENOENT", allow: ["truncate", "{art}/own"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(remove_a_file_outside_is_denied, edits: [],
    deny: ["remove", "{outside}/file"] => "errno ENOENT", allow: ["remove", "{art}/spare"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(mkdir_outside_is_denied, edits: [],
    deny: ["mkdir", "{outside}/d"] => "errno ENOENT", allow: ["mkdir", "{art}/d"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(mkfifo_outside_is_denied, edits: [],
    deny: ["mkfifo", "{outside}/fifo"] => "errno ENOENT", allow: ["mkfifo", "{art}/fifo"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(symlink_created_outside_is_denied, edits: [],
    deny: ["symlink", "/etc/passwd", "{outside}/l"] => "errno ENOENT", allow: ["symlink", "/etc/passwd", "{art}/l"],
    relax: Some(&[Edit::Write("{outside}")]));
// Both ends granted: the view's mounts refuse the move (no profile key allows it). Not granted:
// the other end does not exist.
escape!(rename_out_of_the_artifact_dir_is_denied, edits: [Edit::Write("{outside}")],
    deny: ["rename", "{art}/own", "{outside}/moved"] => "errno EXDEV", allow: ["rename", "{art}/spare", "{art}/moved"],
    relax: None);
escape!(rename_into_the_artifact_dir_from_outside_is_denied, edits: [Edit::Write("{outside}")],
    deny: ["rename", "{outside}/file", "{art}/stolen"] => "errno EXDEV", allow: ["rename", "{art}/own", "{art}/renamed"],
    relax: None);
escape!(hard_link_out_of_the_artifact_dir_is_denied, edits: [Edit::Write("{outside}")],
    deny: ["link", "{art}/own", "{outside}/hard"] => "errno EXDEV", allow: ["link", "{art}/own", "{art}/hard"],
    relax: None);
escape!(hard_link_of_another_jobs_secret_into_the_artifact_dir_is_denied, edits: [Edit::Read("{other}")],
    deny: ["link", "{secret}", "{art}/secret"] => "errno EXDEV", allow: ["link", "{art}/own", "{art}/hard"],
    relax: None);
escape!(rename_from_outside_the_grants_is_denied, edits: [],
    deny: ["rename", "{outside}/file", "{art}/stolen"] => "errno ENOENT", allow: ["rename", "{art}/own", "{art}/renamed"],
    relax: None);
escape!(symlink_in_the_artifact_dir_does_not_reach_another_jobs_secret, edits: [],
    deny: ["read-file", "{art}/link-to-secret"] => "errno ENOENT", allow: ["read-file", "{art}/own"],
    relax: Some(&[Edit::Read("{other}")]));
escape!(write_through_a_symlink_out_of_the_artifact_dir_is_denied, edits: [],
    deny: ["write-file", "{art}/link-out"] => "errno ENOENT", allow: ["write-file", "{art}/own"],
    relax: Some(&[Edit::Write("{outside}")]));
escape!(read_another_jobs_config_is_denied, edits: [],
    deny: ["read-file", "{secret}"] => "errno ENOENT", allow: ["read-file", "/etc/passwd"],
    relax: Some(&[Edit::Read("{other}")]));
escape!(list_another_jobs_config_dir_is_denied, edits: [],
    deny: ["list-dir", "{other}"] => "errno ENOENT", allow: ["list-dir", "{art}"],
    relax: Some(&[Edit::Read("{other}")]));
escape!(read_etc_shadow_is_denied, edits: [],
    deny: ["read-file", "/etc/shadow"] => "errno ENOENT", allow: ["read-file", "/etc/group"],
    relax: Some(&[Edit::Read("/etc/shadow"), Edit::User("root")]));
escape!(read_etc_shadow_is_denied_to_the_dropped_user_even_when_granted, edits: [Edit::Read("/etc/shadow")],
    deny: ["read-file", "/etc/shadow"] => "errno EACCES", allow: ["read-file", "/etc/group"],
    relax: Some(&[Edit::User("root")]));
escape!(list_root_home_is_denied, edits: [],
    deny: ["list-dir", "/root"] => "errno ENOENT", allow: ["list-dir", "/usr/bin"],
    relax: Some(&[Edit::Read("/root"), Edit::User("root")]));
escape!(execute_a_binary_from_the_artifact_dir_is_denied, edits: [],
    deny: ["exec", "{art}/true"] => "errno EACCES", allow: ["exec", "/bin/true"],
    relax: Some(&[Edit::Execute("{art}")]));
// The dynamic loader runs a file it can map executable (`ld.so FILE`), execute permission or
// not: Landlock's execute right does not cover the mapping; the view's noexec mount does.
escape!(a_written_binary_cannot_be_mapped_executable_for_the_dynamic_loader, edits: [],
    deny: ["mmap-exec", "{art}/true"] => "errno EPERM", allow: ["mmap-exec", "/bin/true"],
    relax: Some(&[Edit::Execute("{art}")]), control: true);
escape!(execute_a_binary_from_tmp_is_denied, edits: [Edit::Write("{tmp}")],
    deny: ["exec", "{tmp}/true"] => "errno EACCES", allow: ["write-file", "{tmp}/x"],
    relax: Some(&[Edit::Execute("{tmp}")]));

// --- Privilege: identity, capabilities, no_new_privs ---------------------------------------

// The seccomp filter refuses these whatever the identity and capabilities (no relaxed variant).
escape!(unshare_of_a_mount_namespace_is_denied, edits: [],
    deny: ["unshare-mount"] => "errno EPERM", allow: ["read-file", "/proc/self/status"],
    relax: None);
escape!(unshare_of_a_user_namespace_is_denied, edits: [],
    deny: ["unshare-user"] => "errno EPERM", allow: ["read-file", "/proc/self/status"],
    relax: None, control: true);
escape!(chroot_is_denied, edits: [Edit::Write("{tmp}")],
    deny: ["chroot", "{tmp}"] => "errno EPERM", allow: ["list-dir", "{art}"],
    relax: None);
// Landlock does not mediate chmod, chown, utime or setxattr: uid 0, even with no capability,
// owns every root file (the setuid bit on a copy of `id`, `chmod 640 /etc/shadow`). No
// shipped profile runs as root (tests/review.rs); this shows why.
escape!(chmod_of_a_root_owned_file_is_denied, edits: [Edit::Write("{rootfile}")],
    deny: ["chmod", "{rootfile}", "4755"] => "errno EPERM", allow: ["chmod", "{art}/own", "600"],
    relax: Some(&[Edit::User("root")]));
escape!(setuid_to_root_is_denied, edits: [],
    deny: ["setuid", "0"] => "errno EPERM", allow: ["setuid", "{vcap_uid}"],
    relax: Some(&[Edit::Caps("CAP_SETUID")]));

// --- Processes: the pid namespace, then signal scoping ---------------------------------------
// As root the action has its own pid namespace: a process outside cannot be named (ESRCH), so
// the signal scope key no longer decides it (no relaxed variant).

// ptrace itself is refused by the seccomp filter.
escape!(ptrace_of_a_process_outside_is_denied, edits: [],
    deny: ["ptrace", "{outside_pid}"] => "errno EPERM", allow: ["kill", "self", "0"],
    relax: None, outside: true, control: true);
escape!(signal_to_a_process_outside_is_denied, edits: [],
    deny: ["kill", "{outside_pid}", "0"] => "errno ESRCH", allow: ["kill", "self", "0"],
    relax: None, outside: true);
escape!(read_the_environment_of_a_process_outside_is_denied, edits: [],
    deny: ["read-file", "/proc/{outside_pid}/environ"] => "errno ENOENT", allow: ["read-file", "/proc/self/environ"],
    relax: None, outside: true);

// --- Network and sockets ----------------------------------------------------------------

/// With no TCP granted, the seccomp filter refuses the TCP socket itself (under it, the
/// network namespace holds only a loopback where nothing listens, and Landlock from ABI 4
/// refuses the connect).
fn tcp_denied() -> &'static str {
    "errno EPERM"
}

/// Another port behind a granted endpoint: Landlock's port rule (ABI 4 on) refuses the connect;
/// below, the network namespace's loopback has nothing listening there.
fn port_denied() -> &'static str {
    if bbr_runner::kernel::landlock_abi().1 >= 4 {
        "errno EACCES"
    } else {
        "errno ECONNREFUSED"
    }
}

/// A bare port: Landlock's rule (ABI 4), and no network namespace, so the abstract-socket scope
/// needs Landlock too (ABI 6); below 6, strict refuses the profile (exit 121) and nothing runs.
fn bare_port_denied() -> &'static str {
    if bbr_runner::kernel::landlock_abi().1 >= 6 {
        "errno EACCES"
    } else {
        "refused"
    }
}

// An endpoint named with its host: a network namespace whose only way out is the runner's
// forwarder to it (every ABI), and Landlock's port rule from ABI 4.
escape!(tcp_connect_to_a_port_not_granted_is_denied, edits: [Edit::Connect("127.0.0.1:{port_ok}")],
    deny: ["connect-tcp", "127.0.0.1:{port_no}"] => port_denied(), allow: ["connect-tcp", "127.0.0.1:{port_ok}"],
    relax: Some(&[Edit::Connect("127.0.0.1:{port_no}")]));
// A bare port (any host) is Landlock's alone: the action shares the host's network.
escape!(tcp_connect_to_a_bare_port_not_granted_is_denied_by_landlock_or_refused, edits: [Edit::Connect("{port_ok}")],
    deny: ["connect-tcp", "127.0.0.1:{port_no}"] => bare_port_denied(), allow: ["read-file", "/proc/self/status"],
    relax: None);
// No TCP granted: a network namespace with loopback only (nothing listens there).
escape!(tcp_connect_is_denied_when_no_port_is_granted, edits: [Edit::Sockets("{sockets}/db.sock")],
    deny: ["connect-tcp", "127.0.0.1:{port_ok}"] => tcp_denied(), allow: ["connect-unix", "{sockets}/db.sock"],
    relax: Some(&[Edit::Connect("127.0.0.1:{port_ok}")]));

// MPTCP and TCP Fast Open are not `connect`: Landlock's port rules miss them; the seccomp filter
// refuses the MPTCP protocol and the MSG_FASTOPEN flag. No key allows them.
escape!(mptcp_to_a_port_not_granted_is_denied, edits: [Edit::Connect("127.0.0.1:{port_ok}")],
    deny: ["mptcp-connect", "127.0.0.1:{port_no}"] => "errno EPERM", allow: ["connect-tcp", "127.0.0.1:{port_ok}"],
    relax: None, control: true);
escape!(tcp_fast_open_to_a_port_not_granted_is_denied, edits: [Edit::Connect("127.0.0.1:{port_ok}")],
    deny: ["tfo-send", "127.0.0.1:{port_no}"] => "errno EPERM", allow: ["connect-tcp", "127.0.0.1:{port_ok}"],
    relax: None, control: true);
// UDP leaves no network namespace: the host's listener receives nothing (own check below).

// Abstract sockets belong to the network namespace: the action's own has none of the host's.
escape!(abstract_unix_socket_outside_is_denied, edits: [Edit::Sockets("{sockets}/db.sock")],
    deny: ["connect-abstract", "{abstract}"] => "errno ECONNREFUSED", allow: ["connect-unix", "{sockets}/db.sock"],
    relax: None);
escape!(hidden_unix_socket_next_to_the_exposed_one_is_unreachable, edits: [Edit::Sockets("{sockets}/db.sock")],
    deny: ["connect-unix", "{sockets}/other.sock"] => "errno ENOENT", allow: ["connect-unix", "{sockets}/db.sock"],
    relax: Some(&[Edit::NoSockets, Edit::Sockets("{sockets}/db.sock\", \"{sockets}/other.sock")]));

// --- Limits -------------------------------------------------------------------------------

/// `memory` is the action's cgroup limit (not RLIMIT_AS): the allocation is made, and the
/// kernel's OOM killer ends the action when it touches more than the limit.
#[test]
fn memory_beyond_the_limit_is_killed() {
    let fx = Fx::new();
    let profile = fx.profile(&[]);
    let out = fx.probe(&profile, &["alloc", "2048"]);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the action was killed by SIGKILL"),
        "{}",
        text(&out)
    );
    let out = fx.probe(&profile, &["alloc", "64"]);
    assert!(out.status.success(), "allowed neighbour\n{}", text(&out));
    let relaxed = fx.profile(&[Edit::NoLimit("memory")]);
    let out = fx.probe(&relaxed, &["alloc", "2048"]);
    assert!(out.status.success(), "without the limit\n{}", text(&out));
}

// --- Scenarios with their own checks ---------------------------------------------------------

/// A declared bind (`127.0.0.1:G`): the runner binds it on the host and hands it over, so it
/// serves from outside; a port the action binds itself is unreachable from the host (its own
/// network namespace, and Landlock's bind rule from ABI 4). The control: the same listener
/// by vcap without the sandbox is reachable.
#[test]
fn a_port_the_action_binds_itself_is_unreachable_and_the_declared_one_serves() {
    use std::io::{BufRead, Write as _};
    let fx = Fx::new();
    let (granted, denied) = (support::free_port(), support::free_port());
    let profile = fx.profile(&[Edit::Bind(Box::leak(
        format!("127.0.0.1:{granted}").into_boxed_str(),
    ))]);
    let reachable = |port: u16| {
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            std::time::Duration::from_secs(1),
        )
        .map(|mut s| {
            let _ = s.write_all(b"hello");
        })
        .is_ok()
    };
    // Starts `cmd`, waits for its first line, tries the host's connect, then ends it.
    let attempt = |mut cmd: Command, port: u16| {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        let _ = std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let ok = line.trim() == "listening" && reachable(port);
        // TERM, not KILL: the runner stops the action and waits until its sandbox is gone, so
        // the declared port it bound and handed over is free again for the next attempt (after
        // a KILL the sandbox outlived the runner an instant and held it: EADDRINUSE).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
        (ok, line)
    };
    let runner_bin = format!("{}/bbr-runner", fx.vars["bin"]);
    let mut control = Command::new("setpriv");
    control
        .args([
            "--reuid=vcap",
            "--regid=vcap",
            "--clear-groups",
            "--",
            &runner_bin,
        ])
        .args(["probe", "listen-once", &format!("127.0.0.1:{denied}")]);
    let (ok, line) = attempt(control, denied);
    assert!(ok, "the control: vcap's own listener is reachable ({line})");
    let inside = |op: &str, port: u16| {
        let mut c = Command::new(runner());
        c.args([
            "exec",
            "--profile",
            profile.to_str().expect("utf8"),
            "--var",
        ])
        .arg(format!("BBR_ARTIFACT_DIRECTORY={}/", fx.vars["art"]))
        .args(["--", &runner_bin, "probe", op, &format!("127.0.0.1:{port}")])
        .env_clear()
        .envs(kept_env());
        attempt(c, port)
    };
    let (ok, line) = inside("listen-once", denied);
    assert!(!ok, "a port the action bound itself was reachable ({line})");
    let (ok, line) = inside("accept-inherited", granted);
    assert!(ok, "the declared bind serves from outside ({line})");
}

/// mount is refused by the seccomp filter even to an action running as root with
/// CAP_SYS_ADMIN. The control: root without the sandbox, in a mount namespace of its own (the
/// host untouched), mounts the same tmpfs.
#[test]
fn mount_is_denied_even_to_root_with_cap_sys_admin() {
    let fx = Fx::new();
    let runner_bin = format!("{}/bbr-runner", fx.vars["bin"]);
    let target = format!("{}/mnt", fx.vars["art"]);
    std::fs::create_dir(&target).expect("mkdir");
    let control = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            &runner_bin,
            "probe",
            "mount-tmpfs",
        ])
        .arg(&target)
        .output()
        .expect("unshare");
    assert!(control.status.success(), "the control\n{}", text(&control));
    let profile = fx.profile(&[Edit::User("root"), Edit::Caps("CAP_SYS_ADMIN")]);
    let out = fx.probe(&profile, &["mount-tmpfs", &target]);
    assert!(stdout_of(&out).starts_with("errno EPERM"), "{}", text(&out));
    let out = fx.probe(&profile, &["read-file", "/proc/self/status"]);
    assert!(out.status.success(), "the neighbour\n{}", text(&out));
}

/// The machine's own files in /proc (here a sysctl) are root's to write: a root action that is
/// granted /proc to read cannot write them at any ABI (the fresh /proc is mounted read-only,
/// EROFS before Landlock is asked), while root outside the sandbox reaches the sysctl's handler
/// (EINVAL: "probe" is no number, so nothing changes). Reading it is the neighbour; granting
/// /proc for writing is the relaxed variant, which reaches the handler again.
#[test]
fn a_root_action_reading_proc_cannot_write_the_machines_sysctls() {
    const SYSCTL: &str = "/proc/sys/kernel/printk_ratelimit";
    let fx = Fx::new();
    let runner_bin = format!("{}/bbr-runner", fx.vars["bin"]);
    let control = Command::new(&runner_bin)
        .args(["probe", "write-file", SYSCTL])
        .output()
        .expect("probe");
    assert!(
        stdout_of(&control).starts_with("errno EINVAL"),
        "the control (root, no sandbox)\n{}",
        text(&control)
    );
    let profile = fx.profile(&[Edit::User("root")]);
    let denied = fx.probe(&profile, &["write-file", SYSCTL]);
    assert!(
        stdout_of(&denied).starts_with("errno EROFS"),
        "{}",
        text(&denied)
    );
    let neighbour = fx.probe(&profile, &["read-file", SYSCTL]);
    assert!(
        neighbour.status.success(),
        "the neighbour\n{}",
        text(&neighbour)
    );
    let relaxed = fx.probe(
        &fx.profile(&[Edit::User("root"), Edit::Write("/proc")]),
        &["write-file", SYSCTL],
    );
    assert!(
        stdout_of(&relaxed).starts_with("errno EINVAL"),
        "relaxed (/proc written)\n{}",
        text(&relaxed)
    );
}

/// A System V shared memory segment of the host's ipc namespace, readable by everyone: vcap
/// reads it outside the sandbox, the action (its own ipc namespace) cannot find it.
#[test]
fn system_v_shared_memory_outside_is_unreachable() {
    let fx = Fx::new();
    let key = 0x6262_0000 | i32::from(rand_u16());
    // SAFETY: creates, fills and later removes a segment of this test's own.
    let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o644) };
    assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
    // SAFETY: the segment is 4096 bytes; 8 are written.
    unsafe {
        let at = libc::shmat(id, std::ptr::null(), 0);
        assert!(at as isize != -1);
        std::ptr::copy_nonoverlapping(c"outside".as_ptr().cast::<u8>(), at.cast::<u8>(), 8);
        libc::shmdt(at);
    }
    let key = key.to_string();
    let control = unsandboxed(&fx, &["shm-read", &key]);
    let denied = fx.probe(&fx.profile(&[]), &["shm-read", &key]);
    let neighbour = fx.probe(&fx.profile(&[]), &["read-file", "/proc/self/status"]);
    // SAFETY: removes the segment made above.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    assert!(
        stdout_of(&control).starts_with("ok read \"outside\""),
        "{}",
        text(&control)
    );
    assert!(
        stdout_of(&denied).starts_with("errno ENOENT"),
        "{}",
        text(&denied)
    );
    assert!(neighbour.status.success(), "{}", text(&neighbour));
}

/// A datagram to a UDP listener on the host: received from vcap outside the sandbox, never from
/// the action (its own network namespace), although its own `sendto` succeeds.
#[test]
fn udp_from_the_action_never_reaches_the_host() {
    let fx = Fx::new();
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    listener
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let addr = listener.local_addr().expect("addr").to_string();
    let control = unsandboxed(&fx, &["send-udp", &addr]);
    assert!(control.status.success(), "{}", text(&control));
    assert!(listener.recv(&mut [0u8; 16]).is_ok(), "the control arrives");
    let out = fx.probe(&fx.profile(&[]), &["send-udp", &addr]);
    assert!(
        listener.recv(&mut [0u8; 16]).is_err(),
        "the action's datagram reached the host\n{}",
        text(&out)
    );
    let neighbour = fx.probe(&fx.profile(&[]), &["read-file", "/proc/self/status"]);
    assert!(neighbour.status.success(), "{}", text(&neighbour));
}

/// Processes that left the action's session and process group (double fork + setsid) do not
/// outlive it: the pid namespace's init exits with the action and the kernel kills the rest.
/// The control: the same probe run by vcap outside the sandbox leaves them running.
#[test]
fn processes_that_detached_from_the_action_do_not_outlive_it() {
    let fx = Fx::new();
    let art = PathBuf::from(&fx.vars["art"]);
    let grows = |file: &Path| {
        let before = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(600));
        std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) > before
    };
    let outside = art.join("outside-pids");
    write(&outside, "", 0o666, None);
    let control = unsandboxed(
        &fx,
        &["spawn-detached", "5", &outside.display().to_string()],
    );
    assert!(control.status.success(), "{}", text(&control));
    let still = grows(&outside);
    // Kill what the control left (host pids, written by themselves).
    for pid in std::fs::read_to_string(&outside)
        .unwrap_or_default()
        .lines()
    {
        if let Ok(p) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    assert!(still, "the control's detached processes outlive it");

    let inside = art.join("inside-pids");
    write(&inside, "", 0o666, None);
    let out = fx.probe(
        &fx.profile(&[Edit::NoLimit("processes"), Edit::NoLimit("memory")]),
        &["spawn-detached", "20", &inside.display().to_string()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!grows(&inside), "a detached process outlived the action");
    // A chain of 150 live processes, each in its own session: killing one hands the next to the
    // supervisor's reaper, more links than its kill loop goes round (the escape seen with
    // Landlock alone); and a process that forks away every millisecond. Without limits, so no
    // cgroup whose removal would kill them: the pid namespace's end does.
    let unlimited = fx.profile(&[Edit::NoLimit("processes"), Edit::NoLimit("memory")]);
    for (op, n) in [("spawn-chain", Some("150")), ("fork-hop", None)] {
        let file = art.join(format!("{op}-pids"));
        write(&file, "", 0o666, None);
        let mut args = vec![op];
        args.extend(n);
        let shown = file.display().to_string();
        args.push(&shown);
        let out = fx.probe(&unlimited, &args);
        assert!(out.status.success(), "{}", text(&out));
        assert!(!grows(&file), "{op}: a process outlived the action");
    }
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_example_writes_the_artifact_and_not_etc() {
    let fx = Fx::new();
    let profile = PathBuf::from(EXAMPLE_PROFILE);
    let art = &fx.vars["art"];
    let marker = format!("/etc/bbr-escape-{}", rand_u16());
    let script = format!("echo x > {art}/ok && echo x > {marker}");
    let out = fx.exec(&profile, &["sh", "-c", &script], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        Path::new(art).join("ok").is_file(),
        "the allowed write happened"
    );
    assert!(!Path::new(&marker).exists(), "the write to /etc was denied");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out)
    );
}

#[test]
fn setuid_root_binary_does_not_elevate() {
    let fx = Fx::new();
    let (uid, _) = vcap();
    let profile = fx.profile(&[]);
    let out = fx.exec(&profile, &["{bin}/id-suid", "-u"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout_of(&out).trim(),
        uid.to_string(),
        "still vcap: no_new_privs ignores the setuid bit"
    );
    // Outside the sandbox the same program does elevate: the setuid bit is real.
    let outside = Command::new(shared_bin().join("id-suid"))
        .arg("-u")
        .uid(uid)
        .output()
        .expect("id");
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "0");
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn capabilities_are_zero_in_proc_self_status() {
    let fx = Fx::new();
    let out = fx.probe(&fx.profile(&[]), &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = stdout_of(&out);
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, key),
            "0000000000000000",
            "{key}\n{status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    // A kept capability shows up, in every set that carries it across exec.
    let kept = fx.probe(
        &fx.profile(&[Edit::Caps("CAP_NET_BIND_SERVICE")]),
        &["status"],
    );
    let kept = stdout_of(&kept);
    for key in ["CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&kept, key),
            "0000000000000400",
            "{key}\n{kept}"
        );
    }
}

#[test]
fn rlimits_hold_and_cannot_be_raised() {
    let fx = Fx::new();
    let profile = fx.profile(&[]);
    let out = fx.exec(
        &profile,
        &[
            "sh",
            "-c",
            "ulimit -n; ulimit -c; ulimit -n 512 && ulimit -n",
        ],
        &[],
    );
    assert_eq!(stdout_of(&out), "1024\n0\n512\n", "{}", text(&out));
    let raise = fx.exec(&profile, &["sh", "-c", "ulimit -n 4096"], &[]);
    assert!(
        !raise.status.success(),
        "raising the hard limit must fail\n{}",
        text(&raise)
    );
    let relaxed = fx.profile(&[Edit::NoLimit("open_files")]);
    let raise = fx.exec(&relaxed, &["sh", "-c", "ulimit -n 4096"], &[]);
    assert!(
        raise.status.success(),
        "without the limit it can be raised\n{}",
        text(&raise)
    );
}

#[test]
fn environment_does_not_leak_secrets() {
    let fx = Fx::new();
    let secrets = [
        ("PGPASSWORD", "hunter2"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ("AWS_ACCESS_KEY_ID", "aws-id"),
    ];
    let out = fx.exec(&fx.profile(&[]), &["env"], &secrets);
    let env = stdout_of(&out);
    assert!(out.status.success(), "{}", text(&out));
    for (k, v) in secrets {
        assert!(!env.contains(k) && !env.contains(v), "{k} leaked:\n{env}");
    }
    assert!(
        env.lines().any(|l| l == "LANG=C.UTF-8"),
        "what the profile sets is there:\n{env}"
    );
    let passed = fx.exec(&fx.profile(&[Edit::Pass("PGPASSWORD")]), &["env"], &secrets);
    assert!(
        stdout_of(&passed)
            .lines()
            .any(|l| l == "PGPASSWORD=hunter2"),
        "{}",
        text(&passed)
    );
}

#[test]
fn file_descriptors_do_not_leak() {
    let fx = Fx::new();
    let profile = fx.profile(&[]);
    let runner_copy = format!("{}/bbr-runner", fx.vars["bin"]);
    let art = format!("BBR_ARTIFACT_DIRECTORY={}/", fx.vars["art"]);
    let leaked = std::fs::File::open("/etc/hostname").expect("open");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    let mut cmd = Command::new(runner());
    cmd.args([
        "exec",
        "--profile",
        profile.to_str().expect("utf8"),
        "--var",
        &art,
        "--",
        &runner_copy,
        "probe",
        "fds",
    ]);
    cmd.env_clear().envs(kept_env());
    pass_as_fd9(&mut cmd, fd);
    let out = cmd.output().expect("run");
    assert_eq!(
        stdout_of(&out).trim(),
        "ok 0,1,2",
        "only stdio reaches the action\n{}",
        text(&out)
    );
    // The neighbour: the runner itself did receive descriptor 9.
    let mut direct = Command::new(&runner_copy);
    direct.args(["probe", "fds"]);
    pass_as_fd9(&mut direct, fd);
    let out = direct.output().expect("run");
    assert!(stdout_of(&out).contains(",9"), "{}", text(&out));
}

/// Makes `fd` descriptor 9 of the child, inheritable. When `fd` already is 9,
/// `dup2` does nothing and would leave it close-on-exec, so the flag is
/// cleared either way (the neighbour check failed once that way in CI).
fn pass_as_fd9(cmd: &mut Command, fd: i32) {
    // SAFETY: only dup2 and fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 9 && libc::dup2(fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(9, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(marker)
                .then(|| format!("{} {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[test]
fn timeout_kills_a_process_that_ignores_term_and_its_children() {
    let fx = Fx::new();
    let profile = fx.profile(&[Edit::Timeout("1s", "1s")]);
    let marker = format!("1000.{}", rand_u16());
    let script =
        format!("trap '' TERM; (trap '' TERM; sleep {marker}) & sleep {marker}; sleep {marker}");
    let out = fx.exec(&profile, &["sh", "-c", &script], &[]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("timed out after 1s") && stderr.contains("SIGKILL"),
        "{stderr}"
    );
    assert_eq!(
        processes_with(&marker),
        Vec::<String>::new(),
        "nothing the action started survives"
    );
    // The neighbour: a quick action under the same timeout succeeds.
    let quick = fx.exec(&profile, &["true"], &[]);
    assert!(quick.status.success(), "{}", text(&quick));
}

#[test]
fn a_child_that_leaves_the_process_group_does_not_outlive_the_action() {
    let fx = Fx::new();
    let profile = fx.profile(&[]);
    let marker = format!("1000.{}", rand_u16());
    let out = fx.exec(
        &profile,
        &[
            "sh",
            "-c",
            &format!("setsid sleep {marker} & sleep 0.2; exit 3"),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "the action's status is passed through\n{}",
        text(&out)
    );
    assert_eq!(processes_with(&marker), Vec::<String>::new());
}

#[test]
fn a_signal_to_the_runner_stops_the_action_and_is_reported() {
    let fx = Fx::new();
    let profile = fx.profile(&[Edit::Timeout("1h", "1s")]);
    let marker = format!("1000.{}", rand_u16());
    let art = format!("BBR_ARTIFACT_DIRECTORY={}/", fx.vars["art"]);
    let child = Command::new(runner())
        .args([
            "exec",
            "--profile",
            profile.to_str().expect("utf8"),
            "--var",
            &art,
            "--",
            "sleep",
            &marker,
        ])
        .env_clear()
        .envs(kept_env())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    for _ in 0..100 {
        if !processes_with(&marker)
            .iter()
            .all(|p| p.contains("bbr-runner"))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("received SIGTERM"),
        "{}",
        text(&out)
    );
    assert_eq!(processes_with(&marker), Vec::<String>::new());
}

/// Runs `args` as root (or as vcap through setpriv, outside any sandbox) in a new session whose
/// controlling terminal is a new pty, with the pty as stdin, stdout and stderr; returns the exit
/// code and what reached the terminal.
fn on_a_terminal(args: &[&str], as_vcap: bool) -> (Option<i32>, String) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = if as_vcap {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=vcap", "--regid=vcap", "--clear-groups", "--"]);
        c.args(args);
        c
    } else {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    cmd.stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave.try_clone().expect("dup"));
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn on a pty");
    drop(cmd);
    drop(slave);
    let status = child.wait().expect("wait");
    let mut master = std::fs::File::from(pty.master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // SAFETY: makes the master non-blocking; it is ours.
    unsafe {
        let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    (status.code(), String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn the_action_cannot_push_input_into_the_callers_terminal() {
    let fx = Fx::new();
    // /dev/tty granted, so that only the missing controlling terminal (setsid) refuses it.
    let profile = fx.profile(&[Edit::Write("/dev/tty")]);
    let _tiocsti = LegacyTiocsti::allow();
    let probe = format!("{}/bbr-runner", fx.vars["bin"]);
    // The control: vcap, no sandbox, on the same kind of terminal: TIOCSTI works.
    let (code, shown) = on_a_terminal(&[&probe, "probe", "tiocsti"], true);
    assert_eq!(
        code,
        Some(0),
        "control: TIOCSTI works without the sandbox\n{shown}"
    );
    assert!(shown.contains("ok fd 0"), "{shown}");
    // Through the runner: its own session, /dev/null as stdin, its output relayed.
    let art = format!("BBR_ARTIFACT_DIRECTORY={}/", fx.vars["art"]);
    let sandboxed = |cmd: &[&str]| {
        let mut args = vec![
            runner(),
            "exec",
            "--profile",
            profile.to_str().expect("utf8"),
            "--var",
            &art,
            "--",
        ];
        args.extend_from_slice(cmd);
        on_a_terminal(&args, false)
    };
    let (code, shown) = sandboxed(&[&probe, "probe", "tiocsti"]);
    assert_eq!(code, Some(1), "TIOCSTI is refused in the sandbox\n{shown}");
    // The neighbour: the action's output reaches the caller's terminal (relayed).
    assert!(shown.contains("errno ENOTTY"), "{shown}");
    // Escape sequences (a title, the clipboard) reach it visibly, not as commands.
    let (code, shown) = sandboxed(&[
        "printf",
        "A\\033]0;spoofed\\007B\\033]52;c;ZWNobyBwd25lZAo=\\007",
    ]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("A^[]0;spoofed^GB^[]52;c;") && !shown.contains('\u{1b}'),
        "{shown:?}"
    );
}

const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;

/// Runs `args` in a new session keyring of root's holding a `user` key `bbr-escape-secret`.
fn with_roots_session_key(args: &[&str]) -> Output {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    // SAFETY: keyctl and add_key only; the strings are static.
    unsafe {
        cmd.pre_exec(|| {
            if libc::syscall(libc::SYS_keyctl, 1 as libc::c_long, std::ptr::null::<u8>()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let payload = b"hunter2";
            if libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"bbr-escape-secret".as_ptr(),
                payload.as_ptr(),
                payload.len(),
                KEY_SPEC_SESSION_KEYRING,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("spawn")
}

#[test]
fn the_callers_session_keyring_is_not_the_actions() {
    let fx = Fx::new();
    let profile = fx.profile(&[]);
    let probe = format!("{}/bbr-runner", fx.vars["bin"]);
    // The control: vcap, no sandbox, in root's session keyring: reads root's key.
    let out = with_roots_session_key(&[
        "setpriv",
        "--reuid=vcap",
        "--regid=vcap",
        "--clear-groups",
        "--",
        &probe,
        "probe",
        "key-search",
        "bbr-escape-secret",
    ]);
    assert!(
        stdout_of(&out).starts_with("ok read 7 bytes"),
        "{}",
        text(&out)
    );
    let art = format!("BBR_ARTIFACT_DIRECTORY={}/", fx.vars["art"]);
    let exec = |op: &[&str]| {
        let mut a = vec![
            runner(),
            "exec",
            "--profile",
            profile.to_str().expect("utf8"),
            "--var",
            &art,
            "--",
            &probe,
            "probe",
        ];
        a.extend_from_slice(op);
        with_roots_session_key(&a)
    };
    // The seccomp filter refuses the key store outright (keyctl, add_key, request_key); the
    // session step's new keyring stays underneath for where no filter applies (inside bpm).
    let out = exec(&["key-search", "bbr-escape-secret"]);
    assert!(stdout_of(&out).starts_with("errno EPERM"), "{}", text(&out));
    // The neighbour: the same sandbox runs the probe's other operations.
    let out = exec(&["read-file", "/proc/self/status"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `exec` of `probe OP...` under `profile` with the runner's monit broker, whose control file
/// names an HTTP interface where nothing listens: the broker starts, and each request fails fast
/// (monit down), which is all these scenarios need.
fn broker_probe_args(fx: &Fx, profile: &Path, op: &[&str]) -> Vec<String> {
    let rc = PathBuf::from(&fx.vars["root"]).join("monitrc");
    write(
        &rc,
        &format!(
            "set httpd port {} and use address 127.0.0.1\n  allow admin:pw\n",
            fx.vars["port_free"]
        ),
        0o600,
        None,
    );
    let mut args = vec![
        "exec".to_string(),
        format!("--profile={}", profile.display()),
        format!("--var=BBR_ARTIFACT_DIRECTORY={}/", fx.vars["art"]),
        format!("--monit-control-file={}", rc.display()),
        "--monit-service=svc".into(),
        "--".into(),
        format!("{}/bbr-runner", fx.vars["bin"]),
        "probe".into(),
    ];
    args.extend(op.iter().map(|o| o.to_string()));
    args
}

/// Runs the runner with `args`, killing it after 60 s (a hung supervisor fails the test).
fn run_with_watchdog(args: &[String]) -> (Output, bool) {
    let mut child = Command::new(runner())
        .args(args)
        .env_clear()
        .envs(kept_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut hung = false;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            hung = true;
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child.wait_with_output().expect("output"), hung)
}

#[test]
fn an_action_that_floods_the_broker_without_reading_cannot_hold_the_supervisor() {
    let fx = Fx::new();
    let profile = fx.profile(&[Edit::Timeout("2s", "1s")]);
    let (out, hung) = run_with_watchdog(&broker_probe_args(
        &fx,
        &profile,
        &["broker-flood", "100000"],
    ));
    assert!(
        !hung,
        "the supervisor hung behind an action that does not read\n{}",
        text(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(124),
        "the timeout fired\n{}",
        text(&out)
    );
    // The neighbour: the broker answers a well-behaved request in the same setting.
    let (out, hung) = run_with_watchdog(&broker_probe_args(&fx, &profile, &["broker", "status"]));
    assert!(!hung);
    assert!(
        stdout_of(&out).starts_with("error monit at 127.0.0.1:"),
        "an answer (monit is down here)\n{}",
        text(&out)
    );
}

/// The host pid of the descendant of `runner` whose pid in its own namespace is `ns_pid`.
fn host_pid_of(runner: i32, ns_pid: i32) -> i32 {
    let field = |pid: &str, key: &str| -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with(key))
            .map(|l| l[key.len()..].trim().to_string())
    };
    let descends = |mut pid: i32| {
        for _ in 0..4 {
            match field(&pid.to_string(), "PPid:").and_then(|p| p.parse().ok()) {
                Some(p) if p == runner => return true,
                Some(p) => pid = p,
                None => return false,
            }
        }
        false
    };
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            field(&pid.to_string(), "NSpid:").is_some_and(|ns| {
                ns.split_whitespace().last() == Some(ns_pid.to_string().as_str())
                    && ns.split_whitespace().count() > 1
            }) && descends(*pid)
        })
        .unwrap_or_else(|| {
            panic!("no process of runner {runner} has pid {ns_pid} in its namespace")
        })
}

#[test]
fn the_brokers_descriptor_taken_by_another_process_is_refused() {
    let fx = Fx::new();
    let profile = fx.profile(&[Edit::Timeout("30s", "1s")]);
    let args = broker_probe_args(&fx, &profile, &["broker-hold"]);
    let mut child = Command::new(runner())
        .args(&args)
        .env_clear()
        .envs(kept_env())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the action's pid and descriptor");
    let mut words = line.split_whitespace();
    let (pid, fd): (i32, i32) = match (words.nth(1), words.nth(1)) {
        (Some(p), Some(f)) => (p.parse().expect("pid"), f.parse().expect("fd")),
        _ => panic!("unexpected: {line}"),
    };
    // The action printed its pid in its own pid namespace: find it as the host sees it.
    let pid = host_pid_of(child.id() as i32, pid);
    // As another process of the same user could (pidfd_getfd, or ptrace): take the descriptor.
    // SAFETY: plain syscalls with integer arguments.
    let taken = unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, fd, 0)
    };
    assert!(
        taken >= 0,
        "pidfd_getfd: {}",
        std::io::Error::last_os_error()
    );
    let taken = taken as i32;
    nix::sys::socket::send(taken, b"stop", nix::sys::socket::MsgFlags::empty()).expect("send");
    let mut buf = [0u8; 512];
    let n =
        nix::sys::socket::recv(taken, &mut buf, nix::sys::socket::MsgFlags::empty()).expect("recv");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answer.starts_with("error refused: the request came from pid"),
        "{answer}"
    );
}

#[test]
fn the_broker_sends_monits_credentials_to_no_one_but_root() {
    let fx = Fx::new();
    let profile = fx.profile(&[Edit::Timeout("30s", "1s")]);
    let probe = format!("{}/bbr-runner", fx.vars["bin"]);
    // monit is down, and a vcap process took its port.
    let mut listener = as_vcap(&probe)
        .args([
            "probe",
            "listen-once",
            &format!("127.0.0.1:{}", fx.vars["port_free"]),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("listener");
    let mut out = std::io::BufReader::new(listener.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("listening");
    assert_eq!(line.trim(), "listening");
    let args = broker_probe_args(&fx, &profile, &["broker", "status"]);
    let (answer, hung) = run_with_watchdog(&args);
    assert!(!hung);
    assert!(
        stdout_of(&answer).contains("is uid")
            && stdout_of(&answer).contains("not root: monit's credentials are not sent"),
        "{}",
        text(&answer)
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("listener output");
    let _ = listener.wait();
    // The neighbour: the listener was reached (the broker did connect), and got nothing.
    assert!(rest.starts_with("ok read 0 bytes"), "{rest}");
}
