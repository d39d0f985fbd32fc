#!/usr/bin/env bash
# Load test against a release build, at 8 and 32 connections, each backend's
# runs bracketed by ../shared/bench/pg-ceiling (the machine's ceiling for
# one-row committed writes) so that the figure can be reported as a ratio.
#
#   subscribe    POST /v1/subscriptions, a fresh address per request, on
#                SQLite and on PostgreSQL
#   unsubscribe  one-click POST /v1/unsubscribe/{token} (RFC 8058 body) of a
#                confirmed subscriber, a different one per request, on
#                PostgreSQL; the subscribers are seeded with SQL beforehand
#                and their links fetched from /v1/unsubscribe-links
#
#   benches/load.sh [SECONDS] [subscribe|unsubscribe|all]   (15 s, all)
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
case "$scenario" in subscribe|unsubscribe|all) ;; *) echo "load.sh: unknown scenario $scenario" >&2; exit 2 ;; esac
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

# Fixed secrets for the run, so the seeding SQL can compute address hashes.
hash_key=$(head -c 32 /dev/urandom | base64 -w0)
token_key="k1:$(head -c 32 /dev/urandom | base64 -w0)"
sender_key="load-sender-$$"
sender_sha=$(printf '%s' "$sender_key" | sha256sum | cut -d' ' -f1)

