//! bpm as `run` and the review see it (`Backend`): available when the job enables bpm, bpm is
//! installed and the action needs no root side outside the sandbox; it runs the action through
//! `bpm run` (`delegate`) and gives the artifact directory back as BBR made it when it falls
//! back; its claims are bpm's container's, or the native sandbox's inside a privileged one.

use crate::backend::claims::{
    claim, common, ownership_and_terminal, replace, tcp_text, timeout_claim, why, Claim, Status,
};
use crate::backend::native::Native;
use crate::backend::{Attempt, Backend, Ran, Run, RunError, Unavailable};
use crate::exit;
use crate::out::say;
use crate::profile::{self, Profile};
use crate::root_side;

use super::Delegated;

#[derive(Debug)]
pub struct Bpm;

impl Backend for Bpm {
    fn kind(&self) -> profile::Backend {
        profile::Backend::Bpm
    }

    fn available(&self, run: &Run) -> Result<String, Unavailable> {
        if run.broker.is_some() {
            return Err(Unavailable("the action asks monit through the runner's root side, which only the native backend keeps outside the sandbox".into()));
        }
        if !run.config.bpm_enabled {
            return Err(Unavailable(
                "bpm is not enabled for this job (bpm.enabled: false)".into(),
            ));
        }
        match crate::kernel::find_bpm(&run.cx.root) {
            Some(bpm) => Ok(bpm.display().to_string()),
            None => {
                let places: Vec<String> = crate::kernel::bpm_locations(&run.cx.root)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                Err(Unavailable(format!(
                    "bpm is enabled but not installed (neither {})",
                    places.join(" nor ")
                )))
            }
        }
    }

    fn run(&self, run: &Run) -> Attempt {
        let cx = run.cx;
        let Some(bpm_path) = crate::kernel::find_bpm(&cx.root) else {
            return Attempt::Passed("bpm is no longer installed".into());
        };
        // bpm chowns and chmods a writable volume (the artifact directory) for vcap; a run
        // that falls back from bpm gets it back as BBR made it.
        let before = cx
            .artifact
            .as_ref()
            .and_then(|a| nix::sys::stat::fstat(&a.fd).ok());
        let undo_bpm = || {
            if let (Some(a), Some(st)) = (&cx.artifact, before) {
                if let Err(e) =
                    root_side::give(&a.fd, st.st_uid, st.st_gid, st.st_mode & 0o7777, &a.path)
                {
                    say(&format!("{}: {e}", cx.who));
                }
            }
        };
        match super::delegate(&bpm_path, cx, run.profile) {
            Delegated::Ran(code) => Attempt::Ran(code),
            Delegated::InnerRefused => {
                undo_bpm();
                Attempt::Passed(
                    "the runner inside bpm's container refused this profile (see above)".into(),
                )
            }
            Delegated::Unsuitable(why) => Attempt::Passed(why),
            Delegated::NotStarted(why) => {
                undo_bpm();
                // A failure, not a refusal, when no backend comes after bpm.
                if run.profile.backends.last() == Some(&self.kind()) {
                    return Attempt::Failed {
                        error: RunError::SandboxFailed(format!("{}: {why}; nothing ran", cx.who)),
                        ran: Ran::No,
                    };
                }
                Attempt::Passed(why)
            }
            Delegated::Interrupted { signal } => {
                say(&format!(
                    "{}: the runner received {signal} and stopped the action (passed on to bpm's container; bpm, runc and the container are gone)",
                    cx.who
                ));
                Attempt::Ran(exit::SIGNAL_BASE + signal as i32)
            }
            Delegated::BpmFailed(error) => Attempt::Failed {
                error,
                ran: Ran::No,
            },
        }
    }

    fn claims(&self, p: &Profile, abi: u8) -> Vec<Claim> {
        bpm_claims(p, abi)
    }

    fn runs(&self, p: &Profile, abi: u8) -> (bool, String) {
        if super::privileged(p) {
            // Privileged (bpm.yml `unsafe.privileged`): the runner is root inside and applies
            // its whole sandbox, so the profile runs or is refused there as natively.
            let (runs, why) = Native.runs(p, abi);
            return (runs, format!("{why}, inside bpm's privileged container (bpm.yml `unsafe.privileged: true`: bpm's seccomp filter would refuse Landlock and namespaces; the runner applies its whole sandbox before the action starts)"));
        }
        // Else bpm's default container: the runner inside is vcap and cannot become another user.
        if p.user != "vcap" {
            return (
                false,
                format!("refused inside bpm: bpm gives the job's directories to vcap and starts the runner as vcap, so it cannot switch to user `{}`; falls back to the next backend", p.user),
            );
        }
        (
            true,
            "runs under bpm; the runner applies what it can inside and lists the rest".into(),
        )
    }
}

