//! Every validation error, checked for its place and wording.

use super::*;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, Path::new("t.toml")) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(ConfigErrors(v)) => v,
    }
}

/// The default topology with `from` replaced by `to` (exactly once).
fn edited(from: &str, to: &str) -> String {
    assert_eq!(
        DEFAULT_TOPOLOGY.matches(from).count(),
        1,
        "ambiguous edit {from:?}"
    );
    DEFAULT_TOPOLOGY.replace(from, to)
}

/// The one error of `text`, which must be at `line` and mention `needle`.
fn one_error_at(text: &str, line: usize, needle: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = errs.into_iter().next().expect("one error");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
    assert_eq!(e.line, line, "wrong line in {e}");
    assert!(e.column >= 1, "column missing in {e}");
    assert!(e.help.is_some(), "no help in {e}");
    e
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .expect("needle in text")
}

#[test]
fn default_topology_is_the_seed() {
    let t = Topology::default_topology();
    assert_eq!(t.site, "www.foobar.com");
    assert_eq!(t.vip, Ipv4Addr::new(127, 0, 0, 100));
    assert_eq!(t.http_port, 8080);
    let names: Vec<_> = t.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lb1", "lb2", "web1", "web2", "app1", "app2", "db1", "db2", "db3", "dns1", "dns2"
        ]
    );
    assert_eq!(t.node("lb1").and_then(|n| n.priority), Some(150));
    assert_eq!(t.node("lb2").and_then(|n| n.priority), Some(100));
    assert_eq!(t.db.primary, "db1");
    assert_eq!(t.tier(Role::Db).count(), 3);
    assert_eq!(t.site_url(), "http://127.0.0.100:8080/");
}

#[test]
fn unknown_key_names_line_and_column() {
    let text = edited("preempt = true", "preempt = true\npreemt_delay = 3");
    let e = one_error_at(
        &text,
        line_of(&text, "preemt_delay"),
        "unknown field `preemt_delay`",
    );
    assert_eq!(e.column, 1);
    let shown = e.to_string();
    assert!(shown.starts_with("t.toml:"), "{shown}");
    assert!(shown.contains("help:"), "{shown}");
}

#[test]
fn wrong_type_is_reported_where_it_is() {
    let text = edited("port = 8080", "port = \"8080\"");
    let e = one_error_at(&text, line_of(&text, "port = \"8080\""), "invalid type");
    assert_eq!(e.column, 8);
}

#[test]
fn syntax_error_has_a_place() {
    let text = edited("vrid = 51", "vrid = = 51");
    let e = one_error_at(&text, line_of(&text, "vrid = = 51"), "invalid string");
    assert_eq!(e.message, "invalid string\nexpected `\"`, `'`");
    assert_eq!(e.column, 8, "at the second `=`");
}

#[test]
fn a_misspelt_section_is_named_with_the_valid_ones() {
    let text = DEFAULT_TOPOLOGY.replace("[vip]", "[vipp]");
    let e = one_error_at(&text, line_of(&text, "[vipp]"), "unknown field `vipp`");
    assert_eq!(
        e.message,
        "unknown field `vipp`, expected one of `site`, `vip`, `ports`, `vrrp`, `health`, \
         `lb`, `http`, `web`, `tls`, `db`, `dns`, `dashboard`, `app`, `node`"
    );
    assert_eq!(e.column, 2, "the section's name");
}

#[test]
fn duplicate_node_name() {
    let text = edited("name = \"web2\"", "name = \"web1\"");
    let e = one_error_at(
        &text,
        line_of(&text, "address = \"127.0.2.2\"") - 2,
        "duplicate node name `web1`",
    );
    assert_eq!(e.column, 8);
}

#[test]
fn duplicate_address() {
    let text = edited("address = \"127.0.2.2\"", "address = \"127.0.2.1\"");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .message
            .contains("same address 127.0.2.1 as node `web1`"),
        "{errs:?}"
    );
    assert_eq!(errs[0].line, line_of(&text, "name = \"web2\"") + 2);
}

