//! The profile format, version 1: one YAML file per action, parsed strictly into a `Profile`
//! whose values are already checked, expanded and normalized. Nothing downstream re-checks.

mod error;
mod raw;
pub mod sets;
pub mod units;
mod validate;
pub mod vars;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Position, ProfileError};
pub use vars::{VarError, Vars};
pub use write::to_yaml;

/// The profile format version this runner reads.
pub const FORMAT_VERSION: u64 = 1;
/// The Landlock ABIs whose meaning the format knows (ABI 1 = Linux 5.13 ... ABI 10 = Linux 7.2).
pub const KNOWN_ABIS: std::ops::RangeInclusive<u8> = 1..=10;
/// Profiles larger than this are refused before parsing.
pub const MAX_PROFILE_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Refuse to run if anything declared cannot be enforced here.
    Strict,
    /// Run, and say on stderr exactly what is not enforced.
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Bpm,
    Native,
}

impl Backend {
    /// Every backend, in the order the review reports them.
    pub const ALL: [Backend; 2] = [Backend::Native, Backend::Bpm];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Bpm => "bpm",
            Backend::Native => "native",
        }
    }

    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Every backend's name, quoted, in alphabetical order, joined with `sep`
    /// (`` `bpm` or `native` ``).
    pub fn names(sep: &str) -> String {
        let mut names: Vec<String> = Backend::ALL
            .iter()
            .map(|b| format!("`{}`", b.name()))
            .collect();
        names.sort();
        names.join(sep)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Execute,
    Write,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Execute => "execute",
            Access::Write => "write",
        }
    }
}

/// Where a path grant came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Written in the profile: must exist.
    Direct,
    /// A member of the named set `@name`: skipped when absent.
    Set(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGrant {
    pub access: Access,
    /// As written in the profile, before expansion (e.g. `${BBR_ARTIFACT_DIRECTORY}`, `@devices`).
    pub written: String,
    /// Absolute, normalized (no `.`, `..`, duplicate or trailing slashes), variables expanded.
    pub path: PathBuf,
    pub origin: Origin,
    pub position: Position,
}

/// rlimits; `None` leaves the inherited limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub core_file_size_bytes: Option<u64>,
    pub cpu_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub source: PathBuf,
    pub description: String,
    pub abi: u8,
    pub enforcement: Enforcement,
    /// In order of preference.
    pub backends: Vec<Backend>,
    pub user: String,
    /// `None`: the user's primary group.
    pub group: Option<String>,
    pub supplementary_groups: Vec<String>,
    pub grants: Vec<PathGrant>,
    /// Unix sockets to expose; everything else in their directories is hidden.
    pub sockets: Vec<PathBuf>,
    /// The ports of `network.connect_tcp` (with or without a host).
    pub connect_tcp: Vec<u16>,
    /// `network.connect_tcp` entries written `HOST:PORT`: the only endpoints the action reaches
    /// when every entry names its host (through the supervisor's forwarder).
    pub connect_endpoints: Vec<(String, u16)>,
    /// `network.connect_tcp` entries written `PORT`: that port on every host (Landlock's rule).
    pub connect_any_host: Vec<u16>,
    pub bind_tcp: Vec<u16>,
    /// `network.bind_tcp` entries written `HOST:PORT`: the runner binds them and hands the
    /// listeners to the action (`BBR_RUNNER_TCP_LISTENERS`), which then needs no bind of its own.
    pub bind_endpoints: Vec<(String, u16)>,
    /// `network.bind_tcp` entries written `PORT`: the action binds that port itself.
    pub bind_any_host: Vec<u16>,
    pub scope_abstract_unix_socket: bool,
    pub scope_signal: bool,
    /// Kept capabilities, as `CAP_*` names, sorted.
    pub capabilities: Vec<caps::Capability>,
    pub limits: Limits,
    pub env_pass: Vec<String>,
    pub env_set: BTreeMap<String, String>,
    /// `None`: no timeout (the review flags it: BBR itself has none).
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    /// The line of each top-level key in the file, for messages and findings (1 when absent).
    pub key_lines: BTreeMap<String, u64>,
}

