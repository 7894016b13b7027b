// Runs the firmware on MicroPython's wasm32 port (npm @micropython/micropython-webassembly-
// pyscript), for tests/test_heap_budget_wasm32.py:
//   node driver.mjs PKG ROOT HEAP_KB node CONFIG.json DROP "mod mod ..."
//       one node's workload (harness.py); the modules are loaded first, one per call
//   node driver.mjs PKG ROOT HEAP_KB probe "mod mod ..."
//       the heap that loading these modules takes (after a collection)
// PKG: the package's micropython.mjs. ROOT: the firmware as .mpy files (lib/, boards/, ...),
// copied into the port's in-memory file system at /fw, where the node's ring and seq store
// live too; ROOT/wasm/: harness.mpy and its stand-ins, copied to /lib (on sys.path). The
// node's log goes to stdout; the last line is `RESULT {...}` (JSON). Every Python call below
// is a call of its own from JS: this port's GC collects only between them (harness.py).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [pkg, root, heapArg, mode, ...args] = process.argv.slice(2);
const heapK = Number(heapArg);
const { loadMicroPython } = await import(pathToFileURL(pkg).href);
const result = { heap_k: heapK, mode };
const say = (line) => process.stdout.write(line + "\n");

const mp = await loadMicroPython({ heapsize: heapK * 1024, stdout: say, stderr: say });

function copyTree(src, dst) {
  mp.FS.mkdirTree(dst);
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    const s = path.join(src, e.name);
    if (e.isDirectory()) copyTree(s, dst + "/" + e.name);
    else mp.FS.writeFile(dst + "/" + e.name, fs.readFileSync(s));
  }
}

copyTree(root, "/fw");
copyTree(path.join(root, "wasm"), "/lib");
mp.runPython("import sys; print('MPY', sys.implementation._mpy, sys.implementation.version)");

function grew(g) {
  // the heap's growth so far, and the first phase that needed it
  if (g > 0 && !result.grew_at) result.grew_at = phase;
  result.grew = Math.max(result.grew || 0, g);
  return g;
}
let phase = "install";

let h;
try {
  const gc = mp.pyimport("gc");
  gc.collect();
  const before = gc.mem_alloc();
  h = mp.pyimport("harness");
  grew(h.install(mode === "node" ? Number(args[1]) : 0));
  gc.collect();
  const base = h.alloc();
  result.harness_bytes = base - before; // the harness's own code and data
  if (mode === "probe") {
    phase = "load";
    grew(h.load(args[0]));
    gc.collect();
    result.code_bytes = h.alloc() - base;
  } else {
    mp.FS.writeFile("/fw/cfg.json", fs.readFileSync(args[0]));
    phase = "config";
    grew(h.config("/fw/cfg.json"));
    for (const m of (args[2] || "").split(" ").filter(Boolean)) {
      phase = "load " + m;
      grew(h.load(m));
    }
    phase = "build";
    const b = h.build();
    if (b < 0) result.code = -b;
    else {
      grew(b);
      const tick = h.tick;
      let ticks = 0;
      let r = 0;
      while (r >= 0 && ticks < 100000) {
        phase = "tick " + (ticks + 1);
        r = tick();
        ticks++;
      }
      grew(h.grew);
      result.ticks = ticks;
      result.code = r === -1 ? h.code() : null;
      result.virtual_ms = h.clock.ms;
      result.requests = h.net.requests;
      result.lost = h.net.lost;
    }
  }
  result.live = h.live;
  result.peak = h.peak;
  result.most = h.most;
  gc.collect();
  result.alloc_end = gc.mem_alloc();
} catch (e) {
  result.error = String(e && e.message ? e.message : e);
}
say("RESULT " + JSON.stringify(result));