#[test]
fn vip_equal_to_a_node_address() {
    let text = edited("address = \"127.0.3.1\"", "address = \"127.0.0.100\"");
    one_error_at(
        &text,
        line_of(&text, "name = \"app1\"") + 2,
        "has the VIP 127.0.0.100",
    );
}

#[test]
fn tier_without_nodes() {
    let start = DEFAULT_TOPOLOGY
        .find("[[node]]\nname = \"app1\"")
        .expect("app1");
    let end = DEFAULT_TOPOLOGY
        .find("[[node]]\nname = \"db1\"")
        .expect("db1");
    let text = format!("{}{}", &DEFAULT_TOPOLOGY[..start], &DEFAULT_TOPOLOGY[end..]);
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].message.contains("the app tier has no nodes"),
        "{errs:?}"
    );
    assert!(
        errs[0].to_string().contains("role = \\\"app\\\"")
            || errs[0].to_string().contains("role = \"app\"")
    );
}

#[test]
fn priority_out_of_range() {
    for bad in ["0", "255", "-3", "1000"] {
        let text = edited("priority = 100", &format!("priority = {bad}"));
        one_error_at(
            &text,
            line_of(&text, &format!("priority = {bad}")),
            "expected 1..=254",
        );
    }
}

#[test]
fn priority_on_a_non_lb_node() {
    let text = edited(
        "address = \"127.0.2.1\"",
        "address = \"127.0.2.1\"\npriority = 5",
    );
    one_error_at(
        &text,
        line_of(&text, "priority = 5"),
        "only lb nodes have a priority",
    );
}

#[test]
fn lb_without_priority() {
    let text = edited("priority = 100\n", "");
    one_error_at(&text, line_of(&text, "name = \"lb2\""), "has no priority");
}

#[test]
fn unknown_role() {
    let text = edited(
        "role = \"app\"\naddress = \"127.0.3.2\"",
        "role = \"apps\"\naddress = \"127.0.3.2\"",
    );
    one_error_at(
        &text,
        line_of(&text, "role = \"apps\""),
        "unknown role \"apps\"",
    );
}

#[test]
fn bad_address() {
    let text = edited("address = \"127.0.4.3\"", "address = \"127.0.4.300\"");
    one_error_at(
        &text,
        line_of(&text, "127.0.4.300"),
        "is not an IPv4 address",
    );
}

#[test]
fn non_loopback_address_in_loopback_mode() {
    let text = edited("address = \"127.0.4.3\"", "address = \"10.0.0.3\"");
    one_error_at(
        &text,
        line_of(&text, "10.0.0.3"),
        "needs a 127.x.y.z address",
    );
    let text = edited("address = \"127.0.0.100\"", "address = \"192.0.2.1\"");
    one_error_at(
        &text,
        line_of(&text, "192.0.2.1"),
        "the VIP must be a 127.x.y.z address",
    );
}

#[test]
fn unknown_mode() {
    let text = edited("mode = \"loopback\"", "mode = \"cloud\"");
    one_error_at(&text, line_of(&text, "mode = "), "unknown mode");
}

/// The default topology written for isolated mode: nodes and VIP in 10.77.0.0/24.
fn isolated_text() -> String {
    let mut text = DEFAULT_TOPOLOGY.replace("mode = \"loopback\"", "mode = \"isolated\"");
    text = text.replace("\"127.0.0.100\"", "\"10.77.0.100\"");
    for (i, a) in [
        "127.0.1.1",
        "127.0.1.2",
        "127.0.2.1",
        "127.0.2.2",
        "127.0.3.1",
        "127.0.3.2",
        "127.0.4.1",
        "127.0.4.2",
        "127.0.4.3",
        "127.0.5.1",
        "127.0.5.2",
    ]
    .iter()
    .enumerate()
    {
        text = text.replace(&format!("\"{a}\""), &format!("\"10.77.0.{}\"", i + 1));
    }
    text
}

