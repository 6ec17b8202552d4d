#!/usr/bin/env bash
# hastack's web node side by side with nginx (Debian's): static files, gzip, and a page
# proxied from one app node with and without a microcache. Printed as requests per
# CPU-second of the server (utime+stime of all its threads and processes, from
# /proc/PID/stat): fair on a small shared machine, where plain req/s mostly shows how
# the CPU was shared out between the server, the app node and the load generator.
# Target: hastack at 1.2x nginx's requests per CPU-second on every row.
#
# Both servers run one thread of request handling: nginx with `worker_processes 1`
# (the CPU of the master, the worker and, with the microcache, the cache manager and
# loader is counted; the RSS is the worker's); hastack's web node is one process (a
# current-thread tokio runtime; all of its threads are counted). Both serve the same
# files from the same directory (hastack's `[web] root`, nginx's `root`), route nginx's
# way (`try_files $uri @app`: a file if the path names one, else the app), write no
# access log, and proxy everything else over pooled keep-alive HTTP/1.1 connections to
# the same app node (hastack app1 on embedded SQLite, seeded with 20 posts), adding
# X-Forwarded-For and X-Forwarded-Proto. nginx: `sendfile on`, `open_file_cache` (it
# keeps descriptors and stat results; hastack holds the files in memory, read at
# start), `upstream app { keepalive 64; }`, no health checks (open-source nginx has
# none); hastack checks the app's /healthz every 200 ms (its default).
#
# Rows, all keep-alive, wrk -t2 -c64:
#   1-3. a static file of 1 KiB (text), 100 KiB and 1 MiB (random bytes, incompressible)
#   4.   a compressible 100 KiB text file (generated CSS), requested with
#        `Accept-Encoding: gzip`; both must answer `Content-Encoding: gzip`. nginx
#        compresses on the fly at its default level 1 (`gzip on; gzip_types text/plain
#        text/css ...; gzip_min_length 1024`, gzip_comp_level left at 1); hastack
#        (`compress = true`, `compress_min_bytes = 1024`) compresses the file
#        itself and may do it once at load and keep the result: that is the design
#        difference measured here (nginx's like-for-like would be gzip_static with .gz
#        files made beforehand, which is not what this row runs). The bytes of each
#        server's answer are printed, since a higher level makes smaller answers. wrk
#        accepts gzip only, so no other coding hastack may offer is used.
#   5.   GET /api/posts?limit=20 (the app's JSON, ~3.9 KB) with a 1 s microcache:
#        nginx `proxy_cache` with `proxy_cache_valid 200 1s; proxy_cache_lock on;
#        proxy_cache_use_stale updating error timeout;` (cache files under the work
#        directory), hastack `[web.cache] ttl_ms = 1000`.
#   6.   the same page with no cache on either: every request reaches the app.
# Rows 5-6 also print the app node's CPU-seconds of each run (not counted in the ratio):
# with the microcache it should be about one request per second's worth.
#
# Both servers are started afresh before each row with that row's config (hastack:
# web-cache.toml for row 5, web-nocache.toml otherwise; not timed), so the peak RSS
# (VmHWM) is the row's. The app node runs throughout. Before measuring, each server's
# answer is checked with curl (200, the expected bytes; row 4: Content-Encoding: gzip,
# decompressing to the file).
#
# Every run is preceded by a 2 s warm-up of the same load and measured for DUR seconds;
# the servers take turns (the first one alternates per round). Per row: medians over the
# rounds of req/s, CPU-s, req per CPU-s, p50 and p99 latency (wrk --latency); the peak
# RSS of each server (VmHWM) after the row; the median and min-max over the rounds of
# the ratio hastack/nginx of req per CPU-s.
#
# Needs: nginx-light wrk curl bc gzip (apt-get install -y nginx-light wrk curl bc).
# Addresses: 127.0.94.0/24, ports 34xxx; nothing outside loopback.
# Usage: bench/web.sh [seconds per run, default 10] [rounds, default 3]
#   HASTACK=path/to/hastack to use a binary other than target/release/hastack;
#   KEEP=1 keeps the work directory (logs, configs); ROWS="1 2 ..." picks rows (1-6).
# Takes about (DUR+2) * 2 * ROUNDS * 6 seconds plus a few seconds of restarts: 8 minutes
# by default.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-3}
ROWS=${ROWS:-1 2 3 4 5 6}
for bin in nginx wrk curl bc gzip; do
  command -v "$bin" >/dev/null || { echo "bench: $bin missing: apt-get install -y nginx-light wrk curl bc" >&2; exit 1; }
