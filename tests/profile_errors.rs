//! The bad-profile corpus: every file in `tests/corpus/profiles/` is rejected by
//! `bbr-runner check` with exit 2 and exactly the message on its first line (`# expect: ...`,
//! `{file}` standing for its path), and `exec` with it runs nothing.

mod support;

use std::path::{Path, PathBuf};

use support::*;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/profiles");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    files
}

fn expected(file: &Path) -> String {
    let bytes = std::fs::read(file).expect("read corpus file");
    let text = String::from_utf8_lossy(&bytes);
    let first = text.lines().next().unwrap_or_default();
    let expect = first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{} must start with `# expect: `", file.display()));
    expect.replace("{file}", &file.display().to_string())
}

/// `# vars: NAME=VALUE ...` on the second line: the `--var`s the case needs.
fn vars_of(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).expect("read corpus file");
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# vars: "))
        .map(|v| {
            v.split_whitespace()
                .flat_map(|a| ["--var".to_string(), a.to_string()])
                .collect()
        })
        .unwrap_or_default()
}

fn corpus_dir(kind: &str, ext: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let expect = std::fs::read_to_string(f.with_extension("expect"))
                .unwrap_or_else(|_| panic!("{} needs a .expect file", f.display()));
            let expect = expect
                .trim_end()
                .replace("{file}", &f.display().to_string());
            (f, expect)
        })
        .collect()
}

#[test]
fn every_bad_profile_is_rejected_with_its_exact_message_and_exit_2() {
    let files = corpus();
    assert!(files.len() >= 15, "the corpus shrank: {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let path = file.display().to_string();
        let mut args = vec!["check".to_string()];
        args.extend(vars_of(file));
        args.push(path.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_runner(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("bbr-runner: {}\n", expected(file));
        if out.status.code() != Some(2) || stderr != want {
            failures.push(format!(
                "{path}\n  want: {want}  got:  {stderr}  exit {:?}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn exec_with_a_bad_profile_runs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    for file in corpus() {
        let out = run_runner(
            &[
                "exec",
                "--profile",
                &file.display().to_string(),
                "--",
                "/usr/bin/touch",
                &marker.display().to_string(),
            ],
            &[],
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}\n{}",
            file.display(),
            text(&out)
        );
        assert!(!marker.exists(), "{} ran the command", file.display());
    }
}

#[test]
fn every_bad_database_config_is_rejected_with_its_message_and_nothing_is_written() {
    let cases = corpus_dir("db-configs", "json");
    assert!(cases.len() >= 15, "{}", cases.len());
    let mut failures = Vec::new();
    for (file, expect) in &cases {
        let art = tempfile::tempdir().expect("tempdir");
        let out = run_runner(
            &[
                "acme-db",
                "backup",
                "--config",
                &file.display().to_string(),
                "--artifact-dir",
                &art.path().display().to_string(),
            ],
            &[],
        );
        let want = format!("acme-db backup failed: {expect}\n");
        if out.status.code() != Some(2) || String::from_utf8_lossy(&out.stderr) != want {
            failures.push(format!(
                "{}\n  want: {want}  got:  {}  exit {:?}",
                file.display(),
                String::from_utf8_lossy(&out.stderr),
                out.status.code()
            ));
        }
        assert_eq!(
            std::fs::read_dir(art.path()).expect("dir").count(),
            0,
            "{}: nothing written",
            file.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_bad_lock_config_is_rejected_with_its_message() {
    let cases = corpus_dir("lock-configs", "json");
    assert!(cases.len() >= 3);
    for (file, expect) in &cases {
        let out = run_runner(
            &["acme-api", "lock", "--config", &file.display().to_string()],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("acme-api: invalid lock config: {expect}\n"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn every_bad_job_config_is_rejected_with_its_message_and_nothing_runs() {
    let cases = corpus_dir("job-configs", "yml");
    assert!(cases.len() >= 5);
    for (file, expect) in &cases {
        let root = tempfile::tempdir().expect("tempdir");
        let cfg = root.path().join("jobs/demo/config");
        std::fs::create_dir_all(&cfg).expect("mkdir");
        let target = cfg.join("bbr-runner.yml");
        std::fs::copy(file, &target).expect("copy");
        let out = run_runner(
            &[
                "run",
                "--root",
                &root.path().display().to_string(),
                "demo",
                "backup",
            ],
            &[],
        );
        let want = format!(
            "bbr-runner: demo backup: {}\n",
            expect.replace(&file.display().to_string(), &target.display().to_string())
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            file.display(),
            text(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            want,
            "{}",
            file.display()
        );
        // Nothing was written: the root holds only the config the test put there (no lock
        // directory, no tmp dir, no artifact).
        let mut left = Vec::new();
        let mut dirs = vec![root.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read").flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                } else {
                    left.push(e.path());
                }
            }
        }
        assert_eq!(left, std::slice::from_ref(&target), "{}", file.display());
        assert_eq!(
            std::fs::read_dir(root.path()).expect("read").count(),
            1,
            "only jobs/ is there"
        );
    }
}

#[test]
fn generated_bad_inputs_huge_files_and_symlinked_write_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A profile over 256 KiB.
    let huge = dir.path().join("huge.yml");
    std::fs::write(
        &huge,
        format!(
            "version: 1\nabi: 7\ndescription: \"{}\"\n",
            "x".repeat(300_000)
        ),
    )
    .expect("write");
    let out = run_runner(&["check", &huge.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), format!("bbr-runner: {}: the profile is 300034 bytes; profiles larger than 262144 bytes are refused\n", huge.display()));
    // A database config over 1 MiB.
    let big = dir.path().join("big.json");
    std::fs::write(
        &big,
        format!(
            "{{\"adapter\":\"sqlite\",\"x\":\"{}\"}}",
            "x".repeat(1_100_000)
        ),
    )
    .expect("write");
    let out = run_runner(
        &[
            "acme-db",
            "backup",
            "--config",
            &big.display().to_string(),
            "--artifact-dir",
            &dir.path().display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("configs larger than 1048576 bytes are refused"),
        "{}",
        text(&out)
    );
    // A write grant through a symlink.
    std::os::unix::fs::symlink("/etc", dir.path().join("art")).expect("symlink");
    let p = dir.path().join("link.yml");
    std::fs::write(
        &p,
        "version: 1\nabi: 7\nfilesystem:\n  write:\n    - ${D}/art\n",
    )
    .expect("write");
    let var = format!("D={}", dir.path().display());
    let out = run_runner(&["check", "--var", &var, &p.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("bbr-runner: {}:5:7: filesystem.write: write grant `{}/art` goes through a symlink to `/etc`; write the real path\n", p.display(), dir.path().display())
    );
}

#[test]
fn the_corpus_has_at_least_forty_bad_inputs() {
    let n = corpus().len()
        + corpus_dir("db-configs", "json").len()
        + corpus_dir("lock-configs", "json").len()
        + corpus_dir("job-configs", "yml").len()
        // generated_bad_inputs_huge_files_and_symlinked_write_paths: a huge profile, a huge
        // database config, a write grant through a symlink.
        + 3;
    assert!(n >= 40, "{n}");
}
