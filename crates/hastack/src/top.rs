//! `hastack top`: the dashboard's live view in the terminal. Each second it asks the
//! supervisor for the stack's picture (the control socket's `status`), feeds it to the
//! same [`Tracker`] the dashboard uses, and redraws: who holds the VIP, the db primary,
//! every node with its health and requests and errors per second, the last events.
//! `hastack metrics` prints the Prometheus scrape configuration of the same nodes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use hastack_config::{Role, Topology};
use hastack_status::{Tracker, View};

use crate::ConfigArg;
use crate::control;

/// Runs `top` until Ctrl-C, or for `frames` pictures.
pub(crate) fn top(config: &ConfigArg, frames: Option<u64>) -> anyhow::Result<ExitCode> {
    let state_dir = control::target(config)?;
    let mut tracker = Tracker::new();
    let clear = frames.is_none();
    let mut n = 0;
    loop {
        let status = control::fetch_status(&state_dir)?;
        let frame = render(&tracker.observe(status));
        let mut out = std::io::stdout().lock();
        if clear {
            // Home and clear: the frame replaces the last one.
            let _ = out.write_all(b"\x1b[H\x1b[2J");
        }
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
        n += 1;
        if frames.is_some_and(|f| n >= f) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One frame of `top`.
pub(crate) fn render(v: &View) -> String {
    let s = &v.status;
    let mut out = String::new();
    let when = chrono::DateTime::from_timestamp_millis(s.at_unix_ms)
        .map(|d| d.format("%H:%M:%S UTC").to_string())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "hastack top — {}   {}   {when}\nVIP {} held by {}   db primary: {}\n",
        s.site,
        s.url,
        s.vip,
        v.vip_holder.as_deref().unwrap_or("NOBODY"),
        v.db_primary.as_deref().unwrap_or("NONE"),
    );
    let _ = writeln!(
        out,
        "{:<8} {:<4} {:<18} {:<8} {:>8} {:>7}  DETAIL",
        "NODE", "ROLE", "STATE", "HEALTH", "REQ/S", "ERR/S"
    );
    for n in &s.nodes {
        let (rps, eps) = v.rates.get(&n.name).map_or_else(
            || ("-".to_string(), "-".to_string()),
            |r| {
                (
                    format!("{:.1}", r.requests_per_s),
                    format!("{:.1}", r.errors_per_s),
                )
            },
        );
        let detail = n
            .health
            .as_ref()
            .map(hastack_status::Health::summary)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<8} {:<4} {:<18} {:<8} {:>8} {:>7}  {}",
            n.name,
            n.role,
            n.state,
            n.health_word(),
            rps,
            eps,
            detail
        );
    }
    if let Some(f) = s.last_failover() {
        let _ = writeln!(
            out,
            "\nlast db failover: {} → {} (epoch {}, seen after {} ms, {})",
            f.from, f.to, f.epoch, f.detected_after_ms, f.fencing
        );
    }
    if !v.events.is_empty() {
        out.push_str("\nevents (newest first):\n");
        for e in v.events.iter().take(8) {
            let at = chrono::DateTime::from_timestamp_millis(e.at_unix_ms)
                .map(|d| d.format("%H:%M:%S").to_string())
                .unwrap_or_default();
            let _ = writeln!(out, "  {at}  {}", e.what);
        }
    }
    out
}

/// `hastack metrics`: a Prometheus scrape configuration with every node's `/metrics`,
/// one job per tier, each target labelled with its node's name.
pub(crate) fn scrape_config(topo: &Topology) -> String {
    let mut out = format!(
        "# Prometheus scrape configuration for {} (hastack metrics). Paste under\n\
         # scrape_configs: of prometheus.yml, or use as it is.\nscrape_configs:\n",
        topo.site
    );
    for role in Role::ALL {
        let nodes: Vec<_> = topo.tier(role).collect();
        if nodes.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  - job_name: \"hastack-{role}\"\n    metrics_path: /metrics\n    scrape_interval: 15s\n    static_configs:"
        );
        for n in nodes {
            let _ = writeln!(
                out,
                "      - targets: [\"{}\"]\n        labels:\n          node: \"{}\"\n          site: \"{}\"",
                topo.admin_addr(n),
                n.name,
                topo.site
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrape_config_lists_every_node_once_under_its_tier() {
        let topo = Topology::default_topology();
        let text = scrape_config(&topo);
        for n in &topo.nodes {
            let target = format!("      - targets: [\"{}\"]\n", topo.admin_addr(n));
            assert_eq!(text.matches(&target).count(), 1, "{target}\n{text}");
            assert!(text.contains(&format!("          node: \"{}\"\n", n.name)));
        }
        for role in ["dns", "lb", "web", "app", "db"] {
            assert!(text.contains(&format!("  - job_name: \"hastack-{role}\"\n")));
        }
    }
}
