//! The plan: a profile resolved against this machine (users, paths, kernel) into exactly what
//! the sandbox will enforce. Built in the supervisor, before anything is forked; a plan that
//! cannot be enforced as declared is refused here, with every reason, under `strict`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use landlock::{Access as _, AccessFs, BitFlags, ABI};

use crate::cgroup;
use crate::kernel::KernelInfo;
use crate::layers;
use crate::profile::{Access, Enforcement, Origin, Profile};

/// One Landlock filesystem rule: the path is opened inside the sandbox, after the mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRule {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockPlan {
    pub abi: u8,
    pub handled_fs: BitFlags<AccessFs>,
    pub rules: Vec<FsRule>,
    /// TCP is handled (everything not listed denied) from ABI 4 on.
    pub handle_tcp: bool,
    /// UDP is handled (all denied) from ABI 10 on.
    pub handle_udp: bool,
    pub connect_tcp: Vec<u16>,
    pub bind_tcp: Vec<u16>,
    pub scope_abstract_unix_socket: bool,
    pub scope_signal: bool,
    pub strict: bool,
}

/// A directory whose content is replaced by exactly the listed sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketDir {
    pub dir: PathBuf,
    pub sockets: Vec<PathBuf>,
}

/// The namespaces the action's first process is created in (clone3, by the supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Namespaces {
    /// A private mount namespace holding `Plan::view` as its root.
    pub mount: bool,
    /// A pid namespace: the sandbox's first process is its pid 1 (a reaper), the action pid 2.
    pub pid: bool,
    /// System V IPC and POSIX message queues of its own.
    pub ipc: bool,
    /// A network namespace with loopback only (and the supervisor's forwarders, when declared).
    pub net: bool,
}

impl Namespaces {
    pub fn any(self) -> bool {
        self.mount || self.pid || self.ipc || self.net
    }

    /// The clone flags that create them.
    pub fn clone_flags(self) -> u64 {
        let mut f = 0u64;
        for (on, flag) in [
            (self.mount, libc::CLONE_NEWNS),
            (self.pid, libc::CLONE_NEWPID),
            (self.ipc, libc::CLONE_NEWIPC),
            (self.net, libc::CLONE_NEWNET),
        ] {
            if on {
                f |= flag as u64;
            }
        }
        f
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Socket,
    Device,
}

/// One granted path in the action's root: bind-mounted from the host, read-only unless
/// written, `noexec` unless executed, `nodev` unless a device, `nosuid` always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    /// Canonical: no symlink on the way (opened with RESOLVE_NO_SYMLINKS).
    pub path: PathBuf,
    pub kind: EntryKind,
    pub write: bool,
    pub exec: bool,
}

/// The action's filesystem: a read-only tmpfs root holding only the granted paths, the
/// symlinks on the way to them as declared, and a fresh /proc when it is granted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    pub entries: Vec<ViewEntry>,
    /// (link, target as read): the symlinks met on the way to a declared path.
    pub links: Vec<(PathBuf, PathBuf)>,
    pub proc: bool,
    /// A `/proc` grant is a write grant: else the fresh /proc is mounted read-only (its
    /// system-wide files, such as /proc/sys and /proc/sysrq-trigger, are root's to write).
    pub proc_writable: bool,
    /// The caller's working directory, kept when it is in the view (else `/`).
    pub cwd: PathBuf,
    /// Replaces the host's /etc/hosts: the names of forwarded endpoints, which the action
    /// cannot look up itself (no DNS leaves its network namespace).
    pub hosts: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    OpenFiles,
    Processes,
    Memory,
    FileSize,
    CoreFileSize,
    CpuSeconds,
}

