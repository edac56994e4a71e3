//! The `acme-api` job's lock and unlock: stop and start the API through monit, and wait until
//! it really happened (a stop returns before the process has stopped). Lock is done when monit
//! reports the service not monitored and its process is gone; unlock when monit reports it
//! running and its health endpoint answers. Unlock is idempotent, safe without a prior lock, and
//! does every step it can before reporting every failure.
//!
//! Both run as vcap with no capability: monit is asked through the runner's root side (the
//! broker, `crate::broker`), which holds monit's credentials and answers for this one service.

pub mod serve;
mod store;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::broker::ClientError;

/// The job's lock config (`config/lock.json`), rendered from the job's properties.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// The monit service name (the runner's broker answers for the service the job's
    /// actions.yml grants; a different name here is refused by monit's answer).
    pub process: String,
    /// The service's pidfile, to see the process really gone.
    pub pidfile: PathBuf,
    /// What unlock waits for after the start: answers 2xx when the API serves.
    pub health_url: String,
    #[serde(default = "default_timeout")]
    pub stop_timeout_seconds: u64,
    #[serde(default = "default_timeout")]
    pub start_timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    60
}

const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: {key}: {message}", file.display())]
    Config {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl LockError {
    pub fn exit_code(&self) -> i32 {
        match self {
            LockError::Config { .. } => crate::exit::acme_api::CONFIG,
            LockError::Failed(_) => crate::exit::acme_api::FAILED,
        }
    }
}

pub fn load(file: &Path) -> Result<LockConfig, LockError> {
    use crate::actions::acme_db::config::{locate_key, parse_json};
    // `file` carries the position, as `file:line:column`, when known.
    let at = |line: Option<usize>, column: Option<usize>| -> PathBuf {
        match (line, column) {
            (Some(l), Some(c)) => PathBuf::from(format!("{}:{l}:{c}", file.display())),
            _ => file.to_path_buf(),
        }
    };
    let bytes = std::fs::read(file).map_err(|e| LockError::Config {
        file: file.to_path_buf(),
        key: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let c: LockConfig = parse_json(&text).map_err(|e| LockError::Config {
        file: at(e.line, e.column),
        key: e.key,
        message: e.message,
    })?;
    let invalid = |key: &str, message: String| {
        let (line, column) =
            locate_key(&text, key).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        LockError::Config {
            file: at(line, column),
            key: key.into(),
            message,
        }
    };
    if c.process.is_empty() {
        return Err(invalid("process", "is empty".into()));
    }
    if c.stop_timeout_seconds == 0 || c.start_timeout_seconds == 0 {
        return Err(invalid(
            "stop_timeout_seconds",
            "timeouts must be at least 1 second".into(),
        ));
    }
    if !c.health_url.starts_with("http://") {
        return Err(invalid(
            "health_url",
            format!("`{}` is not an http:// URL", c.health_url),
        ));
    }
    Ok(c)
}

/// What monit says about the service, in the words of `monit status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitStatus {
    pub status: String,
    pub monitoring: String,
    pub pid: Option<i32>,
    /// A process of the service that still runs (the runner's root side looked).
    pub alive: Option<i32>,
}

impl MonitStatus {
    fn describe(&self) -> String {
        format!(
            "status `{}`, monitoring `{}`{}",
            self.status,
            self.monitoring,
            self.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        )
    }

    /// From the broker's status line (monit's numbers), worded as `monit status` words them.
    pub fn from_broker(line: &str) -> Option<MonitStatus> {
        let s = crate::broker::monit::ServiceStatus::from_line(line)?;
        let pending = match s.pending {
            0 => "",
            2 => " - restart pending",
            3 => " - stop pending",
            5 => " - unmonitor pending",
            6 => " - start pending",
            7 => " - monitor pending",
            _ => " - action pending",
        };
        let monitoring = match s.monitor {
            0 => "Not monitored",
            1 => "Monitored",
            2 => "Initializing",
            4 => "Waiting",
            _ => "Unknown",
        };
        let status = match (s.monitor, s.status) {
            (0, _) => "Not monitored".to_string(),
            (_, 0) => "OK".to_string(),
            (_, bits) => format!("failed (monit error bits {bits:#x})"),
        };
        Some(MonitStatus {
            status: format!("{status}{pending}"),
            monitoring: monitoring.to_string(),
            pid: s.pid.and_then(|p| i32::try_from(p).ok()),
            alive: s.alive.and_then(|p| i32::try_from(p).ok()),
        })
    }
}

/// Asks the runner's broker; `request` is `status`, `stop` or `start`. The channel is taken
/// from the environment once and kept for the process's life.
fn monit(request: &str) -> Result<String, ClientError> {
    static CLIENT: std::sync::OnceLock<Result<crate::broker::Client, ClientError>> =
        std::sync::OnceLock::new();
    match CLIENT.get_or_init(crate::broker::Client::from_env) {
        Ok(c) => c.request(request),
        Err(e) => Err(e.clone()),
    }
}

fn status() -> Result<MonitStatus, String> {
    let line = monit("status").map_err(|e| e.to_string())?;
    MonitStatus::from_broker(&line).ok_or_else(|| format!("cannot read monit's status `{line}`"))
}

/// Not monitored, and no process monit reported for it during this run still runs (the
/// runner's root side looks: the action's own /proc shows only its pid namespace).
fn is_stopped(s: &MonitStatus) -> bool {
    s.monitoring.eq_ignore_ascii_case("Not monitored") && s.alive.is_none()
}

fn healthy(url: &str) -> bool {
    ureq::get(url)
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()
        .is_ok_and(|r| r.status().is_success())
}

fn say(m: &str) {
    crate::note!("acme-api: {m}");
}

/// Stops the service through monit and waits until it is really stopped.
pub fn lock(c: &LockConfig) -> Result<(), LockError> {
    let started = Instant::now();
    let first = status().map_err(|e| {
        LockError::Failed(format!(
            "cannot lock {}: monit does not answer ({e}); is monit running?",
            c.process
        ))
    })?;
    if is_stopped(&first) {
        say(&format!(
            "{} is already stopped ({}); locked",
            c.process,
            first.describe()
        ));
        return Ok(());
    }
    let deadline = started + Duration::from_secs(c.stop_timeout_seconds);
    let mut last: MonitStatus;
    let mut asked = false;
    loop {
        if !asked {
            // monit refuses while another action is pending; ask again until the deadline.
            match monit("stop") {
                Ok(_) => asked = true,
                Err(e) if !e.is_pending() => {
                    return Err(LockError::Failed(format!("cannot stop {}: {e}", c.process)));
                }
                Err(_) => {}
            }
        }
        match status() {
            Ok(s) => last = s,
            Err(e) => {
                return Err(LockError::Failed(format!(
                    "lost monit while stopping {}: {e}",
                    c.process
                )))
            }
        }
        if asked && is_stopped(&last) {
            say(&format!(
                "{} stopped in {:.1}s; locked",
                c.process,
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if Instant::now() >= deadline {
            let alive = last.alive;
            return Err(LockError::Failed(format!(
                "{} did not stop within {}s (waited {:.1}s); monit's last status: {}{}; monit's own stop program may still stop it; raise the lock deadline if the service needs longer",
                c.process,
                c.stop_timeout_seconds,
                started.elapsed().as_secs_f64(),
                last.describe(),
                alive.map(|p| format!("; process {p} is still running")).unwrap_or_default()
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// Starts the service through monit and waits until it runs and answers its health check.
pub fn unlock(c: &LockConfig, after_backup: Option<&str>) -> Result<(), LockError> {
    match after_backup {
        Some(v) => say(&format!(
            "BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL={v}; unlocking either way"
        )),
        None => {
            say("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL is not set (restore or cleanup); unlocking")
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(c.start_timeout_seconds);
    let mut failures = Vec::new();
    let mut asked = false;
    let mut last: MonitStatus;
    loop {
        if !asked {
            match monit("start") {
                Ok(_) => asked = true,
                Err(e) if e.is_pending() => {}
                Err(e) => {
                    failures.push(format!("cannot start {}: {e}", c.process));
                    break;
                }
            }
        }
        match status() {
            Ok(s) => last = s,
            Err(e) => {
                failures.push(format!("monit does not answer: {e}"));
                break;
            }
        }
        let running = last.status == "OK" && last.monitoring.eq_ignore_ascii_case("Monitored");
        if asked && running && healthy(&c.health_url) {
            say(&format!(
                "{} runs and answers {} ({:.1}s); unlocked",
                c.process,
                c.health_url,
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if Instant::now() >= deadline {
            failures.push(format!(
                "{} did not become healthy within {}s; monit's last status: {}; {} {}",
                c.process,
                c.start_timeout_seconds,
                last.describe(),
                c.health_url,
                if healthy(&c.health_url) {
                    "answers"
                } else {
                    "does not answer"
                }
            ));
            break;
        }
        std::thread::sleep(POLL);
    }
    Err(LockError::Failed(format!(
        "unlock of {} failed: {}; run the unlock again, or `monit start {}` on the VM by hand",
        c.process,
        failures.join("; "),
        c.process
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_monits_numbers_as_monit_status_does() {
        let s = MonitStatus::from_broker("status=0 monitor=1 pending=3 pid=24323").expect("line");
        assert_eq!(s.status, "OK - stop pending");
        assert_eq!(s.monitoring, "Monitored");
        assert_eq!(s.pid, Some(24323));
        let s = MonitStatus::from_broker("status=0 monitor=0 pending=0").expect("line");
        assert_eq!(
            (s.status.as_str(), s.monitoring.as_str(), s.pid),
            ("Not monitored", "Not monitored", None)
        );
        let s = MonitStatus::from_broker("status=512 monitor=1 pending=6").expect("line");
        assert_eq!(s.status, "failed (monit error bits 0x200) - start pending");
        assert_eq!(MonitStatus::from_broker("nonsense"), None);
    }
}
