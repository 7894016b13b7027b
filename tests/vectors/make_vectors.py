"""Regenerate the wire-format vectors in this folder (run by hand, not by the tests).

The vectors are the contract between firmware (MicroPython) and gateway/cloud (CPython):
the firmware's encoder must produce these exact bytes, the gateway's decoder must turn them
into exactly the `reading` given. They are written with cbor2 (an independent encoder), in
RFC 8949 deterministic order (map keys sorted bytewise, so 0..6 before -1, -2, -3) and
preferred float serialization (the shortest of f16/f32/f64 that is exact). Except the
`cloud-batches*.json` batches: plain `cbor2.dumps` (keys in insertion order, floats in 8
bytes), as the gateway writes them, whose encoder the tests compare byte for byte.

    python tests/vectors/make_vectors.py                   # every file
    python tests/vectors/make_vectors.py cloud-batches-columns.json   # only the files named
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cbor2

HERE = Path(__file__).parent

# SenML integer labels (RFC 8428 Table 4)
BVER, BN, BT, BU = -1, -2, -3, -4
N, U, V, VS, VB, S, T = 0, 1, 2, 3, 4, 5, 6


def pack(device: str, seq: int, bt: int | float | None, measurements: list[dict]) -> list:
    meta: dict = {N: "seq", V: seq, BN: device + ":"}
    if bt is not None:
        meta[BT] = bt
    records = [meta]
    for m in measurements:
        rec: dict = {N: m["n"]}
        if "u" in m:
            rec[U] = m["u"]
        for key, label in (("v", V), ("vs", VS), ("vb", VB)):
            if key in m:
                rec[label] = m[key]
        records.append(rec)
    return records


def to_json(obj):  # integer labels become strings in JSON
    if isinstance(obj, list):
        return [to_json(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    return obj


SENML_CASES = [
    ("env-basic", "an environmental sensor's sample, all values exact in float16/32",
     "env-0001", 17, 1795390000,
     [{"n": "temp", "u": "Cel", "v": 21.5}, {"n": "hum", "u": "%RH", "v": 48.25},
      {"n": "pres", "u": "Pa", "v": 101325}, {"n": "pm25", "u": "ug/m3", "v": 12},
      {"n": "pm10", "u": "ug/m3", "v": 20}, {"n": "lux", "u": "lx", "v": 350},
      {"n": "bat", "u": "V", "v": 3.75}]),
    ("bin-full", "a waste bin over its threshold, a boolean event",
     "bin-0002", 0, 1795390060,
     [{"n": "fill", "u": "%", "v": 85}, {"n": "temp", "u": "Cel", "v": -2.5},
      {"n": "tilt", "vb": False}, {"n": "bat", "u": "V", "v": 3.5}]),
    ("light-state", "a streetlight, a string value and a large seq",
     "light-0001", 4294967296, 1795390120,
     [{"n": "lamp", "vb": True}, {"n": "dim", "u": "%", "v": 40},
      {"n": "power", "u": "W", "v": 18.5}, {"n": "mode", "vs": "schedule"}]),
    ("no-clock", "a node without a clock: no bt, the gateway stamps the receive time",
     "env-0003", 1, None,
     [{"n": "temp", "u": "Cel", "v": 0}]),
    ("float64-time", "a unix-port node: bt with milliseconds needs float64",
     "env-0004", 5, 1795390000.125,
     [{"n": "temp", "u": "Cel", "v": 19.0}]),
]


def senml_vectors() -> list[dict]:
    out = []
    for name, why, device, seq, bt, ms in SENML_CASES:
        records = pack(device, seq, bt, ms)
        data = cbor2.dumps(records, canonical=True)
        out.append({
            "name": name,
            "description": why,
            "hex": data.hex(),
            "senml": to_json(records),
            "reading": {"device": device, "seq": seq, "time": bt, "m": ms},
        })
    return out


# Several readings in one pack (protocol.md §2, "Several readings in one pack"): a node
# catching up on its backlog. (name, why, device, [(seq, bt, measurements), ...])
_T = [{"n": "temp", "u": "Cel", "v": 21.5}, {"n": "hum", "u": "%RH", "v": 48.25}]
MULTI_CASES = [
    ("backlog-3", "three readings of a node catching up, each with its own seq and bt",
     "env-0001", [(17, 1795390000, _T),
                  (18, 1795390060, [{"n": "temp", "u": "Cel", "v": 21.25},
                                    {"n": "hum", "u": "%RH", "v": 48.5}]),
                  (20, 1795390180, [{"n": "temp", "u": "Cel", "v": 21},
                                    {"n": "tilt", "vb": True}, {"n": "mode", "vs": "x"}])]),
    ("clockless-first", "a reading without bt (earlier power cycle) before ones with bt",
     "bin-0002", [(3, None, [{"n": "fill", "u": "%", "v": 85}]),
                  (4, 1795390060, [{"n": "fill", "u": "%", "v": 86}])]),
    ("max-readings", "the limit: 16 readings in one pack",
     "env-0003", [(100 + i, 1795390000 + 60 * i, [{"n": "temp", "u": "Cel", "v": i}])
                  for i in range(16)]),
]


def multi_vectors() -> list[dict]:
    out = []
    for name, why, device, readings in MULTI_CASES:
        records = [rec for seq, bt, ms in readings for rec in pack(device, seq, bt, ms)]
        data = cbor2.dumps(records, canonical=True)
        assert len(data) <= 1024, (name, len(data))
        out.append({
            "name": name,
            "description": why,
            "hex": data.hex(),
            "senml": to_json(records),
            "readings": [{"device": device, "seq": seq, "time": bt, "m": ms}
                         for seq, bt, ms in readings],
        })
    return out


def _multi(*readings: tuple[str, int, int | None, list[dict]]) -> str:
    records = [rec for dev, seq, bt, ms in readings for rec in pack(dev, seq, bt, ms)]
    return cbor2.dumps(records, canonical=True).hex()


_ONE = [{"n": "temp", "u": "Cel", "v": 20}]

# Payloads the gateway must refuse, with the CoAP response code it answers.
INVALID = [
    ("not-cbor", "truncated CBOR", "9f01", 112, "4.00"),
    ("not-array", "a map instead of a pack", cbor2.dumps({0: "seq"}).hex(), 112, "4.00"),
    ("empty-pack", "a pack with no record", "80", 112, "4.00"),
    ("no-bn", "first record without a base name",
     cbor2.dumps([{0: "seq", 2: 1}], canonical=True).hex(), 112, "4.00"),
    ("no-seq", "first record is not the seq record",
     cbor2.dumps([{0: "temp", 2: 1.5, -2: "env-0001:"}], canonical=True).hex(), 112, "4.00"),
    ("negative-seq", "seq below zero",
     cbor2.dumps([{0: "seq", 2: -1, -2: "env-0001:"}], canonical=True).hex(), 112, "4.00"),
    ("float-seq", "seq not an integer",
     cbor2.dumps([{0: "seq", 2: 1.5, -2: "env-0001:"}], canonical=True).hex(), 112, "4.00"),
    ("two-values", "a record with both v and vs",
     cbor2.dumps([{0: "seq", 2: 1, -2: "env-0001:"}, {0: "t", 2: 1, 3: "x"}],
                 canonical=True).hex(), 112, "4.00"),
    ("no-value", "a measurement without a value",
     cbor2.dumps([{0: "seq", 2: 1, -2: "env-0001:"}, {0: "t", 1: "Cel"}],
                 canonical=True).hex(), 112, "4.00"),
    ("bad-name", "a name with characters SenML forbids",
     cbor2.dumps([{0: "seq", 2: 1, -2: "env-0001:"}, {0: "a b", 2: 1}],
                 canonical=True).hex(), 112, "4.00"),
    ("wrong-format", "SenML-CBOR sent as JSON (Content-Format 110)",
     '5b7b22626e223a22656e762d303030313a227d5d', 110, "4.15"),
    ("unknown-device", "a well-formed reading from a device the gateway does not know",
     cbor2.dumps([{0: "seq", 2: 1, -2: "nobody-0001:"}], canonical=True).hex(), 112, "4.01"),
    ("pack-bad-second", "two readings, the second malformed (vs not text): the whole pack",
     _multi(("env-0001", 1, 1795390000, _ONE),
            ("env-0001", 2, 1795390060, [{"n": "mode", "vs": 5}])), 112, "4.00"),
    ("pack-mixed-device", "two readings of two devices in one pack",
     _multi(("env-0001", 1, 1795390000, _ONE), ("env-0002", 1, 1795390000, _ONE)),
     112, "4.00"),
    ("pack-too-many", "17 readings in one pack (at most 16)",
     _multi(*[("env-0001", i, None, []) for i in range(17)]), 112, "4.00"),
    ("pack-bt-carry", "a reading without bt after one with bt (SenML would carry bt over)",
     _multi(("env-0001", 1, 1795390000, _ONE), ("env-0001", 2, None, _ONE)), 112, "4.00"),
]


def invalid_vectors() -> list[dict]:
    return [{"name": n, "description": d, "hex": h, "content_format": cf, "code": c}
            for n, d, h, cf, c in INVALID]


def coap_vectors() -> list[dict]:
    """Whole CoAP messages (RFC 7252 §3), built by hand from the spec's layout."""
    payload = bytes.fromhex(senml_vectors()[0]["hex"])
    token = bytes.fromhex("a1b2c3d4")
    # CON (T=0) POST (0.02), TKL 4, MID 0x1234; Uri-Path "r" (option 11, delta 11, len 1);
    # Content-Format 112 (option 12, delta 1, len 1, value 0x70); payload marker 0xff.
    con_post = (bytes([0x44, 0x02, 0x12, 0x34]) + token + bytes([0xB1]) + b"r"
                + bytes([0x11, 0x70]) + b"\xff" + payload)
    # piggybacked ACK (T=2) 2.04 Changed (0x44), same MID and token, no payload
    ack_changed = bytes([0x64, 0x44, 0x12, 0x34]) + token
    # ACK 4.00 Bad Request (0x80) with a diagnostic payload
    ack_bad = bytes([0x64, 0x80, 0x12, 0x35]) + token + b"\xff" + b"bad senml"
    # ACK 5.03 (0xa3) with Max-Age 30 (option 14: delta 13+1 in an extra byte, len 1)
    ack_busy = bytes([0x64, 0xA3, 0x12, 0x36]) + token + bytes([0xD1, 0x01, 30])
    # an empty ACK (0.00, TKL 0) as sent before a separate response
    empty_ack = bytes([0x60, 0x00, 0x12, 0x37])
    # RST for a message we did not expect
    rst = bytes([0x70, 0x00, 0x12, 0x38])
    return [
        {"name": "con-post-reading", "hex": con_post.hex(), "type": "CON", "code": "0.02",
         "mid": 0x1234, "token": token.hex(), "uri_path": ["r"], "content_format": 112,
         "payload_hex": payload.hex()},
        {"name": "ack-changed", "hex": ack_changed.hex(), "type": "ACK", "code": "2.04",
         "mid": 0x1234, "token": token.hex(), "payload_hex": ""},
        {"name": "ack-bad-request", "hex": ack_bad.hex(), "type": "ACK", "code": "4.00",
         "mid": 0x1235, "token": token.hex(), "payload_hex": b"bad senml".hex()},
        {"name": "ack-service-unavailable", "hex": ack_busy.hex(), "type": "ACK",
         "code": "5.03", "mid": 0x1236, "token": token.hex(), "max_age": 30,
         "payload_hex": ""},
        {"name": "empty-ack", "hex": empty_ack.hex(), "type": "ACK", "code": "0.00",
         "mid": 0x1237, "token": "", "payload_hex": ""},
        {"name": "rst", "hex": rst.hex(), "type": "RST", "code": "0.00", "mid": 0x1238,
         "token": "", "payload_hex": ""},
    ]


