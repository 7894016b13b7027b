"""The firmware's OSCORE (`firmware/lib/oscore.py`, run by the real MicroPython) against aiocoap.

Three layers of evidence that our implementation speaks the same OSCORE as aiocoap's:

1. The shared vector files are right: every RFC 3610 packet vector and every RFC 8613
   Appendix C value (keys, IVs, AEAD outputs) is recomputed with the `cryptography`
   package, and aiocoap's own OSCORE protects and unprotects C.4-C.8 to the same bytes
   (aiocoap's test suite leaves out C.6 and C.8). The MicroPython tests
   (`mp/test_oscore.py`, `mp/test_aesccm.py`) check our code against the same files.
2. Node as client: a MicroPython script (`interop/oscore_client.py`) protects POST /r with
   our code and sends it to an aiocoap server wrapped in `OscoreSiteWrapper`; it
   unprotects aiocoap's responses, shows that aiocoap refuses a replayed and a
   bit-flipped request, and follows aiocoap's Echo challenge after aiocoap lost its
   replay window.
3. Node as server: aiocoap as the OSCORE client talks to a MicroPython server script
   (`interop/oscore_server.py`) that unprotects with our code and protects its answers,
   also after a "reboot" that lost its replay window (our Echo challenge, aiocoap follows).

Both sides are configured from the same master secret, salt and ids, made in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.credentials
import aiocoap.resource
import pytest
from aiocoap import oscore as aio_oscore
from aiocoap.message import Direction
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .conftest import free_udp_port, udp_server_context

FIRMWARE = Path(__file__).resolve().parents[1]
INTEROP = Path(__file__).parent / "interop"
VECTORS = FIRMWARE.parent / "tests" / "vectors"
TIMEOUT = 60.0  # generous: the machine may be busy

# the ids docs/security.md proposes: the node's Sender ID is its 16-bit short id, the
# gateway's is empty (each device has its own master secret, so that is unambiguous)
NODE_ID = (0x002A).to_bytes(2, "big")  # the node's Sender ID (the gateway's Recipient ID)
GATEWAY_ID = b""  # the gateway's Sender ID
ID_CONTEXTS = [None, b"\x37\xcb\xf3\x21"]  # without, and with an ID Context (kid context)
# (id_context, one side lost its replay window) for the two interop directions
CONTEXT_CASES = [(None, False), (ID_CONTEXTS[1], False), (None, True)]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def h(s: str | None) -> bytes | None:
    return None if s is None else bytes.fromhex(s)


def hb(s: str) -> bytes:
    return bytes.fromhex(s)


# ----------------------------------------------------------------------- 1. the vectors


def test_rfc3610_vectors_match_cryptography() -> None:
    vectors = load("aes-ccm-rfc3610.json")["vectors"]
    assert len(vectors) == 24
    for v in vectors:
        ccm = AESCCM(hb(v["key"]), tag_length=v["tag_len"])
        out = ccm.encrypt(hb(v["nonce"]), hb(v["plaintext"]), hb(v["aad"]))
        assert out.hex() == v["ciphertext_and_tag"], v["name"]


def test_appendix_c_values_match_cryptography() -> None:
    doc = load("oscore-rfc8613-appendix-c.json")
    for k in doc["key_derivation"]:
        salt = hb(k["master_salt"]) or None
        for info, want, length in (
            (k["info_sender_key"], k["sender_key"], 16),
            (k["info_recipient_key"], k["recipient_key"], 16),
            (k["info_common_iv"], k["common_iv"], 13),
        ):
            got = HKDF(hashes.SHA256(), length, salt, hb(info)).derive(hb(k["master_secret"]))
            assert got.hex() == want, (k["name"], info)
    for m in doc["requests"] + doc["responses"]:
        ccm = AESCCM(hb(m["encryption_key"]), tag_length=8)
        out = ccm.encrypt(hb(m["nonce"]), hb(m["plaintext"]), hb(m["aad"]))
        assert out.hex() == m["ciphertext"], m["name"]


class _VectorContext(
    aio_oscore.CanProtect,  # type: ignore[misc]
    aio_oscore.CanUnprotect,  # type: ignore[misc]
    aio_oscore.SecurityContextUtils,  # type: ignore[misc]
):
    """A plain aiocoap security context from one Appendix C key-derivation entry."""

    def __init__(self, kd: dict[str, Any], seq: int = 0) -> None:
        self.sender_id = hb(kd["sender_id"])
        self.recipient_id = hb(kd["recipient_id"])
        self.id_context = h(kd["id_context"])
        self.alg_aead = aio_oscore.algorithms["AES-CCM-16-64-128"]
        self.hashfun = aio_oscore.hashfunctions["sha256"]
        self.derive_keys(hb(kd["master_salt"]), hb(kd["master_secret"]))
        self.sender_sequence_number = seq
        self.recipient_replay_window = aio_oscore.ReplayWindow(32, lambda: None)
        self.recipient_replay_window.initialize_empty()
        self.echo_recovery = os.urandom(8)

    def post_seqnoincrease(self) -> None:
        pass

    def context_from_response(self, unprotected_bag: Any) -> _VectorContext:
        return self


def _outgoing(raw: bytes) -> aiocoap.Message:
    m = aiocoap.Message.decode(raw)
    m.direction = Direction.OUTGOING
    return m


def _on_wire(protected: aiocoap.Message, like: aiocoap.Message) -> str:
    protected.mid, protected.token, protected.mtype = like.mid, like.token, like.mtype
    out: bytes = protected.encode()
    return out.hex()


def test_aiocoap_reproduces_every_appendix_c_message() -> None:
    doc = load("oscore-rfc8613-appendix-c.json")
    kds = {k["name"]: k for k in doc["key_derivation"]}
    for r in doc["requests"]:  # C.4, C.5, C.6
        client = _VectorContext(kds[r["client_context"]], r["sender_sequence_number"])
        assert client.sender_key.hex() == kds[r["client_context"]]["sender_key"]
        assert client.common_iv.hex() == kds[r["client_context"]]["common_iv"]
        plain = aiocoap.Message.decode(hb(r["unprotected"]))
        protected, _ = client.protect(_outgoing(hb(r["unprotected"])))
        assert _on_wire(protected, plain) == r["protected"], r["name"]
        server = _VectorContext(kds[r["server_context"]])
        got, _ = server.unprotect(aiocoap.Message.decode(hb(r["protected"])))
        assert (got.code, got.opt.uri_path, got.payload) == (plain.code, ("tv1",), b"")
    c4 = hb(doc["requests"][0]["protected"])
    for r in doc["responses"]:  # C.7 (request nonce), C.8 (own Partial IV)
        server = _VectorContext(kds[r["server_context"]], r["sender_sequence_number"] or 0)
        _, request_id = server.unprotect(aiocoap.Message.decode(c4))
        if r["partial_iv"] is not None:
            request_id.can_reuse_nonce = False
        plain = aiocoap.Message.decode(hb(r["unprotected"]))
        protected, _ = server.protect(_outgoing(hb(r["unprotected"])), request_id)
        assert _on_wire(protected, plain) == r["protected"], r["name"]


# ----------------------------------------------------------------------- shared set-up


def write_aiocoap_context(
    basedir: Path,
    *,
    sender_id: bytes,
    recipient_id: bytes,
    secret: bytes,
    salt: bytes,
    id_context: bytes | None,
) -> Path:
    """An aiocoap FilesystemSecurityContext directory with these parameters."""
    basedir.mkdir()
    settings = {
        "sender-id_hex": sender_id.hex(),
        "recipient-id_hex": recipient_id.hex(),
        "secret_hex": secret.hex(),
        "salt_hex": salt.hex(),
    }
    if id_context is not None:
        settings["id-context_hex"] = id_context.hex()
    (basedir / "settings.json").write_text(json.dumps(settings))
    return basedir


def gateway_context(tmp_path: Path, id_context: bytes | None) -> tuple[bytes, bytes, Path]:
    """A fresh master secret and salt, and the gateway's aiocoap context made from them."""
    secret, salt = os.urandom(16), os.urandom(8)
    gw_dir = write_aiocoap_context(
        tmp_path / "gw-ctx",
        sender_id=GATEWAY_ID,
        recipient_id=NODE_ID,
        secret=secret,
        salt=salt,
        id_context=id_context,
    )
    return secret, salt, gw_dir


