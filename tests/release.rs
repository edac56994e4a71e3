//! The release's job templates, rendered with Ruby's ERB as BOSH renders them, from the spec
//! defaults merged with sample manifest properties, for every combination of
//! `release_level_backup` and `bpm.enabled`; acme-api with and without bbr-acme-db's link.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::bosh::{merge, render, render_linked};
use support::text;

fn sample(job: &str) -> serde_json::Value {
    match job {
        "bbr-acme-db" => {
            json!({"database": {"scheme": "postgres", "user": "acme", "password": "s3cret", "host": "10.0.0.5", "port": 5432, "tables": ["items"],
            "tls": {"ca": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"}}})
        }
        _ => json!({"acme_api": {"port": 8081}}),
    }
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_template_renders_and_checks_for_every_flag_combination() {
    for job in ["bbr-acme-db", "acme-api"] {
        for rlb in [false, true] {
            for bpm in [false, true] {
                let dir = tempfile::tempdir().expect("tempdir");
                let out = dir.path().join("out");
                let mut props = sample(job);
                merge(
                    &mut props,
                    &json!({"release_level_backup": rlb, "bpm": {"enabled": bpm}}),
                );
                let r = render(job, &props, &out, None);
                assert!(
                    r.status.success(),
                    "{job} rlb={rlb} bpm={bpm}: {}",
                    text(&r)
                );
                let rendered = files(&out);
                assert!(!rendered.is_empty());
                for f in rendered {
                    let name = f.strip_prefix(&out).expect("inside").display().to_string();
                    let body = std::fs::read_to_string(&f).expect("read");
                    let what = format!("{job} rlb={rlb} bpm={bpm} {name}");
                    if name.starts_with("bin/") {
                        let n = Command::new("bash")
                            .arg("-n")
                            .arg(&f)
                            .output()
                            .expect("bash -n");
                        assert!(n.status.success(), "{what}: bash -n: {}", text(&n));
                        assert!(
                            body.starts_with("#!/bin/bash\n"),
                            "{what}: shebang on line 1"
                        );
                    }
                    if name.ends_with(".json") {
                        serde_json::from_str::<serde_json::Value>(&body)
                            .unwrap_or_else(|e| panic!("{what}: JSON: {e}\n{body}"));
                    }
                    if name.ends_with(".yml") {
                        serde_saphyr::from_str::<serde_json::Value>(&body)
                            .unwrap_or_else(|e| panic!("{what}: YAML: {e}\n{body}"));
                    }
                    if name == "config/bpm.yml" {
                        let c = bbr_bpm::BpmConfig::parse(&body).expect("bpm.yml");
                        let policy = bbr_bpm::Policy {
                            allow_unsafe: false,
                            allow_privileged: true,
                            known_capabilities: bbr_runner::backend::bpm::known_capabilities(),
                        };
                        assert_eq!(
                            bbr_bpm::validate::validate(&c, job, "/var/vcap", &policy),
                            vec![],
                            "{what}"
                        );
                    }
                    if name == "config/config.json" || name == "config/db.json" {
                        bbr_runner::actions::acme_db::config::load(&f)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                    }
                    if name == "config/lock.json" {
                        bbr_runner::actions::acme_api::load(&f)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                    }
                    if name.starts_with("bin/bbr/") {
                        if rlb {
                            assert!(body.contains("exec /var/vcap/packages/bbr-runner/bin/bbr-runner run --root /var/vcap"), "{what}:\n{body}");
                        } else {
                            // Deactivated: says so, exits 0, touches nothing (it runs even with no runner installed).
                            let o = Command::new(&f)
                                .env_clear()
                                .envs(support::kept_env())
                                .stdin(std::process::Stdio::null())
                                .output()
                                .expect("run script");
                            assert_eq!(o.status.code(), Some(0), "{what}");
                            assert!(
                                String::from_utf8_lossy(&o.stderr).contains(
                                    "release_level_backup is false: this script is deactivated"
                                ),
                                "{what}: {}",
                                text(&o)
                            );
                            assert!(o.stdout.is_empty());
                        }
                    }
                }
                // The runner's job config agrees with the flags.
                let cfg = std::fs::read_to_string(out.join("config/bbr-runner.yml"))
                    .expect("bbr-runner.yml");
                assert!(
                    cfg.contains(&format!("release_level_backup: {rlb}\n"))
                        && cfg.contains(&format!("bpm_enabled: {bpm}\n")),
                    "{cfg}"
                );
            }
        }
    }
}

#[test]
fn the_database_config_is_the_sdks_with_ours_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let r = render("bbr-acme-db", &sample("bbr-acme-db"), &out, None);
    assert!(r.status.success(), "{}", text(&r));
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config/config.json")).expect("read"))
            .expect("json");
    assert_eq!(
        c["port"],
        json!(5432),
        "port is a JSON number, as the SDK needs"
    );
    assert_eq!(c["adapter"], "postgres");
    assert_eq!(c["tables"], json!(["items"]));
    assert!(c["tls"]["cert"]["ca"]
        .as_str()
        .is_some_and(|ca| ca.contains("BEGIN CERTIFICATE")));
    assert!(
        c["tls"]["cert"].get("certificate").is_none(),
        "no client certificate unless given"
    );
    assert!(c["bbr_runner"].is_object());
    // The embedded default: SQLite, no credentials needed.
    let out2 = dir.path().join("out2");
    let r = render("bbr-acme-db", &json!({}), &out2, None);
    assert!(r.status.success(), "{}", text(&r));
    let c = bbr_runner::actions::acme_db::config::load(&out2.join("config/config.json"))
        .expect("valid");
    assert_eq!(c.adapter, bbr_runner::actions::acme_db::Adapter::Sqlite);
}

/// The database is configured once: acme-api, colocated with bbr-acme-db, takes the database
/// from its `acme-db` link over its own `database.*` properties, which stay the fallback.
#[test]
fn acme_api_takes_the_database_from_bbr_acme_dbs_link_else_its_own_properties() {
    let own =
        json!({"database": {"scheme": "sqlite", "sqlite_path": "/var/vcap/store/own/own.db"}});
    let provider = json!({"database": {"scheme": "postgres", "name": "shop", "user": "acme", "password": "s3cret",
        "host": "/var/vcap/sys/run/postgres", "port": 5433}});
    let group = BTreeMap::from([
        ("bbr-acme-db".to_string(), provider),
        ("acme-api".to_string(), own.clone()),
    ]);
    let links = bbr_runner::release::links("acme-api", &group).expect("links");
    let dir = tempfile::tempdir().expect("tempdir");
    let db_json = |out: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join("config/db.json")).expect("db.json"))
            .expect("json")
    };
    let linked = dir.path().join("linked");
    let r = render_linked("acme-api", &own, &links, &linked, None);
    assert!(r.status.success(), "{}", text(&r));
    let c = db_json(&linked);
    assert_eq!(
        (
            &c["adapter"],
            &c["database"],
            &c["username"],
            &c["password"],
            &c["host"],
            &c["port"]
        ),
        (
            &json!("postgres"),
            &json!("shop"),
            &json!("acme"),
            &json!("s3cret"),
            &json!("/var/vcap/sys/run/postgres"),
            &json!(5433)
        ),
        "the link's database, not acme-api's own: {c}"
    );
    assert_eq!(
        c["bbr_runner"]["sqlite_path"], "/var/vcap/store/acme-api/acme.db",
        "bbr-acme-db's default"
    );
    let ctl = std::fs::read_to_string(linked.join("bin/ctl")).expect("ctl");
    assert!(
        ctl.contains("SQLITE_PATH='/var/vcap/store/acme-api/acme.db'\n"),
        "{ctl}"
    );
    // No link (acme-api alone, or nothing provides it): its own properties.
    let alone = dir.path().join("alone");
    let r = render("acme-api", &own, &alone, None);
    assert!(r.status.success(), "{}", text(&r));
    let c = db_json(&alone);
    assert_eq!(c["adapter"], "sqlite");
    assert_eq!(c["bbr_runner"]["sqlite_path"], "/var/vcap/store/own/own.db");
    let ctl = std::fs::read_to_string(alone.join("bin/ctl")).expect("ctl");
    assert!(
        ctl.contains("SQLITE_PATH='/var/vcap/store/own/own.db'\n"),
        "{ctl}"
    );
    let group = BTreeMap::from([("acme-api".to_string(), own)]);
    assert_eq!(
        bbr_runner::release::links("acme-api", &group).expect("optional"),
        json!({}),
        "optional"
    );
}

#[test]
fn a_missing_required_property_fails_the_render_as_bosh_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = render(
        "bbr-acme-db",
        &json!({"database": {"scheme": "postgres", "user": "acme"}}),
        &dir.path().join("out"),
        None,
    );
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr)
            .contains("Can't find property '[\"database.password\"]'"),
        "{}",
        text(&r)
    );
}