def batch_vectors() -> list[dict]:
    batch = {
        "gateway": "gw-01",
        "batch_id": "gw-01-000000000001",
        "readings": [
            {"device": "env-0001", "seq": 17, "time": 1795390000, "received": 1795390000.5,
             "transport": "coap",
             "m": [{"n": "temp", "u": "Cel", "v": 21.5}, {"n": "hum", "u": "%RH", "v": 48.25}]},
            {"device": "bin-0002", "seq": 0, "time": 1795390060, "received": 1795390060.25,
             "transport": "coap", "m": [{"n": "fill", "u": "%", "v": 85},
                                        {"n": "tilt", "vb": False}]},
        ],
    }
    return [{"name": "two-readings", "hex": cbor2.dumps(batch).hex(), "decoded": batch}]


def columns_vectors() -> list[dict]:
    """Columnar batches (docs/protocol.md §3), each with `readings`: the reading maps of
    the row batch it means. The first holds the readings of `cloud-batches.json`."""
    two = {
        "gateway": "gw-01",
        "batch_id": "gw-01-000000000002",
        "columns": {
            "device": ["env-0001", "bin-0002"],
            "seq": [17, 0],
            "time": [1795390000, 1795390060],
            "received": [1795390000.5, 1795390060.25],
            "transport": ["coap", "coap"],
            "m": [  # sparse: each series names its readings ("i")
                {"n": "temp", "u": "Cel", "v": [21.5], "i": [0]},
                {"n": "hum", "u": "%RH", "v": [48.25], "i": [0]},
                {"n": "fill", "u": "%", "v": [85], "i": [1]},
                {"n": "tilt", "vb": [False], "i": [1]},
            ],
        },
    }
    dense = {  # every reading has temp and hum; one has no receive time; no transport column
        "gateway": "gw-01",
        "batch_id": "gw-01-000000000003",
        "columns": {
            "device": ["env-0001", "env-0001", "env-0003"],
            "seq": [18, 19, 4],
            "time": [1795390060, 1795390120, 1795390100.5],
            "received": [1795390060.5, None, 1795390101],
            "m": [
                {"n": "temp", "u": "Cel", "v": [21.25, 21, -3.5]},
                {"n": "hum", "u": "%RH", "v": [48, 48.5, 90.125]},
            ],
        },
    }
    return [
        {"name": "two-readings-sparse", "hex": cbor2.dumps(two).hex(), "decoded": two,
         "readings": expand_columns(two["columns"])},
        {"name": "three-readings-dense", "hex": cbor2.dumps(dense).hex(), "decoded": dense,
         "readings": expand_columns(dense["columns"])},
    ]


