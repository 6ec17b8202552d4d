//! The file as serde reads it (with source spans), and the checks of its meaning.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::{
    AccessLogFormat, Balance, CertFiles, CheckKind, ConfigError, ConfigErrors, DbSettings,
    DnsSettings, Durability, HashOn, HealthSettings, HttpSettings, LbSettings, Mode, Node, Ports,
    Role, Subnet, TlsMode, TlsSettings, Topology, VrrpSettings, WebSettings, line_col,
};

/// The seed topology: what `hastack up` runs without `--config`, and what
/// `hastack config` prints.
pub const DEFAULT_TOPOLOGY: &str = r#"# hastack topology: www.foobar.com on one machine.
# Every node runs `hastack node NAME --config THIS_FILE`; `hastack up` runs them all.

[site]
name = "www.foobar.com"
mode = "loopback"          # each node on its own 127.x.y.z address; `hastack up --isolated`
                           # puts each node in a network namespace of its own, in `subnet`
subnet = "10.77.0.0/24"    # isolated and hosts modes: the nodes' and the VIP's network
state_dir = ".hastack"     # datadirs, sockets and logs, relative to the working directory

[vip]
address = "127.0.0.100"    # the virtual IP that lb1 and lb2 share (VRRP)
port = 8080                # the site's HTTP port on the VIP
https_port = 8443          # the site's HTTPS port on the VIP (0: no HTTPS)

[ports]
admin = 9100               # /healthz and /metrics on every node
web = 8081
web_https = 8444           # web nodes' HTTPS for clients when tls.mode = "passthrough"
app = 8082
db = 3306
vrrp = 5798                # VRRP adverts between lb nodes (UDP in loopback mode)
raft = 9102                # the db nodes' consensus on who is primary (Raft, HTTP)
dns = 5353                 # the dns nodes' DNS (UDP and TCP)

[vrrp]
vrid = 51
advert_interval = 5        # centiseconds: 0.05 s adverts, takeover in about 0.2 s
preempt = true
unicast = false            # isolated/hosts: adverts to each peer instead of 224.0.0.18
preempt_delay_ms = 0       # a higher-priority backup waits this long before taking over
# notify = "/usr/local/bin/on-vrrp"  # run with INSTANCE STATE PRIORITY at each change, in order
authenticate = false       # HMAC on adverts, key in <state_dir>/secrets/vrrp.key (hastack peers only)

[tls]
internal = true            # lb->web, web->app and app->db over TLS, certificates from the
                           # internal CA (<state_dir>/pki/ca.crt) on both sides (mTLS)
mode = "terminate"         # the lbs terminate HTTPS; "passthrough": they route TLS by SNI to
                           # the web nodes, which terminate it
redirect_http = false      # answer HTTP on the VIP with a redirect to HTTPS (production: true)
hsts = false               # send Strict-Transport-Security over HTTPS (production: true)
# [[tls.certificate]]      # the site's own certificates instead of the internal CA's (SNI
# cert = "site.crt"        # picks among them; the first is the default); paths are relative
# key = "site.key"         # to this file

[health]
check = "http"             # "http": GET /healthz answers 2xx; "tcp": a connection opens
interval_ms = 200          # while a server's state is changing, checks come 4 times as often
timeout_ms = 500
rise = 2
fall = 2

[lb]                       # how the lbs balance the web nodes (HAProxy's backend settings)
balance = "roundrobin"     # "leastconn", "random" (two random choices, the lighter wins),
                           # "first", or "hash" (consistent, with bounded loads)
hash_key = "source"        # balance = "hash": "source", "uri", "header:NAME" or "cookie:NAME"
hash_balance_factor = 125  # hash: no web node takes more than 125% of the average load
sticky_cookie = ""         # e.g. "SERVERID": an inserted cookie keeps a client on its web node
max_conn_per_server = 0    # requests one web node takes at once (0: no limit); the rest queue
queue_timeout_ms = 1000    # ... for at most this long, then 503
slow_start_ms = 0          # a web node back in service ramps up to its weight over this long
eject_after = 0            # consecutive 5xx or broken exchanges that eject a web node (0: never)
eject_ms = 10000           # ... for this long, whatever its health checks say
rate_limit = 0             # requests per second per client IP (0: no limit); 429 above
rate_burst = 0             # requests a client may send at once above the rate (0: one second's)
max_conn_per_client = 0    # open connections per client IP (0: no limit)
max_conn = 0               # open connections in all (0: no limit)
front_proxies = []         # proxies in front of the lbs, e.g. ["10.0.0.0/8"]: their connections
                           # may start with a PROXY v2 header (its client is then the client),
                           # and their X-Forwarded-For and X-Forwarded-Proto are kept
send_proxy = false         # open each connection to a web node with a PROXY v2 header naming
                           # the client (the web nodes then require one); such connections
                           # are reused only for the same client connection
# A web node's weight: `weight = N` (0..=256, default 1) in its [[node]].

[http]                     # the front door of the lb and web listeners (HTTP/1.1)
max_header_line = 8192     # bytes in one header line: 431 above (414 for the request line)
max_headers = 100          # header lines in one request: 431 above (at most 128)
head_timeout_ms = 10000    # a request head must be whole this long after its first byte: 408
write_timeout_ms = 30000   # a client that reads nothing of its answer this long is cut off
max_body = 8388608         # bytes in one request body: 413 above
body_timeout_ms = 30000    # a request body must be whole this long after its head: 408
body_buffer = 67108864     # bytes of request bodies held in memory, all requests together, so
                           # an idempotent request can be re-sent; the others stream through
access_log = "off"         # "text" (NCSA combined + server and time) or "json": one line per
                           # request in <state_dir>/logs/NODE-access.log (rotated at 64 MiB, 3 kept)

[web]
# root = "site"            # serve this directory instead of the built-in site; FILE.br,
                           # FILE.zst and FILE.gz beside a file are sent to clients that
                           # accept them (else text files are compressed at start)
