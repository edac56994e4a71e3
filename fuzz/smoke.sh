#!/usr/bin/env bash
# Fuzzes the profile parser and the manifest reader for SECONDS each (default 30) with libFuzzer,
# from the seed corpus in fuzz/seeds/. New inputs go to a temp dir, not the repository; a crash
# or a hang (> 10 s on one input) fails. Needs cargo-fuzz and a nightly toolchain.
# Usage: fuzz/smoke.sh [SECONDS]     (a longer run: fuzz/smoke.sh 3600)
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null || { echo "fuzz/smoke.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 2; }
rustup run nightly rustc --version >/dev/null 2>&1 || { echo "fuzz/smoke.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in profile manifest; do
  mkdir -p "$work/$target"
  echo "fuzz/smoke.sh: fuzzing $target for ${seconds}s" >&2
  if ! cargo +nightly fuzz run "$target" "$work/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$work/$target.log" 2>&1; then
    tail -40 "$work/$target.log" >&2
    echo "fuzz/smoke.sh: $target failed (a crash or hang is saved in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units" "$work/$target.log" | sed "s/^/  $target: /" >&2
done
echo "fuzz/smoke.sh: no crash, no hang" >&2
