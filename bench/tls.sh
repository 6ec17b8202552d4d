#!/usr/bin/env bash
# hastack's TLS termination side by side with HAProxy (Debian's, on OpenSSL), printed as
# requests per CPU-second of the proxy process (utime+stime of all its threads, from
# /proc/PID/stat), which is fair on a small shared machine where plain req/s mostly
# shows how the CPU was shared out between the proxy, the backend and the load generator.
#
# Both proxies run one thread of request handling: HAProxy with `nbthread 1`; hastack's
# lb node is one process (a current-thread tokio runtime for the proxy plus the VRRP
# thread; all of its threads are counted). Both terminate TLS on the same ECDSA P-256
# certificate (made by `hastack pki init`), offer h2 and http/1.1 by ALPN, TLS 1.2 and
# 1.3, session tickets and a session-id cache, and forward plain HTTP/1.1 over pooled
# keep-alive connections to the same nginx (1 worker) serving a 1 KiB file.
#
# Rows, and the load generator of each:
#   1. keep-alive HTTPS, HTTP/1.1: wrk (-t2 -c$CONNS); one TLS handshake per connection,
#      then requests. wrk sends the IP as SNI (it has no option for a name); both
#      proxies then serve their default (only) certificate.
#   2. keep-alive HTTPS, HTTP/2: h2load (nghttp2-client) -t2 -c8 -m8 (64 streams in
#      flight, like row 1), ALPN h2, SNI = the site name via --connect-to.
#   3. a new TLS connection per request, full handshake: `openssl s_time -new`. It
#      connects, does a full handshake (no session offered), sends
#      `GET /static/1k.txt HTTP/1.0`, reads until the server closes, and starts over.
#      h2load cannot do this (it keeps its connections and has no per-request
#      reconnect), wrk neither. s_time is single-threaded and does as much crypto as the
#      server, so 2 run in parallel; on 2 cores they still cannot saturate the proxy
#      (see the CPU-s per run): these rows compare CPU per request, not peak rates.
#      s_time sends no SNI and no ALPN (HTTP/1.0 request, the proxy closes after it).
#   4. a new TLS connection per request, resumed: `openssl s_time -reuse`, the same
#      with each connection resuming the session of the previous one (TLS 1.3: by
#      ticket, PSK with (EC)DHE, no certificate signature). The script checks from
#      s_time's per-connection marks ('r' = resumed) that the connections did resume.
#      Rows 3-4 negotiate TLS 1.3 (both sides' default); TLS 1.2 and the session-id
#      cache are not measured (s_time cannot turn tickets off).
#   5. the cost of internal mTLS in a whole stack: `hastack up` (SQLite, loopback, one
#      lb, two web, two app nodes) once with `[tls] internal = true` (lb→web and web→app
#      over mutual TLS with the internal CA) and once with `internal = false`, started
#      one after the other in each round; wrk keep-alive on the VIP's plain HTTP port
#      for a static file (answered by a web node) and for /api/posts (answered by an app
#      node), in requests per CPU-second of all the stack's node processes (lb1, web1,
#      web2, app1, app2; from `hastack status --json`). The ratio is internal=true over
#      internal=false.
#
# Every run is preceded by a 2 s warm-up of the same load and measured for DUR seconds;
# the proxies take turns (the first one alternates per round). The table shows medians
# over the rounds, and the median and min–max of the per-round ratio.
#
# Needs: haproxy nginx-light wrk nghttp2-client openssl curl python3 bc
#   (apt-get install -y haproxy nginx-light wrk nghttp2-client)
# Addresses: 127.0.96.0/24 (rows 1-4), 127.0.95.0/24 and 127.0.94.0/24 (row 5), ports
# 31xxx/32xxx; nothing outside loopback.
# Usage: bench/tls.sh [seconds per run, default 10] [rounds, default 3] [connections, default 64]
#   HASTACK=path/to/hastack to use a binary other than target/release/hastack;
#   KEEP=1 keeps the work directory (logs, configs); ROWS="1 2 3 4 5" picks rows.
# Takes about (DUR+2) * 8 * ROUNDS + ~45 * ROUNDS seconds: 8 minutes by default.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-3}
CONNS=${3:-64}
ROWS=${ROWS:-1 2 3 4 5}
for bin in haproxy nginx wrk h2load openssl curl python3 bc; do
  command -v "$bin" >/dev/null || { echo "bench: $bin missing: apt-get install -y haproxy nginx-light wrk nghttp2-client" >&2; exit 1; }
done
HASTACK=${HASTACK:-$PWD/target/release/hastack}
[ -x "$HASTACK" ] || cargo build --release -p hastack
SITE_DIR=$PWD/site
. bench/lib.sh
bench_dir hstls

RESULTS=$W/results   # row proxy round requests cpu_seconds
: > "$RESULTS"

