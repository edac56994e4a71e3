//! From `RawProfile` to `Profile`: every rule of the format, each error at its position.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::raw::{RawProfile, S};
use super::sets::{builtin, valid_set_name};
use super::units::{parse_duration, parse_size};
use super::*;

const DEFAULT_USER: &str = "vcap";
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

struct Ctx<'a> {
    file: &'a Path,
    vars: &'a Vars,
}

impl Ctx<'_> {
    fn pos<T>(&self, s: &S<T>) -> Position {
        Position {
            file: self.file.to_path_buf(),
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }

    fn err<T>(&self, s: &S<T>, field: impl Into<String>, msg: impl Into<String>) -> ProfileError {
        ProfileError::invalid(self.pos(s), field, msg)
    }

    fn expand(&self, s: &S<String>, field: &str) -> Result<String, ProfileError> {
        self.vars
            .expand(&s.value)
            .map_err(|e| self.err(s, field, e.to_string()))
    }

    /// Like `path`, but an entry whose variables expand to nothing is left out (`None`): one
    /// profile then serves a database reached by socket and one reached by TCP port.
    fn optional_path(&self, s: &S<String>, field: &str) -> Result<Option<PathBuf>, ProfileError> {
        if s.value.contains("${") && self.expand(s, field)?.is_empty() {
            return Ok(None);
        }
        self.path(s, field).map(Some)
    }

    /// Expands and normalizes an absolute path; rejects relative paths and `.`/`..`.
    fn path(&self, s: &S<String>, field: &str) -> Result<PathBuf, ProfileError> {
        let expanded = self.expand(s, field)?;
        normalize_path(&expanded).map_err(|m| {
            let shown = if expanded == s.value {
                format!("`{expanded}`")
            } else {
                format!("`{}` (expanded to `{expanded}`)", s.value)
            };
            self.err(s, field, format!("path {shown} {m}"))
        })
    }
}

/// Absolute, no `.` or `..`, no NUL; duplicate and trailing slashes removed.
pub fn normalize_path(text: &str) -> Result<PathBuf, &'static str> {
    if text.contains('\0') {
        return Err("contains a NUL byte");
    }
    if !text.starts_with('/') {
        return Err("is relative; profile paths must be absolute");
    }
    let mut out = PathBuf::from("/");
    for component in Path::new(text).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err("has a `.` or `..` component; write the path it means");
            }
        }
    }
    // `Path::components` drops interior `.` silently; check the text itself too.
    if text.split('/').any(|p| p == "." || p == "..") {
        return Err("has a `.` or `..` component; write the path it means");
    }
    Ok(out)
}

