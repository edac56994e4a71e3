//! The report for people (text, colour only on a terminal; Markdown) and for tools (JSON,
//! SARIF 2.1.0).

use std::fmt::Write as _;

use super::claims::{Status, Verified};
use super::findings::{Severity, RULES};
use super::report::{GrantEntry, ProfileReport, Report};

fn paint(s: &str, code: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn status(s: Status, colour: bool) -> String {
    let (label, code) = match s {
        Status::Enforced => ("ENFORCED", "32"),
        Status::Partial => ("PARTIAL", "33"),
        Status::NotEnforced => ("NOT ENFORCED", "31"),
    };
    paint(label, code, colour)
}

fn verified(v: &Option<Verified>, colour: bool) -> String {
    match v {
        None => String::new(),
        Some(Verified::Held(d)) => {
            format!("\n        verified: {} ({d})", paint("held", "32", colour))
        }
        Some(Verified::Broken(d)) => format!(
            "\n        verified: {} ({d})",
            paint("BROKEN", "1;31", colour)
        ),
        Some(Verified::Observed(d)) => format!("\n        observed: {d}"),
        Some(Verified::NotRun(d)) => format!("\n        not verified: {d}"),
    }
}

fn grant_list(v: &[GrantEntry]) -> String {
    let mut out: Vec<String> = Vec::new();
    for g in v {
        let item = match &g.set {
            Some(s) => format!("@{s}"),
            None if g.written != g.path => format!("{} ({})", g.path, g.written),
            None => g.path.clone(),
        };
        if !out.contains(&item) {
            out.push(item);
        }
    }
    if out.is_empty() {
        "nothing".into()
    } else {
        out.join(", ")
    }
}

fn numbers(v: &[u16]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    }
}

