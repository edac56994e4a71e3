//! A job as the runner sees it: the job's rendered config (`config/bbr-runner.yml`: whether
//! release-level backup is on, whether bpm is enabled, the profile variables from the job's
//! properties) and the job's actions (`profiles/JOB/actions.yml`: which profile each BBR action
//! runs under and what it runs). Every path goes through one BOSH root, so tests use a temp dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_ROOT: &str = "/var/vcap";
pub const JOB_CONFIG_FILE: &str = "bbr-runner.yml";
pub const ACTIONS_FILE: &str = "actions.yml";

/// The seven script names BBR knows; `metadata` is not run under a profile.
pub const BBR_ACTIONS: &[&str] = &[
    "backup",
    "restore",
    "pre-backup-lock",
    "post-backup-unlock",
    "pre-restore-lock",
    "post-restore-unlock",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub job: String,
    pub release_level_backup: bool,
    #[serde(default)]
    pub bpm_enabled: bool,
    /// Run as on a kernel whose Landlock ABI is at most this (the job property
    /// `bbr_runner.landlock_abi_max`; the environment's `BBR_RUNNER_LANDLOCK_ABI_MAX` may lower it).
    #[serde(default)]
    pub landlock_abi_max: Option<u8>,
    /// Where the job's profiles and actions.yml are; default `BBR_RUNNER_DIR/../profiles/JOB`.
    #[serde(default)]
    pub profiles_dir: Option<PathBuf>,
    /// A database config (file name in the job's config dir) from which `DB_SOCKET`, `DB_PORT`
    /// and `SQLITE_DIR` are derived, so the profile reaches exactly what the config names.
    #[serde(default)]
    pub db_config: Option<String>,
    /// Profile variables from the job's properties (they win over derived ones).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    pub version: u32,
    pub job: String,
    pub actions: BTreeMap<String, Action>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The profile file, relative to the actions file's directory.
    pub profile: String,
    /// The command, `${VAR}` expanded like the profile.
    pub command: Vec<String>,
    /// The one monit service this action may query, stop and start through the runner's root
    /// side (which holds monit's credentials; the action never sees them).
    #[serde(default)]
    pub monit: Option<MonitDecl>,
    /// The job's long-running service (acme-api's `serve`), not a BBR script: it runs whatever
    /// `release_level_backup` says, and under bpm it is what `bpm start` starts.
    #[serde(default)]
    pub service: bool,
}

/// `monit:` in actions.yml, `${VAR}` expanded like the profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitDecl {
    /// monit's control file, which names its HTTP interface and credentials.
    pub control_file: String,
    /// The service, as monit names it.
    pub service: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
}

fn invalid(file: &Path, message: impl Into<String>) -> JobError {
    JobError::Invalid {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

fn parse_yaml<T: for<'de> Deserialize<'de>>(file: &Path) -> Result<T, JobError> {
    let meta = std::fs::metadata(file).map_err(|e| invalid(file, format!("cannot read: {e}")))?;
    if meta.len() > crate::profile::MAX_PROFILE_BYTES {
        return Err(invalid(
            file,
            format!(
                "the file is {} bytes; files larger than {} bytes are refused",
                meta.len(),
                crate::profile::MAX_PROFILE_BYTES
            ),
        ));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| invalid(file, format!("cannot read: {e}")))?;
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
        let m = crate::profile::clean_yaml_message(&e.to_string());
        match e.location() {
            // file:line:column: key: message, as profile errors.
            Some(l) => {
                let line = text
                    .lines()
                    .nth(l.line().saturating_sub(1) as usize)
                    .unwrap_or("");
                let key = m
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                    .map(str::to_string)
                    .or_else(|| crate::profile::key_on_line(line))
                    .unwrap_or_else(|| "(document)".into());
                JobError::Invalid {
                    file: PathBuf::from(format!("{}:{}:{}", file.display(), l.line(), l.column())),
                    message: format!("{key}: {m}"),
                }
            }
            None => invalid(file, m),
        }
    })
}

pub fn config_dir(root: &Path, job: &str) -> PathBuf {
    root.join("jobs").join(job).join("config")
}

/// The job's tmp dir, `ROOT/data/JOB/tmp` (bpm's `TMPDIR` for the job; the profiles'
/// `JOB_TMP_DIR`).
pub fn tmp_dir(root: &Path, job: &str) -> PathBuf {
    root.join("data").join(job).join("tmp")
}

pub fn load_config(root: &Path, job: &str) -> Result<JobConfig, JobError> {
    let file = config_dir(root, job).join(JOB_CONFIG_FILE);
    let c: JobConfig = parse_yaml(&file)?;
    if c.job != job {
        let at = PathBuf::from(format!("{}:1:1", file.display()));
        return Err(invalid(
            &at,
            format!("job: says `{}`, but it is the config of job `{job}`", c.job),
        ));
    }
    Ok(c)
}

pub fn load_actions(dir: &Path, job: &str) -> Result<Actions, JobError> {
    let file = dir.join(ACTIONS_FILE);
    let a: Actions = parse_yaml(&file)?;
    if a.version != 1 {
        return Err(invalid(
            &file,
            format!("version: {} is not known; this runner reads 1", a.version),
        ));
    }
    if a.job != job {
        return Err(invalid(
            &file,
            format!("job: says `{}`, expected `{job}`", a.job),
        ));
    }
    for (name, action) in &a.actions {
        if action.service && BBR_ACTIONS.contains(&name.as_str()) {
            return Err(invalid(
                &file,
                format!("actions.{name}.service: a BBR action is not the job's service"),
            ));
        }
        if !action.service && !BBR_ACTIONS.contains(&name.as_str()) {
            return Err(invalid(
                &file,
                format!(
                    "actions.{name}: not a BBR action ({}); the job's long-running service says `service: true`",
                    BBR_ACTIONS.join(", ")
                ),
            ));
        }
        if action.command.is_empty() {
            return Err(invalid(&file, format!("actions.{name}.command: is empty")));
        }
        if action.profile.contains('/') {
            return Err(invalid(
                &file,
                format!(
                    "actions.{name}.profile: `{}` must be a file name in {}",
                    action.profile,
                    dir.display()
                ),
            ));
        }
    }
    Ok(a)
}

/// The name prefix of an action's private temp directories in the job's tmp dir. Actions name
/// theirs so (`acme-db`), and `bbr-runner run`, holding the action's lock, removes the ones a
/// killed run left.
pub fn private_tmp_prefix(action: &str) -> String {
    format!("{action}-")
}
