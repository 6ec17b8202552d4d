#!/usr/bin/env bash
# The master load balancer taken away under traffic: hastack against keepalived + HAProxy,
# side by side in one run, measured by one client (bench/drill_client.py: a new
# connection and GET every 20 ms, 2 s timeout) from a client network namespace.
#
#   hastack      `hastack up --isolated` (its VRRP: 0.05 s adverts), the master lb1
#   incumbent    two namespaces each running keepalived (VRRPv3) and HAProxy in front of
#                one web server, on a bridge like hastack's; keepalived with its default
#                1 s adverts, and again tuned to hastack's 0.05 s
#
# Faults, each followed by the master's return and a pause:
#   link   the master's link is cut (`ip link set eth0 down` in its namespace), as a dead
#          host looks; restored after the fault window
#   stop   the master is stopped gracefully (hastack: `hastack stop lb1`; incumbent:
#          SIGTERM to keepalived, which sends priority 0 and drops the VIP); started again
#
# For each: the outage (the longest time without a successful answer from the fault to
# the end of the window), failed/total requests, the slowest request. Medians over
# ROUNDS (default 3). Needs root, keepalived, haproxy, python3, mariadb-server (for the
# hastack stack) and a release build.
#
# Usage: sudo bench/lb_failover.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-3}
WINDOW=6   # seconds from the fault to its repair
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (network namespaces)" >&2; exit 1; }
for t in keepalived haproxy python3 ip; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "bench: needs $t (apt-get install -y keepalived haproxy python3 iproute2)" >&2; exit 1; }
done
[ -x target/release/hastack ] || cargo build --release
H=$PWD/target/release/hastack
CLIENT=$PWD/bench/drill_client.py
bench_dir hslbf
RESULTS=$W/results
: > "$RESULTS"

# ---- the incumbent's network: hub bridge, lb1, lb2, web, client ------------------------
P=hsbk$$
NET=10.98.0
ns() { echo "$P-$1"; }
inc_cleanup() {
  for n in lb1 lb2 web cli; do
    ip netns pids "$(ns $n)" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  for n in lb1 lb2 web cli hub; do ip netns del "$(ns $n)" 2>/dev/null || true; done
}
trap 'inc_cleanup; bench_cleanup' EXIT
inc_net() {
  ip netns add "$(ns hub)"
  ip -n "$(ns hub)" link add br0 type bridge
  ip -n "$(ns hub)" link set br0 up
  local i=1 n
  for n in lb1 lb2 web cli; do
    ip netns add "$(ns $n)"
    ip link add "$P$i" type veth peer name eth0 netns "$(ns $n)"
    ip link set "$P$i" netns "$(ns hub)"
    ip -n "$(ns hub)" link set "$P$i" master br0 up
    ip -n "$(ns $n)" addr add "$NET.$((10 + i))/24" dev eth0
    ip -n "$(ns $n)" link set eth0 up
    ip -n "$(ns $n)" link set lo up
    i=$((i + 1))
  done
  ip netns exec "$(ns lb1)" sysctl -qw net.ipv4.ip_nonlocal_bind=1
  ip netns exec "$(ns lb2)" sysctl -qw net.ipv4.ip_nonlocal_bind=1
}
# The web server: a small page.
inc_web() {
  mkdir -p "$W/www"
  echo "hello from the web server" > "$W/www/index.html"
  (cd "$W/www" && exec ip netns exec "$(ns web)" python3 -m http.server 8000 --bind "$NET.13" >/dev/null 2>&1) &
  pids+=($!)
  disown $!
}
# keepalived + HAProxy on lbN with adverts every $1 seconds.
inc_lb() {
  local n=$1 prio=$2 advert=$3
  cat > "$W/$n-haproxy.cfg" <<EOF
global
  maxconn 2000
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend site
  bind $NET.100:8080
  http-response set-header X-Served-By $n
  default_backend web
backend web
  server web1 $NET.13:8000
EOF
  cat > "$W/$n-keepalived.conf" <<EOF
global_defs {
  router_id $n
  vrrp_version 3
}
vrrp_instance site {
  state BACKUP
  interface eth0
  virtual_router_id 77
  priority $prio
  advert_int $advert
  virtual_ipaddress {
    $NET.100/24
  }
}
EOF
  ip netns exec "$(ns $n)" haproxy -f "$W/$n-haproxy.cfg" -p "$W/$n-haproxy.pid" -D
  inc_keepalived "$n"
}
# (Re)starts keepalived on lbN with the configuration inc_lb wrote.
inc_keepalived() {
  local n=$1
  ip netns exec "$(ns $n)" keepalived -n -l -D --vrrp -f "$W/$n-keepalived.conf" \
    -p "$W/$n-keepalived.pid" -r "$W/$n-vrrp.pid" > "$W/$n-keepalived.log" 2>&1 &
  echo $! > "$W/$n-keepalived.main"
}
inc_stop_lb() {
  local n=$1 p
  p=$(cat "$W/$n-keepalived.main" 2>/dev/null || true)
  [ -n "$p" ] && kill "$p" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -n "$p" ] && kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
}
inc_holder() { ip -n "$(ns $1)" -4 -o addr show | grep -q " $NET.100/"; }

