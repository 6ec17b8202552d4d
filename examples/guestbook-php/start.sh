#!/bin/sh
# Starts the guestbook on HOST:PORT with PHP's built-in web server and
# PHP_CLI_SERVER_WORKERS worker processes (default 4).
#
#   HOST=127.0.0.1 PORT=8000 DATABASE_URL=mysql://… ./start.sh
#
# hastack runs it as command = ["sh", "start.sh"], in the app's directory, and stops
# it with SIGTERM.
set -eu
cd "$(dirname "$0")"

: "${HOST:?HOST must be set (the address to listen on)}"
: "${PORT:?PORT must be set (the port to listen on)}"
PHP_CLI_SERVER_WORKERS="${PHP_CLI_SERVER_WORKERS:-4}"
case "$PHP_CLI_SERVER_WORKERS" in
    # PHP refuses fewer than 2 (with an error); one process is what it means.
    0 | 1) unset PHP_CLI_SERVER_WORKERS ;;
    *) export PHP_CLI_SERVER_WORKERS ;;
esac

# php -S wants an IPv6 address in brackets.
case "$HOST" in
    *:*) case "$HOST" in \[*) ;; *) HOST="[$HOST]" ;; esac ;;
esac

# With workers, the server is one parent process and PHP_CLI_SERVER_WORKERS children
# (the parent serves requests too). With PHP 8.2 (Debian 12's), the children do not
# exit when the parent is killed: they go on serving the port, and the next start
# cannot bind it. So this script stays the parent instead of exec'ing php, and stops
# the server *and* its workers when it is asked to stop.

# The server's children, from /proc (Linux).
workers() {
    if [ -r "/proc/$server/task/$server/children" ]; then
        cat "/proc/$server/task/$server/children" 2>/dev/null || true
        return
    fi
    for stat in /proc/[0-9]*/stat; do
        line=$(cat "$stat" 2>/dev/null) || continue
        # "pid (comm) state ppid …": the name may hold spaces and parentheses.
        rest=${line##*) }
        set -- $rest
        if [ "${2:-}" = "$server" ]; then
            pid=${stat#/proc/}
            echo "${pid%/stat}"
        fi
    done
}

stop() {
    trap '' TERM INT HUP
    [ -n "$server" ] || exit 143
    # The workers first: once the parent is gone they are no longer its children.
    # shellcheck disable=SC2046 # one pid per word
    kill -TERM $(workers) "$server" 2>/dev/null || true
}

server=
trap stop TERM INT HUP
php -S "$HOST:$PORT" -t public public/index.php &
server=$!

# wait returns early when a trapped signal arrives: wait again until the server is gone.
status=0
while kill -0 "$server" 2>/dev/null; do
    if wait "$server"; then status=0; else status=$?; fi
done
exit "$status"
