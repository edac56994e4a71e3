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
    let text = std::fs::read_to_string(file).expect("read corpus file");
    let first = text.lines().next().unwrap_or_default();
    let expect = first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{} must start with `# expect: `", file.display()));
    expect.replace("{file}", &file.display().to_string())
}

#[test]
fn every_bad_profile_is_rejected_with_its_exact_message_and_exit_2() {
    let files = corpus();
    assert!(files.len() >= 15, "the corpus shrank: {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let path = file.display().to_string();
        let out = run_runner(&["check", &path], &[]);
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
