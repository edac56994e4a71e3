//! Per-action cgroups: `limits.processes` and `limits.memory` bound the action itself, not its
//! user. RLIMIT_NPROC counts every process and thread of the user on the whole machine (on a
//! BOSH VM most jobs run as vcap, so an action could fail at exec with EAGAIN because of its
//! neighbours), and RLIMIT_AS counts address space, not memory. A cgroup counts exactly the
//! processes the action starts and the memory they use, whoever else runs as the same user.
//!
//! The root supervisor creates one cgroup per run below a `bbr-runner` parent at the top of the
//! hierarchy (v2: `MOUNT/bbr-runner/RUN`, with `+pids +memory` in the parents'
//! `cgroup.subtree_control`; v1: `PIDS_MOUNT/bbr-runner/RUN` and `MEMORY_MOUNT/bbr-runner/RUN`).
//! A fixed parent, not one below the caller's own cgroup: v2 forbids enabling controllers in a
//! cgroup that holds processes (the caller's session does), and a later run, whatever session it
//! comes from, must find what a killed runner left there.
//!
//! RUN is `LABEL.PID.START`: the runner's pid and its start time (clock ticks since boot, from
//! `/proc/PID/stat`), so a later run tells a stale cgroup (that process is gone, or the pid now
//! belongs to another process) from a live run's, and removes it with whatever was left in it.
//!
//! The mount points come from `/proc/self/mountinfo` (the kernel's); every name below them is
//! opened relative to the mount's descriptor without following links, and the parent must be
//! root's and writable by root alone. The supervisor makes the cgroup while the sandbox's first
//! process builds its view, and hands it the open join files (`Layout::join_file`); the process
//! joins by writing `0` to each, before anything of the action runs (see `sandbox::cgroup`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The parent of every run's cgroup, in each hierarchy.
pub const PARENT: &str = "bbr-runner";

/// What the cgroup limits; `None`: not declared by the profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `limits.processes`: pids.max (processes and threads).
    pub pids: Option<u64>,
    /// `limits.memory` in bytes: memory.max (v2), memory.limit_in_bytes (v1).
    pub memory: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.pids.is_none() && self.memory.is_none()
    }
}

/// Where the controllers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The unified hierarchy, with the needed controllers available at its root.
    V2 { mount: PathBuf },
    /// One hierarchy per controller (they may share one mount when co-mounted).
    V1 {
        pids: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
}

impl Layout {
    pub fn name(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "cgroup v2",
            Layout::V1 { .. } => "cgroup v1",
        }
    }

    /// The file the sandbox's first process writes `0` to, to join the run's cgroup. v1:
    /// `tasks`, which moves the writing thread alone (the process is single-threaded then) and
    /// so, for the writer itself, takes no global lock: `cgroup.procs` moves a thread group under
    /// `cgroup_threadgroup_rwsem`, whose writer waits for an RCU grace period when no other
    /// writer came just before (measured here: 7.7 ms median, 4.5 to 20 ms, for a write after
    /// 0.1 s without one; 0.035 ms through `tasks`). v2 has no such file for a domain cgroup.
    pub fn join_file(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "cgroup.procs",
            Layout::V1 { .. } => "tasks",
        }
    }

    /// Each hierarchy the run's cgroup is made in, once.
    fn mounts(&self) -> Vec<&Path> {
        match self {
            Layout::V2 { mount } => vec![mount.as_path()],
            Layout::V1 { pids, memory } => {
                let mut out: Vec<&Path> = Vec::new();
                for m in [pids, memory].into_iter().flatten() {
                    if !out.contains(&m.as_path()) {
                        out.push(m);
                    }
                }
                out
            }
        }
    }

    /// The limit files (and values) to write in `mount`'s run cgroup, in order.
    fn limit_files(&self, mount: &Path, limits: Limits) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self {
            Layout::V2 { .. } => {
                if let Some(n) = limits.pids {
                    out.push(("pids.max", n.to_string()));
                }
                if let Some(b) = limits.memory {
                    out.push(("memory.max", b.to_string()));
                    // No swap: `memory` bounds what the action uses, not what it can page out.
                    out.push(("memory.swap.max", "0".to_string()));
                }
            }
            Layout::V1 { pids, memory } => {
                if let (Some(n), Some(m)) = (limits.pids, pids) {
                    if m == mount {
                        out.push(("pids.max", n.to_string()));
                    }
                }
                if let (Some(b), Some(m)) = (limits.memory, memory) {
                    if m == mount {
                        out.push(("memory.limit_in_bytes", b.to_string()));
                        // memory+swap no larger than memory: no swap (set after, it must be >=).
                        out.push(("memory.memsw.limit_in_bytes", b.to_string()));
                    }
                }
            }
        }
        out
    }
}

