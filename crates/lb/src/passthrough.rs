//! TLS passthrough: each connection to the VIP's HTTPS port is routed by the server
//! name in its ClientHello to a healthy web node's HTTPS port (`ports.web_https`), and
//! the bytes are relayed both ways undecrypted; the web node terminates TLS.
//!
//! A name the site does not serve is refused (the connection closed, counted). A web
//! node that refuses the connection is skipped for the next one: nothing was sent to
//! it yet, so this is always safe. A PROXY protocol v2 header with the client's address
//! goes out first (HAProxy's `send-proxy-v2`), then the ClientHello bytes read to find
//! the name, unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hastack_config::Topology;
use hastack_proxy::Pool;
use hastack_tls::pki::name_matches;
use hastack_tls::sni::read_hello;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

/// How long a web node may take to accept a passed-through connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// The passthrough router of one lb.
pub(crate) struct Passthrough {
    pool: Arc<Pool>,
    port: u16,
    /// Server names routed to the web tier (`*.` patterns allowed).
    names: Vec<String>,
    connections: Family<Outcome, Counter>,
}

impl Passthrough {
    /// Routes the site's name (and those of the topology's own certificates, when this
    /// server can read them) to `pool`'s nodes on `ports.web_https`.
    pub(crate) fn new(topo: &Topology, pool: Arc<Pool>, registry: &mut Registry) -> Passthrough {
        let mut names = vec![topo.site.clone()];
        for c in &topo.tls.certificates {
            // Only the names: the lb never needs these certificates' keys.
            let facts = std::fs::read(&c.cert)
                .ok()
                .and_then(|pem| hastack_tls::pki::cert_facts(&pem, &c.cert).ok());
            if let Some(f) = facts {
                names.extend(f.dns);
            }
        }
        let connections = Family::<Outcome, Counter>::default();
        registry.register(
            "hastack_passthrough_connections",
            "TLS connections passed through to the web tier, by outcome",
            connections.clone(),
        );
        Passthrough {
            pool,
            port: topo.ports.web_https,
            names,
            connections,
        }
    }

    fn count(&self, outcome: &'static str) {
        self.connections.get_or_create(&Outcome { outcome }).inc();
    }

    /// Whether a ClientHello's server name is one the site serves. A client that
    /// sends none (it connected by IP address) gets the site.
    fn routes(&self, sni: Option<&str>) -> bool {
        sni.is_none_or(|n| self.names.iter().any(|p| name_matches(p, n)))
    }

    /// Accepts on `listener` until `shutdown`; relayed connections run on.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let me = self.clone();
                        tokio::spawn(async move { me.relay(stream, peer).await });
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn relay(&self, mut client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let (hello, sni) = match read_hello(&mut client, hastack_tls::HANDSHAKE_TIMEOUT).await {
            Ok(h) => h,
            Err(why) => {
                debug!(%peer, why, "passthrough: refused");
                self.count("not_tls");
                return;
            }
        };
        if !self.routes(sni.as_deref()) {
            debug!(%peer, sni = sni.as_deref().unwrap_or(""), "passthrough: no route for this server name");
            self.count("unknown_name");
            return;
        }
        let mut tried = Vec::new();
        let key = match peer.ip() {
            std::net::IpAddr::V4(a) => hastack_proxy::balance::hash(&a.octets()),
            std::net::IpAddr::V6(a) => hastack_proxy::balance::hash(&a.octets()),
        };
        while let Some(server) = self.pool.pick(key, &tried) {
            tried.push(server.id);
            let server_ref = server.clone();
            let addr = SocketAddr::new(server.addr.ip(), self.port);
            let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(server = %server.name, error = %e, "passthrough: connect failed; next server");
                    continue;
                }
                Err(_) => continue,
            };
            let _ = upstream.set_nodelay(true);
            // PROXY v2 first, so the web node knows the client; then the ClientHello.
            let server = client.local_addr().unwrap_or(addr);
            let mut first = hastack_runtime::proxy_protocol::encode(peer, server);
            first.extend_from_slice(&hello);
            if upstream.write_all(&first).await.is_err() {
                self.count("upstream_error");
                return;
            }
            self.count("relayed");
            let _in_flight = server_ref.begin();
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            return;
        }
        warn!(%peer, "passthrough: no web node took the connection");
        self.count("no_server");
    }
}
