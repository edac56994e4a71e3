//! The native backend as `run` and the review see it (`Backend`): it can always take a run (a
//! profile it cannot enforce is refused by the plan), prepares what the action's user writes
//! (the job's tmp dir and BBR's artifact directory, as root, through opened descriptors), builds
//! the plan and supervises the action (`native::run`).

use crate::backend::claims::{self, Claim};
use crate::backend::{Attempt, Backend, Ran, Run, RunError, Unavailable};
use crate::invocation::Invocation;
use crate::out::say;
use crate::plan::{self, PlanError, Request};
use crate::profile::{self, Access, Enforcement, Profile};
use crate::root_side;

use crate::backend::bpm::INNER_REFUSAL;

#[derive(Debug)]
pub struct Native;

impl Backend for Native {
    fn kind(&self) -> profile::Backend {
        profile::Backend::Native
    }

    fn available(&self, _run: &Run) -> Result<String, Unavailable> {
        Ok(String::new())
    }

    fn run(&self, run: &Run) -> Attempt {
        match run_native(run.cx, run.profile, run.command, run.broker) {
            Ok(code) => Attempt::Ran(code),
            // Counted as a run that may have written: its partials are removed, as after any
            // failed native run (under the action's lock nothing else writes them).
            Err(error) => Attempt::Failed {
                error,
                ran: Ran::Maybe,
            },
        }
    }

    fn claims(&self, p: &Profile, abi: u8) -> Vec<Claim> {
        let mut out = claims::decided(p, abi);
        out.extend(claims::common(p));
        out.push(claims::timeout_claim(
            p,
            "the supervisor sends TERM to the process group, then KILL after the grace period",
            "the profile has no timeout (BBR has none either)",
        ));
        out.extend(claims::ownership_and_terminal(p, false));
        out
    }

    fn runs(&self, p: &Profile, abi: u8) -> (bool, String) {
        let facts = crate::layers::Facts::native(p.abi.min(abi));
        let missing: Vec<String> = crate::layers::decide(p, &facts)
            .into_iter()
            .filter(|c| c.declared && c.status == crate::layers::Status::NotEnforced)
            .map(|c| c.id.to_string())
            .collect();
        if missing.is_empty() {
            (true, "runs".into())
        } else if p.enforcement == Enforcement::Strict {
            (
                false,
                format!(
                    "refused: strict, and on Landlock ABI {abi} no layer enforces {}",
                    missing.join(", ")
                ),
            )
        } else {
            (
                true,
                format!("runs (best_effort), without {}", missing.join(", ")),
            )
        }
    }
}

/// Runs the action in the native sandbox: inside bpm's container too (`cx.inside_bpm`), where
/// bpm has made the job's directories. The action's status, or why it did not run.
pub fn run_native(
    cx: &Invocation,
    profile: &Profile,
    command: &[String],
    broker: Option<&crate::broker::Broker>,
) -> Result<i32, RunError> {
    let inside_bpm = cx.inside_bpm;
    let failed = |m: String| RunError::SandboxFailed(format!("{}: {m}", cx.who));
    // The job's tmp dir exists before the plan checks the grants (bpm creates it too).
    let tmp = cx.job_tmp_dir();
    if !inside_bpm && profile.grants(Access::Write).any(|g| g.path == tmp) {
        open_job_tmp(cx).map_err(failed)?;
    }
    let kernel = crate::kernel::probe_for_run();
    // Made by a thread while the plan is built.
    let net =
        super::NetNamespace::start_if(plan::network_namespace_wanted(profile, &kernel, inside_bpm));
    let plan = plan::build(Request {
        profile,
        command,
        caller_env: &cx.env,
        kernel: &kernel,
        inside_bpm,
        label: &cx.who,
    })
    .map_err(|error| match &error {
        PlanError::Refused(reasons) if inside_bpm => RunError::Refused(format!(
            "{}: {INNER_REFUSAL} {}",
            cx.who,
            reasons.join("; ")
        )),
        PlanError::Refused(_) => RunError::Plan {
            context: Some(format!("{}: {}", cx.who, profile.source.display())),
            error,
        },
        _ => RunError::Plan {
            context: Some(cx.who.clone()),
            error,
        },
    })?;
    if inside_bpm {
        crate::backend::bpm::say_applied_inside(&plan);
    } else if let Some(id) = &plan.identity {
        prepare_dirs(cx, profile, id).map_err(failed)?;
    }
    let outcome = super::run(&plan, net, broker, &mut |m| say(m));
    if let Some(message) = outcome.message(plan.kill_grace) {
        say(&format!("{}: {message}", cx.who));
    }
    Ok(outcome.exit_code())
}

/// The job's tmp dir (`ROOT/data/JOB/tmp`), created as root if missing, opened name by name
/// without following a link (`data/JOB` is the job user's under bpm).
fn open_job_tmp(cx: &Invocation) -> Result<std::os::fd::OwnedFd, String> {
    let data = cx.root.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let base = root_side::open_trusted(&data).map_err(|e| e.to_string())?;
    let job = root_side::ensure_dir_at(&base, &cx.job, 0o755, &data.join(&cx.job))
        .map_err(|e| e.to_string())?;
    root_side::ensure_dir_at(&job, "tmp", 0o700, &cx.job_tmp_dir()).map_err(|e| e.to_string())
}

/// As bpm does for its volumes: the job's tmp dir exists and is the action user's, and so is
/// the artifact directory BBR created as root (the action writes it, not root). Each is given
/// through its opened descriptor; the artifact directory only when root or that user owns it.
fn prepare_dirs(
    cx: &Invocation,
    profile: &Profile,
    identity: &plan::Identity,
) -> Result<(), String> {
    let tmp = cx.job_tmp_dir();
    if profile.grants(Access::Write).any(|g| g.path == tmp) {
        let fd = open_job_tmp(cx)?;
        // data/JOB is the job user's: it can rename any directory there to `tmp`. Only the
        // action user's own tmp dir, or an empty one root just made, is given.
        let owner = nix::sys::stat::fstat(&fd)
            .map_err(|e| format!("{}: {e}", tmp.display()))?
            .st_uid;
        let empty =
            std::fs::read_dir(root_side::fd_path(&fd)).is_ok_and(|mut d| d.next().is_none());
        if owner != identity.uid && !(owner == 0 && empty) {
            return Err(format!(
                "{}: belongs to uid {owner} and is not an empty directory root just made: refused (it is not the job's tmp dir; move it away)",
                tmp.display()
            ));
        }
        root_side::give(&fd, identity.uid, identity.gid, 0o700, &tmp).map_err(|e| e.to_string())?;
    }
    if let Some(art) = &cx.artifact {
        if profile.grants(Access::Write).any(|g| g.path == art.path) {
            let owner = nix::sys::stat::fstat(&art.fd)
                .map_err(|e| format!("{}: {e}", art.path.display()))?
                .st_uid;
            if owner != 0 && owner != identity.uid {
                return Err(format!(
                    "{}: belongs to uid {owner}, neither root (BBR creates it) nor {}: refused",
                    art.path.display(),
                    identity.user
                ));
            }
            root_side::give(&art.fd, identity.uid, identity.gid, 0o700, &art.path)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
