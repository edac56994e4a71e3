//! The cgroup layout and decisions for v1 and v2, checked without root through a fake cgroupfs
//! that records every operation (this machine may have only one of the two).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::*;

/// A unified (v2-only) system, as on an Ubuntu Noble stemcell.
const UNIFIED: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

/// A hybrid system (as on a Jammy stemcell, and this test machine): controllers on v1, v2
/// mounted with none of them.
const HYBRID: &str = "\
25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
31 25 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
33 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

const BOTH: Limits = Limits {
    pids: Some(64),
    memory: Some(64 << 20),
};

fn controllers(text: &'static str) -> impl Fn(&Path) -> Option<String> {
    move |p: &Path| p.ends_with("cgroup.controllers").then(|| text.to_string())
}

#[test]
fn v2_is_used_when_its_root_offers_the_controllers() {
    let layout = detect_from(
        UNIFIED,
        BOTH,
        &controllers("cpuset cpu io memory hugetlb pids rdma misc\n"),
    )
    .expect("v2");
    assert_eq!(
        layout,
        Layout::V2 {
            mount: "/sys/fs/cgroup".into()
        }
    );
}

#[test]
fn hybrid_uses_the_v1_controller_mounts() {
    let layout = detect_from(HYBRID, BOTH, &controllers("hugetlb\n")).expect("v1");
    assert_eq!(
        layout,
        Layout::V1 {
            pids: Some("/sys/fs/cgroup/pids".into()),
            memory: Some("/sys/fs/cgroup/memory".into()),
        }
    );
    // Only what the profile declares is needed.
    let only_pids = Limits {
        pids: Some(8),
        memory: None,
    };
    assert_eq!(
        detect_from(HYBRID, only_pids, &controllers("")).expect("v1"),
        Layout::V1 {
            pids: Some("/sys/fs/cgroup/pids".into()),
            memory: None,
        }
    );
}

#[test]
fn no_usable_hierarchy_says_what_is_missing() {
    // v2 without memory, no v1: unavailable.
    let err = detect_from(UNIFIED, BOTH, &controllers("cpu io pids\n")).expect_err("none");
    assert!(matches!(err, CgroupError::Unavailable(_)));
    assert_eq!(
        err.to_string(),
        "no writable cgroup hierarchy offers the pids and memory controllers (cgroup v2 at /sys/fs/cgroup offers `cpu io pids`)"
    );
    // A read-only or sub-tree mount (a container's view) is not used.
    let container = "\
40 30 0:26 /docker/abc /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
41 30 0:28 / /sys/fs/cgroup/pids ro,relatime - cgroup cgroup rw,pids
";
    let err = detect_from(
        container,
        Limits {
            pids: Some(8),
            memory: None,
        },
        &controllers("pids memory"),
    )
    .expect_err("none");
    assert_eq!(
        err.to_string(),
        "no writable cgroup hierarchy offers the pids controller (no cgroup v2 mount)"
    );
}

#[test]
fn names_carry_the_runner_pid_and_start_time() {
    let name = run_name("bbr-acme-db.backup/../x", 4242, 987654);
    assert_eq!(name, "bbr-acme-db_backup____x.4242.987654");
    assert_eq!(owner(&name), Some((4242, 987654)));
    assert_eq!(owner("system.slice"), None);
    assert_eq!(owner("12.34"), None);
}

/// A fake cgroupfs: directories and files by path; every operation recorded.
#[derive(Default)]
struct Fake {
    dirs: RefCell<BTreeSet<PathBuf>>,
    files: RefCell<BTreeMap<PathBuf, String>>,
    calls: RefCell<Vec<String>>,
    live: BTreeMap<i32, u64>,
    fail_write: Option<&'static str>,
}

impl Fake {
    fn with_files(files: &[(&str, &str)]) -> Fake {
        let f = Fake::default();
        for (p, v) in files {
            f.files.borrow_mut().insert(p.into(), v.to_string());
        }
        f
    }
    fn rec(&self, s: String) {
        self.calls.borrow_mut().push(s);
    }
}

