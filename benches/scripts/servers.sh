# Sourced by the benchmark scripts: starts PostgreSQL (scale 10 pgbench
# data), PgBouncer in session mode and Airlock (token login, sql-guardrails
# pack, masking, recording) on loopback, in a throwaway directory removed on
# exit. Sets: work PGPORT BOUNCER GW PASS TOKEN AIRLOCK pids as_pg.
# PGBOUNCER_WRAP / AIRLOCK_WRAP prefix the two proxies' command lines (a
# profiler, say); AIRLOCK_DURABILITY and AIRLOCK_WORKERS tune Airlock.
# PIN=1 puts the proxies on CPU 1 and PostgreSQL (and, through $on_db, the
# load generator) on CPU 0: the nearest this 2-core machine gets to a gateway
# on its own host, where the proxy's CPU is not taken from the database.
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

on_db=(); on_proxy=()
if [ -n "${PIN:-}" ]; then
  command -v taskset >/dev/null || { echo "PIN=1 needs taskset (util-linux)" >&2; exit 1; }
  on_db=(taskset -c 0); on_proxy=(taskset -c 1)
fi

PGPORT=${PGPORT:-25432}; BOUNCER=${BOUNCER:-26432}; GW=${GW:-27432}
PASS=bench$RANDOM$RANDOM
mkdir "$work/data"; [ "$(id -u)" = 0 ] && chown postgres "$work/data" "$work"
as_pg "$PGBIN/initdb" -D "$work/data" -U postgres -A trust --no-sync >/dev/null
echo "host all all 127.0.0.1/32 scram-sha-256" >> "$work/data/pg_hba.conf"
as_pg "${on_db[@]}" "$PGBIN/postgres" -D "$work/data" -p $PGPORT -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$work" -c max_connections=300 -c fsync=off >"$work/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do psql -h "$work" -p $PGPORT -U postgres -XAtc 'select 1' postgres >/dev/null 2>&1 && break; sleep 0.1; done
psql -h "$work" -p $PGPORT -U postgres -Xq postgres -c "CREATE ROLE bench LOGIN PASSWORD '$PASS'" -c "CREATE DATABASE bench OWNER bench"
PGPASSWORD=$PASS pgbench -h 127.0.0.1 -p $PGPORT -U bench -i -s 10 -q bench >/dev/null 2>&1
# The "range" workload: 100 rows of four columns a statement (400 cells to
# mask, one of them an 84-character text), where select-only returns one.
cat > "$work/range.sql" <<'SQL'
\set aid random(1, 999900)
SELECT aid, bid, abalance, filler FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 99;
SQL

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
as_pg "${on_proxy[@]}" ${PGBOUNCER_WRAP:-} pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
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
"${on_proxy[@]}" ${AIRLOCK_WRAP:-} "$AIRLOCK" --config "$work/airlock.toml" --log warn serve >"$work/airlock.log" 2>&1 &
pids+=($!)
TOKEN=$("$AIRLOCK" --config "$work/airlock.toml" token --sub bench --groups bench --ttl 2h)
# Both proxies answer before any measurement (slow to start under a
# profiler: up to a few minutes under callgrind on a busy machine).
up=no
for _ in $(seq 3000); do
  PGPASSWORD=$PASS psql -h 127.0.0.1 -p $BOUNCER -U bench -XAtc 'select 1' bench >/dev/null 2>&1 &&
    PGPASSWORD=$TOKEN psql -h 127.0.0.1 -p $GW -U bench -XAtc 'select 1' bench >/dev/null 2>&1 && { up=yes; break; }
  sleep 0.1
done
if [ $up != yes ]; then
  echo "the proxies did not start; their logs:" >&2
  tail -20 "$work/pgbouncer.log" "$work/airlock.log" >&2
  exit 1
fi

