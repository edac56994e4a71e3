//! One module per verb; each returns the process exit code and writes its own messages.

pub mod acme_api;
pub mod acme_db;
pub mod bpm;
pub mod check;
pub mod demo;
pub mod exec;
pub mod kernel;
pub mod probe;
pub mod review;
pub mod run;

use crate::cli::VarArgs;
use crate::exit;
use crate::profile::Vars;

pub use crate::out::say;

/// Variables for a profile: the allow-listed environment, `--var`, and the built-in
/// `BBR_RUNNER_DIR` (the directory of this binary) unless `--var` sets it.
pub fn vars(args: &VarArgs) -> Result<Vars, i32> {
    let mut vars = Vars::from_env_and_args(std::env::vars(), &args.vars).map_err(|e| {
        say(&format!("--var: {e}"));
        exit::USAGE
    })?;
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
