//! `bbr-runner acme-db backup|restore --config FILE [--artifact-dir DIR]`

use crate::actions::acme_db::{self, config, DbError};
use crate::cli::{AcmeDbArgs, DbAction};

pub fn acme_db(args: AcmeDbArgs) -> i32 {
    let result = config::load(&args.config)
        .map_err(DbError::from)
        .and_then(|c| match args.action {
            DbAction::Backup => acme_db::backup(&c, &args.artifact_dir).map(drop),
            DbAction::Restore => acme_db::restore(&c, &args.artifact_dir),
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            let verb = match args.action {
                DbAction::Backup => "backup",
                DbAction::Restore => "restore",
            };
            eprintln!("acme-db {verb} failed: {e}");
            e.exit_code()
        }
    }
}