fn entries(with_host: &[(String, u16)], any_host: &[u16]) -> Vec<String> {
    with_host
        .iter()
        .map(|(h, p)| {
            if h.contains(':') {
                format!("[{h}]:{p}")
            } else {
                format!("{h}:{p}")
            }
        })
        .chain(any_host.iter().map(u16::to_string))
        .collect()
}

impl Profile {
    /// The line of a top-level key in the profile's file (1 when the key is not written).
    pub fn line_of(&self, key: &str) -> u64 {
        self.key_lines.get(key).copied().unwrap_or(1)
    }

    /// `network.connect_tcp` as written back: `HOST:PORT` (`[v6]:PORT`) or `PORT`.
    pub fn connect_entries(&self) -> Vec<String> {
        entries(&self.connect_endpoints, &self.connect_any_host)
    }

    /// `network.bind_tcp` as written back.
    pub fn bind_entries(&self) -> Vec<String> {
        entries(&self.bind_endpoints, &self.bind_any_host)
    }
}

impl Profile {
    pub fn grants(&self, access: Access) -> impl Iterator<Item = &PathGrant> {
        self.grants.iter().filter(move |g| g.access == access)
    }
}

/// Reads and validates one profile file.
pub fn load(file: &Path, vars: &Vars) -> Result<Profile, ProfileError> {
    let read_err = |source| ProfileError::Read {
        file: file.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(read_err)?;
    if meta.len() > MAX_PROFILE_BYTES {
        return Err(ProfileError::Syntax {
            file: file.to_path_buf(),
            message: format!(
                "the profile is {} bytes; profiles larger than {} bytes are refused",
                meta.len(),
                MAX_PROFILE_BYTES
            ),
        });
    }
    let bytes = std::fs::read(file).map_err(read_err)?;
    parse(file, &bytes, vars)
}

/// Validates a profile from its bytes; `file` is only used in messages.
pub fn parse(file: &Path, bytes: &[u8], vars: &Vars) -> Result<Profile, ProfileError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(bytes, e.valid_up_to());
        ProfileError::invalid(
            Position {
                file: file.to_path_buf(),
                line,
                column,
            },
            "(document)",
            "the profile is not valid UTF-8",
        )
    })?;
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(ProfileError::Syntax {
            file: file.to_path_buf(),
            message: "the profile is empty; it needs at least `version` and `abi`".into(),
        });
    }
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let raw: raw::RawProfile = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| yaml_error(file, text, &e))?;
    let mut profile = validate::validate(file, raw, vars)?;
    profile.key_lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with([' ', '\t', '#', '-']))
        .filter_map(|(i, l)| key_on_line(l).map(|k| (k, i as u64 + 1)))
        .collect();
    Ok(profile)
}

fn line_column(bytes: &[u8], offset: usize) -> (u64, u64) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() as u64 + 1;
    (line, column)
}

/// Turns a YAML or type error into file:line:column, the key on that line, and a clean message.
fn yaml_error(file: &Path, text: &str, e: &serde_saphyr::Error) -> ProfileError {
    let message = clean_yaml_message(&e.to_string());
    let Some(loc) = e.location() else {
        return ProfileError::Syntax {
            file: file.to_path_buf(),
            message,
        };
    };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
        .map(str::to_string);
    let field = missing
        .or_else(|| {
            text.lines()
                .nth(loc.line().saturating_sub(1) as usize)
                .and_then(key_on_line)
        })
        .unwrap_or_else(|| "(document)".to_string());
    ProfileError::invalid(
        Position {
            file: file.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
        },
        field,
        message,
    )
}

/// A YAML library message without its trailing position (we print our own) or its advice to
/// programmers.
pub fn clean_yaml_message(message: &str) -> String {
    let mut m = message.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    if let Some(i) = m.rfind(" at line ") {
        let tail = &m[i + " at line ".len()..];
        let is_position = tail.split_once(", column ").is_some_and(|(l, c)| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
        });
        if is_position {
            m.truncate(i);
        }
    }
    m
}

/// The mapping key a line defines, if any: `  - name: x` gives `name`.
pub fn key_on_line(line: &str) -> Option<String> {
    let body = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = body.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && !key.contains(char::is_whitespace)).then(|| key.to_string())
}

#[cfg(test)]
mod tests;
