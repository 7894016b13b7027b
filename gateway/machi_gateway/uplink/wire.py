"""The batch body and the cloud's answer (docs/protocol.md §3), as CBOR.

Two forms of the same batch (``[uplink] format``):

- columns (:func:`to_columns`): one array per field and the measurements grouped into
  series (docs/protocol.md §3, docs/gateway.md "Uplink format"): 2.5x smaller and ~6x
  cheaper for the cloud to decode. The stored bodies are decoded once, in one CBOR
  array, refusing the tags the cloud's decoder refuses, and every value is checked to be
  one the columns can carry, so a body that is damaged or of a shape columns cannot
  express is found before anything is sent.
- readings (:func:`encode_batch` of a batch without columns): a queued reading's stored
  body already is its CBOR batch item (byte for byte what ``cbor2.dumps(reading.to_wire())``
  writes, see :func:`machi_gateway.model.encode_wire`), so the batch is the map's head, an
  array head and the stored bodies one after the other, unseen: :func:`looks_intact` is
  the cheap check every item passes before it joins a batch, :func:`well_formed` the full
  one, run only when the cloud refuses such a batch as malformed.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import chain, count, repeat
from operator import itemgetter
from typing import Any

import cbor2

from ..errors import UplinkUnavailable
from ..model import Reading, cbor_head, encode_wire, identity_prefix
from ..store import DeadLetter, Queued
from .base import Batch, BatchAnswer

_dumps = cbor2.dumps
_DECODE_ERRORS = (cbor2.CBORDecodeError, ValueError, TypeError, KeyError, AttributeError,
                  OverflowError, RecursionError, MemoryError)


def encode_batch(batch: Batch) -> bytes:
    """``{gateway, batch_id, columns}`` if the batch has columns, else ``{gateway,
    batch_id, readings[...]}`` splicing the bodies; text keys, exactly as cbor2 writes it."""
    head = b"".join((b"\xa3", _dumps("gateway"), _dumps(batch.gateway), _dumps("batch_id"),
                     _dumps(batch.batch_id)))
    if batch.columns is not None:
        return b"".join((head, _dumps("columns"), batch.columns))
    items = batch.readings
    return b"".join((head, _dumps("readings"), cbor_head(0x80, len(items)),
                     *[q.body for q in items]))


# ---- columns -----------------------------------------------------------------------------
#
# The stored bodies are decoded with one cbor2 call (its C loop) and the columns built with
# map/zip/chain over the decoded maps, not a Python loop per measurement
# (bench/gateway_uplink.py). The decoder refuses every tag the store never writes and the
# cloud may refuse a whole batch for (`_SEMANTIC`). Every value
# is then checked to be plain CBOR (a number, text, boolean or null): those are encoded
# again exactly as they were decoded, and the cloud's decoder takes them, so a batch built
# here is not refused whole for a stored body; a value the cloud finds wrong (a bad unit, a
# NaN) rejects that reading only, as in the row form. If anything in the batch does not
# fit, each body is tried alone to find which.

def _never_written(tag: int) -> Callable[..., Any]:
    def refuse(*_: Any) -> Any:
        raise cbor2.CBORDecodeError(f"CBOR tag {tag}, which the store never writes (its "
                                    "integers fit in 64 bits; it shares no values)")
    return refuse


# bignums (2, 3), shared values (28, 29) and string references (25, 256): a stored body
# holding one is damage. The cloud refuses a whole batch for the last four (and for a bignum
# over 1024 bytes), and in the one array decoded at once a reference in one body would
# reach into another's.
_SEMANTIC = {tag: _never_written(tag) for tag in (2, 3, 25, 28, 29, 256)}
_PLAIN = frozenset({int, float, str, bool, type(None)})
_KINDS = ("v", "vs", "vb")
_get = dict.get
_item = dict.__getitem__
_name = itemgetter("n")


class _Unfit(Exception):
    """A stored body the columns cannot carry; the message says why (its dead-letter
    reason)."""


def to_columns(items: Sequence[Queued]) -> tuple[list[Queued], bytes | None,
                                                 list[tuple[Queued, str]]]:
    """The CBOR of the ``"columns"`` map of ``items``: ``(fit, columns, unfit)``, where
    ``columns`` holds the ``fit`` items (None if there are none) and ``unfit`` pairs each
    item that cannot be sent with the reason (it must go to dead letters); any other item
    stays queued for a later batch. Never raises: a stored body must not stop the uplink."""
    try:
        return list(items), _dumps(_columns(items, _decode(items))), []
    except (_Unfit, cbor2.CBOREncodeError, *_DECODE_ERRORS):
        pass
    fit: list[Queued] = []
    unfit: list[tuple[Queued, str]] = []
    first: bytes | None = None
    for q in items:
        alone = _alone(q)
        if isinstance(alone, str):
            unfit.append((q, alone))
        else:
            fit.append(q)
            first = alone if first is None else first
    if first is None:
        return fit, None, unfit
    try:
        return fit, _dumps(_columns(fit, _decode(fit))), unfit
    except (_Unfit, cbor2.CBOREncodeError, *_DECODE_ERRORS):
        # Bodies that fit alone but not together: the decoder above leaves nothing for
        # one body to share with another, so this is a guard, not a path. The first
        # goes alone, the others stay queued for the next batch.
        return fit[:1], first, unfit


def _alone(item: Queued) -> bytes | str:
    """The columns of ``item`` alone, or why it cannot be sent as columns."""
    try:
        return _dumps(_columns([item], _decode([item])))
    except _Unfit as exc:
        return str(exc)
    except cbor2.CBORDecodeError as exc:
        return f"corrupt queue body: not CBOR ({exc})"
    except (cbor2.CBOREncodeError, *_DECODE_ERRORS) as exc:
        return f"corrupt queue body: {type(exc).__name__}: {exc}"


def _decode(items: Sequence[Queued]) -> list[Any]:
    """The decoded bodies of ``items``: one array of them, decoded at once. A body that
    is cut short or overlong shifts those after it, which the identity check of
    :func:`_columns` (or the trailing bytes) then catches."""
    bodies = [q.body for q in items]
    if set(map(type, bodies)) != {bytes}:
        raise _Unfit("corrupt queue body: not a byte string")
    blob = cbor_head(0x80, len(bodies)) + b"".join(bodies)
    fp = io.BytesIO(blob)
    docs: list[Any] = cbor2.CBORDecoder(fp, semantic_decoders=_SEMANTIC).decode()
    if fp.tell() != len(blob):
        raise _Unfit("corrupt queue body: bytes after its CBOR map")
    return docs


def _columns(items: Sequence[Queued], docs: list[Any]) -> dict[str, Any]:
    """The columns of ``items``, whose bodies decoded to ``docs``; raises :class:`_Unfit`."""
    devices = [q.device for q in items]
    seqs = [q.seq for q in items]
    if (set(map(type, docs)) != {dict} or set(map(type, devices)) != {str}
            or set(map(type, seqs)) != {int} or min(seqs) < 0 or max(seqs) >= 1 << 64):
        raise _Unfit("corrupt queue body: not a reading map, or the queue row has no identity")
    if (list(map(_get, docs, repeat("device"))) != devices
            or list(map(_get, docs, repeat("seq"))) != seqs):
        raise _Unfit("corrupt queue body: its device or seq is not the queue row's")
    ms = list(map(_get, docs, repeat("m")))
    if set(map(type, ms)) != {list}:
        raise _Unfit('corrupt queue body: its "m" is not an array')
    return {
        "device": devices, "seq": seqs,
        "time": _plain(list(map(_get, docs, repeat("time"))), "time"),
        "received": _plain(list(map(_get, docs, repeat("received"))), "received"),
        "transport": _plain(list(map(_get, docs, repeat("transport"), repeat("unknown"))),
                            "transport"),
        "m": _series(ms),
    }


class _Irregular(Exception):
    """The readings' measurements are not regular enough for :func:`_by_shape`."""


