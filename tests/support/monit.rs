//! A real monit daemon (Debian's package) with its own control file and HTTP port on loopback,
//! controlling a service through a ctl script and a pidfile, as on a BOSH VM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{mkdir, shared_bin, vcap, write};

pub const MONIT: &str = "/usr/bin/monit";

/// A service for monit: the command that runs it as vcap, and how long stop waits before KILL.
pub struct Service {
    pub name: String,
    pub command: String,
    pub stop_grace_seconds: u32,
}

pub struct Monit {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub names: Vec<String>,
}

/// The acme-api component as the job's ctl runs it: `bbr-runner acme-api serve` (the runner's
/// copy vcap can execute). The standalone `acme-api` binary is the same server.
pub fn acme_api_command() -> String {
    format!(
        "{} acme-api serve",
        shared_bin().join("bbr-runner").display()
    )
}

impl Monit {
    /// Lays out the tree and starts monit (which starts the services).
    pub fn start(services: &[Service]) -> Monit {
        assert!(
            Path::new(MONIT).is_file(),
            "monit is missing: apt-get install monit"
        );
        let dir = tempfile::Builder::new()
            .prefix("bbr-monit-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        mkdir(root, 0o755, None);
        mkdir(&root.join("monit"), 0o700, None);
        mkdir(&root.join("run"), 0o755, Some(vcap()));
        mkdir(&root.join("bin"), 0o755, None);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut rc = format!(
            "set daemon 1\nset pidfile {r}/monit/monit.pid\nset idfile {r}/monit/monit.id\nset statefile {r}/monit/monit.state\nset logfile {r}/monit/monit.log\nset httpd port {port} and use address 127.0.0.1\n  allow admin:pw4monit\n",
            r = root.display()
        );
        for s in services {
            let pidfile = root.join("run").join(format!("{}.pid", s.name));
            let ctl = root.join("bin").join(format!("{}-ctl", s.name));
            let script = format!(
                "#!/bin/bash\n# ctl for {name}, as a BOSH job ships it: start runs the service as vcap, stop escalates TERM -> KILL.\nset -u\nPIDFILE={pid}\ncase \"$1\" in\n  start)\n    setpriv --reuid=vcap --regid=vcap --init-groups -- {cmd} >>{log} 2>&1 &\n    ;;\n  stop)\n    pid=$(cat \"$PIDFILE\" 2>/dev/null) || exit 0\n    kill -TERM \"$pid\" 2>/dev/null\n    for _ in $(seq 1 $(({grace} * 10))); do kill -0 \"$pid\" 2>/dev/null || {{ rm -f \"$PIDFILE\"; exit 0; }}; sleep 0.1; done\n    kill -KILL \"$pid\" 2>/dev/null; rm -f \"$PIDFILE\"\n    ;;\nesac\n",
                name = s.name,
                pid = pidfile.display(),
                cmd = s.command.replace("{pidfile}", &pidfile.display().to_string()),
                log = root.join("run").join(format!("{}.log", s.name)).display(),
                grace = s.stop_grace_seconds
            );
            write(&ctl, &script, 0o755, None);
            rc.push_str(&format!(
                "check process {name} with pidfile {pid}\n  start program = \"{ctl} start\" with timeout 30 seconds\n  stop program = \"{ctl} stop\" with timeout 60 seconds\n",
                name = s.name,
                pid = pidfile.display(),
                ctl = ctl.display()
            ));
        }
        // monit refuses a control file not owned by its caller or readable by others.
        write(&root.join("monit/monitrc"), &rc, 0o600, None);
        let m = Monit {
            dir,
            port,
            names: services.iter().map(|s| s.name.clone()).collect(),
        };
        m.start_daemon();
        m
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn control_file(&self) -> PathBuf {
        self.root().join("monit/monitrc")
    }

    pub fn pidfile(&self, name: &str) -> PathBuf {
        self.root().join("run").join(format!("{name}.pid"))
    }

    pub fn start_daemon(&self) {
        let out = Command::new(MONIT)
            .arg("-c")
            .arg(self.control_file())
            .stdin(Stdio::null())
            .output()
            .expect("monit");
        assert!(
            out.status.success(),
            "monit did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for name in &self.names {
            self.wait_status(name, "OK", Duration::from_secs(30));
        }
    }

    pub fn quit(&self) {
        let _ = Command::new(MONIT)
            .arg("-c")
            .arg(self.control_file())
            .arg("quit")
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status_text("").is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `monit -B status NAME`, or `None` when monit does not answer.
    pub fn status_text(&self, name: &str) -> Option<String> {
        let mut c = Command::new(MONIT);
        c.arg("-c").arg(self.control_file()).args(["-B", "status"]);
        if !name.is_empty() {
            c.arg(name);
        }
        let out = c.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `status` line of `monit -B status NAME` (the test's own reading of monit's CLI).
    pub fn status(&self, name: &str) -> String {
        self.status_text(name)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .find_map(|l| {
                l.strip_prefix("status")
                    .filter(|r| r.starts_with(' '))
                    .map(|r| r.trim().to_string())
            })
            .unwrap_or_default()
    }

    pub fn wait_status(&self, name: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.status(name) == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not reach `{want}`: {:?}",
                self.status_text(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.pidfile(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Monit {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new(MONIT)
                .arg("-c")
                .arg(self.control_file())
                .args(["stop", name])
                .output();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.names.iter().any(|n| {
            self.pid(n)
                .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
        }) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for n in &self.names {
            if let Some(p) = self.pid(n) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.quit();
    }
}
