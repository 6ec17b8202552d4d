//! `hastack export haproxy|keepalived|nginx`: the configuration of the incumbents that
//! do what a topology's nodes do, for teams that migrate to hastack or away from it, or
//! run both side by side to compare.
//!
//! - [`haproxy`]: one lb node's `haproxy.cfg`: the VIP's frontend (HTTP, HTTPS
//!   terminated or passed through by SNI), the web nodes' backend with their weights,
//!   `[lb]`'s algorithm, stickiness, limits, rate limit and passive ejection, `[health]`'s
//!   checks, `[http]`'s timeouts and body limit, and the stats page, `/healthz` and
//!   `/metrics` on the lb's admin address.
//! - [`keepalived`]: one lb node's `keepalived.conf`: the VRRPv3 instance that moves the
//!   VIP (vrid, priority, advert interval, preemption, unicast peers, notify), and a
//!   track script that puts the node in FAULT while HAProxy has no healthy web node, as
//!   hastack's lb does.
//! - [`nginx`]: one web node's `nginx.conf`: static files, gzip, `Cache-Control` rules,
//!   the reverse proxy to an `upstream` of the app nodes with keep-alive, the
//!   microcache, error pages, `[http]`'s timeouts and limits, mTLS between tiers.
//!
//! What is translated is what the incumbent can express. Whatever hastack does that it
//! cannot (or not the same way) is said in the output, in comments that start with
//! `# not translated:`; nothing is dropped silently. The app and db tiers have no
//! incumbent here: the application is the site's own code, and MariaDB's replication
//! and failover are hastack's (`hastack db …`).
//!
//! Every path in the output is as the topology gives it: the command makes the state
//! directory, the site root and the certificates absolute before calling these.
//! Generating is pure: no file is read or written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hastack_tls::pki::Pki;

use hastack_config::{
    AccessLogFormat, Balance, CheckKind, HashOn, Mode, Node, Role, TlsMode, Topology,
};

/// Which incumbent's configuration to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// HAProxy: one lb node's load balancing (`haproxy -c -f FILE` checks it).
    Haproxy,
    /// keepalived: one lb node's VRRP, the VIP (`keepalived --config-test -f FILE`).
    Keepalived,
    /// nginx: one web node (`nginx -t -c FILE`).
    Nginx,
}

impl Target {
    /// The name on the command line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Target::Haproxy => "haproxy",
            Target::Keepalived => "keepalived",
            Target::Nginx => "nginx",
        }
    }

    /// The tier whose nodes it describes.
    pub(crate) fn role(self) -> Role {
        match self {
            Target::Haproxy | Target::Keepalived => Role::Lb,
            Target::Nginx => Role::Web,
        }
    }
}

/// Why a configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// `--node` names no node of the topology.
    #[error(
        "no node `{name}` in {file}: `hastack export {target}` writes one {role} node's configuration; name one with --node ({choices})"
    )]
    UnknownNode {
        /// The name given.
        name: String,
        /// The topology file.
        file: String,
        /// What was asked for.
        target: &'static str,
        /// The tier it needs.
        role: Role,
        /// The nodes of that tier.
        choices: String,
    },
    /// `--node` names a node of another tier.
    #[error(
        "`{name}` is a {actual} node of {file}, and `hastack export {target}` writes a {role} node's configuration: name one with --node ({choices})"
    )]
    WrongRole {
        /// The name given.
        name: String,
        /// Its tier.
        actual: Role,
        /// The topology file.
        file: String,
        /// What was asked for.
        target: &'static str,
        /// The tier it needs.
        role: Role,
        /// The nodes of that tier.
        choices: String,
    },
    /// The topology has no node of the tier.
    #[error(
        "{file} has no {role} node, so there is nothing for `hastack export {target}` to describe: add a [[node]] with role = \"{role}\""
    )]
    NoNode {
        /// The topology file.
        file: String,
        /// What was asked for.
        target: &'static str,
        /// The tier it needs.
        role: Role,
    },
    /// A loopback topology could not be placed in its subnet (keepalived needs a real
    /// network).
    #[error(
        "keepalived runs VRRP on a real network, and this loopback topology does not fit its site.subnet: {0}; give a larger site.subnet"
    )]
    NoNetwork(String),
}

/// `target`'s configuration of `node` (default: the first node of its tier).
pub(crate) fn export(
    topo: &Topology,
    target: Target,
    node: Option<&str>,
) -> Result<String, ExportError> {
    let name = match node {
        Some(n) => n.to_string(),
        None => topo
            .tier(target.role())
            .next()
            .map(|n| n.name.clone())
            .ok_or_else(|| ExportError::NoNode {
                file: topo.source.display().to_string(),
                target: target.as_str(),
                role: target.role(),
            })?,
    };
    match target {
        Target::Haproxy => haproxy(topo, &name),
        Target::Keepalived => keepalived(topo, &name),
        Target::Nginx => nginx(topo, &name),
    }
}

/// The node `name` of the topology, which must be of `target`'s tier.
fn node_of<'a>(topo: &'a Topology, target: Target, name: &str) -> Result<&'a Node, ExportError> {
    let role = target.role();
    let file = topo.source.display().to_string();
    let choices: Vec<&str> = topo.tier(role).map(|n| n.name.as_str()).collect();
    if choices.is_empty() {
        return Err(ExportError::NoNode {
            file,
            target: target.as_str(),
            role,
        });
    }
    let choices = choices.join(", ");
    match topo.node(name) {
        None => Err(ExportError::UnknownNode {
            name: name.to_string(),
            file,
            target: target.as_str(),
            role,
            choices,
        }),
        Some(n) if n.role != role => Err(ExportError::WrongRole {
            name: name.to_string(),
            actual: n.role,
            file,
            target: target.as_str(),
            role,
            choices,
        }),
        Some(n) => Ok(n),
    }
}

/// A configuration file being written: lines, and comments wrapped to a readable width.
#[derive(Default)]
struct Conf {
    out: String,
}

/// Comments are wrapped at this column.
const WIDTH: usize = 90;

impl Conf {
    /// One line.
    fn l(&mut self, line: impl AsRef<str>) {
        self.out.push_str(line.as_ref());
        self.out.push('\n');
    }

    /// An empty line.
    fn blank(&mut self) {
        self.out.push('\n');
    }

    /// A comment, wrapped; `indent` before each `#`.
    fn note(&mut self, indent: &str, text: &str) {
        self.wrapped(indent, "# ", "# ", text);
    }

    /// What the incumbent cannot do as hastack does: `# not translated: …`.
    fn untranslated(&mut self, indent: &str, text: &str) {
        self.wrapped(indent, "# not translated: ", "#   ", text);
    }

    fn wrapped(&mut self, indent: &str, first: &str, rest: &str, text: &str) {
        let mut line = format!("{indent}{first}");
        let mut empty = true;
        for word in text.split_whitespace() {
            if !empty && line.len() + 1 + word.len() > WIDTH {
                let full = std::mem::replace(&mut line, format!("{indent}{rest}"));
                self.l(full);
                empty = true;
            }
            if !empty {
                line.push(' ');
            }
            line.push_str(word);
            empty = false;
        }
        self.l(line.trim_end());
    }
}

/// The first line of every file: what made it, from which topology.
fn generated_by(c: &mut Conf, target: Target, topo: &Topology, node: &Node) {
    c.l(format!(
        "# Generated by `hastack export {} --node {}` from {}.",
        target.as_str(),
        node.name,
        topo.source.display()
    ));
}

/// A duration as HAProxy and nginx write one: whole seconds as `Ns`, else `Nms`.
fn time(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Whole seconds, rounded up, at least one (for settings counted in seconds).
fn secs_ceil(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// Centiseconds as seconds, as keepalived's `advert_int` takes them (`5` → `0.05`).
fn centis(cs: u16) -> String {
    decimal_secs(Duration::from_millis(u64::from(cs) * 10))
}

/// A duration in seconds with no trailing zeros (`2500 ms` → `2.5`), as keepalived's
/// times are written.
fn decimal_secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
            .trim_end_matches('0')
            .to_string()
    }
}

/// The site's certificates as (certificate, key): the topology's own, or the internal
/// CA's for the site.
fn site_certificates(topo: &Topology) -> Vec<(PathBuf, PathBuf)> {
    if topo.tls.certificates.is_empty() {
        let pki = Pki::new(&topo.state_dir);
        vec![(pki.cert("site"), pki.key("site"))]
    } else {
        topo.tls
            .certificates
            .iter()
            .map(|c| (c.cert.clone(), c.key.clone()))
            .collect()
    }
}

/// Whether HAProxy finds `key` by itself beside `cert` (`NAME.crt` → `NAME.key`, with
/// `ssl-load-extra-del-ext`).
fn key_beside(cert: &Path, key: &Path) -> bool {
    cert.extension().is_some_and(|e| e == "crt") && cert.with_extension("key") == key
}

