#!/usr/bin/env bash
# What the per-table digests cost (issue 20), on a moderately sized PostgreSQL 15 table: a
# throwaway cluster, a pgbench-like table of ROWS rows, then with hyperfine (medians):
#   1. the digest query alone against count(*) alone (server time, the same snapshot's work);
#   2. `bbr-runner acme-db backup` with digests on and off (wall);
#   3. the one-transaction restore: pg_restore --single-transaction straight into the server (the
#      route before this change) against pg_restore --file=- streamed into psql in one
#      transaction (how the runner now restores, before its check), and the runner's whole
#      restore (stream, check, commit);
#   4. `bbr-runner acme-db rehearse`.
# Usage (as root, Debian 12): bench/digest-cost.sh [ROWS] [RUNS]   (default 1000000 rows, 5 runs)
# It runs the runner directly (no sandbox): the sandbox's own cost is measured by bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000} RUNS=${2:-5}
[ "$(id -u)" -eq 0 ] || { echo "bench/digest-cost.sh: run as root" >&2; exit 2; }
for p in hyperfine postgresql; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    { echo "bench/digest-cost.sh: $p is missing: apt-get install $p" >&2; exit 2; }
done
BIN=${BBR_RUNNER:-${CARGO_TARGET_DIR:-target}/debug/bbr-runner}
[ -x "$BIN" ] || { echo "bench/digest-cost.sh: no runner at $BIN: cargo build (or set BBR_RUNNER)" >&2; exit 2; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
W=$(mktemp -d /tmp/bbr-digest-XXXXXX)
chmod 755 "$W"
cleanup() {
  [ -f "$W/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/data" "$W/run"
chown postgres:postgres "$W/data" "$W/run"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/data" --auth-local=trust --encoding=UTF8 --locale=C >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -l "$W/run/log" -w \
  -o "-k $W/run -c listen_addresses= -c shared_buffers=128MB -c max_wal_size=2GB" start >/dev/null
PSQL=("$PGBIN/psql" -X -q -h "$W/run" -U postgres)
"${PSQL[@]}" -c "CREATE ROLE acme LOGIN CREATEDB PASSWORD 'pw'" -c "CREATE DATABASE acme OWNER acme"
"${PSQL[@]}" -U acme -d acme -c "CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
  INSERT INTO accounts SELECT g, g / 100000, 0, '' FROM generate_series(1, $ROWS) g;
  CREATE TABLE nopk AS SELECT g AS id, md5(g::text) AS body, now() AS at FROM generate_series(1, $ROWS / 10) g;" \
  -c "VACUUM ANALYZE"
SIZE=$("${PSQL[@]}" -U acme -d acme -Atc "SELECT pg_size_pretty(pg_database_size('acme'))")
echo "digest-cost: $ROWS + $((ROWS / 10)) rows, database $SIZE, runner $BIN" >&2
cfg() { echo "{\"username\":\"acme\",\"password\":\"pw\",\"host\":\"$W/run\",\"port\":5432,\"database\":\"acme\",\"adapter\":\"postgres\",\"bbr_runner\":{$1}}" >"$W/$2.json"; }
cfg '"digests":true' on
cfg '"digests":false' off
Q=("$PGBIN/psql" -X -q -h "$W/run" -U acme -d acme -At)
# The digests as the runner computes them (postgres-row-hash64-sum/2): the record hash where every
# column's type allows it (accounts: integers and char), else the text one (the only one of /1);
# and as it did first (md5).
RECORD="SELECT count(*), mod(sum(h), 18446744073709551616) FROM (SELECT hash_record_extended(ROW(t.abalance, t.aid, t.bid, t.filler), 0) AS h FROM ONLY public.accounts t) r"
DIGEST="SELECT count(*), mod(sum(h), 18446744073709551616) FROM (SELECT hashtextextended((ROW(t.abalance, t.aid, t.bid, t.filler)::text) COLLATE \\\"C\\\", 0) AS h FROM ONLY public.accounts t) r"
MD5="SELECT count(*), sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric) FROM (SELECT md5(ROW(t.abalance, t.aid, t.bid, t.filler)::text) AS h FROM ONLY public.accounts t) r"
hyperfine -N --style basic --warmup 1 --runs "$RUNS" --export-markdown "$W/1.md" \
  -n "count(*) of accounts" "${Q[*]} -c 'SELECT count(*) FROM ONLY public.accounts'" \
  -n "count and record digest of accounts (used: every column hashable)" "${Q[*]} -c \"$RECORD\"" \
  -n "count and text digest of accounts (used for other tables)" "${Q[*]} -c \"$DIGEST\"" \
  -n "count and md5 digest of accounts (not used)" "${Q[*]} -c \"$MD5\""
mkdir -p "$W/art"
printf '#!/bin/sh\nrm -rf %s && mkdir %s\n' "$W/art" "$W/art" >"$W/fresh.sh" && chmod +x "$W/fresh.sh"
hyperfine -N --style basic --runs "$RUNS" --export-markdown "$W/2.md" \
  --prepare "$W/fresh.sh" \
  -n "backup, digests on" "$BIN acme-db backup --config $W/on.json --artifact-dir $W/art" \
  -n "backup, digests off" "$BIN acme-db backup --config $W/off.json --artifact-dir $W/art"
rm -rf "$W/art" && mkdir "$W/art" && "$BIN" acme-db backup --config "$W/on.json" --artifact-dir "$W/art" 2>/dev/null
ARCH=$W/art/acme-db.dir
PGR=("$PGBIN/pg_restore" --clean --if-exists --exit-on-error -h "$W/run" -U acme)
cat >"$W/streamed.sh" <<EOF
#!/bin/sh
set -e
{ echo 'BEGIN;'; $PGBIN/pg_restore --clean --if-exists --exit-on-error --file=- $ARCH; echo 'COMMIT;'; } |
  $PGBIN/psql -X -q -h $W/run -U acme -d acme --set=ON_ERROR_STOP=1 --file=- >/dev/null
EOF
chmod +x "$W/streamed.sh"
hyperfine -N --style basic --warmup 1 --runs "$RUNS" --export-markdown "$W/3.md" \
  -n "pg_restore --single-transaction (before)" "${PGR[*]} --single-transaction -d acme $ARCH" \
  -n "pg_restore --file=- into psql, one transaction" "$W/streamed.sh" \
  -n "bbr-runner acme-db restore (stream, check, commit)" "$BIN acme-db restore --config $W/on.json --artifact-dir $W/art"
hyperfine -N --style basic --runs "$RUNS" --export-markdown "$W/4.md" \
  -n "bbr-runner acme-db rehearse" "$BIN acme-db rehearse --config $W/on.json --artifact-dir $W/art"
echo "## digest-cost: $ROWS + $((ROWS / 10)) rows, database $SIZE ($(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
cat "$W/1.md" "$W/2.md" "$W/3.md" "$W/4.md"