#[test]
fn isolated_mode_takes_addresses_of_its_subnet() {
    let t = parse(&isolated_text(), Path::new("t.toml")).expect("valid");
    assert_eq!(t.mode, Mode::Isolated);
    assert_eq!(t.subnet.to_string(), "10.77.0.0/24");
    assert_eq!(t.supervisor_address(), Some(Ipv4Addr::new(10, 77, 0, 254)));
    assert_eq!(t.client_address(), Some(Ipv4Addr::new(10, 77, 0, 253)));

    let text = isolated_text().replace("\"10.77.0.3\"", "\"10.78.0.3\"");
    one_error_at(
        &text,
        line_of(&text, "10.78.0.3"),
        "not a host address of site.subnet",
    );
    let text = isolated_text().replace("\"10.77.0.3\"", "\"10.77.0.254\"");
    one_error_at(
        &text,
        line_of(&text, "10.77.0.254"),
        "reserved in isolated mode",
    );
    let text = isolated_text().replace("\"10.77.0.100\"", "\"127.0.0.100\"");
    one_error_at(
        &text,
        line_of(&text, "127.0.0.100"),
        "the VIP: 127.0.0.100 is not a host",
    );
}

#[test]
fn the_subnet_must_be_a_network() {
    let text = edited("subnet = \"10.77.0.0/24\"", "subnet = \"10.77.0.1/24\"");
    one_error_at(&text, line_of(&text, "subnet = "), "is not an IPv4 network");
    let text = edited("subnet = \"10.77.0.0/24\"", "subnet = \"10.77.0.0/30\"");
    one_error_at(&text, line_of(&text, "subnet = "), "expected /8 to /24");
}

#[test]
fn a_loopback_topology_is_placed_in_the_subnet_for_isolated_mode() {
    let t = Topology::default_topology().isolated().expect("isolated");
    assert_eq!(t.mode, Mode::Isolated);
    assert_eq!(t.vip, Ipv4Addr::new(10, 77, 0, 100));
    let addrs: Vec<String> = t.nodes.iter().map(|n| n.address.to_string()).collect();
    assert_eq!(addrs[0], "10.77.0.1", "file order");
    assert_eq!(addrs[8], "10.77.0.9");
    // An isolated topology keeps its addresses.
    let again = t.isolated().expect("isolated");
    assert_eq!(again, t);
}

#[test]
fn subnet_arithmetic() {
    let n = Subnet::parse("10.0.0.0/24").expect("net");
    assert!(n.has_host(Ipv4Addr::new(10, 0, 0, 1)));
    assert!(!n.has_host(Ipv4Addr::new(10, 0, 0, 0)), "network address");
    assert!(
        !n.has_host(Ipv4Addr::new(10, 0, 0, 255)),
        "broadcast address"
    );
    assert!(!n.has_host(Ipv4Addr::new(10, 0, 1, 1)));
    assert_eq!(n.host(100), Some(Ipv4Addr::new(10, 0, 0, 100)));
    assert_eq!(n.host(255), None);
    assert_eq!(n.last_host(), Some(Ipv4Addr::new(10, 0, 0, 254)));
    assert_eq!(Subnet::parse("10.0.0.0/33"), None);
    assert_eq!(Subnet::parse("10.0.0.0"), None);
}

#[test]
fn advert_interval_range() {
    let text = edited("advert_interval = 5 ", "advert_interval = 5000");
    one_error_at(
        &text,
        line_of(&text, "advert_interval"),
        "1..=4095 centiseconds",
    );
    let text = edited("advert_interval = 5 ", "advert_interval = 0");
    one_error_at(
        &text,
        line_of(&text, "advert_interval"),
        "1..=4095 centiseconds",
    );
}