def _series(ms: list[Any]) -> list[dict[str, Any]]:
    """The measurements of readings ``ms`` as series: by reading shape if regular (the
    usual case, fast), else measurement by measurement (:func:`_by_metric`), which also
    says why a body does not fit."""
    try:
        return _by_shape(ms)
    except (_Irregular, _Unfit, *_DECODE_ERRORS):
        return _by_metric(ms)


def _by_shape(ms: list[Any]) -> list[dict[str, Any]]:
    """Series of readings grouped by their metric names in order (a device type's
    readings look alike), a group's measurements then taken position by position: a few
    C-level passes per position rather than Python per measurement. Any irregularity
    (a name twice in a reading, units or keys that differ at one position, ...) raises."""
    n = len(ms)
    shapes = list(map(tuple, map(map, repeat(_name), ms)))
    first: dict[tuple[Any, ...], int] = {}
    group = list(map(first.setdefault, shapes, count()))
    parts: dict[tuple[Any, ...], list[tuple[list[int], list[Any]]]] = {}
    if len(first) == 1:
        _positions(shapes[0], list(range(n)), ms, parts)
    else:
        order = sorted(range(n), key=group.__getitem__)  # stable: readings in order
        sizes = Counter(group)
        at = 0
        for shape, g in first.items():
            idx = order[at:at + sizes[g]]
            at += sizes[g]
            _positions(shape, idx, list(map(ms.__getitem__, idx)), parts)
    out = []
    for (name, unit, kind), found in parts.items():
        if len(found) == 1:
            idx, values = found[0]
        else:  # a metric of several shapes (e.g. "bat" of every device type)
            idx = list(chain.from_iterable(f[0] for f in found))
            values = list(chain.from_iterable(f[1] for f in found))
            order = sorted(range(len(idx)), key=idx.__getitem__)
            idx, values = list(map(idx.__getitem__, order)), list(map(values.__getitem__, order))
        s: dict[str, Any] = {"n": name} if unit is None else {"n": name, "u": unit}
        s[kind] = values
        if len(idx) != n:
            s["i"] = idx
        out.append(s)
    return out


