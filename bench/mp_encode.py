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
print(json.dumps({"n": N, "us_per_reading": dt / N, "heap_bytes_per_reading": alloc,
                  "bytes": len(out)}))