#[test]
fn vrid_zero() {
    let text = edited("vrid = 51", "vrid = 0");
    one_error_at(&text, line_of(&text, "vrid = 0"), "1..=255");
}

#[test]
fn zero_health_values() {
    let text = edited("rise = 2", "rise = 0");
    one_error_at(
        &text,
        line_of(&text, "rise = 0"),
        "health.rise must be greater than zero",
    );
}

#[test]
fn admin_port_clash() {
    let text = edited("app = 8082", "app = 9100");
    one_error_at(
        &text,
        line_of(&text, "app = 9100"),
        "same port as ports.admin",
    );
}

#[test]
fn port_zero() {
    let text = edited("web = 8081", "web = 0");
    one_error_at(
        &text,
        line_of(&text, "web = 0"),
        "ports.web must be greater than zero",
    );
}

#[test]
fn primary_must_be_a_db_node() {
    let text = edited("primary = \"db1\"", "primary = \"app1\"");
    one_error_at(&text, line_of(&text, "primary = "), "is not a db node");
    let text = edited("primary = \"db1\"", "primary = \"db9\"");
    one_error_at(
        &text,
        line_of(&text, "primary = "),
        "is not a node of this topology",
    );
}

#[test]
fn bad_node_name() {
    let text = edited("name = \"db3\"", "name = \"DB 3\"");
    one_error_at(&text, line_of(&text, "DB 3"), "is not valid");
}

#[test]
fn bad_sql_name() {
    let text = edited("database = \"foobar\"", "database = \"foo;drop\"");
    one_error_at(&text, line_of(&text, "foo;drop"), "not a plain SQL name");
}

#[test]
fn several_errors_are_all_reported() {
    let text = edited("priority = 150", "priority = 300")
        .replace("address = \"127.0.2.2\"", "address = \"127.0.2.1\"");
    assert_eq!(errors(&text).len(), 2);
}

#[test]
fn unreadable_file_says_so() {
    let e = Topology::load(Path::new("/nonexistent/hastack.toml")).expect_err("no file");
    assert!(
        e.to_string().contains("cannot read the topology file"),
        "{e}"
    );
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncé d", 7), (2, 4));
    assert_eq!(line_col("", 0), (1, 1));
}

#[test]
fn durability_must_be_one_of_the_two_modes() {
    let text = edited(
        "durability = \"semi-sync-or-refuse\"",
        "durability = \"sync\"",
    );
    let e = one_error_at(
        &text,
        line_of(&text, "durability = \"sync\""),
        "unknown db.durability \"sync\"",
    );
    assert_eq!(
        e.message,
        "unknown db.durability \"sync\", expected \"semi-sync-or-refuse\" or \"semi-sync-or-async\""
    );
    let t = parse(
        &edited(
            "durability = \"semi-sync-or-refuse\"",
            "durability = \"semi-sync-or-async\"",
        ),
        Path::new("t.toml"),
    )
    .expect("valid");
    assert_eq!(t.db.durability, Durability::SemiSyncOrAsync);
    assert_eq!(
        Topology::default_topology().db.durability,
        Durability::SemiSyncOrRefuse,
        "no acknowledged write is lost by default"
    );
}

#[test]
fn the_failover_lease_is_bounded() {
    let text = edited("failover_lease_ms = 600", "failover_lease_ms = 50");
    let e = one_error_at(
        &text,
        line_of(&text, "failover_lease_ms = 50"),
        "db.failover_lease_ms",
    );
    assert_eq!(
        e.message,
        "db.failover_lease_ms must be 200..=60000, found 50"
    );
}

#[test]
fn the_raft_port_is_not_the_database_port() {
    let text = edited("raft = 9102", "raft = 3306");
    let e = one_error_at(&text, line_of(&text, "raft = 3306"), "ports.raft");
    assert_eq!(e.message, "ports.raft is the same port as ports.db (3306)");
}