done
HASTACK=${HASTACK:-$PWD/target/release/hastack}
[ -x "$HASTACK" ] || cargo build --release -p hastack
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_dir hsweb

NET=127.0.94
WEB_PORT=34081; APP_PORT=34082; ADMIN_PORT=34090
WEB_ADDR=$NET.1; NGX_ADDR=$NET.2; APP_ADDR=$NET.5
CONNS=64

# The files both servers serve.
mkdir -p "$W/www/static" "$W/state"
head -c 1024 /dev/urandom | base64 -w 0 | head -c 1024 > "$W/www/static/1k.txt"
head -c 102400 /dev/urandom > "$W/www/static/100k.bin"
head -c 1048576 /dev/urandom > "$W/www/static/1m.bin"
# 100 KiB of stylesheet: repetitive like real CSS (selectors, properties, colours), not a
# single repeated line; gzip -1 makes about a quarter of it, gzip -9 a sixth.
awk 'BEGIN {
  srand(7); n = split("div p a li ul nav header footer section article span button input", tag)
  m = split("margin padding border-width gap top left font-size line-height", prop)
  k = split("color background-color border-color outline-color", col)
  total = 102400; out = ""
  for (i = 1; length(out) < total; i++) {
    rule = sprintf(".c%d > %s:hover, #id-%d %s {\n  %s: %dpx %dpx;\n  %s: #%06x;\n  display: %s;\n}\n",
      i, tag[int(rand() * n) + 1], int(rand() * 500), tag[int(rand() * n) + 1],
      prop[int(rand() * m) + 1], int(rand() * 40), int(rand() * 40),
      col[int(rand() * k) + 1], int(rand() * 16777216), (rand() < 0.5 ? "block" : "flex"))
    out = out rule
  }
  printf "%s", substr(out, 1, total)
}' > "$W/www/static/100k.css"
size() { if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi; }

# topology EXTRA: the topology with web1 and app1 (lb1 and db1 are named but not run),
# plain HTTP between tiers, then EXTRA (the web node's settings).
topology() {
cat <<TOML
[site]
name = "bench"
state_dir = "$W/state"
[vip]
address = "$NET.100"
port = 34080
https_port = 0
[ports]
admin = $ADMIN_PORT
web = $WEB_PORT
web_https = 34444
app = $APP_PORT
db = 34086
vrrp = 34087
raft = 34088
[tls]
internal = false
[http]
access_log = "off"
[[node]]
name = "lb1"
role = "lb"
address = "$NET.10"
priority = 150
[[node]]
name = "web1"
role = "web"
address = "$WEB_ADDR"
[[node]]
name = "app1"
role = "app"
address = "$APP_ADDR"
[[node]]
name = "db1"
role = "db"
address = "$NET.6"
$1
TOML
}
WEB_SETTINGS="[web]
root = \"$W/www\"
compress = true
compress_min_bytes = 1024"
topology "" > "$W/app.toml"
topology "$WEB_SETTINGS" > "$W/web-nocache.toml"
topology "$WEB_SETTINGS
[web.cache]
ttl_ms = 1000" > "$W/web-cache.toml"
for f in app web-nocache web-cache; do "$HASTACK" check --config "$W/$f.toml" > /dev/null; done

