"""OSCORE (RFC 8613) security contexts for the CoAP ingress, made from the registry.

One context per device (docs/security.md §2.1): master secret = the device's 16-byte
``key``, no salt, no ID Context, the node's Sender ID (our Recipient ID) = its
``short_id`` as 2 bytes big-endian, the gateway's Sender ID empty, AES-CCM-16-64-128,
HKDF-SHA-256, replay window 32.

:class:`RegistryCredentials` is what aiocoap's ``OscoreSiteWrapper`` asks for a context
(``find_oscore``). It looks the kid up in the live :class:`~machi_gateway.registry.Registry`
on every request, so a device added to ``devices.json`` (by hand or by the cloud sync)
works as soon as the registry watcher has re-read the file, a revoked or removed device is
refused (4.01, unprotected) at its next request, and a changed key gets a new context: no
restart and no hook in the registry needed.

State across a gateway restart:

* Replay windows live in RAM. A new context starts with its window *unknown*, so its
  first request is answered with a protected 4.01 carrying an Echo value (RFC 8613 B.1.2,
  RFC 9175) and only a request that returns it opens the window; every earlier sequence
  number counts as seen. A datagram captured before the restart is therefore never
  accepted after it, at the price of one extra round trip per device per restart.
* Except after a **clean** stop: :class:`ReplayWindows` writes every known window to
  ``<seq file stem>.windows.json`` once the server has stopped taking requests, and the
  next start reads it and **deletes it before serving** (fsync of the directory): the
  windows are exact then, so the restart costs no Echo. After a crash there is no file
  (it was consumed at the last start), so the Echo recovery applies as before; a file
  that cannot be deleted or parsed is not trusted.
* The gateway's own sender sequence number (used only when it cannot reuse the request's
  nonce, e.g. for that Echo 4.01) is reserved in blocks in ``<data_dir>/oscore-seq.json``
  before use (RFC 8613 B.1.1), keyed by a hash of (key, kid): no nonce is ever reused,
  also not after ``kill -9``.

Observability: what aiocoap refuses before our resource sees the request is counted with
the gateway's other refusals (``rejected`` in /healthz, ``machi_gateway_rejected_total`` in
/metrics) under ``oscore-unknown-kid`` (no context for the kid: unknown, revoked or
malformed kid), ``oscore-replay`` (sequence number seen or too old), ``oscore-decrypt``
(authentication failed: wrong key, forged, flipped), ``oscore-format`` (malformed OSCORE
option or COSE object) and ``oscore-echo`` (the Echo challenge of a context whose window is
not known yet: the normal first request after a start, not an attack by itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiocoap import BAD_OPTION, CON, Message, error, oscore
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from ..registry import Device, Registry

log = logging.getLogger(__name__)

WINDOW = 32
SEQ_BLOCK = 16
KID_BYTES = 2

#: the rejects-by-reason counter: ``Sink.rejected`` with the transport bound
Rejected = Callable[[str], None]


def _ignore(reason: str) -> None:
    """No counter wired (unit tests of the contexts alone)."""


def refusal_reason(exc: BaseException) -> str:
    """The counter name for an exception out of aiocoap's ``unprotect`` (the subclasses
    first: DecodeError and ReplayError are ProtectionInvalid)."""
    if isinstance(exc, oscore.ReplayErrorWithEcho):
        return "oscore-echo"
    if isinstance(exc, oscore.ReplayError):
        return "oscore-replay"
    if isinstance(exc, oscore.DecodeError):
        return "oscore-format"
    return "oscore-decrypt"


def node_kid(short_id: int) -> bytes:
    """The node's Sender ID: its short id, 2 bytes big-endian."""
    return short_id.to_bytes(KID_BYTES, "big")


def context_name(key: bytes, short_id: int) -> str:
    """Names a (key, kid) pair in the state files without revealing the key."""
    return hashlib.sha256(key + node_kid(short_id)).hexdigest()[:16]


