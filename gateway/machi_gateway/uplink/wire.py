"""The batch body and the cloud's answer (docs/protocol.md §3), as CBOR."""

from __future__ import annotations

from typing import Any

import cbor2

from ..errors import UplinkUnavailable
from ..store import DeadLetter
from .base import Batch, BatchAnswer


def encode_batch(batch: Batch) -> bytes:
    """``{gateway, batch_id, readings[...]}`` with text keys."""
    return bytes(cbor2.dumps({
        "gateway": batch.gateway,
        "batch_id": batch.batch_id,
        "readings": [r.to_wire() for r in batch.readings],
    }))


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
