"""Column-wise checks: the fast lane for a columnar batch, and the range checks that
`fastbatch._whole_batch` shares.

A gateway's columnar batch (docs/protocol.md §3) already holds its readings as the columns
`batch.ReadingColumns` keeps, so the batch is checked with C-level loops over whole
columns (`map`, `set`, `min`, `max`, `sum`) plus one Python step per series and per
distinct device or transport not seen before. When every series carries numbers (`v`)
the readings are kept as those columns (no row item, no `Reading` is built); with text or
boolean series (`vs`, `vb`: a mixed fleet) they become `Reading`s with one Python step per
reading (`batch.readings_of`). Anything not plainly valid (a value or field the reference
would reject, a wrong shape) gets None, and `batch.parse_batch`, the reference, decides
and words every rejection and error on the expanded rows. The lane accepts only what the
reference accepts, with the same values: a check added to `batch._reading` or
`batch._columns` must be mirrored here, and `tests/test_columnar.py` fails until it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from itertools import chain, islice, repeat
from operator import lt
from typing import Any

from . import batch as ref
from .batch import Reading, ReadingColumns

_DEVICE = ref.DEVICE_ID.match
_METRIC = ref.METRIC_NAME.match
NUMBER = frozenset((int, float))  # the types a number (a value, a time) may have
_RECEIVED = NUMBER | {type(None)}
_ABSENT = object()
_KNOWN_MAX = 100_000
_DEVICES: set[str] = set()  # device ids and transports seen valid (`_known`)
_TRANSPORTS: set[str] = set()
# name, unit, values, i, value kind ("v", "vs" or "vb")
Series = tuple[str, "str | None", list[Any], "list[int] | None", str]


def parse_columns(columns: Any, max_readings: int) -> Sequence[Reading] | None:
    """The readings of a columnar batch's `columns` if every one is plainly valid (as
    `ReadingColumns` if every series holds numbers); else None (the reference decides)."""
    if type(columns) is not dict:
        return None
    devices = columns.get("device")
    if type(devices) is not list or len(devices) > max_readings:
        return None
    n = len(devices)
    seqs = _column(columns, "seq", n, _ABSENT)
    times = _column(columns, "time", n, _ABSENT)
    received = _column(columns, "received", n, [None] * n)
    transports = _column(columns, "transport", n, ["unknown"] * n)
    ms = columns.get("m")
    if seqs is None or times is None or received is None or transports is None:
        return None
    if type(ms) is not list or not set(map(type, ms)) <= {dict}:
        return None
    if not readings_ok(devices, seqs, times, received, transports):
        return None
    series = [c for c in map(_series, ms, repeat(n)) if c is not None]
    if len(series) != len(ms) or not _once_per_reading(series, n):
        return None
    if sum(len(s[2]) for s in series) > ref.VALUES_PER_READING * max_readings:
        return None
    names, units, values, lens = _flatten(series, n)
    if all(s[4] == "v" for s in series):
        return ReadingColumns(
            devices, seqs, times, received, transports, names, units, values, lens
        )
    return ref.readings_of(devices, seqs, times, received, transports, names, units, values, lens)


def _column(columns: dict[Any, Any], key: str, n: int, default: Any) -> list[Any] | None:
    """`columns[key]` if it is an array of n entries, `default` if the key is absent
    (`_ABSENT`: it is required), else None."""
    col = columns.get(key, default)
    if col is _ABSENT or type(col) is not list or len(col) != n:
        return None
    return col


def readings_ok(
    devices: list[Any],
    seqs: list[Any],
    times: list[Any],
    received: list[Any],
    transports: list[Any],
) -> bool:
    """Every reading's own fields pass `batch._reading`: one check per distinct device or
    transport not seen before, whole-column checks for the rest."""
    if (
        not set(map(type, seqs)) <= {int}
        or not set(map(type, times)) <= NUMBER
        or not set(map(type, received)) <= _RECEIVED
    ):
        return False
    if seqs and (min(seqs) < 0 or max(seqs) >= ref.MAX_SEQ or not times_ok(times)):
        return False
    try:
        if not times_ok(received):
            return False
    except TypeError:  # some readings have no receive time (None)
        if not times_ok([rc for rc in received if rc is not None]):
            return False
    try:  # distinct values (str hashes are cached)
        device_set, transport_set = set(devices), set(transports)
    except TypeError:  # an unhashable value (array or map) where a text belongs
        return False
    return _known(device_set, _DEVICES, _DEVICE) and _known(transport_set, _TRANSPORTS, _transport)


def _transport(value: str) -> bool:
    return 1 <= len(value) <= ref._MAX_TRANSPORT


def _known(values: set[Any], known: set[str], valid: Callable[[str], Any]) -> bool:
    """Every value is a text `valid` accepts. Those accepted are remembered in `known`
    (at most `_KNOWN_MAX`), so a gateway's devices are checked once, not in every batch:
    a regex per device costs more than all other checks of its readings."""
    new = values - known
    if not new:
        return True
    if not set(map(type, new)) <= {str} or not all(map(valid, new)):
        return False
    if len(known) + len(new) > _KNOWN_MAX:
        known.clear()
    known |= new
    return True


def _series(s: dict[Any, Any], n: int) -> Series | None:
    """(name, unit, values, indices, kind) of a series of plainly valid values, else None."""
    kinds = ref.value_keys(s)
    if len(kinds) != 1:
        return None
    kind = kinds[0]
    values = s[kind]
    if type(values) is not list or not _values_ok(kind, values):
        return None
    name, unit = s.get("n"), s.get("u")
    if type(name) is not str or not _METRIC(name):
        return None
    if unit is not None and (type(unit) is not str or not 1 <= len(unit) <= ref._MAX_UNIT):
        return None
    if "i" not in s:
        return (name, unit, values, None, kind) if len(values) == n else None
    indices = s["i"]
    if type(indices) is not list or len(indices) != len(values):
        return None
    if indices and (
        not set(map(type, indices)) <= {int}
        or indices[0] < 0
        or indices[-1] >= n
        or not all(map(lt, indices, islice(indices, 1, None)))
    ):
        return None
    return name, unit, values, indices, kind


def _values_ok(kind: str, values: list[Any]) -> bool:
    """The values pass `batch._measurement`'s check for their kind."""
    types = set(map(type, values))
    if kind == "v":
        return types <= NUMBER and values_ok(values, types)
    if kind == "vs":
        return types <= {str} and (not values or max(map(len, values)) <= ref._MAX_TEXT)
    return types <= {bool}


