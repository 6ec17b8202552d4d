//! The zone's records, built from the site's name, its VIPs and the nameservers: what
//! an operator would write in the zone file of BIND or NSD for the site, computed
//! instead of written.
//!
//! Pure: no I/O. The records go into hickory-server's `InMemoryZoneHandler`
//! ([`Zone::into_handler`]), which answers the lookups (NXDOMAIN and NODATA with the SOA,
//! the AA bit).

use std::net::IpAddr;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, ZoneType};

use crate::{DnsError, ZoneSpec};

/// How often a secondary would check the SOA (none does: every server is a primary
/// built from the same topology), in seconds.
const REFRESH: i32 = 3600;
/// How long a secondary would wait to retry a failed refresh, in seconds.
const RETRY: i32 = 600;
/// How long a secondary would keep serving without reaching a primary: two weeks,
/// RFC 1912's advice.
const EXPIRE: i32 = 14 * 24 * 3600;
/// The longest TTL RFC 2181 §8 allows.
const MAX_TTL: u32 = i32::MAX as u32;

/// The records of the zone, with its origin and serial.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    /// The zone's name, e.g. `foobar.com.`.
    pub(crate) origin: Name,
    /// The SOA serial: a hash of the zone's other records (see [`serial_of`]).
    pub(crate) serial: u32,
    /// Every record, the SOA first.
    pub(crate) records: Vec<Record>,
    /// The apex's NS records.
    pub(crate) ns: Vec<Record>,
    /// The nameservers' A/AAAA records.
    pub(crate) glue: Vec<Record>,
}

impl Zone {
    /// Builds the zone of `spec`: the site's name without its first label when it has
    /// three or more (`www.foobar.com` → `foobar.com.`), else the site's name itself
    /// (`foobar.com` → `foobar.com.`, the site at the apex).
    pub(crate) fn build(spec: &ZoneSpec) -> Result<Zone, DnsError> {
        let bad_site = |reason: String| DnsError::Site {
            site: spec.site.clone(),
            reason,
        };
        let site_text = spec.site.trim();
        if site_text.is_empty() || site_text == "." {
            return Err(bad_site("it is empty".into()));
        }
        let mut site = Name::from_ascii(site_text).map_err(|e| bad_site(e.to_string()))?;
        site.set_fqdn(true);
        let site = site.to_lowercase();
        if site.num_labels() < 2 {
            return Err(bad_site(
                "a site needs at least two labels (name.tld)".into(),
            ));
        }
        let origin = if site.num_labels() >= 3 {
            site.base_name()
        } else {
            site.clone()
        };
        if spec.vips.is_empty() {
            return Err(DnsError::NoVips);
        }
        if spec.nameservers.is_empty() {
            return Err(DnsError::NoNameservers);
        }
        if spec.ttl > MAX_TTL {
            return Err(DnsError::Ttl(spec.ttl));
        }
        let ttl = spec.ttl;

        let mut ns_names: Vec<(Name, IpAddr)> = Vec::with_capacity(spec.nameservers.len());
        for (text, ip) in &spec.nameservers {
            let name = nameserver_name(text, &origin)?;
            if name == site {
                return Err(DnsError::Nameserver {
                    name: text.clone(),
                    reason: format!(
                        "{name} is the site's own name: its glue would join the site's addresses"
                    ),
                });
            }
            ns_names.push((name, *ip));
        }
        let mname = ns_names
            .first()
            .map(|(n, _)| n.clone())
            .ok_or(DnsError::NoNameservers)?;

        let mut ns: Vec<Record> = Vec::new();
        for (name, _) in &ns_names {
            let record = Record::from_rdata(origin.clone(), ttl, RData::NS(NS(name.clone())));
            if !ns.contains(&record) {
                ns.push(record);
            }
        }
        let glue: Vec<Record> = ns_names
            .iter()
            .map(|(name, ip)| address(name, ttl, *ip))
            .collect();
        let mut others: Vec<Record> = spec
            .vips
            .iter()
            .map(|ip| address(&site, ttl, *ip))
            .collect();
        others.extend(ns.iter().cloned());
        others.extend(glue.iter().cloned());
        let serial = serial_of(&others);
        let rname = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&origin))
            .map_err(|e| bad_site(e.to_string()))?;
        let soa = SOA::new(mname, rname, serial, REFRESH, RETRY, EXPIRE, ttl);
        let mut records = vec![Record::from_rdata(origin.clone(), ttl, RData::SOA(soa))];
        records.extend(others);
        Ok(Zone {
            origin,
            serial,
            records,
            ns,
            glue,
        })
    }

    /// The zone as hickory-server's in-memory zone handler: primary, AXFR denied.
    pub(crate) fn into_handler(self) -> Result<InMemoryZoneHandler, DnsError> {
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            self.origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        for record in self.records {
            let shown = record.to_string();
            if !handler.upsert_mut(record, self.serial) {
                return Err(DnsError::Zone(format!(
                    "cannot add {shown} to {}",
                    self.origin
                )));
            }
        }
        Ok(handler)
    }
}

/// The absolute name of a nameserver: `dns1` → `dns1.<zone>`; a name ending in `.` is
/// taken as absolute and must be inside the zone (its glue is served from here).
fn nameserver_name(text: &str, origin: &Name) -> Result<Name, DnsError> {
    let bad = |reason: String| DnsError::Nameserver {
        name: text.to_string(),
        reason,
    };
    let text = text.trim();
    if text.is_empty() || text == "." {
        return Err(bad("it is empty".into()));
    }
    let name = Name::parse(text, Some(origin))
        .map_err(|e| bad(e.to_string()))?
        .to_lowercase();
    if !origin.zone_of(&name) || name == *origin {
        return Err(bad(format!(
            "{name} is not below the zone {origin}: its glue could not be served"
        )));
    }
    Ok(name)
}