def expand_columns(cols: dict) -> list[dict]:
    """The reading maps a (valid) columnar batch means: reading k has, in series order,
    the entries of the series that name k."""
    out = []
    received = cols.get("received", [None] * len(cols["device"]))
    for k, device in enumerate(cols["device"]):
        r = {"device": device, "seq": cols["seq"][k], "time": cols["time"][k]}
        if received[k] is not None:
            r["received"] = received[k]
        if "transport" in cols:
            r["transport"] = cols["transport"][k]
        r["m"] = []
        for s in cols["m"]:
            kind = next(key for key in ("v", "vs", "vb") if key in s)
            at = s["i"].index(k) if "i" in s and k in s["i"] else None
            if "i" not in s or at is not None:
                m = {key: s[key] for key in ("n", "u") if key in s}
                r["m"].append({**m, kind: s[kind][k if at is None else at]})
        out.append(r)
    return out


def main(names: list[str]) -> None:
    files = {
        "senml-readings.json": senml_vectors,
        "senml-readings-multi.json": multi_vectors,
        "senml-invalid.json": invalid_vectors,
        "coap-messages.json": coap_vectors,
        "cloud-batches.json": batch_vectors,
        "cloud-batches-columns.json": columns_vectors,
    }
    unknown = sorted(set(names) - set(files))
    if unknown:
        sys.exit(f"no such vector file: {', '.join(unknown)}; choose from {', '.join(files)}")
    for name, make in files.items():
        if names and name not in names:
            continue
        data = make()
        (HERE / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print("wrote", name, len(data), "vectors")


if __name__ == "__main__":
    main(sys.argv[1:])