impl Rlimit {
    pub fn name(self) -> &'static str {
        match self {
            Rlimit::OpenFiles => "open_files",
            Rlimit::Processes => "processes",
            Rlimit::Memory => "memory",
            Rlimit::FileSize => "file_size",
            Rlimit::CoreFileSize => "core_file_size",
            Rlimit::CpuSeconds => "cpu_seconds",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub profile: PathBuf,
    pub namespaces: Namespaces,
    /// Set with `namespaces.mount`: the action's whole filesystem.
    pub view: Option<View>,
    /// Without a view: the sockets' directories, covered to hold only the declared sockets.
    pub socket_dirs: Vec<SocketDir>,
    pub rlimits: Vec<(Rlimit, u64)>,
    pub landlock: Option<LandlockPlan>,
    /// `None`: stay as the caller (only when the caller already is the profile's user).
    pub identity: Option<Identity>,
    pub keep_capabilities: Vec<caps::Capability>,
    pub program: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    /// What is declared but will not be enforced here (best_effort only; strict refuses).
    pub not_enforced: Vec<String>,
    /// Descriptors the action receives open (the broker's end), beyond 0, 1 and 2.
    pub keep_fds: Vec<std::os::fd::RawFd>,
    /// `processes` and `memory` for a per-action cgroup, which the supervisor makes at run time
    /// (falling back to the rlimits, with a notice, when it cannot).
    pub cgroup: Option<CgroupRequest>,
    /// Set when the supervisor places the child in the run's cgroup while the child builds its
    /// view: the read end of the pipe on which the supervisor says how that went. The child
    /// waits for it before its rlimits step (`sandbox::cgroup`).
    pub cgroup_placement: Option<std::os::fd::RawFd>,
    /// The rlimits that stand in for the cgroup when the supervisor could not make it.
    pub cgroup_fallback: Vec<(Rlimit, u64)>,
    /// Set when the supervisor moves the child off its own CPU once created, so that both work
    /// at once (`cpus`): the pipe on which it says it has, and the CPUs the child goes back to
    /// then, its first step (so the scheduler may still move it where there is room).
    pub cpu_kick: Option<(std::os::fd::RawFd, crate::cpus::CpuMask)>,
    /// With a pid namespace: where its init writes the signal that killed the action.
    pub init_status: Option<std::os::fd::RawFd>,
    /// The declared TCP endpoints, each reached through a listener on the same address inside
    /// the action's network namespace, forwarded by the supervisor.
    pub forwards: Vec<std::net::SocketAddr>,
    /// Where the child sends those listeners (set by the supervisor).
    pub forward_channel: Option<std::os::fd::RawFd>,
    /// The action's network namespace, made by the supervisor while it built the plan (loopback
    /// already up): the child enters it (`setns`) instead of `clone3` making one.
    pub net_namespace: Option<std::os::fd::RawFd>,
    /// Addresses the supervisor binds on the host and hands to the action (declared binds).
    pub listeners: Vec<std::net::SocketAddr>,
    /// The seccomp filter, compiled here (it allocates), installed last before exec.
    pub seccomp: Option<std::sync::Arc<crate::sandbox::seccomp::Program>>,
    /// Said on stderr before the run, under `strict` too: how a limit is enforced differently
    /// from what its name suggests.
    pub notices: Vec<String>,
}

/// The limits a per-action cgroup enforces instead of RLIMIT_NPROC and RLIMIT_AS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRequest {
    /// Names the run's cgroup (with the runner's pid and start time).
    pub label: String,
    pub limits: cgroup::Limits,
    /// The action's user, for the fallback notice.
    pub user: String,
}

impl CgroupRequest {
    /// The rlimits that stand in for the cgroup when it cannot be made.
    pub fn rlimits(&self) -> Vec<(Rlimit, u64)> {
        [
            (Rlimit::Processes, self.limits.pids),
            (Rlimit::Memory, self.limits.memory),
        ]
        .into_iter()
        .filter_map(|(r, v)| v.map(|v| (r, v)))
        .collect()
    }
}

/// What the operator reads when `processes` and `memory` fall back to rlimits.
pub fn rlimit_notice(user: &str, why: &str) -> String {
    format!(
        "notice: limits.processes and limits.memory apply as rlimits, not per action ({why}): RLIMIT_NPROC counts every process and thread of {user} on this machine, so the action fails to start (EAGAIN, exit 126) or to fork when {user} already runs that many elsewhere, and does not apply to root; RLIMIT_AS counts address space, not memory"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("refused: {}", .0.join("; "))]
    Refused(Vec<String>),
    #[error("command `{0}` not found in the sandbox's PATH ({1})")]
    NotFound(String, String),
    #[error("{0}")]
    Usage(String),
}

impl PlanError {
    /// The runner's exit code for this refusal (`exit`); nothing ran.
    pub fn exit_code(&self) -> i32 {
        match self {
            PlanError::Refused(_) => crate::exit::REFUSED,
            PlanError::NotFound(..) => crate::exit::NOT_FOUND,
            PlanError::Usage(_) => crate::exit::USAGE,
        }
    }
}

