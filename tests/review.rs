//! `bbr-runner review`: snapshot tests of the text and JSON reports of the shipped profiles,
//! SARIF validated against the SARIF 2.1.0 schema, --verify for real (passing on the shipped
//! profiles, failing on a claim made false), --baseline, --abi, --threshold and --policy.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The runner, from a directory vcap can enter: `--verify` runs its controls as vcap with the
/// running binary, which fails (and the claim is only "observed") when the checkout lies below a
/// directory vcap cannot enter (a mktemp -d of root's, as a load test's clone was).
fn bbr_runner() -> Command {
    let mut c = Command::new(shared_bin().join("bbr-runner"));
    c.current_dir(REPO);
    c
}

fn review(args: &[&str]) -> Output {
    bbr_runner()
        .arg("review")
        .args(args)
        .env_clear()
        .envs(kept_env())
        .output()
        .expect("review")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The kernel's own ABI varies by machine; the claims are pinned with --abi 7.
fn stable(text: &str) -> String {
    let kernel = bbr_runner::kernel::landlock_abi().1;
    text.replace(
        &format!("(this kernel: ABI {kernel})"),
        "(this kernel: ABI K)",
    )
    .replace(&format!("\"kernel_abi\": {kernel},"), "\"kernel_abi\": K,")
}

/// The variables the release's jobs render by default for a PostgreSQL deployment over TCP
/// (`database.scheme: postgres`, `database.host` 127.0.0.1, `acme_api.port` 8080), so the
/// snapshots pin the real TCP endpoints, binds and findings, not entries left out.
const JOB_VARS: &[&str] = &[
    "--var",
    "API_PORT=8080",
    "--var",
    "API_RUN_DIR=/var/vcap/sys/run/acme-api",
    "--var",
    "MONIT_CONTROL_FILE=/var/vcap/bosh/etc/monitrc",
    "--var",
    "DB_HOST=127.0.0.1",
    "--var",
    "DB_PORT=5432",
    "--var",
    "DB_SOCKET=",
    "--var",
    "SQLITE_DIR=",
    "--var",
    "DB_CLIENTS_DIR=",
];

#[test]
fn text_report_of_the_shipped_profiles() {
    let mut args = vec!["--abi", "7", "--backend", "both"];
    args.extend_from_slice(JOB_VARS);
    args.push("profiles");
    let out = review(&args);
    assert!(out.status.success(), "{}", text(&out));
    insta::assert_snapshot!("review_text", stable(&stdout(&out)));
}

#[test]
fn json_report_of_the_shipped_profiles() {
    let mut args = vec!["--abi", "7", "--backend", "both", "--format", "json"];
    args.extend_from_slice(JOB_VARS);
    args.push("profiles");
    let out = review(&args);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["schema"], "bbr-runner-review/1");
    insta::assert_snapshot!("review_json", stable(&stdout(&out)));
}

#[test]
fn sarif_output_validates_against_the_sarif_2_1_0_schema() {
    let out = review(&["--abi", "7", "--format", "sarif", "profiles"]);
    assert!(out.status.success(), "{}", text(&out));
    let sarif: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(REPO).join("tests/fixtures/sarif-2.1.0-rtm.5.json"))
            .expect("schema"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&sarif)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "SARIF invalid: {errors:#?}");
    let results = sarif["runs"][0]["results"].as_array().expect("results");
    assert!(
        !results.is_empty(),
        "the shipped profiles have findings (e.g. BBR002 for the lock's root)"
    );
    // The neighbour: a document that breaks the schema is refused by the same validator.
    let mut broken = sarif.clone();
    broken["runs"][0]["results"][0]["level"] = serde_json::json!("catastrophic");
    assert!(validator.iter_errors(&broken).next().is_some());
}

