#!/usr/bin/env bash
# What each stage of a statement's path costs, in one run: pgbench through
# PgBouncer, through Airlock as built, and through three experimental builds
# of the same commit that skip a stage (benches/experiments/floor.patch,
# applied to a throwaway worktree, never to the code):
#
#   no-write      records sealed and queued as usual, the log `write` skipped
#   no-recording  no audit record at all (classification, policy and masking still run)
#   passthrough   messages relayed as they arrive: only the runtime, the two
#                 connections and the framing (the floor of this architecture)
#
# The experimental builds are fail-open by design and exist only in the
# temporary worktree. Prints the median TPS of each and its ratio to PgBouncer.
#
#   benches/scripts/floor.sh                       # select-only, simple, 1 and 16 clients, 3 rounds
#   MODES="simple prepared" CLIENTS="1 16 64" ROUNDS=5 benches/scripts/floor.sh
#
# Needs what pgbench.sh needs; builds the patched gateway with the same
# target directory (a few minutes: the workspace's crates and the link) and
# puts the unpatched binary back afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODES=${MODES:-simple}
CLIENTS=${CLIENTS:-"1 16"}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
target=$(realpath "${CARGO_TARGET_DIR:-target}")
full=$target/release/airlock
[ -x "$full" ] || { echo "build first: cargo build --release -p airlock" >&2; exit 1; }

build=$(mktemp -d /tmp/airlock-floor.XXXXXX)
chmod 755 "$build"
cp "$full" "$build/airlock-full"
git worktree add -q --detach "$build/src" HEAD
restore() { cp "$build/airlock-full" "$full"; git worktree remove --force "$build/src" 2>/dev/null || true; }
trap 'restore; rm -rf "$build"' EXIT
git -C "$build/src" apply "$PWD/benches/experiments/floor.patch"
echo "building the experimental gateway (same target directory)..." >&2
cargo build -q --release -p airlock --locked --manifest-path "$build/src/Cargo.toml" --target-dir "$target"
cp "$full" "$build/airlock-floor"
restore
trap 'rm -rf "$build"' EXIT

AIRLOCK=$build/airlock-full
. benches/scripts/servers.sh
trap 'cleanup; rm -rf "$build"' EXIT

variants=(no-write no-recording passthrough)
declare -A port token
for i in "${!variants[@]}"; do
  v=${variants[$i]}
  port[$v]=$((GW + 10 + i))
  sed -e "s/^listen = \"127.0.0.1:$GW\"/listen = \"127.0.0.1:${port[$v]}\"/" \
      -e "s|^data_dir = \"$work/airlock-data\"|data_dir = \"$work/airlock-data-$v\"|" \
      "$work/airlock.toml" > "$work/airlock-$v.toml"
  AIRLOCK_FLOOR=$v "$build/airlock-floor" --config "$work/airlock-$v.toml" --log warn serve >"$work/airlock-$v.log" 2>&1 &
  pids+=($!)
  token[$v]=$("$build/airlock-floor" --config "$work/airlock-$v.toml" token --sub bench --groups bench --ttl 2h)
  for _ in $(seq 100); do
    PGPASSWORD=${token[$v]} psql -h 127.0.0.1 -p "${port[$v]}" -U bench -XAtc 'select 1' bench >/dev/null 2>&1 && break
    sleep 0.1
  done
done

run() { # port password mode clients
  PGPASSWORD=$2 pgbench -h 127.0.0.1 -p "$1" -U bench -n -S -M "$3" -c "$4" -j "$(( $4 < 2 ? 1 : 2 ))" \
    -T "$DURATION" bench 2>&1 | awk '/^tps/ {print int($3)}'
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

printf '%-9s %7s %10s %16s %16s %16s %16s\n' mode clients pgbouncer airlock no-write no-recording passthrough
for mode in $MODES; do
  for c in $CLIENTS; do
    declare -A tps=()
    for _ in $(seq "$ROUNDS"); do
      tps[pgbouncer]+=" $(run "$BOUNCER" "$PASS" "$mode" "$c")"
      tps[airlock]+=" $(run "$GW" "$TOKEN" "$mode" "$c")"
      for v in "${variants[@]}"; do
        tps[$v]+=" $(run "${port[$v]}" "${token[$v]}" "$mode" "$c")"
      done
    done
    # shellcheck disable=SC2086
    b=$(median ${tps[pgbouncer]})
    cells=()
    for t in airlock "${variants[@]}"; do
      # shellcheck disable=SC2086
      m=$(median ${tps[$t]})
      cells+=("$m ($(awk -v a="$m" -v b="$b" 'BEGIN{printf "%.2f", b ? a/b : 0}')x)")
    done
    printf '%-9s %7s %10s %16s %16s %16s %16s\n' "$mode" "$c" "$b" "${cells[@]}"
  done
done