# nginx_conf cache|nocache
nginx_conf() {
  local cache_path="" cache=""
  if [ "$1" = cache ]; then
    cache_path="proxy_cache_path $W/nginx-cache levels=1:2 keys_zone=micro:10m max_size=64m inactive=10s use_temp_path=off;"
    cache="proxy_cache micro;
      proxy_cache_valid 200 1s;
      proxy_cache_lock on;
      proxy_cache_use_stale updating error timeout;"
  fi
cat <<NGX
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 8192; }
worker_rlimit_nofile 20000;
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  gzip on;
  gzip_types text/plain text/css application/javascript application/json image/svg+xml;
  gzip_min_length 1024;
  proxy_temp_path $W/nginx-tmp;
  $cache_path
  upstream app {
    server $APP_ADDR:$APP_PORT;
    keepalive 64;
  }
  server {
    listen $NGX_ADDR:$WEB_PORT backlog=4096;
    root $W/www;
    location / { try_files \$uri @app; }
    location @app {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      $cache
    }
  }
}
NGX
}
nginx_conf nocache > "$W/nginx-nocache.conf"
nginx_conf cache > "$W/nginx-cache.conf"
for c in nocache cache; do nginx -t -q -c "$W/nginx-$c.conf" 2>> "$W/nginx.err" || { cat "$W/nginx.err" >&2; exit 1; }; done

ulimit -n 20000 2>/dev/null || true

# The app node, for the whole run, on SQLite (what `hastack up` does without mariadbd).
setsid "$HASTACK" node app1 --config "$W/app.toml" --state-dir "$W/state" --sqlite "$W/state/app.sqlite" \
  > "$W/app1.log" 2>&1 & APP_PID=$!; pids+=("$APP_PID")
until_ok 20 "app1" curl -fs "http://$APP_ADDR:$APP_PORT/healthz"
for i in $(seq 1 20); do
  curl -fs -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"author\": \"bench$i\", \"body\": \"post $i of the web bench: a line or two of text, as a user would write it, with some words to make it look like one.\"}" \
    "http://$APP_ADDR:$APP_PORT/api/posts"
done
PAGE='/api/posts?limit=20'
curl -fs "http://$APP_ADDR:$APP_PORT$PAGE" > "$W/page.json"
grep -q '"bench20"' "$W/page.json" || { echo "bench: app1 did not list the seeded posts" >&2; exit 1; }

