#!/usr/bin/env bash
# Proxy overhead for PostgreSQL, in one run: pgbench straight to PostgreSQL,
# through PgBouncer (session mode, what a user would otherwise put in front),
# and through Airlock (token login, policy with the sql-guardrails pack,
# masking and durable recording on). Prints TPS and the ratios.
#
#   benches/scripts/pgbench.sh                 # defaults: 10 s per run, clients 1 16 64
#   DURATION=30 CLIENTS="1 16" benches/scripts/pgbench.sh
#   WORKLOADS=select-only MODES=simple CONNECTIONS=no benches/scripts/pgbench.sh
#   ROUNDS=5 ...    # cells per target (default 3), interleaved direct/pgbouncer/airlock; the median is shown
#   AIRLOCK_WORKERS=1 ...  # Airlock's connection workers (default: one per CPU)
#   KEEP=1 ...      # leave the servers up afterwards (for perf); prints how to reach them
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
AIRLOCK=${AIRLOCK:-${CARGO_TARGET_DIR:-target}/release/airlock}
[ -x "$AIRLOCK" ] || { echo "build first: cargo build --release -p airlock" >&2; exit 1; }
command -v pgbouncer >/dev/null || { echo "install pgbouncer (apt-get install pgbouncer)" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

work=$(mktemp -d /tmp/airlock-pgbench.XXXXXX)
chmod 755 "$work"
pids=()
# runuser forks, so kill by the work directory every server was started with.
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pkill -f "$work" 2>/dev/null || true; sleep 1; rm -rf "$work"; }
trap cleanup EXIT
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

PGPORT=25432; BOUNCER=26432; GW=27432
PASS=bench$RANDOM$RANDOM
mkdir "$work/data"; [ "$(id -u)" = 0 ] && chown postgres "$work/data" "$work"
as_pg "$PGBIN/initdb" -D "$work/data" -U postgres -A trust --no-sync >/dev/null
echo "host all all 127.0.0.1/32 scram-sha-256" >> "$work/data/pg_hba.conf"
as_pg "$PGBIN/postgres" -D "$work/data" -p $PGPORT -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$work" -c max_connections=300 -c fsync=off >"$work/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do psql -h "$work" -p $PGPORT -U postgres -XAtc 'select 1' postgres >/dev/null 2>&1 && break; sleep 0.1; done
psql -h "$work" -p $PGPORT -U postgres -Xq postgres -c "CREATE ROLE bench LOGIN PASSWORD '$PASS'" -c "CREATE DATABASE bench OWNER bench"
PGPASSWORD=$PASS pgbench -h 127.0.0.1 -p $PGPORT -U bench -i -s 10 -q bench >/dev/null 2>&1

# PgBouncer, session mode.
echo "\"bench\" \"$PASS\"" > "$work/userlist.txt"
cat > "$work/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 100
unix_socket_dir =
logfile = $work/pgbouncer.log
INI
[ "$(id -u)" = 0 ] && chown postgres "$work/userlist.txt" "$work/pgbouncer.ini"
as_pg pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)

# Airlock: token login, guardrails, masking, durable recording.
echo -n "$PASS" > "$work/pw"
cat > "$work/airlock.toml" <<TOML
[gateway]
data_dir = "$work/airlock-data"
durability = "${AIRLOCK_DURABILITY:-os}"
workers = ${AIRLOCK_WORKERS:-0}
[identity.local]
enabled = true
[[listeners]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:$GW"
allow_cleartext_without_tls = true
[targets.bench]
protocol = "postgres"
host = "127.0.0.1"
port = $PGPORT
database = "bench"
user = "bench"
password = { file = "$work/pw" }
sslmode = "disable"
[[grants]]
groups = ["bench"]
targets = ["bench"]
[policy]
packs = ["sql-guardrails"]
TOML
"$AIRLOCK" --config "$work/airlock.toml" --log warn serve >"$work/airlock.log" 2>&1 &
pids+=($!)
TOKEN=$("$AIRLOCK" --config "$work/airlock.toml" token --sub bench --groups bench --ttl 2h)
sleep 1

run() { # port password mode clients [extra]
  local out
  out=$(PGPASSWORD=$2 pgbench -h 127.0.0.1 -p "$1" -U bench -n -M "$3" -c "$4" -j "$(( $4 < 2 ? 1 : 2 ))" -T "$DURATION" $5 bench 2>&1) || { echo "pgbench failed: $out" >&2; echo 0; return; }
  echo "$out" | awk '/^tps/ {print int($3)}'
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
connrate() { # port password: new connections per second (pgbench -C, select-only)
  PGPASSWORD=$2 pgbench -h 127.0.0.1 -p "$1" -U bench -n -C -S -c 4 -j 2 -T "$DURATION" bench 2>&1 | awk '/^tps/ {print int($3)}'
}

printf '%-14s %-9s %7s %10s %10s %10s %12s %12s\n' workload mode clients direct pgbouncer airlock airlock/dir airlock/bouncer
for name in $WORKLOADS; do
  case $name in select-only) flag=-S ;; write-mix) flag=-N ;; *) echo "unknown workload $name" >&2; exit 1 ;; esac
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
