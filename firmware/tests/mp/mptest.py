# Minimal test harness for scripts that run under the real MicroPython unix port.
# A test script defines functions named test_*; run(globals()) calls each, prints one line
# per test and exits non-zero if any failed, so the pytest wrapper sees the result.
import sys

VECTORS = None  # set by run(): absolute path of tests/vectors


def vectors_dir():
    return VECTORS


def load_json(name):
    import json
    with open(VECTORS + "/" + name) as f:
        return json.load(f)


def unhex(s):
    import binascii
    return binascii.unhexlify(s)


def rmtree(path):
    # a test's "flash" directory, removed with everything in it (no shutil here)
    import os
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        try:
            os.remove(p)
        except OSError:
            rmtree(p)
    os.rmdir(path)


_IMAGES = {}


def image(label, size):
    # a deterministic firmware image (the vectors' makers build the same bytes), made once
    # per (label, size): a fresh 20 KB bytes per use would fragment a small heap
    key = (label, size)
    if key not in _IMAGES:
        import hashlib
        out = bytearray()
        i = 0
        while len(out) < size:
            out += hashlib.sha256(("%s:%d" % (label, i)).encode()).digest()
            i += 1
        _IMAGES[key] = bytes(out[:size])
    return _IMAGES[key]


def eq(a, b, msg=""):
    if a != b:
        raise AssertionError("%r != %r %s" % (a, b, msg))


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError("%s not raised by %r%r" % (exc, fn, args))


def run(ns):
    global VECTORS
    # argv: script, vectors dir
    VECTORS = sys.argv[1] if len(sys.argv) > 1 else "../../../tests/vectors"
    names = sorted(k for k in ns if k.startswith("test_"))
    failed = 0
    for name in names:
        try:
            ns[name]()
            print("PASS", name)
        except Exception as e:
            failed += 1
            print("FAIL", name)
            sys.print_exception(e)
    print("%d passed, %d failed" % (len(names) - failed, failed))
    if not names:
        print("no tests found")
        sys.exit(2)
    sys.exit(1 if failed else 0)
