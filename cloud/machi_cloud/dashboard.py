"""`GET /`: the operator's dashboard, one self-contained page (no external assets, no tiles).

- a map drawn as SVG from the devices' registered lat/lon: the bounds are fitted to the
  devices (equirectangular, longitude scaled by cos(latitude)), one labelled circle per
  device, coloured by type (env blue, bin brown, light amber), with a red ring when it is
  stale or its battery is low;
- bins sorted by fill level, fullest first;
- streetlights with their lamp state and on / off / dim controls: the controls queue
  commands through `POST /v1/commands` with the operator's token, which is typed into the
  page and kept in `sessionStorage` (gone when the tab closes; never in a cookie);
- every device with its latest values, stale and low-battery ones highlighted.

Data comes from `/v1/devices` every 2 s (with the token, if one is set, so it also works
when reads are private). Values go in with `textContent` / `setAttribute`, never as HTML,
since device data comes from the field.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>machi cloud</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1rem 1.5rem; color: #222; background: #fff; }
 h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
 h2 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
 #status { color: #666; }
 #status.error, .error { color: #b00; }
 #auth { margin: .6rem 0; }
 .grid { display: grid; grid-template-columns: minmax(320px, 640px) 1fr; gap: 1.5rem; }
 #map { width: 100%; height: auto; border: 1px solid #ccc; background: #f3f6f8; }
 #map text { font-size: 11px; fill: #222; }
 table { border-collapse: collapse; }
 th, td { border-bottom: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
 th { background: #f4f4f4; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 tr.stale td { background: #fde8e8; }
 tr.lowbat td:first-child::after { content: " (battery low)"; color: #b00; }
 tr.stale td:first-child::after { content: " (stale)"; color: #b00; }
 .bar { display: inline-block; height: .7rem; background: #8c564b; vertical-align: middle; }
 .metric { display: inline-block; margin-right: .8rem; white-space: nowrap; }
 button { margin-right: .3rem; }
 .legend span { margin-right: 1rem; }
</style>
</head>
<body>
<h1>machi cloud</h1>
<div id="status">loading...</div>
<div id="auth">
 <label>operator token <input id="token" type="password" autocomplete="off" size="24"></label>
 <button id="save-token" type="button">use token</button>
 <span id="auth-state"></span>
</div>
<div class="grid">
 <div>
  <svg id="map" viewBox="0 0 640 420" role="img" aria-label="map of devices"></svg>
  <div class="legend"><span style="color:#1f77b4">&#9679; env</span>
   <span style="color:#8c564b">&#9679; bin</span><span style="color:#e6a100">&#9679; light</span>
   <span style="color:#d62728">&#9711; stale or battery low</span></div>
  <div id="unplaced"></div>
 </div>
 <div>
  <h2>Bins, fullest first</h2>
  <table><thead><tr><th>bin</th><th>fill</th><th></th></tr></thead>
   <tbody id="bins"></tbody></table>
  <h2>Streetlights</h2>
  <table><thead><tr><th>light</th><th>state</th><th>control</th><th>last command</th></tr>
   </thead><tbody id="lights"></tbody></table>
 </div>
</div>
<h2>Devices</h2>
<table>
 <thead><tr><th>device</th><th>type</th><th>health</th><th>last seen</th><th>battery</th>
 <th>latest values</th></tr></thead>
 <tbody id="devices"></tbody>
</table>
<p><a href="/docs">API docs</a> &middot; <a href="/v1/readings?format=csv">CSV export</a>
 &middot; <a href="/v1/open-data">open data</a></p>
<script>
"use strict";
const SVG = document.getElementById("map").namespaceURI;  // no URL in the page
const COLOURS = {env: "#1f77b4", bin: "#8c564b", light: "#e6a100"};
const W = 640, H = 420, PAD = 30, LABEL = 80;  // room on the right for labels
const lastCommand = {};

function token() { return sessionStorage.getItem("machi-token") || ""; }
function headers(extra) {
  const h = Object.assign({"Accept": "application/json"}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}
function kind(d) {
  if (d.type) return d.type;
  if (d.latest.fill) return "bin";
  if (d.latest.lamp) return "light";
  return "env";
}
function value(d, m) { return d.latest[m] ? d.latest[m].value : null; }
// two decimals at most: 3.796875 V reads 3.8 V, 21.25 Cel stays 21.25
function num(v) { return typeof v === "number" ? String(Math.round(v * 100) / 100) : String(v); }
function flagged(d) { return d.health === "stale" || d.low_battery; }
function ago(t) {
  if (typeof t !== "number") return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 120 ? Math.round(s) + " s ago" : s < 7200 ? Math.round(s / 60) + " min ago"
    : new Date(t * 1000).toLocaleString();
}

function drawMap(devices) {
  const map = document.getElementById("map");
  const placed = devices.filter(d => typeof d.lat === "number" && typeof d.lon === "number");
  const nodes = [];
  if (placed.length) {
    const lats = placed.map(d => d.lat), lons = placed.map(d => d.lon);
    const midLat = (Math.min(...lats) + Math.max(...lats)) / 2;
    const k = Math.cos(midLat * Math.PI / 180);
    const x0 = Math.min(...lons) * k, x1 = Math.max(...lons) * k;
    const y0 = Math.min(...lats), y1 = Math.max(...lats);
    const span = Math.max((x1 - x0) / (W - 2 * PAD - LABEL), (y1 - y0) / (H - 2 * PAD), 1e-9);
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    for (const d of placed) {
      const x = (W - LABEL) / 2 + (d.lon * k - cx) / span, y = H / 2 - (d.lat - cy) / span;
      const g = svg("g", {"class": "device", "data-device": d.device});
      if (flagged(d)) g.appendChild(svg("circle", {cx: x, cy: y, r: 13, fill: "none",
        stroke: "#d62728", "stroke-width": 3, "class": "alert"}));
      g.appendChild(svg("circle", {cx: x, cy: y, r: 8, fill: COLOURS[kind(d)] || "#555",
        "class": "marker", "data-device": d.device, "data-type": kind(d)}));
      const label = svg("text", {x: x + 11, y: y + 4});
      label.textContent = d.device;
      g.appendChild(label);
      const tip = svg("title", {});
      tip.textContent = d.device + (d.site ? " (" + d.site + ")" : "") + ": " + d.health;
      g.appendChild(tip);
      nodes.push(g);
    }
  }
  map.replaceChildren(...nodes);
  const missing = devices.length - placed.length;
  document.getElementById("unplaced").textContent = missing ?
    missing + " device(s) without coordinates are not on the map" : "";
}

function drawBins(devices) {
  const bins = devices.filter(d => kind(d) === "bin")
    .sort((a, b) => (value(b, "fill") ?? -1) - (value(a, "fill") ?? -1));
  document.getElementById("bins").replaceChildren(...bins.map(d => {
    const tr = el("tr"); tr.dataset.device = d.device;
    if (flagged(d)) tr.className = d.health === "stale" ? "stale" : "lowbat";
    const fill = value(d, "fill");
    tr.appendChild(el("td", d.device));
    tr.appendChild(el("td", fill === null ? "?" : fill + " %", "num"));
    const bar = el("span", null, "bar");
    bar.style.width = Math.max(0, Math.min(100, fill || 0)) + "px";
    const td = el("td"); td.appendChild(bar); tr.appendChild(td);
    return tr;
  }));
}

async function command(device, name, args) {
  const out = lastCommand[device] = {text: name + ": sending..."};
  render();
  if (!token()) { out.text = "enter an operator token first"; out.error = true; render(); return; }
  try {
    const resp = await fetch("/v1/commands", {method: "POST",
      headers: headers({"Content-Type": "application/json"}),
      body: JSON.stringify({device: device, name: name, args: args, ttl_s: 600})});
    const body = await resp.json();
    if (resp.ok) { out.text = name + " " + body.state + " (" + body.id.slice(0, 8) + ")"; }
    else { out.text = name + " refused: " + body.detail; out.error = true; }
  } catch (err) { out.text = name + " failed: " + err.message; out.error = true; }
  render();
}

function drawLights(devices) {
  const lights = devices.filter(d => kind(d) === "light");
  document.getElementById("lights").replaceChildren(...lights.map(d => {
    const tr = el("tr"); tr.dataset.device = d.device;
    if (flagged(d)) tr.className = "stale";
    const lamp = value(d, "lamp"), dim = value(d, "dim");
    const state = lamp === null ? "unknown" : lamp ? (dim !== null && dim < 100 ?
      "dimmed " + dim + " %" : "on") : "off";
    const s = el("td", state, "lamp-state"); s.dataset.state = lamp === null ? "unknown" :
      lamp ? "on" : "off";
    tr.appendChild(el("td", d.device)); tr.appendChild(s);
    const ctl = el("td");
    const on = el("button", "on", "cmd-on"); on.type = "button";
    on.onclick = () => command(d.device, "on", {});
    const off = el("button", "off", "cmd-off"); off.type = "button";
    off.onclick = () => command(d.device, "off", {});
    const level = el("input", null, "dim-level"); level.type = "number"; level.min = 0;
    level.max = 100; level.value = 50; level.style.width = "3.5em";
    const dimb = el("button", "dim", "cmd-dim"); dimb.type = "button";
    dimb.onclick = () => command(d.device, "dim", {level: Number(level.value)});
    ctl.append(on, off, level, dimb);
    tr.appendChild(ctl);
    const last = lastCommand[d.device];
    tr.appendChild(el("td", last ? last.text : "", last && last.error ? "error last" : "last"));
    return tr;
  }));
}

function drawDevices(devices) {
  document.getElementById("devices").replaceChildren(...devices.map(d => {
    const tr = el("tr"); tr.dataset.device = d.device;
    if (d.health === "stale") tr.className = "stale";
    else if (d.low_battery) tr.className = "lowbat";
    tr.appendChild(el("td", d.device));
    tr.appendChild(el("td", kind(d)));
    tr.appendChild(el("td", d.health, "health"));
    tr.appendChild(el("td", ago(d.last_seen)));
    const bat = d.battery ? num(d.battery.value) + " " + (d.battery.unit || "") : "";
    tr.appendChild(el("td", bat, "num"));
    const td = el("td");
    for (const [name, v] of Object.entries(d.latest)) {
      const span = el("span", null, "metric");
      span.appendChild(el("b", name + " "));
      span.appendChild(document.createTextNode(num(v.value) + (v.unit ? " " + v.unit : "")));
      td.appendChild(span);
    }
    tr.appendChild(td);
    return tr;
  }));
}

let devices = [];
function render() {
  drawMap(devices); drawBins(devices); drawLights(devices); drawDevices(devices);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/v1/devices", {headers: headers()});
    if (!resp.ok) throw new Error("HTTP " + resp.status + (resp.status === 401 ?
      ": reads need a token, enter it below" : ""));
    devices = (await resp.json()).devices;
    render();
    const bad = devices.filter(flagged).length;
    status.className = "";
    status.textContent = devices.length + " device(s), " + bad + " need attention, updated " +
      new Date().toLocaleTimeString();
  } catch (err) {
    status.className = "error";
    status.textContent = "cannot reach the cloud API: " + err.message + " (retrying)";
  }
}

function showAuth() {
  document.getElementById("auth-state").textContent = token() ? "token set for this tab" :
    "no token: controls are disabled";
}
document.getElementById("save-token").onclick = () => {
  const t = document.getElementById("token").value.trim();
  if (t) sessionStorage.setItem("machi-token", t); else sessionStorage.removeItem("machi-token");
  document.getElementById("token").value = "";
  showAuth(); refresh();
};
showAuth();
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE)
