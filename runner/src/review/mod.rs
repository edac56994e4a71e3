//! The security review: what each profile allows (`report`), what each backend really enforces
//! of it on a given Landlock ABI (`claims`), findings, the exposure score, output formats,
//! `--verify` (escape attempts for real) and `--baseline` (what changed).

pub mod baseline;
/// The claims are the backends' own (`backend::Backend::claims`).
pub use crate::backend::claims;
pub mod findings;
pub mod format;
pub mod report;
pub mod score;
pub mod verify;

use crate::profile::{Access, Origin, Profile};

/// The grants for `access`: each path written directly, each named set once.
pub fn grant_list(p: &Profile, access: Access) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in p.grants(access) {
        let item = match &g.origin {
            Origin::Direct => g.path.display().to_string(),
            Origin::Set(name) => format!("@{name}"),
        };
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn list(v: Vec<String>) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

/// A few lines: who it runs as, what it may write and reach.
pub fn summary_lines(p: &Profile) -> Vec<String> {
    let ports = |v: &[u16]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    let caps: Vec<String> = p.capabilities.iter().map(|c| c.to_string()).collect();
    vec![
        format!(
            "runs as {} with {}; may write {}",
            p.user,
            if caps.is_empty() {
                "no capabilities".to_string()
            } else {
                caps.join(", ")
            },
            list(grant_list(p, Access::Write))
        ),
        format!(
            "TCP connect {}, bind {}; unix sockets {}; timeout {}",
            ports(&p.connect_tcp),
            ports(&p.bind_tcp),
            if p.sockets.is_empty() {
                "none".into()
            } else {
                p.sockets
                    .iter()
                    .map(|s| s.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            p.timeout
                .map_or("none".to_string(), crate::profile::units::format_duration)
        ),
    ]
}