#[test]
fn the_binarys_own_renderer_matches_rubys_erb_byte_for_byte() {
    for job in ["bbr-acme-db", "acme-api"] {
        for rlb in [false, true] {
            for bpm in [false, true] {
                for (sqlite, linked) in [(false, false), (true, false), (false, true), (true, true)]
                {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let mut props = if sqlite { json!({}) } else { sample(job) };
                    if !sqlite && job == "acme-api" {
                        merge(
                            &mut props,
                            &json!({"database": {"scheme": "postgres", "user": "u", "password": "p"}}),
                        );
                    }
                    merge(
                        &mut props,
                        &json!({"release_level_backup": rlb, "bpm": {"enabled": bpm}}),
                    );
                    // Linked: colocated with bbr-acme-db on another database than its own.
                    let mut provider = if sqlite {
                        json!({"database": {"sqlite_path": "/var/vcap/store/x/y.db"}})
                    } else {
                        sample("bbr-acme-db")
                    };
                    merge(&mut provider, &json!({"database": {"name": "linked"}}));
                    let links = if linked {
                        let group = BTreeMap::from([
                            ("bbr-acme-db".to_string(), provider),
                            (job.to_string(), props.clone()),
                        ]);
                        bbr_runner::release::links(job, &group).expect("links")
                    } else {
                        json!({})
                    };
                    let ruby = dir.path().join("ruby");
                    let r = render_linked(job, &props, &links, &ruby, Some(Path::new("/tmp/root")));
                    assert!(r.status.success(), "{}", text(&r));
                    let ours = dir.path().join("ours");
                    bbr_runner::release::render_job(
                        job,
                        &props,
                        &links,
                        &ours,
                        Path::new("/tmp/root"),
                    )
                    .expect("render");
                    let (a, b) = (files(&ruby), files(&ours));
                    let rel = |v: &[std::path::PathBuf], base: &Path| {
                        v.iter()
                            .map(|p| p.strip_prefix(base).expect("in").to_path_buf())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(rel(&a, &ruby), rel(&b, &ours), "{job}: the same files");
                    for (x, y) in a.iter().zip(&b) {
                        assert_eq!(
                            std::fs::read_to_string(x).expect("ruby"),
                            std::fs::read_to_string(y).expect("ours"),
                            "{job} rlb={rlb} bpm={bpm} sqlite={sqlite} linked={linked}: {}",
                            x.display()
                        );
                        use std::os::unix::fs::PermissionsExt;
                        assert_eq!(
                            std::fs::metadata(x).expect("m").permissions().mode(),
                            std::fs::metadata(y).expect("m").permissions().mode()
                        );
                    }
                }
            }
        }
    }
    // A missing property fails the same way.
    let e = bbr_runner::release::render_job(
        "bbr-acme-db",
        &json!({"database": {"scheme": "postgres", "user": "acme"}}),
        &json!({}),
        tempfile::tempdir().expect("t").path(),
        Path::new("/var/vcap"),
    )
    .expect_err("missing password")
    .to_string();
    assert!(
        e.contains("Can't find property '[\"database.password\"]'"),
        "{e}"
    );
}

#[test]
fn every_release_file_is_built_into_the_binary() {
    let mut on_disk: Vec<String> = ["jobs", "profiles"]
        .iter()
        .flat_map(|d| files(&Path::new(support::bosh::REPO).join(d)))
        .map(|p| {
            p.strip_prefix(support::bosh::REPO)
                .expect("in repo")
                .display()
                .to_string()
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = bbr_runner::release::embedded::FILES
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    embedded.sort();
    assert_eq!(
        embedded, on_disk,
        "runner/src/release/embedded.rs must list every file under jobs/ and profiles/"
    );
    for (p, content) in bbr_runner::release::embedded::FILES {
        assert_eq!(
            &std::fs::read_to_string(Path::new(support::bosh::REPO).join(p)).expect("read"),
            content
        );
    }
}

/// What `bosh create-release` reads before it builds anything (it refused this release until
/// config/blobs.yml existed; docs/release.md): the release's name, a blobs index, and
/// for every job and package a spec whose name is its directory's.
#[test]
fn the_release_has_what_bosh_create_release_reads() {
    let repo = Path::new(support::bosh::REPO);
    let yaml = |rel: &str| -> serde_json::Value {
        let body = std::fs::read_to_string(repo.join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e} (bosh create-release needs it)"));
        serde_saphyr::from_str(&body).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert_eq!(yaml("config/final.yml")["name"], "bbr-runner");
    assert!(
        yaml("config/blobs.yml").is_object(),
        "config/blobs.yml must be a YAML mapping (`--- {{}}` for no blobs)"
    );
    for kind in ["jobs", "packages"] {
        let mut names = Vec::new();
        for e in std::fs::read_dir(repo.join(kind))
            .expect("read_dir")
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let spec = yaml(&format!("{kind}/{name}/spec"));
            assert_eq!(spec["name"], name.as_str(), "{kind}/{name}/spec: name");
            names.push(name);
        }
        assert!(!names.is_empty(), "{kind}/ is empty");
    }
    assert!(repo.join("packages/bbr-runner/packaging").is_file());
}

/// The conventions a BOSH author expects (checked with the BOSH CLI by hand: docs/release.md):
/// final releases' blobs in a real blobstore (`local` is a directory on one machine), its
/// credentials in config/private.yml, which git ignores with the local blob copies; the
/// package built from the blob scripts/build-release adds; the license Cargo.toml names, whose
/// file `bosh create-release` puts in the release.
#[test]
fn the_release_follows_bosh_conventions() {
    let repo = Path::new(support::bosh::REPO);
    let read = |rel: &str| {
        std::fs::read_to_string(repo.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let fin: serde_json::Value =
        serde_saphyr::from_str(&read("config/final.yml")).expect("final.yml");
    let provider = fin["blobstore"]["provider"].as_str().unwrap_or_default();
    assert!(
        ["s3", "gcs", "azure-storage"].contains(&provider),
        "config/final.yml: a real blobstore, not {provider:?}"
    );
    for secret in [
        "access_key_id",
        "secret_access_key",
        "json_key",
        "credentials_source",
    ] {
        assert!(
            fin["blobstore"]["options"].get(secret).is_none(),
            "{secret} belongs in config/private.yml"
        );
    }
    for ignored in ["config/private.yml", "blobs/x", ".blobs/x", "dist/x"] {
        let o = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["check-ignore", "-q", "--no-index", ignored])
            .status()
            .expect("git");
        assert!(o.success(), "{ignored} must be git-ignored");
    }
    // `bosh create-release` fails without src/ (a clone has only what git tracks).
    let tracked = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["ls-files", "src"])
        .output()
        .expect("git");
    assert!(!tracked.stdout.is_empty(), "src/ must hold a tracked file");
    let spec: serde_json::Value =
        serde_saphyr::from_str(&read("packages/bbr-runner/spec")).expect("spec");
    assert_eq!(
        spec["files"],
        json!(["bbr-runner/bbr-runner-linux-amd64.tgz"]),
        "the package is the blob"
    );
    let build = read("scripts/build-release");
    assert!(
        build.contains("bosh add-blob \"$blob\" bbr-runner/bbr-runner-linux-amd64.tgz"),
        "{build}"
    );
    assert!(read("packages/bbr-runner/packaging")
        .contains("tar -xzf bbr-runner/bbr-runner-linux-amd64.tgz"));
    let cargo = read("Cargo.toml");
    assert!(cargo.contains("license = \"Apache-2.0\""));
    let license = read("LICENSE");
    assert!(
        license.contains("Apache License")
            && license.contains("Version 2.0, January 2004")
            && license.contains("END OF TERMS AND CONDITIONS"),
        "LICENSE: the Apache-2.0 text"
    );
    assert_eq!(
        license
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .len(),
        10_221,
        "LICENSE: the standard Apache-2.0 text, whitespace aside"
    );
}

/// `ctl` quotes every path: with a BOSH root and a SQLite path holding spaces, `ctl start`
/// makes the database's directory (vcap's), the run and log directories and the pidfile where
/// they are named, and starts the runner with its profile's path whole.
#[test]
fn ctl_start_works_where_every_path_holds_spaces() {
    use std::os::unix::fs::MetadataExt;
    support::require_root();
    let (vcap_uid, _) = support::vcap();
    let dir = tempfile::Builder::new()
        .prefix("bbr root ")
        .tempdir()
        .expect("tempdir");
    let root = dir.path().join("var vcap");
    let out = root.join("jobs/acme-api");
    let props = json!({"database": {"sqlite_path": "/var/vcap/store/acme api/my db/acme.db"}});
    let r = render("acme-api", &props, &out, Some(&root));
    assert!(r.status.success(), "{}", text(&r));
    // A stand-in runner that records its arguments, one a line.
    let runner = root.join("packages/bbr-runner/bin/bbr-runner");
    support::mkdir(runner.parent().expect("bin"), 0o755, None);
    let argv = dir.path().join("argv");
    support::write(
        &runner,
        &format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", argv.display()),
        0o755,
        None,
    );
    let o = Command::new(out.join("bin/ctl"))
        .arg("start")
        .env_clear()
        .envs(support::kept_env())
        .output()
        .expect("ctl start");
    assert!(o.status.success(), "{}", text(&o));
    let db_dir = root.join("store/acme api/my db");
    assert!(
        db_dir.is_dir(),
        "{} not made: {}",
        db_dir.display(),
        text(&o)
    );
    assert_eq!(std::fs::metadata(&db_dir).expect("meta").uid(), vcap_uid);
    let pid = std::fs::read_to_string(root.join("sys/run/acme-api/acme-api.pid")).expect("pidfile");
    support::wait_until(
        "the stand-in runner did not end",
        std::time::Duration::from_secs(10),
        || !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(),
    );
    let args = std::fs::read_to_string(&argv).expect("the runner ran");
    let profile = root.join("packages/bbr-runner/profiles/acme-api/serve.yml");
    assert!(
        args.lines().any(|l| l == profile.display().to_string()),
        "the profile's path is one argument:\n{args}"
    );
    assert!(root.join("sys/log/acme-api/acme-api.stderr.log").is_file());
}

/// Every example deployment: the base manifest alone and with its operations files, each as
/// `bosh int` gives it (support::manifest), with the test's PostgreSQL as `((acme_db_host))`.
const EXAMPLES: &[&[&str]] = &[
    &[],
    &["enable-backup.yml"],
    &["postgres.yml"],
    &["postgres.yml", "bpm.yml"],
    &["enable-backup.yml", "postgres.yml"],
    &["enable-backup.yml", "bpm.yml"],
    &["enable-backup.yml", "postgres.yml", "bpm.yml"],
];

fn api_items(vm: &support::vm::Vm) -> String {
    ureq::get(&format!("http://127.0.0.1:{}/items", vm.api_port))
        .call()
        .expect("GET /items")
        .body_mut()
        .read_to_string()
        .expect("body")
}

fn post_items(vm: &support::vm::Vm, n: usize, tag: &str) {
    for i in 0..n {
        ureq::post(&format!("http://127.0.0.1:{}/items", vm.api_port))
            .send(format!("{tag} {i}"))
            .expect("POST /items");
    }
}

/// The example manifests (`manifests/`) render and work: each example's jobs of this release
/// are rendered with Ruby's ERB from the manifest's properties (acme-api consuming
/// bbr-acme-db's link) into a BOSH-like VM, and BBR's backup and restore run on them: with
/// `release_level_backup` every script is active and the restore gives back the backed-up
/// items (SQLite, or PostgreSQL with `postgres.yml`); without it every script says it is
/// deactivated and nothing is backed up. Jobs of other releases (bpm, the BBR SDK) are named
/// in `releases`; their own releases render them.
#[test]
fn every_example_manifest_renders_and_runs_the_bbr_cycle() {
    use support::db::{Postgres, APP_PASSWORD};
    support::require_root();
    support::vcap();
    let pg = Postgres::start();
    let vars = BTreeMap::from([
        ("acme_db_host", json!(pg.socket_dir.display().to_string())),
        ("acme_db_port", json!(pg.port)),
        ("acme_db_password", json!(APP_PASSWORD)),
    ]);
    let mut used = std::collections::BTreeSet::new();
    for ops in EXAMPLES {
        used.extend(ops.iter().map(|o| o.to_string()));
        let what = format!("manifests/acme.yml {ops:?}");
        let m = support::manifest::load("acme.yml", ops, &vars);
        let releases: Vec<&str> = m["releases"]
            .as_array()
            .expect("releases")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        let jobs = support::manifest::jobs(&m, "acme");
        let mut ours = BTreeMap::new();
        for (job, (release, props)) in &jobs {
            assert!(
                releases.contains(&release.as_str()),
                "{what}: {job}'s release {release} is not in releases"
            );
            if release == "bbr-runner" {
                ours.insert(job.as_str(), props.clone());
            }
        }
        assert_eq!(
            ours.keys().copied().collect::<Vec<_>>(),
            support::vm::JOBS,
            "{what}: both jobs of this release, colocated"
        );
        let rlb = ours["bbr-acme-db"]["release_level_backup"] == json!(true);
        let bpm = ours["bbr-acme-db"]["bpm"]["enabled"] == json!(true);
        let postgres = ours["bbr-acme-db"]["database"]["scheme"] == json!("postgres");
        assert_eq!(
            bpm,
            jobs.contains_key("bpm"),
            "{what}: bpm.enabled with bpm's job"
        );
        assert_eq!(
            postgres,
            jobs.contains_key("database-backup-restorer"),
            "{what}: the SDK's clients with PostgreSQL"
        );

        let vm = support::vm::Vm::boot(&ours);
        let db_json = std::fs::read_to_string(vm.root().join("jobs/acme-api/config/db.json"))
            .expect("db.json");
        assert_eq!(
            postgres,
            db_json.contains("\"adapter\": \"postgres\""),
            "{what}: acme-api's database is bbr-acme-db's: {db_json}"
        );
        post_items(&vm, 10, "before");
        let at_backup = api_items(&vm);
        let report = support::vm::backup(&vm, || {});
        assert!(!report.failed, "{what}: {}", report.summary());
        let backup = &report.ran("bbr-acme-db", "backup")[0];
        let stderr = String::from_utf8_lossy(&backup.output.stderr).into_owned();
        if !rlb {
            for r in &report.ran {
                assert!(
                    String::from_utf8_lossy(&r.output.stderr)
                        .contains("release_level_backup is false: this script is deactivated"),
                    "{what}: {} {}: {}",
                    r.job,
                    r.script,
                    text(&r.output)
                );
            }
            assert!(
                report.artifacts.values().all(|a| a.files.is_empty()),
                "{what}: nothing backed up"
            );
            continue;
        }
        for r in &report.ran {
            assert!(
                !String::from_utf8_lossy(&r.output.stderr).contains("deactivated"),
                "{what}: {} {} is active: {}",
                r.job,
                r.script,
                text(&r.output)
            );
        }
        assert!(
            report.artifacts["bbr-acme-db"]
                .files
                .contains_key("./manifest.json"),
            "{what}: {:?}",
            report.artifacts["bbr-acme-db"].files.keys()
        );
        if bpm {
            // The stand-in bpm (support/bpm_stand_in.rs) runs the backup in its container.
            assert!(stderr.contains("backend bpm ("), "{what}: {stderr}");
        }
        post_items(&vm, 5, "after");
        assert_ne!(api_items(&vm), at_backup, "{what}: the data moved on");
        let report = support::vm::restore(&vm, &report.artifacts);
        assert!(!report.failed, "{what}: {}", report.summary());
        vm.wait_healthy(std::time::Duration::from_secs(60));
        assert_eq!(
            api_items(&vm),
            at_backup,
            "{what}: the backed-up items, restored"
        );
    }
    let all: std::collections::BTreeSet<String> =
        std::fs::read_dir(Path::new(support::bosh::REPO).join("manifests/operations"))
            .expect("manifests/operations")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(used, all, "every operations file is in an example");
}

/// acme-api stops within monit's stop timeout, whichever way monit stops it: `ctl stop` waits
/// `acme_api.stop_grace_seconds` after TERM, then KILLs; `bpm stop` waits 20 s (bpm's own), then
/// KILLs. The rendered monit file's `stop program ... with timeout N seconds` must exceed both.
#[test]
fn acme_api_stops_within_monits_stop_timeout_with_and_without_bpm() {
    let spec: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(support::bosh::job_dir("acme-api").join("spec")).expect("spec"),
    )
    .expect("spec parses");
    let grace = spec["properties"]["acme_api.stop_grace_seconds"]["default"]
        .as_u64()
        .expect("stop_grace_seconds default");
    for (bpm, longest) in [(false, grace), (true, 20)] {
        let out = tempfile::tempdir().expect("tempdir");
        let r = support::bosh::render(
            "acme-api",
            &serde_json::json!({"bpm": {"enabled": bpm}}),
            out.path(),
            None,
        );
        assert!(r.status.success(), "{}", text(&r));
        let monit = std::fs::read_to_string(out.path().join("monit")).expect("monit");
        let stop = monit
            .lines()
            .find(|l| l.trim_start().starts_with("stop program"))
            .unwrap_or_else(|| panic!("no stop program:\n{monit}"));
        let timeout: u64 = stop
            .split("with timeout ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no timeout in `{stop}`"));
        assert!(
            longest + 10 <= timeout,
            "bpm={bpm}: stopping may take {longest} s and then a KILL, monit waits {timeout} s"
        );
    }
}
