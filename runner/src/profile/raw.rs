//! The profile file exactly as written: serde types with a position on every value.
//! Nothing here is validated beyond YAML types; `profile::validate` turns it into a `Profile`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub version: S<u64>,
    #[serde(default)]
    pub description: Option<S<String>>,
    pub abi: S<u64>,
    #[serde(default)]
    pub enforcement: Option<S<String>>,
    #[serde(default)]
    pub backends: Option<Vec<S<String>>>,
    #[serde(default)]
    pub user: Option<S<String>>,
    #[serde(default)]
    pub group: Option<S<String>>,
    #[serde(default)]
    pub supplementary_groups: Vec<S<String>>,
    #[serde(default)]
    pub sets: BTreeMap<String, Vec<S<String>>>,
    #[serde(default)]
    pub filesystem: RawFilesystem,
    #[serde(default)]
    pub sockets: Vec<S<String>>,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub scopes: RawScopes,
    #[serde(default)]
    pub capabilities: Vec<S<String>>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub environment: RawEnvironment,
    #[serde(default)]
    pub timeout: Option<S<String>>,
    #[serde(default)]
    pub kill_grace: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    #[serde(default)]
    pub read: Vec<S<String>>,
    #[serde(default)]
    pub execute: Vec<S<String>>,
    #[serde(default)]
    pub write: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    #[serde(default)]
    pub connect_tcp: Vec<S<String>>,
    #[serde(default)]
    pub bind_tcp: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScopes {
    #[serde(default)]
    pub abstract_unix_socket: Option<S<bool>>,
    #[serde(default)]
    pub signal: Option<S<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    pub open_files: Option<S<u64>>,
    #[serde(default)]
    pub processes: Option<S<u64>>,
    /// Address space, with a unit: `512M`, `2G`.
    #[serde(default)]
    pub memory: Option<S<String>>,
    #[serde(default)]
    pub file_size: Option<S<String>>,
    #[serde(default)]
    pub core_file_size: Option<S<String>>,
    #[serde(default)]
    pub cpu_seconds: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    #[serde(default)]
    pub pass: Vec<S<String>>,
    #[serde(default)]
    pub set: BTreeMap<String, S<String>>,
}