pub fn abi_enum(abi: u8) -> ABI {
    match abi {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        7 => ABI::V7,
        8 => ABI::V8,
        9 => ABI::V9,
        _ => ABI::V10,
    }
}

fn access_bits(
    access: Access,
    abi: ABI,
    handled: BitFlags<AccessFs>,
    is_dir: bool,
) -> BitFlags<AccessFs> {
    let bits = match access {
        Access::Read => AccessFs::ReadFile | AccessFs::ReadDir,
        Access::Execute => AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir,
        // Write never includes execute (nothing written can be run) nor device creation.
        Access::Write => handled & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock),
    };
    let bits = bits & handled;
    if is_dir {
        bits
    } else {
        bits & AccessFs::from_file(abi)
    }
}

#[derive(Debug)]
pub struct Request<'a> {
    pub profile: &'a Profile,
    pub command: &'a [String],
    /// The caller's environment, for `environment.pass`.
    pub caller_env: &'a BTreeMap<String, String>,
    pub kernel: &'a KernelInfo,
    /// Inside bpm's container, whose cgroup (from the bpm.yml rendered from the same profile)
    /// already limits the processes and memory of the whole action.
    pub inside_bpm: bool,
    /// Names the run's cgroup: `JOB ACTION`, or `exec`.
    pub label: &'a str,
}

/// What this kernel (or the cap) has of what the profile pins: the facts every layer decision
/// is made from.
fn facts(p: &Profile, kernel: &KernelInfo, inside_bpm: bool) -> layers::Facts {
    layers::Facts {
        abi: p.abi.min(kernel.landlock_abi),
        // Inside bpm's container the runner makes namespaces of its own only when bpm starts it
        // privileged (root with CAP_SYS_ADMIN, no filter): `kernel.namespaces` says so there.
        namespaces: kernel.namespaces && !(inside_bpm && kernel.seccomp_filtered),
        // Inside bpm's container bpm's own filter is in place, unless bpm runs it privileged
        // (no filter at all): then the runner applies its own.
        seccomp: layers::SECCOMP && !(inside_bpm && kernel.seccomp_filtered),
        forwarder: layers::FORWARDER,
    }
}

/// Whether the plan `build` makes from the same profile and kernel gives the action a network
/// namespace: known before the plan, so that the supervisor can make it meanwhile
/// (`backend::native::NetNamespace`).
pub fn network_namespace_wanted(p: &Profile, kernel: &KernelInfo, inside_bpm: bool) -> bool {
    layers::network_namespace(p, &facts(p, kernel, inside_bpm))
}

