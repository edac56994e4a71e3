//! Shared fixture for the suites that run the real `bbr-runner` as root.
#![allow(dead_code)]

pub mod bosh;
pub mod bpm_stand_in;
pub mod db;
pub mod manifest;
pub mod monit;
pub mod vm;

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A TCP port on 127.0.0.1 that was free a moment ago (for a server a test starts), below the
/// kernel's ephemeral range: the tests running beside this one take ports from that range
/// (`bind` to port 0, and every outgoing connection), so none of them takes this one between
/// the moment it is found free and the moment the server binds it.
pub fn free_port() -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    assert!(
        low > 2048,
        "the ephemeral port range starts at {low}: no quiet ports below it"
    );
    loop {
        let mut b = [0u8; 2];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("urandom"),
            &mut b,
        )
        .expect("urandom");
        let port = 1024 + u16::from_le_bytes(b) % (low - 1024);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub const EXAMPLE_PROFILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../profiles/examples/artifact-only.yml"
);

/// Waits until `done()` holds, checking every 20 ms; fails the test with `what` when it still
/// does not after `within`.
pub fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (waited {within:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn runner() -> &'static str {
    env!("CARGO_BIN_EXE_bbr-runner")
}

/// These suites exercise namespaces, identities and capabilities for real.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this suite runs as root (it drops to the vcap user and makes namespaces): run `sudo cargo test`"
    );
}

/// The `vcap` user the profiles drop to; created when missing, as on a BOSH stemcell.
pub fn vcap() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        require_root();
        if nix::unistd::User::from_name("vcap")
            .ok()
            .flatten()
            .is_none()
        {
            let status = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "vcap",
                ])
                .status()
                .expect("useradd (package `passwd`: apt-get install passwd)");
            // A parallel test may have created it first.
            assert!(
                status.success()
                    || nix::unistd::User::from_name("vcap")
                        .ok()
                        .flatten()
                        .is_some()
            );
        }
        let u = nix::unistd::User::from_name("vcap")
            .ok()
            .flatten()
            .expect("vcap exists");
        (u.uid.as_raw(), u.gid.as_raw())
    })
}

/// A directory every user can traverse, holding a copy of the runner that vcap can execute
/// (the build directory may be below a home directory vcap cannot enter).
pub fn shared_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("bbr-bin-")
            .tempdir()
            .expect("tempdir")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let copy = dir.join("bbr-runner");
        std::fs::copy(runner(), &copy).expect("copy runner");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // A setuid-root program, to show that it does not elevate inside the sandbox.
        let suid = dir.join("id-suid");
        std::fs::copy("/usr/bin/id", &suid).expect("copy id");
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("setuid");
        dir
    })
}

pub fn mkdir(path: &Path, mode: u32, owner: Option<(u32, u32)>) {
    std::fs::create_dir_all(path).expect("mkdir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if let Some((u, g)) = owner {
        chown(path, Some(u), Some(g)).expect("chown");
    }
}

pub fn write(path: &Path, text: &str, mode: u32, owner: Option<(u32, u32)>) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if let Some((u, g)) = owner {
        chown(path, Some(u), Some(g)).expect("chown");
    }
}

/// Runs the runner with a clean environment plus `env`.
/// The Landlock ABI cap of this test run (`BBR_RUNNER_LANDLOCK_ABI_MAX`), passed on to every
/// process a test starts with a cleared environment: the whole suite then runs as on a kernel
/// with that ABI (tests/run.sh runs the escape suite at 7, 4, 3 and 0).
pub fn kept_env() -> Vec<(String, String)> {
    const CAP: &str = "BBR_RUNNER_LANDLOCK_ABI_MAX";
    std::env::var(CAP)
        .map(|v| vec![(CAP.to_string(), v)])
        .unwrap_or_default()
}

pub fn run_runner(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(runner())
        .args(args)
        .env_clear()
        .envs(kept_env())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run bbr-runner")
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Kernels since 6.2 may forbid TIOCSTI to everyone without CAP_SYS_ADMIN
/// (`dev.tty.legacy_tiocsti = 0`); the control needs it allowed, as on the kernels that allow it.
pub struct LegacyTiocsti(Option<String>);

impl LegacyTiocsti {
    pub fn allow() -> LegacyTiocsti {
        const P: &str = "/proc/sys/dev/tty/legacy_tiocsti";
        let old = std::fs::read_to_string(P).ok();
        if old.as_deref().map(str::trim) == Some("0") {
            std::fs::write(P, "1").expect("allow TIOCSTI for the control");
        }
        LegacyTiocsti(old)
    }
}

impl Drop for LegacyTiocsti {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write("/proc/sys/dev/tty/legacy_tiocsti", old.trim());
        }
    }
}

/// The bytes in the files below `path` (0 when it does not exist).
pub fn dir_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// `program` run as vcap (uid, gid, no supplementary groups) with no sandbox: the control that
/// shows an operation works for vcap where the sandbox is not.
pub fn as_vcap(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=vcap", "--regid=vcap", "--clear-groups", "--"])
        .arg(program);
    c
}
