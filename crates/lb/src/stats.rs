//! The lb's HTML stats page (`/stats` on its admin port), HAProxy's stats page for
//! this stack: the frontend's answers by status class and retries, then each web node
//! with its health, operator state, weight, requests in flight, totals and recent
//! response time. Plain HTML that refreshes itself every 2 s: no script, nothing
//! fetched from elsewhere.

use std::fmt::Write as _;

use hastack_proxy::{AdminState, Proxy};

/// Renders the page for node `name` of site `site`.
pub(crate) fn page(name: &str, site: &str, proxy: &Proxy, rate_limited: u64) -> String {
    let (classes, retries) = proxy.totals();
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>{name} · hastack stats</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         th,td{{border:1px solid #bbb;padding:.25em .6em;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}\
         th{{background:#e8e8f0}} .up{{background:#c8f0c8}} .down{{background:#f4c0c0}}\
         .drain{{background:#f8e8a8}} .maint{{background:#c8d8f0}}\
         </style></head><body>\n<h1>{name} <small>· {site}</small></h1>\n",
        name = esc(name),
        site = esc(site),
    );
    h.push_str("<h2>Frontend</h2>\n<table><tr>");
    for (class, _) in &classes {
        let _ = write!(h, "<th>{class}</th>");
    }
    h.push_str("<th>retries</th><th>429 (rate)</th></tr>\n<tr>");
    for (_, n) in &classes {
        let _ = write!(h, "<td>{n}</td>");
    }
    let _ = writeln!(h, "<td>{retries}</td><td>{rate_limited}</td></tr></table>");

    let pool = proxy.pool();
    let _ = write!(
        h,
        "<h2>Backend <code>{}</code></h2>\n<table id=\"servers\"><tr><th>server</th>\
         <th>address</th><th>status</th><th>state</th><th>weight</th><th>in flight</th>\
         <th>requests</th><th>failures</th><th>response time</th></tr>\n",
        esc(pool.name())
    );
    for s in pool.servers() {
        let status = if s.is_healthy() { "UP" } else { "DOWN" };
        let state = s.admin_state();
        let class = match state {
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
            AdminState::Ready if s.is_healthy() => "up",
            AdminState::Ready => "down",
        };
        let (requests, failures) = s.totals();
        let _ = writeln!(
            h,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{status}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{requests}</td><td>{failures}</td><td>{:.1} ms</td></tr>",
            esc(&s.name),
            s.addr,
            state.as_str(),
            s.weight(),
            s.active(),
            s.recent_response_time().as_secs_f64() * 1000.0,
        );
    }
    h.push_str("</table>\n<p>Refreshes every 2 s. Prometheus: <a href=\"/metrics\">/metrics</a>.</p>\n</body></html>\n");
    h
}

/// `s` safe inside HTML text and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_break_out_of_the_page() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
