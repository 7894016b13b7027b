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