def _positions(shape: tuple[Any, ...], idx: list[int], ms: list[Any],
               parts: dict[tuple[Any, ...], list[tuple[list[int], list[Any]]]]) -> None:
    """Add to ``parts`` the series of readings ``idx`` (measurements ``ms``), all of the
    metric names ``shape``."""
    if len(set(shape)) != len(shape) or set(map(type, shape)) - {str}:
        raise _Irregular
    for name, column in zip(shape, zip(*ms, strict=True), strict=True):
        units = set(map(_get, column, repeat("u")))
        unit = units.pop()
        if units or set(map(len, column)) != {2 if unit is None else 3} or (
                unit is not None and type(unit) is not str):
            raise _Irregular  # keys are exactly n, (u), and one value key
        kind = _kind(tuple(column[0]))
        values = list(map(itemgetter(kind), column))
        if set(map(type, values)) - _PLAIN:
            raise _Irregular
        parts.setdefault((name, unit, kind), []).append((idx, values))


def _plain(values: list[Any], what: str) -> list[Any]:
    """``values`` if every one is plain CBOR (see above), else :class:`_Unfit`."""
    odd = set(map(type, values)) - _PLAIN
    if odd:
        raise _Unfit(f"corrupt queue body: a {what} is a {odd.pop().__name__}, which is "
                    "not a plain CBOR value")
    return values


def _kind(keys: tuple[Any, ...]) -> str:
    """The value key (v, vs or vb) of a measurement map with ``keys``."""
    present = [k for k in _KINDS if k in keys]
    if "n" not in keys or len(present) != 1:
        shown = ", ".join(map(str, keys)) or "none"
        raise _Unfit(f"corrupt queue body: a measurement has keys {shown}; it needs n and "
                    "exactly one of v, vs, vb")
    return present[0]


def _by_metric(ms: list[Any]) -> list[dict[str, Any]]:
    """The measurements of readings ``ms`` as series, one per (name, unit, value key) in
    the order they first appear: dense if every reading has it, else with indices."""
    flat = list(chain.from_iterable(ms))
    if not flat:
        return []
    if set(map(type, flat)) != {dict}:
        raise _Unfit("corrupt queue body: a measurement is not a map")
    shapes = list(map(tuple, flat))
    kind_of = {keys: _kind(keys) for keys in set(shapes)}
    kinds = list(map(kind_of.__getitem__, shapes))
    names = list(map(_item, flat, repeat("n")))
    units = list(map(_get, flat, repeat("u")))
    if set(map(type, names)) != {str} or set(map(type, units)) - {str, type(None)}:
        raise _Unfit("corrupt queue body: a measurement name or unit is not a text")
    values = _plain(list(map(_item, flat, kinds)), "measurement value")
    owner = list(chain.from_iterable(map(repeat, range(len(ms)), map(len, ms))))
    keys: list[tuple[Any, ...]] = list(zip(names, units, kinds, strict=True))
    try:
        return _grouped(keys, owner, values, len(ms))
    except _Twice:  # rare: a reading has a metric twice
        return _grouped(_nth(keys, owner), owner, values, len(ms))


class _Twice(Exception):
    """A reading has the same series key twice."""