#[test]
fn passwords_are_generated_unless_named() {
    let t = Topology::default_topology();
    assert_eq!(
        (t.db.password.as_deref(), t.db.repl_password.as_deref()),
        (None, None)
    );
    let text = edited("# password = \"…\"", "password = \"\"");
    let e = one_error_at(&text, line_of(&text, "password = \"\""), "db.password");
    assert_eq!(e.message, "db.password is empty or has control characters");
}

#[test]
fn tls_defaults_are_internal_tls_and_https_on_8443() {
    let t = Topology::default_topology();
    assert_eq!(t.https_port, Some(8443));
    assert!(t.tls.internal);
    assert_eq!(t.tls.mode, TlsMode::Terminate);
    assert!(!t.tls.redirect_http && !t.tls.hsts && t.tls.certificates.is_empty());
    assert_eq!(
        t.site_https_url().as_deref(),
        Some("https://www.foobar.com:8443/")
    );
    let t = parse(
        &edited("https_port = 8443 ", "https_port = 0 "),
        Path::new("t.toml"),
    )
    .expect("no HTTPS is valid");
    assert_eq!(t.https_port, None);
}

#[test]
fn own_certificates_are_relative_to_the_file() {
    let text = format!(
        "{DEFAULT_TOPOLOGY}\n[[tls.certificate]]\ncert = \"certs/a.crt\"\nkey = \"/etc/k.key\"\n"
    );
    let t = parse(&text, Path::new("/srv/site/hastack.toml")).expect("valid");
    assert_eq!(
        t.tls.certificates,
        [CertFiles {
            cert: PathBuf::from("/srv/site/certs/a.crt"),
            key: PathBuf::from("/etc/k.key"),
        }]
    );
}

#[test]
fn https_port_equal_to_the_http_port() {
    let text = edited("https_port = 8443 ", "https_port = 8080 ");
    let e = one_error_at(
        &text,
        line_of(&text, "https_port = 8080"),
        "vip.https_port is the same port as vip.port (8080)",
    );
    assert_eq!(
        e.help.as_deref(),
        Some(
            "HTTP and HTTPS need ports of their own on the VIP (8080 and 8443), or 0 for no HTTPS"
        )
    );
}

#[test]
fn unknown_tls_mode() {
    let text = edited("mode = \"terminate\"", "mode = \"offload\"");
    one_error_at(
        &text,
        line_of(&text, "mode = \"offload\""),
        "unknown tls.mode \"offload\", expected \"terminate\" or \"passthrough\"",
    );
}

#[test]
fn redirect_without_https() {
    let text = edited("https_port = 8443 ", "https_port = 0 ")
        .replace("redirect_http = false", "redirect_http = true");
    one_error_at(
        &text,
        line_of(&text, "https_port = 0"),
        "tls.redirect_http and tls.hsts need HTTPS, and vip.https_port is 0",
    );
}

#[test]
fn web_https_port_equal_to_the_web_port() {
    let text = edited("web_https = 8444", "web_https = 8081");
    one_error_at(
        &text,
        line_of(&text, "web_https = 8081"),
        "ports.web_https is the same port as ports.web (8081)",
    );
}

#[test]
fn empty_certificate_path() {
    let text = format!("{DEFAULT_TOPOLOGY}\n[[tls.certificate]]\ncert = \"\"\nkey = \"k.key\"\n");
    one_error_at(
        &text,
        line_of(&text, "cert = \"\""),
        "tls.certificate #1 has an empty cert path",
    );
}