start_server() { # $1 = database url
  LISTGUARD_DATABASE__URL="$1" \
  LISTGUARD_DATABASE__MAX_CONNECTIONS=32 \
  LISTGUARD_SERVER__BIND="127.0.0.1:$port" \
  LISTGUARD_SERVER__PUBLIC_URL="http://127.0.0.1:$port" \
  LISTGUARD_LIMITS__SUBSCRIBE_PER_IP_PER_MINUTE=100000000 \
  LISTGUARD_SECRETS__HASH_KEY="$hash_key" \
  LISTGUARD_SECRETS__TOKEN_KEYS="[\"$token_key\"]" \
  LISTGUARD_API_KEYS="[{\"name\":\"load\",\"scope\":\"sender\",\"key_sha256\":\"$sender_sha\"}]" \
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

cat >"$work/unsubscribe.lua" <<'LUA'
-- Each wrk thread takes every n-th path of paths.txt, so no two requests
-- unsubscribe the same person.
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  paths = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % tonumber(args[2]) == tid then paths[#paths + 1] = line end
    i = i + 1
  end
  n = 0
end
request = function()
  n = n + 1
  local path = paths[((n - 1) % #paths) + 1]
  return wrk.format("POST", path, {["Content-Type"] = "application/x-www-form-urlencoded"}, "List-Unsubscribe=One-Click")
end
LUA

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
  else
    out=$(wrk -t2 -c"$2" -d"${secs}s" --latency -s "$work/unsubscribe.lua" "http://127.0.0.1:$port" -- "$work/paths-$2.txt" 2)
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

# Seeds $2 confirmed subscribers named u-$1-N@load.example.org into the
# PostgreSQL database $3 and writes their one-click paths to paths-$1.txt.
seed_unsubscribers() {
  local tag=$1 count=$2 db=$3
  "${psql[@]}" -d "$db" -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE EXTENSION IF NOT EXISTS pgcrypto;
WITH people AS (
  INSERT INTO subscribers (email, email_hash, name, locale, restricted, created_at, updated_at)
  SELECT e, encode(hmac(convert_to(lower(e), 'UTF8'), decode('$hash_key', 'base64'), 'sha256'), 'hex'), NULL, 'en', false, now(), now()
  FROM (SELECT 'u-$tag-' || g || '@load.example.org' AS e FROM generate_series(1, $count) g) s
  RETURNING id
)
INSERT INTO subscriptions (subscriber_id, list_slug, status, source, created_at, confirmed_at)
SELECT id, 'newsletter', 'confirmed', 'load', now(), now() FROM people;
SQL
  : >"$work/paths-$tag.txt"
  local from=1
  while [ "$from" -le "$count" ]; do
    local to=$(( from + 9999 < count ? from + 9999 : count ))
    seq "$from" "$to" | jq -R "\"u-$tag-\" + . + \"@load.example.org\"" | jq -s '{list: "newsletter", emails: .}' |
      curl -sf -H "Authorization: Bearer $sender_key" -H 'content-type: application/json' --data-binary @- \
        "http://127.0.0.1:$port/v1/unsubscribe-links" |
      jq -r '.links[].url' | sed "s|^http://127.0.0.1:$port||" >>"$work/paths-$tag.txt"
    from=$(( to + 1 ))
  done
  # Settle the freshly seeded tables now, so that autovacuum does not do it
  # in the middle of the measured runs.
  "${psql[@]}" -d "$db" -c "VACUUM (ANALYZE)" >/dev/null
}

results=()
record() { # backend scenario conns rps p50 p99 non2xx cpu
  results+=("$*")
}
bracket_and_ratio() { # backend before after: fills in the ratio of this backend's rows
  local backend=$1 before=$2 after=$3 mean i
  mean=$(( (before + after) / 2 ))
  for i in "${!results[@]}"; do
    read -r b sc c rps p50 p99 non2xx cpu rest <<<"${results[$i]}"
    if [ "$b" = "$backend" ] && [ -z "${rest:-}" ]; then
      results[$i]="$b $sc $c $rps $p50 $p99 $non2xx $cpu $before/$after $(awk -v r="$rps" -v m="$mean" 'BEGIN { printf "%.2f", r / m }')"
    fi
  done
}

for backend in ${LISTGUARD_LOAD_BACKENDS:-sqlite postgres}; do
  scenarios=()
  [ "$scenario" != unsubscribe ] && scenarios+=(subscribe)
  [ "$scenario" != subscribe ] && [ "$backend" = postgres ] && scenarios+=(unsubscribe)
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
    for c in 8 32; do seed_unsubscribers "$c" $(( secs * 12000 )) "$pg_db"; done
  fi
  if [ "$backend" = postgres ]; then
    # Steady state, not the first seconds of an empty database: a warm-up
    # fills the outbox and the tables, then VACUUM (ANALYZE) does what
    # autovacuum does a minute or two into a real deployment. Without it,
    # the plans that PostgreSQL caches for the service's prepared
    # statements are the ones it made for empty tables, and they stay until
    # the first ANALYZE (docs/performance.md, "Empty-table plans").
    wrk -t2 -c32 -d5s -s "$work/subscribe.lua" "http://127.0.0.1:$port/v1/subscriptions" >/dev/null
    "${psql[@]}" -d "$pg_db" -c "VACUUM (ANALYZE)" >/dev/null
  fi
  before=$("$ceiling" 20 | sed -n 's/^pg_ceiling_tps=//p')
  for sc in "${scenarios[@]}"; do
    for c in 8 32; do
      read -r rps p50 p99 non2xx cpu < <(run_wrk "$sc" "$c")
      record "$backend" "$sc" "$c" "$rps" "$p50" "$p99" "$non2xx" "$cpu"
    done
  done
  after=$("$ceiling" 20 | sed -n 's/^pg_ceiling_tps=//p')
  stop_server
  bracket_and_ratio "$backend" "$before" "$after"
done

echo
echo "${secs}s per run; pg-ceiling before/after each backend's runs, ratio = req/s over their mean;"
echo "cpu/req = the machine's CPU time (service, PostgreSQL and wrk together) per request, in microseconds"
printf '%-9s %-12s %5s %10s %9s %9s %8s %8s %13s %6s\n' backend scenario conns req/s p50 p99 non-2xx cpu/req ceiling ratio
for r in "${results[@]}"; do
  read -r b sc c rps p50 p99 non2xx cpu ceil ratio <<<"$r"
  printf '%-9s %-12s %5s %10s %9s %9s %8s %8s %13s %6s\n' "$b" "$sc" "$c" "$rps" "$p50" "$p99" "$non2xx" "$cpu" "$ceil" "$ratio"
done