class SenderSequence:
    """Block reservation of the gateway's sender sequence numbers, one JSON file for all
    contexts: ``{"<hash of key and kid>": first number not reserved}``."""

    def __init__(self, path: Path, block: int = SEQ_BLOCK) -> None:
        self.path = path
        self.block = block
        self.writes = 0
        try:
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            # a restart at 0 could reuse nonces: refuse rather than guess
            raise RuntimeError(f"OSCORE sequence file {path} is unreadable: {exc}") from exc
        if not isinstance(raw, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw.values()):
            raise RuntimeError(f"OSCORE sequence file {path} is malformed")
        self._marks: dict[str, int] = raw

    def start(self, name: str) -> int:
        """Where the context ``name`` resumes: every number below was (maybe) used."""
        return self._marks.get(name, 0)

    def reserve(self, name: str, next_seq: int) -> None:
        """Make sure every number below ``next_seq`` is covered by the stored mark."""
        if next_seq <= self._marks.get(name, 0):
            return
        # the new mark counts only once it is on disk: if the write fails (a full disk) the
        # error reaches aiocoap, nothing is sent with that number, and the next number tries
        # the write again (a mark raised in memory only would let a crash reuse nonces)
        marks = {**self._marks, name: next_seq + self.block}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(marks).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._marks = marks
        self.writes += 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReplayWindows:
    """Replay windows saved at a clean stop, taken back once at the next start (see the
    module docstring). File: ``{"windows": {"<context name>": [index, bitfield]}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved = self._consume()
        self.restored = 0

    def _consume(self) -> dict[str, tuple[int, int]]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("oscore windows %s unreadable (%s): Echo recovery instead", self.path, exc)
            return {}
        try:
            # gone before the first request is served: a crash from now on finds no file
            os.remove(self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            log.warning("oscore windows %s cannot be removed (%s): not used", self.path, exc)
            return {}
        try:
            data = json.loads(raw)["windows"]
            out = {str(k): (int(v[0]), int(v[1])) for k, v in data.items()
                   if isinstance(v, list) and len(v) == 2
                   and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("oscore windows %s malformed: Echo recovery instead", self.path)
            return {}
        if out:
            log.info("oscore: %d replay windows from the last clean stop", len(out))
        return out

    def take(self, name: str) -> tuple[int, int] | None:
        """The saved window of a context, once (a later context of it starts unknown)."""
        got = self._saved.pop(name, None)
        if got is not None:
            self.restored += 1
        return got

    def save(self, current: dict[str, tuple[int, int]], keep: set[str] | None = None) -> int:
        """Write `current` plus the saved windows not used since (only those in `keep`,
        when given: a re-keyed or removed device's window is dropped)."""
        carried = {k: v for k, v in self._saved.items() if keep is None or k in keep}
        windows = {**carried, **current}
        if not windows:
            return 0
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps({"windows": {k: list(v) for k, v in windows.items()}})
                         .encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:  # a full disk: no half-written file left to take the space
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.path.parent)
        log.info("oscore: %d replay windows saved for the next start", len(windows))
        return len(windows)


class DeviceContext(
    oscore.CanProtect,  # type: ignore[misc]  # untyped library
    oscore.CanUnprotect,  # type: ignore[misc]
    oscore.SecurityContextUtils,  # type: ignore[misc]
):
    """The gateway's context with one device; ``device`` names it for the identity check."""

    def __init__(self, device: Device, seq: SenderSequence,
                 rejected: Rejected = _ignore, windows: ReplayWindows | None = None) -> None:
        assert device.short_id is not None and device.key is not None
        self._rejected = rejected
        self.device = device.id
        self.key = device.key
        self.sender_id = b""
        self.recipient_id = node_kid(device.short_id)
        self.id_context = None
        self.alg_aead = oscore.algorithms["AES-CCM-16-64-128"]
        self.hashfun = oscore.hashfunctions["sha256"]
        self.derive_keys(b"", device.key)
        self._seq = seq
        self._name = context_name(device.key, device.short_id)
        self.sender_sequence_number = seq.start(self._name)
        # unknown until a request returns our Echo value: see the module docstring
        self.recipient_replay_window = oscore.ReplayWindow(WINDOW, lambda: None)
        self.echo_recovery = secrets.token_bytes(8)
        saved = windows.take(self.name) if windows is not None else None
        if saved is not None:
            self.recipient_replay_window.initialize_from_persisted(
                {"index": saved[0], "bitfield": saved[1]})

    @property
    def name(self) -> str:
        """Names the (key, kid) pair in the state files, never the key itself."""
        return self._name

    def window(self) -> tuple[int, int] | None:
        """The replay window as (index, bitfield); None while it is unknown."""
        w = self.recipient_replay_window
        if not w.is_initialized():
            return None
        persisted = w.persist()
        return int(persisted["index"]), int(persisted["bitfield"])

    def post_seqnoincrease(self) -> None:
        self._seq.reserve(self._name, self.sender_sequence_number)

    def unprotect(self, protected_message: Any, request_id: Any = None) -> Any:
        """aiocoap's unprotect, with every refusal counted by reason before it propagates
        to ``OscoreSiteWrapper`` (which turns it into the 4.0x answer)."""
        try:
            return super().unprotect(protected_message, request_id)
        except oscore.ProtectionInvalid as exc:
            self._rejected(refusal_reason(exc))
            raise

    def __repr__(self) -> str:  # never the keys
        return f"<DeviceContext {self.device} kid={self.recipient_id.hex()}>"


