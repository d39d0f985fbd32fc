#!/usr/bin/env bash
# Load test: subscribe requests per second against a release build, on SQLite
# and on PostgreSQL, with a fresh address per request, at 8 and 32
# connections, bracketed by ../shared/bench/pg-ceiling (the machine's ceiling
# for one-row committed writes) so that the figure can be reported as a ratio.
#
#   benches/load.sh [SECONDS]      (default 15 s per run)
#
# Needs wrk (Debian package `wrk`) and PostgreSQL on 127.0.0.1:5432 (user
# postgres, trust). Everything listens on loopback; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
ceiling=../shared/bench/pg-ceiling
command -v wrk >/dev/null || { echo "load.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -x "$ceiling" ] || { echo "load.sh: needs $ceiling" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/listguard-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/listguard"
work=$(mktemp -d)
port=18080
pg_db="lg_bench_$$"
psql=(psql -X -q -h 127.0.0.1 -U postgres)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/subscribe.lua" <<'LUA'
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  n = 0
  math.randomseed(os.time() + tid)
end
request = function()
  n = n + 1
  local body = string.format('{"email":"load-%d-%d-%d@example.org","consent":true}', tid, n, math.random(1, 1000000000))
  return wrk.format("POST", "/v1/subscriptions", {["Content-Type"] = "application/json"}, body)
end
LUA

start_server() { # $1 = database url
  LISTGUARD_DATABASE__URL="$1" \
  LISTGUARD_DATABASE__MAX_CONNECTIONS=32 \
  LISTGUARD_SERVER__BIND="127.0.0.1:$port" \
  LISTGUARD_LIMITS__SUBSCRIBE_PER_IP_PER_MINUTE=100000000 \
  RUST_LOG=warn \
    "$bin" serve >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "load.sh: the server did not start" >&2; cat "$work/server.log" >&2; exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

run_wrk() { # $1 = connections -> prints "rps p50 p99"
  local out
  out=$(wrk -t2 -c"$1" -d"${secs}s" --latency -s "$work/subscribe.lua" "http://127.0.0.1:$port/v1/subscriptions")
  local rps p50 p99 non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$rps $p50 $p99 ${non2xx:-0}"
}

results=()
for backend in sqlite postgres; do
  if [ "$backend" = sqlite ]; then
    url="sqlite://$work/bench.db?mode=rwc"
  else
    "${psql[@]}" -d postgres -c "CREATE DATABASE $pg_db" >/dev/null
    url="postgres://postgres@127.0.0.1:5432/$pg_db"
  fi
  start_server "$url"
  before=$("$ceiling" 20 | sed -n 's/^pg_ceiling_tps=//p')
  for c in 8 32; do
    read -r rps p50 p99 non2xx < <(run_wrk "$c")
    results+=("$backend $c $rps $p50 $p99 $non2xx")
  done
  after=$("$ceiling" 20 | sed -n 's/^pg_ceiling_tps=//p')
  stop_server
  mean=$(( (before + after) / 2 ))
  for i in "${!results[@]}"; do
    read -r b c rps p50 p99 non2xx <<<"${results[$i]}"
    if [ "$b" = "$backend" ] && [ "${#results[$i]}" -gt 0 ] && ! grep -q ceiling <<<"${results[$i]}"; then
      ratio=$(awk -v r="$rps" -v m="$mean" 'BEGIN { printf "%.2f", r / m }')
      results[$i]="$b $c $rps $p50 $p99 $non2xx ceiling=$before/$after ratio=$ratio"
    fi
  done
done

echo
echo "subscribe, ${secs}s per run, fresh address per request"
printf '%-9s %5s %10s %9s %9s %8s  %s\n' backend conns req/s p50 p99 non-2xx "pg-ceiling before/after, ratio to their mean"
for r in "${results[@]}"; do
  read -r b c rps p50 p99 non2xx ceil ratio <<<"$r"
  printf '%-9s %5s %10s %9s %9s %8s  %s %s\n' "$b" "$c" "$rps" "$p50" "$p99" "$non2xx" "${ceil#ceiling=}" "$ratio"
done
