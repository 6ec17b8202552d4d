//! The topology file, `hastack.toml`: its types, parsing and validation.
//!
//! One file describes the whole site: the virtual IP, the ports, the nodes of each tier
//! and per-tier settings. Every node process reads the same file and finds itself in it
//! by name. Parsing is two steps: serde turns the text into a *raw* tree that keeps the
//! source span of every value a later check may complain about, then [`validate`] checks
//! the meaning (unique names and addresses, priorities, tiers with nodes…) and produces
//! the plain [`Topology`] the rest of hastack uses. Every error names file, line and
//! column, says what is wrong and what is expected.
//!
//! This crate does no I/O beyond reading the file it is given, and
//! [`AppSettings::check_on_this_host`], which looks for the app's directory and program.

mod app;
mod raw;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use app::{AppSettings, DrillTraffic, Place, RESERVED_ENV, find_program};
pub use raw::DEFAULT_TOPOLOGY;

/// What a node does; one tier of the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Load balancer: holds the VIP (VRRP) and balances over web nodes.
    Lb,
    /// Web server: static files and reverse proxy to app nodes.
    Web,
    /// Application server: the site's business logic.
    App,
    /// Database server: one supervised `mariadbd`.
    Db,
    /// Authoritative DNS server of the site's zone (optional tier).
    Dns,
}

impl Role {
    /// All roles, in the order traffic flows down the picture.
    pub const ALL: [Role; 5] = [Role::Dns, Role::Lb, Role::Web, Role::App, Role::Db];

    /// The tiers every topology needs at least one node of (DNS is optional: the
    /// site's name may live in a zone served elsewhere).
    pub const REQUIRED: [Role; 4] = [Role::Lb, Role::Web, Role::App, Role::Db];

    /// The role's name as written in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Lb => "lb",
            Role::Web => "web",
            Role::App => "app",
            Role::Db => "db",
            Role::Dns => "dns",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the nodes of a topology reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// All nodes on one machine, each on its own 127.x.y.z address; VRRP over UDP unicast.
    Loopback,
    /// All nodes on one machine, each in its own network namespace on a bridge of
    /// hastack's own, firewalled per tier; real VRRP (IP protocol 112), the VIP added to
    /// the master's interface.
    Isolated,
    /// One node per server (`hastack node NAME`): as isolated, on the servers' networks.
    Hosts,
}

impl Mode {
    /// The mode's name as written in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Loopback => "loopback",
            Mode::Isolated => "isolated",
            Mode::Hosts => "hosts",
        }
    }

    /// Whether VRRP travels as IP protocol 112 and the VIP is an interface address.
    pub fn real_network(self) -> bool {
        self != Mode::Loopback
    }
}

/// An IPv4 network, e.g. `10.77.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Subnet {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Parses `a.b.c.d/len`; host bits must be zero.
    pub fn parse(s: &str) -> Option<Subnet> {
        let (addr, len) = s.split_once('/')?;
        let network: Ipv4Addr = addr.trim().parse().ok()?;
        let prefix: u8 = len.trim().parse().ok()?;
        let net = Subnet { network, prefix };
        (prefix <= 32 && u32::from(network) & !net.mask() == 0).then_some(net)
    }

    /// Whether `a` is a host address of this network (not the network or broadcast
    /// address).
    pub fn has_host(self, a: Ipv4Addr) -> bool {
        let (a, m) = (u32::from(a), self.mask());
        a & m == u32::from(self.network) && a & !m != 0 && a & !m != !m
    }

    /// The `n`th host address (1 = the first), if the network has it.
    pub fn host(self, n: u32) -> Option<Ipv4Addr> {
        let a = Ipv4Addr::from(u32::from(self.network).checked_add(n)?);
        self.has_host(a).then_some(a)
    }

    /// The last host address.
    pub fn last_host(self) -> Option<Ipv4Addr> {
        let last = u32::from(self.network) | !self.mask();
        let a = Ipv4Addr::from(last.checked_sub(1)?);
        self.has_host(a).then_some(a)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// One node of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Unique name, e.g. `web1`.
    pub name: String,
    /// Its tier.
    pub role: Role,
    /// The address every listener of this node binds.
    pub address: Ipv4Addr,
    /// VRRP priority (lb nodes only, 1..=254).
    pub priority: Option<u8>,
    /// Share of requests relative to its tier's other nodes (web and app nodes; 1
    /// unless given; 0 takes no new requests).
    pub weight: u32,
}

