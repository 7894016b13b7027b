"""The ingest hot path: `batch.parse_batch` with a fast lane for well-formed readings.

`batch.py` is the reference: it defines what is valid and words every error. Nearly every
reading a gateway sends has the same shape (known device ids, the same few metric/unit
pairs, plain numbers), so this module checks that shape with as little Python as possible:
device ids and (metric, unit) pairs are validated once per batch and then looked up,
types are compared exactly, and tuples are built without the NamedTuple constructors.
A batch with anything the fast lane does not accept at once (a malformed envelope, one
reading that is odd or invalid) is parsed again, entirely, by `batch.parse_batch`, which
decides and words every rejection and error; so a gateway's usual batch takes the fast
lane, and a batch with a rejected reading costs the column check, the fast lane and the
reference. Before the fast lane, a batch whose readings all carry plain numbers (`v`) is
checked column by column with no Python loop per reading (`_whole_batch`; it leaves at
the first type it does not take) and kept as those columns (`batch.ReadingColumns`): no
`Reading` is built unless someone looks at one, and SQLite writes its rows straight from
the columns (`storage.rows.SortedColumns`). A columnar batch (docs/protocol.md §3) is
checked by `columnar.parse_columns` the same way, column by column. The fast lane accepts only
what the reference accepts, with the same values: a check added to `batch.py` must be
mirrored here, and `tests/test_fastbatch.py` (every single-field edge case, and random
batches) fails until it is.
"""

from __future__ import annotations

from itertools import chain, islice, repeat
from operator import eq
from typing import Any

from . import batch as ref
from .batch import Batch, Measurement, Reading, ReadingColumns
from .columnar import NUMBER as _NUMBER
from .columnar import parse_columns, readings_ok, values_ok
from .settings import GATEWAY_ID

_new = tuple.__new__
_DEVICE = ref.DEVICE_ID.match
_METRIC = ref.METRIC_NAME.match
_GATEWAY = GATEWAY_ID.match
# the reference's limits (one definition), as module names of their own for the hot loop
_MAX_SEQ = ref.MAX_SEQ
_INT64 = ref._INT64
_MAX_TIME = ref._MAX_TIME
_MAX_UNIT = ref._MAX_UNIT
_MAX_TEXT = ref._MAX_TEXT
_MAX_TRANSPORT = ref._MAX_TRANSPORT
_get = dict.get
_has = dict.__contains__
_UNIT = frozenset((str, type(None)))


def parse_batch(body: bytes, *, max_readings: int) -> Batch:
    """As `batch.parse_batch` (same result, same errors), faster on the common shape."""
    obj = ref.decode_cbor(body)
    if type(obj) is not dict:
        return ref.parse_batch(body, max_readings=max_readings)
    gateway = obj.get("gateway")
    batch_id = obj.get("batch_id")
    items = obj.get("readings")
    if (
        type(gateway) is not str
        or not _GATEWAY(gateway)
        or type(batch_id) is not str
        or not 1 <= len(batch_id) <= 64
    ):
        return ref.parse_batch(body, max_readings=max_readings)
    if "columns" in obj and "readings" not in obj:
        columns = parse_columns(obj["columns"], max_readings)
        if columns is None:  # anything not plainly valid: the reference decides
            return ref.parse_batch(body, max_readings=max_readings)
        return Batch(gateway=gateway, batch_id=batch_id, readings=columns, rejected=())
    if type(items) is not list or len(items) > max_readings or "columns" in obj:
        return ref.parse_batch(body, max_readings=max_readings)
    whole = _whole_batch(items)
    if whole is not None:
        return Batch(gateway=gateway, batch_id=batch_id, readings=whole, rejected=())
    devices: set[str] = set()  # device ids seen valid in this batch
    pairs: set[tuple[str, str | None]] = set()  # (metric, unit) pairs seen valid
    readings: list[Reading] = []
    for item in items:
        r = None
        if type(item) is dict:
            device = item.get("device")
            seq = item.get("seq")
            if type(device) is str and type(seq) is int:
                r = _fast_reading(device, seq, item, devices, pairs)
        if r is None:  # the reference words the rejection or the error
            return ref.parse_batch(body, max_readings=max_readings)
        readings.append(r)
    return Batch(gateway=gateway, batch_id=batch_id, readings=tuple(readings), rejected=())


