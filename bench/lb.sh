#!/usr/bin/env bash
# hastack's lb node side by side with HAProxy (Debian's), both as plain-HTTP reverse
# proxies in front of the same nginx, printed as requests per CPU-second of the proxy
# process (utime+stime of all its threads, from /proc/PID/stat): fair on a small shared
# machine, where plain req/s mostly shows how the CPU was shared out between the proxy,
# the backend and the load generator.
#
# Both proxies run one thread of request handling: HAProxy with `nbthread 1`; hastack's
# lb node is one process (a current-thread tokio runtime for the proxy plus the VRRP
# thread; all of its threads are counted). Both check the backend's health every 200 ms
# and reuse keep-alive connections to it. hastack runs with its defaults: the strict
# front door on, round robin, passive health; no rate or connection limits (HAProxy has
# none configured either).
#
# Rows: {keep-alive, a new connection per request} x {1 KiB, 100 KiB} x {64, 256}
# connections, all with wrk -t2 (a new connection per request: wrk with
# `Connection: close`, so the proxy closes after each answer and wrk reconnects).
#
# Every run is preceded by a 2 s warm-up of the same load and measured for DUR seconds;
# the proxies take turns (the first one alternates per round). Per row: medians over the
# rounds of req/s, p50 and p99 latency (wrk --latency), req per CPU-s; the peak RSS of
# each proxy (VmHWM) after the row; the median and min-max over the rounds of the ratio
# hastack/HAProxy of req per CPU-s.
#
# Needs: haproxy nginx-light wrk curl bc (apt-get install -y haproxy nginx-light wrk).
# Addresses: 127.0.93.0/24, ports 33xxx; nothing outside loopback.
# Usage: bench/lb.sh [seconds per run, default 10] [rounds, default 3]
#   HASTACK=path/to/hastack to use a binary other than target/release/hastack;
#   KEEP=1 keeps the work directory (logs, configs); ROWS="1 2 ..." picks rows (1-8).
# Takes about (DUR+2) * 2 * ROUNDS * 8 seconds: 10 minutes by default.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-3}
ROWS=${ROWS:-1 2 3 4 5 6 7 8}
for bin in haproxy nginx wrk curl bc; do
  command -v "$bin" >/dev/null || { echo "bench: $bin missing: apt-get install -y haproxy nginx-light wrk curl bc" >&2; exit 1; }
done
HASTACK=${HASTACK:-$PWD/target/release/hastack}
[ -x "$HASTACK" ] || cargo build --release -p hastack
. bench/lib.sh
bench_dir hslb

NET=127.0.93
BACKEND_PORT=33081; HTTP_PORT=33080; ADMIN_PORT=33090
HA_ADDR=$NET.2; VIP=$NET.100

mkdir -p "$W/www/static"
head -c 1024 /dev/urandom | base64 -w 0 | head -c 1024 > "$W/www/static/1k.txt"
head -c 102400 /dev/urandom > "$W/www/static/100k.bin"

cat > "$W/lb.toml" <<TOML
[site]
name = "bench"
state_dir = "$W/state"
[vip]
address = "$VIP"
port = $HTTP_PORT
[ports]
admin = $ADMIN_PORT
web = $BACKEND_PORT
app = 33085
db = 33086
vrrp = 33087
raft = 33088
[vrrp]
advert_interval = 10
[health]
interval_ms = 200
[tls]
internal = false
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
"$HASTACK" check --config "$W/lb.toml" > /dev/null

cat > "$W/nginx.conf" <<NGX
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
  include /etc/nginx/mime.types;
  server {
    listen $NET.1:$BACKEND_PORT backlog=4096;
    location = /healthz { return 200 "ok\n"; }
    location / { root $W/www; }
  }
}
NGX

cat > "$W/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind $HA_ADDR:$HTTP_PORT
  default_backend be
backend be
  option httpchk GET /healthz
  http-reuse always
  server web1 $NET.1:$BACKEND_PORT check inter 200
HAP

ulimit -n 20000 2>/dev/null || true
setsid nginx -c "$W/nginx.conf" & pids+=($!)
setsid haproxy -f "$W/haproxy.cfg" -db > "$W/haproxy.log" 2>&1 & HA_PID=$!; pids+=($HA_PID)
setsid "$HASTACK" node lb1 --config "$W/lb.toml" --state-dir "$W/state" > "$W/lb1.log" 2>&1 & LB_PID=$!; pids+=($LB_PID)

until_ok 10 "nginx" curl -fs "http://$NET.1:$BACKEND_PORT/static/1k.txt"
until_ok 10 "lb1's /healthz" curl -fs "http://$NET.10:$ADMIN_PORT/healthz"
for host in "$HA_ADDR" "$VIP"; do
  until_ok 10 "http://$host:$HTTP_PORT" curl -fs "http://$host:$HTTP_PORT/static/100k.bin"
  got=$(curl -fs "http://$host:$HTTP_PORT/static/100k.bin" | wc -c)
  [ "$got" = 102400 ] || { echo "bench: $host answered $got bytes for 100k.bin" >&2; exit 1; }
done

