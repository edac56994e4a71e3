//! The release's job templates, rendered with Ruby's ERB as BOSH renders them, from the spec
//! defaults merged with sample manifest properties, for every combination of
//! `release_level_backup` and `bpm.enabled`.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::bosh::{merge, render};
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
                for sqlite in [false, true] {
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
                    let ruby = dir.path().join("ruby");
                    let r = render(job, &props, &ruby, Some(Path::new("/tmp/root")));
                    assert!(r.status.success(), "{}", text(&r));
                    let ours = dir.path().join("ours");
                    bbr_runner::release::render_job(job, &props, &ours, Path::new("/tmp/root"))
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
                            "{job} rlb={rlb} bpm={bpm} sqlite={sqlite}: {}",
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
        tempfile::tempdir().expect("t").path(),
        Path::new("/var/vcap"),
    )
    .expect_err("missing password");
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