pub fn build(req: Request<'_>) -> Result<Plan, PlanError> {
    let p = req.profile;
    let strict = p.enforcement == Enforcement::Strict;
    let mut refusals = Vec::new();
    let mut not_enforced = Vec::new();

    // What this kernel (or the cap) has of what the profile pins, and which layer enforces
    // each declared restriction with it: one that none enforces is a refusal under strict.
    let facts = facts(p, req.kernel, req.inside_bpm);
    let eff_abi = facts.abi;
    not_enforced.extend(layers::unenforced(&layers::decide(p, &facts)));
    let abi = abi_enum(eff_abi);
    let handled_fs = AccessFs::from_all(abi);
    let mut by_path: BTreeMap<PathBuf, BitFlags<AccessFs>> = BTreeMap::new();
    let mut resolved = Vec::new();
    for g in &p.grants {
        match resolve_grant(&g.path, g.access, &g.origin) {
            Ok(Some((path, file_type))) => {
                *by_path.entry(path.clone()).or_default() |=
                    access_bits(g.access, abi, handled_fs, file_type.is_dir());
                resolved.push((g.path.clone(), path, g.access, file_type));
            }
            Ok(None) => {}
            Err(msg) => refusals.push(format!("{}: {msg}", g.position)),
        }
    }
    if crate::landlock_abi::LandlockFeature::ResolveUnix.available(eff_abi) {
        for s in &p.sockets {
            *by_path.entry(s.clone()).or_default() |= AccessFs::ResolveUnix;
        }
    }
    let landlock = LandlockPlan {
        abi: eff_abi,
        handled_fs,
        rules: by_path
            .into_iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(path, access)| FsRule { path, access })
            .collect(),
        handle_tcp: crate::landlock_abi::LandlockFeature::TcpPorts.available(eff_abi),
        handle_udp: crate::landlock_abi::LandlockFeature::Udp.available(eff_abi),
        connect_tcp: p.connect_tcp.clone(),
        bind_tcp: p.bind_tcp.clone(),
        scope_abstract_unix_socket: p.scope_abstract_unix_socket
            && crate::landlock_abi::LandlockFeature::Scopes.available(eff_abi),
        scope_signal: p.scope_signal
            && crate::landlock_abi::LandlockFeature::Scopes.available(eff_abi),
        strict,
    };

    // Sockets: each must be a socket; grouped by directory.
    let mut dirs: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for s in &p.sockets {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(s) {
            Ok(m) if m.file_type().is_socket() => {
                if let Some(dir) = s.parent() {
                    dirs.entry(dir.to_path_buf()).or_default().push(s.clone());
                }
            }
            Ok(_) => refusals.push(format!("socket `{}` is not a unix socket", s.display())),
            Err(e) => refusals.push(format!(
                "socket `{}` cannot be exposed: {e}; is the database running?",
                s.display()
            )),
        }
    }
    let socket_dirs: Vec<SocketDir> = dirs
        .into_iter()
        .map(|(dir, sockets)| SocketDir { dir, sockets })
        .collect();
    // Root outside bpm: the action gets namespaces and a filesystem of only its grants.
    let namespaces = if facts.namespaces {
        Namespaces {
            mount: true,
            pid: true,
            ipc: true,
            net: layers::network_namespace(p, &facts),
        }
    } else {
        Namespaces::default()
    };
    let (forwards, names) = if namespaces.net {
        resolve_endpoints(&p.connect_endpoints, &mut refusals)
    } else {
        (Vec::new(), Vec::new())
    };
    let listeners = if namespaces.net {
        resolve_endpoints(&p.bind_endpoints, &mut refusals).0
    } else {
        Vec::new()
    };
    let view = namespaces.mount.then(|| {
        let mut v = build_view(&resolved, &p.sockets, &mut refusals);
        if !names.is_empty() {
            v.hosts = Some(hosts_file(&names));
            v.entries.retain(|e| e.path != Path::new("/etc/hosts"));
        }
        v
    });
    let seccomp = if facts.seccomp {
        let policy = crate::sandbox::seccomp::Policy {
            unix: true,
            tcp: !p.connect_tcp.is_empty() || !p.bind_tcp.is_empty(),
            // Outside a network namespace UDP is the resolver's way to DNS; inside one it
            // reaches nothing anyway.
            udp: !namespaces.net,
        };
        match crate::sandbox::seccomp::compile(&policy) {
            Ok(prog) => Some(std::sync::Arc::new(prog)),
            Err(e) => {
                refusals.push(format!("the seccomp filter cannot be built here: {e}"));
                None
            }
        }
    } else {
        None
    };
    let socket_dirs = if view.is_some() {
        Vec::new()
    } else {
        socket_dirs
    };
    let mount_ns = socket_dirs.is_empty()
        || req
            .kernel
            .mount_namespace
            .unwrap_or_else(crate::kernel::mount_namespace_possible);
    if !socket_dirs.is_empty() && !mount_ns {
        not_enforced.push(if req.inside_bpm {
            "hiding the other entries of the socket directories needs a mount namespace, which cannot be made inside bpm's container".into()
        } else {
            "hiding the other entries of the socket directories needs a mount namespace, which this process cannot create (run as root)".into()
        });
    }

    let identity = identity(p, req.kernel.is_root, &mut refusals);
    if !p.capabilities.is_empty() && !req.kernel.is_root {
        refusals.push("keeping capabilities needs the runner to start as root".into());
    }

    // Environment: cleared, then what the profile passes and sets.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for name in &p.env_pass {
        if let Some(v) = req.caller_env.get(name) {
            env.insert(name.clone(), v.clone());
        }
    }
    env.extend(p.env_set.clone());

    let (cmd, args) = req
        .command
        .split_first()
        .ok_or_else(|| PlanError::Usage("no command given after `--`".into()))?;
    let program = resolve_program(cmd, env.get("PATH").map(String::as_str))?;

    if strict {
        refusals.append(&mut not_enforced);
    }
    if !refusals.is_empty() {
        return Err(PlanError::Refused(refusals));
    }
    let socket_dirs = if mount_ns { socket_dirs } else { Vec::new() };
    let mut rlimits = rlimits(p);
    let mut notices = Vec::new();
    let declared = cgroup::Limits {
        pids: p.limits.processes,
        memory: p.limits.memory_bytes,
    };
    let per_action = |r: &(Rlimit, u64)| !matches!(r.0, Rlimit::Processes | Rlimit::Memory);
    let cgroup = if declared.is_empty() {
        None
    } else if req.inside_bpm {
        // bpm's container cgroup limits the whole action; RLIMIT_NPROC on top would count
        // every vcap process of every bpm job on the VM (bpm runs them all as vcap).
        rlimits.retain(per_action);
        None
    } else if !req.kernel.is_root {
        notices.push(rlimit_notice(
            &p.user,
            "the runner does not start as root, so it cannot make a cgroup",
        ));
        None
    } else {
        rlimits.retain(per_action);
        Some(CgroupRequest {
            label: req.label.to_string(),
            limits: declared,
            user: p.user.clone(),
        })
    };
    Ok(Plan {
        profile: p.source.clone(),
        namespaces,
        view,
        socket_dirs,
        rlimits,
        landlock: (eff_abi > 0).then_some(landlock),
        identity,
        keep_capabilities: p.capabilities.clone(),
        program: cstring(program.as_os_str().as_bytes()),
        argv: std::iter::once(cmd)
            .chain(args)
            .map(|a| cstring(a.as_bytes()))
            .collect(),
        env: env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect(),
        timeout: p.timeout,
        kill_grace: p.kill_grace,
        not_enforced,
        keep_fds: Vec::new(),
        cgroup,
        cgroup_placement: None,
        cgroup_fallback: Vec::new(),
        cpu_kick: None,
        init_status: None,
        forwards,
        forward_channel: None,
        net_namespace: None,
        listeners,
        seccomp,
        notices,
    })
}

