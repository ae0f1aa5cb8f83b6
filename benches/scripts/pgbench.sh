#!/usr/bin/env bash
# Proxy overhead for PostgreSQL, in one run: pgbench straight to PostgreSQL,
# through PgBouncer (session mode, what a user would otherwise put in front),
# and through Airlock (token login, policy with the sql-guardrails pack,
# masking and durable recording on). Prints TPS and the ratios.
#
#   benches/scripts/pgbench.sh                 # defaults: 10 s per run, clients 1 16 64
#   DURATION=30 CLIENTS="1 16" benches/scripts/pgbench.sh
#   WORKLOADS=select-only MODES=simple CONNECTIONS=no benches/scripts/pgbench.sh
#   WORKLOADS=range ...  # 100-row results (400 cells masked a statement; not in the default set)
#   ROUNDS=5 ...    # cells per target (default 3), interleaved direct/pgbouncer/airlock; the median is shown
#   AIRLOCK_WORKERS=1 ...  # Airlock's connection workers (default: one per CPU)
#   KEEP=1 ...      # leave the servers up afterwards (for perf); prints how to reach them
#   PIN=1 ...       # proxies on CPU 1, PostgreSQL and pgbench on CPU 0 (a gateway with a core of its own)
#
# Needs: PostgreSQL server binaries, pgbench, pgbouncer (apt-get install
# pgbouncer), and a release build (cargo build --release -p airlock).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 16 64"}
WORKLOADS=${WORKLOADS:-"select-only write-mix"}
MODES=${MODES:-"simple prepared"}
CONNECTIONS=${CONNECTIONS:-yes}
# This machine's neighbours come and go: a single cell can be off by 20 %.
# Each target runs ROUNDS times, interleaved, and the median counts.
ROUNDS=${ROUNDS:-3}
. benches/scripts/servers.sh

run() { # port password mode clients [extra]
  local out
  out=$(PGPASSWORD=$2 "${on_db[@]}" pgbench -h 127.0.0.1 -p "$1" -U bench -n -M "$3" -c "$4" -j "$(( $4 < 2 ? 1 : 2 ))" -T "$DURATION" $5 bench 2>&1) || { echo "pgbench failed: $out" >&2; echo 0; return; }
  echo "$out" | awk '/^tps/ {print int($3)}'
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
connrate() { # port password: new connections per second (pgbench -C, select-only)
  PGPASSWORD=$2 "${on_db[@]}" pgbench -h 127.0.0.1 -p "$1" -U bench -n -C -S -c 4 -j 2 -T "$DURATION" bench 2>&1 | awk '/^tps/ {print int($3)}'
}

printf '%-14s %-9s %7s %10s %10s %10s %12s %12s\n' workload mode clients direct pgbouncer airlock airlock/dir airlock/bouncer
for name in $WORKLOADS; do
  case $name in
    select-only) flag=-S ;; write-mix) flag=-N ;; range) flag="-f $work/range.sql" ;;
    *) echo "unknown workload $name" >&2; exit 1 ;;
  esac
  for mode in $MODES; do
    for c in $CLIENTS; do
      ds=(); bs=(); as=()
      for _ in $(seq "$ROUNDS"); do
        ds+=("$(run $PGPORT "$PASS" $mode "$c" "$flag")")
        bs+=("$(run $BOUNCER "$PASS" $mode "$c" "$flag")")
        as+=("$(run $GW "$TOKEN" $mode "$c" "$flag")")
      done
      d=$(median "${ds[@]}"); b=$(median "${bs[@]}"); a=$(median "${as[@]}")
      printf '%-14s %-9s %7s %10s %10s %10s %12s %12s\n' "$name" "$mode" "$c" "$d" "$b" "$a" \
        "$(awk -v a="$a" -v d="$d" 'BEGIN{printf "%.2fx", d ? a/d : 0}')" \
        "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2fx", b ? a/b : 0}')"
    done
  done
done
if [ "$CONNECTIONS" = yes ]; then
  ds=(); bs=(); as=()
  for _ in $(seq "$ROUNDS"); do
    ds+=("$(connrate $PGPORT "$PASS")"); bs+=("$(connrate $BOUNCER "$PASS")"); as+=("$(connrate $GW "$TOKEN")")
  done
  d=$(median "${ds[@]}"); b=$(median "${bs[@]}"); a=$(median "${as[@]}")
  printf '%-14s %-9s %7s %10s %10s %10s %12s %12s\n' connections simple 4 "$d" "$b" "$a" \
    "$(awk -v a="$a" -v d="$d" 'BEGIN{printf "%.2fx", d ? a/d : 0}')" "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2fx", b ? a/b : 0}')"
fi
if [ -n "${KEEP:-}" ]; then
  echo "servers kept up until Ctrl-C: direct :$PGPORT  pgbouncer :$BOUNCER  airlock :$GW (pid ${pids[2]})"
  echo "  PGPASSWORD='$TOKEN' pgbench -h 127.0.0.1 -p $GW -U bench -n -S -T 10 bench"
  wait
fi