/// Files whose absence only means the kernel does not account swap: skipped, not an error.
const OPTIONAL: [&str; 2] = ["memory.swap.max", "memory.memsw.limit_in_bytes"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy with the needed controllers, or no right to use it.
    #[error("{0}")]
    Unavailable(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(mount: &Path, rel: &str, source: io::Error) -> CgroupError {
    CgroupError::Io {
        path: if rel.is_empty() {
            mount.to_path_buf()
        } else {
            mount.join(rel)
        },
        source,
    }
}

/// Finds the hierarchy that has the controllers `need` asks for. v2 is used when its root
/// offers them (a unified system); otherwise v1's controller mounts (a hybrid or legacy system,
/// where the controllers are bound to v1 and v2 offers none of them).
pub fn detect(need: Limits) -> Result<Layout, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::Unavailable(format!("cannot read /proc/self/mountinfo: {e}")))?;
    detect_from(&mountinfo, need, &|p| std::fs::read_to_string(p).ok())
}

/// `detect`, on a given mountinfo and file reader (unit-tested with both layouts).
pub fn detect_from(
    mountinfo: &str,
    need: Limits,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<Layout, CgroupError> {
    let mut v2: Option<(PathBuf, String)> = None;
    let mut v1_pids = None;
    let mut v1_memory = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount), Some(opts), Some(fstype), Some(superopts)) = (
            left.get(3),
            left.get(4),
            left.get(5),
            right.first(),
            right.get(2),
        ) else {
            continue;
        };
        // Only a whole, writable hierarchy: a sub-tree mount (a container's view) or a
        // read-only one is not ours to create cgroups in.
        if *root != "/" || !opts.split(',').any(|o| o == "rw") {
            continue;
        }
        let mount = PathBuf::from(unescape(mount));
        match *fstype {
            "cgroup2" if v2.is_none() => {
                let controllers = read(&mount.join("cgroup.controllers")).unwrap_or_default();
                v2 = Some((mount, controllers));
            }
            "cgroup" => {
                let has = |c: &str| superopts.split(',').any(|o| o == c);
                if has("pids") && v1_pids.is_none() {
                    v1_pids = Some(mount.clone());
                }
                if has("memory") && v1_memory.is_none() {
                    v1_memory = Some(mount);
                }
            }
            _ => {}
        }
    }
    let wanted: Vec<&str> = [("pids", need.pids), ("memory", need.memory.map(|_| 0))]
        .into_iter()
        .filter_map(|(c, n)| n.map(|_| c))
        .collect();
    if let Some((mount, controllers)) = &v2 {
        if wanted
            .iter()
            .all(|c| controllers.split_whitespace().any(|x| x == *c))
        {
            return Ok(Layout::V2 {
                mount: mount.clone(),
            });
        }
    }
    let missing_v1: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| match *c {
            "pids" => v1_pids.is_none(),
            _ => v1_memory.is_none(),
        })
        .collect();
    if missing_v1.is_empty() {
        return Ok(Layout::V1 {
            pids: need.pids.and(v1_pids),
            memory: need.memory.and(v1_memory),
        });
    }
    Err(CgroupError::Unavailable(format!(
        "no writable cgroup hierarchy offers the {} controller{} ({})",
        missing_v1.join(" and "),
        if missing_v1.len() > 1 { "s" } else { "" },
        match v2 {
            Some((m, c)) => format!(
                "cgroup v2 at {} offers `{}`",
                m.display(),
                c.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            None => "no cgroup v2 mount".into(),
        }
    )))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The operations on cgroupfs, in the supervisor. `LinuxCgroupFs` does them through
/// descriptors; the unit tests record them to check the file layout of v1 and v2.
pub trait CgroupFs {
    /// Opens (creating it unless `exclusive` forbids an existing one) directory `rel` below
    /// `mount`; `rel`'s components are opened without following links. `root_only`: refuse it
    /// unless root owns it and alone can write it.
    fn make_dir(&self, mount: &Path, rel: &str, exclusive: bool, root_only: bool)
        -> io::Result<()>;
    fn read(&self, mount: &Path, rel: &str) -> io::Result<String>;
    fn write(&self, mount: &Path, rel: &str, value: &str) -> io::Result<()>;
    fn exists(&self, mount: &Path, rel: &str) -> bool;
    /// Names of the directories in `rel`.
    fn list_dirs(&self, mount: &Path, rel: &str) -> Vec<String>;
    fn remove_dir(&self, mount: &Path, rel: &str) -> io::Result<()>;
    /// `rel`'s file `file` (`tasks` or `cgroup.procs`), opened for writing, close-on-exec.
    fn open_join(&self, mount: &Path, rel: &str, file: &str) -> io::Result<OwnedFd>;
    fn kill(&self, pid: i32);
    /// The start time of process `pid` (field 22 of `/proc/PID/stat`); `None` if it is gone.
    fn start_time(&self, pid: i32) -> Option<u64>;
    /// Waits a little before looking again at a cgroup being emptied.
    fn pause(&self);
}

/// The run's cgroup name: `LABEL.PID.START`, LABEL reduced to letters, digits, `-` and `_`.
pub fn run_name(label: &str, pid: i32, start: u64) -> String {
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{label}.{pid}.{start}")
}

/// The runner that made cgroup `name`: its pid and start time.
pub fn owner(name: &str) -> Option<(i32, u64)> {
    let mut it = name.rsplitn(3, '.');
    let start = it.next()?.parse().ok()?;
    let pid = it.next()?.parse().ok()?;
    it.next()?;
    Some((pid, start))
}

/// This run's cgroup, to be removed when the run ends.
#[derive(Debug)]
pub struct RunCgroup {
    pub layout: Layout,
    pub name: String,
    /// One join file (`Layout::join_file`) per hierarchy, open for writing: handed to the
    /// sandbox's first process, which writes `0` to each.
    pub procs: Vec<OwnedFd>,
}

impl RunCgroup {
    /// The directories of this run's cgroup, for messages and tests.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.layout
            .mounts()
            .into_iter()
            .map(|m| m.join(PARENT).join(&self.name))
            .collect()
    }
}

