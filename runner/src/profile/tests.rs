use super::*;

fn vars() -> Vars {
    Vars::from_env_and_args(
        Vec::new(),
        &["BBR_ARTIFACT_DIRECTORY=/store/bbr-backup/db/".into()],
    )
    .expect("valid vars")
}

fn parse_str(text: &str) -> Result<Profile, ProfileError> {
    parse(Path::new("p.yml"), text.as_bytes(), &vars())
}

fn err(text: &str) -> String {
    parse_str(text).expect_err("must be rejected").to_string()
}

const MINIMAL: &str = "version: 1\nabi: 7\n";

#[test]
fn minimal_profile_has_safe_defaults() {
    let p = parse_str(MINIMAL).expect("valid");
    assert_eq!(p.user, "vcap");
    assert_eq!(p.enforcement, Enforcement::Strict);
    assert_eq!(p.backends, vec![Backend::Bpm, Backend::Native]);
    assert!(p.grants.is_empty() && p.connect_tcp.is_empty() && p.capabilities.is_empty());
    assert!(p.scope_abstract_unix_socket && p.scope_signal);
    assert_eq!(p.limits.core_file_size_bytes, Some(0));
    assert_eq!(p.timeout, None);
}

#[test]
fn artifact_directory_is_expanded_and_normalized() {
    let p =
        parse_str("version: 1\nabi: 7\nfilesystem:\n  write: [\"${BBR_ARTIFACT_DIRECTORY}\"]\n")
            .expect("valid");
    let w: Vec<_> = p.grants(Access::Write).map(|g| g.path.clone()).collect();
    assert_eq!(w, vec![PathBuf::from("/store/bbr-backup/db")]);
}

#[test]
fn unknown_key_names_file_line_column_and_key() {
    assert_eq!(
        err("version: 1\nabi: 7\nfilesystem:\n  wrte: [/x]\n"),
        "p.yml:4:3: wrte: unknown field `wrte`, expected one of `read`, `execute`, `write`"
            .replace("`read`, `execute`, `write`", "read, execute, write")
    );
}

#[test]
fn duplicate_key_is_an_error() {
    assert_eq!(
        err("version: 1\nabi: 7\nabi: 7\n"),
        "p.yml:3:1: abi: duplicate mapping key: abi"
    );
}

#[test]
fn relative_and_dotdot_paths_are_errors() {
    assert_eq!(
        err("version: 1\nabi: 7\nfilesystem:\n  read: [etc/x]\n"),
        "p.yml:4:10: filesystem.read[0]: path `etc/x` is relative; profile paths must be absolute"
    );
    assert!(
        err("version: 1\nabi: 7\nfilesystem:\n  read: [/a/../etc]\n")
            .contains("filesystem.read[0]: path `/a/../etc` has a `.` or `..` component")
    );
}

#[test]
fn unknown_abi_port_and_capability_are_errors() {
    assert!(
        err("version: 1\nabi: 11\n").starts_with("p.yml:2:6: abi: Landlock ABI 11 is not known")
    );
    assert_eq!(
        err("version: 1\nabi: 7\nnetwork:\n  connect_tcp: [5432, 70000]\n"),
        "p.yml:4:23: network.connect_tcp[1]: port 70000 is outside 1-65535"
    );
    assert!(err("version: 1\nabi: 7\nnetwork:\n  bind_tcp: [0]\n").contains("port 0 is outside"));
    assert!(err("version: 1\nabi: 7\ncapabilities: [CAP_FLY]\n")
        .starts_with("p.yml:3:16: capabilities[0]: `CAP_FLY` is not a capability name"));
}

#[test]
fn undefined_variable_is_an_error_at_its_position() {
    assert_eq!(
        err("version: 1\nabi: 7\nfilesystem:\n  write:\n    - ${NOPE}/x\n"),
        "p.yml:5:7: filesystem.write[0]: variable `${NOPE}` is not defined: pass --var NOPE=VALUE"
    );
}

#[test]
fn write_to_root_through_a_variable_is_refused() {
    let v = Vars::from_env_and_args(Vec::new(), &["D=/".into()]).expect("valid");
    let e = parse(
        Path::new("p.yml"),
        b"version: 1\nabi: 7\nfilesystem:\n  write: [\"${D}\"]\n",
        &v,
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains("write access to `/`"), "{e}");
}

#[test]
fn named_sets_expand_and_unknown_sets_are_errors() {
    let p = parse_str(
        "version: 1\nabi: 7\nsets:\n  tools: [/opt/tools]\nfilesystem:\n  execute: ['@system-bin', '@tools']\n",
    )
    .expect("valid");
    let exec: Vec<_> = p
        .grants(Access::Execute)
        .map(|g| g.path.display().to_string())
        .collect();
    assert!(exec.contains(&"/usr/bin".to_string()) && exec.contains(&"/opt/tools".to_string()));
    assert!(
        err("version: 1\nabi: 7\nfilesystem:\n  read: ['@nope']\n").contains("unknown set `@nope`")
    );
    assert!(err("version: 1\nabi: 7\nsets:\n  proc: [/x]\n").contains("built-in set"));
}

#[test]
fn tcp_rules_and_scopes_need_an_abi_that_has_them() {
    assert!(
        err("version: 1\nabi: 3\nnetwork:\n  connect_tcp: [80]\n").contains("need Landlock ABI 4")
    );
    assert!(err("version: 1\nabi: 5\nscopes:\n  signal: true\n").contains("needs Landlock ABI 6"));
    let p = parse_str("version: 1\nabi: 5\n").expect("valid");
    assert!(!p.scope_signal, "no scoping by default below ABI 6");
}