WEB_PID=; NGX_PID=; NGX_WORKER=
children() { cat "/proc/$1/task/"*/children 2>/dev/null || true; }   # PID's child processes
stop() { # stop PID: SIGTERM, then wait for it (nginx's master takes its workers along)
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# start_servers cache|nocache: both servers afresh with that config; waits until both
# answer a static file and the proxied page.
start_servers() {
  stop "$WEB_PID"; stop "$NGX_PID"
  pids=("$APP_PID")
  rm -rf "$W/nginx-cache"
  setsid nginx -c "$W/nginx-$1.conf" & NGX_PID=$!; pids+=("$NGX_PID")
  setsid "$HASTACK" node web1 --config "$W/web-$1.toml" --state-dir "$W/state" >> "$W/web1.log" 2>&1 & WEB_PID=$!; pids+=("$WEB_PID")
  local s p
  for s in "$WEB_ADDR" "$NGX_ADDR"; do
    until_ok 20 "http://$s:$WEB_PORT/static/1k.txt" curl -fs "http://$s:$WEB_PORT/static/1k.txt"
    until_ok 20 "http://$s:$WEB_PORT$PAGE" curl -fs "http://$s:$WEB_PORT$PAGE"
  done
  NGX_WORKER=
  for p in $(children "$NGX_PID"); do
    if grep -q 'worker process' "/proc/$p/cmdline" 2>/dev/null; then NGX_WORKER=$p; fi
  done
  [ -n "$NGX_WORKER" ] || { echo "bench: no nginx worker process under $NGX_PID" >&2; exit 1; }
  echo "   (started: hastack web1 pid $WEB_PID, $(awk '/^Threads:/ {print $2}' "/proc/$WEB_PID/status") threads; nginx master $NGX_PID and $(children "$NGX_PID" | wc -w) processes under it)"
}

# check_answer URL_PATH EXPECTED_FILE [gzip]: both servers answer 200 with the file's bytes
# (gzip: with Content-Encoding: gzip, decompressing to them); prints each one's size.
check_answer() {
  local path=$1 want=$2 mode=${3:-} s name code bad="" sizes=""
  for s in "$WEB_ADDR" "$NGX_ADDR"; do
    name=hastack; [ "$s" = "$NGX_ADDR" ] && name=nginx
    rm -f "$W/check.head" "$W/check.body"
    if [ "$mode" = gzip ]; then
      code=$(curl -s -H 'Accept-Encoding: gzip' -D "$W/check.head" -o "$W/check.body" -w '%{http_code}' "http://$s:$WEB_PORT$path" || true)
      if ! grep -qi '^content-encoding: *gzip' "$W/check.head"; then
        bad="$bad\n  $name answered $path ($code) without Content-Encoding: gzip:\n$(sed 's/\r$//; s/^/    /' "$W/check.head")"
      elif ! gzip -dc < "$W/check.body" 2>/dev/null | cmp -s - "$want"; then
        bad="$bad\n  $name's gzip answer for $path does not decompress to the file"
      fi
    else
      code=$(curl -s -o "$W/check.body" -w '%{http_code}' "http://$s:$WEB_PORT$path" || true)
      cmp -s "$W/check.body" "$want" \
        || bad="$bad\n  $name answered $path with $(size "$W/check.body") bytes, not the $(size "$want") expected"
    fi
    [ "$code" = 200 ] || bad="$bad\n  $name answered $path with $code"
    sizes="$sizes, $name $(size "$W/check.body")"
  done
  [ -z "$bad" ] || { printf 'bench: wrong answers:%b\n' "$bad" >&2; exit 1; }
  echo "   (checked: 200 and the right bytes from both; bytes per answer:${sizes#,})"
}

echo "bench: ${DUR}s per run, $ROUNDS rounds, $(nproc) cores, $(uname -r)"
echo "  $(nginx -v 2>&1) (1 worker)"
echo "  $(wrk -v 2>&1 | head -1)"
echo "  hastack: $HASTACK ($("$HASTACK" --version 2>/dev/null || echo '?'))"
echo "  app1 (SQLite, 20 posts): $PAGE is $(size "$W/page.json") bytes"
echo

RESULTS=$W/results   # row server round requests cpu_s p50_ms p99_ms rss_kib
: > "$RESULTS"

# ms VALUE: a wrk latency ("812.00us", "1.23ms", "2.10s") in milliseconds.
ms() { echo "$1" | awk '{v=$1+0; if ($1 ~ /us$/) v/=1000; else if ($1 ~ /ms$/) v=v; else if ($1 ~ /s$/) v*=1000; print v}'; }

# snap PID: "pid:ticks" for PID and each of its child processes (nginx: the master, its
# worker and, with a cache, the cache manager and loader, which exits after a minute).
snap() {
  local p t
  for p in "$1" $(children "$1"); do
    t=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null) && [ -n "$t" ] && echo "$p:$t"
  done
  return 0
}
# used "SNAP0" "SNAP1": the ticks used in between by the processes in both.
used() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, ":"); t0[kv[1]] = kv[2] }
    n = split(b, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, ":"); if (kv[1] in t0) s += kv[2] - t0[kv[1]] }
    print s + 0 }'
}