class RegistryCredentials:
    """The credentials object ``OscoreSiteWrapper`` queries, backed by the registry."""

    def __init__(self, registry: Registry, seq_file: Path,
                 rejected: Rejected = _ignore) -> None:
        self.registry = registry
        self.seq = SenderSequence(seq_file)
        self.windows = ReplayWindows(seq_file.with_name(f"{seq_file.stem}.windows.json"))
        self._contexts: dict[int, DeviceContext] = {}
        self.refused = 0
        self.rejected = rejected

    def save_windows(self) -> int:
        """At a clean stop, after the server stopped taking requests: every known window
        (the ones not used in this run carried over). Returns how many were written."""
        current = {c.name: w for c in self._contexts.values() if (w := c.window()) is not None}
        live = {context_name(d.key, d.short_id) for d in self.registry.devices()
                if d.key is not None and d.short_id is not None and not d.revoked}
        return self.windows.save(current, keep=live)

    def find_oscore(self, unprotected: dict[int, Any]) -> DeviceContext:
        """The context for a request's kid; KeyError (-> 4.01) when there is none."""
        kid = unprotected.get(oscore.COSE_KID)
        if (unprotected.get(oscore.COSE_KID_CONTEXT) is not None
                or not isinstance(kid, bytes) or len(kid) != KID_BYTES):
            self.refused += 1
            self.rejected("oscore-unknown-kid")
            raise KeyError("no such kid")
        short_id = int.from_bytes(kid, "big")
        dev = self.registry.by_short_id(short_id)
        if dev is None or dev.revoked or dev.key is None:
            self._contexts.pop(short_id, None)
            self.refused += 1
            self.rejected("oscore-unknown-kid")
            raise KeyError("no such kid")
        ctx = self._contexts.get(short_id)
        if ctx is None or ctx.device != dev.id or ctx.key != dev.key:
            ctx = DeviceContext(dev, self.seq, self.rejected, self.windows)
            self._contexts[short_id] = ctx
            log.info("oscore context for %s (kid %s)", dev.id, kid.hex())
        return ctx

    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        """Only asked by EDHOC, which we do not offer."""
        return set()


class NodeSideContext(
    oscore.CanProtect,  # type: ignore[misc]  # untyped library
    oscore.CanUnprotect,  # type: ignore[misc]
    oscore.SecurityContextUtils,  # type: ignore[misc]
):
    """The node's side of the same profile, in memory only: for CPython tools and tests that
    speak to the gateway as a node (Sender ID = the short id, Recipient ID empty)."""

    def __init__(self, short_id: int, key: bytes) -> None:
        self.sender_id = node_kid(short_id)
        self.recipient_id = b""
        self.id_context = None
        self.alg_aead = oscore.algorithms["AES-CCM-16-64-128"]
        self.hashfun = oscore.hashfunctions["sha256"]
        self.derive_keys(b"", key)
        self.sender_sequence_number = 0
        self.recipient_replay_window = oscore.ReplayWindow(WINDOW, lambda: None)
        self.recipient_replay_window.initialize_empty()
        self.echo_recovery = None

    def post_seqnoincrease(self) -> None:
        pass  # nothing to persist: a test's context lives for one run

    def context_from_response(self, unprotected_bag: Any) -> NodeSideContext:
        return self


class CountingSiteWrapper(OscoreSiteWrapper):  # type: ignore[misc]  # untyped library
    """aiocoap's OSCORE site wrapper, counting the one refusal it makes before any context
    is involved: an OSCORE option that does not even parse. aiocoap lets that DecodeError
    out unrendered (a 5.00 and a traceback in the log); it is answered 4.02 Bad Option
    here, as the wrapper does for a COSE object that does not decode."""

    def __init__(self, inner_site: Any, credentials: RegistryCredentials) -> None:
        super().__init__(inner_site, credentials)
        self._rejected = credentials.rejected

    async def render_to_pipe(self, pipe: Any) -> None:
        try:
            await super().render_to_pipe(pipe)
        except oscore.DecodeError:
            # only verify_start() lets it out: the wrapper maps unprotect()'s to BadOption
            self._rejected("oscore-format")
            if pipe.request.mtype == CON:
                pipe.add_response(Message(code=BAD_OPTION), is_last=True)
        except error.ConstructionRenderableError as exc:
            # The wrapper's refusals (4.01 "Security context not found", 4.00 "Decryption
            # failed", 4.02 ...) would carry their text: up to 3x a small unauthenticated
            # request. Answered bare: never larger than the request (docs/security.md §1.3).
            pipe.add_response(Message(code=exc.code), is_last=True)