/// Creates the run's cgroup with its limits and opens its `cgroup.procs` files. On failure,
/// what was created is removed again.
pub fn create(
    fs: &dyn CgroupFs,
    layout: &Layout,
    name: &str,
    limits: Limits,
) -> Result<RunCgroup, CgroupError> {
    let rel = format!("{PARENT}/{name}");
    let mut made: Vec<&Path> = Vec::new();
    let result = (|| {
        let mut procs = Vec::new();
        for mount in layout.mounts() {
            if let Layout::V2 { .. } = layout {
                enable_controllers(fs, mount, "", limits)?;
            }
            fs.make_dir(mount, PARENT, false, true)
                .map_err(|e| io_err(mount, PARENT, e))?;
            if let Layout::V2 { .. } = layout {
                enable_controllers(fs, mount, PARENT, limits)?;
            }
            fs.make_dir(mount, &rel, true, true)
                .map_err(|e| io_err(mount, &rel, e))?;
            made.push(mount);
            for (file, value) in layout.limit_files(mount, limits) {
                let f = format!("{rel}/{file}");
                if OPTIONAL.contains(&file) && !fs.exists(mount, &f) {
                    continue;
                }
                fs.write(mount, &f, &value)
                    .map_err(|e| io_err(mount, &f, e))?;
            }
            let file = layout.join_file();
            procs.push(
                fs.open_join(mount, &rel, file)
                    .map_err(|e| io_err(mount, &format!("{rel}/{file}"), e))?,
            );
        }
        Ok(procs)
    })();
    match result {
        Ok(procs) => Ok(RunCgroup {
            layout: layout.clone(),
            name: name.to_string(),
            procs,
        }),
        Err(e) => {
            for mount in made {
                let _ = fs.remove_dir(mount, &rel);
            }
            Err(e)
        }
    }
}