pub fn validate(file: &Path, raw: RawProfile, vars: &Vars) -> Result<Profile, ProfileError> {
    let cx = Ctx { file, vars };
    if raw.version.value != FORMAT_VERSION {
        return Err(cx.err(
            &raw.version,
            "version",
            format!(
                "profile format version {} is not known; this runner reads version {FORMAT_VERSION}",
                raw.version.value
            ),
        ));
    }
    let abi = u8::try_from(raw.abi.value)
        .ok()
        .filter(|a| KNOWN_ABIS.contains(a))
        .ok_or_else(|| {
            cx.err(
                &raw.abi,
                "abi",
                format!(
                    "Landlock ABI {} is not known; the format knows ABIs {} to {}",
                    raw.abi.value,
                    KNOWN_ABIS.start(),
                    KNOWN_ABIS.end()
                ),
            )
        })?;
    let enforcement = match raw.enforcement.as_ref() {
        None => Enforcement::Strict,
        Some(s) => match s.value.as_str() {
            "strict" => Enforcement::Strict,
            "best_effort" => Enforcement::BestEffort,
            other => {
                return Err(cx.err(
                    s,
                    "enforcement",
                    format!("`{other}` is not `strict` or `best_effort`"),
                ))
            }
        },
    };
    let backends = backends(&cx, raw.backends.as_deref())?;
    let user = name_field(&cx, raw.user.as_ref(), "user")?.unwrap_or_else(|| DEFAULT_USER.into());
    let group = name_field(&cx, raw.group.as_ref(), "group")?;
    let supplementary_groups = raw
        .supplementary_groups
        .iter()
        .enumerate()
        .map(|(i, g)| name_field(&cx, Some(g), &format!("supplementary_groups[{i}]")))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();

    let user_sets = user_sets(&cx, &raw.sets)?;
    let mut grants = Vec::new();
    for (access, list, key) in [
        (Access::Read, &raw.filesystem.read, "filesystem.read"),
        (
            Access::Execute,
            &raw.filesystem.execute,
            "filesystem.execute",
        ),
        (Access::Write, &raw.filesystem.write, "filesystem.write"),
    ] {
        for (i, entry) in list.iter().enumerate() {
            let field = format!("{key}[{i}]");
            grants.extend(grant_entries(&cx, &user_sets, access, entry, &field)?);
        }
    }
    for g in grants.iter().filter(|g| g.access == Access::Write) {
        // A write grant must name the real path: a symlink planted there would widen it.
        if g.origin == Origin::Direct {
            if let Ok(real) = std::fs::canonicalize(&g.path) {
                if real != g.path {
                    return Err(ProfileError::invalid(
                        g.position.clone(),
                        "filesystem.write",
                        format!(
                            "write grant `{}` goes through a symlink to `{}`; write the real path",
                            g.path.display(),
                            real.display()
                        ),
                    ));
                }
            }
        }
        if g.path == Path::new("/") {
            return Err(ProfileError::invalid(
                g.position.clone(),
                "filesystem.write",
                "write access to `/` (the whole filesystem) is refused; grant the directory the action writes",
            ));
        }
    }

    let mut sockets = Vec::new();
    for (i, s) in raw.sockets.iter().enumerate() {
        let field = format!("sockets[{i}]");
        let Some(path) = cx.optional_path(s, &field)? else {
            continue;
        };
        if path.parent().is_none_or(|p| p == Path::new("/")) {
            return Err(cx.err(
                s,
                field,
                "a socket directly in `/` cannot be exposed alone (its directory would be `/`)",
            ));
        }
        sockets.push(path);
    }

    let (connect_tcp, connect_endpoints, connect_any_host) =
        endpoints(&cx, &raw.network.connect_tcp, "network.connect_tcp", abi)?;
    let (bind_tcp, bind_endpoints, bind_any_host) =
        endpoints(&cx, &raw.network.bind_tcp, "network.bind_tcp", abi)?;
    let scope_abstract_unix_socket = scope(
        &cx,
        raw.scopes.abstract_unix_socket.as_ref(),
        "scopes.abstract_unix_socket",
        abi,
    )?;
    let scope_signal = scope(&cx, raw.scopes.signal.as_ref(), "scopes.signal", abi)?;
    let capabilities = capabilities(&cx, &raw.capabilities)?;
    let limits = limits(&cx, &raw.limits)?;
    let (env_pass, env_set) = environment(&cx, &raw.environment)?;
    let timeout = raw
        .timeout
        .as_ref()
        .map(|t| parse_duration(&t.value).map_err(|e| cx.err(t, "timeout", e.to_string())))
        .transpose()?;
    let kill_grace = raw
        .kill_grace
        .as_ref()
        .map(|t| parse_duration(&t.value).map_err(|e| cx.err(t, "kill_grace", e.to_string())))
        .transpose()?
        .unwrap_or(DEFAULT_KILL_GRACE);

    Ok(Profile {
        source: file.to_path_buf(),
        description: raw
            .description
            .map(|d| d.value.trim().to_string())
            .unwrap_or_default(),
        abi,
        enforcement,
        backends,
        user,
        group,
        supplementary_groups,
        grants,
        sockets,
        connect_tcp,
        connect_endpoints,
        connect_any_host,
        bind_endpoints,
        bind_any_host,
        bind_tcp,
        scope_abstract_unix_socket,
        scope_signal,
        capabilities,
        limits,
        env_pass,
        env_set,
        timeout,
        kill_grace,
        key_lines: BTreeMap::new(),
    })
}

fn backends(cx: &Ctx, list: Option<&[S<String>]>) -> Result<Vec<Backend>, ProfileError> {
    let Some(list) = list else {
        return Ok(vec![Backend::Bpm, Backend::Native]);
    };
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let field = format!("backends[{i}]");
        let Some(b) = Backend::from_name(&s.value) else {
            return Err(cx.err(
                s,
                field,
                format!("`{}` is not {}", s.value, Backend::names(" or ")),
            ));
        };
        if out.contains(&b) {
            return Err(cx.err(s, field, format!("`{}` is listed twice", b.name())));
        }
        out.push(b);
    }
    if out.is_empty() {
        return Err(ProfileError::Syntax {
            file: cx.file.to_path_buf(),
            message: format!(
                "backends: the list is empty; name {} or several",
                Backend::names(", ")
            ),
        });
    }
    Ok(out)
}

fn name_field(
    cx: &Ctx,
    s: Option<&S<String>>,
    field: &str,
) -> Result<Option<String>, ProfileError> {
    let Some(s) = s else { return Ok(None) };
    let ok = !s.value.is_empty()
        && s.value.len() <= 32
        && s.value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        return Err(cx.err(
            s,
            field,
            format!("`{}` is not a user or group name", s.value),
        ));
    }
    Ok(Some(s.value.clone()))
}