compress = true            # gzip, brotli or zstd, as the client accepts, for text types
compress_min_bytes = 1024  # smaller answers go as they are
# [web.cache_control]      # Cache-Control of static files by path prefix or extension (the
# "/static/" = "public, max-age=3600"   # longest pattern wins); a fingerprinted name
# "*.html" = "no-cache"    # (style.3f9a1c2e.css) gets "public, max-age=31536000, immutable"
# [web.error_pages]        # a page of the site instead of the app tier's answer
# 502 = "/50x.html"

[web.cache]                # the microcache of the app tier's GET answers
ttl_ms = 0                 # fresh this long when the app's Cache-Control says nothing (0: off)
max_bytes = 67108864       # all answers together; the least used are evicted
max_object_bytes = 1048576 # larger answers are not kept
stale_while_revalidate_ms = 10000  # a stale answer is served while one request refreshes it
stale_if_error_ms = 300000 # a stale answer is served when every app node fails
lock_timeout_ms = 5000     # concurrent misses wait this long for the one request upstream
session_cookies = []       # cookies that make a request personal (not cached); [] = any cookie

[db]
primary = "db1"            # the initial primary; after a failover the db nodes decide
mariadbd = "mariadbd"
buffer_pool_mb = 64
durability = "semi-sync-or-refuse"  # a write is acknowledged only once a replica has it;
                           # "semi-sync-or-async" accepts writes with no replica (may lose them)
semi_sync_timeout_ms = 1000  # semi-sync-or-async: how long a commit waits for a replica
failover_lease_ms = 600    # the primary's lease: a primary that cannot renew it stops writing,
                           # and a replica is promoted once it has surely expired
max_replica_lag_ms = 5000  # replicas further behind stop serving reads
query_timeout_ms = 2000    # no query of the app waits longer
database = "foobar"
user = "foobar"
# password = "…"           # the app's and the replication account's passwords are
# repl_password = "…"      # generated into <state_dir>/secrets/ unless given here

[dns]                      # the dns nodes answer for the site's zone (foobar.com.): the
ttl = 60                   # site's name -> the VIP, SOA and NS; nothing else (no recursion,
rate_limit = 50            # ANY refused); responses per second per client address (0: no
rate_burst = 100           # limit), and how many at once above it; more are dropped

[dashboard]
address = "127.0.0.1:9000" # `hastack up` serves the live dashboard here ("": not at all);
                           # every lb's admin port serves it too, at /dashboard/

# [app]                    # your own application on every app node (unset: the built-in app)
# command = ["sh", "start.sh"]  # argv, no shell, run in dir; the app listens on $HOST:$PORT and
                           # finds its database at $DATABASE_URL (writes: the primary) and
                           # $DATABASE_READ_URL (reads: the replicas), local endpoints that
                           # follow every failover
# dir = "myapp"            # relative to this file
# health = "/healthz"      # GET must answer 2xx before the node takes traffic
# release = ["php", "migrate.php"]  # run before the app starts and before each deploy
# env = { APP_MODE = "production" }  # added to what hastack sets
# start_timeout_ms = 30000 # a new process must answer its health path within this
# stop_timeout_ms = 10000  # a stopping process finishes its requests within this (then SIGKILL)
# [app.drill]              # the traffic of `hastack drill` (the built-in app's API otherwise)
# read = "/api/entries?limit=5"   # GET: a read
# write = "/api/entries"   # POST {body}: a write whose JSON answer has an "id"; GET write/ID reads it back
# body = '{"name": "drill", "message": "{key}"}'  # {key}: unique, also the Idempotency-Key

[[node]]
name = "lb1"
role = "lb"
address = "127.0.1.1"
priority = 150

[[node]]
name = "lb2"
role = "lb"
address = "127.0.1.2"
priority = 100

[[node]]
name = "web1"
role = "web"
address = "127.0.2.1"

[[node]]
name = "web2"
role = "web"
address = "127.0.2.2"

[[node]]
name = "app1"
role = "app"
address = "127.0.3.1"

[[node]]
name = "app2"
role = "app"
address = "127.0.3.2"

[[node]]
name = "db1"
role = "db"
address = "127.0.4.1"

[[node]]
name = "db2"
role = "db"
address = "127.0.4.2"

[[node]]
name = "db3"
role = "db"
address = "127.0.4.3"

[[node]]
name = "dns1"
role = "dns"
address = "127.0.5.1"

[[node]]
name = "dns2"
role = "dns"
address = "127.0.5.2"
"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopology {
    site: RawSite,
    vip: RawVip,
    #[serde(default)]
    ports: RawPorts,
    #[serde(default)]
    vrrp: RawVrrp,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    lb: RawLb,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    web: RawWeb,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    db: RawDb,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    dashboard: RawDashboard,
    app: Option<Spanned<crate::app::RawApp>>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    ttl: u32,
    rate_limit: u32,
    rate_burst: u32,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            ttl: 60,
            rate_limit: 50,
            rate_burst: 100,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDashboard {
    address: Spanned<String>,
}

