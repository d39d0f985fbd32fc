#!/usr/bin/env bash
# Load test against a release build, at 8 and 32 connections, each scenario's
# runs bracketed by ../shared/bench/pg-ceiling (the machine's ceiling for
# one-row committed writes) so that the figure can be reported as a ratio.
#
#   subscribe    POST /v1/subscriptions, a fresh address per request, on
#                SQLite and on PostgreSQL
#   unsubscribe  one-click POST /v1/unsubscribe/{token} (RFC 8058 body) of a
#                confirmed subscriber, a different one per request, on
#                PostgreSQL; the subscribers are seeded with SQL beforehand
#                and their links fetched from /v1/unsubscribe-links
#   check        POST /v1/suppressions/check with the same 10,000 addresses
#                each request, at 2 and 8 connections, on PostgreSQL, amid
#                300,000 other subscribers and entries; reported also as
#                addresses a second
#
#   benches/load.sh [SECONDS] [subscribe|unsubscribe|check|all]   (15 s, all)
#   LISTGUARD_LOAD_BIN=path/to/listguard benches/load.sh ...   (that build)
#   LISTGUARD_LOAD_BACKENDS=postgres benches/load.sh ...       (one backend)
#
# Needs wrk (Debian package `wrk`), jq, and PostgreSQL on 127.0.0.1:5432 (user
# postgres, trust) with pgcrypto (postgresql-contrib) for seeding.
# Everything listens on loopback; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
scenario=${2:-all}
case "$scenario" in subscribe|unsubscribe|check|all) ;; *) echo "load.sh: unknown scenario $scenario" >&2; exit 2 ;; esac
ceiling=../shared/bench/pg-ceiling
command -v wrk >/dev/null || { echo "load.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "load.sh: needs jq (apt-get install jq)" >&2; exit 1; }
[ -x "$ceiling" ] || { echo "load.sh: needs $ceiling" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/listguard-target}"
# LISTGUARD_LOAD_BIN runs a given build instead (to compare two, A/B).
if [ -n "${LISTGUARD_LOAD_BIN:-}" ]; then
  bin=$LISTGUARD_LOAD_BIN
else
  cargo build --release -q
  bin="$CARGO_TARGET_DIR/release/listguard"
fi
work=$(mktemp -d)
# Fixed secrets for the run, so the seeding SQL can compute address hashes.
hash_key=$(head -c 32 /dev/urandom | base64 -w0)
token_key="k1:$(head -c 32 /dev/urandom | base64 -w0)"
sender_key="load-sender-$$"
# shellcheck source=benches/lib.sh
. benches/lib.sh
port=18080
pg_db="lg_bench_$$"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

start_server() { # $1 = database url
  if ! lg_start "$bin" "$1" "$port" "$work/server.log"; then server_pid=$lg_pid; exit 1; fi
  server_pid=$lg_pid
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

# CPU time the whole machine spent (user, nice, system, irq, softirq; every
# process: the service, PostgreSQL, wrk), in clock ticks. Per request it is
# far steadier than req/s on a shared machine: other tenants' load shows up
# as steal, which it leaves out.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
tick_us=$(( 1000000 / $(getconf CLK_TCK) ))

run_wrk() { # $1 = scenario, $2 = connections -> prints "rps p50 p99 non2xx cpu_us_per_request"
  local out t0 t1
  t0=$(busy_ticks)
  if [ "$1" = subscribe ]; then
    out=$(wrk -t2 -c"$2" -d"${secs}s" --latency -s "$work/subscribe.lua" "http://127.0.0.1:$port/v1/subscriptions")
  elif [ "$1" = check ]; then
    out=$(wrk -t2 -c"$2" -d"${secs}s" --latency --timeout 10s -s "$work/check.lua" "http://127.0.0.1:$port" -- "$work/check.json" "$sender_key")
  else
    out=$(wrk -t2 -c"$2" -d"${secs}s" --latency -s "$work/unsubscribe.lua" "http://127.0.0.1:$port" -- "$work/paths-$2.txt" 2 0)
  fi
  t1=$(busy_ticks)
  local rps p50 p99 non2xx requests cpu
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v t="$(( (t1 - t0) * tick_us ))" -v n="$requests" 'BEGIN { printf "%.0f", (n > 0 ? t / n : 0) }')
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$rps $p50 $p99 ${non2xx:-0} $cpu"
}

results=()
record() { # backend scenario conns rps p50 p99 non2xx cpu
  results+=("$*")
}
bracket_and_ratio() { # backend scenario before after: fills in the ratio of those rows
  local backend=$1 scenario=$2 before=$3 after=$4 mean i
  mean=$(( (before + after) / 2 ))
  for i in "${!results[@]}"; do
    read -r b sc c rps p50 p99 non2xx cpu rest <<<"${results[$i]}"
    if [ "$b" = "$backend" ] && [ "$sc" = "$scenario" ] && [ -z "${rest:-}" ]; then
      results[$i]="$b $sc $c $rps $p50 $p99 $non2xx $cpu $before/$after $(awk -v r="$rps" -v m="$mean" 'BEGIN { printf "%.2f", r / m }')"
    fi
  done
}

for backend in ${LISTGUARD_LOAD_BACKENDS:-sqlite postgres}; do
  scenarios=()
  { [ "$scenario" = subscribe ] || [ "$scenario" = all ]; } && scenarios+=(subscribe)
  { [ "$scenario" = unsubscribe ] || [ "$scenario" = all ]; } && [ "$backend" = postgres ] && scenarios+=(unsubscribe)
  { [ "$scenario" = check ] || [ "$scenario" = all ]; } && [ "$backend" = postgres ] && scenarios+=(check)
  [ ${#scenarios[@]} -gt 0 ] || continue
  if [ "$backend" = sqlite ]; then
    url="sqlite://$work/bench.db?mode=rwc"
  else
    "${psql[@]}" -d postgres -c "CREATE DATABASE $pg_db" >/dev/null
    url="postgres://postgres@127.0.0.1:5432/$pg_db"
  fi
  start_server "$url"
  if [[ " ${scenarios[*]} " == *" unsubscribe "* ]]; then
    # Enough people that no run runs out: 12,000 a second is above this machine's ceiling.
    for c in 8 32; do lg_seed_unsubscribers "$c" $(( secs * 12000 )) "$pg_db" "$port"; done
  fi
  if [ "$backend" = postgres ]; then
    # Steady state, not the first seconds of an empty database.
    lg_warm_up "$port" "$pg_db"
  fi
  # Each scenario has a ceiling run on either side. Besides bracketing it
  # more closely, that starts each in the state the ceiling itself is
  # measured in: pg-ceiling's DROP DATABASE forces a checkpoint, so the
  # unsubscribe runs no longer meet the one that the subscribe runs' WAL
  # sets off (max_wal_size).
  before=$("$ceiling" 20 | sed -n 's/^pg_ceiling_tps=//p')
  for sc in "${scenarios[@]}"; do
    conns="8 32"
    if [ "$sc" = check ]; then
      # 10,000 addresses a request: a few at once keep both cores busy.
      conns="2 8"
      # Seeded only now: the service keeps its copy in memory while checks
      # come, and the other scenarios run without one, as they would.
      lg_seed_check "$pg_db" "$port"
    fi
    for c in $conns; do
      read -r rps p50 p99 non2xx cpu < <(run_wrk "$sc" "$c")
      record "$backend" "$sc" "$c" "$rps" "$p50" "$p99" "$non2xx" "$cpu"
    done
    after=$("$ceiling" 20 | sed -n 's/^pg_ceiling_tps=//p')
    bracket_and_ratio "$backend" "$sc" "$before" "$after"
    before=$after
  done
  stop_server
done

echo
echo "${secs}s per run; pg-ceiling before/after each scenario's runs, ratio = req/s over their mean;"
echo "cpu/req = the machine's CPU time (service, PostgreSQL and wrk together) per request, in microseconds"
printf '%-9s %-12s %5s %10s %9s %9s %8s %8s %13s %6s\n' backend scenario conns req/s p50 p99 non-2xx cpu/req ceiling ratio
for r in "${results[@]}"; do
  read -r b sc c rps p50 p99 non2xx cpu ceil ratio <<<"$r"
  printf '%-9s %-12s %5s %10s %9s %9s %8s %8s %13s %6s\n' "$b" "$sc" "$c" "$rps" "$p50" "$p99" "$non2xx" "$cpu" "$ceil" "$ratio"
done
for r in "${results[@]}"; do
  read -r b sc c rps rest <<<"$r"
  [ "$sc" = check ] && awk -v c="$c" -v r="$rps" 'BEGIN { printf "check at %s connections: %.0f addresses/s (10,000 a request)\n", c, r * 10000 }'
done
true
