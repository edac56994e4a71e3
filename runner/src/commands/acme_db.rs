//! `bbr-runner acme-db backup|restore|verify|rehearse [--config FILE] [--artifact-dir DIR]`

use std::time::Instant;

use super::{CommandError, CommandResult};
use crate::actions::acme_db::{self, config, DbError};
use crate::actions::artifact;
use crate::cli::{AcmeDbArgs, DbAction};

fn verb(a: DbAction) -> &'static str {
    match a {
        DbAction::Backup => "backup",
        DbAction::Restore => "restore",
        DbAction::Verify => "verify",
        DbAction::Rehearse => "rehearse",
    }
}

fn verify(args: &AcmeDbArgs) -> Result<(), DbError> {
    let started = Instant::now();
    let m = artifact::verify(&args.artifact_dir)
        .map_err(|e| DbError::Refused(format!("the artifact does not verify: {e}")))?;
    let bytes: u64 = m.files.iter().map(|f| f.size).sum();
    let secs = started.elapsed().as_secs_f64();
    crate::note!(
        "acme-db verify: {} file(s), {} bytes, every SHA-256 matches the manifest ({:.2}s, {:.0} MiB/s)",
        m.files.len(),
        bytes,
        secs,
        bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    Ok(())
}

pub fn acme_db(args: AcmeDbArgs) -> CommandResult {
    let result = if args.action == DbAction::Verify {
        verify(&args)
    } else {
        match &args.config {
            None => {
                return Err(CommandError::AcmeDbUsage {
                    verb: verb(args.action),
                    message: "--config FILE is required".into(),
                })
            }
            Some(file) => {
                config::load(file)
                    .map_err(DbError::from)
                    .and_then(|c| match args.action {
                        DbAction::Backup => acme_db::backup(&c, &args.artifact_dir).map(drop),
                        DbAction::Rehearse => acme_db::rehearse(&c, &args.artifact_dir),
                        DbAction::Restore | DbAction::Verify => {
                            acme_db::restore(&c, &args.artifact_dir)
                        }
                    })
            }
        }
    };
    result
        .map(|()| std::process::ExitCode::SUCCESS)
        .map_err(|error| CommandError::AcmeDb {
            verb: verb(args.action),
            error,
        })
}
