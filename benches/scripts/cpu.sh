#!/usr/bin/env bash
# CPU time per statement of the proxy process (user + system, from
# `perf stat -e task-clock`), PgBouncer vs Airlock, with pgbench's TPS of
# the same run. Where the cores are saturated (16 clients on this 2-core
# machine) TPS is 2 cores divided by what a transaction costs everyone, so
# a microsecond of proxy CPU is a microsecond taken from PostgreSQL and
# pgbench: this is the figure to move, and unlike TPS it barely depends on
# what the neighbours do.
#
#   benches/scripts/cpu.sh                           # select-only, simple, 16 clients, 3 rounds
#   MODE=prepared CLIENTS=64 ROUNDS=5 benches/scripts/cpu.sh
#   WORKLOAD=range benches/scripts/cpu.sh            # 100-row results (see servers.sh)
#   B_WORKERS=1 benches/scripts/cpu.sh               # a second Airlock with one connection worker
#   AIRLOCK_B=/tmp/airlock-old benches/scripts/cpu.sh  # a second Airlock from another build
#
# With B_WORKERS or AIRLOCK_B a second Airlock (same configuration unless
# B_WORKERS says otherwise) runs beside the first, and the rounds interleave
# PgBouncer, Airlock and Airlock B, so both see the same neighbours.
# Needs what pgbench.sh needs, plus perf (apt-get install linux-perf).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${MODE:-simple}
WORKLOAD=${WORKLOAD:-select-only}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
command -v perf >/dev/null || { echo "install perf (apt-get install linux-perf)" >&2; exit 1; }
. benches/scripts/servers.sh

case $WORKLOAD in
  select-only) flag=-S ;; range) flag="-f $work/range.sql" ;;
  *) echo "unknown workload $WORKLOAD" >&2; exit 1 ;;
esac

targets=(pgbouncer airlock)
if [ -n "${AIRLOCK_B:-}${B_WORKERS:-}" ]; then
  GW_B=$((GW + 1))
  sed -e "s/^listen = \"127.0.0.1:$GW\"/listen = \"127.0.0.1:$GW_B\"/" \
      -e "s|^data_dir = \"$work/airlock-data\"|data_dir = \"$work/airlock-data-b\"|" \
      -e "s/^workers = .*/workers = ${B_WORKERS:-${AIRLOCK_WORKERS:-0}}/" \
      "$work/airlock.toml" > "$work/airlock-b.toml"
  "${AIRLOCK_B:-$AIRLOCK}" --config "$work/airlock-b.toml" --log warn serve >"$work/airlock-b.log" 2>&1 &
  pids+=($!)
  TOKEN_B=$("${AIRLOCK_B:-$AIRLOCK}" --config "$work/airlock-b.toml" token --sub bench --groups bench --ttl 2h)
  for _ in $(seq 100); do
    PGPASSWORD=$TOKEN_B psql -h 127.0.0.1 -p $GW_B -U bench -XAtc 'select 1' bench >/dev/null 2>&1 && break
    sleep 0.1
  done
  targets+=(airlock-b)
fi
pid_of() { pgrep -f "$1" | head -1; }

printf '%-5s %-10s %8s %14s %12s\n' round proxy tps "cpu µs/stmt" "cs/stmt"
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    case $t in
      pgbouncer) pid=$(pgrep -x pgbouncer | head -1); port=$BOUNCER; pw=$PASS ;;
      airlock) pid=$(pid_of "$work/airlock.toml"); port=$GW; pw=$TOKEN ;;
      airlock-b) pid=$(pid_of "$work/airlock-b.toml"); port=$GW_B; pw=$TOKEN_B ;;
    esac
    perf stat -e task-clock,context-switches -p "$pid" -o "$work/perf.$t" sleep $((DURATION + 1)) &
    stat=$!
    out=$(PGPASSWORD=$pw pgbench -h 127.0.0.1 -p "$port" -U bench -n $flag -M "$MODE" -c "$CLIENTS" \
      -j "$(( CLIENTS < 2 ? 1 : 2 ))" -T "$DURATION" bench 2>&1)
    wait $stat
    tx=$(echo "$out" | awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]}')
    tps=$(echo "$out" | awk '/^tps/ {printf "%d", $3}')
    awk -v tx="$tx" -v tps="$tps" -v r="$round" -v t="$t" '
      /task-clock/ {gsub(",", "", $1); cpu = $1 * 1000 / tx}
      /context-switches/ {gsub(",", "", $1); cs = $1 / tx}
      END {printf "%-5s %-10s %8s %14.1f %12.2f\n", r, t, tps, cpu, cs}' "$work/perf.$t"
  done
done
