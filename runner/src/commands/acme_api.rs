//! `bbr-runner acme-api lock|unlock|serve --config FILE`

use crate::actions::acme_api::{self, LockError};
use crate::cli::{AcmeApiArgs, LockAction};

pub fn acme_api(args: AcmeApiArgs) -> i32 {
    let result = match args.action {
        LockAction::Serve => {
            return acme_api::serve::serve(&args.config, &args.listen, args.pidfile.as_deref())
        }
        LockAction::Lock => acme_api::load(&args.config).and_then(|c| acme_api::lock(&c)),
        LockAction::Unlock => acme_api::load(&args.config).and_then(|c| {
            let after = std::env::var("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL").ok();
            acme_api::unlock(&c, after.as_deref())
        }),
    };
    match result {
        Ok(()) => 0,
        Err(e @ LockError::Config { .. }) => {
            crate::note!("acme-api: invalid lock config: {e}");
            e.exit_code()
        }
        Err(e) => {
            crate::note!("acme-api: {e}");
            e.exit_code()
        }
    }
}
