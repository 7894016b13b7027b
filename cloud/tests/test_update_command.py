"""The `update` command (protocol §5 "Firmware update"): admins only, args checked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Register = Callable[..., Awaitable[dict[str, Any]]]
Check = Callable[[httpx.Response, int], dict[str, Any]]


async def test_only_admins_send_firmware_updates_and_args_are_checked(
    client: httpx.AsyncClient, register: Register, auth: dict[str, dict[str, str]],
    assert_problem: Check,
) -> None:
    await register("env-0001", type="env")

    async def send(headers: dict[str, str], **args: Any) -> httpx.Response:
        return await client.post("/v1/commands", headers=headers,
                                 json={"device": "env-0001", "name": "update", "args": args})

    p = assert_problem(await send(auth["operator"]), 403)
    assert "admin" in p["detail"]
    assert_problem(await send(auth["viewer"]), 403)
    for bad in ({"version": 0}, {"type": "toaster"}, {"version": "2"}, {"force": True}):
        p = assert_problem(await send(auth["admin"], **bad), 422)
        assert "update takes args" in p["detail"]
    made = await send(auth["admin"], type="env", version=3)
    assert made.status_code == 201, made.text
    assert made.json()["name"] == "update"
    assert made.json()["args"] == {"type": "env", "version": 3}
    assert made.json()["actor"].startswith("admin:")
    assert (await send(auth["admin"])).status_code == 201  # no args: whatever is offered