/// Ports shared by every node of a tier (each node has its own address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// `/healthz` and `/metrics` on every node.
    pub admin: u16,
    /// HTTP on web nodes (HTTPS with client certificates when `tls.internal`).
    pub web: u16,
    /// Clients' HTTPS on web nodes, when the lbs pass TLS through.
    pub web_https: u16,
    /// HTTP on app nodes.
    pub app: u16,
    /// MariaDB on db nodes.
    pub db: u16,
    /// VRRP adverts between lb nodes (loopback mode carries them in UDP).
    pub vrrp: u16,
    /// The db nodes' consensus (Raft over HTTP) on who is primary.
    pub raft: u16,
    /// DNS (UDP and TCP) on dns nodes.
    pub dns: u16,
}

/// The dns tier's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// TTL of the site's records, seconds.
    pub ttl: u32,
    /// Responses per second per client address (0: no limit); more are dropped.
    pub rate_limit: u32,
    /// Responses a client may get at once above the rate.
    pub rate_burst: u32,
}

/// VRRP settings of the lb tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpSettings {
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Advertisement interval in centiseconds (1..=4095).
    pub advert_interval_cs: u16,
    /// Whether a higher-priority backup takes the VIP from a lower-priority master.
    pub preempt: bool,
    /// Isolated and hosts modes: send adverts to each peer's address instead of the
    /// VRRP multicast group 224.0.0.18 (for networks without multicast, as keepalived's
    /// `unicast_peer`). Loopback mode always sends to each peer.
    pub unicast: bool,
    /// How long a higher-priority backup waits, after it starts or sees a lower-priority
    /// master, before it preempts (keepalived's `preempt_delay`). Zero: at once.
    pub preempt_delay: Duration,
    /// A command run with `INSTANCE STATE PRIORITY` arguments at each state change, one
    /// at a time and in order (keepalived's `notify`).
    pub notify: Option<String>,
    /// Authenticate adverts with an HMAC keyed by `<state_dir>/secrets/vrrp.key` (only
    /// between hastack nodes: keepalived does not speak it).
    pub authenticate: bool,
}

/// Active health checks of an upstream pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// What a check does.
    pub check: CheckKind,
    /// Time between two checks of one server.
    pub interval: Duration,
    /// A check that takes longer has failed.
    pub timeout: Duration,
    /// Consecutive successes that bring a server back.
    pub rise: u32,
    /// Consecutive failures that take a server out.
    pub fall: u32,
}

/// What a health check does (`[health] check`): HAProxy's `option httpchk` or a plain
/// `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET /healthz` on a kept-alive connection; a 2xx answer passes.
    Http,
    /// A TCP connection (with its TLS handshake, when the pool speaks TLS) that opens
    /// passes.
    Tcp,
}

/// How the lbs choose a web node (HAProxy's `balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest requests in flight per weight.
    LeastConn,
    /// Two random choices by weight; the lighter wins.
    Random,
    /// The first node (in the file's order) that may take the request.
    First,
    /// Consistent hashing of [`LbSettings::hash_key`] with bounded loads.
    Hash,
}

impl Balance {
    /// The name `[lb] balance` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::Random => "random",
            Balance::First => "first",
            Balance::Hash => "hash",
        }
    }
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client's address.
    Source,
    /// Path and query.
    Uri,
    /// A header's value (lower-case name).
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

