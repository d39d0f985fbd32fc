#!/usr/bin/env bash
# A/B of two builds on PostgreSQL, for changes smaller than the noise of
# load.sh. Both builds serve at once, each on its own database with the same
# secrets and the same warm-up; wrk then alternates between them in short
# runs (A B, B A, A B, ...), so that both meet the same minutes of a shared
# machine. It prints each round's req/s and the mean of B over A. An A/A run
# (the same binary twice) shows the noise left: about ±5 % on these machines.
#
#   benches/ab.sh BIN_A BIN_B [subscribe|unsubscribe] [CONNS] [ROUNDS] [SECONDS]
#                 (defaults: subscribe 8 6 5)
#
# Needs wrk, jq and PostgreSQL on 127.0.0.1:5432 (user postgres, trust) with
# pgcrypto for seeding, like load.sh. Everything listens on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
declare -A bin=([a]=$1 [b]=$2)
scenario=${3:-subscribe}; conns=${4:-8}; rounds=${5:-6}; secs=${6:-5}
case "$scenario" in subscribe|unsubscribe) ;; *) echo "ab.sh: unknown scenario $scenario" >&2; exit 2 ;; esac
for x in a b; do [ -x "${bin[$x]}" ] || { echo "ab.sh: ${bin[$x]} is not an executable" >&2; exit 2; }; done
command -v wrk >/dev/null || { echo "ab.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "ab.sh: needs jq (apt-get install jq)" >&2; exit 1; }

work=$(mktemp -d)
hash_key=$(head -c 32 /dev/urandom | base64 -w0)
token_key="k1:$(head -c 32 /dev/urandom | base64 -w0)"
sender_key="ab-sender-$$"
# shellcheck source=benches/lib.sh
. benches/lib.sh
declare -A port=([a]=18101 [b]=18102) db=([a]="lg_ab_a_$$" [b]="lg_ab_b_$$") pid=() offset=([a]=0 [b]=0) sum=([a]=0 [b]=0)
cleanup() {
  for x in "${!pid[@]}"; do kill "${pid[$x]}" 2>/dev/null && wait "${pid[$x]}" 2>/dev/null || true; done
  for x in a b; do "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS ${db[$x]}" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for x in a b; do
  "${psql[@]}" -d postgres -c "CREATE DATABASE ${db[$x]}" >/dev/null
  started=0
  lg_start "${bin[$x]}" "postgres://postgres@127.0.0.1:5432/${db[$x]}" "${port[$x]}" "$work/server-$x.log" && started=1
  pid[$x]=$lg_pid
  [ $started = 1 ] || exit 1
done
for x in a b; do
  if [ "$scenario" = unsubscribe ]; then
    # More people than the runs can use: 12,000 a second is above the ceiling here.
    lg_seed_unsubscribers "$x" $(( rounds * secs * 12000 )) "${db[$x]}" "${port[$x]}"
  fi
  lg_warm_up "${port[$x]}" "${db[$x]}"
done

for r in $(seq 1 "$rounds"); do
  line="round $r:"
  order="a b"; [ $(( r % 2 )) = 0 ] && order="b a"
  for x in $order; do
    if [ "$scenario" = subscribe ]; then
      out=$(wrk -t2 -c"$conns" -d"${secs}s" -s "$work/subscribe.lua" "http://127.0.0.1:${port[$x]}/v1/subscriptions")
    else
      out=$(wrk -t2 -c"$conns" -d"${secs}s" -s "$work/unsubscribe.lua" "http://127.0.0.1:${port[$x]}" -- "$work/paths-$x.txt" 2 "${offset[$x]}")
      # Each of wrk's two threads walks its own half of the paths.
      offset[$x]=$(( ${offset[$x]} + $(awk '/requests in/ {print $1}' <<<"$out") / 2 + conns ))
    fi
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    sum[$x]=$(awk -v s="${sum[$x]}" -v r="$rps" 'BEGIN { print s + r }')
    line="$line ${x^^}=$rps"
  done
  echo "$line"
done
awk -v a="${sum[a]}" -v b="${sum[b]}" -v n="$rounds" -v sc="$scenario" -v c="$conns" \
  'BEGIN { printf "%s, %d connections: mean A=%.0f B=%.0f req/s, B/A=%.3f\n", sc, c, a / n, b / n, b / a }'