/// The profile's own sets, checked and expanded (not yet resolved against the filesystem).
fn user_sets(
    cx: &Ctx,
    sets: &BTreeMap<String, Vec<S<String>>>,
) -> Result<BTreeMap<String, Vec<(PathBuf, Position)>>, ProfileError> {
    let mut out = BTreeMap::new();
    for (name, members) in sets {
        let field = format!("sets.{name}");
        let first = members.first();
        let here = |msg: String| match first {
            Some(m) => cx.err(m, field.clone(), msg),
            None => ProfileError::Syntax {
                file: cx.file.to_path_buf(),
                message: format!("{field}: {msg}"),
            },
        };
        if !valid_set_name(name) {
            return Err(here(format!(
                "set name `{name}` must be lowercase letters, digits and dashes"
            )));
        }
        if builtin(name).is_some() {
            return Err(here(format!(
                "`{name}` is a built-in set and cannot be redefined"
            )));
        }
        if members.is_empty() {
            return Err(here("the set is empty".into()));
        }
        let mut paths = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let f = format!("{field}[{i}]");
            if m.value.starts_with('@') {
                return Err(cx.err(m, f, "a set cannot contain another set"));
            }
            paths.push((cx.path(m, &f)?, cx.pos(m)));
        }
        out.insert(name.clone(), paths);
    }
    Ok(out)
}

fn grant_entries(
    cx: &Ctx,
    user_sets: &BTreeMap<String, Vec<(PathBuf, Position)>>,
    access: Access,
    entry: &S<String>,
    field: &str,
) -> Result<Vec<PathGrant>, ProfileError> {
    let Some(name) = entry.value.strip_prefix('@') else {
        return Ok(cx
            .optional_path(entry, field)?
            .map(|path| PathGrant {
                access,
                written: entry.value.clone(),
                path,
                origin: Origin::Direct,
                position: cx.pos(entry),
            })
            .into_iter()
            .collect());
    };
    let members: Vec<PathBuf> = if let Some(paths) = builtin(name) {
        paths.iter().map(PathBuf::from).collect()
    } else if let Some(paths) = user_sets.get(name) {
        paths.iter().map(|(p, _)| p.clone()).collect()
    } else {
        let known: Vec<String> = super::sets::BUILTIN_SETS
            .iter()
            .map(|(n, _, _)| format!("@{n}"))
            .chain(user_sets.keys().map(|n| format!("@{n}")))
            .collect();
        return Err(cx.err(
            entry,
            field,
            format!("unknown set `@{name}`; known sets: {}", known.join(", ")),
        ));
    };
    Ok(members
        .into_iter()
        .map(|path| PathGrant {
            access,
            written: entry.value.clone(),
            path,
            origin: Origin::Set(name.to_string()),
            position: cx.pos(entry),
        })
        .collect())
}

/// `connect_tcp`: each entry `PORT` (any host: Landlock's port rule, ABI 4) or `HOST:PORT`
/// (`[v6]:PORT` for IPv6; that host only, on every ABI). Returns the ports and the endpoints
/// with a host and the ports without one.
type Endpoints = (Vec<u16>, Vec<(String, u16)>, Vec<u16>);

fn endpoints(cx: &Ctx, list: &[S<String>], key: &str, abi: u8) -> Result<Endpoints, ProfileError> {
    let mut port_only = Vec::new();
    let mut with_host = Vec::new();
    let mut all = BTreeSet::new();
    for (i, p) in list.iter().enumerate() {
        let field = format!("{key}[{i}]");
        let text = cx.expand(p, &field)?;
        if p.value.contains("${") && (text.is_empty() || text.ends_with(':')) {
            // A variable left empty (e.g. no TCP database): the entry is dropped.
            continue;
        }
        let (host, port_text) = match text.rsplit_once(':') {
            Some((h, port)) => (Some(h.trim_start_matches('[').trim_end_matches(']')), port),
            None => (None, text.as_str()),
        };
        if host.is_some_and(str::is_empty) {
            return Err(cx.err(
                p,
                &field,
                format!("`{text}` has an empty host; write HOST:PORT or PORT"),
            ));
        }
        if host.is_some_and(|h| h.contains('%')) {
            return Err(cx.err(
                p,
                &field,
                format!("`{text}`: an IPv6 address with a scope id (a link-local `fe80::...%IFACE`) cannot be reached from the action's network namespace, where that interface does not exist; use the host's global or unique-local address, or its name"),
            ));
        }
        let number: i64 = port_text.trim().parse().map_err(|_| {
            cx.err(
                p,
                &field,
                format!("`{text}` is not a port number (write PORT or HOST:PORT)"),
            )
        })?;
        let port = u16::try_from(number)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| cx.err(p, &field, format!("port {number} is outside 1-65535")))?;
        match host {
            Some(h) => {
                if with_host.iter().any(|(oh, op)| oh == h && *op == port) {
                    return Err(cx.err(p, field, format!("`{text}` is listed twice")));
                }
                with_host.push((h.to_string(), port));
            }
            None => {
                if !crate::landlock_abi::LandlockFeature::TcpPorts.available(abi) {
                    return Err(cx.err(
                        p,
                        field,
                        format!("TCP port rules need Landlock ABI {} or later; this profile pins ABI {abi} (or write HOST:{port}: that host only, on every ABI)", crate::landlock_abi::LandlockFeature::TcpPorts.min_abi()),
                    ));
                }
                if port_only.contains(&port) {
                    return Err(cx.err(p, field, format!("port {port} is listed twice")));
                }
                port_only.push(port);
            }
        }
        all.insert(port);
    }
    Ok((all.into_iter().collect(), with_host, port_only))
}