echo "bench: ${DUR}s per run, $ROUNDS rounds, $(nproc) cores, $(uname -r)"
echo "  $(haproxy -v | head -1)"
echo "  $(nginx -v 2>&1) (backend, 1 worker)"
echo "  $(wrk -v 2>&1 | head -1)"
echo "  hastack: $HASTACK ($("$HASTACK" --version 2>/dev/null || echo '?'))"
echo "  threads: hastack lb $(ls /proc/$LB_PID/task | wc -l), haproxy $(ls /proc/$HA_PID/task | wc -l)"
echo

RESULTS=$W/results   # row proxy round requests cpu_s p50_ms p99_ms rss_kib
: > "$RESULTS"

# ms VALUE: a wrk latency ("812.00us", "1.23ms", "2.10s") in milliseconds.
ms() { echo "$1" | awk '{v=$1+0; if ($1 ~ /us$/) v/=1000; else if ($1 ~ /ms$/) v=v; else if ($1 ~ /s$/) v*=1000; print v}'; }

# measure ROW PROXY ROUND PID CONNS URL [wrk args]
measure() {
  local row=$1 proxy=$2 round=$3 pid=$4 conns=$5 url=$6; shift 6
  local out=$W/out.$row.$proxy.$round t0 t1
  wrk -t2 -c"$conns" -d2s "$@" "$url" > "$out.warm" 2>&1
  t0=$(ticks "$pid")
  wrk -t2 -c"$conns" -d"${DUR}s" --latency "$@" "$url" > "$out" 2>&1
  t1=$(ticks "$pid")
  local reqs p50 p99 cpu rss errs
  reqs=$(awk '/requests in/ {r=$1} /Non-2xx/ {n=$NF} END {print r-n}' "$out")
  p50=$(ms "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(ms "$(awk '$1 == "99%" {print $2}' "$out")")
  cpu=$(echo "scale=3; ($t1-$t0)/$HZ" | bc)
  rss=$(rss_kib "$pid")
  errs=$(grep -hE 'Non-2xx|Socket errors' "$out" | tr -s ' \n' ' ' || true)
  printf '  row %s round %s %-8s %8d requests %7.2f CPU-s %8.0f req/CPU-s  p50 %6.2f ms  p99 %7.2f ms%s\n' \
    "$row" "$round" "$proxy" "$reqs" "$cpu" "$(echo "$reqs/$cpu" | bc -l)" "$p50" "$p99" "${errs:+  !! $errs}"
  echo "$row $proxy $round $reqs $cpu $p50 $p99 $rss" >> "$RESULTS"
}

# run_row ROW CONNS PATH [wrk args]: every round, both proxies, the first alternating.
run_row() {
  local row=$1 conns=$2 path=$3 r order p; shift 3
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="haproxy hastack"; else order="hastack haproxy"; fi
    for p in $order; do
      if [ "$p" = hastack ]; then
        measure "$row" "$p" "$r" "$LB_PID" "$conns" "http://$VIP:$HTTP_PORT$path" "$@"
      else
        measure "$row" "$p" "$r" "$HA_PID" "$conns" "http://$HA_ADDR:$HTTP_PORT$path" "$@"
      fi
    done
  done
}

CLOSE=(-H "Connection: close")
has 1 && { echo "1. keep-alive, 1 KiB, 64 connections"; run_row 1 64 /static/1k.txt; }
has 2 && { echo "2. keep-alive, 1 KiB, 256 connections"; run_row 2 256 /static/1k.txt; }
has 3 && { echo "3. keep-alive, 100 KiB, 64 connections"; run_row 3 64 /static/100k.bin; }
has 4 && { echo "4. keep-alive, 100 KiB, 256 connections"; run_row 4 256 /static/100k.bin; }
has 5 && { echo "5. new connection per request, 1 KiB, 64 connections"; run_row 5 64 /static/1k.txt "${CLOSE[@]}"; }
has 6 && { echo "6. new connection per request, 1 KiB, 256 connections"; run_row 6 256 /static/1k.txt "${CLOSE[@]}"; }
has 7 && { echo "7. new connection per request, 100 KiB, 64 connections"; run_row 7 64 /static/100k.bin "${CLOSE[@]}"; }
has 8 && { echo "8. new connection per request, 100 KiB, 256 connections"; run_row 8 256 /static/100k.bin "${CLOSE[@]}"; }
echo

echo "Summary: medians over $ROUNDS rounds of ${DUR}s; ratio = req per CPU-s of hastack over HAProxy in"
echo "the same round; RSS = the proxy's peak resident memory (VmHWM) after the row"
ratio_table "$RESULTS" bars haproxy 27 "rps:8 eff:9 p50:6 p99:7 rss:6" \
  "1=1 keep-alive  1 KiB   c64" "2=2 keep-alive  1 KiB   c256" \
  "3=3 keep-alive  100 KiB c64" "4=4 keep-alive  100 KiB c256" \
  "5=5 new conn    1 KiB   c64" "6=6 new conn    1 KiB   c256" \
  "7=7 new conn    100 KiB c64" "8=8 new conn    100 KiB c256"

echo
echo "warnings/errors in the logs:"
log_warnings "$W"/lb1.log "$W"/haproxy.log "$W"/nginx.err