# measure ROW PROXY ROUND PIDS KIND ARGS...: a warm-up, then the measured run; records
# the requests it completed and the CPU-seconds the PIDS used meanwhile.
measure() {
  local row=$1 proxy=$2 round=$3 pidlist=$4 kind=$5; shift 5
  local out=$W/out.$row.$proxy.$round t0 t1 reqs
  load "$kind" 2 "$out.warm" "$@"
  t0=$(ticks $pidlist)
  load "$kind" "$DUR" "$out" "$@"
  t1=$(ticks $pidlist)
  reqs=$(count "$kind" "$out")
  local cpu; cpu=$(echo "scale=3; ($t1-$t0)/$HZ" | bc)
  printf '  row %s round %s %-8s %8d requests %7.2f CPU-s %8.0f req/CPU-s%s\n' "$row" "$round" "$proxy" \
    "$reqs" "$cpu" "$(echo "$reqs/$cpu" | bc -l)" "$(note "$kind" "$out")"
  echo "$row $proxy $round $reqs $cpu" >> "$RESULTS"
}

# load KIND SECONDS OUT ARGS...: one run of a load generator, its output in OUT(.N).
load() {
  local kind=$1 secs=$2 out=$3; shift 3
  case $kind in
    wrk) wrk -t2 -c"$CONNS" -d"${secs}s" "$@" > "$out" 2>&1 ;;
    h2load) h2load -t2 -c8 -m8 -D "$secs" "$@" > "$out" 2>&1 ;;
    stime-new|stime-reuse)
      local mode=-${kind#stime-}
      openssl s_time "$mode" -time "$secs" "$@" > "$out.1" 2>&1 &
      local a=$!
      openssl s_time "$mode" -time "$secs" "$@" > "$out.2" 2>&1 &
      local b=$!
      wait $a || true; wait $b || true ;;
  esac
}

# count KIND OUT: the requests a run completed (2xx answers; for s_time, connections,
# each of which fetched the file).
count() {
  case $1 in
    wrk) awk '/requests in/ {r=$1} /Non-2xx/ {n=$NF} END {print r-n}' "$2" ;;
    h2load) awk '/^status codes:/ {print $3}' "$2" ;;
    stime-*) cat "$2".1 "$2".2 | awk '/connections in .* real seconds/ {n+=$1} END {print n+0}' ;;
  esac
}

# note KIND OUT: what a run's output says beyond its count (errors, resumption).
note() {
  case $1 in
    wrk) grep -hE 'Non-2xx|Socket errors' "$2" | tr -s ' \n' ' ' | sed 's/^/  !! /' || true ;;
    h2load) awk '/^requests:/ && ($10+$12+$14) > 0 {printf "  !! %s", $0}' "$2" ;;
    stime-*)
      cat "$2".1 "$2".2 | awk '
        /^[rt3*]+$/ {r += gsub(/r/, ""); f += gsub(/[t3*]/, "")}
        /bytes read per connection/ {b = $(NF-4)}
        END {printf "  (%d resumed, %d full handshakes, %d bytes per connection)", r, f, b}' ;;
  esac
}

echo "bench: ${DUR}s per run, $ROUNDS rounds, $(nproc) cores, $(uname -r)"
echo "  $(haproxy -v | head -1)"
echo "  $(haproxy -vv | grep -m1 'Running on OpenSSL')"
echo "  openssl: $(openssl version)"
echo "  $(wrk -v 2>&1 | head -1)"
echo "  $(h2load --version)"
echo "  hastack: $HASTACK ($("$HASTACK" --version 2>/dev/null || echo '?'))"
echo

# ---------------------------------------------------------------- rows 1-4: the proxies
NET=127.0.96
SITE=www.foobar.com
BACKEND_PORT=31081; HTTPS_PORT=31443; HTTP_PORT=31080; ADMIN_PORT=31090
HA_ADDR=$NET.2; VIP=$NET.100

if has 1 || has 2 || has 3 || has 4; then
mkdir -p "$W/www/static"
head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/static/1k.txt"

lb_topology() { # $1: the [[tls.certificate]] lines (empty: the internal CA's)
cat <<TOML
[site]
name = "$SITE"
state_dir = "$W/state"
[vip]
address = "$VIP"
port = $HTTP_PORT
https_port = $HTTPS_PORT
[ports]
admin = $ADMIN_PORT
web = $BACKEND_PORT
web_https = 31444
app = 31085
db = 31086
vrrp = 31087
raft = 31088
[vrrp]
advert_interval = 10
[tls]
internal = false
$1
[[node]]
name = "lb1"
role = "lb"
address = "$NET.10"
priority = 150
[[node]]
name = "web1"
role = "web"
address = "$NET.1"
[[node]]
name = "app1"
role = "app"
address = "$NET.5"
[[node]]
name = "db1"
role = "db"
address = "$NET.6"
TOML
}
lb_topology "" > "$W/pki.toml"
"$HASTACK" pki init --config "$W/pki.toml" > "$W/pki.log"
CRT=$W/state/pki/site.crt; KEY=$W/state/pki/site.key
cat "$CRT" "$KEY" > "$W/haproxy.pem"
lb_topology "[[tls.certificate]]
cert = \"$CRT\"
key = \"$KEY\"" > "$W/lb.toml"
"$HASTACK" check --config "$W/lb.toml" > /dev/null

