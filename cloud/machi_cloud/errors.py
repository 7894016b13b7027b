"""The cloud's error hierarchy: every error that becomes an HTTP answer carries its status.

Handlers in `problems.py` turn any `ProblemError` into an RFC 9457 problem document, so code
deep in the stack raises a meaningful error (`BatchConflict`, `BadBatch`) and never builds
responses itself. Library errors (cbor2, sqlite3) are wrapped into these with `raise ... from`.
"""

from __future__ import annotations

from typing import ClassVar


class CloudError(Exception):
    """Base of every error raised by `machi_cloud`."""


class ProblemError(CloudError):
    """An error that becomes an `application/problem+json` answer with `status`."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal-error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        """A stable identifier for this kind of problem (documented in docs/cloud.md)."""
        return f"urn:machi:problem:{self.slug}"


class BadBatch(ProblemError):
    """The body is not CBOR, or not a batch as docs/protocol.md §3 defines it."""

    status = 400
    title = "Bad Request"
    slug = "bad-batch"


class BadQuery(ProblemError):
    """A query parameter has a value the API cannot use."""

    status = 400
    title = "Bad Request"
    slug = "bad-query"


class Unauthorized(ProblemError):
    """No bearer token, or one that belongs to no configured gateway."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="machi"'})


class Forbidden(ProblemError):
    """A valid token used for another gateway's batch."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class BatchConflict(ProblemError):
    """A `batch_id` re-used with a different body: the gateway has a numbering bug."""

    status = 409
    title = "Conflict"
    slug = "batch-conflict"


class TooLarge(ProblemError):
    """The body or the batch exceeds the configured limits."""

    status = 413
    title = "Content Too Large"
    slug = "too-large"


class UnsupportedMediaType(ProblemError):
    """The body is not declared as `application/cbor`."""

    status = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


class StorageUnavailable(ProblemError):
    """The database failed (disk full, locked too long, I/O error): the gateway retries."""

    status = 503
    title = "Service Unavailable"
    slug = "storage-unavailable"


class NotFound(ProblemError):
    """The device or command named in the path is not known."""

    status = 404
    title = "Not Found"
    slug = "not-found"


class InvalidRequest(ProblemError):
    """A well-formed body whose values break a rule (a dim level of 150, a bin turned on)."""

    status = 422
    title = "Unprocessable Content"
    slug = "invalid-request"


class ShortIdsExhausted(ProblemError):
    """A gateway already has 65535 devices: LoRa short ids are uint16."""

    status = 409
    title = "Conflict"
    slug = "short-ids-exhausted"


class NotSupported(ProblemError):
    """The configured storage backend does not implement this feature (yet)."""

    status = 501
    title = "Not Implemented"
    slug = "not-supported"


class BadBody(ProblemError):
    """A request body that is not valid JSON (or CBOR)."""

    status = 400
    title = "Bad Request"
    slug = "bad-body"
