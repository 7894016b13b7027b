"""The dashboard in a real browser: headless Chromium (Debian's) against a real machi-cloud.

Seeds devices with coordinates and readings through the API, then checks what a person
sees: one map marker per placed device, bins fullest first, lamp states, stale and
low-battery devices flagged; clicks a dim control and finds the command queued; takes a
screenshot and checks it is not blank and the map shows the env markers' blue.
"""

from __future__ import annotations

import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ENV_BLUE = (0x1F, 0x77, 0xB4)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium)",
)


DEVICES: dict[str, dict[str, Any]] = {
    "env-0001": {"type": "env", "lat": 35.6800, "lon": 139.7600, "site": "station"},
    "env-0002": {"type": "env", "lat": 35.6900, "lon": 139.7000, "interval_s": 60},  # stale
    "bin-0001": {"type": "bin", "lat": 35.6700, "lon": 139.7500},
    "bin-0002": {"type": "bin", "lat": 35.6750, "lon": 139.7300},  # low battery
    "lamp-01": {"type": "light", "lat": 35.6850, "lon": 139.7800},
    "lamp-02": {"type": "light"},  # no coordinates: not on the map
}


def _seed(url: str, tokens: dict[str, str]) -> None:
    now = time.time()

    def r(device: str, age: float, **m: Any) -> dict[str, Any]:
        ms = [{"n": k, "vb" if isinstance(v, bool) else "v": v} for k, v in m.items()]
        for one in ms:
            if one["n"] == "bat":
                one["u"] = "V"
        return {"device": device, "seq": 1, "time": now - age, "received": now - age, "m": ms}

    with httpx.Client(base_url=url, timeout=30) as c:
        for device, fields in DEVICES.items():
            resp = c.put(
                f"/v1/devices/{device}",
                json={"gateway": "gw-01", **fields},
                headers={"Authorization": f"Bearer {tokens['admin']}"},
            )
            assert resp.status_code == 201, resp.text
        readings = [
            r("env-0001", 5, temp=21.5, bat=3.9),
            r("env-0002", 1000, temp=19.0, bat=3.8),
            r("bin-0001", 5, fill=35.0, bat=3.9),
            r("bin-0002", 5, fill=88.0, bat=3.1),
            r("lamp-01", 5, lamp=True, dim=40, lux=3),
            r("lamp-02", 5, lamp=False, dim=0, lux=300),
        ]
        batch = {"gateway": "gw-01", "batch_id": "seed", "readings": readings}
        resp = c.post(
            "/v1/batches",
            content=cbor2.dumps(batch),
            headers={
                "Authorization": f"Bearer {tokens['gw-01']}",
                "Content-Type": "application/cbor",
                "Accept": "application/json",
            },
        )
        assert resp.json()["stored"] == len(readings), resp.text


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i] for i in range(len(r)) if i % bpp < 3) for r in rows]


def test_dashboard_in_headless_chromium(
    cloud: str, process_tokens: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    operator = process_tokens["operator"]
    _seed(cloud, process_tokens)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(cloud + "/", timeout=60_000)
            page.wait_for_selector("#map circle.marker", timeout=30_000)
            markers = page.eval_on_selector_all(
                "#map circle.marker", "els => els.map(e => [e.dataset.device, e.dataset.type])"
            )
            assert sorted(markers) == sorted(
                [d, f["type"]] for d, f in DEVICES.items() if "lat" in f
            )
            alerts = page.eval_on_selector_all(
                "#map g.device:has(circle.alert)", "els => els.map(e => e.dataset.device)"
            )
            assert sorted(alerts) == ["bin-0002", "env-0002"]
            assert "without coordinates" in page.inner_text("#unplaced")
            # markers lie inside the drawing and apart (fitted bounds)
            xy = page.eval_on_selector_all(
                "#map circle.marker",
                "els => els.map(e => [+e.getAttribute('cx'), +e.getAttribute('cy')])",
            )
            assert all(0 < x < 640 and 0 < y < 420 for x, y in xy) and len(set(map(tuple, xy))) == 5
            bins = page.eval_on_selector_all("#bins tr", "els => els.map(e => e.dataset.device)")
            assert bins == ["bin-0002", "bin-0001"]  # fullest first
            states = page.eval_on_selector_all(
                "#lights tr",
                "els => els.map(e => [e.dataset.device,"
                " e.querySelector('.lamp-state').dataset.state])",
            )
            assert states == [["lamp-01", "on"], ["lamp-02", "off"]]
            rows = page.eval_on_selector_all(
                "#devices tr",
                "els => Object.fromEntries(els.map(e => [e.dataset.device, e.className]))",
            )
            assert rows["env-0002"] == "stale" and rows["bin-0002"] == "lowbat"
            assert rows["env-0001"] == ""

            # an operator dims lamp-01 to 30 %
            page.fill("#token", operator)
            page.click("#save-token")
            assert page.evaluate("sessionStorage.getItem('machi-token')") == operator
            lamp = 'tr[data-device="lamp-01"]'
            page.fill(f"{lamp} input.dim-level", "30")
            page.click(f"{lamp} button.cmd-dim")
            page.wait_for_function(
                "document.querySelector('tr[data-device=\"lamp-01\"] td.last')"
                ".textContent.includes('queued')",
                timeout=30_000,
            )
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            map_shot = page.locator("#map").screenshot(path=str(tmp_path / "map.png"))
        finally:
            browser.close()

    with httpx.Client(base_url=cloud, timeout=30) as c:
        cmds = c.get("/v1/commands", params={"device": "lamp-01"}).json()["commands"]
    assert [(x["name"], x["args"], x["state"], x["actor"]) for x in cmds] == [
        ("dim", {"level": 30}, "queued", "operator:olga")
    ]

    _, _, rows = _png_pixels(shot.read_bytes())
    values = [v for row in rows[::7] for v in row[::21]]
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    assert variance > 100, f"the screenshot looks blank (variance {variance:.1f})"
    _, _, map_rows = _png_pixels(map_shot)
    blue = sum(
        1
        for row in map_rows
        for i in range(0, len(row), 3)
        if all(abs(row[i + k] - ENV_BLUE[k]) <= 8 for k in range(3))
    )
    assert blue >= 2 * 50, f"expected two blue env markers in the map, found {blue} blue pixels"