/// v2: the controllers must be enabled in every parent's `cgroup.subtree_control` for the
/// child to have its files. Only the missing ones are written.
fn enable_controllers(
    fs: &dyn CgroupFs,
    mount: &Path,
    dir: &str,
    limits: Limits,
) -> Result<(), CgroupError> {
    let file = if dir.is_empty() {
        "cgroup.subtree_control".to_string()
    } else {
        format!("{dir}/cgroup.subtree_control")
    };
    let enabled = fs.read(mount, &file).map_err(|e| io_err(mount, &file, e))?;
    let missing: Vec<String> = [
        ("pids", limits.pids.is_some()),
        ("memory", limits.memory.is_some()),
    ]
    .into_iter()
    .filter(|(c, wanted)| *wanted && !enabled.split_whitespace().any(|x| x == *c))
    .map(|(c, _)| format!("+{c}"))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs.write(mount, &file, &missing.join(" "))
        .map_err(|e| io_err(mount, &file, e))
}

/// How long emptying one cgroup may take before removal gives up (SIGKILL is not delayed by
/// the process; only an uninterruptible wait in the kernel can hold it).
const EMPTY_DEADLINE: Duration = Duration::from_secs(10);

/// Kills every process in `rel` and removes it. v2's `cgroup.kill` kills in one write (also
/// processes forking meanwhile); otherwise each pid in `cgroup.procs` is killed until none is
/// left. Removes nothing but the one directory.
fn empty_and_remove(fs: &dyn CgroupFs, mount: &Path, rel: &str) -> Result<(), CgroupError> {
    let deadline = Instant::now() + EMPTY_DEADLINE;
    let kill_file = format!("{rel}/cgroup.kill");
    let procs_file = format!("{rel}/cgroup.procs");
    loop {
        let procs = match fs.read(mount, &procs_file) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(io_err(mount, &procs_file, e)),
        };
        let pids: Vec<i32> = procs
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            match fs.remove_dir(mount, rel) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                // EBUSY: a process joined or is still exiting; look again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {}
                Err(e) => return Err(io_err(mount, rel, e)),
            }
        } else if fs.exists(mount, &kill_file) {
            fs.write(mount, &kill_file, "1")
                .map_err(|e| io_err(mount, &kill_file, e))?;
        } else {
            for pid in pids {
                fs.kill(pid);
            }
        }
        if Instant::now() >= deadline {
            return Err(io_err(
                mount,
                rel,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "processes still in it after SIGKILL",
                ),
            ));
        }
        fs.pause();
    }
}

