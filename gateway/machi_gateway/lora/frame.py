"""Decode (and encode) the LoRa compact frame of docs/protocol-lora.md.

Layout::

    profile id u8 | short id u16 BE | seq LEB128 varint | CBOR array | MIC 4 bytes

The array: one int or null per profile metric, then optionally the age (uint), then
optionally the command results, a map ``{cid: code}`` (code = index into
``profiles.json`` "results", or the result as text of at most 24 bytes), decoded into the
``cmd/<cid>`` measurements the CoAP path carries.

The MIC (the first 4 bytes of AES-CMAC, RFC 4493, keyed with the device's 16-byte key over
every byte before it) is checked before anything after the short id is parsed, so an
unauthenticated frame is refused as ``bad-mic`` whatever it holds. AES-CMAC comes from
``cryptography`` (a dependency of ``aiocoap[oscore]``).

:func:`decode` raises only :class:`~machi_gateway.errors.BadReading` (reasons below) and
:class:`~machi_gateway.errors.UnknownDevice`; any other exception would be a bug (a
hypothesis test feeds it garbage with valid MICs).

======================  =======================================================
reason                  meaning
======================  =======================================================
``frame-short``         fewer bytes than the smallest frame (9)
``unknown-device``      no device has that short id (UnknownDevice, 4.01)
``revoked``             the device is revoked (UnknownDevice)
``no-key``              the device has no key, so it cannot send LoRa (UnknownDevice)
``bad-mic``             the MIC does not match: wrong key, corrupted or forged
``unknown-profile``     the profile id is not in the table
``bad-seq``             seq varint overlong, non-minimal or >= 2**63
``bad-cbor``            not one definite CBOR array of ints/nulls (and a last results map)
``bad-values``          wrong number of items, a value out of its metric's range, or a
                        bad result (unknown code, cid > 65535, repeated cid, empty map)
======================  =======================================================
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from ..errors import BadReading, UnknownDevice
from ..model import SEQ_LIMIT, Measurement, Reading, Value, cbor_head
from .profiles import Profile, results, table

MIC_LEN = 4
MIN_FRAME = 1 + 2 + 1 + 1 + MIC_LEN  # profile, short id, 1-byte seq, empty array head, MIC
_MAX_VARINT = 9  # 63 bits
_INT_LIMIT = 2**63  # scaled values beyond int64 are refused, not computed with
TEXT_MAX = 24  # bytes of a command result sent as text
CID_MAX = 0xFFFF


class LoraDevice(Protocol):
    """What the decoder needs of a registry entry (``registry.Device`` has it, contract C5)."""

    @property
    def id(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def revoked(self) -> bool: ...


Lookup = Callable[[int], LoraDevice | None]


def mic(key: bytes, data: bytes) -> bytes:
    """The 4-byte MIC of ``data``: truncated AES-CMAC (RFC 4493)."""
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()[:MIC_LEN]


# ------------------------------------------------------------------------ parsing helpers


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Minimal unsigned LEB128 at ``pos`` -> (value, position after it)."""
    n = 0
    for i in range(_MAX_VARINT):
        if pos + i >= end:
            raise BadReading("bad-seq", "bad-seq: seq runs into the MIC")
        b = buf[pos + i]
        n |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i > 0:
                raise BadReading("bad-seq", "bad-seq: non-minimal varint")
            if n >= SEQ_LIMIT:
                raise BadReading("bad-seq", f"bad-seq: {n} >= 2^63")
            return n, pos + i + 1
    raise BadReading("bad-seq", "bad-seq: varint longer than 9 bytes")