# measure ROW SERVER ROUND URL_PATH [wrk args]
measure() {
  local row=$1 server=$2 round=$3 path=$4; shift 4
  local pid=$WEB_PID rsspid=$WEB_PID addr=$WEB_ADDR
  [ "$server" = nginx ] && { pid=$NGX_PID; rsspid=$NGX_WORKER; addr=$NGX_ADDR; }
  local url="http://$addr:$WEB_PORT$path" out=$W/out.$row.$server.$round s0 s1 a0 a1
  wrk -t2 -c"$CONNS" -d2s "$@" "$url" > "$out.warm" 2>&1
  s0=$(snap "$pid"); a0=$(ticks "$APP_PID")
  wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$@" "$url" > "$out" 2>&1
  s1=$(snap "$pid"); a1=$(ticks "$APP_PID")
  local reqs p50 p99 cpu eff rss errs app=
  reqs=$(awk '/requests in/ {r=$1} /Non-2xx/ {n=$NF} END {print r-n}' "$out")
  p50=$(ms "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(ms "$(awk '$1 == "99%" {print $2}' "$out")")
  cpu=$(echo "scale=3; $(used "$s0" "$s1")/$HZ" | bc)
  eff=$(awk -v r="$reqs" -v c="$cpu" 'BEGIN {print (c > 0 ? r / c : 0)}')
  rss=$(rss_kib "$rsspid")
  errs=$(grep -hE 'Non-2xx|Socket errors' "$out" | tr -s ' \n' ' ' || true)
  [ "$row" -ge 5 ] && app=$(echo "scale=2; ($a1-$a0)/$HZ" | bc)
  printf '  row %s round %s %-8s %8d requests %7.2f CPU-s %8.0f req/CPU-s  p50 %6.2f ms  p99 %7.2f ms%s%s\n' \
    "$row" "$round" "$server" "$reqs" "$cpu" "$eff" "$p50" "$p99" \
    "${app:+  (app1 $app CPU-s)}" "${errs:+  !! $errs}"
  echo "$row $server $round $reqs $cpu $p50 $p99 $rss" >> "$RESULTS"
}

# run_row ROW URL_PATH [wrk args]: every round, both servers, the first alternating.
run_row() {
  local row=$1 path=$2 r order s; shift 2
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="nginx hastack"; else order="hastack nginx"; fi
    for s in $order; do measure "$row" "$s" "$r" "$path" "$@"; done
  done
}

GZIP=(-H "Accept-Encoding: gzip")
if has 1; then
  echo "1. static 1 KiB file"; start_servers nocache
  check_answer /static/1k.txt "$W/www/static/1k.txt"; run_row 1 /static/1k.txt
fi
if has 2; then
  echo "2. static 100 KiB file (random bytes)"; start_servers nocache
  check_answer /static/100k.bin "$W/www/static/100k.bin"; run_row 2 /static/100k.bin
fi
if has 3; then
  echo "3. static 1 MiB file (random bytes)"; start_servers nocache
  check_answer /static/1m.bin "$W/www/static/1m.bin"; run_row 3 /static/1m.bin
fi
if has 4; then
  echo "4. 100 KiB CSS with Accept-Encoding: gzip (nginx on the fly, level 1)"; start_servers nocache
  check_answer /static/100k.css "$W/www/static/100k.css" gzip; run_row 4 /static/100k.css "${GZIP[@]}"
fi
if has 5; then
  echo "5. proxied $PAGE, 1 s microcache"; start_servers cache
  check_answer "$PAGE" "$W/page.json"; run_row 5 "$PAGE"
fi
if has 6; then
  echo "6. proxied $PAGE, no cache"; start_servers nocache
  check_answer "$PAGE" "$W/page.json"; run_row 6 "$PAGE"
fi
echo

echo "Summary: medians over $ROUNDS rounds of ${DUR}s, wrk -t2 -c$CONNS keep-alive; ratio = req per CPU-s"
echo "of hastack over nginx in the same round (target: 1.2 on every row); RSS = the server's peak"
echo "resident memory (VmHWM; nginx: its worker) after the row"
ratio_table "$RESULTS" bars nginx 22 "rps:7 cpu:6 eff:9 p50:6 p99:7 rss:6" \
  "1=1 static 1 KiB" "2=2 static 100 KiB" "3=3 static 1 MiB" \
  "4=4 gzip 100 KiB CSS" "5=5 proxied, microcache" "6=6 proxied, no cache"

echo
echo "warnings/errors in the logs:"
log_warnings "$W"/web1.log "$W"/app1.log "$W"/nginx.err
