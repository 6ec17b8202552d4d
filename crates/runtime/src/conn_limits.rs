//! Connection limits of a listener: at most `max_total` open connections in all and
//! `max_per_client` from one client address (HAProxy's `maxconn` and a stick table's
//! `sc_conn_cur`). A connection over either limit is closed as soon as it is accepted,
//! before any byte is read, and counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The limits and the open connections they count.
#[derive(Debug)]
pub struct ConnLimits {
    /// 0: no limit. Changed by a reload ([`ConnLimits::set`]).
    max_total: AtomicU32,
    max_per_client: AtomicU32,
    open: Mutex<Open>,
    refused: Family<ReasonLabels, Counter>,
    open_gauge: Gauge,
}

#[derive(Debug, Default)]
struct Open {
    total: u32,
    per_client: HashMap<IpAddr, u32>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    /// `None` when no limit was set as it opened: it was not counted.
    limits: Option<Arc<ConnLimits>>,
    client: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(limits) = self.limits.take() else {
            return;
        };
        self.release(&limits);
    }
}

impl Admitted {
    fn release(&self, limits: &ConnLimits) {
        let mut open = limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
        limits.open_gauge.dec();
    }
}

impl ConnLimits {
    /// Limits of `max_total` and `max_per_client` open connections (0: no limit); the
    /// counters go into `registry`.
    pub fn new(max_total: u32, max_per_client: u32, registry: &mut Registry) -> Arc<ConnLimits> {
        let limits = ConnLimits {
            max_total: AtomicU32::new(max_total),
            max_per_client: AtomicU32::new(max_per_client),
            open: Mutex::default(),
            refused: Family::default(),
            open_gauge: Gauge::default(),
        };
        registry.register(
            "hastack_connections_refused",
            "Client connections closed at once for being over a connection limit",
            limits.refused.clone(),
        );
        registry.register(
            "hastack_connections_open",
            "Client connections open on the limited listeners",
            limits.open_gauge.clone(),
        );
        Arc::new(limits)
    }

    /// Sets new limits (a reload); connections open now count against them when
    /// they were opened under a limit.
    pub fn set(&self, max_total: u32, max_per_client: u32) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_client.store(max_per_client, Ordering::Relaxed);
    }

    /// Admits a connection from `client`, or `Err` with the limit it is over.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, &'static str> {
        let max_total = self.max_total.load(Ordering::Relaxed);
        let max_per_client = self.max_per_client.load(Ordering::Relaxed);
        if max_total == 0 && max_per_client == 0 {
            // No limit: nothing to count.
            return Ok(Admitted {
                limits: None,
                client,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let reason = if max_total > 0 && open.total >= max_total {
            Some("max_conn")
        } else if max_per_client > 0
            && open.per_client.get(&client).copied().unwrap_or(0) >= max_per_client
        {
            Some("max_conn_per_client")
        } else {
            None
        };
        if let Some(reason) = reason {
            drop(open);
            self.refused.get_or_create(&ReasonLabels { reason }).inc();
            return Err(reason);
        }
        open.total += 1;
        *open.per_client.entry(client).or_insert(0) += 1;
        drop(open);
        self.open_gauge.inc();
        Ok(Admitted {
            limits: Some(self.clone()),
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_and_total_limits_free_their_place_on_close() {
        let l = ConnLimits::new(3, 2, &mut Registry::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = l.admit(a).expect("first");
        let _a2 = l.admit(a).expect("second");
        assert_eq!(l.admit(a).err(), Some("max_conn_per_client"));
        let _b1 = l.admit(b).expect("another client");
        assert_eq!(l.admit(b).err(), Some("max_conn"), "three open in all");
        drop(a1);
        assert!(l.admit(a).is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn zero_means_no_limit() {
        let l = ConnLimits::new(0, 0, &mut Registry::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let held: Vec<_> = (0..1000).map(|_| l.admit(a).expect("admitted")).collect();
        assert_eq!(held.len(), 1000);
    }
}
