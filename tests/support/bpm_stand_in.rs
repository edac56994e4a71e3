//! STAND-INS for bpm and runc (not bpm, not runc): shell scripts that play what a bpm built
//! from cloudfoundry/bpm-release and Debian's runc and tini did when checked by hand
//! (docs/running.md), for the tests of the bpm backend (`tests/bpm.rs`) and of the rendered jobs
//! with bpm enabled (`tests/e2e.rs`). `__ROOT__` and `__RUNNER__` are replaced on install.

use std::path::Path;

use super::write;

pub const STAND_IN_BPM: &str = r#"#!/bin/bash
# STAND-IN for bpm (not bpm): records how it was called, then plays the mode in $ROOT/stand-in-mode.
ROOT=__ROOT__
{ printf 'ARGV'; printf ' %s' "$@"; echo; echo 'ENV'; env | sort; echo 'END'; } >> "$ROOT/bpm-calls.log"
mode=$(cat "$ROOT/stand-in-mode" 2>/dev/null || echo inner)
# The container's process for JOB PROC: bpm's own variables (TMPDIR, LANG, PATH, HOME, at the
# stand-in's root instead of /var/vcap) and the -e environment ($envs), the args from the job's
# bpm.yml.
launch() {
  local job=$1 proc=$2
  local inner=(env -i TMPDIR="$ROOT/data/$job/tmp" LANG=en_US.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$ROOT/data/$job" "${envs[@]}")
  # The process's `unsafe.privileged` in the job's config/bpm.yml, as bpm reads it.
  local privileged
  privileged=$(awk -v p="$proc" '/^- name: /{cur=$3} cur==p && /^    privileged: true$/{print "yes"}' "$ROOT/jobs/$job/config/bpm.yml")
  if [ "$privileged" = yes ]; then
    # Privileged, as real bpm: root with every capability and no seccomp filter, in bpm's
    # mount, pid, ipc and uts namespaces, under tini as the container's pid 1 (bpm runs
    # `tini -w -s -- EXECUTABLE ARGS`); runc passes signals on to tini, tini to the runner.
    exec unshare --mount --propagation private --pid --ipc --uts -- "$ROOT/jobs/bpm/bin/runc" tini -w -s -- "${inner[@]}" __RUNNER__ run --root "$ROOT" "$job" "$proc" --inside-bpm
  else
    # Default container: vcap with no capability. Real bpm's seccomp filter answers
    # landlock_* with ENOSYS (checked by hand); the stand-in has no filter and plays that with
    # the runner's Landlock cap at 0 (a STAND-IN for the filter).
    exec "$ROOT/jobs/bpm/bin/runc" setpriv --reuid=vcap --regid=vcap --clear-groups -- "${inner[@]}" BBR_RUNNER_LANDLOCK_ABI_MAX=0 __RUNNER__ run --root "$ROOT" "$job" "$proc" --inside-bpm
  fi
}
# As a real bpm did on every run (checked by hand): the job's run and log directories and its
# tmp dir made if missing (0700; the log dir 0750), then given to vcap, an existing one keeping
# its mode; data/JOB itself untouched (bpm's ephemeral_disk is off).
job_dirs() {
  for d in "$ROOT/sys/run/$1" "$ROOT/sys/log/$1" "$ROOT/data/$1/tmp"; do
    if [ ! -d "$d" ]; then
      mkdir -p "$d"; case "$d" in */sys/log/*) chmod 0750 "$d" ;; *) chmod 0700 "$d" ;; esac
    fi
    chown vcap:vcap "$d"
  done
}
# `persistent_disk: true` for the process in the job's bpm.yml: bpm makes the job's store and
# gives it to vcap, as it mounts it into the container.
store_dir() {
  local disk
  disk=$(awk -v p="$2" '/^- name: /{cur=$3} cur==p && /^  persistent_disk: true$/{print "yes"}' "$ROOT/jobs/$1/config/bpm.yml" 2>/dev/null)
  if [ "$disk" = yes ]; then mkdir -p "$ROOT/store/$1"; chown vcap:vcap "$ROOT/store/$1"; fi
}
envs=()
# bpm's lifecycle lock (hostlock: data/bpm/locks/job-ENCODED(JOB.PROC).lock, the name simplified
# here): run, start and stop wait for it, pid does not; a `bpm run` holds it until it ends, and
# the container does not inherit it.
lifecycle_lock() {
  mkdir -p "$ROOT/data/bpm/locks"
  exec 9>"$ROOT/data/bpm/locks/job-$1.$2.lock"
  flock 9
}
case "$1" in
  start)
    # As `bpm start JOB -p PROC`: the container detached, its init's pid in
    # sys/run/bpm/JOB/PROC.pid, its output in sys/log/JOB/PROC.{stdout,stderr}.log.
    job=$2; proc=$4
    lifecycle_lock "$job" "$proc"
    job_dirs "$job"
    store_dir "$job" "$proc"
    mkdir -p "$ROOT/sys/run/bpm/$job"
    ( exec 9>&-; launch "$job" "$proc" ) </dev/null >>"$ROOT/sys/log/$job/$proc.stdout.log" 2>>"$ROOT/sys/log/$job/$proc.stderr.log" &
    echo $! > "$ROOT/sys/run/bpm/$job/$proc.pid"
    exit 0 ;;
  stop)
    # As `bpm stop JOB -p PROC`: TERM to the container, KILL after 20 s, the pid file removed.
    lifecycle_lock "$2" "$4"
    pidfile="$ROOT/sys/run/bpm/$2/$4.pid"
    pid=$(cat "$pidfile" 2>/dev/null) || exit 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$pidfile"
    exit 0 ;;
  pid)
    if [ "$mode" = running ]; then echo 4242; exit 0; fi
    echo "Error: process not running" >&2; exit 1 ;;
  run)
    lifecycle_lock "$2" "$4"
    job_dirs "$2"
    store_dir "$2" "$4"
    case "$mode" in
      failed-to-run) echo "Error: failed to run job-process: exit status 1 (exit status 0)" >&2; exit 0 ;;
      # As real bpm does when the process exits N != 0 (checked against bpm built from source):
      # the line below, then exit N.
      exit7) echo "job output" >&2; echo "Error: failed to run job-process: exit status 7 (exit status 7)" >&2; exit 7 ;;
      runc-failed)
        echo 'time="2026-11-26T07:09:05Z" level=error msg="runc run failed: unable to start container process: error mounting"' >&2
        echo "Error: failed to run job-process: exit status 1 (exit status 1)" >&2; exit 1 ;;
      inner)
        job=$2; proc=$4; shift 4
        while [ $# -gt 0 ]; do
          case "$1" in
            -e) envs+=("$2"); shift 2 ;;
            # As bpm does for a volume without mount_only: chown it to vcap, mode 0700.
            -v) case "$2" in *mount_only*) ;; *) chown vcap:vcap "${2%%:*}"; chmod 0700 "${2%%:*}" ;; esac; shift 2 ;;
            *) shift ;;
          esac
        done
        ( exec 9>&-; launch "$job" "$proc" )
        rc=$?
        if [ $rc -ne 0 ]; then echo "Error: failed to run job-process: exit status $rc (exit status $rc)" >&2; fi
        exit $rc ;;
    esac ;;
esac
echo "stand-in bpm: unexpected call" >&2; exit 99
"#;

/// STAND-IN for runc (not runc): runs the container's process and passes on TERM, INT, HUP and
/// QUIT to it, as `runc run` does (checked by hand: bpm's process group got the signal, runc
/// forwarded it to tini, tini to the runner inside).
pub const STAND_IN_RUNC: &str = r#"#!/bin/bash
# Job control on: the process starts with SIGINT and SIGQUIT at their defaults, as under runc
# (a non-interactive shell's background job would ignore both).
set -m
# Forwarding set up before the process starts, as runc does (a signal that came before the
# traps would end this script and reach no one); one that comes before the child's pid is
# known is passed on once it is.
child=
pending=
for s in TERM INT HUP QUIT; do trap "pending=$s; [ -n \"\$child\" ] && kill -$s \$child" $s; done
"$@" &
child=$!
if [ -n "$pending" ]; then kill -"$pending" "$child"; fi
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || exit "$rc"
done
"#;

/// Installs the stand-ins as `ROOT/jobs/bpm/bin/{bpm,runc}`, the container's runner `runner`.
pub fn install(root: &Path, runner: &Path) {
    std::fs::create_dir_all(root.join("jobs/bpm/bin")).expect("mkdir");
    let script = STAND_IN_BPM
        .replace("__ROOT__", &root.display().to_string())
        .replace("__RUNNER__", &runner.display().to_string());
    write(&root.join("jobs/bpm/bin/bpm"), &script, 0o755, None);
    write(&root.join("jobs/bpm/bin/runc"), STAND_IN_RUNC, 0o755, None);
}
