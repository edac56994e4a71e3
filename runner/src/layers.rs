//! The decision: which layer of the native sandbox enforces each isolation claim of a profile,
//! given what the machine offers (the Landlock ABI in effect, whether the runner can make
//! namespaces). The plan refuses a strict profile from this (a declared restriction that no
//! layer enforces), and the review prints it: what the sandbox does and what the review says
//! come from the same function.
//!
//! The layers, in the order the sandbox applies them: namespaces (mount with the filesystem
//! view, pid, ipc, network), Landlock, the dropped identity and capabilities, seccomp.

use serde::{Deserialize, Serialize};

use crate::profile::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Enforced,
    Partial,
    NotEnforced,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Enforced => "enforced",
            Status::Partial => "partial",
            Status::NotEnforced => "not enforced",
        }
    }
}

pub use crate::landlock_abi::LandlockFeature;

/// What the machine offers the native sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The Landlock ABI in effect: the profile's pin, the kernel's and the cap, the smallest.
    pub abi: u8,
    /// The runner can give the action namespaces (it starts as root, outside bpm).
    pub namespaces: bool,
    /// The seccomp layer is applied (always, natively: it needs only no_new_privs).
    pub seccomp: bool,
    /// Declared TCP endpoints are reached through the supervisor's forwarder, so the action
    /// can have a network namespace even when it talks TCP.
    pub forwarder: bool,
}

impl Facts {
    /// As `bbr-runner run` starts a native action: as root, on Landlock ABI `abi` (already
    /// the smaller of the kernel's and the profile's).
    pub fn native(abi: u8) -> Facts {
        Facts {
            abi,
            namespaces: true,
            seccomp: SECCOMP,
            forwarder: FORWARDER,
        }
    }
}

/// Whether the seccomp layer is applied natively (its own step, `sandbox/seccomp.rs`).
pub const SECCOMP: bool = true;
/// Whether TCP endpoints go through the supervisor's forwarder.
pub const FORWARDER: bool = true;

/// The action gets a network namespace: no TCP declared, or every endpoint named with its host
/// and forwarded (a port without a host means every host: only Landlock can say that; a bind
/// must be reachable from outside).
pub fn network_namespace(p: &Profile, f: &Facts) -> bool {
    f.namespaces
        && (p.bind_tcp.is_empty() || (f.forwarder && p.bind_any_host.is_empty()))
        && (p.connect_tcp.is_empty() || (f.forwarder && p.connect_any_host.is_empty()))
}

/// One claim: what the action is held to, whether it holds here, by which layers, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub id: &'static str,
    pub text: String,
    pub status: Status,
    /// The layers that enforce it (empty when not enforced).
    pub layers: Vec<&'static str>,
    pub why: String,
    /// A restriction the profile declares: `strict` refuses when it is not enforced.
    pub declared: bool,
}

