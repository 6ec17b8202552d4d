#!/usr/bin/env bash
# Side-by-side benchmarks on this machine, printed as requests per CPU-second of the
# server process (utime+stime from /proc/PID/stat), which is fair on 2 shared cores
# where plain req/s mostly shows how the CPU was shared out (see shared/notes.md).
#
#   1. reverse proxy: hastack lb node   vs HAProxy (1 thread), both in front of one nginx
#   2. static file:   hastack web node  vs nginx (1 worker), the same file
#
# Needs: haproxy nginx-light wrk (apt-get install -y haproxy nginx-light wrk), root not
# required. Usage: bench/run.sh [seconds per run, default 10] [connections, default 64]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-64}
for bin in haproxy nginx wrk; do
  command -v "$bin" >/dev/null || { echo "bench: $bin missing: apt-get install -y haproxy nginx-light wrk" >&2; exit 1; }
done
[ -x target/release/hastack ] || cargo build --release
HASTACK=$PWD/target/release/hastack
W=$(mktemp -d /tmp/hsbench.XXXXXX)
chmod 755 "$W"   # nginx workers run as www-data when started by root
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; [ -n "${KEEP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT

NET=127.0.99
BACKEND_PORT=18081; HA_PORT=18080; LB_PORT=18082; WEB_PORT=18083; NGX_STATIC_PORT=18084
ADMIN_PORT=18090

# The 1 KiB body the proxies forward, and the file the web servers serve.
mkdir -p "$W/www/static"
head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/static/1k.txt"
cp site/static/style.css "$W/www/static/style.css"

cat > "$W/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 100000;
  include /etc/nginx/mime.types;
  server {
    listen $NET.1:$BACKEND_PORT;
    location = /healthz { return 200 "ok\n"; }
    location / { root $W/www; }
  }
  server {
    listen $NET.3:$NGX_STATIC_PORT;
    location / { root $W/www; etag on; }
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
  bind $NET.2:$HA_PORT
  default_backend be
backend be
  option httpchk GET /healthz
  http-reuse always
  server web1 $NET.1:$BACKEND_PORT check inter 200
HAP

# hastack: lb1 in front of "web1" = the nginx backend (lb.toml); a hastack web node
# serving static files (web.toml).
topology() { # $1 = the web node's address
cat <<TOML
[site]
name = "bench"
state_dir = "$W/state"
[vip]
address = "$NET.100"
port = $LB_PORT
[ports]
admin = $ADMIN_PORT
web = $BACKEND_PORT
app = 18085
db = 18086
vrrp = 18087
[vrrp]
advert_interval = 10
[web]
root = "$W/www"
[[node]]
name = "lb1"
role = "lb"
address = "$NET.10"
priority = 150
[[node]]
name = "web1"
role = "web"
address = "$1"
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
topology "$NET.1" > "$W/lb.toml"
topology "$NET.4" > "$W/web.toml"

# Each side's processes in a session of its own (autogroup scheduling, see notes.md).
setsid nginx -c "$W/nginx.conf" & pids+=($!)
setsid haproxy -f "$W/haproxy.cfg" -db & pids+=($!)
setsid "$HASTACK" node lb1 --config "$W/lb.toml" 2>"$W/lb1.log" & LB_PID=$!; pids+=($LB_PID)
setsid "$HASTACK" node web1 --config "$W/web.toml" 2>"$W/web1.log" & WEB_PID=$!; pids+=($WEB_PID)
HA_PID=${pids[1]}

wait_up() { for _ in $(seq 1 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "bench: $1 did not answer" >&2; exit 1; }
wait_up "http://$NET.1:$BACKEND_PORT/static/1k.txt"
wait_up "http://$NET.2:$HA_PORT/static/1k.txt"
wait_up "http://$NET.100:$LB_PORT/static/1k.txt"
wait_up "http://$NET.4:$BACKEND_PORT/static/style.css"
wait_up "http://$NET.3:$NGX_STATIC_PORT/static/style.css"
NGX_WORKER=$(pgrep -P "$(cat "$W/nginx.pid")" | head -1)

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# run NAME PID URL → prints "requests cpu_seconds"
run() {
  local pid=$2 url=$3 t0 t1 out reqs
  wrk -t2 -c"$CONNS" -d2s "$url" >/dev/null   # warm-up
  t0=$(ticks "$pid")
  out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" "$url")
  t1=$(ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local errs; errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
  [ -z "$errs" ] || echo "  $1: $errs" >&2
  echo "$reqs $(echo "scale=3; ($t1-$t0)/$HZ" | bc)"
}

report() {
  local name=$1 reqs=$2 cpu=$3
  printf '  %-28s %9d requests  %6.2f CPU-s  %8.0f req/CPU-s\n' "$name" "$reqs" "$cpu" "$(echo "$reqs/$cpu" | bc -l)"
}

echo "bench: ${DUR}s per run, wrk -t2 -c$CONNS, keep-alive; $(nproc) cores"
echo
echo "1. reverse proxy, 1 KiB body (backend: nginx)"
read -r h_reqs h_cpu < <(run haproxy "$HA_PID" "http://$NET.2:$HA_PORT/static/1k.txt")
read -r l_reqs l_cpu < <(run hastack "$LB_PID" "http://$NET.100:$LB_PORT/static/1k.txt")
report "HAProxy (nbthread 1)" "$h_reqs" "$h_cpu"
report "hastack lb" "$l_reqs" "$l_cpu"
printf '  ratio hastack/HAProxy: %.2f\n\n' "$(echo "($l_reqs/$l_cpu)/($h_reqs/$h_cpu)" | bc -l)"

echo "2. static file, style.css ($(stat -c %s "$W/www/static/style.css") bytes)"
read -r n_reqs n_cpu < <(run nginx "$NGX_WORKER" "http://$NET.3:$NGX_STATIC_PORT/static/style.css")
read -r w_reqs w_cpu < <(run hastack-web "$WEB_PID" "http://$NET.4:$BACKEND_PORT/static/style.css")
report "nginx (1 worker)" "$n_reqs" "$n_cpu"
report "hastack web" "$w_reqs" "$w_cpu"
printf '  ratio hastack/nginx: %.2f\n' "$(echo "($w_reqs/$w_cpu)/($n_reqs/$n_cpu)" | bc -l)"
