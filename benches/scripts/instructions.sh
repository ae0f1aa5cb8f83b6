#!/usr/bin/env bash
# User-space instructions per statement, PgBouncer vs Airlock: a measure this
# noisy shared machine cannot blur (pgbench's TPS moves by 20 % between runs;
# an instruction count moves by well under 1 %). Both proxies run under
# valgrind's callgrind; for each, pgbench runs 1000 and then 5000 statements
# per client on one connection each, and the difference over the 4000 extra
# statements is the marginal cost of a statement (connection set-up and
# authentication cancel out). KEEP_PROFILES=1 keeps the profiles for
# callgrind_annotate.
#
#   benches/scripts/instructions.sh                   # select-only, simple and prepared, 1 client
#   MODES=simple CLIENTS="1 16" benches/scripts/instructions.sh
#
# Caveat: valgrind hides the CPU's SHA extensions, so ring hashes with its
# AVX code and SHA-256 costs several times what it does on the bare CPU; the
# last two columns leave its compression function out. Work that runs on a
# timer (the recorder's 10 ms flush of records nobody waits for, the index
# linger) is also over-counted: under valgrind a statement takes about
# twenty times as long, so a timer fires twenty times as often per statement.
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
# sha NAME: marginal instructions per statement in SHA-256's compression
# function (self cost, which callgrind attributes exactly; inclusive costs
# of async code are distorted by the poll cycles).
sha() {
  local n v=()
  for n in 1000 5000; do
    v+=("$(callgrind_annotate --auto=no --threshold=100 "$cg/$1.$n" 2>/dev/null |
      awk '/sha256_block_data_order/ {gsub(",", "", $1); s += $1} END {printf "%d", s}')")
  done
  echo $(( (v[1] - v[0]) / (4000 * $2) ))
}
pg_as=""; [ "$(id -u)" = 0 ] && pg_as="runuser -u postgres --"

printf '%-9s %7s %10s %10s %8s %18s %8s\n' mode clients pgbouncer airlock ratio "airlock w/o SHA" ratio
for mode in $MODES; do
  for c in $CLIENTS; do
    p=$(measure pgbouncer $BOUNCER "$PASS" "$mode" "$c" "$pg_as")
    a=$(measure airlock $GW "$TOKEN" "$mode" "$c" "")
    h=$(sha airlock "$c")
    printf '%-9s %7s %10s %10s %7sx %18s %7sx\n' "$mode" "$c" "$p" "$a" \
      "$(awk -v a="$a" -v p="$p" 'BEGIN{printf "%.1f", a/p}')" "$((a - h))" \
      "$(awk -v a="$((a - h))" -v p="$p" 'BEGIN{printf "%.1f", a/p}')"
  done
done
