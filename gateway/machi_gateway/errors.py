"""The gateway's own error hierarchy.

Errors that become an answer to a node carry their CoAP response code as the class
attribute ``code`` (a ``"c.dd"`` string, so the core stays independent of any CoAP
library and non-CoAP adapters such as LoRa can map it to their own replies) and a short,
countable ``reason`` used for metrics and the diagnostic payload.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file is unusable; the message names the key and the problem."""


class ResponseError(GatewayError):
    """An error that is answered to the sending node with ``code``."""

    code: ClassVar[str] = "5.00"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail or reason
        super().__init__(self.detail)


class BadReading(ResponseError):
    """The payload is not a valid reading (not CBOR, not a SenML pack, bad seq, ...)."""

    code: ClassVar[str] = "4.00"


class UnknownDevice(ResponseError):
    """The reading comes from a device that is not registered with this gateway."""

    code: ClassVar[str] = "4.01"


class PayloadTooLarge(ResponseError):
    """The payload exceeds the configured maximum; the node must not retry it."""

    code: ClassVar[str] = "4.13"


class UnsupportedFormat(ResponseError):
    """The Content-Format is absent or not SenML-CBOR (112)."""

    code: ClassVar[str] = "4.15"


class StoreUnavailable(ResponseError):
    """The durable queue cannot take the reading now; the node retries after ``retry_after_s``.

    Raised for a full disk or an SQLite I/O error: nothing was acknowledged, so the
    node keeps the reading and the end-to-end promise holds.
    """

    code: ClassVar[str] = "5.03"

    def __init__(self, reason: str, detail: str = "", *, retry_after_s: int) -> None:
        super().__init__(reason, detail)
        self.retry_after_s = retry_after_s


class QueueFull(StoreUnavailable):
    """The queue holds ``max_readings`` already (the cloud has been away for long)."""


class StoreError(GatewayError):
    """The SQLite queue could not be opened or used outside of an ``add``."""


class ListenError(GatewayError):
    """A server socket (CoAP, health) could not be bound."""


class UplinkError(GatewayError):
    """The cloud did not take a batch; nothing may be deleted."""


class UplinkUnavailable(UplinkError):
    """5xx, timeout, connection refused, or an answer we cannot parse: retry the same batch."""


class UplinkRefused(UplinkError):
    """A 4xx answer (bad token, wrong gateway, ...): a configuration problem, not the data's."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {detail}")


class BatchConflict(UplinkRefused):
    """409: the batch_id was used before with another body; resend under a new id."""
