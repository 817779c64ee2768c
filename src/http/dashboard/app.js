// hub dashboard: plain JS, no build step, no third-party code.
// Data: /api/introspection and /ready polled every 2 s (cluster, rates),
// /api/state and sensor history once, then one change stream
// (/api/watch, read with fetch() so the token travels in the Authorization
// header and never in a URL or a log line).
'use strict';

const $ = (s) => document.querySelector(s);
const TOKEN_KEY = 'hub.token';
const POLL_MS = 2000;
const POINTS = 60;
let token = sessionStorage.getItem(TOKEN_KEY);
let asking = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k.startsWith('data-')) e.setAttribute(k, v); else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : String(k));
  return e;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const headers = () => (token ? { Authorization: 'Bearer ' + token } : {});

function askToken() {
  if (!asking) {
    asking = new Promise((resolve) => {
      const d = $('#login');
      $('#login-error').textContent = token ? 'That key was refused.' : '';
      $('#login-form').onsubmit = () => {
        token = $('#token').value.trim();
        sessionStorage.setItem(TOKEN_KEY, token);
        $('#logout').hidden = false;
        asking = null;
        resolve();
      };
      d.showModal();
    });
  }
  return asking;
}

async function api(path) {
  for (;;) {
    const r = await fetch(path, { headers: headers(), cache: 'no-store' });
    if (r.status === 401) { await askToken(); continue; }
    const body = await r.json().catch(() => null);
    if (!r.ok && path !== '/ready') throw new Error(`${path}: ${r.status} ${body && body.error ? body.error.message : ''}`);
    return body;
  }
}

function ago(ms) {
  if (ms == null) return '–';
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  return Math.round(ms / 60000) + ' min';
}

