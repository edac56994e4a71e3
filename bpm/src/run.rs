//! `bpm run JOB -p PROCESS [-v PATH[:OPTIONS]]... [-e KEY=VALUE]...` and how to read what it did.
//! bpm's pitfalls: errors inside its run step before runc starts print
//! `Error: failed to run job-process: ...` and exit **0**; a container of the same name that is
//! already running makes `run` a silent no-op (exit 0). See `shared/research/bpm.md` 2.4, 2.5.

use crate::validate::{volume_option_ok, volume_problem, Violation};

/// The marker of bpm's exit-0 failure.
pub const FAILED_TO_RUN: &str = "Error: failed to run job-process";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    pub path: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub bpm: String,
    pub job: String,
    pub process: String,
    pub volumes: Vec<VolumeArg>,
    pub env: Vec<(String, String)>,
    pub bosh_root: String,
}

/// The argv of `bpm run`, after the checks bpm would make of `-v` and `-e`.
pub fn run_argv(req: &RunRequest) -> Result<Vec<String>, Violation> {
    let mut argv = vec![
        req.bpm.clone(),
        "run".into(),
        req.job.clone(),
        "-p".into(),
        req.process.clone(),
    ];
    for (i, v) in req.volumes.iter().enumerate() {
        let field = format!("-v[{i}]");
        if v.path.contains(':') {
            return Err(Violation {
                field,
                message: format!("`{}`: bpm cannot take a volume path containing `:`", v.path),
            });
        }
        if let Some(m) = volume_problem(&req.job, &req.bosh_root, &v.path) {
            return Err(Violation { field, message: m });
        }
        if let Some(bad) = v.options.iter().find(|o| !volume_option_ok(o)) {
            return Err(Violation {
                field,
                message: format!("invalid volume option `{bad}`"),
            });
        }
        argv.push("-v".into());
        argv.push(if v.options.is_empty() {
            v.path.clone()
        } else {
            format!("{}:{}", v.path, v.options.join(","))
        });
    }
    for (i, (k, v)) in req.env.iter().enumerate() {
        if k.is_empty() || k.contains('=') {
            return Err(Violation {
                field: format!("-e[{i}]"),
                message: format!("`{k}` is not a variable name"),
            });
        }
        argv.push("-e".into());
        argv.push(format!("{k}={v}"));
    }
    Ok(argv)
}

