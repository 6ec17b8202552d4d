// hastack live dashboard: draws the stack, tier by tier, from the server-sent stream of
// View documents (crates/status/src/stack.rs). Every URL is relative to the page, so it
// works mounted at the root and under /dashboard/. Text from the data is only ever set
// with textContent.
"use strict";

(() => {
  const TIERS = ["dns", "lb", "web", "app", "db"];
  const SERVING = new Set(["dns", "lb", "web", "app"]); // roles with request rates
  const HISTORY = 60; // pictures kept per node for the sparklines
  const STALE_MS = 8000; // no picture for this long while connected: say so

  const history = new Map(); // node name -> recent requests/s
  let view = null; // the last applied View
  let receivedAt = 0; // Date.now() when it arrived
  let connected = false;
  let source = null;

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers ------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) {
      e.textContent = String(text);
      if (cls && /\bclip\b/.test(cls)) e.title = String(text); // clipped: full text on hover
    }
    return e;
  }

  function add(parent, ...children) {
    for (const c of children) if (c) parent.append(c);
    return parent;
  }

  // One row of a card: a label, then values (strings, or elements made with el()).
  function kv(label, ...values) {
    const row = el("div", "kv");
    if (label) row.append(el("span", "k", label));
    for (const v of values) if (v !== null && v !== undefined) row.append(v instanceof Node ? v : el("span", "v", v));
    return row;
  }

  // A value with a class (colour, monospace, clip).
  const val = (text, cls) => el("span", "v" + (cls ? " " + cls : ""), text);

  function svgEl(tag, attrs) {
    // The SVG namespace, taken from the page's own <svg> (no URL written here).
    const e = document.createElementNS($("links").namespaceURI, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  const pad = (n) => String(n).padStart(2, "0");

  function clock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function dateTime(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ms)}`;
  }

  function num(x) {
    if (typeof x !== "number" || !isFinite(x)) return "–";
    if (x === 0) return "0";
    if (Math.abs(x) < 10) return x.toFixed(1);
    return Math.round(x).toLocaleString("en-US");
  }

  const count = (x) => (typeof x === "number" ? x.toLocaleString("en-US") : "–");

  // ---- what a node's data says ------------------------------------------------------

  // The test-visible health word: ok, failing, or down when /healthz did not answer.
  function healthWord(n) {
    if (n.healthy === true) return "ok";
    if (n.healthy === false) return "failing";
    return "down";
  }

  // What the badge says and its colour class.
  function badge(n) {
    const w = healthWord(n);
    if (w === "ok") return ["ok", "ok"];
    if (w === "failing") return ["failing", "failing"];
    if (n.state === "starting") return ["pending", "starting"];
    if (n.state === "running") return ["pending", "down"];
    return ["down", "down"];
  }

  // The node's /healthz document, when it answered one of its own role.
  function doc(n) {
    return n.health && n.health.role === n.role ? n.health : null;
  }

  function remember(v) {
    const seen = new Set();
    for (const n of v.status.nodes) {
      seen.add(n.name);
      const r = v.rates ? v.rates[n.name] : null;
      const h = history.get(n.name) || [];
      h.push(r ? r.requests_per_s : null);
      if (h.length > HISTORY) h.shift();
      history.set(n.name, h);
    }
    for (const name of [...history.keys()]) if (!seen.has(name)) history.delete(name);
  }

  // ---- cards ------------------------------------------------------------------------

  function sparkline(name) {
    const h = (history.get(name) || []).map((x) => (typeof x === "number" ? x : 0));
    const w = 84, ht = 20;
    const s = svgEl("svg", { class: "spark", viewBox: `0 0 ${w} ${ht}`, width: w, height: ht });
    s.append(svgEl("line", { class: "base", x1: 0, y1: ht - 0.5, x2: w, y2: ht - 0.5 }));
    if (h.length < 2) return s;
    const max = Math.max(...h, 1);
    const step = w / (HISTORY - 1);
    const x0 = w - (h.length - 1) * step;
    const pts = h.map((y, i) => `${(x0 + i * step).toFixed(1)},${(ht - 1 - (y / max) * (ht - 3)).toFixed(1)}`);
    s.append(svgEl("polygon", { class: "area", points: `${x0},${ht} ${pts.join(" ")} ${w},${ht}` }));
    s.append(svgEl("polyline", { points: pts.join(" ") }));
    const tip = svgEl("title");
    tip.textContent = `${name}: requests/s over the last ${h.length} pictures (max ${num(max)})`;
    s.append(tip);
    return s;
  }

  function rates(n) {
    const r = view.rates?.[n.name];
    const row = el("div", "rates");
    if (!r) return add(row, el("span", "muted", "no rate yet"));
    const pct = r.requests_per_s > 0 ? (100 * r.errors_per_s) / r.requests_per_s : 0;
    const errCls = pct >= 5 ? "bad-text" : r.errors_per_s > 0 ? "warn-text" : "muted";
    const req = el("span", "req");
    add(req, el("b", null, num(r.requests_per_s)), el("span", "unit", n.role === "dns" ? " q/s" : " req/s"));
    const what = n.role === "dns" ? "refused/s" : "err/s";
    const err = el("span", "err " + errCls, `${num(r.errors_per_s)} ${what} · ${pct.toFixed(pct > 0 && pct < 1 ? 2 : 1)}%`);
    err.title = n.role === "dns" ? "refused queries" : "server errors (5xx)";
    return add(row, req, err, sparkline(n.name));
  }

  // Upstreams (an lb's web nodes, a web node's app nodes) as dots.
  function upstreams(list, label) {
    const row = el("div", "kv ups");
    add(row, el("span", "k", label));
    if (!list.length) add(row, el("span", "muted", "none checked"));
    for (const u of list) {
      const state = u.state && u.state !== "ready" ? u.state : "";
      const item = el("span", "up-item " + (!u.healthy ? "down" : state ? "maint" : "up"));
      add(item, el("span", "up-dot"), el("span", "up-name", u.name + (state ? ` (${state})` : "")));
      item.title = `${u.name} ${u.addr}: ${u.healthy ? "up" : "DOWN"}, ${u.state}, weight ${u.weight}, ${u.in_flight} in flight`;
      row.append(item);
    }
    return row;
  }

  const yesNo = (ok, text) => val(text, ok ? "ok-text" : "bad-text");
  const pill = (text, cls) => el("span", "pill " + cls, text);

  function roleBody(n, h, body) {
    switch (n.role) {
      case "dns":
        add(body, kv("zone", val(h.zone, "strong"), val("serial " + h.serial, "aside")),
          kv("queries", val(`${count(h.answered)} answered`), val(`${count(h.refused)} refused`, h.refused ? "warn-text" : "muted"),
            h.rate_limited ? val(`${count(h.rate_limited)} limited`, "warn-text") : null));
        break;
      case "lb":
        body.append(kv("VRRP", pill(h.vrrp, "vrrp-" + h.vrrp), view.vip_holder === n.name ? val("holds the VIP", "accent-text") : null));
        if (h.fault) body.append(kv("fault", val(h.fault, "bad-text clip")));
        body.append(upstreams(h.upstreams || [], "web"));
        break;
      case "web":
        body.append(kv("static", val(`${count(h.static_files)} files`)));
        body.append(upstreams(h.upstreams || [], "app"));
        break;
      case "app": {
        body.append(kv("db " + h.db, yesNo(h.can_read, h.can_read ? "reads ok" : "reads NO"),
          yesNo(h.can_write, h.can_write ? "writes ok" : "writes NO")));
        const tls = h.db_tls ? pill("TLS", "tls") : null;
        if (tls) tls.title = "database sessions encrypted: " + h.db_tls;
        body.append(kv("primary", val(h.primary || "none", h.primary ? "" : "bad-text"), tls));
        if (h.problem) body.append(kv("problem", val(h.problem, "warn-text clip")));
        break;
      }
      case "db":
        dbBody(h, body);
        break;
    }
  }

  function dbBody(h, body) {
    const o = h.observed || h; // the observation's keys are flattened into the document
    const known = h.db_role === "primary" || h.db_role === "replica";
    const r = o.replication;
    // A primary that does not write says why after a colon: `not writable: lease lost`.
    const colon = h.db_role.indexOf(":");
    const role = pill(colon > 0 ? h.db_role.slice(0, colon) : h.db_role, "db-" + (known ? h.db_role : "other"));
    role.title = h.db_role;
    const first = kv(null, role);
    body.append(first);
    if (colon > 0) body.append(kv("why", val(h.db_role.slice(colon + 1).trim(), "warn-text clip")));
    if (h.db_role === "primary") {
      if (typeof h.lease_left_ms === "number") {
        first.append(val(`lease ${h.lease_left_ms} ms`, h.lease_left_ms < 200 ? "warn-text" : "muted"));
      }
      const on = o.semi_sync === "ON";
      body.append(kv("semi-sync", val(o.semi_sync || "OFF", on ? "ok-text strong" : "warn-text strong"),
        val(`${o.semi_sync_clients || 0} acking`, on && o.semi_sync_clients ? "" : "warn-text")));
      if (h.writes) body.append(kv("writes", val(h.writes, "clip")));
    }
    if (r) {
      const lag = r.seconds_behind_master;
      const lagOk = typeof lag === "number" && lag <= 5;
      first.append(val("lag " + (typeof lag === "number" ? `${lag} s` : "unknown"), lagOk ? "ok-text strong" : "warn-text strong"));
      body.append(kv("io / sql", yesNo(r.io_running === "Yes", "io " + r.io_running), yesNo(r.sql_running === "Yes", "sql " + r.sql_running)));
      if (r.last_error) body.append(kv("error", val(r.last_error, "bad-text clip")));
    }
    if (o.gtid_current_pos) body.append(kv("gtid", val(o.gtid_current_pos, "mono")));
  }

  function card(n) {
    const [bcls, btext] = badge(n);
    const c = el("article", `card role-${n.role} h-${bcls}`);
    c.id = "node-" + n.name;
    c.dataset.role = n.role;
    c.dataset.state = n.state;
    c.dataset.health = healthWord(n);
    if (view.vip_holder === n.name) c.classList.add("holder");
    if (view.db_primary === n.name) c.classList.add("primary");

    const head = el("div", "card-head");
    add(head, el("span", "name", n.name), el("span", "badge " + bcls, btext));
    const sub = el("div", "card-sub");
    const state = el("span", n.state === "running" || n.state === "unknown" ? "state" : "state odd", n.state);
    state.title = "process: " + n.state;
    add(sub, el("span", "addr", n.address), state);
    if (n.pid) sub.append(el("span", "pid", "pid " + n.pid));
    add(c, head, sub);

    const body = el("div", "card-body");
    const h = doc(n);
    if (h) roleBody(n, h, body);
    else body.append(el("div", "muted nohealth", n.healthy === null || n.healthy === undefined ? "/healthz did not answer" : "no health document"));
    c.append(body);
    if (SERVING.has(n.role) && h) c.append(rates(n));
    return c;
  }

  // A card even for a node whose document this script does not understand.
  function safeCard(n) {
    try {
      return card(n);
    } catch (e) {
      console.warn(`dashboard: node ${n.name} not drawn in full`, e);
      const c = el("article", "card h-down");
      c.id = "node-" + n.name;
      Object.assign(c.dataset, { role: n.role, state: n.state, health: healthWord(n) });
      return add(c, el("div", "name", n.name), el("div", "muted", `${n.state}, health not understood`));
    }
  }

  // ---- the page ---------------------------------------------------------------------

  function render() {
    const st = view.status;
    document.title = `${st.site} · hastack`;
    $("site").textContent = st.site;
    const url = $("site-url");
    url.textContent = st.url || "";
    if (/^https?:/i.test(st.url || "")) url.href = st.url;
    else url.removeAttribute("href");
    $("https-url").textContent = st.https_url || "";
    $("mode").textContent = st.mode || "–";
    $("db-engine").textContent = st.db_engine || "–";
    $("picture-at").textContent = st.at_unix_ms ? dateTime(st.at_unix_ms) : "–";
    const ok = st.nodes.filter((n) => n.healthy === true).length;
    const nodesOk = $("nodes-ok");
    nodesOk.textContent = `${ok}/${st.nodes.length} ok`;
    nodesOk.className = ok === st.nodes.length ? "ok-text" : "warn-text";

    for (const role of TIERS) {
      const tier = $("tier-" + role);
      const nodes = st.nodes.filter((n) => n.role === role);
      const cards = tier.querySelector(".cards");
      cards.replaceChildren(...nodes.map(safeCard));
      cards.classList.toggle("many", nodes.length > 4);
      const up = nodes.filter((n) => n.healthy === true).length;
      const count = tier.querySelector(".tier-count");
      count.textContent = nodes.length ? `${up}/${nodes.length} ok` : "none";
      count.className = "tier-count " + (up === nodes.length ? "ok-text" : up ? "warn-text" : "bad-text");
      tier.hidden = nodes.length === 0;
    }

    $("vip-addr").textContent = st.vip || "–";
    $("vip-holder").textContent = view.vip_holder || "";
    $("vip-none").hidden = !!view.vip_holder;
    $("vip").classList.toggle("none", !view.vip_holder);

    renderDb(st);
    renderEvents();
    document.body.dataset.updated = String(st.at_unix_ms);
    requestAnimationFrame(drawLinks);
  }

  function renderDb(st) {
    const dbs = st.nodes.filter((n) => n.role === "db");
    $("db-primary").textContent = view.db_primary || "";
    $("db-primary-none").hidden = !!view.db_primary || dbs.length === 0;
    let cluster = null;
    let failover = null;
    for (const n of dbs) {
      const h = doc(n);
      if (!h || !h.cluster) continue;
      if (!cluster || h.cluster.epoch > cluster.epoch) cluster = h.cluster;
      const f = h.cluster.last_failover;
      if (f && (!failover || f.epoch > failover.epoch)) failover = f;
    }
    $("db-epoch").textContent = cluster
      ? `epoch ${cluster.epoch}` + (cluster.consensus_leader ? ` · leader ${cluster.consensus_leader}` : "")
      : "";

    const rows = [];
    for (const n of dbs) {
      if (n.name === view.db_primary) continue;
      const h = doc(n);
      const r = h && (h.observed || h).replication;
      const tr = el("tr");
      const lag = r ? r.seconds_behind_master : null;
      add(tr, el("td", "name", n.name),
        el("td", "clip " + (h ? "" : n.state === "starting" ? "muted" : "bad-text"), h ? h.db_role : `${n.state}, no answer`),
        el("td", typeof lag === "number" ? (lag > 5 ? "warn-text" : "ok-text") : "muted", typeof lag === "number" ? `${lag} s` : "–"),
        el("td", r ? (r.io_running === "Yes" && r.sql_running === "Yes" ? "ok-text" : "bad-text") : "muted", r ? `${r.io_running} / ${r.sql_running}` : "–"),
        el("td", "mono", h ? (h.observed || h).gtid_current_pos || "–" : "–"));
      rows.push(tr);
    }
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "muted", "no replicas");
      td.colSpan = 5;
      rows.push(add(tr, td));
    }
    $("replicas").replaceChildren(...rows);

    const fo = $("failover");
    if (!failover) {
      fo.replaceChildren(el("span", "muted", "none reported"));
      return;
    }
    const line = el("div", "fo-line");
    add(line, el("b", null, failover.from), el("span", "fo-arrow", "→"), el("b", null, failover.to),
      el("span", "muted", `epoch ${failover.epoch}`));
    fo.replaceChildren(line,
      kv("at", dateTime(failover.at_unix_ms)),
      kv("detected after", `${failover.detected_after_ms} ms`),
      kv("fencing", failover.fencing),
      kv("gtid", val(failover.gtid || "–", "mono")));
  }

  function renderEvents() {
    const list = view.events || [];
    const BAD = /killed|exited|stopped|failing|no lb|not |refus/i;
    const GOOD = /healthy|is running|holds|took|primary/i;
    $("events").replaceChildren(...list.map((e) => {
      const li = el("li", BAD.test(e.what) ? "ev-bad" : GOOD.test(e.what) ? "ev-good" : "");
      add(li, el("time", "ev-time", clock(e.at_unix_ms)), el("span", "ev-what", e.what));
      li.title = dateTime(e.at_unix_ms);
      return li;
    }));
    $("events-none").hidden = list.length > 0;
  }

  // ---- lines between the tiers (an SVG under the cards) -----------------------------

  function drawLinks() {
    const topo = $("topology");
    const svg = $("links");
    if (!view) return;
    const box = topo.getBoundingClientRect();
    svg.setAttribute("width", topo.scrollWidth);
    svg.setAttribute("height", topo.scrollHeight);
    const lines = [];
    const at = (id) => {
      const e = $(id);
      if (!e || e.offsetParent === null) return null;
      const r = e.getBoundingClientRect();
      return { x: r.left - box.left + r.width / 2, top: r.top - box.top, bottom: r.bottom - box.top };
    };
    const link = (fromId, toId, cls) => {
      const a = at(fromId), b = at(toId);
      if (!a || !b) return;
      const y1 = a.bottom, y2 = b.top, ym = (y1 + y2) / 2;
      lines.push(svgEl("path", { class: "link " + cls, d: `M${a.x},${y1} C${a.x},${ym} ${b.x},${ym} ${b.x},${y2}` }));
    };
    const st = view.status;
    for (const n of st.nodes) {
      const h = doc(n);
      if (n.role === "dns") link("node-" + n.name, "vip", h ? "ok" : "bad");
      if (n.role === "lb") link("vip", "node-" + n.name, view.vip_holder === n.name ? "ok strong" : h ? "idle" : "bad");
      if (!h) continue;
      if (n.role === "lb" || n.role === "web") {
        const active = n.role === "web" || view.vip_holder === n.name;
        for (const u of h.upstreams || []) {
          link("node-" + n.name, "node-" + u.name, !u.healthy ? "bad" : active ? "ok" : "idle");
        }
      }
      if (n.role === "app") {
        if (h.primary) link("node-" + n.name, "node-" + h.primary, h.can_write ? "ok" : "bad");
        for (const r of h.replicas || []) {
          if (r.name !== h.primary) link("node-" + n.name, "node-" + r.name, r.status === "ok" ? "read" : "bad");
        }
      }
    }
    svg.replaceChildren(...lines);
  }

  // ---- connection -------------------------------------------------------------------

  function setConnected(yes, text) {
    connected = yes;
    document.body.dataset.connected = yes ? "yes" : "no";
    $("banner").hidden = yes || !view;
    $("conn").className = "conn " + (yes ? "live" : "lost");
    $("conn-text").textContent = text || (yes ? "live" : "disconnected, retrying");
  }

  function apply(v) {
    if (!v || !v.status || !Array.isArray(v.status.nodes)) return;
    if (!view || view.status.at_unix_ms !== v.status.at_unix_ms) remember(v);
    view = v;
    receivedAt = Date.now();
    render();
  }

  function connect() {
    source = new EventSource("events");
    source.onopen = () => setConnected(true);
    source.onmessage = (m) => {
      let v;
      try {
        v = JSON.parse(m.data);
      } catch (e) {
        console.warn("dashboard: a message that is not JSON", e);
        return;
      }
      apply(v);
      setConnected(true);
    };
    source.onerror = () => {
      setConnected(false);
      // The browser reconnects by itself unless the answer was not an event stream.
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(connect, 3000);
      }
    };
  }

  function watchStaleness() {
    if (!connected || !view) return;
    const age = Date.now() - receivedAt;
    if (age > STALE_MS) {
      $("conn").className = "conn stale";
      $("conn-text").textContent = `no picture for ${Math.round(age / 1000)} s`;
    }
  }

  function start() {
    setConnected(false, "connecting…");
    $("banner").hidden = true;
    // `#once`: draw view.json and stay still, with no stream left open (screenshots by
    // a headless browser, whose virtual clock stops while a request is pending).
    const once = location.hash === "#once";
    // A first picture at once, in case the stream is slow to start.
    fetch("view.json", { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .then((v) => {
        if (!view && v) apply(v);
        if (once) setConnected(!!v, v ? "snapshot" : "no picture yet");
      })
      .catch(() => once && setConnected(false, "no picture"));
    if (once) return;
    connect();
    setInterval(watchStaleness, 1000);
    window.addEventListener("resize", () => requestAnimationFrame(drawLinks));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