#[test]
fn lb_section_defaults_and_settings() {
    let t = parse(DEFAULT_TOPOLOGY, Path::new("t.toml")).expect("default");
    assert_eq!(t.lb.balance, Balance::RoundRobin);
    assert_eq!(t.lb.sticky_cookie, None);
    assert!(t.nodes.iter().all(|n| n.weight == 1));
    let text = edited("balance = \"roundrobin\"", "balance = \"hash\"")
        .replace("hash_key = \"source\"", "hash_key = \"cookie:session\"")
        .replace("sticky_cookie = \"\"", "sticky_cookie = \"SERVERID\"")
        .replace(
            "name = \"web2\"\nrole = \"web\"",
            "name = \"web2\"\nrole = \"web\"\nweight = 3",
        );
    let t = parse(&text, Path::new("t.toml")).expect("edited");
    assert_eq!(t.lb.balance, Balance::Hash);
    assert_eq!(t.lb.hash_key, HashOn::Cookie("session".into()));
    assert_eq!(t.lb.sticky_cookie.as_deref(), Some("SERVERID"));
    assert_eq!(t.node("web2").map(|n| n.weight), Some(3));
}

#[test]
fn unknown_balance_algorithm() {
    let text = edited("balance = \"roundrobin\"", "balance = \"fastest\"");
    let e = one_error_at(
        &text,
        line_of(&text, "balance = \"fastest\""),
        "lb.balance is \"fastest\"",
    );
    assert_eq!(
        e.help.as_deref(),
        Some("use \"roundrobin\", \"leastconn\", \"random\", \"first\" or \"hash\"")
    );
}

#[test]
fn bad_hash_key_and_weight() {
    let text = edited("hash_key = \"source\"", "hash_key = \"header:\"");
    one_error_at(
        &text,
        line_of(&text, "hash_key = \"header:\""),
        "lb.hash_key is \"header:\", which names nothing to hash",
    );
    let text = edited(
        "name = \"web1\"\nrole = \"web\"",
        "name = \"web1\"\nrole = \"web\"\nweight = 300",
    );
    one_error_at(
        &text,
        line_of(&text, "weight = 300"),
        "node `web1` has weight 300, expected 0..=256",
    );
    let text = edited(
        "name = \"db1\"\nrole = \"db\"",
        "name = \"db1\"\nrole = \"db\"\nweight = 2",
    );
    one_error_at(
        &text,
        line_of(&text, "weight = 2"),
        "node `db1` is a db node; only web and app nodes have a weight",
    );
}

#[test]
fn front_door_limits_are_bounded() {
    let text = edited("max_header_line = 8192", "max_header_line = 10");
    one_error_at(
        &text,
        line_of(&text, "max_header_line = 10"),
        "http.max_header_line must be 256..=65536 bytes, found 10",
    );
    let text = edited("max_headers = 100", "max_headers = 500");
    one_error_at(
        &text,
        line_of(&text, "max_headers = 500"),
        "http.max_headers must be 1..=128, found 500",
    );
    let text = edited("max_body = 8388608", "max_body = 2000000000");
    one_error_at(
        &text,
        line_of(&text, "max_body = 2000000000"),
        "http.max_body must be at most 1 GiB (1073741824), found 2000000000",
    );
    let text = edited("write_timeout_ms = 30000", "write_timeout_ms = 0");
    one_error_at(
        &text,
        line_of(&text, "write_timeout_ms = 0"),
        "http.write_timeout_ms must be greater than zero, found 0",
    );
}

#[test]
fn body_limits_come_from_the_http_section() {
    let text = edited("body_buffer = 67108864", "body_buffer = 1024");
    let t = parse(&text, Path::new("t.toml")).expect("valid");
    assert_eq!(t.http.body_buffer, 1024);
    assert_eq!(t.http.max_body, 8 << 20);
    assert_eq!(t.http.write_timeout, std::time::Duration::from_secs(30));
    assert_eq!(t.http.body_timeout, std::time::Duration::from_secs(30));
}