/// The A or AAAA record of `ip`.
fn address(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

/// The serial of a zone with `records` (all but the SOA): FNV-1a of their zone-file
/// text, sorted. The same topology gives the same serial on every nameserver and at
/// every start, so `dig +nssearch` shows agreeing servers; a changed zone gives another
/// serial. There are no zone transfers, so the serial need not grow (RFC 1982 matters
/// to secondaries only).
pub(crate) fn serial_of(records: &[Record]) -> u32 {
    let mut lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    lines.sort();
    let mut hash: u32 = 0x811c_9dc5;
    for line in &lines {
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::RecordType;

    fn spec() -> ZoneSpec {
        ZoneSpec {
            site: "www.foobar.com".into(),
            vips: vec![
                "127.0.0.100".parse().expect("ip"),
                "::1".parse().expect("ip"),
            ],
            nameservers: vec![
                ("dns1".into(), "127.0.5.1".parse().expect("ip")),
                ("dns2".into(), "127.0.5.2".parse().expect("ip")),
            ],
            ttl: 60,
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("name")
    }

    fn of_type(zone: &Zone, owner: &str, t: RecordType) -> Vec<String> {
        zone.records
            .iter()
            .filter(|r| r.name == name(owner) && r.record_type() == t)
            .map(|r| r.data.to_string())
            .collect()
    }

    #[test]
    fn the_zone_of_www_foobar_com_has_soa_ns_glue_and_the_vips() {
        let zone = Zone::build(&spec()).expect("zone");
        assert_eq!(zone.origin, name("foobar.com."));
        let first = zone.records.first().expect("records");
        let RData::SOA(soa) = &first.data else {
            panic!("the SOA comes first, got {first}");
        };
        assert_eq!(soa.mname, name("dns1.foobar.com."));
        assert_eq!(soa.rname, name("hostmaster.foobar.com."));
        assert_eq!(soa.serial, zone.serial);
        assert_eq!(
            (soa.refresh, soa.retry, soa.expire, soa.minimum),
            (3600, 600, 1_209_600, 60)
        );
        assert_eq!(
            of_type(&zone, "foobar.com.", RecordType::NS),
            ["dns1.foobar.com.", "dns2.foobar.com."]
        );
        assert_eq!(
            of_type(&zone, "www.foobar.com.", RecordType::A),
            ["127.0.0.100"]
        );
        assert_eq!(of_type(&zone, "www.foobar.com.", RecordType::AAAA), ["::1"]);
        assert_eq!(
            of_type(&zone, "dns2.foobar.com.", RecordType::A),
            ["127.0.5.2"]
        );
        assert!(zone.records.iter().all(|r| r.ttl == 60));
        assert_eq!(zone.records.len(), 1 + 2 + 2 + 2);
    }

    #[test]
    fn a_two_label_site_is_the_apex() {
        let mut s = spec();
        s.site = "FooBar.com.".into();
        let zone = Zone::build(&s).expect("zone");
        assert_eq!(zone.origin, name("foobar.com."));
        assert_eq!(
            of_type(&zone, "foobar.com.", RecordType::A),
            ["127.0.0.100"]
        );
    }

    #[test]
    fn the_serial_follows_the_content_not_the_order_or_the_clock() {
        let a = Zone::build(&spec()).expect("zone");
        let mut s = spec();
        // (The nameservers' order is content: the first is the SOA's primary.)
        s.vips.reverse();
        let b = Zone::build(&s).expect("zone");
        assert_eq!(a.serial, b.serial, "same records, same serial");
        s.vips.push("127.0.0.101".parse().expect("ip"));
        let c = Zone::build(&s).expect("zone");
        assert_ne!(a.serial, c.serial, "another VIP, another serial");
    }

    #[test]
    fn absolute_nameserver_names_must_be_in_the_zone() {
        let mut s = spec();
        s.nameservers = vec![("ns.foobar.com.".into(), "127.0.5.1".parse().expect("ip"))];
        let zone = Zone::build(&s).expect("in the zone");
        assert_eq!(
            of_type(&zone, "ns.foobar.com.", RecordType::A),
            ["127.0.5.1"]
        );
        s.nameservers = vec![("ns.example.net.".into(), "127.0.5.1".parse().expect("ip"))];
        let err = Zone::build(&s).expect_err("outside the zone");
        assert!(err.to_string().contains("not below the zone"), "{err}");
    }

    #[test]
    fn bad_specs_are_errors_that_say_what_is_wrong() {
        type Change = Box<dyn Fn(&mut ZoneSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.site = "localhost".into()), "two labels"),
            (Box::new(|s| s.site = "".into()), "empty"),
            (Box::new(|s| s.site = "bad..name".into()), "bad..name"),
            (Box::new(|s| s.vips.clear()), "no VIP"),
            (Box::new(|s| s.nameservers.clear()), "no nameserver"),
            (Box::new(|s| s.ttl = u32::MAX), "TTL"),
            (
                Box::new(|s| s.nameservers[0].0 = "www".into()),
                "site's own name",
            ),
        ];
        for (change, words) in cases {
            let mut s = spec();
            change(&mut s);
            let err = Zone::build(&s).expect_err("an error");
            let text = err.to_string();
            assert!(text.contains(words), "{text:?} should say {words:?}");
        }
    }

    #[test]
    fn the_records_fit_hickorys_in_memory_zone() {
        let zone = Zone::build(&spec()).expect("zone");
        let handler = zone.into_handler().expect("handler");
        assert_eq!(handler.class(), hickory_server::proto::rr::DNSClass::IN);
    }
}
