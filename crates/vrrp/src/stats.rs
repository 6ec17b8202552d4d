//! What a VRRP node counts and how it reports it: counters for `/metrics` through
//! `prometheus-client` ([`StatsCollector`]: rejections
//! by reason, transitions by state), the current state for `/healthz`, and a
//! rate-limited log of rejected datagrams.
//!
//! Shared between the VRRP thread (which writes) and the admin endpoints (which read),
//! so everything here is atomics or a short mutex; no I/O.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::machine::{Rejected, State};

/// Why a received datagram was dropped (the `reason` label of
/// `hastack_vrrp_adverts_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// IP TTL was not 255 (RFC 5798 §7.1): it crossed a router, or was forged.
    Ttl,
    /// From an address (or, in loopback mode, a port) that is not a configured peer.
    Source,
    /// Sent to an address that is neither 224.0.0.18 nor ours.
    Destination,
    /// Not a VRRPv3 advertisement (version, type, length, interval, IP header).
    Malformed,
    /// The VRRPv3 checksum (with the pseudo-header of the real addresses) is wrong.
    Checksum,
    /// Authentication on and the HMAC tag missing or wrong.
    Auth,
    /// Another virtual router (VRID).
    Vrid,
    /// The advert's address list differs from ours (a misconfigured peer).
    Addresses,
}

impl RejectReason {
    /// Every reason, in the order of the metrics.
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Ttl,
        RejectReason::Source,
        RejectReason::Destination,
        RejectReason::Malformed,
        RejectReason::Checksum,
        RejectReason::Auth,
        RejectReason::Vrid,
        RejectReason::Addresses,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Ttl => "ttl",
            RejectReason::Source => "source",
            RejectReason::Destination => "destination",
            RejectReason::Malformed => "malformed",
            RejectReason::Checksum => "checksum",
            RejectReason::Auth => "auth",
            RejectReason::Vrid => "vrid",
            RejectReason::Addresses => "addresses",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The reason for a machine rejection (`None`: not a datagram problem).
    pub fn of_machine(r: &Rejected) -> Option<RejectReason> {
        match r {
            Rejected::OtherVrid { .. } => Some(RejectReason::Vrid),
            Rejected::AddressMismatch { .. } => Some(RejectReason::Addresses),
            Rejected::UnknownSender(_) => Some(RejectReason::Source),
            Rejected::NotStarted => None,
        }
    }
}

const STATES: [State; 4] = [
    State::Initialize,
    State::Backup,
    State::Master,
    State::Fault,
];

fn state_code(s: State) -> u8 {
    match s {
        State::Initialize => 0,
        State::Backup => 1,
        State::Master => 2,
        State::Fault => 3,
    }
}

/// Counters a node exports in `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Adverts sent (one per destination).
    pub adverts_sent: AtomicU64,
    /// Adverts accepted.
    pub adverts_received: AtomicU64,
    rejected: [AtomicU64; 8],
    /// Times this node became master.
    pub became_master: AtomicU64,
    transitions: [AtomicU64; 4],
    /// Gratuitous ARP frames sent.
    pub garp_sent: AtomicU64,
    /// Times taking the VIP failed (address or listener), each followed by a hand-over.
    pub vip_failures: AtomicU64,
    /// Notify commands that failed or timed out.
    pub notify_failures: AtomicU64,
    /// Current state: 0 initialize, 1 backup, 2 master, 3 fault.
    pub state: AtomicU8,
    fault: Mutex<Option<String>>,
}

impl Stats {
    /// Records the current state.
    pub fn set_state(&self, s: State) {
        self.state.store(state_code(s), Ordering::Relaxed);
    }

