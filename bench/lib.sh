# Helpers shared by the side-by-side benchmarks; sourced, not run.
#
#   bench_dir PREFIX        makes the work directory $W (kept with KEEP=1) and stops
#                           every pid added to the array `pids` on exit
#   until_ok SECS WHAT CMD  runs CMD until it succeeds; fails the bench after SECS
#   has ROW                 whether ROW is in $ROWS
#   ticks PID...            CPU ticks (utime+stime) the PIDS have used; divide by $HZ
#   rss_kib PID             the peak resident memory (VmHWM) of PID in KiB
#   log_warnings FILE...    each distinct WARN/ERROR (hastack), WARNING/ALERT (HAProxy)
#                           or error (nginx) line of the logs once, with its count

HZ=$(getconf CLK_TCK)
pids=()

bench_dir() {
  W=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$W"   # nginx workers run as www-data when started by root
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  [ -n "${KEEP:-}" ] && echo "bench: work directory kept: $W" >&2 || rm -rf "$W"
}

until_ok() {
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "bench: gave up after ${limit}s waiting for $what" >&2; exit 1; }
    sleep 0.1
  done
}

has() { case " $ROWS " in *" $1 "*) return 0;; esac; return 1; }

rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }

log_warnings() {
  local found= f msgs
  for f in "$@"; do
    [ -f "$f" ] || continue
    msgs=$(grep -E '^[^ ]+ +(WARN|ERROR) |panicked|\[(WARNING|ALERT)\]|\[(error|crit|alert)\]' "$f" \
      | sed -E 's/^[0-9T:.\/ -]+Z? +//; s/\(pid [0-9]+\)//' | sort | uniq -c | sort -rn | head -5 || true)
    [ -z "$msgs" ] || { found=1; echo "$msgs" | sed "s|^|  ${f#"$W"/}: |"; }
  done
  [ -n "$found" ] || echo "  none"
}
