//! `bbr-runner review [PROFILE|DIR]... [--backend native|bpm|both] [--abi N]
//! [--format text|json|markdown|sarif] [--threshold SCORE] [--baseline FILE] [--verify]
//! [--policy FILE] [--var NAME=VALUE]...`

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::{say, CommandError, CommandResult};
use crate::cli::{BackendChoice, ReviewArgs, ReviewFormat};
use crate::profile::{self, Backend, Vars};
use crate::review::{baseline, format, report, score, verify};

/// Exit codes of `review`: `crate::exit::review`.
use crate::exit::review as exit_code;

fn profile_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let paths = if paths.is_empty() {
        vec![PathBuf::from("profiles")]
    } else {
        paths.to_vec()
    };
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(d) = stack.pop() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
                    .map_err(|e| format!("{}: {e}", d.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .collect();
                entries.sort();
                for e in entries {
                    if e.is_dir() {
                        stack.push(e);
                    } else if e.extension().is_some_and(|x| x == "yml" || x == "yaml")
                        && e.file_name().is_some_and(|n| n != crate::job::ACTIONS_FILE)
                    {
                        out.push(e);
                    }
                }
            }
        } else if p.is_file() {
            out.push(p);
        } else {
            return Err(format!("{}: no such profile or directory", p.display()));
        }
    }
    out.sort();
    Ok(out)
}

/// Variables for reviewing a profile: `--var`, else the BOSH layout for the job the profile's
/// directory is named after; anything else is left out (and listed).
fn review_vars(file: &Path, given: &[String]) -> Result<Vars, String> {
    let mut v = Vars::from_env_and_args(Vec::new(), given).map_err(|e| e.to_string())?;
    let mut vars = Vars::lenient();
    let job = file
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "JOB".into());
    for (k, val) in [
        ("BOSH_ROOT", "/var/vcap".to_string()),
        ("JOB", job.clone()),
        (
            "BBR_ARTIFACT_DIRECTORY",
            format!("/var/vcap/store/bbr-backup/{job}/"),
        ),
        ("JOB_CONFIG_DIR", format!("/var/vcap/jobs/{job}/config")),
        ("JOB_TMP_DIR", format!("/var/vcap/data/{job}/tmp")),
        (
            "BBR_RUNNER_DIR",
            "/var/vcap/packages/bbr-runner/bin".to_string(),
        ),
    ] {
        if v.get(k).is_none() {
            v.set(k, &val);
        }
    }
    for arg in given
        .iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, _)| k.to_string())
                .unwrap_or_default()
        })
        .chain(
            [
                "BOSH_ROOT",
                "JOB",
                "BBR_ARTIFACT_DIRECTORY",
                "JOB_CONFIG_DIR",
                "JOB_TMP_DIR",
                "BBR_RUNNER_DIR",
            ]
            .iter()
            .map(|s| s.to_string()),
        )
    {
        if let Some(val) = v.get(&arg) {
            vars.set(&arg, val);
        }
    }
    Ok(vars)
}

/// The actions that use this profile, from actions.yml next to it, by name.
fn actions_of(file: &Path) -> Vec<(String, crate::job::Action)> {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Vec::new();
    };
    let Some(job) = dir.file_name().map(|j| j.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let Ok(actions) = crate::job::load_actions(dir, &job) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    actions
        .actions
        .into_iter()
        .filter(|(_, a)| a.profile == name)
        .collect()
}

/// What the runner's root side does for these actions (their `monit:` grants), one line each.
fn root_side(actions: &[(String, crate::job::Action)]) -> Vec<String> {
    let mut by_grant: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for (name, a) in actions {
        if let Some(m) = &a.monit {
            by_grant
                .entry(format!(
                    "monit service `{}`: status, stop, start, with the credentials in {} (the action never sees them)",
                    m.service, m.control_file
                ))
                .or_default()
                .push(name);
        }
    }
    by_grant
        .into_iter()
        .map(|(g, names)| format!("{g}; for {}", names.join(", ")))
        .collect()
}

pub fn review(args: ReviewArgs) -> CommandResult {
    run(args)
        .map(crate::exit::status)
        .map_err(|m| CommandError::Usage(format!("review: {m}")))
}

