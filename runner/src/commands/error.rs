//! What a command returns when it fails: `main` prints it once (`CommandError::print`) and
//! exits with its code (`CommandError::exit_code`, from `crate::exit`). What a command says
//! while it works (the backend it chose, progress, findings) it still says itself.

use crate::actions::acme_api::LockError;
use crate::actions::acme_db::DbError;
use crate::backend::RunError;
use crate::exit;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad command line, profile, config or variable: nothing was run.
    #[error("{0}")]
    Usage(String),
    /// Several inputs were bad (`check` of several files): each is said in turn.
    #[error("{}", .0.join("\n"))]
    UsageEach(Vec<String>),
    /// A declared restriction cannot be enforced here, or another run holds the action:
    /// nothing was run.
    #[error("{0}")]
    Refused(String),
    /// The runner itself failed.
    #[error("{0}")]
    Internal(String),
    /// The backends could not run the action, or the plan could not be built.
    #[error(transparent)]
    Run(#[from] RunError),
    /// `acme-db` was called without what it needs (its own exit code for a bad config).
    #[error("acme-db {verb}: {message}")]
    AcmeDbUsage { verb: &'static str, message: String },
    /// `acme-db`'s backup, restore, verify or rehearsal failed.
    #[error("acme-db {verb} failed: {error}")]
    AcmeDb {
        verb: &'static str,
        #[source]
        error: DbError,
    },
    /// `acme-api`'s lock or unlock failed, or its config is invalid.
    #[error("acme-api: {}{}", if matches!(.0, LockError::Config { .. }) { "invalid lock config: " } else { "" }, .0)]
    AcmeApi(#[source] LockError),
    /// A step of `demo` failed.
    #[error("bbr-runner demo: {0}")]
    Demo(String),
}

impl CommandError {
    /// The process's exit code for this error, from `crate::exit`.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Usage(_) | CommandError::UsageEach(_) => exit::USAGE,
            CommandError::Refused(_) => exit::REFUSED,
            CommandError::Internal(_) => exit::INTERNAL,
            CommandError::Run(e) => e.exit_code(),
            CommandError::AcmeDbUsage { .. } => exit::acme_db::CONFIG,
            CommandError::AcmeDb { error, .. } => error.exit_code(),
            CommandError::AcmeApi(e) => e.exit_code(),
            CommandError::Demo(_) => exit::demo::FAILED,
        }
    }

    /// Says the error on stderr: the runner's own prefixed `bbr-runner: `, the actions' and the
    /// demo's with their own name, as they always were.
    pub fn print(&self) {
        match self {
            CommandError::UsageEach(each) => each.iter().for_each(|m| super::say(m)),
            CommandError::AcmeDbUsage { .. }
            | CommandError::AcmeDb { .. }
            | CommandError::AcmeApi(_)
            | CommandError::Demo(_) => crate::note!("{self}"),
            _ => super::say(&self.to_string()),
        }
    }
}

/// What a command returns: its exit code when it ran to the end (the action's status, a
/// review's findings), or the error that stopped it.
pub type CommandResult = Result<std::process::ExitCode, CommandError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_the_words_and_code_it_had() {
        let plan = CommandError::Run(RunError::Plan {
            context: Some("p.yml".into()),
            error: crate::plan::PlanError::Refused(vec!["a".into(), "b".into()]),
        });
        assert_eq!(plan.to_string(), "p.yml: refused: a; b");
        assert_eq!(plan.exit_code(), exit::REFUSED);
        let lock = CommandError::AcmeApi(LockError::Config {
            file: "l.json".into(),
            key: "monit".into(),
            message: "missing".into(),
        });
        assert_eq!(
            lock.to_string(),
            "acme-api: invalid lock config: l.json: monit: missing"
        );
        assert_eq!(lock.exit_code(), exit::acme_api::CONFIG);
        let failed = CommandError::AcmeApi(LockError::Failed("gone".into()));
        assert_eq!(failed.to_string(), "acme-api: gone");
        assert_eq!(failed.exit_code(), exit::acme_api::FAILED);
        assert_eq!(
            CommandError::AcmeDbUsage {
                verb: "backup",
                message: "--config FILE is required".into()
            }
            .to_string(),
            "acme-db backup: --config FILE is required"
        );
    }
}
