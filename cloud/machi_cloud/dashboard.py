"""`GET /`: a small self-contained dashboard (no external assets: it works offline).

A table of devices with their latest values, refreshed every 2 s from `/v1/devices`. Values
are inserted with `textContent`, never as HTML, since device data comes from the field.
The map dashboard of a later issue replaces this page.
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
 body { font: 14px system-ui, sans-serif; margin: 1.5rem; color: #222; }
 h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
 #status { color: #666; margin-bottom: 1rem; }
 #status.error { color: #b00; }
 table { border-collapse: collapse; }
 th, td { border-bottom: 1px solid #ddd; padding: .3rem .7rem; text-align: left;
          vertical-align: top; }
 th { background: #f4f4f4; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 .metric { display: inline-block; margin-right: 1rem; white-space: nowrap; }
 .metric b { font-weight: 600; }
</style>
</head>
<body>
<h1>machi cloud</h1>
<div id="status">loading...</div>
<table>
 <thead><tr><th>device</th><th>last seen</th><th>last seq</th><th>readings</th>
 <th>latest values</th></tr></thead>
 <tbody id="devices"></tbody>
</table>
<p><a href="/docs">API docs</a> &middot; <a href="/v1/readings?format=csv">CSV export</a></p>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function when(t) {
  return typeof t === "number" ? new Date(t * 1000).toLocaleString() : "";
}
async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/v1/devices", {headers: {"Accept": "application/json"}});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const data = await resp.json();
    const body = document.getElementById("devices");
    const rows = data.devices.map(d => {
      const tr = document.createElement("tr");
      cell(tr, d.device);
      cell(tr, when(d.last_seen));
      cell(tr, String(d.last_seq), "num");
      cell(tr, String(d.readings), "num");
      const td = cell(tr, "");
      for (const [name, v] of Object.entries(d.latest)) {
        const span = document.createElement("span");
        span.className = "metric";
        const b = document.createElement("b");
        b.textContent = name + " ";
        span.appendChild(b);
        span.appendChild(document.createTextNode(String(v.value) + (v.unit ? " " + v.unit : "")));
        td.appendChild(span);
      }
      return tr;
    });
    body.replaceChildren(...rows);
    status.className = "";
    status.textContent = data.devices.length + " device(s), updated " +
      new Date().toLocaleTimeString();
  } catch (err) {
    status.className = "error";
    status.textContent = "cannot reach the cloud API: " + err.message + " (retrying)";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE)
