//! `bbr-runner demo [--keep] [--dir DIR]`: the whole BBR cycle through the real jobs, rendered
//! by this binary into a throwaway BOSH-like root, with SQLite (the embedded default): lock,
//! backup, unlock, damage the data, restore, verify; each step printed with what ran where.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{CommandError, CommandResult};
use crate::cli::DemoArgs;
use crate::release;

const MONIT: &str = "/usr/bin/monit";
const JOBS: [&str; 2] = ["acme-api", "bbr-acme-db"];

struct Demo {
    root: PathBuf,
    api_port: u16,
    monit: bool,
    step: usize,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl Demo {
    fn step(&mut self, title: &str) {
        self.step += 1;
        crate::show!("\n==> {}. {title}", self.step);
    }

    fn script(&self, job: &str, name: &str, env: &[(&str, String)]) -> Option<Output> {
        let path = self.root.join("jobs").join(job).join("bin/bbr").join(name);
        if !path.is_file() {
            return None;
        }
        // As BBR runs it: root, no arguments, empty stdin, only BBR's variables.
        Command::new(&path)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .ok()
    }

    /// Runs `name` for every job that has it; prints what each said; false on any failure.
    fn run_all(&self, name: &str, env: &[(&str, String)]) -> bool {
        let mut ok = true;
        for job in JOBS {
            let Some(out) = self.script(job, name, env) else {
                continue;
            };
            let status = if out.status.success() {
                "ok".to_string()
            } else {
                format!("FAILED (exit {:?})", out.status.code())
            };
            crate::show!("   {job}/bin/bbr/{name}: {status}");
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                crate::show!("      {line}");
            }
            ok &= out.status.success();
        }
        ok
    }

    fn artifact_dir(&self) -> PathBuf {
        self.root.join("store/bbr-backup/bbr-acme-db")
    }

    fn db(&self) -> PathBuf {
        self.root.join("store/acme-api/acme.db")
    }

