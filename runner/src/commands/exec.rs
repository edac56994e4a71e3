//! `bbr-runner exec --profile FILE [--var NAME=VALUE]... -- CMD [ARGS...]`

use std::collections::BTreeMap;

use super::{say, vars, CommandError, CommandResult};
use crate::backend::{native, RunError};
use crate::broker::{Broker, MonitGrant};
use crate::cli::ExecArgs;
use crate::plan::{self, PlanError, Request};
use crate::profile;

pub fn exec(args: ExecArgs) -> CommandResult {
    // The action's network namespace, made by a thread while the profile is read and the plan
    // built: started before either says whether the action gets one (a profile with bare TCP
    // ports does not, and the namespace is then dropped unused), as it is the longest step.
    let net = native::NetNamespace::start_if(nix::unistd::geteuid().is_root());
    let mut vars = vars(&args.vars)?;
    if let Some(file) = &args.db_config {
        match crate::actions::acme_db::config::load(file) {
            Ok(c) => {
                for (k, v) in c.profile_vars() {
                    // --var wins.
                    if !args
                        .vars
                        .vars
                        .iter()
                        .any(|a| a.starts_with(&format!("{k}=")))
                    {
                        vars.set(&k, &v);
                    }
                }
            }
            Err(e) => return Err(CommandError::Usage(format!("--db-config: {e}"))),
        }
    }
    let profile =
        profile::load(&args.profile, &vars).map_err(|e| CommandError::Usage(e.to_string()))?;
    crate::trace!("runner", "profile loaded");
    let kernel = crate::kernel::probe_for_run();
    crate::trace!("runner", "kernel probed");
    let caller_env: BTreeMap<String, String> = std::env::vars().collect();
    let plan = plan::build(Request {
        profile: &profile,
        command: &args.command,
        caller_env: &caller_env,
        kernel: &kernel,
        inside_bpm: false,
        label: "exec",
    })
    .map_err(|error| RunError::Plan {
        context: matches!(error, PlanError::Refused(_)).then(|| args.profile.display().to_string()),
        error,
    })?;
    crate::trace!("runner", "plan built (seccomp filter compiled)");
    let broker = match args
        .monit_control_file
        .clone()
        .zip(args.monit_service.clone())
    {
        None => None,
        Some((control_file, service)) => match Broker::new(MonitGrant {
            control_file,
            service,
        }) {
            Ok(b) => Some(b),
            Err(e) => return Err(CommandError::Usage(format!("--monit-control-file: {e}"))),
        },
    };
    let outcome = native::run(&plan, net, broker.as_ref(), &mut |m| say(m));
    if let Some(message) = outcome.message(plan.kill_grace) {
        say(&message);
    }
    crate::trace!("runner", "exit");
    Ok(crate::exit::status(outcome.exit_code()))
}
