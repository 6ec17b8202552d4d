//! What an operator sees of a whole stack (MariaDB tier and two dns nodes included),
//! checked with the incumbents' own tools:
//!
//! - every node's `/metrics` goes through Prometheus' OpenMetrics parser (the official
//!   Python client's, Debian `python3-prometheus-client`), and has the process figures;
//! - `hastack metrics` lists every node's `/metrics`; `hastack top` shows the stack;
//! - the live dashboard in headless Chromium sees a node killed through the control
//!   socket, on the same page, without a reload (screenshot kept in the target dir);
//!   every lb's admin port serves it too;
//! - the dns nodes answer `dig` with the VIP, authoritatively, refuse `ANY` and names
//!   outside the zone, and the name still resolves once one dns node is killed.
//!
//! One stack for all of it: a MariaDB stack takes a while to start.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Options, Stack, dns_nodes, eventually, http};

const NODES: [&str; 11] = [
    "dns1", "dns2", "lb1", "lb2", "web1", "web2", "app1", "app2", "db1", "db2", "db3",
];

#[test]
fn an_operator_sees_the_whole_stack_with_the_incumbents_tools() {
    for (tool, package) in [
        ("/usr/bin/dig", "bind9-dnsutils"),
        ("/usr/bin/chromium", "chromium"),
    ] {
        assert!(
            Path::new(tool).exists(),
            "this test needs {tool}: apt-get install {package} (scripts/test.sh does)"
        );
    }
    let stack = Stack::up_edited(Options { sqlite: false }, |t| dns_nodes(&t));
    eventually("the site through the VIP", Duration::from_secs(20), || {
        stack.get("/").ok().filter(|r| r.status == 200)
    });
    // Some traffic, so the tiers' request counters move.
    for _ in 0..20 {
        let _ = stack.get("/");
    }

    every_metrics_page_parses_as_openmetrics(&stack);
    the_scrape_config_and_top_show_every_node(&stack);
    the_dashboard_sees_a_node_die(&stack);
    the_dns_nodes_answer_for_the_zone_even_with_one_dead(&stack);
}

fn every_metrics_page_parses_as_openmetrics(stack: &Stack) {
    // The db nodes' figures appear once the agent's first look is in.
    eventually("every db node's role", Duration::from_secs(60), || {
        ["db1", "db2", "db3"]
            .iter()
            .all(|n| {
                stack
                    .health(n)
                    .is_some_and(|h| h["db_role"] == "primary" || h["db_role"] == "replica")
            })
            .then_some(())
    });
    let parser = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
names = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        names[s.name] = s.value
print(json.dumps(names))
"#;
    for node in NODES {
        let r = http(stack.admin(node), "GET", "/metrics", &[], "").expect("GET /metrics");
        assert_eq!(r.status, 200, "{node}: {}", r.body);
        let out = run_with_stdin(
            Command::new("/usr/bin/python3").args(["-c", parser]),
            &r.body,
        );
        assert!(
            out.status.success(),
            "{node}'s /metrics is not OpenMetrics: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            r.body
        );
        let samples: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("parser output");
        // CPU time is counted in clock ticks: a quiet node may not have used one yet.
        assert!(
            samples["process_cpu_seconds_total"]
                .as_f64()
                .is_some_and(|v| v >= 0.0),
            "{node}: no process_cpu_seconds_total in {samples}"
        );
        for process in ["process_resident_memory_bytes", "process_open_fds"] {
            assert!(
                samples[process].as_f64().is_some_and(|v| v > 0.0),
                "{node}: {process} missing or zero: {samples}"
            );
        }
        let tier = match node {
            n if n.starts_with("dns") => "hastack_dns_queries_answered_total",
            n if n.starts_with("lb") => "hastack_vrrp_state",
            n if n.starts_with("db") => "hastack_db_up",
            n if n.starts_with("app") => "hastack_app_posts_created_total",
            _ => "hastack_proxy_retries_total",
        };
        assert!(
            samples.get(tier).is_some(),
            "{node}: no {tier} in {samples}"
        );
    }
    let db1 = http(stack.admin("db1"), "GET", "/metrics", &[], "").expect("db1");
    assert!(db1.body.contains("hastack_db_up 1"), "{}", db1.body);
}

