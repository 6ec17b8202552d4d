//! TLS as one node of a topology uses it: its own certificate from the internal CA (to
//! serve its tier and to connect to the next, mTLS), the site's certificates (lb and
//! web nodes), and the reloading that keeps both current.

use std::net::IpAddr;
use std::sync::Arc;

use hastack_config::{Node, Topology};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::config::{ALPN_H2, ALPN_HTTP1, client_config, server_config};
use crate::pki::{Identity, Pki, name_matches};
use crate::reload::{Reloading, spawn_reloader};
use crate::{Acceptor, ClientConfig, TlsError, TlsMetrics};

/// Every certificate identity of a topology: the site's (unless the topology brings its
/// own certificates) and each node's.
pub fn identities(topo: &Topology) -> Vec<Identity> {
    let mut ids = Vec::new();
    if topo.tls.certificates.is_empty() {
        ids.push(Identity::site(&topo.site, IpAddr::V4(topo.vip)));
    }
    ids.extend(
        topo.nodes
            .iter()
            .map(|n| Identity::node(&n.name, IpAddr::V4(n.address))),
    );
    ids
}

/// Loads the site's certificates: the topology's own (each checked: it loads, its key
/// belongs to it, and one of them covers the site name), or the internal CA's.
pub fn site_certificates(topo: &Topology) -> Result<Vec<Arc<Reloading>>, TlsError> {
    if topo.tls.certificates.is_empty() {
        let pki = Pki::new(&topo.state_dir);
        return Ok(vec![Reloading::load(&pki.cert("site"), &pki.key("site"))?]);
    }
    let mut certs = Vec::new();
    for c in &topo.tls.certificates {
        certs.push(Reloading::load(&c.cert, &c.key)?);
    }
    let covers = |r: &Arc<Reloading>| {
        r.current()
            .facts
            .dns
            .iter()
            .any(|p| name_matches(p, &topo.site))
    };
    if !certs.iter().any(covers) {
        let names: Vec<String> = certs.iter().flat_map(|r| r.current().facts.dns).collect();
        return Err(TlsError::bad(
            certs[0].cert_path(),
            format!(
                "no [[tls.certificate]] of {} covers the site name {} (they hold {}); add a certificate issued for {}, or remove the [[tls.certificate]] entries to use the internal CA's",
                topo.source.display(),
                topo.site,
                names.join(", "),
                topo.site
            ),
        ));
    }
    // The one for the site name first: it is the default for clients without SNI.
    certs.sort_by_key(|r| !covers(r));
    Ok(certs)
}

/// How often a running node checks whether its certificates are due for renewal.
pub const RENEW_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// The TLS of one node.
pub struct NodeTls {
    pki: Pki,
    /// The identities this node keeps current (its own; the site's when internal).
    identities: Vec<Identity>,
    own: Arc<Reloading>,
    metrics: TlsMetrics,
    reloading: Vec<Arc<Reloading>>,
}

impl NodeTls {
    /// Makes sure `node`'s certificate exists and is current (issuing it when the CA
    /// key is here), loads it, and registers the TLS metrics in `registry`.
    pub fn open(
        topo: &Topology,
        node: &Node,
        registry: &mut Registry,
    ) -> Result<NodeTls, TlsError> {
        let pki = Pki::new(&topo.state_dir);
        let mut want = vec![Identity::node(&node.name, IpAddr::V4(node.address))];
        if topo.tls.certificates.is_empty() {
            want.push(Identity::site(&topo.site, IpAddr::V4(topo.vip)));
        }
        pki.ensure(&want, false)?;
        let stem = format!("nodes/{}", node.name);
        let own = Reloading::load(&pki.cert(&stem), &pki.key(&stem))?;
        Ok(NodeTls {
            pki,
            identities: want,
            reloading: vec![own.clone()],
            own,
            metrics: TlsMetrics::new(registry),
        })
    }

    /// The TLS metrics of this node.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    /// The server side of a hop between tiers: HTTP/1.1, and only clients with a
    /// certificate of the internal CA.
    pub fn internal_acceptor(&self) -> Result<Acceptor, TlsError> {
        let config = server_config(
            vec![self.own.clone()],
            &[ALPN_HTTP1],
            Some(&self.pki.ca_cert()),
        )?;
        Ok(Acceptor::new(config, self.metrics.clone()))
    }

    /// The client side of a hop: trusts the internal CA, presents this node's
    /// certificate.
    pub fn internal_client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(&self.pki.ca_cert(), Some(self.own.clone()), &[ALPN_HTTP1])
    }

    /// The client side of a hop to MariaDB: the node's certificate, the internal CA,
    /// no ALPN (MariaDB's TLS speaks the MySQL protocol, not HTTP).
    pub fn db_client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(&self.pki.ca_cert(), Some(self.own.clone()), &[])
    }

    /// The server side of the site's HTTPS: its certificates (SNI picks), HTTP/2 or
    /// HTTP/1.1 by ALPN, no client certificate.
    pub fn site_acceptor(&mut self, topo: &Topology) -> Result<Acceptor, TlsError> {
        let certs = site_certificates(topo)?;
        self.reloading.extend(certs.iter().cloned());
        let config = server_config(certs, &[ALPN_H2, ALPN_HTTP1], None)?;
        Ok(Acceptor::new(config, self.metrics.clone()))
    }

    /// The server side of an app node's hop from the web tier, when `[tls] internal`
    /// is on (`None` otherwise): the node's certificate kept fresh until `shutdown`,
    /// and only clients with a certificate of the internal CA.
    pub fn internal_acceptor_of(
        topo: &Topology,
        node: &Node,
        registry: &mut Registry,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Acceptor>, TlsError> {
        if !topo.tls.internal {
            return Ok(None);
        }
        let tls = NodeTls::open(topo, node, registry)?;
        tls.spawn_reloader(shutdown);
        Ok(Some(tls.internal_acceptor()?))
    }

    /// Keeps every certificate this node serves or presents current until `shutdown`:
    /// re-issues its own (where the CA key is) every [`RENEW_CHECK`] when due, and
    /// reloads any that changed on disk.
    pub fn spawn_reloader(&self, shutdown: watch::Receiver<bool>) {
        spawn_reloader(self.reloading.clone(), shutdown.clone());
        let (pki, ids) = (self.pki.clone(), self.identities.clone());
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_CHECK);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tick.tick() => {}
                }
                let (pki, ids) = (pki.clone(), ids.clone());
                match tokio::task::spawn_blocking(move || pki.ensure(&ids, false)).await {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "certificate renewal failed; will retry")
                    }
                    Ok(Ok(issued)) if !issued.is_empty() => {
                        tracing::info!(?issued, "certificates renewed")
                    }
                    _ => {}
                }
            }
        });
    }
}