fn grants_text(p: &ProfileReport) -> Vec<String> {
    let g = &p.grants;
    let limits: Vec<String> = g
        .limits
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
        .collect();
    let mut lines = vec![
        format!(
            "user {} (group {}), abi {}, {}, backends {}",
            g.user,
            g.group.as_deref().unwrap_or("primary"),
            g.abi,
            g.enforcement,
            g.backends.join(", ")
        ),
        format!("read: {}", grant_list(&g.read)),
        format!("execute: {}", grant_list(&g.execute)),
        format!("write: {}", grant_list(&g.write)),
        format!(
            "unix sockets: {}",
            if g.sockets.is_empty() {
                "none".into()
            } else {
                g.sockets.join(", ")
            }
        ),
        format!(
            "tcp connect: {}; tcp bind: {}",
            numbers(&g.connect_tcp),
            numbers(&g.bind_tcp)
        ),
        format!(
            "capabilities: {}",
            if g.capabilities.is_empty() {
                "none".into()
            } else {
                g.capabilities.join(", ")
            }
        ),
        format!(
            "limits: {}; timeout {}",
            if limits.is_empty() {
                "none".into()
            } else {
                limits.join(", ")
            },
            g.timeout_seconds
                .map_or("none".to_string(), |t| format!("{t}s"))
        ),
        format!(
            "environment: pass {}; set {}",
            if g.environment_pass.is_empty() {
                "nothing".into()
            } else {
                g.environment_pass.join(", ")
            },
            if g.environment_set.is_empty() {
                "nothing".into()
            } else {
                g.environment_set
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    ];
    if !p.undefined_variables.is_empty() {
        lines.push(format!(
            "not given, their entries left out: {}",
            p.undefined_variables.join(", ")
        ));
    }
    for r in &p.root_side {
        lines.push(format!("root side does for it: {r}"));
    }
    lines
}

pub fn text(r: &Report, colour: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "bbr-runner review: claims evaluated on Landlock ABI {} (this kernel: ABI {})",
        r.evaluated_abi, r.kernel_abi
    );
    for p in &r.profiles {
        let _ = writeln!(o, "\n{}", paint(&p.file, "1", colour));
        if !p.description.is_empty() {
            let _ = writeln!(o, "  {}", p.description);
        }
        for line in grants_text(p) {
            let _ = writeln!(o, "  {line}");
        }
        for b in &p.backends {
            let _ = writeln!(
                o,
                "  [{}] exposure {:.1} {}; {}",
                b.backend, b.score, b.band, b.why
            );
            for c in &b.claims {
                let _ = writeln!(
                    o,
                    "    {:<20} {:<12} {}\n        {}{}",
                    c.id,
                    status(c.status, colour),
                    c.claim,
                    c.why,
                    verified(&c.verified, colour)
                );
            }
        }
        if p.findings.is_empty() {
            let _ = writeln!(o, "  findings: none");
        } else {
            let _ = writeln!(o, "  findings:");
            for f in &p.findings {
                let sev = match f.severity {
                    Severity::High => paint("high", "31", colour),
                    Severity::Medium => paint("medium", "33", colour),
                    s => s.label().to_string(),
                };
                let _ = writeln!(
                    o,
                    "    {} {sev} {} (line {}): {}\n        fix: {}",
                    f.id, f.field, f.line, f.message, f.fix
                );
            }
        }
    }
    o
}

pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# bbr-runner review\n\nClaims evaluated on Landlock ABI {} (this kernel: ABI {}).",
        r.evaluated_abi, r.kernel_abi
    );
    for p in &r.profiles {
        let _ = writeln!(o, "\n## `{}`\n\n{}\n", p.file, p.description);
        for line in grants_text(p) {
            let _ = writeln!(o, "- {}", line.replace('|', "\\|"));
        }
        for b in &p.backends {
            let _ = writeln!(
                o,
                "\n### {}: exposure {:.1} {}\n\n{}\n\n| claim | status | why |\n|---|---|---|",
                b.backend, b.score, b.band, b.why
            );
            for c in &b.claims {
                let v = match &c.verified {
                    Some(Verified::Held(d)) => format!(" — verified: held ({d})"),
                    Some(Verified::Broken(d)) => format!(" — verified: **BROKEN** ({d})"),
                    Some(Verified::Observed(d)) => format!(" — observed: {d}"),
                    Some(Verified::NotRun(d)) => format!(" — not verified: {d}"),
                    None => String::new(),
                };
                let _ = writeln!(
                    o,
                    "| {} — {} | {} | {}{} |",
                    c.id,
                    c.claim.replace('|', "\\|"),
                    c.status.label(),
                    c.why.replace('|', "\\|"),
                    v.replace('|', "\\|")
                );
            }
        }
        if !p.findings.is_empty() {
            let _ = writeln!(o, "\n### Findings\n\n| id | severity | field | finding | fix |\n|---|---|---|---|---|");
            for f in &p.findings {
                let _ = writeln!(
                    o,
                    "| {} | {} | `{}` (line {}) | {} | {} |",
                    f.id,
                    f.severity.label(),
                    f.field,
                    f.line,
                    f.message.replace('|', "\\|"),
                    f.fix.replace('|', "\\|")
                );
            }
        }
    }
    o
}

pub fn sarif(r: &Report) -> serde_json::Value {
    let level = |s: Severity| match s {
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    };
    let rules: Vec<serde_json::Value> = RULES
        .iter()
        .map(|(id, title, sev)| {
            serde_json::json!({
                "id": id,
                "name": id,
                "shortDescription": {"text": title},
                "defaultConfiguration": {"level": level(*sev)},
                "helpUri": "https://example.invalid/bbr-runner#findings"
            })
        })
        .collect();
    let mut results = Vec::new();
    for p in &r.profiles {
        for f in &p.findings {
            results.push(serde_json::json!({
                "ruleId": f.id,
                "ruleIndex": RULES.iter().position(|(id, ..)| *id == f.id).unwrap_or(0),
                "level": level(f.severity),
                "message": {"text": format!("{}: {} (fix: {})", f.field, f.message, f.fix)},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": p.file},
                        "region": {"startLine": f.line.max(1)}
                    }
                }]
            }));
        }
    }
    serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "bbr-runner review",
                "version": r.tool_version,
                "informationUri": "https://example.invalid/bbr-runner",
                "rules": rules
            }},
            "results": results
        }]
    })
}
