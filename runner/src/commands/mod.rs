//! One module per verb. Each returns its exit code (`Ok`: it ran to the end; the action's status
//! when it ran one) or the `CommandError` that stopped it, which `main` prints once.

pub mod acme_api;
pub mod acme_db;
pub mod bpm;
pub mod check;
pub mod demo;
mod error;
pub mod exec;
pub mod kernel;
pub mod probe;
pub mod review;
pub mod run;

use crate::cli::VarArgs;
use crate::profile::Vars;

pub use error::{CommandError, CommandResult};

pub use crate::out::say;

/// Variables for a profile: the allow-listed environment, `--var`, and the built-in
/// `BBR_RUNNER_DIR` (the directory of this binary) unless `--var` sets it.
pub fn vars(args: &VarArgs) -> Result<Vars, CommandError> {
    let mut vars = Vars::from_env_and_args(std::env::vars(), &args.vars)
        .map_err(|e| CommandError::Usage(format!("--var: {e}")))?;
    if vars.get(BBR_RUNNER_DIR).is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        {
            vars.set(BBR_RUNNER_DIR, &dir.to_string_lossy());
        }
    }
    Ok(vars)
}

/// Built-in variable: the directory holding the running bbr-runner.
pub const BBR_RUNNER_DIR: &str = "BBR_RUNNER_DIR";