/// The note about the certificates a file names.
fn certificates_note(c: &mut Conf, topo: &Topology, what: &str) {
    c.note(
        "",
        &format!(
            "{what} reads the certificates of the internal CA in {}: `hastack pki init` \
             writes them (the same files hastack's nodes use).",
            Pki::new(&topo.state_dir).dir().display()
        ),
    );
}

/// Connection and response timeouts of hastack's proxies (the lb's and the web node's).
fn proxy_timeouts() -> (Duration, Duration) {
    let o = hastack_proxy::ProxyOptions::new("export");
    (o.connect_timeout, o.response_timeout)
}

// ---------------------------------------------------------------------------------
// HAProxy

/// One lb node's `haproxy.cfg`: what hastack's lb node `node` does, but VRRP (that is
/// [`keepalived`]'s).
pub(crate) fn haproxy(topo: &Topology, node: &str) -> Result<String, ExportError> {
    let lb = node_of(topo, Target::Haproxy, node)?;
    let webs: Vec<&Node> = topo.tier(Role::Web).collect();
    let pki = Pki::new(&topo.state_dir);
    let l = &topo.lb;
    let http = &topo.http;
    let terminate = topo
        .https_port
        .filter(|_| topo.tls.mode == TlsMode::Terminate);
    let passthrough = topo
        .https_port
        .filter(|_| topo.tls.mode == TlsMode::Passthrough);
    let internal = topo.tls.internal;
    let certs = site_certificates(topo);
    let uses_crt = terminate.is_some() || internal;
    let lb_dir = topo.state_dir.join("lb");
    let fronts = !l.front_proxies.is_empty();
    let front_nets = l
        .front_proxies
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut c = Conf::default();

    generated_by(&mut c, Target::Haproxy, topo, lb);
    c.note(
        "",
        &format!(
            "HAProxy doing what hastack's lb node {} ({}) does for {}: the VIP's \
             listeners, the web nodes' backend, health checks, limits, and the stats page on \
             the node's admin address. The VIP itself moves with VRRP: that is keepalived's \
             job (`hastack export keepalived --node {}`).",
            lb.name, lb.address, topo.site, lb.name
        ),
    );
    c.note("", "Check it with: haproxy -c -f THIS_FILE");
    c.note(
        "",
        &format!("Before the first start: mkdir -p {}", lb_dir.display()),
    );
    if uses_crt {
        certificates_note(&mut c, topo, "HAProxy");
    }
    if topo.mode.real_network() {
        c.note(
            "",
            &format!(
                "Every lb runs HAProxy bound to the VIP {}, which only the VRRP master holds: \
                 the others need sysctl net.ipv4.ip_nonlocal_bind=1 to start (hastack binds \
                 the VIP only while it is master).",
                topo.vip
            ),
        );
    }
    c.blank();

    // global
    c.l("global");
    if l.max_conn > 0 {
        c.note("    ", "[lb] max_conn: open connections in all");
        c.l(format!("    maxconn {}", l.max_conn));
    } else {
        c.note(
            "    ",
            "[lb] max_conn = 0 (no limit): HAProxy's own maxconn, from the file descriptor limit, applies",
        );
    }
    if uses_crt {
        c.note(
            "    ",
            "A certificate's key is beside it: NAME.crt, NAME.key (as `hastack pki` writes them)",
        );
        c.l("    ssl-load-extra-del-ext");
        c.note("    ", "hastack speaks TLS 1.3 and 1.2 only");
        c.l("    ssl-default-bind-options ssl-min-ver TLSv1.2");
        c.l("    ssl-default-server-options ssl-min-ver TLSv1.2");
    }
    c.note("    ", "[http] max_headers");
    c.l(format!("    tune.http.maxhdr {}", http.max_headers));
    c.note(
        "    ",
        &format!(
            "The runtime API, as hastack's control socket {}/{}.sock (`hastack lb drain|maint|ready|weight` \
             are `set server hastack_web/NAME state drain|maint|ready` and `set weight` here)",
            lb_dir.display(),
            lb.name
        ),
    );
    c.l(format!(
        "    stats socket {}/haproxy-{}.sock mode 600 level admin",
        lb_dir.display(),
        lb.name
    ));
    if let Some(format) = http.access_log {
        c.note(
            "    ",
            &format!(
                "[http] access_log = \"{}\": HAProxy logs to syslog, not to {}/logs/{}-access.log",
                match format {
                    AccessLogFormat::Text => "text",
                    AccessLogFormat::Json => "json",
                },
                topo.state_dir.display(),
                lb.name
            ),
        );
        c.l("    log /dev/log local0");
    }
    c.untranslated(
        "    ",
        &format!(
            "[http] max_header_line = {} (431 above): HAProxy bounds the whole head by tune.bufsize \
             instead; [http] body_buffer: HAProxy retries only requests that fit in one buffer.",
            http.max_header_line
        ),
    );
    c.blank();

    // defaults
    let (connect, response) = proxy_timeouts();
    c.l("defaults");
    c.l("    mode http");
    if http.access_log.is_some() {
        c.l("    log global");
    }
    c.l(format!("    timeout connect {}", time(connect)));
    c.note(
        "    ",
        "[http] write_timeout_ms (HAProxy's counts inactivity both ways)",
    );
    c.l(format!("    timeout client {}", time(http.write_timeout)));
    c.l(format!("    timeout server {}", time(response)));
    c.note("    ", "[http] head_timeout_ms");
    c.l(format!(
        "    timeout http-request {}",
        time(http.head_timeout)
    ));
    c.l(format!(
        "    timeout http-keep-alive {}",
        time(hastack_runtime::KEEPALIVE_TIMEOUT)
    ));
    c.note("    ", "[lb] queue_timeout_ms: then 503");
    c.l(format!("    timeout queue {}", time(l.queue_timeout)));
    c.note("    ", "[health] timeout_ms");
    c.l(format!("    timeout check {}", time(topo.health.timeout)));
    c.untranslated(
        "    ",
        &format!(
            "[http] body_timeout_ms = {}: a request body must be whole this long after its \
             head (408); HAProxy has no bound on a body's time but timeout client between reads.",
            http.body_timeout.as_millis()
        ),
    );
    c.blank();

    // The VIP's frontend.
    c.l("frontend hastack_vip");
    c.l(format!("    bind {}:{}", topo.vip, topo.http_port));
    if let Some(port) = terminate {
        let mut bind = format!("    bind {}:{port} ssl", topo.vip);
        for (cert, _) in &certs {
            let _ = write!(bind, " crt {}", cert.display());
        }
        bind.push_str(" alpn h2,http/1.1");
        for (cert, key) in &certs {
            if !key_beside(cert, key) {
                c.note(
                    "    ",
                    &format!(
                        "HAProxy looks for the key of {} in the file itself or beside it as NAME.key; \
                         the topology's key is {}: append it to the certificate's file \
                         (cat CERT KEY > NAME.pem) or move it beside as NAME.key",
                        cert.display(),
                        key.display()
                    ),
                );
            }
        }
        c.l(bind);
        c.untranslated(
            "    ",
            "hastack serves certificates renewed on disk within a second; HAProxy reads them when it starts or reloads.",
        );
    }
    match http.access_log {
        Some(AccessLogFormat::Text) => {
            c.note("    ", "[http] access_log = \"text\": NCSA combined");
            c.l("    option httplog clf");
        }
        Some(AccessLogFormat::Json) => {
            c.note(
                "    ",
                "[http] access_log = \"json\" (HAProxy quotes the values but does not escape them)",
            );
            c.l(
                "    log-format \"{\\\"time\\\":%{+Q}tr,\\\"client\\\":%{+Q}ci,\\\"method\\\":%{+Q}HM,\\\"uri\\\":%{+Q}HU,\\\"status\\\":%ST,\\\"bytes\\\":%B,\\\"server\\\":%{+Q}s,\\\"ms\\\":%Ta}\"",
            );
        }
        None => {}
    }
    if fronts {
        c.note(
            "    ",
            "[lb] front_proxies: their connections start with a PROXY header, and their \
             X-Forwarded-For and X-Forwarded-Proto are kept",
        );
        c.l(format!("    acl from_front_proxy src {front_nets}"));
        c.l("    tcp-request connection set-var(sess.front_proxy) bool(1) if from_front_proxy");
        c.l("    tcp-request connection expect-proxy layer4 if from_front_proxy");
        c.untranslated(
            "    ",
            "hastack also takes a front proxy's connection without a PROXY header; HAProxy requires one from these addresses.",
        );
    }
    let rate = l.rate_limit > 0;
    let per_client = l.max_conn_per_client > 0;
    if rate || per_client {
        // A token bucket of `burst` tokens filling at `rate` per second allows `burst`
        // requests in `burst / rate` seconds: the sliding window closest to it.
        let burst = if l.rate_burst == 0 {
            l.rate_limit
        } else {
            l.rate_burst
        };
        let window = Duration::from_millis(
            (u64::from(burst) * 1000)
                .div_ceil(u64::from(l.rate_limit.max(1)))
                .max(1),
        );
        let mut store = Vec::new();
        if rate {
            store.push(format!("http_req_rate({})", time(window)));
        }
        if per_client {
            store.push("conn_cur".to_string());
        }
        let expire = secs_ceil(window).max(10) * 2;
        c.note(
            "    ",
            "Per client address: [lb] rate_limit, rate_burst, max_conn_per_client",
        );
        c.l(format!(
            "    stick-table type ip size 1m expire {expire}s store {}",
            store.join(",")
        ));
        c.l("    tcp-request session track-sc0 src");
        if per_client {
            c.l(format!(
                "    tcp-request session reject if {{ sc_conn_cur(0) gt {} }}",
                l.max_conn_per_client
            ));
        }
        if rate {
            c.note(
                "    ",
                &format!(
                    "{} requests a second, {burst} at once: at most {burst} in any {}",
                    l.rate_limit,
                    time(window)
                ),
            );
            c.l(format!(
                "    http-request deny deny_status 429 hdr Retry-After {} if {{ sc_http_req_rate(0) gt {burst} }}",
                secs_ceil(window)
            ));
            c.untranslated(
                "    ",
                "hastack's rate limit is a token bucket per client, and its Retry-After says when the next token comes; HAProxy counts requests in a sliding window.",
            );
        }
    }
    c.note("    ", "[http] max_body: 413 above");
    c.l(format!(
        "    http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {} }}",
        http.max_body
    ));
    c.untranslated(
        "    ",
        "hastack also counts the bytes of a chunked body against max_body; HAProxy checks only Content-Length here.",
    );
    if let (Some(port), true) = (topo.https_port, topo.tls.redirect_http) {
        let port = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        c.note("    ", "[tls] redirect_http");
        c.l(format!(
            "    http-request redirect location https://%[req.hdr(host),field(1,:)]{port}%[capture.req.uri] code 308 unless {{ ssl_fc }}"
        ));
    }
    if terminate.is_some() && topo.tls.hsts {
        c.note("    ", "[tls] hsts");
        c.l("    http-response set-header Strict-Transport-Security \"max-age=31536000\" if { ssl_fc }");
    }
    let unless_front = if fronts {
        " !{ var(sess.front_proxy) -m bool }"
    } else {
        ""
    };
    c.note(
        "    ",
        "The client's address and scheme, as hastack's lb sets them",
    );
    if fronts {
        c.l("    http-request del-header X-Forwarded-For if !{ var(sess.front_proxy) -m bool }");
    } else {
        c.l("    http-request del-header X-Forwarded-For");
    }
    c.l("    option forwardfor");
    if terminate.is_some() {
        c.l(format!(
            "    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}{unless_front}"
        ));
        c.l(format!(
            "    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}{unless_front}"
        ));
    } else if fronts {
        c.l(format!(
            "    http-request set-header X-Forwarded-Proto http if{unless_front}"
        ));
    } else {
        c.l("    http-request set-header X-Forwarded-Proto http");
    }
    c.note(
        "    ",
        "The path an answer took, e.g. `lb1, web2, app1` (fhdr: the whole header, commas and all)",
    );
    c.l(format!(
        "    http-response set-header X-Served-By \"{}, %[res.fhdr(X-Served-By)]\" if {{ res.fhdr(X-Served-By) -m found }}",
        lb.name
    ));
    c.l(format!(
        "    http-response set-header X-Served-By {} unless {{ res.fhdr(X-Served-By) -m found }}",
        lb.name
    ));
    c.untranslated(
        "    ",
        "hastack refuses requests that could be read two ways (Content-Length with Transfer-Encoding, \
         doubled or invalid Host…) before any handler; HAProxy's own parser decides those cases.",
    );
    c.l("    default_backend hastack_web");
    c.blank();

    // The web nodes.
    c.l("backend hastack_web");
    let hash = |c: &mut Conf, line: &str| {
        c.l(line);
        c.l("    hash-type consistent");
    };
    match l.balance {
        Balance::RoundRobin => c.l("    balance roundrobin"),
        Balance::LeastConn => {
            c.l("    balance leastconn");
            c.untranslated(
                "    ",
                "hastack counts requests in flight per weight; HAProxy's leastconn counts connections.",
            );
        }
        Balance::Random => c.l("    balance random(2)"),
        Balance::First => c.l("    balance first"),
        Balance::Hash => match &l.hash_key {
            HashOn::Source => hash(&mut c, "    balance source"),
            HashOn::Uri => hash(&mut c, "    balance uri whole"),
            HashOn::Header(h) => hash(&mut c, &format!("    balance hdr({h})")),
            HashOn::Cookie(k) => hash(&mut c, &format!("    balance hash req.cook({k})")),
        },
    }
    if matches!(l.balance, Balance::Hash | Balance::Random) {
        c.note("    ", "[lb] hash_balance_factor: bounded loads");
        c.l(format!("    hash-balance-factor {}", l.hash_balance_factor));
    }
    if let Some(cookie) = &l.sticky_cookie {
        c.note("    ", "[lb] sticky_cookie");
        c.l(format!("    cookie {cookie} insert indirect nocache"));
    }
    c.note(
        "    ",
        "hastack's retry rule: a connection that failed moves any request to another web node; \
         other failures move only idempotent ones",
    );
    c.l("    option redispatch 1");
    c.l(format!(
        "    retries {}",
        webs.len().saturating_sub(1).max(1)
    ));
    c.l("    retry-on conn-failure empty-response response-timeout");
    c.l("    http-request disable-l7-retry unless METH_GET or METH_OPTIONS or METH_PUT or METH_DELETE or METH_TRACE");
    let hc = &topo.health;
    match hc.check {
        CheckKind::Http => {
            c.note(
                "    ",
                "[health] check = \"http\": GET /healthz answers 2xx",
            );
            c.l("    option httpchk GET /healthz HTTP/1.1");
            c.l(format!("    http-check send hdr Host {}", topo.site));
            c.l("    http-check expect rstatus ^2");
        }
        CheckKind::Tcp => {
            c.note(
                "    ",
                "[health] check = \"tcp\": a connection (and its TLS handshake) opens",
            );
        }
    }
    let mut default_server = format!(
        "    default-server inter {} fastinter {} rise {} fall {}",
        time(hc.interval),
        time((hc.interval / 4).max(Duration::from_millis(1))),
        hc.rise,
        hc.fall
    );
    if !l.slow_start.is_zero() {
        let _ = write!(default_server, " slowstart {}", time(l.slow_start));
    }
    if l.max_conn_per_server > 0 {
        let _ = write!(default_server, " maxconn {}", l.max_conn_per_server);
    }
    if l.eject_after > 0 {
        let _ = write!(
            default_server,
            " observe layer7 error-limit {} on-error mark-down",
            l.eject_after
        );
    }
    if l.send_proxy {
        default_server.push_str(" send-proxy-v2 check-send-proxy");
    }
    if internal {
        let _ = write!(
            default_server,
            " ssl verify required ca-file {} crt {}",
            pki.ca_cert().display(),
            pki.cert(&format!("nodes/{}", lb.name)).display()
        );
    }
    c.note(
        "    ",
        "[health] interval_ms, rise, fall (checks come four times as often while a state changes)",
    );
    if l.eject_after > 0 {
        c.note(
            "    ",
            "[lb] eject_after: consecutive 5xx or broken exchanges take a web node out",
        );
        c.untranslated(
            "    ",
            &format!(
                "[lb] eject_ms = {}: an ejected web node stays out this long in hastack; in HAProxy it \
                 comes back as soon as its health checks pass (rise).",
                l.eject_for.as_millis()
            ),
        );
    }
    if internal {
        c.note(
            "    ",
            &format!(
                "[tls] internal: TLS to the web nodes with {}'s certificate of the internal CA; \
                 each web node must show its own",
                lb.name
            ),
        );
    }
    c.l(default_server);
    for w in &webs {
        let mut s = format!(
            "    server {} {}:{} weight {} check",
            w.name, w.address, topo.ports.web, w.weight
        );
        if l.sticky_cookie.is_some() {
            let _ = write!(s, " cookie {}", w.name);
        }
        if internal {
            let _ = write!(s, " sni str({n}) verifyhost {n} check-sni {n}", n = w.name);
        }
        c.l(s);
    }
    c.blank();

    if let Some(port) = passthrough {
        c.note(
            "",
            "[tls] mode = \"passthrough\": TLS routed by its server name, undecrypted, to the web \
             nodes' HTTPS port, after a PROXY v2 header naming the client",
        );
        c.l("frontend hastack_vip_https");
        c.l("    mode tcp");
        c.l(format!("    bind {}:{port}", topo.vip));
        if http.access_log.is_some() {
            c.l("    option tcplog");
        }
        if fronts {
            c.l(format!("    acl from_front_proxy src {}", front_nets));
            c.l("    tcp-request connection expect-proxy layer4 if from_front_proxy");
        }
        c.l("    tcp-request inspect-delay 5s");
        c.l(format!(
            "    tcp-request content reject unless {{ req.ssl_sni -i {} }}",
            topo.site
        ));
        c.l("    tcp-request content accept if { req.ssl_hello_type 1 }");
        if !topo.tls.certificates.is_empty() {
            c.untranslated(
                "    ",
                "hastack also routes the other names of the [[tls.certificate]]s; add them to the req.ssl_sni list.",
            );
        }
        c.l("    default_backend hastack_web_https");
        c.blank();
        c.l("backend hastack_web_https");
        c.l("    mode tcp");
        match l.balance {
            Balance::LeastConn => c.l("    balance leastconn"),
            Balance::Random => c.l("    balance random(2)"),
            Balance::First => c.l("    balance first"),
            // Passthrough sees no request: hastack hashes on the client's address
            // whatever [lb] hash_key says.
            Balance::Hash => {
                c.l("    balance source");
                c.l("    hash-type consistent");
            }
            Balance::RoundRobin => c.l("    balance roundrobin"),
        }
        c.note(
            "    ",
            "A web node is up for TLS when it is up in hastack_web (the same health checks)",
        );
        for w in &webs {
            c.l(format!(
                "    server {n} {}:{} weight {} send-proxy-v2 track hastack_web/{n}",
                w.address,
                topo.ports.web_https,
                w.weight,
                n = w.name
            ));
        }
        c.blank();
    }

    // The admin address: the stats page, /healthz, /metrics.
    c.note(
        "",
        &format!(
            "{}'s admin address: /stats, /healthz (503 while no web node is up, which keepalived's \
             track script reads) and Prometheus /metrics",
            lb.name
        ),
    );
    c.l("listen hastack_admin");
    c.l(format!("    bind {}", topo.admin_addr(lb)));
    c.l("    stats enable");
    c.l("    stats uri /stats");
    c.l("    stats refresh 5s");
    c.l("    monitor-uri /healthz");
    c.l("    monitor fail if { nbsrv(hastack_web) lt 1 }");
    c.l("    http-request use-service prometheus-exporter if { path /metrics }");
    c.untranslated(
        "    ",
        "hastack's metric names (hastack_*) are not HAProxy's (haproxy_*); dashboards need both.",
    );
    Ok(c.out)
}