def _cbor_head(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """-> (major type, argument, position after the head); definite lengths only."""
    if pos >= end:
        raise BadReading("bad-cbor", "bad-cbor: truncated")
    ib = buf[pos]
    major, ai = ib >> 5, ib & 31
    if ai < 24:
        return major, ai, pos + 1
    if ai > 27:
        raise BadReading("bad-cbor", f"bad-cbor: additional information {ai} not allowed")
    width = 1 << (ai - 24)
    if pos + 1 + width > end:
        raise BadReading("bad-cbor", "bad-cbor: truncated")
    return major, int.from_bytes(buf[pos + 1:pos + 1 + width], "big"), pos + 1 + width


def _values(buf: bytes, pos: int, end: int) -> tuple[list[int | None], dict[int, str]]:
    """The CBOR array filling ``buf[pos:end]`` exactly: its ints and nulls, and the command
    results of a map that is its last item ({} without one)."""
    major, count, pos = _cbor_head(buf, pos, end)
    if major != 4:
        raise BadReading("bad-cbor", "bad-cbor: the values are not a definite array")
    if count > end - pos:
        raise BadReading("bad-cbor", f"bad-cbor: array of {count} in {end - pos} bytes")
    out: list[int | None] = []
    res: dict[int, str] = {}
    for i in range(count):
        if pos < end and buf[pos] == 0xF6:
            out.append(None)
            pos += 1
            continue
        major, arg, pos = _cbor_head(buf, pos, end)
        if major == 0 and arg < _INT_LIMIT:
            out.append(arg)
        elif major == 1 and arg < _INT_LIMIT:
            out.append(-1 - arg)
        elif major == 5 and i == count - 1:
            res, pos = _results(buf, pos, end, arg)
        else:
            raise BadReading("bad-cbor", "bad-cbor: an item is not an int64 or null")
    if pos != end:
        raise BadReading("bad-cbor", f"bad-cbor: {end - pos} bytes after the array")
    return out, res


def _results(buf: bytes, pos: int, end: int, count: int) -> tuple[dict[int, str], int]:
    """The ``count`` entries ``cid: code | text`` of the results map at ``pos``."""
    if count == 0:
        raise BadReading("bad-values", "bad-values: an empty results map")
    if 2 * count > end - pos:
        raise BadReading("bad-cbor", f"bad-cbor: map of {count} in {end - pos} bytes")
    codes = results()
    out: dict[int, str] = {}
    for _ in range(count):
        major, cid, pos = _cbor_head(buf, pos, end)
        if major != 0:
            raise BadReading("bad-cbor", "bad-cbor: a command id is not a uint")
        if cid > CID_MAX or cid in out:
            raise BadReading("bad-values", f"bad-values: command id {cid} out of range "
                             "or repeated")
        major, arg, pos = _cbor_head(buf, pos, end)
        if major == 0:
            if arg >= len(codes):
                raise BadReading("bad-values", f"bad-values: no result code {arg}")
            out[cid] = codes[arg]
        elif major == 3:
            if arg > TEXT_MAX or arg > end - pos:
                raise BadReading("bad-values", f"bad-values: result text of {arg} bytes")
            try:
                out[cid] = buf[pos:pos + arg].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadReading("bad-cbor", "bad-cbor: result text not UTF-8") from exc
            pos += arg
        else:
            raise BadReading("bad-cbor", "bad-cbor: a result is not a uint or text")
    return out, pos


def _measurements(prof: Profile, items: Sequence[int | None],
                  res: Mapping[int, str]) -> tuple[Measurement, ...]:
    out: list[Measurement] = []
    failed: list[str] = []
    for metric, k in zip(prof.metrics, items, strict=False):
        if k is None:
            if not metric.optional:
                failed.append(metric.name)
            continue
        try:
            value = metric.decode(k)
        except ValueError as exc:
            raise BadReading("bad-values", f"bad-values: {exc}") from exc
        if value is not None:
            out.append(Measurement(metric.name, metric.unit, value))
    if failed:  # what the apps send over CoAP for a failed sensor (firmware/apps/*)
        out.append(Measurement("err", None, ",".join(failed)))
    # after the app's own, as node.py appends them to a reading sent over CoAP
    out.extend(Measurement(f"cmd/{cid}", None, r) for cid, r in res.items())
    return tuple(out)


# ------------------------------------------------------------------------------ the API


def decode(payload: bytes, *, registry_lookup: Lookup, received: float,
           transport: str) -> Reading:
    """The reading in one compact frame (contract C6).

    ``registry_lookup(short_id)`` returns the device (revoked ones included, so the reason
    can say so) or None. ``received`` becomes the sample time unless the frame carries an
    age. ``transport`` is what the caller is ("lora", "lorawan", ...).
    """
    buf = bytes(payload)
    n = len(buf)
    if n < MIN_FRAME:
        raise BadReading("frame-short", f"frame-short: {n} bytes, at least {MIN_FRAME}")
    profile_id = buf[0]
    (short_id,) = struct.unpack_from(">H", buf, 1)
    dev = registry_lookup(short_id)
    if dev is None:
        raise UnknownDevice("unknown-device", f"no device with short id {short_id}")
    if getattr(dev, "revoked", False):
        raise UnknownDevice("revoked", f"device {dev.id!r} (short id {short_id}) is revoked")
    key = getattr(dev, "key", None)
    if not key:
        raise UnknownDevice("no-key", f"device {dev.id!r} has no key for LoRa frames")
    end = n - MIC_LEN
    if not hmac.compare_digest(mic(key, buf[:end]), buf[end:]):
        raise BadReading("bad-mic", f"bad-mic: frame from {dev.id!r} (short id {short_id})")
    prof = table().get(profile_id)
    if prof is None:
        raise BadReading("unknown-profile", f"unknown-profile: {profile_id}")
    seq, pos = _varint(buf, 3, end)
    items, res = _values(buf, pos, end)
    width = len(prof.metrics)
    if len(items) not in (width, width + 1):
        raise BadReading("bad-values", f"bad-values: {len(items)} items for profile "
                         f"{prof.name!r} of {width}")
    time: float | int = received
    if len(items) == width + 1:
        age = items[-1]
        if age is None or age < 0:
            raise BadReading("bad-values", "bad-values: age must be a uint")
        time = received - age
    measurements = _measurements(prof, items[:width], res)
    meta: Mapping[str, Value] = {"short_id": short_id, "profile": prof.name,
                                 "frame_bytes": n}
    try:
        return Reading(device=dev.id, seq=seq, time=time, received=received,
                       transport=transport, measurements=measurements, meta=meta)
    except ValueError as exc:  # e.g. an age that puts the time out of range
        raise BadReading("bad-values", f"bad-values: {exc}") from exc


def encode(profile: Profile, short_id: int, seq: int, key: bytes,
           values: Mapping[str, Any], *, age_s: int = 0,
           command_results: Mapping[int, str] | None = None) -> bytes:
    """A frame for ``values`` (name -> value; absent names are sent as null) and
    ``command_results`` (cid -> "ok" | "err:..."; texts must be at most 24 bytes).

    The gateway does not send uplink frames; this is here for tests, vectors and
    emulators, written independently of the firmware's encoder."""
    out = _frame_start(profile.id, short_id, seq)
    items: list[int | None] = [m.encode(values[m.name]) if m.name in values else None
                               for m in profile.metrics]
    if age_s:
        items.append(age_s)
    out += _cbor_array(items, command_results or {})
    return bytes(out + mic(key, bytes(out)))


def _head(major: int, arg: int) -> bytes:
    return cbor_head(major << 5, arg)


def _cbor_array(items: Sequence[int | None], res: Mapping[int, str]) -> bytes:
    out = bytearray(_head(4, len(items) + (1 if res else 0)))
    for k in items:
        if k is None:
            out.append(0xF6)
        elif k >= 0:
            out += _head(0, k)
        else:
            out += _head(1, -1 - k)
    if res:
        codes = results()
        out += _head(5, len(res))
        for cid, r in res.items():
            out += _head(0, cid)
            if r in codes:
                out += _head(0, codes.index(r))
            else:
                text = r.encode()
                if len(text) > TEXT_MAX:
                    raise ValueError(f"result {r!r} is longer than {TEXT_MAX} bytes")
                out += _head(3, len(text)) + text
    return bytes(out)


# ------------------------------------------------------------------ the ack downlink

ACK_TYPE = 0x80  # byte 0 of an ack: outside the profile ids, so never an uplink


def _frame_start(kind: int, short_id: int, seq: int) -> bytearray:
    """The bytes every frame and ack start with: type, short id (uint16 BE), seq (LEB128)."""
    if not 0 <= short_id <= 0xFFFF:
        raise ValueError("short id must be a uint16")
    if not 0 <= seq < SEQ_LIMIT:
        raise ValueError("seq out of range")
    out = bytearray([kind]) + short_id.to_bytes(2, "big")
    n = seq
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out


def ack_overhead(seq: int) -> int:
    """Bytes an ack of ``seq`` has around its body (type, short id, seq varint, MIC)."""
    return len(_frame_start(ACK_TYPE, 0, seq)) + MIC_LEN


def encode_ack(short_id: int, seq: int, key: bytes, body: bytes = b"") -> bytes:
    """The ack the gateway sends in the node's RX window once ``seq`` is durable
    (docs/protocol-lora.md §8): ``0x80 | short id | seq varint | body | MIC``; ``body`` is
    the CoAP 2.04 payload (CBOR ``{1: time, 2: commands}``)."""
    out = _frame_start(ACK_TYPE, short_id, seq)
    out += body
    return bytes(out + mic(key, bytes(out)))


def decode_ack(frame: bytes, key: bytes) -> tuple[int, int, bytes]:
    """(short id, seq, body) of an ack; ValueError if it is none or its MIC is wrong."""
    if len(frame) < 4 + MIC_LEN or frame[0] != ACK_TYPE:
        raise ValueError("not an ack frame")
    end = len(frame) - MIC_LEN
    if not hmac.compare_digest(mic(key, frame[:end]), frame[end:]):
        raise ValueError("ack MIC does not match")
    try:
        seq, pos = _varint(frame, 3, end)
    except BadReading as exc:
        raise ValueError(str(exc)) from exc
    return int.from_bytes(frame[1:3], "big"), seq, frame[pos:end]