/// `bpm pid JOB -p PROCESS`: exit 0 with a pid when that container is running.
pub fn pid_argv(bpm: &str, job: &str, process: &str) -> Vec<String> {
    vec![
        bpm.into(),
        "pid".into(),
        job.into(),
        "-p".into(),
        process.into(),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process ran and exited with this status (as bpm/tini report it).
    Exited(i32),
    /// bpm failed before the process started; `status` is bpm's (0 for the known pitfall).
    BpmFailed { status: i32, message: String },
}

/// What runc and tini print when the container's process could not be started at all.
pub const NOT_STARTED: [&str; 2] = ["runc run failed", "[FATAL tini"];

/// Reads bpm's exit status and stderr.
///
/// When the process in the container exits with N != 0, bpm prints
/// `Error: failed to run job-process: exit status N (exit status N)` and exits N (checked against
/// bpm built from cloudfoundry/bpm-release at 2d75618 with runc 1.1.5): the process ran, unless runc
/// or tini said it could not start it. The same line with `(exit status 0)` is the pitfall: bpm
/// failed before runc and exits 0.
pub fn interpret(status: i32, stderr: &str) -> Outcome {
    if let Some(line) = stderr.lines().find(|l| l.contains(FAILED_TO_RUN)) {
        let line = line.trim();
        let not_started = stderr
            .lines()
            .find(|l| NOT_STARTED.iter().any(|m| l.contains(m)));
        if status != 0
            && not_started.is_none()
            && line.ends_with(&format!(": exit status {status} (exit status {status})"))
        {
            return Outcome::Exited(status);
        }
        let why = not_started.map_or(String::new(), |l| format!(" ({})", l.trim()));
        return Outcome::BpmFailed {
            status,
            message: format!("{line}{why}"),
        };
    }
    if status != 0 {
        if let Some(line) = stderr
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with("Error: "))
        {
            return Outcome::BpmFailed {
                status,
                message: line.trim().to_string(),
            };
        }
    }
    Outcome::Exited(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RunRequest {
        RunRequest {
            bpm: "/var/vcap/jobs/bpm/bin/bpm".into(),
            job: "bbr-acme-db".into(),
            process: "backup".into(),
            volumes: vec![VolumeArg {
                path: "/var/vcap/store/bbr-backup/bbr-acme-db".into(),
                options: vec!["writable".into()],
            }],
            env: vec![(
                "BBR_ARTIFACT_DIRECTORY".into(),
                "/var/vcap/store/bbr-backup/bbr-acme-db/".into(),
            )],
            bosh_root: "/var/vcap".into(),
        }
    }

    #[test]
    fn argv_is_exact() {
        assert_eq!(
            run_argv(&req()).expect("valid"),
            [
                "/var/vcap/jobs/bpm/bin/bpm",
                "run",
                "bbr-acme-db",
                "-p",
                "backup",
                "-v",
                "/var/vcap/store/bbr-backup/bbr-acme-db:writable",
                "-e",
                "BBR_ARTIFACT_DIRECTORY=/var/vcap/store/bbr-backup/bbr-acme-db/",
            ]
        );
    }

    #[test]
    fn bad_volumes_and_env_are_refused_before_bpm() {
        let mut r = req();
        r.volumes[0].path.push('/');
        assert!(run_argv(&r)
            .expect_err("trailing slash")
            .message
            .contains("canonical"));
        let mut r = req();
        r.volumes[0].options = vec!["rw".into()];
        assert_eq!(run_argv(&r).expect_err("option").field, "-v[0]");
        let mut r = req();
        r.volumes[0].path = "/var/vcap/a:b".into();
        assert!(run_argv(&r).expect_err("colon").message.contains("`:`"));
        let mut r = req();
        r.env.push(("".into(), "x".into()));
        assert_eq!(run_argv(&r).expect_err("env").field, "-e[1]");
    }

    #[test]
    fn exit_zero_with_failed_to_run_is_a_failure() {
        assert_eq!(
            interpret(
                0,
                "Error: failed to run job-process: exit status 1 (exit status 0)\n"
            ),
            Outcome::BpmFailed {
                status: 0,
                message: "Error: failed to run job-process: exit status 1 (exit status 0)".into()
            }
        );
        assert_eq!(interpret(6, "some job output\n"), Outcome::Exited(6));
        assert!(matches!(
            interpret(
                1,
                "Error: failed to run job-process: bundle build failure: x (exit status 1)\n"
            ),
            Outcome::BpmFailed { status: 1, .. }
        ));
        assert_eq!(interpret(0, ""), Outcome::Exited(0));
        assert!(matches!(
            interpret(1, "Error: invalid config: name\n"),
            Outcome::BpmFailed { status: 1, .. }
        ));
    }

    /// What real bpm printed here when the process in its container exited 121 and 3, and when
    /// runc or tini could not start it (bpm built from source, runc 1.1.5; see docs/running.md).
    #[test]
    fn a_process_that_exits_nonzero_ran() {
        let exited = "bbr-runner: inside bpm, refused: x\nError: failed to run job-process: exit status 121 (exit status 121)\n";
        assert_eq!(interpret(121, exited), Outcome::Exited(121));
        assert_eq!(
            interpret(
                3,
                "Error: failed to run job-process: exit status 3 (exit status 3)\n"
            ),
            Outcome::Exited(3)
        );
        // The status bpm exits with must be the one in the line.
        assert!(matches!(
            interpret(
                1,
                "Error: failed to run job-process: exit status 3 (exit status 3)\n"
            ),
            Outcome::BpmFailed { .. }
        ));
        let runc = "time=\"2026-11-26T07:09:05Z\" level=error msg=\"runc run failed: unable to start container process: error mounting\"\nError: failed to run job-process: exit status 1 (exit status 1)\n";
        match interpret(1, runc) {
            Outcome::BpmFailed { status: 1, message } => {
                assert!(message.contains("runc run failed"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let tini = "[FATAL tini (6)] exec /var/vcap/packages/x/bin/x failed: No such file or directory\nError: failed to run job-process: exit status 127 (exit status 127)\n";
        assert!(matches!(
            interpret(127, tini),
            Outcome::BpmFailed { status: 127, .. }
        ));
    }
}
