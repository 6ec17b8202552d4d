//! Runtime control of the lb tier on a real stack: `hastack lb drain|maint|ready|weight`
//! and `hastack reload` (and SIGHUP), under a steady loop of requests that must all
//! succeed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Options, Stack, eventually, http};

/// Requests to the VIP, one after another on new connections, until stopped: counts
/// the answers, the failures (anything but 200), and remembers the web node of each.
struct Loop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    served: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(stack: &Stack) -> Loop {
        let vip = stack.vip();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = {
            let (stop, ok, failed, served) =
                (stop.clone(), ok.clone(), failed.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http(vip, "GET", "/static/style.css", &[], "") {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let web = r
                                .header("x-served-by")
                                .and_then(|p| p.split(',').nth(1))
                                .unwrap_or("")
                                .trim()
                                .to_string();
                            served.lock().expect("lock").push(web);
                        }
                        Ok(r) => failed
                            .lock()
                            .expect("lock")
                            .push(format!("status {}: {}", r.status, r.body)),
                        Err(e) => failed.lock().expect("lock").push(e.to_string()),
                    }
                }
            })
        };
        Loop {
            stop,
            ok,
            failed,
            served,
            thread: Some(thread),
        }
    }

    /// The web nodes of the answers from now on, once `n` more have come.
    fn next_served(&self, n: usize) -> Vec<String> {
        let from = self.served.lock().expect("lock").len();
        eventually("more answers", Duration::from_secs(20), || {
            let s = self.served.lock().expect("lock");
            (s.len() >= from + n).then(|| s[from..from + n].to_vec())
        })
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("request loop");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.lock().expect("lock").clone(),
        )
    }
}

fn count(served: &[String], web: &str) -> usize {
    served.iter().filter(|s| *s == web).count()
}

#[test]
fn operators_drain_weigh_and_reload_the_lb_without_a_failed_request() {
    let stack = Stack::up(Options { sqlite: true });
    let requests = Loop::start(&stack);
    let both = requests.next_served(20);
    assert!(
        count(&both, "web1") > 0 && count(&both, "web2") > 0,
        "round robin uses both web nodes: {both:?}"
    );

    // drain: no new clients for web1 (this loop has no sticky cookie).
    let out = stack.ctl_ok(&["lb", "drain", "web1"]);
    assert!(out.contains("web1: ready -> drain"), "{out}");
    let show = stack.ctl_ok(&["lb", "show"]);
    assert!(
        show.lines()
            .any(|l| l.contains("web1") && l.contains("drain")),
        "lb show lists web1 as drained: {show}"
    );
    let drained = requests.next_served(20);
    assert_eq!(
        count(&drained, "web1"),
        0,
        "drained web1 gets nothing: {drained:?}"
    );

    // maint, then ready: web1 comes back.
    stack.ctl_ok(&["lb", "maint", "web1"]);
    let maint = requests.next_served(20);
    assert_eq!(count(&maint, "web1"), 0, "web1 in maintenance: {maint:?}");
    stack.ctl_ok(&["lb", "ready", "web1"]);
    let back = requests.next_served(20);
    assert!(count(&back, "web1") > 0, "web1 is back: {back:?}");

    // weight at run time: web2 weight 3 takes three in four.
    let out = stack.ctl_ok(&["lb", "weight", "web2", "3"]);
    assert!(out.contains("web2: weight 1 -> 3"), "{out}");
    let weighted = requests.next_served(40);
    // (one answer may have been picked before the change)
    let n = count(&weighted, "web2");
    assert!(
        (29..=31).contains(&n),
        "smooth round robin 3:1 gives web2 30 of 40, found {n}: {weighted:?}"
    );

    // A reload applies the file: web1 weight 4 (web2 back to the file's 1), a rate
    // limit; nothing that needs a restart.
    let text = std::fs::read_to_string(&stack.config).expect("topology");
    let text = text.replacen(
        "name = \"web1\"\nrole = \"web\"",
        "name = \"web1\"\nrole = \"web\"\nweight = 4",
        1,
    );
    assert!(
        text.contains("weight = 4"),
        "the topology names web1 so: {text}"
    );
    std::fs::write(
        &stack.config,
        format!("{text}\n[lb]\nrate_limit = 100000\n"),
    )
    .expect("write");
    let out = stack.ctl_ok(&["reload"]);
    for change in [
        "web1: weight 1 -> 4",
        "web2: weight 3 -> 1",
        "rate_limit/rate_burst: 0/0 -> 100000/0",
    ] {
        assert!(out.contains(change), "reload reports `{change}`: {out}");
    }
    assert!(!out.contains("not applied"), "{out}");
    let reloaded = requests.next_served(50);
    let n = count(&reloaded, "web1");
    assert!(
        (39..=41).contains(&n),
        "4:1 after the reload, found {n} of 50: {reloaded:?}"
    );

    // SIGHUP does the same: a changed weight in the file is applied.
    let text = std::fs::read_to_string(&stack.config).expect("topology");
    std::fs::write(&stack.config, text.replacen("weight = 4", "weight = 1", 1)).expect("write");
    for (name, pid) in stack.pids() {
        if name.starts_with("lb") {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .expect("SIGHUP");
        }
    }
    eventually("the SIGHUP reload", Duration::from_secs(10), || {
        let show = stack.ctl_ok(&["lb", "show", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&show).ok()?;
        v.as_object()?
            .values()
            .all(|a| {
                a["servers"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|s| s["weight"] == 1))
            })
            .then_some(())
    });

    // A broken file changes nothing: the client says where it is broken, and an lb
    // sent SIGHUP keeps its configuration and says why.
    let good = std::fs::read_to_string(&stack.config).expect("topology");
    let lbs: Vec<(String, u32)> = stack
        .pids()
        .into_iter()
        .filter(|(n, _)| n.starts_with("lb"))
        .collect();
    std::fs::write(&stack.config, "[site\n").expect("write");
    let out = stack.ctl(&["reload"]);
    assert!(!out.status.success(), "a broken file fails the reload");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hastack.toml:1:"),
        "the error names the place: {err}"
    );
    for (_, pid) in &lbs {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }
    for (name, _) in &lbs {
        let log = stack.state_dir().join("logs").join(format!("{name}.log"));
        eventually(
            "the refused reload in the log",
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&log)
                    .ok()?
                    .contains("reload refused")
                    .then_some(())
            },
        );
    }
    std::fs::write(&stack.config, good).expect("write");
    let after = requests.next_served(20);
    assert!(
        count(&after, "web1") > 0 && count(&after, "web2") > 0,
        "both web nodes still serve after the refused reload: {after:?}"
    );

    let (ok, failed) = requests.finish();
    assert!(ok > 200, "the loop ran: {ok} answers");
    assert!(
        failed.is_empty(),
        "no request failed across drain, maint, weight and reloads: {failed:?}"
    );
}
