//! Isolated mode's network: every node in a network namespace of its own, all joined by
//! a bridge in a namespace of hastack's own, firewalled per tier with nftables.
//!
//! ```text
//!   root namespace (the supervisor, tests)      hub namespace "hs-ID"
//!   hsID ── veth ────────────────────────────── up0 ─┐
//!                                                     br0 ── v0 ── eth0  "hs-ID-lb1"
//!                                                      │ ─── v1 ── eth0  "hs-ID-lb2"
//!                                                      │ …
//!                                                      └──── vc ── eth0  "hs-ID-client"
//! ```
//!
//! The bridge is never connected to a real interface. The supervisor has the subnet's
//! last host address on its veth, so it (and `hastack status`, the tests) reach the
//! nodes' admin ports and the VIP; the `client` namespace has the host before it and
//! stands for the outside world. Each node namespace's firewall opens only the arrows of
//! the picture: client → VIP on the site's port, lb → web, web → app, app → db (and db ↔
//! db for replication and the consensus), VRRP between the lb nodes, and the admin port
//! from the supervisor.
//!
//! Every name derives from the state directory (`ID` is a hash of its path), so two
//! stacks never collide, and whatever a crashed supervisor left behind is found and
//! removed by the next `up` or `down`. Removing a namespace removes its interfaces and
//! its nftables table; removing the hub removes the supervisor's veth too.
//!
//! The plumbing runs iproute2 (`ip`) and `nft`, the tools an operator would use to look
//! at it; the lb node itself manages the VIP with netlink.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hastack_config::{Role, Topology};

/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The namespaces and links of one isolated stack.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    id: String,
}

/// Why the isolated network could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetError {
    /// Not root, or a tool is missing.
    #[error("{0}")]
    Prerequisite(String),
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it said.
        stderr: String,
    },
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    let (prog, rest) = args.split_first().unwrap_or((&"true", &[]));
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let failed = |stderr: String| NetError::Command {
        cmd: args.join(" "),
        stderr,
    };
    let mut child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

fn have(prog: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(prog).exists())
}

/// Checks what isolated mode needs: root, `ip` and `nft`.
pub(crate) fn check_prerequisites() -> Result<(), NetError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NetError::Prerequisite(
            "isolated mode creates network namespaces and firewalls: run it as root (sudo hastack up --isolated)".into(),
        ));
    }
    let missing: Vec<&str> = [("ip", "iproute2"), ("nft", "nftables")]
        .into_iter()
        .filter(|(p, _)| !have(p))
        .map(|(_, pkg)| pkg)
        .collect();
    if !missing.is_empty() {
        return Err(NetError::Prerequisite(format!(
            "isolated mode needs {}: apt-get install -y {}",
            missing.join(" and "),
            missing.join(" ")
        )));
    }
    Ok(())
}

