"""The batch body and the cloud's answer (docs/protocol.md §3), as CBOR.

A queued reading's stored body already is its CBOR batch item (byte for byte what
``cbor2.dumps(reading.to_wire())`` writes, see :func:`machi_gateway.model.encode_wire`),
so a batch is the map's head, an array head and the stored bodies one after the other:
no decoding and re-encoding on the Pi (bench/gateway_uplink.py). A body is spliced
unseen, so one damaged on disk must not get there: :func:`looks_intact` is the cheap check
every item passes before it joins a batch, :func:`well_formed` the full one, run only
when the cloud refuses a batch as malformed.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from ..errors import UplinkUnavailable
from ..model import Reading, cbor_head, encode_wire, identity_head
from ..store import DeadLetter, Queued
from .base import Batch, BatchAnswer

_dumps = cbor2.dumps
_KEY_SEQ = _dumps("seq")
_DECODE_ERRORS = (cbor2.CBORDecodeError, ValueError, TypeError, KeyError, AttributeError,
                  OverflowError, RecursionError, MemoryError)


def encode_batch(batch: Batch) -> bytes:
    """``{gateway, batch_id, readings[...]}`` with text keys, exactly as cbor2 writes it."""
    items = batch.readings
    head = b"".join((b"\xa3", _dumps("gateway"), _dumps(batch.gateway), _dumps("batch_id"),
                     _dumps(batch.batch_id), _dumps("readings"), cbor_head(0x80, len(items))))
    return head + b"".join([r.body if isinstance(r, Queued) else encode_wire(r) for r in items])


def looks_intact(item: Queued) -> bool:
    """Cheap (~0.5 µs): the body starts as the batch item of its own row, ``{"device",
    "seq", ...}`` with the row's identity. Catches a body that is not a map or lost its
    identity, for which the cloud would refuse the whole batch; damage further in is
    caught by :func:`well_formed` if the cloud refuses the batch."""
    device, seq, body = item.device, item.seq, item.body
    if (type(device) is not str or type(seq) is not int or type(body) is not bytes
            or not 0 <= seq < 2**64):
        return False
    head = identity_head(device)
    return body.startswith(head) and body.startswith(_KEY_SEQ + cbor_head(0x00, seq), len(head))


def well_formed(item: Queued) -> bool:
    """Full check: the body is byte for byte what the store writes for the reading it
    decodes to (:func:`machi_gateway.model.encode_wire`), with the row's identity.

    Well-formed CBOR is not enough: cbor2 decodes shared values and string references
    (tags 28/29, 25/256) and non-text map keys, all of which the cloud's decoder refuses
    for the whole batch (400), so such a body would be kept and the batch refused for
    ever. The store's own encoding has none of them. The uplink decoded every body with
    ``Reading.from_wire`` before the splice, so a reading this refuses would have stopped
    it then."""
    try:
        fp = io.BytesIO(item.body)
        doc: Any = cbor2.CBORDecoder(fp).decode()
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
