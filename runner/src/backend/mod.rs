//! Backends: how an action's plan is enforced, each behind the `Backend` trait. `native` forks a
//! child that applies the sandbox itself; `bpm` delegates to `bpm run`, inside which the runner
//! applies its plan again (`--inside-bpm`). `run` tries the profile's `backends` in order
//! (`choose_and_run`), saying which one runs and why the others cannot; the review asks each
//! backend what it enforces (`claims`) and whether it would run a profile (`runs`).
//!
//! A new backend is a module here implementing `Backend`, its arm in `of`, and its variant in
//! `profile::Backend`.

pub mod bpm;
pub mod claims;
pub mod native;

use crate::broker::Broker;
use crate::invocation::Invocation;
use crate::job::JobConfig;
use crate::out::say;
use crate::plan::PlanError;
use crate::profile::{self, Profile};

pub use claims::Claim;

/// One run of an action, as `run` hands it to a backend.
#[derive(Debug)]
pub struct Run<'a> {
    pub cx: &'a Invocation,
    pub config: &'a JobConfig,
    pub profile: &'a Profile,
    /// The action's command, its variables expanded.
    pub command: &'a [String],
    /// The root side's monit broker, when the action declares `monit:`.
    pub broker: Option<&'a Broker>,
}

/// Whether the action may have run (and written partial artifacts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    Maybe,
    No,
}

/// What one backend made of a run.
#[derive(Debug)]
pub enum Attempt {
    /// The action ran (or may have): its exit status.
    Ran(i32),
    /// Nothing ran, and the next backend of the profile's list may run it: why.
    Passed(String),
    /// Nothing more is tried.
    Failed { error: RunError, ran: Ran },
}

/// Why a backend cannot take a run here (said on stderr; the next backend is tried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Why a run failed or was refused, with the runner's exit code for it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A declared restriction cannot be enforced here, or another run holds the action.
    #[error("{0}")]
    Refused(String),
    /// A setup step failed before the action ran.
    #[error("{0}")]
    SandboxFailed(String),
    /// The runner itself failed.
    #[error("{0}")]
    Internal(String),
    /// The plan could not be built; `context` (who runs, the profile's file) precedes it.
    #[error("{}{error}", context.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Plan {
        context: Option<String>,
        #[source]
        error: PlanError,
    },
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Refused(_) => crate::exit::REFUSED,
            RunError::SandboxFailed(_) => crate::exit::SANDBOX_FAILED,
            RunError::Internal(_) => crate::exit::INTERNAL,
            RunError::Plan { error, .. } => error.exit_code(),
        }
    }
}

pub trait Backend: Sync {
    /// Its name in a profile's `backends`.
    fn kind(&self) -> profile::Backend;
    /// Whether it can take this run here: what it will use (said as `backend NAME (...)`;
    /// empty: the reasons the backends before it passed), or why not.
    fn available(&self, run: &Run) -> Result<String, Unavailable>;
    /// Runs the action.
    fn run(&self, run: &Run) -> Attempt;
    /// What it enforces of `p` on Landlock ABI `abi`, claim by claim (the review).
    fn claims(&self, p: &Profile, abi: u8) -> Vec<Claim>;
    /// Whether it would run `p` on Landlock ABI `abi`, and why (the review's `runs`).
    fn runs(&self, p: &Profile, abi: u8) -> (bool, String);
}

/// The backend a profile names.
pub fn of(kind: profile::Backend) -> &'static dyn Backend {
    match kind {
        profile::Backend::Native => &native::Native,
        profile::Backend::Bpm => &bpm::Bpm,
    }
}

/// Runs the action with the first backend of the profile's list that can run it here, saying
/// which and why; its exit status, or why none could.
pub fn choose_and_run(run: &Run) -> (Result<i32, RunError>, Ran) {
    let mut reasons = Vec::new();
    for kind in &run.profile.backends {
        let backend = of(*kind);
        let using = match backend.available(run) {
            Ok(using) => using,
            Err(Unavailable(why)) => {
                reasons.push(why);
                continue;
            }
        };
        let why = if !using.is_empty() {
            using
        } else if reasons.is_empty() {
            "the profile's first choice".to_string()
        } else {
            reasons.join("; ")
        };
        say(&format!("{}: backend {} ({why})", run.cx.who, kind.name()));
        match backend.run(run) {
            Attempt::Ran(code) => return (Ok(code), Ran::Maybe),
            Attempt::Passed(why) => reasons.push(why),
            Attempt::Failed { error, ran } => return (Err(error), ran),
        }
    }
    let names: Vec<&str> = run.profile.backends.iter().map(|b| b.name()).collect();
    let error = RunError::Refused(format!(
        "{}: refused: no backend of the profile's list ({}) can run here: {}",
        run.cx.who,
        names.join(", "),
        reasons.join("; ")
    ));
    (Err(error), Ran::No)
}