impl Network {
    /// The network of the stack whose state lives in `state_dir` (absolute).
    pub(crate) fn of(state_dir: &Path) -> Network {
        // FNV-1a: stable across builds and platforms, which std's hasher is not.
        let mut h: u32 = 0x811c_9dc5;
        for b in state_dir.as_os_str().as_encoded_bytes() {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        Network {
            id: format!("{:06x}", h & 0xff_ffff),
        }
    }

    /// The hub namespace (the bridge).
    fn hub(&self) -> String {
        format!("hs-{}", self.id)
    }

    /// The namespace of node `name` (or `client`).
    pub(crate) fn namespace(&self, name: &str) -> String {
        format!("hs-{}-{name}", self.id)
    }

    /// The supervisor's veth in the root namespace.
    fn root_link(&self) -> String {
        format!("hs{}", self.id)
    }

    /// `/run/netns/NAME` of node `name` (or `client`).
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.namespace(name))
    }

    /// Whether any namespace of this stack exists.
    pub(crate) fn exists(&self) -> bool {
        !self.leftovers().is_empty()
    }

    /// This stack's namespaces that exist now.
    fn leftovers(&self) -> Vec<String> {
        let prefix = self.hub();
        std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| *n == prefix || n.starts_with(&format!("{prefix}-")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes every namespace of this stack (with their links and firewalls); returns
    /// how many there were.
    pub(crate) fn destroy(&self) -> usize {
        let found = self.leftovers();
        for ns in &found {
            if let Err(e) = run(&["ip", "netns", "del", ns], None) {
                println!("hastack: removing network namespace {ns}: {e}");
            }
        }
        // Normally gone with the hub; a half-made one may be left in the root namespace.
        let _ = run(&["ip", "link", "del", &self.root_link()], None);
        found.len()
    }

    /// Creates the namespaces, the bridge, the links, the addresses and the firewalls
    /// for `topo` (in isolated mode), after removing what a crashed run left.
    pub(crate) fn create(&self, topo: &Topology) -> Result<(), NetError> {
        let stale = self.destroy();
        if stale > 0 {
            println!("hastack: removed {stale} network namespaces left by an earlier run");
        }
        let r = self.build(topo);
        if r.is_err() {
            self.destroy();
        }
        r
    }

    fn build(&self, topo: &Topology) -> Result<(), NetError> {
        let prefix = topo.subnet.prefix.to_string();
        let (sup, client) = match (topo.supervisor_address(), topo.client_address()) {
            (Some(s), Some(c)) => (s, c),
            _ => {
                return Err(NetError::Prerequisite(format!(
                    "site.subnet {} has no room for the supervisor and the client",
                    topo.subnet
                )));
            }
        };
        let hub = self.hub();
        run(&["ip", "netns", "add", &hub], None)?;
        run(&["ip", "-n", &hub, "link", "set", "lo", "up"], None)?;
        run(
            &["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"],
            None,
        )?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"], None)?;

        // The supervisor's side.
        let root = self.root_link();
        run(
            &[
                "ip", "link", "add", &root, "type", "veth", "peer", "name", "up0", "netns", &hub,
            ],
            None,
        )?;
        run(
            &[
                "ip", "-n", &hub, "link", "set", "up0", "master", "br0", "up",
            ],
            None,
        )?;
        run(
            &[
                "ip",
                "addr",
                "add",
                &format!("{sup}/{prefix}"),
                "dev",
                &root,
            ],
            None,
        )?;
        run(&["ip", "link", "set", &root, "up"], None)?;

        let mut members: Vec<(String, Ipv4Addr)> = topo
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.address))
            .collect();
        members.push(("client".to_string(), client));
        for (i, (name, addr)) in members.iter().enumerate() {
            let ns = self.namespace(name);
            let port = format!("v{i}");
            run(&["ip", "netns", "add", &ns], None)?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"], None)?;
            run(
                &[
                    "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
                None,
            )?;
            run(
                &[
                    "ip", "-n", &hub, "link", "set", &port, "master", "br0", "up",
                ],
                None,
            )?;
            run(
                &[
                    "ip",
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/{prefix}"),
                    "dev",
                    "eth0",
                ],
                None,
            )?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"], None)?;
            if let Some(node) = topo.node(name) {
                if node.role == Role::Lb {
                    // A backup may bind the VIP before the address arrives.
                    run(
                        &[
                            "ip",
                            "netns",
                            "exec",
                            &ns,
                            "sysctl",
                            "-qw",
                            "net.ipv4.ip_nonlocal_bind=1",
                        ],
                        None,
                    )?;
                }
                run(
                    &["ip", "netns", "exec", &ns, "nft", "-f", "-"],
                    Some(&firewall(topo, node.role, sup)),
                )?;
            }
        }
        Ok(())
    }
}