def _grouped(keys: list[tuple[Any, ...]], owner: list[int], values: list[Any],
             n: int) -> list[dict[str, Any]]:
    """Series of the measurements with ``keys`` (name, unit, value key, ...) of readings
    ``owner``; :class:`_Twice` if a reading has the same key twice (a series names a
    reading once)."""
    first: dict[tuple[Any, ...], int] = {}
    group = list(map(first.setdefault, keys, count()))
    order = sorted(range(len(keys)), key=group.__getitem__)  # stable: readings in order
    owners = list(map(owner.__getitem__, order))
    ordered = list(map(values.__getitem__, order))
    sizes = Counter(group)
    every = list(range(n))
    out: list[dict[str, Any]] = []
    at = 0
    for key, g in first.items():
        end = at + sizes[g]
        idx = owners[at:end]
        s: dict[str, Any] = {"n": key[0]}
        if key[1] is not None:
            s["u"] = key[1]
        s[key[2]] = ordered[at:end]
        if idx != every:
            if len(set(idx)) != len(idx):
                raise _Twice
            s["i"] = idx
        out.append(s)
        at = end
    return out


def _nth(keys: list[tuple[Any, ...]], owner: list[int]) -> list[tuple[Any, ...]]:
    """``keys`` with each one's occurrence number within its reading: a metric a reading
    has twice goes into two series (the cloud then rejects that reading, as it would the
    same reading as a map)."""
    seen: Counter[tuple[Any, ...]] = Counter()
    out = []
    for key, k in zip(keys, owner, strict=True):
        seen[(k, key)] += 1
        out.append((*key, seen[(k, key)]))
    return out


def looks_intact(item: Queued) -> bool:
    """Cheap (~0.5 µs): the body starts as the batch item of its own row, ``{"device",
    "seq", ...}`` with the row's identity. Catches a body that is not a map or lost its
    identity, for which the cloud would refuse the whole batch; damage further in is
    caught by :func:`well_formed` if the cloud refuses the batch."""
    device, seq, body = item.device, item.seq, item.body
    if (type(device) is not str or type(seq) is not int or type(body) is not bytes
            or not 0 <= seq < 2**64):
        return False
    return body.startswith(identity_prefix(device, seq))


def well_formed(item: Queued) -> bool:
    """Full check: the body is byte for byte what the store writes for the reading it
    decodes to (:func:`machi_gateway.model.encode_wire`), with the row's identity.

    Well-formed CBOR is not enough: cbor2 decodes shared values and string references
    (tags 28/29, 25/256), non-text map keys and bignums of any size, all of which the
    cloud's decoder refuses for the whole batch (400), so such a body would be kept and
    the batch refused for ever. The store's own encoding has none of them; the decoder
    refuses the tags and bignums, and the comparison with the store's encoding the rest."""
    try:
        fp = io.BytesIO(item.body)
        doc: Any = cbor2.CBORDecoder(fp, semantic_decoders=_SEMANTIC).decode()
        reading = Reading.from_wire(doc)
    except _DECODE_ERRORS:
        return False
    return (fp.tell() == len(item.body) and reading.key == (item.device, item.seq)
            and encode_wire(reading) == item.body)


def _bad(why: str) -> UplinkUnavailable:
    return UplinkUnavailable(f"malformed cloud answer: {why}")


def decode_answer(body: bytes) -> BatchAnswer:
    """Parse the 200 answer; a malformed one is treated as no answer (retry later)."""
    try:
        doc: Any = cbor2.loads(body)
    except cbor2.CBORDecodeError as exc:
        raise _bad("not CBOR") from exc
    if not isinstance(doc, dict):
        raise _bad("not a map")
    acked_raw = doc.get("acked", [])
    rejected_raw = doc.get("rejected", [])
    if not isinstance(acked_raw, list) or not isinstance(rejected_raw, list):
        raise _bad("acked/rejected are not arrays")
    acked: list[tuple[str, int]] = []
    for pair in acked_raw:
        if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str)
                or isinstance(pair[1], bool) or not isinstance(pair[1], int)):
            raise _bad(f"acked entry {pair!r}")
        acked.append((pair[0], pair[1]))
    rejected: list[DeadLetter] = []
    for item in rejected_raw:
        if (not isinstance(item, dict) or not isinstance(item.get("device"), str)
                or isinstance(item.get("seq"), bool) or not isinstance(item.get("seq"), int)):
            raise _bad(f"rejected entry {item!r}")
        rejected.append(DeadLetter(item["device"], item["seq"], str(item.get("reason", ""))))
    return BatchAnswer(batch_id=str(doc.get("batch_id", "")), acked=tuple(acked),
                       rejected=tuple(rejected))
