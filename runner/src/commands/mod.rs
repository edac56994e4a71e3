//! One module per verb; each returns the process exit code and writes its own messages.

pub mod acme_db;
pub mod check;
pub mod exec;
pub mod kernel;
pub mod probe;

use crate::cli::VarArgs;
use crate::exit;
use crate::profile::Vars;

/// Prints a message for the operator on stderr, prefixed with the program name.
pub fn say(message: &str) {
    eprintln!("bbr-runner: {message}");
}

pub fn vars(args: &VarArgs) -> Result<Vars, i32> {
    Vars::from_env_and_args(std::env::vars(), &args.vars).map_err(|e| {
        say(&format!("--var: {e}"));
        exit::USAGE
    })
}
