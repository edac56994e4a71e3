//! bpm.yml, field for field. Serialization emits only keys bpm knows, and leaves out defaults,
//! so that a rendered file says exactly what it changes. Parsing is strict: bpm itself ignores
//! unknown keys (a typo silently does nothing), we refuse them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpmConfig {
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub name: String,
    pub executable: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// Names without the `CAP_` prefix, as bpm wants them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ephemeral_disk: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub persistent_disk: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_volumes: Vec<Volume>,
    #[serde(default, rename = "unsafe", skip_serializing_if = "Option::is_none")]
    pub unsafe_: Option<Unsafe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_signal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_start: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// With a unit, 1024-based: `512M`, `1G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// The pids cgroup limit (threads count too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_file_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub path: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub writable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_executions: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub mount_only: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsafe {
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrestricted_volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_pid_namespace: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl BpmConfig {
    pub fn parse(text: &str) -> Result<BpmConfig, ParseError> {
        serde_saphyr::from_str(text).map_err(|e| ParseError(e.to_string()))
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    pub fn process(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_field() -> BpmConfig {
        let vol = |p: &str| Volume {
            path: p.into(),
            writable: true,
            allow_executions: true,
            mount_only: true,
            shared: true,
        };
        BpmConfig {
            processes: vec![Process {
                name: "backup".into(),
                executable: "/var/vcap/packages/bbr-runner/bin/bbr-runner".into(),
                args: vec!["run".into(), "bbr-acme-db".into()],
                env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
                workdir: Some("/var/vcap/jobs/bbr-acme-db".into()),
                hooks: Some(Hooks {
                    pre_start: Some("/var/vcap/jobs/x/bin/hook".into()),
                }),
                capabilities: vec!["NET_BIND_SERVICE".into()],
                limits: Some(Limits {
                    memory: Some("1G".into()),
                    processes: Some(64),
                    open_files: Some(1024),
                    core_file_size: Some(0),
                }),
                ephemeral_disk: true,
                persistent_disk: true,
                additional_volumes: vec![vol("/var/vcap/data/other")],
                unsafe_: Some(Unsafe {
                    privileged: true,
                    unrestricted_volumes: vec![vol("/srv/*")],
                    host_pid_namespace: true,
                }),
                shutdown_signal: Some("INT".into()),
            }],
        }
    }

    #[test]
    fn every_field_round_trips() {
        let c = every_field();
        let text = c.to_yaml();
        for key in [
            "name:",
            "executable:",
            "args:",
            "env:",
            "workdir:",
            "hooks:",
            "pre_start:",
            "capabilities:",
            "limits:",
            "memory:",
            "processes:",
            "open_files:",
            "core_file_size:",
            "ephemeral_disk:",
            "persistent_disk:",
            "additional_volumes:",
            "writable:",
            "allow_executions:",
            "mount_only:",
            "shared:",
            "unsafe:",
            "privileged:",
            "unrestricted_volumes:",
            "host_pid_namespace:",
            "shutdown_signal:",
        ] {
            assert!(text.contains(key), "{key} missing from\n{text}");
        }
        assert_eq!(BpmConfig::parse(&text).expect("parses"), c);
    }

    #[test]
    fn defaults_are_left_out_and_unknown_keys_refused() {
        let minimal = BpmConfig {
            processes: vec![Process {
                name: "p".into(),
                executable: "/bin/true".into(),
                ..Process::default()
            }],
        };
        assert_eq!(
            minimal.to_yaml(),
            "processes:\n- name: p\n  executable: /bin/true\n"
        );
        let e =
            BpmConfig::parse("processes:\n- name: p\n  executable: /bin/true\n  writeable: true\n")
                .expect_err("typo");
        assert!(e.to_string().contains("writeable"), "{e}");
    }
}
