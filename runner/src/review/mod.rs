//! The security review: what each profile allows (`report`), what each backend really enforces
//! of it on a given Landlock ABI (`claims`), findings, the exposure score, output formats,
//! `--verify` (escape attempts for real) and `--baseline` (what changed).

pub mod baseline;
pub mod claims;
pub mod findings;
pub mod format;
pub mod report;
pub mod score;
pub mod verify;

use crate::profile::{Access, Origin, Profile};

/// A duration as people write it: `6h`, `10m`, `90s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

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
            p.timeout.map_or("none".to_string(), human_duration)
        ),
    ]
}
