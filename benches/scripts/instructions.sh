#!/usr/bin/env bash
# User-space instructions per statement, PgBouncer vs Airlock: a measure this
# noisy shared machine cannot blur (pgbench's TPS moves by 20 % between runs;
# an instruction count moves by well under 1 %). Both proxies run under
# valgrind's callgrind; for each, pgbench runs 1000 and then 5000 statements
# per client on one connection each, and the difference over the 4000 extra
# statements is the marginal cost of a statement (connection set-up and
# authentication cancel out). For Airlock it also prints where they go.
#
#   benches/scripts/instructions.sh                   # select-only, simple and prepared, 1 client
#   MODES=simple CLIENTS="1 16" benches/scripts/instructions.sh
#
# Caveat: valgrind hides the CPU's SHA extensions, so ring hashes with its
# AVX code and SHA-256 shows up about eight times as expensive as it is on
# the bare CPU; it is printed on its own line.
#
# Needs what pgbench.sh needs, plus valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODES=${MODES:-"simple prepared"}
CLIENTS=${CLIENTS:-1}
command -v valgrind >/dev/null || { echo "install valgrind (apt-get install valgrind)" >&2; exit 1; }
PGPORT=${PGPORT:-35432} BOUNCER=${BOUNCER:-36432} GW=${GW:-37432}
cg=$(mktemp -d /tmp/airlock-cg.XXXXXX)
chmod 777 "$cg"
PGBOUNCER_WRAP="valgrind --tool=callgrind --callgrind-out-file=$cg/pgbouncer.%p"
AIRLOCK_WRAP="valgrind --tool=callgrind --callgrind-out-file=$cg/airlock.%p"
. benches/scripts/servers.sh
# KEEP_PROFILES=1 keeps the callgrind files (callgrind_annotate --tree=calling).
trap 'cleanup; if [ -n "${KEEP_PROFILES:-}" ]; then echo "profiles kept in $cg"; else rm -rf "$cg"; fi' EXIT

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'; }
# measure NAME PORT PASSWORD MODE CLIENTS AS: marginal instructions per statement;
# keeps both profiles as $cg/NAME.1000 and $cg/NAME.5000.
measure() {
  local name=$1 port=$2 pw=$3 mode=$4 c=$5 as=$6 n f a b pid
  pid=$(pgrep -f "^valgrind .*callgrind-out-file=$cg/$name" | head -1)
  for n in 1000 5000; do
    $as callgrind_control -z "$pid" >/dev/null 2>&1
    PGPASSWORD=$pw pgbench -h 127.0.0.1 -p "$port" -U bench -n -S -M "$mode" -c "$c" -j 1 -t "$n" bench >/dev/null
    $as callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    f=$(ls -t "$cg/$name".*.* | head -1)
    mv "$f" "$cg/$name.$n"
  done
  a=$(total "$cg/$name.1000"); b=$(total "$cg/$name.5000")
  echo $(( (b - a) / (4000 * c) ))
}
# inclusive NAME FUNCTION N: instructions of a function and what it calls in
# the N-statement profile.
inclusive() {
  callgrind_annotate --inclusive=yes --threshold=100 "$cg/$1.$3" 2>/dev/null |
    awk -v f="$2" 'index($0, f) && /\[/ {gsub(",", "", $1); print $1; found=1; exit} END {if (!found) print 0}'
}
# stage NAME FUNCTION CLIENTS: its marginal instructions per statement.
stage() { echo $(( ($(inclusive "$1" "$2" 5000) - $(inclusive "$1" "$2" 1000)) / (4000 * $3) )); }
pg_as=""; [ "$(id -u)" = 0 ] && pg_as="runuser -u postgres --"

printf '%-9s %7s %14s %14s %8s\n' mode clients pgbouncer airlock ratio
for mode in $MODES; do
  for c in $CLIENTS; do
    p=$(measure pgbouncer $BOUNCER "$PASS" "$mode" "$c" "$pg_as")
    a=$(measure airlock $GW "$TOKEN" "$mode" "$c" "")
    printf '%-9s %7s %14s %14s %7sx\n' "$mode" "$c" "$p" "$a" "$(awk -v a="$a" -v p="$p" 'BEGIN{printf "%.1f", a/p}')"
    printf '  airlock, per statement, by function (with what it calls):\n'
    for s in "SealedRecord::seal" "ring::digest::digest" "Classifier::classify" "Policy::decide" \
      "Session::mask_operation" "ServerHalf::handle" "rows::mask_row" "FrameReader<R>::next" \
      "Recorder::record::{{closure}}" "Inner::run_indexer" "multi_thread::worker::run"; do
      printf '    %-32s %8s\n' "$s" "$(stage airlock "$s" "$c")"
    done
  done
done