cat > "$W/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  include /etc/nginx/mime.types;
  server {
    listen $NET.1:$BACKEND_PORT;
    location = /healthz { return 200 "ok\n"; }
    location / { root $W/www; }
  }
}
NGX

cat > "$W/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind $HA_ADDR:$HTTPS_PORT ssl crt $W/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
  default_backend be
backend be
  option httpchk GET /healthz
  http-reuse always
  server web1 $NET.1:$BACKEND_PORT check inter 200
HAP

# Each side's processes in a session of its own (autogroup scheduling, like run.sh).
setsid nginx -c "$W/nginx.conf" & pids+=($!)
setsid haproxy -f "$W/haproxy.cfg" -db > "$W/haproxy.log" 2>&1 & HA_PID=$!; pids+=($HA_PID)
setsid "$HASTACK" node lb1 --config "$W/lb.toml" --state-dir "$W/state" > "$W/lb1.log" 2>&1 & LB_PID=$!; pids+=($LB_PID)

until_ok 10 "nginx" curl -fs "http://$NET.1:$BACKEND_PORT/static/1k.txt"
until_ok 10 "lb1's /healthz" curl -fs "http://$NET.10:$ADMIN_PORT/healthz"
for host in "$HA_ADDR" "$VIP"; do
  until_ok 10 "https://$host:$HTTPS_PORT" curl -fsk --resolve "$SITE:$HTTPS_PORT:$host" "https://$SITE:$HTTPS_PORT/static/1k.txt"
  # What each load generator will do, once, so that a failure shows here and not as a
  # row of zeros.
  v=$(curl -fsk --http2 -o /dev/null -w '%{http_version}' --resolve "$SITE:$HTTPS_PORT:$host" "https://$SITE:$HTTPS_PORT/static/1k.txt" || true)
  [ "$v" = 2 ] || { echo "bench: $host does not answer HTTP/2 (curl says HTTP/$v)" >&2; exit 1; }
  echo | timeout 5 openssl s_time -new -time 1 -connect "$host:$HTTPS_PORT" -www /static/1k.txt > "$W/probe.$host" 2>&1 || true
  grep -q '^[1-9][0-9]* connections in' "$W/probe.$host" || { echo "bench: openssl s_time fails on $host:" >&2; cat "$W/probe.$host" >&2; exit 1; }
done
echo "threads: hastack lb $(ls /proc/$LB_PID/task | wc -l), haproxy $(ls /proc/$HA_PID/task | wc -l)"
echo

# run_row ROW KIND URL_PATH: every round, both proxies, the first one alternating.
run_row() {
  local row=$1 kind=$2 path=$3 r order p
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="haproxy hastack"; else order="hastack haproxy"; fi
    for p in $order; do
      local host=$HA_ADDR pid=$HA_PID
      [ "$p" = hastack ] && { host=$VIP; pid=$LB_PID; }
      case $kind in
        wrk) measure "$row" "$p" "$r" "$pid" wrk "https://$host:$HTTPS_PORT$path" ;;
        h2load) measure "$row" "$p" "$r" "$pid" h2load --connect-to="$host:$HTTPS_PORT" "https://$SITE:$HTTPS_PORT$path" ;;
        stime-*) measure "$row" "$p" "$r" "$pid" "$kind" -connect "$host:$HTTPS_PORT" -www "$path" ;;
      esac
    done
  done
}

has 1 && { echo "1. keep-alive HTTPS, HTTP/1.1, 1 KiB (wrk -t2 -c$CONNS)"; run_row 1 wrk /static/1k.txt; }
has 2 && { echo "2. keep-alive HTTPS, HTTP/2, 1 KiB (h2load -t2 -c8 -m8)"; run_row 2 h2load /static/1k.txt; }
has 3 && { echo "3. new TLS connection per request, full handshake (2 x openssl s_time -new)"; run_row 3 stime-new /static/1k.txt; }
has 4 && { echo "4. new TLS connection per request, resumed (2 x openssl s_time -reuse)"; run_row 4 stime-reuse /static/1k.txt; }

