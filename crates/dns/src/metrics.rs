//! The DNS server's Prometheus metrics, and the [`Stats`] read from them for the
//! node's `/healthz`.

use hickory_server::proto::op::ResponseCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The response codes counted apart (every other one is `OTHER`, so the label's
/// values are bounded).
const RCODES: [&str; 7] = [
    "NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "FORMERR", "NOTIMP", "OTHER",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rcode {
    rcode: &'static str,
}

/// The label of a response code.
pub(crate) fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        _ => "OTHER",
    }
}

/// The counters (clones share their values).
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    answered: Family<Rcode, Counter>,
    pub(crate) rate_limited: Counter,
    pub(crate) any_refused: Counter,
    pub(crate) malformed: Counter,
    pub(crate) tcp_rejected: Counter,
}

impl Metrics {
    /// The counters, registered in `registry`.
    pub(crate) fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            answered: Family::default(),
            rate_limited: Counter::default(),
            any_refused: Counter::default(),
            malformed: Counter::default(),
            tcp_rejected: Counter::default(),
        };
        for rcode in RCODES {
            // Every series exists from the start, at 0.
            let _ = m.answered.get_or_create(&Rcode { rcode });
        }
        registry.register(
            "hastack_dns_queries_answered",
            "DNS queries answered, by response code",
            m.answered.clone(),
        );
        registry.register(
            "hastack_dns_rate_limited",
            "DNS queries over UDP dropped unanswered: the client was over its response rate",
            m.rate_limited.clone(),
        );
        registry.register(
            "hastack_dns_any_refused",
            "DNS queries of type ANY answered REFUSED",
            m.any_refused.clone(),
        );
        registry.register(
            "hastack_dns_malformed",
            "DNS packets dropped unanswered: not a decodable query",
            m.malformed.clone(),
        );
        registry.register(
            "hastack_dns_tcp_rejected",
            "DNS TCP connections closed at once: too many were open",
            m.tcp_rejected.clone(),
        );
        m
    }

    /// One more answer sent with `code`.
    pub(crate) fn answered(&self, code: ResponseCode) {
        self.answered
            .get_or_create(&Rcode {
                rcode: rcode_label(code),
            })
            .inc();
    }

    fn answered_with(&self, rcode: &'static str) -> u64 {
        self.answered.get_or_create(&Rcode { rcode }).get()
    }
}

/// What the DNS server has done, for the node's `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The zone served, e.g. `foobar.com.`.
    pub zone: String,
    /// Its SOA serial.
    pub serial: u32,
    /// Queries answered, whatever the response code.
    pub answered: u64,
    /// Of those, answered NXDOMAIN.
    pub nxdomain: u64,
    /// Of those, answered REFUSED (outside the zone, or `ANY`).
    pub refused: u64,
    /// Of the refused, `ANY` queries.
    pub any_refused: u64,
    /// UDP queries dropped unanswered by the rate limit.
    pub rate_limited: u64,
    /// Packets dropped unanswered: not a decodable query.
    pub malformed: u64,
}

/// Reads the [`Stats`] of a server, also once `serve` has taken it.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    pub(crate) zone: String,
    pub(crate) serial: u32,
    pub(crate) metrics: Metrics,
}

impl StatsHandle {
    /// The figures now.
    pub fn snapshot(&self) -> Stats {
        let m = &self.metrics;
        Stats {
            zone: self.zone.clone(),
            serial: self.serial,
            answered: RCODES.iter().map(|r| m.answered_with(r)).sum(),
            nxdomain: m.answered_with("NXDOMAIN"),
            refused: m.answered_with("REFUSED"),
            any_refused: m.any_refused.get(),
            rate_limited: m.rate_limited.get(),
            malformed: m.malformed.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_rcode_in_the_registry_and_the_stats() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.answered(ResponseCode::NoError);
        m.answered(ResponseCode::NXDomain);
        m.answered(ResponseCode::Refused);
        m.answered(ResponseCode::BADVERS);
        m.any_refused.inc();
        let stats = StatsHandle {
            zone: "foobar.com.".into(),
            serial: 7,
            metrics: m.clone(),
        }
        .snapshot();
        assert_eq!(
            (
                stats.answered,
                stats.nxdomain,
                stats.refused,
                stats.any_refused
            ),
            (4, 1, 1, 1)
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"hastack_dns_queries_answered_total{rcode="NXDOMAIN"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hastack_dns_queries_answered_total{rcode="OTHER"} 1"#),
            "{text}"
        );
        assert!(text.contains("hastack_dns_rate_limited_total 0"), "{text}");
    }
}
