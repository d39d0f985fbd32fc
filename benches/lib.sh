# Shared by load.sh and ab.sh: the wrk scripts, a server started on a
# database, and seeded unsubscribers. Source it after setting
#   work      a scratch directory
#   hash_key, token_key, sender_key   the run's fixed secrets
psql=(psql -X -q -h 127.0.0.1 -U postgres)
sender_sha=$(printf '%s' "$sender_key" | sha256sum | cut -d' ' -f1)

# Both wrk scripts number their threads (tid) the same way.
wrk_threads='local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end'

{ echo "$wrk_threads"; cat <<'LUA'
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
} >"$work/subscribe.lua"

{ echo "$wrk_threads"; cat <<'LUA'
-- Each wrk thread takes every n-th path of paths.txt, so no two requests
-- unsubscribe the same person; a run starts at the offset given (the paths
-- before it were used by earlier runs).
function init(args)
  paths = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % tonumber(args[2]) == tid then paths[#paths + 1] = line end
    i = i + 1
  end
  n = tonumber(args[3] or "0")
end
request = function()
  n = n + 1
  local path = paths[((n - 1) % #paths) + 1]
  return wrk.format("POST", path, {["Content-Type"] = "application/x-www-form-urlencoded"}, "List-Unsubscribe=One-Click")
end
LUA
} >"$work/unsubscribe.lua"

{ echo "$wrk_threads"; cat <<'LUA'
-- The same bulk check (the JSON body in the file given) on every request.
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  req = wrk.format("POST", "/v1/suppressions/check", {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[2]}, body)
end
request = function()
  return req
end
LUA
} >"$work/check.lua"

# lg_start BIN DATABASE_URL PORT LOG: starts the service in the background
# (its pid in $lg_pid) and waits until it answers.
lg_start() {
  LISTGUARD_DATABASE__URL="$2" \
  LISTGUARD_DATABASE__MAX_CONNECTIONS=32 \
  LISTGUARD_SERVER__BIND="127.0.0.1:$3" \
  LISTGUARD_SERVER__PUBLIC_URL="http://127.0.0.1:$3" \
  LISTGUARD_LIMITS__SUBSCRIBE_PER_IP_PER_MINUTE=100000000 \
  LISTGUARD_SECRETS__HASH_KEY="$hash_key" \
  LISTGUARD_SECRETS__TOKEN_KEYS="[\"$token_key\"]" \
  LISTGUARD_API_KEYS="[{\"name\":\"load\",\"scope\":\"sender\",\"key_sha256\":\"$sender_sha\"}]" \
  RUST_LOG=warn \
    "$1" serve >"$4" 2>&1 &
  lg_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$3/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "the server did not start" >&2; cat "$4" >&2; return 1
}

# lg_seed_unsubscribers TAG COUNT DB PORT: seeds COUNT confirmed subscribers
# named u-TAG-N@load.example.org into the PostgreSQL database DB and writes
# their one-click paths, asked of the service on PORT, to $work/paths-TAG.txt.
lg_seed_unsubscribers() {
  local tag=$1 count=$2 db=$3 port=$4
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

# lg_warm_up PORT DB: five seconds of signups, then VACUUM (ANALYZE), so that
# the plans PostgreSQL caches for the prepared statements are made with the
# statistics of a deployment that has been up a few minutes, not of empty
# tables (docs/performance.md, "Empty-table plans").
lg_warm_up() {
  wrk -t2 -c32 -d5s -s "$work/subscribe.lua" "http://127.0.0.1:$1/v1/subscriptions" >/dev/null
  "${psql[@]}" -d "$2" -c "VACUUM (ANALYZE)" >/dev/null
}

# lg_seed_check DB PORT: for the bulk check, 10,000 addresses r-N@load.example.org
# (a third confirmed subscribers of newsletter, a third suppressed for it, a
# third unknown) amid 300,000 other confirmed subscribers and 300,000 other
# entries; writes the request body to $work/check.json. Then waits until the
# service on PORT answers a check from its copy in memory, that is until the
# copy has caught up with the seeding.
lg_seed_check() {
  local db=$1 port=$2
  "${psql[@]}" -d "$db" -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TEMP TABLE readers AS
  SELECT g, e, encode(hmac(convert_to(lower(e), 'UTF8'), decode('$hash_key', 'base64'), 'sha256'), 'hex') AS h
  FROM (SELECT g, 'r-' || g || '@load.example.org' AS e FROM generate_series(1, 10000) g) s;
WITH people AS (
  INSERT INTO subscribers (email, email_hash, locale, restricted, created_at, updated_at)
  SELECT e, h, 'en', false, now(), now() FROM readers WHERE g % 3 = 0
  UNION ALL
  SELECT 'bg-' || g || '@load.example.org', md5('p' || g) || md5('q' || g), 'en', false, now(), now()
  FROM generate_series(1, 300000) g
  RETURNING id
)
INSERT INTO subscriptions (subscriber_id, list_slug, status, source, created_at, confirmed_at)
SELECT id, 'newsletter', 'confirmed', 'load', now(), now() FROM people;
INSERT INTO suppressions (email_hash, scope, reason, source, created_at, expires_at)
SELECT h, 'newsletter', 'unsubscribed', 'admin', now(), now() + interval '30 days' FROM readers WHERE g % 3 = 1
UNION ALL
SELECT md5('s' || g) || md5('t' || g), 'newsletter', 'unsubscribed', 'admin', now(), now() + interval '30 days'
FROM generate_series(1, 300000) g;
SQL
  "${psql[@]}" -d "$db" -c "VACUUM (ANALYZE)" >/dev/null
  seq 1 10000 | jq -R '"r-" + . + "@load.example.org"' | jq -cs '{list: "newsletter", emails: .}' >"$work/check.json"
  local memory
  for _ in $(seq 1 120); do
    curl -sf -o /dev/null -H "Authorization: Bearer $sender_key" -H 'content-type: application/json' \
      --data-binary @"$work/check.json" "http://127.0.0.1:$port/v1/suppressions/check"
    memory=$(curl -sf "http://127.0.0.1:$port/metrics" | sed -n 's/^listguard_bulk_checks_total{by="memory"} //p')
    [ "${memory:-0}" -gt 0 ] && return 0
  done
  echo "lg_seed_check: the service never answered a check from memory" >&2
  return 1
}