# How hastack counted its handshakes (by protocol, ALPN, resumption), as a cross-check.
curl -fs "http://$NET.10:$ADMIN_PORT/metrics" | grep -E '^hastack_tls_handshake' | sed 's/^/  lb1: /' > "$W/lb1.tls" || true
kill "$LB_PID" "$HA_PID" 2>/dev/null || true
wait "$LB_PID" "$HA_PID" 2>/dev/null || true
fi

# ---------------------------------------------------------------- row 5: a whole stack
# stack_topology NET INTERNAL: a stack of lb1, web1-2, app1-2 and db1 (SQLite mode: no
# mariadbd, so db1 does not run) on NET.0/24.
stack_topology() {
cat <<TOML
[site]
name = "$SITE"
state_dir = "$W/stack.$2"
[vip]
address = "$1.100"
port = 32080
https_port = 0
[ports]
admin = 32090
web = 32081
web_https = 32444
app = 32082
db = 32083
vrrp = 32087
raft = 32088
[tls]
internal = $2
[db]
mariadbd = "/nonexistent/mariadbd"
[[node]]
name = "lb1"
role = "lb"
address = "$1.11"
priority = 150
[[node]]
name = "web1"
role = "web"
address = "$1.21"
[[node]]
name = "web2"
role = "web"
address = "$1.22"
[[node]]
name = "app1"
role = "app"
address = "$1.31"
[[node]]
name = "app2"
role = "app"
address = "$1.32"
[[node]]
name = "db1"
role = "db"
address = "$1.41"
TOML
}

# stack_pids CONFIG: the pids of the lb, web and app nodes once all of them are healthy.
stack_pids() {
  "$HASTACK" status --config "$1" --json 2>/dev/null | python3 -c '
import json, sys
nodes = [n for n in json.load(sys.stdin)["nodes"] if n["role"] in ("lb", "web", "app")]
if len(nodes) == 5 and all(n["pid"] and n["healthy"] for n in nodes):
    print(" ".join(str(n["pid"]) for n in nodes))
else:
    sys.exit(1)'
}

if has 5; then
echo "5. whole stack (lb1, web1-2, app1-2; SQLite) internal mTLS on vs off, wrk -t2 -c$CONNS on the VIP's HTTP port"
stack_topology 127.0.95 true > "$W/stack.true.toml"
stack_topology 127.0.94 false > "$W/stack.false.toml"
for t in true false; do "$HASTACK" check --config "$W/stack.$t.toml" > /dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="true false"; else order="false true"; fi
  for t in $order; do
    cfg=$W/stack.$t.toml
    net=127.0.95; [ "$t" = false ] && net=127.0.94
    setsid "$HASTACK" up --config "$cfg" >> "$W/up.$t.log" 2>&1 & UP_PID=$!; pids+=($UP_PID)
    until_ok 60 "the stack (internal=$t) to be healthy" stack_pids "$cfg"
    until_ok 20 "the VIP of the stack (internal=$t)" curl -fs "http://$net.100:32080/api/posts"
    if [ "$r" = 1 ]; then   # a few posts, so that /api/posts answers something
      for i in 1 2 3; do
        curl -fs -o /dev/null -H 'Content-Type: application/json' \
          -d "{\"author\": \"bench\", \"body\": \"post $i of the TLS bench, a line of text\"}" "http://$net.100:32080/api/posts"
      done
    fi
    nodes=$(stack_pids "$cfg")
    measure 5s "internal=$t" "$r" "$nodes" wrk "http://$net.100:32080/static/style.css"
    measure 5a "internal=$t" "$r" "$nodes" wrk "http://$net.100:32080/api/posts"
    kill "$UP_PID"
    for _ in $(seq 1 150); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
    wait "$UP_PID" 2>/dev/null || true
  done
done
echo
fi

# ---------------------------------------------------------------- the table
[ -s "$W/lb1.tls" ] && { echo "hastack's own count of TLS handshakes over rows 1-4 (incl. warm-ups):"; cat "$W/lb1.tls"; echo; }
echo "Summary: medians over $ROUNDS rounds of ${DUR}s; ratio = req per CPU-s of hastack over HAProxy in the"
echo "same round (row 5: internal=true over internal=false, CPU of all lb/web/app node processes)"
ratio_table "$RESULTS" plain "haproxy internal=false" 31 "rps:12 eff:14" \
  "1=1 HTTPS keep-alive, HTTP/1.1" "2=2 HTTPS keep-alive, HTTP/2" \
  "3=3 new conn/request, full hs" "4=4 new conn/request, resumed" \
  "=mTLS on=mTLS off" "5s=5 stack, static style.css" "5a=5 stack, proxied /api/posts"

# Anything hastack or HAProxy logged above INFO: each distinct message once, with its count.
echo
echo "warnings/errors in the logs:"
log_warnings "$W"/lb1.log "$W"/haproxy.log "$W"/stack.*/logs/*.log