/// The `[lb]` section: balancing, limits and passive health of the lbs' web pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSettings {
    /// The algorithm.
    pub balance: Balance,
    /// What `hash` hashes.
    pub hash_key: HashOn,
    /// `hash`: a node takes at most this percentage of the average load.
    pub hash_balance_factor: u32,
    /// The sticky-session cookie's name, if any.
    pub sticky_cookie: Option<String>,
    /// Requests one web node takes at once (0: no limit).
    pub max_conn_per_server: u32,
    /// Longest wait in the queue when every node is at its limit.
    pub queue_timeout: Duration,
    /// A node back in service ramps up over this long.
    pub slow_start: Duration,
    /// Consecutive 5xx or broken exchanges that eject a node (0: never).
    pub eject_after: u32,
    /// How long an ejected node stays out.
    pub eject_for: Duration,
    /// Requests per second per client IP (0: no limit).
    pub rate_limit: u32,
    /// Requests a client may send at once above the rate (0: one second's worth).
    pub rate_burst: u32,
    /// Open connections per client IP (0: no limit).
    pub max_conn_per_client: u32,
    /// Open connections in all (0: no limit).
    pub max_conn: u32,
    /// Proxies in front of the lbs: their connections may start with a PROXY v2
    /// header, and their `X-Forwarded-For`/`-Proto` are believed.
    pub front_proxies: Vec<ipnet::IpNet>,
    /// Connections to web nodes start with a PROXY v2 header naming the client.
    pub send_proxy: bool,
}

/// The front door of the lb and web listeners: what an HTTP/1.1 request head may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// Longest request or header line in bytes (414 or 431 above).
    pub max_header_line: usize,
    /// Most header lines in one request (431 above).
    pub max_headers: usize,
    /// A head must be complete this long after its first byte (408 after).
    pub head_timeout: Duration,
    /// A client that takes nothing of its answer for this long is cut off.
    pub write_timeout: Duration,
    /// Largest request body in bytes (413 above).
    pub max_body: usize,
    /// A request body must be complete this long after its head (408 after).
    pub body_timeout: Duration,
    /// Bytes of request bodies held in memory at once, all requests together, so that
    /// an idempotent request can be sent again; a body that does not fit streams.
    pub body_buffer: usize,
    /// One line per request in `<state_dir>/logs/NODE-access.log`, if any.
    pub access_log: Option<AccessLogFormat>,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// NCSA combined (as nginx and Apache write it), then the server and the time taken.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the lbs decrypt the site's HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// The lbs terminate TLS on the VIP and balance HTTP requests.
    Terminate,
    /// The lbs route TLS connections by SNI to the web nodes, which terminate them.
    Passthrough,
}

impl TlsMode {
    /// The name as written in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Terminate => "terminate",
            TlsMode::Passthrough => "passthrough",
        }
    }
}

/// A certificate and its key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// TLS settings of the whole stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Hops between tiers (lb→web, web→app, app→db) run over TLS with certificates of
    /// the internal CA on both sides.
    pub internal: bool,
    /// Where the site's HTTPS is decrypted.
    pub mode: TlsMode,
    /// HTTP on the VIP answers with a redirect to HTTPS.
    pub redirect_http: bool,
    /// HTTPS answers carry `Strict-Transport-Security`.
    pub hsts: bool,
    /// The site's own certificates (SNI picks; the first is the default); empty: the
    /// internal CA's certificate for the site.
    pub certificates: Vec<CertFiles>,
}

/// Web tier settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// Directory of static files; `None` serves the site built into the binary.
    pub root: Option<PathBuf>,
    /// Compress answers (gzip, brotli, zstd) as the client accepts, for text types.
    pub compress: bool,
    /// Smallest body compressed.
    pub compress_min_bytes: usize,
    /// `Cache-Control` of static files: (pattern, value); a pattern is a path prefix
    /// (`/static/`) or an extension (`*.css`); the longest matching pattern wins.
    pub cache_control: Vec<(String, String)>,
    /// A page of the site that replaces the app tier's answers with that status
    /// (nginx's `error_page` with `proxy_intercept_errors`).
    pub error_pages: Vec<(u16, String)>,
    /// The microcache of the app tier's answers.
    pub cache: CacheSettings,
}

impl Default for WebSettings {
    fn default() -> WebSettings {
        WebSettings {
            root: None,
            compress: true,
            compress_min_bytes: 1024,
            cache_control: Vec::new(),
            error_pages: Vec::new(),
            cache: CacheSettings::default(),
        }
    }
}

