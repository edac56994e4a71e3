//! `bbr-runner check FILE... [--var NAME=VALUE]... [--print]`

use std::fmt::Write as _;

use super::{vars, CommandError, CommandResult};
use crate::cli::CheckArgs;
use crate::profile::{self, Access, Enforcement, Origin, Profile};

pub fn check(args: CheckArgs) -> CommandResult {
    let vars = vars(&args.vars)?;
    let mut errors = Vec::new();
    for file in &args.files {
        match profile::load(file, &vars) {
            Ok(p) if args.print => crate::show_raw!("{}", render(&p)),
            Ok(_) => crate::show!("{}: ok", file.display()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        Err(CommandError::UsageEach(errors))
    }
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(T::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn size(bytes: Option<u64>) -> String {
    bytes.map_or("inherited".into(), crate::profile::units::format_size)
}

/// The profile with every variable, set and symlink resolved, as the sandbox will see it.
pub fn render(p: &Profile) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}: ok", p.source.display());
    if !p.description.is_empty() {
        let _ = writeln!(o, "  description: {}", p.description.replace('\n', " "));
    }
    let enforcement = match p.enforcement {
        Enforcement::Strict => "strict",
        Enforcement::BestEffort => "best_effort",
    };
    let backends: Vec<&str> = p.backends.iter().map(|b| b.name()).collect();
    let _ = writeln!(
        o,
        "  landlock abi: {}  enforcement: {enforcement}  backends: {}",
        p.abi,
        backends.join(", ")
    );
    let _ = writeln!(
        o,
        "  user: {}  group: {}  supplementary groups: {}",
        p.user,
        p.group.as_deref().unwrap_or("(the user's primary group)"),
        list(&p.supplementary_groups)
    );
    for access in [Access::Read, Access::Execute, Access::Write] {
        let grants: Vec<_> = p.grants(access).collect();
        if grants.is_empty() {
            let _ = writeln!(o, "  {}: none", access.name());
            continue;
        }
        let _ = writeln!(o, "  {}:", access.name());
        for g in grants {
            let mut notes = Vec::new();
            if let Origin::Set(name) = &g.origin {
                notes.push(format!("@{name}"));
            }
            match std::fs::canonicalize(&g.path) {
                Ok(real) if real != g.path => notes.push(format!("-> {}", real.display())),
                Ok(_) => {}
                Err(_) => notes.push("absent here".into()),
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join(", "))
            };
            let _ = writeln!(o, "    {}{notes}", g.path.display());
        }
    }
    let sockets: Vec<String> = p.sockets.iter().map(|s| s.display().to_string()).collect();
    let _ = writeln!(o, "  unix sockets exposed: {}", list(&sockets));
    let _ = writeln!(
        o,
        "  tcp connect: {}  tcp bind: {}",
        list(&p.connect_entries()),
        list(&p.bind_entries())
    );
    let on = |b: bool| if b { "scoped" } else { "not scoped" };
    let _ = writeln!(
        o,
        "  abstract unix sockets: {}  signals: {}",
        on(p.scope_abstract_unix_socket),
        on(p.scope_signal)
    );
    let caps: Vec<String> = p.capabilities.iter().map(|c| c.to_string()).collect();
    let _ = writeln!(o, "  capabilities kept: {}", list(&caps));
    let l = &p.limits;
    let count = |v: Option<u64>| v.map_or("inherited".to_string(), |v| v.to_string());
    let _ = writeln!(
        o,
        "  limits: open_files {}  processes {}  memory {}  file_size {}  core_file_size {}  cpu_seconds {}",
        count(l.open_files),
        count(l.processes),
        size(l.memory_bytes),
        size(l.file_size_bytes),
        size(l.core_file_size_bytes),
        count(l.cpu_seconds)
    );
    let set: Vec<String> = p.env_set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        o,
        "  environment: pass {}  set {}",
        list(&p.env_pass),
        list(&set)
    );
    let _ = writeln!(
        o,
        "  timeout: {}  kill grace: {}s",
        p.timeout
            .map_or("none".to_string(), |t| format!("{}s", t.as_secs())),
        p.kill_grace.as_secs()
    );
    o
}
