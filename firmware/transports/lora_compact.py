# Compact commands in a LoRa ack (docs/protocol-lora.md §8), loaded by lora_client only
# when an ack carries commands (most LoRa nodes never get one: no heap for them).
#
# Where the CoAP 2.04 payload {1: time, 2: [[cid, name, args, exp], ...]} would break the
# dwell limit (24 bytes at SF10), the gateway sends the commands under key 3, each
# [cid, op, arg, exp] ([cid, op, exp] for an op without argument), op an index into
# COMMANDS, maybe without the time. expand() gives node.py the 2.04 payload it knows, so
# node.py (time first, then exp against the node's clock) stays as it is.
import cbor

try:
    from micropython import const
except ImportError:  # CPython host tests

    def const(x):  # type: ignore[misc]  # stands in for the stub's generic const
        return x


_COMPACT = const(3)  # the ack body's key of the compact commands

# op index -> (name, args key of the one positional argument or None, the values the
# argument indexes or None). Kept equal to the gateway's machi_gateway/lora/profiles.json
# "commands" (tests/mp/test_lora_client.py).
COMMANDS = (("on", None, None), ("off", None, None), ("dim", "level", None),
            ("schedule", "mode", ("auto", "on", "off")), ("interval", "s", None))


# An ack body -> the same body with key 3 turned into key 2 [cid, name, args, exp]. An item
# is [cid, op, exp] or [cid, op, arg, exp]: an op this table does not know gets its index
# as the name and no args (node.py answers err:unknown, whatever its argument was); a
# known op with the wrong number of elements, or an item in CoAP form, passes as it is
# (node.py refuses what is malformed); a value index out of range passes as is (the app
# refuses it).
def expand(body):
    try:
        m = cbor.loads(body)
    except cbor.CBORError:
        return body
    if not isinstance(m, dict) or not isinstance(m.get(_COMPACT), list):
        return body
    cmds = m.pop(_COMPACT)
    for i in range(len(cmds)):
        c = cmds[i]
        if not isinstance(c, list) or not 3 <= len(c) <= 4 or not isinstance(c[1], int):
            continue
        if not 0 <= c[1] < len(COMMANDS):
            cmds[i] = [c[0], c[1], {}, c[-1]]
            continue
        op = COMMANDS[c[1]]
        if op[1] is None and len(c) == 3:
            cmds[i] = [c[0], op[0], {}, c[2]]
        elif op[1] is not None and len(c) == 4:
            v = c[2]
            if op[2] and isinstance(v, int) and 0 <= v < len(op[2]):
                v = op[2][v]
            cmds[i] = [c[0], op[0], {op[1]: v}, c[3]]
    m[2] = cmds
    return cbor.dumps(m)