/// The claims of `--abi N` for `profile` (native), with `vars`.
fn claims_at(abi: &str, profile: &str, vars: &[&str]) -> serde_json::Value {
    let mut args = vec!["--abi", abi, "--backend", "native", "--format", "json"];
    for v in vars {
        args.extend(["--var", v]);
    }
    args.push(profile);
    let out = review(&args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn status_of<'a>(json: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    json["profiles"][0]["backends"][0]["claims"]
        .as_array()
        .expect("claims")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no claim {id}"))
}

/// Below Landlock ABI 4 a bare TCP port (no host) has no layer: Landlock's port rule is the
/// only way to say "that port on every host". A strict profile with one is refused, and says
/// why; what namespaces enforce holds at every ABI.
#[test]
fn abi_3_shows_a_bare_tcp_port_as_not_enforced_and_why_and_namespaces_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("bare.yml");
    std::fs::write(&profile, "version: 1\nabi: 7\nuser: vcap\nfilesystem:\n  execute: ['@system-libs']\nnetwork:\n  connect_tcp: [5432]\n").expect("write");
    let profile = profile.display().to_string();
    let json = claims_at("3", &profile, &[]);
    let c = status_of(&json, "net.tcp_connect");
    assert_eq!(c["status"], "not_enforced", "{c}");
    assert!(
        c["why"].as_str().is_some_and(|w| w.contains("ABI 4")),
        "{c}"
    );
    for id in [
        "scope.signal",
        "fs.read",
        "fs.write",
        "fs.execute",
        "proc.others",
        "ipc",
        "syscalls",
    ] {
        assert_eq!(status_of(&json, id)["status"], "enforced", "{id}");
    }
    assert_eq!(
        json["profiles"][0]["backends"][0]["runs"], false,
        "strict: the runner refuses it on ABI 3"
    );
    assert!(json["profiles"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|f| f["id"] == "BBR015"));
    // The neighbours: on ABI 4 Landlock's port rule holds the port (on every host), but
    // abstract unix sockets wait for ABI 6 (no network namespace of its own for a bare port);
    // on ABI 6 it runs.
    let json = claims_at("4", &profile, &[]);
    assert_eq!(status_of(&json, "net.tcp_connect")["status"], "partial");
    assert_eq!(
        status_of(&json, "scope.abstract_unix")["status"],
        "not_enforced"
    );
    assert_eq!(json["profiles"][0]["backends"][0]["runs"], false);
    let json = claims_at("6", &profile, &[]);
    assert_eq!(json["profiles"][0]["backends"][0]["runs"], true);
}

/// Every native claim of every shipped profile is enforced at every ABI a stemcell has, with
/// its TCP endpoints, sockets and databases given as a deployment gives them.
#[test]
fn every_shipped_claim_is_enforced_at_abi_7_6_4_3_1_and_0() {
    let cases: &[(&str, &[&str])] = &[
        ("profiles/acme-api/lock.yml", &["API_PORT=8080"]),
        ("profiles/acme-api/unlock.yml", &["API_PORT=8080"]),
        (
            "profiles/acme-api/serve.yml",
            &["API_PORT=8080", "DB_HOST=10.0.0.5", "DB_PORT=5432"],
        ),
        (
            "profiles/bbr-acme-db/backup.yml",
            &["DB_HOST=10.0.0.5", "DB_PORT=5432"],
        ),
        (
            "profiles/bbr-acme-db/restore.yml",
            &["DB_HOST=db.internal", "DB_PORT=5432"],
        ),
        ("profiles/examples/artifact-only.yml", &[]),
    ];
    for abi in ["7", "6", "4", "3", "1", "0"] {
        for (profile, vars) in cases {
            let json = claims_at(abi, profile, vars);
            let backend = &json["profiles"][0]["backends"][0];
            assert_eq!(
                backend["runs"], true,
                "{profile} at ABI {abi}: {}",
                backend["why"]
            );
            for c in backend["claims"].as_array().expect("claims") {
                // The version-1 profiles' own choices, stated as such: uid and limits are
                // enforced; a turned-off scope or a missing timeout is what the author asked.
                if c["id"] == "timeout" && profile.ends_with("serve.yml") {
                    continue;
                }
                assert_eq!(c["status"], "enforced", "{profile} at ABI {abi}: {c}");
            }
        }
    }
}

