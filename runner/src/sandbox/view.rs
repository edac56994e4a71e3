//! The filesystem view: in the new mount namespace, a tmpfs becomes the root and holds only the
//! granted paths, each bind-mounted from the host through a descriptor opened without following
//! any symlink, read-only unless written, `noexec` unless executed, `nodev` unless a device,
//! `nosuid` always; the symlinks on the way to a declared path; a fresh /proc of the action's
//! pid namespace when /proc is granted. The old root is detached, the tmpfs made read-only. A
//! path that is not granted does not exist for the action: no metadata, no socket to connect to.

use std::path::{Path, PathBuf};

use super::syscall::{BindFlags, Syscall};
use super::{SandboxError, Step};
use crate::plan::{EntryKind, Plan, View};

/// Where the view's tmpfs is mounted before it becomes `/` (hidden from the host: the mount
/// namespace is private), and where the old root waits to be detached.
const STAGE: &str = "/tmp";
const OLD_ROOT: &str = "/.old-root";

pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<(), SandboxError> {
    let Some(view) = &plan.view else {
        return super::mount::apply(plan, sys);
    };
    let step = |what: String, e| SandboxError::step(Step::Mount, &what, e);
    let old = |p: &Path| PathBuf::from(OLD_ROOT).join(p.strip_prefix("/").unwrap_or(p));
    sys.make_mounts_private()
        .map_err(|e| step("making mounts private".into(), e))?;
    sys.mount_view_root(Path::new(STAGE))
        .map_err(|e| step(format!("mounting the view's tmpfs on {STAGE}"), e))?;
    let put_old = Path::new(STAGE).join(OLD_ROOT.trim_start_matches('/'));
    sys.make_dir(&put_old)
        .map_err(|e| step(format!("creating {}", put_old.display()), e))?;
    sys.pivot_root(Path::new(STAGE), &put_old)
        .map_err(|e| step("pivot_root into the view".into(), e))?;
    crate::trace!("sandbox", "view: private, tmpfs, pivot_root");
    // Directories made on the tmpfs so far: each is made once (`mkdir -p` again would cost a
    // failed mkdir and a stat per entry).
    let mut made = Made(vec![PathBuf::from("/")]);
    // The fresh /proc also serves the fallback binds (/proc/self/fd/N, kernels before 5.12).
    // Read-only unless written: root's files there are the whole machine's (/proc/sys,
    // /proc/sysrq-trigger), which Landlock guards only where the kernel has it.
    made.dir(sys, Path::new("/proc"))
        .map_err(|e| step("creating /proc".into(), e))?;
    sys.mount_proc(Path::new("/proc"), !view.proc_writable)
        .map_err(|e| step("mounting /proc".into(), e))?;
    crate::trace!("sandbox", "view: /proc mounted");
    for (link, target) in &view.links {
        if let Some(parent) = link.parent() {
            made.dir(sys, parent)
                .map_err(|e| step(format!("creating {}", parent.display()), e))?;
        }
        sys.symlink(target, link)
            .map_err(|e| step(format!("creating the symlink {}", link.display()), e))?;
    }
    crate::trace!("sandbox", "view: symlinks made");
    for entry in &view.entries {
        let path = &entry.path;
        let fd = sys
            .open_exact(&old(path), entry.kind)
            .map_err(|e| step(format!("opening `{}`", path.display()), e))?;
        if !inside_bound(view, path) {
            let point = match entry.kind {
                EntryKind::Dir => made.dir(sys, path),
                _ => path
                    .parent()
                    .map_or(Ok(()), |p| made.dir(sys, p))
                    .and_then(|()| sys.create_file(path)),
            };
            point.map_err(|e| step(format!("creating the mount point {}", path.display()), e))?;
        }
        let flags = BindFlags {
            read_only: !entry.write,
            no_exec: !entry.exec,
            no_dev: entry.kind != EntryKind::Device,
        };
        sys.bind_with_flags(fd, path, flags)
            .map_err(|e| step(format!("binding `{}`", path.display()), e))?;
        crate::trace!("sandbox", "view: bound {}", path.display());
    }
    if let Some(hosts) = &view.hosts {
        made.dir(sys, Path::new("/etc"))
            .map_err(|e| step("creating /etc".into(), e))?;
        sys.write_file(Path::new("/etc/hosts"), hosts)
            .map_err(|e| step("writing /etc/hosts".into(), e))?;
    }
    crate::trace!("sandbox", "view: /etc/hosts");
    sys.detach(Path::new(OLD_ROOT))
        .map_err(|e| step("detaching the host's root".into(), e))?;
    crate::trace!("sandbox", "view: host's root detached");
    if !view.proc {
        sys.detach(Path::new("/proc"))
            .map_err(|e| step("removing /proc (not granted)".into(), e))?;
    }
    sys.remount_root_readonly()
        .map_err(|e| step("making the view's root read-only".into(), e))?;
    if sys.chdir(&view.cwd).is_err() {
        sys.chdir(Path::new("/"))
            .map_err(|e| step("chdir /".into(), e))?;
    }
    Ok(())
}

/// The directories made on the view's tmpfs (with their parents).
struct Made(Vec<PathBuf>);

impl Made {
    /// `mkdir -p dir` unless it was made already.
    fn dir(&mut self, sys: &dyn Syscall, dir: &Path) -> std::io::Result<()> {
        if self.0.iter().any(|m| m == dir) {
            return Ok(());
        }
        sys.make_dir(dir)?;
        for a in dir.ancestors() {
            if !self.0.iter().any(|m| m == a) {
                self.0.push(a.to_path_buf());
            }
        }
        Ok(())
    }
}

/// Below a directory bound earlier, the mount point is already there.
fn inside_bound(view: &View, path: &Path) -> bool {
    view.entries
        .iter()
        .take_while(|e| e.path.as_path() != path)
        .any(|e| e.kind == EntryKind::Dir && path.starts_with(&e.path))
}
