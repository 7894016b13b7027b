"""`rows.SortedColumns` against the per-reading helpers on random `ReadingColumns`.

The column path derives SQLite's `m` texts from one template per distinct (metric, unit)
shape, its latest rows without measurement rows when each device's readings come in key
order, and reorders nothing when the batch is in key order already. Each of those paths
is compared here with `m_text`, `newest` and `device_rows` of the same readings: mixed
fleets (readings with other metrics, sparse series), units with `%`, NULs and quotes,
batches in key order, grouped by device, interleaved, and with seqs falling.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from machi_cloud.batch import Measurement, Reading, ReadingColumns
from machi_cloud.storage import rows

T0 = 1795390000
units = st.none() | st.sampled_from(["Cel", "%RH", "%", "%%r]", 'a"%s', "x\x00", "é"]) | st.text()
values = (
    st.integers(-5, 5)
    | st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    | st.sampled_from([2**63 - 1, -(2**63), 0.0, -0.0, 21, 21.0, 1e-7, 1e22])
)
# a fleet: each device type its own metrics (with units); a reading has some or all
shapes = st.lists(
    st.lists(st.tuples(st.sampled_from(["temp", "hum", "bat", "fill", "B"]), units),
             max_size=3, unique_by=lambda m: m[0]),
    min_size=1, max_size=3,
)  # fmt: skip


@st.composite
def fleets(draw: Any) -> list[Reading]:
    """Readings of a few devices, each device with one shape (all of it, or a random part:
    sparse series), seqs counting up per device unless `falling`, in some order."""
    kinds = draw(shapes)
    n_devices = draw(st.integers(1, 5))
    shape_of = [draw(st.sampled_from(kinds)) for _ in range(n_devices)]
    sparse = draw(st.booleans())
    out = []
    for i in range(draw(st.integers(0, 30))):
        d = i % n_devices
        shape = shape_of[d]
        if sparse:
            shape = [m for m in shape if draw(st.booleans())]
        ms = tuple(Measurement(n, u, draw(values)) for n, u in shape)
        received = draw(st.none() | st.just(T0 + i + 0.5))
        out.append(Reading(f"dev-{d}", i // n_devices, T0 + i, received, "coap", ms))
    order = draw(st.sampled_from(["batch", "key", "shuffled", "falling"]))
    if order == "key":
        out.sort(key=lambda r: (r[0], r[1]))
    elif order == "shuffled":
        random.Random(draw(st.integers())).shuffle(out)
    elif order == "falling":
        out.reverse()
    return out


def as_columns(readings: list[Reading]) -> ReadingColumns:
    """The readings held as the fast lane holds them."""
    ms = [m for r in readings for m in r[5]]
    numbers: list[int | float] = [m[2] for m in ms]  # type: ignore[misc]  # `values` holds no other
    return ReadingColumns(
        [r[0] for r in readings], [r[1] for r in readings], [r[2] for r in readings],
        [r[3] for r in readings], [r[4] for r in readings], [m[0] for m in ms],
        [m[1] for m in ms], numbers, [len(r[5]) for r in readings],
    )  # fmt: skip


def typed(value: Any) -> Any:
    """`value` with every scalar tagged by its type (1, 1.0 and True must differ)."""
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


@settings(max_examples=500, deadline=None)
@given(fleets(), st.data())
def test_sorted_columns_match_the_reading_helpers(
    readings: list[Reading], data: st.DataObject
) -> None:
    c = rows.SortedColumns.of(as_columns(readings))
    assert c is not None  # no key twice
    ordered = rows.in_key_order(rows.first_of_each(readings))
    if data.draw(st.booleans()):  # only some were new
        keys = [(r[0], r[1]) for r in ordered]
        new = data.draw(st.sets(st.sampled_from(keys))) if keys else set()
        c = c.only(new)
        ordered = [r for r in ordered if (r[0], r[1]) in new]
    assert list(c.m_texts()) == [rows.m_text(r[5]) for r in ordered]
    ms = [(d, q, n, u, v) for d, q, _, _, _, m in ordered for n, u, v in m]
    time_of = {(r[0], r[1]): r[2] for r in ordered}
    latest = typed([(d, n, q, time_of[d, q], u, v) for d, q, n, u, v in rows.newest(ms).values()])
    assert typed(c.latest_rows()) == latest
    assert typed(c.measurement_rows()) == typed(
        [(d, q, n, t, u, v) for d, q, t, _, _, m in ordered for n, u, v in m]
    )
    assert typed(c.latest_rows()) == latest  # from the measurement rows, now they are made
    assert typed(c.device_rows()) == typed(rows.device_rows(ordered))
    assert typed(c.sample_rows("gw")) == typed([(*r[:5], "gw") for r in ordered])