# ---- one measured fault -------------------------------------------------------------
# measure LABEL CLIENT_NS URL HOST FAULT_CMD REPAIR_CMD: starts the client, waits 2 s,
# runs FAULT_CMD, waits $WINDOW s, runs REPAIR_CMD, waits 5 s, stops the client and
# appends "LABEL outage failed requests slowest" to $RESULTS (the window: fault → repair).
measure() {
  local label=$1 cns=$2 url=$3 host=$4 fault=$5 repair=$6
  local stop=$W/stop-$label out=$W/out-$label
  rm -f "$stop"
  ip netns exec "$cns" python3 "$CLIENT" "$url" "$host" "$stop" > "$out" 2>>"$W/client.err" &
  local cp=$!
  sleep 2
  local t0 t1
  t0=$(date +%s.%N)
  eval "$fault"
  sleep "$WINDOW"
  t1=$(date +%s.%N)
  eval "$repair"
  sleep 5
  echo "$t0 $t1" > "$stop.tmp" && mv "$stop.tmp" "$stop"
  wait "$cp" || true
  python3 - "$label" "$out" >> "$RESULTS" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
r = json.loads(open(path).read().strip().splitlines()[0])
o = "none" if r["outage_s"] is None else f'{r["outage_s"]:.3f}'
print(label, o, r["failed"], r["requests"], f'{r["slowest_s"]:.3f}')
PY
  tail -1 "$RESULTS" | sed 's/^/  /'
}

# ---- the incumbent --------------------------------------------------------------------
inc_net
inc_web
for advert in 1 0.05; do
  echo "keepalived + HAProxy, adverts every ${advert} s"
  inc_lb lb1 150 "$advert"
  inc_lb lb2 100 "$advert"
  until_ok 20 "the VIP on the incumbent's lb1" inc_holder lb1
  url="http://$NET.100:8080/"
  until_ok 20 "the incumbent's site" ip netns exec "$(ns cli)" curl -sf -o /dev/null "$url"
  for r in $(seq 1 "$ROUNDS"); do
    measure "keepalived-$advert-link" "$(ns cli)" "$url" site \
      "ip -n $(ns lb1) link set eth0 down" "ip -n $(ns lb1) link set eth0 up"
    until_ok 20 "the VIP back on lb1" inc_holder lb1
    sleep 2
    measure "keepalived-$advert-stop" "$(ns cli)" "$url" site \
      "inc_stop_lb lb1" "inc_keepalived lb1"
    until_ok 20 "the VIP back on lb1" inc_holder lb1
    sleep 2
  done
  for n in lb1 lb2; do
    inc_stop_lb "$n"
    kill "$(cat "$W/$n-haproxy.pid")" 2>/dev/null || true
  done
  sleep 1
done
inc_cleanup

# ---- hastack ----------------------------------------------------------------------------
echo "hastack (isolated), adverts every 0.05 s"
mkdir -p "$W/hs"
"$H" config | sed -e 's|^subnet = "10.77.0.0/24"|subnet = "10.97.0.0/24"|' \
  -e "s|^state_dir = \".hastack\"|state_dir = \"$W/hs/state\"|" \
  -e 's|^address = "127.0.0.1:9000"|address = ""|' > "$W/hs/hastack.toml"
HC="--config $W/hs/hastack.toml"
# shellcheck disable=SC2086
(cd "$W/hs" && exec "$H" up --isolated $HC > "$W/hs/up.log" 2>&1) &
pids+=($!)
# shellcheck disable=SC2086
until_ok 300 "hastack up --isolated" grep -q "^ready in" "$W/hs/up.log"
# shellcheck disable=SC2086
status=$("$H" status --json $HC)
url=$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
cns=$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_netns"])')
lb1ns=$(echo "$status" | python3 -c 'import json,sys; print([n["netns"] for n in json.load(sys.stdin)["nodes"] if n["name"]=="lb1"][0])')
vip=$(echo "$url" | sed -E 's|http://([^:/]+).*|\1|')
hs_holder() { ip -n "$lb1ns" -4 -o addr show | grep -q " $vip/"; }
for r in $(seq 1 "$ROUNDS"); do
  measure hastack-link "$cns" "$url" www.foobar.com \
    "ip -n $lb1ns link set eth0 down" "ip -n $lb1ns link set eth0 up"
  until_ok 20 "the VIP back on hastack's lb1" hs_holder
  sleep 2
  measure hastack-stop "$cns" "$url" www.foobar.com \
    "\"$H\" stop lb1 $HC >/dev/null" "\"$H\" start lb1 $HC >/dev/null"
  until_ok 20 "the VIP back on hastack's lb1" hs_holder
  sleep 2
done
# shellcheck disable=SC2086
"$H" down $HC >/dev/null

# ---- the summary --------------------------------------------------------------------------
echo
echo "the master lb taken away under traffic: medians over $ROUNDS rounds (one client, a new connection every 20 ms)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, outage, failed, requests, slowest = line.split()
    rows.setdefault(label, []).append((outage, int(failed), int(requests), float(slowest)))
def med(xs):
    return statistics.median(xs) if xs else None
print(f'{"fault":<6} {"side":<30} {"outage":>9} {"failed":>9} {"slowest":>9}')
out = {}
for fault in ["link", "stop"]:
    for side, label in [("hastack (0.05 s adverts)", f"hastack-{fault}"),
                        ("keepalived+HAProxy (1 s)", f"keepalived-1-{fault}"),
                        ("keepalived+HAProxy (0.05 s)", f"keepalived-0.05-{fault}")]:
        rs = rows.get(label, [])
        if not rs:
            continue
        outs = [float(r[0]) for r in rs if r[0] != "none"]
        o = med(outs)
        out[label] = o
        never = len(rs) - len(outs)
        print(f'{fault:<6} {side:<30} {("%.3f s" % o) if o is not None else "none":>9} '
              f'{"%d/%d" % (med([r[1] for r in rs]), med([r[2] for r in rs])):>9} '
              f'{"%.3f s" % med([r[3] for r in rs]):>9}' + (f"  ({never} rounds never recovered)" if never else ""))
    h, k = out.get(f"hastack-{fault}"), out.get(f"keepalived-1-{fault}")
    if h and k:
        print(f'{"":<6} outage, keepalived+HAProxy at its default over hastack: {k / h:.1f}x')
PY
