//! Named path sets: `@name` in a path list stands for several paths. Members of a set are
//! optional (a member absent on this machine is skipped and shown as absent by
//! `check --print`); a path written directly in a profile is required.

/// The built-in sets. Each is what a common need takes on Debian and on BOSH stemcells.
pub const BUILTIN_SETS: &[(&str, &str, &[&str])] = &[
    (
        "system-libs",
        "shared libraries and the dynamic loader's configuration",
        &[
            "/lib",
            "/lib64",
            "/usr/lib",
            "/usr/lib64",
            "/usr/local/lib",
            "/etc/ld.so.cache",
            "/etc/ld.so.conf",
            "/etc/ld.so.conf.d",
        ],
    ),
    (
        "system-bin",
        "system command directories",
        &["/bin", "/sbin", "/usr/bin", "/usr/sbin"],
    ),
    (
        "locale",
        "locale and time zone data",
        &[
            "/usr/lib/locale",
            "/usr/share/locale",
            "/usr/share/zoneinfo",
            "/etc/localtime",
        ],
    ),
    (
        "name-service",
        "user, group and host lookups (getpwuid, getaddrinfo)",
        &[
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
            "/etc/hosts",
            "/etc/host.conf",
            "/etc/resolv.conf",
            "/etc/gai.conf",
        ],
    ),
    (
        "devices",
        "the harmless character devices",
        &[
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
        ],
    ),
    ("proc", "the process information filesystem", &["/proc"]),
    (
        "ssl-certs",
        "the system's trusted CA certificates",
        &["/etc/ssl/certs", "/usr/share/ca-certificates"],
    ),
];

pub fn builtin(name: &str) -> Option<&'static [&'static str]> {
    BUILTIN_SETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, paths)| *paths)
}

/// A set name: lowercase letters, digits and dashes.
pub fn valid_set_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}
