"""Compact commands in the LoRa ack (docs/protocol-lora.md §8).

At SF10 an AS923 downlink is at most 24 bytes; the CoAP form of the smallest command
(``[cid, "on", {}, exp]`` next to the time) makes a 29-byte ack. So a LoRa ack may carry
its commands under key 3 instead, each ``[cid, op, arg?, exp]``: ``op`` the index of the
command in ``profiles.json`` "commands", its one argument positional (an index into the
op's ``values`` when it has them), ``exp`` unchanged (absolute unix time). A command the
table cannot express (config, update, a float level, another key) rides in the same list
in its CoAP form ``[cid, name, args, exp]`` (the node tells them apart by the type of item
1), so order is kept. The node (``firmware/transports/lora_compact.py``) turns key 3 back
into the 2.04 payload node.py reads.

The ack body is the first of these that fits the dwell limit: the CoAP 2.04 payload
``{1: time, 2: [...]}``; ``{1: time, 3: [...]}``; ``{3: [...]}`` (no time: the node keeps
the clock it learned from earlier acks, and one without a clock refuses a command with
``exp`` as ``err:stale``, as over CoAP). The command queue counts commands against the
last, smallest form (:func:`extra`), so every command it lets through is in the ack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import cbor2

from ..ingress.base import ACK_COMMANDS, ACK_TIME, WireCommand
from .profiles import table_json

ACK_COMPACT = 3
TIME_ONLY_LEN = 7  # {1: time} with a 4-byte time (a1 01 1a xxxxxxxx), until 2106
_ARG_LIMIT = 2**32


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    arg: str | None = None  # the args key of the one argument; None: no arguments
    values: tuple[str, ...] = ()  # the argument is an index into these


@cache
def ops() -> tuple[Op, ...]:
    """The shipped op table (``profiles.json`` "commands"), in index order."""
    out = tuple(Op(name=str(c["name"]), arg=c.get("arg"), values=tuple(c.get("values", ())))
                for c in table_json().get("commands", ()))
    if len({o.name for o in out}) != len(out) or len(out) > 24:
        raise ValueError("profiles.json commands: at most 24, each name once (one CBOR byte)")
    return out


def compact(cmd: WireCommand) -> list[Any]:
    """One command as an item of key 3: compact when the table can express its args
    exactly, else its CoAP form."""
    cid, name, args, exp = cmd
    for i, op in enumerate(ops()):
        if op.name != name:
            continue
        if op.arg is None:
            if not args:
                return [cid, i, exp]
        elif len(args) == 1 and op.arg in args:
            v = args[op.arg]
            if op.values:
                if isinstance(v, str) and v in op.values:
                    return [cid, i, op.values.index(v), exp]
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _ARG_LIMIT:
                return [cid, i, v, exp]
        break
    return [cid, name, dict(args), exp]


def expand(item: Sequence[Any]) -> list[Any]:
    """A key-3 item back in its CoAP form (what the node does; for tests and tools)."""
    if not isinstance(item[1], int):
        return list(item)
    op = ops()[item[1]]
    if op.arg is None:
        return [item[0], op.name, {}, *item[2:]]
    v = item[2]
    return [item[0], op.name, {op.arg: op.values[v] if op.values else v}, *item[3:]]


def extra(commands: Sequence[WireCommand]) -> int:
    """Bytes ``commands`` add to a time-only ack in their smallest form ``{3: [...]}``
    (which may be fewer than none: that form drops the time)."""
    if not commands:
        return 0
    body = cbor2.dumps({ACK_COMPACT: [compact(c) for c in commands]})
    return len(body) - TIME_ONLY_LEN


def bodies(time: int, commands: Sequence[WireCommand]) -> list[bytes]:
    """The ack bodies to try, in order of preference (the first that fits is sent)."""
    if not commands:
        return [cbor2.dumps({ACK_TIME: time})]
    full = [list(c) for c in commands]
    items = [compact(c) for c in commands]
    return [cbor2.dumps({ACK_TIME: time, ACK_COMMANDS: full}),
            cbor2.dumps({ACK_TIME: time, ACK_COMPACT: items}),
            cbor2.dumps({ACK_COMPACT: items})]
