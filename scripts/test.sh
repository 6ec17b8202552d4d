#!/usr/bin/env bash
# Runs hastack's tests: unit tests, and integration tests that drive the real binary
# (a whole stack with real MariaDB servers on loopback addresses, and the site in a
# real headless Chromium), and system tests that run the stack isolated (a network
# namespace per node, nftables, VRRP on the wire, keepalived as a peer).
#
# On a fresh Debian machine it first installs what the tests need (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || need+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)            # tests read servers directly
command -v mariadb-backup >/dev/null 2>&1 || need+=(mariadb-backup)     # hastack db rebuild
[ -x /usr/bin/chromium ] || need+=(chromium)   # the browser test drives a real Chromium
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)          # isolated mode: namespaces
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)        # isolated mode: firewalls
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || need+=(keepalived)  # VRRP interop test; keepalived --config-test of `hastack export keepalived`
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)  # PROXY protocol interop test; haproxy -c of `hastack export haproxy`
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)  # nginx -t of `hastack export nginx`
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v php >/dev/null 2>&1 || need+=(php-cli)                      # the example app (examples/guestbook-php) runs in the app tier
{ command -v php >/dev/null 2>&1 && php -m 2>/dev/null | grep -q '^pdo_mysql$'; } || need+=(php-mysql)  # ... with PDO MySQL
command -v curl >/dev/null 2>&1 || need+=(curl)          # HTTPS and HTTP/2 tests: a real client
command -v openssl >/dev/null 2>&1 || need+=(openssl)    # reads the certificate a server shows
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)  # the browser trusts the internal CA
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)        # DNS answers of the dns nodes, by a real resolver client
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)  # every /metrics through Prometheus' OpenMetrics parser
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: the tests need ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo test --workspace --locked "$@"