function showValue(v) {
  if (v === null || v === undefined) return '∅';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(2);
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

// ---- cluster and rates ----
let last = null;

function renderCluster(data) {
  const c = data.cluster;
  const vv = data.version_vector || {};
  const tbody = $('#cluster tbody');
  const rows = [];
  const me = c ? c.me : { node_id: data.node_id };
  rows.push(el('tr', { 'data-node': me.node_id, 'data-status': 'self' },
    el('td', {}, me.node_id), el('td', { class: 'alive' }, 'self'), el('td', {}, '–'), el('td', {}, '–'),
    el('td', {}, '–'), el('td', {}, '–'), el('td', {}, c && c.replication.last_anti_entropy ? aeText(c.replication.last_anti_entropy) : '–'),
    el('td', {}, data.merkle_root.slice(0, 8)), el('td', {}, el('a', { href: '/' }, 'this'))));
  for (const m of (c ? c.members : [])) {
    const peer = (c.replication.peers || {})[m.node_id] || {};
    const lag = m.head != null ? Math.max(0, m.head - (vv[m.node_id] || 0)) : null;
    const ae = peer.last_anti_entropy;
    let root = '–';
    if (ae) root = ae.result.kind === 'in_sync' ? 'match' : ae.result.kind === 'repaired' ? 'repaired' : 'unknown';
    rows.push(el('tr', { 'data-node': m.node_id, 'data-status': m.status },
      el('td', {}, m.node_id),
      el('td', { class: m.status }, m.status),
      el('td', { class: 'num' }, Number.isFinite(m.phi) ? m.phi.toFixed(2) : '∞'),
      el('td', { class: 'num' }, m.rtt_ms != null ? m.rtt_ms.toFixed(1) + ' ms' : '–'),
      el('td', { class: 'num' }, ago(m.last_seen_ms_ago)),
      el('td', { class: 'num' }, lag == null ? '–' : lag + ' deltas'),
      el('td', {}, ae ? aeText(ae) : '–'),
      el('td', { class: root === 'match' ? 'ok' : root === 'unknown' ? 'bad' : '' }, root),
      el('td', {}, m.http ? el('a', { href: m.http + '/' }, m.http) : '–')));
  }
  tbody.replaceChildren(...rows);
}

function aeText(ae) {
  const moved = (ae.entries_received || 0) + (ae.entries_sent || 0);
  return `${ago(Date.now() - ae.finished_ms)} ago, ${ae.result.kind}, ${moved} moved (${ae.peer})`;
}

function renderRates(data, now) {
  const writes = data.counters.writes;
  let applied = 0;
  for (const p of Object.values((data.cluster && data.cluster.replication.peers) || {})) applied += p.deltas_applied;
  if (last) {
    const dt = (now - last.at) / 1000;
    $('#rate-writes').textContent = ((writes - last.writes) / dt).toFixed(1);
    $('#rate-applied').textContent = ((applied - last.applied) / dt).toFixed(1);
    $('#rate-events').textContent = ((seen - last.seen) / dt).toFixed(1);
  }
  $('#keys').textContent = data.entries;
  // Sharding: partitions this node owns, and those it still holds while a
  // layout change hands them off to their new owners.
  const p = data.cluster && data.cluster.placement;
  $('#partitions').textContent = p ? `${p.owned}/256` : '–';
  $('#handoff').textContent = p && p.held_not_owned > 0
    ? `(+${p.held_not_owned} handing off, ${p.handoff_entries_sent} entries sent)` : '';
  last = { at: now, writes, applied, seen };
}

async function poll() {
  for (;;) {
    try {
      const [data, ready] = await Promise.all([api('/api/introspection'), api('/ready')]);
      $('#node-id').textContent = data.node_id;
      document.title = 'hub ' + data.node_id;
      renderCluster(data);
      renderRates(data, Date.now());
      const r = $('#ready');
      r.textContent = ready && ready.status === 'ready' ? 'ready' : 'not ready';
      r.title = ready && ready.reasons ? ready.reasons.join('\n') : '';
      r.className = 'pill ' + (ready && ready.status === 'ready' ? 'ok' : 'bad');
    } catch (e) {
      setConn(false, e.message);
    }
    await sleep(POLL_MS);
  }
}

// ---- sensors ----
const sensors = new Map(); // key -> { card, points: [number] }

function sensorCard(key, origin, name) {
  let s = sensors.get(key);
  if (s) return s;
  const card = el('div', { class: 'sensor', 'data-key': key },
    el('div', { class: 'name' }, `${origin} / ${name}`), el('div', { class: 'val' }, '–'), svgChart());
  s = { card, points: [] };
  sensors.set(key, s);
  const all = [...sensors.keys()].sort();
  const box = $('#sensors');
  box.insertBefore(card, box.children[all.indexOf(key)] || null);
  return s;
}

function svgChart() {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${POINTS} 40`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.append(document.createElementNS(ns, 'polyline'));
  return svg;
}

function drawSensor(s, value) {
  s.card.querySelector('.val').textContent = showValue(value);
  s.card.setAttribute('data-value', showValue(value));
  if (typeof value === 'number') {
    s.points.push(value);
    if (s.points.length > POINTS) s.points.shift();
  }
  const p = s.points;
  if (p.length > 1) {
    const lo = Math.min(...p), hi = Math.max(...p), span = hi - lo || 1;
    const pts = p.map((v, i) => `${i * (POINTS / (p.length - 1))},${38 - ((v - lo) / span) * 36}`).join(' ');
    s.card.querySelector('polyline').setAttribute('points', pts);
  }
}

async function loadSensors() {
  const state = await api('/api/state');
  for (const [origin, byName] of Object.entries(state)) {
    for (const [name, r] of Object.entries(byName)) {
      const key = `sensors/${origin}/${name}`;
      const s = sensorCard(key, origin, name);
      try {
        const h = await api(`/api/sensors/${encodeURIComponent(origin)}/${encodeURIComponent(name)}/history?limit=${POINTS}`);
        for (const x of h.readings.reverse()) if (typeof x.value === 'number') s.points.push(x.value);
      } catch (e) { /* history is optional */ }
      drawSensor(s, r.value);
    }
  }
}

// ---- change stream ----
let seen = 0;

function onChange(c) {
  seen++;
  const m = /^sensors\/([^/]+)\/(.+)$/.exec(c.key);
  if (m && !c.deleted) drawSensor(sensorCard(c.key, m[1], m[2]), c.value);
  const tbody = $('#changes tbody');
  tbody.prepend(el('tr', { 'data-key': c.key },
    el('td', { class: 'num' }, c.cursor), el('td', {}, c.key),
    el('td', {}, c.deleted ? '(deleted)' : showValue(c.value)),
    el('td', {}, c.origin || 'anti-entropy'), el('td', {}, c.version.text)));
  while (tbody.children.length > 30) tbody.lastChild.remove();
}

function setConn(ok, why) {
  const c = $('#conn');
  c.textContent = ok ? 'live' : 'reconnecting';
  c.title = why || '';
  c.className = 'pill ' + (ok ? 'ok' : 'bad');
}

async function follow(prefix) {
  let since = null;
  for (;;) {
    try {
      const q = '/api/watch?prefix=' + encodeURIComponent(prefix) + (since !== null ? '&since=' + since : '');
      const r = await fetch(q, { headers: headers(), cache: 'no-store' });
      if (r.status === 401) { await askToken(); continue; }
      if (!r.ok) throw new Error('watch: ' + r.status);
      setConn(true);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let id = null, ev = 'message', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('event: ')) ev = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (id !== null) since = id;
          if (ev === 'message' && data) onChange(JSON.parse(data));
        }
      }
      setConn(false, 'stream ended');
    } catch (e) {
      setConn(false, e.message);
    }
    await sleep(1000);
  }
}

// ---- key browser ----
let nextAfter = null;

async function browse(after) {
  const prefix = $('#prefix').value;
  const q = `/kv?limit=50&prefix=${encodeURIComponent(prefix)}` + (after ? `&after=${encodeURIComponent(after)}` : '');
  const page = await api(q);
  const rows = page.keys.map((k) => {
    const tr = el('tr', { 'data-key': k.key }, el('td', {}, k.key), el('td', { class: 'num' }, k.bytes),
      el('td', { class: 'num' }, k.version.hlc), el('td', {}, k.version.node));
    tr.onclick = () => showEntry(k.key);
    return tr;
  });
  $('#keylist tbody').replaceChildren(...rows);
  nextAfter = page.next;
  $('#more').disabled = !nextAfter;
}

async function showEntry(key) {
  const path = key.split('/').map(encodeURIComponent).join('/');
  const e = await api('/api/entry/' + path);
  const box = $('#entry');
  box.replaceChildren(el('h3', {}, key), el('pre', {}, JSON.stringify(e, null, 2)));
  const m = /^sensors\/([^/]+)\/(.+)$/.exec(key);
  if (m) {
    const h = await api(`/api/sensors/${encodeURIComponent(m[1])}/${encodeURIComponent(m[2])}/history?limit=20`);
    box.append(el('h3', {}, 'history'), el('pre', {}, h.readings.map((r) => `${new Date(r.ts_ms).toISOString()}  ${showValue(r.value)}  seq ${r.seq}`).join('\n')));
  }
}

$('#browse').onsubmit = (ev) => { ev.preventDefault(); browse(null).catch((e) => setConn(false, e.message)); };
$('#more').onclick = () => browse(nextAfter).catch((e) => setConn(false, e.message));
$('#logout').hidden = !token;
$('#logout').onclick = () => { sessionStorage.removeItem(TOKEN_KEY); token = null; location.reload(); };

poll();
loadSensors().catch((e) => setConn(false, e.message)).finally(() => follow(''));
browse(null).catch(() => {});
