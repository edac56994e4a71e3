//! One run of an action as the runner was asked for it (`bbr-runner run JOB ACTION`): gathered
//! once when the run starts and passed down, so that nothing later reads the process
//! environment again or builds the job's paths on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::job;
use crate::root_side;

/// The variable BBR sets to the artifact directory of a backup or restore script.
pub const ARTIFACT_VAR: &str = "BBR_ARTIFACT_DIRECTORY";

/// `Debug` shows the environment's names, never its values.
pub struct Invocation {
    /// `JOB ACTION`: what every message of the run starts with.
    pub who: String,
    /// The BOSH root (`/var/vcap` on a VM).
    pub root: PathBuf,
    pub job: String,
    pub action: String,
    /// Started by bpm inside its container (`--inside-bpm`): the artifact directory is bpm's
    /// volume there, neither checked nor opened again.
    pub inside_bpm: bool,
    /// BBR's artifact directory, checked and opened once (`None`: BBR gave none, or it does not
    /// exist yet and the action will say so).
    pub artifact: Option<ArtifactDir>,
    /// The directory of the running bbr-runner (`BBR_RUNNER_DIR`).
    pub runner_dir: PathBuf,
    /// The caller's environment, read once.
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("who", &self.who)
            .field("root", &self.root)
            .field("inside_bpm", &self.inside_bpm)
            .field("artifact", &self.artifact)
            .field("runner_dir", &self.runner_dir)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// BBR's artifact directory: `ROOT/store/bbr-backup/NAME`, which BBR creates as root. Opened
/// without following a link, so the chown and the cleanup reach that directory and nothing else.
#[derive(Debug)]
pub struct ArtifactDir {
    /// As BBR gave it, without a trailing `/`.
    pub path: PathBuf,
    pub fd: std::os::fd::OwnedFd,
}

/// Why `BBR_ARTIFACT_DIRECTORY` is not used.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactDirError {
    #[error("{ARTIFACT_VAR}={}: refused: BBR's artifact directory is {}/NAME/ (a directory BBR creates as root); the runner gives it to the action's user and removes partial artifacts from it, so it accepts no other place", given.display(), parent.display())]
    Elsewhere { given: PathBuf, parent: PathBuf },
    #[error("{ARTIFACT_VAR}: {0}")]
    Untrusted(#[from] root_side::RootSideError),
}

impl Invocation {
    /// The invocation of `job`'s `action` under `root`, from this process's environment.
    /// `inside_bpm`: the artifact directory is not looked at (bpm mounted it).
    pub fn new(
        root: &Path,
        job: &str,
        action: &str,
        inside_bpm: bool,
    ) -> Result<Invocation, ArtifactDirError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let artifact = match env.get(ARTIFACT_VAR) {
            Some(value) if !inside_bpm => artifact_dir(root, Path::new(value))?,
            _ => None,
        };
        Ok(Invocation {
            who: format!("{job} {action}"),
            root: root.to_path_buf(),
            job: job.into(),
            action: action.into(),
            inside_bpm,
            artifact,
            runner_dir: runner_dir(),
            env,
        })
    }

    /// The job's tmp dir, `ROOT/data/JOB/tmp` (the profiles' `JOB_TMP_DIR`).
    pub fn job_tmp_dir(&self) -> PathBuf {
        job::tmp_dir(&self.root, &self.job)
    }

    /// BBR's own variables from the caller's environment, the only ones that cross into bpm's
    /// container (secrets stay in files bpm mounts read-only).
    pub fn bbr_env(&self) -> Vec<(String, String)> {
        crate::profile::vars::ENV_ALLOW_LIST
            .iter()
            .filter_map(|k| self.env.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect()
    }
}

/// Checks `BBR_ARTIFACT_DIRECTORY` against where BBR puts it, and opens it.
fn artifact_dir(root: &Path, given: &Path) -> Result<Option<ArtifactDir>, ArtifactDirError> {
    let path = PathBuf::from(given.to_string_lossy().trim_end_matches('/'));
    let parent = root.join("store/bbr-backup");
    let name = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) if p == parent => n.to_string_lossy().into_owned(),
        _ => {
            return Err(ArtifactDirError::Elsewhere {
                given: given.to_path_buf(),
                parent,
            })
        }
    };
    let base = match root_side::open_trusted(&parent) {
        Ok(fd) => fd,
        Err(_) if !parent.exists() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    root_side::require_root_only(&base, &parent)?;
    match root_side::open_dir_at(&base, &name, &path) {
        Ok(fd) => Ok(Some(ArtifactDir { path, fd })),
        Err(_) if std::fs::symlink_metadata(&path).is_err() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The directory of the running bbr-runner; bpm's fixed place when it cannot be known.
pub fn runner_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(crate::backend::bpm::RUNNER_EXECUTABLE).with_file_name(""))
}