// ---------------------------------------------------------------------------------
// keepalived

/// One lb node's `keepalived.conf`: its VRRP instance and the VIP.
pub(crate) fn keepalived(topo: &Topology, node: &str) -> Result<String, ExportError> {
    // The node must be an lb of the topology (a clear error otherwise).
    node_of(topo, Target::Keepalived, node)?;
    // keepalived speaks VRRP only on a real network: a loopback topology is written as
    // it runs isolated (`hastack up --isolated`), each node on eth0 of its namespace.
    let placed;
    let net_topo = if topo.mode == Mode::Loopback {
        placed = topo.isolated().map_err(ExportError::NoNetwork)?;
        &placed
    } else {
        topo
    };
    // `isolated()` keeps every node and its name, only the addresses change.
    let lb = net_topo
        .node(node)
        .expect("isolated() keeps every node and its name");
    let v = &topo.vrrp;
    let peers: Vec<&Node> = net_topo
        .tier(Role::Lb)
        .filter(|n| n.name != lb.name)
        .collect();
    let instance = format!("vrid{}", v.vrid);
    let interface = "eth0";
    let prefix = if net_topo.subnet.has_host(net_topo.vip) {
        net_topo.subnet.prefix
    } else {
        32
    };
    let mut c = Conf::default();

    generated_by(&mut c, Target::Keepalived, topo, lb);
    c.note(
        "",
        &format!(
            "keepalived doing what hastack's lb node {} does with VRRP (RFC 5798, version 3): \
             the VIP {} is held by the lb of highest priority that is alive and healthy.{}",
            lb.name,
            net_topo.vip,
            match peers.len() {
                0 => String::new(),
                n => format!(
                    " Each lb has its own file: {} for the other{}.",
                    peers
                        .iter()
                        .map(|p| format!("`hastack export keepalived --node {}`", p.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if n == 1 { "" } else { "s" }
                ),
            }
        ),
    );
    c.note("", "Check it with: keepalived --config-test -f THIS_FILE");
    if topo.mode == Mode::Loopback {
        c.untranslated(
            "",
            &format!(
                "the topology runs in loopback mode, where the lbs' adverts travel in UDP between \
                 127.x addresses, and keepalived speaks VRRP only as IP protocol 112 on a real \
                 interface. This is the topology as `hastack up --isolated` runs it: the nodes \
                 in {} in file order ({} is {}), each on {interface} of its network namespace \
                 (HAProxy's file for the same addresses: `hastack export haproxy` beside a \
                 running `hastack up --isolated`).",
                net_topo.subnet, lb.name, lb.address
            ),
        );
    }
    c.blank();
    c.l("global_defs {");
    c.l(format!("    router_id {}", lb.name));
    c.l("    vrrp_version 3");
    c.l("    enable_script_security");
    c.l("    script_user root");
    c.l("}");
    c.blank();
    c.note(
        "",
        &format!(
            "hastack's lb goes to FAULT (priority 0, the VIP released) while no web node is \
             healthy: HAProxy's /healthz on {}'s admin address says so (`hastack export \
             haproxy --node {}`).",
            lb.name, lb.name
        ),
    );
    c.l("vrrp_script hastack_lb_health {");
    c.l(format!(
        "    script \"/usr/bin/curl -fsS -o /dev/null --max-time 1 http://{}/healthz\"",
        net_topo.admin_addr(lb)
    ));
    c.l("    interval 1");
    c.l("    timeout 2");
    c.l("    rise 1");
    c.l("    fall 1");
    c.l("}");
    c.untranslated(
        "",
        "hastack looks at its web nodes' health every 0.1 s; keepalived runs a script at most once a second.",
    );
    c.blank();
    c.l(format!("vrrp_instance {instance} {{"));
    c.note(
        "    ",
        "Every lb starts as backup; the priorities decide who is master",
    );
    c.l("    state BACKUP");
    c.note(
        "    ",
        &format!(
            "The interface that holds {} (hastack finds it by the address; keepalived must be told)",
            lb.address
        ),
    );
    c.l(format!("    interface {interface}"));
    c.l(format!("    virtual_router_id {}", v.vrid));
    c.l(format!("    priority {}", lb.priority.unwrap_or(100)));
    c.note(
        "    ",
        &format!(
            "[vrrp] advert_interval = {} centiseconds",
            v.advert_interval_cs
        ),
    );
    c.l(format!("    advert_int {}", centis(v.advert_interval_cs)));
    if !v.preempt {
        c.l("    nopreempt");
    } else if !v.preempt_delay.is_zero() {
        c.l(format!(
            "    preempt_delay {}",
            decimal_secs(v.preempt_delay)
        ));
    }
    if v.unicast {
        c.note(
            "    ",
            "[vrrp] unicast: adverts to each peer, not to 224.0.0.18",
        );
        c.l(format!("    unicast_src_ip {}", lb.address));
        c.l("    unicast_peer {");
        for p in &peers {
            c.l(format!("        {}", p.address));
        }
        c.l("    }");
    }
    c.l("    virtual_ipaddress {");
    c.l(format!("        {}/{prefix} dev {interface}", net_topo.vip));
    c.l("    }");
    c.note(
        "    ",
        "Gratuitous ARP: 5 when it becomes master, 5 more 5 s later (as hastack)",
    );
    c.l("    garp_master_delay 5");
    c.l("    garp_master_repeat 5");
    c.l("    track_script {");
    c.l("        hastack_lb_health");
    c.l("    }");
    if let Some(cmd) = &v.notify {
        c.l(format!(
            "    notify \"{}\"",
            cmd.replace('\\', "\\\\").replace('"', "\\\"")
        ));
        c.untranslated(
            "    ",
            &format!(
                "hastack runs the notify command with `{instance} STATE PRIORITY`, one at a \
                 time and in order; keepalived runs it with `INSTANCE {instance} STATE PRIORITY` \
                 (one word more in front), a process per change, which may run out of order."
            ),
        );
    }
    if v.authenticate {
        c.untranslated(
            "    ",
            "[vrrp] authenticate = true: hastack puts an HMAC (keyed by <state_dir>/secrets/vrrp.key) \
             after each advert and drops adverts without a valid one. VRRPv3 has no authentication \
             (RFC 5798 removed it) and keepalived's `authentication` block is VRRPv2's, a clear-text \
             password at best: these adverts go unauthenticated, and a keepalived and a hastack lb \
             with authenticate on do not take each other's adverts. Let only the peers' addresses \
             send IP protocol 112 (a firewall rule, as hastack's isolated mode has).",
        );
    }
    c.untranslated(
        "    ",
        "hastack adds the VIP with a 3 s lifetime that it renews every second, so the address of a \
         killed master expires by itself; keepalived's VIP stays until keepalived removes it.",
    );
    c.untranslated(
        "    ",
        "a stopping hastack master advertises priority 0 but keeps the VIP until it hears the new \
         master, so no request fails during the hand-over; keepalived drops it at once.",
    );
    c.l("}");
    Ok(c.out)
}

// ---------------------------------------------------------------------------------
// nginx

/// Types nginx compresses (besides text/html, always): those of hastack's
/// `compressible` that have a name nginx can list.
const GZIP_TYPES: &str = "text/plain text/css text/javascript text/xml text/csv text/markdown \
     application/javascript application/json application/xml application/wasm \
     application/ld+json application/manifest+json application/rss+xml application/atom+xml \
     image/svg+xml";

/// One web node's `nginx.conf`.
pub(crate) fn nginx(topo: &Topology, node: &str) -> Result<String, ExportError> {
    let web = node_of(topo, Target::Nginx, node)?;
    let pki = Pki::new(&topo.state_dir);
    let w = &topo.web;
    let http = &topo.http;
    let internal = topo.tls.internal;
    let passthrough = topo
        .https_port
        .filter(|_| topo.tls.mode == TlsMode::Passthrough)
        .is_some();
    let dir = topo.state_dir.join("nginx").join(&web.name);
    let logs = topo.state_dir.join("logs");
    let apps: Vec<&Node> = topo.tier(Role::App).collect();
    let cache = !w.cache.ttl.is_zero();
    let zone = format!("hastack_{}", web.name);
    let lbs: Vec<&Node> = topo.tier(Role::Lb).collect();
    let mut c = Conf::default();

    generated_by(&mut c, Target::Nginx, topo, web);
    c.note(
        "",
        &format!(
            "nginx doing what hastack's web node {} ({}) does for {}: static files, gzip, \
             the reverse proxy to the app nodes{}{} and [http]'s limits.",
            web.name,
            web.address,
            topo.site,
            if cache { ", the microcache" } else { "" },
            if w.error_pages.is_empty() {
                ""
            } else {
                ", error pages"
            }
        ),
    );
    c.note("", "Check it with: nginx -t -c THIS_FILE");
    let mut dirs = vec![dir.display().to_string()];
    if http.access_log.is_some() {
        dirs.push(logs.display().to_string());
    }
    c.l(format!(
        "# Before the first start: mkdir -p {}",
        dirs.join(" ")
    ));
    if internal || passthrough {
        certificates_note(&mut c, topo, "nginx");
    }
    let root = match &w.root {
        Some(r) => r.clone(),
        None => {
            let r = topo.state_dir.join("site");
            c.note(
                "",
                &format!(
                    "[web] root is not set: hastack serves the site built into its binary (the site/ \
                     directory of its source). nginx needs it on disk: copy that directory to {}.",
                    r.display()
                ),
            );
            r
        }
    };
    c.blank();
    c.l("worker_processes auto;");
    c.l(format!("pid {}/nginx.pid;", dir.display()));
    c.l(format!("error_log {}/error.log notice;", dir.display()));
    c.blank();
    c.l("events {");
    c.l("    worker_connections 1024;");
    c.l("}");
    c.blank();
    c.l("http {");
    c.l("    include /etc/nginx/mime.types;");
    c.l("    default_type application/octet-stream;");
    c.l("    charset utf-8;");
    c.l("    charset_types text/css text/plain text/javascript text/xml application/javascript application/json;");
    c.note(
        "    ",
        "Files leave with sendfile(2), as hastack's of 16 KiB and more",
    );
    c.l("    sendfile on;");
    c.l("    tcp_nopush on;");
    c.l("    server_tokens off;");
    c.l(format!(
        "    client_body_temp_path {}/client_body;",
        dir.display()
    ));
    c.l(format!("    proxy_temp_path {}/proxy;", dir.display()));
    c.l(format!("    fastcgi_temp_path {}/fastcgi;", dir.display()));
    c.l(format!("    uwsgi_temp_path {}/uwsgi;", dir.display()));
    c.l(format!("    scgi_temp_path {}/scgi;", dir.display()));
    c.blank();
    match http.access_log {
        Some(AccessLogFormat::Text) => {
            c.note(
                "    ",
                "[http] access_log = \"text\": NCSA combined, then the app node and the seconds taken",
            );
            c.l("    log_format hastack_text '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $upstream_addr $request_time';");
            c.l(format!(
                "    access_log {}/{}-access.log hastack_text;",
                logs.display(),
                web.name
            ));
        }
        Some(AccessLogFormat::Json) => {
            c.note("    ", "[http] access_log = \"json\"");
            c.l("    log_format hastack_json escape=json '{\"time\":\"$time_iso8601\",\"client\":\"$remote_addr\",\"method\":\"$request_method\",\"uri\":\"$request_uri\",\"status\":$status,\"bytes\":$body_bytes_sent,\"server\":\"$upstream_addr\",\"seconds\":$request_time}';");
            c.l(format!(
                "    access_log {}/{}-access.log hastack_json;",
                logs.display(),
                web.name
            ));
        }
        None => c.l("    access_log off;"),
    }
    c.blank();
    c.note("    ", "[http]");
    c.l(format!(
        "    client_header_timeout {};",
        time(http.head_timeout)
    ));
    c.l(format!("    send_timeout {};", time(http.write_timeout)));
    c.l(format!(
        "    client_body_timeout {};",
        time(http.body_timeout)
    ));
    c.untranslated(
        "    ",
        "[http] body_timeout_ms bounds a whole body in hastack; nginx's client_body_timeout is the longest pause between two reads.",
    );
    c.l(format!(
        "    keepalive_timeout {};",
        time(hastack_runtime::KEEPALIVE_TIMEOUT)
    ));
    c.l(format!("    client_max_body_size {};", http.max_body));
    let line = http.max_header_line.max(1024);
    let buffers = (48 * 1024usize).div_ceil(line).max(2);
    c.note(
        "    ",
        &format!(
            "[http] max_header_line = {}: no header line longer; about 48 KiB of head in all",
            http.max_header_line
        ),
    );
    c.l(format!("    large_client_header_buffers {buffers} {line};"));
    c.untranslated(
        "    ",
        &format!(
            "[http] max_headers = {} (431 above): nginx does not count header lines. \
             [http] body_buffer: nginx buffers request bodies to disk (proxy_request_buffering) \
             where hastack streams those it cannot retry.",
            http.max_headers
        ),
    );
    c.blank();
    if w.compress {
        c.note("    ", "[web] compress, compress_min_bytes");
        c.l("    gzip on;");
        c.l(format!("    gzip_min_length {};", w.compress_min_bytes));
        c.l("    gzip_proxied any;");
        c.l("    gzip_vary on;");
        c.l(format!("    gzip_types {GZIP_TYPES};"));
        c.untranslated(
            "    ",
            "hastack also answers with brotli and zstd when the client prefers them, and compresses every text/*, +json and +xml type; nginx (without modules) has gzip only, for the types listed.",
        );
    } else {
        c.l("    gzip off;");
    }
    c.note(
        "    ",
        "FILE.gz beside a file goes to clients that accept gzip",
    );
    c.l("    gzip_static on;");
    c.untranslated(
        "    ",
        "FILE.br and FILE.zst beside a file, which hastack sends too, and the compression of static text files once at start.",
    );
    c.blank();

    c.note(
        "    ",
        "Cache-Control of static files ([web.cache_control]): the longest matching pattern, \
         then a fingerprinted name (site.3f9a1c2e.css) for a year, else a minute",
    );
    c.l("    map $uri $hastack_cache_control {");
    let mut rules: Vec<(usize, &(String, String))> = w.cache_control.iter().enumerate().collect();
    // The longest pattern wins; of two as long, the later (as hastack's max_by_key).
    rules.sort_by(|(ia, a), (ib, b)| b.0.len().cmp(&a.0.len()).then(ib.cmp(ia)));
    for (_, (pattern, value)) in rules {
        let regex = match pattern.strip_prefix('*') {
            Some(ext) => format!("~{}$", regex_escape(ext)),
            None => format!("~^{}", regex_escape(pattern)),
        };
        c.l(format!(
            "        \"{}\" \"{}\";",
            ngx_quote(&regex),
            ngx_quote(value)
        ));
    }
    c.l("        \"~[.-][0-9A-Fa-f]{8,}\\.[^./]*$\" \"public, max-age=31536000, immutable\";");
    c.l("        default \"public, max-age=60\";");
    c.l("    }");
    c.note("    ", "The path an answer took, e.g. `web1, app2`");
    c.l("    map $upstream_http_x_served_by $hastack_served_by {");
    c.l(format!("        \"\" \"{}\";", web.name));
    c.l(format!(
        "        default \"{}, $upstream_http_x_served_by\";",
        web.name
    ));
    c.l("    }");
    c.note(
        "    ",
        "The scheme the client used, as the lb said (X-Forwarded-Proto), else this listener's",
    );
    c.l("    map $http_x_forwarded_proto $hastack_forwarded_proto {");
    c.l("        \"\" $scheme;");
    c.l("        default $http_x_forwarded_proto;");
    c.l("    }");
    c.blank();

    if cache {
        let cs = &w.cache;
        let keep = cs.ttl + cs.stale_while_revalidate.max(cs.stale_if_error);
        c.note(
            "    ",
            "[web.cache]: max_bytes; entries unused for ttl + the longer stale window are dropped",
        );
        c.l(format!(
            "    proxy_cache_path {}/cache levels=1:2 keys_zone={zone}:10m max_size={} inactive={}s use_temp_path=off;",
            dir.display(),
            cs.max_bytes,
            secs_ceil(keep)
        ));
        c.blank();
    }

    let hc = &topo.health;
    let fail_timeout = secs_ceil(hc.interval * hc.rise.max(1));
    c.note(
        "    ",
        &format!(
            "The app nodes, with their weights and kept-alive connections. [health]: nginx (open \
             source) has no active checks; a node that fails {} requests is left alone for {}s.",
            hc.fall, fail_timeout
        ),
    );
    c.untranslated(
        "    ",
        "hastack checks every app node with GET /healthz every [health] interval_ms, and takes it out after `fall` failed checks, before a request fails.",
    );
    c.l("    upstream hastack_app {");
    for a in &apps {
        if a.weight == 0 {
            c.note(
                "        ",
                &format!("{}: weight 0, no new requests", a.name),
            );
            c.l(format!(
                "        server {}:{} down;",
                a.address, topo.ports.app
            ));
        } else {
            c.l(format!(
                "        server {}:{} weight={} max_fails={} fail_timeout={fail_timeout}s;",
                a.address, topo.ports.app, a.weight, hc.fall
            ));
        }
    }
    c.l("        keepalive 32;");
    c.l("        keepalive_timeout 4s;");
    c.l("    }");
    c.blank();

    let locations = |c: &mut Conf| {
        c.l(format!("        root {};", root.display()));
        c.note("        ", "Symbolic links are not followed (as hastack)");
        c.l("        disable_symlinks on;");
        for (status, page) in &w.error_pages {
            c.l(format!("        error_page {status} {page};"));
        }
        c.blank();
        c.note(
            "        ",
            "What the lbs check: answered here, without the app tier",
        );
        c.l("        location = /healthz {");
        c.l("            access_log off;");
        c.l("            default_type application/json;");
        c.l(format!(
            "            return 200 '{{\"node\":\"{}\",\"role\":\"web\"}}';",
            web.name
        ));
        c.l("        }");
        c.blank();
        c.note(
            "        ",
            "A file of the site, or a directory's index.html, else the app tier (a directory \
             without one goes to the app too, as in hastack)",
        );
        for (location, tries) in [("/", "$uri $uri/index.html"), ("~ /$", "${uri}index.html")] {
            c.l(format!("        location {location} {{"));
            c.l(format!("            try_files {tries} @app;"));
            c.l("            add_header Cache-Control $hastack_cache_control;");
            c.l("            add_header X-Served-By $hastack_served_by;");
            c.l("        }");
        }
        c.untranslated(
            "        ",
            "hastack answers a directory's name without its slash (/docs) with a redirect to /docs/ \
             when it has an index.html; here the index is served at once.",
        );
        c.blank();
        c.l("        location @app {");
        c.l(format!(
            "            proxy_pass {}://hastack_app;",
            if internal { "https" } else { "http" }
        ));
        c.l("            proxy_http_version 1.1;");
        c.l("            proxy_set_header Connection \"\";");
        c.l("            proxy_set_header Host $host;");
        c.l("            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;");
        c.l("            proxy_set_header X-Forwarded-Proto $hastack_forwarded_proto;");
        let (connect, response) = proxy_timeouts();
        c.l(format!(
            "            proxy_connect_timeout {};",
            time(connect)
        ));
        c.l(format!(
            "            proxy_read_timeout {};",
            time(response)
        ));
        c.note(
            "            ",
            "A failed connection moves any request to the next app node; nginx never resends a POST",
        );
        c.l("            proxy_next_upstream error timeout;");
        if internal {
            c.note(
                "            ",
                &format!(
                    "[tls] internal: TLS to the app nodes with {}'s certificate of the internal CA",
                    web.name
                ),
            );
            c.l(format!(
                "            proxy_ssl_certificate {};",
                pki.cert(&format!("nodes/{}", web.name)).display()
            ));
            c.l(format!(
                "            proxy_ssl_certificate_key {};",
                pki.key(&format!("nodes/{}", web.name)).display()
            ));
            c.l(format!(
                "            proxy_ssl_trusted_certificate {};",
                pki.ca_cert().display()
            ));
            c.l("            proxy_ssl_protocols TLSv1.2 TLSv1.3;");
            c.l("            proxy_ssl_session_reuse on;");
            c.untranslated(
                "            ",
                "hastack checks that each app node shows a certificate of the internal CA for its own \
                 name; nginx checks one name (proxy_ssl_name) for every server of an upstream, which \
                 the app nodes' certificates do not share, so the app nodes' certificates are not \
                 verified here (the app nodes still verify this node's). With a certificate for one \
                 shared name on every app node: proxy_ssl_verify on; proxy_ssl_name THAT_NAME;",
            );
            c.l("            proxy_ssl_verify off;");
        }
        c.l("            proxy_hide_header X-Served-By;");
        c.l("            add_header X-Served-By $hastack_served_by always;");
        if !w.error_pages.is_empty() {
            c.note(
                "            ",
                "[web.error_pages] in place of the app tier's answers",
            );
            c.l("            proxy_intercept_errors on;");
        }
        if cache {
            let cs = &w.cache;
            c.note(
                "            ",
                &format!(
                    "[web.cache]: answers kept for the app's Cache-Control, else ttl_ms = {} \
                     (nginx counts whole seconds); one request upstream per missing answer; \
                     stale answers while one refreshes and when the app tier fails",
                    cs.ttl.as_millis()
                ),
            );
            c.l(format!("            proxy_cache {zone};"));
            c.l(format!(
                "            proxy_cache_valid 200 203 301 404 410 {}s;",
                secs_ceil(cs.ttl)
            ));
            c.l("            proxy_cache_lock on;");
            c.l(format!(
                "            proxy_cache_lock_timeout {};",
                time(cs.lock_timeout)
            ));
            c.l(format!(
                "            proxy_cache_lock_age {};",
                time(cs.lock_timeout)
            ));
            c.l("            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;");
            c.l("            proxy_cache_background_update on;");
            let personal = if cs.session_cookies.is_empty() {
                "$http_authorization $http_cookie".to_string()
            } else {
                let mut v = String::from("$http_authorization");
                for k in &cs.session_cookies {
                    let _ = write!(v, " $cookie_{k}");
                }
                v
            };
            c.note(
                "            ",
                "Personal requests (Authorization, a session cookie) bypass the cache",
            );
            c.l(format!("            proxy_cache_bypass {personal};"));
            c.l(format!("            proxy_no_cache {personal};"));
            c.l("            add_header X-Cache $upstream_cache_status always;");
            c.untranslated(
                "            ",
                &format!(
                    "stale_while_revalidate_ms = {} and stale_if_error_ms = {} bound how long hastack \
                     serves a stale answer; nginx serves one until the entry is dropped (inactive) \
                     unless the app's Cache-Control says stale-while-revalidate or stale-if-error. \
                     max_object_bytes = {}: nginx keeps answers of any size. hastack also never keeps \
                     an answer with a Vary beyond Accept-Encoding. Purging (POST /cache/purge on the \
                     admin port) has no nginx counterpart without modules.",
                    cs.stale_while_revalidate.as_millis(),
                    cs.stale_if_error.as_millis(),
                    cs.max_object_bytes
                ),
            );
        }
        c.l("        }");
    };

    let real_ip = |c: &mut Conf| {
        for lb in &lbs {
            c.l(format!("        set_real_ip_from {};", lb.address));
        }
        c.l("        real_ip_header proxy_protocol;");
    };

    c.l("    server {");
    let mut listen = format!("        listen {}:{}", web.address, topo.ports.web);
    if internal {
        listen.push_str(" ssl");
    }
    if topo.lb.send_proxy {
        listen.push_str(" proxy_protocol");
    }
    listen.push_str(" default_server;");
    if topo.lb.send_proxy {
        c.note(
            "        ",
            "[lb] send_proxy: every connection from an lb starts with a PROXY v2 header naming the client",
        );
    }
    c.l(listen);
    c.l(format!("        server_name {};", topo.site));
    if topo.lb.send_proxy {
        real_ip(&mut c);
    }
    if internal {
        c.note(
            "        ",
            "[tls] internal: clients (the lbs) must show a certificate of the internal CA",
        );
        c.l(format!(
            "        ssl_certificate {};",
            pki.cert(&format!("nodes/{}", web.name)).display()
        ));
        c.l(format!(
            "        ssl_certificate_key {};",
            pki.key(&format!("nodes/{}", web.name)).display()
        ));
        c.l(format!(
            "        ssl_client_certificate {};",
            pki.ca_cert().display()
        ));
        c.l("        ssl_verify_client on;");
        c.l("        ssl_protocols TLSv1.2 TLSv1.3;");
    }
    c.untranslated(
        "        ",
        "hastack refuses requests that could be read two ways (Content-Length with \
         Transfer-Encoding, doubled or invalid Host…) before any handler; nginx's parser decides \
         those cases. hastack's ETags are the length and SHA-256 of a file (the same on every \
         node); nginx's are its modification time and length.",
    );
    c.blank();
    locations(&mut c);
    c.l("    }");

    if passthrough {
        let certs = site_certificates(topo);
        c.blank();
        c.note(
            "    ",
            "[tls] mode = \"passthrough\": the clients' HTTPS, passed through by the lbs after a \
             PROXY v2 header naming the client",
        );
        c.l("    server {");
        c.l(format!(
            "        listen {}:{} ssl http2 proxy_protocol default_server;",
            web.address, topo.ports.web_https
        ));
        c.l(format!("        server_name {};", topo.site));
        real_ip(&mut c);
        if let Some((cert, key)) = certs.first() {
            c.l(format!("        ssl_certificate {};", cert.display()));
            c.l(format!("        ssl_certificate_key {};", key.display()));
        }
        if certs.len() > 1 {
            c.untranslated(
                "        ",
                "hastack picks among the [[tls.certificate]]s by SNI; nginx picks by server block: \
                 the others need a server block each.",
            );
        }
        c.l("        ssl_protocols TLSv1.2 TLSv1.3;");
        c.l("        ssl_session_cache shared:hastack_tls:10m;");
        c.blank();
        locations(&mut c);
        c.l("    }");
    }
    c.l("}");
    Ok(c.out)
}

/// `s` with the characters a PCRE gives a meaning escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\.^$|?*+()[]{}".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// `s` inside an nginx double-quoted string.
fn ngx_quote(s: &str) -> String {
    s.replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in topology with `from` replaced by `to` (each exactly once).
    fn edited(edits: &[(&str, &str)]) -> Topology {
        let mut text = hastack_config::DEFAULT_TOPOLOGY.to_string();
        for (from, to) in edits {
            assert_eq!(text.matches(from).count(), 1, "ambiguous edit {from:?}");
            text = text.replace(from, to);
        }
        match hastack_config::parse(&text, Path::new("hastack.toml")) {
            Ok(t) => t,
            Err(e) => panic!("edited topology is invalid: {e}"),
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    /// `text` has `line`, whole.
    #[track_caller]
    fn has(text: &str, line: &str) {
        assert!(lines(text).contains(&line), "no line {line:?} in:\n{text}");
    }

    #[track_caller]
    fn lacks(text: &str, needle: &str) {
        assert!(!text.contains(needle), "{needle:?} in:\n{text}");
    }

    #[test]
    fn every_file_starts_by_saying_what_made_it_from_which_file() {
        let t = Topology::default_topology();
        for (target, first) in [
            (
                Target::Haproxy,
                "# Generated by `hastack export haproxy --node lb1` from <built-in>.",
            ),
            (
                Target::Keepalived,
                "# Generated by `hastack export keepalived --node lb1` from <built-in>.",
            ),
            (
                Target::Nginx,
                "# Generated by `hastack export nginx --node web1` from <built-in>.",
            ),
        ] {
            let text = export(&t, target, None).expect("export");
            assert_eq!(text.lines().next(), Some(first), "{text}");
        }
    }

    #[test]
    fn haproxy_balances_the_web_nodes_with_their_weights_and_checks() {
        let t = edited(&[(
            "address = \"127.0.2.2\"",
            "address = \"127.0.2.2\"\nweight = 3",
        )]);
        let cfg = haproxy(&t, "lb1").expect("haproxy");
        has(&cfg, "frontend hastack_vip");
        has(&cfg, "    bind 127.0.0.100:8080");
        has(
            &cfg,
            "    bind 127.0.0.100:8443 ssl crt .hastack/pki/site.crt alpn h2,http/1.1",
        );
        has(&cfg, "backend hastack_web");
        has(&cfg, "    balance roundrobin");
        has(&cfg, "    option httpchk GET /healthz HTTP/1.1");
        has(&cfg, "    http-check send hdr Host www.foobar.com");
        has(
            &cfg,
            "    default-server inter 200ms fastinter 50ms rise 2 fall 2 ssl verify required ca-file .hastack/pki/ca.crt crt .hastack/pki/nodes/lb1.crt",
        );
        has(
            &cfg,
            "    server web1 127.0.2.1:8081 weight 1 check sni str(web1) verifyhost web1 check-sni web1",
        );
        has(
            &cfg,
            "    server web2 127.0.2.2:8081 weight 3 check sni str(web2) verifyhost web2 check-sni web2",
        );
        has(&cfg, "    timeout connect 2s");
        has(&cfg, "    timeout http-request 10s");
        has(&cfg, "    timeout queue 1s");
        has(&cfg, "    timeout check 500ms");
        has(&cfg, "    tune.http.maxhdr 100");
        has(
            &cfg,
            "    http-request deny deny_status 413 if { req.hdr_val(content-length) gt 8388608 }",
        );
        // The stats page on lb1's own admin address.
        has(&cfg, "listen hastack_admin");
        has(&cfg, "    bind 127.0.1.1:9100");
        has(&cfg, "    stats uri /stats");
        has(&cfg, "    monitor fail if { nbsrv(hastack_web) lt 1 }");
        // No limits set in the built-in topology: none written.
        lacks(&cfg, "stick-table");
        lacks(&cfg, "cookie SERVERID");
        let lb2 = haproxy(&t, "lb2").expect("haproxy lb2");
        has(&lb2, "    bind 127.0.1.2:9100");
        has(
            &lb2,
            "    http-response set-header X-Served-By lb2 unless { res.fhdr(X-Served-By) -m found }",
        );
    }

    #[test]
    fn haproxy_maps_each_balance_algorithm() {
        for (edit, want) in [
            ("balance = \"leastconn\"", vec!["    balance leastconn"]),
            (
                "balance = \"random\"",
                vec!["    balance random(2)", "    hash-balance-factor 125"],
            ),
            ("balance = \"first\"", vec!["    balance first"]),
            (
                "balance = \"hash\"",
                vec![
                    "    balance source",
                    "    hash-type consistent",
                    "    hash-balance-factor 125",
                ],
            ),
        ] {
            let t = edited(&[("balance = \"roundrobin\"", edit)]);
            let cfg = haproxy(&t, "lb1").expect("haproxy");
            for line in want {
                has(&cfg, line);
            }
        }
        for (key, want) in [
            ("uri", "    balance uri whole"),
            ("header:X-User", "    balance hdr(x-user)"),
            ("cookie:sid", "    balance hash req.cook(sid)"),
        ] {
            let t = edited(&[
                ("balance = \"roundrobin\"", "balance = \"hash\""),
                ("hash_key = \"source\"", &format!("hash_key = \"{key}\"")),
            ]);
            let cfg = haproxy(&t, "lb1").expect("haproxy");
            has(&cfg, want);
            has(&cfg, "    hash-type consistent");
        }
    }

    #[test]
    fn haproxy_writes_stickiness_limits_and_the_rate_limit() {
        let t = edited(&[
            ("sticky_cookie = \"\"", "sticky_cookie = \"SERVERID\""),
            ("rate_limit = 0 ", "rate_limit = 50 "),
            ("rate_burst = 0 ", "rate_burst = 100 "),
            ("max_conn_per_client = 0 ", "max_conn_per_client = 20 "),
            ("max_conn = 0 ", "max_conn = 5000 "),
            ("max_conn_per_server = 0 ", "max_conn_per_server = 10 "),
            ("slow_start_ms = 0 ", "slow_start_ms = 2500 "),
            ("eject_after = 0 ", "eject_after = 3 "),
        ]);
        let cfg = haproxy(&t, "lb1").expect("haproxy");
        has(&cfg, "    cookie SERVERID insert indirect nocache");
        assert!(
            cfg.contains("    server web1 127.0.2.1:8081 weight 1 check cookie web1 "),
            "{cfg}"
        );
        has(&cfg, "    maxconn 5000");
        has(
            &cfg,
            "    stick-table type ip size 1m expire 20s store http_req_rate(2s),conn_cur",
        );
        has(&cfg, "    tcp-request session track-sc0 src");
        has(
            &cfg,
            "    tcp-request session reject if { sc_conn_cur(0) gt 20 }",
        );
        has(
            &cfg,
            "    http-request deny deny_status 429 hdr Retry-After 2 if { sc_http_req_rate(0) gt 100 }",
        );
        assert!(
            cfg.contains(
                " slowstart 2500ms maxconn 10 observe layer7 error-limit 3 on-error mark-down "
            ),
            "{cfg}"
        );
        assert!(
            cfg.contains("# not translated: [lb] eject_ms = 10000"),
            "{cfg}"
        );
    }

    #[test]
    fn haproxy_without_tls_names_no_certificate() {
        let t = edited(&[
            ("internal = true ", "internal = false "),
            ("https_port = 8443 ", "https_port = 0 "),
        ]);
        let cfg = haproxy(&t, "lb1").expect("haproxy");
        lacks(&cfg, "ssl");
        lacks(&cfg, ".crt");
        has(&cfg, "    server web1 127.0.2.1:8081 weight 1 check");
        has(&cfg, "    http-request set-header X-Forwarded-Proto http");
    }

    #[test]
    fn haproxy_passes_tls_through_by_server_name() {
        let t = edited(&[("mode = \"terminate\"", "mode = \"passthrough\"")]);
        let cfg = haproxy(&t, "lb1").expect("haproxy");
        has(&cfg, "frontend hastack_vip_https");
        has(&cfg, "    bind 127.0.0.100:8443");
        has(
            &cfg,
            "    tcp-request content reject unless { req.ssl_sni -i www.foobar.com }",
        );
        has(
            &cfg,
            "    server web1 127.0.2.1:8444 weight 1 send-proxy-v2 track hastack_web/web1",
        );
        lacks(&cfg, "site.crt");
    }

    #[test]
    fn keepalived_writes_the_lbs_vrrp_instance() {
        let t = Topology::default_topology();
        let lb1 = keepalived(&t, "lb1").expect("keepalived");
        has(&lb1, "    vrrp_version 3");
        has(&lb1, "vrrp_instance vrid51 {");
        has(&lb1, "    state BACKUP");
        has(&lb1, "    virtual_router_id 51");
        has(&lb1, "    priority 150");
        has(&lb1, "    advert_int 0.05");
        // Loopback mode is written as it runs isolated: the nodes in 10.77.0.0/24.
        has(&lb1, "        10.77.0.100/24 dev eth0");
        has(
            &lb1,
            "    script \"/usr/bin/curl -fsS -o /dev/null --max-time 1 http://10.77.0.1:9100/healthz\"",
        );
        assert!(
            lb1.contains("# not translated: the topology runs in loopback mode"),
            "{lb1}"
        );
        lacks(&lb1, "unicast");
        lacks(&lb1, "authentication");
        let lb2 = keepalived(&t, "lb2").expect("keepalived lb2");
        has(&lb2, "    priority 100");
    }

    #[test]
    fn keepalived_writes_unicast_peers_preemption_and_says_what_authentication_becomes() {
        let t = edited(&[
            ("unicast = false ", "unicast = true "),
            ("advert_interval = 5 ", "advert_interval = 150 "),
            ("preempt_delay_ms = 0 ", "preempt_delay_ms = 2500 "),
            ("authenticate = false ", "authenticate = true "),
            (
                "# notify = \"/usr/local/bin/on-vrrp\"",
                "notify = \"/usr/local/bin/on-vrrp\"",
            ),
        ]);
        let lb2 = keepalived(&t, "lb2").expect("keepalived");
        has(&lb2, "    advert_int 1.5");
        has(&lb2, "    preempt_delay 2.5");
        has(&lb2, "    unicast_src_ip 10.77.0.2");
        has(&lb2, "    unicast_peer {");
        has(&lb2, "        10.77.0.1");
        has(&lb2, "    notify \"/usr/local/bin/on-vrrp\"");
        lacks(&lb2, "    authentication {");
        assert!(
            lb2.contains("# not translated: [vrrp] authenticate = true"),
            "{lb2}"
        );
        let t = edited(&[("preempt = true", "preempt = false")]);
        has(&keepalived(&t, "lb1").expect("keepalived"), "    nopreempt");
    }

    #[test]
    fn nginx_serves_the_site_and_proxies_to_the_app_nodes() {
        let t = Topology::default_topology();
        let cfg = nginx(&t, "web1").expect("nginx");
        has(&cfg, "pid .hastack/nginx/web1/nginx.pid;");
        has(&cfg, "error_log .hastack/nginx/web1/error.log notice;");
        has(
            &cfg,
            "# Before the first start: mkdir -p .hastack/nginx/web1",
        );
        has(&cfg, "        listen 127.0.2.1:8081 ssl default_server;");
        has(&cfg, "        root .hastack/site;");
        has(&cfg, "    gzip_min_length 1024;");
        has(&cfg, "    client_max_body_size 8388608;");
        has(&cfg, "    upstream hastack_app {");
        has(
            &cfg,
            "        server 127.0.3.1:8082 weight=1 max_fails=2 fail_timeout=1s;",
        );
        has(
            &cfg,
            "        server 127.0.3.2:8082 weight=1 max_fails=2 fail_timeout=1s;",
        );
        has(&cfg, "        keepalive 32;");
        has(&cfg, "            proxy_pass https://hastack_app;");
        has(
            &cfg,
            "            proxy_ssl_certificate .hastack/pki/nodes/web1.crt;",
        );
        has(&cfg, "        ssl_verify_client on;");
        // The microcache is off in the built-in topology.
        lacks(&cfg, "proxy_cache ");
        lacks(&cfg, "error_page");
    }

    #[test]
    fn nginx_writes_the_microcache_error_pages_and_cache_control_rules() {
        let t = edited(&[
            ("ttl_ms = 0 ", "ttl_ms = 1500 "),
            ("session_cookies = []", "session_cookies = [\"sid\"]"),
            ("# [web.error_pages] ", "[web.error_pages] "),
            ("# 502 = \"/50x.html\"", "502 = \"/50x.html\""),
            ("# [web.cache_control] ", "[web.cache_control] "),
            (
                "# \"/static/\" = \"public, max-age=3600\"",
                "\"/static/\" = \"public, max-age=3600\"",
            ),
            ("# \"*.html\" = \"no-cache\"", "\"*.html\" = \"no-cache\""),
            ("compress_min_bytes = 1024", "compress_min_bytes = 2048"),
            ("internal = true ", "internal = false "),
        ]);
        let cfg = nginx(&t, "web2").expect("nginx");
        has(&cfg, "        listen 127.0.2.2:8081 default_server;");
        has(&cfg, "            proxy_pass http://hastack_app;");
        has(
            &cfg,
            "    proxy_cache_path .hastack/nginx/web2/cache levels=1:2 keys_zone=hastack_web2:10m max_size=67108864 inactive=302s use_temp_path=off;",
        );
        has(&cfg, "            proxy_cache hastack_web2;");
        has(
            &cfg,
            "            proxy_cache_valid 200 203 301 404 410 2s;",
        );
        has(&cfg, "            proxy_cache_lock on;");
        has(
            &cfg,
            "            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;",
        );
        has(
            &cfg,
            "            proxy_cache_bypass $http_authorization $cookie_sid;",
        );
        has(&cfg, "        error_page 502 /50x.html;");
        has(&cfg, "            proxy_intercept_errors on;");
        has(&cfg, "    gzip_min_length 2048;");
        // The longest pattern first: nginx's map takes the first matching regex.
        let rules: Vec<&str> = cfg
            .lines()
            .skip_while(|l| !l.starts_with("    map $uri"))
            .skip(1)
            .take(3)
            .collect();
        assert_eq!(
            rules,
            [
                "        \"~^/static/\" \"public, max-age=3600\";",
                "        \"~\\.html$\" \"no-cache\";",
                "        \"~[.-][0-9A-Fa-f]{8,}\\.[^./]*$\" \"public, max-age=31536000, immutable\";",
            ]
        );
        lacks(&cfg, "ssl");
    }

    #[test]
    fn a_node_of_the_wrong_tier_or_none_is_an_error_that_names_the_choices() {
        let t = Topology::default_topology();
        let e = nginx(&t, "lb1").expect_err("lb1 is no web node");
        assert_eq!(
            e.to_string(),
            "`lb1` is a lb node of <built-in>, and `hastack export nginx` writes a web node's configuration: name one with --node (web1, web2)"
        );
        let e = keepalived(&t, "lb9").expect_err("no lb9");
        assert!(
            e.to_string().contains("name one with --node (lb1, lb2)"),
            "{e}"
        );
        let e = export(&t, Target::Haproxy, Some("web1")).expect_err("web1 is no lb");
        assert!(matches!(e, ExportError::WrongRole { .. }), "{e}");
    }

    #[test]
    fn small_conversions() {
        assert_eq!(centis(5), "0.05");
        assert_eq!(centis(10), "0.1");
        assert_eq!(centis(100), "1");
        assert_eq!(centis(150), "1.5");
        assert_eq!(centis(4095), "40.95");
        assert_eq!(time(Duration::from_millis(1500)), "1500ms");
        assert_eq!(time(Duration::from_secs(30)), "30s");
        assert_eq!(secs_ceil(Duration::from_millis(1)), 1);
        assert_eq!(secs_ceil(Duration::from_millis(2001)), 3);
        assert_eq!(regex_escape("/a.b/"), "/a\\.b/");
        assert!(key_beside(
            Path::new("/p/site.crt"),
            Path::new("/p/site.key")
        ));
        assert!(!key_beside(
            Path::new("/p/site.pem"),
            Path::new("/p/site.key")
        ));
    }

    #[test]
    fn comments_are_wrapped_and_untranslated_things_marked() {
        let mut c = Conf::default();
        c.untranslated("    ", &"word ".repeat(40));
        let out = c.out;
        assert!(out.starts_with("    # not translated: word"), "{out}");
        for line in out.lines() {
            assert!(line.len() <= WIDTH, "{line:?}");
            assert!(line.trim_start().starts_with('#'), "{line:?}");
        }
        assert!(out.lines().count() > 2, "{out}");
    }
}
