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
#   ratio_table RESULTS LAYOUT INCUMBENT WIDTH COLUMNS ROW...
#                           the summary table of hastack against an incumbent: medians
#                           over the rounds and the ratio of req per CPU-s (see below)

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

# ratio_table RESULTS LAYOUT INCUMBENT WIDTH COLUMNS ROW...: the summary table of a bench
# that measured hastack and an incumbent in turns, from RESULTS, one line per run of $DUR
# seconds: "row side round requests cpu_s [p50_ms p99_ms rss_kib]". Per row and side,
# the median over the rounds of each column; then the median and min-max over the rounds
# of the ratio of hastack's req per CPU-s over the incumbent's in the same round.
#   LAYOUT     bars: "row | hastack's columns | the incumbent's | ratio req/CPU-s", the
#              side named over its first column; plain: no bars, the side named over
#              each of its columns
#   INCUMBENT  the sides (words) that are the incumbent, the first one its name in the
#              heading; every other side is hastack
#   WIDTH      of the row names' column
#   COLUMNS    "NAME:WIDTH ..." of each side, NAME one of rps (req/s), cpu (CPU-s), eff
#              (req/CPU-s), p50, p99 (ms) and rss (MB, the peak RSS of the row's last run)
#   ROW        KEY=NAME, in the order printed (a row with no results is left out); or
#              =LEFT=RIGHT, a line naming the sides anew over the rows after it, printed
#              before the first of them that has results
ratio_table() {
  local results=$1 layout=$2 incumbent=$3 width=$4 columns=$5; shift 5
  awk -v dur="$DUR" -v layout="$layout" -v incumbent="$incumbent" -v width="$width" \
      -v columns="$columns" -v rowspec="$(printf '%s\n' "$@")" '
  function median(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  # heads(TEXT): the columns of one side with TEXT over the first one (plain: over each).
  function heads(text,   i, s) {
    for (i = 1; i <= ncol; i++) s = s (i > 1 ? " " : "") sprintf("%" cw[i] "s", (i == 1 || layout != "bars") ? text : "")
    return s
  }
  # titles(): the names of the columns of one side.
  function titles(   i, s) {
    for (i = 1; i <= ncol; i++) s = s (i > 1 ? " " : "") sprintf("%" cw[i] "s", title[col[i]])
    return s
  }
  # values(ROW, SIDE): the columns of one side of a row.
  function values(row, p,   i, s, x) {
    for (i = 1; i <= ncol; i++) {
      x = col[i] == "rss" ? rss[row, p] / 1024 : median(v[col[i], row, p])
      s = s (i > 1 ? " " : "") sprintf("%" cw[i] "." prec[col[i]] "f", x)
    }
    return s
  }
  # line(NAME, A, B, RATIO): one line of the table (no RATIO: none, nor its separator).
  function line(name, a, b, ratio) {
    printf "%s%s%s%s%s%s\n", sprintf("%-" width "s", name), sep, a, sep, b, (ratio == "" ? "" : rsep ratio)
  }
  BEGIN {
    n = split(incumbent, w, " "); for (i = 1; i <= n; i++) inc[w[i]] = 1
    ncol = split(columns, c, " ")
    for (i = 1; i <= ncol; i++) { split(c[i], kv, ":"); col[i] = kv[1]; cw[i] = kv[2] }
    title["rps"] = "req/s"; title["cpu"] = "CPU-s"; title["eff"] = "req/CPU-s"
    title["p50"] = "p50ms"; title["p99"] = "p99ms"; title["rss"] = "RSS MB"
    prec["rps"] = 0; prec["cpu"] = 2; prec["eff"] = 0; prec["p50"] = 2; prec["p99"] = 2; prec["rss"] = 1
    sep = (layout == "bars") ? " | " : " "; rsep = (layout == "bars") ? " | " : "  "
  }
  {
    row = $1; p = ($2 in inc) ? "b" : "a"
    rows[row] = 1
    v["rps", row, p] = v["rps", row, p] " " $4 / dur
    v["cpu", row, p] = v["cpu", row, p] " " $5
    v["eff", row, p] = v["eff", row, p] " " ($5 > 0 ? $4 / $5 : 0)
    v["p50", row, p] = v["p50", row, p] " " $6
    v["p99", row, p] = v["p99", row, p] " " $7
    rss[row, p] = $8
    e[row, p, $3] = ($5 > 0 ? $4 / $5 : 0)
    rounds[row, $3] = 1
  }
  END {
    if (layout == "bars") {
      line("", heads("hastack"), heads(w[1]), "ratio req/CPU-s")
      line("row", titles(), titles(), "median (min-max)")
    } else {
      line("row", heads("hastack"), heads(w[1]), "ratio")
      line("", titles(), titles(), "median (min-max)")
    }
    n = split(rowspec, spec, "\n")
    for (k = 1; k <= n; k++) {
      i = index(spec[k], "="); row = substr(spec[k], 1, i - 1); name = substr(spec[k], i + 1)
      if (row == "") { sides = name; continue }
      if (!(row in rows)) continue
      if (sides != "") { split(sides, lr, "="); line("", heads(lr[1]), heads(lr[2]), ""); sides = "" }
      lo = ""; hi = ""; qs = ""
      for (key in rounds) {
        split(key, kk, SUBSEP)
        if (kk[1] != row || !((row, "a", kk[2]) in e) || !((row, "b", kk[2]) in e) || e[row, "b", kk[2]] == 0) continue
        q = e[row, "a", kk[2]] / e[row, "b", kk[2]]
        qs = qs " " q
        if (lo == "" || q < lo) lo = q
        if (hi == "" || q > hi) hi = q
      }
      line(name, values(row, "a"), values(row, "b"), sprintf("%.2f (%.2f-%.2f)", median(qs), lo, hi))
    }
  }' "$results"
}