#[test]
fn front_proxies_are_addresses_or_networks() {
    let text = edited(
        "front_proxies = []",
        r#"front_proxies = ["10.0.0.0/8", "192.0.2.7", "fd00::/8"]"#,
    );
    let t = parse(&text, Path::new("t.toml")).expect("valid");
    let nets: Vec<String> = t.lb.front_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    let text = edited("front_proxies = []", r#"front_proxies = ["10.0.0.0/40"]"#);
    one_error_at(
        &text,
        line_of(&text, "front_proxies = ["),
        "lb.front_proxies has \"10.0.0.0/40\", which is not an address or network",
    );
}

#[test]
fn web_settings_are_read_and_wrong_ones_named_where_they_are() {
    let base = edited(
        "ttl_ms = 0                 #",
        "ttl_ms = 1500                 #",
    );
    let t = parse(&base, Path::new("t.toml")).expect("valid");
    assert_eq!(t.web.cache.ttl, Duration::from_millis(1500));
    assert!(t.web.compress);
    assert_eq!(t.web.compress_min_bytes, 1024);

    let at_end = |extra: &str| format!("{}\n{extra}", DEFAULT_TOPOLOGY);
    let t = parse(
        &at_end("[web.cache_control]\n\"/static/\" = \"public, max-age=3600\"\n\"*.html\" = \"no-cache\"\n[web.error_pages]\n502 = \"/50x.html\"\n"),
        Path::new("t.toml"),
    )
    .expect("valid");
    assert_eq!(t.web.cache_control.len(), 2);
    assert_eq!(t.web.error_pages, vec![(502, "/50x.html".to_string())]);

    let text = at_end("[web.cache_control]\n\"static\" = \"public\"\n");
    one_error_at(
        &text,
        line_of(&text, "\"static\" = \"public\""),
        "web.cache_control has the pattern \"static\", which is neither a path prefix nor an extension",
    );
    let text = at_end("[web.error_pages]\n302 = \"/moved.html\"\n");
    one_error_at(
        &text,
        line_of(&text, "302 = \"/moved.html\""),
        "web.error_pages has \"302\", which is not an error status",
    );
    let text = at_end("[web.error_pages]\n503 = \"50x.html\"\n");
    one_error_at(
        &text,
        line_of(&text, "503 = \"50x.html\""),
        "web.error_pages.503 is \"50x.html\", which is not a path of the site",
    );
    let text = edited("session_cookies = []", "session_cookies = [\"a=b\"]");
    one_error_at(
        &text,
        line_of(&text, "session_cookies = [\"a=b\"]"),
        "web.cache.session_cookies has \"a=b\", which is not a cookie name",
    );
    let text = edited("max_bytes = 67108864", "max_bytes = 0");
    one_error_at(
        &text,
        line_of(&text, "max_bytes = 0"),
        "web.cache.max_bytes must be greater than zero, found 0",
    );
}

/// The last line holding `needle` (the default topology's comments show `[app]`).
fn last_line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .rposition(|l| l.contains(needle))
        .map(|i| i + 1)
        .expect("needle in text")
}

/// The default topology with an `[app]` section of `body` appended.
fn with_app(body: &str) -> String {
    format!("{DEFAULT_TOPOLOGY}\n[app]\n{body}\n")
}

#[test]
fn an_app_section_is_read_with_its_defaults() {
    let t = parse(
        &with_app("command = [\"python3\", \"app.py\"]\ndir = \"myapp\"\nenv = { APP_MODE = \"production\" }"),
        Path::new("/srv/site/hastack.toml"),
    )
    .expect("valid");
    let app = t.app.expect("[app]");
    assert_eq!(app.command, ["python3", "app.py"]);
    assert_eq!(
        app.dir,
        Path::new("/srv/site/myapp"),
        "relative to the file"
    );
    assert_eq!(app.health, "/healthz");
    assert_eq!(app.release, None);
    assert_eq!(
        app.env,
        [("APP_MODE".to_string(), "production".to_string())]
    );
    assert_eq!(app.start_timeout, Duration::from_secs(30));
    assert!(app.command_at.line > 0 && app.dir_at.line > 0);
    assert!(
        Topology::default_topology().app.is_none(),
        "the built-in app by default"
    );
}

