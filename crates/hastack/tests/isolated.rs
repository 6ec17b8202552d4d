//! Isolated mode: every node in a network namespace of its own on a bridge, firewalled
//! per tier. The VIP is a real address on the master lb's interface and moves with
//! VRRP (IP protocol 112); the client namespace reaches the site only through it; a
//! crashed supervisor's namespaces are removed by `hastack down`.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Stack, eventually, http, in_netns, namespaces, netns_addresses};

/// Which lb namespaces hold the VIP now.
fn vip_holders(stack: &Stack) -> Vec<&'static str> {
    ["lb1", "lb2"]
        .into_iter()
        .filter(|n| netns_addresses(&stack.netns(n)).contains(&stack.addr(100)))
        .collect()
}

/// A GET / through the VIP from the client namespace: the lb that served it.
fn served_by_from_client(stack: &Stack) -> Option<String> {
    let vip = stack.vip();
    in_netns(&stack.netns("client"), move || {
        let r = http(vip, "GET", "/", &[], "").ok()?;
        (r.status == 200).then(|| r.header("x-served-by").unwrap_or("").to_string())
    })
}

/// Whether a TCP connection from the client namespace to `addr` gets through.
fn client_reaches(stack: &Stack, addr: SocketAddr) -> bool {
    in_netns(&stack.netns("client"), move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
}

#[test]
fn the_vip_moves_between_namespaces_and_the_client_reaches_only_the_vip() {
    let mut stack = Stack::up_isolated(|t| t);
    let st = stack.status();
    assert_eq!(st["mode"], "isolated", "{st}");
    assert_eq!(st["url"], format!("http://{}/", stack.vip()), "{st}");
    for n in ["lb1", "lb2", "web1", "app1", "db1", "client"] {
        let ns = stack.netns(n);
        assert!(namespaces().contains(&ns), "{ns} exists");
    }
    // Each node's address is in its own namespace only.
    assert!(netns_addresses(&stack.netns("web1")).contains(&stack.addr(21)));
    assert!(!netns_addresses(&stack.netns("web2")).contains(&stack.addr(21)));

    // The VIP is on lb1 (priority 150) only, and the client gets the site through it.
    eventually("the VIP on lb1 only", Duration::from_secs(10), || {
        (vip_holders(&stack) == ["lb1"]).then_some(())
    });
    let by = served_by_from_client(&stack).expect("the site from the client namespace");
    assert!(by.starts_with("lb1"), "{by}");
    // HTTPS too, from the client, verified against the internal CA for the site name.
    let ca = stack.ca().display().to_string();
    let resolve = format!("www.foobar.com:{}:{}", stack.https_port, stack.addr(100));
    let url = format!("https://www.foobar.com:{}/", stack.https_port);
    let out = stack.ctl(&[
        "exec",
        "client",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 2",
        "HTTPS from the client namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The firewalls: only the arrows of the picture are open.
    let a = |node: &str, port: u16| SocketAddr::from((stack.addr(common::host_of(node)), port));
    let (web, app, db) = (stack.web_port, app_port(&stack), 3306);
    assert!(!client_reaches(&stack, a("web1", web)), "client → web");
    assert!(!client_reaches(&stack, a("app1", app)), "client → app");
    assert!(!client_reaches(&stack, a("db1", db)), "client → db");
    assert!(
        !client_reaches(&stack, a("web1", stack.admin_port)),
        "client → admin port"
    );
    // The admin ports answer the supervisor (this process, in the root namespace).
    assert!(stack.health("db1").is_some());

    // lb1 dies: lb2 takes the VIP over; the client is served by lb2.
    stack.ctl_ok(&["kill", "lb1"]);
    eventually("the VIP on lb2 only", Duration::from_secs(5), || {
        (vip_holders(&stack) == ["lb2"]).then_some(())
    });
    let by = eventually("lb2 to serve the client", Duration::from_secs(5), || {
        served_by_from_client(&stack).filter(|b| b.starts_with("lb2"))
    });
    assert!(by.contains("web"), "{by}");
    // lb1 returns and preempts (priority 150 > 100): the VIP is on lb1 only again.
    stack.ctl_ok(&["start", "lb1"]);
    eventually("the VIP back on lb1 only", Duration::from_secs(10), || {
        (vip_holders(&stack) == ["lb1"]).then_some(())
    });

    // A graceful stop of the master hands the VIP over without failing a request: it
    // says priority 0 but serves until lb2 has taken over.
    let client_ns = stack.netns("client");
    let vip = stack.vip();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let traffic = std::thread::spawn(move || {
        in_netns(&client_ns, move || {
            let (mut ok, mut failed) = (0, 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match http(vip, "GET", "/healthz", &[], "") {
                    Ok(r) if r.status == 200 => ok += 1,
                    _ => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    stack.ctl_ok(&["stop", "lb1"]);
    eventually("the VIP on lb2 only", Duration::from_secs(5), || {
        (vip_holders(&stack) == ["lb2"]).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.join().expect("traffic");
    assert!(ok > 10, "only {ok} requests");
    // A graceful hand-over refuses no connection: lb1 serves until lb2 holds the VIP.
    // What no ARP-based VIP can save is an exchange caught at the moment the client's
    // ARP entry moves to lb2 (its next packets reach lb2, which resets them); with a
    // request every 20 ms that is at most one, where a kill fails several.
    assert!(
        failed <= 1,
        "{failed} requests failed during a graceful hand-over"
    );
    stack.ctl_ok(&["start", "lb1"]);
    eventually("the VIP back on lb1 only", Duration::from_secs(10), || {
        (vip_holders(&stack) == ["lb1"]).then_some(())
    });

    // The supervisor crashes: its nodes go with it, the namespaces stay behind until
    // `hastack down` removes them.
    let ours: Vec<String> = ["lb1", "db1", "client"]
        .into_iter()
        .map(|n| stack.netns(n))
        .collect();
    let child = stack.child.as_mut().expect("child");
    child.kill().expect("kill the supervisor");
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(500));
    assert!(ours.iter().all(|ns| namespaces().contains(ns)));
    let out = stack.ctl_ok(&["down"]);
    assert!(out.contains("removed"), "{out}");
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| ours.contains(n))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn app_port(stack: &Stack) -> u16 {
    let text = std::fs::read_to_string(&stack.config).expect("topology");
    text.lines()
        .find_map(|l| l.strip_prefix("app = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ports.app")
}

/// `hastack drill all` on an isolated stack: the traffic comes from the client
/// namespace, the lb's link is cut as well as its process killed and stopped, and the
/// db drill reads the servers from a db node's namespace (the only place the firewall
/// and the accounts let SQL in from).
#[test]
fn every_drill_passes_from_the_client_namespace() {
    let stack = Stack::up_isolated(|t| t);
    eventually("the VIP on lb1 only", Duration::from_secs(10), || {
        (vip_holders(&stack) == ["lb1"]).then_some(())
    });
    let out = stack.ctl(&["drill", "all", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "drill output is not JSON ({e}): {stdout}{}\n--- up:\n{}",
            String::from_utf8_lossy(&out.stderr),
            stack.output()
        )
    });
    let show = serde_json::to_string_pretty(&doc).unwrap_or_default();
    assert!(out.status.success() && doc["passed"] == true, "{show}");
    let rows = doc["drills"].as_array().cloned().unwrap_or_default();
    let faults: Vec<&str> = rows.iter().filter_map(|r| r["fault"].as_str()).collect();
    assert_eq!(
        faults,
        [
            "cut lb1's link",
            "kill lb1",
            "stop lb1",
            "kill web1",
            "kill app1",
            "kill db1"
        ],
        "{show}"
    );
    for r in &rows {
        assert_eq!(r["writes_lost"], 0, "{r}");
        assert!(r["writes_acknowledged"].as_u64().unwrap_or(0) >= 10, "{r}");
        assert!(r["outage_s"].is_number(), "{r}");
    }
    // The VIP on one interface after each lb fault, lb1's again.
    for r in &rows[..3] {
        assert_eq!(
            r["details"]["vip_holders_after"],
            serde_json::json!(["lb1"]),
            "{r}"
        );
        assert_eq!(r["details"]["served_after"], "lb2", "{r}");
    }
    let db = &rows[5]["details"];
    assert_eq!(db["max_writable_at_once"], 1, "{show}");
    assert_eq!(db["duplicate_writes"], 0, "{show}");
    assert_eq!(db["converged"], true, "{show}");
    assert_eq!(vip_holders(&stack), ["lb1"]);
}
