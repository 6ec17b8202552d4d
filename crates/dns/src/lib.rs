//! The authoritative DNS server of the site's zone: what an operator would otherwise
//! run BIND or NSD for, authoritative-only, its zone computed from the topology.
//!
//! The site `www.foobar.com` gives the zone `foobar.com.` (the site's name less its
//! first label; a two-label site is the apex itself) with:
//!
//! - an SOA (mname the first nameserver, rname `hostmaster.<zone>`, a serial that is a
//!   hash of the zone's records, so every nameserver of the topology shows the same
//!   one; refresh 1 h, retry 10 min, expire 2 weeks, negative-caching TTL the zone's
//!   TTL),
//! - NS records for the nameservers (`dns1` → `dns1.foobar.com.`) and their glue A/AAAA,
//! - A/AAAA records of the site's name, one per VIP.
//!
//! What hickory-server does: the zone store (`InMemoryZoneHandler`) and the answers
//! (`Catalog`): AA set, RA clear (no recursion), REFUSED for names outside the zone,
//! NXDOMAIN and NODATA with the SOA in the authority section, EDNS, AXFR denied, the
//! TC bit when a UDP answer does not fit (the encoding is hickory's; the size limit is
//! set here).
//!
//! What is hand-written here: the zone's construction from a [`ZoneSpec`]; `ANY`
//! answered REFUSED before the catalog (no amplification); NOTIMP for opcodes other
//! than QUERY and BADVERS for EDNS versions above 0 (hickory's catalog would answer
//! the same but log a warning for each); the apex's NS answer, with
//! the glue of every nameserver (hickory 0.26 adds the first one's only); the UDP
//! response rate limit per client address with its bounded table; the UDP and TCP
//! loops (so that malformed packets are counted and dropped rather than answered
//! FORMERR, and TCP connections are bounded); the metrics and the [`Stats`].

mod handler;
mod limit;
mod metrics;
mod net;
mod zone;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_server::proto::rr::LowerName;
use hickory_server::zone_handler::Catalog;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::info;

pub use metrics::{Stats, StatsHandle};

/// What the zone is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSpec {
    /// The site's name, e.g. `www.foobar.com`; the zone is `foobar.com.`.
    pub site: String,
    /// The site name's addresses (A and AAAA records), one or more.
    pub vips: Vec<IpAddr>,
    /// The nameservers, e.g. `("dns1", 127.0.5.1)` → NS `dns1.foobar.com.` with a
    /// glue A record. A name is relative to the zone unless it ends in `.`; it must be
    /// inside the zone either way. The first one is the SOA's mname.
    pub nameservers: Vec<(String, IpAddr)>,
    /// The TTL of every record, and the negative-caching TTL, in seconds.
    pub ttl: u32,
}

/// The UDP response rate limit per client address: `per_second` answers on average,
/// `burst` at once (0: one second's worth). A `per_second` of 0 limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Answers per second a client may get on average.
    pub per_second: u32,
    /// Answers a quiet client may get at once.
    pub burst: u32,
}

/// Why the zone cannot be built or served.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The site's name cannot make a zone.
    #[error("invalid site name {site:?} for the DNS zone: {reason}")]
    Site {
        /// The name given.
        site: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No address for the site's name.
    #[error("the DNS zone needs at least one VIP for the site's name: no VIP given")]
    NoVips,
    /// No nameserver.
    #[error("the DNS zone needs at least one nameserver: no nameserver given")]
    NoNameservers,
    /// A nameserver's name is not usable.
    #[error("invalid nameserver {name:?}: {reason}")]
    Nameserver {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TTL is over what RFC 2181 allows.
    #[error("DNS TTL {0} is over 2147483647, the most RFC 2181 allows")]
    Ttl(u32),
    /// hickory would not take the zone.
    #[error("cannot build the DNS zone: {0}")]
    Zone(String),
    /// A socket could not be opened.
    #[error("cannot listen for DNS on {proto} {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The cause, e.g. address in use.
        source: std::io::Error,
    },
}

/// The DNS server of one zone.
pub struct Server {
    guard: Arc<handler::Guard>,
    limit: RateLimit,
    stats: StatsHandle,
}

impl Server {
    /// Builds the zone of `spec` and registers the metrics in `registry`: queries
    /// answered by response code, answers dropped by the rate `limit`, `ANY` refused,
    /// malformed packets, TCP connections refused.
    pub fn new(
        spec: &ZoneSpec,
        limit: RateLimit,
        registry: &mut Registry,
    ) -> Result<Server, DnsError> {
        let zone = zone::Zone::build(spec)?;
        let origin = zone.origin.clone();
        let serial = zone.serial;
        let (ns, glue) = (zone.ns.clone(), zone.glue.clone());
        let handler = zone.into_handler()?;
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        let metrics = metrics::Metrics::new(registry);
        Ok(Server {
            guard: Arc::new(handler::Guard {
                catalog,
                metrics: metrics.clone(),
                apex: LowerName::new(&origin),
                ns,
                glue,
            }),
            limit,
            stats: StatsHandle {
                zone: origin.to_string(),
                serial,
                metrics,
            },
        })
    }

    /// A handle that reads the figures, also after [`Server::serve`] took the server.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Binds UDP and TCP on `addr` (with port 0, TCP takes the port UDP got) and serves
    /// until `shutdown` turns true (or its sender is dropped). A binding failure is an
    /// error naming the address.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), DnsError> {
        let bind_err = |proto: &'static str, addr: SocketAddr| {
            move |source| DnsError::Bind {
                addr,
                proto,
                source,
            }
        };
        let udp = UdpSocket::bind(addr).await.map_err(bind_err("udp", addr))?;
        let tcp_addr = if addr.port() == 0 {
            udp.local_addr().map_err(bind_err("udp", addr))?
        } else {
            addr
        };
        let tcp = TcpListener::bind(tcp_addr)
            .await
            .map_err(bind_err("tcp", tcp_addr))?;
        self.serve_on(udp, tcp, shutdown).await
    }

    /// Serves on sockets already bound (tests bind port 0 and learn the ports) until
    /// `shutdown` turns true (or its sender is dropped); open TCP connections are then
    /// closed.
    pub async fn serve_on(
        self,
        udp: UdpSocket,
        tcp: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), DnsError> {
        let show =
            |a: std::io::Result<SocketAddr>| a.map_or_else(|_| "?".to_string(), |a| a.to_string());
        info!(
            zone = %self.stats.zone,
            serial = self.stats.serial,
            udp = %show(udp.local_addr()),
            tcp = %show(tcp.local_addr()),
            per_second = self.limit.per_second,
            burst = self.limit.burst,
            "dns: serving the zone"
        );
        tokio::join!(
            net::serve_udp(self.guard.clone(), udp, self.limit, shutdown.clone()),
            net::serve_tcp(self.guard.clone(), tcp, shutdown),
        );
        info!(zone = %self.stats.zone, "dns: stopped");
        Ok(())
    }
}
