//! A BOSH-like VM in a temp dir: the release's package and both jobs rendered into a root, a
//! real monit daemon with BOSH's layout, and a driver that runs the rendered scripts exactly as
//! BBR does (root, no arguments, empty stdin, only BBR's variables, artifact directory
//! `ROOT/store/bbr-backup/JOB/` with its trailing slash), in BBR's order.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::bosh::{render_linked, REPO};
use super::free_port;
use super::{mkdir, shared_bin, text, vcap, write};

pub const JOBS: [&str; 2] = ["acme-api", "bbr-acme-db"];

pub struct Vm {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub monit_port: u16,
    /// BBR's connection goes away: after this many bytes of a script's stderr (0: before it
    /// starts), its reader closes and every later write fails with EPIPE. `None`: it stays.
    pub stderr_lost_after: std::cell::Cell<Option<usize>>,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

impl Vm {
    /// Installs the package and renders both jobs with `properties[job]`, then starts monit.
    pub fn boot(properties: &BTreeMap<&str, serde_json::Value>) -> Vm {
        let dir = tempfile::Builder::new()
            .prefix("bbr-vm-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        mkdir(root, 0o755, None);
        let pkg = root.join("packages/bbr-runner");
        mkdir(&pkg.join("bin"), 0o755, None);
        std::fs::copy(shared_bin().join("bbr-runner"), pkg.join("bin/bbr-runner"))
            .expect("install runner");
        copy_tree(&Path::new(REPO).join("profiles"), &pkg.join("profiles"));
        for d in [
            "bosh/bin",
            "bosh/etc",
            "monit/job",
            "store",
            "data",
            "sys/run",
            "sys/log",
        ] {
            mkdir(&root.join(d), 0o755, None);
        }
        std::os::unix::fs::symlink(super::monit::MONIT, root.join("bosh/bin/monit"))
            .expect("monit");
        let api_port = free_port();
        let monit_port = free_port();
        let (_, vcap_gid) = vcap();
        // Both jobs on one VM, as one instance group: acme-api consumes bbr-acme-db's link.
        let instance_group: BTreeMap<String, serde_json::Value> = JOBS
            .iter()
            .map(|job| {
                let mut props = properties
                    .get(job)
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({}));
                if *job == "acme-api" {
                    super::bosh::merge(
                        &mut props,
                        &serde_json::json!({"acme_api": {"port": api_port}}),
                    );
                }
                (job.to_string(), props)
            })
            .collect();
        for job in JOBS {
            let props = &instance_group[job];
            let links = bbr_runner::release::links(job, &instance_group).expect("links");
            let out = root.join("jobs").join(job);
            let r = render_linked(job, props, &links, &out, Some(root));
            assert!(r.status.success(), "render {job}: {}", text(&r));
            // As BOSH installs them: root:vcap, configs 0640, scripts 0750.
            for f in walk(&out) {
                let exec = f.starts_with(out.join("bin"));
                std::os::unix::fs::chown(&f, Some(0), Some(vcap_gid)).expect("chown");
                std::fs::set_permissions(
                    &f,
                    std::fs::Permissions::from_mode(if exec { 0o750 } else { 0o640 }),
                )
                .expect("chmod");
            }
            for d in ["", "/bin", "/bin/bbr", "/config"] {
                let p = PathBuf::from(format!("{}{d}", out.display()));
                if p.is_dir() {
                    std::os::unix::fs::chown(&p, Some(0), Some(vcap_gid)).expect("chown");
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750))
                        .expect("chmod");
                }
            }
            let monit = std::fs::read_to_string(out.join("monit")).expect("monit");
            if !monit.trim().is_empty() {
                write(
                    &root.join("monit/job").join(format!("{job}.monitrc")),
                    &monit,
                    0o600,
                    None,
                );
            }
        }
        // bpm enabled for a job: the STAND-IN bpm (support/bpm_stand_in.rs), as bpm-release
        // installs bpm, running the installed runner in its containers.
        if properties
            .values()
            .any(|p| p.pointer("/bpm/enabled") == Some(&serde_json::Value::Bool(true)))
        {
            super::bpm_stand_in::install(root, &pkg.join("bin/bbr-runner"));
        }
        let r = root.display();
        // As BOSH's monitrc: the credentials in a root-only file, `allow cleartext FILE`.
        write(
            &root.join("monit/monit.user"),
            "vcap:vm-monit-pw\n",
            0o600,
            None,
        );
        write(
            &root.join("bosh/etc/monitrc"),
            &format!(
                "set daemon 1\nset pidfile {r}/monit/monit.pid\nset idfile {r}/monit/monit.id\nset statefile {r}/monit/monit.state\nset logfile {r}/monit/monit.log\nset httpd port {monit_port} and use address 127.0.0.1\n  allow cleartext {r}/monit/monit.user\ninclude {r}/monit/job/*.monitrc\n"
            ),
            0o600,
            None,
        );
        let vm = Vm {
            dir,
            api_port,
            monit_port,
            stderr_lost_after: std::cell::Cell::new(None),
        };
        let out = vm.monit(&[]);
        assert!(out.status.success(), "monit did not start: {}", text(&out));
        vm.wait_healthy(Duration::from_secs(60));
        vm
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn monit(&self, args: &[&str]) -> Output {
        Command::new(super::monit::MONIT)
            .arg("-c")
            .arg(self.root().join("bosh/etc/monitrc"))
            .args(args)
            .output()
            .expect("monit")
    }