def _once_per_reading(series: list[Series], n: int) -> bool:
    """No reading gets one metric twice: series that share a name name disjoint readings
    (rare: a gateway makes one series per metric, unit and kind)."""
    names = [s[0] for s in series]
    if len(set(names)) == len(names):
        return True
    shared = {name for name, count in Counter(names).items() if count > 1}
    for name in shared:
        taken = list(chain.from_iterable(range(n) if s[3] is None else s[3]
                                         for s in series if s[0] == name))  # fmt: skip
        if len(set(taken)) != len(taken):
            return False
    return True


def _flatten(series: list[Series], n: int) -> tuple[list[Any], list[Any], list[Any], list[int]]:
    """Names, units, values and lens as `ReadingColumns` holds them: each reading's
    measurements in series order, reading after reading."""
    names_s = [s[0] for s in series]
    units_s = [s[1] for s in series]
    if all(s[3] is None for s in series):  # dense: every reading has every series
        values = list(chain.from_iterable(zip(*[s[2] for s in series], strict=True)))
        return names_s * n, units_s * n, values, [len(series)] * n
    counts = [len(s[2]) for s in series]
    ks = list(chain.from_iterable(range(n) if s[3] is None else s[3] for s in series))
    order = sorted(range(len(ks)), key=ks.__getitem__)  # stable: series order within a reading

    def pick(column: list[Any]) -> list[Any]:
        return list(map(column.__getitem__, order))

    names = pick(list(chain.from_iterable(map(repeat, names_s, counts))))
    units = pick(list(chain.from_iterable(map(repeat, units_s, counts))))
    values = pick(list(chain.from_iterable(s[2] for s in series)))
    per = Counter(ks)
    return names, units, values, list(map(per.get, range(n), repeat(0)))


def times_ok(values: list[Any]) -> bool:
    """Every value (int or float) is in [0, 1e11): the sum rules out NaN and infinities
    first, which min() and max() would not see."""
    if not values:
        return True
    try:
        total = sum(values)
    except OverflowError:  # an int too large for a float: the reading lane words it
        return False
    return bool(total - total == 0 and min(values) >= 0 and max(values) < ref._MAX_TIME)


def values_ok(values: list[Any], kinds: set[type]) -> bool:
    """Floats finite, ints in the 64-bit range (floats may be any finite size)."""
    if not values:
        return True
    try:
        total = sum(values)
    except OverflowError:
        return False
    if total - total != 0:  # NaN or an infinity somewhere (or a finite overflow: rare)
        return False
    ints = [v for v in values if type(v) is int] if int in kinds else ()
    return not ints or (min(ints) >= -ref._INT64 and max(ints) < ref._INT64)