/// bpm with the bpm.yml `bpm render` gives the profile. Privileged (`backend::bpm::privileged`):
/// the runner's whole sandbox inside bpm's container, as natively, except that bpm's cgroup
/// holds the limits. Else bpm's default container, plus whatever the runner can apply inside
/// it: bpm's seccomp filter answers landlock_* with ENOSYS (checked on a real bpm).
fn bpm_claims(p: &Profile, abi: u8) -> Vec<Claim> {
    use Status::*;
    if super::privileged(p) {
        let mut out = Native.claims(p, abi);
        for c in &mut out {
            if matches!(c.id.as_str(), "identity" | "capabilities" | "no_new_privs") {
                c.why = format!(
                    "{} by the runner, which bpm's privileged container starts as root",
                    c.why
                );
            }
        }
        replace(&mut out, bpm_limits());
        return out;
    }
    let mut out = vec![
        claim("fs.read", "reads only its read, execute and write grants".into(), Partial, "bpm's mount view: all of /etc, /usr, /bin, /lib, every package, the job's directory and the volumes are readable; volumes under /var/vcap can reach other jobs' config"),
        claim("fs.write", "writes only its write grants".into(), Partial, "bpm mounts the job's data, tmp and log directories and writable volumes; every bpm job runs as vcap, so vcap-owned files in mounted paths are writable across jobs"),
        claim("fs.execute", "executes only its execute grants".into(), NotEnforced, "bpm mounts /usr, /bin, /lib and every package executable"),
        claim("net.tcp_connect", tcp_text("connects over TCP", &p.connect_tcp), NotEnforced, "bpm shares the host network; the runner cannot apply Landlock inside bpm's seccomp filter"),
        claim("net.tcp_bind", tcp_text("binds TCP", &p.bind_tcp), NotEnforced, "bpm shares the host network"),
        claim("net.udp", "sends and receives no UDP".into(), NotEnforced, "bpm shares the host network"),
        claim("unix.pathname", "connects only to its declared unix sockets".into(), Partial, "only mounted paths are visible; every socket in a mounted directory is reachable"),
        claim("scope.abstract_unix", "connects to no abstract unix socket made outside the sandbox".into(), NotEnforced, "abstract sockets belong to the network namespace, which bpm shares with the host"),
        claim("scope.signal", "signals no process outside the sandbox".into(), Enforced, "bpm's pid namespace"),
    ];
    out.extend(common(p));

    replace(
        &mut out,
        claim(
            "no_new_privs",
            "cannot gain privileges through exec (setuid, file capabilities)".into(),
            Enforced,
            "bpm sets no_new_privileges and mounts nosuid",
        ),
    );
    why(
        &mut out,
        "identity",
        "bpm runs every job as vcap (one uid shared by all bpm jobs)",
    );
    why(
        &mut out,
        "capabilities",
        "bpm's empty capability set, plus the ones its bpm.yml lists",
    );
    replace(&mut out, bpm_limits());
    replace(
        &mut out,
        claim(
            "environment",
            "sees only the environment the profile passes or sets".into(),
            Enforced,
            "the runner inside bpm's container clears the environment: bpm's own TMPDIR, LANG, PATH and HOME reach the action only when the profile passes them",
        ),
    );
    if p.user != "vcap" {
        replace(
            &mut out,
            claim(
                "identity",
                format!("runs as {}", p.user),
                NotEnforced,
                "bpm always runs as vcap (without unsafe.privileged)",
            ),
        );
    }
    out.push(timeout_claim(
        p,
        "bpm run has none; the runner inside bpm's container sends TERM to the action's process group, then KILL after the grace period",
        "the profile has no timeout (BBR and bpm run have none either)",
    ));
    out.extend(ownership_and_terminal(p, true));
    out
}

fn bpm_limits() -> Claim {
    claim("limits", "runs within its declared limits".into(), Status::Enforced, "bpm applies memory and processes as cgroup limits (its bpm.yml, rendered from the profile) and open_files and core as rlimits; the runner inside bpm's container applies cpu_seconds, file_size, open_files and core as rlimits")
}
