#!/usr/bin/env python3
"""Mutation check of the security tests: each sandbox layer removed in turn, the security
suites run against the mutant, and what failed written down.

A layer whose removal no test notices is a test gap: the script exits 1 when any mutant
survives. Not part of tests/run.sh (one build and suite run per mutant, about 2 minutes each);
run it by hand as root after changing a layer or a security test:

    python3 tests/mutants.py                 # every mutant, table to stdout
    python3 tests/mutants.py --only seccomp  # one mutant
    python3 tests/mutants.py --markdown docs/mutations.md

It works in a detached git worktree of HEAD (uncommitted changes are not included) and its own
target directory (BBR_MUTANTS_TARGET, default /var/tmp/bbr-runner-mutants/target).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ["escape", "seccomp", "netns", "cli", "limits"]

# (name, what is removed, file, exact text, replacement, Landlock ABI caps to run at)
# The ABI cap matters where two layers cover one claim: the filesystem view and Landlock both
# confine paths, so removing the view shows only where Landlock is absent (cap 0).
MUTANTS = [
    ("view", "the filesystem view (tmpfs root, binds, pivot_root)",
     "runner/src/sandbox/mod.rs", "    view::apply(plan, sys)?;\n", "", ["0"]),
    ("noexec", "noexec on grants not executed",
     "runner/src/sandbox/view.rs", "no_exec: !entry.exec,", "no_exec: false,", ["0", "7"]),
    ("proc-readonly", "the read-only /proc (unless /proc is written)",
     "runner/src/sandbox/view.rs", "sys.mount_proc(Path::new(\"/proc\"), !view.proc_writable)",
     "sys.mount_proc(Path::new(\"/proc\"), false)", ["0", "7"]),
    ("landlock", "Landlock",
     "runner/src/sandbox/mod.rs", "if let Some(ll) = &plan.landlock {",
     "if let Some(ll) = plan.landlock.as_ref().filter(|_| false) {", ["7"]),
    ("pid-namespace", "the pid namespace (and its init)",
     "runner/src/plan.rs", "(self.pid, libc::CLONE_NEWPID)",
     "(false && self.pid, libc::CLONE_NEWPID)", ["7"]),
    ("ipc-namespace", "the ipc namespace",
     "runner/src/plan.rs", "(self.ipc, libc::CLONE_NEWIPC)",
     "(false && self.ipc, libc::CLONE_NEWIPC)", ["7"]),
    ("net-namespace", "the network namespace (made by the supervisor's thread, never entered)",
     "runner/src/sandbox/mod.rs",
     "            Some(fd) => sys\n                .enter_net_namespace(fd)\n",
     "            Some(_) => Ok::<(), std::io::Error>(())\n", ["7"]),
    ("seccomp", "the seccomp filter",
     "runner/src/sandbox/mod.rs", "if let Some(program) = &plan.seccomp {",
     "if let Some(program) = plan.seccomp.as_ref().filter(|_| false) {", ["7"]),
    ("identity", "the identity drop (uid, gid, groups)",
     "runner/src/sandbox/mod.rs", "    identity::apply(plan, sys)?;\n", "", ["7"]),
    ("capabilities", "the capability drop",
     "runner/src/sandbox/mod.rs", "    capabilities::apply(plan, sys)?;\n", "", ["7"]),
    ("session", "the new session (setsid, session keyring)",
     "runner/src/sandbox/mod.rs", "    session::apply(sys)?;\n", "", ["7"]),
    ("signals", "the action's clean signal state (dispositions default, none blocked)",
     "runner/src/sandbox/session.rs",
     "    sys.default_signals()\n"
     "        .map_err(|e| step(\"resetting signal dispositions\", e))?;\n",
     "", ["7"]),
    ("descriptors", "closing inherited descriptors",
     "runner/src/sandbox/mod.rs",
     "    sys.close_fds_above_stderr(&plan.keep_fds)\n"
     "        .map_err(|e| SandboxError::step(Step::Descriptors, \"close_range\", e))?;\n",
     "", ["7"]),
    ("environment", "clearing the environment",
     "runner/src/plan.rs",
     "    let mut env: BTreeMap<String, String> = BTreeMap::new();\n",
     "    let mut env: BTreeMap<String, String> = req.caller_env.clone();\n", ["7"]),
    ("limits", "the per-action cgroup (made, but the sandbox never joins it)",
     "runner/src/sandbox/cgroup.rs",
     "                sys.join_cgroup(fd)\n",
     "                Ok::<(), std::io::Error>(())\n", ["7"]),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def worktree(path):
    if os.path.exists(path):
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path],
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(path, ignore_errors=True)
    run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, "HEAD"])


def failed_tests(tree, target, cap):
    env = dict(os.environ, CARGO_TARGET_DIR=target, BBR_RUNNER_LANDLOCK_ABI_MAX=cap)
    args = ["cargo", "test", "--locked", "--no-fail-fast", "-p", "bbr-runner"]
    for s in SUITES:
        args += ["--test", s]
    # Output to a file, not a pipe: a process a mutant lets outlive its test would hold a pipe
    # open and stall this script (the session mutant left a probe listening).
    with tempfile.TemporaryFile(mode="w+") as log:
        out = subprocess.run(args, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                             timeout=3600)
        log.seek(0)
        text = log.read()
    if "error[E" in text or "could not compile" in text:
        sys.exit(f"the mutant does not build:\n{text[-3000:]}")
    failed = sorted(set(re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)))
    ran = len(re.findall(r"^test \S+ \.\.\. (?:ok|FAILED)", text, re.M))
    if ran == 0:
        sys.exit(f"no test ran against the mutant:\n{text[-3000:]}")
    if out.returncode != 0 and not failed:
        sys.exit(f"the suites failed without a failing test:\n{text[-3000:]}")
    return failed, out.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run one mutant by name")
    ap.add_argument("--markdown", help="also write the table to this file")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the security suites run as root: sudo python3 tests/mutants.py")
    chosen = [m for m in MUTANTS if a.only in (None, m[0])]
    if not chosen:
        sys.exit(f"no mutant named {a.only}: {', '.join(m[0] for m in MUTANTS)}")
    base = os.environ.get("BBR_MUTANTS_TARGET", "/var/tmp/bbr-runner-mutants")
    tree, target = os.path.join(base, "tree"), os.path.join(base, "target")
    os.makedirs(base, exist_ok=True)
    worktree(tree)
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    rows, survivors = [], []
    # The unmutated tree first, at each cap used: a test failing there proves nothing about a
    # mutant (under a cap some tests fail by design: `kernel` then reports the capped ABI).
    baseline = {}
    for cap in sorted({c for m in chosen for c in m[5]}):
        print(f"baseline (no mutant, ABI cap {cap}): building and running...", file=sys.stderr,
              flush=True)
        baseline[cap], _ = failed_tests(tree, target, cap)
        if cap == "7" and baseline[cap]:
            sys.exit(f"the suites fail without any mutant: {', '.join(baseline[cap])}; fix them first")
        if baseline[cap]:
            print(f"  failing without a mutant at cap {cap} (not counted): "
                  f"{', '.join(baseline[cap])}", file=sys.stderr, flush=True)
    try:
        for name, what, path, old, new, caps in chosen:
            run(["git", "-C", tree, "checkout", "-q", "--", "."])
            file = os.path.join(tree, path)
            src = open(file).read()
            if src.count(old) != 1:
                sys.exit(f"{name}: the text to mutate is not found exactly once in {path}; "
                         "update MUTANTS in tests/mutants.py")
            open(file, "w").write(src.replace(old, new))
            for cap in caps:
                print(f"mutant {name} (ABI cap {cap}): building and running "
                      f"{', '.join(SUITES)}...", file=sys.stderr, flush=True)
                failed, code = failed_tests(tree, target, cap)
                failed = [t for t in failed if t not in baseline[cap]]
                print(f"  {len(failed)} failed", file=sys.stderr, flush=True)
                rows.append((name, what, cap, failed))
                if not failed:
                    survivors.append(f"{name} at cap {cap} (exit {code})")
    finally:
        run(["git", "-C", tree, "checkout", "-q", "--", "."])
    lines = [f"Mutation check at {head}: `python3 tests/mutants.py` (suites: "
             f"{', '.join(SUITES)}).", "",
             "| mutant: removed | ABI cap | tests that failed |", "|---|---|---|"]
    for name, what, cap, failed in rows:
        shown = ", ".join(f"`{t}`" for t in failed) if failed else "**none: the mutant survived**"
        lines.append(f"| `{name}`: {what} | {cap} | {len(failed)}: {shown} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table)
    if survivors:
        print("survived: " + "; ".join(survivors), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
