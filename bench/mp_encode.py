# Runs under the real MicroPython: time and heap to encode one env reading, N times.
# Prints one JSON line for bench/firmware_encode.py.
import gc
import json
import sys
import time

import cbor
import senml

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
M = [("temp", "Cel", 21.5), ("hum", "%RH", 48.25), ("pres", "Pa", 101325),
     ("pm25", "ug/m3", 12), ("pm10", "ug/m3", 20), ("lux", "lx", 350), ("bat", "V", 3.75)]
enc = cbor.Encoder(256)
senml.encode_reading(enc, "env-0001", 0, 1795390000, M)  # warm up
gc.collect()
before = gc.mem_alloc()
gc.disable()
out = senml.encode_reading(enc, "env-0001", 1, 1795390000, M)
alloc = gc.mem_alloc() - before
gc.enable()
t0 = time.ticks_us()
for i in range(N):
    out = senml.encode_reading(enc, "env-0001", i, 1795390000, M)
dt = time.ticks_diff(time.ticks_us(), t0)


# Baseline in the same interpreter and run: the same reading as SenML-JSON (RFC 8428 text
# labels) with MicroPython's own json module, built per reading as an app would.
def senml_json(dev, seq, t, ms):
    pack = [{"bn": dev + ":", "n": "seq", "v": seq, "bt": t}]
    for n, u, v in ms:
        pack.append({"n": n, "u": u, "v": v})
    return json.dumps(pack)


senml_json("env-0001", 0, 1795390000, M)  # warm up
gc.collect()
before = gc.mem_alloc()
gc.disable()
js = senml_json("env-0001", 1, 1795390000, M)
json_alloc = gc.mem_alloc() - before
gc.enable()
t0 = time.ticks_us()
for i in range(N):
    js = senml_json("env-0001", i, 1795390000, M)
json_dt = time.ticks_diff(time.ticks_us(), t0)
print(json.dumps({"n": N, "us_per_reading": dt / N, "heap_bytes_per_reading": alloc,
                  "bytes": len(out), "json_us_per_reading": json_dt / N,
                  "json_heap_bytes_per_reading": json_alloc, "json_bytes": len(js)}))
