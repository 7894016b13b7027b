"""The few cloud calls the technician's tools make (docs/protocol.md §6, contract C4).

Every failure becomes a `CloudError` whose message says what went wrong *and what to do*: the
technician in the field sees it as is. Problem documents (RFC 9457) from the cloud are unpacked
to their `detail`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

_HINTS = {
    401: "the admin token was not accepted: check --admin-token (or MACHI_ADMIN_TOKEN)",
    403: "this token may not register devices: an admin token is needed",
    404: "the cloud does not know this endpoint or device: check --cloud (and its version)",
    422: "the cloud refused the values: check --type, --lat/--lon, --gateway, --site",
    503: "the cloud is up but its database is not: try again, or tell the operator",
}


class CloudError(RuntimeError):
    """A cloud call failed; `status` is the HTTP status (0: no answer at all)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Registration:
    device: str
    created: bool
    key: bytes = field(repr=False)  # never in a log line or a traceback's locals repr
    short_id: int | None = None  # the cloud-assigned 16-bit id (OSCORE kid, LoRa address)


def _short_id(data: dict[str, Any], where: str) -> int | None:
    """The registration's `short_id`, checked; None when the answer has none."""
    sid = data.get("short_id")
    if sid is None:
        return None
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid <= 0xFFFF:
        raise CloudError(f"{where}: the cloud answered short_id {sid!r}, expected 0..65535")
    return sid


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:200]
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title") or body
        if isinstance(detail, list):  # FastAPI validation errors
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                             for d in detail if isinstance(d, dict))
        return str(detail)
    return str(body)[:200]


class CloudClient:
    """An admin's session with one cloud (`url`, bearer `token`)."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                    transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None,
              expect: tuple[int, ...] = (200,)) -> httpx.Response:
        try:
            resp = self._client.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise CloudError(f"{method} {self.url}{path}: no answer in time ({exc}); "
                             "check the network and --cloud") from exc
        except httpx.HTTPError as exc:
            raise CloudError(f"{method} {self.url}{path}: cannot reach the cloud ({exc}); "
                             "check --cloud and the laptop's network") from exc
        if resp.status_code not in expect:
            hint = _HINTS.get(resp.status_code, "see the cloud's log")
            raise CloudError(f"{method} {path}: HTTP {resp.status_code}: {_detail(resp)} "
                             f"({hint})", status=resp.status_code)
        return resp

    def _json(self, resp: httpx.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError as exc:
            raise CloudError(f"{resp.request.url}: the answer is not JSON: "
                             f"{resp.text[:100]!r}", status=resp.status_code) from exc
        if not isinstance(data, dict):
            raise CloudError(f"{resp.request.url}: unexpected answer {data!r}",
                             status=resp.status_code)
        return data

    def put_device(self, device: str, body: dict[str, Any]) -> bool:
        """Register or update; True when the device was created."""
        return self._put_device(device, body)[0]

    def _put_device(self, device: str, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        resp = self._call("PUT", f"/v1/devices/{device}", json=body, expect=(200, 201))
        try:
            data = resp.json()
        except ValueError:
            data = {}
        return resp.status_code == 201, data if isinstance(data, dict) else {}

    def new_key(self, device: str) -> bytes:
        resp = self._call("POST", f"/v1/devices/{device}/keys", expect=(200, 201))
        data = self._json(resp)
        try:
            key = bytes.fromhex(str(data["key"]))
        except (KeyError, ValueError) as exc:
            raise CloudError(f"POST /v1/devices/{device}/keys: no valid key in the answer",
                             status=resp.status_code) from exc
        if len(key) != 16:
            raise CloudError(f"the cloud issued a {len(key)}-byte key, expected 16")
        return key

    def register(self, device: str, body: dict[str, Any]) -> Registration:
        """PUT the registration, issue a new key, and learn the short id the cloud gave the
        device: from the PUT's answer, else (an older cloud) from `GET /v1/devices/{id}`."""
        created, answer = self._put_device(device, body)
        key = self.new_key(device)
        short_id = _short_id(answer, f"PUT /v1/devices/{device}")
        if short_id is None:
            short_id = self.short_id(device)
        return Registration(device=device, created=created, key=key, short_id=short_id)

    def short_id(self, device: str) -> int | None:
        """The device's short id from `GET /v1/devices/{id}`; None when it has none."""
        data = self.device(device)
        if data is None:
            raise CloudError(f"GET /v1/devices/{device}: the cloud does not know the device "
                             "it has just registered: check --cloud", status=404)
        return _short_id(data, f"GET /v1/devices/{device}")

    def device(self, device: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/v1/devices/{device}", expect=(200, 404))
        return None if resp.status_code == 404 else self._json(resp)

    def health(self) -> tuple[dict[str, Any], float | None]:
        """`/healthz` and the cloud's clock (from the Date header) as unix time."""
        resp = self._call("GET", "/healthz", expect=(200, 503))
        date = resp.headers.get("date")
        server_time = None
        if date:
            from email.utils import parsedate_to_datetime

            try:
                server_time = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                server_time = None
        return self._json(resp), server_time
