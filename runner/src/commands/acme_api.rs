//! `bbr-runner acme-api lock|unlock --config FILE`

use crate::actions::acme_api::{self, LockError};
use crate::cli::{AcmeApiArgs, LockAction};

pub fn acme_api(args: AcmeApiArgs) -> i32 {
    let result = acme_api::load(&args.config).and_then(|c| match args.action {
        LockAction::Lock => acme_api::lock(&c),
        LockAction::Unlock => {
            let after = std::env::var("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL").ok();
            acme_api::unlock(&c, after.as_deref())
        }
    });
    match result {
        Ok(()) => 0,
        Err(e @ LockError::Config { .. }) => {
            eprintln!("acme-api: invalid lock config: {e}");
            e.exit_code()
        }
        Err(e) => {
            eprintln!("acme-api: {e}");
            e.exit_code()
        }
    }
}
