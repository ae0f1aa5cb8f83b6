#!/usr/bin/env bash
# Builds the gateway with profile-guided optimisation (PGO) and prints the
# path of the binary.
#
#   benches/scripts/pgo.sh                  # then: AIRLOCK=<printed path> benches/scripts/pgbench.sh
#
# Three steps: an instrumented release build (`-Cprofile-generate`) serves
# the training load below through servers.sh's PostgreSQL; LLVM's
# llvm-profdata (rustup's llvm-tools component, which matches rustc's LLVM)
# merges what it counted; and the release build is made again with
# `-Cprofile-use`. LLVM then lays out the code a statement runs together,
# inlines along the paths taken and moves the paths never taken out of the
# way. On this project's statement path, which crosses a dozen crates and
# whose instructions start cold on every statement with one client, that is
# worth more than any single part of the path (benches/README.md, "Build:
# profile-guided optimisation").
#
# The training load is what the gateway does for every statement, not the
# benchmark alone: pgbench's select-only, write-mix and 100-row workloads,
# simple and prepared, with 1 and 16 clients, new connections, and psql
# sessions with masked results, denied statements and COPY. A deployment
# with other traffic can train on its own by running the instrumented build
# (kept in $PGO_DIR/gen) under it. The build uses its own target directory
# ($PGO_DIR, default target/pgo): a change of RUSTFLAGS rebuilds every crate.
#
# Needs what pgbench.sh needs (PostgreSQL, pgbench, pgbouncer) and rustup.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${PGO_DIR:-target/pgo}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
triple=$(rustc -vV | awk '/^host:/ {print $2}')
rustup component add llvm-tools >/dev/null 2>&1 || true
profdata=$(ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1)
[ -x "$profdata" ] || { echo "llvm-profdata not found: rustup component add llvm-tools" >&2; exit 1; }

# With an explicit --target, RUSTFLAGS reaches the gateway's crates only, not
# build scripts and proc macros (which would otherwise be instrumented too and
# write profiles of the build itself).
raw="$dir/raw"
rm -rf "$raw"; mkdir -p "$raw"
echo "1/3 instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$raw" cargo build --release --locked -p airlock \
  --target "$triple" --target-dir "$dir/gen" >&2

echo "2/3 training" >&2
(
  AIRLOCK="$dir/gen/$triple/release/airlock"
  . benches/scripts/servers.sh
  run() { PGPASSWORD=$TOKEN pgbench -h 127.0.0.1 -p "$GW" -U bench -n "$@" bench >/dev/null 2>&1; }
  for mode in simple prepared; do
    for c in 1 16; do
      run -S -M $mode -c $c -j $(( c < 2 ? 1 : 2 )) -T 3
      run -N -M $mode -c $c -j $(( c < 2 ? 1 : 2 )) -T 3
      run -f "$work/range.sql" -M $mode -c $c -j $(( c < 2 ? 1 : 2 )) -T 3
    done
  done
  run -S -C -c 4 -T 3
  # What pgbench does not: results that the detectors mask, a denied
  # statement, a COPY each way, a multi-statement query.
  PGPASSWORD=$TOKEN psql -h 127.0.0.1 -p "$GW" -U bench -X bench >/dev/null 2>&1 <<'SQL' || true
CREATE TABLE IF NOT EXISTS pgo_people (id int, email text, card text, note text);
INSERT INTO pgo_people SELECT i, 'user' || i || '@example.com', '4111 1111 1111 1111', 'call +1 415 555 0100' FROM generate_series(1, 200) i;
SELECT * FROM pgo_people WHERE id < 150;
SELECT count(*) FROM pgo_people; SELECT email FROM pgo_people LIMIT 5;
DROP TABLE pgbench_history;
\copy pgo_people TO '/dev/null'
\copy pgo_people FROM PROGRAM 'printf "1\tx@example.com\tcard\tnote\n"'
SQL
  # The gateway writes its profile when it exits (servers.sh stops it with
  # SIGTERM, which it answers with a clean shutdown).
  pkill -TERM -f "$work/airlock.toml" || true
  for _ in $(seq 100); do pgrep -f "$work/airlock.toml" >/dev/null || break; sleep 0.1; done
)
ls "$raw"/*.profraw >/dev/null 2>&1 || { echo "the instrumented gateway wrote no profile" >&2; exit 1; }

echo "3/3 optimised build" >&2
"$profdata" merge -o "$dir/merged.profdata" "$raw"
RUSTFLAGS="-Cprofile-use=$dir/merged.profdata" cargo build --release --locked -p airlock \
  --target "$triple" --target-dir "$dir/use" >&2
echo "$dir/use/$triple/release/airlock"