#[test]
fn wrong_types_empty_and_invalid_utf8_are_errors() {
    assert!(err("version: 1\nabi: seven\n").starts_with("p.yml:2:6: abi:"));
    assert!(err("  \n").contains("the profile is empty"));
    let e = parse(Path::new("p.yml"), b"version: 1\nabi: \xff\n", &vars()).expect_err("rejected");
    assert_eq!(
        e.to_string(),
        "p.yml:2:6: (document): the profile is not valid UTF-8"
    );
}

#[test]
fn entries_whose_variables_expand_to_nothing_are_left_out() {
    let v = Vars::from_env_and_args(
        Vec::new(),
        &["SOCK=".into(), "PORT=".into(), "DB=5432".into()],
    )
    .expect("vars");
    let p = parse(
        Path::new("p.yml"),
        b"version: 1\nabi: 7\nsockets: ['${SOCK}']\nnetwork:\n  connect_tcp: ['${PORT}', '${DB}']\nfilesystem:\n  read: ['${SOCK}']\n",
        &v,
    )
    .expect("valid");
    assert!(p.sockets.is_empty() && p.grants.is_empty());
    assert_eq!(p.connect_tcp, vec![5432]);
    assert!(err("version: 1\nabi: 7\nnetwork:\n  connect_tcp: [http]\n")
        .contains("`http` is not a port number"));
    assert!(err("version: 1\nabi: 7\nfilesystem:\n  read: ['']\n").contains("is relative"));
}

/// Every shipped profile, with the variables its job renders (PostgreSQL over TCP, and over a
/// socket), written back by `to_yaml` and parsed again, is the same profile: the serialiser
/// loses nothing and adds nothing. A profile of every field's non-default value too.
#[test]
fn to_yaml_reads_back_as_the_same_profile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut files = Vec::new();
    for dir in ["acme-api", "bbr-acme-db", "examples"] {
        for e in std::fs::read_dir(root.join(dir)).expect("profiles dir") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "yml") && !path.ends_with("actions.yml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    let tcp = [
        "BBR_ARTIFACT_DIRECTORY=/var/vcap/store/bbr-backup/acme/",
        "JOB_TMP_DIR=/var/vcap/data/bbr-acme-db/tmp",
        "JOB_CONFIG_DIR=/var/vcap/jobs/bbr-acme-db/config",
        "BBR_RUNNER_DIR=/var/vcap/packages/bbr-runner/bin",
        "API_PORT=8080",
        "API_RUN_DIR=/var/vcap/sys/run/acme-api",
        "MONIT_CONTROL_FILE=/var/vcap/bosh/etc/monitrc",
        "DB_HOST=127.0.0.1",
        "DB_PORT=5432",
        "DB_SOCKET=",
        "SQLITE_DIR=",
        "DB_CLIENTS_DIR=",
        "BOSH_ROOT=/var/vcap",
    ];
    let mut socket = tcp;
    socket[7] = "DB_HOST=";
    socket[8] = "DB_PORT=";
    socket[9] = "DB_SOCKET=/var/vcap/sys/run/acme-db/.s.PGSQL.5432";
    let mut checked = 0;
    for vars in [&tcp, &socket] {
        let vars = Vars::from_env_and_args(
            Vec::new(),
            &vars.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        )
        .expect("vars");
        for f in &files {
            let bytes = std::fs::read(f).expect("read");
            let p = match parse(f, &bytes, &vars) {
                Ok(p) => p,
                Err(e) => panic!("{}: {e}", f.display()),
            };
            same_after_writing(&p, &vars);
            checked += 1;
        }
    }
    assert_eq!(checked, files.len() * 2);
    let every_field = "version: 1
description: every field set
abi: 7
enforcement: best_effort
backends: [native]
user: nobody
group: nogroup
supplementary_groups: [vcap]
sets:
  mine: [/usr/lib, /nonexistent/optional]
filesystem:
  read: ['@mine', /etc/hosts, '@name-service']
  execute: ['@system-bin', '@mine']
  write: ['${BBR_ARTIFACT_DIRECTORY}', '/tmp/with \"quote\" and: colon']
sockets: [/run/x.sock]
network:
  connect_tcp: ['db.internal:5432', '[::1]:6432', 7000]
  bind_tcp: ['127.0.0.1:8080', 9000]
scopes:
  abstract_unix_socket: false
  signal: true
capabilities: [CAP_NET_BIND_SERVICE, CAP_CHOWN]
limits:
  open_files: 64
  processes: 32
  memory: 512M
  file_size: 3G
  core_file_size: 4K
  cpu_seconds: 30
environment:
  pass: [LANG]
  set: {PGCONNECT_TIMEOUT: '10', ODD: 'a: b # c'}
timeout: 2h
kill_grace: 90s
";
    let p = parse_str(every_field).expect("valid");
    same_after_writing(&p, &vars());
}

fn same_after_writing(p: &Profile, vars: &Vars) {
    let written = to_yaml(p);
    let again = match parse(&p.source, written.as_bytes(), vars) {
        Ok(a) => a,
        Err(e) => panic!(
            "{}: written back:\n{written}\ndoes not parse: {e}",
            p.source.display()
        ),
    };
    let norm = |p: &Profile| {
        let mut p = p.clone();
        for g in &mut p.grants {
            g.written = String::new();
            g.position = Position {
                file: PathBuf::new(),
                line: 0,
                column: 0,
            };
        }
        p.key_lines.clear();
        p
    };
    assert_eq!(norm(&again), norm(p), "{}:\n{written}", p.source.display());
}