fn d(
    id: &'static str,
    text: impl Into<String>,
    status: Status,
    layers: &[&'static str],
    why: impl Into<String>,
) -> Decided {
    Decided {
        id,
        text: text.into(),
        status,
        layers: layers.to_vec(),
        why: why.into(),
        declared: true,
    }
}

const VIEW: &str = "filesystem view";
const PID_NS: &str = "pid namespace";
const IPC_NS: &str = "ipc namespace";
const NET_NS: &str = "network namespace";
const LANDLOCK: &str = "Landlock";
const SECCOMP_LAYER: &str = "seccomp";
const FORWARDER_LAYER: &str = "forwarder";

pub fn tcp_text(what: &str, v: &[u16]) -> String {
    if v.is_empty() {
        format!("{what} on no port")
    } else {
        format!(
            "{what} only on port{} {}",
            if v.len() > 1 { "s" } else { "" },
            v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )
    }
}

/// Every isolation claim of the native sandbox for `p` on `f`, in the review's order.
pub fn decide(p: &Profile, f: &Facts) -> Vec<Decided> {
    use Status::*;
    let a = f.abi;
    let ll = |feature: LandlockFeature| feature.available(a);
    let ns = f.namespaces;
    let net_ns = network_namespace(p, f);
    let no_ll = format!("Landlock is not available (ABI {a}) and the runner cannot make a mount namespace (it does not start as root)");
    let mut out = Vec::new();
    // Not declared by a profile: always asked of the sandbox, never a reason to refuse.
    let extra = |mut x: Decided| {
        x.declared = false;
        x
    };

    let text = "reads only its read, execute and write grants";
    out.push(if ns {
        d("fs.read", text, Enforced, &with_ll(VIEW, ll(LandlockFeature::Filesystem)), "only the granted paths exist in its root (a read-only tmpfs, pivot_root); nothing else can be opened, listed or stat'ed")
    } else if ll(LandlockFeature::Filesystem) {
        d("fs.read", text, Partial, &[LANDLOCK], "Landlock read rights; stat, chdir, access and other metadata operations are not mediated: the action can see which paths exist")
    } else {
        d("fs.read", text, NotEnforced, &[], &no_ll)
    });

    let text = "writes only its write grants";
    out.push(if ns {
        d("fs.write", text, Enforced, &with_ll(VIEW, ll(LandlockFeature::Filesystem)), "every other granted path is a read-only bind mount, the root a read-only tmpfs: no write, create, chmod, chown, utime or setxattr outside the write grants")
    } else if ll(LandlockFeature::Filesystem) {
        let gaps = match a {
            1 => "linking and renaming across directories are mediated from ABI 2, truncate from ABI 3; ",
            2 => "truncate is mediated from ABI 3; ",
            _ => "",
        };
        d("fs.write", text, Partial, &[LANDLOCK], format!("Landlock write rights; {gaps}chmod, chown, utime and setxattr are not mediated (file ownership still applies)"))
    } else {
        d("fs.write", text, NotEnforced, &[], &no_ll)
    });

    let text = "executes only its execute grants";
    out.push(if ns {
        d("fs.execute", text, Enforced, &with_ll(VIEW, ll(LandlockFeature::Filesystem)), "every path not granted execute is mounted noexec, which also refuses mapping it executable (the dynamic loader's `ld.so FILE`)")
    } else if ll(LandlockFeature::Filesystem) {
        d("fs.execute", text, Partial, &[LANDLOCK], "Landlock execute right; a written file can still be mapped executable through the dynamic loader (`ld.so FILE`)")
    } else {
        d("fs.execute", text, NotEnforced, &[], &no_ll)
    });

    let endpoints: Vec<String> = p
        .connect_endpoints
        .iter()
        .map(|(h, port)| {
            if h.contains(':') {
                format!("[{h}]:{port}")
            } else {
                format!("{h}:{port}")
            }
        })
        .chain(
            p.connect_any_host
                .iter()
                .map(|port| format!("port {port} on any host")),
        )
        .collect();
    for (id, what, list) in [
        ("net.tcp_connect", "connects over TCP", &p.connect_tcp),
        ("net.tcp_bind", "binds TCP", &p.bind_tcp),
    ] {
        let text = if id == "net.tcp_connect" && !p.connect_endpoints.is_empty() {
            format!("connects over TCP only to {}", endpoints.join(", "))
        } else {
            tcp_text(what, list)
        };
        out.push(if list.is_empty() && net_ns {
            d(id, text, Enforced, &with_ll(NET_NS, ll(LandlockFeature::TcpPorts)), "its own network namespace holds only a loopback interface: nothing outside can be reached or bound")
        } else if net_ns && id == "net.tcp_bind" {
            d(id, text, Enforced, &[NET_NS, "runner's listeners"], "the runner binds each declared address and hands the listener to the action; whatever the action binds itself lives in its own network namespace, unreachable from outside")
        } else if net_ns {
            d(id, text, Enforced, &[NET_NS, FORWARDER_LAYER], "its network namespace holds only a loopback interface, where each endpoint's address listens; the runner forwards those connections, and nothing else, to the endpoint (MPTCP, SCTP and other hosts included)")
        } else if p.connect_tcp.is_empty() && p.bind_tcp.is_empty() && f.seccomp {
            d(id, text, Enforced, &with_ll(SECCOMP_LAYER, ll(LandlockFeature::TcpPorts)), "seccomp refuses TCP sockets to an action granted no TCP")
        } else if ll(LandlockFeature::TcpPorts) && f.seccomp {
            d(id, text, Partial, &[LANDLOCK, SECCOMP_LAYER], "a Landlock port rule allows that port on every host (the host's network is shared); seccomp refuses MPTCP and SCTP sockets and TCP Fast Open")
        } else if ll(LandlockFeature::TcpPorts) {
            d(id, text, Partial, &[LANDLOCK], "a port rule allows that port on every host; MPTCP and SCTP sockets are not covered")
        } else {
            let hint = if !p.bind_tcp.is_empty() && ns {
                " (a bound port must stay reachable from outside, so no network namespace)"
            } else if ns {
                " (write each endpoint as HOST:PORT so the runner can forward it through a network namespace)"
            } else {
                ""
            };
            d(id, text, NotEnforced, &[], format!("TCP port rules need Landlock ABI 4 (have {a}){hint}"))
        });
    }

    // Not declared by a version-1 profile (it has no UDP field): never a reason to refuse.
    let text = "sends and receives no UDP";
    out.push(extra(if net_ns {
        d(
            "net.udp",
            text,
            Enforced,
            &[NET_NS],
            "only a loopback interface in its network namespace",
        )
    } else if ll(LandlockFeature::Udp) {
        d(
            "net.udp",
            text,
            Enforced,
            &[LANDLOCK],
            "Landlock UDP rights (ABI 10), none granted",
        )
    } else {
        d(
            "net.udp",
            text,
            NotEnforced,
            &[],
            format!("UDP is mediated from Landlock ABI 10 (have {a})"),
        )
    }));

    let sockets: Vec<String> = p.sockets.iter().map(|s| s.display().to_string()).collect();
    let text = if sockets.is_empty() {
        "connects to no pathname unix socket".to_string()
    } else {
        format!("connects only to the unix sockets {}", sockets.join(", "))
    };
    let unix = if ns {
        d(
            "unix.pathname",
            text,
            Enforced,
            &with_ll(VIEW, ll(LandlockFeature::ResolveUnix)),
            "only the declared sockets exist in its root",
        )
    } else if ll(LandlockFeature::ResolveUnix) {
        d(
            "unix.pathname",
            text,
            Enforced,
            &[LANDLOCK],
            "Landlock resolve_unix (ABI 9)",
        )
    } else {
        d("unix.pathname", text, NotEnforced, &[], format!("pathname unix-socket connect is mediated from Landlock ABI 9 (have {a}) and the runner cannot make a mount namespace"))
    };
    // A version-1 profile declares this only by listing its sockets.
    out.push(Decided {
        declared: !p.sockets.is_empty(),
        ..unix
    });

    for (id, on, text, layer, how) in [
        (
            "scope.abstract_unix",
            p.scope_abstract_unix_socket,
            "connects to no abstract unix socket made outside the sandbox",
            net_ns.then_some(NET_NS),
            "abstract unix sockets belong to the network namespace, and it has its own",
        ),
        (
            "scope.signal",
            p.scope_signal,
            "signals no process outside the sandbox",
            ns.then_some(PID_NS),
            "no process outside its pid namespace can be named",
        ),
    ] {
        out.push(if !on {
            Decided {
                declared: false,
                ..d(
                    id,
                    text,
                    NotEnforced,
                    &[],
                    "the profile turns this scope off",
                )
            }
        } else if let Some(layer) = layer {
            d(
                id,
                text,
                Enforced,
                &with_ll(layer, ll(LandlockFeature::Scopes)),
                how,
            )
        } else if ll(LandlockFeature::Scopes) {
            d(id, text, Enforced, &[LANDLOCK], "Landlock scope (ABI 6)")
        } else {
            d(
                id,
                text,
                NotEnforced,
                &[],
                format!("scoping needs Landlock ABI 6 (have {a}) or a namespace of its own"),
            )
        });
    }

    let text = "sees no process outside the sandbox";
    out.push(extra(if ns {
        d(
            "proc.others",
            text,
            Enforced,
            &[PID_NS],
            "its /proc is that of its own pid namespace",
        )
    } else {
        d(
            "proc.others",
            text,
            NotEnforced,
            &[],
            "/proc lists every process on the machine",
        )
    }));
    let text = "leaves no process behind when it ends";
    out.push(extra(if ns {
        d("leftovers", text, Enforced, &[PID_NS], "its init exits with the action, and the kernel kills everything left in the namespace")
    } else {
        d("leftovers", text, Partial, &[], "its process group is killed, and the descendants that come back to the runner (its subreaper); a process that escaped both lives on")
    }));
    let text = "reaches no System V IPC object or POSIX message queue outside the sandbox";
    out.push(extra(if ns {
        d("ipc", text, Enforced, &[IPC_NS], "its own ipc namespace")
    } else {
        d(
            "ipc",
            text,
            NotEnforced,
            &[],
            "the host's ipc namespace is shared (permissions alone decide)",
        )
    }));
    let text = "creates no namespace and reaches no kernel interface it does not need (bpf, io_uring, perf, ptrace, keyrings, mount)";
    out.push(extra(if f.seccomp {
        d(
            "syscalls",
            text,
            Enforced,
            &[SECCOMP_LAYER],
            "seccomp filter, installed last before exec",
        )
    } else {
        d(
            "syscalls",
            text,
            NotEnforced,
            &[],
            "no seccomp filter: the kernel's own checks alone (e.g. unprivileged user namespaces)",
        )
    }));
    out
}

fn with_ll(layer: &'static str, landlock: bool) -> Vec<&'static str> {
    if landlock {
        vec![layer, LANDLOCK]
    } else {
        vec![layer]
    }
}

/// The declared restrictions no layer enforces here: a strict profile is refused for them.
pub fn unenforced(decided: &[Decided]) -> Vec<String> {
    decided
        .iter()
        .filter(|c| c.declared && c.status == Status::NotEnforced)
        .map(|c| {
            format!(
                "`{}` ({}) is enforced by no layer here: {}",
                c.id, c.text, c.why
            )
        })
        .collect()
}