/// The web nodes' microcache of GET answers from the app tier (`[web.cache]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long an answer is fresh when the app's `Cache-Control` says nothing;
    /// zero turns the cache off.
    pub ttl: Duration,
    /// Bytes held, all entries together; the least used go first.
    pub max_bytes: u64,
    /// Largest answer kept.
    pub max_object_bytes: usize,
    /// After it is stale, an answer is still served this long while one request
    /// fetches the new one in the background.
    pub stale_while_revalidate: Duration,
    /// After it is stale, an answer is still served this long when the app tier fails
    /// (5xx, or no app node answers).
    pub stale_if_error: Duration,
    /// Concurrent misses of one answer wait this long for the one request that went
    /// upstream before going themselves.
    pub lock_timeout: Duration,
    /// Cookies that make a request personal (never cached); empty: any cookie.
    pub session_cookies: Vec<String>,
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            ttl: Duration::ZERO,
            max_bytes: 64 << 20,
            max_object_bytes: 1 << 20,
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            lock_timeout: Duration::from_secs(5),
            session_cookies: Vec::new(),
        }
    }
}

/// What a write's acknowledgement promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A commit is acknowledged only once a replica has it; with no replica
    /// acknowledging, the primary refuses writes (no acknowledged write is ever lost).
    SemiSyncOrRefuse,
    /// A commit waits for a replica up to the semi-sync timeout, then is acknowledged
    /// anyway (MariaDB's own fallback; a failover then may lose it).
    SemiSyncOrAsync,
}

impl Durability {
    /// The name as written in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::SemiSyncOrRefuse => "semi-sync-or-refuse",
            Durability::SemiSyncOrAsync => "semi-sync-or-async",
        }
    }
}

/// Database tier settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSettings {
    /// The node that starts as primary (only the first time: afterwards the db nodes
    /// decide, and their decision survives restarts).
    pub primary: String,
    /// The `mariadbd` program (a name looked up in PATH and /usr/sbin, or a path).
    pub mariadbd: String,
    /// `innodb_buffer_pool_size` in MiB.
    pub buffer_pool_mb: u32,
    /// What a write's acknowledgement promises.
    pub durability: Durability,
    /// How long a commit on the primary waits for a replica's acknowledgement before
    /// it goes asynchronous (only with [`Durability::SemiSyncOrAsync`]).
    pub semi_sync_timeout: Duration,
    /// The primary's lease: it stops writing when it cannot renew it, and a replica is
    /// promoted once it has surely expired.
    pub failover_lease: Duration,
    /// Replicas further behind than this stop serving reads.
    pub max_replica_lag: Duration,
    /// Bound of every query the app makes.
    pub query_timeout: Duration,
    /// The application's database.
    pub database: String,
    /// The application's user.
    pub user: String,
    /// The application's password (`None`: generated into the state directory).
    pub password: Option<String>,
    /// The replication user's password (`None`: generated into the state directory).
    pub repl_password: Option<String>,
}

/// A validated topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Where it was read from (`<built-in>` for the default).
    pub source: PathBuf,
    /// The site's host name, e.g. `www.foobar.com`.
    pub site: String,
    /// How nodes reach each other.
    pub mode: Mode,
    /// Isolated and hosts modes: the network of the nodes and the VIP (its prefix is
    /// the VIP's). `hastack up --isolated` places a loopback topology's nodes in it.
    pub subnet: Subnet,
    /// Where node state (datadirs, sockets, logs) lives.
    pub state_dir: PathBuf,
    /// The virtual IP the lb tier shares.
    pub vip: Ipv4Addr,
    /// The HTTP port on the VIP.
    pub http_port: u16,
    /// The HTTPS port on the VIP (`None`: no HTTPS).
    pub https_port: Option<u16>,
    /// TLS settings.
    pub tls: TlsSettings,
    /// Ports per tier.
    pub ports: Ports,
    /// VRRP settings.
    pub vrrp: VrrpSettings,
    /// Health-check settings for every upstream pool.
    pub health: HealthSettings,
    /// The lbs' balancing and limits.
    pub lb: LbSettings,
    /// The front door of the lb and web listeners.
    pub http: HttpSettings,
    /// Web tier settings.
    pub web: WebSettings,
    /// Database tier settings.
    pub db: DbSettings,
    /// The dns tier.
    pub dns: DnsSettings,
    /// Where `hastack up` serves the live dashboard (`None`: it does not).
    pub dashboard: Option<SocketAddr>,
    /// The team's own application (`None`: the built-in posts app).
    pub app: Option<AppSettings>,
    /// All nodes, in file order.
    pub nodes: Vec<Node>,
}

