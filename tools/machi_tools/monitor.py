"""`machi monitor`: the node's serial console, its log lines decoded and coloured by level.

A node logs `<level> <device> <event> key=value ...` (firmware/README.md, lib/node.py):
I = information, W = something to watch (no answer, retry, busy gateway), E = the node needs
help (rejected reading, ring or seq store damaged, crash). Other lines (tracebacks, the REPL,
boot messages) are shown as they are.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import serial

from .boardlink import BoardError, check_port

_LINE = re.compile(r"^(?P<level>[IWE]) (?P<device>\S+) (?P<event>\w[\w-]*)(?P<rest>.*)$")
_KV = re.compile(r"([\w/]+)=(\S+)")
LEVELS = {"I": "info", "W": "warning", "E": "error"}
STYLES = {"I": "green", "W": "yellow", "E": "bold red"}
# what an event means, for the technician (shown after W/E lines)
ADVICE = {
    "noanswer": "the gateway did not answer: is it running, in range, the address right?",
    "unauth": "the gateway does not know this device or its key: re-run machi provision",
    "reject": "the gateway refused the reading: see the gateway's log",
    "busy": "the gateway asked the node to wait (its queue is full or the cloud is down)",
    "drain": "readings were left unsent when the node stopped",
    "ring": "the reading store does not match the config: erase state/ (loses unsent data)",
    "seqstore": "the sequence store is damaged: the node refuses to reuse numbers",
    "safe-mode": "the node crashed repeatedly and stopped its app: read err=, fix, reset",
    "crash": "the app crashed; the board resets; the next status reading carries the error",
    "config": "config.json is wrong: re-run machi provision",
}


@dataclass(frozen=True)
class LogLine:
    raw: str
    level: str | None = None
    device: str | None = None
    event: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    time: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"time": round(self.time, 3), "level": LEVELS.get(self.level or "", None),
                "device": self.device, "event": self.event, "fields": self.fields,
                "raw": self.raw}


def decode(raw: str, now: float | None = None) -> LogLine:
    t = time.time() if now is None else now
    m = _LINE.match(raw.strip())
    if not m:
        return LogLine(raw=raw, time=t)
    return LogLine(raw=raw, level=m["level"], device=m["device"], event=m["event"],
                   fields=dict(_KV.findall(m["rest"])), time=t)


def lines(port: str, *, stop: Callable[[], bool] = lambda: False,
          baud: int = 115200) -> Iterator[LogLine]:
    """Decoded lines from the serial port until `stop()` says so."""
    check_port(port)
    try:
        ser = serial.Serial(port, baud, timeout=0.2, exclusive=True)
    except serial.SerialException as exc:
        raise BoardError(f"cannot open {port}: {exc}") from exc
    buf = b""
    try:
        while not stop():
            try:
                chunk = ser.read(4096)
            except serial.SerialException as exc:
                raise BoardError(f"{port} went away ({exc}): unplugged?") from exc
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                text = raw.decode(errors="replace").rstrip("\r")
                if text.strip():
                    yield decode(text)
    finally:
        ser.close()


def render(line: LogLine) -> str:
    """Rich markup for one line."""
    from rich.markup import escape

    stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
    if line.level is None:
        style = "red" if line.raw.startswith(("Traceback", "  File", "OSError")) else "dim"
        return f"[dim]{stamp}[/] [{style}]{escape(line.raw)}[/]"
    fields = " ".join(f"[cyan]{escape(k)}[/]={escape(v)}" for k, v in line.fields.items())
    text = (f"[dim]{stamp}[/] [{STYLES[line.level]}]{line.level} {escape(line.event or '')}"
            f"[/] [bold]{escape(line.device or '')}[/] {fields}")
    advice = ADVICE.get(line.event or "") if line.level in ("W", "E") else None
    if advice:
        text += f"\n         [italic]{escape(advice)}[/]"
    return text


def to_json_line(line: LogLine) -> str:
    return json.dumps(line.to_json())
