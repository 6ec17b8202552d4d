#!/usr/bin/env bash
# Measures, with the release binary and a real MariaDB tier:
#   - time from `hastack up` to the site answering through the VIP (new and existing state)
#   - lb takeover: `hastack kill lb1` → the first request through the VIP served by lb2
#   - RSS of each node kind (and of each mariadbd)
# Usage: bench/failover.sh [takeover rounds, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || { echo "needs mariadb-server" >&2; exit 1; }
[ -x target/release/hastack ] || cargo build --release
H=$PWD/target/release/hastack
W=$(mktemp -d /tmp/hsfail.XXXXXX)
NET=127.0.98
PORT=28080
"$H" config | sed -e "s/127\.0\.0\.100/$NET.100/" -e "s/127\.0\.\([1-4]\)\.\([1-3]\)/$NET.\1\2/" \
  -e "s/^port = 8080/port = $PORT/" -e "s/^admin = 9100/admin = 29100/" -e "s/^web = 8081/web = 28081/" \
  -e "s/^app = 8082/app = 28082/" -e "s/^db = 3306/db = 23306/" -e "s/^vrrp = 5798/vrrp = 25798/" > "$W/hastack.toml"
"$H" check --config "$W/hastack.toml" >/dev/null
cd "$W"
ctl() { "$H" "$@" --config "$W/hastack.toml"; }
cleanup() { ctl down >/dev/null 2>&1 || true; sleep 1; rm -rf "$W"; }
trap cleanup EXIT
now() { date +%s.%N; }
# until_ok SECONDS CMD...: runs CMD until it succeeds, or fails the bench after SECONDS.
until_ok() {
  local limit=$1; shift
  local end=$(( $(date +%s) + limit ))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || { echo "bench: gave up after ${limit}s waiting for: $*" >&2; exit 1; }
    sleep 0.005
  done
}
by() { served_by | grep -q "^$1"; }
site_up() { [ -n "$(served_by)" ]; }
stack_gone() { ! pgrep -f "up --config $W/hastack.toml" >/dev/null; }
served_by() { curl -s -m 0.2 -o /dev/null -D - "http://$NET.100:$PORT/healthz" 2>/dev/null | tr -d '\r' | awk -F': ' 'tolower($1)=="x-served-by" {print $2}'; }

start_stack() {
  local t0; t0=$(now)
  setsid "$H" up --config "$W/hastack.toml" > "$W/up.log" 2>&1 &
  until_ok 240 site_up
  echo "$(now) - $t0" | bc
}

echo "up → site answering through the VIP (new state, incl. mariadb-install-db): $(start_stack) s"
echo
echo "RSS after start (KiB):"
ctl status --json | python3 -c '
import json, sys, collections
st = json.load(sys.stdin)
kinds = collections.defaultdict(list)
for n in st["nodes"]:
    if n["pid"]:
        path = "/proc/%d/status" % n["pid"]
        rss = [l for l in open(path) if l.startswith("VmRSS")][0].split()[1]
        kinds[n["role"]].append(int(rss))
for role, v in kinds.items():
    print(f"  {role:<4} node: {min(v)}..{max(v)} ({len(v)} nodes)")
'
for db in db1 db2 db3; do
  pid=$(cat "$W/.hastack/db/$db/run/mysqld.pid")
  echo "  mariadbd of $db: $(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
done
echo
echo "lb takeover after kill lb1 (request-level, polled every ~10 ms):"
times=()
for i in $(seq 1 "$ROUNDS"); do
  until_ok 10 by lb1
  sleep 0.3
  t0=$(now)   # before the kill: the figure includes the control round trip
  ctl kill lb1 >/dev/null
  until_ok 10 by lb2
  t=$(echo "$(now) - $t0" | bc)
  times+=("$t")
  ctl start lb1 >/dev/null
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "  %d rounds: min %.3f s, median %.3f s, max %.3f s\n", NR, a[1], a[int((NR+1)/2)], a[NR]}'
ctl down >/dev/null
until_ok 120 stack_gone
echo
echo "up → site answering through the VIP (existing state): $(start_stack) s"