/// The action's root from the resolved grants `(declared, canonical, access, type)` and
/// sockets.
fn build_view(
    resolved: &[(PathBuf, PathBuf, Access, std::fs::FileType)],
    sockets: &[PathBuf],
    refusals: &mut Vec<String>,
) -> View {
    use std::os::unix::fs::FileTypeExt;
    let mut entries: BTreeMap<PathBuf, ViewEntry> = BTreeMap::new();
    let mut proc = false;
    let mut proc_writable = false;
    let mut links = Vec::new();
    let declared = resolved
        .iter()
        .map(|(d, c, a, t)| (d.clone(), Some((c.clone(), *a, *t))))
        .chain(sockets.iter().map(|s| (s.clone(), None)));
    for (declared, grant) in declared {
        let canonical = match &grant {
            Some((c, _, _)) => c.clone(),
            None => match std::fs::canonicalize(&declared) {
                Ok(c) => c,
                // Reported by the socket checks above.
                Err(_) => continue,
            },
        };
        // A path equal to its canonical form has no symlink on the way (a canonical path has
        // none): only the others are walked for their links, one readlink per component.
        if canonical != declared {
            collect_links(&declared, &mut links);
        }
        if canonical == Path::new("/proc") || canonical.starts_with("/proc/") {
            proc = true;
            proc_writable |= matches!(grant, Some((_, Access::Write, _)));
            continue;
        }
        // A grant's type was read when it was resolved; a socket's is read here.
        let file_type = match &grant {
            Some((_, _, t)) => Ok(*t),
            None => std::fs::metadata(&canonical).map(|m| m.file_type()),
        };
        let kind = match file_type {
            Ok(t) if t.is_dir() => EntryKind::Dir,
            Ok(t) if t.is_socket() => EntryKind::Socket,
            Ok(t) if t.is_char_device() || t.is_block_device() => EntryKind::Device,
            Ok(_) => EntryKind::File,
            Err(e) => {
                refusals.push(format!(
                    "`{}` cannot be shown to the action: {e}",
                    canonical.display()
                ));
                continue;
            }
        };
        let e = entries.entry(canonical.clone()).or_insert(ViewEntry {
            path: canonical,
            kind,
            write: false,
            exec: false,
        });
        match grant {
            Some((_, Access::Write, _)) => e.write = true,
            Some((_, Access::Execute, _)) => e.exec = true,
            _ => {}
        }
    }
    let entries: Vec<ViewEntry> = entries.into_values().collect();
    // A link inside a bound directory is already there.
    links.retain(|(link, _): &(PathBuf, PathBuf)| {
        !entries
            .iter()
            .any(|e| e.kind == EntryKind::Dir && link.starts_with(&e.path))
    });
    links.sort();
    links.dedup();
    View {
        entries,
        links,
        proc,
        proc_writable,
        cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        hosts: None,
    }
}