    fn items(&self) -> Result<Vec<String>, String> {
        let c = rusqlite::Connection::open_with_flags(
            self.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| format!("open: {e}"))?;
        let mut s = c
            .prepare("SELECT id || ': ' || name FROM items ORDER BY id")
            .map_err(|e| e.to_string())?;
        let rows = s
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    fn monit_cmd(&self, args: &[&str]) -> Option<Output> {
        Command::new(MONIT)
            .arg("-c")
            .arg(self.root.join("bosh/etc/monitrc"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()
    }

    fn healthy(&self) -> bool {
        ureq::get(&format!("http://127.0.0.1:{}/health", self.api_port))
            .call()
            .is_ok()
    }
}

/// The actions run as vcap inside the root: every directory above it must let vcap through.
/// Said before anything starts (else acme-api fails later with a bare "Permission denied").
fn vcap_can_reach(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let user = nix::unistd::User::from_name("vcap")
        .ok()
        .flatten()
        .ok_or("no user vcap")?;
    // vcap's groups from /etc/group itself: getgrouplist(3) crashes a static binary (glibc's
    // NSS), which is how the release ships the runner.
    let mut groups = vec![user.gid];
    for line in std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() == 4 && f[3].split(',').any(|m| m == "vcap") {
            if let Ok(g) = f[2].parse::<u32>() {
                groups.push(nix::unistd::Gid::from_raw(g));
            }
        }
    }
    let root = std::path::absolute(root).map_err(|e| format!("{}: {e}", root.display()))?;
    // The directories that exist (the root itself may be made later).
    for dir in root.ancestors() {
        let Ok(m) = std::fs::metadata(dir) else {
            continue;
        };
        let bit = if m.uid() == user.uid.as_raw() {
            0o100
        } else if groups.iter().any(|g| g.as_raw() == m.gid()) {
            0o010
        } else {
            0o001
        };
        if m.mode() & bit == 0 {
            return Err(format!(
                "{} (mode {:o}, owner uid {}) does not let vcap through, and the demo's actions run as vcap inside {}: choose a --dir that every user can reach (for example under /tmp), or chmod o+x {}",
                dir.display(),
                m.mode() & 0o7777,
                m.uid(),
                root.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

fn ensure_vcap() -> Result<(), String> {
    if nix::unistd::User::from_name("vcap")
        .ok()
        .flatten()
        .is_some()
    {
        return Ok(());
    }
    crate::show!("   creating the system user vcap, as on a BOSH stemcell: useradd --system --user-group vcap");
    let s = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "vcap",
        ])
        .status()
        .map_err(io("useradd"))?;
    if s.success() {
        Ok(())
    } else {
        Err("useradd vcap failed; create the user and run the demo again".into())
    }
}

fn not_root() -> CommandError {
    let k = crate::kernel::probe();
    crate::show!("bbr-runner demo needs root: it drops each action to the vcap user, makes mount namespaces and");
    crate::show!(
        "starts monit, as BBR (which runs every script with sudo) would. Run: sudo bbr-runner demo"
    );
    crate::show!(
        "\nWhat it can show without root, this machine's enforcement (bbr-runner kernel):"
    );
    crate::show!(
        "   Landlock ABI {}, mount namespaces: {}, capability changes: {}",
        k.landlock_abi,
        k.mount_namespace.unwrap_or(false),
        k.capability_changes
    );
    crate::show!("and the profiles it would use: bbr-runner check --print profiles/*/*.yml");
    CommandError::Refused("demo: not running as root: nothing was done".into())
}

pub fn demo(args: DemoArgs) -> CommandResult {
    if !nix::unistd::geteuid().is_root() {
        return Err(not_root());
    }
    let dir = match &args.dir {
        Some(d) if std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()) => {
            return Err(CommandError::Usage(format!(
                "demo: --dir {}: not empty; the demo lays a BOSH-like root out there and removes it at the end (unless --keep): give a new or empty directory",
                d.display()
            )));
        }
        Some(d) => d.clone(),
        None => match tempfile::Builder::new().prefix("bbr-demo-").tempdir() {
            Ok(t) => t.keep(),
            Err(e) => {
                return Err(CommandError::Internal(format!(
                    "demo: cannot create a temp dir: {e}"
                )))
            }
        },
    };
    let mut d = Demo {
        root: dir,
        api_port: 0,
        monit: Path::new(MONIT).is_file(),
        step: 0,
    };
    let result = run(&mut d);
    if d.monit {
        let _ = d.monit_cmd(&["stop", "all"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.healthy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = d.monit_cmd(&["quit"]);
    }
    if args.keep {
        crate::show!(
            "\nKept the BOSH-like root for inspection: {}",
            d.root.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&d.root);
    }
    result
        .map(|()| std::process::ExitCode::SUCCESS)
        .map_err(CommandError::Demo)
}

fn run(d: &mut Demo) -> Result<(), String> {
    d.step(&format!(
        "A BOSH-like root in {} (the release's jobs, rendered by this binary)",
        d.root.display()
    ));
    ensure_vcap()?;
    vcap_can_reach(&d.root)?;
    lay_out(d)?;
    d.step("acme-api writes items to the acme database (SQLite, the embedded default)");
    start_api(d)?;
    let before = d.items()?;
    crate::show!(
        "   {} items: {} ...",
        before.len(),
        before
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );

    d.step("BBR backup: pre-backup-lock, backup, post-backup-unlock (as BBR runs them: root, no arguments, only BBR's variables)");
    let art_env = vec![
        (
            "BBR_ARTIFACT_DIRECTORY",
            format!("{}/", d.artifact_dir().display()),
        ),
        (
            "ARTIFACT_DIRECTORY",
            format!("{}/", d.artifact_dir().display()),
        ),
    ];
    let locked = d.run_all("pre-backup-lock", &[]);
    std::fs::create_dir_all(d.artifact_dir()).map_err(io("mkdir artifact dir"))?;
    let backed_up = locked && d.run_all("backup", &art_env);
    let flag = if backed_up { "true" } else { "false" };
    d.run_all(
        "post-backup-unlock",
        &[("BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL", flag.to_string())],
    );
    if !backed_up {
        return Err("the backup failed (see above)".into());
    }
    let saved = drain(d)?;

    d.step("Damage the data");
    let c = rusqlite::Connection::open(d.db()).map_err(|e| format!("open: {e}"))?;
    c.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    c.execute_batch("DELETE FROM items WHERE id % 2 = 0; INSERT INTO items (name) VALUES ('oops: not in the backup');")
        .map_err(|e| format!("damage: {e}"))?;
    drop(c);
    let damaged = d.items()?;
    crate::show!(
        "   {} items now (was {}): every second one deleted, one added",
        damaged.len(),
        before.len()
    );

    d.step("BBR restore: pre-restore-lock, restore, post-restore-unlock");
    upload(d, &saved)?;
    let locked = d.run_all("pre-restore-lock", &[]);
    let restored = locked && d.run_all("restore", &art_env);
    d.run_all("post-restore-unlock", &[]);
    let _ = std::fs::remove_dir_all(d.root.join("store/bbr-backup"));
    if !restored {
        return Err("the restore failed (see above)".into());
    }

    d.step("Verify");
    let after = d.items()?;
    if after != before {
        return Err(format!(
            "the restored data differs from the backup: {} items, expected {}",
            after.len(),
            before.len()
        ));
    }
    crate::show!(
        "   restored data verified: {} items, identical to the backup",
        after.len()
    );
    if d.monit {
        crate::show!(
            "   acme-api answers again: {}",
            if d.healthy() { "yes" } else { "no" }
        );
    }

    d.step("What each action was allowed (bbr-runner check --print shows everything)");
    summary(d)?;
    Ok(())
}

fn lay_out(d: &mut Demo) -> Result<(), String> {
    let root = d.root.clone();
    for sub in [
        "packages/bbr-runner/bin",
        "bosh/bin",
        "bosh/etc",
        "monit/job",
        "store",
        "data",
        "sys/run",
        "sys/log",
        "jobs",
    ] {
        std::fs::create_dir_all(root.join(sub)).map_err(io(sub))?;
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod root"))?;
    let me = std::env::current_exe().map_err(io("current_exe"))?;
    let installed = root.join("packages/bbr-runner/bin/bbr-runner");
    std::fs::copy(&me, &installed).map_err(io("install the runner"))?;
    release::install_profiles(&root.join("packages/bbr-runner/profiles"))
        .map_err(|e| e.to_string())?;
    d.api_port = free_port()?;
    let monit_port = free_port()?;
    let manifest: BTreeMap<&str, serde_json::Value> = BTreeMap::from([
        ("bbr-acme-db", json!({"release_level_backup": true})),
        (
            "acme-api",
            json!({"release_level_backup": true, "acme_api": {"port": d.api_port}, "lock": {"stop_timeout_seconds": 30}}),
        ),
    ]);
    let vcap_gid = nix::unistd::Group::from_name("vcap")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .unwrap_or(0);
    // Both jobs on one VM: acme-api's database comes from bbr-acme-db's link, as on BOSH.
    let instance_group: BTreeMap<String, serde_json::Value> = manifest
        .iter()
        .map(|(job, props)| (job.to_string(), props.clone()))
        .collect();
    for job in JOBS {
        let out = root.join("jobs").join(job);
        let links = release::links(job, &instance_group).map_err(|e| e.to_string())?;
        release::render_job(job, &manifest[job], &links, &out, &root).map_err(|e| e.to_string())?;
        // As BOSH installs them: root:vcap; configs (they may hold passwords) 0640.
        for entry in walk(&out) {
            let exec = entry.starts_with(out.join("bin"));
            let _ = std::os::unix::fs::chown(&entry, Some(0), Some(vcap_gid));
            let _ = std::fs::set_permissions(
                &entry,
                std::fs::Permissions::from_mode(if exec { 0o750 } else { 0o640 }),
            );
        }
        for sub in ["", "bin", "bin/bbr", "config"] {
            let p = out.join(sub);
            if p.is_dir() {
                let _ = std::os::unix::fs::chown(&p, Some(0), Some(vcap_gid));
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750));
            }
        }
        crate::show!(
            "   rendered jobs/{job}: {}",
            walk(&out)
                .iter()
                .filter_map(|p| p.strip_prefix(&out).ok())
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let monit = std::fs::read_to_string(out.join("monit")).unwrap_or_default();
        if !monit.trim().is_empty() {
            std::fs::write(root.join("monit/job").join(format!("{job}.monitrc")), monit)
                .map_err(io("monit file"))?;
            std::fs::set_permissions(
                root.join("monit/job").join(format!("{job}.monitrc")),
                std::fs::Permissions::from_mode(0o600),
            )
            .map_err(io("chmod"))?;
        }
    }
    let r = root.display();
    // As on a BOSH VM: monit's credentials in a root-only file the control file names.
    let user = root.join("monit/monit.user");
    std::fs::write(&user, format!("vcap:demo-{monit_port}\n")).map_err(io("monit.user"))?;
    std::fs::set_permissions(&user, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod monit.user"))?;
    let rc = root.join("bosh/etc/monitrc");
    std::fs::write(
        &rc,
        format!("set daemon 1\nset pidfile {r}/monit/monit.pid\nset idfile {r}/monit/monit.id\nset statefile {r}/monit/monit.state\nset logfile {r}/monit/monit.log\nset httpd port {monit_port} and use address 127.0.0.1\n  allow cleartext {r}/monit/monit.user\ninclude {r}/monit/job/*.monitrc\n"),
    )
    .map_err(io("monitrc"))?;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod monitrc"))?;
    if d.monit {
        std::os::unix::fs::symlink(MONIT, root.join("bosh/bin/monit")).map_err(io("monit"))?;
    }
    Ok(())
}

fn start_api(d: &mut Demo) -> Result<(), String> {
    if !d.monit {
        crate::show!("   monit is not installed (apt-get install monit): no acme-api service, so no lock/unlock;");
        crate::show!("   the database part of the cycle still runs.");
        let db_dir = d.root.join("store/acme-api");
        std::fs::create_dir_all(&db_dir).map_err(io("db dir"))?;
        let c = rusqlite::Connection::open(d.db()).map_err(|e| format!("create db: {e}"))?;
        c.execute_batch("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);").map_err(|e| e.to_string())?;
        for i in 1..=10 {
            c.execute(
                "INSERT INTO items (name) VALUES (?1)",
                [format!("item {i}")],
            )
            .map_err(|e| e.to_string())?;
        }
        let vcap = nix::unistd::User::from_name("vcap")
            .ok()
            .flatten()
            .ok_or("no vcap")?;
        for p in [db_dir.clone(), d.db()] {
            std::os::unix::fs::chown(&p, Some(vcap.uid.as_raw()), Some(vcap.gid.as_raw()))
                .map_err(io("chown"))?;
        }
        return Ok(());
    }
    let out = d.monit_cmd(&[]).ok_or("cannot run monit")?;
    if !out.status.success() {
        return Err(format!(
            "monit did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.healthy() {
        if Instant::now() > deadline {
            return Err(format!(
                "acme-api did not start; see {}",
                d.root.join("sys/log/acme-api").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::show!(
        "   monit started acme-api on 127.0.0.1:{} under its profile (profiles/acme-api/serve.yml)",
        d.api_port
    );
    for i in 1..=10 {
        ureq::post(&format!("http://127.0.0.1:{}/items", d.api_port))
            .send(format!("item {i}"))
            .map_err(|e| format!("POST /items: {e}"))?;
    }
    Ok(())
}

type Saved = Vec<(PathBuf, Vec<u8>, u32, u32)>;

/// As BBR drains: every regular file of the artifact, with its owner; then cleanup.
fn drain(d: &Demo) -> Result<Saved, String> {
    use std::os::unix::fs::MetadataExt;
    let dir = d.artifact_dir();
    let mut saved = Vec::new();
    for f in walk(&dir) {
        let meta = std::fs::symlink_metadata(&f).map_err(io(f.display()))?;
        let bytes = std::fs::read(&f).map_err(io(f.display()))?;
        let rel = f.strip_prefix(&dir).unwrap_or(&f).to_path_buf();
        crate::show!("   artifact {}: {} bytes", rel.display(), bytes.len());
        saved.push((rel, bytes, meta.uid(), meta.gid()));
    }
    std::fs::remove_dir_all(d.root.join("store/bbr-backup")).map_err(io("cleanup"))?;
    Ok(saved)
}

fn upload(d: &Demo, saved: &Saved) -> Result<(), String> {
    let dir = d.artifact_dir();
    std::fs::create_dir_all(&dir).map_err(io("mkdir"))?;
    for (rel, bytes, uid, gid) in saved {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent.display()))?;
        }
        std::fs::write(&path, bytes).map_err(io(path.display()))?;
        std::os::unix::fs::chown(&path, Some(*uid), Some(*gid)).map_err(io(path.display()))?;
    }
    Ok(())
}

fn summary(d: &Demo) -> Result<(), String> {
    let profiles = d.root.join("packages/bbr-runner/profiles");
    let art = format!("{}/", d.artifact_dir().display());
    for (job, file) in [
        ("bbr-acme-db", "backup.yml"),
        ("bbr-acme-db", "restore.yml"),
        ("acme-api", "lock.yml"),
        ("acme-api", "serve.yml"),
    ] {
        let config = crate::job::load_config(&d.root, job).map_err(|e| e.to_string())?;
        let env = std::env::vars().collect();
        let runner_dir = crate::invocation::runner_dir();
        let mut vars = super::run::vars_of_job(&d.root, job, &config, &env, &runner_dir)
            .map_err(|e| e.to_string())?;
        vars.set("BBR_ARTIFACT_DIRECTORY", &art);
        vars.set(
            "BBR_RUNNER_DIR",
            &d.root.join("packages/bbr-runner/bin").display().to_string(),
        );
        if file == "serve.yml" {
            // What the job's ctl passes to `exec --db-config`.
            let db =
                crate::actions::acme_db::config::load(&d.root.join("jobs/acme-api/config/db.json"))
                    .map_err(|e| e.to_string())?;
            for (k, v) in db.profile_vars() {
                vars.set(&k, &v);
            }
        }
        let p = crate::profile::load(&profiles.join(job).join(file), &vars)
            .map_err(|e| e.to_string())?;
        for line in crate::review::summary_lines(&p) {
            crate::show!("   {job}/{file}: {line}");
        }
        let abi = crate::kernel::landlock_abi().1;
        let r = crate::review::report::profile_report(
            &p,
            &[crate::profile::Backend::Native],
            abi,
            &Default::default(),
            None,
            Vec::new(),
        );
        let b = &r.backends[0];
        let findings: Vec<String> = r
            .findings
            .iter()
            .map(|f| format!("{} {}", f.id, f.severity.label()))
            .collect();
        crate::show!(
            "   {job}/{file}: review: exposure {:.1} {} (native, Landlock ABI {abi}); findings: {}",
            b.score,
            b.band,
            if findings.is_empty() {
                "none".to_string()
            } else {
                findings.join(", ")
            }
        );
    }
    crate::show!("   `bbr-runner review` explains each claim; `review --verify` proves them with real escape attempts");
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
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