fn run(args: ReviewArgs) -> Result<i32, String> {
    let policy = match &args.policy {
        Some(p) => score::load_policy(p).map_err(|e| e.to_string())?,
        None => score::Policy::default(),
    };
    let kernel_abi = crate::kernel::landlock_abi().1;
    let abi = match args.abi {
        Some(a) if a > *profile::KNOWN_ABIS.end() => {
            return Err(format!(
                "--abi {a}: expected a Landlock ABI from 0 (Landlock unavailable) to {}",
                profile::KNOWN_ABIS.end()
            ))
        }
        Some(a) => a,
        None => kernel_abi,
    };
    let files = profile_files(&args.paths)?;
    let runner = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut report = report::Report {
        schema: report::SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        kernel_abi,
        evaluated_abi: abi,
        profiles: Vec::new(),
    };
    let mut broken = Vec::new();
    for file in &files {
        let vars = review_vars(file, &args.vars.vars)?;
        let p = profile::load(file, &vars).map_err(|e| e.to_string())?;
        let backends: Vec<Backend> = match &args.backend {
            Some(BackendChoice(list)) => list.clone(),
            None => p.backends.clone(),
        };
        let actions = actions_of(file);
        let command = actions.first().map(|(_, a)| a.command.clone());
        let mut entry = report::profile_report(
            &p,
            &backends,
            abi,
            &policy,
            command.as_deref(),
            report::undefined_variables(file, &vars),
        );
        entry.root_side = root_side(&actions);
        if args.verify {
            for b in entry.backends.iter_mut() {
                if b.backend == "native" {
                    verify::verify(&p, &mut b.claims, &runner).map_err(|e| e.to_string())?;
                    for c in &b.claims {
                        if let Some(crate::review::claims::Verified::Broken(d)) = &c.verified {
                            broken.push(format!("{}: [native] {} is reported {} but the escape attempt succeeded: {d}", entry.file, c.id, c.status.label()));
                        }
                    }
                } else {
                    for c in b.claims.iter_mut() {
                        c.verified = Some(crate::review::claims::Verified::NotRun(
                            "bpm is not available here: no claim of this backend is verified"
                                .into(),
                        ));
                    }
                }
            }
        }
        report.profiles.push(entry);
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match args.format {
        ReviewFormat::Text => crate::show_raw!("{}", format::text(&report, colour)),
        ReviewFormat::Markdown => crate::show_raw!("{}", format::markdown(&report)),
        ReviewFormat::Json => crate::show!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        ),
        ReviewFormat::Sarif => crate::show!(
            "{}",
            serde_json::to_string_pretty(&format::sarif(&report)).map_err(|e| e.to_string())?
        ),
    }
    let mut code = 0;
    if !broken.is_empty() {
        for b in &broken {
            say(&format!("review --verify: BROKEN: {b}"));
        }
        code = exit_code::BROKEN;
    }
    if let Some(t) = args.threshold {
        for p in &report.profiles {
            for b in &p.backends {
                if b.score > t {
                    say(&format!(
                        "review: {} [{}] exposure {:.1} is above the threshold {t:.1}",
                        p.file, b.backend, b.score
                    ));
                    code = code.max(exit_code::THRESHOLD);
                }
            }
        }
    }
    if let Some(base) = &args.baseline {
        let text =
            std::fs::read(base).map_err(|e| format!("--baseline {}: {e}", base.display()))?;
        let old: report::Report = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "--baseline {}: not a review JSON report: {e}",
                base.display()
            )
        })?;
        let (changes, new_findings) = baseline::compare(&old, &report);
        if changes.is_empty() && new_findings.is_empty() {
            say(&format!("review: no change since {}", base.display()));
        }
        for c in &changes {
            say(&format!(
                "review: {} {}: {}",
                if c.gained { "GAINED" } else { "lost" },
                c.profile,
                c.what
            ));
        }
        for (file, f) in &new_findings {
            say(&format!(
                "review: new finding {file}: {} {} {}: {}",
                f.id,
                f.severity.label(),
                f.field,
                f.message
            ));
            if f.severity == crate::review::findings::Severity::High {
                code = code.max(exit_code::THRESHOLD);
            }
        }
    }
    Ok(code)
}
