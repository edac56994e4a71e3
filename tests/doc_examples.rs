//! The documentation's examples hold: every `bbr-runner` command in a `sh` block of the README,
//! ARCHITECTURE.md and docs/ is checked against the runner as built.
//!
//! - `exec --profile P --var ... -- CMD`: `bbr-runner check P` with the same variables (and with
//!   `--db-config`, the DB_* variables it would supply): the profile exists and every variable
//!   it needs is given. Running them for real needs a BOSH VM's paths or a database; the README's
//!   first example runs for real below.
//! - `review` and `kernel`: run as written (profile paths under /var/vcap/packages/bbr-runner/
//!   are the repository's `profiles/`), exit 0.
//! - `demo`: run by tests/run.sh at every ABI; `acme-api serve`: by tests/acme_api.rs; a line
//!   with `[...]` placeholders is a synopsis. Any other `bbr-runner` command fails this test
//!   until it is checked here.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The documents whose examples are checked.
fn documents() -> Vec<PathBuf> {
    let mut out = vec![
        repo().join("README.md"),
        repo().join("ARCHITECTURE.md"),
        repo().join("src/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// One command of a `sh` block: its document and line, and its words.
struct Example {
    at: String,
    words: Vec<String>,
}

/// The commands of every `sh` block, continuation lines joined, comments dropped.
fn examples(doc: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(doc).expect("read doc");
    let name = doc
        .strip_prefix(repo())
        .unwrap_or(doc)
        .display()
        .to_string();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = strip_comment(line);
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        match code.trim_end().strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(code);
                if !joined.trim().is_empty() {
                    out.push(Example {
                        at: format!("{name}:{start}"),
                        words: words(&joined),
                    });
                }
            }
        }
    }
    out
}

/// The line without a trailing `# comment` (a `#` after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// Words as a shell splits them (quotes removed; nothing expanded).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            _ => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    out
}

/// `NAME=VALUE` pairs of an environment.
type Env = Vec<(String, String)>;

/// The runner's arguments when `words` runs bbr-runner (after any `NAME=VALUE` environment), with
/// that environment.
fn runner_call(words: &[String]) -> Option<(Env, Vec<String>)> {
    let mut env = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if let Some((k, v)) = w
            .split_once('=')
            .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        {
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        return (w == "bbr-runner" || w.ends_with("/bbr-runner"))
            .then(|| (env, words[i + 1..].to_vec()));
    }
    None
}

/// A path in an example, as it is in this repository.
fn in_repo(path: &str) -> String {
    let path = path
        .strip_prefix("/var/vcap/packages/bbr-runner/")
        .unwrap_or(path);
    if path.starts_with('/') {
        path.to_string()
    } else {
        repo().join(path).display().to_string()
    }
}

/// What the example's shell variables stand for (an absolute directory).
fn expanded(word: &str) -> String {
    word.replace("$D", "/tmp/bbr-doc-example")
}

fn runner(args: &[String], env: &[(String, String)]) -> std::process::Output {
    Command::new(support::runner())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(repo())
        .output()
        .expect("bbr-runner")
}

/// `exec`'s profile and variables, checked with `bbr-runner check`.
fn check_exec(at: &str, env: &[(String, String)], args: &[String]) -> Result<(), String> {
    let mut check = vec!["check".to_string()];
    let mut given = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => break,
            "--profile" => check.push(in_repo(it.next().ok_or("no profile")?)),
            "--var" => {
                let v = expanded(it.next().ok_or("--var without a value")?);
                given.push(v.split('=').next().unwrap_or("").to_string());
                check.extend(["--var".to_string(), v]);
            }
            // What `exec --db-config` supplies from the job's config.
            "--db-config" => {
                it.next();
                for name in ["DB_SOCKET", "DB_HOST", "DB_PORT", "SQLITE_DIR"] {
                    given.push(name.into());
                    check.extend(["--var".to_string(), format!("{name}=")]);
                }
            }
            other => return Err(format!("{at}: exec option `{other}` is not checked here")),
        }
    }
    let out = runner(&check, env);
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{at}: the example's profile and variables do not check ({}): {}",
        check.join(" "),
        support::text(&out)
    ))
}

#[test]
fn every_runner_example_in_the_docs_checks_or_runs() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in documents() {
        for ex in examples(&doc) {
            let Some((env, args)) = runner_call(&ex.words) else {
                continue;
            };
            let verb = args.first().map(String::as_str).unwrap_or("");
            let result = if ex.words.iter().any(|w| w.starts_with('[')) {
                Ok(()) // a synopsis
            } else {
                match verb {
                    "exec" => check_exec(&ex.at, &env, &args),
                    "review" | "kernel" => {
                        let args: Vec<String> =
                            args.iter().map(|a| in_repo_if_profile(a)).collect();
                        let out = runner(&args, &env);
                        if out.status.success() {
                            Ok(())
                        } else {
                            Err(format!(
                                "{}: `{}` failed: {}",
                                ex.at,
                                args.join(" "),
                                support::text(&out)
                            ))
                        }
                    }
                    "demo" | "acme-api" => Ok(()), // tests/run.sh, tests/acme_api.rs
                    other => Err(format!(
                        "{}: `bbr-runner {other}` is not checked by tests/doc_examples.rs: add it",
                        ex.at
                    )),
                }
            };
            checked += 1;
            if let Err(e) = result {
                failures.push(e);
            }
        }
    }
    assert!(
        checked >= 8,
        "only {checked} examples found: is the parser broken?"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The README's first example, run as written: the write to the artifact directory succeeds,
/// the one to /etc fails (exit 2, read-only file system), and nothing reaches /etc.
#[test]
fn the_readmes_first_example_does_what_it_says() {
    support::require_root();
    support::vcap();
    let readme = repo().join("README.md");
    let ex = examples(&readme)
        .into_iter()
        .find(|e| {
            runner_call(&e.words).is_some_and(|(_, a)| a.first().is_some_and(|v| v == "exec"))
        })
        .expect("the README's exec example");
    let (env, args) = runner_call(&ex.words).expect("runner call");
    let dir = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::chown(dir.path(), Some(support::vcap().0), None).expect("chown");
    let d = dir.path().display().to_string();
    let escape = Path::new("/etc/escape");
    assert!(
        !escape.exists(),
        "/etc/escape exists before the example runs"
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| in_repo_if_profile(&a.replace("$D", &d)))
        .collect();
    let out = runner(&args, &env);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}: {}",
        ex.at,
        support::text(&out)
    );
    assert!(
        support::text(&out).contains("Read-only file system"),
        "{}",
        support::text(&out)
    );
    assert!(
        dir.path().join("ok").exists(),
        "the artifact directory was written"
    );
    assert!(!escape.exists(), "the example reached /etc");
}

fn in_repo_if_profile(a: &str) -> String {
    if a.ends_with(".yml") {
        in_repo(a)
    } else {
        a.to_string()
    }
}