fn scope(cx: &Ctx, s: Option<&S<bool>>, field: &str, abi: u8) -> Result<bool, ProfileError> {
    match s {
        // Scoping is on by default wherever the pinned ABI has it.
        None => Ok(crate::landlock_abi::LandlockFeature::Scopes.available(abi)),
        Some(s) if s.value && !crate::landlock_abi::LandlockFeature::Scopes.available(abi) => {
            Err(cx.err(
                s,
                field,
                format!(
                    "scoping needs Landlock ABI {} or later; this profile pins ABI {abi}",
                    crate::landlock_abi::LandlockFeature::Scopes.min_abi()
                ),
            ))
        }
        Some(s) => Ok(s.value),
    }
}

fn capabilities(cx: &Ctx, list: &[S<String>]) -> Result<Vec<caps::Capability>, ProfileError> {
    let mut out: Vec<caps::Capability> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let field = format!("capabilities[{i}]");
        let cap = caps::Capability::from_str(&s.value).map_err(|_| {
            cx.err(
                s,
                &field,
                format!(
                    "`{}` is not a capability name; write it as in capabilities(7), e.g. `CAP_NET_BIND_SERVICE`",
                    s.value
                ),
            )
        })?;
        if out.contains(&cap) {
            return Err(cx.err(s, field, format!("`{}` is listed twice", s.value)));
        }
        out.push(cap);
    }
    out.sort_by_key(|c| c.index());
    Ok(out)
}

fn limits(cx: &Ctx, raw: &super::raw::RawLimits) -> Result<Limits, ProfileError> {
    let size = |s: &Option<S<String>>, field: &str| -> Result<Option<u64>, ProfileError> {
        match s {
            None => Ok(None),
            Some(s) => parse_size(&s.value).map_err(|e| cx.err(s, field, e.to_string())),
        }
    };
    let count = |s: &Option<S<u64>>, field: &str| -> Result<Option<u64>, ProfileError> {
        match s {
            Some(s) if s.value == 0 => Err(cx.err(
                s,
                field,
                "0 would stop the action from starting; leave the key out for no limit",
            )),
            Some(s) => Ok(Some(s.value)),
            None => Ok(None),
        }
    };
    Ok(Limits {
        open_files: count(&raw.open_files, "limits.open_files")?,
        processes: count(&raw.processes, "limits.processes")?,
        memory_bytes: size(&raw.memory, "limits.memory")?,
        file_size_bytes: size(&raw.file_size, "limits.file_size")?,
        // Core dumps can hold secrets: none unless the profile asks.
        core_file_size_bytes: match &raw.core_file_size {
            None => Some(0),
            Some(_) => size(&raw.core_file_size, "limits.core_file_size")?,
        },
        cpu_seconds: count(&raw.cpu_seconds, "limits.cpu_seconds")?,
    })
}

fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

type Env = (Vec<String>, BTreeMap<String, String>);

fn environment(cx: &Ctx, raw: &super::raw::RawEnvironment) -> Result<Env, ProfileError> {
    let mut pass = Vec::new();
    for (i, s) in raw.pass.iter().enumerate() {
        let field = format!("environment.pass[{i}]");
        if !env_name_ok(&s.value) {
            return Err(cx.err(
                s,
                field,
                format!("`{}` is not an environment variable name", s.value),
            ));
        }
        if pass.contains(&s.value) {
            return Err(cx.err(s, field, format!("`{}` is listed twice", s.value)));
        }
        pass.push(s.value.clone());
    }
    let mut set = BTreeMap::new();
    for (name, value) in &raw.set {
        let field = format!("environment.set.{name}");
        if !env_name_ok(name) {
            return Err(cx.err(
                value,
                field,
                format!("`{name}` is not an environment variable name"),
            ));
        }
        if pass.contains(name) {
            return Err(cx.err(
                value,
                field,
                format!("`{name}` is both passed and set; choose one"),
            ));
        }
        set.insert(name.clone(), cx.expand(value, &field)?);
    }
    Ok((pass, set))
}
