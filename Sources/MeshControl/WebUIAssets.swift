/// The web page's static files (WebUI.swift), served by meshd itself: nothing comes from the
/// network, and none of them holds data (the script fetches it, with the admin token, from
/// `/ui/api/...`). The script builds every element from data with `textContent` and
/// `createElementNS`, never markup from data; the CSP forbids inline script and style.
enum WebUIAssets {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mesh</title>
<link rel="icon" href="/ui/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/ui/app.css">
<script src="/ui/app.js" defer></script>
</head>
<body>
<header>
  <h1>Mesh</h1>
  <p id="status" role="status" aria-live="polite">Enter the admin token to see the mesh.</p>
  <button id="signout" type="button" hidden>Forget the token</button>
</header>
<main>
<section id="login" aria-labelledby="login-h">
  <h2 id="login-h">Admin token</h2>
  <p id="login-error" class="error" role="alert" hidden></p>
  <form id="login-form">
    <label for="token">meshd's admin token (the file <code>STATE-DIR/admin-token</code>)</label>
    <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required>
    <button type="submit">Show the mesh</button>
  </form>
  <p class="hint">The token stays in this browser tab only (session storage).</p>
</section>
<div id="content" hidden>
<section aria-labelledby="graph-h">
  <h2 id="graph-h">Service graph</h2>
  <p class="hint">Requests between services and versions over the last few seconds, as the calling sidecars count them.</p>
  <div id="graph" class="graph"></div>
  <table id="edges">
    <caption>Edges</caption>
    <thead><tr><th scope="col">From</th><th scope="col">To</th><th scope="col">Req/s</th><th scope="col">Success</th><th scope="col">P50</th><th scope="col">P99</th><th scope="col">mTLS</th><th scope="col">TCP</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<section aria-labelledby="routes-h">
  <h2 id="routes-h">Routes</h2>
  <table id="routes">
    <caption>Per route and destination version (the figures of <code>meshctl top</code>)</caption>
    <thead><tr><th scope="col">Route</th><th scope="col">Service</th><th scope="col">Version</th><th scope="col">Req/s</th><th scope="col">Success</th><th scope="col">P50</th><th scope="col">P99</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<section aria-labelledby="proxies-h">
  <h2 id="proxies-h">Proxies</h2>
  <table id="proxies">
    <caption>Sidecars and gateways known to meshd, with their config state</caption>
    <thead><tr><th scope="col">Identity</th><th scope="col">Node</th><th scope="col">Connected</th><th scope="col">Sent</th><th scope="col">Acked</th><th scope="col">State</th><th scope="col">Certificate expires</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<section id="canaries" aria-labelledby="canaries-h" hidden>
  <h2 id="canaries-h">Canaries</h2>
  <table>
    <caption>Canaries in progress</caption>
    <thead><tr><th scope="col">Canary</th><th scope="col">Host</th><th scope="col">Stable</th><th scope="col">Canary version</th><th scope="col">Phase</th><th scope="col">Weight</th><th scope="col">Failed checks</th><th scope="col">Message</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
</div>
</main>
</body>
</html>
"""#

    static let stylesheet = #"""
:root { color-scheme: light; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #ffffff; --alt: #f6f8fa;
  --ok: #116329; --bad: #a40e26; --accent: #0550ae; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 1.5rem; padding: .6rem 1.5rem; border-bottom: 1px solid var(--line); background: var(--alt); }
header h1 { font-size: 1.3rem; margin: 0; }
#status { margin: 0; color: var(--muted); flex: 1; }
main { padding: 0 1.5rem 2rem; max-width: 1400px; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
.hint { color: var(--muted); margin: .2rem 0 .6rem; font-size: .9rem; }
.error { color: var(--bad); font-weight: 600; }
form { display: flex; flex-wrap: wrap; gap: .6rem; align-items: center; }
input[type=password] { font: inherit; padding: .35rem .5rem; min-width: 22rem; border: 1px solid var(--line); border-radius: 4px; }
button { font: inherit; padding: .35rem .9rem; border: 1px solid var(--accent); border-radius: 4px; background: var(--accent); color: #fff; cursor: pointer; }
button:focus-visible, input:focus-visible { outline: 3px solid #54aeff; outline-offset: 1px; }
#signout { background: var(--bg); color: var(--accent); }
table { border-collapse: collapse; margin: .3rem 0 1rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--muted); font-size: .9rem; padding-bottom: .2rem; }
th, td { text-align: left; padding: .25rem .8rem .25rem 0; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; }
td.num { text-align: right; }
td.state-nack { max-width: 38rem; }
td.empty { color: var(--muted); font-style: italic; }
.state-nack { color: var(--bad); font-weight: 600; }
.state-ack { color: var(--ok); }
.graph { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; background: var(--alt); }
.graph svg { display: block; }
.graph .node rect { fill: #ffffff; stroke: #57606a; stroke-width: 1.2; }
.graph .node .name { font-weight: 600; font-size: 13px; fill: var(--fg); }
.graph .node .ver { font-size: 12px; fill: var(--muted); }
.graph .edge path { fill: none; stroke: #6e7781; stroke-width: 1.6; }
.graph .edge.mtls path { stroke: var(--ok); }
.graph .edge.errors path { stroke: var(--bad); }
.graph .edge text { font-size: 11.5px; fill: var(--fg); paint-order: stroke; stroke: var(--alt); stroke-width: 4px; }
.graph .arrow { fill: #6e7781; }
.graph .empty { fill: var(--muted); font-style: italic; }
"""#

    static let icon = #"""
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="3" cy="8" r="2.5" fill="#0550ae"/><circle cx="13" cy="3" r="2.5" fill="#116329"/><circle cx="13" cy="13" r="2.5" fill="#116329"/><path d="M3 8L13 3M3 8L13 13" stroke="#57606a" stroke-width="1.2"/></svg>
"""#

    static let script = #"""
'use strict';
// meshd's web page: fetches /ui/api/mesh (and /ui/api/canaries) with the admin token every few
// seconds and renders them. Every value from the mesh goes into the page through textContent or
// an SVG attribute set with setAttribute: never as markup.
(function () {
  const KEY = 'meshd-admin-token';
  const REFRESH_MS = 3000;
  const SVG = 'http://www.w3.org/2000/svg';
  let timer = null;
  let generation = 0;

  const $ = (id) => document.getElementById(id);

  class Unauthorized extends Error {}

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k of Object.keys(attrs || {})) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function num(v, digits) {
    if (v === null || v === undefined) return '-';
    return Number(v).toFixed(digits === undefined ? 1 : digits).replace(/\.0+$/, '');
  }
  const rate = (v) => num(v, 1);
  const pct = (v) => (v === null || v === undefined ? '-' : num(v, 1) + '%');
  const ms = (v) => (v === null || v === undefined ? '-' : num(v, 1) + ' ms');
  const mtls = (v) => (v === true ? 'yes' : v === false ? 'no' : 'unknown');
  function bytes(v) {
    if (v === null || v === undefined) return '-';
    return v >= 1048576 ? num(v / 1048576, 1) + ' MB/s' : v >= 1024 ? num(v / 1024, 1) + ' kB/s' : num(v, 0) + ' B/s';
  }
  const tcp = (e) => (e.protocol === 'tcp' ? rate(e.connectionsPerSecond) + ' conn/s, ' + bytes(e.bytesPerSecond) : '-');
  // An HTTP figure of a TCP edge is none.
  const http = (e, f) => (e.protocol === 'tcp' ? '-' : f);

  function row(cells) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = el('td', c.text, c.cls);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(table, rows, empty, width) {
    const body = table.querySelector('tbody');
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      const td = el('td', empty, 'empty');
      td.colSpan = width;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const r of rows) body.appendChild(row(r));
  }

  function expiry(at, now) {
    if (at === null || at === undefined) return '-';
    const d = new Date(at * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
    const left = at - now;
    if (left <= 0) return d + ' (expired)';
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60);
    return d + ' (in ' + (h > 0 ? h + 'h ' : '') + m + 'm)';
  }

  // A layered layout: a node's layer is the longest chain of callers before it (cycles cut),
  // nodes of a layer stacked in name order; a node is as tall as its incoming edges need, each
  // edge ending at its own point with its label just above it.
  function layout(nodes, edges) {
    const layer = new Map(nodes.map((n) => [n.id, 0]));
    for (let pass = 0; pass < nodes.length; pass++) {
      let moved = false;
      for (const e of edges) {
        if (e.source === e.destination || !layer.has(e.source) || !layer.has(e.destination)) continue;
        const want = layer.get(e.source) + 1;
        if (layer.get(e.destination) < want && want < nodes.length) { layer.set(e.destination, want); moved = true; }
      }
      if (!moved) break;
    }
    const incoming = new Map();
    for (const e of edges) incoming.set(e.destination, (incoming.get(e.destination) || 0) + 1);
    const columns = [];
    for (const n of nodes) {
      const l = layer.get(n.id);
      (columns[l] = columns[l] || []).push(n);
    }
    const pos = new Map();
    const W = 190, DX = 470, GAP = 34, X0 = 24, Y0 = 28;
    let bottom = 0;
    columns.forEach((col, l) => {
      let y = Y0;
      for (const n of col || []) {
        const h = Math.max(48, 26 * (incoming.get(n.id) || 0) + 8);
        pos.set(n.id, { x: X0 + l * DX, y, w: W, h, inputs: 0 });
        y += h + GAP;
      }
      bottom = Math.max(bottom, y);
    });
    return { pos, incoming, width: X0 * 2 + Math.max(1, columns.length) * DX - (DX - W), height: bottom + 40 };
  }

  function drawGraph(mesh) {
    const box = $('graph');
    const { pos, incoming, width, height } = layout(mesh.nodes, mesh.edges);
    const s = svg('svg', { width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-labelledby': 'graph-title' });
    s.appendChild(svg('title', { id: 'graph-title' }, 'Service graph: ' + mesh.nodes.length + ' service versions, ' + mesh.edges.length + ' edges with traffic (the table below has the same data)'));
    const defs = svg('defs', {});
    const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.appendChild(svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }));
    defs.appendChild(marker);
    s.appendChild(defs);
    for (const e of mesh.edges) {
      const a = pos.get(e.source), b = pos.get(e.destination);
      if (!a || !b) continue;
      const cls = ['edge'];
      if (e.mtls === true) cls.push('mtls');
      if (e.success !== null && e.success < 100) cls.push('errors');
      const g = svg('g', { class: cls.join(' '), 'data-source': e.source, 'data-destination': e.destination, 'data-protocol': e.protocol });
      // The k-th edge into b ends at its k-th slot down b's left side.
      b.inputs += 1;
      const slot = b.y + (b.h * b.inputs) / ((incoming.get(e.destination) || 1) + 1);
      let d, lx, ly, anchor;
      if (b.x > a.x) {
        const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = slot, mx = (x1 + x2) / 2;
        d = 'M' + x1 + ',' + y1 + ' C' + mx + ',' + y1 + ' ' + (x2 - 140) + ',' + y2 + ' ' + (x2 - 120) + ',' + y2 + ' L' + x2 + ',' + y2;
        lx = x2 - 8; ly = y2 - 5; anchor = 'end';
      } else {
        // Back or same-layer edge: a loop under the boxes.
        const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y + b.h, dip = Math.max(y1, y2) + 30;
        d = 'M' + x1 + ',' + y1 + ' C' + x1 + ',' + dip + ' ' + x2 + ',' + dip + ' ' + x2 + ',' + y2;
        lx = (x1 + x2) / 2; ly = dip + 12; anchor = 'middle';
      }
      g.appendChild(svg('path', { d, 'marker-end': 'url(#arrow)' }));
      const label = (e.protocol === 'tcp' ? 'TCP ' + tcp(e) : rate(e.rps) + ' req/s · ' + pct(e.success) + ' · p99 ' + ms(e.p99)) + (e.mtls === true ? ' · mTLS' : e.mtls === false ? ' · plaintext' : '');
      g.appendChild(svg('text', { x: lx, y: ly, 'text-anchor': anchor, class: 'label' }, label));
      g.appendChild(svg('title', {}, e.source + ' → ' + e.destination + ': ' + label));
      s.appendChild(g);
    }
    for (const n of mesh.nodes) {
      const p = pos.get(n.id);
      const g = svg('g', { class: 'node', 'data-id': n.id });
      g.appendChild(svg('rect', { x: p.x, y: p.y, width: p.w, height: p.h, rx: 6 }));
      g.appendChild(svg('text', { x: p.x + 10, y: p.y + 20, class: 'name' }, n.service + '.' + n.namespace));
      g.appendChild(svg('text', { x: p.x + 10, y: p.y + 38, class: 'ver' }, 'version ' + n.version));
      g.appendChild(svg('title', {}, n.id));
      s.appendChild(g);
    }
    if (mesh.nodes.length === 0) s.appendChild(svg('text', { x: 24, y: 40, class: 'empty' }, 'No services registered.'));
    box.replaceChildren(s);
  }

  function render(mesh) {
    drawGraph(mesh);
    const waiting = mesh.sampling.state !== 'ready';
    fill($('edges'), mesh.edges.map((e) => [
      { text: e.source }, { text: e.destination }, { text: http(e, rate(e.rps)), cls: 'num' }, { text: http(e, pct(e.success)), cls: 'num' },
      { text: http(e, ms(e.p50)), cls: 'num' }, { text: http(e, ms(e.p99)), cls: 'num' }, { text: mtls(e.mtls) }, { text: tcp(e) },
    ]), waiting ? 'Collecting (the first figures come after two scrapes).' : 'No traffic in the last window.', 8);
    fill($('routes'), mesh.routes.map((r) => [
      { text: r.route }, { text: r.service }, { text: r.version }, { text: rate(r.rps), cls: 'num' },
      { text: pct(r.success), cls: 'num' }, { text: ms(r.p50), cls: 'num' }, { text: ms(r.p99), cls: 'num' },
    ]), waiting ? 'Collecting (the first figures come after two scrapes).' : 'No traffic in the last window.', 7);
    fill($('proxies'), mesh.proxies.map((p) => [
      { text: p.identity }, { text: p.node || '-' }, { text: p.connected ? 'yes' : 'no' },
      { text: p.sentVersion, cls: 'num' }, { text: p.ackedVersion, cls: 'num' },
      { text: (p.error !== null ? p.state + ': ' + p.error : p.state) + (p.note ? ' (' + p.note + ')' : ''), cls: p.state === 'NACK' ? 'state-nack' : p.state === 'ACK' ? 'state-ack' : '' },
      { text: expiry(p.certificateExpiry, mesh.sampling.now) },
    ]), 'No proxy has connected.', 7);
  }

  function renderCanaries(list) {
    const section = $('canaries');
    if (!Array.isArray(list) || list.length === 0) { section.hidden = true; return; }
    fill(section.querySelector('table'), list.map((c) => [
      { text: (c.namespace || '') + '/' + (c.name || '') }, { text: c.host }, { text: c.stable }, { text: c.canary },
      { text: c.phase }, { text: (c.canaryWeight ?? '-') + '% (max ' + (c.maxWeight ?? '-') + '%)', cls: 'num' },
      { text: (c.failedChecks ?? '-') + ' of ' + (c.threshold ?? '-'), cls: 'num' }, { text: c.message },
    ]), '', 8);
    section.hidden = false;
  }

  async function get(path) {
    const r = await fetch(path, { headers: { authorization: 'Bearer ' + sessionStorage.getItem(KEY) }, cache: 'no-store' });
    if (r.status === 401) throw new Unauthorized();
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  function showLogin(message) {
    clearTimeout(timer);
    generation++;
    $('content').hidden = true;
    $('login').hidden = false;
    $('signout').hidden = true;
    const err = $('login-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('status').textContent = 'Enter the admin token to see the mesh.';
    $('token').focus();
  }

  async function refresh(gen) {
    try {
      const mesh = await get('/ui/api/mesh');
      const canaries = await get('/ui/api/canaries');
      if (gen !== generation) return;
      $('login').hidden = true;
      $('content').hidden = false;
      $('signout').hidden = false;
      render(mesh);
      renderCanaries(canaries);
      const s = mesh.sampling;
      $('status').textContent = 'Config version ' + mesh.configVersion + ' · ' + mesh.proxies.length + ' proxies · ' +
        (s.state === 'ready' ? 'traffic over the last ' + num(s.windowSeconds, 1) + ' s from ' + s.sidecars + ' sidecars' : 'collecting metrics…') +
        ' · updated ' + new Date().toLocaleTimeString();
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof Unauthorized) {
        sessionStorage.removeItem(KEY);
        showLogin('meshd refused the admin token (401 Unauthorized). Enter it again.');
        return;
      }
      $('status').textContent = 'Could not reach meshd: ' + e.message + ' (retrying)';
    }
    if (gen === generation) timer = setTimeout(() => refresh(gen), REFRESH_MS);
  }

  function start() {
    clearTimeout(timer);
    generation++;
    refresh(generation);
  }

  // For tests and the curious: render a list as the Canaries section does.
  window.meshUI = { renderCanaries };

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (!t) return;
      sessionStorage.setItem(KEY, t);
      $('token').value = '';
      $('login-error').hidden = true;
      $('status').textContent = 'Loading…';
      start();
    });
    $('signout').addEventListener('click', () => {
      sessionStorage.removeItem(KEY);
      showLogin('');
    });
    if (sessionStorage.getItem(KEY)) start(); else showLogin('');
  });
})();
"""#
}
