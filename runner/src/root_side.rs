//! What the runner does as root in directories the action's user can write (the job's
//! `data/JOB` and `sys/run/JOB`, which bpm gives to vcap; the job's tmp dir and the artifact
//! directory, which the runner gives to the action's user). Nothing there is reached by a path
//! a link could redirect: the trusted part (the BOSH root, root's own directories) is opened
//! once, and every name below it is opened relative to that descriptor with `O_NOFOLLOW`;
//! ownership and modes are changed on the opened descriptor (`fchown`, `fchmod`), and trees
//! are removed through `/proc/self/fd/N/NAME`, which cannot be redirected above NAME (the
//! removal itself never follows a link). Root's own files (the action locks) live in a
//! directory only root can write.
//!
//! Trusted: the BOSH root given to `run`, BBR's variables, the job's rendered config. Never
//! trusted: anything the action's user can write.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, Gid, Uid};

/// A refused or failed operation: the path, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct RootSideError {
    pub path: PathBuf,
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> RootSideError {
    RootSideError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn errno_message(e: Errno) -> String {
    match e {
        Errno::ELOOP => "is a symbolic link: refused (links here are never followed)".into(),
        Errno::ENOTDIR => "is not a directory".into(),
        other => other.desc().to_string(),
    }
}

/// `/proc/self/fd/N`: the opened directory itself, whatever its path now points to.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

const DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Opens a trusted directory (root's own path; links in it are root's and are followed).
pub fn open_trusted(path: &Path) -> Result<OwnedFd, RootSideError> {
    openat(AT_FDCWD, path, DIR, Mode::empty()).map_err(|e| err(path, errno_message(e)))
}

/// Opens directory `name` (one plain component) in `dir`, refusing a link.
pub fn open_dir_at(dir: &impl AsFd, name: &str, shown: &Path) -> Result<OwnedFd, RootSideError> {
    plain(name, shown)?;
    openat(dir, name, DIR | OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| {
        // O_DIRECTORY | O_NOFOLLOW on a link answers ENOTDIR: say which it is.
        let is_link = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
        err(shown, errno_message(if is_link { Errno::ELOOP } else { e }))
    })
}

/// Creates directory `name` in `dir` (root's, `mode`) unless it exists, then opens it, refusing
/// a link.
pub fn ensure_dir_at(
    dir: &impl AsFd,
    name: &str,
    mode: u32,
    shown: &Path,
) -> Result<OwnedFd, RootSideError> {
    plain(name, shown)?;
    match mkdirat(dir, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(err(shown, format!("cannot create: {}", e.desc()))),
    }
    open_dir_at(dir, name, shown)
}

fn plain(name: &str, shown: &Path) -> Result<(), RootSideError> {
    let mut c = Path::new(name).components();
    match (c.next(), c.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => Err(err(shown, format!("`{name}` is not a plain file name"))),
    }
}

/// Opens `rel`'s directories below the trusted `base`, one name at a time, refusing links.
pub fn open_below(base: &Path, rel: &[&str]) -> Result<OwnedFd, RootSideError> {
    let mut fd = open_trusted(base)?;
    let mut shown = base.to_path_buf();
    for name in rel {
        shown.push(name);
        fd = open_dir_at(&fd, name, &shown)?;
    }
    Ok(fd)
}

/// Gives the opened directory to `uid:gid` with `mode`: the descriptor, never a path.
pub fn give(
    dir: &impl AsFd,
    uid: u32,
    gid: u32,
    mode: u32,
    shown: &Path,
) -> Result<(), RootSideError> {
    fchown(dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .and_then(|_| fchmod(dir, Mode::from_bits_truncate(mode)))
        .map_err(|e| err(shown, format!("cannot give it to uid {uid}: {}", e.desc())))
}

/// Refuses a directory that someone other than root may write, or that root does not own.
pub fn require_root_only(dir: &impl AsFd, shown: &Path) -> Result<(), RootSideError> {
    let st = fstat(dir).map_err(|e| err(shown, e.desc()))?;
    if st.st_uid != 0 {
        return Err(err(
            shown,
            format!(
                "belongs to uid {}, not root: refused (the runner keeps root's files only where root alone can write; remove it or give it to root with mode 0755)",
                st.st_uid
            ),
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(err(
            shown,
            format!(
                "is writable by its group or others (mode {:o}): refused (chmod go-w it)",
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Names of the entries of the opened directory that are directories (not links), start with
/// `prefix`, and are not root's (what an action leaves is its user's; a root-owned directory
/// there was put there by a rename, not by an action).
pub fn subdirs_with_prefix(dir: &impl AsRawFd, prefix: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(fd_path(dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() != 0))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Removes the tree `name` in the opened directory; a link there is removed, never followed.
pub fn remove_tree_at(dir: &impl AsRawFd, name: &str) -> std::io::Result<()> {
    let path = fd_path(dir).join(name);
    // remove_dir_all removes a link itself and opens every directory below with O_NOFOLLOW.
    std::fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_below_the_trusted_base_is_refused_and_a_directory_is_opened() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).expect("ln");
        assert!(open_below(t.path(), &["real"]).is_ok());
        let e = open_below(t.path(), &["link"]).expect_err("a link is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_below(t.path(), &[".."]).is_err());
        assert!(open_below(t.path(), &["a/b"]).is_err());
    }

    #[test]
    fn removing_a_tree_through_a_link_removes_the_link_only() {
        let t = tempfile::tempdir().expect("tempdir");
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).expect("mkdir");
        std::fs::write(victim.join("keep"), "x").expect("write");
        let dir = t.path().join("dir");
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::symlink(&victim, dir.join("backup-1")).expect("ln");
        std::fs::create_dir_all(dir.join("backup-2/inner")).expect("mkdir");
        let fd = open_trusted(&dir).expect("open");
        // Root's directories are never an action's leftovers.
        let expected: &[&str] = if nix::unistd::geteuid().is_root() {
            &[]
        } else {
            &["backup-2"]
        };
        assert_eq!(subdirs_with_prefix(&fd, "backup-"), expected);
        remove_tree_at(&fd, "backup-1").expect("remove link");
        remove_tree_at(&fd, "backup-2").expect("remove tree");
        assert!(victim.join("keep").exists());
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
    }
}