    /// Counts a transition into `s` (and records it as the current state).
    pub fn transition(&self, s: State) {
        self.set_state(s);
        if let Some(c) = self.transitions.get(usize::from(state_code(s))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if s == State::Master {
            self.became_master.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Transitions into `s` so far.
    pub fn transitions(&self, s: State) -> u64 {
        self.transitions
            .get(usize::from(state_code(s)))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The current state.
    pub fn state(&self) -> State {
        let code = self.state.load(Ordering::Relaxed);
        STATES
            .into_iter()
            .find(|s| state_code(*s) == code)
            .unwrap_or(State::Initialize)
    }

    /// The current state's name (`initialize`, `backup`, `master`, `fault`).
    pub fn state_name(&self) -> &'static str {
        self.state().as_str()
    }

    /// Counts one rejected datagram.
    pub fn reject(&self, reason: RejectReason) {
        if let Some(c) = self.rejected.get(reason.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Datagrams rejected for `reason` so far.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Datagrams rejected for any reason.
    pub fn rejected_total(&self) -> u64 {
        RejectReason::ALL.iter().map(|r| self.rejected(*r)).sum()
    }

    /// Why the node is in fault (or was last), for `/healthz`.
    pub fn set_fault(&self, why: Option<String>) {
        if let Ok(mut f) = self.fault.lock() {
            *f = why;
        }
    }

    /// The recorded fault reason.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().ok().and_then(|f| f.clone())
    }
}

/// The VRRP figures of a [`Stats`] for `/metrics`, read at each scrape through
/// `prometheus-client` (the values live in the VRRP thread's atomics).
#[derive(Debug, Clone)]
pub struct StatsCollector(pub std::sync::Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let l = Ordering::Relaxed;
        let state = ConstGauge::new(i64::from(s.state.load(l)));
        state.encode(enc.encode_descriptor(
            "hastack_vrrp_state",
            "VRRP state: 0 initialize, 1 backup, 2 master, 3 fault.",
            None,
            state.metric_type(),
        )?)?;
        let mut counter = |name: &str, help: &str, v: u64| -> std::fmt::Result {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
        };
        counter(
            "hastack_vrrp_adverts_sent",
            "Adverts sent.",
            s.adverts_sent.load(l),
        )?;
        counter(
            "hastack_vrrp_adverts_received",
            "Adverts accepted.",
            s.adverts_received.load(l),
        )?;
        counter(
            "hastack_vrrp_became_master",
            "Transitions to master.",
            s.became_master.load(l),
        )?;
        counter(
            "hastack_vrrp_garp_sent",
            "Gratuitous ARP frames sent.",
            s.garp_sent.load(l),
        )?;
        counter(
            "hastack_vrrp_vip_failures",
            "Failures to take the VIP (address or listener), each handed over.",
            s.vip_failures.load(l),
        )?;
        counter(
            "hastack_vrrp_notify_failures",
            "Notify commands that failed or timed out.",
            s.notify_failures.load(l),
        )?;
        let mut rejected = enc.encode_descriptor(
            "hastack_vrrp_adverts_rejected",
            "Datagrams dropped, by reason.",
            None,
            MetricType::Counter,
        )?;
        for r in RejectReason::ALL {
            ConstCounter::new(s.rejected(r))
                .encode(rejected.encode_family(&[("reason", r.as_str())])?)?;
        }
        let mut transitions = enc.encode_descriptor(
            "hastack_vrrp_transitions",
            "State changes, by the state entered.",
            None,
            MetricType::Counter,
        )?;
        for st in STATES {
            ConstCounter::new(s.transitions(st))
                .encode(transitions.encode_family(&[("state", st.as_str())])?)?;
        }
        Ok(())
    }
}

/// How often each rejection reason may reach the log.
pub const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limit for the log of rejected datagrams: the first of each reason is logged,
/// then at most one line per reason per [`REJECT_LOG_EVERY`], saying how many were
/// left out. A flood of forged packets costs counters, not log lines.
#[derive(Debug, Default)]
pub struct RejectLog {
    last: [Option<Instant>; 8],
    suppressed: [u64; 8],
}

impl RejectLog {
    /// Whether a rejection for `reason` at `now` is logged; `Some(n)` with the number
    /// left out since the last line, `None` to stay quiet.
    pub fn admit(&mut self, reason: RejectReason, now: Instant) -> Option<u64> {
        let i = reason.index();
        let (last, suppressed) = (self.last.get_mut(i)?, self.suppressed.get_mut(i)?);
        match *last {
            Some(t) if now.saturating_duration_since(t) < REJECT_LOG_EVERY => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_counted_and_rendered_by_reason() {
        let s = Stats::default();
        s.reject(RejectReason::Ttl);
        s.reject(RejectReason::Ttl);
        s.reject(RejectReason::Auth);
        let s = std::sync::Arc::new(s);
        let render = || {
            let mut r = prometheus_client::registry::Registry::default();
            r.register_collector(Box::new(StatsCollector(s.clone())));
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
            out
        };
        let out = render();
        assert!(
            out.contains("hastack_vrrp_adverts_rejected_total{reason=\"ttl\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("hastack_vrrp_adverts_rejected_total{reason=\"auth\"} 1\n"));
        assert!(out.contains("hastack_vrrp_adverts_rejected_total{reason=\"source\"} 0\n"));
        assert_eq!(s.rejected_total(), 3);
        s.transition(State::Master);
        s.transition(State::Fault);
        let out = render();
        assert!(out.contains("hastack_vrrp_state 3\n"), "{out}");
        assert!(out.contains("hastack_vrrp_transitions_total{state=\"master\"} 1\n"));
        assert!(out.contains("hastack_vrrp_became_master_total 1\n"));
        assert_eq!(s.state_name(), "fault");
    }

    #[test]
    fn the_rejection_log_is_one_line_per_reason_per_period() {
        let t0 = Instant::now();
        let mut log = RejectLog::default();
        assert_eq!(log.admit(RejectReason::Ttl, t0), Some(0), "first is logged");
        for i in 1..=99u64 {
            assert_eq!(
                log.admit(RejectReason::Ttl, t0 + Duration::from_millis(i * 10)),
                None
            );
        }
        assert_eq!(
            log.admit(RejectReason::Source, t0 + Duration::from_secs(1)),
            Some(0),
            "each reason has its own budget"
        );
        assert_eq!(
            log.admit(RejectReason::Ttl, t0 + REJECT_LOG_EVERY),
            Some(99),
            "the next line says how many were left out"
        );
    }
}