impl Topology {
    /// The built-in default topology (the seed's).
    pub fn default_topology() -> Topology {
        match parse(DEFAULT_TOPOLOGY, Path::new("<built-in>")) {
            Ok(t) => t,
            // The default is a constant checked by a unit test.
            Err(e) => panic!("built-in topology is invalid: {e}"),
        }
    }

    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read the topology file: {e}"),
                help: Some("pass an existing file with --config, or omit --config to use the built-in topology (`hastack config` prints it)".into()),
            }])
        })?;
        parse(&text, path)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The nodes of one tier, in file order.
    pub fn tier(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// The port a node of `role` serves its main protocol on.
    pub fn service_port(&self, role: Role) -> u16 {
        match role {
            Role::Lb => self.http_port,
            Role::Web => self.ports.web,
            Role::App => self.ports.app,
            Role::Db => self.ports.db,
            Role::Dns => self.ports.dns,
        }
    }

    /// Where a db node takes part in the consensus on who is primary.
    pub fn raft_addr(&self, node: &Node) -> SocketAddr {
        SocketAddr::from((node.address, self.ports.raft))
    }

    /// `(name, address:service port)` of every node of a tier: an upstream pool.
    pub fn endpoints(&self, role: Role) -> Vec<(String, SocketAddr)> {
        self.tier(role)
            .map(|n| {
                (
                    n.name.clone(),
                    SocketAddr::from((n.address, self.service_port(role))),
                )
            })
            .collect()
    }

    /// Where a node serves `/healthz` and `/metrics`.
    pub fn admin_addr(&self, node: &Node) -> SocketAddr {
        SocketAddr::from((node.address, self.ports.admin))
    }

    /// The site's URL through the VIP.
    pub fn site_url(&self) -> String {
        format!("http://{}:{}/", self.vip, self.http_port)
    }

    /// The site's HTTPS URL (by name: the certificate is for the name, so a client
    /// resolves it to the VIP, e.g. `curl --resolve NAME:PORT:VIP`).
    pub fn site_https_url(&self) -> Option<String> {
        self.https_port
            .map(|p| format!("https://{}:{p}/", self.site))
    }

    /// The same topology in isolated mode. A loopback topology's nodes get the hosts of
    /// [`Topology::subnet`] in file order (the first node `.1`), its VIP the 100th host;
    /// a topology already isolated (or of real hosts) is returned as it is.
    pub fn isolated(&self) -> Result<Topology, String> {
        if self.mode != Mode::Loopback {
            return Ok(Topology {
                mode: Mode::Isolated,
                ..self.clone()
            });
        }
        let net = self.subnet;
        let vip = net
            .host(100)
            .ok_or_else(|| format!("the subnet {net} has no 100th host for the VIP"))?;
        let mut t = Topology {
            mode: Mode::Isolated,
            vip,
            ..self.clone()
        };
        for (i, n) in t.nodes.iter_mut().enumerate() {
            let a = net
                .host(i as u32 + 1)
                .filter(|a| *a != vip)
                .ok_or_else(|| {
                    format!(
                        "the subnet {net} is too small for {} nodes",
                        self.nodes.len()
                    )
                })?;
            n.address = a;
        }
        Ok(t)
    }

    /// Isolated mode: the supervisor's own address on the stack's bridge (the last host
    /// of the subnet); the admin ports answer it.
    pub fn supervisor_address(&self) -> Option<Ipv4Addr> {
        self.subnet.last_host()
    }

    /// Isolated mode: the address of the `client` namespace, from which the site is
    /// reached (the host before the supervisor's).
    pub fn client_address(&self) -> Option<Ipv4Addr> {
        let last = self.subnet.last_host()?;
        self.subnet
            .host(u32::from(last) - u32::from(self.subnet.network) - 1)
    }
}

/// One problem in a topology file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the error is about the file as a whole).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error: {}", self.file.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: error: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a topology file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses and validates topology text; `file` is only used in error messages.
pub fn parse(text: &str, file: &Path) -> Result<Topology, ConfigErrors> {
    let raw: raw::RawTopology = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
                help: Some(raw::serde_help(e.message())),
            }]));
        }
    };
    raw::validate(raw, text, file)
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