fn the_scrape_config_and_top_show_every_node(stack: &Stack) {
    let config = stack.ctl_ok(&["metrics"]);
    for node in NODES {
        assert!(
            config.contains(&format!("targets: [\"{}\"]", stack.admin(node))),
            "{node} missing from the scrape config:\n{config}"
        );
    }
    let top = stack.ctl_ok(&["top", "--frames", "2"]);
    for node in NODES {
        assert!(
            top.lines()
                .any(|l| l.starts_with(node) && l.contains(" ok ")),
            "{node} not shown healthy by top:\n{top}"
        );
    }
    assert!(top.contains("VIP "), "{top}");
    assert!(top.contains("held by lb1"), "{top}");
}

fn the_dashboard_sees_a_node_die(stack: &Stack) {
    let status = stack.status();
    let url = status["dashboard"]
        .as_str()
        .expect("up serves a dashboard and says where")
        .to_string();
    // Every lb's admin port serves it too, with the same picture.
    for lb in ["lb1", "lb2"] {
        let page = http(stack.admin(lb), "GET", "/dashboard/", &[], "").expect("page");
        assert_eq!(page.status, 200, "{lb}: {}", page.body);
        assert!(page.body.contains("dashboard.js"), "{}", page.body);
        let view = eventually("the lb's dashboard view", Duration::from_secs(10), || {
            http(stack.admin(lb), "GET", "/dashboard/view.json", &[], "")
                .ok()
                .filter(|r| r.status == 200)
        });
        let view: serde_json::Value = serde_json::from_str(&view.body).expect("view json");
        assert_eq!(view["status"]["nodes"].as_array().map(Vec::len), Some(11));
        assert_eq!(view["vip_holder"], "lb1", "{view}");
    }

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&url)
        .arg(&shot)
        .arg("web2")
        .arg("--")
        .arg(common::BIN)
        .args(["kill", "web2", "--config"])
        .arg(&stack.config)
        // The stack's state directory is relative to its working directory.
        .current_dir(stack.dir.path())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "dashboard.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(seen["before"]["health"], "ok", "{seen}");
    assert_eq!(seen["before"]["cards"], 11, "{seen}");
    assert_eq!(seen["before"]["vip_holder"], "lb1", "{seen}");
    assert_eq!(seen["after"]["health"], "down", "{seen}");
    assert_eq!(seen["after"]["state"], "killed", "{seen}");
    assert_ne!(
        seen["after"]["updated"], seen["first_update"],
        "the page was not updated by the stream: {seen}"
    );
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
    println!("dashboard screenshot: {}", shot.display());
}

fn dig(stack: &Stack, server: &str, args: &[&str]) -> String {
    let addr = stack.addr(common::host_of(server)).to_string();
    let out = Command::new("/usr/bin/dig")
        .arg(format!("@{addr}"))
        .args(["-p", &stack.dns_port.to_string(), "+time=1", "+tries=2"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn the_dns_nodes_answer_for_the_zone_even_with_one_dead(stack: &Stack) {
    let vip = stack.addr(100).to_string();
    for server in ["dns1", "dns2"] {
        assert_eq!(
            dig(stack, server, &["+short", "www.foobar.com", "A"]).trim(),
            vip,
            "{server}"
        );
        let full = dig(stack, server, &["www.foobar.com", "A"]);
        assert!(full.contains("status: NOERROR"), "{full}");
        assert!(full.contains("flags: qr aa"), "not authoritative: {full}");
        let soa = dig(stack, server, &["+short", "foobar.com", "SOA"]);
        assert!(
            soa.starts_with("dns1.foobar.com. hostmaster.foobar.com. "),
            "{soa}"
        );
        let ns = dig(stack, server, &["+short", "foobar.com", "NS"]);
        let mut ns: Vec<&str> = ns.lines().collect();
        ns.sort_unstable();
        assert_eq!(ns, ["dns1.foobar.com.", "dns2.foobar.com."]);
        let any = dig(stack, server, &["+notcp", "foobar.com", "ANY"]);
        assert!(any.contains("status: REFUSED"), "ANY answered: {any}");
        let elsewhere = dig(stack, server, &["example.org", "A"]);
        assert!(
            elsewhere.contains("status: REFUSED"),
            "answered outside its zone: {elsewhere}"
        );
    }
    stack.ctl_ok(&["kill", "dns1"]);
    let dead = dig(stack, "dns1", &["+short", "www.foobar.com", "A"]);
    assert!(
        dead.contains("no servers could be reached"),
        "a killed dns node answered: {dead}"
    );
    assert_eq!(
        dig(stack, "dns2", &["+short", "www.foobar.com", "A"]).trim(),
        vip,
        "the name must resolve with one dns node dead"
    );
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}