/// The addresses of `HOST:PORT` endpoints (every address a name has), and the names to write
/// into the action's /etc/hosts.
fn resolve_endpoints(
    endpoints: &[(String, u16)],
    refusals: &mut Vec<String>,
) -> (Vec<std::net::SocketAddr>, Vec<(std::net::IpAddr, String)>) {
    use std::net::ToSocketAddrs;
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    for (host, port) in endpoints {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            addrs.push(std::net::SocketAddr::new(ip, *port));
            continue;
        }
        match (host.as_str(), *port).to_socket_addrs() {
            Ok(found) => {
                for a in found {
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                    names.push((a.ip(), host.clone()));
                }
            }
            Err(e) => refusals.push(format!(
                "the TCP endpoint `{host}:{port}` cannot be resolved here ({e}); the action reaches it through the runner's forwarder, which needs its address"
            )),
        }
    }
    names.sort();
    names.dedup();
    (addrs, names)
}

/// The host's /etc/hosts, then the forwarded names.
fn hosts_file(names: &[(std::net::IpAddr, String)]) -> String {
    let mut text = std::fs::read_to_string("/etc/hosts")
        .unwrap_or_else(|_| "127.0.0.1 localhost\n::1 localhost\n".into());
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# bbr-runner: the declared TCP endpoints, reached through its forwarder\n");
    for (ip, name) in names {
        text.push_str(&format!("{ip} {name}\n"));
    }
    text
}

/// Every symlink met while resolving `path`, as (link, target as read), each link's parent
/// being a real directory.
fn collect_links(path: &Path, out: &mut Vec<(PathBuf, PathBuf)>) {
    use std::collections::VecDeque;
    use std::path::Component;
    let names = |p: &Path| -> Vec<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut todo: VecDeque<std::ffi::OsString> = names(path).into();
    let mut cur = PathBuf::from("/");
    let mut hops = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        match std::fs::read_link(&next) {
            Ok(target) if hops < 40 => {
                hops += 1;
                out.push((next, target.clone()));
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                for p in names(&target).into_iter().rev() {
                    todo.push_front(p);
                }
            }
            _ => cur = next,
        }
    }
}

fn cstring(bytes: &[u8]) -> CString {
    // Interior NULs cannot come from argv or a validated profile; strip defensively.
    CString::new(
        bytes
            .iter()
            .copied()
            .filter(|b| *b != 0)
            .collect::<Vec<u8>>(),
    )
    .unwrap_or_default()
}

/// Canonical path and its type; `None` for an absent set member.
fn resolve_grant(
    path: &Path,
    access: Access,
    origin: &Origin,
) -> Result<Option<(PathBuf, std::fs::FileType)>, String> {
    let canonical = match std::fs::canonicalize(path) {
        Ok(c) => c,
        Err(_) if matches!(origin, Origin::Set(_)) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "{} grant `{}` cannot be used: {e}; create it or remove the grant",
                access.name(),
                path.display()
            ))
        }
    };
    if access == Access::Write && canonical != path {
        return Err(format!(
            "write grant `{}` goes through a symlink to `{}`; write the real path",
            path.display(),
            canonical.display()
        ));
    }
    let file_type = std::fs::metadata(&canonical)
        .map_err(|e| {
            format!(
                "{} grant `{}` cannot be used: {e}",
                access.name(),
                path.display()
            )
        })?
        .file_type();
    Ok(Some((canonical, file_type)))
}