impl CgroupFs for Fake {
    fn make_dir(
        &self,
        mount: &Path,
        rel: &str,
        exclusive: bool,
        root_only: bool,
    ) -> io::Result<()> {
        self.rec(format!(
            "mkdir {}{}{}",
            mount.join(rel).display(),
            if exclusive { " (new)" } else { "" },
            if root_only { " (root only)" } else { "" }
        ));
        let new = self.dirs.borrow_mut().insert(mount.join(rel));
        if !new && exclusive {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok(())
    }
    fn read(&self, mount: &Path, rel: &str) -> io::Result<String> {
        let p = mount.join(rel);
        if let Some(dir) = rel.strip_suffix("/cgroup.procs") {
            if !self.dirs.borrow().contains(&mount.join(dir)) {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
        }
        Ok(self.files.borrow().get(&p).cloned().unwrap_or_default())
    }
    fn write(&self, mount: &Path, rel: &str, value: &str) -> io::Result<()> {
        self.rec(format!("write {} = {value}", mount.join(rel).display()));
        if self.fail_write.is_some_and(|f| rel.ends_with(f)) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if rel.ends_with("cgroup.kill") {
            let dir = rel.trim_end_matches("/cgroup.kill");
            self.files
                .borrow_mut()
                .remove(&mount.join(format!("{dir}/cgroup.procs")));
        }
        Ok(())
    }
    fn exists(&self, mount: &Path, rel: &str) -> bool {
        self.files.borrow().contains_key(&mount.join(rel))
    }
    fn list_dirs(&self, mount: &Path, rel: &str) -> Vec<String> {
        let base = mount.join(rel);
        self.dirs
            .borrow()
            .iter()
            .filter(|d| d.parent() == Some(base.as_path()))
            .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
            .collect()
    }
    fn remove_dir(&self, mount: &Path, rel: &str) -> io::Result<()> {
        self.rec(format!("rmdir {}", mount.join(rel).display()));
        // As the kernel: a cgroup with processes in it is busy.
        let procs = mount.join(format!("{rel}/cgroup.procs"));
        if self
            .files
            .borrow()
            .get(&procs)
            .is_some_and(|p| !p.trim().is_empty())
        {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.dirs.borrow_mut().remove(&mount.join(rel));
        Ok(())
    }
    fn open_join(&self, mount: &Path, rel: &str, file: &str) -> io::Result<OwnedFd> {
        self.rec(format!("open {}/{file}", mount.join(rel).display()));
        Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
    }
    fn kill(&self, pid: i32) {
        self.rec(format!("kill {pid}"));
        // The fake's processes die at once: the cgroup empties.
        let mut files = self.files.borrow_mut();
        for v in files.values_mut() {
            *v = v
                .split_whitespace()
                .filter(|p| *p != pid.to_string())
                .map(|p| format!("{p}\n"))
                .collect();
        }
    }
    fn start_time(&self, pid: i32) -> Option<u64> {
        self.live.get(&pid).copied()
    }
    fn pause(&self) {}
}

#[test]
fn v2_enables_the_controllers_in_each_parent_then_makes_the_run_cgroup() {
    let fs = Fake::with_files(&[
        ("/sys/fs/cgroup/cgroup.subtree_control", "cpu memory\n"),
        ("/sys/fs/cgroup/bbr-runner/RUN/memory.swap.max", "max\n"),
    ]);
    let layout = Layout::V2 {
        mount: "/sys/fs/cgroup".into(),
    };
    let cg = create(&fs, &layout, "RUN", BOTH).expect("create");
    assert_eq!(cg.procs.len(), 1);
    assert_eq!(cg.paths(), [PathBuf::from("/sys/fs/cgroup/bbr-runner/RUN")]);
    assert_eq!(
        *fs.calls.borrow(),
        [
            // memory is already enabled at the root: only pids is added.
            "write /sys/fs/cgroup/cgroup.subtree_control = +pids",
            "mkdir /sys/fs/cgroup/bbr-runner (root only)",
            "write /sys/fs/cgroup/bbr-runner/cgroup.subtree_control = +pids +memory",
            "mkdir /sys/fs/cgroup/bbr-runner/RUN (new) (root only)",
            "write /sys/fs/cgroup/bbr-runner/RUN/pids.max = 64",
            "write /sys/fs/cgroup/bbr-runner/RUN/memory.max = 67108864",
            "write /sys/fs/cgroup/bbr-runner/RUN/memory.swap.max = 0",
            "open /sys/fs/cgroup/bbr-runner/RUN/cgroup.procs",
        ]
    );
}

#[test]
fn v1_makes_one_cgroup_per_controller_hierarchy() {
    // No swap accounting on this kernel: memsw is absent and skipped.
    let fs = Fake::default();
    let layout = Layout::V1 {
        pids: Some("/cg/pids".into()),
        memory: Some("/cg/memory".into()),
    };
    let cg = create(&fs, &layout, "RUN", BOTH).expect("create");
    assert_eq!(cg.procs.len(), 2);
    assert_eq!(
        *fs.calls.borrow(),
        [
            "mkdir /cg/pids/bbr-runner (root only)",
            "mkdir /cg/pids/bbr-runner/RUN (new) (root only)",
            "write /cg/pids/bbr-runner/RUN/pids.max = 64",
            // v1: the child joins through `tasks` (no global lock for its own thread).
            "open /cg/pids/bbr-runner/RUN/tasks",
            "mkdir /cg/memory/bbr-runner (root only)",
            "mkdir /cg/memory/bbr-runner/RUN (new) (root only)",
            "write /cg/memory/bbr-runner/RUN/memory.limit_in_bytes = 67108864",
            "open /cg/memory/bbr-runner/RUN/tasks",
        ]
    );
}

#[test]
fn a_failed_limit_removes_what_was_made() {
    let fs = Fake {
        fail_write: Some("memory.limit_in_bytes"),
        ..Fake::default()
    };
    let layout = Layout::V1 {
        pids: Some("/cg/pids".into()),
        memory: Some("/cg/memory".into()),
    };
    let err = create(&fs, &layout, "RUN", BOTH).expect_err("fails");
    assert_eq!(
        err.to_string(),
        "/cg/memory/bbr-runner/RUN/memory.limit_in_bytes: Invalid argument (os error 22)"
    );
    let calls = fs.calls.borrow();
    assert_eq!(
        calls[calls.len() - 2..],
        [
            "rmdir /cg/pids/bbr-runner/RUN",
            "rmdir /cg/memory/bbr-runner/RUN"
        ]
    );
}

#[test]
fn an_existing_run_cgroup_is_never_reused() {
    let fs = Fake::default();
    fs.dirs
        .borrow_mut()
        .insert("/cg/pids/bbr-runner/RUN".into());
    let layout = Layout::V1 {
        pids: Some("/cg/pids".into()),
        memory: None,
    };
    let err = create(&fs, &layout, "RUN", BOTH).expect_err("exists");
    assert!(err.to_string().contains("File exists"), "{err}");
}

#[test]
fn stale_cgroups_are_emptied_and_removed_live_and_foreign_ones_kept() {
    let fs = Fake {
        // 100 runs (started at 5); 200 is gone; 300 is a new process with a reused pid.
        live: BTreeMap::from([(100, 5), (300, 9)]),
        ..Fake::default()
    };
    for d in [
        "/cg/pids/bbr-runner/j.a.100.5",
        "/cg/pids/bbr-runner/j.a.200.7",
        "/cg/pids/bbr-runner/j.a.300.8",
        "/cg/pids/bbr-runner/someone-else",
    ] {
        fs.dirs.borrow_mut().insert(d.into());
    }
    fs.files.borrow_mut().insert(
        "/cg/pids/bbr-runner/j.a.200.7/cgroup.procs".into(),
        "4001\n4002\n".into(),
    );
    let layout = Layout::V1 {
        pids: Some("/cg/pids".into()),
        memory: None,
    };
    let (removed, failed) = remove_stale(&fs, &layout);
    assert!(failed.is_empty());
    assert_eq!(
        removed,
        [
            PathBuf::from("/cg/pids/bbr-runner/j.a.200.7"),
            PathBuf::from("/cg/pids/bbr-runner/j.a.300.8"),
        ]
    );
    assert_eq!(
        *fs.calls.borrow(),
        [
            "kill 4001",
            "kill 4002",
            "rmdir /cg/pids/bbr-runner/j.a.200.7",
            "rmdir /cg/pids/bbr-runner/j.a.300.8",
        ]
    );
    assert!(fs
        .dirs
        .borrow()
        .contains(Path::new("/cg/pids/bbr-runner/j.a.100.5")));
    assert!(fs
        .dirs
        .borrow()
        .contains(Path::new("/cg/pids/bbr-runner/someone-else")));
}

#[test]
fn v2_empties_a_cgroup_with_cgroup_kill() {
    let fs = Fake::with_files(&[
        ("/cg/bbr-runner/RUN/cgroup.kill", ""),
        ("/cg/bbr-runner/RUN/cgroup.procs", "77\n"),
    ]);
    fs.dirs.borrow_mut().insert("/cg/bbr-runner/RUN".into());
    let cg = RunCgroup {
        layout: Layout::V2 {
            mount: "/cg".into(),
        },
        name: "RUN".into(),
        procs: Vec::new(),
    };
    remove(&fs, cg).expect("removed");
    assert_eq!(
        *fs.calls.borrow(),
        [
            // Busy: something is still in it.
            "rmdir /cg/bbr-runner/RUN",
            "write /cg/bbr-runner/RUN/cgroup.kill = 1",
            "rmdir /cg/bbr-runner/RUN"
        ]
    );
}

#[test]
fn start_time_of_this_process_is_read() {
    let me = i32::try_from(std::process::id()).expect("pid");
    assert!(start_time(me).is_some());
    assert_eq!(start_time(i32::MAX), None);
}

#[test]
fn an_empty_run_cgroup_is_removed_with_one_rmdir_per_hierarchy() {
    let fs = Fake::with_files(&[
        ("/pids/bbr-runner/RUN/cgroup.procs", ""),
        ("/mem/bbr-runner/RUN/cgroup.procs", ""),
    ]);
    fs.dirs.borrow_mut().insert("/pids/bbr-runner/RUN".into());
    fs.dirs.borrow_mut().insert("/mem/bbr-runner/RUN".into());
    let cg = RunCgroup {
        layout: Layout::V1 {
            pids: Some("/pids".into()),
            memory: Some("/mem".into()),
        },
        name: "RUN".into(),
        procs: Vec::new(),
    };
    remove(&fs, cg).expect("removed");
    assert_eq!(
        *fs.calls.borrow(),
        ["rmdir /pids/bbr-runner/RUN", "rmdir /mem/bbr-runner/RUN"]
    );
    assert!(fs.dirs.borrow().is_empty());
}