/// The nftables ruleset of a node of `role`: only the arrows of the picture are open.
pub(crate) fn firewall(topo: &Topology, role: Role, supervisor: Ipv4Addr) -> String {
    let set = |r: Role| -> String {
        let addrs: Vec<String> = topo.tier(r).map(|n| n.address.to_string()).collect();
        format!("{{ {} }}", addrs.join(", "))
    };
    let mut rules = String::new();
    let mut rule = |r: String| {
        let _ = writeln!(rules, "    {r}");
    };
    rule("iif lo accept".into());
    rule("ct state established,related accept".into());
    rule(format!(
        "ip saddr {supervisor} tcp dport {} accept comment \"admin (/healthz, /metrics) from the supervisor\"",
        topo.ports.admin
    ));
    match role {
        Role::Lb => {
            let ports = match topo.https_port {
                Some(https) => format!("{{ {}, {https} }}", topo.http_port),
                None => topo.http_port.to_string(),
            };
            rule(format!(
                "ip daddr {} tcp dport {ports} accept comment \"clients to the VIP\"",
                topo.vip
            ));
            rule(format!(
                "ip protocol vrrp ip saddr {} accept comment \"VRRP between the lb nodes\"",
                set(Role::Lb)
            ));
        }
        Role::Web => rule(format!(
            "ip saddr {} tcp dport {{ {}, {} }} accept comment \"lb to web (and passed-through HTTPS)\"",
            set(Role::Lb),
            topo.ports.web,
            topo.ports.web_https
        )),
        Role::App => rule(format!(
            "ip saddr {} tcp dport {} accept comment \"web to app\"",
            set(Role::Web),
            topo.ports.app
        )),
        Role::Db => {
            rule(format!(
                "ip saddr {} tcp dport {} accept comment \"app to db\"",
                set(Role::App),
                topo.ports.db
            ));
            rule(format!(
                "ip saddr {} tcp dport {{ {}, {} }} accept comment \"replication and the consensus between db nodes\"",
                set(Role::Db),
                topo.ports.db,
                topo.ports.raft
            ));
        }
        Role::Dns => {
            rule(format!(
                "udp dport {} accept comment \"DNS from anyone (answers only for the zone, rate-limited)\"",
                topo.ports.dns
            ));
            rule(format!(
                "tcp dport {} accept comment \"DNS over TCP\"",
                topo.ports.dns
            ));
        }
    }
    format!(
        "table inet hastack {{\n  chain input {{\n    type filter hook input priority filter; policy drop;\n{rules}  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_short_enough_for_interfaces() {
        let a = Network::of(Path::new("/srv/site/.hastack"));
        let b = Network::of(Path::new("/srv/site/.hastack"));
        let c = Network::of(Path::new("/srv/other/.hastack"));
        assert_eq!(a.namespace("lb1"), b.namespace("lb1"));
        assert_ne!(a.namespace("lb1"), c.namespace("lb1"));
        // IFNAMSIZ: 15 characters.
        assert!(a.root_link().len() <= 15, "{}", a.root_link());
    }

    #[test]
    fn each_tier_opens_only_the_arrow_into_it() {
        let t = Topology::default_topology().isolated().expect("isolated");
        let sup = t.supervisor_address().expect("sup");
        let db = firewall(&t, Role::Db, sup);
        assert!(db.contains("policy drop"), "{db}");
        assert!(
            db.contains("ip saddr { 10.77.0.5, 10.77.0.6 } tcp dport 3306 accept"),
            "{db}"
        );
        assert!(
            !db.contains("10.77.0.3,"),
            "no web node reaches the db: {db}"
        );
        let web = firewall(&t, Role::Web, sup);
        assert!(
            web.contains("ip saddr { 10.77.0.1, 10.77.0.2 } tcp dport { 8081, 8444 } accept"),
            "{web}"
        );
        let lb = firewall(&t, Role::Lb, sup);
        assert!(
            lb.contains("ip daddr 10.77.0.100 tcp dport { 8080, 8443 } accept"),
            "{lb}"
        );
        assert!(lb.contains("ip protocol vrrp"), "{lb}");
        for fw in [db, web, lb] {
            assert!(fw.contains("ip saddr 10.77.0.254 tcp dport 9100 accept"));
        }
    }
}