#[test]
fn a_bad_app_section_names_its_line() {
    let text = with_app("command = [\"python3\", \"app.py\"]");
    one_error_at(
        &text,
        last_line_of(&text, "command = [\"python3\""),
        "has a command but no dir",
    );
    let text = with_app("dir = \"myapp\"");
    let section = text.lines().position(|l| l == "[app]").expect("[app]") + 1;
    one_error_at(&text, section, "[app] has no command");
    let text = with_app("command = []\ndir = \"x\"");
    one_error_at(
        &text,
        last_line_of(&text, "command = []"),
        "app.command is empty",
    );
    let text = with_app("command = [\"a\"]\ndir = \"x\"\nhealth = \"healthz\"");
    one_error_at(&text, last_line_of(&text, "health = "), "not a URL path");
    let text = with_app("command = [\"a\"]\ndir = \"x\"\nenv = { PORT = \"80\" }");
    one_error_at(
        &text,
        last_line_of(&text, "env = "),
        "PORT, which hastack sets",
    );
    let text = with_app("command = [\"a\"]\ndir = \"x\"\nenv = { \"1X\" = \"y\" }");
    one_error_at(
        &text,
        last_line_of(&text, "env = "),
        "not an environment variable name",
    );
    let text = with_app("command = [\"a\"]\ndir = \"x\"\nstart_timeout_ms = 0");
    one_error_at(
        &text,
        last_line_of(&text, "start_timeout_ms"),
        "greater than zero",
    );
    let text = with_app(
        "command = [\"a\"]\ndir = \"x\"\n[app.drill]\nread = \"/r\"\nwrite = \"/w\"\nbody = \"{}\"",
    );
    one_error_at(
        &text,
        last_line_of(&text, "body = "),
        "app.drill.body has no {key}",
    );
    let text = with_app(
        "command = [\"a\"]\ndir = \"x\"\n[app.drill]\nread = \"r\"\nwrite = \"/w\"\nbody = \"{key}\"",
    );
    one_error_at(
        &text,
        last_line_of(&text, "read = \"r\""),
        "app.drill.read is \"r\", which is not a URL path",
    );
    let text = with_app("command = [\"a\"]\ndir = \"x\"\nport = 1");
    one_error_at(&text, last_line_of(&text, "port = 1"), "unknown field");
}

#[test]
fn the_host_check_finds_the_directory_and_the_programs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hastack.toml");
    std::fs::create_dir(dir.path().join("app")).expect("mkdir");
    std::fs::write(dir.path().join("app/run.sh"), "#!/bin/sh\n").expect("write");
    let load = |body: &str| {
        parse(&with_app(body), &file)
            .expect("valid")
            .app
            .expect("[app]")
    };
    assert_eq!(
        load("command = [\"sh\", \"run.sh\"]\ndir = \"app\"").check_on_this_host(),
        Ok(())
    );
    let missing = load("command = [\"sh\"]\ndir = \"nowhere\"").check_on_this_host();
    let e = &missing.expect_err("no such dir").0[0];
    assert!(
        e.message.contains("app.dir") && e.message.contains("cannot be read"),
        "{e}"
    );
    assert!(e.line > 0, "{e}");
    let e = &load("command = [\"no-such-program-hastack\"]\ndir = \"app\"")
        .check_on_this_host()
        .expect_err("not found")
        .0[0];
    assert!(e.message.contains("is not found in PATH"), "{e}");
    let e = &load("command = [\"./run.sh\"]\ndir = \"app\"")
        .check_on_this_host()
        .expect_err("not executable")
        .0[0];
    assert!(e.message.contains("is not executable"), "{e}");
    let e = &load("command = [\"sh\"]\ndir = \"app\"\nrelease = [\"./migrate\"]")
        .check_on_this_host()
        .expect_err("release not found")
        .0[0];
    assert!(
        e.message.contains("app.release: `./migrate` is not found"),
        "{e}"
    );
}