/// Removes the run's cgroup at the end of the run (the supervisor has killed the action's
/// leftovers already; anything still inside is killed here).
pub fn remove(fs: &dyn CgroupFs, cg: RunCgroup) -> Result<(), CgroupError> {
    drop(cg.procs);
    let rel = format!("{PARENT}/{}", cg.name);
    let mut first_error = None;
    for mount in cg.layout.mounts() {
        // Empty by now, as a rule (the supervisor killed and reaped what the action left): one
        // rmdir, which the kernel refuses (EBUSY) while anything is still in it.
        match fs.remove_dir(mount, &rel) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(_) => {}
        }
        if let Err(e) = empty_and_remove(fs, mount, &rel) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes the cgroups that runners no longer running left behind (a runner killed by SIGKILL
/// cannot remove its own), with whatever processes are still in them. Returns what was
/// removed, and what could not be.
pub fn remove_stale(fs: &dyn CgroupFs, layout: &Layout) -> (Vec<PathBuf>, Vec<CgroupError>) {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for mount in layout.mounts() {
        for name in fs.list_dirs(mount, PARENT) {
            let Some((pid, start)) = owner(&name) else {
                // Not a run's cgroup: someone else's, left alone.
                continue;
            };
            if fs.start_time(pid) == Some(start) {
                continue;
            }
            let rel = format!("{PARENT}/{name}");
            match empty_and_remove(fs, mount, &rel) {
                Ok(()) => removed.push(mount.join(&rel)),
                Err(e) => failed.push(e),
            }
        }
    }
    (removed, failed)
}

/// The real cgroupfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxCgroupFs;

impl LinuxCgroupFs {
    /// Opens directory `rel` below `mount` one name at a time, never following a link.
    fn open_dir(mount: &Path, rel: &str) -> io::Result<OwnedFd> {
        let names: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        crate::root_side::open_below(mount, &names).map_err(root_side_io)
    }

    /// The directory of `rel` (opened) and its last name.
    fn open_parent(mount: &Path, rel: &str) -> io::Result<(OwnedFd, String)> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok((Self::open_dir(mount, dir)?, name.to_string()))
    }
}

fn root_side_io(e: crate::root_side::RootSideError) -> io::Error {
    io::Error::other(e.to_string())
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn open_file(mount: &Path, rel: &str, flags: nix::fcntl::OFlag) -> io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let (dir, name) = LinuxCgroupFs::open_parent(mount, rel)?;
    let fd = nix::fcntl::openat(
        &dir,
        name.as_str(),
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(nix_io)?;
    Ok(std::fs::File::from(fd))
}

impl CgroupFs for LinuxCgroupFs {
    fn make_dir(
        &self,
        mount: &Path,
        rel: &str,
        exclusive: bool,
        root_only: bool,
    ) -> io::Result<()> {
        let (dir, name) = Self::open_parent(mount, rel)?;
        match nix::sys::stat::mkdirat(
            &dir,
            name.as_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) if !exclusive => {}
            Err(e) => return Err(nix_io(e)),
        }
        let shown = mount.join(rel);
        let fd = crate::root_side::open_dir_at(&dir, &name, &shown).map_err(root_side_io)?;
        if root_only {
            crate::root_side::require_root_only(&fd.as_fd(), &shown).map_err(root_side_io)?;
        }
        Ok(())
    }

    fn read(&self, mount: &Path, rel: &str) -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        open_file(mount, rel, nix::fcntl::OFlag::O_RDONLY)?.read_to_string(&mut text)?;
        Ok(text)
    }

    fn write(&self, mount: &Path, rel: &str, value: &str) -> io::Result<()> {
        use std::io::Write;
        // One write: cgroupfs takes each write(2) as one value.
        open_file(mount, rel, nix::fcntl::OFlag::O_WRONLY)?.write_all(value.as_bytes())
    }

    fn exists(&self, mount: &Path, rel: &str) -> bool {
        Self::open_parent(mount, rel).is_ok_and(|(dir, name)| {
            nix::sys::stat::fstatat(
                &dir,
                name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok()
        })
    }

    fn list_dirs(&self, mount: &Path, rel: &str) -> Vec<String> {
        let Ok(dir) = Self::open_dir(mount, rel) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(crate::root_side::fd_path(&dir)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn remove_dir(&self, mount: &Path, rel: &str) -> io::Result<()> {
        let (dir, name) = Self::open_parent(mount, rel)?;
        nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)
            .map_err(nix_io)
    }

    fn open_join(&self, mount: &Path, rel: &str, file: &str) -> io::Result<OwnedFd> {
        let f = open_file(mount, &format!("{rel}/{file}"), nix::fcntl::OFlag::O_WRONLY)?;
        Ok(OwnedFd::from(f))
    }

    fn kill(&self, pid: i32) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        start_time(pid)
    }

    fn pause(&self) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: count fields after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After `)`: field 3 (state) is the first; field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests;