impl Default for RawDashboard {
    fn default() -> Self {
        RawDashboard {
            address: Spanned::new(0..0, "127.0.0.1:9000".to_string()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: Spanned<String>,
    #[serde(default = "default_mode")]
    mode: Spanned<String>,
    #[serde(default = "default_state_dir")]
    state_dir: String,
    #[serde(default = "default_subnet")]
    subnet: Spanned<String>,
}

fn default_subnet() -> Spanned<String> {
    Spanned::new(0..0, "10.77.0.0/24".to_string())
}

fn default_mode() -> Spanned<String> {
    Spanned::new(0..0, "loopback".to_string())
}

fn default_state_dir() -> String {
    ".hastack".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: Spanned<String>,
    port: Spanned<u16>,
    #[serde(default = "default_https_port")]
    https_port: Spanned<u16>,
}

fn default_https_port() -> Spanned<u16> {
    Spanned::new(0..0, 8443)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPorts {
    admin: Spanned<u16>,
    web: Spanned<u16>,
    web_https: Spanned<u16>,
    app: Spanned<u16>,
    db: Spanned<u16>,
    vrrp: Spanned<u16>,
    raft: Spanned<u16>,
    dns: Spanned<u16>,
}

impl Default for RawPorts {
    fn default() -> Self {
        RawPorts {
            admin: Spanned::new(0..0, 9100),
            web: Spanned::new(0..0, 8081),
            web_https: Spanned::new(0..0, 8444),
            app: Spanned::new(0..0, 8082),
            db: Spanned::new(0..0, 3306),
            vrrp: Spanned::new(0..0, 5798),
            raft: Spanned::new(0..0, 9102),
            dns: Spanned::new(0..0, 5353),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawVrrp {
    vrid: Spanned<u8>,
    advert_interval: Spanned<u16>,
    preempt: bool,
    unicast: bool,
    preempt_delay_ms: Spanned<u64>,
    notify: Option<String>,
    authenticate: bool,
}

impl Default for RawVrrp {
    fn default() -> Self {
        RawVrrp {
            vrid: Spanned::new(0..0, 51),
            advert_interval: Spanned::new(0..0, 5),
            preempt: true,
            unicast: false,
            preempt_delay_ms: Spanned::new(0..0, 0),
            notify: None,
            authenticate: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    check: Spanned<String>,
    interval_ms: Spanned<u64>,
    timeout_ms: Spanned<u64>,
    rise: Spanned<u32>,
    fall: Spanned<u32>,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            check: Spanned::new(0..0, "http".to_string()),
            interval_ms: Spanned::new(0..0, 200),
            timeout_ms: Spanned::new(0..0, 500),
            rise: Spanned::new(0..0, 2),
            fall: Spanned::new(0..0, 2),
        }
    }
}

/// The `[lb]` section, checked.
fn lb_settings(raw: &RawLb, c: &mut Checker) -> LbSettings {
    let balance = match raw.balance.get_ref().as_str() {
        "roundrobin" => Balance::RoundRobin,
        "leastconn" => Balance::LeastConn,
        "random" => Balance::Random,
        "first" => Balance::First,
        "hash" => Balance::Hash,
        other => {
            c.error(
                &raw.balance,
                format!("lb.balance is \"{other}\", which is not an algorithm hastack knows"),
                "use \"roundrobin\", \"leastconn\", \"random\", \"first\" or \"hash\"",
            );
            Balance::RoundRobin
        }
    };
    let key = raw.hash_key.get_ref();
    let hash_key = match key.split_once(':') {
        None if key == "source" => HashOn::Source,
        None if key == "uri" => HashOn::Uri,
        Some(("header", h))
            if !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            HashOn::Header(h.to_ascii_lowercase())
        }
        Some(("cookie", k)) if !k.is_empty() && !k.contains([';', '=', ' ']) => {
            HashOn::Cookie(k.to_string())
        }
        _ => {
            c.error(
                &raw.hash_key,
                format!("lb.hash_key is \"{key}\", which names nothing to hash"),
                "use \"source\", \"uri\", \"header:NAME\" or \"cookie:NAME\"",
            );
            HashOn::Source
        }
    };
    let factor = *raw.hash_balance_factor.get_ref();
    if !(100..=1000).contains(&factor) {
        c.error(
            &raw.hash_balance_factor,
            format!("lb.hash_balance_factor must be 100..=1000 (percent), found {factor}"),
            "125 lets a node take 25% more than the average before its keys spill over",
        );
    }
    let cookie = raw.sticky_cookie.get_ref().trim();
    if cookie.contains([';', '=', ' ', ',']) {
        c.error(
            &raw.sticky_cookie,
            format!("lb.sticky_cookie \"{cookie}\" is not a cookie name"),
            "use a token such as \"SERVERID\", or \"\" for no sticky sessions",
        );
    }
    c.positive(&raw.queue_timeout_ms, "lb.queue_timeout_ms");
    c.positive(&raw.eject_ms, "lb.eject_ms");
    let mut front_proxies = Vec::new();
    for p in &raw.front_proxies {
        let text = p.get_ref().trim();
        // A bare address is a network of one.
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(n) => front_proxies.push(n.trunc()),
            Err(_) => c.error(
                p,
                format!("lb.front_proxies has \"{text}\", which is not an address or network"),
                "write an address (\"10.0.0.5\") or a network (\"10.0.0.0/8\", \"fd00::/8\")",
            ),
        }
    }
    LbSettings {
        balance,
        hash_key,
        hash_balance_factor: factor,
        sticky_cookie: (!cookie.is_empty()).then(|| cookie.to_string()),
        max_conn_per_server: raw.max_conn_per_server,
        queue_timeout: Duration::from_millis(*raw.queue_timeout_ms.get_ref()),
        slow_start: Duration::from_millis(raw.slow_start_ms),
        eject_after: raw.eject_after,
        eject_for: Duration::from_millis(*raw.eject_ms.get_ref()),
        rate_limit: raw.rate_limit,
        rate_burst: raw.rate_burst,
        max_conn_per_client: raw.max_conn_per_client,
        max_conn: raw.max_conn,
        front_proxies,
        send_proxy: raw.send_proxy,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLb {
    balance: Spanned<String>,
    hash_key: Spanned<String>,
    hash_balance_factor: Spanned<u32>,
    sticky_cookie: Spanned<String>,
    max_conn_per_server: u32,
    queue_timeout_ms: Spanned<u64>,
    slow_start_ms: u64,
    eject_after: u32,
    eject_ms: Spanned<u64>,
    rate_limit: u32,
    rate_burst: u32,
    max_conn_per_client: u32,
    max_conn: u32,
    front_proxies: Vec<Spanned<String>>,
    send_proxy: bool,
}

impl Default for RawLb {
    fn default() -> Self {
        RawLb {
            balance: Spanned::new(0..0, "roundrobin".into()),
            hash_key: Spanned::new(0..0, "source".into()),
            hash_balance_factor: Spanned::new(0..0, 125),
            sticky_cookie: Spanned::new(0..0, String::new()),
            max_conn_per_server: 0,
            queue_timeout_ms: Spanned::new(0..0, 1000),
            slow_start_ms: 0,
            eject_after: 0,
            eject_ms: Spanned::new(0..0, 10_000),
            rate_limit: 0,
            rate_burst: 0,
            max_conn_per_client: 0,
            max_conn: 0,
            front_proxies: Vec::new(),
            send_proxy: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    max_header_line: Spanned<u64>,
    max_headers: Spanned<u64>,
    head_timeout_ms: Spanned<u64>,
    write_timeout_ms: Spanned<u64>,
    max_body: Spanned<u64>,
    body_timeout_ms: Spanned<u64>,
    body_buffer: Spanned<u64>,
    access_log: Spanned<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            max_header_line: Spanned::new(0..0, 8192),
            max_headers: Spanned::new(0..0, 100),
            head_timeout_ms: Spanned::new(0..0, 10_000),
            write_timeout_ms: Spanned::new(0..0, 30_000),
            max_body: Spanned::new(0..0, 8 << 20),
            body_timeout_ms: Spanned::new(0..0, 30_000),
            body_buffer: Spanned::new(0..0, 64 << 20),
            access_log: Spanned::new(0..0, "off".into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    internal: bool,
    mode: Spanned<String>,
    redirect_http: bool,
    hsts: bool,
    certificate: Vec<RawCertificate>,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            internal: true,
            mode: Spanned::new(0..0, "terminate".into()),
            redirect_http: false,
            hsts: false,
            certificate: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWeb {
    root: Option<String>,
    compress: bool,
    compress_min_bytes: u64,
    cache_control: std::collections::BTreeMap<String, Spanned<String>>,
    error_pages: std::collections::BTreeMap<String, Spanned<String>>,
    cache: RawCache,
}

impl Default for RawWeb {
    fn default() -> RawWeb {
        let d = crate::WebSettings::default();
        RawWeb {
            root: None,
            compress: d.compress,
            compress_min_bytes: d.compress_min_bytes as u64,
            cache_control: Default::default(),
            error_pages: Default::default(),
            cache: RawCache::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    ttl_ms: u64,
    max_bytes: Spanned<u64>,
    max_object_bytes: Spanned<u64>,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    lock_timeout_ms: Spanned<u64>,
    session_cookies: Vec<Spanned<String>>,
}

impl Default for RawCache {
    fn default() -> RawCache {
        let d = crate::CacheSettings::default();
        RawCache {
            ttl_ms: d.ttl.as_millis() as u64,
            max_bytes: Spanned::new(0..0, d.max_bytes),
            max_object_bytes: Spanned::new(0..0, d.max_object_bytes as u64),
            stale_while_revalidate_ms: d.stale_while_revalidate.as_millis() as u64,
            stale_if_error_ms: d.stale_if_error.as_millis() as u64,
            lock_timeout_ms: Spanned::new(0..0, d.lock_timeout.as_millis() as u64),
            session_cookies: Vec::new(),
        }
    }
}

/// The `[web]` section, checked.
fn web_settings(raw: RawWeb, c: &mut Checker) -> WebSettings {
    let mut cache_control = Vec::new();
    for (pattern, value) in raw.cache_control {
        let ok_pattern = pattern.starts_with('/')
            || pattern
                .strip_prefix("*.")
                .is_some_and(|e| !e.is_empty() && !e.contains(['/', '*']));
        if !ok_pattern {
            c.error(
                &value,
                format!("web.cache_control has the pattern \"{pattern}\", which is neither a path prefix nor an extension"),
                "write a path prefix (\"/static/\") or an extension (\"*.css\")",
            );
        } else if http_value(value.get_ref()) {
            cache_control.push((pattern, value.into_inner()));
        } else {
            c.error(
                &value,
                format!("web.cache_control.\"{pattern}\" is not a header value"),
                "write visible ASCII, e.g. \"public, max-age=3600\"",
            );
        }
    }
    let mut error_pages = Vec::new();
    for (status, page) in raw.error_pages {
        let code = status
            .parse::<u16>()
            .ok()
            .filter(|s| (400..=599).contains(s));
        match code {
            None => c.error(
                &page,
                format!("web.error_pages has \"{status}\", which is not an error status"),
                "write a status from 400 to 599, e.g. 502 = \"/50x.html\"",
            ),
            Some(_) if !page.get_ref().starts_with('/') => c.error(
                &page,
                format!(
                    "web.error_pages.{status} is \"{}\", which is not a path of the site",
                    page.get_ref()
                ),
                "write the page's URL path, e.g. \"/50x.html\"",
            ),
            Some(code) => error_pages.push((code, page.into_inner())),
        }
    }
    let cache = raw.cache;
    c.positive(&cache.max_bytes, "web.cache.max_bytes");
    c.positive(&cache.max_object_bytes, "web.cache.max_object_bytes");
    c.positive(&cache.lock_timeout_ms, "web.cache.lock_timeout_ms");
    let mut session_cookies = Vec::new();
    for name in cache.session_cookies {
        if name.get_ref().is_empty() || name.get_ref().contains([';', '=', ' ', ',']) {
            c.error(
                &name,
                format!(
                    "web.cache.session_cookies has \"{}\", which is not a cookie name",
                    name.get_ref()
                ),
                "write cookie names such as \"session\"; [] treats every cookie as personal",
            );
        } else {
            session_cookies.push(name.into_inner());
        }
    }
    WebSettings {
        root: raw.root.map(PathBuf::from),
        compress: raw.compress,
        compress_min_bytes: usize::try_from(raw.compress_min_bytes).unwrap_or(usize::MAX),
        cache_control,
        error_pages,
        cache: crate::CacheSettings {
            ttl: Duration::from_millis(cache.ttl_ms),
            max_bytes: cache.max_bytes.into_inner(),
            max_object_bytes: usize::try_from(cache.max_object_bytes.into_inner())
                .unwrap_or(usize::MAX),
            stale_while_revalidate: Duration::from_millis(cache.stale_while_revalidate_ms),
            stale_if_error: Duration::from_millis(cache.stale_if_error_ms),
            lock_timeout: Duration::from_millis(cache.lock_timeout_ms.into_inner()),
            session_cookies,
        },
    }
}

/// Whether `v` may be sent as a header value.
fn http_value(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDb {
    primary: Option<Spanned<String>>,
    mariadbd: String,
    buffer_pool_mb: Spanned<u32>,
    durability: Spanned<String>,
    semi_sync_timeout_ms: Spanned<u64>,
    failover_lease_ms: Spanned<u64>,
    max_replica_lag_ms: Spanned<u64>,
    query_timeout_ms: Spanned<u64>,
    database: Spanned<String>,
    user: Spanned<String>,
    password: Option<Spanned<String>>,
    repl_password: Option<Spanned<String>>,
}

impl Default for RawDb {
    fn default() -> Self {
        RawDb {
            primary: None,
            mariadbd: "mariadbd".into(),
            buffer_pool_mb: Spanned::new(0..0, 64),
            durability: Spanned::new(0..0, "semi-sync-or-refuse".into()),
            semi_sync_timeout_ms: Spanned::new(0..0, 1000),
            failover_lease_ms: Spanned::new(0..0, 600),
            max_replica_lag_ms: Spanned::new(0..0, 5000),
            query_timeout_ms: Spanned::new(0..0, 2000),
            database: Spanned::new(0..0, "foobar".into()),
            user: Spanned::new(0..0, "foobar".into()),
            password: None,
            repl_password: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    role: Spanned<String>,
    address: Spanned<String>,
    priority: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
}

/// A hint for serde's own messages (unknown field, wrong type, missing field).
pub(crate) fn serde_help(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; `hastack config` prints every key with its default"
            .into()
    } else if message.contains("missing field") {
        "add the key; `hastack config` prints a complete topology to start from".into()
    } else if message.contains("invalid type") {
        "give the value the type shown (strings in double quotes, numbers bare)".into()
    } else {
        "see `hastack config` for a valid topology file".into()
    }
}

pub(crate) struct Checker<'a> {
    text: &'a str,
    pub(crate) file: &'a Path,
    pub(crate) errors: Vec<ConfigError>,
}

impl Checker<'_> {
    /// Where `at` stands in the file.
    pub(crate) fn place<T>(&self, at: &Spanned<T>) -> crate::app::Place {
        let (line, column) = line_col(self.text, at.span().start);
        crate::app::Place {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    pub(crate) fn error<T>(&mut self, at: &Spanned<T>, message: String, help: &str) {
        let (line, column) = if at.span().end == 0 {
            (0, 0)
        } else {
            line_col(self.text, at.span().start)
        };
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message,
            help: Some(help.to_string()),
        });
    }

    fn ipv4(&mut self, value: &Spanned<String>, what: &str) -> Option<Ipv4Addr> {
        match value.get_ref().parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    value,
                    format!("{what} `{}` is not an IPv4 address", value.get_ref()),
                    "write a dotted quad such as \"127.0.1.1\"",
                );
                None
            }
        }
    }

    pub(crate) fn positive<T: PartialOrd + Default + std::fmt::Display>(
        &mut self,
        v: &Spanned<T>,
        what: &str,
    ) {
        if *v.get_ref() <= T::default() {
            self.error(
                v,
                format!("{what} must be greater than zero, found {}", v.get_ref()),
                "give a positive value",
            );
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
}

fn valid_sql_ident(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn validate(
    raw: RawTopology,
    text: &str,
    file: &Path,
) -> Result<Topology, ConfigErrors> {
    let mut c = Checker {
        text,
        file,
        errors: Vec::new(),
    };

    let mode = match raw.site.mode.get_ref().as_str() {
        "loopback" => Some(Mode::Loopback),
        "isolated" => Some(Mode::Isolated),
        "hosts" => Some(Mode::Hosts),
        other => {
            c.error(
                &raw.site.mode,
                format!(
                    "unknown mode \"{other}\", expected \"loopback\", \"isolated\" or \"hosts\""
                ),
                "\"loopback\": one machine, 127.x addresses; \"isolated\": one machine, a network namespace per node (root); \"hosts\": one server per node",
            );
            None
        }
    };
    let subnet = match Subnet::parse(raw.site.subnet.get_ref()) {
        Some(s) if (8..=24).contains(&s.prefix) => Some(s),
        Some(s) => {
            c.error(
                &raw.site.subnet,
                format!("site.subnet {s} has a /{} prefix, expected /8 to /24", s.prefix),
                "the subnet must hold every node, the VIP, the supervisor and the client: use a /24 such as \"10.77.0.0/24\"",
            );
            None
        }
        None => {
            c.error(
                &raw.site.subnet,
                format!(
                    "site.subnet `{}` is not an IPv4 network",
                    raw.site.subnet.get_ref()
                ),
                "write an address with its prefix length and zero host bits, e.g. \"10.77.0.0/24\"",
            );
            None
        }
    };
    // Isolated and hosts modes: every address must be a host of the subnet; in
    // isolated mode the last two hosts are the supervisor's and the client's.
    let outside = |a: Ipv4Addr| -> Option<String> {
        let net = subnet?;
        let m = mode?;
        if m == Mode::Loopback {
            return None;
        }
        if !net.has_host(a) {
            return Some(format!("{a} is not a host address of site.subnet {net}"));
        }
        let last = net.last_host()?;
        let client = net.host(u32::from(last) - u32::from(net.network) - 1)?;
        (m == Mode::Isolated && (a == last || a == client)).then(|| {
            format!("{a} is reserved in isolated mode ({last} is the supervisor's, {client} the client's)")
        })
    };
    if raw.site.name.get_ref().trim().is_empty() {
        c.error(
            &raw.site.name,
            "the site name is empty".into(),
            "give the site's host name, e.g. \"www.foobar.com\"",
        );
    }

    let vip = c.ipv4(&raw.vip.address, "the VIP");
    if let Some(vip) = vip
        && mode == Some(Mode::Loopback)
        && !vip.is_loopback()
    {
        c.error(
            &raw.vip.address,
            format!("in loopback mode the VIP must be a 127.x.y.z address, found {vip}"),
            "pick an unused loopback address such as \"127.0.0.100\"",
        );
    }
    if let Some(why) = vip.and_then(outside) {
        c.error(
            &raw.vip.address,
            format!("the VIP: {why}"),
            "pick an unused host address of site.subnet for the VIP",
        );
    }
    c.positive(&raw.vip.port, "the VIP's port");
    if raw.vip.https_port.get_ref() == raw.vip.port.get_ref() {
        c.error(
            &raw.vip.https_port,
            format!(
                "vip.https_port is the same port as vip.port ({})",
                raw.vip.port.get_ref()
            ),
            "HTTP and HTTPS need ports of their own on the VIP (8080 and 8443), or 0 for no HTTPS",
        );
    }
    let tls_mode = match raw.tls.mode.get_ref().as_str() {
        "terminate" => Some(TlsMode::Terminate),
        "passthrough" => Some(TlsMode::Passthrough),
        other => {
            c.error(
                &raw.tls.mode,
                format!("unknown tls.mode \"{other}\", expected \"terminate\" or \"passthrough\""),
                "\"terminate\": the lbs decrypt HTTPS; \"passthrough\": they route it by SNI to the web nodes, which decrypt it",
            );
            None
        }
    };
    if *raw.vip.https_port.get_ref() == 0 && (raw.tls.redirect_http || raw.tls.hsts) {
        c.error(
            &raw.vip.https_port,
            "tls.redirect_http and tls.hsts need HTTPS, and vip.https_port is 0".into(),
            "set vip.https_port (e.g. 8443), or turn redirect_http and hsts off",
        );
    }
    if tls_mode == Some(TlsMode::Passthrough) && raw.tls.redirect_http {
        // Fine: the lbs still answer HTTP themselves.
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let certificates: Vec<CertFiles> = raw
        .tls
        .certificate
        .iter()
        .map(|c| CertFiles {
            cert: base.join(c.cert.get_ref()),
            key: base.join(c.key.get_ref()),
        })
        .collect();
    for (i, cf) in raw.tls.certificate.iter().enumerate() {
        for (v, what) in [(&cf.cert, "cert"), (&cf.key, "key")] {
            if v.get_ref().trim().is_empty() {
                c.error(
                    v,
                    format!("tls.certificate #{} has an empty {what} path", i + 1),
                    "give the PEM file's path, relative to this file or absolute",
                );
            }
        }
    }

    let p = &raw.ports;
    for (v, what) in [
        (&p.admin, "ports.admin"),
        (&p.web, "ports.web"),
        (&p.web_https, "ports.web_https"),
        (&p.app, "ports.app"),
        (&p.db, "ports.db"),
        (&p.vrrp, "ports.vrrp"),
        (&p.raft, "ports.raft"),
    ] {
        c.positive(v, what);
    }
    if p.web_https.get_ref() == p.web.get_ref() {
        c.error(
            &p.web_https,
            format!("ports.web_https is the same port as ports.web ({})", p.web.get_ref()),
            "the web nodes serve the tier's HTTP and clients' HTTPS (passthrough) on different ports",
        );
    }
    for (v, what) in [
        (&p.web, "ports.web"),
        (&p.web_https, "ports.web_https"),
        (&p.app, "ports.app"),
        (&p.db, "ports.db"),
        (&p.raft, "ports.raft"),
    ] {
        if v.get_ref() == p.admin.get_ref() {
            c.error(
                v,
                format!(
                    "{what} is the same port as ports.admin ({})",
                    p.admin.get_ref()
                ),
                "the admin port (/healthz, /metrics) needs a port of its own on every node",
            );
        }
    }

    if *raw.vrrp.vrid.get_ref() == 0 {
        c.error(
            &raw.vrrp.vrid,
            "vrrp.vrid must be 1..=255, found 0".into(),
            "pick a virtual router id from 1 to 255",
        );
    }
    let adv = *raw.vrrp.advert_interval.get_ref();
    if adv == 0 || adv > 4095 {
        c.error(
            &raw.vrrp.advert_interval,
            format!("vrrp.advert_interval must be 1..=4095 centiseconds, found {adv}"),
            "VRRPv3 carries the interval in 12 bits of centiseconds: 10 = 0.1 s, 100 = 1 s",
        );
    }

    let h = &raw.health;
    c.positive(&h.interval_ms, "health.interval_ms");
    c.positive(&h.timeout_ms, "health.timeout_ms");
    c.positive(&h.rise, "health.rise");
    c.positive(&h.fall, "health.fall");
    let check = match h.check.get_ref().as_str() {
        "http" => CheckKind::Http,
        "tcp" => CheckKind::Tcp,
        other => {
            c.error(
                &h.check,
                format!("health.check is \"{other}\", which is not a kind of check hastack knows"),
                "use \"http\" (GET /healthz must answer 2xx) or \"tcp\" (a connection must open)",
            );
            CheckKind::Http
        }
    };

    let lb = lb_settings(&raw.lb, &mut c);
    let web = web_settings(raw.web, &mut c);
    let app = raw
        .app
        .and_then(|section| crate::app::app_settings(section, &mut c));
    let hp = &raw.http;
    c.positive(&hp.head_timeout_ms, "http.head_timeout_ms");
    c.positive(&hp.write_timeout_ms, "http.write_timeout_ms");
    c.positive(&hp.body_timeout_ms, "http.body_timeout_ms");
    let max_body = *hp.max_body.get_ref();
    if max_body > 1 << 30 {
        c.error(
            &hp.max_body,
            format!("http.max_body must be at most 1 GiB (1073741824), found {max_body}"),
            "bodies that large belong in an object store; 8388608 (8 MiB) suits most sites",
        );
    }
    let access_log = match hp.access_log.get_ref().as_str() {
        "off" => None,
        "text" => Some(AccessLogFormat::Text),
        "json" => Some(AccessLogFormat::Json),
        other => {
            c.error(
                &hp.access_log,
                format!("http.access_log is \"{other}\", which is not a log format"),
                "use \"off\", \"text\" (NCSA combined, as nginx and Apache write) or \"json\"",
            );
            None
        }
    };
    let buffer = *hp.body_buffer.get_ref();
    if buffer > 16 << 30 {
        c.error(
            &hp.body_buffer,
            format!("http.body_buffer must be at most 16 GiB, found {buffer}"),
            "a few times max_body is plenty: bodies that do not fit stream through",
        );
    }
    let line = *hp.max_header_line.get_ref();
    if !(256..=65536).contains(&line) {
        c.error(
            &hp.max_header_line,
            format!("http.max_header_line must be 256..=65536 bytes, found {line}"),
            "8192 (nginx's large_client_header_buffers) suits almost every site",
        );
    }
    let count = *hp.max_headers.get_ref();
    if !(1..=128).contains(&count) {
        c.error(
            &hp.max_headers,
            format!("http.max_headers must be 1..=128, found {count}"),
            "100 is hyper's and HAProxy's default; browsers send about 20",
        );
    }

    if p.raft.get_ref() == p.db.get_ref() {
        c.error(
            &p.raft,
            format!(
                "ports.raft is the same port as ports.db ({})",
                p.db.get_ref()
            ),
            "db nodes serve MariaDB and their consensus on different ports: pick another",
        );
    }

    c.positive(&raw.db.buffer_pool_mb, "db.buffer_pool_mb");
    let durability = match raw.db.durability.get_ref().as_str() {
        "semi-sync-or-refuse" => Some(Durability::SemiSyncOrRefuse),
        "semi-sync-or-async" => Some(Durability::SemiSyncOrAsync),
        other => {
            c.error(
                &raw.db.durability,
                format!(
                    "unknown db.durability \"{other}\", expected \"semi-sync-or-refuse\" or \"semi-sync-or-async\""
                ),
                "\"semi-sync-or-refuse\" acknowledges a write only once a replica has it (no acknowledged write is lost); \"semi-sync-or-async\" keeps accepting writes when no replica answers",
            );
            None
        }
    };
    c.positive(&raw.db.semi_sync_timeout_ms, "db.semi_sync_timeout_ms");
    c.positive(&raw.db.max_replica_lag_ms, "db.max_replica_lag_ms");
    c.positive(&raw.db.query_timeout_ms, "db.query_timeout_ms");
    let lease = *raw.db.failover_lease_ms.get_ref();
    if !(200..=60_000).contains(&lease) {
        c.error(
            &raw.db.failover_lease_ms,
            format!("db.failover_lease_ms must be 200..=60000, found {lease}"),
            "the lease bounds how long a dead primary goes unnoticed: 600 (0.6 s) is the default; below 200 ms a busy machine would fail over spuriously",
        );
    }
    for (v, what) in [
        (&raw.db.password, "db.password"),
        (&raw.db.repl_password, "db.repl_password"),
    ] {
        if let Some(v) = v
            && (v.get_ref().is_empty() || v.get_ref().chars().any(char::is_control))
        {
            c.error(
                v,
                format!("{what} is empty or has control characters"),
                "give a non-empty password of printable characters, or remove the line to have one generated into <state_dir>/secrets/",
            );
        }
    }
    for (v, what) in [(&raw.db.database, "db.database"), (&raw.db.user, "db.user")] {
        if !valid_sql_ident(v.get_ref()) {
            c.error(
                v,
                format!("{what} `{}` is not a plain SQL name", v.get_ref()),
                "use 1 to 32 letters, digits or underscores",
            );
        }
    }

    // Nodes.
    let mut nodes = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    let mut addresses: HashMap<Ipv4Addr, String> = HashMap::new();
    for n in &raw.node {
        let name = n.name.get_ref().clone();
        if !valid_name(&name) {
            c.error(
                &n.name,
                format!("node name `{name}` is not valid"),
                "start with a lowercase letter; use lowercase letters, digits and '-' (at most 32)",
            );
        } else if names.insert(name.clone(), ()).is_some() {
            c.error(
                &n.name,
                format!("duplicate node name `{name}`"),
                "every node needs a name of its own",
            );
        }
        let role = match n.role.get_ref().as_str() {
            "lb" => Some(Role::Lb),
            "web" => Some(Role::Web),
            "app" => Some(Role::App),
            "db" => Some(Role::Db),
            "dns" => Some(Role::Dns),
            other => {
                c.error(
                    &n.role,
                    format!("unknown role \"{other}\" for node `{name}`"),
                    "the role is one of \"dns\", \"lb\", \"web\", \"app\", \"db\"",
                );
                None
            }
        };
        let address = c.ipv4(&n.address, &format!("the address of node `{name}`"));
        if let Some(a) = address {
            if mode == Some(Mode::Loopback) && !a.is_loopback() {
                c.error(
                    &n.address,
                    format!("in loopback mode node `{name}` needs a 127.x.y.z address, found {a}"),
                    "give each node its own loopback address, e.g. \"127.0.2.1\"",
                );
            }
            if let Some(why) = outside(a) {
                c.error(
                    &n.address,
                    format!("node `{name}`: {why}"),
                    "give each node a host address of site.subnet",
                );
            }
            if Some(a) == vip {
                c.error(
                    &n.address,
                    format!("node `{name}` has the VIP {a} as its own address"),
                    "the VIP floats between lb nodes: give the node another address",
                );
            } else if let Some(other) = addresses.insert(a, name.clone()) {
                c.error(
                    &n.address,
                    format!("node `{name}` has the same address {a} as node `{other}`"),
                    "give every node an address of its own",
                );
            }
        }
        let priority = match (&n.priority, role) {
            (Some(p), Some(Role::Lb)) => {
                let v = *p.get_ref();
                if (1..=254).contains(&v) {
                    Some(v as u8)
                } else {
                    c.error(
                        p,
                        format!("lb node `{name}` has priority {v}, expected 1..=254"),
                        "255 is reserved for the VIP's owner and 0 means 'leaving'; pick 1..=254, higher wins",
                    );
                    None
                }
            }
            (Some(p), Some(r)) => {
                c.error(
                    p,
                    format!("node `{name}` is a {r} node; only lb nodes have a priority"),
                    "remove the priority line",
                );
                None
            }
            (None, Some(Role::Lb)) => {
                c.error(
                    &n.name,
                    format!("lb node `{name}` has no priority"),
                    "add `priority = N` (1..=254, higher wins the VIP)",
                );
                None
            }
            _ => None,
        };
        let weight = match (&n.weight, role) {
            (Some(w), Some(Role::Web | Role::App)) => {
                let v = *w.get_ref();
                if (0..=256).contains(&v) {
                    v as u32
                } else {
                    c.error(
                        w,
                        format!("node `{name}` has weight {v}, expected 0..=256"),
                        "a node with weight 2 gets twice the requests of one with weight 1; 0 takes none",
                    );
                    1
                }
            }
            (Some(w), Some(r)) => {
                c.error(
                    w,
                    format!("node `{name}` is a {r} node; only web and app nodes have a weight"),
                    "remove the weight line",
                );
                1
            }
            _ => 1,
        };
        if let (Some(role), Some(address)) = (role, address) {
            nodes.push(Node {
                name,
                role,
                address,
                priority,
                weight,
            });
        }
    }

    let whole_file = Spanned::new(0..0, ());
    for role in Role::REQUIRED {
        if !raw.node.iter().any(|n| n.role.get_ref() == role.as_str()) {
            c.error(
                &whole_file,
                format!("the {role} tier has no nodes"),
                &format!(
                    "add a [[node]] with role = \"{role}\"; every tier needs at least one node"
                ),
            );
        }
    }

    let primary = match &raw.db.primary {
        Some(p) => {
            let found = nodes
                .iter()
                .any(|n| n.name == *p.get_ref() && n.role == Role::Db);
            if !found && names.contains_key(p.get_ref()) {
                c.error(
                    p,
                    format!("db.primary `{}` is not a db node", p.get_ref()),
                    "name one of the nodes with role = \"db\"",
                );
            } else if !found {
                c.error(
                    p,
                    format!(
                        "db.primary `{}` is not a node of this topology",
                        p.get_ref()
                    ),
                    "name one of the nodes with role = \"db\"",
                );
            }
            p.get_ref().clone()
        }
        None => nodes
            .iter()
            .find(|n| n.role == Role::Db)
            .map(|n| n.name.clone())
            .unwrap_or_default(),
    };

    let dashboard = match raw.dashboard.address.get_ref().trim() {
        "" | "off" => None,
        text => match text.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.error(
                    &raw.dashboard.address,
                    format!("dashboard.address `{text}` is not an address and port"),
                    "write e.g. \"127.0.0.1:9000\", or \"\" for no dashboard",
                );
                None
            }
        },
    };
    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    let Some(vip) = vip else {
        return Err(ConfigErrors(c.errors));
    };
    Ok(Topology {
        source: file.to_path_buf(),
        site: raw.site.name.into_inner(),
        mode: mode.unwrap_or(Mode::Loopback),
        subnet: subnet.unwrap_or(Subnet {
            network: Ipv4Addr::new(10, 77, 0, 0),
            prefix: 24,
        }),
        state_dir: PathBuf::from(raw.site.state_dir),
        vip,
        http_port: raw.vip.port.into_inner(),
        https_port: Some(raw.vip.https_port.into_inner()).filter(|p| *p != 0),
        tls: TlsSettings {
            internal: raw.tls.internal,
            mode: tls_mode.unwrap_or(TlsMode::Terminate),
            redirect_http: raw.tls.redirect_http,
            hsts: raw.tls.hsts,
            certificates,
        },
        ports: Ports {
            admin: p.admin.clone().into_inner(),
            web: p.web.clone().into_inner(),
            web_https: p.web_https.clone().into_inner(),
            app: p.app.clone().into_inner(),
            db: p.db.clone().into_inner(),
            vrrp: p.vrrp.clone().into_inner(),
            raft: p.raft.clone().into_inner(),
            dns: p.dns.clone().into_inner(),
        },
        vrrp: VrrpSettings {
            vrid: raw.vrrp.vrid.into_inner(),
            advert_interval_cs: adv,
            preempt: raw.vrrp.preempt,
            unicast: raw.vrrp.unicast,
            preempt_delay: Duration::from_millis(*raw.vrrp.preempt_delay_ms.get_ref()),
            notify: raw.vrrp.notify.filter(|n| !n.trim().is_empty()),
            authenticate: raw.vrrp.authenticate,
        },
        health: HealthSettings {
            check,
            interval: Duration::from_millis(*h.interval_ms.get_ref()),
            timeout: Duration::from_millis(*h.timeout_ms.get_ref()),
            rise: *h.rise.get_ref(),
            fall: *h.fall.get_ref(),
        },
        lb,
        http: HttpSettings {
            max_header_line: *hp.max_header_line.get_ref() as usize,
            max_headers: *hp.max_headers.get_ref() as usize,
            head_timeout: Duration::from_millis(*hp.head_timeout_ms.get_ref()),
            write_timeout: Duration::from_millis(*hp.write_timeout_ms.get_ref()),
            max_body: max_body as usize,
            body_timeout: Duration::from_millis(*hp.body_timeout_ms.get_ref()),
            body_buffer: buffer as usize,
            access_log,
        },
        web,
        db: DbSettings {
            primary,
            mariadbd: raw.db.mariadbd,
            buffer_pool_mb: raw.db.buffer_pool_mb.into_inner(),
            durability: durability.unwrap_or(Durability::SemiSyncOrRefuse),
            semi_sync_timeout: Duration::from_millis(raw.db.semi_sync_timeout_ms.into_inner()),
            failover_lease: Duration::from_millis(lease),
            max_replica_lag: Duration::from_millis(raw.db.max_replica_lag_ms.into_inner()),
            query_timeout: Duration::from_millis(raw.db.query_timeout_ms.into_inner()),
            database: raw.db.database.into_inner(),
            user: raw.db.user.into_inner(),
            password: raw.db.password.map(Spanned::into_inner),
            repl_password: raw.db.repl_password.map(Spanned::into_inner),
        },
        dns: DnsSettings {
            ttl: raw.dns.ttl,
            rate_limit: raw.dns.rate_limit,
            rate_burst: raw.dns.rate_burst,
        },
        dashboard,
        app,
        nodes,
    })
}
