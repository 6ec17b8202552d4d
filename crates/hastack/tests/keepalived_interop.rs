//! keepalived (Debian's, 2.2.x) as one lb's VRRP speaker and hastack as the other, on
//! the same VRID in an isolated stack: each accepts the other's adverts (neither takes
//! the VIP while the other, higher, advertises), the higher priority wins whichever it
//! is, killing either hands the VIP to the other, and preemption brings it back.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, eventually, netns_addresses};

/// A keepalived running in a namespace; killed (SIGKILL) when dropped.
struct Keepalived {
    child: Child,
}

impl Keepalived {
    fn start(stack: &Stack, ns: &str, priority: u8, dir: &Path) -> Keepalived {
        let conf = dir.join(format!("keepalived-{priority}.conf"));
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id hastack_interop\n  vrrp_version 3\n}}\n\
                 vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
                 priority {priority}\n  advert_int 0.1\n  virtual_ipaddress {{\n    {}/24 dev eth0\n  }}\n}}\n",
                stack.addr(100)
            ),
        )
        .expect("write keepalived.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "keepalived"])
            .args(["--dont-fork", "--log-console", "--no-syslog", "--vrrp"])
            .arg(format!("--use-file={}", conf.display()))
            .arg(format!("--pid={}", dir.join("keepalived.pid").display()))
            .arg(format!("--vrrp_pid={}", dir.join("vrrp.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keepalived (apt-get install keepalived; scripts/test.sh does)");
        Keepalived { child }
    }

    /// SIGTERM: keepalived says priority 0 and drops the VIP.
    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn holders(stack: &Stack, lb1: &str, lb2: &str) -> Vec<&'static str> {
    let vip = stack.addr(100);
    let mut h = Vec::new();
    if netns_addresses(lb1).contains(&vip) {
        h.push("lb1");
    }
    if netns_addresses(lb2).contains(&vip) {
        h.push("lb2");
    }
    h
}

/// Asserts that the VIP stays on `want` only for `d`.
fn stays(stack: &Stack, lb1: &str, lb2: &str, want: &[&str], d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        assert_eq!(
            holders(stack, lb1, lb2),
            want,
            "after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keepalived_and_hastack_share_a_virtual_router() {
    common::program(
        "keepalived",
        "keepalived",
        "this test runs it as the other lb's VRRP speaker",
    );
    let stack = Stack::up_isolated(|t| t);
    let (lb1, lb2) = (stack.netns("lb1"), stack.netns("lb2"));
    let dir = tempfile::tempdir().expect("tempdir");

    // keepalived replaces hastack's lb2 (priority 100) in lb2's namespace.
    stack.ctl_ok(&["stop", "lb2"]);
    eventually("the VIP on lb1 only", Duration::from_secs(5), || {
        (holders(&stack, &lb1, &lb2) == ["lb1"]).then_some(())
    });
    let ka = Keepalived::start(&stack, &lb2, 100, dir.path());
    // keepalived accepts hastack's adverts: it stays backup (its Master_Down_Interval
    // at 0.1 s adverts is about 0.36 s; two seconds is five of them).
    stays(&stack, &lb1, &lb2, &["lb1"], Duration::from_secs(2));

    // hastack's master dies: keepalived takes the VIP.
    stack.ctl_ok(&["kill", "lb1"]);
    eventually("keepalived to take the VIP", Duration::from_secs(5), || {
        (holders(&stack, &lb1, &lb2) == ["lb2"]).then_some(())
    });
    // hastack comes back with the higher priority and preempts; keepalived accepts its
    // adverts and drops the VIP.
    stack.ctl_ok(&["start", "lb1"]);
    eventually(
        "hastack to preempt keepalived",
        Duration::from_secs(10),
        || (holders(&stack, &lb1, &lb2) == ["lb1"]).then_some(()),
    );
    stays(&stack, &lb1, &lb2, &["lb1"], Duration::from_secs(1));
    ka.stop();

    // Now keepalived has the higher priority: hastack accepts its adverts and yields.
    let ka = Keepalived::start(&stack, &lb2, 200, dir.path());
    eventually(
        "keepalived (200) to preempt hastack (150)",
        Duration::from_secs(10),
        || (holders(&stack, &lb1, &lb2) == ["lb2"]).then_some(()),
    );
    stays(&stack, &lb1, &lb2, &["lb2"], Duration::from_secs(1));
    assert_eq!(
        stack.health("lb1").expect("lb1 health")["vrrp"],
        "backup",
        "hastack follows keepalived"
    );
    // keepalived stops (priority 0): hastack takes over at once.
    ka.stop();
    eventually(
        "hastack to take the VIP back",
        Duration::from_secs(5),
        || (holders(&stack, &lb1, &lb2) == ["lb1"]).then_some(()),
    );
}