    pub fn healthy(&self) -> bool {
        ureq::get(&format!("http://127.0.0.1:{}/health", self.api_port))
            .call()
            .is_ok()
    }

    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "acme-api did not answer; monit: {}\nstderr log: {}",
                text(&self.monit(&["-B", "status"])),
                std::fs::read_to_string(self.root().join("sys/log/acme-api/acme-api.stderr.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn artifact_dir(&self, job: &str) -> PathBuf {
        self.root().join("store/bbr-backup").join(job)
    }

    /// Runs one script as BBR does; `None` when the job has no such script.
    pub fn script(&self, job: &str, name: &str, env: &[(&str, String)]) -> Option<Output> {
        let path = self
            .root()
            .join("jobs")
            .join(job)
            .join("bin/bbr")
            .join(name);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        // As the real BBR runs it (shared/research field notes, section 2): `sudo` over SSH, so
        // sudo's environment plus BBR's variables, the SSH user's home as working directory,
        // and a pipe from the SSH channel as stdin.
        let home = self.root().join("home/bbr-ssh");
        std::fs::create_dir_all(&home).expect("ssh user's home");
        let mut cmd = Command::new(&path);
        cmd.env_clear()
            .envs(super::kept_env())
            .envs([
                ("HOME", "/root"),
                ("LOGNAME", "root"),
                ("USER", "root"),
                ("MAIL", "/var/mail/root"),
                ("SHELL", "/bin/bash"),
                ("TERM", "unknown"),
                (
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ),
                ("SUDO_USER", "bbr-ssh"),
                ("SUDO_UID", "4242"),
                ("SUDO_GID", "4242"),
            ])
            .env("SUDO_COMMAND", &path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(&home)
            .stdin(Stdio::piped());
        let Some(after) = self.stderr_lost_after.get() else {
            return Some(cmd.output().expect("run script"));
        };
        // BBR's connection goes away: its end of stderr is read for `after` bytes, then closed.
        let (r, w) = nix::unistd::pipe().expect("pipe");
        cmd.stderr(Stdio::from(w));
        let reader = std::thread::spawn(move || {
            let mut r = std::fs::File::from(r);
            let mut seen = vec![0u8; after];
            let _ = std::io::Read::read_exact(&mut r, &mut seen);
            seen
        });
        let mut out = cmd.output().expect("run script");
        out.stderr = reader.join().expect("stderr reader");
        Some(out)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.monit(&["stop", "all"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.healthy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.monit(&["quit"]);
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One script run, for the report.
#[derive(Debug)]
pub struct Ran {
    pub job: String,
    pub script: String,
    pub output: Output,
}

/// A drained artifact: each file's bytes, owner and SHA-256, as BBR keeps them.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub files: BTreeMap<String, (Vec<u8>, u32, u32, String)>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub ran: Vec<Ran>,
    pub artifacts: BTreeMap<String, Artifact>,
    /// What each artifact directory held when the backup step ended (before cleanup).
    pub left_in_artifact_dirs: BTreeMap<String, Vec<String>>,
    pub failed: bool,
}

impl Report {
    pub fn ran(&self, job: &str, script: &str) -> Vec<&Ran> {
        self.ran
            .iter()
            .filter(|r| r.job == job && r.script == script)
            .collect()
    }

    pub fn summary(&self) -> String {
        self.ran
            .iter()
            .map(|r| format!("{} {}: {}\n", r.job, r.script, text(&r.output)))
            .collect()
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn artifact_env(vm: &Vm, job: &str) -> Vec<(&'static str, String)> {
    let dir = format!("{}/", vm.artifact_dir(job).display());
    vec![
        ("BBR_ARTIFACT_DIRECTORY", dir.clone()),
        ("ARTIFACT_DIRECTORY", dir),
    ]
}

/// The BBR scripts the two jobs ship, each a regular file (BBR finds them with
/// `find /var/vcap/jobs/*/bin/bbr/* -type f`): a flow below runs what exists, as BBR does, so
/// first it checks that nothing it should run is missing.
pub const SCRIPTS: &[(&str, &str)] = &[
    ("acme-api", "post-backup-unlock"),
    ("acme-api", "post-restore-unlock"),
    ("acme-api", "pre-backup-lock"),
    ("acme-api", "pre-restore-lock"),
    ("bbr-acme-db", "backup"),
    ("bbr-acme-db", "restore"),
];

fn assert_scripts_present(vm: &Vm) {
    let mut found = Vec::new();
    for job in JOBS {
        for f in walk(&vm.root().join("jobs").join(job).join("bin/bbr")) {
            let meta = std::fs::symlink_metadata(&f).expect("script");
            assert!(
                meta.file_type().is_file(),
                "{} is not a regular file",
                f.display()
            );
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            found.push((job, name));
        }
    }
    found.sort();
    let expected: Vec<(&str, String)> = SCRIPTS.iter().map(|(j, s)| (*j, s.to_string())).collect();
    assert_eq!(found, expected, "the BBR scripts the rendered jobs hold");
}

/// BBR's backup: lock all (continuing past failures); if every lock passed, back up all;
/// unlock all in reverse with `true` only if every backup passed; drain; clean up.
pub fn backup(vm: &Vm, after_lock: impl FnOnce()) -> Report {
    assert_scripts_present(vm);
    let mut report = Report::default();
    let push = |report: &mut Report, job: &str, script: &str, out: Option<Output>| -> bool {
        match out {
            Some(o) => {
                let ok = o.status.success();
                report.ran.push(Ran {
                    job: job.into(),
                    script: script.into(),
                    output: o,
                });
                ok
            }
            None => true,
        }
    };
    let mut locked = true;
    for job in JOBS {
        let out = vm.script(job, "pre-backup-lock", &[]);
        locked &= push(&mut report, job, "pre-backup-lock", out);
    }
    after_lock();
    let mut backed_up = locked;
    if locked {
        for job in JOBS {
            if vm
                .root()
                .join("jobs")
                .join(job)
                .join("bin/bbr/backup")
                .is_file()
            {
                let dir = vm.artifact_dir(job);
                std::fs::create_dir_all(&dir).expect("sudo mkdir -p");
                let out = vm.script(job, "backup", &artifact_env(vm, job));
                backed_up &= push(&mut report, job, "backup", out);
                let left: Vec<String> = walk(&dir)
                    .iter()
                    .map(|p| p.strip_prefix(&dir).expect("in").display().to_string())
                    .collect();
                report.left_in_artifact_dirs.insert(job.into(), left);
            }
        }
    }
    let flag = if backed_up { "true" } else { "false" };
    for job in JOBS.iter().rev() {
        let out = vm.script(
            job,
            "post-backup-unlock",
            &[("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL", flag.to_string())],
        );
        push(&mut report, job, "post-backup-unlock", out);
    }
    if backed_up {
        for job in JOBS {
            let dir = vm.artifact_dir(job);
            let mut files = BTreeMap::new();
            for f in walk(&dir) {
                let meta = std::fs::symlink_metadata(&f).expect("meta");
                assert!(
                    meta.file_type().is_file(),
                    "BBR carries regular files only: {}",
                    f.display()
                );
                let name = format!("./{}", f.strip_prefix(&dir).expect("in").display());
                assert!(
                    !name.contains(char::is_whitespace),
                    "no whitespace in artifact names: {name}"
                );
                let bytes = std::fs::read(&f).expect("read");
                let sum = sha256(&bytes);
                files.insert(name, (bytes, meta.uid(), meta.gid(), sum));
            }
            if dir.is_dir() {
                report.artifacts.insert(job.into(), Artifact { files });
            }
        }
    }
    report.failed = !backed_up;
    let _ = std::fs::remove_dir_all(vm.root().join("store/bbr-backup"));
    report
}

/// BBR's restore: copy the artifacts back and verify them; lock (serial); restore; always unlock;
/// clean up.
pub fn restore(vm: &Vm, artifacts: &BTreeMap<String, Artifact>) -> Report {
    assert_scripts_present(vm);
    let mut report = Report::default();
    for (job, a) in artifacts {
        let dir = vm.artifact_dir(job);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, (bytes, uid, gid, sum)) in &a.files {
            let path = dir.join(name.trim_start_matches("./"));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, bytes).expect("write");
            std::os::unix::fs::chown(&path, Some(*uid), Some(*gid)).expect("tar keeps owners");
            assert_eq!(
                &sha256(&std::fs::read(&path).expect("read")),
                sum,
                "checksum after upload"
            );
        }
    }
    let mut ok = true;
    for job in JOBS {
        if let Some(o) = vm.script(job, "pre-restore-lock", &[]) {
            ok &= o.status.success();
            report.ran.push(Ran {
                job: job.into(),
                script: "pre-restore-lock".into(),
                output: o,
            });
        }
    }
    if ok {
        for job in JOBS {
            if let Some(o) = vm.script(job, "restore", &artifact_env(vm, job)) {
                ok &= o.status.success();
                report.ran.push(Ran {
                    job: job.into(),
                    script: "restore".into(),
                    output: o,
                });
            }
        }
    }
    for job in JOBS.iter().rev() {
        if let Some(o) = vm.script(job, "post-restore-unlock", &[]) {
            ok &= o.status.success();
            report.ran.push(Ran {
                job: job.to_string(),
                script: "post-restore-unlock".into(),
                output: o,
            });
        }
    }
    report.failed = !ok;
    let _ = std::fs::remove_dir_all(vm.root().join("store/bbr-backup"));
    report
}