def mp_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = f".frozen:{FIRMWARE / 'lib'}:{FIRMWARE}"
    return env


def mp_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else "micropython"


class Echo(aiocoap.resource.Resource):  # type: ignore[misc]
    """POST /r on the aiocoap side: answers 2.04, Content-Format 0, b"ack:" + payload."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.received.append(request.payload)
        return aiocoap.Message(
            code=aiocoap.CHANGED, content_format=0, payload=b"ack:" + request.payload
        )


@contextlib.asynccontextmanager
async def aiocoap_oscore_server(
    port: int, resource: Echo, context_dir: Path
) -> AsyncIterator[aiocoap.Context]:
    site = aiocoap.resource.Site()
    site.add_resource(["r"], resource)
    credentials = aiocoap.credentials.CredentialsMap()
    credentials.load_from_dict({":node": {"oscore": {"basedir": str(context_dir) + "/"}}})
    ctx = await udp_server_context(OscoreSiteWrapper(site, credentials), port)
    try:
        yield ctx
    finally:
        await ctx.shutdown()


# ----------------------------------------------------------------------- 2. node as client


@pytest.mark.micropython
@pytest.mark.parametrize(
    ("id_context", "restarted"),
    CONTEXT_CASES,
    ids=["no-id-context", "id-context", "gateway-lost-replay-window"],
)
async def test_micropython_client_aiocoap_server(
    tmp_path: Path, id_context: bytes | None, restarted: bool
) -> None:
    secret, salt, gw_dir = gateway_context(tmp_path, id_context)
    if restarted:
        # what aiocoap leaves after a crash: the replay window is unknown, so it answers the
        # first request with a protected 4.01 + Echo (RFC 8613 B.1.2, RFC 9175) and the node
        # must repeat the request with that Echo value
        (gw_dir / "sequence.json").write_text(
            json.dumps({"next-to-send": 100, "received": "unknown"})
        )
    seqdir = tmp_path / "node-seq"
    seqdir.mkdir()
    port = free_udp_port()
    resource = Echo()
    count = 3
    async with aiocoap_oscore_server(port, resource, gw_dir):
        proc = await asyncio.create_subprocess_exec(
            mp_binary(),
            str(INTEROP / "oscore_client.py"),
            "127.0.0.1",
            str(port),
            secret.hex(),
            salt.hex(),
            NODE_ID.hex(),
            GATEWAY_ID.hex(),
            id_context.hex() if id_context is not None else "-",
            str(seqdir),
            str(count),
            env=mp_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    records = [json.loads(line) for line in out.decode().splitlines()]
    lines = {d["tag"]: d for d in records}  # the last record of each tag
    if restarted:
        challenge = records[0]  # the protected 4.01 that carried aiocoap's Echo value
        assert challenge["tag"] == "post0" and challenge["ok"], text
        assert challenge["code"] == 0x81 and [n for n, _ in challenge["options"]] == [252], text

    for i in range(count):
        r = lines[f"post{i}"]
        assert r["ok"], text
        assert r["echoed"] == (restarted and i == 0), text
        assert r["outer_code"] == 0x44  # 2.04 outside, the real code inside
        assert r["code"] == 0x44
        assert r["options"] == [[12, ""]]  # Content-Format 0, decrypted
        assert bytes.fromhex(r["payload"]) == b"ack:reading %d" % i
    assert resource.received == [b"reading %d" % i for i in range(count)]
    # aiocoap refuses the replayed request (unprotected 4.01) and the bit-flipped one (4.00)
    assert lines["replay"]["code"] == 0x81 and not lines["replay"]["oscore"], text
    assert lines["flipped"]["code"] == 0x80 and not lines["flipped"]["oscore"], text
    sent = count + 1 + (1 if restarted else 0)  # + the tampered one, + the Echo retry
    assert lines["done"] == {"tag": "done", "protected": sent, "unprotected": sent - 1}


# ----------------------------------------------------------------------- 3. node as server


@contextlib.asynccontextmanager
async def micropython_oscore_server(
    port: int, secret: bytes, salt: bytes, id_context: bytes | None, rebooted: bool
) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        mp_binary(),
        str(INTEROP / "oscore_server.py"),
        str(port),
        secret.hex(),
        salt.hex(),
        NODE_ID.hex(),
        GATEWAY_ID.hex(),
        id_context.hex() if id_context is not None else "-",
        *(["rebooted"] if rebooted else []),
        env=mp_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        if line.strip() != b"READY":
            rest = b""
            if proc.stderr is not None:
                rest = await asyncio.wait_for(proc.stderr.read(), TIMEOUT)
            raise AssertionError(f"micropython server did not start: {line!r} {rest!r}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.micropython
@pytest.mark.parametrize(
    ("id_context", "rebooted"),
    CONTEXT_CASES,
    ids=["no-id-context", "id-context", "node-lost-replay-window"],
)
async def test_aiocoap_client_micropython_server(
    tmp_path: Path, id_context: bytes | None, rebooted: bool
) -> None:
    secret, salt, gw_dir = gateway_context(tmp_path, id_context)
    port = free_udp_port()
    async with micropython_oscore_server(port, secret, salt, id_context, rebooted) as proc:
        client = await aiocoap.Context.create_client_context()
        try:
            client.client_credentials.load_from_dict(
                {f"coap://127.0.0.1:{port}/*": {"oscore": {"basedir": str(gw_dir) + "/"}}}
            )
            base = f"coap://127.0.0.1:{port}"

            async def ask(code: aiocoap.numbers.codes.Code, path: str, payload: bytes = b"") -> Any:
                msg = aiocoap.Message(code=code, uri=base + path, payload=payload)
                return await asyncio.wait_for(client.request(msg).response, TIMEOUT)

            for i in range(3):
                r = await ask(aiocoap.POST, "/r", b"command %d" % i)
                assert r.code == aiocoap.CHANGED
                assert r.opt.content_format == 0
                assert r.payload == b"got:command %d" % i
            r = await ask(aiocoap.GET, "/hello")
            assert (r.code, r.payload) == (aiocoap.CONTENT, b"hello from micropython")
            r = await ask(aiocoap.GET, "/missing")
            assert r.code == aiocoap.NOT_FOUND  # the 4.04 came protected, as 2.04 outside
        finally:
            await client.shutdown()
        proc.kill()
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    log = out.decode()
    assert log.count("OK ") == 5, log + err.decode()
    assert "REJECT" not in log, log
    # after a reboot the first request is answered with Echo, aiocoap repeats it once
    assert log.count("ECHO ") == (1 if rebooted else 0), log


# ----------------------------------------------------------------------- figures


@pytest.mark.micropython
async def test_overhead_figures_under_micropython() -> None:
    """Runs interop/oscore_figures.py: byte overheads are exact; times are only printed."""
    proc = await asyncio.create_subprocess_exec(
        mp_binary(),
        "-X",
        "heapsize=512K",
        str(INTEROP / "oscore_figures.py"),
        str(VECTORS),
        env=mp_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, out.decode() + err.decode()
    print(out.decode())
    figures = dict(line.split(" ", 1) for line in out.decode().splitlines())
    # OSCORE option (header + flags + Partial IV + 1-byte kid) + inner code + inner payload
    # marker + 8-byte tag; the Partial IV grows with the sequence number
    assert figures["request_overhead_bytes_seq_lt_256"] == "14"
    assert figures["request_overhead_bytes_seq_lt_65536"] == "15"
    assert figures["request_overhead_bytes_seq_lt_2e24"] == "16"
    # empty OSCORE option + payload marker + inner code + tag, with or without a payload
    assert figures["response_empty_overhead_bytes"] == "11"
    assert figures["response_time_overhead_bytes"] == "11"
    for size in (16, 64, 125, 256):
        assert float(figures[f"protect_us_payload_{size}"]) > 0