fn identity(p: &Profile, is_root: bool, refusals: &mut Vec<String>) -> Option<Identity> {
    use nix::unistd::{Group, User};
    let user = match User::from_name(&p.user) {
        Ok(Some(u)) => u,
        _ => {
            refusals.push(format!(
                "user `{}` does not exist on this machine; create it (`useradd --system {}`) or change `user:` in {}",
                p.user,
                p.user,
                p.source.display()
            ));
            return None;
        }
    };
    let gid = match &p.group {
        None => user.gid.as_raw(),
        Some(name) => match Group::from_name(name) {
            Ok(Some(g)) => g.gid.as_raw(),
            _ => {
                refusals.push(format!("group `{name}` does not exist on this machine"));
                return None;
            }
        },
    };
    let mut groups = Vec::new();
    for name in &p.supplementary_groups {
        match Group::from_name(name) {
            Ok(Some(g)) => groups.push(g.gid.as_raw()),
            _ => refusals.push(format!(
                "supplementary group `{name}` does not exist on this machine"
            )),
        }
    }
    let me = nix::unistd::geteuid().as_raw();
    if !is_root {
        if user.uid.as_raw() != me {
            refusals.push(format!(
                "switching to user `{}` needs the runner to start as root",
                p.user
            ));
        }
        return None;
    }
    Some(Identity {
        user: p.user.clone(),
        uid: user.uid.as_raw(),
        gid,
        groups,
    })
}

fn rlimits(p: &Profile) -> Vec<(Rlimit, u64)> {
    let l = &p.limits;
    [
        (Rlimit::OpenFiles, l.open_files),
        (Rlimit::Processes, l.processes),
        (Rlimit::Memory, l.memory_bytes),
        (Rlimit::FileSize, l.file_size_bytes),
        (Rlimit::CoreFileSize, l.core_file_size_bytes),
        (Rlimit::CpuSeconds, l.cpu_seconds),
    ]
    .into_iter()
    .filter_map(|(r, v)| v.map(|v| (r, v)))
    .collect()
}

/// Finds the program as execvp would, but in the sandbox's PATH, never the caller's.
fn resolve_program(cmd: &str, path: Option<&str>) -> Result<PathBuf, PlanError> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = path.unwrap_or("");
    std::env::split_paths(path)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            PlanError::NotFound(
                cmd.to_string(),
                if path.is_empty() {
                    "PATH is not set by the profile".into()
                } else {
                    format!("PATH={path}")
                },
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inside bpm's privileged container (root with CAP_SYS_ADMIN, no seccomp filter) the
    /// runner builds the plan it builds natively, but for the cgroup (bpm's holds the limits):
    /// so `review --verify`, which proves the native plan's claims, proves the ones review makes
    /// for a privileged bpm. In bpm's default container (a filter) its namespaces and filter
    /// are off.
    #[test]
    fn inside_a_privileged_bpm_the_plan_is_the_native_one_but_the_cgroup() {
        let profile = crate::profile::parse(
            Path::new("t.yml"),
            b"version: 1\nabi: 4\nuser: vcap\nfilesystem:\n  execute: ['@system-bin', '@system-libs']\n  write: [/tmp]\nnetwork:\n  connect_tcp: ['127.0.0.1:5432']\nlimits:\n  processes: 64\n",
            &crate::profile::Vars::lenient(),
        )
        .expect("profile");
        let mut kernel = crate::kernel::probe_for_run();
        // As in bpm's privileged container: root with every capability, no filter.
        kernel.is_root = true;
        kernel.namespaces = true;
        kernel.seccomp_filtered = false;
        kernel.landlock_abi = 4;
        let command = vec!["/bin/true".to_string()];
        let env = BTreeMap::new();
        let build_for = |inside_bpm: bool, kernel: &KernelInfo| {
            build(Request {
                profile: &profile,
                command: &command,
                caller_env: &env,
                kernel,
                inside_bpm,
                label: "t",
            })
            .expect("plan")
        };
        let native = build_for(false, &kernel);
        let inside = build_for(true, &kernel);
        let shape = |p: &Plan| {
            format!(
                "{:?} {} {:?} {:?} {} {:?}",
                p.namespaces,
                p.view.is_some(),
                p.landlock,
                p.identity,
                p.seccomp.is_some(),
                p.forwards
            )
        };
        assert_eq!(shape(&inside), shape(&native));
        assert!(native.namespaces.any() && native.seccomp.is_some());
        assert!(native.cgroup.is_some() && inside.cgroup.is_none());
        // bpm's default container: its filter is in place.
        kernel.seccomp_filtered = true;
        let default = build_for(true, &kernel);
        assert!(!default.namespaces.any() && default.seccomp.is_none());
    }
}
