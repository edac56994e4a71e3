//! `bbr-runner acme-api lock|unlock|serve --config FILE`

use super::{CommandError, CommandResult};
use crate::actions::acme_api;
use crate::cli::{AcmeApiArgs, LockAction};

pub fn acme_api(args: AcmeApiArgs) -> CommandResult {
    let result = match args.action {
        LockAction::Serve => {
            return Ok(crate::exit::status(acme_api::serve::serve(
                &args.config,
                &args.listen,
                args.pidfile.as_deref(),
            )));
        }
        LockAction::Lock => acme_api::load(&args.config).and_then(|c| acme_api::lock(&c)),
        LockAction::Unlock => acme_api::load(&args.config).and_then(|c| {
            let after = std::env::var("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL").ok();
            acme_api::unlock(&c, after.as_deref())
        }),
    };
    result
        .map(|()| std::process::ExitCode::SUCCESS)
        .map_err(CommandError::AcmeApi)
}
