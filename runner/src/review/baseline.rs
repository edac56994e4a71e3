//! `--baseline FILE`: what changed since an earlier JSON report. Every privilege gained or lost,
//! per profile, and the findings that are new.

use std::collections::BTreeSet;

use super::findings::Finding;
use super::report::{Grants, ProfileReport, Report};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub profile: String,
    pub gained: bool,
    pub what: String,
}

fn set<T: Ord + Clone>(v: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    v.into_iter().collect()
}

fn diff<T: Ord + Clone + std::fmt::Display>(
    profile: &str,
    label: &str,
    old: BTreeSet<T>,
    new: BTreeSet<T>,
    out: &mut Vec<Change>,
) {
    for x in new.difference(&old) {
        out.push(Change {
            profile: profile.into(),
            gained: true,
            what: format!("{label} {x}"),
        });
    }
    for x in old.difference(&new) {
        out.push(Change {
            profile: profile.into(),
            gained: false,
            what: format!("{label} {x}"),
        });
    }
}

fn grant_changes(profile: &str, old: &Grants, new: &Grants, out: &mut Vec<Change>) {
    diff(
        profile,
        "read",
        set(old.read.iter().map(|g| g.path.clone())),
        set(new.read.iter().map(|g| g.path.clone())),
        out,
    );
    diff(
        profile,
        "execute",
        set(old.execute.iter().map(|g| g.path.clone())),
        set(new.execute.iter().map(|g| g.path.clone())),
        out,
    );
    diff(
        profile,
        "write",
        set(old.write.iter().map(|g| g.path.clone())),
        set(new.write.iter().map(|g| g.path.clone())),
        out,
    );
    diff(
        profile,
        "unix socket",
        set(old.sockets.clone()),
        set(new.sockets.clone()),
        out,
    );
    diff(
        profile,
        "tcp connect port",
        set(old.connect_tcp.clone()),
        set(new.connect_tcp.clone()),
        out,
    );
    diff(
        profile,
        "tcp bind port",
        set(old.bind_tcp.clone()),
        set(new.bind_tcp.clone()),
        out,
    );
    diff(
        profile,
        "capability",
        set(old.capabilities.clone()),
        set(new.capabilities.clone()),
        out,
    );
    diff(
        profile,
        "environment passed",
        set(old.environment_pass.clone()),
        set(new.environment_pass.clone()),
        out,
    );
    diff(
        profile,
        "backend",
        set(old.backends.clone()),
        set(new.backends.clone()),
        out,
    );
    if old.user != new.user {
        let gained = new.user == "root";
        out.push(Change {
            profile: profile.into(),
            gained,
            what: format!("user {} (was {})", new.user, old.user),
        });
    }
    for (label, o, n) in [
        (
            "abstract unix socket scope",
            old.scope_abstract_unix_socket,
            new.scope_abstract_unix_socket,
        ),
        ("signal scope", old.scope_signal, new.scope_signal),
    ] {
        if o != n {
            out.push(Change {
                profile: profile.into(),
                gained: o && !n,
                what: format!("{label} {}", if n { "on" } else { "off" }),
            });
        }
    }
    if old.enforcement != new.enforcement {
        out.push(Change {
            profile: profile.into(),
            gained: new.enforcement == "best_effort",
            what: format!("enforcement {} (was {})", new.enforcement, old.enforcement),
        });
    }
    match (old.timeout_seconds, new.timeout_seconds) {
        (Some(o), None) => out.push(Change {
            profile: profile.into(),
            gained: true,
            what: format!("no timeout (was {o}s)"),
        }),
        (Some(o), Some(n)) if n != o => out.push(Change {
            profile: profile.into(),
            gained: n > o,
            what: format!("timeout {n}s (was {o}s)"),
        }),
        (None, Some(n)) => out.push(Change {
            profile: profile.into(),
            gained: false,
            what: format!("timeout {n}s (was none)"),
        }),
        _ => {}
    }
    for (k, n) in &new.limits {
        let o = old.limits.get(k).copied().flatten();
        match (o, n) {
            (Some(o), None) => out.push(Change {
                profile: profile.into(),
                gained: true,
                what: format!("no {k} limit (was {o})"),
            }),
            (Some(o), Some(n)) if n != &o => out.push(Change {
                profile: profile.into(),
                gained: *n > o,
                what: format!("{k} limit {n} (was {o})"),
            }),
            (None, Some(n)) => out.push(Change {
                profile: profile.into(),
                gained: false,
                what: format!("{k} limit {n} (was none)"),
            }),
            _ => {}
        }
    }
}

/// Privileges gained and lost, and findings new since the baseline.
pub fn compare(baseline: &Report, now: &Report) -> (Vec<Change>, Vec<(String, Finding)>) {
    let mut changes = Vec::new();
    let mut new_findings = Vec::new();
    for p in &now.profiles {
        let Some(old) = baseline.profiles.iter().find(|o| o.file == p.file) else {
            changes.push(Change {
                profile: p.file.clone(),
                gained: true,
                what: "a new profile".into(),
            });
            new_findings.extend(p.findings.iter().map(|f| (p.file.clone(), f.clone())));
            continue;
        };
        grant_changes(&p.file, &old.grants, &p.grants, &mut changes);
        new_findings.extend(new_in(old, p).into_iter().map(|f| (p.file.clone(), f)));
    }
    for old in &baseline.profiles {
        if !now.profiles.iter().any(|p| p.file == old.file) {
            changes.push(Change {
                profile: old.file.clone(),
                gained: false,
                what: "the profile is gone".into(),
            });
        }
    }
    (changes, new_findings)
}

fn new_in(old: &ProfileReport, new: &ProfileReport) -> Vec<Finding> {
    new.findings
        .iter()
        .filter(|f| {
            !old.findings
                .iter()
                .any(|o| o.id == f.id && o.field == f.field && o.message == f.message)
        })
        .cloned()
        .collect()
}
