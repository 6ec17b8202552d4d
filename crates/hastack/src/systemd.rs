//! `hastack systemd NAME`: the systemd unit that runs one node on its own server
//! (mode `hosts`), printed for the operator to install.

use std::path::Path;

use hastack_config::{Node, Role, Topology};

/// The unit file of `node`, running `exe` with the topology at `config` and state in
/// `state_dir` (all absolute).
pub(crate) fn unit(
    topo: &Topology,
    node: &Node,
    exe: &Path,
    config: &Path,
    state_dir: &Path,
) -> String {
    let (what, caps, stop) = match node.role {
        Role::Lb => (
            "load balancer (VRRP, the VIP)",
            // Raw sockets for VRRP and gratuitous ARP, netlink for the VIP.
            "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE\n",
            20,
        ),
        Role::Web => (
            "web server",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
            20,
        ),
        Role::App => ("application server", "", 20),
        Role::Dns => (
            "authoritative DNS server",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
            20,
        ),
        // The node stops mariadbd cleanly; InnoDB may take a while to flush.
        Role::Db => ("database (supervises mariadbd)", "", 80),
    };
    format!(
        "# {name}: {what} of {site}.\n\
         # Install: hastack systemd {name} --config {config} > /etc/systemd/system/hastack-{name}.service\n\
         #          systemctl daemon-reload && systemctl enable --now hastack-{name}\n\
         [Unit]\n\
         Description=hastack {name} ({role}) of {site}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exe} node {name} --config {config} --state-dir {state}\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec={stop}\n\
         LimitNOFILE=65536\n\
         {caps}\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = node.name,
        role = node.role,
        site = topo.site,
        exe = exe.display(),
        config = config.display(),
        state = state_dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_node_with_the_file_and_the_state_directory() {
        let t = Topology::default_topology();
        let lb = t.node("lb1").expect("lb1");
        let u = unit(
            &t,
            lb,
            Path::new("/usr/local/bin/hastack"),
            Path::new("/etc/hastack/hastack.toml"),
            Path::new("/var/lib/hastack"),
        );
        assert!(
            u.contains("ExecStart=/usr/local/bin/hastack node lb1 --config /etc/hastack/hastack.toml --state-dir /var/lib/hastack"),
            "{u}"
        );
        assert!(u.contains("CAP_NET_RAW"), "VRRP needs raw sockets: {u}");
        let db = unit(
            &t,
            t.node("db1").expect("db1"),
            Path::new("/usr/local/bin/hastack"),
            Path::new("/etc/hastack/hastack.toml"),
            Path::new("/var/lib/hastack"),
        );
        assert!(db.contains("TimeoutStopSec=80"), "{db}");
        assert!(!db.contains("CAP_NET_RAW"), "{db}");
    }
}