def _whole_batch(items: list[Any]) -> ReadingColumns | None:
    """The readings, as columns, if every one is plainly valid with numbers (`v`) only,
    checked field by field across the whole batch with C-level loops (`map`, `set`, `min`,
    `sum`) and one Python step per distinct device, transport, metric or unit; else None
    (then the reading by reading lane decides). Never accepts what `batch._reading` would reject.
    The value types come first: a batch with text or booleans (`vs`, `vb`) leaves early."""
    n = len(items)
    try:
        devices: list[Any] = list(map(_get, items, repeat("device")))
        seqs: list[Any] = list(map(_get, items, repeat("seq")))
        times: list[Any] = list(map(_get, items, repeat("time")))
        received: list[Any] = list(map(_get, items, repeat("received")))
        transports: list[Any] = list(map(_get, items, repeat("transport"), repeat("unknown")))
        ms: list[Any] = list(map(_get, items, repeat("m")))
    except TypeError:  # an item is not a map
        return None
    if not set(map(type, ms)) <= {list}:
        return None
    flat = list(chain.from_iterable(ms))
    try:  # dict.get refuses anything but a map
        names: list[Any] = list(map(_get, flat, repeat("n")))
        units: list[Any] = list(map(_get, flat, repeat("u")))
        values: list[Any] = list(map(_get, flat, repeat("v")))
        name_set, unit_set = set(names), set(units)
    except TypeError:  # a measurement that is not a map, or an unhashable n or u
        return None
    kinds = set(map(type, values))
    if (
        not set(map(type, name_set)) <= {str}
        or not set(map(type, unit_set)) <= _UNIT
        or not kinds <= _NUMBER
        or not values_ok(values, kinds)
    ):
        return None
    if not readings_ok(devices, seqs, times, received, transports):
        return None
    # no key beyond n, v and u (the usual case) rules out vs and vb without looking
    keys = sum(map(len, flat))
    if keys != 2 * len(flat) + len(units) - units.count(None) and (
        any(map(_has, flat, repeat("vs"))) or any(map(_has, flat, repeat("vb")))
    ):
        return None
    if not all(map(_METRIC, name_set)) or not all(
        u is None or 1 <= len(u) <= _MAX_UNIT for u in unit_set
    ):
        return None
    per = set(lens := list(map(len, ms)))
    if len(per) == 1 and n:  # k each
        k = lens[0]
        if k == 2:  # the usual case, without a set per reading
            twice = any(map(eq, names[::2], names[1::2]))
        else:
            twice = k > 1 and set(map(len, map(set, zip(*[iter(names)] * k, strict=True)))) != {k}
    else:
        twice = any(len(set(g)) != len(g) for g in _split(names, lens))
    if twice:
        return None  # a metric twice: batch._reading words it
    return ReadingColumns(devices, seqs, times, received, transports, names, units, values, lens)


def _split(flat: list[Any], lens: list[int]) -> list[tuple[Any, ...]]:
    it = iter(flat)
    return [tuple(islice(it, k)) for k in lens]


def _fast_reading(
    device: str,
    seq: int,
    item: dict[Any, Any],
    devices: set[str],
    pairs: set[tuple[str, str | None]],
) -> Reading | None:
    """The reading if it plainly passes every check of `batch._reading`, else None (then
    `batch._reading` decides). Never accepts what `batch._reading` would reject."""
    if device not in devices:
        if not _DEVICE(device):
            return None
        devices.add(device)
    if not 0 <= seq < _MAX_SEQ:
        return None
    t: Any = item.get("time")
    kind = type(t)
    if (kind is not float and kind is not int) or not 0 <= t < _MAX_TIME:
        return None
    rc: Any = item.get("received")
    if rc is not None:
        kind = type(rc)
        if (kind is not float and kind is not int) or not 0 <= rc < _MAX_TIME:
            return None
    transport = item.get("transport", "unknown")
    if type(transport) is not str or not 1 <= len(transport) <= _MAX_TRANSPORT:
        return None
    ms = item.get("m")
    if type(ms) is not list:
        return None
    out: list[Measurement] = []
    for m in ms:
        if type(m) is not dict:
            return None
        name = m.get("n")
        unit = m.get("u")
        if type(name) is not str or (unit is not None and type(unit) is not str):
            return None
        pair = (name, unit)
        if pair not in pairs:
            if not _METRIC(name) or (unit is not None and not 1 <= len(unit) <= _MAX_UNIT):
                return None
            pairs.add(pair)
        if "v" in m:
            if "vs" in m or "vb" in m:
                return None
            value = m["v"]
            kind = type(value)
            if kind is float:
                if value - value != 0.0:  # inf or nan
                    return None
            elif kind is not int or not -_INT64 <= value < _INT64:
                return None
        elif "vs" in m:
            if "vb" in m:
                return None
            value = m["vs"]
            if type(value) is not str or len(value) > _MAX_TEXT:
                return None
        elif "vb" in m:
            value = m["vb"]
            if type(value) is not bool:
                return None
        else:
            return None
        out.append(_new(Measurement, (name, unit, value)))
    if len(out) > 1 and len({m[0] for m in out}) != len(out):
        return None  # a metric twice: batch._reading words it
    return _new(Reading, (device, seq, t, rc, transport, tuple(out)))
