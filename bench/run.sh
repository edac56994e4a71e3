#!/usr/bin/env bash
# The benchmark suite: builds a PostgreSQL 15 database like the issue's reference (pgbench -i -s 70
# plus a 500k-row table with text and bytea, about 1.3 GB), a small one (scale 7, 50k rows) and
# one whose data is four equal tables shaped like pgbench_accounts (4 x 1.75M rows), measures with
# hyperfine (medians and spread of the same run) and /proc sampling, and rewrites BENCHMARKS.md.
# Usage (as root, Debian 12): bench/run.sh [--quick]
#   --quick: scale 7, 50k rows, four tables of 175k rows, fewer runs.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SCALE=70 BLOB_ROWS=500000 FOUR_ROWS=1750000 RUNS=5 STARTUP_RUNS=300 PAIRS=12 MODE=full
if [ "${1:-}" = "--quick" ]; then SCALE=7 BLOB_ROWS=50000 FOUR_ROWS=175000 RUNS=3 STARTUP_RUNS=100 PAIRS=4 MODE=quick; fi
SMALL_SCALE=7 SMALL_BLOB_ROWS=50000
[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: run as root (the sandbox drops to vcap)" >&2; exit 2; }

packages=(hyperfine bubblewrap time postgresql python3)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; fi
id vcap >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin vcap

echo "bench: building the runner as the release ships it (scripts/build-release: static)" >&2
scripts/build-release 2>&1 | tail -1 >&2

W=$(mktemp -d /tmp/bbr-bench-XXXXXX)
chmod 755 "$W"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cleanup() {
  [ -f "$W/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/bin" "$W/run" "$W/data" "$W/out" "$W/cfg" "$W/tmp"
install -m 0755 src/bbr-runner/bin/bbr-runner "$W/bin/bbr-runner"
install -m 0755 /bin/true "$W/bin/true"
BIN=$W/bin/bbr-runner
chown postgres:postgres "$W/data" "$W/run"
chmod 755 "$W/run" "$W/cfg"
chown vcap:vcap "$W/tmp" && chmod 700 "$W/tmp"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "bench: PostgreSQL cluster in $W (port $PORT)" >&2
runuser -u postgres -- "$PGBIN/initdb" -D "$W/data" --auth-local=trust --auth-host=reject --encoding=UTF8 --locale=C >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -l "$W/run/pg.log" -o "-k $W/run -p $PORT -c listen_addresses=''" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -A -t -h "$W/run" -p "$PORT")
"${PSQL[@]}" -U postgres -d postgres -c "CREATE ROLE acme LOGIN CREATEDB" -c "CREATE DATABASE acme OWNER acme" -c "CREATE DATABASE acme_small OWNER acme" \
  -c "CREATE DATABASE acme_four OWNER acme"

build_db() { # db scale rows
  "$PGBIN/pgbench" -q -i -s "$2" -h "$W/run" -p "$PORT" -U acme "$1" 2>&1 | tail -1 >&2
  "${PSQL[@]}" -U acme -d "$1" -c "CREATE TABLE blobs AS SELECT g AS id, md5(g::text) || repeat(' text', 40) AS t, decode(repeat(md5(g::text), 8), 'hex') AS b FROM generate_series(1, $3) g" \
    -c "ALTER TABLE blobs ADD PRIMARY KEY (id)" -c "VACUUM ANALYZE blobs"
}
# Four tables shaped and filled like pgbench_accounts (pgbench -i's rows: bid one per 100,000 rows,
# abalance 0, filler blank), rows each: one pgbench_accounts of 4 x rows, with no table most of it.
build_four() { # db rows-per-table
  local t
  for t in 1 2 3 4; do
    "${PSQL[@]}" -U acme -d "$1" -c "CREATE TABLE accounts_$t (aid int NOT NULL, bid int, abalance int, filler char(84)) WITH (fillfactor = 100)" \
      -c "INSERT INTO accounts_$t SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, $2) g" \
      -c "ALTER TABLE accounts_$t ADD PRIMARY KEY (aid)" -c "VACUUM ANALYZE accounts_$t"
  done
}
echo "bench: building the database (scale $SCALE + $BLOB_ROWS rows)" >&2
build_db acme "$SCALE" "$BLOB_ROWS"
build_db acme_small "$SMALL_SCALE" "$SMALL_BLOB_ROWS"
echo "bench: building the four-table database (4 x $FOUR_ROWS rows)" >&2
build_four acme_four "$FOUR_ROWS"
DB_SIZE=$("${PSQL[@]}" -U acme -d acme -c "SELECT pg_database_size('acme')")
SMALL_SIZE=$("${PSQL[@]}" -U acme -d acme -c "SELECT pg_database_size('acme_small')")
FOUR_SIZE=$("${PSQL[@]}" -U acme -d acme -c "SELECT pg_database_size('acme_four')")

cfg() { # name database extra-json
  cat > "$W/cfg/$1.json" <<JSON
{"username":"acme","password":"","host":"$W/run","port":$PORT,"database":"$2","adapter":"postgres","bbr_runner":{"postgres_client_dirs":["$PGBIN"]$3}}
JSON
}
cfg default acme ""
cfg nodigests acme ',"digests":false'
cfg small acme_small ""
cfg four acme_four ""
chmod 644 "$W/cfg/"*.json

ART=$W/art
VARS=(--var "BBR_ARTIFACT_DIRECTORY=$ART/" --var "BBR_RUNNER_DIR=$W/bin" --var "JOB_CONFIG_DIR=$W/cfg" --var "JOB_TMP_DIR=$W/tmp"
      --var "DB_SOCKET=$W/run/.s.PGSQL.$PORT" --var DB_HOST= --var DB_PORT= --var SQLITE_DIR= --var DB_CLIENTS_DIR= --var BOSH_ROOT=/var/vcap)
FRESH_ART="rm -rf $ART && mkdir -p $ART && chown vcap:vcap $ART && chmod 700 $ART"
OURS_BACKUP="$BIN exec --profile $REPO/profiles/bbr-acme-db/backup.yml ${VARS[*]} -- $BIN acme-db backup --config $W/cfg/default.json"
OURS_RESTORE="$BIN exec --profile $REPO/profiles/bbr-acme-db/restore.yml ${VARS[*]} -- $BIN acme-db restore --config $W/cfg/default.json"
OURS_BACKUP_NODIGESTS="$BIN exec --profile $REPO/profiles/bbr-acme-db/backup.yml ${VARS[*]} -- $BIN acme-db backup --config $W/cfg/nodigests.json"
OURS_REHEARSE="$BIN exec --profile $REPO/profiles/bbr-acme-db/rehearse.yml ${VARS[*]} -- $BIN acme-db rehearse --config $W/cfg/default.json"
# ours VERB CONFIG: our backup or restore of the config's database, under the verb's profile.
ours() { echo "$BIN exec --profile $REPO/profiles/bbr-acme-db/$1.yml ${VARS[*]} -- $BIN acme-db $1 --config $W/cfg/$2.json"; }
PGD="$PGBIN/pg_dump -h $W/run -p $PORT -U acme"
HF=(hyperfine --style basic --runs "$RUNS")

echo "bench: 1. sandbox start-up" >&2
mkdir -p "$ART" && chown vcap:vcap "$ART"
# Our native sandbox gives the action its own network namespace, as --unshare-all alone does.
BWRAP="bwrap --unshare-all --die-with-parent --cap-drop ALL --ro-bind /usr /usr --ro-bind /bin /bin --ro-bind /lib /lib --ro-bind /lib64 /lib64 --ro-bind /etc /etc --proc /proc --dev /dev --bind $ART $ART /bin/true"
hyperfine --style basic -N --warmup 20 --runs "$STARTUP_RUNS" --export-json "$W/out/startup.json" \
  -n true /bin/true \
  -n "bbr-runner exec (artifact-only)" "$BIN exec --profile $REPO/profiles/examples/artifact-only.yml --var BBR_ARTIFACT_DIRECTORY=$ART/ -- /bin/true" \
  -n "bbr-runner exec (backup profile, socket: mount namespace)" "$BIN exec --profile $REPO/profiles/bbr-acme-db/backup.yml ${VARS[*]} -- $W/bin/true" \
  -n "bwrap (mount ns, ro binds, one writable dir, caps dropped)" "$BWRAP" >&2

echo "bench: 2. backup" >&2
"${HF[@]}" --export-json "$W/out/backup.json" \
  -n "SDK: pg_dump --format=custom (default compression)" --prepare "rm -f $W/sdk.dump" "$PGD --format=custom --file=$W/sdk.dump acme" \
  -n "pg_dump --format=custom -Z 1" --prepare "rm -f $W/z1.dump" "$PGD --format=custom -Z 1 --file=$W/z1.dump acme" \
  -n "pg_dump --format=custom -Z 0" --prepare "rm -f $W/z0.dump" "$PGD --format=custom -Z 0 --file=$W/z0.dump acme" \
  -n "pg_dump --format=directory -j 2 -Z 1" --prepare "rm -rf $W/d2" "$PGD --format=directory -j 2 -Z 1 --file=$W/d2 acme" \
  -n "bbr-acme-db backup, defaults, under its profile" --prepare "$FRESH_ART" "$OURS_BACKUP" \
  -n "bbr-acme-db backup, digests off (backup.digests: false), under its profile" --prepare "$FRESH_ART" "$OURS_BACKUP_NODIGESTS" \
  -n "pg_dump -Z 1 under the backup profile" --prepare "$FRESH_ART" "$BIN exec --profile $REPO/profiles/bbr-acme-db/backup.yml ${VARS[*]} -- $PGD --format=custom -Z 1 --file=$ART/x.dump acme" >&2
# The sandbox's own cost, in pairs: the same dump bare and under the profile back to back, the
# order alternating, so that this VM's drift over minutes falls on both sides of each ratio.
echo "bench: 2b. the sandbox's cost on the dump, $PAIRS pairs" >&2
secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
# Bare: the same dump by the same user (vcap) into the same directory, without the sandbox.
bare_dump() { eval "$FRESH_ART"; secs setpriv --reuid=vcap --regid=vcap --clear-groups -- $PGD --format=custom -Z 1 --file="$ART/x.dump" acme; }
sandboxed_dump() { eval "$FRESH_ART"; secs $BIN exec --profile "$REPO/profiles/bbr-acme-db/backup.yml" "${VARS[@]}" -- $PGD --format=custom -Z 1 --file="$ART/x.dump" acme; }
: > "$W/out/sandbox_pairs.txt"
for i in $(seq 1 "$PAIRS"); do
  if [ $((i % 2)) -eq 1 ]; then b=$(bare_dump); s=$(sandboxed_dump); else s=$(sandboxed_dump); b=$(bare_dump); fi
  echo "$b $s" >> "$W/out/sandbox_pairs.txt"
done
size() { du -sb "$1" | cut -f1; }
eval "$FRESH_ART" && $OURS_BACKUP 2>/dev/null
rm -rf "$W/ours" && cp -a "$ART" "$W/ours"
SIZES="sdk=$(size $W/sdk.dump) z1=$(size $W/z1.dump) z0=$(size $W/z0.dump) d2=$(size $W/d2) ours=$(size $W/ours)"

echo "bench: 3. restore" >&2
"$PGBIN/pg_restore" --list "$W/sdk.dump" | grep -v -e ' EXTENSION ' -e ' SCHEMA ' > "$W/sdk.list"
RESTORE_OURS_PREP="rm -rf $ART && cp -a $W/ours $ART"
"${HF[@]}" --export-json "$W/out/restore.json" \
  -n "SDK: pg_restore --clean --if-exists --single-transaction --exit-on-error" --prepare true "$PGBIN/pg_restore -h $W/run -p $PORT -U acme --clean --if-exists --single-transaction --exit-on-error --use-list=$W/sdk.list -d acme $W/sdk.dump" \
  -n "bbr-acme-db restore, defaults, under its profile" --prepare "$RESTORE_OURS_PREP" "$OURS_RESTORE" \
  -n "bbr-acme-db rehearse, under its profile" --prepare "$RESTORE_OURS_PREP" "$OURS_REHEARSE" \
  -n "pg_restore -j 2 (not atomic)" --prepare true "$PGBIN/pg_restore -h $W/run -p $PORT -U acme --clean --if-exists -j 2 -d acme $W/d2" >&2

# The other sizes: the SDK's restore of its own dump against ours of our backup, as above.
# restore_routes.txt: the route our restore took for each, as it says (one more restore each).
declare -A DB_OF=([small]=acme_small [four]=acme_four)
: > "$W/out/restore_routes.txt"
for n in small four; do
  db=${DB_OF[$n]}
  echo "bench: 3. restore, $db" >&2
  $PGD --format=custom --file="$W/sdk_$n.dump" "$db"
  "$PGBIN/pg_restore" --list "$W/sdk_$n.dump" | grep -v -e ' EXTENSION ' -e ' SCHEMA ' > "$W/sdk_$n.list"
  eval "$FRESH_ART" && $(ours backup "$n") 2>/dev/null
  rm -rf "$W/ours_$n" && cp -a "$ART" "$W/ours_$n"
  SIZES="$SIZES sdk_$n=$(size "$W/sdk_$n.dump") ours_$n=$(size "$W/ours_$n")"
  "${HF[@]}" --export-json "$W/out/restore_$n.json" \
    -n "SDK: pg_restore --clean --if-exists --single-transaction --exit-on-error" --prepare true "$PGBIN/pg_restore -h $W/run -p $PORT -U acme --clean --if-exists --single-transaction --exit-on-error --use-list=$W/sdk_$n.list -d $db $W/sdk_$n.dump" \
    -n "bbr-acme-db restore, defaults, under its profile" --prepare "rm -rf $ART && cp -a $W/ours_$n $ART" "$(ours restore "$n")" >&2
  rm -rf "$ART" && cp -a "$W/ours_$n" "$ART"
  route=$({ $(ours restore "$n") 2>&1 >/dev/null || true; } | grep -o -e 'restored in parallel.*' -e 'one transaction (.*' | head -1 || true)
  echo "$db: ${route:-the route was not reported}" >> "$W/out/restore_routes.txt"
done

echo "bench: 4. memory of the runner's own processes" >&2
peak_rss() { # config-name -> peak VmHWM (kB) over every bbr-runner process of one backup
  eval "$FRESH_ART"
  $BIN exec --profile "$REPO/profiles/bbr-acme-db/backup.yml" "${VARS[@]}" -- "$BIN" acme-db backup --config "$W/cfg/$1.json" 2>/dev/null &
  local top=$! peak=0
  while kill -0 "$top" 2>/dev/null; do
    for p in $(pgrep -f "$W/bin/bbr-runner" || true); do
      v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      [ "${v:-0}" -gt "$peak" ] && peak=$v
    done
    sleep 0.02
  done
  wait "$top"
  echo "$peak"
}
RSS_LARGE=$(peak_rss default)
RSS_SMALL=$(peak_rss small)

echo "bench: 5. checksums" >&2
"${HF[@]}" --warmup 1 --export-json "$W/out/verify.json" \
  -n "bbr-runner acme-db verify" "$BIN acme-db verify --artifact-dir $W/ours" \
  -n "sha256sum" "find $W/ours -type f -exec sha256sum {} +" >&2

echo "bench: 6. where the time goes" >&2
# prof NAME CMD...: wall seconds and the machine's busy cores while CMD ran, into profile.jsonl.
prof() {
  local name=$1; shift
  local s c1 i1 e c2 i2
  read -r c1 i1 < <(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
  s=$(date +%s.%N)
  "$@"
  e=$(date +%s.%N)
  read -r c2 i2 < <(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
  python3 -c 'import json,sys; n,s,e,c1,i1,c2,i2,cores=sys.argv[1:]; b=float(c2)-float(c1); t=b+float(i2)-float(i1); print(json.dumps({"name":n,"wall":float(e)-float(s),"cores":b/t*int(cores) if t else 0}))' \
    "$name" "$s" "$e" "$c1" "$i1" "$c2" "$i2" "$(nproc)" >> "$W/out/profile.jsonl"
}
PSU=("$PGBIN/psql" -X -q -A -t -h "$W/run" -p "$PORT" -U postgres -d postgres)
: > "$W/out/profile.jsonl"; : > "$W/out/restore_phases.txt"
for _ in 1 2 3; do
  prof "backup: pgbench_accounts' rows produced by the server alone (COPY to /dev/null, server side)" "${PSU[@]}" -d acme -c "COPY public.pgbench_accounts TO '/dev/null'"
  prof "backup: pgbench_accounts' rows sent to a client, uncompressed (psql COPY TO STDOUT)" sh -c "$PGBIN/psql -X -q -h $W/run -p $PORT -U acme -d acme -c 'COPY public.pgbench_accounts TO STDOUT' > /dev/null"
  prof "backup: pgbench_accounts, custom format, gzip 1" $PGD --format=custom -Z 1 -t pgbench_accounts --file=$W/p1.dump acme
  prof "backup: pgbench_accounts, custom format, gzip 6 (pg_dump's default)" $PGD --format=custom -t pgbench_accounts --file=$W/p6.dump acme
  prof "backup: every other table, custom format, gzip 1" $PGD --format=custom -Z 1 -T pgbench_accounts --file=$W/pr.dump acme
  "${PSU[@]}" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS acme_profile" -c "CREATE DATABASE acme_profile OWNER acme" -c CHECKPOINT
  for section in pre-data data post-data; do
    prof "restore (SDK's, one transaction): $section" "$PGBIN/pg_restore" -h "$W/run" -p "$PORT" -U acme --exit-on-error --single-transaction \
      --section=$section --use-list="$W/sdk.list" -d acme_profile "$W/sdk.dump"
  done
  "${PSU[@]}" -c "DROP DATABASE acme_profile"
  rm -rf "$ART" && cp -a "$W/ours" "$ART"
  # The scratch route's phases, or why the restore took one transaction instead.
  { $OURS_RESTORE 2>&1 >/dev/null || true; } | grep -o -e 'create [0-9.]*s, restore [0-9.]*s, check [0-9.]*s, swap [0-9.]*s, drop of the previous database [0-9.]*s' \
    -e 'one transaction (.*' >> "$W/out/restore_phases.txt" || true
done
rm -f "$W/p1.dump" "$W/p6.dump" "$W/pr.dump"

echo "bench: 6b. the floor of each database's restore" >&2
# floor DB DUMP LIST TABLE: into a fresh database, the SDK's pre-data, then TABLE's data alone and
# its primary key alone, each timed: no restore of DB can take less than the two together.
# pg_restore -I picks INDEX entries only and a primary key is a CONSTRAINT entry, so the key is
# picked by a list holding its one line.
floor() {
  local db=$1 dump=$2 list=$3 table=$4 pk
  local PGR=("$PGBIN/pg_restore" -h "$W/run" -p "$PORT" -U acme --exit-on-error --single-transaction -d acme_floor)
  pk=$(awk -v t="$table" '$4 == "CONSTRAINT" && $6 == t && $7 ~ /_pkey$/ {print $7}' "$list")
  [ -n "$pk" ] || { echo "bench: no primary key of $table in $list" >&2; exit 1; }
  awk -v t="$table" -v k="$pk" '$4 == "CONSTRAINT" && $6 == t && $7 == k' "$list" > "$W/pk.list"
  "${PSU[@]}" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS acme_floor" -c "CREATE DATABASE acme_floor OWNER acme"
  "${PGR[@]}" --section=pre-data --use-list="$list" "$dump"
  "${PSU[@]}" -c CHECKPOINT
  prof "floor: $db, $table: data" "${PGR[@]}" --section=data -t "$table" "$dump"
  prof "floor: $db, $table: primary key $pk" "${PGR[@]}" --section=post-data --use-list="$W/pk.list" "$dump"
  [ "$("${PSU[@]}" -d acme_floor -c "SELECT count(*) FROM pg_indexes WHERE indexname = '$pk'")" = 1 ] \
    || { echo "bench: the floor's restore of $pk built no index" >&2; exit 1; }
  "${PSU[@]}" -c "DROP DATABASE acme_floor"
}
for _ in 1 2 3; do
  floor acme "$W/sdk.dump" "$W/sdk.list" pgbench_accounts
  floor acme_small "$W/sdk_small.dump" "$W/sdk_small.list" pgbench_accounts
  floor acme_four "$W/sdk_four.dump" "$W/sdk_four.list" accounts_1
done

cat > "$W/out/env.txt" <<ENV
mode=$MODE
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
cores=$(nproc)
memory=$(awk '/MemTotal/ {print $2}' /proc/meminfo) kB
kernel=$(uname -r)
postgres=$("$PGBIN/postgres" --version)
runner=$($BIN --version)
hyperfine=$(hyperfine --version)
bwrap=$(bwrap --version)
db_size=$DB_SIZE
small_size=$SMALL_SIZE
four_size=$FOUR_SIZE
scale=$SCALE
blob_rows=$BLOB_ROWS
small_scale=$SMALL_SCALE
small_blob_rows=$SMALL_BLOB_ROWS
four_rows=$FOUR_ROWS
rss_large_kb=$RSS_LARGE
rss_small_kb=$RSS_SMALL
$SIZES
ENV
# The raw results stay in bench/results/ (hyperfine JSON): `python3 bench/report.py bench/results`
# renders BENCHMARKS.md again without re-measuring.
rm -rf bench/results && cp -r "$W/out" bench/results
# Each run is also kept in bench/history/ (full runs are compared in BENCHMARKS.md, section 7).
mkdir -p bench/history && cp -r "$W/out" "bench/history/$(date -u +%Y%m%dT%H%M%SZ)-$MODE"
python3 bench/report.py bench/results > BENCHMARKS.md
echo "bench: wrote BENCHMARKS.md" >&2
