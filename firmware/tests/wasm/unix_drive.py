# driver.mjs's `node` mode for the 64-bit unix port, for comparison: the same harness.py
# calls in the same order, under `micropython -X heapsize=N unix_drive.py ROOT CONFIG DROP
# "mod mod ..."`. Here the GC collects whenever an allocation fails (at any point, as on a
# device), and a heap too small ends in MemoryError. Prints `RESULT {...}` (JSON) last.
import gc
import json
import sys

root, cfg, drop, loads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, root + "/wasm")
res = {"mode": "unix"}
gc.collect()
before = gc.mem_alloc()
try:
    import harness

    harness.install(drop)
    sys.path[0] = root + "/lib"  # harness.install() put the wasm port's /fw paths first
    sys.path[1] = root
    gc.collect()
    res["harness_bytes"] = gc.mem_alloc() - before
    harness.config(cfg)
    for m in loads.split():
        harness.load(m)
    if harness.build() < 0:
        res["code"] = harness.code()
    else:
        r = ticks = 0
        while r >= 0 and ticks < 100000:
            r = harness.tick()
            ticks += 1
        res["code"] = harness.code() if r == -1 else None
except MemoryError:
    # a constant line: the full heap may have no room for one more object
    print('RESULT {"memory_error": true}')
    sys.exit(0)
res["live"] = harness.live
res["most"] = harness.most
print("RESULT " + json.dumps(res))