#[test]
fn verify_holds_on_the_shipped_profiles() {
    require_root();
    vcap();
    let _tiocsti = LegacyTiocsti::allow();
    let out = review(&["--verify", "--format", "json", "profiles"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut held = 0;
    for p in json["profiles"].as_array().expect("profiles") {
        for b in p["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .filter(|b| b["backend"] == "native")
        {
            for c in b["claims"].as_array().expect("claims") {
                // Every native claim says what --verify did with it (held, observed, not run).
                assert!(c["verified"]["result"].is_string(), "{}: {}", p["file"], c);
                assert_ne!(c["verified"]["result"], "broken", "{}: {}", p["file"], c);
                // No shipped profile may chmod root's files or type into the caller's
                // terminal, each shown by a live attempt whose control succeeds.
                // Every claim is attempted live but the two that take the declared limit or
                // timeout to reach, and those name the tests that check them.
                if c["verified"]["result"] == "not_run" {
                    assert!(
                        (c["id"] == "limits" || c["id"] == "timeout")
                            && c["verified"]["detail"]
                                .as_str()
                                .is_some_and(|d| d.contains("checked by tests/")),
                        "{}: {}",
                        p["file"],
                        c
                    );
                }
                if c["id"] == "root_files" || c["id"] == "terminal" {
                    assert_eq!(c["verified"]["result"], "held", "{}: {}", p["file"], c);
                }
                if c["verified"]["result"] == "held" {
                    held += 1;
                }
            }
        }
    }
    assert!(
        held >= 6 * 10,
        "each shipped profile has its denials verified ({held} held)"
    );
}

#[test]
fn verify_fails_when_a_claim_is_made_false() {
    require_root();
    vcap();
    // A best_effort profile that talks TCP, run as on a kernel with Landlock ABI 3 (no TCP
    // rules, and no network namespace while it talks TCP) but reviewed as if on ABI 7: the
    // review then claims a port rule the sandbox does not have.
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("tcp.yml");
    std::fs::write(&profile, "version: 1\nabi: 7\nenforcement: best_effort\nuser: vcap\nfilesystem:\n  execute: ['@system-libs']\nnetwork:\n  connect_tcp: [5432]\n").expect("write");
    let capped = |args: &[&str]| {
        bbr_runner()
            .arg("review")
            .args(args)
            .env_clear()
            .envs(kept_env())
            .env("BBR_RUNNER_LANDLOCK_ABI_MAX", "3")
            .output()
            .expect("review")
    };
    let path = profile.display().to_string();
    let out = capped(&["--verify", "--backend", "native", "--abi", "7", &path]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("BROKEN")
            && stderr(&out)
                .contains("net.tcp_connect is reported partial but the escape attempt succeeded"),
        "{}",
        text(&out)
    );
    // The neighbour: reviewed on the ABI it runs on, it claims nothing false.
    let out = capped(&["--verify", "--backend", "native", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn baseline_lists_a_widened_write_path_and_a_new_port_as_gained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("p.yml");
    let base = "version: 1\nabi: 7\nuser: vcap\nfilesystem:\n  write: ['/tmp']\nnetwork:\n  connect_tcp: [5432]\ntimeout: 1h\n";
    std::fs::write(&profile, base).expect("write");
    let out = review(&["--format", "json", &profile.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let baseline = dir.path().join("baseline.json");
    std::fs::write(&baseline, &out.stdout).expect("baseline");
    let out = review(&[
        "--baseline",
        &baseline.display().to_string(),
        &profile.display().to_string(),
    ]);
    assert!(
        out.status.success() && stderr(&out).contains("no change since"),
        "{}",
        text(&out)
    );
    std::fs::write(
        &profile,
        base.replace("write: ['/tmp']", "write: ['/tmp', '/var/tmp']")
            .replace("[5432]", "[5432, 6379]"),
    )
    .expect("widen");
    let out = review(&[
        "--baseline",
        &baseline.display().to_string(),
        &profile.display().to_string(),
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("GAINED") && err.contains("write /var/tmp"),
        "{err}"
    );
    assert!(err.contains("tcp connect port 6379"), "{err}");
    assert!(!err.contains("lost"), "{err}");
    // A new high-severity finding fails the comparison: writable and executable.
    std::fs::write(
        &profile,
        base.replace("filesystem:\n", "filesystem:\n  execute: ['/tmp']\n"),
    )
    .expect("exec");
    let out = review(&[
        "--baseline",
        &baseline.display().to_string(),
        &profile.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("new finding") && stderr(&out).contains("BBR011"),
        "{}",
        text(&out)
    );
}

#[test]
fn no_shipped_profile_runs_as_root_and_a_root_profile_is_a_high_finding() {
    let out = review(&["--format", "json", "profiles"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let profiles = json["profiles"].as_array().expect("profiles");
    assert!(profiles.len() >= 6);
    for p in profiles {
        assert_ne!(p["grants"]["user"], "root", "{}", p["file"]);
    }
    // The neighbour: the same example profile as root is a high finding, and its native
    // root_files claim is not enforced.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.yml");
    let example = std::fs::read_to_string(format!("{REPO}/profiles/examples/artifact-only.yml"))
        .expect("example");
    std::fs::write(&root, example.replace("user: vcap", "user: root")).expect("write");
    let out = review(&["--format", "json", &root.display().to_string()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let p = &json["profiles"][0];
    let bbr002 = p["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["id"] == "BBR002")
        .unwrap_or_else(|| panic!("no BBR002: {p}"));
    assert_eq!(bbr002["severity"], "high", "{bbr002}");
    assert!(
        bbr002["message"]
            .as_str()
            .is_some_and(|m| m.contains("chmod")),
        "{bbr002}"
    );
    let native = p["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["backend"] == "native")
        .expect("native");
    let claim = native["claims"]
        .as_array()
        .expect("claims")
        .iter()
        .find(|c| c["id"] == "root_files")
        .expect("root_files");
    assert_eq!(claim["status"], "not_enforced", "{claim}");
}

#[test]
fn threshold_and_policy() {
    // The lock's native exposure is 0.2 (bpm not listed): above 0.1, below 9.9.
    let out = review(&["--threshold", "0.1", "profiles/acme-api/lock.yml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains("is above the threshold 0.1"),
        "{}",
        text(&out)
    );
    let out = review(&["--threshold", "9.9", "profiles/acme-api/lock.yml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A policy that weighs `user` at zero lowers a root-running profile's score.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.yml");
    let example = std::fs::read_to_string(format!("{REPO}/profiles/examples/artifact-only.yml"))
        .expect("example");
    std::fs::write(&root, example.replace("user: vcap", "user: root")).expect("write");
    let root = root.display().to_string();
    let score = |args: &[&str]| -> f64 {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        a.push(&root);
        let out = review(&a);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        json["profiles"][0]["backends"][0]["score"]
            .as_f64()
            .expect("score")
    };
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"checks": {"user": {"weight": 0, "range": 10}}}"#,
    )
    .expect("policy");
    assert!(score(&["--policy", &policy.display().to_string()]) < score(&[]));
    std::fs::write(
        &policy,
        r#"{"checks": {"nope": {"weight": 1, "range": 1}}}"#,
    )
    .expect("policy");
    let out = review(&[
        "--policy",
        &policy.display().to_string(),
        "profiles/acme-api/lock.yml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("checks.nope: unknown check"),
        "{}",
        text(&out)
    );
}
